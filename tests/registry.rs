//! `EntityRegistry`: entities by id, started on demand, one live actor per id, passivated when
//! idle or beyond `max_live`; async handlers, state reads and state publishers. Against the
//! real PostgreSQL and `MemoryStore` from one body each.
//!
//! No test asserts a duration: waits only let passivation happen (polling for the condition),
//! and the hang guard turns a deadlock into a failure.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Arbiter, AsyncContext, Context, Handler, Message};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, DurableEntity, DurableState, DurableStateBehavior, DurableStore, Effect,
    EntityRegistry, Error, GetState, HandleCommand, HandleCommandAsync, InvalidInput,
    RegistryStats, StateChanged, StateStore,
};
use futures_util::future::join_all;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::{oneshot, watch};

// ---- a behavior with sync and async commands ----

/// The state: every value appended, in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LedgerState {
    #[prost(int64, repeated, tag = "1")]
    pub entries: Vec<i64>,
}

impl prost::Name for LedgerState {
    const NAME: &'static str = "LedgerState";
    const PACKAGE: &'static str = "test.registry";
}

struct Ledger {
    id: String,
    /// Async decisions running now, over all entities of the test.
    deciding: Arc<AtomicUsize>,
    /// The most async decisions of one entity seen running at once.
    most_at_once: Arc<AtomicUsize>,
}

impl DurableStateBehavior for Ledger {
    type State = LedgerState;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

/// Every command replies the entries and the version after it.
type Reply = Result<(Vec<i64>, u64), CommandError<String>>;

fn appended(state: &LedgerState, value: i64, version: u64) -> Effect<LedgerState, (Vec<i64>, u64)> {
    let mut entries = state.entries.clone();
    entries.push(value);
    Effect::persist(
        LedgerState {
            entries: entries.clone(),
        },
        (entries, version + 1),
    )
}

#[derive(Clone, Message)]
#[rtype(result = "Reply")]
struct Append(i64);

impl HandleCommand<Append> for Ledger {
    type Reply = (Vec<i64>, u64);
    type Error = String;
    fn handle_command(
        &mut self,
        Append(value): Append,
        state: &LedgerState,
        version: u64,
    ) -> Result<Effect<LedgerState, (Vec<i64>, u64)>, String> {
        Ok(appended(state, value, version))
    }
}

/// Appends after waiting `delay`, as a decision that calls another service does.
#[derive(Clone, Message)]
#[rtype(result = "Reply")]
struct AppendSlowly {
    value: i64,
    delay: Duration,
}

impl HandleCommandAsync<AppendSlowly> for Ledger {
    type Reply = (Vec<i64>, u64);
    type Error = String;
    fn handle_command_async(
        &mut self,
        AppendSlowly { value, delay }: AppendSlowly,
        state: &LedgerState,
        version: u64,
    ) -> impl Future<Output = Result<Effect<LedgerState, (Vec<i64>, u64)>, String>> + 'static {
        let now = self.deciding.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let deciding = Arc::clone(&self.deciding);
        let state = state.clone();
        async move {
            tokio::time::sleep(delay).await;
            deciding.fetch_sub(1, Ordering::SeqCst);
            if value < 0 {
                return Err(format!("{value} is negative"));
            }
            Ok(appended(&state, value, version))
        }
    }
}

/// Appends once the test opens the gate: a command held in flight for as long as the test
/// needs.
#[derive(Clone, Message)]
#[rtype(result = "Reply")]
struct AppendWhenOpened(i64, watch::Receiver<bool>);

impl HandleCommandAsync<AppendWhenOpened> for Ledger {
    type Reply = (Vec<i64>, u64);
    type Error = String;
    fn handle_command_async(
        &mut self,
        AppendWhenOpened(value, mut gate): AppendWhenOpened,
        state: &LedgerState,
        version: u64,
    ) -> impl Future<Output = Result<Effect<LedgerState, (Vec<i64>, u64)>, String>> + 'static {
        let state = state.clone();
        async move {
            gate.wait_for(|open| *open)
                .await
                .map_err(|_| "the gate was dropped".to_owned())?;
            Ok(appended(&state, value, version))
        }
    }
}

/// Deletes the ledger.
#[derive(Clone, Message)]
#[rtype(result = "Reply")]
struct Close;

