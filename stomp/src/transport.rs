//! The client side's sockets, and the codec on any stream: frames over TCP (a tokio-util
//! codec) and over WebSocket (frames carried in WS messages, text or binary), behind one
//! [`Transport`]. A server accepts its own connections and wraps them
//! ([`Transport::tcp`], [`Transport::websocket`]).

use super::frame::{parse, Frame, Limits, Parsed, Wire};
use crate::{Error, Result};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// What travels on a STOMP connection: a frame, or a sign of life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A whole frame.
    Frame(Frame),
    /// A heart-beat (EOLs between frames), or more bytes of a frame still arriving: either
    /// way the peer is alive ("any new data" counts, says STOMP 1.2).
    Heartbeat,
    /// A whole frame already in wire form (a broker's MESSAGE, whose common part is
    /// encoded once for all its subscribers). Only ever sent; incoming streams yield
    /// [`Item::Frame`].
    Encoded(Wire),
}

/// An incoming stream yielded [`Item::Encoded`], which only outgoing sinks take.
pub fn unexpected_encoded() -> Error {
    Error::Protocol("a pre-encoded frame came in; incoming streams yield frames".into())
}

/// The STOMP codec for byte streams (TCP): [`parse`] and [`Frame::encode`] behind
/// tokio-util's `Decoder`/`Encoder`.
#[derive(Debug, Clone, Default)]
pub struct StompCodec {
    limits: Limits,
    /// Buffered bytes of an incomplete frame when last reported, to report progress once.
    pending: usize,
}

impl StompCodec {
    /// A codec that enforces `limits` on incoming frames.
    pub fn new(limits: Limits) -> StompCodec {
        StompCodec { limits, pending: 0 }
    }
}

impl Decoder for StompCodec {
    type Item = Item;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Item>> {
        // An incomplete frame completes only with its closing NUL, which must be among the
        // new bytes: until one comes, skip the re-parse, so a frame trickled in byte by
        // byte costs linear time, not quadratic.
        if self.pending > 0 && src.len() > self.pending && !src[self.pending..].contains(&0) {
            if src.len() >= self.limits.max_frame_bytes {
                return Err(crate::FrameError::TooLarge(self.limits.max_frame_bytes).into());
            }
            self.pending = src.len();
            return Ok(Some(Item::Heartbeat));
        }
        match parse(src, &self.limits)? {
            Parsed::Frame(frame, len) => {
                src.advance(len);
                self.pending = 0;
                Ok(Some(Item::Frame(frame)))
            }
            Parsed::Heartbeat(len) => {
                src.advance(len);
                self.pending = 0;
                Ok(Some(Item::Heartbeat))
            }
            // New bytes of a frame still arriving are a sign of life, reported once.
            Parsed::Incomplete if src.len() > self.pending => {
                self.pending = src.len();
                Ok(Some(Item::Heartbeat))
            }
            Parsed::Incomplete => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Item>> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(Error::Closed(format!(
                "peer closed in the middle of a frame ({} bytes buffered)",
                src.len()
            ))),
        }
    }
}

impl Encoder<Item> for StompCodec {
    type Error = Error;

    fn encode(&mut self, item: Item, dst: &mut BytesMut) -> Result<()> {
        match item {
            Item::Frame(frame) => frame.encode(dst),
            Item::Heartbeat => dst.extend_from_slice(b"\n"),
            Item::Encoded(wire) => dst.extend_from_slice(wire.as_bytes()),
        }
        Ok(())
    }
}

/// Incoming items, whatever the socket.
pub type ItemStream = Pin<Box<dyn Stream<Item = Result<Item>> + Send>>;
/// Outgoing items, whatever the socket.
pub type ItemSink = Pin<Box<dyn Sink<Item, Error = Error> + Send>>;

/// A STOMP connection's two halves, over TCP or WebSocket.
pub struct Transport {
    /// Frames and heart-beats from the peer; `None` when it closed cleanly.
    pub incoming: ItemStream,
    /// Frames and heart-beats to the peer.
    pub outgoing: ItemSink,
    /// An in-memory connection ([`Transport::pair`]): frames pass as values, so there is
    /// nothing to gain from sending them already encoded.
    pub in_memory: bool,
}

/// A WebSocket message reduced to what STOMP cares about.
#[derive(Debug)]
pub enum WsIn {
    /// Text or binary payload.
    Data(Bytes),
    /// The peer's close frame.
    Close,
    /// Ping, pong: nothing for STOMP.
    Ignore,
}

