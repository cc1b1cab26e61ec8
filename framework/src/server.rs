//! The game server process: [`Server`] builds it from a [`Config`], a [`Lobby`] and a
//! [`Msg`](crate::Msg) router; [`Running`] gives the axum [`Router`] (for in-process tests with
//! `oneshot`) and serves it; [`run`] does it all from the command line.
//!
//! ```no_run
//! # async fn demo() -> game_server_less::Result<()> {
//! use game_server_less::{Config, Lobby, Msg, Server};
//!
//! let msg = Msg::new(|| 0u32);
//! let server = Server::new(Config::local("data"), Lobby::new(), msg).start().await?;
//! println!("lobby on http://{}", server.bound().unwrap().http);
//! server.serve(game_server_less::server::shutdown_signal()).await
//! # }
//! ```

use crate::admin::{EmbeddedAdmin, Endpoints};
use crate::auth::Joins;
use crate::auth::{GameAuthorizer, PlayerEvent, RabbitAuth};
use crate::broker::{Broker, BrokerConfig};
use crate::config::{Args, Config, Role, Subcommand};
use crate::http::{harden, HttpLimits};
use crate::lobby::{rabbitmq_auth_router, Lobby};
use crate::names::{Names, WORKER_USER};
use crate::policy::Policies;
use crate::presence;
use crate::rabbit::{redact, RabbitAdmin, RabbitConfig};
use crate::rooms::Rooms;
use crate::store::Store;
use crate::token::{random_id, Signer};
use crate::worker::discovery::Discovery;
use crate::worker::{External, InProcess, Kinds, LateTransfers, WorkerEnv};
use crate::{Error, Result};
use axum::Router;
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running server's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Where HTTP and WebSocket listen.
    pub http: SocketAddr,
    /// Where the embedded broker's STOMP over TCP listens (`None` in cluster mode:
    /// RabbitMQ's is in the tickets).
    pub stomp: Option<SocketAddr>,
}

/// A game server to start: its configuration, lobby routes and kinds of room (each its
/// realtime handlers and queue policy).
pub struct Server {
    config: Config,
    lobby: Lobby,
    kinds: Kinds,
}

impl Server {
    /// A server for `lobby` and `kinds` (a [`crate::Msg`] alone is one kind), set up by
    /// `config`.
    pub fn new(config: Config, lobby: Lobby, kinds: impl Into<Kinds>) -> Server {
        Server {
            config,
            lobby,
            kinds: kinds.into(),
        }
    }

    /// Opens the store, binds the ports and starts the broker side: the embedded
    /// broker's STOMP TCP port and the workers of rooms that were live at the last stop;
    /// or, with a `broker` URL, RabbitMQ's input exchange and this process's role. HTTP
    /// is served by [`Running::serve`]; until then [`Running::router`] answers in process.
    pub async fn start(self) -> Result<Running> {
        let policies = self
            .kinds
            .policies(&self.config.policy_defaults(), &self.config.policy)?;
        // A lobby process answers 503 while PostgreSQL is away; a process with workers
        // waits it out (a worker that gave up would replay its room).
        let store = if self.config.role == crate::config::Role::Lobby {
            Store::open_answering(&self.config.store_url()).await?
        } else {
            Store::open(&self.config.store_url()).await?
        };
        let signer = Signer::new(self.config.token_secret()?);
        match self.config.broker.clone() {
            None => self.start_embedded(store, signer, policies).await,
            Some(url) => self.start_cluster(&url, store, signer, policies).await,
        }
    }

