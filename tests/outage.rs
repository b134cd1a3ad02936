//! Faults of a real server: restarts and crashes under load, a frozen server, a wrong password.
//! Each test runs its own throwaway cluster (see `common::cluster`).

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use common::bank::{Account, Deposit};
use common::cluster::{self, Cluster};
use common::{Captured, state};
use durablestore_postgres::{
    CommandError, Config, CreateSchema, DurableEntity, DurableStoreActor, Error, GetLatestState,
    Ping, WriteOutcome, WriteState,
};
use futures_util::future::join_all;

macro_rules! require_cluster {
    () => {
        if let Some(why) = cluster::unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Runs a blocking cluster operation without stalling the actors on this thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

const ENTITIES: usize = 200;

#[actix::test]
async fn restart_and_crash_under_load_lose_no_acknowledged_write() {
    require_cluster!();
    let cluster = Arc::new(Cluster::start_new("", None));
    let config = cluster
        .url()
        .parse::<Config>()
        .unwrap()
        .schema("restart")
        .checkout_timeout(Duration::from_secs(2))
        .statement_timeout(Duration::from_secs(2));
    let store = DurableStoreActor::new(config).unwrap().start();
    store.send(CreateSchema).await.unwrap().unwrap();

    let entities: Vec<Addr<DurableEntity<Account>>> = (0..ENTITIES)
        .map(|i| {
            DurableEntity::new(
                Account {
                    id: format!("acct-{i}"),
                },
                store.clone(),
            )
            .start()
        })
        .collect();
    // Per entity: highest acknowledged version, and when it last succeeded.
    let acked = Rc::new(RefCell::new(vec![0_u64; ENTITIES]));
    let last_ok = Rc::new(RefCell::new(vec![Instant::now(); ENTITIES]));
    let errors = Rc::new(RefCell::new(0_usize));
    let running = Rc::new(RefCell::new(true));
    // The longest any call may take: checkout or statement timeout, plus slack for a busy
    // machine. Exceeding it is a hang.
    let bound = Duration::from_secs(10);

    let writers = entities.iter().enumerate().map(|(i, entity)| {
        let (acked, last_ok, errors, running) = (
            acked.clone(),
            last_ok.clone(),
            errors.clone(),
            running.clone(),
        );
        async move {
            while *running.borrow() {
                let reply = tokio::time::timeout(bound, entity.send(Deposit(1)))
                    .await
                    .unwrap_or_else(|_| panic!("acct-{i}: a call hung for {bound:?}"))
                    .unwrap_or_else(|e| panic!("acct-{i}: the entity actor died: {e}"));
                match reply {
                    Ok((balance, version)) => {
                        // Every deposit is 1, so balance = version: nothing applied twice.
                        assert_eq!(balance as u64, version);
                        let mut acked = acked.borrow_mut();
                        acked[i] = acked[i].max(version);
                        last_ok.borrow_mut()[i] = Instant::now();
                    }
                    Err(CommandError::Store(e) | CommandError::Recovery(e)) => {
                        assert!(e.is_transient(), "acct-{i}: not a transient error: {e:?}");
                        *errors.borrow_mut() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    // A write whose reply was lost in the crash was applied: the retry
                    // conflicts, the entity reloads, and goes on.
                    Err(CommandError::Conflict(_)) => *errors.borrow_mut() += 1,
                    Err(other) => panic!("acct-{i}: unexpected {other:?}"),
                }
            }
        }
    });
    let orchestration = {
        let (cluster, last_ok, running, errors) = (
            cluster.clone(),
            last_ok.clone(),
            running.clone(),
            errors.clone(),
        );
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for mode in ["fast", "immediate"] {
                let c = cluster.clone();
                blocking(move || c.stop(mode)).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let c = cluster.clone();
                blocking(move || c.start()).await;
                let back = Instant::now();
                // Writes resume by themselves: every entity succeeds again within a few seconds
                // (the entities and the store were not restarted).
                let deadline = back + Duration::from_secs(8);
                while last_ok.borrow().iter().any(|t| *t < back) {
                    assert!(
                        Instant::now() < deadline,
                        "after the {mode} restart, some entities never wrote again"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            assert!(*errors.borrow() > 0, "the outages were noticed");
            *running.borrow_mut() = false;
        }
    };
    let (_, ()) = tokio::join!(join_all(writers), orchestration);

    // Every acknowledged write is stored, with at least its version.
    let stored = cluster.psql("SELECT persistence_id, version_number FROM restart.states_store");
    let mut versions = vec![0_u64; ENTITIES];
    for line in stored.lines() {
        let (id, version) = line.split_once('|').unwrap();
        let i: usize = id.trim_start_matches("acct-").parse().unwrap();
        versions[i] = version.parse().unwrap();
    }
    for (i, (&stored, &acked)) in versions.iter().zip(acked.borrow().iter()).enumerate() {
        assert!(acked > 0, "acct-{i} wrote something");
        assert!(
            stored >= acked,
            "acct-{i}: acknowledged {acked}, stored {stored}"
        );
    }
}

#[actix::test]
async fn a_frozen_server_yields_timeouts_and_the_pool_recovers() {
    require_cluster!();
    let cluster = Cluster::start_new("", None);
    let timeout = Duration::from_millis(500);
    let config = cluster
        .url()
        .parse::<Config>()
        .unwrap()
        .schema("frozen")
        .checkout_timeout(Duration::from_secs(1))
        .statement_timeout(timeout);
    let store = DurableStoreActor::new(config).unwrap().start();
    store.send(CreateSchema).await.unwrap().unwrap();
    store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap();

    // SIGSTOP the postmaster and its backends: nothing answers, nothing is refused.
    cluster.signal_all("STOP");
    for (label, call) in [
        ("write", store.send(WriteState(state("a", 2, 2)))),
        ("write other", store.send(WriteState(state("b", 1, 1)))),
    ] {
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("{label} hung"))
            .unwrap();
        assert!(
            matches!(
                result,
                Err(Error::Timeout { .. } | Error::PoolTimeout { .. })
            ),
            "{label}: {result:?}"
        );
    }
    let ping = tokio::time::timeout(Duration::from_secs(10), store.send(Ping))
        .await
        .expect("ping hung")
        .unwrap();
    assert!(ping.as_ref().is_err_and(Error::is_transient), "{ping:?}");
    cluster.signal_all("CONT");

    // The store recovers by itself: the abandoned connection was discarded, a new one serves.
    let mut recovered = None;
    for _ in 0..50 {
        match store.send(WriteState(state("b", 1, 1))).await.unwrap() {
            Ok(outcome) => {
                recovered = Some(outcome);
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(matches!(
        recovered,
        Some(WriteOutcome::Written | WriteOutcome::AlreadyStored)
    ));
    // Whether `a` v2 was applied before the freeze is unknown to the caller; retrying it is
    // safe either way.
    let retry = store.send(WriteState(state("a", 2, 2))).await.unwrap();
    assert!(
        matches!(
            retry,
            Ok(WriteOutcome::Written | WriteOutcome::AlreadyStored)
        ),
        "{retry:?}"
    );
    let read = store
        .send(GetLatestState("a".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.map(|s| s.version_number), Some(2));
}

#[actix::test]
async fn a_frozen_server_is_detected_with_the_default_settings() {
    require_cluster!();
    let cluster = Cluster::start_new("", None);
    // No timeout configured: the defaults alone must turn a frozen server into an error.
    let config = cluster.url().parse::<Config>().unwrap().schema("frozen");
    let store = DurableStoreActor::new(config).unwrap().start();
    store.send(CreateSchema).await.unwrap().unwrap();
    store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    cluster.signal_all("STOP");
    let started = Instant::now();
    let result = tokio::time::timeout(
        durablestore_postgres::Config::DEFAULT_STATEMENT_TIMEOUT * 2,
        store.send(WriteState(state("a", 2, 2))),
    )
    .await;
    cluster.signal_all("CONT");
    let result = result.expect("the write hung").unwrap();
    assert!(
        matches!(&result, Err(e @ Error::Timeout { .. }) if e.outcome_unknown()),
        "{result:?} after {:?}",
        started.elapsed()
    );
}

#[actix::test]
async fn wrong_password_is_reported_at_once_and_never_printed() {
    require_cluster!();
    let cluster = Cluster::start_new(
        "password_encryption = 'scram-sha-256'\n",
        Some("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"),
    );
    cluster.psql("ALTER USER postgres PASSWORD 'the-right-secret'");

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let wrong = "hunter2-wrong-secret";
    let config = Config::new("127.0.0.1", cluster.port, "postgres", wrong, "postgres")
        .checkout_timeout(Duration::from_secs(20));
    let store = DurableStoreActor::new(config.clone()).unwrap().start();
    let started = Instant::now();
    let err = store.send(Ping).await.unwrap().unwrap_err();
    // Reported as soon as the server refuses, not after the 20 s checkout timeout.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
    let display = err.to_string();
    assert!(
        display.contains("password authentication failed"),
        "{display}"
    );
    let err_write = store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap_err();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("password authentication failed"),
        "the logs were captured: {logs}"
    );
    for text in [
        display,
        format!("{err:?}"),
        err_write.to_string(),
        format!("{err_write:?}"),
        format!("{config:?}"),
        format!("{store:?}"),
        logs,
    ] {
        assert!(!text.contains(wrong), "the password leaked: {text}");
    }

    // The right password works.
    let right = Config::new(
        "127.0.0.1",
        cluster.port,
        "postgres",
        "the-right-secret",
        "postgres",
    );
    let store = DurableStoreActor::new(right).unwrap().start();
    store.send(Ping).await.unwrap().unwrap();
}
