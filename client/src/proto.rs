//! The types both the server and its clients use: what the lobby answers (a room's view,
//! a join ticket, an inventory), and the envelope of every message a room sends. Data
//! and the few rules both sides need (a valid name, a first input number); with the
//! `openapi` feature, their schemas for the lobby's `/openapi.json`.
//!
//! A game defines its own messages as serde enums tagged by `type`; [`Envelope`] wraps
//! them with the room's numbering and the framework's own messages:
//!
//! ```
//! use game_server_less_client::proto::{Envelope, Body, RoomEvent};
//! use serde::Deserialize;
//!
//! #[derive(Debug, PartialEq, Deserialize)]
//! #[serde(tag = "type", rename_all = "snake_case")]
//! enum Out {
//!     Count { count: i64 },
//!     #[serde(other)]
//!     Unknown, // a newer server's message: ignored, not an error
//! }
//!
//! let m: Envelope<Out> = serde_json::from_str(r#"{"type":"count","count":3,"seq":7}"#).unwrap();
//! assert_eq!((m.seq, m.body), (7, Body::Game(Out::Count { count: 3 })));
//! let m: Envelope<Out> = serde_json::from_str(r#"{"type":"error","error":"no","seq":7}"#).unwrap();
//! assert_eq!(m.body, Body::Room(RoomEvent::Error { error: "no".into() }));
//! let m: Envelope<Out> = serde_json::from_str(r#"{"type":"fireworks","seq":8}"#).unwrap();
//! assert_eq!(m.body, Body::Game(Out::Unknown));
//! ```
//!
//! A room whose policy batches its outputs sends several envelopes in one message, as a
//! JSON array in order; [`envelopes`] reads a message body either way.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// A room as the lobby shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RoomView {
    /// The room id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Players in it, for those who may see them (see `players_hidden`).
    pub players: Vec<String>,
    /// How many players are in it.
    pub players_online: usize,
    /// Creation time, seconds since the Unix epoch.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub created_at: i64,
    /// Why `players` is empty although `players_online` is not: names are shown to the
    /// room's own players and the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub players_hidden: Option<String>,
    /// The room's owner token, in the answer to its creation only: it ends the room and
    /// kicks players (`Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_token: Option<String>,
    /// Its kind (each kind has its handlers and queue policy).
    #[serde(default)]
    pub kind: String,
    /// What the game says of it (a JSON object), which quick play filters on.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub meta: serde_json::Value,
    /// Locked rooms take no one new.
    #[serde(default)]
    pub locked: bool,
    /// Private rooms are joined by their code, never by quick play.
    #[serde(default)]
    pub private: bool,
    /// A private room's code, in the answer to its creation only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Seats taken: players, and seats quick play reserved for players on their way.
    #[serde(default)]
    pub seats: usize,
    /// Players it holds at most (its kind's policy).
    #[serde(default)]
    pub max_players: usize,
    /// Players connected now (as of the room's latest checkpoint, a moment ago).
    #[serde(default)]
    pub players_connected: usize,
    /// Players whose connections dropped and who keep their seat for their grace.
    #[serde(default)]
    pub players_in_grace: usize,
    /// Who those are, for those who may see names (see `players_hidden`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_grace: Vec<String>,
}

/// What quick play (`POST /matchmake`) asks for: who plays, and in what kind of room
/// with what metadata, or in which private room.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Matchmake {
    /// Who plays.
    pub name: String,
    /// The name's player key, once it has one; or, on its first join, one the client
    /// made ([`new_player_key`]), which then claims the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The kind of room (the server's first if `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata the room must have, each key equal (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<serde_json::Value>,
    /// A private room's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A ticket in the matchmaking queue (`POST /matchmake/queue`), as its holder polls it
/// (`GET /matchmake/queue/{id}?wait=SECS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct QueueView {
    /// The ticket's id: a secret, which polls and cancels it.
    pub id: String,
    /// `waiting`, or `matched` (then `ticket` is the room's).
    pub status: String,
    /// The kind of room it waits for.
    pub kind: String,
    /// How long it has waited, in milliseconds.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub waited_ms: u64,
    /// Tickets of the kind waiting now (this one included while it waits).
    pub waiting: usize,
    /// The group's room's ticket, once matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Ticket>,
    /// The name's player key, when queuing claimed the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_key: Option<String>,
}

impl Matchmake {
    /// Quick play as `name` into the server's default kind, any room.
    pub fn named(name: impl Into<String>) -> Matchmake {
        Matchmake {
            name: name.into(),
            ..Matchmake::default()
        }
    }
}

/// What joining a room answers: everything a client needs to play, with no destination
/// names to build itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Ticket {
    /// The room id.
    pub room: String,
    /// The player id (the name joined with).
    pub player: String,
    /// STOMP over WebSocket: the first of `ws_urls`.
    pub ws_url: String,
    /// STOMP over TCP: the first of `tcp_urls`.
    pub tcp_url: String,
    /// STOMP over WebSocket at every node of the broker, in the order this player tries
    /// them: connect to the first that answers ([`Ticket::ws_endpoints`]), and after a
    /// drop, go down the list again. Empty from older servers, which named one URL.
    #[serde(default)]
    pub ws_urls: Vec<String>,
    /// STOMP over TCP at every node, in the same order.
    #[serde(default)]
    pub tcp_urls: Vec<String>,
    /// The STOMP `login`.
    pub login: String,
    /// The STOMP `passcode`: a signed token that expires; also the lobby's Bearer token.
    pub token: String,
    /// When the token expires, seconds since the Unix epoch.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub expires: u64,
    /// Where to SEND inputs (JSON with `type` and the player's own `seq`).
    pub inbox: String,
    /// Where every player of the room hears the room (SUBSCRIBE).
    pub topic: String,
    /// Where this player alone hears the room (SUBSCRIBE): replies and errors.
    pub private: String,
    /// On the first join with a name: the key that owns the name from now on. Keep it;
    /// every later join with the name must present it (`"key"` in the join request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_key: Option<String>,
    /// A spectator's ticket (`POST /rooms/{id}/spectate`): it reads `topic` and
    /// `private` and sends nothing (`inbox` is empty). Subscribe to `topic`, then to
    /// `private`: the room then sends a snapshot there, stamped with its `seq`; drop the
    /// topic's messages up to that `seq`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spectator: bool,
}

