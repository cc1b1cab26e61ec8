//! The room worker as a long-lived consumer of its room's inbox (over STOMP or AMQP, see
//! `link.rs`): the runtime of the all-in-one server's worker tasks and of worker
//! processes in a cluster. It feeds the [`RoomWorker`] core
//! from the inbox, publishes what it produces, checkpoints, and only then acks. On the
//! embedded broker most inputs never reach this task: the broker applies them to the
//! same core where it delivers them (`shared.rs`), and the task keeps the ticks,
//! checkpoints, acks and the rest.
//!
//! Exactly once: inputs are acked (cumulatively) only after a checkpoint that includes
//! them. If the worker dies, the broker redelivers every unacked input to its
//! replacement, which starts from that checkpoint; inputs the checkpoint already holds
//! are skipped by their player's sequence number (and ticks by their number in the life
//! of the worker that sent them), the rest are applied again. Outputs that are published
//! twice carry the same room `seq`, so clients can drop repeats. Transfers are saved in
//! the checkpoint's transaction (an outbox) and carried out after it, by a key the replay
//! repeats; a worker carries on those its predecessor left in the outbox.
//!
//! A room nobody is in hibernates: it sends itself no ticks, so it has nothing to
//! publish or save, and no timer but the idle one runs.

use super::courier::Courier;
use super::link::{Ack, Delivery, Inbox, Link};
use super::room_worker::RoomWorker;
use super::saver::{saving, Saver};
use super::shared::{Shared, PREFETCH};
use super::Transfers;
use crate::admin::{BrokerAdmin, Endpoints};
use crate::msg::{Msg, RoomInfo};
use crate::names::WORKER_USER;
use crate::policy::{Policies, RoomPolicy};
use crate::room::{Listing, Output};
use crate::stomp::{Client, ConnectOptions, HeartBeat};
use crate::store::Store;
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A room whose only unsaved changes come from its own ticks (NPCs wandering beside
/// players who send nothing) checkpoints this many times less often: replaying ticks
/// after a crash repeats them exactly, and nobody waits for their acks.
const TICKS_ONLY_SLOWER: u32 = 8;
/// How often a standby worker checks that its room still lives.
const STANDBY_CHECK: Duration = Duration::from_secs(2);
/// How long a worker that stops waits for the transfers under way; the rest wait in the
/// outbox for the room's next worker.
const TRANSFERS_GRACE: Duration = Duration::from_secs(5);

/// How often a worker does its periodic work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How often a room checkpoints (and acks) what it has applied.
    pub checkpoint_every: Duration,
    /// A room with no input for this long ends.
    pub idle_timeout: Duration,
    /// The heart-beat interval a worker asks of the broker; the broker notices a hung
    /// worker (and hands its rooms to a standby) after missing about two.
    pub heartbeat: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            checkpoint_every: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(15 * 60),
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// Everything a room worker needs from the world: the store, the broker (its admin, the
/// endpoint and the worker's credentials), the room service's transfers, timings, and
/// the signal to stop. Cheap to clone.
#[derive(Clone)]
pub struct WorkerEnv {
    /// Checkpoints, item grants, room records.
    pub store: Store,
    /// The broker's control plane: names, endpoints, deleting the inbox at the end.
    pub admin: Arc<dyn BrokerAdmin>,
    /// Carries out the transfers rooms ask for (the room service).
    pub transfers: Arc<dyn Transfers>,
    /// This worker process's id, recorded in the store beside the rooms it runs.
    pub worker_id: String,
    /// The worker's STOMP login.
    pub login: String,
    /// The worker's STOMP passcode (the worker secret, shared by every process).
    pub passcode: String,
    /// Checkpoint and idle periods.
    pub timings: Timings,
    /// Each kind's policy (its idle timeout replaces `timings`').
    pub policies: Policies,
    /// Becomes `true` when the process shuts down: workers checkpoint, ack and stop.
    pub shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEnv")
            .field("login", &self.login)
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

impl WorkerEnv {
    pub(super) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// How one life of a room worker ended (when it did not fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The room ended.
    Ended,
    /// The process is shutting down.
    Stopped,
    /// Another worker ran the room all along (see [`Lease::standby_for`]).
    NotNeeded,
    /// The lease ran out (see [`Lease`]): the room is checkpointed, every input acked,
    /// and the worker gone from the inbox. `occupied` says whether players were in it,
    /// and so whether it wants a next worker now or can sleep until someone joins.
    LeaseOver {
        /// Players were in the room.
        occupied: bool,
    },
}

/// How long a worker may hold a room before it hands it on: for workers that live
/// only so long (a Lambda invocation), not for worker processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Hand the room on by then.
    pub until: tokio::time::Instant,
    /// Or sooner, once nobody has been in the room for this long.
    pub empty_for: Duration,
    /// A worker still standing by after this long gives up: another runs the room.
    pub standby_for: Duration,
}

/// One life of a room worker running `msg` under `policy`, from its checkpoint until the
/// room ends, the process shuts down, something fails, or `lease` is over. Four phases:
/// stand by until the broker makes this worker the inbox's active consumer, activate
/// (the checkpoint), serve the inputs, and finish (the room ended, or the process stops,
/// or the lease is over).
pub async fn run_leased<S>(
    env: &WorkerEnv,
    room_id: &str,
    msg: Msg<S>,
    policy: &RoomPolicy,
    lease: Option<Lease>,
) -> Result<Outcome>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    // A live room has an inbox, even if the broker lost it (declaring is idempotent).
    env.admin.create_inbox(room_id, policy).await?;
    let client = connect(env, room_id).await?;
    let shared = Arc::new(Shared::new(room_id, env.admin.names()));
    // On the broker of this process, the room's inputs are applied where the broker
    // delivers them (`shared.rs`); outputs held for a batch window are the task's.
    let inline = match &client {
        Link::InProcess(_, broker) if policy.batch.is_zero() => {
            Some((broker, broker.offer_inline(shared.clone())))
        }
        _ => None,
    };
    // One future for the whole life: a fresh one per message would lock the watch's
    // waiter list twice for every input.
    let stop = stopped(env.shutdown.clone());
    tokio::pin!(stop);
    let token = inline.as_ref().map(|(_, token)| token.as_str());
    let standing = stand_by(env, room_id, &client, token, lease, &mut stop).await;
    if let Some((broker, token)) = &inline {
        // Claimed by the subscription if it was made; otherwise nothing may claim it.
        broker.withdraw_inline(token);
    }
    let (mut sub, first) = match standing? {
        StandBy::Active(sub, first) => (sub, first),
        StandBy::Over(outcome) => {
            client.disconnect().await;
            return Ok(outcome);
        }
    };
    let run = async {
        let worker = activate(env, room_id, msg)
            .await?
            .with_grace(policy.grace)
            .with_recording(policy.record);
        shared.install(worker);
        let mut room = Active::new(env, room_id, &client, &shared, policy.batch);
        // Transfers a worker before saved but may not have finished: done twice is done
        // once.
        room.courier
            .resume(env.store.pending_transfers(room_id).await?);
        let ending = room.serve(&mut sub, Some(first), lease, &mut stop).await?;
        room.finish(ending, sub).await
    };
    let outcome = run.await;
    if outcome.is_err() {
        // The inputs this worker holds unacked go back in line, ahead of later ones, when
        // its connection closes: close it now, not when the tasks that still hold a clone
        // (a checkpoint being saved, the courier) let go of it.
        client.disconnect().await;
    }
    outcome
}

