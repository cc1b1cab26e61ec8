//! One client connection: the CONNECT handshake, then frames in, frames out.

use super::state::{Kill, Out, Refusal, SessionId, State};
use super::Broker;
use crate::stomp::{parse_heartbeat, write_loop, Command, Frame, Item, Transport};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a DISCONNECT waits for the receipts a group commit still holds.
const HELD_RECEIPTS_WAIT: Duration = Duration::from_secs(5);

/// Versions this broker speaks, best first.
const VERSIONS: [&str; 3] = ["1.2", "1.1", "1.0"];

/// Serves one connection until it closes.
pub(crate) async fn run(broker: Broker, transport: Transport, peer: Option<SocketAddr>) {
    let Transport {
        mut incoming,
        mut outgoing,
        in_memory,
    } = transport;
    let (config, authorizer) = {
        let core = broker.lock();
        (core.config().clone(), core.authorizer())
    };

    let connect = tokio::time::timeout(config.connect_timeout, async {
        loop {
            match incoming.next().await {
                Some(Ok(Item::Heartbeat)) => continue,
                Some(Ok(Item::Frame(f))) => return Ok(f),
                Some(Ok(Item::Encoded(_))) => {
                    return Err(Refusal::from_error(&crate::stomp::unexpected_encoded()))
                }
                Some(Err(e)) => return Err(Refusal::from_error(&e)),
                None => return Err(Refusal::closed()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(Refusal::malformed(
            "no CONNECT frame",
            format!(
                "Send CONNECT within {:?} of opening the connection.",
                config.connect_timeout
            ),
        ))
    });
    let accepted = connect.and_then(|frame| {
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
        let principal = authorizer
            .connect(frame.header("login"), frame.header("passcode"), peer)
            .map_err(|why| Refusal::access("access refused", why))?;
        Ok((frame, version, principal))
    });
    let (connect, version, principal) = match accepted {
        Ok(ok) => ok,
        Err(refusal) if refusal.is_close() => return,
        Err(refusal) => {
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
            return;
        }
    };

    let (cx, cy) = parse_heartbeat(connect.header("heart-beat").unwrap_or("0,0"));
    let (sx, sy) = config.heartbeat;
    let send_every = (sx != 0 && cy != 0).then(|| Duration::from_millis(sx.max(cy)));
    let expect_every = (cx != 0 && sy != 0).then(|| Duration::from_millis(cx.max(sy)));

    let (tx, rx) = mpsc::channel(config.outbox_capacity);
    let kill = Arc::new(Kill::default());
    let added = broker
        .lock()
        .add_session(principal, peer, tx, kill.clone(), !in_memory);
    let id = match added {
        Ok(id) => id,
        Err(refusal) => {
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
            return;
        }
    };
    let connected = Frame::new(Command::Connected)
        .with_header("version", version)
        .with_header("server", config.server_name.clone())
        .with_header("session", format!("session-{id}"))
        .with_header("heart-beat", format!("{},{}", sx, sy));
    if outgoing.send(Item::Frame(connected)).await.is_err() {
        broker.lock().remove_session(id);
        return;
    }
    // The writer hands its queue back when it ends, so that a slow reader's backlog is
    // freed off the runtime's threads (see below).
    let stop_writer = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let stop = stop_writer.clone();
        let mut rx = rx;
        tokio::spawn(async move {
            tokio::select! {
                _ = write_loop(outgoing, &mut rx, send_every) => {}
                _ = stop.notified() => {}
            }
            rx
        })
    };

    // Made once for the whole connection: a fresh one per frame would lock a waiter
    // list twice for every frame received.
    let mut shutdown = broker.shutdown.subscribe();
    let stopping = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stopping);
    let killed = kill.notify.notified();
    tokio::pin!(killed);
    let deadline = expect_every.map(|d| d * 2);
    let mut slow = false;
    // An item read ahead while batching (see below), handled before reading again.
    let mut lookahead: Option<Result<Option<Item>, Refusal>> = None;
    let ending: Option<(Refusal, Option<String>)> = loop {
        let next = match lookahead.take() {
            Some(next) => next,
            None => tokio::select! {
                biased;
                _ = &mut killed => {
                    if kill.kicked.load(std::sync::atomic::Ordering::SeqCst) {
                        break Some((Refusal::new("disconnected by the server", "The server closed this connection; unacknowledged messages were requeued."), None));
                    }
                    slow = true;
                    break Some((Refusal::limit("slow consumer", "The connection could not keep up with its messages and was closed; unacknowledged messages were requeued."), None));
                }
                _ = &mut stopping => {
                    break Some((Refusal::new("server shutting down", "The server is shutting down; reconnect later."), None));
                }
                next = next_item(&mut incoming, deadline) => next,
            },
        };
        let mut frame = match next {
            Ok(Some(Item::Frame(frame))) => frame,
            Ok(Some(Item::Heartbeat)) => continue,
            Ok(Some(Item::Encoded(_))) => break None,
            Ok(None) => break None,
            Err(refusal) if refusal.is_close() => break None,
            Err(refusal) => break Some((refusal, None)),
        };
        if frame.command == Command::Disconnect {
            // Receipts still waiting for the journal's flush go out before the
            // DISCONNECT's own and the close (a flush takes milliseconds; a disk that
            // hangs does not keep the connection past a few seconds).
            let waiting = std::time::Instant::now();
            while broker.lock().holds_receipts_for(id) && waiting.elapsed() < HELD_RECEIPTS_WAIT {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let mut core = broker.lock();
        let mut handled = 0;
        let step = loop {
            if let Some(ending) = handle(&mut core, id, frame) {
                break Some(ending);
            }
            handled += 1;
            // An in-process worker's frames come in bursts (its outputs, then its acks):
            // those already waiting go through under the same lock, up to a batch. Not
            // for sockets, whose reads would lengthen the lock.
            if !in_memory || handled == BATCH {
                break None;
            }
            match ready_frame(&mut incoming) {
                Ok(next) => frame = next,
                Err(None) => break None,
                Err(Some(item)) => {
                    lookahead = Some(item);
                    break None;
                }
            }
        };
        drop(core);
        if let Some(ending) = step {
            break ending;
        }
    };

    {
        let mut core = broker.lock();
        if let Some((refusal, receipt)) = ending {
            core.count_refusal(&refusal);
            tracing::debug!(
                ?peer,
                session = id,
                "closing a connection: {}",
                refusal.message
            );
            core.send_to(id, Out::Frame(refusal.into_frame(receipt.as_deref())));
            core.send_to(id, Out::Close);
        }
        core.remove_session(id);
    }
    if slow {
        // Its socket is full: stop writing. Freeing thousands of queued frames takes a
        // while, and on a runtime thread it would stall every other connection.
        stop_writer.notify_one();
        if let Ok(backlog) = writer.await {
            tokio::task::spawn_blocking(move || drop(backlog));
        }
    } else if tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        tracing::debug!(session = id, "writer did not finish flushing in 10 s");
    }
}

/// Frames an in-process connection may hand over under one lock of the broker.
const BATCH: usize = 64;

/// Handles one frame: `None` to go on, `Some(ending)` when the connection ends (with the
/// refusal to send, if any).
#[allow(clippy::type_complexity)]
fn handle(
    core: &mut State,
    id: SessionId,
    frame: Frame,
) -> Option<Option<(Refusal, Option<String>)>> {
    let receipt = frame.header("receipt").map(str::to_owned);
    let disconnect = frame.command == Command::Disconnect;
    match core.handle(id, frame) {
        Ok(()) => {
            // A SEND dropped by its rate limit was not accepted: no receipt.
            let dropped = core.take_dropped();
            let receipt = receipt.filter(|_| !dropped);
            match (receipt, core.take_unsynced()) {
                // Kept once the journal's group commit has it on the disk.
                (Some(receipt), Some(lsn)) => core.hold_receipt(lsn, id, receipt),
                (Some(receipt), None) => {
                    let frame = Frame::new(Command::Receipt).with_header("receipt-id", receipt);
                    core.send_to(id, Out::Frame(frame));
                }
                (None, _) => {}
            }
            if disconnect {
                core.send_to(id, Out::Close);
                return Some(None);
            }
            None
        }
        Err(refusal) => Some(Some((refusal, receipt))),
    }
}

/// A frame that has arrived already (heart-beats skipped): `Err(None)` when none has,
/// `Err(Some(item))` for anything to handle on its own (a DISCONNECT, an error, the end).
#[allow(clippy::type_complexity)]
fn ready_frame(
    incoming: &mut crate::stomp::ItemStream,
) -> Result<Frame, Option<Result<Option<Item>, Refusal>>> {
    loop {
        let item = match incoming.next().now_or_never() {
            None => return Err(None),
            Some(None) => return Err(Some(Ok(None))),
            Some(Some(Err(e))) => return Err(Some(Err(Refusal::from_error(&e)))),
            Some(Some(Ok(item))) => item,
        };
        match item {
            Item::Heartbeat => continue,
            Item::Frame(f) if f.command != Command::Disconnect => return Ok(f),
            other => return Err(Some(Ok(Some(other)))),
        }
    }
}

async fn next_item(
    incoming: &mut crate::stomp::ItemStream,
    deadline: Option<Duration>,
) -> Result<Option<Item>, Refusal> {
    let next = match deadline {
        Some(d) => tokio::time::timeout(d, incoming.next())
            .await
            .map_err(|_| {
                Refusal::new(
                    "heart-beat timeout",
                    format!("Nothing was received for {} ms.", d.as_millis()),
                )
            })?,
        None => incoming.next().await,
    };
    match next {
        None => Ok(None),
        Some(Ok(item)) => Ok(Some(item)),
        Some(Err(e)) => Err(Refusal::from_error(&e)),
    }
}

impl Refusal {
    fn from_error(error: &crate::stomp::Error) -> Refusal {
        match error {
            crate::stomp::Error::Frame(e) => Refusal::malformed(
                format!("malformed frame: {e}"),
                "The frame could not be parsed; see the STOMP 1.2 specification.",
            ),
            crate::stomp::Error::Io(_)
            | crate::stomp::Error::WebSocket(_)
            | crate::stomp::Error::Closed(_) => Refusal::closed(),
            other => Refusal::new(other.to_string(), ""),
        }
    }

    /// The connection is gone: there is nobody to send an ERROR to.
    fn closed() -> Refusal {
        Refusal::new("", "")
    }

    fn is_close(&self) -> bool {
        self.message.is_empty()
    }

    fn into_frame(self, receipt: Option<&str>) -> Frame {
        let mut frame = Frame::error(self.message, self.detail);
        if let Some(r) = receipt {
            frame = frame.with_header("receipt-id", r);
        }
        frame.headers.extend(self.headers);
        frame
    }
}
