//! Helpers for the end-to-end tests: a real server (`game_server_less::Server`) on
//! loopback ports, and players that join through the lobby and play over STOMP.

use game_server_less::broker::Broker;
use game_server_less::proto::Ticket;
use game_server_less::stomp::{Client, ConnectOptions, Message, SubscribeOptions, Subscription};
use game_server_less::{Config, Kinds, LobbyClient, Rooms};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::sync::oneshot;

/// How long to wait for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process on loopback ports.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    /// The room service: its store, signer and broker admin.
    pub rooms: Rooms,
    /// The embedded broker.
    pub broker: Broker,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<game_server_less::Result<()>>,
}

/// A fresh, empty data directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("gsl-e2e-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Starts the game (the real `game-server` handlers and routes) with data in `dir`.
    pub async fn game(dir: &Path) -> Server {
        Server::start(game_server::lobby(), game_server::msg(), dir).await
    }

    /// The configuration tests use: free loopback ports, a SQLite store and a fixed
    /// token secret in `dir`.
    pub fn config(dir: &Path) -> Config {
        Config {
            secret: Some("e2e-secret".into()),
            ..Config::local(dir)
        }
    }

    /// Starts any game with the test configuration.
    pub async fn start(
        lobby: game_server_less::Lobby,
        kinds: impl Into<Kinds>,
        dir: &Path,
    ) -> Server {
        Server::start_with(lobby, kinds, Server::config(dir)).await
    }

    /// Starts any game with `config`.
    pub async fn start_with(
        lobby: game_server_less::Lobby,
        kinds: impl Into<Kinds>,
        config: Config,
    ) -> Server {
        let running = tokio::time::timeout(
            WAIT,
            game_server_less::Server::new(config, lobby, kinds).start(),
        )
        .await
        .expect("the server starts")
        .expect("the server starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let http = format!("http://{}", running.bound().expect("a lobby").http);
        let rooms = running.rooms().expect("a lobby").clone();
        let broker = running.broker().expect("the embedded broker").clone();
        let done = tokio::spawn(running.serve(async move {
            let _ = stopped.await;
        }));
        Server {
            http,
            rooms,
            broker,
            stop: Some(stop),
            done,
        }
    }

    /// Shuts the server down as Ctrl-C would, and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.done)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }

    /// `GET path` (`/rooms`, say): the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        get_json(&format!("{}{path}", self.http)).await
    }

    /// `GET path`: the status code only.
    pub async fn get_status(&self, path: &str) -> u16 {
        let response = http()
            .get(format!("{}{path}", self.http))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    /// `POST /rooms`; returns the room id.
    pub async fn create_room(&self) -> String {
        create_room_at(&self.http).await
    }

    /// `POST /rooms`; returns the room id and its owner token.
    pub async fn create_owned_room(&self) -> (String, String) {
        let room = self.lobby().create_room(Some("e2e")).await.unwrap();
        (room.id, room.owner_token.expect("a new room's owner token"))
    }

    /// `POST /rooms/{id}/join` as `name`.
    pub async fn join(&self, room: &str, name: &str) -> Ticket {
        join_ticket(&self.http, room, name).await
    }

    /// The lobby's client.
    pub fn lobby(&self) -> LobbyClient {
        lobby(&self.http)
    }
}

/// The framework's client of the lobby at `url` (`http://HOST:PORT`).
pub fn lobby(url: &str) -> LobbyClient {
    LobbyClient::with_timeout(url, WAIT).unwrap()
}

/// `POST {lobby}/rooms` (`lobby` is `http://HOST:PORT`); returns the room id.
pub async fn create_room_at(url: &str) -> String {
    let room = lobby(url).create_room(Some("e2e")).await;
    room.unwrap_or_else(|e| panic!("create a room at {url}: {e}"))
        .id
}

/// `POST {lobby}/rooms/{id}/join` as `name`.
pub async fn join_ticket(url: &str, room: &str, name: &str) -> Ticket {
    let ticket = lobby(url).join(room, name, None).await;
    ticket.unwrap_or_else(|e| panic!("{name} joins {room} at {url}: {e}"))
}

/// `GET url`: the JSON answer.
pub async fn get_json(url: &str) -> Value {
    let response = http().get(url).send().await.unwrap();
    response.json().await.unwrap()
}

/// An HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// A player connected over STOMP with its ticket, listening to the room and to itself.
pub struct Player {
    /// The ticket it joined with.
    pub ticket: Ticket,
    /// Its connection.
    pub client: Client,
    /// The room topic.
    pub room: Subscription,
    /// Its own destination.
    pub private: Subscription,
    seq: u64,
}

impl Player {
    /// Joins `room` as `name` and connects over WebSocket (or TCP if `tcp`).
    pub async fn join(server: &Server, room: &str, name: &str, tcp: bool) -> Player {
        Player::join_at(&server.http, room, name, tcp).await
    }

