//! A checked-out connection, and how the store's statements run on it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

use super::cancel::CLIENT_TIMEOUT_GRACE;
use super::conn::Conn;
use super::prepared::Prepared;
use crate::error::Error;
use crate::sql::{FEED_INSTALLED, Sql, Stmt};

/// How statements are sent on a store's connections, and how long they may take.
#[derive(Debug, Clone)]
pub(super) struct Sending {
    /// The client-side bound (plus [`CLIENT_TIMEOUT_GRACE`]); what a server-side cancel is
    /// reported as.
    pub(super) statement_timeout: Option<Duration>,
    /// `BEGIN; SET LOCAL statement_timeout = …`, sent ahead of each statement when the
    /// server-side timeout cannot be a setting of the session: behind a transaction-mode
    /// pooler, where the session is shared with other clients (see [`in_transaction`]).
    pub(super) begin: Option<Arc<str>>,
}

impl Sending {
    /// Behind a transaction-mode pooler: the statement timeout per statement, in its own
    /// transaction.
    pub(super) fn per_transaction(statement_timeout: Option<Duration>) -> Self {
        Sending {
            statement_timeout,
            begin: statement_timeout.map(|timeout| {
                format!(
                    "BEGIN; SET LOCAL statement_timeout = {}",
                    timeout.as_millis().max(1)
                )
                .into()
            }),
        }
    }

    /// The server-side timeout is a setting of the session (or none at all).
    pub(super) fn per_session(statement_timeout: Option<Duration>) -> Self {
        Sending {
            statement_timeout,
            begin: None,
        }
    }
}

/// A checked-out connection; returns to its pool when dropped.
pub(crate) struct PooledClient {
    /// `None` only while being dropped.
    conn: Option<Box<dyn Conn>>,
    sending: Sending,
    /// Set when the client gave up on a statement that may still run on the server.
    abandoned: AtomicBool,
}

impl PooledClient {
    pub(super) fn new(conn: Box<dyn Conn>, sending: Sending) -> Self {
        PooledClient {
            conn: Some(conn),
            sending,
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
        // A statement given up on may still be running: nothing more is sent on this
        // connection, which the pool then discards.
        if let Some(error) = self.abandoned_error() {
            return Err(error);
        }
        let result = match self.sending.statement_timeout {
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
            match (error.code(), self.sending.statement_timeout) {
                (Some(&SqlState::QUERY_CANCELED), Some(timeout)) => Error::Timeout { timeout },
                _ => Error::database(error),
            }
        })
    }

    /// Gives up on the statement in flight (its caller stopped waiting for it): the connection
    /// is never used again, and the statement is cancelled on the server when it is dropped.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// The error a statement on this connection gets once the client gave up on an earlier one
    /// (a client-side timeout): [`Error::Timeout`]; `None` while the connection is usable.
    pub(crate) fn abandoned_error(&self) -> Option<Error> {
        if !self.abandoned.load(Ordering::Relaxed) {
            return None;
        }
        Some(Error::Timeout {
            timeout: self.sending.statement_timeout.unwrap_or(Duration::ZERO),
        })
    }

