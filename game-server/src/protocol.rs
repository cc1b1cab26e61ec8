//! Every message of the game, as types the server, the client, the bots and the tests
//! share: [`In`] is what a player sends, [`Out`] what a room sends. On the wire each is a
//! JSON object whose `type` names the variant (`{"type":"move","dx":1,"dy":0}`).
//!
//! This module needs nothing but serde, so the client builds it without the server side
//! (`game-server` with `default-features = false`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A tile position: column and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
}

/// A move by one tile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// -1, 0 or 1.
    pub dx: i32,
    /// -1, 0 or 1.
    pub dy: i32,
}

/// A chat line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// What to say: 1 to 200 characters, no control characters.
    pub text: String,
}

/// Asks for the whole world again: clients send it once subscribed (the welcome sent at
/// join may have come before they listened) and after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Look {}

/// What a player sends. Each variant's payload is what its handler takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum In {
    /// Step one tile (`on_move`).
    Move(Move),
    /// Say something to the room (`on_chat`).
    Chat(Chat),
    /// Ask for the whole world (`on_look`).
    Look(Look),
}

/// A wandering NPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Npc {
    /// Its id.
    pub id: u32,
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
}

/// An item on the floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Its id.
    pub id: u32,
    /// What it is.
    pub kind: String,
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
}

/// The whole world, as a newcomer gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The map's rows: `#` walls, `.` floor.
    pub map: Vec<String>,
    /// Players by name.
    pub players: BTreeMap<String, Pos>,
    /// NPCs.
    pub npcs: Vec<Npc>,
    /// Items on the floor.
    pub items: Vec<Item>,
}

/// What a room sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Out {
    /// The whole world; to one player, on joining and on `look`.
    Welcome(Welcome),
    /// A player arrived.
    Joined {
        /// Who.
        player: String,
        /// Where.
        #[serde(flatten)]
        at: Pos,
    },
    /// A player left.
    Left {
        /// Who.
        player: String,
    },
    /// A player stepped.
    Moved {
        /// Who.
        player: String,
        /// Where to.
        #[serde(flatten)]
        at: Pos,
    },
    /// The sender's move was blocked; to the sender only.
    Blocked {
        /// Where the sender still is.
        #[serde(flatten)]
        at: Pos,
    },
    /// A player picked up an item.
    Picked {
        /// Who.
        player: String,
        /// What kind of item.
        item: String,
        /// The item's id.
        id: u32,
    },
    /// A player said something.
    Chat {
        /// Who.
        player: String,
        /// What.
        text: String,
    },
    /// Where every NPC is now.
    Npcs {
        /// All of them.
        npcs: Vec<Npc>,
    },
    /// An item appeared.
    Item {
        /// The item.
        item: Item,
    },
    /// A message type this build does not know (from a newer server): clients ignore it.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use game_server_less::proto::{Body, Envelope, Input};
    use serde_json::json;

    #[test]
    fn inputs_are_tagged_by_type_and_numbered() {
        let input = Input {
            seq: 7,
            input: In::Move(Move { dx: 1, dy: 0 }),
        };
        assert_eq!(
            serde_json::to_value(&input).unwrap(),
            json!({ "type": "move", "dx": 1, "dy": 0, "seq": 7 })
        );
        let look = serde_json::to_value(In::Look(Look {})).unwrap();
        assert_eq!(look, json!({ "type": "look" }));
    }

    #[test]
    fn outputs_parse_with_the_rooms_stamps_and_unknown_types_are_ignored() {
        let m: Envelope<Out> = serde_json::from_value(json!({
            "type": "moved", "player": "ann", "x": 2, "y": 3,
            "seq": 9, "input_seq": 4, "input_from": "ann"
        }))
        .unwrap();
        let moved = Out::Moved {
            player: "ann".into(),
            at: Pos { x: 2, y: 3 },
        };
        assert_eq!(
            (m.body, m.seq, m.input_seq),
            (Body::Game(moved), 9, Some(4))
        );
        let newer: Envelope<Out> =
            serde_json::from_value(json!({ "type": "fireworks", "colour": "red", "seq": 10 }))
                .unwrap();
        assert_eq!(newer.body, Body::Game(Out::Unknown));
    }
}
