-- Citus: the ownership tables of resources/ownership.sql, after it, on the coordinator;
-- idempotent. The owners table is distributed by `persistence_id` and colocated with
-- states_store, so that a fenced write, which on Citus locks the id's owner row and checks its
-- epoch, runs on the one shard of its id; the replicas table, a few rows read by claims, is a
-- reference table.

SELECT create_reference_table('states_store_replicas')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_dist_partition
    WHERE logicalrelid = 'states_store_replicas'::regclass
);

SELECT create_distributed_table('states_store_owners', 'persistence_id',
                                colocate_with => 'states_store')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_dist_partition
    WHERE logicalrelid = 'states_store_owners'::regclass
);