    /// Joins `room` through the lobby at `lobby` (`http://HOST:PORT`) and connects to
    /// the broker its ticket names.
    pub async fn join_at(lobby: &str, room: &str, name: &str, tcp: bool) -> Player {
        let ticket = join_ticket(lobby, room, name).await;
        Player::connect(ticket, tcp).await
    }

    /// Plays with a ticket already in hand, over TCP.
    pub async fn join_with(ticket: Ticket) -> Player {
        Player::connect(ticket, true).await
    }

    async fn connect(ticket: Ticket, tcp: bool) -> Player {
        let url = if tcp { &ticket.tcp_url } else { &ticket.ws_url };
        let client = Client::connect(
            url,
            ConnectOptions::login(ticket.login.clone(), ticket.token.clone()),
        )
        .await
        .unwrap();
        let (room, private) = subscribe_both(&client, &ticket).await;
        Player {
            ticket,
            client,
            room,
            private,
            seq: 0,
        }
    }

    /// A second connection with this player's ticket, over TCP.
    pub async fn connect_again(&self) -> Client {
        let options = ConnectOptions::login(self.ticket.login.clone(), self.ticket.token.clone());
        Client::connect(&self.ticket.tcp_url, options)
            .await
            .unwrap()
    }

    /// Sends an input numbered with the next sequence number; returns the number.
    pub async fn send(&mut self, mut input: Value) -> u64 {
        self.seq += 1;
        input["seq"] = self.seq.into();
        self.send_raw(&input.to_string()).await;
        self.seq
    }

    /// The number for the next input, for bodies built by hand.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Sends a body as it is, with a receipt.
    pub async fn send_raw(&self, body: &str) {
        self.client
            .send(&self.ticket.inbox, body.to_owned())
            .await
            .unwrap();
    }

    /// The next room message whose `type` is `kind` (others are skipped).
    pub async fn next_on_room(&mut self, kind: &str) -> Value {
        next_of(&mut self.room, kind).await
    }

    /// The next message to this player alone whose `type` is `kind`.
    pub async fn next_private(&mut self, kind: &str) -> Value {
        next_of(&mut self.private, kind).await
    }
}

/// Parses a message body as JSON.
pub fn json_of(m: &Message) -> Value {
    serde_json::from_slice(m.body()).unwrap()
}

/// The next message on `sub` whose `type` is `kind` (others are skipped).
pub async fn next_of(sub: &mut Subscription, kind: &str) -> Value {
    loop {
        let m = json_of(
            &sub.recv_timeout(WAIT)
                .await
                .unwrap_or_else(|e| panic!("waiting for {kind}: {e}")),
        );
        if m["type"] == kind {
            return m;
        }
    }
}

/// Every process's log lines, in the order they arrived: (when, process index, line).
pub type Log = Arc<Mutex<Vec<(Instant, usize, String)>>>;

/// A process whose output goes to a shared log; killed when dropped.
pub struct Process {
    child: Child,
    /// It leads a process group of its own, killed with it.
    group: bool,
}

impl Process {
    /// Starts `program` with `args`; its output lines go to `log` as process `index`.
    pub fn spawn(program: &Path, args: &[String], index: usize, log: &Log) -> Process {
        let mut command = Command::new(program);
        command.args(args).env_remove("RUST_LOG");
        Process::spawn_command(command, false, index, log)
    }

    /// Starts `command`; its output lines go to `log` as process `index`. With `group`,
    /// it leads a process group that dies with it (for programs that start others).
    pub fn spawn_command(mut command: Command, group: bool, index: usize, log: &Log) -> Process {
        if group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    log.lock().unwrap().push((Instant::now(), index, line));
                }
            });
        }
        Process { child, group }
    }

    /// Sends `signal` (`-KILL`, `-STOP`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }
}

