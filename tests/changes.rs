//! The change feed (`Config::change_feed`): what a consumer may rely on, each guarantee shown
//! against the real server, every test in a schema of its own.

mod common;

#[path = "../examples/projection.rs"]
#[allow(dead_code)]
mod projection;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bank::{Account, Deposit};
use common::{account, state};
use durablestore_postgres::futures_util::StreamExt;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::tokio_postgres::Client;
use durablestore_postgres::{
    Change, Config, DurableState, DurableStore, EntityRegistry, Error, InvalidInput, Offset,
    Ownership, WriteOutcome,
};
use prost::Message;

/// The latest version of each id, and whether it is deleted.
type Versions = HashMap<String, (u64, bool)>;

/// What one consumer saw: per id its latest version, checked never to go backwards, and the
/// offset of its last change, checked always to grow.
#[derive(Default, Debug)]
struct View {
    latest: Versions,
    offset: Offset,
    changes: usize,
}

impl View {
    fn apply(&mut self, change: Change) {
        assert!(
            change.offset > self.offset,
            "offsets must grow: {} after {}",
            change.offset,
            self.offset
        );
        if let Some(&(seen, _)) = self.latest.get(&change.persistence_id) {
            assert!(
                change.version >= seen,
                "`{}` went back from version {seen} to {}",
                change.persistence_id,
                change.version
            );
        }
        if let Some(state) = &change.state {
            assert_eq!(state.version_number, change.version);
            assert_eq!(state.persistence_id, change.persistence_id);
        }
        self.offset = change.offset;
        self.latest.insert(
            change.persistence_id,
            (change.version, change.state.is_none()),
        );
        self.changes += 1;
    }

    /// The view as the table would show it: purged ids (deleted, no row) left out.
    fn as_table(&self, table: &Versions) -> Versions {
        self.latest
            .iter()
            .filter(|(id, (_, deleted))| !*deleted || table.contains_key(*id))
            .map(|(id, v)| (id.clone(), *v))
            .collect()
    }
}

/// A store with the feed on `db`'s table, installed, polling often.
async fn feed_store(db: &TestDatabase) -> DurableStore {
    let config = db
        .config()
        .change_feed(true)
        .change_poll_interval(Duration::from_millis(50));
    let store = DurableStore::new(config).expect("valid config");
    store.create_schema().await.expect("feed installed");
    store
}

/// Every row of the table: version, and whether it is a tombstone.
async fn table(client: &Client, schema: &str) -> Versions {
    client
        .query(
            &format!(
                r#"SELECT persistence_id, version_number, state_manifest = 'durablestore/deleted'
                   FROM "{schema}".states_store"#
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let version: i64 = row.get(1);
            (row.get(0), (version as u64, row.get(2)))
        })
        .collect()
}

/// Follows the feed from `from` in a task, into a shared view.
fn follow(store: &DurableStore, from: Offset) -> (Arc<Mutex<View>>, tokio::task::JoinHandle<()>) {
    let view = Arc::new(Mutex::new(View {
        offset: from,
        ..View::default()
    }));
    let mut changes = store.changes(from);
    let shared = view.clone();
    let task = tokio::spawn(async move {
        while let Some(change) = changes.next().await {
            shared.lock().unwrap().apply(change.expect("a change"));
        }
    });
    (view, task)
}

