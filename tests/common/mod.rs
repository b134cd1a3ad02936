//! Shared fixtures of the integration tests.
#![allow(dead_code)]

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
