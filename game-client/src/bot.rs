//! `--bot N`: headless players that random-walk and chat, for demos and load, with a
//! one-line summary every two seconds.

use game_server_less::proto::{RoomView, Ticket};
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Stats {
    online: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    rtts: Mutex<Vec<Duration>>,
}

/// Runs `n` bots in `room` (or the first room, or a new one) until Ctrl-C.
pub async fn run(
    server: &str,
    n: usize,
    room: Option<&str>,
    name: Option<&str>,
) -> Result<(), String> {
    let server = server.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let unreachable = |e: reqwest::Error| {
        format!(
            "cannot reach the lobby at {server} ({e}); start it with `cargo run -p game-server`"
        )
    };
    let room = match room {
        Some(r) => r.to_owned(),
        None => {
            let rooms: Vec<RoomView> = http
                .get(format!("{server}/rooms"))
                .send()
                .await
                .map_err(unreachable)?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            match rooms.first() {
                Some(r) => r.id.clone(),
                None => {
                    let r: Value = http
                        .post(format!("{server}/rooms"))
                        .json(&json!({ "name": "bots" }))
                        .send()
                        .await
                        .map_err(unreachable)?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?;
                    r["id"].as_str().unwrap_or_default().to_owned()
                }
            }
        }
    };
    println!("{n} bots joining room {room} on {server}; Ctrl-C stops them");
    let stats = Arc::new(Stats::default());
    let prefix = name.unwrap_or("bot");
    for i in 0..n {
        // The process id keeps two bot runs in one room from taking each other's names.
        let name = format!("{prefix}-{}-{i}", std::process::id());
        let r = http
            .post(format!("{server}/rooms/{room}/join"))
            .json(&json!({ "name": name }))
            .send()
            .await
            .map_err(unreachable)?;
        if !r.status().is_success() {
            let body: Value = r.json().await.unwrap_or_default();
            return Err(format!(
                "joining room {room} failed: {}",
                body["error"].as_str().unwrap_or("?")
            ));
        }
        let ticket: Ticket = r.json().await.map_err(|e| e.to_string())?;
        tokio::spawn(bot(ticket, i as u64, stats.clone()));
    }
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => println!("{}", summary(&stats, n, started.elapsed())),
            _ = tokio::signal::ctrl_c() => {
                println!("{}", summary(&stats, n, started.elapsed()));
                return Ok(());
            }
        }
    }
}

fn summary(stats: &Stats, n: usize, elapsed: Duration) -> String {
    let mut rtts = std::mem::take(&mut *stats.rtts.lock().unwrap());
    rtts.sort();
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .map_or("-".to_owned(), |d| {
                format!("{:.1}", d.as_secs_f64() * 1000.0)
            })
    };
    format!(
        "[{:>4}s] bots {}/{n} online | inputs sent {} | messages in {} | rtt p50 {} ms p99 {} ms | errors {}",
        elapsed.as_secs(),
        stats.online.load(Ordering::Relaxed),
        stats.sent.load(Ordering::Relaxed),
        stats.received.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        stats.errors.load(Ordering::Relaxed),
    )
}

/// One bot: connects, walks at random five times a second, chats now and then;
/// reconnects when the connection drops.
async fn bot(ticket: Ticket, id: u64, stats: Arc<Stats>) {
    let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut seq = crate::net::first_seq();
    loop {
        let options = ConnectOptions::login(ticket.login.clone(), ticket.token.clone());
        let Ok(client) = Client::connect(&ticket.ws_url, options).await else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let Ok(mut room) = client
            .subscribe(&ticket.topic, SubscribeOptions::default())
            .await
        else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        stats.online.fetch_add(1, Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                m = room.recv() => match m {
                    Some(_) => { stats.received.fetch_add(1, Ordering::Relaxed); }
                    None => break,
                },
                _ = tick.tick() => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    seq += 1;
                    let input = if rng % 25 == 0 {
                        json!({ "type": "chat", "text": format!("beep {seq}"), "seq": seq })
                    } else {
                        let (dx, dy) = [(1, 0), (-1, 0), (0, 1), (0, -1)][(rng % 4) as usize];
                        json!({ "type": "move", "dx": dx, "dy": dy, "seq": seq })
                    };
                    let started = Instant::now();
                    if client.send(&ticket.inbox, input.to_string()).await.is_err() {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    stats.rtts.lock().unwrap().push(started.elapsed());
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        stats.online.fetch_sub(1, Ordering::Relaxed);
    }
}
