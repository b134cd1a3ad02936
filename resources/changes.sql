-- The change feed of states_store (opt-in: `Config::change_feed(true)`): an additive migration.
-- Idempotent: safe to apply any number of times, to a new or an existing table, e.g.
-- `psql -f resources/durablestore_postgres.sql -f resources/changes.sql`. The crate applies
-- this same text in `CreateSchema` when the feed is enabled, with the configured schema and
-- table names substituted for `states_store` (and in the names derived from it).
--
-- states_store itself is not changed (no column, no index: its updates stay HOT). Each write
-- appends an entry to states_store_changes holding the ids it wrote (up to 1,000 per entry;
-- more make more entries), stamped with the id of the writing transaction
-- (`pg_current_xact_id()`), and sends one notification per transaction:
-- * the crate's own write statements log their ids themselves, in the same statement (they
--   begin with `/*durablestore:logged*/`), so its updates fire no row trigger and capture no
--   transition table. A crate statement that does not log itself (`/*durablestore:unlogged*/`,
--   from a store started before the feed was installed) is refused before it touches a row
--   (SQLSTATE DSF01); the store then sends its writes logged.
-- * other writers are caught by triggers: every inserted row (also each row of eGo's Go upsert,
--   `INSERT ... ON CONFLICT DO UPDATE`, which fires the insert trigger for every row it
--   proposes) is logged by a BEFORE INSERT row trigger; a plain UPDATE statement by another
--   client finds the rows its transaction wrote with one scan of the table at its end (no row
--   trigger on updates: even one that never fires costs every update a fetch of the old row);
--   every DELETE logs its rows through a statement trigger's transition table.
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
    logged BIGINT := 0;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        -- BEFORE INSERT, of a statement that does not log itself: this row's id. The statement
        -- is marked as caught, so its UPDATE statement trigger (an upsert's) does not scan.
        INSERT INTO states_store_changes (xid, n, ids)
        VALUES (pg_current_xact_id(), 1, ARRAY[NEW.persistence_id::text]);
        PERFORM set_config('durablestore.caught', 'on', TRUE);
        logged := 1;
    ELSIF TG_WHEN = 'BEFORE' THEN
        IF left(current_query(), 25) = '/*durablestore:unlogged*/' THEN
            RAISE EXCEPTION USING ERRCODE = 'DSF01',
                MESSAGE = format('%s has a change feed: the crate''s writes must log themselves', TG_RELID::regclass),
                HINT = 'durablestore-postgres sends this write again in its logged form';
        END IF;
        -- A statement starts: rows caught by an earlier statement are not this one's.
        PERFORM set_config('durablestore.caught', '', TRUE);
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        -- One insert for the usual statement (up to 1,000 rows); entries of 1,000 ids for more.
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
        -- AFTER a plain UPDATE statement by another client: the rows this transaction (or one
        -- of its subtransactions) wrote are the visible ones whose xmin is still in progress.
        -- An xmin is widened to its full transaction id next to this transaction's own; only
        -- ids from this transaction's on are asked about (the special ids below 3 never).
        INSERT INTO states_store_changes (xid, n, ids)
        SELECT pg_current_xact_id(), cardinality(a.ids[k + 1:k + 1000]), a.ids[k + 1:k + 1000]
        FROM (SELECT array_agg(s.persistence_id::text ORDER BY s.persistence_id) AS ids
              FROM (SELECT pg_current_xact_id()::text::bigint AS top) AS me,
                   states_store s,
                   LATERAL (SELECT me.top - 2147483648
                               + (s.xmin::text::bigint - me.top % 4294967296 + 6442450944) % 4294967296
                               AS xid) AS w
              WHERE CASE WHEN s.xmin::text::bigint >= 3 AND w.xid >= me.top
                    THEN pg_xact_status(w.xid::text::xid8) = 'in progress' ELSE FALSE END) a,
             generate_series(0, coalesce(cardinality(a.ids), 0) - 1, 1000) AS k;
        GET DIAGNOSTICS logged = ROW_COUNT;
    END IF;
    -- Sent at commit, once per transaction however many statements notify. A notifying
    -- commit takes a database-wide lock, so only one transaction at a time notifies: the
    -- others' changes are read on that notification or the next, or by polling.
    IF logged > 0 AND pg_try_advisory_xact_lock(hashtext('durablestore_changes_' || TG_RELID::text)) THEN
        PERFORM pg_notify('durablestore_changes_' || TG_RELID::text, '');
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END
$fn$;

DO
$do$
DECLARE
    installed BOOLEAN := EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                                 WHERE tgrelid = 'states_store'::regclass
                                   AND tgname = 'durablestore_changes_delete');
BEGIN
    -- The statement triggers with transition tables of an earlier version of this file,
    -- which every update paid for.
    DROP TRIGGER IF EXISTS durablestore_changes_insert ON states_store;
    DROP TRIGGER IF EXISTS durablestore_changes_update ON states_store;
    CREATE OR REPLACE TRIGGER durablestore_changes_start BEFORE INSERT OR UPDATE ON states_store
        FOR EACH STATEMENT
        WHEN (left(current_query(), 25) = '/*durablestore:unlogged*/'
              OR current_setting('durablestore.caught', TRUE) = 'on')
        EXECUTE FUNCTION states_store_changes_log();
    CREATE OR REPLACE TRIGGER durablestore_changes_row BEFORE INSERT ON states_store
        FOR EACH ROW
        WHEN (left(current_query(), 23) IS DISTINCT FROM '/*durablestore:logged*/')
        EXECUTE FUNCTION states_store_changes_log();
    CREATE OR REPLACE TRIGGER durablestore_changes_scan AFTER UPDATE ON states_store
        FOR EACH STATEMENT
        WHEN (left(current_query(), 23) IS DISTINCT FROM '/*durablestore:logged*/'
              AND current_setting('durablestore.caught', TRUE) IS DISTINCT FROM 'on')
        EXECUTE FUNCTION states_store_changes_log();
    CREATE OR REPLACE TRIGGER durablestore_changes_delete AFTER DELETE ON states_store
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION states_store_changes_log();
    IF NOT installed THEN
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
