//! Durable bank accounts by id: an `EntityRegistry` starts each account's actor on first use,
//! keeps at most `max_live` of them, passivates the least recently used, and recovers them
//! from PostgreSQL when they are used again. Random commands from many clients, then a full
//! check: every account's stored balance and version equal what was acknowledged.
//!
//! ```text
//! cargo run --release --example bank_account [ACCOUNTS] [MAX_LIVE] [COMMANDS]
//! ```
//! Defaults: 10,000 accounts, 1,000 live at most, 100,000 random commands. Uses `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and its own schema
//! `durablestore_bank_example`, emptied on start. Prints the peak number of live entity actors
//! and the process's peak RSS; exits non-zero if any account differs from what was
//! acknowledged. (`tests/bank_account.rs` runs it on a smaller bank.)

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler, Message};
use durablestore_postgres::{
    CommandError, Config, DurableStateBehavior, DurableStore, Effect, EntityRegistry,
    HandleCommand, RegistryStats, StateChanged,
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

impl Account {
    /// The account `id`, with no overdraft.
    pub fn new(id: &str) -> Self {
        Account {
            id: id.to_owned(),
            overdraft_cents: 0,
        }
    }
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

#[derive(Clone, Message)]
#[rtype(result = "Reply")]
pub struct Open {
    pub owner: String,
}

#[derive(Clone, Message)]
#[rtype(result = "Reply")]
pub struct Deposit(pub i64);

#[derive(Clone, Message)]
#[rtype(result = "Reply")]
pub struct Withdraw(pub i64);

#[derive(Clone, Message)]
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

/// How big a bank to run.
#[derive(Debug, Clone, Copy)]
pub struct Bank {
    pub accounts: usize,
    pub max_live: usize,
    pub commands: usize,
    /// Clients sending commands at once, each waiting for its reply before the next.
    pub clients: usize,
}

impl Default for Bank {
    fn default() -> Self {
        Bank {
            accounts: 10_000,
            max_live: 1_000,
            commands: 100_000,
            clients: 500,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub stats: RegistryStats,
    /// States persisted and acknowledged.
    pub persisted: u64,
    /// States the audit subscriber was told of.
    pub published: u64,
}

fn account_id(n: usize) -> String {
    format!("account-{n:05}")
}

fn accounts(
    store: &DurableStore,
    max_live: usize,
) -> Result<EntityRegistry<Account>, durablestore_postgres::Error> {
    EntityRegistry::builder(store.clone(), Account::new)
        .max_live(max_live)
        .start()
}

/// The acknowledged history of each account: balance by version. A version acknowledged twice
/// is an error.
#[derive(Default)]
struct Acknowledged(BTreeMap<String, BTreeMap<u64, i64>>);

impl Acknowledged {
    fn record(&mut self, id: &str, balance: Balance) -> Result<(), String> {
        let versions = self.0.entry(id.to_owned()).or_default();
        match versions.insert(balance.version, balance.cents) {
            None => Ok(()),
            Some(_) => Err(format!(
                "{id}: version {} acknowledged twice",
                balance.version
            )),
        }
    }
}

/// Counts the state changes it is told of: an audit log would store them.
struct Audit {
    seen: Arc<AtomicU64>,
}

impl Actor for Audit {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        // Room for any burst this example makes: a full mailbox would drop events.
        ctx.set_mailbox_capacity(1_000_000);
    }
}

impl Handler<StateChanged<AccountState>> for Audit {
    type Result = ();
    fn handle(&mut self, _: StateChanged<AccountState>, _: &mut Context<Self>) {
        self.seen.fetch_add(1, Ordering::Relaxed);
    }
}

/// An acknowledged reply: the account, its balance and version after the command, and whether
/// the command wrote that version (a balance query does not).
type Ack = (String, Balance, bool);

/// One client: `commands` random commands to random accounts, seeded by `client`.
async fn client(
    bank: EntityRegistry<Account>,
    accounts: usize,
    client: u64,
    commands: usize,
) -> Result<Vec<Ack>, String> {
    let mut rng = fastrand::Rng::with_seed(client);
    let mut acknowledged = Vec::new();
    for _ in 0..commands {
        let id = account_id(rng.usize(..accounts));
        let cents = rng.i64(1..5_000);
        let (reply, writes) = match rng.u8(..10) {
            0..=4 => (bank.send(&id, Deposit(cents)).await, true),
            5..=7 => (bank.send(&id, Withdraw(cents)).await, true),
            _ => (bank.send(&id, GetBalance).await, false),
        };
        match reply {
            Ok(balance) => acknowledged.push((id, balance, writes)),
            Err(CommandError::Rejected(BankError::InsufficientFunds { .. })) => {}
            Err(other) => return Err(format!("{id}: {other}")),
        }
    }
    Ok(acknowledged)
}

/// Runs the bank on `config`'s schema, which it empties first.
pub async fn run(config: Config, bank: Bank) -> Result<Report, Box<dyn std::error::Error>> {
    empty_schema(&config).await?;
    let store = DurableStore::new(config)?;
    store.create_schema().await?;
    println!(
        "{} accounts, at most {} live, {} random commands from {} clients",
        bank.accounts, bank.max_live, bank.commands, bank.clients
    );
    let registry = accounts(&store, bank.max_live)?;
    let published = Arc::new(AtomicU64::new(0));
    let audit = Audit {
        seen: Arc::clone(&published),
    }
    .start();
    registry.subscribe(audit.recipient());

    // 1. Open every account: each one starts (recovering: nothing stored yet) on first use.
    let started = Instant::now();
    let ids: Vec<String> = (0..bank.accounts).map(account_id).collect();
    let opened = join_all(ids.iter().map(|id| {
        let owner = format!("owner of {id}");
        registry.send(id, Open { owner })
    }))
    .await;
    let mut acknowledged = Acknowledged::default();
    for (id, reply) in ids.iter().zip(opened) {
        acknowledged.record(id, reply.map_err(|e| format!("{id}: {e}"))?)?;
    }
    println!(
        "opened {} accounts in {:.2?}",
        bank.accounts,
        started.elapsed()
    );

    // 2. Random commands: most accounts are passivated and recovered again and again.
    let started = Instant::now();
    let per_client = bank.commands / bank.clients.max(1);
    let runs =
        (0..bank.clients as u64).map(|n| client(registry.clone(), bank.accounts, n, per_client));
    let mut commands = 0;
    let mut queries = Vec::new();
    for run in join_all(runs).await {
        let run = run?;
        commands += run.len();
        for (id, balance, writes) in run {
            if writes {
                acknowledged.record(&id, balance)?;
            } else {
                queries.push((id, balance));
            }
        }
    }
    // A balance query answers a version some command acknowledged, with its balance.
    for (id, balance) in queries {
        if acknowledged.0[&id].get(&balance.version) != Some(&balance.cents) {
            return Err(format!("{id}: a query answered {balance:?}, never acknowledged").into());
        }
    }
    let elapsed = started.elapsed();
    let stats = registry.stats();
    println!(
        "{commands} commands acknowledged in {elapsed:.2?} ({:.0}/s); {} activations, {} passivations",
        commands as f64 / elapsed.as_secs_f64(),
        stats.activations,
        stats.passivations
    );

    // 3. Stop: every entity finishes its commands and stops.
    registry.stop().await;
    let persisted: u64 = acknowledged.0.values().map(|v| v.len() as u64).sum();

    // 4. A new registry recovers every account; each must be exactly as acknowledged.
    let check = accounts(&store, bank.max_live)?;
    let recovered = join_all(ids.iter().map(|id| check.state(id))).await;
    let mut mismatches = 0;
    for (id, result) in ids.iter().zip(recovered) {
        let (state, version) = result.map_err(|e| format!("{id}: {e}"))?;
        let history = &acknowledged.0[id];
        let complete = history.keys().copied().eq(1..=version);
        let expected = history.last_key_value().map(|(v, cents)| (*v, *cents));
        if !complete || expected != Some((version, state.balance_cents)) {
            mismatches += 1;
            eprintln!(
                "MISMATCH {id}: stored version {version}, balance {}; acknowledged {expected:?}, \
                 versions 1..={version} each acknowledged once: {complete}",
                state.balance_cents
            );
        }
    }
    check.stop().await;
    if mismatches > 0 {
        return Err(format!("{mismatches} of {} accounts differ", bank.accounts).into());
    }
    println!(
        "checked all {} accounts: every stored balance and version is the last acknowledged, \
         and each version was acknowledged exactly once ({persisted} states)",
        bank.accounts
    );
    while published.load(Ordering::Relaxed) + stats.state_changes_dropped < persisted {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let published = published.load(Ordering::Relaxed);
    println!(
        "audit subscriber told of {published} state changes ({} dropped)",
        registry.stats().state_changes_dropped
    );
    println!(
        "peak live entity actors: {} (max_live {}); peak RSS: {}",
        stats.peak_actors,
        bank.max_live,
        peak_rss().unwrap_or_else(|| "unknown".to_owned())
    );
    Ok(Report {
        stats,
        persisted,
        published,
    })
}

#[actix::main]
async fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let defaults = Bank::default();
    let bank = Bank {
        accounts: args.first().copied().unwrap_or(defaults.accounts),
        max_live: args.get(1).copied().unwrap_or(defaults.max_live),
        commands: args.get(2).copied().unwrap_or(defaults.commands),
        ..defaults
    };
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let config = match url.parse::<Config>() {
        Ok(config) => config
            .schema(SCHEMA)
            .checkout_timeout(Duration::from_secs(3)),
        Err(error) => {
            eprintln!("bank_account: DATABASE_URL: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run(config, bank).await {
        Ok(_) => ExitCode::SUCCESS,
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

/// The process's peak resident set size (Linux), e.g. "31.2 MB".
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} MB", kib * 1024.0 / 1e6))
}

/// Drops the schema so every run starts from empty accounts.
async fn empty_schema(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let (client, connection) = config
        .pg_config()
        .connect(durablestore_postgres::tokio_postgres::NoTls)
        .await?;
    let connection = actix::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            config.get_schema()
        ))
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}
