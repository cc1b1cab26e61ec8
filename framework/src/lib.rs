//! # game-server-less
//!
//! Realtime multiplayer game servers made of nothing but message handlers.
//!
//! Layers, each using only those above it in this list:
//!
//! - [`stomp`]: STOMP 1.2: the pure frame codec, TCP and WebSocket transports, a client.
//! - [`broker`]: the embedded STOMP broker (queues, topics, acks, redelivery, heart-beats).
//! - [`msg`]: realtime handlers routed by message type ([`Msg`], [`Ctx`], [`RoomCtx`]).
//! - [`room`]: one room's logic without sockets: ordering, duplicates, sequence numbers.
//! - [`store`]: rooms, players, user items and checkpoints in SQLite or PostgreSQL.
//! - [`token`]: the signed, expiring join tokens the lobby issues and the broker checks.
//! - [`metrics`]: Prometheus counters and gauges, served at `GET /metrics`.
//! - [`names`], [`proto`]: destination names; the lobby's answer types ([`proto::Ticket`])
//!   and the room's envelope ([`proto::Envelope`]).
//! - [`lobby_client`]: [`LobbyClient`], the typed client of the lobby's REST API.
//! - [`bots`]: headless players for any game (`--bot N`).
//! - [`admin`]: the broker-admin seam: room inboxes, control messages, endpoints.
//! - [`rabbit`]: RabbitMQ as the broker (cluster mode), through its management API.
//! - [`worker`]: room workers: a core without I/O, the STOMP consumer loop, launchers.
//! - [`rooms`]: the room service (create, join, leave, end), without HTTP.
//! - [`auth`], [`lobby`]: the broker's gatekeeper; the REST lobby on axum.
//! - [`http`]: the lobby's HTTP port hardened: timeouts, caps, JSON errors.
//! - [`config`], [`server`]: [`Config`] and the command line; [`Server`] and [`run`].
//! - [`testing`]: run a game's handlers with simulated players, no sockets.
//! - [`scaffold`]: `new NAME`, a new game's crate from the template.
//! - [`Error`], [`Result`]: the crate-wide error.
//!
//! The `server` feature (on by default) holds everything but the client side; a game's
//! client builds with `default-features = false` and gets [`stomp`], [`proto`] and
//! [`LobbyClient`] without the broker, axum or sqlx.
//!
//! A whole game server: a counter any player can add to.
//!
//! ```no_run
//! use game_server_less::{Ctx, Lobby, Msg};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Add { by: i64 }
//!
//! fn on_add(count: &mut i64, ctx: &mut Ctx, add: Add) -> Result<(), String> {
//!     if add.by.abs() > 100 { return Err("add at most 100".into()); } // to the sender only
//!     *count += add.by;
//!     ctx.broadcast(&serde_json::json!({ "type": "count", "count": *count }));
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> game_server_less::Result<()> {
//!     game_server_less::run(Lobby::new(), Msg::new(|| 0i64).route("type=add", on_add)).await
//! }
//! ```
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

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod auth;
pub mod bots;
#[cfg(feature = "server")]
pub mod broker;
#[cfg(feature = "server")]
pub mod config;
mod error;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "server")]
pub mod lobby;
pub mod lobby_client;
#[cfg(feature = "server")]
pub mod metrics;
pub mod msg;
#[cfg(feature = "server")]
pub mod names;
#[cfg(feature = "server")]
pub mod package;
pub mod proto;
#[cfg(feature = "server")]
pub mod rabbit;
pub mod room;
#[cfg(feature = "server")]
pub mod rooms;
#[cfg(feature = "server")]
pub mod scaffold;
#[cfg(feature = "server")]
pub mod server;
pub mod stomp;
#[cfg(feature = "server")]
pub mod store;
pub mod testing;
#[cfg(feature = "server")]
pub mod token;
#[cfg(feature = "server")]
pub mod worker;

/// The axum the lobby is built with, for a game's own routes.
#[cfg(feature = "server")]
pub use axum;
#[cfg(feature = "server")]
pub use config::{Args, Config, Role};
pub use error::{Error, Result};
#[cfg(feature = "server")]
pub use lobby::{Caller, Lobby};
pub use lobby_client::LobbyClient;
pub use msg::{Arrival, Ctx, Msg, RoomCtx, RoomInfo};
#[cfg(feature = "server")]
pub use rooms::Rooms;
#[cfg(feature = "server")]
pub use server::{Running, Server};

#[cfg(feature = "server")]
/// Runs a game server from the command line (see `--help`, and [`server::run`]), or, when
/// AWS Lambda started the process (`AWS_LAMBDA_RUNTIME_API` is set), as a Lambda
/// function (see `lambda`, behind the `lambda` feature).
pub async fn run<S>(lobby: Lobby, msg: Msg<S>) -> Result<()>
where
    S: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        #[cfg(feature = "lambda")]
        return lambda::run(lobby, msg).await;
        #[cfg(not(feature = "lambda"))]
        return Err(Error::Invalid(
            "started by AWS Lambda (AWS_LAMBDA_RUNTIME_API is set), but built without the `lambda` feature: build with `cargo lambda build --release --arm64 --features lambda` (the game's feature that turns on game-server-less/lambda)".into(),
        ));
    }
    server::run(lobby, msg).await
}
