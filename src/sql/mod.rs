//! Every SQL text the store sends, built once from the configured schema and table.
//!
//! Nothing else in the crate formats SQL. Identifiers are validated ([`Identifier`]) and
//! double-quoted; all values travel as bind parameters.

use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Checked, Config, VersionCheck};
use crate::error::{InvalidInput, truncate};
use crate::state::TOMBSTONE_MANIFEST;

mod feed;
mod ownership;
mod writes;

pub(crate) use self::feed::FeedSql;
use self::ownership::Fenced;
pub(crate) use self::ownership::{MAX_OWNED_TABLE_LEN, OwnershipSql};
pub(crate) use self::writes::FEED_INSTALLED;
pub(crate) use self::writes::Rows;
use self::writes::{Log, Writes};

/// PostgreSQL's limit on identifier length (NAMEDATALEN - 1).
const MAX_IDENTIFIER_LEN: usize = 63;

/// A validated SQL identifier (schema or table name), stored unquoted.
///
/// Only plain identifiers are accepted: a letter or `_`, then letters, digits, `_` or `$`, at
/// most 63 bytes. They are always double-quoted in SQL, so case is preserved.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Identifier(String);

impl Identifier {
    pub(crate) fn parse(kind: &'static str, name: &str) -> Result<Self, InvalidInput> {
        let reject = |reason| InvalidInput::InvalidIdentifier {
            kind,
            name: truncate(name, 100),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(reject("it is empty")),
            Some(c) if !(c.is_alphabetic() || c == '_') => {
                return Err(reject("it must start with a letter or `_`"));
            }
            Some(_) => {}
        }
        if name.len() > MAX_IDENTIFIER_LEN {
            return Err(reject("it is longer than 63 bytes"));
        }
        if !chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            return Err(reject(
                "only letters, digits, `_` and `$` are allowed (no quotes, dots or spaces)",
            ));
        }
        Ok(Identifier(name.to_owned()))
    }

    /// The identifier as SQL text, double-quoted. Validation rules out `"` so no escaping is
    /// needed, but it is done anyway so quoting never depends on validation.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The DDL shipped in `resources/`, the one source of the table's definition.
pub(crate) const DDL: &str = include_str!("../../resources/durablestore_postgres.sql");

/// Distributing the table on Citus, shipped in `resources/`: the one source of that statement.
pub(crate) const CITUS_DDL: &str = include_str!("../../resources/citus.sql");

pub(crate) const COLUMNS: &str =
    r#"persistence_id, version_number, state_payload, state_manifest, "timestamp", shard_number"#;

/// Input rows of a write, one array per column; `ord` numbers them from 1.
pub(crate) const INPUT: &str = r#"SELECT * FROM UNNEST($1::text[], $2::int8[], $3::bytea[], $4::text[], $5::int8[], $6::int8[])
        WITH ORDINALITY AS i(persistence_id, version_number, state_payload, state_manifest, "timestamp", shard_number, ord)"#;

pub(crate) const UPDATE_ALL: &str = r#"version_number = EXCLUDED.version_number,
        state_payload = EXCLUDED.state_payload,
        state_manifest = EXCLUDED.state_manifest,
        "timestamp" = EXCLUDED."timestamp",
        shard_number = EXCLUDED.shard_number"#;

/// The tail of a version-checked [`Sql::values_write`].
const VALUES_CHECKED: &str = r#"
ON CONFLICT (persistence_id) DO UPDATE SET version_number = abs(EXCLUDED.version_number),
    state_payload = EXCLUDED.state_payload,
    state_manifest = EXCLUDED.state_manifest,
    "timestamp" = EXCLUDED."timestamp",
    shard_number = EXCLUDED.shard_number
WHERE s.version_number = abs(EXCLUDED.version_number) - 1
RETURNING s.persistence_id,
    CASE WHEN s.version_number < 0
    THEN ('durablestore: no stored version to update to version ' || (-s.version_number)::text)::int8
    ELSE s.version_number END"#;

