//! The all-in-one server process: the command line, the HTTP port (lobby and STOMP over
//! WebSocket at `/ws`), the STOMP TCP port, and a graceful shutdown on Ctrl-C or SIGTERM.

use crate::broker::{Broker, BrokerConfig};
use crate::Result;
use axum::Router;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;

/// Command-line options of a game server.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "A realtime game server: REST lobby, STOMP 1.2 broker and room workers in one process.",
    long_about = "A realtime game server: REST lobby, STOMP 1.2 broker and room workers in one process.\n\n\
        HTTP (lobby, and STOMP over WebSocket at /ws) listens on --listen; plain STOMP over TCP \
        on --stomp-listen. Any STOMP 1.2 client can connect, e.g. stomp.py or @stomp/stompjs.\n\n\
        Stop it with Ctrl-C: it refuses new messages, flushes what it has, and keeps messages \
        nobody has received yet in the data directory for the next start."
)]
pub struct Args {
    /// Address for HTTP: the lobby, and STOMP over WebSocket at /ws.
    #[arg(long, default_value = "127.0.0.1:8080", env = "GSL_LISTEN")]
    pub listen: SocketAddr,
    /// Address for STOMP over plain TCP.
    #[arg(long, default_value = "127.0.0.1:7613", env = "GSL_STOMP_LISTEN")]
    pub stomp_listen: SocketAddr,
    /// Directory for the server's files (messages kept across a restart).
    #[arg(long, default_value = "data", env = "GSL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Store URL: `sqlite://PATH` or `postgres://USER@HOST/DB` [default: sqlite in --data-dir].
    #[arg(long, env = "GSL_STORE")]
    pub store: Option<String>,
    /// External broker URL for cluster mode (reserved; not supported yet).
    #[arg(long, env = "GSL_BROKER")]
    pub broker: Option<String>,
    /// Secret that signs join tokens [default: one made on first start, kept in --data-dir].
    #[arg(long, env = "GSL_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A room with no input for this many seconds ends.
    #[arg(long, default_value_t = 900)]
    pub room_idle_secs: u64,
    /// Refuse the broker's `guest`/`guest` login (otherwise allowed from loopback, outside
    /// the rooms' destinations).
    #[arg(long)]
    pub no_guest: bool,
    /// Heart-beat interval the broker offers clients, in milliseconds (0 turns it off).
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_ms: u64,
    /// Log filter, e.g. `info`, `debug`, or `game_server_less=debug`.
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    pub log: String,
}

impl Args {
    /// The broker settings these options ask for.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            heartbeat: (self.heartbeat_ms, self.heartbeat_ms),
            spool: Some(self.data_dir.join("broker-spool.stomp")),
            ..BrokerConfig::default()
        }
    }
}

/// Starts logging at `filter` (once per process; later calls do nothing).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// A running server's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Where HTTP and WebSocket listen.
    pub http: SocketAddr,
    /// Where STOMP over TCP listens.
    pub stomp: SocketAddr,
}

/// Both listening sockets, bound.
#[derive(Debug)]
pub struct Listeners {
    http: TcpListener,
    stomp: TcpListener,
    /// Their addresses.
    pub bound: Bound,
}

/// Binds the HTTP and STOMP ports that `args` name.
pub async fn bind(args: &Args) -> Result<Listeners> {
    let http = bind_one(args.listen, "--listen").await?;
    let stomp = bind_one(args.stomp_listen, "--stomp-listen").await?;
    let bound = Bound {
        http: http.local_addr()?,
        stomp: stomp.local_addr()?,
    };
    Ok(Listeners { http, stomp, bound })
}

/// Serves `app` (with the broker's `/ws` merged in) and STOMP over TCP until `shutdown`
/// resolves, then shuts the broker down gracefully.
pub async fn serve(
    listeners: Listeners,
    broker: Broker,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Listeners { http, stomp, .. } = listeners;
    let app = app.merge(broker.ws_router());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(
            http,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        })
        .await
    });
    let tcp_task = tokio::spawn(broker.clone().serve_tcp(stomp));

    shutdown.await;
    tracing::info!("shutting down: flushing connections");
    broker.shutdown(Duration::from_secs(5)).await?;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    let _ = tcp_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn bind_one(addr: SocketAddr, flag: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ({flag}): {e}; is another server running? Pick another port with {flag}"),
        ))
    })
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
