//! The change feed's statements ([`crate::feed`]).

use super::{Identifier, quote_name, without_comments};
use crate::config::{Checked, Config};

/// The change feed's migration, shipped in `resources/`: the one source of its schema.
pub(crate) const CHANGES_DDL: &str = include_str!("../../resources/changes.sql");

/// The statements of a store's change feed ([`crate::feed`]), built once from the configured
/// schema and table, like [`Sql`].
#[derive(Debug)]
pub(crate) struct FeedSql {
    /// `resources/changes.sql` for this table, after an advisory lock of its own.
    pub create: String,
    /// Up to `$4` entries after the offset (`$1` the transaction id as text, `$2` the log
    /// row's `seq`, `$3` the position in its ids), of transactions below the snapshot's xmin,
    /// in offset order, each with the row it names now (NULLs once the row is gone): an index
    /// range scan of the log's `(xid, seq)` index and one primary-key lookup per entry.
    pub page: String,
    /// Removes the entries that a later entry of the same id makes redundant (of ended
    /// transactions); how many.
    pub compact: String,
    /// The table's oid, which names its notification channel.
    pub channel: String,
}

impl FeedSql {
    pub(crate) fn new(checked: &Checked) -> Self {
        Self::for_names(&checked.schema, &checked.table)
    }

    /// The qualified, quoted name of the feed's log of `table`.
    pub(crate) fn log_table(schema: &Identifier, table: &Identifier) -> String {
        format!(
            "{}.{}",
            schema.quoted(),
            quote_name(&format!("{}_changes", table.as_str()))
        )
    }

    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let q = |name: &str| format!("{}.{}", schema.quoted(), quote_name(name));
        let t = q(table.as_str());
        let log = Self::log_table(schema, table);
        let function = q(&format!("{}_changes_log", table.as_str()));
        // The per-row log of an earlier version, while it is moved.
        let earlier = format!("{}_changes_v1", table.as_str());
        let ddl = without_comments(CHANGES_DDL)
            // Longest first: the derived names contain the table's.
            .replace("states_store_changes_log", "\u{1}")
            // Names that are not qualified: a new index's (it lives in its table's schema),
            // a renamed table's (it stays in its schema).
            .replace("states_store_changes_xid", "\u{4}")
            .replace("RENAME TO states_store_changes_v1", "\u{5}")
            .replace("states_store_changes_v1", "\u{6}")
            .replace("states_store_changes", "\u{2}")
            .replace("'states_store'::regclass", "\u{3}")
            .replace(Config::DEFAULT_TABLE, &t)
            .replace('\u{1}', &function)
            .replace('\u{2}', &log)
            .replace('\u{3}', &format!("'{t}'::regclass"))
            .replace(
                '\u{4}',
                &quote_name(&format!("{}_changes_xid", table.as_str())),
            )
            .replace('\u{5}', &format!("RENAME TO {}", quote_name(&earlier)))
            .replace('\u{6}', &q(&earlier));
        let lock_key = format!("{}.{}#changes", schema.as_str(), table.as_str());
        let create = format!("SELECT pg_advisory_xact_lock(hashtext('{lock_key}'));\n{ddl}");
        // The log rows are picked first, by their counts of ids (no array is read), just
        // enough for the page; then their entries, in order; then the rows they name.
        let page = format!(
            r#"WITH head AS MATERIALIZED (
    SELECT c.xid, c.seq, sum(c.n) OVER (ORDER BY c.xid, c.seq ROWS UNBOUNDED PRECEDING) - c.n AS before
    FROM {log} c
    WHERE (c.xid, c.seq) >= ($1::text::xid8, $2::int8)
      AND c.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY c.xid, c.seq
    LIMIT $4::int8 + 1
),
page AS (
    SELECT c.xid, c.seq, e.pos, e.id, e.version, c.deleted
    FROM head h
    JOIN {log} c ON c.xid = h.xid AND c.seq = h.seq
    CROSS JOIN LATERAL unnest(c.ids, c.versions) WITH ORDINALITY AS e(id, version, pos)
    WHERE h.before < $4::int8 + $3::int8
      AND (c.xid, c.seq, e.pos) > ($1::text::xid8, $2::int8, $3::int8)
      AND e.id IS NOT NULL
    ORDER BY c.xid, c.seq, e.pos
    LIMIT $4::int8
)
SELECT p.xid::text, p.seq, p.pos, p.id, p.version, p.deleted,
    s.version_number, s.state_payload, s.state_manifest, s."timestamp", s.shard_number
FROM page p LEFT JOIN {t} s ON s.persistence_id = p.id
ORDER BY p.xid, p.seq, p.pos"#
        );
        // Entries of ended transactions only (below the snapshot's xmin); an id's entries
        // before its latest are set to NULL (positions never move, so no offset skips), and a
        // log row left with none is deleted.
        let compact = format!(
            r#"WITH horizon AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
entries AS MATERIALIZED (
    SELECT c.xid, c.seq, e.pos, e.id FROM {log} c
    CROSS JOIN LATERAL unnest(c.ids) WITH ORDINALITY AS e(id, pos)
    WHERE c.xid < (SELECT xmin FROM horizon) AND e.id IS NOT NULL
),
ranked AS (
    SELECT xid, seq, pos,
        row_number() OVER (PARTITION BY id ORDER BY xid DESC, seq DESC, pos DESC) AS r
    FROM entries
),
per_row AS (
    SELECT xid, seq, array_agg(pos) FILTER (WHERE r > 1) AS stale,
        count(*) FILTER (WHERE r = 1) AS kept
    FROM ranked GROUP BY xid, seq HAVING count(*) FILTER (WHERE r > 1) > 0
),
gone AS (
    DELETE FROM {log} c USING per_row p
    WHERE c.xid = p.xid AND c.seq = p.seq AND p.kept = 0
    RETURNING cardinality(p.stale) AS n
),
trimmed AS (
    UPDATE {log} c SET ids = ARRAY(
        SELECT CASE WHEN e.pos = ANY (p.stale) THEN NULL ELSE e.id END
        FROM unnest(c.ids) WITH ORDINALITY AS e(id, pos) ORDER BY e.pos)
    FROM per_row p
    WHERE c.xid = p.xid AND c.seq = p.seq AND p.kept > 0
    RETURNING cardinality(p.stale) AS n
)
SELECT coalesce(sum(n), 0)::int8 FROM (SELECT n FROM gone UNION ALL SELECT n FROM trimmed) AS removed"#
        );
        let channel = format!("SELECT '{t}'::regclass::oid::int8");
        FeedSql {
            create,
            page,
            compact,
            channel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_migration_is_rewritten_for_the_configured_names() {
        let config = Config::new("h", 1, "u", "", "d")
            .schema("tenant_a")
            .table("Accounts");
        let feed = FeedSql::new(&config.check(crate::config::PoolOwner::Store).unwrap());
        for expected in [
            r#"CREATE TABLE IF NOT EXISTS "tenant_a"."Accounts_changes""#,
            r#"INDEX IF NOT EXISTS "Accounts_changes_xid" ON "tenant_a"."Accounts_changes""#,
            r#"FUNCTION "tenant_a"."Accounts_changes_log"()"#,
            r#"AFTER DELETE ON "tenant_a"."Accounts""#,
            r#"tgrelid = '"tenant_a"."Accounts"'::regclass"#,
        ] {
            assert!(feed.create.contains(expected), "{expected}");
        }
        assert!(!feed.create.contains("states_store") && !feed.create.contains("--"));
        assert!(
            feed.page
                .contains(r#"FROM "tenant_a"."Accounts_changes" c"#)
        );
    }
}
