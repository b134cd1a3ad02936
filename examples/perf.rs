//! Performance round trip: the crate against PostgreSQL's own ceiling, in one run.
//!
//! ```text
//! cargo run --release --example perf -- --rounds 3 --seconds 10
//! ```
//! Each round runs every variant once, in the same order, with a `CHECKPOINT` before each, so
//! the crate and its ceilings alternate; the table at the end gives the median of the rounds
//! and each variant as a share of its ceiling. Writes (400-byte states, `--writers` writers that
//! each write their next version as soon as the previous one is acknowledged):
//! - `pgbench_upsert`: pgbench, 4 connections, 100-row `INSERT … VALUES … ON CONFLICT DO UPDATE`;
//! - `raw_unnest`: raw tokio-postgres, 4 connections, prepared 100-row `UNNEST` upserts;
//! - `store`: the `DurableStore` handle; `actor`: `WriteState` to a `DurableStoreActor`;
//! - `store_feed`: `store` on a table of its own with the change feed on
//!   (`Config::change_feed`), one consumer following it in this process on a pool of its
//!   own; its p50/p99 are
//!   from a write's acknowledgement to the consumer's first delivery of that version or a later
//!   one;
//! - `entities`: one `DurableEntity` per writer on the actor; `entities_direct`: on the handle;
//!   `registry`: the same entities by id through an `EntityRegistry` on the handle (the
//!   README's path), one caller per id.
//!
//! Reads: `pgbench_read` (100-id `= ANY` selects, 4 connections) against `store_reads`
//! (`--readers` concurrent `get`s). Idle latency: `bare_upsert` (one prepared single-row upsert,
//! one connection) against `store_single` (one writer through the handle), p50 of sequential
//! writes. For the crate's variants, `cpu µs/state` is the process's user + system time per
//! state (from `/proc/self/stat`). Uses `DATABASE_URL` (plain TCP) and its own schema. On a
//! Citus coordinator the table is distributed by `persistence_id` (as `testkit` creates it
//! there) and the workers are checkpointed too.

#[path = "../benches/common/mod.rs"]
mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::Actor;
use clap::Parser;
use common::{Bump, Writer, bench_state, durable};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    Distribution, DurableEntity, DurableStore, DurableStoreActor, EntityRegistry, Offset,
    StateStore, WriteState,
};
use futures_util::StreamExt;
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use tokio_postgres::types::ToSql;

#[derive(Parser, Debug)]
#[command(about = "durablestore-postgres against PostgreSQL's own ceiling, alternating, one run")]
struct Args {
    /// Rounds; the table reports the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per variant.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent writers of the write variants.
    #[arg(long, default_value_t = 1000)]
    writers: usize,
    /// Concurrent readers of `store_reads`.
    #[arg(long, default_value_t = 20_000)]
    readers: usize,
    /// Pool size of the store (and connections of the ceilings).
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Only these variants: a comma-separated list of names, each matching the variant of that
    /// name, or else every variant whose name contains it.
    #[arg(long)]
    only: Option<String>,
    /// Send batches as on Citus (`Distribution::Citus`), also on a single server.
    #[arg(long)]
    citus_statements: bool,
    /// SQL run on the fresh table before measuring, `{table}` and `{schema}` replaced (e.g. to
    /// recreate the old version index or change the fillfactor).
    #[arg(long)]
    table_setup: Option<String>,
    /// At the end, report the share of the table's updates that were HOT
    /// (`pg_stat_user_tables.n_tup_hot_upd`); waits 11 s for idle backends to flush their
    /// statistics (PostgreSQL flushes them at most every 10 s when idle).
    #[arg(long)]
    hot: bool,
}

/// Every variant, in the order a round runs them.
const VARIANTS: [&str; 13] = [
    "pgbench_upsert",
    "raw_unnest",
    "raw_checked",
    "store",
    "store_feed",
    "actor",
    "entities",
    "entities_direct",
    "registry",
    "pgbench_read",
    "store_reads",
    "bare_upsert",
    "store_single",
];

