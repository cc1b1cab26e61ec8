//! Property tests of the frame codec: random frames round-trip, in any chunking, and
//! random bytes never make it panic.

use bytes::BytesMut;
use proptest::prelude::*;
use stomp::{parse, Command, Frame, Item, Limits, Parsed, StompCodec};
use tokio_util::codec::Decoder;

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(Command::ALL.to_vec())
}

/// Any text, including the characters that need escaping (`\n`, `\r`, `:`, `\\`).
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('\n'), Just('\r'), Just(':'), Just('\\'), any::<char>(),],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        command(),
        proptest::collection::vec((text(), text()), 0..8),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(command, headers, body)| {
            let unescaped = matches!(
                command,
                Command::Connect | Command::Stomp | Command::Connected
            );
            let headers = headers
                .into_iter()
                .filter(|(n, _)| n != "content-length")
                .map(|(n, v)| {
                    if unescaped {
                        // These frames cannot carry EOLs, nor a colon in a name.
                        (
                            n.replace(['\n', '\r', ':'], ""),
                            v.replace(['\n', '\r'], ""),
                        )
                    } else {
                        (n, v)
                    }
                })
                .filter(|(n, _)| n != "content-length")
                .collect();
            Frame {
                command,
                headers,
                body: body.into(),
            }
        })
}

/// What a frame looks like after the wire: the encoder adds `content-length` to bodies.
fn without_length(mut f: Frame) -> Frame {
    f.headers.retain(|(n, _)| n != "content-length");
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames_round_trip(f in frame()) {
        let wire = f.to_bytes();
        match parse(&wire, &Limits::default()) {
            Ok(Parsed::Frame(back, len)) => {
                prop_assert_eq!(len, wire.len());
                prop_assert_eq!(without_length(back), f);
            }
            other => prop_assert!(false, "did not parse back: {:?}", other),
        }
    }

    #[test]
    fn any_chunking_gives_the_same_frames(
        frames in proptest::collection::vec(frame(), 1..6),
        cuts in proptest::collection::vec(1usize..64, 0..40),
        heartbeats in proptest::collection::vec(0usize..3, 6),
    ) {
        let mut wire = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            wire.extend(std::iter::repeat_n(b"\r\n".iter().copied(), heartbeats[i]).flatten());
            wire.extend_from_slice(&f.to_bytes());
        }
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut cuts = cuts.into_iter();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                if let Item::Frame(f) = item {
                    got.push(without_length(f));
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let tight = Limits { max_frame_bytes: 128, max_headers: 4, max_header_bytes: 32 };
        for limits in [Limits::default(), tight] {
            let mut codec = StompCodec::new(limits);
            let mut buf = BytesMut::from(&bytes[..]);
            // Decode until the codec wants more bytes or refuses them; either is fine.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(
        f in frame(),
        tail in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut wire = f.to_bytes().to_vec();
        wire.truncate(wire.len() / 2);
        wire.extend(tail);
        let _ = parse(&wire, &Limits::default());
    }
}
