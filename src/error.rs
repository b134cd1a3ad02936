//! The one error type of the crate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

/// Everything that can go wrong in the store, in variants a caller can act on.
///
/// The variants are grouped by what a caller does about them:
/// - [`Error::VersionConflict`]: another writer got there first; reload and decide again.
/// - [`Error::PoolTimeout`], [`Error::Unavailable`], [`Error::NotConnected`]: the database
///   cannot be reached right now; retry later (see [`Error::is_transient`]).
/// - [`Error::Database`]: PostgreSQL refused the statement; [`Error::code`] tells why.
/// - [`Error::CorruptState`], [`Error::StateTypeMismatch`], [`Error::Decode`]: a stored row
///   cannot be turned into the state that was asked for; retrying does not help.
/// - [`Error::InvalidInput`] and [`Error::InvalidConfig`]: the caller's input is wrong; nothing
///   was sent to the database.
///
/// No variant ever contains the connection password or state payload bytes.
///
/// `Error` is `Clone`, so one failure (e.g. of a batched statement) can be reported to every
/// caller it concerns; driver errors are shared behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A write was refused because the stored version is not the one the write builds on.
    ///
    /// Nothing was written. `stored` is the version read right after the write was refused
    /// (`0` when the id has no row); a concurrent writer may have moved it on since.
    #[error(
        "version conflict for `{persistence_id}`: attempted version {attempted}, stored version {stored}"
    )]
    VersionConflict {
        /// The entity whose write was refused.
        persistence_id: String,
        /// The version the write carried.
        attempted: u64,
        /// The version found in the table (`0`: no row).
        stored: u64,
    },

    /// No pooled connection became free within the checkout timeout, and no connection attempt
    /// failed in that time: the pool is saturated or the database is slow.
    #[error("no database connection became available within {timeout:?}")]
    PoolTimeout {
        /// The configured checkout timeout.
        timeout: Duration,
    },

    /// A statement did not finish within the configured statement timeout: the server
    /// cancelled it (SQLSTATE 57014), or did not answer at all. Whether a write that timed out
    /// was applied is unknown; sending it again is safe (see [`crate::WriteOutcome::AlreadyStored`]).
    #[error("statement did not finish within {timeout:?}")]
    Timeout {
        /// The configured statement timeout.
        timeout: Duration,
    },

    /// Connecting to the database failed (refused, unreachable, wrong password, unknown
    /// database...). `source` is the driver's error for the most recent attempt.
    #[error("database unavailable: {}", DisplayPg(source))]
    Unavailable {
        /// The error of the most recent connection attempt.
        #[source]
        source: Arc<tokio_postgres::Error>,
    },

    /// The store was disconnected ([`crate::Disconnect`] or actor stop). Send [`crate::Ping`]
    /// to connect again.
    #[error("the durable store is not connected")]
    NotConnected,

    /// PostgreSQL (or the connection to it) failed a statement.
    #[error("database error: {}", DisplayPg(source))]
    Database {
        /// The driver's error; [`Error::code`] and [`tokio_postgres::Error::as_db_error`]
        /// classify it.
        #[source]
        source: Arc<tokio_postgres::Error>,
    },

    /// A stored row cannot be read as a durable state: unknown or malformed manifest,
    /// undecodable envelope, or an out-of-range column.
    #[error("stored state of `{persistence_id}` is corrupt: {reason}")]
    CorruptState {
        /// The entity whose row is corrupt.
        persistence_id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The stored state is of another protobuf type than the one asked for.
    #[error("stored state of `{persistence_id}` is a `{found}`, not a `{expected}`")]
    StateTypeMismatch {
        /// The entity whose state was decoded.
        persistence_id: String,
        /// The fully qualified protobuf name that was asked for.
        expected: String,
        /// The fully qualified protobuf name that is stored.
        found: String,
    },

    /// The stored bytes do not decode as the requested protobuf type.
    #[error("stored state of `{persistence_id}` does not decode as `{type_name}`: {source}")]
    Decode {
        /// The entity whose state was decoded.
        persistence_id: String,
        /// The fully qualified protobuf name that was asked for.
        type_name: String,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },

    /// The caller's input was rejected before anything reached the database.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),

    /// The configuration cannot be used (bad connection string, missing host, zero pool size...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Why a message or a name was rejected. Nothing was written when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// The persistence id is the empty string.
    #[error("persistence id is empty")]
    EmptyPersistenceId,
    /// The persistence id is longer than the column allows.
    #[error("persistence id is {len} bytes long; at most {max} are allowed")]
    PersistenceIdTooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum in bytes.
        max: usize,
    },
    /// The persistence id contains a NUL character, which PostgreSQL text cannot hold.
    #[error("persistence id contains a NUL character")]
    PersistenceIdContainsNul,
    /// The state has no `resulting_state`.
    #[error("durable state of `{persistence_id}` has no resulting_state")]
    MissingState {
        /// The entity whose state was incomplete.
        persistence_id: String,
    },
    /// The `resulting_state` type URL does not end in a valid fully qualified protobuf name.
    #[error("durable state of `{persistence_id}` has an invalid type URL `{type_url}`")]
    InvalidTypeUrl {
        /// The entity whose state was rejected.
        persistence_id: String,
        /// The offending type URL (truncated to 300 bytes).
        type_url: String,
    },
    /// Versions start at 1.
    #[error("durable state of `{persistence_id}` has version 0; versions start at 1")]
    VersionZero {
        /// The entity whose state was rejected.
        persistence_id: String,
    },
    /// A number does not fit in the BIGINT column that stores it.
    #[error(
        "{field} {value} of `{persistence_id}` does not fit in BIGINT (max {})",
        i64::MAX
    )]
    OutOfRange {
        /// The entity whose state was rejected.
        persistence_id: String,
        /// Which field (`version_number` or `shard`).
        field: &'static str,
        /// The rejected value.
        value: u64,
    },
    /// The encoded state is larger than the configured maximum.
    #[error("state of `{persistence_id}` is {len} bytes; at most {max} are allowed")]
    StateTooLarge {
        /// The entity whose state was rejected.
        persistence_id: String,
        /// Its encoded size in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A schema or table name is not a plain SQL identifier.
    #[error("invalid {kind} name `{name}`: {reason}")]
    InvalidIdentifier {
        /// `schema` or `table`.
        kind: &'static str,
        /// The rejected name (truncated to 100 bytes).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// The SQLSTATE of a database error, if this is one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Database { source } => source.code(),
            Error::Unavailable { source } => source.code(),
            _ => None,
        }
    }

    /// True when retrying the same call later may succeed: the database was unreachable,
    /// saturated, or the connection broke. Version conflicts, bad input and corrupt rows are not
    /// transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::PoolTimeout { .. }
            | Error::Timeout { .. }
            | Error::Unavailable { .. }
            | Error::NotConnected => true,
            Error::Database { source } => {
                source.is_closed()
                    || source.code().is_none()
                    || source.code().is_some_and(|code| {
                        let class = code.code().get(..2).unwrap_or_default();
                        // 08: connection exception, 40: serialization failure / deadlock,
                        // 53: insufficient resources, 57: operator intervention (shutdown,
                        // query canceled by statement_timeout).
                        matches!(class, "08" | "40" | "53" | "57")
                    })
            }
            _ => false,
        }
    }

    pub(crate) fn database(source: tokio_postgres::Error) -> Self {
        Error::Database {
            source: Arc::new(source),
        }
    }
}

/// Formats a driver error with the server's SQLSTATE, message and detail: tokio-postgres's own
/// `Display` prints only "db error" for server errors.
pub(crate) struct DisplayPg<'a>(pub(crate) &'a tokio_postgres::Error);

impl fmt::Display for DisplayPg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(
                    f,
                    "{} [SQLSTATE {}]: {}",
                    db.severity(),
                    db.code().code(),
                    db.message()
                )?;
                if let Some(detail) = db.detail() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            None => {
                write!(f, "{}", self.0)?;
                // The interesting part (e.g. "Connection refused") is often only in the source.
                if let Some(source) = std::error::Error::source(self.0) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
        }
    }
}

/// Truncates `s` to at most `max` bytes on a character boundary, for error messages that echo
/// input back.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
