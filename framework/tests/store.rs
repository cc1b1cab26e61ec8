//! The store against SQLite (a file) and PostgreSQL, through the same SQL.

use game_server_less::proto::Grant;
use game_server_less::room::Transfer;
use game_server_less::store::{Checkpoint, NewRoom, Seated, Store, TransferPlan};
use std::collections::BTreeMap;

fn postgres_url() -> String {
    std::env::var("GSL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{nanos}")
}

async fn exercise(store: &Store) {
    let room = unique("r");
    let player = unique("p");
    store
        .create_room(&NewRoom::plain(&room, "test room"))
        .await
        .unwrap();
    assert!(store
        .live_rooms()
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == room));
    assert_eq!(store.room(&room).await.unwrap().unwrap().name, "test room");

    assert_eq!(
        store
            .add_player(&room, &player, "j1", 10, None)
            .await
            .unwrap(),
        Seated::Added
    );
    assert!(
        store
            .add_player(&room, &player, "j2", 10, None)
            .await
            .unwrap()
            == Seated::There,
        "joining twice is one player, and the first join stays"
    );
    assert_eq!(
        store.player_join(&room, &player).await.unwrap().as_deref(),
        Some("j1")
    );
    assert!(store.rejoin_player(&room, &player, "j3").await.unwrap());
    assert_eq!(
        store.player_join(&room, &player).await.unwrap().as_deref(),
        Some("j3")
    );
    assert!(store.claim_name(&player, "hash1").await.unwrap());
    assert!(
        !store.claim_name(&player, "hash2").await.unwrap(),
        "first claim wins"
    );
    assert_eq!(
        store.name_key(&player).await.unwrap().as_deref(),
        Some("hash1")
    );
    assert_eq!(
        store.players(&room).await.unwrap(),
        std::slice::from_ref(&player)
    );

    store.add_item(&player, "gem", 2).await.unwrap();
    store.add_item(&player, "gem", 3).await.unwrap();
    assert_eq!(
        store.items(&player).await.unwrap(),
        BTreeMap::from([("gem".to_owned(), 5)])
    );

    assert_eq!(store.checkpoint(&room).await.unwrap(), None);
    let checkpoint = Checkpoint {
        seq: 42,
        state: r#"{"count":7}"#.into(),
        applied: BTreeMap::from([(player.clone(), 9)]),
        players: vec![player.clone()],
        version: 0,
        activity: r#"{"inputs_per_second":0.1,"recent":[]}"#.into(),
    };
    let grants = [Grant {
        player: player.clone(),
        item: "coin".into(),
        count: 1,
    }];
    store
        .save_checkpoint(&room, &checkpoint, &grants, &[], None)
        .await
        .unwrap();
    // A second worker that also started from "no checkpoint" is fenced off: nothing it
    // asked for is written, grants included.
    let stale = store
        .save_checkpoint(&room, &checkpoint, &grants, &[], None)
        .await;
    assert!(
        matches!(stale, Err(game_server_less::Error::Fenced(_))),
        "{stale:?}"
    );
    let saved = store.checkpoint(&room).await.unwrap().unwrap();
    assert_eq!(saved.version, 1);
    let next = Checkpoint { seq: 43, ..saved };
    store
        .save_checkpoint(&room, &next, &[], &[], None)
        .await
        .unwrap(); // replaces
    assert_eq!(
        store.checkpoint(&room).await.unwrap(),
        Some(Checkpoint {
            version: 2,
            ..next.clone()
        })
    );
    // A checkpoint saved without activity keeps the one saved before.
    let quiet = Checkpoint {
        seq: 44,
        version: 2,
        activity: String::new(),
        ..next.clone()
    };
    store
        .save_checkpoint(&room, &quiet, &[], &[], None)
        .await
        .unwrap();
    let kept = store.checkpoint(&room).await.unwrap().unwrap();
    assert_eq!((kept.seq, kept.activity), (44, next.activity));
    assert_eq!(
        store.items(&player).await.unwrap()["coin"],
        1,
        "granted once"
    );

    assert!(store.remove_player(&room, &player).await.unwrap());
    assert!(!store.remove_player(&room, &player).await.unwrap());

    // A room keeps the first code version that ran it; chains of workers supersede.
    assert_eq!(store.code_version(&room).await.unwrap(), None);
    let pinned = store.pin_code_version(&room, "worker:1").await.unwrap();
    assert_eq!(pinned.as_deref(), Some("worker:1"));
    let again = store.pin_code_version(&room, "worker:2").await.unwrap();
    assert_eq!(again.as_deref(), Some("worker:1"), "never moves");
    assert_eq!(store.chain(&room).await.unwrap(), Some(0));
    assert_eq!(store.next_chain(&room).await.unwrap(), Some(1));
    assert_eq!(store.next_chain(&room).await.unwrap(), Some(2));
    assert_eq!(store.chain(&room).await.unwrap(), Some(2));
    store.end_room(&room, "test over").await.unwrap();
    assert_eq!(
        store.chain(&room).await.unwrap(),
        None,
        "an ended room has none"
    );
    assert_eq!(store.next_chain(&room).await.unwrap(), None);
    assert_eq!(
        store.pin_code_version(&room, "worker:3").await.unwrap(),
        None
    );
    assert_eq!(store.room(&room).await.unwrap(), None);
    assert_eq!(store.checkpoint(&room).await.unwrap(), None);
    assert_eq!(
        store.items(&player).await.unwrap().len(),
        2,
        "inventories outlive rooms"
    );
}

