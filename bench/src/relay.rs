//! The relay: the embedded broker alone, serving STOMP over WebSocket with no room
//! worker, no journal and no store. Each player subscribes to its room's topic and
//! publishes its moves there, already in the form of the room's answer, so every input
//! costs what the STOMP path itself costs: a SEND parsed, published, and a MESSAGE
//! written to each of the room's players. Beside the floor, it shows how much of the
//! all-in-one server's cost per input the protocol and the broker take before any room
//! runs.

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

/// Serves the relay on `listener` until the process ends.
pub(crate) async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let broker = stomp_broker::Broker::new(stomp_broker::BrokerConfig::default());
    let app: axum::Router = broker.ws_router();
    // As the game server's lobby does: without it, a small frame after another waits for
    // the peer's delayed ACK (some 40 ms).
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
