//! Cluster mode end to end: a RabbitMQ node of its own (`scripts/rabbitmq-node`, with the
//! HTTP auth backend pointing at the first lobby), PostgreSQL (a fresh database per
//! test), and real `game-server` processes as lobbies and workers, killed for real.
//!
//! The node's auth backend asks the lobby at 127.0.0.1:18080, so these tests take turns.
//! `tests/run` starts the node and passes its URL in `GSL_TEST_BROKER`; without it, the
//! first test starts the node itself.

use e2e_tests::{create_room_at, get_json, http, join_ticket, json_of, Log, Process, WAIT};
use game_server_less::proto::Ticket;
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions, Subscription};
use game_server_less::store::Store;
use game_server_less::token::Signer;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the test node's auth backend asks: the first lobby of every test listens here.
const AUTH_LOBBY: &str = "127.0.0.1:18080";
const SECRET: &str = "cluster-test-secret";
const OPERATOR: &str = "cluster-test-operator";
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The `game-server` binary next to this test's (`tests/run` builds the workspace first).
fn game_server_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("game-server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p game-server` first (tests/run does)",
        bin.display()
    );
    bin
}

/// The `--broker` URL of the test node, starting the node if need be.
fn broker_url() -> String {
    if let Ok(url) = std::env::var("GSL_TEST_BROKER") {
        return url;
    }
    let script = repo().join("scripts/rabbitmq-node");
    let up = Command::new(&script)
        .args(["url", "--lobby", &format!("http://{AUTH_LOBBY}")])
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&up.stdout).trim().to_owned();
    if up.status.success() && std::net::TcpStream::connect("127.0.0.1:5682").is_ok() {
        return url;
    }
    eprintln!("starting a RabbitMQ node for the cluster tests (scripts/rabbitmq-node)");
    let started = Command::new(&script)
        .args(["start", "--lobby", &format!("http://{AUTH_LOBBY}")])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "scripts/rabbitmq-node start failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    String::from_utf8_lossy(&started.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

fn psql(sql: &str) {
    psql_in("test", sql);
}

/// Runs `sql` in the PostgreSQL database `db`.
fn psql_in(db: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qc", sql])
        .output()
        .expect("psql runs (PostgreSQL's client)");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL database of the test's own, dropped at the end.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn new(tag: &str) -> Database {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("gsl_{tag}_{nanos}");
        psql(&format!("CREATE DATABASE {name}"));
        Database {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Lobbies and workers on one RabbitMQ and one PostgreSQL database.
struct Cluster {
    broker: String,
    db: Database,
    lobbies: Vec<String>,
    processes: Vec<Process>,
    log: Log,
    /// Environment variables every process gets.
    env: Vec<(String, String)>,
}

impl Cluster {
    async fn start(tag: &str, lobbies: usize, workers: usize) -> Cluster {
        Cluster::start_with_env(tag, lobbies, workers, Vec::new()).await
    }

    /// [`Cluster::start`], every process with `env` set too.
    async fn start_with_env(
        tag: &str,
        lobbies: usize,
        workers: usize,
        env: Vec<(String, String)>,
    ) -> Cluster {
        Cluster::start_on(broker_url(), tag, lobbies, workers, env).await
    }

    /// [`Cluster::start_with_env`] on the RabbitMQ of `broker`.
    async fn start_on(
        broker: String,
        tag: &str,
        lobbies: usize,
        workers: usize,
        env: Vec<(String, String)>,
    ) -> Cluster {
        let mut cluster = Cluster {
            broker,
            db: Database::new(tag),
            lobbies: Vec::new(),
            processes: Vec::new(),
            log: Log::default(),
            env,
        };
        for i in 0..lobbies {
            let listen = if i == 0 {
                AUTH_LOBBY.to_owned()
            } else {
                let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                free.local_addr().unwrap().to_string()
            };
            cluster.spawn("lobby", &["--listen", &listen]);
            cluster.lobbies.push(format!("http://{listen}"));
        }
        for _ in 0..workers {
            cluster.add_worker();
        }
        for lobby in cluster.lobbies.clone() {
            let started = Instant::now();
            while http().get(format!("{lobby}/health")).send().await.is_err() {
                assert!(
                    started.elapsed() < WAIT,
                    "the lobby at {lobby} did not start:\n{}",
                    cluster.dump()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A cluster lobby has no room workers and no broker of its own to count:
            // it leaves those counts out rather than answer null.
            let health = get_json(&format!("{lobby}/health")).await;
            let fields = health.as_object().expect("health is an object");
            assert!(fields.values().all(|v| !v.is_null()), "{health}");
            assert_eq!(health["status"], "ok");
        }
        cluster
    }

    fn spawn(&mut self, role: &str, extra: &[&str]) -> usize {
        let mut args: Vec<String> = [
            "--role",
            role,
            "--broker",
            &self.broker,
            "--store",
            &self.db.url,
            "--secret",
            SECRET,
            "--operator-secret",
            OPERATOR,
            "--log",
            "info,sqlx=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let index = self.processes.len();
        let mut command = Command::new(game_server_bin());
        command
            .args(&args)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.processes
            .push(Process::spawn_command(command, false, index, &self.log));
        index
    }

    fn add_worker(&mut self) -> usize {
        self.spawn("worker", &[])
    }

    /// The process that most recently said it runs `room`.
    fn active_worker(&self, room: &str) -> Option<usize> {
        let needle = format!("room={room}");
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, _, line)| {
                line.contains("active: this worker runs the room") && line.contains(&needle)
            })
            .map(|(_, index, _)| *index)
    }

    /// Waits until a worker other than `not` runs `room`; returns it.
    async fn wait_active(&self, room: &str, not: Option<usize>) -> usize {
        let started = Instant::now();
        loop {
            match self.active_worker(room) {
                Some(w) if Some(w) != not => return w,
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no worker took room {room} over:\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How often a worker's room failed and was restarted from its checkpoint so far.
    fn worker_failures(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, line)| line.contains("room worker failed"))
            .count()
    }

    fn dump(&self) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(80);
        log.iter()
            .skip(skip)
            .map(|(_, i, l)| format!("[{i}] {l}\n"))
            .collect()
    }

    /// Ends every live room through the lobby (which deletes the inboxes).
    async fn end_rooms(&self) {
        let rooms = get_json(&format!("{}/rooms", self.lobbies[0])).await;
        for room in rooms.as_array().unwrap() {
            let id = room["id"].as_str().unwrap();
            let _ = http()
                .delete(format!("{}/rooms/{id}", self.lobbies[0]))
                .bearer_auth(OPERATOR)
                .send()
                .await;
        }
        let store = Store::open(&self.db.url).await.unwrap();
        let started = Instant::now();
        while !store.room_workers().await.unwrap().is_empty() && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A player of the cluster: its ticket's connection, sending with receipts.
struct Player {
    name: String,
    inbox: String,
    client: Client,
    room: Subscription,
}

async fn player(lobby: &str, room: &str, name: &str, tcp: bool) -> Player {
    let ticket = join_ticket(lobby, room, name).await;
    let url = if tcp { &ticket.tcp_url } else { &ticket.ws_url };
    let client = Client::connect(url, ConnectOptions::login(ticket.login, ticket.token))
        .await
        .unwrap_or_else(|e| panic!("{name} connects to RabbitMQ at {url}: {e}"));
    let room = client
        .subscribe(&ticket.topic, SubscribeOptions::default())
        .await
        .unwrap();
    Player {
        name: name.to_owned(),
        inbox: ticket.inbox,
        client,
        room,
    }
}

/// What one player saw of the room: each output with its arrival time.
type Seen = Vec<(Instant, Value)>;

fn collect(
    mut room: Subscription,
    until: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<std::sync::Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(std::sync::Mutex::new(Seen::new()));
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        while !until.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(m) = room.recv_timeout(Duration::from_millis(100)).await {
                sink.lock().unwrap().push((Instant::now(), json_of(&m)));
            }
        }
    });
    (seen, task)
}

/// How many chat inputs `seen` shows applied (distinct input numbers per player).
fn chats_applied(seen: &Seen) -> usize {
    let keys: HashSet<(String, u64)> = seen
        .iter()
        .filter(|(_, m)| m["type"] == "chat")
        .filter_map(|(_, m)| {
            Some((
                m["input_from"].as_str()?.to_owned(),
                m["input_seq"].as_u64()?,
            ))
        })
        .collect();
    keys.len()
}

/// Sends `count` chat inputs, one every `pace`, each awaiting the broker's receipt;
/// returns the input numbers the broker accepted.
fn chat(
    client: Client,
    inbox: String,
    name: String,
    count: u64,
    pace: Duration,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut accepted = Vec::new();
        for seq in 1..=count {
            let body = json!({ "type": "chat", "text": format!("{name}-{seq}"), "seq": seq });
            if client.send(&inbox, body.to_string()).await.is_ok() {
                accepted.push(seq);
            }
            tokio::time::sleep(pace).await;
        }
        accepted
    })
}

/// Checks one player's view: room seqs without gaps, a repeated seq always the same
/// message. Returns the distinct outputs by seq, with when each first arrived.
fn distinct(seen: &Seen) -> BTreeMap<u64, (Instant, Value)> {
    let mut outputs: BTreeMap<u64, (Instant, Value)> = BTreeMap::new();
    for (at, m) in seen {
        let Some(seq) = m["seq"].as_u64() else {
            continue;
        };
        match outputs.get(&seq) {
            Some((_, first)) => assert_eq!(first, m, "room seq {seq} named two different messages"),
            None => {
                outputs.insert(seq, (*at, m.clone()));
            }
        }
    }
    let seqs: Vec<u64> = outputs.keys().copied().collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap in the room's output"
    );
    outputs
}