/// Checkpoints saved at once go in one group commit; each still gets its own answer: a
/// fenced room among written ones, a room saved twice in one group, grants and match
/// record segments only for what was written (150 saves: more than one statement's
/// rows).
async fn group_commit(store: &Store) {
    use game_server_less::store::{MatchViewer, Segment};
    let rooms: Vec<String> = (0..150).map(|i| unique(&format!("g{i:03}-"))).collect();
    // The rooms whose records are read back below (a record is a room's).
    for i in [0, 1, 2, 99, 100, 149] {
        store
            .create_room(&NewRoom::plain(&rooms[i], "grouped"))
            .await
            .unwrap();
    }
    // Save `i`'s segment: one entry, recorded at `i` ms.
    let segment = |i: u64| Segment {
        entries: format!("{{\"u\":\"ann\",\"at\":{i},\"b\":\"{{}}\"}}\n"),
        n: 1,
        outputs: 0,
        first_at: i,
        last_at: i,
        start: None,
        joined: vec![],
        forget_before: None,
    };
    let player = unique("gp");
    let checkpoint = |seq: u64, version: u64| Checkpoint {
        seq,
        state: format!(r#"{{"seq":{seq}}}"#),
        applied: BTreeMap::from([(player.clone(), seq)]),
        players: vec![player.clone()],
        version,
        activity: String::new(),
    };
    let grant = [Grant {
        player: player.clone(),
        item: "gem".into(),
        count: 1,
    }];
    // Rooms 0 and 1 get a first checkpoint; room 1 then a second, so that room 1's
    // version 1 is stale below.
    store
        .save_checkpoint(&rooms[0], &checkpoint(1, 0), &[], &[], None)
        .await
        .unwrap();
    store
        .save_checkpoint(&rooms[1], &checkpoint(1, 0), &[], &[], None)
        .await
        .unwrap();
    store
        .save_checkpoint(&rooms[1], &checkpoint(2, 1), &[], &[], None)
        .await
        .unwrap();

    let mut saves = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let version = match i {
            0 => 1, // the latest: replaced
            1 => 1, // stale: fenced
            _ => 0, // new rooms
        };
        saves.push((room.clone(), checkpoint(10 + i as u64, version)));
    }
    // Room 2 twice in the same group, as an old and a new worker both starting from
    // nothing: one of them wins.
    saves.push((rooms[2].clone(), checkpoint(99, 0)));
    let results = futures_util::future::join_all(saves.iter().enumerate().map(|(i, (room, c))| {
        store.save_checkpoint(room, c, &grant, &[], Some(segment(i as u64)))
    }))
    .await;
    let fenced = |r: &Result<(), game_server_less::Error>| {
        matches!(r, Err(game_server_less::Error::Fenced(_)))
    };
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(fenced(&results[1]), "{:?}", results[1]);
    for r in &results[3..150] {
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(
        results[2].is_ok() != results[150].is_ok()
            && (fenced(&results[2]) || fenced(&results[150])),
        "exactly one of two savers of a new room wins: {:?} {:?}",
        results[2],
        results[150]
    );
    async fn saved(store: &Store, room: &str) -> Checkpoint {
        store.checkpoint(room).await.unwrap().unwrap()
    }
    assert_eq!(saved(store, &rooms[0]).await.version, 2);
    assert_eq!(saved(store, &rooms[0]).await.seq, 10);
    assert_eq!(
        saved(store, &rooms[1]).await.seq,
        2,
        "the fenced save wrote nothing"
    );
    assert_eq!(saved(store, &rooms[149]).await.seq, 159);
    let winner = if results[2].is_ok() { 12 } else { 99 };
    assert_eq!(saved(store, &rooms[2]).await.seq, winner);
    assert_eq!(
        store.items(&player).await.unwrap()["gem"],
        149,
        "a grant for each written save, none for the fenced ones"
    );
    let operator = MatchViewer {
        operator: true,
        player: None,
    };
    // Each written save's segment, under the version it made, and nothing of the fenced.
    let record = |room: &str| {
        let room = room.to_owned();
        let operator = operator.clone();
        async move {
            let found = store.match_record(&room, &operator).await.unwrap();
            found.map_or(vec![], |(_, segments)| {
                segments
                    .iter()
                    .map(|s| (s.version, s.first_at))
                    .collect::<Vec<_>>()
            })
        }
    };
    assert_eq!(record(&rooms[0]).await, [(2, 0)]);
    assert_eq!(
        record(&rooms[1]).await,
        [],
        "the fenced save wrote no segment"
    );
    let winner = if results[2].is_ok() { 2 } else { 150 };
    assert_eq!(record(&rooms[2]).await, [(1, winner)]);
    for i in [99, 100, 149] {
        assert_eq!(record(&rooms[i]).await, [(1, i as u64)]);
    }
}

/// Two processes (two stores on one database) asking at once for the room named N: one
/// room, whoever asks; its end frees the name for a new one.
async fn one_live_room_a_name(a: &Store, b: &Store) {
    let name = unique("caves-");
    let asks = (0..8).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        let name = name.clone();
        async move {
            store
                .named_room(&name, &unique(&format!("c{i}-")), "")
                .await
        }
    });
    let answers: Vec<(String, bool)> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let room = answers[0].0.clone();
    assert!(answers.iter().all(|(r, _)| *r == room), "{answers:?}");
    assert_eq!(
        answers.iter().filter(|(_, created)| *created).count(),
        1,
        "one of them made it: {answers:?}"
    );
    let live = a.live_rooms().await.unwrap();
    assert_eq!(live.iter().filter(|r| r.name == name).count(), 1);
    assert_eq!(
        b.named_room(&name, "unused", "").await.unwrap(),
        (room.clone(), false)
    );
    a.end_room(&room, "over").await.unwrap();
    let (next, created) = b.named_room(&name, &unique("next-"), "").await.unwrap();
    assert!(
        created && next != room,
        "a new room for the name once it ended"
    );
}