/// The statements run with bind parameters (and so prepared per connection).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stmt {
    WriteChecked = 0,
    WriteUnchecked = 1,
    Select = 2,
    ListIds = 3,
    CurrentStates = 4,
    PurgeDeleted = 5,
    InsertOne = 6,
    UpdateOne = 7,
    UpsertOne = 8,
    WriteCheckedFenced = 9,
    WriteUncheckedFenced = 10,
    InsertOneFenced = 11,
    UpdateOneFenced = 12,
    UpsertOneFenced = 13,
    InsertOneByEpoch = 14,
    UpdateOneByEpoch = 15,
    UpsertOneByEpoch = 16,
    WriteCheckedNew = 17,
    WriteCheckedUpdates = 18,
    WriteCheckedNewFenced = 19,
    WriteCheckedUpdatesFenced = 20,
}

impl Stmt {
    pub(crate) const COUNT: usize = 21;

    /// The version-checked multi-row write of `rows`, fenced or not.
    pub(crate) fn checked(rows: Rows, fenced: bool) -> Stmt {
        match (rows, fenced) {
            (Rows::Mixed, false) => Stmt::WriteChecked,
            (Rows::New, false) => Stmt::WriteCheckedNew,
            (Rows::Updates, false) => Stmt::WriteCheckedUpdates,
            (Rows::Mixed, true) => Stmt::WriteCheckedFenced,
            (Rows::New, true) => Stmt::WriteCheckedNewFenced,
            (Rows::Updates, true) => Stmt::WriteCheckedUpdatesFenced,
        }
    }
}

/// Asks whether the `citus` extension is installed in the database (see
/// [`Distribution::Detect`](crate::Distribution::Detect)).
pub(crate) const DETECT_CITUS: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')";

/// The most rows one multi-row `VALUES` write carries: 6 parameters each, well under the
/// protocol's 65,535, and a statement text of about 100 KB.
pub(crate) const MAX_VALUES_ROWS: usize = 1_000;

/// The statements of one store.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The write statements, unlogged (`[0]`) and logging into the change feed's log (`[1]`).
    ///
    /// Version-checked writes ([`Writes::write_checked`], one statement per kind of batch,
    /// [`Rows`]): version 1 of a new id is inserted (`ON CONFLICT DO NOTHING`: an existing row
    /// is never touched); version *v* > 1 updates the row only `WHERE version_number = v - 1`.
    /// Under READ COMMITTED the update re-checks that condition against the latest committed
    /// row after waiting for a concurrent writer, so a concurrent write can never be
    /// overwritten. A multi-row write returns one row: how many rows were written and their ids
    /// (a row a trigger or row-level policy suppressed is missing); the others are classified
    /// with a fresh [`Sql::select`]. The single-row forms return the id they wrote.
    pub writes: [Writes; 2],
    /// Whether the writes are sent logged: set once the table showed a change feed (its
    /// triggers refused an unlogged write, [`FEED_INSTALLED`]), and never cleared.
    logs: AtomicBool,
    /// The stored rows of the ids in `$1::text[]`.
    pub select: String,
    /// Up to `$2` ids after `$1`, in id order, tombstones excluded: an index scan of the
    /// primary key.
    pub list_ids: String,
    /// Up to `$3` rows after `$1`, in id order, of shard `$2` unless it is NULL, tombstones
    /// excluded: an index scan of the primary key, the shard a filter.
    pub current_states: String,
    /// Removes the tombstones stamped before `$1` (Unix ms); returns how many.
    pub purge_deleted: String,
    /// Each id of `$1::text[]` with the Citus shard that holds it, computed on the
    /// coordinator from its metadata (no worker is asked).
    pub shard_of: String,
    /// Whether Citus' catalog lists the table as hash-distributed (the only kind whose ids
    /// [`Sql::shard_of`] places): a definite answer where that lookup failed (42P01 where
    /// there is no Citus catalog).
    pub is_distributed: String,
    /// The DDL for this schema and table; one implicit transaction, serialized by an advisory
    /// lock so concurrent creators don't race in the catalog.
    pub create: String,
    /// [`Sql::create`], then the table distributed by `persistence_id` unless Citus already
    /// knows it (as `resources/citus.sql` does).
    pub create_distributed: String,
    /// `INSERT INTO t AS s (columns) VALUES`, the head of [`Sql::values_write`].
    values_head: String,
    /// The tail of an unchecked [`Sql::values_write`].
    values_unchecked: String,
    /// The forms of the writes that carry an ownership epoch per row, and the owner rows
    /// that explain a fenced row not written.
    pub fenced: Fenced,
}

