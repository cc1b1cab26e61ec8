//! The game's rules: a map with walls and spawn points, players who move and chat, NPCs
//! who wander, and items to pick up. No sockets, no broker: handlers only.

use crate::protocol::{Chat, Look, Move, Out, Pos, Welcome};
pub use crate::protocol::{Item, Npc, Pos as Player};
#[cfg(test)]
use game_server_less::proto::Body;
use game_server_less::proto::RoomEvent;
use game_server_less::{Ctx, RoomCtx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The map the game ships with.
pub const MAP: &str = include_str!("../../assets/map.txt");

/// Items on the floor at most at once.
const MAX_ITEMS: usize = 6;
/// NPCs step every this many ticks.
const NPC_EVERY: u64 = 5;
/// An item appears every this many ticks while there are fewer than `MAX_ITEMS`.
const ITEM_EVERY: u64 = 30;
/// What can lie on the floor.
const ITEM_KINDS: [&str; 3] = ["gem", "coin", "herb"];

/// A tile map: `#` walls, `S` spawn points, `N` NPC homes, anything else floor.
#[derive(Debug, Clone)]
pub struct Map {
    rows: Vec<Vec<u8>>,
}

impl Map {
    /// Parses a map; every row is padded to the widest with walls.
    pub fn parse(text: &str) -> Map {
        let width = text.lines().map(str::len).max().unwrap_or(0);
        let rows = text
            .lines()
            .map(|l| {
                let mut row = l.as_bytes().to_vec();
                row.resize(width, b'#');
                row
            })
            .collect();
        Map { rows }
    }

    /// Width and height.
    pub fn size(&self) -> (i32, i32) {
        (
            self.rows.first().map_or(0, Vec::len) as i32,
            self.rows.len() as i32,
        )
    }

    fn tile(&self, x: i32, y: i32) -> u8 {
        if x < 0 || y < 0 {
            return b'#';
        }
        self.rows
            .get(y as usize)
            .and_then(|r| r.get(x as usize))
            .copied()
            .unwrap_or(b'#')
    }

    /// Whether a tile can be walked on.
    pub fn walkable(&self, x: i32, y: i32) -> bool {
        self.tile(x, y) != b'#'
    }

    fn find(&self, wanted: u8) -> Vec<(i32, i32)> {
        let mut found = Vec::new();
        for (y, row) in self.rows.iter().enumerate() {
            for (x, &t) in row.iter().enumerate() {
                if t == wanted {
                    found.push((x as i32, y as i32));
                }
            }
        }
        found
    }

    /// The rows as text, walls kept and markers turned to floor, for clients to draw.
    pub fn lines(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&t| if t == b'#' { '#' } else { '.' })
                    .collect()
            })
            .collect()
    }
}

fn default_map() -> Map {
    Map::parse(MAP)
}

/// One room's world: the whole game state, saved in every checkpoint (but the map,
/// which ships with the game).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    #[serde(skip, default = "default_map")]
    map: Map,
    /// Players by name.
    pub players: BTreeMap<String, Player>,
    /// NPCs.
    pub npcs: Vec<Npc>,
    /// Items on the floor.
    pub items: Vec<Item>,
    ticks: u64,
    next_id: u32,
    rng: u64,
}

impl Default for World {
    fn default() -> World {
        World::new(default_map())
    }
}

impl World {
    /// A world on `map`, with its NPCs at home and a few items about.
    pub fn new(map: Map) -> World {
        let npcs = map
            .find(b'N')
            .into_iter()
            .enumerate()
            .map(|(i, (x, y))| Npc {
                id: i as u32 + 1,
                x,
                y,
            })
            .collect::<Vec<_>>();
        let mut world = World {
            next_id: npcs.len() as u32 + 1,
            map,
            players: BTreeMap::new(),
            npcs,
            items: Vec::new(),
            ticks: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        };
        for _ in 0..MAX_ITEMS / 2 {
            world.spawn_item();
        }
        world
    }

    /// xorshift64*: deterministic, so a room replayed from a checkpoint plays the same.
    fn random(&mut self, below: u64) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % below.max(1)
    }

    fn occupied(&self, x: i32, y: i32) -> bool {
        self.players.values().any(|p| p.x == x && p.y == y)
            || self.npcs.iter().any(|n| n.x == x && n.y == y)
    }

    fn free(&self, x: i32, y: i32) -> bool {
        self.map.walkable(x, y) && !self.occupied(x, y)
    }

    fn spawn_item(&mut self) -> Option<Item> {
        let (w, h) = self.map.size();
        for _ in 0..100 {
            let x = self.random(w as u64) as i32;
            let y = self.random(h as u64) as i32;
            if self.free(x, y) && !self.items.iter().any(|i| i.x == x && i.y == y) {
                let kind = ITEM_KINDS[self.random(ITEM_KINDS.len() as u64) as usize].to_owned();
                let item = Item {
                    id: self.next_id,
                    kind,
                    x,
                    y,
                };
                self.next_id += 1;
                self.items.push(item.clone());
                return Some(item);
            }
        }
        None
    }

    /// The whole world as one message, as a newcomer gets it.
    pub fn snapshot(&self) -> Out {
        Out::Welcome(Welcome {
            map: self.map.lines(),
            players: self.players.clone(),
            npcs: self.npcs.clone(),
            items: self.items.clone(),
        })
    }
}

