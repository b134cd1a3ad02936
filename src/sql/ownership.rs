//! The statements of ownership across replicas (see the registry's `ownership` module): the
//! tables of `resources/ownership.sql`, the lease of each replica, claims and releases of
//! ids, and the fenced forms of the write statements, which commit a row only while the
//! epoch it carries is still its owner row's.

use super::{COLUMNS, Identifier, UPDATE_ALL, checked_write, quote_name, without_comments};
use crate::config::Config;

/// The ownership tables, shipped in `resources/`: the one source of their definition.
pub(crate) const OWNERSHIP_DDL: &str = include_str!("../../resources/ownership.sql");

/// Distributing the ownership tables on Citus, shipped in `resources/`.
pub(crate) const OWNERSHIP_CITUS_DDL: &str = include_str!("../../resources/ownership_citus.sql");

/// The input rows of a fenced multi-row write: the six columns, then the epoch each row's
/// write was claimed with (NULL for a row that is not fenced).
const FENCED_INPUT: &str = r#"SELECT * FROM UNNEST($1::text[], $2::int8[], $3::bytea[], $4::text[], $5::int8[], $6::int8[], $7::int8[])
        WITH ORDINALITY AS i(persistence_id, version_number, state_payload, state_manifest, "timestamp", shard_number, epoch, ord)"#;

/// The longest names the derived tables may be built from: `{table}_replicas` must still be
/// an identifier (63 bytes).
pub(crate) const MAX_OWNED_TABLE_LEN: usize = 63 - "_replicas".len();

/// The qualified names of the two ownership tables of `table`.
fn tables(schema: &Identifier, table: &Identifier) -> (String, String) {
    let q = |suffix: &str| {
        format!(
            "{}.{}",
            schema.quoted(),
            quote_name(&format!("{}{suffix}", table.as_str()))
        )
    };
    (q("_owners"), q("_replicas"))
}

/// The fenced forms of the write statements, on `t` with owners table `o` (qualified, quoted).
/// The owner rows of the fenced input rows are locked `FOR SHARE` before any state row is
/// touched, and only rows whose owner row still has their epoch are written: a claim that
/// committed first changed the epoch (so the row is not written), and one that comes later
/// waits for this statement's transaction.
#[derive(Debug)]
pub(crate) struct Fenced {
    pub write_checked: String,
    pub write_unchecked: String,
    pub insert_one: String,
    pub update_one: String,
    pub upsert_one: String,
    /// The owner row of each id of `$1::text[]`: id, epoch, replica (NULL when released).
    pub owners_of: String,
}

impl Fenced {
    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let t = format!("{}.{}", schema.quoted(), table.quoted());
        let (o, _) = tables(schema, table);
        // Locked in id order (the order of every writer and claim): no deadlock between them.
        let fence = format!(
            r#"input AS ({FENCED_INPUT}),
fence AS MATERIALIZED (
    SELECT o.persistence_id FROM {o} o JOIN input i ON o.persistence_id = i.persistence_id
    WHERE o.epoch = i.epoch ORDER BY o.persistence_id FOR SHARE OF o
),
allowed AS MATERIALIZED (
    SELECT i.* FROM input i
    WHERE i.epoch IS NULL OR i.persistence_id IN (SELECT f.persistence_id FROM fence f)
)"#
        );
        let write_checked = checked_write(&t, &fence, "allowed");
        let write_unchecked = format!(
            r#"WITH {fence},
written AS (
    INSERT INTO {t} AS s ({COLUMNS})
    SELECT i.persistence_id, i.version_number, i.state_payload, i.state_manifest, i."timestamp", i.shard_number
    FROM allowed i
    ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL}
    RETURNING s.persistence_id
)
SELECT count(*), array_agg(persistence_id::text) FROM written"#
        );
        let one_fence = format!(
            "WITH fence AS MATERIALIZED (SELECT 1 FROM {o} \
             WHERE persistence_id = $1::text AND epoch = $7::int8 FOR SHARE)\n"
        );
        let one = "$1::text, $2::int8, $3::bytea, $4::text, $5::int8, $6::int8";
        let insert_one = format!(
            "{one_fence}INSERT INTO {t} ({COLUMNS}) SELECT {one} FROM fence \
             ON CONFLICT (persistence_id) DO NOTHING RETURNING persistence_id"
        );
        let update_one = format!(
            r#"{one_fence}UPDATE {t} SET version_number = $2::int8, state_payload = $3::bytea,
        state_manifest = $4::text, "timestamp" = $5::int8, shard_number = $6::int8
    WHERE persistence_id = $1::text AND version_number = $2::int8 - 1
      AND EXISTS (SELECT 1 FROM fence)
    RETURNING persistence_id"#
        );
        let upsert_one = format!(
            "{one_fence}INSERT INTO {t} AS s ({COLUMNS}) SELECT {one} FROM fence \
             ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL} RETURNING s.persistence_id"
        );
        let owners_of = format!(
            "SELECT persistence_id::text, epoch, replica::text FROM {o} \
             WHERE persistence_id = ANY($1::text[])"
        );
        Fenced {
            write_checked,
            write_unchecked,
            insert_one,
            update_one,
            upsert_one,
            owners_of,
        }
    }
}

