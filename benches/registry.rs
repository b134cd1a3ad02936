//! Commands through an `EntityRegistry` against the same commands sent to `DurableEntity`
//! addresses kept by hand, in one run: 1,000 entities, each persisting a new 400-byte state on
//! every command, one client per entity sending its next command as soon as the previous is
//! answered.
//!
//! The two variants alternate round by round (which goes first alternates too), each round
//! after a `CHECKPOINT` so neither inherits the other's dirty pages; the table shows the median
//! of the rounds and the ratio of the medians. Both variants run on one `DurableStore` handle,
//! each on its own ids, and every entity is started (and recovered) before the first round, so
//! the rounds measure routing, not activation.
//!
//! The same comparison on a `MemoryStore` shows the routing cost without the database's share
//! of each command: an upper bound of what the registry adds.
//!
//! `cargo bench --bench registry` (uses DATABASE_URL or the local server); `-- --rounds N`.

mod common;

use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use common::{Bump, Writer};
use durablestore_postgres::{DurableEntity, DurableStore, EntityRegistry, MemoryStore, StateStore};
use futures_util::future::join_all;

const ENTITIES: usize = 1000;
/// Commands per entity per round on PostgreSQL (about 1.5 s a round here).
const COMMANDS: u64 = 100;
/// Commands per entity per round on the `MemoryStore`, whose commands are ~8× cheaper.
const MEMORY_COMMANDS: u64 = 800;
const DEFAULT_ROUNDS: usize = 9;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Direct,
    Registry,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct `Addr<DurableEntity>`",
            Variant::Registry => "`EntityRegistry::send`",
        }
    }
}

struct Setup {
    /// Commands per entity per round.
    commands: u64,
    direct: Vec<Addr<DurableEntity<Writer>>>,
    registry: EntityRegistry<Writer>,
    registry_ids: Vec<String>,
}

impl Setup {
    /// Runs one round of `variant`; returns states persisted per second.
    async fn round(&self, variant: Variant) -> f64 {
        let started = Instant::now();
        match variant {
            Variant::Direct => {
                join_all(self.direct.iter().map(|entity| async move {
                    for _ in 0..self.commands {
                        entity.send(Bump).await.unwrap().unwrap();
                    }
                }))
                .await;
            }
            Variant::Registry => {
                join_all(self.registry_ids.iter().map(|id| async move {
                    for _ in 0..self.commands {
                        self.registry.send(id, Bump).await.unwrap();
                    }
                }))
                .await;
            }
        }
        (ENTITIES as u64 * self.commands) as f64 / started.elapsed().as_secs_f64()
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let rounds = std::env::args()
        .skip_while(|arg| arg != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    actix::System::new().block_on(async {
        let db = common::database().await;
        let checkpoints = common::connect(&db).await;
        let store = DurableStore::new(common::store_config(&db)).unwrap();
        let postgres = compare(store.into(), COMMANDS, rounds, || async {
            checkpoints.batch_execute("CHECKPOINT").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        db.cleanup().await.unwrap();
        let memory = MemoryStore::default().start().into();
        let memory = compare(memory, MEMORY_COMMANDS, rounds, || async {}).await;

        println!(
            "\n{ENTITIES} entities; {COMMANDS} commands each per round on PostgreSQL, \
             {MEMORY_COMMANDS} on the MemoryStore; median of {rounds} rounds, states/s:\n"
        );
        println!(
            "| store | direct `Addr<DurableEntity>` | `EntityRegistry::send` | ratio of the medians | median of the rounds' ratios |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, result) in [("PostgreSQL", postgres), ("MemoryStore", memory)] {
            println!(
                "| {name} | {:.0} | {:.0} | {:.1} % | {:.1} % |",
                result.direct,
                result.registry,
                result.registry / result.direct * 100.0,
                result.paired * 100.0
            );
        }
    });
}

/// What `compare` measured.
struct Comparison {
    /// Median states/s of the direct addresses.
    direct: f64,
    /// Median states/s through the registry.
    registry: f64,
    /// Median over the rounds of registry / direct within the round: the two ran back to back,
    /// so this ratio shrugs off the machine's slow and fast phases.
    paired: f64,
}

/// Alternates the two variants on `store` for `rounds` rounds of `commands` commands per
/// entity, each after `settle`.
async fn compare<F: std::future::Future<Output = ()>>(
    store: StateStore,
    commands: u64,
    rounds: usize,
    settle: impl Fn() -> F,
) -> Comparison {
    let direct: Vec<_> = (0..ENTITIES)
        .map(|i| {
            let id = format!("direct-{i:04}");
            DurableEntity::new(Writer { id }, store.clone()).start()
        })
        .collect();
    let registry = EntityRegistry::builder(store, |id: &str| Writer { id: id.to_owned() })
        .idle_timeout(None)
        .start()
        .unwrap();
    let registry_ids: Vec<String> = (0..ENTITIES).map(|i| format!("registry-{i:04}")).collect();
    let setup = Setup {
        commands,
        direct,
        registry,
        registry_ids,
    };

    // Start and recover every entity, and warm both paths up.
    setup.round(Variant::Direct).await;
    setup.round(Variant::Registry).await;
    assert_eq!(setup.registry.stats().activations, ENTITIES as u64);

    let mut direct = Vec::new();
    let mut registry = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Variant::Direct, Variant::Registry]
        } else {
            [Variant::Registry, Variant::Direct]
        };
        for variant in order {
            settle().await;
            let rate = setup.round(variant).await;
            eprintln!("round {round}: {:<30} {rate:>9.0} states/s", variant.name());
            match variant {
                Variant::Direct => direct.push(rate),
                Variant::Registry => registry.push(rate),
            }
        }
    }
    assert_eq!(
        setup.registry.stats().activations,
        ENTITIES as u64,
        "no entity restarted"
    );
    setup.registry.stop().await;
    let mut paired: Vec<f64> = registry.iter().zip(&direct).map(|(r, d)| r / d).collect();
    Comparison {
        direct: median(&mut direct),
        registry: median(&mut registry),
        paired: median(&mut paired),
    }
}
