//! One room's logic without sockets: applies inputs in order through a [`Msg`] router,
//! skips inputs it has already applied, and stamps every output with the room's sequence
//! number. The room worker feeds it from the broker; [`crate::testing`] feeds it directly.
// Without the `server` feature no room worker runs rooms (only `TestRoom` does), and
// the methods only a worker calls are unused.
#![cfg_attr(not(feature = "server"), allow(dead_code))]

use crate::msg::{Arrival, Ctx, Effect, Json, Msg, PlayerId, Rejection, RoomCtx, RoomInfo};
use crate::proto::Grant;
use crate::proto::RoomEvent;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// Where an output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every player of the room (the room topic).
    Room,
    /// One player (that player's own destination).
    Player(PlayerId),
}

impl Target {
    /// The player it is for alone; `None` for the room.
    pub fn player(&self) -> Option<&str> {
        match self {
            Target::Room => None,
            Target::Player(p) => Some(p),
        }
    }
}

/// A message the room emits, already stamped with `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Who receives it.
    pub to: Target,
    /// The JSON message.
    pub body: Json,
}

/// Worker lives whose last tick a room remembers (see `Room::tick_once`).
pub const TICK_LIVES: usize = 8;

/// Where a room counts the transfers it asked for, beside the players' last inputs
/// (which no player name can be): the count is saved and restored with them, so a
/// replay numbers each transfer as the first run did.
const TRANSFERS: &str = "$transfers";

/// Where a room keeps each of a player's open connections (`$on:PLAYER/CONNECTION`, so
/// that an event told twice counts once) and, while the player is dropped, the end of
/// its grace (`$away:PLAYER`, milliseconds since the epoch): beside the players' last
/// inputs, so a checkpoint saves them.
const ON: &str = "$on:";
const AWAY: &str = "$away:";

/// Whether a player of the room is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// With this many connections.
    Connected(u64),
    /// Dropped, keeping its seat until this time (milliseconds since the epoch).
    Away(u64),
    /// In the room, not connected yet.
    Joined,
}

/// Who is connected and who is dropped (in grace), as the keys of a room's
/// applied-input map (a checkpoint's) say: the lobby reports them from the latest checkpoint.
pub fn presence_in<'a>(
    keys: impl IntoIterator<Item = &'a String>,
) -> (BTreeSet<PlayerId>, BTreeSet<PlayerId>) {
    let mut connected = BTreeSet::new();
    let mut away = BTreeSet::new();
    for key in keys {
        if let Some((player, _)) = key.strip_prefix(ON).and_then(|k| k.split_once('/')) {
            connected.insert(player.to_owned());
        } else if let Some(player) = key.strip_prefix(AWAY) {
            away.insert(player.to_owned());
        }
    }
    (connected, away)
}

/// A change to how the lobby lists a room, which its handlers asked for
/// ([`RoomCtx::lock`], [`RoomCtx::set_meta`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Listing {
    /// Locked (`true`) or unlocked.
    Locked(bool),
    /// New metadata.
    Meta(Value),
}

/// A player a room moves to another room ([`RoomCtx::transfer`]), numbered: `key`
/// names it for good, so that carrying it out again (after a crash) does it once.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// `ROOM/N`: the room that asked, and its count of transfers.
    pub key: String,
    /// The room the player leaves (its id).
    pub from: String,
    /// The player.
    pub player: PlayerId,
    /// The name of the room to move to.
    pub room: String,
    /// What arrives in that room's join hook as [`Arrival::carried`].
    pub carried: Value,
}

/// A room: its state, its players, and what it has applied.
///
/// Broadcasts carry `seq`, the room's sequence number, which grows by one with each, so a
/// player sees any gap in the room topic. Messages to one player carry the `seq` of the
/// latest broadcast. Every output that applying an input produced (broadcasts, replies
/// and errors) also carries that input's `input_seq` and its sender as `input_from`, so
/// any client can check that each of its inputs was applied once.
pub struct Room<S> {
    id: String,
    msg: Msg<S>,
    state: S,
    seq: u64,
    applied: HashMap<PlayerId, u64>,
    players: BTreeSet<PlayerId>,
    ended: Option<String>,
    grants: Vec<Grant>,
    transfers: Vec<Transfer>,
    listing: Vec<Listing>,
    /// The room's clock: the latest time recorded with a message it handled (ms since
    /// the epoch), what handlers see as `ctx.now()`.
    clock_ms: u64,
}

/// What applying one input did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    /// Messages to publish, in order.
    pub(crate) outputs: Vec<Output>,
    /// The input was a repeat of one already applied, and was skipped.
    pub(crate) duplicate: bool,
    /// Why the input was rejected, if it was (the sender got it as an `error`).
    pub(crate) rejected: Option<String>,
}

