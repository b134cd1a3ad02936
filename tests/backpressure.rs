//! The store's memory is bounded by `max_pending_requests` however requests are sent, and a
//! queued request whose caller gave up is never sent. (Its own binary: it installs the
//! process-wide metrics recorder to read the `durablestore_pending_requests` gauge.)

mod common;

use std::time::Duration;

use common::{state, store_with};
use durablestore_postgres::WriteState;
use durablestore_postgres::testkit::TestDatabase;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

fn pending_writes(snapshotter: &Snapshotter) -> f64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            DebugValue::Gauge(value)
                if key.key().name() == "durablestore_pending_requests"
                    && key.key().labels().any(|l| l.value() == "write") =>
            {
                Some(value.into_inner())
            }
            _ => None,
        })
        .unwrap_or(0.0)
}

async fn count(db: &TestDatabase, pattern: &str) -> i64 {
    db.client()
        .await
        .unwrap()
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.states_store WHERE persistence_id LIKE $1",
                db.schema()
            ),
            &[&pattern],
        )
        .await
        .unwrap()
        .get(0)
}

#[actix::test]
async fn pending_requests_are_bounded_and_abandoned_ones_are_not_sent() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test binary");

    let db = TestDatabase::new().await.unwrap();
    let (max_pending, max_batch) = (20, 10);
    let store = store_with(
        db.config()
            .max_connections(1)
            .max_pending_requests(max_pending)
            .max_batch_size(max_batch)
            .statement_timeout(None),
    );
    let table = format!("{}.states_store", db.schema());

    // Writes block on a table lock while 2,000 are sent without waiting for answers.
    let mut locker = db.client().await.unwrap();
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
        .await
        .unwrap();
    for i in 0..2_000 {
        store.do_send(WriteState(state(&format!("fire-{i}"), 1, 1)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The queue, the one batch in flight and the one write waiting for room: nothing more.
    let held = pending_writes(&snapshotter);
    let bound = (max_pending + max_batch + 1) as f64;
    assert!(
        held > 0.0 && held <= bound,
        "{held} requests held, bound {bound}"
    );
    lock.rollback().await.unwrap();
    for _ in 0..200 {
        if count(&db, "fire-%").await == 2_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&db, "fire-%").await, 2_000, "every write landed");

    // Callers that give up while their writes are queued: those writes are dropped unsent
    // (only a batch already in flight is written).
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
        .await
        .unwrap();
    let impatient = (0..15).map(|i| {
        tokio::time::timeout(
            Duration::from_millis(300),
            store.send(WriteState(state(&format!("gone-{i}"), 1, 1))),
        )
    });
    for result in futures_util::future::join_all(impatient).await {
        assert!(result.is_err(), "the caller gave up");
    }
    lock.rollback().await.unwrap();
    store
        .send(WriteState(state("after", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    let sent = count(&db, "gone-%").await;
    assert!(
        sent <= max_batch as i64,
        "{sent} abandoned writes were sent"
    );
    db.cleanup().await.unwrap();
}
