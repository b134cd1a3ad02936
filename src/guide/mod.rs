//! The manual: one chapter per topic, each a page of this documentation.
//!
//! These modules hold no code; their examples compile as doc tests, and the ones that talk to
//! PostgreSQL are also files of `examples/` that the crate's tests run on an empty database.
//!
//! | chapter | what it covers |
//! |---|---|
//! | [`store`] | the store, its messages, the plain handle, the version rule, group commit |
//! | [`states`] | prost states, serde states, the table and its row layouts |
//! | [`entities`] | durable entities and the registry: what each guarantees, settings |
//! | [`replicas`] | several processes over one table |
//! | [`change_feed`] | every persisted state, for read models and other services |
//! | [`deleting`] | deleting, purging tombstones, listing ids and states |
//! | [`errors`] | the error enum and what to do about each variant |
//! | [`tls`] | TLS, timeouts, failover |
//! | [`pgbouncer`] | behind a pooler in transaction mode |
//! | [`citus`] | the table distributed with Citus |
//! | [`configuration`] | every setting and its default |
//! | [`metrics`] | metrics and tracing |
//! | [`testing`] | testing your entities, with or without PostgreSQL |
//! | [`design`] | where each concern lives, and the path of a `WriteState` |

#[doc = include_str!("store.md")]
pub mod store {}

#[doc = include_str!("states.md")]
pub mod states {}

#[doc = include_str!("entities.md")]
pub mod entities {}

#[doc = include_str!("replicas.md")]
pub mod replicas {}

#[doc = include_str!("change_feed.md")]
pub mod change_feed {}

#[doc = include_str!("deleting.md")]
pub mod deleting {}

#[doc = include_str!("errors.md")]
pub mod errors {}

#[doc = include_str!("tls.md")]
pub mod tls {}

#[doc = include_str!("pgbouncer.md")]
pub mod pgbouncer {}

#[doc = include_str!("citus.md")]
pub mod citus {}

#[doc = include_str!("configuration.md")]
pub mod configuration {}

#[doc = include_str!("metrics.md")]
pub mod metrics {}

#[doc = include_str!("testing.md")]
pub mod testing {}

#[doc = include_str!("design.md")]
pub mod design {}
