//! Durable bank accounts: entity actors that persist through `DurableStoreActor`, are stopped,
//! and come back with exactly the state they acknowledged.
//!
//! ```text
//! cargo run --example bank_account [ACCOUNTS]
//! ```
//! Uses `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and its own schema
//! `durablestore_bank_example`, emptied on start. Exits non-zero if any recovered account differs
//! from what was acknowledged before the restart.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Message};
use durablestore_postgres::{
    CommandError, Config, CreateSchema, DurableEntity, DurableStateBehavior, DurableStoreActor,
    Effect, HandleCommand, Passivate, Ping,
};
use futures_util::future::join_all;

// ---- the domain: state, commands, decisions ----

/// The durable state of one account.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AccountState {
    #[prost(string, tag = "1")]
    pub owner: String,
    #[prost(int64, tag = "2")]
    pub balance_cents: i64,
    #[prost(bool, tag = "3")]
    pub open: bool,
}

impl prost::Name for AccountState {
    const NAME: &'static str = "AccountState";
    const PACKAGE: &'static str = "bank.v1";
}

/// The entity. `id` names its row; `overdraft_cents` is an ordinary field of its own (settings,
/// caches, handles to other actors go here too) that is not persisted.
pub struct Account {
    id: String,
    overdraft_cents: i64,
}

impl DurableStateBehavior for Account {
    type State = AccountState;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

/// The domain errors.
#[derive(Debug, PartialEq, Eq)]
pub enum BankError {
    NotOpen,
    AlreadyOpen,
    InvalidAmount,
    InsufficientFunds { available_cents: i64 },
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Every command replies the balance and version after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub cents: i64,
    pub version: u64,
}

type Reply = Result<Balance, CommandError<BankError>>;

#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Open {
    pub owner: String,
}

#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Deposit(pub i64);

#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Withdraw(pub i64);

#[derive(Message)]
#[rtype(result = "Reply")]
pub struct GetBalance;

/// `Effect::persist` of `state` at `version + 1`, replying the new balance.
fn persist(state: AccountState, version: u64) -> Effect<AccountState, Balance> {
    let reply = Balance {
        cents: state.balance_cents,
        version: version + 1,
    };
    Effect::persist(state, reply)
}

impl HandleCommand<Open> for Account {
    type Reply = Balance;
    type Error = BankError;
    fn handle_command(
        &mut self,
        open: Open,
        state: &AccountState,
        version: u64,
    ) -> Result<Effect<AccountState, Balance>, BankError> {
        if state.open {
            return Err(BankError::AlreadyOpen);
        }
        let opened = AccountState {
            owner: open.owner,
            balance_cents: 0,
            open: true,
        };
        Ok(persist(opened, version))
    }
}

/// Money moves only on an open account and in positive amounts.
fn check_movement(state: &AccountState, cents: i64) -> Result<(), BankError> {
    if !state.open {
        return Err(BankError::NotOpen);
    }
    if cents <= 0 {
        return Err(BankError::InvalidAmount);
    }
    Ok(())
}

impl HandleCommand<Deposit> for Account {
    type Reply = Balance;
    type Error = BankError;
    fn handle_command(
        &mut self,
        Deposit(cents): Deposit,
        state: &AccountState,
        version: u64,
    ) -> Result<Effect<AccountState, Balance>, BankError> {
        check_movement(state, cents)?;
        let balance_cents = state
            .balance_cents
            .checked_add(cents)
            .ok_or(BankError::InvalidAmount)?;
        let moved = AccountState {
            balance_cents,
            ..state.clone()
        };
        Ok(persist(moved, version))
    }
}

impl HandleCommand<Withdraw> for Account {
    type Reply = Balance;
    type Error = BankError;
    fn handle_command(
        &mut self,
        Withdraw(cents): Withdraw,
        state: &AccountState,
        version: u64,
    ) -> Result<Effect<AccountState, Balance>, BankError> {
        check_movement(state, cents)?;
        let available_cents = state.balance_cents + self.overdraft_cents;
        if cents > available_cents {
            return Err(BankError::InsufficientFunds { available_cents });
        }
        let balance_cents = state.balance_cents - cents;
        let moved = AccountState {
            balance_cents,
            ..state.clone()
        };
        Ok(persist(moved, version))
    }
}

impl HandleCommand<GetBalance> for Account {
    type Reply = Balance;
    type Error = BankError;
    fn handle_command(
        &mut self,
        _: GetBalance,
        state: &AccountState,
        version: u64,
    ) -> Result<Effect<AccountState, Balance>, BankError> {
        Ok(Effect::none(Balance {
            cents: state.balance_cents,
            version,
        }))
    }
}

