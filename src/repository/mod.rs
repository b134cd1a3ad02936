//! The PostgreSQL side of a store: each kind of request, the statement that serves a batch
//! of it, and the mapping of result rows back to answers.
//!
//! Writes are group-committed: a batch is split into rounds in which each id appears once,
//! each round is one multi-row statement, and each row is answered by the version rule
//! ([`crate::version`]). Reads of a batch are one `= ANY` statement (on Citus, one per shard:
//! [`citus`]). Adding a kind of request
//! means adding a [`Kind`], a statement in [`crate::sql`] and a batch function here; the queue
//! ([`crate::queue`]) does not change.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::config::{Checked, Distribution, VersionCheck};
use crate::error::Error;
use crate::messages::{Revision, WriteOutcome};
use crate::pool::{Connections, PooledClient};
use crate::queue::{Kind, Pending, Reply, Respond};
use crate::sql::{OwnershipSql, Sql, Stmt};
use crate::state::{DurableState, StateRow};
use crate::telemetry::{WriteMeter, outcome_name};

mod citus;
mod columns;
mod fence;
mod forms;
mod listing;
mod ownership;
mod write;

pub(crate) use self::fence::{Fence, WriteRow};
pub(crate) use self::listing::page_limit;
pub(crate) use self::ownership::{Claim, Claimed, Release, ReplicaId};

/// A version-checked write of one state, as its row (fenced by an ownership epoch if the
/// entity is owned).
pub(crate) struct Write;

impl Kind for Write {
    const NAME: &'static str = "write";
    type Input = WriteRow;
    type Output = WriteOutcome;
    type Reply = Reply<WriteOutcome>;

    fn bytes(write: &WriteRow) -> usize {
        write.row.state_payload.len() + write.row.persistence_id.len()
    }

    fn answered(write: &WriteRow, outcome: &Result<WriteOutcome, Error>, queued: Instant) {
        Write::record(&WriteMeter::now(), write, outcome, queued);
    }
}

impl Write {
    /// Records and traces one answered write (queued at `queued`) with `meter`: a batch looks
    /// its metrics up once for all its answers.
    pub(super) fn record(
        meter: &WriteMeter,
        write: &WriteRow,
        outcome: &Result<WriteOutcome, Error>,
        queued: Instant,
    ) {
        let row = &write.row;
        let name = outcome_name(outcome);
        meter.record(name, queued);
        match outcome {
            Ok(_) => tracing::debug!(
                persistence_id = %row.persistence_id,
                version = row.version_number,
                outcome = name,
                "durable store write"
            ),
            Err(error) => tracing::debug!(
                persistence_id = %row.persistence_id,
                version = row.version_number,
                outcome = name,
                %error,
                "durable store write failed"
            ),
        }
    }
}

/// A read of one entity's stored revision, by its (validated) id.
pub(crate) struct Read;

impl Kind for Read {
    const NAME: &'static str = "read";
    type Input = String;
    type Output = Revision;
    type Reply = ReadReply;

    fn bytes(persistence_id: &String) -> usize {
        persistence_id.len()
    }
}

/// Who waits for a read: a caller of the latest state (`GetLatestState`), or of the whole
/// revision (`GetRevision`, entities). Both kinds are batched together.
pub(crate) enum ReadReply {
    State(Reply<Option<DurableState>>),
    Revision(Reply<Revision>),
}

impl Respond<Revision> for ReadReply {
    fn respond(self, result: Result<Revision, Error>) {
        match self {
            ReadReply::State(reply) => reply.respond(result.map(|revision| revision.state)),
            ReadReply::Revision(reply) => reply.respond(result),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            ReadReply::State(reply) => reply.is_closed(),
            ReadReply::Revision(reply) => reply.is_closed(),
        }
    }
}

/// The statements of one table, run on pooled connections.
#[derive(Debug)]
pub(crate) struct Repository {
    connections: Connections,
    sql: Sql,
    /// The statements of ownership across replicas, used by registries that have it.
    ownership: OwnershipSql,
    version_check: VersionCheck,
    distribution: Distribution,
    /// With [`Distribution::Detect`]: whether the server has Citus, once it said so.
    citus: OnceLock<bool>,
    /// Set once the server refused to place the table's ids on shards: reads go as one
    /// statement.
    not_distributed: AtomicBool,
}

impl Repository {
    pub(crate) fn new(connections: Connections, checked: &Checked) -> Self {
        Repository {
            connections,
            sql: Sql::new(checked),
            ownership: OwnershipSql::for_names(&checked.schema, &checked.table),
            version_check: checked.config.version_check,
            distribution: checked.config.distribution,
            citus: OnceLock::new(),
            not_distributed: AtomicBool::new(false),
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), Error> {
        // An empty simple query, like bb8-postgres's health check, bounded by the timeout.
        self.checkout().await?.batch_execute("").await
    }

    pub(crate) async fn create_schema(&self) -> Result<(), Error> {
        let client = self.checkout().await?;
        if self.distributes(&client).await? {
            client.batch_execute(&self.sql.create_distributed).await
        } else {
            client.batch_execute(&self.sql.create).await
        }
    }

    async fn checkout(&self) -> Result<PooledClient, Error> {
        let started = Instant::now();
        let client = self.connections.get().await;
        metrics::histogram!("durablestore_pool_wait_seconds").record(started.elapsed());
        client
    }

    /// Runs a batch of reads and answers each.
    pub(crate) async fn read_batch(&self, batch: Vec<Pending<Read>>) {
        metrics::histogram!("durablestore_read_batch_size").record(batch.len() as f64);
        let found = match self.read_rows(&batch).await {
            Ok(found) => found,
            Err(error) => {
                for pending in batch {
                    pending.answer(Err(error.clone()));
                }
                return;
            }
        };
        for pending in batch {
            let result = match found.get(pending.input.as_str()) {
                None => Ok(Revision {
                    version: 0,
                    state: None,
                }),
                Some(row) => row.clone().and_then(StateRow::into_revision),
            };
            pending.answer(result);
        }
    }

    /// The stored rows of the batch's ids, by id (each a row or the error reading it).
    async fn read_rows(
        &self,
        batch: &[Pending<Read>],
    ) -> Result<HashMap<String, Result<StateRow, Error>>, Error> {
        let mut ids: Vec<&str> = batch.iter().map(|p| p.input.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let client = self.checkout().await?;
        let rows = if ids.len() > 1 && self.on_citus(&client).await? {
            self.read_by_shard(&client, &ids).await?
        } else {
            client
                .query(&self.sql, Stmt::Select, &[(&ids, Type::TEXT_ARRAY)])
                .await?
        };
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(Error::database)?;
            found.insert(id, read_row(row));
        }
        Ok(found)
    }
}

/// Reads the six columns of a `select` result row.
pub(super) fn read_row(row: &Row) -> Result<StateRow, Error> {
    Ok(StateRow {
        persistence_id: row.try_get(0).map_err(Error::database)?,
        version_number: row.try_get(1).map_err(Error::database)?,
        state_payload: row.try_get(2).map_err(Error::database)?,
        state_manifest: row.try_get(3).map_err(Error::database)?,
        timestamp: row.try_get(4).map_err(Error::database)?,
        shard_number: row.try_get(5).map_err(Error::database)?,
    })
}
