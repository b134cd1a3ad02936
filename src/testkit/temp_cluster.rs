//! A throwaway PostgreSQL cluster made with the installed binaries: the test harness's last
//! resort when there is no `DATABASE_URL`, no Docker and no server on the default port.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Where Debian and Ubuntu install PostgreSQL's server binaries, one directory per major
/// version; `initdb` is not on their `PATH`.
const DEBIAN_PREFIX: &str = "/usr/lib/postgresql";

/// The OS user that runs the server when the tests run as root (`initdb` and `postgres`
/// refuse to run as root).
const SERVER_USER: &str = "postgres";

/// Stops the server and removes the directory once its standard input reaches end of file:
/// when [`TempCluster`] is dropped, or when the test process ends in any way, since the
/// operating system then closes the pipe. Interrupts are ignored so that a Ctrl-C, which
/// reaches the whole process group, still lets it clean up.
const WATCHDOG: &str = r#"trap '' INT TERM HUP
cat >/dev/null
if [ "$4" = root ]; then
  runuser -u postgres -- "$1" -D "$2" -m immediate -w stop
else
  "$1" -D "$2" -m immediate -w stop
fi >/dev/null 2>&1
rm -rf "$3""#;

/// A PostgreSQL cluster in a temporary directory, on a free loopback port, with trust
/// authentication for the user `postgres`.
///
/// Made with the `initdb` and `pg_ctl` found on `PATH`, or else under
/// `/usr/lib/postgresql/<version>/bin` (the newest version). When the process runs as root
/// the server runs as the `postgres` OS user, which must exist.
///
/// The server is stopped and the directory removed when the value is dropped, and also when
/// the process ends without dropping it (a value kept in a `static`, a panic, `exit`, a
/// signal): a small watchdog shell process does it once the pipe to it closes.
#[derive(Debug)]
pub struct TempCluster {
    dir: PathBuf,
    port: u16,
    /// Closing this makes the watchdog clean up.
    watchdog_input: Option<ChildStdin>,
    watchdog: Child,
}

impl TempCluster {
    /// Whether PostgreSQL's server binaries are installed where [`TempCluster::start`] looks.
    pub fn binaries_installed() -> bool {
        find_bin_dir().is_some()
    }

    /// Creates and starts a cluster. Blocks for the few seconds `initdb` takes; from async
    /// code, call it through `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying which step failed (binaries missing, `initdb` or
    /// `pg_ctl start` failing, with their output) and how to provide a server instead.
    pub fn start() -> Result<Self, Error> {
        let fail = |what: String| {
            Error::InvalidConfig(format!(
                "throwaway PostgreSQL cluster: {what}; set DATABASE_URL to use an existing server"
            ))
        };
        let bin = find_bin_dir().ok_or_else(|| {
            fail(format!(
                "no initdb on PATH or under {DEBIAN_PREFIX}/<version>/bin"
            ))
        })?;
        let as_root = running_as_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "durablestore-testkit-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let data = dir.join("data");
        let pg_ctl = bin.join("pg_ctl");

        // The watchdog first: from here on, every way out removes the directory.
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("durablestore-testkit-watchdog")
            .arg(&pg_ctl)
            .arg(&data)
            .arg(&dir)
            .arg(if as_root { "root" } else { "user" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                fail(format!("cannot run sh: {e}"))
            })?;
        let mut cluster = TempCluster {
            watchdog_input: watchdog.stdin.take(),
            watchdog,
            dir,
            port: 0,
        };

        if as_root {
            run(Command::new("chown")
                .arg(format!("{SERVER_USER}:{SERVER_USER}"))
                .arg(&cluster.dir))
            .map_err(|e| {
                fail(format!(
                    "running as root, the server runs as the `{SERVER_USER}` user: {e}"
                ))
            })?;
        }
        let mut initdb = server_command(&bin.join("initdb"), as_root);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(&mut initdb).map_err(|e| fail(format!("initdb failed: {e}")))?;

        cluster.port = free_port().map_err(|e| fail(format!("no free port: {e}")))?;
        // Unix sockets in the cluster's own directory: the default one may not be writable.
        let conf = format!(
            "\n# durablestore testkit\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 200\n",
            cluster.port,
            cluster.dir.display()
        );
        append(&data.join("postgresql.conf"), &conf)
            .map_err(|e| fail(format!("postgresql.conf: {e}")))?;
        let log = cluster.dir.join("server.log");
        let mut start = server_command(&pg_ctl, as_root);
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]);
        run(&mut start).map_err(|e| {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            fail(format!("pg_ctl start failed: {e}\n{server_log}"))
        })?;
        Ok(cluster)
    }

    /// The cluster's URL: `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the data directory, the server log and the sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempCluster {
    /// Closes the watchdog's pipe and waits for it to stop the server and remove the
    /// directory.
    fn drop(&mut self) {
        drop(self.watchdog_input.take());
        let _ = self.watchdog.wait();
    }
}

/// `initdb`'s directory: on `PATH` (resolving symbolic links, so that `pg_ctl` is its real
/// sibling), else the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|candidate| candidate.is_file())
    });
    if let Some(initdb) = on_path {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent().filter(|dir| dir.join("pg_ctl").is_file()) {
            return Some(dir.to_path_buf());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_PREFIX)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program`, run as [`SERVER_USER`] when the process is root.
fn server_command(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", SERVER_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs `command` to completion; its output is the error when it fails. (`pg_ctl start`
/// leaves no process holding the output pipes: the server's output goes to its log file.)
fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A port that was free a moment ago. Another process could take it before the server binds
/// it; `pg_ctl start` then fails with a clear message.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
