//! The operator's inspector (embedded mode): the admin API's figures, its actions, and
//! who may use it.

use e2e_tests::{http, next_of, temp_dir, Player, Server, WAIT};
use game_server_less::{Config, Ctx, Lobby, Msg, RoomCtx};
use serde_json::{json, Value};
use std::time::Instant;

const OPERATOR: &str = "inspector-test-operator";

/// A counter whose `add` takes a number `by` and refuses anything else; it tells who
/// leaves.
fn counter() -> Msg<i64> {
    Msg::new(|| 0i64)
        .route("type=add", |n: &mut i64, ctx: &mut Ctx, add: Value| {
            let Some(by) = add["by"].as_i64() else {
                return Err("by must be a number".to_owned());
            };
            *n += by;
            ctx.broadcast(&json!({ "type": "total", "n": *n }));
            Ok(())
        })
        .on_leave(|_: &mut i64, ctx: &mut RoomCtx, player: &str| {
            ctx.broadcast(&json!({ "type": "left", "player": player }));
        })
        .snapshot(|n: &i64| json!({ "type": "total", "n": *n }))
}

async fn start(tag: &str) -> Server {
    let dir = temp_dir(tag);
    let mut config: Config = Server::config(&dir);
    config.rooms.operator_secret = Some(OPERATOR.into());
    Server::start_with(Lobby::new(), counter(), config).await
}

