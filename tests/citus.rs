//! The store on a Citus distributed table, and its multi-row `VALUES` write path.
//!
//! Every scenario runs twice:
//! - `citus::…`: on the Citus coordinator named by `CITUS_URL`, on a table distributed by
//!   `persistence_id`, with [`Distribution::Detect`] (the store finds Citus by itself). Without
//!   `CITUS_URL` these are reported as ignored, and the run says why.
//! - `values_on_one_server::…`: on the test server (`DATABASE_URL`), with
//!   [`Distribution::Citus`] forced, so the `VALUES` path runs in every CI run.
//!
//! Runs with its own harness (libtest-mimic) so that a missing cluster shows as "ignored".

#[allow(dead_code)] // `main` runs only as the example binary
#[path = "../examples/bank_account.rs"]
mod bank_account;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    Config, Distribution, DurableState, DurableStore, Error, VersionCheck, WriteOutcome,
};
use futures_util::future::join_all;
use libtest_mimic::{Arguments, Failed, Trial};

type Scenario = fn(TestDatabase, Config) -> Pin<Box<dyn Future<Output = ()>>>;

fn main() {
    let args = Arguments::from_args();
    let citus_url = std::env::var("CITUS_URL").ok();
    if citus_url.is_none() {
        eprintln!("tests/citus.rs: CITUS_URL is not set: the citus:: tests are skipped (ignored)");
    }
    let scenarios: [(&str, Scenario); 14] = [
        ("conflicts_and_retries_in_one_batch", |db, c| {
            Box::pin(conflicts_and_retries_in_one_batch(db, c))
        }),
        ("a_version_gap_on_a_new_id_leaves_no_row", |db, c| {
            Box::pin(a_version_gap_on_a_new_id_leaves_no_row(db, c))
        }),
        (
            "concurrent_writers_of_one_entity_never_both_win",
            |db, c| Box::pin(concurrent_writers_of_one_entity_never_both_win(db, c)),
        ),
        ("group_commit_keeps_every_version", |db, c| {
            Box::pin(group_commit_keeps_every_version(db, c))
        }),
        ("delete_purge_and_revival", |db, c| {
            Box::pin(delete_purge_and_revival(db, c))
        }),
        ("listing_pages_over_all_shards", |db, c| {
            Box::pin(listing_pages_over_all_shards(db, c))
        }),
        ("batched_reads_find_each_id", |db, c| {
            Box::pin(batched_reads_find_each_id(db, c))
        }),
        ("entities_recover_as_acknowledged", |db, c| {
            Box::pin(entities_recover_as_acknowledged(db, c))
        }),
        ("batches_through_transaction_pooling", |db, c| {
            Box::pin(batches_through_transaction_pooling(db, c))
        }),
        ("a_timed_out_write_is_safe_to_retry", |db, c| {
            Box::pin(a_timed_out_write_is_safe_to_retry(db, c))
        }),
        ("unchecked_writes_are_last_writer_wins", |db, c| {
            Box::pin(unchecked_writes_are_last_writer_wins(db, c))
        }),
        ("create_schema_distributes_the_table", |db, c| {
            Box::pin(create_schema_distributes_the_table(db, c))
        }),
        ("a_local_table_on_the_coordinator_works_too", |db, c| {
            Box::pin(a_local_table_on_the_coordinator_works_too(db, c))
        }),
        ("ownership_claims_fences_and_moves", |db, c| {
            Box::pin(ownership_claims_fences_and_moves(db, c))
        }),
    ];
    let mut trials = Vec::new();
    for (name, scenario) in scenarios {
        let url = citus_url.clone();
        trials.push(
            Trial::test(format!("citus::{name}"), move || {
                let url = url.ok_or_else(|| Failed::from("CITUS_URL is not set"))?;
                run(Some(&url), Distribution::Detect, scenario)
            })
            .with_ignored_flag(citus_url.is_none()),
        );
        let citus_only = [
            "create_schema_distributes_the_table",
            "a_local_table_on_the_coordinator_works_too",
        ];
        if !citus_only.contains(&name) {
            trials.push(Trial::test(
                format!("values_on_one_server::{name}"),
                move || run(None, Distribution::Citus, scenario),
            ));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// Runs one scenario in an actix system, on a fresh schema of `url` (or of the test server).
fn run(url: Option<&str>, distribution: Distribution, scenario: Scenario) -> Result<(), Failed> {
    let url = url.map(str::to_owned);
    actix::System::new().block_on(async move {
        let db = match &url {
            Some(url) => TestDatabase::new_at(url).await,
            None => TestDatabase::new().await,
        }
        .map_err(|e| Failed::from(format!("test database: {e}")))?;
        let config = db.config().distribution(distribution);
        // The scenario panics on a failed assertion; the harness reports it.
        scenario(db, config).await;
        Ok(())
    })
}

fn state(id: &str, version: u64, amount: i64) -> DurableState {
    DurableState::new(
        id,
        version,
        &prost_types::Duration {
            seconds: amount,
            nanos: 0,
        },
    )
    .with_timestamp(1_700_000_000_000 + version as i64)
    .with_shard(version % 5)
}

fn amount(state: &DurableState) -> i64 {
    state
        .decode_state::<prost_types::Duration>()
        .expect("a Duration")
        .seconds
}

/// Writes all `states` at once, so they share batches; their outcomes, in order.
async fn write_all(
    store: &DurableStore,
    states: Vec<DurableState>,
) -> Vec<Result<WriteOutcome, Error>> {
    join_all(states.into_iter().map(|s| store.write(s))).await
}

/// No row is left with the negative version the `VALUES` path marks a forbidden insert with.
async fn assert_no_marked_rows(db: &TestDatabase) {
    let client = db.client().await.unwrap();
    let marked: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\".states_store WHERE version_number < 1",
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marked, 0);
}

async fn conflicts_and_retries_in_one_batch(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config).unwrap();
    let ids: Vec<String> = (0..60).map(|i| format!("acct-{i}")).collect();
    let first = write_all(&store, ids.iter().map(|id| state(id, 1, 1)).collect()).await;
    assert!(first.iter().all(|r| matches!(r, Ok(WriteOutcome::Written))));

    // One batch mixing the next version, identical retries, stale and conflicting writes.
    let mut mixed = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        mixed.push(match i % 4 {
            0 => state(id, 2, 2),
            1 => state(id, 1, 1), // identical retry
            2 => state(id, 1, 9), // version 1 again, another state
            _ => state(id, 3, 3), // a gap
        });
    }
    let outcomes = write_all(&store, mixed).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        match i % 4 {
            0 => assert!(
                matches!(outcome, Ok(WriteOutcome::Written)),
                "{i}: {outcome:?}"
            ),
            1 => assert!(
                matches!(outcome, Ok(WriteOutcome::AlreadyStored)),
                "{i}: {outcome:?}"
            ),
            _ => assert!(
                matches!(outcome, Err(Error::VersionConflict { stored: 1, .. })),
                "{i}: {outcome:?}"
            ),
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let stored = store.get(id.as_str()).await.unwrap().unwrap();
        let expected = if i % 4 == 0 { (2, 2) } else { (1, 1) };
        assert_eq!((stored.version_number, amount(&stored)), expected, "{id}");
    }
    assert_no_marked_rows(&db).await;
    db.cleanup().await.unwrap();
}

