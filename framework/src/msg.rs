//! Realtime handlers routed by message type: the [`Msg`] router and the [`Ctx`] a handler
//! acts through.
//!
//! ```
//! use game_server_less::msg::{Ctx, Msg};
//! use serde::Deserialize;
//!
//! #[derive(Default)]
//! struct Counter { n: i64 }
//!
//! #[derive(Deserialize)]
//! struct Add { by: i64 }
//!
//! fn on_add(state: &mut Counter, ctx: &mut Ctx, add: Add) {
//!     state.n += add.by;
//!     ctx.broadcast(&serde_json::json!({ "type": "count", "n": state.n }));
//! }
//!
//! let msg = Msg::new(Counter::default).route("type=add", on_add);
//! # let _ = msg;
//! ```
//!
//! Handlers are plain functions, not `async`: a room applies its inputs one at a time, in
//! order, and a handler that awaited I/O would stall every player of the room. What a
//! handler wants done outside the room (messages, ending the room) it asks of [`Ctx`], and
//! the room worker carries it out after the handler returns.
//!
//! # A room is a function of its log
//!
//! After a crash, a room's worker applies again the inputs its last checkpoint does not
//! hold, and the outputs it makes must be the ones players already saw. So a handler's
//! outputs and state changes must follow from the state and the message alone:
//! - **Time:** read [`RoomCtx::now`], the time recorded with the message (the tick's, or
//!   when the broker queued the input), not `SystemTime::now()` or `Instant::now()`.
//! - **Chance:** draw from [`RoomCtx::rng`], seeded from the room and the message, not
//!   from a generator seeded by the clock, the process or the OS (`rand::thread_rng()`).
//! - **Order:** iterate a `BTreeMap`, a `Vec` or an `IndexMap` where the order shows in
//!   what the handler sends or decides, not a `HashMap` or `HashSet`, whose order differs
//!   between processes.
//! - **The world outside:** no files, network, environment variables or globals that
//!   change; what a handler needs from outside comes in a message ([`Arrival`] at a
//!   join, or an input).
//!
//! Debug builds check it: the room worker handles inputs and ticks a second time (the
//! first 200 of its life, then one in 50), on a copy of the state made from its JSON (as
//! a restart makes it), and logs an error naming the room when the outputs differ. A
//! generator of the handler's own and a `HashMap`'s order (a copy's differs) are caught;
//! the clock read to the millisecond mostly is not.
//!
//! On RabbitMQ the broker records no time with an input: an input applied again after a
//! crash reads the worker's clock of its second application. Ticks carry their time
//! everywhere, and the embedded broker records each input's.

use crate::policy::Policy;
use crate::proto::Grant;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

/// A player's id, as the lobby issued it.
pub type PlayerId = String;

/// What a handler asked for, in the order it asked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// A message for every player of the room (the room topic).
    Broadcast(Json),
    /// A message for one player (that player's own destination).
    SendTo(PlayerId, Json),
    /// End the room, for this reason.
    EndRoom(String),
    /// Add to a player's persistent inventory (`/user/items`).
    GiveItem(Grant),
    /// Lock (`true`) or unlock the room: quick play and joins pass a locked room by.
    Lock(bool),
    /// Replace the room's metadata (what quick play filters on).
    Meta(Value),
    /// Move a player to the live room of this name, carrying this value.
    Transfer {
        /// The player.
        player: PlayerId,
        /// The name of the room to move to.
        room: String,
        /// What arrives as [`Arrival::carried`].
        carried: Value,
    },
}

/// What a player brings into a room, which the join hook reads from
/// [`RoomCtx::arrival`]: the room's name (which the state factory of [`Msg::for_room`]
/// sees too, before anyone joins), the player's persistent items (read by the
/// lobby at the join, so a hook can derive levels and the like from them), and what a
/// transfer from another room carried ([`RoomCtx::transfer`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arrival {
    /// The room's display name, as it was created.
    #[serde(default)]
    pub room_name: String,
    /// The player's persistent items when they joined.
    #[serde(default)]
    pub items: BTreeMap<String, i64>,
    /// What the room that moved the player here carried ([`RoomCtx::transfer`]); null on
    /// a plain join.
    #[serde(default)]
    pub carried: Value,
}

/// The room a state is made for, as the factory of [`Msg::for_room`] sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoomInfo {
    /// The room's id.
    pub id: String,
    /// The room's display name, as it was created (`POST /rooms` with `{"name": …}`).
    pub name: String,
}

impl RoomInfo {
    /// The room `id`, named `name`.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> RoomInfo {
        RoomInfo {
            id: id.into(),
            name: name.into(),
        }
    }
}

