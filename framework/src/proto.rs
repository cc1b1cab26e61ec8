//! What the lobby answers, as types both the server and its clients use: a room's view
//! and a join ticket. No behaviour, no dependencies but serde.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A room as the lobby shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    pub created_at: i64,
    /// Why `players` is empty although `players_online` is not: names are shown to the
    /// room's own players and the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub players_hidden: Option<String>,
    /// The room's owner token, in the answer to its creation only: it ends the room and
    /// kicks players (`Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_token: Option<String>,
}

/// What joining a room answers: everything a client needs to play, with no destination
/// names to build itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ticket {
    /// The room id.
    pub room: String,
    /// The player id (the name joined with).
    pub player: String,
    /// STOMP over WebSocket.
    pub ws_url: String,
    /// STOMP over TCP.
    pub tcp_url: String,
    /// The STOMP `login`.
    pub login: String,
    /// The STOMP `passcode`: a signed token that expires; also the lobby's Bearer token.
    pub token: String,
    /// When the token expires, seconds since the Unix epoch.
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
}

/// A name a person chose: 1 to 32 letters, digits, `-` or `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
