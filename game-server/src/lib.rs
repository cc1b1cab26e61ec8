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
    use crate::protocol::{level_of, Leader, Leaderboard, Travel};
    use crate::world::{on_chat, on_join, on_leave, on_look, on_move, on_tick, Departure};
    use crate::world::{World, Zone, XP};
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Json;
    use game_server_less::lobby::{json_body, ApiError, ApiResult};
    use game_server_less::proto::{Inventory, Ticket};
    use game_server_less::{Caller, Lobby, Msg, Rooms};
    use std::time::{Duration, Instant};

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
    }

    /// The game's REST routes, beside the lobby's room routes.
    pub fn lobby() -> Lobby {
        Lobby::new()
            .route("/user/items", get(user_items))
            .route("/leaderboard", get(leaderboard))
            .route("/travel", post(travel))
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

    /// How long `POST /travel` waits for the room to save the step into the portal.
    const TRAVEL_WAIT: Duration = Duration::from_secs(3);

    /// `POST /travel` with the ticket of the room being left and `{"input_seq": N}` (of
    /// the `travelled` message): moves the player to the other zone's room (creating it
    /// if there is none), carrying their hit points, and answers its ticket. What the
    /// player carries comes from the room's saved state, never from the request.
    async fn travel(
        State(rooms): State<Rooms>,
        caller: Caller,
        raw: Bytes,
    ) -> ApiResult<Json<Ticket>> {
        let req: Travel = json_body(&raw).map_err(|e| {
            ApiError::bad_request(format!("{}; send {{\"input_seq\": N}}", e.message))
        })?;
        let Some(from) = caller.room else {
            return Err(ApiError::bad_request(
                "travel with the ticket of the room you are leaving, not a player key",
            ));
        };
        let departure = departure(&rooms, &from, &caller.player, req.input_seq).await?;
        let to = zone_room(&rooms, departure.zone).await?;
        let carried = serde_json::json!({ "hp": departure.hp });
        let ticket = rooms.transfer(&from, &caller.player, &to, carried).await?;
        Ok(Json(ticket))
    }

    /// The player's departure, once the room's checkpoint holds input `input_seq` (the
    /// step into the portal): the room saves within a moment of every input.
    async fn departure(
        rooms: &Rooms,
        room: &str,
        player: &str,
        input_seq: u64,
    ) -> ApiResult<Departure> {
        let deadline = Instant::now() + TRAVEL_WAIT;
        loop {
            if let Some(saved) = rooms.store().checkpoint(room).await? {
                if saved.applied.get(player).is_some_and(|&s| s >= input_seq) {
                    let world: World = serde_json::from_str(&saved.state).map_err(|e| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("room {room}'s state does not read: {e}"),
                        )
                    })?;
                    return world.departures.get(player).cloned().ok_or_else(|| {
                        ApiError::new(
                            StatusCode::CONFLICT,
                            format!("{player} is not in a portal of room {room}"),
                        )
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "room {room} has not saved input {input_seq} of {player} yet; try again"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The live room of `zone` (named after it), or a new one.
    async fn zone_room(rooms: &Rooms, zone: Zone) -> ApiResult<String> {
        // One at a time, so that two travellers at once do not open two rooms.
        static OPENING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = OPENING.lock().await;
        let live = rooms.store().live_rooms().await?;
        if let Some(room) = live.iter().find(|r| r.name == zone.name()) {
            return Ok(room.id.clone());
        }
        Ok(rooms.create(zone.name(), None).await?.id)
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
