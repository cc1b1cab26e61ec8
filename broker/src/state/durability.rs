//! What outlives the process. Messages to named queues are written to the journal
//! before anyone sees them, and settled in it once acked; reopening the journal puts
//! what was not settled back in line. With a group-committed journal (`--fsync`), a
//! message is neither delivered nor receipted until a flush has it on the disk: the
//! flusher thread asks [`State::to_sync`], flushes off the lock, then calls
//! [`State::synced`].

use super::destination::journaled;
use super::{Queued, SessionId, State, Stored};
use crate::journal::Journal;
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// What a group-committed journal holds back until a flush puts it on the disk.
pub(super) struct Durability {
    /// The journal is on the disk up to this lsn. Messages after it are neither
    /// delivered nor receipted yet (`u64::MAX` when nothing waits for the disk).
    synced: u64,
    /// Receipts to send once `synced` reaches their lsn, in lsn order.
    receipts: VecDeque<(u64, SessionId, String)>,
    /// Queues holding messages that wait for the disk.
    queues: HashSet<String>,
    /// The last lsn written by the frame being handled.
    unsynced_in_call: Option<u64>,
    /// Tells the flusher there is something to flush.
    wake: Arc<SyncSignal>,
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

impl Durability {
    /// A new frame is being handled: it has written nothing yet.
    pub(super) fn clear_call(&mut self) {
        self.unsynced_in_call = None;
    }

    /// Whether the message numbered `lsn` may be delivered: it is on the disk, or
    /// nothing waits for the disk.
    pub(super) fn on_disk(&self, lsn: u64) -> bool {
        lsn <= self.synced
    }
}

/// A flag and a condition variable: the flusher thread sleeps until there is work.
#[derive(Debug, Default)]
pub(crate) struct SyncSignal {
    dirty: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl SyncSignal {
    /// There is something to flush. Only the first call after the flusher took its work
    /// wakes it: the later ones find the flag set, and the flusher sees it before it
    /// waits again. (A condition variable's `notify_one` is a system call even when
    /// nobody waits, and this runs for every message to a journaled queue.)
    pub(crate) fn notify(&self) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if !*dirty {
            *dirty = true;
            self.cv.notify_one();
        }
    }

