//! Connection, pool and store settings.
//!
//! A [`Config`] is plain data: its setters never fail, and it is checked once, when a store is
//! built ([`checked`]), so that one error lists every problem. Connection strings are parsed
//! in [`conn_string`]; every default is in [`defaults`]; the TLS settings are in [`tls`]; the
//! version rule and the Citus setting are [`version_check`] and [`distribution`]; `Debug`
//! without secrets is [`debug`].

mod checked;
mod conn_string;
mod debug;
mod defaults;
mod distribution;
mod feed;
mod tls;
mod version_check;

use std::time::Duration;

pub(crate) use self::checked::{Checked, PoolOwner};
pub use self::distribution::Distribution;
pub(crate) use self::tls::{ClientPem, Roots};
pub use self::version_check::VersionCheck;
use crate::error::Error;
use crate::state::RowFormat;
use crate::tls::SslMode;

/// Settings of a [`DurableStoreActor`](crate::DurableStoreActor): where the database is, how
/// the pool behaves, and which table holds the states.
///
/// Connection settings are a [`tokio_postgres::Config`], so every connection string that
/// tokio-postgres accepts works here: `postgres://user:pass@host:5432/db?sslmode=disable`, a
/// libpq `key=value` string, multiple hosts with `target_session_attrs=read-write`. The pool and
/// store settings are set with the builder methods, each of which documents its default (all
/// defaults are also constants, such as [`Config::DEFAULT_MAX_CONNECTIONS`]).
///
/// Setters never fail: the settings are checked together when a store is built
/// ([`DurableStoreActor::new`](crate::DurableStoreActor::new)), which reports every problem
/// found in one [`Error::InvalidConfig`]. A setting that can be off takes an `Option`, `None`
/// meaning off.
///
/// `Debug` never prints the password or a private key.
///
/// ```
/// use std::time::Duration;
/// use durablestore_postgres::Config;
///
/// let config: Config = "postgres://postgres@127.0.0.1:5432/postgres".parse()?;
/// let config = config
///     .schema("billing")
///     .max_connections(8)
///     .checkout_timeout(Duration::from_secs(2))
///     .max_connection_lifetime(None);
/// assert_eq!(config.get_schema(), "billing");
/// # Ok::<(), durablestore_postgres::Error>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) max_connections: u32,
    pub(crate) min_idle_connections: u32,
    pub(crate) max_connection_lifetime: Option<Duration>,
    pub(crate) max_connection_idle_time: Option<Duration>,
    pub(crate) health_check_period: Duration,
    pub(crate) checkout_timeout: Duration,
    pub(crate) version_check: VersionCheck,
    pub(crate) max_batch_size: usize,
    pub(crate) max_pending_requests: usize,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) transaction_pooling: bool,
    pub(crate) distribution: Distribution,
    pub(crate) max_state_bytes: usize,
    pub(crate) row_format: RowFormat,
    pub(crate) ssl_mode: SslMode,
    pub(crate) ssl_roots: Roots,
    pub(crate) ssl_client_pem: Option<ClientPem>,
    pub(crate) change_feed: bool,
    pub(crate) change_poll_interval: Duration,
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
    /// application name [`Config::DEFAULT_APPLICATION_NAME`]; a connect timeout and a TCP user
    /// timeout of [`Config::DEFAULT_NETWORK_TIMEOUT`], and TCP keepalives after that long idle
    /// instead of the driver's 2 hours, so a host that vanishes without resetting its
    /// connections is noticed within seconds. Its `sslmode` (`disable`, `prefer`, which is
    /// tokio-postgres's and libpq's default, or `require`) becomes [`Config::ssl_mode`].
    pub fn from_pg_config(mut pg: tokio_postgres::Config) -> Self {
        if pg.get_application_name().is_none() {
            pg.application_name(Self::DEFAULT_APPLICATION_NAME);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Self::DEFAULT_NETWORK_TIMEOUT);
        }
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(Self::DEFAULT_NETWORK_TIMEOUT);
        }
        if pg.get_keepalives_idle() == defaults::DRIVER_KEEPALIVES_IDLE {
            pg.keepalives_idle(Self::DEFAULT_NETWORK_TIMEOUT);
        }
        let ssl_mode = match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Config {
            pg,
            schema: Self::DEFAULT_SCHEMA.to_owned(),
            table: Self::DEFAULT_TABLE.to_owned(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            min_idle_connections: Self::DEFAULT_MIN_IDLE_CONNECTIONS,
            max_connection_lifetime: Some(Self::DEFAULT_MAX_CONNECTION_LIFETIME),
            max_connection_idle_time: Some(Self::DEFAULT_MAX_CONNECTION_IDLE_TIME),
            health_check_period: Self::DEFAULT_HEALTH_CHECK_PERIOD,
            checkout_timeout: Self::DEFAULT_CHECKOUT_TIMEOUT,
            version_check: VersionCheck::default(),
            max_batch_size: Self::DEFAULT_MAX_BATCH_SIZE,
            max_pending_requests: Self::DEFAULT_MAX_PENDING_REQUESTS,
            statement_timeout: Some(Self::DEFAULT_STATEMENT_TIMEOUT),
            transaction_pooling: false,
            distribution: Distribution::default(),
            max_state_bytes: Self::DEFAULT_MAX_STATE_BYTES,
            row_format: RowFormat::default(),
            ssl_mode,
            ssl_roots: Roots::None,
            ssl_client_pem: None,
            change_feed: false,
            change_poll_interval: Self::DEFAULT_CHANGE_POLL_INTERVAL,
        }
    }

    /// Parses the `DATABASE_URL` environment variable (see [`Config::from_str`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the variable is unset or does not parse.
    ///
    /// [`Config::from_str`]: std::str::FromStr::from_str
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
    /// Defaults to [`Config::DEFAULT_SCHEMA`] (`public`).
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table holding the states. A letter or `_`, then letters, digits, `_` or `$`, at most
    /// 63 bytes; it is always quoted in SQL, so it is case-sensitive. Names with quotes, dots
    /// or spaces are rejected (when the store is built) rather than escaped.
    ///
    /// Defaults to [`Config::DEFAULT_TABLE`] (`states_store`).
    #[must_use]
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Maximum number of pooled connections, and so of statements in flight at once.
    ///
    /// Defaults to [`Config::DEFAULT_MAX_CONNECTIONS`] (4).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Number of idle connections the pool keeps open.
    ///
    /// Defaults to [`Config::DEFAULT_MIN_IDLE_CONNECTIONS`] (0).
    #[must_use]
    pub fn min_idle_connections(mut self, min: u32) -> Self {
        self.min_idle_connections = min;
        self
    }

    /// Age after which a connection is closed instead of returning to the pool; `None` keeps
    /// connections forever.
    ///
    /// Defaults to [`Config::DEFAULT_MAX_CONNECTION_LIFETIME`] (1 hour).
    #[must_use]
    pub fn max_connection_lifetime(mut self, lifetime: impl Into<Option<Duration>>) -> Self {
        self.max_connection_lifetime = lifetime.into();
        self
    }

    /// Time after which an idle connection beyond the minimum is closed; `None` never closes
    /// idle connections.
    ///
    /// Defaults to [`Config::DEFAULT_MAX_CONNECTION_IDLE_TIME`] (30 minutes).
    #[must_use]
    pub fn max_connection_idle_time(mut self, idle: impl Into<Option<Duration>>) -> Self {
        self.max_connection_idle_time = idle.into();
        self
    }

    /// Period of the pool's housekeeping: idle and expired connections are closed, and missing
    /// idle connections opened, this often. A broken connection is detected without a round trip
    /// whenever it is checked out or returned, so it is never handed to a statement.
    ///
    /// Defaults to [`Config::DEFAULT_HEALTH_CHECK_PERIOD`] (1 minute).
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
    /// Defaults to [`Config::DEFAULT_CHECKOUT_TIMEOUT`] (5 seconds).
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
    /// and one commit; `1` turns group commit off. At most 100,000.
    ///
    /// Defaults to [`Config::DEFAULT_MAX_BATCH_SIZE`] (256).
    #[must_use]
    pub fn max_batch_size(mut self, max: usize) -> Self {
        self.max_batch_size = max;
        self
    }

    /// How many writes (and, separately, reads) may queue for a connection. Beyond it, senders
    /// wait for room: memory stays bounded however fast requests arrive. At most 10,000,000.
    ///
    /// Defaults to [`Config::DEFAULT_MAX_PENDING_REQUESTS`] (10,000).
    #[must_use]
    pub fn max_pending_requests(mut self, max: usize) -> Self {
        self.max_pending_requests = max;
        self
    }

    /// The longest a statement may run; `None` turns the bound off. The server cancels a
    /// statement then (`statement_timeout` is set on each connection of an owned pool, or on
    /// each statement with [`transaction_pooling`](Config::transaction_pooling)), and the
    /// client gives up one second later in case the server cannot even do that (a frozen or
    /// partitioned server): it then sends a cancel request (over TLS when the connection uses
    /// TLS) and never reuses the connection. Either way the call fails with
    /// [`Error::Timeout`], whose outcome is unknown. Statements of a batch share the bound.
    /// Without a bound a statement may wait as long as the server lets it (e.g. on a lock), and
    /// a frozen server hangs it.
    ///
    /// Defaults to [`Config::DEFAULT_STATEMENT_TIMEOUT`] (30 seconds).
    #[must_use]
    pub fn statement_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.statement_timeout = timeout.into();
        self
    }

    /// Makes the store work behind a connection pooler in transaction mode, such as pgBouncer
    /// with `pool_mode = transaction`, where each transaction of a connection may run on
    /// another server connection, shared with other clients, and the startup parameter
    /// `options` is refused. When on, for the pool the store builds:
    ///
    /// - statements are sent unnamed (parsed on every call, still one round trip) instead of
    ///   being prepared once per connection: a prepared statement lives on one server
    ///   connection, which the next transaction may not get;
    /// - no startup `options` are sent, so the [`statement_timeout`](Config::statement_timeout)
    ///   is set for each statement instead: `BEGIN; SET LOCAL statement_timeout = …`, the
    ///   statement and `COMMIT` go out together (pipelined: one round trip), and nothing stays
    ///   set on a server connection other clients share. With `statement_timeout(None)` each
    ///   statement goes out alone. The client-side bound and cancel work as without a pooler
    ///   (pgBouncer forwards cancel requests).
    ///
    /// Without it, a pooler that refuses `options` (pgBouncer does) or loses the store's
    /// prepared statements fails calls with an [`Error::InvalidConfig`] that names this
    /// setting. A store on a caller's pool ([`with_pool`](crate::DurableStoreActor::with_pool))
    /// always sends unnamed statements, and leaves the server-side timeout to the pool's
    /// connection settings, whatever this says.
    ///
    /// Defaults to false.
    #[must_use]
    pub fn transaction_pooling(mut self, on: bool) -> Self {
        self.transaction_pooling = on;
        self
    }

    /// Whether the table is distributed by Citus, which decides how batches of writes are sent.
    ///
    /// Citus routes a statement on one `persistence_id` to its shard, and splits a multi-row
    /// `VALUES` list by shard, but pulls the rows of the single-server statement (an
    /// `INSERT … SELECT` from `UNNEST` arrays) through the coordinator. With
    /// [`Distribution::Citus`] a batch is one multi-row `INSERT … ON CONFLICT DO UPDATE …
    /// WHERE` guarded by the version rule, in a transaction, and every guarantee of
    /// [`VersionCheck`] and group commit holds as on one server. A batch of reads is grouped by
    /// shard (the coordinator says which shard holds each id), one single-shard read per shard,
    /// pipelined. Lone writes and lone reads are the same statements on both.
    ///
    /// Where the `citus` extension is installed, `CreateSchema` also distributes the table by
    /// `persistence_id` (`resources/citus.sql`), unless this is
    /// [`Distribution::SingleServer`].
    ///
    /// Defaults to [`Distribution::Detect`]: the store asks the server whether the `citus`
    /// extension is installed, once, before its first batch.
    #[must_use]
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    /// The largest encoded state (`state_payload`) a write accepts; larger ones fail with
    /// [`InvalidInput::StateTooLarge`](crate::InvalidInput::StateTooLarge) before reaching the
    /// database.
    ///
    /// Defaults to [`Config::DEFAULT_MAX_STATE_BYTES`] (10 MiB).
    #[must_use]
    pub fn max_state_bytes(mut self, max: usize) -> Self {
        self.max_state_bytes = max;
        self
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

    /// The `application_name` reported to the server (visible in `pg_stat_activity`).
    ///
    /// Defaults to [`Config::DEFAULT_APPLICATION_NAME`].
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
        &self.schema
    }

    /// The table name, unquoted.
    pub fn get_table(&self) -> &str {
        &self.table
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

    /// Whether the table is taken to be distributed by Citus.
    pub fn get_distribution(&self) -> Distribution {
        self.distribution
    }
}