impl HandleCommand<Close> for Ledger {
    type Reply = (Vec<i64>, u64);
    type Error = String;
    fn handle_command(
        &mut self,
        _: Close,
        _: &LedgerState,
        version: u64,
    ) -> Result<Effect<LedgerState, (Vec<i64>, u64)>, String> {
        Ok(Effect::delete((Vec::new(), version + 1)))
    }
}

/// What the ledgers of one registry share with the test.
#[derive(Clone, Default)]
struct Probe {
    deciding: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl Probe {
    fn ledger(&self, id: &str) -> Ledger {
        Ledger {
            id: id.to_owned(),
            deciding: Arc::clone(&self.deciding),
            most_at_once: Arc::clone(&self.most_at_once),
        }
    }
}

fn ledgers(
    store: impl Into<StateStore>,
    set_up: impl FnOnce(
        durablestore_postgres::RegistryBuilder<Ledger>,
    ) -> durablestore_postgres::RegistryBuilder<Ledger>,
) -> (EntityRegistry<Ledger>, Probe) {
    let probe = Probe::default();
    let make = probe.clone();
    let builder = EntityRegistry::builder(store, move |id: &str| make.ledger(id));
    (set_up(builder).start().expect("on an arbiter"), probe)
}

// ---- helpers ----

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

/// Polls until `condition` holds (passivation happens in the background).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A command's future and a state query's are `Send`: they can be awaited from a task of a
/// multi-threaded runtime (checked when this file compiles; never called).
#[allow(dead_code)]
fn registry_futures_are_send(registry: &EntityRegistry<Ledger>) {
    fn send<T: Send>(_: T) {}
    send(registry.send("id", Append(1)));
    send(registry.state("id"));
}

async fn entries(registry: &EntityRegistry<Ledger>, id: &str) -> (Vec<i64>, u64) {
    let (state, version) = registry.state(id).await.unwrap();
    (state.entries, version)
}

// ---- scenarios shared by both backends ----

async fn entities_start_on_first_use_and_recover_their_state(store: StateStore) {
    let stored = LedgerState {
        entries: vec![7, 8],
    };
    store
        .write(DurableState::new("old", 2, &stored))
        .await
        .unwrap_err(); // version 2 of nothing: refused
    store
        .write(DurableState::new("old", 1, &stored))
        .await
        .unwrap();
    let (registry, _) = ledgers(store.clone(), |b| b);
    assert_eq!(
        registry.stats(),
        RegistryStats::default(),
        "nothing starts eagerly"
    );

    let reply = registry.send("old", Append(9)).await.unwrap();
    assert_eq!(
        reply,
        (vec![7, 8, 9], 2),
        "recovered before the first command"
    );
    let stats = registry.stats();
    assert_eq!((stats.live, stats.activations), (1, 1));

    assert_eq!(registry.send("new", Append(1)).await.unwrap(), (vec![1], 1));
    assert_eq!(registry.send("old", Append(10)).await.unwrap().1, 3);
    assert_eq!(registry.stats().activations, 2, "live entities are reused");
    assert_eq!(entries(&registry, "old").await, (vec![7, 8, 9, 10], 3));
    assert_eq!(entries(&registry, "never").await, (vec![], 0));
    registry.stop().await;
}

async fn concurrent_first_commands_start_one_actor(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b);
    // From this thread and from another arbiter's, all before any entity exists.
    let other = Arbiter::new();
    let (tx, rx) = oneshot::channel();
    let remote = registry.clone();
    other.spawn(async move {
        let replies = join_all((100..200).map(|v| remote.send("hot", Append(v)))).await;
        let _ = tx.send(replies);
    });
    let local = join_all((0..100).map(|v| registry.send("hot", Append(v)))).await;
    let remote = within("the other arbiter", rx).await.unwrap();
    let versions: BTreeSet<u64> = local
        .into_iter()
        .chain(remote)
        .map(|reply| reply.unwrap().1)
        .collect();
    assert_eq!(versions, (1..=200).collect(), "each command applied once");
    let stats = registry.stats();
    assert_eq!(
        (stats.activations, stats.peak_actors),
        (1, 1),
        "one actor for the id"
    );
    registry.stop().await;
    other.stop();
}

