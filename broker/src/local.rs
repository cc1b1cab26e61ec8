//! A broker of its own on loopback ports, for tests and benchmarks that want real
//! sockets.

/// A broker of its own on loopback ports, for tests and benchmarks: STOMP over TCP and
/// over WebSocket at `/ws`.
pub struct LocalBroker {
    /// The broker.
    pub broker: super::Broker,
    /// `tcp://127.0.0.1:PORT`.
    pub tcp_url: String,
    /// `ws://127.0.0.1:PORT/ws`.
    pub ws_url: String,
    /// The TCP port's address, for raw sockets.
    pub tcp_addr: std::net::SocketAddr,
}

impl LocalBroker {
    /// Starts a broker with `config` on two free loopback ports.
    pub async fn start(config: super::BrokerConfig) -> std::io::Result<LocalBroker> {
        Self::start_with(super::Broker::new(config)).await
    }

    /// Serves `broker` on two free loopback ports.
    pub async fn start_with(broker: super::Broker) -> std::io::Result<LocalBroker> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tcp_addr = tcp.local_addr()?;
        tokio::spawn(broker.clone().serve_tcp(tcp));
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_addr = http.local_addr()?;
        let app: axum::Router = broker.ws_router();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(http, service).await
        });
        Ok(LocalBroker {
            broker,
            tcp_url: format!("tcp://{tcp_addr}"),
            ws_url: format!("ws://{http_addr}/ws"),
            tcp_addr,
        })
    }

    /// Both URLs, TCP first.
    pub fn urls(&self) -> [&str; 2] {
        [&self.tcp_url, &self.ws_url]
    }
}
