//! Writes as multi-row `VALUES` statements, the form that suits a Citus distributed table
//! ([`Distribution::Citus`](crate::Distribution::Citus)).
//!
//! Citus splits the rows of an `INSERT … VALUES` by shard and sends each worker its part in
//! parallel, where the single-server statement (an `INSERT … SELECT` from arrays) would have
//! all rows pulled through the coordinator. The version rule is the `WHERE` of the
//! `ON CONFLICT DO UPDATE`, and an insert the rule forbids fails the statement (see
//! [`Sql::values_write`](crate::sql::Sql)).

use std::collections::HashSet;

use tokio_postgres::types::{ToSql, Type};

use super::Repository;
use crate::config::{Distribution, VersionCheck};
use crate::error::Error;
use crate::pool::PooledClient;
use crate::sql::DETECT_CITUS;
use crate::state::StateRow;

impl Repository {
    /// Whether batches of writes go as multi-row `VALUES`: as configured, or, with
    /// [`Distribution::Detect`], as the server said the first time it was asked.
    pub(super) async fn uses_values(&self, client: &PooledClient) -> Result<bool, Error> {
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
