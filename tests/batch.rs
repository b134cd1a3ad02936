//! Group commit: a batch of mixed writes behaves exactly like the same writes sent one by one.

mod common;

use std::time::Duration;

use common::{state, store_with};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    DurableState, Error, GetLatestState, InvalidInput, WriteOutcome, WriteState,
};
use futures_util::future::join_all;

/// What a write must answer.
#[derive(Debug)]
enum Expect {
    Written,
    AlreadyStored,
    Conflict { stored: u64 },
    Invalid,
    Refused,
}

fn check(label: &str, result: &Result<WriteOutcome, Error>, expect: &Expect) {
    let ok = match (result, expect) {
        (Ok(WriteOutcome::Written), Expect::Written) => true,
        (Ok(WriteOutcome::AlreadyStored), Expect::AlreadyStored) => true,
        (Err(Error::VersionConflict { stored, .. }), Expect::Conflict { stored: s }) => stored == s,
        (Err(Error::InvalidInput(_)), Expect::Invalid) => true,
        (Err(e @ Error::Database { .. }), Expect::Refused) => e.to_string().contains("poison"),
        _ => false,
    };
    assert!(ok, "{label}: expected {expect:?}, got {result:?}");
}

#[actix::test]
async fn a_mixed_batch_answers_each_write_as_if_sent_alone() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    // One connection: while it is busy, every other write queues and they go out together.
    let store = store_with(db.config().max_connections(1));

    // Stored before the batch: `existing` at 1, `ahead` at 3, `retry` at 2.
    for s in [
        state("existing", 1, 1),
        state("ahead", 1, 1),
        state("ahead", 2, 2),
    ] {
        store.send(WriteState(s)).await.unwrap().unwrap();
    }
    for s in [
        state("ahead", 3, 3),
        state("retry", 1, 1),
        state("retry", 2, 2),
    ] {
        store.send(WriteState(s)).await.unwrap().unwrap();
    }
    // The server refuses any row for `poison`: a bad row only the database can detect.
    let admin = db.client().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.poison() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'poison row refused'; END $$;
             CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON {schema}.states_store
                 FOR EACH ROW WHEN (NEW.persistence_id = 'poison') EXECUTE FUNCTION {schema}.poison();"
        ))
        .await
        .unwrap();

    // Hold the table so the first write blocks on the only connection.
    let mut blocker = db.client().await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute(&format!(
        "LOCK TABLE {schema}.states_store IN EXCLUSIVE MODE"
    ))
    .await
    .unwrap();

    let writes: Vec<(&str, DurableState, Expect)> = vec![
        (
            "first, blocked alone",
            state("first", 1, 0),
            Expect::Written,
        ),
        ("new id", state("fresh", 1, 1), Expect::Written),
        (
            "new id not at 1",
            state("nobody", 2, 1),
            Expect::Conflict { stored: 0 },
        ),
        ("next version", state("existing", 2, 2), Expect::Written),
        (
            "stale",
            state("ahead", 2, 9),
            Expect::Conflict { stored: 3 },
        ),
        ("gap", state("ahead", 5, 9), Expect::Conflict { stored: 3 }),
        (
            "idempotent retry",
            state("retry", 2, 2),
            Expect::AlreadyStored,
        ),
        ("dup 1/3", state("dup", 1, 1), Expect::Written),
        ("poison", state("poison", 1, 1), Expect::Refused),
        ("dup 2/3", state("dup", 2, 2), Expect::Written),
        ("invalid", state("", 1, 1), Expect::Invalid),
        ("dup 3/3", state("dup", 3, 3), Expect::Written),
        ("dup retry of 3", state("dup", 3, 3), Expect::AlreadyStored),
        ("race 1", state("race", 1, 1), Expect::Written),
        (
            "race 1 again, other payload",
            state("race", 1, 2),
            Expect::Conflict { stored: 1 },
        ),
        ("race 2", state("race", 2, 2), Expect::Written),
    ];
    let sends: Vec<_> = writes
        .iter()
        .map(|(_, s, _)| store.send(WriteState(s.clone())))
        .collect();
    let all = join_all(sends);
    let release = async {
        // Give every write time to queue behind the blocked first one, then let go.
        tokio::time::sleep(Duration::from_millis(300)).await;
        lock.rollback().await.unwrap();
    };
    let (results, ()) = tokio::join!(all, release);

    for ((label, _, expect), result) in writes.iter().zip(&results) {
        check(label, result.as_ref().unwrap(), expect);
    }
    let get = |id: &str| store.send(GetLatestState(id.into()));
    let version = |s: Option<DurableState>| s.map(|s| s.version_number);
    assert_eq!(version(get("dup").await.unwrap().unwrap()), Some(3));
    assert_eq!(version(get("race").await.unwrap().unwrap()), Some(2));
    assert_eq!(version(get("ahead").await.unwrap().unwrap()), Some(3));
    assert_eq!(version(get("nobody").await.unwrap().unwrap()), None);
    assert_eq!(version(get("poison").await.unwrap().unwrap()), None);
    assert_eq!(
        get("race").await.unwrap().unwrap().unwrap(),
        state("race", 2, 2)
    );
    // first, fresh, existing, ahead, retry, dup, race
    assert_eq!(db.count_rows().await.unwrap(), 7);
    assert!(matches!(
        results[10].as_ref().unwrap(),
        Err(Error::InvalidInput(InvalidInput::EmptyPersistenceId))
    ));
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn batched_reads_answer_every_caller_including_duplicates() {
    let db = TestDatabase::new().await.unwrap();
    let store = store_with(db.config().max_connections(1));
    for i in 0..50 {
        store
            .send(WriteState(state(&format!("r-{i}"), 1, i)))
            .await
            .unwrap()
            .unwrap();
    }
    // 50 present ids, each asked twice, and 50 absent ones, all at once.
    let ids: Vec<String> = (0..50)
        .flat_map(|i| [format!("r-{i}"), format!("r-{i}")])
        .chain((0..50).map(|i| format!("absent-{i}")))
        .collect();
    let reads = join_all(ids.iter().map(|id| store.send(GetLatestState(id.clone())))).await;
    for (id, read) in ids.iter().zip(reads) {
        let read = read.unwrap().unwrap();
        match id.strip_prefix("r-") {
            Some(n) => assert_eq!(read, Some(state(id, 1, n.parse().unwrap()))),
            None => assert_eq!(read, None, "{id}"),
        }
    }
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_bounded_queue_makes_senders_wait_not_fail() {
    let db = TestDatabase::new().await.unwrap();
    let store = store_with(
        db.config()
            .max_connections(1)
            .max_batch_size(4)
            .max_pending_requests(2),
    );
    let sends = (0..300).map(|i| store.send(WriteState(state(&format!("q-{i}"), 1, i))));
    for result in join_all(sends).await {
        assert_eq!(result.unwrap().unwrap(), WriteOutcome::Written);
    }
    assert_eq!(db.count_rows().await.unwrap(), 300);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_blocked_write_does_not_hold_up_writes_on_other_connections() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    let store = store_with(db.config().max_connections(2));
    store
        .send(WriteState(state("locked", 1, 1)))
        .await
        .unwrap()
        .unwrap();

    // Another session holds the row: the next write of `locked` waits on the server.
    let mut holder = db.client().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!("SELECT 1 FROM {schema}.states_store WHERE persistence_id = 'locked' FOR UPDATE"),
        &[],
    )
    .await
    .unwrap();
    let blocked = store.send(WriteState(state("locked", 2, 2)));
    let blocked = actix::spawn(blocked);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Meanwhile other entities keep writing on the second connection.
    for i in 0..20 {
        let outcome = store
            .send(WriteState(state(&format!("free-{i}"), 1, i)))
            .await;
        assert_eq!(outcome.unwrap().unwrap(), WriteOutcome::Written);
    }
    assert!(!blocked.is_finished(), "the locked write is still waiting");
    tx.rollback().await.unwrap();
    assert_eq!(
        blocked.await.unwrap().unwrap().unwrap(),
        WriteOutcome::Written
    );
    db.cleanup().await.unwrap();
}
