//! Serving the broker: TCP listener, the axum WebSocket route, and the shutdown spool.

use super::{session, Broker};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::Extensions;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::BytesMut;
use futures_util::StreamExt;
use std::io::{Error, ErrorKind, Result};
use std::net::SocketAddr;
use std::path::Path;
use stomp::{parse, Command, Frame, FrameError, Parsed, Transport, Wire, WsIn};
use tokio::net::TcpListener;

/// The WebSocket subprotocols the broker accepts, best first (as RabbitMQ's web-stomp).
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];
/// Bytes read from a WebSocket at a time. tungstenite zeroes this much of its buffer
/// before every read; a player's frame is a few hundred bytes.
const WS_READ_BUFFER: usize = 1024;
/// Frames in flight each way on an in-memory connection.
const IN_MEMORY_CAPACITY: usize = 1024;

impl Broker {
    /// Accepts STOMP connections on `listener` until the broker shuts down.
    pub async fn serve_tcp(self, listener: TcpListener) -> Result<()> {
        let mut shutdown = self.shutdown.subscribe();
        let limits = self.lock().config().limits;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            };
            match accepted {
                Ok((stream, peer)) => {
                    let broker = self.clone();
                    self.tasks.spawn(async move {
                        session::run(broker, Transport::tcp(stream, limits), Some(peer)).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A connection to the broker in memory (see [`Transport::pair`]): the client's end,
    /// with the broker's served like any other connection. For clients in the broker's
    /// own process, which then pay for no socket.
    pub fn connect_in_memory(&self) -> Transport {
        let (client, server) = Transport::pair(IN_MEMORY_CAPACITY);
        let broker = self.clone();
        self.tasks
            .spawn(async move { session::run(broker, server, None).await });
        client
    }

    /// A router serving STOMP over WebSocket at `/ws`, to merge into an axum app.
    ///
    /// Serve the app with `into_make_service_with_connect_info::<SocketAddr>()` so the
    /// broker knows each peer's address (its authorizer may need it).
    pub fn ws_router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/ws", get(upgrade))
            .with_state(self.clone())
    }

    /// Serves one WebSocket that is already upgraded.
    pub async fn serve_websocket(self, socket: WebSocket, peer: Option<SocketAddr>) {
        let limits = self.lock().config().limits;
        let (sink, stream) = socket.split();
        let stream = stream.map(move |msg| match msg {
            // A text message's bytes, as they are (not copied).
            Ok(text @ Message::Text(_)) => Ok(WsIn::Data(text.into_data())),
            Ok(Message::Binary(b)) => Ok(WsIn::Data(b)),
            Ok(Message::Close(_)) => Ok(WsIn::Close),
            Ok(_) => Ok(WsIn::Ignore),
            // A message over the WebSocket limit is an oversized frame: say so.
            Err(e) if e.to_string().contains("Space limit exceeded") => Err(stomp::Error::Frame(
                FrameError::TooLarge(limits.max_frame_bytes),
            )),
            Err(e) => Err(stomp::Error::WebSocket(e.to_string())),
        });
        // A frame known to be text where it was encoded is not read through again.
        let message = |wire: Wire| match wire.into_text::<Utf8Bytes>() {
            Ok(text) => Message::Text(text),
            Err(bytes) => Message::Binary(bytes),
        };
        let transport = Transport::websocket(stream, sink, message, limits);
        session::run(self, transport, peer).await;
    }
}

async fn upgrade(
    State(broker): State<Broker>,
    extensions: Extensions,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let limits = broker.lock().config().limits;
    let tasks = broker.tasks.clone();
    // Oversized STOMP frames are refused by the STOMP parser, which says why in an ERROR
    // frame; the WebSocket limit only bounds what one message may make us buffer.
    let ws_limit = limits
        .max_frame_bytes
        .saturating_mul(4)
        .saturating_add(1024);
    ws.protocols(SUBPROTOCOLS)
        // tungstenite zeroes this much buffer before every read: game messages are
        // small, and 128 KiB (its default) cost more in memset than in parsing.
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(ws_limit)
        .max_frame_size(ws_limit)
        .on_upgrade(move |socket| {
            let broker_task = broker.serve_websocket(socket, peer);
            async move {
                // Tracked so that a graceful shutdown waits for WebSocket sessions too.
                let _ = tasks.spawn(broker_task).await;
            }
        })
}

/// Writes undelivered queue messages to `path` as SEND frames; returns how many.
pub(super) fn write_spool(broker: &Broker, path: &Path) -> Result<usize> {
    let messages = broker.lock().undelivered();
    if messages.is_empty() {
        return Ok(0);
    }
    let mut buf = BytesMut::new();
    for (destination, headers, body) in &messages {
        let mut frame = Frame::new(Command::Send).with_header("destination", destination.clone());
        frame.headers.extend(headers.iter().cloned());
        frame.body = body.clone();
        frame.encode(&mut buf);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &buf)?;
    std::fs::rename(&tmp, path)?;
    Ok(messages.len())
}

/// Re-publishes what [`write_spool`] kept, then removes the spool; returns how many.
pub(super) fn restore_spool(broker: &Broker, path: &Path) -> Result<usize> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let limits = stomp::Limits {
        max_frame_bytes: usize::MAX,
        ..broker.lock().config().limits
    };
    let mut rest = &bytes[..];
    let mut n = 0;
    while !rest.is_empty() {
        let bad =
            |why: String| Error::new(ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        match parse(rest, &limits).map_err(|e| bad(e.to_string()))? {
            Parsed::Frame(mut frame, len) => {
                rest = &rest[len..];
                let destination = frame.header("destination").unwrap_or_default().to_owned();
                frame
                    .headers
                    .retain(|(n, _)| n != "destination" && n != "content-length");
                broker
                    .restore(&destination, frame.headers, frame.body)
                    .map_err(|r| bad(r.to_string()))?;
                n += 1;
            }
            Parsed::Heartbeat(len) => rest = &rest[len..],
            Parsed::Incomplete => return Err(bad("it ends in the middle of a frame".into())),
        }
    }
    std::fs::remove_file(path)?;
    Ok(n)
}
