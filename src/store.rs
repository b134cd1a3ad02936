//! The store actor and the database work behind its messages.

use std::sync::Arc;

use actix::{Actor, Context, Handler, ResponseFuture};
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Socket};
use tracing::Instrument;

use crate::config::{Config, VersionCheck};
use crate::error::Error;
use crate::messages::{CreateSchema, Disconnect, GetLatestState, Ping, WriteOutcome, WriteState};
use crate::pool::Connections;
use crate::sql::Sql;
use crate::state::{DurableState, StateRow, validate_persistence_id};

/// An actix actor that keeps the latest state of each entity in PostgreSQL.
///
/// It answers [`WriteState`], [`GetLatestState`], [`Ping`], [`CreateSchema`] and
/// [`Disconnect`]. Its mailbox never waits on the database: each message becomes a future
/// that checks a connection out of the pool, so up to `max_connections` statements run at
/// once and the rest wait for a connection (at most the checkout timeout).
///
/// The pool is either owned (built from a [`Config`] by [`DurableStoreActor::new`], closed
/// when the actor stops or on [`Disconnect`]) or borrowed (a caller's pool given to
/// [`DurableStoreActor::with_pool`], never closed by the actor).
///
/// ```no_run
/// use actix::Actor;
/// use durablestore_postgres::{Config, DurableStoreActor, Ping};
///
/// #[actix::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let config: Config = "postgres://postgres@127.0.0.1:5432/postgres".parse()?;
///     let store = DurableStoreActor::new(config)?.start();
///     store.send(Ping).await??;
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct DurableStoreActor {
    config: Config,
    origin: Origin,
    store: Option<Arc<Store>>,
}

#[derive(Debug)]
enum Origin {
    Owned,
    Borrowed(Connections),
}

impl DurableStoreActor {
    /// A store that builds and owns its pool from `config`. No connection is opened until the
    /// first message needs one (send [`Ping`] to connect eagerly).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the config cannot work (no host or user, zero pool size...).
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        Ok(DurableStoreActor {
            config,
            origin: Origin::Owned,
            store: None,
        })
    }

    /// A store that runs on the caller's pool, like eGo's `NewDurableStoreWithPool`. Only the
    /// schema, table and version rule of `config` are used; the pool keeps its own settings and
    /// stays open when the actor stops.
    pub fn with_pool<T>(pool: bb8::Pool<PostgresConnectionManager<T>>, config: Config) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let connections = Connections::borrow(pool);
        DurableStoreActor {
            store: Some(Arc::new(Store::new(connections.clone(), &config))),
            config,
            origin: Origin::Borrowed(connections),
        }
    }

    /// The store to run a message on, or [`Error::NotConnected`] after a disconnect.
    fn store(&self) -> Result<Arc<Store>, Error> {
        self.store.clone().ok_or(Error::NotConnected)
    }

    fn connect(&mut self) -> Result<Arc<Store>, Error> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        let connections = match &self.origin {
            Origin::Owned => Connections::build(&self.config)?,
            Origin::Borrowed(connections) => connections.clone(),
        };
        let store = Arc::new(Store::new(connections, &self.config));
        self.store = Some(store.clone());
        Ok(store)
    }
}

impl Actor for DurableStoreActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        // Building the pool needs the runtime, which exists from here on. It opens nothing yet,
        // so this cannot fail on an unreachable database; `new` already validated the config.
        if let Err(error) = self.connect() {
            tracing::error!(%error, "durable store could not build its pool");
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.store = None;
    }
}

impl Handler<WriteState> for DurableStoreActor {
    type Result = ResponseFuture<Result<WriteOutcome, Error>>;

    fn handle(&mut self, WriteState(state): WriteState, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::debug_span!(
            "durable_store.write",
            persistence_id = %state.persistence_id,
            version = state.version_number,
            outcome = tracing::field::Empty,
        );
        let store = self.store();
        Box::pin(
            async move {
                let result = async { store?.write(state).await }.await;
                record_outcome(&result);
                result
            }
            .instrument(span),
        )
    }
}

