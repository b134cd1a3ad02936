//! Deletes, tombstones, purges and listings, against the real PostgreSQL and `MemoryStore`
//! from one body each, plus the parts only PostgreSQL can show (the raw row, the plans).

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use common::bank::{Account, Deposit, GetBalance};
use common::state;
use durablestore_postgres::{
    CommandError, CurrentStates, DeleteState, DurableEntity, DurableStoreActor, Effect, Error,
    GetLatestState, GetRevision, HandleCommand, InvalidInput, ListPersistenceIds, MemoryStore,
    PurgeDeleted, Revision, WriteOutcome, WriteState,
};

/// Either backend, answering the same messages.
#[derive(Clone)]
enum Store {
    Memory(Addr<MemoryStore>),
    Postgres(Addr<DurableStoreActor>),
}

impl From<Addr<MemoryStore>> for Store {
    fn from(addr: Addr<MemoryStore>) -> Self {
        Store::Memory(addr)
    }
}

impl From<Addr<DurableStoreActor>> for Store {
    fn from(addr: Addr<DurableStoreActor>) -> Self {
        Store::Postgres(addr)
    }
}

impl Store {
    async fn ask<M>(&self, message: M) -> M::Result
    where
        M: Message + Send + 'static,
        M::Result: Send,
        MemoryStore: Handler<M>,
        DurableStoreActor: Handler<M>,
        <MemoryStore as Actor>::Context: ToEnvelope<MemoryStore, M>,
        <DurableStoreActor as Actor>::Context: ToEnvelope<DurableStoreActor, M>,
    {
        match self {
            Store::Memory(addr) => addr.send(message).await.unwrap(),
            Store::Postgres(addr) => addr.send(message).await.unwrap(),
        }
    }

    fn entity_store(&self) -> durablestore_postgres::StateStore {
        match self {
            Store::Memory(addr) => addr.clone().into(),
            Store::Postgres(addr) => addr.clone().into(),
        }
    }
}

fn delete(id: &str, version: u64) -> DeleteState {
    DeleteState {
        persistence_id: id.to_owned(),
        version,
    }
}

async fn revision(store: &Store, id: &str) -> Revision {
    store.ask(GetRevision(id.into())).await.unwrap()
}

// ---- scenarios shared by both backends ----

