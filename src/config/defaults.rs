//! Every default of a [`Config`], in one place. Each setter's documentation names its default.

use std::time::Duration;

use super::Config;

impl Config {
    /// Default schema holding the table: `public`.
    pub const DEFAULT_SCHEMA: &'static str = "public";
    /// Default table name: `states_store`, as in eGo's DDL.
    pub const DEFAULT_TABLE: &'static str = "states_store";
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
    pub const DEFAULT_APPLICATION_NAME: &'static str = "durablestore-postgres";
    /// Default longest time a statement may run: 30 seconds (ADO.NET's command timeout).
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default TCP user timeout (how long sent data may stay unacknowledged before the
    /// connection is closed), connect timeout and TCP keepalive idle time, when the connection
    /// settings give none: 10 seconds.
    pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default time a waiting change stream goes without asking for changes when no
    /// notification wakes it: 500 ms.
    pub const DEFAULT_CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(500);
}

/// tokio-postgres's keepalive idle time when none is configured (2 hours): replaced by
/// [`Config::DEFAULT_NETWORK_TIMEOUT`] so an idle connection to a vanished host is noticed in
/// seconds.
pub(super) const DRIVER_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
