//! __NAME__: a game made of nothing but handlers on game-server-less. The messages are
//! in [`protocol`]; the rules are the handlers below; the framework does the rest (the
//! lobby, the broker, ordering, exactly-once, checkpoints).

pub mod protocol;

use game_server_less::axum::http::header;
use game_server_less::axum::response::{Html, IntoResponse};
use game_server_less::axum::{routing::get, Json};
use game_server_less::{Ctx, Kinds, Lobby, Msg, Policy, RoomCtx};
use std::time::Duration;
use protocol::{Add, In, Out, Roll, Say};
use serde::{Deserialize, Serialize};

/// One room's game: everything it remembers; saved in its checkpoints.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Game {
    /// The shared counter.
    pub count: i64,
}

/// Adds to the counter; everyone sees the new count.
pub fn on_add(game: &mut Game, ctx: &mut Ctx, add: Add) -> Result<(), String> {
    if add.by.abs() > 100 {
        return Err("add at most 100 at a time".into()); // only the sender hears this
    }
    game.count += add.by;
    let by = Some(ctx.sender().to_owned());
    ctx.broadcast(&Out::Count {
        count: game.count,
        by,
    });
    Ok(())
}

/// Says something to the room.
pub fn on_say(_: &mut Game, ctx: &mut Ctx, say: Say) -> Result<(), String> {
    let text = say.text.trim().to_owned();
    if text.is_empty() || text.chars().count() > 200 || text.chars().any(char::is_control) {
        return Err("say 1 to 200 characters, no control characters".into());
    }
    let player = ctx.sender().to_owned();
    ctx.broadcast(&Out::Said { player, text });
    Ok(())
}

/// Rolls a die: chance comes from `ctx.rng()` and the time from `ctx.now_ms()`, never
/// from a generator of the handler's own or the clock, so that the room stays a function
/// of its log: after a crash, and in a replay or the deploy gate, the die falls the same.
pub fn on_roll(_: &mut Game, ctx: &mut Ctx, roll: Roll) -> Result<(), String> {
    if !(2..=100).contains(&roll.sides) {
        return Err("a die has 2 to 100 sides".into());
    }
    let face = ctx.rng().below(u64::from(roll.sides)) as u32 + 1;
    let (player, at) = (ctx.sender().to_owned(), ctx.now_ms());
    ctx.broadcast(&Out::Rolled {
        player,
        face,
        sides: roll.sides,
        at,
    });
    Ok(())
}

/// A newcomer is announced and told the count.
pub fn on_join(game: &mut Game, ctx: &mut RoomCtx, player: &str) {
    ctx.broadcast(&Out::Joined {
        player: player.to_owned(),
    });
    let count = Out::Count {
        count: game.count,
        by: None,
    };
    ctx.send_to(player, &count);
}

/// The game's realtime handlers: one route per [`In`] variant, and the queue policy of
/// its rooms: 1 to 8 players, each at most 10 inputs a second (20 at once); a player
/// whose connection drops keeps its seat for 15 s.
pub fn msg() -> Msg<Game> {
    Msg::new(Game::default)
        .route("type=add", on_add)
        .route("type=say", on_say)
        .route("type=roll", on_roll)
        .on_join(on_join)
        .policy(
            Policy::new()
                .players(1, 8)
                .inputs(10, 20)
                .grace(Duration::from_secs(15)),
        )
}

/// The kinds of room the server runs: one, `counter`. Add another with its own
/// handlers and policy: `.kind("duel", duel_msg())`; `POST /matchmake {"kind":"duel"}`
/// then seats players in it.
pub fn kinds() -> Kinds {
    Kinds::new().kind("counter", msg())
}

/// The game's own REST routes (axum handlers), beside the lobby's room routes: the
/// game in a browser at `/` (built from `web/` by `npm run build`, shipped in the
/// binary) and `/about`.
pub fn lobby() -> Lobby {
    Lobby::new()
        .route("/", get(page))
        .route("/game.js", get(script))
        .route("/about", get(about))
}

/// `GET /`: the game's page.
async fn page() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

/// `GET /game.js`: the page's script (`web/src/game.ts`, bundled).
async fn script() -> impl IntoResponse {
    let javascript = [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")];
    (javascript, include_str!("../assets/game.js"))
}

/// `GET /about`.
async fn about() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "game": "__NAME__" }))
}

/// What a bot sends (`--bot N`), from a random number.
pub fn bot_input(dice: u64) -> In {
    match dice % 10 {
        0 => In::Say(Say {
            text: format!("beep {}", dice % 1000),
        }),
        1 => In::Roll(Roll { sides: 6 }),
        n => In::Add(Add { by: n as i64 - 5 }),
    }
}
