//! Why connecting fails: bb8 reports connection failures only to its error sink (its `get`
//! only ever says "timed out"), so the last one is kept here to explain a failed checkout.

use std::sync::{Arc, Mutex};

use bb8::ErrorSink;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, PgError};

/// bb8's error sink for an owned pool: bb8 reports connection failures only here (its `get`
/// only ever says "timed out"), so the last one is kept to explain a failed checkout.
#[derive(Clone)]
pub(super) struct ConnectErrors {
    last: Arc<Mutex<Option<(Instant, PgError)>>>,
    fatal: Arc<Notify>,
    /// `Config::transaction_pooling`: whether the `options` a pooler refused were the store's
    /// own or the connection string's.
    transaction_pooling: bool,
}

impl std::fmt::Debug for ConnectErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectErrors")
    }
}

impl ConnectErrors {
    pub(super) fn new(transaction_pooling: bool) -> Self {
        ConnectErrors {
            last: Arc::default(),
            fatal: Arc::default(),
            transaction_pooling,
        }
    }

    /// What a failed connection attempt is reported as: [`Error::Unavailable`] with the
    /// server's reason; but [`Error::InvalidConfig`] saying what to change when a pooler refused
    /// the startup parameter `options` (pgBouncer does, in every pool mode), which carries the
    /// statement timeout unless `Config::transaction_pooling` is on.
    pub(super) fn explain(&self, source: PgError) -> Error {
        if !refuses_options(source.driver()) {
            return Error::unavailable(source);
        }
        let fix = if self.transaction_pooling {
            "the connection string sets `options`: remove it (the store sends none itself with \
             Config::transaction_pooling)"
        } else {
            "set Config::transaction_pooling(true), which sends none and sets the statement \
             timeout per statement"
        };
        Error::InvalidConfig(format!(
            "the server refused the startup parameter `options` ({source}): a connection \
             pooler such as pgBouncer is in front of it; {fix}"
        ))
    }

    fn last(&self) -> Option<(Instant, PgError)> {
        // A poisoned lock only means another thread panicked mid-assignment of an Option;
        // the value is still a valid Option.
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(super) fn latest_since(&self, since: Instant) -> Option<PgError> {
        self.last()
            .filter(|(at, _)| *at >= since)
            .map(|(_, error)| error)
    }

    /// Resolves with the first non-retryable connection error recorded at or after `since`.
    pub(super) async fn fatal_since(&self, since: Instant) -> PgError {
        loop {
            let notified = self.fatal.notified();
            tokio::pin!(notified);
            // Register before checking, so an error recorded in between is not missed.
            notified.as_mut().enable();
            if let Some(error) = self.latest_since(since).filter(|e| is_fatal(e.driver())) {
                return error;
            }
            notified.await;
        }
    }
}

/// Connection errors that retrying within the checkout timeout cannot fix.
fn is_fatal(error: &tokio_postgres::Error) -> bool {
    let refused = error.code().is_some_and(|code| {
        let code = code.code();
        // 28: invalid authorization (wrong password, no pg_hba entry); 3D000: no such database.
        code.starts_with("28") || code == "3D000"
    });
    refused || refuses_options(error) || is_bad_certificate(error)
}

/// pgBouncer's answer to a startup packet with `options` it was not told to ignore
/// (`ignore_startup_parameters`): "unsupported startup parameter: options" (08P01, FATAL).
fn refuses_options(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.message()
            .strip_prefix("unsupported startup parameter")
            .is_some_and(|rest| rest.contains("options"))
    })
}

/// A certificate that does not verify will not verify on the next try either. rustls's error
/// reaches us wrapped in an `io::Error`, whose `source()` skips it, so `get_ref` is checked too.
fn is_bad_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        let wrapped = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(current), wrapped].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(_)) = candidate.downcast_ref() {
                return true;
            }
        }
        cause = current.source();
    }
    false
}

impl ErrorSink<tokio_postgres::Error> for ConnectErrors {
    fn sink(&self, error: tokio_postgres::Error) {
        let error = PgError::new(error);
        tracing::warn!(%error, "durable store connection attempt failed");
        let fatal = is_fatal(error.driver());
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Instant::now(), error));
        if fatal {
            self.fatal.notify_waiters();
        }
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}
