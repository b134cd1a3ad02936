//! What one entity command costs the client: heap allocations (counted by a counting global
//! allocator) and CPU time, through an `EntityRegistry` on a `DurableStore` handle (the
//! README's path) and on a `DurableStoreActor` address.
//!
//! Each route starts `--entities` entities (one warm-up command each, so recovery is not
//! counted), then sends `--commands` commands to each, every entity one at a time and all
//! entities at once, and counts only that phase. The state is a counter (the README's
//! account), so what is counted is the crate's cost, not the behavior's. For instructions per
//! command, run it under callgrind twice with different `--commands` and divide the
//! difference by the difference in commands (see BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example entity_cost -- --entities 100 --commands 50
//! cargo run --release --example entity_cost -- --entities 100 --commands 50 --recorder
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix::{Actor, Message};
use clap::Parser;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, DurableStateBehavior, DurableStore, DurableStoreActor, Effect, EntityRegistry,
    HandleCommand, SslMode, StateStore,
};
use futures_util::future::join_all;

/// Counts every allocation (and reallocation) of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as the caller promised for `alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller promised for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as the caller promised for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser, Debug)]
#[command(about = "allocations and client CPU per entity command")]
struct Args {
    /// Entities, all sending at once.
    #[arg(long, default_value_t = 100)]
    entities: usize,
    /// Commands per entity in the counted phase.
    #[arg(long, default_value_t = 50)]
    commands: usize,
    /// Which routes to measure: `handle`, `actor` or `both`.
    #[arg(long, default_value = "both")]
    route: String,
    /// Install a metrics recorder first (`metrics-util`'s `DebuggingRecorder`, whose registry
    /// is the kind exporters keep), as a service that exports its metrics runs.
    #[arg(long)]
    recorder: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Balance {
    #[prost(int64, tag = "1")]
    cents: i64,
}

impl prost::Name for Balance {
    const NAME: &'static str = "Balance";
    const PACKAGE: &'static str = "cost.v1";
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
#[rtype(result = "Result<i64, CommandError<Infallible>>")]
struct Deposit(i64);

impl HandleCommand<Deposit> for Account {
    type Reply = i64;
    type Error = Infallible;
    fn handle_command(
        &mut self,
        Deposit(cents): Deposit,
        state: &Balance,
        _version: u64,
    ) -> Result<Effect<Balance, i64>, Infallible> {
        let cents = state.cents + cents;
        Ok(Effect::persist(Balance { cents }, cents))
    }
}

/// CPU time of the process, in microseconds: the time each of its threads has spent running
/// (`/proc/self/task/*/schedstat`, in nanoseconds), not the 10 ms ticks of `/proc/self/stat`.
fn cpu_us() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e3
}

async fn measure(
    name: &str,
    store: StateStore,
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let registry = EntityRegistry::builder(store, |id: &str| Account { id: id.to_owned() })
        .max_live(args.entities.max(1))
        .start()?;
    let ids: Vec<String> = (0..args.entities).map(|i| format!("{name}-{i}")).collect();
    // Warm-up: every entity started and recovered, outside the counted phase.
    for result in join_all(ids.iter().map(|id| registry.send(id, Deposit(1)))).await {
        result?;
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let cpu = cpu_us();
    let started = Instant::now();
    let results = join_all(ids.iter().map(|id| {
        let registry = registry.clone();
        async move {
            for _ in 0..args.commands {
                registry.send(id, Deposit(1)).await?;
            }
            Ok::<_, CommandError<Infallible>>(())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let cpu = cpu_us() - cpu;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    for result in results {
        result?;
    }
    let commands = (args.entities * args.commands) as f64;
    println!(
        "{name}: {commands} commands, {:.1} allocations/command, {:.2} µs CPU/command, {:.0} commands/s",
        allocations as f64 / commands,
        cpu / commands,
        commands / elapsed.as_secs_f64(),
    );
    registry.stop().await;
    Ok(())
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.recorder {
        metrics_util::debugging::DebuggingRecorder::new().install()?;
    }
    let db = TestDatabase::new().await?;
    let config = db.config().ssl_mode(SslMode::Disable);
    let handle = DurableStore::new(config.clone())?;
    handle.create_schema().await?;
    if matches!(args.route.as_str(), "handle" | "both") {
        measure("handle", handle.clone().into(), &args).await?;
    }
    if matches!(args.route.as_str(), "actor" | "both") {
        let actor = DurableStoreActor::new(config)?.start();
        measure("actor", actor.into(), &args).await?;
    }
    drop(handle);
    db.cleanup().await?;
    Ok(())
}
