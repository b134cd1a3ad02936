//! Deciding a command and persisting its effect: the version rule's conflicts, the reload, and
//! deciding again.

use std::sync::atomic::Ordering;

use actix::ResponseActFuture;
use actix::fut::{self, ActorFuture, ActorFutureExt, WrapFuture};
use futures_util::future::Either;

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
    /// Recovers the state if needed, then decides `command` (try number `tried`). The usual
    /// command (recovered already, decided at once) allocates nothing here: the future is a
    /// concrete type, which the context's one box for the command holds.
    pub(super) fn run_command<C>(
        &mut self,
        command: C,
        tried: u32,
    ) -> impl ActorFuture<Self, Output = Result<B::Reply, CommandError<B::Error>>> + use<B, C>
    where
        B: HandleCommandAsync<C>,
        C: Clone + 'static,
    {
        // An owned entity decides only while its id is this replica's.
        if let Some(owned) = &mut self.owned {
            if let Some(refusal) = owned.check(self.behavior.persistence_id()) {
                return Either::Left(Box::pin(fut::ready(Err(refusal.command_error())))
                    as ResponseActFuture<Self, _>);
            }
        }
        if self.current.is_some() {
            return Either::Right(self.decide(command, tried));
        }
        // Recovery: once per incarnation, boxed so that it does not enlarge every command.
        Either::Left(Box::pin(
            self.ensure_recovered()
                .then(move |recovered, entity, _ctx| match recovered {
                    Ok(()) => Either::Left(entity.decide(command, tried)),
                    Err(error) => {
                        let refused = entity.owned.as_ref().and_then(|o| o.refused.clone());
                        let answer = match refused {
                            Some(refusal) => refusal.command_error(),
                            None => CommandError::Recovery(error),
                        };
                        Either::Right(fut::ready(Err(answer)))
                    }
                }),
        ) as ResponseActFuture<Self, _>)
    }

    /// Runs the behavior on `command` against the recovered state, then persists its effect.
    /// A decision whose write conflicted is made again on the reloaded state, as the
    /// [`ConflictPolicy`] allows. A behavior that decides at once (every `HandleCommand`) runs
    /// here; only an asynchronous decision is a future of its own, boxed.
    fn decide<C>(
        &mut self,
        command: C,
        tried: u32,
    ) -> impl ActorFuture<Self, Output = Result<B::Reply, CommandError<B::Error>>> + use<B, C>
    where
        B: HandleCommandAsync<C>,
        C: Clone + 'static,
    {
        let Some((state, version)) = &self.current else {
            return Either::Left(fut::ready(Err(CommandError::Recovery(Error::NotConnected))));
        };
        let version = *version;
        // Kept only while another decision is allowed.
        let again = (tried < self.conflicts.attempts).then(|| command.clone());
        // Deciding again reads the stored state after the pause, right before the decision,
        // so that the pause does not make it stale; the last decision reloads at once.
        let reload = again.is_none();
        let persisted = match self.behavior.decide_at_once(command, state, version) {
            Ok(decided) => Either::Left(self.persist(decided, version, reload)),
            Err(command) => Either::Right(Box::pin(
                self.behavior
                    .handle_command_async(command, state, version)
                    .into_actor(self)
                    .then(move |decided, entity, _| entity.persist(decided, version, reload)),
            ) as ResponseActFuture<Self, _>),
        };
        Either::Right(
            persisted.then(move |persisted, entity, _| match (persisted, again) {
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
                    Either::Right(Box::pin(
                        tokio::time::sleep(pause)
                            .into_actor(entity)
                            .then(move |(), entity, _| entity.run_command(command, tried + 1)),
                    ) as ResponseActFuture<Self, _>)
                }
                (persisted, _) => Either::Left(fut::ready(persisted)),
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
    ) -> impl ActorFuture<Self, Output = Result<R, CommandError<E>>> + use<B, R, E> {
        let next = version + 1;
        let id = self.behavior.persistence_id();
        let (new_state, change, reply) = match decided {
            Err(rejection) => {
                return Either::Left(fut::ready(Err(CommandError::Rejected(rejection))));
            }
            Ok(Effect::None { reply }) => return Either::Left(fut::ready(Ok(reply))),
            Ok(Effect::Persist { state, reply }) => match state.to_durable_state(id, next) {
                Ok(durable) => {
                    let durable = durable.with_shard(self.sharding.shard_of(id));
                    (Some(state), Change::Write(durable), reply)
                }
                // Nothing was written: the state stays the last persisted one.
                Err(error) => return Either::Left(fut::ready(Err(CommandError::Store(error)))),
            },
            Ok(Effect::Delete { reply }) => (None, Change::Delete(id.to_owned()), reply),
        };
        // An owned entity's write carries its claim's fence: it commits only while the
        // registration it claimed the id under is still there.
        let fence = match &self.owned {
            None => None,
            Some(owned) => match owned.fence() {
                Some(fence) => Some(fence),
                // Never so after a recovery, which claims first; refused rather than unfenced.
                None => {
                    let error = Error::NotOwner {
                        persistence_id: id.to_owned(),
                        owner: None,
                    };
                    return Either::Left(fut::ready(Err(CommandError::Store(error))));
                }
            },
        };
        // Submitted now: what waits in the command's future is only the answer.
        let write = match change {
            Change::Write(durable) => Either::Left(self.store.write_now(durable, fence)),
            Change::Delete(id) => Either::Right(self.store.delete_now(id, next, fence)),
        };
        Either::Right(write.into_actor(self).then(move |stored, entity, _| {
            let conflict = match stored {
                Ok(WriteOutcome::Written) => {
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
                    return Either::Left(fut::ready(Ok(reply)));
                }
                // This entity never sends a change twice, so a stored identical state (or
                // tombstone) was stored by someone else (another live actor of this id made
                // the same change): this command was not applied.
                Ok(WriteOutcome::AlreadyStored) => None,
                Err(conflict @ Error::VersionConflict { .. }) => Some(conflict),
                Err(error) => {
                    let refused = entity.owned.as_mut().and_then(|owned| {
                        let refusal = owned.refusal_of(&error)?;
                        owned.refuse(entity.behavior.persistence_id(), refusal.clone());
                        Some(refusal)
                    });
                    if let Some(refusal) = refused {
                        // Fenced out: nothing was written, and another replica has the id.
                        return Either::Left(fut::ready(Err(refusal.command_error())));
                    }
                    if error.outcome_unknown() {
                        // The write may have been applied: the state in memory may be
                        // stale, so it is read again before the next command.
                        entity.current = None;
                        // And it may still run: the id must not be released.
                        if let Some(owned) = &mut entity.owned {
                            owned.uncertain = true;
                        }
                    }
                    return Either::Left(fut::ready(Err(CommandError::Store(error))));
                }
            };
            // Someone else owns the newer state: take it, don't fight it. Until it is read,
            // the entity has no state, so a read that fails is retried before the next
            // command rather than guessed.
            entity.current = None;
            let id = entity.behavior.persistence_id().to_owned();
            if !reload {
                let conflict = conflict.unwrap_or(Error::VersionConflict {
                    persistence_id: id,
                    attempted: next,
                    stored: next,
                });
                return Either::Left(fut::ready(Err(CommandError::Conflict(conflict))));
            }
            let store = entity.store.clone();
            let reloaded = async move { store.revision(id).await };
            Either::Right(
                Box::pin(reloaded.into_actor(entity).map(move |reloaded, entity, _| {
                    let conflict = conflict.unwrap_or_else(|| Error::VersionConflict {
                        persistence_id: entity.behavior.persistence_id().to_owned(),
                        attempted: next,
                        stored: match &reloaded {
                            Ok(revision) => revision.version,
                            Err(_) => next,
                        },
                    });
                    let behavior = &entity.behavior;
                    entity.current = reloaded
                        .and_then(|revision| current::<B>(revision, || behavior.initial_state()))
                        .ok();
                    Err(CommandError::Conflict(conflict))
                })) as ResponseActFuture<Self, _>,
            )
        }))
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
    /// A tombstone for this id.
    Delete(String),
}
