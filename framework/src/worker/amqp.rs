//! The little of AMQP 0-9-1 a room worker speaks to RabbitMQ, on tokio: one connection,
//! one channel, one consumer (the room's inbox), publishes, cumulative acks, and a
//! barrier. A reader task and a writer task, as the STOMP client has, and no thread of
//! its own. It knows only what RabbitMQ sends a client that asks for this much:
//! anything else closes the connection with a protocol error.
//!
//! Frames: `type(1) channel(2) size(4) payload(size) 0xCE`. A method's payload is
//! `class(2) method(2)` and its arguments; a message is a `Basic.Publish` (or
//! `Basic.Deliver`) method, a content header (`class 60, weight 0, body size(8),
//! property flags(2), properties`) and body frames of at most `frame_max - 8` bytes.

use crate::{Error, Result};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// The channel the worker uses (channel 0 is the connection's).
const CHANNEL: u16 = 1;
/// The largest frame this client takes, and asks RabbitMQ for.
const FRAME_MAX: u32 = 128 * 1024;
/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// (class, method) ids of the methods used here.
const CONNECTION_START: (u16, u16) = (10, 10);
const CONNECTION_START_OK: (u16, u16) = (10, 11);
const CONNECTION_TUNE: (u16, u16) = (10, 30);
const CONNECTION_TUNE_OK: (u16, u16) = (10, 31);
const CONNECTION_OPEN: (u16, u16) = (10, 40);
const CONNECTION_OPEN_OK: (u16, u16) = (10, 41);
const CONNECTION_CLOSE: (u16, u16) = (10, 50);
const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
const CHANNEL_OPEN: (u16, u16) = (20, 10);
const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);
const CHANNEL_CLOSE: (u16, u16) = (20, 40);
const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
const BASIC_QOS: (u16, u16) = (60, 10);
const BASIC_QOS_OK: (u16, u16) = (60, 11);
const BASIC_CONSUME: (u16, u16) = (60, 20);
const BASIC_CONSUME_OK: (u16, u16) = (60, 21);
const BASIC_CANCEL: (u16, u16) = (60, 30);
const BASIC_CANCEL_OK: (u16, u16) = (60, 31);
const BASIC_PUBLISH: (u16, u16) = (60, 40);
const BASIC_DELIVER: (u16, u16) = (60, 60);
const BASIC_ACK: (u16, u16) = (60, 80);

/// Where to connect, and as whom.
pub(super) struct Options<'a> {
    /// `HOST:PORT`.
    pub address: &'a str,
    /// The user.
    pub login: &'a str,
    /// Its password.
    pub passcode: &'a str,
    /// The virtual host.
    pub vhost: &'a str,
    /// Heart-beats both ways this often (whole seconds, at least 1): RabbitMQ closes a
    /// hung worker's connection after missing two, and hands its inbox on.
    pub heartbeat: Duration,
}

/// One message from the consumer.
pub(super) struct Delivery {
    /// What acks it (and every delivery before it).
    pub tag: u64,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
}

/// A connection with its one channel open. Cheap to clone. When the last clone is
/// dropped without [`Connection::close`] (a worker that panicked), the writer task ends
/// and shuts its half of the socket: RabbitMQ closes the connection, and the inbox's
/// unacked inputs go back in line.
#[derive(Clone)]
pub(super) struct Connection {
    shared: Arc<Shared>,
    /// Encoded frames for the writer task; the clones keep it running.
    out: mpsc::UnboundedSender<Vec<u8>>,
}

struct Shared {
    /// The writer's queue for the reader's own answers (`Close-Ok`), which do not keep
    /// the writer running.
    out: mpsc::WeakUnboundedSender<Vec<u8>>,
    state: Mutex<State>,
    /// The largest body frame's body.
    body_max: usize,
}

#[derive(Default)]
struct State {
    /// The callers of synchronous methods, in the order they sent them: RabbitMQ answers
    /// a channel's methods in order.
    waiting: VecDeque<oneshot::Sender<()>>,
    /// Where the consumer's deliveries go, once there is one.
    deliveries: Option<mpsc::UnboundedSender<Delivery>>,
    /// The prefetch the consumer was given, which [`Connection::barrier`] sets again.
    prefetch: u16,
    /// Why the connection ended, once it did.
    closed: Option<String>,
}

