//! Fuzzes the broker's frame handling: any bytes, parsed into frames and handed to the
//! broker from two sessions (an open one and a rate-limited player), with tight queue,
//! transaction and byte bounds. Nothing may panic; refused frames close their session.
#![no_main]

use stomp_broker::fuzzing::handle_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = handle_bytes(data);
});
