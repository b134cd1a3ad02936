//! What a write answers when the database refuses one row of a batch, or when a concurrent
//! commit explains a refusal: each row as if it had been sent alone.

mod common;

use common::state;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    Config, Distribution, DurableState, DurableStore, Error, GetLatestState, WriteOutcome,
};
use futures_util::future::join_all;

/// Sends 20 writes of version 1 at once on one connection (the first goes alone, the other 19
/// as one batch), `bad` last; returns each answer by id.
async fn write_twenty(
    store: &DurableStore,
    bad: &str,
) -> Vec<(String, Result<WriteOutcome, Error>)> {
    let mut ids: Vec<String> = (0..19).map(|i| format!("ok-{i:02}")).collect();
    ids.push(bad.to_owned());
    let writes = ids.iter().map(|id| store.write(state(id, 1, 1)));
    ids.iter().cloned().zip(join_all(writes).await).collect()
}

/// The 19 good rows are written and stored; the bad row gets an error `is_expected` accepts
/// and is not stored.
async fn assert_only_the_bad_row_fails(
    db: &TestDatabase,
    answers: &[(String, Result<WriteOutcome, Error>)],
    bad: &str,
    is_expected: impl Fn(&Error) -> bool,
) {
    for (id, answer) in answers {
        if id == bad {
            match answer {
                Err(error) => assert!(is_expected(error), "{id}: {error:?}"),
                Ok(outcome) => panic!("{id}: expected an error, got {outcome:?}"),
            }
        } else {
            assert!(
                matches!(answer, Ok(WriteOutcome::Written)),
                "{id}: {answer:?}"
            );
        }
    }
    let stored = db.count_rows().await.unwrap();
    assert_eq!(stored, 19, "only the good rows are stored");
}

fn sqlstate(code: &'static str) -> impl Fn(&Error) -> bool {
    move |error| error.code().map(|c| c.code()) == Some(code)
}

async fn trigger_refusing(db: &TestDatabase, body: &str) {
    let schema = db.schema();
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN {body}; RETURN NEW; END $$;
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {schema}.states_store
                 FOR EACH ROW WHEN (NEW.persistence_id = 'bad') EXECUTE FUNCTION {schema}.refuse();"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_trigger_assert_fails_only_its_row() {
    let db = TestDatabase::new().await.unwrap();
    trigger_refusing(&db, "ASSERT false, 'bad row'").await;
    let store = DurableStore::new(db.config().max_connections(1)).unwrap();
    let answers = write_twenty(&store, "bad").await;
    assert_only_the_bad_row_fails(&db, &answers, "bad", sqlstate("P0004")).await;
    db.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_raise_with_any_errcode_fails_only_its_row() {
    let db = TestDatabase::new().await.unwrap();
    trigger_refusing(&db, "RAISE EXCEPTION 'bad row' USING ERRCODE = 'ZX001'").await;
    let store = DurableStore::new(db.config().max_connections(1)).unwrap();
    let answers = write_twenty(&store, "bad").await;
    assert_only_the_bad_row_fails(&db, &answers, "bad", sqlstate("ZX001")).await;
    db.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_row_level_security_check_fails_only_its_row() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    // Superusers bypass row-level security: the store runs as a role of the test's own.
    let role = format!("{schema}_writer");
    let admin = db.client().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN;
             GRANT USAGE ON SCHEMA {schema} TO {role};
             GRANT SELECT, INSERT, UPDATE ON {schema}.states_store TO {role};
             ALTER TABLE {schema}.states_store ENABLE ROW LEVEL SECURITY;
             CREATE POLICY readable ON {schema}.states_store FOR SELECT USING (true);
             CREATE POLICY no_bad_insert ON {schema}.states_store FOR INSERT
                 WITH CHECK (persistence_id <> 'bad');
             CREATE POLICY no_bad_update ON {schema}.states_store FOR UPDATE
                 USING (true) WITH CHECK (persistence_id <> 'bad');"
        ))
        .await
        .unwrap();
    let mut pg = db.config().pg_config().clone();
    pg.options(format!("-c role={role}"));
    let config = Config::from_pg_config(pg)
        .schema(&schema)
        .max_connections(1);
    let store = DurableStore::new(config).unwrap();
    let answers = write_twenty(&store, "bad").await;
    assert_only_the_bad_row_fails(&db, &answers, "bad", sqlstate("42501")).await;
    drop(store);
    db.cleanup().await.unwrap();
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_view_check_option_fails_only_its_row() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE VIEW {schema}.guarded AS SELECT * FROM {schema}.states_store
                 WHERE persistence_id <> 'bad' WITH CHECK OPTION"
        ))
        .await
        .unwrap();
    let store = DurableStore::new(db.config().table("guarded").max_connections(1)).unwrap();
    let answers = write_twenty(&store, "bad").await;
    assert_only_the_bad_row_fails(&db, &answers, "bad", sqlstate("44000")).await;
    db.cleanup().await.unwrap();
}