async fn idle_entities_are_passivated_and_come_back(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b.idle_timeout(Some(Duration::from_millis(50))));
    registry.send("sleepy", Append(1)).await.unwrap();
    eventually("idle passivation", || registry.stats().live == 0).await;
    eventually("the actor stops", || registry.stats().passivating == 0).await;
    assert_eq!(registry.stats().passivations, 1);

    assert_eq!(
        registry.send("sleepy", Append(2)).await.unwrap(),
        (vec![1, 2], 2),
        "the next incarnation recovered the state"
    );
    assert_eq!(registry.stats().activations, 2);
    registry.stop().await;
}

async fn beyond_max_live_the_least_recently_used_is_passivated(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b.max_live(3));
    for id in ["a", "b", "c", "a", "d"] {
        registry.send(id, Append(1)).await.unwrap();
        assert!(registry.stats().live <= 3);
    }
    // "a" was used again after "b", so "b" was the least recently used when "d" started.
    assert!(!registry.passivate("b"), "b was passivated for d");
    assert!(registry.passivate("c"));
    assert!(registry.passivate("a"));
    for (i, id) in (0..20).map(|i| (i, format!("many-{i}"))) {
        registry.send(&id, Append(i)).await.unwrap();
        assert!(registry.stats().live <= 3);
    }
    let stats = registry.stats();
    assert!(stats.passivations >= 20, "{stats:?}");
    assert_eq!(stats.peak_actors, 3, "never more actors than max_live");
    // Every entity, passivated or not, has what it acknowledged.
    assert_eq!(entries(&registry, "a").await, (vec![1, 1], 2));
    assert_eq!(entries(&registry, "b").await, (vec![1], 1));
    assert_eq!(entries(&registry, "many-3").await, (vec![3], 1));
    registry.stop().await;
}

async fn a_burst_beyond_max_live_waits_for_room(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b.max_live(10));
    // 200 ids at once, three commands each, sent before any entity has answered.
    let sends: Vec<_> = (0..200)
        .flat_map(|i| {
            let id = format!("burst-{i:03}");
            [1, 2, 3].map(|value| registry.send(&id, Append(value)))
        })
        .collect();
    let stats = registry.stats();
    assert_eq!((stats.live, stats.waiting), (0, 190), "{stats:?}");
    let replies = within("the burst", join_all(sends)).await;
    for (n, reply) in replies.into_iter().enumerate() {
        let expected = (n % 3) as u64 + 1;
        assert_eq!(reply.unwrap().1, expected, "in order, once each");
    }
    let stats = registry.stats();
    assert_eq!(
        stats.peak_actors, 10,
        "never more actors than max_live: {stats:?}"
    );
    assert_eq!(stats.waiting, 0);
    assert_eq!(stats.activations, 200);
    registry.stop().await;
}

async fn a_command_racing_a_passivation_goes_to_the_next_incarnation(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b);
    let (open, gate) = watch::channel(false);
    let first = registry.send("race", AppendWhenOpened(1, gate));
    let second = registry.send("race", Append(2));
    assert!(registry.passivate("race"), "Passivate queues behind both");
    // Sent while the entity is passivating: they wait for the next incarnation.
    let third = registry.send("race", Append(3));
    let fourth = registry.send(
        "race",
        AppendSlowly {
            value: 4,
            delay: Duration::from_millis(1),
        },
    );
    let stats = registry.stats();
    assert_eq!((stats.live, stats.passivating), (0, 1));
    open.send(true).unwrap();

    let replies = within("the racing commands", async {
        (first.await, second.await, third.await, fourth.await)
    })
    .await;
    assert_eq!(replies.0.unwrap(), (vec![1], 1));
    assert_eq!(replies.1.unwrap(), (vec![1, 2], 2));
    assert_eq!(replies.2.unwrap(), (vec![1, 2, 3], 3), "after a recovery");
    assert_eq!(replies.3.unwrap(), (vec![1, 2, 3, 4], 4));
    let stats = registry.stats();
    assert_eq!((stats.activations, stats.peak_actors), (2, 1));
    registry.stop().await;
}

