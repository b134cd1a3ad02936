//! The plain-handle example of the guide's store chapter (`src/guide/store.md`), verbatim
//! below this header (`tests/readme.rs` checks that and runs it on an empty schema).
//!
//! ```text
//! cargo run --example guide_handle
//! ```
use durablestore_postgres::{Config, DurableState, DurableStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config: Config = "postgres://postgres@127.0.0.1:5432/postgres".parse()?;
    run(config.schema("plain_handle")).await
}

pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = DurableStore::new(config)?; // inside a Tokio runtime
    store.create_schema().await?;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let state =
                    DurableState::new(format!("id-{i}"), 1, &prost_types::Duration::default());
                store.write(state).await // group-committed with the other 99
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    assert_eq!(store.list_persistence_ids(None, 1000).await?.len(), 100);
    Ok(())
}
