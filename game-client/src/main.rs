//! The terminal MMO's client.
//!
//! Run `cargo run -p game-server` in one terminal, then `cargo run -p game-client` in
//! another (or two). `--help` lists the options; `--bot N` plays N headless players;
//! `--replay MATCH` plays a recorded match back.

mod app;
mod bot;
mod keys;
mod net;
mod replay;
mod ui;

use app::{Action, App};
use clap::Parser;
use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use std::time::Duration;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    about = "The game-server-less terminal MMO: join a room, walk about, pick things up, chat."
)]
struct Args {
    /// The game server's lobby URL; several lobbies of one deployment separated by commas
    /// (each call goes to the next while one cannot be reached).
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "GSL_SERVER")]
    server: String,
    /// Your player name (asked on start when not given).
    #[arg(long)]
    name: Option<String>,
    /// Join this room id straight away.
    #[arg(long)]
    room: Option<String>,
    /// Watch this room id as a spectator: the map and its events, nothing to send.
    #[arg(long, value_name = "ROOM", conflicts_with_all = ["room", "bot"])]
    watch: Option<String>,
    /// Play N headless bots (random walk and chat) instead of the terminal UI.
    #[arg(long, value_name = "N")]
    bot: Option<usize>,
    /// Watch a recorded match (an id from GET /matches) on the game screen, with a time
    /// bar: space pauses, + and - change the speed, left and right go 5 s back or on,
    /// 0 to 9 jump to that tenth, q quits.
    #[arg(long, value_name = "MATCH", conflicts_with_all = ["room", "bot", "watch"])]
    replay: Option<String>,
    /// Whose view a replay shows: the room's messages and that player's own [default:
    /// the first to join]. A private room's record needs that player's key, which this
    /// client keeps from its joins.
    #[arg(long = "as", value_name = "NAME", requires = "replay")]
    as_player: Option<String>,
    /// How fast a replay starts: 1, 2, 4, 8 or 16 times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16), requires = "replay")]
    speed: u32,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(n) = args.bot {
        if let Err(e) = bot::run(&args.server, n, args.room.as_deref(), args.name.as_deref()).await
        {
            eprintln!("game-client: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(id) = &args.replay {
        // Fetched before the terminal is taken, so that an error prints plainly.
        let timeline = match fetch(&args, id).await {
            Ok(timeline) => timeline,
            Err(e) => {
                eprintln!("game-client: {e}");
                std::process::exit(1);
            }
        };
        let terminal = ratatui::init();
        let result = watch_replay(terminal, &args, timeline).await;
        ratatui::restore();
        if let Err(e) = result {
            eprintln!("game-client: {e}");
            std::process::exit(1);
        }
        return;
    }
    let terminal = ratatui::init(); // raw mode and the alternate screen; restored on panic too
    let result = run(terminal, &args).await;
    ratatui::restore();
    if let Err(e) = result {
        eprintln!("game-client: {e}");
        std::process::exit(1);
    }
}

/// The record of match `id` from the lobby, as the timeline of the player `--as` names.
async fn fetch(args: &Args, id: &str) -> Result<replay::Timeline, String> {
    let lobby =
        game_server_less_client::LobbyClient::new(&args.server).map_err(|e| e.to_string())?;
    let keys = keys::Keys::load();
    let key = args
        .as_player
        .as_deref()
        .and_then(|name| keys.get(lobby.url(), name));
    let record = lobby.match_record(id, key).await.map_err(|e| {
        format!("cannot fetch match {id}: {e} (GET /matches lists the recorded ones)")
    })?;
    replay::Timeline::of(&record, args.as_player.as_deref())
}

/// Plays `timeline` back on the game screen until q.
async fn watch_replay(
    mut terminal: ratatui::DefaultTerminal,
    args: &Args,
    timeline: replay::Timeline,
) -> std::io::Result<()> {
    let fresh = {
        let (server, room, player) = (
            args.server.clone(),
            timeline.room.clone(),
            timeline.player.clone(),
        );
        move || App::replaying(&server, &room, &player)
    };
    let mut app = fresh();
    let mut replay = replay::Replay::new(timeline, args.speed);
    let mut keys = EventStream::new();
    let mut frame = tokio::time::interval(Duration::from_millis(50));
    let mut last = tokio::time::Instant::now();
    while !app.quit {
        app.replay_bar = Some(replay.bar(terminal.size()?.width as usize));
        terminal.draw(|f| f.render_widget(&app, f.area()))?;
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) if key.kind == crossterm::event::KeyEventKind::Press => {
                    use crossterm::event::KeyCode;
                    let length = replay.timeline.length;
                    match key.code {
                        KeyCode::Char(' ') => replay.paused = !replay.paused,
                        KeyCode::Char('+') | KeyCode::Char('=') => replay.change_speed(true),
                        KeyCode::Char('-') => replay.change_speed(false),
                        KeyCode::Left => replay.seek(&mut app, replay.at.saturating_sub(5_000), &fresh),
                        KeyCode::Right => replay.seek(&mut app, replay.at + 5_000, &fresh),
                        KeyCode::Home => replay.seek(&mut app, 0, &fresh),
                        KeyCode::End => replay.seek(&mut app, length, &fresh),
                        KeyCode::Char(d @ '0'..='9') => {
                            let tenth = u64::from(d.to_digit(10).unwrap_or(0));
                            replay.seek(&mut app, length * tenth / 10, &fresh);
                        }
                        _ => {
                            let _ = app.on_key(key); // q quits, ? helps
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            },
            _ = frame.tick() => {
                let now = tokio::time::Instant::now();
                replay.advance(&mut app, (now - last).as_millis() as u64);
                last = now;
            }
        }
    }
    Ok(())
}

async fn run(mut terminal: ratatui::DefaultTerminal, args: &Args) -> std::io::Result<()> {
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let net = net::Net::new(&args.server, events_tx).map_err(std::io::Error::other)?;
    let mut app = App::new(&args.server, args.name.as_deref());
    if let Some(room) = &args.watch {
        app = App::watching(&args.server);
        net.request(Action::Watch(room.clone()), &app.name);
    } else if args.name.is_some() {
        match &args.room {
            Some(room) => net.request(Action::Join(room.clone()), &app.name),
            None => net.request(Action::Refresh, &app.name),
        }
    }
    let mut keys = EventStream::new();
    let mut frame = tokio::time::interval(Duration::from_millis(50));
    let mut lobby_refresh = tokio::time::interval(Duration::from_secs(2));
    // Ticks missed while in a game are not made up in a burst back in the lobby.
    lobby_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !app.quit {
        terminal.draw(|f| f.render_widget(&app, f.area()))?;
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) => {
                    if let Some(action) = app.on_key(key) {
                        net.request(action, &app.name);
                    }
                }
                Some(Ok(_)) => {} // resize and the like: the next draw fits the new size
                Some(Err(e)) => return Err(e),
                None => break,
            },
            Some(event) = events.recv() => {
                if let Some(action) = app.on_net(event) {
                    net.request(action, &app.name);
                }
                // Apply whatever else has arrived before drawing again.
                while let Ok(event) = events.try_recv() {
                    if let Some(action) = app.on_net(event) {
                        net.request(action, &app.name);
                    }
                }
            }
            _ = lobby_refresh.tick(), if app.screen == app::Screen::Lobby => {
                net.request(Action::Refresh, &app.name);
            }
            _ = frame.tick() => {}
        }
    }
    net.request(Action::Quit, &app.name);
    Ok(())
}
