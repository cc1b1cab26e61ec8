//! A handler test harness, like `chalice.test.Client`: runs a [`Msg`] router in process
//! with simulated players, so a game's rules are tested without sockets or a broker. It
//! needs no `server` feature: a crate of rules alone can test them. (For tests that
//! want real sockets, `broker::LocalBroker` serves a broker on loopback ports.)
//!
//! ```
//! use game_server_less::msg::{Ctx, Msg};
//! use game_server_less::testing::TestRoom;
//! use serde_json::{json, Value};
//!
//! let msg = Msg::new(|| 0u32).route("type=ping", |n: &mut u32, ctx: &mut Ctx, _: Value| {
//!     *n += 1;
//!     ctx.broadcast(&json!({ "type": "pong", "n": *n }));
//! });
//! let mut room = TestRoom::new(msg);
//! room.join("alice");
//! room.join("bob");
//! room.send("alice", json!({ "type": "ping" })).unwrap();
//! assert_eq!(room.received("bob")[0]["type"], "pong");
//! assert_eq!(*room.state(), 1);
//! ```
//!
//! [`assert_routes`] checks that a router has a route for every variant of the game's
//! input enum, and for nothing else.

use crate::msg::{Msg, RoomInfo};
use crate::proto::{Body, Envelope};
use crate::room::{Output, Room, Target};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// A room with simulated players. Each player's received messages are kept until read.
pub struct TestRoom<S> {
    room: Room<S>,
    inboxes: HashMap<String, Vec<Value>>,
    next_seq: HashMap<String, u64>,
    /// Ticks run so far: each tick's number, which seeds its random numbers.
    ticks: u64,
}

