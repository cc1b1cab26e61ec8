//! The network side: lobby calls over HTTP (reqwest), and a play session over STOMP that
//! reconnects with backoff and never drops an input.
//!
//! Inputs are numbered by the player and kept until the broker's receipt; after a
//! reconnect the unconfirmed ones are sent again, and the room applies each number once.

use crate::app::{Action, ConnState, NetEvent};
use crate::keys::Keys;
use game_server_less::proto::{RoomView, Ticket};
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions, Subscription};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Sends [`NetEvent`]s to the UI.
pub type Events = mpsc::UnboundedSender<NetEvent>;

struct Session {
    room: String,
    token: String,
    outbox: Arc<Outbox>,
    task: tokio::task::JoinHandle<()>,
}

/// Inputs numbered and waiting for the broker's receipt.
struct Outbox {
    queue: Mutex<(u64, VecDeque<Value>)>,
    ready: Notify,
}

impl Outbox {
    /// Numbers start at the clock's microseconds, so they keep growing across restarts of
    /// the client (the room skips any number it has seen).
    fn new() -> Outbox {
        Outbox {
            queue: Mutex::new((first_seq(), VecDeque::new())),
            ready: Notify::new(),
        }
    }

    fn push(&self, mut input: Value) -> usize {
        let mut q = self.queue.lock().unwrap();
        q.0 += 1;
        input["seq"] = q.0.into();
        q.1.push_back(input);
        self.ready.notify_one();
        q.1.len()
    }

    fn front(&self) -> Option<Value> {
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
pub struct Net {
    http: reqwest::Client,
    server: String,
    events: Events,
    session: Arc<Mutex<Option<Session>>>,
    token: Arc<Mutex<Option<String>>>,
    keys: Arc<Mutex<Keys>>,
    lobby: mpsc::UnboundedSender<(Action, String)>,
}

impl Net {
    /// A client of the lobby at `server` that reports to `events`.
    pub fn new(server: &str, events: Events) -> Net {
        let (lobby, requests) = mpsc::unbounded_channel();
        let net = Net {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client without TLS builds"),
            server: server.trim_end_matches('/').to_owned(),
            events,
            session: Arc::new(Mutex::new(None)),
            token: Arc::new(Mutex::new(None)),
            keys: Arc::new(Mutex::new(Keys::load())),
            lobby,
        };
        tokio::spawn(net.clone().lobby_loop(requests));
        net
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
                Action::Leave => {
                    self.leave().await;
                    self.refresh(&name).await;
                }
                _ => {}
            }
        }
    }

    /// Carries out what the player asked for, as `name`.
    pub fn dispatch(&self, action: Action, name: &str) {
        match action {
            Action::Refresh | Action::CreateRoom | Action::Join(_) | Action::Leave => {
                let _ = self.lobby.send((action, name.to_owned()));
            }
            Action::Move(dx, dy) => self.input(json!({ "type": "move", "dx": dx, "dy": dy })),
            Action::Chat(text) => self.input(json!({ "type": "chat", "text": text })),
            Action::Look => self.input(json!({ "type": "look" })),
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
            let url = format!("{}/rooms/{}/leave", self.server, s.room);
            let _ = self.http.post(url).bearer_auth(&s.token).send().await;
        }
    }

    fn input(&self, input: Value) {
        if let Some(s) = &*self.session.lock().unwrap() {
            let pending = s.outbox.push(input);
            let _ = self.events.send(NetEvent::Pending(pending));
        }
    }

    fn lobby_error(&self, e: String) {
        let _ = self.events.send(NetEvent::LobbyError(e));
    }

    fn unreachable(&self, e: reqwest::Error) -> String {
        if e.is_connect() || e.is_timeout() {
            format!(
                "cannot reach the lobby at {}: start the server with `cargo run -p game-server`, or pass --server URL",
                self.server
            )
        } else {
            format!("lobby request failed: {e}")
        }
    }

