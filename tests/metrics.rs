//! The store reports its documented metrics through the `metrics` facade.
//! (One test in this binary: it installs the process-wide recorder.)

mod common;

use std::collections::HashMap;

use common::{state, store};
use durablestore_postgres::{GetLatestState, WriteState};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[actix::test]
async fn documented_metrics_are_reported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test binary");

    let (db, store) = store().await;
    store
        .send(WriteState(state("m", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    store
        .send(WriteState(state("m", 2, 2)))
        .await
        .unwrap()
        .unwrap();
    store
        .send(WriteState(state("m", 2, 2)))
        .await
        .unwrap()
        .unwrap(); // retry
    let _ = store.send(WriteState(state("m", 9, 9))).await.unwrap(); // conflict
    store
        .send(GetLatestState("m".into()))
        .await
        .unwrap()
        .unwrap();

    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut histograms: HashMap<String, usize> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                histograms.insert(name, samples.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    assert_eq!(
        counters.get("durablestore_writes_total{outcome=written}"),
        Some(&2),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("durablestore_writes_total{outcome=already_stored}"),
        Some(&1)
    );
    assert_eq!(
        counters.get("durablestore_writes_total{outcome=conflict}"),
        Some(&1)
    );
    assert_eq!(
        histograms.get("durablestore_write_seconds"),
        Some(&4),
        "{histograms:?}"
    );
    assert_eq!(histograms.get("durablestore_write_batch_size"), Some(&4));
    assert_eq!(histograms.get("durablestore_read_batch_size"), Some(&1));
    assert!(
        histograms
            .get("durablestore_pool_wait_seconds")
            .is_some_and(|&n| n >= 5)
    );
    db.cleanup().await.unwrap();
}
