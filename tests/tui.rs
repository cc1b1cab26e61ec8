//! The real client binary in tmux against a real server: keys in, screen out. A second
//! player, over STOMP, chats; the first sees it.

use e2e_tests::{client_binary, temp_dir, Player, Server, Tmux};
use serde_json::json;

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
    tmux.client(&dir, &server, "ann", &room);

    let online = |s: &str| position(s).is_some() && s.contains(" online | ");
    let screen = tokio::task::block_in_place(|| tmux.wait_for("ann", "the game screen", online));
    let start = position(&screen).unwrap();
    let keys = std::fs::read_to_string(dir.join("client-config-ann/keys.json")).unwrap();
    assert!(
        keys.contains("k1.ann."),
        "the client keeps ann's player key: {keys}"
    );
    assert!(screen.contains('@'), "{screen}");

    // The spawn points have floor to their right.
    tmux.keys("ann", "Right");
    let moved = |s: &str| position(s) == Some((start.0 + 1, start.1));
    tokio::task::block_in_place(|| tmux.wait_for("ann", "the move", moved));

    let mut bob = Player::join(&server, &room, "bob", true).await;
    bob.send(json!({ "type": "chat", "text": "hello from bob" }))
        .await;
    let screen = tokio::task::block_in_place(|| {
        tmux.wait_for("ann", "bob's chat line", |s| {
            s.contains("bob: hello from bob")
        })
    });
    assert!(screen.contains("2 online"), "{screen}");

    // q leaves the room, q again quits, and the terminal is given back.
    tmux.keys("ann", "q");
    tokio::task::block_in_place(|| tmux.wait_for("ann", "the lobby", |s| s.contains("Rooms on")));
    tmux.keys("ann", "q");
    let after = tokio::task::block_in_place(|| {
        tmux.wait_for("ann", "the client to exit", |s| {
            s.contains("client-exited-")
        })
    });
    assert!(after.contains("client-exited-0"), "{after}");
    assert!(
        !after.contains("Rooms on"),
        "the terminal is back from the alternate screen:\n{after}"
    );
    drop(tmux);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_match_plays_back_in_the_terminal_with_a_time_bar() {
    let dir = temp_dir("tui-replay");
    let server = Server::game(&dir).await;
    let (room, owner) = server.create_owned_room().await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    let mut bob = Player::join(&server, &room, "bob", true).await;
    ann.send(json!({ "type": "move", "dx": 1, "dy": 0 })).await;
    ann.send(json!({ "type": "chat", "text": "hello from the past" }))
        .await;
    bob.send(json!({ "type": "chat", "text": "see you in the replay" }))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    bob.send(json!({ "type": "chat", "text": "the last word" }))
        .await;
    ann.next_on_room("chat").await;
    server.lobby().end_room(&room, &owner).await.unwrap();

    let tmux = Tmux {
        socket: format!("gsl-test-replay-{}", std::process::id()),
    };
    let command = format!(
        "{} --server {} --replay {room} --as ann --speed 2; echo client-exited-$?; sleep 60",
        client_binary().display(),
        server.http
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "r",
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);
    let done = |s: &str| s.contains("bob: the last word") && s.contains("■ 2×");
    let screen = tokio::task::block_in_place(|| tmux.wait_for("r", "the end of the match", done));
    println!("the replay's last screen:\n{screen}");
    assert!(screen.contains("ann: hello from the past"), "{screen}");
    assert!(
        screen.contains("replay | ann at") && screen.contains("space pause"),
        "{screen}"
    );
    assert!(position(&screen).is_some(), "ann's view: {screen}");

    // Paused (space), 0 goes back to the start, before the chats, and stays there.
    tmux.keys("r", "Space");
    tmux.keys("r", "0");
    let start = |s: &str| s.contains("❚❚ 2×  0:00 /") && !s.contains("hello from the past");
    tokio::task::block_in_place(|| tmux.wait_for("r", "the start, paused", start));
    tmux.keys("r", "End");
    tokio::task::block_in_place(|| {
        tmux.wait_for("r", "the end again", |s| s.contains("bob: the last word"))
    });
    tmux.keys("r", "q");
    let after = tokio::task::block_in_place(|| {
        tmux.wait_for("r", "the client to exit", |s| s.contains("client-exited-"))
    });
    assert!(after.contains("client-exited-0"), "{after}");

    // A match the lobby has no record of: a plain error, before the terminal is taken.
    let out = std::process::Command::new(client_binary())
        .args(["--server", &server.http, "--replay", "no-such-match"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot fetch match no-such-match"),
        "{err}"
    );
    let out = std::process::Command::new(client_binary())
        .args(["--server", &server.http, "--replay", &room, "--as", "cyd"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cyd did not play"), "{err}");
    drop(tmux);
    server.stop().await;
}
