//! [`DurableStore`]: the store as a plain, cloneable async handle, for code that runs no actix
//! system (tokio, axum, scripts) and for entities that skip the store actor's mailbox.

use std::sync::Arc;
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;

use crate::config::{Checked, Config, PoolOwner};
use crate::engine::Engine;
use crate::error::Error;
use crate::feed::{ChangePage, Changes, Feed, Offset};
use crate::messages::{Revision, WriteOutcome};
use crate::pool::Connections;
use crate::queue::{Admission, Answer, Reply};
use crate::repository::Fence;
use crate::repository::ReadReply;
use crate::state::{DurableState, now_millis};
use crate::telemetry::instrumented;
use crate::tls::PoolTls;

/// The store as a plain async handle: cloneable, `Send + Sync`, usable from any task of a Tokio
/// runtime, with the same batching engine, guarantees and errors as
/// [`DurableStoreActor`](crate::DurableStoreActor) (which wraps one).
///
/// Writes and reads of all clones share one set of queues: writes are version-checked and
/// group-committed, reads batched. The pool closes (each connection once its statement is
/// done) when the last clone is dropped. An entity given a handle
/// (`DurableEntity::new(behavior, store.clone())`) reaches the queues directly, without a hop
/// through the store actor's mailbox.
///
/// ```no_run
/// use durablestore_postgres::{Config, DurableState, DurableStore, WriteOutcome};
///
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() -> Result<(), durablestore_postgres::Error> {
///     let config: Config = "postgres://postgres@127.0.0.1:5432/postgres".parse()?;
///     let store = DurableStore::new(config.schema("handle_example"))?;
///     store.create_schema().await?;
///     let state = DurableState::new("account-1", 1, &prost_types::Duration::default());
///     assert_eq!(store.write(state.clone()).await?, WriteOutcome::Written);
///     assert_eq!(store.get("account-1").await?, Some(state));
///     store.delete("account-1", 2).await?;
///     assert_eq!(store.get("account-1").await?, None);
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct DurableStore {
    engine: Arc<Engine>,
    checked: Arc<Checked>,
    /// With [`Config::change_feed`]: the feed's statements, on the same connections.
    feed: Option<Arc<Feed>>,
}

impl DurableStore {
    /// A store that builds and owns its pool from `config`. Opens no connection until the first
    /// call needs one ([`DurableStore::ping`] connects eagerly). Must be called inside a Tokio
    /// runtime (an actix system runs one): the batching workers are spawned on it.
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`] listing every setting that cannot work;
    /// - [`Error::NoRuntime`] outside a Tokio runtime.
    pub fn new(config: Config) -> Result<Self, Error> {
        let checked = config.check(PoolOwner::Store)?;
        require_runtime()?;
        Ok(Self::start(Connections::build(&checked), checked))
    }

    /// A store on the caller's pool, as
    /// [`DurableStoreActor::with_pool`](crate::DurableStoreActor::with_pool): the pool keeps its
    /// own settings and stays open when the store is dropped.
    ///
    /// # Errors
    /// As [`DurableStore::new`], for the settings that apply to a borrowed pool.
    pub fn with_pool<T: PoolTls>(
        pool: bb8::Pool<PostgresConnectionManager<T>>,
        config: Config,
    ) -> Result<Self, Error> {
        let checked = config.check(PoolOwner::Caller)?;
        require_runtime()?;
        let connections = Connections::borrow(pool, checked.config.statement_timeout);
        Ok(Self::start(connections, checked))
    }

    /// Starts the engine on `connections`; the caller is inside a Tokio runtime.
    pub(crate) fn start(connections: Connections, checked: Checked) -> Self {
        let feed = checked
            .config
            .change_feed
            .then(|| Arc::new(Feed::new(connections.clone(), &checked)));
        DurableStore {
            engine: Arc::new(Engine::start(connections, &checked)),
            checked: Arc::new(checked),
            feed,
        }
    }

    /// Writes the latest state of one entity: see [`WriteState`](crate::WriteState) for the
    /// version rule, the outcomes and the errors.
    pub async fn write(&self, state: DurableState) -> Result<WriteOutcome, Error> {
        ask(|reply| self.engine.write(state, None, reply)).await
    }

    /// Submits a write now (fenced by an ownership registration if `fence` is given: committed
    /// only while it is still registered) and returns the wait for its answer.
    pub(crate) fn submit_write(
        &self,
        state: DurableState,
        fence: Option<Fence>,
    ) -> Answer<WriteOutcome> {
        Answer::submit(|reply| self.engine.write(state, fence, reply))
    }

    /// Submits a delete now, as [`DurableStore::submit_write`] submits a write.
    pub(crate) fn submit_delete(
        &self,
        persistence_id: String,
        version: u64,
        fence: Option<Fence>,
    ) -> Answer<WriteOutcome> {
        Answer::submit(|reply| self.engine.delete(persistence_id, version, fence, reply))
    }

    /// Reads the latest state of one entity: `None` when it has none or was deleted. See
    /// [`GetLatestState`](crate::GetLatestState).
    pub async fn get(
        &self,
        persistence_id: impl Into<String>,
    ) -> Result<Option<DurableState>, Error> {
        let id = persistence_id.into();
        ask(|reply| self.engine.get(id, ReadReply::State(reply))).await
    }

    /// Reads the stored version of one entity and its state, also when it was deleted. See
    /// [`GetRevision`](crate::GetRevision).
    pub async fn revision(&self, persistence_id: impl Into<String>) -> Result<Revision, Error> {
        let id = persistence_id.into();
        ask(|reply| self.engine.get(id, ReadReply::Revision(reply))).await
    }

    /// Deletes one entity at `version` (the stored version + 1), leaving a tombstone: see
    /// [`DeleteState`](crate::DeleteState).
    pub async fn delete(
        &self,
        persistence_id: impl Into<String>,
        version: u64,
    ) -> Result<WriteOutcome, Error> {
        let id = persistence_id.into();
        ask(|reply| self.engine.delete(id, version, None, reply)).await
    }

    /// Removes the tombstones older than `older_than`; how many. See
    /// [`PurgeDeleted`](crate::PurgeDeleted).
    pub async fn purge_deleted(&self, older_than: Duration) -> Result<u64, Error> {
        let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let span = tracing::info_span!(
            "durable_store.purge_deleted",
            outcome = tracing::field::Empty
        );
        instrumented(
            span,
            self.engine
                .repository()
                .purge_deleted(now_millis().saturating_sub(age)),
        )
        .await
    }

    /// One page of the ids of stored entities, after `after`: see
    /// [`ListPersistenceIds`](crate::ListPersistenceIds).
    pub async fn list_persistence_ids(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        self.engine
            .repository()
            .list_ids(after.unwrap_or_default(), limit)
            .await
    }

    /// One page of the latest states, after `after`, of `shard` unless `None`: see
    /// [`CurrentStates`](crate::CurrentStates).
    pub async fn current_states(
        &self,
        shard: Option<u64>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DurableState>, Error> {
        self.engine
            .repository()
            .current_states(shard, after.unwrap_or_default(), limit)
            .await
    }

    /// Checks that the database answers (connecting if no connection is open).
    pub async fn ping(&self) -> Result<(), Error> {
        let span = tracing::debug_span!("durable_store.ping", outcome = tracing::field::Empty);
        instrumented(span, self.engine.repository().ping()).await
    }

    /// Creates the configured schema and table if they do not exist: see
    /// [`CreateSchema`](crate::CreateSchema). With [`Config::change_feed`], also applies the
    /// feed's migration (`resources/changes.sql`) to the table, new or existing; a table that
    /// would be distributed by Citus is then refused with [`Error::InvalidConfig`] before
    /// anything is created.
    pub async fn create_schema(&self) -> Result<(), Error> {
        let span = tracing::info_span!(
            "durable_store.create_schema",
            schema = self.checked.schema.as_str(),
            table = self.checked.table.as_str(),
            outcome = tracing::field::Empty,
        );
        let create = async {
            if let Some(feed) = &self.feed {
                feed.refuse_distributed().await?;
            }
            self.engine.repository().create_schema().await?;
            match &self.feed {
                Some(feed) => feed.install().await,
                None => Ok(()),
            }
        };
        instrumented(span, create).await
    }

    /// Creates the tables of ownership across replicas (`resources/ownership.sql`; on Citus,
    /// distributed and colocated with the table as `resources/ownership_citus.sql` says) if
    /// they are missing. A registry with
    /// [`RegistryBuilder::ownership`](crate::RegistryBuilder::ownership) does this itself when
    /// it starts; call it from a migration step where the service's role may not create
    /// tables. Run [`DurableStore::create_schema`] first.
    ///
    /// # Errors
    /// The pool's and the database's errors (e.g. no privilege to create the tables).
    pub async fn create_ownership_schema(&self) -> Result<(), Error> {
        self.engine.repository().create_ownership_schema().await
    }

    /// The changes of the table after `from`, following it forever: a stream that delivers
    /// what the feed holds, then waits for more (woken by a notification, or after
    /// [`Config::change_poll_interval`]). See the [`feed`](crate::feed) chapter for what it
    /// guarantees: nothing committed after `from` is skipped, and per entity versions never
    /// go backwards.
    ///
    /// Opens no connection until polled. Each stream listens on a dedicated connection
    /// (except behind a transaction-mode pooler, where it polls), and reads on the pool.
    ///
    /// # Errors
    /// Yielded as items: [`Error::InvalidConfig`] (and nothing more) when the store has no
    /// [`Config::change_feed`]; database errors and states that do not decode, after which the
    /// stream reads again from where it was after a poll interval.
    pub fn changes(&self, from: Offset) -> Changes {
        match &self.feed {
            Some(feed) => Changes::follow(feed.clone(), from),
            None => Changes::failing(feed_off()),
        }
    }

    /// One page of the feed: up to `limit` log entries after `from`, as at most one change per
    /// entity, and where the next page starts. An empty page with `next == from` means the
    /// feed has nothing more, for now. For batch consumers; [`DurableStore::changes`] follows.
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`] when the store has no [`Config::change_feed`];
    /// - [`InvalidInput::LimitOutOfRange`](crate::InvalidInput::LimitOutOfRange) unless
    ///   `limit` is 1 to 10,000;
    /// - [`Error::CorruptState`] (and the other decoding errors of reads) for a row that does
    ///   not decode: the page is not delivered, and the next read tries it again;
    /// - the pool's and the database's errors.
    pub async fn changes_page(&self, from: &Offset, limit: usize) -> Result<ChangePage, Error> {
        match &self.feed {
            Some(feed) => feed.page(from, limit).await,
            None => Err(feed_off()),
        }
    }

    /// Removes the feed's log entries that a later entry of the same entity made redundant;
    /// how many. Consumers lose nothing by it, wherever their offsets are: the later entry
    /// delivers the entity's latest row. Run it periodically; it reads the whole log.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the store has no [`Config::change_feed`]; the pool's
    /// and the database's errors.
    pub async fn compact_changes(&self) -> Result<u64, Error> {
        match &self.feed {
            Some(feed) => feed.compact().await,
            None => Err(feed_off()),
        }
    }

    /// The engine, for the store actor to hand requests to.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The checked configuration the store runs with.
    pub(crate) fn checked(&self) -> &Checked {
        &self.checked
    }
}

/// Submits a request with a fresh reply channel, waits for room in its queue if need be, then
/// for the answer (see [`Answer`]).
pub(crate) async fn ask<T>(submit: impl FnOnce(Reply<T>) -> Option<Admission>) -> Result<T, Error> {
    Answer::submit(submit).await
}

fn feed_off() -> Error {
    Error::InvalidConfig(
        "this store has no change feed: enable it with Config::change_feed(true) (and run \
         CreateSchema once to install it)"
            .to_owned(),
    )
}

fn require_runtime() -> Result<(), Error> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| Error::NoRuntime)
}
