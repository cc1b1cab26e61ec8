//! The terminal MMO: the whole server side of the game is these handlers and the rules
//! in [`world`], speaking the messages of [`protocol`]. The framework does the rest.
//!
//! Without the `server` feature (on by default) only [`protocol`] is built: that is what
//! the client shares with the server.

pub use game_protocol as protocol;
#[cfg(feature = "server")]
pub mod world;

#[cfg(feature = "server")]
pub use server_side::{lobby, msg};

#[cfg(feature = "server")]
mod server_side {
    use crate::protocol::{level_of, Leader, Leaderboard};
    use crate::world::on_tick;
    use crate::world::{on_chat, on_drop, on_join, on_leave, on_look, on_move, on_reconnect};
    use crate::world::{World, Zone, XP};
    use axum::extract::State;
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;
    use game_server_less::lobby::ApiResult;
    use game_server_less::proto::Inventory;
    use game_server_less::{Caller, Lobby, Msg, Policy, Recording, Rooms};
    use std::time::Duration;

    /// The game's realtime handlers, one per [`crate::protocol::In`] variant. A room's
    /// zone comes from its name (`caves…`, or the meadow).
    pub fn msg() -> Msg<World> {
        Msg::for_room(|room| World::in_zone(Zone::of_room(&room.name)))
            .route("type=move", on_move)
            .route("type=chat", on_chat)
            .route("type=look", on_look)
            .tick(Duration::from_millis(100), on_tick)
            .on_join(on_join)
            .on_leave(on_leave)
            .on_drop(on_drop)
            .on_reconnect(on_reconnect)
            // What a spectator sees first: the whole world.
            .snapshot(World::snapshot)
            // A player whose terminal closed stays 20 s, greyed out, then leaves. A zone
            // may never end: its record keeps its last ten minutes of play.
            .policy(
                Policy::new()
                    .grace(Duration::from_secs(20))
                    .record(Recording::Last(Duration::from_secs(600))),
            )
    }

    /// The game's REST routes, beside the lobby's room routes, and the game in the
    /// browser: the page at `/` and its script, built from `web/` (`npm run build`) and
    /// shipped in the binary.
    pub fn lobby() -> Lobby {
        Lobby::new()
            .route("/user/items", get(user_items))
            .route("/leaderboard", get(leaderboard))
            .route("/", get(page))
            .route("/mmo.js", get(script))
    }

    /// `GET /`: the MMO in the browser.
    async fn page() -> impl IntoResponse {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            include_str!("../assets/index.html"),
        )
    }

    /// `GET /mmo.js`: the page's script (web/src/mmo.ts, bundled).
    async fn script() -> impl IntoResponse {
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            include_str!("../assets/mmo.js"),
        )
    }

    /// `GET /leaderboard`: the ten most experienced players.
    async fn leaderboard(State(rooms): State<Rooms>) -> ApiResult<Json<Leaderboard>> {
        let top = rooms.store().top_items(XP, 10).await?;
        let leaders = top
            .into_iter()
            .map(|(player, xp)| Leader {
                level: level_of(xp),
                player,
                xp,
            })
            .collect();
        Ok(Json(Leaderboard { leaders }))
    }

    /// `GET /user/items`: the caller's persistent inventory.
    async fn user_items(State(rooms): State<Rooms>, caller: Caller) -> ApiResult<Json<Inventory>> {
        let items = rooms.store().items(&caller.player).await?;
        Ok(Json(Inventory {
            player: caller.player,
            items,
        }))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn every_input_type_has_a_route() {
            game_server_less::testing::assert_routes::<crate::protocol::In>(&super::msg());
        }
    }
}
