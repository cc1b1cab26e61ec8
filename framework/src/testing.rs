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
        let applied = self.room.apply(player, Some(seq), body);
        let error = applied
            .outputs
            .iter()
            .find_map(|o| match (&o.to, o.body["type"].as_str()) {
                (Target::Player(p), Some("error")) if p == player => {
                    o.body["error"].as_str().map(str::to_owned)
                }
                _ => None,
            });
        self.deliver(applied.outputs);
        error.map_or(Ok(()), Err)
    }

    /// Runs the tick handler `n` times.
    pub fn tick(&mut self, n: usize) {
        for _ in 0..n {
            let outputs = self.room.tick();
            self.deliver(outputs);
        }
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

    /// The room underneath.
    pub fn room(&self) -> &Room<S> {
        &self.room
    }

    fn deliver(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output.to {
                Target::Room => {
                    for inbox in self.inboxes.values_mut() {
                        inbox.push(output.body.clone());
                    }
                }
                Target::Player(p) => {
                    if let Some(inbox) = self.inboxes.get_mut(&p) {
                        inbox.push(output.body);
                    }
                }
            }
        }
    }
}
