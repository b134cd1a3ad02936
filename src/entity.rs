//! The actor that runs a [`DurableStateBehavior`]: recovery, persistence, conflicts.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::fut::{self, ActorFutureExt, WrapFuture};
use actix::{
    Actor, ActorContext, Addr, AsyncContext, AtomicResponse, Context, Handler, Message, Recipient,
    ResponseActFuture,
};

use crate::behavior::{
    CommandError, DurableStateBehavior, Effect, EntityState, HandleCommandAsync,
};
use crate::error::Error;
use crate::handle::DurableStore;
use crate::messages::{DeleteState, GetRevision, Revision, WriteOutcome, WriteState};
use crate::registry::publish::Publish;
use crate::state::DurableState;

/// Where an entity reads and writes its state: a [`DurableStore`] handle (its queues are
/// reached directly, with no mailbox hop), or any actor answering [`WriteState`],
/// [`DeleteState`] and [`GetRevision`] — a [`DurableStoreActor`](crate::DurableStoreActor), a
/// [`MemoryStore`](crate::MemoryStore), or your own.
#[derive(Clone)]
pub struct StateStore(Route);

#[derive(Clone)]
enum Route {
    Mailbox {
        write: Recipient<WriteState>,
        delete: Recipient<DeleteState>,
        read: Recipient<GetRevision>,
    },
    Direct(DurableStore),
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = match self.0 {
            Route::Mailbox { .. } => "mailbox",
            Route::Direct(_) => "direct",
        };
        f.debug_struct("StateStore").field("route", &route).finish()
    }
}

impl<A> From<Addr<A>> for StateStore
where
    A: Actor + Handler<WriteState> + Handler<DeleteState> + Handler<GetRevision>,
    A::Context: ToEnvelope<A, WriteState> + ToEnvelope<A, DeleteState> + ToEnvelope<A, GetRevision>,
{
    fn from(addr: Addr<A>) -> Self {
        StateStore(Route::Mailbox {
            write: addr.clone().recipient(),
            delete: addr.clone().recipient(),
            read: addr.recipient(),
        })
    }
}

impl From<DurableStore> for StateStore {
    fn from(store: DurableStore) -> Self {
        StateStore(Route::Direct(store))
    }
}

impl StateStore {
    /// A store from recipients (e.g. a router in front of several stores).
    pub fn from_recipients(
        write: Recipient<WriteState>,
        delete: Recipient<DeleteState>,
        read: Recipient<GetRevision>,
    ) -> Self {
        StateStore(Route::Mailbox {
            write,
            delete,
            read,
        })
    }

    /// Writes a state. A store actor that stopped before answering reads as
    /// [`Error::Interrupted`]: the write may or may not have been applied.
    pub async fn write(&self, state: DurableState) -> Result<WriteOutcome, Error> {
        match &self.0 {
            Route::Direct(store) => store.write(state).await,
            Route::Mailbox { write, .. } => write
                .send(WriteState(state))
                .await
                .unwrap_or(Err(Error::Interrupted)),
        }
    }

    /// Deletes the state at `version`, as [`StateStore::write`] writes one.
    pub async fn delete(
        &self,
        persistence_id: String,
        version: u64,
    ) -> Result<WriteOutcome, Error> {
        match &self.0 {
            Route::Direct(store) => store.delete(persistence_id, version).await,
            Route::Mailbox { delete, .. } => delete
                .send(DeleteState {
                    persistence_id,
                    version,
                })
                .await
                .unwrap_or(Err(Error::Interrupted)),
        }
    }

    /// Reads the stored version and state; a store actor that is gone reads as
    /// [`Error::NotConnected`].
    pub async fn revision(&self, persistence_id: String) -> Result<Revision, Error> {
        match &self.0 {
            Route::Direct(store) => store.revision(persistence_id).await,
            Route::Mailbox { read, .. } => read
                .send(GetRevision(persistence_id))
                .await
                .unwrap_or(Err(Error::NotConnected)),
        }
    }

    /// Reads the latest state (`None` when there is none or it was deleted).
    pub async fn get(&self, persistence_id: String) -> Result<Option<DurableState>, Error> {
        Ok(self.revision(persistence_id).await?.state)
    }
}

/// How an entity's shard number is derived from its persistence id.
#[derive(Clone)]
#[non_exhaustive]
pub enum Sharding {
    /// `fnv1a64(persistence_id) % shards`: stable across processes, versions and platforms.
    Hashed {
        /// Number of shards (at least 1).
        shards: u64,
    },
    /// A function of your own.
    Custom(Arc<dyn Fn(&str) -> u64 + Send + Sync>),
}

impl Sharding {
    /// Default number of shards entities are spread over by [`Sharding::Hashed`]: 128.
    pub const DEFAULT_SHARD_COUNT: u64 = 128;
}

impl Default for Sharding {
    /// [`Sharding::Hashed`] over [`Sharding::DEFAULT_SHARD_COUNT`] shards.
    fn default() -> Self {
        Sharding::Hashed {
            shards: Self::DEFAULT_SHARD_COUNT,
        }
    }
}

