//! What the handles of one registry share, and how a command gets to its entity: the table
//! lookup, activation, waiting for room or for a passivating predecessor, and passivation.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use actix::dev::channel;
use actix::{Addr, ArbiterHandle, Context, MailboxError};
use futures_util::future::{Either, FutureExt, TryFutureExt, ready};
use tokio::sync::{Notify, oneshot};

use super::Factory;
use super::lease::{Lease, Passivate};
use crate::behavior::{CommandError, DurableStateBehavior};
use crate::entity::{
    Claims, ConflictPolicy, DurableEntity, OnDrop, RecoveryPolicy, Sharding, StateStore,
};
use crate::error::{Error, InvalidInput};
use crate::publish::{Publish, Subscribers};
use crate::registry::table::{Incarnation, Table, Waiter};
use crate::state::validate_persistence_id;

/// Everything the handles of one registry share.
pub(super) struct Shared<B: DurableStateBehavior>
where
    B::State: Send,
{
    pub(super) arbiter: ArbiterHandle,
    pub(super) factory: Box<Factory<B>>,
    pub(super) store: StateStore,
    pub(super) sharding: Sharding,
    pub(super) recovery: RecoveryPolicy,
    pub(super) conflicts: ConflictPolicy,
    pub(super) max_live: usize,
    /// How long an id may wait for room before it starts beyond `max_live`.
    pub(super) max_activation_wait: Duration,
    /// Decisions the entities made again after a conflict.
    pub(super) conflict_retries: Arc<AtomicU64>,
    pub(super) subscribers: Arc<Subscribers<B::State>>,
    pub(super) table: Mutex<Table<B>>,
    /// Notified when the registry is stopped and its last actor is gone.
    pub(super) all_stopped: Notify,
    /// With ownership: the replica's lease, and the claims its entities make through it.
    pub(super) lease: Option<Arc<Lease>>,
    pub(super) claims: Option<Arc<dyn Claims>>,
}

/// A closure that starts an entity actor on the registry's arbiter.
pub(super) type StartEntity = Box<dyn FnOnce() + Send>;

/// A waiter that delivers a message with `deliver` once the entity (re)starts, and the
/// receiver of what `deliver` returns.
pub(super) fn waiter<B, T>(
    deliver: impl FnOnce(&Addr<DurableEntity<B>>) -> T + Send + 'static,
) -> (Waiter<B>, oneshot::Receiver<T>)
where
    B: DurableStateBehavior,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let waiter: Waiter<B> = Box::new(move |next: &Incarnation<B>| {
        // The caller may have stopped waiting; the message is delivered anyway.
        let _ = tx.send(next.deliver(deliver));
    });
    (waiter, rx)
}