impl Connection {
    /// Connects, logs in (PLAIN), and opens the channel.
    pub(super) async fn open(options: Options<'_>) -> Result<Connection> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Connection::handshake(options))
            .await
            .map_err(|_| closed("the AMQP handshake took too long".into()))?
    }

    async fn handshake(options: Options<'_>) -> Result<Connection> {
        let stream = TcpStream::connect(options.address)
            .await
            .map_err(|e| closed(format!("AMQP connection to {}: {e}", options.address)))?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let mut buf = Vec::with_capacity(4096);
        write.write_all(b"AMQP\x00\x00\x09\x01").await?;
        expect(&mut read, &mut buf, CONNECTION_START).await?;
        let mut response = vec![0];
        response.extend_from_slice(options.login.as_bytes());
        response.push(0);
        response.extend_from_slice(options.passcode.as_bytes());
        let start_ok = method(0, CONNECTION_START_OK, |b| {
            client_properties(b)?;
            short(b, "PLAIN")?;
            long(b, &response);
            short(b, "en_US")
        })?;
        write.write_all(&start_ok).await?;
        let tune = expect(&mut read, &mut buf, CONNECTION_TUNE).await?;
        let mut args = Cursor(&tune);
        let channel_max = args.u16()?;
        // AMQP's smallest frame_max is 4096; 0 is "no limit".
        let frame_max = match args.u32()? {
            0 => FRAME_MAX,
            server => server.clamp(4096, FRAME_MAX),
        };
        let heartbeat = u16::try_from(options.heartbeat.as_secs().max(1)).unwrap_or(u16::MAX);
        let tune_ok = method(0, CONNECTION_TUNE_OK, |b| {
            b.extend_from_slice(&channel_max.to_be_bytes());
            b.extend_from_slice(&frame_max.to_be_bytes());
            b.extend_from_slice(&heartbeat.to_be_bytes());
            Ok(())
        })?;
        let open = method(0, CONNECTION_OPEN, |b| {
            short(b, options.vhost)?;
            short(b, "")?;
            b.push(0);
            Ok(())
        })?;
        write.write_all(&[tune_ok, open].concat()).await?;
        expect(&mut read, &mut buf, CONNECTION_OPEN_OK).await?;
        write
            .write_all(&method(CHANNEL, CHANNEL_OPEN, |b| short(b, ""))?)
            .await?;
        expect(&mut read, &mut buf, CHANNEL_OPEN_OK).await?;

        let (out, frames) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out.downgrade(),
            state: Mutex::new(State::default()),
            body_max: frame_max as usize - 8,
        });
        let every = Duration::from_secs(heartbeat.into());
        tokio::spawn(write_loop(shared.clone(), write, frames, every));
        tokio::spawn(read_loop(shared.clone(), read, buf, every));
        Ok(Connection { shared, out })
    }

    /// Consumes `queue`, acking by hand, at most `prefetch` deliveries unacked.
    pub(super) async fn consume(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<mpsc::UnboundedReceiver<Delivery>> {
        let (deliveries, receiver) = mpsc::unbounded_channel();
        {
            let mut state = self.state()?;
            state.deliveries = Some(deliveries);
            state.prefetch = prefetch;
        }
        self.qos(prefetch).await?;
        let consume = method(CHANNEL, BASIC_CONSUME, |b| {
            b.extend_from_slice(&0u16.to_be_bytes());
            short(b, queue)?;
            short(b, tag)?;
            b.push(0); // no-local, no-ack, exclusive, no-wait: all off
            b.extend_from_slice(&0u32.to_be_bytes()); // arguments: none
            Ok(())
        })?;
        self.call(consume).await?;
        Ok(receiver)
    }

    /// Sets the prefetch of later consumers; answered only once the channel has handled
    /// every frame before it.
    async fn qos(&self, prefetch: u16) -> Result<()> {
        let qos = method(CHANNEL, BASIC_QOS, |b| {
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&prefetch.to_be_bytes());
            b.push(0);
            Ok(())
        })?;
        self.call(qos).await
    }

    /// Returns once RabbitMQ has routed every publish sent before: a synchronous method
    /// (setting the consumer's prefetch again, which changes nothing) is answered only
    /// after the channel has handled every frame before it.
    pub(super) async fn barrier(&self) -> Result<()> {
        let prefetch = self.state()?.prefetch;
        self.qos(prefetch).await
    }

    /// Cancels the consumer `tag`.
    pub(super) async fn cancel(&self, tag: &str) -> Result<()> {
        let cancel = method(CHANNEL, BASIC_CANCEL, |b| {
            short(b, tag)?;
            b.push(0);
            Ok(())
        })?;
        self.call(cancel).await
    }

    /// Publishes `body` (JSON) to `exchange` with `routing_key`, without waiting.
    pub(super) fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) -> Result<()> {
        let mut frames = method(CHANNEL, BASIC_PUBLISH, |b| {
            b.extend_from_slice(&0u16.to_be_bytes());
            short(b, exchange)?;
            short(b, routing_key)?;
            b.push(0); // mandatory, immediate: off
            Ok(())
        })?;
        frame(&mut frames, HEADER, CHANNEL, |b| {
            b.extend_from_slice(&60u16.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
            b.extend_from_slice(&(body.len() as u64).to_be_bytes());
            b.extend_from_slice(&0x8000u16.to_be_bytes()); // content-type only
            short(b, "application/json")
        })?;
        for chunk in body.chunks(self.shared.body_max) {
            frame(&mut frames, BODY, CHANNEL, |b| {
                b.extend_from_slice(chunk);
                Ok(())
            })?;
        }
        self.send(frames)
    }

    /// Acks the delivery `tag` and every one before it, without waiting.
    pub(super) fn ack(&self, tag: u64) -> Result<()> {
        self.send(method(CHANNEL, BASIC_ACK, |b| {
            b.extend_from_slice(&tag.to_be_bytes());
            b.push(1); // multiple
            Ok(())
        })?)
    }

    /// Closes the connection (RabbitMQ puts unacked deliveries back in line), waiting a
    /// little for RabbitMQ's answer.
    pub(super) async fn close(&self) {
        let close = method(0, CONNECTION_CLOSE, |b| {
            b.extend_from_slice(&200u16.to_be_bytes());
            short(b, "the worker is done")?;
            b.extend_from_slice(&[0; 4]);
            Ok(())
        });
        if let Ok(close) = close {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.call(close)).await;
        }
        self.shared.end("closed by the worker".into());
    }

    /// Why the connection ended, if it did.
    pub(super) fn closed(&self) -> Option<String> {
        self.shared.state.lock().ok()?.closed.clone()
    }

    /// Sends a synchronous method and waits for its answer.
    async fn call(&self, frame: Vec<u8>) -> Result<()> {
        let (answer, answered) = oneshot::channel();
        let sent = {
            // The answers come in the order of the calls: queue the frame in that order.
            let mut state = self.state()?;
            state.waiting.push_back(answer);
            self.out.send(frame).is_ok()
        };
        match sent {
            true => answered.await.map_err(|_| self.failed()),
            false => Err(self.failed()),
        }
    }

    /// Queues frames for the writer (gone once the connection ended).
    fn send(&self, frames: Vec<u8>) -> Result<()> {
        self.out.send(frames).map_err(|_| self.failed())
    }

    /// The state, or the error that ended the connection.
    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        match &state.closed {
            Some(why) => Err(closed(why.clone())),
            None => Ok(state),
        }
    }

    fn failed(&self) -> Error {
        closed(
            self.closed()
                .unwrap_or_else(|| "the AMQP connection closed".into()),
        )
    }
}

