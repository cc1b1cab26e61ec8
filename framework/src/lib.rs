//! # game-server-less
//!
//! Realtime multiplayer game servers made of nothing but message handlers.
//!
//! The crates below this one, re-exported: [`stomp`] (STOMP 1.2: codec, transports,
//! client), [`broker`] (the `stomp-broker` crate: the embedded STOMP broker, which
//! knows nothing of games) and `game-server-less-client` ([`proto`], the shared wire
//! types; [`Error`] and [`Result`]; [`LobbyClient`]; [`bots`]), which a game's client
//! uses without this crate, and so without axum or sqlx.
//!
//! The layers of this crate, from the bottom up. Each module uses only the modules
//! listed before it (and the crates below); `tests/layers.rs` fails when an import
//! points up, and checks that ARCHITECTURE.md carries the same list.
//!
//! 1. [`names`]: destination names per broker, and the users the framework reserves.
//! 2. [`token`]: every token: signed join tokens, player keys, owner tokens.
//! 3. [`policy`]: a room kind's queue policy ([`Policy`]), decided per kind.
//! 4. [`msg`]: realtime handlers routed by message type ([`Msg`], [`Ctx`], [`RoomCtx`]).
//! 5. [`room`]: one room without sockets: duplicates, ordering, sequence numbers.
//! 6. [`testing`]: [`testing::TestRoom`], a game's rules run with simulated players.
//! 7. [`http`]: the lobby's HTTP port hardened: timeouts, caps, JSON errors.
//! 8. [`metrics`]: Prometheus counters and gauges, served at `GET /metrics`; it reads the
//!    broker's [`broker::Stats`] when scraped.
//! 9. [`store`]: rooms, players and seats, items, checkpoints (with the transfers
//!    outbox and the match records) and named rooms in SQLite or PostgreSQL.
//! 10. [`admin`]: the broker-admin seam: room inboxes, control messages, endpoints.
//! 11. [`rabbit`]: RabbitMQ as the broker (cluster mode), through its management API.
//! 12. [`worker`]: room workers: a core without I/O, the STOMP consumer loop, launchers,
//!     the kinds of room ([`Kinds`]), the [`worker::Transfers`] seam.
//! 13. [`replay`]: the deploy gate: recorded matches run again under this build.
//! 14. [`auth`]: the broker's gatekeeper: who may connect, send and subscribe.
//! 15. [`rooms`]: the room service (create, join, quick play, transfer, leave, end),
//!     without HTTP.
//! 16. [`presence`]: who is connected, told to the rooms: the embedded broker's
//!     connection events and RabbitMQ's event exchange; expired seat reservations.
//! 17. [`inspect`]: the operator's inspector: the page at `/inspect` and the admin API.
//! 18. [`lobby`]: the REST lobby on axum, over the room service.
//! 19. [`config`]: [`Config`] and the command line ([`Args`]).
//! 20. [`package`]: `package`, the AWS SAM template of a deployment.
//! 21. [`scaffold`]: `new NAME`, a new game's crate from the template.
//! 22. [`server`]: [`Server`] and [`server::run`]: the process in its three modes.
//! 23. `lambda` (feature `lambda`): the same on AWS Lambda; then [`run`], which picks.
//!
//! The `server` feature (on by default) holds everything but [`msg`], [`room`] and
//! [`testing`]: a crate of game rules alone builds and tests them without it.
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
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod inspect;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "server")]
pub mod lobby;
#[cfg(feature = "server")]
pub mod metrics;
pub mod msg;
#[cfg(feature = "server")]
pub mod names;
#[cfg(feature = "server")]
pub mod package;
pub mod policy;
#[cfg(feature = "server")]
pub mod presence;
#[cfg(feature = "server")]
pub mod rabbit;
#[cfg(feature = "server")]
pub mod replay;
pub mod room;
#[cfg(feature = "server")]
pub mod rooms;
#[cfg(feature = "server")]
pub mod scaffold;
#[cfg(feature = "server")]
pub mod server;
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
pub use game_server_less_client::{bots, lobby_client, proto, Error, LobbyClient, Result};
#[cfg(feature = "server")]
pub use lobby::{Caller, Lobby};
pub use msg::{Arrival, Ctx, Msg, Rng, RoomCtx, RoomInfo};
pub use policy::{Policy, Recording};
#[cfg(feature = "server")]
pub use rooms::Rooms;
#[cfg(feature = "server")]
pub use server::{Running, Server};
/// STOMP 1.2: the codec, the transports and the client (the `stomp` crate).
pub use stomp;
/// The embedded STOMP broker (the `stomp-broker` crate).
#[cfg(feature = "server")]
pub use stomp_broker as broker;
#[cfg(feature = "server")]
pub use worker::Kinds;

#[cfg(feature = "server")]
/// Runs a game server from the command line (see `--help`, and [`server::run`]), or, when
/// AWS Lambda started the process (`AWS_LAMBDA_RUNTIME_API` is set), as a Lambda
/// function (see `lambda`, behind the `lambda` feature).
pub async fn run(lobby: Lobby, kinds: impl Into<worker::Kinds>) -> Result<()> {
    let kinds = kinds.into();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        #[cfg(feature = "lambda")]
        return lambda::run(lobby, kinds).await;
        #[cfg(not(feature = "lambda"))]
        return Err(Error::Invalid(
            "started by AWS Lambda (AWS_LAMBDA_RUNTIME_API is set), but built without the `lambda` feature: build with `cargo lambda build --release --arm64 --features lambda` (the game's feature that turns on game-server-less/lambda)".into(),
        ));
    }
    server::run(lobby, kinds).await
}
