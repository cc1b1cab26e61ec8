//! Every message of the game: [`In`] is what a player sends, [`Out`] what the room
//! sends. On the wire each is a JSON object whose `type` names the variant, as in
//! `{"type":"add","by":2}`. Add a message here first, then its handler and route in
//! `lib.rs`: `cargo test` names any variant without a route.
//!
//! The web page's TypeScript types (`web/src/bindings`) are generated from these by
//! ts-rs: `cargo test --features ts` fails when they are stale, and
//! `BLESS=1 cargo test --features ts` writes them again.

use serde::{Deserialize, Serialize};

/// Adds to the room's counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Add {
    /// -100 to 100.
    #[cfg_attr(feature = "ts", ts(type = "number"))] // a JS number: exact to 2^53
    pub by: i64,
}

/// Says something to the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Say {
    /// 1 to 200 characters.
    pub text: String,
}

/// Rolls a die for everyone to see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Roll {
    /// Its faces: 2 to 100.
    pub sides: u32,
}

/// What a player sends; each variant's payload is what its handler takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum In {
    /// `on_add`.
    Add(Add),
    /// `on_say`.
    Say(Say),
    /// `on_roll`.
    Roll(Roll),
}

/// What the room sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Out {
    /// The counter changed (or, to a newcomer, what it is).
    Count {
        /// Its value.
        #[cfg_attr(feature = "ts", ts(type = "number"))] // a JS number: exact to 2^53
        count: i64,
        /// Who changed it, if anyone did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A player said something.
    Said {
        /// Who.
        player: String,
        /// What.
        text: String,
    },
    /// A player rolled a die.
    Rolled {
        /// Who.
        player: String,
        /// The face it fell on, 1 to `sides`.
        face: u32,
        /// Its faces.
        sides: u32,
        /// When, by the room's clock (ms since the epoch).
        #[cfg_attr(feature = "ts", ts(type = "number"))]
        at: u64,
    },
    /// A player arrived.
    Joined {
        /// Who.
        player: String,
    },
    /// A type this build does not know (from a newer server): clients ignore it.
    #[serde(other)]
    Unknown,
}