/// One measurement: units (states or rows) per second, and the client's CPU per unit.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rate: f64,
    cpu_us: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let db = TestDatabase::new().await?;
    let client = common::connect(&db).await;
    if let Some(setup) = &args.table_setup {
        let sql = setup
            .replace("{table}", &format!("{}.states_store", db.schema()))
            .replace("{schema}", db.schema());
        client.batch_execute(&sql).await?;
    }
    // On a Citus coordinator the workers hold the rows: they are checkpointed too.
    let citus: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
            &[],
        )
        .await?
        .get(0);
    let seconds = Duration::from_secs(args.seconds);
    let handle = DurableStore::new(
        common::store_config(&db)
            .max_connections(args.connections)
            .statement_timeout(Duration::from_secs(60))
            .distribution(if args.citus_statements {
                Distribution::Citus
            } else {
                Distribution::Detect
            }),
    )?;
    // The same store on a table of its own, with the change feed on.
    let feed_db = TestDatabase::new().await?;
    if let Some(setup) = &args.table_setup {
        let sql = setup
            .replace("{table}", &format!("{}.states_store", feed_db.schema()))
            .replace("{schema}", feed_db.schema());
        common::connect(&feed_db).await.batch_execute(&sql).await?;
    }
    let feed_handle = DurableStore::new(
        common::store_config(&feed_db)
            .max_connections(args.connections)
            .statement_timeout(Duration::from_secs(60))
            .change_feed(true),
    )?;
    feed_handle.create_schema().await?;
    // The consumer reads on a pool of its own, as another process would.
    let feed_reader = DurableStore::new(common::store_config(&feed_db).change_feed(true))?;
    let actor = DurableStoreActor::from(handle.clone()).start();
    let mut results: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    let wanted = |name: &str| {
        args.only.as_ref().is_none_or(|only| {
            only.split(',').any(|item| match VARIANTS.contains(&item) {
                true => name == item,
                false => name.contains(item),
            })
        })
    };

    for round in 0..args.rounds {
        let prefix = |variant: &str| format!("{variant}-r{round}");
        for name in VARIANTS {
            if !wanted(name) {
                continue;
            }
            client.batch_execute("CHECKPOINT").await?;
            if citus {
                client
                    .batch_execute("SELECT run_command_on_workers('CHECKPOINT')")
                    .await?;
            }
            let sample = match name {
                "pgbench_upsert" => pgbench(&db, Workload::Upsert, args.connections, seconds)?,
                "raw_unnest" => raw_unnest(&db, args.connections, seconds, round, false).await,
                "raw_checked" => raw_unnest(&db, args.connections, seconds, round, true).await,
                "store" => {
                    let store = handle.clone();
                    writers(args.writers, seconds, &prefix(name), move |state| {
                        let store = store.clone();
                        async move {
                            store
                                .write(state)
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                    })
                    .await
                }
                "store_feed" => {
                    feed_writers(
                        &feed_handle,
                        &feed_reader,
                        args.writers,
                        seconds,
                        &prefix(name),
                    )
                    .await
                }
                "actor" => {
                    let actor = actor.clone();
                    writers(args.writers, seconds, &prefix(name), move |state| {
                        let actor = actor.clone();
                        async move {
                            match actor.send(WriteState(state)).await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                    })
                    .await
                }
                "entities" => {
                    entities(actor.clone().into(), args.writers, seconds, &prefix(name)).await
                }
                "entities_direct" => {
                    entities(handle.clone().into(), args.writers, seconds, &prefix(name)).await
                }
                "registry" => registry(&handle, args.writers, seconds, &prefix(name)).await,
                "pgbench_read" => pgbench(&db, Workload::Read, args.connections, seconds)?,
                "store_reads" => reads(&handle, args.readers, seconds).await,
                "bare_upsert" => {
                    bare_upsert(&db, &client, seconds.min(Duration::from_secs(5))).await
                }
                "store_single" => {
                    single_writer(&handle, seconds.min(Duration::from_secs(5)), &prefix(name)).await
                }
                _ => unreachable!(),
            };
            eprintln!("round {round} {name}: {sample:?}");
            results.entry(name).or_default().push(sample);
        }
    }

    let median = |name: &str| -> Option<Sample> {
        let mut samples = results.get(name)?.clone();
        samples.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        samples.get(samples.len() / 2).copied()
    };
    println!(
        "| variant | median rate | vs pgbench | vs raw | cpu µs/unit | p50 µs | p99 µs |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for name in results.keys() {
        let Some(sample) = median(name) else { continue };
        let share = |ceiling: &str| {
            median(ceiling)
                .filter(|c| c.rate > 0.0)
                .map(|c| format!("{:.0} %", 100.0 * sample.rate / c.rate))
                .unwrap_or_default()
        };
        let (vs_pgbench, vs_raw) = match *name {
            "store_reads" | "pgbench_read" => (share("pgbench_read"), String::new()),
            "bare_upsert" | "store_single" => (String::new(), String::new()),
            _ => (share("pgbench_upsert"), share("raw_unnest")),
        };
        println!(
            "| {name} | {:.0}/s | {vs_pgbench} | {vs_raw} | {} | {} | {} |",
            sample.rate,
            sample.cpu_us.map(|c| format!("{c:.1}")).unwrap_or_default(),
            sample.p50_us.map(|p| format!("{p:.0}")).unwrap_or_default(),
            sample.p99_us.map(|p| format!("{p:.0}")).unwrap_or_default(),
        );
    }
    if let (Some(bare), Some(single)) = (median("bare_upsert"), median("store_single")) {
        if let (Some(b), Some(s)) = (bare.p50_us, single.p50_us) {
            println!(
                "\nidle p50: store {s:.0} µs / bare {b:.0} µs = {:.2}×",
                s / b
            );
        }
    }
    if args.hot {
        tokio::time::sleep(Duration::from_secs(11)).await;
        let row = client
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname = 'states_store'",
                &[&db.schema()],
            )
            .await?;
        let (updates, hot): (i64, i64) = (row.get(0), row.get(1));
        println!(
            "\nHOT updates: {hot} of {updates} ({:.1} %)",
            100.0 * hot as f64 / updates.max(1) as f64
        );
    }
    drop(actor);
    drop(handle);
    drop(feed_handle);
    drop(feed_reader);
    db.cleanup().await?;
    feed_db.cleanup().await?;
    Ok(())
}

