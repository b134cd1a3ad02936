//! The delete-and-purge example of the guide's deleting chapter (`src/guide/deleting.md`),
//! verbatim below this header (`tests/readme.rs` checks that and runs it on a schema where
//! `account-7` has a state).
//!
//! ```text
//! cargo run --example guide_delete
//! ```
use actix::Actor;
use durablestore_postgres::{Config, DeleteState, DurableStoreActor, GetRevision, PurgeDeleted};
use std::time::Duration;

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(Config::from_env()?).await
}

pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = DurableStoreActor::new(config)?.start();
    let revision = store.send(GetRevision("account-7".into())).await??;
    if let Some(state) = revision.state {
        let delete = DeleteState {
            persistence_id: state.persistence_id,
            version: revision.version + 1,
        };
        store.send(delete).await??;
    }
    let week = Duration::from_secs(7 * 24 * 3600);
    let purged = store.send(PurgeDeleted { older_than: week }).await??;
    println!("{purged} tombstones purged");
    Ok(())
}