    async fn start_embedded(
        self,
        store: Store,
        signer: Signer,
        policies: Policies,
    ) -> Result<Running> {
        let Server {
            config,
            lobby,
            kinds,
        } = self;
        if config.role != Role::Both {
            return Err(Error::Invalid(
                "--role lobby and --role worker need --broker: the embedded broker lives in one process".into(),
            ));
        }
        let worker_secret = config
            .worker_secret
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| signer.derive("worker"));
        let joins = Joins::default();
        let (events, players_seen) = tokio::sync::mpsc::unbounded_channel();
        let authorizer = game_authorizer(&config, &signer, &joins, &worker_secret, &policies)
            .with_events(events);
        let broker = open_broker(&config, authorizer, &policies)?;
        let (http, bound, tcp_task, admin) = embedded_ports(&config, &broker).await?;
        let (stop_workers, shutdown) = watch::channel(false);
        // The room service carries out the workers' transfers, but needs their launcher
        // first: it is handed to them once it exists.
        let transfers = LateTransfers::default();
        let env = WorkerEnv {
            store: store.clone(),
            admin: admin.clone(),
            transfers: Arc::new(transfers.clone()),
            worker_id: "local".into(),
            login: WORKER_USER.to_owned(),
            passcode: worker_secret,
            timings: config.timings,
            policies: policies.clone(),
            shutdown: shutdown.clone(),
        };
        let workers = InProcess::new(env, kinds);
        let forget = tokio::spawn(forget_old_matches(
            store.clone(),
            config.match_retention,
            shutdown.clone(),
        ));
        let rooms = Rooms::new(
            store,
            signer,
            admin,
            Arc::new(workers.clone()),
            joins,
            config.rooms.clone(),
            policies,
        );
        transfers.set(Arc::new(rooms.clone()));
        let router = harden(
            lobby.into_router(rooms.clone()).merge(broker.ws_router()),
            config.http,
        );
        let resumed = rooms.resume().await?;
        if resumed > 0 {
            tracing::info!("resumed {resumed} live rooms");
        }
        let seats = tokio::spawn(presence::watch(rooms.clone(), Some(players_seen), shutdown));
        Ok(Running {
            rooms: Some(rooms),
            broker: Some(broker),
            router,
            http: Some(http),
            bound: Some(bound),
            workers: Some(workers),
            stop_workers,
            http_limits: config.http,
            tasks: vec![tcp_task, seats, forget],
        })
    }

    async fn start_cluster(
        self,
        url: &str,
        store: Store,
        signer: Signer,
        policies: Policies,
    ) -> Result<Running> {
        let Server {
            config,
            lobby,
            kinds,
        } = self;
        if config.secret.as_deref().is_none_or(str::is_empty) {
            return Err(Error::Invalid(
                "cluster mode needs --secret (or GSL_SECRET), the same for every lobby and worker: each signs tickets (a worker, those of the transfers its rooms ask for) that the others and RabbitMQ's auth backend check".into(),
            ));
        }
        let rabbit = RabbitConfig::parse(url)?;
        let admin = Arc::new(RabbitAdmin::connect(rabbit.clone()).await?);
        let (stop_workers, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut workers = None;
        if config.role.worker() {
            let id = format!("{}-{}", std::process::id(), random_id(4));
            // Transfers go through a room service of the worker's own: rooms are in the
            // store, their workers find them there.
            let transfers = Rooms::new(
                store.clone(),
                signer.clone(),
                admin.clone(),
                Arc::new(External),
                Joins::default(),
                config.rooms.clone(),
                policies.clone(),
            );
            let env = WorkerEnv {
                store: store.clone(),
                admin: admin.clone(),
                transfers: Arc::new(transfers),
                worker_id: id.clone(),
                login: rabbit.user.clone(),
                passcode: rabbit.password.clone(),
                timings: config.timings,
                policies: policies.clone(),
                shutdown: shutdown.clone(),
            };
            let pool = InProcess::new(env, kinds);
            tracing::info!("worker {id} looks for rooms in the store");
            let discovery = Discovery::new(id, store.clone(), pool.clone());
            tasks.push(tokio::spawn(discovery.run(shutdown.clone())));
            workers = Some(pool);
        }
        let (mut rooms, mut http, mut bound, mut router) = (None, None, None, Router::new());
        if config.role.lobby() {
            let listener = bind(config.listen, "--listen").await?;
            bound = Some(Bound {
                http: listener.local_addr()?,
                stomp: None,
            });
            tasks.push(tokio::spawn(forget_old_matches(
                store.clone(),
                config.match_retention,
                shutdown.clone(),
            )));
            let (service, app, seen) = cluster_lobby(
                &config,
                lobby,
                store,
                signer,
                admin.clone(),
                Arc::new(External),
                policies,
            );
            router = app;
            tasks.push(tokio::spawn(presence::watch(
                service.clone(),
                Some(seen),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(presence::watch_rabbitmq(
                service.clone(),
                admin.clone(),
                shutdown.clone(),
            )));
            rooms = Some(service);
            http = Some(listener);
        }
        tracing::info!("cluster mode on RabbitMQ {}", redact(url));
        Ok(Running {
            rooms,
            broker: None,
            router,
            http,
            bound,
            workers,
            stop_workers,
            http_limits: config.http,
            tasks,
        })
    }
}

/// The lobby of cluster mode: the room service over RabbitMQ, and its HTTP app (the
/// game's routes and RabbitMQ's auth backend), with `launcher` starting room workers.
pub(crate) fn cluster_lobby(
    config: &Config,
    lobby: Lobby,
    store: Store,
    signer: Signer,
    admin: Arc<RabbitAdmin>,
    launcher: Arc<dyn crate::worker::Launcher>,
    policies: Policies,
) -> (Rooms, Router, UnboundedReceiver<PlayerEvent>) {
    // What RabbitMQ's auth backend sees of spectators, for the room service.
    let (events, seen) = tokio::sync::mpsc::unbounded_channel();
    let auth =
        RabbitAuth::new(signer.clone(), Names::rabbitmq(), store.clone()).with_events(events);
    let rooms = Rooms::new(
        store.clone(),
        signer.clone(),
        admin,
        launcher,
        Joins::default(),
        config.rooms.clone(),
        policies,
    );
    let router = harden(
        lobby
            .into_router(rooms.clone())
            .merge(rabbitmq_auth_router(auth)),
        config.http,
    );
    (rooms, router, seen)
}

/// A started server: its rooms, broker and addresses, and the HTTP app to serve. In
/// The game's authorizer for the embedded broker: players by their join, workers by
/// `worker_secret`, each player at its room kind's input rate.
fn game_authorizer(
    config: &Config,
    signer: &Signer,
    joins: &Joins,
    worker_secret: &str,
    policies: &Policies,
) -> GameAuthorizer {
    GameAuthorizer::new(
        signer.clone(),
        Names::embedded(),
        joins.clone(),
        worker_secret.to_owned(),
        config.allow_guest,
    )
    .with_policies(policies.clone())
}

/// The embedded broker, its journal opened: room inboxes are managed queues, and
/// `authorizer` checks every connection.
fn open_broker(config: &Config, authorizer: GameAuthorizer, policies: &Policies) -> Result<Broker> {
    let broker_config = BrokerConfig {
        managed_prefixes: vec![Names::embedded().inbox_prefix().to_owned()],
        // Each inbox waits for the disk as its kind says: the journal flushes if any does.
        journal_fsync: config.fsync || policies.any_fsync(),
        ..config.broker_config()
    };
    Ok(Broker::open(broker_config, Arc::new(authorizer))?)
}

/// cluster mode a worker-only process has no lobby and listens on nothing.
pub struct Running {
    rooms: Option<Rooms>,
    broker: Option<Broker>,
    router: Router,
    http: Option<TcpListener>,
    bound: Option<Bound>,
    workers: Option<InProcess>,
    stop_workers: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    http_limits: HttpLimits,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Where the lobby listens (HTTP) and where players reach STOMP over TCP; `None` for
    /// a worker-only process.
    pub fn bound(&self) -> Option<Bound> {
        self.bound
    }

    /// The room service; `None` for a worker-only process.
    pub fn rooms(&self) -> Option<&Rooms> {
        self.rooms.as_ref()
    }

    /// The embedded broker; `None` in cluster mode.
    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// The whole HTTP app (lobby, the game's routes, and STOMP over WebSocket at `/ws`
    /// or RabbitMQ's auth routes), to drive in process with `tower::ServiceExt::oneshot`
    /// or to serve elsewhere.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves HTTP (if this process has a lobby) until `shutdown` resolves, then stops
    /// gracefully: workers checkpoint and ack, the embedded broker flushes its
    /// connections and keeps undelivered messages in the spool.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_http, http_stopped) = watch::channel(false);
        let http_task = self.http.map(|listener| {
            tokio::spawn(crate::http::serve(
                listener,
                self.router,
                self.http_limits,
                http_stopped,
                Duration::from_secs(5),
            ))
        });
        shutdown.await;
        tracing::info!("shutting down: workers checkpoint, then connections flush");
        // Workers checkpoint and ack first, so the broker keeps only unapplied inputs.
        let _ = self.stop_workers.send(true);
        if let Some(workers) = &self.workers {
            workers.wait(Duration::from_secs(5)).await;
        }
        if let Some(broker) = &self.broker {
            broker.shutdown(Duration::from_secs(5)).await?;
        }
        let _ = stop_http.send(true);
        if let Some(task) = http_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The embedded broker's ports, bound: the lobby's HTTP (STOMP over WebSocket at `/ws`)
/// and STOMP over TCP, which is served at once (the task logs its failure); and the
/// broker admin that names them in tickets.
async fn embedded_ports(
    config: &Config,
    broker: &Broker,
) -> Result<(TcpListener, Bound, JoinHandle<()>, Arc<EmbeddedAdmin>)> {
    let http = bind(config.listen, "--listen").await?;
    let stomp = bind(config.stomp_listen, "--stomp-listen").await?;
    let bound = Bound {
        http: http.local_addr()?,
        stomp: Some(stomp.local_addr()?),
    };
    let stomp_addr = stomp.local_addr()?;
    let serving = tokio::spawn(broker.clone().serve_tcp(stomp));
    let tcp_task = tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!("the STOMP TCP port failed: {e}");
        }
    });
    let admin = Arc::new(EmbeddedAdmin::new(
        broker.clone(),
        Endpoints::one(
            format!("ws://{}/ws", bound.http),
            format!("tcp://{stomp_addr}"),
            format!("tcp://{stomp_addr}"),
            "/".into(),
        ),
    ));
    Ok((http, bound, tcp_task, admin))
}

