//! The servers under test, each started fresh as processes of its own (so the kernel's
//! figures for them are theirs alone) and stopped after the run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port of the lobby RabbitMQ's HTTP auth backend asks (see `scripts/rabbitmq-node`).
const AUTH_LOBBY: &str = "127.0.0.1:18080";
/// The shared secret of the cluster's lobby and worker.
const SECRET: &str = "bench-secret-bench-secret-bench-secret";

/// A server to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Mode {
    /// A plain WebSocket server with the same room logic and no framework.
    Floor,
    /// The floor with a 1 KiB WebSocket read buffer, as the game server has: at
    /// tokio-tungstenite's default (128 KiB), zeroed before every read, `memset` takes
    /// about a third of the floor's CPU. The leaner reference; ratios stay to `floor`.
    FloorLean,
    /// The embedded broker alone, no room worker: players publish their moves, as the
    /// room's answers, to their room's topic. What the STOMP path costs by itself.
    Relay,
    /// The all-in-one game server: embedded broker, SQLite, a worker task per room.
    Embedded,
    /// The all-in-one game server with `--fsync` (every input flushed to disk before
    /// its receipt).
    EmbeddedFsync,
    /// The all-in-one game server keeping no match records (`--policy '*.record=off'`):
    /// beside `embedded`, what recording costs.
    EmbeddedNoRecord,
    /// Cluster mode: a lobby and a worker process on RabbitMQ and PostgreSQL.
    Rabbitmq,
    /// Cluster mode on the three-node RabbitMQ cluster of `scripts/rabbitmq-node cluster
    /// start`: a lobby and two worker processes.
    RabbitmqCluster,
}

impl Mode {
    /// The name in tables and plots.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Floor => "floor",
            Mode::FloorLean => "floor, 1 KiB reads",
            Mode::Relay => "relay",
            Mode::Embedded => "embedded",
            Mode::EmbeddedFsync => "embedded --fsync",
            Mode::EmbeddedNoRecord => "embedded, no record",
            Mode::Rabbitmq => "rabbitmq",
            Mode::RabbitmqCluster => "rabbitmq cluster",
        }
    }
}