impl Shared {
    /// The connection ended: callers waiting for answers and the consumer hear so.
    fn end(&self, why: String) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed.get_or_insert(why);
        state.waiting.clear();
        state.deliveries = None;
    }
}

/// Writes the frames queued, several to a write when several are waiting, and a
/// heart-beat when nothing else went out for `every`.
async fn write_loop(
    shared: Arc<Shared>,
    mut socket: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    every: Duration,
) {
    const HEARTBEAT_FRAME: [u8; 8] = [HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];
    let mut batch = Vec::with_capacity(16 * 1024);
    loop {
        let next = tokio::time::timeout(every, frames.recv()).await;
        batch.clear();
        match next {
            Err(_) => batch.extend_from_slice(&HEARTBEAT_FRAME),
            Ok(None) => return,
            Ok(Some(first)) => {
                batch.extend_from_slice(&first);
                while batch.len() < 64 * 1024 {
                    match frames.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
            }
        }
        if let Err(e) = socket.write_all(&batch).await {
            shared.end(format!("AMQP: {e}"));
            return;
        }
        if shared.state.lock().is_ok_and(|s| s.closed.is_some()) {
            return;
        }
    }
}

/// Reads frames until the connection ends: deliveries to the consumer, answers to their
/// callers. Nothing heard for three heart-beats ends it.
async fn read_loop(
    shared: Arc<Shared>,
    mut socket: OwnedReadHalf,
    mut buf: Vec<u8>,
    every: Duration,
) {
    // The delivery whose body is still arriving, between reads.
    let mut incoming = None;
    let why = loop {
        match parse_frames(&shared, &mut buf, &mut incoming) {
            Ok(Some(why)) => break why,
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match tokio::time::timeout(every * 3, socket.read_buf(&mut buf)).await {
            Err(_) => break format!("AMQP: no heart-beat from RabbitMQ for {:?}", every * 3),
            Ok(Err(e)) => break format!("AMQP: {e}"),
            Ok(Ok(0)) => break "AMQP: RabbitMQ closed the connection".into(),
            Ok(Ok(_)) => {}
        }
    };
    shared.end(why);
}

/// A delivery whose body is still arriving.
struct Incoming {
    delivery: Delivery,
    /// The body's size, once its content header came.
    size: Option<usize>,
}

/// Handles every whole frame in `buf` and removes them; `Some(why)` once the connection
/// is over.
fn parse_frames(
    shared: &Shared,
    buf: &mut Vec<u8>,
    incoming: &mut Option<Incoming>,
) -> Result<Option<String>> {
    let mut at = 0;
    let mut over = None;
    while let Some(f) = split_frame(&buf[at..])? {
        at += f.len;
        if let Some(why) = handle(shared, f.kind, f.channel, f.payload, incoming)? {
            over = Some(why);
            break;
        }
    }
    buf.drain(..at);
    Ok(over)
}

/// One frame as read: its type, channel and payload, and its length in all.
#[derive(Debug)]
struct RawFrame<'a> {
    kind: u8,
    channel: u16,
    payload: &'a [u8],
    len: usize,
}

/// The first whole frame of `bytes`, if it holds one.
fn split_frame(bytes: &[u8]) -> Result<Option<RawFrame<'_>>> {
    if bytes.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
    if size > FRAME_MAX as usize {
        return Err(protocol(format!(
            "a frame of {size} bytes, over {FRAME_MAX}"
        )));
    }
    if bytes.len() < 7 + size + 1 {
        return Ok(None);
    }
    if bytes[7 + size] != FRAME_END {
        return Err(protocol("a frame without its end octet".into()));
    }
    let channel = u16::from_be_bytes([bytes[1], bytes[2]]);
    Ok(Some(RawFrame {
        kind: bytes[0],
        channel,
        payload: &bytes[7..7 + size],
        len: 7 + size + 1,
    }))
}

