//! The broker's state and rules, without sockets: queues, topics, subscriptions, acks.
//!
//! Every operation runs under one lock, so "the order the broker accepted messages in" is
//! well defined, and each session's outbox receives frames in exactly that order.

use super::journal::Journal;
use super::{Authorizer, BrokerConfig, Principal, SendRate};
use crate::stomp::{AckMode, Command, Frame};
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// A session id, unique within a broker's life.
pub(crate) type SessionId = u64;

pub(crate) use crate::stomp::Outbound as Out;

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
}

impl Kill {
    fn slow(&self) {
        self.notify.notify_one();
    }

    pub fn kick(&self) {
        self.kicked.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// A message as the broker stores it: immutable, shared between deliveries.
#[derive(Debug)]
pub(crate) struct Stored {
    pub id: String,
    pub destination: String,
    /// The sender's own headers, passed through to MESSAGE frames.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// What every subscriber's MESSAGE frame ends with, encoded once, at first need.
    pub tail: std::sync::OnceLock<Bytes>,
}

impl Stored {
    /// The MESSAGE frame's common part: message-id, destination, the sender's headers
    /// and the body, in wire form.
    fn tail(&self) -> &Bytes {
        self.tail.get_or_init(|| {
            let fixed = [
                ("message-id", self.id.as_str()),
                ("destination", self.destination.as_str()),
            ];
            let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            crate::stomp::encode_message_tail(fixed.into_iter().chain(headers), &self.body)
        })
    }
}

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
}

struct Subscription {
    queue: String,
    ack: AckMode,
    prefetch: usize,
    in_flight: usize,
}

struct Unacked {
    subscription: String,
    queue: String,
    item: Queued,
}

/// A session's token bucket (see [`SendRate`]).
struct Bucket {
    rate: SendRate,
    tokens: f64,
    refilled: std::time::Instant,
    /// SENDs dropped in the current second, and when it began.
    dropped: u32,
    second: std::time::Instant,
}

/// What the bucket says of one SEND.
enum Allowed {
    Yes,
    /// Dropped; say so if this is the second's first drop.
    Dropped {
        notify: bool,
    },
    /// Dropped, and the connection goes on flooding: close it.
    Flooding,
}

impl Bucket {
    fn new(rate: SendRate) -> Bucket {
        let now = std::time::Instant::now();
        Bucket {
            tokens: f64::from(rate.burst),
            rate,
            refilled: now,
            dropped: 0,
            second: now,
        }
    }

