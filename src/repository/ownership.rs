//! The database side of ownership across replicas: the ownership tables, a replica's lease,
//! and batched claims and releases of ids (queued and batched like reads and writes, so that
//! 10,000 activations are a few statements). What a lease means to the entities is the
//! registry's business.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::Repository;
use super::fence::Fence;
use crate::error::Error;
use crate::pool::PooledClient;
use crate::queue::{Kind, Pending, Reply};

/// How many times ids whose owner row a claim could neither take nor see (it was inserted
/// by a concurrent claim after the statement's snapshot) are claimed again.
const CLAIM_TRIES: u32 = 3;

/// A replica's identity in the ownership tables: the name the application routes by, and the
/// incarnation of its registration (a fresh one each time it registers: never reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicaId {
    pub(crate) name: String,
    pub(crate) incarnation: i64,
}

impl ReplicaId {
    /// The fence of writes made under this registration, for a claim of `epoch`.
    pub(crate) fn fence(&self, epoch: i64) -> Fence {
        Fence {
            replica: self.name.as_str().into(),
            incarnation: self.incarnation,
            epoch,
        }
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The id is this replica's, claimed with a new epoch under this registration: the
    /// fence its writes carry (and the epoch it is released by).
    Owned { fence: Fence },
    /// Another live replica owns it (`None`: its owner row could not be read in time).
    Elsewhere { owner: Option<String> },
}

/// A claim of one id by the replica whose queue it is in.
pub(crate) struct Claim;

impl Kind for Claim {
    const NAME: &'static str = "claim";
    type Input = String;
    type Output = Claimed;
    type Reply = Reply<Claimed>;

    fn bytes(id: &String) -> usize {
        id.len()
    }
}

/// The release of one id claimed with an epoch.
pub(crate) struct Release;

impl Kind for Release {
    const NAME: &'static str = "release";
    type Input = (String, i64);
    type Output = ();
    type Reply = Reply<()>;

    fn bytes((id, _): &(String, i64)) -> usize {
        id.len() + 8
    }
}

impl Repository {
    /// Creates the ownership tables if they are not there (a role that may not create them
    /// can use them once they are): distributed and colocated with the table on Citus.
    pub(crate) async fn create_ownership_schema(&self) -> Result<(), Error> {
        let client = self.checkout().await?;
        let rows = client.query_text(&self.ownership.exists, &[]).await?;
        let exists: bool = match rows.first() {
            Some(row) => row.try_get(0).map_err(Error::database)?,
            None => false,
        };
        if exists {
            return Ok(());
        }
        if self.distributes(&client).await? {
            client
                .batch_execute(&self.ownership.create_distributed)
                .await
        } else {
            client.batch_execute(&self.ownership.create).await
        }
    }

    /// Takes the replica name for this incarnation with a lease of `lease`, unless another
    /// incarnation holds it with a lease that has not run out: whether it did, and the
    /// instant just before the statement was sent (the lease runs out at least `lease` after
    /// it, in the database's time).
    ///
    /// The registrations whose lease ran out are deleted first, on the same connection and
    /// within the same `within`, so that a name held by a dead process is taken over by
    /// deleting its registration, never by changing it in place.
    pub(crate) async fn register(
        &self,
        me: &ReplicaId,
        lease: Duration,
        within: Duration,
    ) -> Result<(bool, Instant), Error> {
        let revoke = Some(self.ownership.revoke.as_str());
        self.lease_statement(revoke, &self.ownership.register, me, lease, within)
            .await
    }

    /// Extends this incarnation's lease to `lease` from now, as [`Repository::register`];
    /// false if the name is no longer this incarnation's.
    pub(crate) async fn renew(
        &self,
        me: &ReplicaId,
        lease: Duration,
        within: Duration,
    ) -> Result<(bool, Instant), Error> {
        self.lease_statement(None, &self.ownership.renew, me, lease, within)
            .await
    }

    /// Runs a lease statement (after `first`, if any), giving up after `within` for all of
    /// it: a statement that cannot get through (a lock, a frozen server) is cancelled and
    /// its connection discarded, so it never holds up a write that would take that
    /// connection next.
    async fn lease_statement(
        &self,
        first: Option<&str>,
        text: &str,
        me: &ReplicaId,
        lease: Duration,
        within: Duration,
    ) -> Result<(bool, Instant), Error> {
        let millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let deadline = tokio::time::Instant::now() + within;
        let timed_out = || Error::Timeout { timeout: within };
        // The checkout counts too.
        let client = match tokio::time::timeout_at(deadline, self.checkout()).await {
            Ok(client) => client?,
            Err(_) => return Err(timed_out()),
        };
        let statements = async {
            if let Some(first) = first {
                client.query_text(first, &[]).await?;
            }
            let sent = Instant::now();
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
                (&me.name, Type::TEXT),
                (&me.incarnation, Type::INT8),
                (&millis, Type::INT8),
            ];
            let rows = client.query_text(text, &params).await?;
            Ok((!rows.is_empty(), sent))
        };
        match tokio::time::timeout_at(deadline, statements).await {
            Ok(result) => result,
            Err(_) => {
                client.abandon();
                Err(timed_out())
            }
        }
    }