impl Ticket {
    /// Where to connect over WebSocket, in order: `ws_urls`, or `ws_url` alone where
    /// the server named one.
    pub fn ws_endpoints(&self) -> Vec<String> {
        endpoints(&self.ws_urls, &self.ws_url)
    }

    /// Where to connect over TCP, in order: `tcp_urls`, or `tcp_url` alone.
    pub fn tcp_endpoints(&self) -> Vec<String> {
        endpoints(&self.tcp_urls, &self.tcp_url)
    }
}

fn endpoints(all: &[String], first: &str) -> Vec<String> {
    if all.is_empty() {
        vec![first.to_owned()]
    } else {
        all.to_vec()
    }
}

/// `n` random bytes from the operating system.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        // No /dev/urandom: fall back to the standard library's per-process random keys.
        use std::hash::{BuildHasher, RandomState};
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let v = RandomState::new().hash_one(i).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    buf
}

/// A new player key for `name`: `k1.NAME.` and 32 random lowercase hex digits. The
/// lobby makes one at a name's first join when the join brings none. A client may make
/// it itself and send it with that first join (`"key"`): the name is then claimed with
/// it, and should the answer be lost (the lobby died mid-call), the same join asked
/// again with the same key is let in rather than refused.
pub fn new_player_key(name: &str) -> String {
    let secret: String = random_bytes(16)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("k1.{name}.{secret}")
}

/// Whether `key` is a key for `name` of the form [`new_player_key`] makes, which a
/// first join may claim the name with.
pub fn is_new_player_key(key: &str, name: &str) -> bool {
    key.strip_prefix("k1.")
        .and_then(|rest| rest.strip_prefix(name))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|secret| {
            secret.len() == 32
                && secret
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// A player's persistent inventory (`GET /user/items`): item to count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Inventory {
    /// Whose it is.
    pub player: String,
    /// How many of each item.
    #[cfg_attr(feature = "ts", ts(type = "Record<string, number>"))]
    pub items: BTreeMap<String, i64>,
}

/// An inventory grant a handler made, saved with the room's next checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The player.
    pub player: String,
    /// The item.
    pub item: String,
    /// How many.
    pub count: i64,
}

/// A message a room sent, as a client receives it: the game's own message `T` or one of
/// the framework's ([`RoomEvent`]), and the numbers the room stamped on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Envelope<T> {
    /// What the message says.
    #[serde(flatten)]
    pub body: Body<T>,
    /// The room's sequence number: broadcasts count up by one each, so a gap means a
    /// missed message; a message to one player carries the latest broadcast's.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub seq: u64,
    /// The sender's number of the input that caused this message, if an input did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub input_seq: Option<u64>,
    /// Who sent that input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_from: Option<String>,
}

/// The body of an [`Envelope`]: the framework's messages first, then the game's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[serde(untagged)]
pub enum Body<T> {
    /// A message the framework itself sends.
    Room(RoomEvent),
    /// A message of the game.
    Game(T),
}

/// The messages the framework sends, whatever the game.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    /// The room refused one of this player's inputs (or a hook failed); to that player only.
    Error {
        /// Why, for a person.
        error: String,
    },
    /// The room has ended; every player hears it, and then nothing more.
    RoomEnded {
        /// Why.
        reason: String,
    },
    /// The room moved this player to another room (its handler called `transfer`); to
    /// that player only. This room's ticket no longer works: play goes on with `ticket`.
    Transferred {
        /// The ticket of the room the player is in now.
        ticket: Box<Ticket>,
    },
}

/// An input as a client sends it: the game's message and the player's own number for it,
/// growing with each input, by which the room applies each input once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(export))]
pub struct Input<T> {
    /// The player's number for this input.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub seq: u64,
    /// The game's message.
    #[serde(flatten)]
    pub input: T,
}

/// A first input number larger than any an earlier run of a client used: the clock in
/// microseconds. A client numbers its inputs on from it ([`Input::seq`]).
pub fn first_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A name a person chose: 1 to 32 letters, digits, `-` or `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The room messages in one STOMP message body, in order: one envelope (a JSON object),
/// or, from a room whose policy batches its outputs, a JSON array of them. `T` is
/// usually `Envelope<Out>`.
///
/// ```
/// use game_server_less_client::proto::envelopes;
/// use serde_json::Value;
///
/// assert_eq!(envelopes::<Value>(br#"{"type":"a","seq":1}"#).unwrap().len(), 1);
/// let two = envelopes::<Value>(br#" [{"type":"a","seq":1},{"type":"b","seq":2}]"#).unwrap();
/// assert_eq!((two[0]["type"].as_str(), two[1]["seq"].as_u64()), (Some("a"), Some(2)));
/// assert!(envelopes::<Value>(b"[1,").is_err());
/// ```
pub fn envelopes<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<Vec<T>> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body),
        _ => serde_json::from_slice(body).map(|one| vec![one]),
    }
}