/// A player arrives at a free spawn point; everyone hears of it, and the newcomer gets
/// the whole world.
pub fn on_join(world: &mut World, ctx: &mut RoomCtx, name: &str) {
    let spawns = world.map.find(b'S');
    let spot = spawns
        .iter()
        .copied()
        .find(|&(x, y)| world.free(x, y))
        .or_else(|| {
            // Every spawn point taken: the nearest free floor to the first one.
            let (w, h) = world.map.size();
            let (sx, sy) = spawns.first().copied().unwrap_or((1, 1));
            let mut floor: Vec<(i32, i32)> = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .filter(|&(x, y)| world.free(x, y))
                .collect();
            floor.sort_by_key(|&(x, y)| (x - sx).abs() + (y - sy).abs());
            floor.first().copied()
        });
    let Some((x, y)) = spot else {
        let error = "the world is full".to_owned();
        ctx.send_to(name, &RoomEvent::Error { error });
        return;
    };
    world.players.insert(name.to_owned(), Pos { x, y });
    let player = name.to_owned();
    ctx.broadcast(&Out::Joined {
        player,
        at: Pos { x, y },
    });
    ctx.send_to(name, &world.snapshot());
}

/// A player leaves; everyone hears of it.
pub fn on_leave(world: &mut World, ctx: &mut RoomCtx, name: &str) {
    if world.players.remove(name).is_some() {
        let player = name.to_owned();
        ctx.broadcast(&Out::Left { player });
    }
}

/// Moves the sender one tile unless a wall, a player or an NPC is in the way; picks up
/// what lies there.
pub fn on_move(world: &mut World, ctx: &mut Ctx, m: Move) -> Result<(), String> {
    if !(-1..=1).contains(&m.dx) || !(-1..=1).contains(&m.dy) || (m.dx == 0 && m.dy == 0) {
        return Err("a move is one step: dx and dy are -1, 0 or 1, not both 0".into());
    }
    let name = ctx.sender().to_owned();
    let Some(me) = world.players.get(&name).cloned() else {
        return Err("you have no body in this world; join again".into());
    };
    let (x, y) = (me.x + m.dx, me.y + m.dy);
    if !world.free(x, y) {
        ctx.reply(&Out::Blocked { at: me });
        return Ok(());
    }
    world.players.insert(name.clone(), Pos { x, y });
    ctx.broadcast(&Out::Moved {
        player: name.clone(),
        at: Pos { x, y },
    });
    if let Some(i) = world.items.iter().position(|it| it.x == x && it.y == y) {
        let item = world.items.remove(i);
        ctx.give_item(&name, &item.kind, 1);
        ctx.broadcast(&Out::Picked {
            player: name,
            item: item.kind,
            id: item.id,
        });
    }
    Ok(())
}

/// Replies with the whole world.
pub fn on_look(world: &mut World, ctx: &mut Ctx, _: Look) {
    ctx.reply(&world.snapshot());
}

/// Says something to the room.
pub fn on_chat(_: &mut World, ctx: &mut Ctx, chat: Chat) -> Result<(), String> {
    let text = chat.text.trim();
    if text.is_empty() || text.chars().count() > 200 {
        return Err("a chat line has 1 to 200 characters".into());
    }
    if text.chars().any(char::is_control) {
        return Err("a chat line has no control characters".into());
    }
    let name = ctx.sender().to_owned();
    let text = text.to_owned();
    ctx.broadcast(&Out::Chat { player: name, text });
    Ok(())
}