/// Waits (up to a minute: a bound on a hang, not a timing claim) until the view shows the
/// table, then asserts that it does.
async fn until_view_is_table(view: &Mutex<View>, client: &Client, schema: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let truth = table(client, schema).await;
        let seen = view.lock().unwrap().as_table(&truth);
        if seen == truth || tokio::time::Instant::now() > deadline {
            assert_eq!(seen, truth, "the consumer's view differs from the table");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A row as eGo's Go store writes it: its upsert of the six columns, the state as a
/// `google.protobuf.Any`, the timestamp in seconds.
async fn go_upsert(client: &Client, schema: &str, id: &str, version: i64, balance: i64) {
    let any = prost_types::Any::from_msg(&account(id, balance)).unwrap();
    client
        .execute(
            &format!(
                r#"INSERT INTO "{schema}".states_store
                   (persistence_id, version_number, state_payload, state_manifest, timestamp, shard_number)
                   VALUES ($1, $2, $3, 'google.protobuf.Any', $4, 0)
                   ON CONFLICT (persistence_id) DO UPDATE SET
                   version_number = EXCLUDED.version_number, state_payload = EXCLUDED.state_payload,
                   state_manifest = EXCLUDED.state_manifest, timestamp = EXCLUDED.timestamp,
                   shard_number = EXCLUDED.shard_number"#
            ),
            &[&id, &version, &any.encode_to_vec(), &1_700_000_000_i64],
        )
        .await
        .unwrap();
}

/// Waits until every transaction that began before now has ended, so that the feed can
/// deliver everything committed so far. Other tests' transactions (held open on purpose) hold
/// the whole cluster's feed back for a while: that is the feed's rule, not a failure.
async fn settle(db: &TestDatabase) {
    let client = db.client().await.unwrap();
    let now: String = client
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let past: bool = client
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::text::xid8",
                &[&now],
            )
            .await
            .unwrap()
            .get(0);
        if past {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a transaction never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Everything committed so far, page by page.
async fn drain(db: &TestDatabase, store: &DurableStore, view: &mut View) {
    settle(db).await;
    drain_now(store, view).await;
}

/// All the changes the feed can deliver now, page by page.
async fn drain_now(store: &DurableStore, view: &mut View) {
    loop {
        let page = store.changes_page(&view.offset, 7).await.unwrap();
        if page.next == view.offset {
            return;
        }
        for change in page.changes {
            view.apply(change);
        }
        view.offset = page.next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_transaction_holds_the_feed_back_instead_of_being_skipped() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    store.write(state("before", 1, 1)).await.unwrap();
    settle(&db).await;

    // Takes its transaction id now, and commits last.
    let late = db.client().await.unwrap();
    late.batch_execute("BEGIN").await.unwrap();
    go_upsert(&late, db.schema(), "late", 1, 5).await;
    // Commits after `late` took its id: a sequence or clock cursor would pass it by.
    store.write(state("after", 1, 2)).await.unwrap();

    let mut view = View::default();
    drain_now(&store, &mut view).await;
    assert_eq!(
        view.latest.keys().collect::<Vec<_>>(),
        vec!["before"],
        "nothing at or after the running transaction is delivered"
    );
    let held_at = view.offset;

    late.batch_execute("COMMIT").await.unwrap();
    drain(&db, &store, &mut view).await;
    assert!(view.offset > held_at);
    let client = db.client().await.unwrap();
    assert_eq!(view.as_table(&table(&client, db.schema()).await).len(), 3);
    assert_eq!(view.latest["late"], (1, false));
    assert_eq!(view.latest["after"], (1, false));
    db.cleanup().await.unwrap();
}

/// Transaction 1 takes its id, transaction 2 writes version 2 and commits, then 1 writes
/// version 3: the later version has the smaller id. No consumer sees 3 then 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_version_with_a_smaller_transaction_id_never_goes_backwards() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    store.write(state("a", 1, 10)).await.unwrap();

    let first = db.client().await.unwrap();
    first.batch_execute("BEGIN").await.unwrap();
    go_upsert(&first, db.schema(), "other", 1, 0).await;
    assert_eq!(
        store.write(state("a", 2, 20)).await.unwrap(),
        WriteOutcome::Written
    );
    let mut view = View::default();
    drain_now(&store, &mut view).await;
    first
        .execute(
            &format!(
                r#"UPDATE "{}".states_store SET version_number = 3 WHERE persistence_id = 'a'
                   AND version_number = 2"#,
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    first.batch_execute("COMMIT").await.unwrap();
    drain(&db, &store, &mut view).await;
    assert_eq!(view.latest["a"], (3, false));
    assert_eq!(view.latest["other"], (1, false));

    // And from the beginning, after the fact, the same.
    let mut replay = View::default();
    drain(&db, &store, &mut replay).await;
    assert_eq!(replay.latest, view.latest);
    db.cleanup().await.unwrap();
}

/// The proof of the issue: writers, deletes and transactions held open on purpose, one
/// consumer following from the beginning: once the writers stop and the feed drains, the
/// consumer's view is the table, and no version ever went backwards (checked per change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_late_commits_end_in_the_table() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let (view, consumer) = follow(&store, Offset::BEGINNING);

    let mut writers = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..4 {
                let id = format!("w{w}-{n}");
                for version in 1..=6 {
                    store
                        .write(state(&id, version, version as i64))
                        .await
                        .unwrap();
                }
                if n == 0 {
                    store.delete(id, 7).await.unwrap();
                }
            }
        }));
    }
    // Transactions that take their id early and commit late, while the writers run.
    for h in 0..4 {
        let late = db.client().await.unwrap();
        late.batch_execute("BEGIN").await.unwrap();
        go_upsert(&late, db.schema(), &format!("held-{h}"), 1, h).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        go_upsert(&late, db.schema(), &format!("held-{h}"), 2, h).await;
        late.batch_execute("COMMIT").await.unwrap();
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let client = db.client().await.unwrap();
    until_view_is_table(&view, &client, db.schema()).await;
    assert_eq!(table(&client, db.schema()).await.len(), 16 * 4 + 4);
    consumer.abort();
    db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_and_resumes_from_its_stored_offset_misses_nothing() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for version in 1..=20 {
                for n in 0..10 {
                    let id = format!("r{n}");
                    store.write(state(&id, version, 0)).await.unwrap();
                }
            }
        })
    };
    // The first run takes some changes, then "crashes", leaving only its stored text.
    let mut first = View::default();
    let mut changes = store.changes(Offset::BEGINNING);
    while first.changes < 25 {
        first.apply(changes.next().await.unwrap().unwrap());
    }
    drop(changes);
    let stored: Vec<u8> = first.offset.to_bytes();

    let resumed_from = Offset::from_bytes(&stored).unwrap();
    let (view, consumer) = follow(&store, resumed_from);
    {
        // What the first run knew is where the second one starts.
        let mut v = view.lock().unwrap();
        v.latest = first.latest.clone();
    }
    writer.await.unwrap();
    let client = db.client().await.unwrap();
    until_view_is_table(&view, &client, db.schema()).await;
    consumer.abort();
    db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_delivered_and_purges_never_bring_an_id_back() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    for version in 1..=2 {
        store.write(state("gone", version, 1)).await.unwrap();
        store.write(state("kept", version, 1)).await.unwrap();
    }
    let mut caught_up = View::default();
    drain(&db, &store, &mut caught_up).await;
    assert_eq!(caught_up.latest["gone"], (2, false));

    store.delete("gone", 3).await.unwrap();
    let mut saw_tombstone = View::default();
    drain(&db, &store, &mut saw_tombstone).await;
    assert_eq!(saw_tombstone.latest["gone"], (3, true));

    // Purged are the tombstones stamped before now: let the clock pass the delete's.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge_deleted(Duration::ZERO).await.unwrap(), 1);
    store.compact_changes().await.unwrap();
    // Behind the delete, at the tombstone, or from the beginning: deleted at version 3, never
    // alive again.
    for mut view in [caught_up, saw_tombstone, View::default()] {
        drain(&db, &store, &mut view).await;
        assert_eq!(view.latest["gone"], (3, true));
        assert_eq!(view.latest["kept"], (2, false));
    }
    // A plain SQL DELETE of a live row is a deletion too.
    let client = db.client().await.unwrap();
    client
        .execute(
            &format!(
                r#"DELETE FROM "{}".states_store WHERE persistence_id = 'kept'"#,
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    let mut view = View::default();
    drain(&db, &store, &mut view).await;
    assert_eq!(view.latest["kept"], (2, true));
    db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_format_rows_written_by_plain_sql_are_delivered() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let client = db.client().await.unwrap();
    go_upsert(&client, db.schema(), "go-1", 1, 100).await;
    go_upsert(&client, db.schema(), "go-1", 2, 200).await;
    go_upsert(&client, db.schema(), "go-2", 1, 7).await;

    settle(&db).await;
    let page = store.changes_page(&Offset::BEGINNING, 100).await.unwrap();
    let states: HashMap<String, DurableState> = page
        .changes
        .into_iter()
        .map(|c| (c.persistence_id, c.state.unwrap()))
        .collect();
    assert_eq!(states.len(), 2);
    let go1: common::AccountState = states["go-1"].decode_state().unwrap();
    assert_eq!((states["go-1"].version_number, go1.balance), (2, 200));
    // The Go store's timestamp is in seconds, and read as written.
    assert_eq!(states["go-2"].timestamp, 1_700_000_000);
    db.cleanup().await.unwrap();
}

/// The store's own writes log themselves in their statements: one entry per statement, none
/// added by a trigger, and each delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_own_writes_are_logged_once_by_their_own_statements() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let client = db.client().await.unwrap();
    for version in 1..=3 {
        store
            .write(state("own", version, 10 * version as i64))
            .await
            .unwrap();
    }
    store.delete("own", 4).await.unwrap();
    let entries: Vec<(i32, Vec<String>)> = client
        .query(
            &format!(
                r#"SELECT n, ids FROM "{}".states_store_changes ORDER BY xid, seq"#,
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(entries, vec![(1, vec!["own".to_owned()]); 4]);
    let mut view = View::default();
    drain(&db, &store, &mut view).await;
    assert_eq!(view.latest["own"], (4, true));
    db.cleanup().await.unwrap();
}

/// Every form of the crate's writes logs itself, once: multi-row and single-row, checked and
/// unchecked, and fenced by ownership. Each acknowledged write is one id in the log, and the
/// consumer's view is the table.
#[actix::test]
async fn every_form_of_the_crates_writes_logs_itself_once() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let unchecked = DurableStore::new(
        db.config()
            .change_feed(true)
            .version_check(durablestore_postgres::VersionCheck::Unchecked),
    )
    .unwrap();
    let registry = EntityRegistry::builder(store.clone(), |id: &str| Account { id: id.into() })
        .ownership(Ownership::leased("replica-a", Duration::from_secs(10)))
        .idle_timeout(None)
        .start()
        .unwrap();
    let owned: Vec<String> = (0..50).map(|i| format!("o-{i}")).collect();
    let mut acknowledged = 0_i64;
    for round in 1..=3_u64 {
        // Concurrent writes: batches of many rows, and some of one.
        let checked = (0..50).map(|i| store.write(state(&format!("c-{i}"), round, 1)));
        let last_wins = (0..50).map(|i| unchecked.write(state(&format!("u-{i}"), round, 1)));
        let commands = owned.iter().map(|id| registry.send(id, Deposit(1)));
        let (checked, last_wins, commands) = futures_util::join!(
            futures_util::future::join_all(checked),
            futures_util::future::join_all(last_wins),
            futures_util::future::join_all(commands)
        );
        for outcome in checked.into_iter().chain(last_wins) {
            assert_eq!(outcome.unwrap(), WriteOutcome::Written);
            acknowledged += 1;
        }
        for reply in commands {
            assert_eq!(reply.unwrap().1, round);
            acknowledged += 1;
        }
        // Alone: the single-row forms.
        store.write(state("c-alone", round, 1)).await.unwrap();
        unchecked.write(state("u-alone", round, 1)).await.unwrap();
        registry.send("o-alone", Deposit(1)).await.unwrap();
        acknowledged += 3;
    }
    registry.stop().await;
    let client = db.client().await.unwrap();
    let logged: i64 = client
        .query_one(
            &format!(
                r#"SELECT sum(n)::int8 FROM "{}".states_store_changes"#,
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, acknowledged, "each acknowledged write logged once");
    let mut view = View::default();
    drain(&db, &store, &mut view).await;
    let truth = table(&client, db.schema()).await;
    assert_eq!(view.as_table(&truth), truth);
    assert_eq!(truth.len(), 153);
    db.cleanup().await.unwrap();
}

/// A store that started writing before another process installed the feed is refused once
/// per connection (nothing applied), then sends its writes logged: none is lost, none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_started_before_the_feed_was_installed_logs_its_writes_from_then_on() {
    let db = TestDatabase::new().await.unwrap();
    let early = DurableStore::new(db.config()).unwrap();
    early.create_schema().await.unwrap();
    for id in ["e-1", "e-2"] {
        early.write(state(id, 1, 1)).await.unwrap();
    }
    let feed = feed_store(&db).await;
    let (view, task) = follow(&feed, Offset::BEGINNING);
    for version in 2..=4 {
        let writes = ["e-1", "e-2", "e-3"].map(|id| {
            let version = if id == "e-3" { version - 1 } else { version };
            early.write(state(id, version, version as i64))
        });
        for outcome in durablestore_postgres::futures_util::future::join_all(writes).await {
            assert_eq!(outcome.unwrap(), WriteOutcome::Written);
        }
    }
    let client = db.client().await.unwrap();
    settle(&db).await;
    until_view_is_table(&view, &client, db.schema()).await;
    task.abort();
    db.cleanup().await.unwrap();
}

/// Plain UPDATE statements by another client (not an upsert): the rows its transaction
/// wrote are found at the statement's end, also inside a savepoint, and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_updates_by_other_clients_are_delivered_also_from_a_savepoint() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let mut client = db.client().await.unwrap();
    let schema = db.schema();
    for id in ["p-1", "p-2", "p-3"] {
        go_upsert(&client, schema, id, 1, 1).await;
    }
    let mut view = View::default();
    drain(&db, &store, &mut view).await;
    let update = format!(
        r#"UPDATE "{schema}".states_store SET version_number = version_number + 1
           WHERE persistence_id = ANY($1)"#
    );
    let mut transaction = client.transaction().await.unwrap();
    transaction.execute(&update, &[&vec!["p-1"]]).await.unwrap();
    let savepoint = transaction.savepoint("nested").await.unwrap();
    savepoint
        .execute(&update, &[&vec!["p-2", "p-3"]])
        .await
        .unwrap();
    savepoint.commit().await.unwrap();
    // A rolled-back savepoint's rows are not this transaction's.
    let dropped = transaction.savepoint("dropped").await.unwrap();
    dropped.execute(&update, &[&vec!["p-1"]]).await.unwrap();
    dropped.rollback().await.unwrap();
    transaction.commit().await.unwrap();
    drain(&db, &store, &mut view).await;
    let expected: Versions = ["p-1", "p-2", "p-3"]
        .into_iter()
        .map(|id| (id.to_owned(), (2, false)))
        .collect();
    assert_eq!(view.latest, expected);
    assert_eq!(table(&client, schema).await, expected);
    db.cleanup().await.unwrap();
}

