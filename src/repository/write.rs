//! The write path: a batch split into rounds, each round one statement in one lock order, each
//! row answered by the version rule.
//!
//! What can go wrong between writers, and what this path does about it:
//! - **Deadlocks.** Two statements that lock shared rows in different orders deadlock. Every
//!   round is sent in one global order (by `persistence_id`), so two batches of this crate lock
//!   their common rows in the same order; a statement that still fails with a deadlock or a
//!   serialization failure (40P01, 40001: another client, Citus' distributed detector) rolled
//!   back whole, and is sent again after a jittered pause ([`RETRIES`] times at most).
//! - **One bad row.** A statement fails as a whole; unless the error cannot be one row's fault
//!   ([`one_row_can_cause`]), its rows are written one by one so the others land.
//! - **A refusal that a concurrent commit explains.** A checked row not written is judged by a
//!   fresh read. If that read says the rule now allows the write (the version it builds on was
//!   committed after the statement's snapshot was taken), the row is sent again
//!   ([`RESENDS`] times at most); only a write refused with nothing in its way is
//!   [`Error::Suppressed`].

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::fence::{FenceState, WriteRow, any_fenced, by_registration, fenced_out, fences_of};
use super::{Repository, Write, read_row};
use crate::config::VersionCheck;
use crate::error::Error;
use crate::messages::WriteOutcome;
use crate::pool::PooledClient;
use crate::queue::Pending;
use crate::sql::{MAX_VALUES_ROWS, Stmt};
use crate::state::StateRow;
use crate::telemetry::WriteMeter;
use crate::version::{self, Verdict};

/// How many times a statement that failed with a deadlock or a serialization failure is sent
/// again before its error is the answer.
pub(super) const RETRIES: u32 = 8;

/// How many times a row that a fresh read says the rule now allows is sent again before it is
/// taken as suppressed.
pub(super) const RESENDS: u32 = 3;

impl Repository {
    /// Runs a batch of writes and answers each.
    pub(crate) async fn write_batch(&self, batch: Vec<Pending<Write>>) {
        metrics::histogram!("durablestore_write_batch_size").record(batch.len() as f64);
        let client = match self.checkout().await {
            Ok(client) => client,
            Err(error) => return answer_all(batch, &error),
        };
        // Multi-row `VALUES` statements (Citus) carry a bounded number of rows.
        // A lone write takes the single-row statements either way: no need to ask.
        let values = if batch.len() > 1 {
            match self.on_citus(&client).await {
                Ok(values) => values,
                Err(error) => return answer_all(batch, &error),
            }
        } else {
            false
        };
        let limit = if values { MAX_VALUES_ROWS } else { usize::MAX };
        // Once a statement failed for a reason no single row causes (a timeout, a broken
        // connection...), later rounds are not sent: their callers get the same error at once
        // rather than wait out another timeout each.
        let mut failed: Option<Error> = None;
        // Each round in id byte order already: one lock order for every writer.
        for round in rounds(batch) {
            // A fenced statement is checked against one registration.
            let parts = by_registration(round, |p| p.input.fence.as_ref())
                .into_iter()
                .flat_map(|group| chunks(group, limit));
            for part in parts {
                let rows: Vec<&WriteRow> = part.iter().map(|p| &p.input).collect();
                let outcomes = match &failed {
                    Some(error) => rows.iter().map(|_| Err(error.clone())).collect(),
                    // Citus routes a fenced write (which locks the owner row) only when it
                    // names one id: fenced rows go one statement each there.
                    None if values && any_fenced(&rows) => {
                        self.write_one_by_one(&client, &rows, &mut failed, values)
                            .await
                    }
                    None => match self.write_rows(&client, &rows, values).await {
                        Ok(outcomes) => outcomes,
                        // A statement fails as a whole. If one row may be to blame, write
                        // each row alone so the others land.
                        Err(error) if rows.len() > 1 && one_row_can_cause(&error) => {
                            self.write_one_by_one(&client, &rows, &mut failed, values)
                                .await
                        }
                        Err(error) => {
                            failed = Some(error.clone());
                            rows.iter().map(|_| Err(error.clone())).collect()
                        }
                    },
                };
                // A connection given up on mid-statement (a client-side timeout) runs nothing
                // more, even if what timed out was only a follow-up read.
                if failed.is_none() {
                    failed = client.abandoned_error();
                }
                answer_each(part.into_iter().zip(outcomes));
            }
        }
    }

