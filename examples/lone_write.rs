//! The latency of a lone write, interleaved: every iteration writes once through each variant
//! in turn, so all of them see the same machine at the same moment.
//!
//! - `bare_upsert`: one prepared single-row `INSERT … ON CONFLICT DO UPDATE` on a tokio-postgres
//!   connection of its own (what a hand-written store sends);
//! - `bare_update`: the crate's version-checked single-row `UPDATE … RETURNING` sent by hand on
//!   a connection of its own (what the store sends, without the store);
//! - `store`: `DurableStore::write` on the handle;
//! - `actor`: `WriteState` to a `DurableStoreActor`.
//!
//! Each variant writes its own id, one write at a time. Prints p50 and p99 of each and the
//! ratio of each p50 to `bare_upsert`'s.
//!
//! ```text
//! cargo run --release --example lone_write -- --writes 5000
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

use std::time::Instant;

use actix::Actor;
use clap::Parser;
use common::{bench_state, durable};
use durablestore_postgres::{DurableStore, DurableStoreActor, WriteState};
use hdrhistogram::Histogram;
use tokio_postgres::types::ToSql;

#[derive(Parser, Debug)]
#[command(about = "lone write latency, interleaved")]
struct Args {
    /// Writes per variant.
    #[arg(long, default_value_t = 5000)]
    writes: u64,
    /// Variants to run, comma-separated.
    #[arg(long, default_value = "bare_upsert,bare_update,store,actor")]
    only: String,
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let db = common::database().await;
    let config = common::store_config(&db);
    let store = DurableStore::new(config.clone())?;
    store.create_schema().await?;
    let actor = DurableStoreActor::new(config)?.start();
    let table = format!("{}.states_store", db.schema());
    let upsert_client = common::connect(&db).await;
    let upsert = upsert_client
        .prepare_typed(&common::single_upsert(db.schema()), &common::ROW_TYPES)
        .await?;
    let update_client = common::connect(&db).await;
    let update_sql = format!(
        "UPDATE {table} SET version_number = $2::int8, state_payload = $3::bytea, \
         state_manifest = $4::text, \"timestamp\" = $5::int8, shard_number = $6::int8 \
         WHERE persistence_id = $1::text AND version_number = $2::int8 - 1 \
         RETURNING persistence_id"
    );
    let update = update_client
        .prepare_typed(&update_sql, &common::ROW_TYPES)
        .await?;
    let payload = prost::Message::encode_to_vec(&bench_state("bare", 1));
    let variants: Vec<&str> = args.only.split(',').collect();
    let mut histograms: Vec<Histogram<u64>> = variants
        .iter()
        .map(|_| Histogram::new(3))
        .collect::<Result<_, _>>()?;
    // Every variant's id exists at version 1 before the measured writes.
    for id in ["bare_upsert", "bare_update", "store", "actor"] {
        store.write(durable(id, 1)).await?;
    }
    for version in 2..args.writes + 2 {
        let v = version as i64;
        for (variant, histogram) in variants.iter().zip(&mut histograms) {
            let params: [&(dyn ToSql + Sync); 6] = [
                variant,
                &v,
                &payload,
                &"google.protobuf.Any",
                &0_i64,
                &0_i64,
            ];
            // Built before the clock starts: what the caller hands over, not its making.
            let state = durable(variant, version);
            let sent = Instant::now();
            match *variant {
                "bare_upsert" => {
                    upsert_client.execute(&upsert, &params).await?;
                }
                "bare_update" => {
                    update_client.query(&update, &params).await?;
                }
                "store" => {
                    store.write(state).await?;
                }
                "actor" => {
                    actor.send(WriteState(state)).await??;
                }
                other => return Err(format!("unknown variant {other}").into()),
            }
            let _ = histogram.record(sent.elapsed().as_micros() as u64);
        }
    }
    let p50 = |h: &Histogram<u64>| h.value_at_quantile(0.5) as f64;
    let base = variants
        .iter()
        .position(|v| *v == "bare_upsert")
        .map(|i| p50(&histograms[i]));
    for (variant, histogram) in variants.iter().zip(&histograms) {
        let ratio = base.map_or(String::new(), |b| format!("  {:.2}x", p50(histogram) / b));
        println!(
            "{variant:12} p50 {:6.0} µs  p99 {:6.0} µs{ratio}",
            p50(histogram),
            histogram.value_at_quantile(0.99) as f64
        );
    }
    drop(store);
    db.cleanup().await?;
    Ok(())
}
