//! Players in (embedded mode): kinds of room with their queue policy, quick play with
//! seat reservations, metadata filters, private rooms.

use e2e_tests::{http, temp_dir, Player, Server, WAIT};
use game_server_less::proto::{Matchmake, QueueView, Ticket};
use game_server_less::stomp::{Client, ConnectOptions};
use game_server_less::{Config, Ctx, Kinds, Lobby, LobbyClient, Msg, Policy};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

fn on_add(n: &mut i64, ctx: &mut Ctx, add: Value) {
    *n += add["by"].as_i64().unwrap_or(1);
    ctx.broadcast(&json!({ "type": "total", "n": *n }));
}

/// A duel of 2 that allows 2 inputs a second (3 at once), and a match of 2 to 4.
fn kinds() -> Kinds {
    let duel = Msg::new(|| 0i64)
        .route("type=add", on_add)
        .policy(Policy::new().players(2, 2).inputs(2, 3));
    let arena = Msg::new(|| 0i64)
        .route("type=add", on_add)
        .route("type=lock", |_: &mut i64, ctx: &mut Ctx, _: Value| {
            ctx.lock();
        })
        .route("type=reopen", |_: &mut i64, ctx: &mut Ctx, meta: Value| {
            ctx.unlock();
            ctx.set_meta(&meta["meta"]);
        })
        .policy(Policy::new().players(2, 4));
    let squad = Msg::new(|| 0i64)
        .route("type=add", on_add)
        .policy(Policy::new().players(3, 4));
    Kinds::new()
        .kind("duel", duel)
        .kind("match", arena)
        .kind("squad", squad)
}

async fn start(config: Config) -> Server {
    Server::start_with(Lobby::new(), kinds(), config).await
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}{path}", server.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Quick play as `name` into a `match` whose metadata has `filter`.
fn in_match(name: &str, filter: Value) -> Matchmake {
    Matchmake {
        kind: Some("match".into()),
        filter: Some(filter),
        ..Matchmake::named(name)
    }
}

#[tokio::test]
async fn each_kind_has_its_handlers_and_policy_and_overrides_win() {
    let dir = temp_dir("kinds");
    let config = Config {
        policy: vec![("match".into(), "max_players".into(), "3".into())],
        ..Server::config(&dir)
    };
    let server = start(config).await;
    let (status, duel) = post(&server, "/rooms", json!({ "name": "d", "kind": "duel" })).await;
    assert_eq!(status, 201, "{duel}");
    assert_eq!(
        (duel["kind"].as_str(), duel["max_players"].as_u64()),
        (Some("duel"), Some(2))
    );
    let (_, default) = post(&server, "/rooms", json!({ "name": "x" })).await;
    assert_eq!(default["kind"], "duel", "the first kind is the default");
    let (_, arena) = post(&server, "/rooms", json!({ "name": "m", "kind": "match" })).await;
    assert_eq!(
        arena["max_players"], 3,
        "--policy match.max_players=3 wins over the code's 4"
    );
    let (status, unknown) = post(&server, "/rooms", json!({ "kind": "chess" })).await;
    assert_eq!(status, 404, "no such kind here");
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("the kinds are duel, match, squad"),
        "{unknown}"
    );
    for (body, says) in [
        (json!({ "kind": 7 }), "expected a string"),
        (json!({ "meta": [1] }), "JSON object"),
        (json!({ "meta": "x" }), "JSON object"),
        (json!({ "private": "yes" }), "expected a boolean"),
    ] {
        let (status, e) = post(&server, "/rooms", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(e["error"].as_str().unwrap().contains(says), "{body}: {e}");
    }

    // A duel seats 2; the third is told it is full.
    let duel_id = duel["id"].as_str().unwrap();
    let lobby = server.lobby();
    let ann = lobby.join(duel_id, "ann", None).await.unwrap();
    lobby.join(duel_id, "bob", None).await.unwrap();
    let full = lobby.join(duel_id, "cy", None).await.unwrap_err();
    assert!(
        full.to_string().contains("full: it has 2 players"),
        "{full}"
    );
    let arena_id = arena["id"].as_str().unwrap();
    for p in ["m1", "m2", "m3"] {
        lobby.join(arena_id, p, None).await.unwrap();
    }
    assert!(lobby.join(arena_id, "m4", None).await.is_err());

    // The duel's players are held to its rate: 3 at once, then the broker says so.
    let mut ann = Player::join_with(ann).await;
    for seq in 1..=8 {
        let body = json!({ "type": "add", "by": 1, "seq": seq }).to_string();
        ann.client.send_nowait(&ann.ticket.inbox, body).unwrap();
    }
    let limited = ann.next_private("error").await;
    assert_eq!(limited["limited"], true, "{limited}");
    assert!(
        limited["error"]
            .as_str()
            .unwrap()
            .contains("at most 2 inputs a second (3 at once)"),
        "{limited}"
    );
    server.stop().await;
}

