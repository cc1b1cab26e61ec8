//! The game's rules: zones with walls, spawn points, portals and an arena; players who
//! move, chat, fight NPCs (and each other in the arena), level up, die and respawn; NPCs
//! who wander and strike back; items to pick up. No sockets, no broker: handlers only.
//!
//! Experience is a persistent item (`xp`), granted with the room's checkpoint, so a kill
//! pays out exactly once; it arrives with the player at every join
//! ([`Arrival::items`](game_server_less::Arrival::items)), and the level follows from it.
//! A portal moves the player to the other zone's room
//! ([`RoomCtx::transfer`](game_server_less::RoomCtx::transfer)), carrying the hit points
//! ([`Carried`], read back from
//! [`Arrival::carried`](game_server_less::Arrival::carried)).

use crate::protocol::{
    level_of, max_hp, Chat, Fighter, FloorItem, Look, Move, Npc, Out, Player, Pos, Welcome, NPC_HP,
    XP_PER_NPC, XP_PER_PLAYER,
};
use game_server_less::{Ctx, Rng, RoomCtx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Items on the floor at most at once.
const MAX_ITEMS: usize = 6;
/// NPCs step (or strike) every this many ticks.
const NPC_EVERY: u64 = 5;
/// An item appears every this many ticks while there are fewer than `MAX_ITEMS`.
const ITEM_EVERY: u64 = 30;
/// A slain NPC comes back after this many ticks.
const NPC_RESPAWN: u64 = 100;
/// Players heal one hit point every this many ticks.
const HEAL_EVERY: u64 = 30;
/// What can lie on the floor.
const ITEM_KINDS: [&str; 3] = ["gem", "coin", "herb"];
/// The persistent item that counts experience.
pub const XP: &str = "xp";

/// A zone: a map of its own, played in rooms named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    /// Open fields, where everyone starts.
    #[default]
    Meadow,
    /// Narrow caves with more NPCs.
    Caves,
}

impl Zone {
    /// The zone of a room: rooms named `caves…` are caves, every other room is a meadow.
    pub fn of_room(name: &str) -> Zone {
        if name.trim().to_ascii_lowercase().starts_with("caves") {
            Zone::Caves
        } else {
            Zone::Meadow
        }
    }

    /// Its name, as rooms and clients spell it.
    pub fn name(self) -> &'static str {
        match self {
            Zone::Meadow => "meadow",
            Zone::Caves => "caves",
        }
    }

    /// Where its portals lead.
    pub fn beyond(self) -> Zone {
        match self {
            Zone::Meadow => Zone::Caves,
            Zone::Caves => Zone::Meadow,
        }
    }

    /// Its map: `assets/<zone>.txt` as built in, or from the directory `GSL_MAPS` names
    /// (tests use small maps).
    pub fn map(self) -> &'static Map {
        static MAPS: [OnceLock<Map>; 2] = [OnceLock::new(), OnceLock::new()];
        let (slot, built_in) = match self {
            Zone::Meadow => (&MAPS[0], include_str!("../../assets/map.txt")),
            Zone::Caves => (&MAPS[1], include_str!("../../assets/caves.txt")),
        };
        slot.get_or_init(|| {
            let custom = std::env::var_os("GSL_MAPS")
                .map(|dir| std::path::PathBuf::from(dir).join(format!("{}.txt", self.name())))
                .and_then(|path| std::fs::read_to_string(path).ok());
            Map::parse(custom.as_deref().unwrap_or(built_in))
        })
    }
}

/// A tile map: `#` walls, `S` spawn points, `N` NPC homes, `O` portals, `A` arena floor,
/// anything else floor.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// Whether a tile is a portal.
    pub fn portal(&self, x: i32, y: i32) -> bool {
        self.tile(x, y) == b'O'
    }

    /// Whether a tile is arena floor, where players may fight each other.
    pub fn arena(&self, x: i32, y: i32) -> bool {
        self.tile(x, y) == b'A'
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

    /// The rows for clients to draw: `#` walls, `O` portals, `:` arena, `.` floor.
    pub fn lines(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&t| match t {
                        b'#' => '#',
                        b'O' => 'O',
                        b'A' => ':',
                        _ => '.',
                    })
                    .collect()
            })
            .collect()
    }
}

