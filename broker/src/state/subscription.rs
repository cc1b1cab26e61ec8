//! SUBSCRIBE and UNSUBSCRIBE. A queue subscription joins the queue's consumers; a topic
//! subscription gets a private queue of its own that the topic fans out to.

use super::destination::{classify, required, Dest};
use super::{Handled, Queue, Refusal, SessionId, State, Subscription, Unacked};
use stomp::{AckMode, Frame};

impl State {
    pub(super) fn subscribe(&mut self, id: SessionId, frame: &Frame) -> Handled {
        let destination = required(frame, "destination")?.to_owned();
        let sub_id = frame.header("id").unwrap_or(&destination).to_owned();
        let (ack, prefetch) = options(frame)?;
        let dest = classify(&destination, &self.config)?;
        let max_subs = self.config.max_subscriptions;
        let authorizer = self.authorizer.clone();
        let session = self.session(id)?;
        authorizer
            .can_subscribe(&session.principal, &destination)
            .map_err(|why| Refusal::access(format!("access refused to {destination}"), why))?;
        if session.subscriptions.contains_key(&sub_id) {
            return Err(Refusal::new(
                format!("duplicate subscription id {sub_id:?}"),
                "Each SUBSCRIBE on a connection needs its own id.",
            ));
        }
        if session.subscriptions.len() >= max_subs {
            return Err(Refusal::limit(
                "too many subscriptions",
                format!("A connection may hold at most {max_subs} subscriptions."),
            ));
        }
        if matches!(dest, Dest::Queue) {
            self.check_managed(&destination)?;
        }
        // Claimed once nothing else can refuse the SUBSCRIBE, and before anything is made
        // for it (a topic subscription's queue).
        let inline = self.claim_inline(id, frame)?;
        let queue_name = match dest {
            Dest::Queue => destination.clone(),
            Dest::Topic(topic) => self.topic_queue(id, topic, &sub_id),
        };
        let subscription = Subscription {
            queue: queue_name.clone(),
            ack,
            prefetch,
            in_flight: 0,
            inline,
        };
        self.session(id)?
            .subscriptions
            .insert(sub_id.clone(), subscription);
        self.queues
            .entry(queue_name.clone())
            .or_default()
            .consumers
            .push((id, sub_id));
        self.deliver_ready(&queue_name);
        Ok(())
    }