/// 200 players quick play at once, half into duels (2) and half into matches (4): every
/// one is placed, no room goes over its most, no player has two seats.
#[tokio::test]
async fn two_hundred_concurrent_quick_plays_fill_rooms_and_never_overfill() {
    let dir = temp_dir("quick");
    let server = start(Server::config(&dir)).await;
    let started = Instant::now();
    let plays = (0..200).map(|i| {
        let lobby = server.lobby();
        async move {
            let kind = if i % 2 == 0 { "duel" } else { "match" };
            let play = Matchmake {
                kind: Some(kind.into()),
                ..Matchmake::named(format!("p{i}"))
            };
            (kind, lobby.quick_play(&play).await.unwrap())
        }
    });
    let tickets: Vec<(&str, Ticket)> = futures_util::future::join_all(plays).await;
    let took = started.elapsed();
    let report = placement(&server, &tickets).await;
    println!("200 quick plays in {took:?} (embedded): {report}");
    server.stop().await;
}

/// Checks the placement of `tickets` against the rooms the lobby lists, and reports it.
async fn placement(server: &Server, tickets: &[(&str, Ticket)]) -> String {
    let operator_view: Vec<Value> =
        serde_json::from_value(server.get_json("/rooms?limit=1000").await).unwrap();
    let rooms: HashMap<String, &Value> = operator_view
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect();
    let mut seated: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_room: HashMap<&str, usize> = HashMap::new();
    for (kind, ticket) in tickets {
        *seated.entry(ticket.player.as_str()).or_default() += 1;
        *per_room.entry(ticket.room.as_str()).or_default() += 1;
        let room = rooms
            .get(&ticket.room)
            .expect("every ticket is to a live room");
        assert_eq!(room["kind"], *kind);
    }
    assert_eq!(seated.len(), tickets.len(), "every player placed");
    let doubles = seated.values().filter(|n| **n > 1).count();
    assert_eq!(doubles, 0, "no player seated twice");
    let mut max_fill: f64 = 0.0;
    let mut full = 0;
    for (room, n) in &per_room {
        let view = rooms[*room];
        let max = view["max_players"].as_u64().unwrap() as usize;
        assert!(*n <= max, "room {room} has {n} seats of {max}");
        assert_eq!(
            view["seats"].as_u64().unwrap() as usize,
            *n,
            "the store counts what was given"
        );
        max_fill = max_fill.max(*n as f64 / max as f64);
        full += usize::from(*n == max);
    }
    format!(
        "{} players in {} rooms ({} full), max fill {:.0}%, {doubles} double seats",
        tickets.len(),
        per_room.len(),
        full,
        max_fill * 100.0
    )
}

