//! The room worker's core, without I/O: restore a room from its checkpoint, apply inbox
//! messages in order, produce outputs, take checkpoints. Every runtime (a task in the
//! all-in-one server, a worker process, a Lambda invocation) feeds this same core.

use super::activity::{Activity, InputRecord};
use super::record::{Read, Recorder, END_USER};
use crate::msg::{Arrival, Msg, RoomInfo};
use crate::names::{LOBBY_USER, WORKER_USER};
use crate::policy::Recording;
use crate::proto::Grant;
use crate::room::{Output, Room, Transfer};
use crate::store::{Checkpoint, Keyframe, Segment};
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An unnumbered tick, which runs every time it is delivered. Workers put numbered ones
/// ([`tick`]) in their own inbox: ticks go through the inbox like inputs, so a replay
/// after a crash interleaves them with inputs exactly as the first run did.
pub const TICK: &str = r#"{"type":"$tick"}"#;

/// A numbered tick: the `n`th tick a worker sent in its life `life`. Numbered ticks run
/// once, even when a crash makes the inbox deliver them again (see `Room::tick_once`).
pub fn tick(life: &str, n: u64, at_ms: u64) -> String {
    format!(r#"{{"type":"$tick","life":"{life}","n":{n},"at":{at_ms}}}"#)
}

#[derive(Deserialize)]
struct Tick {
    #[serde(rename = "type")]
    kind: String,
    life: Option<String>,
    n: Option<u64>,
    /// When the worker sent it (ms since the epoch); absent from older builds' ticks.
    at: Option<u64>,
}

/// One message from a room's inbox, as any transport delivers it.
#[derive(Debug, Clone, Copy)]
pub struct InboxMessage<'a> {
    /// Who sent it: the `user-id` the broker stamped (a player, [`LOBBY_USER`] or
    /// [`WORKER_USER`]).
    pub user: &'a str,
    /// The JSON body.
    pub body: &'a [u8],
    /// When the broker queued it (ms since the epoch), if the broker records that (the
    /// embedded broker's `timestamp` header). Without it, the worker's clock when it
    /// handles the message stands in.
    pub at_ms: Option<u64>,
}

impl InboxMessage<'_> {
    /// Whether this message is a player's or the lobby's, which keep a room alive (ticks
    /// do not).
    pub fn keeps_alive(&self) -> bool {
        self.user != WORKER_USER
    }
}

/// What the worker reads of an input before the room does: read once, the route then
/// reads the handler's own type from the body.
#[derive(Deserialize)]
struct InputHeader<'a> {
    seq: Option<u64>,
    /// Any JSON: an input whose `type` is not a string is still numbered (and refused
    /// by the room for its type).
    #[serde(rename = "type", borrow)]
    kind: Option<&'a serde_json::value::RawValue>,
}

impl<'a> InputHeader<'a> {
    /// The input's `type`, if it is a string: borrowed from the body unless it has
    /// escapes.
    fn kind(&self) -> Option<std::borrow::Cow<'a, str>> {
        let text = self.kind?.get();
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        match inner.contains('\\') {
            false => Some(std::borrow::Cow::Borrowed(inner)),
            true => serde_json::from_str::<String>(text)
                .ok()
                .map(std::borrow::Cow::Owned),
        }
    }
}

/// What the lobby puts in a room's inbox.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Control {
    /// A player joined through the lobby.
    #[serde(rename = "$join")]
    Join {
        /// The player.
        player: String,
        /// What the player brings (absent in messages from before it existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arrival: Option<Arrival>,
    },
    /// A player left through the lobby.
    #[serde(rename = "$leave")]
    Leave {
        /// The player.
        player: String,
    },
    /// One of a player's connections opened (`connected`) or closed: the broker saw it.
    #[serde(rename = "$presence")]
    Presence {
        /// The player.
        player: String,
        /// The connection, as the broker names it (the same when told again).
        connection: String,
        /// Opened, or closed.
        connected: bool,
    },
    /// A spectator subscribed to its own destination (after the room's topic): it gets
    /// the room's snapshot there, stamped with the room's `seq`.
    #[serde(rename = "$watch")]
    Watch {
        /// The spectator.
        watcher: String,
    },
    /// Every connection to the room is gone: the broker restarted.
    #[serde(rename = "$all_dropped")]
    AllDropped,
    /// Nothing for the room: it makes a worker that stands by for an inbox find out that
    /// it is the active one (sent when a room is created, and when it is resumed).
    #[serde(rename = "$wake")]
    Wake,
    /// The lobby ends the room.
    #[serde(rename = "$end")]
    End {
        /// Why.
        reason: String,
    },
}

