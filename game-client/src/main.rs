//! The terminal MMO's client.
//!
//! Run `cargo run -p game-server` in one terminal, then `cargo run -p game-client` in
//! another (or two). `--help` lists the options; `--bot N` plays N headless players.

mod app;
mod bot;
mod keys;
mod net;
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
    let terminal = ratatui::init(); // raw mode and the alternate screen; restored on panic too
    let result = run(terminal, &args).await;
    ratatui::restore();
    if let Err(e) = result {
        eprintln!("game-client: {e}");
        std::process::exit(1);
    }
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
