//! The connection pool behind a store: an owned bb8 pool built from a [`Config`], or a caller's
//! pool, behind one checkout that reports *why* no connection could be had.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8::{ErrorSink, ManageConnection, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Socket, Statement};

use crate::config::Config;
use crate::error::{Error, PgError};
use crate::sql::{Sql, Stmt};
use crate::tls;

/// A checked-out connection; returns to its pool when dropped.
pub(crate) struct PooledClient {
    /// `None` only while being dropped.
    conn: Option<Box<dyn Conn>>,
    statement_timeout: Option<Duration>,
    /// Set when the client gave up on a statement that may still run on the server.
    abandoned: AtomicBool,
}

/// How long the client waits beyond the statement timeout for the server to cancel a statement
/// before it gives up on the connection itself.
const CLIENT_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

impl PooledClient {
    fn new(conn: Box<dyn Conn>, statement_timeout: Option<Duration>) -> Self {
        PooledClient {
            conn: Some(conn),
            statement_timeout,
            abandoned: AtomicBool::new(false),
        }
    }

    fn conn(&self) -> Result<&dyn Conn, Error> {
        self.conn.as_deref().ok_or(Error::Interrupted)
    }

    /// Runs `work` on the connection within the statement timeout (plus a grace period for the
    /// server to cancel it itself). On expiry the statement is cancelled and the connection is
    /// never used for another statement (see [`Conn::abandon`]). A failure that leaves the
    /// connection unusable or pointing at the wrong server (see [`breaks_connection`]) marks it
    /// broken, so the pool opens a new one.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        let conn = self.conn()?;
        let result = match self.statement_timeout {
            None => work.await,
            Some(timeout) => {
                match tokio::time::timeout(timeout.saturating_add(CLIENT_TIMEOUT_GRACE), work).await
                {
                    Ok(result) => result,
                    Err(_) => {
                        // The server did not cancel by itself (frozen, partitioned): `Drop`
                        // hands the connection to `Conn::abandon`.
                        self.abandoned.store(true, Ordering::Relaxed);
                        return Err(Error::Timeout { timeout });
                    }
                }
            }
        };
        result.map_err(|error| {
            if breaks_connection(&error) {
                conn.mark_broken();
            }
            match (error.code(), self.statement_timeout) {
                (Some(&SqlState::QUERY_CANCELED), Some(timeout)) => Error::Timeout { timeout },
                _ => Error::database(error),
            }
        })
    }

    /// Runs SQL text with the simple query protocol (no parameters), within the timeout.
    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.bounded(self.conn()?.client().batch_execute(sql)).await
    }

    /// Runs one of the store's statements: prepared once per connection on an owned pool (no
    /// planning on later calls), or with `query_typed` (still one round trip) on a borrowed
    /// pool, whose connections have nowhere to keep prepared statements.
    ///
    /// A prepared statement the server no longer accepts (its result type changed after an
    /// `ALTER TABLE`, or a pooler lost it) is prepared again and the statement retried once:
    /// the server refused it before running it, so nothing was applied.
    pub(crate) async fn query(
        &self,
        sql: &Sql,
        which: Stmt,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        let conn = self.conn()?;
        match self.bounded(query_on(conn, sql, which, params)).await {
            Err(error) if is_stale_statement(&error) => {
                if let Some(prepared) = conn.prepared() {
                    prepared.clear();
                }
                self.bounded(query_on(conn, sql, which, params)).await
            }
            other => other,
        }
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if *self.abandoned.get_mut() {
            if let Some(conn) = self.conn.take() {
                conn.abandon();
            }
        }
    }
}

async fn query_on(
    conn: &dyn Conn,
    sql: &Sql,
    which: Stmt,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let client = conn.client();
    let Some(prepared) = conn.prepared() else {
        return client.query_typed(sql.text(which), params).await;
    };
    let statement = match prepared.get(which) {
        Some(statement) => statement,
        None => {
            let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
            let statement = client.prepare_typed(sql.text(which), &types).await?;
            prepared.set(which, statement.clone());
            statement
        }
    };
    let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
    client.query(&statement, &values).await
}

