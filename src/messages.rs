//! The messages a store answers: plain owned data, one command or query each.
//!
//! [`crate::DurableStoreActor`] answers all of them.

use actix::Message;

use crate::error::Error;
use crate::state::DurableState;

/// Upsert the latest state of one entity.
///
/// Replies [`WriteOutcome::Written`] when the state was stored, [`WriteOutcome::AlreadyStored`]
/// when exactly this version, payload and manifest were already stored (a retry after a lost
/// reply), and [`Error::VersionConflict`] when the version does not follow the stored one
/// (see [`crate::VersionCheck`]). On an error nothing was written, with one exception: when
/// the outcome cannot be known ([`Error::Timeout`], or a connection that broke mid-statement),
/// the write may have been applied. Sending the same state again is then safe: it is answered
/// `AlreadyStored` if it was.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<WriteOutcome, Error>")]
pub struct WriteState(pub DurableState);

/// What a successful [`WriteState`] did. (Not `non_exhaustive`: a write either changed the
/// stored state or found it already there.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The state is now the stored one.
    Written,
    /// The same version with the same payload was already stored; nothing changed.
    AlreadyStored,
}

/// Read the latest state of one entity: `Ok(None)` when it has none, otherwise the state
/// exactly as written.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<DurableState>, Error>")]
pub struct GetLatestState(pub String);

/// Check that the database answers, connecting first if the store is not connected.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Ping;

/// Create the configured schema (unless it is `public`) and table with its index, if they do not
/// exist, using the DDL of `resources/durablestore_postgres.sql`. Never done implicitly.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct CreateSchema;

/// Disconnect: an owned pool is closed (each connection closes when its current statement
/// finishes); a borrowed pool is left open for its owner. Later calls fail with
/// [`Error::NotConnected`] until a [`Ping`] connects again.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Disconnect;