    fn take(&mut self) -> Allowed {
        let now = std::time::Instant::now();
        let earned =
            now.duration_since(self.refilled).as_secs_f64() * f64::from(self.rate.per_second);
        self.tokens = (self.tokens + earned).min(f64::from(self.rate.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Allowed::Yes;
        }
        if now.duration_since(self.second) >= std::time::Duration::from_secs(1) {
            self.second = now;
            self.dropped = 0;
        }
        self.dropped += 1;
        if self.dropped > 2 * self.rate.burst.max(1) {
            Allowed::Flooding
        } else {
            Allowed::Dropped {
                notify: self.dropped == 1,
            }
        }
    }
}

struct Session {
    bucket: Option<Bucket>,
    peer: Option<std::net::IpAddr>,
    outbox: mpsc::Sender<Out>,
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

/// The broker's whole state.
pub(crate) struct Core {
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
}

/// What a group-committed journal holds back until a flush puts it on the disk.
pub(crate) struct Durability {
    /// The journal is on the disk up to this lsn. Messages after it are neither
    /// delivered nor receipted yet (`u64::MAX` when nothing waits for the disk).
    synced: u64,
    /// Receipts to send once `synced` reaches their lsn, in lsn order.
    receipts: std::collections::VecDeque<(u64, SessionId, String)>,
    /// Queues holding messages that wait for the disk.
    queues: std::collections::HashSet<String>,
    /// The last lsn written by the frame being handled.
    unsynced_in_call: Option<u64>,
    /// Tells the flusher there is something to flush.
    pub(crate) wake: Arc<SyncSignal>,
}

impl Default for Durability {
    fn default() -> Durability {
        Durability {
            synced: u64::MAX,
            receipts: Default::default(),
            queues: Default::default(),
            unsynced_in_call: None,
            wake: Arc::default(),
        }
    }
}

/// A flag and a condition variable: the flusher thread sleeps until there is work.
#[derive(Debug, Default)]
pub(crate) struct SyncSignal {
    dirty: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl SyncSignal {
    /// There is something to flush.
    pub fn notify(&self) {
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Waits up to `timeout` for work; returns whether there is some.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let (mut dirty, _) = self
            .cv
            .wait_timeout_while(dirty, timeout, |d| !*d)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *dirty)
    }
}

/// A message kept across a restart: destination, the sender's headers, body.
pub(crate) type Undelivered = (String, Vec<(String, String)>, Bytes);

/// A frame the session must answer with ERROR, then close.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub message: String,
    pub detail: String,
    pub headers: Vec<(String, String)>,
}

impl Refusal {
    pub fn new(message: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Refusal {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

type Handled = Result<(), Refusal>;

/// Whether a queue's messages are journaled: named queues are; the private queues
/// behind topic subscriptions are not.
fn journaled(queue: &str) -> bool {
    queue.starts_with("/queue/")
}

/// Which kind of destination a name is.
enum Dest<'a> {
    Queue,
    Topic(&'a str),
}

fn classify<'a>(destination: &'a str, config: &BrokerConfig) -> Result<Dest<'a>, Refusal> {
    let bad = |why: &str| {
        Refusal::new(
            format!("invalid destination {destination:?}"),
            format!("{why}. Destinations are /queue/NAME or /topic/NAME."),
        )
    };
    if destination.len() > config.max_destination_len {
        return Err(bad("the name is too long"));
    }
    if destination.chars().any(char::is_control) {
        return Err(bad("the name contains control characters"));
    }
    if let Some(name) = destination.strip_prefix("/queue/") {
        if name.is_empty() {
            return Err(bad("the queue name is empty"));
        }
        return Ok(Dest::Queue);
    }
    if let Some(name) = destination.strip_prefix("/topic/") {
        if name.is_empty() {
            return Err(bad("the topic name is empty"));
        }
        return Ok(Dest::Topic(destination));
    }
    Err(bad("unknown destination type"))
}

fn required<'a>(frame: &'a Frame, header: &str) -> Result<&'a str, Refusal> {
    frame.header(header).ok_or_else(|| {
        Refusal::new(
            format!("{} frame without a {header} header", frame.command),
            format!(
                "The {header} header is required on {} frames.",
                frame.command
            ),
        )
    })
}

/// Headers the broker sets on MESSAGE frames itself; a sender's copies are dropped.
const BROKER_HEADERS: [&str; 9] = [
    "user-id",
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "message-id",
    "subscription",
    "ack",
    "redelivered",
];

impl Core {
    pub fn new(config: BrokerConfig, authorizer: Arc<dyn Authorizer>) -> Core {
        Core {
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
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn authorizer(&self) -> Arc<dyn Authorizer> {
        self.authorizer.clone()
    }

    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    pub fn add_session(
        &mut self,
        principal: Principal,
        peer: Option<std::net::SocketAddr>,
        outbox: mpsc::Sender<Out>,
        kill: Arc<Kill>,
        wire: bool,
    ) -> Result<SessionId, Refusal> {
        let c = &self.config;
        if self.sessions.len() >= c.max_connections {
            return Err(Refusal::new(
                "too many connections",
                format!(
                    "The broker has {} connections, its most; try again soon.",
                    c.max_connections
                ),
            ));
        }
        let ip = peer.map(|p| p.ip());
        let from_ip = self
            .sessions
            .values()
            .filter(|s| ip.is_some() && s.peer == ip)
            .count();
        if ip.is_some_and(|ip| !ip.is_loopback()) && from_ip >= c.max_connections_per_address {
            return Err(Refusal::new(
                "too many connections from this address",
                format!(
                    "One address may have {} connections open.",
                    c.max_connections_per_address
                ),
            ));
        }
        if principal.tag.is_some() {
            let same = self
                .sessions
                .values()
                .filter(|s| s.principal.name == principal.name && s.principal.tag == principal.tag)
                .count();
            if same >= c.max_connections_per_login {
                return Err(Refusal::new(
                    "too many connections with this ticket",
                    format!(
                        "One ticket may open {} connections at once; close one first.",
                        c.max_connections_per_login
                    ),
                ));
            }
        }
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                bucket: principal.rate.clone().map(Bucket::new),
                peer: ip,
                outbox,
                kill,
                principal,
                subscriptions: HashMap::default(),
                unacked: BTreeMap::new(),
                next_tag: 1,
                transactions: HashMap::default(),
                wire,
            },
        );
        Ok(id)
    }

    /// Forgets a session: its unacked messages go back to their queues, in their original
    /// order and marked redelivered, and its topic subscriptions' queues are deleted.
    pub fn remove_session(&mut self, id: SessionId) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        let mut touched = HashSet::new();
        for (_, unacked) in session.unacked {
            touched.insert(unacked.queue.clone());
            self.requeue(&unacked.queue, unacked.item);
        }
        for (sub_id, sub) in session.subscriptions {
            self.detach(id, &sub_id, &sub.queue);
            touched.insert(sub.queue);
        }
        for queue in touched {
            self.dispatch(&queue);
        }
    }

