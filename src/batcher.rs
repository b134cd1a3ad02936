//! The database side of a store: group commit of writes and batched reads.
//!
//! Requests go into two bounded queues (writes, reads). `max_connections` workers per queue
//! each take whatever is queued (at least one request, at most `max_batch_size`) and run it as
//! one statement on one pooled connection. A lone request goes out at once; batches form only
//! from requests that queued up while every worker was busy — natural group commit, with no
//! timer and no linger. A full queue makes callers wait (backpressure) instead of growing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::config::{Config, VersionCheck};
use crate::error::Error;
use crate::messages::WriteOutcome;
use crate::pool::{Connections, PooledClient};
use crate::sql::{Sql, Stmt};
use crate::state::{DurableState, StateRow, validate_persistence_id};

/// A write waiting for its batch.
struct PendingWrite {
    row: StateRow,
    reply: oneshot::Sender<Result<WriteOutcome, Error>>,
    queued: Instant,
}

/// A read waiting for its batch.
struct PendingRead {
    persistence_id: String,
    reply: oneshot::Sender<Result<Option<DurableState>, Error>>,
}

/// What the workers share.
#[derive(Debug)]
struct Shared {
    connections: Connections,
    sql: Sql,
    version_check: VersionCheck,
    max_batch_size: usize,
    max_state_bytes: usize,
}

/// The database side of a store. Dropping it closes the queues: workers finish what is
/// queued, then exit and release their connections.
#[derive(Debug)]
pub(crate) struct Store {
    shared: Arc<Shared>,
    writes: mpsc::Sender<PendingWrite>,
    reads: mpsc::Sender<PendingRead>,
}

impl Store {
    /// Starts the workers on the current Tokio runtime.
    pub(crate) fn start(connections: Connections, config: &Config) -> Self {
        let shared = Arc::new(Shared {
            connections,
            sql: Sql::new(config),
            version_check: config.version_check,
            max_batch_size: config.max_batch_size,
            max_state_bytes: config.max_state_bytes,
        });
        let (writes, write_queue) = mpsc::channel(config.max_pending_requests);
        let (reads, read_queue) = mpsc::channel(config.max_pending_requests);
        let write_queue = Arc::new(Mutex::new(Queue {
            receiver: write_queue,
            held: None,
        }));
        let read_queue = Arc::new(Mutex::new(Queue {
            receiver: read_queue,
            held: None,
        }));
        for _ in 0..config.max_connections {
            tokio::spawn(work(
                write_queue.clone(),
                shared.clone(),
                Shared::write_batch,
            ));
            tokio::spawn(work(read_queue.clone(), shared.clone(), Shared::read_batch));
        }
        Store {
            shared,
            writes,
            reads,
        }
    }

    /// Validates `state`, queues it and waits for its batch's answer.
    pub(crate) async fn write(&self, state: DurableState) -> Result<WriteOutcome, Error> {
        let row = StateRow::encode(state)?.check_size(self.shared.max_state_bytes)?;
        let (reply, answer) = oneshot::channel();
        let pending = PendingWrite {
            row,
            reply,
            queued: Instant::now(),
        };
        self.writes
            .send(pending)
            .await
            .map_err(|_| Error::NotConnected)?;
        answer.await.unwrap_or(Err(Error::NotConnected))
    }

    /// Validates the id, queues it and waits for its batch's answer.
    pub(crate) async fn get(&self, persistence_id: String) -> Result<Option<DurableState>, Error> {
        validate_persistence_id(&persistence_id)?;
        let (reply, answer) = oneshot::channel();
        self.reads
            .send(PendingRead {
                persistence_id,
                reply,
            })
            .await
            .map_err(|_| Error::NotConnected)?;
        answer.await.unwrap_or(Err(Error::NotConnected))
    }

    pub(crate) async fn ping(&self) -> Result<(), Error> {
        // An empty simple query, like bb8-postgres's health check, bounded by the timeout.
        self.shared.checkout().await?.batch_execute("").await
    }

    pub(crate) async fn create_schema(&self) -> Result<(), Error> {
        let client = self.shared.checkout().await?;
        client.batch_execute(&self.shared.sql.create).await
    }
}

/// Most bytes of state one batch carries, whatever `max_batch_size` allows: PostgreSQL refuses
/// messages over 1 GiB, and a smaller statement keeps any one batch's latency in check.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// A queued request and the bytes it adds to a batch.
trait Queued {
    fn bytes(&self) -> usize;
}