impl Process {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (kill -9) and waits until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A stopped process must go on to die.
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.group {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A game server binary as a process on loopback ports of its own, which a test can kill
/// with -9 and start again on the same ports and data directory.
pub struct Restartable {
    program: PathBuf,
    args: Vec<String>,
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    process: Option<Process>,
    /// Its output, every start's.
    pub log: Log,
    starts: usize,
}

impl Restartable {
    /// Starts `program` with its data in `dir`, a fixed token secret, and `extra` options.
    pub async fn start(program: PathBuf, dir: &Path, extra: &[&str]) -> Restartable {
        let (http_port, stomp_port) = (free_port(), free_port());
        let mut args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{http_port}"),
            "--stomp-listen",
            &format!("127.0.0.1:{stomp_port}"),
            "--data-dir",
            dir.to_str().unwrap(),
            "--secret",
            "restartable-secret",
            "--log",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Restartable {
            program,
            args,
            http: format!("http://127.0.0.1:{http_port}"),
            process: None,
            log: Log::default(),
            starts: 0,
        };
        server.restart().await;
        server
    }

    /// Kills the process with SIGKILL if it runs, starts it again, and waits until its
    /// lobby answers.
    pub async fn restart(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
        self.process = Some(Process::spawn(
            &self.program,
            &self.args,
            self.starts,
            &self.log,
        ));
        self.starts += 1;
        let started = Instant::now();
        while http()
            .get(format!("{}/health", self.http))
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < WAIT,
                "the server did not start: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("it runs").pid()
    }
}

/// Opens a STOMP connection over TCP with `ticket`'s login and token.
pub async fn connect_ticket(ticket: &Ticket) -> game_server_less::stomp::Result<Client> {
    let options = ConnectOptions::login(ticket.login.clone(), ticket.token.clone());
    Client::connect(&ticket.tcp_url, options).await
}

/// A spectator of `room` through the lobby at `lobby`, watching over TCP: its ticket,
/// its connection, and its subscriptions to the room's topic and then (in that order,
/// which is what makes the room send its snapshot) to its own destination.
pub async fn spectator(lobby: &str, room: &str) -> (Ticket, Client, Subscription, Subscription) {
    let ticket: Ticket = self::lobby(lobby)
        .post(&format!("/rooms/{room}/spectate"), None, &json!({}))
        .await
        .unwrap();
    let client = connect_ticket(&ticket).await.unwrap();
    let (topic, private) = subscribe_both(&client, &ticket).await;
    (ticket, client, topic, private)
}

/// Subscribes `client` to `ticket`'s room topic, then to its own destination (in that
/// order: a spectator's snapshot comes once the second is there).
async fn subscribe_both(client: &Client, ticket: &Ticket) -> (Subscription, Subscription) {
    let topic = client
        .subscribe(&ticket.topic, SubscribeOptions::default())
        .await
        .unwrap();
    let private = client
        .subscribe(&ticket.private, SubscribeOptions::default())
        .await
        .unwrap();
    (topic, private)
}

/// Asks a room of the ledger game (`tests/bin/ledger.rs`) for every input it applied,
/// with `ticket`, as input number `seq`.
pub async fn ledger_report(ticket: &Ticket, seq: u64) -> Vec<(String, u64)> {
    let client = connect_ticket(ticket).await.unwrap();
    let mut private = client
        .subscribe(&ticket.private, SubscribeOptions::default())
        .await
        .unwrap();
    let input = json!({ "type": "report", "seq": seq }).to_string();
    client.send(&ticket.inbox, input).await.unwrap();
    loop {
        let m = json_of(&private.recv_timeout(WAIT).await.unwrap());
        if m["type"] == "report" {
            return serde_json::from_value(m["applied"].clone()).unwrap();
        }
    }
}

/// The game server's binary, as `cargo build --workspace` (which `tests/run` does
/// first) left it.
pub fn server_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug/game-server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// The client binary, refused if it is older than its sources (it would test old code).
pub fn client_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug/game-client");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build -p game-client` first",
                bin.display()
            )
        });
    // What the client is built from: its own crate, the client side, STOMP, the protocol.
    for dir in ["game-client/src", "client/src", "stomp/src", "protocol/src"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let modified = entry.unwrap().metadata().unwrap().modified().unwrap();
            assert!(
                modified <= built,
                "{} is older than {dir}: run `cargo build -p game-client` first",
                bin.display()
            );
        }
    }
    bin
}

/// A tmux server of its own, so the test never touches a user's sessions. Each client
/// runs in a session named after its player.
pub struct Tmux {
    /// The tmux server's socket name (`-L`).
    pub socket: String,
}

impl Tmux {
    /// Runs tmux with `args` on this server; answers what it printed.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (apt-get install tmux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the client as `name` in an 80×24 session of that name, joining `room`.
    pub fn client(&self, dir: &Path, server: &Server, name: &str, room: &str) {
        // After the client, the shell says how it exited, on whatever screen the client
        // left. Its player keys go to the test's own config directory.
        let command = format!(
            "GSL_CONFIG_DIR={} {} --server {} --name {name} --room {room}; echo client-exited-$?; sleep 60",
            dir.join(format!("client-config-{name}")).display(),
            client_binary().display(),
            server.http
        );
        let args = ["new-session", "-d", "-s", name, "-x", "80", "-y", "24"];
        self.run(&[&args[..], &[command.as_str()]].concat());
    }

    /// Sends `key` (tmux key names: `Right`, `q`) to `session`.
    pub fn keys(&self, session: &str, key: &str) {
        self.run(&["send-keys", "-t", session, key]);
    }

    /// What `session` shows.
    pub fn screen(&self, session: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", session])
    }

    /// Waits until `ok` holds for `session`'s screen; returns the screen then.
    pub fn wait_for(&self, session: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(session);
            if ok(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "waited 15 s for {what}; {session}'s screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}