/// The longest wait between two new outputs within `window` after `from`.
fn pause_after(
    outputs: &BTreeMap<u64, (Instant, Value)>,
    from: Instant,
    window: Duration,
) -> Duration {
    longest_gap(outputs.values().map(|(at, _)| *at), from, window)
}

/// The longest wait between two of `arrivals` within `window` after `from` (from `from`
/// to the first counts).
fn longest_gap(
    arrivals: impl Iterator<Item = Instant>,
    from: Instant,
    window: Duration,
) -> Duration {
    let mut arrivals: Vec<Instant> = arrivals
        .filter(|at| *at >= from && *at <= from + window)
        .collect();
    arrivals.sort();
    let mut longest = arrivals.first().map_or(window, |first| *first - from);
    for pair in arrivals.windows(2) {
        longest = longest.max(pair[1] - pair[0]);
    }
    longest
}

/// Each chat input that `outputs` (distinct, by room seq) show applied, (player, input
/// seq), with the room seqs of its outputs: more than one is an input applied twice.
fn applied_chats(
    outputs: &BTreeMap<u64, (Instant, Value)>,
) -> HashMap<(String, u64), HashSet<u64>> {
    let mut applied: HashMap<(String, u64), HashSet<u64>> = HashMap::new();
    for (seq, (_, m)) in outputs {
        if m["type"] == "chat" {
            let key = (
                m["input_from"].as_str().unwrap().to_owned(),
                m["input_seq"].as_u64().unwrap(),
            );
            applied.entry(key).or_default().insert(*seq);
        }
    }
    applied
}

/// What the players saw of their inputs, once every sender is done.
struct Tally {
    /// Inputs the broker receipted.
    total: usize,
    /// Each player's distinct outputs by room seq (checked to agree where they overlap).
    views: Vec<BTreeMap<u64, (Instant, Value)>>,
    /// Each applied chat input, (player, input seq), with the room seqs of its outputs.
    applied: HashMap<(String, u64), HashSet<u64>>,
    /// Receipted inputs never applied.
    lost: Vec<(String, u64)>,
    /// Inputs applied more than once.
    doubled: usize,
    /// How long the tail took to arrive.
    waited: Duration,
}

impl Tally {
    /// Every receipted input applied once, and nothing applied that was not receipted.
    fn assert_exactly_once(&self, cluster: &Cluster) {
        if !self.lost.is_empty() {
            let mut lost = self.lost.clone();
            lost.sort();
            panic!(
                "{} receipted inputs never applied: {:?} … {:?}\nthe cluster's last words:\n{}",
                lost.len(),
                &lost[..lost.len().min(5)],
                lost.last(),
                cluster.dump()
            );
        }
        assert_eq!(self.doubled, 0, "inputs applied twice");
        assert_eq!(
            self.applied.len(),
            self.total,
            "every applied input was receipted"
        );
    }
}

/// Players chatting in a room: their senders and what each saw.
struct Chatters {
    senders: Vec<tokio::task::JoinHandle<Vec<u64>>>,
    collectors: Vec<(Arc<std::sync::Mutex<Seen>>, tokio::task::JoinHandle<()>)>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

/// `names` join `room` (over TCP and WebSocket in turn) and each sends `count` chat
/// inputs, one every `pace`.
async fn chatters(lobby: &str, room: &str, names: &[&str], count: u64, pace: Duration) -> Chatters {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut senders, mut collectors) = (Vec::new(), Vec::new());
    for (i, name) in names.iter().enumerate() {
        let p = player(lobby, room, name, i % 2 == 0).await;
        collectors.push(collect(p.room, done.clone()));
        senders.push(chat(p.client, p.inbox, p.name, count, pace));
    }
    Chatters {
        senders,
        collectors,
        done,
    }
}

async fn tally(names: &[&str], chatters: Chatters) -> Tally {
    let Chatters {
        senders,
        collectors,
        done,
    } = chatters;
    let mut accepted: HashMap<String, Vec<u64>> = HashMap::new();
    for (name, sender) in names.iter().zip(senders) {
        accepted.insert(name.to_string(), sender.await.unwrap());
    }
    // Let the last outputs arrive: the worker that took over last may still be working
    // through what queued up while it stood by.
    let total: usize = accepted.values().map(Vec::len).sum();
    let started = Instant::now();
    while chats_applied(&collectors[0].0.lock().unwrap()) < total
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await; // anything doubled arrives too
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut views = Vec::new();
    for (seen, task) in collectors {
        task.await.unwrap();
        views.push(distinct(&seen.lock().unwrap()));
    }
    for view in &views[1..] {
        let common: Vec<&u64> = view.keys().filter(|s| views[0].contains_key(s)).collect();
        for seq in common {
            assert_eq!(
                view[seq].1, views[0][seq].1,
                "players saw different messages as seq {seq}"
            );
        }
    }
    let applied = applied_chats(&views[0]);
    let lost: Vec<(String, u64)> = accepted
        .iter()
        .flat_map(|(name, seqs)| seqs.iter().map(move |s| (name.clone(), *s)))
        .filter(|key| !applied.contains_key(key))
        .collect();
    let doubled = applied.values().filter(|seqs| seqs.len() > 1).count();
    Tally {
        total,
        views,
        applied,
        lost,
        doubled,
        waited,
    }
}

#[tokio::test]
async fn a_killed_or_hung_worker_process_is_replaced_and_no_input_is_lost_or_doubled() {
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::start("failover", 1, 4).await;
    let lobby = cluster.lobbies[0].clone();
    let room = create_room_at(&lobby).await;
    let mut active = cluster.wait_active(&room, None).await;
    assert_eq!(
        inbox_consumer_protocol(&cluster.broker, &room).await,
        "AMQP 0-9-1",
        "workers speak AMQP to RabbitMQ when they need no TLS"
    );

    let names = ["ann", "bob", "cyd"];
    let chatters = chatters(&lobby, &room, &names, 500, Duration::from_millis(12)).await;

    // Mid-stream: kill -9 the worker that runs the room, then its replacement; then hang
    // the next one with SIGSTOP.
    let mut events = Vec::new();
    for (what, signal) in [
        ("kill -9", "-KILL"),
        ("kill -9 of the replacement", "-KILL"),
        ("SIGSTOP", "-STOP"),
    ] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at = Instant::now();
        cluster.processes[active].signal(signal);
        let next = cluster.wait_active(&room, Some(active)).await;
        events.push((what, at, at.elapsed()));
        active = next;
    }
    let tally = tally(&names, chatters).await;
    let outputs = &tally.views[0];
    println!(
        "failover: accepted {}, applied {}, lost {}, doubled {} (3 players, 500 inputs each, one every 12 ms; waited {:?} for the tail)",
        tally.total,
        tally.applied.len(),
        tally.lost.len(),
        tally.doubled,
        tally.waited,
    );
    for (i, (what, at, took)) in events.iter().enumerate() {
        // Up to the next event, so that one event's pause is not counted for another.
        let until = events
            .get(i + 1)
            .map_or(Duration::from_secs(5), |next| next.1 - *at);
        println!(
            "  {what}: another worker took the room over after {took:?}; the players' longest pause {:?}",
            pause_after(outputs, *at, until)
        );
    }
    tally.assert_exactly_once(&cluster);
    cluster.end_rooms().await;
    the_record_holds_each_input_once_and_replays(&cluster, &room, tally.applied.len()).await;
}

/// The match record of `room`, written by workers that were killed and hung, holds each
/// of the `applied` player inputs once (a redelivered one the checkpoint held is there
/// as a repeat, which made nothing), and the deploy gate runs it again to the outputs
/// the players saw.
async fn the_record_holds_each_input_once_and_replays(
    cluster: &Cluster,
    room: &str,
    applied: usize,
) {
    use game_server_less::replay::{check, CheckOptions};
    use game_server_less::store::MatchViewer;
    use game_server_less::worker::{record::entries, Verdict};
    let store = Store::open(&cluster.db.url).await.unwrap();
    let operator = MatchViewer {
        operator: true,
        player: None,
    };
    let (summary, segments) = store.match_record(room, &operator).await.unwrap().unwrap();
    let entries: Vec<_> = segments
        .iter()
        .flat_map(|s| entries(&s.entries).unwrap())
        .collect();
    let made_outputs = entries
        .iter()
        .filter(|e| !e.u.starts_with('$') && !e.o.is_empty())
        .count();
    assert_eq!(made_outputs, applied, "each applied input recorded once");
    let kinds = game_server_less::Kinds::from(game_server::msg());
    let policies = kinds
        .policies(&game_server_less::Config::default().policy_defaults(), &[])
        .unwrap();
    let options = CheckOptions {
        matches: 5,
        ..CheckOptions::default()
    };
    let report = check(&store, &kinds, &policies, &options).await.unwrap();
    print!("{}", report.text());
    let ours = report.matches.iter().find(|m| m.id == room).unwrap();
    assert!(
        matches!(ours.verdict, Verdict::Same { entries: n } if n as usize == entries.len()),
        "{:?}",
        ours.verdict
    );
    println!(
        "record: {} segments, {} entries ({applied} inputs applied), {} bytes",
        segments.len(),
        entries.len(),
        summary.bytes
    );
}