/// The worker's connection to the broker: in memory when the broker is in this process;
/// on a cluster, to the first node that answers, starting at one chosen by the room
/// (workers' connections spread over the nodes, and a room's worker goes to the next
/// node when its own is down). To RabbitMQ a worker speaks AMQP, unless it needs TLS.
async fn connect(env: &WorkerEnv, room_id: &str) -> Result<Link> {
    let endpoints = env.admin.endpoints();
    let options = ConnectOptions {
        host: endpoints.vhost.clone(),
        // A hung worker is noticed by its missing heart-beats: keep them frequent.
        heartbeat: HeartBeat::every(env.timings.heartbeat),
        ..ConnectOptions::login(env.login.clone(), env.passcode.clone())
    };
    Ok(match env.admin.in_process() {
        // The broker is in this process: no socket, and no heart-beats (a worker and its
        // broker live and die together; there is no standby to hand the room to).
        Some(broker) => {
            let options = ConnectOptions {
                heartbeat: HeartBeat::NONE,
                ..options
            };
            let transport = broker.connect_in_memory();
            Link::InProcess(Client::handshake(transport, options).await?, broker)
        }
        None if !endpoints.worker_amqp_urls.is_empty() => {
            let urls = Endpoints::spread(&endpoints.worker_amqp_urls, room_id);
            let vhost = &endpoints.vhost;
            Link::amqp(
                &urls,
                &env.login,
                &env.passcode,
                vhost,
                env.timings.heartbeat,
            )
            .await?
        }
        None => {
            let urls = Endpoints::spread(&endpoints.worker_urls, room_id);
            Link::Stomp(Client::connect_first(&urls, options).await?)
        }
    })
}

