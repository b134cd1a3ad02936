//! [`StateStore`]: where an entity reads and writes its state.

use std::fmt;
use std::future::{Future, ready};
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Recipient};
use futures_util::FutureExt;
use futures_util::future::Either;

use crate::error::Error;
use crate::handle::DurableStore;
use crate::messages::{DeleteState, GetRevision, Revision, WriteOutcome, WriteState};
use crate::repository::Fence;
use crate::state::DurableState;

/// Where an entity reads and writes its state: a [`DurableStore`] handle (its queues are
/// reached directly, with no mailbox hop), or any actor answering [`WriteState`],
/// [`DeleteState`] and [`GetRevision`] — a [`DurableStoreActor`](crate::DurableStoreActor), a
/// [`MemoryStore`](crate::MemoryStore), or your own.
#[derive(Clone)]
pub struct StateStore(Route);

#[derive(Clone)]
enum Route {
    /// Shared: cloning a `Recipient` allocates, and an entity clones its store for every
    /// command.
    Mailbox(Arc<Recipients>),
    Direct(DurableStore),
}

struct Recipients {
    write: Recipient<WriteState>,
    delete: Recipient<DeleteState>,
    read: Recipient<GetRevision>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = match self.0 {
            Route::Mailbox(_) => "mailbox",
            Route::Direct(_) => "direct",
        };
        f.debug_struct("StateStore").field("route", &route).finish()
    }
}

impl<A> From<Addr<A>> for StateStore
where
    A: Actor + Handler<WriteState> + Handler<DeleteState> + Handler<GetRevision>,
    A::Context: ToEnvelope<A, WriteState> + ToEnvelope<A, DeleteState> + ToEnvelope<A, GetRevision>,
{
    fn from(addr: Addr<A>) -> Self {
        StateStore::from_recipients(
            addr.clone().recipient(),
            addr.clone().recipient(),
            addr.recipient(),
        )
    }
}

impl From<DurableStore> for StateStore {
    fn from(store: DurableStore) -> Self {
        StateStore(Route::Direct(store))
    }
}

impl StateStore {
    /// A store from recipients (e.g. a router in front of several stores).
    pub fn from_recipients(
        write: Recipient<WriteState>,
        delete: Recipient<DeleteState>,
        read: Recipient<GetRevision>,
    ) -> Self {
        StateStore(Route::Mailbox(Arc::new(Recipients {
            write,
            delete,
            read,
        })))
    }

    /// Writes a state. A store actor that stopped before answering reads as
    /// [`Error::Interrupted`]: the write may or may not have been applied.
    pub async fn write(&self, state: DurableState) -> Result<WriteOutcome, Error> {
        self.write_now(state, None).await
    }

    /// Submits a write now, fenced by an ownership registration if `fence` is given, and
    /// returns the wait for its answer: a small future, which holds neither the state nor the
    /// store. Only a [`DurableStore`] handle can fence; a registry with ownership refuses any
    /// other store.
    pub(crate) fn write_now(
        &self,
        state: DurableState,
        fence: Option<Fence>,
    ) -> impl Future<Output = Result<WriteOutcome, Error>> + 'static + use<> {
        match (&self.0, fence) {
            (Route::Direct(store), fence) => Either::Left(store.submit_write(state, fence)),
            (Route::Mailbox(to), None) => Either::Right(Either::Left(
                to.write
                    .send(WriteState(state))
                    .map(|sent| sent.unwrap_or(Err(Error::Interrupted))),
            )),
            (Route::Mailbox(_), Some(_)) => Either::Right(Either::Right(ready(Err(no_fence())))),
        }
    }

    /// Submits a delete now, as [`StateStore::write_now`] submits a write.
    pub(crate) fn delete_now(
        &self,
        persistence_id: String,
        version: u64,
        fence: Option<Fence>,
    ) -> impl Future<Output = Result<WriteOutcome, Error>> + 'static + use<> {
        match (&self.0, fence) {
            (Route::Direct(store), fence) => {
                Either::Left(store.submit_delete(persistence_id, version, fence))
            }
            (Route::Mailbox(to), None) => Either::Right(Either::Left(
                to.delete
                    .send(DeleteState {
                        persistence_id,
                        version,
                    })
                    .map(|sent| sent.unwrap_or(Err(Error::Interrupted))),
            )),
            (Route::Mailbox(_), Some(_)) => Either::Right(Either::Right(ready(Err(no_fence())))),
        }
    }

    /// The PostgreSQL store behind this one, if it is a [`DurableStore`] handle.
    pub(crate) fn durable(&self) -> Option<&DurableStore> {
        match &self.0 {
            Route::Direct(store) => Some(store),
            Route::Mailbox(_) => None,
        }
    }

    /// Deletes the state at `version`, as [`StateStore::write`] writes one.
    pub async fn delete(
        &self,
        persistence_id: String,
        version: u64,
    ) -> Result<WriteOutcome, Error> {
        self.delete_now(persistence_id, version, None).await
    }

    /// Reads the stored version and state; a store actor that is gone reads as
    /// [`Error::NotConnected`].
    pub async fn revision(&self, persistence_id: String) -> Result<Revision, Error> {
        match &self.0 {
            Route::Direct(store) => store.revision(persistence_id).await,
            Route::Mailbox(to) => to
                .read
                .send(GetRevision(persistence_id))
                .await
                .unwrap_or(Err(Error::NotConnected)),
        }
    }

    /// Reads the latest state (`None` when there is none or it was deleted).
    pub async fn get(&self, persistence_id: String) -> Result<Option<DurableState>, Error> {
        Ok(self.revision(persistence_id).await?.state)
    }
}

/// The error of a fenced write through a store that cannot fence.
fn no_fence() -> Error {
    Error::InvalidConfig(
        "ownership needs a DurableStore handle as the registry's store (an actor's mailbox \
         cannot carry the fence)"
            .to_owned(),
    )
}
