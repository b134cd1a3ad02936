//! The actor that runs a [`DurableStateBehavior`]: recovery, persistence, conflicts.

mod policy;
mod state_store;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use actix::fut::{self, ActorFutureExt, WrapFuture};
use actix::{
    Actor, ActorContext, AsyncContext, AtomicResponse, Context, Handler, Message, ResponseActFuture,
};

use crate::behavior::{
    CommandError, DurableStateBehavior, Effect, EntityState, HandleCommandAsync,
};
use crate::error::Error;
use crate::messages::{Revision, WriteOutcome};
use crate::publish::Publish;
use crate::state::DurableState;

pub use self::policy::{RecoveryPolicy, Sharding};
pub use self::state_store::StateStore;

/// An actix actor running a [`DurableStateBehavior`].
///
/// - **Recovery.** On start it reads the entity's latest state from the store (see
///   [`RecoveryPolicy`]); commands that arrive meanwhile wait in the mailbox.
/// - **One command at a time.** Each command is decided, persisted and answered before the next
///   one is looked at (actix's [`AtomicResponse`]), so versions can't be reordered.
/// - **Persist, then reply.** [`Effect::Persist`] writes version + 1 (with the current Unix-ms
///   timestamp and the shard from [`Sharding`]) and replies `Ok` only once the store stored
///   exactly this command's state ([`WriteOutcome::Written`]). If the write fails, the reply is
///   the error and the state stays the last persisted one; when the failure leaves the outcome
///   unknown ([`Error::outcome_unknown`]: a timeout, a lost connection, a stopped store), the
///   entity reads its state again before the next command.
/// - **Conflicts.** If the store reports a version conflict, or that the very same state is
///   already stored (another live actor of this id computed it: the entity never sends a state
///   twice), the entity reloads the stored state and the command fails with
///   [`CommandError::Conflict`]; nothing of this command was applied, and it never overwrites
///   the other writer.
/// - **Exactly once, within limits.** A command acknowledged `Ok` was applied once. A command
///   answered with an error whose outcome is unknown may have been applied: a caller that
///   retries it must make it idempotent itself (e.g. carry a command id in the state and have
///   the behavior answer a seen id with `Effect::none`).
///
/// ```no_run
/// # use actix::Actor;
/// # use durablestore_postgres::*;
/// # #[derive(Clone, PartialEq, prost::Message)] struct S {}
/// # impl prost::Name for S { const NAME: &'static str = "S"; const PACKAGE: &'static str = "p"; }
/// # struct Counter { id: String }
/// # impl DurableStateBehavior for Counter { type State = S; fn persistence_id(&self) -> &str { &self.id } }
/// # async fn run(store: actix::Addr<DurableStoreActor>) {
/// let entity = DurableEntity::new(Counter { id: "counter-1".into() }, store)
///     .sharding(Sharding::Hashed { shards: 16 })
///     .start();
/// # }
/// ```
pub struct DurableEntity<B: DurableStateBehavior> {
    behavior: B,
    store: StateStore,
    sharding: Sharding,
    recovery: RecoveryPolicy,
    /// The last persisted state and its version; `None` until recovery succeeded.
    current: Option<(B::State, u64)>,
    /// Who hears of each persisted state (set by an [`EntityRegistry`](crate::EntityRegistry)).
    subscribers: Option<Arc<dyn Publish<B::State>>>,
    /// Run when the actor is dropped, stopped or never started: how a registry learns that this
    /// incarnation is gone and the next may start.
    on_drop: Option<OnDrop>,
}

/// A callback run once, when dropped.
pub(crate) struct OnDrop(Option<Box<dyn FnOnce() + Send>>);

impl OnDrop {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> Self {
        OnDrop(Some(Box::new(f)))
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl<B: DurableStateBehavior> fmt::Debug for DurableEntity<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableEntity")
            .field("persistence_id", &self.behavior.persistence_id())
            .field("version", &self.current.as_ref().map(|(_, v)| *v))
            .finish_non_exhaustive()
    }
}

impl<B: DurableStateBehavior> DurableEntity<B> {
    /// An entity running `behavior` on `store` (an `Addr` of any store actor, or a
    /// [`StateStore`]), with default sharding and recovery. Start it with [`Actor::start`].
    pub fn new(behavior: B, store: impl Into<StateStore>) -> Self {
        DurableEntity {
            behavior,
            store: store.into(),
            sharding: Sharding::default(),
            recovery: RecoveryPolicy::default(),
            current: None,
            subscribers: None,
            on_drop: None,
        }
    }

