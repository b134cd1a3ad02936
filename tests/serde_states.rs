//! JSON states (feature `serde`): against the real PostgreSQL, each test in its own schema,
//! and against `MemoryStore`, which must answer alike.
#![cfg(feature = "serde")]

#[macro_use]
mod common;

#[allow(dead_code)] // `main` runs only as the example binary
#[path = "../examples/guide_serde.rs"]
mod guide_serde;

use actix::{Actor, Addr, Message};
use common::{AccountState, account, store, store_with};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    BehaviorTest, CommandError, Config, DurableEntity, DurableState, DurableStateBehavior, Effect,
    Error, GetLatestState, HandleCommand, InvalidInput, Json, JsonState, MemoryStore, Passivate,
    RowFormat, StateStore, WriteOutcome, WriteState,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// A serde state as users write them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Wallet {
    owner: String,
    balance: i64,
    history: Vec<i64>,
}

impl JsonState for Wallet {
    const NAME: &'static str = "acme.billing.wallet-v1";
}

/// Another JSON state, to ask for the wrong one.
#[derive(Debug, Serialize, Deserialize)]
struct Ticket {
    seat: u32,
}

impl JsonState for Ticket {
    const NAME: &'static str = "acme.events:ticket";
}

fn wallet(owner: &str, balance: i64) -> Wallet {
    Wallet {
        owner: owner.to_owned(),
        balance,
        history: vec![balance],
    }
}

fn json_state(id: &str, version: u64, balance: i64) -> DurableState {
    DurableState::from_json(id, version, &wallet(id, balance))
        .unwrap()
        .with_timestamp(1_700_000_000_000 + version as i64)
        .with_shard(version % 5)
}

/// The entity of the tests: a wallet whose state is `Json<Wallet>`.
struct WalletEntity {
    id: String,
}

