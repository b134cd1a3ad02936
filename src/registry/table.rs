//! The routing table of a registry: per id, a live actor, a passivating one with the commands
//! that wait for its successor, or none yet with the commands that wait for room under
//! `max_live`. Only ever touched under the registry's lock.
//!
//! Live entities are kept in least-recently-used order, and each routed command stamps its
//! entity with a use number: a counter rather than a clock, which would cost a clock read per
//! command. The idle sweep maps use numbers to time with a checkpoint per sweep.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::Addr;
use lru::LruCache;

use crate::behavior::DurableStateBehavior;
use crate::entity::{DurableEntity, Passivate};

/// How many of the least recently used live entities are looked at for an idle one when room
/// must be made.
const IDLE_SCAN: usize = 64;

/// Delivers one waiting command to the next incarnation.
pub(super) type Waiter<B> = Box<dyn FnOnce(&Incarnation<B>) + Send>;

/// One actor of an id: its address, and how many messages routed to it it has not answered.
pub(super) struct Incarnation<B: DurableStateBehavior> {
    pub(super) addr: Addr<DurableEntity<B>>,
    /// Shared with the actor, which decrements it as it answers.
    pub(super) busy: Arc<AtomicUsize>,
}

impl<B: DurableStateBehavior> Clone for Incarnation<B> {
    fn clone(&self) -> Self {
        Incarnation {
            addr: self.addr.clone(),
            busy: Arc::clone(&self.busy),
        }
    }
}

impl<B: DurableStateBehavior> Incarnation<B> {
    /// Puts a message into the mailbox with `deliver`, counting it as in flight.
    pub(super) fn deliver<T>(&self, deliver: impl FnOnce(&Addr<DurableEntity<B>>) -> T) -> T {
        self.busy.fetch_add(1, Ordering::Relaxed);
        deliver(&self.addr)
    }

    /// Nothing routed to it is waiting for an answer: stopping it makes room at once.
    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }
}

/// A live entity.
struct Live<B: DurableStateBehavior> {
    actor: Incarnation<B>,
    /// Which incarnation of the id this is.
    generation: u64,
    /// The use number of the last command routed to it.
    last_use: u64,
}

/// An entity whose actor is finishing its commands before it stops.
struct Stopping<B: DurableStateBehavior> {
    generation: u64,
    /// Commands sent meanwhile, in the order they arrived.
    waiters: Vec<Waiter<B>>,
}

pub(super) struct Table<B: DurableStateBehavior> {
    /// Live entities, the least recently used last.
    live: LruCache<String, Live<B>>,
    stopping: HashMap<String, Stopping<B>>,
    /// Ids waiting for room to start, first come first served, with their commands and the
    /// number of their turn (which tells a late admission whether the id still waits).
    waiting: VecDeque<String>,
    waiters: HashMap<String, (u64, Vec<Waiter<B>>)>,
    turns: u64,
    /// Use numbers handed out so far.
    uses: u64,
    /// (when, `uses` then), one per idle sweep, oldest first.
    checkpoints: VecDeque<(Instant, u64)>,
    pub(super) stopped: bool,
    generations: u64,
    pub(super) peak_actors: usize,
    pub(super) activations: u64,
    pub(super) passivations: u64,
    /// Activations admitted beyond `max_live` because every live entity had a message in
    /// flight.
    pub(super) over_limit: u64,
}

impl<B: DurableStateBehavior> Default for Table<B> {
    fn default() -> Self {
        Table {
            live: LruCache::unbounded(),
            stopping: HashMap::new(),
            waiting: VecDeque::new(),
            waiters: HashMap::new(),
            turns: 0,
            uses: 0,
            checkpoints: VecDeque::new(),
            stopped: false,
            generations: 0,
            peak_actors: 0,
            activations: 0,
            passivations: 0,
            over_limit: 0,
        }
    }
}