/// How standing by ended.
enum StandBy {
    /// This worker is the inbox's active consumer now, with its first message.
    Active(Inbox, Delivery),
    /// It will not run the room.
    Over(Outcome),
}

/// Subscribes to the inbox and waits to be its active consumer. The inbox has one at a
/// time: this subscription stands by until the broker makes it the active one (the
/// worker before it is gone, and its unacked inputs are back in line); only then is the
/// checkpoint read, so a worker that stood by for long starts from its predecessor's
/// last one.
async fn stand_by(
    env: &WorkerEnv,
    room_id: &str,
    client: &Link,
    inline: Option<&str>,
    lease: Option<Lease>,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<StandBy> {
    // A worker that fails must not unsubscribe: its successor would take the inbox while
    // the failed worker's unacked inputs are still out, and apply later inputs first.
    // Closing the connection gives them back and hands the inbox on in one step. Only a
    // room that ended unsubscribes ([`Active::finish`]).
    let mut sub = client
        .subscribe(&env.admin.names().inbox_queue(room_id), PREFETCH, inline)
        .await?;
    let mut still_live = tokio::time::interval(STANDBY_CHECK);
    let give_up = tokio::time::sleep(lease.map_or(Duration::MAX / 4, |l| l.standby_for));
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            biased;
            _ = stop.as_mut() => return Ok(StandBy::Over(Outcome::Stopped)),
            _ = &mut give_up, if lease.is_some() => return Ok(StandBy::Over(Outcome::NotNeeded)),
            first = sub.recv() => {
                let first = first.ok_or_else(|| closed(client))?;
                return Ok(StandBy::Active(sub, first));
            }
            _ = still_live.tick() => {
                // A room can end while this worker stands by (its active worker ends it).
                if env.store.room(room_id).await?.is_none() {
                    env.admin.delete_inbox(room_id).await?;
                    return Ok(StandBy::Over(Outcome::Ended));
                }
            }
        }
    }
}

/// Builds the room from its checkpoint and records this worker as the room's.
async fn activate<S>(env: &WorkerEnv, room_id: &str, msg: Msg<S>) -> Result<RoomWorker<S>>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    // The game's state factory sees the room's name, from its record (none when the room
    // ended meanwhile: then the name is empty).
    let record = env.store.room(room_id).await?;
    let name = record.map(|r| r.name).unwrap_or_default();
    let mut worker = RoomWorker::new(RoomInfo::new(room_id, name), msg);
    let checkpoint = env.store.checkpoint(room_id).await?;
    tracing::info!(
        room = %room_id,
        seq = checkpoint.as_ref().map_or(0, |c| c.seq),
        "active: this worker runs the room"
    );
    if let Some(cp) = checkpoint {
        worker.restore(cp)?;
    }
    env.store.set_room_worker(room_id, &env.worker_id).await?;
    Ok(worker)
}

/// A worker's clocks while it runs a room.
struct Timers {
    /// The game's tick, at a random phase of its period (never, if the game has none).
    tick: tokio::time::Interval,
    /// The checkpoint period, restarted by the first change after a checkpoint.
    checkpoint: tokio::time::Interval,
    /// A room whose only unsaved changes are its own ticks checkpoints this often.
    ticks_only_every: Duration,
    /// When to look at idleness next: once per idle period, not on every input.
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// How often a leased worker looks at its lease.
    lease_check: tokio::time::Interval,
    /// Since when nobody is in the room, as the lease checks saw it.
    empty_since: Option<tokio::time::Instant>,
}

