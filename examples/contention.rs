//! Several replicas of one service over one table, hammering the same ids: what callers see
//! (commands/s, conflicts) and what it costs (decisions per command), for a given
//! `ConflictPolicy`.
//!
//! Each replica is what a process of its own would be: its own actix system on its own
//! thread, its own store (pool) and registry. Every caller sends deposits of 1 to random ids;
//! at the end every stored balance is checked against the deposits acknowledged by all.
//!
//! With `--ownership`, each replica's registry has `RegistryBuilder::ownership`: a command
//! refused with `OwnedElsewhere` is forwarded to the owner (a map from replica name to
//! registry stands in for the application's call), and counted.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release --example contention -- --replicas 3 --ids 20 --callers 50 --seconds 5
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Message;
use clap::Parser;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, ConflictPolicy, DurableStateBehavior, DurableStore, Effect, EntityRegistry,
    HandleCommand, Ownership,
};
use futures_util::future::join_all;

#[derive(Parser, Debug)]
struct Args {
    /// Replicas (stores and registries) over the one table.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Hot ids all replicas write.
    #[arg(long, default_value_t = 20)]
    ids: usize,
    /// Callers per replica.
    #[arg(long, default_value_t = 50)]
    callers: usize,
    /// How long the callers send.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Decisions per command (`ConflictPolicy::attempts`); 1 fails at the first conflict.
    #[arg(long, default_value_t = ConflictPolicy::default().attempts)]
    attempts: u32,
    /// Connections per replica.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Ownership leases: each id live in one replica, refused commands forwarded to the owner.
    #[arg(long)]
    ownership: bool,
}

/// The replicas by name, for forwarding.
type Directory = Arc<Mutex<HashMap<String, EntityRegistry<Account>>>>;

#[derive(Clone, PartialEq, prost::Message)]
struct Balance {
    #[prost(int64, tag = "1")]
    cents: i64,
}

impl prost::Name for Balance {
    const NAME: &'static str = "Balance";
    const PACKAGE: &'static str = "contention.v1";
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
        Ok(Effect::persist(Balance { cents }, cents))
    }
}

#[derive(Default)]
struct Seen {
    acknowledged: HashMap<String, i64>,
    commands: u64,
    conflicts: u64,
    other_errors: u64,
    retries: u64,
    forwarded: u64,
}

fn replica(
    config: durablestore_postgres::Config,
    ids: Vec<String>,
    args: &Args,
    deadline: Instant,
    (name, directory): (String, Directory),
) -> std::thread::JoinHandle<Seen> {
    let (callers, attempts, ownership, replicas) =
        (args.callers, args.attempts, args.ownership, args.replicas);
    std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let store = DurableStore::new(config).expect("valid config");
            let builder = EntityRegistry::builder(store, |id: &str| Account { id: id.into() })
                .conflicts(ConflictPolicy {
                    attempts,
                    ..ConflictPolicy::default()
                });
            let builder = match ownership {
                true => builder.ownership(Ownership::leased(&name, Ownership::DEFAULT_LEASE)),
                false => builder,
            };
            let registry = builder.start().expect("on an arbiter");
            if let Ok(mut directory) = directory.lock() {
                directory.insert(name.clone(), registry.clone());
            }
            while directory.lock().map_or(0, |d| d.len()) < replicas {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let caller = |seed: u64| {
                let (registry, ids, directory) = (registry.clone(), ids.clone(), directory.clone());
                async move {
                    let mut rng = fastrand::Rng::with_seed(seed);
                    let mut seen = Seen::default();
                    while Instant::now() < deadline {
                        let id = &ids[rng.usize(..ids.len())];
                        seen.commands += 1;
                        let answer = match registry.send(id, Deposit(1)).await {
                            Err(CommandError::OwnedElsewhere { owner }) => {
                                seen.forwarded += 1;
                                let there =
                                    directory.lock().ok().and_then(|d| d.get(&owner).cloned());
                                match there {
                                    Some(there) => there.send(id, Deposit(1)).await,
                                    None => Err(CommandError::OwnedElsewhere { owner }),
                                }
                            }
                            other => other,
                        };
                        match answer {
                            Ok(_) => *seen.acknowledged.entry(id.clone()).or_default() += 1,
                            Err(CommandError::Conflict(_)) => seen.conflicts += 1,
                            Err(_) => seen.other_errors += 1,
                        }
                    }
                    seen
                }
            };
            let mut total = Seen::default();
            for seen in join_all((0..callers as u64).map(|i| caller(i * 7919 + 1))).await {
                total.commands += seen.commands;
                total.conflicts += seen.conflicts;
                total.other_errors += seen.other_errors;
                total.forwarded += seen.forwarded;
                for (id, n) in seen.acknowledged {
                    *total.acknowledged.entry(id).or_default() += n;
                }
            }
            total.retries = registry.stats().conflict_retries;
            // Every replica keeps serving forwarded commands until all callers are done.
            tokio::time::sleep_until((deadline + Duration::from_secs(2)).into()).await;
            registry.stop().await;
            total
        })
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let db = runtime.block_on(TestDatabase::new())?;
    let ids: Vec<String> = (0..args.ids).map(|i| format!("account-{i:03}")).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let directory: Directory = Arc::default();
    let replicas: Vec<_> = (0..args.replicas)
        .map(|r| {
            let config = db.config().max_connections(args.connections);
            let name = (format!("replica-{r}"), directory.clone());
            replica(config, ids.clone(), &args, deadline, name)
        })
        .collect();
    let seen: Vec<Seen> = replicas
        .into_iter()
        .map(|r| r.join().map_err(|_| "a replica panicked"))
        .collect::<Result<_, _>>()?;
    // The callers ran until the deadline; the replicas then stay up a moment for forwarded commands.
    let elapsed = (deadline - started).as_secs_f64();

    let commands: u64 = seen.iter().map(|s| s.commands).sum();
    let conflicts: u64 = seen.iter().map(|s| s.conflicts).sum();
    let other: u64 = seen.iter().map(|s| s.other_errors).sum();
    let retries: u64 = seen.iter().map(|s| s.retries).sum();
    let forwarded: u64 = seen.iter().map(|s| s.forwarded).sum();
    let mismatches = runtime.block_on(async {
        let store = DurableStore::new(db.config())?;
        let mut mismatches = 0;
        for id in &ids {
            let acknowledged: i64 = seen.iter().filter_map(|s| s.acknowledged.get(id)).sum();
            let stored = match store.get(id.clone()).await? {
                Some(state) => state.decode_state::<Balance>()?.cents,
                None => 0,
            };
            mismatches += usize::from(stored != acknowledged);
        }
        Ok::<_, durablestore_postgres::Error>(mismatches)
    })?;
    println!(
        "replicas={} ids={} callers={} attempts={} ownership={}: {commands} commands in \
         {elapsed:.1} s ({:.0}/s), forwarded {forwarded}, conflicts {conflicts} ({:.3} %), \
         other errors {other}, \
         {:.3} decisions per command, stored = acknowledged for {}/{} ids",
        args.replicas,
        args.ids,
        args.callers,
        args.attempts,
        args.ownership,
        commands as f64 / elapsed,
        100.0 * conflicts as f64 / commands.max(1) as f64,
        (commands + retries) as f64 / commands.max(1) as f64,
        ids.len() - mismatches,
        ids.len(),
    );
    runtime.block_on(db.cleanup())?;
    if mismatches > 0 {
        return Err("a stored balance differs from the acknowledged deposits".into());
    }
    Ok(())
}
