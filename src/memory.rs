//! An in-memory store with the same semantics as the PostgreSQL one, for tests.

use std::collections::BTreeMap;
use std::ops::Bound;

use actix::{Actor, Context, Handler};

use crate::config::{Config, VersionCheck};
use crate::error::Error;
use crate::messages::{
    CreateSchema, CurrentStates, DeleteState, Disconnect, GetLatestState, GetRevision,
    ListPersistenceIds, Ping, PurgeDeleted, Revision, WriteOutcome, WriteState,
};
use crate::repository::page_limit;
use crate::state::{DurableState, RowFormat, StateRow, now_millis, validate_persistence_id};
use crate::version::{self, Verdict};

/// An actor answering the store messages from a `BTreeMap`, with the semantics of
/// [`DurableStoreActor`](crate::DurableStoreActor): the same input validation, version rule,
/// idempotent retries, conflicts, tombstones, paging and row format. Listings are ordered by
/// the ids' bytes (PostgreSQL orders them by the column's collation). The counterpart of ego-contrib's
/// `durablestore/memory` and cqrs-es's `MemStore`: test entity logic without PostgreSQL.
///
/// [`Disconnect`] makes every later call fail with [`Error::NotConnected`] until a [`Ping`],
/// which is how tests simulate an outage. Nothing is kept after the actor stops.
///
/// ```
/// use actix::Actor;
/// use durablestore_postgres::{DurableState, GetLatestState, MemoryStore, WriteState};
///
/// # #[actix::main] async fn main() {
/// let store = MemoryStore::default().start();
/// let state = DurableState::new("id-1", 1, &prost_types::Duration::default());
/// store.send(WriteState(state.clone())).await.unwrap().unwrap();
/// let read = store.send(GetLatestState("id-1".into())).await.unwrap().unwrap();
/// assert_eq!(read, Some(state));
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: BTreeMap<String, StateRow>,
    version_check: VersionCheck,
    disconnected: bool,
}

impl MemoryStore {
    /// An empty store with the given version rule.
    pub fn with_version_check(version_check: VersionCheck) -> Self {
        MemoryStore {
            version_check,
            ..Self::default()
        }
    }

    fn connected(&self) -> Result<(), Error> {
        if self.disconnected {
            return Err(Error::NotConnected);
        }
        Ok(())
    }

    fn write(&mut self, state: DurableState) -> Result<WriteOutcome, Error> {
        self.connected()?;
        let row = StateRow::encode(state, RowFormat::default())?
            .check_size(Config::DEFAULT_MAX_STATE_BYTES)?;
        self.apply(row)
    }

    /// Applies the version rule to `row` (a state or a tombstone), as PostgreSQL does.
    fn apply(&mut self, row: StateRow) -> Result<WriteOutcome, Error> {
        match version::judge(self.rows.get(&row.persistence_id), &row, self.version_check) {
            Verdict::Apply => {
                self.rows.insert(row.persistence_id.clone(), row);
                Ok(WriteOutcome::Written)
            }
            Verdict::AlreadyStored => Ok(WriteOutcome::AlreadyStored),
            Verdict::Conflict { stored } => Err(version::conflict(&row, stored)),
        }
    }

    fn revision(&self, persistence_id: &str) -> Result<Revision, Error> {
        self.connected()?;
        validate_persistence_id(persistence_id)?;
        match self.rows.get(persistence_id) {
            None => Ok(Revision {
                version: 0,
                state: None,
            }),
            Some(row) => row.clone().into_revision(),
        }
    }

    /// The live (not deleted) rows after `after`, in id order.
    fn live_after<'a>(&'a self, after: Option<&'a str>) -> impl Iterator<Item = &'a StateRow> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.rows
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, row)| row)
            .filter(|row| !row.is_tombstone())
    }
}

impl Actor for MemoryStore {
    type Context = Context<Self>;
}

impl Handler<WriteState> for MemoryStore {
    type Result = Result<WriteOutcome, Error>;

    fn handle(&mut self, WriteState(state): WriteState, _ctx: &mut Self::Context) -> Self::Result {
        self.write(state)
    }
}

impl Handler<GetLatestState> for MemoryStore {
    type Result = Result<Option<DurableState>, Error>;

    fn handle(&mut self, msg: GetLatestState, _ctx: &mut Self::Context) -> Self::Result {
        Ok(self.revision(&msg.0)?.state)
    }
}

impl Handler<GetRevision> for MemoryStore {
    type Result = Result<Revision, Error>;

    fn handle(&mut self, msg: GetRevision, _ctx: &mut Self::Context) -> Self::Result {
        self.revision(&msg.0)
    }
}

impl Handler<DeleteState> for MemoryStore {
    type Result = Result<WriteOutcome, Error>;

    fn handle(&mut self, msg: DeleteState, _ctx: &mut Self::Context) -> Self::Result {
        self.connected()?;
        self.apply(StateRow::tombstone(msg.persistence_id, msg.version)?)
    }
}

impl Handler<PurgeDeleted> for MemoryStore {
    type Result = Result<u64, Error>;

    fn handle(&mut self, msg: PurgeDeleted, _ctx: &mut Self::Context) -> Self::Result {
        self.connected()?;
        let age = i64::try_from(msg.older_than.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(age);
        let count = self.rows.len();
        self.rows
            .retain(|_, row| !(row.is_tombstone() && row.timestamp < before));
        Ok((count - self.rows.len()) as u64)
    }
}

impl Handler<ListPersistenceIds> for MemoryStore {
    type Result = Result<Vec<String>, Error>;

    fn handle(&mut self, msg: ListPersistenceIds, _ctx: &mut Self::Context) -> Self::Result {
        self.connected()?;
        let limit = page_limit(msg.limit)?;
        Ok(self
            .live_after(msg.after.as_deref())
            .take(limit as usize)
            .map(|row| row.persistence_id.clone())
            .collect())
    }
}

impl Handler<CurrentStates> for MemoryStore {
    type Result = Result<Vec<DurableState>, Error>;

    fn handle(&mut self, msg: CurrentStates, _ctx: &mut Self::Context) -> Self::Result {
        self.connected()?;
        let limit = page_limit(msg.limit)?;
        let shard = msg.shard.map(|s| i64::try_from(s).unwrap_or(-1));
        self.live_after(msg.after.as_deref())
            .filter(|row| shard.is_none_or(|s| row.shard_number == s))
            .take(limit as usize)
            .map(|row| row.clone().decode())
            .collect()
    }
}

impl Handler<Ping> for MemoryStore {
    type Result = Result<(), Error>;

    fn handle(&mut self, _: Ping, _ctx: &mut Self::Context) -> Self::Result {
        self.disconnected = false;
        Ok(())
    }
}

impl Handler<CreateSchema> for MemoryStore {
    type Result = Result<(), Error>;

    fn handle(&mut self, _: CreateSchema, _ctx: &mut Self::Context) -> Self::Result {
        self.connected()
    }
}

impl Handler<Disconnect> for MemoryStore {
    type Result = ();

    fn handle(&mut self, _: Disconnect, _ctx: &mut Self::Context) {
        self.disconnected = true;
    }
}
