//! The game server again, under another name: for the Lambda tests, where the emulator
//! (`cargo lambda watch`) tells functions apart by binary name, this stands in for a
//! second published version of the worker function (`AWS_LAMBDA_FUNCTION_VERSION=2`,
//! set in this package's `[package.metadata.lambda]`).

#[tokio::main]
async fn main() {
    if let Err(e) = game_server_less::run(game_server::lobby(), game_server::msg()).await {
        eprintln!("game-server-v2: {e}");
        std::process::exit(1);
    }
}
