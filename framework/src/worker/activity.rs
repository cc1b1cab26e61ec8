//! What a room did lately, for the operator's inspector: its latest inputs, each with
//! its outcome, and its inputs a second. The worker keeps it beside the room and saves
//! it with each checkpoint, so the lobby (any lobby, in any mode) reads it from the store.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// How many of its latest inputs a room keeps.
pub const RECENT_INPUTS: usize = 50;

/// The most characters of an input's type or error a record keeps.
pub const MOST_CHARS: usize = 200;

/// Over how many seconds the input rate is counted.
const RATE_WINDOW_SECS: u64 = 10;

/// One input as the room took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputRecord {
    /// The room's clock when it was applied (when the broker queued it, where it says),
    /// milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The sender.
    pub from: String,
    /// The sender's number for it (`None`: it had none, and was refused).
    pub seq: Option<u64>,
    /// Its `type`, if it had one.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The room's seq after it: its latest broadcast.
    pub room_seq: u64,
    /// `None`: applied; otherwise why it was rejected (the handler's error).
    pub error: Option<String>,
}

/// A room's latest inputs and its input rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Inputs a second over the last ten seconds, as of the latest input.
    pub inputs_per_second: f64,
    /// The latest inputs, oldest first.
    pub recent: VecDeque<InputRecord>,
    /// Inputs counted per second (`(second, count)`), over the rate's window.
    #[serde(skip)]
    per_second: VecDeque<(u64, u64)>,
}

impl Activity {
    /// Records an input taken (applied or rejected; not a duplicate). Its type and
    /// error are cut to [`MOST_CHARS`] characters: the record goes into every checkpoint.
    pub fn record(&mut self, mut input: InputRecord) {
        for text in [&mut input.kind, &mut input.error].into_iter().flatten() {
            if let Some((cut, _)) = text.char_indices().nth(MOST_CHARS) {
                text.truncate(cut);
                text.push('…');
            }
        }
        let second = input.at_ms / 1000;
        match self.per_second.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.per_second.push_back((second, 1)),
        }
        while self
            .per_second
            .front()
            .is_some_and(|(s, _)| s + RATE_WINDOW_SECS <= second)
        {
            self.per_second.pop_front();
        }
        let counted: u64 = self.per_second.iter().map(|(_, n)| n).sum();
        self.inputs_per_second = counted as f64 / RATE_WINDOW_SECS as f64;
        if self.recent.len() == RECENT_INPUTS {
            self.recent.pop_front();
        }
        self.recent.push_back(input);
    }

    /// The input rate as of `now_ms`: none once the latest input is older than the
    /// rate's window.
    pub fn rate_at(&self, now_ms: u64) -> f64 {
        match self.recent.back() {
            Some(last) if now_ms.saturating_sub(last.at_ms) < RATE_WINDOW_SECS * 1000 => {
                self.inputs_per_second
            }
            _ => 0.0,
        }
    }

    /// As JSON, to save with a checkpoint.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an activity serializes")
    }

    /// From a checkpoint's JSON; empty if there is none (a checkpoint from before the
    /// inspector) or it does not read.
    pub fn from_json(text: &str) -> Activity {
        serde_json::from_str(text).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(at_ms: u64, seq: u64, error: Option<&str>) -> InputRecord {
        InputRecord {
            at_ms,
            from: "ann".into(),
            seq: Some(seq),
            kind: Some("move".into()),
            room_seq: seq,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn keeps_the_latest_inputs_and_counts_the_rate_over_ten_seconds() {
        let mut activity = Activity::default();
        for i in 0..120 {
            // Twelve seconds at ten inputs a second.
            activity.record(input(1_000_000 + i * 100, i, None));
        }
        assert_eq!(activity.recent.len(), RECENT_INPUTS);
        assert_eq!(activity.recent[0].seq, Some(70));
        assert_eq!(activity.recent.back().unwrap().seq, Some(119));
        assert_eq!(activity.inputs_per_second, 10.0);
        let last = activity.recent.back().unwrap().at_ms;
        assert_eq!(activity.rate_at(last + 9_000), 10.0);
        assert_eq!(activity.rate_at(last + 10_000), 0.0, "nothing lately");
    }

    #[test]
    fn survives_a_round_trip_through_json_with_its_outcomes() {
        let mut activity = Activity::default();
        activity.record(input(5_000, 1, None));
        activity.record(input(5_100, 2, Some("no such direction: up-ish")));
        let back = Activity::from_json(&activity.to_json());
        assert_eq!(back.recent, activity.recent);
        assert_eq!(back.inputs_per_second, 0.2);
        assert_eq!(Activity::from_json(""), Activity::default());
        assert_eq!(Activity::from_json("{not json"), Activity::default());
    }

    #[test]
    fn cuts_long_types_and_errors() {
        let mut activity = Activity::default();
        let mut long = input(5_000, 1, Some(&"é".repeat(5_000)));
        long.kind = Some("x".repeat(70_000));
        activity.record(long);
        let kept = &activity.recent[0];
        assert_eq!(kept.kind.as_ref().unwrap().chars().count(), MOST_CHARS + 1);
        assert!(kept.error.as_ref().unwrap().ends_with("é…"));
        assert_eq!(kept.error.as_ref().unwrap().chars().count(), MOST_CHARS + 1);
    }
}
