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
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::config::{Checked, Distribution, VersionCheck};
use crate::error::Error;
use crate::messages::{Revision, WriteOutcome};
use crate::pool::{Connections, PooledClient};
use crate::queue::{Kind, Pending, Reply, Respond};
use crate::sql::{MAX_VALUES_ROWS, Sql, Stmt};
use crate::state::{DurableState, StateRow};
use crate::telemetry::{count_write, outcome_name};
use crate::version;

mod citus;
mod listing;

pub(crate) use self::listing::page_limit;

/// A version-checked write of one state, as its row.
pub(crate) struct Write;

impl Kind for Write {
    const NAME: &'static str = "write";
    type Input = StateRow;
    type Output = WriteOutcome;
    type Reply = Reply<WriteOutcome>;

    fn bytes(row: &StateRow) -> usize {
        row.state_payload.len() + row.persistence_id.len()
    }

    fn answered(row: &StateRow, outcome: &Result<WriteOutcome, Error>, queued: Instant) {
        let name = outcome_name(outcome);
        count_write(name);
        metrics::histogram!("durablestore_write_seconds").record(queued.elapsed());
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

    /// Runs a batch of writes and answers each.
    pub(crate) async fn write_batch(&self, batch: Vec<Pending<Write>>) {
        metrics::histogram!("durablestore_write_batch_size").record(batch.len() as f64);
        let client = match self.checkout().await {
            Ok(client) => client,
            Err(error) => {
                for pending in batch {
                    pending.answer(Err(error.clone()));
                }
                return;
            }
        };
        // Multi-row `VALUES` statements (Citus) carry a bounded number of rows.
        // A lone write takes the single-row statements either way: no need to ask.
        let values = if batch.len() > 1 {
            match self.on_citus(&client).await {
                Ok(values) => values,
                Err(error) => {
                    for pending in batch {
                        pending.answer(Err(error.clone()));
                    }
                    return;
                }
            }
        } else {
            false
        };
        let limit = if values { MAX_VALUES_ROWS } else { usize::MAX };
        // Once a statement failed for a reason no single row causes (a timeout, a lock, a
        // broken connection...), later rounds are not sent: their callers get the same error
        // at once rather than wait out another timeout each.
        let mut failed: Option<Error> = None;
        for round in rounds(batch)
            .into_iter()
            .flat_map(|round| chunks(round, limit))
        {
            let rows: Vec<&StateRow> = round.iter().map(|p| &p.input).collect();
            let outcomes = match &failed {
                Some(error) => rows.iter().map(|_| Err(error.clone())).collect(),
                None => match self.write_rows(&client, &rows, values).await {
                    Ok(outcomes) => outcomes,
                    // A statement fails as a whole. If one row may be to blame, write each row
                    // alone so the others land.
                    Err(error) if rows.len() > 1 && one_row_can_cause(&error) => {
                        self.write_one_by_one(&client, &rows, &mut failed).await
                    }
                    Err(error) => {
                        failed = Some(error.clone());
                        rows.iter().map(|_| Err(error.clone())).collect()
                    }
                },
            };
            for (pending, outcome) in round.into_iter().zip(outcomes) {
                pending.answer(outcome);
            }
        }
    }

    /// Writes each row in a statement of its own, until one fails for a reason that is not
    /// the row's (then recorded in `failed`); the rows after it are not sent.
    async fn write_one_by_one(
        &self,
        client: &PooledClient,
        rows: &[&StateRow],
        failed: &mut Option<Error>,
    ) -> Vec<Result<WriteOutcome, Error>> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(error) = failed {
                outcomes.push(Err(error.clone()));
                continue;
            }
            let outcome = match self
                .write_rows(client, std::slice::from_ref(row), false)
                .await
            {
                Ok(mut single) => single.pop().unwrap_or(Err(no_result(row))),
                Err(error) => {
                    if !one_row_can_cause(&error) {
                        *failed = Some(error.clone());
                    }
                    Err(error)
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Writes rows with distinct ids in one statement (as multi-row `VALUES` if `values`); one
    /// outcome per row, in order.
    async fn write_rows(
        &self,
        client: &PooledClient,
        rows: &[&StateRow],
        values: bool,
    ) -> Result<Vec<Result<WriteOutcome, Error>>, Error> {
        let ids: Vec<&str> = rows.iter().map(|r| r.persistence_id.as_str()).collect();
        // If this fails, the statement (atomic) wrote nothing; past it, the written rows are
        // committed and must be reported as written whatever happens next.
        let is_written = match rows {
            // A lone write (an idle store) takes the plain single-row statement: less for the
            // server to plan and run than the array form. It returns the id if it wrote it.
            [row] => {
                let statement = match self.version_check {
                    VersionCheck::Sequential if row.version_number == 1 => Stmt::InsertOne,
                    VersionCheck::Sequential => Stmt::UpdateOne,
                    VersionCheck::Unchecked => Stmt::UpsertOne,
                };
                let params: [(&(dyn ToSql + Sync), Type); 6] = [
                    (&row.persistence_id, Type::TEXT),
                    (&row.version_number, Type::INT8),
                    (&row.state_payload, Type::BYTEA),
                    (&row.state_manifest, Type::TEXT),
                    (&row.timestamp, Type::INT8),
                    (&row.shard_number, Type::INT8),
                ];
                let written = client.query(&self.sql, statement, &params).await?;
                vec![!written.is_empty()]
            }
            _ if values => self.write_values(client, rows).await?,
            _ => {
                let versions: Vec<i64> = rows.iter().map(|r| r.version_number).collect();
                let payloads: Vec<&[u8]> =
                    rows.iter().map(|r| r.state_payload.as_slice()).collect();
                let manifests: Vec<&str> = rows.iter().map(|r| r.state_manifest.as_str()).collect();
                let timestamps: Vec<i64> = rows.iter().map(|r| r.timestamp).collect();
                let shards: Vec<i64> = rows.iter().map(|r| r.shard_number).collect();
                let params: [(&(dyn ToSql + Sync), Type); 6] = [
                    (&ids, Type::TEXT_ARRAY),
                    (&versions, Type::INT8_ARRAY),
                    (&payloads, Type::BYTEA_ARRAY),
                    (&manifests, Type::TEXT_ARRAY),
                    (&timestamps, Type::INT8_ARRAY),
                    (&shards, Type::INT8_ARRAY),
                ];
                let statement = match self.version_check {
                    VersionCheck::Sequential => Stmt::WriteChecked,
                    VersionCheck::Unchecked => Stmt::WriteUnchecked,
                };
                let result = client.query(&self.sql, statement, &params).await?;
                written_of(&ids, result.first())
            }
        };
        // A checked row not written is a conflict, an identical retry, or a row that a trigger
        // or policy suppressed: a fresh read (a new statement, so a new snapshot) tells which,
        // and the version stored now. An unchecked row not written can only be suppressed.
        let refused: Vec<&str> = ids
            .iter()
            .zip(&is_written)
            .filter(|(_, written)| !**written)
            .map(|(id, _)| *id)
            .collect();
        let stored = if refused.is_empty() || self.version_check == VersionCheck::Unchecked {
            Ok(HashMap::new())
        } else {
            self.current_rows(client, &refused).await
        };
        Ok(rows
            .iter()
            .zip(is_written)
            .map(|(row, written)| {
                if written {
                    return Ok(WriteOutcome::Written);
                }
                let stored = stored.as_ref().map_err(Clone::clone)?;
                version::refused(stored.get(&row.persistence_id), row, self.version_check)
            })
            .collect())
    }

    async fn current_rows(
        &self,
        client: &PooledClient,
        ids: &[&str],
    ) -> Result<HashMap<String, StateRow>, Error> {
        let current = client
            .query(&self.sql, Stmt::Select, &[(&ids, Type::TEXT_ARRAY)])
            .await?;
        let mut stored = HashMap::with_capacity(current.len());
        for record in &current {
            let row = read_row(record)?;
            stored.insert(row.persistence_id.clone(), row);
        }
        Ok(stored)
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

/// Which of `ids` a multi-row write statement wrote, from its one result row: the count of
/// rows written, and their ids (read only when some were not written). A missing or unreadable
/// result reads as nothing written, so each row is explained by a fresh read.
fn written_of(ids: &[&str], result: Option<&Row>) -> Vec<bool> {
    let Some(result) = result else {
        return vec![false; ids.len()];
    };
    let count: i64 = result.try_get(0).unwrap_or(0);
    if usize::try_from(count).is_ok_and(|count| count == ids.len()) {
        return vec![true; ids.len()];
    }
    let mut is_written = vec![false; ids.len()];
    let written: Vec<&str> = result
        .try_get::<_, Option<Vec<&str>>>(1)
        .ok()
        .flatten()
        .unwrap_or_default();
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for id in written {
        if let Some(&i) = index.get(id) {
            is_written[i] = true;
        }
    }
    is_written
}

/// Splits a batch into rounds in which each id appears once, keeping each id's arrival order:
/// PostgreSQL cannot upsert one row twice in a statement, and running the rounds in order
/// behaves exactly as if the writes had been sent one after the other.
fn rounds(batch: Vec<Pending<Write>>) -> Vec<Vec<Pending<Write>>> {
    // The round of each write, over borrowed ids: no id is copied.
    let round_of: Vec<usize> = {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        batch
            .iter()
            .map(|pending| {
                let next = seen
                    .entry(pending.input.persistence_id.as_str())
                    .or_insert(0);
                *next += 1;
                *next - 1
            })
            .collect()
    };
    let count = round_of.iter().max().map_or(0, |last| last + 1);
    if count <= 1 {
        // The usual case: every id once.
        return vec![batch];
    }
    let mut rounds: Vec<Vec<Pending<Write>>> = (0..count).map(|_| Vec::new()).collect();
    for (pending, round) in batch.into_iter().zip(round_of) {
        rounds[round].push(pending);
    }
    rounds
}

/// Splits a round into parts of at most `limit` writes, in order.
fn chunks<T>(mut items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let mut parts = Vec::with_capacity(items.len().div_ceil(limit.max(1)));
    while items.len() > limit.max(1) {
        let rest = items.split_off(limit.max(1));
        parts.push(items);
        items = rest;
    }
    parts.push(items);
    parts
}

/// Errors one row of a multi-row statement can cause alone: bad data (class 22), a violated
/// constraint (23), or a trigger's `RAISE` (P0001). Only after these is a batch retried row by
/// row; a timeout, a lock or serialization failure, a read-only server or a lost connection
/// would only repeat once per row.
fn one_row_can_cause(error: &Error) -> bool {
    match error {
        Error::Database { source } => {
            matches!(source.class(), Some("22" | "23"))
                || source.code() == Some(&SqlState::RAISE_EXCEPTION)
        }
        _ => false,
    }
}

fn no_result(row: &StateRow) -> Error {
    Error::CorruptState {
        persistence_id: row.persistence_id.clone(),
        reason: "the write statement returned no result for this row".to_owned(),
    }
}

/// Reads the six columns of a `select` result row.
fn read_row(row: &Row) -> Result<StateRow, Error> {
    Ok(StateRow {
        persistence_id: row.try_get(0).map_err(Error::database)?,
        version_number: row.try_get(1).map_err(Error::database)?,
        state_payload: row.try_get(2).map_err(Error::database)?,
        state_manifest: row.try_get(3).map_err(Error::database)?,
        timestamp: row.try_get(4).map_err(Error::database)?,
        shard_number: row.try_get(5).map_err(Error::database)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, version: i64) -> Pending<Write> {
        let row = StateRow {
            persistence_id: id.to_owned(),
            version_number: version,
            state_payload: Vec::new(),
            state_manifest: "a.B".to_owned(),
            timestamp: 0,
            shard_number: 0,
        };
        Pending::new(row, None)
    }

    #[test]
    fn rounds_keep_each_ids_order_and_never_repeat_an_id() {
        let batch = vec![
            pending("a", 1),
            pending("b", 1),
            pending("a", 2),
            pending("a", 3),
            pending("c", 1),
            pending("b", 2),
        ];
        let rounds: Vec<Vec<(String, i64)>> = rounds(batch)
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|p| (p.input.persistence_id, p.input.version_number))
                    .collect()
            })
            .collect();
        let s = |id: &str, v| (id.to_owned(), v);
        assert_eq!(
            rounds,
            vec![
                vec![s("a", 1), s("b", 1), s("c", 1)],
                vec![s("a", 2), s("b", 2)],
                vec![s("a", 3)],
            ]
        );
    }
}
