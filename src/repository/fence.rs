//! Fenced writes: a row written for an owned entity carries the epoch of its owner's claim,
//! and the write statement commits it only while that epoch is still the owner row's (see the
//! registry's ownership). A fenced row not written is explained by a fresh read of its owner
//! row: another epoch there means another claim came first, whatever the versions say.

use std::collections::HashMap;

use tokio_postgres::types::Type;

use super::Repository;
use crate::error::Error;
use crate::pool::PooledClient;
use crate::state::StateRow;

/// One write as the repository sends it: the row, and the ownership epoch it is fenced by
/// (`None`: written by the version rule alone).
#[derive(Debug)]
pub(crate) struct WriteRow {
    pub(crate) row: StateRow,
    pub(crate) epoch: Option<i64>,
}

impl From<StateRow> for WriteRow {
    fn from(row: StateRow) -> Self {
        WriteRow { row, epoch: None }
    }
}

/// The owner rows of some ids: their epoch and owning replica (`None` once released).
pub(super) type Owners = HashMap<String, (i64, Option<String>)>;

impl Repository {
    /// The owner rows of `ids`, read in a statement of its own (a fresh snapshot).
    pub(super) async fn owners_of(
        &self,
        client: &PooledClient,
        ids: &[&str],
    ) -> Result<Owners, Error> {
        let rows = client
            .query_text(&self.sql.fenced.owners_of, &[(&ids, Type::TEXT_ARRAY)])
            .await?;
        let mut owners = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(Error::database)?;
            let epoch: i64 = row.try_get(1).map_err(Error::database)?;
            let replica: Option<String> = row.try_get(2).map_err(Error::database)?;
            owners.insert(id, (epoch, replica));
        }
        Ok(owners)
    }
}

/// Why a fenced row was not written, if the fence is the reason: its owner row holds another
/// epoch (or is gone). `None` for a row that is not fenced, or whose epoch is still current
/// (then the version rule explains it).
pub(super) fn fenced_out(owners: &Owners, write: &WriteRow) -> Option<Error> {
    let epoch = write.epoch?;
    let id = &write.row.persistence_id;
    match owners.get(id) {
        Some((current, _)) if *current == epoch => None,
        found => Some(Error::NotOwner {
            persistence_id: id.clone(),
            owner: found.and_then(|(_, replica)| replica.clone()),
        }),
    }
}

/// Whether any of `rows` is fenced: the statement must then be a fenced form.
pub(super) fn any_fenced(rows: &[&WriteRow]) -> bool {
    rows.iter().any(|w| w.epoch.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: &str, epoch: Option<i64>) -> WriteRow {
        WriteRow {
            row: StateRow {
                persistence_id: id.to_owned(),
                version_number: 2,
                state_payload: Vec::new(),
                state_manifest: "a.B".to_owned(),
                timestamp: 0,
                shard_number: 0,
            },
            epoch,
        }
    }

    #[test]
    fn only_another_epoch_or_no_owner_row_fences_a_row_out() {
        let mut owners = Owners::new();
        owners.insert("mine".into(), (3, Some("a".into())));
        owners.insert("taken".into(), (4, Some("b".into())));
        owners.insert("released".into(), (4, None));
        assert!(fenced_out(&owners, &write("mine", Some(3))).is_none());
        assert!(
            fenced_out(&owners, &write("mine", None)).is_none(),
            "not fenced"
        );
        let owner_of = |id, epoch| match fenced_out(&owners, &write(id, Some(epoch))) {
            Some(Error::NotOwner { owner, .. }) => owner,
            other => panic!("{other:?}"),
        };
        assert_eq!(owner_of("taken", 3), Some("b".to_owned()));
        assert_eq!(owner_of("released", 3), None);
        assert_eq!(owner_of("gone", 1), None);
    }
}