    /// Whether there is work the flusher has not taken yet.
    pub(crate) fn pending(&self) -> bool {
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for work; returns whether there is some.
    pub(crate) fn wait(&self, timeout: std::time::Duration) -> bool {
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

impl State {
    /// Message `lsn` was just put in `queue`: with a group-committed journal, it (and
    /// the frame's RECEIPT) waits for the flush, which is asked for.
    pub(super) fn wait_for_disk(&mut self, queue: &str, lsn: u64) {
        if !self.journal.as_ref().is_some_and(Journal::group_commit) || !self.waits_for_disk(queue)
        {
            return;
        }
        let d = &mut self.durability;
        d.unsynced_in_call = Some(lsn);
        if !d.queues.contains(queue) {
            d.queues.insert(queue.to_owned());
        }
        d.wake.notify();
    }

    /// The last lsn the frame just handled wrote to a journal that is not yet on the
    /// disk: its RECEIPT must wait for it ([`State::hold_receipt`]).
    pub(crate) fn take_unsynced(&mut self) -> Option<u64> {
        self.durability.unsynced_in_call.take()
    }

    /// Sends session `id` its RECEIPT once the journal is on the disk up to `lsn`.
    pub(crate) fn hold_receipt(&mut self, lsn: u64, id: SessionId, receipt: String) {
        if self.durability.on_disk(lsn) {
            self.send_receipt(id, &receipt);
        } else {
            self.durability.receipts.push_back((lsn, id, receipt));
        }
    }

    /// Whether session `id` has receipts waiting for the journal's flush.
    pub(crate) fn holds_receipts_for(&self, id: SessionId) -> bool {
        self.durability.receipts.iter().any(|(_, s, _)| *s == id)
    }

    /// What a flush to the disk would make durable now (`None` without a group-committed
    /// journal, or when everything written is on the disk already).
    pub(crate) fn to_sync(&self) -> Option<(std::fs::File, u64)> {
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
    pub(crate) fn durability_signal(&self) -> Arc<SyncSignal> {
        self.durability.wake.clone()
    }

    /// The journal is on the disk up to `lsn`: what waited for it goes out.
    pub(crate) fn synced(&mut self, lsn: u64) {
        self.stats.journal_flushes += 1;
        let d = &mut self.durability;
        d.synced = d.synced.max(lsn);
        let mut ready = Vec::new();
        while d.receipts.front().is_some_and(|(l, _, _)| *l <= d.synced) {
            ready.push(d.receipts.pop_front().expect("checked"));
        }
        let queues: Vec<String> = d.queues.drain().collect();
        for (_, id, receipt) in ready {
            self.send_receipt(id, &receipt);
        }
        for queue in queues {
            self.deliver_ready(&queue);
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

    /// Journals that messages left their named queues for good, and compacts the
    /// journal when it has grown to several times what it keeps.
    pub(super) fn settle(&mut self, lsns: &[u64]) {
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
    pub(crate) fn open_journal(
        &mut self,
        path: &std::path::Path,
        fsync: bool,
    ) -> std::io::Result<usize> {
        let (journal, kept) = Journal::open(path, fsync)?;
        let n = kept.len();
        for k in kept {
            self.next_seq = self.next_seq.max(k.lsn + 1);
            let msg = Arc::new(Stored {
                seq: k.lsn,
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

    /// Messages in named queues (`/queue/...`), ready or unacked, in queue order: what a
    /// graceful shutdown must keep.
    pub(crate) fn undelivered(&self) -> Vec<Undelivered> {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use crate::QueueOptions;
    use stomp::Command;

    #[test]
    fn the_flusher_is_woken_once_for_all_it_has_not_taken_and_told_of_nothing_after() {
        let signal = super::SyncSignal::default();
        assert!(!signal.pending());
        signal.notify();
        signal.notify();
        assert!(signal.pending());
        let short = std::time::Duration::from_millis(10);
        assert!(signal.wait(short), "work notified before the wait is seen");
        assert!(!signal.pending());
        assert!(
            !signal.wait(short),
            "two notifications are one round of work"
        );
        signal.notify();
        assert!(signal.wait(short));
    }

    /// A journal file of its own under the temporary directory, removed when dropped.
    struct TempJournal(std::path::PathBuf);

    impl TempJournal {
        fn new(name: &str) -> TempJournal {
            let path = std::env::temp_dir().join(format!(
                "gsl-state-{name}-{}-{:?}.journal",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            TempJournal(path)
        }
    }

    impl Drop for TempJournal {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn with_group_commit_nothing_is_delivered_or_receipted_before_the_flush() {
        let file = TempJournal::new("group");
        let mut h = Harness::new();
        assert_eq!(h.state.open_journal(&file.0, true).unwrap(), 0);
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client", 0).unwrap();
        h.send(bob, "/queue/q", "1").unwrap();
        let lsn = h
            .state
            .take_unsynced()
            .expect("the SEND waits for the disk");
        h.state.hold_receipt(lsn, bob, "r1".into());
        assert!(h.state.holds_receipts_for(bob));
        assert!(h.bodies(ann).is_empty(), "not delivered before the flush");
        assert!(h.frames(bob).is_empty(), "not receipted before the flush");

        let (_file, upto) = h.state.to_sync().expect("something to flush");
        assert_eq!(upto, lsn);
        h.state.synced(upto);
        assert_eq!(h.bodies(ann), ["1"]);
        let receipts = h.frames(bob);
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].command, Command::Receipt);
        assert_eq!(receipts[0].header("receipt-id"), Some("r1"));
        assert!(!h.state.holds_receipts_for(bob));
        assert!(h.state.to_sync().is_none(), "nothing left to flush");
    }

    #[test]
    fn a_queue_declared_without_fsync_does_not_wait_for_a_group_commit() {
        let file = TempJournal::new("per-queue");
        let mut h = Harness::new();
        h.state.open_journal(&file.0, true).unwrap();
        let no_wait = QueueOptions {
            fsync: Some(false),
            ..QueueOptions::default()
        };
        h.state.declare_queue("/queue/fast", no_wait);
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/fast", "f", "client", 0).unwrap();
        h.subscribe(ann, "/queue/safe", "s", "client", 0).unwrap();
        h.send(bob, "/queue/fast", "now").unwrap();
        assert_eq!(h.state.take_unsynced(), None, "its receipt need not wait");
        assert_eq!(h.bodies(ann), ["now"], "delivered before any flush");
        h.send(bob, "/queue/safe", "later").unwrap();
        assert!(h.state.take_unsynced().is_some(), "the other queue waits");
        assert!(h.bodies(ann).is_empty());
        let (_file, upto) = h.state.to_sync().expect("something to flush");
        h.state.synced(upto);
        assert_eq!(h.bodies(ann), ["later"]);
    }

    #[test]
    fn without_group_commit_a_receipt_goes_at_once() {
        let file = TempJournal::new("plain");
        let mut h = Harness::new();
        h.state.open_journal(&file.0, false).unwrap();
        let bob = h.connect("bob");
        h.send(bob, "/queue/q", "1").unwrap();
        assert_eq!(h.state.take_unsynced(), None);
        assert!(h.state.to_sync().is_none());
    }

    #[test]
    fn a_reopened_journal_gives_back_what_was_not_acked_in_order_as_redelivered() {
        let file = TempJournal::new("reopen");
        {
            let mut h = Harness::new();
            h.state.open_journal(&file.0, false).unwrap();
            let (ann, bob) = (h.connect("ann"), h.connect("bob"));
            h.subscribe(ann, "/queue/q", "s", "client-individual", 0)
                .unwrap();
            h.send_all(bob, "/queue/q", &["1", "2", "3"]);
            h.send(bob, "/topic/t", "live only").unwrap();
            let got = h.messages(ann);
            h.ack(ann, &got[1]).unwrap();
        }
        let mut h = Harness::new();
        assert_eq!(h.state.open_journal(&file.0, false).unwrap(), 2);
        let ann = h.connect("ann");
        h.subscribe(ann, "/queue/q", "s", "auto", 0).unwrap();
        let again = h.messages(ann);
        let bodies: Vec<&[u8]> = again.iter().map(|m| &m.body[..]).collect();
        assert_eq!(bodies, [b"1", b"3"]);
        assert!(again
            .iter()
            .all(|m| m.header("redelivered") == Some("true")));
        // Later messages are numbered after the kept ones.
        h.send(ann, "/queue/q", "4").unwrap();
        assert_eq!(h.bodies(ann), ["4"]);
    }

    #[test]
    fn undelivered_lists_ready_and_unacked_queue_messages_in_order() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/a", "s", "client", 1).unwrap();
        h.subscribe(ann, "/topic/t", "t", "auto", 0).unwrap();
        h.send(bob, "/queue/a", "1").unwrap();
        h.send(bob, "/queue/b", "2").unwrap();
        h.send(bob, "/queue/a", "3").unwrap();
        h.send(bob, "/topic/t", "live").unwrap();
        let kept: Vec<(String, Vec<u8>)> = h
            .state
            .undelivered()
            .into_iter()
            .map(|(d, _, body)| (d, body.to_vec()))
            .collect();
        let expected = [("/queue/a", "1"), ("/queue/b", "2"), ("/queue/a", "3")]
            .map(|(d, b)| (d.to_owned(), b.as_bytes().to_vec()));
        assert_eq!(kept, expected);
    }
}