/// Forgets, at the start and then hourly, the records of matches that ended more than
/// `keep` ago, until `shutdown`.
async fn forget_old_matches(store: Store, keep: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => return,
            _ = every.tick() => match store.forget_matches(keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("forgot {n} segments of match records older than the retention"),
                Err(e) => tracing::warn!("cannot forget old match records: {e}"),
            },
        }
    }
}

async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ({flag}): {e}; is another server running? Pick another port with {flag}"),
        ))
    })
}

/// Starts logging at `filter` (once per process; later calls do nothing).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Runs a game server from the command line (see `--help`): the lobby with the game's
/// routes, the embedded broker, and a worker per room running the handlers of its kind
/// (a [`crate::Msg`] alone is one kind). Returns when the server has shut down after
/// Ctrl-C or SIGTERM.
pub async fn run(lobby: Lobby, kinds: impl Into<Kinds>) -> Result<()> {
    let args = Args::parse();
    // The framework serves every game: it names the one it runs by its program's name.
    let program = crate::config::program();
    match &args.command {
        Some(Subcommand::New { name, dir }) => return new_game(name, dir.as_deref()),
        Some(Subcommand::Package { out, code }) => {
            return package(out, code.as_deref(), program.as_deref())
        }
        _ => {}
    }
    let kinds = kinds.into();
    if let Some(Subcommand::Replay {
        check,
        matches,
        since,
        live,
        intended,
    }) = &args.command
    {
        if !check {
            return Err(Error::Invalid(
                "replay wants --check (run recorded matches again and compare); to watch one, use the game's client with --replay MATCH".into(),
            ));
        }
        let options = crate::replay::CheckOptions {
            matches: *matches,
            since: since.map(|hours| crate::store::now_secs() - hours as i64 * 3600),
            live: *live,
            intended: intended.clone(),
        };
        if !replay_check(&args.config(), &kinds, &options).await? {
            std::process::exit(1);
        }
        return Ok(());
    }
    init_logging(&args.log);
    let server = Server::new(args.config(), lobby, kinds).start().await?;
    print_listening(program.as_deref().unwrap_or("server"), &server);
    println!("Press Ctrl-C to stop.");
    server.serve(shutdown_signal()).await
}

