//! A registry's lease on its replica name, and the claims and releases of its entities' ids:
//! what makes [`Ownership`](super::ownership::Ownership) work at run time.
//!
//! The lease is renewed by one statement every third of its length, whatever the number of
//! owned ids. It is held, as far as the entities know, until a tenth of the lease before the
//! earliest moment the database could let it run out: counted on the monotonic clock from the
//! instant before the last successful renewal was sent, so that a slow answer, a paused
//! process or a stalled runtime only ever make the replica give up early. Past that moment the
//! keeper passivates every entity, and each command they still hold is answered
//! [`CommandError::LeaseLost`](crate::CommandError::LeaseLost) without being decided.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use super::ownership::Ownership;
use crate::entity::Claims;
use crate::error::Error;
use crate::handle::{DurableStore, ask};
use crate::queue::Queue;
use crate::repository::{Claim, Claimed, Release, ReplicaId, Repository};

/// How many claim batches run at once.
const CLAIM_WORKERS: u32 = 2;

/// What the lease asks of its registry: stopping entities.
pub(super) trait Passivate: Send + Sync {
    /// Passivates every live entity.
    fn passivate_all(&self);
    /// Passivates the live entity `id`, if it is live.
    fn passivate(&self, id: &str);
}

/// A registry's lease and the queues of its claims and releases.
pub(super) struct Lease {
    /// This replica's name.
    name: String,
    /// Its current registration: a fresh incarnation each time it must register again.
    me: Arc<Mutex<Arc<ReplicaId>>>,
    lease: Duration,
    repository: Arc<Repository>,
    claims: Queue<Claim>,
    releases: Queue<Release>,
    /// The origin of [`Lease::held_until`].
    base: Instant,
    /// Until when (nanoseconds after `base`) the lease is held as far as this replica knows;
    /// 0 while it is not.
    held_until: AtomicU64,
    /// Notified each time the lease is gained or renewed.
    renewed: Notify,
    stopped: AtomicBool,
}

impl Lease {
    /// The lease of `ownership` on `store`'s tables, not yet registered (the keeper does).
    pub(super) fn new(ownership: &Ownership, store: &DurableStore) -> Arc<Self> {
        let repository = Arc::clone(store.engine().repository());
        let config = &store.checked().config;
        let (capacity, batch) = (config.max_pending_requests, config.max_batch_size);
        let name = ownership.replica().to_owned();
        let me = Arc::new(Mutex::new(Arc::new(ReplicaId {
            name: name.clone(),
            incarnation: incarnation(),
        })));
        let claims = {
            let repository = Arc::clone(&repository);
            let me = Arc::clone(&me);
            Queue::start(capacity, CLAIM_WORKERS, batch, move |batch| {
                let repository = Arc::clone(&repository);
                // Claimed under the registration of the moment.
                let me = current(&me);
                async move { repository.claim_batch(&me, batch).await }
            })
        };
        let releases = {
            let repository = Arc::clone(&repository);
            Queue::start(capacity, 1, batch, move |batch| {
                let repository = Arc::clone(&repository);
                async move { repository.release_batch(batch).await }
            })
        };
        Arc::new(Lease {
            name,
            me,
            lease: ownership.lease(),
            repository,
            claims,
            releases,
            base: Instant::now(),
            held_until: AtomicU64::new(0),
            renewed: Notify::new(),
            stopped: AtomicBool::new(false),
        })
    }

    /// Whether the lease holds now, as far as this replica can tell.
    pub(super) fn holds(&self) -> bool {
        let until = self.held_until.load(Ordering::Acquire);
        until != 0 && self.nanos(Instant::now()) < until
    }

    /// The moment the lease stops holding, if it holds.
    fn deadline(&self) -> Option<Instant> {
        match self.held_until.load(Ordering::Acquire) {
            0 => None,
            until => Some(self.base + Duration::from_nanos(until)),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A registration or renewal sent at `sent` succeeded: the database keeps the lease at
    /// least `lease` after `sent`; this replica holds it until a tenth of that earlier.
    fn renewed_at(&self, sent: Instant) {
        let until = self.nanos(sent + self.lease - self.lease / 10).max(1);
        self.held_until.store(until, Ordering::Release);
        self.renewed.notify_waiters();
    }

    fn lose(&self) {
        self.held_until.store(0, Ordering::Release);
    }

    /// Waits for the lease to hold, at most one lease long.
    async fn held(&self) -> Result<(), Error> {
        let give_up = tokio::time::Instant::now() + self.lease;
        loop {
            let renewed = self.renewed.notified();
            if self.holds() {
                return Ok(());
            }
            if self.stopped.load(Ordering::Acquire)
                || tokio::time::timeout_at(give_up, renewed).await.is_err()
            {
                return Err(Error::LeaseLost {
                    replica: self.name.clone(),
                });
            }
        }
    }

    /// Claims `id` once the lease holds.
    fn claim(self: &Arc<Self>, id: &str) -> BoxFuture<'static, Result<Claimed, Error>> {
        let lease = Arc::clone(self);
        let id = id.to_owned();
        Box::pin(async move {
            lease.held().await?;
            ask(|reply| lease.claims.submit(id, reply)).await
        })
    }

    fn release(&self, id: &str, epoch: i64) {
        if let Some(admission) = self.releases.submit((id.to_owned(), epoch), None) {
            // A full queue: the release waits for room without holding the entity up.
            tokio::spawn(admission);
        }
    }

    /// Gives the replica name up once the registry has stopped: every id it still owns can be
    /// claimed at once. The keeper stops renewing.
    pub(super) async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        self.lose();
        let me = current(&self.me);
        let deregister = tokio::time::timeout(self.lease, self.repository.deregister(&me));
        match deregister.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(replica = %self.name, %error, "giving up the replica name failed; its ids move after the lease")
            }
            Err(_) => {
                tracing::warn!(replica = %self.name, "giving up the replica name timed out; its ids move after the lease")
            }
        }
    }
}

