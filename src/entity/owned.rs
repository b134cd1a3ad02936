//! An entity whose id is owned by one replica at a time (a registry with
//! [`RegistryBuilder::ownership`](crate::RegistryBuilder::ownership)): it claims the id before
//! it loads its state, checks its replica's lease before each decision, writes fenced by its
//! claim (the registration it claimed the id under), and releases the id when it stops. The lease itself is the registry's.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::behavior::CommandError;
use crate::error::Error;
use crate::repository::{Claimed, Fence};

/// What an owned entity needs from its registry's ownership.
pub(crate) trait Claims: Send + Sync + 'static {
    /// This replica's name.
    fn replica(&self) -> &str;
    /// Claims `id` for this replica (batched with other claims). Fails with
    /// [`Error::LeaseLost`] while this replica holds no lease.
    fn claim(&self, id: &str) -> BoxFuture<'static, Result<Claimed, Error>>;
    /// Whether this replica's lease holds now, judged conservatively on the monotonic clock:
    /// false some time before the database could let it run out.
    fn holds(&self) -> bool;
    /// Releases `id`, claimed with `epoch`, without waiting (batched).
    fn release(&self, id: &str, epoch: i64);
    /// The entity `id` is not this replica's to run: stop routing commands to it.
    fn give_up(&self, id: &str);
}

/// Why an owned entity refuses every command it gets.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// Another replica owns the id.
    Elsewhere(String),
    /// This replica's lease ran out.
    LeaseLost,
}

impl Refusal {
    pub(crate) fn command_error<E>(&self) -> CommandError<E> {
        match self {
            Refusal::Elsewhere(owner) => CommandError::OwnedElsewhere {
                owner: owner.clone(),
            },
            Refusal::LeaseLost => CommandError::LeaseLost,
        }
    }

    pub(crate) fn error(&self, persistence_id: &str, replica: &str) -> Error {
        match self {
            Refusal::Elsewhere(owner) => Error::NotOwner {
                persistence_id: persistence_id.to_owned(),
                owner: Some(owner.clone()),
            },
            Refusal::LeaseLost => Error::LeaseLost {
                replica: replica.to_owned(),
            },
        }
    }
}

/// The ownership side of one entity incarnation.
pub(crate) struct Owned {
    pub(crate) claims: Arc<dyn Claims>,
    /// This incarnation's claim, once it claimed the id: the registration its writes are
    /// fenced by, and the epoch it is released by.
    pub(crate) claim: Option<Fence>,
    /// Set once a write's outcome was unknown: it may still run on the server, so the id is
    /// not released (it moves only with this replica's registration).
    pub(crate) uncertain: bool,
    /// Set once it learnt that it must not run the id: every command is answered with it.
    pub(crate) refused: Option<Refusal>,
}

impl Owned {
    pub(crate) fn new(claims: Arc<dyn Claims>) -> Self {
        Owned {
            claims,
            claim: None,
            uncertain: false,
            refused: None,
        }
    }

    /// The refusal of an error that says the id is not this replica's to run.
    pub(crate) fn refusal_of(&self, error: &Error) -> Option<Refusal> {
        match error {
            Error::NotOwner { owner, .. } => Some(Refusal::Elsewhere(
                // Owned by nobody now: sending here again claims it.
                owner
                    .clone()
                    .unwrap_or_else(|| self.claims.replica().to_owned()),
            )),
            Error::LeaseLost { .. } => Some(Refusal::LeaseLost),
            _ => None,
        }
    }

    /// Checks, before a decision, that the id is still this replica's to run: the refusal
    /// if not (recorded, and the entity given up).
    pub(crate) fn check(&mut self, persistence_id: &str) -> Option<Refusal> {
        if self.refused.is_none() && !self.claims.holds() {
            self.refuse(persistence_id, Refusal::LeaseLost);
        }
        self.refused.clone()
    }

    /// Records that the id is not this replica's to run, and stops routing to the entity.
    pub(crate) fn refuse(&mut self, persistence_id: &str, refusal: Refusal) {
        if self.refused.is_none() {
            tracing::debug!(persistence_id, ?refusal, "owned entity gives up its id");
            self.claims.give_up(persistence_id);
        }
        self.refused = Some(refusal);
    }

    /// The registration this incarnation's writes are fenced by.
    pub(crate) fn fence(&self) -> Option<Fence> {
        self.claim.clone()
    }

    /// Releases the claim when the incarnation stops, unless another replica has the id or a
    /// write of this incarnation may still be running on the server.
    pub(crate) fn release(&mut self, persistence_id: &str) {
        if let Some(Fence { epoch, .. }) = self.claim.take() {
            if !self.uncertain && !matches!(self.refused, Some(Refusal::Elsewhere(_))) {
                self.claims.release(persistence_id, epoch);
            }
        }
    }
}