/// A WebSocket library's message sink as a sink of STOMP items: each item becomes one
/// message by a plain function, with no future per item as a `SinkExt::with` chain would
/// poll. A frame goes as text when it is UTF-8 (browsers' STOMP clients prefer it) and as
/// binary otherwise: the function is given a [`Wire`], whose [`Wire::into_text`] says
/// which. The library's errors become [`Error::WebSocket`].
struct WsItems<S, M> {
    messages: S,
    message: fn(Wire) -> M,
}

impl<S, M> Sink<Item> for WsItems<S, M>
where
    S: Sink<M> + Unpin,
    S::Error: std::fmt::Display,
{
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.messages)
            .poll_ready(cx)
            .map_err(ws_error)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Item) -> Result<()> {
        let wire = match item {
            Item::Heartbeat => Wire::Bytes(Bytes::from_static(b"\n")),
            Item::Frame(frame) => Wire::Bytes(frame.to_bytes()),
            Item::Encoded(wire) => wire,
        };
        let message = (self.message)(wire);
        Pin::new(&mut self.messages)
            .start_send(message)
            .map_err(ws_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.messages)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.messages)
            .poll_close(cx)
            .map_err(ws_error)
    }
}

fn ws_error(e: impl std::fmt::Display) -> Error {
    Error::WebSocket(e.to_string())
}

impl Transport {
    /// STOMP over a TCP stream.
    pub fn tcp(stream: TcpStream, limits: Limits) -> Transport {
        let _ = stream.set_nodelay(true);
        Transport::bytes(stream, limits)
    }

    /// STOMP over any byte stream (TCP, TLS over TCP).
    fn bytes<S>(stream: S, limits: Limits) -> Transport
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (sink, stream) = Framed::new(stream, StompCodec::new(limits)).split();
        Transport {
            incoming: Box::pin(stream),
            outgoing: Box::pin(sink),
            in_memory: false,
        }
    }

    /// STOMP over any WebSocket, given as a stream of incoming and a sink of outgoing
    /// messages, with `message`, which makes a frame in wire form the library's message
    /// (text for [`Wire::into_text`]'s text, else binary). Frames may be split across
    /// messages or share one; heart-beats are EOLs.
    pub fn websocket<St, Si, M>(
        stream: St,
        sink: Si,
        message: fn(Wire) -> M,
        limits: Limits,
    ) -> Transport
    where
        St: Stream<Item = Result<WsIn>> + Send + Unpin + 'static,
        Si: Sink<M> + Send + Unpin + 'static,
        Si::Error: std::fmt::Display,
        M: 'static,
    {
        let codec = StompCodec::new(limits);
        let state = (stream, BytesMut::new(), codec, false);
        let incoming =
            futures_util::stream::unfold(state, |(mut ws, mut buf, mut codec, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(item)) => return Some((Ok(item), (ws, buf, codec, false))),
                        Ok(None) => {}
                        Err(e) => return Some((Err(e), (ws, buf, codec, true))),
                    }
                    match ws.next().await {
                        Some(Ok(WsIn::Data(data))) => buf.extend_from_slice(&data),
                        Some(Ok(WsIn::Ignore)) => {}
                        Some(Ok(WsIn::Close)) | None => {
                            return match codec.decode_eof(&mut buf) {
                                Ok(Some(item)) => Some((Ok(item), (ws, buf, codec, true))),
                                Ok(None) => None,
                                Err(e) => Some((Err(e), (ws, buf, codec, true))),
                            };
                        }
                        Some(Err(e)) => return Some((Err(e), (ws, buf, codec, true))),
                    }
                }
            });
        let outgoing = WsItems {
            messages: sink,
            message,
        };
        Transport {
            incoming: Box::pin(incoming),
            outgoing: Box::pin(outgoing),
            in_memory: false,
        }
    }

    /// Two ends of a connection in memory: frames pass as values over bounded channels,
    /// with no encoding, parsing or socket. For a client and a broker in one process
    /// (the all-in-one server's room workers); each end sees the other close when it is
    /// dropped.
    pub fn pair(capacity: usize) -> (Transport, Transport) {
        fn half(capacity: usize) -> (ItemSink, ItemStream) {
            let (tx, rx) = tokio::sync::mpsc::channel::<Item>(capacity);
            let sink = futures_util::sink::unfold(tx, |tx, item: Item| async move {
                // Frames pass as values; one already encoded is read back.
                let item = match item {
                    Item::Encoded(wire) => match parse(
                        wire.as_bytes(),
                        &Limits {
                            max_frame_bytes: usize::MAX,
                            ..Limits::default()
                        },
                    )? {
                        Parsed::Frame(frame, _) => Item::Frame(frame),
                        _ => Item::Heartbeat,
                    },
                    item => item,
                };
                tx.send(item)
                    .await
                    .map_err(|_| Error::Closed("the other end of the connection closed".into()))?;
                Ok::<_, Error>(tx)
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (Ok(item), rx))
            });
            (Box::pin(sink), Box::pin(stream))
        }
        let (a_out, b_in) = half(capacity);
        let (b_out, a_in) = half(capacity);
        (
            Transport {
                incoming: a_in,
                outgoing: a_out,
                in_memory: true,
            },
            Transport {
                incoming: b_in,
                outgoing: b_out,
                in_memory: true,
            },
        )
    }

    /// Opens a client connection to `tcp://host:port` or `ws://host:port/path`.
    ///
    /// WebSocket connections offer the `v12.stomp`, `v11.stomp` and `v10.stomp` subprotocols.
    pub async fn connect(url: &str, limits: Limits) -> Result<Transport> {
        let bad = |why: &str| Error::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        if let Some(addr) = url.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() {
                return Err(bad("expected tcp://HOST:PORT"));
            }
            let stream = TcpStream::connect(addr).await.map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot connect to {url}: {e}"),
                ))
            })?;
            return Ok(Transport::tcp(stream, limits));
        }
        if let Some(addr) = url.strip_prefix("ssl://") {
            #[cfg(feature = "tls")]
            return tls::connect(url, addr.trim_end_matches('/'), limits).await;
            #[cfg(not(feature = "tls"))]
            {
                let _ = addr;
                return Err(bad(
                    "ssl:// (STOMP over TLS) needs the stomp crate's `tls` feature (game-server-less turns it on with its `tls` or `lambda` feature)",
                ));
            }
        }
        if url.starts_with("wss://") {
            return Err(bad(
                "wss:// is not supported yet; use ws://, tcp:// or ssl:// (STOMP over TLS)",
            ));
        }
        if !url.starts_with("ws://") {
            return Err(bad("expected a tcp://, ssl:// or ws:// URL"));
        }
        let mut request = url.into_client_request().map_err(|e| bad(&e.to_string()))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp, v11.stomp, v10.stomp"),
        );
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(limits.max_frame_bytes + 1024))
            .max_frame_size(Some(limits.max_frame_bytes + 1024));
        let (ws, _response) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                .await
                .map_err(|e| Error::WebSocket(format!("cannot connect to {url}: {e}")))?;
        let (sink, stream) = ws.split();
        let stream = stream.map(|msg| match msg {
            Ok(tungstenite::Message::Text(t)) => Ok(WsIn::Data(Bytes::from(t))),
            Ok(tungstenite::Message::Binary(b)) => Ok(WsIn::Data(b)),
            Ok(tungstenite::Message::Close(_)) => Ok(WsIn::Close),
            Ok(_) => Ok(WsIn::Ignore),
            Err(e) => Err(Error::WebSocket(e.to_string())),
        });
        let message = |wire: Wire| match wire.into_text() {
            Ok(text) => tungstenite::Message::Text(text),
            Err(bytes) => tungstenite::Message::Binary(bytes),
        };
        Ok(Transport::websocket(stream, sink, message, limits))
    }
}