impl Timers {
    fn new(timings: &Timings, tick_every: Option<Duration>) -> Timers {
        // Rooms started together would tick together, and a thousand ticks at one instant
        // is a stall for everyone: each room starts at a random point of its period.
        let every = tick_every.unwrap_or(Duration::from_secs(3600));
        let phase = every.mul_f64(f64::from(rand_u16()) / 65536.0);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Timers {
            tick,
            checkpoint: tokio::time::interval(timings.checkpoint_every),
            ticks_only_every: timings.checkpoint_every * TICKS_ONLY_SLOWER,
            idle: Box::pin(tokio::time::sleep(timings.idle_timeout)),
            // A few times a second.
            lease_check: tokio::time::interval(Duration::from_millis(200)),
            empty_since: None,
        }
    }
}

/// What a worker serving a room waits for.
enum Event {
    Stop,
    LeaseCheck,
    /// The save under way finished (or failed).
    Saved(std::result::Result<Result<()>, tokio::task::JoinError>),
    /// The broker applied an input that left the task something to do.
    Applied,
    /// An inbox message, or `None` when the subscription ended.
    Input(Option<Delivery>),
    Tick,
    Checkpoint,
    Idle,
    /// Time to look for dropped players whose grace is over.
    Grace,
    /// The held outputs' batch window is over.
    Flush,
}

/// Why a worker stops serving a room.
enum Served {
    /// The process shuts down.
    Stopped,
    /// The lease is over; `occupied` says whether players were in the room.
    LeaseOver { occupied: bool },
    /// The room ended, for this reason.
    Ended(String),
}

/// A room this worker runs: its core, and what carries its inputs, outputs and
/// checkpoints.
struct Active<'a, S> {
    env: &'a WorkerEnv,
    room_id: &'a str,
    client: &'a Link,
    /// The room, which the broker of this process may also apply inputs to.
    shared: &'a Shared<S>,
    saver: Saver<'a>,
    /// Carries out the transfers the saver hands it.
    courier: Courier,
    publisher: Publisher<'a, S>,
    timers: Timers,
    /// Where the worker sends its own ticks: its room's inbox.
    inbox: String,
    /// This life's name: its ticks are numbered, so that each runs once; lives sort by
    /// start time.
    life: String,
    /// Ticks sent in this life.
    ticks: u64,
    /// Dropped players waiting out their grace.
    away: Away,
}

/// A worker's watch over dropped players: while any is away, it looks every
/// [`GRACE_CHECK`] for those whose grace is over, and has the room service take each
/// out (its leave then comes back through the inbox, in line with the inputs).
struct Away {
    /// Someone is dropped (as the room was after the last lobby message).
    anyone: bool,
    check: tokio::time::Interval,
    /// Players asked to leave, and when: asked again only if still here much later.
    asked: HashMap<String, Instant>,
}

/// How often a worker looks at the grace of dropped players.
const GRACE_CHECK: Duration = Duration::from_millis(250);
/// A player whose leave was asked for and who is still in the room is asked again.
const LEAVE_AGAIN_AFTER: Duration = Duration::from_secs(5);