/// A handler's random numbers: SplitMix64, seeded by the framework from the room and
/// the message being handled (see [`RoomCtx::rng`]), so that a room run again from its
/// log draws the same numbers. Not for secrets.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator that starts from `seed`: the same seed, the same numbers.
    pub fn seeded(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below(hi.saturating_sub(lo).max(0) as u64) as i64
    }

    /// True with probability `p` (0 to 1).
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One of `items`, or `None` when there are none.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

/// What ticks and join/leave hooks act through: the room's id, its clock and random
/// numbers, and the effects they ask for. Input handlers get a [`Ctx`], which derefs to
/// this.
#[derive(Debug)]
pub struct RoomCtx {
    room: String,
    effects: Vec<Effect>,
    arrival: Option<Arrival>,
    /// The time recorded with the message being handled, in ms since the Unix epoch.
    now_ms: u64,
    rng: Rng,
}

impl RoomCtx {
    /// A context for a tick or a hook in `room`.
    pub(crate) fn new(room: impl Into<String>) -> RoomCtx {
        RoomCtx {
            room: room.into(),
            effects: Vec::new(),
            arrival: None,
            now_ms: 0,
            rng: Rng::seeded(0),
        }
    }

    /// The same context, at the room's time `now_ms`, drawing from `seed`.
    pub(crate) fn at(mut self, now_ms: u64, seed: u64) -> RoomCtx {
        self.now_ms = now_ms;
        self.rng = Rng::seeded(seed);
        self
    }

    /// The room's time: the time recorded with the message being handled (the tick's,
    /// or when the broker queued the input), never earlier than the message before.
    /// Not the wall clock: a room run again from its log sees the same times.
    pub fn now(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.now_ms)
    }

    /// [`RoomCtx::now`] in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Random numbers for this handler, seeded from the room and the message being
    /// handled (an input's sender and number, a tick's number): the same log, the same
    /// numbers. Use it, not a generator of your own seeded from the clock.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// A context for the join hook of a player who brings `arrival`.
    pub(crate) fn arriving(room: impl Into<String>, arrival: Arrival) -> RoomCtx {
        RoomCtx {
            arrival: Some(arrival),
            ..RoomCtx::new(room)
        }
    }

    /// The room's id.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// In the join hook: what the joining player brings (see [`Arrival`]). `None`
    /// elsewhere.
    pub fn arrival(&self) -> Option<&Arrival> {
        self.arrival.as_ref()
    }

    /// Sends `message` to every player of the room.
    ///
    /// # Panics
    ///
    /// When `message` cannot be serialized as JSON (a map with non-string keys, say): a
    /// bug in the handler, which the room turns into a rejection of the input.
    pub fn broadcast(&mut self, message: &impl Serialize) {
        self.effects.push(Effect::Broadcast(Json::of(message)));
    }

    /// Sends `message` to one player.
    ///
    /// # Panics
    ///
    /// As [`RoomCtx::broadcast`].
    pub fn send_to(&mut self, player: &str, message: &impl Serialize) {
        self.effects
            .push(Effect::SendTo(player.to_owned(), Json::of(message)));
    }

    /// Ends the room once this handler returns.
    pub fn end_room(&mut self, reason: impl Into<String>) {
        self.effects.push(Effect::EndRoom(reason.into()));
    }

    /// Adds `count` of `item` to `player`'s persistent inventory. It is saved together
    /// with the room's checkpoint, so an input is never paid out twice.
    pub fn give_item(&mut self, player: &str, item: &str, count: i64) {
        self.effects.push(Effect::GiveItem(Grant {
            player: player.to_owned(),
            item: item.to_owned(),
            count,
        }));
    }

    /// Moves `player` to the live room named `room` (created if there is none), carrying
    /// `carried` into its join hook as [`Arrival::carried`]. The player gets the new
    /// room's ticket (a [`crate::proto::RoomEvent::Transferred`] on its own
    /// destination) and leaves this room: its leave hook runs when the lobby's leave
    /// arrives, as for any leave. It happens once the room's checkpoint holds the
    /// input, and once only, even if the worker dies and applies the input again.
    ///
    /// # Panics
    ///
    /// As [`RoomCtx::broadcast`].
    pub fn transfer(&mut self, player: &str, room: &str, carried: &impl Serialize) {
        self.effects.push(Effect::Transfer {
            player: player.to_owned(),
            room: room.to_owned(),
            carried: to_value(carried),
        });
    }

    /// Locks the room once this handler returns: quick play and joins by id pass it by
    /// (a match under way, say) until [`RoomCtx::unlock`]. Its players stay, and
    /// dropped ones may come back.
    pub fn lock(&mut self) {
        self.effects.push(Effect::Lock(true));
    }

    /// Unlocks the room ([`RoomCtx::lock`]).
    pub fn unlock(&mut self) {
        self.effects.push(Effect::Lock(false));
    }

    /// Replaces the room's metadata, which quick play's filters match (`{"mode":
    /// "ranked"}`, say): a JSON object.
    ///
    /// # Panics
    ///
    /// As [`RoomCtx::broadcast`].
    pub fn set_meta(&mut self, meta: &impl Serialize) {
        self.effects.push(Effect::Meta(to_value(meta)));
    }

    /// The effects asked for so far.
    #[cfg(test)]
    pub(crate) fn effects(&self) -> &[Effect] {
        &self.effects
    }

    /// Takes the effects, leaving none.
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }
}

