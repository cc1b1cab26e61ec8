//! The terminal MMO's server: run it with `cargo run -p game-server` (see `--help`), then
//! `cargo run -p game-client` in another terminal. The game itself is in `lib.rs`.

/// jemalloc rather than glibc's malloc (the `jemalloc` feature, on by default): see
/// `docs/benchmarks.md`, "The allocator".
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    if let Err(e) = game_server_less::run(game_server::lobby(), game_server::msg()).await {
        eprintln!("game-server: {e}");
        std::process::exit(1);
    }
}
