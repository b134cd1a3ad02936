//! Several replicas of one service over one table: each its own store (its own pool) and
//! registry, as separate processes would be. Writes never deadlock each other, conflicts are
//! absorbed by the entities, and entities that ask each other never hang their registry.

mod common;

use std::time::Duration;

use common::state;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{DurableStore, Error, WriteOutcome};
use futures_util::future::join_all;

/// Stores ids `shared-0`..`shared-9`, `a-0`..`a-4`, `b-0`..`b-4` and two blockers at version 1
/// among 20,000 others,
/// with a trigger that sleeps on every update of a shared row (widening the window in which
/// two statements hold some of them) and for 300 ms on a blocker's.
async fn shared_rows(db: &TestDatabase) -> DurableStore {
    let schema = db.schema();
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.persistence_id LIKE 'blocker%' THEN PERFORM pg_sleep(0.3);
                 ELSE PERFORM pg_sleep(0.02); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER slow BEFORE UPDATE ON {schema}.states_store FOR EACH ROW
                 WHEN (NEW.persistence_id LIKE 'shared%' OR NEW.persistence_id LIKE 'blocker%')
                 EXECUTE FUNCTION {schema}.slow();
             -- Enough other rows that the server finds the batch's rows by index, in the
             -- order the batch lists them, as on a table of real size.
             INSERT INTO {schema}.states_store
                 SELECT 'filler-' || i, 1, '', 'x.Y', 0, 0 FROM generate_series(1, 20000) AS i;
             ANALYZE {schema}.states_store;"
        ))
        .await
        .unwrap();
    let setup = DurableStore::new(db.config()).unwrap();
    let mut ids: Vec<String> = (0..10).map(|i| format!("shared-{i}")).collect();
    ids.extend((0..5).map(|i| format!("a-{i}")));
    ids.extend((0..5).map(|i| format!("b-{i}")));
    ids.extend(["blocker-a".to_owned(), "blocker-b".to_owned()]);
    for result in join_all(ids.iter().map(|id| setup.write(state(id, 1, 0)))).await {
        assert!(matches!(result, Ok(WriteOutcome::Written)), "{result:?}");
    }
    setup
}

/// Two stores write overlapping ids in opposite orders, each as one batch (its only
/// connection is held by a slow write while the batch queues): no caller sees a deadlock, and
/// each write is answered as if it had been sent alone.
#[tokio::test]
async fn batches_with_shared_ids_in_opposite_orders_never_deadlock() {
    let db = TestDatabase::new().await.unwrap();
    let _setup = shared_rows(&db).await;
    let first = DurableStore::new(db.config().max_connections(1)).unwrap();
    let second = DurableStore::new(db.config().max_connections(1)).unwrap();

    let mut order_a = vec!["blocker-a".to_owned()];
    order_a.extend((0..5).map(|i| format!("a-{i}")));
    order_a.extend((0..10).map(|i| format!("shared-{i}")));
    let mut order_b = vec!["blocker-b".to_owned()];
    order_b.extend((0..5).map(|i| format!("b-{i}")));
    order_b.extend((0..10).rev().map(|i| format!("shared-{i}")));

    let writes_a = order_a.iter().map(|id| first.write(state(id, 2, 100)));
    let writes_b = order_b.iter().map(|id| second.write(state(id, 2, 200)));
    let (answers_a, answers_b) = tokio::join!(join_all(writes_a), join_all(writes_b));

    let mut shared_winners = 0;
    for (id, answer) in order_a
        .iter()
        .zip(&answers_a)
        .chain(order_b.iter().zip(&answers_b))
    {
        match answer {
            Ok(WriteOutcome::Written) => {
                if id.starts_with("shared") {
                    shared_winners += 1;
                }
            }
            // The other store wrote version 2 of this shared id first.
            Err(Error::VersionConflict {
                stored: 2,
                attempted: 2,
                ..
            }) if id.starts_with("shared") => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(shared_winners, 10, "each shared id is written by one store");
    db.cleanup().await.unwrap();
}

/// A statement that loses a deadlock anyway (here against a transaction that locks rows in
/// another order than any store would) rolled back whole: it is sent again, and its callers
/// are answered as if nothing had happened.
#[tokio::test]
async fn a_statement_that_loses_a_deadlock_is_sent_again() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    let _setup = shared_rows(&db).await;
    let store = DurableStore::new(db.config().max_connections(1)).unwrap();

    let mut other = db.client().await.unwrap();
    let other = other.transaction().await.unwrap();
    // This session waits long before it looks for deadlocks: the store's statement, which
    // began waiting first, is the one the server rolls back.
    other
        .batch_execute(&format!(
            "SET LOCAL deadlock_timeout = '20s';
             UPDATE {schema}.states_store SET \"timestamp\" = \"timestamp\"
                 WHERE persistence_id = 'shared-9'"
        ))
        .await
        .unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("shared-{i}")).collect();
    let writes = join_all(ids.iter().map(|id| store.write(state(id, 2, 5))));
    let interfere = async {
        // By now the store holds shared-1.. and waits for shared-9.
        tokio::time::sleep(Duration::from_millis(600)).await;
        other
            .batch_execute(&format!(
                "UPDATE {schema}.states_store SET \"timestamp\" = \"timestamp\"
                     WHERE persistence_id = 'shared-1'"
            ))
            .await
            .unwrap();
        other.commit().await.unwrap();
    };
    let (answers, ()) = tokio::join!(writes, interfere);
    for (id, answer) in ids.iter().zip(answers) {
        assert!(
            matches!(answer, Ok(WriteOutcome::Written)),
            "{id}: {answer:?}"
        );
    }
    db.cleanup().await.unwrap();
}

