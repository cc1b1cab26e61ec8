//! The network side: lobby calls through the framework's [`LobbyClient`], and a play
//! session over STOMP that reconnects with backoff and never drops an input.
//!
//! Inputs are numbered by the player and kept until the broker's receipt; after a
//! reconnect the unconfirmed ones are sent again, and the room applies each number once.

use crate::app::{Action, ConnState, NetEvent};
use crate::keys::Keys;
use game_protocol::{Chat, In, Look, Move, Out};
use game_server_less_client::proto::{Envelope, Input, Matchmake, Ticket};
use game_server_less_client::stomp::{Client, ConnectOptions, SubscribeOptions, Subscription};
use game_server_less_client::LobbyClient;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Sends [`NetEvent`]s to the UI.
pub(crate) type Events = mpsc::UnboundedSender<NetEvent>;

struct Session {
    room: String,
    token: String,
    outbox: Arc<Outbox>,
    task: tokio::task::JoinHandle<()>,
}

/// Inputs numbered and waiting for the broker's receipt.
struct Outbox {
    queue: Mutex<(u64, VecDeque<Input<In>>)>,
    ready: Notify,
}

impl Outbox {
    /// Numbers start at the clock's microseconds, so they keep growing across restarts of
    /// the client (the room skips any number it has seen).
    fn new() -> Outbox {
        Outbox {
            queue: Mutex::new((game_server_less_client::proto::first_seq(), VecDeque::new())),
            ready: Notify::new(),
        }
    }

    fn push(&self, input: In) -> usize {
        let mut q = self.queue.lock().unwrap();
        q.0 += 1;
        let seq = q.0;
        q.1.push_back(Input { seq, input });
        self.ready.notify_one();
        q.1.len()
    }

    fn front(&self) -> Option<Input<In>> {
        self.queue.lock().unwrap().1.front().cloned()
    }

    fn confirm(&self) -> usize {
        let mut q = self.queue.lock().unwrap();
        q.1.pop_front();
        q.1.len()
    }
}

/// The lobby and play session of one client. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Net {
    lobby: LobbyClient,
    events: Events,
    session: Arc<Mutex<Option<Session>>>,
    token: Arc<Mutex<Option<String>>>,
    keys: Arc<Mutex<Keys>>,
    requests: mpsc::UnboundedSender<(Action, String)>,
}

impl Net {
    /// A client of the lobby at `server` that reports to `events`.
    pub(crate) fn new(server: &str, events: Events) -> game_server_less_client::Result<Net> {
        let (tx, requests) = mpsc::unbounded_channel();
        let net = Net {
            lobby: LobbyClient::new(server)?,
            events,
            session: Arc::new(Mutex::new(None)),
            token: Arc::new(Mutex::new(None)),
            keys: Arc::new(Mutex::new(Keys::load())),
            requests: tx,
        };
        tokio::spawn(net.clone().lobby_loop(requests));
        Ok(net)
    }

    /// Lobby requests run one at a time, in order: a leave finishes before the next join.
    async fn lobby_loop(self, mut requests: mpsc::UnboundedReceiver<(Action, String)>) {
        while let Some((action, name)) = requests.recv().await {
            match action {
                Action::Refresh => self.refresh(&name).await,
                Action::CreateRoom => match self.create_room(&name).await {
                    Ok(room) => self.join(&room, &name).await,
                    Err(e) => self.lobby_error(e),
                },
                Action::Join(room) => self.join(&room, &name).await,
                Action::PlayNow => self.play_now(&name).await,
                Action::Watch(room) => self.watch(&room).await,
                Action::Travel(ticket) => self.travel(*ticket),
                Action::Leave => {
                    self.leave().await;
                    self.refresh(&name).await;
                }
                _ => {}
            }
        }
    }

    /// Carries out what the player asked for, as `name`.
    pub(crate) fn request(&self, action: Action, name: &str) {
        match action {
            Action::Refresh
            | Action::CreateRoom
            | Action::PlayNow
            | Action::Watch(_)
            | Action::Join(_)
            | Action::Leave
            | Action::Travel(_) => {
                let _ = self.requests.send((action, name.to_owned()));
            }
            Action::Move(dx, dy) => self.input(In::Move(Move { dx, dy })),
            Action::Chat(text) => self.input(In::Chat(Chat { text })),
            Action::Look => self.input(In::Look(Look {})),
            Action::Quit => {
                if let Some(s) = self.session.lock().unwrap().take() {
                    s.task.abort();
                }
            }
        }
    }

    /// Ends the play session, if any, and tells the lobby.
    async fn leave(&self) {
        let session = self.session.lock().unwrap().take();
        if let Some(s) = session {
            s.task.abort();
            let _ = self.lobby.leave(&s.room, &s.token).await;
        }
    }

