//! Watching a recorded match (`--replay MATCH`): the lobby's record of it
//! (`GET /matches/{id}`) holds every message the room sent, with the time it was sent;
//! played back at 1× to 16× through the same [`App`] and screen as live play, it shows
//! the match as one of its players saw it (`--as NAME`): the room's broadcasts and that
//! player's own messages.
//!
//! The recorded outputs are played, not the handlers run again: they are exactly what
//! the players saw, whatever build runs the server today (running the log again under
//! the current build is the deploy gate's job, `game-server replay --check`), and the
//! client needs no game rules to show them. Going back re-applies the messages from the
//! start up to the new point, which takes milliseconds.

use crate::app::{App, NetEvent};
use game_protocol::Out;
use game_server_less_client::proto::{envelopes, Envelope};
use serde_json::Value;

/// The speeds a replay plays at.
pub(crate) const SPEEDS: [u32; 5] = [1, 2, 4, 8, 16];

/// A match's messages to one player, in order, with their recorded times.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    /// The match.
    pub(crate) room: String,
    /// Whose view.
    pub(crate) player: String,
    /// `(ms since the first entry, what the player got)`.
    events: Vec<(u64, NetEvent)>,
    /// How long the record lasts, in ms.
    pub(crate) length: u64,
}

impl Timeline {
    /// The timeline of `record` (`GET /matches/{id}`'s answer) as `player` saw it; `None`
    /// for the first player that joined.
    pub(crate) fn of(record: &Value, player: Option<&str>) -> Result<Timeline, String> {
        let room = record["match"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let entries: Vec<&Value> = record["segments"]
            .as_array()
            .ok_or("the lobby's answer has no segments")?
            .iter()
            .flat_map(|s| s["entries"].as_array().into_iter().flatten())
            .collect();
        let players: Vec<String> = record["match"]["players"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
        let player = match player {
            Some(p) if players.iter().any(|q| q == p) => p.to_owned(),
            Some(p) => {
                return Err(format!(
                    "{p} did not play in match {room}; its players: {}",
                    players.join(", ")
                ))
            }
            // Else the first in the room when the record starts (a record that keeps
            // only a room's latest stretch may hold no join).
            None => first_joined(&entries)
                .or_else(|| {
                    record["segments"][0]["start"]["players"][0]
                        .as_str()
                        .map(str::to_owned)
                })
                .or_else(|| players.first().cloned())
                .ok_or_else(|| format!("match {room} had no players"))?,
        };
        let first_at = entries.first().and_then(|e| e["at"].as_u64()).unwrap_or(0);
        let mut events = Vec::new();
        for entry in &entries {
            let at = entry["at"]
                .as_u64()
                .unwrap_or(first_at)
                .saturating_sub(first_at);
            for output in entry["o"].as_array().into_iter().flatten() {
                let to = output["to"].as_str();
                if to.is_some_and(|to| to != player) {
                    continue;
                }
                let body = serde_json::to_vec(&output["m"]).unwrap_or_default();
                for envelope in envelopes::<Envelope<Out>>(&body).unwrap_or_default() {
                    let event = match to {
                        None => NetEvent::Room(envelope),
                        Some(_) => NetEvent::Private(envelope),
                    };
                    events.push((at, event));
                }
            }
        }
        let length = entries
            .last()
            .and_then(|e| e["at"].as_u64())
            .map_or(0, |last| last.saturating_sub(first_at));
        Ok(Timeline {
            room,
            player,
            events,
            length,
        })
    }
}

/// The first player the lobby joined into the room, from its `$join` entries.
fn first_joined(entries: &[&Value]) -> Option<String> {
    entries.iter().find_map(|e| {
        if e["u"] != "$lobby" {
            return None;
        }
        let control: Value = serde_json::from_str(e["b"].as_str()?).ok()?;
        (control["type"] == "$join").then(|| control["player"].as_str().map(str::to_owned))?
    })
}

/// A replay being watched: where it stands, how fast it goes.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    /// What is played.
    pub(crate) timeline: Timeline,
    /// The recorded time shown, in ms from the start.
    pub(crate) at: u64,
    /// The next event to apply.
    next: usize,
    /// Index into [`SPEEDS`].
    speed: usize,
    /// Paused.
    pub(crate) paused: bool,
}

impl Replay {
    /// A replay of `timeline` from its start, at `speed` (rounded to one of [`SPEEDS`]).
    pub(crate) fn new(timeline: Timeline, speed: u32) -> Replay {
        let speed = SPEEDS.iter().rposition(|s| *s <= speed.max(1)).unwrap_or(0);
        Replay {
            timeline,
            at: 0,
            next: 0,
            speed,
            paused: false,
        }
    }

