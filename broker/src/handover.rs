//! Frames handed over instead of waited for (flat combining). A socket's connection that
//! finds the broker's lock taken leaves its frame here and goes on with its other work;
//! whoever holds the lock handles the frames left, in the order they were left, when it
//! takes the lock and again before it lets go. So no thread sleeps on the lock for a
//! socket's frame: with two threads and one lock, that sleep and the wake after it were
//! most of the broker's futex calls and context switches.
//!
//! Every way into the broker's state goes through [`Locked`], so no frame is left
//! behind. A frame left after the holder's last look is seen by the holder once it has
//! let go (it looks again, and takes the lock back if it is free), by the connection
//! that left it (which tries the lock once, after), or by whoever holds the lock then.
//! A connection's own frames keep their order: each taking of the lock handles what
//! was left before anything else.

use super::state::{SessionId, State};
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{fence, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use stomp::Frame;

/// Frames that may wait here; past it, a connection waits for the lock like any caller.
const MAX_LEFT: usize = 1024;

/// Handles a frame a connection left: the session's own code, given at construction.
pub(crate) type HandleLeft = fn(&mut State, SessionId, Frame);

/// The frames left for the lock's holder.
pub(crate) struct Handover {
    frames: Mutex<VecDeque<(SessionId, Frame)>>,
    /// How many frames wait: looked at without the queue's lock.
    left: AtomicUsize,
    handle: HandleLeft,
}

impl Handover {
    /// A handover whose frames `handle` handles.
    pub(crate) fn new(handle: HandleLeft) -> Handover {
        Handover {
            frames: Mutex::new(VecDeque::new()),
            left: AtomicUsize::new(0),
            handle,
        }
    }

    /// Leaves `frame` of session `id` for the lock's holder, or gives it back when too
    /// many wait already. The caller then tries the lock once ([`Locked::try_lock`]).
    pub(crate) fn leave(&self, id: SessionId, frame: Frame) -> Result<(), Frame> {
        if self.left.load(SeqCst) >= MAX_LEFT {
            return Err(frame);
        }
        self.queue().push_back((id, frame));
        self.left.fetch_add(1, SeqCst);
        fence(SeqCst);
        Ok(())
    }

    /// Handles every frame left, in order, with the state locked.
    fn drain(&self, state: &mut State) {
        while self.left.load(SeqCst) > 0 {
            let Some((id, frame)) = self.queue().pop_front() else {
                // Counted before it was pushed: its leaver tries the lock after.
                return;
            };
            self.left.fetch_sub(1, SeqCst);
            (self.handle)(state, id, frame);
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<(SessionId, Frame)>> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The broker's state, locked: the frames left are handled when it is taken and before
/// it is let go.
pub(crate) struct Locked<'a> {
    guard: Option<MutexGuard<'a, State>>,
    mutex: &'a Mutex<State>,
    handover: &'a Handover,
}

impl<'a> Locked<'a> {
    /// Waits for the lock.
    pub(crate) fn lock(mutex: &'a Mutex<State>, handover: &'a Handover) -> Locked<'a> {
        // A panic while holding the lock leaves state that is still consistent enough to
        // serve: every operation finishes its bookkeeping before it can panic.
        let guard = mutex.lock().unwrap_or_else(PoisonError::into_inner);
        Locked::taken(guard, mutex, handover)
    }

    /// Takes the lock if it is free.
    pub(crate) fn try_lock(mutex: &'a Mutex<State>, handover: &'a Handover) -> Option<Locked<'a>> {
        let guard = match mutex.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(Locked::taken(guard, mutex, handover))
    }

    fn taken(
        mut guard: MutexGuard<'a, State>,
        mutex: &'a Mutex<State>,
        handover: &'a Handover,
    ) -> Locked<'a> {
        handover.drain(&mut guard);
        Locked {
            guard: Some(guard),
            mutex,
            handover,
        }
    }
}

