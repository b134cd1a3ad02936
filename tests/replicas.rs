//! Several replicas of one service over one table: each its own store (its own pool) and
//! registry, as separate processes would be. Writes never deadlock each other, conflicts are
//! absorbed by the entities, and entities that ask each other never hang their registry.

mod common;

use std::time::Duration;

use common::state;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{DurableStore, Error, WriteOutcome};
use futures_util::future::join_all;

/// Stores ids `shared-0`..`shared-9`, `a-0`..`a-4`, `b-0`..`b-4` and two blockers at version 1
/// among 20,000 others,
/// with a trigger that sleeps on every update of a shared row (widening the window in which
/// two statements hold some of them) and for 300 ms on a blocker's.
async fn shared_rows(db: &TestDatabase) -> DurableStore {
    let schema = db.schema();
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.persistence_id LIKE 'blocker%' THEN PERFORM pg_sleep(0.3);
                 ELSE PERFORM pg_sleep(0.02); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER slow BEFORE UPDATE ON {schema}.states_store FOR EACH ROW
                 WHEN (NEW.persistence_id LIKE 'shared%' OR NEW.persistence_id LIKE 'blocker%')
                 EXECUTE FUNCTION {schema}.slow();
             -- Enough other rows that the server finds the batch's rows by index, in the
             -- order the batch lists them, as on a table of real size.
             INSERT INTO {schema}.states_store
                 SELECT 'filler-' || i, 1, '', 'x.Y', 0, 0 FROM generate_series(1, 20000) AS i;
             ANALYZE {schema}.states_store;"
        ))
        .await
        .unwrap();
    let setup = DurableStore::new(db.config()).unwrap();
    let mut ids: Vec<String> = (0..10).map(|i| format!("shared-{i}")).collect();
    ids.extend((0..5).map(|i| format!("a-{i}")));
    ids.extend((0..5).map(|i| format!("b-{i}")));
    ids.extend(["blocker-a".to_owned(), "blocker-b".to_owned()]);
    for result in join_all(ids.iter().map(|id| setup.write(state(id, 1, 0)))).await {
        assert!(matches!(result, Ok(WriteOutcome::Written)), "{result:?}");
    }
    setup
}

/// Two stores write overlapping ids in opposite orders, each as one batch (its only
/// connection is held by a slow write while the batch queues): no caller sees a deadlock, and
/// each write is answered as if it had been sent alone.
#[tokio::test]
async fn batches_with_shared_ids_in_opposite_orders_never_deadlock() {
    let db = TestDatabase::new().await.unwrap();
    let _setup = shared_rows(&db).await;
    let first = DurableStore::new(db.config().max_connections(1)).unwrap();
    let second = DurableStore::new(db.config().max_connections(1)).unwrap();

    let mut order_a = vec!["blocker-a".to_owned()];
    order_a.extend((0..5).map(|i| format!("a-{i}")));
    order_a.extend((0..10).map(|i| format!("shared-{i}")));
    let mut order_b = vec!["blocker-b".to_owned()];
    order_b.extend((0..5).map(|i| format!("b-{i}")));
    order_b.extend((0..10).rev().map(|i| format!("shared-{i}")));

    let writes_a = order_a.iter().map(|id| first.write(state(id, 2, 100)));
    let writes_b = order_b.iter().map(|id| second.write(state(id, 2, 200)));
    let (answers_a, answers_b) = tokio::join!(join_all(writes_a), join_all(writes_b));

    let mut shared_winners = 0;
    for (id, answer) in order_a
        .iter()
        .zip(&answers_a)
        .chain(order_b.iter().zip(&answers_b))
    {
        match answer {
            Ok(WriteOutcome::Written) => {
                if id.starts_with("shared") {
                    shared_winners += 1;
                }
            }
            // The other store wrote version 2 of this shared id first.
            Err(Error::VersionConflict {
                stored: 2,
                attempted: 2,
                ..
            }) if id.starts_with("shared") => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(shared_winners, 10, "each shared id is written by one store");
    db.cleanup().await.unwrap();
}

/// A statement that loses a deadlock anyway (here against a transaction that locks rows in
/// another order than any store would) rolled back whole: it is sent again, and its callers
/// are answered as if nothing had happened.
#[tokio::test]
async fn a_statement_that_loses_a_deadlock_is_sent_again() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    let _setup = shared_rows(&db).await;
    let store = DurableStore::new(db.config().max_connections(1)).unwrap();

    let mut other = db.client().await.unwrap();
    let other = other.transaction().await.unwrap();
    // This session waits long before it looks for deadlocks: the store's statement, which
    // began waiting first, is the one the server rolls back.
    other
        .batch_execute(&format!(
            "SET LOCAL deadlock_timeout = '20s';
             UPDATE {schema}.states_store SET \"timestamp\" = \"timestamp\"
                 WHERE persistence_id = 'shared-9'"
        ))
        .await
        .unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("shared-{i}")).collect();
    let writes = join_all(ids.iter().map(|id| store.write(state(id, 2, 5))));
    let interfere = async {
        // By now the store holds shared-1.. and waits for shared-9.
        tokio::time::sleep(Duration::from_millis(600)).await;
        other
            .batch_execute(&format!(
                "UPDATE {schema}.states_store SET \"timestamp\" = \"timestamp\"
                     WHERE persistence_id = 'shared-1'"
            ))
            .await
            .unwrap();
        other.commit().await.unwrap();
    };
    let (answers, ()) = tokio::join!(writes, interfere);
    for (id, answer) in ids.iter().zip(answers) {
        assert!(
            matches!(answer, Ok(WriteOutcome::Written)),
            "{id}: {answer:?}"
        );
    }
    db.cleanup().await.unwrap();
}
