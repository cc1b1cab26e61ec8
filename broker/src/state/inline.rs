//! Inline consumers ([`InlineConsumer`]): a subscription of an in-memory connection can
//! have its messages taken where they are delivered, under the lock, instead of as
//! MESSAGE frames. A message taken is delivered all the same: unacked within the
//! prefetch until the session acks it, and back in line if the session goes first.
//! What the consumer publishes for it goes out in the same call, stamped with the
//! session's `user-id`, as that session's SEND would be.
//!
//! A consumer is offered first ([`State::offer_inline`], which gives a token), then
//! claimed by the SUBSCRIBE whose `inline` header names the token: so it belongs to
//! exactly one subscription, and ends with it.

use super::queue::stamped;
use super::{Refusal, SessionId, State};
use crate::{InlineConsumer, Publish};
use std::sync::Arc;
use stomp::Frame;

/// The SUBSCRIBE header that names an offered consumer.
const INLINE_HEADER: &str = "inline";

impl State {
    /// Keeps `consumer` for the SUBSCRIBE that names the returned token.
    pub(crate) fn offer_inline(&mut self, consumer: Arc<dyn InlineConsumer>) -> String {
        let token = format!("inline-{}", self.next_offer);
        self.next_offer += 1;
        self.inline_offers.insert(token.clone(), consumer);
        token
    }

    /// Forgets an offer no SUBSCRIBE claimed.
    pub(crate) fn withdraw_inline(&mut self, token: &str) {
        self.inline_offers.remove(token);
    }

    /// The consumer a SUBSCRIBE claims, if it names one. Only an in-memory connection
    /// can: on a socket's the header is a client's own, and means nothing.
    pub(super) fn claim_inline(
        &mut self,
        id: SessionId,
        frame: &Frame,
    ) -> Result<Option<Arc<dyn InlineConsumer>>, Refusal> {
        let Some(token) = frame.header(INLINE_HEADER) else {
            return Ok(None);
        };
        if self.session(id)?.wire {
            return Ok(None);
        }
        self.inline_offers.remove(token).map(Some).ok_or_else(|| {
            Refusal::new(
                format!("no inline consumer {token:?}"),
                "The inline header names a consumer offered to the broker and not yet claimed.",
            )
        })
    }