async fn a_version_gap_on_a_new_id_leaves_no_row(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config).unwrap();
    // New ids at version 1 and at versions above 1, in the same batches.
    let states: Vec<DurableState> = (0..80)
        .map(|i| {
            let version = if i % 2 == 0 { 1 } else { 2 + i % 3 };
            state(&format!("new-{i}"), version, i as i64)
        })
        .collect();
    let outcomes = write_all(&store, states).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        if i % 2 == 0 {
            assert!(
                matches!(outcome, Ok(WriteOutcome::Written)),
                "{i}: {outcome:?}"
            );
        } else {
            assert!(
                matches!(outcome, Err(Error::VersionConflict { stored: 0, .. })),
                "{i}: {outcome:?}"
            );
        }
    }
    assert_eq!(db.count_rows().await.unwrap(), 40);
    assert_no_marked_rows(&db).await;
    // The refused ids are still free: their version 1 is accepted.
    let again = write_all(
        &store,
        (0..80)
            .filter(|i| i % 2 == 1)
            .map(|i| state(&format!("new-{i}"), 1, 7))
            .collect(),
    )
    .await;
    assert!(again.iter().all(|r| matches!(r, Ok(WriteOutcome::Written))));
    assert_eq!(db.count_rows().await.unwrap(), 80);
    db.cleanup().await.unwrap();
}