impl<'a, S> Active<'a, S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    fn new(
        env: &'a WorkerEnv,
        room_id: &'a str,
        client: &'a Link,
        shared: &'a Shared<S>,
        batch: Duration,
    ) -> Self {
        let (tick_every, anyone_away) = {
            let mut inner = shared.lock();
            let worker = inner.worker();
            (worker.tick_interval(), worker.room().anyone_away())
        };
        let timers = Timers::new(&env.timings, tick_every);
        let life = format!(
            "{:013}{:04x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            rand_u16()
        );
        let courier = Courier::start(env, client, room_id);
        Active {
            env,
            room_id,
            client,
            shared,
            saver: Saver::new(&env.store, client, courier.queue()),
            courier,
            publisher: Publisher {
                client,
                shared,
                window: batch,
                held: Vec::new(),
                held_bytes: 0,
                due: Box::pin(tokio::time::sleep(Duration::ZERO)),
                holding: false,
            },
            timers,
            inbox: env.admin.names().inbox(room_id, WORKER_USER),
            life,
            ticks: 0,
            away: Away {
                anyone: anyone_away,
                check: tokio::time::interval(GRACE_CHECK),
                asked: HashMap::new(),
            },
        }
    }

    /// Applies the inbox's messages in order, ticks, checkpoints and acks, until the
    /// room ends, the process stops or the lease is over.
    async fn serve(
        &mut self,
        sub: &mut Inbox,
        mut pending: Option<Delivery>,
        lease: Option<Lease>,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<Served> {
        loop {
            let (ticking, unsaved) = {
                let mut inner = self.shared.lock();
                let worker = inner.worker();
                // A room nobody is in hibernates: no ticks, so nothing to publish or save.
                let ticking =
                    worker.tick_interval().is_some() && worker.room().players().next().is_some();
                (
                    ticking,
                    inner.unsaved > 0 || inner.worker().activity_pending(),
                )
            };
            let checkpoint_due = unsaved && self.saver.in_flight.is_none();
            let t = &mut self.timers;
            let event = tokio::select! {
                biased;
                _ = stop.as_mut() => Event::Stop,
                _ = t.lease_check.tick(), if lease.is_some() => Event::LeaseCheck,
                // Before the next input, so a finished save is acked even when inputs
                // pour in.
                result = saving(&mut self.saver.in_flight) => Event::Saved(result),
                // Also before it: held outputs go when due, however fast inputs come.
                _ = &mut self.publisher.due, if self.publisher.holding => Event::Flush,
                message = next(&mut pending, sub) => Event::Input(message),
                () = self.shared.woken() => Event::Applied,
                _ = t.tick.tick(), if ticking => Event::Tick,
                _ = t.checkpoint.tick(), if checkpoint_due => Event::Checkpoint,
                _ = &mut t.idle => Event::Idle,
                _ = self.away.check.tick(), if self.away.anyone => Event::Grace,
            };
            match event {
                Event::Stop => return Ok(Served::Stopped),
                Event::LeaseCheck => {
                    if let Some(occupied) = self.lease_over(lease) {
                        return Ok(Served::LeaseOver { occupied });
                    }
                }
                Event::Saved(result) => self.saver.finished(self.shared, result)?,
                Event::Applied => self.follow_up().await?,
                Event::Input(message) => {
                    let message = message.ok_or_else(|| closed(self.client))?;
                    self.on_input(message).await?;
                }
                Event::Tick => {
                    self.ticks += 1;
                    let tick = super::room_worker::tick(
                        &self.life,
                        self.ticks,
                        super::room_worker::now_ms(),
                    );
                    self.client.send(&self.inbox, tick.into_bytes())?;
                }
                Event::Checkpoint => {
                    let due = {
                        let mut inner = self.shared.lock();
                        inner.unsaved_not_ticks > 0
                            || inner.worker().activity_pending()
                            || self.saver.started.elapsed() >= self.timers.ticks_only_every
                    };
                    if due {
                        self.publisher.flush()?;
                        self.saver.start(self.shared).await?;
                    }
                }
                Event::Idle => self.on_idle()?,
                Event::Grace => self.on_grace(),
                Event::Flush => self.publisher.flush()?,
            }
            if let Some(reason) = self.shared.lock().worker().ended() {
                return Ok(Served::Ended(reason.to_owned()));
            }
        }
    }

    /// Whether the lease is over (and then whether players were in the room): its time
    /// is up, or the room has been empty for long enough.
    fn lease_over(&mut self, lease: Option<Lease>) -> Option<bool> {
        let lease = lease?;
        let occupied = self
            .shared
            .lock()
            .worker()
            .room()
            .players()
            .next()
            .is_some();
        let now = tokio::time::Instant::now();
        let t = &mut self.timers;
        t.empty_since = if occupied {
            None
        } else {
            Some(t.empty_since.unwrap_or(now))
        };
        let empty_long = t
            .empty_since
            .is_some_and(|since| now - since >= lease.empty_for);
        (now >= lease.until || empty_long).then_some(occupied)
    }

    /// Applies one inbox message, publishes what it made, and checkpoints when due.
    async fn on_input(&mut self, message: Delivery) -> Result<()> {
        let input = self.shared.input(
            message.user_id(),
            message.destination(),
            message.timestamp(),
            message.body(),
        );
        let tick = !input.keeps_alive();
        let outputs = {
            let mut inner = self.shared.lock();
            if let Some(why) = &inner.failed {
                return Err(panicked(why));
            }
            let outputs = inner.apply(input);
            inner.applied(Ack::Delivery(message), tick);
            outputs
        };
        // Published at once (in process, by a method call) before the frame is done: an
        // input the broker applies after it has its outputs after these.
        self.publisher.publish(outputs)?;
        self.shared.frame_done();
        self.follow_up().await
    }

    /// Carries out what the inputs applied left the task to do: the listing changes, the
    /// watch over dropped players, the checkpoint period, an early checkpoint.
    async fn follow_up(&mut self) -> Result<()> {
        let (listing, anyone_away, first_unsaved, unsaved) = {
            let mut inner = self.shared.lock();
            if let Some(why) = &inner.failed {
                return Err(panicked(why));
            }
            let control = std::mem::take(&mut inner.control);
            let anyone_away = control.then(|| inner.worker().room().anyone_away());
            (
                std::mem::take(&mut inner.listing),
                anyone_away,
                std::mem::take(&mut inner.first_unsaved),
                inner.unsaved,
            )
        };
        if let Some(anyone) = anyone_away {
            self.away.anyone = anyone;
        }
        for change in listing {
            // Not held to the checkpoint: setting it again (after a crash) is the same.
            match change {
                Listing::Locked(locked) => self.env.store.set_locked(self.room_id, locked).await?,
                Listing::Meta(meta) if meta.is_object() => {
                    self.env.store.set_meta(self.room_id, &meta).await?
                }
                Listing::Meta(meta) => {
                    tracing::warn!(room = %self.room_id, "room metadata is a JSON object, not {meta}");
                    true
                }
            };
        }
        if first_unsaved {
            // The first change since the last checkpoint: the next is a period away.
            self.timers.checkpoint.reset();
        }
        // A busy room checkpoints early rather than stall on its prefetch.
        if unsaved >= u32::from(PREFETCH) / 2 {
            self.publisher.flush()?;
            self.saver.start(self.shared).await?;
        }
        Ok(())
    }

    /// Asks the room service to take out each dropped player whose grace is over.
    fn on_grace(&mut self) {
        let now = Instant::now();
        let over = self.shared.lock().worker().grace_over();
        for player in over {
            if self
                .away
                .asked
                .get(&player)
                .is_some_and(|at| now.duration_since(*at) < LEAVE_AGAIN_AFTER)
            {
                continue;
            }
            self.away.asked.insert(player.clone(), now);
            let (transfers, room) = (self.env.transfers.clone(), self.room_id.to_owned());
            tokio::spawn(async move {
                if let Err(e) = transfers.leave(&room, &player).await {
                    tracing::warn!(%room, %player, "cannot take out a player whose grace is over: {e}");
                }
            });
        }
        self.away
            .asked
            .retain(|_, at| now.duration_since(*at) < LEAVE_AGAIN_AFTER * 4);
    }

    /// The idle timer fired: a room with no input for the idle timeout ends.
    fn on_idle(&mut self) -> Result<()> {
        let last_input = self.shared.lock().last_input;
        let deadline = last_input + self.env.timings.idle_timeout;
        if Instant::now() >= deadline {
            let outputs = self.shared.lock().worker().end("idle");
            self.publisher.publish(outputs)?;
        } else {
            self.timers.idle.as_mut().reset(deadline.into());
        }
        Ok(())
    }

    /// Checkpoints and acks everything applied, carries out its transfers, then leaves
    /// the room: when it ended, the room is ended in the store and its inbox deleted.
    async fn finish(mut self, served: Served, sub: Inbox) -> Result<Outcome> {
        // Grants and transfers asked for before the end are kept; then every input is
        // acked, and the transfers carried out while the player can still hear of them.
        self.shared.close();
        self.publisher.flush()?;
        self.saver.save(self.shared).await?;
        drop(self.saver); // its end of the courier's queue: the courier ends once idle
        self.courier.finish(TRANSFERS_GRACE).await;
        let outcome = match served {
            Served::Stopped => Outcome::Stopped,
            Served::LeaseOver { occupied } => Outcome::LeaseOver { occupied },
            Served::Ended(reason) => {
                // Its receipt says the broker has processed every frame before it: the
                // outputs are published before the room goes.
                sub.unsubscribe().await?;
                self.env.store.end_room(self.room_id, &reason).await?;
                self.env.admin.delete_inbox(self.room_id).await?;
                tracing::info!(room = %self.room_id, "room ended: {reason}");
                Outcome::Ended
            }
        };
        self.client.disconnect().await;
        Ok(outcome)
    }
}