/// The statements of a registry's ownership, built once from the store's schema and table.
#[derive(Debug)]
pub(crate) struct OwnershipSql {
    /// Whether both tables exist (a role without the right to create them can still use them).
    pub exists: String,
    /// `resources/ownership.sql` for this table, after an advisory lock of its own.
    pub create: String,
    /// [`OwnershipSql::create`], then `resources/ownership_citus.sql`.
    pub create_distributed: String,
    /// Takes the replica name `$1` for incarnation `$2` with a lease of `$3` ms, unless
    /// another incarnation holds it with a lease that has not run out; a row if it did.
    pub register: String,
    /// Extends the lease of `$1` incarnation `$2` to `$3` ms from now; a row if it is still
    /// this incarnation's.
    pub renew: String,
    /// Gives up the replica name `$1` of incarnation `$2`: its ids can be claimed at once.
    pub deregister: String,
    /// `replica/incarnation` of every replica whose lease has not run out.
    pub live: String,
    /// Claims the ids `$1::text[]` (distinct, sorted) for replica `$2` incarnation `$3`, where
    /// `$4::text[]` are the live replicas: an id nobody owns, owns with a lease that ran out,
    /// or that this incarnation owns, is claimed with a new epoch. One row per id: the id,
    /// the epoch if claimed, the owner otherwise (NULL if the owner row was not visible).
    pub claim: String,
    /// Releases the ids `$1::text[]` claimed with the epochs `$2::int8[]` (sorted by id), if
    /// still so claimed; how many.
    pub release: String,
}

