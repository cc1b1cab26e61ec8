//! The starter game: a chat room with a shared counter. Copy this crate to start yours.
//!
//! Run: `cargo run -p chat-counter`, then create a room and join it:
//! `curl -XPOST localhost:8080/rooms` and
//! `curl -XPOST localhost:8080/rooms/ROOM/join -d '{"name":"ann"}'`; connect any STOMP
//! client with the ticket's `login` and `token`, SUBSCRIBE to its `topic`, and SEND
//! `{"type":"add","by":1,"seq":1}` or `{"type":"say","text":"hi","seq":2}` to its `inbox`.

use game_server_less::{Ctx, Lobby, Msg, RoomCtx};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Everything a room remembers; saved in its checkpoints.
#[derive(Default, Serialize, Deserialize)]
pub struct Room {
    count: i64,
}

#[derive(Deserialize)]
struct Add {
    by: i64,
}

#[derive(Deserialize)]
struct Say {
    text: String,
}

fn on_add(room: &mut Room, ctx: &mut Ctx, add: Add) -> Result<(), String> {
    if add.by.abs() > 100 {
        return Err("add at most 100 at a time".into()); // only the sender hears this
    }
    room.count += add.by;
    ctx.broadcast(&json!({ "type": "count", "count": room.count, "by": ctx.sender() }));
    Ok(())
}

fn on_say(_: &mut Room, ctx: &mut Ctx, say: Say) {
    ctx.broadcast(&json!({ "type": "said", "text": say.text, "by": ctx.sender() }));
}

fn on_join(room: &mut Room, ctx: &mut RoomCtx, player: &str) {
    ctx.broadcast(&json!({ "type": "joined", "player": player }));
    ctx.send_to(player, &json!({ "type": "count", "count": room.count }));
}

/// The game's realtime handlers.
pub fn msg() -> Msg<Room> {
    Msg::new(Room::default)
        .route("type=add", on_add)
        .route("type=say", on_say)
        .on_join(on_join)
}

#[tokio::main]
async fn main() {
    if let Err(e) = game_server_less::run(Lobby::new(), msg()).await {
        eprintln!("chat-counter: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use game_server_less::testing::TestRoom;
    use serde_json::json;

    #[test]
    fn everyone_sees_the_count_and_only_the_sender_sees_errors() {
        let mut room = TestRoom::new(super::msg());
        room.join("ann");
        room.join("bob");
        room.send("ann", json!({ "type": "add", "by": 2 })).unwrap();
        assert_eq!(room.received("bob").last().unwrap()["count"], 2);
        let err = room
            .send("bob", json!({ "type": "add", "by": 1000 }))
            .unwrap_err();
        assert_eq!(err, "add at most 100 at a time");
        assert!(room.received("ann").iter().all(|m| m["type"] != "error"));
    }
}
