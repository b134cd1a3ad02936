//! Connection, pool and store settings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio_postgres::config::Host;

use crate::error::{Error, InvalidInput, truncate};
use crate::state::RowFormat;
use crate::tls::{self, SslMode};

/// Default schema holding the table: `public`.
pub const DEFAULT_SCHEMA: &str = "public";
/// Default table name: `states_store`, as in eGo's DDL.
pub const DEFAULT_TABLE: &str = "states_store";
/// Default maximum number of pooled connections: 4, as in eGo's store.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4;
/// Default number of idle connections the pool keeps open: 0.
pub const DEFAULT_MIN_IDLE_CONNECTIONS: u32 = 0;
/// Default age after which a connection is closed when it returns to the pool: 1 hour.
pub const DEFAULT_MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Default time after which an idle connection beyond the minimum is closed: 30 minutes.
pub const DEFAULT_MAX_CONNECTION_IDLE_TIME: Duration = Duration::from_secs(30 * 60);
/// Default period of the pool's housekeeping (idle and lifetime reaping): 1 minute.
pub const DEFAULT_HEALTH_CHECK_PERIOD: Duration = Duration::from_secs(60);
/// Default time a call waits for a pooled connection before failing: 5 seconds.
pub const DEFAULT_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest number of writes (or reads) sent as one statement: 256.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 256;
/// Default number of writes (and, separately, reads) that may wait for a connection before
/// callers are made to wait: 10,000.
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 10_000;
/// Default largest encoded state a write accepts: 10 MiB.
pub const DEFAULT_MAX_STATE_BYTES: usize = 10 * 1024 * 1024;
/// Default `application_name` reported to the server: `durablestore-postgres`.
pub const DEFAULT_APPLICATION_NAME: &str = "durablestore-postgres";
/// Default longest time a statement may run: 30 seconds (ADO.NET's command timeout).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default TCP user timeout (how long sent data may stay unacknowledged before the connection
/// is closed) and connect timeout, when the connection settings give none: 10 seconds.
pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// tokio-postgres's keepalive idle time when none is configured (2 hours): replaced by
/// [`DEFAULT_NETWORK_TIMEOUT`] so an idle connection to a vanished host is noticed in seconds.
const DRIVER_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Upper bounds that keep the queues and statements of a store allocatable.
const MAX_BATCH_SIZE_LIMIT: usize = 100_000;
const MAX_PENDING_REQUESTS_LIMIT: usize = 10_000_000;

/// PostgreSQL's limit on identifier length (NAMEDATALEN - 1).
const MAX_IDENTIFIER_LEN: usize = 63;

/// How `WriteState` treats the version already stored for an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VersionCheck {
    /// A write of version *v* succeeds only when no row exists and *v* = 1, or when the stored
    /// version is *v − 1*. Re-sending exactly what is stored is a no-op success. Anything else
    /// is [`Error::VersionConflict`] and writes nothing. This is the default.
    #[default]
    Sequential,
    /// Last writer wins, as in eGo's Go store: every write overwrites the row, whatever its
    /// version. **Risk:** two writers of one entity (a split brain, a retried stale command)
    /// silently overwrite each other, and a version can go backwards. Use only while migrating
    /// from a store that behaved this way.
    Unchecked,
}

/// A validated SQL identifier (schema or table name), stored unquoted.
///
/// Only plain identifiers are accepted: a letter or `_`, then letters, digits, `_` or `$`, at
/// most 63 bytes. They are always double-quoted in SQL, so case is preserved.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Identifier(String);

impl Identifier {
    pub(crate) fn parse(kind: &'static str, name: &str) -> Result<Self, InvalidInput> {
        let reject = |reason| InvalidInput::InvalidIdentifier {
            kind,
            name: truncate(name, 100),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(reject("it is empty")),
            Some(c) if !(c.is_alphabetic() || c == '_') => {
                return Err(reject("it must start with a letter or `_`"));
            }
            Some(_) => {}
        }
        if name.len() > MAX_IDENTIFIER_LEN {
            return Err(reject("it is longer than 63 bytes"));
        }
        if !chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            return Err(reject(
                "only letters, digits, `_` and `$` are allowed (no quotes, dots or spaces)",
            ));
        }
        Ok(Identifier(name.to_owned()))
    }

    /// The identifier as SQL text, double-quoted. Validation rules out `"` so no escaping is
    /// needed, but it is done anyway so quoting never depends on validation.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Settings of a [`DurableStoreActor`](crate::DurableStoreActor): where the database is, how
