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

/// The claim a fenced write is made under: the registration (replica and incarnation), and
/// the claim's epoch (the fence on Citus, where a registration row is a reference table's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    pub(crate) replica: Arc<str>,
    pub(crate) incarnation: i64,
    pub(crate) epoch: i64,
}

impl Fence {
    fn registration(&self) -> (&str, i64) {
        (&self.replica, self.incarnation)
    }
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

/// The epoch and owning replica of some ids (`None` once released).
pub(super) type Owners = HashMap<String, (i64, Option<String>)>;

/// What fresh reads say about the refused fenced rows of a statement.
pub(super) struct FenceState {
    pub(super) owners: Owners,
    /// The registrations of the statement that are gone.
    pub(super) revoked: Vec<(Arc<str>, i64)>,
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
            let epoch: i64 = row.try_get(1).map_err(Error::database)?;
            let replica: Option<String> = row.try_get(2).map_err(Error::database)?;
            owners.insert(id, (epoch, replica));
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
                revoked.push((Arc::clone(&fence.replica), fence.incarnation));
            }
        }
        Ok(FenceState { owners, revoked })
    }
}

/// Why a fenced row was not written, if the fence is the reason: its registration is gone,
/// or its id was claimed again since (another epoch). The id is then another replica's if its
/// owner row names one, and otherwise this replica lost its lease. `None` for a row that is
/// not fenced or whose claim holds (the version rule explains it).
pub(super) fn fenced_out(state: &FenceState, write: &WriteRow) -> Option<Error> {
    let fence = write.fence.as_ref()?;
    let id = &write.row.persistence_id;
    let owner = state.owners.get(id);
    let revoked = state
        .revoked
        .iter()
        .any(|(replica, incarnation)| (&**replica, *incarnation) == fence.registration());
    let claimed_since = owner.is_none_or(|(epoch, _)| *epoch != fence.epoch);
    if !revoked && !claimed_since {
        return None;
    }
    match owner {
        Some((_, Some(owner))) if owner.as_str() != &*fence.replica => Some(Error::NotOwner {
            persistence_id: id.clone(),
            owner: Some(owner.clone()),
        }),
        _ => Some(Error::LeaseLost {
            replica: fence.replica.to_string(),
        }),
    }
}

/// Splits `items` (in order) into groups of one registration each (the unfenced ones
/// together), each keeping their order: a fenced statement is checked against one
/// registration. The usual batch (one registry's rows) stays whole.
pub(super) fn by_registration<T>(
    items: Vec<T>,
    fence_of: impl Fn(&T) -> Option<&Fence>,
) -> Vec<Vec<T>> {
    let same = |a: Option<&Fence>, b: Option<&Fence>| {
        a.map(Fence::registration) == b.map(Fence::registration)
    };
    let first = items.first().and_then(&fence_of);
    if items.iter().all(|item| same(fence_of(item), first)) {
        return vec![items];
    }
    // The key of each group: the fence of its first item (a cheap clone).
    let mut groups: Vec<(Option<Fence>, Vec<T>)> = Vec::new();
    for item in items {
        let fence = fence_of(&item);
        match groups.iter().position(|(g, _)| same(g.as_ref(), fence)) {
            Some(at) => groups[at].1.push(item),
            None => groups.push((fence.cloned(), vec![item])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// Whether any of `rows` is fenced: the statement must then be a fenced form.
pub(super) fn any_fenced(rows: &[&WriteRow]) -> bool {
    rows.iter().any(|w| w.fence.is_some())
}

/// One fence of each registration of `rows`.
pub(super) fn fences_of<'a>(rows: &[&'a WriteRow]) -> Vec<&'a Fence> {
    let mut fences: Vec<&Fence> = Vec::new();
    for fence in rows.iter().filter_map(|w| w.fence.as_ref()) {
        if !fences
            .iter()
            .any(|f| f.registration() == fence.registration())
        {
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
            epoch: 1,
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
    fn a_batch_is_split_by_registration_keeping_order() {
        let rows = vec![
            write("a", Some(fence("r1", 1))),
            write("b", None),
            write("c", Some(fence("r1", 2))),
            write("d", Some(fence("r1", 1))),
            write("e", None),
        ];
        let groups = by_registration(rows, |w| w.fence.as_ref());
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|w| w.row.persistence_id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["a", "d"], vec!["b", "e"], vec!["c"]]);
        let whole = by_registration(vec![write("a", None), write("b", None)], |w| {
            w.fence.as_ref()
        });
        assert_eq!(whole.len(), 1);
        assert_eq!(
            by_registration(Vec::<WriteRow>::new(), |w| w.fence.as_ref()).len(),
            1
        );
    }

    #[test]
    fn only_a_revoked_registration_fences_a_row_out() {
        let mut owners = Owners::new();
        owners.insert("taken".into(), (1, Some("b".into())));
        owners.insert("mine".into(), (1, Some("a".into())));
        owners.insert("released".into(), (1, None));
        owners.insert("reclaimed".into(), (2, Some("b".into())));
        let state = FenceState {
            owners,
            revoked: vec![("a".into(), 1)],
        };
        assert!(
            matches!(fenced_out(&state, &write("reclaimed", Some(fence("a", 2)))),
                Some(Error::NotOwner { owner: Some(o), .. }) if o == "b"),
            "another epoch fences out, registered or not"
        );
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