/// `new NAME`: writes a new game's crate into `dir` (./NAME if not given).
fn new_game(name: &str, dir: Option<&std::path::Path>) -> Result<()> {
    let started = std::time::Instant::now();
    let dir = dir.map_or_else(
        || std::path::PathBuf::from(name),
        std::path::Path::to_path_buf,
    );
    let files = crate::scaffold::write(&dir, name, &crate::scaffold::framework_dir())?;
    for file in &files {
        println!("wrote {}", file.display());
    }
    println!(
        "created the game {name} in {} ({} ms). Next:\n  cd {}\n  cargo test             # its rules\n  cargo run              # its server\n  cargo run -- --bot 2   # two bots playing, in another terminal",
        dir.display(),
        started.elapsed().as_millis(),
        dir.display()
    );
    Ok(())
}

/// `package`: writes the AWS SAM template of the Lambda build `code` of `program`.
fn package(
    out: &std::path::Path,
    code: Option<&std::path::Path>,
    program: Option<&str>,
) -> Result<()> {
    let code = crate::config::lambda_code(code, program)?;
    let code = std::path::absolute(code)?;
    let path = crate::package::write(out, &code)?;
    if !code.join("bootstrap").exists() {
        let build = "cargo lambda build --release --arm64 --features lambda";
        let package = program.map(|p| format!(" -p {p}")).unwrap_or_default();
        println!(
            "note: {} has no bootstrap yet: {build}{package}",
            code.display()
        );
    }
    println!("wrote {}", path.display());
    println!(
        "deploy: sam deploy --guided --template-file {} (see the README's \"Deploy to AWS\")",
        path.display()
    );
    Ok(())
}

