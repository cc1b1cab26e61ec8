//! A room is a function of its log: the MMO run twice from the same inbox messages (joins,
//! moves, chats and ticks, each with its recorded time) makes byte-identical outputs and
//! state, NPC wandering, fights and item spawns included. Its random numbers come from
//! `ctx.rng()`, so a room with another id plays the same log differently.

use game_server::world::World;
use game_server_less::msg::RoomInfo;
use game_server_less::worker::{Control, InboxMessage, RoomWorker};

/// One inbox message: who sent it, its body, and the time the broker recorded.
type Logged = (String, String, u64);

/// What a room made: every output, one line each, and its state at the end.
type Played = (Vec<u8>, String);

/// A minute of play in room `room_id`, recorded as it goes: two players join, then
/// head for the nearest NPC (a pseudo-random step when the way is blocked), talk now
/// and then, and the room ticks ten times a second. Returns the log and what the room
/// made of it.
fn play(room_id: &str) -> (Vec<Logged>, Played) {
    let mut room = Recorder::new(room_id);
    let start = 1_800_000_000_000;
    for player in ["ann", "bob"] {
        let join = Control::Join {
            player: player.into(),
            arrival: None,
        };
        room.handle("$lobby", join.to_json(), start);
    }
    let mut walk: u64 = 7;
    let mut seqs = [0u64; 2];
    for n in 1..=600u64 {
        let at = start + n * 100;
        let tick = format!(r#"{{"type":"$tick","life":"L1","n":{n},"at":{at}}}"#);
        room.handle("$worker", tick, at);
        for (i, player) in ["ann", "bob"].into_iter().enumerate() {
            walk = walk.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let (dx, dy) = match room.towards_npc(player) {
                Some(step) if walk >> 63 == 0 => step,
                _ => [(0, 1), (0, -1), (1, 0), (-1, 0)][(walk >> 61 & 3) as usize],
            };
            seqs[i] += 1;
            let seq = seqs[i];
            let body = if n % 50 == 0 {
                format!(r#"{{"type":"chat","text":"tick {n}","seq":{seq}}}"#)
            } else {
                format!(r#"{{"type":"move","dx":{dx},"dy":{dy},"seq":{seq}}}"#)
            };
            room.handle(player, body, at + 10 + i as u64);
        }
    }
    let played = room.finish();
    (room.log, played)
}

/// A room that keeps what it was given and what it made.
struct Recorder {
    worker: RoomWorker<World>,
    log: Vec<Logged>,
    outputs: Vec<u8>,
}

impl Recorder {
    fn new(room_id: &str) -> Recorder {
        Recorder {
            worker: RoomWorker::new(RoomInfo::new(room_id, "meadow"), game_server::msg()),
            log: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn handle(&mut self, user: &str, body: String, at: u64) {
        let message = InboxMessage {
            user,
            body: body.as_bytes(),
            at_ms: Some(at),
        };
        for output in self.worker.handle(message) {
            let line = format!("{:?} {}\n", output.to, output.body);
            self.outputs.extend(line.into_bytes());
        }
        self.log.push((user.to_owned(), body, at));
    }

    /// One step from `player` towards the nearest live NPC, if it is in the world.
    fn towards_npc(&self, player: &str) -> Option<(i32, i32)> {
        let world = self.worker.room().state();
        let me = world.players.get(player)?;
        let npc = world
            .npcs
            .iter()
            .filter(|n| n.hp > 0)
            .min_by_key(|n| (n.x - me.x).abs() + (n.y - me.y).abs())?;
        let (dx, dy) = (npc.x - me.x, npc.y - me.y);
        Some(if dx.abs() >= dy.abs() {
            (dx.signum(), 0)
        } else {
            (0, dy.signum())
        })
    }

    fn finish(&mut self) -> Played {
        // Debug builds also handle each message again on a copy of the state.
        #[cfg(debug_assertions)]
        assert_eq!(
            self.worker.not_deterministic(),
            0,
            "a handler is not deterministic"
        );
        let (checkpoint, ..) = self.worker.checkpoint().unwrap();
        (std::mem::take(&mut self.outputs), checkpoint.state)
    }
}

/// What room `room_id` makes of `log`.
fn replay(room_id: &str, log: &[Logged]) -> Played {
    let mut room = Recorder::new(room_id);
    for (user, body, at) in log {
        room.handle(user, body.clone(), *at);
    }
    room.finish()
}

#[test]
fn a_room_run_again_from_its_log_makes_the_same_outputs_and_state() {
    let (log, (outputs, state)) = play("r1");
    let (again, state_again) = replay("r1", &log);
    assert!(
        outputs == again,
        "the outputs differ between the game and its replay"
    );
    assert_eq!(
        state, state_again,
        "the state differs between the game and its replay"
    );

    // The log plays what randomness decides: NPCs wander, blows are rolled, items
    // spawn.
    let text = String::from_utf8(outputs.clone()).unwrap();
    for kind in [r#""type":"npcs""#, r#""type":"hit""#, r#""type":"item""#] {
        assert!(text.contains(kind), "nothing of {kind} in a minute of play");
    }

    // Another room draws other numbers from the same log.
    let (elsewhere, _) = replay("r2", &log);
    assert!(
        outputs != elsewhere,
        "a room's id does not change its draws"
    );
}