async fn concurrent_writers_of_one_entity_never_both_win(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config).unwrap();
    // Two writers race every version of 20 entities, each with its own state.
    let mut won: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for version in 1..=10u64 {
        let mut states = Vec::new();
        for entity in 0..20 {
            for writer in 0..2 {
                states.push(state(
                    &format!("race-{entity}"),
                    version,
                    (version * 10 + writer) as i64,
                ));
            }
        }
        let ids: Vec<(String, u64)> = states
            .iter()
            .map(|s| (s.persistence_id.clone(), s.version_number))
            .collect();
        for (key, outcome) in ids.into_iter().zip(write_all(&store, states).await) {
            match outcome {
                Ok(WriteOutcome::Written) => *won.entry(key).or_default() += 1,
                Err(Error::VersionConflict { .. }) => {}
                other => panic!("{key:?}: {other:?}"),
            }
        }
    }
    assert_eq!(won.len(), 200, "every version of every entity was written");
    assert!(won.values().all(|&wins| wins == 1), "{won:?}");
    assert_no_marked_rows(&db).await;
    db.cleanup().await.unwrap();
}

async fn group_commit_keeps_every_version(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config).unwrap();
    let writers = (0..200).map(|w| {
        let store = store.clone();
        async move {
            let id = format!("writer-{w}");
            for version in 1..=15u64 {
                let outcome = store.write(state(&id, version, version as i64)).await;
                assert!(
                    matches!(outcome, Ok(WriteOutcome::Written)),
                    "{id} v{version}: {outcome:?}"
                );
            }
        }
    });
    join_all(writers).await;
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), min(version_number), max(version_number) FROM \"{}\".states_store",
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    let (rows, min, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, min, max), (200, 15, 15));
    db.cleanup().await.unwrap();
}

async fn delete_purge_and_revival(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config).unwrap();
    let ids: Vec<String> = (0..30).map(|i| format!("gone-{i}")).collect();
    write_all(&store, ids.iter().map(|id| state(id, 1, 1)).collect()).await;
    let deleted = join_all(ids.iter().map(|id| store.delete(id.as_str(), 2))).await;
    assert!(
        deleted
            .iter()
            .all(|r| matches!(r, Ok(WriteOutcome::Written)))
    );
    // A retried delete is already stored; a stale writer cannot bring the entity back.
    assert!(matches!(
        store.delete(ids[0].as_str(), 2).await,
        Ok(WriteOutcome::AlreadyStored)
    ));
    let stale = write_all(&store, ids.iter().map(|id| state(id, 2, 5)).collect()).await;
    assert!(
        stale
            .iter()
            .all(|r| matches!(r, Err(Error::VersionConflict { stored: 2, .. })))
    );
    for id in &ids {
        assert!(store.get(id.as_str()).await.unwrap().is_none());
        assert_eq!(store.revision(id.as_str()).await.unwrap().version, 2);
    }
    // The next version after the tombstone starts the entity again, in one batch.
    let revived = write_all(&store, ids[..10].iter().map(|id| state(id, 3, 3)).collect()).await;
    assert!(
        revived
            .iter()
            .all(|r| matches!(r, Ok(WriteOutcome::Written)))
    );
    assert_eq!(
        amount(&store.get(ids[0].as_str()).await.unwrap().unwrap()),
        3
    );
    // Tombstones are stamped now: none is older than an hour, all are older than nothing.
    assert_eq!(
        store
            .purge_deleted(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.purge_deleted(Duration::ZERO).await.unwrap(), 20);
    assert_eq!(db.count_rows().await.unwrap(), 10);
    db.cleanup().await.unwrap();
}

