//! `--bot N`: headless players that random-walk and chat, for demos and load, with a
//! one-line summary every two seconds (the framework's [`bots`] with this game's inputs).

use game_protocol::{Chat, In, Move};
use game_server_less_client::bots::{self, BotOptions};

/// A bot's next input: mostly a random step, now and then a chat line.
pub(crate) fn input(dice: u64) -> In {
    if dice % 25 == 0 {
        In::Chat(Chat {
            text: format!("beep {}", dice % 1000),
        })
    } else {
        let (dx, dy) = [(1, 0), (-1, 0), (0, 1), (0, -1)][(dice % 4) as usize];
        In::Move(Move { dx, dy })
    }
}

/// Runs `n` bots in `room` (or wherever quick play seats each) until Ctrl-C.
pub(crate) async fn run(
    server: &str,
    n: usize,
    room: Option<&str>,
    name: Option<&str>,
) -> Result<(), String> {
    let options = BotOptions {
        room: room.map(str::to_owned),
        prefix: name.unwrap_or("bot").to_owned(),
        ..BotOptions::new(server, n)
    };
    bots::run(options, input).await.map_err(|e| e.to_string())?;
    Ok(())
}