    /// Publishes each persisted state to `subscribers`.
    pub(crate) fn publish_to(mut self, subscribers: Arc<dyn Publish<B::State>>) -> Self {
        self.subscribers = Some(subscribers);
        self
    }

    /// Runs `hook` once the actor is gone (stopped, dropped, or never started).
    pub(crate) fn on_drop(mut self, hook: OnDrop) -> Self {
        self.on_drop = Some(hook);
        self
    }

    /// How the shard number of written states is chosen.
    ///
    /// Defaults to [`Sharding::Hashed`] over [`Sharding::DEFAULT_SHARD_COUNT`] shards.
    #[must_use]
    pub fn sharding(mut self, sharding: Sharding) -> Self {
        self.sharding = sharding;
        self
    }

    /// How recovery is retried at start.
    ///
    /// Defaults to [`RecoveryPolicy::default`].
    #[must_use]
    pub fn recovery(mut self, policy: RecoveryPolicy) -> Self {
        self.recovery = policy;
        self
    }

    /// The behavior, e.g. to read its non-durable fields in tests.
    pub fn behavior(&self) -> &B {
        &self.behavior
    }

    /// Reads and decodes the stored state: the initial state at version 0 when there is none,
    /// and at the tombstone's version when the entity was deleted.
    fn load(&self) -> impl std::future::Future<Output = Result<(B::State, u64), Error>> + 'static {
        let store = self.store.clone();
        let id = self.behavior.persistence_id().to_owned();
        let initial = self.behavior.initial_state();
        async move { current::<B>(store.revision(id).await?, || initial) }
    }

    /// Makes sure the entity has its state, trying once to load it if not.
    fn ensure_recovered(&mut self) -> ResponseActFuture<Self, Result<(), Error>> {
        if self.current.is_some() {
            return Box::pin(fut::ready(Ok(())));
        }
        Box::pin(
            self.load()
                .into_actor(self)
                .map(|loaded, entity, _| loaded.map(|current| entity.current = Some(current))),
        )
    }

    /// Runs the behavior on `command` against the recovered state, then persists its effect.
    fn decide<C>(
        &mut self,
        command: C,
    ) -> ResponseActFuture<Self, Result<B::Reply, CommandError<B::Error>>>
    where
        B: HandleCommandAsync<C>,
    {
        let Some((state, version)) = &self.current else {
            return Box::pin(fut::ready(Err(CommandError::Recovery(Error::NotConnected))));
        };
        let version = *version;
        let decision = self.behavior.handle_command_async(command, state, version);
        Box::pin(
            decision
                .into_actor(self)
                .then(move |decided, entity, _| entity.persist(decided, version)),
        )
    }

    /// Persists what the behavior decided on top of `version` and answers the command.
    fn persist<R: 'static, E: 'static>(
        &mut self,
        decided: Result<Effect<B::State, R>, E>,
        version: u64,
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
            let reloaded = store.revision(id.clone()).await;
            let conflict = conflict.unwrap_or_else(|| Error::VersionConflict {
                persistence_id: id,
                attempted: next,
                stored: match &reloaded {
                    Ok(revision) => revision.version,
                    Err(_) => next,
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
                        entity.current = reloaded
                            .and_then(|revision| {
                                current::<B>(revision, || behavior.initial_state())
                            })
                            .ok();
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
fn current<B: DurableStateBehavior>(
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
    /// Another writer got there first; what is stored now, as reloaded.
    Conflict(Error, Result<Revision, Error>),
    /// The store failed; [`Error::outcome_unknown`] says whether the write may have landed.
    Store(Error),
}

impl<B: DurableStateBehavior> Actor for DurableEntity<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `wait` holds the mailbox until recovery is over: commands queue, none is handled
        // against the initial state by mistake.
        ctx.wait(recover_with_retries(self, 1));
    }
}

/// Loads the state (try number `tried`), retrying transient failures with backoff up to
/// the entity's [`RecoveryPolicy`]; stores the state on success.
fn recover_with_retries<B: DurableStateBehavior>(
    entity: &DurableEntity<B>,
    tried: u32,
) -> ResponseActFuture<DurableEntity<B>, ()> {
    Box::pin(
        entity
            .load()
            .into_actor(entity)
            .then(move |loaded, entity, _ctx| {
                let policy = &entity.recovery;
                match loaded {
                    Ok(current) => {
                        entity.current = Some(current);
                        Box::pin(fut::ready(())) as ResponseActFuture<DurableEntity<B>, ()>
                    }
                    Err(error) if error.is_transient() && tried < policy.attempts => {
                        let backoff = policy.backoff(tried, fastrand::f64());
                        tracing::warn!(
                            persistence_id = entity.behavior.persistence_id(),
                            %error,
                            attempt = tried,
                            ?backoff,
                            "durable entity recovery failed; retrying"
                        );
                        Box::pin(
                            tokio::time::sleep(backoff)
                                .into_actor(entity)
                                .then(move |(), entity, _| recover_with_retries(entity, tried + 1)),
                        )
                    }
                    Err(error) => {
                        tracing::error!(
                            persistence_id = entity.behavior.persistence_id(),
                            %error,
                            attempts = tried,
                            "durable entity could not recover its state; commands will retry it"
                        );
                        Box::pin(fut::ready(()))
                    }
                }
            }),
    )
}

impl<B, C> Handler<C> for DurableEntity<B>
where
    B: HandleCommandAsync<C>,
    C: Message<Result = Result<B::Reply, CommandError<B::Error>>> + 'static,
{
    type Result = AtomicResponse<Self, Result<B::Reply, CommandError<B::Error>>>;

    fn handle(&mut self, command: C, _ctx: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(Box::pin(self.ensure_recovered().then(
            move |recovered, entity, _ctx| match recovered {
                Ok(()) => entity.decide(command),
                Err(error) => Box::pin(fut::ready(Err(CommandError::Recovery(error)))),
            },
        )))
    }
}

/// Stops an entity actor (e.g. to passivate it); its state stays in the store.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Passivate;

impl<B: DurableStateBehavior> Handler<Passivate> for DurableEntity<B> {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Asks an entity for its current state and version (0 before its first persisted state), with
/// no command handler of your own: eGo's `GetStateCommand`. Answered after recovery, in mailbox
/// order with the commands (so after every command sent before it), and never written.
///
/// `S` is the entity's state type; through an [`EntityRegistry`](crate::EntityRegistry), call
/// [`EntityRegistry::state`](crate::EntityRegistry::state) instead.
///
/// # Errors
/// The recovery error when the entity cannot load its state (see [`RecoveryPolicy`]).
///
/// ```no_run
/// # use actix::Actor;
/// # use durablestore_postgres::*;
/// # #[derive(Clone, PartialEq, prost::Message)] struct S {}
/// # impl prost::Name for S { const NAME: &'static str = "S"; const PACKAGE: &'static str = "p"; }
/// # struct Counter { id: String }
/// # impl DurableStateBehavior for Counter { type State = S; fn persistence_id(&self) -> &str { &self.id } }
/// # async fn run(store: actix::Addr<DurableStoreActor>) -> Result<(), Box<dyn std::error::Error>> {
/// let entity = DurableEntity::new(Counter { id: "counter-1".into() }, store).start();
/// let (state, version) = entity.send(GetState::new()).await??;
/// # Ok(()) }
/// ```
pub struct GetState<S>(PhantomData<fn() -> S>);

impl<S> GetState<S> {
    /// The query.
    pub fn new() -> Self {
        GetState(PhantomData)
    }
}

impl<S> Default for GetState<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Clone for GetState<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for GetState<S> {}

impl<S> fmt::Debug for GetState<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GetState")
    }
}

impl<S: 'static> Message for GetState<S> {
    type Result = Result<(S, u64), Error>;
}

impl<B: DurableStateBehavior> Handler<GetState<B::State>> for DurableEntity<B> {
    type Result = AtomicResponse<Self, Result<(B::State, u64), Error>>;

    fn handle(&mut self, _: GetState<B::State>, _ctx: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(Box::pin(self.ensure_recovered().map(
            |recovered, entity, _ctx| {
                recovered?;
                entity.current.clone().ok_or(Error::NotConnected)
            },
        )))
    }
}
