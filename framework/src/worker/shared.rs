//! A room's core as its worker's task shares it with the broker of this process: the
//! [`RoomWorker`] and what it applied since the last checkpoint, behind the room's own
//! lock.
//!
//! On the embedded broker a room's inputs are applied where the broker delivers them
//! (the core is the inbox subscription's [`InlineConsumer`]): under the broker's lock,
//! with no hop to the worker's task, and the outputs are published in the same call.
//! The task keeps the rest: its ticks, checkpoints and the acks after them, listing
//! changes, the grace of dropped players. Everything else is as it is for a worker that
//! receives its inputs: an input taken stays unacked until a checkpoint holds it, and goes
//! back in line if the worker's connection closes first.
//!
//! The two paths never apply out of order. The broker delivers the inbox in order; the
//! core declines a message (it goes to the task as a MESSAGE frame) while the room is
//! not yet restored, or while a declined message before it is still with the task. The
//! task publishes the outputs of what it applies at once, by a method call, before it
//! counts the frame done: so a message taken after it has its outputs after them.
//!
//! The broker waits for the room's lock when the task holds it. The task holds it only
//! for short steps (a frame applied, a checkpoint's snapshot, a few counters read), and
//! never calls the broker while it does, so the wait is short and cannot deadlock.
//! Declining instead was tried: under a flood, a room that declined once stayed on the
//! slower path through the task, since every input behind a frame is declined too, and
//! a bystander's chats in that room took up to 230-290 ms instead of 30-70.
//!
//! Everywhere else (RabbitMQ, Lambda, a room with a batch window) the task alone uses the
//! core, and its lock is never contended.

use super::link::Ack;
use super::room_worker::{InboxMessage, RoomWorker};
use crate::broker::{InlineConsumer, Offered, Publish};
use crate::names::{Names, LOBBY_USER};
use crate::room::{Listing, Output, Target};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

/// A room's core, shared by its worker's task and, on the embedded broker, the broker's
/// delivery of its inbox.
pub(super) struct Shared<S> {
    inner: Mutex<Inner<S>>,
    /// Declined messages the task has not finished with: while any is out, the next are
    /// declined too.
    frames: AtomicU32,
    /// Wakes the task when an input applied inline left it something to do.
    wake: Notify,
    room_id: String,
    names: Names,
}

/// The room and its bookkeeping since the last checkpoint.
pub(super) struct Inner<S> {
    /// The room: `None` until the worker restores it from its checkpoint.
    worker: Option<RoomWorker<S>>,
    /// Whether the broker may apply inputs: from the restore until the worker finishes.
    open: bool,
    /// The latest input applied and not yet in a checkpoint; acking it acks all before it.
    pub(super) unacked: Option<Ack>,
    /// Inputs applied since the last checkpoint was started.
    pub(super) unsaved: u32,
    /// Of `unsaved`, those that are not the worker's own ticks: player inputs, joins and
    /// leaves, which checkpoint at the full pace.
    pub(super) unsaved_not_ticks: u32,
    /// The first input since the last checkpoint came, and the task has not seen it: the
    /// checkpoint period starts again from it.
    pub(super) first_unsaved: bool,
    /// A lobby message came (a join, a leave, presence), and the task has not seen it.
    pub(super) control: bool,
    /// Changes to the room's listing the task has yet to write to the store.
    pub(super) listing: Vec<Listing>,
    /// The last input (ticks aside), from which idleness counts.
    pub(super) last_input: Instant,
    /// An input panicked where the broker delivered it: the task fails the worker.
    pub(super) failed: Option<String>,
}

/// Inputs a room worker may hold unacked; bounds what a crash replays.
pub(super) const PREFETCH: u16 = 1024;

impl<S> Inner<S> {
    /// The room, once restored.
    ///
    /// # Panics
    ///
    /// Before [`Shared::install`]: the task serves a room only after it installed it.
    pub(super) fn worker(&mut self) -> &mut RoomWorker<S> {
        self.worker
            .as_mut()
            .expect("a room's core is used by its task only once restored")
    }
}

