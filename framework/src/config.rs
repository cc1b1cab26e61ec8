//! A game server's settings: [`Config`], which programs fill directly, and [`Args`], the
//! command line that fills it.

use crate::broker::{BrokerConfig, Rate};
use crate::policy::{parse_override, RoomPolicy};
use crate::token::random_id;
use crate::worker::Timings;
use crate::Result;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a process does in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// The lobby: HTTP, rooms, tickets, and RabbitMQ's auth backend.
    Lobby,
    /// Room workers: picks rooms up from the store, runs their handlers.
    Worker,
    /// Both (the only choice with the embedded broker).
    #[default]
    Both,
}

impl Role {
    /// Whether this process serves the lobby.
    pub fn lobby(self) -> bool {
        self != Role::Worker
    }

    /// Whether this process runs room workers.
    pub fn worker(self) -> bool {
        self != Role::Lobby
    }
}

/// Everything a game server is started with. `Config::default()` is the all-in-one
/// server on 127.0.0.1:8080 (HTTP and STOMP over WebSocket) and 127.0.0.1:7613 (STOMP
/// over TCP), with its files in `./data`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address for HTTP: the lobby, and STOMP over WebSocket at `/ws`.
    pub listen: SocketAddr,
    /// Address for STOMP over plain TCP.
    pub stomp_listen: SocketAddr,
    /// Directory for the server's files.
    pub data_dir: PathBuf,
    /// Store URL; `None` is SQLite in `data_dir`.
    pub store: Option<String>,
    /// RabbitMQ URL (cluster mode, see [`crate::rabbit::RabbitConfig`]); `None` is the
    /// embedded broker.
    pub broker: Option<String>,
    /// What this process does.
    pub role: Role,
    /// Secret that signs join tokens; `None` makes one on first start and keeps it in
    /// `data_dir`.
    pub secret: Option<String>,
    /// The room workers' broker passcode; `None` derives it from the token secret, so
    /// every process given the same secret agrees.
    pub worker_secret: Option<String>,
    /// Room workers' checkpoint and idle periods.
    pub timings: Timings,
    /// Whether `guest`/`guest` may connect to the embedded broker (from loopback only);
    /// off by default.
    pub allow_guest: bool,
    /// Heart-beat interval the embedded broker offers clients (zero turns it off).
    pub heartbeat: Duration,
    /// The lobby port's timeouts and connection caps.
    pub http: crate::http::HttpLimits,
    /// The room service: rooms, room creations and players per room at most, how long
    /// a join token is valid, the operator secret.
    pub rooms: crate::rooms::RoomSettings,
    /// Inputs a second, and at once, one player may send (embedded broker).
    pub input_rate: Rate,
    /// Whether the embedded broker flushes each input to the disk before its receipt
    /// (survives a machine crash); without it an input survives the process being
    /// killed.
    pub fsync: bool,
    /// With `fsync`, how long the journal's flusher waits before a flush under a steady
    /// stream, so that one flush covers more inputs (zero: never).
    pub fsync_gap: Duration,
    /// How long a player whose connections all dropped keeps its seat.
    pub grace: Duration,
    /// Spectators one room admits at most.
    pub spectators: usize,
    /// Overrides of the kinds' declared policies: `(kind or "*", key, value)`, as
    /// `--policy KIND.KEY=VALUE` gives them.
    pub policy: Vec<(String, String, String)>,
    /// How long the record of a match is kept after it ends.
    pub match_retention: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: ([127, 0, 0, 1], 8080).into(),
            stomp_listen: ([127, 0, 0, 1], 7613).into(),
            data_dir: PathBuf::from("data"),
            store: None,
            broker: None,
            role: Role::Both,
            secret: None,
            worker_secret: None,
            timings: Timings::default(),
            allow_guest: false,
            heartbeat: Duration::from_secs(10),
            fsync: false,
            fsync_gap: crate::broker::DEFAULT_FSYNC_GAP,
            http: crate::http::HttpLimits::default(),
            rooms: crate::rooms::RoomSettings::default(),
            input_rate: Rate {
                per_second: 30,
                burst: 60,
            },
            grace: Duration::from_secs(30),
            spectators: 100,
            policy: Vec::new(),
            match_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Config {
    /// A server on free loopback ports with its files in `data_dir`: what tests want.
    pub fn local(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: ([127, 0, 0, 1], 0).into(),
            stomp_listen: ([127, 0, 0, 1], 0).into(),
            data_dir: data_dir.into(),
            ..Config::default()
        }
    }

    /// The store URL: the one given, or SQLite in the data directory.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("game.db").display()))
    }

    /// The token secret: the one given, or the one kept in the data directory.
    pub fn token_secret(&self) -> Result<Vec<u8>> {
        match self.secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => Ok(secret.as_bytes().to_vec()),
            None => stored_secret(&self.data_dir),
        }
    }

    /// What a kind's policy leaves unset comes from here: the server's flags.
    pub fn policy_defaults(&self) -> RoomPolicy {
        RoomPolicy {
            min_players: 1,
            max_players: self.rooms.max_players_per_room,
            inputs_per_second: self.input_rate.per_second,
            input_burst: self.input_rate.burst,
            inbox_bound: None,
            idle_timeout: self.timings.idle_timeout,
            grace: self.grace,
            fsync: self.fsync,
            spectators: self.spectators,
            batch: Duration::ZERO,
            record: crate::policy::Recording::Match,
        }
    }

    /// The embedded broker's settings.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            heartbeat: crate::stomp::HeartBeat::every(self.heartbeat),
            journal: Some(self.data_dir.join("broker.journal")),
            journal_fsync: self.fsync,
            journal_fsync_gap: self.fsync_gap,
            ..BrokerConfig::default()
        }
    }
}

