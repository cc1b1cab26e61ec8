//! Every message of the game, as types the server, the client, the bots and the tests
//! share: [`In`] is what a player sends, [`Out`] what a room sends. On the wire each is a
//! JSON object whose `type` names the variant (`{"type":"move","dx":1,"dy":0}`).
//!
//! This crate needs nothing but serde, so the client builds on it without the server
//! side; the server re-exports it as `game_server::protocol`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A tile position: column and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Pos {
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
}

/// A move by one tile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Move {
    /// -1, 0 or 1.
    pub dx: i32,
    /// -1, 0 or 1.
    pub dy: i32,
}

/// A chat line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Chat {
    /// What to say: 1 to 200 characters, no control characters.
    pub text: String,
}

/// Asks for the whole world again: clients send it once subscribed (the welcome sent at
/// join may have come before they listened) and after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
// No fields: `{}` to TypeScript, so that `{ "type": "look" }` is one.
#[cfg_attr(feature = "ts", ts(type = "{}"))]
pub struct Look {}

/// What a player sends. Each variant's payload is what its handler takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum In {
    /// Step one tile (`on_move`).
    Move(Move),
    /// Say something to the room (`on_chat`).
    Chat(Chat),
    /// Ask for the whole world (`on_look`).
    Look(Look),
}

/// A wandering NPC, which fights back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Npc {
    /// Its id.
    pub id: u32,
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
    /// Hit points left, out of [`NPC_HP`].
    pub hp: i32,
}

/// A player as others see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Player {
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
    /// Hit points left, out of [`max_hp`] of the level.
    pub hp: i32,
    /// Level, from experience ([`level_of`]).
    pub level: u32,
    /// Dropped: the player's connection is gone, and it keeps its place for a while
    /// (shown greyed out) unless it comes back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub away: bool,
}

/// Who fights: a player or an NPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fighter {
    /// A player, by name.
    Player {
        /// The name.
        name: String,
    },
    /// An NPC, by id.
    Npc {
        /// The id.
        id: u32,
    },
}

/// An NPC's hit points when it (re)appears.
pub const NPC_HP: i32 = 6;
/// Experience for slaying an NPC.
pub const XP_PER_NPC: i64 = 10;
/// Experience for defeating a player in an arena.
pub const XP_PER_PLAYER: i64 = 5;
/// Experience per level.
pub const XP_PER_LEVEL: i64 = 50;

/// The level `xp` experience gives: 1 to 99.
pub fn level_of(xp: i64) -> u32 {
    (1 + xp.max(0) / XP_PER_LEVEL).min(99) as u32
}

/// A player's hit points at full health on `level`.
pub fn max_hp(level: u32) -> i32 {
    8 + 2 * level.min(99) as i32
}

/// An item on the floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct FloorItem {
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
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Welcome {
    /// The zone: `meadow` or `caves`.
    pub zone: String,
    /// The map's rows: `#` walls, `O` portals (to the other zone), `:` arena floor
    /// (where players may fight each other), `.` floor.
    pub map: Vec<String>,
    /// Players by name.
    pub players: BTreeMap<String, Player>,
    /// NPCs.
    pub npcs: Vec<Npc>,
    /// Items on the floor.
    pub items: Vec<FloorItem>,
}

/// What a room sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Out {
    /// The whole world; to one player, on joining and on `look`.
    Welcome(Welcome),
    /// A player arrived.
    Joined {
        /// Who.
        player: String,
        /// Where, and how they are.
        #[serde(flatten)]
        is: Player,
    },
    /// A player left.
    Left {
        /// Who.
        player: String,
    },
    /// A player's connection dropped: it stays, greyed out, for its grace.
    Dropped {
        /// Who.
        player: String,
    },
    /// A dropped player is back.
    Back {
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
        item: FloorItem,
    },
    /// A blow landed.
    Hit {
        /// Who struck.
        by: Fighter,
        /// Who was struck.
        target: Fighter,
        /// How hard.
        damage: i32,
        /// The target's hit points left.
        hp: i32,
    },
    /// A player slew an NPC; it comes back later.
    Slain {
        /// The NPC's id.
        npc: u32,
        /// Who slew it.
        by: String,
        /// The experience they earned.
        #[cfg_attr(feature = "ts", ts(type = "number"))]
        xp: i64,
    },
    /// A player fell; they wake at a spawn point with full hit points ([`Out::Respawned`]).
    Died {
        /// Who.
        player: String,
        /// Who defeated them.
        by: Fighter,
    },
    /// A player is back, at full health.
    Respawned {
        /// Who.
        player: String,
        /// Where and how.
        #[serde(flatten)]
        is: Player,
    },
    /// A player reached a new level (and full health).
    LevelUp {
        /// Who.
        player: String,
        /// Where and how now.
        #[serde(flatten)]
        is: Player,
    },
    /// A player's hit points changed without a fight (healing).
    Hp {
        /// Who.
        player: String,
        /// Hit points now.
        hp: i32,
    },
    /// A player stepped into a portal and leaves for `zone`. The room moves the player
    /// there: its client hears the new room's ticket on its own destination (the
    /// framework's `transferred`).
    Travelled {
        /// Who.
        player: String,
        /// Where to.
        zone: String,
    },
    /// A message type this build does not know (from a newer server): clients ignore it.
    #[serde(other)]
    Unknown,
}

/// `GET /leaderboard`: the most experienced players.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Leaderboard {
    /// Most experience first.
    pub leaders: Vec<Leader>,
}

/// One line of the [`Leaderboard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Leader {
    /// The player.
    pub player: String,
    /// Their experience.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub xp: i64,
    /// Their level.
    pub level: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use game_server_less_client::proto::{Body, Envelope, Input};
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

    #[test]
    fn levels_grow_with_experience_and_hit_points_with_levels() {
        assert_eq!((level_of(-5), level_of(0), level_of(49)), (1, 1, 1));
        assert_eq!(
            (level_of(50), level_of(120), level_of(i64::MAX)),
            (2, 3, 99)
        );
        assert!(max_hp(2) > max_hp(1));
        let hit = Out::Hit {
            by: Fighter::Player { name: "ann".into() },
            target: Fighter::Npc { id: 3 },
            damage: 2,
            hp: 4,
        };
        let json = serde_json::to_value(&hit).unwrap();
        assert_eq!(json["target"], json!({ "kind": "npc", "id": 3 }));
        assert_eq!(serde_json::from_value::<Out>(json).unwrap(), hit);
    }
}
