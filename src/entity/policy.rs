//! How entities shard their states, retry their recovery, and decide again after a conflict.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How an entity's shard number is derived from its persistence id.
#[derive(Clone)]
#[non_exhaustive]
pub enum Sharding {
    /// `fnv1a64(persistence_id) % shards`: stable across processes, versions and platforms.
    Hashed {
        /// Number of shards (at least 1).
        shards: u64,
    },
    /// A function of your own.
    Custom(Arc<dyn Fn(&str) -> u64 + Send + Sync>),
}

impl Sharding {
    /// Default number of shards entities are spread over by [`Sharding::Hashed`]: 128.
    pub const DEFAULT_SHARD_COUNT: u64 = 128;
}

impl Default for Sharding {
    /// [`Sharding::Hashed`] over [`Sharding::DEFAULT_SHARD_COUNT`] shards.
    fn default() -> Self {
        Sharding::Hashed {
            shards: Self::DEFAULT_SHARD_COUNT,
        }
    }
}

impl fmt::Debug for Sharding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sharding::Hashed { shards } => {
                f.debug_struct("Hashed").field("shards", shards).finish()
            }
            Sharding::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Sharding {
    /// The shard of `persistence_id`.
    pub fn shard_of(&self, persistence_id: &str) -> u64 {
        match self {
            Sharding::Hashed { shards } => fnv1a64(persistence_id.as_bytes()) % (*shards).max(1),
            Sharding::Custom(f) => f(persistence_id),
        }
    }
}

/// FNV-1a, 64 bit: a fixed, documented hash, so shard numbers never change between builds
/// (std's `DefaultHasher` makes no such promise).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The longest pause between two tries, whatever a policy says: `Duration::mul_f64` panics on
/// a product beyond `Duration::MAX`, and a pause of an hour already means "stuck".
const LONGEST_PAUSE: Duration = Duration::from_secs(3600);

/// How an entity retries loading its state when it starts.
///
/// Transient failures (database unreachable, pool timeout, broken connection) are retried with
/// exponential backoff, `initial_backoff` doubling up to `max_backoff`, for at most `attempts`
/// tries; commands wait in the mailbox meanwhile. Each wait is drawn at random between half
/// that backoff and all of it ("equal jitter"), so thousands of entities that failed together
/// (an outage) spread their retries instead of retrying in lockstep. Permanent failures (a corrupt row, a state of
/// another type) are not retried. An entity that is still not recovered then answers each
/// command by trying once more and, if that fails, with [`CommandError::Recovery`](crate::CommandError::Recovery): it never
/// handles a command against a state it did not load, and it heals by itself once the store
/// answers again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// Tries at start, the first included (at least 1).
    pub attempts: u32,
    /// Wait after the first failed try.
    pub initial_backoff: Duration,
    /// Longest wait between tries (at most an hour is ever waited).
    pub max_backoff: Duration,
}

impl RecoveryPolicy {
    /// The wait after failed try number `tried` (1 for the first): the exponential backoff,
    /// scaled by `jitter` (in `[0, 1)`) into its upper half.
    pub(super) fn backoff(&self, tried: u32, jitter: f64) -> Duration {
        let backoff = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(tried.saturating_sub(1)))
            .min(self.max_backoff)
            .min(LONGEST_PAUSE);
        backoff.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

impl Default for RecoveryPolicy {
    /// 6 tries, 100 ms doubling up to 2 s, each wait jittered down by up to half: 2.5 to 5 s of
    /// waiting before commands fail.
    fn default() -> Self {
        RecoveryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// How an entity decides a command again when its write conflicts: another writer (the same
/// entity live in another replica, or an incarnation that has not stopped yet) stored a newer
/// version first.
///
/// The entity reloads the stored state at once, then runs the same decision again on it (the
/// command is `Clone` for that), after a pause drawn at random between 0 and a backoff that
/// starts at `initial_backoff` and doubles up to `max_backoff`, so that writers that keep
/// meeting spread apart. Only when `attempts` decisions all conflicted does the command fail
/// with [`CommandError::Conflict`](crate::CommandError::Conflict). Nothing of a conflicting
/// decision was written, so deciding again is safe as long as the decision has no effect outside
/// the [`Effect`](crate::Effect) it returns (see
/// [`HandleCommand`](crate::HandleCommand)): a decision may run more than once.
///
/// Measured with three replicas over one table (BENCHMARKS.md, "Several replicas"): the default
/// absorbs nearly every conflict of 150 callers on 20 hot ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictPolicy {
    /// Decisions per command, the first included (at least 1; 1: a conflict fails the command
    /// at once, as before version 0.3).
    pub attempts: u32,
    /// Longest pause before the second decision.
    pub initial_backoff: Duration,
    /// Longest pause between two decisions (at most an hour is ever waited).
    pub max_backoff: Duration,
}

impl ConflictPolicy {
    /// Fail a conflicting command at once, with [`CommandError::Conflict`](crate::CommandError::Conflict)
    /// (after reloading the stored state): the caller decides what to do.
    pub fn fail_fast() -> Self {
        ConflictPolicy {
            attempts: 1,
            ..Self::default()
        }
    }