impl OwnershipSql {
    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let t = format!("{}.{}", schema.quoted(), table.quoted());
        let (o, r) = tables(schema, table);
        let rename = |sql: &str| {
            without_comments(sql)
                // Longest first: the derived names contain the table's.
                .replace("states_store_replicas", "\u{1}")
                .replace("states_store_owners", "\u{2}")
                .replace(Config::DEFAULT_TABLE, &t)
                .replace('\u{1}', &r)
                .replace('\u{2}', &o)
        };
        let lock_key = format!("{}.{}#ownership", schema.as_str(), table.as_str());
        let create = format!(
            "SELECT pg_advisory_xact_lock(hashtext('{lock_key}'));\n{}",
            rename(OWNERSHIP_DDL)
        );
        let create_distributed = format!("{create}\n{}", rename(OWNERSHIP_CITUS_DDL));
        let exists =
            format!("SELECT to_regclass('{o}') IS NOT NULL AND to_regclass('{r}') IS NOT NULL");
        let lease = "now() + $3::int8 * interval '1 millisecond'";
        // "The held lease ran out" is said without `now()` in the `ON CONFLICT` clause (which
        // Citus refuses there, on its reference table): the new lease ends `$3` ms after now.
        let register = format!(
            "INSERT INTO {r} AS r (replica, incarnation, lease_until) VALUES ($1::text, $2::int8, {lease}) \
             ON CONFLICT (replica) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
             lease_until = EXCLUDED.lease_until \
             WHERE r.incarnation = EXCLUDED.incarnation \
             OR EXCLUDED.lease_until - r.lease_until >= $3::int8 * interval '1 millisecond' \
             RETURNING 1"
        );
        let renew = format!(
            "UPDATE {r} SET lease_until = {lease} WHERE replica = $1::text AND incarnation = $2::int8 \
             RETURNING 1"
        );
        let deregister =
            format!("DELETE FROM {r} WHERE replica = $1::text AND incarnation = $2::int8");
        let live = format!(
            "SELECT replica::text || '/' || incarnation::text FROM {r} WHERE lease_until > now()"
        );
        let claim = format!(
            r#"WITH claimed AS (
    INSERT INTO {o} AS o (persistence_id, replica, incarnation, epoch)
    SELECT id, $2::text, $3::int8, 1 FROM unnest($1::text[]) AS id
    ON CONFLICT (persistence_id) DO UPDATE
    SET replica = EXCLUDED.replica, incarnation = EXCLUDED.incarnation, epoch = o.epoch + 1
    WHERE o.replica IS NULL
       OR (o.replica = EXCLUDED.replica AND o.incarnation = EXCLUDED.incarnation)
       OR NOT (o.replica::text || '/' || o.incarnation::text = ANY ($4::text[]))
    RETURNING o.persistence_id, o.epoch
)
SELECT i.id, c.epoch, w.replica::text
FROM unnest($1::text[]) AS i(id)
LEFT JOIN claimed c ON c.persistence_id = i.id
LEFT JOIN {o} w ON c.persistence_id IS NULL AND w.persistence_id = i.id"#
        );
        let release = format!(
            "WITH released AS (UPDATE {o} AS o SET replica = NULL, incarnation = NULL \
             FROM unnest($1::text[], $2::int8[]) AS r(id, epoch) \
             WHERE o.persistence_id = r.id AND o.epoch = r.epoch RETURNING 1) \
             SELECT count(*) FROM released"
        );
        OwnershipSql {
            exists,
            create,
            create_distributed,
            register,
            renew,
            deregister,
            live,
            claim,
            release,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (Identifier, Identifier) {
        (
            Identifier::parse("schema", "tenant_a").unwrap(),
            Identifier::parse("table", "Accounts").unwrap(),
        )
    }

    #[test]
    fn the_ownership_tables_are_named_after_the_configured_table() {
        let (schema, table) = names();
        let sql = OwnershipSql::for_names(&schema, &table);
        for expected in [
            r#"CREATE TABLE IF NOT EXISTS "tenant_a"."Accounts_replicas""#,
            r#"CREATE TABLE IF NOT EXISTS "tenant_a"."Accounts_owners""#,
        ] {
            assert!(sql.create.contains(expected), "{expected}");
        }
        let citus = sql.create_distributed.strip_prefix(&sql.create).unwrap();
        assert!(citus.contains(r#"create_reference_table('"tenant_a"."Accounts_replicas"')"#));
        assert!(citus.contains(r#"colocate_with => '"tenant_a"."Accounts"'"#));
        for text in [&sql.create_distributed, &sql.claim, &sql.release, &sql.live] {
            assert!(
                !text.contains("states_store") && !text.contains("--"),
                "{text}"
            );
        }
    }

    #[test]
    fn every_fenced_write_locks_the_owner_row_and_checks_the_epoch() {
        let (schema, table) = names();
        let fenced = Fenced::for_names(&schema, &table);
        for text in [
            &fenced.write_checked,
            &fenced.write_unchecked,
            &fenced.insert_one,
            &fenced.update_one,
            &fenced.upsert_one,
        ] {
            assert!(
                text.contains(r#"FROM "tenant_a"."Accounts_owners""#),
                "{text}"
            );
            assert!(text.contains("FOR SHARE"), "{text}");
            assert!(text.contains("epoch = "), "{text}");
            // The input is read once, by the `allowed` rows; only those are written.
            assert!(text.matches("FROM input i").count() <= 1, "{text}");
        }
    }
}