/// A player in the world: where, how hurt, how experienced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hero {
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
    /// Hit points left.
    pub hp: i32,
    /// Experience, as the store has it plus what this room granted since.
    pub xp: i64,
    /// Dropped, waiting out the grace.
    #[serde(default)]
    pub away: bool,
}

impl Hero {
    /// As others see this player.
    pub fn view(&self) -> Player {
        Player {
            x: self.x,
            y: self.y,
            hp: self.hp,
            level: level_of(self.xp),
            away: self.away,
        }
    }
}

/// What a player takes through a portal into the other zone's room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// Hit points to arrive with.
    pub hp: i32,
}

/// One room's world: the whole game state, saved in every checkpoint (but the map,
/// which ships with the game: the zone names it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Saved")]
pub struct World {
    #[serde(skip)]
    map: Map,
    /// The zone.
    pub zone: Zone,
    /// Players by name.
    pub players: BTreeMap<String, Hero>,
    /// NPCs alive.
    pub npcs: Vec<Npc>,
    /// Slain NPCs: id and the tick they come back on.
    pub slain: Vec<(u32, u64)>,
    /// Items on the floor.
    pub items: Vec<FloorItem>,
    ticks: u64,
    next_id: u32,
}

/// A [`World`] as checkpoints hold it; the map comes back from the zone.
#[derive(Deserialize)]
struct Saved {
    zone: Zone,
    players: BTreeMap<String, Hero>,
    npcs: Vec<Npc>,
    slain: Vec<(u32, u64)>,
    items: Vec<FloorItem>,
    ticks: u64,
    next_id: u32,
}

impl From<Saved> for World {
    fn from(s: Saved) -> World {
        World {
            map: s.zone.map().clone(),
            zone: s.zone,
            players: s.players,
            npcs: s.npcs,
            slain: s.slain,
            items: s.items,
            ticks: s.ticks,
            next_id: s.next_id,
        }
    }
}

impl Default for World {
    fn default() -> World {
        World::in_zone(Zone::default())
    }
}

impl World {
    /// A fresh world in `zone`.
    pub fn in_zone(zone: Zone) -> World {
        World::new(zone, zone.map().clone())
    }

    /// A world in `zone` on `map`, with its NPCs at home and a few items about.
    pub fn new(zone: Zone, map: Map) -> World {
        let npcs = map
            .find(b'N')
            .into_iter()
            .enumerate()
            .map(|(i, (x, y))| Npc {
                id: i as u32 + 1,
                x,
                y,
                hp: NPC_HP,
            })
            .collect::<Vec<_>>();
        let mut world = World {
            next_id: npcs.len() as u32 + 1,
            map,
            zone,
            players: BTreeMap::new(),
            npcs,
            slain: Vec::new(),
            items: Vec::new(),
            ticks: 0,
        };
        // A new world is the same every time: its items come from a fixed seed.
        let mut rng = Rng::seeded(0x9E37_79B9_7F4A_7C15);
        for _ in 0..MAX_ITEMS / 2 {
            world.spawn_item(&mut rng);
        }
        world
    }

    /// The map.
    pub fn map(&self) -> &Map {
        &self.map
    }

    fn player_at(&self, x: i32, y: i32) -> Option<String> {
        let found = self.players.iter().find(|(_, p)| p.x == x && p.y == y);
        found.map(|(name, _)| name.clone())
    }

    fn npc_at(&self, x: i32, y: i32) -> Option<usize> {
        self.npcs.iter().position(|n| n.x == x && n.y == y)
    }

    fn free(&self, x: i32, y: i32) -> bool {
        self.map.walkable(x, y) && self.player_at(x, y).is_none() && self.npc_at(x, y).is_none()
    }

