//! [`EntityRegistry`]: entities by id, the actix way. A command is sent to an id; the registry
//! starts the entity on first use, routes to its live actor otherwise, keeps one live actor per
//! id, and passivates entities that are idle or beyond `max_live`.
//!
//! Routing is a lookup in a table behind a mutex, not a hop through an actor: `send` finds the
//! entity's address and puts the command straight into its mailbox, so a command costs one
//! mailbox, as with a bare `Addr`. The table (`table.rs`) holds, per id, a live actor, one that
//! is passivating with the commands that wait for its successor, or the commands that wait for
//! room under `max_live` before the entity starts.

pub(crate) mod publish;
mod table;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use actix::dev::channel;
use actix::{Addr, ArbiterHandle, Context, MailboxError, Message, Recipient};
use tokio::sync::{Notify, oneshot};

use crate::behavior::{CommandError, DurableStateBehavior, HandleCommandAsync};
use crate::entity::{DurableEntity, GetState, OnDrop, RecoveryPolicy, Sharding, StateStore};
use crate::error::{Error, InvalidInput};
use crate::registry::publish::{Publish, StateChanged, Subscribers};
use crate::registry::table::{Table, Waiter};
use crate::state::validate_persistence_id;

/// How a registry makes a behavior for an id.
type Factory<B> = dyn Fn(&str) -> B + Send + Sync;

