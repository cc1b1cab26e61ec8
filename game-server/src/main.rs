//! The terminal MMO's server.
//!
//! Run it with `cargo run -p game-server` (see `--help`), then connect any STOMP 1.2
//! client to `ws://127.0.0.1:8080/ws` or `tcp://127.0.0.1:7613`.

use clap::Parser;
use game_server_less::broker::Broker;
use game_server_less::server::{self, Args};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    server::init_logging(&args.log);
    let broker = Broker::new(args.broker_config());
    let app = axum::Router::new();
    let result = server::serve(&args, broker, app, server::shutdown_signal(), |bound| {
        println!("game-server listening:");
        println!("  HTTP      http://{}", bound.http);
        println!("  STOMP/WS  ws://{}/ws", bound.http);
        println!("  STOMP/TCP tcp://{}", bound.stomp);
        println!("Press Ctrl-C to stop.");
    })
    .await;
    if let Err(e) = result {
        eprintln!("game-server: {e}");
        std::process::exit(1);
    }
}
