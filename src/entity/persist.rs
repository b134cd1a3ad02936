//! Deciding a command and persisting its effect: the version rule's conflicts, the reload, and
//! deciding again.

use std::sync::atomic::Ordering;

use actix::ResponseActFuture;
use actix::fut::{self, ActorFutureExt, WrapFuture};

use super::DurableEntity;
use crate::behavior::{
    CommandError, DurableStateBehavior, Effect, EntityState, HandleCommandAsync,
};
use crate::error::Error;
use crate::messages::{Revision, WriteOutcome};
use crate::state::DurableState;

/// The counter of decisions made again after a conflict.
const CONFLICT_RETRIES_METRIC: &str = "durablestore_entity_conflict_retries_total";

impl<B: DurableStateBehavior> DurableEntity<B> {
    /// Recovers the state if needed, then decides `command` (try number `tried`).
    pub(super) fn run_command<C>(
        &mut self,
        command: C,
        tried: u32,
    ) -> ResponseActFuture<Self, Result<B::Reply, CommandError<B::Error>>>
    where
        B: HandleCommandAsync<C>,
        C: Clone + 'static,
    {
        Box::pin(
            self.ensure_recovered()
                .then(move |recovered, entity, _ctx| match recovered {
                    Ok(()) => entity.decide(command, tried),
                    Err(error) => Box::pin(fut::ready(Err(CommandError::Recovery(error)))),
                }),
        )
    }

