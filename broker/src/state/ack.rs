//! ACK and NACK. With `ack:client` an ACK covers every message of its subscription
//! delivered before it (cumulative); with `ack:client-individual`, that one message. An
//! acked message leaves its queue for good; a nacked one goes back to its old place,
//! marked redelivered.

use super::destination::journaled;
use super::{Handled, MessageId, Refusal, Session, SessionId, State, Unacked};
use stomp::{AckMode, Frame};

impl State {
    pub(super) fn ack(&mut self, id: SessionId, frame: &Frame, nack: bool) -> Handled {
        let max_unacked = self.config.max_unacked;
        let session = self.session(id)?;
        // An id this session does not hold (already acked, or foreign) is ignored, as
        // acknowledging twice must not cost the client its connection.
        let Some(tag) = acked_tag(session, frame)? else {
            return Ok(());
        };
        let sub_id = session.unacked[&tag].subscription.clone();
        let tags = covered(session, &sub_id, tag);
        let held = session.unacked.len().saturating_sub(tags.len());
        let done: Vec<Unacked> = tags
            .iter()
            .filter_map(|t| session.unacked.remove(t))
            .collect();
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
            self.forget(&done);
        }
        for queue in queues {
            self.deliver_ready(&queue);
        }
        Ok(())
    }

    /// Messages acked for good leave their queues' counts and the journal.
    fn forget(&mut self, done: &[Unacked]) {
        for u in done {
            self.release(&u.queue, u.item.msg.body.len());
        }
        let lsns: Vec<u64> = done
            .iter()
            .filter(|u| journaled(&u.queue))
            .map(|u| u.item.seq)
            .collect();
        self.settle(&lsns);
    }
}

/// The delivery tag an ACK or NACK names, if the session holds it.
fn acked_tag(session: &Session, frame: &Frame) -> Result<Option<u64>, Refusal> {
    let ack_id = frame
        .header("id")
        .or_else(|| frame.header("message-id"))
        .ok_or_else(|| {
            Refusal::malformed(
                format!("{} frame without an id header", frame.command),
                "Use the ack header of the MESSAGE as the id.",
            )
        })?;
    let tag = ack_id
        .parse::<u64>()
        .ok()
        .filter(|t| session.unacked.contains_key(t))
        .or_else(|| {
            // STOMP 1.0 and 1.1 clients name the message-id (and the subscription).
            let message_id = frame.header("message-id").unwrap_or(ack_id);
            let subscription = frame.header("subscription");
            let mut id = MessageId::new();
            session
                .unacked
                .iter()
                .find(|(_, u)| {
                    id.of(u.item.seq) == message_id
                        && subscription.is_none_or(|s| s == u.subscription)
                })
                .map(|(t, _)| *t)
        });
    Ok(tag)
}