#[tokio::test]
async fn a_reserved_seat_nobody_takes_is_given_up_and_one_taken_is_kept() {
    let dir = temp_dir("reserve");
    let mut config = Server::config(&dir);
    config.rooms.seat_ttl = Duration::from_secs(1);
    let server = start(config).await;
    let lobby = server.lobby();
    let duel = |name: &str| Matchmake {
        kind: Some("duel".into()),
        ..Matchmake::named(name)
    };
    let ghost = lobby.quick_play(&duel("ghost")).await.unwrap();
    let ann = lobby.quick_play(&duel("ann")).await.unwrap();
    assert_eq!(ann.room, ghost.room, "the fullest open room first");
    let room = ann.room.clone();
    let _ann = Player::join_with(ann).await; // her connection takes the seat
    let seats = |v: Value| v["seats"].as_u64().unwrap();
    assert_eq!(seats(server.get_json(&format!("/rooms/{room}")).await), 2);
    // The ghost never connects: its seat is free again after the TTL (and a sweep).
    let deadline = Instant::now() + WAIT;
    while seats(server.get_json(&format!("/rooms/{room}")).await) != 1 {
        assert!(
            Instant::now() < deadline,
            "the reservation was never given up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stale = game_server_less::stomp::Client::connect(
        &ghost.tcp_url,
        game_server_less::stomp::ConnectOptions::login(ghost.login.clone(), ghost.token.clone()),
    )
    .await;
    assert!(stale.is_err(), "an expired reservation's ticket is revoked");
    let bob = lobby.quick_play(&duel("bob")).await.unwrap();
    assert_eq!(bob.room, room, "the freed seat is quick play's again");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        seats(server.get_json(&format!("/rooms/{room}")).await),
        2,
        "ann kept hers"
    );
    server.stop().await;
}

#[tokio::test]
async fn quick_play_filters_on_metadata_and_passes_private_and_locked_rooms_by() {
    let dir = temp_dir("filter");
    let server = start(Server::config(&dir)).await;
    let lobby = server.lobby();
    let ranked = lobby
        .quick_play(&in_match("a1", json!({ "mode": "ranked" })))
        .await
        .unwrap();
    let view = server.get_json(&format!("/rooms/{}", ranked.room)).await;
    assert_eq!(
        view["meta"],
        json!({ "mode": "ranked" }),
        "a room made for a filter has it"
    );
    let casual = lobby
        .quick_play(&in_match("a2", json!({ "mode": "casual" })))
        .await
        .unwrap();
    assert_ne!(casual.room, ranked.room);
    let again = lobby
        .quick_play(&in_match("a3", json!({ "mode": "ranked" })))
        .await
        .unwrap();
    assert_eq!(again.room, ranked.room);
    let any = lobby.quick_play(&in_match("a4", json!({}))).await.unwrap();
    assert_eq!(any.room, ranked.room, "no filter: the fullest open room");

    // A private room: never quick play's pick, listed to no one but the operator, and
    // joined by its code.
    let (status, private) = post(
        &server,
        "/rooms",
        json!({ "name": "friends", "kind": "match", "private": true, "meta": { "mode": "ranked" } }),
    )
    .await;
    assert_eq!(status, 201);
    let code = private["code"].as_str().expect("its code, to its creator");
    assert_eq!(code.len(), 6);
    let listed = server.get_json("/rooms").await;
    assert!(
        !listed.to_string().contains(private["id"].as_str().unwrap()),
        "{listed}"
    );
    for i in 0..4 {
        let t = lobby
            .quick_play(&in_match(&format!("r{i}"), json!({ "mode": "ranked" })))
            .await
            .unwrap();
        assert_ne!(t.room, private["id"].as_str().unwrap());
    }
    let by_code = Matchmake {
        code: Some(code.into()),
        ..Matchmake::named("friend")
    };
    let friend = lobby.quick_play(&by_code).await.unwrap();
    assert_eq!(friend.room, private["id"].as_str().unwrap());
    let bad_code = Matchmake {
        code: Some("NOPE42".into()),
        ..Matchmake::named("stranger")
    };
    let e = lobby.quick_play(&bad_code).await.unwrap_err();
    assert!(e.to_string().contains("no live room has the code"), "{e}");

    // A locked room takes no one, by id or by quick play.
    let open = lobby
        .quick_play(&in_match("b1", json!({ "mode": "solo" })))
        .await
        .unwrap();
    assert!(server
        .rooms
        .store()
        .set_locked(&open.room, true)
        .await
        .unwrap());
    let e = lobby.join(&open.room, "b2", None).await.unwrap_err();
    assert!(e.to_string().contains("locked"), "{e}");
    let other = lobby
        .quick_play(&in_match("b3", json!({ "mode": "solo" })))
        .await
        .unwrap();
    assert_ne!(other.room, open.room, "quick play passes a locked room by");
    server.stop().await;
}

