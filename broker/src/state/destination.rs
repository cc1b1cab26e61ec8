//! What a destination name is: `/queue/NAME` (FIFO, journaled) or `/topic/NAME`
//! (fan-out, live only); which headers a SEND must carry; and which queues only the
//! server may create.

use super::{Handled, Refusal, State};
use crate::BrokerConfig;
use stomp::Frame;

/// Which kind of destination a name is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Dest<'a> {
    Queue,
    Topic(&'a str),
}

impl<'a> Dest<'a> {
    /// The kind of a destination [`classify`] has accepted, without checking it again.
    pub(super) fn of_checked(destination: &'a str) -> Dest<'a> {
        if journaled(destination) {
            Dest::Queue
        } else {
            Dest::Topic(destination)
        }
    }
}

/// Whether a queue's messages are journaled: named queues are; the private queues
/// behind topic subscriptions are not.
pub(super) fn journaled(queue: &str) -> bool {
    queue.starts_with("/queue/")
}

/// Checks a destination name against the broker's rules.
pub(super) fn classify<'a>(
    destination: &'a str,
    config: &BrokerConfig,
) -> Result<Dest<'a>, Refusal> {
    let bad = |why: &str| {
        Refusal::malformed(
            format!("invalid destination {destination:?}"),
            format!("{why}. Destinations are /queue/NAME or /topic/NAME."),
        )
    };
    if destination.len() > config.max_destination_len {
        return Err(bad("the name is too long"));
    }
    if destination.chars().any(char::is_control) {
        return Err(bad("the name contains control characters"));
    }
    if let Some(name) = destination.strip_prefix("/queue/") {
        if name.is_empty() {
            return Err(bad("the queue name is empty"));
        }
        return Ok(Dest::Queue);
    }
    if let Some(name) = destination.strip_prefix("/topic/") {
        if name.is_empty() {
            return Err(bad("the topic name is empty"));
        }
        return Ok(Dest::Topic(destination));
    }
    Err(bad("unknown destination type"))
}

/// A header the frame cannot go without.
pub(super) fn required<'a>(frame: &'a Frame, header: &str) -> Result<&'a str, Refusal> {
    frame.header(header).ok_or_else(|| {
        Refusal::malformed(
            format!("{} frame without a {header} header", frame.command),
            format!(
                "The {header} header is required on {} frames.",
                frame.command
            ),
        )
    })
}

impl State {
    /// A queue under a managed prefix must exist: clients cannot create it.
    pub(super) fn check_managed(&self, destination: &str) -> Handled {
        let managed = self
            .config
            .managed_prefixes
            .iter()
            .any(|p| destination.starts_with(p.as_str()));
        if managed && !self.queues.contains_key(destination) {
            return Err(Refusal::new(
                format!("no queue {destination}"),
                "This queue is created and deleted by the server (a room's inbox lives as long as its room).",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use super::*;

    fn refused(destination: &str) -> String {
        let config = BrokerConfig {
            max_destination_len: 32,
            ..BrokerConfig::default()
        };
        match classify(destination, &config) {
            Ok(_) => String::new(),
            Err(r) => r.detail,
        }
    }

    #[test]
    fn queues_and_topics_are_told_apart_by_their_prefix() {
        let config = BrokerConfig::default();
        assert_eq!(classify("/queue/a", &config).unwrap(), Dest::Queue);
        assert_eq!(
            classify("/topic/a", &config).unwrap(),
            Dest::Topic("/topic/a")
        );
        assert!(journaled("/queue/a"));
        assert!(!journaled("\0topic-subscription:1:s"));
        for name in ["/queue/a", "/topic/a"] {
            assert_eq!(Dest::of_checked(name), classify(name, &config).unwrap());
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert!(refused("/queue/").contains("the queue name is empty"));
        assert!(refused("/topic/").contains("the topic name is empty"));
        assert!(refused("/exchange/x").contains("unknown destination type"));
        assert!(refused("/queue/a\u{7}b").contains("control characters"));
        assert!(refused(&format!("/queue/{}", "x".repeat(40))).contains("too long"));
        assert_eq!(refused("/queue/ok"), "");
    }

    #[test]
    fn a_managed_queue_must_be_created_by_the_server_first() {
        let mut h = Harness::with_config(BrokerConfig {
            managed_prefixes: vec!["/queue/room.".into()],
            ..BrokerConfig::default()
        });
        let ann = h.connect("ann");
        let refusal = h.send(ann, "/queue/room.r1", "hi").unwrap_err();
        assert_eq!(refusal.message, "no queue /queue/room.r1");
        h.state.create_queue("/queue/room.r1", false);
        h.send(ann, "/queue/room.r1", "hi").unwrap();
        // Outside the managed prefix, a SEND creates its queue.
        h.send(ann, "/queue/free", "hi").unwrap();
        assert_eq!(h.state.queue_depth("/queue/free"), Some(1));
    }

    #[test]
    fn a_send_without_a_destination_names_the_missing_header() {
        let mut h = Harness::new();
        let ann = h.connect("ann");
        let frame = Frame::new(stomp::Command::Send).with_body(b"x".to_vec());
        let refusal = h.state.handle(ann, frame).unwrap_err();
        assert_eq!(refusal.message, "SEND frame without a destination header");
    }
}
