//! A STOMP 1.2 broker to embed in a tokio program: `/queue/NAME` (FIFO, competing
//! consumers, acks, redelivery, prefetch, single active consumer) and `/topic/NAME`
//! (fan-out), served over TCP and over WebSocket (an axum route). Messages to queues are
//! journaled before they are delivered or receipted, so a RECEIPT outlives `kill -9`.
//!
//! Its rules live in a state without sockets (`state/`, one concept a file, each with
//! unit tests); `session.rs` runs one connection (handshake, serve, close); who may do
//! what is an [`Authorizer`]'s to say, and what happens is counted in [`Stats`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use stomp_broker::{Broker, BrokerConfig};
//!
//! let broker = Broker::new(BrokerConfig::default());
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:7613").await?;
//! tokio::spawn(broker.clone().serve_tcp(tcp));
//! let app: axum::Router = axum::Router::new().merge(broker.ws_router()); // WebSocket at /ws
//! # let _ = app; Ok(()) }
//! ```

mod handover;
mod journal;
mod local;
mod server;
mod session;
mod state;

use self::handover::{Handover, Locked};
pub use self::local::LocalBroker;
use self::state::State;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use stomp::{HeartBeat, Limits};

/// The default of [`BrokerConfig::journal_fsync_gap`]. At 1,000 players (10,000 inputs a
/// second) it made one flush cover 10 inputs instead of 6 and cut the server's CPU per
/// input by about a tenth, for about 0.3 ms more to each input's receipt
/// (docs/benchmarks.md).
pub const DEFAULT_FSYNC_GAP: Duration = Duration::from_micros(500);

/// Who a connection is, as its [`Authorizer`] decided at CONNECT. The broker stamps
/// `name` on every message the connection sends, as the `user-id` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The login, or `anonymous`.
    pub name: String,
    /// The destinations this principal may SEND to; `None` for any.
    pub send: Option<Vec<String>>,
    /// The destinations this principal may SUBSCRIBE to; `None` for any.
    pub subscribe: Option<Vec<String>>,
    /// An application's label for the connection, to find it again (the game server
    /// puts the player's room here).
    pub tag: Option<String>,
    /// How fast this principal may SEND to queues; `None` for no limit.
    pub rate: Option<SendRate>,
}

/// A token bucket for a connection's SENDs to queues. A SEND over the rate is dropped
/// (no RECEIPT: it was not accepted) and, at most once a second, the `notice` is
/// published; a connection that goes on sending at twice its burst in a second is
/// disconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRate {
    /// How many SENDs.
    pub rate: Rate,
    /// What tells the principal that its SENDs are being dropped.
    pub notice: Option<Notice>,
}

/// How a queue is declared ([`Broker::declare_queue`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// One consumer at a time (RabbitMQ's `x-single-active-consumer`).
    pub single_active: bool,
    /// Messages it holds at most; `None` is [`BrokerConfig::max_queue_len`].
    pub max_len: Option<usize>,
    /// Whether its messages wait for the disk before delivery and RECEIPT; `None`
    /// follows [`BrokerConfig::journal_fsync`]. Waiting takes a journal opened with
    /// `journal_fsync`: without one, `Some(true)` changes nothing.
    pub fsync: Option<bool>,
}

/// A rate of messages: so many a second on average, so many at once after a quiet
/// spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages a second, on average.
    pub per_second: u32,
    /// Messages at once after a quiet spell.
    pub burst: u32,
}

/// A message the broker publishes on its own: whoever grants a [`SendRate`] writes it,
/// in the application's own format, since the broker knows none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Where it goes (a destination the principal reads).
    pub destination: String,
    /// Its headers, `user-id` included.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Bytes,
}

/// One queue as it is now: [`Broker::queue_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages waiting for a consumer.
    pub ready: usize,
    /// Messages delivered to a consumer and not yet acknowledged.
    pub unacked: usize,
    /// Subscriptions consuming from it.
    pub consumers: usize,
}

