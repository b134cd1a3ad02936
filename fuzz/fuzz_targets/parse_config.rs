//! Connection strings: parsing any text, then checking the config as building a store does,
//! must return a config or a typed error, never panic.
#![no_main]

use durablestore_postgres::{Config, DurableStoreActor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = text.parse::<Config>() {
            let _ = format!("{config:?}");
            // Settings are checked when a store is built (no connection is opened).
            let _ = DurableStoreActor::new(config);
        }
    }
});