impl<S: 'static> Room<S> {
    /// A new room with the state `msg` makes for it.
    pub(crate) fn new(room: RoomInfo, msg: Msg<S>) -> Room<S> {
        let state = msg.new_state(&room);
        Room {
            id: room.id,
            msg,
            state,
            seq: 0,
            applied: HashMap::new(),
            players: BTreeSet::new(),
            ended: None,
            grants: Vec::new(),
            transfers: Vec::new(),
            listing: Vec::new(),
            clock_ms: 0,
        }
    }

    /// The room as it is, but with `state`: to run a handler again on a copy of the
    /// state (see `RoomWorker`'s determinism check in debug builds).
    #[cfg(debug_assertions)]
    pub(crate) fn fork(&self, state: S) -> Room<S> {
        Room {
            id: self.id.clone(),
            msg: self.msg.clone(),
            state,
            seq: self.seq,
            applied: self.applied.clone(),
            players: self.players.clone(),
            ended: self.ended.clone(),
            grants: self.grants.clone(),
            transfers: self.transfers.clone(),
            listing: self.listing.clone(),
            clock_ms: self.clock_ms,
        }
    }

    /// Moves the room's clock to `ms` (milliseconds since the epoch), the time recorded
    /// with the message about to be handled; it never goes back.
    pub(crate) fn advance_clock(&mut self, ms: u64) {
        self.clock_ms = self.clock_ms.max(ms);
    }

    /// Sets the room's clock to `ms`, back or forth: a replay, where the time recorded
    /// with each message is the time its handler read.
    pub(crate) fn set_clock(&mut self, ms: u64) {
        self.clock_ms = ms;
    }

    /// The room's clock, in milliseconds since the epoch (see [`RoomCtx::now`]).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The seed of a handler's random numbers: the room, its seq, and what `parts` say
    /// of the message being handled. The same log gives the same seeds.
    fn seed(&self, parts: &[&[u8]]) -> u64 {
        // FNV-1a over every part, each closed by a byte no UTF-8 text holds, so that
        // ("ab", "c") is not ("a", "bc"); the same in every build and process.
        let seq = self.seq.to_le_bytes();
        let all = [self.id.as_bytes(), &seq]
            .into_iter()
            .chain(parts.iter().copied());
        all.fold(0xcbf2_9ce4_8422_2325, |h, part| {
            part.iter()
                .chain(&[0xff])
                .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        })
    }

    /// A context for a hook or a tick, at the room's clock, seeded by `parts`.
    fn ctx(&self, parts: &[&[u8]]) -> RoomCtx {
        RoomCtx::new(&self.id).at(self.clock_ms, self.seed(parts))
    }

    /// The room's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The game state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The game state, to change it outside a handler (tests, restores).
    pub(crate) fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    /// The room sequence number of the latest broadcast.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The players in the room.
    pub fn players(&self) -> impl Iterator<Item = &str> {
        self.players.iter().map(String::as_str)
    }

    /// The last input sequence number applied for `player`.
    pub fn applied_seq(&self, player: &str) -> Option<u64> {
        self.applied.get(player).copied()
    }

    /// Why the room ended, once it has.
    pub fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// The router's tick interval.
    pub fn tick_interval(&self) -> Option<std::time::Duration> {
        self.msg.tick_interval()
    }

    /// Takes the inventory grants made since the last call.
    pub(crate) fn take_grants(&mut self) -> Vec<Grant> {
        std::mem::take(&mut self.grants)
    }

    /// Takes the changes to the room's listing asked for since the last call.
    pub(crate) fn take_listing(&mut self) -> Vec<Listing> {
        std::mem::take(&mut self.listing)
    }

    /// Takes the transfers asked for since the last call.
    pub(crate) fn take_transfers(&mut self) -> Vec<Transfer> {
        std::mem::take(&mut self.transfers)
    }

    /// Puts back what a checkpoint saved: state, sequence number, players, and each
    /// player's last applied input. Hooks do not run.
    pub(crate) fn restore(
        &mut self,
        state: S,
        seq: u64,
        applied: impl IntoIterator<Item = (PlayerId, u64)>,
        players: impl IntoIterator<Item = PlayerId>,
    ) {
        self.state = state;
        self.seq = seq;
        self.applied = applied.into_iter().collect();
        self.players = players.into_iter().collect();
        self.grants.clear();
        self.transfers.clear();
    }

    /// Each player's last applied input sequence number.
    pub fn applied(&self) -> impl Iterator<Item = (&str, u64)> {
        self.applied.iter().map(|(p, s)| (p.as_str(), *s))
    }

    /// Adds a player and runs the join hook; joining twice does nothing.
    pub(crate) fn join(&mut self, player: &str) -> Vec<Output> {
        self.join_with(player, Arrival::default())
    }

    /// Adds a player who brings `arrival` (see [`RoomCtx::arrival`]) and runs the join
    /// hook; joining twice does nothing.
    pub(crate) fn join_with(&mut self, player: &str, arrival: Arrival) -> Vec<Output> {
        if !self.players.insert(player.to_owned()) {
            return Vec::new();
        }
        // A new visit: the player's client numbers its inputs afresh.
        self.applied.remove(player);
        self.forget_presence(player);
        let mut ctx = RoomCtx::arriving(&self.id, arrival)
            .at(self.clock_ms, self.seed(&[b"$join", player.as_bytes()]));
        let result = self.msg.run_join(&mut self.state, &mut ctx, player);
        self.finish(ctx.take_effects(), Cause::Hook(player), result)
    }

    /// Whether `player` is connected, dropped or not yet connected; `None` if it is not
    /// in the room.
    pub fn presence(&self, player: &str) -> Option<Presence> {
        if !self.players.contains(player) {
            return None;
        }
        let connections = self.connections(player).count() as u64;
        Some(match self.applied.get(&format!("{AWAY}{player}")) {
            _ if connections > 0 => Presence::Connected(connections),
            Some(until) => Presence::Away(*until),
            None => Presence::Joined,
        })
    }

    /// The keys of `player`'s open connections (`$on:PLAYER/CONNECTION`).
    fn connections<'a>(&'a self, player: &str) -> impl Iterator<Item = &'a String> + 'a {
        let prefix = format!("{ON}{player}/");
        self.applied.keys().filter(move |k| k.starts_with(&prefix))
    }

    /// `player`'s connection `connection` opened: back from a drop, the reconnect hook
    /// runs. The same connection told twice is one.
    pub(crate) fn connected(&mut self, player: &str, connection: &str) -> Vec<Output> {
        if !self.players.contains(player) {
            return Vec::new();
        }
        self.applied.insert(format!("{ON}{player}/{connection}"), 1);
        if self.applied.remove(&format!("{AWAY}{player}")).is_none() {
            return Vec::new();
        }
        let mut ctx = self.ctx(&[b"$reconnect", player.as_bytes()]);
        let result = self.msg.run_reconnect(&mut self.state, &mut ctx, player);
        self.finish(ctx.take_effects(), Cause::Hook(player), result)
    }

    /// `player`'s connection `connection` closed: its last gone, the drop hook runs and
    /// the player keeps its seat until `until` (milliseconds since the epoch). A
    /// connection the room did not know of changes nothing.
    pub(crate) fn disconnected(
        &mut self,
        player: &str,
        connection: &str,
        until: u64,
    ) -> Vec<Output> {
        if self
            .applied
            .remove(&format!("{ON}{player}/{connection}"))
            .is_none()
            || self.connections(player).next().is_some()
        {
            return Vec::new();
        }
        self.dropped(player, until)
    }

    /// Every connection to the room is gone (the broker restarted): each connected
    /// player is dropped, as if its connections had closed.
    pub(crate) fn all_dropped(&mut self, until: u64) -> Vec<Output> {
        let (mut connected, _) = presence_in(self.applied.keys());
        connected.retain(|p| self.players.contains(p));
        self.applied.retain(|k, _| !k.starts_with(ON));
        let mut outputs = Vec::new();
        for player in connected {
            outputs.extend(self.dropped(&player, until));
        }
        outputs
    }

    fn dropped(&mut self, player: &str, until: u64) -> Vec<Output> {
        self.applied.insert(format!("{AWAY}{player}"), until);
        let mut ctx = self.ctx(&[b"$drop", player.as_bytes()]);
        let result = self.msg.run_drop(&mut self.state, &mut ctx, player);
        self.finish(ctx.take_effects(), Cause::Hook(player), result)
    }

    /// The room's snapshot for spectator `watcher`, on its own destination, stamped
    /// with the room's `seq`: nothing if the game gives none.
    pub(crate) fn snapshot_for(&mut self, watcher: &str) -> Vec<Output> {
        let Some(body) = self.msg.snapshot_of(&self.state) else {
            return Vec::new();
        };
        vec![Output {
            to: Target::Player(watcher.to_owned()),
            body: stamp(body, self.seq, Cause::Room),
        }]
    }

    /// Forgets `player`'s connections and grace.
    fn forget_presence(&mut self, player: &str) {
        let on = format!("{ON}{player}/");
        let away = format!("{AWAY}{player}");
        self.applied
            .retain(|k, _| !k.starts_with(&on) && *k != away);
    }

    /// The dropped players whose grace is over at `now` (milliseconds since the epoch):
    /// the worker has them leave.
    pub fn grace_over(&self, now: u64) -> Vec<PlayerId> {
        self.applied
            .iter()
            .filter(|(k, until)| k.starts_with(AWAY) && **until <= now)
            .map(|(k, _)| k[AWAY.len()..].to_owned())
            .filter(|p| self.players.contains(p))
            .collect()
    }

    /// Whether a player is dropped and in its grace (one look at the keys, not per
    /// player: a worker asks after each lobby message).
    pub fn anyone_away(&self) -> bool {
        self.applied.keys().any(|k| k.starts_with(AWAY))
    }

    /// How many players are connected, and how many are dropped and in their grace.
    pub fn presence_counts(&self) -> (usize, usize) {
        self.players
            .iter()
            .fold((0, 0), |(on, away), p| match self.presence(p) {
                Some(Presence::Connected(_)) => (on + 1, away),
                Some(Presence::Away(_)) => (on, away + 1),
                _ => (on, away),
            })
    }

    /// Removes a player and runs the leave hook; leaving twice does nothing.
    pub(crate) fn leave(&mut self, player: &str) -> Vec<Output> {
        if !self.players.remove(player) {
            return Vec::new();
        }
        self.forget_presence(player);
        let mut ctx = self.ctx(&[b"$leave", player.as_bytes()]);
        let result = self.msg.run_leave(&mut self.state, &mut ctx, player);
        self.finish(ctx.take_effects(), Cause::Hook(player), result)
    }

    /// Applies `player`'s input `body`, numbered `seq` by the player. An input whose `seq`
    /// is not above the last one applied for that player is a duplicate and is skipped; an
    /// input without one is refused, since it could not be told from a repeat. `kind` is
    /// the input's `type` if the caller has read it already, from a body that is an
    /// object; otherwise the room reads it.
    pub(crate) fn apply(
        &mut self,
        player: &str,
        seq: Option<u64>,
        kind: Option<&str>,
        body: &[u8],
    ) -> Applied {
        let Some(seq) = seq else {
            let rejection = match serde_json::from_slice::<Value>(body) {
                Err(e) => Rejection::BadJson(e.to_string()),
                Ok(_) => Rejection::Refused(
                    "every input needs \"seq\": your own number, larger than your last input's"
                        .into(),
                ),
            };
            let rejected = Some(rejection.to_string());
            return Applied {
                outputs: self.finish(Vec::new(), Cause::Hook(player), Err(rejection)),
                duplicate: false,
                rejected,
            };
        };
        match self.applied.get_mut(player) {
            Some(last) if seq <= *last => {
                return Applied {
                    outputs: Vec::new(),
                    duplicate: true,
                    rejected: None,
                }
            }
            // Not a new key for every input: the player's is there after its first.
            Some(last) => *last = seq,
            None => {
                self.applied.insert(player.to_owned(), seq);
            }
        }
        if self.ended.is_some() {
            return Applied {
                outputs: Vec::new(),
                duplicate: false,
                rejected: None,
            };
        }
        let seed = self.seed(&[player.as_bytes(), &seq.to_le_bytes()]);
        let mut ctx = Ctx::new(&self.id, player, seq).at(self.clock_ms, seed);
        let result = if self.players.contains(player) {
            match kind {
                Some(kind) => self.msg.apply_as(&mut self.state, &mut ctx, kind, body),
                None => self.msg.apply(&mut self.state, &mut ctx, body),
            }
        } else {
            Err(Rejection::Refused(format!(
                "{player} is not in room {}; join it through the lobby first",
                self.id
            )))
        };
        let rejected = result.as_ref().err().map(ToString::to_string);
        Applied {
            outputs: self.finish(ctx.take_effects(), Cause::Input(player, seq), result),
            duplicate: false,
            rejected,
        }
    }

    /// Runs the tick handler for tick `n` of the worker life `life`, unless it has run
    /// already: after a crash, ticks a checkpoint holds but the inbox had not yet
    /// forgotten come again, and must not run twice. What each life last ticked is kept
    /// with the players' last inputs (as `$tick:LIFE`, which no player name can be), for
    /// the latest [`TICK_LIVES`] lives; `life` must sort after every earlier one.
    pub(crate) fn tick_once(&mut self, life: &str, n: u64) -> Vec<Output> {
        let key = format!("$tick:{life}");
        if self.applied.get(&key).is_some_and(|&last| n <= last) {
            return Vec::new();
        }
        if !self.applied.contains_key(&key) {
            let mut lives: Vec<String> = self
                .applied
                .keys()
                .filter(|k| k.starts_with("$tick:"))
                .cloned()
                .collect();
            lives.sort();
            let excess = (lives.len() + 1).saturating_sub(TICK_LIVES);
            for old in lives.into_iter().take(excess) {
                self.applied.remove(&old);
            }
        }
        self.applied.insert(key, n);
        let seed = self.seed(&[b"$tick", life.as_bytes(), &n.to_le_bytes()]);
        self.run_tick(seed)
    }

    /// Runs the tick handler (a tick without a number, from a build before they had
    /// one: seeded by the room's seq alone).
    pub(crate) fn tick(&mut self) -> Vec<Output> {
        self.run_tick(self.seed(&[b"$tick"]))
    }

    fn run_tick(&mut self, seed: u64) -> Vec<Output> {
        if self.ended.is_some() {
            return Vec::new();
        }
        let mut ctx = RoomCtx::new(&self.id).at(self.clock_ms, seed);
        let result = self.msg.run_tick(&mut self.state, &mut ctx);
        self.finish(ctx.take_effects(), Cause::Room, result)
    }

    /// Ends the room from outside (the lobby, or an idle timeout).
    pub(crate) fn end(&mut self, reason: &str) -> Vec<Output> {
        let mut ctx = self.ctx(&[b"$end"]);
        ctx.end_room(reason);
        self.finish(ctx.take_effects(), Cause::Room, Ok(()))
    }

    /// Turns a handler's effects (or its rejection) into stamped outputs.
    fn finish(
        &mut self,
        effects: Vec<Effect>,
        cause: Cause<'_>,
        result: Result<(), Rejection>,
    ) -> Vec<Output> {
        let mut outputs = Vec::new();
        if let Err(rejection) = result {
            match cause {
                Cause::Input(player, _) | Cause::Hook(player) => {
                    let body = event(RoomEvent::Error {
                        error: rejection.to_string(),
                    });
                    outputs.push(Output {
                        to: Target::Player(player.to_owned()),
                        body: stamp(body, self.seq, cause),
                    });
                }
                Cause::Room => tracing::warn!(room = %self.id, "tick failed: {rejection}"),
            }
            return outputs;
        }
        for effect in effects {
            match effect {
                Effect::Broadcast(body) => {
                    self.seq += 1;
                    outputs.push(Output {
                        to: Target::Room,
                        body: stamp(body, self.seq, cause),
                    });
                }
                Effect::SendTo(player, body) => outputs.push(Output {
                    to: Target::Player(player),
                    body: stamp(body, self.seq, cause),
                }),
                Effect::GiveItem(grant) => self.grants.push(grant),
                Effect::Lock(locked) => self.listing.push(Listing::Locked(locked)),
                Effect::Meta(meta) => self.listing.push(Listing::Meta(meta)),
                Effect::Transfer {
                    player,
                    room,
                    carried,
                } => {
                    let n = self.applied.get(TRANSFERS).copied().unwrap_or(0) + 1;
                    self.applied.insert(TRANSFERS.to_owned(), n);
                    self.transfers.push(Transfer {
                        key: format!("{}/{n}", self.id),
                        from: self.id.clone(),
                        player,
                        room,
                        carried,
                    });
                }
                Effect::EndRoom(reason) => {
                    if self.ended.is_none() {
                        self.seq += 1;
                        let body = event(RoomEvent::RoomEnded {
                            reason: reason.clone(),
                        });
                        outputs.push(Output {
                            to: Target::Room,
                            body: stamp(body, self.seq, cause),
                        });
                        self.ended = Some(reason);
                    }
                }
            }
        }
        outputs
    }
}

