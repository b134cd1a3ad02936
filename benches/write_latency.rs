//! One writer, sequential writes of a 400-byte state: the latency a lone write pays.
//! Compares `durablestore` (`WriteState` through the actor, version-checked) with
//! `bare_round_trip` (one prepared single-row upsert on one raw tokio-postgres connection).
//!
//! `cargo bench --bench write_latency`

mod common;

use std::time::{Duration, Instant};

use actix::Actor;
use common::{bench_state, durable};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use durablestore_postgres::{DurableStoreActor, WriteState};

fn write_latency(c: &mut Criterion) {
    let system = actix::System::new();
    let mut group = c.benchmark_group("write_latency");
    group.throughput(Throughput::Elements(1));

    {
        let db = system.block_on(common::database());
        let store = system.block_on(async {
            DurableStoreActor::new(common::store_config(&db))
                .unwrap()
                .start()
        });
        let mut version = 0;
        group.bench_function("durablestore", |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        version += 1;
                        let state = durable("latency", version);
                        store.send(WriteState(state)).await.unwrap().unwrap();
                    }
                    started.elapsed()
                })
            })
        });
        system.block_on(db.cleanup()).unwrap();
    }

    {
        let db = system.block_on(common::database());
        let (client, statement) = system.block_on(async {
            let client = common::connect(&db).await;
            let statement = client
                .prepare(&common::single_upsert(db.schema()))
                .await
                .unwrap();
            (client, statement)
        });
        let mut version = 0_i64;
        group.bench_function("bare_round_trip", |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        version += 1;
                        let payload =
                            prost::Message::encode_to_vec(&bench_state("latency", version));
                        client
                            .execute(
                                &statement,
                                &[
                                    &"latency",
                                    &version,
                                    &payload,
                                    &"bench.v1.BenchState",
                                    &0_i64,
                                    &0_i64,
                                ],
                            )
                            .await
                            .unwrap();
                    }
                    started.elapsed()
                })
            })
        });
        system.block_on(db.cleanup()).unwrap();
    }
    group.finish();
    system.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = write_latency
}
criterion_main!(benches);