    /// Writes each row in a statement of its own, until one fails for a reason that is not
    /// the row's (then recorded in `failed`); the rows after it are not sent.
    async fn write_one_by_one(
        &self,
        client: &PooledClient,
        rows: &[&WriteRow],
        failed: &mut Option<Error>,
        citus: bool,
    ) -> Vec<Result<WriteOutcome, Error>> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(error) = failed {
                outcomes.push(Err(error.clone()));
                continue;
            }
            let outcome = match self
                .write_rows(client, std::slice::from_ref(row), citus)
                .await
            {
                Ok(mut single) => single.pop().unwrap_or_else(|| Err(no_result(&row.row))),
                Err(error) => {
                    if !one_row_can_cause(&error) {
                        *failed = Some(error.clone());
                    }
                    Err(error)
                }
            };
            if failed.is_none() {
                *failed = client.abandoned_error();
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Writes rows with distinct ids in one statement (as multi-row `VALUES` if `values`); one
    /// outcome per row, in order.
    ///
    /// `Err` only when the first statement failed, which then wrote nothing. Past it, written
    /// rows are committed and reported as written whatever happens next; rows sent again
    /// (see [`RESENDS`]) get their own outcome, an error included.
    async fn write_rows(
        &self,
        client: &PooledClient,
        rows: &[&WriteRow],
        values: bool,
    ) -> Result<Vec<Result<WriteOutcome, Error>>, Error> {
        let mut outcomes: Vec<Option<Result<WriteOutcome, Error>>> = vec![None; rows.len()];
        // The rows (by index) sent in this attempt.
        let mut todo: Vec<usize> = (0..rows.len()).collect();
        for attempt in 0..=RESENDS {
            let sent: Vec<&WriteRow> = todo.iter().map(|&i| rows[i]).collect();
            let is_written = match self.apply(client, &sent, values).await {
                Ok(is_written) => is_written,
                Err(error) if attempt == 0 => return Err(error),
                Err(error) => {
                    for &i in &todo {
                        outcomes[i] = Some(Err(error.clone()));
                    }
                    break;
                }
            };
            // A checked row not written is a conflict, an identical retry, a row whose
            // predecessor committed after the statement's snapshot, or one that a trigger or
            // policy suppressed: a fresh read (a new statement, so a new snapshot) tells which.
            // An unchecked row not written can only be suppressed.
            let refused: Vec<&str> = sent
                .iter()
                .zip(&is_written)
                .filter(|(_, written)| !**written)
                .map(|(write, _)| write.row.persistence_id.as_str())
                .collect();
            let stored = if refused.is_empty() || self.version_check == VersionCheck::Unchecked {
                Ok(HashMap::new())
            } else {
                self.current_rows(client, &refused).await
            };
            // A fenced row not written may have lost its ownership: fresh reads tell.
            let refused_rows: Vec<&WriteRow> = sent
                .iter()
                .zip(&is_written)
                .filter(|(_, written)| !**written)
                .map(|(write, _)| *write)
                .collect();
            let fence_state = if any_fenced(&refused_rows) {
                self.fence_state(client, &refused, &fences_of(&refused_rows))
                    .await
            } else {
                Ok(FenceState {
                    owners: HashMap::new(),
                    revoked: Vec::new(),
                })
            };
            let mut again = Vec::new();
            for (&i, written) in todo.iter().zip(is_written) {
                let write = rows[i];
                let row = &write.row;
                let fenced = match &fence_state {
                    Ok(state) if !written => fenced_out(state, write).map(Err),
                    Err(error) if !written && write.fence.is_some() => Some(Err(error.clone())),
                    _ => None,
                };
                outcomes[i] = Some(match (written, fenced, &stored) {
                    (true, _, _) => Ok(WriteOutcome::Written),
                    (false, Some(fenced), _) => fenced,
                    (false, None, Err(error)) => Err(error.clone()),
                    (false, None, Ok(stored)) => {
                        let stored = stored.get(&row.persistence_id);
                        if self.version_check == VersionCheck::Sequential
                            && attempt < RESENDS
                            && version::judge(stored, row, self.version_check) == Verdict::Apply
                        {
                            again.push(i);
                            continue;
                        }
                        version::refused(stored, row, self.version_check)
                    }
                });
            }
            if again.is_empty() {
                break;
            }
            todo = again;
        }
        Ok(rows
            .iter()
            .zip(outcomes)
            .map(|(write, outcome)| outcome.unwrap_or_else(|| Err(no_result(&write.row))))
            .collect())
    }

    /// Sends one statement writing `rows` (distinct ids); whether each row was written, in
    /// order. A deadlock or serialization failure rolled the statement back whole: it is sent
    /// again, up to [`RETRIES`] times, after a jittered pause that grows with each try.
    async fn apply(
        &self,
        client: &PooledClient,
        rows: &[&WriteRow],
        values: bool,
    ) -> Result<Vec<bool>, Error> {
        let mut tried = 0;
        loop {
            let result = match rows {
                // On Citus a fenced row is fenced by its owner row (see `Fenced::by_epoch`).
                [row] => self.apply_one(client, row, values).await,
                _ if values => {
                    let rows: Vec<&StateRow> = rows.iter().map(|w| &w.row).collect();
                    self.write_values(client, &rows).await
                }
                _ => self.apply_arrays(client, rows).await,
            };
            match result {
                Err(error) if tried < RETRIES && is_rolled_back_race(&error) => {
                    tried += 1;
                    metrics::counter!("durablestore_write_statement_retries_total").increment(1);
                    tracing::debug!(%error, tried, "write statement lost a lock race; sending it again");
                    tokio::time::sleep(race_backoff(tried, fastrand::f64())).await;
                }
                other => return other,
            }
        }
    }

    async fn current_rows(
        &self,
        client: &PooledClient,
        ids: &[&str],
    ) -> Result<HashMap<String, StateRow>, Error> {
        let current = client
            .query(&self.sql, Stmt::Select, &[(&ids, Type::TEXT_ARRAY)])
            .await?;
        let mut stored = HashMap::with_capacity(current.len());
        for record in &current {
            let row = read_row(record)?;
            stored.insert(row.persistence_id.clone(), row);
        }
        Ok(stored)
    }
}

/// Answers each write with its outcome, the metrics looked up and the clock read once for
/// them all.
fn answer_each(answers: impl IntoIterator<Item = (Pending<Write>, Result<WriteOutcome, Error>)>) {
    let meter = WriteMeter::now();
    for (pending, outcome) in answers {
        Write::record(&meter, &pending.input, &outcome, pending.queued());
        pending.answer_recorded(outcome);
    }
}

fn answer_all(batch: Vec<Pending<Write>>, error: &Error) {
    answer_each(
        batch
            .into_iter()
            .map(|pending| (pending, Err(error.clone()))),
    );
}

/// Splits a batch into rounds in which each id appears once, keeping each id's arrival order:
/// PostgreSQL cannot upsert one row twice in a statement, and running the rounds in order
/// behaves exactly as if the writes had been sent one after the other. Each round is in id
/// byte order, the one lock order of every writer.
fn rounds(mut batch: Vec<Pending<Write>>) -> Vec<Vec<Pending<Write>>> {
    // Stable: one id's writes stay in arrival order, next to each other. No hashing: the
    // sort is needed for the lock order anyway.
    batch.sort_by(|a, b| a.input.row.persistence_id.cmp(&b.input.row.persistence_id));
    let id = |i: usize| batch[i].input.row.persistence_id.as_str();
    if (1..batch.len()).all(|i| id(i - 1) != id(i)) {
        // The usual case: every id once.
        return vec![batch];
    }
    // The k-th write of an id goes to round k.
    let mut round_of = Vec::with_capacity(batch.len());
    for i in 0..batch.len() {
        let round = match round_of.last() {
            Some(&last) if id(i - 1) == id(i) => last + 1,
            _ => 0,
        };
        round_of.push(round);
    }
    let count = round_of.iter().max().map_or(0, |last| last + 1);
    let mut rounds: Vec<Vec<Pending<Write>>> = (0..count).map(|_| Vec::new()).collect();
    for (pending, round) in batch.into_iter().zip(round_of) {
        rounds[round].push(pending);
    }
    rounds
}

/// Splits a round into parts of at most `limit` writes, in order.
fn chunks<T>(mut items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let mut parts = Vec::with_capacity(items.len().div_ceil(limit.max(1)));
    while items.len() > limit.max(1) {
        let rest = items.split_off(limit.max(1));
        parts.push(items);
        items = rest;
    }
    parts.push(items);
    parts
}

/// Whether one row of a multi-row statement may have caused `error` alone, so that writing the
/// rows one by one lets the others land: any error the server reports, except those no row
/// causes. Those would only repeat once per row: a broken connection (class 08), a cancel or
/// timeout (57014), a shutdown (57P01–57P03), a read-only server (25006), exhausted resources
/// (class 53), an internal error (class XX), a lost lock race (class 40, already retried), and
/// a table, column or schema that does not exist (42P01, 42703, 3F000). Errors that are not the
/// server's (a timeout on the client, a closed pool) are never one row's.
pub(super) fn one_row_can_cause(error: &Error) -> bool {
    let Error::Database { source } = error else {
        return false;
    };
    if source.connection_lost() {
        return false;
    }
    let Some(code) = source.code() else {
        return false;
    };
    let not_a_rows_fault = matches!(source.class(), Some("08" | "53" | "XX" | "40" | "3F"))
        || [
            SqlState::QUERY_CANCELED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
        ]
        .contains(code);
    !not_a_rows_fault
}

/// A statement that lost a lock race and was rolled back whole: a deadlock (40P01) or a
/// serialization failure (40001). Sending it again is safe.
fn is_rolled_back_race(error: &Error) -> bool {
    matches!(
        error.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED | &SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

/// The pause before try `tried + 1` of a statement that lost a lock race: up to 2 ms doubled per
/// try (at most 128 ms), scaled by `jitter` in [0, 1) so that the losers do not meet again.
fn race_backoff(tried: u32, jitter: f64) -> Duration {
    let ceiling = Duration::from_millis(2) * 2u32.pow(tried.saturating_sub(1).min(6));
    ceiling.mul_f64(jitter.clamp(0.0, 1.0)) + Duration::from_micros(100)
}

fn no_result(row: &StateRow) -> Error {
    Error::CorruptState {
        persistence_id: row.persistence_id.clone(),
        reason: "the write statement returned no result for this row".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, version: i64) -> Pending<Write> {
        let row = StateRow {
            persistence_id: id.to_owned(),
            version_number: version,
            state_payload: Vec::new(),
            state_manifest: "a.B".to_owned(),
            timestamp: 0,
            shard_number: 0,
        };
        Pending::new(row.into(), None)
    }

    #[test]
    fn rounds_keep_each_ids_order_and_never_repeat_an_id() {
        let batch = vec![
            pending("a", 1),
            pending("b", 1),
            pending("a", 2),
            pending("a", 3),
            pending("c", 1),
            pending("b", 2),
        ];
        let rounds: Vec<Vec<(String, i64)>> = rounds(batch)
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|p| (p.input.row.persistence_id, p.input.row.version_number))
                    .collect()
            })
            .collect();
        let s = |id: &str, v| (id.to_owned(), v);
        assert_eq!(
            rounds,
            vec![
                vec![s("a", 1), s("b", 1), s("c", 1)],
                vec![s("a", 2), s("b", 2)],
                vec![s("a", 3)],
            ]
        );
    }

    #[test]
    fn race_backoff_grows_and_stays_bounded() {
        assert!(race_backoff(1, 0.999) <= Duration::from_micros(2_100));
        assert!(race_backoff(7, 0.999) > Duration::from_millis(100));
        assert!(race_backoff(40, 1.0) <= Duration::from_micros(128_100));
        assert_eq!(race_backoff(3, 0.0), Duration::from_micros(100));
    }
}
