//! The one error type of the crate.

use std::time::Duration;

use tokio_postgres::error::SqlState;

#[cfg(feature = "serde")]
mod json;
mod pg;

#[cfg(feature = "serde")]
pub use self::json::JsonError;
pub use self::pg::PgError;

/// Everything that can go wrong in the store, in variants a caller can act on.
///
/// The variants are grouped by what a caller does about them:
/// - [`Error::VersionConflict`]: another writer got there first; reload and decide again.
/// - [`Error::PoolTimeout`], [`Error::Unavailable`], [`Error::NotConnected`]: the database
///   cannot be reached right now; retry later (see [`Error::is_transient`]).
/// - [`Error::Database`]: PostgreSQL refused the statement; [`Error::code`] tells why.
/// - [`Error::CorruptState`], [`Error::StateTypeMismatch`], [`Error::Decode`] (and
///   `Error::DecodeJson`, feature `serde`): a stored row cannot be turned into the state that
///   was asked for; retrying does not help.
/// - [`Error::InvalidInput`] and [`Error::InvalidConfig`] (and `Error::EncodeJson`, feature
///   `serde`): the caller's input is wrong; nothing was sent to the database.
///
/// No variant ever contains the connection password or state payload bytes: server errors are
/// kept as a [`PgError`], which reports the SQLSTATE and message but never the server's DETAIL
/// (for a constraint violation that is the failing row, payload included).
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
    /// was applied is unknown ([`Error::outcome_unknown`]); sending the same state again is
    /// safe (see [`crate::WriteOutcome::AlreadyStored`]).
    #[error("statement did not finish within {timeout:?}")]
    Timeout {
        /// The configured statement timeout.
        timeout: Duration,
    },

    /// Connecting to the database failed (refused, unreachable, wrong password, unknown
    /// database...). `source` is the driver's error for the most recent attempt.
    #[error("database unavailable: {source}")]
    Unavailable {
        /// The error of the most recent connection attempt.
        #[source]
        source: PgError,
    },

    /// The store was disconnected ([`crate::Disconnect`]) before the request was sent: nothing
    /// was written. Send [`crate::Ping`] to connect again.
    #[error("the durable store is not connected")]
    NotConnected,

    /// The store stopped (its actor or runtime shut down) while the request was queued or in
    /// flight. Whether a write was applied is unknown ([`Error::outcome_unknown`]).
    #[error("the durable store stopped before it answered; the outcome is unknown")]
    Interrupted,

    /// PostgreSQL (or the connection to it) failed a statement. When the connection broke
    /// mid-statement ([`PgError::is_closed`] or no SQLSTATE), the outcome is unknown.
    #[error("database error: {source}")]
    Database {
        /// The driver's error, without the server's DETAIL; [`Error::code`] classifies it.
        #[source]
        source: PgError,
    },

    /// The statement succeeded but stored nothing for this entity: a trigger or a row-level
    /// security policy on the table suppressed the row. Nothing was written.
    #[error(
        "the database did not store the state of `{persistence_id}`: a trigger or row-level policy suppressed it"
    )]
    Suppressed {
        /// The entity whose write was suppressed.
        persistence_id: String,
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

    /// The stored state is of another type than the one asked for: another protobuf type, or
    /// a JSON state where a protobuf one was asked for (or the other way round), or another
    /// JSON state name.
    #[error("stored state of `{persistence_id}` is a `{found}`, not a `{expected}`")]
    StateTypeMismatch {
        /// The entity whose state was decoded.
        persistence_id: String,
        /// The fully qualified protobuf name, or JSON state name, that was asked for.
        expected: String,
        /// The fully qualified protobuf name, or JSON state name, that is stored.
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

    /// The stored JSON does not deserialize as the requested
    /// [`JsonState`](crate::JsonState): it is not JSON, or not of that type's shape.
    #[cfg(feature = "serde")]
    #[error("stored state of `{persistence_id}` does not decode as JSON `{type_name}`: {source}")]
    DecodeJson {
        /// The entity whose state was decoded.
        persistence_id: String,
        /// The JSON state name that was asked for.
        type_name: String,
        /// What serde_json reported, without the stored JSON (see [`JsonError`]).
        #[source]
        source: JsonError,
    },

    /// A [`JsonState`](crate::JsonState) could not be serialized: its `Serialize` impl failed,
    /// or serde_json refused the value (e.g. a map whose keys are not strings). Nothing was
    /// written.
    #[cfg(feature = "serde")]
    #[error("state of `{persistence_id}` does not serialize as JSON `{type_name}`: {source}")]
    EncodeJson {
        /// The entity whose state was encoded.
        persistence_id: String,
        /// The JSON state name of the state.
        type_name: String,
        /// What serde_json reported.
        #[source]
        source: JsonError,
    },

    /// The write was fenced out: it carried the ownership epoch of a claim on the id that is no
    /// longer current, because another replica claimed the id since (`owner`), or it was
    /// released (`owner` is `None`). Nothing was written, and nothing of an older epoch ever
    /// commits after a newer claim (see
    /// [`RegistryBuilder::ownership`](crate::RegistryBuilder::ownership)). An entity answers
    /// it as [`CommandError::OwnedElsewhere`](crate::CommandError::OwnedElsewhere) and stops.
    #[error(
        "`{persistence_id}` is no longer owned by this replica (owner now: {owner:?}); nothing was written"
    )]
    NotOwner {
        /// The entity whose write was fenced out.
        persistence_id: String,
        /// The replica that owns it now, if any.
        owner: Option<String>,
    },

    /// The replica could not renew its ownership lease in time (the database was unreachable
    /// or too slow), so it stopped its entities before the lease could run out: nothing of the
    /// command was applied. Transient: once a renewal succeeds, entities start again.
    #[error("replica `{replica}` could not renew its ownership lease in time; nothing was applied")]
    LeaseLost {
        /// This replica's name.
        replica: String,
    },

    /// A [`DurableStore`](crate::DurableStore) was created outside a Tokio runtime, which its
    /// batching workers need. Create it inside `#[tokio::main]`, `#[actix::main]` or a task.
    #[error("a durable store must be created inside a Tokio runtime")]
    NoRuntime,

    /// The caller's input was rejected before anything reached the database.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),

    /// The configuration cannot be used (bad connection string, missing host, zero pool size...).
    ///
    /// Calls also fail with it when the server turns out to need another configuration: a
    /// connection pooler in transaction mode (pgBouncer) in front of it while
    /// [`Config::transaction_pooling`](crate::Config::transaction_pooling) is off. The message
    /// names the setting; nothing was written.
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
    #[error("persistence id is {len} characters long; at most {max} are allowed")]
    PersistenceIdTooLong {
        /// Its length in characters.
        len: usize,
        /// The maximum in characters.
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
    /// The `resulting_state` type URL does not end in a valid fully qualified protobuf name,
    /// and is not a JSON state name either.
    #[error("durable state of `{persistence_id}` has an invalid type URL `{type_url}`")]
    InvalidTypeUrl {
        /// The entity whose state was rejected.
        persistence_id: String,
        /// The offending type URL (truncated to 300 bytes).
        type_url: String,
    },
    /// A page size outside what a listing accepts.
    #[error("limit {limit} is out of range: 1 to {max}")]
    LimitOutOfRange {
        /// The rejected limit.
        limit: usize,
        /// The largest accepted.
        max: usize,
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
    /// A [`JsonState::NAME`](crate::JsonState::NAME) is not a valid JSON state name (see
    /// there for the rule): nothing was encoded or decoded.
    #[cfg(feature = "serde")]
    #[error("invalid JSON state name `{name}`: {reason}")]
    InvalidStateName {
        /// The rejected name (truncated to 300 bytes).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
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
            Error::Database { source } | Error::Unavailable { source } => source.code(),
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
            | Error::NotConnected
            | Error::LeaseLost { .. }
            | Error::Interrupted => true,
            Error::Database { source } => {
                source.connection_lost()
                    || source.class().is_some_and(|class| {
                        // 08: connection exception, 40: serialization failure / deadlock,
                        // 53: insufficient resources, 57: operator intervention (shutdown,
                        // query canceled by statement_timeout), 25006: read-only (a standby
                        // after failover).
                        matches!(class, "08" | "40" | "53" | "57")
                    })
                    || source.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
            }
            _ => false,
        }
    }

    /// True when a write that failed with this error may nevertheless have been applied: the
    /// statement timed out, the connection broke mid-statement, or the store stopped while the
    /// write was in flight. Every other error means nothing was written.
    ///
    /// Sending exactly the same state again is safe: it is answered
    /// [`WriteOutcome::AlreadyStored`](crate::WriteOutcome::AlreadyStored) if it was applied.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Interrupted => true,
            Error::Database { source } => source.connection_lost(),
            _ => false,
        }
    }

    pub(crate) fn database(source: tokio_postgres::Error) -> Self {
        Error::Database {
            source: PgError::new(source),
        }
    }

    pub(crate) fn unavailable(source: impl Into<PgError>) -> Self {
        Error::Unavailable {
            source: source.into(),
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
