-- Citus: the durable state store distributed by `persistence_id`, on the coordinator.
-- Run it once after resources/durablestore_postgres.sql; idempotent. The crate runs this same
-- text (configured names substituted) in `CreateSchema` when the `citus` extension is installed.
--
-- Every statement on one id is then routed to one shard; a batch of writes is split by shard
-- and runs on the workers in parallel. Rows already in the table are copied to the shards.
--
-- Shard count: the session's `citus.shard_count` (Citus's default is 32). A batch of writes
-- becomes one task per shard it touches, so on a small cluster fewer shards make every batch
-- cheaper (measured in BENCHMARKS.md): `SET citus.shard_count = 8;` before this file, or
-- `ALTER DATABASE <db> SET citus.shard_count = 8` before `CreateSchema`, or later
-- `SELECT alter_distributed_table('states_store', shard_count := 8, cascade_to_colocated := false);`
-- More shards leave more room to add workers and rebalance.
--
-- Tables you add later that are read or written with a state should be colocated with it,
-- distributed by the same id, e.g.:
--   SELECT create_distributed_table('entity_events', 'persistence_id',
--                                   colocate_with => 'states_store');

SELECT create_distributed_table('states_store', 'persistence_id')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'states_store'::regclass
);
