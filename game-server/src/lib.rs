//! The terminal MMO: the whole server side of the game is these handlers and the rules
//! in [`world`]. The framework does the rest.

pub mod world;

use axum::extract::State;
use axum::routing::get;
use axum::Json;
use game_server_less::lobby::ApiResult;
use game_server_less::{Caller, Lobby, Msg, Rooms};
use serde_json::{json, Value};
use std::time::Duration;
use world::{on_chat, on_join, on_leave, on_look, on_move, on_tick, World};

/// The game's realtime handlers.
pub fn msg() -> Msg<World> {
    Msg::new(World::default)
        .route("type=move", on_move)
        .route("type=chat", on_chat)
        .route("type=look", on_look)
        .tick(Duration::from_millis(100), on_tick)
        .on_join(on_join)
        .on_leave(on_leave)
}

/// The game's REST routes, beside the lobby's room routes.
pub fn lobby() -> Lobby {
    Lobby::new().route("/user/items", get(user_items))
}

/// `GET /user/items`: the caller's persistent inventory.
async fn user_items(State(rooms): State<Rooms>, caller: Caller) -> ApiResult<Json<Value>> {
    let items = rooms.store().items(&caller.player).await?;
    Ok(Json(json!({ "player": caller.player, "items": items })))
}
