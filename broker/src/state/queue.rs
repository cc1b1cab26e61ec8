//! Messages in: a SEND is checked, stamped with its sender and published, to a named
//! queue (bounded, journaled) or to every subscriber of a topic. Messages out:
//! `deliver_ready` hands what is ready to consumers with room for it, round robin (or to the
//! single active one), and a message a consumer gave back is requeued at its old place.

use super::destination::{classify, journaled, required, Dest};
use super::durability::Durability;
use super::{
    Handled, HashMap, MessageId, Outbound, Queue, Queued, Refusal, Session, SessionId, State,
    Stored,
};
use crate::{BrokerConfig, QueueOptions, Stats};
use bytes::Bytes;
use std::sync::Arc;
use stomp::{AckMode, Command, Frame};

/// Headers the broker sets on MESSAGE frames itself; a sender's copies are dropped.
const BROKER_HEADERS: [&str; 10] = [
    "user-id",
    "timestamp",
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "message-id",
    "subscription",
    "ack",
    "redelivered",
];

impl State {
    /// Everything that could refuse a SEND, checked without sending: the destination
    /// ([`classify`]), the authorizer, managed queues. Returns the destination and the
    /// sender's name.
    pub(super) fn check_send(
        &mut self,
        id: SessionId,
        frame: &Frame,
    ) -> Result<(String, String), Refusal> {
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
            .map_err(|why| Refusal::access(format!("access refused to {destination}"), why))?;
        let user = principal.name.clone();
        self.check_managed(&destination)?;
        Ok((destination, user))
    }

    /// A client's SEND: checked, rate-limited (to queues), stamped with its sender.
    pub(super) fn send(&mut self, id: SessionId, frame: Frame) -> Handled {
        let (destination, user) = self.check_send(id, &frame)?;
        let dest = Dest::of_checked(&destination);
        if matches!(dest, Dest::Queue) && !self.within_rate(id)? {
            self.dropped = true;
            return Ok(());
        }
        self.publish(&destination, dest, stamped(frame.headers, user), frame.body)
    }

