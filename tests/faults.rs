//! Split brain and slow databases: racing writers on one id, locks, timeouts.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use actix::Actor;
use common::{AccountState, account, state, store_with};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    DurableState, Error, MemoryStore, StateStore, WriteOutcome, WriteState,
};
use futures_util::future::join_all;

/// `writers` writers race versions of one entity for `rounds` rounds each: read the latest,
/// write the next version. Returns (acknowledged version → writer, conflicts seen).
async fn race(store: StateStore, writers: usize, rounds: usize) -> (HashMap<u64, usize>, usize) {
    let runs = (0..writers).map(|writer| {
        let store = store.clone();
        async move {
            let mut acked = Vec::new();
            let mut conflicts = 0;
            for _ in 0..rounds {
                let latest = store.get("contested".into()).await.unwrap();
                let next = latest.map_or(0, |s| s.version_number) + 1;
                // The payload names the writer, so two writers never send identical states.
                let attempt = DurableState::new(
                    "contested",
                    next,
                    &account(&format!("w{writer}"), next as i64),
                );
                match store.write(attempt).await {
                    Ok(WriteOutcome::Written) => acked.push(next),
                    Ok(WriteOutcome::AlreadyStored) => panic!("no writer repeats a state"),
                    Err(Error::VersionConflict {
                        attempted, stored, ..
                    }) => {
                        assert_eq!(attempted, next);
                        assert!(
                            stored >= attempted,
                            "a loser sees the newer version: {stored} < {attempted}"
                        );
                        conflicts += 1;
                    }
                    Err(other) => panic!("unexpected error {other:?}"),
                }
                // Let the other writers interleave.
                tokio::task::yield_now().await;
            }
            (writer, acked, conflicts)
        }
    });
    let mut acknowledged = HashMap::new();
    let mut conflicts = 0;
    for (writer, acked, c) in join_all(runs).await {
        conflicts += c;
        for version in acked {
            let previous = acknowledged.insert(version, writer);
            assert!(
                previous.is_none(),
                "version {version} acknowledged to two writers"
            );
        }
    }
    (acknowledged, conflicts)
}

async fn check_race(store: StateStore) {
    let (acknowledged, conflicts) = race(store.clone(), 4, 750).await;
    let highest = acknowledged.keys().copied().max().unwrap();
    let stored = store.get("contested".into()).await.unwrap().unwrap();
    assert_eq!(
        stored.version_number, highest,
        "the stored version is the highest acknowledged"
    );
    let winner = acknowledged[&highest];
    assert_eq!(
        stored.decode_state::<AccountState>().unwrap().account_id,
        format!("w{winner}"),
        "and it holds the state of the writer it was acknowledged to"
    );
    // Every version from 1 to the highest was acknowledged to exactly one writer: nothing
    // acknowledged was overwritten by a stale write.
    assert_eq!(acknowledged.len() as u64, highest);
    assert!(conflicts > 0, "the writers did race");
}

#[actix::test]
async fn racing_writers_on_one_id_never_lose_an_acknowledged_write() {
    let db = TestDatabase::new().await.unwrap();
    // More connections than writers, so their statements really run concurrently.
    let store = store_with(db.config().max_connections(8));
    check_race(store.into()).await;
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn racing_writers_on_the_memory_store_behave_the_same() {
    check_race(MemoryStore::default().start().into()).await;
}

#[actix::test]
async fn a_locked_row_times_out_with_a_typed_error_and_the_pool_recovers() {
    let db = TestDatabase::new().await.unwrap();
    let timeout = Duration::from_millis(300);
    let store = store_with(db.config().max_connections(1).statement_timeout(timeout));
    store
        .send(WriteState(state("locked", 1, 1)))
        .await
        .unwrap()
        .unwrap();

    let mut holder = db.client().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!(
            "SELECT 1 FROM {}.states_store WHERE persistence_id = 'locked' FOR UPDATE",
            db.schema()
        ),
        &[],
    )
    .await
    .unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        store.send(WriteState(state("locked", 2, 2))),
    )
    .await
    .expect("bounded by the statement timeout, not hanging")
    .unwrap();
    match result {
        Err(Error::Timeout { timeout: t }) => assert_eq!(t, timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    tx.rollback().await.unwrap();

    // The same (single) connection serves the next writes: the pool recovered.
    let retry = store.send(WriteState(state("locked", 2, 2))).await.unwrap();
    assert_eq!(retry.unwrap(), WriteOutcome::Written);
    let other = store.send(WriteState(state("other", 1, 1))).await.unwrap();
    assert_eq!(other.unwrap(), WriteOutcome::Written);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn pg_sleep_in_a_trigger_times_out_and_writes_nothing() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON {schema}.states_store
                 FOR EACH ROW WHEN (NEW.persistence_id = 'slow') EXECUTE FUNCTION {schema}.slow();"
        ))
        .await
        .unwrap();
    let store = store_with(db.config().statement_timeout(Duration::from_millis(300)));
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        store.send(WriteState(state("slow", 1, 1))),
    )
    .await
    .expect("no hang")
    .unwrap();
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(result.unwrap_err().is_transient());
    assert_eq!(
        db.count_rows().await.unwrap(),
        0,
        "the cancelled statement wrote nothing"
    );
    let fine = store.send(WriteState(state("fast", 1, 1))).await.unwrap();
    assert_eq!(fine.unwrap(), WriteOutcome::Written);
    db.cleanup().await.unwrap();
}