    /// This policy with at least one decision (0 is taken as 1).
    pub(crate) fn at_least_one_decision(self) -> Self {
        ConflictPolicy {
            attempts: self.attempts.max(1),
            ..self
        }
    }

    /// The pause after conflicting decision number `tried` (1 for the first): a backoff
    /// doubling from `initial_backoff` up to `max_backoff`, scaled by `jitter` (in `[0, 1)`).
    pub(crate) fn backoff(&self, tried: u32, jitter: f64) -> Duration {
        self.initial_backoff
            .saturating_mul(2u32.saturating_pow(tried.saturating_sub(1)))
            .min(self.max_backoff)
            .min(LONGEST_PAUSE)
            .mul_f64(jitter.clamp(0.0, 1.0))
    }
}

impl Default for ConflictPolicy {
    /// 10 decisions, the pause between them drawn up to 1 ms, doubling up to 50 ms.
    fn default() -> Self {
        ConflictPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_backoff_doubles_is_capped_and_jittered_into_its_upper_half() {
        let policy = RecoveryPolicy::default();
        let ms = |d: Duration| d.as_millis();
        // No jitter drawn: half of the exponential backoff; the most: all of it.
        assert_eq!(ms(policy.backoff(1, 0.0)), 50);
        assert_eq!(ms(policy.backoff(1, 1.0)), 100);
        assert_eq!(ms(policy.backoff(3, 1.0)), 400);
        assert_eq!(ms(policy.backoff(10, 1.0)), 2000);
        assert_eq!(ms(policy.backoff(10, 0.0)), 1000);
        assert_eq!(ms(policy.backoff(u32::MAX, 0.5)), 1500);
        // Two entities failing together wait different times.
        let waits: std::collections::BTreeSet<_> = (0..100)
            .map(|_| policy.backoff(4, fastrand::f64()))
            .collect();
        assert!(waits.len() > 50, "jitter spreads the retries");
        assert!(waits.iter().all(|w| ms(*w) >= 400 && ms(*w) <= 800));
    }

    #[test]
    fn conflict_backoff_doubles_is_capped_and_fully_jittered() {
        let policy = ConflictPolicy::default();
        let us = |d: Duration| d.as_micros();
        assert_eq!(us(policy.backoff(1, 0.0)), 0);
        assert_eq!(us(policy.backoff(1, 1.0)), 1_000);
        assert_eq!(us(policy.backoff(3, 1.0)), 4_000);
        assert_eq!(us(policy.backoff(30, 1.0)), 50_000);
        assert_eq!(ConflictPolicy::fail_fast().attempts, 1);
        let endless = ConflictPolicy {
            attempts: 3,
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
        };
        assert_eq!(
            endless.backoff(2, 0.999_999),
            LONGEST_PAUSE.mul_f64(0.999_999)
        );
        let recovery = RecoveryPolicy {
            attempts: 3,
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
        };
        assert!(recovery.backoff(2, 1.0) <= LONGEST_PAUSE);
    }

    #[test]
    fn hashed_sharding_is_stable_and_in_range() {
        let sharding = Sharding::Hashed { shards: 16 };
        // Pinned values: changing the hash would move every entity to another shard.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!((0..1000).all(|i| sharding.shard_of(&format!("e-{i}")) < 16));
        assert_eq!(Sharding::Hashed { shards: 0 }.shard_of("x"), 0);
        let custom = Sharding::Custom(Arc::new(|id: &str| id.len() as u64));
        assert_eq!(custom.shard_of("abcd"), 4);
    }
}
