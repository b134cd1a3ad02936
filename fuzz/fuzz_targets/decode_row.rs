//! Rows as a database (or an attacker with SQL access) could hold them: any manifest, any
//! payload, any numbers. Reading one must never panic; decoding what was read must never panic.
#![no_main]

use durablestore_postgres::fuzzing::decode_row;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // [manifest length][manifest][version: 8][shard: 8][payload...]
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = (len as usize).min(rest.len());
    let (manifest, rest) = rest.split_at(len);
    if rest.len() < 16 {
        return;
    }
    let (numbers, payload) = rest.split_at(16);
    let version = i64::from_le_bytes(numbers[..8].try_into().unwrap());
    let shard = i64::from_le_bytes(numbers[8..].try_into().unwrap());
    let manifest = String::from_utf8_lossy(manifest).into_owned();
    if let Ok(state) = decode_row("fuzz".into(), version, payload.to_vec(), manifest, 0, shard) {
        let _ = state.state_type();
        let _ = state.decode_state::<prost_types::Duration>();
        let _ = state.decode_state::<prost_types::Any>();
    }
});
