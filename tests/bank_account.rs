//! `examples/bank_account.rs` on a smaller bank: 2,000 accounts, at most 200 live, 10,000
//! random commands; every account recovered as acknowledged.

#[allow(dead_code)] // `main` runs only as the example binary
#[path = "../examples/bank_account.rs"]
mod bank_account;

use bank_account::Bank;
use durablestore_postgres::testkit::TestDatabase;

#[actix::test]
async fn the_bank_recovers_every_account_as_acknowledged() {
    let db = TestDatabase::new().await.unwrap();
    let bank = Bank {
        accounts: 2_000,
        max_live: 200,
        commands: 10_000,
        clients: 100,
    };
    let report = bank_account::run(db.config(), bank).await.unwrap();
    assert!(report.stats.passivations > 1_000, "{report:?}");
    assert!(report.stats.peak_actors <= 200, "{report:?}");
    assert_eq!(report.published, report.persisted, "{report:?}");
    db.cleanup().await.unwrap();
}
