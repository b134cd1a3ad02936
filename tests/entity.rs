//! `DurableEntity` semantics, against the real PostgreSQL and against `MemoryStore`.
//!
//! The scenarios that need no failure injection run on both backends from one body.

#[macro_use]
mod common;

use std::time::Duration;

use actix::{Actor, Addr};
use common::bank::{Account, AccountError, Deposit, GetBalance, Withdraw};
use common::{SlowReads, account, store};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, ConflictPolicy, Disconnect, DurableEntity, DurableState, Error, MemoryStore,
    Ping, RecoveryPolicy, Sharding, StateStore,
};
use futures_util::future::join_all;

fn entity(id: &str, store: impl Into<StateStore>) -> Addr<DurableEntity<Account>> {
    DurableEntity::new(Account { id: id.into() }, store).start()
}

async fn balance(entity: &Addr<DurableEntity<Account>>) -> (i64, u64) {
    entity.send(GetBalance).await.unwrap().unwrap()
}

// ---- scenarios shared by both backends ----

async fn fresh_entity_starts_at_version_zero(store: StateStore) {
    let e = entity("fresh", store.clone());
    assert_eq!(balance(&e).await, (0, 0));
    assert_eq!(
        store.get("fresh".into()).await.unwrap(),
        None,
        "a query writes nothing"
    );
    assert_eq!(e.send(Deposit(5)).await.unwrap().unwrap(), (5, 1));
}

async fn recovers_an_existing_entity(store: StateStore) {
    let first = entity("acct", store.clone());
    first.send(Deposit(100)).await.unwrap().unwrap();
    first.send(Withdraw(30)).await.unwrap().unwrap();
    drop(first);
    let second = entity("acct", store.clone());
    assert_eq!(balance(&second).await, (70, 2));
    assert_eq!(second.send(Deposit(1)).await.unwrap().unwrap(), (71, 3));
}

async fn rejections_and_queries_write_nothing(store: StateStore) {
    let e = entity("acct", store.clone());
    e.send(Deposit(10)).await.unwrap().unwrap();
    let err = e.send(Withdraw(11)).await.unwrap().unwrap_err();
    assert!(matches!(
        err,
        CommandError::Rejected(AccountError::InsufficientFunds {
            balance: 10,
            requested: 11
        })
    ));
    balance(&e).await;
    let stored = store.get("acct".into()).await.unwrap().unwrap();
    assert_eq!(stored.version_number, 1);
}

async fn commands_during_recovery_wait(store: StateStore) {
    store
        .write(DurableState::new("slow", 1, &account("slow", 100)))
        .await
        .unwrap();
    let slow = SlowReads {
        inner: store.clone(),
        delay: Duration::from_millis(300),
    }
    .start();
    let e = entity("slow", slow);
    // Sent while the 300 ms recovery read is in flight: they must see the stored 100, in order.
    let replies = join_all([e.send(Deposit(1)), e.send(Deposit(2)), e.send(Deposit(3))]).await;
    let replies: Vec<_> = replies.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(replies, [(101, 2), (103, 3), (106, 4)]);
}

