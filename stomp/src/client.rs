//! A STOMP 1.2 client over TCP or WebSocket: receipts awaited, messages as an async
//! stream per subscription, heart-beats both ways with dead-peer detection.
//!
//! ```no_run
//! # async fn demo() -> stomp::Result<()> {
//! use futures_util::StreamExt;
//! use stomp::{Client, ConnectOptions, SubscribeOptions};
//!
//! let client = Client::connect("ws://127.0.0.1:8080/ws", ConnectOptions::default()).await?;
//! let mut sub = client.subscribe("/queue/hello", SubscribeOptions::default()).await?;
//! client.send("/queue/hello", "hi").await?; // returns once the broker has the message
//! let msg = sub.next().await.expect("subscription open");
//! assert_eq!(msg.body(), b"hi");
//! client.disconnect().await?;
//! # Ok(()) }
//! ```

use super::frame::{Command, Frame, Limits};
use super::transport::{unexpected_encoded, write_loop, Item, Outbound, Transport};
use crate::{Error, Result};
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Frames a client may queue for writing before `post` refuses more.
const OUTBOX_CAPACITY: usize = 64 * 1024;

/// How a subscription acknowledges messages (the SUBSCRIBE `ack` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// The broker considers a message delivered once sent.
    #[default]
    Auto,
    /// ACK is cumulative: it acknowledges this message and every earlier one.
    Client,
    /// ACK acknowledges exactly one message.
    ClientIndividual,
}

impl AckMode {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }

    /// Parses a header value.
    pub fn parse(s: &str) -> Option<AckMode> {
        match s {
            "auto" => Some(AckMode::Auto),
            "client" => Some(AckMode::Client),
            "client-individual" => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

/// Options for [`Client::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The CONNECT `login` header.
    pub login: Option<String>,
    /// The CONNECT `passcode` header (for the game server: the lobby's join token).
    pub passcode: Option<String>,
    /// The virtual host (the CONNECT `host` header); `/` is what RabbitMQ expects.
    pub host: String,
    /// The heart-beats this client offers.
    pub heartbeat: HeartBeat,
    /// Limits on frames received.
    pub limits: Limits,
    /// How long to wait for CONNECTED, receipts and the like.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            login: None,
            passcode: None,
            host: "/".into(),
            heartbeat: HeartBeat::every(Duration::from_secs(10)),
            // A broker adds headers (subscription, message-id, ack, …) to what it relays,
            // so a client accepts a little more than a broker takes from clients.
            limits: Limits {
                max_frame_bytes: Limits::default().max_frame_bytes + 64 * 1024,
                max_headers: Limits::default().max_headers + 32,
                ..Limits::default()
            },
            timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectOptions {
    /// Options that log in as `login` with `passcode`.
    pub fn login(login: impl Into<String>, passcode: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            login: Some(login.into()),
            passcode: Some(passcode.into()),
            ..ConnectOptions::default()
        }
    }
}

/// Options for [`Client::subscribe`].
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// The ack mode.
    pub ack: AckMode,
    /// At most this many unacknowledged messages in flight (`prefetch-count`); `None` for
    /// the broker's default.
    pub prefetch: Option<u32>,
    /// Extra SUBSCRIBE headers.
    pub headers: Vec<(String, String)>,
}

impl SubscribeOptions {
    /// Options with the given ack mode.
    pub fn ack(ack: AckMode) -> SubscribeOptions {
        SubscribeOptions {
            ack,
            ..SubscribeOptions::default()
        }
    }
}

/// A MESSAGE frame received on a subscription.
#[derive(Debug, Clone)]
pub struct Message {
    /// The whole frame.
    pub frame: Frame,
}

impl Message {
    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.frame.body
    }
    /// The destination it was sent to.
    pub fn destination(&self) -> &str {
        self.frame.header("destination").unwrap_or_default()
    }
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.frame.header(name)
    }
    /// Whether the broker delivered it before (after a NACK or a consumer that went away).
    pub fn redelivered(&self) -> bool {
        self.frame.header("redelivered") == Some("true")
    }
    /// The id that ACK and NACK name (the `ack` header in STOMP 1.2).
    pub fn ack_id(&self) -> Option<&str> {
        self.frame
            .header("ack")
            .or_else(|| self.frame.header("message-id"))
    }
}