impl fmt::Debug for Sharding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sharding::Hashed { shards } => {
                f.debug_struct("Hashed").field("shards", shards).finish()
            }
            Sharding::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Sharding {
    /// The shard of `persistence_id`.
    pub fn shard_of(&self, persistence_id: &str) -> u64 {
        match self {
            Sharding::Hashed { shards } => fnv1a64(persistence_id.as_bytes()) % (*shards).max(1),
            Sharding::Custom(f) => f(persistence_id),
        }
    }
}

/// FNV-1a, 64 bit: a fixed, documented hash, so shard numbers never change between builds
/// (std's `DefaultHasher` makes no such promise).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How an entity retries loading its state when it starts.
///
/// Transient failures (database unreachable, pool timeout, broken connection) are retried with
/// exponential backoff, `initial_backoff` doubling up to `max_backoff`, for at most `attempts`
/// tries; commands wait in the mailbox meanwhile. Each wait is drawn at random between half
/// that backoff and all of it ("equal jitter"), so thousands of entities that failed together
/// (an outage) spread their retries instead of retrying in lockstep. Permanent failures (a corrupt row, a state of
/// another type) are not retried. An entity that is still not recovered then answers each
/// command by trying once more and, if that fails, with [`CommandError::Recovery`]: it never
/// handles a command against a state it did not load, and it heals by itself once the store
/// answers again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// Tries at start, the first included (at least 1).
    pub attempts: u32,
    /// Wait after the first failed try.
    pub initial_backoff: Duration,
    /// Longest wait between tries.
    pub max_backoff: Duration,
}

impl RecoveryPolicy {
    /// The wait after failed try number `tried` (1 for the first): the exponential backoff,
    /// scaled by `jitter` (in `[0, 1)`) into its upper half.
    fn backoff(&self, tried: u32, jitter: f64) -> Duration {
        let backoff = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(tried.saturating_sub(1)))
            .min(self.max_backoff);
        backoff.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

impl Default for RecoveryPolicy {
    /// 6 tries, 100 ms doubling up to 2 s, each wait jittered down by up to half: 2.5 to 5 s of
    /// waiting before commands fail.
    fn default() -> Self {
        RecoveryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

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
        async move { current::<B>(store.revision(id).await?, initial) }
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
        let initial = self.behavior.initial_state();
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
            let reloaded = match store.revision(id.clone()).await {
                Ok(revision) => current::<B>(revision, initial),
                Err(e) => Err(e),
            };
            let conflict = conflict.unwrap_or_else(|| Error::VersionConflict {
                persistence_id: id,
                attempted: next,
                stored: match &reloaded {
                    Ok((_, version)) => *version,
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
                        entity.current = reloaded.ok();
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
    initial: B::State,
) -> Result<(B::State, u64), Error> {
    let state = match &revision.state {
        Some(stored) => B::State::from_durable_state(stored)?,
        None => initial,
    };
    Ok((state, revision.version))
}

/// What a command changes in the store.
enum Change {
    Write(DurableState),
    Delete,
}

/// Why persisting a command's state failed.
enum Failure<S> {
    /// Another writer got there first; the stored state and version as reloaded.
    Conflict(Error, Result<(S, u64), Error>),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_backoff_doubles_is_capped_and_jittered_into_its_upper_half() {
        let policy = RecoveryPolicy::default();
        let ms = |d: Duration| d.as_millis();
        // No jitter drawn: half of the exponential backoff; the most: all of it.
        assert_eq!(ms(policy.backoff(1, 0.0)), 50);
        assert_eq!(ms(policy.backoff(1, 1.0)), 100);
        assert_eq!(ms(policy.backoff(3, 1.0)), 400);
        assert_eq!(ms(policy.backoff(10, 1.0)), 2000);
        assert_eq!(ms(policy.backoff(10, 0.0)), 1000);
        assert_eq!(ms(policy.backoff(u32::MAX, 0.5)), 1500);
        // Two entities failing together wait different times.
        let waits: std::collections::BTreeSet<_> = (0..100)
            .map(|_| policy.backoff(4, fastrand::f64()))
            .collect();
        assert!(waits.len() > 50, "jitter spreads the retries");
        assert!(waits.iter().all(|w| ms(*w) >= 400 && ms(*w) <= 800));
    }

    #[test]
    fn hashed_sharding_is_stable_and_in_range() {
        let sharding = Sharding::Hashed { shards: 16 };
        // Pinned values: changing the hash would move every entity to another shard.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!((0..1000).all(|i| sharding.shard_of(&format!("e-{i}")) < 16));
        assert_eq!(Sharding::Hashed { shards: 0 }.shard_of("x"), 0);
        let custom = Sharding::Custom(Arc::new(|id: &str| id.len() as u64));
        assert_eq!(custom.shard_of("abcd"), 4);
    }
}