impl<B: DurableStateBehavior> Shared<B>
where
    B::State: Send,
{
    pub(super) fn lock(&self) -> MutexGuard<'_, Table<B>> {
        // The table is consistent between statements; a panic elsewhere does not corrupt it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a message for `id` to its live actor now (starting one if there is none and there
    /// is room), or queues it for the entity's next start: after its passivation, or once
    /// there is room under `max_live`. `deliver` puts the message in the mailbox; it runs under
    /// the table's lock, so messages enter one entity's mailbox in the order they were routed,
    /// and never behind its `Passivate`.
    pub(super) fn route<T: Send + 'static>(
        self: &Arc<Self>,
        id: &str,
        deliver: impl FnOnce(&Addr<DurableEntity<B>>) -> T + Send + 'static,
    ) -> Routed<T> {
        let mut starts = Vec::new();
        let mut activated = false;
        let routed = {
            let mut table = self.lock();
            if table.stopped {
                Routed::Refused(Undelivered::Stopped)
            } else if let Some(actor) = table.touch(id) {
                Routed::Now(actor.deliver(deliver))
            } else if let Some(waiters) = table.waiters_mut(id) {
                let (waiter, reply) = waiter(deliver);
                waiters.push(waiter);
                Routed::Later(reply)
            } else if let Err(invalid) = validate_persistence_id(id) {
                Routed::Refused(Undelivered::InvalidId(invalid))
            } else if table.actors() < self.max_live && table.waiting() == 0 {
                activated = true;
                let actor = self.activate(&mut table, id.to_owned(), &mut starts);
                Routed::Now(actor.deliver(deliver))
            } else {
                let (waiter, reply) = waiter(deliver);
                self.wait_for_room(&mut table, id.to_owned(), vec![waiter]);
                self.make_room(&mut table, &mut starts);
                Routed::Later(reply)
            }
        };
        // Outside the lock: a job the arbiter refuses is dropped at once, and dropping it runs
        // the entity's `OnDrop`, which takes the lock.
        let mut all_started = true;
        for start in starts {
            all_started &= self.spawn(start);
        }
        if activated && !all_started {
            // The entity never started, so the message never reached one: a definite answer.
            return Routed::Refused(Undelivered::Stopped);
        }
        routed
    }

    /// Starts the ids waiting for room while there is room, oldest first, delivering their
    /// commands in the order they arrived; then passivates entities until each id still
    /// waiting has a passivating entity whose stop will make its room: the least recently used
    /// idle ones first (they stop at once), busy ones only when none is idle.
    pub(super) fn make_room(self: &Arc<Self>, table: &mut Table<B>, starts: &mut Vec<StartEntity>) {
        while table.actors() < self.max_live {
            let Some((id, waiters)) = table.next_waiting() else {
                break;
            };
            self.start_waiting(table, id, waiters, starts);
        }
        while table.passivating() < table.waiting() && table.passivate_for_room() {}
    }

    fn start_waiting(
        self: &Arc<Self>,
        table: &mut Table<B>,
        id: String,
        waiters: Vec<Waiter<B>>,
        starts: &mut Vec<StartEntity>,
    ) {
        let actor = self.activate(table, id, starts);
        for waiter in waiters {
            waiter(&actor);
        }
    }

    /// Queues `id` for room, and makes sure it does not wait longer than
    /// `max_activation_wait`: a busy entity chosen to make room may be waiting for this very
    /// id (an entity asking another), and would never stop.
    fn wait_for_room(self: &Arc<Self>, table: &mut Table<B>, id: String, waiters: Vec<Waiter<B>>) {
        let turn = table.wait_for_room(id.clone(), waiters);
        let registry = Arc::downgrade(self);
        let wait = self.max_activation_wait;
        // A dead arbiter drops this, and the id waits for room as before the limit.
        self.arbiter.spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(registry) = registry.upgrade() {
                registry.admit_over_limit(&id, turn);
            }
        });
    }

    /// Starts `id` at once, beyond `max_live`, if it still waits for room since `turn`.
    fn admit_over_limit(self: &Arc<Self>, id: &str, turn: u64) {
        let mut starts = Vec::new();
        {
            let mut table = self.lock();
            if table.stopped {
                return;
            }
            let Some(waiters) = table.take_waiting(id, turn) else {
                return;
            };
            table.over_limit += 1;
            tracing::warn!(
                persistence_id = id,
                max_live = self.max_live,
                wait = ?self.max_activation_wait,
                "no entity made room in time (each had a command in flight); starting one beyond max_live"
            );
            self.start_waiting(&mut table, id.to_owned(), waiters, &mut starts);
        }
        for start in starts {
            self.spawn(start);
        }
    }

    /// Makes `id` live with a new incarnation. Returns its address (messages sent to it wait in
    /// its mailbox until it runs); the job that starts it goes to `starts`, to be run without
    /// the lock held.
    pub(super) fn activate(
        self: &Arc<Self>,
        table: &mut Table<B>,
        id: String,
        starts: &mut Vec<StartEntity>,
    ) -> Incarnation<B> {
        let generation = table.next_generation();
        // Unbounded: a send never parks, so every message is in the mailbox when `send`
        // returns (the order guarantee); callers each wait for their reply, which bounds it.
        let (tx, rx) = channel::channel(0);
        let actor = Incarnation {
            addr: Addr::new(tx),
            busy: Arc::new(AtomicUsize::new(0)),
        };
        table.add_live(id.clone(), actor.clone(), generation);
        let busy = Arc::clone(&actor.busy);
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
            let mut entity = DurableEntity::new(behavior, shared.store.clone())
                .sharding(shared.sharding.clone())
                .recovery(shared.recovery.clone())
                .conflicts(shared.conflicts.clone())
                .tracked(busy, Arc::clone(&shared.conflict_retries))
                .publish_to(subscribers)
                .on_drop(gone);
            if let Some(claims) = &shared.claims {
                entity = entity.owned_by(Arc::clone(claims));
            }
            drop(shared);
            let context = Context::with_receiver(rx);
            actix::spawn(context.into_future(entity));
        }));
        actor
    }

    /// Starts an entity on the arbiter; a dead arbiter stops the registry. Returns whether
    /// the arbiter took the job.
    pub(super) fn spawn(&self, job: StartEntity) -> bool {
        if self.arbiter.spawn_fn(job) {
            return true;
        }
        tracing::error!("the entity registry's arbiter is gone; the registry stops");
        self.lock().stop();
        false
    }

    /// Incarnation `generation` of `id` is gone: frees its place. Commands that wait for its
    /// next incarnation queue for room like a new id (behind the ids already waiting), and the
    /// room it made goes to the id that has waited longest.
    pub(super) fn gone(self: &Arc<Self>, id: &str, generation: u64) {
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
                    self.wait_for_room(&mut table, id.to_owned(), waiters);
                }
                self.make_room(&mut table, &mut starts);
            }
        }
        for start in starts {
            self.spawn(start);
        }
    }

    /// Passivates entities idle for `idle_timeout`; false once the registry is stopped.
    pub(super) fn sweep(&self, idle_timeout: Duration) -> bool {
        let mut table = self.lock();
        if table.stopped {
            return false;
        }
        table.passivate_idle(Instant::now(), idle_timeout);
        true
    }
}