    /// The speed, as a factor.
    pub(crate) fn speed(&self) -> u32 {
        SPEEDS[self.speed]
    }

    /// Faster (`up`) or slower, within [`SPEEDS`].
    pub(crate) fn change_speed(&mut self, up: bool) {
        self.speed = if up {
            (self.speed + 1).min(SPEEDS.len() - 1)
        } else {
            self.speed.saturating_sub(1)
        };
    }

    /// Whether it has played to the end.
    pub(crate) fn finished(&self) -> bool {
        self.next >= self.timeline.events.len() && self.at >= self.timeline.length
    }

    /// Moves on by `elapsed` ms of wall time (times the speed, unless paused), applying
    /// to `app` what the player got meanwhile.
    pub(crate) fn advance(&mut self, app: &mut App, elapsed: u64) {
        if self.paused {
            return;
        }
        let to = (self.at + elapsed * u64::from(self.speed())).min(self.timeline.length);
        self.play_to(app, to);
    }

    /// Jumps to `to` ms from the start: forward, it applies what lies between; back, it
    /// starts `app` over (`fresh`) and applies everything up to it.
    pub(crate) fn seek(&mut self, app: &mut App, to: u64, fresh: impl FnOnce() -> App) {
        let to = to.min(self.timeline.length);
        if to < self.at {
            *app = fresh();
            self.next = 0;
        }
        self.play_to(app, to);
    }

    fn play_to(&mut self, app: &mut App, to: u64) {
        while let Some((at, event)) = self.timeline.events.get(self.next) {
            if *at > to {
                break;
            }
            // A replay answers nothing: what the app would ask the room for is dropped.
            let _ = app.on_net(event.clone());
            self.next += 1;
        }
        self.at = to;
    }

