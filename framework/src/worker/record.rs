//! A room's match record, as its worker keeps it: each message handled, with the time
//! it was recorded at and the outputs it made, one JSON line an entry. The entries since
//! the last checkpoint go into the store with it (a [`Segment`]); `replay.rs` reads them
//! back and runs them again.
//!
//! An entry is `{"u": USER, "at": MS, "b": BODY, "o": [{"to": PLAYER, "m": MESSAGE}]}`:
//! the sender as the broker stamped it (a player, `$lobby`, `$worker` for ticks, or
//! [`END_USER`] when the worker itself ended the room), the room's clock once the
//! message was handled (what `ctx.now()` read), the message as it came, and the outputs
//! in order (`to` absent: the room's topic). A message that is a JSON object on one line
//! (what clients send) is recorded as it came, as JSON; anything else as a JSON string of
//! its text. `Entry` reads both, and gives the message as text either way.

use crate::policy::Recording;
use crate::room::Output;
use crate::store::{Keyframe, Segment};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::VecDeque;

/// The sender of the entry the worker records when it ends the room itself (idle, the
/// lobby's end reaches it as a message): its body is the reason.
pub const END_USER: &str = "$ended";

/// How much recorded time passes at least between two keyframes: the first checkpoint
/// after it takes the next (a segment starting with the room as it was).
pub const KEYFRAME_EVERY_MS: u64 = 30_000;

/// One recorded message and what it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Who sent it.
    pub u: String,
    /// The room's clock once it was handled (ms since the epoch).
    pub at: u64,
    /// The message, as it came.
    #[serde(deserialize_with = "message_text")]
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
            to: output.to.player().map(str::to_owned),
            m: output.body.value(),
        }
    }
}

/// An entry's message as text: recorded as JSON, or as a string of its text.
fn message_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    match raw.get().starts_with('"') {
        true => serde_json::from_str(raw.get()).map_err(serde::de::Error::custom),
        false => Ok(raw.get().to_owned()),
    }
}

/// What the worker learnt of a message's body before it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Read whole as a JSON object, as every well-formed input is: it need not be read
    /// again to be known to be JSON.
    Object,
    /// Not read, or not as a JSON object: the record reads it to know.
    Unknown,
}

/// Whether a message is recorded as the JSON it is: an object, on one line, in UTF-8.
pub(crate) fn recorded_as_json(body: &[u8], read: Read) -> bool {
    body.first() == Some(&b'{')
        && memchr::memchr2(b'\n', b'\r', body).is_none()
        && std::str::from_utf8(body).is_ok()
        && (read == Read::Object || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok())
}

/// Writes the end of an entry, after its message: `,"o":[…]}`, or `}` without outputs.
pub(crate) fn write_tail(buf: &mut Vec<u8>, outputs: &[Output]) {
    if !outputs.is_empty() {
        buf.extend_from_slice(b",\"o\":[");
        for (i, output) in outputs.iter().enumerate() {
            buf.extend_from_slice(if i == 0 { b"{" } else { b",{" });
            if let Some(to) = output.to.player() {
                buf.extend_from_slice(b"\"to\":");
                write_string(buf, to);
                buf.push(b',');
            }
            buf.extend_from_slice(b"\"m\":");
            buf.extend_from_slice(output.body.as_bytes());
            buf.push(b'}');
        }
        buf.push(b']');
    }
    buf.push(b'}');
}