/// Errors after which a connection must not be reused: it is closed or broke (no SQLSTATE,
/// class 08), the server is shutting it down (57P01-03), or it is read-only (25006: an old
/// primary after a failover, where the pool must reconnect to find the new one).
fn breaks_connection(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let Some(code) = error.code() else {
        return true;
    };
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ]
        .contains(code)
}

/// A prepared statement the server refused before running it: its cached plan's result type
/// changed (0A000, after `ALTER TABLE`) or it no longer exists (26000, behind a pooler).
fn is_stale_statement(error: &Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::FEATURE_NOT_SUPPORTED || *code == SqlState::INVALID_SQL_STATEMENT_NAME
    })
}

/// What the store needs of a pooled connection, whatever pool it came from.
trait Conn: Send + Sync {
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
struct PreparedClient<T> {
    client: Client,
    prepared: Prepared,
    broken: AtomicBool,
    tls: T,
}

/// The statements prepared on one connection, by [`Stmt`].
#[derive(Default)]
struct Prepared {
    statements: Mutex<[Option<Statement>; Stmt::COUNT]>,
}

impl Prepared {
    fn get(&self, which: Stmt) -> Option<Statement> {
        // A poisoned lock only means a thread panicked while assigning an Option: still valid.
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[which as usize]
            .clone()
    }

    fn set(&self, which: Stmt, statement: Statement) {
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[which as usize] = Some(statement);
    }

    fn clear(&self) {
        *self
            .statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Default::default();
    }
}

/// Runs `task` on the current Tokio runtime, if there is one (a connection can be dropped
/// while a runtime shuts down).
fn spawn_if_running(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

impl<T> Conn for PooledConnection<'static, PostgresConnectionManager<T>>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
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

impl<T> Conn for PooledConnection<'static, OwnedManager<T>>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn client(&self) -> &Client {
        &self.client
    }

    fn prepared(&self) -> Option<&Prepared> {
        Some(&self.prepared)
    }

    fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    fn abandon(self: Box<Self>) {
        // Discarded, never reused; the cancel stops the statement (and frees its locks) on the
        // server, which would otherwise run it to the end.
        self.mark_broken();
        let token = self.client.cancel_token();
        let tls = self.tls.clone();
        spawn_if_running(async move {
            if let Err(error) =
                tokio::time::timeout(CLIENT_TIMEOUT_GRACE, token.cancel_query(tls)).await
            {
                tracing::warn!(%error, "durable store could not send a cancel request");
            }
        });
    }
}

/// bb8-postgres's manager, with a statement cache per connection.
struct OwnedManager<T: MakeTlsConnect<Socket>> {
    manager: PostgresConnectionManager<T>,
    tls: T,
}

impl<T> ManageConnection for OwnedManager<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Connection = PreparedClient<T>;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PreparedClient<T>, tokio_postgres::Error> {
        let client = self.manager.connect().await?;
        Ok(PreparedClient {
            client,
            prepared: Prepared::default(),
            broken: AtomicBool::new(false),
            tls: self.tls.clone(),
        })
    }

    async fn is_valid(&self, conn: &mut PreparedClient<T>) -> Result<(), tokio_postgres::Error> {
        self.manager.is_valid(&mut conn.client).await
    }

    fn has_broken(&self, conn: &mut PreparedClient<T>) -> bool {
        conn.client.is_closed() || *conn.broken.get_mut()
    }
}

type GetFuture<'a> = Pin<
    Box<dyn Future<Output = Result<Box<dyn Conn>, RunError<tokio_postgres::Error>>> + Send + 'a>,
>;

