//! The __NAME__ server: `cargo run` serves it (see `--help`); `cargo run -- --bot 2`
//! plays two headless bots against a running server.

#[tokio::main]
async fn main() {
    let result = if game_server_less::bots::wanted() {
        let bots = game_server_less::bots::run_from_args(__CRATE__::bot_input);
        bots.await.map(drop)
    } else {
        game_server_less::run(__CRATE__::lobby(), __CRATE__::kinds()).await
    };
    if let Err(e) = result {
        eprintln!("__NAME__: {e}");
        std::process::exit(1);
    }
}
