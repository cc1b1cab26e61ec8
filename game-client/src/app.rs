//! The client's state and how keys and server messages change it. No terminal and no
//! sockets here: keys come in as `KeyEvent`s, network news as [`NetEvent`]s, and what
//! the player asks for goes out as [`Action`]s.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use game_protocol::{max_hp, Fighter, FloorItem, Npc, Out, Player};
use game_server_less_client::proto::{Body, Envelope, RoomEvent, RoomView, Ticket};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Lines kept in the chat and event logs.
const LOG_LINES: usize = 200;

/// What the player asks the network layer to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Reload the room list and the inventory.
    Refresh,
    /// Create a room (and join it).
    CreateRoom,
    /// Quick play: a seat in any open room, or a new one.
    PlayNow,
    /// Join a room.
    Join(String),
    /// Watch a room as a spectator.
    Watch(String),
    /// Leave the room, back to the lobby.
    Leave,
    /// Move one step.
    Move(i32, i32),
    /// Say something.
    Chat(String),
    /// Ask for the whole world again.
    Look,
    /// Play on in the room the server moved the player to, with its ticket.
    Travel(Box<Ticket>),
    /// Quit the program.
    Quit,
}

/// News from the network layer.
#[derive(Debug, Clone, PartialEq)]
pub enum NetEvent {
    /// The room list.
    Rooms(Vec<RoomView>),
    /// The player's inventory.
    Inventory(BTreeMap<String, i64>),
    /// The lobby could not be reached or said no.
    LobbyError(String),
    /// Joined a room: its id.
    Joined(String),
    /// The broker connection changed.
    Connection(ConnState),
    /// A message on the room topic.
    Room(Envelope<Out>),
    /// A message for this player alone.
    Private(Envelope<Out>),
    /// An input's round trip (SEND to RECEIPT).
    Rtt(Duration),
    /// Inputs not yet confirmed by the broker.
    Pending(usize),
    /// The play session ended for good (the room is gone, the ticket refused): why.
    Ended(String),
}

/// The broker connection, as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Connecting for the first time.
    Connecting,
    /// Connected.
    Online,
    /// Lost; trying again (with why, and when the next try is).
    Reconnecting(String),
}

/// Which screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Asking the player's name.
    Name,
    /// The room list.
    Lobby,
    /// In a room.
    Game,
}

/// Which panel of the game screen has the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// Arrows and WASD move.
    Map,
    /// Typing goes to the chat line.
    Chat,
}

/// A room being played.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Game {
    /// The room id.
    pub room: String,
    /// The map rows.
    pub map: Vec<String>,
    /// The zone.
    pub zone: String,
    /// The zone a portal is taking the player to, until its world arrives.
    pub travelling: Option<String>,
    /// Players by name: where they stand, how hurt, their level.
    pub players: BTreeMap<String, Player>,
    /// NPCs.
    pub npcs: Vec<Npc>,
    /// Items on the floor.
    pub items: Vec<FloorItem>,
    /// Chat lines.
    pub chat: VecDeque<String>,
    /// Joins, leaves, pickups, errors.
    pub events: VecDeque<String>,
    /// The room sequence number of the latest room message applied.
    pub seq: u64,
    /// Whether a full world has arrived.
    pub synced: bool,
}

/// The whole client state.
#[derive(Debug, Clone)]
pub struct App {
    /// The lobby URL.
    pub server: String,
    /// The player's name.
    pub name: String,
    /// The screen.
    pub screen: Screen,
    /// The name being typed.
    pub name_input: String,
    /// Rooms in the lobby.
    pub rooms: Vec<RoomView>,
    /// The highlighted room.
    pub selected: usize,
    /// The player's inventory.
    pub inventory: BTreeMap<String, i64>,
    /// The last lobby error.
    pub error: Option<String>,
    /// The room being played.
    pub game: Game,
    /// Which panel has the keys.
    pub focus: Focus,
    /// The chat line being typed.
    pub chat_input: String,
    /// Whether the help overlay shows.
    pub help: bool,
    /// The broker connection.
    pub conn: ConnState,
    /// The latest input round trip.
    pub rtt: Option<Duration>,
    /// Inputs not yet confirmed.
    pub pending: usize,
    /// Set when the program should end.
    pub quit: bool,
    /// Watching a room as a spectator (`--watch ROOM`): nothing to send, `q` quits.
    pub watching: bool,
    /// Watching a recorded match (`--replay MATCH`): its time bar, which the status
    /// line shows.
    pub replay_bar: Option<String>,
}