/// A bb8 pool of any TLS flavour, with the TLS type erased so the store actor is not generic.
trait Source: Send + Sync {
    fn get(&self) -> GetFuture<'_>;
}

/// bb8's `get_owned` future, boxed with the TLS type erased. (One impl per manager: a single
/// impl generic over the manager trips rustc's check that the future is `Send`.)
macro_rules! source_for {
    ($manager:ident) => {
        impl<T> Source for bb8::Pool<$manager<T>>
        where
            T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
            T::Stream: Send + Sync,
            T::TlsConnect: Send,
            <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
        {
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

/// Where a store's connections come from.
#[derive(Clone)]
pub(crate) struct Connections {
    source: Arc<dyn Source>,
    /// Connection errors of an owned pool; a borrowed pool's errors go to its own sink.
    errors: Option<ConnectErrors>,
    checkout_timeout: Duration,
    statement_timeout: Option<Duration>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("owned", &self.errors.is_some())
            .field("checkout_timeout", &self.checkout_timeout)
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// Builds an owned pool from `config`. Opens no connection: the first checkout does (or the
    /// pool's housekeeping, when `min_idle_connections > 0`). Must run inside a Tokio runtime.
    pub(crate) fn build(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let errors = ConnectErrors::default();
        let mut pg = config.pg.clone();
        if let Some(timeout) = config.statement_timeout {
            // Set at connection start: no extra round trip, and it holds for every statement.
            let options = format!(
                "{} -c statement_timeout={}",
                pg.get_options().unwrap_or_default(),
                timeout.as_millis().max(1)
            );
            pg.options(options.trim_start());
        }
        pg.ssl_mode(config.ssl_mode.negotiation());
        let source: Arc<dyn Source> = match tls::connector(config)? {
            None => Arc::new(owned_pool(config, &errors, pg, tokio_postgres::NoTls)),
            Some(tls) => Arc::new(owned_pool(config, &errors, pg, tls)),
        };
        Ok(Connections {
            source,
            errors: Some(errors),
            checkout_timeout: config.checkout_timeout,
            statement_timeout: config.statement_timeout,
        })
    }

    /// Uses a caller's pool; the caller keeps ownership and its settings.
    ///
    /// The server-side statement timeout is the pool's business (its connection options); the
    /// client-side bound of `statement_timeout` still applies.
    pub(crate) fn borrow<T>(
        pool: bb8::Pool<PostgresConnectionManager<T>>,
        statement_timeout: Option<Duration>,
    ) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        Connections {
            checkout_timeout: pool.config().connection_timeout,
            source: Arc::new(pool),
            errors: None,
            statement_timeout,
        }
    }

    /// Checks out a connection.
    ///
    /// # Errors
    /// - [`Error::Unavailable`] as soon as a connection attempt fails for a reason waiting won't
    ///   fix (authentication, unknown database), or at the timeout when attempts failed meanwhile;
    /// - [`Error::PoolTimeout`] at the timeout when no attempt failed (all connections busy).
    pub(crate) async fn get(&self) -> Result<PooledClient, Error> {
        let started = Instant::now();
        let fatal = async {
            match &self.errors {
                Some(errors) => errors.fatal_since(started).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = tokio::time::timeout(self.checkout_timeout, self.live()) => match result.unwrap_or(Err(RunError::TimedOut)) {
                Ok(conn) => Ok(PooledClient::new(conn, self.statement_timeout)),
                Err(RunError::User(source)) => Err(Error::unavailable(source)),
                Err(RunError::TimedOut) => Err(match self.errors.as_ref().and_then(|e| e.latest_since(started)) {
                    Some(source) => Error::unavailable(source),
                    None => Error::PoolTimeout { timeout: self.checkout_timeout },
                }),
            },
            source = fatal => Err(Error::unavailable(source)),
        }
    }
}

impl Connections {
    /// A pooled connection that is not known to be closed. bb8 checks for broken connections
    /// only when they come back; an idle one whose server went away (a restart) would fail the
    /// next statement. `is_closed` costs no round trip, so closed ones are discarded here.
    async fn live(&self) -> Result<Box<dyn Conn>, RunError<tokio_postgres::Error>> {
        loop {
            let conn = self.source.get().await?;
            if !conn.client().is_closed() {
                return Ok(conn);
            }
            conn.mark_broken();
        }
    }
}

/// The owned bb8 pool for `config`, over connections made with `tls`.
fn owned_pool<T>(
    config: &Config,
    errors: &ConnectErrors,
    pg: tokio_postgres::Config,
    tls: T,
) -> bb8::Pool<OwnedManager<T>>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    bb8::Pool::builder()
        .max_size(config.max_connections)
        .min_idle(Some(config.min_idle_connections).filter(|&n| n > 0))
        .max_lifetime(nonzero(config.max_connection_lifetime))
        .idle_timeout(nonzero(config.max_connection_idle_time))
        .reaper_rate(config.health_check_period)
        .connection_timeout(config.checkout_timeout)
        // A round trip per checkout would double the latency of every write; a dead
        // connection is caught by `Client::is_closed` instead (on checkout and return).
        .test_on_check_out(false)
        .error_sink(Box::new(errors.clone()))
        .build_unchecked(OwnedManager {
            manager: PostgresConnectionManager::new(pg, tls.clone()),
            tls,
        })
}

/// bb8's error sink for an owned pool: bb8 reports connection failures only here (its `get`
/// only ever says "timed out"), so the last one is kept to explain a failed checkout.
#[derive(Clone, Default)]
struct ConnectErrors {
    inner: Arc<ErrorsInner>,
}

#[derive(Default)]
struct ErrorsInner {
    last: Mutex<Option<(Instant, PgError)>>,
    fatal: Notify,
}

impl std::fmt::Debug for ConnectErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectErrors")
    }
}

