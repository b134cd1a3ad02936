//! Hostile and broken input: each case gets its typed error, the table is unchanged, nothing
//! panics.

mod common;

use common::{account, state, store};
use durablestore_postgres::{
    Config, DurableState, DurableStoreActor, Error, GetLatestState, InvalidInput, WriteOutcome,
    WriteState,
};
use prost::Message;

type Check = fn(&Error) -> bool;

fn invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidInput(_))
}

#[actix::test]
async fn hostile_writes_are_rejected_with_typed_errors_and_change_nothing() {
    let (db, store) = store().await;
    // A stored row that must survive every case untouched.
    store
        .send(WriteState(state("keep", 1, 7)))
        .await
        .unwrap()
        .unwrap();
    let before = store
        .send(GetLatestState("keep".into()))
        .await
        .unwrap()
        .unwrap();

    let good = state("acct", 1, 1);
    let with = |f: fn(&mut DurableState)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    let cases: Vec<(&str, DurableState, Check)> = vec![
        ("empty id", with(|s| s.persistence_id.clear()), |e| {
            matches!(e, Error::InvalidInput(InvalidInput::EmptyPersistenceId))
        }),
        (
            "256-byte id",
            with(|s| s.persistence_id = "x".repeat(256)),
            |e| {
                matches!(
                    e,
                    Error::InvalidInput(InvalidInput::PersistenceIdTooLong { len: 256, .. })
                )
            },
        ),
        (
            "10 MB id",
            with(|s| s.persistence_id = "y".repeat(10 << 20)),
            |e| {
                matches!(
                    e,
                    Error::InvalidInput(InvalidInput::PersistenceIdTooLong { .. })
                )
            },
        ),
        (
            "NUL in id",
            with(|s| s.persistence_id = "a\0b".into()),
            |e| {
                matches!(
                    e,
                    Error::InvalidInput(InvalidInput::PersistenceIdContainsNul)
                )
            },
        ),
        ("version 0", with(|s| s.version_number = 0), |e| {
            matches!(e, Error::InvalidInput(InvalidInput::VersionZero { .. }))
        }),
        ("version 2^63", with(|s| s.version_number = 1 << 63), |e| {
            matches!(
                e,
                Error::InvalidInput(InvalidInput::OutOfRange {
                    field: "version_number",
                    ..
                })
            )
        }),
        (
            "version u64::MAX",
            with(|s| s.version_number = u64::MAX),
            |e| {
                matches!(
                    e,
                    Error::InvalidInput(InvalidInput::OutOfRange {
                        field: "version_number",
                        ..
                    })
                )
            },
        ),
        ("shard u64::MAX", with(|s| s.shard = u64::MAX), |e| {
            matches!(
                e,
                Error::InvalidInput(InvalidInput::OutOfRange { field: "shard", .. })
            )
        }),
        ("missing Any", with(|s| s.resulting_state = None), |e| {
            matches!(e, Error::InvalidInput(InvalidInput::MissingState { .. }))
        }),
        (
            "empty Any",
            with(|s| s.resulting_state = Some(Default::default())),
            |e| matches!(e, Error::InvalidInput(InvalidInput::InvalidTypeUrl { .. })),
        ),
        (
            "empty type URL",
            with(|s| s.resulting_state.as_mut().unwrap().type_url.clear()),
            |e| matches!(e, Error::InvalidInput(InvalidInput::InvalidTypeUrl { .. })),
        ),
        (
            "garbage type URL",
            with(|s| {
                s.resulting_state.as_mut().unwrap().type_url = "💥/'; DROP TABLE x; --".into()
            }),
            |e| matches!(e, Error::InvalidInput(InvalidInput::InvalidTypeUrl { .. })),
        ),
        (
            "type URL with only a prefix",
            with(|s| s.resulting_state.as_mut().unwrap().type_url = "type.googleapis.com/".into()),
            invalid,
        ),
        (
            "state over the configured maximum",
            with(|s| s.resulting_state.as_mut().unwrap().value = vec![0; 11 << 20]),
            |e| matches!(e, Error::InvalidInput(InvalidInput::StateTooLarge { .. })),
        ),
        (
            "stale version of the kept row",
            DurableState::new("keep", 1, &account("keep", 666)),
            |e| matches!(e, Error::VersionConflict { stored: 1, .. }),
        ),
    ];
    assert!(cases.len() >= 15);
    for (label, input, check) in cases {
        let result = store.send(WriteState(input)).await.unwrap();
        match result {
            Err(e) => assert!(check(&e), "{label}: unexpected error {e:?}"),
            Ok(outcome) => panic!("{label}: accepted ({outcome:?})"),
        }
    }
    for id in ["", "a\0b", &"z".repeat(10 << 20)] {
        let read = store.send(GetLatestState(id.to_owned())).await.unwrap();
        assert!(
            matches!(read, Err(Error::InvalidInput(_))),
            "read of a bad id: {read:?}"
        );
    }
    assert_eq!(db.count_rows().await.unwrap(), 1, "only the kept row");
    let after = store
        .send(GetLatestState("keep".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, before, "the kept row is untouched");
    db.cleanup().await.unwrap();
}

#[actix::test]
async fn quotes_sql_fragments_and_non_ascii_ids_are_just_ids() {
    let (db, store) = store().await;
    let ids = [
        "'; DROP TABLE states_store; --",
        "\"quoted\" and 'single'",
        "back\\slash and $1 and %s",
        "Ünïcödé 账户 🏦",
        "tab\tnewline\n",
    ];
    for id in ids {
        let outcome = store.send(WriteState(state(id, 1, 5))).await.unwrap();
        assert_eq!(outcome.unwrap(), WriteOutcome::Written, "{id:?}");
        let read = store
            .send(GetLatestState(id.into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, Some(state(id, 1, 5)), "{id:?}");
    }
    assert_eq!(db.count_rows().await.unwrap(), ids.len() as i64);
    db.cleanup().await.unwrap();
}

#[test]
fn hostile_schema_and_table_names_are_rejected() {
    let config = Config::new("127.0.0.1", 5432, "postgres", "", "postgres");
    for name in [
        "x\"; DROP TABLE y; --",
        "a.b",
        "\"quoted\"",
        "it's",
        &"n".repeat(64),
        "",
        "semi;colon",
        "space name",
    ] {
        for (kind, config) in [
            ("schema", config.clone().schema(name)),
            ("table", config.clone().table(name)),
        ] {
            // Setters take anything; building the store refuses it, naming what is wrong.
            match DurableStoreActor::new(config) {
                Err(Error::InvalidConfig(problems)) => assert!(
                    problems.contains(&format!("invalid {kind} name")),
                    "{name:?}: {problems}"
                ),
                other => panic!("{name:?}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}

#[actix::test]
async fn corrupt_rows_written_with_raw_sql_are_typed_errors() {
    let (db, store) = store().await;
    let client = db.client().await.unwrap();
    let table = format!("{}.states_store", db.schema());
    let valid_any = prost_types::Any {
        type_url: "type.googleapis.com/acme.billing.AccountState".into(),
        value: account("x", 1).encode_to_vec(),
    }
    .encode_to_vec();
    let rows: Vec<(&str, i64, Vec<u8>, &str, i64)> = vec![
        ("negative-version", -5, vec![], "acme.X", 0),
        ("negative-shard", 1, vec![], "acme.X", -1),
        ("empty-manifest", 1, vec![], "", 0),
        ("garbage-manifest", 1, vec![], "'; DROP TABLE x", 0),
        (
            "truncated-any",
            1,
            valid_any[..valid_any.len() / 2].to_vec(),
            "google.protobuf.Any",
            0,
        ),
        (
            "any-without-type",
            1,
            vec![0x12, 0x01, 0x00],
            "google.protobuf.Any",
            0,
        ),
    ];
    for (id, version, payload, manifest, shard) in &rows {
        client
            .execute(
                &format!("INSERT INTO {table} VALUES ($1, $2, $3, $4, 0, $5)"),
                &[id, version, payload, manifest, shard],
            )
            .await
            .unwrap();
    }
    for (id, ..) in &rows {
        let err = store
            .send(GetLatestState((*id).into()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, Error::CorruptState { persistence_id, .. } if persistence_id == id),
            "{id}: {err:?}"
        );
    }
    // A payload that is not the stored type: reading works, the typed decode says why not.
    client
        .execute(
            &format!(
                "INSERT INTO {table} VALUES ('wrong-bytes', 1, '\\x0a0a0a'::bytea, 'acme.billing.AccountState', 0, 0)"
            ),
            &[],
        )
        .await
        .unwrap();
    let read = store
        .send(GetLatestState("wrong-bytes".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        read.decode_state::<common::AccountState>(),
        Err(Error::Decode { .. })
    ));
    assert_eq!(
        db.count_rows().await.unwrap(),
        rows.len() as i64 + 1,
        "reads changed nothing"
    );
    db.cleanup().await.unwrap();
}
