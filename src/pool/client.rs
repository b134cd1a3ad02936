//! A checked-out connection, and how the store's statements run on it.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Statement};

use super::conn::Conn;
use crate::error::Error;
use crate::sql::{Sql, Stmt};

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
pub(super) const CLIENT_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

impl PooledClient {
    pub(super) fn new(conn: Box<dyn Conn>, statement_timeout: Option<Duration>) -> Self {
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

/// The statements prepared on one connection, by [`Stmt`].
#[derive(Default)]
pub(super) struct Prepared {
    statements: Mutex<[Option<Statement>; Stmt::COUNT]>,
}

impl Prepared {
    pub(super) fn get(&self, which: Stmt) -> Option<Statement> {
        // A poisoned lock only means a thread panicked while assigning an Option: still valid.
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[which as usize]
            .clone()
    }

    pub(super) fn set(&self, which: Stmt, statement: Statement) {
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[which as usize] = Some(statement);
    }

    pub(super) fn clear(&self) {
        *self
            .statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Default::default();
    }
}