impl Control {
    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("control messages serialize")
    }
}

/// A room and the rules for feeding it from an inbox.
pub struct RoomWorker<S> {
    room: Room<S>,
    /// The version of the checkpoint this worker carries on from.
    version: u64,
    /// How long a dropped player keeps its seat.
    grace: std::time::Duration,
    /// When this worker took the room (milliseconds since the epoch, this machine's
    /// clock): nobody's grace is over before [`CATCH_UP`] (or the grace, if shorter) has
    /// passed since.
    started_ms: u64,
    /// The match record since the last checkpoint, if the room keeps one.
    recorder: Option<Recorder>,
    /// The latest inputs and the input rate, saved with checkpoints.
    activity: Activity,
    /// Whether `activity` has inputs no checkpoint taken holds yet.
    activity_pending: bool,
    /// When a checkpoint last took `activity`.
    activity_taken: Option<std::time::Instant>,
    /// Debug builds: messages whose outputs differed when handled again on a copy.
    #[cfg(debug_assertions)]
    not_deterministic: u64,
    /// Debug builds: messages handled, for checking one in [`CHECK_ONE_IN`].
    #[cfg(debug_assertions)]
    forked: u64,
}

/// How often at most a checkpoint takes the room's activity: a busy room checkpoints
/// every few dozen inputs, and the inspector's record must not slow its saves (and so
/// its acks). At every 250 ms, its 50 inputs were written twice for each input of a
/// room of 10 busy players: 2% of the all-in-one server's instructions.
const ACTIVITY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a worker that has just taken a room leaves dropped players in, whatever
/// their deadline: its time to catch up on the inbox ([`RoomWorker::grace_over`]).
pub const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// Debug builds handle this many messages of a worker's life again on a copy of the
/// state (see `RoomWorker::fork`), then one in [`CHECK_ONE_IN`].
#[cfg(debug_assertions)]
const CHECK_ALL: u64 = 200;
#[cfg(debug_assertions)]
const CHECK_ONE_IN: u64 = 50;

