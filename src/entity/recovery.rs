//! Loading an entity's state: at start, with retries, and again before a command when the
//! state in memory may be stale.

use actix::ResponseActFuture;
use actix::fut::{self, ActorFutureExt, WrapFuture};

use super::DurableEntity;
use super::persist::current;
use crate::behavior::DurableStateBehavior;
use crate::error::Error;
use crate::repository::{Claimed, Fence};

/// What a load found: the claim it made (an owned entity not yet claimed claims
/// its id first), and the state and version.
type Loaded<S> = (Option<Fence>, Result<(S, u64), Error>);

impl<B: DurableStateBehavior> DurableEntity<B> {
    /// Reads and decodes the stored state: the initial state at version 0 when there is none,
    /// and at the tombstone's version when the entity was deleted. An owned entity without a
    /// claim claims its id first: the read then sees every write of earlier owners, since
    /// one of an older claim can no longer commit.
    fn load(&self) -> impl std::future::Future<Output = Loaded<B::State>> + 'static {
        let store = self.store.clone();
        let id = self.behavior.persistence_id().to_owned();
        let initial = self.behavior.initial_state();
        let claim = self
            .owned
            .as_ref()
            .filter(|owned| owned.claim.is_none())
            .map(|owned| owned.claims.claim(&id));
        async move {
            let claimed = match claim {
                None => None,
                Some(claim) => match claim.await {
                    Ok(Claimed::Owned { fence }) => Some(fence),
                    Ok(Claimed::Elsewhere { owner }) => {
                        let refused = Error::NotOwner {
                            persistence_id: id,
                            owner,
                        };
                        return (None, Err(refused));
                    }
                    Err(error) => return (None, Err(error)),
                },
            };
            let loaded = match store.revision(id).await {
                Ok(revision) => current::<B>(revision, || initial),
                Err(error) => Err(error),
            };
            (claimed, loaded)
        }
    }

    /// Takes what a load found: the claim, and the state or why there is none (an id
    /// that is not this replica's to run is refused from now on).
    fn loaded(&mut self, (claimed, loaded): Loaded<B::State>) -> Result<(), Error> {
        if let Some(owned) = &mut self.owned {
            if claimed.is_some() {
                owned.claim = claimed;
            }
            if let Err(error) = &loaded {
                if let Some(refusal) = owned.refusal_of(error) {
                    owned.refuse(self.behavior.persistence_id(), refusal);
                }
            }
        }
        loaded.map(|current| self.current = Some(current))
    }

    /// Makes sure the entity has its state, trying once to load it if not.
    pub(super) fn ensure_recovered(&mut self) -> ResponseActFuture<Self, Result<(), Error>> {
        if self.current.is_some() {
            return Box::pin(fut::ready(Ok(())));
        }
        Box::pin(
            self.load()
                .into_actor(self)
                .map(|loaded, entity, _| entity.loaded(loaded)),
        )
    }

    /// Whether the entity has been refused its id (owned elsewhere, or the lease lost).
    fn refused(&self) -> bool {
        self.owned
            .as_ref()
            .is_some_and(|owned| owned.refused.is_some())
    }
}

/// Loads the state (try number `tried`), retrying transient failures with backoff up to
/// the entity's [`RecoveryPolicy`]; stores the state on success.
pub(super) fn recover_with_retries<B: DurableStateBehavior>(
    entity: &DurableEntity<B>,
    tried: u32,
) -> ResponseActFuture<DurableEntity<B>, ()> {
    Box::pin(
        entity
            .load()
            .into_actor(entity)
            .then(move |loaded, entity, _ctx| {
                let loaded = entity.loaded(loaded);
                let policy = &entity.recovery;
                match loaded {
                    Ok(()) => Box::pin(fut::ready(())) as ResponseActFuture<DurableEntity<B>, ()>,
                    // Not this replica's id: every command is answered so, nothing to retry.
                    Err(_) if entity.refused() => Box::pin(fut::ready(())),
                    Err(error) if error.is_transient() && tried < policy.attempts => {
                        let backoff = policy.backoff(tried, fastrand::f64());
                        tracing::warn!(
                            persistence_id = entity.behavior.persistence_id(),
                            %error,
                            attempt = tried,
                            ?backoff,
                            "durable entity recovery failed; retrying"
                        );
                        Box::pin(
                            tokio::time::sleep(backoff)
                                .into_actor(entity)
                                .then(move |(), entity, _| recover_with_retries(entity, tried + 1)),
                        )
                    }
                    Err(error) => {
                        tracing::error!(
                            persistence_id = entity.behavior.persistence_id(),
                            %error,
                            attempts = tried,
                            "durable entity could not recover its state; commands will retry it"
                        );
                        Box::pin(fut::ready(()))
                    }
                }
            }),
    )
}