    /// Publishes a message as if a client had sent it (for in-process producers).
    /// A managed queue must exist unless `create` says the caller may bring it back (the
    /// shutdown spool's restore).
    pub(crate) fn publish_local(
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

    /// Numbers a message in the broker's order and puts it where `dest` says.
    pub(super) fn publish(
        &mut self,
        destination: &str,
        dest: Dest<'_>,
        mut headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Handled {
        if matches!(dest, Dest::Queue) && !headers.iter().any(|(n, _)| n == "timestamp") {
            // When the queue got it, kept with it (journaled): a consumer that reads it
            // again after a crash reads the same time.
            let mut ms = itoa::Buffer::new();
            headers.push(("timestamp".into(), ms.format(now_ms()).to_owned()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = Arc::new(Stored {
            seq,
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
            Dest::Queue => self.enqueue(destination, item),
            Dest::Topic(topic) => {
                self.fan_out(topic, item);
                Ok(())
            }
        }
    }

    /// Puts a message in a named queue, within its bounds, journaled before anyone sees
    /// it.
    fn enqueue(&mut self, destination: &str, item: Queued) -> Handled {
        let size = item.msg.body.len();
        self.check_room(destination, size)?;
        // Kept before anyone sees it: a RECEIPT, and any output a consumer makes from
        // it, outlive the process.
        if let Some(journal) = &mut self.journal {
            let msg = &item.msg;
            journal
                .publish(item.seq, destination, &msg.headers, &msg.body)
                .map_err(|e| {
                    tracing::error!("cannot write the journal: {e}");
                    Refusal::new(
                        "the broker cannot keep the message",
                        format!("Writing its journal failed ({e}); the message was not accepted."),
                    )
                })?;
        }
        let seq = item.seq;
        let queue = self.queues.entry(destination.to_owned()).or_default();
        queue.bytes += size;
        queue.ready.push_back(item);
        self.queued_bytes += size;
        self.wait_for_disk(destination, seq);
        self.deliver_ready(destination);
        Ok(())
    }

    /// Whether a queue (and the broker) has room for `size` more bytes.
    fn check_room(&self, destination: &str, size: usize) -> Handled {
        let c = &self.config;
        let (mut max, max_bytes, max_total) =
            (c.max_queue_len, c.max_queue_bytes, c.max_total_queue_bytes);
        let (len, bytes) = self.queues.get(destination).map_or((0, 0), |q| {
            max = q.options.max_len.unwrap_or(max);
            (q.ready.len(), q.bytes)
        });
        if len >= max {
            return Err(Refusal::limit(
                format!("queue {destination} is full"),
                format!(
                    "The queue holds {max} undelivered messages; the message was not accepted."
                ),
            ));
        }
        if bytes + size > max_bytes {
            return Err(Refusal::limit(
                format!("queue {destination} is full"),
                format!(
                    "The queue holds {max_bytes} bytes of messages; the message was not accepted."
                ),
            ));
        }
        if self.queued_bytes + size > max_total {
            return Err(Refusal::limit(
                "the broker is full",
                format!("All queues together hold {max_total} bytes of messages; the message was not accepted."),
            ));
        }
        Ok(())
    }

    /// Gives a message to every subscriber of a topic (each has a private queue).
    fn fan_out(&mut self, topic: &str, item: Queued) {
        // Borrowed out of the map while dispatching (which never changes who
        // subscribes), rather than cloned for every message.
        let Some(subscribers) = self.topics.get_mut(topic).map(std::mem::take) else {
            return;
        };
        for queue_name in &subscribers {
            let Some((queue, to)) = self.queue_and_consumers(queue_name) else {
                continue;
            };
            // A subscriber this far behind loses the oldest: a topic is live.
            if queue.ready.len() >= to.config.max_topic_backlog {
                queue.ready.pop_front();
            }
            queue.ready.push_back(item.clone());
            let done = deliver(queue_name, queue, to);
            self.after_delivery(queue_name, done);
        }
        if let Some(slot) = self.topics.get_mut(topic) {
            *slot = subscribers;
        }
    }

    /// Puts a message back at its original place in the queue, marked redelivered.
    pub(super) fn requeue(&mut self, queue_name: &str, mut item: Queued) {
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        item.redelivered = true;
        let at = queue.ready.partition_point(|q| q.seq < item.seq);
        queue.ready.insert(at, item);
    }

    /// Hands ready messages to consumers with room for them, round robin (see
    /// [`deliver`]).
    pub(super) fn deliver_ready(&mut self, queue_name: &str) {
        let Some((queue, to)) = self.queue_and_consumers(queue_name) else {
            return;
        };
        let done = deliver(queue_name, queue, to);
        self.after_delivery(queue_name, done);
    }

    /// Queue `queue_name`, and what delivering from it needs besides.
    fn queue_and_consumers(&mut self, queue_name: &str) -> Option<(&mut Queue, Consumers<'_>)> {
        let queue = self.queues.get_mut(queue_name)?;
        let to = Consumers {
            sessions: &mut self.sessions,
            stats: &mut self.stats,
            config: &self.config,
            durability: &self.durability,
        };
        Some((queue, to))
    }

    /// What a delivery left to do with the whole state: settling what left a journaled
    /// queue with ack=auto, and publishing what inline consumers made.
    fn after_delivery(&mut self, queue_name: &str, done: Delivered) {
        for (seq, size) in done.settled {
            self.release(queue_name, size);
            self.settle(&[seq]);
        }
        for (session, outputs) in done.published {
            self.publish_inline(session, outputs);
        }
    }

    /// Takes `bytes` of a message that left `queue` for good off the counts.
    pub(super) fn release(&mut self, queue: &str, bytes: usize) {
        if !journaled(queue) {
            return;
        }
        if let Some(q) = self.queues.get_mut(queue) {
            q.bytes = q.bytes.saturating_sub(bytes);
        }
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
    }

    /// Creates an empty queue unless it exists.
    pub(crate) fn create_queue(&mut self, destination: &str, single_active: bool) {
        self.queues
            .entry(destination.to_owned())
            .or_default()
            .single_active |= single_active;
    }

    /// Creates a queue unless it exists, and gives it `options` either way.
    pub(crate) fn declare_queue(&mut self, destination: &str, options: QueueOptions) {
        let queue = self.queues.entry(destination.to_owned()).or_default();
        queue.single_active |= options.single_active;
        queue.options = options;
    }

    /// Whether `queue`'s messages wait for the disk: as it was declared, else as the
    /// journal does.
    pub(super) fn waits_for_disk(&self, queue: &str) -> bool {
        self.queues
            .get(queue)
            .and_then(|q| q.options.fsync)
            .unwrap_or(true)
    }

    /// Deletes a queue and every message in it; returns whether it existed.
    pub(crate) fn delete_queue(&mut self, destination: &str) -> bool {
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
}

/// A sender's headers as the broker keeps them: its copies of the broker's own dropped,
/// and stamped with its `user-id`.
pub(super) fn stamped(headers: Vec<(String, String)>, user: String) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(n, _)| !BROKER_HEADERS.contains(&n.as_str()))
        .collect();
    headers.push(("user-id".into(), user));
    headers
}

/// The parts of the state that delivering from a queue uses besides the queue.
struct Consumers<'a> {
    sessions: &'a mut HashMap<SessionId, Session>,
    stats: &'a mut Stats,
    config: &'a BrokerConfig,
    durability: &'a Durability,
}

/// What [`deliver`] leaves to do once the queue is let go (it needs the whole state).
struct Delivered {
    /// Messages delivered with ack=auto from a journaled queue: their seqs and sizes.
    settled: Vec<(u64, usize)>,
    /// What inline consumers published for the messages they took, by session.
    published: Vec<(SessionId, Vec<crate::Publish>)>,
}

/// Hands `queue`'s ready messages to consumers with room for them, round robin. It is
/// given the queue, so that a topic's fan-out, which has just looked it up, does not look
/// it up again; each consumer's session and subscription are looked up once a message.
/// This runs for every subscriber of every topic message.
fn deliver(queue_name: &str, queue: &mut Queue, to: Consumers<'_>) -> Delivered {
    let Consumers {
        sessions,
        stats,
        config,
        durability,
    } = to;
    let journaled = journaled(queue_name);
    let (mut settled, mut published) = (Vec::new(), Vec::new());
    'messages: while let Some(first) = queue.ready.front() {
        // A journaled message a group commit has not yet put on the disk waits, and
        // so does everything behind it. (Topic subscriptions are not journaled.)
        if journaled && !durability.on_disk(first.seq) && queue.options.fsync != Some(false) {
            break;
        }
        // A single-active-consumer queue feeds its oldest consumer only; the next one
        // takes over when it goes, starting with what it left unacked.
        let n = if queue.single_active {
            queue.consumers.len().min(1)
        } else {
            queue.consumers.len()
        };
        for k in 0..n {
            let i = (queue.next_consumer + k) % n;
            let (sid, sub_id) = &queue.consumers[i];
            let sid = *sid;
            let Some(session) = sessions.get_mut(&sid) else {
                continue;
            };
            // Besides its prefetch, a session may hold only so many unacked messages.
            if session.unacked.len() >= config.max_unacked {
                continue;
            }
            let Some(sub) = session.subscriptions.get_mut(sub_id) else {
                continue;
            };
            if sub.ack != AckMode::Auto && sub.prefetch != 0 && sub.in_flight >= sub.prefetch {
                continue;
            }
            queue.next_consumer = (i + 1) % n;
            let item = queue.ready.pop_front().expect("checked non-empty");
            let tag = (sub.ack != AckMode::Auto).then(|| {
                session.next_tag += 1;
                session.next_tag - 1
            });
            let taken = sub.inline.as_ref().and_then(|consumer| {
                consumer.take(crate::Offered {
                    tag,
                    headers: &item.msg.headers,
                    body: &item.msg.body,
                    redelivered: item.redelivered,
                })
            });
            if sub.inline.is_some() {
                *if taken.is_some() {
                    &mut stats.inline_taken
                } else {
                    &mut stats.inline_declined
                } += 1;
            }
            if let Some(outputs) = taken {
                published.push((sid, outputs));
            } else if session
                .outbox
                .try_send(message_frame(&item, sub_id, tag, session.wire))
                .is_err()
            {
                // The consumer cannot keep up (or is gone): it loses its connection,
                // and the message stays first in line for someone else.
                session.kill.slow();
                queue.ready.push_front(item);
                queue.consumers.retain(|(s, _)| *s != sid);
                continue 'messages;
            }
            if let Some(tag) = tag {
                sub.in_flight += 1;
                session.unacked.insert(
                    tag,
                    super::Unacked {
                        subscription: sub_id.clone(),
                        queue: queue_name.to_owned(),
                        item,
                    },
                );
            } else if journaled {
                settled.push((item.seq, item.msg.body.len()));
            }
            continue 'messages;
        }
        // No consumer has room for it.
        break;
    }
    Delivered { settled, published }
}

/// The MESSAGE frame of `item` for subscription `sub_id`: in wire form for a socket
/// (the subscriber's own headers, then the part every subscriber shares, encoded once),
/// as a value otherwise.
fn message_frame(item: &Queued, sub_id: &str, tag: Option<u64>, wire: bool) -> Outbound {
    if wire {
        let mut digits = itoa::Buffer::new();
        let mut head = [("subscription", sub_id), ("", ""), ("", "")];
        let mut len = 1;
        if let Some(tag) = tag {
            head[len] = ("ack", digits.format(tag));
            len += 1;
        }
        if item.redelivered {
            head[len] = ("redelivered", "true");
            len += 1;
        }
        return Outbound::Encoded(stomp::encode_message_head(&head[..len], item.msg.tail()));
    }
    let mut frame = Frame::new(Command::Message);
    frame.headers.reserve_exact(5 + item.msg.headers.len());
    frame = frame
        .with_header("subscription", sub_id)
        .with_header("message-id", MessageId::new().of(item.seq))
        .with_header("destination", item.msg.destination.clone());
    if let Some(tag) = tag {
        frame = frame.with_header("ack", tag.to_string());
    }
    if item.redelivered {
        frame = frame.with_header("redelivered", "true");
    }
    frame.headers.extend(item.msg.headers.iter().cloned());
    frame.body = item.msg.body.clone();
    Outbound::Frame(frame)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use super::now_ms;
    use crate::{BrokerConfig, Principal, QueueOptions};
    use stomp::{Command, Frame};

    #[test]
    fn a_queue_keeps_messages_in_order_until_a_consumer_comes() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.send_all(bob, "/queue/q", &["1", "2", "3"]);
        assert_eq!(h.state.queue_depth("/queue/q"), Some(3));
        assert_eq!(h.state.queued(), 3);
        h.subscribe(ann, "/queue/q", "s", "auto", 0).unwrap();
        assert_eq!(h.bodies(ann), ["1", "2", "3"]);
        assert_eq!(h.state.queued(), 0);
    }

    #[test]
    fn a_queue_stamps_when_it_got_a_message_and_a_topic_does_not() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "q", "auto", 0).unwrap();
        h.subscribe(ann, "/topic/t", "t", "auto", 0).unwrap();
        let before = now_ms();
        // A sender's own timestamp is dropped: only the broker's counts.
        let forged = Frame::new(Command::Send)
            .with_header("destination", "/queue/q")
            .with_header("timestamp", "1")
            .with_body(b"hi".to_vec());
        h.state.handle(bob, forged).unwrap();
        h.send(bob, "/topic/t", "there").unwrap();
        let [queued, published] = h.messages(ann).try_into().unwrap();
        let stamped: u64 = queued.header("timestamp").unwrap().parse().unwrap();
        assert!(
            (before..=now_ms()).contains(&stamped),
            "{stamped} is not now"
        );
        assert_eq!(published.header("timestamp"), None);
    }

