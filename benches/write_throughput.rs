//! 1,000 concurrent writers, each writing its next version of a 400-byte state as soon as the
//! previous write is acknowledged. Compares, in one run:
//! - `durablestore`: `DurableStoreActor` (group commit, version-checked), default config;
//! - `durable_entities`: the same through 1,000 `DurableEntity` actors, as users run it;
//! - `seed_baseline`: one unchecked `INSERT … ON CONFLICT` per write over a bb8 pool of 4, as
//!   eGo's Go store does;
//! - `ceiling`: raw tokio-postgres, pre-built 100-row UNNEST upserts on 4 connections, no actors.
//!
//! `cargo bench --bench write_throughput` (uses DATABASE_URL or the local server).

mod common;

use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use common::{Bump, Writer, bench_state, durable};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use durablestore_postgres::{DurableEntity, DurableStoreActor, WriteState};
use futures_util::future::join_all;
use tokio_postgres::types::ToSql;

const WRITERS: usize = 1000;
/// Writes per writer per measured iteration.
const ROUNDS: u64 = 5;

fn ids() -> Vec<String> {
    (0..WRITERS).map(|i| format!("writer-{i:04}")).collect()
}

fn write_throughput(c: &mut Criterion) {
    let system = actix::System::new();
    let mut group = c.benchmark_group("write_throughput");
    group.throughput(Throughput::Elements(WRITERS as u64 * ROUNDS));

    // ---- this crate ----
    {
        let db = system.block_on(common::database());
        let store = system.block_on(async {
            DurableStoreActor::new(common::store_config(&db))
                .unwrap()
                .start()
        });
        let ids = ids();
        let mut version = 0_u64;
        group.bench_function("durablestore", |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let base = version;
                        join_all(ids.iter().map(|id| {
                            let store = store.clone();
                            async move {
                                for v in base + 1..=base + ROUNDS {
                                    store
                                        .send(WriteState(durable(id, v)))
                                        .await
                                        .unwrap()
                                        .unwrap();
                                }
                            }
                        }))
                        .await;
                        version += ROUNDS;
                    }
                    started.elapsed()
                })
            })
        });
        system.block_on(db.cleanup()).unwrap();
    }

    // ---- this crate, through entity actors ----
    {
        let db = system.block_on(common::database());
        let entities: Vec<Addr<DurableEntity<Writer>>> = system.block_on(async {
            let store = DurableStoreActor::new(common::store_config(&db))
                .unwrap()
                .start();
            ids()
                .into_iter()
                .map(|id| DurableEntity::new(Writer { id }, store.clone()).start())
                .collect()
        });
        group.bench_function("durable_entities", |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        join_all(entities.iter().map(|e| async move {
                            for _ in 0..ROUNDS {
                                e.send(Bump).await.unwrap().unwrap();
                            }
                        }))
                        .await;
                    }
                    started.elapsed()
                })
            })
        });
        system.block_on(db.cleanup()).unwrap();
    }

    // ---- seed baseline: one upsert per write, pool of 4 ----
    {
        let db = system.block_on(common::database());
        let pool = system.block_on(common::baseline_pool(&db));
        let sql = common::single_upsert(db.schema());
        let ids = ids();
        let mut version = 0_i64;
        group.bench_function("seed_baseline", |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let base = version;
                        join_all(ids.iter().map(|id| {
                            let (pool, sql) = (pool.clone(), sql.as_str());
                            async move {
                                for v in base + 1..=base + ROUNDS as i64 {
                                    let payload =
                                        prost::Message::encode_to_vec(&bench_state(id, v));
                                    let client = pool.get().await.unwrap();
                                    common::upsert_one(&client, sql, id, v, &payload).await;
                                }
                            }
                        }))
                        .await;
                        version += ROUNDS as i64;
                    }
                    started.elapsed()
                })
            })
        });
        system.block_on(db.cleanup()).unwrap();
    }

    // ---- ceiling: pre-built 100-row statements, 4 raw connections ----
    {
        let db = system.block_on(common::database());
        let (clients, statements) = system.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..4 {
                clients.push(common::connect(&db).await);
            }
            let sql = common::unnest_upsert(db.schema());
            let mut statements = Vec::new();
            for client in &clients {
                statements.push(
                    client
                        .prepare_typed(&sql, &common::ARRAY_TYPES)
                        .await
                        .unwrap(),
                );
            }
            (clients, statements)
        });
        let ids = ids();
        let payloads: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| prost::Message::encode_to_vec(&bench_state(id, 1)))
            .collect();
        // 100-row chunks, built once: the ceiling measures the database, not the client.
        let chunks: Vec<(Vec<&str>, Vec<&[u8]>)> = ids
            .chunks(100)
            .zip(payloads.chunks(100))
            .map(|(i, p)| {
                (
                    i.iter().map(String::as_str).collect(),
                    p.iter().map(Vec::as_slice).collect(),
                )
            })
            .collect();
        let manifests = vec!["bench.v1.BenchState"; 100];
        let zeros = vec![0_i64; 100];
        let mut version = 0_i64;
        group.bench_function("ceiling", |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..ROUNDS {
                            version += 1;
                            let versions = vec![version; 100];
                            // Each connection sends its share of the chunks, one after another.
                            join_all((0..4).map(|lane| {
                                let (client, statement) = (&clients[lane], &statements[lane]);
                                let chunks = chunks.iter().skip(lane).step_by(4);
                                let (versions, manifests, zeros) = (&versions, &manifests, &zeros);
                                async move {
                                    for (ids, payloads) in chunks {
                                        let params: [&(dyn ToSql + Sync); 6] =
                                            [ids, versions, payloads, manifests, zeros, zeros];
                                        client.execute(statement, &params).await.unwrap();
                                    }
                                }
                            }))
                            .await;
                        }
                    }
                    started.elapsed()
                })
            })
        });
        system.block_on(db.cleanup()).unwrap();
    }
    group.finish();
    // Let the store actors' connections close before the system goes.
    system.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = write_throughput
}
criterion_main!(benches);