impl<S: 'static> TestRoom<S> {
    /// A room named `test-room` running `msg`.
    pub fn new(msg: Msg<S>) -> TestRoom<S> {
        TestRoom::named(msg, "test-room")
    }

    /// A room named `name` running `msg`: the name its state factory sees (see
    /// [`Msg::for_room`]). Its id is `test-room`.
    pub fn named(msg: Msg<S>, name: &str) -> TestRoom<S> {
        TestRoom {
            room: Room::new(RoomInfo::new("test-room", name), msg),
            inboxes: HashMap::new(),
            next_seq: HashMap::new(),
            ticks: 0,
        }
    }

    /// A player joins.
    pub fn join(&mut self, player: &str) {
        self.inboxes.entry(player.to_owned()).or_default();
        let outputs = self.room.join(player);
        self.deliver(outputs);
    }

    /// A player joins bringing `arrival`: items, a room name, what a transfer carried
    /// (see [`crate::msg::Arrival`]).
    pub fn join_with(&mut self, player: &str, arrival: crate::msg::Arrival) {
        self.inboxes.entry(player.to_owned()).or_default();
        let outputs = self.room.join_with(player, arrival);
        self.deliver(outputs);
    }

    /// A player leaves.
    pub fn leave(&mut self, player: &str) {
        let outputs = self.room.leave(player);
        self.inboxes.remove(player);
        self.deliver(outputs);
    }

    /// A player connects (one connection, `connection`): the first time, nothing
    /// happens; after a drop ([`TestRoom::disconnect`]), the reconnect hook runs.
    pub fn connect(&mut self, player: &str, connection: &str) {
        let outputs = self.room.connected(player, connection);
        self.deliver(outputs);
    }

    /// A player's connection `connection` closes; its last gone, the drop hook runs
    /// (the player stays in the room: a server runs the leave once the grace is over,
    /// here call [`TestRoom::leave`]).
    pub fn disconnect(&mut self, player: &str, connection: &str) {
        let outputs = self.room.disconnected(player, connection, u64::MAX);
        self.deliver(outputs);
    }

    /// The changes to the room's listing (lock, metadata) its handlers asked for since
    /// the last call.
    pub fn listing(&mut self) -> Vec<crate::room::Listing> {
        self.room.take_listing()
    }

    /// A player sends `message` (the game's input type, or any JSON), numbered with the
    /// player's next sequence number. Returns the error the room answered with, if it
    /// rejected the input.
    pub fn send(&mut self, player: &str, message: impl Serialize) -> Result<(), String> {
        let seq = {
            let n = self.next_seq.entry(player.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        self.send_numbered(player, seq, message)
    }

    /// A player sends `message` with an explicit sequence number (to test duplicates).
    pub fn send_numbered(
        &mut self,
        player: &str,
        seq: u64,
        message: impl Serialize,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(&message).expect("an input serializes as JSON");
        self.send_raw(player, seq, &body)
    }

    /// A player sends raw bytes (to test bad JSON).
    pub fn send_raw(&mut self, player: &str, seq: u64, body: &[u8]) -> Result<(), String> {
        let applied = self.room.apply(player, Some(seq), None, body);
        let error = applied.outputs.iter().find_map(|o| {
            let body = o.body.value();
            match (&o.to, body["type"].as_str()) {
                (Target::Player(p), Some("error")) if p == player => {
                    body["error"].as_str().map(str::to_owned)
                }
                _ => None,
            }
        });
        self.deliver(applied.outputs);
        error.map_or(Ok(()), Err)
    }

    /// Runs the tick handler `n` times.
    pub fn tick(&mut self, n: usize) {
        for _ in 0..n {
            self.ticks += 1;
            let outputs = self.room.tick_once("test", self.ticks);
            self.deliver(outputs);
        }
    }

    /// Sets the room's time to `ms` milliseconds since the epoch: what `ctx.now()`
    /// says from the next message on. It starts at 0, and never goes back.
    pub fn set_clock(&mut self, ms: u64) {
        self.room.advance_clock(ms);
    }

    /// Takes what `player` has received since the last call.
    pub fn received(&mut self, player: &str) -> Vec<Value> {
        self.inboxes
            .get_mut(player)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Takes what `player` has received since the last call, as the game's output type
    /// with the room's stamps (the framework's own messages as [`Body::Room`]).
    ///
    /// # Panics
    ///
    /// When a message does not parse as `T`: the server sent what its clients cannot read.
    pub fn received_as<T: DeserializeOwned>(&mut self, player: &str) -> Vec<Envelope<T>> {
        self.received(player)
            .into_iter()
            .map(|m| {
                serde_json::from_value(m.clone()).unwrap_or_else(|e| {
                    panic!("{player} got a message clients cannot read: {e}: {m}")
                })
            })
            .collect()
    }

    /// Takes what `player` has received since the last call, as the game's own messages
    /// only (the framework's and the stamps left out).
    pub fn received_game<T: DeserializeOwned>(&mut self, player: &str) -> Vec<T> {
        self.received_as(player)
            .into_iter()
            .filter_map(|m| match m.body {
                Body::Game(out) => Some(out),
                Body::Room(_) => None,
            })
            .collect()
    }

    /// The room's game state.
    pub fn state(&self) -> &S {
        self.room.state()
    }

    /// The game state, to arrange a test.
    pub fn state_mut(&mut self) -> &mut S {
        self.room.state_mut()
    }

    /// Inventory grants handlers made since the last call.
    pub fn grants(&mut self) -> Vec<crate::proto::Grant> {
        self.room.take_grants()
    }

    /// Transfers handlers asked for since the last call ([`crate::RoomCtx::transfer`]):
    /// who goes to which room's name, carrying what. A test room carries none out.
    ///
    /// ```
    /// use game_server_less::{testing::TestRoom, Ctx, Msg};
    /// use serde_json::{json, Value};
    ///
    /// let msg = Msg::new(|| ()).route("type=go", |_: &mut (), ctx: &mut Ctx, _: Value| {
    ///     let me = ctx.sender().to_owned();
    ///     ctx.transfer(&me, "caves", &json!({ "hp": 3 }));
    /// });
    /// let mut room = TestRoom::new(msg);
    /// room.join("ann");
    /// room.send("ann", json!({ "type": "go" })).unwrap();
    /// let moved = room.transfers();
    /// assert_eq!((moved[0].player.as_str(), moved[0].room.as_str()), ("ann", "caves"));
    /// assert_eq!(moved[0].carried, json!({ "hp": 3 }));
    /// ```
    pub fn transfers(&mut self) -> Vec<crate::room::Transfer> {
        self.room.take_transfers()
    }

    /// The room underneath.
    pub fn room(&self) -> &Room<S> {
        &self.room
    }

    fn deliver(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output.to {
                Target::Room => {
                    let body = output.body.value();
                    for inbox in self.inboxes.values_mut() {
                        inbox.push(body.clone());
                    }
                }
                Target::Player(p) => {
                    if let Some(inbox) = self.inboxes.get_mut(&p) {
                        inbox.push(output.body.value());
                    }
                }
            }
        }
    }
}

/// The `type`s of `T`, an enum tagged by `type` (`#[serde(tag = "type")]`), as serde reads
/// them: each variant's name after `rename` and `rename_all`, and its aliases.
///
/// ```
/// #[derive(serde::Deserialize)]
/// #[serde(tag = "type", rename_all = "snake_case")]
/// enum In { Move { dx: i32 }, LookAround }
///
/// assert_eq!(game_server_less::testing::message_types::<In>(), ["move", "look_around"]);
/// ```
///
/// # Panics
///
/// When `T` is not an enum tagged by `type`, or has a `#[serde(other)]` variant: that one
/// takes every type, so serde lists none.
#[track_caller]
pub fn message_types<T: DeserializeOwned>() -> Vec<&'static str> {
    // serde names every variant only in the error for a type it does not know, so this
    // asks for one and keeps the list the error is made from.
    let unknown = "\u{0}no such type";
    let input =
        serde::de::value::MapDeserializer::<_, Probe>::new(std::iter::once(("type", unknown)));
    let name = std::any::type_name::<T>();
    match T::deserialize(input) {
        Err(Probe(Ok(types))) => types.to_vec(),
        Err(Probe(Err(why))) => {
            panic!("{name} is not an enum tagged by \"type\" (#[serde(tag = \"type\")]): {why}")
        }
        Ok(_) => panic!(
            "{name} took a message of no type it has: with a #[serde(other)] variant, its types cannot be listed"
        ),
    }
}

