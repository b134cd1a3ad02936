//! The README's first example, verbatim below this header (`tests/readme.rs` checks that and
//! runs it on an empty schema).
//!
//! ```text
//! cargo run --example readme
//! ```
use actix::Actor;
use durablestore_postgres::{
    Config, CreateSchema, DurableState, DurableStoreActor, GetLatestState, WriteState,
};

/// The state: any prost message with a `prost::Name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    #[prost(int64, tag = "1")]
    pub value: i64,
}
impl prost::Name for Counter {
    const NAME: &'static str = "Counter";
    const PACKAGE: &'static str = "demo.v1";
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    run(url.parse()?).await
}

pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = DurableStoreActor::new(config)?.start();
    store.send(CreateSchema).await??; // the schema and table, if missing

    let id = "counter-1";
    let (version, value) = match store.send(GetLatestState(id.into())).await?? {
        Some(latest) => (
            latest.version_number,
            latest.decode_state::<Counter>()?.value,
        ),
        None => (0, 0),
    };
    let next = Counter { value: value + 1 };
    store
        .send(WriteState(DurableState::new(id, version + 1, &next)))
        .await??;
    println!("{id}: version {}, value {}", version + 1, next.value);
    Ok(())
}