async fn listing_pages_over_all_shards(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config).unwrap();
    let ids: Vec<String> = (0..250).map(|i| format!("list-{i:04}")).collect();
    write_all(&store, ids.iter().map(|id| state(id, 1, 1)).collect()).await;
    write_all(
        &store,
        ids.iter().step_by(5).map(|id| state(id, 2, 2)).collect(),
    )
    .await;
    join_all(
        ids.iter()
            .skip(1)
            .step_by(10)
            .map(|id| store.delete(id.as_str(), 2)),
    )
    .await;
    let live: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 1)
        .map(|(_, id)| id.clone())
        .collect();

    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_persistence_ids(after.as_deref(), 17)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        listed.extend(page);
    }
    assert_eq!(listed, live, "every live id once, in order");

    // Shard 2 holds the states written at version 2 (`with_shard(version % 5)`).
    let mut shard_two = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .current_states(Some(2), after.as_deref(), 9)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|s| s.persistence_id.clone());
        shard_two.extend(page.into_iter().map(|s| s.persistence_id));
    }
    let expected: Vec<String> = ids.iter().step_by(5).cloned().collect();
    assert_eq!(shard_two, expected);
    db.cleanup().await.unwrap();
}

async fn batched_reads_find_each_id(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config).unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("read-{i}")).collect();
    write_all(
        &store,
        ids.iter()
            .enumerate()
            .map(|(i, id)| state(id, 1, i as i64))
            .collect(),
    )
    .await;
    // 900 concurrent reads: every stored id three times, and 300 ids never written.
    let wanted: Vec<String> = (0..3)
        .flat_map(|_| ids.iter().cloned())
        .chain((0..300).map(|i| format!("absent-{i}")))
        .collect();
    let found = join_all(wanted.iter().map(|id| store.get(id.as_str()))).await;
    for (id, found) in wanted.iter().zip(found) {
        let found = found.unwrap();
        match id.strip_prefix("read-") {
            Some(n) => assert_eq!(amount(&found.unwrap()), n.parse::<i64>().unwrap()),
            None => assert!(found.is_none(), "{id}"),
        }
    }
    db.cleanup().await.unwrap();
}

async fn entities_recover_as_acknowledged(db: TestDatabase, config: Config) {
    // The bank example: accounts behind a registry, passivated and recovered again and again;
    // it checks every balance and version against what was acknowledged.
    let bank = bank_account::Bank {
        accounts: 500,
        max_live: 100,
        commands: 4_000,
        clients: 50,
    };
    let report = bank_account::run(config, bank).await.unwrap();
    assert!(report.stats.passivations > 100, "{report:?}");
    assert_eq!(report.published, report.persisted, "{report:?}");
    db.cleanup().await.unwrap();
}

