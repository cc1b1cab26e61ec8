//! The real client binary in tmux against a real server: keys in, screen out. A second
//! player, over STOMP, chats; the first sees it.

use e2e_tests::{temp_dir, Player, Server};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The client binary, refused if it is older than its sources (it would test old code).
fn client_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug/game-client");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build -p game-client` first",
                bin.display()
            )
        });
    for dir in [
        "game-client/src",
        "framework/src",
        "framework/src/stomp",
        "framework/src/broker",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let modified = entry.unwrap().metadata().unwrap().modified().unwrap();
            assert!(
                modified <= built,
                "{} is older than {dir}: run `cargo build -p game-client` first",
                bin.display()
            );
        }
    }
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

    /// Waits until `ok` holds; returns the screen then.
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
    // After the client, the shell says how it exited, on whatever screen the client left.
    // Its player keys go to the test's own config directory.
    let command = format!(
        "GSL_CONFIG_DIR={} {} --server {} --name ann --room {room}; echo client-exited-$?; sleep 60",
        dir.join("client-config").display(),
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

    let online = |s: &str| position(s).is_some() && s.contains(" online | room");
    let screen = tokio::task::block_in_place(|| tmux.wait_for("the game screen", online));
    let start = position(&screen).unwrap();
    let keys = std::fs::read_to_string(dir.join("client-config/keys.json")).unwrap();
    assert!(
        keys.contains("k1.ann."),
        "the client keeps ann's player key: {keys}"
    );
    assert!(screen.contains('@'), "{screen}");

    // The spawn points have floor to their right.
    tmux.run(&["send-keys", "-t", "game", "Right"]);
    let moved = |s: &str| position(s) == Some((start.0 + 1, start.1));
    tokio::task::block_in_place(|| tmux.wait_for("the move", moved));

    let mut bob = Player::join(&server, &room, "bob", true).await;
    bob.send(json!({ "type": "chat", "text": "hello from bob" }))
        .await;
    let screen = tokio::task::block_in_place(|| {
        tmux.wait_for("bob's chat line", |s| s.contains("bob: hello from bob"))
    });
    assert!(screen.contains("2 online"), "{screen}");

    // q leaves the room, q again quits, and the terminal is given back.
    tmux.run(&["send-keys", "-t", "game", "q"]);
    tokio::task::block_in_place(|| tmux.wait_for("the lobby", |s| s.contains("Rooms on")));
    tmux.run(&["send-keys", "-t", "game", "q"]);
    let after = tokio::task::block_in_place(|| {
        tmux.wait_for("the client to exit", |s| s.contains("client-exited-"))
    });
    assert!(after.contains("client-exited-0"), "{after}");
    assert!(
        !after.contains("Rooms on"),
        "the terminal is back from the alternate screen:\n{after}"
    );
    drop(tmux);
    server.stop().await;
}