impl Handler<GetLatestState> for DurableStoreActor {
    type Result = ResponseFuture<Result<Option<DurableState>, Error>>;

    fn handle(&mut self, msg: GetLatestState, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::debug_span!(
            "durable_store.get",
            persistence_id = %msg.0,
            outcome = tracing::field::Empty,
        );
        let store = self.store();
        Box::pin(
            async move {
                let result = async { store?.get(msg.0).await }.await;
                record_outcome(&result);
                result
            }
            .instrument(span),
        )
    }
}

impl Handler<Ping> for DurableStoreActor {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: Ping, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::debug_span!("durable_store.ping", outcome = tracing::field::Empty);
        let store = self.connect();
        Box::pin(
            async move {
                let result = async { store?.ping().await }.await;
                record_outcome(&result);
                result
            }
            .instrument(span),
        )
    }
}

impl Handler<CreateSchema> for DurableStoreActor {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: CreateSchema, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(
            "durable_store.create_schema",
            schema = self.config.get_schema(),
            table = self.config.get_table(),
            outcome = tracing::field::Empty,
        );
        let store = self.store();
        Box::pin(
            async move {
                let result = async { store?.create_schema().await }.await;
                record_outcome(&result);
                result
            }
            .instrument(span),
        )
    }
}

impl Handler<Disconnect> for DurableStoreActor {
    type Result = ();

    fn handle(&mut self, _: Disconnect, _ctx: &mut Self::Context) {
        self.store = None;
    }
}

/// Records how an operation ended on the current span; errors are logged without payloads.
fn record_outcome<T: OutcomeName>(result: &Result<T, Error>) {
    let span = tracing::Span::current();
    match result {
        Ok(value) => {
            span.record("outcome", value.outcome_name());
        }
        Err(error) => {
            span.record("outcome", error_name(error));
            tracing::debug!(%error, "durable store operation failed");
        }
    }
}

trait OutcomeName {
    fn outcome_name(&self) -> &'static str;
}

impl OutcomeName for WriteOutcome {
    fn outcome_name(&self) -> &'static str {
        match self {
            WriteOutcome::Written => "written",
            WriteOutcome::AlreadyStored => "already_stored",
        }
    }
}

impl OutcomeName for Option<DurableState> {
    fn outcome_name(&self) -> &'static str {
        if self.is_some() { "found" } else { "not_found" }
    }
}

impl OutcomeName for () {
    fn outcome_name(&self) -> &'static str {
        "ok"
    }
}

fn error_name(error: &Error) -> &'static str {
    match error {
        Error::VersionConflict { .. } => "version_conflict",
        Error::PoolTimeout { .. } => "pool_timeout",
        Error::Unavailable { .. } => "unavailable",
        Error::NotConnected => "not_connected",
        Error::Database { .. } => "database_error",
        Error::CorruptState { .. } | Error::StateTypeMismatch { .. } | Error::Decode { .. } => {
            "corrupt_state"
        }
        Error::InvalidInput(_) => "invalid_input",
        Error::InvalidConfig(_) => "invalid_config",
    }
}

/// The database side of a store: its connections, its statements and its version rule.
#[derive(Debug)]
pub(crate) struct Store {
    connections: Connections,
    sql: Sql,
    version_check: VersionCheck,
}

impl Store {
    fn new(connections: Connections, config: &Config) -> Self {
        Store {
            connections,
            sql: Sql::new(config),
            version_check: config.version_check,
        }
    }

    async fn write(&self, state: DurableState) -> Result<WriteOutcome, Error> {
        let row = StateRow::encode(state)?;
        let rows = [row];
        let mut outcomes = self.write_rows(&rows).await?;
        outcomes.pop().unwrap_or_else(|| {
            Err(Error::CorruptState {
                persistence_id: rows[0].persistence_id.clone(),
                reason: "the write statement returned no result".to_owned(),
            })
        })
    }

