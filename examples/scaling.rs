//! How the store's cost grows: with writers, with state size, with entities to recover, with
//! live entities. One run, one table per question.
//!
//! ```text
//! cargo run --release --example scaling -- writers     # 1, 10, 100, 1,000, 10,000 writers
//! cargo run --release --example scaling -- sizes       # 100 B, 4 KiB, 64 KiB, 1 MiB states
//! cargo run --release --example scaling -- recovery    # 100,000 entities from 1,000,000 rows
//! cargo run --release --example scaling -- memory      # RSS with 1k, 10k, 100k live entities
//! ```
//! Writers go through the `DurableStore` handle (pool of 4), each writing its next version as
//! soon as the previous one is acknowledged; entities are `DurableEntity` actors given the
//! handle. Uses `DATABASE_URL` (plain TCP) and its own schema.

#[path = "../benches/common/mod.rs"]
mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, Message};
use clap::{Parser, ValueEnum};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, DurableEntity, DurableState, DurableStateBehavior, DurableStore, Effect,
    HandleCommand,
};
use futures_util::future::join_all;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
struct Args {
    /// Which question to answer.
    question: Question,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Question {
    Writers,
    Sizes,
    Recovery,
    Memory,
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let db = TestDatabase::new().await?;
    let client = common::connect(&db).await;
    let store =
        DurableStore::new(common::store_config(&db).statement_timeout(Duration::from_secs(120)))?;
    let run_for = Duration::from_secs(args.seconds);
    match args.question {
        Question::Writers => {
            println!("| writers | states/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|");
            for writers in [1, 10, 100, 1_000, 10_000] {
                client.batch_execute("CHECKPOINT").await?;
                let (rate, h) =
                    write_load(&store, writers, 400, run_for, &format!("w{writers}")).await;
                println!(
                    "| {writers} | {rate:.0} | {:.2} | {:.2} |",
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0
                );
            }
        }
        Question::Sizes => {
            println!("| state | writers | states/s | MB/s | p99 ms |\n|---:|---:|---:|---:|---:|");
            for (bytes, writers) in [
                (100, 1_000),
                (4 << 10, 1_000),
                (64 << 10, 100),
                (1 << 20, 10),
            ] {
                client.batch_execute("CHECKPOINT").await?;
                let (rate, h) =
                    write_load(&store, writers, bytes, run_for, &format!("s{bytes}")).await;
                println!(
                    "| {} | {writers} | {rate:.0} | {:.1} | {:.2} |",
                    human(bytes),
                    rate * bytes as f64 / 1e6,
                    h.value_at_quantile(0.99) as f64 / 1000.0
                );
            }
        }
        Question::Recovery => {
            let table = format!("{}.states_store", db.schema());
            let payload = DurableState::new("x", 1, &common::bench_state("x", 1));
            let any =
                prost::Message::encode_to_vec(payload.resulting_state.as_ref().ok_or("state")?);
            let started = Instant::now();
            client
                .execute(
                    &format!(
                        "INSERT INTO {table} SELECT 'rec-' || i, 1, $1, 'google.protobuf.Any', 0, 0 \
                         FROM generate_series(1, 1000000) i"
                    ),
                    &[&any],
                )
                .await?;
            client
                .batch_execute(&format!("VACUUM ANALYZE {table}"))
                .await?;
            client.batch_execute("CHECKPOINT").await?;
            eprintln!(
                "loaded 1,000,000 rows in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let rss_before = rss_kib();
            let started = Instant::now();
            // Every 10th row: 100,000 entities spread over the table, recovered at once.
            let entities =
                start_entities(&store, (0..100_000).map(|i| format!("rec-{}", i * 10 + 1)));
            let versions = join_all(entities.iter().map(|e| e.send(Version))).await;
            let elapsed = started.elapsed().as_secs_f64();
            let recovered = versions.iter().filter(|v| matches!(v, Ok(Ok(1)))).count();
            println!(
                "| entities | table rows | recovered | time s | reads/s | RSS MiB (before → after) |\n|---:|---:|---:|---:|---:|---:|"
            );
            println!(
                "| 100,000 | 1,000,000 | {recovered} | {elapsed:.2} | {:.0} | {:.0} → {:.0} |",
                recovered as f64 / elapsed,
                rss_before as f64 / 1024.0,
                rss_kib() as f64 / 1024.0
            );
        }
        Question::Memory => {
            println!("| live entities | RSS MiB | KiB per entity |\n|---:|---:|---:|");
            let base = rss_kib();
            let mut live = Vec::new();
            for target in [1_000, 10_000, 100_000] {
                let more = start_entities(&store, (live.len()..target).map(|i| format!("mem-{i}")));
                // Each entity recovers (reads its empty row) and persists one state.
                for chunk in more.chunks(10_000) {
                    join_all(chunk.iter().map(|e| e.send(Touch))).await;
                }
                live.extend(more);
                let rss = rss_kib();
                println!(
                    "| {target} | {:.1} | {:.2} |",
                    rss as f64 / 1024.0,
                    (rss - base) as f64 / live.len() as f64
                );
            }
        }
    }
    drop(store);
    db.cleanup().await?;
    Ok(())
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Resident set size of this process, KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `writers` tasks, each writing its next version of its own entity (`bytes` of state) until
/// the deadline: states per second and the latency histogram (µs).
async fn write_load(
    store: &DurableStore,
    writers: usize,
    bytes: usize,
    run_for: Duration,
    prefix: &str,
) -> (f64, Histogram<u64>) {
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new(3).expect("histogram")));
    let done = Rc::new(Cell::new(0_u64));
    let deadline = Instant::now() + run_for;
    let started = Instant::now();
    join_all((0..writers).map(|i| {
        let (store, histogram, done) = (store.clone(), histogram.clone(), done.clone());
        let id = format!("{prefix}-{i}");
        actix::spawn(async move {
            let padding = vec![0x5a; bytes.saturating_sub(20)];
            let mut version = 0;
            while Instant::now() < deadline {
                version += 1;
                let state = common::BenchState {
                    id: String::new(),
                    counter: version as i64,
                    padding: padding.clone(),
                };
                let sent = Instant::now();
                store
                    .write(DurableState::new(id.as_str(), version, &state))
                    .await
                    .expect("write");
                let _ = histogram
                    .borrow_mut()
                    .record(sent.elapsed().as_micros() as u64);
                done.set(done.get() + 1);
            }
        })
    }))
    .await;
    let rate = done.get() as f64 / started.elapsed().as_secs_f64();
    let histogram = histogram.borrow().clone();
    (rate, histogram)
}

struct Probe {
    id: String,
}

impl DurableStateBehavior for Probe {
    type State = common::BenchState;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

/// Replies the recovered version; writes nothing.
#[derive(Clone, Message)]
#[rtype(result = "Result<u64, CommandError<std::convert::Infallible>>")]
struct Version;

impl HandleCommand<Version> for Probe {
    type Reply = u64;
    type Error = std::convert::Infallible;
    fn handle_command(
        &mut self,
        _: Version,
        _: &common::BenchState,
        version: u64,
    ) -> Result<Effect<common::BenchState, u64>, Self::Error> {
        Ok(Effect::none(version))
    }
}

/// Persists a small next state.
#[derive(Clone, Message)]
#[rtype(result = "Result<(), CommandError<std::convert::Infallible>>")]
struct Touch;

impl HandleCommand<Touch> for Probe {
    type Reply = ();
    type Error = std::convert::Infallible;
    fn handle_command(
        &mut self,
        _: Touch,
        state: &common::BenchState,
        _: u64,
    ) -> Result<Effect<common::BenchState, ()>, Self::Error> {
        let mut next = state.clone();
        next.counter += 1;
        Ok(Effect::persist(next, ()))
    }
}

fn start_entities(
    store: &DurableStore,
    ids: impl Iterator<Item = String>,
) -> Vec<actix::Addr<DurableEntity<Probe>>> {
    ids.map(|id| DurableEntity::new(Probe { id }, store.clone()).start())
        .collect()
}
