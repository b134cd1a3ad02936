//! The version rule, written once: what a write does given the row that is stored.
//!
//! PostgreSQL applies the rule inside one statement (see [`crate::sql`]); when it refuses a row,
//! [`refused`] tells the caller why from a fresh read. [`MemoryStore`](crate::MemoryStore)
//! applies [`judge`] directly. Both therefore answer every case the same way.

use crate::config::VersionCheck;
use crate::error::Error;
use crate::messages::WriteOutcome;
use crate::state::StateRow;

/// What the version rule says of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The write builds on the stored version (or is the first one): store it.
    Apply,
    /// Exactly this version of exactly this state is stored already: a retry.
    AlreadyStored,
    /// The stored version (`0`: none) is not the one the write builds on.
    Conflict { stored: u64 },
}

/// Judges a write of `attempted` against the `stored` row of its id.
pub(crate) fn judge(
    stored: Option<&StateRow>,
    attempted: &StateRow,
    check: VersionCheck,
) -> Verdict {
    if check == VersionCheck::Unchecked {
        return Verdict::Apply;
    }
    let stored_version = stored.map_or(0, |s| s.version_number);
    if stored.is_some_and(|s| s.same_state(attempted)) {
        Verdict::AlreadyStored
    } else if stored_version == attempted.version_number - 1 {
        Verdict::Apply
    } else {
        Verdict::Conflict {
            // A negative stored version (only possible through raw SQL) reads as 0.
            stored: u64::try_from(stored_version).unwrap_or(0),
        }
    }
}

/// The answer to a write that PostgreSQL did not apply, given the row read after it.
///
/// A write the rule would have applied but that was not applied was suppressed by a trigger or
/// a row-level security policy.
pub(crate) fn refused(
    stored: Option<&StateRow>,
    attempted: &StateRow,
    check: VersionCheck,
) -> Result<WriteOutcome, Error> {
    match judge(stored, attempted, check) {
        Verdict::AlreadyStored => Ok(WriteOutcome::AlreadyStored),
        Verdict::Apply => Err(Error::Suppressed {
            persistence_id: attempted.persistence_id.clone(),
        }),
        Verdict::Conflict { stored } => Err(conflict(attempted, stored)),
    }
}

/// The conflict error for `attempted` against the `stored` version.
pub(crate) fn conflict(attempted: &StateRow, stored: u64) -> Error {
    Error::VersionConflict {
        persistence_id: attempted.persistence_id.clone(),
        // Range-checked on the way in (`StateRow::encode`).
        attempted: u64::try_from(attempted.version_number).unwrap_or(0),
        stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DurableState;
    use crate::state::RowFormat;

    fn row(version: u64, balance: i64) -> StateRow {
        let state = DurableState::new(
            "id",
            version,
            &prost_types::Duration {
                seconds: balance,
                nanos: 0,
            },
        );
        StateRow::encode(state, RowFormat::Any).unwrap()
    }

    #[test]
    fn sequential_rule_covers_every_case() {
        use Verdict::*;
        let check = VersionCheck::Sequential;
        // First version of a new id.
        assert_eq!(judge(None, &row(1, 1), check), Apply);
        // A gap on a new id.
        assert_eq!(judge(None, &row(2, 1), check), Conflict { stored: 0 });
        // The next version.
        assert_eq!(judge(Some(&row(3, 1)), &row(4, 2), check), Apply);
        // An identical retry of the stored version.
        assert_eq!(judge(Some(&row(4, 2)), &row(4, 2), check), AlreadyStored);
        // The stored version with another state: someone else wrote it.
        assert_eq!(
            judge(Some(&row(4, 2)), &row(4, 9), check),
            Conflict { stored: 4 }
        );
        // Stale and ahead.
        assert_eq!(
            judge(Some(&row(4, 2)), &row(3, 2), check),
            Conflict { stored: 4 }
        );
        assert_eq!(
            judge(Some(&row(4, 2)), &row(6, 2), check),
            Conflict { stored: 4 }
        );
        // Version 1 again on an existing row.
        assert_eq!(
            judge(Some(&row(1, 1)), &row(1, 2), check),
            Conflict { stored: 1 }
        );
    }

    #[test]
    fn identical_retry_is_recognized_across_row_formats() {
        let typed = {
            let state = DurableState::new(
                "id",
                4,
                &prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                },
            );
            StateRow::encode(state, RowFormat::Typed).unwrap()
        };
        assert_eq!(
            judge(Some(&typed), &row(4, 2), VersionCheck::Sequential),
            Verdict::AlreadyStored
        );
    }

    #[test]
    fn unchecked_always_applies() {
        let check = VersionCheck::Unchecked;
        assert_eq!(judge(Some(&row(9, 1)), &row(2, 1), check), Verdict::Apply);
        assert_eq!(judge(None, &row(5, 1), check), Verdict::Apply);
    }

    #[test]
    fn refused_writes_are_explained() {
        let check = VersionCheck::Sequential;
        assert!(matches!(
            refused(Some(&row(3, 1)), &row(4, 1), check),
            Err(Error::Suppressed { .. })
        ));
        assert!(matches!(
            refused(Some(&row(4, 1)), &row(4, 1), check),
            Ok(WriteOutcome::AlreadyStored)
        ));
        assert!(matches!(
            refused(Some(&row(5, 1)), &row(4, 1), check),
            Err(Error::VersionConflict {
                attempted: 4,
                stored: 5,
                ..
            })
        ));
        assert!(matches!(
            refused(None, &row(1, 1), VersionCheck::Unchecked),
            Err(Error::Suppressed { .. })
        ));
    }
}
