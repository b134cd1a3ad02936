//! The write statements over arrays (`UNNEST`) and of one row, version-checked or not, each
//! in two forms: unlogged, and logging its written ids into the change feed's log in the same
//! statement (see `resources/changes.sql`). Each begins with a marker comment that the feed's
//! triggers read with `current_query()`.

use super::{COLUMNS, INPUT, UPDATE_ALL};

/// The first bytes of a write statement that does not log itself. On a table with the change
/// feed installed, its triggers refuse it before it touches a row (SQLSTATE [`FEED_INSTALLED`]),
/// and the store sends its logged form instead.
pub(crate) const UNLOGGED: &str = "/*durablestore:unlogged*/";

/// The first bytes of a write statement that logs its written ids itself: the feed's triggers
/// leave it alone.
pub(crate) const LOGGED: &str = "/*durablestore:logged*/";

/// The SQLSTATE with which the change feed's triggers refuse an [`UNLOGGED`] statement.
pub(crate) const FEED_INSTALLED: &str = "DSF01";

/// Where a logged statement logs: the feed's log table and the table written (whose oid
/// names the notification channel), both qualified and quoted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Log<'a> {
    pub log: &'a str,
    pub table: &'a str,
}

impl<'a> Log<'a> {
    /// The two forms of every write into `table`: unlogged (`[0]`), and logged into `log`.
    pub(crate) fn forms(log: &'a str, table: &'a str) -> [Option<Log<'a>>; 2] {
        [None, Some(Log { log, table })]
    }
}

/// Which rows of a version-checked batch there are: versions 1 (inserted unless the id has
/// a row), later versions (updated over the one before), or both. A batch of one kind is sent
/// without the other's part: an empty part still runs (and fires its statement triggers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    Mixed = 0,
    New = 1,
    Updates = 2,
}

impl Rows {
    /// The kind of a batch whose versions are `versions`.
    pub(crate) fn of(versions: &[i64]) -> Rows {
        let new = versions.iter().filter(|v| **v == 1).count();
        match new {
            0 => Rows::Updates,
            n if n == versions.len() => Rows::New,
            _ => Rows::Mixed,
        }
    }
}

/// The write statements of one kind (plain or fenced), in one form (unlogged or logged).
#[derive(Debug)]
pub(crate) struct Writes {
    /// By kind of batch ([`Rows`]).
    pub write_checked: [String; 3],
    pub write_unchecked: String,
    pub insert_one: String,
    pub update_one: String,
    pub upsert_one: String,
}

impl Writes {
    /// Every statement text of these writes.
    #[cfg(test)]
    pub(crate) fn texts(&self) -> [&String; 7] {
        let [mixed, new, updates] = &self.write_checked;
        [
            mixed,
            new,
            updates,
            &self.write_unchecked,
            &self.insert_one,
            &self.update_one,
            &self.upsert_one,
        ]
    }

    /// The writes into `t` over the CTEs `ctes`, whose `source` has the input rows, and the
    /// single-row statements `one_row` (insert, update, upsert) after the CTE `one_cte` if
    /// there is one; logged into `log` if it is given.
    pub(crate) fn new(
        t: &str,
        (ctes, source): (&str, &str),
        (one_cte, one_row): (Option<&str>, [String; 3]),
        log: Option<Log<'_>>,
    ) -> Writes {
        let [insert_one, update_one, upsert_one] = one_row_forms(one_cte, one_row, log);
        Writes {
            write_checked: checked_writes(t, ctes, source, log),
            write_unchecked: unchecked_write(t, ctes, source, log),
            insert_one,
            update_one,
            upsert_one,
        }
    }

    /// The unfenced writes into `t`, logged into `log` if it is given.
    pub(crate) fn plain(t: &str, log: Option<Log<'_>>) -> Writes {
        let one = "$1::text, $2::int8, $3::bytea, $4::text, $5::int8, $6::int8";
        let one_row = [
            format!(
                "INSERT INTO {t} ({COLUMNS}) VALUES ({one}) ON CONFLICT (persistence_id) DO NOTHING \
                 RETURNING persistence_id"
            ),
            format!(
                r#"UPDATE {t} SET version_number = $2::int8, state_payload = $3::bytea,
        state_manifest = $4::text, "timestamp" = $5::int8, shard_number = $6::int8
    WHERE persistence_id = $1::text AND version_number = $2::int8 - 1
    RETURNING persistence_id"#
            ),
            format!(
                "INSERT INTO {t} AS s ({COLUMNS}) VALUES ({one}) \
                 ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL} RETURNING s.persistence_id"
            ),
        ];
        Self::new(
            t,
            (&format!("input AS ({INPUT})"), "input"),
            (None, one_row),
            log,
        )
    }
}

