//! One client connection, in three phases: the CONNECT handshake, then serving its
//! frames (each handed to the broker's [`State`] under its lock), then closing, with an
//! ERROR frame that says why when there is someone to say it to.

use super::state::{Kill, Outbound, Refusal, SessionId, State};
use super::{Broker, BrokerConfig, Principal};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use stomp::{write_loop, Command, Frame, HeartBeat, Item, ItemSink, ItemStream, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a DISCONNECT waits for the receipts a group commit still holds.
const HELD_RECEIPTS_WAIT: Duration = Duration::from_secs(5);

/// How long a closing connection's writer may take to flush what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Versions this broker speaks, best first.
const VERSIONS: [&str; 3] = ["1.2", "1.1", "1.0"];

/// Frames an in-process connection may hand over under one lock of the broker.
const BATCH: usize = 64;

/// How a connection ends.
#[derive(Debug)]
enum Ending {
    /// The peer went away, or its socket failed: there is nobody to tell.
    Gone,
    /// The client sent DISCONNECT; its RECEIPT and the close are queued.
    Disconnected,
    /// The broker refused a frame, or ends the connection: the ERROR frame goes out
    /// (naming the refused frame's receipt, if it asked for one), then the close.
    Refused {
        refusal: Refusal,
        receipt: Option<String>,
    },
    /// It could not keep up with its messages: it is told so, and what it has queued is
    /// dropped unwritten.
    TooSlow,
}

impl Ending {
    /// Ends with `refusal`, for no frame in particular.
    fn refused(refusal: Refusal) -> Ending {
        Ending::Refused {
            refusal,
            receipt: None,
        }
    }

    /// The ending an error reading the connection means.
    fn from_error(error: &stomp::Error) -> Ending {
        use stomp::Error;
        match error {
            Error::Frame(e) => Ending::refused(Refusal::malformed(
                format!("malformed frame: {e}"),
                "The frame could not be parsed; see the STOMP 1.2 specification.",
            )),
            Error::Io(_) | Error::WebSocket(_) | Error::Closed(_) => Ending::Gone,
            other => Ending::refused(Refusal::new(other.to_string(), "")),
        }
    }
}

/// What the CONNECT handshake settled.
struct Accepted {
    principal: Principal,
    version: &'static str,
    /// The heart-beats the client offered.
    client_heartbeat: HeartBeat,
}

/// Serves one connection until it closes.
pub(crate) async fn run(broker: Broker, transport: Transport, peer: Option<SocketAddr>) {
    let Transport {
        mut incoming,
        mut outgoing,
        in_memory,
    } = transport;
    let config = broker.lock().config().clone();
    let accepted = match handshake(&broker, &config, &mut incoming, peer).await {
        Ok(accepted) => accepted,
        Err(Ending::Refused { refusal, .. }) => {
            return refuse(&broker, outgoing, refusal, peer).await
        }
        Err(_) => return,
    };
    let (send_every, expect_every) = config.heartbeat.negotiate(accepted.client_heartbeat);

    let (tx, rx) = mpsc::channel(config.outbox_capacity);
    let kill = Arc::new(Kill::default());
    let added = broker
        .lock()
        .add_session(accepted.principal, peer, tx, kill.clone(), !in_memory);
    let id = match added {
        Ok(id) => id,
        Err(refusal) => return refuse(&broker, outgoing, refusal, peer).await,
    };
    let connected = Frame::new(Command::Connected)
        .with_header("version", accepted.version)
        .with_header("server", config.server_name.clone())
        .with_header("session", format!("session-{id}"))
        .with_header("heart-beat", config.heartbeat.header());
    if outgoing.send(Item::Frame(connected)).await.is_err() {
        broker.lock().remove_session(id);
        return;
    }
    let writer = Writer::spawn(outgoing, rx, send_every);
    // A peer that sends heart-beats is given twice their interval before it counts as
    // gone.
    let deadline = expect_every.map(|d| d * 2);
    let ending = serve(&broker, id, &mut incoming, in_memory, &kill, deadline).await;
    close(&broker, id, ending, writer, peer).await;
}

/// Reads the CONNECT frame (within the connect timeout) and settles the version and
/// who the client is.
async fn handshake(
    broker: &Broker,
    config: &BrokerConfig,
    incoming: &mut ItemStream,
    peer: Option<SocketAddr>,
) -> Result<Accepted, Ending> {
    let first = tokio::time::timeout(config.connect_timeout, first_frame(incoming))
        .await
        .unwrap_or_else(|_| {
            Err(Ending::refused(Refusal::malformed(
                "no CONNECT frame",
                format!(
                    "Send CONNECT within {:?} of opening the connection.",
                    config.connect_timeout
                ),
            )))
        })?;
    let authorizer = broker.lock().authorizer();
    negotiate(&first, |login, passcode| {
        authorizer.connect(login, passcode, peer)
    })
    .map_err(Ending::refused)
}

/// The first frame of a connection, heart-beats skipped.
async fn first_frame(incoming: &mut ItemStream) -> Result<Frame, Ending> {
    loop {
        match incoming.next().await {
            Some(Ok(Item::Heartbeat)) => continue,
            Some(Ok(Item::Frame(f))) => return Ok(f),
            Some(Ok(Item::Encoded(_))) => {
                return Err(Ending::from_error(&stomp::unexpected_encoded()))
            }
            Some(Err(e)) => return Err(Ending::from_error(&e)),
            None => return Err(Ending::Gone),
        }
    }
}

/// Checks a CONNECT frame: the command, a version both sides speak, and the
/// credentials (which `connect` judges).
fn negotiate(
    frame: &Frame,
    connect: impl FnOnce(Option<&str>, Option<&str>) -> Result<Principal, String>,
) -> Result<Accepted, Refusal> {
    if !matches!(frame.command, Command::Connect | Command::Stomp) {
        return Err(Refusal::malformed(
            format!("expected CONNECT, got {}", frame.command),
            "The first frame on a connection must be CONNECT or STOMP.",
        ));
    }
    let offered = frame.header("accept-version").unwrap_or("1.0");
    let version = VERSIONS
        .into_iter()
        .find(|v| offered.split(',').any(|o| o.trim() == *v))
        .ok_or_else(|| {
            Refusal::new(
                format!("unsupported protocol versions {offered:?}"),
                format!("Supported protocol versions are {}", VERSIONS.join(",")),
            )
            .with_header("version", VERSIONS.join(","))
        })?;
    let principal = connect(frame.header("login"), frame.header("passcode"))
        .map_err(|why| Refusal::access("access refused", why))?;
    Ok(Accepted {
        principal,
        version,
        client_heartbeat: HeartBeat::parse(frame.header("heart-beat").unwrap_or("0,0")),
    })
}

/// Answers a connection the broker would not take with an ERROR frame, and closes it.
async fn refuse(
    broker: &Broker,
    mut outgoing: ItemSink,
    refusal: Refusal,
    peer: Option<SocketAddr>,
) {
    tracing::debug!(?peer, "refused a connection: {}", refusal.message);
    broker.lock().count_refusal(&refusal);
    // A sink whose write failed is not closed: that would panic.
    if outgoing
        .send(Item::Frame(refusal.into_frame(None)))
        .await
        .is_ok()
    {
        let _ = outgoing.close().await;
    }
}

/// Hands the connection's frames to the broker until it ends: the peer goes, the
/// client disconnects, a frame is refused, or the broker ends it (a kick, a slow
/// consumer, shutdown).
async fn serve(
    broker: &Broker,
    id: SessionId,
    incoming: &mut ItemStream,
    in_memory: bool,
    kill: &Kill,
    deadline: Option<Duration>,
) -> Ending {
    // Made once for the whole connection: a fresh one per frame would lock a waiter
    // list twice for every frame received.
    let mut shutdown = broker.shutdown.subscribe();
    let stopping = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stopping);
    let killed = kill.notify.notified();
    tokio::pin!(killed);
    // A frame (or the end) read ahead while batching, handled before reading again.
    let mut lookahead: Option<Result<Frame, Ending>> = None;
    loop {
        let next = match lookahead.take() {
            Some(next) => next,
            None => tokio::select! {
                biased;
                _ = &mut killed => return killed_ending(kill),
                _ = &mut stopping => return Ending::refused(Refusal::new(
                    "server shutting down",
                    "The server is shutting down; reconnect later.",
                )),
                next = next_frame(incoming, deadline) => next,
            },
        };
        let frame = match next {
            Ok(frame) => frame,
            Err(ending) => return ending,
        };
        if frame.command == Command::Disconnect {
            wait_for_held_receipts(broker, id).await;
        }
        let batch = handle_batch(broker, id, kill, frame, incoming, in_memory, &mut lookahead);
        if let Some(ending) = batch {
            return ending;
        }
    }
}

