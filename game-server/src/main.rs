//! The terminal MMO's server: run it with `cargo run -p game-server` (see `--help`), then
//! `cargo run -p game-client` in another terminal. The game itself is in `lib.rs`.

#[tokio::main]
async fn main() {
    if let Err(e) = game_server_less::run(game_server::lobby(), game_server::msg()).await {
        eprintln!("game-server: {e}");
        std::process::exit(1);
    }
}