/// The version-checked multi-row write of each kind of [`Rows`], over the CTEs `ctes`, whose
/// `source` has the input rows (`$1` the ids). Returns one row: how many rows were written,
/// and their ids only when some were not.
pub(crate) fn checked_writes(
    t: &str,
    ctes: &str,
    source: &str,
    log: Option<Log<'_>>,
) -> [String; 3] {
    let inserted = format!(
        r#"inserted AS (
    INSERT INTO {t} ({COLUMNS})
    SELECT i.persistence_id, i.version_number, i.state_payload, i.state_manifest, i."timestamp", i.shard_number
    FROM {source} i WHERE i.version_number = 1
    ON CONFLICT (persistence_id) DO NOTHING
    RETURNING persistence_id
)"#
    );
    let updated = format!(
        r#"updated AS (
    UPDATE {t} AS s SET version_number = i.version_number,
        state_payload = i.state_payload,
        state_manifest = i.state_manifest,
        "timestamp" = i."timestamp",
        shard_number = i.shard_number
    FROM {source} i
    WHERE i.version_number > 1
      AND s.persistence_id = i.persistence_id
      AND s.version_number = i.version_number - 1
    RETURNING s.persistence_id
)"#
    );
    let result = |parts: &str, written: &str| {
        format!(
            "{}WITH {ctes},
{parts}
{}",
            marker(log),
            written_result(written, log)
        )
    };
    [
        result(
            &format!(
                "{inserted},
{updated}"
            ),
            "(SELECT persistence_id FROM inserted UNION ALL SELECT persistence_id FROM updated)",
        ),
        result(&inserted, "inserted"),
        result(&updated, "updated"),
    ]
}

/// The last-writer-wins multi-row upsert over the CTEs `ctes`, whose `source` has the input
/// rows. Returns one row, as [`checked_writes`].
pub(crate) fn unchecked_write(t: &str, ctes: &str, source: &str, log: Option<Log<'_>>) -> String {
    format!(
        r#"{}WITH {ctes},
written AS (
    INSERT INTO {t} AS s ({COLUMNS})
    SELECT i.persistence_id, i.version_number, i.state_payload, i.state_manifest, i."timestamp", i.shard_number
    FROM {source} i
    ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL}
    RETURNING s.persistence_id
)
{}"#,
        marker(log),
        written_result("written", log)
    )
}

/// The single-row insert, update and upsert `dml` (each `RETURNING` the id it wrote), after
/// the CTE `cte` if there is one. Logged, each is a CTE `written` whose ids are logged, and
/// the statement returns the id it wrote as the statement alone would.
pub(crate) fn one_row_forms(
    cte: Option<&str>,
    dml: [String; 3],
    log: Option<Log<'_>>,
) -> [String; 3] {
    dml.map(|dml| match log {
        None => match cte {
            Some(cte) => format!("{UNLOGGED}WITH {cte}\n{dml}"),
            None => format!("{UNLOGGED}{dml}"),
        },
        Some(log) => {
            let cte = cte.map(|cte| format!("{cte},\n")).unwrap_or_default();
            format!(
                "{LOGGED}WITH {cte}written AS (\n{dml}\n),\n{}\n\
                 SELECT persistence_id, (SELECT count(*) FROM notified) FROM written",
                log_ctes("written", log)
            )
        }
    })
}

fn marker(log: Option<Log<'_>>) -> &'static str {
    if log.is_some() { LOGGED } else { UNLOGGED }
}

/// The one result row of a multi-row write whose written ids are `written`: how many, and
/// the ids only when fewer than the input's (`$1`), so the usual answer is one number. Logged,
/// the CTEs that log `written` come first (this text follows a CTE list).
pub(crate) fn written_result(written: &str, log: Option<Log<'_>>) -> String {
    let result = "SELECT count(*), CASE WHEN count(*) < cardinality($1::text[]) \
                  THEN array_agg(persistence_id::text) END";
    match log {
        None => format!("{result} FROM {written} AS written"),
        Some(log) => format!(
            ",\n{}\n{result}, (SELECT count(*) FROM notified) FROM {written} AS written",
            log_ctes(written, log)
        ),
    }
}

/// The CTEs `logged` and `notified`: the ids of `written` appended to the feed's log in
/// entries of up to 1,000 ids, stamped with this transaction's id, and one notification per
/// transaction (as `resources/changes.sql` does for the writes its triggers catch). The
/// statement must read `notified` for the notification to be sent.
fn log_ctes(written: &str, log: Log<'_>) -> String {
    let Log { log, table } = log;
    format!(
        r#"logged AS (
    INSERT INTO {log} (xid, n, ids)
    SELECT pg_current_xact_id(), cardinality(a.ids[k + 1:k + 1000]), a.ids[k + 1:k + 1000]
    FROM (SELECT array_agg(persistence_id::text) AS ids FROM {written} AS w) AS a,
        generate_series(0, coalesce(cardinality(a.ids), 0) - 1, 1000) AS k
    RETURNING 1
),
notified AS (
    SELECT pg_notify(c.channel, '')
    FROM (SELECT 'durablestore_changes_' || '{table}'::regclass::oid::text AS channel) AS c
    WHERE CASE WHEN EXISTS (SELECT 1 FROM logged)
          THEN pg_try_advisory_xact_lock(hashtext(c.channel)) ELSE FALSE END
)"#
    )
}
