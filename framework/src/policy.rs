//! A room kind's queue policy: how many players, how fast they may send, how much its
//! inbox holds, when it ends idle, how long a dropped player keeps its seat, whether
//! receipts wait for the disk, how many may watch, how long its outputs wait to go out
//! together. A game declares it next to the
//! handlers ([`crate::Msg::policy`]); what it leaves unset the server's flags decide, and
//! the server's `--policy KIND.KEY=VALUE` overrides both (`docs/limits.md`).
//!
//! ```
//! use game_server_less::policy::Policy;
//! use std::time::Duration;
//!
//! let duel = Policy::new()
//!     .players(2, 2)
//!     .inputs(20, 40)
//!     .grace(Duration::from_secs(20));
//! assert_eq!(duel.max_players, Some(2));
//! ```

use std::time::Duration;

/// What a kind declares; `None` leaves a setting to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Players a room needs to start (a matchmaking queue waits for them).
    pub min_players: Option<usize>,
    /// Players a room holds at most (seats reserved by quick play included).
    pub max_players: Option<usize>,
    /// Inputs a second one player may send, on average.
    pub inputs_per_second: Option<u32>,
    /// Inputs one player may send at once after a quiet spell.
    pub input_burst: Option<u32>,
    /// Inputs the room's inbox holds at most before SENDs are refused.
    pub inbox_bound: Option<usize>,
    /// A room with no input for this long ends.
    pub idle_timeout: Option<Duration>,
    /// How long a player whose connections all dropped keeps its seat and state.
    pub grace: Option<Duration>,
    /// Whether an input's receipt waits until it is on the disk.
    pub fsync: Option<bool>,
    /// Spectators a room admits at most.
    pub spectators: Option<usize>,
    /// How long the outputs a room makes wait to go out together ([`Policy::batch`]).
    pub batch: Option<Duration>,
    /// What of a room's log is kept as its match record ([`Policy::record`]).
    pub record: Option<Recording>,
}

/// What of a room's log the store keeps as its match record: the messages it was given,
/// in order, with their outputs, so the match can be watched again and the deploy gate
/// (`game-server replay --check`) can run it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Nothing.
    Off,
    /// The whole match, kept for the server's `--match-retention-hours` after it ends.
    Match,
    /// Only its last stretch of this long, for a room that may never end (an MMO's
    /// zone): older entries are forgotten as it goes.
    Last(Duration),
}

impl Recording {
    /// `off`, `match`, or a number of seconds (the last stretch kept).
    pub fn parse(value: &str) -> Result<Recording, String> {
        match value {
            "off" | "false" | "0" => Ok(Recording::Off),
            "match" | "on" | "true" => Ok(Recording::Match),
            secs => secs
                .parse()
                .map(|s| Recording::Last(Duration::from_secs(s)))
                .map_err(|_| {
                    format!(
                        "record wants off, match, or the seconds of play to keep, not {value:?}"
                    )
                }),
        }
    }
}

impl Policy {
    /// A policy that leaves everything to the server.
    pub fn new() -> Policy {
        Policy::default()
    }

    /// Rooms of `min` to `max` players.
    ///
    /// # Panics
    ///
    /// When `min` is over `max` or `max` is zero.
    #[track_caller]
    pub fn players(mut self, min: usize, max: usize) -> Policy {
        assert!(
            max > 0 && min <= max,
            "players({min}, {max}): want 1 ≤ max and min ≤ max"
        );
        self.min_players = Some(min);
        self.max_players = Some(max);
        self
    }

    /// Each player may send `per_second` inputs a second on average, `burst` at once.
    pub fn inputs(mut self, per_second: u32, burst: u32) -> Policy {
        self.inputs_per_second = Some(per_second);
        self.input_burst = Some(burst.max(1));
        self
    }

    /// The inbox holds at most `inputs`.
    pub fn inbox(mut self, inputs: usize) -> Policy {
        self.inbox_bound = Some(inputs.max(1));
        self
    }

