//! The room worker as a long-lived STOMP consumer: the runtime of the all-in-one server's
//! worker tasks and of worker processes in a cluster. It feeds the [`RoomWorker`] core
//! from the inbox, publishes what it produces, checkpoints, and only then acks.
//!
//! Exactly once: inputs are acked (cumulatively) only after a checkpoint that includes
//! them. If the worker dies, the broker redelivers every unacked input to its
//! replacement, which starts from that checkpoint; inputs the checkpoint already holds
//! are skipped by their player's sequence number (and ticks by their number in the life
//! of the worker that sent them), the rest are applied again. Outputs that are published
//! twice carry the same room `seq`, so clients can drop repeats.
//!
//! A room nobody is in hibernates: it sends itself no ticks, so it has nothing to
//! publish or save, and no timer but the idle one runs.

use super::core::{InboxMessage, RoomWorker};
use crate::admin::BrokerAdmin;
use crate::msg::{Msg, RoomInfo};
use crate::names::WORKER_USER;
use crate::room::{Output, Target};
use crate::stomp::Subscription;
use crate::stomp::{AckMode, Client, Command, ConnectOptions, Frame, Message, SubscribeOptions};
use crate::store::{Checkpoint, Store};
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Inputs in flight to a worker before it must ack; bounds what a crash replays.
const PREFETCH: u32 = 1024;
/// A room whose only unsaved changes come from its own ticks (NPCs wandering beside
/// players who send nothing) checkpoints this many times less often: replaying ticks
/// after a crash repeats them exactly, and nobody waits for their acks.
const TICKS_ONLY_SLOWER: u32 = 8;
/// How often a standby worker checks that its room still lives.
const STANDBY_CHECK: Duration = Duration::from_secs(2);

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
/// endpoint and the worker's credentials), timings, and the signal to stop. Cheap to
/// clone.
#[derive(Clone)]
pub struct WorkerEnv {
    /// Checkpoints, item grants, room records.
    pub store: Store,
    /// The broker's control plane: names, endpoints, deleting the inbox at the end.
    pub admin: Arc<dyn BrokerAdmin>,
    /// This worker process's id, recorded in the store beside the rooms it runs.
    pub worker_id: String,
    /// The worker's STOMP login.
    pub login: String,
    /// The worker's STOMP passcode (the worker secret, shared by every process).
    pub passcode: String,
    /// Checkpoint and idle periods.
    pub timings: Timings,
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
    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Runs a room's worker until the room ends or the process shuts down, starting it again
/// from the last checkpoint whenever it fails.
pub async fn supervise<S>(env: WorkerEnv, room_id: String, msg: Msg<S>)
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let mut failures = 0u32;
    loop {
        match run(&env, &room_id, msg.clone()).await {
            Ok(()) => return,
            Err(e) if env.shutting_down() => {
                tracing::debug!(room = %room_id, "worker stopped during shutdown: {e}");
                return;
            }
            Err(e) if !matches!(env.store.room(&room_id).await, Ok(Some(_))) => {
                // Another worker ended the room (its inbox went away under us), or the
                // store cannot say: either way there is nothing left to carry on.
                tracing::debug!(room = %room_id, "worker stopped: the room has ended ({e})");
                return;
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100 * u64::from(failures.min(20)));
                tracing::warn!(room = %room_id, "room worker failed ({e}); restarting from the last checkpoint in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
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

/// One life of a room worker: from its checkpoint until the room ends, the process shuts
/// down, or something fails.
pub async fn run<S>(env: &WorkerEnv, room_id: &str, msg: Msg<S>) -> Result<()>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    run_leased(env, room_id, msg, None).await.map(drop)
}

/// [`run`], for at most `lease`.
pub async fn run_leased<S>(
    env: &WorkerEnv,
    room_id: &str,
    msg: Msg<S>,
    lease: Option<Lease>,
) -> Result<Outcome>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let names = env.admin.names();
    // A live room has an inbox, even if the broker lost it (declaring is idempotent).
    env.admin.create_inbox(room_id).await?;
    let endpoints = env.admin.endpoints();
    let options = ConnectOptions {
        host: endpoints.vhost.clone(),
        // A hung worker is noticed by its missing heart-beats: keep them frequent.
        heartbeat: (
            env.timings.heartbeat.as_millis() as u64,
            env.timings.heartbeat.as_millis() as u64,
        ),
        ..ConnectOptions::login(env.login.clone(), env.passcode.clone())
    };
    let client = match env.admin.connect_in_memory() {
        // The broker is in this process: no socket, and no heart-beats (a worker and its
        // broker live and die together; there is no standby to hand the room to).
        Some(transport) => {
            let options = ConnectOptions {
                heartbeat: (0, 0),
                ..options
            };
            Client::handshake(transport, options).await?
        }
        None => Client::connect(&endpoints.worker_url, options).await?,
    };
    // The inbox has one active consumer at a time. This subscription stands by until the
    // broker makes it the active one (the worker before it is gone, and its unacked
    // inputs are back in line); only then is the checkpoint read, so a worker that stood
    // by for long starts from its predecessor's last one.
    let mut sub = client
        .subscribe(
            &names.inbox_queue(room_id),
            SubscribeOptions {
                ack: AckMode::Client,
                prefetch: Some(PREFETCH),
                headers: Vec::new(),
            },
        )
        .await?;
    // One future for the whole run: a fresh one per message would lock the watch's
    // waiter list twice for every input.
    let stop = stopped(env.shutdown.clone());
    tokio::pin!(stop);
    let mut still_live = tokio::time::interval(STANDBY_CHECK);
    let give_up = tokio::time::sleep(lease.map_or(Duration::MAX / 4, |l| l.standby_for));
    tokio::pin!(give_up);
    let first = loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                let _ = client.disconnect().await;
                return Ok(Outcome::Stopped);
            }
            _ = &mut give_up, if lease.is_some() => {
                let _ = client.disconnect().await;
                return Ok(Outcome::NotNeeded);
            }
            first = sub.recv() => break first.ok_or_else(|| closed(&client))?,
            _ = still_live.tick() => {
                // A room can end while this worker stands by (its active worker ends it).
                if env.store.room(room_id).await?.is_none() {
                    env.admin.delete_inbox(room_id).await?;
                    let _ = client.disconnect().await;
                    return Ok(Outcome::Ended);
                }
            }
        }
    };
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
    let mut pending = Some(first);

    let tick_every = worker.tick_interval();
    // Rooms started together would tick together, and a thousand ticks at one instant is
    // a stall for everyone: each room starts at a random point of its period.
    let every = tick_every.unwrap_or(Duration::from_secs(3600));
    let phase = every.mul_f64(f64::from(rand_u16()) / 65536.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint = tokio::time::interval(env.timings.checkpoint_every);
    let mut saver = Saver {
        store: &env.store,
        client: &client,
        unacked: None,
        unsaved: 0,
        unsaved_not_ticks: 0,
        started: Instant::now(),
        last: None,
        in_flight: None,
    };
    let ticks_only_every = env.timings.checkpoint_every * TICKS_ONLY_SLOWER;
    // Checks for idleness once per idle period, not on every input.
    let idle = tokio::time::sleep(env.timings.idle_timeout);
    tokio::pin!(idle);
    let mut last_input = Instant::now();
    let publisher = Publisher {
        client: &client,
        env,
        room_id,
    };
    let inbox = names.inbox(room_id, WORKER_USER);
    // This life's ticks are numbered, so that each runs once; lives sort by start time.
    let life = format!(
        "{:013}{:04x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
        rand_u16()
    );
    let mut ticks = 0u64;
    // A leased worker looks at its lease a few times a second.
    let mut lease_check = tokio::time::interval(Duration::from_millis(200));
    let mut empty_since: Option<tokio::time::Instant> = None;

    loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                saver.save(&mut worker).await?;
                let _ = client.disconnect().await;
                return Ok(Outcome::Stopped);
            }
            _ = lease_check.tick(), if lease.is_some() => {
                let Some(lease) = lease else { continue };
                let occupied = worker.room().players().next().is_some();
                let now = tokio::time::Instant::now();
                empty_since = if occupied { None } else { Some(empty_since.unwrap_or(now)) };
                let empty_long = empty_since.is_some_and(|since| now - since >= lease.empty_for);
                if now >= lease.until || empty_long {
                    saver.save(&mut worker).await?;
                    let _ = client.disconnect().await;
                    return Ok(Outcome::LeaseOver { occupied });
                }
            }
            // Before the next input, so a finished save is acked even when inputs pour in.
            result = saving(&mut saver.in_flight) => {
                saver.finished(&mut worker, result)?;
            }
            message = next(&mut pending, &mut sub) => {
                let message = message.ok_or_else(|| closed(&client))?;
                let input = InboxMessage {
                    user: names
                        .sender(room_id, message.header("user-id"), message.header("destination"))
                        .unwrap_or_default(),
                    body: message.body(),
                };
                let tick = !input.keeps_alive();
                if !tick {
                    last_input = Instant::now();
                }
                if !input.user.starts_with('$') {
                    crate::metrics::INPUTS.inc();
                }
                let timer = crate::metrics::HANDLER_SECONDS.start_timer();
                let outputs = worker.handle(input);
                timer.observe_duration();
                crate::metrics::OUTPUTS.inc_by(outputs.len() as u64);
                publisher.publish(outputs)?;
                saver.applied(message, tick);
                if saver.unsaved == 1 {
                    // The first change since the last checkpoint: the next is a period away.
                    checkpoint.reset();
                }
                // A busy room checkpoints early rather than stall on its prefetch.
                if saver.unsaved >= PREFETCH / 2 {
                    saver.start(&mut worker).await?;
                }
            }
            // A room nobody is in hibernates: no ticks, so nothing to publish or save.
            _ = tick.tick(), if tick_every.is_some() && worker.room().players().next().is_some() => {
                ticks += 1;
                client.send_nowait(&inbox, super::core::tick(&life, ticks))?;
            }
            _ = checkpoint.tick(), if saver.unsaved > 0 && saver.in_flight.is_none() => {
                if saver.unsaved_not_ticks > 0 || saver.started.elapsed() >= ticks_only_every {
                    saver.start(&mut worker).await?;
                }
            }
            _ = &mut idle => {
                let deadline = last_input + env.timings.idle_timeout;
                if Instant::now() >= deadline {
                    publisher.publish(worker.end("idle"))?;
                } else {
                    idle.as_mut().reset(deadline.into());
                }
            }
        }
        if let Some(reason) = worker.ended() {
            let reason = reason.to_owned();
            // Grants made before the end are kept; then every input is acked.
            saver.save(&mut worker).await?;
            // Its receipt says the broker has processed every frame before it: the
            // outputs are published before the room goes.
            sub.unsubscribe().await?;
            env.store.end_room(room_id, &reason).await?;
            env.admin.delete_inbox(room_id).await?;
            let _ = client.disconnect().await;
            tracing::info!(room = %room_id, "room ended: {reason}");
            return Ok(Outcome::Ended);
        }
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
async fn next(pending: &mut Option<Message>, sub: &mut Subscription) -> Option<Message> {
    match pending.take() {
        Some(message) => Some(message),
        None => sub.recv().await,
    }
}

