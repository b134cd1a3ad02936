//! The store behind pgBouncer in transaction pooling mode (`Config::transaction_pooling`):
//! writes, reads, conflicts and timeouts through a real pgBouncer whose two server connections
//! the store's connections share transaction by transaction; and, without the setting, the two
//! ways such a pooler breaks a store, each reported as an error that names the setting.
//!
//! Each test starts its own pgBouncer (`tests/common/pgbouncer.rs`) in front of its test
//! database's server; without `/usr/sbin/pgbouncer` the tests print `skipped:` and pass.

mod common;

use std::time::{Duration, Instant};

use actix::Addr;
use common::latency::delaying_proxy;
use common::pgbouncer::{self, PgBouncer};
use common::{AccountState, state, store_with};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    Config, DeleteState, DurableStoreActor, Error, GetLatestState, ListPersistenceIds, Ping,
    WriteOutcome, WriteState,
};
use futures_util::future::join_all;
use tokio_postgres::NoTls;

/// A fresh schema on the test server and a pgBouncer in front of that server; `None` (after
/// saying so) where pgBouncer is not installed.
async fn setup() -> Option<(TestDatabase, PgBouncer)> {
    if let Some(why) = pgbouncer::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let db = TestDatabase::new().await.expect("test database");
    let bouncer = PgBouncer::start(db.url());
    Some((db, bouncer))
}

/// The test schema, through pgBouncer, with the setting on.
fn through(bouncer: &PgBouncer, db: &TestDatabase) -> Config {
    bouncer
        .url()
        .parse::<Config>()
        .expect("pgbouncer url")
        .schema(db.schema())
        .transaction_pooling(true)
}

/// A plain client through pgBouncer.
async fn bouncer_client(bouncer: &PgBouncer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&bouncer.url(), NoTls)
        .await
        .expect("connect through pgbouncer");
    tokio::spawn(connection);
    client
}

/// Makes pgBouncer open all its server connections, so that (with `server_round_robin`)
/// consecutive transactions of one client land on different ones.
async fn open_every_server_connection(bouncer: &PgBouncer) {
    let mut clients = Vec::new();
    for _ in 0..pgbouncer::POOL_SIZE {
        let client = bouncer_client(bouncer).await;
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
        clients.push(client);
    }
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
}

async fn write(
    store: &Addr<DurableStoreActor>,
    id: &str,
    version: u64,
) -> Result<WriteOutcome, Error> {
    store
        .send(WriteState(state(id, version, version as i64 * 10)))
        .await
        .expect("store running")
}