    /// A room ends after `idle` without input.
    pub fn idle(mut self, idle: Duration) -> Policy {
        self.idle_timeout = Some(idle);
        self
    }

    /// A dropped player keeps its seat for `grace` ([`crate::Msg::on_drop`]).
    pub fn grace(mut self, grace: Duration) -> Policy {
        self.grace = Some(grace);
        self
    }

    /// Whether receipts wait for the disk.
    pub fn fsync(mut self, fsync: bool) -> Policy {
        self.fsync = Some(fsync);
        self
    }

    /// At most `spectators` watch a room.
    pub fn spectators(mut self, spectators: usize) -> Policy {
        self.spectators = Some(spectators);
        self
    }

    /// The outputs a room makes within `window` of the first go out together, in the
    /// order they were made: each run of outputs to one destination as one message, a
    /// JSON array of the envelopes when there are several ([`crate::proto::envelopes`]
    /// reads either); a batch goes early once it holds 256 KiB. A broker's cost is per
    /// message delivered (RabbitMQ's most of all), so a busy room costs it less, and each
    /// output waits up to `window` longer. Zero, the default, sends each input's
    /// outputs at once, one message each.
    pub fn batch(mut self, window: Duration) -> Policy {
        self.batch = Some(window);
        self
    }

    /// What of a room's log is kept as its match record: [`Recording::Match`] (the
    /// default) keeps whole matches, [`Recording::Last`] a room's last stretch (a room
    /// that never ends), [`Recording::Off`] nothing.
    pub fn record(mut self, recording: Recording) -> Policy {
        self.record = Some(recording);
        self
    }

    /// This policy, with what `over` sets put over it.
    pub fn overridden_by(&self, over: &Policy) -> Policy {
        Policy {
            min_players: over.min_players.or(self.min_players),
            max_players: over.max_players.or(self.max_players),
            inputs_per_second: over.inputs_per_second.or(self.inputs_per_second),
            input_burst: over.input_burst.or(self.input_burst),
            inbox_bound: over.inbox_bound.or(self.inbox_bound),
            idle_timeout: over.idle_timeout.or(self.idle_timeout),
            grace: over.grace.or(self.grace),
            fsync: over.fsync.or(self.fsync),
            spectators: over.spectators.or(self.spectators),
            batch: over.batch.or(self.batch),
            record: over.record.or(self.record),
        }
    }

    /// Every setting decided: this policy's, else `defaults`'.
    pub fn resolve(&self, defaults: &RoomPolicy) -> RoomPolicy {
        let max_players = self.max_players.unwrap_or(defaults.max_players);
        RoomPolicy {
            min_players: self
                .min_players
                .unwrap_or(defaults.min_players)
                .min(max_players),
            max_players,
            inputs_per_second: self.inputs_per_second.unwrap_or(defaults.inputs_per_second),
            input_burst: self.input_burst.unwrap_or(defaults.input_burst),
            inbox_bound: self.inbox_bound.or(defaults.inbox_bound),
            idle_timeout: self.idle_timeout.unwrap_or(defaults.idle_timeout),
            grace: self.grace.unwrap_or(defaults.grace),
            fsync: self.fsync.unwrap_or(defaults.fsync),
            spectators: self.spectators.unwrap_or(defaults.spectators),
            batch: self.batch.unwrap_or(defaults.batch),
            record: self.record.unwrap_or(defaults.record),
        }
    }

