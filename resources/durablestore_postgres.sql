-- DDL of the durable state store: one row per entity, holding its latest state.
-- Idempotent: safe to apply any number of times, e.g. `psql -f resources/durablestore_postgres.sql`.
-- The crate applies this same text when asked to create the table (CreateSchema), with the
-- configured schema and table names substituted for `states_store`.
--
-- The columns are eGo's (its Go store reads and writes this table as is). Like eGo's current
-- DDL there is no index on `version_number`: nothing reads by version, and an index on a column
-- every write changes makes every update non-HOT. The fillfactor leaves room on each page for
-- the next version of its rows, so an update can stay on its page (HOT) without touching the
-- primary key; it is a storage parameter, so a table created by eGo's DDL works the same.
-- Keep it so: an index added to this table must be on columns that do not change on every write.
-- An existing table is left as it is: see the guide's states chapter (src/guide/states.md)
-- for the one-line migration.

CREATE TABLE IF NOT EXISTS states_store
(
    persistence_id VARCHAR(255) PRIMARY KEY,
    version_number BIGINT       NOT NULL,
    state_payload  BYTEA        NOT NULL,
    state_manifest VARCHAR(255) NOT NULL,
    timestamp      BIGINT       NOT NULL,
    shard_number   BIGINT       NOT NULL
) WITH (fillfactor = 80);