    /// Gives the replica name up: every id it owns can be claimed at once.
    pub(crate) async fn deregister(&self, me: &ReplicaId) -> Result<(), Error> {
        let client = self.checkout().await?;
        client
            .query_text(
                &self.ownership.deregister,
                &[(&me.name, Type::TEXT), (&me.incarnation, Type::INT8)],
            )
            .await?;
        Ok(())
    }

    /// Runs a batch of claims for `me` and answers each.
    pub(crate) async fn claim_batch(&self, me: &ReplicaId, batch: Vec<Pending<Claim>>) {
        metrics::histogram!("durablestore_claim_batch_size").record(batch.len() as f64);
        // Each batch is two statements (revoke, claim), three when some ids are owned.
        let mut ids: Vec<&str> = batch.iter().map(|p| p.input.as_str()).collect();
        // One lock order for every claim and write: ids in byte order.
        ids.sort_unstable();
        ids.dedup();
        let found = match self.checkout().await {
            Ok(client) => self.claim_ids(&client, me, &ids).await,
            Err(error) => Err(error),
        };
        for pending in batch {
            let answer = match &found {
                Ok(found) => Ok(found
                    .get(pending.input.as_str())
                    .cloned()
                    .unwrap_or(Claimed::Elsewhere { owner: None })),
                Err(error) => Err(error.clone()),
            };
            pending.answer(answer);
        }
    }

    /// Claims `ids` (distinct, sorted): what each claim found.
    ///
    /// Expiry is the database's to judge. Registrations whose lease ran out are deleted first:
    /// that waits for the writes still holding them and fences out every later one. Then the
    /// ids that need no liveness judged are claimed (nobody's, released, or this
    /// registration's), and the others are taken over where their owner's registration is
    /// gone; the rest are another live replica's.
    async fn claim_ids(
        &self,
        client: &PooledClient,
        me: &ReplicaId,
        ids: &[&str],
    ) -> Result<HashMap<String, Claimed>, Error> {
        client.query_text(&self.ownership.revoke, &[]).await?;
        let mut found = HashMap::with_capacity(ids.len());
        let mut todo: Vec<&str> = ids.to_vec();
        for _ in 0..CLAIM_TRIES {
            if todo.is_empty() {
                break;
            }
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
                (&todo, Type::TEXT_ARRAY),
                (&me.name, Type::TEXT),
                (&me.incarnation, Type::INT8),
            ];
            let mut owned_elsewhere = Vec::new();
            for row in &client.query_text(&self.ownership.claim, &params).await? {
                let id: String = row.try_get(0).map_err(Error::database)?;
                match row.try_get::<_, Option<i64>>(1).map_err(Error::database)? {
                    Some(epoch) => {
                        let fence = me.fence(epoch);
                        found.insert(id, Claimed::Owned { fence });
                    }
                    None => owned_elsewhere.push(id),
                }
            }
            if owned_elsewhere.is_empty() {
                break;
            }
            let others: Vec<&str> = owned_elsewhere.iter().map(String::as_str).collect();
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
                (&others, Type::TEXT_ARRAY),
                (&me.name, Type::TEXT),
                (&me.incarnation, Type::INT8),
            ];
            let mut unseen = Vec::new();
            for row in &client
                .query_text(&self.ownership.take_over, &params)
                .await?
            {
                let id: String = row.try_get(0).map_err(Error::database)?;
                let epoch: Option<i64> = row.try_get(1).map_err(Error::database)?;
                let owner: Option<String> = row.try_get(2).map_err(Error::database)?;
                let claimed = match (epoch, owner) {
                    (Some(epoch), _) => Claimed::Owned {
                        fence: me.fence(epoch),
                    },
                    (None, Some(owner)) => Claimed::Elsewhere { owner: Some(owner) },
                    // Released or inserted meanwhile: claimed again in the next round.
                    (None, None) => {
                        unseen.push(id);
                        continue;
                    }
                };
                found.insert(id, claimed);
            }
            todo.retain(|id| unseen.iter().any(|u| u == id));
        }
        if !todo.is_empty() {
            tracing::debug!(ids = todo.len(), "claims that found no visible owner row");
        }
        Ok(found)
    }

    /// Runs a batch of releases and answers each.
    pub(crate) async fn release_batch(&self, mut batch: Vec<Pending<Release>>) {
        batch.sort_unstable_by(|a, b| a.input.0.cmp(&b.input.0));
        let ids: Vec<&str> = batch.iter().map(|p| p.input.0.as_str()).collect();
        let epochs: Vec<i64> = batch.iter().map(|p| p.input.1).collect();
        let result = match self.checkout().await {
            Ok(client) => client
                .query_text(
                    &self.ownership.release,
                    &[(&ids, Type::TEXT_ARRAY), (&epochs, Type::INT8_ARRAY)],
                )
                .await
                .map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            tracing::warn!(%error, ids = ids.len(), "releasing owned ids failed; they move after the lease");
        }
        for pending in batch {
            pending.answer(result.clone());
        }
    }
}