    #[test]
    fn a_full_queue_or_broker_refuses_the_send() {
        let mut h = Harness::with_config(BrokerConfig {
            max_queue_len: 2,
            max_queue_bytes: 10,
            max_total_queue_bytes: 15,
            ..BrokerConfig::default()
        });
        let bob = h.connect("bob");
        h.send(bob, "/queue/a", "1").unwrap();
        h.send(bob, "/queue/a", "2").unwrap();
        let len = h.send(bob, "/queue/a", "3").unwrap_err();
        assert_eq!(len.message, "queue /queue/a is full");
        assert!(len.detail.contains("2 undelivered messages"));
        let bytes = h.send(bob, "/queue/b", "12345678901").unwrap_err();
        assert!(bytes.detail.contains("10 bytes"));
        h.send(bob, "/queue/b", "1234567890").unwrap();
        let total = h.send(bob, "/queue/c", "1234").unwrap_err();
        assert_eq!(total.message, "the broker is full");
        // A refused SEND creates no queue.
        assert!(!h.state.has_queue("/queue/c"));
    }

    #[test]
    fn a_queue_declared_with_a_bound_holds_that_many() {
        let mut h = Harness::new();
        let bounded = QueueOptions {
            single_active: true,
            max_len: Some(2),
            fsync: None,
        };
        h.state.declare_queue("/queue/inbox", bounded);
        let bob = h.connect("bob");
        h.send_all(bob, "/queue/inbox", &["1", "2"]);
        let full = h.send(bob, "/queue/inbox", "3").unwrap_err();
        assert!(full.detail.contains("2 undelivered messages"), "{full:?}");
        h.send(bob, "/queue/other", "3").unwrap();
    }