    fn input(&self, input: In) {
        if let Some(s) = &*self.session.lock().unwrap() {
            let pending = s.outbox.push(input);
            let _ = self.events.send(NetEvent::Pending(pending));
        }
    }

    fn lobby_error(&self, e: String) {
        let _ = self.events.send(NetEvent::LobbyError(e));
    }

    /// Reloads the room list, and the inventory once the player has a key (or a token).
    pub(crate) async fn refresh(&self, name: &str) {
        match self.lobby.rooms().await {
            Ok(rooms) => {
                let _ = self.events.send(NetEvent::Rooms(rooms));
            }
            Err(e) => return self.lobby_error(e.to_string()),
        }
        // The player key proves the name in or out of a room; a ticket only while in it.
        let key = self.key(name);
        let token = key.or_else(|| self.token.lock().unwrap().clone());
        if let Some(token) = token {
            if let Ok(inventory) = self.lobby.items(&token).await {
                let _ = self.events.send(NetEvent::Inventory(inventory.items));
            }
        }
    }

    /// The key from the name's first join on this server, which lets this player use the
    /// name again. Kept under the first lobby's URL: every lobby of a deployment takes it.
    fn key(&self, name: &str) -> Option<String> {
        let keys = self.keys.lock().unwrap();
        keys.get(&self.lobby.urls()[0], name).map(str::to_owned)
    }

    /// The key to join with: the name's, or a new one made and kept before the first
    /// join asks, so that the name is not lost with that join's answer (a lobby dying
    /// mid-call): asked again, the join brings the same key.
    fn join_key(&self, name: &str) -> String {
        let mut keys = self.keys.lock().unwrap();
        let lobby = &self.lobby.urls()[0];
        if let Some(key) = keys.get(lobby, name) {
            return key.to_owned();
        }
        let key = game_server_less_client::proto::new_player_key(name);
        if let Err(why) = keys.set(lobby, name, &key) {
            drop(keys);
            self.lobby_error(why);
        }
        key
    }

    async fn create_room(&self, name: &str) -> Result<String, String> {
        let title = format!("{name}'s room");
        let room = self.lobby.create_room(Some(&title)).await;
        room.map(|r| r.id).map_err(|e| e.to_string())
    }

    /// Joins a room and starts playing in it.
    pub(crate) async fn join(&self, room: &str, name: &str) {
        let key = self.join_key(name);
        match self.lobby.join(room, name, Some(&key)).await {
            Ok(ticket) => self.play(ticket, name).await,
            Err(e) => self.lobby_error(e.to_string()),
        }
    }

    /// Watches `room` as a spectator: its world, then its messages; nothing to send.
    async fn watch(&self, room: &str) {
        let path = format!("/rooms/{room}/spectate");
        let ticket: Result<Ticket, _> = self.lobby.post(&path, None, &serde_json::json!({})).await;
        match ticket {
            Ok(ticket) => self.start(ticket),
            Err(e) => self.lobby_error(e.to_string()),
        }
    }

    /// Quick play: a seat in any open room, or a new one, and plays in it.
    async fn play_now(&self, name: &str) {
        let play = Matchmake {
            key: Some(self.join_key(name)),
            ..Matchmake::named(name)
        };
        match self.lobby.quick_play(&play).await {
            Ok(ticket) => self.play(ticket, name).await,
            Err(e) => self.lobby_error(e.to_string()),
        }
    }

    /// Plays with `ticket`, keeping the name's key if it came with it.
    async fn play(&self, ticket: Ticket, name: &str) {
        if let Some(key) = &ticket.player_key {
            let kept = self
                .keys
                .lock()
                .unwrap()
                .set(&self.lobby.urls()[0], name, key);
            if let Err(why) = kept {
                self.lobby_error(why);
            }
        }
        self.leave().await; // one room at a time
        self.start(ticket);
    }

    /// The room moved the player to another (through a portal, say; it left the old
    /// one for them): play goes on there with `ticket`. Inputs the old room's broker
    /// had not confirmed go to the new room, numbered as they were.
    fn travel(&self, ticket: Ticket) {
        let old = self.session.lock().unwrap().take();
        let Some(old) = old else { return };
        if old.room == ticket.room {
            // The same move told twice (the room's worker restarted meanwhile).
            *self.session.lock().unwrap() = Some(old);
            return;
        }
        old.task.abort();
        self.start_with(ticket, old.outbox);
    }

    /// Starts playing with `ticket`.
    fn start(&self, ticket: Ticket) {
        self.start_with(ticket, Arc::new(Outbox::new()));
    }