    fn spawn_item(&mut self, rng: &mut Rng) -> Option<FloorItem> {
        let (w, h) = self.map.size();
        for _ in 0..100 {
            let x = rng.below(w as u64) as i32;
            let y = rng.below(h as u64) as i32;
            let clear = !self.map.portal(x, y) && !self.map.arena(x, y);
            if clear && self.free(x, y) && !self.items.iter().any(|i| i.x == x && i.y == y) {
                let kind = ITEM_KINDS[rng.below(ITEM_KINDS.len() as u64) as usize].to_owned();
                let item = FloorItem {
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

    /// A free spawn point (another than `not` if there is one), or the free floor
    /// nearest the first one.
    fn spawn_point(&self, not: Option<(i32, i32)>) -> Option<(i32, i32)> {
        let spawns = self.map.find(b'S');
        let free = spawns.iter().filter(|&&(x, y)| self.free(x, y));
        if let Some(&spot) = free
            .clone()
            .find(|&&s| Some(s) != not)
            .or(free.clone().next())
        {
            return Some(spot);
        }
        let (w, h) = self.map.size();
        let (sx, sy) = spawns.first().copied().unwrap_or((1, 1));
        let taken: Vec<(i32, i32)> = (self.players.values().map(|p| (p.x, p.y)))
            .chain(self.npcs.iter().map(|n| (n.x, n.y)))
            .collect();
        let open = |&(x, y): &(i32, i32)| {
            self.map.walkable(x, y) && !self.map.portal(x, y) && !taken.contains(&(x, y))
        };
        // Rings of tiles ever farther from it; in each, rows from the top, and in a row
        // left to right. (Off the map is wall.)
        (0..w + h).find_map(|d| {
            (sy - d..=sy + d)
                .flat_map(|y| {
                    let dx = d - (y - sy).abs();
                    let both = if dx == 0 { 1 } else { 2 };
                    [(sx - dx, y), (sx + dx, y)].into_iter().take(both)
                })
                .find(open)
        })
    }

    /// The whole world as one message, as a newcomer gets it.
    pub fn snapshot(&self) -> Out {
        Out::Welcome(Welcome {
            zone: self.zone.name().to_owned(),
            map: self.map.lines(),
            players: self
                .players
                .iter()
                .map(|(n, h)| (n.clone(), h.view()))
                .collect(),
            npcs: self.npcs.clone(),
            items: self.items.clone(),
        })
    }

    /// How hard `xp` experience hits: 2 or 3, plus one every two levels above the first.
    fn damage(rng: &mut Rng, xp: i64) -> i32 {
        2 + rng.below(2) as i32 + (level_of(xp) as i32 - 1) / 2
    }

    /// `killer` earns `xp`: saved with the checkpoint, and a level up heals.
    fn reward(&mut self, ctx: &mut RoomCtx, killer: &str, xp: i64) {
        ctx.give_item(killer, XP, xp);
        let Some(hero) = self.players.get_mut(killer) else {
            return;
        };
        let before = level_of(hero.xp);
        hero.xp += xp;
        if level_of(hero.xp) > before {
            hero.hp = max_hp(level_of(hero.xp));
            let is = hero.view();
            let player = killer.to_owned();
            ctx.broadcast(&Out::LevelUp { player, is });
        }
    }

    /// `name` strikes the NPC at index `i`.
    fn strike_npc(&mut self, ctx: &mut RoomCtx, name: &str, i: usize) {
        let xp = self.players[name].xp;
        let damage = World::damage(ctx.rng(), xp);
        let npc = &mut self.npcs[i];
        npc.hp = (npc.hp - damage).max(0);
        let (id, hp) = (npc.id, npc.hp);
        let by = Fighter::Player { name: name.into() };
        let target = Fighter::Npc { id };
        ctx.broadcast(&Out::Hit {
            by,
            target,
            damage,
            hp,
        });
        if hp == 0 {
            self.npcs.remove(i);
            self.slain.push((id, self.ticks + NPC_RESPAWN));
            let by = name.to_owned();
            let xp = XP_PER_NPC;
            ctx.broadcast(&Out::Slain { npc: id, by, xp });
            self.reward(ctx, name, XP_PER_NPC);
        }
    }

    /// `by` strikes the player `target` for `damage`; a fall respawns them.
    fn strike_player(&mut self, ctx: &mut RoomCtx, by: Fighter, target: &str, damage: i32) {
        let Some(hero) = self.players.get_mut(target) else {
            return;
        };
        hero.hp = (hero.hp - damage).max(0);
        let hp = hero.hp;
        let struck = Fighter::Player {
            name: target.into(),
        };
        let hit = Out::Hit {
            by: by.clone(),
            target: struck,
            damage,
            hp,
        };
        ctx.broadcast(&hit);
        if hp > 0 {
            return;
        }
        let player = target.to_owned();
        ctx.broadcast(&Out::Died {
            player: player.clone(),
            by: by.clone(),
        });
        if let Fighter::Player { name } = &by {
            self.reward(ctx, name, XP_PER_PLAYER);
        }
        // Off the map first, so that the spawn point it stood on counts as free.
        let mut hero = self.players.remove(target).expect("struck a player here");
        // Not where they fell, if another spawn point is free: away from the fight.
        let fell = (hero.x, hero.y);
        let (x, y) = self.spawn_point(Some(fell)).unwrap_or(fell);
        hero.x = x;
        hero.y = y;
        hero.hp = max_hp(level_of(hero.xp));
        let is = hero.view();
        self.players.insert(player.clone(), hero);
        ctx.broadcast(&Out::Respawned { player, is });
    }

    /// NPCs next to a player strike one of them; the others wander.
    fn npcs_act(&mut self, ctx: &mut RoomCtx) {
        let mut moved = false;
        for i in 0..self.npcs.len() {
            let (nx, ny, id) = (self.npcs[i].x, self.npcs[i].y, self.npcs[i].id);
            let near = [(0, 1), (0, -1), (1, 0), (-1, 0)]
                .into_iter()
                .find_map(|(dx, dy)| self.player_at(nx + dx, ny + dy));
            if let Some(target) = near {
                self.strike_player(ctx, Fighter::Npc { id }, &target, 1);
                continue;
            }
            let (dx, dy) = [(0, 1), (0, -1), (1, 0), (-1, 0)][ctx.rng().below(4) as usize];
            let (x, y) = (nx + dx, ny + dy);
            let on_item = self.items.iter().any(|it| it.x == x && it.y == y);
            if self.free(x, y) && !on_item && !self.map.portal(x, y) && !self.map.arena(x, y) {
                self.npcs[i].x = x;
                self.npcs[i].y = y;
                moved = true;
            }
        }
        if moved {
            let npcs = self.npcs.clone();
            ctx.broadcast(&Out::Npcs { npcs });
        }
    }

    /// Slain NPCs whose time has come return home, if it is free.
    fn npcs_return(&mut self, ctx: &mut RoomCtx) {
        let homes = self.map.find(b'N');
        let due: Vec<u32> = (self.slain.iter())
            .filter(|&&(_, at)| at <= self.ticks)
            .map(|&(id, _)| id)
            .collect();
        let mut back = false;
        for id in due {
            let Some(&(x, y)) = homes.get(id as usize - 1) else {
                self.slain.retain(|&(s, _)| s != id);
                continue;
            };
            if self.free(x, y) {
                self.slain.retain(|&(s, _)| s != id);
                self.npcs.push(Npc {
                    id,
                    x,
                    y,
                    hp: NPC_HP,
                });
                back = true;
            }
        }
        if back {
            self.npcs.sort_by_key(|n| n.id);
            let npcs = self.npcs.clone();
            ctx.broadcast(&Out::Npcs { npcs });
        }
    }
}

/// A player arrives at a free spawn point, with the experience the store has for them
/// and the hit points a portal carried (full health otherwise); everyone hears of it,
/// and the newcomer gets the whole world. With no spawn point free, the join is refused: the player
/// is told, and has no body (its moves are refused) until it leaves and joins again.
pub fn on_join(world: &mut World, ctx: &mut RoomCtx, name: &str) -> Result<(), String> {
    let arrival = ctx.arrival().cloned().unwrap_or_default();
    let Some((x, y)) = world.spawn_point(None) else {
        return Err("the world is full".into());
    };
    let xp = arrival.items.get(XP).copied().unwrap_or(0).max(0);
    let full = max_hp(level_of(xp));
    let carried = serde_json::from_value::<Carried>(arrival.carried).ok();
    let hp = carried.map_or(full, |c| c.hp.clamp(1, full));
    let hero = Hero {
        x,
        y,
        hp,
        xp,
        away: false,
    };
    let is = hero.view();
    world.players.insert(name.to_owned(), hero);
    let player = name.to_owned();
    ctx.broadcast(&Out::Joined { player, is });
    ctx.send_to(name, &world.snapshot());
    Ok(())
}

/// A player's connection dropped: it stays on the map, greyed out, until it is back
/// or its grace is over (then it leaves); everyone hears of it.
pub fn on_drop(world: &mut World, ctx: &mut RoomCtx, name: &str) {
    if let Some(hero) = world.players.get_mut(name) {
        hero.away = true;
        let player = name.to_owned();
        ctx.broadcast(&Out::Dropped { player });
    }
}

/// A dropped player is back within its grace; everyone hears of it, and it gets the
/// whole world again (it may have missed some of it).
pub fn on_reconnect(world: &mut World, ctx: &mut RoomCtx, name: &str) {
    if let Some(hero) = world.players.get_mut(name) {
        hero.away = false;
        let player = name.to_owned();
        ctx.broadcast(&Out::Back { player });
        ctx.send_to(name, &world.snapshot());
    }
}

/// A player leaves (or has been moved to another zone); everyone hears of it.
pub fn on_leave(world: &mut World, ctx: &mut RoomCtx, name: &str) {
    if world.players.remove(name).is_some() {
        let player = name.to_owned();
        ctx.broadcast(&Out::Left { player });
    }
}

/// Moves the sender one tile: into an NPC it is a blow, into another player too when
/// both stand in the arena; a wall or anyone else blocks. Picks up what lies there; a
/// portal sends the player to the other zone.
pub fn on_move(world: &mut World, ctx: &mut Ctx, m: Move) -> Result<(), String> {
    if !(-1..=1).contains(&m.dx) || !(-1..=1).contains(&m.dy) || (m.dx == 0 && m.dy == 0) {
        return Err("a move is one step: dx and dy are -1, 0 or 1, not both 0".into());
    }
    let name = ctx.sender().to_owned();
    let Some(me) = world.players.get(&name).cloned() else {
        return Err("you have no body in this world; join again".into());
    };
    let (x, y) = (me.x + m.dx, me.y + m.dy);
    if let Some(i) = world.npc_at(x, y) {
        world.strike_npc(ctx, &name, i);
        return Ok(());
    }
    if let Some(other) = world.player_at(x, y) {
        if world.map.arena(me.x, me.y) && world.map.arena(x, y) {
            let by = Fighter::Player { name: name.clone() };
            let damage = World::damage(ctx.rng(), me.xp);
            world.strike_player(ctx, by, &other, damage);
        } else {
            ctx.reply(&Out::Blocked {
                at: Pos { x: me.x, y: me.y },
            });
        }
        return Ok(());
    }
    // No NPC and no player there (see above): free if it is floor.
    if !world.map.walkable(x, y) {
        ctx.reply(&Out::Blocked {
            at: Pos { x: me.x, y: me.y },
        });
        return Ok(());
    }
    if world.map.portal(x, y) {
        world.players.remove(&name);
        let zone = world.zone.beyond().name();
        ctx.transfer(&name, zone, &Carried { hp: me.hp });
        let zone = zone.to_owned();
        ctx.broadcast(&Out::Travelled { player: name, zone });
        return Ok(());
    }
    let hero = world.players.get_mut(&name).expect("checked above");
    hero.x = x;
    hero.y = y;
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

/// Ten times a second: NPCs wander or strike now and then, slain ones return, players
/// heal slowly, and items reappear.
pub fn on_tick(world: &mut World, ctx: &mut RoomCtx) {
    world.ticks += 1;
    if world.ticks % NPC_EVERY == 0 && !world.npcs.is_empty() {
        world.npcs_act(ctx);
    }
    if !world.slain.is_empty() {
        world.npcs_return(ctx);
    }
    if world.ticks % HEAL_EVERY == 0 {
        for (name, hero) in world.players.iter_mut() {
            let full = max_hp(level_of(hero.xp));
            if hero.hp < full {
                hero.hp += 1;
                let (player, hp) = (name.clone(), hero.hp);
                ctx.broadcast(&Out::Hp { player, hp });
            }
        }
    }
    if world.ticks % ITEM_EVERY == 0 && world.items.len() < MAX_ITEMS {
        if let Some(item) = world.spawn_item(ctx.rng()) {
            ctx.broadcast(&Out::Item { item });
        }
    }
}

#[cfg(test)]
mod tests;
