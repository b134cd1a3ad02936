//! The test harness's last resort: a throwaway cluster from the installed PostgreSQL binaries,
//! removed when dropped and when the process ends.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use actix::Actor;
use durablestore_postgres::testkit::TempCluster;
use durablestore_postgres::{
    Config, CreateSchema, DurableState, DurableStoreActor, GetLatestState, WriteState,
};

/// Set in the child process of `cluster_is_removed_when_the_process_ends`.
const CHILD: &str = "DURABLESTORE_TESTKIT_CHILD";

/// Whether this machine can run the tests here (the binaries are installed).
fn skip() -> bool {
    if TempCluster::binaries_installed() {
        return false;
    }
    eprintln!("skipped: no PostgreSQL server binaries installed");
    true
}

/// Waits (up to a minute) for `done`: cleanup happens in another process.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

fn accepts_connections(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[actix::test]
async fn cluster_serves_a_store_and_is_removed_on_drop() {
    if skip() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .unwrap()
        .unwrap();
    let (dir, port) = (cluster.dir().to_path_buf(), cluster.port());
    assert!(dir.exists());

    let config: Config = cluster.url().parse().unwrap();
    let store = DurableStoreActor::new(config.schema("testkit"))
        .unwrap()
        .start();
    store.send(CreateSchema).await.unwrap().unwrap();
    let state = DurableState::new("a", 1, &prost_types::Duration::default());
    store
        .send(WriteState(state.clone()))
        .await
        .unwrap()
        .unwrap();
    let read = store.send(GetLatestState("a".into())).await.unwrap();
    assert_eq!(read.unwrap(), Some(state));

    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    assert!(!dir.exists(), "{} removed", dir.display());
    assert!(!accepts_connections(port), "server stopped");
}

/// Runs as a test only in the child process: starts a cluster and exits without dropping it,
/// as a test process ends with the harness's cluster in a `static`.
#[test]
fn child_leaves_a_cluster_behind() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let cluster = TempCluster::start().unwrap();
    println!("CLUSTER {} {}", cluster.port(), cluster.dir().display());
    std::mem::forget(cluster);
    std::process::exit(0);
}

#[test]
fn cluster_is_removed_when_the_process_ends() {
    if skip() {
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_leaves_a_cluster_behind", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CLUSTER "))
        .unwrap_or_else(|| {
            panic!(
                "child printed no cluster: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let (port, dir) = line.split_once(' ').unwrap();
    let (port, dir): (u16, PathBuf) = (port.parse().unwrap(), dir.into());

    assert!(
        eventually(|| !dir.exists()),
        "{} removed after exit",
        dir.display()
    );
    assert!(eventually(|| !accepts_connections(port)), "server stopped");
}
