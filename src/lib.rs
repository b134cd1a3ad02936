//! Durable state for actix actors, kept in PostgreSQL.
//!
//! A [`DurableStoreActor`] owns (or borrows) a bb8 pool of tokio-postgres connections and keeps
//! the latest state of each entity in one row of the table `states_store`
//! (`resources/durablestore_postgres.sql`). Entity actors talk to it with typed messages:
//! [`WriteState`] (a version-checked upsert), [`GetLatestState`], [`DeleteState`],
//! [`GetRevision`], [`ListPersistenceIds`], [`CurrentStates`], [`PurgeDeleted`], [`Ping`],
//! [`CreateSchema`] and [`Disconnect`]; code without an actix system uses the same engine
//! through a [`DurableStore`] handle. [`DurableEntity`] runs a [`DurableStateBehavior`] on it,
//! and an [`EntityRegistry`] gives the entities by id: activation on first use, one live actor
//! per id, passivation when idle.
//! States are [`DurableState`] messages, wire-compatible with eGo's `ego.v1.DurableState`, and
//! rows written by eGo's Go PostgreSQL store are read as they are. The table can be distributed
//! with Citus (`resources/citus.sql`); the store then sends batches in the form Citus runs on
//! its workers in parallel ([`Distribution`]). Other processes follow the table's changes,
//! from a stored [`Offset`] and without ever skipping a commit, through the change feed
//! ([`DurableStore::changes`], opt-in: see the [`feed`] chapter).
//!
//! The manual is the [`guide`] module, one chapter per topic: [the store](guide::store),
//! [states](guide::states), [entities and the registry](guide::entities),
//! [several replicas](guide::replicas), [the change feed](guide::change_feed),
//! [deleting and listing](guide::deleting), [errors](guide::errors),
//! [TLS and failover](guide::tls), [pgBouncer](guide::pgbouncer), [Citus](guide::citus),
//! [configuration](guide::configuration), [metrics and tracing](guide::metrics),
//! [testing your entities](guide::testing) and [the design](guide::design).
//!
//! ```no_run
//! use actix::Actor;
//! use durablestore_postgres::{
//!     Config, CreateSchema, DurableState, DurableStoreActor, GetLatestState, WriteState,
//! };
//!
//! #[actix::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config: Config = "postgres://postgres@127.0.0.1:5432/postgres".parse()?;
//!     let store = DurableStoreActor::new(config.schema("quickstart"))?.start();
//!     store.send(CreateSchema).await??;
//!
//!     // Any prost message with `prost::Name` can be a state.
//!     let state = prost_types::Duration { seconds: 1, nanos: 0 };
//!     store.send(WriteState(DurableState::new("entity-1", 1, &state))).await??;
//!
//!     let latest = store.send(GetLatestState("entity-1".into())).await??;
//!     let read: prost_types::Duration = latest.expect("just written").decode_state()?;
//!     assert_eq!(read, state);
//!     Ok(())
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod behavior;
mod config;
mod engine;
mod entity;
mod error;
pub mod feed;
pub mod guide;
mod handle;
#[cfg(feature = "serde")]
mod json;
mod memory;
mod messages;
mod pool;
mod publish;
mod queue;
mod registry;
mod repository;
mod sql;
mod state;
mod store;
mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tls;
mod version;

pub use crate::behavior::harness::{BehaviorTest, Then};
pub use crate::behavior::{
    CommandError, DurableStateBehavior, Effect, EntityState, HandleCommand, HandleCommandAsync,
};
pub use crate::config::{Config, Distribution, VersionCheck};
pub use crate::entity::{
    ConflictPolicy, DurableEntity, GetState, Passivate, RecoveryPolicy, Sharding, StateStore,
};
#[cfg(feature = "serde")]
pub use crate::error::JsonError;
pub use crate::error::{Error, InvalidInput, PgError};
pub use crate::feed::{Change, ChangePage, Changes, Offset, OffsetParseError};
pub use crate::handle::DurableStore;
#[cfg(feature = "serde")]
pub use crate::json::{Json, JsonState};
pub use crate::memory::MemoryStore;
pub use crate::messages::{
    CreateSchema, CurrentStates, DeleteState, Disconnect, GetLatestState, GetRevision,
    ListPersistenceIds, Ping, PurgeDeleted, Revision, WriteOutcome, WriteState,
};
pub use crate::publish::StateChanged;
pub use crate::registry::{EntityRegistry, Ownership, RegistryBuilder, RegistryStats};
pub use crate::state::{DurableState, MAX_PERSISTENCE_ID_LEN, RowFormat};
pub use crate::store::{DurableStoreActor, Enqueue, Queued};
pub use crate::tls::{PoolTls, SslMode};

/// The DDL of the table, exactly as shipped in `resources/durablestore_postgres.sql`.
pub const DDL: &str = crate::sql::DDL;

pub use {actix, bb8, bb8_postgres, futures_util, prost, prost_types, rustls, tokio_postgres};
#[cfg(feature = "serde")]
pub use {serde, serde_json};

/// The README's examples, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing`); not an API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    use crate::state::StateRow;
    use crate::{DurableState, Error, InvalidInput};

    /// Reads a row as the store does.
    pub fn decode_row(
        persistence_id: String,
        version_number: i64,
        state_payload: Vec<u8>,
        state_manifest: String,
        timestamp: i64,
        shard_number: i64,
    ) -> Result<DurableState, Error> {
        StateRow {
            persistence_id,
            version_number,
            state_payload,
            state_manifest,
            timestamp,
            shard_number,
        }
        .decode()
    }

    /// Lays a state out as a row and reads it back, as a write then a read would.
    pub fn round_trip(state: DurableState) -> Result<DurableState, Result<InvalidInput, Error>> {
        let row = StateRow::encode(state, crate::RowFormat::default()).map_err(Ok)?;
        row.decode().map_err(Err)
    }
}
