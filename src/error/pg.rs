//! [`PgError`]: a driver error without the server's DETAIL.

use std::fmt;
use std::sync::Arc;

use tokio_postgres::error::SqlState;

/// An error of tokio-postgres, as the store reports it: the SQLSTATE, severity and message of a
/// server error, or the cause of a connection failure.
///
/// It never shows the server's DETAIL, neither in `Display` nor in `Debug` nor through
/// [`source`](std::error::Error::source): for a constraint violation that is "Failing row
/// contains (…)", the state payload included, and errors end up in logs.
#[derive(Clone)]
pub struct PgError(Arc<tokio_postgres::Error>);

impl PgError {
    pub(crate) fn new(error: tokio_postgres::Error) -> Self {
        PgError(Arc::new(error))
    }

    /// The SQLSTATE the server reported, if it reported one.
    pub fn code(&self) -> Option<&SqlState> {
        self.0.code()
    }

    /// The server's primary message (no DETAIL), if this is a server error.
    pub fn message(&self) -> Option<&str> {
        self.0.as_db_error().map(|db| db.message())
    }

    /// The name of the constraint that was violated, if the server named one.
    pub fn constraint(&self) -> Option<&str> {
        self.0.as_db_error().and_then(|db| db.constraint())
    }

    /// True when the connection is closed (it broke, or the server closed it).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// True when the connection failed rather than the server refusing the statement (no
    /// SQLSTATE, or a closed connection): the statement may or may not have run.
    pub(crate) fn connection_lost(&self) -> bool {
        self.0.is_closed() || self.0.as_db_error().is_none()
    }

    /// The two-character SQLSTATE class, e.g. `"23"` for integrity constraint violations.
    pub(crate) fn class(&self) -> Option<&str> {
        self.code().and_then(|code| code.code().get(..2))
    }

    /// The underlying driver error (whose DETAIL may hold payload bytes: do not log it).
    pub(crate) fn driver(&self) -> &tokio_postgres::Error {
        &self.0
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(error: tokio_postgres::Error) -> Self {
        PgError::new(error)
    }
}

impl From<Arc<tokio_postgres::Error>> for PgError {
    fn from(error: Arc<tokio_postgres::Error>) -> Self {
        PgError(error)
    }
}

impl fmt::Display for PgError {
    /// tokio-postgres's own `Display` prints only "db error" for server errors: this prints the
    /// severity, SQLSTATE and message, or a connection error with its cause.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(
                f,
                "{} [SQLSTATE {}]: {}",
                db.severity(),
                db.code().code(),
                db.message()
            ),
            None => {
                write!(f, "{}", self.0)?;
                // The interesting part (e.g. "Connection refused") is often only in the source.
                if let Some(source) = std::error::Error::source(&*self.0) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgError")
            .field("code", &self.code().map(SqlState::code))
            .field("message", &self.to_string())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // A server error's source is its `DbError`, whose `Display` includes the DETAIL.
        if self.0.as_db_error().is_some() {
            return None;
        }
        std::error::Error::source(&*self.0)
    }
}