/// The process's user + system CPU time so far (Linux; `None` elsewhere).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, 100 per second on every mainstream platform.
    Some(Duration::from_millis(ticks * 10))
}

/// Runs `work` and turns its unit count into a sample.
async fn measure<F: std::future::Future<Output = u64>>(work: F) -> Sample {
    let (started, cpu) = (Instant::now(), cpu_time());
    let units = work.await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_us = cpu
        .zip(cpu_time())
        .filter(|_| units > 0)
        .map(|(before, after)| (after - before).as_secs_f64() * 1e6 / units as f64);
    Sample {
        rate: units as f64 / elapsed,
        cpu_us,
        p50_us: None,
        p99_us: None,
    }
}

/// `count` writers, each writing versions 1, 2, 3... of its own entity until the deadline.
async fn writers<F, Fut>(count: usize, run_for: Duration, prefix: &str, write: F) -> Sample
where
    F: Fn(durablestore_postgres::DurableState) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + run_for;
    measure(async {
        let done = Rc::new(Cell::new(0_u64));
        // One task per writer, as actors or request handlers would be.
        join_all((0..count).map(|i| {
            let (write, done) = (write.clone(), done.clone());
            let id = format!("{prefix}-{i}");
            actix::spawn(async move {
                let mut version = 0;
                while Instant::now() < deadline {
                    version += 1;
                    if let Err(error) = write(durable(&id, version)).await {
                        panic!("write of {id} v{version} failed: {error}");
                    }
                    done.set(done.get() + 1);
                }
            })
        }))
        .await;
        done.get()
    })
    .await
}