impl Sql {
    pub(crate) fn new(checked: &Checked) -> Self {
        Self::for_names(&checked.schema, &checked.table)
    }

    pub(crate) fn text(&self, which: Stmt) -> &str {
        let form = usize::from(self.logs.load(Ordering::Relaxed));
        let (plain, fenced) = (&self.writes[form], &self.fenced.writes[form]);
        match which {
            Stmt::WriteChecked => &plain.write_checked[Rows::Mixed as usize],
            Stmt::WriteCheckedNew => &plain.write_checked[Rows::New as usize],
            Stmt::WriteCheckedUpdates => &plain.write_checked[Rows::Updates as usize],
            Stmt::WriteUnchecked => &plain.write_unchecked,
            Stmt::Select => &self.select,
            Stmt::ListIds => &self.list_ids,
            Stmt::CurrentStates => &self.current_states,
            Stmt::PurgeDeleted => &self.purge_deleted,
            Stmt::InsertOne => &plain.insert_one,
            Stmt::UpdateOne => &plain.update_one,
            Stmt::UpsertOne => &plain.upsert_one,
            Stmt::WriteCheckedFenced => &fenced.write_checked[Rows::Mixed as usize],
            Stmt::WriteCheckedNewFenced => &fenced.write_checked[Rows::New as usize],
            Stmt::WriteCheckedUpdatesFenced => &fenced.write_checked[Rows::Updates as usize],
            Stmt::WriteUncheckedFenced => &fenced.write_unchecked,
            Stmt::InsertOneFenced => &fenced.insert_one,
            Stmt::UpdateOneFenced => &fenced.update_one,
            Stmt::UpsertOneFenced => &fenced.upsert_one,
            Stmt::InsertOneByEpoch => &self.fenced.by_epoch[form][0],
            Stmt::UpdateOneByEpoch => &self.fenced.by_epoch[form][1],
            Stmt::UpsertOneByEpoch => &self.fenced.by_epoch[form][2],
        }
    }

    /// Whether the writes are sent in their logged form.
    pub(crate) fn logs(&self) -> bool {
        self.logs.load(Ordering::Relaxed)
    }

    /// From now on the writes are sent logged: the table has a change feed.
    pub(crate) fn log_writes(&self) {
        self.logs.store(true, Ordering::Relaxed);
    }