async fn churn_never_drops_or_repeats_a_command(store: StateStore) {
    // Two live entities for eight ids, and a 1 ms idle timeout: passivations all the time.
    let (registry, _) = ledgers(store, |b| {
        b.max_live(2).idle_timeout(Some(Duration::from_millis(1)))
    });
    let ids: Vec<String> = (0..8).map(|i| format!("churn-{i}")).collect();
    let clients = (0..16).map(|client| {
        let (registry, ids) = (registry.clone(), ids.clone());
        async move {
            let mut acknowledged = Vec::new();
            for n in 0..40_i64 {
                let id = &ids[fastrand::usize(..ids.len())];
                let value = client * 1000 + n;
                let (_, version) = registry.send(id, Append(value)).await.unwrap();
                acknowledged.push((id.clone(), value, version));
            }
            acknowledged
        }
    });
    let acknowledged: Vec<_> = within("the clients", join_all(clients))
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut by_id: BTreeMap<String, BTreeMap<u64, i64>> = BTreeMap::new();
    for (id, value, version) in acknowledged {
        let previous = by_id.entry(id).or_default().insert(version, value);
        assert_eq!(previous, None, "a version acknowledged twice");
    }
    for (id, versions) in by_id {
        let (stored, version) = entries(&registry, &id).await;
        assert_eq!(version, versions.len() as u64, "{id}: no gap, no extra");
        assert_eq!(
            stored,
            versions.values().copied().collect::<Vec<_>>(),
            "{id}: each acknowledged value stored once, at its version"
        );
    }
    let stats = registry.stats();
    assert!(stats.passivations > 8, "{stats:?}");
    assert!(stats.peak_actors <= 2, "{stats:?}");
    registry.stop().await;
}

async fn async_handlers_run_one_at_a_time_in_mailbox_order(store: StateStore) {
    let (registry, probe) = ledgers(store, |b| b);
    // Later commands have shorter decisions: only the mailbox order can keep them in order.
    let sends: Vec<_> = (0..30_i64)
        .map(|i| {
            if i % 5 == 4 {
                futures_util::future::Either::Left(registry.send("slow", Append(i)))
            } else {
                futures_util::future::Either::Right(registry.send(
                    "slow",
                    AppendSlowly {
                        value: i,
                        delay: Duration::from_millis((30 - i as u64) % 7),
                    },
                ))
            }
        })
        .collect();
    let replies = within("30 commands", join_all(sends)).await;
    for (i, reply) in replies.into_iter().enumerate() {
        let (entries, version) = reply.unwrap();
        assert_eq!(version, i as u64 + 1);
        assert_eq!(entries, (0..=i as i64).collect::<Vec<_>>());
    }
    assert_eq!(probe.most_at_once.load(Ordering::SeqCst), 1);

    // A rejection decided asynchronously writes nothing.
    let err = registry
        .send(
            "slow",
            AppendSlowly {
                value: -1,
                delay: Duration::ZERO,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(ref e) if e == "-1 is negative"));
    assert_eq!(entries(&registry, "slow").await.1, 30);
    registry.stop().await;
}

async fn state_reads_need_no_handler(store: StateStore) {
    // Directly on an entity's address...
    let probe = Probe::default();
    let entity = DurableEntity::new(probe.ledger("direct"), store.clone()).start();
    assert_eq!(
        entity.send(GetState::new()).await.unwrap().unwrap(),
        (LedgerState::default(), 0)
    );
    entity.send(Append(5)).await.unwrap().unwrap();
    let (state, version) = entity.send(GetState::new()).await.unwrap().unwrap();
    assert_eq!((state.entries, version), (vec![5], 1));

    // ...and through a registry, also after a delete.
    let (registry, _) = ledgers(store.clone(), |b| b);
    assert_eq!(entries(&registry, "direct").await, (vec![5], 1));
    registry.send("direct", Close).await.unwrap();
    assert_eq!(entries(&registry, "direct").await, (vec![], 2));
    assert_eq!(store.get("direct".into()).await.unwrap(), None);
    registry.stop().await;
}

/// The events a collector was told of.
type Seen = Arc<Mutex<Vec<StateChanged<LedgerState>>>>;

/// Collects what it is told; `stall` makes it stop reading its mailbox after the first event.
struct Collector {
    seen: Seen,
    capacity: usize,
    stall: bool,
}

