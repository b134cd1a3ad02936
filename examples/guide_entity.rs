//! The durable-entity example of the guide's entities chapter (`src/guide/entities.md`),
//! verbatim below this header (`tests/readme.rs` checks that and runs it on an empty schema).
//!
//! ```text
//! cargo run --example guide_entity
//! ```
use std::convert::Infallible;

use actix::Message;
use durablestore_postgres::{
    CommandError, Config, DurableStateBehavior, DurableStore, Effect, EntityRegistry, HandleCommand,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct AccountState {
    #[prost(int64, tag = "1")]
    pub balance_cents: i64,
}
impl prost::Name for AccountState {
    const NAME: &'static str = "AccountState";
    const PACKAGE: &'static str = "bank.v1";
}

/// The entity; add any non-durable fields you need.
pub struct Account {
    pub id: String,
}
impl DurableStateBehavior for Account {
    type State = AccountState;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, Message)]
#[rtype(result = "Result<i64, CommandError<Infallible>>")]
pub struct Deposit(pub i64);

impl HandleCommand<Deposit> for Account {
    type Reply = i64;
    type Error = Infallible; // a deposit is never refused
    fn handle_command(
        &mut self,
        Deposit(cents): Deposit,
        state: &AccountState,
        _version: u64,
    ) -> Result<Effect<AccountState, i64>, Infallible> {
        let balance_cents = state.balance_cents + cents;
        Ok(Effect::persist(
            AccountState { balance_cents },
            balance_cents,
        ))
    }
}

#[derive(Debug, PartialEq)]
pub struct InsufficientFunds;

#[derive(Clone, Message)]
#[rtype(result = "Result<i64, CommandError<InsufficientFunds>>")]
pub struct Withdraw(pub i64);

impl HandleCommand<Withdraw> for Account {
    type Reply = i64;
    type Error = InsufficientFunds;
    fn handle_command(
        &mut self,
        Withdraw(cents): Withdraw,
        state: &AccountState,
        _version: u64,
    ) -> Result<Effect<AccountState, i64>, InsufficientFunds> {
        if cents > state.balance_cents {
            return Err(InsufficientFunds); // nothing is written
        }
        let balance_cents = state.balance_cents - cents;
        Ok(Effect::persist(
            AccountState { balance_cents },
            balance_cents,
        ))
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(Config::from_env()?).await // DATABASE_URL
}

pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = DurableStore::new(config)?;
    store.create_schema().await?; // the schema and table, if missing
    // Once per behavior type: entities by id, started on first use, passivated when idle.
    let accounts =
        EntityRegistry::builder(store, |id: &str| Account { id: id.to_owned() }).start()?;

    let balance = accounts.send("account-42", Deposit(1_000)).await?;
    println!("deposited; balance {balance}");
    match accounts.send("account-42", Withdraw(500)).await {
        Ok(balance) => println!("withdrawn; balance {balance}"),
        Err(CommandError::Rejected(InsufficientFunds)) => println!("refused"),
        Err(other) => return Err(format!("not persisted: {other:?}").into()),
    }
    accounts.stop().await; // every entity answers what it holds, then stops
    Ok(())
}
