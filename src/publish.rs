//! State publishers: each persisted state, told to subscribers in version order without ever
//! making persistence wait for them.

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix::prelude::SendError;
use actix::{Message, Recipient};

/// The name of the counter of state changes a subscriber missed because its mailbox was full.
pub(crate) const DROPPED_METRIC: &str = "durablestore_state_changes_dropped_total";

/// One persisted state of one entity, as published to the subscribers of an
/// [`EntityRegistry`](crate::EntityRegistry): eGo's state publishers.
///
/// Published once the state is stored, before the command is answered, and for each entity in
/// version order: a subscriber that receives version 7 of an id has received (or missed, see
/// below) every earlier version of it. Versions never repeat; a conflict or a failed write
/// publishes nothing.
///
/// **Slow subscribers do not slow entities.** Each event is handed to the subscriber's mailbox
/// with [`Recipient::try_send`]: when that mailbox is full the event is **dropped** for that
/// subscriber (counted in [`RegistryStats::state_changes_dropped`](crate::RegistryStats) and
/// the `durablestore_state_changes_dropped_total` counter), never waited for. A subscriber
/// that must see every change sizes its mailbox for the largest burst it has to absorb
/// (`ctx.set_mailbox_capacity(n)` in its `started`; actix's default is 16) or reads the store
/// ([`CurrentStates`](crate::CurrentStates)) to catch up when `version` jumps. A subscriber
/// that stopped is forgotten.
#[derive(Clone, PartialEq)]
pub struct StateChanged<S> {
    /// The entity.
    pub persistence_id: String,
    /// The version now stored.
    pub version: u64,
    /// The state now stored; `None` when the entity deleted itself (`Effect::Delete`).
    pub state: Option<S>,
}

impl<S: fmt::Debug> fmt::Debug for StateChanged<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateChanged")
            .field("persistence_id", &self.persistence_id)
            .field("version", &self.version)
            .field("state", &self.state)
            .finish()
    }
}

impl<S: 'static> Message for StateChanged<S> {
    type Result = ();
}

/// What an entity calls after each persisted state; type-erased so that entities started
/// without a registry need no `Send` state.
pub(crate) trait Publish<S>: Send + Sync {
    /// Tells every subscriber that `persistence_id` stored `state` at `version`.
    fn publish(&self, persistence_id: &str, version: u64, state: Option<&S>);
}

/// The subscribers of one registry.
pub(crate) struct Subscribers<S: Send + 'static> {
    recipients: RwLock<Vec<Recipient<StateChanged<S>>>>,
    /// Whether `recipients` is non-empty: lets entities of a registry without subscribers skip
    /// the lock.
    any: AtomicBool,
    dropped: AtomicU64,
}

impl<S: Send + 'static> Default for Subscribers<S> {
    fn default() -> Self {
        Subscribers {
            recipients: RwLock::new(Vec::new()),
            any: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }
}

impl<S: Send + 'static> Subscribers<S> {
    pub(crate) fn subscribe(&self, recipient: Recipient<StateChanged<S>>) {
        let mut recipients = self.recipients.write().unwrap_or_else(|e| e.into_inner());
        recipients.push(recipient);
        self.any.store(true, Ordering::Release);
    }

    /// Events dropped so far because a subscriber's mailbox was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn forget_stopped(&self) {
        let mut recipients = self.recipients.write().unwrap_or_else(|e| e.into_inner());
        recipients.retain(Recipient::connected);
        self.any.store(!recipients.is_empty(), Ordering::Release);
    }
}

impl<S: Clone + Send + 'static> Publish<S> for Subscribers<S> {
    fn publish(&self, persistence_id: &str, version: u64, state: Option<&S>) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut stopped = false;
        {
            let recipients = self.recipients.read().unwrap_or_else(|e| e.into_inner());
            for recipient in recipients.iter() {
                let event = StateChanged {
                    persistence_id: persistence_id.to_owned(),
                    version,
                    state: state.cloned(),
                };
                // `try_send` enqueues now or not at all: events of one entity enter each
                // mailbox in the order the entity persisted them, and a full mailbox costs
                // the entity nothing.
                match recipient.try_send(event) {
                    Ok(()) => {}
                    Err(SendError::Full(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(DROPPED_METRIC).increment(1);
                    }
                    Err(SendError::Closed(_)) => stopped = true,
                }
            }
        }
        if stopped {
            self.forget_stopped();
        }
    }
}