/// A table with the previous version's triggers (statement triggers with transition tables
/// on insert and update, which every update paid for) gets the current ones when the feed is
/// installed again, its log kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_again_replaces_the_previous_versions_triggers() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    store.write(state("kept", 1, 1)).await.unwrap();
    let client = db.client().await.unwrap();
    let t = format!(r#""{}".states_store"#, db.schema());
    for (name, event) in [
        ("durablestore_changes_insert", "INSERT"),
        ("durablestore_changes_update", "UPDATE"),
    ] {
        client
            .batch_execute(&format!(
                "CREATE TRIGGER {name} AFTER {event} ON {t} REFERENCING NEW TABLE AS new_rows \
                 FOR EACH STATEMENT EXECUTE FUNCTION {}_changes_log()",
                t
            ))
            .await
            .unwrap();
    }
    store.create_schema().await.unwrap();
    let triggers: Vec<String> = client
        .query(
            &format!(
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = '{t}'::regclass \
                 AND NOT tgisinternal ORDER BY tgname"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        triggers,
        [
            "durablestore_changes_delete",
            "durablestore_changes_row",
            "durablestore_changes_scan",
            "durablestore_changes_start",
        ]
    );
    store.write(state("kept", 2, 2)).await.unwrap();
    let mut view = View::default();
    drain(&db, &store, &mut view).await;
    assert_eq!(view.latest["kept"], (2, false));
    assert_eq!(log_rows(&client, db.schema()).await, 2, "logged once each");
    db.cleanup().await.unwrap();
}

/// Timestamps that repeat and go backwards (eGo v3 writes seconds, clocks step back): the
/// feed's order is the commits', whatever the column says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timestamp_column_is_never_the_offset() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let mut view = View::default();
    for (n, timestamp) in [5_000_i64, 5_000, 4_000, 0, -1].into_iter().enumerate() {
        let id = format!("t{n}");
        store
            .write(DurableState::new(id, 1, &account("x", 0)).with_timestamp(timestamp))
            .await
            .unwrap();
        drain(&db, &store, &mut view).await;
        assert_eq!(
            view.latest.len(),
            n + 1,
            "the write at timestamp {timestamp}"
        );
    }
    // A new version stamped earlier than the old one is still a change.
    store
        .write(DurableState::new("t0", 2, &account("x", 0)).with_timestamp(1))
        .await
        .unwrap();
    drain(&db, &store, &mut view).await;
    assert_eq!(view.latest["t0"], (2, false));
    db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_the_feed_on_an_existing_table_delivers_its_rows() {
    let db = TestDatabase::new().await.unwrap();
    let plain = DurableStore::new(db.config()).unwrap();
    plain.create_schema().await.unwrap();
    for n in 0..30 {
        plain.write(state(&format!("old-{n}"), 1, n)).await.unwrap();
    }
    plain.delete("old-0", 2).await.unwrap();
    let store = feed_store(&db).await;
    // Installing twice changes nothing (the migration is idempotent).
    store.create_schema().await.unwrap();
    let mut view = View::default();
    drain(&db, &store, &mut view).await;
    let client = db.client().await.unwrap();
    assert_eq!(view.as_table(&table(&client, db.schema()).await).len(), 30);
    assert_eq!(view.latest["old-0"], (2, true));
    assert_eq!(view.changes, 30, "one entry per existing row");
    db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_the_feed_pays_nothing_and_says_so() {
    let db = TestDatabase::new().await.unwrap();
    let store = DurableStore::new(db.config()).unwrap();
    store.create_schema().await.unwrap();
    store.write(state("a", 1, 1)).await.unwrap();
    assert!(!db.table_exists("states_store_changes").await.unwrap());
    let client = db.client().await.unwrap();
    let triggers: i64 = client
        .query_one(
            &format!(
                r#"SELECT count(*) FROM pg_trigger
                   WHERE tgrelid = '"{}".states_store'::regclass AND NOT tgisinternal"#,
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    let first = store.changes(Offset::BEGINNING).next().await.unwrap();
    assert!(matches!(first, Err(Error::InvalidConfig(m)) if m.contains("change_feed")));
    assert!(matches!(
        store.changes_page(&Offset::BEGINNING, 10).await,
        Err(Error::InvalidConfig(_))
    ));
    db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_that_changes_nothing() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    store.write(state("a", 1, 1)).await.unwrap();
    for limit in [0, 10_001] {
        assert!(matches!(
            store.changes_page(&Offset::BEGINNING, limit).await,
            Err(Error::InvalidInput(InvalidInput::LimitOutOfRange { .. }))
        ));
    }
    assert!("12:a".parse::<Offset>().is_err());
    // On a Citus distributed table the feed is refused up front.
    let citus = db
        .config()
        .change_feed(true)
        .distribution(durablestore_postgres::Distribution::Citus);
    assert!(
        matches!(DurableStore::new(citus), Err(Error::InvalidConfig(m)) if m.contains("Citus"))
    );
    let long = db.config().table("t".repeat(60)).change_feed(true);
    assert!(matches!(DurableStore::new(long), Err(Error::InvalidConfig(m)) if m.contains("51")));
    settle(&db).await;
    let page = store.changes_page(&Offset::BEGINNING, 10).await.unwrap();
    assert_eq!(page.changes.len(), 1);
    db.cleanup().await.unwrap();
}

/// `examples/projection.rs`, crashed in the middle of a page and restarted: its totals are
/// the table's (exactly once: nothing lost, nothing counted twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_example_restarted_in_the_middle_keeps_right_totals() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let mut client = db.client().await.unwrap();
    projection::create_read_model(&client, db.schema())
        .await
        .unwrap();
    let write = |n: i64, version: u64| {
        let account = projection::Account {
            balance: n * 1000 + version as i64,
        };
        DurableState::new(format!("acct-{n}"), version, &account)
    };
    for version in 1..=3 {
        for n in 0..40 {
            store.write(write(n, version)).await.unwrap();
        }
    }
    settle(&db).await;
    let applied = projection::project(&store, &mut client, db.schema(), Some(50))
        .await
        .unwrap();
    // A page delivers each id once: 40 changes in the first, the crash in the second.
    assert_eq!(applied, 50, "crashed in the middle of its second page");
    // Meanwhile, more writes and deletions.
    for n in 0..40 {
        store.write(write(n, 4)).await.unwrap();
    }
    for n in 0..5 {
        store.delete(format!("acct-{n}"), 5).await.unwrap();
    }
    settle(&db).await;
    projection::project(&store, &mut client, db.schema(), None)
        .await
        .unwrap();
    let expected_sum: i64 = (5..40).map(|n| n * 1000 + 4).sum();
    assert_eq!(
        projection::totals(&client, db.schema()).await.unwrap(),
        (35, expected_sum)
    );
    db.cleanup().await.unwrap();
}

async fn one_more_change_arrives(config: Config, db: &TestDatabase) {
    let store = DurableStore::new(config).unwrap();
    store.create_schema().await.unwrap();
    store.write(state("first", 1, 1)).await.unwrap();
    let mut changes = store.changes(Offset::BEGINNING);
    let first = changes.next().await.unwrap().unwrap();
    assert_eq!(first.persistence_id, "first");
    // The stream has read everything and waits; commits now must reach it. Several, since
    // other tests' open transactions may hold the feed back when the first one notifies.
    let writer = store.clone();
    let writing = tokio::spawn(async move {
        for version in 1..=300 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.write(state("second", version, 1)).await.unwrap();
        }
    });
    let second = tokio::time::timeout(Duration::from_secs(60), changes.next())
        .await
        .expect("the waiting stream was woken")
        .unwrap()
        .unwrap();
    assert_eq!(second.persistence_id, "second");
    writing.abort();
    let _ = db;
}

/// With polling an hour apart, only a notification can wake the stream in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_a_waiting_stream() {
    let db = TestDatabase::new().await.unwrap();
    let config = db
        .config()
        .change_feed(true)
        .change_poll_interval(Duration::from_secs(3600));
    one_more_change_arrives(config, &db).await;
    db.cleanup().await.unwrap();
}

/// Behind a transaction-mode pooler no `LISTEN` is sent: the stream polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_transaction_pooling_the_stream_polls() {
    let db = TestDatabase::new().await.unwrap();
    let config = db
        .config()
        .change_feed(true)
        .transaction_pooling(true)
        .change_poll_interval(Duration::from_millis(50));
    one_more_change_arrives(config, &db).await;
    db.cleanup().await.unwrap();
}

