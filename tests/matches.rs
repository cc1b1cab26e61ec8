//! Match records and the deploy gate, end to end on the embedded broker: matches played
//! over real sockets are recorded with the checkpoints, served by `GET /matches` to whom
//! they may be shown, and run again by the gate, which passes this build and names the
//! first difference of a build whose rule changed.

use e2e_tests::*;
use game_server_less::policy::Policy;
use game_server_less::replay::{check, CheckOptions};
use game_server_less::store::Store;
use game_server_less::worker::Verdict;
use game_server_less::{Ctx, Kinds, Lobby, Msg};
use serde_json::{json, Value};
use std::time::Duration;

const OPERATOR: &str = "matches-operator-secret";

/// A dice game: a roll draws from the room's generator and adds `sides`' face to the
/// roller's total; the reply carries the room's clock. `faces` is the rule a new build
/// may change.
fn dice(faces: u64) -> Msg<Value> {
    let roll = move |totals: &mut Value, ctx: &mut Ctx, _: Value| {
        let face = ctx.rng().below(faces) + 1;
        let player = ctx.sender().to_owned();
        let total = totals[&player].as_u64().unwrap_or(0) + face;
        totals[&player] = total.into();
        ctx.broadcast(&json!({ "type": "rolled", "player": player, "face": face, "total": total, "at": ctx.now_ms() }));
    };
    Msg::new(|| json!({}))
        .route("type=roll", roll)
        .policy(Policy::new().players(1, 4))
}

fn kinds(faces: u64) -> Kinds {
    Kinds::new().kind("dice", dice(faces))
}

async fn start(dir: &std::path::Path) -> Server {
    let mut config = Server::config(dir);
    config.rooms.operator_secret = Some(OPERATOR.into());
    config.rooms.creations_per_minute = 1000;
    Server::start_with(Lobby::new(), kinds(6), config).await
}

