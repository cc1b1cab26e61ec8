//! The game server process: [`Server`] builds it from a [`Config`], a [`Lobby`] and a
//! [`Msg`] router; [`Running`] gives the axum [`Router`] (for in-process tests with
//! `oneshot`) and serves it; [`run`] does it all from the command line.
//!
//! ```no_run
//! # async fn demo() -> game_server_less::Result<()> {
//! use game_server_less::{Config, Lobby, Msg, Server};
//!
//! let msg = Msg::new(|| 0u32);
//! let server = Server::new(Config::local("data"), Lobby::new(), msg).start().await?;
//! println!("lobby on http://{}", server.bound().http);
//! server.serve(game_server_less::server::shutdown_signal()).await
//! # }
//! ```

use crate::admin::{EmbeddedAdmin, Endpoints};
use crate::auth::GameAuthorizer;
use crate::broker::{Broker, BrokerConfig};
use crate::config::{Args, Config};
use crate::lobby::Lobby;
use crate::msg::Msg;
use crate::names::{Names, WORKER_USER};
use crate::rooms::Rooms;
use crate::store::Store;
use crate::token::Signer;
use crate::worker::{InProcess, WorkerEnv};
use crate::{Error, Result};
use axum::Router;
use clap::Parser;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running server's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Where HTTP and WebSocket listen.
    pub http: SocketAddr,
    /// Where STOMP over TCP listens.
    pub stomp: SocketAddr,
}

/// A game server to start: its configuration, lobby routes and realtime handlers.
pub struct Server<S> {
    config: Config,
    lobby: Lobby,
    msg: Msg<S>,
}

impl<S> Server<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// A server for `lobby` and `msg`, set up by `config`.
    pub fn new(config: Config, lobby: Lobby, msg: Msg<S>) -> Server<S> {
        Server { config, lobby, msg }
    }

    /// Opens the store, binds the ports, starts the embedded broker's STOMP TCP port and
    /// the workers of rooms that were live at the last stop. HTTP is served by
    /// [`Running::serve`]; until then [`Running::router`] answers in process.
    pub async fn start(self) -> Result<Running> {
        let Server { config, lobby, msg } = self;
        if let Some(url) = &config.broker {
            return Err(Error::Url {
                url: url.clone(),
                why: "an external broker (cluster mode) is not supported yet; leave --broker out to use the embedded one".into(),
            });
        }
        let store = Store::open(&config.store_url()).await?;
        let signer = Signer::new(config.token_secret()?);
        let worker_secret = config
            .worker_secret
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| signer.derive("worker"));
        let names = Names::embedded();
        let authorizer = GameAuthorizer::new(
            signer.clone(),
            names.clone(),
            worker_secret.clone(),
            config.allow_guest,
        );
        let broker_config = BrokerConfig {
            managed_prefixes: vec![names.inbox_prefix().to_owned()],
            ..config.broker_config()
        };
        let broker = Broker::with_authorizer(broker_config, Arc::new(authorizer));
        let http = bind(config.listen, "--listen").await?;
        let stomp = bind(config.stomp_listen, "--stomp-listen").await?;
        let bound = Bound {
            http: http.local_addr()?,
            stomp: stomp.local_addr()?,
        };
        let tcp_task = tokio::spawn(broker.clone().serve_tcp(stomp));
        let admin = Arc::new(EmbeddedAdmin::new(
            broker.clone(),
            Endpoints {
                ws_url: format!("ws://{}/ws", bound.http),
                tcp_url: format!("tcp://{}", bound.stomp),
                worker_url: format!("tcp://{}", bound.stomp),
            },
        ));
        let (stop_workers, shutdown) = watch::channel(false);
        let env = WorkerEnv {
            store: store.clone(),
            admin: admin.clone(),
            login: WORKER_USER.to_owned(),
            passcode: worker_secret,
            timings: config.timings,
            shutdown,
        };
        let workers = InProcess::new(env, msg);
        let rooms = Rooms::new(
            store,
            signer,
            admin,
            Arc::new(workers.clone()),
            config.ticket_ttl,
        );
        let router = lobby.into_router(rooms.clone()).merge(broker.ws_router());
        let resumed = rooms.resume().await?;
        if resumed > 0 {
            tracing::info!("resumed {resumed} live rooms");
        }
        Ok(Running {
            rooms,
            broker,
            router,
            http,
            bound,
            workers,
            stop_workers,
            tcp_task,
        })
    }
}

/// A started server: its rooms, broker and addresses, and the HTTP app to serve.
pub struct Running {
    rooms: Rooms,
    broker: Broker,
    router: Router,
    http: TcpListener,
    bound: Bound,
    workers: InProcess,
    stop_workers: watch::Sender<bool>,
    tcp_task: JoinHandle<Result<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Where it listens.
    pub fn bound(&self) -> Bound {
        self.bound
    }

    /// The room service.
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// The embedded broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The whole HTTP app (lobby, the game's routes, STOMP over WebSocket at `/ws`), to
    /// drive in process with `tower::ServiceExt::oneshot` or to serve elsewhere.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves HTTP until `shutdown` resolves, then stops gracefully: workers checkpoint
    /// and ack, the broker flushes its connections and keeps undelivered messages in
    /// the spool.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_http, mut http_stopped) = watch::channel(false);
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let http = axum::serve(self.http, service).with_graceful_shutdown(async move {
            let _ = http_stopped.wait_for(|s| *s).await;
        });
        let http_task = tokio::spawn(async move { http.await });
        shutdown.await;
        tracing::info!("shutting down: workers checkpoint, then connections flush");
        // Workers checkpoint and ack first, so the broker keeps only unapplied inputs.
        let _ = self.stop_workers.send(true);
        self.workers.wait(Duration::from_secs(5)).await;
        self.broker.shutdown(Duration::from_secs(5)).await?;
        let _ = stop_http.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
        let _ = self.tcp_task.await;
        tracing::info!("stopped");
        Ok(())
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
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
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
/// routes, the embedded broker, and a worker per room running `msg`'s handlers. Returns
/// when the server has shut down after Ctrl-C or SIGTERM.
pub async fn run<S>(lobby: Lobby, msg: Msg<S>) -> Result<()>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let args = Args::parse();
    init_logging(&args.log);
    let server = Server::new(args.config(), lobby, msg).start().await?;
    let bound = server.bound();
    println!("game-server listening:");
    println!("  lobby     http://{}/rooms", bound.http);
    println!("  STOMP/WS  ws://{}/ws", bound.http);
    println!("  STOMP/TCP tcp://{}", bound.stomp);
    println!(
        "Play: cargo run -p game-client -- --server http://{}",
        bound.http
    );
    println!("Press Ctrl-C to stop.");
    server.serve(shutdown_signal()).await
}