impl Actor for Collector {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl Handler<StateChanged<LedgerState>> for Collector {
    type Result = ();
    fn handle(&mut self, event: StateChanged<LedgerState>, ctx: &mut Context<Self>) {
        self.seen.lock().unwrap().push(event);
        if self.stall {
            ctx.wait(actix::fut::wrap_future(std::future::pending::<()>()));
        }
    }
}

fn collector(capacity: usize, stall: bool) -> (actix::Addr<Collector>, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = Collector {
        seen: Arc::clone(&seen),
        capacity,
        stall,
    }
    .start();
    (addr, seen)
}

async fn subscribers_see_each_state_in_version_order(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b.max_live(2));
    let (subscriber, seen) = collector(10_000, false);
    registry.subscribe(subscriber.recipient());
    let ids = ["p-0", "p-1", "p-2"];
    let runs = ids.iter().map(|&id| {
        let registry = registry.clone();
        async move {
            for value in 0..20 {
                registry.send(id, Append(value)).await.unwrap();
            }
            registry.send(id, Close).await.unwrap();
        }
    });
    within("the commands", join_all(runs)).await;
    eventually("every event", || seen.lock().unwrap().len() == 63).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for id in ids {
        let events: Vec<_> = seen.iter().filter(|e| e.persistence_id == id).collect();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=21).collect::<Vec<_>>(),
            "{id}: in version order"
        );
        for event in &events[..20] {
            let state = event.state.as_ref().expect("a state");
            assert_eq!(state.entries.len() as u64, event.version, "{id}");
        }
        assert_eq!(events[20].state, None, "{id}: the delete");
    }
    assert_eq!(registry.stats().state_changes_dropped, 0);
    registry.stop().await;
}

async fn a_slow_subscriber_does_not_hold_up_persistence(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b);
    let (stalled, _) = collector(1, true);
    let (healthy, seen) = collector(1_000, false);
    registry.subscribe(stalled.recipient());
    registry.subscribe(healthy.recipient());
    within("100 commands past a stalled subscriber", async {
        for value in 0..100 {
            registry.send("busy", Append(value)).await.unwrap();
        }
    })
    .await;
    let dropped = registry.stats().state_changes_dropped;
    assert!(
        dropped >= 90,
        "the stalled subscriber's events are dropped: {dropped}"
    );
    eventually("the healthy subscriber's events", || {
        seen.lock().unwrap().len() == 100
    })
    .await;
    registry.stop().await;
}

async fn stopping_finishes_in_flight_commands_then_refuses(store: StateStore) {
    let (registry, _) = ledgers(store.clone(), |b| b);
    let (open, gate) = watch::channel(false);
    let in_flight = registry.send("s", AppendWhenOpened(1, gate));
    let queued = registry.send("s", Append(2));
    registry.send("waits", Append(1)).await.unwrap();
    assert!(registry.passivate("waits"));
    let waiting = registry.send("waits", Append(2)); // may or may not beat the stop

    let stopped = registry.stop();
    assert!(matches!(
        registry.send("s", Append(3)).await,
        Err(CommandError::RegistryStopped)
    ));
    assert!(matches!(
        registry.state("other").await,
        Err(CommandError::RegistryStopped)
    ));
    open.send(true).unwrap();
    within("the stop", stopped).await;
    assert_eq!(in_flight.await.unwrap(), (vec![1], 1));
    assert_eq!(queued.await.unwrap(), (vec![1, 2], 2));
    match waiting.await {
        // Still waiting for a restart when the registry stopped: not delivered.
        Err(CommandError::RegistryStopped) => {}
        // Or delivered to an incarnation started before the stop.
        Ok(reply) => assert_eq!(reply, (vec![1, 2], 2)),
        Err(other) => panic!("{other:?}"),
    }
    let stats = registry.stats();
    assert_eq!(
        (stats.live, stats.passivating),
        (0, 0),
        "every actor stopped"
    );
    assert_eq!(
        store.get("s".into()).await.unwrap().unwrap().version_number,
        2
    );
}

async fn ids_the_store_refuses_start_no_actor(store: StateStore) {
    let (registry, _) = ledgers(store, |b| b);
    let err = registry.send("", Append(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Recovery(Error::InvalidInput(InvalidInput::EmptyPersistenceId))
        ),
        "{err:?}"
    );
    let long = "x".repeat(256);
    assert!(matches!(
        registry.state(&long).await,
        Err(CommandError::Recovery(Error::InvalidInput(_)))
    ));
    assert_eq!(registry.stats().activations, 0);
    registry.stop().await;
}