/// What one replica's callers saw.
#[derive(Debug, Default)]
struct Seen {
    /// Acknowledged deposits (of 1) per id.
    acknowledged: std::collections::HashMap<String, i64>,
    conflicts: u64,
    commands: u64,
    conflict_retries: u64,
}

/// One replica of a service, as a process of its own would run it: its own actix system on
/// its own thread, its own store (pool) and registry; `callers` callers send deposits of 1 to
/// random ids of `ids` until `deadline`.
fn replica(
    config: durablestore_postgres::Config,
    ids: Vec<String>,
    callers: usize,
    deadline: std::time::Instant,
) -> std::thread::JoinHandle<Seen> {
    use common::bank::{Account, Deposit};
    use durablestore_postgres::{CommandError, EntityRegistry};

    std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let store = DurableStore::new(config).unwrap();
            let registry = EntityRegistry::builder(store, |id: &str| Account { id: id.into() })
                .start()
                .unwrap();
            let caller = |seed: u64| {
                let (registry, ids) = (registry.clone(), ids.clone());
                async move {
                    let mut rng = fastrand::Rng::with_seed(seed);
                    let mut seen = Seen::default();
                    while std::time::Instant::now() < deadline {
                        let id = &ids[rng.usize(..ids.len())];
                        seen.commands += 1;
                        match registry.send(id, Deposit(1)).await {
                            Ok(_) => *seen.acknowledged.entry(id.clone()).or_default() += 1,
                            Err(CommandError::Conflict(_)) => seen.conflicts += 1,
                            Err(other) => panic!("{id}: {other:?}"),
                        }
                    }
                    seen
                }
            };
            let seeds = (0..callers as u64).map(|i| i * 7919 + 1);
            let mut total = Seen::default();
            for seen in join_all(seeds.map(caller)).await {
                total.commands += seen.commands;
                total.conflicts += seen.conflicts;
                for (id, n) in seen.acknowledged {
                    *total.acknowledged.entry(id).or_default() += n;
                }
            }
            total.conflict_retries = registry.stats().conflict_retries;
            registry.stop().await;
            total
        })
    })
}

/// Three replicas over one table, 50 callers each, 20 hot ids: conflicts between the replicas'
/// live entities are absorbed (the entity decides again on the stored state), and every stored
/// balance equals the deposits acknowledged by all three.
#[test]
fn three_replicas_absorb_conflicts_and_store_exactly_what_they_acknowledge() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDatabase::new()).unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("account-{i:02}")).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let replicas: Vec<_> = (0..3)
        .map(|_| replica(db.config().max_connections(4), ids.clone(), 50, deadline))
        .collect();
    let seen: Vec<Seen> = replicas.into_iter().map(|r| r.join().unwrap()).collect();

    let commands: u64 = seen.iter().map(|s| s.commands).sum();
    let conflicts: u64 = seen.iter().map(|s| s.conflicts).sum();
    let retries: u64 = seen.iter().map(|s| s.conflict_retries).sum();
    println!(
        "{commands} commands, {conflicts} conflicts ({:.3} %), {:.3} decisions per command",
        100.0 * conflicts as f64 / commands as f64,
        (commands + retries) as f64 / commands as f64
    );
    assert!(commands > 0);
    assert!(
        conflicts * 100 < commands,
        "callers saw {conflicts} conflicts in {commands} commands"
    );
    let check = runtime.block_on(async {
        let store = DurableStore::new(db.config()).unwrap();
        for id in &ids {
            let acknowledged: i64 = seen.iter().filter_map(|s| s.acknowledged.get(id)).sum();
            let stored = match store.get(id.clone()).await.unwrap() {
                Some(state) => {
                    state
                        .decode_state::<common::AccountState>()
                        .unwrap()
                        .balance
                }
                None => 0,
            };
            assert_eq!(stored, acknowledged, "{id}");
        }
        db.cleanup().await
    });
    check.unwrap();
}

/// An entity whose decision may ask another entity of the same registry.
mod relay {
    use std::future::Future;
    use std::sync::{Arc, OnceLock};