impl<B: DurableStateBehavior> Table<B> {
    /// Entity actors alive: an id is live, passivating or waiting, never two of them, and each
    /// live or passivating slot is one actor.
    pub(super) fn actors(&self) -> usize {
        self.live.len() + self.stopping.len()
    }

    pub(super) fn live(&self) -> usize {
        self.live.len()
    }

    pub(super) fn passivating(&self) -> usize {
        self.stopping.len()
    }

    /// Ids waiting for room to start.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether `id` is live (not passivating, not waiting).
    pub(super) fn is_live(&self, id: &str) -> bool {
        self.live.contains(id)
    }

    /// The live entity `id`, counted as a use.
    pub(super) fn touch(&mut self, id: &str) -> Option<&Incarnation<B>> {
        let live = self.live.get_mut(id)?;
        self.uses += 1;
        live.last_use = self.uses;
        Some(&live.actor)
    }

    /// The commands waiting for `id` to (re)start, if it is passivating or waiting for room.
    pub(super) fn waiters_mut(&mut self, id: &str) -> Option<&mut Vec<Waiter<B>>> {
        match self.stopping.get_mut(id) {
            Some(stopping) => Some(&mut stopping.waiters),
            None => self.waiters.get_mut(id).map(|(_, waiters)| waiters),
        }
    }

    /// Queues `id`, which is neither live nor passivating, to start when there is room;
    /// returns the number of its turn.
    pub(super) fn wait_for_room(&mut self, id: String, waiters: Vec<Waiter<B>>) -> u64 {
        self.turns += 1;
        self.waiting.push_back(id.clone());
        self.waiters.insert(id, (self.turns, waiters));
        self.turns
    }

    /// The id that has waited longest for room, with its commands.
    pub(super) fn next_waiting(&mut self) -> Option<(String, Vec<Waiter<B>>)> {
        let id = self.waiting.pop_front()?;
        let (_, waiters) = self.waiters.remove(&id).unwrap_or_default();
        Some((id, waiters))
    }

    /// Takes `id` out of the queue for room if it still waits there since `turn`, with its
    /// commands.
    pub(super) fn take_waiting(&mut self, id: &str, turn: u64) -> Option<Vec<Waiter<B>>> {
        if self.waiters.get(id).is_none_or(|(since, _)| *since != turn) {
            return None;
        }
        self.waiting.retain(|waiting| waiting != id);
        self.waiters.remove(id).map(|(_, waiters)| waiters)
    }

    pub(super) fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Makes incarnation `generation` of `id` live, as just used.
    pub(super) fn add_live(&mut self, id: String, actor: Incarnation<B>, generation: u64) {
        self.uses += 1;
        let live = Live {
            actor,
            generation,
            last_use: self.uses,
        };
        self.live.put(id, live);
        self.activations += 1;
        self.peak_actors = self.peak_actors.max(self.actors());
    }

    /// Takes the least recently used live entity out of the list.
    #[cfg(test)]
    fn pop_lru(&mut self) -> Option<(String, Live<B>)> {
        self.live.pop_lru()
    }

    /// Passivates the least recently used live entity that holds no message (one that does
    /// makes room only once its commands are answered, which may wait for the very entity
    /// that needs the room), among the [`IDLE_SCAN`] least recently used; if those are all
    /// busy, the least recently used one. False if none is live.
    pub(super) fn passivate_for_room(&mut self) -> bool {
        // Only the least recently used few are looked at: the scan runs under the registry's
        // lock, once per id waiting for room, and must not grow with `max_live`.
        let idle = self
            .live
            .iter()
            .rev()
            .take(IDLE_SCAN)
            .find(|(_, live)| live.actor.is_idle())
            .map(|(id, _)| id.clone());
        match idle {
            Some(id) => self.passivate_id(&id),
            None => match self.live.pop_lru() {
                Some((id, live)) => {
                    self.passivate(id, live);
                    true
                }
                None => false,
            },
        }
    }

