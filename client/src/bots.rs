//! Headless players for any game: each joins through the [`LobbyClient`], connects over
//! STOMP, and sends an input the game makes from a random number five times a second,
//! with a one-line summary every two seconds. For demos, smoke tests and load.
//! Client side: it builds without the `server` feature.
//!
//! ```no_run
//! # async fn demo() -> game_server_less_client::Result<()> {
//! use game_server_less_client::bots::{self, BotOptions};
//! use serde_json::json;
//!
//! let options = BotOptions::new("http://127.0.0.1:8080", 2);
//! let summary = bots::run(options, |dice: u64| json!({ "type": "add", "by": dice % 3 })).await?;
//! assert_eq!(summary.errors, 0);
//! # Ok(()) }
//! ```

use crate::proto::{Input, Matchmake, Ticket};
use crate::{LobbyClient, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stomp::{Client, ConnectOptions, SubscribeOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct BotOptions {
    /// The lobby's URL, or several lobbies' separated by commas.
    pub server: String,
    /// How many bots.
    pub bots: usize,
    /// The room to join; when `None`, each bot quick plays (`POST /matchmake`).
    pub room: Option<String>,
    /// Names are `PREFIX-PID-I`.
    pub prefix: String,
    /// Time between one bot's inputs.
    pub every: Duration,
    /// Stop after this long (and print the summary); run until Ctrl-C when `None`.
    pub run_for: Option<Duration>,
}

impl BotOptions {
    /// `bots` bots on the lobby at `server`, five inputs a second each, until Ctrl-C.
    pub fn new(server: &str, bots: usize) -> BotOptions {
        BotOptions {
            server: server.to_owned(),
            bots,
            room: None,
            prefix: "bot".into(),
            every: Duration::from_millis(200),
            run_for: None,
        }
    }
}

/// What the bots did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bots connected at the end.
    pub online: u64,
    /// Inputs the broker confirmed.
    pub sent: u64,
    /// Messages the bots received from the room.
    pub received: u64,
    /// Connections or sends that failed.
    pub errors: u64,
}

#[derive(Default)]
struct Stats {
    online: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    rtts: Mutex<Vec<Duration>>,
}

impl Stats {
    fn summary(&self) -> Summary {
        Summary {
            online: self.online.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// The status line; takes the round trips measured since the last one.
    fn line(&self, n: usize, elapsed: Duration) -> String {
        let mut rtts = std::mem::take(&mut *self.rtts.lock().unwrap());
        rtts.sort();
        let pct = |p: f64| {
            let i = ((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1));
            rtts.get(i).map_or("-".to_owned(), |d| {
                format!("{:.1}", d.as_secs_f64() * 1000.0)
            })
        };
        let s = self.summary();
        format!(
            "[{:>4}s] bots {}/{n} online | inputs sent {} | messages in {} | rtt p50 {} ms p99 {} ms | errors {}",
            elapsed.as_secs(),
            s.online,
            s.sent,
            s.received,
            pct(0.5),
            pct(0.99),
            s.errors,
        )
    }
}

/// Runs the bots until Ctrl-C or `options.run_for`; each input is `input(random)`.
/// Returns what they did; fails only when the lobby cannot be used at all.
pub async fn run<I, F>(options: BotOptions, input: F) -> Result<Summary>
where
    I: Serialize + 'static,
    F: Fn(u64) -> I + Send + Sync + 'static,
{
    let lobby = LobbyClient::new(&options.server)?;
    let n = options.bots;
    let target = match &options.room {
        Some(room) => format!("joining room {room}"),
        None => "quick-playing".to_owned(),
    };
    println!("{n} bots {target} on {}; Ctrl-C stops them", lobby.url());
    let stats = Arc::new(Stats::default());
    let input = Arc::new(input);
    for i in 0..n {
        // The process id keeps two bot runs in one room from taking each other's names.
        let name = format!("{}-{}-{i}", options.prefix, std::process::id());
        let ticket = match &options.room {
            Some(room) => lobby.join(room, &name, None).await?,
            None => lobby.quick_play(&Matchmake::named(&name)).await?,
        };
        let bot = bot(
            ticket,
            i as u64,
            options.every,
            stats.clone(),
            input.clone(),
        );
        tokio::spawn(bot);
    }
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.tick().await;
    let deadline = async {
        match options.run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = every.tick() => println!("{}", stats.line(n, started.elapsed())),
            _ = tokio::signal::ctrl_c() => break,
            _ = &mut deadline => break,
        }
    }
    println!("{}", stats.line(n, started.elapsed()));
    Ok(stats.summary())
}

/// One bot: connects, sends an input every `every`, counts what the room says;
/// reconnects when the connection drops, and follows the room's moves to another room
/// (a `transferred` event on its own destination) with the ticket they bring.
async fn bot<I, F>(mut ticket: Ticket, id: u64, every: Duration, stats: Arc<Stats>, input: Arc<F>)
where
    I: Serialize + 'static,
    F: Fn(u64) -> I + Send + Sync + 'static,
{
    let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut seq = crate::proto::first_seq();
    loop {
        let options = ConnectOptions::login(ticket.login.clone(), ticket.token.clone());
        let Ok(client) = Client::connect_first(&ticket.ws_endpoints(), options).await else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let subscribed = async {
            let room = client.subscribe(&ticket.topic, SubscribeOptions::default());
            let private = client.subscribe(&ticket.private, SubscribeOptions::default());
            Ok::<_, stomp::Error>((room.await?, private.await?))
        };
        let Ok((mut room, mut private)) = subscribed.await else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        stats.online.fetch_add(1, Ordering::Relaxed);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                m = room.recv() => match m {
                    Some(_) => { stats.received.fetch_add(1, Ordering::Relaxed); }
                    None => break,
                },
                m = private.recv() => match m.map(|m| transferred(m.body())) {
                    Some(Some(moved)) => {
                        ticket = moved;
                        let _ = client.disconnect().await;
                        break;
                    }
                    Some(None) => {}
                    None => break,
                },
                _ = tick.tick() => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    seq += 1;
                    let body = serde_json::to_string(&Input { seq, input: input(rng) })
                        .expect("an input serializes as JSON");
                    let started = Instant::now();
                    if client.send(&ticket.inbox, body).await.is_err() {
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

/// The ticket a `transferred` event brings, if `body` holds one.
fn transferred(body: &[u8]) -> Option<Ticket> {
    let messages = crate::proto::envelopes::<serde_json::Value>(body).ok()?;
    messages
        .into_iter()
        .find_map(|m| match serde_json::from_value(m) {
            Ok(crate::proto::RoomEvent::Transferred { ticket }) => Some(*ticket),
            _ => None,
        })
}

/// The command line of a game's `--bot` mode.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Headless players: each joins a room and sends an input five times a second.")]
pub struct BotArgs {
    /// How many bots.
    #[arg(long = "bot", value_name = "N")]
    pub bots: usize,
    /// The game server's lobby URL; several lobbies separated by commas.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "GSL_SERVER")]
    pub server: String,
    /// The room to join [default: each bot quick plays: a seat in an open room, or a
    /// new one].
    #[arg(long)]
    pub room: Option<String>,
    /// The bots' name prefix.
    #[arg(long, default_value = "bot")]
    pub name: String,
    /// Stop after this many seconds, and fail unless every bot sent and heard something.
    #[arg(long = "for", value_name = "SECS")]
    pub run_for: Option<u64>,
}

impl BotArgs {
    /// The options these arguments ask for.
    pub fn options(&self) -> BotOptions {
        BotOptions {
            room: self.room.clone(),
            prefix: self.name.clone(),
            run_for: self.run_for.map(Duration::from_secs),
            ..BotOptions::new(&self.server, self.bots)
        }
    }
}

/// Whether the command line asks for the `--bot N` mode (spelt `--bot N` or `--bot=N`,
/// before any `--`), for a game's `main` to choose between its server and [`run_from_args`],
/// which then parses the whole command line as [`BotArgs`].
///
/// ```no_run
/// # async fn serve() -> game_server_less_client::Result<()> { Ok(()) }
/// # async fn demo() -> game_server_less_client::Result<()> {
/// use game_server_less_client::bots;
///
/// if bots::wanted() {
///     bots::run_from_args(|dice: u64| serde_json::json!({ "type": "add", "by": dice % 3 })).await?;
/// } else {
///     serve().await?; // the game's server: game_server_less::run(lobby, msg)
/// }
/// # Ok(()) }
/// ```
pub fn wanted() -> bool {
    asks_for_bots(std::env::args_os().skip(1))
}

fn asks_for_bots(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .take_while(|a| a != "--")
        .any(|a| a == "--bot" || a.to_str().is_some_and(|a| a.starts_with("--bot=")))
}

/// A game's `--bot N` mode: parses [`BotArgs`] from the command line, runs the bots, and
/// with `--for` checks that every bot is online, sent inputs and heard the room.
pub async fn run_from_args<I, F>(input: F) -> Result<Summary>
where
    I: Serialize + 'static,
    F: Fn(u64) -> I + Send + Sync + 'static,
{
    use clap::Parser;
    let args = BotArgs::parse();
    let summary = run(args.options(), input).await?;
    if args.run_for.is_some() {
        let n = args.bots as u64;
        if summary.online < n || summary.sent < n || summary.received == 0 || summary.errors > 0 {
            return Err(crate::Error::Protocol(format!(
                "the bots did not all play: {summary:?}"
            )));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_transfer_is_found_alone_or_in_a_batch() {
        let ticket = serde_json::json!({
            "room": "r2", "player": "ann", "ws_url": "ws://h/ws", "tcp_url": "tcp://h:1",
            "login": "ann", "token": "t", "expires": 1, "inbox": "/i", "topic": "/t",
            "private": "/p"
        });
        let event = serde_json::json!({ "type": "transferred", "ticket": ticket, "seq": 3 });
        let alone = transferred(event.to_string().as_bytes()).unwrap();
        assert_eq!(alone.room, "r2");
        let batch = serde_json::json!([{ "type": "moved", "seq": 2 }, event]);
        assert_eq!(
            transferred(batch.to_string().as_bytes()).unwrap().room,
            "r2"
        );
        assert!(transferred(br#"[{"type":"moved","seq":2}]"#).is_none());
        assert!(transferred(b"not json").is_none());
    }

    fn asks(args: &[&str]) -> bool {
        asks_for_bots(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn bot_mode_is_asked_for_in_every_spelling_clap_reads() {
        assert!(asks(&["--bot", "2"]));
        assert!(asks(&["--server", "http://h:1", "--bot=2"]));
        assert!(!asks(&[]));
        assert!(!asks(&["--listen", "127.0.0.1:9000"]));
        assert!(!asks(&["--botany"]));
        assert!(!asks(&["--", "--bot", "2"]));
        let parsed = BotArgs::try_parse_from(["game", "--bot=2", "--for", "5"]).unwrap();
        assert_eq!((parsed.bots, parsed.run_for), (2, Some(5)));
    }
}