/// Ten times a second: NPCs wander now and then, and items reappear.
pub fn on_tick(world: &mut World, ctx: &mut RoomCtx) {
    world.ticks += 1;
    if world.ticks % NPC_EVERY == 0 && !world.npcs.is_empty() {
        let mut moved = false;
        for i in 0..world.npcs.len() {
            let (dx, dy) = [(0, 1), (0, -1), (1, 0), (-1, 0)][world.random(4) as usize];
            let (x, y) = (world.npcs[i].x + dx, world.npcs[i].y + dy);
            let on_item = world.items.iter().any(|it| it.x == x && it.y == y);
            if world.free(x, y) && !on_item {
                world.npcs[i].x = x;
                world.npcs[i].y = y;
                moved = true;
            }
        }
        if moved {
            let npcs = world.npcs.clone();
            ctx.broadcast(&Out::Npcs { npcs });
        }
    }
    if world.ticks % ITEM_EVERY == 0 && world.items.len() < MAX_ITEMS {
        if let Some(item) = world.spawn_item() {
            ctx.broadcast(&Out::Item { item });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::In;
    use game_server_less::testing::TestRoom;
    use game_server_less::Msg;
    use std::time::Duration;

    const TINY: &str = "#####\n#S.S#\n#.#.#\n#####";

    fn game(map: &'static str) -> TestRoom<World> {
        let msg = Msg::new(move || {
            let mut w = World::new(Map::parse(map));
            w.items.clear();
            w
        })
        .route("type=move", on_move)
        .route("type=chat", on_chat)
        .route("type=look", on_look)
        .tick(Duration::from_millis(100), on_tick)
        .on_join(on_join)
        .on_leave(on_leave);
        TestRoom::new(msg)
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

    #[test]
    fn players_spawn_at_free_spawn_points_and_see_the_world() {
        let mut room = game(TINY);
        room.join("ann");
        room.join("bob");
        assert_eq!(room.state().players["ann"], Pos { x: 1, y: 1 });
        assert_eq!(room.state().players["bob"], Pos { x: 3, y: 1 });
        let ann = room.received_game::<Out>("ann");
        assert_eq!(types(&ann), ["joined", "welcome", "joined"]);
        let Out::Welcome(world) = &ann[1] else {
            panic!("{ann:?}")
        };
        assert_eq!(world.map[2], "#.#.#");
        room.send("bob", In::Look(Look {})).unwrap();
        let look = room.received_game::<Out>("bob").pop().unwrap();
        let Out::Welcome(world) = look else {
            panic!("{look:?}")
        };
        assert_eq!(world.players["ann"], Pos { x: 1, y: 1 });
    }

    #[test]
    fn walls_and_players_block_moves() {
        let mut room = game(TINY);
        room.join("ann");
        room.join("bob");
        room.received("ann");
        room.received("bob");
        room.send("ann", step(0, -1)).unwrap(); // wall
        room.send("ann", step(1, 0)).unwrap();
        room.send("ann", step(1, 0)).unwrap(); // bob
        assert_eq!(room.state().players["ann"], Pos { x: 2, y: 1 });
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
    }

    #[test]
    fn bad_moves_and_chat_are_errors_for_the_sender() {
        let mut room = game(TINY);
        room.join("ann");
        let err = room.send("ann", step(5, 0)).unwrap_err();
        assert!(err.contains("one step"), "{err}");
        let err = room.send("ann", say("  ")).unwrap_err();
        assert!(err.contains("1 to 200"), "{err}");
        let err = room.send("ann", say("a\u{7}b")).unwrap_err();
        assert!(err.contains("control"), "{err}");
        let dance = serde_json::json!({ "type": "dance" });
        let err = room.send("ann", dance).unwrap_err();
        assert_eq!(err, "unknown message type \"dance\"");
    }

    #[test]
    fn picking_up_an_item_grants_it_and_tells_everyone() {
        let mut room = game(TINY);
        room.join("ann");
        room.state_mut().items.push(Item {
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
        room.join("bob");
        let bob = room.received_as::<Out>("bob");
        let full = RoomEvent::Error {
            error: "the world is full".into(),
        };
        assert_eq!(bob.last().unwrap().body, Body::Room(full));
        assert!(!room.state().players.contains_key("bob"));
    }

    #[test]
    fn npcs_wander_without_walking_through_walls_and_items_respawn() {
        let mut room =
            TestRoom::new(Msg::new(World::default).tick(Duration::from_millis(100), on_tick));
        let start = room.state().npcs.clone();
        room.tick(200);
        let world = room.state();
        assert_ne!(world.npcs, start, "NPCs moved");
        assert!(world.npcs.iter().all(|n| world.map.walkable(n.x, n.y)));
        assert!(world.items.len() > MAX_ITEMS / 2 && world.items.len() <= MAX_ITEMS);
    }

    #[test]
    fn the_world_survives_a_checkpoint() {
        let mut world = World::default();
        world.players.insert("ann".into(), Pos { x: 1, y: 1 });
        let saved = serde_json::to_string(&world).unwrap();
        let back: World = serde_json::from_str(&saved).unwrap();
        assert_eq!(back.players, world.players);
        assert_eq!(back.items, world.items);
        assert!(back.map.walkable(1, 1) && !back.map.walkable(0, 0));
    }
}
