//! A connection's outbox and its writer: frames queued for the connection, up to a bound,
//! and the task that writes them ([`write_loop`]).
//!
//! The outbox is a queue behind a mutex, which the writer empties whole at each wake: a
//! delivery costs a lock, a push and, if the writer sleeps, a wake; the writer takes a
//! lock per batch, not per frame. (tokio's bounded channel took a semaphore permit for
//! each frame sent and gave it back, under a lock, for each frame received.)

use super::frame::{Frame, Wire};
use super::transport::{Item, ItemSink};
use futures_util::SinkExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What a connection's writer task receives.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to write.
    Frame(Frame),
    /// A frame already in wire form (a broker's MESSAGE).
    Encoded(Wire),
    /// Write everything queued before this, then close the connection.
    Close,
}

/// Why [`Outbox::try_send`] did not queue a frame (which is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The outbox holds its capacity: the connection does not keep up.
    Full,
    /// The writer is gone.
    Closed,
}

/// Frames for one connection's writer, at most `capacity` of them waiting: the sending
/// half of [`outbox`]. Dropping it lets the writer write what is queued, then end.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The writer's half of [`outbox`]. Dropping it drops what is still queued, and refuses
/// whatever is sent after.
#[derive(Debug)]
pub struct OutboxReader {
    shared: Arc<Shared>,
    /// The frames taken at the last wake, in order, not yet handed out.
    batch: VecDeque<Outbound>,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// How many the reader took at its last wake: they count against the capacity until
    /// it comes back for more, so a writer stuck on a full socket holds no more than
    /// `capacity` frames in all.
    taken: usize,
    /// The reader's waker, while it waits for frames.
    waiting: Option<Waker>,
    /// The sender was dropped.
    sender_gone: bool,
    /// The reader was dropped.
    reader_gone: bool,
}

/// An outbox of `capacity` frames (at least one) and its reader.
pub fn outbox(capacity: usize) -> (Outbox, OutboxReader) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        queue: Mutex::default(),
    });
    let reader = OutboxReader {
        shared: shared.clone(),
        batch: VecDeque::new(),
    };
    (Outbox { shared }, reader)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing here panics while holding the lock, but a poisoned queue is still a
        // queue: its fields are each consistent.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Outbox {
    /// Queues `out`, without waiting; refused when the outbox is full or its writer gone.
    pub fn try_send(&self, out: Outbound) -> Result<(), Refused> {
        let mut queue = self.shared.lock();
        if queue.reader_gone {
            return Err(Refused::Closed);
        }
        if queue.items.len() + queue.taken >= self.shared.capacity {
            return Err(Refused::Full);
        }
        queue.items.push_back(out);
        let waiting = queue.waiting.take();
        drop(queue);
        if let Some(waker) = waiting {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.sender_gone = true;
        let waiting = queue.waiting.take();
        drop(queue);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

impl OutboxReader {
    /// The next frame, in the order sent; `None` once the sender is gone and everything
    /// it sent was taken. Cancel-safe: a frame is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        if self.batch.is_empty() {
            self.refill();
        }
        self.batch.pop_front()
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if let Some(out) = self.batch.pop_front() {
            return Poll::Ready(Some(out));
        }
        let mut queue = self.shared.lock();
        if queue.items.is_empty() {
            queue.taken = 0;
            if queue.sender_gone {
                return Poll::Ready(None);
            }
            match &queue.waiting {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => queue.waiting = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut queue.items, &mut self.batch);
        queue.taken = self.batch.len();
        drop(queue);
        Poll::Ready(self.batch.pop_front())
    }

    /// Takes everything queued into `batch` (empty), leaving the batch's old storage for
    /// the sender: no allocation once both have grown.
    fn refill(&mut self) {
        let mut queue = self.shared.lock();
        std::mem::swap(&mut queue.items, &mut self.batch);
        queue.taken = self.batch.len();
    }
}

impl Drop for OutboxReader {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.reader_gone = true;
        let left = std::mem::take(&mut queue.items);
        drop(queue);
        drop(left); // outside the lock: a slow reader's backlog may be thousands of frames
    }
}