impl<S: Serialize + DeserializeOwned + 'static> Inner<S> {
    /// Whether the task should look at the core now: it has something to carry out, or
    /// the room must checkpoint early rather than stall on its prefetch.
    fn wants_task(&self) -> bool {
        self.first_unsaved
            || self.control
            || !self.listing.is_empty()
            || self.failed.is_some()
            || self.unsaved >= u32::from(PREFETCH) / 2
            || self.worker.as_ref().is_some_and(|w| w.ended().is_some())
    }

    /// Applies one inbox message and returns its outputs; the caller then records its
    /// ack with [`Inner::applied`].
    pub(super) fn apply(&mut self, input: InboxMessage<'_>) -> Vec<Output> {
        let tick = !input.keeps_alive();
        if !tick {
            self.last_input = Instant::now();
        }
        if !input.user.starts_with('$') {
            crate::metrics::INPUTS.inc();
        }
        self.control |= input.user == LOBBY_USER;
        let timer = crate::metrics::HANDLER_SECONDS.start_timer();
        let worker = self.worker();
        let outputs = worker.handle(input);
        timer.observe_duration();
        let listing = worker.take_listing();
        self.listing.extend(listing);
        crate::metrics::OUTPUTS.inc_by(outputs.len() as u64);
        outputs
    }

    /// Records that the input `ack` names was applied (a tick, or not).
    pub(super) fn applied(&mut self, ack: Ack, tick: bool) {
        self.unacked = Some(ack);
        self.unsaved += 1;
        if !tick {
            self.unsaved_not_ticks += 1;
        }
        if self.unsaved == 1 {
            self.first_unsaved = true;
        }
    }
}

impl<S> Shared<S> {
    /// The core of room `room_id`, not yet restored.
    pub(super) fn new(room_id: &str, names: &Names) -> Shared<S> {
        Shared {
            inner: Mutex::new(Inner {
                worker: None,
                open: false,
                unacked: None,
                unsaved: 0,
                unsaved_not_ticks: 0,
                first_unsaved: false,
                control: false,
                listing: Vec::new(),
                last_input: Instant::now(),
                failed: None,
            }),
            frames: AtomicU32::new(0),
            wake: Notify::new(),
            room_id: room_id.to_owned(),
            names: names.clone(),
        }
    }

    /// The room and its bookkeeping, for the task.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // An input that panicked under the lock was caught where the broker applied it,
        // or failed the task: either way the worker fails, and saves nothing more.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the restored room in place: from now on the broker may apply its inputs.
    pub(super) fn install(&self, worker: RoomWorker<S>) {
        let mut inner = self.lock();
        inner.worker = Some(worker);
        inner.open = true;
        inner.last_input = Instant::now();
    }

    /// The worker finishes: the broker applies no more inputs, and those it delivers
    /// stay unacked for the room's next worker, as frames the task does not read.
    pub(super) fn close(&self) {
        self.lock().open = false;
    }

    /// The task has applied a declined message and published its outputs.
    pub(super) fn frame_done(&self) {
        // Saturating: a worker whose core was never offered to the broker counts none.
        let _ = self
            .frames
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Resolves when an input applied inline left the task something to do.
    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// An inbox message as the room reads it: its sender (by the broker's `user-id`, or
    /// the routing key in its `destination`), its body, and when it was queued.
    pub(super) fn input<'a>(
        &self,
        user_id: Option<&'a str>,
        destination: Option<&'a str>,
        timestamp: Option<&str>,
        body: &'a [u8],
    ) -> InboxMessage<'a> {
        InboxMessage {
            user: self
                .names
                .sender(&self.room_id, user_id, destination)
                .unwrap_or_default(),
            body,
            at_ms: self.names.queued_at(timestamp),
        }
    }

    /// Where an output goes.
    pub(super) fn destination(&self, to: &Target) -> String {
        match to {
            Target::Room => self.names.topic(&self.room_id),
            Target::Player(p) => self.names.private(&self.room_id, p),
        }
    }
}

