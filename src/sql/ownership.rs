//! The statements of ownership across replicas (see the registry's `ownership` module): the
//! tables of `resources/ownership.sql`, the lease of each replica, claims and releases of
//! ids, and the fenced forms of the write statements, which commit a row only while the
//! epoch it carries is still its owner row's.

use super::writes::{Log, Writes, one_row_forms};
use super::{COLUMNS, FeedSql, INPUT, Identifier, UPDATE_ALL, quote_name, without_comments};
use crate::config::Config;

/// The ownership tables, shipped in `resources/`: the one source of their definition.
pub(crate) const OWNERSHIP_DDL: &str = include_str!("../../resources/ownership.sql");

/// Distributing the ownership tables on Citus, shipped in `resources/`.
pub(crate) const OWNERSHIP_CITUS_DDL: &str = include_str!("../../resources/ownership_citus.sql");

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

/// The fenced forms of the write statements, on `t` with replicas table `r` (qualified,
/// quoted). A fenced row is written by an owned entity of a registered replica; a fenced
/// statement carries rows of one registration (`$7` replica, `$8` incarnation), locks its row
/// `FOR KEY SHARE` before it touches any state row, and writes nothing unless it is still
/// there. Ownership moves away from a replica
/// only through that row: a takeover from a replica whose lease ran out first deletes its
/// registration (which waits for the writes that hold it, and makes every later one fail),
/// and an entity releases its id only once none of its writes can still be running. So a
/// write of an old claim never commits after a newer claim on the id. One lock per statement,
/// not per row: renewals, which change no key, do not wait for writes.
#[derive(Debug)]
pub(crate) struct Fenced {
    /// Unlogged (`[0]`) and logged (`[1]`), as [`super::Sql::writes`].
    pub writes: [Writes; 2],
    /// The single-row insert, update and upsert fenced by the id's owner row and epoch
    /// instead (Citus), unlogged and logged.
    pub by_epoch: [[String; 3]; 2],
    /// The owner row of each id of `$1::text[]`: id, epoch, replica (NULL when released).
    pub owners_of: String,
    /// Whether registration `$1` (replica) / `$2` (incarnation) is still there.
    pub registered: String,
}

impl Fenced {
    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let t = format!("{}.{}", schema.quoted(), table.quoted());
        let (o, r) = tables(schema, table);
        // The registration is the statement's, not each row's: a batch is split by
        // registration before it is sent, so the check is one lock and one InitPlan, not a
        // probe per row (BENCHMARKS.md "Ownership across replicas" has both forms measured).
        let fence = format!(
            r#"fence AS MATERIALIZED (
    SELECT 1 FROM {r} WHERE replica = $7::text AND incarnation = $8::int8 FOR KEY SHARE
),
allowed AS ({INPUT}
    WHERE EXISTS (SELECT 1 FROM fence))"#
        );
        let one_fence = format!(
            "fence AS MATERIALIZED (SELECT 1 FROM {r} \
             WHERE replica = $7::text AND incarnation = $8::int8 FOR KEY SHARE)"
        );
        // On Citus the registration is a reference table row, whose locks Citus serializes
        // across its placements (deadlocks under load): there the fence is the id's owner row,
        // colocated with the state, locked with its epoch ($7).
        let epoch_fence = format!(
            "fence AS MATERIALIZED (SELECT 1 FROM {o} \
             WHERE persistence_id = $1::text AND epoch = $7::int8 FOR SHARE)"
        );
        let log = FeedSql::log_table(schema, table);
        let forms = Log::forms(&log, &t);
        let writes = forms.map(|log| {
            Writes::new(
                &t,
                (&fence, "allowed"),
                (Some(&one_fence), fenced_one_row(&t)),
                log,
            )
        });
        let by_epoch = forms.map(|log| one_row_forms(Some(&epoch_fence), fenced_one_row(&t), log));
        let owners_of = format!(
            "SELECT persistence_id::text, epoch, replica::text FROM {o} \
             WHERE persistence_id = ANY($1::text[])"
        );
        let registered = format!(
            "SELECT EXISTS (SELECT 1 FROM {r} WHERE replica = $1::text AND incarnation = $2::int8)"
        );
        Fenced {
            writes,
            by_epoch,
            owners_of,
            registered,
        }
    }
}

