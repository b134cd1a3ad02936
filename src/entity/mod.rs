//! The actor that runs a [`DurableStateBehavior`]: recovery, persistence, conflicts.

mod command;
mod owned;
mod persist;
mod policy;
mod recovery;
mod state_store;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use actix::fut::ActorFutureExt;
use actix::{Actor, ActorContext, AsyncContext, AtomicResponse, Context, Handler, Message};

use self::recovery::recover_with_retries;
use crate::behavior::{CommandError, DurableStateBehavior, HandleCommandAsync};
use crate::error::Error;
use crate::publish::Publish;

pub use self::command::RunCommand;
pub(crate) use self::owned::{Claims, Owned};
pub use self::policy::{ConflictPolicy, RecoveryPolicy, Sharding};
pub use self::state_store::StateStore;

/// An actix actor running a [`DurableStateBehavior`].
///
/// - **Recovery.** On start it reads the entity's latest state from the store (see
///   [`RecoveryPolicy`]); commands that arrive meanwhile wait in the mailbox.
/// - **One command at a time.** Each command is decided, persisted and answered before the next
///   one is looked at (actix's [`AtomicResponse`]), so versions can't be reordered.
/// - **Persist, then reply.** [`Effect::Persist`](crate::Effect::Persist) writes version + 1 (with the current Unix-ms
///   timestamp and the shard from [`Sharding`]) and replies `Ok` only once the store stored
///   exactly this command's state ([`WriteOutcome::Written`](crate::WriteOutcome::Written)). If the write fails, the reply is
///   the error and the state stays the last persisted one; when the failure leaves the outcome
///   unknown ([`Error::outcome_unknown`]: a timeout, a lost connection, a stopped store), the
///   entity reads its state again before the next command.
/// - **Conflicts.** If the store reports a version conflict, or that the very same state is
///   already stored (another live actor of this id computed it: the entity never sends a state
///   twice), nothing of this decision was written and it never overwrote the other writer.
///   The entity then reads the stored state and decides the same command again on it (the
///   command is `Clone`), after a short jittered pause, as its [`ConflictPolicy`] allows (10
///   decisions by default); only when they all conflict does the command fail with
///   [`CommandError::Conflict`], the stored state reloaded. So a decision may run more than
///   once: it must have no effect outside the [`Effect`](crate::Effect) it returns.
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
    conflicts: ConflictPolicy,
    /// The last persisted state and its version; `None` until recovery succeeded.
    current: Option<(B::State, u64)>,
    /// Who hears of each persisted state (set by an [`EntityRegistry`](crate::EntityRegistry)).
    subscribers: Option<Arc<dyn Publish<B::State>>>,
    /// Run when the actor is dropped, stopped or never started: how a registry learns that this
    /// incarnation is gone and the next may start.
    on_drop: Option<OnDrop>,
    /// Messages routed to this incarnation by a registry and not yet answered: decremented as
    /// each is done, so the registry knows which entities it can stop without waiting.
    busy: Option<Arc<AtomicUsize>>,
    /// Where a registry counts the decisions made again after a conflict.
    conflict_retries: Option<Arc<AtomicU64>>,
    /// With a registry's ownership: the claim on the id, and whether it is lost.
    owned: Option<Owned>,
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
            conflicts: ConflictPolicy::default(),
            current: None,
            subscribers: None,
            on_drop: None,
            busy: None,
            conflict_retries: None,
            owned: None,
        }
    }

    /// Runs the entity only while its id is this replica's: claimed through `claims` before
    /// it loads, written fenced by the claim, released when it stops.
    pub(crate) fn owned_by(mut self, claims: Arc<dyn Claims>) -> Self {
        self.owned = Some(Owned::new(claims));
        self
    }

    /// Counts, in `busy`, the messages a registry routed to this incarnation and it has not
    /// answered yet; in `conflict_retries`, the decisions it made again after a conflict.
    pub(crate) fn tracked(
        mut self,
        busy: Arc<AtomicUsize>,
        conflict_retries: Arc<AtomicU64>,
    ) -> Self {
        self.busy = Some(busy);
        self.conflict_retries = Some(conflict_retries);
        self
    }

    /// One routed message is answered.
    fn done(&self) {
        if let Some(busy) = &self.busy {
            // Never below zero, whatever was routed.
            let _ = busy.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
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

    /// How a command whose write conflicted is decided again.
    ///
    /// Defaults to [`ConflictPolicy::default`]: up to 10 decisions per command.
    #[must_use]
    pub fn conflicts(mut self, policy: ConflictPolicy) -> Self {
        self.conflicts = policy.at_least_one_decision();
        self
    }

    /// The behavior, e.g. to read its non-durable fields in tests.
    pub fn behavior(&self) -> &B {
        &self.behavior
    }
}

impl<B: DurableStateBehavior> Actor for DurableEntity<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `wait` holds the mailbox until recovery is over: commands queue, none is handled
        // against the initial state by mistake.
        ctx.wait(recover_with_retries(self, 1));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(owned) = &mut self.owned {
            owned.release(self.behavior.persistence_id());
        }
    }
}

impl<B, C> Handler<C> for DurableEntity<B>
where
    B: HandleCommandAsync<C>,
    C: Message<Result = Result<B::Reply, CommandError<B::Error>>> + Clone + 'static,
{
    type Result = RunCommand<C>;

    fn handle(&mut self, command: C, _ctx: &mut Self::Context) -> Self::Result {
        RunCommand(command)
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
        let id = self.behavior.persistence_id();
        let refused = self.owned.as_mut().and_then(|owned| {
            let refusal = owned.check(id)?;
            Some(refusal.error(id, owned.claims.replica()))
        });
        if let Some(error) = refused {
            self.done();
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(error))));
        }
        AtomicResponse::new(Box::pin(self.ensure_recovered().map(
            |recovered, entity, _ctx| {
                entity.done();
                recovered?;
                entity.current.clone().ok_or(Error::NotConnected)
            },
        )))
    }
}