/// One statement writing more rows than one log entry holds: its ids are logged in entries of
/// 1,000, and a consumer paging through them, from anywhere in the middle, gets every id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_of_thousands_of_rows_is_delivered_page_by_page() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let client = db.client().await.unwrap();
    let schema = db.schema();
    client
        .execute(
            &format!(
                r#"INSERT INTO "{schema}".states_store
                   SELECT 'bulk-' || g, 1, $1::bytea, 'google.protobuf.Any', 0, 0
                   FROM generate_series(1, 2500) g"#
            ),
            &[&any_payload()],
        )
        .await
        .unwrap();
    // Another client's inserts are logged row by row; its plain UPDATE by one scan at the
    // statement's end, in entries of 1,000 ids.
    client
        .execute(
            &format!(r#"UPDATE "{schema}".states_store SET version_number = 2"#),
            &[],
        )
        .await
        .unwrap();
    settle(&db).await;
    assert_eq!(store.compact_changes().await.unwrap(), 2500);
    assert_eq!(
        log_rows(&client, schema).await,
        3,
        "2,500 ids in entries of at most 1,000"
    );
    let mut seen = std::collections::HashSet::new();
    let mut from = Offset::BEGINNING;
    loop {
        let page = store.changes_page(&from, 700).await.unwrap();
        if page.next == from {
            break;
        }
        assert!(page.changes.len() <= 700);
        seen.extend(page.changes.into_iter().map(|c| c.persistence_id));
        from = page.next;
    }
    assert_eq!(seen.len(), 2500);
    db.cleanup().await.unwrap();
}

