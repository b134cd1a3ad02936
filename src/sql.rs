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

/// The statements run with bind parameters (and so prepared per connection).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stmt {
    WriteChecked = 0,
    WriteUnchecked = 1,
    Select = 2,
}

impl Stmt {
    pub(crate) const COUNT: usize = 3;
}

/// The statements of one store.
#[derive(Debug)]
pub(crate) struct Sql {
    /// Version-checked write of N rows with distinct ids, in one statement and one commit.
    ///
    /// Version 1 of a new id is inserted (`ON CONFLICT DO NOTHING`: an existing row is never
    /// touched); version *v* > 1 updates the row only `WHERE version_number = v - 1`. Under
    /// READ COMMITTED the update re-checks that condition against the latest committed row after
    /// waiting for a concurrent writer, so a concurrent write can never be overwritten. Returns
    /// the ids that were written; the others are classified with a fresh [`Sql::select`].
    pub write_checked: String,
    /// Last-writer-wins upsert of N rows with distinct ids. Returns the ids that were written:
    /// a row a trigger or row-level policy suppressed is missing.
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

    pub(crate) fn text(&self, which: Stmt) -> &str {
        match which {
            Stmt::WriteChecked => &self.write_checked,
            Stmt::WriteUnchecked => &self.write_unchecked,
            Stmt::Select => &self.select,
        }
    }

    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let t = format!("{}.{}", schema.quoted(), table.quoted());
        let write_checked = format!(
            r#"WITH input AS ({INPUT}),
inserted AS (
    INSERT INTO {t} ({COLUMNS})
    SELECT i.persistence_id, i.version_number, i.state_payload, i.state_manifest, i."timestamp", i.shard_number
    FROM input i WHERE i.version_number = 1
    ON CONFLICT (persistence_id) DO NOTHING
    RETURNING persistence_id
),
updated AS (
    UPDATE {t} AS s SET version_number = i.version_number,
        state_payload = i.state_payload,
        state_manifest = i.state_manifest,
        "timestamp" = i."timestamp",
        shard_number = i.shard_number
    FROM input i
    WHERE i.version_number > 1
      AND s.persistence_id = i.persistence_id
      AND s.version_number = i.version_number - 1
    RETURNING s.persistence_id
)
SELECT persistence_id FROM inserted UNION ALL SELECT persistence_id FROM updated"#
        );
        let write_unchecked = format!(
            r#"INSERT INTO {t} AS s ({COLUMNS})
SELECT i.persistence_id, i.version_number, i.state_payload, i.state_manifest, i."timestamp", i.shard_number
FROM ({INPUT}) i
ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL}
RETURNING s.persistence_id"#
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