impl<S: Serialize + DeserializeOwned + 'static> Shared<S> {
    /// Applies `message` where the broker delivers it, if the room can take it now.
    fn try_take(&self, message: &Offered<'_>) -> Option<Vec<Publish>> {
        if self.frames.load(Ordering::Acquire) > 0 {
            return None;
        }
        // Poisoned: the task failed applying an input, and the worker fails.
        let mut inner = self.inner.lock().ok()?;
        let tag = message.tag?;
        let ready = inner.worker.as_ref().is_some_and(|w| w.ended().is_none());
        if !ready || !inner.open || inner.failed.is_some() {
            return None;
        }
        let input = self.input(
            message.header("user-id"),
            message.header("destination"),
            message.header("timestamp"),
            message.body,
        );
        let tick = !input.keeps_alive();
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.apply(input)));
        let outputs = match applied {
            Ok(outputs) => outputs,
            Err(panic) => {
                let why = crate::msg::panic_message(&*panic).unwrap_or_else(|| "a panic".into());
                inner.failed = Some(why);
                self.wake.notify_one();
                return None;
            }
        };
        inner.applied(Ack::Inline(tag), tick);
        if inner.wants_task() {
            self.wake.notify_one();
        }
        drop(inner);
        Some(
            outputs
                .into_iter()
                .map(|output| Publish {
                    destination: self.destination(&output.to),
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: output.body.into_bytes().into(),
                })
                .collect(),
        )
    }
}