/// The token secret kept in `data_dir/secret`, made on first start, so that tickets
/// outlive a restart of the server.
fn stored_secret(data_dir: &Path) -> Result<Vec<u8>> {
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

/// The longest `--fsync-gap-us`: a tenth of a second more before each receipt is already
/// more than any game would trade for fewer flushes.
const MAX_FSYNC_GAP_US: u64 = 100_000;

/// The defaults of every option: [`Config::default`], the one place they are written.
fn defaults() -> Config {
    Config::default()
}

/// The name this program was started as (the file stem of `argv[0]`: `space-ants`, say),
/// for messages that name it: the framework serves every game, so it has no name of its
/// own to give. `None` when the platform gives none.
pub(crate) fn program() -> Option<String> {
    let argv0 = std::env::args_os().next()?;
    let stem = Path::new(&argv0).file_stem()?;
    Some(stem.to_string_lossy().into_owned())
}

/// The Lambda build `package` deploys: `code` if given, else where `cargo lambda build`
/// puts `program`'s.
pub(crate) fn lambda_code(code: Option<&Path>, program: Option<&str>) -> Result<PathBuf> {
    match (code, program) {
        (Some(code), _) => Ok(code.to_owned()),
        (None, Some(program)) => Ok(Path::new("target/lambda").join(program)),
        (None, None) => Err(crate::Error::Invalid(
            "name the Lambda build to deploy: package --code DIR".into(),
        )),
    }
}

/// Command-line options of a game server.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "A realtime game server: REST lobby, STOMP 1.2 broker and room workers in one process.",
    long_about = "A realtime game server: REST lobby, STOMP 1.2 broker and room workers in one process.\n\n\
        HTTP (lobby, and STOMP over WebSocket at /ws) listens on --listen; plain STOMP over TCP \
        on --stomp-listen. Any STOMP 1.2 client can connect, e.g. stomp.py or @stomp/stompjs.\n\n\
        A receipt means the input is kept: the broker journals it in the data directory before \
        anyone sees it, and a restart (even after kill -9) carries every room on from there. \
        Stop it with Ctrl-C: workers checkpoint and the broker flushes its connections.\n\n\
        Cluster mode: give --broker amqp://… (RabbitMQ) and --store postgres://…, and start any \
        number of --role lobby and --role worker processes with the same --secret. Workers share \
        the rooms; when one dies, another carries its rooms on from their checkpoints."
)]
pub struct Args {
    /// Address for HTTP: the lobby, and STOMP over WebSocket at /ws.
    #[arg(long, default_value_t = defaults().listen, env = "GSL_LISTEN")]
    pub listen: SocketAddr,
    /// Address for STOMP over plain TCP.
    #[arg(long, default_value_t = defaults().stomp_listen, env = "GSL_STOMP_LISTEN")]
    pub stomp_listen: SocketAddr,
    /// Directory for the server's files (messages kept across a restart).
    #[arg(long, default_value_os_t = defaults().data_dir, env = "GSL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Store URL: `sqlite://PATH` or `postgres://USER@HOST/DB` [default: sqlite in --data-dir].
    #[arg(long, env = "GSL_STORE")]
    pub store: Option<String>,
    /// RabbitMQ for cluster mode: `amqp://USER:PASS@HOST:PORT/VHOST`, optionally with
    /// `?stomp_port=61613&web_stomp_port=15674&management_port=15672&quorum=true&max_length=10000&public_host=HOST`
    /// (`scripts/rabbitmq-node start` prints one). RabbitMQ needs its stomp, web_stomp and
    /// management plugins; players log in through the lobby's /rabbitmq/auth routes.
    /// [default: the embedded broker]
    #[arg(long, env = "GSL_BROKER", hide_env_values = true)]
    pub broker: Option<String>,
    /// What this process does in cluster mode: `lobby`, `worker`, or `both`. Any number
    /// of each can share one --broker and one PostgreSQL --store.
    #[arg(long, value_enum, default_value_t = defaults().role, env = "GSL_ROLE")]
    pub role: Role,
    /// Secret that signs join tokens [default: one made on first start, kept in
    /// --data-dir]. Cluster mode needs it, the same for every lobby.
    #[arg(long, env = "GSL_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The room workers' passcode with the embedded broker [default: derived from the
    /// token secret]. In cluster mode workers log in with the --broker URL's user.
    #[arg(long, env = "GSL_WORKER_SECRET", hide_env_values = true)]
    pub worker_secret: Option<String>,
    /// A secret that may end any room and kick any player, as `Authorization: Bearer`,
    /// and opens the inspector (`/inspect`, `/admin/…`) [default: none; only a room's
    /// creator may end it or kick, with the owner token POST /rooms answers].
    #[arg(long, env = "GSL_OPERATOR_SECRET", hide_env_values = true)]
    pub operator_secret: Option<String>,
    /// A room with no input for this many seconds ends.
    #[arg(long, default_value_t = defaults().timings.idle_timeout.as_secs())]
    pub room_idle_secs: u64,
    /// Let `guest`/`guest` use the embedded broker, from loopback only and outside the
    /// rooms' destinations (for general STOMP clients and tests). Off by default: behind a
    /// TLS proxy on the same host, every client comes from loopback.
    #[arg(long)]
    pub guest: bool,
    /// Heart-beat interval the broker offers clients, in milliseconds (0 turns it off).
    #[arg(long, default_value_t = defaults().heartbeat.as_millis() as u64)]
    pub heartbeat_ms: u64,
    /// Inputs a second one player may send, on average; more are dropped (no receipt)
    /// and the player is told on its private destination.
    #[arg(long, default_value_t = defaults().input_rate.per_second)]
    pub inputs_per_second: u32,
    /// Inputs one player may send at once after a quiet spell.
    #[arg(long, default_value_t = defaults().input_rate.burst)]
    pub input_burst: u32,
    /// Live rooms at most.
    #[arg(long, default_value_t = defaults().rooms.max_rooms)]
    pub max_rooms: usize,
    /// Rooms one address may create a minute.
    #[arg(long, default_value_t = defaults().rooms.creations_per_minute)]
    pub room_creations_per_minute: usize,
    /// Players one room may have.
    #[arg(long, default_value_t = defaults().rooms.max_players_per_room)]
    pub max_players_per_room: usize,
    /// Seconds a player whose connections all dropped keeps its seat (the game hears
    /// on_drop, then on_reconnect or, after this, the leave).
    #[arg(long, default_value_t = defaults().grace.as_secs())]
    pub grace_secs: u64,
    /// Spectators one room admits at most.
    #[arg(long, default_value_t = defaults().spectators)]
    pub max_spectators: usize,
    /// Seconds a seat quick play reserved (POST /matchmake) waits for the player's first
    /// connection before it is given up.
    #[arg(long, default_value_t = defaults().rooms.seat_ttl.as_secs())]
    pub seat_ttl_secs: u64,
    /// Seconds after which a ticket in the matchmaking queue (POST /matchmake/queue)
    /// takes a group of any filter.
    #[arg(long, default_value_t = defaults().rooms.queue_widen.as_secs())]
    pub queue_widen_secs: u64,
    /// Overrides a kind's policy, whatever its code declares: KIND.KEY=VALUE (`*.KEY`
    /// for every kind), again for each. Keys: min_players, max_players,
    /// inputs_per_second, input_burst, inbox_bound, idle_secs, grace_secs, fsync,
    /// spectators, batch_ms, record (off, match, or the seconds of play a room that
    /// never ends keeps). The flags above are the defaults for what a kind leaves unset.
    /// In the environment, GSL_POLICY holds them separated by commas.
    #[arg(
        long,
        value_parser = parse_override,
        value_name = "KIND.KEY=VALUE",
        env = "GSL_POLICY",
        value_delimiter = ','
    )]
    pub policy: Vec<(String, String, String)>,
    /// HTTP connections (lobby requests and WebSocket upgrades) open at once; past it a
    /// connection is answered 503, except GET /health.
    #[arg(long, default_value_t = defaults().http.max_connections)]
    pub max_http_connections: usize,
    /// Hours the record of a match (GET /matches) is kept after the match ends.
    #[arg(long, default_value_t = defaults().match_retention.as_secs() / 3600)]
    pub match_retention_hours: u64,
    /// HTTP connections one address may have open at once.
    #[arg(long, default_value_t = defaults().http.max_per_address)]
    pub max_http_connections_per_address: usize,
    /// Flush every input to the disk before the broker's receipt, so that receipted
    /// inputs survive a machine crash (without it they survive the process being killed,
    /// and cost no disk flush). One flush covers every input written while the last ran;
    /// under a steady stream the flusher waits --fsync-gap-us before each, to cover more.
    #[arg(long)]
    pub fsync: bool,
    /// With --fsync (or a kind whose policy asks for it), microseconds the journal's
    /// flusher waits before a flush when more was written while its last flush ran: each
    /// flush then covers more inputs, for less CPU per input and a longer wait for each
    /// receipt under load. An input that finds the flusher idle is flushed at once. 0
    /// never waits; at most 100000 (0.1 s).
    #[arg(
        long,
        value_name = "MICROSECONDS",
        default_value_t = defaults().fsync_gap.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=MAX_FSYNC_GAP_US)
    )]
    pub fsync_gap_us: u64,
    /// Log filter, e.g. `info`, `debug`, or `game_server_less=debug`.
    #[arg(long, default_value = "info,sqlx=warn", env = "RUST_LOG")]
    pub log: String,
    /// Something to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// What the binary can do besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// Writes an AWS SAM template (template.yaml) that deploys this server to AWS Lambda:
    /// the lobby behind an HTTP API and the room workers, with a published version and a
    /// `live` alias. Build first: cargo lambda build --release --arm64 --features lambda
    /// -p PROGRAM; then: sam deploy --guided --template-file DIR/template.yaml
    Package {
        /// Directory to write template.yaml into.
        #[arg(long, default_value = "deploy")]
        out: PathBuf,
        /// The Lambda build to deploy (the directory of its `bootstrap`) [default:
        /// target/lambda/PROGRAM, PROGRAM being this program's name]
        #[arg(long)]
        code: Option<PathBuf>,
    },
    /// Writes a new game's crate: typed messages, handlers, a server with a --bot mode,
    /// TestRoom tests and a README. Then: cd NAME && cargo test && cargo run
    New {
        /// The game's (and its crate's) name: lowercase letters, digits, - or _.
        name: String,
        /// Where to write it (./NAME if not given); must not exist, or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Runs recorded matches again under this build and compares their outputs with
    /// the recorded ones: the deploy gate. Each match is reported identical, or with the
    /// first output that differs (room seq, the input, expected and got). Exits 1 if a
    /// match differs (unless its kind is named with --intended), cannot be run again, or
    /// if there was no match to run. Reads the store given by --store (or the one in
    /// --data-dir, which must exist).
    Replay {
        /// Compare outputs (the gate). Required: watching replays is `game-client --replay`.
        #[arg(long)]
        check: bool,
        /// The latest N ended matches (of those --since picks).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        matches: u32,
        /// Only matches of rooms created in the last this many hours.
        #[arg(long, value_name = "HOURS", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        since: Option<u64>,
        /// Rooms still on too (a room that never ends keeps only its latest stretch,
        /// which runs again from its first keyframe).
        #[arg(long)]
        live: bool,
        /// A kind whose rules this build changes on purpose: its differences are
        /// reported and do not fail the gate. Again for each.
        #[arg(long, value_name = "KIND")]
        intended: Vec<String>,
    },
}