/// Compaction blanks an id's entries before its latest (positions never move) and deletes
/// the log rows left empty: a consumer resuming from an offset in the middle of a compacted
/// entry, or from the beginning, still gets every id at its latest version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_in_the_middle_of_an_entry_skips_nothing() {
    let db = TestDatabase::new().await.unwrap();
    let store = feed_store(&db).await;
    let client = db.client().await.unwrap();
    let schema = db.schema();
    client
        .execute(
            &format!(
                r#"INSERT INTO "{schema}".states_store
                   SELECT id, 1, $1::bytea, 'google.protobuf.Any', 0, 0
                   FROM unnest(ARRAY['x', 'y', 'z']) AS id"#
            ),
            &[&any_payload()],
        )
        .await
        .unwrap();
    // One plain UPDATE statement, one entry of three ids; the inserts' entries are stale.
    client
        .execute(
            &format!(r#"UPDATE "{schema}".states_store SET version_number = 1"#),
            &[],
        )
        .await
        .unwrap();
    settle(&db).await;
    assert_eq!(store.compact_changes().await.unwrap(), 3);
    assert_eq!(log_rows(&client, schema).await, 1);
    let first = store.changes_page(&Offset::BEGINNING, 1).await.unwrap();
    let [change] = &first.changes[..] else {
        panic!("{:?}", first.changes)
    };
    let early = change.persistence_id.clone();
    // Two more entries of the id delivered first: its entry in the first one is stale.
    for version in 2..=3_i64 {
        client
            .execute(
                &format!(
                    r#"UPDATE "{schema}".states_store SET version_number = $1
                       WHERE persistence_id = $2"#
                ),
                &[&version, &early],
            )
            .await
            .unwrap();
    }
    settle(&db).await;
    assert_eq!(store.compact_changes().await.unwrap(), 2);
    assert_eq!(
        log_rows(&client, schema).await,
        2,
        "the blanked first entry and the latest are left"
    );
    for from in [first.next, Offset::BEGINNING] {
        let mut view = View {
            offset: from,
            ..View::default()
        };
        drain(&db, &store, &mut view).await;
        let expected: Versions = [("x", 1), ("y", 1), ("z", 1)]
            .into_iter()
            .map(|(id, v)| {
                let v = if id == early { 3 } else { v };
                (id.to_owned(), (v, false))
            })
            .collect();
        let mut latest = view.latest.clone();
        if from != Offset::BEGINNING {
            // Resumed after the first change: the other two, and the latest of the first.
            assert_eq!(latest.len(), 3, "{latest:?}");
        }
        latest.retain(|id, _| expected.contains_key(id));
        assert_eq!(latest, expected);
    }
    // Nothing is left to compact.
    assert_eq!(store.compact_changes().await.unwrap(), 0);
    db.cleanup().await.unwrap();
}