/// Why a connection was closed from outside its loop.
fn killed_ending(kill: &Kill) -> Ending {
    let refused = kill
        .refused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some((refusal, receipt)) = refused {
        return Ending::Refused { refusal, receipt };
    }
    if kill.kicked.load(std::sync::atomic::Ordering::SeqCst) {
        return Ending::refused(Refusal::new(
            "disconnected by the server",
            "The server closed this connection; unacknowledged messages were requeued.",
        ));
    }
    Ending::TooSlow
}

/// Receipts still waiting for the journal's flush go out before a DISCONNECT's own and
/// the close (a flush takes milliseconds; a disk that hangs does not keep the connection
/// past a few seconds).
async fn wait_for_held_receipts(broker: &Broker, id: SessionId) {
    let waiting = std::time::Instant::now();
    while broker.lock().holds_receipts_for(id) && waiting.elapsed() < HELD_RECEIPTS_WAIT {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Handles `frame` under the broker's lock and, for an in-process connection, the
/// frames that have already arrived after it: an in-process worker's frames come in
/// bursts (its outputs, then its acks), and those waiting go through under the same
/// lock, up to a batch. Not for sockets, whose reads would lengthen the lock.
///
/// A frame that finds the lock taken is left for its holder instead (`handover.rs`): if
/// it is refused there, the connection hears of it as of a kick. A DISCONNECT waits for
/// the lock, since the connection ends with it.
fn handle_batch(
    broker: &Broker,
    id: SessionId,
    kill: &Kill,
    mut frame: Frame,
    incoming: &mut ItemStream,
    in_memory: bool,
    lookahead: &mut Option<Result<Frame, Ending>>,
) -> Option<Ending> {
    let mut state = match broker.try_lock() {
        Some(state) => state,
        // One frame left at a time: a flood waits for the lock, as it always did, and
        // does not get ahead of everyone else's frames.
        None if frame.command != Command::Disconnect && !kill.waiting.load(Ordering::SeqCst) => {
            kill.waiting.store(true, Ordering::SeqCst);
            match broker.handover.leave(id, frame) {
                Ok(()) => {
                    // The holder may have let go meanwhile, without seeing it.
                    drop(broker.try_lock());
                    return None;
                }
                Err(back) => {
                    kill.waiting.store(false, Ordering::SeqCst);
                    frame = back;
                    broker.lock()
                }
            }
        }
        None => broker.lock(),
    };
    // A frame this connection left was refused when the lock was taken: what follows it
    // is dropped.
    if kill
        .refused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
    {
        return Some(killed_ending(kill));
    }
    for handled in 1.. {
        if let Some(ending) = handle(&mut state, id, frame) {
            return Some(ending);
        }
        if !in_memory || handled == BATCH {
            return None;
        }
        match ready_frame(incoming) {
            Ready::Frame(next) => frame = next,
            Ready::Nothing => return None,
            Ready::OnItsOwn(next) => {
                *lookahead = Some(next);
                return None;
            }
        }
    }
    None
}

/// Handles a frame its connection left for the lock's holder (`handover.rs`). A refusal
/// ends the connection from outside its loop, as a kick does, and the frames it left
/// after the refused one are dropped, as a refusal drops what follows it.
pub(crate) fn handle_left(state: &mut State, id: SessionId, frame: Frame) {
    let Some(kill) = state.kill_of(id) else {
        return; // The connection is gone.
    };
    kill.waiting.store(false, Ordering::SeqCst);
    let refused = || kill.refused.lock().unwrap_or_else(|e| e.into_inner());
    if refused().is_some() {
        return;
    }
    if let Some(Ending::Refused { refusal, receipt }) = handle(state, id, frame) {
        *refused() = Some((refusal, receipt));
        kill.notify.notify_one();
    }
}

/// Handles one frame: `None` to go on, or how the connection ends.
fn handle(state: &mut State, id: SessionId, frame: Frame) -> Option<Ending> {
    let receipt = frame.header("receipt").map(str::to_owned);
    let disconnect = frame.command == Command::Disconnect;
    if let Err(refusal) = state.handle(id, frame) {
        return Some(Ending::Refused { refusal, receipt });
    }
    // A SEND dropped by its rate limit was not accepted: no receipt.
    let dropped = state.take_dropped();
    let receipt = receipt.filter(|_| !dropped);
    match (receipt, state.take_unsynced()) {
        // Kept once the journal's group commit has it on the disk.
        (Some(receipt), Some(lsn)) => state.hold_receipt(lsn, id, receipt),
        (Some(receipt), None) => state.send_receipt(id, &receipt),
        (None, _) => {}
    }
    if disconnect {
        state.send_to(id, Outbound::Close);
        return Some(Ending::Disconnected);
    }
    None
}

/// What has already arrived on a connection, looked at without waiting.
enum Ready {
    /// A frame to handle in the same batch.
    Frame(Frame),
    /// Nothing yet.
    Nothing,
    /// Something to handle on its own: a DISCONNECT, or the end of the connection.
    OnItsOwn(Result<Frame, Ending>),
}

/// A frame that has arrived already, heart-beats skipped.
fn ready_frame(incoming: &mut ItemStream) -> Ready {
    loop {
        let item = match incoming.next().now_or_never() {
            None => return Ready::Nothing,
            Some(None) => return Ready::OnItsOwn(Err(Ending::Gone)),
            Some(Some(Err(e))) => return Ready::OnItsOwn(Err(Ending::from_error(&e))),
            Some(Some(Ok(item))) => item,
        };
        match item {
            Item::Heartbeat => continue,
            Item::Frame(f) if f.command != Command::Disconnect => return Ready::Frame(f),
            Item::Frame(f) => return Ready::OnItsOwn(Ok(f)),
            Item::Encoded(_) => return Ready::OnItsOwn(Err(Ending::Gone)),
        }
    }
}

/// The next frame, heart-beats skipped; with a `deadline`, a peer silent for that long
/// is gone.
async fn next_frame(
    incoming: &mut ItemStream,
    deadline: Option<Duration>,
) -> Result<Frame, Ending> {
    loop {
        let next = match deadline {
            Some(d) => tokio::time::timeout(d, incoming.next())
                .await
                .map_err(|_| {
                    Ending::refused(Refusal::new(
                        "heart-beat timeout",
                        format!("Nothing was received for {} ms.", d.as_millis()),
                    ))
                })?,
            None => incoming.next().await,
        };
        match next {
            Some(Ok(Item::Frame(frame))) => return Ok(frame),
            Some(Ok(Item::Heartbeat)) => continue,
            Some(Ok(Item::Encoded(_))) | None => return Err(Ending::Gone),
            Some(Err(e)) => return Err(Ending::from_error(&e)),
        }
    }
}

/// Tells the client why the connection ends (if there is a why and a client), forgets
/// the session (its unacked messages go back in line), and lets the writer finish.
async fn close(
    broker: &Broker,
    id: SessionId,
    ending: Ending,
    writer: Writer,
    peer: Option<SocketAddr>,
) {
    let too_slow = matches!(ending, Ending::TooSlow);
    let refused = match ending {
        Ending::Gone | Ending::Disconnected => None,
        Ending::Refused { refusal, receipt } => Some((refusal, receipt)),
        Ending::TooSlow => Some((
            Refusal::limit(
                "slow consumer",
                "The connection could not keep up with its messages and was closed; unacknowledged messages were requeued.",
            ),
            None,
        )),
    };
    {
        let mut state = broker.lock();
        if let Some((refusal, receipt)) = refused {
            state.count_refusal(&refusal);
            tracing::debug!(
                ?peer,
                session = id,
                "closing a connection: {}",
                refusal.message
            );
            state.send_to(id, Outbound::Frame(refusal.into_frame(receipt.as_deref())));
            state.send_to(id, Outbound::Close);
        }
        state.remove_session(id);
    }
    if too_slow {
        writer.abandon().await;
    } else {
        writer.finish(id).await;
    }
}

/// A connection's writer task. It hands its queue back when it ends, so that a slow
/// reader's backlog is freed off the runtime's threads.
struct Writer {
    task: JoinHandle<mpsc::Receiver<Outbound>>,
    stop: AbortHandle,
}

impl Writer {
    /// Writes what the session's outbox receives, with heart-beats every `heartbeat`.
    fn spawn(
        outgoing: ItemSink,
        mut rx: mpsc::Receiver<Outbound>,
        heartbeat: Option<Duration>,
    ) -> Writer {
        let (stop, stopped) = AbortHandle::new_pair();
        let task = tokio::spawn(async move {
            // Whenever the writer waits (its outbox empty, or its socket full), the stop
            // is looked at too: an atomic flag, where a `Notify` would take its lock at
            // every wake of every writer.
            let _ = Abortable::new(write_loop(outgoing, &mut rx, heartbeat), stopped).await;
            rx
        });
        Writer { task, stop }
    }

    /// Lets the writer flush what is queued, for a while.
    async fn finish(self, id: SessionId) {
        if tokio::time::timeout(FLUSH_WAIT, self.task).await.is_err() {
            tracing::debug!(
                session = id,
                "writer did not finish flushing in {FLUSH_WAIT:?}"
            );
        }
    }

    /// Stops the writer: its socket is full. Freeing thousands of queued frames takes a
    /// while, and on a runtime thread it would stall every other connection.
    async fn abandon(self) {
        self.stop.abort();
        if let Ok(backlog) = self.task.await {
            tokio::task::spawn_blocking(move || drop(backlog));
        }
    }
}

impl Refusal {
    /// The ERROR frame that says it, naming the refused frame's `receipt` if any.
    fn into_frame(self, receipt: Option<&str>) -> Frame {
        let mut frame = Frame::error(self.message, self.detail);
        if let Some(r) = receipt {
            frame = frame.with_header("receipt-id", r);
        }
        frame.headers.extend(self.headers);
        frame
    }
}