/// `GET path` with `bearer`: the status and the JSON answer.
async fn get(server: &Server, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = http().get(format!("{}{path}", server.http));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Plays `rolls` rolls as `player` and waits for each to be heard.
async fn play(player: &mut Player, rolls: usize) {
    for _ in 0..rolls {
        player.send(json!({ "type": "roll" })).await;
        player.next_on_room("rolled").await;
    }
}

/// Ends `room` with its owner token and waits until the store says it has ended.
async fn end(server: &Server, room: &str, owner: &str) {
    server.lobby().end_room(room, owner).await.unwrap();
}

#[tokio::test]
async fn every_match_is_recorded_and_shown_to_whom_it_may_be() {
    let dir = temp_dir("matches");
    let server = start(&dir).await;
    let lobby = server.lobby();
    // A public match of two players.
    let (public, owner) = server.create_owned_room().await;
    let mut ann = Player::join(&server, &public, "ann", true).await;
    let mut bob = Player::join(&server, &public, "bob", false).await;
    play(&mut ann, 5).await;
    play(&mut bob, 5).await;
    end(&server, &public, &owner).await;
    // A private one: cat and dan, by its code.
    let created = http()
        .post(format!("{}/rooms", server.http))
        .json(&json!({ "name": "friends", "kind": "dice", "private": true }))
        .send()
        .await
        .unwrap();
    let created: Value = created.json().await.unwrap();
    let (private, code) = (
        created["id"].as_str().unwrap().to_owned(),
        created["code"].as_str().unwrap().to_owned(),
    );
    let by_code = |name: &str| game_server_less::proto::Matchmake {
        code: Some(code.clone()),
        ..game_server_less::proto::Matchmake::named(name)
    };
    let cat_ticket = lobby.quick_play(&by_code("cat")).await.unwrap();
    let cat_key = cat_ticket.player_key.clone().expect("a first join's key");
    let mut cat = Player::join_with(cat_ticket).await;
    play(&mut cat, 3).await;
    let owner = created["owner_token"].as_str().unwrap();
    end(&server, &private, owner).await;
    // Someone who played elsewhere, with a key of its own.
    let (elsewhere, _) = server.create_owned_room().await;
    let eve_ticket = lobby
        .quick_play(&game_server_less::proto::Matchmake::named("eve"))
        .await
        .unwrap();
    assert_eq!(eve_ticket.room, elsewhere, "quick play's only open room");
    let eve_key = eve_ticket.player_key.clone().unwrap();
    let mut eve = Player::join_with(eve_ticket).await;
    play(&mut eve, 1).await;

    // The list: the public match to anyone, the private one to its players and the
    // operator only.
    // Rooms made in the same second come in either order: compared as sets.
    let ids = |list: &Value| -> std::collections::BTreeSet<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let set = |ids: &[&str]| -> std::collections::BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    };
    let (status, anyone) = get(&server, "/matches?ended=true", None).await;
    assert_eq!(status, 200, "{anyone}");
    assert_eq!(ids(&anyone), set(&[&public]), "{anyone}");
    let (_, as_cat) = get(&server, "/matches?ended=true", Some(&cat_key)).await;
    assert_eq!(ids(&as_cat), set(&[&private, &public]));
    let (_, as_eve) = get(&server, "/matches?ended=true", Some(&eve_key)).await;
    assert_eq!(ids(&as_eve), set(&[&public]));
    let (_, as_operator) = get(&server, "/matches?ended=true", Some(OPERATOR)).await;
    assert_eq!(ids(&as_operator), set(&[&private, &public]));
    let summary = &anyone[0];
    assert_eq!(summary["kind"], "dice");
    assert_eq!(summary["players"], json!(["ann", "bob"]));
    assert!(summary["end_reason"].as_str().is_some(), "{summary}");
    assert!(summary["entries"].as_i64().unwrap() >= 10, "{summary}");
    println!(
        "recorded: {} entries in {} bytes ({} a entry)",
        summary["entries"],
        summary["bytes"],
        summary["bytes"].as_i64().unwrap() / summary["entries"].as_i64().unwrap()
    );

    // One record: its first state, then every roll with the outputs the players saw.
    let (status, record) = get(&server, &format!("/matches/{public}"), None).await;
    assert_eq!(status, 200, "{record}");
    let segments = record["segments"].as_array().unwrap();
    let start = &segments[0]["start"];
    assert_eq!(
        (start["seq"].clone(), start["state"].clone()),
        (json!(0), json!("{}"))
    );
    let entries: Vec<&Value> = segments
        .iter()
        .flat_map(|s| s["entries"].as_array().unwrap())
        .collect();
    let rolls: Vec<&&Value> = entries
        .iter()
        .filter(|e| e["b"].as_str().unwrap().contains("roll"))
        .collect();
    assert_eq!(rolls.len(), 10);
    assert_eq!(rolls[0]["u"], "ann");
    let heard = &rolls[0]["o"][0]["m"];
    assert_eq!(
        (heard["type"].clone(), heard["player"].clone()),
        (json!("rolled"), json!("ann"))
    );
    assert_eq!(
        heard["at"], rolls[0]["at"],
        "ctx.now() is the recorded time"
    );
    assert!(
        entries.iter().any(|e| e["u"] == "$lobby"),
        "joins are recorded"
    );

    // A match still on: listed, but its record (what the room sent each player alone
    // included) is the operator's until it ends; eve's own included.
    let live = format!("/matches/{elsewhere}");
    let deadline = std::time::Instant::now() + WAIT;
    while get(&server, &live, Some(OPERATOR)).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the live match is recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, refused) = get(&server, &live, Some(&eve_key)).await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("still being played"),
        "{refused}"
    );
    let (_, listed) = get(&server, "/matches", None).await;
    assert!(
        ids(&listed).contains(&elsewhere),
        "listed while on: {listed}"
    );
    let players_of = |list: &Value, id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["players"]
            .clone()
    };
    assert_eq!(
        players_of(&listed, &elsewhere),
        json!([]),
        "who plays is not anyone's to know"
    );
    let (_, as_eve) = get(&server, "/matches", Some(&eve_key)).await;
    assert_eq!(
        players_of(&as_eve, &elsewhere),
        json!(["eve"]),
        "but its players'"
    );

    // The private record: its players and the operator; not anyone, not another player.
    let path = format!("/matches/{private}");
    assert_eq!(get(&server, &path, None).await.0, 403);
    assert_eq!(get(&server, &path, Some(&eve_key)).await.0, 403);
    assert_eq!(get(&server, &path, Some(&cat_key)).await.0, 200);
    assert_eq!(get(&server, &path, Some(OPERATOR)).await.0, 200);

    // Bad requests say what is wrong; a wrong credential is refused, not ignored.
    for (path, bearer, want) in [
        ("/matches?limit=0", None, 400),
        ("/matches?limit=5000", None, 400),
        ("/matches?colour=red", None, 400),
        ("/matches?since=yesterday", None, 400),
        ("/matches?kind=no%20such", None, 400),
        ("/matches", Some("k1.eve.not-her-secret"), 401),
        ("/matches", Some("not-a-token"), 401),
        ("/matches/no-such-match", None, 404),
        (&format!("/matches/{}", "x".repeat(5000)), None, 404),
    ] {
        let (status, body) = get(&server, path, bearer).await;
        assert_eq!(status, want, "{path}: {body}");
        if want != 404 || !body.is_null() {
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{path}: {body}"
            );
        }
    }
    let (_, openapi) = get(&server, "/openapi.json", None).await;
    for path in ["/matches", "/matches/{id}"] {
        assert!(
            openapi["paths"][path]["get"].is_object(),
            "{path} is described"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn the_gate_passes_this_build_on_100_matches_and_names_the_first_difference_of_a_changed_rule(
) {
    let dir = temp_dir("gate");
    let server = start(&dir).await;
    // 100 matches, ten at a time: two players each, rolling in turn.
    let mut played = Vec::new();
    for batch in 0..10 {
        let games = (0..10).map(|i| {
            let server = &server;
            async move {
                let (room, owner) = server.create_owned_room().await;
                let mut a = Player::join(server, &room, &format!("a{batch}x{i}"), true).await;
                let mut b = Player::join(server, &room, &format!("b{batch}x{i}"), true).await;
                for _ in 0..3 {
                    play(&mut a, 1).await;
                    play(&mut b, 1).await;
                }
                end(server, &room, &owner).await;
                room
            }
        });
        played.extend(futures_util::future::join_all(games).await);
    }
    let store: Store = server.rooms.store().clone();
    let policies = kinds(6)
        .policies(&Server::config(&dir).policy_defaults(), &[])
        .unwrap();
    let options = CheckOptions {
        matches: 100,
        ..CheckOptions::default()
    };

    let same = check(&store, &kinds(6), &policies, &options).await.unwrap();
    print!("{}", same.text());
    assert_eq!(same.matches.len(), 100);
    assert!(same.passed());
    for m in &same.matches {
        assert!(
            matches!(m.verdict, Verdict::Same { entries } if entries >= 8),
            "{m:?}"
        );
        assert!(played.contains(&m.id));
    }

    // The rule changed: a die of 20 faces. Every match differs, first at its first roll.
    let changed = check(&store, &kinds(20), &policies, &options)
        .await
        .unwrap();
    let text = changed.text();
    let last = text.lines().last().unwrap_or_default();
    let first = text.lines().take(4).collect::<Vec<_>>().join("\n");
    println!("{first}\n…\n{last}");
    assert!(!changed.passed());
    assert!(text.ends_with("FAIL\n"), "{text}");
    let latest = &changed.matches[0];
    let Verdict::Differs(d) = &latest.verdict else {
        panic!("the changed rule passed: {latest:?}");
    };
    assert!(d.input.b.contains("roll"), "{d:?}");
    let expected = d.expected.as_ref().unwrap();
    let got = d.got.as_ref().unwrap();
    assert_eq!(expected.m["type"], "rolled");
    assert_ne!(expected.m["face"], got.m["face"]);
    assert_eq!(
        expected.m["seq"].as_u64(),
        Some(d.seq + 1),
        "the seq named is the one before"
    );
    assert!(
        text.contains(&format!("DIFFERS    {}", latest.id)),
        "{text}"
    );
    assert!(
        text.contains(&format!("first at room seq {}", d.seq)),
        "{text}"
    );
    // Declared intended, the same differences pass.
    let intended = CheckOptions {
        intended: vec!["dice".into()],
        ..options.clone()
    };
    let allowed = check(&store, &kinds(20), &policies, &intended)
        .await
        .unwrap();
    assert!(allowed.passed(), "{}", allowed.text());
    assert!(allowed.text().contains("differ as intended"));
    server.stop().await;
}

#[tokio::test]
async fn the_game_servers_gate_passes_its_own_matches_from_the_command_line() {
    let dir = temp_dir("gate-cli");
    let server = Server::game(&dir).await;
    let (room, owner) = server.create_owned_room().await;
    let mut ann = Player::join(&server, &room, "ann", true).await;
    for dx in [1, 1, -1, 0, 1] {
        ann.send(json!({ "type": "move", "dx": dx, "dy": 1 })).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    end(&server, &room, &owner).await;
    server.stop().await;
    let (passed, text, _) = gate(&dir, &["--check"]);
    assert!(passed, "{text}");
    assert!(text.contains(&format!("identical  {room}")), "{text}");
    assert!(
        text.contains("1 matches") && text.ends_with("pass\n"),
        "{text}"
    );
    let (passed, _, err) = gate(&dir, &[]);
    assert!(!passed);
    assert!(err.contains("--check"));
    // A gate pointed at no store, or at one with nothing recorded, does not pass.
    let nowhere = dir.join("no-such-dir");
    let (passed, _, err) = gate(&nowhere, &["--check"]);
    assert!(!passed && err.contains("no store at"), "{err}");
    assert!(!nowhere.exists(), "and it made none");
    let empty = temp_dir("gate-empty");
    Server::game(&empty).await.stop().await;
    let (passed, _, err) = gate(&empty, &["--check"]);
    assert!(!passed && err.contains("no recorded match"), "{err}");
}

/// `game-server --data-dir DIR replay ARGS`: whether it exited 0, and what it printed
/// (stdout, stderr; both printed here too).
fn gate(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(server_binary())
        .args(["--data-dir", dir.to_str().unwrap(), "replay"])
        .args(args)
        .output()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("{text}{err}");
    (out.status.success(), text, err)
}