/// A table whose feed was installed by an earlier version (a log of one row per entry) is
/// moved to the current log when the feed is installed again, its entries kept, its triggers
/// writing the current log from then on; an offset of the earlier text resumes at the start
/// of its transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_the_earlier_layout_is_moved_and_its_offsets_still_resume() {
    let db = TestDatabase::new().await.unwrap();
    DurableStore::new(db.config())
        .unwrap()
        .create_schema()
        .await
        .unwrap();
    let client = db.client().await.unwrap();
    let schema = db.schema();
    client
        .batch_execute(&format!(
            r#"CREATE TABLE "{schema}".states_store_changes (
                   xid XID8 NOT NULL, persistence_id TEXT COLLATE "C" NOT NULL,
                   version_number BIGINT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE);
               CREATE INDEX states_store_changes_xid
                   ON "{schema}".states_store_changes (xid, persistence_id);
               CREATE FUNCTION "{schema}".states_store_changes_log() RETURNS trigger
                   LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
               CREATE TRIGGER durablestore_changes_insert AFTER INSERT ON "{schema}".states_store
                   REFERENCING NEW TABLE AS new_rows
                   FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".states_store_changes_log();
               CREATE TRIGGER durablestore_changes_update AFTER UPDATE ON "{schema}".states_store
                   REFERENCING NEW TABLE AS new_rows
                   FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".states_store_changes_log();
               CREATE TRIGGER durablestore_changes_delete AFTER DELETE ON "{schema}".states_store
                   REFERENCING OLD TABLE AS old_rows
                   FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".states_store_changes_log();"#
        ))
        .await
        .unwrap();
    client
        .execute(
            &format!(
                r#"WITH rows AS (INSERT INTO "{schema}".states_store
                       SELECT 'old-' || g, 1, $1::bytea, 'google.protobuf.Any', 0, 0
                       FROM generate_series(1, 5) g RETURNING persistence_id, version_number)
                   INSERT INTO "{schema}".states_store_changes
                   SELECT pg_current_xact_id(), persistence_id, version_number FROM rows"#
            ),
            &[&any_payload()],
        )
        .await
        .unwrap();
    let old_xid: String = client
        .query_one(
            &format!(r#"SELECT max(xid)::text FROM "{schema}".states_store_changes"#),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let store = feed_store(&db).await;
    // Installing again changes nothing more.
    store.create_schema().await.unwrap();
    store.write(state("new", 1, 1)).await.unwrap();
    let stored: Offset = format!("{old_xid}/old-3").parse().unwrap();
    for from in [Offset::BEGINNING, stored] {
        let mut view = View {
            offset: from,
            ..View::default()
        };
        drain(&db, &store, &mut view).await;
        let mut ids: Vec<&str> = view.latest.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["new", "old-1", "old-2", "old-3", "old-4", "old-5"]);
    }
    assert!(!db.table_exists("states_store_changes_v1").await.unwrap());
    db.cleanup().await.unwrap();
}

/// A valid state payload (a `google.protobuf.Any`), as eGo's Go store writes it.
fn any_payload() -> Vec<u8> {
    prost_types::Any::from_msg(&account("any", 1))
        .unwrap()
        .encode_to_vec()
}

/// The rows of the feed's log.
async fn log_rows(client: &Client, schema: &str) -> i64 {
    client
        .query_one(
            &format!(r#"SELECT count(*) FROM "{schema}".states_store_changes"#),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}