#[derive(Default)]
struct State {
    subscriptions: HashMap<String, mpsc::UnboundedSender<Message>>,
    receipts: HashMap<String, oneshot::Sender<Result<()>>>,
    closed: Option<String>,
}

struct Inner {
    writer: mpsc::Sender<Outbound>,
    state: Mutex<State>,
    next_id: AtomicU64,
    timeout: Duration,
    version: String,
    server: Option<String>,
    session: Option<String>,
}

/// A connected STOMP client. Cheap to clone; every clone shares the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("version", &self.inner.version)
            .field("session", &self.inner.session)
            .finish()
    }
}

impl Client {
    /// Connects to `tcp://host:port` or `ws://host:port/path` and completes the STOMP
    /// handshake.
    pub async fn connect(url: &str, options: ConnectOptions) -> Result<Client> {
        let transport =
            tokio::time::timeout(options.timeout, Transport::connect(url, options.limits))
                .await
                .map_err(|_| Error::Timeout(format!("a connection to {url}")))??;
        Client::handshake(transport, options).await
    }

    /// Connects to the first of `urls` that takes the connection: the nodes of a broker
    /// cluster, in the order this client prefers. Each is tried in turn, whatever made
    /// the one before fail (no answer, or a refused login, which may be that node's own
    /// trouble). When none takes it, the error says the most: a node's refusal if one
    /// refused, else the first node's error.
    pub async fn connect_first<S: AsRef<str>>(
        urls: &[S],
        options: ConnectOptions,
    ) -> Result<Client> {
        let mut best: Option<Error> = None;
        for url in urls {
            match Client::connect(url.as_ref(), options.clone()).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    let refusal = matches!(e, Error::Server { .. });
                    if best.is_none() || (refusal && !matches!(best, Some(Error::Server { .. }))) {
                        best = Some(e);
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| Error::Config("no broker URL to connect to".into())))
    }

