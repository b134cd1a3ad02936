//! The store actor and the database work behind its messages.

use std::fmt;
use std::sync::Arc;

use actix::dev::{MessageResponse, OneshotSender};
use actix::{Actor, AsyncContext, Context, Handler, ResponseFuture, fut};
use bb8_postgres::PostgresConnectionManager;

use crate::config::{Checked, Config, PoolOwner};
use crate::engine::Engine;
use crate::error::Error;
use crate::messages::{CreateSchema, Disconnect, GetLatestState, Ping, WriteOutcome, WriteState};
use crate::pool::Connections;
use crate::queue::{Admission, Reply, answer};
use crate::state::DurableState;
use crate::telemetry::instrumented;
use crate::tls::PoolTls;

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
    checked: Checked,
    origin: Origin,
    engine: Option<Arc<Engine>>,
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
    /// [`Error::InvalidConfig`] listing every setting that cannot work (no host or user, an
    /// invalid table name, zero pool size, an unreadable certificate...).
    pub fn new(config: Config) -> Result<Self, Error> {
        Ok(DurableStoreActor {
            checked: config.check(PoolOwner::Store)?,
            origin: Origin::Owned,
            engine: None,
        })
    }

    /// A store that runs on the caller's pool, like eGo's `NewDurableStoreWithPool`. The
    /// connection and pool settings of `config` are ignored (the pool keeps its own, and stays
    /// open when the actor stops); its schema, table, version rule, batching and timeouts apply.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] listing every one of those settings that cannot work (e.g.
    /// `max_connections(0)`).
    pub fn with_pool<T: PoolTls>(
        pool: bb8::Pool<PostgresConnectionManager<T>>,
        config: Config,
    ) -> Result<Self, Error> {
        let checked = config.check(PoolOwner::Caller)?;
        let connections = Connections::borrow(pool, checked.config.statement_timeout);
        // The workers start with the actor (`started`), inside its runtime.
        Ok(DurableStoreActor {
            checked,
            origin: Origin::Borrowed(connections),
            engine: None,
        })
    }

    /// The engine to run a message on, or [`Error::NotConnected`] after a disconnect.
    fn engine(&self) -> Result<Arc<Engine>, Error> {
        self.engine.clone().ok_or(Error::NotConnected)
    }

    /// The engine, started (with its pool, when owned) if it is not running.
    fn connect(&mut self) -> Arc<Engine> {
        if let Some(engine) = &self.engine {
            return engine.clone();
        }
        let connections = match &self.origin {
            Origin::Owned => Connections::build(&self.checked),
            Origin::Borrowed(connections) => connections.clone(),
        };
        let engine = Arc::new(Engine::start(connections, &self.checked));
        self.engine = Some(engine.clone());
        engine
    }
}

impl Actor for DurableStoreActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        // Building the pool needs the runtime, which exists from here on. It opens nothing yet,
        // so this cannot fail on an unreachable database; `new` already checked the config.
        self.connect();
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.engine = None;
    }
}

/// How [`DurableStoreActor`] answers [`WriteState`] and [`GetLatestState`]: the request goes
/// straight into the batching queue together with the caller's reply channel, and a worker
/// answers it; no task or future is created per message. When the queue is full, the actor
/// stops taking messages until there is room, so the mailbox (bounded for `send`) holds the
/// rest.
///
/// Returned by the handlers; there is nothing to do with it.
pub struct Enqueue<M> {
    engine: Result<Arc<Engine>, Error>,
    message: M,
}

impl<M> fmt::Debug for Enqueue<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enqueue").finish_non_exhaustive()
    }
}

impl MessageResponse<DurableStoreActor, WriteState> for Enqueue<WriteState> {
    fn handle(
        self,
        ctx: &mut Context<DurableStoreActor>,
        tx: Option<OneshotSender<Result<WriteOutcome, Error>>>,
    ) {
        enqueue(self.engine, ctx, tx, |engine, tx| {
            engine.write(self.message.0, tx)
        });
    }
}

impl MessageResponse<DurableStoreActor, GetLatestState> for Enqueue<GetLatestState> {
    fn handle(
        self,
        ctx: &mut Context<DurableStoreActor>,
        tx: Option<OneshotSender<Result<Option<DurableState>, Error>>>,
    ) {
        enqueue(self.engine, ctx, tx, |engine, tx| {
            engine.get(self.message.0, tx)
        });
    }
}

/// Submits a request to `engine` (or answers `tx` with why there is none); when its queue is
/// full, the actor waits for room before its next message.
fn enqueue<T>(
    engine: Result<Arc<Engine>, Error>,
    ctx: &mut Context<DurableStoreActor>,
    tx: Reply<T>,
    submit: impl FnOnce(&Engine, Reply<T>) -> Option<Admission>,
) {
    match engine {
        Ok(engine) => {
            if let Some(admission) = submit(&engine, tx) {
                ctx.wait(fut::wrap_future(admission));
            }
        }
        Err(error) => answer(tx, Err(error)),
    }
}

impl Handler<WriteState> for DurableStoreActor {
    type Result = Enqueue<WriteState>;

    fn handle(&mut self, message: WriteState, _ctx: &mut Self::Context) -> Self::Result {
        Enqueue {
            engine: self.engine(),
            message,
        }
    }
}

impl Handler<GetLatestState> for DurableStoreActor {
    type Result = Enqueue<GetLatestState>;

    fn handle(&mut self, message: GetLatestState, _ctx: &mut Self::Context) -> Self::Result {
        Enqueue {
            engine: self.engine(),
            message,
        }
    }
}

impl Handler<Ping> for DurableStoreActor {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: Ping, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::debug_span!("durable_store.ping", outcome = tracing::field::Empty);
        let engine = self.connect();
        Box::pin(instrumented(span, async move { engine.ping().await }))
    }
}

impl Handler<CreateSchema> for DurableStoreActor {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: CreateSchema, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(
            "durable_store.create_schema",
            schema = self.checked.schema.as_str(),
            table = self.checked.table.as_str(),
            outcome = tracing::field::Empty,
        );
        let engine = self.engine();
        Box::pin(instrumented(
            span,
            async move { engine?.create_schema().await },
        ))
    }
}

impl Handler<Disconnect> for DurableStoreActor {
    type Result = ();

    fn handle(&mut self, _: Disconnect, _ctx: &mut Self::Context) {
        self.engine = None;
    }
}