impl Args {
    /// The configuration these options ask for.
    pub fn config(&self) -> Config {
        let defaults = Config::default();
        Config {
            listen: self.listen,
            stomp_listen: self.stomp_listen,
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            broker: self.broker.clone(),
            role: self.role,
            secret: self.secret.clone(),
            worker_secret: self.worker_secret.clone(),
            timings: Timings {
                idle_timeout: Duration::from_secs(self.room_idle_secs),
                ..defaults.timings
            },
            allow_guest: self.guest,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            fsync: self.fsync,
            fsync_gap: Duration::from_micros(self.fsync_gap_us),
            input_rate: Rate {
                per_second: self.inputs_per_second,
                burst: self.input_burst,
            },
            rooms: crate::rooms::RoomSettings {
                operator_secret: self.operator_secret.clone(),
                max_rooms: self.max_rooms,
                creations_per_minute: self.room_creations_per_minute,
                max_players_per_room: self.max_players_per_room,
                seat_ttl: Duration::from_secs(self.seat_ttl_secs),
                queue_widen: Duration::from_secs(self.queue_widen_secs),
                ..defaults.rooms
            },
            grace: Duration::from_secs(self.grace_secs),
            spectators: self.max_spectators,
            policy: self.policy.clone(),
            match_retention: Duration::from_secs(self.match_retention_hours * 3600),
            http: crate::http::HttpLimits {
                max_connections: self.max_http_connections,
                max_per_address: self.max_http_connections_per_address,
                ..defaults.http
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_command_line_without_options_is_the_default_config() {
        let args = Args::try_parse_from(["server"]).unwrap();
        // Config has no PartialEq (its parts are compared by what they print).
        assert_eq!(
            format!("{:?}", args.config()),
            format!("{:?}", Config::default())
        );
    }

    #[test]
    fn policy_overrides_are_parsed_and_bad_ones_refused() {
        let args = Args::try_parse_from([
            "server",
            "--policy",
            "duel.max_players=3",
            "--policy",
            "*.grace_secs=5",
        ])
        .unwrap();
        assert_eq!(
            args.config().policy,
            [
                ("duel".into(), "max_players".into(), "3".into()),
                ("*".into(), "grace_secs".into(), "5".into())
            ]
        );
        let bad = Args::try_parse_from(["server", "--policy", "duel.colour=red"]).unwrap_err();
        assert!(bad.to_string().contains("no policy setting"), "{bad}");
    }

    #[test]
    fn the_fsync_gap_reaches_the_broker_and_a_bad_one_is_refused() {
        let default = Args::try_parse_from(["server"]).unwrap().config();
        let broker = default.broker_config();
        assert_eq!(broker.journal_fsync_gap, crate::broker::DEFAULT_FSYNC_GAP);
        let none = Args::try_parse_from(["server", "--fsync", "--fsync-gap-us", "0"])
            .unwrap()
            .config();
        assert!(none.broker_config().journal_fsync);
        assert_eq!(none.broker_config().journal_fsync_gap, Duration::ZERO);
        let long = Args::try_parse_from(["server", "--fsync-gap-us", "2000"])
            .unwrap()
            .config();
        assert_eq!(
            long.broker_config().journal_fsync_gap,
            Duration::from_millis(2)
        );
        for bad in ["-1", "half", "100001", "99999999999999999999"] {
            let flag = format!("--fsync-gap-us={bad}");
            let error = Args::try_parse_from(["server", flag.as_str()]).unwrap_err();
            assert!(
                error.to_string().contains("--fsync-gap-us"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn an_operator_secret_reaches_the_room_service() {
        let args = Args::try_parse_from(["server", "--operator-secret", "s3"]).unwrap();
        assert_eq!(args.config().rooms.operator_secret.as_deref(), Some("s3"));
    }

    #[test]
    fn the_program_is_named_by_its_binary_and_so_is_its_lambda_build() {
        let program = program().expect("tests have an argv[0]");
        assert!(!program.contains('/'), "{program}");
        let code = lambda_code(None, Some("space-ants")).unwrap();
        assert_eq!(code, Path::new("target/lambda/space-ants"));
        let given = lambda_code(Some(Path::new("dist")), Some("space-ants")).unwrap();
        assert_eq!(given, Path::new("dist"));
        assert!(lambda_code(None, None).is_err());
    }
}
