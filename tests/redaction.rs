//! Errors and logs never contain payload bytes: the server's DETAIL of a constraint violation
//! quotes the failing row. (Its own binary: a scoped tracing subscriber is only reliable when no
//! other test of the process registers or drops one meanwhile.)

mod common;

use common::{Captured, account, store_with};
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{DurableState, WriteState};

#[actix::test]
async fn errors_and_logs_never_contain_payload_bytes() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDatabase::new().await.unwrap();
    // The constraint's DETAIL is "Failing row contains (...)", the payload included.
    db.client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "ALTER TABLE {}.states_store ADD CONSTRAINT small CHECK (octet_length(state_payload) < 64)",
            db.schema()
        ))
        .await
        .unwrap();
    let store = store_with(db.config());
    let marker = "PAYLOAD-MARKER-0123456789-PAYLOAD-MARKER";
    let mut secret = account("p", 1);
    secret.padding = marker.as_bytes().to_vec();
    let state = DurableState::new("p", 1, &secret);
    let err = store
        .send(WriteState(state.clone()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23514"), "{err:?}");
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    let mut chain = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(&err);
    while let Some(current) = cause {
        chain.push_str(&format!("{current} | {current:?}\n"));
        cause = current.source();
    }
    let logs = captured.text();
    assert!(logs.contains("23514"), "the failure was logged: {logs}");
    for text in [chain, logs] {
        assert!(!text.contains(marker), "{text}");
        assert!(!text.contains(&hex[..32]), "{text}");
        assert!(!text.contains("Failing row"), "{text}");
    }
    db.cleanup().await.unwrap();
}
