//! [`EntityRegistry`]: entities by id, the actix way. A command is sent to an id; the registry
//! starts the entity on first use, routes to its live actor otherwise, keeps one live actor per
//! id, and passivates entities that are idle or beyond `max_live`.
//!
//! Routing is a lookup in a table behind a mutex, not a hop through an actor: `send` finds the
//! entity's address and puts the command straight into its mailbox, so a command costs one
//! mailbox, as with a bare `Addr`. The table (`table.rs`) holds, per id, a live actor, one that
//! is passivating with the commands that wait for its successor, or the commands that wait for
//! room under `max_live` before the entity starts.

mod builder;
mod lease;
mod ownership;
mod shared;
mod table;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::{Message, Recipient};
use futures_util::FutureExt;

pub use self::builder::RegistryBuilder;
pub use self::ownership::Ownership;
use self::shared::Shared;
use crate::behavior::{CommandError, DurableStateBehavior, HandleCommandAsync};
use crate::entity::{ConflictPolicy, GetState, RecoveryPolicy, Sharding, StateStore};
use crate::error::Error;
use crate::publish::StateChanged;

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
///   version check, as for any two writers, and a decision whose write lost to the other
///   writer is made again on the stored state ([`RegistryBuilder::conflicts`]).
/// - **Mailbox order.** Commands to one id are handled one at a time, in the order `send` was
///   called: `send` puts the command into the entity's mailbox before it returns, so the
///   returned future only waits for the reply (like [`Addr::send`](actix::Addr::send)).
/// - **Passivation.** An entity no command was sent to for [`idle_timeout`] (default 2 minutes)
///   is stopped, and so is the least recently used one when another must start and
///   [`max_live`] actors (default 100,000) are alive: never more than that, but for
///   activations admitted beyond it after [`RegistryBuilder::max_activation_wait`] (counted in
///   [`RegistryStats::over_limit`]). Passivating lets
///   the entity finish the commands already in its mailbox; a command sent meanwhile waits and
///   is delivered to the next incarnation, which recovers the state from the store: never
///   dropped, never answered twice.
/// - **Recovery at scale.** Entities recover through the store's batched reads, so 10,000
///   activations at once cost a few dozen statements.
/// - **Errors** arrive as the command's own [`CommandError`]: a stopped registry answers
///   [`CommandError::RegistryStopped`] (nothing applied), as does one whose arbiter is gone
///   before the command reached an entity; an entity whose actor died while holding the
///   command (its arbiter stopped) answers `CommandError::Store(Error::Interrupted)` (outcome
///   unknown); an id the store would refuse answers `CommandError::Recovery` with
///   [`Error::InvalidInput`], without starting an actor.
/// - **Entities asking entities.** A decision may send to another entity of the same registry:
///   room under `max_live` is made from idle entities first, and an activation that finds no
///   room within [`RegistryBuilder::max_activation_wait`] starts beyond `max_live` rather than
///   wait for a busy entity that may be waiting for it.
///
/// ```no_run
/// # use actix::Message;
/// # use durablestore_postgres::*;
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct S { #[prost(int64, tag = "1")] pub n: i64 }
/// # impl prost::Name for S { const NAME: &'static str = "S"; const PACKAGE: &'static str = "p"; }
/// # pub struct Counter { id: String }
/// # impl DurableStateBehavior for Counter { type State = S; fn persistence_id(&self) -> &str { &self.id } }
/// # #[derive(Clone, Message)] #[rtype(result = "Result<i64, CommandError<String>>")] pub struct Add(pub i64);
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
    /// `max_live` while [`RegistryStats::over_limit`] is 0.
    pub peak_actors: usize,
    /// Entity actors started (first use, or use after passivation).
    pub activations: u64,
    /// Passivations begun (idle, beyond `max_live`, [`EntityRegistry::passivate`] or
    /// [`EntityRegistry::stop`]).
    pub passivations: u64,
    /// [`StateChanged`] events not delivered because a subscriber's mailbox was full.
    pub state_changes_dropped: u64,
    /// Activations admitted beyond `max_live` because no room was made within
    /// [`max_activation_wait`](RegistryBuilder::max_activation_wait) (every live entity had a
    /// command in flight, e.g. one waiting for the answer of the entity being activated).
    pub over_limit: u64,
    /// Decisions made again on the reloaded state after a write conflicted (see
    /// [`ConflictPolicy`]).
    pub conflict_retries: u64,
}