// ---- the demonstration ----

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const SCHEMA: &str = "durablestore_bank_example";
const COMMANDS_PER_ACCOUNT: u64 = 20;

fn start_account(id: &str, store: &Addr<DurableStoreActor>) -> Addr<DurableEntity<Account>> {
    let account = Account {
        id: id.to_owned(),
        overdraft_cents: 0,
    };
    DurableEntity::new(account, store.clone()).start()
}

/// Runs a deterministic mix of commands against one account; returns the last acknowledged
/// balance and how many withdrawals were refused for lack of funds.
async fn exercise(account: Addr<DurableEntity<Account>>, n: u64) -> Result<(Balance, u64), String> {
    let fail = |e: CommandError<BankError>| e.to_string();
    let mut last = account
        .send(Open {
            owner: format!("owner {n}"),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(fail)?;
    let mut refused = 0;
    for step in 1..COMMANDS_PER_ACCOUNT {
        // A small linear congruential sequence: the same run every time, varied per account.
        let amount = ((n * 7919 + step * 104_729) % 5000) as i64 + 1;
        let reply = if step % 3 == 0 {
            account.send(Withdraw(amount)).await
        } else {
            account.send(Deposit(amount)).await
        }
        .map_err(|e| e.to_string())?;
        match reply {
            Ok(balance) => last = balance,
            Err(CommandError::Rejected(BankError::InsufficientFunds { .. })) => refused += 1,
            Err(other) => return Err(fail(other)),
        }
    }
    Ok((last, refused))
}

#[actix::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bank_account failed: {error}");
            eprintln!(
                "Is PostgreSQL running? Set DATABASE_URL (default {DEFAULT_URL}), e.g.\n  \
                 DATABASE_URL=postgres://user:password@host:5432/db cargo run --example bank_account"
            );
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let accounts: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 500,
    };
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let config = url
        .parse::<Config>()?
        .schema(SCHEMA)
        .checkout_timeout(Duration::from_secs(3));

    let store = DurableStoreActor::new(config.clone())?.start();
    store.send(Ping).await??;
    empty_schema(&config).await?;
    store.send(CreateSchema).await??;
    println!("store ready: schema {SCHEMA}, {accounts} accounts × {COMMANDS_PER_ACCOUNT} commands");

    // 1. Many accounts, concurrently.
    let started = Instant::now();
    let ids: Vec<String> = (0..accounts).map(|n| format!("account-{n:05}")).collect();
    let entities: Vec<_> = ids.iter().map(|id| start_account(id, &store)).collect();
    let results = join_all(
        entities
            .iter()
            .zip(0..)
            .map(|(entity, n)| exercise(entity.clone(), n)),
    )
    .await;
    let mut acknowledged = BTreeMap::new();
    let mut refused = 0;
    for (id, result) in ids.iter().zip(results) {
        let (balance, r) = result?;
        refused += r;
        acknowledged.insert(id.clone(), balance);
    }
    let elapsed = started.elapsed();
    let writes: u64 = acknowledged.values().map(|b| b.version).sum();
    println!(
        "ran {} commands in {:.2?}: {writes} states persisted ({:.0}/s), {refused} withdrawals refused for insufficient funds",
        accounts * COMMANDS_PER_ACCOUNT,
        elapsed,
        writes as f64 / elapsed.as_secs_f64()
    );

    // 2. Stop every entity.
    for entity in &entities {
        entity.send(Passivate).await?;
    }
    drop(entities);
    println!("stopped all {accounts} entities");

    // 3. New entity actors for the same ids recover from the store.
    let recovered = join_all(ids.iter().map(|id| {
        let entity = start_account(id, &store);
        async move { entity.send(GetBalance).await }
    }))
    .await;
    let mut mismatches = 0;
    for (id, result) in ids.iter().zip(recovered) {
        let now = result?.map_err(|e| e.to_string())?;
        let before = acknowledged[id];
        if now != before {
            mismatches += 1;
            eprintln!("MISMATCH {id}: acknowledged {before:?}, recovered {now:?}");
        }
    }
    for (id, balance) in acknowledged.iter().take(3) {
        println!(
            "  {id}: balance {:>8.2}, version {}",
            balance.cents as f64 / 100.0,
            balance.version
        );
    }
    if mismatches > 0 {
        return Err(
            format!("{mismatches} of {accounts} accounts recovered a different state").into(),
        );
    }
    println!(
        "recovered all {accounts} accounts: balances and versions equal what was acknowledged"
    );
    Ok(())
}

/// Drops the example's schema so every run starts from empty accounts.
async fn empty_schema(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let (client, connection) = config
        .pg_config()
        .connect(durablestore_postgres::tokio_postgres::NoTls)
        .await?;
    let connection = actix::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}