/// A fresh incarnation number: tells two processes with one replica name apart.
fn incarnation() -> i64 {
    fastrand::i64(1..i64::MAX)
}

/// The registration of the moment.
fn current(me: &Mutex<Arc<ReplicaId>>) -> Arc<ReplicaId> {
    Arc::clone(&registration(me))
}

/// The registration, locked. A poisoned lock only means a thread panicked while replacing
/// an `Arc`: the value is still whole.
fn registration(me: &Mutex<Arc<ReplicaId>>) -> std::sync::MutexGuard<'_, Arc<ReplicaId>> {
    me.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps the lease of a registry: creates the tables if need be, registers, renews every
/// third of the lease (sooner after a failure), and passivates every entity of the registry
/// once the lease stops holding. Ends when the registry stops or is dropped.
pub(super) async fn keep(lease: Arc<Lease>, registry: Weak<dyn Passivate>) {
    let every = lease.lease / 3;
    let retry = (lease.lease / 10).max(Duration::from_millis(10));
    let mut schema = false;
    let mut registered = false;
    let mut next = Instant::now();
    loop {
        let wake = lease.deadline().map_or(next, |deadline| deadline.min(next));
        tokio::time::sleep_until(wake.into()).await;
        if lease.stopped.load(Ordering::Acquire) || registry.strong_count() == 0 {
            return;
        }
        if lease
            .deadline()
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            lease.lose();
            tracing::warn!(replica = %lease.name, "the ownership lease could not be renewed in time; stopping every entity");
            passivate_all(&registry);
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + retry;
        if !schema {
            match lease.repository.create_ownership_schema().await {
                Ok(()) => schema = true,
                Err(error) => {
                    tracing::warn!(%error, "creating the ownership tables failed; retrying");
                    continue;
                }
            }
        }
        // An attempt never runs past the moment the lease stops holding: the entities are
        // stopped on time, whatever holds the statement up.
        let now = Instant::now();
        let within = match lease.deadline() {
            Some(deadline) if deadline > now => (deadline - now).min(every),
            _ => every,
        };
        let me = current(&lease.me);
        let attempt = if registered {
            lease.repository.renew(&me, lease.lease, within).await
        } else {
            lease.repository.register(&me, lease.lease, within).await
        };
        match attempt {
            Ok((true, sent)) => {
                registered = true;
                lease.renewed_at(sent);
                next = Instant::now() + every;
            }
            Ok((false, _)) if registered => {
                // The registration was deleted: this replica was taken for dead, and every
                // write still carrying it is fenced out. It registers again, afresh.
                registered = false;
                lease.lose();
                *registration(&lease.me) = Arc::new(ReplicaId {
                    name: lease.name.clone(),
                    incarnation: incarnation(),
                });
                tracing::warn!(replica = %lease.name, "this replica's registration was taken for dead; stopping every entity and registering again");
                passivate_all(&registry);
            }
            Ok((false, _)) => {
                tracing::warn!(replica = %lease.name, "the replica name is held by another live process; waiting for its lease to run out");
            }
            Err(error) => {
                tracing::warn!(replica = %lease.name, %error, "renewing the ownership lease failed; retrying");
            }
        }
    }
}

fn passivate_all(registry: &Weak<dyn Passivate>) {
    if let Some(registry) = registry.upgrade() {
        registry.passivate_all();
    }
}

/// The ownership of one registry, as its entities see it.
pub(super) struct RegistryClaims {
    pub(super) lease: Arc<Lease>,
    pub(super) registry: Weak<dyn Passivate>,
}

impl Claims for RegistryClaims {
    fn replica(&self) -> &str {
        &self.lease.name
    }

    fn claim(&self, id: &str) -> BoxFuture<'static, Result<Claimed, Error>> {
        self.lease.claim(id)
    }

    fn holds(&self) -> bool {
        self.lease.holds()
    }

    fn release(&self, id: &str, epoch: i64) {
        self.lease.release(id, epoch);
    }

    fn give_up(&self, id: &str) {
        if let Some(registry) = self.registry.upgrade() {
            registry.passivate(id);
        }
    }
}
