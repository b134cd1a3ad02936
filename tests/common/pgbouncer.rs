//! A throwaway pgBouncer in transaction pooling mode, in front of a test database's server:
//! its own ini in a temporary directory, a free loopback port, stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{Cluster, free_port};

/// Where Debian's `pgbouncer` package puts the binary.
const BIN: &str = "/usr/sbin/pgbouncer";

/// Server connections per database/user pair: small, so the store's connections (and other
/// clients) really share server connections, transaction by transaction.
pub const POOL_SIZE: u32 = 2;

pub struct PgBouncer {
    dir: PathBuf,
    child: Child,
    pub port: u16,
    /// The database name clients use (the upstream's own).
    dbname: String,
}

/// Why pgBouncer tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new(BIN).exists() {
        return Some(format!("{BIN} is missing (Debian package `pgbouncer`)"));
    }
    None
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgBouncer {
    /// Starts pgBouncer in front of the server `upstream_url` points at (its host, port,
    /// database, user and password), in transaction mode, and waits until it accepts
    /// connections. pgBouncer refuses to run as root, so as root it runs as `postgres`.
    pub fn start(upstream_url: &str) -> PgBouncer {
        let upstream: tokio_postgres::Config = upstream_url.parse().expect("upstream url");
        let host = match upstream.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            other => panic!("pgBouncer tests need a TCP upstream, not {other:?}"),
        };
        let port = upstream.get_ports().first().copied().unwrap_or(5432);
        let user = upstream.get_user().unwrap_or("postgres").to_owned();
        let dbname = upstream.get_dbname().unwrap_or(&user).to_owned();
        let password = upstream
            .get_password()
            .map(|p| format!(" password={}", String::from_utf8_lossy(p)))
            .unwrap_or_default();

        let root = is_root();
        let dir = if root {
            Cluster::new_dir("pgbouncer")
        } else {
            let dir = std::env::temp_dir().join(format!(
                "durablestore-pgbouncer-{}-{}",
                std::process::id(),
                free_port()
            ));
            std::fs::create_dir_all(&dir).expect("mkdir");
            dir
        };
        let listen = free_port();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 {dbname} = host={host} port={port} dbname={dbname} user={user}{password}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {listen}\n\
                 unix_socket_dir =\n\
                 ; any client name is accepted; the server login is the [databases] user\n\
                 auth_type = any\n\
                 pool_mode = transaction\n\
                 default_pool_size = {POOL_SIZE}\n\
                 max_client_conn = 200\n\
                 ; FIFO reuse: consecutive transactions of one client land on different server\n\
                 ; connections, as they do under load\n\
                 server_round_robin = 1\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n",
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .expect("write pgbouncer.ini");
        let mut command = if root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", BIN]);
            command
        } else {
            Command::new(BIN)
        };
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pgbouncer");
        let mut bouncer = PgBouncer {
            dir,
            child,
            port: listen,
            dbname,
        };
        bouncer.wait_until_listening();
        bouncer
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgbouncer exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A URL for clients of this pgBouncer (no TLS: it has none configured).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            self.port, self.dbname
        )
    }

    /// pgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // As root the child is `runuser`; the pid file names pgBouncer itself.
        let pid = std::fs::read_to_string(self.dir.join("pgbouncer.pid")).unwrap_or_default();
        match pid.trim().parse::<u32>() {
            Ok(pid) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            Err(_) => {
                let _ = self.child.kill();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