    #[test]
    fn a_single_active_consumer_queue_feeds_its_oldest_consumer_only() {
        let mut h = Harness::new();
        let (ann, bob, cy) = (h.connect("ann"), h.connect("bob"), h.connect("cy"));
        h.state.create_queue("/queue/inbox", true);
        h.subscribe(ann, "/queue/inbox", "a", "client", 0).unwrap();
        h.subscribe(bob, "/queue/inbox", "b", "client", 0).unwrap();
        h.send_all(cy, "/queue/inbox", &["1", "2"]);
        assert_eq!(h.bodies(ann), ["1", "2"]);
        assert!(h.bodies(bob).is_empty(), "standing by");
        // The next takes over with what the first left unacked.
        h.state.remove_session(ann);
        let taken = h.messages(bob);
        assert_eq!(taken.len(), 2);
        assert!(taken
            .iter()
            .all(|m| m.header("redelivered") == Some("true")));
    }

    #[test]
    fn a_topic_subscriber_far_behind_loses_the_oldest() {
        let mut h = Harness::with_config(BrokerConfig {
            max_topic_backlog: 2,
            ..BrokerConfig::default()
        });
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        // Holding one unacked message, the subscriber takes no more: a backlog builds.
        h.subscribe(ann, "/topic/t", "s", "client", 1).unwrap();
        h.send_all(bob, "/topic/t", &["1", "2", "3", "4"]);
        let first = h.messages(ann);
        assert_eq!(&first[0].body[..], b"1");
        h.ack(ann, &first[0]).unwrap();
        let next = h.messages(ann);
        assert_eq!(&next[0].body[..], b"3", "2 was dropped for 3 and 4");
    }

