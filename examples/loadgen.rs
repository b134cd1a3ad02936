//! Load generator: durable entities persisting as fast as your database lets them.
//!
//! ```text
//! cargo run --release --example loadgen -- --entities 1000 --duration 20 --state-bytes 400
//! ```
//! Starts `--entities` `DurableEntity` actors on one `DurableStoreActor` (pool of
//! `--connections`), then `--concurrency` clients send commands round-robin over the entities
//! for `--duration` seconds; every command persists a new state of `--state-bytes` bytes. Prints
//! a progress bar while it runs and, at the end, throughput and latency percentiles (command
//! sent → reply received, so it includes the persist). Uses `DATABASE_URL` (default the local
//! server) and its own schema, emptied first and dropped at the end. Exits non-zero on any
//! error.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Message};
use clap::Parser;
use durablestore_postgres::{
    CommandError, Config, CreateSchema, DurableEntity, DurableStateBehavior, DurableStoreActor,
    Effect, HandleCommand, Ping,
};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "Durable entities persisting through durablestore-postgres as fast as they can")]
struct Args {
    /// Number of entities (rows).
    #[arg(long, default_value_t = 1000)]
    entities: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Encoded size of each state, in bytes (give or take the 1–3 bytes of its counter).
    #[arg(long, default_value_t = 400)]
    state_bytes: usize,
    /// Clients sending commands at once (default: one per entity).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Pool size of the store.
    #[arg(long, default_value_t = durablestore_postgres::Config::DEFAULT_MAX_CONNECTIONS)]
    connections: u32,
    /// Largest batch per statement.
    #[arg(long, default_value_t = durablestore_postgres::Config::DEFAULT_MAX_BATCH_SIZE)]
    max_batch_size: usize,
    /// Schema to use (emptied first, dropped at the end).
    #[arg(long, default_value = "durablestore_loadgen")]
    schema: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LoadState {
    #[prost(uint64, tag = "1")]
    counter: u64,
    #[prost(bytes = "vec", tag = "2")]
    padding: Vec<u8>,
}

impl prost::Name for LoadState {
    const NAME: &'static str = "LoadState";
    const PACKAGE: &'static str = "loadgen.v1";
}

struct Entity {
    id: String,
    padding: Vec<u8>,
}

impl DurableStateBehavior for Entity {
    type State = LoadState;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, Message)]
#[rtype(result = "Result<u64, CommandError<()>>")]
struct Touch;

impl HandleCommand<Touch> for Entity {
    type Reply = u64;
    type Error = ();
    fn handle_command(
        &mut self,
        _: Touch,
        state: &LoadState,
        version: u64,
    ) -> Result<Effect<LoadState, u64>, ()> {
        let next = LoadState {
            counter: state.counter + 1,
            padding: self.padding.clone(),
        };
        Ok(Effect::persist(next, version + 1))
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let config = url
        .parse::<Config>()?
        .schema(&args.schema)
        .max_connections(args.connections)
        .max_batch_size(args.max_batch_size);
    let store = DurableStoreActor::new(config.clone())?.start();
    store.send(Ping).await??;
    run_sql(
        &config,
        &format!("DROP SCHEMA IF EXISTS {} CASCADE", args.schema),
    )
    .await?;
    store.send(CreateSchema).await??;

    // The padding field's tag and length take 3 bytes, the counter's tag and varint 2 to 4.
    let padding = vec![0x5a; args.state_bytes.saturating_sub(6)];
    let entities: Vec<Addr<DurableEntity<Entity>>> = (0..args.entities)
        .map(|i| {
            let entity = Entity {
                id: format!("load-{i:07}"),
                padding: padding.clone(),
            };
            DurableEntity::new(entity, store.clone()).start()
        })
        .collect();
    let concurrency = args
        .concurrency
        .unwrap_or(args.entities)
        .clamp(1, args.entities.max(1));

    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Rc::new(RefCell::new(0_u64));
    let duration = Duration::from_secs(args.duration);
    let bar = ProgressBar::new(args.duration);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}",
    )?);
    let started = Instant::now();
    let deadline = started + duration;

    let ticker = {
        let (bar, histogram) = (bar.clone(), histogram.clone());
        actix::spawn(async move {
            let mut last = 0;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = histogram.borrow().len();
                bar.set_position(started.elapsed().as_secs().min(duration.as_secs()));
                bar.set_message(format!("{} states/s", done - last));
                last = done;
            }
        })
    };
    // Client `c` drives entities c, c + concurrency, c + 2·concurrency, ... in turn.
    let clients = (0..concurrency).map(|client| {
        let mine: Vec<_> = entities
            .iter()
            .skip(client)
            .step_by(concurrency)
            .cloned()
            .collect();
        let (histogram, errors) = (histogram.clone(), errors.clone());
        async move {
            let mut turn = 0;
            while Instant::now() < deadline {
                let entity = &mine[turn % mine.len()];
                turn += 1;
                let sent = Instant::now();
                match entity.send(Touch).await {
                    Ok(Ok(_)) => {
                        let micros = sent.elapsed().as_micros() as u64;
                        let _ = histogram.borrow_mut().record(micros.max(1));
                    }
                    Ok(Err(error)) => {
                        *errors.borrow_mut() += 1;
                        bar_error(&error);
                    }
                    Err(error) => {
                        *errors.borrow_mut() += 1;
                        eprintln!("mailbox error: {error}");
                    }
                }
            }
        }
    });
    join_all(clients).await;
    let elapsed = started.elapsed();
    let _ = ticker.await;
    bar.finish_and_clear();

    let histogram = histogram.borrow().clone();
    let errors = *errors.borrow();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} entities, {concurrency} clients, {} connections, {}-byte states, {:.1} s",
        args.entities,
        args.connections,
        args.state_bytes,
        elapsed.as_secs_f64()
    );
    println!(
        "persisted {} states: {:.0} states/s, {errors} errors",
        histogram.len(),
        histogram.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    );
    drop(entities);
    run_sql(
        &config,
        &format!("DROP SCHEMA IF EXISTS {} CASCADE", args.schema),
    )
    .await?;
    if errors > 0 {
        return Err(format!("{errors} commands failed").into());
    }
    Ok(())
}

fn bar_error(error: &CommandError<()>) {
    eprintln!("command failed: {error:?}");
}

async fn run_sql(config: &Config, sql: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (client, connection) = config
        .pg_config()
        .connect(durablestore_postgres::tokio_postgres::NoTls)
        .await?;
    let connection = actix::spawn(connection);
    client.batch_execute(sql).await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}