impl<B: DurableStateBehavior> Passivate for Shared<B>
where
    B::State: Send,
{
    fn passivate_all(&self) {
        self.lock().passivate_all();
    }

    fn passivate(&self, id: &str) {
        self.lock().passivate_id(id);
    }
}

/// Passivates idle entities until the registry is stopped or dropped.
pub(super) async fn sweep_idle<B: DurableStateBehavior>(
    registry: Weak<Shared<B>>,
    idle_timeout: Duration,
) where
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
pub(super) enum Routed<R> {
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
    /// The entity's reply, or why there is none. A future of combinators rather than an
    /// `async fn`, which would hold the request twice (as `self` and as what it awaits): each
    /// command's future is moved at least once, and a request carries actix's own timer.
    pub(super) fn reply(self) -> impl Future<Output = Result<T, Undelivered>> {
        // Commands are never queued behind `Passivate`, so a closed mailbox means the actor
        // died with the command (its arbiter stopped): it may have been applied.
        let answered = |reply: Result<T, MailboxError>| reply.map_err(|_| Undelivered::Interrupted);
        match self {
            Routed::Now(request) => Either::Left(request.map(answered)),
            Routed::Later(queued) => Either::Right(Either::Left(
                // A dropped waiter means the registry stopped before the entity restarted.
                queued
                    .map_err(|_| Undelivered::Stopped)
                    .and_then(move |request| request.map(answered)),
            )),
            Routed::Refused(why) => Either::Right(Either::Right(ready(Err(why)))),
        }
    }
}

/// Why a registry could not bring back a reply.
pub(super) enum Undelivered {
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
