//! Shared fixtures of the integration tests.
#![allow(dead_code)]

pub mod cluster;
pub mod latency;
pub mod pgbouncer;

/// Runs each scenario (an `async fn(store)` taking anything `From` a store actor's address)
/// twice: on a `MemoryStore`, and on a `DurableStoreActor` over a fresh schema.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            use actix::Actor;
            $(
                #[actix::test]
                async fn $scenario() {
                    let store = durablestore_postgres::MemoryStore::default().start();
                    super::$scenario(store.into()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix::test]
                async fn $scenario() {
                    let (db, store) = crate::common::store().await;
                    super::$scenario(store.into()).await;
                    db.cleanup().await.unwrap();
                }
            )*
        }
    };
}

use actix::{Actor, Addr};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{Config, DurableState, DurableStoreActor};

/// A domain state as users write them: a prost message with a `prost::Name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AccountState {
    #[prost(string, tag = "1")]
    pub account_id: String,
    #[prost(int64, tag = "2")]
    pub balance: i64,
    #[prost(bytes = "vec", tag = "3")]
    pub padding: Vec<u8>,
}

impl prost::Name for AccountState {
    const NAME: &'static str = "AccountState";
    const PACKAGE: &'static str = "acme.billing";
}

pub fn account(id: &str, balance: i64) -> AccountState {
    AccountState {
        account_id: id.to_owned(),
        balance,
        padding: Vec::new(),
    }
}

pub fn state(id: &str, version: u64, balance: i64) -> DurableState {
    DurableState::new(id, version, &account(id, balance))
        .with_timestamp(1_700_000_000_000 + version as i64)
        .with_shard(version % 7)
}

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A fresh schema and a store actor on it.
pub async fn store() -> (TestDatabase, Addr<DurableStoreActor>) {
    let db = TestDatabase::new().await.expect("test database");
    let addr = store_with(db.config());
    (db, addr)
}

pub fn store_with(config: Config) -> Addr<DurableStoreActor> {
    DurableStoreActor::new(config)
        .expect("valid config")
        .start()
}

/// A minimal durable entity for the behavior tests.
pub mod bank {
    use actix::Message;
    use durablestore_postgres::{CommandError, DurableStateBehavior, Effect, HandleCommand};

    use super::AccountState;

    pub struct Account {
        pub id: String,
    }

    impl DurableStateBehavior for Account {
        type State = AccountState;
        fn persistence_id(&self) -> &str {
            &self.id
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum AccountError {
        InsufficientFunds { balance: i64, requested: i64 },
        InvalidAmount,
    }

    /// Replies (balance, version) after the command.
    pub type Reply = Result<(i64, u64), CommandError<AccountError>>;

    #[derive(Clone, Message)]
    #[rtype(result = "Reply")]
    pub struct Deposit(pub i64);

    #[derive(Clone, Message)]
    #[rtype(result = "Reply")]
    pub struct Withdraw(pub i64);

    #[derive(Clone, Message)]
    #[rtype(result = "Reply")]
    pub struct GetBalance;

    impl Account {
        fn set(&self, state: &AccountState, balance: i64) -> AccountState {
            AccountState {
                account_id: self.id.clone(),
                balance,
                padding: state.padding.clone(),
            }
        }
    }

    impl HandleCommand<Deposit> for Account {
        type Reply = (i64, u64);
        type Error = AccountError;
        fn handle_command(
            &mut self,
            Deposit(amount): Deposit,
            state: &AccountState,
            version: u64,
        ) -> Result<Effect<AccountState, (i64, u64)>, AccountError> {
            if amount <= 0 {
                return Err(AccountError::InvalidAmount);
            }
            let balance = state.balance + amount;
            Ok(Effect::persist(
                self.set(state, balance),
                (balance, version + 1),
            ))
        }
    }

    impl HandleCommand<Withdraw> for Account {
        type Reply = (i64, u64);
        type Error = AccountError;
        fn handle_command(
            &mut self,
            Withdraw(amount): Withdraw,
            state: &AccountState,
            version: u64,
        ) -> Result<Effect<AccountState, (i64, u64)>, AccountError> {
            if amount <= 0 {
                return Err(AccountError::InvalidAmount);
            }
            if amount > state.balance {
                return Err(AccountError::InsufficientFunds {
                    balance: state.balance,
                    requested: amount,
                });
            }
            let balance = state.balance - amount;
            Ok(Effect::persist(
                self.set(state, balance),
                (balance, version + 1),
            ))
        }
    }

    impl HandleCommand<GetBalance> for Account {
        type Reply = (i64, u64);
        type Error = AccountError;
        fn handle_command(
            &mut self,
            _: GetBalance,
            state: &AccountState,
            version: u64,
        ) -> Result<Effect<AccountState, (i64, u64)>, AccountError> {
            Ok(Effect::none((state.balance, version)))
        }
    }
}

/// A store proxy whose reads take `delay`: makes recovery slow enough to send commands into it.
pub struct SlowReads {
    pub inner: durablestore_postgres::StateStore,
    pub delay: std::time::Duration,
}

impl Actor for SlowReads {
    type Context = actix::Context<Self>;
}

impl actix::Handler<durablestore_postgres::GetRevision> for SlowReads {
    type Result = actix::ResponseFuture<
        Result<durablestore_postgres::Revision, durablestore_postgres::Error>,
    >;
    fn handle(
        &mut self,
        msg: durablestore_postgres::GetRevision,
        _: &mut Self::Context,
    ) -> Self::Result {
        let (inner, delay) = (self.inner.clone(), self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.revision(msg.0).await
        })
    }
}

impl actix::Handler<durablestore_postgres::WriteState> for SlowReads {
    type Result = actix::ResponseFuture<
        Result<durablestore_postgres::WriteOutcome, durablestore_postgres::Error>,
    >;
    fn handle(
        &mut self,
        msg: durablestore_postgres::WriteState,
        _: &mut Self::Context,
    ) -> Self::Result {
        let inner = self.inner.clone();
        Box::pin(async move { inner.write(msg.0).await })
    }
}

impl actix::Handler<durablestore_postgres::DeleteState> for SlowReads {
    type Result = actix::ResponseFuture<
        Result<durablestore_postgres::WriteOutcome, durablestore_postgres::Error>,
    >;
    fn handle(
        &mut self,
        msg: durablestore_postgres::DeleteState,
        _: &mut Self::Context,
    ) -> Self::Result {
        let inner = self.inner.clone();
        Box::pin(async move { inner.delete(msg.persistence_id, msg.version).await })
    }
}