/// Transfers wait in the outbox from the checkpoint that holds them until they are done;
/// the first plan of one stands; a fenced checkpoint's transfers are never written.
async fn transfers_outbox(store: &Store) {
    let room = unique("t");
    store
        .create_room(&NewRoom::plain(&room, "meadow"))
        .await
        .unwrap();
    let transfer = |n: u64| Transfer {
        key: format!("{room}/{n}"),
        from: room.clone(),
        player: "ann".into(),
        room: "caves".into(),
        carried: serde_json::json!({ "hp": n }),
    };
    let checkpoint = Checkpoint {
        seq: 1,
        state: "{}".into(),
        applied: BTreeMap::new(),
        players: vec!["ann".into()],
        version: 0,
        activity: String::new(),
    };
    let (first, second) = (transfer(2), transfer(10));
    store
        .save_checkpoint(
            &room,
            &checkpoint,
            &[],
            &[first.clone(), second.clone()],
            None,
        )
        .await
        .unwrap();
    let fenced = store
        .save_checkpoint(&room, &checkpoint, &[], &[transfer(11)], None)
        .await;
    assert!(fenced.is_err(), "{fenced:?}");
    assert_eq!(
        store.pending_transfers(&room).await.unwrap(),
        [first.clone(), second.clone()],
        "in the order asked, and none from the fenced save"
    );
    assert_eq!(store.transfer_plan(&first.key).await.unwrap(), None);
    let plan = |to: &str| TransferPlan {
        to_room: to.into(),
        join: format!("j-{to}"),
        from_join: "j0".into(),
    };
    let planned = store.plan_transfer(&first.key, &plan("r1")).await.unwrap();
    assert_eq!(planned, Some(plan("r1")));
    let again = store.plan_transfer(&first.key, &plan("r2")).await.unwrap();
    assert_eq!(again, Some(plan("r1")), "the first plan stands");
    assert_eq!(
        store.plan_transfer("nope/1", &plan("r1")).await.unwrap(),
        None
    );
    store.transfer_done(&first.key).await.unwrap();
    assert_eq!(store.pending_transfers(&room).await.unwrap(), [second]);
}

