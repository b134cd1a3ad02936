//! What the store needs of a pooled connection, for owned and borrowed pools alike, with the
//! TLS type erased so the store is not generic.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use bb8::{ManageConnection, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::Client;

use super::cancel::{CLIENT_TIMEOUT_GRACE, Canceller};
use super::prepared::Prepared;
use crate::tls::PoolTls;

/// What the store needs of a pooled connection, whatever pool it came from.
pub(super) trait Conn: Send + Sync {
    fn client(&self) -> &Client;
    fn prepared(&self) -> Option<&Prepared>;
    /// Makes the pool drop this connection when it comes back (a no-op on borrowed pools,
    /// whose manager we do not control).
    fn mark_broken(&self);
    /// Called when the client gave up on a statement that may still be running: asks the
    /// server to cancel it, and makes sure no other statement runs on this connection while it
    /// might (a late cancel would kill that one instead).
    fn abandon(self: Box<Self>);
}

/// A connection of an owned pool: the client, its prepared statements, and the TLS connector
/// it was made with (a cancel request must use the same TLS as the connection).
///
/// Statements are prepared on first use rather than on connect, so a connection can be opened
/// before the table exists (to run `CreateSchema` on it).
pub(super) struct PreparedClient<T> {
    client: Client,
    /// `None` behind a transaction-mode pooler, where statements are sent unnamed.
    prepared: Option<Prepared>,
    broken: AtomicBool,
    tls: T,
    canceller: Canceller,
}

/// Runs `task` on the current Tokio runtime, if there is one (a connection can be dropped
/// while a runtime shuts down).
fn spawn_if_running(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

impl<T: PoolTls> Conn for PooledConnection<'static, PostgresConnectionManager<T>> {
    fn client(&self) -> &Client {
        self
    }

    fn prepared(&self) -> Option<&Prepared> {
        None
    }

    fn mark_broken(&self) {}

    fn abandon(self: Box<Self>) {
        // The pool's TLS connector is not ours to use, so the cancel request goes in plain
        // TCP: the server accepts it unless it requires TLS. Either way the connection goes
        // back to its pool only once the statement has ended: the empty query queued behind it
        // answers then (or the connection closes).
        let token = self.cancel_token();
        spawn_if_running(async move {
            let _ = tokio::time::timeout(
                CLIENT_TIMEOUT_GRACE,
                token.cancel_query(tokio_postgres::NoTls),
            )
            .await;
            let _ = self.simple_query("").await;
        });
    }
}

impl<T: PoolTls> Conn for PooledConnection<'static, OwnedManager<T>> {
    fn client(&self) -> &Client {
        &self.client
    }

    fn prepared(&self) -> Option<&Prepared> {
        self.prepared.as_ref()
    }

    fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    fn abandon(self: Box<Self>) {
        // Discarded, never reused; the cancel stops the statement (and frees its locks) on the
        // server, which would otherwise run it to the end. The connection stays open until the
        // cancel request was taken (or the grace period passed): a pooler forwards a cancel
        // request only while the connection it names is still there.
        self.mark_broken();
        spawn_if_running(async move {
            let token = self.client.cancel_token();
            let cancel = self.canceller.cancel(&token, self.tls.clone());
            match tokio::time::timeout(CLIENT_TIMEOUT_GRACE, cancel).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "durable store could not send a cancel request");
                }
                Err(elapsed) => {
                    tracing::warn!(error = %elapsed, "durable store cancel request unanswered");
                }
            }
            drop(self);
        });
    }
}

/// bb8-postgres's manager, with a statement cache per connection (unless `prepare` is off).
pub(super) struct OwnedManager<T: PoolTls> {
    manager: PostgresConnectionManager<T>,
    tls: T,
    canceller: Canceller,
    /// False behind a transaction-mode pooler: a prepared statement lives on one server
    /// connection, and the next transaction may get another one.
    prepare: bool,
}

impl<T: PoolTls> OwnedManager<T> {
    pub(super) fn new(
        pg: tokio_postgres::Config,
        tls: T,
        canceller: Canceller,
        prepare: bool,
    ) -> Self {
        OwnedManager {
            manager: PostgresConnectionManager::new(pg, tls.clone()),
            tls,
            canceller,
            prepare,
        }
    }
}

impl<T: PoolTls> ManageConnection for OwnedManager<T> {
    type Connection = PreparedClient<T>;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PreparedClient<T>, tokio_postgres::Error> {
        let client = self.manager.connect().await?;
        Ok(PreparedClient {
            client,
            prepared: self.prepare.then(Prepared::default),
            broken: AtomicBool::new(false),
            tls: self.tls.clone(),
            canceller: self.canceller.clone(),
        })
    }

    async fn is_valid(&self, conn: &mut PreparedClient<T>) -> Result<(), tokio_postgres::Error> {
        self.manager.is_valid(&mut conn.client).await
    }

    fn has_broken(&self, conn: &mut PreparedClient<T>) -> bool {
        conn.client.is_closed() || *conn.broken.get_mut()
    }
}

pub(super) type GetFuture<'a> = Pin<
    Box<dyn Future<Output = Result<Box<dyn Conn>, RunError<tokio_postgres::Error>>> + Send + 'a>,
>;

/// A bb8 pool of any TLS flavour, with the TLS type erased so the store actor is not generic.
pub(super) trait Source: Send + Sync {
    fn get(&self) -> GetFuture<'_>;
}

/// bb8's `get_owned` future, boxed with the TLS type erased. (One impl per manager: a single
/// impl generic over the manager trips rustc's check that the future is `Send`.)
macro_rules! source_for {
    ($manager:ident) => {
        impl<T: PoolTls> Source for bb8::Pool<$manager<T>> {
            fn get(&self) -> GetFuture<'_> {
                Box::pin(async move {
                    let conn = self.get_owned().await?;
                    Ok(Box::new(conn) as Box<dyn Conn>)
                })
            }
        }
    };
}

source_for!(PostgresConnectionManager);
source_for!(OwnedManager);