    /// A write of `rows` rows with distinct ids as one multi-row `INSERT … VALUES … ON
    /// CONFLICT DO UPDATE`, the form Citus splits by shard and runs on its workers in
    /// parallel. Row *k* (from 0) takes parameters `6k + 1` to `6k + 6`, in the column order
    /// of [`StateRow`](crate::state::StateRow). Returns the id and the version of each row it
    /// inserted or updated.
    ///
    /// Version-checked, a row of version 1 is sent as `1` and one of version *v* > 1 as *−v*:
    /// the update sets `abs(v)` and applies only over the stored version `abs(v) − 1`. An id
    /// with no stored row is inserted with the version as sent, so the one insert the rule
    /// forbids, of a version above 1, holds a negative version, and `RETURNING` turns that
    /// into an error (22P02, a failed cast of a message that says so): the statement fails as
    /// a whole before it commits, no other session ever sees the row, and the caller writes
    /// the rows one by one, where each is judged alone.
    pub(crate) fn values_write(&self, rows: usize, check: VersionCheck) -> String {
        let tail = match check {
            VersionCheck::Sequential => VALUES_CHECKED,
            VersionCheck::Unchecked => &self.values_unchecked,
        };
        // `($1::text, $2::int8, $3::bytea, $4::text, $5::int8, $6::int8), ` per row.
        let mut text = String::with_capacity(self.values_head.len() + tail.len() + rows * 72);
        text.push_str(&self.values_head);
        for row in 0..rows {
            let p = row * 6;
            if row > 0 {
                text.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(
                text,
                "(${}::text, ${}::int8, ${}::bytea, ${}::text, ${}::int8, ${}::int8)",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            );
        }
        text.push_str(tail);
        text
    }

    pub(crate) fn for_names(schema: &Identifier, table: &Identifier) -> Self {
        let t = format!("{}.{}", schema.quoted(), table.quoted());
        let log = FeedSql::log_table(schema, table);
        let writes = Log::forms(&log, &t).map(|log| Writes::plain(&t, log));
        let select = format!("SELECT {COLUMNS} FROM {t} WHERE persistence_id = ANY($1::text[])");
        let live = format!("state_manifest <> '{TOMBSTONE_MANIFEST}'");
        let list_ids = format!(
            "SELECT persistence_id FROM {t} WHERE persistence_id > $1::text AND {live} \
             ORDER BY persistence_id LIMIT $2::int8"
        );
        let current_states = format!(
            "SELECT {COLUMNS} FROM {t} WHERE persistence_id > $1::text AND {live} \
             AND ($2::int8 IS NULL OR shard_number = $2::int8) ORDER BY persistence_id LIMIT $3::int8"
        );
        let purge_deleted = format!(
            "WITH purged AS (DELETE FROM {t} WHERE state_manifest = '{TOMBSTONE_MANIFEST}' \
             AND \"timestamp\" < $1::int8 RETURNING 1) SELECT count(*) FROM purged"
        );

        let ddl = without_comments(DDL).replace(Config::DEFAULT_TABLE, &t);
        // The lock key is derived from the qualified name so different tables don't wait for
        // each other; `hashtext` is stable across sessions.
        let lock_key = format!("{}.{}", schema.as_str(), table.as_str());
        // `public` always exists, and creating it needs a privilege many users lack even with
        // IF NOT EXISTS, so it is not created.
        let create_schema = if schema.as_str() == Config::DEFAULT_SCHEMA {
            String::new()
        } else {
            format!("CREATE SCHEMA IF NOT EXISTS {};\n", schema.quoted())
        };
        let create =
            format!("SELECT pg_advisory_xact_lock(hashtext('{lock_key}'));\n{create_schema}{ddl}");
        let values_head = format!("INSERT INTO {t} AS s ({COLUMNS}) VALUES ");
        let values_unchecked = format!(
            "\nON CONFLICT (persistence_id) DO UPDATE SET {UPDATE_ALL}\n\
             RETURNING s.persistence_id, s.version_number"
        );
        let shard_of = format!(
            "SELECT i, get_shard_id_for_distribution_column('{t}'::regclass, i) \
             FROM unnest($1::text[]) AS i"
        );
        let is_distributed = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '{t}'::regclass \
             AND partmethod = 'h')"
        );
        let distribute = without_comments(CITUS_DDL).replace(Config::DEFAULT_TABLE, &t);
        let create_distributed = format!("{create}\n{distribute}");
        Sql {
            writes,
            logs: AtomicBool::new(false),
            select,
            list_ids,
            current_states,
            purge_deleted,
            shard_of,
            is_distributed,
            create,
            create_distributed,
            values_head,
            values_unchecked,
            fenced: Fenced::for_names(schema, table),
        }
    }
}

/// A derived name (`{table}_changes`), quoted as an [`Identifier`] when it is one; longer
/// names are refused when the config is checked, so this fallback only keeps quoting total.
pub(crate) fn quote_name(name: &str) -> String {
    Identifier::parse("name", name)
        .map(|i| i.quoted())
        .unwrap_or_else(|_| format!("\"{}\"", name.replace('"', "\"\"")))
}