    /// Applies one frame from a connected session. `Ok` means processed; any RECEIPT is
    /// the caller's to send.
    pub fn handle(&mut self, id: SessionId, frame: Frame) -> Handled {
        self.durability.unsynced_in_call = None;
        if let Some(tx) = frame.header("transaction") {
            if matches!(frame.command, Command::Send | Command::Ack | Command::Nack) {
                let tx = tx.to_owned();
                // A SEND that would fail is refused now, so that COMMIT is all or nothing.
                if frame.command == Command::Send {
                    self.check_send(id, &frame)?;
                }
                let (max_frames, max_bytes) = (self.config.max_tx_frames, self.config.max_tx_bytes);
                let session = self.session(id)?;
                // Bytes count over every open transaction of the connection.
                let bytes: usize = session
                    .transactions
                    .values()
                    .flatten()
                    .map(|f| f.body.len())
                    .sum::<usize>()
                    + frame.body.len();
                let Some(buffered) = session.transactions.get_mut(&tx) else {
                    return Err(Refusal::new(
                        format!("unknown transaction {tx:?}"),
                        "BEGIN the transaction before using it.",
                    ));
                };
                if buffered.len() >= max_frames || bytes > max_bytes {
                    return Err(Refusal::new(
                        format!("transaction {tx:?} is too large"),
                        format!("A transaction holds at most {max_frames} frames, and a connection's open transactions {max_bytes} body bytes together."),
                    ));
                }
                buffered.push(frame);
                return Ok(());
            }
        }
        match frame.command {
            Command::Send => self.send(id, frame),
            Command::Subscribe => self.subscribe(id, &frame),
            Command::Unsubscribe => self.unsubscribe(id, &frame),
            Command::Ack => self.ack(id, &frame, false),
            Command::Nack => self.ack(id, &frame, true),
            Command::Begin => {
                let tx = required(&frame, "transaction")?.to_owned();
                let max = self.config.max_transactions;
                let session = self.session(id)?;
                if session.transactions.len() >= max {
                    return Err(Refusal::new(
                        "too many open transactions",
                        format!("A connection may have at most {max} transactions open; COMMIT or ABORT one."),
                    ));
                }
                if session.transactions.contains_key(&tx) {
                    return Err(Refusal::new(
                        format!("transaction {tx:?} already begun"),
                        "Transaction names must be unique within a session.",
                    ));
                }
                session.transactions.insert(tx, Vec::new());
                Ok(())
            }
            Command::Commit | Command::Abort => {
                let tx = required(&frame, "transaction")?.to_owned();
                let frames = self.session(id)?.transactions.remove(&tx).ok_or_else(|| {
                    Refusal::new(format!("unknown transaction {tx:?}"), "BEGIN it first.")
                })?;
                if frame.command == Command::Commit {
                    // Check every SEND again before applying any: all or nothing.
                    for f in frames.iter().filter(|f| f.command == Command::Send) {
                        self.check_send(id, f)?;
                    }
                    for mut f in frames {
                        f.headers.retain(|(n, _)| n != "transaction");
                        self.handle(id, f)?;
                    }
                }
                Ok(())
            }
            Command::Disconnect => Ok(()),
            Command::Connect | Command::Stomp => Err(Refusal::new(
                "already connected",
                "CONNECT may be sent only once per connection.",
            )),
            other => Err(Refusal::new(
                format!("{other} is a server frame"),
                "Clients may not send it.",
            )),
        }
    }

    /// A queue under a managed prefix must exist: clients cannot create it.
    fn check_managed(&self, destination: &str) -> Handled {
        let managed = self
            .config
            .managed_prefixes
            .iter()
            .any(|p| destination.starts_with(p.as_str()));
        if managed && !self.queues.contains_key(destination) {
            return Err(Refusal::new(
                format!("no queue {destination}"),
                "This queue is created and deleted by the server (a room's inbox lives as long as its room).",
            ));
        }
        Ok(())
    }

    fn session(&mut self, id: SessionId) -> Result<&mut Session, Refusal> {
        self.sessions
            .get_mut(&id)
            .ok_or_else(|| Refusal::new("session closed", ""))
    }

    /// Everything that could refuse a SEND, checked without sending: the destination, the
    /// authorizer, managed queues. Returns the destination and the sender's name.
    fn check_send(&mut self, id: SessionId, frame: &Frame) -> Result<(String, String), Refusal> {
        if !self.accepting {
            return Err(Refusal::new(
                "server shutting down",
                "The broker is shutting down and accepts no new messages; reconnect later.",
            ));
        }
        let destination = required(frame, "destination")?.to_owned();
        classify(&destination, &self.config)?;
        let authorizer = self.authorizer.clone();
        let principal = &self.session(id)?.principal;
        authorizer
            .can_send(principal, &destination)
            .map_err(|why| Refusal::new(format!("access refused to {destination}"), why))?;
        let user = principal.name.clone();
        self.check_managed(&destination)?;
        Ok((destination, user))
    }

    fn send(&mut self, id: SessionId, frame: Frame) -> Handled {
        let (destination, user) = self.check_send(id, &frame)?;
        let dest = classify(&destination, &self.config)?;
        if matches!(dest, Dest::Queue) && !self.within_rate(id)? {
            self.dropped = true;
            return Ok(());
        }
        let mut headers: Vec<(String, String)> = frame
            .headers
            .into_iter()
            .filter(|(n, _)| !BROKER_HEADERS.contains(&n.as_str()))
            .collect();
        headers.push(("user-id".into(), user));
        self.publish(&destination, dest, headers, frame.body)
    }

