//! The version rule of writes, as a setting.

/// How `WriteState` treats the version already stored for an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VersionCheck {
    /// A write of version *v* succeeds only when no row exists and *v* = 1, or when the stored
    /// version is *v − 1*. Re-sending exactly what is stored is a no-op success. Anything else
    /// is [`Error::VersionConflict`](crate::Error::VersionConflict) and writes nothing. This is the default.
    #[default]
    Sequential,
    /// Last writer wins, as in eGo's Go store: every write overwrites the row, whatever its
    /// version. **Risk:** two writers of one entity (a split brain, a retried stale command)
    /// silently overwrite each other, and a version can go backwards. Use only while migrating
    /// from a store that behaved this way.
    Unchecked,
}
