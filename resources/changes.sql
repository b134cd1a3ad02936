-- The change feed of states_store (opt-in: `Config::change_feed(true)`): an additive migration.
-- Idempotent: safe to apply any number of times, to a new or an existing table, e.g.
-- `psql -f resources/durablestore_postgres.sql -f resources/changes.sql`. The crate applies
-- this same text in `CreateSchema` when the feed is enabled, with the configured schema and
-- table names substituted for `states_store` (and in the names derived from it).
--
-- states_store itself is not changed (no column, no index: its updates stay HOT). Each
-- statement that inserts, updates or deletes rows of it appends one entry to
-- states_store_changes holding the ids it wrote (up to 1,000 per entry; more make more
-- entries), stamped with the id of the writing transaction (`pg_current_xact_id()`), by
-- statement-level triggers with transition tables, and sends one notification per
-- transaction. Rows written by any client are caught, also eGo's Go store, whose upsert names
-- only the six columns. One entry per statement, not per row: the log costs a row and an
-- index entry per batch.
-- The feed delivers an entry only once its transaction id is below the xmin of the reading
-- statement's snapshot: every transaction that could still add an entry below it has ended.
-- Within a transaction, entries are in `seq` order, ids in array order.

-- The per-row log of an earlier version of this file is set aside, then its entries are moved
-- into the current log, grouped by transaction, in the order it delivered them.
DO
$do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
               WHERE attrelid = to_regclass('states_store_changes')
                 AND attname = 'persistence_id' AND NOT attisdropped) THEN
        ALTER TABLE states_store_changes RENAME TO states_store_changes_v1;
    END IF;
END
$do$;

CREATE TABLE IF NOT EXISTS states_store_changes
(
    xid      XID8     NOT NULL,
    seq      BIGINT   GENERATED ALWAYS AS IDENTITY,
    -- How many ids were written (the length of `ids`, read without reading `ids`).
    n        INTEGER  NOT NULL,
    -- The ids written; an element set to NULL was compacted away (positions never move).
    ids      TEXT[]   NOT NULL,
    -- The versions deleted, for deletions (NULL otherwise: the row itself is read).
    versions BIGINT[],
    deleted  BOOLEAN  NOT NULL DEFAULT FALSE
) WITH (toast_tuple_target = 8160);

DO
$do$
BEGIN
    IF to_regclass('states_store_changes_v1') IS NOT NULL THEN
        INSERT INTO states_store_changes (xid, n, ids, versions, deleted)
        SELECT xid, count(*), array_agg(persistence_id ORDER BY persistence_id),
               CASE WHEN deleted THEN array_agg(version_number ORDER BY persistence_id) END,
               deleted
        FROM (SELECT *, (row_number() OVER (PARTITION BY xid ORDER BY persistence_id) - 1) / 1000 AS part
              FROM states_store_changes_v1) e
        GROUP BY xid, part, deleted
        ORDER BY xid, min(persistence_id);
        -- Its index goes with it.
        DROP TABLE states_store_changes_v1;
    END IF;
END
$do$;

-- In feed order: a page starts with a seek, also inside one large transaction.
CREATE INDEX IF NOT EXISTS states_store_changes_xid ON states_store_changes (xid, seq);

CREATE OR REPLACE FUNCTION states_store_changes_log() RETURNS trigger
    LANGUAGE plpgsql AS
$fn$
DECLARE
    logged BIGINT;
BEGIN
    -- One insert for the usual statement (up to 1,000 rows); entries of 1,000 ids for more.
    IF TG_OP = 'DELETE' THEN
        INSERT INTO states_store_changes (xid, n, ids, versions, deleted)
        SELECT pg_current_xact_id(), count(*), array_agg(persistence_id),
               array_agg(version_number), TRUE
        FROM old_rows HAVING count(*) BETWEEN 1 AND 1000;
        GET DIAGNOSTICS logged = ROW_COUNT;
        IF logged = 0 THEN
            INSERT INTO states_store_changes (xid, n, ids, versions, deleted)
            SELECT pg_current_xact_id(), count(*), array_agg(persistence_id),
                   array_agg(version_number), TRUE
            FROM (SELECT persistence_id, version_number,
                         (row_number() OVER () - 1) / 1000 AS part FROM old_rows) e
            GROUP BY part HAVING (SELECT count(*) FROM old_rows) > 1000;
            GET DIAGNOSTICS logged = ROW_COUNT;
        END IF;
    ELSE
        INSERT INTO states_store_changes (xid, n, ids)
        SELECT pg_current_xact_id(), count(*), array_agg(persistence_id)
        FROM new_rows HAVING count(*) BETWEEN 1 AND 1000;
        GET DIAGNOSTICS logged = ROW_COUNT;
        IF logged = 0 THEN
            INSERT INTO states_store_changes (xid, n, ids)
            SELECT pg_current_xact_id(), count(*), array_agg(persistence_id)
            FROM (SELECT persistence_id, (row_number() OVER () - 1) / 1000 AS part FROM new_rows) e
            GROUP BY part HAVING (SELECT count(*) FROM new_rows) > 1000;
            GET DIAGNOSTICS logged = ROW_COUNT;
        END IF;
    END IF;
    -- Sent at commit, once per transaction however many statements notify. A notifying
    -- commit takes a database-wide lock, so only one transaction at a time notifies: the
    -- others' changes are read on that notification or the next, or by polling.
    IF logged > 0 AND pg_try_advisory_xact_lock(hashtext('durablestore_changes_' || TG_RELID::text)) THEN
        PERFORM pg_notify('durablestore_changes_' || TG_RELID::text, '');
    END IF;
    RETURN NULL;
END
$fn$;

DO
$do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                   WHERE tgrelid = 'states_store'::regclass
                     AND tgname = 'durablestore_changes_insert') THEN
        CREATE TRIGGER durablestore_changes_insert AFTER INSERT ON states_store
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION states_store_changes_log();
        CREATE TRIGGER durablestore_changes_update AFTER UPDATE ON states_store
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION states_store_changes_log();
        CREATE TRIGGER durablestore_changes_delete AFTER DELETE ON states_store
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION states_store_changes_log();
        -- The rows already there: entries of 1,000 ids, in this transaction. The triggers'
        -- lock waited for every earlier writer, and catch every later one.
        INSERT INTO states_store_changes (xid, n, ids)
        SELECT pg_current_xact_id(), count(*), array_agg(persistence_id ORDER BY persistence_id)
        FROM (SELECT persistence_id, (row_number() OVER (ORDER BY persistence_id) - 1) / 1000 AS part
              FROM states_store) e
        GROUP BY part
        ORDER BY part;
    END IF;
END
$do$;