    /// Writes rows with distinct ids in one statement; returns one outcome per row, in order.
    pub(crate) async fn write_rows(
        &self,
        rows: &[StateRow],
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
        let client = self.connections.get().await?;
        if self.version_check == VersionCheck::Unchecked {
            client
                .query_typed(&self.sql.write_unchecked, &params)
                .await
                .map_err(Error::database)?;
            return Ok(rows.iter().map(|_| Ok(WriteOutcome::Written)).collect());
        }
        let result = client
            .query_typed(&self.sql.write_checked, &params)
            .await
            .map_err(Error::database)?;
        let mut outcomes: Vec<Option<Result<WriteOutcome, Error>>> =
            rows.iter().map(|_| None).collect();
        // Conflicts whose snapshot says the write should have applied lost a race with a
        // concurrent writer; their stored version is re-read so the error tells the truth.
        let mut raced = Vec::new();
        for record in &result {
            let ord: i64 = record.try_get(0).map_err(Error::database)?;
            let written: bool = record.try_get(1).map_err(Error::database)?;
            let stored: Option<i64> = record.try_get(2).map_err(Error::database)?;
            let same: Option<bool> = record.try_get(3).map_err(Error::database)?;
            let Some(index) = usize::try_from(ord).ok().and_then(|o| o.checked_sub(1)) else {
                continue;
            };
            let Some(row) = rows.get(index) else { continue };
            let outcome = if written {
                Ok(WriteOutcome::Written)
            } else if stored == Some(row.version_number) && same == Some(true) {
                Ok(WriteOutcome::AlreadyStored)
            } else {
                if stored.unwrap_or(0) == row.version_number - 1 {
                    raced.push(index);
                }
                Err(conflict(row, stored))
            };
            outcomes[index] = Some(outcome);
        }
        if !raced.is_empty() {
            let ids: Vec<&str> = raced
                .iter()
                .map(|&i| rows[i].persistence_id.as_str())
                .collect();
            let current = client
                .query_typed(&self.sql.select, &[(&ids, Type::TEXT_ARRAY)])
                .await
                .map_err(Error::database)?;
            for &index in &raced {
                let row = &rows[index];
                let stored = current
                    .iter()
                    .find(|r| r.try_get::<_, &str>(0).ok() == Some(row.persistence_id.as_str()))
                    .and_then(|r| r.try_get::<_, i64>(1).ok());
                outcomes[index] = Some(Err(conflict(row, stored)));
            }
        }
        Ok(outcomes
            .into_iter()
            .zip(rows)
            .map(|(outcome, row)| {
                outcome.unwrap_or_else(|| {
                    Err(Error::CorruptState {
                        persistence_id: row.persistence_id.clone(),
                        reason: "the write statement returned no result for this row".to_owned(),
                    })
                })
            })
            .collect())
    }

    async fn get(&self, persistence_id: String) -> Result<Option<DurableState>, Error> {
        validate_persistence_id(&persistence_id)?;
        let client = self.connections.get().await?;
        let ids = [persistence_id.as_str()];
        let rows = client
            .query_typed(&self.sql.select, &[(&ids.as_slice(), Type::TEXT_ARRAY)])
            .await
            .map_err(Error::database)?;
        match rows.first() {
            None => Ok(None),
            Some(row) => read_row(row)?.decode().map(Some),
        }
    }

    async fn ping(&self) -> Result<(), Error> {
        let client = self.connections.get().await?;
        client.simple_query("").await.map_err(Error::database)?;
        Ok(())
    }

    async fn create_schema(&self) -> Result<(), Error> {
        let client = self.connections.get().await?;
        client
            .batch_execute(&self.sql.create)
            .await
            .map_err(Error::database)
    }
}

fn conflict(row: &StateRow, stored: Option<i64>) -> Error {
    Error::VersionConflict {
        persistence_id: row.persistence_id.clone(),
        // Both were range-checked on the way in (attempted) or are a stored BIGINT that a
        // checked write never makes negative; a negative legacy value reads as 0.
        attempted: u64::try_from(row.version_number).unwrap_or(0),
        stored: stored.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
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
