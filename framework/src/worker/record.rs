//! A room's match record, as its worker keeps it: each message handled, with the time
//! it was recorded at and the outputs it made, one JSON line an entry. The entries since
//! the last checkpoint go into the store with it (a [`Segment`]); `replay.rs` reads them
//! back and runs them again.
//!
//! An entry is `{"u": USER, "at": MS, "b": BODY, "o": [{"to": PLAYER, "m": MESSAGE}]}`:
//! the sender as the broker stamped it (a player, `$lobby`, `$worker` for ticks, or
//! [`END_USER`] when the worker itself ended the room), the room's clock once the
//! message was handled (what `ctx.now()` read), the message as it came, and the outputs
//! in order (`to` absent: the room's topic).

use crate::policy::Recording;
use crate::room::{Output, Target};
use crate::store::{Keyframe, Segment};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;

/// The sender of the entry the worker records when it ends the room itself (idle, the
/// lobby's end reaches it as a message): its body is the reason.
pub const END_USER: &str = "$ended";

/// How much recorded time a replay at most runs through to reach a point: a segment
/// starts with the room as it was (a keyframe) at least this often.
pub const KEYFRAME_EVERY_MS: u64 = 30_000;

/// One recorded message and what it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Who sent it.
    pub u: String,
    /// The room's clock once it was handled (ms since the epoch).
    pub at: u64,
    /// The message, as it came.
    pub b: String,
    /// The outputs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub o: Vec<RecordedOutput>,
}

/// An output as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedOutput {
    /// The player it went to; absent: the room's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The message.
    pub m: Value,
}

impl RecordedOutput {
    /// `output` as a record holds it.
    pub fn of(output: &Output) -> RecordedOutput {
        RecordedOutput {
            to: match &output.to {
                Target::Room => None,
                Target::Player(p) => Some(p.clone()),
            },
            m: output.body.clone(),
        }
    }
}

/// An entry being written: borrowed, so recording copies nothing but the bytes.
#[derive(Serialize)]
struct EntryRef<'a> {
    u: &'a str,
    at: u64,
    b: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    o: &'a [OutputRef<'a>],
}

#[derive(Serialize)]
struct OutputRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    m: &'a Value,
}

/// The entries of a segment, in order; a line that is not an entry is an error naming
/// its place.
pub fn entries(segment: &str) -> Result<Vec<Entry>, String> {
    segment
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| format!("entry {} is corrupt: {e}", i + 1))
        })
        .collect()
}

/// What a worker records of its room, between two checkpoints.
#[derive(Debug)]
pub struct Recorder {
    /// Keep the whole match, or only its last stretch.
    recording: Recording,
    buf: Vec<u8>,
    n: u32,
    first_at: u64,
    last_at: u64,
    /// The keyframe the next segment starts with, if it is to have one.
    start: Option<String>,
    joined: Vec<String>,
    /// The versions of the segments saved with a keyframe, and their first entry's time.
    keyframes: VecDeque<(u64, u64)>,
    /// The recorded time of the last keyframe taken.
    keyframe_at: u64,
}

impl Recorder {
    /// A recorder for a worker that starts from `start`: the room's checkpoint, or
    /// its first state.
    pub fn new(recording: Recording, start: &Keyframe) -> Recorder {
        Recorder {
            recording,
            buf: Vec::new(),
            n: 0,
            first_at: 0,
            last_at: 0,
            start: Some(serde_json::to_string(start).expect("a keyframe serializes")),
            joined: Vec::new(),
            keyframes: VecDeque::new(),
            keyframe_at: 0,
        }
    }

    /// Records a message handled at `at` (the room's clock) and its outputs.
    pub fn record(&mut self, user: &str, body: &[u8], at: u64, outputs: &[Output]) {
        let outputs: Vec<OutputRef<'_>> = outputs
            .iter()
            .map(|o| OutputRef {
                to: match &o.to {
                    Target::Room => None,
                    Target::Player(p) => Some(p.as_str()),
                },
                m: &o.body,
            })
            .collect();
        let entry = EntryRef {
            u: user,
            at,
            b: &String::from_utf8_lossy(body),
            o: &outputs,
        };
        serde_json::to_writer(&mut self.buf, &entry).expect("an entry serializes");
        self.buf.push(b'\n');
        if self.n == 0 {
            self.first_at = at;
            if self.keyframe_at == 0 {
                self.keyframe_at = at;
            }
        }
        self.n += 1;
        self.last_at = at;
    }

    /// Notes that `player` joined (the record lists its players).
    pub fn joined(&mut self, player: &str) {
        self.joined.push(player.to_owned());
    }

    /// The segment recorded since the last, to be saved as version `version` (the
    /// checkpoint's); `None` if nothing was. `keyframe` gives the room as it is now, the
    /// start of the next segment, when one is due.
    pub fn take(&mut self, version: u64, keyframe: impl FnOnce() -> String) -> Option<Segment> {
        if self.n == 0 {
            return None;
        }
        let start = self.start.take();
        if start.is_some() {
            self.keyframes.push_back((version, self.first_at));
        }
        let mut forget_before = None;
        if let Recording::Last(keep) = self.recording {
            let from = self.last_at.saturating_sub(keep.as_millis() as u64);
            // The latest keyframe at or before the stretch kept: what is before it can go.
            while self.keyframes.len() > 1 && self.keyframes[1].1 <= from {
                self.keyframes.pop_front();
                forget_before = Some(self.keyframes[0].0);
            }
        }
        if self.last_at.saturating_sub(self.keyframe_at) >= KEYFRAME_EVERY_MS {
            self.start = Some(keyframe());
            self.keyframe_at = self.last_at;
        }
        let segment = Segment {
            entries: String::from_utf8(std::mem::take(&mut self.buf))
                .expect("entries are JSON text"),
            n: std::mem::take(&mut self.n),
            first_at: self.first_at,
            last_at: self.last_at,
            start,
            joined: std::mem::take(&mut self.joined),
            forget_before,
        };
        Some(segment)
    }

    /// A segment taken and not saved, because its checkpoint changed nothing (ticks that
    /// moved no one): its entries are dropped, which a replay does not miss, and its
    /// keyframe is kept for the next.
    pub fn not_saved(&mut self, segment: Segment, version: u64) {
        if segment.start.is_some() {
            if self.keyframes.back().is_some_and(|(v, _)| *v == version) {
                self.keyframes.pop_back();
            }
            if self.start.is_none() {
                self.start = segment.start;
            }
        }
        self.joined.extend(segment.joined);
    }
}
