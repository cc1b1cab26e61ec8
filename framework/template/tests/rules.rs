//! The game's rules, tested with simulated players: no sockets, no broker.

use game_server_less::proto::{Body, RoomEvent};
use game_server_less::testing::{assert_routes, TestRoom};

use __CRATE__::protocol::{Add, In, Out, Roll, Say};

fn add(by: i64) -> In {
    In::Add(Add { by })
}

#[test]
fn every_input_type_has_a_route() {
    assert_routes::<In>(&__CRATE__::msg());
}

#[test]
fn everyone_sees_the_count_and_only_the_sender_sees_errors() {
    let mut room = TestRoom::new(__CRATE__::msg());
    room.join("ann");
    room.join("bob");
    room.received("ann");
    room.received("bob");
    room.send("ann", add(2)).unwrap();
    let count = Out::Count {
        count: 2,
        by: Some("ann".into()),
    };
    let bob = room.received_game::<Out>("bob");
    assert_eq!(bob, room.received_game::<Out>("ann"), "everyone sees it");
    assert_eq!(bob, [count]);
    let err = room.send("bob", add(1000)).unwrap_err();
    assert_eq!(err, "add at most 100 at a time");
    let bob = room.received_as::<Out>("bob");
    assert!(matches!(&bob[0].body, Body::Room(RoomEvent::Error { .. })));
    assert!(room.received("ann").is_empty(), "only bob hears his error");
    assert_eq!(room.state().count, 2);
}

#[test]
fn a_newcomer_is_told_the_count() {
    let mut room = TestRoom::new(__CRATE__::msg());
    room.join("ann");
    room.send("ann", add(-7)).unwrap();
    room.join("cyd");
    let cyd = room.received_game::<Out>("cyd");
    let joined = Out::Joined {
        player: "cyd".into(),
    };
    let count = Out::Count { count: -7, by: None };
    assert_eq!(cyd, [joined, count]);
}

#[test]
fn chat_is_checked_and_broadcast() {
    let mut room = TestRoom::new(__CRATE__::msg());
    room.join("ann");
    room.received("ann");
    let say = |text: &str| In::Say(Say { text: text.into() });
    assert!(room.send("ann", say("  ")).is_err());
    room.send("ann", say("hi")).unwrap();
    let said = Out::Said {
        player: "ann".into(),
        text: "hi".into(),
    };
    assert_eq!(room.received_game::<Out>("ann"), [said]);
}

#[test]
fn a_die_falls_the_same_when_the_room_runs_its_log_again() {
    // Two rooms of the same id given the same messages at the same times: a replay.
    let play = || {
        let mut room = TestRoom::new(__CRATE__::msg());
        room.set_clock(1_800_000_000_000);
        room.join("ann");
        room.received("ann");
        for _ in 0..20 {
            room.send("ann", In::Roll(Roll { sides: 6 })).unwrap();
        }
        room.received_game::<Out>("ann")
    };
    let first = play();
    assert_eq!(first, play(), "the same faces, the same times");
    let faces: Vec<u32> = first
        .iter()
        .map(|o| match o {
            Out::Rolled { face, at, .. } => {
                assert_eq!(*at, 1_800_000_000_000, "the room's clock, not the machine's");
                *face
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(faces.iter().all(|f| (1..=6).contains(f)), "{faces:?}");
    assert!(faces.iter().any(|f| *f != faces[0]), "a die, not a constant: {faces:?}");
    let mut room = TestRoom::new(__CRATE__::msg());
    room.join("bob");
    assert!(room.send("bob", In::Roll(Roll { sides: 1 })).is_err());
}

#[test]
fn unknown_types_get_a_clear_error() {
    let mut room = TestRoom::new(__CRATE__::msg());
    room.join("ann");
    let err = room.send("ann", serde_json::json!({ "type": "fly" })).unwrap_err();
    assert_eq!(err, "unknown message type \"fly\"");
}

#[test]
fn bots_only_send_what_the_room_accepts() {
    let mut room = TestRoom::new(__CRATE__::msg());
    room.join("bot");
    for dice in 0..100 {
        room.send("bot", __CRATE__::bot_input(dice)).unwrap();
    }
}
