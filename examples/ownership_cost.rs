//! What ownership across replicas costs, side by side in one run: a registry with
//! `RegistryBuilder::ownership` against one without, alternating (off, on, off, on...), a
//! `CHECKPOINT` before each, medians of the rounds.
//!
//! - **commands/s**: `--entities` entities, one caller each, sending deposits for `--seconds`
//!   (entities started before the clock runs); **lone p50**: one caller, one entity, for 2 s.
//! - **activation**: `--activations` fresh ids asked for their state at once: the time until
//!   every answer is in, and the statements it took (the crate's own batch metrics: a read
//!   batch is one statement, a claim batch of fresh ids two: expired registrations deleted,
//!   the claim).
//! - **renewal**: one registry owning `--owned` ids: the lease renewals the database saw in
//!   `--observe` seconds, and the renewal statement's latency with that many ids owned.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release --example ownership_cost -- --rounds 3
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix::Message;
use clap::Parser;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, DurableStateBehavior, DurableStore, Effect, EntityRegistry, HandleCommand,
    Ownership,
};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

#[derive(Parser, Debug)]
struct Args {
    /// Rounds of every variant.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How long the callers send, per variant and round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Entities (one caller each) of the throughput variants.
    #[arg(long, default_value_t = 1000)]
    entities: usize,
    /// Ids activated at once.
    #[arg(long, default_value_t = 10_000)]
    activations: usize,
    /// Ids owned while renewals are observed.
    #[arg(long, default_value_t = 100_000)]
    owned: usize,
    /// How long renewals are observed.
    #[arg(long, default_value_t = 10)]
    observe: u64,
    /// Pool size of each store.
    #[arg(long, default_value_t = 4)]
    connections: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Balance {
    #[prost(int64, tag = "1")]
    cents: i64,
    #[prost(bytes = "vec", tag = "2")]
    padding: Vec<u8>,
}

impl prost::Name for Balance {
    const NAME: &'static str = "Balance";
    const PACKAGE: &'static str = "ownership_cost.v1";
}

struct Account {
    id: String,
}

impl DurableStateBehavior for Account {
    type State = Balance;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, Message)]
#[rtype(result = "Result<i64, CommandError<()>>")]
struct Deposit(i64);

impl HandleCommand<Deposit> for Account {
    type Reply = i64;
    type Error = ();
    fn handle_command(
        &mut self,
        Deposit(cents): Deposit,
        state: &Balance,
        _: u64,
    ) -> Result<Effect<Balance, i64>, ()> {
        let cents = state.cents + cents;
        // A 400-byte state, as the store's benchmarks write.
        let padding = vec![7; 390];
        Ok(Effect::persist(Balance { cents, padding }, cents))
    }
}

fn registry(store: DurableStore, ownership: Option<Ownership>) -> EntityRegistry<Account> {
    let builder = EntityRegistry::builder(store, |id: &str| Account { id: id.into() })
        .idle_timeout(None)
        .max_live(1_000_000);
    match ownership {
        Some(ownership) => builder.ownership(ownership),
        None => builder,
    }
    .start()
    .expect("on an arbiter")
}

async fn checkpoint(db: &TestDatabase) {
    let client = db.client().await.expect("connects");
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("CHECKPOINT");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The statements run since the last call: each batch of reads is one, each batch of claims
/// two (expired registrations deleted, the claim; fresh ids need no takeover). Snapshots drain
/// the recorded samples.
fn statements(snapshotter: &Snapshotter) -> usize {
    let mut statements = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let per_batch = match key.key().name() {
            "durablestore_read_batch_size" => 1,
            "durablestore_claim_batch_size" => 2,
            _ => continue,
        };
        if let DebugValue::Histogram(samples) = value {
            statements += per_batch * samples.len();
        }
    }
    statements
}

/// commands/s of `entities` callers, and the p50 of a lone caller, in µs.
async fn throughput(registry: &EntityRegistry<Account>, prefix: &str, args: &Args) -> (f64, f64) {
    let ids: Vec<String> = (0..args.entities)
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    for answer in join_all(ids.iter().map(|id| registry.send(id, Deposit(1)))).await {
        answer.expect("the first deposit");
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let counts = join_all(ids.iter().map(|id| async move {
        let mut n = 0u64;
        while Instant::now() < deadline {
            registry.send(id, Deposit(1)).await.expect("a deposit");
            n += 1;
        }
        n
    }))
    .await;
    let rate = counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64();
    let lone = format!("{prefix}-lone");
    registry.send(&lone, Deposit(1)).await.expect("a deposit");
    let mut latencies = Histogram::<u64>::new(3).expect("histogram");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let sent = Instant::now();
        registry.send(&lone, Deposit(1)).await.expect("a deposit");
        let _ = latencies.record(sent.elapsed().as_micros() as u64);
    }
    (rate, latencies.value_at_quantile(0.5) as f64)
}

