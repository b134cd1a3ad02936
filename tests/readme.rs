//! The README's and the guide's examples run as shown on an empty database: they are
//! `examples/readme.rs` and `examples/guide_*.rs` verbatim (checked here), run here against a
//! schema without the table. (`tests/serde_states.rs` does the same for `guide_serde.rs`.)

#[allow(dead_code)]
#[path = "../examples/guide_delete.rs"]
mod guide_delete;
#[allow(dead_code)]
#[path = "../examples/guide_entity.rs"]
mod guide_entity;
#[allow(dead_code)]
#[path = "../examples/guide_handle.rs"]
mod guide_handle;
#[allow(dead_code)] // `main` runs only as the example binary
#[path = "../examples/readme.rs"]
mod readme;

use actix::Actor;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    BehaviorTest, Config, DurableState, DurableStoreActor, GetRevision, WriteState,
};

/// The example's code without its `//!` header.
fn body(example: &str) -> String {
    example
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks that `doc` (a file of the repository, named `doc_name`) shows `example` as it is.
fn assert_shown(doc: &str, doc_name: &str, example: &str, name: &str) {
    let body = body(example);
    assert!(
        doc.contains(&body),
        "{doc_name} no longer shows examples/{name} as it is; copy it again:\n{body}"
    );
}

/// A fresh schema without the table: what a user's empty database looks like to the store.
async fn empty_database() -> TestDatabase {
    let db = TestDatabase::new().await.unwrap();
    db.drop_table(Config::DEFAULT_TABLE).await.unwrap();
    assert!(!db.table_exists(Config::DEFAULT_TABLE).await.unwrap());
    db
}

#[actix::test]
async fn the_first_example_runs_on_an_empty_database() {
    assert_shown(
        include_str!("../README.md"),
        "README.md",
        include_str!("../examples/readme.rs"),
        "readme.rs",
    );
    let db = empty_database().await;
    readme::run(db.config()).await.unwrap();
    readme::run(db.config()).await.unwrap(); // and again, moving the counter on
    assert_eq!(db.count_rows().await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn the_entity_example_runs_on_an_empty_database() {
    assert_shown(
        include_str!("../src/guide/entities.md"),
        "src/guide/entities.md",
        include_str!("../examples/guide_entity.rs"),
        "guide_entity.rs",
    );
    let db = empty_database().await;
    guide_entity::run(db.config()).await.unwrap();
    assert_eq!(db.count_rows().await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_example_runs_on_an_empty_database() {
    assert_shown(
        include_str!("../src/guide/store.md"),
        "src/guide/store.md",
        include_str!("../examples/guide_handle.rs"),
        "guide_handle.rs",
    );
    let db = empty_database().await;
    guide_handle::run(db.config()).await.unwrap();
    assert_eq!(db.count_rows().await.unwrap(), 100);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn the_delete_example_deletes_and_keeps_the_fresh_tombstone() {
    assert_shown(
        include_str!("../src/guide/deleting.md"),
        "src/guide/deleting.md",
        include_str!("../examples/guide_delete.rs"),
        "guide_delete.rs",
    );
    let db = TestDatabase::new().await.unwrap();
    let store = DurableStoreActor::new(db.config()).unwrap().start();
    let state = DurableState::new("account-7", 1, &prost_types::Duration::default());
    store.send(WriteState(state)).await.unwrap().unwrap();

    guide_delete::run(db.config()).await.unwrap();
    let revision = store
        .send(GetRevision("account-7".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revision.version, 2, "the delete is the next version");
    assert!(revision.state.is_none(), "deleted");
    assert_eq!(
        db.count_rows().await.unwrap(),
        1,
        "a week-young tombstone stays"
    );
    guide_delete::run(db.config()).await.unwrap(); // and again: nothing left to delete
    assert_eq!(
        store
            .send(GetRevision("account-7".into()))
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
    db.cleanup().await.unwrap();
}

/// The testing chapter's given/when/then fragment, on the entity example's types.
#[test]
fn the_behavior_test_fragment_passes() {
    use guide_entity::{Account, AccountState, InsufficientFunds, Withdraw};
    let fragment = r#"BehaviorTest::new(Account { id: "a".into() })
    .given(AccountState { balance_cents: 100 }, 3)
    .when(Withdraw(150))
    .then_expect_rejection(InsufficientFunds);"#;
    assert!(
        include_str!("../src/guide/testing.md").contains(fragment),
        "src/guide/testing.md changed the fragment"
    );
    BehaviorTest::new(Account { id: "a".into() })
        .given(AccountState { balance_cents: 100 }, 3)
        .when(Withdraw(150))
        .then_expect_rejection(InsufficientFunds);
}