/// What the broker has counted since it started, for whoever reports on it (the game
/// server's `GET /metrics`): [`Broker::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames and connections refused with an ERROR for a limit: too many, too large,
    /// full, too fast, too slow.
    pub refused_limit: u64,
    /// Refused by the authorizer.
    pub refused_access: u64,
    /// Refused as breaking the protocol.
    pub refused_malformed: u64,
    /// Refused for any other reason.
    pub refused_other: u64,
    /// SENDs dropped by their connection's rate limit.
    pub dropped_sends: u64,
    /// Connections closed for going on sending far over their rate.
    pub floods: u64,
    /// Flushes of the journal to the disk (`--fsync`).
    pub journal_flushes: u64,
    /// Messages an [`InlineConsumer`] took where they were delivered.
    pub inline_taken: u64,
    /// Messages an [`InlineConsumer`] declined, delivered as MESSAGE frames instead.
    pub inline_declined: u64,
}

impl Principal {
    /// A principal that may use every destination.
    pub fn anyone(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            send: None,
            subscribe: None,
            tag: None,
            rate: None,
        }
    }
}

/// Decides who may connect, and where each connection may send and subscribe.
///
/// Each method returns `Err(reason)` to refuse; the reason reaches the client in an
/// ERROR frame, so it should say what to do differently.
///
/// The broker calls these while it holds its state lock: an authorizer must not call
/// back into the [`Broker`], or it deadlocks.
pub trait Authorizer: Send + Sync + 'static {
    /// Checks CONNECT's `login` and `passcode` from `peer`.
    fn connect(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<Principal, String>;

    /// Connection `session` of `principal` was accepted (after [`Authorizer::connect`],
    /// once the broker's own limits let it in); `session` numbers it for as long as the
    /// broker runs. Called with the broker's lock held: hand the news on (a channel),
    /// do not wait.
    fn connected(&self, _session: u64, _principal: &Principal) {}

    /// Connection `session` of `principal` is gone, whichever way it ended. Called with
    /// the broker's lock held, as [`Authorizer::connected`].
    fn disconnected(&self, _session: u64, _principal: &Principal) {}

    /// Checks a SEND; by default against [`Principal::send`].
    fn can_send(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        default_can_send(principal, destination)
    }

    /// Checks a SUBSCRIBE; by default against [`Principal::subscribe`].
    fn can_subscribe(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        default_can_subscribe(principal, destination)
    }
}

/// The default SEND check: `destination` must be in [`Principal::send`] (if it is set).
pub fn default_can_send(principal: &Principal, destination: &str) -> Result<(), String> {
    allowed(
        &principal.name,
        principal.send.as_deref(),
        "send to",
        destination,
    )
}

/// The default SUBSCRIBE check: `destination` must be in [`Principal::subscribe`] (if set).
pub fn default_can_subscribe(principal: &Principal, destination: &str) -> Result<(), String> {
    allowed(
        &principal.name,
        principal.subscribe.as_deref(),
        "subscribe to",
        destination,
    )
}

fn allowed(
    name: &str,
    grants: Option<&[String]>,
    verb: &str,
    destination: &str,
) -> Result<(), String> {
    match grants {
        Some(list) if !list.iter().any(|d| d == destination) => Err(format!(
            "{name} may not {verb} {destination}; it may {verb} {}",
            if list.is_empty() {
                "nothing".to_owned()
            } else {
                list.join(", ")
            }
        )),
        _ => Ok(()),
    }
}

/// A message offered to an [`InlineConsumer`].
#[derive(Debug)]
pub struct Offered<'a> {
    /// Its ack tag, as a MESSAGE frame's `ack` header would give it (`None` with
    /// `ack:auto`). With `ack:client`, acking it acks every earlier message of the
    /// subscription.
    pub tag: Option<u64>,
    /// Its headers as the broker keeps them: the sender's own, `user-id` and, from a
    /// queue, `timestamp`.
    pub headers: &'a [(String, String)],
    /// Its body.
    pub body: &'a Bytes,
    /// Whether it was delivered before and given back.
    pub redelivered: bool,
}

impl Offered<'_> {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A message an [`InlineConsumer`] publishes for one it took, as a SEND of its session
/// would: to a queue or a topic, stamped with the session's `user-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// `/queue/NAME` or `/topic/NAME`.
    pub destination: String,
    /// Its own headers (the broker's, such as `user-id`, are set by the broker).
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Bytes,
}