/// One of the framework's own messages, as JSON.
fn event(event: RoomEvent) -> Json {
    Json::of(&event)
}

/// What made a room emit outputs.
#[derive(Debug, Clone, Copy)]
enum Cause<'a> {
    /// A player's input: its sender and number.
    Input(&'a str, u64),
    /// A join or leave hook, or an input refused before it had a number.
    Hook(&'a str),
    /// A tick, or the room's end.
    Room,
}

/// Puts the room `seq` (and, for an input's outputs, `input_seq` and `input_from`) into
/// an object message; wraps anything else as `{"type":"message","data":…}`.
///
/// serde_json wrote `body`, so an object is `{…}` with no space around it: the fields
/// are written into the text, after the message's own. A message that has a field of
/// one of these names already (or their names anywhere in it) goes the long way, through
/// a JSON value, so that the room's stamp replaces it rather than repeats it.
fn stamp(body: Json, seq: u64, cause: Cause<'_>) -> Json {
    let mut text = body.into_bytes();
    let object = text.first() == Some(&b'{') && text.last() == Some(&b'}');
    if !object || names_a_stamp(&text) {
        return stamp_value(
            serde_json::from_slice(&text).expect("serde_json wrote JSON"),
            seq,
            cause,
        );
    }
    text.pop();
    if text.len() > 1 {
        text.push(b',');
    }
    write_stamp(&mut text, seq, cause);
    text.push(b'}');
    Json::from_written(text)
}

/// Writes `"seq":N` (and the input's fields) into an object being written.
fn write_stamp(text: &mut Vec<u8>, seq: u64, cause: Cause<'_>) {
    let mut number = itoa::Buffer::new();
    text.extend_from_slice(b"\"seq\":");
    text.extend_from_slice(number.format(seq).as_bytes());
    if let Cause::Input(player, input_seq) = cause {
        text.extend_from_slice(b",\"input_seq\":");
        text.extend_from_slice(number.format(input_seq).as_bytes());
        text.extend_from_slice(b",\"input_from\":");
        serde_json::to_writer(&mut *text, player).expect("a string serializes");
    }
}

/// Whether a name the stamp writes (`"seq"`, `"input_…`) is anywhere in `text`.
fn names_a_stamp(text: &[u8]) -> bool {
    memchr::memchr_iter(b'"', text).any(|i| {
        let rest = &text[i + 1..];
        rest.starts_with(b"seq\"") || rest.starts_with(b"input_")
    })
}

/// [`stamp`] the long way.
fn stamp_value(body: Value, seq: u64, cause: Cause<'_>) -> Json {
    let mut map = match body {
        Value::Object(map) => map,
        other => {
            let mut map = serde_json::Map::new();
            map.insert("type".into(), "message".into());
            map.insert("data".into(), other);
            map
        }
    };
    map.insert("seq".into(), seq.into());
    if let Cause::Input(player, input_seq) = cause {
        map.insert("input_seq".into(), input_seq.into());
        map.insert("input_from".into(), player.into());
    }
    Json::of(&Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echo_room() -> Room<Vec<String>> {
        let mut room = bare_echo_room();
        room.join("p1");
        room.join("p2");
        room
    }

    #[test]
    fn inputs_need_a_seq_and_a_new_visit_numbers_afresh() {
        let mut room = echo_room();
        let out = room
            .apply("p1", None, None, br#"{"type":"say","text":"x"}"#)
            .outputs;
        assert!(out[0].body.value()["error"]
            .as_str()
            .unwrap()
            .contains("needs \"seq\""));
        let out = room.apply("p1", None, None, b"nope").outputs;
        assert!(out[0].body.value()["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON"));
        room.apply("p1", Some(50), None, br#"{"type":"say","text":"a"}"#);
        room.leave("p1");
        room.join("p1");
        let again = room.apply("p1", Some(1), None, br#"{"type":"say","text":"b"}"#);
        assert!(!again.duplicate);
        assert_eq!(room.state(), &["a", "b"]);
    }

    #[test]
    fn stamps_are_written_into_the_text_after_the_message_own_fields() {
        let cause = Cause::Input("ann \"a\"", 7);
        let stamped = |message: Value, cause| stamp(Json::of(&message), 3, cause);
        #[derive(serde::Serialize)]
        struct Moved {
            r#type: &'static str,
            x: i32,
        }
        assert_eq!(
            stamp(
                Json::of(&Moved {
                    r#type: "moved",
                    x: 1
                }),
                3,
                cause
            )
            .as_str(),
            r#"{"type":"moved","x":1,"seq":3,"input_seq":7,"input_from":"ann \"a\""}"#,
        );
        assert_eq!(stamped(json!({}), Cause::Room).as_str(), r#"{"seq":3}"#);
        assert_eq!(
            stamped(json!("hi"), Cause::Room).as_str(),
            r#"{"data":"hi","seq":3,"type":"message"}"#,
            "anything but an object is wrapped"
        );
        // A message with a field the stamp writes: the stamp's replaces it, once.
        for message in [
            json!({ "type": "t", "seq": 99 }),
            json!({ "type": "t", "input_from": "mallory", "input_seq": 1 }),
        ] {
            let text = stamped(message, cause);
            assert_eq!(text.as_str().matches("\"seq\"").count(), 1, "{text}");
            assert_eq!(
                text.value(),
                json!({ "type": "t", "seq": 3, "input_seq": 7, "input_from": "ann \"a\"" })
            );
        }
        // Only a field's name counts, not the same letters in a string.
        assert_eq!(
            stamped(json!({ "text": "seq: \"seq\"" }), Cause::Room).as_str(),
            r#"{"text":"seq: \"seq\"","seq":3}"#
        );
    }

    #[test]
    fn only_players_in_the_room_are_heard() {
        let mut room = bare_echo_room();
        let out = room
            .apply("stranger", Some(1), None, br#"{"type":"say","text":"hi"}"#)
            .outputs;
        assert_eq!(out[0].to, Target::Player("stranger".into()));
        assert!(out[0].body.value()["error"]
            .as_str()
            .unwrap()
            .contains("not in room r1"));
        assert!(room.state().is_empty());
    }

    /// A room whose hooks write down what they saw, in order.
    fn hooked_room() -> Room<Vec<String>> {
        let note = |what: &'static str| {
            move |log: &mut Vec<String>, _: &mut RoomCtx, p: &str| log.push(format!("{what} {p}"))
        };
        let msg = Msg::new(Vec::new)
            .on_join(note("join"))
            .on_drop(note("drop"))
            .on_reconnect(note("reconnect"))
            .on_leave(note("leave"));
        Room::new(RoomInfo::new("r1", "hooks"), msg)
    }

    #[test]
    fn presence_runs_drop_and_reconnect_hooks_once_each_in_order() {
        let mut room = hooked_room();
        room.join("ann");
        assert_eq!(room.presence("ann"), Some(Presence::Joined));
        room.connected("ann", "c1");
        room.connected("ann", "c1"); // told twice: one connection
        room.connected("ann", "c2");
        assert_eq!(room.presence("ann"), Some(Presence::Connected(2)));
        room.disconnected("ann", "c1", 5_000);
        room.disconnected("ann", "c1", 5_000); // told twice: nothing more
        assert_eq!(room.presence("ann"), Some(Presence::Connected(1)));
        room.disconnected("ann", "c2", 5_000);
        assert_eq!(room.presence("ann"), Some(Presence::Away(5_000)));
        assert_eq!(room.presence_counts(), (0, 1));
        assert!(room.anyone_away());
        assert!(room.grace_over(4_999).is_empty());
        assert_eq!(room.grace_over(5_000), ["ann"]);
        room.connected("ann", "c3");
        assert!(room.grace_over(u64::MAX).is_empty(), "back in time");
        assert!(!room.anyone_away());
        room.disconnected("ann", "c3", 9_000);
        room.leave("ann");
        room.connected("ann", "c4"); // a connection after the leave changes nothing
        assert_eq!(
            room.state(),
            &[
                "join ann",
                "drop ann",
                "reconnect ann",
                "drop ann",
                "leave ann"
            ]
        );
        assert_eq!(room.presence("ann"), None);
        assert!(
            room.applied().all(|(k, _)| !k.contains("ann")),
            "nothing of ann is kept"
        );
    }

    #[test]
    fn a_broker_restart_drops_every_connected_player_and_the_checkpoint_shows_who() {
        let mut room = hooked_room();
        for p in ["ann", "bob", "cy"] {
            room.join(p);
        }
        room.connected("ann", "1");
        room.connected("bob", "2");
        room.all_dropped(7_000);
        assert_eq!(room.presence_counts(), (0, 2));
        assert_eq!(room.presence("cy"), Some(Presence::Joined));
        room.connected("bob", "9");
        let keys: Vec<String> = room.applied().map(|(k, _)| k.to_owned()).collect();
        let (connected, away) = presence_in(&keys);
        assert_eq!(connected.into_iter().collect::<Vec<_>>(), ["bob"]);
        assert_eq!(away.into_iter().collect::<Vec<_>>(), ["ann"]);
        assert_eq!(
            room.state(),
            &[
                "join ann",
                "join bob",
                "join cy",
                "drop ann",
                "drop bob",
                "reconnect bob"
            ]
        );
    }

    fn bare_echo_room() -> Room<Vec<String>> {
        let msg = Msg::new(Vec::new)
            .route(
                "type=say",
                |log: &mut Vec<String>, ctx: &mut Ctx, m: Value| {
                    let text = m["text"].as_str().unwrap_or_default().to_owned();
                    log.push(text.clone());
                    ctx.broadcast(&json!({ "type": "said", "text": text }));
                    ctx.reply(&"ok");
                },
            )
            .route(
                "type=quit",
                |_: &mut Vec<String>, ctx: &mut Ctx, _: Value| ctx.end_room("bye"),
            );
        Room::new(RoomInfo::new("r1", "echo"), msg)
    }

    #[test]
    fn broadcasts_are_numbered_and_replies_carry_the_latest_number() {
        let mut room = echo_room();
        let a = room.apply("p1", Some(1), None, br#"{"type":"say","text":"hi"}"#);
        assert_eq!(a.outputs[0].body.value()["seq"], 1);
        assert_eq!(a.outputs[1].to, Target::Player("p1".into()));
        assert_eq!(
            a.outputs[1].body.value(),
            json!({ "type": "message", "data": "ok", "seq": 1, "input_seq": 1, "input_from": "p1" })
        );
        let b = room.apply("p2", Some(1), None, br#"{"type":"say","text":"yo"}"#);
        assert_eq!(b.outputs[0].body.value()["seq"], 2);
        assert_eq!(b.outputs[0].body.value()["input_from"], "p2");
        let tick_free = room.join("p3");
        assert!(tick_free.is_empty(), "no join hook, no output");
        let ended = room.end("over");
        assert!(
            ended[0].body.value().get("input_seq").is_none(),
            "not an input's output"
        );
    }

    #[test]
    fn duplicates_are_skipped_per_player() {
        let mut room = echo_room();
        room.apply("p1", Some(1), None, br#"{"type":"say","text":"a"}"#);
        let again = room.apply("p1", Some(1), None, br#"{"type":"say","text":"a"}"#);
        assert!(again.duplicate && again.outputs.is_empty());
        room.apply("p1", Some(2), None, br#"{"type":"say","text":"b"}"#);
        assert_eq!(room.state(), &["a", "b"]);
        assert_eq!(room.applied_seq("p1"), Some(2));
    }

    #[test]
    fn a_rejected_input_answers_its_sender_only() {
        let mut room = echo_room();
        let out = room
            .apply("p1", Some(7), None, br#"{"type":"fly"}"#)
            .outputs;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, Target::Player("p1".into()));
        assert_eq!(out[0].body.value()["type"], "error");
        assert_eq!(out[0].body.value()["input_seq"], 7);
        assert_eq!(room.seq(), 0, "errors do not advance the room sequence");
    }

    #[test]
    fn a_refused_join_answers_the_player_only_who_stays_a_member() {
        let msg = Msg::new(Vec::new)
            .on_join(|seen: &mut Vec<String>, ctx: &mut RoomCtx, player: &str| {
                seen.push(format!("+{player}"));
                ctx.broadcast(&json!({ "type": "joined", "player": player }));
                if player == "mallory" {
                    return Err("no room for mallory");
                }
                Ok(())
            })
            .on_leave(|seen: &mut Vec<String>, _: &mut RoomCtx, player: &str| {
                seen.push(format!("-{player}"));
            })
            .route("type=say", |_: &mut Vec<String>, _: &mut Ctx, _: Value| {});
        let mut room = Room::new(RoomInfo::new("r1", "r1"), msg);
        assert_eq!(room.join("ann")[0].to, Target::Room);
        let out = room.join("mallory");
        assert_eq!(out.len(), 1, "the hook's broadcast is dropped: {out:?}");
        assert_eq!(out[0].to, Target::Player("mallory".into()));
        assert_eq!(
            out[0].body.value(),
            json!({ "type": "error", "error": "no room for mallory", "seq": 1 })
        );
        assert_eq!(room.seq(), 1, "only ann's join was broadcast");
        assert!(
            room.players().any(|p| p == "mallory"),
            "the lobby admitted her"
        );
        assert!(room
            .apply("mallory", Some(1), None, br#"{"type":"say"}"#)
            .outputs
            .is_empty());
        room.leave("mallory");
        assert_eq!(room.state(), &["+ann", "+mallory", "-mallory"]);
    }

    #[test]
    fn transfers_are_numbered_for_good_and_a_rejected_input_asks_for_none() {
        let msg = Msg::new(|| 0u32)
            .route("type=go", |_: &mut u32, ctx: &mut Ctx, m: Value| {
                let me = ctx.sender().to_owned();
                ctx.transfer(&me, "caves", &m["hp"]);
                if m["fail"] == true {
                    return Err("no");
                }
                Ok(())
            })
            .tick(std::time::Duration::from_secs(1), |_, ctx| {
                ctx.transfer("p2", "meadow", &());
            });
        let mut room = Room::new(RoomInfo::new("r1", "r1"), msg.clone());
        room.join("p1");
        let out = room
            .apply("p1", Some(1), None, br#"{"type":"go","hp":4}"#)
            .outputs;
        assert!(out.is_empty(), "a transfer is no message: {out:?}");
        room.apply("p1", Some(2), None, br#"{"type":"go","fail":true}"#);
        room.tick();
        let moved = room.take_transfers();
        let keys: Vec<&str> = moved.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["r1/1", "r1/2"], "the refused input's is dropped");
        assert_eq!(
            (moved[0].from.as_str(), moved[0].player.as_str()),
            ("r1", "p1")
        );
        assert_eq!(
            (moved[0].room.as_str(), &moved[0].carried),
            ("caves", &json!(4))
        );
        assert_eq!(moved[1].room, "meadow");
        // The count goes with the players' last inputs into a checkpoint, and on from it.
        let applied: Vec<(String, u64)> = room.applied().map(|(p, n)| (p.to_owned(), n)).collect();
        let mut again = Room::new(RoomInfo::new("r1", "r1"), msg);
        again.restore(0, room.seq(), applied, ["p1".to_owned()]);
        again.tick();
        assert_eq!(again.take_transfers()[0].key, "r1/3");
    }

    #[test]
    fn ending_is_announced_once_and_stops_inputs() {
        let mut room = echo_room();
        let out = room
            .apply("p1", Some(1), None, br#"{"type":"quit"}"#)
            .outputs;
        assert_eq!(out[0].body.value()["type"], "room_ended");
        assert_eq!(room.ended(), Some("bye"));
        assert!(room
            .apply("p1", Some(2), None, br#"{"type":"say","text":"x"}"#)
            .outputs
            .is_empty());
        assert!(room.end("again").is_empty());
    }
}
