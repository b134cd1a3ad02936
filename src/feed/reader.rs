//! [`Feed`]: the feed's statements on a store's connections: installing it, reading a page,
//! compacting the log.

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::Type;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Change, ChangePage, Offset};
use crate::config::{Checked, Distribution};
use crate::error::Error;
use crate::pool::{Connections, PooledClient};
use crate::repository::page_limit;
use crate::sql::{DETECT_CITUS, FeedSql};
use crate::state::StateRow;

/// The change feed of one store: its statements, its connections, and how to listen.
#[derive(Debug)]
pub(crate) struct Feed {
    connections: Connections,
    sql: FeedSql,
    distribution: Distribution,
    pub(super) poll_interval: Duration,
    /// Where to open the listening connection; `None` behind a transaction-mode pooler.
    pub(super) listen: Option<ListenTo>,
}

/// The connection settings of the listening connection.
#[derive(Clone)]
pub(super) struct ListenTo {
    pub(super) pg: tokio_postgres::Config,
    pub(super) tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for ListenTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection settings hold the password: only whether TLS is on.
        f.debug_struct("ListenTo")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub(crate) fn new(connections: Connections, checked: &Checked) -> Self {
        let config = &checked.config;
        let listen = (!config.transaction_pooling).then(|| {
            let mut pg = config.pg.clone();
            pg.ssl_mode(config.ssl_mode.negotiation());
            ListenTo {
                pg,
                tls: checked.tls.clone(),
            }
        });
        Feed {
            connections,
            sql: FeedSql::new(checked),
            distribution: config.distribution,
            poll_interval: config.change_poll_interval,
            listen,
        }
    }

    /// Refuses, before anything is created, a table that `CreateSchema` would distribute with
    /// Citus: transaction ids are per node there.
    pub(crate) async fn refuse_distributed(&self) -> Result<(), Error> {
        if self.distribution == Distribution::SingleServer {
            return Ok(());
        }
        let client = self.connections.get().await?;
        let rows = client.query_text(DETECT_CITUS, &[]).await?;
        let citus: bool = match rows.first() {
            Some(row) => row.try_get(0).map_err(Error::database)?,
            None => false,
        };
        if citus {
            return Err(Error::InvalidConfig(
                "the change feed cannot follow a Citus distributed table: transaction ids are \
                 per node there, so no snapshot says which commits are complete (for a table \
                 Citus keeps local, set Distribution::SingleServer)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Applies `resources/changes.sql` to the table (which exists).
    pub(crate) async fn install(&self) -> Result<(), Error> {
        self.connections
            .get()
            .await?
            .batch_execute(&self.sql.create)
            .await
    }

    /// The table's oid, which names its notification channel.
    pub(super) async fn channel(&self) -> Result<String, Error> {
        let client = self.connections.get().await?;
        let rows = client.query_text(&self.sql.channel, &[]).await?;
        let oid: i64 = match rows.first() {
            Some(row) => row.try_get(0).map_err(Error::database)?,
            None => 0,
        };
        Ok(format!("durablestore_changes_{oid}"))
    }

    /// Up to `limit` log entries after `from`, as changes: see
    /// [`DurableStore::changes_page`](crate::DurableStore::changes_page).
    pub(crate) async fn page(&self, from: &Offset, limit: usize) -> Result<ChangePage, Error> {
        let limit = page_limit(limit)?;
        let client: PooledClient = self.connections.get().await?;
        let xid = from.xid_text();
        let (seq, pos) = from.seq_and_pos();
        let rows = client
            .query_text(
                &self.sql.page,
                &[
                    (&xid, Type::TEXT),
                    (&seq, Type::INT8),
                    (&pos, Type::INT8),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        let mut next = *from;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let (offset, change) = read_entry(row)?;
            next = offset;
            changes.extend(change);
        }
        Ok(ChangePage {
            changes: last_per_id(changes),
            next,
        })
    }

    /// Removes the log entries that a later entry of the same id makes redundant; how many.
    pub(crate) async fn compact(&self) -> Result<u64, Error> {
        let client = self.connections.get().await?;
        let rows = client.query_text(&self.sql.compact, &[]).await?;
        let removed: i64 = match rows.first() {
            Some(row) => row.try_get(0).map_err(Error::database)?,
            None => 0,
        };
        Ok(u64::try_from(removed).unwrap_or(0))
    }
}

/// One page row: the entry's offset, and the change it delivers, if any. An entry whose row is
/// gone delivers nothing unless it is the deletion itself: every deletion has its own entry,
/// with the version deleted, which was the row's latest.
fn read_entry(row: &Row) -> Result<(Offset, Option<Change>), Error> {
    let xid: String = row.try_get(0).map_err(Error::database)?;
    let seq: i64 = row.try_get(1).map_err(Error::database)?;
    let pos: i64 = row.try_get(2).map_err(Error::database)?;
    let persistence_id: String = row.try_get(3).map_err(Error::database)?;
    let corrupt = |reason: String| Error::CorruptState {
        persistence_id: persistence_id.clone(),
        reason,
    };
    let xid: u64 = xid.parse().map_err(|_| {
        corrupt(format!(
            "change feed transaction id `{xid}` is not a number"
        ))
    })?;
    let (Ok(seq), Ok(pos)) = (u64::try_from(seq), u64::try_from(pos)) else {
        return Err(corrupt(format!(
            "change feed entry {seq}/{pos} is negative"
        )));
    };
    let offset = Offset::new(xid, seq, pos);
    let logged_version: Option<i64> = row.try_get(4).map_err(Error::database)?;
    let deleted: bool = row.try_get(5).map_err(Error::database)?;
    let stored_version: Option<i64> = row.try_get(6).map_err(Error::database)?;
    let (version, state) = match stored_version {
        Some(version_number) => {
            let stored = StateRow {
                persistence_id: persistence_id.clone(),
                version_number,
                state_payload: row.try_get(7).map_err(Error::database)?,
                state_manifest: row.try_get(8).map_err(Error::database)?,
                timestamp: row.try_get(9).map_err(Error::database)?,
                shard_number: row.try_get(10).map_err(Error::database)?,
            };
            let revision = stored.into_revision()?;
            (revision.version, revision.state)
        }
        None if deleted => {
            let logged = logged_version.unwrap_or(0);
            let version = u64::try_from(logged)
                .map_err(|_| corrupt(format!("negative version_number {logged}")))?;
            (version, None)
        }
        None => return Ok((offset, None)),
    };
    let change = Change {
        offset,
        persistence_id,
        version,
        state,
    };
    Ok((offset, Some(change)))
}

/// Keeps the last change of each id, in order: the earlier ones read the same row.
fn last_per_id(changes: Vec<Change>) -> Vec<Change> {
    let mut seen: HashSet<String> = HashSet::with_capacity(changes.len());
    let mut kept: Vec<Change> = changes
        .into_iter()
        .rev()
        .filter(|change| seen.insert(change.persistence_id.clone()))
        .collect();
    kept.reverse();
    kept
}
