//! The broker's state and rules, without sockets (sans-IO): sessions, queues, topics,
//! subscriptions, acks. A session hands in frames with [`State::handle`] and gets frames
//! back through its outbox; nothing here reads or writes a socket, so the tests below
//! drive it with plain frames.
//!
//! Every operation runs under one lock (the [`Broker`](super::Broker)'s), so "the order
//! the broker accepted messages in" is well defined, and each session's outbox receives
//! frames in exactly that order.
//!
//! One concept a file:
//! - [`destination`]: what a destination name is, and who may create it;
//! - [`connections`]: sessions coming and going, and their limits;
//! - [`rate`]: each session's token bucket for SENDs to queues;
//! - [`queue`]: SEND and publish, delivery to consumers (`deliver_ready`), requeueing;
//! - [`subscription`]: SUBSCRIBE and UNSUBSCRIBE;
//! - [`ack`]: ACK and NACK, cumulative and individual;
//! - [`transaction`]: BEGIN, COMMIT, ABORT and the frames buffered in between;
//! - [`durability`]: the journal, and the group commit that holds deliveries and
//!   receipts until the disk has them;
//! - [`inline`]: consumers in the broker's process that take their messages where they
//!   are delivered, and publish what they make of them in the same call.

mod ack;
mod connections;
mod destination;
mod durability;
mod inline;
mod queue;
mod rate;
mod subscription;
mod transaction;

#[cfg(test)]
mod testkit;

use self::durability::Durability;
use self::rate::Bucket;
use super::journal::Journal;
use super::{Authorizer, BrokerConfig, Principal, QueueOptions, Stats};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use stomp::{AckMode, Command, Frame};
use tokio::sync::{mpsc, Notify};

/// A session id, unique within a broker's life.
pub(crate) type SessionId = u64;

pub(crate) use stomp::Outbound;

/// The broker's maps, looked up several times for every delivery: foldhash, seeded at
/// random per process, instead of SipHash, which took 2-3% of the server's CPU at 1,000
/// players. Their keys are the broker's own ids and names, and a client's destination
/// names and subscription ids, which the broker bounds per connection.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Closes a connection from outside its own loop: when it cannot keep up, or when it is
/// kicked (then it is told why, and what it has queued is still written).
#[derive(Debug, Default)]
pub(crate) struct Kill {
    pub notify: Notify,
    pub kicked: std::sync::atomic::AtomicBool,
    /// A frame the connection left for the lock's holder was refused: the refusal, and
    /// the frame's receipt (see `handover.rs`).
    pub refused: std::sync::Mutex<Option<(Refusal, Option<String>)>>,
    /// The connection has a frame left for the lock's holder, not yet handled: its next
    /// waits for the lock, so that no connection gets more than a frame ahead of the
    /// others (see `handover.rs`).
    pub waiting: std::sync::atomic::AtomicBool,
}

impl Kill {
    fn slow(&self) {
        self.notify.notify_one();
    }

