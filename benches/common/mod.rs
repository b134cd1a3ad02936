//! Shared set-up of the benchmarks: a schema on DATABASE_URL's server, 400-byte states, and the
//! hand-written baselines the store is compared with.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, DurableState, DurableStateBehavior, Effect, HandleCommand,
};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

/// The benchmark state: about 400 bytes once encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BenchState {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub counter: i64,
    #[prost(bytes = "vec", tag = "3")]
    pub padding: Vec<u8>,
}

impl prost::Name for BenchState {
    const NAME: &'static str = "BenchState";
    const PACKAGE: &'static str = "bench.v1";
}

/// Size of the encoded state, in bytes.
pub const STATE_BYTES: usize = 400;

pub fn bench_state(id: &str, counter: i64) -> BenchState {
    let mut state = BenchState {
        id: id.to_owned(),
        counter,
        padding: Vec::new(),
    };
    let overhead = prost::Message::encoded_len(&state) + 3;
    state.padding = vec![0xab; STATE_BYTES.saturating_sub(overhead)];
    state
}

pub fn durable(id: &str, version: u64) -> DurableState {
    DurableState::new(id, version, &bench_state(id, version as i64))
}

/// Criterion settings for database benchmarks on a 2-core machine: few, long samples.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args()
}

/// A fresh schema for one benchmark (dropped when the value drops).
pub async fn database() -> TestDatabase {
    TestDatabase::new()
        .await
        .expect("a PostgreSQL server (set DATABASE_URL)")
}

/// One plain connection, as the hand-written baselines use.
pub async fn connect(db: &TestDatabase) -> Client {
    let (client, connection) = tokio_postgres::connect(db.url(), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// A bb8 pool of 4 plain connections: the seed baseline's pool, as eGo's Go store has.
pub async fn baseline_pool(
    db: &TestDatabase,
) -> bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>> {
    let manager =
        bb8_postgres::PostgresConnectionManager::new(db.url().parse().expect("url"), NoTls);
    bb8::Pool::builder()
        .max_size(4)
        .build(manager)
        .await
        .expect("pool")
}

/// The seed baseline's statement: one unchecked upsert per write, as eGo's Go store sends.
pub fn single_upsert(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.states_store \
         (persistence_id, version_number, state_payload, state_manifest, timestamp, shard_number) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (persistence_id) DO UPDATE SET version_number = EXCLUDED.version_number, \
         state_payload = EXCLUDED.state_payload, state_manifest = EXCLUDED.state_manifest, \
         timestamp = EXCLUDED.timestamp, shard_number = EXCLUDED.shard_number"
    )
}

/// Sends one unchecked single-row upsert in one round trip.
pub async fn upsert_one(client: &Client, sql: &str, id: &str, version: i64, payload: &[u8]) {
    let params: [(&(dyn ToSql + Sync), Type); 6] = [
        (&id, Type::TEXT),
        (&version, Type::INT8),
        (&payload, Type::BYTEA),
        (&"bench.v1.BenchState", Type::TEXT),
        (&0_i64, Type::INT8),
        (&0_i64, Type::INT8),
    ];
    client.query_typed(sql, &params).await.expect("upsert");
}

/// The ceiling's statement: an unchecked N-row UNNEST upsert.
pub fn unnest_upsert(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.states_store \
         (persistence_id, version_number, state_payload, state_manifest, timestamp, shard_number) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::bytea[], $4::text[], $5::int8[], $6::int8[]) \
         ON CONFLICT (persistence_id) DO UPDATE SET version_number = EXCLUDED.version_number, \
         state_payload = EXCLUDED.state_payload, state_manifest = EXCLUDED.state_manifest, \
         timestamp = EXCLUDED.timestamp, shard_number = EXCLUDED.shard_number"
    )
}

/// The store's version-checked write of an update-only batch, as `src/sql/writes.rs` builds it
/// (each row updated only over the version before its own), with its one result row.
pub fn checked_update(schema: &str) -> String {
    format!(
        r#"WITH input AS (SELECT * FROM UNNEST($1::text[], $2::int8[], $3::bytea[], $4::text[], $5::int8[], $6::int8[])
        WITH ORDINALITY AS i(persistence_id, version_number, state_payload, state_manifest, "timestamp", shard_number, ord)),
updated AS (
    UPDATE {schema}.states_store AS s SET version_number = i.version_number,
        state_payload = i.state_payload, state_manifest = i.state_manifest,
        "timestamp" = i."timestamp", shard_number = i.shard_number
    FROM input i
    WHERE i.version_number > 1 AND s.persistence_id = i.persistence_id
      AND s.version_number = i.version_number - 1
    RETURNING s.persistence_id
)
SELECT count(*), CASE WHEN count(*) < cardinality($1::text[]) THEN array_agg(persistence_id::text) END FROM updated AS written"#
    )
}

/// The parameter types of a single-row write (`$1` to `$6`).
pub const ROW_TYPES: [Type; 6] = [
    Type::TEXT,
    Type::INT8,
    Type::BYTEA,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
];

/// The parameter types of a multi-row `UNNEST` write (`$1` to `$6`).
pub const ARRAY_TYPES: [Type; 6] = [
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::BYTEA_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::INT8_ARRAY,
];

/// The store's config for a benchmark: plain TCP, as the hand-written baselines connect (a
/// connection string without `sslmode` would otherwise use TLS wherever the server offers it).
pub fn store_config(db: &TestDatabase) -> durablestore_postgres::Config {
    db.config()
        .ssl_mode(durablestore_postgres::SslMode::Disable)
}

/// A durable entity that persists a new 400-byte state on every `Bump`.
pub struct Writer {
    pub id: String,
}

impl DurableStateBehavior for Writer {
    type State = BenchState;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, actix::Message)]
#[rtype(result = "Result<u64, CommandError<()>>")]
pub struct Bump;

impl HandleCommand<Bump> for Writer {
    type Reply = u64;
    type Error = ();
    fn handle_command(
        &mut self,
        _: Bump,
        _state: &BenchState,
        version: u64,
    ) -> Result<Effect<BenchState, u64>, ()> {
        Ok(Effect::persist(
            bench_state(&self.id, version as i64 + 1),
            version + 1,
        ))
    }
}