impl App {
    /// A client for the lobby at `server`; with a name it skips the name prompt.
    pub fn new(server: &str, name: Option<&str>) -> App {
        App {
            server: server.to_owned(),
            name: name.unwrap_or_default().to_owned(),
            screen: if name.is_some() {
                Screen::Lobby
            } else {
                Screen::Name
            },
            name_input: String::new(),
            rooms: Vec::new(),
            selected: 0,
            inventory: BTreeMap::new(),
            error: None,
            game: Game::default(),
            focus: Focus::Map,
            chat_input: String::new(),
            help: false,
            conn: ConnState::Connecting,
            rtt: None,
            pending: 0,
            quit: false,
            watching: false,
            replay_bar: None,
        }
    }

    /// A client that watches a room as a spectator (`--watch ROOM`).
    pub fn watching(server: &str) -> App {
        App {
            screen: Screen::Game,
            watching: true,
            ..App::new(server, Some("spectator"))
        }
    }

    /// A client that plays back match `room` as `player` saw it (`--replay MATCH`):
    /// nothing is sent, `q` quits.
    pub fn replaying(server: &str, room: &str, player: &str) -> App {
        let mut app = App {
            screen: Screen::Game,
            watching: true,
            replay_bar: Some(String::new()),
            ..App::new(server, Some(player))
        };
        app.game.room = room.to_owned();
        app.conn = ConnState::Online;
        app
    }

    /// The player's hit points, their most, and level, once the world knows them.
    pub fn my_health(&self) -> Option<(i32, i32, u32)> {
        let p = self.game.players.get(&self.name)?;
        Some((p.hp, max_hp(p.level), p.level))
    }

    /// The player's position, once the world knows it.
    pub fn me(&self) -> Option<(i32, i32)> {
        self.game.players.get(&self.name).map(|p| (p.x, p.y))
    }

