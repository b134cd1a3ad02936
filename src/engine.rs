//! What runs behind a store: input validation, one batching queue per kind of request, and the
//! repository that serves their batches. The store actor owns one and hands it each request.

use std::sync::Arc;

use crate::config::Checked;
use crate::messages::WriteOutcome;
use crate::pool::Connections;
use crate::queue::{Admission, Queue, Reply, Respond, answer};
use crate::repository::{Fence, Read, ReadReply, Repository, Write, WriteRow};
use crate::state::{DurableState, RowFormat, StateRow, validate_persistence_id};

/// The queues and the repository of one store. Dropping it closes the queues: workers finish
/// what is queued, then exit and release their connections.
#[derive(Debug)]
pub(crate) struct Engine {
    repository: Arc<Repository>,
    writes: Queue<Write>,
    reads: Queue<Read>,
    row_format: RowFormat,
    max_state_bytes: usize,
}

impl Engine {
    /// Starts the workers on the current Tokio runtime.
    pub(crate) fn start(connections: Connections, checked: &Checked) -> Self {
        let config = &checked.config;
        let repository = Arc::new(Repository::new(connections, checked));
        let (capacity, workers, batch) = (
            config.max_pending_requests,
            config.max_connections,
            config.max_batch_size,
        );
        let writes = {
            let repository = repository.clone();
            Queue::start(capacity, workers, batch, move |batch| {
                let repository = repository.clone();
                async move { repository.write_batch(batch).await }
            })
        };
        let reads = {
            let repository = repository.clone();
            Queue::start(capacity, workers, batch, move |batch| {
                let repository = repository.clone();
                async move { repository.read_batch(batch).await }
            })
        };
        Engine {
            repository,
            writes,
            reads,
            row_format: config.row_format,
            max_state_bytes: config.max_state_bytes,
        }
    }

    /// Validates `state` and queues it; a worker answers on `reply`. Invalid input is answered
    /// at once. See [`Queue::submit`] for the returned admission future.
    /// With a `fence`, the write commits only under that registration (see [`WriteRow`]).
    pub(crate) fn write(
        &self,
        state: DurableState,
        fence: Option<Fence>,
        reply: Reply<WriteOutcome>,
    ) -> Option<Admission> {
        let row = StateRow::encode(state, self.row_format)
            .and_then(|row| row.check_size(self.max_state_bytes));
        match row {
            Ok(row) => self.writes.submit(WriteRow { row, fence }, reply),
            Err(invalid) => {
                answer(reply, Err(invalid.into()));
                None
            }
        }
    }

    /// Queues the tombstone of `persistence_id` at `version` as a write: deletes are
    /// version-checked and group-committed exactly as writes are.
    pub(crate) fn delete(
        &self,
        persistence_id: String,
        version: u64,
        fence: Option<Fence>,
        reply: Reply<WriteOutcome>,
    ) -> Option<Admission> {
        match StateRow::tombstone(persistence_id, version) {
            Ok(row) => self.writes.submit(WriteRow { row, fence }, reply),
            Err(invalid) => {
                answer(reply, Err(invalid.into()));
                None
            }
        }
    }

    /// Validates the id and queues the read, as [`Engine::write`] does.
    pub(crate) fn get(&self, persistence_id: String, reply: ReadReply) -> Option<Admission> {
        match validate_persistence_id(&persistence_id) {
            Ok(()) => self.reads.submit(persistence_id, reply),
            Err(invalid) => {
                reply.respond(Err(invalid.into()));
                None
            }
        }
    }

    pub(crate) fn repository(&self) -> &Arc<Repository> {
        &self.repository
    }
}
