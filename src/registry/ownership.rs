//! [`Ownership`]: one live entity per id across every replica of a service, kept in PostgreSQL.

use std::time::Duration;

use crate::error::Error;
use crate::state::MAX_PERSISTENCE_ID_LEN;

/// How a registry shares the ids of its entities with the other replicas of the service over
/// the same table ([`RegistryBuilder::ownership`](crate::RegistryBuilder::ownership)): each id
/// is owned by one replica at a time, the ownership is kept in the database next to the
/// states, and every write of an owned entity is fenced by it.
///
/// - **Leases.** The replica registers under its name with a lease of `lease`, renewed every
///   third of it by one statement, however many ids it owns. Expiry is judged in the
///   database's time, never by a replica's clock.
/// - **Claims.** An entity claims its id before it loads its state (claims are batched like
///   reads: 10,000 activations are a few statements). An id owned by another live replica is
///   refused at once with [`CommandError::OwnedElsewhere`](crate::CommandError::OwnedElsewhere),
///   naming the owner, so the application can forward the command there; an id whose owner's
///   lease ran out is taken over, and each claim increases the id's epoch.
/// - **Fenced writes.** Every write of an owned entity carries the registration (replica name
///   and incarnation) it claimed the id under, and the write statement itself (still
///   group-committed) locks that registration's row and commits only while it is there. Ids
///   move away from a live replica only when it releases them, which it does only once none
///   of their writes can still be running; from a replica whose lease ran out, only after its
///   registration was deleted, which waits for the writes holding it. So a write of an old
///   claim never commits after a newer claim, even when the versions line up. A write fenced
///   out answers `OwnedElsewhere` (or `LeaseLost`), never `Ok`. One row lock per statement,
///   not per written row (measured cost in BENCHMARKS.md: 0.95–1.01× the commands/s).
/// - **Losing the lease.** A replica that cannot renew in time stops its entities (their
///   commands answered [`CommandError::LeaseLost`](crate::CommandError::LeaseLost), nothing
///   applied) a tenth of the lease before the database could let the lease run out, judged
///   on its own monotonic clock from the moment before the last renewal was sent.
/// - **Moving ids.** Passivation releases the id at once, and
///   [`EntityRegistry::stop`](crate::EntityRegistry::stop) gives up the replica's name, so
///   another replica takes its ids without waiting; ids of a replica that died without
///   stopping move after one lease.
///
/// The replica name is the application's: something it can route a command to, such as the
/// replica's internal URL. Two live processes must not use the same name (the second waits
/// until the first one's lease has run out before it takes over the name).
///
/// ```no_run
/// # use std::time::Duration;
/// # use durablestore_postgres::*;
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct S {}
/// # impl prost::Name for S { const NAME: &'static str = "S"; const PACKAGE: &'static str = "p"; }
/// # pub struct Counter { id: String }
/// # impl DurableStateBehavior for Counter { type State = S; fn persistence_id(&self) -> &str { &self.id } }
/// # fn run(store: DurableStore) -> Result<(), Error> {
/// let counters = EntityRegistry::builder(store, |id: &str| Counter { id: id.to_owned() })
///     .ownership(Ownership::leased("http://10.0.0.7:8080", Ownership::DEFAULT_LEASE))
///     .start()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    replica: String,
    lease: Duration,
}

impl Ownership {
    /// The usual lease: 10 s. Ids of a replica that dies without stopping move after it.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

    /// The shortest lease accepted: 300 ms (renewed every 100 ms).
    pub const MIN_LEASE: Duration = Duration::from_millis(300);

    /// The longest lease accepted: a day.
    pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

    /// Ownership under the replica name `replica`, with a lease of `lease` (see
    /// [`Ownership::DEFAULT_LEASE`]). Checked by
    /// [`RegistryBuilder::start`](crate::RegistryBuilder::start): a name of 1 to 255
    /// characters, a lease from [`Ownership::MIN_LEASE`] to [`Ownership::MAX_LEASE`].
    pub fn leased(replica: impl Into<String>, lease: Duration) -> Self {
        Ownership {
            replica: replica.into(),
            lease,
        }
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// How long the lease lasts after each renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Refuses a name the table cannot hold and a lease that cannot work.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let chars = self.replica.chars().count();
        if chars == 0 || chars > MAX_PERSISTENCE_ID_LEN {
            return Err(Error::InvalidConfig(format!(
                "ownership replica name of {chars} characters: 1 to {MAX_PERSISTENCE_ID_LEN} \
                 are allowed"
            )));
        }
        if self.replica.contains('\0') {
            return Err(Error::InvalidConfig(
                "ownership replica name contains a NUL character".to_owned(),
            ));
        }
        if self.lease < Self::MIN_LEASE || self.lease > Self::MAX_LEASE {
            return Err(Error::InvalidConfig(format!(
                "ownership lease of {:?}: from {:?} to {:?} is allowed",
                self.lease,
                Self::MIN_LEASE,
                Self::MAX_LEASE
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_leases_that_cannot_work_are_refused() {
        let ok = Ownership::leased("a", Ownership::DEFAULT_LEASE);
        assert!(ok.check().is_ok());
        for bad in [
            Ownership::leased("", Ownership::DEFAULT_LEASE),
            Ownership::leased("x".repeat(256), Ownership::DEFAULT_LEASE),
            Ownership::leased("a\0b", Ownership::DEFAULT_LEASE),
            Ownership::leased("a", Duration::from_millis(299)),
            Ownership::leased("a", Duration::MAX),
        ] {
            assert!(
                matches!(bad.check(), Err(Error::InvalidConfig(_))),
                "{bad:?}"
            );
        }
        assert!(
            Ownership::leased("é".repeat(255), Ownership::MIN_LEASE)
                .check()
                .is_ok()
        );
    }
}