impl DurableStateBehavior for WalletEntity {
    type State = Json<Wallet>;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

/// Adds to the balance; replies (balance, version).
#[derive(Clone, Message)]
#[rtype(result = "Result<(i64, u64), CommandError<String>>")]
struct Deposit(i64);

impl HandleCommand<Deposit> for WalletEntity {
    type Reply = (i64, u64);
    type Error = String;
    fn handle_command(
        &mut self,
        Deposit(amount): Deposit,
        state: &Json<Wallet>,
        version: u64,
    ) -> Result<Effect<Json<Wallet>, (i64, u64)>, String> {
        if amount == 0 {
            return Ok(Effect::none((state.balance, version)));
        }
        if amount < 0 {
            return Err(format!("cannot deposit {amount}"));
        }
        let mut next = state.clone();
        next.owner = self.id.clone();
        next.balance += amount;
        next.history.push(amount);
        Ok(Effect::persist(next.clone(), (next.balance, version + 1)))
    }
}

fn entity(id: &str, store: impl Into<StateStore>) -> Addr<DurableEntity<WalletEntity>> {
    DurableEntity::new(WalletEntity { id: id.into() }, store).start()
}

/// Reads `(state_manifest, state_payload)` of `id` with plain SQL.
async fn raw_row(db: &TestDatabase, id: &str) -> (String, Vec<u8>) {
    let row = db
        .client()
        .await
        .unwrap()
        .query_one(
            &format!(
                "SELECT state_manifest, state_payload FROM {}.states_store WHERE persistence_id = $1",
                db.schema()
            ),
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Stores a row of `id` as raw SQL, bypassing every check of the store.
async fn insert_raw(db: &TestDatabase, id: &str, manifest: &str, payload: &[u8]) {
    db.client()
        .await
        .unwrap()
        .execute(
            &format!(
                r#"INSERT INTO {}.states_store
                   (persistence_id, version_number, state_payload, state_manifest, "timestamp", shard_number)
                   VALUES ($1, 1, $2, $3, 0, 0)"#,
                db.schema()
            ),
            &[&id, &payload, &manifest],
        )
        .await
        .unwrap();
}

// ---- the store: rows, round trips, the version rule ----

#[actix::test]
async fn json_states_round_trip_byte_exact_under_their_name_in_both_formats() {
    let db = TestDatabase::new().await.unwrap();
    for format in [RowFormat::Any, RowFormat::Typed] {
        let store = store_with(db.config().row_format(format));
        let id = format!("wallet-{format:?}");
        let written = json_state(&id, 1, 250);
        let outcome = store.send(WriteState(written.clone())).await.unwrap();
        assert_eq!(outcome.unwrap(), WriteOutcome::Written);

        let read = store
            .send(GetLatestState(id.clone()))
            .await
            .unwrap()
            .unwrap()
            .expect("written");
        assert_eq!(read, written);
        assert_eq!(read.encode_to_vec(), written.encode_to_vec());
        assert_eq!(read.decode_json::<Wallet>().unwrap(), wallet(&id, 250));

        // The row: the name as manifest, the JSON as payload, whatever the format.
        let (manifest, payload) = raw_row(&db, &id).await;
        assert_eq!(manifest, "acme.billing.wallet-v1");
        assert_eq!(payload, serde_json::to_vec(&wallet(&id, 250)).unwrap());
        // ...which SQL can read as JSON.
        let balance: String = db
            .client()
            .await
            .unwrap()
            .query_one(
                &format!(
                    "SELECT convert_from(state_payload, 'UTF8')::jsonb ->> 'balance' FROM {}.states_store WHERE persistence_id = $1",
                    db.schema()
                ),
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(balance, "250");
    }
    // Protobuf rows share the table with JSON rows, each read as its own kind.
    let store = store_with(db.config());
    let proto = DurableState::new("proto", 1, &account("proto", 7));
    store
        .send(WriteState(proto.clone()))
        .await
        .unwrap()
        .unwrap();
    let read = store.send(GetLatestState("proto".into())).await.unwrap();
    assert_eq!(read.unwrap(), Some(proto));
    assert_eq!(raw_row(&db, "proto").await.0, "google.protobuf.Any");
    assert_eq!(db.count_rows().await.unwrap(), 3);
    db.cleanup().await.unwrap();
}

/// The version rule on JSON states, on any backend.
async fn identical_retry_is_already_stored_and_another_state_conflicts(store: StateStore) {
    let first = json_state("w", 1, 10);
    assert_eq!(
        store.write(first.clone()).await.unwrap(),
        WriteOutcome::Written
    );
    // The same state again (a retry after a lost answer), and the state as read back.
    assert_eq!(
        store.write(first.clone()).await.unwrap(),
        WriteOutcome::AlreadyStored
    );
    let read = store.get("w".into()).await.unwrap().unwrap();
    assert_eq!(read, first);
    assert_eq!(
        store.write(read).await.unwrap(),
        WriteOutcome::AlreadyStored
    );
    // Another state at the stored version: someone else's.
    let err = store.write(json_state("w", 1, 11)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::VersionConflict {
                attempted: 1,
                stored: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // The same version as a protobuf state is another state too.
    let proto = DurableState::new("w", 1, &account("w", 10));
    assert!(matches!(
        store.write(proto).await,
        Err(Error::VersionConflict { stored: 1, .. })
    ));
    // A gap, then the next version.
    assert!(matches!(
        store.write(json_state("w", 3, 30)).await,
        Err(Error::VersionConflict {
            attempted: 3,
            stored: 1,
            ..
        })
    ));
    assert_eq!(
        store.write(json_state("w", 2, 20)).await.unwrap(),
        WriteOutcome::Written
    );
    let latest = store.get("w".into()).await.unwrap().unwrap();
    assert_eq!(latest.decode_json::<Wallet>().unwrap(), wallet("w", 20));
}

/// Asking for the wrong type is a typed error, in every direction.
async fn wrong_type_is_a_state_type_mismatch(store: StateStore) {
    store.write(json_state("json", 1, 5)).await.unwrap();
    store
        .write(DurableState::new("proto", 1, &account("proto", 5)))
        .await
        .unwrap();
    let json = store.get("json".into()).await.unwrap().unwrap();
    let proto = store.get("proto".into()).await.unwrap().unwrap();
    assert!(matches!(
        json.decode_state::<AccountState>(),
        Err(Error::StateTypeMismatch { ref expected, ref found, .. })
            if expected == "acme.billing.AccountState" && found == "acme.billing.wallet-v1"
    ));
    assert!(matches!(
        json.decode_json::<Ticket>(),
        Err(Error::StateTypeMismatch { ref expected, ref found, .. })
            if expected == "acme.events:ticket" && found == "acme.billing.wallet-v1"
    ));
    assert!(matches!(
        proto.decode_json::<Wallet>(),
        Err(Error::StateTypeMismatch { ref found, .. }) if found == "acme.billing.AccountState"
    ));
    // An entity of the wrong kind refuses to recover rather than start from scratch.
    let e = entity("proto", store.clone());
    assert!(matches!(
        e.send(Deposit(1)).await.unwrap(),
        Err(CommandError::Recovery(Error::StateTypeMismatch { .. }))
    ));
}

/// A JSON entity persists, stops, and recovers its state.
async fn entity_recovers_its_json_state_after_a_restart(store: StateStore) {
    let first = entity("wallet-1", store.clone());
    assert_eq!(first.send(Deposit(0)).await.unwrap().unwrap(), (0, 0));
    assert_eq!(first.send(Deposit(100)).await.unwrap().unwrap(), (100, 1));
    assert_eq!(first.send(Deposit(20)).await.unwrap().unwrap(), (120, 2));
    assert!(matches!(
        first.send(Deposit(-1)).await.unwrap(),
        Err(CommandError::Rejected(_))
    ));
    first.send(Passivate).await.unwrap();

    let second = entity("wallet-1", store.clone());
    assert_eq!(second.send(Deposit(0)).await.unwrap().unwrap(), (120, 2));
    assert_eq!(second.send(Deposit(1)).await.unwrap().unwrap(), (121, 3));
    let stored = store.get("wallet-1".into()).await.unwrap().unwrap();
    assert_eq!(
        stored.decode_json::<Wallet>().unwrap(),
        Wallet {
            owner: "wallet-1".into(),
            balance: 121,
            history: vec![100, 20, 1],
        }
    );

    // Two live actors of one id: the second one's write conflicts, it reloads the JSON state
    // and decides again on it.
    let other = entity("wallet-1", store.clone());
    assert_eq!(other.send(Deposit(0)).await.unwrap().unwrap(), (121, 3));
    second.send(Deposit(9)).await.unwrap().unwrap();
    assert_eq!(other.send(Deposit(5)).await.unwrap().unwrap(), (135, 5));
}

on_both_backends!(
    identical_retry_is_already_stored_and_another_state_conflicts,
    wrong_type_is_a_state_type_mismatch,
    entity_recovers_its_json_state_after_a_restart,
);

// ---- rows the store did not write ----

#[actix::test]
async fn undecodable_json_rows_are_typed_errors() {
    let (db, store) = store().await;
    let secret = "SECRET-0123456789";
    insert_raw(
        &db,
        "shape",
        Wallet::NAME,
        format!(r#"{{"owner":"x","balance":"{secret}","history":[]}}"#).as_bytes(),
    )
    .await;
    insert_raw(&db, "syntax", Wallet::NAME, b"{\"owner\": \xff").await;
    insert_raw(&db, "truncated", Wallet::NAME, br#"{"owner":"x","bal"#).await;

    for (id, category) in [
        ("shape", serde_json::error::Category::Data),
        ("syntax", serde_json::error::Category::Syntax),
        ("truncated", serde_json::error::Category::Eof),
    ] {
        // The row reads: its payload is only checked when it is decoded, as protobuf's is.
        let stored = store
            .send(GetLatestState(id.into()))
            .await
            .unwrap()
            .unwrap()
            .expect("inserted");
        assert_eq!(stored.state_type(), Some(Wallet::NAME));
        let err = stored.decode_json::<Wallet>().unwrap_err();
        match &err {
            Error::DecodeJson {
                persistence_id,
                type_name,
                source,
            } => {
                assert_eq!(persistence_id, id);
                assert_eq!(type_name, Wallet::NAME);
                assert_eq!(source.category(), category, "{id}");
            }
            other => panic!("{id}: expected DecodeJson, got {other:?}"),
        }
        // Neither the error nor its chain quotes the stored JSON.
        let mut chain = String::new();
        let mut cause: Option<&dyn std::error::Error> = Some(&err);
        while let Some(current) = cause {
            chain.push_str(&format!("{current} | {current:?}\n"));
            cause = current.source();
        }
        assert!(!chain.contains(secret), "{chain}");

        // An entity does not recover from it, and never overwrites it.
        let e = entity(id, store.clone());
        assert!(matches!(
            e.send(Deposit(1)).await.unwrap(),
            Err(CommandError::Recovery(Error::DecodeJson { .. }))
        ));
    }
    // A manifest that is neither a protobuf nor a JSON name is a corrupt row.
    insert_raw(&db, "neither", "acme/wallet v1", b"{}").await;
    assert!(matches!(
        store.send(GetLatestState("neither".into())).await.unwrap(),
        Err(Error::CorruptState { .. })
    ));
    assert_eq!(db.count_rows().await.unwrap(), 4);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_name_that_could_be_protobuf_is_refused_before_anything_is_written() {
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Clash(i64);
    impl JsonState for Clash {
        // The full name of a protobuf type: a row of it would be ambiguous.
        const NAME: &'static str = "acme.billing.AccountState";
    }
    let err = DurableState::from_json("clash", 1, &Clash(1)).unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidInput(InvalidInput::InvalidStateName { .. })
    ));

    // An entity with such a state fails its command with the reason and writes nothing.
    struct ClashEntity;
    impl DurableStateBehavior for ClashEntity {
        type State = Json<Clash>;
        fn persistence_id(&self) -> &str {
            "clash"
        }
    }
    #[derive(Clone, Message)]
    #[rtype(result = "Result<(), CommandError<()>>")]
    struct Bump;
    impl HandleCommand<Bump> for ClashEntity {
        type Reply = ();
        type Error = ();
        fn handle_command(
            &mut self,
            _: Bump,
            state: &Json<Clash>,
            _: u64,
        ) -> Result<Effect<Json<Clash>, ()>, ()> {
            Ok(Effect::persist(Json(Clash(state.0.0 + 1)), ()))
        }
    }
    let store = MemoryStore::default().start();
    let e = DurableEntity::new(ClashEntity, store.clone()).start();
    assert!(matches!(
        e.send(Bump).await.unwrap(),
        Err(CommandError::Store(Error::InvalidInput(
            InvalidInput::InvalidStateName { .. }
        )))
    ));
    let stored = store.send(GetLatestState("clash".into())).await.unwrap();
    assert_eq!(stored.unwrap(), None);
}

// ---- no store at all ----

#[test]
fn behavior_test_runs_json_behaviors() {
    BehaviorTest::new(WalletEntity { id: "w".into() })
        .when(Deposit(0))
        .then_expect_reply((0, 0))
        .then_expect_no_change()
        .and()
        .when(Deposit(5))
        .then_expect_reply((5, 1))
        .then_expect_state(Json(Wallet {
            owner: "w".into(),
            balance: 5,
            history: vec![5],
        }))
        .and()
        .when(Deposit(-2))
        .then_expect_rejection("cannot deposit -2".to_string());

    let test = BehaviorTest::new(WalletEntity { id: "w".into() })
        .given(Json(wallet("w", 40)), 3)
        .when(Deposit(2))
        .then_expect_reply((42, 4))
        .and();
    let (state, version) = test.state();
    assert_eq!((state.balance, version), (42, 4));
}

// ---- the guide's example ----

#[actix::test]
async fn the_guide_example_is_shown_verbatim_and_runs_on_an_empty_database() {
    let example = include_str!("../examples/guide_serde.rs");
    let body = example
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        include_str!("../src/guide/states.md").contains(&body),
        "src/guide/states.md no longer shows examples/guide_serde.rs as it is; copy it again:\n{body}"
    );
    let db = TestDatabase::new().await.unwrap();
    db.drop_table(Config::DEFAULT_TABLE).await.unwrap();
    guide_serde::run(db.config()).await.unwrap();
    guide_serde::run(db.config()).await.unwrap(); // and again: the cart recovered
    let (manifest, payload) = raw_row(&db, "cart-1").await;
    assert_eq!(manifest, "shop.cart-v1");
    assert_eq!(payload, br#"{"items":["book","book"]}"#);
    db.cleanup().await.unwrap();
}
