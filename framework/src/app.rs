//! The running game server: [`App`], the state that the lobby, the broker's authorizer
//! and the room workers share, and [`run`], which starts it all.

use crate::broker::{Authorizer, Broker, BrokerConfig, Principal};
use crate::lobby::{ApiError, Lobby, RoomView, Ticket};
use crate::msg::Msg;
use crate::server::{self, Args, Bound};
use crate::store::{RoomRecord, Store};
use crate::ticket::{random_id, Signer};
use crate::{Error, Result};
use clap::Parser;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `user-id` of control messages the lobby puts in a room's inbox.
pub(crate) const LOBBY_USER: &str = "$lobby";
/// The login room workers use with the broker, and so the `user-id` it stamps on
/// what they send (ticks in their own inbox).
pub(crate) const WORKER_USER: &str = "$worker";
const WORKER_LOGIN: &str = WORKER_USER;

/// Every room destination starts with one of these; the broker manages the first.
const ROOM_INBOXES: &str = "/queue/room.";
const ROOM_TOPICS: &str = "/topic/room.";

/// A room's inbox: players SEND inputs here; its worker is the only consumer.
fn inbox_of(room: &str) -> String {
    format!("{ROOM_INBOXES}{room}")
}

/// A room's topic: every player of the room hears it.
fn topic_of(room: &str) -> String {
    format!("{ROOM_TOPICS}{room}")
}

/// A player's own destination in a room.
fn private_of(room: &str, player: &str) -> String {
    format!("{ROOM_TOPICS}{room}.player.{player}")
}

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// How long a join token is valid.
    pub ticket_ttl: Duration,
    /// A room with no input for this long ends.
    pub idle_timeout: Duration,
    /// How often a room worker checkpoints (and acks) what it has applied.
    pub checkpoint_every: Duration,
    /// Whether `guest`/`guest` may connect to the broker (from loopback only).
    pub allow_guest: bool,
}

impl Default for AppConfig {
    fn default() -> AppConfig {
        AppConfig {
            ticket_ttl: Duration::from_secs(24 * 3600),
            idle_timeout: Duration::from_secs(15 * 60),
            checkpoint_every: Duration::from_millis(250),
            allow_guest: true,
        }
    }
}

type Spawner = Arc<dyn Fn(App, String) -> JoinHandle<()> + Send + Sync>;

struct Inner {
    store: Store,
    signer: Signer,
    broker: Broker,
    config: AppConfig,
    bound: Bound,
    worker_secret: String,
    workers: Mutex<HashMap<String, JoinHandle<()>>>,
    spawner: Spawner,
    shutdown: watch::Sender<bool>,
}