async fn a_delete_is_version_checked_and_leaves_a_tombstone(store: Store) {
    store.ask(WriteState(state("a", 1, 10))).await.unwrap();
    store.ask(WriteState(state("a", 2, 20))).await.unwrap();

    // The delete must follow the stored version, like a write.
    match store.ask(delete("a", 2)).await {
        Err(Error::VersionConflict {
            attempted: 2,
            stored: 2,
            ..
        }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.ask(delete("a", 3)).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(store.ask(GetLatestState("a".into())).await.unwrap(), None);
    let tombstone = revision(&store, "a").await;
    assert_eq!(tombstone.version, 3);
    assert!(tombstone.is_deleted());

    // A retry of the same delete is answered as done; a different one conflicts.
    assert_eq!(
        store.ask(delete("a", 3)).await.unwrap(),
        WriteOutcome::AlreadyStored
    );
    assert!(matches!(
        store.ask(delete("a", 9)).await,
        Err(Error::VersionConflict { stored: 3, .. })
    ));

    // A stale writer cannot bring the entity back, neither at version 1 nor at its old next.
    for stale in [state("a", 1, 10), state("a", 3, 30)] {
        match store.ask(WriteState(stale)).await {
            Err(Error::VersionConflict { stored: 3, .. }) => {}
            other => panic!("a stale write must conflict, got {other:?}"),
        }
    }
    // The next version starts the entity again.
    let again = state("a", 4, 40);
    assert_eq!(
        store.ask(WriteState(again.clone())).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(
        store.ask(GetLatestState("a".into())).await.unwrap(),
        Some(again)
    );
}

async fn deleting_what_was_never_written_reserves_version_one(store: Store) {
    assert_eq!(
        revision(&store, "never").await,
        Revision {
            version: 0,
            state: None
        }
    );
    assert_eq!(
        store.ask(delete("never", 1)).await.unwrap(),
        WriteOutcome::Written
    );
    assert!(matches!(
        store.ask(WriteState(state("never", 1, 1))).await,
        Err(Error::VersionConflict { stored: 1, .. })
    ));
    assert!(matches!(
        store.ask(delete("", 1)).await,
        Err(Error::InvalidInput(InvalidInput::EmptyPersistenceId))
    ));
    assert!(matches!(
        store.ask(delete("x", 0)).await,
        Err(Error::InvalidInput(InvalidInput::VersionZero { .. }))
    ));
}

async fn purge_removes_only_old_tombstones(store: Store) {
    store.ask(WriteState(state("kept", 1, 1))).await.unwrap();
    store.ask(WriteState(state("gone", 1, 1))).await.unwrap();
    store.ask(delete("gone", 2)).await.unwrap();

    let hour = Duration::from_secs(3600);
    assert_eq!(
        store.ask(PurgeDeleted { older_than: hour }).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let purged = store
        .ask(PurgeDeleted {
            older_than: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(purged, 1);
    // The id is free again; the state next to it was not touched.
    assert_eq!(revision(&store, "gone").await.version, 0);
    store.ask(WriteState(state("gone", 1, 5))).await.unwrap();
    assert_eq!(revision(&store, "kept").await.version, 1);
}

/// Closes the account: the entity deletes itself.
#[derive(Clone, Message)]
#[rtype(result = "Result<u64, CommandError<common::bank::AccountError>>")]
struct Close;

impl HandleCommand<Close> for Account {
    type Reply = u64;
    type Error = common::bank::AccountError;
    fn handle_command(
        &mut self,
        _: Close,
        _: &common::AccountState,
        version: u64,
    ) -> Result<Effect<common::AccountState, u64>, Self::Error> {
        Ok(Effect::delete(version + 1))
    }
}

async fn an_entity_deletes_itself_and_starts_again(store: Store) {
    let start = || DurableEntity::new(Account { id: "acct".into() }, store.entity_store()).start();
    let entity = start();
    entity.send(Deposit(50)).await.unwrap().unwrap();
    assert_eq!(entity.send(Close).await.unwrap().unwrap(), 2);
    // The entity goes on from its initial state, at the tombstone's version.
    assert_eq!(entity.send(GetBalance).await.unwrap().unwrap(), (0, 2));
    assert_eq!(
        store.ask(GetLatestState("acct".into())).await.unwrap(),
        None
    );

    // A new incarnation recovers the same.
    let again = start();
    assert_eq!(again.send(GetBalance).await.unwrap().unwrap(), (0, 2));
    assert_eq!(again.send(Deposit(7)).await.unwrap().unwrap(), (7, 3));
    // The first one is behind now: its next decision conflicts, and it decides again on the
    // reloaded state.
    assert_eq!(entity.send(Deposit(1)).await.unwrap().unwrap(), (8, 4));
    assert_eq!(entity.send(GetBalance).await.unwrap().unwrap(), (8, 4));
}

async fn listing_pages_by_id_and_skips_tombstones(store: Store) {
    for (i, id) in ["e", "a", "d", "b", "c", "g", "f"].iter().enumerate() {
        store
            .ask(WriteState(state(id, 1, i as i64).with_shard(i as u64 % 2)))
            .await
            .unwrap();
    }
    store.ask(delete("d", 2)).await.unwrap();

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .ask(ListPersistenceIds {
                after: after.clone(),
                limit: 2,
            })
            .await
            .unwrap();
        after = page.last().cloned();
        let last = page.len() < 2;
        pages.push(page);
        if last {
            break;
        }
    }
    assert_eq!(
        pages,
        vec![vec!["a", "b"], vec!["c", "e"], vec!["f", "g"], vec![]]
    );

    let states = store
        .ask(CurrentStates {
            shard: None,
            after: Some("b".into()),
            limit: 3,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = states.iter().map(|s| s.persistence_id.as_str()).collect();
    assert_eq!(ids, ["c", "e", "f"]);
    let shard_one = store
        .ask(CurrentStates {
            shard: Some(1),
            after: None,
            limit: 100,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = shard_one
        .iter()
        .map(|s| s.persistence_id.as_str())
        .collect();
    // Written with shards e0 a1 d0 b1 c0 g1 f0; d is deleted.
    assert_eq!(ids, ["a", "b", "g"]);
    assert_eq!(shard_one[0], state("a", 1, 1).with_shard(1));

    for limit in [0, 10_001] {
        assert!(matches!(
            store.ask(ListPersistenceIds { after: None, limit }).await,
            Err(Error::InvalidInput(InvalidInput::LimitOutOfRange { .. }))
        ));
    }
}

/// Pages of 3 while other ids are written and deleted: every id that exists for the whole
/// iteration comes back exactly once; no tombstone ever does.
async fn iterating_while_writing_returns_each_stable_id_once(store: Store) {
    let stable: BTreeSet<String> = (0..40).map(|i| format!("s{i:03}")).collect();
    for id in &stable {
        store.ask(WriteState(state(id, 1, 1))).await.unwrap();
    }
    let writer = {
        let store = store.clone();
        actix::spawn(async move {
            for i in 0..60_u64 {
                // Some ids come back after their delete, at the version after the tombstone.
                let (id, round) = (format!("s{:03}x", i % 45), i / 45);
                store
                    .ask(WriteState(state(&id, 2 * round + 1, 1)))
                    .await
                    .unwrap();
                store.ask(delete(&id, 2 * round + 2)).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .ask(ListPersistenceIds {
                after: after.clone(),
                limit: 3,
            })
            .await
            .unwrap();
        tokio::task::yield_now().await;
        after = page.last().cloned();
        let done = page.len() < 3;
        seen.extend(page);
        if done {
            break;
        }
    }
    writer.await.unwrap();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an id came back twice");
    assert!(stable.is_subset(&unique), "a stable id was missed");
    for id in &unique {
        if !stable.contains(id) {
            // A concurrently written id may show up once, but only while it was live.
            assert!(id.ends_with('x'), "{id}");
        }
    }
    let sorted: Vec<String> = unique.into_iter().collect();
    let mut in_order = seen.clone();
    in_order.sort();
    assert_eq!(in_order, sorted);
}

on_both_backends!(
    a_delete_is_version_checked_and_leaves_a_tombstone,
    deleting_what_was_never_written_reserves_version_one,
    purge_removes_only_old_tombstones,
    an_entity_deletes_itself_and_starts_again,
    listing_pages_by_id_and_skips_tombstones,
    iterating_while_writing_returns_each_stable_id_once,
);

// ---- PostgreSQL only ----

#[actix::test]
async fn a_tombstone_keeps_no_state_bytes() {
    let (db, store) = common::store().await;
    store
        .send(WriteState(state("erase", 1, 99)))
        .await
        .unwrap()
        .unwrap();
    store.send(delete("erase", 2)).await.unwrap().unwrap();
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            &format!(
                "SELECT version_number, state_payload, state_manifest FROM {}.states_store \
                 WHERE persistence_id = 'erase'",
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert!(
        row.get::<_, Vec<u8>>(1).is_empty(),
        "the state's bytes are gone"
    );
    assert_eq!(row.get::<_, String>(2), "durablestore/deleted");
    db.cleanup().await.unwrap();
}

/// Listing and catch-up read the primary key's index: on a 100,000-row table, neither makes
/// PostgreSQL scan the table.
#[actix::test]
async fn listings_use_the_primary_key_index_on_a_large_table() {
    let (db, store) = common::store().await;
    let client = db.client().await.unwrap();
    let table = format!("{}.states_store", db.schema());
    client
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT 'id-' || lpad(i::text, 6, '0'), 1, '\\x', \
             'google.protobuf.Any', 0, i % 128 FROM generate_series(1, 100000) i; \
             ANALYZE {table};"
        ))
        .await
        .unwrap();
    let scans = || async {
        let row = client
            .query_one(
                "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname = 'states_store'",
                &[&db.schema()],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    let (seq_before, idx_before) = scans().await;

    let mut after = None;
    for _ in 0..6 {
        let page = store
            .send(ListPersistenceIds {
                after: after.clone(),
                limit: 1000,
            })
            .await
            .unwrap()
            .unwrap();
        after = page.last().cloned();
    }
    let mut after = None;
    for _ in 0..6 {
        let page = store
            .send(CurrentStates {
                shard: Some(5),
                after: after.clone(),
                limit: 100,
            })
            .await
            .unwrap();
        // The rows' payload is no valid `Any`: a corrupt-row error names the id, which is
        // enough to page on.
        after = match page {
            Ok(states) => states.last().map(|s| s.persistence_id.clone()),
            Err(Error::CorruptState { persistence_id, .. }) => Some(persistence_id),
            Err(other) => panic!("{other:?}"),
        };
    }
    // Statistics reach the shared counters when a backend goes idle (within seconds).
    let mut counts = scans().await;
    for _ in 0..40 {
        if counts.1 >= idx_before + 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        counts = scans().await;
    }
    assert!(
        counts.1 >= idx_before + 12,
        "index scans: {idx_before} -> {}",
        counts.1
    );
    assert_eq!(counts.0, seq_before, "no sequential scan of the table");
    db.cleanup().await.unwrap();
}
