//! A recorded match run again under this build's handlers: from the keyframe its first
//! kept segment starts with, each entry handled as the first run handled it, at the time
//! recorded with it, the outputs compared with the recorded ones. This is the deploy
//! gate (`game-server replay --check`); replays to watch play the recorded outputs.

use super::record::{write_tail, Entry, RecordedOutput, END_USER};
use super::room_worker::{InboxMessage, RoomWorker};
use crate::msg::{Msg, RoomInfo};
use crate::room::Output;
use crate::store::{Checkpoint, Keyframe, StoredSegment};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::borrow::Cow;

/// How a match ran again.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every entry made the outputs it made when recorded.
    Same {
        /// Entries run again.
        entries: u64,
    },
    /// The first entry that made other outputs.
    Differs(Box<Difference>),
    /// The record cannot be run again from its start (its first keyframe was
    /// forgotten, a line is corrupt, the state does not fit this build's type).
    Unusable(String),
}

/// Where a run again first went another way.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The room seq before the entry (the outputs it made follow it).
    pub seq: u64,
    /// The entry's place in the record, from 1.
    pub entry: u64,
    /// The entry: its sender, time and message.
    pub input: Entry,
    /// The first output that differs, as recorded (`None`: this build made more).
    pub expected: Option<RecordedOutput>,
    /// The same output as this build made it (`None`: this build made fewer).
    pub got: Option<RecordedOutput>,
}

/// Runs `segments` (a record, in order) again under `msg` with `grace` for dropped
/// players, comparing each entry's outputs with the recorded ones.
pub fn rerun<S>(
    info: RoomInfo,
    msg: Msg<S>,
    grace: std::time::Duration,
    segments: &[StoredSegment],
) -> Verdict
where
    S: Serialize + DeserializeOwned + 'static,
{
    let Some(first) = segments.first() else {
        return Verdict::Same { entries: 0 };
    };
    let Some(start) = &first.start else {
        return Verdict::Unusable(format!(
            "its first segment kept (version {}) has no keyframe: the record's start was forgotten",
            first.version
        ));
    };
    let mut worker = match start_from(info, msg, grace, start) {
        Ok(worker) => worker,
        Err(e) => return Verdict::Unusable(e),
    };
    let mut n = 0u64;
    let mut tail = Vec::new();
    for segment in segments {
        for line in segment.entries.lines() {
            n += 1;
            let head = match Head::read(line) {
                Ok(head) => head,
                Err(e) => {
                    return Verdict::Unusable(format!(
                        "segment {}: entry {n} is corrupt: {e}",
                        segment.version
                    ))
                }
            };
            let seq = worker.room().seq();
            let got = handle(&mut worker, &head.user, head.message.as_bytes(), head.at);
            // This build writes the outputs it made as the recorder would, and the line
            // must end with the same bytes; no recorded output is read unless it does not.
            tail.clear();
            write_tail(&mut tail, &got);
            if head.tail.as_bytes() == tail {
                continue;
            }
            // Read whole now, to compare as JSON (a build that wrote a message's fields in
            // another order played the same match) and to say what differs. A number JSON
            // allows and a `Value` does not, say `1e400`, makes the record unusable rather
            // than a panic.
            let entry: Entry = match serde_json::from_str(line) {
                Ok(entry) => entry,
                Err(e) => {
                    return Verdict::Unusable(format!(
                    "segment {}: entry {n} made other outputs and cannot be read to say which: {e}",
                    segment.version
                ))
                }
            };
            if let Some((expected, got)) = first_difference(&entry.o, &got) {
                return Verdict::Differs(Box::new(Difference {
                    seq,
                    entry: n,
                    input: entry,
                    expected,
                    got,
                }));
            }
        }
    }
    Verdict::Same { entries: n }
}

/// What the gate reads of an entry before it runs it: its sender, time and message,
/// and the rest of the line, its outputs, left as text.
struct Head<'a> {
    user: Cow<'a, str>,
    at: u64,
    message: Cow<'a, str>,
    /// The line after the message: `,"o":[…]}` or `}`. Empty when the line is not laid
    /// out as a recorder writes it, so that it is compared as JSON.
    tail: &'a str,
}