/// `replay --check`: runs the recorded matches `options` picks from `config`'s store
/// again under `kinds` and prints the report; whether the build passed (`false` too
/// when there was no match to run).
async fn replay_check(
    config: &Config,
    kinds: &Kinds,
    options: &crate::replay::CheckOptions,
) -> Result<bool> {
    let policies = kinds.policies(&config.policy_defaults(), &config.policy)?;
    let url = config.store_url();
    // A gate pointed at no store must not pass on an empty one it made.
    if let Some(path) = url.strip_prefix("sqlite://") {
        if !std::path::Path::new(path).exists() {
            return Err(Error::Invalid(format!(
                "no store at {path}: give the one the server uses (--store, or its --data-dir)"
            )));
        }
    }
    let store = Store::open(&url).await?;
    let report = crate::replay::check(&store, kinds, &policies, options).await?;
    print!("{}", report.text());
    if report.matches.is_empty() {
        eprintln!(
            "no recorded match to run again in {} (recording is per kind: Policy::record)",
            crate::rabbit::redact(&url)
        );
        return Ok(false);
    }
    Ok(report.passed())
}

/// Says where a started server listens, and how to play.
fn print_listening(program: &str, server: &Running) {
    // Which client plays is the game's to know: the hint names none.
    let play = |http: SocketAddr| {
        format!("Play: the game's client (or its bots, --bot 2) with --server http://{http}, or any STOMP client through the lobby")
    };
    match (server.bound(), server.bound().and_then(|b| b.stomp)) {
        (Some(bound), Some(stomp)) => {
            println!("{program} listening:");
            println!("  lobby     http://{}/rooms", bound.http);
            println!("  STOMP/WS  ws://{}/ws", bound.http);
            println!("  STOMP/TCP tcp://{stomp}");
            println!("{}", play(bound.http));
        }
        (Some(bound), None) => {
            println!("{program} lobby (cluster mode) listening:");
            println!("  lobby     http://{}/rooms", bound.http);
            println!(
                "  RabbitMQ auth backend: http://{}/rabbitmq/auth/",
                bound.http
            );
            println!("{}", play(bound.http));
        }
        (None, _) => println!("{program} worker (cluster mode): running rooms"),
    }
}