/// An input handler's view of the room and of the input it is handling: who sent it,
/// its number, and (through [`RoomCtx`]) what the handler asks for.
#[derive(Debug)]
pub struct Ctx {
    room: RoomCtx,
    sender: PlayerId,
    input_seq: u64,
}

impl Ctx {
    /// A context for input `input_seq` from `sender` in `room`.
    pub(crate) fn new(room: impl Into<String>, sender: impl Into<PlayerId>, input_seq: u64) -> Ctx {
        Ctx {
            room: RoomCtx::new(room),
            sender: sender.into(),
            input_seq,
        }
    }

    /// The same context, at the room's time `now_ms`, drawing from `seed`.
    pub(crate) fn at(mut self, now_ms: u64, seed: u64) -> Ctx {
        self.room = self.room.at(now_ms, seed);
        self
    }

    /// Who sent the input being handled.
    pub fn sender(&self) -> &str {
        &self.sender
    }

    /// The sender's own sequence number of the input being handled.
    pub fn input_seq(&self) -> u64 {
        self.input_seq
    }

    /// Sends `message` to the sender of the input being handled.
    ///
    /// # Panics
    ///
    /// As [`RoomCtx::broadcast`].
    pub fn reply(&mut self, message: &impl Serialize) {
        let json = Json::of(message);
        self.room
            .effects
            .push(Effect::SendTo(self.sender.clone(), json));
    }

    // The effect methods again, not only through `Deref`: so that
    // `ctx.broadcast(&json!({ "by": ctx.sender() }))` borrows as users expect.

    /// Sends `message` to every player of the room; see [`RoomCtx::broadcast`].
    pub fn broadcast(&mut self, message: &impl Serialize) {
        self.room.broadcast(message);
    }

    /// Sends `message` to one player; see [`RoomCtx::send_to`].
    pub fn send_to(&mut self, player: &str, message: &impl Serialize) {
        self.room.send_to(player, message);
    }

    /// Ends the room once this handler returns.
    pub fn end_room(&mut self, reason: impl Into<String>) {
        self.room.end_room(reason);
    }

    /// Adds to a player's inventory; see [`RoomCtx::give_item`].
    pub fn give_item(&mut self, player: &str, item: &str, count: i64) {
        self.room.give_item(player, item, count);
    }

    /// Moves a player to another room; see [`RoomCtx::transfer`].
    pub fn transfer(&mut self, player: &str, room: &str, carried: &impl Serialize) {
        self.room.transfer(player, room, carried);
    }
}

impl std::ops::Deref for Ctx {
    type Target = RoomCtx;
    fn deref(&self) -> &RoomCtx {
        &self.room
    }
}

impl std::ops::DerefMut for Ctx {
    fn deref_mut(&mut self) -> &mut RoomCtx {
        &mut self.room
    }
}

/// A message's `type`, read without building the whole message as a JSON value (the
/// handler's own type is deserialized from the body once, by its route).
fn message_type(body: &[u8]) -> Result<std::borrow::Cow<'_, str>, Rejection> {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    if let (true, Ok(typed)) = (is_object(body), serde_json::from_slice::<Typed>(body)) {
        return Ok(typed.kind);
    }
    // Not a well-formed message: the whole value, for the error to say why.
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Rejection::BadJson(e.to_string()))?;
    match value.get("type").and_then(Value::as_str) {
        // A `type` the fast read refused, such as one given twice: the last one, as a
        // JSON value takes it.
        Some(kind) => Ok(std::borrow::Cow::Owned(kind.to_owned())),
        None => Err(Rejection::BadJson(
            "expected an object with a string \"type\" field".into(),
        )),
    }
}

/// Whether `body` is a JSON object (by its first byte): serde reads a struct from an
/// array too, and only an object is a message.
pub(crate) fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Reads a message's `body` as `T`. Text that is UTF-8 (as every client's is) is read
/// as text, which serde_json then need not check string by string; other bytes are read
/// as bytes, with the same result as before.
pub(crate) fn read_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

