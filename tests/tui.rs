//! The real client binary in tmux against a real server: keys in, screen out. A second
//! player, over STOMP, chats; the first sees it.

use e2e_tests::{temp_dir, Player, Server};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn client_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/game-client");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p game-client` first",
        bin.display()
    );
    bin
}

/// A tmux server of its own, so the test never touches a user's sessions.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (apt-get install tmux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "game"])
    }

    /// Waits until the screen satisfies `ok`; returns it.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "waited 15 s for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

/// The player's position from the status line's "ann at X,Y".
fn position(screen: &str) -> Option<(i32, i32)> {
    let at = screen.split("ann at ").nth(1)?;
    let (x, rest) = at.split_once(',')?;
    let y: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((x.trim().parse().ok()?, y.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_moves_and_sees_another_players_chat_in_the_terminal() {
    let dir = temp_dir("tui");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let tmux = Tmux {
        socket: format!("gsl-test-{}", std::process::id()),
    };
    let command = format!(
        "{} --server {} --name ann --room {room}",
        client_binary().display(),
        server.http
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "game",
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);

    let screen = tokio::task::block_in_place(|| {
        tmux.wait_for("the game screen", |s| {
            position(s).is_some() && s.contains("online")
        })
    });
    let start = position(&screen).unwrap();
    assert!(screen.contains('@'), "{screen}");

    // The spawn points have floor to their right.
    tmux.run(&["send-keys", "-t", "game", "Right"]);
    let screen = tokio::task::block_in_place(|| {
        tmux.wait_for("the move", |s| position(s) == Some((start.0 + 1, start.1)))
    });
    assert!(screen.contains("ann at"), "{screen}");

    let mut bob = Player::join(&server, &room, "bob", true).await;
    bob.send(json!({ "type": "chat", "text": "hello from bob" }))
        .await;
    let screen = tokio::task::block_in_place(|| {
        tmux.wait_for("bob's chat line", |s| s.contains("bob: hello from bob"))
    });
    assert!(screen.contains("2 online"), "{screen}");

    // q leaves the room, q again quits; the terminal is given back.
    tmux.run(&["send-keys", "-t", "game", "q"]);
    tokio::task::block_in_place(|| tmux.wait_for("the lobby", |s| s.contains("Rooms on")));
    drop(tmux);
    server.stop().await;
}
