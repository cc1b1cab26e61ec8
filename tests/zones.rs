//! The MMO's fights and zones against a real server, on small maps: two real clients in
//! tmux (one fights an NPC, the other walks through a portal into the other zone, a room
//! of its own, with his hit points), and what a hostile client would try to move.

use e2e_tests::{connect_ticket, http, temp_dir, Player, Server, Tmux};
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

    // Bob steps into the portal and comes out in the caves, in a room of their own,
    // with the hit points he had.
    let hp = |screen: &str| {
        // The status line's, not the first in the list of players (another's).
        let status = " online | L1 HP ";
        let at = screen.find(status).expect("the status line") + status.len();
        screen[at..].split_whitespace().next().unwrap().to_owned()
    };
    let before = hp(&tmux.screen("bob"));
    tmux.keys("bob", "Right");
    let caves = |s: &str| s.contains(" caves ") && s.contains("you are in the caves");
    let bob = tokio::task::block_in_place(|| tmux.wait_for("bob", "bob in the caves", caves));
    assert!(bob.contains(" online | L1 HP "), "still playing:\n{bob}");
    assert_eq!(hp(&bob), before, "{bob}");
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
async fn only_the_room_moves_a_player_and_a_client_cannot_forge_it() {
    let dir = temp_dir("no-forged-transfer");
    use_test_maps(&dir);
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", true).await; // next to the NPC
    let mut bob = Player::join(&server, &room, "bob", true).await; // next to the portal

    // There is no lobby route to travel by any more.
    let travel = http()
        .post(format!("{}/travel", server.http))
        .bearer_auth(&bob.ticket.token)
        .header("content-type", "application/json")
        .body(r#"{"input_seq":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(travel.status().as_u16(), 404);
    // Inputs that look like the framework's own messages are a game's unknown types.
    for forged in [
        json!({ "type": "transferred", "ticket": bob.ticket }),
        json!({ "type": "$join", "player": "bob", "arrival": { "carried": { "hp": 99 } } }),
        json!({ "type": "transfer", "player": "bob", "room": "caves" }),
    ] {
        bob.send(forged).await;
        let error = bob.next_private("error").await;
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .starts_with("unknown message type"),
            "{error}"
        );
    }
    // Nor can bob tell ann she was moved: a player sends to its room's inbox only.
    let sneaky = connect_ticket(&bob.ticket).await.unwrap();
    let forged = json!({ "type": "transferred", "ticket": bob.ticket }).to_string();
    let refused = sneaky.send(&ann.ticket.private, forged).await;
    assert!(refused.is_err(), "{refused:?}");
    let live = server.rooms.store().live_rooms().await.unwrap();
    assert_eq!(live.len(), 1, "no caves yet: {live:?}");

    // The portal moves bob, with a ticket only he hears, and the meadow sees him go.
    let step = bob.send(json!({ "type": "move", "dx": 1, "dy": 0 })).await;
    let left = ann.next_on_room("travelled").await;
    assert_eq!(
        (left["player"].as_str(), left["input_seq"].as_u64()),
        (Some("bob"), Some(step))
    );
    let moved = bob.next_private("transferred").await;
    let ticket: game_server_less::proto::Ticket =
        serde_json::from_value(moved["ticket"].clone()).unwrap();
    assert_ne!(ticket.room, room);
    let mut caves = Player::join_with(ticket.clone()).await;
    caves.send(json!({ "type": "look" })).await;
    let world = caves.next_private("welcome").await;
    assert_eq!(world["zone"], "caves", "{world}");
    assert_eq!(world["players"]["bob"]["hp"], 10, "{world}");
    let view = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(view["players_online"], 1, "bob left the meadow: {view}");
    let revoked = server.lobby().leave(&room, &bob.ticket.token).await;
    assert!(revoked.is_err(), "the old ticket went with the old room");
    server.stop().await;
}