/// A message as the JSON text it goes out as. A handler's message is serialized once,
/// where the handler sends it; the room stamps it by writing its `seq` (and the input's)
/// into the text. No `serde_json::Value` is built for it, and it is not serialized again
/// on its way to the players, into the match record, or in the deploy gate's comparison.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(Vec<u8>);

impl Json {
    /// `message` as JSON text.
    ///
    /// # Panics
    ///
    /// As [`RoomCtx::broadcast`].
    pub(crate) fn of(message: &impl Serialize) -> Json {
        Json(
            serde_json::to_vec(message).unwrap_or_else(|e| {
                panic!("a handler's message cannot be serialized as JSON: {e}")
            }),
        )
    }

    /// Bytes that serde_json wrote as one JSON value (and nothing else).
    pub(crate) fn from_written(bytes: Vec<u8>) -> Json {
        Json(bytes)
    }

    /// The JSON text, as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("serde_json writes UTF-8")
    }

    /// The JSON text's bytes, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The message as a JSON value: to read a field or two, in tests say.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.0).expect("serde_json wrote JSON")
    }
}

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

fn to_value(message: &impl Serialize) -> Value {
    serde_json::to_value(message)
        .unwrap_or_else(|e| panic!("a handler's message cannot be serialized as JSON: {e}"))
}

/// What a handler or a join or leave hook may return: nothing, or a `Result` whose error
/// rejects the input (or the join) and is reported to its sender (or the player).
pub trait HandlerResult {
    /// `Err(reason)` rejects the input.
    fn into_result(self) -> Result<(), String>;
}

impl HandlerResult for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> HandlerResult for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// Why an input was not applied; reported to its sender only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The body is not a JSON object with a string `type`.
    BadJson(String),
    /// No handler for this `type`.
    UnknownType(String),
    /// The payload does not fit the handler's type.
    BadPayload {
        /// The message type.
        kind: String,
        /// What serde said.
        error: String,
    },
    /// The handler returned an error.
    Refused(String),
    /// The handler panicked.
    Panicked(String),
}

impl Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::BadJson(e) => write!(f, "invalid JSON: {e}"),
            Rejection::UnknownType(t) => write!(f, "unknown message type {t:?}"),
            Rejection::BadPayload { kind, error } => write!(f, "invalid {kind:?} message: {error}"),
            Rejection::Refused(why) => write!(f, "{why}"),
            Rejection::Panicked(why) => write!(f, "the handler failed: {why}"),
        }
    }
}

/// A route: deserializes the message's JSON body as its handler's type and runs it.
type RouteFn<S> = Arc<dyn Fn(&mut S, &mut Ctx, &[u8]) -> Result<(), Rejection> + Send + Sync>;
type TickFn<S> = Arc<dyn Fn(&mut S, &mut RoomCtx) + Send + Sync>;
type SnapshotFn<S> = Arc<dyn Fn(&S) -> Json + Send + Sync>;
type HookFn<S> = Arc<dyn Fn(&mut S, &mut RoomCtx, &str) -> Result<(), String> + Send + Sync>;

/// A join or leave hook, its result made a `Result`.
fn hook<S, R: HandlerResult>(
    handler: impl Fn(&mut S, &mut RoomCtx, &str) -> R + Send + Sync + 'static,
) -> HookFn<S> {
    Arc::new(move |state, ctx, player| handler(state, ctx, player).into_result())
}

/// The router of a room's realtime messages: `type` to handler, plus tick, join and leave
/// hooks, and how to make a new room's state. Cheap to clone.
pub struct Msg<S> {
    routes: BTreeMap<String, RouteFn<S>>,
    tick: Option<(Duration, TickFn<S>)>,
    on_join: Option<HookFn<S>>,
    on_leave: Option<HookFn<S>>,
    on_drop: Option<HookFn<S>>,
    on_reconnect: Option<HookFn<S>>,
    snapshot: Option<SnapshotFn<S>>,
    new_state: Arc<dyn Fn(&RoomInfo) -> S + Send + Sync>,
    policy: Policy,
}

