//! The promises of issue 8, each with the case that once broke it: an acknowledgement means
//! stored once, Go reads what we write, and no failure mode is silent.

mod common;

use std::time::Duration;

use actix::{Actor, Arbiter, Context, Handler, Message};
use common::{AccountState, account, state, store, store_with};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, Config, ConflictPolicy, DeleteState, DurableEntity, DurableStateBehavior,
    DurableStoreActor, Effect, Error, GetLatestState, GetRevision, HandleCommand, MemoryStore,
    Revision, RowFormat, SslMode, StateStore, VersionCheck, WriteOutcome, WriteState,
};
use futures_util::future::join_all;
use prost::{Message as _, Name};

/// A counter whose every `Add` persists a new state.
struct Counter {
    id: String,
}

impl DurableStateBehavior for Counter {
    type State = AccountState;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, Message)]
#[rtype(result = "Result<i64, CommandError<()>>")]
struct Add(i64);

impl HandleCommand<Add> for Counter {
    type Reply = i64;
    type Error = ();
    fn handle_command(
        &mut self,
        Add(n): Add,
        state: &AccountState,
        _version: u64,
    ) -> Result<Effect<AccountState, i64>, ()> {
        let balance = state.balance + n;
        Ok(Effect::persist(account(&self.id, balance), balance))
    }
}

/// Two live actors of one id receive the same command, round after round: every `Ok` they
/// give must be an increment that was stored. Failing fast, some rounds conflict; deciding
/// again (the default), every command is applied.
async fn two_live_actors_never_acknowledge_more_than_is_stored(
    store: StateStore,
    conflicts_policy: ConflictPolicy,
) {
    let id = "twin";
    let fail_fast = conflicts_policy.attempts == 1;
    let a = DurableEntity::new(Counter { id: id.into() }, store.clone())
        .conflicts(conflicts_policy.clone())
        .start();
    let b = DurableEntity::new(Counter { id: id.into() }, store.clone())
        .conflicts(conflicts_policy)
        .start();
    let mut acknowledged = 0;
    let mut conflicts = 0;
    for _ in 0..50 {
        let (ra, rb) = futures_util::join!(a.send(Add(1)), b.send(Add(1)));
        for reply in [ra.unwrap(), rb.unwrap()] {
            match reply {
                Ok(_) => acknowledged += 1,
                Err(CommandError::Conflict(_)) => conflicts += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    let stored = store.get(id.into()).await.unwrap().unwrap();
    let balance = stored.decode_state::<AccountState>().unwrap().balance;
    assert_eq!(
        acknowledged, balance,
        "acknowledged {acknowledged}, stored {balance} ({conflicts} conflicts)"
    );
    assert_eq!(balance as u64, stored.version_number);
    if fail_fast {
        // The race is real: both actors computed the same state in some rounds.
        assert!(conflicts > 0, "no round raced");
    } else {
        assert_eq!((acknowledged, conflicts), (100, 0), "every race absorbed");
    }
}

#[actix::test]
async fn two_live_actors_of_one_id_on_postgres() {
    for policy in [ConflictPolicy::fail_fast(), ConflictPolicy::default()] {
        let (db, store) = store().await;
        two_live_actors_never_acknowledge_more_than_is_stored(store.into(), policy).await;
        db.cleanup().await.unwrap();
    }
}

#[actix::test]
async fn two_live_actors_of_one_id_on_memory_store() {
    for policy in [ConflictPolicy::fail_fast(), ConflictPolicy::default()] {
        let store = MemoryStore::default().start().into();
        two_live_actors_never_acknowledge_more_than_is_stored(store, policy).await;
    }
}

/// A store that applies a write and then answers that it timed out, once: what a client sees
/// when the commit happened but its answer was lost.
struct LostAnswer {
    inner: actix::Addr<MemoryStore>,
    lose_next: bool,
}

impl Actor for LostAnswer {
    type Context = Context<Self>;
}

impl Handler<WriteState> for LostAnswer {
    type Result = actix::ResponseFuture<Result<WriteOutcome, Error>>;
    fn handle(&mut self, msg: WriteState, _: &mut Self::Context) -> Self::Result {
        let inner = self.inner.clone();
        let lose = std::mem::take(&mut self.lose_next);
        Box::pin(async move {
            let outcome = inner.send(msg).await.unwrap();
            if lose {
                return Err(Error::Timeout {
                    timeout: Duration::from_secs(1),
                });
            }
            outcome
        })
    }
}

impl Handler<GetRevision> for LostAnswer {
    type Result = actix::ResponseFuture<Result<Revision, Error>>;
    fn handle(&mut self, msg: GetRevision, _: &mut Self::Context) -> Self::Result {
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(msg).await.unwrap() })
    }
}

impl Handler<DeleteState> for LostAnswer {
    type Result = actix::ResponseFuture<Result<WriteOutcome, Error>>;
    fn handle(&mut self, msg: DeleteState, _: &mut Self::Context) -> Self::Result {
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(msg).await.unwrap() })
    }
}