/// Behind a transaction-mode pooler each statement goes in a transaction of its own that sets
/// the statement timeout (`Config::transaction_pooling`); a batch is then a multi-shard write
/// inside a transaction block, committed by Citus with two-phase commit at `COMMIT`.
async fn batches_through_transaction_pooling(db: TestDatabase, config: Config) {
    let store = DurableStore::new(
        config
            .transaction_pooling(true)
            .statement_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let ids: Vec<String> = (0..100).map(|i| format!("pooled-{i}")).collect();
    for version in 1..=3 {
        let outcomes =
            write_all(&store, ids.iter().map(|id| state(id, version, 1)).collect()).await;
        assert!(
            outcomes
                .iter()
                .all(|r| matches!(r, Ok(WriteOutcome::Written))),
            "{outcomes:?}"
        );
    }
    let gaps = write_all(
        &store,
        (0..20).map(|i| state(&format!("gap-{i}"), 4, 1)).collect(),
    )
    .await;
    assert!(
        gaps.iter()
            .all(|r| matches!(r, Err(Error::VersionConflict { stored: 0, .. }))),
        "{gaps:?}"
    );
    assert_eq!(db.count_rows().await.unwrap(), 100);
    assert_no_marked_rows(&db).await;
    db.cleanup().await.unwrap();
}

/// A write that times out behind a row lock has an unknown outcome: on one server the cancel
/// rolls it back, while on Citus the coordinator's cancel may leave the worker's statement
/// waiting, and it commits once the lock is gone. Either way, sending the same state again
/// is safe and the entity moves on from there.
async fn a_timed_out_write_is_safe_to_retry(db: TestDatabase, config: Config) {
    let timeout = Duration::from_millis(300);
    let store = DurableStore::new(config.max_connections(1).statement_timeout(timeout)).unwrap();
    assert!(matches!(
        store.write(state("locked", 1, 1)).await,
        Ok(WriteOutcome::Written)
    ));
    let mut holder = db.client().await.unwrap();
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        &format!(
            "SELECT 1 FROM \"{}\".states_store WHERE persistence_id = 'locked' FOR UPDATE",
            db.schema()
        ),
        &[],
    )
    .await
    .unwrap();
    let timed_out = store.write(state("locked", 2, 2)).await;
    assert!(
        matches!(timed_out, Err(Error::Timeout { .. })),
        "{timed_out:?}"
    );
    assert!(timed_out.unwrap_err().outcome_unknown());
    lock.rollback().await.unwrap();

    let retry = store.write(state("locked", 2, 2)).await;
    assert!(
        matches!(
            retry,
            Ok(WriteOutcome::Written | WriteOutcome::AlreadyStored)
        ),
        "{retry:?}"
    );
    assert!(matches!(
        store.write(state("locked", 3, 3)).await,
        Ok(WriteOutcome::Written)
    ));
    assert_eq!(store.revision("locked").await.unwrap().version, 3);
    db.cleanup().await.unwrap();
}

async fn unchecked_writes_are_last_writer_wins(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config.version_check(VersionCheck::Unchecked)).unwrap();
    let ids: Vec<String> = (0..50).map(|i| format!("lww-{i}")).collect();
    write_all(&store, ids.iter().map(|id| state(id, 5, 5)).collect()).await;
    let outcomes = write_all(&store, ids.iter().map(|id| state(id, 2, 2)).collect()).await;
    assert!(
        outcomes
            .iter()
            .all(|r| matches!(r, Ok(WriteOutcome::Written)))
    );
    for id in &ids {
        let stored = store.get(id.as_str()).await.unwrap().unwrap();
        assert_eq!((stored.version_number, amount(&stored)), (2, 2));
    }
    db.cleanup().await.unwrap();
}

async fn create_schema_distributes_the_table(db: TestDatabase, config: Config) {
    let store = DurableStore::new(config.clone().table("made_here")).unwrap();
    // Several stores starting at once: one creates and distributes, the others find it done.
    let others: Vec<DurableStore> = (0..3)
        .map(|_| DurableStore::new(config.clone().table("made_here")).unwrap())
        .collect();
    let created = join_all(
        std::iter::once(&store)
            .chain(&others)
            .map(|store| store.create_schema()),
    )
    .await;
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    // Idempotent, also once distributed.
    store.create_schema().await.unwrap();
    let client = db.client().await.unwrap();
    let distributed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition \
             WHERE logicalrelid = format('%I.%I', $1::text, 'made_here')::regclass)",
            &[&db.schema()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(distributed);
    let outcomes = write_all(
        &store,
        (0..40).map(|i| state(&format!("m-{i}"), 1, 1)).collect(),
    )
    .await;
    assert!(
        outcomes
            .iter()
            .all(|r| matches!(r, Ok(WriteOutcome::Written)))
    );
    assert_eq!(db.count_rows_in("made_here").await.unwrap(), 40);
    db.cleanup().await.unwrap();
}