/// Two stores write versions 2 and 3 of the same ids at once. A version-3 row whose
/// statement still saw version 1 is refused by the database; if version 2 committed since,
/// the rule allows it and it is sent again: never `Suppressed` on a table with no trigger or
/// policy.
#[tokio::test]
async fn a_refusal_explained_by_a_concurrent_commit_is_sent_again_not_suppressed() {
    const IDS: usize = 2_000;
    let db = TestDatabase::new().await.unwrap();
    let first = DurableStore::new(db.config().max_connections(2)).unwrap();
    let second = DurableStore::new(db.config().max_connections(2)).unwrap();
    let ids: Vec<String> = (0..IDS).map(|i| format!("id-{i:04}")).collect();
    for result in join_all(ids.iter().map(|id| first.write(state(id, 1, 1)))).await {
        assert!(matches!(result, Ok(WriteOutcome::Written)), "{result:?}");
    }

    for round in 0..3 {
        let v2 = ids
            .iter()
            .map(|id| first.write(state(id, 2 + 2 * round, 2)));
        let v3 = ids
            .iter()
            .map(|id| second.write(state(id, 3 + 2 * round, 3)));
        let (v2, v3) = tokio::join!(join_all(v2), join_all(v3));
        for (id, (two, three)) in ids.iter().zip(v2.iter().zip(&v3)) {
            assert!(matches!(two, Ok(WriteOutcome::Written)), "{id} v2: {two:?}");
            let stored = first.get(id.clone()).await.unwrap().unwrap();
            match three {
                Ok(WriteOutcome::Written) => assert_eq!(stored.version_number, 3 + 2 * round),
                // Judged before version 2 committed: as if sent alone then.
                Err(Error::VersionConflict { .. }) => {}
                other => panic!("{id} v3: {other:?}"),
            }
            if !matches!(three, Ok(WriteOutcome::Written)) {
                // Version 3 was not written: the next round must build on 2.
                let fix: DurableState = state(id, 3 + 2 * round, 3);
                assert!(matches!(second.write(fix).await, Ok(WriteOutcome::Written)));
            }
        }
    }
    db.cleanup().await.unwrap();
}

/// Reads by shard stop for good only on a definite answer. Here a lookup function standing in
/// for Citus' kills its own backend on its first call: that batch fails, and the next batch
/// asks for shards again.
#[actix::test]
async fn one_connection_error_does_not_switch_off_reads_by_shard() {
    let db = TestDatabase::new().await.unwrap();
    let schema = db.schema().to_owned();
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE SEQUENCE {schema}.lookups;
             CREATE FUNCTION {schema}.get_shard_id_for_distribution_column(t regclass, v text)
                 RETURNS bigint LANGUAGE plpgsql AS $$
                 BEGIN
                     IF nextval('{schema}.lookups') = 1 THEN
                         PERFORM pg_terminate_backend(pg_backend_pid());
                     END IF;
                     RETURN length(v) % 2;
                 END $$;"
        ))
        .await
        .unwrap();
    let mut pg = db.config().pg_config().clone();
    pg.options(format!("-c search_path={schema}"));
    let config = Config::from_pg_config(pg)
        .schema(&schema)
        .distribution(Distribution::Citus)
        .max_connections(1);
    let actor = durablestore_postgres::DurableStoreActor::new(config).unwrap();
    let store = actix::Actor::start(actor);
    let ids = ["a", "bb", "ccc", "dddd"];
    for id in ids {
        store
            .send(durablestore_postgres::WriteState(state(id, 1, 1)))
            .await
            .unwrap()
            .unwrap();
    }
    let read_all = || {
        join_all(
            ids.iter()
                .map(|id| store.send(GetLatestState((*id).into()))),
        )
    };

    // The first batched read meets the failing lookup.
    let first = read_all().await;
    assert!(
        first.iter().any(|r| matches!(r, Ok(Err(_)))),
        "the killed lookup fails its batch: {first:?}"
    );
    let lookups_before: i64 = db
        .client()
        .await
        .unwrap()
        .query_one(&format!("SELECT last_value FROM {schema}.lookups"), &[])
        .await
        .unwrap()
        .get(0);

    // Later batches still ask for shards, and read every row.
    for _ in 0..3 {
        let again = read_all().await;
        for (id, read) in ids.iter().zip(again) {
            let found = read.unwrap().unwrap().expect("stored");
            assert_eq!(found.persistence_id, *id);
        }
    }
    let lookups_after: i64 = db
        .client()
        .await
        .unwrap()
        .query_one(&format!("SELECT last_value FROM {schema}.lookups"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        lookups_after > lookups_before,
        "the shard lookup is asked again after a connection error ({lookups_before} -> {lookups_after})"
    );
    db.cleanup().await.unwrap();
}
