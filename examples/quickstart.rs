//! Connect, create the table, write a state, read it back, ping.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//! Uses `DATABASE_URL`, defaulting to `postgres://postgres@127.0.0.1:5432/postgres`, and its own
//! schema `durablestore_quickstart`. Run it again and the entity moves on to its next version.

use std::process::ExitCode;
use std::time::Duration;

use actix::Actor;
use durablestore_postgres::{
    Config, CreateSchema, DurableState, DurableStoreActor, GetLatestState, Ping, WriteState,
};

/// The entity's state: any prost message with a `prost::Name`.
#[derive(Clone, PartialEq, prost::Message)]
struct Counter {
    #[prost(int64, tag = "1")]
    value: i64,
}

impl prost::Name for Counter {
    const NAME: &'static str = "Counter";
    const PACKAGE: &'static str = "quickstart";
}

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[actix::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart failed: {error}");
            eprintln!(
                "Is PostgreSQL running? Set DATABASE_URL (default {DEFAULT_URL}), e.g.\n  \
                 DATABASE_URL=postgres://user:password@host:5432/db cargo run --example quickstart"
            );
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let config = url
        .parse::<Config>()?
        .schema("durablestore_quickstart")
        .checkout_timeout(Duration::from_secs(3));
    println!("connecting with {config:?}");
    let store = DurableStoreActor::new(config)?.start();

    store.send(Ping).await??;
    println!("ping: the database answers");
    store.send(CreateSchema).await??;
    println!("schema durablestore_quickstart and table states_store are ready");

    let id = "counter-1";
    let previous = store.send(GetLatestState(id.into())).await??;
    let (version, value) = match &previous {
        Some(state) => (state.version_number, state.decode_state::<Counter>()?.value),
        None => (0, 0),
    };
    println!("read {id}: version {version}, value {value}");

    let next = Counter { value: value + 1 };
    let outcome = store
        .send(WriteState(DurableState::new(id, version + 1, &next)))
        .await??;
    println!(
        "wrote {id}: version {}, value {} ({outcome:?})",
        version + 1,
        next.value
    );

    let latest = store
        .send(GetLatestState(id.into()))
        .await??
        .ok_or("the state just written is missing")?;
    let read: Counter = latest.decode_state()?;
    println!(
        "read back {id}: version {}, value {}, type {}",
        latest.version_number,
        read.value,
        latest.state_type().unwrap_or("?")
    );
    if read != next || latest.version_number != version + 1 {
        return Err("the state read back differs from the one written".into());
    }
    Ok(())
}
