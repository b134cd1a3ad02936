//! The routing table of a registry: per id, a live actor, a passivating one with the commands
//! that wait for its successor, or none yet with the commands that wait for room under
//! `max_live`. Only ever touched under the registry's lock.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use actix::Addr;
use lru::LruCache;

use crate::behavior::DurableStateBehavior;
use crate::entity::{DurableEntity, Passivate};

/// Delivers one waiting command to the next incarnation.
pub(super) type Waiter<B> = Box<dyn FnOnce(&Addr<DurableEntity<B>>) + Send>;

/// A live entity.
pub(super) struct Live<B: DurableStateBehavior> {
    pub(super) addr: Addr<DurableEntity<B>>,
    /// Which incarnation of the id this is.
    pub(super) generation: u64,
    /// When a command was last routed to it.
    pub(super) last_used: Instant,
}

/// An entity whose actor is finishing its commands before it stops.
pub(super) struct Stopping<B: DurableStateBehavior> {
    generation: u64,
    /// Commands sent meanwhile, in the order they arrived.
    pub(super) waiters: Vec<Waiter<B>>,
}

pub(super) struct Table<B: DurableStateBehavior> {
    /// Live entities, least recently used last.
    pub(super) live: LruCache<String, Live<B>>,
    pub(super) stopping: HashMap<String, Stopping<B>>,
    /// Ids waiting for room to start, first come first served, with their commands.
    waiting: VecDeque<String>,
    waiters: HashMap<String, Vec<Waiter<B>>>,
    pub(super) stopped: bool,
    generations: u64,
    pub(super) peak_actors: usize,
    pub(super) activations: u64,
    pub(super) passivations: u64,
}

impl<B: DurableStateBehavior> Default for Table<B> {
    fn default() -> Self {
        Table {
            live: LruCache::unbounded(),
            stopping: HashMap::new(),
            waiting: VecDeque::new(),
            waiters: HashMap::new(),
            stopped: false,
            generations: 0,
            peak_actors: 0,
            activations: 0,
            passivations: 0,
        }
    }
}

impl<B: DurableStateBehavior> Table<B> {
    /// Entity actors alive: an id is live, passivating or waiting, never two of them, and each
    /// live or passivating slot is one actor.
    pub(super) fn actors(&self) -> usize {
        self.live.len() + self.stopping.len()
    }

    /// Ids waiting for room to start.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The commands waiting for `id` to (re)start, if it is passivating or waiting for room.
    pub(super) fn waiters_mut(&mut self, id: &str) -> Option<&mut Vec<Waiter<B>>> {
        match self.stopping.get_mut(id) {
            Some(stopping) => Some(&mut stopping.waiters),
            None => self.waiters.get_mut(id),
        }
    }

    /// Queues `id`, which is neither live nor passivating, to start when there is room.
    pub(super) fn wait_for_room(&mut self, id: String, waiters: Vec<Waiter<B>>) {
        self.waiting.push_back(id.clone());
        self.waiters.insert(id, waiters);
    }

    /// The id that has waited longest for room, with its commands.
    pub(super) fn next_waiting(&mut self) -> Option<(String, Vec<Waiter<B>>)> {
        let id = self.waiting.pop_front()?;
        let waiters = self.waiters.remove(&id).unwrap_or_default();
        Some((id, waiters))
    }

    pub(super) fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    pub(super) fn add_live(&mut self, id: String, live: Live<B>) {
        self.live.put(id, live);
        self.activations += 1;
        self.peak_actors = self.peak_actors.max(self.actors());
    }

    /// Tells the live entity `id` (already taken out of `live`) to stop after the commands in
    /// its mailbox: `Passivate` is queued behind them, and later commands wait in the slot.
    pub(super) fn passivate(&mut self, id: String, live: Live<B>) {
        live.addr.do_send(Passivate);
        self.passivations += 1;
        self.stopping.insert(
            id,
            Stopping {
                generation: live.generation,
                waiters: Vec::new(),
            },
        );
    }

    /// Frees the slot of incarnation `generation` of `id`, which is gone; returns the commands
    /// waiting for the next one. A slot of another incarnation is left alone.
    pub(super) fn remove(&mut self, id: &str, generation: u64) -> Vec<Waiter<B>> {
        if self
            .stopping
            .get(id)
            .is_some_and(|stopping| stopping.generation == generation)
        {
            return self
                .stopping
                .remove(id)
                .map(|stopping| stopping.waiters)
                .unwrap_or_default();
        }
        // An actor that died without being passivated (its arbiter stopped).
        if self
            .live
            .peek(id)
            .is_some_and(|live| live.generation == generation)
        {
            self.live.pop(id);
        }
        Vec::new()
    }

    /// Refuses new commands and passivates every live entity; commands waiting for a start
    /// or a restart are dropped (their callers are answered that the registry stopped).
    pub(super) fn stop(&mut self) {
        self.stopped = true;
        while let Some((id, live)) = self.live.pop_lru() {
            self.passivate(id, live);
        }
        for stopping in self.stopping.values_mut() {
            stopping.waiters.clear();
        }
        self.waiting.clear();
        self.waiters.clear();
    }
}