/// `writers` on a store with the change feed, while a consumer follows the feed from its end;
/// the sample's percentiles are acknowledgement-to-delivery (see the module docs).
async fn feed_writers(
    store: &DurableStore,
    reader: &DurableStore,
    count: usize,
    run_for: Duration,
    prefix: &str,
) -> Sample {
    // From the end of what earlier rounds wrote.
    let mut from = Offset::BEGINNING;
    loop {
        let page = reader.changes_page(&from, 10_000).await.expect("feed page");
        if page.next == from {
            break;
        }
        from = page.next;
    }
    type Deliveries = HashMap<String, Vec<(u64, Instant)>>;
    let delivered: Rc<RefCell<Deliveries>> = Rc::default();
    let consumer = {
        let (delivered, mut changes) = (delivered.clone(), reader.changes(from));
        actix::spawn(async move {
            while let Some(change) = changes.next().await {
                let change = change.expect("a change");
                delivered
                    .borrow_mut()
                    .entry(change.persistence_id)
                    .or_default()
                    .push((change.version, Instant::now()));
            }
        })
    };
    let acks: Rc<RefCell<Vec<(String, u64, Instant)>>> = Rc::default();
    let (writing, acked) = (store.clone(), acks.clone());
    let mut sample = writers(count, run_for, prefix, move |state| {
        let (store, acks) = (writing.clone(), acked.clone());
        async move {
            let (id, version) = (state.persistence_id.clone(), state.version_number);
            store.write(state).await.map_err(|e| e.to_string())?;
            acks.borrow_mut().push((id, version, Instant::now()));
            Ok(())
        }
    })
    .await;
    // Until the last acknowledged version of every writer is delivered (at most 30 s).
    let last: HashMap<String, u64> = acks
        .borrow()
        .iter()
        .map(|(id, version, _)| (id.clone(), *version))
        .collect();
    let drained = Instant::now() + Duration::from_secs(30);
    while Instant::now() < drained {
        let all = last.iter().all(|(id, version)| {
            delivered
                .borrow()
                .get(id)
                .and_then(|d| d.last())
                .is_some_and(|(v, _)| v >= version)
        });
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.abort();
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let delivered = delivered.borrow();
    for (id, version, acked) in acks.borrow().iter() {
        let first = delivered
            .get(id)
            .and_then(|d| d.iter().find(|(v, _)| v >= version))
            .map(|(_, at)| at.saturating_duration_since(*acked));
        match first {
            Some(latency) => {
                let _ = histogram.record(latency.as_micros() as u64);
            }
            None => eprintln!("{id} v{version} was not delivered within 30 s"),
        }
    }
    sample.p50_us = Some(histogram.value_at_quantile(0.5) as f64);
    sample.p99_us = Some(histogram.value_at_quantile(0.99) as f64);
    sample
}

async fn entities(store: StateStore, count: usize, run_for: Duration, prefix: &str) -> Sample {
    let actors: Vec<_> = (0..count)
        .map(|i| {
            DurableEntity::new(
                Writer {
                    id: format!("{prefix}-{i}"),
                },
                store.clone(),
            )
            .start()
        })
        .collect();
    let deadline = Instant::now() + run_for;
    measure(async {
        let done = Rc::new(Cell::new(0_u64));
        join_all(actors.iter().map(|actor| {
            let (done, actor) = (done.clone(), actor.clone());
            actix::spawn(async move {
                while Instant::now() < deadline {
                    match actor.send(Bump).await {
                        Ok(Ok(_)) => done.set(done.get() + 1),
                        other => panic!("entity command failed: {other:?}"),
                    }
                }
            })
        }))
        .await;
        done.get()
    })
    .await
}

async fn registry(store: &DurableStore, count: usize, run_for: Duration, prefix: &str) -> Sample {
    let registry = EntityRegistry::builder(store.clone(), |id: &str| Writer { id: id.into() })
        .idle_timeout(None)
        .start()
        .expect("registry");
    let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    // Activated before the clock runs, as the other entity variants start theirs.
    for answer in join_all(ids.iter().map(|id| registry.state(id))).await {
        answer.expect("activated");
    }
    let deadline = Instant::now() + run_for;
    let sample = measure(async {
        let done = Rc::new(Cell::new(0_u64));
        join_all(ids.iter().map(|id| {
            let (done, registry, id) = (done.clone(), registry.clone(), id.clone());
            actix::spawn(async move {
                while Instant::now() < deadline {
                    match registry.send(&id, Bump).await {
                        Ok(_) => done.set(done.get() + 1),
                        Err(error) => panic!("registry command failed: {error:?}"),
                    }
                }
            })
        }))
        .await;
        done.get()
    })
    .await;
    registry.stop().await;
    sample
}

async fn reads(store: &DurableStore, count: usize, run_for: Duration) -> Sample {
    // Reads of rows that exist: those the `store` variant wrote (any prefix will do; a missing
    // id is read the same way).
    let deadline = Instant::now() + run_for;
    measure(async {
        let done = Rc::new(Cell::new(0_u64));
        join_all((0..count).map(|i| {
            let (store, done) = (store.clone(), done.clone());
            let id = format!("store-r0-{}", i % 1000);
            actix::spawn(async move {
                while Instant::now() < deadline {
                    store.get(id.as_str()).await.expect("read");
                    done.set(done.get() + 1);
                }
            })
        }))
        .await;
        done.get()
    })
    .await
}

async fn single_writer(store: &DurableStore, run_for: Duration, prefix: &str) -> Sample {
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let id = format!("{prefix}-single");
    let deadline = Instant::now() + run_for;
    let mut sample = measure(async {
        let mut version = 0;
        while Instant::now() < deadline {
            version += 1;
            let sent = Instant::now();
            store.write(durable(&id, version)).await.expect("write");
            let _ = histogram.record(sent.elapsed().as_micros() as u64);
        }
        version
    })
    .await;
    sample.p50_us = Some(histogram.value_at_quantile(0.5) as f64);
    sample
}

async fn bare_upsert(
    db: &TestDatabase,
    client: &tokio_postgres::Client,
    run_for: Duration,
) -> Sample {
    let sql = common::single_upsert(db.schema());
    let statement = client
        .prepare_typed(&sql, &common::ROW_TYPES)
        .await
        .expect("prepare");
    let payload = prost::Message::encode_to_vec(&bench_state("bare", 1));
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let deadline = Instant::now() + run_for;
    let mut sample = measure(async {
        let mut version = 0_i64;
        while Instant::now() < deadline {
            version += 1;
            let sent = Instant::now();
            let params: [&(dyn ToSql + Sync); 6] = [
                &"bare",
                &version,
                &payload,
                &"bench.v1.BenchState",
                &0_i64,
                &0_i64,
            ];
            client.execute(&statement, &params).await.expect("upsert");
            let _ = histogram.record(sent.elapsed().as_micros() as u64);
        }
        version as u64
    })
    .await;
    sample.cpu_us = None;
    sample.p50_us = Some(histogram.value_at_quantile(0.5) as f64);
    sample
}

/// The tokio-postgres ceiling: `connections` connections, each upserting its own 100-row
/// chunks with a prepared `UNNEST` statement, arrays built once. With `checked`, the
/// statement is the store's version-checked update of an update-only batch instead (each
/// round writes the next version of every id): the store's statement without the store.
async fn raw_unnest(
    db: &TestDatabase,
    connections: u32,
    run_for: Duration,
    round: usize,
    checked: bool,
) -> Sample {
    let sql = if checked {
        common::checked_update(db.schema())
    } else {
        common::unnest_upsert(db.schema())
    };
    let mut lanes = Vec::new();
    for lane in 0..connections {
        let client = common::connect(db).await;
        let statement = client
            .prepare_typed(&sql, &common::ARRAY_TYPES)
            .await
            .expect("prepare");
        // The checked updates go on from version 1 of every id, upserted first.
        let seed = client
            .prepare_typed(&common::unnest_upsert(db.schema()), &common::ARRAY_TYPES)
            .await
            .expect("prepare");
        let ids: Vec<String> = (0..250)
            .map(|i| format!("raw-r{round}-{lane}-{i}"))
            .collect();
        lanes.push((client, statement, seed, ids));
    }
    let payload = prost::Message::encode_to_vec(&bench_state("raw", 1));
    let deadline = Instant::now() + run_for;
    let mut sample = measure(async {
        let counts = join_all(lanes.iter().map(|(client, statement, seed, ids)| {
            let payload = payload.as_slice();
            async move {
                let chunks: Vec<Vec<&str>> = ids
                    .chunks(100)
                    .map(|c| c.iter().map(String::as_str).collect())
                    .collect();
                let (payloads, manifests, zeros) = (
                    vec![payload; 100],
                    vec!["bench.v1.BenchState"; 100],
                    vec![0_i64; 100],
                );
                let mut rows = 0_u64;
                let mut version = 0_i64;
                while Instant::now() < deadline {
                    version += 1;
                    for chunk in &chunks {
                        let n = chunk.len();
                        let versions = vec![version; n];
                        let params: [&(dyn ToSql + Sync); 6] = [
                            chunk,
                            &versions,
                            &&payloads[..n],
                            &&manifests[..n],
                            &&zeros[..n],
                            &&zeros[..n],
                        ];
                        // The checked statement's first pass is the seed, not counted.
                        let seeding = checked && version == 1;
                        let sent = if seeding { seed } else { statement };
                        client.execute(sent, &params).await.expect("upsert");
                        if !seeding {
                            rows += n as u64;
                        }
                    }
                }
                rows
            }
        }))
        .await;
        counts.iter().sum()
    })
    .await;
    sample.cpu_us = None;
    sample
}

enum Workload {
    Upsert,
    Read,
}

/// pgbench, `-M prepared`, `connections` clients, for `run_for`: rows per second (100 rows per
/// transaction). The script is written to a temporary file for this run.
fn pgbench(
    db: &TestDatabase,
    workload: Workload,
    connections: u32,
    run_for: Duration,
) -> Result<Sample, Box<dyn std::error::Error>> {
    let table = format!("{}.states_store", db.schema());
    let payload = format!("\\x{}", "ab".repeat(common::STATE_BYTES));
    // Each client works on its own 1,000 ids, 100 consecutive ones per transaction, so no two
    // transactions wait on each other's rows (as the crate's writers never do).
    let mut script = String::from("\\set base :client_id * 1000 + random(0, 9) * 100\n");
    match workload {
        Workload::Upsert => {
            let rows: Vec<String> = (1..=100)
                .map(|k| {
                    format!(
                        "('pgb-' || (:base + {k}), 1, '{payload}', 'bench.v1.BenchState', 0, 0)"
                    )
                })
                .collect();
            script += &format!(
                "INSERT INTO {table} (persistence_id, version_number, state_payload, state_manifest, \"timestamp\", shard_number) VALUES {} \
                 ON CONFLICT (persistence_id) DO UPDATE SET version_number = EXCLUDED.version_number + {table}.version_number, \
                 state_payload = EXCLUDED.state_payload, state_manifest = EXCLUDED.state_manifest, \
                 \"timestamp\" = EXCLUDED.\"timestamp\", shard_number = EXCLUDED.shard_number;\n",
                rows.join(", ")
            );
        }
        Workload::Read => {
            let ids: Vec<String> = (1..=100)
                .map(|k| format!("'pgb-' || (:base + {k})"))
                .collect();
            script += &format!(
                "SELECT persistence_id, version_number, state_payload, state_manifest, \"timestamp\", shard_number \
                 FROM {table} WHERE persistence_id = ANY(ARRAY[{}]);\n",
                ids.join(", ")
            );
        }
    }
    let path = std::env::temp_dir().join(format!("durablestore-perf-{}.sql", std::process::id()));
    std::fs::write(&path, script)?;
    let output = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &connections.to_string(),
            "-j",
            "2",
            "-T",
        ])
        .arg(run_for.as_secs().to_string())
        .arg("-f")
        .arg(&path)
        .arg(db.url())
        .output()?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse::<f64>().ok())
        .ok_or_else(|| {
            format!(
                "pgbench: {}{}",
                text,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    Ok(Sample {
        rate: tps * 100.0,
        cpu_us: None,
        p50_us: None,
        p99_us: None,
    })
}
