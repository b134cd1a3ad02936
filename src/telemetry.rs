//! What the store reports about itself: one set of outcome names shared by metrics labels and
//! tracing fields, the gauge of admitted requests, and the helper that runs a handler's work
//! inside its span.

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;

use crate::error::Error;
use crate::messages::WriteOutcome;

/// A successful result that has a name of its own in metrics and traces.
pub(crate) trait Outcome {
    /// The name; errors are named by [`outcome_name`].
    fn name(&self) -> &'static str;
}

impl Outcome for WriteOutcome {
    fn name(&self) -> &'static str {
        match self {
            WriteOutcome::Written => "written",
            WriteOutcome::AlreadyStored => "already_stored",
        }
    }
}

impl Outcome for () {
    fn name(&self) -> &'static str {
        "ok"
    }
}

/// A count (e.g. of purged tombstones) is recorded as a plain success.
impl Outcome for u64 {
    fn name(&self) -> &'static str {
        "ok"
    }
}

/// The name of a result, the same in metrics labels and tracing fields: the success's own
/// name, `conflict` for a version conflict, `error` for any other error.
pub(crate) fn outcome_name<T: Outcome>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(value) => value.name(),
        Err(Error::VersionConflict { .. }) => "conflict",
        Err(_) => "error",
    }
}

/// Runs `work` inside `span` and records its outcome on the span (field `outcome`); an error is
/// logged at debug level, without payloads (no error of the crate carries one).
pub(crate) async fn instrumented<T: Outcome>(
    span: tracing::Span,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let record = span.clone();
    let result = work.instrument(span.clone()).await;
    record.record("outcome", outcome_name(&result));
    if let Err(error) = &result {
        span.in_scope(|| tracing::debug!(%error, "durable store operation failed"));
    }
    result
}

/// The gauge of one kind. Literal labels make a static key: no allocation per request.
pub(crate) fn pending_requests(kind: &'static str) -> metrics::Gauge {
    match kind {
        "write" => metrics::gauge!("durablestore_pending_requests", "kind" => "write"),
        "read" => metrics::gauge!("durablestore_pending_requests", "kind" => "read"),
        other => metrics::gauge!("durablestore_pending_requests", "kind" => other),
    }
}

/// Counts one answered write in `durablestore_writes_total{outcome}`, with a static key per
/// outcome.
pub(crate) fn count_write(outcome: &'static str) {
    match outcome {
        "written" => metrics::counter!("durablestore_writes_total", "outcome" => "written"),
        "already_stored" => {
            metrics::counter!("durablestore_writes_total", "outcome" => "already_stored")
        }
        "conflict" => metrics::counter!("durablestore_writes_total", "outcome" => "conflict"),
        other => metrics::counter!("durablestore_writes_total", "outcome" => other),
    }
    .increment(1);
}

/// The metrics of answered writes, looked up once for a batch's answers, with one clock read:
/// with a recorder installed, every lookup hashes its key and locks a shard of the recorder's
/// registry, which per write cost more than the rest of its answer (BENCHMARKS.md).
pub(crate) struct WriteMeter {
    now: Instant,
    seconds: metrics::Histogram,
    written: metrics::Counter,
}

impl WriteMeter {
    /// The meter of answers given now.
    pub(crate) fn now() -> Self {
        WriteMeter {
            now: Instant::now(),
            seconds: metrics::histogram!("durablestore_write_seconds"),
            written: metrics::counter!("durablestore_writes_total", "outcome" => "written"),
        }
    }

    /// Records one answered write: its outcome (as [`outcome_name`] names it) in
    /// `durablestore_writes_total`, and in `durablestore_write_seconds` the time since it was
    /// `queued`.
    pub(crate) fn record(&self, outcome: &'static str, queued: Instant) {
        match outcome {
            "written" => self.written.increment(1),
            other => count_write(other),
        }
        self.seconds
            .record(self.now.saturating_duration_since(queued));
    }
}
