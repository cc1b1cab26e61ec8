//! The matchmaking benchmark: players quick play (`POST /matchmake`) at a steady rate,
//! open loop (a request goes out on schedule whether or not the last was answered),
//! while a number of rooms stand open. Each player takes its ticket, connects over
//! WebSocket, and waits for the room's first message to it (the MMO's `welcome`); then
//! it goes (the benchmark sets the grace to 0: its seat frees at once, so rooms do not
//! fill with idle players whose ticks would outweigh the matchmaking). Measured: quick plays asked and seated a second,
//! time to the ticket (p50, p99), time from the request to the first room message (p99:
//! the `welcome` its `look` asks for, as the game's client does on connecting), and the
//! server's CPU per seat, at each number of open rooms.

use crate::procfs;
use futures_util::StreamExt;
use game_server_less::proto::{Matchmake, Ticket};
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One measurement: quick plays at `rate` a second for `secs`, with `open_rooms` rooms
/// open beforehand.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Quick plays a second.
    pub rate: f64,
    /// How long they are asked for.
    pub secs: Duration,
    /// Rooms open (empty, of four seats) before the first.
    pub open_rooms: usize,
}

/// What one measurement saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    /// Quick plays asked.
    pub asked: u64,
    /// Tickets answered.
    pub seated: u64,
    /// Quick plays that failed (an error answer, a connection that failed, no first
    /// message in time).
    pub failed: u64,
    /// Times to the ticket, microseconds, sorted.
    pub ticket_us: Vec<u64>,
    /// Times from the request to the first room message, microseconds, sorted.
    pub first_us: Vec<u64>,
    /// The server's CPU while quick plays were asked and answered.
    pub cpu: Duration,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Measured {
    /// The `p`th percentile of `of`, in milliseconds.
    pub(crate) fn ms(of: &[u64], p: f64) -> f64 {
        if of.is_empty() {
            return f64::NAN;
        }
        let i = ((of.len() as f64 * p).ceil() as usize).clamp(1, of.len()) - 1;
        of[i] as f64 / 1000.0
    }
}

/// Opens `n` empty rooms of the server's kind (`POST /rooms`): quick play's
/// candidates, asleep until someone is seated in them.
pub(crate) async fn open_rooms(lobby: &str, n: usize) -> Result<(), String> {
    let client = game_server_less::LobbyClient::with_timeout(lobby, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let creations = (0..n).map(|i| {
        let client = client.clone();
        async move {
            let body = serde_json::json!({ "name": "open", "meta": { "opened": i } });
            let room: Result<serde_json::Value, _> = client.post("/rooms", None, &body).await;
            room.map(drop)
        }
    });
    let results: Vec<_> = futures_util::stream::iter(creations)
        .buffer_unordered(16)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<(), _>>()
        .map_err(|e| format!("opening rooms: {e}"))
}

/// Asks quick plays at `plan.rate` for `plan.secs` against the lobby at `lobby`, each
/// player playing until the room's first message; `server` are the server's processes.
pub(crate) async fn run(lobby: &str, plan: &Plan, server: &[u32]) -> Measured {
    let client = game_server_less::LobbyClient::with_timeout(lobby, Duration::from_secs(30))
        .expect("a lobby client");
    let measured = Arc::new(Mutex::new(Measured::default()));
    let every = Duration::from_secs_f64(1.0 / plan.rate.max(0.1));
    let total = (plan.rate * plan.secs.as_secs_f64()).round() as u64;
    let cpu0 = procfs::cpu_of(server);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(started + every.mul_f64(i as f64)).await;
        let (client, measured) = (client.clone(), measured.clone());
        // Names of their own at each rate: a name belongs to whoever first played it.
        let name = format!("m{}x{i}", plan.rate as u64);
        tasks.push(tokio::spawn(async move {
            let result = one(&client, name).await;
            let mut m = measured.lock().unwrap();
            m.asked += 1;
            match result {
                Ok((ticket, first)) => {
                    m.seated += 1;
                    m.ticket_us.push(ticket.as_micros() as u64);
                    m.first_us.push(first.as_micros() as u64);
                }
                Err(e) => {
                    m.failed += 1;
                    m.first_error.get_or_insert(e);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut m = std::mem::take(&mut *measured.lock().unwrap());
    m.elapsed = started.elapsed();
    m.cpu = procfs::cpu_of(server).saturating_sub(cpu0);
    m.ticket_us.sort_unstable();
    m.first_us.sort_unstable();
    m
}

/// One player: quick play, connect, the first room message. Its times to the ticket and
/// to the message.
async fn one(
    client: &game_server_less::LobbyClient,
    name: String,
) -> Result<(Duration, Duration), String> {
    let asked = Instant::now();
    let ticket: Ticket = client
        .quick_play(&Matchmake::named(name))
        .await
        .map_err(|e| format!("quick play: {e}"))?;
    let to_ticket = asked.elapsed();
    let options = ConnectOptions::login(ticket.login.clone(), ticket.token.clone());
    let stomp = Client::connect(&ticket.ws_url, options)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let mut private = stomp
        .subscribe(&ticket.private, SubscribeOptions::default())
        .await
        .map_err(|e| format!("subscribing: {e}"))?;
    // What the game's client does on connecting: ask for the whole world.
    stomp
        .send_nowait(&ticket.inbox, r#"{"type":"look","seq":1}"#)
        .map_err(|e| format!("sending: {e}"))?;
    private
        .recv_timeout(Duration::from_secs(10))
        .await
        .map_err(|e| format!("waiting for the first message: {e}"))?;
    let to_first = asked.elapsed();
    let _ = stomp.disconnect().await;
    Ok((to_ticket, to_first))
}