impl Queued for PendingWrite {
    fn bytes(&self) -> usize {
        self.row.state_payload.len() + self.row.persistence_id.len()
    }
}

impl Queued for PendingRead {
    fn bytes(&self) -> usize {
        self.persistence_id.len()
    }
}

/// A request queue shared by the workers, with room for one request taken from the channel but
/// left for the next batch because it did not fit in this one.
struct Queue<T> {
    receiver: mpsc::Receiver<T>,
    held: Option<T>,
}

/// A worker: takes at least one queued request and at most a batch of them (by count and by
/// bytes), runs the batch, repeats until the queue is closed and empty.
async fn work<T, F, Fut>(queue: Arc<Mutex<Queue<T>>>, shared: Arc<Shared>, run: F)
where
    T: Queued,
    F: Fn(Arc<Shared>, Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let batch = {
            // One worker at a time waits on the queue; the others are running batches.
            let mut queue = queue.lock().await;
            let first = match queue.held.take() {
                Some(held) => held,
                None => match queue.receiver.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut bytes = first.bytes();
            let mut batch = Vec::with_capacity(shared.max_batch_size.min(64));
            batch.push(first);
            while batch.len() < shared.max_batch_size {
                match queue.receiver.try_recv() {
                    Ok(next) if bytes + next.bytes() > MAX_BATCH_BYTES => {
                        queue.held = Some(next);
                        break;
                    }
                    Ok(next) => {
                        bytes += next.bytes();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        run(shared.clone(), batch).await;
    }
}

impl Shared {
    async fn checkout(&self) -> Result<PooledClient, Error> {
        let started = Instant::now();
        let client = self.connections.get().await;
        metrics::histogram!("durablestore_pool_wait_seconds").record(started.elapsed());
        client
    }

    async fn write_batch(self: Arc<Self>, batch: Vec<PendingWrite>) {
        metrics::histogram!("durablestore_write_batch_size").record(batch.len() as f64);
        let client = match self.checkout().await {
            Ok(client) => client,
            Err(error) => {
                for pending in batch {
                    answer_write(pending, Err(error.clone()));
                }
                return;
            }
        };
        // Once the connection failed or timed out, later rounds are not sent on it: their
        // callers get the same error at once rather than wait out another timeout each.
        let mut failed: Option<Error> = None;
        for round in rounds(batch) {
            let rows: Vec<&StateRow> = round.iter().map(|p| &p.row).collect();
            if let Some(error) = &failed {
                for pending in round {
                    answer_write(pending, Err(error.clone()));
                }
                continue;
            }
            let outcomes = match self.write_rows(&client, &rows).await {
                Ok(outcomes) => outcomes,
                // A statement fails as a whole. If the server refused it (not the connection
                // breaking), one row may be to blame: write each row alone so the others land.
                Err(error) if rows.len() > 1 && !is_connection_error(&error) => {
                    let mut outcomes = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let single = self.write_rows(&client, std::slice::from_ref(row)).await;
                        outcomes
                            .push(single.and_then(|mut o| o.pop().unwrap_or(Err(no_result(row)))));
                    }
                    outcomes
                }
                Err(error) => {
                    if is_connection_error(&error) {
                        failed = Some(error.clone());
                    }
                    rows.iter().map(|_| Err(error.clone())).collect()
                }
            };
            for (pending, outcome) in round.into_iter().zip(outcomes) {
                answer_write(pending, outcome);
            }
        }
    }

    /// Writes rows with distinct ids in one statement; one outcome per row, in order.
    async fn write_rows(
        &self,
        client: &PooledClient,
        rows: &[&StateRow],
    ) -> Result<Vec<Result<WriteOutcome, Error>>, Error> {
        let ids: Vec<&str> = rows.iter().map(|r| r.persistence_id.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.version_number).collect();
        let payloads: Vec<&[u8]> = rows.iter().map(|r| r.state_payload.as_slice()).collect();
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
        if self.version_check == VersionCheck::Unchecked {
            client
                .query(&self.sql, Stmt::WriteUnchecked, &params)
                .await?;
            return Ok(rows.iter().map(|_| Ok(WriteOutcome::Written)).collect());
        }
        // If this fails, the statement (atomic) wrote nothing; past it, the written rows are
        // committed and must be reported as written whatever happens next.
        let written = client.query(&self.sql, Stmt::WriteChecked, &params).await?;
        let mut is_written = vec![written.len() == rows.len(); rows.len()];
        if written.len() < rows.len() {
            let index: HashMap<&str, usize> =
                ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            for record in &written {
                if let Some(&i) = record
                    .try_get::<_, &str>(0)
                    .ok()
                    .and_then(|id| index.get(id))
                {
                    is_written[i] = true;
                }
            }
        }
        // Rows not written are a conflict or an idempotent retry; a fresh read (a new
        // statement, so a new snapshot) tells which, and the version that is stored now.
        let refused: Vec<&str> = ids
            .iter()
            .zip(&is_written)
            .filter(|(_, written)| !**written)
            .map(|(id, _)| *id)
            .collect();
        let stored = if refused.is_empty() {
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
                match stored.get(&row.persistence_id) {
                    Some(s)
                        if s.version_number == row.version_number
                            && s.state_payload == row.state_payload
                            && s.state_manifest == row.state_manifest =>
                    {
                        Ok(WriteOutcome::AlreadyStored)
                    }
                    current => Err(conflict(row, current.map(|s| s.version_number))),
                }
            })
            .collect())
    }

    /// The stored rows of `ids`, by id.
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

    async fn read_batch(self: Arc<Self>, batch: Vec<PendingRead>) {
        metrics::histogram!("durablestore_read_batch_size").record(batch.len() as f64);
        let found = match self.read_rows(&batch).await {
            Ok(found) => found,
            Err(error) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        for pending in batch {
            let result = match found.get(pending.persistence_id.as_str()) {
                None => Ok(None),
                Some(row) => row.clone().and_then(|row| row.decode().map(Some)),
            };
            let _ = pending.reply.send(result);
        }
    }

    /// The stored rows of the batch's ids, by id (each a row or the error reading it).
    async fn read_rows(
        &self,
        batch: &[PendingRead],
    ) -> Result<HashMap<String, Result<StateRow, Error>>, Error> {
        let mut ids: Vec<&str> = batch.iter().map(|p| p.persistence_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let client = self.checkout().await?;
        let rows = client
            .query(&self.sql, Stmt::Select, &[(&ids, Type::TEXT_ARRAY)])
            .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(Error::database)?;
            found.insert(id, read_row(row));
        }
        Ok(found)
    }
}

/// Splits a batch into rounds in which each id appears once, keeping each id's arrival order:
/// PostgreSQL cannot upsert one row twice in a statement, and running the rounds in order
/// behaves exactly as if the writes had been sent one after the other.
fn rounds(batch: Vec<PendingWrite>) -> Vec<Vec<PendingWrite>> {
    let mut rounds: Vec<Vec<PendingWrite>> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for pending in batch {
        let round = seen.entry(pending.row.persistence_id.clone()).or_insert(0);
        if *round == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*round].push(pending);
        *round += 1;
    }
    rounds
}

fn answer_write(pending: PendingWrite, outcome: Result<WriteOutcome, Error>) {
    let label = match &outcome {
        Ok(WriteOutcome::Written) => "written",
        Ok(WriteOutcome::AlreadyStored) => "already_stored",
        Err(Error::VersionConflict { .. }) => "conflict",
        Err(_) => "error",
    };
    metrics::counter!("durablestore_writes_total", "outcome" => label).increment(1);
    metrics::histogram!("durablestore_write_seconds").record(pending.queued.elapsed());
    // The caller may have given up waiting; the write happened all the same.
    let _ = pending.reply.send(outcome);
}

/// True when the connection failed rather than the statement.
fn is_connection_error(error: &Error) -> bool {
    match error {
        Error::Database { source } => source.is_closed() || source.as_db_error().is_none(),
        _ => true,
    }
}

fn conflict(row: &StateRow, stored: Option<i64>) -> Error {
    Error::VersionConflict {
        persistence_id: row.persistence_id.clone(),
        // `attempted` was range-checked on the way in; a stored BIGINT that is negative (only
        // possible through raw SQL) reads as 0.
        attempted: u64::try_from(row.version_number).unwrap_or(0),
        stored: stored.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
    }
}

/// `write_rows` answers once per row; this stands in should that ever not hold.
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

    fn pending(id: &str, version: i64) -> PendingWrite {
        let (reply, _) = oneshot::channel();
        PendingWrite {
            row: StateRow {
                persistence_id: id.to_owned(),
                version_number: version,
                state_payload: Vec::new(),
                state_manifest: "a.B".to_owned(),
                timestamp: 0,
                shard_number: 0,
            },
            reply,
            queued: Instant::now(),
        }
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
                    .map(|p| (p.row.persistence_id, p.row.version_number))
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
