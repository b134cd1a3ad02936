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
    /// Up to `$3` entries after the offset (`$1` the transaction id as text, `$2` the id), of
    /// transactions below the snapshot's xmin, in offset order, each with the row it names
    /// now (NULLs once the row is gone): an index range scan of the log's `xid` index and
    /// one primary-key lookup per entry. `WITH TIES`: the entries of one offset (one
    /// transaction writing an id twice) are never split between two pages.
    pub page: String,
    /// Removes the entries that a later entry of the same id makes redundant; how many.
    pub compact: String,
    /// The table's oid, which names its notification channel.
    pub channel: String,
}

impl FeedSql {
    pub(crate) fn new(checked: &Checked) -> Self {
        Self::for_names(&checked.schema, &checked.table)
    }

    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let q = |name: &str| format!("{}.{}", schema.quoted(), quote_name(name));
        let t = q(table.as_str());
        let log = q(&format!("{}_changes", table.as_str()));
        let function = q(&format!("{}_changes_log", table.as_str()));
        let ddl = without_comments(CHANGES_DDL)
            // Longest first: the derived names contain the table's.
            .replace("states_store_changes_log", "\u{1}")
            // The index name, left unqualified (an index lives in its table's schema).
            .replace("states_store_changes_xid", "\u{4}")
            .replace("states_store_changes", "\u{2}")
            .replace("'states_store'::regclass", "\u{3}")
            .replace(Config::DEFAULT_TABLE, &t)
            .replace('\u{1}', &function)
            .replace('\u{2}', &log)
            .replace('\u{3}', &format!("'{t}'::regclass"))
            .replace(
                '\u{4}',
                &quote_name(&format!("{}_changes_xid", table.as_str())),
            );
        let lock_key = format!("{}.{}#changes", schema.as_str(), table.as_str());
        let create = format!("SELECT pg_advisory_xact_lock(hashtext('{lock_key}'));\n{ddl}");
        let page = format!(
            r#"SELECT c.xid::text, c.persistence_id, c.version_number, c.deleted,
    s.version_number, s.state_payload, s.state_manifest, s."timestamp", s.shard_number
FROM {log} c LEFT JOIN {t} s ON s.persistence_id = (c.persistence_id COLLATE "default")
WHERE c.xid >= $1::text::xid8
  AND (c.xid, c.persistence_id) > ($1::text::xid8, $2::text COLLATE "C")
  AND c.xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY c.xid, c.persistence_id
FETCH FIRST ($3::int8) ROWS WITH TIES"#
        );
        let compact = format!(
            "WITH latest AS (SELECT persistence_id, max(xid) AS xid FROM {log} \
             GROUP BY persistence_id HAVING count(*) > 1), \
             gone AS (DELETE FROM {log} c USING latest l \
             WHERE c.persistence_id = l.persistence_id AND c.xid < l.xid RETURNING 1) \
             SELECT count(*) FROM gone"
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
