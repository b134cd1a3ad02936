//! The store actor and the database work behind its messages.

use std::fmt;
use std::sync::Arc;

use actix::dev::{MessageResponse, OneshotSender};
use actix::{Actor, AsyncContext, Context, Handler, ResponseFuture, fut};
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tracing::Instrument;

use crate::batcher::Store;
use crate::config::Config;
use crate::error::Error;
use crate::messages::{CreateSchema, Disconnect, GetLatestState, Ping, WriteOutcome, WriteState};
use crate::pool::Connections;
use crate::state::DurableState;

/// An actix actor that keeps the latest state of each entity in PostgreSQL.
///
/// It answers [`WriteState`], [`GetLatestState`], [`Ping`], [`CreateSchema`] and
/// [`Disconnect`]. Its mailbox never waits on the database: a write or read goes straight into
/// a bounded queue served by `max_connections` workers, with the caller's reply channel
/// (see [`Enqueue`]); when that queue is full the actor takes no message until there is room,
/// so the memory it holds stays bounded however the messages are sent. A worker with nothing to do
/// sends a lone request at once; requests that queue while every worker is busy are sent
/// together as one multi-row statement and one commit (group commit), each caller still
/// getting its own answer. Writes of different entities run concurrently up to the pool size.
/// A write sent after the previous one of the same entity was answered (as
/// [`DurableEntity`](crate::DurableEntity) does) is applied after it; two writes of one entity
/// sent without waiting may land in different batches and apply in either order — with
/// [`VersionCheck::Sequential`](crate::VersionCheck) the late one is then refused, never
/// applied over a newer version.
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

    /// A store that runs on the caller's pool, like eGo's `NewDurableStoreWithPool`. The
    /// connection and pool settings of `config` are ignored (the pool keeps its own, and stays
    /// open when the actor stops); its schema, table, version rule, batching and timeouts apply.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when those settings cannot work (e.g. `max_connections(0)`).
    pub fn with_pool<T>(
        pool: bb8::Pool<PostgresConnectionManager<T>>,
        config: Config,
    ) -> Result<Self, Error>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        config.validate_store()?;
        let connections = Connections::borrow(pool, config.statement_timeout);
        // The workers start with the actor (`started`), inside its runtime.
        Ok(DurableStoreActor {
            store: None,
            config,
            origin: Origin::Borrowed(connections),
        })
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
        let store = Arc::new(Store::start(connections, &self.config));
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

/// How [`DurableStoreActor`] answers [`WriteState`] and [`GetLatestState`]: the request goes
/// straight into the batching queue together with the caller's reply channel, and a worker
/// answers it; no task or future is created per message. When the queue is full, the actor
/// stops taking messages until there is room, so the mailbox (bounded for `send`) holds the
/// rest.
///
/// Returned by the handlers; there is nothing to do with it.
pub struct Enqueue<R> {
    store: Result<Arc<Store>, Error>,
    request: R,
}

impl<R> fmt::Debug for Enqueue<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enqueue").finish_non_exhaustive()
    }
}

impl MessageResponse<DurableStoreActor, WriteState> for Enqueue<DurableState> {
    fn handle(
        self,
        ctx: &mut Context<DurableStoreActor>,
        tx: Option<OneshotSender<Result<WriteOutcome, Error>>>,
    ) {
        match self.store {
            Ok(store) => {
                if let Some(admission) = store.write(self.request, tx) {
                    ctx.wait(fut::wrap_future(admission));
                }
            }
            Err(error) => reply(tx, Err(error)),
        }
    }
}

impl MessageResponse<DurableStoreActor, GetLatestState> for Enqueue<String> {
    fn handle(
        self,
        ctx: &mut Context<DurableStoreActor>,
        tx: Option<OneshotSender<Result<Option<DurableState>, Error>>>,
    ) {
        match self.store {
            Ok(store) => {
                if let Some(admission) = store.get(self.request, tx) {
                    ctx.wait(fut::wrap_future(admission));
                }
            }
            Err(error) => reply(tx, Err(error)),
        }
    }
}

fn reply<T>(tx: Option<OneshotSender<T>>, value: T) {
    if let Some(tx) = tx {
        let _ = tx.send(value);
    }
}

impl Handler<WriteState> for DurableStoreActor {
    type Result = Enqueue<DurableState>;

    fn handle(&mut self, WriteState(state): WriteState, _ctx: &mut Self::Context) -> Self::Result {
        Enqueue {
            store: self.store(),
            request: state,
        }
    }
}

impl Handler<GetLatestState> for DurableStoreActor {
    type Result = Enqueue<String>;

    fn handle(&mut self, msg: GetLatestState, _ctx: &mut Self::Context) -> Self::Result {
        Enqueue {
            store: self.store(),
            request: msg.0,
        }
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
fn record_outcome(result: &Result<(), Error>) {
    let span = tracing::Span::current();
    match result {
        Ok(()) => {
            span.record("outcome", "ok");
        }
        Err(error) => {
            span.record("outcome", "error");
            tracing::debug!(%error, "durable store operation failed");
        }
    }
}
