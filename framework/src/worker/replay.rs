//! A recorded match run again under this build's handlers: from the keyframe its first
//! kept segment starts with, each entry handled as the first run handled it, at the time
//! recorded with it, the outputs compared with the recorded ones. This is the deploy
//! gate (`game-server replay --check`); replays to watch play the recorded outputs.

use super::record::{Entry, RecordedOutput, END_USER};
use super::room_worker::{InboxMessage, RoomWorker};
use crate::msg::{Msg, RoomInfo};
use crate::room::Output;
use crate::store::{Checkpoint, Keyframe, StoredSegment};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
    // Each output made is written here and compared with the recorded bytes: the
    // recorder wrote them with the same serializer, so equal outputs are equal bytes,
    // and no recorded output is parsed unless one differs.
    let mut written = Vec::new();
    for segment in segments {
        for line in segment.entries.lines() {
            n += 1;
            let entry: RawEntry<'_> = match serde_json::from_str(line) {
                Ok(entry) => entry,
                Err(e) => {
                    return Verdict::Unusable(format!(
                        "segment {}: entry {n} is corrupt: {e}",
                        segment.version
                    ))
                }
            };
            let seq = worker.room().seq();
            let got = handle(&mut worker, &entry.u, &entry.b, entry.at);
            if !same_outputs(&entry.o, &got, &mut written) {
                // Read whole now, to report it (a number JSON allows and a `Value` does
                // not, say `1e400`, makes the record unusable rather than a panic).
                let entry: Entry = match serde_json::from_str(line) {
                    Ok(entry) => entry,
                    Err(e) => {
                        return Verdict::Unusable(format!(
                            "segment {}: entry {n} made other outputs and cannot be read to say which: {e}",
                            segment.version
                        ))
                    }
                };
                let (expected, got) = first_difference(&entry.o, &got).unwrap_or((None, None));
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

/// An entry as read for running it again: borrowed where it can be, its outputs left
/// as the JSON text they were recorded as.
#[derive(serde::Deserialize)]
struct RawEntry<'a> {
    #[serde(borrow)]
    u: std::borrow::Cow<'a, str>,
    at: u64,
    #[serde(borrow)]
    b: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    o: Vec<RawOutput<'a>>,
}

#[derive(serde::Deserialize)]
struct RawOutput<'a> {
    #[serde(default, borrow)]
    to: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    m: &'a serde_json::value::RawValue,
}

/// Whether `got` are the outputs `recorded`, compared as the recorder wrote them.
fn same_outputs(recorded: &[RawOutput<'_>], got: &[Output], written: &mut Vec<u8>) -> bool {
    recorded.len() == got.len()
        && recorded.iter().zip(got).all(|(r, g)| {
            written.clear();
            serde_json::to_writer(&mut *written, &g.body).expect("an output serializes");
            r.to.as_deref() == g.to.player() && r.m.get().as_bytes() == written.as_slice()
        })
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
pub fn handle<S>(worker: &mut RoomWorker<S>, user: &str, body: &str, at: u64) -> Vec<Output>
where
    S: Serialize + DeserializeOwned + 'static,
{
    // What the handler read from ctx.now() is what was recorded, whichever worker ran
    // it and whatever its machine's clock said.
    worker.set_clock(at);
    if user == END_USER {
        worker.end(body)
    } else {
        worker.handle(InboxMessage {
            user,
            body: body.as_bytes(),
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