async fn two_writers_one_wins_the_other_reloads(store: StateStore) {
    let a = entity("split", store.clone());
    let b = DurableEntity::new(Account { id: "split".into() }, store.clone())
        .conflicts(ConflictPolicy::fail_fast())
        .start();
    assert_eq!(balance(&a).await, (0, 0));
    assert_eq!(balance(&b).await, (0, 0));
    assert_eq!(a.send(Deposit(10)).await.unwrap().unwrap(), (10, 1));
    let err = b.send(Deposit(99)).await.unwrap().unwrap_err();
    match err {
        CommandError::Conflict(Error::VersionConflict {
            attempted, stored, ..
        }) => {
            assert_eq!((attempted, stored), (1, 1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // B reloaded A's state and builds on it; A's write was not overwritten.
    assert_eq!(balance(&b).await, (10, 1));
    assert_eq!(b.send(Deposit(5)).await.unwrap().unwrap(), (15, 2));
    let stored = store.get("split".into()).await.unwrap().unwrap();
    assert_eq!(
        stored
            .decode_state::<common::AccountState>()
            .unwrap()
            .balance,
        15
    );
}

/// With the default policy, a command whose write conflicts is decided again on the stored
/// state: the caller sees it applied on top of the other writer's state.
async fn a_conflicting_command_is_decided_again_on_the_stored_state(store: StateStore) {
    let a = entity("again", store.clone());
    let b = entity("again", store.clone());
    assert_eq!(balance(&a).await, (0, 0));
    assert_eq!(balance(&b).await, (0, 0));
    assert_eq!(a.send(Deposit(10)).await.unwrap().unwrap(), (10, 1));
    // B still holds version 0: its first decision conflicts, the second builds on A's.
    assert_eq!(b.send(Deposit(99)).await.unwrap().unwrap(), (109, 2));
    assert_eq!(a.send(Deposit(1)).await.unwrap().unwrap(), (110, 3));
    let stored = store.get("again".into()).await.unwrap().unwrap();
    assert_eq!(stored.version_number, 3);
    assert_eq!(
        stored
            .decode_state::<common::AccountState>()
            .unwrap()
            .balance,
        110
    );
}

async fn written_states_carry_timestamp_and_shard(store: StateStore) {
    let e = DurableEntity::new(
        Account {
            id: "sharded".into(),
        },
        store.clone(),
    )
    .sharding(Sharding::Hashed { shards: 4 })
    .start();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    e.send(Deposit(1)).await.unwrap().unwrap();
    let stored = store.get("sharded".into()).await.unwrap().unwrap();
    assert_eq!(
        stored.shard,
        Sharding::Hashed { shards: 4 }.shard_of("sharded")
    );
    assert!(stored.timestamp >= before, "timestamp is the write time");
}

on_both_backends!(
    fresh_entity_starts_at_version_zero,
    recovers_an_existing_entity,
    rejections_and_queries_write_nothing,
    commands_during_recovery_wait,
    two_writers_one_wins_the_other_reloads,
    a_conflicting_command_is_decided_again_on_the_stored_state,
    written_states_carry_timestamp_and_shard,
);

// ---- failures ----

#[actix::test]
async fn failed_write_leaves_state_unchanged_postgres() {
    let (db, store) = store().await;
    let e = entity("acct", store.clone());
    e.send(Deposit(10)).await.unwrap().unwrap();

    // A trigger makes the server refuse every update: a real database failure.
    let client = db.client().await.unwrap();
    let schema = db.schema();
    client
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE ON {schema}.states_store
                 FOR EACH ROW EXECUTE FUNCTION {schema}.refuse();"
        ))
        .await
        .unwrap();
    let err = e.send(Deposit(5)).await.unwrap().unwrap_err();
    match &err {
        CommandError::Store(store_error @ Error::Database { .. }) => {
            assert!(
                store_error.to_string().contains("refused by test"),
                "{store_error}"
            );
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    assert_eq!(
        balance(&e).await,
        (10, 1),
        "in-memory state is the last persisted one"
    );

    client
        .batch_execute(&format!("DROP TRIGGER refuse ON {schema}.states_store"))
        .await
        .unwrap();
    assert_eq!(e.send(Deposit(5)).await.unwrap().unwrap(), (15, 2));
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn failed_write_leaves_state_unchanged_memory() {
    let store = MemoryStore::default().start();
    let e = entity("acct", store.clone());
    e.send(Deposit(10)).await.unwrap().unwrap();
    store.send(Disconnect).await.unwrap();
    let err = e.send(Deposit(5)).await.unwrap().unwrap_err();
    assert!(
        matches!(err, CommandError::Store(Error::NotConnected)),
        "{err:?}"
    );
    store.send(Ping).await.unwrap().unwrap();
    assert_eq!(balance(&e).await, (10, 1));
    assert_eq!(e.send(Deposit(5)).await.unwrap().unwrap(), (15, 2));
}

#[actix::test]
async fn corrupt_state_is_not_served_and_heals_when_fixed() {
    let (db, store) = store().await;
    let client = db.client().await.unwrap();
    let table = format!("{}.states_store", db.schema());
    client
        .execute(
            &format!("INSERT INTO {table} VALUES ('acct', 3, '\\xff'::bytea, 'acme.billing.AccountState', 0, 0)"),
            &[],
        )
        .await
        .unwrap();
    let e = entity("acct", store.clone());
    // Not transient: no retry loop; every command reports why, none runs on a made-up state.
    let err = e.send(Deposit(1)).await.unwrap().unwrap_err();
    assert!(
        matches!(err, CommandError::Recovery(Error::Decode { .. })),
        "{err:?}"
    );
    let err = e.send(GetBalance).await.unwrap().unwrap_err();
    assert!(matches!(err, CommandError::Recovery(_)), "{err:?}");

    // Repair the row: the next command recovers and proceeds from it.
    let good = prost::Message::encode_to_vec(&account("acct", 50));
    client
        .execute(&format!("UPDATE {table} SET state_payload = $1"), &[&good])
        .await
        .unwrap();
    assert_eq!(e.send(Deposit(1)).await.unwrap().unwrap(), (51, 4));
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn transient_recovery_failures_are_retried_with_backoff() {
    let store = MemoryStore::default().start();
    store
        .send(durablestore_postgres::WriteState(DurableState::new(
            "acct",
            1,
            &account("acct", 7),
        )))
        .await
        .unwrap()
        .unwrap();
    store.send(Disconnect).await.unwrap();
    let e = DurableEntity::new(Account { id: "acct".into() }, store.clone())
        .recovery(RecoveryPolicy {
            attempts: 20,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
        })
        .start();
    // The store comes back while the entity is retrying; the queued command then runs on the
    // recovered state.
    let command = e.send(Deposit(3));
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.send(Ping).await.unwrap().unwrap();
    assert_eq!(command.await.unwrap().unwrap(), (10, 2));
}

#[actix::test]
async fn exhausted_recovery_fails_commands_until_the_store_is_back() {
    let store = MemoryStore::default().start();
    store.send(Disconnect).await.unwrap();
    let e = DurableEntity::new(Account { id: "acct".into() }, store.clone())
        .recovery(RecoveryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        })
        .start();
    let err = e.send(Deposit(3)).await.unwrap().unwrap_err();
    assert!(
        matches!(err, CommandError::Recovery(Error::NotConnected)),
        "{err:?}"
    );
    store.send(Ping).await.unwrap().unwrap();
    assert_eq!(e.send(Deposit(3)).await.unwrap().unwrap(), (3, 1));
}

// ---- scale ----

#[actix::test]
async fn thousand_entities_ten_commands_each_end_at_the_acknowledged_versions() {
    let db = TestDatabase::new().await.unwrap();
    let store = durablestore_postgres::DurableStoreActor::new(db.config())
        .unwrap()
        .start();
    let entities: Vec<_> = (0..1000)
        .map(|i| entity(&format!("acct-{i}"), store.clone()))
        .collect();
    let runs = entities.iter().map(|e| async move {
        let mut acknowledged = 0;
        for _ in 0..10 {
            let (_, version) = e.send(Deposit(1)).await.unwrap().unwrap();
            acknowledged = version;
        }
        acknowledged
    });
    let acknowledged = join_all(runs).await;
    assert!(acknowledged.iter().all(|&v| v == 10));

    let client = db.client().await.unwrap();
    let rows = client
        .query(
            &format!(
                "SELECT version_number, count(*) FROM {}.states_store GROUP BY 1",
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "every entity at the same version");
    assert_eq!(rows[0].get::<_, i64>(0), 10);
    assert_eq!(rows[0].get::<_, i64>(1), 1000);
    db.cleanup().await.unwrap();
}