/// the pool behaves, and which table holds the states.
///
/// Connection settings are a [`tokio_postgres::Config`], so every connection string that
/// tokio-postgres accepts works here: `postgres://user:pass@host:5432/db?sslmode=disable`, a
/// libpq `key=value` string, multiple hosts with `target_session_attrs=read-write`. The pool and
/// store settings are set with the builder methods, each of which documents its default.
///
/// `Debug` never prints the password.
///
/// ```
/// use std::time::Duration;
/// use durablestore_postgres::Config;
///
/// let config: Config = "postgres://postgres@127.0.0.1:5432/postgres".parse()?;
/// let config = config
///     .schema("billing")?
///     .max_connections(8)
///     .checkout_timeout(Duration::from_secs(2));
/// assert_eq!(config.get_schema(), "billing");
/// # Ok::<(), durablestore_postgres::Error>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) schema: Identifier,
    pub(crate) table: Identifier,
    pub(crate) max_connections: u32,
    pub(crate) min_idle_connections: u32,
    pub(crate) max_connection_lifetime: Duration,
    pub(crate) max_connection_idle_time: Duration,
    pub(crate) health_check_period: Duration,
    pub(crate) checkout_timeout: Duration,
    pub(crate) version_check: VersionCheck,
    pub(crate) max_batch_size: usize,
    pub(crate) max_pending_requests: usize,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) max_state_bytes: usize,
    pub(crate) row_format: RowFormat,
    pub(crate) ssl_mode: SslMode,
    pub(crate) ssl_root_certs: Vec<CertificateDer<'static>>,
    pub(crate) ssl_client_identity: Option<tls::ClientIdentity>,
}

impl Config {
    /// A configuration for one host, with every other setting at its default.
    ///
    /// Mirrors eGo's `NewConfig(host, port, user, password, dbName)`, including its plain-TCP
    /// connection ([`SslMode::Disable`]; see [`Config::ssl_mode`]). An empty password means
    /// none is sent.
    pub fn new(host: &str, port: u16, user: &str, password: &str, database: &str) -> Self {
        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(port)
            .user(user)
            .dbname(database)
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if !password.is_empty() {
            pg.password(password);
        }
        Self::from_pg_config(pg)
    }

