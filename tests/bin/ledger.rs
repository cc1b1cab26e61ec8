//! A game for crash tests: its state is the list of every input it applied, in order, and
//! a tick counter. `{"type":"add"}` applies an input; `{"type":"report"}` answers the
//! list, so a test can count exactly what was applied, once or twice. Run like
//! `game-server`: `ledger --help`.

use game_server_less::{Ctx, Lobby, Msg, RoomCtx};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// Every applied input, and how many ticks the room has had.
#[derive(Default, Serialize, Deserialize)]
struct Ledger {
    applied: Vec<(String, u64)>,
    ticks: u64,
}

fn on_add(ledger: &mut Ledger, ctx: &mut Ctx, _: Value) {
    ledger
        .applied
        .push((ctx.sender().to_owned(), ctx.input_seq()));
    ctx.broadcast(&json!({ "type": "added", "n": ledger.applied.len(), "ticks": ledger.ticks }));
}

fn on_report(ledger: &mut Ledger, ctx: &mut Ctx, _: Value) {
    ctx.reply(&json!({ "type": "report", "applied": ledger.applied }));
}

fn on_tick(ledger: &mut Ledger, ctx: &mut RoomCtx) {
    ledger.ticks += 1;
    if ledger.ticks % 5 == 0 {
        // Outputs from ticks too: a replay must interleave them as the first run did.
        ctx.broadcast(&json!({ "type": "tick", "ticks": ledger.ticks, "n": ledger.applied.len() }));
    }
}

#[tokio::main]
async fn main() {
    let msg = Msg::new(Ledger::default)
        .route("type=add", on_add)
        .route("type=report", on_report)
        .tick(Duration::from_millis(20), on_tick);
    if let Err(e) = game_server_less::run(Lobby::new(), msg).await {
        eprintln!("ledger: {e}");
        std::process::exit(1);
    }
}