impl Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if std::thread::panicking() {
            // Unwinding from a panic under the lock: the frames left wait for the next
            // holder (handling them now could panic again, and abort).
            return;
        }
        self.handover.drain(&mut guard);
        drop(guard);
        // A frame left after the look above, while the lock was still held: its leaver
        // may have found the lock taken. Take it back if it is free; if it is not, its
        // holder handles the frame.
        loop {
            fence(SeqCst);
            if self.handover.left.load(SeqCst) == 0 {
                return;
            }
            let mut guard = match self.mutex.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            self.handover.drain(&mut guard);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Broker, BrokerConfig};
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    use stomp::{
        Client, Command, ConnectOptions, Frame, SubscribeOptions, Subscription, Transport,
    };

    /// A connection the broker serves as a socket's (its frames go out encoded, and one
    /// that finds the lock taken is left for its holder), over an in-memory pair.
    async fn socket(broker: &Broker, login: &str) -> Client {
        let (client, mut server) = Transport::pair(1024);
        server.in_memory = false;
        tokio::spawn(crate::session::run(broker.clone(), server, None));
        Client::handshake(client, ConnectOptions::login(login, ""))
            .await
            .unwrap()
    }

    /// A broker, a reader of `/queue/q` (its connection and subscription) and two
    /// writers.
    async fn setup() -> (Broker, Client, Subscription, Client, Client) {
        let broker = Broker::new(BrokerConfig::default());
        let reader = socket(&broker, "reader").await;
        let sub = reader
            .subscribe("/queue/q", SubscribeOptions::default())
            .await
            .unwrap();
        let one = socket(&broker, "one").await;
        let two = socket(&broker, "two").await;
        (broker, reader, sub, one, two)
    }

    /// Lets the connections' tasks run.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Waits (5 s at most) until `n` frames are left, then a little longer, and checks
    /// that no more came.
    async fn until_left(broker: &Broker, n: usize) {
        let start = std::time::Instant::now();
        while broker.handover.left.load(SeqCst) < n && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        settle().await;
        assert_eq!(broker.handover.left.load(SeqCst), n);
    }

    async fn bodies(sub: &mut Subscription) -> Vec<String> {
        let mut bodies = Vec::new();
        while let Ok(m) = sub.recv_timeout(Duration::from_millis(300)).await {
            bodies.push(String::from_utf8_lossy(m.body()).into_owned());
        }
        bodies
    }

    // Two threads: a connection with a frame left already waits for the lock, as any
    // caller does, and blocks its thread while this test holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_that_find_the_lock_taken_are_handled_first_and_one_a_connection() {
        let (broker, _reader, mut sub, one, two) = setup().await;
        let held = broker.lock();
        for body in ["a1", "a2", "a3"] {
            one.send_nowait("/queue/q", body).unwrap();
        }
        // a1 is left; a2 waits for the lock behind it.
        until_left(&broker, 1).await;
        let receipted = {
            let two = two.clone();
            tokio::spawn(async move { two.send("/queue/q", "b1").await })
        };
        until_left(&broker, 2).await;
        assert!(sub.recv_timeout(Duration::from_millis(20)).await.is_err());
        drop(held);
        // The frames left go first, in order; the flood's next frame waited its turn.
        assert_eq!(bodies(&mut sub).await, ["a1", "b1", "a2", "a3"]);
        receipted.await.unwrap().expect("the receipt, once handled");
        assert_eq!(broker.handover.left.load(SeqCst), 0);
        assert!(one.closed().is_none() && two.closed().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_frame_left_for_the_holder_ends_its_connection_and_what_follows_it() {
        let (broker, reader, mut sub, one, two) = setup().await;
        let held = broker.lock();
        let refused = {
            let one = one.clone();
            let frame = Frame::new(Command::Send)
                .with_header("destination", "nowhere")
                .with_body("bad");
            tokio::spawn(async move { one.request(frame).await })
        };
        until_left(&broker, 1).await;
        one.send_nowait("/queue/q", "after").unwrap();
        two.send_nowait("/queue/q", "other").unwrap();
        until_left(&broker, 2).await;
        drop(held);
        let error = refused.await.unwrap().expect_err("refused");
        assert!(error.to_string().contains("nowhere"), "{error}");
        assert_eq!(
            bodies(&mut sub).await,
            ["other"],
            "the frame after the refused one is dropped"
        );
        assert!(one.closed().is_some(), "the connection is closed");
        assert!(two.closed().is_none() && reader.closed().is_none());
    }
}
