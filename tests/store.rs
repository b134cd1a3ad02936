//! `DurableStoreActor` against the real PostgreSQL, each test in its own schema.

mod common;

use std::time::Duration;

use actix::Actor;
use common::{AccountState, account, state, store, store_with};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    Config, CreateSchema, Disconnect, DurableState, DurableStoreActor, Error, GetLatestState,
    InvalidInput, MemoryStore, Ping, StateStore, VersionCheck, WriteOutcome, WriteState,
};
use prost::Message;

#[actix::test]
async fn write_then_read_is_byte_exact() {
    let (db, store) = store().await;
    let mut written = state("acct-1", 1, 100);
    // Bytes that are not valid UTF-8 and a NUL inside the payload must survive as they are.
    let mut padded = account("acct-1", 100);
    padded.padding = vec![0, 159, 146, 150, 255, 0];
    written.resulting_state.as_mut().unwrap().value = padded.encode_to_vec();

    let outcome = store
        .send(WriteState(written.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Written);

    let read = store
        .send(GetLatestState("acct-1".into()))
        .await
        .unwrap()
        .unwrap()
        .expect("state was written");
    assert_eq!(read, written);
    assert_eq!(read.encode_to_vec(), written.encode_to_vec());
    assert_eq!(read.decode_state::<AccountState>().unwrap(), padded);

    // The row is in eGo's Go store format: the encoded `Any` under `google.protobuf.Any`.
    let row = db
        .client()
        .await
        .unwrap()
        .query_one(
            &format!(
                "SELECT state_manifest, state_payload, timestamp, shard_number FROM {}.states_store",
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "google.protobuf.Any");
    let any = prost_types::Any::decode(row.get::<_, Vec<u8>>(1).as_slice()).unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/acme.billing.AccountState"
    );
    assert_eq!(any.value, padded.encode_to_vec());
    assert_eq!(row.get::<_, i64>(2), written.timestamp);
    assert_eq!(row.get::<_, i64>(3), written.shard as i64);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn upsert_keeps_one_row_per_entity() {
    let (db, store) = store().await;
    for version in 1..=5 {
        let outcome = store
            .send(WriteState(state("acct-1", version, version as i64 * 10)))
            .await
            .unwrap();
        assert_eq!(outcome.unwrap(), WriteOutcome::Written);
    }
    assert_eq!(db.count_rows().await.unwrap(), 1);
    let latest = store
        .send(GetLatestState("acct-1".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(latest.version_number, 5);
    assert_eq!(latest.decode_state::<AccountState>().unwrap().balance, 50);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn missing_id_reads_as_none() {
    let (db, store) = store().await;
    let read = store.send(GetLatestState("nobody".into())).await.unwrap();
    assert_eq!(read.unwrap(), None);
    db.cleanup().await.unwrap();
}

fn assert_conflict(result: Result<WriteOutcome, Error>, attempted: u64, stored: u64) {
    match result {
        Err(Error::VersionConflict {
            persistence_id,
            attempted: a,
            stored: s,
        }) => {
            assert_eq!(persistence_id, "acct-1");
            assert_eq!((a, s), (attempted, stored), "attempted/stored");
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

/// The version rule, on any store: the PostgreSQL one and `MemoryStore` must agree.
async fn version_rule_on(store: StateStore) {
    let write = |s: DurableState| store.write(s);

    // A new entity starts at version 1; anything else is a conflict with "no row" (0).
    assert_conflict(write(state("acct-1", 2, 0)).await, 2, 0);
    assert_eq!(store.get("acct-1".into()).await.unwrap(), None);
    assert_eq!(
        write(state("acct-1", 1, 10)).await.unwrap(),
        WriteOutcome::Written
    );
    // The next version builds on the stored one.
    assert_eq!(
        write(state("acct-1", 2, 20)).await.unwrap(),
        WriteOutcome::Written
    );
    // Stale: version 2 again with another payload, and version 1.
    assert_conflict(write(state("acct-1", 2, 999)).await, 2, 2);
    assert_conflict(write(state("acct-1", 1, 999)).await, 1, 2);
    // Gap.
    assert_conflict(write(state("acct-1", 4, 999)).await, 4, 2);
    // Idempotent retry of exactly what is stored (even with a later timestamp).
    let retry = state("acct-1", 2, 20).with_timestamp(1);
    assert_eq!(write(retry).await.unwrap(), WriteOutcome::AlreadyStored);

    let latest = store.get("acct-1".into()).await.unwrap().unwrap();
    assert_eq!(
        latest,
        state("acct-1", 2, 20),
        "conflicts and retries changed nothing"
    );
}

#[actix::test]
async fn version_rule() {
    let (db, store) = store().await;
    version_rule_on(store.into()).await;
    assert_eq!(db.count_rows().await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn version_rule_of_memory_store_is_the_same() {
    version_rule_on(MemoryStore::default().start().into()).await;
}

#[actix::test]
async fn last_writer_wins_mode_overwrites_any_version() {
    let db = TestDatabase::new().await.unwrap();
    let store = store_with(db.config().version_check(VersionCheck::Unchecked));
    for (version, balance) in [(5, 1), (2, 2), (2, 3), (9, 4)] {
        let outcome = store
            .send(WriteState(state("acct-1", version, balance)))
            .await;
        assert_eq!(outcome.unwrap().unwrap(), WriteOutcome::Written);
    }
    let latest = store
        .send(GetLatestState("acct-1".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(latest, state("acct-1", 9, 4));
    assert_eq!(db.count_rows().await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn reads_rows_written_by_the_go_store() {
    let (db, store) = store().await;
    // eGo's Go store: manifest `google.protobuf.Any`, payload the serialized Any.
    let any = prost_types::Any {
        type_url: "type.googleapis.com/acme.billing.AccountState".into(),
        value: account("go-1", 77).encode_to_vec(),
    };
    db.client()
        .await
        .unwrap()
        .execute(
            &format!(
                "INSERT INTO {}.states_store VALUES ('go-1', 3, $1, 'google.protobuf.Any', 1690000000000, 4)",
                db.schema()
            ),
            &[&any.encode_to_vec()],
        )
        .await
        .unwrap();

    let read = store
        .send(GetLatestState("go-1".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(read.version_number, 3);
    assert_eq!(read.timestamp, 1_690_000_000_000);
    assert_eq!(read.shard, 4);
    assert_eq!(read.resulting_state, Some(any));
    assert_eq!(
        read.decode_state::<AccountState>().unwrap(),
        account("go-1", 77)
    );
    // And the next version continues from the Go store's row.
    let next = store.send(WriteState(state("go-1", 4, 78))).await.unwrap();
    assert_eq!(next.unwrap(), WriteOutcome::Written);
    db.cleanup().await.unwrap();
}

/// Corrupt rows are covered in `tests/hostile.rs`; here, a valid row of another type.
#[actix::test]
async fn a_state_of_another_type_is_a_typed_mismatch() {
    let (db, store) = store().await;
    store
        .send(WriteState(state("acct", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    let read = store
        .send(GetLatestState("acct".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match read.decode_state::<prost_types::Duration>().unwrap_err() {
        Error::StateTypeMismatch {
            persistence_id,
            expected,
            found,
        } => {
            assert_eq!(persistence_id, "acct");
            assert_eq!(expected, "google.protobuf.Duration");
            assert_eq!(found, "acme.billing.AccountState");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn invalid_input_is_rejected_and_writes_nothing() {
    let (db, store) = store().await;
    let good = state("acct-1", 1, 1);
    type Expect = fn(&InvalidInput) -> bool;
    let cases: Vec<(DurableState, Expect)> = vec![
        (
            DurableState {
                persistence_id: String::new(),
                ..good.clone()
            },
            |e| matches!(e, InvalidInput::EmptyPersistenceId),
        ),
        (
            DurableState {
                persistence_id: "x".repeat(256),
                ..good.clone()
            },
            |e| matches!(e, InvalidInput::PersistenceIdTooLong { len: 256, .. }),
        ),
        (
            DurableState {
                persistence_id: "a\0b".into(),
                ..good.clone()
            },
            |e| matches!(e, InvalidInput::PersistenceIdContainsNul),
        ),
        (
            DurableState {
                resulting_state: None,
                ..good.clone()
            },
            |e| matches!(e, InvalidInput::MissingState { .. }),
        ),
        (
            DurableState {
                version_number: 0,
                ..good.clone()
            },
            |e| matches!(e, InvalidInput::VersionZero { .. }),
        ),
        (
            DurableState {
                version_number: i64::MAX as u64 + 1,
                ..good.clone()
            },
            |e| {
                matches!(
                    e,
                    InvalidInput::OutOfRange {
                        field: "version_number",
                        ..
                    }
                )
            },
        ),
        (
            DurableState {
                version_number: u64::MAX,
                ..good.clone()
            },
            |e| {
                matches!(
                    e,
                    InvalidInput::OutOfRange {
                        field: "version_number",
                        ..
                    }
                )
            },
        ),
        (
            DurableState {
                shard: u64::MAX,
                ..good.clone()
            },
            |e| matches!(e, InvalidInput::OutOfRange { field: "shard", .. }),
        ),
        (
            {
                let mut s = good.clone();
                s.resulting_state.as_mut().unwrap().type_url = String::new();
                s
            },
            |e| matches!(e, InvalidInput::InvalidTypeUrl { .. }),
        ),
    ];
    for (input, expected) in cases {
        match store.send(WriteState(input.clone())).await.unwrap() {
            Err(Error::InvalidInput(e)) => assert!(expected(&e), "{input:?}: {e:?}"),
            other => panic!("{input:?}: expected invalid input, got {other:?}"),
        }
    }
    for id in ["", "a\0b"] {
        let read = store.send(GetLatestState(id.into())).await.unwrap();
        assert!(
            matches!(read, Err(Error::InvalidInput(_))),
            "{id:?}: {read:?}"
        );
    }
    assert_eq!(db.count_rows().await.unwrap(), 0, "nothing was written");
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn schemas_isolate_stores_on_one_database() {
    let (db_a, store_a) = store().await;
    let (db_b, store_b) = store().await;
    store_a
        .send(WriteState(state("shared-id", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    store_b
        .send(WriteState(state("shared-id", 1, 2)))
        .await
        .unwrap()
        .unwrap();
    store_b
        .send(WriteState(state("shared-id", 2, 3)))
        .await
        .unwrap()
        .unwrap();
    let a = store_a
        .send(GetLatestState("shared-id".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = store_b
        .send(GetLatestState("shared-id".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(a, state("shared-id", 1, 1));
    assert_eq!(b, state("shared-id", 2, 3));
    db_a.cleanup().await.unwrap();
    db_b.cleanup().await.unwrap();
}

#[actix::test]
async fn create_schema_is_explicit_and_idempotent() {
    let db = TestDatabase::new().await.unwrap();
    let fresh = format!("{}_new", db.schema());
    let store = store_with(db.config().schema(&fresh).table("Accounts"));
    // Nothing is created implicitly.
    let before = store.send(WriteState(state("a", 1, 1))).await.unwrap();
    assert_eq!(
        before.unwrap_err().code().map(|c| c.code()),
        Some("42P01"),
        "no such table"
    );
    assert!(!db.schema_exists(&fresh).await.unwrap());

    store.send(CreateSchema).await.unwrap().unwrap();
    store.send(CreateSchema).await.unwrap().unwrap();
    assert!(db.schema_exists(&fresh).await.unwrap());
    store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    let client = db.client().await.unwrap();
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {fresh}.\"Accounts\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    // eGo's current table: the primary key is the only index, and pages keep room for HOT
    // updates.
    let (indexes, options) = table_layout(&client, &fresh, "Accounts").await;
    assert_eq!(indexes, ["Accounts_pkey"]);
    assert!(
        options.iter().any(|o| o.starts_with("fillfactor=")),
        "{options:?}"
    );
    client
        .batch_execute(&format!("DROP SCHEMA {fresh} CASCADE"))
        .await
        .unwrap();
    db.cleanup().await.unwrap();
}

/// The names of `table`'s indexes, sorted, and its storage parameters.
async fn table_layout(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
) -> (Vec<String>, Vec<String>) {
    let indexes = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 \
             ORDER BY indexname",
            &[&schema, &table],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let options: Option<Vec<String>> = client
        .query_one(
            "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .unwrap()
        .get(0);
    (indexes, options.unwrap_or_default())
}

#[actix::test]
async fn create_schema_leaves_a_table_made_by_the_old_ddl_as_it_is() {
    // The table as eGo and this crate created it before the version index was dropped.
    let db = TestDatabase::new().await.unwrap();
    let client = db.client().await.unwrap();
    let schema = db.schema();
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.legacy (
                persistence_id VARCHAR(255) PRIMARY KEY,
                version_number BIGINT       NOT NULL,
                state_payload  BYTEA        NOT NULL,
                state_manifest VARCHAR(255) NOT NULL,
                timestamp      BIGINT       NOT NULL,
                shard_number   BIGINT       NOT NULL
            );
            CREATE INDEX idx_legacy_version_number ON {schema}.legacy (version_number);"
        ))
        .await
        .unwrap();
    let store = store_with(db.config().table("legacy"));
    store.send(CreateSchema).await.unwrap().unwrap();
    for version in 1..=3 {
        let outcome = store
            .send(WriteState(state("a", version, version as i64)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Written);
    }
    let read = store
        .send(GetLatestState("a".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, Some(state("a", 3, 3)));
    // Neither the index nor the storage parameters were touched.
    let (indexes, options) = table_layout(&client, schema, "legacy").await;
    assert_eq!(indexes, ["idx_legacy_version_number", "legacy_pkey"]);
    assert!(options.is_empty(), "{options:?}");
    db.cleanup().await.unwrap();
}

/// Connections to the server opened under `application_name`.
async fn backends(db: &TestDatabase, application_name: &str) -> i64 {
    db.client()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls until the server has closed every backend of `application_name` (closing is
/// asynchronous on the server side); gives up after 10 s.
async fn wait_for_no_backends(db: &TestDatabase, application_name: &str) -> i64 {
    let mut count = backends(db, application_name).await;
    for _ in 0..100 {
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        count = backends(db, application_name).await;
    }
    count
}

#[actix::test]
async fn owned_pool_is_closed_on_disconnect_and_stop() {
    let db = TestDatabase::new().await.unwrap();
    let app = format!("owned-{}", db.schema());
    let store = store_with(db.config().application_name(&app).max_connections(2));
    store.send(Ping).await.unwrap().unwrap();
    assert_eq!(backends(&db, &app).await, 1);

    store.send(Disconnect).await.unwrap();
    assert_eq!(wait_for_no_backends(&db, &app).await, 0);
    let after = store.send(WriteState(state("a", 1, 1))).await.unwrap();
    assert!(matches!(after, Err(Error::NotConnected)), "{after:?}");

    // Ping connects again, like eGo's Ping.
    store.send(Ping).await.unwrap().unwrap();
    store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backends(&db, &app).await, 1);

    // Stopping the actor (here: its last address dropped) closes the pool too.
    drop(store);
    assert_eq!(wait_for_no_backends(&db, &app).await, 0);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn borrowed_pool_stays_open_for_its_owner() {
    let db = TestDatabase::new().await.unwrap();
    let app = format!("borrowed-{}", db.schema());
    let mut pg: tokio_postgres::Config = db.url().parse().unwrap();
    pg.application_name(&app);
    let manager = bb8_postgres::PostgresConnectionManager::new(pg, tokio_postgres::NoTls);
    let pool = bb8::Pool::builder()
        .max_size(2)
        .build(manager)
        .await
        .unwrap();

    let store = DurableStoreActor::with_pool(pool.clone(), db.config())
        .unwrap()
        .start();
    store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    store.send(Disconnect).await.unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The caller's pool still works, with its connection still open.
    let conn = pool.get().await.unwrap();
    conn.simple_query("").await.unwrap();
    assert!(backends(&db, &app).await >= 1);
    drop(conn);
    drop(pool);
    assert_eq!(wait_for_no_backends(&db, &app).await, 0);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn unknown_role_fails_fast_with_the_servers_reason() {
    let db = TestDatabase::new().await.unwrap();
    let mut pg: tokio_postgres::Config = db.url().parse().unwrap();
    pg.user("no_such_role_for_durablestore").password("hunter2");
    let config = Config::from_pg_config(pg)
        .schema(db.schema())
        .checkout_timeout(Duration::from_secs(5));
    let store = DurableStoreActor::new(config).unwrap().start();
    let result = tokio::time::timeout(Duration::from_secs(30), store.send(Ping))
        .await
        .expect("no hang")
        .unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    let text = err.to_string();
    assert!(text.contains("no_such_role_for_durablestore"), "{text}");
    assert!(!text.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn unknown_database_fails_fast() {
    let db = TestDatabase::new().await.unwrap();
    let mut pg: tokio_postgres::Config = db.url().parse().unwrap();
    pg.dbname("no_such_database_for_durablestore");
    let store = DurableStoreActor::new(Config::from_pg_config(pg))
        .unwrap()
        .start();
    let err = tokio::time::timeout(Duration::from_secs(30), store.send(Ping))
        .await
        .expect("no hang")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn unreachable_host_fails_within_the_checkout_timeout() {
    // Port 1 on loopback: nothing listens, so every attempt is refused.
    let config = Config::new("127.0.0.1", 1, "postgres", "", "postgres")
        .checkout_timeout(Duration::from_millis(1500));
    let store = DurableStoreActor::new(config).unwrap().start();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        store.send(WriteState(state("a", 1, 1))),
    )
    .await
    .expect("no hang")
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("refused"), "{err}");
}

#[actix::test]
async fn concurrent_writes_from_200_ids_all_land() {
    let (db, store) = store().await;
    let sends: Vec<_> = (0..200)
        .map(|i| store.send(WriteState(state(&format!("acct-{i}"), 1, i))))
        .collect();
    for result in futures_util::future::join_all(sends).await {
        assert_eq!(result.unwrap().unwrap(), WriteOutcome::Written);
    }
    assert_eq!(db.count_rows().await.unwrap(), 200);
    for i in [0, 99, 199] {
        let read = store
            .send(GetLatestState(format!("acct-{i}")))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            read.decode_state::<AccountState>().unwrap().balance,
            i as i64
        );
    }
    db.cleanup().await.unwrap();
}
