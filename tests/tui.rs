//! The real client binary in tmux against a real server: keys in, screen out. A second
//! player, over STOMP, chats; the first sees it.

use e2e_tests::{temp_dir, Player, Server, Tmux};
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