on_both_backends!(
    entities_start_on_first_use_and_recover_their_state,
    concurrent_first_commands_start_one_actor,
    idle_entities_are_passivated_and_come_back,
    beyond_max_live_the_least_recently_used_is_passivated,
    a_burst_beyond_max_live_waits_for_room,
    a_command_racing_a_passivation_goes_to_the_next_incarnation,
    churn_never_drops_or_repeats_a_command,
    async_handlers_run_one_at_a_time_in_mailbox_order,
    state_reads_need_no_handler,
    subscribers_see_each_state_in_version_order,
    a_slow_subscriber_does_not_hold_up_persistence,
    stopping_finishes_in_flight_commands_then_refuses,
    ids_the_store_refuses_start_no_actor,
);

// ---- PostgreSQL only ----

#[actix::test]
async fn ten_thousand_activations_recover_through_batched_reads() {
    // The only test of this binary that installs the process-wide recorder; other tests' reads
    // add a few batches, which the bounds below allow for.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test binary");
    let db = TestDatabase::new().await.unwrap();
    let store = DurableStore::new(db.config()).unwrap();
    let ids: Vec<String> = (0..10_000).map(|i| format!("bulk-{i:05}")).collect();
    let writes = ids.iter().map(|id| {
        let state = LedgerState { entries: vec![1] };
        store.write(DurableState::new(id.as_str(), 1, &state))
    });
    for written in join_all(writes).await {
        written.unwrap();
    }

    let (registry, _) = ledgers(store.clone(), |b| b);
    let recovered = within(
        "10,000 activations",
        join_all(ids.iter().map(|id| registry.state(id))),
    )
    .await;
    for (state, version) in recovered.into_iter().map(Result::unwrap) {
        assert_eq!((state.entries, version), (vec![1], 1));
    }
    let stats = registry.stats();
    assert_eq!((stats.live, stats.activations), (10_000, 10_000));

    // The reads went out in batches: far fewer statements than entities.
    let (batches, reads) = read_batches(&snapshotter);
    assert!(reads >= 10_000.0, "{reads} reads recorded");
    assert!(batches <= 1_000, "{reads} reads in {batches} statements");
    within("the stop", registry.stop()).await;
    db.cleanup().await.unwrap();
}

/// Statements and rows of the reads recorded so far (`durablestore_read_batch_size`).
fn read_batches(snapshotter: &Snapshotter) -> (usize, f64) {
    let mut batches = 0;
    let mut reads = 0.0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let (DebugValue::Histogram(sizes), "durablestore_read_batch_size") =
            (value, key.key().name())
        {
            batches += sizes.len();
            reads += sizes.iter().map(|size| size.into_inner()).sum::<f64>();
        }
    }
    (batches, reads)
}

#[actix::test]
async fn a_registry_needs_an_arbiter() {
    let store = StateStore::from(durablestore_postgres::MemoryStore::default().start());
    let started = std::thread::spawn(move || {
        EntityRegistry::builder(store, |id: &str| Probe::default().ledger(id))
            .start()
            .map(|_| ())
    });
    let err = started.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
}

/// A registry whose arbiter is gone answers a definite `RegistryStopped` from the first
/// command on: that command never reached an entity.
#[actix::test]
async fn a_command_after_the_arbiter_died_is_answered_registry_stopped() {
    let store = StateStore::from(durablestore_postgres::MemoryStore::default().start());
    let arbiter = Arbiter::new();
    let registry = EntityRegistry::builder(store, |id: &str| Probe::default().ledger(id))
        .arbiter(arbiter.handle())
        .start()
        .unwrap();
    arbiter.stop();
    tokio::task::spawn_blocking(move || arbiter.join())
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            registry.send("late", Append(1)).await,
            Err(CommandError::RegistryStopped)
        ));
    }
}

#[actix::test]
async fn an_idle_timeout_of_zero_is_refused() {
    let store = StateStore::from(durablestore_postgres::MemoryStore::default().start());
    let refused = EntityRegistry::builder(store, |id: &str| Probe::default().ledger(id))
        .idle_timeout(Some(Duration::ZERO))
        .start();
    assert!(matches!(refused, Err(Error::InvalidConfig(_))));
}
