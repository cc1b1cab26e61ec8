//! `bench gate`: what match records cost and how fast the deploy gate runs them again,
//! in process, on one core. A match of the MMO (its real handlers) is played into a
//! room worker: players join, then each moves ten times a second while the room ticks
//! ten times a second, the worker taking a checkpoint (and its record) every 250 ms of
//! play, as a live worker does. The same match is played with recording off and on,
//! alternately, and the time per input compared; then the record is run again by the
//! gate's own code (`replay::rerun`), and its speed given in entries and inputs a
//! second.

use game_server_less::msg::RoomInfo;
use game_server_less::names::{LOBBY_USER, WORKER_USER};
use game_server_less::policy::Recording;
use game_server_less::store::StoredSegment;
use game_server_less::worker::room_worker::tick;
use game_server_less::worker::{replay, Control, InboxMessage, RoomWorker, Verdict};
use std::time::{Duration, Instant};

/// `bench gate`'s options.
#[derive(clap::Args, Debug)]
pub(crate) struct GateArgs {
    /// Players in the match.
    #[arg(long, default_value_t = 20)]
    players: usize,
    /// Seconds of play.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// Times each way is measured (recording off and on alternate).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Times the gate runs the record again (the median is given).
    #[arg(long, default_value_t = 9)]
    reruns: usize,
}

/// One message of the match: its sender, body and time.
struct Message {
    user: String,
    body: String,
    at: u64,
}

/// The match: joins, then moves and ticks, 100 ms apart each.
fn script(players: usize, secs: u64) -> Vec<Message> {
    let start = 1_800_000_000_000u64;
    let mut messages: Vec<Message> = (0..players)
        .map(|p| Message {
            user: LOBBY_USER.to_owned(),
            body: Control::Join {
                player: format!("p{p}"),
                arrival: None,
            }
            .to_json(),
            at: start,
        })
        .collect();
    let steps = [(1, 0), (0, 1), (-1, 0), (0, -1)];
    for step in 0..secs * 10 {
        let at = start + 100 * (step + 1);
        messages.push(Message {
            user: WORKER_USER.to_owned(),
            body: tick("bench", step + 1, at),
            at,
        });
        for p in 0..players {
            let (dx, dy) = steps[(step as usize + p) % 4];
            messages.push(Message {
                user: format!("p{p}"),
                body: format!(
                    r#"{{"type":"move","dx":{dx},"dy":{dy},"seq":{}}}"#,
                    step + 1
                ),
                at: at + p as u64,
            });
        }
    }
    messages
}

/// Plays `messages` into a fresh worker (recording as `recording` says), taking a
/// checkpoint every 250 ms of play; answers the time it took and the record.
fn play(messages: &[Message], recording: Recording) -> (Duration, Vec<StoredSegment>) {
    let info = RoomInfo::new("bench-gate", "meadow");
    let mut worker = RoomWorker::new(info, game_server::msg()).with_recording(recording);
    let mut segments = Vec::new();
    let mut checkpointed = messages.first().map_or(0, |m| m.at);
    let started = Instant::now();
    for (i, m) in messages.iter().enumerate() {
        worker.handle(InboxMessage {
            user: &m.user,
            body: m.body.as_bytes(),
            at_ms: Some(m.at),
        });
        if m.at >= checkpointed + 250 || i + 1 == messages.len() {
            checkpointed = m.at;
            let (checkpoint, _, _) = worker.checkpoint().expect("the state saves");
            if let Some(segment) = worker.take_record(&checkpoint) {
                segments.push(StoredSegment {
                    version: checkpoint.version + 1,
                    start: segment.start,
                    entries: segment.entries,
                    first_at: segment.first_at,
                    last_at: segment.last_at,
                });
            }
            worker.saved();
        }
    }
    (started.elapsed(), segments)
}

/// Runs the benchmark and prints its figures.
pub(crate) fn run(args: GateArgs) -> i32 {
    let messages = script(args.players, args.secs);
    let inputs = messages.iter().filter(|m| !m.user.starts_with('$')).count();
    println!(
        "a match of the MMO: {} players moving 10 times a second for {} s, ticks every 100 ms: {} messages ({inputs} inputs)",
        args.players,
        args.secs,
        messages.len()
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut record = Vec::new();
    for _ in 0..args.rounds {
        off.push(play(&messages, Recording::Off).0);
        let (took, segments) = play(&messages, Recording::Match);
        on.push(took);
        record = segments;
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    let per = |d: Duration| d.as_secs_f64() * 1e9 / inputs as f64;
    let bytes: usize = record.iter().map(|s| s.entries.len()).sum();
    let keyframes: usize = record
        .iter()
        .filter_map(|s| s.start.as_ref())
        .map(String::len)
        .sum();
    println!("| | ns per input (handling, checkpoints' JSON) | |");
    println!("|---|---|---|");
    println!("| recording off | {:.0} | |", per(off));
    println!(
        "| recording on | {:.0} | {:+.1}% |",
        per(on),
        (per(on) / per(off) - 1.0) * 100.0
    );
    println!(
        "record: {} segments, {} bytes of entries ({:.0} a message, {:.0} an input), {} bytes of keyframes",
        record.len(),
        bytes,
        bytes as f64 / messages.len() as f64,
        bytes as f64 / inputs as f64,
        keyframes
    );
    let mut runs = Vec::new();
    for _ in 0..args.reruns.max(1) {
        let started = Instant::now();
        let verdict = replay::rerun(
            RoomInfo::new("bench-gate", "meadow"),
            game_server::msg(),
            Duration::from_secs(20),
            &record,
        );
        runs.push(started.elapsed());
        match verdict {
            Verdict::Same { entries } if entries as usize == messages.len() => {}
            other => {
                eprintln!("the gate did not find the match the same: {other:?}");
                return 1;
            }
        }
    }
    let took = median(&mut runs);
    println!(
        "the gate ran it again in {:.1} ms: {:.0} entries a second, {:.0} inputs a second (one core)",
        took.as_secs_f64() * 1000.0,
        messages.len() as f64 / took.as_secs_f64(),
        inputs as f64 / took.as_secs_f64()
    );
    0
}
