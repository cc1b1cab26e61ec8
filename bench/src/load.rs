//! The load generator: players who join rooms, connect over WebSocket, and send a move at
//! a steady rate; every input's latency is the time until its own answer (the first
//! output carrying its `input_seq` and `input_from`) comes back.

use futures_util::{SinkExt, StreamExt};
use game_server_less::proto::{RoomView, Ticket};
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How many players, in rooms of what size, sending how often, for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    /// Players in all (CCU).
    pub players: usize,
    /// Players per room.
    pub room_size: usize,
    /// Inputs each player sends a second.
    pub rate: f64,
    /// Inputs sent before this are not measured.
    pub warmup: Duration,
    /// How long inputs are measured.
    pub secs: Duration,
    /// How long to wait for the last answers once sending stops.
    pub drain: Duration,
    /// The STOMP heart-beats players agree, both ways, as real clients do; `None`:
    /// none.
    pub heartbeat: Option<Duration>,
}

/// Where one player connects.
#[derive(Debug, Clone)]
pub(crate) enum Seat {
    /// STOMP over WebSocket with a ticket from the lobby.
    Stomp(Box<Ticket>),
    /// STOMP over WebSocket to the relay (the broker alone): the room's topic is both
    /// where moves go and where answers come from.
    Relay {
        /// The player's name (its STOMP login).
        name: String,
        /// `ws://…/ws`.
        url: String,
        /// `/topic/room.ROOM`.
        topic: String,
    },
    /// The floor's plain JSON over WebSocket.
    Floor {
        /// The player's name.
        name: String,
        /// `ws://…/ws?room=…&player=…`.
        url: String,
    },
}