    /// Handles a key; returns what the network layer should do, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return Some(Action::Quit);
        }
        if key
            .modifiers
            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
        {
            return None; // Ctrl-S is not S
        }
        if self.help {
            self.help = false; // any key closes the help
            return None;
        }
        match self.screen {
            Screen::Name => self.name_key(key.code),
            Screen::Lobby => self.lobby_key(key.code),
            Screen::Game => match self.focus {
                Focus::Map => self.map_key(key.code),
                Focus::Chat => self.chat_key(key.code),
            },
        }
    }

    fn name_key(&mut self, code: KeyCode) -> Option<Action> {
        match code {
            KeyCode::Char(c)
                if self.name_input.len() < 32
                    && (c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                self.name_input.push(c);
            }
            KeyCode::Backspace => {
                self.name_input.pop();
            }
            KeyCode::Enter if !self.name_input.is_empty() => {
                self.name = self.name_input.clone();
                self.screen = Screen::Lobby;
                return Some(Action::Refresh);
            }
            KeyCode::Esc => return self.quit(),
            _ => {}
        }
        None
    }

    fn lobby_key(&mut self, code: KeyCode) -> Option<Action> {
        match code {
            KeyCode::Up | KeyCode::Char('k') | KeyCode::Char('w') => self.select(-1),
            KeyCode::Down | KeyCode::Char('j') | KeyCode::Char('s') => self.select(1),
            KeyCode::Enter => {
                return self
                    .rooms
                    .get(self.selected)
                    .map(|r| Action::Join(r.id.clone()))
            }
            KeyCode::Char('c') | KeyCode::Char('n') => return Some(Action::CreateRoom),
            KeyCode::Char('p') => return Some(Action::PlayNow),
            KeyCode::Char('r') => return Some(Action::Refresh),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('q') | KeyCode::Esc => return self.quit(),
            _ => {}
        }
        None
    }

    fn map_key(&mut self, code: KeyCode) -> Option<Action> {
        if self.watching {
            // A spectator moves nothing and says nothing.
            match code {
                KeyCode::Char('q') | KeyCode::Esc => return self.quit(),
                KeyCode::Char('?') => self.help = true,
                _ => {}
            }
            return None;
        }
        let step = match code {
            KeyCode::Up | KeyCode::Char('w') => (0, -1),
            KeyCode::Down | KeyCode::Char('s') => (0, 1),
            KeyCode::Left | KeyCode::Char('a') => (-1, 0),
            KeyCode::Right | KeyCode::Char('d') => (1, 0),
            KeyCode::Enter | KeyCode::Tab => {
                self.focus = Focus::Chat;
                return None;
            }
            KeyCode::Char('?') => {
                self.help = true;
                return None;
            }
            KeyCode::Char('q') | KeyCode::Esc => {
                self.screen = Screen::Lobby;
                self.game = Game::default();
                return Some(Action::Leave);
            }
            _ => return None,
        };
        Some(Action::Move(step.0, step.1))
    }

    fn chat_key(&mut self, code: KeyCode) -> Option<Action> {
        match code {
            KeyCode::Enter => {
                let text = std::mem::take(&mut self.chat_input);
                self.focus = Focus::Map;
                let text = text.trim();
                if !text.is_empty() {
                    return Some(Action::Chat(text.to_owned()));
                }
            }
            KeyCode::Esc | KeyCode::Tab => self.focus = Focus::Map,
            KeyCode::Backspace => {
                self.chat_input.pop();
            }
            KeyCode::Char(c) if self.chat_input.chars().count() < 200 => self.chat_input.push(c),
            _ => {}
        }
        None
    }

    fn select(&mut self, by: isize) {
        if self.rooms.is_empty() {
            return;
        }
        let n = self.rooms.len() as isize;
        self.selected = ((self.selected as isize + by).rem_euclid(n)) as usize;
    }

    fn quit(&mut self) -> Option<Action> {
        self.quit = true;
        Some(Action::Quit)
    }

    /// Applies news from the network; returns a follow-up action (asking for the world
    /// again when room messages were missed).
    pub fn on_net(&mut self, event: NetEvent) -> Option<Action> {
        match event {
            NetEvent::Rooms(rooms) => {
                self.rooms = rooms;
                self.selected = self.selected.min(self.rooms.len().saturating_sub(1));
                self.error = None;
            }
            NetEvent::Inventory(items) => self.inventory = items,
            NetEvent::LobbyError(e) => self.error = Some(e),
            NetEvent::Joined(room) if self.game.travelling.is_some() => {
                // Through a portal: the old zone stays in view until the new one arrives.
                self.game.room = room;
                self.game.synced = false;
                self.game.seq = 0;
                self.conn = ConnState::Connecting;
                self.pending = 0;
            }
            NetEvent::Joined(room) => {
                self.game = Game {
                    room,
                    ..Game::default()
                };
                self.screen = Screen::Game;
                self.focus = Focus::Map;
                self.error = None;
                self.conn = ConnState::Connecting;
                self.rtt = None;
                self.pending = 0;
            }
            NetEvent::Ended(why) => return self.back_to_lobby(why),
            NetEvent::Connection(state) => {
                if state != self.conn {
                    let line = match &state {
                        ConnState::Online => "connected".to_owned(),
                        ConnState::Connecting => "connecting".to_owned(),
                        ConnState::Reconnecting(why) => {
                            format!("connection lost ({why}); reconnecting")
                        }
                    };
                    self.log_event(line);
                }
                self.conn = state;
            }
            NetEvent::Room(m) => return self.on_room(m),
            NetEvent::Private(m) => return self.on_private(m),
            NetEvent::Rtt(d) => self.rtt = Some(d),
            NetEvent::Pending(n) => self.pending = n,
        }
        None
    }

    fn on_room(&mut self, m: Envelope<Out>) -> Option<Action> {
        if !self.game.synced || m.seq <= self.game.seq {
            return None; // before the world arrived, or a repeat after a worker restart
        }
        let missed = m.seq > self.game.seq + 1;
        self.game.seq = m.seq;
        if missed {
            self.log_event(format!(
                "missed room messages before #{}; catching up",
                m.seq
            ));
            self.game.synced = false;
            return Some(Action::Look);
        }
        let out = match m.body {
            Body::Game(out) => out,
            Body::Room(RoomEvent::RoomEnded { reason }) => {
                let why = format!("room {} ended: {reason}", self.game.room);
                return self.back_to_lobby(why);
            }
            Body::Room(RoomEvent::Error { error }) => {
                self.log_event(format!("error: {error}"));
                return None;
            }
            // To one player only: never on the room topic.
            Body::Room(RoomEvent::Transferred { .. }) => return None,
        };
        let me = self.name.clone();
        let game = &mut self.game;
        match out {
            Out::Moved { player, at } => {
                if let Some(p) = game.players.get_mut(&player) {
                    (p.x, p.y) = (at.x, at.y);
                }
            }
            Out::Joined { player, is } => {
                game.players.insert(player.clone(), is);
                self.log_event(format!("{player} joined"));
            }
            Out::Left { player } => {
                game.players.remove(&player);
                self.log_event(format!("{player} left"));
            }
            Out::Dropped { player } => {
                if let Some(p) = game.players.get_mut(&player) {
                    p.away = true;
                }
                self.log_event(format!("{player} lost the connection"));
            }
            Out::Back { player } => {
                if let Some(p) = game.players.get_mut(&player) {
                    p.away = false;
                }
                self.log_event(format!("{player} is back"));
            }
            Out::Chat { player, text } => push(&mut game.chat, format!("{player}: {text}")),
            Out::Picked { player, item, id } => {
                game.items.retain(|it| it.id != id);
                if player == me {
                    *self.inventory.entry(item.clone()).or_default() += 1;
                }
                self.log_event(format!("{player} picked up a {item}"));
            }
            Out::Npcs { npcs } => game.npcs = npcs,
            Out::Item { item } => game.items.push(item),
            Out::Hit {
                by,
                target,
                damage,
                hp,
            } => {
                match &target {
                    Fighter::Npc { id } => {
                        if let Some(n) = game.npcs.iter_mut().find(|n| n.id == *id) {
                            n.hp = hp;
                        }
                    }
                    Fighter::Player { name } => {
                        if let Some(p) = game.players.get_mut(name) {
                            p.hp = hp;
                        }
                    }
                }
                let (by, target) = (who(&by, &me), who(&target, &me));
                self.log_event(format!("{by} hit {target} for {damage} ({hp} left)"));
            }
            Out::Slain { npc, by, xp } => {
                game.npcs.retain(|n| n.id != npc);
                if by == me {
                    *self.inventory.entry("xp".into()).or_default() += xp;
                }
                self.log_event(format!("{} slew N{npc} (+{xp} xp)", who_named(&by, &me)));
            }
            Out::Died { player, by } => {
                let line = format!("{} fell to {}", who_named(&player, &me), who(&by, &me));
                self.log_event(line);
            }
            Out::Respawned { player, is } => {
                game.players.insert(player.clone(), is);
                self.log_event(format!("{} woke at the start", who_named(&player, &me)));
            }
            Out::LevelUp { player, is } => {
                let level = is.level;
                game.players.insert(player.clone(), is);
                self.log_event(format!(
                    "{} reached level {level}!",
                    who_named(&player, &me)
                ));
            }
            Out::Hp { player, hp } => {
                if let Some(p) = game.players.get_mut(&player) {
                    p.hp = hp;
                }
            }
            Out::Travelled { player, zone } => {
                game.players.remove(&player);
                if player == me {
                    // The room moves us: the ticket follows on our own destination.
                    if game.travelling.is_none() {
                        self.log_event(format!("portal: to the {zone}…"));
                        self.game.travelling = Some(zone);
                    }
                    return None;
                }
                self.log_event(format!("{player} left for the {zone}"));
            }
            // To one player only, or from a newer server: nothing for the room view.
            Out::Welcome(_) | Out::Blocked { .. } | Out::Unknown => {}
        }
        None
    }

    /// The room moved the player to another: play goes on there with `ticket`, and the
    /// view stays until the new room's world arrives.
    fn travel(&mut self, ticket: Box<Ticket>) -> Option<Action> {
        if self.game.travelling.is_none() {
            self.log_event(format!("moving to room {}…", ticket.room));
            self.game.travelling = Some(ticket.room.clone());
        }
        Some(Action::Travel(ticket))
    }

    fn on_private(&mut self, m: Envelope<Out>) -> Option<Action> {
        match m.body {
            Body::Game(Out::Welcome(world)) => {
                if self.game.synced && m.seq < self.game.seq {
                    return None; // an older world, replayed after a worker restart
                }
                let game = &mut self.game;
                if game.travelling.take().is_some() {
                    push(&mut game.events, format!("you are in the {}", world.zone));
                }
                game.zone = world.zone;
                game.map = world.map;
                game.players = world.players;
                game.npcs = world.npcs;
                game.items = world.items;
                game.seq = m.seq;
                game.synced = true;
            }
            Body::Room(RoomEvent::Transferred { ticket }) => return self.travel(ticket),
            Body::Room(RoomEvent::Error { error }) => self.log_event(format!("error: {error}")),
            _ => {}
        }
        None
    }

    /// Leaves the game screen for the lobby, saying why.
    fn back_to_lobby(&mut self, why: String) -> Option<Action> {
        if self.screen != Screen::Game {
            return None;
        }
        if self.replay_bar.is_some() {
            // A replay's room ending is its last event: the screen stays on it.
            self.log_event(why);
            return None;
        }
        self.screen = Screen::Lobby;
        self.game = Game::default();
        self.focus = Focus::Map;
        self.error = Some(why);
        Some(Action::Leave)
    }

    fn log_event(&mut self, line: String) {
        push(&mut self.game.events, line);
    }
}