impl<B: DurableStateBehavior> EntityRegistry<B>
where
    B::State: Send,
{
    /// Default of [`RegistryBuilder::idle_timeout`]: 2 minutes.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

    /// Default of [`RegistryBuilder::max_live`]: 100,000 entities.
    pub const DEFAULT_MAX_LIVE: usize = 100_000;

    /// Default of [`RegistryBuilder::max_activation_wait`]: 2 s.
    pub const DEFAULT_MAX_ACTIVATION_WAIT: Duration = Duration::from_secs(2);

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
            conflicts: ConflictPolicy::default(),
            idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
            max_live: Self::DEFAULT_MAX_LIVE,
            max_activation_wait: Self::DEFAULT_MAX_ACTIVATION_WAIT,
            arbiter: None,
            ownership: None,
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
        C: Message<Result = Result<B::Reply, CommandError<B::Error>>> + Clone + Send + 'static,
    {
        // Mapped, not an `async` block: that would hold the reply's future twice.
        let routed = self.shared.route(id, move |entity| entity.send(command));
        routed.reply().map(|reply| match reply {
            Ok(reply) => reply,
            Err(undelivered) => Err(undelivered.into()),
        })
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
        routed.reply().map(|reply| match reply {
            Ok(Ok(current)) => Ok(current),
            Ok(Err(Error::NotOwner {
                owner: Some(owner), ..
            })) => Err(CommandError::OwnedElsewhere { owner }),
            Ok(Err(Error::LeaseLost { .. })) => Err(CommandError::LeaseLost),
            Ok(Err(error)) => Err(CommandError::Recovery(error)),
            Err(undelivered) => Err(undelivered.into()),
        })
    }

    /// Passivates the entity `id` now if it is live: it answers the commands it already holds,
    /// then stops; later commands go to a new incarnation. Returns whether it was live.
    pub fn passivate(&self, id: &str) -> bool {
        self.shared.lock().passivate_id(id)
    }

    /// Whether the entity `id` is live in this registry now: its actor takes commands (it may
    /// still be starting). With [`RegistryBuilder::ownership`], a live entity whose claim
    /// failed stops at once.
    pub fn is_live(&self, id: &str) -> bool {
        self.shared.lock().is_live(id)
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
            over_limit: table.over_limit,
            conflict_retries: self.shared.conflict_retries.load(Ordering::Relaxed),
        }
    }

    /// Stops the registry: from now on every `send` answers
    /// [`CommandError::RegistryStopped`], as do commands still waiting for an entity to
    /// restart; every live entity is passivated after the commands already in its mailbox. The
    /// returned future resolves once every entity actor has stopped (stopping starts even if
    /// it is not awaited) and, with [`RegistryBuilder::ownership`], the replica name was given
    /// up, so that other replicas claim its ids at once. Every clone of the handle sees the
    /// registry stopped.
    pub fn stop(&self) -> impl Future<Output = ()> + use<B> {
        let shared = Arc::clone(&self.shared);
        shared.lock().stop();
        async move {
            loop {
                // Registered before the check, so a notification between the two is not lost.
                let stopped = shared.all_stopped.notified();
                if shared.lock().actors() == 0 {
                    break;
                }
                stopped.await;
            }
            // Every entity has stopped, its last write answered: the replica name can go, and
            // with it every claim it still holds.
            if let Some(lease) = &shared.lease {
                lease.shutdown().await;
            }
        }
    }
}
