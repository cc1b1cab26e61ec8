//! Destination names and the broker users the framework reserves: the one place that
//! knows how a room's inbox, topic and private destinations are spelled on each broker.

/// The `user-id` of control messages the lobby puts in a room's inbox.
pub const LOBBY_USER: &str = "$lobby";
/// The login room workers use with the broker, and so the `user-id` the broker stamps on
/// what they send (ticks in their own inbox).
pub const WORKER_USER: &str = "$worker";
/// The login for a general-purpose client on loopback, as RabbitMQ's default.
pub const GUEST: &str = "guest";

/// How room destinations are spelled on one kind of broker. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Players SEND inputs to `{input}{room}`.
    input: String,
    /// The worker SUBSCRIBEs to `{consume}{room}`.
    consume: String,
    /// The room topic is `{topic}{room}`; a player's own `{topic}{room}.player.{player}`.
    topic: String,
}

impl Names {
    /// The embedded broker's names: `/queue/room.ID` (inbox), `/topic/room.ID` (topic).
    pub fn embedded() -> Names {
        Names {
            input: "/queue/room.".into(),
            consume: "/queue/room.".into(),
            topic: "/topic/room.".into(),
        }
    }

    /// Where players SEND a room's inputs.
    pub fn inbox(&self, room: &str) -> String {
        format!("{}{room}", self.input)
    }

    /// Where a room's worker consumes its inbox.
    pub fn inbox_queue(&self, room: &str) -> String {
        format!("{}{room}", self.consume)
    }

    /// A room's topic: every player of the room hears it.
    pub fn topic(&self, room: &str) -> String {
        format!("{}{room}", self.topic)
    }

    /// A player's own destination in a room.
    pub fn private(&self, room: &str, player: &str) -> String {
        format!("{}{room}.player.{player}", self.topic)
    }

    /// Whether `destination` belongs to a room (an inbox or a topic).
    pub fn in_rooms(&self, destination: &str) -> bool {
        [&self.input, &self.consume, &self.topic]
            .iter()
            .any(|prefix| destination.starts_with(prefix.as_str()))
    }

    /// The prefix of every room inbox's queue, which the embedded broker manages.
    pub fn inbox_prefix(&self) -> &str {
        &self.consume
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_names_keep_rooms_apart() {
        let names = Names::embedded();
        assert_eq!(names.inbox("r1"), "/queue/room.r1");
        assert_eq!(names.private("r1", "ann"), "/topic/room.r1.player.ann");
        assert!(names.in_rooms("/topic/room.r1"));
        assert!(!names.in_rooms("/queue/chat"));
    }
}