/// A fighter as the log names it: `you`, a player's name, or `N3`.
fn who(f: &Fighter, me: &str) -> String {
    match f {
        Fighter::Player { name } => who_named(name, me),
        Fighter::Npc { id } => format!("N{id}"),
    }
}

fn who_named(name: &str, me: &str) -> String {
    if name == me {
        "you".into()
    } else {
        name.to_owned()
    }
}

fn push(log: &mut VecDeque<String>, line: String) {
    if log.len() == LOG_LINES {
        log.pop_front();
    }
    log.push_back(line);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A message as it comes off the wire.
    pub(crate) fn wire(json: serde_json::Value) -> Envelope<Out> {
        serde_json::from_value(json).expect("a message the client can read")
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    fn room(id: &str, players: usize) -> RoomView {
        RoomView {
            players_hidden: None,
            owner_token: None,
            id: id.into(),
            name: format!("room {id}"),
            players: (0..players).map(|i| format!("p{i}")).collect(),
            players_online: players,
            created_at: 0,
            ..RoomView::default()
        }
    }

    pub(crate) fn in_game() -> App {
        let mut app = App::new("http://x", Some("ann"));
        app.on_net(NetEvent::Joined("r1".into()));
        app.on_net(NetEvent::Private(wire(json!({
            "type": "welcome", "seq": 10, "zone": "meadow",
            "map": ["#####", "#...#", "#####"],
            "players": {
                "ann": { "x": 1, "y": 1, "hp": 10, "level": 1 },
                "bob": { "x": 3, "y": 1, "hp": 10, "level": 1 }
            },
            "npcs": [], "items": [{ "kind": "gem", "x": 2, "y": 1, "id": 1 }],
        }))));
        app
    }

    #[test]
    fn the_name_prompt_leads_to_the_lobby() {
        let mut app = App::new("http://x", None);
        assert_eq!(app.screen, Screen::Name);
        typed(&mut app, "an n!");
        assert_eq!(app.name_input, "ann", "only name characters are taken");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Some(Action::Refresh));
        assert_eq!((app.screen, app.name.as_str()), (Screen::Lobby, "ann"));
    }

    #[test]
    fn a_spectator_moves_nothing_and_q_quits() {
        let mut app = App::watching("http://x");
        assert_eq!(app.screen, Screen::Game);
        for code in [
            KeyCode::Up,
            KeyCode::Char('d'),
            KeyCode::Enter,
            KeyCode::Char('x'),
        ] {
            assert_eq!(app.on_key(key(code)), None, "{code:?}");
        }
        assert_eq!(app.focus, Focus::Map, "no chat for a spectator");
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert!(app.quit);
    }

    #[test]
    fn lobby_keys_select_join_create_and_play_now() {
        let mut app = App::new("http://x", Some("ann"));
        app.on_net(NetEvent::Rooms(vec![room("a", 1), room("b", 0)]));
        app.on_key(key(KeyCode::Down));
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Action::Join("b".into()))
        );
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.selected, 0, "selection wraps");
        assert_eq!(
            app.on_key(key(KeyCode::Char('c'))),
            Some(Action::CreateRoom)
        );
        assert_eq!(app.on_key(key(KeyCode::Char('p'))), Some(Action::PlayNow));
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert!(app.quit);
    }

    #[test]
    fn arrows_and_wasd_move_enter_chats() {
        let mut app = in_game();
        assert_eq!(app.on_key(key(KeyCode::Right)), Some(Action::Move(1, 0)));
        assert_eq!(
            app.on_key(key(KeyCode::Char('w'))),
            Some(Action::Move(0, -1))
        );
        assert_eq!(app.on_key(key(KeyCode::Enter)), None);
        assert_eq!(app.focus, Focus::Chat);
        typed(&mut app, "hi wasd");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Action::Chat("hi wasd".into()))
        );
        assert_eq!(app.focus, Focus::Map);
        assert_eq!(app.on_key(key(KeyCode::Char('?'))), None);
        assert!(app.help);
        app.on_key(key(KeyCode::Char('x')));
        assert!(!app.help, "any key closes the help");
        assert_eq!(app.on_key(key(KeyCode::Esc)), Some(Action::Leave));
        assert_eq!(app.screen, Screen::Lobby);
    }

    #[test]
    fn room_messages_update_the_world_in_sequence() {
        let mut app = in_game();
        app.on_net(NetEvent::Room(wire(
            json!({ "type": "moved", "player": "ann", "x": 2, "y": 1, "seq": 11 }),
        )));
        app.on_net(NetEvent::Room(wire(
            json!({ "type": "picked", "player": "ann", "item": "gem", "id": 1, "seq": 12 }),
        )));
        app.on_net(NetEvent::Room(wire(
            json!({ "type": "chat", "player": "bob", "text": "nice", "seq": 13 }),
        )));
        assert_eq!(app.me(), Some((2, 1)));
        assert!(app.game.items.is_empty());
        assert_eq!(app.inventory["gem"], 1);
        assert_eq!(app.game.chat.back().unwrap(), "bob: nice");
        // A repeat (same seq) is dropped; a gap asks for the world again.
        app.on_net(NetEvent::Room(wire(
            json!({ "type": "moved", "player": "ann", "x": 1, "y": 1, "seq": 13 }),
        )));
        assert_eq!(app.me(), Some((2, 1)));
        let follow = app.on_net(NetEvent::Room(wire(
            json!({ "type": "moved", "player": "bob", "x": 2, "y": 1, "seq": 20 }),
        )));
        assert_eq!(follow, Some(Action::Look));
        assert!(!app.game.synced);
    }

    #[test]
    fn fights_show_hit_points_and_a_portal_keeps_the_view_until_the_new_zone_arrives() {
        let mut app = in_game();
        app.on_net(NetEvent::Room(wire(json!({
            "type": "hit", "by": { "kind": "npc", "id": 1 },
            "target": { "kind": "player", "name": "ann" }, "damage": 1, "hp": 9, "seq": 11
        }))));
        assert_eq!(app.my_health(), Some((9, 10, 1)));
        assert_eq!(app.game.events.back().unwrap(), "N1 hit you for 1 (9 left)");
        app.on_net(NetEvent::Room(wire(json!({
            "type": "slain", "npc": 1, "by": "ann", "xp": 10, "seq": 12
        }))));
        assert_eq!(app.inventory["xp"], 10);
        let next = app.on_net(NetEvent::Room(wire(json!({
            "type": "travelled", "player": "ann", "zone": "caves",
            "seq": 13, "input_seq": 77, "input_from": "ann"
        }))));
        assert_eq!(next, None, "the room moves ann");
        assert_eq!(app.game.events.back().unwrap(), "portal: to the caves…");
        let ticket = json!({
            "room": "r2", "player": "ann", "ws_url": "ws://h/ws", "tcp_url": "tcp://h:1",
            "login": "ann", "token": "t2", "expires": 1, "inbox": "/queue/room.r2",
            "topic": "/topic/room.r2", "private": "/topic/room.r2.player.ann"
        });
        let next = app.on_net(NetEvent::Private(wire(
            json!({ "type": "transferred", "ticket": ticket }),
        )));
        let ticket: Ticket = serde_json::from_value(ticket).unwrap();
        assert_eq!(next, Some(Action::Travel(Box::new(ticket))));
        app.on_net(NetEvent::Joined("r2".into()));
        assert_eq!(app.game.map.len(), 3, "the old zone stays in view");
        assert_eq!(app.game.travelling.as_deref(), Some("caves"));
        app.on_net(NetEvent::Private(wire(json!({
            "type": "welcome", "seq": 3, "zone": "caves", "map": ["#O:#"],
            "players": { "ann": { "x": 1, "y": 1, "hp": 9, "level": 1 } },
            "npcs": [], "items": []
        }))));
        assert_eq!(
            (app.game.zone.as_str(), app.game.room.as_str()),
            ("caves", "r2")
        );
        assert_eq!((app.game.travelling.as_deref(), app.game.seq), (None, 3));
        assert_eq!(app.game.events.back().unwrap(), "you are in the caves");
    }

    #[test]
    fn errors_are_logged_and_unknown_messages_ignored() {
        let mut app = in_game();
        app.on_net(NetEvent::Private(wire(
            json!({ "type": "error", "error": "no", "seq": 10 }),
        )));
        assert_eq!(app.game.events.back().unwrap(), "error: no");
        let newer = json!({ "type": "fireworks", "colour": "red", "seq": 11 });
        assert_eq!(app.on_net(NetEvent::Room(wire(newer))), None);
        assert_eq!((app.game.seq, app.screen), (11, Screen::Game));
    }

    #[test]
    fn an_ended_room_or_a_refused_ticket_returns_to_the_lobby() {
        let mut app = in_game();
        let next = app.on_net(NetEvent::Room(wire(
            json!({ "type": "room_ended", "reason": "idle", "seq": 11 }),
        )));
        assert_eq!(next, Some(Action::Leave));
        assert_eq!(app.screen, Screen::Lobby);
        assert_eq!(app.error.as_deref(), Some("room r1 ended: idle"));
        let mut app = in_game();
        assert_eq!(
            app.on_net(NetEvent::Ended("refused".into())),
            Some(Action::Leave)
        );
        assert_eq!(
            (app.screen, app.error.as_deref()),
            (Screen::Lobby, Some("refused"))
        );
        assert_eq!(
            app.on_net(NetEvent::Ended("again".into())),
            None,
            "only once"
        );
    }

    #[test]
    fn an_older_world_does_not_roll_the_room_back() {
        let mut app = in_game();
        app.on_net(NetEvent::Room(wire(
            json!({ "type": "moved", "player": "ann", "x": 2, "y": 1, "seq": 11 }),
        )));
        app.on_net(NetEvent::Private(wire(json!({ "type": "welcome", "seq": 5, "zone": "meadow", "map": [], "players": {}, "npcs": [], "items": [] }))));
        assert_eq!((app.game.seq, app.me()), (11, Some((2, 1))));
    }

    #[test]
    fn keys_with_ctrl_or_alt_are_not_moves() {
        let mut app = in_game();
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL)),
            None
        );
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
    }

    #[test]
    fn connection_changes_and_errors_are_logged() {
        let mut app = in_game();
        app.on_net(NetEvent::Connection(ConnState::Online));
        app.on_net(NetEvent::Connection(ConnState::Reconnecting(
            "broken pipe".into(),
        )));
        app.on_net(NetEvent::Private(wire(
            json!({ "type": "error", "error": "nope" }),
        )));
        let events: Vec<&String> = app.game.events.iter().collect();
        assert_eq!(
            events,
            [
                "connected",
                "connection lost (broken pipe); reconnecting",
                "error: nope"
            ]
        );
    }
}