fn closed(client: &Client) -> Error {
    Error::Stomp(crate::stomp::Error::Closed(
        client
            .closed()
            .unwrap_or_else(|| "the inbox subscription ended".into()),
    ))
}

/// Checkpoints, then acks what each checkpoint holds. A checkpoint is saved in the
/// background while the room goes on applying inputs, one save at a time: the room
/// never waits for the store unless it must (a full prefetch, the end, shutdown).
struct Saver<'a> {
    store: &'a Store,
    client: &'a Client,
    /// The latest input applied and not yet in a checkpoint; acking it acks all before it.
    unacked: Option<Message>,
    unsaved: u32,
    /// Of `unsaved`, those that are not the worker's own ticks: player inputs, joins and
    /// leaves, which checkpoint at the full pace.
    unsaved_not_ticks: u32,
    /// When the last checkpoint was started.
    started: Instant,
    /// The checkpoint last saved, to skip saving one that changes nothing.
    last: Option<Checkpoint>,
    /// The save under way.
    in_flight: Option<InFlight>,
}

/// A checkpoint being saved, and the input to ack once it is.
struct InFlight {
    task: tokio::task::JoinHandle<Result<()>>,
    /// What was saved (`None`: nothing changed, nothing written).
    saved: Option<Checkpoint>,
    ack: Option<Message>,
}