/// Handles one frame; `Some(why)` when it ends the connection.
fn handle(
    shared: &Shared,
    kind: u8,
    channel: u16,
    payload: &[u8],
    incoming: &mut Option<Incoming>,
) -> Result<Option<String>> {
    // Locked only by the frames that use the state: not for each heart-beat, content
    // header or body frame.
    let state = || shared.state.lock().unwrap_or_else(|e| e.into_inner());
    match kind {
        HEARTBEAT => Ok(None),
        METHOD => {
            let mut args = Cursor(payload);
            let id = (args.u16()?, args.u16()?);
            match id {
                BASIC_DELIVER => {
                    args.short()?; // consumer tag
                    let tag = args.u64()?;
                    args.u8()?; // redelivered
                    let exchange = args.short()?.to_owned();
                    let routing_key = args.short()?.to_owned();
                    *incoming = Some(Incoming {
                        delivery: Delivery {
                            tag,
                            exchange,
                            routing_key,
                            body: Vec::new(),
                        },
                        size: None,
                    });
                    Ok(None)
                }
                BASIC_QOS_OK | BASIC_CONSUME_OK | BASIC_CANCEL_OK | CONNECTION_CLOSE_OK => {
                    match state().waiting.pop_front() {
                        Some(answer) => {
                            let _ = answer.send(());
                            Ok((id == CONNECTION_CLOSE_OK).then(|| "closed by the worker".into()))
                        }
                        None => Err(protocol(format!("an answer nobody asked for: {id:?}"))),
                    }
                }
                BASIC_CANCEL => {
                    // RabbitMQ cancelled the consumer: its queue is gone.
                    state().deliveries = None;
                    Ok(None)
                }
                CONNECTION_CLOSE | CHANNEL_CLOSE => {
                    let code = args.u16()?;
                    let text = args.short()?.to_owned();
                    let answer = if id == CONNECTION_CLOSE {
                        method(0, CONNECTION_CLOSE_OK, |_| Ok(()))?
                    } else {
                        method(channel, CHANNEL_CLOSE_OK, |_| Ok(()))?
                    };
                    if let Some(out) = shared.out.upgrade() {
                        let _ = out.send(answer);
                    }
                    Ok(Some(format!(
                        "AMQP: RabbitMQ closed the {} ({code} {text})",
                        if id == CONNECTION_CLOSE {
                            "connection"
                        } else {
                            "channel"
                        }
                    )))
                }
                other => Err(protocol(format!("an unexpected method {other:?}"))),
            }
        }
        HEADER => {
            let mut args = Cursor(payload);
            args.u16()?; // class
            args.u16()?; // weight
            let size =
                usize::try_from(args.u64()?).map_err(|_| protocol("a body too large".into()))?;
            let Some(message) = incoming.as_mut() else {
                return Err(protocol("a content header without its delivery".into()));
            };
            message.size = Some(size);
            // The size is RabbitMQ's word: room for one frame's body at most, up front.
            message
                .delivery
                .body
                .reserve_exact(size.min(FRAME_MAX as usize));
            deliver_if_whole(shared, incoming);
            Ok(None)
        }
        BODY => {
            let Some(message) = incoming.as_mut() else {
                return Err(protocol("a body without its delivery".into()));
            };
            message.delivery.body.extend_from_slice(payload);
            deliver_if_whole(shared, incoming);
            Ok(None)
        }
        other => Err(protocol(format!("a frame of unknown type {other}"))),
    }
}