impl<S: Serialize + DeserializeOwned + Send + 'static> InlineConsumer for Shared<S> {
    fn take(&self, message: Offered<'_>) -> Option<Vec<Publish>> {
        let taken = self.try_take(&message);
        if taken.is_none() {
            // It goes to the task as a frame; until the task is done with it, the next
            // ones follow it there.
            self.frames.fetch_add(1, Ordering::AcqRel);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Ctx, Msg, RoomInfo};
    use crate::names::WORKER_USER;
    use crate::worker::room_worker::Control;
    use bytes::Bytes;
    use futures_util::FutureExt;
    use serde_json::Value;

    /// A room that adds up its players' `add` inputs and broadcasts the sum.
    fn counter() -> RoomWorker<i64> {
        let msg = Msg::new(|| 0).route("type=add", |n: &mut i64, ctx: &mut Ctx, v: Value| {
            *n += v["by"].as_i64().unwrap_or(0);
            ctx.broadcast(&serde_json::json!({ "type": "count", "n": *n }));
        });
        RoomWorker::new(RoomInfo::new("r", "r"), msg)
    }

    /// A message as the broker keeps it: the sender's `user-id`, the queue's time.
    struct Message {
        headers: Vec<(String, String)>,
        body: Bytes,
    }

    impl Message {
        fn from(user: &str, body: String) -> Message {
            let headers = vec![
                ("user-id".to_owned(), user.to_owned()),
                ("timestamp".to_owned(), "1000".to_owned()),
            ];
            Message {
                headers,
                body: Bytes::from(body),
            }
        }

        fn join(player: &str) -> Message {
            let join = Control::Join {
                player: player.into(),
                arrival: None,
            };
            Message::from(LOBBY_USER, join.to_json())
        }

        fn add(player: &str, seq: u64, by: i64) -> Message {
            let body = serde_json::json!({ "type": "add", "seq": seq, "by": by });
            Message::from(player, body.to_string())
        }

        fn offered(&self, tag: u64) -> Offered<'_> {
            Offered {
                tag: Some(tag),
                headers: &self.headers,
                body: &self.body,
                redelivered: false,
            }
        }
    }

    /// What the task does with a frame: applies it and says it is done.
    fn task_applies(shared: &Shared<i64>, message: &Message, tag: u64) -> Vec<Output> {
        let input = InboxMessage {
            user: message.headers[0].1.as_str(),
            body: &message.body,
            at_ms: Some(1000),
        };
        let outputs = {
            let mut inner = shared.lock();
            let outputs = inner.apply(input);
            inner.applied(Ack::Inline(tag), false);
            outputs
        };
        shared.frame_done();
        outputs
    }

    fn unacked(shared: &Shared<i64>) -> Option<u64> {
        match shared.lock().unacked {
            Some(Ack::Inline(tag)) => Some(tag),
            _ => None,
        }
    }

    #[test]
    fn the_room_takes_inputs_once_restored_and_done_with_the_frames_declined_before() {
        let shared = Shared::new("r", &Names::embedded());
        let join = Message::join("ann");
        assert!(shared.take(join.offered(1)).is_none(), "not restored yet");
        shared.install(counter());
        let first = Message::add("ann", 1, 1);
        assert!(
            shared.take(first.offered(2)).is_none(),
            "a frame declined before it is still with the task"
        );
        task_applies(&shared, &join, 1);
        let second = Message::add("ann", 2, 2);
        assert!(
            shared.take(second.offered(3)).is_none(),
            "one frame is left"
        );
        let outputs = task_applies(&shared, &first, 2);
        assert_eq!(outputs.len(), 1);
        task_applies(&shared, &second, 3);
        // Every frame is done: the next input is taken, and its outputs come back to be
        // published as the worker's.
        let third = Message::add("ann", 3, 3);
        let published = shared.take(third.offered(4)).expect("taken");
        let [out] = published.try_into().unwrap();
        assert_eq!(out.destination, "/topic/room.r");
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            (body["type"].as_str(), body["n"].as_i64()),
            (Some("count"), Some(6))
        );
        assert_eq!(body["input_seq"], 3);
        assert_eq!(unacked(&shared), Some(4));
        let inner = shared.lock();
        assert_eq!((inner.unsaved, inner.unsaved_not_ticks), (4, 4));
    }

    #[test]
    fn the_broker_waits_for_a_room_its_task_holds_and_then_takes_the_input() {
        let shared = std::sync::Arc::new(Shared::new("r", &Names::embedded()));
        shared.install(counter());
        let join = Message::join("ann");
        assert!(shared.take(join.offered(1)).is_some());
        let held = shared.lock();
        let broker = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let add = Message::add("ann", 1, 1);
                shared.take(add.offered(2)).is_some()
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!broker.is_finished(), "it waits for the task");
        drop(held);
        assert!(broker.join().unwrap(), "then takes the input inline");
        assert_eq!(shared.frames.load(Ordering::Acquire), 0, "no frame");
        assert_eq!(shared.lock().worker().room().state(), &1);
    }

    #[test]
    fn the_task_is_woken_only_when_an_input_leaves_it_something_to_do() {
        let shared = Shared::new("r", &Names::embedded());
        shared.install(counter());
        // A join: the task watches dropped players, and the checkpoint period starts.
        let join = Message::join("ann");
        assert!(shared.take(join.offered(1)).is_some());
        assert!(shared.woken().now_or_never().is_some());
        {
            let mut inner = shared.lock();
            assert!(inner.control && inner.first_unsaved);
            (inner.control, inner.first_unsaved) = (false, false);
        }
        // A plain input after it: nothing for the task.
        let add = Message::add("ann", 1, 1);
        assert!(shared.take(add.offered(2)).is_some());
        assert!(shared.woken().now_or_never().is_none());
        // A tick is applied too, and counted as one.
        let tick = Message::from(WORKER_USER, super::super::room_worker::TICK.to_owned());
        assert!(shared.take(tick.offered(3)).is_some());
        let inner = shared.lock();
        assert_eq!((inner.unsaved, inner.unsaved_not_ticks), (3, 2));
    }

    #[test]
    fn a_finishing_or_ended_room_takes_nothing_more() {
        let shared = Shared::new("r", &Names::embedded());
        shared.install(counter());
        shared.close();
        let join = Message::join("ann");
        assert!(shared.take(join.offered(1)).is_none());
        let shared = Shared::new("r", &Names::embedded());
        shared.install(counter());
        shared.lock().worker().end("done");
        assert!(shared.take(join.offered(1)).is_none());
        assert_eq!(unacked(&shared), None);
    }
}