    pub(super) fn kick(&self) {
        self.kicked.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// A message as the broker stores it: immutable, shared between deliveries.
#[derive(Debug)]
pub(crate) struct Stored {
    /// Its place in the broker's order; its `message-id` is `m-SEQ`, written where a
    /// frame needs it (formatting it for every message cost 1% of the server's work).
    pub seq: u64,
    pub destination: String,
    /// The sender's own headers, passed through to MESSAGE frames.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// What every subscriber's MESSAGE frame ends with, encoded once, at first need.
    pub tail: std::sync::OnceLock<stomp::Wire>,
}

impl Stored {
    /// The MESSAGE frame's common part: message-id, destination, the sender's headers
    /// and the body, in wire form.
    fn tail(&self) -> &stomp::Wire {
        self.tail.get_or_init(|| {
            let mut id = MessageId::new();
            let fixed = [
                ("message-id", id.of(self.seq)),
                ("destination", self.destination.as_str()),
            ];
            let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            stomp::encode_message_tail(fixed.into_iter().chain(headers), &self.body)
        })
    }
}

/// A message's `message-id`, `m-SEQ`, written without `format!`.
pub(crate) struct MessageId([u8; 22]);

impl MessageId {
    pub(crate) fn new() -> MessageId {
        MessageId([0; 22])
    }

    /// `m-SEQ`, in this buffer.
    pub(crate) fn of(&mut self, seq: u64) -> &str {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(seq).as_bytes();
        self.0[0] = b'm';
        self.0[1] = b'-';
        self.0[2..2 + digits.len()].copy_from_slice(digits);
        std::str::from_utf8(&self.0[..2 + digits.len()]).expect("ASCII")
    }
}

/// A message in a queue: its place in the broker's order (also its journal lsn).
#[derive(Debug, Clone)]
struct Queued {
    seq: u64,
    msg: Arc<Stored>,
    redelivered: bool,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Queued>,
    consumers: Vec<(SessionId, String)>,
    next_consumer: usize,
    /// Set for the private queue behind one topic subscription.
    topic: Option<String>,
    /// Only the oldest consumer gets messages; the others stand by (RabbitMQ's
    /// `x-single-active-consumer`).
    single_active: bool,
    /// Body bytes of its messages, ready and unacked (named queues only).
    bytes: usize,
    /// What it was declared with.
    options: QueueOptions,
}

struct Subscription {
    queue: String,
    ack: AckMode,
    prefetch: usize,
    in_flight: usize,
    /// Takes its messages where they are delivered (see [`inline`]).
    inline: Option<Arc<dyn crate::InlineConsumer>>,
}

struct Unacked {
    subscription: String,
    queue: String,
    item: Queued,
}

struct Session {
    bucket: Option<Bucket>,
    peer: Option<std::net::IpAddr>,
    outbox: mpsc::Sender<Outbound>,
    kill: Arc<Kill>,
    principal: Principal,
    subscriptions: HashMap<String, Subscription>,
    unacked: BTreeMap<u64, Unacked>,
    next_tag: u64,
    transactions: HashMap<String, Vec<Frame>>,
    /// Whether the connection takes frames in wire form (a socket), so that a MESSAGE
    /// is encoded once for all its subscribers.
    wire: bool,
}

impl Session {
    /// Queues `out` for the connection's writer; a connection that cannot take it is
    /// closed.
    fn offer(&self, out: Outbound) {
        if self.outbox.try_send(out).is_err() {
            self.kill.slow();
        }
    }
}

/// The broker's whole state.
pub(crate) struct State {
    /// Where messages to named queues are kept before they are delivered or receipted.
    journal: Option<Journal>,
    /// Set when the frame being handled was a SEND dropped by its rate limit.
    dropped: bool,
    /// With a group-committed journal (`--fsync`): what waits for the disk.
    durability: Durability,
    /// Body bytes in all named queues.
    queued_bytes: usize,
    config: BrokerConfig,
    authorizer: Arc<dyn Authorizer>,
    sessions: HashMap<SessionId, Session>,
    queues: HashMap<String, Queue>,
    topics: HashMap<String, Vec<String>>,
    next_session: SessionId,
    next_seq: u64,
    accepting: bool,
    /// What was counted, for whoever reports on the broker.
    stats: Stats,
    /// Inline consumers offered and not yet claimed by a SUBSCRIBE, by token.
    inline_offers: HashMap<String, Arc<dyn crate::InlineConsumer>>,
    next_offer: u64,
}

/// A frame the session must answer with ERROR, then close.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub message: String,
    pub detail: String,
    pub headers: Vec<(String, String)>,
    /// What kind of refusal it is, for [`Stats`]: said where the refusal is made, so
    /// that rewording a message changes no count.
    pub kind: RefusalKind,
}

/// The kinds of refusal [`Stats`] counts apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// A bound was reached: too many, too large, too fast, too slow.
    Limit,
    /// The authorizer said no.
    Access,
    /// The frame breaks the protocol.
    Malformed,
    /// Anything else.
    Other,
}

impl Refusal {
    /// A refusal of no particular kind.
    pub(super) fn new(message: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal::of(RefusalKind::Other, message, detail)
    }

    /// A bound was reached.
    pub(super) fn limit(message: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal::of(RefusalKind::Limit, message, detail)
    }

    /// The authorizer said no.
    pub(super) fn access(message: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal::of(RefusalKind::Access, message, detail)
    }

    /// The frame breaks the protocol.
    pub(super) fn malformed(message: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal::of(RefusalKind::Malformed, message, detail)
    }