/// Hands the delivery under way to the consumer once its body is whole.
fn deliver_if_whole(shared: &Shared, incoming: &mut Option<Incoming>) {
    let whole = incoming
        .as_ref()
        .is_some_and(|i| i.size.is_some_and(|size| i.delivery.body.len() >= size));
    if !whole {
        return;
    }
    let Some(whole) = incoming.take() else { return };
    let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(deliveries) = &state.deliveries {
        let _ = deliveries.send(whole.delivery);
    }
}

/// Reads a method's arguments.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(protocol("a frame shorter than its fields".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn short(&mut self) -> Result<&'a str> {
        let n = self.u8()?.into();
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| protocol("a short string not in UTF-8".into()))
    }
}

/// Reads frames until a whole one arrives: it must be `want` on any channel (the
/// handshake's answers; a close says why it failed).
async fn expect(read: &mut OwnedReadHalf, buf: &mut Vec<u8>, want: (u16, u16)) -> Result<Vec<u8>> {
    loop {
        let Some(f) = split_frame(buf)? else {
            if read.read_buf(buf).await? == 0 {
                return Err(closed(
                    "AMQP: RabbitMQ closed the connection during the handshake".into(),
                ));
            }
            continue;
        };
        let (kind, len) = (f.kind, f.len);
        if kind == HEARTBEAT {
            buf.drain(..len);
            continue;
        }
        if kind != METHOD {
            return Err(protocol(format!(
                "expected {want:?} in the handshake, got a frame of type {kind}"
            )));
        }
        let mut args = Cursor(f.payload);
        let id = (args.u16()?, args.u16()?);
        let rest = args.0.to_vec();
        buf.drain(..len);
        if id == want {
            return Ok(rest);
        }
        if id != CONNECTION_CLOSE {
            return Err(protocol(format!(
                "expected {want:?} in the handshake, got {id:?}"
            )));
        }
        let mut args = Cursor(&rest);
        let code = args.u16()?;
        return Err(Error::Refused {
            message: format!("RabbitMQ refused the worker's AMQP connection ({code})"),
            detail: args.short()?.to_owned(),
        });
    }
}