#[tokio::test]
async fn a_room_locks_and_sets_its_metadata_from_its_handlers() {
    let dir = temp_dir("lock");
    let server = start(Server::config(&dir)).await;
    let lobby = server.lobby();
    let mut host = Player::join_with(
        lobby
            .quick_play(&in_match("host", json!({})))
            .await
            .unwrap(),
    )
    .await;
    let room = host.ticket.room.clone();
    host.send(json!({ "type": "lock" })).await;
    let listed = |v: &Value| (v["locked"].clone(), v["meta"].clone());
    let deadline = Instant::now() + WAIT;
    while listed(&server.get_json(&format!("/rooms/{room}")).await).0 != true {
        assert!(Instant::now() < deadline, "the room never locked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = lobby.quick_play(&in_match("g1", json!({}))).await.unwrap();
    assert_ne!(other.room, room, "a locked room is passed by");
    host.send(json!({ "type": "reopen", "meta": { "mode": "ranked" } }))
        .await;
    while listed(&server.get_json(&format!("/rooms/{room}")).await)
        != (json!(false), json!({ "mode": "ranked" }))
    {
        assert!(Instant::now() < deadline, "the room never reopened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ranked = lobby
        .quick_play(&in_match("g2", json!({ "mode": "ranked" })))
        .await
        .unwrap();
    assert_eq!(ranked.room, room, "its new metadata matches");
    server.stop().await;
}

#[tokio::test]
async fn quick_play_refuses_bad_requests_clearly() {
    let dir = temp_dir("quick-bad");
    let server = start(Server::config(&dir)).await;
    for (body, status, says) in [
        (json!({}), 400, "say who plays"),
        (json!({ "name": "a b" }), 400, "player name"),
        (
            json!({ "name": "ann", "kind": "chess" }),
            404,
            "no room kind \"chess\"",
        ),
        (json!({ "name": "ann", "filter": [1] }), 400, "JSON object"),
        (
            json!({ "name": "ann", "filter": { "k": "x".repeat(5000) } }),
            400,
            "4 KiB",
        ),
        (
            json!({ "name": "ann", "colour": "red" }),
            400,
            "unknown field",
        ),
        (json!({ "name": "ann", "code": "ZZZZZZ" }), 404, "code"),
        (json!({ "name": 7 }), 400, "expected a string"),
    ] {
        let (got, e) = post(&server, "/matchmake", body.clone()).await;
        assert_eq!(got, status, "{body}: {e}");
        assert!(
            e["error"].as_str().unwrap_or_default().contains(says),
            "{body}: {e}"
        );
    }
    let raw = http()
        .post(format!("{}/matchmake", server.http))
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    // A name someone owns needs its key.
    let lobby: LobbyClient = server.lobby();
    let first = lobby.quick_play(&Matchmake::named("owner")).await.unwrap();
    let key = first
        .player_key
        .clone()
        .expect("the first play answers the key");
    let e = lobby
        .quick_play(&Matchmake::named("owner"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("belongs to someone else"), "{e}");
    let with_key = Matchmake {
        key: Some(key),
        ..Matchmake::named("owner")
    };
    lobby.quick_play(&with_key).await.unwrap();
    server.stop().await;
}

/// A room whose hooks write down what they saw and tell everyone, with a grace of
/// `grace`; `{"type":"log"}` answers what they wrote down.
fn hooked(grace: Duration) -> Msg<Vec<String>> {
    let hook = |what: &'static str| {
        move |log: &mut Vec<String>, ctx: &mut game_server_less::RoomCtx, player: &str| {
            log.push(format!("{what} {player}"));
            ctx.broadcast(&json!({ "type": "hook", "what": what, "player": player }));
        }
    };
    let log = |log: &mut Vec<String>, ctx: &mut Ctx, _: Value| {
        ctx.reply(&json!({ "type": "log", "log": log }));
    };
    Msg::new(Vec::new)
        .route("type=log", log)
        .on_join(hook("join"))
        .on_drop(hook("drop"))
        .on_reconnect(hook("reconnect"))
        .on_leave(hook("leave"))
        .policy(Policy::new().grace(grace))
}

/// What the room's hooks wrote down, as `player` asks for it.
async fn hook_log(player: &mut Player) -> Vec<String> {
    player.send(json!({ "type": "log" })).await;
    serde_json::from_value(player.next_private("log").await["log"].clone()).unwrap()
}

/// Waits until `GET /rooms/{room}` counts `connected` players connected and `away` in
/// their grace (it reports the room's latest checkpoint, a moment behind), and answers
/// the room.
async fn presence_is(server: &Server, room: &str, connected: u64, away: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let view = server.get_json(&format!("/rooms/{room}")).await;
        if view["players_connected"] == connected && view["players_in_grace"] == away {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "want {connected} connected, {away} away: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next hook `bob` hears of about `who` (hooks about others are skipped), as
/// `what who`.
async fn next_hook(bob: &mut Player, who: &str) -> String {
    loop {
        let m = bob.next_on_room("hook").await;
        if m["player"] == who {
            return format!("{} {who}", m["what"].as_str().unwrap());
        }
    }
}

#[tokio::test]
async fn a_drop_inside_the_grace_reconnects_and_one_outside_it_leaves() {
    let dir = temp_dir("grace");
    let grace = Duration::from_millis(1500);
    let server = Server::start(Lobby::new(), hooked(grace), &dir).await;
    let room = server.create_room().await;
    let mut bob = Player::join(&server, &room, "bob", true).await;
    let ann_ticket = server.join(&room, "ann").await;
    let ann = Player::join_with(ann_ticket.clone()).await;
    assert_eq!(next_hook(&mut bob, "ann").await, "join ann");
    presence_is(&server, &room, 2, 0).await;

    // Inside the grace: dropped, then back, with seat and state kept.
    let dropped_at = Instant::now();
    drop(ann);
    assert_eq!(next_hook(&mut bob, "ann").await, "drop ann");
    println!(
        "drop heard {:?} after the connection closed",
        dropped_at.elapsed()
    );
    let view = presence_is(&server, &room, 1, 1).await;
    assert_eq!(view["players_online"], 2, "the seat is kept");
    let mut ann = Player::join_with(ann_ticket.clone()).await;
    assert_eq!(next_hook(&mut bob, "ann").await, "reconnect ann");
    let log = hook_log(&mut ann).await;
    assert_eq!(
        log,
        ["join bob", "join ann", "drop ann", "reconnect ann"],
        "seat and state kept"
    );

    // Outside it: dropped, then the leave, and the seat and ticket are gone.
    let left_at = Instant::now();
    drop(ann);
    assert_eq!(next_hook(&mut bob, "ann").await, "drop ann");
    assert_eq!(next_hook(&mut bob, "ann").await, "leave ann");
    let waited = left_at.elapsed();
    println!("leave heard {waited:?} after the connection closed (grace {grace:?})");
    assert!(waited >= grace, "not before the grace is over: {waited:?}");
    let view = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(view["players_online"], 1, "{view}");
    assert_eq!(view["seats"], 1);
    let again = game_server_less::stomp::Client::connect(
        &ann_ticket.tcp_url,
        game_server_less::stomp::ConnectOptions::login(
            ann_ticket.login.clone(),
            ann_ticket.token.clone(),
        ),
    )
    .await;
    assert!(again.is_err(), "the ticket of a player who left is revoked");
    server.stop().await;
}

#[tokio::test]
async fn after_a_restart_every_player_is_dropped_and_those_who_come_back_reconnect() {
    let dir = temp_dir("grace-restart");
    let grace = Duration::from_secs(3);
    let server = Server::start(Lobby::new(), hooked(grace), &dir).await;
    let room = server.create_room().await;
    let mut bob = Player::join(&server, &room, "bob", true).await;
    let ann_ticket = server.join(&room, "ann").await;
    let _ann = Player::join_with(ann_ticket.clone()).await;
    assert_eq!(next_hook(&mut bob, "ann").await, "join ann");
    let bob_ticket = bob.ticket.clone();
    presence_is(&server, &room, 2, 0).await;
    server.stop().await;
    // Down for longer than the grace: the time nobody could come back does not count.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    let server = Server::start(Lobby::new(), hooked(grace), &dir).await;
    // Bob comes back in time (the server listens on new ports); ann does not.
    let mut bob_ticket = bob_ticket;
    bob_ticket.tcp_urls = server.rooms.admin().endpoints().tcp_urls.clone();
    bob_ticket.tcp_url = bob_ticket.tcp_urls[0].clone();
    let mut bob = Player::join_with(bob_ticket).await;
    // Bob may subscribe after the drops went out: the room's record of its hooks says.
    let deadline = Instant::now() + WAIT;
    while next_hook(&mut bob, "ann").await != "leave ann" {
        assert!(Instant::now() < deadline, "ann never left");
    }
    let mut log = hook_log(&mut bob).await;
    log[2..4].sort();
    assert_eq!(
        log,
        [
            "join bob",
            "join ann",
            "drop ann",
            "drop bob",
            "reconnect bob",
            "leave ann"
        ]
    );
    server.stop().await;
}

/// Queues `name` for a squad (3 to 4) with `filter`.
async fn queue_for_squad(lobby: &LobbyClient, name: &str, filter: Value) -> QueueView {
    let play = Matchmake {
        kind: Some("squad".into()),
        filter: Some(filter),
        ..Matchmake::named(name)
    };
    lobby.enqueue(&play).await.unwrap()
}

#[tokio::test]
async fn the_queue_forms_a_group_of_one_filter_and_widens_it_after_a_wait() {
    let dir = temp_dir("queue");
    let mut config = Server::config(&dir);
    config.rooms.queue_widen = Duration::from_secs(1);
    let server = start(config).await;
    let lobby = server.lobby();
    let a1 = queue_for_squad(&lobby, "a1", json!({ "mode": "a" })).await;
    let a2 = queue_for_squad(&lobby, "a2", json!({ "mode": "a" })).await;
    let b1 = queue_for_squad(&lobby, "b1", json!({ "mode": "b" })).await;
    assert_eq!(
        (a1.status.as_str(), a2.status.as_str()),
        ("waiting", "waiting")
    );
    assert_eq!(b1.waiting, 3);
    assert!(a1.player_key.is_some(), "queuing claims the name");
    // The third of mode a completes a group (a squad needs 3): all three get one room.
    let a3 = queue_for_squad(&lobby, "a3", json!({ "mode": "a" })).await;
    assert_eq!(a3.status, "matched");
    let room = a3.ticket.as_ref().unwrap().room.clone();
    for t in [&a1, &a2] {
        let polled = lobby.poll_queue(&t.id, 0).await.unwrap();
        assert_eq!(polled.status, "matched");
        assert_eq!(polled.ticket.unwrap().room, room);
    }
    let view = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(
        (view["kind"].clone(), view["meta"].clone()),
        (json!("squad"), json!({ "mode": "a" }))
    );
    assert_eq!(view["seats"], 3);
    let b1_now = lobby.poll_queue(&b1.id, 0).await.unwrap();
    assert_eq!((b1_now.status.as_str(), b1_now.waiting), ("waiting", 1));

    // Three filters, no group, until a wait widens them: then one room for the three.
    let c = queue_for_squad(&lobby, "c1", json!({ "mode": "c" })).await;
    let d = queue_for_squad(&lobby, "d1", json!({ "mode": "d" })).await;
    assert_eq!(c.status, "waiting");
    let started = Instant::now();
    let widened = lobby.poll_queue(&d.id, 5).await.unwrap();
    assert_eq!(widened.status, "matched", "{widened:?}");
    println!(
        "the queue widened after {:?} (widen after 1 s)",
        started.elapsed()
    );
    let wide_room = widened.ticket.unwrap().room;
    assert_ne!(wide_room, room);
    for t in [&b1, &c] {
        assert_eq!(
            lobby
                .poll_queue(&t.id, 0)
                .await
                .unwrap()
                .ticket
                .unwrap()
                .room,
            wide_room
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_or_dropped_ticket_leaves_the_queue() {
    let dir = temp_dir("queue-cancel");
    let mut config = Server::config(&dir);
    config.rooms.queue_drop = Duration::from_secs(1);
    let server = start(config).await;
    let lobby = server.lobby();
    let gone = queue_for_squad(&lobby, "e1", json!({})).await;
    lobby.cancel_queue(&gone.id).await.unwrap();
    let e = lobby.poll_queue(&gone.id, 0).await.unwrap_err();
    assert!(e.to_string().contains("no ticket"), "{e}");
    assert!(
        lobby.cancel_queue(&gone.id).await.is_err(),
        "cancelled once"
    );
    // Not polled for longer than the drop time: out, and no group counts it.
    let dropped = queue_for_squad(&lobby, "e2", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e3 = queue_for_squad(&lobby, "e3", json!({})).await;
    assert_eq!((e3.status.as_str(), e3.waiting), ("waiting", 1), "{e3:?}");
    assert!(lobby.poll_queue(&dropped.id, 0).await.is_err());
    // A matched ticket cannot be cancelled: its room is waiting for its player.
    let e4 = queue_for_squad(&lobby, "e4", json!({})).await;
    let e5 = queue_for_squad(&lobby, "e5", json!({})).await;
    assert_eq!(e5.status, "matched", "{e4:?} {e5:?}");
    let e = lobby.cancel_queue(&e3.id).await.unwrap_err();
    assert!(e.to_string().contains("matched already"), "{e}");
    // Bad requests say what is wrong.
    for (body, says) in [
        (
            json!({ "name": "f1", "code": "ABCDEF" }),
            "unknown field `code`",
        ),
        (json!({ "name": "f1", "filter": 3 }), "JSON object"),
    ] {
        let (status, e) = post(&server, "/matchmake/queue", body.clone()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    let (status, e) = post(
        &server,
        "/matchmake/queue",
        json!({ "name": "f1", "kind": "chess" }),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    let too_long = http()
        .get(format!("{}/matchmake/queue/{}?wait=99", server.http, e3.id))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status().as_u16(), 400);
    server.stop().await;
}

/// A counter whose snapshot is its count, watched by at most one spectator.
fn watched() -> Msg<i64> {
    Msg::new(|| 0i64)
        .route("type=add", on_add)
        .snapshot(|n: &i64| json!({ "type": "snapshot", "n": n }))
        .policy(Policy::new().spectators(1))
}

#[tokio::test]
async fn a_spectator_reads_without_a_gap_sends_nothing_and_counts_against_the_policy() {
    let dir = temp_dir("spectate");
    let server = Server::start(Lobby::new(), watched(), &dir).await;
    let room = server.create_room().await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    for _ in 0..10 {
        ann.send(json!({ "type": "add", "by": 1 })).await;
    }
    // Ann plays on while the spectator arrives.
    let playing = tokio::spawn(async move {
        for _ in 0..30 {
            ann.send(json!({ "type": "add", "by": 1 })).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ann
    });
    let lobby = server.lobby();
    let (ticket, watcher, mut topic, mut private) = e2e_tests::spectator(&server.http, &room).await;
    assert!(ticket.spectator && ticket.inbox.is_empty(), "{ticket:?}");
    let snapshot = e2e_tests::next_of(&mut private, "snapshot").await;
    let (mut seq, mut n) = (
        snapshot["seq"].as_u64().unwrap(),
        snapshot["n"].as_i64().unwrap(),
    );
    println!("the spectator's snapshot: n = {n} at seq {seq}");
    // Then the topic from just after the snapshot: every seq once, in order, to the end.
    while n < 40 {
        let m = e2e_tests::next_of(&mut topic, "total").await;
        let at = m["seq"].as_u64().unwrap();
        if at <= seq {
            continue; // the snapshot has it already
        }
        assert_eq!(at, seq + 1, "no gap after the snapshot");
        assert_eq!(m["n"].as_i64().unwrap(), n + 1);
        (seq, n) = (at, n + 1);
    }
    let _ann = playing.await.unwrap();
    // One spectator at a time, as the policy says.
    let second: Ticket = lobby
        .post(&format!("/rooms/{room}/spectate"), None, &json!({}))
        .await
        .unwrap();
    let options = ConnectOptions::login(second.login.clone(), second.token.clone());
    let Err(full) = Client::connect(&second.tcp_url, options).await else {
        panic!("a second spectator was let in");
    };
    assert!(full.to_string().contains("spectators, its most"), "{full}");
    // A spectator sends nothing: the broker refuses, even to the room's inbox.
    let refused = watcher
        .send(&format!("/queue/room.{room}"), r#"{"type":"add","seq":1}"#)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let e = lobby
        .post::<_, Ticket>("/rooms/nope/spectate", None, &json!({}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no room"), "{e}");
    server.stop().await;
}
