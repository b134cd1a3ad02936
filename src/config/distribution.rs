//! Whether the table is distributed by Citus, as a setting.

/// Whether the table is a Citus distributed table, which decides the statements that
/// group-committed writes are sent as (see [`Config::distribution`](crate::Config::distribution)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Distribution {
    /// Asks the server once, on the store's first batch: Citus when the `citus` extension is
    /// installed in the database (`pg_extension`), a single server otherwise. This is the
    /// default.
    #[default]
    Detect,
    /// One PostgreSQL server (or a primary with replicas): a batch of writes is one statement
    /// over arrays (`UNNEST`), planned once per connection.
    SingleServer,
    /// A Citus cluster with the table distributed by `persistence_id`: a batch of writes is
    /// one multi-row `INSERT … VALUES … ON CONFLICT`, which Citus splits by shard and runs on
    /// the workers in parallel, and a batch of reads is one single-shard read per shard (see
    /// the guide's [Citus](crate::guide::citus) chapter). It is correct on a single server
    /// too, but slower there: in `examples/perf.rs` about a third fewer writes per second than
    /// the array form. For a table the coordinator keeps local, set
    /// [`Distribution::SingleServer`].
    Citus,
}
