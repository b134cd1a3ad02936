//! Listings and purges: keyset pages of live ids and states, and the removal of old
//! tombstones. Each is one statement on a pooled connection, not batched.

use tokio_postgres::types::Type;

use super::{Repository, read_row};
use crate::error::{Error, InvalidInput};
use crate::sql::Stmt;
use crate::state::DurableState;

/// The largest page a listing returns.
pub(crate) const MAX_PAGE: usize = 10_000;

impl Repository {
    /// Up to `limit` ids after `after`, tombstones excluded.
    pub(crate) async fn list_ids(&self, after: &str, limit: usize) -> Result<Vec<String>, Error> {
        let limit = page_limit(limit)?;
        let client = self.checkout().await?;
        let rows = client
            .query(
                &self.sql,
                Stmt::ListIds,
                &[(&after, Type::TEXT), (&limit, Type::INT8)],
            )
            .await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(Error::database))
            .collect()
    }

    /// Up to `limit` states after `after`, of `shard` unless `None`, tombstones excluded.
    pub(crate) async fn current_states(
        &self,
        shard: Option<u64>,
        after: &str,
        limit: usize,
    ) -> Result<Vec<DurableState>, Error> {
        let limit = page_limit(limit)?;
        // A shard beyond BIGINT cannot be stored, so no row has it.
        let Ok(shard) = shard.map(i64::try_from).transpose() else {
            return Ok(Vec::new());
        };
        let client = self.checkout().await?;
        let rows = client
            .query(
                &self.sql,
                Stmt::CurrentStates,
                &[
                    (&after, Type::TEXT),
                    (&shard, Type::INT8),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        rows.iter().map(|row| read_row(row)?.decode()).collect()
    }

    /// Removes the tombstones stamped before `before` (Unix ms); how many were removed.
    pub(crate) async fn purge_deleted(&self, before: i64) -> Result<u64, Error> {
        let client = self.checkout().await?;
        let rows = client
            .query(&self.sql, Stmt::PurgeDeleted, &[(&before, Type::INT8)])
            .await?;
        let purged: i64 = match rows.first() {
            Some(row) => row.try_get(0).map_err(Error::database)?,
            None => 0,
        };
        Ok(u64::try_from(purged).unwrap_or(0))
    }
}

/// Checks a page size; as the `LIMIT` parameter.
pub(crate) fn page_limit(limit: usize) -> Result<i64, Error> {
    match limit {
        1..=MAX_PAGE => Ok(limit as i64),
        _ => Err(InvalidInput::LimitOutOfRange {
            limit,
            max: MAX_PAGE,
        }
        .into()),
    }
}
