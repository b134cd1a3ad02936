//! The statement forms of a write: a lone row as a single-row statement, several as one
//! statement over arrays (`UNNEST`); each plain or fenced (see [`super::fence`]). Citus'
//! multi-row `VALUES` form is in [`super::citus`].

use std::collections::HashMap;

use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::Repository;
use super::columns::Column;
use super::fence::WriteRow;
use crate::config::VersionCheck;
use crate::error::Error;
use crate::pool::PooledClient;
use crate::sql::{Rows, Stmt};
use crate::state::StateRow;

impl Repository {
    /// A lone write (an idle store) takes the plain single-row statement: less for the server
    /// to plan and run than the array form. It returns the id if it wrote it. A fenced row
    /// takes the registration as two more parameters, or with `by_epoch` (Citus: a
    /// single-shard statement on the colocated owner row) its claim's epoch as one.
    pub(super) async fn apply_one(
        &self,
        client: &PooledClient,
        write: &WriteRow,
        by_epoch: bool,
    ) -> Result<Vec<bool>, Error> {
        let row = &write.row;
        let fence = write.fence.as_ref();
        let form = match self.version_check {
            VersionCheck::Sequential if row.version_number == 1 => 0,
            VersionCheck::Sequential => 1,
            VersionCheck::Unchecked => 2,
        };
        let (statement, extra) = match fence {
            None => ([Stmt::InsertOne, Stmt::UpdateOne, Stmt::UpsertOne][form], 0),
            Some(_) if by_epoch => (
                [
                    Stmt::InsertOneByEpoch,
                    Stmt::UpdateOneByEpoch,
                    Stmt::UpsertOneByEpoch,
                ][form],
                1,
            ),
            Some(_) => (
                [
                    Stmt::InsertOneFenced,
                    Stmt::UpdateOneFenced,
                    Stmt::UpsertOneFenced,
                ][form],
                2,
            ),
        };
        let replica: Option<&str> = fence.map(|f| &*f.replica);
        let incarnation: Option<i64> = fence.map(|f| f.incarnation);
        let epoch: Option<i64> = fence.map(|f| f.epoch);
        let seventh: (&(dyn ToSql + Sync), Type) = if by_epoch {
            (&epoch, Type::INT8)
        } else {
            (&replica, Type::TEXT)
        };
        let params: [(&(dyn ToSql + Sync), Type); 8] = [
            (&row.persistence_id, Type::TEXT),
            (&row.version_number, Type::INT8),
            (&row.state_payload, Type::BYTEA),
            (&row.state_manifest, Type::TEXT),
            (&row.timestamp, Type::INT8),
            (&row.shard_number, Type::INT8),
            seventh,
            (&incarnation, Type::INT8),
        ];
        let written = client
            .query(&self.sql, statement, &params[..6 + extra])
            .await?;
        Ok(vec![!written.is_empty()])
    }

    /// Rows as one statement over arrays (`UNNEST`), which takes their row locks in the
    /// arrays' order.
    pub(super) async fn apply_arrays(
        &self,
        client: &PooledClient,
        writes: &[&WriteRow],
    ) -> Result<Vec<bool>, Error> {
        let rows: Vec<&StateRow> = writes.iter().map(|w| &w.row).collect();
        let ids = Column::of(&rows, |r| r.persistence_id.as_str());
        let versions = Column::of(&rows, |r| r.version_number);
        let payloads = Column::of(&rows, |r| r.state_payload.as_slice());
        let manifests = Column::of(&rows, |r| r.state_manifest.as_str());
        let timestamps = Column::of(&rows, |r| r.timestamp);
        let shards = Column::of(&rows, |r| r.shard_number);
        // A fenced statement carries the rows of one registration (see `by_registration`).
        let fence = writes.iter().find_map(|w| w.fence.as_ref());
        let fenced = fence.is_some();
        let replica: Option<&str> = fence.map(|f| &*f.replica);
        let incarnation: Option<i64> = fence.map(|f| f.incarnation);
        let params: [(&(dyn ToSql + Sync), Type); 8] = [
            (&ids, Type::TEXT_ARRAY),
            (&versions, Type::INT8_ARRAY),
            (&payloads, Type::BYTEA_ARRAY),
            (&manifests, Type::TEXT_ARRAY),
            (&timestamps, Type::INT8_ARRAY),
            (&shards, Type::INT8_ARRAY),
            (&replica, Type::TEXT),
            (&incarnation, Type::INT8),
        ];
        let statement = match (self.version_check, fenced) {
            (VersionCheck::Sequential, fenced) => Stmt::checked(Rows::of(&versions.0), fenced),
            (VersionCheck::Unchecked, false) => Stmt::WriteUnchecked,
            (VersionCheck::Unchecked, true) => Stmt::WriteUncheckedFenced,
        };
        // The fenced forms take the registration as two more parameters.
        let params = if fenced { &params[..] } else { &params[..6] };
        let result = client.query(&self.sql, statement, params).await?;
        Ok(written_of(&ids.0, result.first()))
    }
}

/// Which of `ids` a multi-row write statement wrote, from its one result row: the count of
/// rows written, and their ids (read only when some were not written). A missing or unreadable
/// result reads as nothing written, so each row is explained by a fresh read.
fn written_of(ids: &[&str], result: Option<&Row>) -> Vec<bool> {
    let Some(result) = result else {
        return vec![false; ids.len()];
    };
    let count: i64 = result.try_get(0).unwrap_or(0);
    if usize::try_from(count).is_ok_and(|count| count == ids.len()) {
        return vec![true; ids.len()];
    }
    let mut is_written = vec![false; ids.len()];
    let written: Vec<&str> = result
        .try_get::<_, Option<Vec<&str>>>(1)
        .ok()
        .flatten()
        .unwrap_or_default();
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for id in written {
        if let Some(&i) = index.get(id) {
            is_written[i] = true;
        }
    }
    is_written
}