/// The entities of one behavior type, by id: send a command to an id and the registry starts
/// the entity on first use (recovering its state), routes to its live actor otherwise, and
/// stops it again when it is not used: eGo's engine (`SendCommand(ctx, id, command)`), Akka's
/// `entityRefFor`, Orleans' grains.
///
/// Create one per behavior type with [`EntityRegistry::builder`], inside an actix system; clone
/// the handle freely (it is `Send + Sync`, usable from any thread or runtime).
///
/// - **One live actor per id.** At most one actor of an id is alive in a registry at any time:
///   a new one starts only once the previous one has stopped (its in-flight commands answered).
///   Two registries, or two processes, over one table are still kept apart by the store's
///   version check, as for any two writers.
/// - **Mailbox order.** Commands to one id are handled one at a time, in the order `send` was
///   called: `send` puts the command into the entity's mailbox before it returns, so the
///   returned future only waits for the reply (like [`Addr::send`]).
/// - **Passivation.** An entity no command was sent to for [`idle_timeout`] (default 2 minutes)
///   is stopped, and so is the least recently used one when another must start and
///   [`max_live`] actors (default 100,000) are alive: never more than that. Passivating lets
///   the entity finish the commands already in its mailbox; a command sent meanwhile waits and
///   is delivered to the next incarnation, which recovers the state from the store: never
///   dropped, never answered twice.
/// - **Recovery at scale.** Entities recover through the store's batched reads, so 10,000
///   activations at once cost a few dozen statements.
/// - **Errors** arrive as the command's own [`CommandError`]: a stopped registry answers
///   [`CommandError::RegistryStopped`] (nothing applied); an entity whose actor died while
///   holding the command (its arbiter stopped) answers `CommandError::Store(Error::Interrupted)`
///   (outcome unknown); an id the store would refuse answers `CommandError::Recovery` with
///   [`Error::InvalidInput`], without starting an actor.
///
/// ```no_run
/// # use actix::Message;
/// # use durablestore_postgres::*;
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct S { #[prost(int64, tag = "1")] pub n: i64 }
/// # impl prost::Name for S { const NAME: &'static str = "S"; const PACKAGE: &'static str = "p"; }
/// # pub struct Counter { id: String }
/// # impl DurableStateBehavior for Counter { type State = S; fn persistence_id(&self) -> &str { &self.id } }
/// # #[derive(Message)] #[rtype(result = "Result<i64, CommandError<String>>")] pub struct Add(pub i64);
/// # impl HandleCommand<Add> for Counter { type Reply = i64; type Error = String;
/// #   fn handle_command(&mut self, Add(n): Add, s: &S, _: u64) -> Result<Effect<S, i64>, String> {
/// #     Ok(Effect::persist(S { n: s.n + n }, s.n + n)) } }
/// # async fn run(store: DurableStore) -> Result<(), Box<dyn std::error::Error>> {
/// let counters = EntityRegistry::builder(store, |id: &str| Counter { id: id.to_owned() })
///     .max_live(10_000)
///     .start()?;
/// let value = counters.send("counter-7", Add(2)).await?; // started and recovered on demand
/// let (state, version) = counters.state("counter-7").await?;
/// counters.stop().await; // passivates every entity once its commands are answered
/// # Ok(()) }
/// ```
///
/// [`idle_timeout`]: RegistryBuilder::idle_timeout
/// [`max_live`]: RegistryBuilder::max_live
pub struct EntityRegistry<B: DurableStateBehavior>
where
    B::State: Send,
{
    shared: Arc<Shared<B>>,
}

impl<B: DurableStateBehavior> Clone for EntityRegistry<B>
where
    B::State: Send,
{
    fn clone(&self) -> Self {
        EntityRegistry {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B: DurableStateBehavior> fmt::Debug for EntityRegistry<B>
where
    B::State: Send,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityRegistry")
            .field("behavior", &std::any::type_name::<B>())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a registry holds now and has done so far ([`EntityRegistry::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Entities whose actor takes commands now (at most `max_live`).
    pub live: usize,
    /// Entities being passivated: their actor finishes the commands it holds, then stops.
    pub passivating: usize,
    /// Ids with commands waiting for room under `max_live` before their entity starts.
    pub waiting: usize,
    /// The most entity actors alive at once, live and passivating together: at most
    /// `max_live`.
    pub peak_actors: usize,
    /// Entity actors started (first use, or use after passivation).
    pub activations: u64,
    /// Passivations begun (idle, beyond `max_live`, [`EntityRegistry::passivate`] or
    /// [`EntityRegistry::stop`]).
    pub passivations: u64,
    /// [`StateChanged`] events not delivered because a subscriber's mailbox was full.
    pub state_changes_dropped: u64,
}

/// Settings of an [`EntityRegistry`], consumed by [`RegistryBuilder::start`].
pub struct RegistryBuilder<B: DurableStateBehavior> {
    store: StateStore,
    factory: Box<Factory<B>>,
    sharding: Sharding,
    recovery: RecoveryPolicy,
    idle_timeout: Option<Duration>,
    max_live: usize,
    arbiter: Option<ArbiterHandle>,
}

impl<B: DurableStateBehavior> fmt::Debug for RegistryBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("store", &self.store)
            .field("sharding", &self.sharding)
            .field("recovery", &self.recovery)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_live", &self.max_live)
            .finish_non_exhaustive()
    }
}

impl<B: DurableStateBehavior> RegistryBuilder<B>
where
    B::State: Send,
{
    /// How long an entity may go without a command before it is passivated; `None` keeps
    /// entities until `max_live` or [`EntityRegistry::stop`] passivates them. Idle entities are
    /// found by a sweep every eighth of the timeout (at most every 15 s), so one is passivated
    /// between `idle_timeout` and two sweeps later.
    ///
    /// Defaults to [`EntityRegistry::DEFAULT_IDLE_TIMEOUT`] (2 minutes, as Akka's default).
    #[must_use]
    pub fn idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout.filter(|t| !t.is_zero());
        self
    }

    /// The most entity actors alive at once, live and passivating together. A command for an
    /// entity that is not live when there is no room waits: the least recently used live
    /// entity is passivated, and once it has stopped, the entity that has waited longest
    /// starts. At least 1 (0 is taken as 1).
    ///
    /// Defaults to [`EntityRegistry::DEFAULT_MAX_LIVE`] (100,000).
    #[must_use]
    pub fn max_live(mut self, max_live: usize) -> Self {
        self.max_live = max_live.max(1);
        self
    }

    /// How entities shard their written states.
    ///
    /// Defaults to [`Sharding::default`].
    #[must_use]
    pub fn sharding(mut self, sharding: Sharding) -> Self {
        self.sharding = sharding;
        self
    }

    /// How entities retry recovery when they start.
    ///
    /// Defaults to [`RecoveryPolicy::default`].
    #[must_use]
    pub fn recovery(mut self, policy: RecoveryPolicy) -> Self {
        self.recovery = policy;
        self
    }

    /// The arbiter the entity actors run on.
    ///
    /// Defaults to the arbiter [`RegistryBuilder::start`] is called on.
    #[must_use]
    pub fn arbiter(mut self, arbiter: ArbiterHandle) -> Self {
        self.arbiter = Some(arbiter);
        self
    }

    /// Starts the registry (no entity yet: they start on first use).
    ///
    /// # Errors
    /// [`Error::NoRuntime`] when no arbiter was given and this is not called on an actix
    /// arbiter's thread (inside `#[actix::main]`, `#[actix::test]`, `System::new().block_on`
    /// or an `Arbiter`).
    pub fn start(self) -> Result<EntityRegistry<B>, Error> {
        let arbiter = match self.arbiter {
            Some(arbiter) => arbiter,
            None => actix::Arbiter::try_current().ok_or(Error::NoRuntime)?,
        };
        let shared = Arc::new(Shared {
            arbiter,
            factory: self.factory,
            store: self.store,
            sharding: self.sharding,
            recovery: self.recovery,
            max_live: self.max_live,
            subscribers: Arc::new(Subscribers::default()),
            table: Mutex::new(Table::default()),
            all_stopped: Notify::new(),
        });
        if let Some(idle_timeout) = self.idle_timeout {
            let sweep = sweep_idle(Arc::downgrade(&shared), idle_timeout);
            if !shared.arbiter.spawn(sweep) {
                return Err(Error::NoRuntime);
            }
        }
        Ok(EntityRegistry { shared })
    }
}

impl<B: DurableStateBehavior> EntityRegistry<B>
where
    B::State: Send,
{
    /// Default of [`RegistryBuilder::idle_timeout`]: 2 minutes.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

    /// Default of [`RegistryBuilder::max_live`]: 100,000 entities.
    pub const DEFAULT_MAX_LIVE: usize = 100_000;

    /// A registry of entities running behaviors made by `factory` on `store` (an `Addr` of any
    /// store actor, a [`DurableStore`](crate::DurableStore), or a [`StateStore`]). Set it up,
    /// then [`start`](RegistryBuilder::start) it.
    ///
    /// `factory(id)` must return a behavior whose
    /// [`persistence_id`](DurableStateBehavior::persistence_id) is `id`. It is called on the
    /// registry's arbiter each time the entity starts, so the behavior itself need not be
    /// `Send`.
    pub fn builder(
        store: impl Into<StateStore>,
        factory: impl Fn(&str) -> B + Send + Sync + 'static,
    ) -> RegistryBuilder<B> {
        RegistryBuilder {
            store: store.into(),
            factory: Box::new(factory),
            sharding: Sharding::default(),
            recovery: RecoveryPolicy::default(),
            idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
            max_live: Self::DEFAULT_MAX_LIVE,
            arbiter: None,
        }
    }

    /// Sends `command` to the entity `id`, starting it if it is not live, and returns the
    /// reply. The command is in the entity's mailbox (or queued for its next incarnation) when
    /// this returns; the future only waits for the reply, and dropping it does not take the
    /// command back.
    ///
    /// Accepts every command the behavior decides on, with [`HandleCommand`] or
    /// [`HandleCommandAsync`].
    ///
    /// [`HandleCommand`]: crate::HandleCommand
    pub fn send<C>(
        &self,
        id: &str,
        command: C,
    ) -> impl Future<Output = Result<B::Reply, CommandError<B::Error>>> + use<B, C>
    where
        B: HandleCommandAsync<C>,
        B::Reply: Send,
        B::Error: Send,
        C: Message<Result = Result<B::Reply, CommandError<B::Error>>> + Send + 'static,
    {
        let routed = self.shared.route(id, move |entity| entity.send(command));
        async move {
            match routed.reply().await {
                Ok(reply) => reply,
                Err(undelivered) => Err(undelivered.into()),
            }
        }
    }

    /// The current state and version of the entity `id` (0 before its first persisted state),
    /// without a command handler of your own: eGo's `GetStateCommand`. Starts the entity if it
    /// is not live, and answers after every command sent to it before.
    ///
    /// # Errors
    /// [`CommandError::Recovery`] when the entity cannot load its state; otherwise as
    /// [`EntityRegistry::send`].
    pub fn state(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(B::State, u64), CommandError<Infallible>>> + use<B> {
        let routed = self
            .shared
            .route(id, |entity| entity.send(GetState::<B::State>::new()));
        async move {
            match routed.reply().await {
                Ok(Ok(current)) => Ok(current),
                Ok(Err(error)) => Err(CommandError::Recovery(error)),
                Err(undelivered) => Err(undelivered.into()),
            }
        }
    }

    /// Passivates the entity `id` now if it is live: it answers the commands it already holds,
    /// then stops; later commands go to a new incarnation. Returns whether it was live.
    pub fn passivate(&self, id: &str) -> bool {
        self.shared.lock().passivate_id(id)
    }

    /// Publishes a [`StateChanged`] to `subscriber` after each state an entity of this registry
    /// persists, in version order per entity. A subscriber whose mailbox is full misses events
    /// rather than slowing entities down (see [`StateChanged`] for the policy and how to size
    /// the mailbox); one that stopped is forgotten.
    pub fn subscribe(&self, subscriber: Recipient<StateChanged<B::State>>) {
        self.shared.subscribers.subscribe(subscriber);
    }

    /// What the registry holds now and has done so far.
    pub fn stats(&self) -> RegistryStats {
        let table = self.shared.lock();
        RegistryStats {
            live: table.live(),
            passivating: table.passivating(),
            waiting: table.waiting(),
            peak_actors: table.peak_actors,
            activations: table.activations,
            passivations: table.passivations,
            state_changes_dropped: self.shared.subscribers.dropped(),
        }
    }

    /// Stops the registry: from now on every `send` answers
    /// [`CommandError::RegistryStopped`], as do commands still waiting for an entity to
    /// restart; every live entity is passivated after the commands already in its mailbox. The
    /// returned future resolves once every entity actor has stopped (stopping starts even if
    /// it is not awaited). Every clone of the handle sees the registry stopped.
    pub fn stop(&self) -> impl Future<Output = ()> + use<B> {
        let shared = Arc::clone(&self.shared);
        shared.lock().stop();
        async move {
            loop {
                // Registered before the check, so a notification between the two is not lost.
                let stopped = shared.all_stopped.notified();
                if shared.lock().actors() == 0 {
                    return;
                }
                stopped.await;
            }
        }
    }
}

/// Everything the handles of one registry share.
struct Shared<B: DurableStateBehavior>
where
    B::State: Send,
{
    arbiter: ArbiterHandle,
    factory: Box<Factory<B>>,
    store: StateStore,
    sharding: Sharding,
    recovery: RecoveryPolicy,
    max_live: usize,
    subscribers: Arc<Subscribers<B::State>>,
    table: Mutex<Table<B>>,
    /// Notified when the registry is stopped and its last actor is gone.
    all_stopped: Notify,
}

/// A closure that starts an entity actor on the registry's arbiter.
type StartEntity = Box<dyn FnOnce() + Send>;

/// A waiter that delivers a message with `deliver` once the entity (re)starts, and the
/// receiver of what `deliver` returns.
fn waiter<B, T>(
    deliver: impl FnOnce(&Addr<DurableEntity<B>>) -> T + Send + 'static,
) -> (Waiter<B>, oneshot::Receiver<T>)
where
    B: DurableStateBehavior,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let waiter: Waiter<B> = Box::new(move |next| {
        // The caller may have stopped waiting; the message is delivered anyway.
        let _ = tx.send(deliver(next));
    });
    (waiter, rx)
}

impl<B: DurableStateBehavior> Shared<B>
where
    B::State: Send,
{
    fn lock(&self) -> MutexGuard<'_, Table<B>> {
        // The table is consistent between statements; a panic elsewhere does not corrupt it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a message for `id` to its live actor now (starting one if there is none and there
    /// is room), or queues it for the entity's next start: after its passivation, or once
    /// there is room under `max_live`. `deliver` puts the message in the mailbox; it runs under
    /// the table's lock, so messages enter one entity's mailbox in the order they were routed,
    /// and never behind its `Passivate`.
    fn route<T: Send + 'static>(
        self: &Arc<Self>,
        id: &str,
        deliver: impl FnOnce(&Addr<DurableEntity<B>>) -> T + Send + 'static,
    ) -> Routed<T> {
        let mut starts = Vec::new();
        let routed = {
            let mut table = self.lock();
            if table.stopped {
                Routed::Refused(Undelivered::Stopped)
            } else if let Some(addr) = table.touch(id) {
                Routed::Now(deliver(addr))
            } else if let Some(waiters) = table.waiters_mut(id) {
                let (waiter, reply) = waiter(deliver);
                waiters.push(waiter);
                Routed::Later(reply)
            } else if let Err(invalid) = validate_persistence_id(id) {
                Routed::Refused(Undelivered::InvalidId(invalid))
            } else if table.actors() < self.max_live && table.waiting() == 0 {
                let addr = self.activate(&mut table, id.to_owned(), &mut starts);
                Routed::Now(deliver(&addr))
            } else {
                let (waiter, reply) = waiter(deliver);
                table.wait_for_room(id.to_owned(), vec![waiter]);
                self.make_room(&mut table, &mut starts);
                Routed::Later(reply)
            }
        };
        // Outside the lock: a job the arbiter refuses is dropped at once, and dropping it runs
        // the entity's `OnDrop`, which takes the lock.
        for start in starts {
            self.spawn(start);
        }
        routed
    }

    /// Starts the ids waiting for room while there is room, oldest first, delivering their
    /// commands in the order they arrived; then passivates the least recently used live
    /// entities until each id still waiting has a passivating entity whose stop will make its
    /// room. So at most `max_live` actors are ever alive.
    fn make_room(self: &Arc<Self>, table: &mut Table<B>, starts: &mut Vec<StartEntity>) {
        while table.actors() < self.max_live {
            let Some((id, waiters)) = table.next_waiting() else {
                break;
            };
            let addr = self.activate(table, id, starts);
            for waiter in waiters {
                waiter(&addr);
            }
        }
        while table.passivating() < table.waiting() && table.passivate_lru() {}
    }

    /// Makes `id` live with a new incarnation. Returns its address (messages sent to it wait in
    /// its mailbox until it runs); the job that starts it goes to `starts`, to be run without
    /// the lock held.
    fn activate(
        self: &Arc<Self>,
        table: &mut Table<B>,
        id: String,
        starts: &mut Vec<StartEntity>,
    ) -> Addr<DurableEntity<B>> {
        let generation = table.next_generation();
        // Unbounded: a send never parks, so every message is in the mailbox when `send`
        // returns (the order guarantee); callers each wait for their reply, which bounds it.
        let (tx, rx) = channel::channel(0);
        let addr = Addr::new(tx);
        table.add_live(id.clone(), addr.clone(), generation);
        let gone = {
            let registry = Arc::downgrade(self);
            let id = id.clone();
            OnDrop::new(move || {
                if let Some(registry) = registry.upgrade() {
                    registry.gone(&id, generation);
                }
            })
        };
        let shared = Arc::clone(self);
        starts.push(Box::new(move || {
            let behavior = (shared.factory)(&id);
            if behavior.persistence_id() != id {
                tracing::error!(
                    registry_id = %id,
                    persistence_id = behavior.persistence_id(),
                    "the registry's factory made a behavior with another persistence id; \
                     one live actor per id is then not guaranteed"
                );
            }
            let subscribers: Arc<dyn Publish<B::State>> = shared.subscribers.clone();
            let entity = DurableEntity::new(behavior, shared.store.clone())
                .sharding(shared.sharding.clone())
                .recovery(shared.recovery.clone())
                .publish_to(subscribers)
                .on_drop(gone);
            drop(shared);
            let context = Context::with_receiver(rx);
            actix::spawn(context.into_future(entity));
        }));
        addr
    }

    /// Starts an entity on the arbiter; a dead arbiter stops the registry.
    fn spawn(&self, job: StartEntity) {
        if !self.arbiter.spawn_fn(job) {
            tracing::error!("the entity registry's arbiter is gone; the registry stops");
            self.lock().stop();
        }
    }

    /// Incarnation `generation` of `id` is gone: frees its place. Commands that wait for its
    /// next incarnation queue for room like a new id (behind the ids already waiting), and the
    /// room it made goes to the id that has waited longest.
    fn gone(self: &Arc<Self>, id: &str, generation: u64) {
        let mut starts = Vec::new();
        {
            let mut table = self.lock();
            let waiters = table.remove(id, generation);
            if table.stopped {
                // Waiters of a stopped registry are dropped here: their callers are answered
                // `RegistryStopped`.
                drop(waiters);
                if table.actors() == 0 {
                    self.all_stopped.notify_waiters();
                }
            } else {
                if !waiters.is_empty() {
                    table.wait_for_room(id.to_owned(), waiters);
                }
                self.make_room(&mut table, &mut starts);
            }
        }
        for start in starts {
            self.spawn(start);
        }
    }

    /// Passivates entities idle for `idle_timeout`; false once the registry is stopped.
    fn sweep(&self, idle_timeout: Duration) -> bool {
        let mut table = self.lock();
        if table.stopped {
            return false;
        }
        table.passivate_idle(Instant::now(), idle_timeout);
        true
    }
}

/// Passivates idle entities until the registry is stopped or dropped.
async fn sweep_idle<B: DurableStateBehavior>(registry: Weak<Shared<B>>, idle_timeout: Duration)
where
    B::State: Send,
{
    // An entity is found idle by the first sweep whose time is `idle_timeout` after a sweep
    // that followed its last command: between 1 and 1 + 2/8 `idle_timeout` after that command.
    let period = (idle_timeout / 8).clamp(Duration::from_millis(1), Duration::from_secs(15));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        if !registry.sweep(idle_timeout) {
            return;
        }
    }
}

/// Where a routed message went.
enum Routed<R> {
    /// Into a live actor's mailbox; `R` is the pending reply.
    Now(R),
    /// Queued for the next incarnation of a passivating entity.
    Later(oneshot::Receiver<R>),
    /// Nowhere.
    Refused(Undelivered),
}

impl<R, T> Routed<R>
where
    R: Future<Output = Result<T, MailboxError>>,
{
    /// The entity's reply, or why there is none.
    async fn reply(self) -> Result<T, Undelivered> {
        let request = match self {
            Routed::Now(request) => request,
            // A dropped waiter means the registry stopped before the entity restarted.
            Routed::Later(queued) => queued.await.map_err(|_| Undelivered::Stopped)?,
            Routed::Refused(why) => return Err(why),
        };
        // Commands are never queued behind `Passivate`, so a closed mailbox means the actor
        // died with the command (its arbiter stopped): it may have been applied.
        request.await.map_err(|_| Undelivered::Interrupted)
    }
}

/// Why a registry could not bring back a reply.
enum Undelivered {
    /// The registry was stopped: nothing was delivered.
    Stopped,
    /// The id can never be stored: nothing was delivered.
    InvalidId(InvalidInput),
    /// The actor went away holding the message: the outcome is unknown.
    Interrupted,
}

impl<E> From<Undelivered> for CommandError<E> {
    fn from(undelivered: Undelivered) -> Self {
        match undelivered {
            Undelivered::Stopped => CommandError::RegistryStopped,
            Undelivered::InvalidId(invalid) => CommandError::Recovery(Error::InvalidInput(invalid)),
            Undelivered::Interrupted => CommandError::Store(Error::Interrupted),
        }
    }
}
