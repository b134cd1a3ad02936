//! The store actor: the messages of a [`DurableStore`], answered from an actix mailbox.

use std::fmt;

use actix::dev::{MessageResponse, OneshotSender};
use actix::{Actor, AsyncContext, Context, Handler, Message, ResponseFuture, fut};
use bb8_postgres::PostgresConnectionManager;

use crate::config::{Checked, Config, PoolOwner};
use crate::error::Error;
use crate::handle::DurableStore;
use crate::messages::{
    CreateSchema, CurrentStates, DeleteState, Disconnect, GetLatestState, GetRevision,
    ListPersistenceIds, Ping, PurgeDeleted, WriteState,
};
use crate::pool::Connections;
use crate::queue::Admission;
use crate::repository::ReadReply;
use crate::tls::PoolTls;

/// An actix actor that keeps the latest state of each entity in PostgreSQL.
///
/// It answers [`WriteState`], [`GetLatestState`], [`DeleteState`], [`GetRevision`],
/// [`ListPersistenceIds`], [`CurrentStates`], [`PurgeDeleted`], [`Ping`], [`CreateSchema`] and
/// [`Disconnect`], by handing them to a [`DurableStore`] (the same engine as a plain async
/// handle). Its mailbox never waits on the database: a write or read goes straight into
/// a bounded queue served by `max_connections` workers, with the caller's reply channel
/// (see [`Enqueue`]); when that queue is full the actor takes no message until there is room,
/// so the memory it holds stays bounded however the messages are sent. Its mailbox holds up to
/// `max_pending_requests` messages before `send` waits. A worker with nothing to do
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
/// [`DurableStoreActor::with_pool`], never closed by the actor). An actor made from a
/// [`DurableStore`] (`DurableStoreActor::from(store)`) shares that store's engine and pool and
/// never closes them.
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
    origin: Origin,
    /// `None` before `started` and after a disconnect.
    store: Option<DurableStore>,
}

/// Where the actor's store comes from, so that [`Ping`] can connect again after a
/// [`Disconnect`].
#[derive(Debug)]
enum Origin {
    Owned(Box<Checked>),
    Borrowed(Box<Checked>, Connections),
    Shared(DurableStore),
}

impl DurableStoreActor {
    /// A store that builds and owns its pool from `config`. No connection is opened until the
    /// first message needs one (send [`Ping`] to connect eagerly).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] listing every setting that cannot work (no host or user, an
    /// invalid table name, zero pool size, an unreadable certificate...).
    pub fn new(config: Config) -> Result<Self, Error> {
        let checked = config.check(PoolOwner::Store)?;
        Ok(DurableStoreActor {
            origin: Origin::Owned(Box::new(checked)),
            store: None,
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
            origin: Origin::Borrowed(Box::new(checked), connections),
            store: None,
        })
    }

    /// The store to run a message on, or [`Error::NotConnected`] after a disconnect.
    fn store(&self) -> Result<DurableStore, Error> {
        self.store.clone().ok_or(Error::NotConnected)
    }

    /// The store, started (with its pool, when owned) if it is not running.
    fn connect(&mut self) -> DurableStore {
        if let Some(store) = &self.store {
            return store.clone();
        }
        let store = match &self.origin {
            Origin::Owned(checked) => {
                DurableStore::start(Connections::build(checked), (**checked).clone())
            }
            Origin::Borrowed(checked, connections) => {
                DurableStore::start(connections.clone(), (**checked).clone())
            }
            Origin::Shared(store) => store.clone(),
        };
        self.store = Some(store.clone());
        store
    }
}

impl From<DurableStore> for DurableStoreActor {
    /// An actor answering the messages with `store`'s engine; [`Disconnect`] only detaches it.
    fn from(store: DurableStore) -> Self {
        DurableStoreActor {
            origin: Origin::Shared(store),
            store: None,
        }
    }
}

impl Actor for DurableStoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Building the pool needs the runtime, which exists from here on. It opens nothing yet,
        // so this cannot fail on an unreachable database; `new` already checked the config.
        let store = self.connect();
        // The mailbox holds as many requests as the queue behind it: actix's default (16)
        // parks every `send` beyond it, and a parked send clones its sender and queues a
        // waker (2.8 allocations more per entity command with 100 entities on this actor).
        ctx.set_mailbox_capacity(store.checked().config.max_pending_requests.max(16));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.store = None;
    }
}

/// How [`DurableStoreActor`] answers the messages that go to its queues ([`WriteState`],
/// [`DeleteState`], [`GetLatestState`], [`GetRevision`]): the request goes straight into the
/// batching queue together with the caller's reply channel, and a worker answers it; no task
/// or future is created per message. When the queue is full, the actor stops taking messages
/// until there is room, so the mailbox (bounded for `send`) holds the rest.
///
/// Returned by the handlers; there is nothing to do with it.
pub struct Enqueue<M> {
    store: Result<DurableStore, Error>,
    message: M,
}