    /// Whether the session may SEND one more to a queue now; a dropped SEND may be
    /// reported on the principal's notice destination, and a flood closes the session.
    fn within_rate(&mut self, id: SessionId) -> Result<bool, Refusal> {
        let session = self.session(id)?;
        let Some(bucket) = &mut session.bucket else {
            return Ok(true);
        };
        let rate = bucket.rate.clone();
        match bucket.take() {
            Allowed::Yes => Ok(true),
            Allowed::Flooding => Err({
                crate::metrics::LIMITED.with_label_values(&["flood"]).inc();
                Refusal::new(
                "too many messages",
                format!(
                    "This connection may send {} messages a second ({} at once) and went on sending far more; it is closed.",
                    rate.per_second, rate.burst
                ),
            )
            }),
            Allowed::Dropped { notify } => {
                crate::metrics::LIMITED
                    .with_label_values(&["input_rate"])
                    .inc();
                if let (true, Some(notice)) = (notify, rate.notice) {
                    let body = serde_json::json!({
                        "type": "error",
                        "error": format!(
                            "too fast: at most {} inputs a second ({} at once); inputs over that are dropped, without a receipt",
                            rate.per_second, rate.burst
                        ),
                        "limited": true,
                    });
                    let headers = vec![
                        ("content-type".to_owned(), "application/json".to_owned()),
                        ("user-id".to_owned(), "$broker".to_owned()),
                    ];
                    if let Ok(dest) = classify(&notice, &self.config) {
                        let _ = self.publish(&notice, dest, headers, Bytes::from(body.to_string()));
                    }
                }
                Ok(false)
            }
        }
    }

    /// Whether the last frame handled was a SEND dropped by its rate limit (and so gets
    /// no RECEIPT). Reading it clears it.
    pub fn take_dropped(&mut self) -> bool {
        std::mem::take(&mut self.dropped)
    }

    /// The last lsn the frame just handled wrote to a journal that is not yet on the
    /// disk: its RECEIPT must wait for it ([`Core::hold_receipt`]).
    pub fn take_unsynced(&mut self) -> Option<u64> {
        self.durability.unsynced_in_call.take()
    }

    /// Sends session `id` its RECEIPT once the journal is on the disk up to `lsn`.
    pub fn hold_receipt(&mut self, lsn: u64, id: SessionId, receipt: String) {
        if lsn <= self.durability.synced {
            let frame = Frame::new(Command::Receipt).with_header("receipt-id", receipt);
            self.send_to(id, Out::Frame(frame));
        } else {
            self.durability.receipts.push_back((lsn, id, receipt));
        }
    }

    /// Whether session `id` has receipts waiting for the journal's flush.
    pub fn holds_receipts_for(&self, id: SessionId) -> bool {
        self.durability.receipts.iter().any(|(_, s, _)| *s == id)
    }

    /// What a flush to the disk would make durable now (`None` without a group-committed
    /// journal, or when everything written is on the disk already).
    pub fn to_sync(&self) -> Option<(std::fs::File, u64)> {
        let journal = self.journal.as_ref().filter(|j| j.group_commit())?;
        match journal.to_sync() {
            Ok((file, lsn)) if lsn > self.durability.synced => Some((file, lsn)),
            Ok(_) => None,
            Err(e) => {
                tracing::error!("cannot flush the journal: {e}");
                None
            }
        }
    }

    /// What wakes the group commit's flusher.
    pub fn durability_signal(&self) -> Arc<SyncSignal> {
        self.durability.wake.clone()
    }

    /// The journal is on the disk up to `lsn`: what waited for it goes out.
    pub fn synced(&mut self, lsn: u64) {
        let d = &mut self.durability;
        d.synced = d.synced.max(lsn);
        let mut ready = Vec::new();
        while d.receipts.front().is_some_and(|(l, _, _)| *l <= d.synced) {
            ready.push(d.receipts.pop_front().expect("checked"));
        }
        let queues: Vec<String> = d.queues.drain().collect();
        for (_, id, receipt) in ready {
            let frame = Frame::new(Command::Receipt).with_header("receipt-id", receipt);
            self.send_to(id, Out::Frame(frame));
        }
        for queue in queues {
            self.dispatch(&queue);
            let synced = self.durability.synced;
            if self
                .queues
                .get(&queue)
                .is_some_and(|q| q.ready.back().is_some_and(|i| i.seq > synced))
            {
                self.durability.queues.insert(queue);
            }
        }
    }

    /// Publishes a message as if a client had sent it (for in-process producers).
    /// A managed queue must exist unless `create` says the caller may bring it back (the
    /// shutdown spool's restore).
    pub fn publish_local(
        &mut self,
        destination: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
        create: bool,
    ) -> Handled {
        let dest = classify(destination, &self.config)?;
        if !create {
            self.check_managed(destination)?;
        }
        self.publish(destination, dest, headers, body)
    }