#[tokio::test]
async fn rabbitmq_itself_keeps_players_to_their_own_room() {
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::start("isolation", 1, 1).await;
    let lobby = cluster.lobbies[0].clone();
    let (a, b) = (create_room_at(&lobby).await, create_room_at(&lobby).await);
    let ann = join_ticket(&lobby, &a, "ann").await;
    let cyd = join_ticket(&lobby, &a, "cyd").await;
    let bob = join_ticket(&lobby, &b, "bob").await;
    let connect = |login: &str, token: &str| {
        let (url, options) = (ann.tcp_url.clone(), ConnectOptions::login(login, token));
        async move { Client::connect(&url, options).await }
    };

    // What ann may do works...
    let me = connect(&ann.login, &ann.token).await.unwrap();
    let mut topic = me
        .subscribe(&ann.topic, SubscribeOptions::default())
        .await
        .unwrap();
    me.subscribe(&ann.private, SubscribeOptions::default())
        .await
        .unwrap();
    me.send(&ann.inbox, r#"{"type":"chat","text":"hi","seq":1}"#)
        .await
        .unwrap();
    let said = loop {
        let m = json_of(&topic.recv_timeout(WAIT).await.unwrap());
        if m["type"] == "chat" {
            break m;
        }
    };
    assert_eq!(said["input_from"], "ann");

    // ...and RabbitMQ refuses the rest, each with an ERROR.
    let sends = [
        ("another room's inbox", bob.inbox.clone()),
        (
            "her room's inbox as another player",
            ann.inbox.replace(".ann", ".cyd"),
        ),
        (
            "her room's inbox as the lobby",
            ann.inbox.replace(".ann", ".$lobby"),
        ),
        ("the room topic (forged output)", ann.topic.clone()),
        ("the inbox queue by name", format!("/queue/gsl.room.{a}")),
        (
            "the inbox queue through /amq/queue",
            format!("/amq/queue/gsl.room.{a}"),
        ),
    ];
    for (what, destination) in sends {
        let client = connect(&ann.login, &ann.token).await.unwrap();
        let refused = client
            .send(&destination, r#"{"type":"chat","text":"x","seq":2}"#)
            .await;
        println!("ann SENDs to {what} ({destination}): {refused:?}");
        assert!(refused.is_err(), "RabbitMQ let ann send to {what}");
    }
    let subscriptions = [
        ("another room's topic", bob.topic.clone()),
        ("another player's destination", cyd.private.clone()),
        ("her room's inbox", format!("/amq/queue/gsl.room.{a}")),
        ("every room's topic", "/topic/room.*".to_owned()),
    ];
    for (what, destination) in subscriptions {
        let client = connect(&ann.login, &ann.token).await.unwrap();
        let refused = client
            .subscribe(&destination, SubscribeOptions::default())
            .await;
        println!(
            "ann SUBSCRIBEs to {what} ({destination}): {:?}",
            refused.as_ref().err()
        );
        assert!(refused.is_err(), "RabbitMQ let ann subscribe to {what}");
    }
    let ann_join = ann.token.split('.').nth(3).unwrap();
    let expired =
        Signer::new(SECRET.as_bytes().to_vec()).issue(&a, "ann", ann_join, Duration::ZERO);
    // A player who left: its token is revoked.
    e2e_tests::lobby(&lobby)
        .leave(&a, &cyd.token)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut forged = ann.token.clone();
    forged.replace_range(forged.len() - 4.., "0000");
    let logins = [
        ("a forged token", ann.login.clone(), forged),
        ("an expired token", ann.login.clone(), expired),
        ("bob's token as ann", ann.login.clone(), bob.token.clone()),
        (
            "ann's token in room B",
            format!("ann@{b}"),
            ann.token.clone(),
        ),
    ];
    for (what, login, token) in logins {
        let refused = connect(&login, &token).await;
        println!("CONNECT with {what}: {:?}", refused.as_ref().err());
        assert!(refused.is_err(), "RabbitMQ let in {what}");
    }
    cluster.end_rooms().await;
}

#[tokio::test]
async fn two_lobbies_and_two_workers_share_twenty_rooms() {
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::start("scale", 2, 2).await;
    const ROOMS: usize = 20;
    const PLAYERS: usize = 3;
    const INPUTS: u64 = 20;
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        rooms.push(create_room_at(&cluster.lobbies[i % 2]).await);
    }
    // Each player chats and times each input until its own chat comes back.
    let mut tasks = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for p in 0..PLAYERS {
            let lobby = cluster.lobbies[(r + p) % 2].clone();
            let room = room.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("p{p}-{r}");
                let mut me = player(&lobby, &room, &name, p % 2 == 0).await;
                let mut rtts = Vec::new();
                for seq in 1..=INPUTS {
                    let sent = Instant::now();
                    let body =
                        json!({ "type": "chat", "text": format!("{name}-{seq}"), "seq": seq });
                    me.client.send(&me.inbox, body.to_string()).await.unwrap();
                    loop {
                        let m = json_of(
                            &me.room
                                .recv_timeout(WAIT)
                                .await
                                .expect("my chat comes back"),
                        );
                        if m["input_from"] == name.as_str() && m["input_seq"] == seq {
                            break;
                        }
                    }
                    rtts.push(sent.elapsed());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                rtts
            }));
        }
    }
    let mut rtts = Vec::new();
    for task in tasks {
        rtts.extend(task.await.unwrap());
    }
    rtts.sort();
    let store = Store::open(&cluster.db.url).await.unwrap();
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for (_, worker) in store.room_workers().await.unwrap() {
        *per_worker
            .entry(worker.unwrap_or_else(|| "none".into()))
            .or_default() += 1;
    }
    let pct = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
    println!(
        "scale: {ROOMS} rooms, {} players, {} inputs; rooms per worker {per_worker:?}; round trip p50 {:?} p99 {:?} max {:?}",
        ROOMS * PLAYERS,
        rtts.len(),
        pct(0.5),
        pct(0.99),
        rtts.last().unwrap()
    );
    assert_eq!(rtts.len(), ROOMS * PLAYERS * INPUTS as usize);
    assert!(!per_worker.contains_key("none"), "every room has a worker");
    assert_eq!(
        per_worker.len(),
        2,
        "both workers run rooms: {per_worker:?}"
    );
    assert!(
        per_worker.values().all(|&n| n * 10 <= ROOMS * 6),
        "no worker holds more than 60% of the rooms: {per_worker:?}"
    );
    cluster.end_rooms().await;
}

