//! [`Change`] and [`ChangePage`]: what the change feed delivers.

use super::Offset;
use crate::state::DurableState;

/// One change of one entity, as the feed delivers it.
///
/// `version` and `state` are the entity's row when the change was read, which may be newer
/// than the write that put the change in the feed (the feed coalesces: see the
/// [`feed`](crate::feed) chapter); they are never older than a version the same stream
/// delivered before for that id.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The position just past this change: resume from here to continue after it.
    pub offset: Offset,
    /// The entity's id.
    pub persistence_id: String,
    /// The entity's stored version: of its state, or of its deletion.
    pub version: u64,
    /// The entity's state; `None` when it is deleted (a tombstone, or a purged or deleted row).
    pub state: Option<DurableState>,
}

/// One page of the feed ([`DurableStore::changes_page`](crate::DurableStore::changes_page)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChangePage {
    /// The changes, in feed order; at most one per entity.
    pub changes: Vec<Change>,
    /// Where the next page starts. It can be past the last change (entries that the page
    /// read but had nothing new to say); when nothing was read it is the offset asked for.
    pub next: Offset,
}
