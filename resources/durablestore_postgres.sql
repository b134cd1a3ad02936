-- DDL of the durable state store: one row per entity, holding its latest state.
-- Idempotent: safe to apply any number of times, e.g. `psql -f resources/durablestore_postgres.sql`.
-- The crate applies this same text when asked to create the table (CreateSchema), with the
-- configured schema and table names substituted for `states_store` and its index name.

CREATE TABLE IF NOT EXISTS states_store
(
    persistence_id VARCHAR(255) PRIMARY KEY,
    version_number BIGINT       NOT NULL,
    state_payload  BYTEA        NOT NULL,
    state_manifest VARCHAR(255) NOT NULL,
    timestamp      BIGINT       NOT NULL,
    shard_number   BIGINT       NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_states_store_version_number ON states_store (version_number);