/// Seconds until `count` fresh ids answered their state, and the statements it took.
async fn activation(
    snapshotter: &Snapshotter,
    registry: &EntityRegistry<Account>,
    prefix: &str,
    count: usize,
) -> (f64, i64) {
    let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    statements(snapshotter);
    let started = Instant::now();
    for answer in join_all(ids.iter().map(|id| registry.state(id))).await {
        answer.expect("a state");
    }
    let elapsed = started.elapsed().as_secs_f64();
    (elapsed, statements(snapshotter) as i64)
}

/// Updates of the replicas table so far: the lease renewals.
async fn replica_updates(db: &TestDatabase) -> i64 {
    let client = db.client().await.expect("connects");
    client
        .query_one(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE schemaname = $1 \
             AND relname = 'states_store_replicas'",
            &[&db.schema()],
        )
        .await
        .expect("pg_stat_user_tables")
        .get(0)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;
    let db = TestDatabase::new().await?;
    let config = db.config().max_connections(args.connections);
    let mut results: BTreeMap<&str, Vec<(f64, f64, f64, i64)>> = BTreeMap::new();
    for round in 0..args.rounds {
        for (variant, owned) in [("off", false), ("on", true)] {
            checkpoint(&db).await;
            let store = DurableStore::new(config.clone())?;
            let ownership = owned
                .then(|| Ownership::leased(format!("r{round}{variant}"), Ownership::DEFAULT_LEASE));
            let registry = registry(store, ownership);
            let prefix = format!("{variant}{round}");
            let (rate, p50) = throughput(&registry, &prefix, &args).await;
            checkpoint(&db).await;
            let (seconds, statements) = activation(
                &snapshotter,
                &registry,
                &format!("{prefix}-act"),
                args.activations,
            )
            .await;
            registry.stop().await;
            eprintln!(
                "round {round} ownership {variant}: {rate:.0} commands/s, lone p50 {p50:.0} µs, \
                 {} activations in {seconds:.2} s with {statements} statements",
                args.activations
            );
            results
                .entry(variant)
                .or_default()
                .push((rate, p50, seconds, statements));
        }
    }
    println!(
        "| ownership | commands/s ({} entities) | lone p50 µs | activation of {} ids | statements |\n|---|---:|---:|---:|---:|",
        args.entities, args.activations
    );
    let mut rates = BTreeMap::new();
    for (variant, samples) in &results {
        let pick = |f: fn(&(f64, f64, f64, i64)) -> f64| {
            median(&samples.iter().map(f).collect::<Vec<_>>())
        };
        let rate = pick(|s| s.0);
        rates.insert(*variant, rate);
        println!(
            "| {variant} | {rate:.0} | {:.0} | {:.2} s | {:.0} |",
            pick(|s| s.1),
            pick(|s| s.2),
            pick(|s| s.3 as f64)
        );
    }
    if let (Some(on), Some(off)) = (rates.get("on"), rates.get("off")) {
        println!("\ncommands/s with ownership / without: {:.3}", on / off);
    }

    // Renewal with many ids owned: one statement per third of the lease, whatever the count.
    let store = DurableStore::new(config.clone())?;
    let lease = Ownership::DEFAULT_LEASE;
    let owner = registry(store, Some(Ownership::leased("renewer", lease)));
    let renewal_latency = |label: &'static str| {
        let db = &db;
        async move {
            let client = db.client().await.expect("connects");
            let renew = format!(
                "UPDATE {}.states_store_replicas SET lease_until = now() + interval '10 seconds' \
                 WHERE replica = 'renewer'",
                db.schema()
            );
            let statement = client.prepare(&renew).await.expect("prepares");
            let mut latencies = Histogram::<u64>::new(3).expect("histogram");
            for _ in 0..500 {
                let sent = Instant::now();
                client.execute(&statement, &[]).await.expect("renews");
                let _ = latencies.record(sent.elapsed().as_micros() as u64);
            }
            println!(
                "renewal statement with {label}: p50 {} µs, p99 {} µs",
                latencies.value_at_quantile(0.5),
                latencies.value_at_quantile(0.99)
            );
        }
    };
    owner.state("first").await?;
    renewal_latency("1 id owned").await;
    let started = Instant::now();
    for chunk in (0..args.owned).collect::<Vec<_>>().chunks(10_000) {
        let ids: Vec<String> = chunk.iter().map(|i| format!("owned-{i}")).collect();
        for answer in join_all(ids.iter().map(|id| owner.state(id))).await {
            answer?;
        }
    }
    println!(
        "{} ids claimed and live in {:.1} s",
        args.owned,
        started.elapsed().as_secs_f64()
    );
    renewal_latency("all ids owned").await;
    let before = replica_updates(&db).await;
    tokio::time::sleep(Duration::from_secs(args.observe)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    println!(
        "renewals seen by the database in {} s with {} ids owned (lease {lease:?}): {}",
        args.observe,
        args.owned + 1,
        replica_updates(&db).await - before
    );
    owner.stop().await;
    db.cleanup().await?;
    Ok(())
}
