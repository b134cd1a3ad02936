-- Ownership of entities across replicas (durablestore-postgres): which replica runs each
-- entity, and whether that replica is alive. Next to states_store, which it never changes.
-- A registry with ownership (`RegistryBuilder::ownership`) applies this file when it first
-- registers, and `DurableStore::create_ownership_schema` applies it on demand; idempotent.
-- On Citus, resources/ownership_citus.sql follows it.
--
-- states_store_replicas: one row per live replica, renewed every third of its lease. Expiry
-- is judged in database time (now()), never by a replica's clock. `incarnation` tells apart
-- two processes that used the same replica name.
CREATE TABLE IF NOT EXISTS states_store_replicas
(
    replica     VARCHAR(255) PRIMARY KEY,
    incarnation BIGINT       NOT NULL,
    lease_until TIMESTAMPTZ  NOT NULL
);

-- states_store_owners: one row per entity ever owned. `replica` and `incarnation` name the
-- owner (NULL once released); `epoch` grows by one with every claim and is never reused, and
-- every write of an owned entity carries the epoch of its claim: a write whose epoch is not
-- the row's does not commit. The write locks this row FOR SHARE, so a claim racing a write
-- waits for it or makes it fail. Room on each page keeps claims HOT updates.
CREATE TABLE IF NOT EXISTS states_store_owners
(
    persistence_id VARCHAR(255) PRIMARY KEY,
    replica        VARCHAR(255),
    incarnation    BIGINT,
    epoch          BIGINT       NOT NULL
) WITH (fillfactor = 80);