impl Saver<'_> {
    fn applied(&mut self, message: Message, tick: bool) {
        self.unacked = Some(message);
        self.unsaved += 1;
        if !tick {
            self.unsaved_not_ticks += 1;
        }
    }

    /// Starts saving a checkpoint of everything applied so far (after the save under
    /// way, if any, is done). The outputs of the inputs it holds must reach the broker
    /// first: a checkpoint that holds an input whose outputs were lost would make its
    /// replay a skipped duplicate, and the outputs would never be sent.
    async fn start<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        worker: &mut RoomWorker<S>,
    ) -> Result<()> {
        self.settle(worker).await?;
        let (checkpoint, grants) = worker.checkpoint()?;
        // Inputs that changed nothing (a tick that moved no one) need no write: the saved
        // checkpoint already holds what applying them again would make.
        let changed = !(grants.is_empty()
            && self
                .last
                .as_ref()
                .is_some_and(|last| same_but_ticks(last, &checkpoint)));
        let (client, store, room) = (
            self.client.clone(),
            self.store.clone(),
            worker.id().to_owned(),
        );
        let saved = changed.then(|| checkpoint.clone());
        let task = tokio::spawn(async move {
            client.flush().await?;
            if changed {
                store.save_checkpoint(&room, &checkpoint, &grants).await?;
            }
            Ok(())
        });
        self.in_flight = Some(InFlight {
            task,
            saved,
            ack: self.unacked.take(),
        });
        self.unsaved = 0;
        self.unsaved_not_ticks = 0;
        self.started = Instant::now();
        Ok(())
    }

    /// Waits for the save under way, if any, and acks what it holds.
    async fn settle<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        worker: &mut RoomWorker<S>,
    ) -> Result<()> {
        if let Some(mut f) = self.in_flight.take() {
            let result = (&mut f.task).await;
            self.in_flight = Some(f);
            self.finished(worker, result)?;
        }
        Ok(())
    }

    /// Takes in the result of the save under way (from [`saving`]).
    fn finished<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        worker: &mut RoomWorker<S>,
        result: std::result::Result<Result<()>, tokio::task::JoinError>,
    ) -> Result<()> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        result.map_err(|e| Error::Store(format!("a checkpoint save failed: {e}")))??;
        if let Some(checkpoint) = f.saved {
            worker.saved();
            self.last = Some(Checkpoint {
                version: checkpoint.version + 1,
                ..checkpoint
            });
        }
        if let Some(m) = f.ack {
            self.client.ack(&m)?;
        }
        Ok(())
    }

    /// Saves a checkpoint of everything applied and acks it, waiting for both.
    async fn save<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        worker: &mut RoomWorker<S>,
    ) -> Result<()> {
        self.start(worker).await?;
        self.settle(worker).await
    }
}