/// Two processes seating 40 players at once in rooms of 4 and taking them out again:
/// never more seats than the most, a seat freed by each leave, and reservations given
/// up only once expired and unconfirmed.
async fn seats_never_overfill(a: &Store, b: &Store) {
    let rooms: Vec<String> = (0..3).map(|i| unique(&format!("seats{i}-"))).collect();
    for room in &rooms {
        a.create_room(&NewRoom::plain(room, "seats")).await.unwrap();
    }
    let tries = (0..40).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        let rooms = rooms.clone();
        async move {
            for room in &rooms {
                let player = format!("p{i}");
                match store.add_player(room, &player, "j", 4, None).await.unwrap() {
                    Seated::Added => return Some(room.clone()),
                    Seated::Full => continue,
                    Seated::There => panic!("{player} was seated twice"),
                }
            }
            None
        }
    });
    let placed = futures_util::future::join_all(tries).await;
    assert_eq!(
        placed.iter().flatten().count(),
        12,
        "3 rooms of 4: {placed:?}"
    );
    for room in &rooms {
        let record = a.room(room).await.unwrap().unwrap();
        assert_eq!(record.seats, 4);
        assert_eq!(a.players(room).await.unwrap().len(), 4);
    }
    let (room, gone) = (&rooms[0], a.players(&rooms[0]).await.unwrap()[0].clone());
    assert!(b.remove_player(room, &gone).await.unwrap());
    assert!(!a.remove_player(room, &gone).await.unwrap(), "gone once");
    assert_eq!(a.room(room).await.unwrap().unwrap().seats, 3);

    // A reservation: held while unexpired, kept once confirmed, given up after.
    let past = 1;
    assert_eq!(
        a.add_player(room, "late", "jl", 4, Some(past))
            .await
            .unwrap(),
        Seated::Added
    );
    assert_eq!(
        a.add_player(room, "more", "jm", 4, None).await.unwrap(),
        Seated::Full
    );
    assert!(!a
        .expire_reservation(room, "late", "other-join")
        .await
        .unwrap());
    let expired = a.expired_reservations(1000).await.unwrap();
    assert!(
        expired.contains(&(room.clone(), "late".into(), "jl".into())),
        "{expired:?}"
    );
    assert!(b.expire_reservation(room, "late", "jl").await.unwrap());
    assert!(
        !a.expire_reservation(room, "late", "jl").await.unwrap(),
        "once"
    );
    assert_eq!(a.room(room).await.unwrap().unwrap().seats, 3);
    let future = i64::MAX / 2;
    a.add_player(room, "kept", "jk", 4, Some(future))
        .await
        .unwrap();
    assert!(a.confirm_seat(room, "kept", "jk").await.unwrap());
    assert!(
        !a.confirm_seat(room, "kept", "jk").await.unwrap(),
        "confirmed once"
    );

    // A locked room seats no one; quick play's candidates skip full and locked ones.
    let open = unique("open-");
    a.create_room(&NewRoom::plain(&open, "open")).await.unwrap();
    a.add_player(&open, "x", "jx", 4, None).await.unwrap();
    let candidates = a.open_rooms("", 4, 0, 10_000).await.unwrap();
    assert!(candidates.iter().any(|r| r.id == open));
    assert!(!candidates
        .iter()
        .any(|r| rooms.contains(&r.id) && r.seats >= 4));
    assert!(a.set_locked(&open, true).await.unwrap());
    assert_eq!(
        a.add_player(&open, "y", "jy", 4, None).await.unwrap(),
        Seated::Full
    );
    let candidates = a.open_rooms("", 4, 0, 10_000).await.unwrap();
    assert!(
        !candidates.iter().any(|r| r.id == open),
        "locked rooms are passed by"
    );
}