/// Citus installed, the table not distributed (a local table of the coordinator): the store
/// still takes it for Citus, and both paths stay correct there.
async fn a_local_table_on_the_coordinator_works_too(db: TestDatabase, config: Config) {
    let client = db.client().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{0}\".local_states (LIKE \"{0}\".states_store INCLUDING ALL)",
            db.schema()
        ))
        .await
        .unwrap();
    let store = DurableStore::new(config.table("local_states")).unwrap();
    let ids: Vec<String> = (0..60).map(|i| format!("local-{i}")).collect();
    for version in 1..=2 {
        let written = write_all(&store, ids.iter().map(|id| state(id, version, 1)).collect()).await;
        assert!(
            written
                .iter()
                .all(|r| matches!(r, Ok(WriteOutcome::Written))),
            "{written:?}"
        );
    }
    for _ in 0..2 {
        let read = join_all(ids.iter().map(|id| store.get(id.as_str()))).await;
        assert!(
            read.iter()
                .all(|r| matches!(r, Ok(Some(s)) if s.version_number == 2))
        );
    }
    assert_eq!(db.count_rows_in("local_states").await.unwrap(), 60);
    db.cleanup().await.unwrap();
}

/// Ownership on Citus: the ownership tables are created colocated with the states (the owners
/// distributed by id, the replicas a reference table), claims are batched, a non-owner names
/// the owner, fenced writes commit only under the current epoch (one single-shard statement
/// each), and stopping a replica moves its ids at once.
async fn ownership_claims_fences_and_moves(db: TestDatabase, config: Config) {
    use bank_account::{Account, Deposit, Open};
    use durablestore_postgres::{CommandError, EntityRegistry, Ownership};

    let owned = |replica: &str| {
        let store = DurableStore::new(config.clone()).unwrap();
        EntityRegistry::builder(store, Account::new)
            .ownership(Ownership::leased(replica, Duration::from_secs(5)))
            .start()
            .unwrap()
    };
    let (a, b) = (owned("replica-a"), owned("replica-b"));
    let ids: Vec<String> = (0..200).map(|i| format!("acct-{i}")).collect();
    let open = || Open {
        owner: "o".to_owned(),
    };
    for answer in join_all(ids.iter().map(|id| a.send(id, open()))).await {
        assert_eq!(answer.unwrap().version, 1);
    }
    for answer in join_all(ids.iter().map(|id| a.send(id, Deposit(5)))).await {
        assert_eq!(answer.unwrap().cents, 5);
    }
    for answer in join_all(ids.iter().map(|id| b.send(id, Deposit(1)))).await {
        assert!(
            matches!(&answer, Err(CommandError::OwnedElsewhere { owner }) if owner == "replica-a"),
            "{answer:?}"
        );
    }
    let client = db.client().await.unwrap();
    let schema = db.schema();
    let distributed: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_catalog.pg_extension e, pg_dist_partition p \
                 WHERE e.extname = 'citus' AND p.logicalrelid IN \
                 ('{schema}.states_store_owners'::regclass, '{schema}.states_store_replicas'::regclass)"
            ),
            &[],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(0);
    println!("ownership tables known to Citus: {distributed}");
    // A takeover, as another replica makes it after A's lease ran out: A's registration
    // deleted, the id claimed with a new epoch. A's next write is fenced out, though its
    // version lines up.
    client
        .batch_execute(&format!(
            "DELETE FROM {schema}.states_store_replicas WHERE replica = 'replica-a'; \
             UPDATE {schema}.states_store_owners SET epoch = epoch + 1, replica = 'replica-c' \
             WHERE persistence_id = 'acct-0'"
        ))
        .await
        .unwrap();
    assert!(matches!(
        a.send("acct-0", Deposit(100)).await,
        Err(CommandError::OwnedElsewhere { owner }) if owner == "replica-c"
    ));
    let store = DurableStore::new(config.clone()).unwrap();
    assert_eq!(store.revision("acct-0").await.unwrap().version, 2);
    a.stop().await;
    for answer in join_all(ids[1..].iter().map(|id| b.send(id, Deposit(1)))).await {
        assert_eq!(answer.unwrap().cents, 6);
    }
    b.stop().await;
    db.cleanup().await.unwrap();
}