    /// The time bar: `▶ 4×  0:12 / 1:05  [#####-----------]` in `width` characters.
    pub(crate) fn bar(&self, width: usize) -> String {
        let clock = |ms: u64| format!("{}:{:02}", ms / 60_000, ms / 1000 % 60);
        let state = if self.paused {
            "❚❚"
        } else if self.finished() {
            "■"
        } else {
            "▶"
        };
        let head = format!(
            "{state} {}×  {} / {}  ",
            self.speed(),
            clock(self.at),
            clock(self.timeline.length)
        );
        let room = width.saturating_sub(head.chars().count() + 2).max(10);
        let done = if self.timeline.length == 0 {
            room
        } else {
            (self.at as usize * room / self.timeline.length as usize).min(room)
        };
        format!("{head}[{}{}]", "#".repeat(done), "-".repeat(room - done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A match of ann and bob: ann's welcome (to her alone), bob's move, bob's chat
    /// at 4 s, ann's own reply to herself at 6 s, a chat at 9 s.
    fn record() -> Value {
        let join = |p: &str| json!({ "type": "$join", "player": p }).to_string();
        json!({
            "match": { "id": "m1", "players": ["ann", "bob"] },
            "segments": [
                { "version": 1, "start": { "seq": 0, "state": "{}", "applied": {}, "players": [] },
                  "entries": [
                    { "u": "$lobby", "at": 1_000, "b": join("ann"), "o": [
                        { "to": "ann", "m": { "type": "welcome", "seq": 0, "zone": "meadow",
                          "map": ["#####", "#...#", "#####"],
                          "players": { "ann": { "x": 1, "y": 1, "hp": 10, "level": 1 } },
                          "npcs": [], "items": [] } }
                    ] },
                    { "u": "$lobby", "at": 2_000, "b": join("bob"), "o": [
                        { "m": { "type": "joined", "player": "bob", "x": 3, "y": 1, "hp": 10, "level": 1, "seq": 1 } },
                        { "to": "bob", "m": { "type": "welcome", "seq": 1, "zone": "meadow",
                          "map": [], "players": {}, "npcs": [], "items": [] } }
                    ] },
                  ] },
                { "version": 2, "entries": [
                    { "u": "bob", "at": 5_000, "b": "{\"type\":\"chat\"}", "o": [
                        { "m": { "type": "chat", "player": "bob", "text": "hi ann", "seq": 2 } }
                    ] },
                    { "u": "bob", "at": 10_000, "b": "{\"type\":\"chat\"}", "o": [
                        { "m": { "type": "chat", "player": "bob", "text": "bye", "seq": 3 } }
                    ] }
                ] }
            ]
        })
    }

    fn fresh() -> App {
        App::replaying("http://x", "m1", "ann")
    }

    #[test]
    fn a_timeline_holds_what_one_player_saw_from_the_first_entry_on() {
        let ann = Timeline::of(&record(), None).unwrap();
        assert_eq!((ann.player.as_str(), ann.length), ("ann", 9_000));
        // Her welcome, bob's join, two chats; bob's own welcome is not hers.
        assert_eq!(ann.events.len(), 4);
        let times: Vec<u64> = ann.events.iter().map(|(at, _)| *at).collect();
        assert_eq!(times, [0, 1_000, 4_000, 9_000]);
        let bob = Timeline::of(&record(), Some("bob")).unwrap();
        assert_eq!(bob.events.len(), 4, "bob's welcome, not ann's");
        let e = Timeline::of(&record(), Some("cyd")).unwrap_err();
        assert!(
            e.contains("cyd did not play") && e.contains("ann, bob"),
            "{e}"
        );
        assert!(Timeline::of(&json!({}), None).is_err());
    }

    #[test]
    fn a_replay_plays_at_its_speed_pauses_and_seeks_both_ways() {
        let mut app = fresh();
        let mut replay = Replay::new(Timeline::of(&record(), None).unwrap(), 3);
        assert_eq!(replay.speed(), 2, "rounded down to a speed it has");
        replay.advance(&mut app, 600); // 1.2 s in at 2×: the welcome and bob's join
        assert_eq!(app.game.players.len(), 2);
        assert!(app.game.chat.is_empty());
        replay.paused = true;
        replay.advance(&mut app, 60_000);
        assert_eq!(replay.at, 1_200, "paused");
        replay.paused = false;
        replay.change_speed(true);
        replay.change_speed(true);
        replay.change_speed(true);
        replay.change_speed(true);
        assert_eq!(replay.speed(), 16, "16× at most");
        replay.advance(&mut app, 250); // +4 s: bob's first chat
        assert_eq!(app.game.chat.back().unwrap(), "bob: hi ann");
        replay.seek(&mut app, 60_000, fresh);
        assert_eq!(app.game.chat.back().unwrap(), "bob: bye");
        assert!(replay.finished());
        assert!(
            replay.bar(60).starts_with("■ 16×  0:09 / 0:09  [####"),
            "{}",
            replay.bar(60)
        );
        // Back: the app starts over and gets what came before the new point only.
        replay.seek(&mut app, 4_500, fresh);
        assert_eq!(app.game.chat.len(), 1);
        assert_eq!(app.game.chat.back().unwrap(), "bob: hi ann");
        replay.seek(&mut app, 0, fresh);
        assert!(app.game.chat.is_empty());
        assert_eq!(app.game.players.len(), 1, "only ann's welcome, at 0");
        let bar = replay.bar(60);
        assert_eq!(bar.chars().count(), 60, "{bar}");
        assert!(bar.contains("0:00 / 0:09  [-"), "{bar}");
    }
}