/// Writes queued frames to `sink`, batching whatever is queued into one flush, and a
/// heart-beat whenever nothing was written for `heartbeat`.
pub async fn write_loop(
    mut sink: ItemSink,
    rx: &mut OutboxReader,
    heartbeat: Option<std::time::Duration>,
) {
    loop {
        let next = match heartbeat {
            Some(every) => match tokio::time::timeout(every, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    if sink.send(Item::Heartbeat).await.is_err() {
                        return; // a sink that failed must not be closed: it would panic
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let first = match next {
            Some(Outbound::Frame(frame)) => Item::Frame(frame),
            Some(Outbound::Encoded(wire)) => Item::Encoded(wire),
            Some(Outbound::Close) | None => break,
        };
        if sink.feed(first).await.is_err() {
            return;
        }
        let mut closing = false;
        loop {
            let item = match rx.try_recv() {
                Some(Outbound::Frame(frame)) => Item::Frame(frame),
                Some(Outbound::Encoded(wire)) => Item::Encoded(wire),
                Some(Outbound::Close) => {
                    closing = true;
                    break;
                }
                None => break,
            };
            if sink.feed(item).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        if closing {
            break;
        }
    }
    // Only a sink that has not failed is closed: closing one whose write failed polls a
    // finished future again, which panics ("polled MapErr after completion").
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::super::frame::Command;
    use super::*;
    use crate::{Error, Result};
    use futures_util::Sink;
    use std::pin::Pin;
    use std::time::Duration;

    fn send(to: &str) -> Outbound {
        Outbound::Frame(Frame::new(Command::Send).with_header("destination", to))
    }

    fn destination(out: Option<Outbound>) -> String {
        match out {
            Some(Outbound::Frame(f)) => f.header("destination").unwrap_or_default().into(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn frames_come_out_in_order_and_the_bound_counts_what_the_writer_holds() {
        let (tx, mut rx) = outbox(3);
        for d in ["/a", "/b", "/c"] {
            tx.try_send(send(d)).expect("room for three");
        }
        assert_eq!(tx.try_send(send("/d")), Err(Refused::Full));
        assert_eq!(destination(rx.try_recv()), "/a");
        // The writer holds /b and /c from the same wake: still no room.
        assert_eq!(tx.try_send(send("/d")), Err(Refused::Full));
        assert_eq!(destination(rx.try_recv()), "/b");
        assert_eq!(destination(rx.try_recv()), "/c");
        assert!(rx.try_recv().is_none(), "nothing more was queued");
        // Coming back for more gave the three back.
        for d in ["/d", "/e", "/f"] {
            tx.try_send(send(d)).expect("room again");
        }
        assert_eq!(tx.try_send(send("/g")), Err(Refused::Full));
        let got: Vec<_> = (0..3).map(|_| destination(rx.try_recv())).collect();
        assert_eq!(got, ["/d", "/e", "/f"]);
    }

    #[test]
    fn a_zero_capacity_still_takes_one_frame() {
        let (tx, mut rx) = outbox(0);
        tx.try_send(send("/a")).expect("one fits");
        assert_eq!(tx.try_send(send("/b")), Err(Refused::Full));
        assert_eq!(destination(rx.try_recv()), "/a");
    }

    #[tokio::test]
    async fn the_reader_ends_after_the_last_frame_once_the_sender_is_gone() {
        let (tx, mut rx) = outbox(8);
        tx.try_send(send("/a")).unwrap();
        tx.try_send(Outbound::Close).unwrap();
        drop(tx);
        assert_eq!(destination(rx.recv().await), "/a");
        assert!(matches!(rx.recv().await, Some(Outbound::Close)));
        assert!(rx.recv().await.is_none());
        assert!(rx.recv().await.is_none(), "and stays ended");
    }

    #[tokio::test]
    async fn a_sleeping_reader_is_woken_by_a_frame_and_by_the_sender_going() {
        let (tx, mut rx) = outbox(8);
        let reader = tokio::spawn(async move {
            let first = destination(rx.recv().await);
            let end = rx.recv().await;
            (first, end.is_none())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(send("/late")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let (first, ended) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert_eq!(first, "/late");
        assert!(ended);
    }

    #[tokio::test]
    async fn a_timed_out_wait_loses_nothing() {
        let (tx, mut rx) = outbox(8);
        let waited = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(waited.is_err(), "nothing was sent");
        tx.try_send(send("/a")).unwrap();
        assert_eq!(destination(rx.recv().await), "/a");
    }

    #[test]
    fn sending_to_a_dropped_reader_is_refused_and_its_backlog_is_freed() {
        let (tx, rx) = outbox(8);
        let body = bytes::Bytes::from(vec![7u8; 1024]);
        let frame = Frame::new(Command::Send).with_body(body.clone());
        tx.try_send(Outbound::Frame(frame)).unwrap();
        assert!(!body.is_unique(), "the queued frame shares the body");
        drop(rx);
        assert!(body.is_unique(), "the backlog went with the reader");
        assert_eq!(tx.try_send(send("/a")), Err(Refused::Closed));
    }

    #[test]
    fn frames_sent_from_another_thread_all_arrive_in_order() {
        let (tx, mut rx) = outbox(64);
        let sender = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < 10_000 {
                match tx.try_send(send(&sent.to_string())) {
                    Ok(()) => sent += 1,
                    Err(Refused::Full) => std::thread::yield_now(),
                    Err(Refused::Closed) => panic!("the reader is still here"),
                }
            }
        });
        let mut next = 0;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            while let Some(out) = rx.recv().await {
                assert_eq!(destination(Some(out)), next.to_string());
                next += 1;
            }
        });
        sender.join().unwrap();
        assert_eq!(next, 10_000);
    }

    /// A sink whose flush fails once `fail_after` items were fed, and which panics if it
    /// is used again after failing, as futures' `With` and `MapErr` do.
    struct Failing {
        fed: usize,
        fail_after: usize,
        failed: bool,
    }

    impl Sink<Item> for Failing {
        type Error = Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<()>> {
            assert!(!self.failed, "used after it failed");
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, _: Item) -> Result<()> {
            self.fed += 1;
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<()>> {
            assert!(!self.failed, "flushed after it failed");
            if self.fed >= self.fail_after {
                self.failed = true;
                return Poll::Ready(Err(Error::Closed("peer gone".into())));
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<()>> {
            assert!(!self.failed, "closed after it failed");
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_writer_whose_peer_went_away_stops_without_touching_the_failed_sink() {
        for with_heartbeat in [None, Some(std::time::Duration::from_millis(5))] {
            let sink: ItemSink = Box::pin(Failing {
                fed: 0,
                fail_after: 3,
                failed: false,
            });
            let (tx, mut rx) = outbox(8);
            let writer =
                tokio::spawn(async move { write_loop(sink, &mut rx, with_heartbeat).await });
            for _ in 0..5 {
                let frame = Frame::new(Command::Send).with_header("destination", "/queue/a");
                if tx.try_send(Outbound::Frame(frame)).is_err() {
                    break; // the writer is gone: as it should be once its sink failed
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            drop(tx);
            writer.await.expect("the writer ends without panicking");
        }
    }
}
