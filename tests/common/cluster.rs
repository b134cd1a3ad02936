//! Throwaway PostgreSQL clusters for fault tests: initdb into a temporary directory, run as the
//! `postgres` OS user on a free loopback port, removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

const BIN: &str = "/usr/lib/postgresql/15/bin";

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

/// Why fault tests cannot run here, if they cannot (they need root to run PostgreSQL's binaries
/// as the `postgres` user).
pub fn unavailable() -> Option<String> {
    if !Path::new(BIN).join("initdb").exists() {
        return Some(format!("{BIN}/initdb is missing"));
    }
    let root = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        return Some("fault tests run PostgreSQL as the postgres user and need root".into());
    }
    None
}

fn as_postgres(program: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .args(args)
        .output()
        .expect("runuser")
}

fn check(what: &str, output: Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl Cluster {
    /// An empty directory owned by `postgres`, for a data directory or a base backup.
    pub fn new_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "durablestore-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "chown");
        dir
    }

    /// initdb (trust auth for local TCP unless `hba` says otherwise), with `conf` appended to
    /// postgresql.conf, then start.
    pub fn start_new(conf: &str, hba: Option<&str>) -> Cluster {
        let dir = Self::new_dir("pg");
        let data = dir.join("data");
        let data_str = data.to_str().expect("utf8 path");
        check(
            "initdb",
            as_postgres(
                "initdb",
                &[
                    "-D",
                    data_str,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            ),
        );
        let cluster = Cluster {
            dir,
            port: free_port(),
        };
        cluster.append_conf(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = on\nmax_connections = 50\nshared_buffers = 16MB\n{conf}\n",
            cluster.port,
            cluster.dir.display()
        ));
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        cluster.start();
        cluster
    }

    /// A cluster on an existing data directory (e.g. a base backup), not started.
    pub fn existing(dir: PathBuf, port: u16) -> Cluster {
        Cluster { dir, port }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn append_conf(&self, conf: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .expect("open postgresql.conf");
        file.write_all(conf.as_bytes()).expect("append conf");
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let log = self.dir.join("log");
        let mut all = vec![
            "-D",
            data.to_str().expect("utf8"),
            "-l",
            log.to_str().expect("utf8"),
        ];
        all.extend_from_slice(args);
        as_postgres("pg_ctl", &all)
    }

    pub fn start(&self) {
        let output = self.ctl(&["-w", "-t", "60", "start"]);
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// `mode`: `fast` (clean shutdown) or `immediate` (like a crash: recovery from WAL on start).
    pub fn stop(&self, mode: &str) {
        check("pg_ctl stop", self.ctl(&["-w", "-m", mode, "stop"]));
    }

    pub fn reload(&self) {
        check("pg_ctl reload", self.ctl(&["reload"]));
    }

    pub fn promote(&self) {
        check("pg_ctl promote", self.ctl(&["-w", "promote"]));
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's pid and its children's (the backends).
    pub fn pids(&self) -> Vec<i32> {
        let Ok(pidfile) = std::fs::read_to_string(self.data().join("postmaster.pid")) else {
            return Vec::new();
        };
        let Some(postmaster) = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return Vec::new();
        };
        let children = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &postmaster.to_string()])
            .output()
            .expect("ps");
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok()),
        );
        pids
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the postmaster and every backend.
    pub fn signal_all(&self, signal: &str) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Runs SQL with psql as the postgres user.
    pub fn psql(&self, sql: &str) -> String {
        let output = as_postgres(
            "psql",
            &[
                "-h",
                self.dir.to_str().expect("utf8"),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-Atc",
                sql,
            ],
        );
        check("psql", output.clone());
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.signal_all("CONT");
        let _ = self.ctl(&["-w", "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
