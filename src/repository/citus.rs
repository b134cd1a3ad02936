//! The statements that suit a Citus distributed table
//! ([`Distribution::Citus`](crate::Distribution::Citus)), and finding out whether it is one.
//!
//! Writes: Citus splits the rows of an `INSERT … VALUES` by shard and sends each worker its
//! part in parallel, where the single-server statement (an `INSERT … SELECT` from arrays)
//! would have all rows pulled through the coordinator. The version rule is the `WHERE` of the
//! `ON CONFLICT DO UPDATE`, and an insert the rule forbids fails the statement (see
//! [`Sql::values_write`](crate::sql::Sql)).
//!
//! Reads: one `= ANY` over many shards sends the whole array to every shard it touches. The
//! ids of a batch are grouped by shard instead (the coordinator says which), and each group is
//! a single-shard read, all pipelined on the batch's connection.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::Repository;
use crate::config::{Distribution, VersionCheck};
use crate::error::Error;
use crate::pool::PooledClient;
use crate::sql::{DETECT_CITUS, Stmt};
use crate::state::StateRow;

impl Repository {
    /// Whether the table is taken to be distributed by Citus (batches of writes go as
    /// multi-row `VALUES`, batches of reads by shard): as configured, or, with
    /// [`Distribution::Detect`], as the server said the first time it was asked.
    pub(super) async fn on_citus(&self, client: &PooledClient) -> Result<bool, Error> {
        match self.distribution {
            Distribution::SingleServer => Ok(false),
            Distribution::Citus => Ok(true),
            Distribution::Detect => {
                if let Some(&known) = self.citus.get() {
                    return Ok(known);
                }
                let citus = citus_installed(client).await?;
                if citus {
                    tracing::info!(
                        "the citus extension is installed: batches of writes go as multi-row VALUES"
                    );
                }
                Ok(*self.citus.get_or_init(|| citus))
            }
        }
    }

    /// Whether `CreateSchema` distributes the table: where Citus is installed, unless the store
    /// is told the table is on a single server.
    pub(super) async fn distributes(&self, client: &PooledClient) -> Result<bool, Error> {
        match self.distribution {
            Distribution::SingleServer => Ok(false),
            _ => citus_installed(client).await,
        }
    }

    /// Writes rows with distinct ids (at most [`MAX_VALUES_ROWS`](crate::sql::MAX_VALUES_ROWS))
    /// as one multi-row `VALUES` statement; whether each row was written, in order. If this
    /// fails, nothing was written.
    pub(super) async fn write_values(
        &self,
        client: &PooledClient,
        rows: &[&StateRow],
    ) -> Result<Vec<bool>, Error> {
        let checked = self.version_check == VersionCheck::Sequential;
        // A version above 1 goes negative, so an insert the rule forbids shows itself.
        let versions: Vec<i64> = rows
            .iter()
            .map(|row| match row.version_number {
                v if checked && v > 1 => -v,
                v => v,
            })
            .collect();
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(rows.len() * 6);
        for (row, version) in rows.iter().zip(&versions) {
            params.extend([
                (&row.persistence_id as &(dyn ToSql + Sync), Type::TEXT),
                (version, Type::INT8),
                (&row.state_payload, Type::BYTEA),
                (&row.state_manifest, Type::TEXT),
                (&row.timestamp, Type::INT8),
                (&row.shard_number, Type::INT8),
            ]);
        }
        let text = self.sql.values_write(rows.len(), self.version_check);
        let returned = client.query_text(&text, &params).await?;
        let mut written = HashSet::with_capacity(returned.len());
        for row in &returned {
            written.insert(row.try_get::<_, &str>(0).map_err(Error::database)?);
        }
        Ok(rows
            .iter()
            .map(|row| written.contains(row.persistence_id.as_str()))
            .collect())
    }

    /// The stored rows of `ids` (distinct), read shard by shard: one single-shard statement
    /// per shard, pipelined. A table Citus does not distribute (a local table on the
    /// coordinator) is read with one statement, from then on without asking again, once the
    /// catalog said so.
    pub(super) async fn read_by_shard(
        &self,
        client: &PooledClient,
        ids: &[&str],
    ) -> Result<Vec<Row>, Error> {
        let all: [(&(dyn ToSql + Sync), Type); 1] = [(&ids, Type::TEXT_ARRAY)];
        let read_all = || client.query(&self.sql, Stmt::Select, &all);
        if self.not_distributed.load(Ordering::Relaxed) {
            return read_all().await;
        }
        let placed = match client.query_text(&self.sql.shard_of, &all).await {
            Ok(placed) => placed,
            // Only a definite answer switches reads by shard off for good: the catalog says the
            // table is not distributed, or there is no Citus catalog at all. Anything else (a
            // broken connection, a shutdown, a cancel) fails this batch, and the next batch
            // asks again.
            Err(error @ Error::Database { .. }) => {
                if self.is_distributed(client).await? == Some(false) {
                    self.not_distributed.store(true, Ordering::Relaxed);
                    return read_all().await;
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let mut by_shard: HashMap<i64, Vec<&str>> = HashMap::new();
        for row in &placed {
            let id: &str = row.try_get(0).map_err(Error::database)?;
            let shard: i64 = row.try_get(1).map_err(Error::database)?;
            by_shard.entry(shard).or_default().push(id);
        }
        if by_shard.len() <= 1 {
            return read_all().await;
        }
        let groups: Vec<Vec<&str>> = by_shard.into_values().collect();
        let params: Vec<[(&(dyn ToSql + Sync), Type); 1]> = groups
            .iter()
            .map(|group| [(group as &(dyn ToSql + Sync), Type::TEXT_ARRAY)])
            .collect();
        let reads = params
            .iter()
            .map(|group| client.query(&self.sql, Stmt::Select, group));
        let mut rows = Vec::with_capacity(ids.len());
        for read in join_all(reads).await {
            rows.extend(read?);
        }
        Ok(rows)
    }

    /// Whether Citus' catalog lists the table as hash-distributed: `Some(false)` when it does
    /// not (a local or reference table reads with one statement), or when the server has no
    /// Citus catalog; `None` when the catalog lists it (so the failure that led here was not
    /// about distribution). Errors other than a missing catalog are returned.
    async fn is_distributed(&self, client: &PooledClient) -> Result<Option<bool>, Error> {
        match client.query_text(&self.sql.is_distributed, &[]).await {
            Ok(rows) => {
                let listed = rows
                    .first()
                    .map(|row| row.try_get::<_, bool>(0))
                    .transpose()
                    .map_err(Error::database)?
                    .unwrap_or(false);
                Ok((!listed).then_some(false))
            }
            Err(error)
                if matches!(
                    error.code(),
                    Some(&SqlState::UNDEFINED_TABLE | &SqlState::UNDEFINED_FUNCTION)
                ) =>
            {
                Ok(Some(false))
            }
            Err(error) => Err(error),
        }
    }
}

/// Whether the `citus` extension is installed in the database.
async fn citus_installed(client: &PooledClient) -> Result<bool, Error> {
    let rows = client.query_text(DETECT_CITUS, &[]).await?;
    Ok(rows
        .first()
        .map(|row| row.try_get::<_, bool>(0))
        .transpose()
        .map_err(Error::database)?
        .unwrap_or(false))
}