    /// Passivates the live entity `id`; false if it is not live.
    pub(super) fn passivate_id(&mut self, id: &str) -> bool {
        match self.live.pop(id) {
            Some(live) => {
                self.passivate(id.to_owned(), live);
                true
            }
            None => false,
        }
    }

    /// Passivates the entities whose last use is at least `idle_timeout` before `now`, going by
    /// the checkpoints of earlier sweeps; records this sweep's checkpoint.
    pub(super) fn passivate_idle(&mut self, now: Instant, idle_timeout: Duration) {
        self.checkpoints.push_back((now, self.uses));
        // The newest checkpoint at least `idle_timeout` old: no entity used at or before it
        // has been used since then. Older ones are done with (their entities were passivated
        // at an earlier sweep).
        let mut idle_until = None;
        while let Some(&(at, uses)) = self.checkpoints.front() {
            if now.duration_since(at) < idle_timeout {
                break;
            }
            idle_until = Some(uses);
            self.checkpoints.pop_front();
        }
        let Some(idle_until) = idle_until else {
            return;
        };
        // An entity with a message in flight is not idle, whatever its last use.
        let idle: Vec<String> = self
            .live
            .iter()
            .rev()
            .take_while(|(_, live)| live.last_use <= idle_until)
            .filter(|(_, live)| live.actor.is_idle())
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.passivate_id(&id);
        }
    }

    /// Tells the live entity `id` (already taken out of `live`) to stop after the commands in
    /// its mailbox: `Passivate` is queued behind them, and later commands wait in the slot.
    fn passivate(&mut self, id: String, live: Live<B>) {
        live.actor.addr.do_send(Passivate);
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

    /// Passivates every live entity (after the commands in its mailbox).
    pub(super) fn passivate_all(&mut self) {
        while let Some((id, live)) = self.live.pop_lru() {
            self.passivate(id, live);
        }
    }

    /// Refuses new commands and passivates every live entity; commands waiting for a start
    /// or a restart are dropped (their callers are answered that the registry stopped).
    pub(super) fn stop(&mut self) {
        self.stopped = true;
        self.passivate_all();
        for stopping in self.stopping.values_mut() {
            stopping.waiters.clear();
        }
        self.waiting.clear();
        self.waiters.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use actix::dev::channel;

    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Nothing {}
    impl prost::Name for Nothing {
        const NAME: &'static str = "Nothing";
        const PACKAGE: &'static str = "test";
    }

    struct Idle;
    impl DurableStateBehavior for Idle {
        type State = Nothing;
        fn persistence_id(&self) -> &str {
            "idle"
        }
    }

    /// An address with no actor behind it: enough for the table, which only sends `Passivate`.
    fn add(table: &mut Table<Idle>, id: &str) -> Arc<AtomicUsize> {
        let generation = table.next_generation();
        let busy = Arc::new(AtomicUsize::new(0));
        let actor = Incarnation {
            addr: Addr::new(channel::channel(0).0),
            busy: Arc::clone(&busy),
        };
        table.add_live(id.to_owned(), actor, generation);
        busy
    }

    fn touch(table: &mut Table<Idle>, id: &str) {
        assert!(table.touch(id).is_some(), "{id} is live");
    }

    fn passivating(table: &Table<Idle>) -> Vec<&str> {
        let mut ids: Vec<&str> = table.stopping.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn the_least_recently_used_is_passivated() {
        let mut table = Table::default();
        for id in ["a", "b", "c"] {
            add(&mut table, id);
        }
        touch(&mut table, "a");
        assert!(table.passivate_for_room());
        assert_eq!(passivating(&table), ["b"]);
        touch(&mut table, "c");
        assert!(table.passivate_for_room());
        assert_eq!(passivating(&table), ["a", "b"]);
        assert!(table.passivate_for_room());
        assert!(!table.passivate_for_room(), "nothing live");
        assert_eq!(table.passivations, 3);
    }

    #[test]
    fn an_idle_entity_is_chosen_to_make_room_before_a_busy_one() {
        let mut table = Table::default();
        let busy_a = add(&mut table, "a");
        add(&mut table, "b");
        busy_a.fetch_add(1, Ordering::Relaxed);
        touch(&mut table, "b");
        // `a` is the least recently used, but busy: `b` goes.
        assert!(table.passivate_for_room());
        assert_eq!(passivating(&table), ["b"]);
        add(&mut table, "c");
        busy_a.fetch_sub(1, Ordering::Relaxed);
        assert!(table.passivate_for_room());
        assert_eq!(
            passivating(&table),
            ["a", "b"],
            "idle again, and the oldest"
        );
        // Only busy entities left: the least recently used goes after its commands.
        let busy_d = add(&mut table, "d");
        busy_d.fetch_add(1, Ordering::Relaxed);
        assert!(table.passivate_for_room());
        assert_eq!(passivating(&table), ["a", "b", "c"]);
    }

    #[test]
    fn the_idle_sweep_skips_entities_with_a_message_in_flight() {
        let idle = Duration::from_secs(60);
        let start = Instant::now();
        let mut table = Table::default();
        let busy = add(&mut table, "slow");
        add(&mut table, "quiet");
        busy.fetch_add(1, Ordering::Relaxed);
        table.passivate_idle(start, idle);
        table.passivate_idle(start + idle, idle);
        assert_eq!(passivating(&table), ["quiet"]);
    }

    #[test]
    fn eviction_order_equals_a_reference_lru_under_random_use() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut table = Table::default();
        // Reference: id by last use.
        let mut reference: BTreeMap<u64, String> = BTreeMap::new();
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut clock = 0;
        for step in 0..5_000 {
            clock += 1;
            match rng.u8(..10) {
                0..=2 => {
                    let id = format!("e-{step}");
                    add(&mut table, &id);
                    reference.insert(clock, id.clone());
                    last.insert(id, clock);
                }
                3..=7 if !last.is_empty() => {
                    let id = last.keys().nth(rng.usize(..last.len())).cloned().unwrap();
                    touch(&mut table, &id);
                    reference.remove(&last[&id]);
                    reference.insert(clock, id.clone());
                    last.insert(id, clock);
                }
                _ => {
                    let expected = reference.pop_first().map(|(_, id)| id);
                    let evicted = table.pop_lru().map(|(id, _)| id);
                    assert_eq!(evicted, expected, "step {step}");
                    if let Some(id) = evicted {
                        last.remove(&id);
                    }
                }
            }
        }
    }

    #[test]
    fn only_entities_unused_for_the_idle_timeout_are_passivated() {
        let idle = Duration::from_secs(60);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut table = Table::default();
        add(&mut table, "old");
        add(&mut table, "busy");
        table.passivate_idle(at(0), idle); // the first checkpoint
        touch(&mut table, "busy");
        table.passivate_idle(at(30), idle);
        add(&mut table, "new");
        table.passivate_idle(at(59), idle);
        assert!(
            passivating(&table).is_empty(),
            "nothing is idle for 60 s yet"
        );
        table.passivate_idle(at(60), idle);
        assert_eq!(
            passivating(&table),
            ["old"],
            "unused since the sweep at 0 s"
        );
        table.passivate_idle(at(89), idle);
        assert_eq!(passivating(&table), ["old"]);
        table.passivate_idle(at(90), idle);
        assert_eq!(passivating(&table), ["busy", "old"], "unused since 30 s");
        touch(&mut table, "new");
        table.passivate_idle(at(100), idle);
        table.passivate_idle(at(159), idle);
        assert_eq!(passivating(&table), ["busy", "old"]);
        table.passivate_idle(at(160), idle);
        assert_eq!(
            passivating(&table),
            ["busy", "new", "old"],
            "unused since 100 s"
        );
        assert_eq!(table.live(), 0);
    }
}