/// A consumer in the broker's process that takes a subscription's messages where they
/// are delivered, under the broker's lock, instead of as MESSAGE frames: no frame is
/// built, no task woken. What it publishes for a message goes out in the same call.
///
/// A message it takes counts as delivered to its subscription: it stays unacked, within
/// the subscription's prefetch, until the session acks it, and goes back in line if the
/// session closes first, exactly as a MESSAGE frame would. It is attached by
/// [`Broker::offer_inline`] and a SUBSCRIBE of an in-memory connection.
pub trait InlineConsumer: Send + Sync {
    /// Takes `message` and returns what to publish for it, or `None` to have it delivered
    /// as a MESSAGE frame instead. A declined message keeps its place in the
    /// subscription's order (its tag), but its frame reaches the session after the
    /// messages taken behind it are applied: a consumer that must apply in order declines
    /// those too, until the session has handled the frames. It runs under the broker's
    /// lock: it must not call the broker, and may wait for a lock of its own only if
    /// nothing holds that lock while calling the broker.
    fn take(&self, message: Offered<'_>) -> Option<Vec<Publish>>;
}

/// An [`Authorizer`] that lets everyone in, everywhere: a plain, open broker.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn connect(
        &self,
        login: Option<&str>,
        _: Option<&str>,
        _: Option<SocketAddr>,
    ) -> Result<Principal, String> {
        Ok(Principal::anyone(login.unwrap_or("anonymous")))
    }
}

/// Broker settings; the defaults suit a game server.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Limits on incoming frames.
    pub limits: Limits,
    /// The heart-beats the broker offers.
    pub heartbeat: HeartBeat,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Frames queued for one connection before it counts as too slow and is closed. A
    /// client that reads holds almost none; a large backlog only makes dropping it
    /// costly for everyone (16,384 stalled a bystander for half a second).
    pub outbox_capacity: usize,
    /// Undelivered messages one queue may hold; a SEND beyond it is refused.
    pub max_queue_len: usize,
    /// Messages one topic subscription may have waiting (beyond its prefetch); past it,
    /// the oldest is dropped, as a live feed does.
    pub max_topic_backlog: usize,
    /// Unacknowledged messages one connection may hold, whatever its prefetch; past it,
    /// delivery to it waits for acks.
    pub max_unacked: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Transactions one connection may have open.
    pub max_transactions: usize,
    /// Frames one transaction may buffer.
    pub max_tx_frames: usize,
    /// Body bytes one connection's open transactions may buffer together.
    pub max_tx_bytes: usize,
    /// Longest destination name.
    pub max_destination_len: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address (loopback is not counted: behind a proxy
    /// on the same host every client comes from there).
    pub max_connections_per_address: usize,
    /// Connections at once with one login of an application's principal that carries a
    /// tag (one player's ticket).
    pub max_connections_per_login: usize,
    /// Body bytes one queue may hold (ready and unacked); a SEND beyond it is refused.
    pub max_queue_bytes: usize,
    /// Body bytes all queues together may hold.
    pub max_total_queue_bytes: usize,
    /// Where a graceful shutdown writes undelivered queue messages, and start-up reads
    /// them back; `None` keeps nothing across restarts. Not needed with a journal.
    pub spool: Option<PathBuf>,
    /// The journal: every message to a named queue is written here before it is
    /// delivered or receipted, so it survives the process being killed; start-up puts
    /// back what was never acked. `None` keeps queues in memory only.
    pub journal: Option<PathBuf>,
    /// With a journal, also flush each message to the disk before its RECEIPT (survives
    /// a machine crash). Flushes are group commits: one covers every message written
    /// while the one before was under way, and those messages wait for it. A queue
    /// declared with [`QueueOptions::fsync`] `Some(false)` does not wait.
    pub journal_fsync: bool,
    /// With `journal_fsync`, how long the flusher waits before a flush when more was
    /// written while its last flush ran, so that under a steady stream one flush covers
    /// more messages. A message that finds the flusher idle is flushed at once. Zero
    /// flushes at once always.
    pub journal_fsync_gap: Duration,
    /// The CONNECTED `server` header.
    pub server_name: String,
    /// Queues whose names start with one of these exist only through
    /// [`Broker::create_queue`]; a client's SEND or SUBSCRIBE cannot create them.
    pub managed_prefixes: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            limits: Limits::default(),
            heartbeat: HeartBeat::every(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(10),
            outbox_capacity: 4096,
            max_queue_len: 100_000,
            max_topic_backlog: 10_000,
            max_unacked: 10_000,
            max_subscriptions: 64,
            max_transactions: 16,
            max_tx_frames: 1_000,
            max_tx_bytes: 1024 * 1024,
            max_destination_len: 255,
            max_connections: 20_000,
            max_connections_per_address: 512,
            max_connections_per_login: 4,
            max_queue_bytes: 16 << 20,
            max_total_queue_bytes: 256 << 20,
            spool: None,
            journal: None,
            journal_fsync: false,
            journal_fsync_gap: DEFAULT_FSYNC_GAP,
            server_name: format!("game-server-less/{}", env!("CARGO_PKG_VERSION")),
            managed_prefixes: Vec::new(),
        }
    }
}

