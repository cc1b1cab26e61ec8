//! # game-server-less-client
//!
//! The client side of game-server-less, and what it shares with the server: what a game's
//! client, bots and tests build on, without the server's dependencies (no axum, no sqlx).
//!
//! - [`proto`]: the lobby's answer types ([`proto::Ticket`], [`proto::RoomView`]), the
//!   room's envelope ([`proto::Envelope`]) and an input ([`proto::Input`]).
//! - [`Error`], [`Result`]: the error of game-server-less, client and server alike.
//! - [`LobbyClient`]: the lobby's REST API as typed calls.
//! - [`bots`]: headless players for any game (`--bot N`).
//! - [`stomp`]: STOMP 1.2 (the `stomp` crate), to play in a room.
//!
//! Layers, from the bottom up (each module uses only those before it): `error`,
//! `proto`, `lobby_client`, `bots`.

mod error;

pub mod bots;
pub mod lobby_client;
pub mod proto;

pub use error::{Error, Result};
pub use lobby_client::LobbyClient;
/// STOMP 1.2: the codec, the transports and the client.
pub use stomp;
