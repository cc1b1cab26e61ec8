//! A soak test: bots join and leave rooms at random, drop their connections, flood now
//! and then, while the server is killed with -9 and started again halfway. At the end
//! every receipted input was applied exactly once, no room or connection is left over,
//! and the server's memory is back near where it was. `GSL_SOAK_SECS` sets how long
//! (20 s by default, as in CI; a few minutes to soak for real):
//!
//!     GSL_SOAK_SECS=300 cargo test -p e2e-tests --test soak -- --nocapture

use e2e_tests::{http, join_ticket, ledger_report, temp_dir, Restartable, WAIT};
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BOTS: usize = 12;
const ROOMS: usize = 3;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A tiny random generator (xorshift), seeded per bot.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Inputs the broker receipted: (room, player) to input numbers.
type Accepted = Arc<Mutex<HashMap<(String, String), Vec<u64>>>>;

#[derive(Default, Debug)]
struct Tally {
    joins: usize,
    leaves: usize,
    drops: usize,
    floods: usize,
}

/// One bot's life until `until`: join a room, play a while, then leave, drop the
/// connection, or flood; again.
async fn bot(
    i: usize,
    lobby: String,
    rooms: Vec<String>,
    until: Instant,
    accepted: Accepted,
) -> Tally {
    let name = format!("bot{i}");
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let lobby_client = e2e_tests::lobby(&lobby);
    let mut key: Option<String> = None;
    let mut seq = 0u64; // across visits, so that (player, seq) names one input
    let mut tally = Tally::default();
    while Instant::now() < until {
        let room = rooms[dice.roll(rooms.len() as u64) as usize].clone();
        let ticket = match lobby_client.join(&room, &name, key.as_deref()).await {
            Ok(ticket) => ticket,
            Err(game_server_less::Error::Unreachable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await; // the server is restarting
                continue;
            }
            Err(_) => continue,
        };
        key = key.or(ticket.player_key.clone());
        tally.joins += 1;
        let options = ConnectOptions::login(ticket.login.clone(), ticket.token.clone());
        let Ok(client) = Client::connect(&ticket.tcp_url, options).await else {
            continue;
        };
        let Ok(_room_topic) = client
            .subscribe(&ticket.topic, SubscribeOptions::default())
            .await
        else {
            continue;
        };
        for _ in 0..(5 + dice.roll(40)) {
            seq += 1;
            let body = json!({ "type": "add", "seq": seq }).to_string();
            match tokio::time::timeout(Duration::from_secs(2), client.send(&ticket.inbox, body))
                .await
            {
                Ok(Ok(())) => accepted
                    .lock()
                    .unwrap()
                    .entry((room.clone(), name.clone()))
                    .or_default()
                    .push(seq),
                _ => break, // the server went away: a new visit
            }
            tokio::time::sleep(Duration::from_millis(10 + dice.roll(40))).await;
        }
        match dice.roll(10) {
            0 => {
                // A flood, with no receipts: most of it is dropped by the rate limit.
                tally.floods += 1;
                for _ in 0..300 {
                    seq += 1;
                    let body = json!({ "type": "add", "seq": seq }).to_string();
                    if client.send_nowait(&ticket.inbox, body).is_err() {
                        break;
                    }
                }
            }
            1..=4 => tally.drops += 1, // the connection just goes
            _ => {
                let _ = lobby_client.leave(&room, &ticket.token).await;
                tally.leaves += 1;
            }
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_join_leave_drop_and_flood_through_a_kill_9_and_nothing_is_lost_or_leaked() {
    let secs: u64 = std::env::var("GSL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = temp_dir("soak");
    let ledger = PathBuf::from(env!("CARGO_BIN_EXE_ledger"));
    let mut server = Restartable::start(ledger, &dir, &[]).await;
    let mut rooms = Vec::new();
    let mut owners = Vec::new();
    for _ in 0..ROOMS {
        let room: Value = http()
            .post(format!("{}/rooms", server.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rooms.push(room["id"].as_str().unwrap().to_owned());
        owners.push(room["owner_token"].as_str().unwrap().to_owned());
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let accepted = Accepted::default();
    let bots: Vec<_> = (0..BOTS)
        .map(|i| {
            tokio::spawn(bot(
                i,
                server.http.clone(),
                rooms.clone(),
                until,
                accepted.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs / 4)).await;
    let early_rss = rss_kib(server.pid());
    tokio::time::sleep(Duration::from_secs(secs / 4)).await;
    server.restart().await;
    tokio::time::sleep(Duration::from_secs(secs / 8)).await;
    let baseline_rss = rss_kib(server.pid()); // the new process, bots playing
    let mut tally = Tally::default();
    for b in bots {
        let t = b.await.unwrap();
        tally.joins += t.joins;
        tally.leaves += t.leaves;
        tally.drops += t.drops;
        tally.floods += t.floods;
    }
    let peak_rss = rss_kib(server.pid()).max(early_rss);

    // Exactly once, room by room, from the rooms' own ledgers.
    let accepted = accepted.lock().unwrap().clone();
    let (mut receipted, mut lost, mut doubled, mut applied_total) = (0, 0, 0, 0);
    for (i, room) in rooms.iter().enumerate() {
        let auditor = join_ticket(&server.http, room, &format!("auditor{i}")).await;
        let applied = ledger_report(&auditor, 1).await;
        applied_total += applied.len();
        let mut count: HashMap<(String, u64), usize> = HashMap::new();
        for key in applied {
            *count.entry(key).or_default() += 1;
        }
        doubled += count.values().filter(|&&n| n > 1).count();
        for ((r, player), seqs) in &accepted {
            if r != room {
                continue;
            }
            receipted += seqs.len();
            lost += seqs
                .iter()
                .filter(|s| !count.contains_key(&(player.clone(), **s)))
                .count();
        }
    }
    // Nothing left over once the rooms end.
    for (room, owner) in rooms.iter().zip(&owners) {
        let ended = http()
            .delete(format!("{}/rooms/{room}", server.http))
            .bearer_auth(owner)
            .send()
            .await
            .unwrap();
        assert_eq!(ended.status(), 204);
    }
    let started_cleanup = Instant::now();
    let health = loop {
        let health: Value = http()
            .get(format!("{}/health", server.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if (health["rooms"] == 0 && health["connections"] == 0) || started_cleanup.elapsed() > WAIT
        {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let final_rss = rss_kib(server.pid());
    println!(
        "soak: {secs} s, {BOTS} bots in {ROOMS} rooms, kill -9 and restart at {:?}; {} joins, {} leaves, {} dropped connections, {} floods; {receipted} inputs receipted, {applied_total} applied, {lost} lost, {doubled} doubled; left over: {health}; RSS {early_rss} KiB before the kill, {baseline_rss} KiB after the restart, peak {peak_rss} KiB, final {final_rss} KiB",
        Duration::from_secs(secs / 2),
        tally.joins,
        tally.leaves,
        tally.drops,
        tally.floods,
    );
    assert!(receipted > 100, "the bots played");
    assert_eq!(lost, 0, "receipted inputs were lost");
    assert_eq!(doubled, 0, "inputs were applied twice");
    assert_eq!(
        (health["rooms"].clone(), health["connections"].clone()),
        (json!(0), json!(0)),
        "nothing left over"
    );
    assert!(
        final_rss * 10 <= baseline_rss * 11,
        "memory grew: {baseline_rss} KiB after the restart, {final_rss} KiB at the end"
    );
}
