//! The multi-row write statements over arrays (`UNNEST`): version-checked, by kind of batch,
//! and the one result row every multi-row write returns.

use super::COLUMNS;

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

/// The version-checked multi-row write of each kind of [`Rows`], over the CTEs `ctes`, whose
/// `source` has the input rows (`$1` the ids). Returns one row: how many rows were written,
/// and their ids only when some were not.
pub(crate) fn checked_writes(t: &str, ctes: &str, source: &str) -> [String; 3] {
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
            "WITH {ctes},
{parts}
{}",
            written_result(written)
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

/// The one result row of a multi-row write whose written ids are `written`: how many, and
/// the ids only when fewer than the input's (`$1`), so the usual answer is one number.
pub(crate) fn written_result(written: &str) -> String {
    format!(
        "SELECT count(*), CASE WHEN count(*) < cardinality($1::text[])          THEN array_agg(persistence_id::text) END FROM {written} AS written"
    )
}
