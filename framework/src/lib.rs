//! # game-server-less
//!
//! Realtime multiplayer game servers made of nothing but message handlers.
//!
//! - [`stomp`]: STOMP 1.2: the pure frame codec, TCP and WebSocket transports, a client.
//! - [`run`], [`App`]: start a game server from a [`Lobby`] and a [`Msg`] router.
//! - [`lobby`]: the REST lobby on axum: room routes, join tickets, the game's own routes.
//! - [`store`]: rooms, players, user items and checkpoints in SQLite or PostgreSQL.
//! - [`broker`]: the embedded STOMP broker (queues, topics, acks, redelivery, heart-beats).
//! - [`msg`]: realtime handlers routed by message type ([`msg::Msg`], [`msg::Ctx`]).
//! - [`room`]: one room's logic without sockets: ordering, duplicates, sequence numbers.
//! - [`testing`]: run a game's handlers with simulated players, no sockets.
//! - [`ticket`]: the signed, expiring join tokens the lobby issues and the broker checks.
//! - [`server`]: the all-in-one process: command line, ports, graceful shutdown.
//! - [`Error`], [`Result`]: the crate-wide error.
//!
//! A broker and a client, talking over a real socket:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> game_server_less::Result<()> {
//! use game_server_less::broker::{Broker, BrokerConfig};
//! use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions};
//!
//! let broker = Broker::new(BrokerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("tcp://{}", listener.local_addr()?);
//! tokio::spawn(broker.clone().serve_tcp(listener));
//!
//! let client = Client::connect(&url, ConnectOptions::default()).await?;
//! let mut inbox = client.subscribe("/queue/hello", SubscribeOptions::default()).await?;
//! client.send("/queue/hello", "hello, world").await?;
//! assert_eq!(inbox.recv().await.unwrap().body(), b"hello, world");
//! client.disconnect().await?;
//! # Ok(()) }
//! ```

mod app;
pub mod broker;
mod error;
pub mod lobby;
pub mod msg;
pub mod room;
pub mod server;
pub mod stomp;
pub mod store;
pub mod testing;
pub mod ticket;
mod worker;

pub use app::{run, run_with, App, AppConfig};
pub use error::{Error, Result};
pub use lobby::{Caller, Lobby};
pub use msg::{Ctx, Msg};