/// A method frame: `args` writes its arguments.
fn method(
    channel: u16,
    (class, id): (u16, u16),
    args: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<Vec<u8>> {
    let mut frames = Vec::with_capacity(64);
    frame(&mut frames, METHOD, channel, |b| {
        b.extend_from_slice(&class.to_be_bytes());
        b.extend_from_slice(&id.to_be_bytes());
        args(b)
    })?;
    Ok(frames)
}

/// Appends a frame to `out`: `payload` writes its payload.
fn frame(
    out: &mut Vec<u8>,
    kind: u8,
    channel: u16,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    payload(out)?;
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
    Ok(())
}

/// The client's properties: only the capability that makes RabbitMQ say why it refuses
/// a login (a `Connection.Close` rather than a closed socket).
fn client_properties(b: &mut Vec<u8>) -> Result<()> {
    let mut capabilities = Vec::new();
    short(&mut capabilities, "authentication_failure_close")?;
    capabilities.extend_from_slice(b"t\x01");
    let mut table = Vec::new();
    short(&mut table, "capabilities")?;
    table.push(b'F');
    long(&mut table, &capabilities);
    long(b, &table);
    Ok(())
}

/// A short string: at most 255 bytes.
fn short(b: &mut Vec<u8>, s: &str) -> Result<()> {
    let n = u8::try_from(s.len())
        .map_err(|_| Error::Invalid(format!("an AMQP name over 255 bytes: {s:.40}…")))?;
    b.push(n);
    b.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A long string.
fn long(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s);
}

/// The error of a connection that ended: the same as a STOMP connection's, so a worker
/// treats both alike.
pub(super) fn closed(why: String) -> Error {
    Error::Stomp(crate::stomp::Error::Closed(why))
}

fn protocol(why: String) -> Error {
    Error::Protocol(format!("AMQP: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection without a socket, and the frames it would write.
    fn connection() -> (Connection, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (out, frames) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out.downgrade(),
            state: Mutex::new(State::default()),
            body_max: 16,
        });
        (Connection { shared, out }, frames)
    }

    /// RabbitMQ's frames for a delivery of `body`, its body in frames of `chunk` bytes.
    fn delivery(tag: u64, body: &[u8], chunk: usize) -> Vec<u8> {
        let mut frames = method(CHANNEL, BASIC_DELIVER, |b| {
            short(b, "gsl-worker")?;
            b.extend_from_slice(&tag.to_be_bytes());
            b.push(0);
            short(b, "gsl.inputs")?;
            short(b, "room.r1.ann")
        })
        .unwrap();
        frame(&mut frames, HEADER, CHANNEL, |b| {
            b.extend_from_slice(&60u16.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
            b.extend_from_slice(&(body.len() as u64).to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
            Ok(())
        })
        .unwrap();
        for part in body.chunks(chunk) {
            frame(&mut frames, BODY, CHANNEL, |b| {
                b.extend_from_slice(part);
                Ok(())
            })
            .unwrap();
        }
        frames
    }

    /// Feeds `bytes` to the reader `step` bytes at a time, as reads would bring them.
    fn feed(shared: &Shared, bytes: &[u8], step: usize) -> Result<Option<String>> {
        let (mut buf, mut incoming) = (Vec::new(), None);
        for part in bytes.chunks(step) {
            buf.extend_from_slice(part);
            if let Some(why) = parse_frames(shared, &mut buf, &mut incoming)? {
                return Ok(Some(why));
            }
        }
        assert!(buf.is_empty(), "every whole frame is taken");
        Ok(None)
    }

    #[test]
    fn deliveries_arrive_whole_however_the_reads_split_them() {
        for step in [1, 3, 7, 64, 4096] {
            let (connection, _frames) = connection();
            let shared = &connection.shared;
            let (to, mut deliveries) = mpsc::unbounded_channel();
            shared.state.lock().unwrap().deliveries = Some(to);
            let body = br#"{"type":"move","seq":1,"dir":"n","pad":"0123456789abcdef"}"#;
            let mut bytes = delivery(7, body, 10);
            bytes.extend(delivery(8, b"", 10));
            bytes.extend(delivery(9, b"{}", 10));
            assert_eq!(feed(shared, &bytes, step).unwrap(), None);
            let d = deliveries.try_recv().unwrap();
            assert_eq!(
                (d.tag, d.exchange.as_str(), d.routing_key.as_str()),
                (7, "gsl.inputs", "room.r1.ann")
            );
            assert_eq!(d.body, body);
            assert_eq!(
                deliveries.try_recv().unwrap().body,
                b"",
                "an empty body is a delivery too"
            );
            assert_eq!(deliveries.try_recv().unwrap().tag, 9);
            assert!(deliveries.try_recv().is_err());
        }
    }

    #[test]
    fn a_publish_is_a_method_a_header_and_bodies_no_larger_than_the_frame_max() {
        let (connection, mut frames) = connection();
        let body = vec![b'x'; 40];
        connection.publish("amq.topic", "room.r1", &body).unwrap();
        let bytes = frames.try_recv().unwrap();
        let mut rest = &bytes[..];
        let mut seen = Vec::new();
        while let Some(f) = split_frame(rest).unwrap() {
            assert_eq!(f.channel, CHANNEL);
            seen.push((f.kind, f.payload.to_vec()));
            rest = &rest[f.len..];
        }
        assert!(rest.is_empty());
        let kinds: Vec<u8> = seen.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [METHOD, HEADER, BODY, BODY, BODY],
            "40 bytes in bodies of 16"
        );
        let mut args = Cursor(&seen[0].1);
        assert_eq!((args.u16().unwrap(), args.u16().unwrap()), BASIC_PUBLISH);
        args.u16().unwrap();
        assert_eq!(args.short().unwrap(), "amq.topic");
        assert_eq!(args.short().unwrap(), "room.r1");
        let mut header = Cursor(&seen[1].1);
        assert_eq!((header.u16().unwrap(), header.u16().unwrap()), (60, 0));
        assert_eq!(header.u64().unwrap(), 40);
        assert_eq!(header.u16().unwrap(), 0x8000);
        assert_eq!(header.short().unwrap(), "application/json");
        let joined: Vec<u8> = seen[2..].iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(joined, body);
    }

    #[test]
    fn answers_go_to_their_callers_in_order_and_a_stray_one_is_an_error() {
        let (connection, _frames) = connection();
        let shared = &connection.shared;
        let (first, mut first_answered) = oneshot::channel();
        let (second, mut second_answered) = oneshot::channel();
        shared.state.lock().unwrap().waiting.extend([first, second]);
        let qos_ok = method(CHANNEL, BASIC_QOS_OK, |_| Ok(())).unwrap();
        feed(shared, &qos_ok, 4096).unwrap();
        assert!(first_answered.try_recv().is_ok());
        assert!(second_answered.try_recv().is_err(), "not answered yet");
        feed(shared, &qos_ok, 4096).unwrap();
        assert!(second_answered.try_recv().is_ok());
        let err = feed(shared, &qos_ok, 4096).unwrap_err().to_string();
        assert!(err.contains("nobody asked for"), "{err}");
    }

    #[test]
    fn rabbitmq_closing_the_channel_ends_the_connection_with_its_reason() {
        let (connection, mut frames) = connection();
        let shared = connection.shared.clone();
        let close = method(CHANNEL, CHANNEL_CLOSE, |b| {
            b.extend_from_slice(&404u16.to_be_bytes());
            short(b, "NOT_FOUND - no queue 'gsl.room.r1'")?;
            b.extend_from_slice(&[0, 60, 0, 20]);
            Ok(())
        })
        .unwrap();
        let why = feed(&shared, &close, 5).unwrap().unwrap();
        assert!(why.contains("404 NOT_FOUND - no queue"), "{why}");
        let answer = frames.try_recv().unwrap();
        let close_ok = split_frame(&answer).unwrap().unwrap();
        assert_eq!(
            &close_ok.payload[..4],
            &[0, 20, 0, 41],
            "it answers Close-Ok"
        );
        shared.end(why);
        drop(frames); // the writer task ends with the connection
        let err = connection.publish("amq.topic", "k", b"{}").unwrap_err();
        assert!(err.to_string().contains("NOT_FOUND"), "{err}");
        let err = connection.ack(1).unwrap_err();
        assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    }

    /// The machine's RabbitMQ (`tests/run` starts it), as guest: `GSL_TEST_AMQP`
    /// (`HOST:PORT`) or 127.0.0.1:5672.
    fn rabbitmq(passcode: &str) -> Options<'_> {
        static ADDRESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let address = ADDRESS.get_or_init(|| {
            std::env::var("GSL_TEST_AMQP").unwrap_or_else(|_| "127.0.0.1:5672".into())
        });
        Options {
            address,
            login: "guest",
            passcode,
            vhost: "/",
            heartbeat: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn rabbitmq_takes_the_handshake_publishes_and_barriers_and_says_why_it_refuses() {
        let err = Connection::open(rabbitmq("not the password"))
            .await
            .err()
            .expect("a wrong password is refused");
        assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");

        let connection = Connection::open(rabbitmq("guest")).await.unwrap();
        // Bodies over one frame, to nobody: RabbitMQ drops them, and would close the
        // connection on a malformed one before answering the barrier.
        for size in [0, 10, 200_000] {
            let body = vec![b'x'; size];
            connection
                .publish("amq.topic", "gsl.nobody", &body)
                .unwrap();
        }
        connection.qos(16).await.unwrap();
        assert_eq!(connection.closed(), None);
        // A queue that is not there: RabbitMQ closes the channel, and says why.
        let err = connection
            .consume("gsl.no-such-queue", "t", 8)
            .await
            .expect_err("no such queue");
        assert!(err.to_string().contains("NOT_FOUND"), "{err}");
        assert!(connection.closed().unwrap().contains("NOT_FOUND"));

        // A connection dropped without closing (a worker that panicked) does not linger.
        let dropped = Connection::open(rabbitmq("guest")).await.unwrap();
        let shared = dropped.shared.clone();
        drop(dropped);
        let waited = std::time::Instant::now();
        while shared.state.lock().unwrap().closed.is_none() {
            assert!(waited.elapsed() < Duration::from_secs(5), "still connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let other = Connection::open(rabbitmq("guest")).await.unwrap();
        other.close().await;
        assert_eq!(other.closed().as_deref(), Some("closed by the worker"));
        assert!(other.qos(1).await.is_err(), "nothing goes out once closed");
    }

    #[test]
    fn malformed_frames_are_protocol_errors_not_panics() {
        let (connection, _frames) = connection();
        // What reading `bytes` fails with.
        let error = |bytes: &[u8]| {
            feed(&connection.shared, bytes, 4096)
                .unwrap_err()
                .to_string()
        };
        // A frame of `kind` holding `payload` as it is.
        let raw = |kind: u8, payload: &[u8]| {
            let mut bytes = Vec::new();
            frame(&mut bytes, kind, CHANNEL, |b| {
                b.extend_from_slice(payload);
                Ok(())
            })
            .unwrap();
            bytes
        };
        // No frame-end octet.
        let mut bad_end = method(CHANNEL, BASIC_QOS_OK, |_| Ok(())).unwrap();
        *bad_end.last_mut().unwrap() = 0;
        assert!(error(&bad_end).contains("end octet"));
        // A size past the frame max: refused before its bytes arrive.
        let huge = [METHOD, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(split_frame(&huge).unwrap_err().to_string().contains("over"));
        // A type AMQP does not have.
        assert!(error(&raw(9, b"")).contains("unknown type 9"));
        // A method cut short.
        assert!(error(&raw(METHOD, &[0, 60, 0, 60, 200])).contains("shorter"));
        // A body with no delivery before it.
        assert!(error(&raw(BODY, b"{}")).contains("without its delivery"));
        // A method this client never asked for.
        let get_ok = method(CHANNEL, (60, 71), |_| Ok(())).unwrap();
        assert!(error(&get_ok).contains("unexpected method"));
        // A content header claiming a body of a terabyte: nothing is set aside for it
        // up front, and the delivery waits for bodies that will not come.
        let mut huge = delivery(1, b"", 10);
        let header_at = huge.len() - (7 + 14 + 1);
        huge[header_at + 7 + 4..header_at + 7 + 12].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(feed(&connection.shared, &huge, 4096).unwrap(), None);
        // Names longer than a short string holds.
        let long_name = "r".repeat(300);
        let err = connection
            .publish("amq.topic", &long_name, b"{}")
            .unwrap_err();
        assert!(err.to_string().contains("over 255 bytes"), "{err}");
    }
}
