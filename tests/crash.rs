//! The all-in-one server killed with -9 mid-stream and started again on the same data
//! directory: every input the broker receipted is applied exactly once, and no room seq
//! that a player saw ever names other content. The game is `tests/bin/ledger.rs`, whose
//! state lists every input it applied.

use e2e_tests::{create_room_at, join_ticket, json_of, ledger_report, temp_dir, Restartable};
use game_server_less::proto::Ticket;
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What all players saw: each output by room seq, and any seq seen with two contents.
#[derive(Default)]
struct Seen {
    by_seq: BTreeMap<u64, Value>,
    reused: Vec<(u64, Value, Value)>,
    outputs: usize,
    /// Inputs receipted, all players together.
    receipted: u64,
}

impl Seen {
    fn record(&mut self, m: Value) {
        let Some(seq) = m["seq"].as_u64() else { return };
        self.outputs += 1;
        match self.by_seq.get(&seq) {
            Some(first) if *first != m => self.reused.push((seq, first.clone(), m)),
            Some(_) => {}
            None => {
                self.by_seq.insert(seq, m);
            }
        }
    }
}

/// A player that sends `count` inputs, `window` at a time, each until the broker
/// receipts it, connecting again (and sending again what was not receipted) whenever
/// the server goes away. Everything it hears goes to `seen`.
async fn play(ticket: Ticket, count: u64, window: usize, seen: Arc<Mutex<Seen>>) -> u64 {
    let mut next = 1;
    let mut connections = 0;
    while next <= count {
        let client = loop {
            let options = ConnectOptions::login(ticket.login.clone(), ticket.token.clone());
            match Client::connect(&ticket.tcp_url, options).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        connections += 1;
        let Ok(mut room) = client
            .subscribe(&ticket.topic, SubscribeOptions::default())
            .await
        else {
            continue;
        };
        let seen_here = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = room.recv().await {
                seen_here.lock().unwrap().record(json_of(&m));
            }
        });
        // Up to `window` inputs in flight; the first not receipted is where the next
        // connection starts again.
        'connection: while next <= count {
            let batch: Vec<u64> = (next..=count).take(window).collect();
            let sends = batch.iter().map(|seq| {
                let body = json!({ "type": "add", "seq": seq }).to_string();
                let client = client.clone();
                let inbox = ticket.inbox.clone();
                async move {
                    tokio::time::timeout(Duration::from_secs(3), client.send(&inbox, body))
                        .await
                        .is_ok_and(|r| r.is_ok())
                }
            });
            let receipted = futures_util::future::join_all(sends).await;
            for (seq, ok) in batch.iter().zip(receipted) {
                if !ok {
                    break 'connection;
                }
                next = seq + 1;
                seen.lock().unwrap().receipted += 1;
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    }
    connections
}

/// Plays `count` inputs for each of three players, `window` in flight each, kills the
/// server with -9 once a third of the inputs have been applied (mid-stream, however fast
/// the machine) and starts it again; then checks and prints.
async fn crash_and_count(tag: &str, count: u64, window: usize, fsync: bool) {
    let dir = temp_dir(tag);
    // Bursts as fast as the sockets go: the rate limit is not what is tested.
    let mut extra = vec!["--inputs-per-second", "1000000", "--input-burst", "1000000"];
    if fsync {
        extra.push("--fsync");
    }
    let ledger = PathBuf::from(env!("CARGO_BIN_EXE_ledger"));
    let mut server = Restartable::start(ledger, &dir, &extra).await;
    let room = create_room_at(&server.http).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut players = Vec::new();
    let mut tickets = Vec::new();
    for name in ["ann", "bob", "cyd"] {
        let ticket = join_ticket(&server.http, &room, name).await;
        tickets.push(ticket.clone());
        players.push(tokio::spawn(play(ticket, count, window, seen.clone())));
    }
    // Three players: a third of all inputs is `count`. Receipts run ahead of the room's
    // outputs, so the kill waits on them: the players are still sending when it comes.
    let waiting = Instant::now();
    while seen.lock().unwrap().receipted < count {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the players did not get a third of the way"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = seen.lock().unwrap().by_seq.len();
    let killed = Instant::now();
    server.restart().await;
    let back = killed.elapsed();
    let mut connections = 0;
    for p in players {
        connections += p.await.unwrap();
    }
    let applied = ledger_report(&tickets[0], u64::MAX / 2).await;
    let mut per_input: HashMap<(String, u64), usize> = HashMap::new();
    for key in applied {
        *per_input.entry(key).or_default() += 1;
    }
    let accepted = 3 * count as usize;
    let lost = ["ann", "bob", "cyd"]
        .iter()
        .flat_map(|p| (1..=count).map(move |s| (p.to_string(), s)))
        .filter(|key| !per_input.contains_key(key))
        .count();
    let doubled = per_input.values().filter(|&&n| n > 1).count();
    let seen = seen.lock().unwrap();
    println!(
        "{tag}: accepted {accepted}, applied {}, lost {lost}, doubled {doubled}; outputs seen {} ({} distinct seqs, {before} before the kill), seqs reused with other content {}; {} connections; back {back:?} after kill -9",
        per_input.len(),
        seen.outputs,
        seen.by_seq.len(),
        seen.reused.len(),
        connections,
    );
    assert!(connections > 3, "the kill cut the players off");
    assert_eq!(lost, 0, "receipted inputs were lost");
    assert_eq!(doubled, 0, "inputs were applied twice");
    assert_eq!(
        per_input.len(),
        accepted,
        "only the players' inputs were applied"
    );
    assert!(
        seen.reused.is_empty(),
        "room seqs named other content after the restart: {:?}",
        &seen.reused[..seen.reused.len().min(3)]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn receipted_inputs_survive_kill_9_when_paced() {
    crash_and_count("paced", 300, 1, false).await;
}

#[tokio::test]
async fn receipted_inputs_survive_kill_9_in_a_burst() {
    crash_and_count("burst", 3000, 200, false).await;
}

#[tokio::test]
async fn receipted_inputs_survive_kill_9_with_fsync() {
    crash_and_count("fsync", 1500, 5, true).await;
}
