//! Failover: a primary and a streaming standby; the primary stops, the standby is promoted, and
//! the same actor system keeps writing through a multi-host connection string.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use actix::Actor;
use common::bank::{Account, Deposit, GetBalance};
use common::cluster::{self, Cluster, free_port};
use durablestore_postgres::{Config, CreateSchema, DurableEntity, DurableStoreActor};
use futures_util::future::join_all;

#[actix::test]
async fn writes_continue_on_the_promoted_standby() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let primary = Cluster::start_new("wal_level = replica\nmax_wal_senders = 5\n", None);
    let standby_dir = Cluster::new_dir("standby");
    let standby_data = standby_dir.join("data");
    let backup = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/pg_basebackup",
        ])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-D", standby_data.to_str().unwrap(), "-R", "-X", "stream"])
        .output()
        .unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let standby = Cluster::existing(standby_dir.clone(), free_port());
    standby.append_conf(&format!(
        "port = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
        standby.port,
        standby_dir.display()
    ));
    standby.start();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");

    // Both hosts; only a read-write one is used.
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        primary.port, standby.port
    );
    let config = url
        .parse::<Config>()
        .unwrap()
        .schema("failover")
        .checkout_timeout(Duration::from_secs(2));
    let store = DurableStoreActor::new(config).unwrap().start();
    store.send(CreateSchema).await.unwrap().unwrap();
    let entities: Vec<_> = (0..20)
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
    for entity in &entities {
        for _ in 0..5 {
            entity.send(Deposit(1)).await.unwrap().unwrap();
        }
    }

    // A clean stop of the primary ships all its WAL to the standby first.
    primary.stop("fast");
    standby.promote();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "f");

    // The same entities and store keep going: each retries until the new primary answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = entities.iter().map(|entity| async move {
        loop {
            match entity.send(Deposit(1)).await.unwrap() {
                Ok(reply) => return reply,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no write succeeded after failover: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    for (balance, version) in join_all(resumed).await {
        // Nothing acknowledged before the failover was lost: each continues from version 5.
        assert_eq!((balance, version), (6, 6));
    }
    for entity in &entities {
        assert_eq!(entity.send(GetBalance).await.unwrap().unwrap(), (6, 6));
    }
    assert_eq!(
        standby.psql("SELECT count(*) FROM failover.states_store WHERE version_number = 6"),
        "20"
    );
}