    /// Runs the behavior on `command` against the recovered state, then persists its effect.
    /// A decision whose write conflicted is made again on the reloaded state, as the
    /// [`ConflictPolicy`] allows.
    fn decide<C>(
        &mut self,
        command: C,
        tried: u32,
    ) -> ResponseActFuture<Self, Result<B::Reply, CommandError<B::Error>>>
    where
        B: HandleCommandAsync<C>,
        C: Clone + 'static,
    {
        let Some((state, version)) = &self.current else {
            return Box::pin(fut::ready(Err(CommandError::Recovery(Error::NotConnected))));
        };
        let version = *version;
        // Kept only while another decision is allowed.
        let again = (tried < self.conflicts.attempts).then(|| command.clone());
        // Deciding again reads the stored state after the pause, right before the decision,
        // so that the pause does not make it stale; the last decision reloads at once.
        let reload = again.is_none();
        let decision = self.behavior.handle_command_async(command, state, version);
        Box::pin(
            decision
                .into_actor(self)
                .then(move |decided, entity, _| entity.persist(decided, version, reload))
                .then(move |persisted, entity, _| match (persisted, again) {
                    (Err(CommandError::Conflict(conflict)), Some(command)) => {
                        let pause = entity.conflicts.backoff(tried, fastrand::f64());
                        tracing::debug!(
                            persistence_id = entity.behavior.persistence_id(),
                            error = %conflict,
                            tried,
                            ?pause,
                            "durable entity write conflicted; deciding again on the stored state"
                        );
                        metrics::counter!(CONFLICT_RETRIES_METRIC).increment(1);
                        if let Some(counter) = &entity.conflict_retries {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Box::pin(
                            tokio::time::sleep(pause)
                                .into_actor(entity)
                                .then(move |(), entity, _| entity.run_command(command, tried + 1)),
                        ) as ResponseActFuture<Self, _>
                    }
                    (persisted, _) => Box::pin(fut::ready(persisted)),
                }),
        )
    }

    /// Persists what the behavior decided on top of `version` and answers the command. On a
    /// conflict the stored state is read at once if `reload`, and before the next command
    /// otherwise.
    fn persist<R: 'static, E: 'static>(
        &mut self,
        decided: Result<Effect<B::State, R>, E>,
        version: u64,
        reload: bool,
    ) -> ResponseActFuture<Self, Result<R, CommandError<E>>> {
        let id = self.behavior.persistence_id().to_owned();
        let next = version + 1;
        let (new_state, change, reply) = match decided {
            Err(rejection) => return Box::pin(fut::ready(Err(CommandError::Rejected(rejection)))),
            Ok(Effect::None { reply }) => return Box::pin(fut::ready(Ok(reply))),
            Ok(Effect::Persist { state, reply }) => match state.to_durable_state(&id, next) {
                Ok(durable) => {
                    let durable = durable.with_shard(self.sharding.shard_of(&id));
                    (Some(state), Change::Write(durable), reply)
                }
                // Nothing was written: the state stays the last persisted one.
                Err(error) => return Box::pin(fut::ready(Err(CommandError::Store(error)))),
            },
            Ok(Effect::Delete { reply }) => (None, Change::Delete, reply),
        };
        let store = self.store.clone();
        let write = async move {
            let stored = match change {
                Change::Write(durable) => store.write(durable).await,
                Change::Delete => store.delete(id.clone(), next).await,
            };
            let conflict = match stored {
                Ok(WriteOutcome::Written) => return Ok(()),
                // This entity never sends a change twice, so a stored identical state (or
                // tombstone) was stored by someone else (another live actor of this id made
                // the same change): this command was not applied.
                Ok(WriteOutcome::AlreadyStored) => None,
                Err(conflict @ Error::VersionConflict { .. }) => Some(conflict),
                Err(error) => return Err(Failure::Store(error)),
            };
            // Someone else owns the newer state: take it, don't fight it.
            let reloaded = if reload {
                Some(store.revision(id.clone()).await)
            } else {
                None
            };
            let conflict = conflict.unwrap_or_else(|| Error::VersionConflict {
                persistence_id: id,
                attempted: next,
                stored: match &reloaded {
                    Some(Ok(revision)) => revision.version,
                    _ => next,
                },
            });
            Err(Failure::Conflict(conflict, reloaded))
        };
        Box::pin(
            write
                .into_actor(self)
                .map(move |written, entity, _| match written {
                    Ok(()) => {
                        if let Some(subscribers) = &entity.subscribers {
                            subscribers.publish(
                                entity.behavior.persistence_id(),
                                next,
                                new_state.as_ref(),
                            );
                        }
                        // A deleted entity goes on from its initial state.
                        let state = new_state.unwrap_or_else(|| entity.behavior.initial_state());
                        entity.current = Some((state, next));
                        Ok(reply)
                    }
                    Err(Failure::Conflict(conflict, reloaded)) => {
                        // A row that could not be read is recovered again before the next
                        // command rather than guessed.
                        let behavior = &entity.behavior;
                        entity.current = reloaded.and_then(|reloaded| {
                            reloaded
                                .and_then(|revision| {
                                    current::<B>(revision, || behavior.initial_state())
                                })
                                .ok()
                        });
                        Err(CommandError::Conflict(conflict))
                    }
                    Err(Failure::Store(error)) => {
                        if error.outcome_unknown() {
                            // The write may have been applied: the state in memory may be
                            // stale, so it is read again before the next command.
                            entity.current = None;
                        }
                        Err(CommandError::Store(error))
                    }
                }),
        )
    }
}

/// The state and version an entity goes on from, given what is stored.
pub(super) fn current<B: DurableStateBehavior>(
    revision: Revision,
    initial: impl FnOnce() -> B::State,
) -> Result<(B::State, u64), Error> {
    let state = match &revision.state {
        Some(stored) => B::State::from_durable_state(stored)?,
        None => initial(),
    };
    Ok((state, revision.version))
}

/// What a command changes in the store.
enum Change {
    Write(DurableState),
    Delete,
}

/// Why persisting a command's state failed.
enum Failure {
    /// Another writer got there first; what is stored now, as reloaded (`None`: not read yet).
    Conflict(Error, Option<Result<Revision, Error>>),
    /// The store failed; [`Error::outcome_unknown`] says whether the write may have landed.
    Store(Error),
}