impl<S: Serialize + DeserializeOwned + 'static> RoomWorker<S> {
    /// A worker for a fresh `room` running `msg`.
    pub fn new(room: RoomInfo, msg: Msg<S>) -> RoomWorker<S> {
        RoomWorker {
            room: Room::new(room, msg),
            version: 0,
            grace: std::time::Duration::from_secs(30),
            started_ms: now_ms(),
            recorder: None,
            activity: Activity::default(),
            activity_pending: false,
            activity_taken: None,
            #[cfg(debug_assertions)]
            not_deterministic: 0,
            #[cfg(debug_assertions)]
            forked: 0,
        }
    }

    /// The same worker, whose dropped players keep their seat for `grace`.
    pub fn with_grace(mut self, grace: std::time::Duration) -> RoomWorker<S> {
        self.grace = grace;
        self
    }

    /// The same worker, keeping the room's match record as `recording` says, from the
    /// room as it is now (call it after [`RoomWorker::restore`]).
    pub fn with_recording(mut self, recording: Recording) -> RoomWorker<S> {
        self.recorder = match (recording, self.keyframe()) {
            (Recording::Off, _) => None,
            (_, Ok(start)) => Some(Recorder::new(recording, &start)),
            (_, Err(e)) => {
                tracing::error!(room = %self.room.id(), "no match record: {e}");
                None
            }
        };
        self
    }

    /// The room as it is, as a checkpoint holds it and a replay starts from it.
    fn keyframe(&self) -> Result<Keyframe> {
        Ok(Keyframe {
            seq: self.room.seq(),
            state: serde_json::to_string(self.room.state()).map_err(|e| {
                Error::Store(format!("the game state cannot be saved as JSON: {e}"))
            })?,
            applied: self
                .room
                .applied()
                .map(|(p, s)| (p.to_owned(), s))
                .collect(),
            players: self.room.players().map(str::to_owned).collect(),
        })
    }

    /// The match record since the last call, to be saved with `checkpoint`, the one
    /// just taken ([`RoomWorker::checkpoint`]), which is also the next segment's start
    /// when a keyframe is due; `None` if the room keeps no record or nothing happened.
    pub fn take_record(&mut self, checkpoint: &Checkpoint) -> Option<Segment> {
        let version = self.version + 1;
        self.recorder.as_mut()?.take(version, || {
            let keyframe = Keyframe {
                seq: checkpoint.seq,
                state: checkpoint.state.clone(),
                applied: checkpoint.applied.clone(),
                players: checkpoint.players.clone(),
            };
            serde_json::to_string(&keyframe).expect("a keyframe serializes")
        })
    }

    /// A record taken but not saved (its checkpoint changed nothing): see
    /// [`Recorder::not_saved`].
    pub fn record_not_saved(&mut self, segment: Segment) {
        let version = self.version + 1;
        if let Some(recorder) = &mut self.recorder {
            recorder.not_saved(segment, version);
        }
    }

    /// Takes the changes to the room's listing (lock, metadata) its handlers asked for
    /// since the last call.
    pub fn take_listing(&mut self) -> Vec<crate::room::Listing> {
        self.room.take_listing()
    }

    /// The dropped players whose grace is over now: the worker has them leave. Not in
    /// the first [`CATCH_UP`] after this worker took the room: a worker catching up on
    /// its inbox (after a restart, a worker that died, a handover) may not have reached
    /// the reconnection of a player whose deadline has passed by its clock.
    pub fn grace_over(&self) -> Vec<String> {
        let now = now_ms();
        let wait = self.grace.min(CATCH_UP).as_millis() as u64;
        if now < self.started_ms + wait {
            return Vec::new();
        }
        self.room.grace_over(now)
    }

    /// Sets the room's clock to `ms` exactly, back or forth: a replay sets it to the
    /// time recorded with each message, which is what its handler read.
    pub fn set_clock(&mut self, ms: u64) {
        self.room.set_clock(ms);
    }

    /// The room's id.
    pub fn id(&self) -> &str {
        self.room.id()
    }

    /// The room underneath.
    pub fn room(&self) -> &Room<S> {
        &self.room
    }

    /// Puts the room back where `checkpoint` left it.
    pub fn restore(&mut self, checkpoint: Checkpoint) -> Result<()> {
        let state: S = serde_json::from_str(&checkpoint.state).map_err(|e| {
            Error::Store(format!(
                "the checkpoint of room {} does not fit the game state: {e}",
                self.room.id()
            ))
        })?;
        self.room.restore(
            state,
            checkpoint.seq,
            checkpoint.applied,
            checkpoint.players,
        );
        self.version = checkpoint.version;
        self.activity = Activity::from_json(&checkpoint.activity);
        Ok(())
    }

    /// Applies one inbox message (a tick, a lobby control, or a player's input) and
    /// returns what it produced, in order. A repeat of an input already applied
    /// produces nothing.
    pub fn handle(&mut self, message: InboxMessage<'_>) -> Vec<Output> {
        let (outputs, read) = self.handle_unrecorded(message);
        if let Some(recorder) = &mut self.recorder {
            let at = self.room.clock_ms();
            recorder.record(message.user, message.body, read, at, &outputs);
        }
        outputs
    }

    /// Applies `message`, and says whether its body was read whole as a JSON object on
    /// the way (the match record then need not read it again).
    fn handle_unrecorded(&mut self, message: InboxMessage<'_>) -> (Vec<Output>, Read) {
        let InboxMessage { user, body, at_ms } = message;
        if user == WORKER_USER {
            let tick = serde_json::from_slice::<Tick>(body);
            let at = tick.as_ref().ok().and_then(|t| t.at);
            self.room.advance_clock(at.or(at_ms).unwrap_or_else(now_ms));
            let outputs = match tick {
                Ok(Tick {
                    kind,
                    life: Some(life),
                    n: Some(n),
                    ..
                }) if kind == "$tick" => {
                    #[cfg(debug_assertions)]
                    let again = self.fork().map(|mut room| room.tick_once(&life, n));
                    let outputs = self.room.tick_once(&life, n);
                    #[cfg(debug_assertions)]
                    self.check_same("a tick", again, &outputs);
                    outputs
                }
                Ok(Tick { kind, .. }) if kind == "$tick" => self.room.tick(),
                _ => Vec::new(),
            };
            return (outputs, Read::Unknown);
        }
        self.room.advance_clock(at_ms.unwrap_or_else(now_ms));
        if user == LOBBY_USER {
            let outputs = match serde_json::from_slice::<Control>(body) {
                Ok(Control::Join { player, arrival }) => {
                    if let Some(recorder) = &mut self.recorder {
                        recorder.joined(&player);
                    }
                    self.room.join_with(&player, arrival.unwrap_or_default())
                }
                Ok(Control::Leave { player }) => self.room.leave(&player),
                Ok(Control::End { reason }) => self.room.end(&reason),
                Ok(Control::Presence {
                    player,
                    connection,
                    connected: true,
                }) => self.room.connected(&player, &connection),
                Ok(Control::Presence {
                    player, connection, ..
                }) => {
                    let until = self.room.clock_ms() + self.grace.as_millis() as u64;
                    self.room.disconnected(&player, &connection, until)
                }
                Ok(Control::Watch { watcher }) => self.room.snapshot_for(&watcher),
                Ok(Control::AllDropped) => {
                    let until = self.room.clock_ms() + self.grace.as_millis() as u64;
                    self.room.all_dropped(until)
                }
                Ok(Control::Wake) => Vec::new(),
                Err(e) => {
                    tracing::error!(room = %self.room.id(), "bad lobby control message: {e}");
                    Vec::new()
                }
            };
            return (outputs, Read::Unknown);
        }
        if user.is_empty() || user.starts_with('$') {
            tracing::warn!(room = %self.room.id(), "dropped an input with no player (user-id {user:?})");
            return (Vec::new(), Read::Unknown);
        }
        let header = crate::msg::read_json::<InputHeader>(body);
        let read = match &header {
            Ok(_) if crate::msg::is_object(body) => Read::Object,
            _ => Read::Unknown,
        };
        let (seq, kind) = header.map_or((None, None), |h| (h.seq, h.kind()));
        // The room may take the type as read only from an object.
        let known = kind.as_deref().filter(|_| read == Read::Object);
        #[cfg(debug_assertions)]
        let again = self
            .fork()
            .map(|mut room| room.apply(user, seq, known, body).outputs);
        let applied = self.room.apply(user, seq, known, body);
        #[cfg(debug_assertions)]
        self.check_same("an input", again, &applied.outputs);
        if !applied.duplicate {
            self.activity.record(InputRecord {
                at_ms: self.room.clock_ms(),
                from: user.to_owned(),
                seq,
                kind: kind.map(std::borrow::Cow::into_owned),
                room_seq: self.room.seq(),
                error: applied.rejected,
            });
            self.activity_pending = true;
        }
        (applied.outputs, read)
    }

    /// Debug builds only: the room with a copy of its state made from its JSON, as a
    /// restart from a checkpoint makes it (`None` if the state does not go through
    /// JSON, which a checkpoint would tell). Every message at first, then one in
    /// [`CHECK_ONE_IN`]: copying a large state for every input would slow a debug build
    /// to a crawl, and a handler's mistake shows again and again.
    #[cfg(debug_assertions)]
    fn fork(&mut self) -> Option<Room<S>> {
        self.forked += 1;
        if self.forked > CHECK_ALL && self.forked % CHECK_ONE_IN != 0 {
            return None;
        }
        let json = serde_json::to_string(self.room.state()).ok()?;
        Some(self.room.fork(serde_json::from_str(&json).ok()?))
    }

    /// Debug builds only: the same message handled on a copy of the state must make the
    /// same outputs, or a crash would show players other messages than they saw. A
    /// handler that reads the clock, draws from a generator of its own, or sends in a
    /// `HashMap`'s order (a copy's differs) fails it; the error says what to use instead.
    #[cfg(debug_assertions)]
    fn check_same(&mut self, what: &str, again: Option<Vec<Output>>, outputs: &[Output]) {
        if again.is_some_and(|again| again != outputs) {
            self.not_deterministic += 1;
            tracing::error!(
                room = %self.room.id(),
                "{what} made other outputs when handled again on a copy of the room's state: \
                 its handler is not a function of the state and the message (take the time \
                 from ctx.now(), chance from ctx.rng(), and no HashMap order into outputs)"
            );
        }
    }

    /// Debug builds only: how many messages made other outputs when handled again on a
    /// copy of the state (each logged as an error).
    #[cfg(debug_assertions)]
    pub fn not_deterministic(&self) -> u64 {
        self.not_deterministic
    }

    /// The room's latest inputs and its input rate.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Whether the room's activity has inputs no checkpoint taken holds yet: the worker
    /// takes one for it, even with nothing else to save.
    pub fn activity_pending(&self) -> bool {
        self.activity_pending
    }

    /// The activity for the next checkpoint, as JSON, if it has news and the last was
    /// taken [`ACTIVITY_EVERY`] ago; otherwise empty: the store keeps what it has.
    fn activity_to_save(&mut self) -> String {
        let due = self
            .activity_taken
            .is_none_or(|at| at.elapsed() >= ACTIVITY_EVERY);
        if !(self.activity_pending && due) {
            return String::new();
        }
        self.activity_pending = false;
        self.activity_taken = Some(std::time::Instant::now());
        self.activity.to_json()
    }

    /// Ends the room from outside (idleness, shutdown of the room).
    pub fn end(&mut self, reason: &str) -> Vec<Output> {
        let outputs = self.room.end(reason);
        if let Some(recorder) = &mut self.recorder {
            let at = self.room.clock_ms();
            recorder.record(END_USER, reason.as_bytes(), Read::Unknown, at, &outputs);
        }
        outputs
    }

    /// Why the room ended, once it has.
    pub fn ended(&self) -> Option<&str> {
        self.room.ended()
    }

    /// The tick interval of the room's handlers, if they have a tick.
    pub fn tick_interval(&self) -> Option<std::time::Duration> {
        self.room.tick_interval()
    }

    /// A checkpoint of the room as it is, with the item grants made and the transfers
    /// asked for since the last one, to be saved with it. Its `version` is that of the
    /// checkpoint it replaces; call [`RoomWorker::saved`] once the store has it.
    pub fn checkpoint(&mut self) -> Result<(Checkpoint, Vec<Grant>, Vec<Transfer>)> {
        let Keyframe {
            seq,
            state,
            applied,
            players,
        } = self.keyframe()?;
        let checkpoint = Checkpoint {
            seq,
            state,
            applied,
            players,
            version: self.version,
            activity: self.activity_to_save(),
        };
        Ok((
            checkpoint,
            self.room.take_grants(),
            self.room.take_transfers(),
        ))
    }

    /// Notes that the store saved the last checkpoint taken: the next replaces it.
    pub fn saved(&mut self) {
        self.version += 1;
    }
}

