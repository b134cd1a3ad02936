//! The connection pool behind a store: an owned bb8 pool built from a [`Config`], or a caller's
//! pool, behind one checkout that reports *why* no connection could be had.
//!
//! - [`client`]: a checked-out connection and how statements run on it (timeouts, cancels,
//!   the per-connection statement cache, or unnamed statements each in its own transaction
//!   behind a transaction-mode pooler);
//! - [`cancel`]: cancel requests that a pooler in between forwards;
//! - [`conn`]: what the store needs of a connection, for owned and borrowed pools alike;
//! - [`connect_errors`]: why connecting fails, kept from bb8's error sink;
//! - [`prepared`]: the statements prepared on one connection.

mod cancel;
mod client;
mod conn;
mod connect_errors;
mod prepared;

use std::sync::Arc;
use std::time::Duration;

use bb8::RunError;
use bb8_postgres::PostgresConnectionManager;
use tokio::time::Instant;

use self::cancel::Canceller;
pub(crate) use self::client::PooledClient;
use self::client::Sending;
use self::conn::{Conn, OwnedManager, Source};
use self::connect_errors::ConnectErrors;
use crate::config::{Checked, Config};
use crate::error::{Error, PgError};
use crate::tls::PoolTls;

/// Where a store's connections come from.
#[derive(Clone)]
pub(crate) struct Connections {
    source: Arc<dyn Source>,
    /// Connection errors of an owned pool; a borrowed pool's errors go to its own sink.
    errors: Option<ConnectErrors>,
    checkout_timeout: Duration,
    sending: Sending,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("owned", &self.errors.is_some())
            .field("checkout_timeout", &self.checkout_timeout)
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// Builds an owned pool from `config`. Opens no connection: the first checkout does (or the
    /// pool's housekeeping, when `min_idle_connections > 0`). Must run inside a Tokio runtime.
    pub(crate) fn build(checked: &Checked) -> Self {
        let config = &checked.config;
        let errors = ConnectErrors::new(config.transaction_pooling);
        let mut pg = config.pg.clone();
        let sending = if config.transaction_pooling {
            // A pooler refuses startup `options`, and a session setting would leak to the other
            // clients of a shared server connection: the timeout goes with each statement.
            Sending::per_transaction(config.statement_timeout)
        } else {
            if let Some(timeout) = config.statement_timeout {
                // Set at connection start: no extra round trip, and it holds for every statement.
                let options = format!(
                    "{} -c statement_timeout={}",
                    pg.get_options().unwrap_or_default(),
                    timeout.as_millis().max(1)
                );
                pg.options(options.trim_start());
            }
            Sending::per_session(config.statement_timeout)
        };
        pg.ssl_mode(config.ssl_mode.negotiation());
        let canceller = Canceller::new(&pg, checked.tls.clone());
        let source: Arc<dyn Source> = match checked.tls.clone() {
            None => Arc::new(owned_pool(
                config,
                &errors,
                pg,
                tokio_postgres::NoTls,
                canceller,
            )),
            Some(tls) => Arc::new(owned_pool(config, &errors, pg, tls, canceller)),
        };
        Connections {
            source,
            errors: Some(errors),
            checkout_timeout: config.checkout_timeout,
            sending,
        }
    }

    /// Uses a caller's pool; the caller keeps ownership and its settings.
    ///
    /// The server-side statement timeout is the pool's business (its connection options); the
    /// client-side bound of `statement_timeout` still applies.
    pub(crate) fn borrow<T: PoolTls>(
        pool: bb8::Pool<PostgresConnectionManager<T>>,
        statement_timeout: Option<Duration>,
    ) -> Self {
        Connections {
            checkout_timeout: pool.config().connection_timeout,
            source: Arc::new(pool),
            errors: None,
            sending: Sending::per_session(statement_timeout),
        }
    }

    /// Checks out a connection.
    ///
    /// # Errors
    /// - [`Error::Unavailable`] as soon as a connection attempt fails for a reason waiting won't
    ///   fix (authentication, unknown database), or at the timeout when attempts failed meanwhile;
    /// - [`Error::InvalidConfig`] at once when a pooler refused the startup `options` (see
    ///   [`ConnectErrors::explain`]);
    /// - [`Error::PoolTimeout`] at the timeout when no attempt failed (all connections busy).
    pub(crate) async fn get(&self) -> Result<PooledClient, Error> {
        let started = Instant::now();
        let fatal = async {
            match &self.errors {
                Some(errors) => errors.fatal_since(started).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = tokio::time::timeout(self.checkout_timeout, self.live()) => match result.unwrap_or(Err(RunError::TimedOut)) {
                Ok(conn) => Ok(PooledClient::new(conn, self.sending.clone())),
                Err(RunError::User(source)) => Err(self.explain(source.into())),
                Err(RunError::TimedOut) => Err(match self.errors.as_ref().and_then(|e| e.latest_since(started)) {
                    Some(source) => self.explain(source),
                    None => Error::PoolTimeout { timeout: self.checkout_timeout },
                }),
            },
            source = fatal => Err(self.explain(source)),
        }
    }
}

impl Connections {
    /// What a failed connection attempt is reported as. A borrowed pool's connection settings
    /// are its owner's, so its errors are passed on as they are.
    fn explain(&self, source: PgError) -> Error {
        match &self.errors {
            Some(errors) => errors.explain(source),
            None => Error::unavailable(source),
        }
    }

    /// A pooled connection that is not known to be closed. bb8 checks for broken connections
    /// only when they come back; an idle one whose server went away (a restart) would fail the
    /// next statement. `is_closed` costs no round trip, so closed ones are discarded here.
    async fn live(&self) -> Result<Box<dyn Conn>, RunError<tokio_postgres::Error>> {
        loop {
            let conn = self.source.get().await?;
            if !conn.client().is_closed() {
                return Ok(conn);
            }
            conn.mark_broken();
        }
    }
}

/// The owned bb8 pool for `config`, over connections made with `tls`.
fn owned_pool<T: PoolTls>(
    config: &Config,
    errors: &ConnectErrors,
    pg: tokio_postgres::Config,
    tls: T,
    canceller: Canceller,
) -> bb8::Pool<OwnedManager<T>> {
    bb8::Pool::builder()
        .max_size(config.max_connections)
        .min_idle(Some(config.min_idle_connections).filter(|&n| n > 0))
        .max_lifetime(config.max_connection_lifetime)
        .idle_timeout(config.max_connection_idle_time)
        .reaper_rate(config.health_check_period)
        .connection_timeout(config.checkout_timeout)
        // A round trip per checkout would double the latency of every write; a dead
        // connection is caught by `Client::is_closed` instead (on checkout and return).
        .test_on_check_out(false)
        .error_sink(Box::new(errors.clone()))
        .build_unchecked(OwnedManager::new(
            pg,
            tls,
            canceller,
            !config.transaction_pooling,
        ))
}