/// The server's shared state: store, broker, token signer and live rooms. Cheap to clone;
/// lobby handlers get it with `State<App>`.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("bound", &self.inner.bound)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The embedded broker.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The token signer.
    pub fn signer(&self) -> &Signer {
        &self.inner.signer
    }

    /// The settings.
    pub fn config(&self) -> &AppConfig {
        &self.inner.config
    }

    /// Where the server listens.
    pub fn bound(&self) -> Bound {
        self.inner.bound
    }

    /// Live rooms with a worker.
    pub fn room_count(&self) -> usize {
        self.inner.workers.lock().unwrap().len()
    }

    /// A room's inbox and topic.
    pub fn destinations(&self, room: &str) -> (String, String) {
        (inbox_of(room), topic_of(room))
    }

    /// A player's own destination in a room.
    pub fn private_destination(&self, room: &str, player: &str) -> String {
        private_of(room, player)
    }

    pub(crate) fn worker_credentials(&self) -> (&str, &str) {
        (WORKER_LOGIN, &self.inner.worker_secret)
    }

    pub(crate) fn worker_broker_url(&self) -> String {
        format!("tcp://{}", self.inner.bound.stomp)
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// A live room, or 404.
    pub async fn room(&self, id: &str) -> Result<RoomRecord, ApiError> {
        self.store().room(id).await?.ok_or_else(|| {
            ApiError::not_found(format!("no room {id:?}; GET /rooms lists the live ones"))
        })
    }

    /// A room as the lobby shows it.
    pub async fn view(&self, record: &RoomRecord) -> Result<RoomView> {
        let players = self.store().players(&record.id).await?;
        Ok(RoomView {
            id: record.id.clone(),
            name: record.name.clone(),
            players_online: players.len(),
            players,
            created_at: record.created_at,
        })
    }

    /// Creates a room: its record, its inbox, and its worker.
    pub async fn create_room(&self, name: &str) -> Result<RoomRecord> {
        let id = random_id(4);
        let record = self.store().create_room(&id, name).await?;
        self.start_worker(&id);
        Ok(record)
    }

    fn start_worker(&self, id: &str) {
        let (inbox, _) = self.destinations(id);
        self.broker().create_queue(&inbox);
        let handle = (self.inner.spawner)(self.clone(), id.to_owned());
        self.inner
            .workers
            .lock()
            .unwrap()
            .insert(id.to_owned(), handle);
    }

    /// Adds `player` to a room and issues its ticket; joining again issues a new ticket.
    pub async fn join(&self, room: &str, player: &str) -> Result<Ticket> {
        self.store().add_player(room, player).await?;
        self.control(
            room,
            serde_json::json!({ "type": "$join", "player": player }),
        )?;
        let (inbox, topic) = self.destinations(room);
        let (token, expires) = self
            .signer()
            .issue_expiring(room, player, self.config().ticket_ttl);
        let bound = self.bound();
        Ok(Ticket {
            room: room.to_owned(),
            player: player.to_owned(),
            ws_url: format!("ws://{}/ws", bound.http),
            tcp_url: format!("tcp://{}", bound.stomp),
            login: player.to_owned(),
            token,
            expires,
            inbox,
            topic,
            private: self.private_destination(room, player),
        })
    }

    /// Removes `player` from a room; returns whether it was there.
    pub async fn leave(&self, room: &str, player: &str) -> Result<bool> {
        let was = self.store().remove_player(room, player).await?;
        if was {
            self.control(
                room,
                serde_json::json!({ "type": "$leave", "player": player }),
            )?;
        }
        Ok(was)
    }

    /// Asks a room's worker to end the room.
    pub async fn end_room(&self, room: &str, reason: &str) -> Result<()> {
        if self.inner.workers.lock().unwrap().contains_key(room) {
            self.control(
                room,
                serde_json::json!({ "type": "$end", "reason": reason }),
            )
        } else {
            self.room_ended(room, reason).await
        }
    }

    /// Called by a worker whose room ended: frees the inbox and everything else.
    pub(crate) async fn room_ended(&self, room: &str, reason: &str) -> Result<()> {
        let (inbox, _) = self.destinations(room);
        self.broker().delete_queue(&inbox);
        self.store().end_room(room, reason).await?;
        self.inner.workers.lock().unwrap().remove(room);
        Ok(())
    }

    /// Puts a lobby control message in a room's inbox, in line with the players' inputs.
    fn control(&self, room: &str, body: serde_json::Value) -> Result<()> {
        let (inbox, _) = self.destinations(room);
        let headers = vec![
            ("user-id".to_owned(), LOBBY_USER.to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        self.broker().publish(&inbox, headers, body.to_string())
    }
}

/// The broker's gatekeeper for a game server: players connect with their ticket's token
/// and reach only their room; workers with the server's secret; `guest` from loopback to
/// anything outside the rooms.
struct GameAuthorizer {
    signer: Signer,
    worker_secret: String,
    allow_guest: bool,
}

const GUEST: &str = "guest";

fn in_rooms(destination: &str) -> bool {
    destination.starts_with(ROOM_INBOXES) || destination.starts_with(ROOM_TOPICS)
}

impl Authorizer for GameAuthorizer {
    fn connect(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<Principal, String> {
        match login {
            Some(WORKER_LOGIN) if passcode == Some(self.worker_secret.as_str()) => {
                return Ok(Principal::anyone(WORKER_LOGIN));
            }
            Some(WORKER_LOGIN) => return Err("wrong worker secret".into()),
            Some(GUEST) if passcode == Some(GUEST) => {
                if !self.allow_guest {
                    return Err("the guest login is switched off on this server".into());
                }
                if !peer.is_some_and(|p| p.ip().is_loopback()) {
                    return Err("guest may connect from loopback only".into());
                }
                return Ok(Principal::anyone(GUEST));
            }
            _ => {}
        }
        let token = passcode
            .filter(|p| !p.is_empty())
            .ok_or("send the token of your join ticket (POST /rooms/{id}/join) as the passcode")?;
        let claims = self.signer.verify(token)?;
        if let Some(login) = login.filter(|l| !l.is_empty()) {
            if login != claims.player {
                return Err(format!(
                    "login {login:?} does not match the ticket's player {:?}",
                    claims.player
                ));
            }
        }
        Ok(player_grants(&claims.room, &claims.player))
    }

    fn can_send(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        if principal.name == GUEST && in_rooms(destination) {
            return Err(
                "guest may not use room destinations; join a room through the lobby".into(),
            );
        }
        crate::broker::default_can_send(principal, destination)
    }

    fn can_subscribe(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        if principal.name == GUEST && in_rooms(destination) {
            return Err(
                "guest may not use room destinations; join a room through the lobby".into(),
            );
        }
        crate::broker::default_can_subscribe(principal, destination)
    }
}

fn player_grants(room: &str, player: &str) -> Principal {
    Principal {
        name: player.to_owned(),
        send: Some(vec![inbox_of(room)]),
        subscribe: Some(vec![topic_of(room), private_of(room, player)]),
    }
}

/// The token secret kept in `data_dir/secret`, made on first start, so that tickets
/// outlive a restart of the server.
fn stored_secret(data_dir: &std::path::Path) -> Result<Vec<u8>> {
    let path = data_dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(data_dir)?;
    let secret = random_id(32);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, secret.as_bytes())?;
    Ok(secret.into_bytes())
}

/// Runs a game server from the command line (see `--help`): the lobby with the game's
/// routes, the embedded broker, and a worker per room running `msg`'s handlers. Returns
/// when the server has shut down after Ctrl-C or SIGTERM.
pub async fn run<S>(lobby: Lobby, msg: Msg<S>) -> Result<()>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let args = Args::parse();
    server::init_logging(&args.log);
    run_with(args, lobby, msg, server::shutdown_signal(), |app| {
        let bound = app.bound();
        println!("game-server listening:");
        println!("  lobby     http://{}/rooms", bound.http);
        println!("  STOMP/WS  ws://{}/ws", bound.http);
        println!("  STOMP/TCP tcp://{}", bound.stomp);
        println!(
            "Play: cargo run -p game-client -- --server http://{}",
            bound.http
        );
        println!("Press Ctrl-C to stop.");
    })
    .await
}

/// [`run`] with the options, the shutdown trigger and what to do once it listens (it gets
/// the [`App`]: addresses, store, broker) given.
pub async fn run_with<S>(
    args: Args,
    lobby: Lobby,
    msg: Msg<S>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(&App),
) -> Result<()>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    if let Some(url) = &args.broker {
        return Err(Error::Url {
            url: url.clone(),
            why: "an external broker (cluster mode) is not supported yet; leave --broker out to use the embedded one".into(),
        });
    }
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("game.db").display()));
    let store = Store::open(&store_url).await?;
    let signer = match args.secret.as_deref().filter(|s| !s.is_empty()) {
        Some(secret) => Signer::new(secret.as_bytes().to_vec()),
        None => Signer::new(stored_secret(&args.data_dir)?),
    };
    let worker_secret = random_id(16);
    let config = AppConfig {
        idle_timeout: Duration::from_secs(args.room_idle_secs),
        allow_guest: !args.no_guest,
        ..AppConfig::default()
    };
    let authorizer = GameAuthorizer {
        signer: signer.clone(),
        worker_secret: worker_secret.clone(),
        allow_guest: config.allow_guest,
    };
    let broker_config = BrokerConfig {
        managed_prefixes: vec![ROOM_INBOXES.into()],
        ..args.broker_config()
    };
    let broker = Broker::with_authorizer(broker_config, Arc::new(authorizer));
    let listeners = server::bind(&args).await?;
    let bound = listeners.bound;

    let spawner: Spawner = Arc::new(move |app: App, room: String| {
        tokio::spawn(crate::worker::supervise(app, room, msg.clone()))
    });
    let app = App {
        inner: Arc::new(Inner {
            store,
            signer,
            broker: broker.clone(),
            config,
            bound,
            worker_secret,
            workers: Mutex::new(HashMap::new()),
            spawner,
            shutdown: watch::channel(false).0,
        }),
    };
    let router = lobby.into_router(app.clone());
    let app_for_stop = app.clone();
    let stop = async move {
        shutdown.await;
        // Workers checkpoint and ack first, so the broker keeps only unapplied inputs.
        let _ = app_for_stop.inner.shutdown.send(true);
        let handles: Vec<_> = app_for_stop
            .inner
            .workers
            .lock()
            .unwrap()
            .drain()
            .map(|(_, h)| h)
            .collect();
        let all = futures_util::future::join_all(handles);
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    };
    let serving = server::serve(listeners, broker, router, stop);
    // Rooms that were live when the server last stopped carry on from their checkpoints.
    let live = app.store().live_rooms().await?;
    for record in &live {
        app.start_worker(&record.id);
    }
    if !live.is_empty() {
        tracing::info!("resumed {} live rooms", live.len());
    }
    on_bound(&app);
    serving.await
}