/// Now, in milliseconds since the epoch, by this machine's clock: what grace deadlines
/// (set from the room's clock, so a replay sets the same) are checked against, and the
/// time of a message the broker recorded none for.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Ctx;
    use serde_json::Value;
    use std::collections::HashSet;

    fn counter() -> Msg<i64> {
        Msg::new(|| 0)
            .route("type=add", |n: &mut i64, ctx: &mut Ctx, v: Value| {
                *n += v["by"].as_i64().unwrap_or(0);
                ctx.broadcast(&serde_json::json!({ "type": "count", "n": *n }));
            })
            .tick(std::time::Duration::from_secs(1), |n: &mut i64, _| *n *= 10)
    }

    fn room() -> RoomInfo {
        RoomInfo::new("r", "caves 2")
    }

    #[test]
    fn the_state_factory_sees_the_room_and_a_checkpoint_replaces_its_state() {
        let msg = || Msg::for_room(|room: &RoomInfo| format!("{} {}", room.id, room.name));
        let mut first = RoomWorker::new(room(), msg());
        assert_eq!(first.room().state(), "r caves 2");
        let (mut checkpoint, ..) = first.checkpoint().unwrap();
        checkpoint.state = r#""carried on""#.into();
        let mut second = RoomWorker::new(room(), msg());
        second.restore(checkpoint).unwrap();
        assert_eq!(second.room().state(), "carried on");
    }

    fn join(w: &mut RoomWorker<i64>, player: &str) -> Vec<Output> {
        let body = Control::Join {
            player: player.into(),
            arrival: None,
        }
        .to_json();
        w.handle(InboxMessage {
            user: LOBBY_USER,
            body: body.as_bytes(),
            at_ms: None,
        })
    }

    #[test]
    fn a_join_brings_the_players_arrival_to_the_hook_and_old_joins_still_read() {
        let msg = Msg::new(Vec::new).on_join(|seen: &mut Vec<String>, ctx, player| {
            let arrival = ctx.arrival().cloned().unwrap_or_default();
            let xp = arrival.items.get("xp").copied().unwrap_or(0);
            seen.push(format!(
                "{player} {} {xp} {}",
                arrival.room_name, arrival.carried
            ));
        });
        let mut w = RoomWorker::new(room(), msg);
        let arrival = Arrival {
            room_name: "caves".into(),
            items: [("xp".to_owned(), 60)].into(),
            carried: serde_json::json!({ "hp": 4 }),
        };
        let new = Control::Join {
            player: "ann".into(),
            arrival: Some(arrival),
        };
        let old = r#"{"type":"$join","player":"bob"}"#; // from before arrivals, in a journal
        for body in [new.to_json().as_str(), old] {
            w.handle(InboxMessage {
                user: LOBBY_USER,
                body: body.as_bytes(),
                at_ms: None,
            });
        }
        assert_eq!(
            w.room().state(),
            &["ann caves 60 {\"hp\":4}", "bob  0 null"]
        );
    }

    #[test]
    fn a_restored_worker_skips_what_its_checkpoint_holds_and_replays_the_rest() {
        let mut first = RoomWorker::new(room(), counter());
        join(&mut first, "ann");
        let input = |seq: u64| format!(r#"{{"type":"add","by":1,"seq":{seq}}}"#);
        let ann = |body: &str| -> (String, Vec<u8>) { ("ann".into(), body.as_bytes().to_vec()) };
        let inbox = [
            ann(&input(1)),
            ann(&input(2)),
            ("$worker".into(), TICK.into()),
            ann(&input(3)),
        ];
        for (user, body) in &inbox[..2] {
            first.handle(InboxMessage {
                user,
                body,
                at_ms: None,
            });
        }
        let (checkpoint, ..) = first.checkpoint().unwrap();
        let mut outputs_first = Vec::new();
        for (user, body) in &inbox[2..] {
            outputs_first.extend(first.handle(InboxMessage {
                user,
                body,
                at_ms: None,
            }));
        }

        // The replacement gets every unacked message again, the checkpointed ones too.
        let mut second = RoomWorker::new(room(), counter());
        second.restore(checkpoint).unwrap();
        let mut outputs_second = Vec::new();
        for (user, body) in &inbox {
            outputs_second.extend(second.handle(InboxMessage {
                user,
                body,
                at_ms: None,
            }));
        }
        assert_eq!(*second.room().state(), 21, "(2 * 10) + 1, each input once");
        assert_eq!(
            outputs_second, outputs_first,
            "the replay repeats the same outputs"
        );
    }

    #[test]
    fn a_replay_asks_for_the_same_transfers_under_the_same_keys() {
        let msg = || {
            Msg::new(|| 0).route("type=go", |n: &mut i64, ctx: &mut Ctx, _: Value| {
                *n += 1;
                let me = ctx.sender().to_owned();
                ctx.transfer(&me, "caves", &*n);
            })
        };
        let mut first = RoomWorker::new(room(), msg());
        join(&mut first, "ann");
        let go = |seq: u64| format!(r#"{{"type":"go","seq":{seq}}}"#);
        first.handle(InboxMessage {
            user: "ann",
            body: go(1).as_bytes(),
            at_ms: None,
        });
        let (checkpoint, _, saved) = first.checkpoint().unwrap();
        assert_eq!(
            saved[0].key, "r/1",
            "saved with the checkpoint that holds it"
        );
        first.handle(InboxMessage {
            user: "ann",
            body: go(2).as_bytes(),
            at_ms: None,
        });
        let (_, _, lost) = first.checkpoint().unwrap(); // never saved: the worker died

        // The replacement skips the saved input and applies the other again.
        let mut second = RoomWorker::new(room(), msg());
        second.restore(checkpoint).unwrap();
        for seq in [1, 2] {
            second.handle(InboxMessage {
                user: "ann",
                body: go(seq).as_bytes(),
                at_ms: None,
            });
        }
        let (_, _, replayed) = second.checkpoint().unwrap();
        assert_eq!(replayed, lost, "the same transfer, under the same key");
        assert_eq!(replayed[0].key, "r/2");
    }

    #[test]
    fn a_tick_the_checkpoint_holds_does_not_run_again() {
        let mut first = RoomWorker::new(room(), counter());
        join(&mut first, "ann");
        let input = |seq: u64| format!(r#"{{"type":"add","by":1,"seq":{seq}}}"#);
        let inbox: Vec<(String, String)> = vec![
            ("ann".into(), input(1)),
            ("$worker".into(), tick("0001", 1, 0)),
            ("ann".into(), input(2)),
        ];
        for (user, body) in &inbox {
            first.handle(InboxMessage {
                user,
                body: body.as_bytes(),
                at_ms: None,
            });
        }
        assert_eq!(*first.room().state(), 11);
        let (checkpoint, ..) = first.checkpoint().unwrap();

        // A crash after the checkpoint was saved but before the inbox heard the ack: all
        // of it comes again, then the next life ticks.
        let mut second = RoomWorker::new(room(), counter());
        second.restore(checkpoint).unwrap();
        for (user, body) in &inbox {
            second.handle(InboxMessage {
                user,
                body: body.as_bytes(),
                at_ms: None,
            });
        }
        assert_eq!(*second.room().state(), 11, "nothing ran twice");
        second.handle(InboxMessage {
            user: "$worker",
            body: tick("0002", 1, 0).as_bytes(),
            at_ms: None,
        });
        assert_eq!(
            *second.room().state(),
            110,
            "the next life's first tick runs"
        );
        for life in 3..20 {
            second.handle(InboxMessage {
                user: "$worker",
                body: tick(&format!("{life:04}"), 1, 0).as_bytes(),
                at_ms: None,
            });
        }
        let (checkpoint, ..) = second.checkpoint().unwrap();
        let lives = checkpoint
            .applied
            .keys()
            .filter(|k| k.starts_with("$tick:"));
        assert_eq!(
            lives.count(),
            crate::room::TICK_LIVES,
            "old lives are forgotten"
        );
    }

    #[test]
    fn lobby_controls_join_leave_and_end() {
        let mut w = RoomWorker::new(room(), counter());
        join(&mut w, "ann");
        join(&mut w, "bob");
        assert_eq!(w.room().players().collect::<Vec<_>>(), ["ann", "bob"]);
        let leave = Control::Leave {
            player: "bob".into(),
        }
        .to_json();
        w.handle(InboxMessage {
            user: LOBBY_USER,
            body: leave.as_bytes(),
            at_ms: None,
        });
        assert_eq!(w.room().players().collect::<Vec<_>>(), ["ann"]);
        let end = Control::End {
            reason: "bye".into(),
        }
        .to_json();
        let out = w.handle(InboxMessage {
            user: LOBBY_USER,
            body: end.as_bytes(),
            at_ms: None,
        });
        assert_eq!(out[0].body.value()["type"], "room_ended");
        assert_eq!(w.ended(), Some("bye"));
        let forged = w.handle(InboxMessage {
            user: "$lobby2",
            body: b"{}",
            at_ms: None,
        });
        assert!(forged.is_empty());
    }

    #[test]
    fn handlers_see_the_time_recorded_with_each_message_and_draw_by_the_log() {
        // Each handler records the room's time and its first draw.
        let seen = || {
            Msg::new(Vec::<(u64, u64)>::new)
                .route(
                    "type=go",
                    |v: &mut Vec<(u64, u64)>, ctx: &mut Ctx, _: Value| {
                        v.push((ctx.now_ms(), ctx.rng().next_u64()));
                    },
                )
                .tick(std::time::Duration::from_secs(1), |v, ctx| {
                    v.push((ctx.now_ms(), ctx.rng().next_u64()));
                })
        };
        let join = Control::Join {
            player: "ann".into(),
            arrival: None,
        }
        .to_json();
        let inbox: Vec<(&str, String, Option<u64>)> = vec![
            (LOBBY_USER, join, Some(1_000)),
            (WORKER_USER, tick("0001", 1, 5_000), None),
            ("ann", r#"{"type":"go","seq":1}"#.into(), Some(6_000)),
            // Queued before the tick was sent: the room's time does not go back.
            ("ann", r#"{"type":"go","seq":2}"#.into(), Some(4_000)),
            (WORKER_USER, tick("0001", 2, 7_000), Some(1)),
        ];
        let run = |room_id: &str| {
            let mut w = RoomWorker::new(RoomInfo::new(room_id, ""), seen());
            for (user, body, at_ms) in &inbox {
                w.handle(InboxMessage {
                    user,
                    body: body.as_bytes(),
                    at_ms: *at_ms,
                });
            }
            w.room().state().clone()
        };
        let first = run("r");
        let times: Vec<u64> = first.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [5_000, 6_000, 6_000, 7_000]);
        let draws: HashSet<u64> = first.iter().map(|(_, d)| *d).collect();
        assert_eq!(draws.len(), 4, "each message draws its own numbers");
        assert_eq!(run("r"), first, "the same log, the same times and draws");
        assert_ne!(run("s"), first, "another room draws other numbers");

        // A message the broker recorded no time for is handled at the worker's.
        let mut w = RoomWorker::new(room(), seen());
        let before = now_ms();
        w.handle(InboxMessage {
            user: WORKER_USER,
            body: br#"{"type":"$tick"}"#,
            at_ms: None,
        });
        let (at, _) = w.room().state()[0];
        assert!((before..=now_ms()).contains(&at));
    }

    #[cfg(debug_assertions)]
    #[test]
    fn debug_builds_name_a_handler_that_is_not_a_function_of_its_room() {
        use std::collections::HashMap;
        use std::hash::{BuildHasher, Hasher};
        type Names = HashMap<String, u64>;
        let msg = || {
            Msg::new(|| (0..16).map(|i| (format!("n{i}"), i)).collect::<Names>())
                // Outputs in a HashMap's order: a copy's order is another.
                .route("type=list", |names: &mut Names, ctx: &mut Ctx, _: Value| {
                    let order: Vec<&String> = names.keys().collect();
                    ctx.broadcast(&serde_json::json!({ "type": "list", "order": order }));
                })
                // A generator of its own.
                .route("type=roll", |_: &mut Names, ctx: &mut Ctx, _: Value| {
                    let roll = std::collections::hash_map::RandomState::new()
                        .build_hasher()
                        .finish();
                    ctx.broadcast(&serde_json::json!({ "type": "roll", "roll": roll }));
                })
                // What the framework gives: the same again.
                .route("type=fair", |_: &mut Names, ctx: &mut Ctx, _: Value| {
                    let (roll, at) = (ctx.rng().below(6), ctx.now_ms());
                    ctx.broadcast(&serde_json::json!({ "type": "fair", "roll": roll, "at": at }));
                })
        };
        let join = Control::Join {
            player: "ann".into(),
            arrival: None,
        }
        .to_json();
        let count = |kind: &str| {
            let mut w = RoomWorker::new(room(), msg());
            for (user, body) in [
                (LOBBY_USER, join.clone()),
                ("ann", format!(r#"{{"type":"{kind}","seq":1}}"#)),
            ] {
                w.handle(InboxMessage {
                    user,
                    body: body.as_bytes(),
                    at_ms: Some(1),
                });
            }
            w.not_deterministic
        };
        assert_eq!(count("list"), 1, "a HashMap's order went unnoticed");
        assert_eq!(count("roll"), 1, "a generator of its own went unnoticed");
        assert_eq!(
            count("fair"),
            0,
            "ctx.rng() and ctx.now() are the same again"
        );
    }
}
