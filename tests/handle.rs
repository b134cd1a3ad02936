//! `DurableStore`, the plain async handle: used from tokio tasks without an actix system, shared
//! with a store actor, and given to entities so they skip the actor's mailbox.

mod common;

use std::time::Duration;

use actix::Actor;
use common::bank::{Account, Deposit, GetBalance};
use common::state;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    Disconnect, DurableEntity, DurableStore, DurableStoreActor, Error, GetLatestState, Ping,
    WriteOutcome, WriteState,
};

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

#[test]
fn the_handle_is_send_sync_and_cloneable() {
    assert_send_sync_clone::<DurableStore>();
}

#[test]
fn outside_a_runtime_creating_a_handle_is_a_typed_error() {
    let config = durablestore_postgres::Config::new("127.0.0.1", 5432, "postgres", "", "postgres");
    assert!(matches!(DurableStore::new(config), Err(Error::NoRuntime)));
    // Bad settings are reported first, all at once.
    let bad = durablestore_postgres::Config::new("127.0.0.1", 5432, "postgres", "", "postgres")
        .max_connections(0)
        .table("a.b");
    match DurableStore::new(bad) {
        Err(Error::InvalidConfig(problems)) => {
            assert!(problems.contains("max_connections") && problems.contains("table"));
        }
        other => panic!("{other:?}"),
    }
}

/// Tokio tasks on several threads share one handle: writes group-commit, every answer is the
/// caller's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tasks_share_one_handle() {
    let db = TestDatabase::new().await.unwrap();
    let store = DurableStore::new(db.config()).unwrap();
    store.ping().await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("task-{i}");
                for version in 1..=5 {
                    let outcome = store.write(state(&id, version, i)).await.unwrap();
                    assert_eq!(outcome, WriteOutcome::Written);
                }
                store
                    .get(id.as_str())
                    .await
                    .unwrap()
                    .unwrap()
                    .version_number
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 5);
    }
    assert_eq!(db.count_rows().await.unwrap(), 200);

    // The rest of the API, through the same handle.
    assert!(matches!(
        store.write(state("task-0", 5, 1)).await,
        Err(Error::VersionConflict { stored: 5, .. })
    ));
    assert_eq!(
        store.delete("task-0", 6).await.unwrap(),
        WriteOutcome::Written
    );
    assert!(store.revision("task-0").await.unwrap().is_deleted());
    assert_eq!(store.get("task-0").await.unwrap(), None);
    let page = store.list_persistence_ids(None, 3).await.unwrap();
    assert_eq!(page, ["task-1", "task-10", "task-100"]);
    let states = store
        .current_states(None, Some("task-99"), 10)
        .await
        .unwrap();
    assert_eq!(states.len(), 0, "task-99 is the last id in text order");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge_deleted(Duration::ZERO).await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn entities_given_the_handle_skip_the_store_actor() {
    let db = TestDatabase::new().await.unwrap();
    let store = DurableStore::new(db.config()).unwrap();
    let entity = DurableEntity::new(
        Account {
            id: "direct".into(),
        },
        store.clone(),
    )
    .start();
    assert_eq!(entity.send(Deposit(5)).await.unwrap().unwrap(), (5, 1));
    assert_eq!(entity.send(Deposit(6)).await.unwrap().unwrap(), (11, 2));
    drop(entity);
    let again = DurableEntity::new(
        Account {
            id: "direct".into(),
        },
        store.clone(),
    )
    .start();
    assert_eq!(again.send(GetBalance).await.unwrap().unwrap(), (11, 2));

    // An actor made from the handle answers from the same engine; a disconnect only detaches
    // it, and a ping attaches it again.
    let actor = DurableStoreActor::from(store.clone()).start();
    let read = actor.send(GetLatestState("direct".into())).await.unwrap();
    assert_eq!(read.unwrap().unwrap().version_number, 2);
    actor.send(Disconnect).await.unwrap();
    assert!(matches!(
        actor.send(WriteState(state("x", 1, 1))).await.unwrap(),
        Err(Error::NotConnected)
    ));
    assert_eq!(
        store.get("direct").await.unwrap().unwrap().version_number,
        2
    );
    actor.send(Ping).await.unwrap().unwrap();
    actor
        .send(WriteState(state("x", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    db.cleanup().await.unwrap();
}
