//! The messages a store answers: plain owned data, one command or query each.
//!
//! [`crate::DurableStoreActor`] answers all of them.

use actix::Message;

use crate::error::Error;
use crate::state::DurableState;

/// Upsert the latest state of one entity.
///
/// Replies [`WriteOutcome::Written`] when the state was stored, [`WriteOutcome::AlreadyStored`]
/// when exactly this version, payload and manifest were already stored (a retry after a lost
/// reply), and [`Error::VersionConflict`] when the version does not follow the stored one
/// (see [`crate::VersionCheck`]). On an error nothing was written, with one exception: when
/// the outcome cannot be known ([`Error::Timeout`], or a connection that broke mid-statement),
/// the write may have been applied. Sending the same state again is then safe: it is answered
/// `AlreadyStored` if it was.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<WriteOutcome, Error>")]
pub struct WriteState(pub DurableState);

/// What a successful [`WriteState`] did. (Not `non_exhaustive`: a write either changed the
/// stored state or found it already there.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The state is now the stored one.
    Written,
    /// The same version with the same payload was already stored; nothing changed.
    AlreadyStored,
}

/// Read the latest state of one entity: `Ok(None)` when it has none, otherwise the state
/// exactly as written.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<DurableState>, Error>")]
pub struct GetLatestState(pub String);

/// Check that the database answers, connecting first if the store is not connected.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Ping;

/// Create the configured schema (unless it is `public`) and table with its index, if they do not
/// exist, using the DDL of `resources/durablestore_postgres.sql`. Never done implicitly. Where
/// the `citus` extension is installed, the table is also distributed by `persistence_id` if it
/// is not yet (`resources/citus.sql`; see [`Config::distribution`](crate::Config::distribution)).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct CreateSchema;

/// Disconnect: an owned pool is closed (each connection closes when its current statement
/// finishes); a borrowed pool is left open for its owner. Later calls fail with
/// [`Error::NotConnected`] until a [`Ping`] connects again.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Disconnect;

/// Delete the state of one entity, version-checked like a write: the delete is version
/// `version`, which must follow the stored one (see [`crate::VersionCheck`]).
///
/// The row becomes a *tombstone*: its payload and manifest are replaced (the state's bytes
/// are gone, as an erasure request needs), but its version stays, so a stale writer can never
/// bring the entity back at version 1. A deleted entity reads as `None` ([`GetLatestState`]);
/// [`GetRevision`] tells its version. Writing version `version + 1` starts the entity again.
/// [`PurgeDeleted`] removes tombstones for good.
///
/// Replies [`WriteOutcome::Written`] when the entity is now deleted, and
/// [`WriteOutcome::AlreadyStored`] when this very tombstone was already stored (a retry).
/// Errors as [`WriteState`]'s: [`Error::VersionConflict`] reports the stored version.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<WriteOutcome, Error>")]
pub struct DeleteState {
    /// The entity to delete.
    pub persistence_id: String,
    /// The version of the delete: the stored version + 1.
    pub version: u64,
}

/// Read one entity's stored version and state, also when it was deleted: the read an entity
/// recovers with. Batched with [`GetLatestState`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Revision, Error>")]
pub struct GetRevision(pub String);

/// What is stored for one entity: its version and, unless it was deleted (or never written),
/// its state. As Akka's `GetObjectResult`.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// The stored version: `0` when nothing was ever stored, else the version of the state or
    /// of the tombstone.
    pub version: u64,
    /// The stored state; `None` when nothing was stored or the entity was deleted.
    pub state: Option<DurableState>,
}

impl Revision {
    /// True when the entity was deleted: a version is stored, but no state.
    pub fn is_deleted(&self) -> bool {
        self.version > 0 && self.state.is_none()
    }
}

/// Remove, for good, the tombstones of entities deleted more than `older_than` ago (by the
/// tombstone's timestamp). After that, their ids start again at version 1, so purge only once
/// no stale writer of them can be left. Replies the number of tombstones removed. States are
/// never touched.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<u64, Error>")]
pub struct PurgeDeleted {
    /// How old a tombstone must be to go.
    pub older_than: std::time::Duration,
}

/// List the ids of stored entities (deleted ones excluded), in id order, one page at a time:
/// the ids after `after` (from the first when `None`), at most `limit` (1 to 10,000). Pass the
/// last id of a page as the next `after`; a page shorter than `limit` is the last.
///
/// Keyset paging: each page is a fresh read, and an id that exists for the whole iteration is
/// returned exactly once, whatever is written meanwhile. Ids are ordered by the column's
/// collation ([`MemoryStore`](crate::MemoryStore): by bytes).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<String>, Error>")]
pub struct ListPersistenceIds {
    /// Start after this id; `None` for the first page.
    pub after: Option<String>,
    /// Most ids to return (1 to 10,000).
    pub limit: usize,
}

/// The latest states, paged by id as [`ListPersistenceIds`], optionally of one shard only:
/// what a read model is rebuilt from. Deleted entities are excluded. A row that cannot be read
/// fails the page with [`Error::CorruptState`] naming its id (start after it to skip it).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<DurableState>, Error>")]
pub struct CurrentStates {
    /// Only states of this shard; `None` for all.
    pub shard: Option<u64>,
    /// Start after this id; `None` for the first page.
    pub after: Option<String>,
    /// Most states to return (1 to 10,000).
    pub limit: usize,
}