    /// Completes the STOMP handshake over an open transport.
    pub async fn handshake(mut transport: Transport, options: ConnectOptions) -> Result<Client> {
        let mut connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", options.host.clone())
            .with_header("heart-beat", options.heartbeat.header());
        if let Some(login) = &options.login {
            connect = connect.with_header("login", login.clone());
        }
        if let Some(passcode) = &options.passcode {
            connect = connect.with_header("passcode", passcode.clone());
        }
        transport.outgoing.send(Item::Frame(connect)).await?;

        let connected = tokio::time::timeout(options.timeout, async {
            loop {
                match transport.incoming.next().await {
                    Some(Ok(Item::Heartbeat)) => continue,
                    Some(Ok(Item::Frame(f))) => return Ok(f),
                    Some(Ok(Item::Encoded(_))) => return Err(unexpected_encoded()),
                    Some(Err(e)) => return Err(e),
                    None => return Err(Error::Closed("the server closed before CONNECTED".into())),
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout("CONNECTED".into()))??;
        match connected.command {
            Command::Connected => {}
            Command::Error => return Err(server_error(&connected)),
            other => return Err(Error::Protocol(format!("expected CONNECTED, got {other}"))),
        }

        let server = HeartBeat::parse(connected.header("heart-beat").unwrap_or("0,0"));
        let (send_every, expect_every) = options.heartbeat.negotiate(server);

        let (writer, writer_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let inner = Arc::new(Inner {
            writer,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            timeout: options.timeout,
            version: connected.header("version").unwrap_or("1.2").to_owned(),
            server: connected.header("server").map(str::to_owned),
            session: connected.header("session").map(str::to_owned),
        });
        let mut writer_rx = writer_rx;
        tokio::spawn(
            async move { write_loop(transport.outgoing, &mut writer_rx, send_every).await },
        );
        tokio::spawn(read_loop(
            transport.incoming,
            Arc::downgrade(&inner),
            expect_every,
        ));
        Ok(Client { inner })
    }

    /// The protocol version the server chose.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The server's `server` header, if it sent one.
    pub fn server(&self) -> Option<&str> {
        self.inner.server.as_deref()
    }

    /// The server's session id, if it sent one.
    pub fn session(&self) -> Option<&str> {
        self.inner.session.as_deref()
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn closed(&self) -> Option<String> {
        self.inner.state.lock().unwrap().closed.clone()
    }

    /// Sends `body` to `destination` and waits for the broker's receipt: once this returns
    /// `Ok`, the broker has accepted the message.
    pub async fn send(&self, destination: &str, body: impl Into<Bytes>) -> Result<()> {
        let frame = Frame::new(Command::Send)
            .with_header("destination", destination)
            .with_body(body);
        self.request(frame).await
    }

    /// Sends `body` to `destination` without waiting for a receipt.
    pub fn send_nowait(&self, destination: &str, body: impl Into<Bytes>) -> Result<()> {
        let frame = Frame::new(Command::Send)
            .with_header("destination", destination)
            .with_body(body);
        self.post(frame)
    }

    /// Sends any frame with a `receipt` header and waits for the RECEIPT (or the ERROR
    /// that answers it).
    pub async fn request(&self, mut frame: Frame) -> Result<()> {
        let id = format!("r-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        frame.set_header("receipt", id.clone());
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.inner.state.lock().unwrap();
            if let Some(why) = &state.closed {
                return Err(Error::Closed(why.clone()));
            }
            state.receipts.insert(id.clone(), tx);
        }
        self.post(frame)?;
        match tokio::time::timeout(self.inner.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed(self.closed().unwrap_or_default())),
            Err(_) => {
                self.inner.state.lock().unwrap().receipts.remove(&id);
                Err(Error::Timeout(format!("receipt {id}")))
            }
        }
    }

    /// Sends any frame without waiting for anything.
    pub fn post(&self, frame: Frame) -> Result<()> {
        self.inner
            .writer
            .try_send(Outbound::Frame(frame))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Protocol(format!(
                    "{OUTBOX_CAPACITY} frames are already waiting to be written; send slower"
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    Error::Closed(self.closed().unwrap_or_else(|| "writer stopped".into()))
                }
            })
    }

    /// Subscribes to `destination`; returns once the broker has confirmed the subscription.
    pub async fn subscribe(
        &self,
        destination: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let id = format!("s-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .state
            .lock()
            .unwrap()
            .subscriptions
            .insert(id.clone(), tx);
        let mut frame = Frame::new(Command::Subscribe)
            .with_header("id", id.clone())
            .with_header("destination", destination)
            .with_header("ack", options.ack.as_str());
        if let Some(n) = options.prefetch {
            frame = frame.with_header("prefetch-count", n.to_string());
        }
        frame.headers.extend(options.headers);
        let subscription = Subscription {
            id,
            rx,
            client: self.clone(),
            unsubscribe_on_drop: true,
        };
        self.request(frame).await?;
        Ok(subscription)
    }

    /// Acknowledges a message (for `client` subscriptions, it and every earlier one).
    pub fn ack(&self, message: &Message) -> Result<()> {
        self.post(ack_frame(Command::Ack, message)?)
    }

    /// Rejects a message so that the broker redelivers it.
    pub fn nack(&self, message: &Message) -> Result<()> {
        self.post(ack_frame(Command::Nack, message)?)
    }

    /// Waits until the broker has processed every frame sent before: a barrier. (STOMP
    /// has no no-op frame; an empty transaction, begun and aborted with a receipt, is one.)
    pub async fn flush(&self) -> Result<()> {
        let tx = format!(
            "flush-{}",
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        self.post(Frame::new(Command::Begin).with_header("transaction", tx.clone()))?;
        self.request(Frame::new(Command::Abort).with_header("transaction", tx))
            .await
    }

    /// Acknowledges a message and waits for the broker's receipt.
    pub async fn ack_confirmed(&self, message: &Message) -> Result<()> {
        self.request(ack_frame(Command::Ack, message)?).await
    }

    /// Says DISCONNECT, waits for its receipt (so every frame sent before has been
    /// processed), then closes the connection.
    pub async fn disconnect(&self) -> Result<()> {
        let result = match self.request(Frame::new(Command::Disconnect)).await {
            // Some brokers (RabbitMQ's web-stomp) close without the receipt: closing is
            // what DISCONNECT asked for.
            Err(Error::Closed(_)) => Ok(()),
            other => other,
        };
        let _ = self.inner.writer.try_send(Outbound::Close);
        close(&self.inner, "disconnected".into(), None);
        result
    }
}

fn ack_frame(command: Command, message: &Message) -> Result<Frame> {
    let id = message.ack_id().ok_or_else(|| {
        Error::Protocol("message has no ack header (auto-ack subscription?)".into())
    })?;
    let mut frame = Frame::new(command).with_header("id", id);
    // STOMP 1.0/1.1 brokers name the message instead.
    if let Some(mid) = message.header("message-id") {
        frame = frame.with_header("message-id", mid);
    }
    if let Some(sub) = message.header("subscription") {
        frame = frame.with_header("subscription", sub);
    }
    Ok(frame)
}

/// What one side of a connection says of heart-beats (its `heart-beat` header): how
/// often it can send one, and how often it wants one. Zero is "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// The shortest interval at which this side can send heart-beats.
    pub send: Duration,
    /// The interval at which this side wants to receive them.
    pub expect: Duration,
}

impl HeartBeat {
    /// No heart-beats either way.
    pub const NONE: HeartBeat = HeartBeat {
        send: Duration::ZERO,
        expect: Duration::ZERO,
    };

    /// Heart-beats every `interval`, both ways.
    pub fn every(interval: Duration) -> HeartBeat {
        HeartBeat {
            send: interval,
            expect: interval,
        }
    }

    /// Parses a `heart-beat` header, `"x,y"` in milliseconds; anything else is none.
    pub fn parse(value: &str) -> HeartBeat {
        let mut parts = value.split(',').map(|p| p.trim().parse::<u64>());
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(x)), Some(Ok(y)), None) => HeartBeat {
                send: Duration::from_millis(x),
                expect: Duration::from_millis(y),
            },
            _ => HeartBeat::NONE,
        }
    }

    /// The `heart-beat` header that says it.
    pub fn header(&self) -> String {
        format!("{},{}", self.send.as_millis(), self.expect.as_millis())
    }

    /// What this side and its `peer` agree on (STOMP 1.2): how often this side sends
    /// heart-beats, and how often it hears one at the least; `None` where either side
    /// said zero. Each is the larger of what one side can send and the other wants.
    pub fn negotiate(self, peer: HeartBeat) -> (Option<Duration>, Option<Duration>) {
        let agree = |send: Duration, expect: Duration| {
            (!send.is_zero() && !expect.is_zero()).then(|| send.max(expect))
        };
        (agree(self.send, peer.expect), agree(peer.send, self.expect))
    }
}

fn server_error(frame: &Frame) -> Error {
    Error::Server {
        message: frame.header("message").unwrap_or("ERROR").to_owned(),
        detail: String::from_utf8_lossy(&frame.body).trim().to_owned(),
    }
}

/// Marks the connection closed: subscription streams end, waiting receipts fail with the
/// server's ERROR if there was one.
fn close(inner: &Inner, why: String, error: Option<&Frame>) {
    let mut state = inner.state.lock().unwrap();
    if state.closed.is_none() {
        state.closed = Some(why.clone());
    }
    state.subscriptions.clear();
    for (_, tx) in state.receipts.drain() {
        let _ = tx.send(Err(match error {
            Some(frame) => server_error(frame),
            None => Error::Closed(why.clone()),
        }));
    }
}

async fn read_loop(
    mut incoming: super::transport::ItemStream,
    inner: std::sync::Weak<Inner>,
    expect_every: Option<Duration>,
) {
    // A peer is dead after twice its heart-beat interval of silence (plus slack for jitter).
    let deadline = expect_every.map(|d| d * 2 + Duration::from_millis(500));
    let mut error_frame = None;
    let why = loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout(d, incoming.next()).await {
                Ok(next) => next,
                Err(_) => break format!("no heart-beat from the server for {} ms", d.as_millis()),
            },
            None => incoming.next().await,
        };
        let Some(inner) = inner.upgrade() else { return };
        let frame = match next {
            Some(Ok(Item::Frame(frame))) => frame,
            Some(Ok(Item::Heartbeat)) => continue,
            Some(Ok(Item::Encoded(_))) => break unexpected_encoded().to_string(),
            Some(Err(e)) => break e.to_string(),
            None => break "the server closed the connection".into(),
        };
        match frame.command {
            Command::Message => {
                let sub = frame.header("subscription").unwrap_or_default().to_owned();
                let state = inner.state.lock().unwrap();
                if let Some(tx) = state.subscriptions.get(&sub) {
                    let _ = tx.send(Message { frame });
                }
            }
            Command::Receipt => {
                let id = frame.header("receipt-id").unwrap_or_default();
                if let Some(tx) = inner.state.lock().unwrap().receipts.remove(id) {
                    let _ = tx.send(Ok(()));
                }
            }
            Command::Error => {
                let why = server_error(&frame).to_string();
                error_frame = Some(frame);
                break why;
            }
            _ => {}
        }
    };
    if let Some(inner) = inner.upgrade() {
        close(&inner, why, error_frame.as_ref());
        let _ = inner.writer.try_send(Outbound::Close);
    }
}