    /// Wraps a fully configured [`tokio_postgres::Config`] (hosts, keepalives,
    /// `target_session_attrs`...). Settings it leaves unset get the store's defaults: the
    /// application name [`DEFAULT_APPLICATION_NAME`]; a connect timeout and a TCP user timeout
    /// of [`DEFAULT_NETWORK_TIMEOUT`], and TCP keepalives after that long idle instead of the
    /// driver's 2 hours, so a host that vanishes without resetting its connections is noticed
    /// within seconds. Its `sslmode` (`disable`, `prefer`, which is tokio-postgres's and libpq's
    /// default, or `require`) becomes [`Config::ssl_mode`].
    pub fn from_pg_config(mut pg: tokio_postgres::Config) -> Self {
        if pg.get_application_name().is_none() {
            pg.application_name(DEFAULT_APPLICATION_NAME);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(DEFAULT_NETWORK_TIMEOUT);
        }
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(DEFAULT_NETWORK_TIMEOUT);
        }
        if pg.get_keepalives_idle() == DRIVER_KEEPALIVES_IDLE {
            pg.keepalives_idle(DEFAULT_NETWORK_TIMEOUT);
        }
        let ssl_mode = match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Config {
            pg,
            schema: Identifier(DEFAULT_SCHEMA.to_owned()),
            table: Identifier(DEFAULT_TABLE.to_owned()),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            min_idle_connections: DEFAULT_MIN_IDLE_CONNECTIONS,
            max_connection_lifetime: DEFAULT_MAX_CONNECTION_LIFETIME,
            max_connection_idle_time: DEFAULT_MAX_CONNECTION_IDLE_TIME,
            health_check_period: DEFAULT_HEALTH_CHECK_PERIOD,
            checkout_timeout: DEFAULT_CHECKOUT_TIMEOUT,
            version_check: VersionCheck::default(),
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            statement_timeout: Some(DEFAULT_STATEMENT_TIMEOUT),
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            row_format: RowFormat::default(),
            ssl_mode,
            ssl_root_certs: Vec::new(),
            ssl_client_identity: None,
        }
    }

    /// Parses the `DATABASE_URL` environment variable (see [`Config::from_str`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the variable is unset or does not parse.
    pub fn from_env() -> Result<Self, Error> {
        let url = std::env::var("DATABASE_URL").map_err(|_| {
            Error::InvalidConfig(
                "DATABASE_URL is not set; set it to e.g. postgres://postgres@127.0.0.1:5432/postgres"
                    .to_owned(),
            )
        })?;
        url.parse()
    }

    /// The schema holding the table. Must be a plain identifier (see [`Config::table`]).
    ///
    /// Defaults to [`DEFAULT_SCHEMA`] (`public`).
    ///
    /// # Errors
    /// [`InvalidInput::InvalidIdentifier`] for anything but a plain identifier.
    pub fn schema(mut self, schema: &str) -> Result<Self, Error> {
        self.schema = Identifier::parse("schema", schema)?;
        Ok(self)
    }

    /// The table holding the states. A letter or `_`, then letters, digits, `_` or `$`, at most
    /// 63 bytes; it is always quoted in SQL, so it is case-sensitive. Names with quotes, dots
    /// or spaces are rejected rather than escaped.
    ///
    /// Defaults to [`DEFAULT_TABLE`] (`states_store`).
    ///
    /// # Errors
    /// [`InvalidInput::InvalidIdentifier`] for anything but a plain identifier.
    pub fn table(mut self, table: &str) -> Result<Self, Error> {
        self.table = Identifier::parse("table", table)?;
        Ok(self)
    }

    /// Maximum number of pooled connections, and so of statements in flight at once.
    ///
    /// Defaults to [`DEFAULT_MAX_CONNECTIONS`] (4).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Number of idle connections the pool keeps open.
    ///
    /// Defaults to [`DEFAULT_MIN_IDLE_CONNECTIONS`] (0).
    #[must_use]
    pub fn min_idle_connections(mut self, min: u32) -> Self {
        self.min_idle_connections = min;
        self
    }

    /// Age after which a connection is closed instead of returning to the pool;
    /// `Duration::ZERO` keeps connections forever.
    ///
    /// Defaults to [`DEFAULT_MAX_CONNECTION_LIFETIME`] (1 hour).
    #[must_use]
    pub fn max_connection_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_connection_lifetime = lifetime;
        self
    }

    /// Time after which an idle connection beyond the minimum is closed; `Duration::ZERO`
    /// never closes idle connections.
    ///
    /// Defaults to [`DEFAULT_MAX_CONNECTION_IDLE_TIME`] (30 minutes).
    #[must_use]
    pub fn max_connection_idle_time(mut self, idle: Duration) -> Self {
        self.max_connection_idle_time = idle;
        self
    }

    /// Period of the pool's housekeeping: idle and expired connections are closed, and missing
    /// idle connections opened, this often. A broken connection is detected without a round trip
    /// whenever it is checked out or returned, so it is never handed to a statement.
    ///
    /// Defaults to [`DEFAULT_HEALTH_CHECK_PERIOD`] (1 minute).
    #[must_use]
    pub fn health_check_period(mut self, period: Duration) -> Self {
        self.health_check_period = period;
        self
    }

    /// How long a call waits for a pooled connection (including establishing one) before it
    /// fails with [`Error::PoolTimeout`] or, when connection attempts failed meanwhile,
    /// [`Error::Unavailable`]. Authentication failures and unknown databases are reported as
    /// soon as they happen, without waiting for the timeout.
    ///
    /// Defaults to [`DEFAULT_CHECKOUT_TIMEOUT`] (5 seconds).
    #[must_use]
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// How writes treat the stored version.
    ///
    /// Defaults to [`VersionCheck::Sequential`].
    #[must_use]
    pub fn version_check(mut self, check: VersionCheck) -> Self {
        self.version_check = check;
        self
    }

    /// The largest number of writes (or reads) sent as one statement. Writes that queue while
    /// every connection is busy go out together, up to this many, as one multi-row statement
    /// and one commit; `1` turns group commit off.
    ///
    /// Defaults to [`DEFAULT_MAX_BATCH_SIZE`] (256).
    #[must_use]
    pub fn max_batch_size(mut self, max: usize) -> Self {
        self.max_batch_size = max;
        self
    }

    /// How many writes (and, separately, reads) may queue for a connection. Beyond it, senders
    /// wait for room: memory stays bounded however fast requests arrive.
    ///
    /// Defaults to [`DEFAULT_MAX_PENDING_REQUESTS`] (10,000).
    #[must_use]
    pub fn max_pending_requests(mut self, max: usize) -> Self {
        self.max_pending_requests = max;
        self
    }

    /// The longest a statement may run. The server cancels it then (`statement_timeout` is set
    /// on each connection of an owned pool), and the client gives up one second later in case
    /// the server cannot even do that (a frozen or partitioned server): it then sends a cancel
    /// request (over TLS when the connection uses TLS) and never reuses the connection. Either
    /// way the call fails with [`Error::Timeout`], whose outcome is unknown. Statements of a
    /// batch share the bound. `Duration::ZERO` turns the timeout off: a statement may then wait
    /// as long as the server lets it (e.g. on a lock), and a frozen server hangs it.
    ///
    /// Defaults to [`DEFAULT_STATEMENT_TIMEOUT`] (30 seconds).
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// The largest encoded state (`state_payload`) a write accepts; larger ones fail with
    /// [`InvalidInput::StateTooLarge`] before reaching the database.
    ///
    /// Defaults to [`DEFAULT_MAX_STATE_BYTES`] (10 MiB).
    #[must_use]
    pub fn max_state_bytes(mut self, max: usize) -> Self {
        self.max_state_bytes = max;
        self
    }

    /// How the connection is protected (TLS through rustls), as libpq's `sslmode`.
    /// `verify-ca` and `verify-full` need [`Config::ssl_root_cert_pem`].
    ///
    /// Defaults to what the connection string's `sslmode` says, and without one to
    /// [`SslMode::Prefer`], as in libpq (`sslrootcert` alone does not change the mode);
    /// [`Config::new`] defaults to [`SslMode::Disable`], as eGo's `NewConfig`.
    #[must_use]
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = mode;
        self
    }

    /// The root certificate(s), PEM-encoded, that the server's certificate must chain to in
    /// `verify-ca` and `verify-full` modes (libpq's `sslrootcert`; a connection string's
    /// `sslrootcert=<path>` is read into this).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `pem` holds no certificate.
    pub fn ssl_root_cert_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        self.ssl_root_certs = tls::parse_roots(pem)?;
        Ok(self)
    }

    /// How states are laid out in the table's `state_manifest` and `state_payload` columns.
    /// Reads accept both layouts whatever this says.
    ///
    /// Defaults to [`RowFormat::Any`], the layout eGo's Go store writes and the only one its
    /// reader accepts; [`RowFormat::Typed`] makes rows unreadable to a Go service.
    #[must_use]
    pub fn row_format(mut self, format: RowFormat) -> Self {
        self.row_format = format;
        self
    }

    /// Trusts the platform's root certificates (the CA bundle of the operating system, as
    /// OpenSSL and curl use it) and sets [`SslMode::VerifyFull`]: what libpq's
    /// `sslrootcert=system` does, and what managed PostgreSQL services whose certificates come
    /// from a public CA need. A connection string's `sslrootcert=system` calls this. The roots
    /// are read now; `SSL_CERT_FILE` and `SSL_CERT_DIR` override where they are read from.
    ///
    /// Defaults to no roots (see [`Config::ssl_root_cert_pem`]). Replaces roots set before.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the platform has no usable root certificate, or when the
    /// crate was built without its `system-roots` feature (on by default).
    pub fn ssl_system_roots(mut self) -> Result<Self, Error> {
        self.ssl_root_certs = tls::system_roots()?;
        self.ssl_mode = SslMode::VerifyFull;
        Ok(self)
    }

    /// A client certificate, presented to a server that asks for one (`hostssl … cert` in
    /// `pg_hba.conf`, or `clientcert=verify-full`): libpq's `sslcert` and `sslkey`, which a
    /// connection string may give as file paths. `cert_pem` holds the client's certificate
    /// first, then any intermediates; `key_pem` its private key (PKCS#8, PKCS#1 or SEC1 PEM,
    /// unencrypted). For `cert` authentication the server also requires the certificate's
    /// common name to equal the user name. Used in every mode but [`SslMode::Disable`].
    ///
    /// Defaults to none: no certificate is presented.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when either PEM holds nothing usable or the key does not
    /// belong to the certificate. The message never quotes the key.
    pub fn ssl_client_cert_pem(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        self.ssl_client_identity = Some(tls::parse_client_identity(cert_pem, key_pem)?);
        Ok(self)
    }

    /// The TLS mode.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The `application_name` reported to the server (visible in `pg_stat_activity`).
    ///
    /// Defaults to [`DEFAULT_APPLICATION_NAME`].
    #[must_use]
    pub fn application_name(mut self, name: &str) -> Self {
        self.pg.application_name(name);
        self
    }

    /// The connection settings.
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// The schema name, unquoted.
    pub fn get_schema(&self) -> &str {
        self.schema.as_str()
    }

    /// The table name, unquoted.
    pub fn get_table(&self) -> &str {
        self.table.as_str()
    }

    /// The maximum number of pooled connections.
    pub fn get_max_connections(&self) -> u32 {
        self.max_connections
    }

    /// The checkout timeout.
    pub fn get_checkout_timeout(&self) -> Duration {
        self.checkout_timeout
    }

    /// The version rule of writes.
    pub fn get_version_check(&self) -> VersionCheck {
        self.version_check
    }

    /// Checks everything that would otherwise fail later (or make bb8 panic) and reports it as
    /// one typed error.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |msg: &str| Err(Error::InvalidConfig(msg.to_owned()));
        if self.pg.get_hosts().is_empty() {
            return invalid("no host given");
        }
        if self.pg.get_user().is_none() {
            return invalid("no user given");
        }
        self.validate_store()
    }

    /// The checks of the settings a store uses whoever owns the pool.
    pub(crate) fn validate_store(&self) -> Result<(), Error> {
        let invalid = |msg: &str| Err(Error::InvalidConfig(msg.to_owned()));
        if matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull)
            && self.ssl_root_certs.is_empty()
        {
            return invalid("sslmode verify-ca and verify-full need a root certificate");
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if self.min_idle_connections > self.max_connections {
            return invalid("min_idle_connections must not exceed max_connections");
        }
        if !(1..=MAX_BATCH_SIZE_LIMIT).contains(&self.max_batch_size) {
            return invalid("max_batch_size must be between 1 and 100,000");
        }
        if !(1..=MAX_PENDING_REQUESTS_LIMIT).contains(&self.max_pending_requests) {
            return invalid("max_pending_requests must be between 1 and 10,000,000");
        }
        if self
            .statement_timeout
            .is_some_and(|t| t.as_millis() > i32::MAX as u128)
        {
            return invalid("statement_timeout must be at most i32::MAX milliseconds (~24 days)");
        }
        if self.checkout_timeout.is_zero() {
            return invalid("checkout_timeout must be greater than zero");
        }
        if self.health_check_period.is_zero() {
            return invalid("health_check_period must be greater than zero");
        }
        Ok(())
    }
}

