//! Fenced writes: a row written by an owned entity carries the registration (replica name and
//! incarnation) its id was claimed under, and the write statement commits it only while that
//! registration is still there (see the registry's ownership and [`crate::sql`]'s `Fenced`).
//! A fenced row not written is explained by fresh reads: the registration gone means the
//! replica lost its ids (to the replica its owner row names now, if another); otherwise the
//! version rule explains it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::Type;

use super::Repository;
use crate::error::Error;
use crate::pool::PooledClient;
use crate::state::StateRow;

/// The registration a fenced write is made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    pub(crate) replica: Arc<str>,
    pub(crate) incarnation: i64,
}

/// One write as the repository sends it: the row, and the registration it is fenced by
/// (`None`: written by the version rule alone).
#[derive(Debug)]
pub(crate) struct WriteRow {
    pub(crate) row: StateRow,
    pub(crate) fence: Option<Fence>,
}

impl From<StateRow> for WriteRow {
    fn from(row: StateRow) -> Self {
        WriteRow { row, fence: None }
    }
}

/// The owning replica of some ids (`None` once released).
pub(super) type Owners = HashMap<String, Option<String>>;

/// What fresh reads say about the refused fenced rows of a statement.
pub(super) struct FenceState {
    pub(super) owners: Owners,
    /// The fences of the statement whose registration is gone.
    pub(super) revoked: Vec<Fence>,
}

impl Repository {
    /// The owners of `ids` and which of `fences` lost their registration, read in statements
    /// of their own (fresh snapshots).
    pub(super) async fn fence_state(
        &self,
        client: &PooledClient,
        ids: &[&str],
        fences: &[&Fence],
    ) -> Result<FenceState, Error> {
        let rows = client
            .query_text(&self.sql.fenced.owners_of, &[(&ids, Type::TEXT_ARRAY)])
            .await?;
        let mut owners = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(Error::database)?;
            let replica: Option<String> = row.try_get(2).map_err(Error::database)?;
            owners.insert(id, replica);
        }
        let mut revoked = Vec::new();
        for fence in fences {
            let replica: &str = &fence.replica;
            let rows = client
                .query_text(
                    &self.sql.fenced.registered,
                    &[(&replica, Type::TEXT), (&fence.incarnation, Type::INT8)],
                )
                .await?;
            let registered: bool = match rows.first() {
                Some(row) => row.try_get(0).map_err(Error::database)?,
                None => false,
            };
            if !registered {
                revoked.push((*fence).clone());
            }
        }
        Ok(FenceState { owners, revoked })
    }
}

/// Why a fenced row was not written, if the fence is the reason: its registration is gone.
/// The id is then another replica's if its owner row names one, and otherwise this replica
/// lost its lease. `None` for a row that is not fenced or whose registration holds (the
/// version rule explains it).
pub(super) fn fenced_out(state: &FenceState, write: &WriteRow) -> Option<Error> {
    let fence = write.fence.as_ref()?;
    if !state.revoked.contains(fence) {
        return None;
    }
    let id = &write.row.persistence_id;
    match state.owners.get(id) {
        Some(Some(owner)) if owner.as_str() != &*fence.replica => Some(Error::NotOwner {
            persistence_id: id.clone(),
            owner: Some(owner.clone()),
        }),
        _ => Some(Error::LeaseLost {
            replica: fence.replica.to_string(),
        }),
    }
}

/// Whether any of `rows` is fenced: the statement must then be a fenced form.
pub(super) fn any_fenced(rows: &[&WriteRow]) -> bool {
    rows.iter().any(|w| w.fence.is_some())
}

/// The distinct fences of `rows`.
pub(super) fn fences_of<'a>(rows: &[&'a WriteRow]) -> Vec<&'a Fence> {
    let mut fences: Vec<&Fence> = Vec::new();
    for fence in rows.iter().filter_map(|w| w.fence.as_ref()) {
        if !fences.contains(&fence) {
            fences.push(fence);
        }
    }
    fences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(replica: &str, incarnation: i64) -> Fence {
        Fence {
            replica: replica.into(),
            incarnation,
        }
    }

    fn write(id: &str, fence: Option<Fence>) -> WriteRow {
        WriteRow {
            row: StateRow {
                persistence_id: id.to_owned(),
                version_number: 2,
                state_payload: Vec::new(),
                state_manifest: "a.B".to_owned(),
                timestamp: 0,
                shard_number: 0,
            },
            fence,
        }
    }

    #[test]
    fn only_a_revoked_registration_fences_a_row_out() {
        let mut owners = Owners::new();
        owners.insert("taken".into(), Some("b".into()));
        owners.insert("mine".into(), Some("a".into()));
        owners.insert("released".into(), None);
        let state = FenceState {
            owners,
            revoked: vec![fence("a", 1)],
        };
        assert!(
            fenced_out(&state, &write("taken", None)).is_none(),
            "not fenced"
        );
        assert!(
            fenced_out(&state, &write("taken", Some(fence("a", 2)))).is_none(),
            "registered: the version rule explains it"
        );
        let why = |id| fenced_out(&state, &write(id, Some(fence("a", 1))));
        assert!(matches!(why("taken"), Some(Error::NotOwner { owner: Some(o), .. }) if o == "b"));
        for id in ["mine", "released", "gone"] {
            assert!(matches!(why(id), Some(Error::LeaseLost { .. })), "{id}");
        }
    }
}