impl<'a> Head<'a> {
    /// Reads `line` as a recorder writes it (`{"u":…,"at":…,"b":…` then the tail), or,
    /// laid out otherwise, as a whole entry.
    fn read(line: &'a str) -> serde_json::Result<Head<'a>> {
        if let Some(head) = Head::written(line) {
            return Ok(head);
        }
        let entry: Entry = serde_json::from_str(line)?;
        Ok(Head {
            user: Cow::Owned(entry.u),
            at: entry.at,
            message: Cow::Owned(entry.b),
            tail: "",
        })
    }

    fn written(line: &'a str) -> Option<Head<'a>> {
        let rest = line.strip_prefix(r#"{"u":""#)?;
        let end = memchr::memchr2(b'"', b'\\', rest.as_bytes())?;
        // A name with an escape in it is read the long way.
        let (user, rest) = (&rest[..end], rest[end..].strip_prefix(r#"","at":"#)?);
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let at = rest[..digits].parse().ok()?;
        let rest = rest[digits..].strip_prefix(r#","b":"#)?;
        let (message, tail) = rest.split_at(value_end(rest.as_bytes())?);
        Some(Head {
            user: Cow::Borrowed(user),
            at,
            message: match message.starts_with('"') {
                true => Cow::Owned(serde_json::from_str(message).ok()?),
                false => Cow::Borrowed(message),
            },
            tail,
        })
    }
}

/// Where the object or string `text` starts with ends, found by its brackets and
/// strings alone, without reading it as JSON: the recorder wrote it, and the room reads
/// it whole. (Were the record corrupt, the room would refuse the message, its outputs
/// would differ, and the gate would find the line unreadable.)
fn value_end(text: &[u8]) -> Option<usize> {
    if !matches!(text.first(), Some(b'{' | b'"')) {
        return None;
    }
    let mut depth = 0usize;
    let mut i = 0;
    loop {
        match text.get(i)? {
            b'"' => loop {
                i += 1;
                i += memchr::memchr2(b'"', b'\\', text.get(i..)?)?;
                match text[i] {
                    b'\\' => i += 1,
                    _ => break,
                }
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
        if depth == 0 {
            return Some(i);
        }
    }
}

/// A worker for `info` under `msg`, at the keyframe `start` (JSON).
pub fn start_from<S>(
    info: RoomInfo,
    msg: Msg<S>,
    grace: std::time::Duration,
    start: &str,
) -> Result<RoomWorker<S>, String>
where
    S: Serialize + DeserializeOwned + 'static,
{
    let keyframe: Keyframe =
        serde_json::from_str(start).map_err(|e| format!("its keyframe is corrupt: {e}"))?;
    let mut worker = RoomWorker::new(info, msg).with_grace(grace);
    worker
        .restore(Checkpoint {
            seq: keyframe.seq,
            state: keyframe.state,
            applied: keyframe.applied,
            players: keyframe.players,
            version: 0,
            activity: String::new(),
        })
        .map_err(|e| e.to_string())?;
    Ok(worker)
}

/// Handles a recorded entry (sent by `user`, message `body`, recorded at `at`) as the
/// first run did.
pub fn handle<S>(worker: &mut RoomWorker<S>, user: &str, body: &[u8], at: u64) -> Vec<Output>
where
    S: Serialize + DeserializeOwned + 'static,
{
    // What the handler read from ctx.now() is what was recorded, whichever worker ran
    // it and whatever its machine's clock said.
    worker.set_clock(at);
    if user == END_USER {
        worker.end(&String::from_utf8_lossy(body))
    } else {
        worker.handle(InboxMessage {
            user,
            body,
            at_ms: Some(at),
        })
    }
}

/// The first place where `got` is not `recorded`: (expected, got).
fn first_difference(
    recorded: &[RecordedOutput],
    got: &[Output],
) -> Option<(Option<RecordedOutput>, Option<RecordedOutput>)> {
    let got: Vec<RecordedOutput> = got.iter().map(RecordedOutput::of).collect();
    let len = recorded.len().max(got.len());
    (0..len).find_map(|i| {
        let (e, g) = (recorded.get(i), got.get(i));
        (e != g).then(|| (e.cloned(), g.cloned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_head_is_read_as_the_recorder_wrote_it_or_as_json() {
        let line =
            r#"{"u":"ann","at":17,"b":{"type":"say","text":"} \"{[\\"},"o":[{"m":{"seq":1}}]}"#;
        let head = Head::read(line).unwrap();
        assert_eq!((head.user.as_ref(), head.at), ("ann", 17));
        assert_eq!(head.message, r#"{"type":"say","text":"} \"{[\\"}"#);
        assert_eq!(head.tail, r#","o":[{"m":{"seq":1}}]}"#);
        // A message recorded as a string; no outputs.
        let head = Head::read(r#"{"u":"$lobby","at":1,"b":"not \"json\""}"#).unwrap();
        assert_eq!((head.message.as_ref(), head.tail), (r#"not "json""#, "}"));
        // Laid out otherwise (a name with an escape, keys in another order): read whole,
        // with no tail, so that its outputs are compared as JSON.
        for line in [
            r#"{"u":"a\"b","at":1,"b":{"type":"x"}}"#,
            r#"{"at":1,"u":"ab","b":{"type":"x"}}"#,
            r#"{"u":"ab","at":1,"b":5}"#,
        ] {
            let head = Head::read(line).unwrap();
            assert_eq!(head.tail, "", "{line}");
        }
        assert_eq!(
            Head::read(r#"{"u":"a\"b","at":1,"b":{}}"#).unwrap().user,
            "a\"b"
        );
        // Cut short: corrupt.
        for line in [
            r#"{"u":"ann","at":17,"b":{"type":"say""#,
            r#"{"u":"ann","at":1"#,
            "",
        ] {
            assert!(Head::read(line).is_err(), "{line}");
        }
    }
}