    /// A topic subscription's private queue, which the topic fans out to.
    fn topic_queue(&mut self, id: SessionId, topic: &str, sub_id: &str) -> String {
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

    pub(super) fn unsubscribe(&mut self, id: SessionId, frame: &Frame) -> Handled {
        let sub_id = frame
            .header("id")
            .or_else(|| frame.header("destination"))
            .ok_or_else(|| Refusal::malformed("UNSUBSCRIBE frame without an id header", ""))?
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
        self.deliver_ready(&sub.queue);
        Ok(())
    }

    /// Takes a subscription off its queue's consumers; a topic subscription's private
    /// queue goes with it.
    pub(super) fn detach(&mut self, id: SessionId, sub_id: &str, queue_name: &str) {
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
}

/// A SUBSCRIBE's ack mode and prefetch count (0 for no limit).
fn options(frame: &Frame) -> Result<(AckMode, usize), Refusal> {
    let ack = match frame.header("ack") {
        None => AckMode::Auto,
        Some(a) => AckMode::parse(a).ok_or_else(|| {
            Refusal::malformed(
                format!("invalid ack mode {a:?}"),
                "ack must be auto, client or client-individual.",
            )
        })?,
    };
    let prefetch = match frame.header("prefetch-count") {
        None => 0,
        Some(p) => p.trim().parse::<usize>().map_err(|_| {
            Refusal::malformed(
                format!("invalid prefetch-count {p:?}"),
                "prefetch-count must be a whole number (0 for no limit).",
            )
        })?,
    };
    Ok((ack, prefetch))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use crate::{BrokerConfig, Principal};
    use stomp::{Command, Frame};

    #[test]
    fn a_topic_gives_every_subscriber_every_message_in_order() {
        let mut h = Harness::new();
        let (ann, bob, cy) = (h.connect("ann"), h.connect("bob"), h.connect("cy"));
        h.subscribe(ann, "/topic/t", "a", "auto", 0).unwrap();
        h.subscribe(bob, "/topic/t", "b", "auto", 0).unwrap();
        h.send_all(cy, "/topic/t", &["1", "2", "3"]);
        assert_eq!(h.bodies(ann), ["1", "2", "3"]);
        assert_eq!(h.bodies(bob), ["1", "2", "3"]);
        // A topic keeps nothing for later subscribers.
        h.subscribe(cy, "/topic/t", "c", "auto", 0).unwrap();
        assert!(h.bodies(cy).is_empty());
    }

    #[test]
    fn a_queue_shares_its_messages_round_robin() {
        let mut h = Harness::new();
        let (ann, bob, cy) = (h.connect("ann"), h.connect("bob"), h.connect("cy"));
        h.subscribe(ann, "/queue/q", "a", "auto", 0).unwrap();
        h.subscribe(bob, "/queue/q", "b", "auto", 0).unwrap();
        h.send_all(cy, "/queue/q", &["1", "2", "3", "4"]);
        assert_eq!(h.bodies(ann), ["1", "3"]);
        assert_eq!(h.bodies(bob), ["2", "4"]);
    }

    #[test]
    fn a_message_names_its_subscription_sender_and_destination() {
        let mut h = Harness::new();
        let (ann, bob) = (
            h.connect("ann"),
            h.connect_as(Principal::anyone("bob"), true),
        );
        h.subscribe(bob, "/queue/q", "mine", "client", 0).unwrap();
        // A sender's copy of a header the broker sets is dropped.
        let send = Frame::new(Command::Send)
            .with_header("destination", "/queue/q")
            .with_header("user-id", "mallory")
            .with_header("x-game", "1")
            .with_body(b"hi".to_vec());
        h.state.handle(ann, send).unwrap();
        let [message] = h.messages(bob).try_into().unwrap();
        assert_eq!(message.header("subscription"), Some("mine"));
        assert_eq!(message.header("destination"), Some("/queue/q"));
        assert_eq!(message.header("user-id"), Some("ann"));
        assert_eq!(message.header("x-game"), Some("1"));
        assert_eq!(message.header("ack"), Some("1"));
        assert!(message.header("message-id").is_some());
    }

    #[test]
    fn bad_subscribes_are_refused_with_the_reason() {
        let mut h = Harness::with_config(BrokerConfig {
            max_subscriptions: 1,
            ..BrokerConfig::default()
        });
        let ann = h.connect("ann");
        let bad_ack = h
            .subscribe(ann, "/queue/q", "a", "sometimes", 0)
            .unwrap_err();
        assert_eq!(bad_ack.message, "invalid ack mode \"sometimes\"");
        let sub = Frame::new(Command::Subscribe)
            .with_header("destination", "/queue/q")
            .with_header("prefetch-count", "many");
        let bad_prefetch = h.state.handle(ann, sub).unwrap_err();
        assert_eq!(bad_prefetch.message, "invalid prefetch-count \"many\"");
        h.subscribe(ann, "/queue/q", "a", "auto", 0).unwrap();
        let twice = h.subscribe(ann, "/queue/r", "a", "auto", 0).unwrap_err();
        assert_eq!(twice.message, "duplicate subscription id \"a\"");
        let more = h.subscribe(ann, "/queue/r", "b", "auto", 0).unwrap_err();
        assert_eq!(more.message, "too many subscriptions");
    }

    #[test]
    fn unsubscribe_gives_unacked_messages_to_the_next_consumer() {
        let mut h = Harness::new();
        let (ann, bob, cy) = (h.connect("ann"), h.connect("bob"), h.connect("cy"));
        h.subscribe(ann, "/queue/q", "a", "client-individual", 1)
            .unwrap();
        h.send(cy, "/queue/q", "1").unwrap();
        h.send(cy, "/queue/q", "2").unwrap();
        assert_eq!(h.bodies(ann), ["1"]);
        h.subscribe(bob, "/queue/q", "b", "auto", 0).unwrap();
        assert_eq!(h.bodies(bob), ["2"]);
        let unsubscribe = Frame::new(Command::Unsubscribe).with_header("id", "a");
        h.state.handle(ann, unsubscribe).unwrap();
        let again = h.messages(bob);
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0].body[..], b"1");
        assert_eq!(again[0].header("redelivered"), Some("true"));
        let unknown = Frame::new(Command::Unsubscribe).with_header("id", "a");
        assert_eq!(
            h.state.handle(ann, unknown).unwrap_err().message,
            "no subscription \"a\""
        );
    }
}