/// Writes `text` as a JSON string.
fn write_string(buf: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(buf, text).expect("a string serializes");
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
    outputs: u32,
    first_at: u64,
    last_at: u64,
    /// The keyframe the next segment starts with, if it is to have one.
    start: Option<String>,
    joined: Vec<String>,
    /// The versions of the segments saved with a keyframe, and their first entry's time.
    keyframes: VecDeque<(u64, u64)>,
    /// The recorded time the latest keyframe stands at.
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
            outputs: 0,
            first_at: 0,
            last_at: 0,
            start: Some(serde_json::to_string(start).expect("a keyframe serializes")),
            // Those in the room when the record starts are its players too.
            joined: start.players.clone(),
            keyframes: VecDeque::new(),
            keyframe_at: 0,
        }
    }

    /// Records a message handled at `at` (the room's clock) and its outputs; `read` says
    /// whether the body is known to be a JSON object already. Written by hand, not
    /// through serde: the outputs are JSON text already, and this runs for every message.
    pub(crate) fn record(
        &mut self,
        user: &str,
        body: &[u8],
        read: Read,
        at: u64,
        outputs: &[Output],
    ) {
        let buf = &mut self.buf;
        buf.extend_from_slice(b"{\"u\":");
        write_string(buf, user);
        buf.extend_from_slice(b",\"at\":");
        buf.extend_from_slice(itoa::Buffer::new().format(at).as_bytes());
        buf.extend_from_slice(b",\"b\":");
        match recorded_as_json(body, read) {
            true => buf.extend_from_slice(body),
            false => write_string(buf, &String::from_utf8_lossy(body)),
        }
        write_tail(buf, outputs);
        buf.push(b'\n');
        if self.n == 0 {
            self.first_at = at;
        }
        self.n += 1;
        self.outputs += outputs.len() as u32;
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
            self.keyframe_at = self.first_at;
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
            outputs: std::mem::take(&mut self.outputs),
            first_at: self.first_at,
            last_at: self.last_at,
            start,
            joined: std::mem::take(&mut self.joined),
            forget_before,
        };
        Some(segment)
    }

    /// A segment taken and not saved, because its checkpoint changed nothing and its
    /// entries made no output (ticks that moved no one, repeats of inputs already
    /// applied): its entries are dropped, which changes nothing a replay shows or runs
    /// again, and its keyframe is kept for the next.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::{Output, Target};
    use std::time::Duration;

    fn start() -> Keyframe {
        Keyframe {
            seq: 0,
            state: "{}".into(),
            applied: Default::default(),
            players: vec![],
        }
    }

    /// Records one message a second from `from` to `to` (seconds), then takes the segment
    /// as `version`.
    fn second_by_second(r: &mut Recorder, from: u64, to: u64, version: u64) -> Segment {
        for s in from..to {
            let out = Output {
                to: Target::Room,
                body: crate::msg::Json::of(&serde_json::json!({ "type": "tick", "s": s })),
            };
            r.record(
                "$worker",
                b"{\"type\":\"$tick\"}",
                Read::Unknown,
                s * 1000,
                &[out],
            );
        }
        r.take(version, || format!("{{\"at\":{to}}}")).unwrap()
    }

    #[test]
    fn a_segment_holds_its_entries_and_a_keyframe_every_30_s() {
        let mut r = Recorder::new(Recording::Match, &start());
        assert!(
            r.take(1, String::new).is_none(),
            "nothing recorded, nothing taken"
        );
        let first = second_by_second(&mut r, 0, 20, 1);
        assert_eq!((first.n, first.first_at, first.last_at), (20, 0, 19_000));
        assert_eq!(
            first.outputs, 20,
            "a segment with outputs is saved, changed or not"
        );
        assert!(
            first.start.is_some(),
            "a worker's first segment starts with the room"
        );
        let entries = entries(&first.entries).unwrap();
        assert_eq!(entries[3].o[0].m["s"], 3);
        assert_eq!(entries[3].u, "$worker");
        let second = second_by_second(&mut r, 20, 40, 2);
        assert!(second.start.is_none(), "under 30 s since the last");
        let third = second_by_second(&mut r, 40, 60, 3);
        assert_eq!(
            third.start.as_deref(),
            Some("{\"at\":40}"),
            "the room as the second left it: 30 s had passed"
        );
        assert!(
            third.forget_before.is_none(),
            "a whole match forgets nothing"
        );
    }

    #[test]
    fn a_body_the_worker_read_as_an_object_is_not_read_again_but_still_checked_for_lines_and_utf8()
    {
        let object = br#"{"type":"move","seq":1}"#;
        assert!(recorded_as_json(object, Read::Object));
        assert!(recorded_as_json(object, Read::Unknown));
        // What the worker's read does not look at is still looked at here.
        for body in [
            &b"{\"type\":\"say\",\n\"seq\":2}"[..],
            b"{\"type\":\"say\",\r\"seq\":2}",
            b"{\"type\":\"\xff\"}",
            b" {\"type\":\"say\"}",
        ] {
            assert!(!recorded_as_json(body, Read::Object), "{body:?}");
        }
        // Without the worker's read, the record reads it.
        assert!(!recorded_as_json(
            br#"{"type":"say"} trailing"#,
            Read::Unknown
        ));
    }

    #[test]
    fn a_message_is_recorded_as_json_when_it_is_an_object_on_one_line() {
        let mut r = Recorder::new(Recording::Match, &start());
        let to_ann = Output {
            to: Target::Player("ann \"the\" first".into()),
            body: crate::msg::Json::of(&serde_json::json!({ "type": "hi" })),
        };
        let bodies: [&[u8]; 6] = [
            br#"{"type":"move","seq":1,"dx":1}"#,
            b"{\"type\":\"say\",\n\"seq\":2}",
            b"not json",
            br#"{"type":"say"} trailing"#,
            b"{\"type\":\"\xff\"}",
            br#"["type","say"]"#,
        ];
        for body in bodies {
            r.record("ann", body, Read::Unknown, 7, std::slice::from_ref(&to_ann));
        }
        let segment = r.take(1, String::new).unwrap();
        let lines: Vec<&str> = segment.entries.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"u":"ann","at":7,"b":{"type":"move","seq":1,"dx":1},"o":[{"to":"ann \"the\" first","m":{"type":"hi"}}]}"#
        );
        for line in &lines[1..] {
            assert!(line.contains(r#","b":""#), "as a string: {line}");
        }
        let read = entries(&segment.entries).unwrap();
        assert_eq!(read.len(), 6, "a message with a newline is on one line too");
        assert_eq!(read[0].b, r#"{"type":"move","seq":1,"dx":1}"#);
        assert_eq!(read[1].b, "{\"type\":\"say\",\n\"seq\":2}");
        assert_eq!(read[2].b, "not json");
        assert_eq!(
            read[4].b, "{\"type\":\"\u{fffd}\"}",
            "not UTF-8: as the text it reads as"
        );
        assert_eq!(read[0].o[0].to.as_deref(), Some("ann \"the\" first"));
        assert_eq!(read[0].o[0].m, serde_json::json!({ "type": "hi" }));
        assert!(
            entries(r#"{"u":"ann","at":7,"b":{"type":"#).is_err(),
            "a cut line is corrupt"
        );
    }

    #[test]
    fn a_bounded_record_forgets_what_is_before_its_stretch() {
        let mut r = Recorder::new(Recording::Last(Duration::from_secs(60)), &start());
        let mut forgot = Vec::new();
        for v in 1..=10u64 {
            let s = second_by_second(&mut r, (v - 1) * 20, v * 20, v);
            forgot.push(s.forget_before);
        }
        // Keyframes start segments 1, 3, 5, 7, 9 (every 40 s: a segment is 20 s long and
        // one is due after 30). At 199 s the last 60 s begin at 139 s: segment 7 (from
        // 120 s) is the latest keyframe at or before it, so what is before 7 can go.
        // Before that, at 119 s and 159 s, segments 3 and 5 became the first kept.
        let none = None;
        assert_eq!(
            forgot,
            [
                none,
                none,
                none,
                none,
                none,
                Some(3),
                none,
                Some(5),
                none,
                Some(7)
            ]
        );
    }

    #[test]
    fn a_segment_not_saved_gives_its_keyframe_to_the_next() {
        let mut r = Recorder::new(Recording::Match, &start());
        let dropped = second_by_second(&mut r, 0, 5, 1);
        assert!(dropped.start.is_some());
        r.not_saved(dropped, 1);
        let next = second_by_second(&mut r, 5, 10, 1);
        assert!(
            next.start.is_some(),
            "the record still starts with the room"
        );
    }
}