impl<S> Clone for Msg<S> {
    fn clone(&self) -> Self {
        Msg {
            routes: self.routes.clone(),
            tick: self.tick.clone(),
            on_join: self.on_join.clone(),
            on_leave: self.on_leave.clone(),
            on_drop: self.on_drop.clone(),
            on_reconnect: self.on_reconnect.clone(),
            snapshot: self.snapshot.clone(),
            new_state: self.new_state.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S> Msg<S> {
    /// The message types routed, sorted.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// The tick interval, if there is a tick.
    pub fn tick_interval(&self) -> Option<Duration> {
        self.tick.as_ref().map(|(every, _)| *every)
    }

    /// The queue policy its rooms declare ([`Msg::policy`]).
    pub fn declared_policy(&self) -> &Policy {
        &self.policy
    }

    /// The same router, whose rooms follow `policy`: players, input rate, inbox bound,
    /// idle timeout, reconnection grace, fsync, spectators. What it leaves unset the
    /// server's flags decide.
    ///
    /// ```
    /// use game_server_less::{Msg, Policy};
    ///
    /// let duel = Msg::new(|| 0u32).policy(Policy::new().players(2, 2));
    /// # let _ = duel;
    /// ```
    pub fn policy(self, policy: Policy) -> Msg<S> {
        Msg { policy, ..self }
    }
}

impl<S: 'static> Msg<S> {
    /// A router whose rooms start with the state `new_state` makes.
    pub fn new(new_state: impl Fn() -> S + Send + Sync + 'static) -> Msg<S> {
        Msg::for_room(move |_| new_state())
    }

    /// A router whose rooms start with the state `new_state` makes for each, from what it
    /// knows of the room: rooms named `caves…` can start as caves, say.
    ///
    /// ```
    /// use game_server_less::{Msg, RoomInfo};
    ///
    /// let msg = Msg::for_room(|room: &RoomInfo| room.name.starts_with("caves"));
    /// # let _ = msg;
    /// ```
    ///
    /// It runs when a worker starts the room, before anyone joins; a room carried on from
    /// its checkpoint then takes the saved state instead.
    pub fn for_room(new_state: impl Fn(&RoomInfo) -> S + Send + Sync + 'static) -> Msg<S> {
        Msg {
            routes: BTreeMap::new(),
            tick: None,
            on_join: None,
            on_leave: None,
            on_drop: None,
            on_reconnect: None,
            snapshot: None,
            new_state: Arc::new(new_state),
            policy: Policy::default(),
        }
    }

    /// The same router, whose rooms start with the state `new_state` makes instead: a
    /// test runs the game's own routes and hooks on a world of its own.
    ///
    /// ```
    /// # use game_server_less::{Ctx, Msg};
    /// # fn on_add(n: &mut i64, _: &mut Ctx, by: i64) { *n += by }
    /// fn msg() -> Msg<i64> {
    ///     Msg::new(|| 0).route("type=add", on_add)
    /// }
    /// let almost_full = msg().with_state(|| 99);
    /// # let _ = almost_full;
    /// ```
    pub fn with_state(self, new_state: impl Fn() -> S + Send + Sync + 'static) -> Msg<S> {
        Msg {
            new_state: Arc::new(move |_: &RoomInfo| new_state()),
            ..self
        }
    }

    /// Routes messages whose `type` is `T` to `handler`; `selector` is `"type=T"` (the
    /// `"/type=T"` spelling works too). The handler gets the message deserialized as `M`.
    ///
    /// # Panics
    ///
    /// When `selector` is not `type=T`, or `T` already has a handler.
    #[track_caller]
    pub fn route<M, R, F>(mut self, selector: &str, handler: F) -> Msg<S>
    where
        M: DeserializeOwned,
        R: HandlerResult,
        F: Fn(&mut S, &mut Ctx, M) -> R + Send + Sync + 'static,
    {
        let kind = selector
            .trim_start_matches('/')
            .strip_prefix("type=")
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| panic!("route selector {selector:?} must look like \"type=move\""))
            .to_owned();
        if self.routes.contains_key(&kind) {
            panic!("message type {kind:?} is routed twice");
        }
        let name = kind.clone();
        let route: RouteFn<S> = Arc::new(move |state, ctx, body| {
            let message = read_json::<M>(body).map_err(|e| Rejection::BadPayload {
                kind: name.clone(),
                error: e.to_string(),
            })?;
            handler(state, ctx, message)
                .into_result()
                .map_err(Rejection::Refused)
        });
        self.routes.insert(kind, route);
        self
    }

    /// Runs `handler` every `every` while the room lives.
    ///
    /// # Panics
    ///
    /// When a tick is already set, or `every` is zero.
    #[track_caller]
    pub fn tick(
        mut self,
        every: Duration,
        handler: impl Fn(&mut S, &mut RoomCtx) + Send + Sync + 'static,
    ) -> Msg<S> {
        assert!(self.tick.is_none(), "the tick is set twice");
        assert!(!every.is_zero(), "the tick interval must be more than zero");
        self.tick = Some((every, Arc::new(handler)));
        self
    }

    /// Runs `handler` with the player's id when a player joins. Like an input handler, it
    /// may return nothing or a `Result`: an error refuses the join. A refused join is
    /// answered as a refused input is: the player gets the error, and what the hook asked
    /// for (messages, items, the room's end) is dropped, though its changes to the state
    /// are not undone. The player stays a member of the room, since the lobby admitted
    /// it: its inputs still reach the handlers, and the leave hook runs when it leaves
    /// (or is kicked) through the lobby.
    ///
    /// # Panics
    ///
    /// When a join hook is already set.
    #[track_caller]
    pub fn on_join<R: HandlerResult>(
        mut self,
        handler: impl Fn(&mut S, &mut RoomCtx, &str) -> R + Send + Sync + 'static,
    ) -> Msg<S> {
        assert!(self.on_join.is_none(), "the join hook is set twice");
        self.on_join = Some(hook(handler));
        self
    }

    /// Runs `handler` with the player's id when a player leaves. It may return a
    /// `Result`, as the join hook does, but a leave cannot be refused: the player is gone
    /// either way, and an error only drops what the hook asked for (and is sent to the
    /// player, who may no longer be listening).
    ///
    /// # Panics
    ///
    /// When a leave hook is already set.
    #[track_caller]
    pub fn on_leave<R: HandlerResult>(
        mut self,
        handler: impl Fn(&mut S, &mut RoomCtx, &str) -> R + Send + Sync + 'static,
    ) -> Msg<S> {
        assert!(self.on_leave.is_none(), "the leave hook is set twice");
        self.on_leave = Some(hook(handler));
        self
    }

    /// Runs `handler` with the player's id when the last of a player's connections
    /// drops. The player keeps its seat and state for its kind's grace
    /// ([`crate::Policy::grace`]): back in time, it gets [`Msg::on_reconnect`];
    /// otherwise the framework runs the leave ([`Msg::on_leave`]) and frees the seat.
    /// So a hook sees `join`, then any number of `drop`/`reconnect` pairs, then perhaps
    /// a `drop`, then `leave`.
    ///
    /// # Panics
    ///
    /// When a drop hook is already set.
    #[track_caller]
    pub fn on_drop<R: HandlerResult>(
        mut self,
        handler: impl Fn(&mut S, &mut RoomCtx, &str) -> R + Send + Sync + 'static,
    ) -> Msg<S> {
        assert!(self.on_drop.is_none(), "the drop hook is set twice");
        self.on_drop = Some(hook(handler));
        self
    }

    /// Runs `handler` with the player's id when a dropped player connects again within
    /// its grace ([`Msg::on_drop`]).
    ///
    /// # Panics
    ///
    /// When a reconnect hook is already set.
    #[track_caller]
    pub fn on_reconnect<R: HandlerResult>(
        mut self,
        handler: impl Fn(&mut S, &mut RoomCtx, &str) -> R + Send + Sync + 'static,
    ) -> Msg<S> {
        assert!(
            self.on_reconnect.is_none(),
            "the reconnect hook is set twice"
        );
        self.on_reconnect = Some(hook(handler));
        self
    }

    /// What a newcomer needs to see the room as it is (the world, the score): a
    /// spectator gets it on its own destination once it has subscribed, stamped with
    /// the room's `seq`, then follows the topic from there.
    ///
    /// # Panics
    ///
    /// When a snapshot is already set.
    #[track_caller]
    pub fn snapshot<M: Serialize>(
        mut self,
        snapshot: impl Fn(&S) -> M + Send + Sync + 'static,
    ) -> Msg<S> {
        assert!(self.snapshot.is_none(), "the snapshot is set twice");
        self.snapshot = Some(Arc::new(move |state| Json::of(&snapshot(state))));
        self
    }

    /// The room's snapshot ([`Msg::snapshot`]), if the game gives one.
    pub(crate) fn snapshot_of(&self, state: &S) -> Option<Json> {
        self.snapshot.as_ref().map(|snapshot| snapshot(state))
    }

    /// A fresh state for `room`.
    pub(crate) fn new_state(&self, room: &RoomInfo) -> S {
        (self.new_state)(room)
    }

    /// Applies one input's body (JSON with a `type`) to `state`. A panic in the handler
    /// is caught and becomes a [`Rejection::Panicked`]; the effects of a rejected input
    /// are dropped, but its changes to `state` are not undone: validate before you
    /// mutate.
    pub(crate) fn apply(&self, state: &mut S, ctx: &mut Ctx, body: &[u8]) -> Result<(), Rejection> {
        self.apply_as(state, ctx, &message_type(body)?, body)
    }

    /// [`Msg::apply`] for a body already read as an object whose `type` is `kind`.
    pub(crate) fn apply_as(
        &self,
        state: &mut S,
        ctx: &mut Ctx,
        kind: &str,
        body: &[u8],
    ) -> Result<(), Rejection> {
        let route = self
            .routes
            .get(kind)
            .ok_or_else(|| Rejection::UnknownType(kind.to_owned()))?;
        let result = guarded(|| route(state, ctx, body));
        if result.is_err() {
            ctx.take_effects();
        }
        result
    }

    /// Runs the tick handler, if any.
    pub(crate) fn run_tick(&self, state: &mut S, ctx: &mut RoomCtx) -> Result<(), Rejection> {
        match &self.tick {
            Some((_, hook)) => guarded(|| {
                hook(state, ctx);
                Ok(())
            }),
            None => Ok(()),
        }
    }

    /// Runs the join hook for `player`, if any.
    pub(crate) fn run_join(
        &self,
        state: &mut S,
        ctx: &mut RoomCtx,
        player: &str,
    ) -> Result<(), Rejection> {
        run_hook(self.on_join.as_ref(), state, ctx, player)
    }

    /// Runs the leave hook for `player`, if any.
    pub(crate) fn run_leave(
        &self,
        state: &mut S,
        ctx: &mut RoomCtx,
        player: &str,
    ) -> Result<(), Rejection> {
        run_hook(self.on_leave.as_ref(), state, ctx, player)
    }

    /// Runs the drop hook for `player`, if any.
    pub(crate) fn run_drop(
        &self,
        state: &mut S,
        ctx: &mut RoomCtx,
        player: &str,
    ) -> Result<(), Rejection> {
        run_hook(self.on_drop.as_ref(), state, ctx, player)
    }

    /// Runs the reconnect hook for `player`, if any.
    pub(crate) fn run_reconnect(
        &self,
        state: &mut S,
        ctx: &mut RoomCtx,
        player: &str,
    ) -> Result<(), Rejection> {
        run_hook(self.on_reconnect.as_ref(), state, ctx, player)
    }
}

fn run_hook<S>(
    hook: Option<&HookFn<S>>,
    state: &mut S,
    ctx: &mut RoomCtx,
    player: &str,
) -> Result<(), Rejection> {
    match hook {
        Some(hook) => guarded(|| hook(state, ctx, player).map_err(Rejection::Refused)),
        None => Ok(()),
    }
}

/// Runs `f`, turning a panic into a rejection.
fn guarded(f: impl FnOnce() -> Result<(), Rejection>) -> Result<(), Rejection> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic_message(&*panic).unwrap_or_else(|| "panic".into());
        Err(Rejection::Panicked(why))
    })
}

