//! Any protobuf bytes as a `DurableState`: if the store accepts it for writing, reading the row
//! back gives exactly the same state.
#![no_main]

use durablestore_postgres::DurableState;
use durablestore_postgres::fuzzing::round_trip;
use durablestore_postgres::prost::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = DurableState::decode(data) else {
        return;
    };
    match round_trip(state.clone()) {
        Ok(read) => assert_eq!(read, state, "a written state must read back unchanged"),
        Err(Ok(_invalid_input)) => {}
        Err(Err(error)) => panic!("an accepted state could not be read back: {error}"),
    }
});