/// A few random bits (each call different): to tell apart two lives started in the same
/// millisecond, and to spread rooms' ticks.
fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() as u16
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The message received while standing by, then the subscription's.
async fn next(pending: &mut Option<Delivery>, sub: &mut Inbox) -> Option<Delivery> {
    match pending.take() {
        Some(message) => Some(message),
        None => sub.recv().await,
    }
}

/// The error of a worker whose room panicked applying an input where the broker
/// delivered it: the worker fails, and its successor starts from the checkpoint.
fn panicked(why: &str) -> Error {
    Error::Protocol(format!("the room panicked applying an input: {why}"))
}

fn closed(client: &Link) -> Error {
    Error::Stomp(crate::stomp::Error::Closed(
        client
            .closed()
            .unwrap_or_else(|| "the inbox subscription ended".into()),
    ))
}

/// Sends a room's outputs: at once, or, under the policy's batch window, held from the
/// first until the window is over and then sent together (see [`Publisher::flush`]).
struct Publisher<'a, S> {
    client: &'a Link,
    /// Names the outputs' destinations.
    shared: &'a Shared<S>,
    /// The policy's batch window; zero sends at once.
    window: Duration,
    /// Outputs held, in the order they were made: destination and JSON body.
    held: Vec<(String, Vec<u8>)>,
    /// Bytes held: past [`BATCH_BYTES`] they go at once.
    held_bytes: usize,
    /// When the held outputs go: one timer for the room's life, set again for each
    /// batch (not made anew on every turn of the worker's loop).
    due: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether outputs are held, and `due` is their time.
    holding: bool,
}