/// What a caught panic said, when it said it with a string (as `panic!` does).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> Option<String> {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn a_generator_draws_the_same_from_the_same_seed_and_within_its_bounds() {
        let draws = |seed| {
            let mut rng = Rng::seeded(seed);
            (0..100).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let mut rng = Rng::seeded(1);
        for _ in 0..1000 {
            assert!(rng.below(6) < 6);
            assert!((-3..4).contains(&rng.range(-3, 4)));
            assert!([1, 2, 3].contains(rng.pick(&[1, 2, 3]).unwrap()));
        }
        let sixes: Vec<u64> = (0..600).map(|_| rng.below(6)).collect();
        assert!(
            (0..6).all(|face| sixes.contains(&face)),
            "every face comes up"
        );
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.range(5, 5), 5);
        assert_eq!(rng.range(5, 2), 5, "an empty range gives its start");
        assert_eq!(rng.pick::<u8>(&[]), None);
        assert!(!(0..100).any(|_| rng.chance(0.0)));
        assert!((0..100).all(|_| rng.chance(1.0)));
    }

    #[derive(Deserialize)]
    struct Add {
        by: i64,
    }

    fn counter() -> Msg<i64> {
        Msg::new(|| 0).route("type=add", |n: &mut i64, ctx: &mut Ctx, add: Add| {
            *n += add.by;
            ctx.broadcast(&serde_json::json!({ "type": "count", "n": *n }));
        })
    }

    #[test]
    fn routes_by_type_and_records_effects() {
        let msg = counter();
        let mut n = msg.new_state(&RoomInfo::new("r1", ""));
        let mut ctx = Ctx::new("r1", "p1", 1);
        msg.apply(&mut n, &mut ctx, br#"{"type":"add","by":3}"#)
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            ctx.effects(),
            [Effect::Broadcast(Json::of(
                &serde_json::json!({ "type": "count", "n": 3 })
            ))]
        );
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let msg = counter();
        let mut n = 0;
        let mut ctx = Ctx::new("r1", "p1", 1);
        let err = |body: &[u8], n: &mut i64, ctx: &mut Ctx| {
            msg.apply(n, ctx, body).unwrap_err().to_string()
        };
        assert!(err(b"{nope", &mut n, &mut ctx).starts_with("invalid JSON"));
        assert!(err(b"[1,2]", &mut n, &mut ctx).contains("string \"type\""));
        // serde would read a struct from an array: the type is read from objects only.
        assert!(err(br#"["add", 1]"#, &mut n, &mut ctx).contains("string \"type\""));
        assert!(err(br#"{"type":5}"#, &mut n, &mut ctx).contains("string \"type\""));
        assert!(err(br#"{"by":1}"#, &mut n, &mut ctx).contains("string \"type\""));
        assert!(err(br#"{"type":"add"} x"#, &mut n, &mut ctx).starts_with("invalid JSON"));
        assert_eq!(
            err(br#"{"type":"fly"}"#, &mut n, &mut ctx),
            "unknown message type \"fly\""
        );
        assert!(err(br#"{"type":"add","by":"x"}"#, &mut n, &mut ctx)
            .starts_with("invalid \"add\" message"));
        assert_eq!(n, 0);
        assert!(ctx.effects().is_empty());
        // Escapes in the type, whitespace before the object: still routed.
        msg.apply(&mut n, &mut ctx, b" {\"by\":2,\"type\":\"a\\u0064d\"}")
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn with_state_swaps_the_state_and_keeps_the_routes() {
        let msg = counter().with_state(|| 10);
        let mut n = msg.new_state(&RoomInfo::new("r1", ""));
        assert_eq!(n, 10);
        msg.apply(
            &mut n,
            &mut Ctx::new("r1", "p1", 1),
            br#"{"type":"add","by":1}"#,
        )
        .unwrap();
        assert_eq!(n, 11);
    }

    #[test]
    fn the_slash_spelling_routes_too() {
        let msg = Msg::new(|| 0).route("/type=add", |n: &mut i64, _: &mut Ctx, a: Add| *n += a.by);
        assert_eq!(msg.types().collect::<Vec<_>>(), ["add"]);
    }

    #[test]
    #[should_panic(expected = "message type \"add\" is routed twice")]
    fn routing_a_type_twice_panics() {
        let _ = counter().route("type=add", |_: &mut i64, _: &mut Ctx, _: Add| {});
    }

    #[test]
    #[should_panic(expected = "must look like")]
    fn a_bad_selector_panics() {
        let _ = Msg::new(|| 0).route("move", |_: &mut i64, _: &mut Ctx, _: Add| {});
    }

    #[test]
    fn a_panicking_handler_rejects_only_that_input() {
        let msg = counter().route("type=boom", |_: &mut i64, ctx: &mut Ctx, _: Value| -> () {
            ctx.broadcast(&"never sent");
            panic!("kaboom")
        });
        let mut n = 0;
        let mut ctx = Ctx::new("r1", "p1", 1);
        let err = msg
            .apply(&mut n, &mut ctx, br#"{"type":"boom"}"#)
            .unwrap_err();
        assert_eq!(err, Rejection::Panicked("kaboom".into()));
        assert!(
            ctx.effects().is_empty(),
            "a rejected input's effects are dropped"
        );
        msg.apply(&mut n, &mut ctx, br#"{"type":"add","by":1}"#)
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    #[should_panic(expected = "the join hook is set twice")]
    fn setting_the_join_hook_twice_panics() {
        let _ = Msg::new(|| 0)
            .on_join(|_: &mut i64, _, _| {})
            .on_join(|_, _, _| {});
    }

    #[test]
    #[should_panic(expected = "the leave hook is set twice")]
    fn setting_the_leave_hook_twice_panics() {
        let _ = Msg::new(|| 0)
            .on_leave(|_: &mut i64, _, _| {})
            .on_leave(|_, _, _| {});
    }

    #[test]
    fn a_hook_may_refuse_and_a_plain_one_still_compiles() {
        let msg = Msg::new(|| 0).on_join(|n: &mut i64, _: &mut RoomCtx, player: &str| {
            *n += 1;
            if player == "mallory" {
                return Err(format!("{player} is banned"));
            }
            Ok(())
        });
        let mut n = 0;
        let mut ctx = RoomCtx::new("r");
        assert_eq!(msg.run_join(&mut n, &mut ctx, "ann"), Ok(()));
        let refused = msg.run_join(&mut n, &mut ctx, "mallory");
        assert_eq!(refused, Err(Rejection::Refused("mallory is banned".into())));
        let plain = Msg::new(|| 0).on_leave(|n: &mut i64, _: &mut RoomCtx, _: &str| *n -= 1);
        assert_eq!(plain.run_leave(&mut n, &mut ctx, "ann"), Ok(()));
        assert_eq!(n, 1);
    }

    #[test]
    fn a_handler_error_is_a_refusal() {
        let msg = Msg::new(|| 0).route("type=take", |_: &mut i64, _: &mut Ctx, _: Value| {
            Err::<(), _>("nothing to take here")
        });
        let err = msg.apply(&mut 0, &mut Ctx::new("r", "p", 1), br#"{"type":"take"}"#);
        assert_eq!(err, Err(Rejection::Refused("nothing to take here".into())));
    }
}
