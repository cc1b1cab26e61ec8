//! Every rule of the world, with simulated players (`TestRoom`): no sockets.

use super::*;
use crate::protocol::In;
use game_server_less::proto::{Body, RoomEvent};
use game_server_less::testing::TestRoom;
use game_server_less::Arrival;
use serde_json::json;

const TINY: &str = "#####\n#S.S#\n#.#.#\n#####";

/// The game's own handlers on a world of `map`, with nothing on the floor.
fn game(map: &'static str) -> TestRoom<World> {
    TestRoom::new(crate::msg().with_state(move || {
        let mut w = World::new(Zone::Meadow, Map::parse(map));
        w.items.clear();
        w
    }))
}

fn step(dx: i32, dy: i32) -> In {
    In::Move(Move { dx, dy })
}

fn say(text: &str) -> In {
    In::Chat(Chat { text: text.into() })
}

/// The variant names of `msgs`, as `type` spells them.
fn types(msgs: &[Out]) -> Vec<String> {
    msgs.iter()
        .map(|m| {
            serde_json::to_value(m).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn place(room: &mut TestRoom<World>, name: &str, x: i32, y: i32) {
    let hero = room.state_mut().players.get_mut(name).unwrap();
    hero.x = x;
    hero.y = y;
}

fn with_xp(xp: i64) -> Arrival {
    Arrival {
        items: [(XP.to_owned(), xp)].into(),
        ..Arrival::default()
    }
}

#[test]
fn players_spawn_at_free_spawn_points_and_see_the_world() {
    let mut room = game(TINY);
    room.join("ann");
    room.join("bob");
    assert_eq!(
        (room.state().players["ann"].x, room.state().players["ann"].y),
        (1, 1)
    );
    assert_eq!(
        (room.state().players["bob"].x, room.state().players["bob"].y),
        (3, 1)
    );
    let ann = room.received_game::<Out>("ann");
    assert_eq!(types(&ann), ["joined", "welcome", "joined"]);
    let Out::Welcome(world) = &ann[1] else {
        panic!("{ann:?}")
    };
    assert_eq!(
        (world.map[2].as_str(), world.zone.as_str()),
        ("#.#.#", "meadow")
    );
    room.send("bob", In::Look(Look {})).unwrap();
    let look = room.received_game::<Out>("bob").pop().unwrap();
    let Out::Welcome(world) = look else {
        panic!("{look:?}")
    };
    let full = max_hp(1);
    let ann = Player {
        x: 1,
        y: 1,
        hp: full,
        level: 1,
        away: false,
    };
    assert_eq!(world.players["ann"], ann);
}

#[test]
fn walls_and_players_outside_the_arena_block_moves() {
    let mut room = game(TINY);
    room.join("ann");
    room.join("bob");
    room.received("ann");
    room.received("bob");
    room.send("ann", step(0, -1)).unwrap(); // wall
    room.send("ann", step(1, 0)).unwrap();
    room.send("ann", step(1, 0)).unwrap(); // bob, not in an arena
    assert_eq!(
        (room.state().players["ann"].x, room.state().players["ann"].y),
        (2, 1)
    );
    let ann = room.received_game::<Out>("ann");
    assert_eq!(types(&ann), ["blocked", "moved", "blocked"]);
    assert_eq!(
        ann[2],
        Out::Blocked {
            at: Pos { x: 2, y: 1 }
        }
    );
    let bob = room.received_game::<Out>("bob");
    assert_eq!(types(&bob), ["moved"], "only the real move is broadcast");
    assert_eq!(
        room.state().players["bob"].hp,
        max_hp(1),
        "no blow outside the arena"
    );
}

#[test]
fn bad_moves_and_chat_are_errors_for_the_sender() {
    let mut room = game(TINY);
    room.join("ann");
    let err = room.send("ann", step(5, 0)).unwrap_err();
    assert!(err.contains("one step"), "{err}");
    let err = room.send("ann", step(0, 0)).unwrap_err();
    assert!(err.contains("one step"), "{err}");
    let err = room.send("ann", say("  ")).unwrap_err();
    assert!(err.contains("1 to 200"), "{err}");
    let err = room.send("ann", say("a\u{7}b")).unwrap_err();
    assert!(err.contains("control"), "{err}");
    let err = room.send("ann", json!({ "type": "dance" })).unwrap_err();
    assert_eq!(err, "unknown message type \"dance\"");
    let err = room
        .send("ann", json!({ "type": "move", "dx": "left" }))
        .unwrap_err();
    assert!(err.starts_with("invalid \"move\" message"), "{err}");
}

#[test]
fn picking_up_an_item_grants_it_and_tells_everyone() {
    let mut room = game(TINY);
    room.join("ann");
    room.state_mut().items.push(FloorItem {
        id: 99,
        kind: "gem".into(),
        x: 1,
        y: 2,
    });
    room.send("ann", step(0, 1)).unwrap();
    let grants = room.grants();
    assert_eq!(
        (grants[0].player.as_str(), grants[0].item.as_str()),
        ("ann", "gem")
    );
    assert!(room.state().items.is_empty());
    let picked = Out::Picked {
        player: "ann".into(),
        item: "gem".into(),
        id: 99,
    };
    assert!(room.received_game::<Out>("ann").contains(&picked));
}

#[test]
fn chat_and_leaving_are_announced() {
    let mut room = game(TINY);
    room.join("ann");
    room.join("bob");
    room.received("bob");
    room.send("ann", say("hello")).unwrap();
    room.leave("ann");
    let bob = room.received_as::<Out>("bob");
    let said = Out::Chat {
        player: "ann".into(),
        text: "hello".into(),
    };
    assert_eq!(bob[0].body, Body::Game(said));
    assert_eq!(bob[0].input_seq, Some(1));
    assert_eq!(
        bob[1].body,
        Body::Game(Out::Left {
            player: "ann".into()
        })
    );
    assert_eq!(bob[1].seq, 4, "joined, joined, chat, left");
}

#[test]
fn a_full_world_tells_the_newcomer() {
    let mut room = game("###\n#S#\n###");
    room.join("ann");
    room.received("ann");
    room.join("bob");
    let bob = room.received_as::<Out>("bob");
    let full = RoomEvent::Error {
        error: "the world is full".into(),
    };
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert_eq!(bob[0].body, Body::Room(full));
    assert!(
        room.received("ann").is_empty(),
        "a refused join is not announced"
    );
    assert!(!room.state().players.contains_key("bob"));
    let err = room.send("bob", step(1, 0)).unwrap_err();
    assert!(err.contains("no body"), "{err}");
}

#[test]
fn walking_into_an_npc_strikes_it_and_slaying_it_pays_experience_once() {
    let mut room = game("######\n#SN..#\n######");
    room.join("ann");
    room.received("ann");
    let mut blows = 0;
    while !room.state().npcs.is_empty() {
        room.send("ann", step(1, 0)).unwrap();
        blows += 1;
        assert!(blows <= NPC_HP, "an NPC falls after at most {NPC_HP} blows");
    }
    let ann = room.received_game::<Out>("ann");
    let Out::Hit {
        by,
        target,
        damage,
        hp,
    } = &ann[0]
    else {
        panic!("{ann:?}")
    };
    assert_eq!(by, &Fighter::Player { name: "ann".into() });
    assert_eq!(target, &Fighter::Npc { id: 1 });
    assert!(
        (2..=3).contains(damage) && *hp == NPC_HP - damage,
        "{ann:?}"
    );
    let slain = Out::Slain {
        npc: 1,
        by: "ann".into(),
        xp: XP_PER_NPC,
    };
    assert!(ann.contains(&slain), "{ann:?}");
    let grants = room.grants();
    assert_eq!(grants.len(), 1, "one kill, one payment");
    assert_eq!((grants[0].item.as_str(), grants[0].count), (XP, XP_PER_NPC));
    assert_eq!(room.state().players["ann"].xp, XP_PER_NPC);
    assert_eq!(room.state().players["ann"].x, 1, "a blow is not a step");
}

#[test]
fn a_slain_npc_comes_back_home_later() {
    let mut room = game("######\n#SN..#\n######");
    room.join("ann");
    room.state_mut().npcs[0].hp = 1;
    room.send("ann", step(1, 0)).unwrap();
    assert!(room.state().npcs.is_empty());
    place(&mut room, "ann", 4, 1); // out of its way, and out of its reach
    room.tick(NPC_RESPAWN as usize + 1);
    assert_eq!(room.state().npcs.len(), 1);
    assert_eq!(room.state().npcs[0].hp, NPC_HP);
}

#[test]
fn npcs_strike_players_next_to_them_and_a_fallen_player_respawns_healed() {
    let mut room = game("######\n#SN.S#\n######");
    room.join("ann");
    room.received("ann");
    room.state_mut().players.get_mut("ann").unwrap().hp = 2;
    room.tick(NPC_EVERY as usize);
    assert_eq!(room.state().players["ann"].hp, 1, "one blow per NPC turn");
    room.tick(NPC_EVERY as usize);
    let ann = room.received_game::<Out>("ann");
    let died = Out::Died {
        player: "ann".into(),
        by: Fighter::Npc { id: 1 },
    };
    assert!(ann.contains(&died), "{ann:?}");
    let hero = &room.state().players["ann"];
    assert_eq!(
        (hero.x, hero.y, hero.hp),
        (4, 1, max_hp(1)),
        "at the free spawn point"
    );
    assert!(matches!(ann.last(), Some(Out::Respawned { .. })), "{ann:?}");
    assert!(room.grants().is_empty(), "NPCs earn nothing");
}

#[test]
fn players_fight_only_inside_the_arena_and_the_winner_earns_experience() {
    let mut room = game("#######\n#S.S..#\n#AAA..#\n#######");
    room.join("ann");
    room.join("bob");
    place(&mut room, "ann", 1, 2);
    place(&mut room, "bob", 2, 2);
    room.state_mut().players.get_mut("bob").unwrap().hp = 1;
    room.received("bob");
    room.send("ann", step(1, 0)).unwrap();
    let bob = room.received_game::<Out>("bob");
    assert_eq!(types(&bob), ["hit", "died", "respawned"], "{bob:?}");
    assert_eq!(room.grants()[0].count, XP_PER_PLAYER);
    // Outside the arena the same bump is blocked.
    place(&mut room, "ann", 4, 1);
    place(&mut room, "bob", 5, 1);
    room.received("ann");
    room.send("ann", step(1, 0)).unwrap();
    assert_eq!(types(&room.received_game::<Out>("ann")), ["blocked"]);
}

#[test]
fn experience_from_the_store_sets_the_level_and_a_level_up_heals() {
    let mut room = game("######\n#SN..#\n######");
    room.join_with("ann", with_xp(45));
    let hero = room.state().players["ann"].clone();
    assert_eq!((hero.view().level, hero.hp), (1, max_hp(1)));
    room.state_mut().players.get_mut("ann").unwrap().hp = 3;
    room.state_mut().npcs[0].hp = 1;
    room.received("ann");
    room.send("ann", step(1, 0)).unwrap();
    let ann = room.received_game::<Out>("ann");
    let Some(Out::LevelUp { player, is }) = ann.last() else {
        panic!("{ann:?}")
    };
    assert_eq!((player.as_str(), is.level, is.hp), ("ann", 2, max_hp(2)));
}

#[test]
fn stepping_into_a_portal_transfers_the_player_to_the_other_zone_with_the_hit_points() {
    let mut room = game("#####\n#SO.#\n#####");
    room.join("ann");
    room.join("bob");
    room.state_mut().players.get_mut("ann").unwrap().hp = 5;
    room.received("bob");
    room.send("ann", step(1, 0)).unwrap();
    let moved = room.transfers();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        (moved[0].player.as_str(), moved[0].room.as_str()),
        ("ann", "caves")
    );
    let carried: Carried = serde_json::from_value(moved[0].carried.clone()).unwrap();
    assert_eq!(carried, Carried { hp: 5 });
    let bob = room.received_as::<Out>("bob");
    let travelled = Out::Travelled {
        player: "ann".into(),
        zone: "caves".into(),
    };
    assert_eq!(bob[0].body, Body::Game(travelled));
    assert!(
        !room.state().players.contains_key("ann"),
        "gone from the map"
    );
    // The framework moves ann and then makes her leave: nobody hears of it twice.
    room.leave("ann");
    assert!(room.received("bob").is_empty());
    assert!(room.transfers().is_empty(), "one step, one transfer");
}

#[test]
fn a_rooms_zone_comes_from_its_name_and_arrivals_carry_hit_points() {
    assert_eq!(TestRoom::new(crate::msg()).state().zone, Zone::Meadow);
    let mut room = TestRoom::named(crate::msg(), "Caves 2");
    assert_eq!(room.state().zone, Zone::Caves, "before anyone joins");
    let arrival = Arrival {
        items: [(XP.to_owned(), 60)].into(),
        carried: json!({ "hp": 4 }),
        ..Arrival::default()
    };
    room.join_with("ann", arrival);
    let hero = &room.state().players["ann"];
    assert_eq!((hero.hp, hero.view().level), (4, 2));
    let ann = room.received_game::<Out>("ann");
    let Some(Out::Welcome(w)) = ann.last() else {
        panic!("{ann:?}")
    };
    assert_eq!(w.zone, "caves");
    assert!(w.map.iter().any(|r| r.contains('O')) && w.map.iter().any(|r| r.contains(':')));
    // Hostile hit points are clamped.
    let liar = Arrival {
        carried: json!({ "hp": 1000 }),
        ..Arrival::default()
    };
    room.join_with("bob", liar);
    assert_eq!(room.state().players["bob"].hp, max_hp(1));
}

#[test]
fn players_heal_slowly() {
    let mut room = game(TINY);
    room.join("ann");
    room.state_mut().players.get_mut("ann").unwrap().hp = 1;
    room.tick(HEAL_EVERY as usize * 2);
    assert_eq!(room.state().players["ann"].hp, 3);
}

#[test]
fn npcs_wander_without_walking_through_walls_and_items_respawn() {
    let mut room = TestRoom::new(crate::msg());
    let start = room.state().npcs.clone();
    room.tick(200);
    let world = room.state();
    assert_ne!(world.npcs, start, "NPCs moved");
    assert!(world.npcs.iter().all(|n| world.map.walkable(n.x, n.y)));
    assert!(world.items.len() > MAX_ITEMS / 2 && world.items.len() <= MAX_ITEMS);
}

#[test]
fn the_world_survives_a_checkpoint_with_its_zone_map() {
    for zone in [Zone::Meadow, Zone::Caves] {
        let mut world = World::in_zone(zone);
        let hero = Hero {
            x: 1,
            y: 1,
            hp: 3,
            xp: 7,
            away: true,
        };
        world.players.insert("ann".into(), hero);
        let saved = serde_json::to_string(&world).unwrap();
        let back: World = serde_json::from_str(&saved).unwrap();
        assert_eq!((back.players, back.items), (world.players, world.items));
        assert_eq!(back.map, *zone.map());
        assert!(back.map.walkable(1, 1) && !back.map.walkable(0, 0));
    }
}

#[test]
fn both_zones_have_spawns_portals_an_arena_and_npcs() {
    for zone in [Zone::Meadow, Zone::Caves] {
        let map = zone.map();
        for marker in [b'S', b'O', b'A', b'N'] {
            assert!(
                !map.find(marker).is_empty(),
                "{zone:?} has no {}",
                marker as char
            );
        }
    }
    assert_eq!(Zone::of_room("Caves 2"), Zone::Caves);
    assert_eq!(Zone::of_room("ann's room"), Zone::Meadow);
}

#[test]
fn a_dropped_player_is_greyed_out_until_back_and_a_second_connection_does_not_drop() {
    let mut room = game(TINY);
    room.join("ann");
    room.join("bob");
    room.connect("ann", "c1");
    room.connect("ann", "c2");
    room.received_game::<Out>("bob");
    room.disconnect("ann", "c1");
    assert!(
        room.received_game::<Out>("bob").is_empty(),
        "one connection is left"
    );
    room.disconnect("ann", "c2");
    assert_eq!(types(&room.received_game::<Out>("bob")), ["dropped"]);
    assert!(room.state().players["ann"].away);
    let greyed = room.state().snapshot();
    assert!(
        serde_json::to_value(&greyed)
            .unwrap()
            .to_string()
            .contains("\"away\":true"),
        "a newcomer sees who is away"
    );
    room.connect("ann", "c3");
    assert_eq!(types(&room.received_game::<Out>("bob")), ["back"]);
    assert_eq!(
        types(&room.received_game::<Out>("ann")).last().unwrap(),
        "welcome"
    );
    assert!(!room.state().players["ann"].away);
    // Dropped again, and the grace runs out: the leave.
    room.disconnect("ann", "c3");
    room.leave("ann");
    assert_eq!(
        types(&room.received_game::<Out>("bob")),
        ["dropped", "left"]
    );
}

#[test]
fn with_every_spawn_point_taken_a_player_lands_on_the_first_nearest_free_floor() {
    // Checked against the plain way (every tile, the first of the nearest in rows from
    // the top), with ever more of a zone's floor taken.
    for zone in [Zone::Meadow, Zone::Caves] {
        let mut world = World::in_zone(zone);
        let spawns = world.map.find(b'S');
        let (w, h) = world.map.size();
        let (sx, sy) = spawns[0];
        let mut rng = Rng::seeded(7);
        for n in 0..200 {
            let (x, y) = match spawns.get(n) {
                Some(&spot) => spot,
                None => (rng.below(w as u64) as i32, rng.below(h as u64) as i32),
            };
            let hero = Hero {
                x,
                y,
                hp: 10,
                xp: 0,
                away: false,
            };
            world.players.insert(format!("p{n}"), hero);
            if n + 1 < spawns.len() {
                continue;
            }
            let plain = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .filter(|&(x, y)| world.free(x, y) && !world.map.portal(x, y))
                .min_by_key(|&(x, y)| (x - sx).abs() + (y - sy).abs());
            assert_eq!(world.spawn_point(None), plain, "{zone:?}, {n} players");
        }
    }
}