    fn publish(
        &mut self,
        destination: &str,
        dest: Dest<'_>,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Handled {
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = Arc::new(Stored {
            id: format!("m-{seq}"),
            destination: destination.to_owned(),
            headers,
            body,
            tail: Default::default(),
        });
        let item = Queued {
            seq,
            msg,
            redelivered: false,
        };
        match dest {
            Dest::Queue => {
                let max = self.config.max_queue_len;
                let (max_bytes, max_total) = (
                    self.config.max_queue_bytes,
                    self.config.max_total_queue_bytes,
                );
                let size = item.msg.body.len();
                let total = self.queued_bytes;
                let queue = self.queues.entry(destination.to_owned()).or_default();
                if queue.ready.len() >= max {
                    return Err(Refusal::new(
                        format!("queue {destination} is full"),
                        format!("The queue holds {max} undelivered messages; the message was not accepted."),
                    ));
                }
                if queue.bytes + size > max_bytes {
                    return Err(Refusal::new(
                        format!("queue {destination} is full"),
                        format!("The queue holds {max_bytes} bytes of messages; the message was not accepted."),
                    ));
                }
                if total + size > max_total {
                    return Err(Refusal::new(
                        "the broker is full",
                        format!("All queues together hold {max_total} bytes of messages; the message was not accepted."),
                    ));
                }
                queue.bytes += size;
                self.queued_bytes += size;
                // Kept before anyone sees it: a RECEIPT, and any output a consumer makes
                // from it, outlive the process.
                if let Some(journal) = &mut self.journal {
                    let msg = &item.msg;
                    journal
                        .publish(seq, destination, &msg.headers, &msg.body)
                        .map_err(|e| {
                            tracing::error!("cannot write the journal: {e}");
                            Refusal::new(
                                "the broker cannot keep the message",
                                format!("Writing its journal failed ({e}); the message was not accepted."),
                            )
                        })?;
                }
                queue.ready.push_back(item);
                if self.journal.as_ref().is_some_and(Journal::group_commit) {
                    // Delivered (and receipted) once the group commit has it on the disk.
                    let d = &mut self.durability;
                    d.unsynced_in_call = Some(seq);
                    if !d.queues.contains(destination) {
                        d.queues.insert(destination.to_owned());
                    }
                    d.wake.notify();
                }
                self.dispatch(destination);
            }
            Dest::Topic(topic) => {
                // Borrowed out of the map while dispatching (which never changes who
                // subscribes), rather than cloned for every message.
                let Some(subscribers) = self.topics.get_mut(topic).map(std::mem::take) else {
                    return Ok(());
                };
                for queue_name in &subscribers {
                    if let Some(queue) = self.queues.get_mut(queue_name) {
                        // A subscriber this far behind loses the oldest: a topic is live.
                        if queue.ready.len() >= self.config.max_topic_backlog {
                            queue.ready.pop_front();
                        }
                        queue.ready.push_back(item.clone());
                        self.dispatch(queue_name);
                    }
                }
                if let Some(slot) = self.topics.get_mut(topic) {
                    *slot = subscribers;
                }
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, id: SessionId, frame: &Frame) -> Handled {
        let destination = required(frame, "destination")?.to_owned();
        let sub_id = frame.header("id").unwrap_or(&destination).to_owned();
        let ack = match frame.header("ack") {
            None => AckMode::Auto,
            Some(a) => AckMode::parse(a).ok_or_else(|| {
                Refusal::new(
                    format!("invalid ack mode {a:?}"),
                    "ack must be auto, client or client-individual.",
                )
            })?,
        };
        let prefetch = match frame.header("prefetch-count") {
            None => 0,
            Some(p) => p.trim().parse::<usize>().map_err(|_| {
                Refusal::new(
                    format!("invalid prefetch-count {p:?}"),
                    "prefetch-count must be a whole number (0 for no limit).",
                )
            })?,
        };
        let dest = classify(&destination, &self.config)?;
        let max_subs = self.config.max_subscriptions;
        let authorizer = self.authorizer.clone();
        let session = self.session(id)?;
        authorizer
            .can_subscribe(&session.principal, &destination)
            .map_err(|why| Refusal::new(format!("access refused to {destination}"), why))?;
        if session.subscriptions.contains_key(&sub_id) {
            return Err(Refusal::new(
                format!("duplicate subscription id {sub_id:?}"),
                "Each SUBSCRIBE on a connection needs its own id.",
            ));
        }
        if session.subscriptions.len() >= max_subs {
            return Err(Refusal::new(
                "too many subscriptions",
                format!("A connection may hold at most {max_subs} subscriptions."),
            ));
        }
        let queue_name = match dest {
            Dest::Queue => {
                self.check_managed(&destination)?;
                destination.clone()
            }
            Dest::Topic(topic) => {
                let private = format!("\0topic-subscription:{id}:{sub_id}");
                self.topics
                    .entry(topic.to_owned())
                    .or_default()
                    .push(private.clone());
                self.queues.insert(
                    private.clone(),
                    Queue {
                        topic: Some(topic.to_owned()),
                        ..Queue::default()
                    },
                );
                private
            }
        };
        let session = self.session(id)?;
        session.subscriptions.insert(
            sub_id.clone(),
            Subscription {
                queue: queue_name.clone(),
                ack,
                prefetch,
                in_flight: 0,
            },
        );
        self.queues
            .entry(queue_name.clone())
            .or_default()
            .consumers
            .push((id, sub_id));
        self.dispatch(&queue_name);
        Ok(())
    }

    fn unsubscribe(&mut self, id: SessionId, frame: &Frame) -> Handled {
        let sub_id = frame
            .header("id")
            .or_else(|| frame.header("destination"))
            .ok_or_else(|| Refusal::new("UNSUBSCRIBE frame without an id header", ""))?
            .to_owned();
        let session = self.session(id)?;
        let Some(sub) = session.subscriptions.remove(&sub_id) else {
            return Err(Refusal::new(
                format!("no subscription {sub_id:?}"),
                "UNSUBSCRIBE names the id of an active SUBSCRIBE.",
            ));
        };
        // Messages this subscription had not acked go back to the queue for others.
        let tags: Vec<u64> = session
            .unacked
            .iter()
            .filter(|(_, u)| u.subscription == sub_id)
            .map(|(t, _)| *t)
            .collect();
        let items: Vec<Unacked> = tags
            .iter()
            .filter_map(|t| session.unacked.remove(t))
            .collect();
        for u in items {
            self.requeue(&u.queue, u.item);
        }
        self.detach(id, &sub_id, &sub.queue);
        self.dispatch(&sub.queue);
        Ok(())
    }

    fn detach(&mut self, id: SessionId, sub_id: &str, queue_name: &str) {
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        queue
            .consumers
            .retain(|(s, sub)| !(*s == id && sub == sub_id));
        if let Some(topic) = queue.topic.clone() {
            self.queues.remove(queue_name);
            if let Some(subs) = self.topics.get_mut(&topic) {
                subs.retain(|q| q != queue_name);
                if subs.is_empty() {
                    self.topics.remove(&topic);
                }
            }
        }
    }

    fn ack(&mut self, id: SessionId, frame: &Frame, nack: bool) -> Handled {
        let max_unacked = self.config.max_unacked;
        let ack_id = frame
            .header("id")
            .or_else(|| frame.header("message-id"))
            .ok_or_else(|| {
                Refusal::new(
                    format!("{} frame without an id header", frame.command),
                    "Use the ack header of the MESSAGE as the id.",
                )
            })?;
        let session = self.session(id)?;
        // An id this session does not hold (already acked, or foreign) is ignored, as
        // acknowledging twice must not cost the client its connection.
        let tag = ack_id
            .parse::<u64>()
            .ok()
            .filter(|t| session.unacked.contains_key(t))
            .or_else(|| {
                // STOMP 1.0 and 1.1 clients name the message-id (and the subscription).
                let message_id = frame.header("message-id").unwrap_or(ack_id);
                let subscription = frame.header("subscription");
                session
                    .unacked
                    .iter()
                    .find(|(_, u)| {
                        u.item.msg.id == message_id
                            && subscription.is_none_or(|s| s == u.subscription)
                    })
                    .map(|(t, _)| *t)
            });
        let Some(tag) = tag else {
            return Ok(());
        };
        let sub_id = session.unacked[&tag].subscription.clone();
        let cumulative = session
            .subscriptions
            .get(&sub_id)
            .is_some_and(|s| s.ack == AckMode::Client);
        let tags: Vec<u64> = if cumulative {
            session
                .unacked
                .range(..=tag)
                .filter(|(_, u)| u.subscription == sub_id)
                .map(|(t, _)| *t)
                .collect()
        } else {
            vec![tag]
        };
        let held = session.unacked.len().saturating_sub(tags.len());
        let mut done = Vec::with_capacity(tags.len());
        for t in tags {
            if let Some(u) = session.unacked.remove(&t) {
                done.push(u);
            }
        }
        if let Some(sub) = session.subscriptions.get_mut(&sub_id) {
            sub.in_flight = sub.in_flight.saturating_sub(done.len());
        }
        // At its unacked cap, the session may have held up every queue it consumes.
        let mut queues: Vec<String> = if held + done.len() >= max_unacked {
            session
                .subscriptions
                .values()
                .map(|s| s.queue.clone())
                .collect()
        } else {
            done.first().map(|u| u.queue.clone()).into_iter().collect()
        };
        queues.dedup();
        if nack {
            for u in done {
                self.requeue(&u.queue, u.item);
            }
        } else {
            for u in &done {
                self.release(&u.queue, u.item.msg.body.len());
            }
            let lsns: Vec<u64> = done
                .iter()
                .filter(|u| journaled(&u.queue))
                .map(|u| u.item.seq)
                .collect();
            self.settle(&lsns);
        }
        for queue in queues {
            self.dispatch(&queue);
        }
        Ok(())
    }

    /// Puts a message back at its original place in the queue, marked redelivered.
    fn requeue(&mut self, queue_name: &str, mut item: Queued) {
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        item.redelivered = true;
        let at = queue.ready.partition_point(|q| q.seq < item.seq);
        queue.ready.insert(at, item);
    }

    /// Hands ready messages to consumers with room for them, round robin.
    fn dispatch(&mut self, queue_name: &str) {
        loop {
            let Some(queue) = self.queues.get_mut(queue_name) else {
                return;
            };
            if queue.ready.is_empty() || queue.consumers.is_empty() {
                return;
            }
            // A journaled message a group commit has not yet put on the disk waits, and
            // so does everything behind it. (Topic subscriptions are not journaled.)
            if journaled(queue_name)
                && queue
                    .ready
                    .front()
                    .is_some_and(|i| i.seq > self.durability.synced)
            {
                return;
            }
            // A single-active-consumer queue feeds its oldest consumer only; the next one
            // takes over when it goes, starting with what it left unacked.
            let n = if queue.single_active {
                1
            } else {
                queue.consumers.len()
            };
            let mut chosen = None;
            for k in 0..n {
                let i = (queue.next_consumer + k) % n;
                let (sid, sub_id) = &queue.consumers[i];
                let max_unacked = self.config.max_unacked;
                let has_room = self.sessions.get(sid).is_some_and(|session| {
                    // Besides its prefetch, a session may hold only so many unacked messages.
                    session.unacked.len() < max_unacked
                        && session.subscriptions.get(sub_id).is_some_and(|s| {
                            s.ack == AckMode::Auto || s.prefetch == 0 || s.in_flight < s.prefetch
                        })
                });
                if has_room {
                    chosen = Some(i);
                    break;
                }
            }
            let Some(i) = chosen else { return };
            queue.next_consumer = (i + 1) % n;
            let item = queue.ready.pop_front().expect("checked non-empty");
            let (sid, sub_id) = &queue.consumers[i];
            let sid = *sid;
            let session = self.sessions.get_mut(&sid).expect("consumer has a session");
            let sub = session
                .subscriptions
                .get_mut(sub_id)
                .expect("consumer has a subscription");
            let tag = (sub.ack != AckMode::Auto).then(|| {
                session.next_tag += 1;
                session.next_tag - 1
            });
            let out = if session.wire {
                // The subscriber's own headers, then the part every subscriber shares.
                let mut digits = itoa::Buffer::new();
                let mut head = [("subscription", sub_id.as_str()), ("", ""), ("", "")];
                let mut len = 1;
                if let Some(tag) = tag {
                    head[len] = ("ack", digits.format(tag));
                    len += 1;
                }
                if item.redelivered {
                    head[len] = ("redelivered", "true");
                    len += 1;
                }
                Out::Encoded(crate::stomp::encode_message_head(
                    &head[..len],
                    item.msg.tail(),
                ))
            } else {
                let mut frame = Frame::new(Command::Message);
                frame.headers.reserve_exact(5 + item.msg.headers.len());
                frame = frame
                    .with_header("subscription", sub_id.clone())
                    .with_header("message-id", item.msg.id.clone())
                    .with_header("destination", item.msg.destination.clone());
                if let Some(tag) = tag {
                    frame = frame.with_header("ack", tag.to_string());
                }
                if item.redelivered {
                    frame = frame.with_header("redelivered", "true");
                }
                frame.headers.extend(item.msg.headers.iter().cloned());
                frame.body = item.msg.body.clone();
                Out::Frame(frame)
            };
            if session.outbox.try_send(out).is_err() {
                // The consumer cannot keep up (or is gone): it loses its connection, and
                // the message stays first in line for someone else.
                session.kill.slow();
                let queue = self.queues.get_mut(queue_name).expect("queue exists");
                queue.ready.push_front(item);
                queue.consumers.retain(|(s, _)| *s != sid);
                continue;
            }
            if let Some(tag) = tag {
                sub.in_flight += 1;
                session.unacked.insert(
                    tag,
                    Unacked {
                        subscription: sub_id.clone(),
                        queue: queue_name.to_owned(),
                        item,
                    },
                );
            } else if journaled(queue_name) {
                // Delivered with ack=auto: settled.
                let (seq, size) = (item.seq, item.msg.body.len());
                self.release(queue_name, size);
                self.settle(&[seq]);
            }
        }
    }

    /// Takes `bytes` of a message that left `queue` for good off the counts.
    fn release(&mut self, queue: &str, bytes: usize) {
        if !journaled(queue) {
            return;
        }
        if let Some(q) = self.queues.get_mut(queue) {
            q.bytes = q.bytes.saturating_sub(bytes);
        }
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
    }

    /// Journals that messages left their named queues for good, and compacts the
    /// journal when it has grown to several times what it keeps.
    fn settle(&mut self, lsns: &[u64]) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        if let Err(e) = journal.settle(lsns) {
            // Only a redelivery after a restart is at stake.
            tracing::warn!("cannot journal {} acks: {e}", lsns.len());
        }
        if journal.wants_compaction() {
            let mut kept: Vec<&Queued> = Vec::new();
            for (name, queue) in &self.queues {
                if journaled(name) {
                    kept.extend(queue.ready.iter());
                }
            }
            for session in self.sessions.values() {
                kept.extend(
                    session
                        .unacked
                        .values()
                        .filter(|u| journaled(&u.queue))
                        .map(|u| &u.item),
                );
            }
            kept.sort_by_key(|q| q.seq);
            let kept = kept
                .into_iter()
                .map(|q| (q.seq, &q.msg.destination, &q.msg.headers, &q.msg.body));
            if let Err(e) = journal.compact(kept) {
                tracing::error!("cannot compact the journal: {e}");
            }
        }
    }

    /// Opens the journal: the messages it kept go back in their queues, marked
    /// redelivered, and later messages are numbered after them. Returns how many.
    pub fn open_journal(&mut self, path: &std::path::Path, fsync: bool) -> std::io::Result<usize> {
        let (journal, kept) = Journal::open(path, fsync)?;
        let n = kept.len();
        for k in kept {
            self.next_seq = self.next_seq.max(k.lsn + 1);
            let msg = Arc::new(Stored {
                id: format!("m-{}", k.lsn),
                destination: k.destination.clone(),
                headers: k.headers,
                body: k.body,
                tail: Default::default(),
            });
            let queue = self.queues.entry(k.destination).or_default();
            queue.bytes += msg.body.len();
            self.queued_bytes += msg.body.len();
            queue.ready.push_back(Queued {
                seq: k.lsn,
                msg,
                redelivered: true,
            });
        }
        if journal.group_commit() {
            // What the journal kept is on the disk (opening rewrote and flushed it).
            self.durability.synced = self.next_seq - 1;
        }
        self.journal = Some(journal);
        Ok(n)
    }

    /// Queues a frame for a session's writer; a session that cannot take it is closed.
    pub fn send_to(&mut self, id: SessionId, out: Out) {
        if let Some(session) = self.sessions.get(&id) {
            if session.outbox.try_send(out).is_err() {
                session.kill.slow();
            }
        }
    }

    /// Creates an empty queue unless it exists.
    pub fn create_queue(&mut self, destination: &str, single_active: bool) {
        self.queues
            .entry(destination.to_owned())
            .or_default()
            .single_active |= single_active;
    }

    /// Deletes a queue and every message in it; returns whether it existed.
    pub fn delete_queue(&mut self, destination: &str) -> bool {
        let Some(queue) = self.queues.remove(destination) else {
            return false;
        };
        if journaled(destination) {
            self.queued_bytes = self.queued_bytes.saturating_sub(queue.bytes);
        }
        let mut gone: Vec<u64> = queue.ready.iter().map(|q| q.seq).collect();
        for (sid, sub_id) in queue.consumers {
            if let Some(session) = self.sessions.get_mut(&sid) {
                session.subscriptions.remove(&sub_id);
                session.unacked.retain(|_, u| {
                    if u.queue == destination {
                        gone.push(u.item.seq);
                    }
                    u.queue != destination
                });
            }
        }
        if journaled(destination) {
            self.settle(&gone);
        }
        true
    }

    /// How many subscriptions consume from a queue.
    pub fn consumer_count(&self, destination: &str) -> usize {
        self.queues
            .get(destination)
            .map_or(0, |q| q.consumers.len())
    }

    /// Whether a queue exists.
    pub fn has_queue(&self, destination: &str) -> bool {
        self.queues.contains_key(destination)
    }

    /// Number of messages ready in a queue (not counting those delivered and unacked).
    pub fn queue_depth(&self, destination: &str) -> Option<usize> {
        self.queues.get(destination).map(|q| q.ready.len())
    }

    /// Messages in named queues (`/queue/...`), ready or unacked, in queue order: what a
    /// graceful shutdown must keep.
    pub fn undelivered(&self) -> Vec<Undelivered> {
        let mut items: Vec<(String, &Queued)> = Vec::new();
        for (name, queue) in &self.queues {
            if queue.topic.is_none() {
                items.extend(queue.ready.iter().map(|q| (name.clone(), q)));
            }
        }
        for session in self.sessions.values() {
            for u in session.unacked.values() {
                if !u.queue.starts_with('\0') {
                    items.push((u.queue.clone(), &u.item));
                }
            }
        }
        items.sort_by_key(|(_, q)| q.seq);
        items
            .into_iter()
            .map(|(name, q)| (name, q.msg.headers.clone(), q.msg.body.clone()))
            .collect()
    }

    /// Every live session's kill switch.
    pub fn kill_switches(&self) -> Vec<Arc<Kill>> {
        self.sessions.values().map(|s| s.kill.clone()).collect()
    }

    /// The kill switches of the sessions whose principal `which` picks.
    pub fn sessions_of(&self, which: impl Fn(&Principal) -> bool) -> Vec<Arc<Kill>> {
        self.sessions
            .values()
            .filter(|s| which(&s.principal))
            .map(|s| s.kill.clone())
            .collect()
    }

    /// Messages ready in named queues.
    pub fn queued(&self) -> usize {
        self.queues
            .iter()
            .filter(|(name, _)| journaled(name))
            .map(|(_, q)| q.ready.len())
            .sum()
    }

    /// How many sessions are connected.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}
