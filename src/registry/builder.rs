//! [`RegistryBuilder`]: the settings of an [`EntityRegistry`], and starting it.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::ArbiterHandle;
use tokio::sync::Notify;

use super::lease::{Lease, Passivate, RegistryClaims, keep};
use super::ownership::Ownership;
use super::shared::{Shared, sweep_idle};
use super::table::Table;
use super::{EntityRegistry, Factory};
use crate::behavior::DurableStateBehavior;
use crate::entity::{Claims, ConflictPolicy, RecoveryPolicy, Sharding, StateStore};
use crate::error::Error;
use crate::publish::Subscribers;
use crate::sql::MAX_OWNED_TABLE_LEN;

/// Settings of an [`EntityRegistry`], consumed by [`RegistryBuilder::start`].
pub struct RegistryBuilder<B: DurableStateBehavior> {
    pub(super) store: StateStore,
    pub(super) factory: Box<Factory<B>>,
    pub(super) sharding: Sharding,
    pub(super) recovery: RecoveryPolicy,
    pub(super) conflicts: ConflictPolicy,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) max_live: usize,
    pub(super) max_activation_wait: Duration,
    pub(super) arbiter: Option<ArbiterHandle>,
    pub(super) ownership: Option<Ownership>,
}

impl<B: DurableStateBehavior> fmt::Debug for RegistryBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("store", &self.store)
            .field("sharding", &self.sharding)
            .field("recovery", &self.recovery)
            .field("conflicts", &self.conflicts)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_live", &self.max_live)
            .field("ownership", &self.ownership)
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
    /// `Some(Duration::ZERO)` is refused by [`RegistryBuilder::start`]: there is no entity
    /// idle for no time at all (say `None` to never passivate idle entities).
    #[must_use]
    pub fn idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The most entity actors alive at once, live and passivating together. A command for an
    /// entity that is not live when there is no room waits: the least recently used idle
    /// entity (one with no command in flight) is passivated, or the least recently used one
    /// when all are busy, and once it has stopped, the entity that has waited longest starts.
    /// A busy entity may be waiting for the very entity that needs its room (an entity asking
    /// another): an id that waited [`max_activation_wait`](RegistryBuilder::max_activation_wait)
    /// starts beyond `max_live`, counted in [`RegistryStats::over_limit`](super::RegistryStats::over_limit). At least 1 (0 is
    /// taken as 1).
    ///
    /// Defaults to [`EntityRegistry::DEFAULT_MAX_LIVE`] (100,000).
    #[must_use]
    pub fn max_live(mut self, max_live: usize) -> Self {
        self.max_live = max_live.max(1);
        self
    }

    /// How long a command for an entity that is not live may wait for room under `max_live`
    /// before the entity starts beyond it: the bound that keeps an entity asking another of the
    /// same registry from waiting forever when every live entity is busy.
    ///
    /// Defaults to [`EntityRegistry::DEFAULT_MAX_ACTIVATION_WAIT`] (2 s).
    #[must_use]
    pub fn max_activation_wait(mut self, wait: Duration) -> Self {
        self.max_activation_wait = wait;
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

    /// How entities decide a command again when its write conflicts (another replica, or an
    /// incarnation elsewhere, wrote first).
    ///
    /// Defaults to [`ConflictPolicy::default`]: up to 10 decisions per command.
    #[must_use]
    pub fn conflicts(mut self, policy: ConflictPolicy) -> Self {
        self.conflicts = policy.at_least_one_decision();
        self
    }

    /// Shares the ids with the other replicas of the service over the same table: each id is
    /// live in one replica at a time, claimed in the database, and every write fenced by its
    /// claim (see [`Ownership`]). The registry's store must be a
    /// [`DurableStore`](crate::DurableStore) handle. It creates the ownership tables
    /// (`resources/ownership.sql`) if they are missing, and registers its replica name, when
    /// it starts.
    ///
    /// Defaults to none: every replica may run every id, kept apart by the version rule
    /// ([`RegistryBuilder::conflicts`]).
    #[must_use]
    pub fn ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = Some(ownership);
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
    /// or an `Arbiter`); [`Error::InvalidConfig`] for an idle timeout of zero, and with
    /// [`RegistryBuilder::ownership`], for a replica name or lease that cannot work, a store
    /// that is not a [`DurableStore`](crate::DurableStore) handle, or a table name longer than
    /// 54 bytes (the ownership tables are named after it).
    pub fn start(self) -> Result<EntityRegistry<B>, Error> {
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidConfig(
                "idle_timeout of zero: say None to never passivate idle entities, or give a \
                 positive duration"
                    .to_owned(),
            ));
        }
        let arbiter = match self.arbiter {
            Some(arbiter) => arbiter,
            None => actix::Arbiter::try_current().ok_or(Error::NoRuntime)?,
        };
        let lease = match &self.ownership {
            None => None,
            Some(ownership) => Some(lease_for(ownership, &self.store)?),
        };
        let shared = Arc::new_cyclic(|registry: &Weak<Shared<B>>| Shared {
            arbiter,
            factory: self.factory,
            store: self.store,
            sharding: self.sharding,
            recovery: self.recovery,
            conflicts: self.conflicts,
            max_live: self.max_live,
            max_activation_wait: self.max_activation_wait,
            conflict_retries: Arc::new(AtomicU64::new(0)),
            subscribers: Arc::new(Subscribers::default()),
            table: Mutex::new(Table::default()),
            all_stopped: Notify::new(),
            claims: lease.clone().map(|lease| {
                let registry: Weak<dyn Passivate> = registry.clone();
                Arc::new(RegistryClaims { lease, registry }) as Arc<dyn Claims>
            }),
            lease,
        });
        if let Some(lease) = &shared.lease {
            let registry: Weak<dyn Passivate> = Arc::downgrade(&shared) as Weak<Shared<B>>;
            let keeper = keep(Arc::clone(lease), registry);
            if !shared.arbiter.spawn(keeper) {
                return Err(Error::NoRuntime);
            }
        }
        if let Some(idle_timeout) = self.idle_timeout {
            let sweep = sweep_idle(Arc::downgrade(&shared), idle_timeout);
            if !shared.arbiter.spawn(sweep) {
                return Err(Error::NoRuntime);
            }
        }
        Ok(EntityRegistry { shared })
    }
}

/// The lease of a registry with `ownership` on `store`, once both are found to work.
fn lease_for(ownership: &Ownership, store: &StateStore) -> Result<Arc<Lease>, Error> {
    ownership.check()?;
    let Some(store) = store.durable() else {
        return Err(Error::InvalidConfig(
            "ownership needs a DurableStore handle as the registry's store (an actor's \
             mailbox cannot carry the fence of each write)"
                .to_owned(),
        ));
    };
    let table = store.checked().table.as_str();
    if table.len() > MAX_OWNED_TABLE_LEN {
        return Err(Error::InvalidConfig(format!(
            "ownership names its tables after the table (`{table}_replicas`): a table name of \
             at most {MAX_OWNED_TABLE_LEN} bytes is needed, `{table}` has {}",
            table.len()
        )));
    }
    Ok(Lease::new(ownership, store))
}