#[actix::test]
async fn after_an_unknown_outcome_the_entity_reloads_before_the_next_command() {
    let memory = MemoryStore::default().start();
    let store = LostAnswer {
        inner: memory.clone(),
        lose_next: true,
    }
    .start();
    let counter = DurableEntity::new(Counter { id: "c".into() }, store).start();
    let first = counter.send(Add(1)).await.unwrap();
    assert!(
        matches!(&first, Err(CommandError::Store(e)) if e.outcome_unknown()),
        "{first:?}"
    );
    // The write of balance 1 landed. The same command again must build on it, not compute
    // balance 1 again and take "already stored" for its own success.
    assert_eq!(counter.send(Add(1)).await.unwrap().unwrap(), 2);
    let stored = memory
        .send(GetLatestState("c".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(stored.version_number, 2);
    assert_eq!(stored.decode_state::<AccountState>().unwrap().balance, 2);
}

/// Decodes a row exactly as eGo's Go store reads it: the manifest names the message type to
/// unmarshal the payload into, and that type must be `google.protobuf.Any`.
fn read_like_go(manifest: &str, payload: &[u8]) -> Result<prost_types::Any, String> {
    if manifest != prost_types::Any::full_name() {
        return Err(format!("{manifest} is not google.protobuf.Any"));
    }
    prost_types::Any::decode(payload).map_err(|e| e.to_string())
}

async fn raw_row(db: &TestDatabase, id: &str) -> (i64, String, Vec<u8>) {
    let row = db
        .client()
        .await
        .unwrap()
        .query_one(
            &format!(
                "SELECT version_number, state_manifest, state_payload FROM {}.states_store \
                 WHERE persistence_id = $1",
                db.schema()
            ),
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[actix::test]
async fn rows_written_by_the_crate_read_as_the_go_store_reads_them() {
    let (db, store) = store().await;
    let written = state("go-reads", 1, 42);
    store
        .send(WriteState(written.clone()))
        .await
        .unwrap()
        .unwrap();
    let (_, manifest, payload) = raw_row(&db, "go-reads").await;
    let any = read_like_go(&manifest, &payload).unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/acme.billing.AccountState"
    );
    assert_eq!(
        AccountState::decode(any.value.as_slice()).unwrap(),
        account("go-reads", 42)
    );
    assert_eq!(Some(any), written.resulting_state);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_go_written_row_is_continued_from_rust_in_the_go_format() {
    let (db, store) = store().await;
    // The row as the Go store writes it: the encoded Any under google.protobuf.Any.
    let any = prost_types::Any {
        type_url: "type.googleapis.com/acme.billing.AccountState".into(),
        value: account("from-go", 7).encode_to_vec(),
    };
    db.client()
        .await
        .unwrap()
        .execute(
            &format!(
                "INSERT INTO {}.states_store VALUES ($1, 3, $2, 'google.protobuf.Any', 1, 0)",
                db.schema()
            ),
            &[&"from-go", &any.encode_to_vec()],
        )
        .await
        .unwrap();
    let counter = DurableEntity::new(
        Counter {
            id: "from-go".into(),
        },
        store.clone(),
    )
    .start();
    assert_eq!(counter.send(Add(1)).await.unwrap().unwrap(), 8);
    let (version, manifest, payload) = raw_row(&db, "from-go").await;
    assert_eq!(version, 4);
    let any = read_like_go(&manifest, &payload).unwrap();
    assert_eq!(
        AccountState::decode(any.value.as_slice()).unwrap().balance,
        8
    );
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn typed_rows_are_opt_in_readable_and_retries_match_across_formats() {
    let db = TestDatabase::new().await.unwrap();
    let typed = store_with(db.config().row_format(RowFormat::Typed));
    let go = store_with(db.config());
    let first = state("typed", 1, 5);
    assert_eq!(
        typed
            .send(WriteState(first.clone()))
            .await
            .unwrap()
            .unwrap(),
        WriteOutcome::Written
    );
    let (_, manifest, payload) = raw_row(&db, "typed").await;
    assert_eq!(manifest, "acme.billing.AccountState");
    assert_eq!(payload, account("typed", 5).encode_to_vec());
    assert!(
        read_like_go(&manifest, &payload).is_err(),
        "Go cannot read it"
    );
    // Both stores read it, and an identical retry is recognized whatever the format.
    for store in [&typed, &go] {
        let read = store
            .send(GetLatestState("typed".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, Some(first.clone()));
        assert_eq!(
            store
                .send(WriteState(first.clone()))
                .await
                .unwrap()
                .unwrap(),
            WriteOutcome::AlreadyStored
        );
    }
    // The next version through the default store is in the Go format again.
    go.send(WriteState(state("typed", 2, 6)))
        .await
        .unwrap()
        .unwrap();
    let (_, manifest, payload) = raw_row(&db, "typed").await;
    assert!(read_like_go(&manifest, &payload).is_ok());
    db.cleanup().await.unwrap();
}

/// Runs SQL on the test database, panicking on failure.
async fn sql(db: &TestDatabase, text: &str) {
    db.client()
        .await
        .unwrap()
        .batch_execute(&text.replace("{s}", db.schema()))
        .await
        .unwrap_or_else(|e| panic!("{text}: {e:?}"));
}

#[actix::test]
async fn a_client_side_timeout_cancels_the_statement_over_tls() {
    let db = TestDatabase::new().await.unwrap();
    let client = db.client().await.unwrap();
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        eprintln!("skipped: the server has no TLS");
        return db.cleanup().await.unwrap();
    }
    // The trigger outlives the server's own statement timeout (it catches that cancel), so only
    // the client's cancel request can stop it.
    sql(
        &db,
        "CREATE FUNCTION {s}.stubborn() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           BEGIN PERFORM pg_sleep(5); EXCEPTION WHEN query_canceled THEN NULL; END;
           PERFORM pg_sleep(120);
           RETURN NEW;
         END $$;
         CREATE TRIGGER stubborn BEFORE INSERT ON {s}.states_store
           FOR EACH ROW EXECUTE FUNCTION {s}.stubborn();",
    )
    .await;
    let app = format!("cancel-{}", db.schema());
    let store = store_with(
        db.config()
            .ssl_mode(SslMode::Require)
            .application_name(&app)
            .statement_timeout(Duration::from_millis(500)),
    );
    let result = store.send(WriteState(state("a", 1, 1))).await.unwrap();
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    let mut active = i64::MAX;
    for _ in 0..100 {
        active = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'active'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(active, 0, "the cancel request reached the server");
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_batch_that_times_out_is_not_retried_row_by_row() {
    let db = TestDatabase::new().await.unwrap();
    // `slow` keeps the only connection busy while the batch queues up behind it.
    sql(
        &db,
        "CREATE FUNCTION {s}.slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.persistence_id = 'slow' THEN PERFORM pg_sleep(0.5); END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER slow BEFORE INSERT ON {s}.states_store
           FOR EACH ROW EXECUTE FUNCTION {s}.slow();
         INSERT INTO {s}.states_store VALUES ('locked', 1, '', 'a.B', 0, 0);",
    )
    .await;
    let store = store_with(
        db.config()
            .max_connections(1)
            .statement_timeout(Duration::from_secs(2)),
    );
    let mut locker = db.client().await.unwrap();
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        &format!(
            "SELECT 1 FROM {}.states_store WHERE persistence_id = 'locked' FOR UPDATE",
            db.schema()
        ),
        &[],
    )
    .await
    .unwrap();
    let slow = actix::spawn(store.send(WriteState(state("slow", 1, 1))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut batch: Vec<_> = (0..18)
        .map(|i| store.send(WriteState(state(&format!("free-{i}"), 1, 1))))
        .collect();
    batch.push(store.send(WriteState(state("locked", 2, 2))));
    let batch = join_all(batch).await;
    lock.rollback().await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap().unwrap(), WriteOutcome::Written);
    // One statement timed out on the locked row: every write of it gets that answer at once,
    // none is sent again alone (18 more statements, and the locked one waiting again).
    for (i, result) in batch.into_iter().enumerate() {
        let result = result.unwrap();
        assert!(
            matches!(result, Err(Error::Timeout { .. })),
            "write {i}: {result:?}"
        );
    }
    assert_eq!(db.count_rows().await.unwrap(), 2, "only slow and locked");
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn statements_prepared_before_an_alter_table_are_prepared_again() {
    let db = TestDatabase::new().await.unwrap();
    let store = store_with(db.config().max_connections(1));
    store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    store
        .send(GetLatestState("a".into()))
        .await
        .unwrap()
        .unwrap();
    // Both statements' result types change: their cached plans are refused (0A000).
    sql(
        &db,
        "ALTER TABLE {s}.states_store ALTER COLUMN persistence_id TYPE text,
         ALTER COLUMN state_manifest TYPE text",
    )
    .await;
    assert_eq!(
        store
            .send(WriteState(state("a", 2, 2)))
            .await
            .unwrap()
            .unwrap(),
        WriteOutcome::Written
    );
    let read = store
        .send(GetLatestState("a".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, Some(state("a", 2, 2)));
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_read_only_connection_is_discarded_so_the_pool_reconnects() {
    let db = TestDatabase::new().await.unwrap();
    let role = db.schema().replace("dstest", "dsrole");
    sql(
        &db,
        &format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA {{s}} TO {role};
             GRANT SELECT, INSERT, UPDATE ON {{s}}.states_store TO {role};
             ALTER ROLE {role} SET default_transaction_read_only = on;"
        ),
    )
    .await;
    let mut pg = db.config().pg_config().clone();
    pg.user(&role);
    let config = Config::from_pg_config(pg)
        .schema(db.schema())
        .max_connections(1);
    let store = store_with(config);
    // Like an old primary after a failover: the connection is up but refuses writes.
    let refused = store.send(WriteState(state("a", 1, 1))).await.unwrap();
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.code().map(|c| c.code()) == Some("25006")),
        "{refused:?}"
    );
    assert!(refused.unwrap_err().is_transient());
    // The server becomes writable; a kept connection would stay read-only for its lifetime.
    sql(
        &db,
        &format!("ALTER ROLE {role} RESET default_transaction_read_only"),
    )
    .await;
    assert_eq!(
        store
            .send(WriteState(state("a", 1, 1)))
            .await
            .unwrap()
            .unwrap(),
        WriteOutcome::Written
    );
    store.send(durablestore_postgres::Disconnect).await.unwrap();
    sql(
        &db,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';
             DROP OWNED BY {role}; DROP ROLE {role};"
        ),
    )
    .await;
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_suppressed_row_is_not_reported_written_in_either_mode() {
    let db = TestDatabase::new().await.unwrap();
    sql(
        &db,
        "CREATE FUNCTION {s}.swallow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.persistence_id = 'ghost' THEN RETURN NULL; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER swallow BEFORE INSERT OR UPDATE ON {s}.states_store
           FOR EACH ROW EXECUTE FUNCTION {s}.swallow();",
    )
    .await;
    for check in [VersionCheck::Unchecked, VersionCheck::Sequential] {
        let store = store_with(db.config().version_check(check));
        let results = join_all([
            store.send(WriteState(state("ghost", 1, 1))),
            store.send(WriteState(state("real", 1, 1))),
        ])
        .await;
        assert!(
            matches!(&results[0], Ok(Err(Error::Suppressed { persistence_id })) if persistence_id == "ghost"),
            "{check:?}: {:?}",
            results[0]
        );
        assert!(results[1].as_ref().unwrap().is_ok(), "{:?}", results[1]);
        sql(&db, "DELETE FROM {s}.states_store").await;
    }
    assert_eq!(db.count_rows().await.unwrap(), 0);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn ids_are_counted_in_characters_as_the_column_does() {
    let (db, store) = store().await;
    let long = "é".repeat(200);
    let written = state(&long, 1, 1);
    store
        .send(WriteState(written.clone()))
        .await
        .unwrap()
        .unwrap();
    let read = store
        .send(GetLatestState(long.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, Some(written));
    let widest = "😀".repeat(255);
    store
        .send(WriteState(state(&widest, 1, 1)))
        .await
        .unwrap()
        .unwrap();
    let too_long = store
        .send(WriteState(state(&"é".repeat(256), 1, 1)))
        .await
        .unwrap();
    assert!(
        matches!(too_long, Err(Error::InvalidInput(_))),
        "{too_long:?}"
    );
    assert_eq!(db.count_rows().await.unwrap(), 2);
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn a_store_stopped_mid_statement_reports_an_unknown_outcome() {
    let db = TestDatabase::new().await.unwrap();
    sql(
        &db,
        "INSERT INTO {s}.states_store VALUES ('a', 1, '', 'a.B', 0, 0)",
    )
    .await;
    let mut locker = db.client().await.unwrap();
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        &format!(
            "SELECT 1 FROM {}.states_store WHERE persistence_id = 'a' FOR UPDATE",
            db.schema()
        ),
        &[],
    )
    .await
    .unwrap();
    let arbiter = Arbiter::new();
    let config = db.config();
    let addr = DurableStoreActor::start_in_arbiter(&arbiter.handle(), move |_| {
        DurableStoreActor::new(config).unwrap()
    });
    let store = StateStore::from(addr);
    let write = actix::spawn(async move { store.write(state("a", 2, 2)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    arbiter.stop();
    let result = write.await.unwrap();
    lock.rollback().await.unwrap();
    assert!(
        matches!(&result, Err(e @ Error::Interrupted) if e.outcome_unknown()),
        "{result:?}"
    );
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn connection_strings_without_sslmode_prefer_tls_as_libpq_does() {
    let db = TestDatabase::new().await.unwrap();
    let client = db.client().await.unwrap();
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let app = format!("prefer-{}", db.schema());
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?application_name={app}",
        db.config()
            .pg_config()
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
    );
    let config: Config = url.parse().unwrap();
    assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
    let store = store_with(config.schema(db.schema()));
    store
        .send(durablestore_postgres::Ping)
        .await
        .unwrap()
        .unwrap();
    let encrypted: bool = client
        .query_one(
            "SELECT coalesce(bool_or(s.ssl), false) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        encrypted,
        ssl == "on",
        "TLS is used whenever the server offers it"
    );
    db.cleanup().await.unwrap();
}
