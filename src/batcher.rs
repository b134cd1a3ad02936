//! The database side of a store: group commit of writes and batched reads.
//!
//! Requests go into two bounded queues (writes, reads). `max_connections` workers per queue
//! each take whatever is queued (at least one request, at most `max_batch_size`) and run it as
//! one statement on one pooled connection. A lone request goes out at once; batches form only
//! from requests that queued up while every worker was busy — natural group commit, with no
//! timer and no linger. A request is admitted into a queue before anything else is done for
//! it; when the queue is full, the submitter waits for room (backpressure) instead of the
//! store growing. A worker answers each request on the caller's own reply channel, and skips a
//! queued request whose caller stopped waiting.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::config::{Config, VersionCheck};
use crate::error::Error;
use crate::messages::WriteOutcome;
use crate::pool::{Connections, PooledClient};
use crate::sql::{Sql, Stmt};
use crate::state::{DurableState, RowFormat, StateRow, validate_persistence_id};
use crate::version;

/// Where a request's answer goes: the caller's reply channel (actix hands its own to the store
/// actor), or nowhere for a caller that does not wait (`do_send`).
pub(crate) type Reply<T> = Option<oneshot::Sender<Result<T, Error>>>;

/// A write waiting for its batch.
struct PendingWrite {
    row: StateRow,
    reply: Reply<WriteOutcome>,
    queued: Instant,
    _slot: Slot,
}

/// A read waiting for its batch.
struct PendingRead {
    persistence_id: String,
    reply: Reply<Option<DurableState>>,
    _slot: Slot,
}

/// One admitted request, counted in the `durablestore_pending_requests` gauge for as long as it
/// is alive (queued, in a batch, or waiting for room): the memory the store holds for callers.
struct Slot(&'static str);

impl Slot {
    fn new(kind: &'static str) -> Self {
        metrics::gauge!("durablestore_pending_requests", "kind" => kind).increment(1.0);
        Slot(kind)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("durablestore_pending_requests", "kind" => self.0).decrement(1.0);
    }
}

/// What the workers share.
#[derive(Debug)]
struct Shared {
    connections: Connections,
    sql: Sql,
    version_check: VersionCheck,
    max_batch_size: usize,
}

/// The database side of a store. Dropping it closes the queues: workers finish what is
/// queued, then exit and release their connections.
#[derive(Debug)]
pub(crate) struct Store {
    shared: Arc<Shared>,
    writes: mpsc::Sender<PendingWrite>,
    reads: mpsc::Sender<PendingRead>,
    row_format: RowFormat,
    max_state_bytes: usize,
}

impl Store {
    /// Starts the workers on the current Tokio runtime.
    pub(crate) fn start(connections: Connections, config: &Config) -> Self {
        let shared = Arc::new(Shared {
            connections,
            sql: Sql::new(config),
            version_check: config.version_check,
            max_batch_size: config.max_batch_size,
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
            row_format: config.row_format,
            max_state_bytes: config.max_state_bytes,
        }
    }

    /// Validates `state` and queues it; a worker answers on `reply`. Invalid input is answered
    /// at once. When the queue is full, the returned future admits the write once there is
    /// room: the submitter must wait for it before submitting anything else, so the store
    /// holds at most `max_pending_requests` queued requests however they are sent.
    pub(crate) fn write(
        &self,
        state: DurableState,
        reply: Reply<WriteOutcome>,
    ) -> Option<impl Future<Output = ()> + 'static> {
        let row = StateRow::encode(state, self.row_format)
            .and_then(|row| row.check_size(self.max_state_bytes));
        match row {
            Ok(row) => admit(
                &self.writes,
                PendingWrite {
                    row,
                    reply,
                    queued: Instant::now(),
                    _slot: Slot::new("write"),
                },
            ),
            Err(invalid) => {
                answer(reply, Err(invalid.into()));
                None
            }
        }
    }

    /// Validates the id and queues the read, as [`Store::write`] does.
    pub(crate) fn get(
        &self,
        persistence_id: String,
        reply: Reply<Option<DurableState>>,
    ) -> Option<impl Future<Output = ()> + 'static> {
        if let Err(invalid) = validate_persistence_id(&persistence_id) {
            answer(reply, Err(invalid.into()));
            return None;
        }
        admit(
            &self.reads,
            PendingRead {
                persistence_id,
                reply,
                _slot: Slot::new("read"),
            },
        )
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

/// Sends `result` to the caller, if it waits.
fn answer<T>(reply: Reply<T>, result: Result<T, Error>) {
    if let Some(reply) = reply {
        // The caller may have given up; the result stands all the same.
        let _ = reply.send(result);
    }
}

/// Queues `request` now, or returns the future that queues it once there is room.
fn admit<T: Queued + Send + 'static>(
    queue: &mpsc::Sender<T>,
    request: T,
) -> Option<impl Future<Output = ()> + 'static> {
    match queue.try_send(request) {
        Ok(()) => None,
        // Closed: the store was disconnected before the request was sent.
        Err(TrySendError::Closed(request)) => {
            request.fail(Error::NotConnected);
            None
        }
        Err(TrySendError::Full(request)) => {
            let queue = queue.clone();
            Some(async move {
                if let Err(SendError(request)) = queue.send(request).await {
                    request.fail(Error::NotConnected);
                }
            })
        }
    }
}