/// The tags one acknowledgement of `tag` covers: with `ack:client` all of its
/// subscription's up to it, otherwise `tag` alone.
fn covered(session: &Session, sub_id: &str, tag: u64) -> Vec<u64> {
    let cumulative = session
        .subscriptions
        .get(sub_id)
        .is_some_and(|s| s.ack == AckMode::Client);
    if !cumulative {
        return vec![tag];
    }
    session
        .unacked
        .range(..=tag)
        .filter(|(_, u)| u.subscription == sub_id)
        .map(|(t, _)| *t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use crate::BrokerConfig;
    use stomp::{Command, Frame};

    fn bodies(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.body).into_owned())
            .collect()
    }

    #[test]
    fn a_client_ack_covers_every_message_before_it_and_an_individual_one_its_own() {
        for (mode, left) in [("client", &["3"][..]), ("client-individual", &["1", "3"])] {
            let mut h = Harness::new();
            let (ann, bob) = (h.connect("ann"), h.connect("bob"));
            h.subscribe(ann, "/queue/q", "s", mode, 0).unwrap();
            h.send_all(bob, "/queue/q", &["1", "2", "3"]);
            let got = h.messages(ann);
            h.ack(ann, &got[1]).unwrap();
            // What is still unacked goes back in line when the session goes.
            h.state.remove_session(ann);
            h.subscribe(bob, "/queue/q", "s", "auto", 0).unwrap();
            assert_eq!(h.bodies(bob), left, "ack:{mode}");
        }
    }

    #[test]
    fn a_nack_redelivers_at_the_old_place_in_line() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client-individual", 1)
            .unwrap();
        h.send_all(bob, "/queue/q", &["1", "2"]);
        let first = h.messages(ann);
        assert_eq!(bodies(&first), ["1"]);
        h.nack(ann, &first[0]).unwrap();
        let again = h.messages(ann);
        assert_eq!(bodies(&again), ["1"], "before the second");
        assert_eq!(again[0].header("redelivered"), Some("true"));
        h.ack(ann, &again[0]).unwrap();
        assert_eq!(h.bodies(ann), ["2"]);
    }

    #[test]
    fn prefetch_bounds_what_a_subscription_holds_unacked() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client", 2).unwrap();
        h.send_all(bob, "/queue/q", &["1", "2", "3", "4", "5"]);
        let got = h.messages(ann);
        assert_eq!(bodies(&got), ["1", "2"]);
        assert_eq!(h.state.queue_depth("/queue/q"), Some(3));
        let stats = |ready, unacked| {
            Some(crate::QueueStats {
                ready,
                unacked,
                consumers: 1,
            })
        };
        assert_eq!(h.state.queue_stats("/queue/q"), stats(3, 2));
        h.ack(ann, &got[1]).unwrap();
        assert_eq!(h.bodies(ann), ["3", "4"]);
        assert_eq!(h.state.queue_stats("/queue/q"), stats(1, 2));
        assert_eq!(h.state.queue_stats("/queue/none"), None);
    }

    #[test]
    fn a_session_holds_at_most_max_unacked_across_its_subscriptions() {
        let mut h = Harness::with_config(BrokerConfig {
            max_unacked: 2,
            ..BrokerConfig::default()
        });
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/a", "a", "client-individual", 0)
            .unwrap();
        h.subscribe(ann, "/queue/b", "b", "client-individual", 0)
            .unwrap();
        for q in ["/queue/a", "/queue/a", "/queue/b"] {
            h.send(bob, q, q).unwrap();
        }
        let got = h.messages(ann);
        assert_eq!(bodies(&got), ["/queue/a", "/queue/a"]);
        // Freeing one slot lets the other queue through.
        h.ack(ann, &got[0]).unwrap();
        assert_eq!(h.bodies(ann), ["/queue/b"]);
    }

    #[test]
    fn an_ack_twice_or_of_a_foreign_id_is_ignored_and_one_without_an_id_refused() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client", 0).unwrap();
        h.send(bob, "/queue/q", "1").unwrap();
        let got = h.messages(ann);
        h.ack(ann, &got[0]).unwrap();
        h.ack(ann, &got[0]).unwrap();
        h.state
            .handle(ann, Frame::new(Command::Ack).with_header("id", "999"))
            .unwrap();
        let refusal = h.state.handle(ann, Frame::new(Command::Ack)).unwrap_err();
        assert_eq!(refusal.message, "ACK frame without an id header");
    }

    #[test]
    fn a_stomp_1_0_ack_names_the_message_id() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client-individual", 0)
            .unwrap();
        h.send(bob, "/queue/q", "1").unwrap();
        h.send(bob, "/queue/q", "2").unwrap();
        let got = h.messages(ann);
        let id = got[0].header("message-id").unwrap();
        let ack = Frame::new(Command::Ack).with_header("message-id", id);
        h.state.handle(ann, ack).unwrap();
        h.state.remove_session(ann);
        h.subscribe(bob, "/queue/q", "s", "auto", 0).unwrap();
        assert_eq!(h.bodies(bob), ["2"]);
    }
}