/// Checks that `msg` routes exactly the `type`s of `T`, the game's input enum (see
/// [`message_types`]): every variant has a handler, and every handler a variant. Routes
/// and variants are two lists, and this is the test that keeps them in step.
///
/// ```
/// use game_server_less::{Ctx, Msg};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type", rename_all = "snake_case")]
/// enum In { Add { by: i64 } }
///
/// let msg = Msg::new(|| 0).route("type=add", |n: &mut i64, _: &mut Ctx, add: serde_json::Value| {
///     *n += add["by"].as_i64().unwrap_or(0);
/// });
/// game_server_less::testing::assert_routes::<In>(&msg);
/// ```
///
/// # Panics
///
/// When a variant has no route or a route no variant, naming them; and as
/// [`message_types`] does.
#[track_caller]
pub fn assert_routes<T: DeserializeOwned>(msg: &Msg<impl Sized>) {
    let types = message_types::<T>();
    let routed: Vec<&str> = msg.types().collect();
    let unrouted: Vec<&str> = types
        .iter()
        .copied()
        .filter(|t| !routed.contains(t))
        .collect();
    let unknown: Vec<&str> = routed.into_iter().filter(|t| !types.contains(t)).collect();
    let name = std::any::type_name::<T>();
    assert!(
        unrouted.is_empty() && unknown.is_empty(),
        "the routes and the variants of {name} differ: no route for {unrouted:?}; routed, but not a variant: {unknown:?}"
    );
}

/// The error [`message_types`] deserializes with: the variants serde lists when it meets
/// a type it does not know, or why it failed otherwise.
#[derive(Debug)]
struct Probe(std::result::Result<&'static [&'static str], String>);

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(types) => write!(f, "one of {types:?}"),
            Err(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Probe {}

impl serde::de::Error for Probe {
    fn custom<T: std::fmt::Display>(why: T) -> Probe {
        Probe(Err(why.to_string()))
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Probe {
        Probe(Ok(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Ctx;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    #[allow(dead_code)]
    enum In {
        Move {
            dx: i32,
        },
        LookAround,
        #[serde(rename = "say", alias = "chat")]
        Talk {
            text: String,
        },
    }

    fn routed(types: &[&str]) -> Msg<()> {
        types.iter().fold(Msg::new(|| ()), |msg, t| {
            msg.route(&format!("type={t}"), |_: &mut (), _: &mut Ctx, _: Value| {})
        })
    }

    #[test]
    fn message_types_are_the_variants_as_serde_names_them() {
        assert_eq!(
            message_types::<In>(),
            ["move", "look_around", "chat", "say"]
        );
        assert_routes::<In>(&routed(&["move", "look_around", "say", "chat"]));
    }

    #[test]
    #[should_panic(
        expected = "no route for [\"look_around\"]; routed, but not a variant: [\"fly\"]"
    )]
    fn a_variant_without_a_route_fails_and_so_does_a_stray_route() {
        assert_routes::<In>(&routed(&["move", "say", "chat", "fly"]));
    }

    #[test]
    #[should_panic(expected = "is not an enum tagged by \"type\"")]
    fn an_enum_tagged_otherwise_is_refused() {
        #[derive(Deserialize)]
        #[serde(tag = "kind")]
        #[allow(dead_code)]
        enum Kinded {
            A,
        }
        message_types::<Kinded>();
    }

    #[test]
    #[should_panic(expected = "cannot be listed")]
    fn an_enum_that_takes_every_type_is_refused() {
        #[derive(Deserialize)]
        #[serde(tag = "type")]
        #[allow(dead_code)]
        enum Open {
            A,
            #[serde(other)]
            Other,
        }
        message_types::<Open>();
    }
}
