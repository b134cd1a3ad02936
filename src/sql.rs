//! Every SQL text the store sends, built once from the configured schema and table.
//!
//! Nothing else in the crate formats SQL. Identifiers are validated ([`Identifier`]) and
//! double-quoted; all values travel as bind parameters.

use crate::config::{Config, DEFAULT_TABLE, Identifier};

/// The DDL shipped in `resources/`, the one source of the table's definition.
pub(crate) const DDL: &str = include_str!("../resources/durablestore_postgres.sql");

/// The index name the DDL file uses for the default table.
const DDL_INDEX: &str = "idx_states_store_version_number";

const COLUMNS: &str =
    r#"persistence_id, version_number, state_payload, state_manifest, "timestamp", shard_number"#;

/// Input rows of a write, one array per column; `ord` numbers them from 1.
const INPUT: &str = r#"SELECT * FROM UNNEST($1::text[], $2::int8[], $3::bytea[], $4::text[], $5::int8[], $6::int8[])
        WITH ORDINALITY AS i(persistence_id, version_number, state_payload, state_manifest, "timestamp", shard_number, ord)"#;

const UPDATE_ALL: &str = r#"version_number = EXCLUDED.version_number,
        state_payload = EXCLUDED.state_payload,
        state_manifest = EXCLUDED.state_manifest,
        "timestamp" = EXCLUDED."timestamp",
        shard_number = EXCLUDED.shard_number"#;

/// The statements of one store.
#[derive(Debug)]
pub(crate) struct Sql {
    /// Version-checked upsert of N rows with distinct ids, in one statement and one commit.
    ///
    /// Returns one row per input: `ord` (1-based input position), `written`, and, from the
    /// statement's snapshot, the `stored` version (NULL: no row) and whether the stored payload
    /// and manifest equal the input (`same`). A row is written when it is the first version of a
    /// new id or builds on the stored version; the `ON CONFLICT ... WHERE` re-checks the version
    /// against the latest committed row, so a concurrent writer can never be overwritten.
    pub write_checked: String,
    /// Last-writer-wins upsert of N rows with distinct ids.
    pub write_unchecked: String,
    /// The stored rows of the ids in `$1::text[]`.
    pub select: String,
    /// The DDL for this schema and table; one implicit transaction, serialized by an advisory
    /// lock so concurrent creators don't race in the catalog.
    pub create: String,
}

impl Sql {
    pub(crate) fn new(config: &Config) -> Self {
        Self::for_names(&config.schema, &config.table)
    }

    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let t = format!("{}.{}", schema.quoted(), table.quoted());
        let write_checked = format!(
            r#"WITH input AS ({INPUT}),
current AS (
    SELECT i.ord, s.version_number,
           s.state_payload = i.state_payload AND s.state_manifest = i.state_manifest AS same
    FROM input i JOIN {t} s ON s.persistence_id = i.persistence_id
),
written AS (
    INSERT INTO {t} AS s ({COLUMNS})
    SELECT i.persistence_id, i.version_number, i.state_payload, i.state_manifest, i."timestamp", i.shard_number
    FROM input i LEFT JOIN current c ON c.ord = i.ord
    WHERE (c.ord IS NULL AND i.version_number = 1) OR c.version_number = i.version_number - 1
    ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL}
    WHERE s.version_number = EXCLUDED.version_number - 1
    RETURNING s.persistence_id
)
SELECT i.ord, w.persistence_id IS NOT NULL AS written, c.version_number AS stored, c.same
FROM input i
LEFT JOIN written w ON w.persistence_id = i.persistence_id
LEFT JOIN current c ON c.ord = i.ord"#
        );
        let write_unchecked = format!(
            r#"INSERT INTO {t} AS s ({COLUMNS})
SELECT i.persistence_id, i.version_number, i.state_payload, i.state_manifest, i."timestamp", i.shard_number
FROM ({INPUT}) i
ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL}"#
        );
        let select = format!("SELECT {COLUMNS} FROM {t} WHERE persistence_id = ANY($1::text[])");

        let index = Identifier::parse("index", &format!("idx_{}_version_number", table.as_str()))
            .map(|i| i.quoted())
            // Over 63 bytes: let PostgreSQL truncate it, as it does for any long name.
            .unwrap_or_else(|_| format!("\"idx_{}_version_number\"", table.as_str()));
        let ddl: String = DDL
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            // The index name contains the table name: park it while the table is replaced.
            .replace(DDL_INDEX, "\u{0}")
            .replace(DEFAULT_TABLE, &t)
            .replace('\u{0}', &index);
        // The lock key is derived from the qualified name so different tables don't wait for
        // each other; `hashtext` is stable across sessions.
        let lock_key = format!("{}.{}", schema.as_str(), table.as_str());
        // `public` always exists, and creating it needs a privilege many users lack even with
        // IF NOT EXISTS, so it is not created.
        let create_schema = if schema.as_str() == crate::config::DEFAULT_SCHEMA {
            String::new()
        } else {
            format!("CREATE SCHEMA IF NOT EXISTS {};\n", schema.quoted())
        };
        let create =
            format!("SELECT pg_advisory_xact_lock(hashtext('{lock_key}'));\n{create_schema}{ddl}");
        Sql {
            write_checked,
            write_unchecked,
            select,
            create,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_is_rewritten_for_the_configured_names() {
        let config = Config::new("h", 1, "u", "", "d")
            .schema("tenant_a")
            .unwrap()
            .table("Accounts")
            .unwrap();
        let sql = Sql::new(&config);
        assert!(
            sql.create
                .contains(r#"CREATE TABLE IF NOT EXISTS "tenant_a"."Accounts""#)
        );
        assert!(sql.create.contains(
            r#"INDEX IF NOT EXISTS "idx_Accounts_version_number" ON "tenant_a"."Accounts""#
        ));
        assert!(
            sql.create
                .contains(r#"CREATE SCHEMA IF NOT EXISTS "tenant_a""#)
        );
        assert!(!sql.create.contains("states_store"));
        assert!(
            sql.write_checked
                .contains(r#"INSERT INTO "tenant_a"."Accounts""#)
        );
    }
}