impl FromStr for Config {
    type Err = Error;

    /// Parses a `postgres://` URL or a libpq `key=value` string as [`tokio_postgres::Config`]
    /// does, plus libpq's `sslmode=verify-ca|verify-full` and `sslrootcert=<path>` (the file
    /// is read here), which tokio-postgres does not know. Store and pool settings take their
    /// defaults.
    ///
    /// Also libpq's `sslrootcert=system` (see [`Config::ssl_system_roots`]; verify-full, and
    /// a weaker explicit `sslmode` is an error) and `sslcert=<path>` with `sslkey=<path>`
    /// (see [`Config::ssl_client_cert_pem`]; both or neither).
    fn from_str(s: &str) -> Result<Self, Error> {
        let (s, client_cert, client_key) = client_cert_options(s)?;
        let s = s.as_str();
        let (rest, ssl_mode, root_cert) = tls_options(s)?;
        // tokio-postgres's parse error says only "invalid connection string"; its source says
        // what is wrong, and neither echoes the input, which could hold a password.
        let pg = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            let reason = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            Error::InvalidConfig(format!("connection string: {reason}"))
        })?;
        let mut config = Self::from_pg_config(pg);
        if let Some(mode) = ssl_mode {
            config.ssl_mode = mode;
        }
        // libpq: `system` selects the platform's roots and implies verify-full; an explicitly
        // weaker mode would silently trust less than asked, so it is refused.
        let root_cert = match root_cert {
            Some(value) if value == tls::SYSTEM_ROOTS => {
                if let Some(mode) = ssl_mode.filter(|m| *m != SslMode::VerifyFull) {
                    return Err(Error::InvalidConfig(format!(
                        "sslmode {} may not be used with sslrootcert=system (use verify-full)",
                        mode.name()
                    )));
                }
                config = config.ssl_system_roots()?;
                None
            }
            other => other,
        };
        if let Some(path) = root_cert {
            let pem = std::fs::read(&path).map_err(|e| {
                Error::InvalidConfig(format!("sslrootcert {}: {e}", truncate(&path, 200)))
            })?;
            config = config.ssl_root_cert_pem(&pem)?;
        }
        match (client_cert, client_key) {
            (Some(cert), Some(key)) => {
                let read = |what: &str, path: &str| {
                    std::fs::read(path).map_err(|e| {
                        Error::InvalidConfig(format!("{what} {}: {e}", truncate(path, 200)))
                    })
                };
                config =
                    config.ssl_client_cert_pem(&read("sslcert", &cert)?, &read("sslkey", &key)?)?;
            }
            (None, None) => {}
            // libpq would look for the other in ~/.postgresql; a half-given pair is more
            // likely a mistake than a wish to use those files.
            (Some(_), None) => {
                return Err(Error::InvalidConfig(
                    "sslcert given without sslkey".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::InvalidConfig(
                    "sslkey given without sslcert".to_owned(),
                ));
            }
        }
        Ok(config)
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, for the modes tokio-postgres
/// does not parse. The string is read by tokio-postgres's own rules — a URL's query starts at the
/// first `?` after the credentials, keys and values percent-decoded; key=value pairs with quoted
/// values and backslash escapes — so text inside another parameter (a password, say) is never
/// taken for one of these two.
fn tls_options(s: &str) -> Result<(String, Option<SslMode>, Option<String>), Error> {
    let mut mode = None;
    let mut root = None;
    let rest = take_options(s, |key, value| match key {
        "sslmode" => {
            mode = Some(SslMode::parse(value).ok_or_else(|| {
                Error::InvalidConfig(format!("unknown sslmode `{}`", truncate(value, 40)))
            })?);
            Ok(true)
        }
        "sslrootcert" => {
            root = Some(value.to_owned());
            Ok(true)
        }
        _ => Ok(false),
    })?;
    Ok((rest, mode, root))
}

/// Takes libpq's `sslcert` and `sslkey` (file paths) out of a connection string, as
/// [`tls_options`] does for its two.
fn client_cert_options(s: &str) -> Result<(String, Option<String>, Option<String>), Error> {
    let mut cert = None;
    let mut key = None;
    let rest = take_options(s, |name, value| {
        let slot = match name {
            "sslcert" => &mut cert,
            "sslkey" => &mut key,
            _ => return Ok(false),
        };
        *slot = Some(value.to_owned());
        Ok(true)
    })?;
    Ok((rest, cert, key))
}

/// The connection string without the parameters `take` accepts (returns `true` for), each
/// key and value handed to `take` decoded. The rest is re-assembled for tokio-postgres.
fn take_options(
    s: &str,
    mut take: impl FnMut(&str, &str) -> Result<bool, Error>,
) -> Result<String, Error> {
    Ok(
        match ["postgres://", "postgresql://"]
            .iter()
            .find_map(|prefix| s.strip_prefix(prefix).map(|after| (prefix.len(), after)))
        {
            Some((prefix_len, after)) => {
                // Credentials end at the first `@`; the query starts at the first `?` after them.
                let credentials = after.find('@').map_or(0, |at| at + 1);
                let Some(question) = after[credentials..].find('?') else {
                    return Ok(s.to_owned());
                };
                let query_start = prefix_len + credentials + question;
                let (base, query) = (&s[..query_start], &s[query_start + 1..]);
                let decode = |part: &str| {
                    percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| {
                            Error::InvalidConfig("connection string: invalid UTF-8".into())
                        })
                };
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(&decode(key)?, &decode(value)?)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => {
                let mut kept = Vec::new();
                for (key, value) in key_value_pairs(s)? {
                    if !take(&key, &value)? {
                        kept.push(format!(
                            "{key}='{}'",
                            value.replace('\\', "\\\\").replace('\'', "\\'")
                        ));
                    }
                }
                kept.join(" ")
            }
        },
    )
}

/// The pairs of a libpq `key=value` string, by the rules tokio-postgres parses them with:
/// whitespace around `=`, values bare or single-quoted, `\` escaping the next character.
fn key_value_pairs(s: &str) -> Result<Vec<(String, String)>, Error> {
    let invalid = || Error::InvalidConfig("connection string: malformed key=value pair".into());
    let mut chars = s.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err(invalid());
            }
            return Ok(pairs);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(invalid()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(invalid());
            }
        }
        pairs.push((key, value));
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        f.debug_struct("Config")
            .field("hosts", &hosts)
            .field("ports", &self.pg.get_ports())
            .field("database", &self.pg.get_dbname())
            .field("user", &self.pg.get_user())
            .field("password", &self.pg.get_password().map(|_| "<redacted>"))
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_certs", &self.ssl_root_certs.len())
            .field("ssl_client_cert", &self.ssl_client_identity.is_some())
            .field("application_name", &self.pg.get_application_name())
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("min_idle_connections", &self.min_idle_connections)
            .field("max_connection_lifetime", &self.max_connection_lifetime)
            .field("max_connection_idle_time", &self.max_connection_idle_time)
            .field("health_check_period", &self.health_check_period)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("version_check", &self.version_check)
            .field("max_batch_size", &self.max_batch_size)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_state_bytes", &self.max_state_bytes)
            .field("row_format", &self.row_format)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url_and_keeps_defaults() {
        let c: Config = "postgres://alice:s3cret@db.example:6543/shop"
            .parse()
            .unwrap();
        assert_eq!(c.pg.get_user(), Some("alice"));
        assert_eq!(c.pg.get_dbname(), Some("shop"));
        assert_eq!(c.pg.get_ports(), &[6543]);
        // libpq's default.
        assert_eq!(c.ssl_mode, SslMode::Prefer);
        assert_eq!(c.statement_timeout, Some(DEFAULT_STATEMENT_TIMEOUT));
        assert_eq!(c.pg.get_tcp_user_timeout(), Some(&DEFAULT_NETWORK_TIMEOUT));
        assert_eq!(c.pg.get_connect_timeout(), Some(&DEFAULT_NETWORK_TIMEOUT));
        assert_eq!(c.pg.get_keepalives_idle(), DEFAULT_NETWORK_TIMEOUT);
        assert_eq!(c.row_format, RowFormat::Any);
        assert_eq!(c.get_schema(), DEFAULT_SCHEMA);
        assert_eq!(c.get_table(), DEFAULT_TABLE);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.min_idle_connections, 0);
        assert_eq!(c.max_connection_lifetime, Duration::from_secs(3600));
        assert_eq!(c.max_connection_idle_time, Duration::from_secs(1800));
        assert_eq!(c.health_check_period, Duration::from_secs(60));
        assert_eq!(c.version_check, VersionCheck::Sequential);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn parses_key_value_and_multi_host() {
        let c: Config = "host=a,b port=5432,5433 user=u dbname=d target_session_attrs=read-write"
            .parse()
            .unwrap();
        assert_eq!(c.pg.get_hosts().len(), 2);
        assert_eq!(c.pg.get_ports(), &[5432, 5433]);
    }

    #[test]
    fn bad_connection_string_is_typed_and_does_not_echo_password() {
        let err = "postgres://u:hunter2@h:notaport/d"
            .parse::<Config>()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn libpq_ssl_options_are_taken_out_of_connection_strings() {
        let url = "postgres://u:p@h/d?application_name=a&sslmode=verify-full&sslrootcert=/x/ca.pem&connect_timeout=3";
        let (rest, mode, root) = tls_options(url).unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@h/d?application_name=a&connect_timeout=3"
        );
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root.as_deref(), Some("/x/ca.pem"));
        let kv = "host=h password='a  b' sslmode=require user=u";
        let (rest, mode, root) = tls_options(kv).unwrap();
        assert_eq!(mode, Some(SslMode::Require));
        assert_eq!(root, None);
        assert!(
            rest.contains("password='a  b'"),
            "quoted values untouched: {rest}"
        );
        assert!(!rest.contains("sslmode"));
        let parsed: Config = kv.parse().unwrap();
        assert_eq!(parsed.get_ssl_mode(), SslMode::Require);
        assert!("host=h user=u sslmode=bogus".parse::<Config>().is_err());
        let plain: Config = "postgres://u@h/d".parse().unwrap();
        assert_eq!(plain.get_ssl_mode(), SslMode::Prefer);
        let disabled: Config = "postgres://u@h/d?sslmode=disable".parse().unwrap();
        assert_eq!(disabled.get_ssl_mode(), SslMode::Disable);
        assert_eq!(
            Config::new("h", 1, "u", "", "d").get_ssl_mode(),
            SslMode::Disable
        );
        let explicit: Config = "host=h user=u tcp_user_timeout=3 connect_timeout=4"
            .parse()
            .unwrap();
        assert_eq!(
            explicit.pg.get_tcp_user_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(
            explicit.pg.get_connect_timeout(),
            Some(&Duration::from_secs(4))
        );
    }

    #[test]
    fn debug_redacts_password() {
        let c = Config::new("h", 5432, "u", "hunter2", "d");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
    }

    #[test]
    fn identifiers_are_validated() {
        let c = Config::new("h", 5432, "u", "", "d");
        for bad in [
            "",
            "x\"; DROP TABLE y; --",
            "a.b",
            "with space",
            "1abc",
            &"a".repeat(64),
            "a\0b",
        ] {
            let err = c.clone().table(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput(InvalidInput::InvalidIdentifier { kind: "table", .. })
                ),
                "{bad:?}: {err:?}"
            );
            assert!(c.clone().schema(bad).is_err());
        }
        for good in ["states_store", "Tenant_1", "_x$", &"a".repeat(63), "état"] {
            assert!(c.clone().table(good).is_ok(), "{good}");
        }
        assert_eq!(
            Identifier::parse("t", "MyTable").unwrap().quoted(),
            "\"MyTable\""
        );
    }

    #[test]
    fn validate_rejects_what_would_panic_in_bb8() {
        let base = Config::new("h", 5432, "u", "", "d");
        assert!(base.clone().max_connections(0).validate().is_err());
        assert!(base.clone().min_idle_connections(5).validate().is_err());
        assert!(
            base.clone()
                .checkout_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            base.clone()
                .health_check_period(Duration::ZERO)
                .validate()
                .is_err()
        );
        let no_host: Config = "user=u dbname=d".parse().unwrap();
        assert!(matches!(no_host.validate(), Err(Error::InvalidConfig(_))));
    }

    #[test]
    #[cfg(feature = "system-roots")]
    fn sslrootcert_system_means_verify_full_with_the_platform_roots() {
        for s in [
            "postgres://u@h/d?sslrootcert=system",
            "postgres://u@h/d?sslmode=verify-full&sslrootcert=system",
            "host=h user=u sslrootcert=system",
        ] {
            let c: Config = s.parse().unwrap();
            assert_eq!(c.get_ssl_mode(), SslMode::VerifyFull, "{s}");
            assert!(!c.ssl_root_certs.is_empty(), "{s}: the platform has roots");
            assert!(c.validate().is_ok());
        }
        let built = Config::new("h", 5432, "u", "", "d")
            .ssl_system_roots()
            .unwrap();
        assert_eq!(built.get_ssl_mode(), SslMode::VerifyFull);
        assert!(!built.ssl_root_certs.is_empty());
    }

    #[test]
    fn sslrootcert_system_refuses_weaker_modes() {
        for mode in ["disable", "prefer", "require", "verify-ca"] {
            let err = format!("postgres://u@h/d?sslmode={mode}&sslrootcert=system")
                .parse::<Config>()
                .unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
            assert!(err.to_string().contains("verify-full"), "{err}");
        }
    }

    #[test]
    fn client_certificate_options_are_taken_out_and_must_come_in_pairs() {
        let url = "postgres://u@h/d?sslcert=/x/c.crt&application_name=a&sslkey=/x/c.key";
        let (rest, cert, key) = client_cert_options(url).unwrap();
        assert_eq!(rest, "postgres://u@h/d?application_name=a");
        assert_eq!(cert.as_deref(), Some("/x/c.crt"));
        assert_eq!(key.as_deref(), Some("/x/c.key"));
        let (rest, cert, key) = client_cert_options("host=h sslkey='/a b/k' user=u").unwrap();
        assert_eq!(rest, "host='h' user='u'");
        assert_eq!(cert, None);
        assert_eq!(key.as_deref(), Some("/a b/k"));

        for half in [
            "postgres://u@h/d?sslcert=/x/c.crt",
            "postgres://u@h/d?sslkey=/x/c.key",
        ] {
            assert!(matches!(
                half.parse::<Config>(),
                Err(Error::InvalidConfig(_))
            ));
        }
        let missing = "host=h user=u sslcert=/nonexistent/c.crt sslkey=/nonexistent/c.key";
        let err = missing.parse::<Config>().unwrap_err();
        assert!(err.to_string().contains("sslcert"), "{err}");
    }

    #[test]
    fn client_certificate_pem_is_checked_and_never_printed() {
        let c = Config::new("h", 5432, "u", "", "d");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["u".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let with = c
            .clone()
            .ssl_client_cert_pem(cert.as_bytes(), key.serialize_pem().as_bytes())
            .unwrap();
        let dbg = format!("{with:?}");
        assert!(dbg.contains("ssl_client_cert: true"), "{dbg}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");

        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let err = c
            .clone()
            .ssl_client_cert_pem(cert.as_bytes(), other_key.as_bytes())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        let not_a_key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        for key in [other_key.as_str(), not_a_key, ""] {
            if let Err(err) = c
                .clone()
                .ssl_client_cert_pem(cert.as_bytes(), key.as_bytes())
            {
                let text = format!("{err} {err:?}");
                assert!(
                    !text.contains("c2VjcmV0") && !text.contains("PRIVATE"),
                    "{text}"
                );
            }
        }
        assert!(c.clone().ssl_client_cert_pem(b"", b"").is_err());
        assert!(c.clone().ssl_client_cert_pem(cert.as_bytes(), b"").is_err());
        assert!(format!("{c:?}").contains("ssl_client_cert: false"));
    }
}
