//! An in-memory store with the same semantics as the PostgreSQL one, for tests.

use std::collections::HashMap;

use actix::{Actor, Context, Handler};

use crate::config::{Config, VersionCheck};
use crate::error::Error;
use crate::messages::{CreateSchema, Disconnect, GetLatestState, Ping, WriteOutcome, WriteState};
use crate::state::{DurableState, RowFormat, StateRow, validate_persistence_id};
use crate::version::{self, Verdict};

/// An actor answering the store messages from a `HashMap`, with the semantics of
/// [`DurableStoreActor`](crate::DurableStoreActor): the same input validation, version rule,
/// idempotent retries, conflicts and row format. The counterpart of ego-contrib's
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
    rows: HashMap<String, StateRow>,
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

    fn write(&mut self, state: DurableState) -> Result<WriteOutcome, Error> {
        if self.disconnected {
            return Err(Error::NotConnected);
        }
        let row = StateRow::encode(state, RowFormat::default())?
            .check_size(Config::DEFAULT_MAX_STATE_BYTES)?;
        match version::judge(self.rows.get(&row.persistence_id), &row, self.version_check) {
            Verdict::Apply => {
                self.rows.insert(row.persistence_id.clone(), row);
                Ok(WriteOutcome::Written)
            }
            Verdict::AlreadyStored => Ok(WriteOutcome::AlreadyStored),
            Verdict::Conflict { stored } => Err(version::conflict(&row, stored)),
        }
    }

    fn get(&self, persistence_id: &str) -> Result<Option<DurableState>, Error> {
        if self.disconnected {
            return Err(Error::NotConnected);
        }
        validate_persistence_id(persistence_id)?;
        self.rows
            .get(persistence_id)
            .cloned()
            .map(StateRow::decode)
            .transpose()
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
        self.get(&msg.0)
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
        if self.disconnected {
            return Err(Error::NotConnected);
        }
        Ok(())
    }
}

impl Handler<Disconnect> for MemoryStore {
    type Result = ();

    fn handle(&mut self, _: Disconnect, _ctx: &mut Self::Context) {
        self.disconnected = true;
    }
}