    fn of(kind: RefusalKind, message: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            detail: detail.into(),
            headers: Vec::new(),
            kind,
        }
    }

    pub(super) fn with_header(mut self, name: &str, value: impl Into<String>) -> Refusal {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

type Handled = Result<(), Refusal>;

impl State {
    pub(super) fn new(config: BrokerConfig, authorizer: Arc<dyn Authorizer>) -> State {
        State {
            journal: None,
            dropped: false,
            durability: Durability::default(),
            queued_bytes: 0,
            config,
            authorizer,
            sessions: HashMap::default(),
            queues: HashMap::default(),
            topics: HashMap::default(),
            next_session: 1,
            next_seq: 1,
            accepting: true,
            stats: Stats::default(),
            inline_offers: HashMap::default(),
            next_offer: 1,
        }
    }

    pub(super) fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub(super) fn authorizer(&self) -> Arc<dyn Authorizer> {
        self.authorizer.clone()
    }

    pub(super) fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Applies one frame from a connected session. `Ok` means processed; any RECEIPT is
    /// the caller's to send.
    pub(super) fn handle(&mut self, id: SessionId, frame: Frame) -> Handled {
        self.durability.clear_call();
        if let Some(tx) = frame.header("transaction") {
            if matches!(frame.command, Command::Send | Command::Ack | Command::Nack) {
                let tx = tx.to_owned();
                return self.buffer(id, tx, frame);
            }
        }
        match frame.command {
            Command::Send => self.send(id, frame),
            Command::Subscribe => self.subscribe(id, &frame),
            Command::Unsubscribe => self.unsubscribe(id, &frame),
            Command::Ack => self.ack(id, &frame, false),
            Command::Nack => self.ack(id, &frame, true),
            Command::Begin => self.begin(id, &frame),
            Command::Commit | Command::Abort => self.end_transaction(id, &frame),
            Command::Disconnect => Ok(()),
            Command::Connect | Command::Stomp => Err(Refusal::new(
                "already connected",
                "CONNECT may be sent only once per connection.",
            )),
            other => Err(Refusal::malformed(
                format!("{other} is a server frame"),
                "Clients may not send it.",
            )),
        }
    }

    fn session(&mut self, id: SessionId) -> Result<&mut Session, Refusal> {
        self.sessions
            .get_mut(&id)
            .ok_or_else(|| Refusal::new("session closed", ""))
    }

    /// Whether the last frame handled was a SEND dropped by its rate limit (and so gets
    /// no RECEIPT). Reading it clears it.
    pub(super) fn take_dropped(&mut self) -> bool {
        std::mem::take(&mut self.dropped)
    }

    /// Queues a frame for a session's writer; a session that cannot take it is closed.
    pub(super) fn send_to(&mut self, id: SessionId, out: Outbound) {
        if let Some(session) = self.sessions.get(&id) {
            session.offer(out);
        }
    }

    /// Sends session `id` the RECEIPT for `receipt`: in wire form to a socket (there is
    /// one for every receipted SEND, so it is written without making a frame), as a
    /// frame otherwise.
    pub(crate) fn send_receipt(&mut self, id: SessionId, receipt: &str) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        session.offer(match session.wire {
            true => Outbound::Encoded(stomp::encode_receipt(receipt)),
            false => {
                Outbound::Frame(Frame::new(Command::Receipt).with_header("receipt-id", receipt))
            }
        });
    }

    /// What the broker has counted since it started.
    pub(super) fn stats(&self) -> Stats {
        self.stats
    }

    /// Counts a refusal a session is about to send.
    pub(super) fn count_refusal(&mut self, refusal: &Refusal) {
        let s = &mut self.stats;
        *match refusal.kind {
            RefusalKind::Limit => &mut s.refused_limit,
            RefusalKind::Access => &mut s.refused_access,
            RefusalKind::Malformed => &mut s.refused_malformed,
            RefusalKind::Other => &mut s.refused_other,
        } += 1;
    }

    /// How many subscriptions consume from a queue.
    pub(super) fn consumer_count(&self, destination: &str) -> usize {
        self.queues
            .get(destination)
            .map_or(0, |q| q.consumers.len())
    }

    /// Whether a queue exists.
    pub(super) fn has_queue(&self, destination: &str) -> bool {
        self.queues.contains_key(destination)
    }

    /// Number of messages ready in a queue (not counting those delivered and unacked).
    pub(super) fn queue_depth(&self, destination: &str) -> Option<usize> {
        self.queues.get(destination).map(|q| q.ready.len())
    }

    /// A queue's messages ready and delivered but unacked, and its consumers.
    pub(super) fn queue_stats(&self, destination: &str) -> Option<crate::QueueStats> {
        let queue = self.queues.get(destination)?;
        let unacked = queue
            .consumers
            .iter()
            .filter_map(|(session, sub)| self.sessions.get(session)?.subscriptions.get(sub))
            .map(|sub| sub.in_flight)
            .sum();
        Some(crate::QueueStats {
            ready: queue.ready.len(),
            unacked,
            consumers: queue.consumers.len(),
        })
    }

    /// Messages ready in named queues.
    pub(super) fn queued(&self) -> usize {
        self.queues
            .iter()
            .filter(|(name, _)| destination::journaled(name))
            .map(|(_, q)| q.ready.len())
            .sum()
    }

    /// How many sessions are connected.
    pub(super) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A live session's kill switch.
    pub(crate) fn kill_of(&self, id: SessionId) -> Option<Arc<Kill>> {
        self.sessions.get(&id).map(|s| s.kill.clone())
    }

    /// Every live session's kill switch.
    pub(super) fn kill_switches(&self) -> Vec<Arc<Kill>> {
        self.sessions.values().map(|s| s.kill.clone()).collect()
    }

    /// The kill switches of the sessions whose principal `which` picks.
    pub(super) fn sessions_of(&self, which: impl Fn(&Principal) -> bool) -> Vec<Arc<Kill>> {
        self.sessions
            .values()
            .filter(|s| which(&s.principal))
            .map(|s| s.kill.clone())
            .collect()
    }
}