/// `SHOW statement_timeout` on the connection (a simple query: a named statement would not
/// survive pgBouncer).
async fn statement_timeout(client: &tokio_postgres::Client) -> String {
    let rows = client.simple_query("SHOW statement_timeout").await.unwrap();
    rows.iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[actix::test]
async fn writes_reads_and_conflicts_through_pgbouncer_in_transaction_mode() {
    let Some((db, bouncer)) = setup().await else {
        return;
    };
    open_every_server_connection(&bouncer).await;
    // Four store connections on two server connections: group commits interleave on them.
    let store = store_with(
        through(&bouncer, &db)
            .max_connections(4)
            .statement_timeout(Duration::from_secs(10)),
    );
    const ENTITIES: usize = 300;
    const VERSIONS: u64 = 3;
    let writers = (0..ENTITIES).map(|n| {
        let store = store.clone();
        async move {
            let id = format!("entity-{n}");
            for version in 1..=VERSIONS {
                assert_eq!(
                    write(&store, &id, version).await.unwrap(),
                    WriteOutcome::Written,
                    "{id} v{version}"
                );
            }
        }
    });
    join_all(writers).await;
    assert_eq!(db.count_rows().await.unwrap(), ENTITIES as i64);

    let readers = (0..ENTITIES).map(|n| {
        let store = store.clone();
        async move {
            let id = format!("entity-{n}");
            let latest = store
                .send(GetLatestState(id.clone()))
                .await
                .unwrap()
                .unwrap()
                .expect("stored");
            assert_eq!(latest, state(&id, VERSIONS, VERSIONS as i64 * 10));
            assert_eq!(
                latest.decode_state::<AccountState>().unwrap().balance,
                VERSIONS as i64 * 10
            );
        }
    });
    join_all(readers).await;

    // An identical retry is recognized; another version is a conflict naming the stored one.
    assert_eq!(
        write(&store, "entity-0", VERSIONS).await.unwrap(),
        WriteOutcome::AlreadyStored
    );
    for attempted in [VERSIONS - 1, VERSIONS + 2] {
        match write(&store, "entity-0", attempted).await {
            Err(Error::VersionConflict {
                persistence_id,
                attempted: a,
                stored,
            }) => {
                assert_eq!(
                    (persistence_id.as_str(), a, stored),
                    ("entity-0", attempted, VERSIONS)
                );
            }
            other => panic!("expected a version conflict, got {other:?}"),
        }
    }
    assert_eq!(
        store
            .send(GetLatestState("never-written".into()))
            .await
            .unwrap()
            .unwrap(),
        None
    );
    store.send(Ping).await.unwrap().unwrap();

    // `SET LOCAL` ended with each transaction: the shared server connections carry the
    // server's own default, not the store's timeout.
    let direct = db.client().await.unwrap();
    let shared = bouncer_client(&bouncer).await;
    for _ in 0..pgbouncer::POOL_SIZE {
        assert_eq!(
            statement_timeout(&shared).await,
            statement_timeout(&direct).await
        );
    }

    // Deletes: version-checked tombstones, then the next version starts the entity again;
    // listings page over the live ids.
    let delete = |version| DeleteState {
        persistence_id: "entity-1".into(),
        version,
    };
    assert!(matches!(
        store.send(delete(VERSIONS)).await.unwrap(),
        Err(Error::VersionConflict { .. })
    ));
    let deleted = store.send(delete(VERSIONS + 1)).await.unwrap().unwrap();
    assert_eq!(deleted, WriteOutcome::Written);
    assert_eq!(
        store.send(delete(VERSIONS + 1)).await.unwrap().unwrap(),
        WriteOutcome::AlreadyStored
    );
    let gone = store.send(GetLatestState("entity-1".into())).await.unwrap();
    assert_eq!(gone.unwrap(), None);
    assert!(matches!(
        write(&store, "entity-1", 1).await,
        Err(Error::VersionConflict { .. })
    ));
    assert_eq!(
        write(&store, "entity-1", VERSIONS + 2).await.unwrap(),
        WriteOutcome::Written
    );
    store.send(delete(VERSIONS + 3)).await.unwrap().unwrap();
    let page = store
        .send(ListPersistenceIds {
            after: None,
            limit: 3,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        page,
        ["entity-0", "entity-10", "entity-100"],
        "entity-1 is deleted"
    );
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_statement_timeout_fires_through_pgbouncer_and_the_store_keeps_working() {
    let Some((db, bouncer)) = setup().await else {
        return;
    };
    let timeout = Duration::from_secs(1);
    let store = store_with(
        through(&bouncer, &db)
            .max_connections(2)
            .statement_timeout(timeout),
    );
    assert_eq!(
        write(&store, "locked", 1).await.unwrap(),
        WriteOutcome::Written
    );

    let locker = db.client().await.unwrap();
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {}.states_store WHERE persistence_id = 'locked' FOR UPDATE",
            db.schema()
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let result = write(&store, "locked", 2).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout { timeout: t }) if t == timeout),
        "{result:?}"
    );
    assert!(result.unwrap_err().is_transient());
    // The server cancelled it (the client alone would give up a second later).
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_millis(800),
        "{elapsed:?}"
    );
    // Other entities are written meanwhile.
    assert_eq!(
        write(&store, "free", 1).await.unwrap(),
        WriteOutcome::Written
    );

    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        write(&store, "locked", 2).await.unwrap(),
        WriteOutcome::Written
    );
    for version in 2..=5 {
        assert_eq!(
            write(&store, "free", version).await.unwrap(),
            WriteOutcome::Written
        );
    }
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_client_side_timeout_cancels_the_statement_through_pgbouncer() {
    let Some((db, bouncer)) = setup().await else {
        return;
    };
    let s = db.schema().to_owned();
    // The trigger outlives the server's own statement timeout (it catches that cancel), so only
    // the client's cancel request, which pgBouncer forwards, can stop it.
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION {s}.stubborn() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               BEGIN PERFORM pg_sleep(5); EXCEPTION WHEN query_canceled THEN NULL; END;
               PERFORM pg_sleep(120);
               RETURN NEW;
             END $$;
             CREATE TRIGGER stubborn BEFORE INSERT ON {s}.states_store
               FOR EACH ROW WHEN (NEW.persistence_id = 'stubborn')
               EXECUTE FUNCTION {s}.stubborn();"
        ))
        .await
        .unwrap();
    let store = store_with(
        through(&bouncer, &db)
            .max_connections(2)
            .statement_timeout(Duration::from_millis(500)),
    );
    let started = Instant::now();
    let result = write(&store, "stubborn", 1).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let direct = db.client().await.unwrap();
    let mut active = i64::MAX;
    for _ in 0..100 {
        active = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                &[&s],
            )
            .await
            .unwrap()
            .get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        active,
        0,
        "the cancel request reached the server through pgBouncer; its log:\n{}",
        bouncer.log()
    );
    assert_eq!(
        write(&store, "fine", 1).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(db.count_rows().await.unwrap(), 1);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn without_the_setting_the_refused_startup_options_name_it_at_once() {
    let Some((db, bouncer)) = setup().await else {
        return;
    };
    // The default statement timeout goes out as the startup parameter `options`, which
    // pgBouncer refuses.
    let config = bouncer
        .url()
        .parse::<Config>()
        .unwrap()
        .schema(db.schema())
        .checkout_timeout(Duration::from_secs(20));
    let store = store_with(config);
    let started = Instant::now();
    let error = store.send(Ping).await.unwrap().unwrap_err();
    let message = error.to_string();
    eprintln!("{message}");
    assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    assert!(!error.is_transient());
    assert!(
        message.contains("Config::transaction_pooling(true)")
            && message.contains("unsupported startup parameter: options"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reported at once, not at the checkout timeout: {:?}",
        started.elapsed()
    );
    let write = write(&store, "a", 1).await.unwrap_err();
    assert!(matches!(write, Error::InvalidConfig(_)), "{write:?}");

    // With the setting on, `options` can only come from the connection string.
    let with_options = format!("{}&options=-c%20work_mem%3D8MB", bouncer.url())
        .parse::<Config>()
        .unwrap()
        .schema(db.schema())
        .transaction_pooling(true);
    let error = store_with(with_options)
        .send(Ping)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidConfig(m) if m.contains("connection string sets `options`")),
        "{error:?}"
    );
    assert_eq!(db.count_rows().await.unwrap(), 0);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn without_the_setting_lost_prepared_statements_name_it() {
    let Some((db, bouncer)) = setup().await else {
        return;
    };
    open_every_server_connection(&bouncer).await;
    // No statement timeout: no startup options, so the store connects, and prepares its
    // statements as it does on a direct connection. Each prepare and each execution is a
    // transaction of its own, which pgBouncer puts on the next server connection.
    let config = bouncer
        .url()
        .parse::<Config>()
        .unwrap()
        .schema(db.schema())
        .max_connections(1)
        .statement_timeout(None);
    let store = store_with(config);
    store.send(Ping).await.unwrap().unwrap();
    let error = write(&store, "a", 1).await.unwrap_err();
    let message = error.to_string();
    eprintln!("{message}");
    assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    assert!(!error.is_transient() && !error.outcome_unknown());
    assert!(
        message.contains("Config::transaction_pooling(true)") && message.contains("26000"),
        "{message}"
    );
    let read = store
        .send(GetLatestState("a".into()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&read, Error::InvalidConfig(m) if m.contains("transaction_pooling")),
        "{read:?}"
    );
    assert_eq!(db.count_rows().await.unwrap(), 0, "nothing was written");

    // The same store settings with the setting on work through the same pgBouncer.
    let store = store_with(
        through(&bouncer, &db)
            .max_connections(1)
            .statement_timeout(None),
    );
    for version in 1..=3 {
        assert_eq!(
            write(&store, "a", version).await.unwrap(),
            WriteOutcome::Written
        );
    }
    db.cleanup().await.unwrap();
}

/// The test database's server as (host, port), and a config that reaches it through `port` on
/// the loopback interface instead.
fn via_port(db: &TestDatabase, port: u16) -> ((String, u16), Config) {
    let direct = db.config();
    let pg = direct.pg_config();
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        other => panic!("a TCP server is needed, not {other:?}"),
    };
    let upstream = (host, pg.get_ports().first().copied().unwrap_or(5432));
    let mut via = tokio_postgres::Config::new();
    via.host("127.0.0.1")
        .port(port)
        .user(pg.get_user().unwrap_or("postgres"))
        .dbname(pg.get_dbname().unwrap_or("postgres"))
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(password) = pg.get_password() {
        via.password(password);
    }
    (upstream, Config::from_pg_config(via).schema(db.schema()))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[actix::test]
async fn the_per_statement_timeout_costs_no_extra_round_trip() {
    // No pgBouncer needed: `BEGIN; SET LOCAL …`, the statement and `COMMIT` must leave
    // together whatever is in between. Behind a 50 ms round trip, three round trips would
    // take 150 ms.
    let db = TestDatabase::new().await.unwrap();
    let rtt = Duration::from_millis(50);
    let (upstream, _) = via_port(&db, 0);
    let port = delaying_proxy(upstream, rtt / 2).await;
    let (_, config) = via_port(&db, port);
    let store = store_with(
        config
            .transaction_pooling(true)
            .statement_timeout(Duration::from_secs(10))
            .max_connections(1),
    );
    store.send(Ping).await.unwrap().unwrap();
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for n in 0..7 {
        let id = format!("e{n}");
        let started = Instant::now();
        assert_eq!(write(&store, &id, 1).await.unwrap(), WriteOutcome::Written);
        writes.push(started.elapsed());
        let started = Instant::now();
        assert!(
            store
                .send(GetLatestState(id))
                .await
                .unwrap()
                .unwrap()
                .is_some()
        );
        reads.push(started.elapsed());
    }
    for (what, took) in [("write", median(writes)), ("read", median(reads))] {
        assert!(
            took >= rtt && took < rtt * 3 / 2,
            "a {what} took {took:?} behind a {rtt:?} round trip"
        );
    }
    db.cleanup().await.unwrap();
}

/// Latencies of lone writes and reads, and the throughput of concurrent writes, with and
/// without the setting, on the same server in the same run: the modes take turns operation by
/// operation (lone ones) and round by round (concurrent ones), so a busy machine slows them
/// alike.
#[actix::test]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
async fn measure_the_cost_of_transaction_pooling() {
    const LONE: usize = 3000;
    const ENTITIES: usize = 20;
    const ROUNDS: usize = 40;
    const CONCURRENT: usize = 500;
    let db = TestDatabase::new().await.unwrap();
    let modes = [
        ("default (prepared, timeout at startup)", db.config()),
        (
            "transaction_pooling, 30 s timeout",
            db.config().transaction_pooling(true),
        ),
        (
            "transaction_pooling, no timeout",
            db.config()
                .transaction_pooling(true)
                .statement_timeout(None),
        ),
    ];
    let stores: Vec<_> = modes
        .iter()
        .map(|(_, config)| store_with(config.clone().max_connections(4)))
        .collect();
    let mut writes = vec![Vec::new(); modes.len()];
    let mut reads = vec![Vec::new(); modes.len()];
    let mut throughput = vec![Vec::new(); modes.len()];
    for store in &stores {
        store.send(Ping).await.unwrap().unwrap();
    }
    for n in 0..LONE {
        let id = n % ENTITIES;
        let version = (n / ENTITIES + 1) as u64;
        for (m, store) in stores.iter().enumerate() {
            let id = format!("m{m}-lone-{id}");
            let started = Instant::now();
            write(store, &id, version).await.unwrap();
            writes[m].push(started.elapsed());
            let started = Instant::now();
            store.send(GetLatestState(id)).await.unwrap().unwrap();
            reads[m].push(started.elapsed());
        }
    }
    for round in 0..ROUNDS {
        for (m, store) in stores.iter().enumerate() {
            let started = Instant::now();
            join_all((0..CONCURRENT).map(|n| {
                let store = store.clone();
                async move {
                    let id = format!("m{m}-many-{n}");
                    assert_eq!(
                        write(&store, &id, round as u64 + 1).await.unwrap(),
                        WriteOutcome::Written
                    );
                }
            }))
            .await;
            throughput[m].push(CONCURRENT as f64 / started.elapsed().as_secs_f64());
        }
    }
    let percentile = |samples: &[Duration], p: f64| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * p) as usize].as_micros()
    };
    println!(
        "per mode: {LONE} lone writes and reads, {ROUNDS} rounds of {CONCURRENT} concurrent \
         writes (4 connections)"
    );
    for (m, (name, _)) in modes.iter().enumerate() {
        let mut rates = throughput[m].clone();
        rates.sort_by(f64::total_cmp);
        println!(
            "{name}: lone write p50 {} µs p99 {} µs; lone read p50 {} µs p99 {} µs; \
             {CONCURRENT} concurrent writers median {:.0} states/s",
            percentile(&writes[m], 0.5),
            percentile(&writes[m], 0.99),
            percentile(&reads[m], 0.5),
            percentile(&reads[m], 0.99),
            rates[rates.len() / 2],
        );
    }
    db.cleanup().await.unwrap();
}