    #[test]
    fn a_consumer_that_cannot_keep_up_is_closed_and_its_message_kept() {
        let mut h = Harness::new();
        let bob = h.connect("bob");
        let slow = h.try_connect(Principal::anyone("slow"), false, 1).unwrap();
        h.subscribe(slow, "/queue/q", "s", "auto", 0).unwrap();
        h.send(bob, "/queue/q", "1").unwrap();
        h.send(bob, "/queue/q", "2").unwrap();
        // The outbox held one; the second stays first in line, for another consumer.
        assert_eq!(h.state.consumer_count("/queue/q"), 0);
        assert_eq!(h.state.queue_depth("/queue/q"), Some(1));
        assert_eq!(h.bodies(slow), ["1"]);
    }

    #[test]
    fn a_message_reads_the_same_encoded_once_for_a_socket_or_as_a_value() {
        let mut h = Harness::new();
        let sender = h.connect("ann");
        let value = h.connect("value");
        let wire = h.connect_as(Principal::anyone("wire"), true);
        h.subscribe(value, "/topic/t", "s", "client", 0).unwrap();
        h.subscribe(wire, "/topic/t", "s", "client", 0).unwrap();
        let send = Frame::new(Command::Send)
            .with_header("destination", "/topic/t")
            .with_header("content-type", "application/json")
            .with_body(b"{\"type\":\"hi\"}".to_vec());
        h.state.handle(sender, send).unwrap();
        let [a] = h.messages(value).try_into().unwrap();
        let [b] = h.messages(wire).try_into().unwrap();
        let sorted = |f: &Frame| {
            // The value's content-length is added when it is written.
            let mut headers = f.headers.clone();
            headers.retain(|(n, _)| n != "content-length");
            headers.sort();
            (headers, f.body.clone())
        };
        assert_eq!(sorted(&a), sorted(&b));
    }

    #[test]
    fn deleting_a_queue_drops_its_messages_and_subscriptions() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client", 1).unwrap();
        h.send(bob, "/queue/q", "1").unwrap();
        h.send(bob, "/queue/q", "2").unwrap();
        assert!(h.state.delete_queue("/queue/q"));
        assert!(!h.state.delete_queue("/queue/q"));
        assert_eq!(h.state.queued(), 0);
        // Its subscription went with it: the id is free again.
        h.subscribe(ann, "/queue/other", "s", "auto", 0).unwrap();
        h.send(bob, "/queue/q", "3").unwrap();
        assert_eq!(h.bodies(ann), ["1"]);
    }
}