/// Most bytes of state one batch carries, whatever `max_batch_size` allows: PostgreSQL refuses
/// messages over 1 GiB, and a smaller statement keeps any one batch's latency in check.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// A queued request: the bytes it adds to a batch, and how it fails.
trait Queued {
    fn bytes(&self) -> usize;
    /// Answers the request with `error`.
    fn fail(self, error: Error);
    /// True when the caller stopped waiting for the answer: the request need not be sent.
    fn abandoned(&self) -> bool;
}

impl Queued for PendingWrite {
    fn bytes(&self) -> usize {
        self.row.state_payload.len() + self.row.persistence_id.len()
    }

    fn fail(self, error: Error) {
        answer_write(self, Err(error));
    }

    fn abandoned(&self) -> bool {
        self.reply.as_ref().is_some_and(|reply| reply.is_closed())
    }
}

impl Queued for PendingRead {
    fn bytes(&self) -> usize {
        self.persistence_id.len()
    }

    fn fail(self, error: Error) {
        answer(self.reply, Err(error));
    }

    fn abandoned(&self) -> bool {
        self.reply.as_ref().is_some_and(|reply| reply.is_closed())
    }
}

/// A request queue shared by the workers, with room for one request taken from the channel but
/// left for the next batch because it did not fit in this one.
struct Queue<T> {
    receiver: mpsc::Receiver<T>,
    held: Option<T>,
}

/// A worker: takes at least one queued request and at most a batch of them (by count and by
/// bytes), runs the batch, repeats until the queue is closed and empty. Requests whose caller
/// stopped waiting are dropped unsent.
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
                None => loop {
                    match queue.receiver.recv().await {
                        Some(first) if first.abandoned() => continue,
                        Some(first) => break first,
                        None => return,
                    }
                },
            };
            let mut bytes = first.bytes();
            let mut batch = Vec::with_capacity(shared.max_batch_size.min(64));
            batch.push(first);
            while batch.len() < shared.max_batch_size {
                match queue.receiver.try_recv() {
                    Ok(next) if next.abandoned() => continue,
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
        // Once a statement failed for a reason no single row causes (a timeout, a lock, a
        // broken connection...), later rounds are not sent: their callers get the same error
        // at once rather than wait out another timeout each.
        let mut failed: Option<Error> = None;
        for round in rounds(batch) {
            let rows: Vec<&StateRow> = round.iter().map(|p| &p.row).collect();
            let outcomes = match &failed {
                Some(error) => rows.iter().map(|_| Err(error.clone())).collect(),
                None => match self.write_rows(&client, &rows).await {
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
                answer_write(pending, outcome);
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
            let outcome = match self.write_rows(client, std::slice::from_ref(row)).await {
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
        let statement = match self.version_check {
            VersionCheck::Sequential => Stmt::WriteChecked,
            VersionCheck::Unchecked => Stmt::WriteUnchecked,
        };
        // If this fails, the statement (atomic) wrote nothing; past it, the written rows are
        // committed and must be reported as written whatever happens next.
        let written = client.query(&self.sql, statement, &params).await?;
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

    async fn read_batch(self: Arc<Self>, batch: Vec<PendingRead>) {
        metrics::histogram!("durablestore_read_batch_size").record(batch.len() as f64);
        let found = match self.read_rows(&batch).await {
            Ok(found) => found,
            Err(error) => {
                for pending in batch {
                    answer(pending.reply, Err(error.clone()));
                }
                return;
            }
        };
        for pending in batch {
            let result = match found.get(pending.persistence_id.as_str()) {
                None => Ok(None),
                Some(row) => row.clone().and_then(|row| row.decode().map(Some)),
            };
            answer(pending.reply, result);
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
    let name = outcome_name(&outcome);
    metrics::counter!("durablestore_writes_total", "outcome" => name).increment(1);
    metrics::histogram!("durablestore_write_seconds").record(pending.queued.elapsed());
    match &outcome {
        Ok(_) => tracing::debug!(
            persistence_id = %pending.row.persistence_id,
            version = pending.row.version_number,
            outcome = name,
            "durable store write"
        ),
        Err(error) => tracing::debug!(
            persistence_id = %pending.row.persistence_id,
            version = pending.row.version_number,
            outcome = name,
            %error,
            "durable store write failed"
        ),
    }
    answer(pending.reply, outcome);
}

/// The name of a write's outcome, the same in metrics labels and tracing fields.
fn outcome_name(outcome: &Result<WriteOutcome, Error>) -> &'static str {
    match outcome {
        Ok(WriteOutcome::Written) => "written",
        Ok(WriteOutcome::AlreadyStored) => "already_stored",
        Err(Error::VersionConflict { .. }) => "conflict",
        Err(_) => "error",
    }
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

    fn pending(id: &str, version: i64) -> PendingWrite {
        PendingWrite {
            row: StateRow {
                persistence_id: id.to_owned(),
                version_number: version,
                state_payload: Vec::new(),
                state_manifest: "a.B".to_owned(),
                timestamp: 0,
                shard_number: 0,
            },
            reply: None,
            queued: Instant::now(),
            _slot: Slot::new("write"),
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