    /// Runs SQL text with the simple query protocol (no parameters), within the timeout.
    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        let client = self.conn()?.client();
        match &self.sending.begin {
            // An empty query (a ping) has nothing for the server to time out.
            Some(begin) if !sql.is_empty() => {
                self.bounded(in_transaction(client, begin, client.batch_execute(sql)))
                    .await
            }
            _ => self.bounded(client.batch_execute(sql)).await,
        }
    }

    /// Runs one of the store's statements: prepared once per connection on an owned pool (no
    /// planning on later calls), or with `query_typed` (still one round trip) on a borrowed
    /// pool, whose connections have nowhere to keep prepared statements, and behind a
    /// transaction-mode pooler, where a prepared statement may not be there next time.
    ///
    /// A prepared statement the server no longer accepts (its result type changed after an
    /// `ALTER TABLE`, or a pooler lost it) is prepared again and the statement retried once:
    /// the server refused it before running it, so nothing was applied. A prepared statement
    /// lost again, or one whose fresh name already exists, shows a transaction-mode pooler
    /// between the store and the server: [`Error::InvalidConfig`] naming
    /// `Config::transaction_pooling`.
    ///
    /// With `Config::transaction_pooling` and a statement timeout, each statement runs in a
    /// transaction of its own that sets the timeout (see [`in_transaction`]).
    ///
    /// A write the change feed's triggers refused as unlogged ([`FEED_INSTALLED`]: the table
    /// has a feed installed since this store started, and nothing was applied) switches the
    /// store's writes to their logged form and is sent again, logged.
    pub(crate) async fn query(
        &self,
        sql: &Sql,
        which: Stmt,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        match self.query_once(sql, which, params).await {
            Err(error) if error.code().map(SqlState::code) == Some(FEED_INSTALLED) => {
                if !sql.logs() {
                    tracing::info!(
                        "the table has a change feed: this store's writes log themselves from now on"
                    );
                    sql.log_writes();
                }
                // This connection's statements were prepared unlogged.
                if let Some(prepared) = self.conn()?.prepared() {
                    prepared.clear();
                }
                self.query_once(sql, which, params).await
            }
            other => other,
        }
    }

    async fn query_once(
        &self,
        sql: &Sql,
        which: Stmt,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        let conn = self.conn()?;
        let Some(prepared) = conn.prepared() else {
            return self.query_text(sql.text(which), params).await;
        };
        match self
            .bounded(run_prepared(conn, prepared, sql, which, params))
            .await
        {
            Err(error) if shows_a_transaction_pooler(&error) => {
                Err(needs_transaction_pooling(error))
            }
            Err(error) if is_stale_statement(&error) => {
                if error.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
                    tracing::warn!(
                        %error,
                        "a prepared statement of a durable store connection is gone; is a \
                         transaction-mode pooler (pgBouncer) in front of the server? \
                         See Config::transaction_pooling"
                    );
                }
                prepared.clear();
                match self
                    .bounded(run_prepared(conn, prepared, sql, which, params))
                    .await
                {
                    Err(error)
                        if shows_a_transaction_pooler(&error)
                            || error.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) =>
                    {
                        Err(needs_transaction_pooling(error))
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Runs SQL text with parameters as an unnamed statement: one round trip, parsed and
    /// planned on each call, for a statement whose text varies or that runs once. Sent as
    /// [`PooledClient::query`] sends statements behind a transaction-mode pooler.
    pub(crate) async fn query_text(
        &self,
        text: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        let client = self.conn()?.client();
        let statement = client.query_typed(text, params);
        match self.sending.begin.as_deref() {
            Some(begin) => self.bounded(in_transaction(client, begin, statement)).await,
            None => self.bounded(statement).await,
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

/// Runs one of the store's statements under its name on this connection, preparing it first
/// if this connection has not yet.
async fn run_prepared(
    conn: &dyn Conn,
    prepared: &Prepared,
    sql: &Sql,
    which: Stmt,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let client = conn.client();
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

/// Runs `statement` in a transaction of its own, opened by `begin` (which sets the statement
/// timeout for this transaction only) and committed right after, in one round trip:
/// tokio-postgres sends a request when its future is first polled, and `biased` polls the
/// three in order, so they leave together and the server runs them one after the other.
///
/// Behind a transaction-mode pooler the transaction keeps one server connection for the three,
/// and `SET LOCAL` ends with it, so the next client of that server connection inherits nothing.
/// A statement that fails aborts the transaction, and `COMMIT` then rolls it back without an
/// error: the connection is clean again either way.
async fn in_transaction<T>(
    client: &Client,
    begin: &str,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    let (begun, result, committed) = tokio::join!(
        biased;
        client.batch_execute(begin),
        statement,
        client.batch_execute("COMMIT"),
    );
    begun?;
    let value = result?;
    committed?;
    Ok(value)
}

/// A prepared statement the server refused before running it: its cached plan's result type
/// changed (0A000, after `ALTER TABLE`) or it no longer exists (26000, behind a pooler).
fn is_stale_statement(error: &Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::FEATURE_NOT_SUPPORTED || *code == SqlState::INVALID_SQL_STATEMENT_NAME
    })
}

/// A statement name that tokio-postgres just made up (unique in this process) already exists
/// on the server (42P05): the server connection is shared with other processes, which only a
/// transaction-mode pooler does.
fn shows_a_transaction_pooler(error: &Error) -> bool {
    error.code() == Some(&SqlState::DUPLICATE_PSTATEMENT)
}

/// The error for prepared statements that a transaction-mode pooler loses or shares.
fn needs_transaction_pooling(error: Error) -> Error {
    let reason = match &error {
        Error::Database { source } => source.to_string(),
        other => other.to_string(),
    };
    Error::InvalidConfig(format!(
        "the server lost or shares this connection's prepared statements ({reason}): a \
         connection pooler in transaction mode (such as pgBouncer) is in front of it; \
         set Config::transaction_pooling(true)"
    ))
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A plain connection, with no pool behind it.
    struct Plain(Client);

    impl Conn for Plain {
        fn client(&self) -> &Client {
            &self.0
        }
        fn prepared(&self) -> Option<&Prepared> {
            None
        }
        fn mark_broken(&self) {}
        fn abandon(self: Box<Self>) {}
    }

    /// After the client gave up on a statement (the server did not cancel it in time: here it
    /// has no server-side timeout at all), the connection runs nothing more, not even a quick
    /// follow-up read.
    #[tokio::test]
    async fn a_connection_given_up_on_runs_nothing_more() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let timeout = Duration::from_millis(50);
        let pooled =
            PooledClient::new(Box::new(Plain(client)), Sending::per_session(Some(timeout)));
        assert!(matches!(
            pooled.query_text("SELECT pg_sleep(5)", &[]).await,
            Err(Error::Timeout { .. })
        ));
        assert!(matches!(
            pooled.query_text("SELECT 1", &[]).await,
            Err(Error::Timeout { .. })
        ));
        assert!(pooled.abandoned_error().is_some());
    }
}