    /// Sets `key` (as `--policy KIND.KEY=VALUE` spells it) to `value`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
            value
                .parse()
                .map_err(|_| format!("{key} wants a whole number, not {value:?}"))
        }
        match key {
            "min_players" => self.min_players = Some(num(key, value)?),
            "max_players" => self.max_players = Some(num::<usize>(key, value)?.max(1)),
            "inputs_per_second" => self.inputs_per_second = Some(num(key, value)?),
            "input_burst" => self.input_burst = Some(num::<u32>(key, value)?.max(1)),
            "inbox_bound" => self.inbox_bound = Some(num::<usize>(key, value)?.max(1)),
            "idle_secs" => self.idle_timeout = Some(Duration::from_secs(num(key, value)?)),
            "grace_secs" => self.grace = Some(Duration::from_secs(num(key, value)?)),
            "spectators" => self.spectators = Some(num(key, value)?),
            "batch_ms" => self.batch = Some(Duration::from_millis(num(key, value)?)),
            "record" => self.record = Some(Recording::parse(value)?),
            "fsync" => {
                self.fsync = Some(match value {
                    "true" | "on" | "1" => true,
                    "false" | "off" | "0" => false,
                    _ => return Err(format!("fsync wants true or false, not {value:?}")),
                });
            }
            _ => {
                return Err(format!(
                    "no policy setting {key:?}; the settings are {}",
                    KEYS.join(", ")
                ))
            }
        }
        Ok(())
    }
}

/// The settings `--policy KIND.KEY=VALUE` knows.
pub const KEYS: &[&str] = &[
    "min_players",
    "max_players",
    "inputs_per_second",
    "input_burst",
    "inbox_bound",
    "idle_secs",
    "grace_secs",
    "fsync",
    "spectators",
    "batch_ms",
    "record",
];

/// A kind's policy with every setting decided: what rooms, brokers and workers follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPolicy {
    /// Players a room needs to start.
    pub min_players: usize,
    /// Players a room holds at most.
    pub max_players: usize,
    /// Inputs a second one player may send, on average.
    pub inputs_per_second: u32,
    /// Inputs one player may send at once.
    pub input_burst: u32,
    /// Inputs the inbox holds at most; `None` is the broker's own bound.
    pub inbox_bound: Option<usize>,
    /// A room with no input for this long ends.
    pub idle_timeout: Duration,
    /// How long a dropped player keeps its seat.
    pub grace: Duration,
    /// Whether receipts wait for the disk.
    pub fsync: bool,
    /// Spectators a room admits at most.
    pub spectators: usize,
    /// How long outputs wait to go out together; zero sends each input's at once.
    pub batch: Duration,
    /// What of a room's log is kept as its match record.
    pub record: Recording,
}

impl Default for RoomPolicy {
    fn default() -> RoomPolicy {
        RoomPolicy {
            min_players: 1,
            max_players: 100,
            inputs_per_second: 30,
            input_burst: 60,
            inbox_bound: None,
            idle_timeout: Duration::from_secs(15 * 60),
            grace: Duration::from_secs(30),
            fsync: false,
            spectators: 100,
            batch: Duration::ZERO,
            record: Recording::Match,
        }
    }
}

/// The kind a server has when a game declares none ([`crate::Msg`] alone).
pub const DEFAULT_KIND: &str = "default";

/// Every kind's decided policy, in the order the kinds were declared: the first is the
/// default kind (of rooms created without one, and of rooms recorded before kinds
/// existed). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    kinds: std::sync::Arc<Vec<(String, RoomPolicy)>>,
}

impl Policies {
    /// `kinds`, the first the default.
    ///
    /// # Panics
    ///
    /// When `kinds` is empty.
    pub fn new(kinds: Vec<(String, RoomPolicy)>) -> Policies {
        assert!(!kinds.is_empty(), "a server has at least one kind of room");
        Policies {
            kinds: std::sync::Arc::new(kinds),
        }
    }

    /// One kind, [`DEFAULT_KIND`], with `policy`.
    pub fn single(policy: RoomPolicy) -> Policies {
        Policies::new(vec![(DEFAULT_KIND.to_owned(), policy)])
    }

    /// The default kind's name.
    pub fn default_kind(&self) -> &str {
        &self.kinds[0].0
    }