/// The single-row insert, update and upsert into `t`, each written only if the CTE `fence`
/// has a row.
fn fenced_one_row(t: &str) -> [String; 3] {
    let one = "$1::text, $2::int8, $3::bytea, $4::text, $5::int8, $6::int8";
    [
        format!(
            "INSERT INTO {t} ({COLUMNS}) SELECT {one} FROM fence \
             ON CONFLICT (persistence_id) DO NOTHING RETURNING persistence_id"
        ),
        format!(
            r#"UPDATE {t} SET version_number = $2::int8, state_payload = $3::bytea,
        state_manifest = $4::text, "timestamp" = $5::int8, shard_number = $6::int8
    WHERE persistence_id = $1::text AND version_number = $2::int8 - 1
      AND EXISTS (SELECT 1 FROM fence)
    RETURNING persistence_id"#
        ),
        format!(
            "INSERT INTO {t} AS s ({COLUMNS}) SELECT {one} FROM fence \
             ON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL} RETURNING s.persistence_id"
        ),
    ]
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
    /// Deletes the registrations whose lease has run out (after the writes that hold them):
    /// their replicas' ids can be taken over, and nothing they still send commits.
    pub revoke: String,
    /// Takes the replica name `$1` for incarnation `$2` with a lease of `$3` ms, unless
    /// another incarnation holds it (run after [`OwnershipSql::revoke`]); a row if it did.
    pub register: String,
    /// Extends the lease of `$1` incarnation `$2` to `$3` ms from now; a row if it is still
    /// this incarnation's.
    pub renew: String,
    /// Gives up the replica name `$1` of incarnation `$2`: its ids can be claimed at once.
    pub deregister: String,
    /// Claims the ids `$1::text[]` (distinct, sorted) for replica `$2` incarnation `$3` where
    /// no liveness needs judging: an id nobody owns, that was released, or that this
    /// registration owns, is claimed with a new epoch. One row per id: the id, and the epoch
    /// if claimed.
    pub claim: String,
    /// Takes over the ids `$1::text[]` (sorted) for replica `$2` incarnation `$3` whose
    /// owner's registration is gone, judged on owner rows this statement's snapshot sees (so
    /// their registrations, committed before them, are seen too) and only if the row still
    /// has that epoch. One row per id: the id, the epoch if taken, the owner otherwise (NULL
    /// if the owner row was not visible or was released meanwhile).
    pub take_over: String,
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
        let revoke = format!("DELETE FROM {r} WHERE lease_until <= now()");
        let register = format!(
            "INSERT INTO {r} AS r (replica, incarnation, lease_until) VALUES ($1::text, $2::int8, {lease}) \
             ON CONFLICT (replica) DO UPDATE SET lease_until = EXCLUDED.lease_until \
             WHERE r.incarnation = EXCLUDED.incarnation RETURNING 1"
        );
        let renew = format!(
            "UPDATE {r} SET lease_until = {lease} WHERE replica = $1::text AND incarnation = $2::int8 \
             RETURNING 1"
        );
        let deregister =
            format!("DELETE FROM {r} WHERE replica = $1::text AND incarnation = $2::int8");
        let claim = format!(
            r#"WITH claimed AS (
    INSERT INTO {o} AS o (persistence_id, replica, incarnation, epoch)
    SELECT id, $2::text, $3::int8, 1 FROM unnest($1::text[]) AS id
    ON CONFLICT (persistence_id) DO UPDATE
    SET replica = EXCLUDED.replica, incarnation = EXCLUDED.incarnation, epoch = o.epoch + 1
    WHERE o.replica IS NULL
       OR (o.replica = EXCLUDED.replica AND o.incarnation = EXCLUDED.incarnation)
    RETURNING o.persistence_id, o.epoch
)
SELECT i.id, c.epoch FROM unnest($1::text[]) AS i(id)
LEFT JOIN claimed c ON c.persistence_id = i.id"#
        );
        // A takeover judges liveness only on owner rows of its own snapshot: one that a
        // concurrent claim changed meanwhile (another epoch) is not taken.
        let take_over = format!(
            r#"WITH dead AS (
    SELECT w.persistence_id, w.epoch FROM {o} w
    WHERE w.persistence_id = ANY ($1::text[]) AND w.replica IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {r} r
                      WHERE r.replica = w.replica AND r.incarnation = w.incarnation)
),
taken AS (
    UPDATE {o} AS o SET replica = $2::text, incarnation = $3::int8, epoch = o.epoch + 1
    FROM dead WHERE o.persistence_id = dead.persistence_id AND o.epoch = dead.epoch
    RETURNING o.persistence_id, o.epoch
)
SELECT i.id, t.epoch, w.replica::text
FROM unnest($1::text[]) AS i(id)
LEFT JOIN taken t ON t.persistence_id = i.id
LEFT JOIN {o} w ON t.persistence_id IS NULL AND w.persistence_id = i.id"#
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
            revoke,
            register,
            renew,
            deregister,
            claim,
            take_over,
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
        for text in [
            &sql.create_distributed,
            &sql.claim,
            &sql.release,
            &sql.take_over,
        ] {
            assert!(
                !text.contains("states_store") && !text.contains("--"),
                "{text}"
            );
        }
    }

    #[test]
    fn every_fenced_write_locks_its_registration_and_checks_the_incarnation() {
        let (schema, table) = names();
        let fenced = Fenced::for_names(&schema, &table);
        for text in fenced.writes.iter().flat_map(Writes::texts) {
            assert!(
                text.contains(r#"FROM "tenant_a"."Accounts_replicas""#),
                "{text}"
            );
            assert!(text.contains("FOR KEY SHARE"), "{text}");
            assert!(text.contains("incarnation = "), "{text}");
            // Only the `allowed` rows are written; the fence never copies the payloads.
            assert!(
                !text.contains("JOIN input"),
                "the fence reads ids and epochs: {text}"
            );
        }
    }
}
