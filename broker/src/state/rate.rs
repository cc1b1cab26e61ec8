//! Each session's token bucket for SENDs to queues (see [`SendRate`]): a SEND over the
//! rate is dropped without a RECEIPT, the first drop of a second is told on the
//! principal's notice destination, and a session that goes on flooding is closed.

use super::destination::classify;
use super::{Refusal, SessionId, State};
#[cfg(test)]
use crate::Rate;
use crate::{Notice, SendRate};
use std::time::{Duration, Instant};

/// A session's token bucket.
pub(super) struct Bucket {
    rate: SendRate,
    tokens: f64,
    refilled: Instant,
    /// SENDs dropped in the current second, and when it began.
    dropped: u32,
    second: Instant,
}

/// What the bucket says of one SEND.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Allowed {
    Yes,
    /// Dropped; say so if this is the second's first drop.
    Dropped {
        notify: bool,
    },
    /// Dropped, and the connection goes on flooding: close it.
    Flooding,
}

impl Bucket {
    pub(super) fn new(rate: SendRate) -> Bucket {
        let now = Instant::now();
        Bucket {
            tokens: f64::from(rate.rate.burst),
            rate,
            refilled: now,
            dropped: 0,
            second: now,
        }
    }

    fn take(&mut self) -> Allowed {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> Allowed {
        let earned =
            now.duration_since(self.refilled).as_secs_f64() * f64::from(self.rate.rate.per_second);
        self.tokens = (self.tokens + earned).min(f64::from(self.rate.rate.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Allowed::Yes;
        }
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.dropped = 0;
        }
        self.dropped += 1;
        if self.dropped > 2 * self.rate.rate.burst.max(1) {
            Allowed::Flooding
        } else {
            Allowed::Dropped {
                notify: self.dropped == 1,
            }
        }
    }
}

impl State {
    /// Whether the session may SEND one more to a queue now; a dropped SEND may be
    /// reported on the principal's notice destination, and a flood closes the session.
    pub(super) fn within_rate(&mut self, id: SessionId) -> Result<bool, Refusal> {
        let session = self.session(id)?;
        let Some(bucket) = &mut session.bucket else {
            return Ok(true);
        };
        // Only what the answer needs is copied out: the notice is cloned only to be sent.
        let allowed = bucket.take();
        let limit = bucket.rate.rate;
        let notice = matches!(allowed, Allowed::Dropped { notify: true })
            .then(|| bucket.rate.notice.clone())
            .flatten();
        match allowed {
            Allowed::Yes => Ok(true),
            Allowed::Flooding => Err({
                self.stats.floods += 1;
                Refusal::limit(
                "too many messages",
                format!(
                    "This connection may send {} messages a second ({} at once) and went on sending far more; it is closed.",
                    limit.per_second, limit.burst
                ),
            )
            }),
            Allowed::Dropped { .. } => {
                self.stats.dropped_sends += 1;
                if let Some(notice) = notice {
                    self.publish_notice(notice);
                }
                Ok(false)
            }
        }
    }

    /// Publishes what the principal's grant said to tell it of dropped SENDs.
    fn publish_notice(&mut self, notice: Notice) {
        if let Ok(dest) = classify(&notice.destination, &self.config) {
            let _ = self.publish(&notice.destination, dest, notice.headers, notice.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use super::*;
    use crate::Principal;

    fn rate(per_second: u32, burst: u32) -> SendRate {
        SendRate {
            rate: Rate { per_second, burst },
            notice: Some(Notice {
                destination: "/topic/notices".into(),
                headers: vec![("user-id".into(), "$broker".into())],
                body: "too fast".into(),
            }),
        }
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_refills_at_its_rate() {
        let mut bucket = Bucket::new(rate(10, 3));
        let start = bucket.refilled;
        for _ in 0..3 {
            assert_eq!(bucket.take_at(start), Allowed::Yes);
        }
        assert_eq!(bucket.take_at(start), Allowed::Dropped { notify: true });
        assert_eq!(bucket.take_at(start), Allowed::Dropped { notify: false });
        // A tenth of a second earns one SEND at 10 a second.
        let later = start + Duration::from_millis(100);
        assert_eq!(bucket.take_at(later), Allowed::Yes);
        assert_eq!(bucket.take_at(later), Allowed::Dropped { notify: false });
    }

    #[test]
    fn a_bucket_calls_twice_its_burst_of_drops_in_a_second_a_flood() {
        let mut bucket = Bucket::new(rate(1, 2));
        let start = bucket.refilled;
        let answers: Vec<Allowed> = (0..7).map(|_| bucket.take_at(start)).collect();
        assert_eq!(answers[..2], [Allowed::Yes, Allowed::Yes]);
        assert_eq!(answers[6], Allowed::Flooding);
        // The next second starts a new count of drops, and says so again.
        let next = start + Duration::from_millis(1000);
        assert_eq!(bucket.take_at(next), Allowed::Yes);
        assert_eq!(bucket.take_at(next), Allowed::Dropped { notify: true });
    }

    #[test]
    fn a_send_over_the_rate_is_dropped_without_a_receipt_and_told_once() {
        let mut h = Harness::new();
        let mut ann = Principal::anyone("ann");
        ann.rate = Some(rate(1, 2));
        let ann = h.connect_as(ann, false);
        let watcher = h.connect("watcher");
        h.subscribe(watcher, "/topic/notices", "n", "auto", 0)
            .unwrap();
        h.subscribe(watcher, "/queue/in", "q", "auto", 0).unwrap();
        for body in ["1", "2", "3", "4"] {
            h.send(ann, "/queue/in", body).unwrap();
            let dropped = h.state.take_dropped();
            assert_eq!(dropped, body > "2", "input {body}");
        }
        let frames = h.messages(watcher);
        let inputs: Vec<_> = frames
            .iter()
            .filter(|f| f.header("destination") == Some("/queue/in"))
            .collect();
        let notices: Vec<_> = frames
            .iter()
            .filter(|f| f.header("destination") == Some("/topic/notices"))
            .collect();
        assert_eq!(inputs.len(), 2);
        assert_eq!(notices.len(), 1, "one notice a second");
        assert_eq!(h.state.stats().dropped_sends, 2);
        assert_eq!(notices[0].header("user-id"), Some("$broker"));
        assert!(String::from_utf8_lossy(&notices[0].body).contains("too fast"));
    }

    #[test]
    fn a_flooding_session_is_refused() {
        let mut h = Harness::new();
        let mut ann = Principal::anyone("ann");
        ann.rate = Some(rate(1, 1));
        let ann = h.connect_as(ann, false);
        let refusal = (0..10)
            .find_map(|_| h.send(ann, "/queue/in", "x").err())
            .expect("a flood is refused");
        assert_eq!(refusal.message, "too many messages");
        assert_eq!(h.state.stats().floods, 1);
        h.state.take_dropped();
        // Topics are not rate-limited: only inputs to queues are.
        let mut bob = Principal::anyone("bob");
        bob.rate = Some(rate(1, 1));
        let bob = h.connect_as(bob, false);
        for _ in 0..10 {
            h.send(bob, "/topic/chat", "x").unwrap();
            assert!(!h.state.take_dropped());
        }
    }
}
