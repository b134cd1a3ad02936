-- Ownership of entities across replicas (durablestore-postgres): which replica runs each
-- entity, and whether that replica is alive. Next to states_store, which it never changes.
-- A registry with ownership (`RegistryBuilder::ownership`) applies this file when it first
-- registers, and `DurableStore::create_ownership_schema` applies it on demand; idempotent.
-- On Citus, resources/ownership_citus.sql follows it.
--
-- states_store_replicas: one row per registered replica, renewed every third of its lease.
-- Expiry is judged in database time (now()), never by a replica's clock. `incarnation` is new
-- with every registration and never reused. Every write of an owned entity locks its
-- replica's row FOR KEY SHARE and commits only while the row (that incarnation) is there; a
-- replica whose lease ran out is taken over by deleting its row, which waits for its writes
-- in flight and makes every later one fail. Renewals change no key: they never wait for writes.
CREATE TABLE IF NOT EXISTS states_store_replicas
(
    replica     VARCHAR(255) PRIMARY KEY,
    incarnation BIGINT       NOT NULL,
    lease_until TIMESTAMPTZ  NOT NULL
);

-- states_store_owners: one row per entity ever owned. `replica` and `incarnation` name the
-- owner (NULL once released); `epoch` grows by one with every claim. An id is claimed only if
-- nobody owns it, its owner released it, its owner's registration is gone, or it is the
-- claimer's own. Room on each page keeps claims HOT updates.
CREATE TABLE IF NOT EXISTS states_store_owners
(
    persistence_id VARCHAR(255) PRIMARY KEY,
    replica        VARCHAR(255),
    incarnation    BIGINT,
    epoch          BIGINT       NOT NULL
) WITH (fillfactor = 80);
