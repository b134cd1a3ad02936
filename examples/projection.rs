//! An exactly-once projection: a read model in PostgreSQL kept from the change feed, with the
//! feed's offset stored in the same transaction as the read model's update.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --example projection
//! ```
//! The read model is one row per account (`balances`) and the projection's offset
//! (`projection_offsets`). Each page of changes is applied in one transaction that also moves
//! the offset: a crash before the commit loses both, a crash after keeps both, so a restarted
//! projection resumes exactly where its read model is. The feed delivers at least once (a
//! change may come again), so each row is only moved forward (`version` must grow): together,
//! each change counts once. `tests/changes.rs` crashes it in the middle and checks its totals.

use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::tokio_postgres::{Client, GenericClient};
use durablestore_postgres::{Change, DurableState, DurableStore, Offset};

/// Errors of the store, of the read model's connection, and of a stored offset.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The state the example's entities keep.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Account {
    /// The account's balance, in cents.
    #[prost(int64, tag = "1")]
    pub balance: i64,
}

impl prost::Name for Account {
    const NAME: &'static str = "Account";
    const PACKAGE: &'static str = "example.projection";
}

/// The projection's name in `projection_offsets`.
const NAME: &str = "balances";
/// Changes per page, and so per read-model transaction.
const PAGE: usize = 100;

/// Creates the read model's tables in `schema`.
pub async fn create_read_model(client: &Client, schema: &str) -> Result<(), BoxError> {
    client
        .batch_execute(&format!(
            r#"CREATE TABLE IF NOT EXISTS "{schema}".balances (
                   persistence_id TEXT PRIMARY KEY,
                   version BIGINT NOT NULL,
                   balance BIGINT NOT NULL);
               CREATE TABLE IF NOT EXISTS "{schema}".projection_offsets (
                   projection TEXT PRIMARY KEY,
                   resume_from TEXT NOT NULL);"#
        ))
        .await?;
    Ok(())
}

/// Applies the feed to the read model until it has caught up; returns how many changes it
/// applied. With `crash_after`, it stops in the middle of a page's transaction after that many
/// changes, as a process killed there would (the transaction is rolled back).
pub async fn project(
    store: &DurableStore,
    client: &mut Client,
    schema: &str,
    crash_after: Option<usize>,
) -> Result<usize, BoxError> {
    let mut applied = 0;
    loop {
        let from = stored_offset(client, schema).await?;
        let page = store.changes_page(&from, PAGE).await?;
        if page.next == from {
            return Ok(applied);
        }
        let tx = client.transaction().await?;
        for change in &page.changes {
            if crash_after == Some(applied) {
                // Dropping the transaction rolls it back: the read model and the offset stay
                // where the last commit left them.
                return Ok(applied);
            }
            apply(&tx, schema, change).await?;
            applied += 1;
        }
        tx.execute(
            &format!(
                r#"INSERT INTO "{schema}".projection_offsets VALUES ($1, $2)
                   ON CONFLICT (projection) DO UPDATE SET resume_from = EXCLUDED.resume_from"#
            ),
            &[&NAME, &page.next.to_string()],
        )
        .await?;
        tx.commit().await?;
    }
}

/// The projection's stored offset, or the beginning.
async fn stored_offset(client: &Client, schema: &str) -> Result<Offset, BoxError> {
    let row = client
        .query_opt(
            &format!(
                r#"SELECT resume_from FROM "{schema}".projection_offsets WHERE projection = $1"#
            ),
            &[&NAME],
        )
        .await?;
    match row {
        None => Ok(Offset::BEGINNING),
        Some(row) => {
            let text: String = row.try_get(0)?;
            Ok(text.parse()?)
        }
    }
}

/// One change into the read model, only forward: a change delivered again changes nothing.
async fn apply(tx: &impl GenericClient, schema: &str, change: &Change) -> Result<(), BoxError> {
    let version = i64::try_from(change.version).unwrap_or(i64::MAX);
    match &change.state {
        Some(state) => {
            let account: Account = state.decode_state()?;
            tx.execute(
                &format!(
                    r#"INSERT INTO "{schema}".balances AS b VALUES ($1, $2, $3)
                       ON CONFLICT (persistence_id) DO UPDATE
                       SET version = EXCLUDED.version, balance = EXCLUDED.balance
                       WHERE b.version < EXCLUDED.version"#
                ),
                &[&change.persistence_id, &version, &account.balance],
            )
            .await
        }
        None => {
            tx.execute(
                &format!(
                    r#"DELETE FROM "{schema}".balances WHERE persistence_id = $1 AND version < $2"#
                ),
                &[&change.persistence_id, &version],
            )
            .await
        }
    }?;
    Ok(())
}

/// The read model's totals: how many accounts, and the sum of their balances.
pub async fn totals(client: &Client, schema: &str) -> Result<(i64, i64), BoxError> {
    let row = client
        .query_one(
            &format!(
                r#"SELECT count(*), coalesce(sum(balance), 0)::int8 FROM "{schema}".balances"#
            ),
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let db = TestDatabase::new().await?;
    let store = DurableStore::new(db.config().change_feed(true))?;
    store.create_schema().await?;
    let mut client = db.client().await?;
    create_read_model(&client, db.schema()).await?;

    for version in 1..=3_u64 {
        for n in 0..50 {
            let account = Account {
                balance: (n * 100 + version) as i64,
            };
            let id = format!("account-{n}");
            store
                .write(DurableState::new(id, version, &account))
                .await?;
        }
    }
    store.delete("account-0", 4).await?;

    // A first run that dies half-way, then the restarted one.
    let first = project(&store, &mut client, db.schema(), Some(70)).await?;
    let second = project(&store, &mut client, db.schema(), None).await?;
    let (accounts, sum) = totals(&client, db.schema()).await?;
    println!("applied {first} changes, crashed, then {second}: {accounts} accounts, balance {sum}");
    db.cleanup().await?;
    Ok(())
}