/// `method path` with `bearer` (if any) and a JSON `body` (if any): status and answer.
async fn call(
    server: &Server,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http().request(method, format!("{}{path}", server.http));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn operator_get(server: &Server, path: &str) -> Value {
    let (status, answer) = call(server, "GET", path, Some(OPERATOR), None).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

/// Polls the room's page until `ready` holds (checkpoints are saved in the background).
async fn room_page_until(server: &Server, room: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = operator_get(server, &format!("/admin/rooms/{room}")).await;
        if ready(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the room page never got there: {page:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_inspector_shows_a_rooms_figures_state_inputs_and_players() {
    let server = start("inspect-figures").await;
    let room = e2e_tests::create_room_at(&server.http).await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    let mut bob = Player::join(&server, &room, "bob", false).await;
    ann.send(json!({ "type": "add", "by": 2 })).await;
    next_of(&mut bob.room, "total").await;
    ann.send(json!({ "type": "add", "by": "lots" })).await;
    let error = next_of(&mut ann.private, "error").await;
    assert!(error["error"]
        .as_str()
        .unwrap()
        .contains("by must be a number"));
    bob.send(json!({ "type": "add", "by": 3 })).await;
    next_of(&mut ann.room, "total").await;

    let page = room_page_until(&server, &room, |p| {
        p["recent_inputs"].as_array().is_some_and(|r| r.len() == 3)
            && p["presence"]
                .as_array()
                .is_some_and(|ps| ps.iter().filter(|p| p["connection"] == "connected").count() == 2)
    })
    .await;
    println!("the room page: {page:#}");
    assert_eq!(
        page["state"],
        json!(5),
        "the state of the latest checkpoint"
    );
    assert_eq!(page["seq"], 2, "two broadcasts");
    assert_eq!(page["worker"], "local");
    assert_eq!(page["kind"], "default");
    assert_eq!(page["players_connected"], 2);
    assert_eq!(page["spectators"], 0);
    assert_eq!(page["inbox"]["consumers"], 1, "{}", page["inbox"]);
    assert!(page["checkpoint_age_secs"].as_u64().unwrap() < 60);
    assert!(page["inputs_per_second"].as_f64().unwrap() > 0.0);
    let inputs = page["recent_inputs"].as_array().unwrap();
    let outcome = |i: &Value| (i["from"].clone(), i["seq"].clone(), i["error"].clone());
    assert_eq!(outcome(&inputs[0]), (json!("ann"), json!(1), Value::Null));
    assert_eq!(inputs[1]["from"], "ann");
    assert_eq!(inputs[1]["seq"], 2);
    assert!(
        inputs[1]["error"]
            .as_str()
            .unwrap()
            .contains("by must be a number"),
        "a rejection keeps the handler's error: {}",
        inputs[1]
    );
    assert_eq!(outcome(&inputs[2]), (json!("bob"), json!(1), Value::Null));
    assert_eq!(inputs[2]["type"], "add");
    assert_eq!(inputs[2]["room_seq"], 2);

    // The list has the same figures, the room among them.
    let listed = operator_get(&server, "/admin/rooms").await;
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == room.as_str())
        .expect("the room is listed");
    assert_eq!(row["players_connected"], 2);
    assert_eq!(row["seq"], 2);
    assert_eq!(row["worker"], "local");

    // A spectator counts, and the inspector's own watch ticket reads the live stream.
    let (status, ticket) = call(
        &server,
        "POST",
        &format!("/admin/rooms/{room}/watch"),
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(status, 200, "{ticket}");
    assert_eq!(ticket["spectator"], true);
    let ticket: game_server_less::proto::Ticket = serde_json::from_value(ticket).unwrap();
    let watcher = e2e_tests::connect_ticket(&ticket).await.unwrap();
    let mut stream = watcher
        .subscribe(&ticket.topic, Default::default())
        .await
        .unwrap();
    room_page_until(&server, &room, |p| p["spectators"] == 1).await;
    ann.send(json!({ "type": "add", "by": 10 })).await;
    assert_eq!(next_of(&mut stream, "total").await["n"], 15);
    server.stop().await;
}

#[tokio::test]
async fn the_operator_locks_kicks_plays_a_test_player_and_ends_the_room() {
    let server = start("inspect-actions").await;
    let room = e2e_tests::create_room_at(&server.http).await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    let bob = Player::join(&server, &room, "bob", true).await;
    let act = |path: &str, body: Value| {
        let path = format!("/admin/rooms/{room}/{path}");
        let server = &server;
        async move { call(server, "POST", &path, Some(OPERATOR), Some(body)).await }
    };

    // Lock: joins are refused; unlock: they are taken again.
    assert_eq!(act("lock", json!({ "locked": true })).await.0, 204);
    let view = e2e_tests::get_json(&format!("{}/rooms/{room}", server.http)).await;
    assert_eq!(view["locked"], true);
    let refused = e2e_tests::lobby(&server.http)
        .join(&room, "cat", None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("locked"), "{refused}");
    assert_eq!(act("lock", json!({ "locked": false })).await.0, 204);
    let view = e2e_tests::get_json(&format!("{}/rooms/{room}", server.http)).await;
    assert_eq!(view["locked"], false);

    // The playground: a test player is seated and its inputs applied in order.
    let (status, sent) = act(
        "send",
        json!({ "player": "tester", "input": { "type": "add", "by": 7 } }),
    )
    .await;
    assert_eq!(status, 202, "{sent}");
    let total = next_of(&mut ann.room, "total").await;
    assert_eq!(
        (total["n"].clone(), total["input_from"].clone()),
        (json!(7), json!("tester"))
    );
    let (status, _) = act(
        "send",
        json!({ "player": "tester", "input": { "type": "add", "by": "x" } }),
    )
    .await;
    assert_eq!(status, 202);
    let page = room_page_until(&server, &room, |p| {
        p["recent_inputs"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert_eq!(page["recent_inputs"][0]["seq"], sent["seq"]);
    assert!(page["recent_inputs"][1]["error"].is_string(), "{page:#}");
    assert!(page["presence"].to_string().contains("tester"));
    // A claimed name is a real player's: the playground does not take it.
    let (status, e) = act(
        "send",
        json!({ "player": "ann", "input": { "type": "add", "by": 1 } }),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    for (body, why) in [
        (
            json!({ "player": "tester", "input": [1, 2] }),
            "an input that is no object",
        ),
        (json!({ "player": "no spaces!", "input": {} }), "a bad name"),
        (json!({ "player": "tester" }), "no input"),
        (
            json!({ "player": "tester", "input": {}, "extra": 1 }),
            "an unknown field",
        ),
    ] {
        let (status, e) = act("send", body).await;
        assert_eq!(status, 400, "{why}: {e}");
        assert!(e["error"].is_string(), "{why}: {e}");
    }

    // Kick: bob's connection is closed and he is out of the room.
    assert_eq!(act("kick", json!({ "player": "bob" })).await.0, 204);
    let left = next_of(&mut ann.room, "left").await;
    assert_eq!(left["player"], "bob");
    let deadline = Instant::now() + WAIT;
    while bob.client.closed().is_none() {
        assert!(Instant::now() < deadline, "bob's connection stayed open");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = act("kick", json!({ "player": "bob" })).await;
    assert_eq!(status, 404, "bob is not in the room any more");

    // End: the answer comes once the room has ended; the players heard it.
    assert_eq!(act("end", json!({ "reason": "maintenance" })).await.0, 204);
    let ended = next_of(&mut ann.room, "room_ended").await;
    assert_eq!(ended["reason"], "maintenance");
    let (status, _) = call(
        &server,
        "GET",
        &format!("/admin/rooms/{room}"),
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(status, 404, "the ended room is gone");
    server.stop().await;
}

/// Only the operator secret opens the admin API: no header is 401; a player's ticket
/// token or key, a room's owner token or a wrong secret are 403. Actions sent the way
/// a cross-site form sends them (not JSON) do nothing.
#[tokio::test]
async fn only_the_operator_secret_opens_the_admin_api_and_forms_cannot_act() {
    let server = start("inspect-access").await;
    let (status, created) = call(
        &server,
        "POST",
        "/rooms",
        None,
        Some(json!({ "name": "mine" })),
    )
    .await;
    assert_eq!(status, 201);
    let room = created["id"].as_str().unwrap().to_owned();
    let owner = created["owner_token"].as_str().unwrap().to_owned();
    let ann = e2e_tests::join_ticket(&server.http, &room, "ann").await;
    let key = ann
        .player_key
        .clone()
        .expect("a first join answers the key");
    let routes = [
        ("GET", "/admin/rooms".to_owned(), None),
        ("GET", format!("/admin/rooms/{room}"), None),
        ("POST", format!("/admin/rooms/{room}/watch"), None),
        (
            "POST",
            format!("/admin/rooms/{room}/lock"),
            Some(json!({ "locked": true })),
        ),
        (
            "POST",
            format!("/admin/rooms/{room}/kick"),
            Some(json!({ "player": "ann" })),
        ),
        ("POST", format!("/admin/rooms/{room}/end"), Some(json!({}))),
        (
            "POST",
            format!("/admin/rooms/{room}/send"),
            Some(json!({ "player": "tester", "input": { "type": "add", "by": 1 } })),
        ),
    ];
    for (method, path, body) in &routes {
        let (status, e) = call(&server, method, path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a secret: {e}");
        assert!(
            e["error"].as_str().unwrap().contains("operator secret"),
            "{e}"
        );
        for (what, token) in [
            ("a player's ticket", ann.token.as_str()),
            ("a player's key", key.as_str()),
            ("the room's owner token", owner.as_str()),
            ("a wrong secret", "inspector-test-operator-not"),
            ("an empty one", ""),
        ] {
            let (status, e) = call(&server, method, path, Some(token), body.clone()).await;
            assert_eq!(status, 403, "{method} {path} with {what}: {e}");
        }
    }
    // What a cross-site form would send, with the secret even: refused, nothing done.
    for (path, form) in [
        ("lock", "locked=true"),
        ("end", "reason=x"),
        ("kick", "player=ann"),
    ] {
        let response = http()
            .post(format!("{}/admin/rooms/{room}/{path}", server.http))
            .bearer_auth(OPERATOR)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 415, "{path}");
    }
    let page = operator_get(&server, &format!("/admin/rooms/{room}")).await;
    assert_eq!(page["locked"], false);
    assert!(page["presence"].to_string().contains("ann"));
    // Malformed and oversized bodies: clear errors, nothing done.
    let lock = format!("/admin/rooms/{room}/lock");
    for (body, status) in [
        ("{\"locked\": ".to_owned(), 400),
        ("{\"locked\": \"yes\"}".to_owned(), 400),
        (
            format!("{{\"locked\": true, \"pad\": \"{}\"}}", "x".repeat(200_000)),
            413,
        ),
    ] {
        let response = http()
            .post(format!("{}{lock}", server.http))
            .bearer_auth(OPERATOR)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let e: Value = response.json().await.unwrap();
        assert!(e["error"].is_string(), "{e}");
    }
    assert_eq!(
        operator_get(&server, &format!("/admin/rooms/{room}")).await["locked"],
        false
    );
    let (status, e) = call(&server, "GET", "/admin/rooms/nope", Some(OPERATOR), None).await;
    assert_eq!(status, 404, "{e}");

    // The page itself holds no data; it may not be framed.
    let page = http()
        .get(format!("{}/inspect", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("Authorization") && !html.contains(OPERATOR));
    server.stop().await;
}