impl ConnectErrors {
    fn last(&self) -> Option<(Instant, PgError)> {
        // A poisoned lock only means another thread panicked mid-assignment of an Option;
        // the value is still a valid Option.
        self.inner
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn latest_since(&self, since: Instant) -> Option<PgError> {
        self.last()
            .filter(|(at, _)| *at >= since)
            .map(|(_, error)| error)
    }

    /// Resolves with the first non-retryable connection error recorded at or after `since`.
    async fn fatal_since(&self, since: Instant) -> PgError {
        loop {
            let notified = self.inner.fatal.notified();
            tokio::pin!(notified);
            // Register before checking, so an error recorded in between is not missed.
            notified.as_mut().enable();
            if let Some(error) = self.latest_since(since).filter(|e| is_fatal(e.driver())) {
                return error;
            }
            notified.await;
        }
    }
}

/// Connection errors that retrying within the checkout timeout cannot fix.
fn is_fatal(error: &tokio_postgres::Error) -> bool {
    let refused = error.code().is_some_and(|code| {
        let code = code.code();
        // 28: invalid authorization (wrong password, no pg_hba entry); 3D000: no such database.
        code.starts_with("28") || code == "3D000"
    });
    refused || is_bad_certificate(error)
}

/// A certificate that does not verify will not verify on the next try either. rustls's error
/// reaches us wrapped in an `io::Error`, whose `source()` skips it, so `get_ref` is checked too.
fn is_bad_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        let wrapped = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(current), wrapped].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(_)) = candidate.downcast_ref() {
                return true;
            }
        }
        cause = current.source();
    }
    false
}

impl ErrorSink<tokio_postgres::Error> for ConnectErrors {
    fn sink(&self, error: tokio_postgres::Error) {
        let error = PgError::new(error);
        tracing::warn!(%error, "durable store connection attempt failed");
        let fatal = is_fatal(error.driver());
        *self
            .inner
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Instant::now(), error));
        if fatal {
            self.inner.fatal.notify_waiters();
        }
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}