impl<M> fmt::Debug for Enqueue<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enqueue").finish_non_exhaustive()
    }
}

/// A message that goes straight into a store's queues (see [`Enqueue`]). Implemented by
/// [`WriteState`], [`DeleteState`], [`GetLatestState`] and [`GetRevision`]; sealed.
pub trait Queued: Message + Sized + sealed::Sealed {
    /// Submits the message with its reply channel.
    #[doc(hidden)]
    fn submit(
        self,
        store: &DurableStore,
        reply: Option<OneshotSender<Self::Result>>,
    ) -> Option<Admission>;

    /// The answer to a message that could not be submitted.
    #[doc(hidden)]
    fn refused(error: Error) -> Self::Result;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::WriteState {}
    impl Sealed for crate::DeleteState {}
    impl Sealed for crate::GetLatestState {}
    impl Sealed for crate::GetRevision {}
}

impl Queued for WriteState {
    fn submit(
        self,
        store: &DurableStore,
        reply: Option<OneshotSender<Self::Result>>,
    ) -> Option<Admission> {
        store.engine().write(self.0, None, reply)
    }

    fn refused(error: Error) -> Self::Result {
        Err(error)
    }
}

impl Queued for DeleteState {
    fn submit(
        self,
        store: &DurableStore,
        reply: Option<OneshotSender<Self::Result>>,
    ) -> Option<Admission> {
        store
            .engine()
            .delete(self.persistence_id, self.version, None, reply)
    }

    fn refused(error: Error) -> Self::Result {
        Err(error)
    }
}

impl Queued for GetLatestState {
    fn submit(
        self,
        store: &DurableStore,
        reply: Option<OneshotSender<Self::Result>>,
    ) -> Option<Admission> {
        store.engine().get(self.0, ReadReply::State(reply))
    }

    fn refused(error: Error) -> Self::Result {
        Err(error)
    }
}

impl Queued for GetRevision {
    fn submit(
        self,
        store: &DurableStore,
        reply: Option<OneshotSender<Self::Result>>,
    ) -> Option<Admission> {
        store.engine().get(self.0, ReadReply::Revision(reply))
    }

    fn refused(error: Error) -> Self::Result {
        Err(error)
    }
}

impl<M: Queued + 'static> MessageResponse<DurableStoreActor, M> for Enqueue<M> {
    fn handle(self, ctx: &mut Context<DurableStoreActor>, tx: Option<OneshotSender<M::Result>>) {
        match self.store {
            Ok(store) => {
                // When the queue is full, the actor waits for room before its next message.
                if let Some(admission) = self.message.submit(&store, tx) {
                    ctx.wait(fut::wrap_future(admission));
                }
            }
            Err(error) => {
                if let Some(tx) = tx {
                    let _ = tx.send(M::refused(error));
                }
            }
        }
    }
}

impl<M: Queued + 'static> Handler<M> for DurableStoreActor
where
    Enqueue<M>: MessageResponse<DurableStoreActor, M>,
{
    type Result = Enqueue<M>;

    fn handle(&mut self, message: M, _ctx: &mut Self::Context) -> Self::Result {
        Enqueue {
            store: self.store(),
            message,
        }
    }
}

impl Handler<Ping> for DurableStoreActor {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: Ping, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.connect();
        Box::pin(async move { store.ping().await })
    }
}

impl Handler<CreateSchema> for DurableStoreActor {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: CreateSchema, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store();
        Box::pin(async move { store?.create_schema().await })
    }
}

impl Handler<PurgeDeleted> for DurableStoreActor {
    type Result = ResponseFuture<Result<u64, Error>>;

    fn handle(&mut self, msg: PurgeDeleted, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store();
        Box::pin(async move { store?.purge_deleted(msg.older_than).await })
    }
}

impl Handler<ListPersistenceIds> for DurableStoreActor {
    type Result = ResponseFuture<Result<Vec<String>, Error>>;

    fn handle(&mut self, msg: ListPersistenceIds, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store();
        Box::pin(async move {
            store?
                .list_persistence_ids(msg.after.as_deref(), msg.limit)
                .await
        })
    }
}

impl Handler<CurrentStates> for DurableStoreActor {
    type Result = ResponseFuture<Result<Vec<crate::DurableState>, Error>>;

    fn handle(&mut self, msg: CurrentStates, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store();
        Box::pin(async move {
            store?
                .current_states(msg.shard, msg.after.as_deref(), msg.limit)
                .await
        })
    }
}

impl Handler<Disconnect> for DurableStoreActor {
    type Result = ();

    fn handle(&mut self, _: Disconnect, _ctx: &mut Self::Context) {
        self.store = None;
    }
}
