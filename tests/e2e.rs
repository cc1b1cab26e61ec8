//! The game server end to end: the lobby over HTTP, the game over STOMP, on real sockets.

use e2e_tests::{http, json_of, next_of, temp_dir, Player, Server, WAIT};
use game_server_less::stomp::Error;
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions};
use game_server_less::{Config, Ctx, Lobby, Msg, RoomCtx};
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// Collects `player`'s room messages from the chat `from` to the chats `until` (both
/// included), in arrival order.
async fn room_log(player: &mut Player, from: &str, until: &[&str]) -> Vec<Value> {
    let mut log = Vec::new();
    let mut started = false;
    let mut pending: HashSet<&str> = until.iter().copied().collect();
    while !pending.is_empty() {
        let m = json_of(
            &player
                .room
                .recv_timeout(WAIT)
                .await
                .expect("room messages keep coming"),
        );
        let text = m["text"].as_str().unwrap_or_default().to_owned();
        started |= text == from;
        if started {
            pending.remove(text.as_str());
            log.push(m);
        }
    }
    log
}

#[tokio::test]
async fn players_see_the_same_room_output_in_the_same_order() {
    let dir = temp_dir("order");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", false).await;
    let mut bob = Player::join(&server, &room, "bob", true).await;
    ann.send(json!({ "type": "chat", "text": "start" })).await;

    let play = |mut p: Player, name: &'static str| async move {
        for i in 0..15 {
            p.send(json!({ "type": "chat", "text": format!("{name}-{i}") }))
                .await;
            let dx = if i % 2 == 0 { 1 } else { -1 };
            p.send(json!({ "type": "move", "dx": dx, "dy": 0 })).await;
        }
        p.send(json!({ "type": "chat", "text": format!("{name}-end") }))
            .await;
        p
    };
    let (a, b) = tokio::join!(play(ann, "ann"), play(bob, "bob"));
    (ann, bob) = (a, b);

    let ann_log = room_log(&mut ann, "start", &["ann-end", "bob-end"]).await;
    let bob_log = room_log(&mut bob, "start", &["ann-end", "bob-end"]).await;
    let shorter = ann_log.len().min(bob_log.len());
    assert_eq!(
        ann_log[..shorter],
        bob_log[..shorter],
        "same outputs, same order"
    );
    for log in [&ann_log, &bob_log] {
        let seqs: Vec<u64> = log.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "no gaps: {seqs:?}"
        );
        for name in ["ann", "bob"] {
            let chats: Vec<&str> = log
                .iter()
                .filter(|m| m["type"] == "chat" && m["player"] == name && m["text"] != "start")
                .map(|m| m["text"].as_str().unwrap())
                .collect();
            let expected: Vec<String> = (0..15)
                .map(|i| format!("{name}-{i}"))
                .chain([format!("{name}-end")])
                .collect();
            assert_eq!(chats, expected, "{name}'s inputs applied in the order sent");
        }
        let moves = log.iter().filter(|m| m["type"] == "moved").count();
        assert!(moves > 0, "moves were broadcast");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_duplicated_input_is_applied_once() {
    let dir = temp_dir("dup");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", false).await;
    let same = json!({ "type": "chat", "text": "once", "seq": 1 }).to_string();
    ann.send_raw(&same).await;
    ann.send_raw(&same).await; // a client retrying after a lost receipt
    ann.send_raw(&json!({ "type": "chat", "text": "after", "seq": 2 }).to_string())
        .await;
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("after") {
        let m = ann.next_on_room("chat").await;
        texts.push(m["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(texts, ["once", "after"]);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_errors_reach_only_the_sender() {
    let dir = temp_dir("errors");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", false).await;
    let mut bob = Player::join(&server, &room, "bob", true).await;
    ann.send(json!({ "type": "teleport" })).await;
    ann.send_raw("{not json").await;
    let seq = ann.send(json!({ "type": "move", "dx": 9, "dy": 9 })).await;
    let unknown = ann.next_private("error").await;
    assert_eq!(unknown["error"], "unknown message type \"teleport\"");
    let bad = ann.next_private("error").await;
    assert!(
        bad["error"].as_str().unwrap().starts_with("invalid JSON"),
        "{bad}"
    );
    let rule = ann.next_private("error").await;
    assert_eq!(rule["input_seq"], seq);
    // Bob heard nothing of it, on either destination, and the room goes on for both.
    bob.send(json!({ "type": "chat", "text": "still here" }))
        .await;
    assert_eq!(ann.next_on_room("chat").await["text"], "still here");
    loop {
        let m = json_of(&bob.room.recv_timeout(WAIT).await.unwrap());
        assert_ne!(m["type"], "error", "{m}");
        if m["text"] == "still here" {
            break;
        }
    }
    bob.send(json!({ "type": "look" })).await; // a private reply marks the end
    loop {
        let m = json_of(&bob.private.recv_timeout(WAIT).await.unwrap());
        assert_ne!(m["type"], "error", "{m}");
        if m["type"] == "welcome" {
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_and_foreign_tokens_are_refused() {
    let dir = temp_dir("tokens");
    let config = Config {
        allow_guest: true,
        ..Server::config(&dir)
    };
    let server = Server::start_with(game_server::lobby(), game_server::msg(), config).await;
    let (one, two) = (server.create_room().await, server.create_room().await);
    let ann = Player::join(&server, &one, "ann", false).await;
    let ticket = &ann.ticket;

    let forged = ticket.token.replace("ann", "bob");
    let refused = Client::connect(&ticket.ws_url, ConnectOptions::login("bob", forged)).await;
    assert!(
        matches!(&refused, Err(Error::Server { message, .. }) if message == "access refused"),
        "{refused:?}"
    );
    let garbage = Client::connect(&ticket.tcp_url, ConnectOptions::login("ann", "x.y.z")).await;
    assert!(garbage.is_err());

    // Ann's own token reaches only her room: not room two, not bob's destination.
    let foreign_topic = format!("/topic/room.{two}");
    let err = ann
        .client
        .subscribe(&foreign_topic, SubscribeOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not subscribe to"), "{err}");
    let c = ann.connect_again().await;
    let err = c
        .send(&format!("/queue/room.{two}"), "{}")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not send to"), "{err}");
    let c = ann.connect_again().await;
    let err = c
        .subscribe(&ticket.inbox, SubscribeOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("may not subscribe to"),
        "players cannot read the inbox: {err}"
    );

    // guest/guest reaches anything but the rooms.
    let guest = Client::connect(&ticket.tcp_url, ConnectOptions::login("guest", "guest"))
        .await
        .unwrap();
    guest.send("/queue/not-a-room", "hi").await.unwrap();
    let err = guest
        .subscribe(&ticket.topic, SubscribeOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("guest may not use room destinations"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test]
async fn ending_a_room_deletes_its_inbox_and_tells_the_players() {
    let dir = temp_dir("end");
    let server = Server::game(&dir).await;
    let (room, owner) = server.create_owned_room().await;
    let mut ann = Player::join(&server, &room, "ann", false).await;
    let delete = |token: Option<&str>| {
        let mut request = http().delete(format!("{}/rooms/{room}", server.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(delete(None).await, 401, "anyone may not end a room");
    assert_eq!(
        delete(Some(&ann.ticket.token)).await,
        403,
        "a player may not"
    );
    let (_, other_owner) = server.create_owned_room().await;
    assert_eq!(
        delete(Some(&other_owner)).await,
        403,
        "another room's owner may not"
    );
    assert_eq!(delete(Some(&owner)).await, 204, "its creator may");
    let ended = ann.next_on_room("room_ended").await;
    assert_eq!(ended["reason"], "ended by the lobby");
    // The worker announces the end, then saves and marks the room ended.
    let started = std::time::Instant::now();
    while server.get_status(&format!("/rooms/{room}")).await != 404 {
        assert!(started.elapsed() < WAIT, "the ended room is still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The inbox is gone: sending to it is an error, and does not bring it back.
    let mut gone = None;
    for _ in 0..50 {
        let c = ann.connect_again().await;
        match c.send(&ann.ticket.inbox, "{}").await {
            Err(e) => {
                gone = Some(e.to_string());
                break;
            }
            Ok(()) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let gone = gone.expect("the inbox is deleted");
    assert!(
        gone.contains(&format!("no queue {}", ann.ticket.inbox)),
        "{gone}"
    );
    server.stop().await;
}

/// Walks `player` to the nearest item and picks it up; returns the item's kind.
async fn pick_up_an_item(player: &mut Player) -> String {
    player.send(json!({ "type": "look" })).await;
    let world = player.next_private("welcome").await;
    let map: Vec<Vec<u8>> = world["map"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().bytes().collect())
        .collect();
    let mut items: Vec<(i64, i64)> = world["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["x"].as_i64().unwrap(), i["y"].as_i64().unwrap()))
        .collect();
    let me = &world["players"][&player.ticket.player];
    let mut at = (me["x"].as_i64().unwrap(), me["y"].as_i64().unwrap());
    for _ in 0..400 {
        let step = first_step(&map, at, &items).expect("an item is reachable");
        player
            .send(json!({ "type": "move", "dx": step.0, "dy": step.1 }))
            .await;
        let outcome = tokio::select! {
            m = next_of(&mut player.room, "moved") => m,
            m = next_of(&mut player.private, "blocked") => m,
        };
        if outcome["type"] == "blocked" {
            tokio::time::sleep(Duration::from_millis(100)).await; // an NPC in the way
            continue;
        }
        if outcome["player"] != player.ticket.player.as_str() {
            continue;
        }
        at = (
            outcome["x"].as_i64().unwrap(),
            outcome["y"].as_i64().unwrap(),
        );
        if items.contains(&at) {
            let picked = player.next_on_room("picked").await;
            return picked["item"].as_str().unwrap().to_owned();
        }
        items.retain(|&i| i != at);
    }
    panic!("no item picked up in 400 steps");
}

/// The first step of a shortest path over floor tiles from `from` to any of `goals`.
fn first_step(map: &[Vec<u8>], from: (i64, i64), goals: &[(i64, i64)]) -> Option<(i64, i64)> {
    let floor = |(x, y): (i64, i64)| {
        map.get(y as usize)
            .and_then(|r| r.get(x as usize))
            .is_some_and(|&t| t != b'#')
    };
    let mut seen = HashSet::from([from]);
    let mut queue = VecDeque::new();
    for d in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
        let next = (from.0 + d.0, from.1 + d.1);
        if floor(next) && seen.insert(next) {
            queue.push_back((next, d));
        }
    }
    while let Some((at, first)) = queue.pop_front() {
        if goals.contains(&at) {
            return Some(first);
        }
        for d in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
            let next = (at.0 + d.0, at.1 + d.1);
            if floor(next) && seen.insert(next) {
                queue.push_back((next, first));
            }
        }
    }
    None
}

#[tokio::test]
async fn user_items_survive_a_server_restart() {
    let dir = temp_dir("items");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", false).await;
    let kind = pick_up_an_item(&mut ann).await;
    let token = ann.ticket.token.clone();
    server.stop().await;

    let server = Server::game(&dir).await;
    let items: Value = http()
        .get(format!("{}/user/items", server.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(items["player"], "ann");
    assert_eq!(items["items"][&kind], 1, "granted once: {items}");
    // The room itself carried on too.
    let rooms: Value = server.get_json("/rooms").await;
    assert_eq!(rooms[0]["id"], room.as_str());
    let status = server.get_status("/user/items").await;
    assert_eq!(status, 401, "no token, no inventory");
    server.stop().await;
}

fn panicky() -> Msg<i64> {
    Msg::new(|| 0)
        .route("type=add", |n: &mut i64, ctx: &mut Ctx, m: Value| {
            *n += m["by"].as_i64().unwrap_or(0);
            ctx.broadcast(&json!({ "type": "total", "n": *n }));
        })
        .route("type=boom", |_: &mut i64, _: &mut Ctx, _: Value| -> () {
            panic!("the handler blew up")
        })
        .route("type=quit", |_: &mut i64, ctx: &mut Ctx, _: Value| {
            ctx.end_room("game over");
        })
}

#[tokio::test]
async fn a_handler_can_end_its_room() {
    let dir = temp_dir("quit");
    let server = Server::start(Lobby::new(), panicky(), &dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", false).await;
    ann.send(json!({ "type": "add", "by": 1 })).await;
    ann.send(json!({ "type": "quit" })).await;
    assert_eq!(
        ann.next_on_room("total").await["n"],
        1,
        "outputs before the end arrive"
    );
    assert_eq!(ann.next_on_room("room_ended").await["reason"], "game over");
    let started = std::time::Instant::now();
    while server.broker.has_queue(&ann.ticket.inbox) {
        assert!(started.elapsed() < WAIT, "the inbox is deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rooms: Value = server.get_json("/rooms").await;
    assert_eq!(rooms, json!([]));
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_leaves_the_room_running() {
    let dir = temp_dir("panic");
    let server = Server::start(Lobby::new(), panicky(), &dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    ann.send(json!({ "type": "add", "by": 2 })).await;
    ann.send(json!({ "type": "boom" })).await;
    ann.send(json!({ "type": "add", "by": 3 })).await;
    let err = ann.next_private("error").await;
    assert_eq!(err["error"], "the handler failed: the handler blew up");
    assert_eq!(ann.next_on_room("total").await["n"], 2);
    assert_eq!(ann.next_on_room("total").await["n"], 5);
    let health: Value = server.get_json("/health").await;
    assert_eq!(health["status"], "ok");
    // The all-in-one server counts its rooms and the connections to its broker (the
    // player's and the room worker's).
    assert_eq!(health["rooms"], 1);
    assert!(health["connections"].as_u64().unwrap() >= 2, "{health}");
    server.stop().await;
}

#[tokio::test]
async fn the_lobby_answers_bad_requests_with_json_errors() {
    let dir = temp_dir("lobby");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let cases = [
        (
            "POST",
            "/rooms".to_owned(),
            "{bad json",
            400,
            "invalid JSON body",
        ),
        (
            "POST",
            "/rooms".to_owned(),
            r#"{"name": 7}"#,
            400,
            "invalid JSON body",
        ),
        (
            "POST",
            "/rooms".to_owned(),
            "[null]",
            400,
            "expected an object",
        ),
        ("POST", "/rooms".to_owned(), "7", 400, "expected an object"),
        (
            "POST",
            format!("/rooms/{room}/join"),
            r#"["ann"]"#,
            400,
            "expected an object",
        ),
        (
            "POST",
            format!("/rooms/{room}/join"),
            "{}",
            400,
            "say who joins",
        ),
        (
            "POST",
            format!("/rooms/{room}/join"),
            r#"{"name":"a.b"}"#,
            400,
            "a player name has",
        ),
        (
            "POST",
            format!("/rooms/{room}/join"),
            &"x".repeat(100_000),
            413,
            "the request body is too large",
        ),
        (
            "DELETE",
            "/rooms".to_owned(),
            "",
            405,
            "DELETE is not allowed on /rooms",
        ),
        ("GET", "/rooms?limit=lots".to_owned(), "", 400, "limit"),
        (
            "POST",
            "/rooms/nope/join".to_owned(),
            r#"{"name":"ann"}"#,
            404,
            "no room \"nope\"",
        ),
        (
            "POST",
            format!("/rooms/{room}/leave"),
            "",
            401,
            "missing Authorization",
        ),
        ("GET", "/nowhere".to_owned(), "", 404, "no such route"),
    ];
    for (method, path, body, status, message) in cases {
        let request = match method {
            "POST" => http().post(format!("{}{path}", server.http)),
            "DELETE" => http().delete(format!("{}{path}", server.http)),
            _ => http().get(format!("{}{path}", server.http)),
        };
        let response = request.body(body.to_owned()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(message),
            "{method} {path}: {error}"
        );
    }
    // An optional body may be left out or be null (the OpenAPI description's nullable
    // object); both make a room with the default name.
    for body in ["", "null"] {
        let made = http()
            .post(format!("{}/rooms", server.http))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201, "body {body:?}");
        let view: Value = made.json().await.unwrap();
        assert_eq!(view["name"], "room", "body {body:?}");
    }
    // Joining and leaving show in the room list; a name in use needs its key.
    let first = server.join(&room, "ann").await;
    // With a ticket, a leave whose path is odd or does not decode is answered in JSON.
    for (path, status, message) in [
        ("%E1%BE%926%5C", 403, "your token is for room"),
        ("%FF", 400, "invalid path"),
        ("%E1%BE", 400, "invalid path"),
    ] {
        let response = http()
            .post(format!("{}/rooms/{path}/leave", server.http))
            .bearer_auth(&first.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(message),
            "{path}: {error}"
        );
    }
    let key = first
        .player_key
        .clone()
        .expect("the first join claims the name");
    let taken = http()
        .post(format!("{}/rooms/{room}/join", server.http))
        .json(&json!({ "name": "ann" }))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 403);
    let rejoin = http()
        .post(format!("{}/rooms/{room}/join", server.http))
        .json(&json!({ "name": "ann", "key": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(rejoin.status(), 200, "the key's holder may rejoin");
    let ticket: game_server_less::proto::Ticket = rejoin.json().await.unwrap();
    assert_eq!(ticket.player_key, None, "the key is answered once");
    let view: Value = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(
        (view["players"].clone(), view["players_online"].clone()),
        (json!([]), json!(1))
    );
    assert!(view["players_hidden"]
        .as_str()
        .unwrap()
        .contains("room's players"));
    let seen: Value = http()
        .get(format!("{}/rooms/{room}", server.http))
        .bearer_auth(&ticket.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["players"], json!(["ann"]), "a member sees who is in");
    let stale = server.lobby().leave(&room, &first.token).await;
    assert!(
        matches!(stale, Err(game_server_less::Error::Unauthorized(_))),
        "joining again revoked the first ticket: {stale:?}"
    );
    server.lobby().leave(&room, &ticket.token).await.unwrap();
    let view: Value = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(view["players_online"], 0);
    server.stop().await;
}

#[tokio::test]
async fn inputs_are_applied_exactly_once_when_the_room_worker_dies_mid_stream() {
    let dir = temp_dir("crash");
    let config = Config {
        input_rate: game_server_less::broker::Rate {
            per_second: 100_000,
            burst: 100_000,
        }, // inputs as fast as receipts come back
        ..Server::config(&dir)
    };
    let server = Server::start_with(Lobby::new(), panicky(), config).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    let mut kicks = 0;
    for i in 1..=300 {
        ann.send(json!({ "type": "add", "by": 1 })).await; // accepted: the broker's receipt
        if i % 60 == 0 {
            // The worker loses its broker connection with inputs in flight and unacked
            // (once its replacement from the last kick is connected).
            let started = std::time::Instant::now();
            while server.broker.kick("$worker") == 0 {
                assert!(started.elapsed() < WAIT, "no worker came back");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            kicks += 1;
        }
    }
    assert_eq!(kicks, 5);
    // Every input applied once: the total climbs to exactly 300. Outputs replayed after a
    // restart repeat their room seq, and a client drops those.
    let mut last_seq = 0;
    let mut total = 0;
    while total < 300 {
        let m = ann.next_on_room("total").await;
        let seq = m["seq"].as_u64().unwrap();
        if seq <= last_seq {
            continue;
        }
        assert_eq!(seq, last_seq + 1, "no gap in the room's output");
        last_seq = seq;
        total = m["n"].as_i64().unwrap();
        assert!(total <= 300, "an input was applied twice: total {total}");
    }
    assert_eq!(total, 300);
    let more = ann
        .room
        .recv_timeout(Duration::from_millis(500))
        .await
        .ok()
        .map(|m| json_of(&m));
    assert!(
        more.as_ref()
            .is_none_or(|m| m["n"].as_i64().unwrap_or(0) <= 300),
        "{more:?}"
    );
    server.stop().await;
}

/// A game whose `go` moves its sender to the room named `to`, carrying `carry`; each
/// room lists who arrived with what, and `report` answers that list.
fn mover() -> Msg<Vec<String>> {
    Msg::new(Vec::new)
        .route("type=go", |_: &mut Vec<String>, ctx: &mut Ctx, m: Value| {
            let (me, to) = (ctx.sender().to_owned(), m["to"].as_str().unwrap_or("?"));
            ctx.transfer(&me, to, &m["carry"]);
            ctx.broadcast(&json!({ "type": "went", "player": me }));
        })
        .route(
            "type=report",
            |arrived: &mut Vec<String>, ctx: &mut Ctx, _: Value| {
                ctx.reply(&json!({ "type": "report", "arrived": arrived }));
            },
        )
        .on_join(
            |arrived: &mut Vec<String>, ctx: &mut RoomCtx, player: &str| {
                if let Some(carried) = ctx.arrival().map(|a| a.carried.clone()) {
                    arrived.push(format!("{player}:{carried}"));
                }
            },
        )
}

/// Kicks the room workers off the broker (with their inputs unacked), once they are
/// connected.
async fn kick_workers(server: &Server) {
    let started = std::time::Instant::now();
    while server.broker.kick("$worker") == 0 {
        assert!(started.elapsed() < WAIT, "no worker came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_transfer_replayed_after_the_worker_dies_happens_once() {
    let dir = temp_dir("transfer-replay");
    let config = Config {
        // Slow checkpoints: the worker is surely gone before it saves the `go`.
        timings: game_server_less::worker::Timings {
            checkpoint_every: Duration::from_secs(2),
            ..Default::default()
        },
        ..Server::config(&dir)
    };
    let server = Server::start_with(Lobby::new(), mover(), config).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    let mut bob = Player::join(&server, &room, "bob", true).await;
    ann.send(json!({ "type": "go", "to": "elsewhere", "carry": 7 }))
        .await;
    bob.next_on_room("went").await;
    // Applied, published, not saved: the replacement applies it again.
    kick_workers(&server).await;
    let moved = ann.next_private("transferred").await;
    let ticket: game_server_less::proto::Ticket =
        serde_json::from_value(moved["ticket"].clone()).unwrap();
    assert_ne!(ticket.room, room);
    // Told, perhaps not yet marked done in the outbox: the next worker may carry it out
    // again, which must change nothing.
    kick_workers(&server).await;
    let mut there = Player::join_with(ticket.clone()).await;
    there.send(json!({ "type": "report" })).await;
    let report = there.next_private("report").await;
    assert_eq!(report["arrived"], json!(["ann:7"]), "arrived once, with 7");
    let store = server.rooms.store();
    let live = store.live_rooms().await.unwrap();
    let named: Vec<_> = live.iter().filter(|r| r.name == "elsewhere").collect();
    assert_eq!(named.len(), 1, "{live:?}");
    assert_eq!(store.players(&room).await.unwrap(), ["bob"], "ann left");
    assert_eq!(store.players(&ticket.room).await.unwrap(), ["ann"]);
    let started = std::time::Instant::now();
    while !store.pending_transfers(&room).await.unwrap().is_empty() {
        assert!(started.elapsed() < WAIT, "the outbox empties");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bob goes too, to the same room; his old ticket is revoked.
    bob.send(json!({ "type": "go", "to": "elsewhere", "carry": "x" }))
        .await;
    let moved = bob.next_private("transferred").await;
    assert_eq!(moved["ticket"]["room"], ticket.room.as_str());
    let revoked = server.lobby().leave(&room, &bob.ticket.token).await;
    assert!(revoked.is_err(), "{revoked:?}");
    there.send(json!({ "type": "report" })).await;
    let report = there.next_private("report").await;
    assert_eq!(report["arrived"], json!(["ann:7", "bob:\"x\""]));
    server.stop().await;
}

#[tokio::test]
async fn tickets_outlive_a_server_restart() {
    let dir = temp_dir("secret");
    let lobby = || game_server_less::Lobby::new();
    // No secret given: the server makes one in the data directory and keeps it.
    let config = || Config {
        secret: None,
        ..Server::config(&dir)
    };
    let server = Server::start_with(lobby(), panicky(), config()).await;
    let room = server.create_room().await;
    let ann = server.join(&room, "ann").await;
    server.stop().await;
    let secret = std::fs::read_to_string(dir.join("secret")).unwrap();
    assert_eq!(secret.len(), 64, "a 32-byte random secret, in hex");

    let server = Server::start_with(lobby(), panicky(), config()).await;
    let status = http()
        .get(format!("{}/rooms/{room}", server.http))
        .bearer_auth(&ann.token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        status["players"],
        json!(["ann"]),
        "the old token still proves who ann is"
    );
    let tcp_url = server.rooms.admin().endpoints().tcp_urls[0].clone();
    let options = ConnectOptions::login(ann.login.clone(), ann.token.clone());
    let client = Client::connect(&tcp_url, options).await;
    assert!(
        client.is_ok(),
        "and still opens the broker: {:?}",
        client.err()
    );
    let key = ann.player_key.unwrap();
    let rejoin = http()
        .post(format!("{}/rooms/{room}/join", server.http))
        .json(&json!({ "name": "ann", "key": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(rejoin.status(), 200, "and so does ann's key");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_room_ends_by_itself_and_frees_its_inbox() {
    let dir = temp_dir("idle");
    let mut config = Server::config(&dir);
    config.timings.idle_timeout = Duration::from_secs(1);
    let server = Server::start_with(Lobby::new(), panicky(), config).await;
    let started = std::time::Instant::now(); // before the room's idle clock starts
    let room = server.create_room().await;
    let inbox = format!("/queue/room.{room}");
    assert!(server.broker.has_queue(&inbox));
    loop {
        let status = server.get_status(&format!("/rooms/{room}")).await;
        if status == 404 {
            break;
        }
        assert!(started.elapsed() < WAIT, "the idle room is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before its idle time"
    );
    assert!(!server.broker.has_queue(&inbox), "its inbox is deleted");
    server.stop().await;
}

#[tokio::test]
async fn the_lobby_runs_in_process_without_an_http_port() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let dir = temp_dir("oneshot");
    let running = game_server_less::Server::new(
        Server::config(&dir),
        game_server::lobby(),
        game_server::msg(),
    )
    .start()
    .await
    .unwrap();
    let call = |request: Request<Body>| {
        let router = running.router();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (status, room) = call(
        Request::post("/rooms")
            .body(Body::from(r#"{"name":"in process"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let id = room["id"].as_str().unwrap();
    let (status, ticket) = call(
        Request::post(format!("/rooms/{id}/join"))
            .body(Body::from(r#"{"name":"ann"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, items) = call(
        Request::get("/user/items")
            .header(
                "authorization",
                format!("Bearer {}", ticket["token"].as_str().unwrap()),
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((status, &items["player"]), (200, &json!("ann")));
    assert_eq!(
        call(Request::get("/nowhere").body(Body::empty()).unwrap())
            .await
            .0,
        404
    );
    assert_eq!(
        running
            .rooms()
            .unwrap()
            .list(
                &game_server_less::rooms::Viewer {
                    operator: true,
                    member: None
                },
                0,
                10
            )
            .await
            .unwrap()[0]
            .players,
        ["ann"]
    );
}

/// Records a real session's STOMP traffic, both ways, as seeds for the fuzz targets:
/// `cargo test -p e2e-tests --test e2e -- --ignored record` writes `fuzz/seeds/`.
#[tokio::test]
#[ignore = "writes fuzz/seeds/; run by hand when the protocol changes"]
async fn record_real_traffic_as_fuzz_seeds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("record");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let ticket = server.join(&room, "ann").await;
    // A proxy between the player and the broker that keeps what passes each way.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("tcp://{}", proxy.local_addr().unwrap());
    let upstream = ticket.tcp_url.trim_start_matches("tcp://").to_owned();
    let recorded = tokio::spawn(async move {
        let (mut client, _) = proxy.accept().await.unwrap();
        let mut broker = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut to_client, mut to_broker) = (Vec::new(), Vec::new());
        let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
        loop {
            tokio::select! {
                n = client.read(&mut a) => match n { Ok(0) | Err(_) => break, Ok(n) => { to_broker.extend_from_slice(&a[..n]); broker.write_all(&a[..n]).await.unwrap(); } },
                n = broker.read(&mut b) => match n { Ok(0) | Err(_) => break, Ok(n) => { to_client.extend_from_slice(&b[..n]); client.write_all(&b[..n]).await.unwrap(); } },
            }
        }
        (to_broker, to_client)
    });
    let client = Client::connect(
        &proxy_url,
        ConnectOptions::login(ticket.login.clone(), ticket.token.clone()),
    )
    .await
    .unwrap();
    let mut topic = client
        .subscribe(&ticket.topic, SubscribeOptions::default())
        .await
        .unwrap();
    client
        .subscribe(
            &ticket.private,
            SubscribeOptions::ack(game_server_less::stomp::AckMode::ClientIndividual),
        )
        .await
        .unwrap();
    for (i, input) in [
        json!({"type":"look"}),
        json!({"type":"move","dx":1,"dy":0}),
        json!({"type":"chat","text":"héllo wörld: \\x"}),
    ]
    .iter()
    .enumerate()
    {
        let mut input = input.clone();
        input["seq"] = (i + 1).into();
        client.send(&ticket.inbox, input.to_string()).await.unwrap();
    }
    next_of(&mut topic, "chat").await;
    client.flush().await.unwrap();
    let _ = client.send("/queue/elsewhere", "refused").await;
    let (to_broker, to_client) = recorded.await.unwrap();
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for target in ["frame", "broker"] {
        std::fs::create_dir_all(seeds.join(target)).unwrap();
        std::fs::write(
            seeds.join(target).join("session-to-broker.stomp"),
            &to_broker,
        )
        .unwrap();
    }
    std::fs::write(
        seeds.join("frame").join("session-to-client.stomp"),
        &to_client,
    )
    .unwrap();
    println!(
        "recorded {} bytes to the broker, {} back",
        to_broker.len(),
        to_client.len()
    );
    server.stop().await;
}

/// How many checkpoints `room` has saved.
async fn checkpoint_version(server: &Server, room: &str) -> u64 {
    let checkpoint = server.rooms.store().checkpoint(room).await.unwrap();
    checkpoint.map_or(0, |c| c.version)
}

#[tokio::test]
async fn a_room_nobody_is_in_hibernates_and_wakes_when_someone_joins() {
    let dir = temp_dir("hibernate");
    let server = Server::game(&dir).await;
    let room = server.create_room().await;
    let version = || checkpoint_version(&server, &room);
    let mut ann = Player::join(&server, &room, "ann", true).await;
    ann.next_on_room("npcs").await; // the room ticks: its NPCs wander
    server
        .lobby()
        .leave(&room, &ann.ticket.token)
        .await
        .unwrap();
    // The leave is applied and saved within a checkpoint period; then nothing happens.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let asleep = version().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        version().await,
        asleep,
        "an empty room saved checkpoints (it still ticks)"
    );
    let mut bob = Player::join(&server, &room, "bob", false).await;
    let npcs = bob.next_on_room("npcs").await;
    assert!(npcs["npcs"].is_array(), "{npcs}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(version().await > asleep, "the woken room saves again");
    server.stop().await;
}

#[tokio::test]
async fn ticks_that_change_nothing_save_no_checkpoint() {
    let dir = temp_dir("still");
    // Ticks count to 3 and then change nothing; an input changes the state again.
    let msg = Msg::new(|| 0)
        .tick(
            Duration::from_millis(20),
            |n: &mut i64, ctx: &mut RoomCtx| {
                if *n < 3 {
                    *n += 1;
                    ctx.broadcast(&json!({ "type": "count", "n": *n }));
                }
            },
        )
        .route("type=add", |n: &mut i64, ctx: &mut Ctx, _: Value| {
            *n += 1;
            ctx.broadcast(&json!({ "type": "count", "n": *n }));
        });
    let server = Server::start(Lobby::new(), msg, &dir).await;
    let room = server.create_room().await;
    let version = || checkpoint_version(&server, &room);
    let mut ann = Player::join(&server, &room, "ann", true).await;
    while ann.next_on_room("count").await["n"] != 3 {}
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = version().await;
    assert!(still > 0, "the join and the counting were saved");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        version().await,
        still,
        "ticks that changed nothing were saved"
    );
    ann.send(json!({ "type": "add" })).await;
    assert_eq!(ann.next_on_room("count").await["n"], 4);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(version().await, still + 1, "a change is saved once");
    server.stop().await;
}

#[tokio::test]
async fn ticks_alone_checkpoint_at_a_slower_pace_than_inputs() {
    let dir = temp_dir("tick-pace");
    // Every tick changes the state (as wandering NPCs do); an input changes it too.
    let msg = Msg::new(|| 0)
        .tick(Duration::from_millis(20), |n: &mut i64, _: &mut RoomCtx| {
            *n += 1;
        })
        .route("type=add", |n: &mut i64, ctx: &mut Ctx, _: Value| {
            *n += 1000;
            ctx.broadcast(&json!({ "type": "count", "n": *n }));
        });
    let server = Server::start(Lobby::new(), msg, &dir).await;
    let room = server.create_room().await;
    let version = || checkpoint_version(&server, &room);
    let mut ann = Player::join(&server, &room, "ann", true).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // the join is saved
    let before = version().await;
    assert!(before > 0, "the join was saved");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ticked = version().await;
    assert!(
        ticked - before <= 1,
        "ticks alone saved {} checkpoints in 1 s (every 250 ms would be 4)",
        ticked - before
    );
    ann.send(json!({ "type": "add" })).await;
    assert!(ann.next_on_room("count").await["n"].as_i64().unwrap() > 1000);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let input_saved = version().await;
    assert!(input_saved > ticked, "an input is saved at the full pace");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        version().await > input_saved,
        "the ticks' changes are saved too, every 2 s"
    );
    server.stop().await;
}

/// A counter whose every add is broadcast twice (the total, then who added) and
/// answered to the sender, with rooms of kind `batched` under a 1 s batch window and
/// rooms of kind `plain` without one.
fn counters() -> game_server_less::Kinds {
    let counter = || {
        Msg::new(|| 0).route("type=add", |n: &mut i64, ctx: &mut Ctx, _: Value| {
            *n += 1;
            ctx.broadcast(&json!({ "type": "total", "n": *n }));
            let by = ctx.sender().to_owned();
            ctx.broadcast(&json!({ "type": "added", "by": by }));
            ctx.reply(&json!({ "type": "thanks", "n": *n }));
        })
    };
    let window = game_server_less::Policy::new().batch(Duration::from_secs(1));
    game_server_less::Kinds::new()
        .kind("batched", counter().policy(window))
        .kind("plain", counter())
}

/// The room messages of the next `count` outputs on `sub`, and how many STOMP messages
/// carried them.
async fn outputs(
    sub: &mut game_server_less::stomp::Subscription,
    count: usize,
) -> (Vec<Value>, usize) {
    let (mut outputs, mut frames) = (Vec::new(), 0);
    while outputs.len() < count {
        let m = sub.recv_timeout(WAIT).await.expect("outputs keep coming");
        frames += 1;
        outputs.extend(game_server_less::proto::envelopes::<Value>(m.body()).unwrap());
    }
    (outputs, frames)
}

#[tokio::test]
async fn a_batching_room_sends_the_outputs_of_its_window_together_in_order() {
    let dir = temp_dir("batched");
    let server = Server::start(Lobby::new(), counters(), &dir).await;
    let lobby = server.lobby();
    let create = |kind: &'static str| {
        let lobby = &lobby;
        async move {
            let body = json!({ "kind": kind });
            let room: game_server_less::proto::RoomView =
                lobby.post("/rooms", None, &body).await.unwrap();
            room.id
        }
    };
    let (batched, plain) = (create("batched").await, create("plain").await);
    for (room, batching, name) in [(batched, true, "ann"), (plain, false, "cyd")] {
        let mut ann = Player::join(&server, &room, name, true).await;
        let mut bob = Player::join(&server, &room, &format!("{name}-friend"), false).await;
        // Bob is in once he hears a message the room made after his join.
        ann.send(json!({ "type": "add" })).await;
        let ann_added = |m: &Value| m["type"] == "added" && m["by"] == name;
        while !outputs(&mut bob.room, 1).await.0.iter().any(ann_added) {}
        let first = outputs(&mut ann.private, 1).await.0[0]["n"]
            .as_i64()
            .unwrap();
        for _ in 0..5 {
            ann.send(json!({ "type": "add" })).await;
        }
        // Ten broadcasts, in the order the room made them, numbered one after another.
        let (seen, frames) = outputs(&mut bob.room, 10).await;
        let want: Vec<Value> = (1..=5)
            .flat_map(|i| {
                [
                    json!({ "type": "total", "n": first + i }),
                    json!({ "type": "added", "by": name }),
                ]
            })
            .collect();
        let got: Vec<Value> = seen
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let o = m.as_object_mut().unwrap();
                for stamp in ["seq", "input_seq", "input_from"] {
                    o.remove(stamp);
                }
                m
            })
            .collect();
        assert_eq!(got, want, "batching {batching}");
        let seqs: Vec<u64> = seen.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let inputs: Vec<u64> = seen
            .iter()
            .map(|m| m["input_seq"].as_u64().unwrap())
            .collect();
        assert_eq!(inputs, [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
        // Ann's replies: to her alone, in order, whatever carried them.
        let (thanks, private_frames) = outputs(&mut ann.private, 5).await;
        let ns: Vec<i64> = thanks.iter().map(|m| m["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, (first + 1..=first + 5).collect::<Vec<_>>());
        if batching {
            // Five inputs sent within the window: each input's two broadcasts (a run to
            // one destination between its replies) went as one message.
            assert!(frames < 10, "{frames} room messages");
        } else {
            // Without a window each output is a message of its own, as ever.
            assert_eq!((frames, private_frames), (10, 5));
        }
    }
    server.stop().await;
}