/// The most a batch holds before it goes, well under a STOMP frame's 1 MiB.
const BATCH_BYTES: usize = 256 * 1024;

impl<S> Publisher<'_, S> {
    /// Sends `outputs`, or holds them until the batch window is over.
    fn publish(&mut self, outputs: Vec<Output>) -> Result<()> {
        for output in outputs {
            let destination = self.shared.destination(&output.to);
            let body = output.body.into_bytes();
            if self.window.is_zero() {
                self.send(destination, body)?;
                continue;
            }
            self.held_bytes += body.len();
            self.held.push((destination, body));
            if !self.holding {
                self.holding = true;
                let at = tokio::time::Instant::now() + self.window;
                self.due.as_mut().reset(at);
            }
        }
        if self.held_bytes > BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what is held, in the order it was made: each run of outputs to the same
    /// destination as one message, a JSON array of them when there are several. (Runs,
    /// not one message per destination: a player who gets a private `welcome` between
    /// two broadcasts must get it between them.) Before a checkpoint: the inputs it
    /// acks must have their outputs out.
    fn flush(&mut self) -> Result<()> {
        self.holding = false;
        self.held_bytes = 0;
        let mut held = std::mem::take(&mut self.held).into_iter().peekable();
        while let Some((destination, first)) = held.next() {
            let mut bodies = vec![first];
            while let Some((_, body)) = held.next_if(|(next, _)| *next == destination) {
                bodies.push(body);
            }
            let body = match bodies.len() {
                1 => bodies.pop().unwrap_or_default(),
                _ => {
                    let mut array = b"[".to_vec();
                    for (i, body) in bodies.iter().enumerate() {
                        if i > 0 {
                            array.push(b',');
                        }
                        array.extend_from_slice(body);
                    }
                    array.push(b']');
                    array
                }
            };
            self.send(destination, body)?;
        }
        Ok(())
    }

    fn send(&self, destination: String, body: Vec<u8>) -> Result<()> {
        self.client.publish(destination, body)
    }
}
