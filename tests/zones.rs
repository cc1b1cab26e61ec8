//! The MMO's fights and zones against a real server, on small maps: two real clients in
//! tmux (one fights an NPC, the other walks through a portal into the other zone, a room
//! of its own), and `POST /travel` with what a hostile client would send.

use e2e_tests::{http, temp_dir, Player, Server, Tmux};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Small maps (`GSL_MAPS`, read when the process first makes a world): the meadow is
/// `#NS...SO#`, so the first player starts next to an NPC and the second next to the
/// portal to the caves.
fn use_test_maps(dir: &Path) {
    let maps = dir.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    std::fs::write(maps.join("meadow.txt"), "#########\n#NS...SO#\n#########\n").unwrap();
    std::fs::write(maps.join("caves.txt"), "#######\n#S..O.#\n#######\n").unwrap();
    std::env::set_var("GSL_MAPS", &maps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_fights_an_npc_and_another_walks_through_a_portal_into_the_caves() {
    let dir = temp_dir("tui-mmo");
    use_test_maps(&dir);
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let tmux = Tmux {
        socket: format!("gsl-test-mmo-{}", std::process::id()),
    };
    let online = |s: &str| s.contains(" online | L1 HP ");
    tmux.client(&dir, &server, "ann", &room);
    tokio::task::block_in_place(|| tmux.wait_for("ann", "ann's game", online));
    tmux.client(&dir, &server, "bob", &room);
    let bob = tokio::task::block_in_place(|| tmux.wait_for("bob", "bob's game", online));
    assert!(
        bob.contains(" meadow "),
        "the map is titled with its zone:\n{bob}"
    );
    assert!(
        bob.contains('O') && bob.contains('N'),
        "a portal and an NPC:\n{bob}"
    );

    // Ann strikes the NPC beside her until it falls; it strikes back meanwhile.
    let slain = |s: &str| s.contains("you slew N1");
    for _ in 0..6 {
        tmux.keys("ann", "Left");
        std::thread::sleep(Duration::from_millis(150));
        if slain(&tmux.screen("ann")) {
            break;
        }
    }
    let ann = tokio::task::block_in_place(|| tmux.wait_for("ann", "the NPC to fall", slain));
    assert!(ann.contains("you hit N1 for"), "{ann}");
    let seen = |s: &str| s.contains("ann slew N1 (+10 xp)");
    tokio::task::block_in_place(|| tmux.wait_for("bob", "bob to see the fight", seen));

    // Bob steps into the portal and comes out in the caves, in a room of their own.
    tmux.keys("bob", "Right");
    let caves = |s: &str| s.contains(" caves ") && s.contains("you are in the caves");
    let bob = tokio::task::block_in_place(|| tmux.wait_for("bob", "bob in the caves", caves));
    assert!(bob.contains(" online | L1 HP "), "still playing:\n{bob}");
    let gone = |s: &str| s.contains("bob left for the caves");
    tokio::task::block_in_place(|| tmux.wait_for("ann", "ann to see bob go", gone));
    let rooms = server.get_json("/rooms").await;
    let names: Vec<&str> = rooms
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"caves"), "{names:?}");
    let board = server.get_json("/leaderboard").await;
    assert_eq!(board["leaders"][0]["player"], "ann", "{board}");
    assert_eq!(board["leaders"][0]["xp"], 10, "{board}");
    drop(tmux);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn travel_moves_only_a_player_in_a_portal_and_refuses_everything_else() {
    let dir = temp_dir("travel");
    use_test_maps(&dir);
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let travel = |token: Option<&str>, body: &str| {
        let mut request = http()
            .post(format!("{}/travel", server.http))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default(),
            )
        }
    };
    let mut ann = Player::join(&server, &room, "ann", true).await; // next to the NPC
    let mut bob = Player::join(&server, &room, "bob", true).await; // next to the portal
    let token = bob.ticket.token.clone();

    let (status, body) = travel(None, r#"{"input_seq":1}"#).await;
    assert_eq!(status, 401, "no token: {body}");
    let key = ann.ticket.player_key.clone().unwrap();
    let (status, body) = travel(Some(&key), r#"{"input_seq":1}"#).await;
    assert_eq!(status, 400, "a player key is not a ticket: {body}");
    for bad in [
        "",
        "[",
        "null",
        r#"{"input_seq":"x"}"#,
        r#"{"input_seq":-1}"#,
        r#"{"zone":"caves"}"#,
        "[5]",
    ] {
        let (status, body) = travel(Some(&token), bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("input_seq"),
            "{body}"
        );
    }
    let huge = format!(r#"{{"input_seq":1,"pad":"{}"}}"#, "x".repeat(2_000_000));
    let (status, _) = travel(Some(&token), &huge).await;
    assert_eq!(status, 413, "a body over the lobby's limit");

    // A chat is applied and saved, but it put nobody in a portal.
    let said = bob.send(json!({ "type": "chat", "text": "hi" })).await;
    bob.next_on_room("chat").await;
    let (status, body) = travel(Some(&token), &json!({ "input_seq": said }).to_string()).await;
    assert_eq!(status, 409, "{body}");

    // Into the portal: the lobby moves bob to the caves with his hit points.
    let step = bob.send(json!({ "type": "move", "dx": 1, "dy": 0 })).await;
    let left = bob.next_on_room("travelled").await;
    assert_eq!(
        (left["zone"].as_str(), left["input_seq"].as_u64()),
        (Some("caves"), Some(step))
    );
    let (status, ticket) = travel(Some(&token), &json!({ "input_seq": step }).to_string()).await;
    assert_eq!(status, 200, "{ticket}");
    assert_ne!(ticket["room"], room.as_str());
    let (status, body) = travel(Some(&token), &json!({ "input_seq": step }).to_string()).await;
    assert_eq!(status, 401, "the old ticket went with the old room: {body}");
    let ticket = serde_json::from_value(ticket).unwrap();
    let mut caves = Player::join_with(ticket).await;
    caves.send(json!({ "type": "look" })).await;
    let world = caves.next_private("welcome").await;
    assert_eq!(world["zone"], "caves", "{world}");
    assert_eq!(world["players"]["bob"]["hp"], 10, "{world}");
    let view = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(view["players_online"], 1, "bob left the meadow: {view}");
    let gone = ann.next_on_room("travelled").await;
    assert_eq!(
        (gone["player"].as_str(), gone["zone"].as_str()),
        (Some("bob"), Some("caves"))
    );
    server.stop().await;
}