/// Match records: a segment goes in with its checkpoint and not with a fenced one, the
/// players who joined decide who sees a private record, a bounded record forgets what
/// is before its stretch, and the retention forgets ended matches.
async fn match_records(store: &Store) {
    use game_server_less::store::{MatchQuery, MatchViewer, Segment};
    let (public, private, live) = (unique("mp"), unique("mq"), unique("ml"));
    store
        .create_room(&NewRoom::plain(&public, "open"))
        .await
        .unwrap();
    let meta = serde_json::json!({});
    store
        .create_room(&NewRoom {
            code: Some(&unique("c")),
            meta: &meta,
            ..NewRoom::plain(&private, "closed")
        })
        .await
        .unwrap();
    let segment = |n: u32, at: u64, start: bool, joined: &[&str]| Segment {
        entries: (0..n)
            .map(|i| {
                format!(
                    "{{\"u\":\"ann\",\"at\":{},\"b\":\"{{}}\"}}\n",
                    at + u64::from(i)
                )
            })
            .collect(),
        n,
        outputs: 0,
        first_at: at,
        last_at: at + u64::from(n) - 1,
        start: start.then(|| "{\"seq\":0,\"state\":\"{}\",\"applied\":{},\"players\":[]}".into()),
        joined: joined.iter().map(|p| p.to_string()).collect(),
        forget_before: None,
    };
    let checkpoint = |version: u64| Checkpoint {
        seq: version,
        state: "{}".into(),
        applied: BTreeMap::new(),
        players: vec![],
        version,
        activity: String::new(),
    };
    store
        .create_room(&NewRoom::plain(&live, "on"))
        .await
        .unwrap();
    for room in [&public, &private, &live] {
        store
            .save_checkpoint(
                room,
                &checkpoint(0),
                &[],
                &[],
                Some(segment(3, 1_000, true, &["ann"])),
            )
            .await
            .unwrap();
    }
    // A fenced save (another worker's, from version 0 again) writes no segment.
    let fenced = store
        .save_checkpoint(
            &public,
            &checkpoint(0),
            &[],
            &[],
            Some(segment(9, 5_000, false, &["eve"])),
        )
        .await;
    assert!(matches!(fenced, Err(game_server_less::Error::Fenced(_))));
    store
        .save_checkpoint(
            &public,
            &checkpoint(1),
            &[],
            &[],
            Some(segment(2, 2_000, false, &["bob"])),
        )
        .await
        .unwrap();
    let operator = MatchViewer {
        operator: true,
        player: None,
    };
    let (summary, segments) = store
        .match_record(&public, &operator)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (summary.entries, summary.first_at, summary.last_at),
        (5, 1_000, 2_001)
    );
    assert_eq!(
        summary.players,
        ["ann", "bob"],
        "not eve: her save was fenced"
    );
    assert_eq!(
        segments.iter().map(|s| s.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(segments[0].start.is_some() && segments[1].start.is_none());
    // A match still on is the operator's alone: what the room sent each player is in it.
    let on = store.match_record(&live, &MatchViewer::default()).await;
    assert!(
        matches!(on, Err(game_server_less::Error::Forbidden(_))),
        "{on:?}"
    );
    assert!(store
        .match_record(&live, &operator)
        .await
        .unwrap()
        .is_some());
    // An ended private record: its players and the operator.
    store.end_room(&private, "over").await.unwrap();
    let as_player = |p: &str| MatchViewer {
        operator: false,
        player: Some(p.into()),
    };
    for (viewer, sees) in [
        (as_player("ann"), true),
        (as_player("eve"), false),
        (MatchViewer::default(), false),
        (operator.clone(), true),
    ] {
        let got = store.match_record(&private, &viewer).await;
        assert_eq!(got.is_ok(), sees, "{viewer:?}: {got:?}");
        let listed = store
            .matches(
                &MatchQuery {
                    limit: 1000,
                    ..MatchQuery::default()
                },
                &viewer,
            )
            .await
            .unwrap();
        assert_eq!(listed.iter().any(|m| m.id == private), sees, "{viewer:?}");
        assert!(
            listed.iter().any(|m| m.id == public),
            "the public one to all"
        );
        assert!(listed.iter().any(|m| m.id == live), "listed while on");
    }
    assert!(store
        .match_record(&unique("none"), &operator)
        .await
        .unwrap()
        .is_none());
    // A bounded record forgets the segments before its stretch's keyframe.
    let forget = Segment {
        forget_before: Some(3),
        ..segment(1, 3_000, true, &[])
    };
    store
        .save_checkpoint(&public, &checkpoint(2), &[], &[], Some(forget))
        .await
        .unwrap();
    let (_, segments) = store
        .match_record(&public, &operator)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(segments.iter().map(|s| s.version).collect::<Vec<_>>(), [3]);
    // Ended matches are forgotten after the retention; live ones are not.
    store.end_room(&public, "over").await.unwrap();
    let day = std::time::Duration::from_secs(86_400);
    store.forget_matches(day).await.unwrap();
    assert!(
        store
            .match_record(&public, &operator)
            .await
            .unwrap()
            .is_some(),
        "kept a day"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    store
        .forget_matches(std::time::Duration::ZERO)
        .await
        .unwrap();
    for ended in [&public, &private] {
        let forgotten = store.match_record(ended, &operator).await.unwrap();
        assert!(forgotten.is_none(), "forgotten");
    }
    let on = store.match_record(&live, &operator).await.unwrap();
    assert!(on.is_some(), "still on");
}

#[tokio::test]
async fn sqlite_file_store() {
    let dir = std::env::temp_dir().join(unique("gsl-store-"));
    let url = format!("sqlite://{}/nested/game.db", dir.display());
    let store = Store::open(&url).await.unwrap();
    exercise(&store).await;
    group_commit(&store).await;
    transfers_outbox(&store).await;
    one_live_room_a_name(&store, &Store::open(&url).await.unwrap()).await;
    seats_never_overfill(&store, &Store::open(&url).await.unwrap()).await;
    match_records(&store).await;
    // Migrations run once: opening again keeps the data.
    store.add_item("keeper", "herb", 1).await.unwrap();
    drop(store);
    let again = Store::open(&url).await.unwrap();
    assert_eq!(again.items("keeper").await.unwrap()["herb"], 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// Commits reach the SQLite file itself within a few seconds: the write-ahead log is
/// written back by the store's own connection for it, no commit waiting on it. Read with
/// `immutable=1`, SQLite looks at the file alone, not the log.
#[tokio::test]
async fn a_sqlite_store_writes_its_log_back_to_the_file() {
    use sqlx::{Connection, Row};
    let dir = std::env::temp_dir().join(unique("gsl-wal-"));
    let path = dir.join("game.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.add_item("writer", "gem", 7).await.unwrap();
    let in_file = || async {
        let file = format!("sqlite://{}?immutable=1&mode=ro", path.display());
        let mut conn = sqlx::AnyConnection::connect(&file).await.unwrap();
        // Before the first write-back the file has not even the tables.
        sqlx::query("SELECT COUNT(*) AS n FROM user_items WHERE player = 'writer'")
            .fetch_one(&mut conn)
            .await
            .map_or(0, |row| row.get::<i64, _>("n"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while in_file().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not written back to the file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_store() {
    let url = postgres_url();
    let store = Store::open(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running for this test ({url}): {e}"));
    exercise(&store).await;
    group_commit(&store).await;
    transfers_outbox(&store).await;
    let other = Store::open(&url).await.expect("migrations are idempotent");
    one_live_room_a_name(&store, &other).await;
    seats_never_overfill(&store, &other).await;
    match_records(&store).await;
}

#[tokio::test]
async fn a_bad_store_url_says_what_is_wrong() {
    let err = Store::open("mysql://nowhere/db")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot open the store mysql://nowhere/db"),
        "{err}"
    );
}