/// STOMP over TLS (`ssl://HOST:PORT`, as RabbitMQ calls its TLS listener): the
/// server's certificate must chain to a web PKI root or to the PEM certificates in the
/// file named by `GSL_TLS_CA` (for a broker with a certificate of its own making).
#[cfg(feature = "tls")]
mod tls {
    use super::{Limits, Transport};
    use crate::{Error, Result};
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, pki_types};

    fn config() -> Result<rustls::ClientConfig> {
        use pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = std::env::var_os("GSL_TLS_CA").filter(|p| !p.is_empty()) {
            let bad = |e: &dyn std::fmt::Display| {
                Error::Config(format!(
                    "GSL_TLS_CA={}: not a PEM certificate file: {e}",
                    std::path::Path::new(&path).display()
                ))
            };
            let certs = pki_types::CertificateDer::pem_file_iter(&path).map_err(|e| bad(&e))?;
            for cert in certs {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Protocol(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    pub(super) async fn connect(url: &str, addr: &str, limits: Limits) -> Result<Transport> {
        let host = match addr.rsplit_once(':') {
            Some((host, _)) if !host.is_empty() => {
                host.trim_start_matches('[').trim_end_matches(']')
            }
            _ => {
                return Err(Error::Url {
                    url: url.to_owned(),
                    why: "expected ssl://HOST:PORT".into(),
                })
            }
        };
        let name = pki_types::ServerName::try_from(host.to_owned()).map_err(|e| Error::Url {
            url: url.to_owned(),
            why: format!("not a host name: {e}"),
        })?;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot connect to {url}: {e}"),
            ))
        })?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config()?));
        let stream = connector.connect(name, tcp).await.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("TLS with {url} failed: {e}"),
            ))
        })?;
        Ok(Transport::bytes(stream, limits))
    }
}