#[tokio::test]
async fn portals_in_rooms_of_two_workers_lead_to_one_caves_room() {
    let _turn = SERIAL.lock().await;
    // Small maps: a meadow player starts next to the portal.
    let maps = e2e_tests::temp_dir("cluster-maps");
    std::fs::write(maps.join("meadow.txt"), "#####\n#SO.#\n#####\n").unwrap();
    std::fs::write(maps.join("caves.txt"), "#######\n#S.S.O#\n#######\n").unwrap();
    let env = vec![("GSL_MAPS".into(), maps.display().to_string())];
    let cluster = Cluster::start_with_env("transfer", 2, 2, env).await;
    let (one, two) = (&cluster.lobbies[0], &cluster.lobbies[1]);
    let (a, b) = (create_room_at(one).await, create_room_at(two).await);
    let mut ann = e2e_tests::Player::join_at(one, &a, "ann", true).await;
    let mut bob = e2e_tests::Player::join_at(two, &b, "bob", true).await;
    let (wa, wb) = (
        cluster.wait_active(&a, None).await,
        cluster.wait_active(&b, None).await,
    );

    // Both step into their portals at once: each room's worker moves its player.
    let step = json!({ "type": "move", "dx": 1, "dy": 0 });
    futures_util::future::join(ann.send(step.clone()), bob.send(step)).await;
    let (to_ann, to_bob) = futures_util::future::join(
        ann.next_private("transferred"),
        bob.next_private("transferred"),
    )
    .await;
    let ticket = |m: &Value| -> Ticket { serde_json::from_value(m["ticket"].clone()).unwrap() };
    let (ann_there, bob_there) = (ticket(&to_ann), ticket(&to_bob));
    println!(
        "transfer: rooms of workers {wa} and {wb}; both to room {}",
        ann_there.room
    );
    assert_eq!(ann_there.room, bob_there.room, "one caves room");
    let store = Store::open(&cluster.db.url).await.unwrap();
    let live = store.live_rooms().await.unwrap();
    let caves: Vec<_> = live.iter().filter(|r| r.name == "caves").collect();
    assert_eq!(caves.len(), 1, "{live:?}");

    // The tickets the workers signed are good with RabbitMQ; both arrive, with their HP.
    let mut there = e2e_tests::Player::join_with(ann_there).await;
    let _bob = e2e_tests::Player::join_with(bob_there).await;
    let started = Instant::now();
    let world = loop {
        there.send(json!({ "type": "look" })).await;
        let world = there.next_private("welcome").await;
        if world["players"].get("bob").is_some() || started.elapsed() > WAIT {
            break world;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(world["zone"], "caves", "{world}");
    assert_eq!(
        (
            &world["players"]["ann"]["hp"],
            &world["players"]["bob"]["hp"]
        ),
        (&json!(10), &json!(10)),
        "{world}"
    );
    assert!(store.players(&a).await.unwrap().is_empty(), "ann left");
    assert!(store.players(&b).await.unwrap().is_empty(), "bob left");
    cluster.end_rooms().await;
}

/// `cargo lambda watch`, the Lambda Runtime API emulator, serving the game server's
/// binaries as functions (`game-server`, version 1, and `game-server-v2`, version 2) on
/// the cluster's RabbitMQ and database. Returns its address.
async fn start_emulator(cluster: &mut Cluster, lease_secs: u64) -> String {
    let venv = repo().join("tests/interop/.venv/bin/cargo-lambda");
    let program = std::env::var("GSL_CARGO_LAMBDA").unwrap_or_else(|_| match venv.exists() {
        true => venv.display().to_string(),
        false => "cargo-lambda".into(),
    });
    let installed = Command::new(&program).arg("--help").output().is_ok();
    assert!(
        installed,
        "{program} is missing: tests/run installs it in tests/interop/.venv (pip install cargo-lambda==1.9.2); or point GSL_CARGO_LAMBDA at it"
    );
    let port = e2e_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(&program);
    command
        .current_dir(repo())
        .args(["lambda", "watch", "--ignore-changes", "--concurrency", "8"])
        .args([
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
        ])
        .args(["-F", "game-server/lambda"])
        // Its own target directory: this test's cargo holds the lock of the usual one.
        // (Not --target-dir: cargo-lambda 1.9.2 passes that to `cargo metadata` too.)
        .env("CARGO_TARGET_DIR", repo().join("target/lambda-watch"))
        // Workers reach RabbitMQ over TLS (its certificate is signed by the node's own
        // CA); players as in cluster mode.
        .env("GSL_BROKER", tls_broker(&cluster.broker))
        .env("GSL_TLS_CA", node_ca())
        .env("GSL_STORE", &cluster.db.url)
        .env("GSL_SECRET", SECRET)
        .env("GSL_OPERATOR_SECRET", OPERATOR)
        .env("GSL_LAMBDA_ENDPOINT", &url)
        .env("GSL_LAMBDA_LEASE_SECS", lease_secs.to_string())
        .env("GSL_LAMBDA_EMPTY_SECS", "2")
        .env("RUST_LOG", "info,sqlx=warn");
    let index = cluster.processes.len();
    cluster
        .processes
        .push(Process::spawn_command(command, true, index, &cluster.log));
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cargo lambda watch did not listen:\n{}",
            cluster.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    url
}

/// The node's STOMP over TLS port (`scripts/rabbitmq-node`: its STOMP port + 1).
fn stomp_tls_port(broker: &str) -> u16 {
    let stomp: u16 = broker
        .split("stomp_port=")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    stomp + 1
}

/// The `--broker` URL with workers on STOMP over TLS.
fn tls_broker(broker: &str) -> String {
    format!("{broker}&stomp_tls_port={}", stomp_tls_port(broker))
}

/// The CA that signed the test node's TLS certificate.
fn node_ca() -> String {
    let out = Command::new(repo().join("scripts/rabbitmq-node"))
        .arg("ca")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/rabbitmq-node ca: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Invokes `function` through the emulator's Invoke API and answers what it returned.
async fn invoke(emulator: &str, function: &str, event: Value) -> Value {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(format!(
            "{emulator}/2015-03-31/functions/{function}/invocations"
        ))
        .json(&event)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

/// Sends chat input `seq` as `p` and waits up to `wait` until the room applies it.
async fn chat_applied(p: &mut Player, seq: u64, wait: Duration) -> Result<(), String> {
    let body = json!({ "type": "chat", "text": format!("{}-{seq}", p.name), "seq": seq });
    p.client
        .send(&p.inbox, body.to_string())
        .await
        .map_err(|e| e.to_string())?;
    wait_applied(p, seq, wait).await
}

/// Waits up to `wait` until the room applies `p`'s input `seq`.
async fn wait_applied(p: &mut Player, seq: u64, wait: Duration) -> Result<(), String> {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let m = json_of(&p.room.recv_timeout(left).await.map_err(|e| e.to_string())?);
        if m["input_from"] == p.name.as_str() && m["input_seq"] == seq {
            return Ok(());
        }
    }
}

/// The function version a room is pinned to, and the worker that last ran it.
async fn pinned(store: &Store, room: &str) -> (Option<String>, Option<String>) {
    let worker = store
        .room_workers()
        .await
        .unwrap()
        .into_iter()
        .find(|(r, _)| r == room)
        .and_then(|(_, w)| w);
    (store.code_version(room).await.unwrap(), worker)
}

#[tokio::test]
async fn on_lambda_rooms_hand_over_between_invocations_and_keep_their_version() {
    let _turn = SERIAL.lock().await;
    // A plain lobby at the auth backend's address checks players' tickets for RabbitMQ;
    // every room is created and joined through the Lambda functions.
    let mut cluster = Cluster::start("lambda", 1, 0).await;
    let emulator = start_emulator(&mut cluster, 1).await;
    let v1 = format!("{emulator}/lambda-url/game-server");
    let v2 = format!("{emulator}/lambda-url/game-server-v2");
    let store = Store::open(&cluster.db.url).await.unwrap();

    // The first request to each function builds and starts it.
    for lobby in [&v1, &v2] {
        let started = Instant::now();
        loop {
            match http().get(format!("{lobby}/health")).send().await {
                Ok(r) if r.status().is_success() => break,
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{lobby} did not answer:\n{}",
                cluster.dump()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // A room of version 1; three players chat through several 1 s leases.
    let room = create_room_at(&v1).await;
    let names = ["ann", "bob", "cyd"];
    let chatters = chatters(&v1, &room, &names, 150, Duration::from_millis(50)).await;
    let Tally {
        total,
        views,
        applied,
        lost,
        doubled,
        ..
    } = tally(&names, chatters).await;
    let lost = lost.len();
    let handovers = cluster
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, l)| l.contains("worker invocation done") && l.contains("handed-over"))
        .count();
    let first = views[0].values().map(|(at, _)| *at).min().unwrap();
    println!(
        "lambda handover: accepted {total}, applied {}, lost {lost}, doubled {doubled}; {handovers} handovers (1 s leases; 3 players, 150 inputs each, one every 50 ms); the players' longest pause {:?}",
        applied.len(),
        pause_after(&views[0], first, Duration::from_secs(60))
    );
    assert!(
        handovers >= 2,
        "the room was handed over:\n{}",
        cluster.dump()
    );
    assert_eq!(
        lost,
        0,
        "receipted inputs never applied:\n{}",
        cluster.dump()
    );
    assert_eq!(doubled, 0, "inputs applied twice");
    assert_eq!(applied.len(), total, "every applied input was receipted");

    // "Deploy" version 2: new rooms go to it; the old room stays on version 1, also
    // when version 2's lobby wakes it and when version 2 is invoked for it.
    let newer = create_room_at(&v2).await;
    let (version, _) = pinned(&store, &room).await;
    assert_eq!(version.as_deref(), Some("game-server:1"));
    let started = Instant::now();
    while pinned(&store, &newer).await.0.is_none() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pinned(&store, &newer).await.0.as_deref(),
        Some("game-server-v2:2")
    );
    // Nobody is in the new room: its chain ends (2 s empty), and a join wakes it.
    let asleep = format!("room=\"{newer}\" outcome=\"asleep\"");
    let started = Instant::now();
    while !cluster
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|(_, _, l)| l.contains(&asleep))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the empty room's chain did not end:\n{}",
            cluster.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slept = Instant::now();
    let mut eve = player(&v2, &newer, "eve", true).await;
    if let Err(e) = chat_applied(&mut eve, 1, Duration::from_secs(30)).await {
        panic!("{e}: the woken room is silent\n{}", cluster.dump());
    }
    println!(
        "an empty room's chain ended; a join woke it: the first input applied {:?} after the join began",
        slept.elapsed()
    );

    let answer = invoke(&emulator, "game-server-v2", json!({ "gsl_room": room })).await;
    println!("version 2 invoked for the version-1 room: {answer}");
    assert_eq!(answer["outcome"], "redirected", "{answer}");
    assert_eq!(answer["to"], "game-server:1");
    let mut late = player(&v2, &room, "dan", true).await;
    if let Err(e) = chat_applied(&mut late, 1, Duration::from_secs(30)).await {
        panic!("{e}: the room is silent\n{}", cluster.dump());
    }
    let (version, worker) = pinned(&store, &room).await;
    println!("after a join through version 2: room {room} pinned to {version:?}, run by {worker:?}; room {newer} pinned to game-server-v2:2");
    assert_eq!(version.as_deref(), Some("game-server:1"));
    assert!(
        worker
            .as_deref()
            .is_some_and(|w| w.starts_with("lambda-game-server:1-")),
        "{worker:?}"
    );

    // An invocation that hangs (SIGSTOP of the instance running the room: the one with
    // a TLS connection to RabbitMQ's STOMP) loses the room when RabbitMQ misses its
    // heart-beats; the sweep, which the deployed template runs every minute and this
    // test runs every 2 s, notices the inbox without a consumer and starts a new chain.
    // (Not kill -9: the emulator does not replace an instance that died.)
    let instances = String::from_utf8(
        Command::new("pgrep")
            .args(["-f", "lambda-watch/debug/game-server$"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let tls_port = stomp_tls_port(&cluster.broker);
    let sockets = String::from_utf8(
        Command::new("ss")
            .args(["-tnpH", "dst", &format!("127.0.0.1:{tls_port}")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let worker_pid = instances
        .split_whitespace()
        .find(|pid| sockets.contains(&format!("pid={pid},")))
        .unwrap_or_else(|| panic!("no instance of version 1 holds a STOMP connection:\n{sockets}"))
        .to_owned();
    assert!(Command::new("kill")
        .args(["-STOP", &worker_pid])
        .status()
        .unwrap()
        .success());
    let at = Instant::now();
    late.client
        .send(
            &late.inbox,
            json!({ "type": "chat", "text": "anyone?", "seq": 2 }).to_string(),
        )
        .await
        .unwrap();
    // The sweep runs until the input is applied, as the deployed one runs every minute: a
    // sweep can start a chain while RabbitMQ still counts the hung invocation as the
    // inbox's consumer (a chain that stood by in vain gives up), and the next sweep
    // starts another.
    let mut sweeps = 0;
    let mut launches = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let answer = invoke(&emulator, "game-server-v2", json!({ "gsl_sweep": true })).await;
        sweeps += 1;
        if answer["launched"].as_u64().unwrap_or(0) > 0 {
            launches.push(sweeps);
            if wait_applied(&mut late, 2, Duration::from_secs(20))
                .await
                .is_ok()
            {
                break;
            }
        }
        assert!(
            at.elapsed() < Duration::from_secs(120),
            "no sweep restarted the room (sweeps that launched a chain: {launches:?})\n{}",
            cluster.dump()
        );
    }
    let restarted = format!("launches at sweeps {launches:?}");
    let (version, worker) = pinned(&store, &room).await;
    println!(
        "hung invocation: sweep #{sweeps} ({restarted}) restarted the room; the input sent after the SIGSTOP was applied {:?} after it, by {worker:?} ({version:?})",
        at.elapsed()
    );
    assert_eq!(version.as_deref(), Some("game-server:1"));
    let _ = Command::new("kill").args(["-CONT", &worker_pid]).status();

    // A clean error type for what the function cannot handle.
    let answer = invoke(&emulator, "game-server", json!({ "hello": "there" })).await;
    println!("an unknown event: {answer}");
    assert_eq!(answer["errorType"], "UnknownEvent", "{answer}");
    cluster.end_rooms().await;
}

/// 200 players quick play at once through two lobbies into rooms of 4 (the MMO's kind,
/// its seats set by `GSL_POLICY`): every one placed, no room over 4, no player twice;
/// the store's transactions decide, not a lobby's memory.
#[tokio::test]
async fn two_lobbies_quick_play_two_hundred_players_and_never_overfill() {
    let _turn = SERIAL.lock().await;
    let env = vec![("GSL_POLICY".to_owned(), "default.max_players=4".to_owned())];
    let cluster = Cluster::start_with_env("quickplay", 2, 1, env).await;
    let started = Instant::now();
    let plays = (0..200).map(|i| {
        let lobby = e2e_tests::lobby(&cluster.lobbies[i % 2]);
        async move {
            let play = game_server_less::proto::Matchmake::named(format!("q{i}"));
            lobby.quick_play(&play).await
        }
    });
    let tickets: Vec<Ticket> = futures_util::future::join_all(plays)
        .await
        .into_iter()
        .map(|t| t.unwrap_or_else(|e| panic!("a quick play failed: {e}\n{}", cluster.dump())))
        .collect();
    let took = started.elapsed();
    let mut per_room: HashMap<&str, usize> = HashMap::new();
    let mut players = HashSet::new();
    for t in &tickets {
        *per_room.entry(t.room.as_str()).or_default() += 1;
        assert!(
            players.insert(t.player.clone()),
            "{} seated twice",
            t.player
        );
    }
    let store = Store::open(&cluster.db.url).await.unwrap();
    let mut full = 0;
    for (room, n) in &per_room {
        let record = store.room(room).await.unwrap().expect("a live room");
        assert!(
            *n <= 4 && record.seats == *n,
            "room {room}: {n} tickets, {} seats",
            record.seats
        );
        full += usize::from(*n == 4);
    }
    println!(
        "cluster: 200 quick plays through 2 lobbies in {took:?}: {} players in {} rooms ({full} full), max fill {}, 0 double seats",
        players.len(),
        per_room.len(),
        per_room.values().max().unwrap()
    );
    assert_eq!(players.len(), 200);
    cluster.end_rooms().await;
}

/// Waits for a message on the room topic whose `type` is `kind` about `who`
/// (messages about others are skipped); panics if none comes in time.
async fn next_about(room: &mut Subscription, kind: &str, who: &str) {
    let deadline = Instant::now() + WAIT;
    while e2e_tests::next_of(room, kind).await["player"] != who {
        assert!(Instant::now() < deadline, "no {kind} about {who}");
    }
}

/// In cluster mode the worker learns of connections from RabbitMQ's event exchange,
/// through the lobbies: a drop and a reconnect inside the grace, then a drop past it
/// and the leave.
#[tokio::test]
async fn in_a_cluster_rooms_hear_drops_from_rabbitmq_and_take_out_who_stays_away() {
    let _turn = SERIAL.lock().await;
    let env = vec![("GSL_POLICY".to_owned(), "default.grace_secs=2".to_owned())];
    let cluster = Cluster::start_with_env("presence", 1, 1, env).await;
    let lobby = &cluster.lobbies[0];
    let room = create_room_at(lobby).await;
    let mut bob = player(lobby, &room, "bob", true).await;
    let ticket = join_ticket(lobby, &room, "ann").await;
    let connect = |t: &Ticket| {
        let t = t.clone();
        async move {
            Client::connect(&t.tcp_url, ConnectOptions::login(t.login, t.token))
                .await
                .unwrap()
        }
    };
    let ann = connect(&ticket).await;
    next_about(&mut bob.room, "joined", "ann").await;
    let closed = Instant::now();
    drop(ann);
    next_about(&mut bob.room, "dropped", "ann").await;
    println!(
        "cluster: the drop reached the room {:?} after the connection closed",
        closed.elapsed()
    );
    let ann = connect(&ticket).await;
    next_about(&mut bob.room, "back", "ann").await;
    let closed = Instant::now();
    drop(ann);
    next_about(&mut bob.room, "dropped", "ann").await;
    next_about(&mut bob.room, "left", "ann").await;
    let waited = closed.elapsed();
    println!("cluster: the leave came {waited:?} after the connection closed (grace 2 s)");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    let view = get_json(&format!("{lobby}/rooms/{room}")).await;
    assert_eq!(view["players_online"], 1, "{view}");
    cluster.end_rooms().await;
}

/// Eight players queue at once through two lobbies for rooms of 3 to 4: groups form in
/// the store's transactions, whichever lobby polls, so no ticket gets two rooms and no
/// room more than 4.
#[tokio::test]
async fn two_lobbies_form_queue_groups_once() {
    let _turn = SERIAL.lock().await;
    let env = vec![(
        "GSL_POLICY".to_owned(),
        "default.min_players=3,default.max_players=4".to_owned(),
    )];
    let cluster = Cluster::start_with_env("queue", 2, 1, env).await;
    let queued = (0..8).map(|i| {
        let mine = e2e_tests::lobby(&cluster.lobbies[i % 2]);
        let other = e2e_tests::lobby(&cluster.lobbies[(i + 1) % 2]);
        async move {
            let play = game_server_less::proto::Matchmake::named(format!("w{i}"));
            let mut view = mine.enqueue(&play).await.unwrap();
            // Polled through both lobbies in turn: either may form the group.
            for round in 0..4 {
                if view.status == "matched" {
                    break;
                }
                let at = if round % 2 == 0 { &other } else { &mine };
                view = at.poll_queue(&view.id, 1).await.unwrap();
            }
            view
        }
    });
    let views: Vec<_> = futures_util::future::join_all(queued).await;
    let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
    for v in views.iter().filter(|v| v.status == "matched") {
        let t = v.ticket.as_ref().unwrap();
        rooms
            .entry(t.room.clone())
            .or_default()
            .push(t.player.clone());
    }
    let matched: usize = rooms.values().map(Vec::len).sum();
    println!(
        "cluster: 8 queued through 2 lobbies: groups {:?}",
        rooms.values().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        rooms.values().all(|g| (3..=4).contains(&g.len())),
        "{rooms:?}"
    );
    assert!(
        matched >= 6 && 8 - matched < 3,
        "every group that could form did: {rooms:?}"
    );
    let store = Store::open(&cluster.db.url).await.unwrap();
    for (room, players) in &rooms {
        assert_eq!(
            store.players(room).await.unwrap().len(),
            players.len(),
            "seated once"
        );
    }
    cluster.end_rooms().await;
}

/// A spectator on RabbitMQ: the world as a snapshot on its own destination once it has
/// subscribed, the room's topic after it with no gap, and RabbitMQ refuses its SENDs.
#[tokio::test]
async fn on_rabbitmq_a_spectator_catches_up_and_cannot_send() {
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::start("spectate", 1, 1).await;
    let lobby = &cluster.lobbies[0];
    let room = create_room_at(lobby).await;
    let mut ann = player(lobby, &room, "ann", true).await;
    next_about(&mut ann.room, "joined", "ann").await;
    let (ticket, watcher, mut topic, mut private) = e2e_tests::spectator(lobby, &room).await;
    let welcome = e2e_tests::next_of(&mut private, "welcome").await;
    let seq = welcome["seq"].as_u64().unwrap();
    assert!(welcome["players"]["ann"].is_object(), "{welcome}");
    // Ann moves: the spectator's next room message is the one after the snapshot.
    for (i, (dx, dy)) in [(1, 0), (-1, 0), (0, 1), (0, -1)].into_iter().enumerate() {
        let body = json!({ "type": "move", "dx": dx, "dy": dy, "seq": i + 1 }).to_string();
        ann.client.send(&ann.inbox, body).await.unwrap();
    }
    let next = loop {
        let m = json_of(&topic.recv_timeout(WAIT).await.unwrap());
        if m["seq"].as_u64().unwrap() > seq {
            break m;
        }
    };
    assert_eq!(next["seq"].as_u64().unwrap(), seq + 1, "no gap: {next}");
    let inbox = format!("/exchange/gsl.inputs/room.{room}.{}", ticket.player);
    let refused = watcher.send(&inbox, r#"{"type":"look","seq":1}"#).await;
    assert!(
        refused.is_err(),
        "RabbitMQ let a spectator send: {refused:?}"
    );
    cluster.end_rooms().await;
}

/// The inspector in cluster mode: the lobby reads the worker, seq, latest inputs and
/// presence from PostgreSQL (what the worker process saved) and the inbox from
/// RabbitMQ's management API; it cannot count spectators. Its playground sends through
/// RabbitMQ as the test player, and its lock and end reach the worker process.
#[tokio::test]
async fn in_a_cluster_the_inspector_reads_the_store_and_rabbitmq() {
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::start("inspect", 1, 1).await;
    let lobby = &cluster.lobbies[0];
    let room = create_room_at(lobby).await;
    let mut ann = player(lobby, &room, "ann", true).await;
    next_about(&mut ann.room, "joined", "ann").await;
    ann.client
        .send(&ann.inbox, r#"{"type":"look","seq":1}"#)
        .await
        .unwrap();
    ann.client
        .send(&ann.inbox, r#"{"type":"fly","seq":2}"#)
        .await
        .unwrap();
    let admin = |method: reqwest::Method, path: String, body: Option<Value>| async move {
        let mut request = http()
            .request(method, format!("{lobby}{path}"))
            .bearer_auth(OPERATOR);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let page_path = format!("/admin/rooms/{room}");
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let (status, page) = admin(reqwest::Method::GET, page_path.clone(), None).await;
        assert_eq!(status, 200, "{page}");
        let inputs = page["recent_inputs"].as_array().map_or(0, Vec::len);
        // RabbitMQ's management API counts anew every few seconds (its statistics
        // interval): the inbox's consumer shows up then.
        let counted = page["inbox"]["consumers"] == 1;
        if inputs == 2 && counted && page["presence"].to_string().contains("\"connected\"") {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed both inputs: {page:#}\n{}",
            cluster.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("cluster: the inspector's room page: {page:#}");
    let worker = page["worker"]
        .as_str()
        .expect("the worker that runs the room");
    assert!(
        worker != "local" && worker.contains('-'),
        "a worker process's id: {worker}"
    );
    assert_eq!(
        page["inbox"]["consumers"], 1,
        "from RabbitMQ: {}",
        page["inbox"]
    );
    assert!(page["inbox"]["unacked"].is_u64(), "{}", page["inbox"]);
    assert_eq!(
        page["spectators"],
        Value::Null,
        "RabbitMQ does not tell spectators"
    );
    assert_eq!(page["recent_inputs"][0]["error"], Value::Null);
    assert!(page["recent_inputs"][1]["error"]
        .as_str()
        .unwrap()
        .contains("unknown message type"));
    assert!(
        page["state"]["items"].is_array(),
        "the world, from PostgreSQL"
    );

    let (status, sent) = admin(
        reqwest::Method::POST,
        format!("/admin/rooms/{room}/send"),
        Some(json!({ "player": "tester", "input": { "type": "chat", "text": "from the inspector" } })),
    )
    .await;
    assert_eq!(status, 202, "{sent}");
    let deadline = Instant::now() + WAIT;
    loop {
        let m = json_of(&ann.room.recv_timeout(WAIT).await.unwrap());
        if m["type"] == "chat" && m["text"] == "from the inspector" {
            assert_eq!(m["input_from"], "tester");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test player's chat never came"
        );
    }
    let (status, _) = admin(
        reqwest::Method::POST,
        format!("/admin/rooms/{room}/lock"),
        Some(json!({ "locked": true })),
    )
    .await;
    assert_eq!(status, 204);
    let view = get_json(&format!("{lobby}/rooms/{room}")).await;
    assert_eq!(view["locked"], true);
    let (status, _) = admin(
        reqwest::Method::POST,
        format!("/admin/rooms/{room}/end"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 204, "the worker process ended it within the wait");
    let (status, _) = admin(reqwest::Method::GET, page_path, None).await;
    assert_eq!(status, 404);
}

// A RabbitMQ cluster of three nodes: any node killed mid-game, nothing lost.

/// The `--broker` value of the three-node cluster `tests/run` starts
/// (`scripts/rabbitmq-node cluster start`), if it did.
fn cluster_broker() -> Option<String> {
    std::env::var("GSL_TEST_CLUSTER")
        .ok()
        .filter(|v| !v.is_empty())
}

/// `scripts/rabbitmq-node cluster ARGS`, off the async threads (a restart takes seconds).
async fn rabbit_cluster(args: &[&str]) {
    let args: Vec<String> = ["cluster"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    let script = repo().join("scripts/rabbitmq-node");
    let out = tokio::task::spawn_blocking(move || Command::new(script).args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/rabbitmq-node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET path` of the management API at the first node that answers.
async fn management(broker: &str, path: &str) -> Value {
    let config = game_server_less::rabbit::RabbitConfig::parse(broker).unwrap();
    for node in &config.nodes {
        let url = format!("http://{}:{}/api{path}", node.host, node.management_port);
        let answer = http()
            .get(&url)
            .basic_auth(&config.user, Some(&config.password))
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status().is_success() {
                return answer.json().await.unwrap();
            }
        }
    }
    panic!("no node's management API answers {path}");
}

/// The protocol of the connection that consumes `room`'s inbox, as RabbitMQ's
/// management API names it ("AMQP 0-9-1", "STOMP 1.2"), once its statistics show it.
async fn inbox_consumer_protocol(broker: &str, room: &str) -> String {
    let started = Instant::now();
    loop {
        let consumers = management(broker, "/consumers").await;
        let connection = consumers.as_array().into_iter().flatten().find_map(|c| {
            (c["queue"]["name"] == format!("gsl.room.{room}"))
                .then(|| {
                    c["channel_details"]["connection_name"]
                        .as_str()
                        .map(str::to_owned)
                })
                .flatten()
        });
        if let Some(name) = connection {
            let path = format!(
                "/connections/{}",
                name.replace(' ', "%20").replace('>', "%3E")
            );
            let details = management(broker, &path).await;
            return details["protocol"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "RabbitMQ's management API shows no consumer of the inbox of {room}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The cluster's node index (`gsl-I@localhost`) of an Erlang node name.
fn node_index(node: &Value) -> String {
    let name = node.as_str().expect("a node name");
    name.trim_start_matches("gsl-")
        .split('@')
        .next()
        .unwrap()
        .to_owned()
}

/// A node to kill, by the part it plays for the room.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The node the room's active worker is connected to.
    Worker,
    /// The node that leads the room's quorum inbox.
    Leader,
    /// The node most of the room's players are connected to.
    Players,
}

/// The index of the node that plays `role` for `room`.
async fn node_of(broker: &str, room: &str, role: Role) -> String {
    match role {
        Role::Leader => {
            let queue = management(broker, &format!("/queues/%2F/gsl.room.{room}")).await;
            node_index(&queue["leader"])
        }
        Role::Worker => {
            // The consumers show in the management API's statistics, which come every
            // few seconds.
            let started = Instant::now();
            loop {
                let queue = management(broker, &format!("/queues/%2F/gsl.room.{room}")).await;
                let active = queue["consumer_details"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["activity_status"] == "single_active");
                if let Some(active) = active {
                    return node_index(&active["channel_details"]["node"]);
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no active consumer of room {room}: {queue}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Role::Players => {
            let connections = management(broker, "/connections?columns=user,node").await;
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for c in connections.as_array().unwrap() {
                if c["user"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!("@{room}")))
                {
                    *count.entry(node_index(&c["node"])).or_default() += 1;
                }
            }
            count
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .expect("players connected")
                .0
        }
    }
}

/// Waits until every member of `room`'s quorum inbox is online again.
async fn wait_rejoined(broker: &str, room: &str) {
    let started = Instant::now();
    loop {
        let queue = management(broker, &format!("/queues/%2F/gsl.room.{room}")).await;
        let members = queue["members"].as_array().map_or(0, Vec::len);
        let online = queue["online"].as_array().map_or(0, Vec::len);
        if members == 3 && online == 3 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restarted node did not rejoin room {room}'s inbox: {queue}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A player that fails over: it connects to the first node of its ticket's list that
/// answers, and when its connection drops it connects again (to the next one that
/// answers) and sends again, with the same number, the input the broker had not
/// receipted. What it hears, on every connection, goes into `seen`.
#[derive(Default)]
struct Roamer {
    seen: std::sync::Mutex<Seen>,
    /// The inputs the broker receipted.
    accepted: std::sync::Mutex<Vec<u64>>,
    /// How often it connected again.
    reconnects: std::sync::atomic::AtomicUsize,
    /// It sends no more.
    finished: std::sync::atomic::AtomicBool,
}

/// Starts a [`Roamer`]: it sends one chat every `pace` until `stop`, then listens until
/// `done`.
fn roam(
    ticket: Ticket,
    tcp: bool,
    pace: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Roamer>, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::Ordering::Relaxed;
    let roamer = Arc::new(Roamer::default());
    let me = roamer.clone();
    let task = tokio::spawn(async move {
        let urls = if tcp {
            ticket.tcp_endpoints()
        } else {
            ticket.ws_endpoints()
        };
        let (mut seq, mut unreceipted, mut client) = (0u64, false, None::<Client>);
        while unreceipted || !stop.load(Relaxed) {
            let Some(connected) = client.clone() else {
                let options = ConnectOptions {
                    timeout: Duration::from_secs(3),
                    ..ConnectOptions::login(ticket.login.clone(), ticket.token.clone())
                };
                let Ok(c) = Client::connect_first(&urls, options).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(mut room) = c
                    .subscribe(&ticket.topic, SubscribeOptions::default())
                    .await
                else {
                    continue;
                };
                let (ear, done) = (me.clone(), done.clone());
                tokio::spawn(async move {
                    loop {
                        match tokio::time::timeout(Duration::from_millis(100), room.recv()).await {
                            Ok(Some(m)) => {
                                ear.seen.lock().unwrap().push((Instant::now(), json_of(&m)));
                            }
                            Ok(None) => return,
                            Err(_) if done.load(Relaxed) => return,
                            Err(_) => {}
                        }
                    }
                });
                if seq > 0 {
                    me.reconnects.fetch_add(1, Relaxed);
                }
                client = Some(c);
                continue;
            };
            if !unreceipted {
                seq += 1;
            }
            let body =
                json!({ "type": "chat", "text": format!("{}-{seq}", ticket.player), "seq": seq });
            match connected.send(&ticket.inbox, body.to_string()).await {
                Ok(()) => {
                    me.accepted.lock().unwrap().push(seq);
                    unreceipted = false;
                    tokio::time::sleep(pace).await;
                }
                Err(_) => {
                    // Maybe applied, maybe not: the same number again, on a new connection.
                    unreceipted = true;
                    let _ = connected.disconnect().await;
                    client = None;
                }
            }
        }
        me.finished.store(true, Relaxed);
        while !done.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(c) = client {
            let _ = c.disconnect().await;
        }
    });
    (roamer, task)
}

/// Every player's outputs merged by room seq: one message per seq, whoever heard it
/// (asserted), with when it first arrived anywhere.
fn merged(views: &[Seen]) -> BTreeMap<u64, (Instant, Value)> {
    let mut all: BTreeMap<u64, (Instant, Value)> = BTreeMap::new();
    for seen in views {
        for (at, m) in seen {
            let Some(seq) = m["seq"].as_u64() else {
                continue;
            };
            match all.get_mut(&seq) {
                Some((first, known)) => {
                    assert_eq!(known, m, "room seq {seq} named two different messages");
                    *first = (*first).min(*at);
                }
                None => {
                    all.insert(seq, (*at, m.clone()));
                }
            }
        }
    }
    all
}

#[tokio::test]
async fn on_a_rabbitmq_cluster_any_node_killed_mid_game_loses_and_doubles_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(broker) = cluster_broker() else {
        eprintln!("skipped: no RabbitMQ cluster (tests/run starts one and sets GSL_TEST_CLUSTER)");
        return;
    };
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::start_on(broker.clone(), "chaos", 1, 2, Vec::new()).await;
    let lobby = cluster.lobbies[0].clone();
    let room = create_room_at(&lobby).await;
    cluster.wait_active(&room, None).await;
    let names = ["ann", "bob", "cyd", "dan", "eve", "fay"];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut roamers, mut tasks, mut first_nodes) = (Vec::new(), Vec::new(), HashSet::new());
    for (i, name) in names.iter().enumerate() {
        let ticket = join_ticket(&lobby, &room, name).await;
        assert_eq!(ticket.ws_urls.len(), 3, "a ticket names every node");
        assert_eq!(ticket.ws_url, ticket.ws_urls[0]);
        first_nodes.insert(ticket.tcp_urls[0].clone());
        let pace = Duration::from_millis(25);
        let (roamer, task) = roam(ticket, i % 2 == 0, pace, stop.clone(), done.clone());
        roamers.push(roamer);
        tasks.push(task);
    }
    assert!(first_nodes.len() > 1, "the players start on several nodes");
    let heard = |roamers: &[Arc<Roamer>]| -> Vec<Seen> {
        roamers
            .iter()
            .map(|r| r.seen.lock().unwrap().clone())
            .collect()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Each role in turn; the node killed is restarted, and has rejoined the inbox,
    // before the next one is killed.
    let mut events = Vec::new();
    for (what, role) in [
        ("the active worker's node", Role::Worker),
        ("the inbox's leader", Role::Leader),
        ("the node of most players", Role::Players),
    ] {
        let node = node_of(&broker, &room, role).await;
        let before = merged(&heard(&roamers)).keys().last().copied().unwrap_or(0);
        let (again_before, failed_before) = (
            roamers
                .iter()
                .map(|r| r.reconnects.load(Relaxed))
                .sum::<usize>(),
            cluster.worker_failures(),
        );
        let at = Instant::now();
        rabbit_cluster(&["kill", &node]).await;
        // The room moves on: an output it had not made before the kill.
        while merged(&heard(&roamers))
            .range(before + 1..)
            .all(|(_, (t, _))| *t <= at)
        {
            assert!(
                at.elapsed() < Duration::from_secs(30),
                "the room did not move again after {what} (node {node}) was killed:\n{}",
                cluster.dump()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        rabbit_cluster(&["restart", &node]).await;
        wait_rejoined(&broker, &room).await;
        // The room's longest stall after the kill: no new output anywhere meanwhile.
        let stalled = pause_after(&merged(&heard(&roamers)), at, Duration::from_secs(2));
        let again = roamers
            .iter()
            .map(|r| r.reconnects.load(Relaxed))
            .sum::<usize>()
            - again_before;
        let restarted = cluster.worker_failures() - failed_before;
        events.push((what, node, at, stalled, again, restarted));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Relaxed);
    let started = Instant::now();
    while !roamers.iter().all(|r| r.finished.load(Relaxed)) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "players still sending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every receipted input applied once, and every player hears the room's last word.
    let accepted: Vec<(String, u64)> = names
        .iter()
        .zip(&roamers)
        .flat_map(|(name, r)| {
            let seqs = r.accepted.lock().unwrap().clone();
            seqs.into_iter().map(move |s| (name.to_string(), s))
        })
        .collect();
    let started = Instant::now();
    loop {
        let views = heard(&roamers);
        let outputs = merged(&views);
        let last = outputs.keys().last().copied();
        let everyone = views
            .iter()
            .all(|v| v.iter().any(|(_, m)| m["seq"].as_u64() == last));
        if (applied_chats(&outputs).len() >= accepted.len() && everyone)
            || started.elapsed() > Duration::from_secs(30)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // anything doubled arrives too
    done.store(true, Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let views = heard(&roamers);
    let outputs = merged(&views);
    let seqs: Vec<u64> = outputs.keys().copied().collect();
    let gaps: Vec<&[u64]> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    let applied = applied_chats(&outputs);
    let lost: Vec<&(String, u64)> = accepted
        .iter()
        .filter(|k| !applied.contains_key(*k))
        .collect();
    let doubled = applied.values().filter(|seqs| seqs.len() > 1).count();
    let reconnects: usize = roamers.iter().map(|r| r.reconnects.load(Relaxed)).sum();
    println!(
        "three RabbitMQ nodes, {} players (one chat each every 25 ms), {reconnects} reconnections: accepted {}, applied {}, lost {}, doubled {doubled}; room seqs {}..={} with {} gaps",
        names.len(),
        accepted.len(),
        applied.len(),
        lost.len(),
        seqs.first().unwrap_or(&0),
        seqs.last().unwrap_or(&0),
        gaps.len(),
    );
    for (what, node, at, stalled, again, restarted) in &events {
        let longest = views
            .iter()
            .map(|seen| longest_gap(seen.iter().map(|(t, _)| *t), *at, Duration::from_secs(2)))
            .max()
            .unwrap();
        println!(
            "  kill -9 of {what} (node {node}): the room stood still for {stalled:?} at most; the longest pause a player saw {longest:?}; {again} player reconnections, {restarted} worker restarts"
        );
    }
    assert!(gaps.is_empty(), "room seqs no player heard: {gaps:?}");
    assert!(
        lost.is_empty(),
        "{} receipted inputs never applied, the first {:?}\n{}",
        lost.len(),
        lost.first(),
        cluster.dump()
    );
    assert_eq!(doubled, 0, "inputs applied twice");
    assert_eq!(
        applied.len(),
        accepted.len(),
        "every applied input was receipted"
    );
    assert!(reconnects > 0, "some players' node was killed under them");
    let last = seqs.last().copied();
    for (name, seen) in names.iter().zip(&views) {
        assert!(
            seen.iter().any(|(_, m)| m["seq"].as_u64() == last),
            "{name} never heard the room's last output"
        );
    }
    cluster.end_rooms().await;
}

#[tokio::test]
async fn a_lobby_killed_mid_joins_leaves_no_seat_without_a_ticket_nor_a_ticket_without_a_seat() {
    let _turn = SERIAL.lock().await;
    let env = vec![("GSL_POLICY".to_owned(), "default.max_players=4".to_owned())];
    let cluster = Cluster::start_with_env("lobbykill", 2, 1, env).await;
    // The players' client knows both lobbies, the one killed first; the other is the
    // one RabbitMQ's auth backend asks.
    let both = format!("{},{}", cluster.lobbies[1], cluster.lobbies[0]);
    let players: Vec<String> = (0..120).map(|i| format!("p{i}")).collect();
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut plays = Vec::new();
    let started = Instant::now();
    for (i, name) in players.iter().enumerate() {
        let lobby = game_server_less::LobbyClient::new(&both).unwrap();
        let (name, failures) = (name.clone(), failures.clone());
        plays.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5 * i as u64)).await;
            // The player makes its name's key before the first join asks, as the TUI
            // does: should the answer be lost, asking again with the key is let in.
            let play = game_server_less::proto::Matchmake {
                key: Some(game_server_less::proto::new_player_key(&name)),
                ..game_server_less::proto::Matchmake::named(name.clone())
            };
            let mut tries = 0;
            let ticket = loop {
                tries += 1;
                match lobby.quick_play(&play).await {
                    Ok(ticket) => break ticket,
                    // Cut off mid-call: the seat may or may not be taken. A player asks again.
                    Err(e) if tries < 10 => {
                        failures.lock().unwrap().push(format!("{name}: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("{name} never got a ticket: {e}"),
                }
            };
            assert_eq!(ticket.player, name, "the player keeps its name");
            // The first connection makes the reserved seat the player's.
            let options = ConnectOptions::login(ticket.login.clone(), ticket.token.clone());
            let client = Client::connect_first(&ticket.tcp_endpoints(), options)
                .await
                .unwrap_or_else(|e| panic!("{name} connects: {e}"));
            let body = json!({ "type": "chat", "text": "hi", "seq": 1 });
            client.send(&ticket.inbox, body.to_string()).await.unwrap();
            (ticket, client, tries)
        }));
    }
    // Kill -9 the first lobby a third of the way through the joins.
    tokio::time::sleep(Duration::from_millis(5 * 40)).await;
    cluster.processes[1].signal("-KILL");
    let killed_at = started.elapsed();
    let mut tickets = Vec::new();
    let mut retried = 0;
    for play in plays {
        let (ticket, client, tries) = play.await.unwrap();
        retried += usize::from(tries > 1);
        tickets.push((ticket, client));
    }
    let took = started.elapsed();

    // A seat whose ticket never reached its player (the lobby died before answering)
    // is a reservation: it is given up once its time is over (15 s). Then each room
    // has a seat for each ticket of it, and no other.
    let mut per_room: HashMap<String, HashSet<String>> = HashMap::new();
    for (t, _) in &tickets {
        per_room
            .entry(t.room.clone())
            .or_default()
            .insert(t.player.clone());
    }
    let distinct: usize = per_room.values().map(HashSet::len).sum();
    assert_eq!(distinct, players.len(), "a player seated twice");
    let store = Store::open(&cluster.db.url).await.unwrap();
    let wait = Instant::now();
    let mismatched = loop {
        let mut mismatched = Vec::new();
        for (room, seated) in &per_room {
            let record = store.room(room).await.unwrap().expect("a live room");
            if record.seats != seated.len() {
                mismatched.push(format!(
                    "{room}: {} seats, {} tickets",
                    record.seats,
                    seated.len()
                ));
            }
        }
        if mismatched.is_empty() || wait.elapsed() > Duration::from_secs(40) {
            break mismatched;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "a lobby killed -9 at {killed_at:?} of {} quick plays through two lobbies ({took:?}): {retried} players asked again after {} failed calls, each with its name; every player has a ticket and a seat, in {} rooms (seats matched tickets {:?} after the joins)",
        players.len(),
        failures.lock().unwrap().len(),
        per_room.len(),
        wait.elapsed(),
    );
    assert!(
        mismatched.is_empty(),
        "seats and tickets disagree: {mismatched:?}\n{}",
        cluster.dump()
    );
    assert!(
        !failures.lock().unwrap().is_empty(),
        "the kill cut no call short: the test saw no failover"
    );
    drop(tickets);
    cluster.end_rooms().await;
}

/// `pg_ctlcluster … ACTION` of the machine's PostgreSQL, off the async threads.
async fn postgresql(action: &'static str) {
    let out = tokio::task::spawn_blocking(move || {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("PostgreSQL is installed (/etc/postgresql)")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .min()
            .expect("a PostgreSQL version");
        Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", action])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "pg_ctlcluster {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names of [`three_chatting`]'s players.
const THREE: [&str; 3] = ["ann", "bob", "cyd"];

/// One lobby and two workers; [`THREE`] players chat in a room, `count` inputs each, one
/// every 12 ms, and have been for 1.5 s.
async fn three_chatting(tag: &str, count: u64) -> (Cluster, String, Chatters) {
    let cluster = Cluster::start(tag, 1, 2).await;
    let lobby = cluster.lobbies[0].clone();
    let room = create_room_at(&lobby).await;
    cluster.wait_active(&room, None).await;
    let chatters = chatters(&lobby, &room, &THREE, count, Duration::from_millis(12)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (cluster, room, chatters)
}

#[tokio::test]
async fn a_postgresql_restart_mid_game_loses_nothing_and_the_lobby_answers_meanwhile() {
    let _turn = SERIAL.lock().await;
    let (cluster, room, chatters) = three_chatting("pgrestart", 500).await;
    let lobby = cluster.lobbies[0].clone();

    // The lobby is asked all along, for what only the store knows (a player's items):
    // each answer JSON, none held longer than a few seconds.
    let token = join_ticket(&lobby, &room, "dan").await.token;
    let asking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let (asking, lobby) = (asking.clone(), lobby.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while asking.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                let answer = http()
                    .get(format!("{lobby}/user/items"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                let took = at.elapsed();
                let (status, body) = match answer {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                answers.push((status, took, body));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answers
        })
    };
    // Stopped for 3 s, then started again.
    let at = Instant::now();
    postgresql("stop").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgresql("start").await;
    let restart = at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    asking.store(false, std::sync::atomic::Ordering::Relaxed);
    let answers = prober.await.unwrap();

    let tally = tally(&THREE, chatters).await;
    let refused = answers.iter().filter(|(s, _, _)| *s == 503).count();
    let longest = answers.iter().map(|(_, t, _)| *t).max().unwrap();
    println!(
        "PostgreSQL stopped mid-game and started again ({restart:?} away): accepted {}, applied {}, lost {}, doubled {}; the room's longest pause {:?}; the lobby answered {} times, {refused} of them 503, the slowest in {longest:?}",
        tally.total,
        tally.applied.len(),
        tally.lost.len(),
        tally.doubled,
        pause_after(&tally.views[0], at, Duration::from_secs(10)),
        answers.len(),
    );
    assert!(
        refused > 0,
        "the lobby was never asked while the store was away"
    );
    for (status, took, body) in &answers {
        assert!(
            *status == 200 || *status == 503,
            "the lobby answered {status} in {took:?}: {body}"
        );
        let json: Value = serde_json::from_str(body)
            .unwrap_or_else(|_| panic!("the lobby's answer is not JSON: {body}"));
        if *status == 503 {
            assert!(json["error"].is_string(), "{body}");
        }
        assert!(*took < Duration::from_secs(4), "the lobby took {took:?}");
    }
    tally.assert_exactly_once(&cluster);
    cluster.end_rooms().await;
}

/// A worker that fails while it holds unacked inputs (here: its checkpoints are refused)
/// must give them back ahead of later ones. An UNSUBSCRIBE before its connection closed
/// let the standby take the inbox while they were still out, so the standby applied later
/// inputs first: a room seq reused for another message, and a player's earlier inputs
/// dropped as repeats of the later ones.
#[tokio::test]
async fn a_worker_whose_checkpoints_are_refused_hands_its_inputs_on_in_order() {
    let _turn = SERIAL.lock().await;
    let (cluster, _room, chatters) = three_chatting("refused", 400).await;

    // Every checkpoint refused for 2 s: each worker that takes the room fails at its
    // first save, holding the inputs it applied since the last one.
    let db = cluster.db.name.clone();
    psql_in(
        &db,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'checkpoints refused by the test'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON checkpoints \
         FOR EACH ROW EXECUTE FUNCTION refuse();",
    );
    let at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    psql_in(&db, "DROP TRIGGER refuse ON checkpoints");
    let failures = cluster
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, line)| *t >= at && line.contains("room worker failed"))
        .count();

    let tally = tally(&THREE, chatters).await;
    println!(
        "checkpoints refused for 2 s: {failures} worker failures; accepted {}, applied {}, lost {}, doubled {}; the room's longest pause {:?}",
        tally.total,
        tally.applied.len(),
        tally.lost.len(),
        tally.doubled,
        pause_after(&tally.views[0], at, Duration::from_secs(10)),
    );
    assert!(
        failures > 0,
        "no worker failed while checkpoints were refused"
    );
    tally.assert_exactly_once(&cluster);
    cluster.end_rooms().await;
}