/// Whether two checkpoints differ at most in their tick numbers. Ticks that changed
/// nothing need no save: run again on the same state after a crash, they change
/// nothing again.
fn same_but_ticks(a: &Checkpoint, b: &Checkpoint) -> bool {
    let inputs = |c: &Checkpoint| {
        c.applied
            .iter()
            .filter(|(k, _)| !k.starts_with("$tick:"))
            .map(|(k, v)| (k.clone(), *v))
            .collect::<Vec<_>>()
    };
    a.seq == b.seq
        && a.version == b.version
        && a.state == b.state
        && a.players == b.players
        && inputs(a) == inputs(b)
}

/// Resolves when the save under way (if any) is done; never, if none is.
async fn saving(
    in_flight: &mut Option<InFlight>,
) -> std::result::Result<Result<()>, tokio::task::JoinError> {
    match in_flight {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}

struct Publisher<'a> {
    client: &'a Client,
    env: &'a WorkerEnv,
    room_id: &'a str,
}

impl Publisher<'_> {
    fn publish(&self, outputs: Vec<Output>) -> Result<()> {
        let names = self.env.admin.names();
        for output in outputs {
            let destination = match &output.to {
                Target::Room => names.topic(self.room_id),
                Target::Player(p) => names.private(self.room_id, p),
            };
            let frame = Frame::new(Command::Send)
                .with_header("destination", destination)
                .with_header("content-type", "application/json")
                .with_body(serde_json::to_vec(&output.body).expect("JSON values serialize"));
            self.client.post(frame)?;
        }
        Ok(())
    }
}
