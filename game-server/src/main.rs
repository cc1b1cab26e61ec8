//! The terminal MMO's server: the whole server side of the game is the handlers below
//! and the rules in `world.rs`.
//!
//! Run it with `cargo run -p game-server` (see `--help`), then
//! `cargo run -p game-client` in another terminal.

mod world;

use axum::extract::State;
use axum::routing::get;
use axum::Json;
use game_server_less::lobby::ApiResult;
use game_server_less::{App, Caller, Lobby, Msg};
use serde_json::{json, Value};
use std::time::Duration;
use world::{on_chat, on_join, on_leave, on_look, on_move, on_tick, World};

/// `GET /user/items`: the caller's persistent inventory.
async fn user_items(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    let items = app.store().items(&caller.player).await?;
    Ok(Json(json!({ "player": caller.player, "items": items })))
}

#[tokio::main]
async fn main() {
    let lobby = Lobby::new().route("/user/items", get(user_items));
    let msg = Msg::new(World::default)
        .route("type=move", on_move)
        .route("type=chat", on_chat)
        .route("type=look", on_look)
        .tick(Duration::from_millis(100), on_tick)
        .on_join(on_join)
        .on_leave(on_leave);
    if let Err(e) = game_server_less::run(lobby, msg).await {
        eprintln!("game-server: {e}");
        std::process::exit(1);
    }
}