    /// The kinds' names, in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.iter().map(|(name, _)| name.as_str())
    }

    /// The policy of `kind`; the default kind's for `""` (rooms from before kinds) and
    /// for a kind this server does not have.
    pub fn of(&self, kind: &str) -> &RoomPolicy {
        self.kinds
            .iter()
            .find(|(name, _)| name == kind)
            .map_or(&self.kinds[0].1, |(_, policy)| policy)
    }

    /// The kind a request names: `asked`, which must be one of this server's, or the
    /// default.
    pub fn kind<'a>(&'a self, asked: Option<&str>) -> Result<&'a str, String> {
        match asked {
            None => Ok(self.default_kind()),
            Some(asked) => self.names().find(|name| *name == asked).ok_or_else(|| {
                format!(
                    "no room kind {asked:?} here; the kinds are {}",
                    self.names().collect::<Vec<_>>().join(", ")
                )
            }),
        }
    }

    /// Whether some kind's receipts wait for the disk.
    pub fn any_fsync(&self) -> bool {
        self.kinds.iter().any(|(_, policy)| policy.fsync)
    }
}

/// Parses `--policy`'s `KIND.KEY=VALUE` (`*` for every kind).
pub fn parse_override(spec: &str) -> Result<(String, String, String), String> {
    let (target, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("--policy wants KIND.KEY=VALUE, not {spec:?}"))?;
    let (kind, key) = target.split_once('.').ok_or_else(|| {
        format!("--policy wants KIND.KEY=VALUE (`*.KEY` for every kind), not {spec:?}")
    })?;
    if kind.is_empty() {
        return Err(format!(
            "--policy {spec:?} names no kind (`*` is every kind)"
        ));
    }
    let mut probe = Policy::new();
    probe.set(key, value)?;
    Ok((kind.to_owned(), key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_sets_what_it_declares_and_the_server_the_rest() {
        let defaults = RoomPolicy::default();
        let duel = Policy::new().players(2, 2).grace(Duration::from_secs(5));
        let resolved = duel.resolve(&defaults);
        assert_eq!((resolved.min_players, resolved.max_players), (2, 2));
        assert_eq!(resolved.grace, Duration::from_secs(5));
        assert_eq!(resolved.inputs_per_second, defaults.inputs_per_second);
        assert_eq!(resolved.idle_timeout, defaults.idle_timeout);
    }

    #[test]
    fn an_override_wins_over_the_code() {
        let mut over = Policy::new();
        over.set("max_players", "3").unwrap();
        over.set("fsync", "on").unwrap();
        over.set("batch_ms", "20").unwrap();
        let code = Policy::new()
            .players(2, 2)
            .fsync(false)
            .batch(Duration::from_millis(5));
        let resolved = code.overridden_by(&over).resolve(&RoomPolicy::default());
        assert_eq!(resolved.max_players, 3);
        assert_eq!(resolved.min_players, 2);
        assert!(resolved.fsync);
        assert_eq!(resolved.batch, Duration::from_millis(20));
        assert_eq!(
            RoomPolicy::default().batch,
            Duration::ZERO,
            "off unless asked"
        );
    }

    #[test]
    fn min_never_exceeds_max() {
        let over = Policy {
            max_players: Some(1),
            ..Policy::new()
        };
        let resolved = Policy::new()
            .players(4, 8)
            .overridden_by(&over)
            .resolve(&RoomPolicy::default());
        assert_eq!((resolved.min_players, resolved.max_players), (1, 1));
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        assert!(parse_override("duel.max_players=4").is_ok());
        assert!(parse_override("*.grace_secs=0").is_ok());
        for (spec, says) in [
            ("duel", "KIND.KEY=VALUE"),
            ("max_players=4", "KIND.KEY=VALUE"),
            (".max_players=4", "names no kind"),
            ("duel.colour=red", "no policy setting"),
            ("duel.max_players=many", "whole number"),
            ("duel.fsync=maybe", "true or false"),
            ("duel.max_players=-1", "whole number"),
            ("duel.batch_ms=soon", "whole number"),
            ("duel.record=always", "off, match, or the seconds"),
        ] {
            let e = parse_override(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    #[should_panic(expected = "min ≤ max")]
    fn more_min_than_max_is_a_mistake() {
        let _ = Policy::new().players(3, 2);
    }
}
