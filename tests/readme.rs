//! The README's examples run as shown on an empty database: they are `examples/readme*.rs`
//! verbatim (checked here), run here against a schema without the table.

#[allow(dead_code)] // `main` runs only as the example binary
#[path = "../examples/readme.rs"]
mod readme;
#[allow(dead_code)]
#[path = "../examples/readme_entity.rs"]
mod readme_entity;

use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{BehaviorTest, Config};

const README: &str = include_str!("../README.md");

/// The example's code without its `//!` header.
fn body(example: &str) -> String {
    example
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_in_readme(example: &str, name: &str) {
    let body = body(example);
    assert!(
        README.contains(&body),
        "README.md no longer shows examples/{name} as it is; copy it again:\n{body}"
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
    assert_in_readme(include_str!("../examples/readme.rs"), "readme.rs");
    let db = empty_database().await;
    readme::run(db.config()).await.unwrap();
    readme::run(db.config()).await.unwrap(); // and again, moving the counter on
    assert_eq!(db.count_rows().await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn the_entity_example_runs_on_an_empty_database() {
    assert_in_readme(
        include_str!("../examples/readme_entity.rs"),
        "readme_entity.rs",
    );
    let db = empty_database().await;
    readme_entity::run(db.config()).await.unwrap();
    assert_eq!(db.count_rows().await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

/// The README's given/when/then fragment, on the entity example's types.
#[test]
fn the_behavior_test_fragment_passes() {
    use readme_entity::{Account, AccountState, InsufficientFunds, Withdraw};
    let fragment = r#"BehaviorTest::new(Account { id: "a".into() })
    .given(AccountState { balance_cents: 100 }, 3)
    .when(Withdraw(150))
    .then_expect_rejection(InsufficientFunds);"#;
    assert!(README.contains(fragment), "README.md changed the fragment");
    BehaviorTest::new(Account { id: "a".into() })
        .given(AccountState { balance_cents: 100 }, 3)
        .when(Withdraw(150))
        .then_expect_rejection(InsufficientFunds);
}