/// Messages for one subscription, in the order the broker sent them. It is a
/// [`Stream`]; it ends when the connection closes. Dropping it unsubscribes, unless
/// [`Subscription::end_with_connection`] said otherwise.
pub struct Subscription {
    id: String,
    rx: mpsc::UnboundedReceiver<Message>,
    client: Client,
    /// Whether dropping it sends UNSUBSCRIBE.
    unsubscribe_on_drop: bool,
}

impl Subscription {
    /// The subscription id (the MESSAGE `subscription` header).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client this subscription belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The next message, or `None` once the connection has closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message, or an error if none arrives within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Message> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(Error::Closed(self.client.closed().unwrap_or_default())),
            Err(_) => Err(Error::Timeout(format!("a message on {}", self.id))),
        }
    }

    /// Dropping this subscription will no longer unsubscribe: the broker ends it when
    /// the connection closes (DISCONNECT, or the client's last clone dropped).
    ///
    /// For a consumer with client acks on a queue that has one active consumer at a
    /// time: an UNSUBSCRIBE hands the queue to the next consumer while this one's unacked
    /// messages are still out (RabbitMQ gives them back only when the connection
    /// closes), so the next consumer would get later messages before them. Closing the
    /// connection gives them back and moves the queue on in one step.
    pub fn end_with_connection(&mut self) {
        self.unsubscribe_on_drop = false;
    }

    /// Unsubscribes and waits for the broker's receipt.
    pub async fn unsubscribe(mut self) -> Result<()> {
        let id = std::mem::take(&mut self.id);
        self.client
            .inner
            .state
            .lock()
            .unwrap()
            .subscriptions
            .remove(&id);
        self.client
            .request(Frame::new(Command::Unsubscribe).with_header("id", id))
            .await
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let removed = self
            .client
            .inner
            .state
            .lock()
            .unwrap()
            .subscriptions
            .remove(&self.id);
        if removed.is_some() && self.unsubscribe_on_drop {
            let _ = self
                .client
                .post(Frame::new(Command::Unsubscribe).with_header("id", self.id.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_header_parsing() {
        let ms = Duration::from_millis;
        let hb = |send, expect| HeartBeat {
            send: ms(send),
            expect: ms(expect),
        };
        assert_eq!(HeartBeat::parse("100,200"), hb(100, 200));
        assert_eq!(HeartBeat::parse(" 0 , 5 "), hb(0, 5));
        assert_eq!(HeartBeat::parse("x,1"), HeartBeat::NONE);
        assert_eq!(HeartBeat::parse("1,2,3"), HeartBeat::NONE);
        assert_eq!(hb(100, 200).header(), "100,200");
    }

    #[test]
    fn heartbeats_agree_on_the_larger_interval_and_zero_turns_a_direction_off() {
        let ms = Duration::from_millis;
        let me = HeartBeat {
            send: ms(100),
            expect: ms(500),
        };
        let peer = HeartBeat {
            send: ms(1000),
            expect: ms(50),
        };
        assert_eq!(me.negotiate(peer), (Some(ms(100)), Some(ms(1000))));
        assert_eq!(peer.negotiate(me), (Some(ms(1000)), Some(ms(100))));
        let deaf = HeartBeat {
            send: ms(100),
            expect: Duration::ZERO,
        };
        assert_eq!(me.negotiate(deaf), (None, Some(ms(500))));
        assert_eq!(me.negotiate(HeartBeat::NONE), (None, None));
    }
}