/// A message the broker would not take: a full queue, a managed queue that does not
/// exist, a broker shutting down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why, in a few words (an ERROR frame's `message`).
    pub message: String,
    /// More of why.
    pub detail: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// The embedded broker. Cheap to clone; every clone is the same broker.
#[derive(Clone)]
pub struct Broker {
    state: Arc<Mutex<State>>,
    /// Frames left for the lock's holder by connections that found it taken.
    handover: Arc<Handover>,
    shutdown: watch::Sender<bool>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker that lets anyone use any destination.
    pub fn new(config: BrokerConfig) -> Broker {
        Broker::with_authorizer(config, Arc::new(AllowAll))
    }

    /// A broker whose connections `authorizer` checks.
    ///
    /// # Panics
    ///
    /// When the configured journal cannot be opened; [`Broker::open`] returns the error.
    pub fn with_authorizer(config: BrokerConfig, authorizer: Arc<dyn Authorizer>) -> Broker {
        Broker::open(config, authorizer).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A broker whose connections `authorizer` checks, with what its journal (or spool)
    /// kept put back in its queues.
    pub fn open(config: BrokerConfig, authorizer: Arc<dyn Authorizer>) -> std::io::Result<Broker> {
        let spool = config.spool.clone();
        let journal = config.journal.clone();
        let fsync = config.journal_fsync;
        let broker = Broker {
            state: Arc::new(Mutex::new(State::new(config, authorizer))),
            handover: Arc::new(Handover::new(session::handle_left)),
            shutdown: watch::channel(false).0,
            tasks: TaskTracker::new(),
        };
        if let Some(path) = journal {
            let n = broker.lock().open_journal(&path, fsync).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open the broker's journal {}: {e}", path.display()),
                )
            })?;
            if n > 0 {
                tracing::info!(
                    "the journal kept {n} messages not yet acked; they are back in their queues"
                );
            }
            if fsync {
                broker.start_flusher()?;
            }
        }
        if let Some(path) = spool {
            match server::restore_spool(&broker, &path) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!("restored {n} undelivered messages from {}", path.display());
                }
                Err(e) => tracing::error!("cannot restore the spool {}: {e}", path.display()),
            }
        }
        Ok(broker)
    }

    /// Starts the journal's group commit: a thread that flushes it to the disk whenever
    /// something was written, off the broker's lock, then releases what waited for it.
    /// Under a steady stream (more was written while the last flush ran) it waits
    /// [`BrokerConfig::journal_fsync_gap`] before the next, so that each flush covers
    /// more messages. It ends when the broker is dropped.
    fn start_flusher(&self) -> std::io::Result<()> {
        let state = Arc::downgrade(&self.state);
        let handover = self.handover.clone();
        let (wake, gap) = {
            let state = self.lock();
            (state.durability_signal(), state.config().journal_fsync_gap)
        };
        std::thread::Builder::new()
            .name("gsl-journal-sync".into())
            .spawn(move || {
                // More was written while the last flush ran.
                let mut busy = false;
                loop {
                    let work = wake.wait(std::time::Duration::from_secs(1));
                    let Some(state) = state.upgrade() else { return };
                    if !work {
                        busy = false;
                        continue;
                    }
                    if busy && !gap.is_zero() {
                        std::thread::sleep(gap);
                    }
                    let lock = || Locked::lock(&state, &handover);
                    let Some((file, lsn)) = lock().to_sync() else {
                        busy = false;
                        continue;
                    };
                    match file.sync_data() {
                        Ok(()) => lock().synced(lsn),
                        Err(e) => {
                            // Nothing is released; the next round tries again.
                            tracing::error!("cannot flush the journal to the disk: {e}");
                            wake.notify();
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                    busy = wake.pending();
                }
            })
            .map(|_| ())
    }

    fn lock(&self) -> Locked<'_> {
        Locked::lock(&self.state, &self.handover)
    }

    /// The state, if its lock is free.
    fn try_lock(&self) -> Option<Locked<'_>> {
        Locked::try_lock(&self.state, &self.handover)
    }

    /// Publishes a message from inside the process, as a client's SEND would (a managed
    /// queue must exist).
    pub fn publish(
        &self,
        destination: &str,
        headers: Vec<(String, String)>,
        body: impl Into<Bytes>,
    ) -> Result<(), Refused> {
        self.publish_inner(destination, headers, body.into(), false)
    }

    fn publish_inner(
        &self,
        destination: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
        create: bool,
    ) -> Result<(), Refused> {
        self.lock()
            .publish_local(destination, headers, body, create)
            .map_err(|r| Refused {
                message: r.message,
                detail: r.detail,
            })
    }

    /// Offers `consumer` to the SUBSCRIBE of an in-memory connection (see
    /// [`Broker::connect_in_memory`]) whose `inline` header names the returned token. The
    /// header means nothing on a socket's connection.
    pub fn offer_inline(&self, consumer: Arc<dyn InlineConsumer>) -> String {
        self.lock().offer_inline(consumer)
    }

    /// Takes back an offer no SUBSCRIBE claimed.
    pub fn withdraw_inline(&self, token: &str) {
        self.lock().withdraw_inline(token);
    }

    /// Puts back a message kept across a restart, creating its queue if need be.
    pub(crate) fn restore(
        &self,
        destination: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<(), Refused> {
        self.publish_inner(destination, headers, body, true)
    }

    /// Creates a queue if it does not exist yet (SEND and SUBSCRIBE also create them).
    pub fn create_queue(&self, destination: &str) {
        self.lock().create_queue(destination, false);
    }

    /// Creates a queue whose messages go to one consumer at a time, the oldest; the
    /// others stand by and the next takes over, unacked messages first, when it goes
    /// (RabbitMQ's `x-single-active-consumer`).
    pub fn create_single_consumer_queue(&self, destination: &str) {
        self.lock().create_queue(destination, true);
    }

    /// Creates a queue unless it exists, and gives it `options` (a queue that exists
    /// takes the new ones).
    pub fn declare_queue(&self, destination: &str, options: QueueOptions) {
        self.lock().declare_queue(destination, options);
    }

    /// Deletes a queue and the messages in it; returns whether it existed.
    pub fn delete_queue(&self, destination: &str) -> bool {
        self.lock().delete_queue(destination)
    }

    /// Whether a queue exists (it is created by its first SEND or SUBSCRIBE).
    pub fn has_queue(&self, destination: &str) -> bool {
        self.lock().has_queue(destination)
    }

    /// Closes every connection logged in as `name` (an ERROR frame tells it why); their
    /// unacked messages are redelivered. Returns how many were closed.
    pub fn kick(&self, name: &str) -> usize {
        self.kick_where(|p| p.name == name)
    }

    /// Closes every connection whose principal `which` picks, as [`Broker::kick`] does.
    pub fn kick_where(&self, which: impl Fn(&Principal) -> bool) -> usize {
        let sessions = self.lock().sessions_of(which);
        for kill in &sessions {
            kill.kick();
        }
        sessions.len()
    }

    /// How many subscriptions consume from a queue.
    pub fn consumer_count(&self, destination: &str) -> usize {
        self.lock().consumer_count(destination)
    }

    /// Messages waiting in a queue for a consumer.
    pub fn queue_depth(&self, destination: &str) -> Option<usize> {
        self.lock().queue_depth(destination)
    }

    /// A queue's messages ready and unacked, and its consumers; `None` if there is no
    /// such queue.
    pub fn queue_stats(&self, destination: &str) -> Option<QueueStats> {
        self.lock().queue_stats(destination)
    }

    /// Messages waiting in named queues for a consumer.
    pub fn queued(&self) -> usize {
        self.lock().queued()
    }

    /// What the broker has counted since it started.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// Connections currently open.
    pub fn session_count(&self) -> usize {
        self.lock().session_count()
    }

    /// Shuts down gracefully: refuses new messages, tells every client, flushes what each
    /// connection still has to write, waits for connections to close (up to `grace`),
    /// then writes undelivered queue messages to the spool, if one is configured.
    pub async fn shutdown(&self, grace: Duration) -> std::io::Result<()> {
        self.lock().stop_accepting();
        let _ = self.shutdown.send(true);
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {grace:?}; closing them");
            for kill in self.lock().kill_switches() {
                kill.kick();
            }
        }
        let spool = self.lock().config().spool.clone();
        if let Some(path) = spool {
            let n = server::write_spool(self, &path)?;
            if n > 0 {
                tracing::info!("kept {n} undelivered messages in {}", path.display());
            }
        }
        Ok(())
    }
}