/// `POST {lobby}/rooms`: a new room's id.
async fn create_room(http: &reqwest::Client, lobby: &str, name: &str) -> Result<String, String> {
    let room: RoomView = http
        .post(format!("{lobby}/rooms"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("creating a room: {e}"))?
        .json()
        .await
        .map_err(|e| format!("creating a room: {e}"))?;
    Ok(room.id)
}

/// `POST {lobby}/rooms/{room}/join` as `name`: its ticket.
async fn join(
    http: &reqwest::Client,
    lobby: &str,
    room: &str,
    name: &str,
) -> Result<Ticket, String> {
    http.post(format!("{lobby}/rooms/{room}/join"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("joining {name}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("joining {name}: {e}"))
}

/// Creates the rooms and joins every player through the lobby at `lobby`.
pub(crate) async fn seats_via_lobby(lobby: &str, w: &Workload) -> Result<Vec<Seat>, String> {
    let http = reqwest::Client::new();
    let rooms = w.players.div_ceil(w.room_size);
    let mut ids = Vec::with_capacity(rooms);
    for _ in 0..rooms {
        ids.push(create_room(&http, lobby, "bench").await?);
    }
    let joins = (0..w.players).map(|i| {
        let (http, room) = (http.clone(), ids[i / w.room_size].clone());
        async move {
            let ticket = join(&http, lobby, &room, &format!("p{i}")).await?;
            Ok::<_, String>(Seat::Stomp(Box::new(ticket)))
        }
    });
    futures_util::stream::iter(joins)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Seats on the floor at `ws` (`ws://HOST:PORT/ws`).
pub(crate) fn seats_on_floor(ws: &str, w: &Workload) -> Vec<Seat> {
    (0..w.players)
        .map(|i| Seat::Floor {
            name: format!("p{i}"),
            url: format!("{ws}?room=r{}&player=p{i}", i / w.room_size),
        })
        .collect()
}

/// Seats on the relay at `ws` (`ws://HOST:PORT/ws`).
pub(crate) fn seats_on_relay(ws: &str, w: &Workload) -> Vec<Seat> {
    (0..w.players)
        .map(|i| Seat::Relay {
            name: format!("p{i}"),
            url: ws.to_owned(),
            topic: format!("/topic/room.r{}", i / w.room_size),
        })
        .collect()
}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outcome {
    /// Latencies of the measured inputs' answers, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Inputs sent in all, warm-up included.
    pub sent: u64,
    /// Inputs sent in the measured window.
    pub measured: u64,
    /// Inputs that never got an answer.
    pub lost: u64,
    /// Inputs answered twice (the same kind of output under two room seqs).
    pub doubled: u64,
    /// Answers that came after the answer to a later input of the same player, by the
    /// same subscription.
    pub out_of_order: u64,
    /// Messages players received in the measured window.
    pub deliveries: u64,
    /// The measured window.
    pub window: Duration,
    /// CPU the server's processes used in the window.
    pub server_cpu: Duration,
    /// CPU the generator used in the window.
    pub generator_cpu: Duration,
    /// Players that could not connect or were disconnected, with the first reasons.
    pub failures: Vec<String>,
}

impl Outcome {
    /// The `p`-th percentile latency (0 < p ≤ 1), in milliseconds.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        let l = &self.latencies_us;
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i] as f64 / 1000.0
    }

    /// Whether every input was answered exactly once, in order, and every player stayed.
    pub(crate) fn clean(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.out_of_order == 0 && self.failures.is_empty()
    }
}

struct Conn {
    ws: Ws,
    name: String,
    /// The STOMP destination inputs go to; `None` on the floor.
    inbox: Option<String>,
    /// On the relay, a player sends its move as the answer the room would make of it.
    relay: bool,
}

async fn connect(seat: Seat, heartbeat: Option<Duration>) -> Result<Conn, String> {
    let url = match &seat {
        Seat::Stomp(t) => t.ws_url.clone(),
        Seat::Relay { url, .. } | Seat::Floor { url, .. } => url.clone(),
    };
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let every = heartbeat.map_or(0, |h| h.as_millis());
    let connect = |login: &str, passcode: &str| {
        format!(
            "CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}\nheart-beat:{every},{every}\n\n\0"
        )
    };
    let (name, inbox, relay, frames) = match seat {
        Seat::Floor { name, .. } => {
            return Ok(Conn {
                ws,
                name,
                inbox: None,
                relay: false,
            })
        }
        Seat::Stomp(t) => {
            let frames = vec![
                connect(&t.login, &t.token),
                format!("SUBSCRIBE\nid:0\ndestination:{}\n\n\0", t.topic),
                format!(
                    "SUBSCRIBE\nid:1\ndestination:{}\nreceipt:ready\n\n\0",
                    t.private
                ),
            ];
            (t.player, t.inbox, false, frames)
        }
        Seat::Relay { name, topic, .. } => {
            let frames = vec![
                connect(&name, "-"),
                format!("SUBSCRIBE\nid:0\ndestination:{topic}\nreceipt:ready\n\n\0"),
            ];
            (name, topic, true, frames)
        }
    };
    for f in frames {
        ws.feed(Message::text(f)).await.map_err(|e| e.to_string())?;
    }
    ws.flush().await.map_err(|e| e.to_string())?;
    // CONNECTED, then the receipt: the subscriptions are in place.
    loop {
        let frame = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("{name}: {e}")),
            None => return Err(format!("{name}: the server closed the connection")),
        };
        if frame.starts_with("ERROR") {
            return Err(format!("{name}: {}", frame.replace('\0', "")));
        }
        if frame.starts_with("RECEIPT") {
            break;
        }
    }
    Ok(Conn {
        ws,
        name,
        inbox: Some(inbox),
        relay,
    })
}

/// When a player sends, and when the run measures.
#[derive(Debug, Clone, Copy)]
struct Plan {
    first: Instant,
    period: Duration,
    measure_from: Instant,
    stop_at: Instant,
    drain_until: Instant,
    /// A heart-beat goes when nothing else went for this long.
    heartbeat: Option<Duration>,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    sent: u64,
    measured: u64,
    lost: u64,
    doubled: u64,
    out_of_order: u64,
    deliveries: u64,
    failure: Option<String>,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    seq: Option<u64>,
    input_seq: Option<u64>,
    #[serde(borrow)]
    input_from: Option<Cow<'a, str>>,
}

/// The JSON body of what the server sent (a STOMP MESSAGE's body, or the floor's
/// text) and the subscription it came by (1 for the player's private destination, 0
/// otherwise). Order holds within a subscription: a broker need not interleave two
/// subscriptions in the order their messages were published.
fn body(text: &str, stomp: bool) -> Result<Option<(usize, &str)>, String> {
    if !stomp {
        return Ok(Some((0, text)));
    }
    if text.starts_with("ERROR") {
        return Err(text.replace('\0', ""));
    }
    if !text.starts_with("MESSAGE") {
        return Ok(None); // a heart-beat or a receipt
    }
    Ok(text.split_once("\n\n").map(|(headers, b)| {
        let private =
            headers.contains("\nsubscription:1\n") || headers.ends_with("\nsubscription:1");
        (usize::from(private), b.trim_end_matches(['\0', '\n', '\r']))
    }))
}

async fn play(mut conn: Conn, plan: Plan) -> Tally {
    let mut t = Tally::default();
    // Per input (seq - 1): when it was sent, and its first answer (room seq, kind).
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut answers: Vec<Option<(u64, String)>> = Vec::new();
    // The latest input answered, by subscription.
    let mut last_answered = [0u64; 2];
    let mut unanswered = 0usize;
    let mut next_send = plan.first;
    let mut last_sent = Instant::now();
    let stomp = conn.inbox.is_some();
    loop {
        let sending = next_send < plan.stop_at;
        if !sending && (unanswered == 0 || Instant::now() >= plan.drain_until) {
            break;
        }
        let mut wake = if sending { next_send } else { plan.drain_until };
        let beat = plan
            .heartbeat
            .filter(|_| stomp)
            .map(|every| last_sent + every);
        wake = wake.min(beat.unwrap_or(wake));
        tokio::select! {
            biased;
            message = conn.ws.next() => {
                let now = Instant::now();
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                        Ok(s) => s.into(),
                        Err(_) => continue,
                    },
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => { t.failure = Some(format!("{}: {e}", conn.name)); break; }
                    None => { t.failure = Some(format!("{}: disconnected", conn.name)); break; }
                };
                let (channel, body) = match body(&text, stomp) {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e) => { t.failure = Some(format!("{}: {e}", conn.name)); break; }
                };
                if now >= plan.measure_from && now < plan.stop_at {
                    t.deliveries += 1;
                }
                // One output, or a batching room's several in order (a JSON array).
                let outs: Vec<Output> = if body.trim_start().starts_with('[') {
                    serde_json::from_str(body).unwrap_or_default()
                } else {
                    serde_json::from_str(body).map(|out| vec![out]).unwrap_or_default()
                };
                for out in outs {
                    let (Some(input), Some(from)) = (out.input_seq, out.input_from) else { continue };
                    if from != conn.name || input == 0 || input as usize > answers.len() {
                        continue;
                    }
                    let (room_seq, kind) = (out.seq.unwrap_or(0), out.kind.unwrap_or_default());
                    match &answers[input as usize - 1] {
                        None => {
                            let sent = sent_at[input as usize - 1];
                            if sent >= plan.measure_from && sent < plan.stop_at {
                                t.latencies_us.push((now - sent).as_micros() as u64);
                            }
                            if input < last_answered[channel] {
                                t.out_of_order += 1;
                            }
                            last_answered[channel] = last_answered[channel].max(input);
                            answers[input as usize - 1] = Some((room_seq, kind.into_owned()));
                            unanswered -= 1;
                        }
                        Some((seq, first)) if *first == kind && *seq != room_seq => t.doubled += 1,
                        Some(_) => {} // a repeat of the same output, or another output of it
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if beat.is_some_and(|beat| beat <= wake) && wake < next_send {
                    if let Err(e) = conn.ws.send(Message::text("\n")).await {
                        t.failure = Some(format!("{}: sending a heart-beat: {e}", conn.name));
                        break;
                    }
                    last_sent = Instant::now();
                    continue;
                }
                if !sending {
                    continue;
                }
                let seq = sent_at.len() as u64 + 1;
                let dx = if seq % 2 == 1 { 1 } else { -1 };
                let json = if conn.relay {
                    // What the room would answer, sent by the player itself.
                    let name = &conn.name;
                    format!(r#"{{"type":"moved","player":"{name}","x":{dx},"y":1,"seq":{seq},"input_seq":{seq},"input_from":"{name}"}}"#)
                } else {
                    format!(r#"{{"type":"move","seq":{seq},"dx":{dx},"dy":0}}"#)
                };
                let frame = match &conn.inbox {
                    Some(inbox) => format!("SEND\ndestination:{inbox}\ncontent-type:application/json\n\n{json}\0"),
                    None => json,
                };
                let now = Instant::now();
                if let Err(e) = conn.ws.send(Message::text(frame)).await {
                    t.failure = Some(format!("{}: sending: {e}", conn.name));
                    break;
                }
                last_sent = now;
                sent_at.push(now);
                answers.push(None);
                unanswered += 1;
                t.sent += 1;
                if now >= plan.measure_from && now < plan.stop_at {
                    t.measured += 1;
                }
                next_send += plan.period;
            }
        }
    }
    t.lost = unanswered as u64;
    let _ = conn.ws.close(None).await;
    t
}

/// Connects every seat, runs the workload, and tallies it; `server` are the server's
/// process ids, whose CPU is measured over the window.
pub(crate) async fn run(seats: Vec<Seat>, w: &Workload, server: &[u32]) -> Outcome {
    let mut outcome = Outcome::default();
    let connected: Vec<Result<Conn, String>> =
        futures_util::stream::iter(seats.into_iter().map(|seat| connect(seat, w.heartbeat)))
            .buffer_unordered(64)
            .collect()
            .await;
    let mut conns = Vec::new();
    for c in connected {
        match c {
            Ok(c) => conns.push(c),
            Err(e) => outcome.failures.push(e),
        }
    }
    let period = Duration::from_secs_f64(1.0 / w.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + w.warmup;
    let stop_at = measure_from + w.secs;
    let players = conns.len().max(1) as f64;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            // Spread the players' sends evenly over one period.
            let plan = Plan {
                first: start + period.mul_f64(i as f64 / players),
                period,
                measure_from,
                stop_at,
                drain_until: stop_at + w.drain,
                heartbeat: w.heartbeat,
            };
            tokio::spawn(play(conn, plan))
        })
        .collect();
    let me = std::process::id();
    tokio::time::sleep_until(measure_from).await;
    let (server0, me0) = (crate::procfs::cpu_of(server), crate::procfs::cpu(me));
    tokio::time::sleep_until(stop_at).await;
    outcome.server_cpu = crate::procfs::cpu_of(server).saturating_sub(server0);
    outcome.generator_cpu = crate::procfs::cpu(me).saturating_sub(me0);
    outcome.window = w.secs;
    for task in tasks {
        let t = task.await.unwrap_or_default();
        outcome.latencies_us.extend(t.latencies_us);
        outcome.sent += t.sent;
        outcome.measured += t.measured;
        outcome.lost += t.lost;
        outcome.doubled += t.doubled;
        outcome.out_of_order += t.out_of_order;
        outcome.deliveries += t.deliveries;
        outcome.failures.extend(t.failure);
    }
    outcome.latencies_us.sort_unstable();
    outcome
}

/// Creates `rooms` rooms with a player each (who joins through the lobby and never
/// connects); returns each room's id and the player's token.
pub(crate) async fn occupied_rooms(
    lobby: &str,
    rooms: usize,
) -> Result<Vec<(String, String)>, String> {
    let http = reqwest::Client::new();
    let one = |i: usize| {
        let http = http.clone();
        async move {
            let room = create_room(&http, lobby, &format!("idle{i}")).await?;
            let ticket = join(&http, lobby, &room, &format!("v{i}")).await?;
            Ok::<_, String>((room, ticket.token))
        }
    };
    futures_util::stream::iter((0..rooms).map(one))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Every player of [`occupied_rooms`] leaves: the rooms live on with nobody in them.
pub(crate) async fn leave_rooms(lobby: &str, seats: &[(String, String)]) -> Result<(), String> {
    let http = reqwest::Client::new();
    let leave = |(room, token): &(String, String)| {
        let http = http.clone();
        let url = format!("{lobby}/rooms/{room}/leave");
        let token = token.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|_| ())
                .map_err(|e| format!("leaving: {e}"))
        }
    };
    futures_util::stream::iter(seats.iter().map(leave))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// A counter or gauge from the server's `/metrics` (0 if it has none).
pub(crate) async fn metric(lobby: &str, name: &str) -> u64 {
    let Ok(text) = reqwest::get(format!("{lobby}/metrics")).await else {
        return 0;
    };
    let text = text.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