/// A running server.
pub(crate) struct Target {
    /// What runs.
    pub mode: Mode,
    /// The lobby's base URL (`http://…`), for the game server.
    pub lobby: Option<String>,
    /// The WebSocket URL, for the floor.
    pub floor_ws: Option<String>,
    /// The WebSocket URL, for the relay.
    pub relay_ws: Option<String>,
    children: Vec<Child>,
    /// Processes whose CPU counts as the server's (RabbitMQ's node included).
    pub pids: Vec<u32>,
    dir: PathBuf,
    database: Option<String>,
    /// The `--broker` URL in cluster mode: its inboxes are deleted at the end.
    broker: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn scratch(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("gsl-bench-{tag}-{nanos}"));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn psql(sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-qc",
            sql,
        ])
        .output()
        .map_err(|e| format!("psql (PostgreSQL's client) does not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The `--broker` URL of the RabbitMQ node `scripts/rabbitmq-node` runs for the lobby at
/// [`AUTH_LOBBY`], and the node's process id.
fn rabbitmq_node() -> Result<(String, u32), String> {
    let out = Command::new(repo().join("scripts/rabbitmq-node"))
        .args(["url", "--lobby", &format!("http://{AUTH_LOBBY}")])
        .output()
        .map_err(|e| format!("scripts/rabbitmq-node: {e}"))?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = std::env::var("GSL_RABBITMQ_DIR").unwrap_or_else(|_| "/tmp/gsl-rabbitmq".into());
    let pid = std::fs::read_to_string(format!("{dir}/gsl/pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    match pid {
        Some(pid)
            if out.status.success()
                && std::net::TcpStream::connect("127.0.0.1:5682").is_ok() =>
        {
            Ok((url, pid))
        }
        _ => Err(format!(
            "no RabbitMQ node for cluster mode: start one with `scripts/rabbitmq-node start --lobby http://{AUTH_LOBBY}` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The `--broker` value of the RabbitMQ cluster `scripts/rabbitmq-node cluster start`
/// runs, and its nodes' process ids.
fn rabbitmq_cluster() -> Result<(String, Vec<u32>), String> {
    let out = Command::new(repo().join("scripts/rabbitmq-node"))
        .args(["cluster", "url"])
        .output()
        .map_err(|e| format!("scripts/rabbitmq-node: {e}"))?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let nodes = game_server_less::rabbit::RabbitConfig::parse(&url)
        .map(|c| c.nodes.len())
        .unwrap_or(0);
    let dir = std::env::var("GSL_RABBITMQ_DIR").unwrap_or_else(|_| "/tmp/gsl-rabbitmq".into());
    let pids: Vec<u32> = (1..=nodes)
        .filter_map(|i| {
            let pid = std::fs::read_to_string(format!("{dir}/gsl-{i}/pid")).ok()?;
            let pid: u32 = pid.trim().parse().ok()?;
            Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
        })
        .collect();
    if !out.status.success() || nodes == 0 || pids.len() != nodes {
        return Err(format!(
            "no RabbitMQ cluster running: start one with `scripts/rabbitmq-node cluster start 3 --lobby http://{AUTH_LOBBY}` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((url, pids))
}

impl Target {
    /// Starts a fresh server of `mode`, ready for players.
    pub(crate) async fn start(mode: Mode) -> Result<Target, String> {
        Target::start_with(mode, &[]).await
    }

    /// [`Target::start`], every game-server process given `extra` arguments too.
    pub(crate) async fn start_with(mode: Mode, extra: &[&str]) -> Result<Target, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut target = Target {
            mode,
            lobby: None,
            floor_ws: None,
            relay_ws: None,
            children: Vec::new(),
            pids: Vec::new(),
            dir: scratch(&format!("{mode:?}").to_lowercase()),
            database: None,
            broker: None,
        };
        let lenient = [
            "--room-creations-per-minute",
            "100000000",
            "--max-http-connections-per-address",
            "1000000",
            "--max-rooms",
            "1000000",
            "--log",
            "warn,sqlx=warn",
        ];
        match mode {
            Mode::Floor | Mode::FloorLean => {
                let addr = format!("127.0.0.1:{}", free_port());
                let mut args = vec!["floor", "--listen", &addr];
                if mode == Mode::FloorLean {
                    args.extend(["--read-buffer", "1024"]);
                }
                target.spawn(&exe, "floor", &args)?;
                target.floor_ws = Some(format!("ws://{addr}/ws"));
                target.wait_port(&addr).await?;
            }
            Mode::Relay => {
                let addr = format!("127.0.0.1:{}", free_port());
                target.spawn(&exe, "relay", &["relay", "--listen", &addr])?;
                target.relay_ws = Some(format!("ws://{addr}/ws"));
                target.wait_port(&addr).await?;
            }
            Mode::Embedded | Mode::EmbeddedFsync | Mode::EmbeddedNoRecord => {
                let http = format!("127.0.0.1:{}", free_port());
                let stomp = format!("127.0.0.1:{}", free_port());
                let data = target.dir.join("data").display().to_string();
                let mut args = vec![
                    "game-server",
                    "--listen",
                    &http,
                    "--stomp-listen",
                    &stomp,
                    "--data-dir",
                    &data,
                ];
                args.extend(lenient);
                args.extend(extra);
                if mode == Mode::EmbeddedFsync {
                    args.push("--fsync");
                }
                if mode == Mode::EmbeddedNoRecord {
                    args.extend(["--policy", "*.record=off"]);
                }
                target.spawn(&exe, "server", &args)?;
                target.lobby = Some(format!("http://{http}"));
                target.wait_health().await?;
            }
            Mode::Rabbitmq | Mode::RabbitmqCluster => {
                let (broker, nodes, workers) = if mode == Mode::Rabbitmq {
                    let (broker, node) = rabbitmq_node()?;
                    (broker, vec![node], 1)
                } else {
                    let (broker, nodes) = rabbitmq_cluster()?;
                    (broker, nodes, 2)
                };
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let db = format!("gsl_bench_{nanos}");
                psql(&format!("CREATE DATABASE {db}"))?;
                target.database = Some(db.clone());
                let store = format!("postgres://postgres@127.0.0.1:5432/{db}");
                let common = ["--broker", &broker, "--store", &store, "--secret", SECRET];
                let mut lobby = vec!["game-server", "--role", "lobby", "--listen", AUTH_LOBBY];
                lobby.extend(common);
                lobby.extend(lenient);
                lobby.extend(extra);
                target.spawn(&exe, "lobby", &lobby)?;
                let mut worker = vec!["game-server", "--role", "worker"];
                worker.extend(common);
                worker.extend(["--log", "warn,sqlx=warn"]);
                worker.extend(extra);
                for i in 0..workers {
                    target.spawn(&exe, &format!("worker-{i}"), &worker)?;
                }
                target.pids.extend(nodes);
                target.broker = Some(broker.clone());
                target.lobby = Some(format!("http://{AUTH_LOBBY}"));
                target.wait_health().await?;
            }
        }
        Ok(target)
    }

    fn spawn(&mut self, exe: &Path, tag: &str, args: &[&str]) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join(format!("{tag}.log")))
            .map_err(|e| e.to_string())?;
        // A profiler to run the servers under, e.g.
        // BENCH_SERVER_WRAPPER="valgrind --tool=callgrind" (see docs/benchmarks.md).
        let wrapper = std::env::var("BENCH_SERVER_WRAPPER").unwrap_or_default();
        let mut command = match wrapper.split_whitespace().collect::<Vec<_>>()[..] {
            [] => Command::new(exe),
            [program, ref rest @ ..] => {
                let mut c = Command::new(program);
                c.args(rest).arg(exe);
                c
            }
        };
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        self.pids.push(child.id());
        self.children.push(child);
        Ok(())
    }

    /// The servers' own logs, for when something goes wrong.
    pub(crate) fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(20).collect();
                    all.push_str(&format!("--- {}\n", path.display()));
                    for l in tail.into_iter().rev() {
                        all.push_str(l);
                        all.push('\n');
                    }
                }
            }
        }
        all
    }

    async fn wait_port(&mut self, addr: &str) -> Result<(), String> {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            self.check_alive()?;
            if started.elapsed() > Duration::from_secs(20) {
                return Err(format!("{} did not listen on {addr}", self.mode.name()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn wait_health(&mut self) -> Result<(), String> {
        let url = format!("{}/health", self.lobby.as_deref().unwrap_or_default());
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            self.check_alive()?;
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{} did not answer {url}\n{}",
                    self.mode.name(),
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "{} exited ({status})\n{}",
                    self.mode.name(),
                    self.logs()
                ));
            }
        }
        Ok(())
    }

    /// The peak resident memory of the server's own processes (not RabbitMQ's node,
    /// whose peak spans its whole life), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        self.children
            .iter()
            .map(|c| crate::procfs::peak_rss(c.id()))
            .sum()
    }

    /// Bytes the server's own processes have written to storage.
    pub(crate) fn disk_writes(&self) -> u64 {
        self.children
            .iter()
            .map(|c| crate::procfs::disk_writes(c.id()))
            .sum()
    }

    /// Stops the server and removes what it left (in cluster mode, the rooms' inboxes
    /// on RabbitMQ too).
    pub(crate) async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(broker) = self.broker.take() {
            if let Err(e) = delete_inboxes(&broker).await {
                eprintln!("bench: could not delete the rooms' inboxes on RabbitMQ: {e}");
            }
        }
        if let Some(db) = self.database.take() {
            if let Err(e) = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")) {
                eprintln!("bench: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes every room inbox (`gsl.room.*`) through the management API of the first node
/// the `--broker` value names.
async fn delete_inboxes(broker: &str) -> Result<(), String> {
    let config =
        game_server_less::rabbit::RabbitConfig::parse(broker).map_err(|e| e.to_string())?;
    let node = &config.nodes[0];
    let api = format!(
        "http://{}:{}/api/queues/%2F",
        node.host, node.management_port
    );
    let (user, pass) = (config.user.clone(), Some(config.password.clone()));
    let http = reqwest::Client::new();
    #[derive(serde::Deserialize)]
    struct Queue {
        name: String,
    }
    let queues: Vec<Queue> = http
        .get(format!("{api}?columns=name"))
        .basic_auth(&user, pass.as_ref())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    for q in queues.iter().filter(|q| q.name.starts_with("gsl.room.")) {
        http.delete(format!("{api}/{}", q.name))
            .basic_auth(&user, pass.as_ref())
            .send()
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where a RabbitMQ cluster put things, through the management API of its first node.
pub(crate) struct Placement {
    /// Room inbox leaders per node.
    pub leaders: std::collections::BTreeMap<String, usize>,
    /// Players' connections per node.
    pub players: std::collections::BTreeMap<String, usize>,
    /// Bytes the nodes have sent each other since they started.
    pub link_bytes: u64,
}

impl Target {
    /// Where the cluster put the rooms' inboxes and the players; `None` outside
    /// `rabbitmq-cluster` mode.
    pub(crate) async fn placement(&self) -> Option<Placement> {
        if self.mode != Mode::RabbitmqCluster {
            return None;
        }
        let broker = self.broker.as_deref()?;
        let config = game_server_less::rabbit::RabbitConfig::parse(broker).ok()?;
        let node = &config.nodes[0];
        let http = reqwest::Client::new();
        let get = |path: &str| {
            http.get(format!(
                "http://{}:{}/api{path}",
                node.host, node.management_port
            ))
            .basic_auth(&config.user, Some(&config.password))
            .send()
        };
        let json = |r: reqwest::Response| r.json::<serde_json::Value>();
        let queues = json(get("/queues/%2F?columns=name,leader").await.ok()?)
            .await
            .ok()?;
        let connections = json(get("/connections?columns=user,node").await.ok()?)
            .await
            .ok()?;
        let nodes = json(get("/nodes").await.ok()?).await.ok()?;
        let mut placement = Placement {
            leaders: Default::default(),
            players: Default::default(),
            link_bytes: 0,
        };
        let short = |v: &serde_json::Value| {
            v.as_str()
                .unwrap_or("?")
                .split('@')
                .next()
                .unwrap_or("?")
                .to_owned()
        };
        for q in queues.as_array()? {
            if q["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("gsl.room."))
            {
                *placement.leaders.entry(short(&q["leader"])).or_default() += 1;
            }
        }
        for c in connections.as_array()? {
            if c["user"].as_str().is_some_and(|u| u.contains('@')) {
                *placement.players.entry(short(&c["node"])).or_default() += 1;
            }
        }
        for n in nodes.as_array()? {
            for link in n["cluster_links"].as_array().into_iter().flatten() {
                placement.link_bytes += link["send_bytes"].as_u64().unwrap_or(0);
            }
        }
        Some(placement)
    }
}