/// A harness for fuzzing the broker's frame handling without sockets (feature
/// `fuzzing`): two connected sessions, one open and one a rate-limited player, each
/// frame parsed from the input handed to the broker as a session's would be.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::state::State;
    use super::{AllowAll, BrokerConfig, Notice, Principal, Rate, SendRate};
    use std::sync::Arc;
    use stomp::{parse, Limits, Parsed};

    /// Feeds every frame in `data` to the broker, alternating between the sessions, then
    /// closes them; returns how many frames were refused.
    pub fn handle_bytes(data: &[u8]) -> usize {
        let config = BrokerConfig {
            max_queue_bytes: 4096,
            max_total_queue_bytes: 8192,
            max_tx_bytes: 2048,
            managed_prefixes: vec!["/queue/room.".into()],
            ..BrokerConfig::default()
        };
        let mut core = State::new(config, Arc::new(AllowAll));
        core.create_queue("/queue/room.r1", true);
        let mut player = Principal::anyone("ann");
        player.send = Some(vec!["/queue/room.r1".into()]);
        player.tag = Some("r1".into());
        player.rate = Some(SendRate {
            rate: Rate {
                per_second: 5,
                burst: 3,
            },
            notice: Some(Notice {
                destination: "/topic/room.r1.player.ann".into(),
                headers: vec![("user-id".into(), "$broker".into())],
                body: "too fast".into(),
            }),
        });
        let mut outboxes = Vec::new();
        let mut sessions = Vec::new();
        // One takes MESSAGE frames encoded once (a socket), the other as values.
        for (principal, wire) in [(Principal::anyone("open"), true), (player, false)] {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            outboxes.push(rx);
            let id = core
                .add_session(principal, None, tx, Arc::default(), wire)
                .expect("two sessions fit");
            sessions.push(Some(id));
        }
        let mut rest = data;
        let mut refused = 0;
        let mut turn = 0;
        loop {
            let (frame, len) = match parse(rest, &Limits::default()) {
                Ok(Parsed::Frame(frame, len)) => (frame, len),
                Ok(Parsed::Heartbeat(len)) => {
                    rest = &rest[len..];
                    continue;
                }
                Ok(Parsed::Incomplete) | Err(_) => break,
            };
            rest = &rest[len..];
            turn += 1;
            let Some(id) = sessions[turn % 2] else {
                continue;
            };
            if core.handle(id, frame).is_err() {
                // A refused frame ends its session, as on a socket.
                refused += 1;
                core.remove_session(id);
                sessions[turn % 2] = None;
            }
            let _ = core.take_dropped();
            for rx in &mut outboxes {
                while rx.try_recv().is_ok() {}
            }
        }
        for id in sessions.into_iter().flatten() {
            core.remove_session(id);
        }
        refused
    }
}