/// The SQL of a file of `resources/`, without its comment lines.
pub(crate) fn without_comments(sql: &str) -> String {
    sql.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_is_rewritten_for_the_configured_names() {
        let config = Config::new("h", 1, "u", "", "d")
            .schema("tenant_a")
            .table("Accounts");
        let sql = Sql::new(&config.check(crate::config::PoolOwner::Store).unwrap());
        assert!(
            sql.create
                .contains(r#"CREATE TABLE IF NOT EXISTS "tenant_a"."Accounts""#)
        );
        // eGo's current DDL: no version index, and room on each page for HOT updates.
        assert!(!sql.create.contains("INDEX"));
        assert!(sql.create.contains(") WITH (fillfactor = "));
        assert!(
            sql.create
                .contains(r#"CREATE SCHEMA IF NOT EXISTS "tenant_a""#)
        );
        assert!(!sql.create.contains("states_store"));
        assert!(
            sql.writes[0].write_checked[Rows::Mixed as usize]
                .contains(r#"INSERT INTO "tenant_a"."Accounts""#)
        );
    }

    #[test]
    fn a_batch_of_one_kind_is_written_without_the_other_part() {
        assert_eq!(Rows::of(&[1, 1]), Rows::New);
        assert_eq!(Rows::of(&[2, 7]), Rows::Updates);
        assert_eq!(Rows::of(&[1, 2]), Rows::Mixed);
        let sql = Sql::for_names(
            &Identifier::parse("schema", "s").unwrap(),
            &Identifier::parse("table", "t").unwrap(),
        );
        let (insert, update) = (r#"INSERT INTO "s"."t" "#, r#"UPDATE "s"."t" "#);
        for writes in &sql.writes {
            let [mixed, new, updates] = &writes.write_checked;
            assert!(mixed.contains(insert) && mixed.contains(update));
            assert!(new.contains(insert) && !new.contains(update));
            assert!(!updates.contains(insert) && updates.contains(update));
            for text in [mixed, new, updates, &writes.write_unchecked] {
                assert!(
                    text.contains("CASE WHEN count(*) < cardinality($1::text[])"),
                    "{text}"
                );
            }
        }
    }

    /// The change feed's triggers tell the writes apart by their first bytes; a logged write
    /// logs into the table's own log and reads `notified`, so its notification is sent.
    #[test]
    fn every_write_is_marked_and_its_logged_form_logs_itself() {
        let sql = Sql::for_names(
            &Identifier::parse("schema", "s").unwrap(),
            &Identifier::parse("table", "t").unwrap(),
        );
        for (form, marker) in [writes::UNLOGGED, writes::LOGGED].into_iter().enumerate() {
            let plain = &sql.writes[form];
            let fenced = &sql.fenced.writes[form];
            let texts = [plain, fenced].into_iter().flat_map(Writes::texts);
            for text in texts.chain(&sql.fenced.by_epoch[form]) {
                assert!(text.starts_with(marker), "{text}");
                let logs = text.contains(r#"INSERT INTO "s"."t_changes" (xid, n, ids)"#)
                    && text.contains("(SELECT count(*) FROM notified)")
                    && text.contains(r#"'"s"."t"'::regclass"#);
                assert_eq!(logs, form == 1, "{text}");
            }
        }
    }

    #[test]
    fn citus_ddl_distributes_the_configured_table_by_id() {
        let config = Config::new("h", 1, "u", "", "d")
            .schema("tenant_a")
            .table("Accounts");
        let sql = Sql::new(&config.check(crate::config::PoolOwner::Store).unwrap());
        let distributed = sql.create_distributed.strip_prefix(&sql.create).unwrap();
        assert!(
            distributed
                .contains(r#"create_distributed_table('"tenant_a"."Accounts"', 'persistence_id')"#)
        );
        assert!(distributed.contains(r#"logicalrelid = '"tenant_a"."Accounts"'::regclass"#));
        assert!(!distributed.contains("states_store") && !distributed.contains("--"));
    }

    #[test]
    fn values_writes_number_six_parameters_per_row() {
        let config = Config::new("h", 1, "u", "", "d");
        let sql = Sql::new(&config.check(crate::config::PoolOwner::Store).unwrap());
        let text = sql.values_write(3, VersionCheck::Sequential);
        assert!(text.contains(
            "($13::text, $14::int8, $15::bytea, $16::text, $17::int8, $18::int8)\nON CONFLICT"
        ));
        assert!(!text.contains("$19"));
        assert!(text.contains("WHERE s.version_number = abs(EXCLUDED.version_number) - 1"));
        let unchecked = sql.values_write(1, VersionCheck::Unchecked);
        assert!(!unchecked.contains("WHERE") && unchecked.contains("RETURNING"));
    }

    #[test]
    fn identifiers_are_quoted_and_reject_anything_but_plain_names() {
        assert_eq!(
            Identifier::parse("t", "MyTable").unwrap().quoted(),
            "\"MyTable\""
        );
        for bad in [
            "",
            "x\"; DROP TABLE y; --",
            "a.b",
            "1abc",
            "a\0b",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(
                    Identifier::parse("table", bad),
                    Err(InvalidInput::InvalidIdentifier { kind: "table", .. })
                ),
                "{bad:?}"
            );
        }
    }
}