    /// Starts playing with `ticket`, sending what waits in `outbox`.
    fn start_with(&self, ticket: Ticket, outbox: Arc<Outbox>) {
        *self.token.lock().unwrap() = Some(ticket.token.clone());
        let room = ticket.room.clone();
        let task = tokio::spawn(play(ticket.clone(), outbox.clone(), self.events.clone()));
        *self.session.lock().unwrap() = Some(Session {
            room: ticket.room,
            token: ticket.token,
            outbox,
            task,
        });
        let _ = self.events.send(NetEvent::Joined(room));
    }
}

async fn connect(
    ticket: &Ticket,
) -> game_server_less_client::stomp::Result<(Client, Subscription, Subscription)> {
    let options = ConnectOptions {
        heartbeat: game_server_less_client::stomp::HeartBeat::every(Duration::from_secs(2)),
        timeout: Duration::from_secs(5),
        ..ConnectOptions::login(ticket.login.clone(), ticket.token.clone())
    };
    // Every node of the broker in this player's order: a dead one is passed over.
    let client = Client::connect_first(&ticket.ws_endpoints(), options).await?;
    let room = client
        .subscribe(&ticket.topic, SubscribeOptions::default())
        .await?;
    let private = client
        .subscribe(&ticket.private, SubscribeOptions::default())
        .await?;
    Ok((client, room, private))
}

/// Plays in a room until aborted: connects, reconnects with backoff, relays messages.
async fn play(ticket: Ticket, outbox: Arc<Outbox>, events: Events) {
    let mut backoff = Duration::from_millis(250);
    let _ = events.send(NetEvent::Connection(ConnState::Connecting));
    loop {
        let why = match connect(&ticket).await {
            Ok((client, room, private)) => {
                backoff = Duration::from_millis(250);
                let _ = events.send(NetEvent::Connection(ConnState::Online));
                // Catch up: the whole world, then whatever inputs were not confirmed.
                outbox.push(In::Look(Look {}));
                match session(&ticket, client, room, private, &outbox, &events).await {
                    Ok(why) => why,
                    Err(fatal) => {
                        let _ = events.send(NetEvent::Ended(fatal));
                        return;
                    }
                }
            }
            // The server refused the ticket (expired, or the room is gone): trying
            // again will not help.
            Err(e @ game_server_less_client::stomp::Error::Server { .. }) => {
                let _ = events.send(NetEvent::Ended(format!(
                    "the server refused this room's ticket: {e}"
                )));
                return;
            }
            Err(e) => e.to_string(),
        };
        let _ = events.send(NetEvent::Connection(ConnState::Reconnecting(why)));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life; returns why it ended: `Ok` when reconnecting may help, `Err`
/// when the server refused an input for good (the room is gone).
async fn session(
    ticket: &Ticket,
    client: Client,
    mut room: Subscription,
    mut private: Subscription,
    outbox: &Outbox,
    events: &Events,
) -> Result<String, String> {
    let send = async {
        loop {
            let Some(input) = outbox.front() else {
                outbox.ready.notified().await;
                continue;
            };
            let started = Instant::now();
            let body = serde_json::to_string(&input).expect("an input serializes");
            match client.send(&ticket.inbox, body).await {
                Ok(()) => {}
                Err(e @ game_server_less_client::stomp::Error::Server { .. }) => {
                    return Err(e.to_string())
                }
                Err(e) => return Ok(e.to_string()),
            }
            let _ = events.send(NetEvent::Rtt(started.elapsed()));
            let _ = events.send(NetEvent::Pending(outbox.confirm()));
        }
    };
    let receive = async {
        loop {
            tokio::select! {
                m = room.recv() => match m {
                    Some(m) => for m in parse(m.body()) { let _ = events.send(NetEvent::Room(m)); },
                    None => return Ok(client.closed().unwrap_or_else(|| "connection closed".into())),
                },
                m = private.recv() => match m {
                    Some(m) => for m in parse(m.body()) { let _ = events.send(NetEvent::Private(m)); },
                    None => return Ok(client.closed().unwrap_or_else(|| "connection closed".into())),
                },
            }
        }
    };
    tokio::select! {
        why = send => why,
        why = receive => why,
    }
}

/// A message body's room messages, in order (several when the room batches its
/// outputs); none for a body that is not envelopes with a `type` (a newer server's
/// unknown types parse, as [`Out::Unknown`]). A broadcast dropped here shows as a gap
/// in `seq`, and the app asks for the whole world again.
fn parse(body: &[u8]) -> Vec<Envelope<Out>> {
    game_server_less_client::proto::envelopes(body).unwrap_or_default()
}
