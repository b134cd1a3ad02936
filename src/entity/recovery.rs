//! Loading an entity's state: at start, with retries, and again before a command when the
//! state in memory may be stale.

use actix::ResponseActFuture;
use actix::fut::{self, ActorFutureExt, WrapFuture};

use super::DurableEntity;
use super::persist::current;
use crate::behavior::DurableStateBehavior;
use crate::error::Error;

impl<B: DurableStateBehavior> DurableEntity<B> {
    /// Reads and decodes the stored state: the initial state at version 0 when there is none,
    /// and at the tombstone's version when the entity was deleted.
    fn load(&self) -> impl std::future::Future<Output = Result<(B::State, u64), Error>> + 'static {
        let store = self.store.clone();
        let id = self.behavior.persistence_id().to_owned();
        let initial = self.behavior.initial_state();
        async move { current::<B>(store.revision(id).await?, || initial) }
    }

    /// Makes sure the entity has its state, trying once to load it if not.
    pub(super) fn ensure_recovered(&mut self) -> ResponseActFuture<Self, Result<(), Error>> {
        if self.current.is_some() {
            return Box::pin(fut::ready(Ok(())));
        }
        Box::pin(
            self.load()
                .into_actor(self)
                .map(|loaded, entity, _| loaded.map(|current| entity.current = Some(current))),
        )
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
                let policy = &entity.recovery;
                match loaded {
                    Ok(current) => {
                        entity.current = Some(current);
                        Box::pin(fut::ready(())) as ResponseActFuture<DurableEntity<B>, ()>
                    }
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
