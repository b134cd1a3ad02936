-- The change feed of states_store (opt-in: `Config::change_feed(true)`): an additive migration.
-- Idempotent: safe to apply any number of times, to a new or an existing table, e.g.
-- `psql -f resources/durablestore_postgres.sql -f resources/changes.sql`. The crate applies
-- this same text in `CreateSchema` when the feed is enabled, with the configured schema and
-- table names substituted for `states_store` (and in the names derived from it).
--
-- states_store itself is not changed (no column, no index: its updates stay HOT). Each
-- statement that inserts, updates or deletes rows of it appends one entry per row to
-- states_store_changes, in one INSERT per statement (statement-level triggers with transition
-- tables), stamped with the id of the writing transaction (`pg_current_xact_id()`), and sends
-- one notification per transaction. Rows written by any client are caught, also eGo's Go
-- store, whose upsert names only the six columns.
-- The feed delivers an entry only once its transaction id is below the xmin of the reading
-- statement's snapshot: every transaction that could still add an entry below it has ended.

CREATE TABLE IF NOT EXISTS states_store_changes
(
    xid            XID8    NOT NULL,
    persistence_id TEXT    COLLATE "C" NOT NULL,
    version_number BIGINT  NOT NULL,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE
);
-- In feed order, so that a page starts with a seek also inside one large transaction (the
-- entries of existing rows below are all of one). Not unique, which writes cost less: one
-- transaction that writes an id in two statements leaves two entries, read together.
CREATE INDEX IF NOT EXISTS states_store_changes_xid ON states_store_changes (xid, persistence_id);

CREATE OR REPLACE FUNCTION states_store_changes_log() RETURNS trigger
    LANGUAGE plpgsql AS
$fn$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO states_store_changes (xid, persistence_id, version_number, deleted)
        SELECT pg_current_xact_id(), persistence_id, version_number, TRUE FROM old_rows;
    ELSE
        INSERT INTO states_store_changes (xid, persistence_id, version_number, deleted)
        SELECT pg_current_xact_id(), persistence_id, version_number, FALSE FROM new_rows;
    END IF;
    -- Sent at commit, once per transaction however many statements notify. A notifying
    -- commit takes a database-wide lock, so only one transaction at a time notifies: the
    -- others' changes are read on that notification or the next, or by polling.
    IF FOUND AND pg_try_advisory_xact_lock(hashtext('durablestore_changes_' || TG_RELID::text)) THEN
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
        -- The rows already there: one entry each, in this transaction. The triggers' lock
        -- waited for every earlier writer, and catch every later one.
        INSERT INTO states_store_changes (xid, persistence_id, version_number)
        SELECT pg_current_xact_id(), persistence_id, version_number FROM states_store;
    END IF;
END
$do$;