    async fn error_of(response: reqwest::Response) -> String {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("no details")
        )
    }

    /// Reloads the room list, and the inventory once the player has a key (or a token).
    pub async fn refresh(&self, name: &str) {
        match self.http.get(format!("{}/rooms", self.server)).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Vec<RoomView>>().await {
                Ok(rooms) => {
                    let _ = self.events.send(NetEvent::Rooms(rooms));
                }
                Err(e) => self.lobby_error(format!("the lobby's room list did not parse: {e}")),
            },
            Ok(r) => self.lobby_error(Self::error_of(r).await),
            Err(e) => return self.lobby_error(self.unreachable(e)),
        }
        // The player key proves the name in or out of a room; a ticket only while in it.
        let key = self
            .keys
            .lock()
            .unwrap()
            .get(&self.server, name)
            .map(str::to_owned);
        let token = key.or_else(|| self.token.lock().unwrap().clone());
        if let Some(token) = token {
            let url = format!("{}/user/items", self.server);
            if let Ok(r) = self.http.get(url).bearer_auth(token).send().await {
                if let Ok(body) = r.json::<Value>().await {
                    let items: BTreeMap<String, i64> =
                        serde_json::from_value(body["items"].clone()).unwrap_or_default();
                    let _ = self.events.send(NetEvent::Inventory(items));
                }
            }
        }
    }

    async fn create_room(&self, name: &str) -> Result<String, String> {
        let r = self
            .http
            .post(format!("{}/rooms", self.server))
            .json(&json!({ "name": format!("{name}'s room") }))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !r.status().is_success() {
            return Err(Self::error_of(r).await);
        }
        let room: Value = r.json().await.map_err(|e| e.to_string())?;
        Ok(room["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Joins a room and starts playing in it.
    pub async fn join(&self, room: &str, name: &str) {
        // The key from the name's first join lets this player use the name again.
        let key = self
            .keys
            .lock()
            .unwrap()
            .get(&self.server, name)
            .map(str::to_owned);
        let request = self
            .http
            .post(format!("{}/rooms/{room}/join", self.server))
            .json(&json!({ "name": name, "key": key }));
        let r = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return self.lobby_error(Self::error_of(r).await),
            Err(e) => return self.lobby_error(self.unreachable(e)),
        };
        let ticket: Ticket = match r.json().await {
            Ok(t) => t,
            Err(e) => return self.lobby_error(format!("the join ticket did not parse: {e}")),
        };
        if let Some(key) = &ticket.player_key {
            let kept = self.keys.lock().unwrap().set(&self.server, name, key);
            if let Err(why) = kept {
                self.lobby_error(why);
            }
        }
        *self.token.lock().unwrap() = Some(ticket.token.clone());
        self.leave().await; // one room at a time
        let outbox = Arc::new(Outbox::new());
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
) -> game_server_less::Result<(Client, Subscription, Subscription)> {
    let options = ConnectOptions {
        heartbeat: (2000, 2000),
        timeout: Duration::from_secs(5),
        ..ConnectOptions::login(ticket.login.clone(), ticket.token.clone())
    };
    let client = Client::connect(&ticket.ws_url, options).await?;
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
                outbox.push(json!({ "type": "look" }));
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
            Err(e @ game_server_less::Error::Server { .. }) => {
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
            match client.send(&ticket.inbox, input.to_string()).await {
                Ok(()) => {}
                Err(e @ game_server_less::Error::Server { .. }) => return Err(e.to_string()),
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
                    Some(m) => { let _ = events.send(NetEvent::Room(parse(m.body()))); }
                    None => return Ok(client.closed().unwrap_or_else(|| "connection closed".into())),
                },
                m = private.recv() => match m {
                    Some(m) => { let _ = events.send(NetEvent::Private(parse(m.body()))); }
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

/// The clock in microseconds: a first input number larger than any an earlier run used.
pub fn first_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| json!({ "type": "unreadable" }))
}