/// What a connection's writer task receives.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to write.
    Frame(Frame),
    /// A frame already in wire form (a broker's MESSAGE).
    Encoded(Wire),
    /// Write everything queued before this, then close the connection.
    Close,
}

/// Writes queued frames to `sink`, batching whatever is queued into one flush, and a
/// heart-beat whenever nothing was written for `heartbeat`.
pub async fn write_loop(
    mut sink: ItemSink,
    rx: &mut tokio::sync::mpsc::Receiver<Outbound>,
    heartbeat: Option<std::time::Duration>,
) {
    loop {
        let next = match heartbeat {
            Some(every) => match tokio::time::timeout(every, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    if sink.send(Item::Heartbeat).await.is_err() {
                        return; // a sink that failed must not be closed: it would panic
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let first = match next {
            Some(Outbound::Frame(frame)) => Item::Frame(frame),
            Some(Outbound::Encoded(wire)) => Item::Encoded(wire),
            Some(Outbound::Close) | None => break,
        };
        if sink.feed(first).await.is_err() {
            return;
        }
        let mut closing = false;
        loop {
            let item = match rx.try_recv() {
                Ok(Outbound::Frame(frame)) => Item::Frame(frame),
                Ok(Outbound::Encoded(wire)) => Item::Encoded(wire),
                Ok(Outbound::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            };
            if sink.feed(item).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        if closing {
            break;
        }
    }
    // Only a sink that has not failed is closed: closing one whose write failed polls a
    // finished future again, which panics ("polled MapErr after completion").
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::super::frame::Command;
    use super::*;

    /// A sink whose flush fails once `fail_after` items were fed, and which panics if it
    /// is used again after failing, as futures' `With` and `MapErr` do.
    struct Failing {
        fed: usize,
        fail_after: usize,
        failed: bool,
    }

    impl Sink<Item> for Failing {
        type Error = Error;
        fn poll_ready(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<()>> {
            assert!(!self.failed, "used after it failed");
            std::task::Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, _: Item) -> Result<()> {
            self.fed += 1;
            Ok(())
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<()>> {
            assert!(!self.failed, "flushed after it failed");
            if self.fed >= self.fail_after {
                self.failed = true;
                return std::task::Poll::Ready(Err(Error::Closed("peer gone".into())));
            }
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<()>> {
            assert!(!self.failed, "closed after it failed");
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_writer_whose_peer_went_away_stops_without_touching_the_failed_sink() {
        for with_heartbeat in [None, Some(std::time::Duration::from_millis(5))] {
            let sink: ItemSink = Box::pin(Failing {
                fed: 0,
                fail_after: 3,
                failed: false,
            });
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let writer =
                tokio::spawn(async move { write_loop(sink, &mut rx, with_heartbeat).await });
            for _ in 0..5 {
                let frame = Frame::new(Command::Send).with_header("destination", "/queue/a");
                if tx.send(Outbound::Frame(frame)).await.is_err() {
                    break; // the writer is gone: as it should be once its sink failed
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            drop(tx);
            writer.await.expect("the writer ends without panicking");
        }
    }

    #[tokio::test]
    async fn a_tls_url_is_checked_before_connecting() {
        let err = |url: &'static str| async move {
            match Transport::connect(url, Limits::default()).await {
                Ok(_) => panic!("{url} connected"),
                Err(e) => e.to_string(),
            }
        };
        #[cfg(not(feature = "tls"))]
        assert!(err("ssl://127.0.0.1:61614").await.contains("`tls` feature"));
        #[cfg(feature = "tls")]
        {
            assert!(err("ssl://:61614")
                .await
                .contains("expected ssl://HOST:PORT"));
            assert!(err("ssl://bad host:1").await.contains("not a host name"));
        }
        assert!(err("wss://h/ws").await.contains("ssl://"));
    }

    #[test]
    fn codec_splits_frames_and_heartbeats() {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::from(&b"\nSEND\n\nab\0\r\nSE"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::Heartbeat));
        let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() else {
            panic!("expected a frame")
        };
        assert_eq!(f.command, Command::Send);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::Heartbeat));
        // "SE": the start of a frame is a sign of life once, then "need more bytes".
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::Heartbeat));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"N");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::Heartbeat));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(codec.decode_eof(&mut buf).is_err());
    }
}
