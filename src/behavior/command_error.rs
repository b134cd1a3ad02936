//! [`CommandError`]: why a command sent to an entity was not applied.

use crate::error::Error;

/// Why a command to a durable entity failed. The entity's state is the last persisted one in
/// every case; whether anything of this command was written depends on the variant, as each
/// says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The behavior rejected the command with its domain error. Nothing was written.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// Another writer (the same entity live elsewhere: another replica, or an incarnation that
    /// has not stopped yet) changed the stored state first, every time the command was
    /// decided: the entity decided it again on the stored state as often as its
    /// [`ConflictPolicy`](crate::ConflictPolicy) allows. Nothing of this command was written;
    /// the entity has reloaded the stored state, and the command may be sent again.
    #[error("{0}; the entity reloaded the stored state")]
    Conflict(Error),
    /// Persisting the new state failed (database down, timeout, a state that cannot be
    /// encoded...). Nothing was written unless [`Error::outcome_unknown`] says the outcome is
    /// unknown (a timeout, a connection lost mid-statement, a store that stopped with the write
    /// in flight): then the write may have been applied, and the entity reads its state again
    /// before its next command.
    #[error("persisting the new state failed: {0}")]
    Store(Error),
    /// The entity could not load its state from the store, so it did not handle the command:
    /// nothing was written. Also the answer for an id the store would refuse
    /// ([`Error::InvalidInput`]), without starting an actor.
    #[error("the entity could not recover its state: {0}")]
    Recovery(Error),
    /// The [`EntityRegistry`](crate::EntityRegistry) was stopped (or its arbiter is gone)
    /// before the command reached an entity: nothing of it was applied, and sending it again to
    /// this registry will not help.
    #[error("the entity registry is stopped; the command was not delivered")]
    RegistryStopped,
    /// The entity is owned by another replica of the service (a registry with
    /// [`RegistryBuilder::ownership`](crate::RegistryBuilder::ownership)): nothing of the
    /// command was applied here. Send it to `owner`, the replica name the owner registered
    /// with (for example its URL). When the database names no owner any more (the id was
    /// released in between), `owner` is this replica itself: sending again here claims it.
    #[error("the entity is owned by replica `{owner}`; the command was not applied here")]
    OwnedElsewhere {
        /// The owning replica's name.
        owner: String,
    },
    /// This replica could not renew its ownership lease in time (the database unreachable or
    /// too slow), so it stopped its entities before the lease could run out: nothing of the
    /// command was applied. Send it again later (here, once the lease is renewed, or to the
    /// replica that takes the entity over).
    #[error(
        "this replica's ownership lease could not be renewed in time; the command was not applied"
    )]
    LeaseLost,
}

impl<E> CommandError<E> {
    /// The store error behind this failure, if it is not a domain rejection.
    pub fn store_error(&self) -> Option<&Error> {
        match self {
            CommandError::Rejected(_)
            | CommandError::RegistryStopped
            | CommandError::OwnedElsewhere { .. }
            | CommandError::LeaseLost => None,
            CommandError::Conflict(e) | CommandError::Store(e) | CommandError::Recovery(e) => {
                Some(e)
            }
        }
    }
}
