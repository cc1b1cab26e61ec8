//! The terminal MMO: the whole server side of the game is these handlers and the rules
//! in [`world`], speaking the messages of [`protocol`]. The framework does the rest.
//!
//! Without the `server` feature (on by default) only [`protocol`] is built: that is what
//! the client shares with the server.

pub mod protocol;
#[cfg(feature = "server")]
pub mod world;

#[cfg(feature = "server")]
pub use server_side::{lobby, msg};

#[cfg(feature = "server")]
mod server_side {
    use crate::world::{on_chat, on_join, on_leave, on_look, on_move, on_tick, World};
    use axum::extract::State;
    use axum::routing::get;
    use axum::Json;
    use game_server_less::lobby::ApiResult;
    use game_server_less::proto::Inventory;
    use game_server_less::{Caller, Lobby, Msg, Rooms};
    use std::time::Duration;

    /// The game's realtime handlers, one per [`crate::protocol::In`] variant.
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
    async fn user_items(State(rooms): State<Rooms>, caller: Caller) -> ApiResult<Json<Inventory>> {
        let items = rooms.store().items(&caller.player).await?;
        Ok(Json(Inventory {
            player: caller.player,
            items,
        }))
    }

    #[cfg(test)]
    mod tests {
        use crate::protocol::{Chat, In, Look, Move};

        #[test]
        fn every_input_type_has_a_handler() {
            let inputs = [
                In::Move(Move { dx: 1, dy: 0 }),
                In::Chat(Chat { text: "hi".into() }),
                In::Look(Look {}),
            ];
            let msg = super::msg();
            let routed: Vec<&str> = msg.types().collect();
            for input in inputs {
                let json = serde_json::to_value(&input).unwrap();
                let kind = json["type"].as_str().unwrap();
                assert!(routed.contains(&kind), "no route for {kind}");
            }
            assert_eq!(routed.len(), 3, "a route for a type In does not have");
        }
    }
}