    /// Publishes what an inline consumer of `session` made, as that session's SENDs
    /// would be. An output the broker cannot take (a bad destination, a full queue) is
    /// logged and dropped: there is no connection to answer with an ERROR.
    pub(super) fn publish_inline(&mut self, session: SessionId, outputs: Vec<Publish>) {
        let Some(user) = self
            .sessions
            .get(&session)
            .map(|s| s.principal.name.clone())
        else {
            return;
        };
        for output in outputs {
            let headers = stamped(output.headers, user.clone());
            let published = self.publish_local(&output.destination, headers, output.body, false);
            if let Err(refusal) = published {
                tracing::warn!(
                    destination = %output.destination,
                    "an inline consumer's output was dropped: {}",
                    refusal.message
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use super::*;
    use crate::Offered;
    use bytes::Bytes;
    use std::sync::Mutex;
    use stomp::Command;

    /// Echoes each body it takes to `/topic/out` as `ECHO`, and declines the bodies in
    /// `decline`.
    #[derive(Default)]
    struct Echo {
        taken: Mutex<Vec<(Option<u64>, String, bool)>>,
        decline: Vec<&'static str>,
    }

    impl Echo {
        /// The tags of the messages it took, in order.
        fn tags(&self) -> Vec<u64> {
            let taken = self.taken.lock().unwrap();
            taken.iter().filter_map(|(tag, _, _)| *tag).collect()
        }
    }

    impl InlineConsumer for Echo {
        fn take(&self, message: Offered<'_>) -> Option<Vec<Publish>> {
            let body = String::from_utf8_lossy(message.body).into_owned();
            if self.decline.contains(&body.as_str()) {
                return None;
            }
            assert_eq!(message.header("user-id"), Some("player"));
            let out = Publish {
                destination: "/topic/out".into(),
                headers: vec![("user-id".into(), "forged".into())],
                body: Bytes::from(format!("ECHO {body}")),
            };
            self.taken
                .lock()
                .unwrap()
                .push((message.tag, body, message.redelivered));
            Some(vec![out])
        }
    }

    /// A harness with a player, a watcher of `/topic/out`, and `consumer` subscribed to
    /// `/queue/in` on an in-memory session (`worker`) with `ack:client`.
    fn setup(consumer: Arc<Echo>, prefetch: usize) -> (Harness, SessionId, SessionId, SessionId) {
        let mut h = Harness::new();
        let player = h.connect("player");
        let watcher = h.connect("watcher");
        h.subscribe(watcher, "/topic/out", "w", "auto", 0).unwrap();
        let worker = h.connect("worker");
        let token = h.state.offer_inline(consumer);
        subscribe_inline(&mut h, worker, &token, prefetch).unwrap();
        (h, player, watcher, worker)
    }

    fn subscribe_inline(
        h: &mut Harness,
        session: SessionId,
        token: &str,
        prefetch: usize,
    ) -> super::super::Handled {
        let frame = Frame::new(Command::Subscribe)
            .with_header("destination", "/queue/in")
            .with_header("id", "in")
            .with_header("ack", "client")
            .with_header("prefetch-count", prefetch.to_string())
            .with_header(INLINE_HEADER, token);
        h.state.handle(session, frame)
    }

    fn ack(h: &mut Harness, session: SessionId, tag: u64) {
        let frame = Frame::new(Command::Ack).with_header("id", tag.to_string());
        h.state.handle(session, frame).unwrap();
    }

    #[test]
    fn a_taken_message_is_published_at_once_as_its_session_and_stays_unacked_until_acked() {
        let echo = Arc::new(Echo::default());
        let (mut h, player, watcher, worker) = setup(echo.clone(), 0);
        h.send_all(player, "/queue/in", &["a", "b"]);
        assert_eq!(h.bodies(watcher), ["ECHO a", "ECHO b"]);
        assert!(
            h.frames(worker).is_empty(),
            "no MESSAGE frame for a taken message"
        );
        let out = h.state.queue_stats("/queue/in").unwrap();
        assert_eq!((out.ready, out.unacked), (0, 2));
        // Stamped as the consumer's session, whatever the consumer wrote.
        h.send(player, "/queue/in", "c").unwrap();
        let [m] = h.messages(watcher).try_into().unwrap();
        assert_eq!(m.header("user-id"), Some("worker"));
        let tags = echo.tags();
        assert_eq!(tags.len(), 3);
        ack(&mut h, worker, tags[1]); // cumulative: a and b
        let out = h.state.queue_stats("/queue/in").unwrap();
        assert_eq!((out.ready, out.unacked), (0, 1));
    }

    #[test]
    fn a_declined_message_goes_as_a_frame_in_its_place() {
        let echo = Arc::new(Echo {
            decline: vec!["b"],
            ..Echo::default()
        });
        let (mut h, player, watcher, worker) = setup(echo.clone(), 0);
        h.send_all(player, "/queue/in", &["a", "b", "c"]);
        assert_eq!(h.bodies(worker), ["b"]);
        assert_eq!(h.bodies(watcher), ["ECHO a", "ECHO c"]);
        let tags = echo.tags();
        assert_eq!(
            tags,
            [1, 3],
            "the frame took tag 2: one order for both ways"
        );
        let out = h.state.queue_stats("/queue/in").unwrap();
        assert_eq!(out.unacked, 3);
        let stats = h.state.stats();
        assert_eq!((stats.inline_taken, stats.inline_declined), (2, 1));
    }

    #[test]
    fn what_a_closed_session_took_and_did_not_ack_goes_to_the_next_consumer_in_order() {
        let first = Arc::new(Echo::default());
        let (mut h, player, watcher, worker) = setup(first.clone(), 0);
        h.send_all(player, "/queue/in", &["a", "b", "c"]);
        ack(&mut h, worker, 1);
        h.bodies(watcher);
        h.state.remove_session(worker);
        let next = Arc::new(Echo::default());
        let again = h.connect("worker");
        let token = h.state.offer_inline(next.clone());
        subscribe_inline(&mut h, again, &token, 0).unwrap();
        let taken: Vec<(String, bool)> = next
            .taken
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body, redelivered)| (body.clone(), *redelivered))
            .collect();
        assert_eq!(taken, [("b".to_owned(), true), ("c".to_owned(), true)]);
        assert_eq!(h.bodies(watcher), ["ECHO b", "ECHO c"]);
    }

    #[test]
    fn the_prefetch_bounds_what_is_taken_until_acks_come() {
        let echo = Arc::new(Echo::default());
        let (mut h, player, watcher, worker) = setup(echo.clone(), 2);
        h.send_all(player, "/queue/in", &["a", "b", "c"]);
        assert_eq!(h.bodies(watcher), ["ECHO a", "ECHO b"]);
        assert_eq!(h.state.queue_stats("/queue/in").unwrap().ready, 1);
        ack(&mut h, worker, 2);
        assert_eq!(h.bodies(watcher), ["ECHO c"]);
    }

    #[test]
    fn only_an_in_memory_connection_claims_an_offer_and_only_once() {
        let echo = Arc::new(Echo::default());
        let mut h = Harness::new();
        let player = h.connect("player");
        // On a socket's connection the header is the client's own: a plain subscription.
        let wire = h.connect_as(crate::Principal::anyone("wire"), true);
        let token = h.state.offer_inline(echo.clone());
        subscribe_inline(&mut h, wire, &token, 0).unwrap();
        h.send(player, "/queue/in", "a").unwrap();
        assert_eq!(h.bodies(wire), ["a"]);
        assert!(echo.taken.lock().unwrap().is_empty());
        // The offer is still there for an in-memory one; once claimed, it is gone.
        let worker = h.connect("worker");
        let other = h.connect("other");
        h.state.remove_session(wire);
        subscribe_inline(&mut h, worker, &token, 0).unwrap();
        let refused = subscribe_inline(&mut h, other, &token, 0).unwrap_err();
        assert!(
            refused.message.contains("no inline consumer"),
            "{}",
            refused.message
        );
        // Refused before anything was made for it: no topic queue is left behind.
        let queues = h.state.queues.len();
        let frame = Frame::new(Command::Subscribe)
            .with_header("destination", "/topic/t")
            .with_header("id", "t")
            .with_header(INLINE_HEADER, "inline-999");
        assert!(h.state.handle(other, frame).is_err());
        assert_eq!(h.state.queues.len(), queues);
        assert!(!h.state.topics.contains_key("/topic/t"));
        // Withdrawn, an offer cannot be claimed.
        let withdrawn = h.state.offer_inline(echo);
        h.state.withdraw_inline(&withdrawn);
        let again = h.connect("again");
        assert!(subscribe_inline(&mut h, again, &withdrawn, 0).is_err());
    }

    #[test]
    fn an_output_the_broker_cannot_take_is_dropped_and_the_rest_go() {
        struct Bad;
        impl InlineConsumer for Bad {
            fn take(&self, _: Offered<'_>) -> Option<Vec<Publish>> {
                let publish = |destination: &str| Publish {
                    destination: destination.into(),
                    headers: Vec::new(),
                    body: Bytes::from_static(b"x"),
                };
                Some(vec![publish("nowhere"), publish("/topic/out")])
            }
        }
        let mut h = Harness::new();
        let player = h.connect("player");
        let watcher = h.connect("watcher");
        h.subscribe(watcher, "/topic/out", "w", "auto", 0).unwrap();
        let worker = h.connect("worker");
        let token = h.state.offer_inline(Arc::new(Bad));
        subscribe_inline(&mut h, worker, &token, 0).unwrap();
        h.send(player, "/queue/in", "a").unwrap();
        assert_eq!(h.bodies(watcher), ["x"]);
    }
}
