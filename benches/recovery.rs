//! 10,000 entities recovering at once: 10,000 concurrent reads of their latest state.
//! Compares `durablestore` (`GetLatestState` through the actor, batched into `= ANY($1)`)
//! with `select_per_id` (one `SELECT … WHERE persistence_id = $1` per id over a bb8 pool of 4).
//!
//! `cargo bench --bench recovery`

mod common;

use std::time::{Duration, Instant};

use actix::Actor;
use common::durable;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use durablestore_postgres::{DurableStoreActor, GetLatestState, WriteState};
use futures_util::future::join_all;
use tokio_postgres::types::Type;

const ENTITIES: usize = 10_000;

fn recovery(c: &mut Criterion) {
    let system = actix::System::new();
    let db = system.block_on(common::database());
    let ids: Vec<String> = (0..ENTITIES).map(|i| format!("entity-{i:05}")).collect();
    let store = system.block_on(async {
        let store = DurableStoreActor::new(common::store_config(&db))
            .unwrap()
            .start();
        join_all(ids.iter().map(|id| store.send(WriteState(durable(id, 1))))).await;
        store
    });

    let mut group = c.benchmark_group("recovery");
    group.throughput(Throughput::Elements(ENTITIES as u64));
    group.bench_function("durablestore", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let reads =
                        join_all(ids.iter().map(|id| store.send(GetLatestState(id.clone()))));
                    for read in reads.await {
                        assert!(read.unwrap().unwrap().is_some());
                    }
                }
                started.elapsed()
            })
        })
    });

    let pool = system.block_on(common::baseline_pool(&db));
    let sql = format!(
        "SELECT persistence_id, version_number, state_payload, state_manifest, timestamp, shard_number \
         FROM {}.states_store WHERE persistence_id = $1",
        db.schema()
    );
    group.bench_function("select_per_id", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let reads = join_all(ids.iter().map(|id| {
                        let (pool, sql) = (pool.clone(), sql.as_str());
                        async move {
                            let client = pool.get().await.unwrap();
                            client.query_typed(sql, &[(id, Type::TEXT)]).await.unwrap()
                        }
                    }));
                    for rows in reads.await {
                        assert_eq!(rows.len(), 1);
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    system.block_on(db.cleanup()).unwrap();
    system.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = recovery
}
criterion_main!(benches);