    use actix::Message;
    use durablestore_postgres::{
        CommandError, DurableStateBehavior, Effect, EntityRegistry, HandleCommand,
        HandleCommandAsync,
    };

    use crate::common::{AccountState, account};

    pub type Registry = Arc<OnceLock<EntityRegistry<Relay>>>;

    /// A registry of relays on `store`, set up by `set_up`, which its relays can reach.
    pub fn registry(
        store: durablestore_postgres::DurableStore,
        set_up: impl FnOnce(
            durablestore_postgres::RegistryBuilder<Relay>,
        ) -> durablestore_postgres::RegistryBuilder<Relay>,
    ) -> EntityRegistry<Relay> {
        let cell: Registry = Default::default();
        let relays = cell.clone();
        let builder = EntityRegistry::builder(store, move |id: &str| Relay {
            id: id.into(),
            registry: relays.clone(),
        });
        let registry = set_up(builder).start().unwrap();
        let _ = cell.set(registry.clone());
        registry
    }

    pub struct Relay {
        pub id: String,
        pub registry: Registry,
    }

    impl DurableStateBehavior for Relay {
        type State = AccountState;
        fn persistence_id(&self) -> &str {
            &self.id
        }
    }

    /// Adds 1; replies with the new count.
    #[derive(Clone, Message)]
    #[rtype(result = "Result<i64, CommandError<String>>")]
    pub struct Bump;

    impl HandleCommand<Bump> for Relay {
        type Reply = i64;
        type Error = String;
        fn handle_command(
            &mut self,
            _: Bump,
            state: &AccountState,
            _: u64,
        ) -> Result<Effect<AccountState, i64>, String> {
            let count = state.balance + 1;
            Ok(Effect::persist(account(&self.id, count), count))
        }
    }

    /// Bumps the entity `.0` (through the registry, from inside the decision), then stores
    /// the count it answered.
    #[derive(Clone, Message)]
    #[rtype(result = "Result<i64, CommandError<String>>")]
    pub struct Ask(pub String);

    impl HandleCommandAsync<Ask> for Relay {
        type Reply = i64;
        type Error = String;
        fn handle_command_async(
            &mut self,
            Ask(other): Ask,
            _: &AccountState,
            _: u64,
        ) -> impl Future<Output = Result<Effect<AccountState, i64>, String>> + 'static {
            let (registry, id) = (self.registry.clone(), self.id.clone());
            async move {
                let registry = registry.get().ok_or("no registry")?;
                let answer = registry
                    .send(&other, Bump)
                    .await
                    .map_err(|e| format!("{other} answered {e}"))?;
                Ok(Effect::persist(account(&id, answer), answer))
            }
        }
    }
}

/// Entities whose decisions ask other entities of the same registry, while every live entity
/// is busy asking: the entities asked still start (beyond `max_live` once no room is made in
/// time), and every command is answered.
#[actix::test]
async fn entities_asking_entities_never_hang_the_registry() {
    use relay::{Ask, Bump};

    let db = TestDatabase::new().await.unwrap();
    for max_live in [1, 2, 100] {
        let registry = relay::registry(DurableStore::new(db.config()).unwrap(), |builder| {
            builder
                .max_live(max_live)
                .max_activation_wait(Duration::from_millis(200))
        });

        // Every live entity asks an entity that is not live.
        let askers: Vec<String> = (0..max_live)
            .map(|i| format!("asker-{max_live}-{i}"))
            .collect();
        for asker in &askers {
            registry.send(asker, Bump).await.unwrap();
        }
        let asks = askers
            .iter()
            .enumerate()
            .map(|(i, asker)| registry.send(asker, Ask(format!("asked-{max_live}-{i}"))));
        let answers = tokio::time::timeout(Duration::from_secs(60), join_all(asks))
            .await
            .expect("every ask answered");
        for (asker, answer) in askers.iter().zip(answers) {
            assert_eq!(answer.unwrap(), 1, "{asker}: the asked entity counted 1");
        }
        // The registry is usable, and back under its limit once entities are idle.
        registry.send("unrelated", Bump).await.unwrap();
        let stats = registry.stats();
        println!("max_live {max_live}: {stats:?}");
        registry.stop().await;
    }
    db.cleanup().await.unwrap();
}

/// One entity asking another with `max_live` 1 and the default wait.
#[actix::test]
async fn an_entity_asking_another_with_room_for_one() {
    use relay::Ask;

    let db = TestDatabase::new().await.unwrap();
    let registry = relay::registry(DurableStore::new(db.config()).unwrap(), |builder| {
        builder.max_live(1)
    });
    for round in 1..=2 {
        let answer =
            tokio::time::timeout(Duration::from_secs(30), registry.send("a", Ask("b".into())))
                .await
                .expect("answered");
        assert_eq!(answer.unwrap(), round);
    }
    assert!(registry.stats().over_limit >= 1);
    registry.stop().await;
    db.cleanup().await.unwrap();
}