/// Ownership through pgBouncer in transaction mode: claims, fenced writes and the lease go
/// through it as they do straight to the server (each an unnamed statement of its own
/// transaction): a non-owner names the owner, forwarding applies the command, and stopping
/// the owner moves its ids at once.
#[actix::test]
async fn ownership_works_through_pgbouncer_in_transaction_mode() {
    use common::bank::{Account, Deposit};
    use durablestore_postgres::{CommandError, DurableStore, EntityRegistry, Ownership};

    let Some((db, bouncer)) = setup().await else {
        return;
    };
    open_every_server_connection(&bouncer).await;
    let owned = |replica: &str| {
        let store = DurableStore::new(through(&bouncer, &db)).unwrap();
        EntityRegistry::builder(store, |id: &str| Account { id: id.into() })
            .ownership(Ownership::leased(replica, Duration::from_secs(2)))
            .start()
            .unwrap()
    };
    let (a, b) = (owned("replica-a"), owned("replica-b"));
    let ids: Vec<String> = (0..20).map(|i| format!("acct-{i}")).collect();
    for answer in join_all(ids.iter().map(|id| a.send(id, Deposit(3)))).await {
        assert_eq!(answer.unwrap(), (3, 1));
    }
    for answer in join_all(ids.iter().map(|id| b.send(id, Deposit(1)))).await {
        assert!(
            matches!(&answer, Err(CommandError::OwnedElsewhere { owner }) if owner == "replica-a"),
            "{answer:?}"
        );
    }
    for answer in join_all(ids.iter().map(|id| a.send(id, Deposit(1)))).await {
        assert_eq!(answer.unwrap(), (4, 2));
    }
    a.stop().await;
    for answer in join_all(ids.iter().map(|id| b.send(id, Deposit(1)))).await {
        assert_eq!(answer.unwrap(), (5, 3));
    }
    b.stop().await;
    db.cleanup().await.unwrap();
}
