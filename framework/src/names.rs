//! Destination names and the broker users the framework reserves: the one place that
//! knows how a room's inbox, topic and private destinations are spelled on each broker,
//! and how a worker tells who sent an inbox message.

/// The sender of control messages the lobby puts in a room's inbox.
pub const LOBBY_USER: &str = "$lobby";
/// The login room workers use with the embedded broker, and so the sender of what they
/// put in their own inbox (ticks).
pub const WORKER_USER: &str = "$worker";
/// The sender of what the broker itself publishes (the notice of inputs dropped over a
/// player's rate).
pub const BROKER_USER: &str = "$broker";
/// The login for a general-purpose client on loopback, as RabbitMQ's default.
pub const GUEST: &str = "guest";
/// The RabbitMQ topic exchange that routes players' inputs to room inboxes.
pub const INPUT_EXCHANGE: &str = "gsl.inputs";

/// FNV-1a of a name: the same in every process and build, unlike the standard library's
/// hasher; what spreads rooms over workers and players over broker nodes.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How a worker learns who sent an inbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// The broker stamps the sender's login as `user-id` (the embedded broker).
    UserId,
    /// The sender is the last part of the routing key, which RabbitMQ's topic
    /// authorisation lets only that sender use: `/exchange/gsl.inputs/room.ID.SENDER`.
    RoutingKey,
}

/// How room destinations are spelled on one kind of broker. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Players SEND inputs to `{input}{room}` (embedded) or `{input}{room}.{player}`.
    input: String,
    /// The worker SUBSCRIBEs to `{consume}{room}`.
    consume: String,
    /// The room topic is `{topic}{room}`; a player's own `{topic}{room}.player.{player}`.
    topic: String,
    sender: Sender,
}

impl Names {
    /// The embedded broker's names: `/queue/room.ID` (inbox), `/topic/room.ID` (topic);
    /// the broker stamps who sent what.
    pub fn embedded() -> Names {
        Names {
            input: "/queue/room.".into(),
            consume: "/queue/room.".into(),
            topic: "/topic/room.".into(),
            sender: Sender::UserId,
        }
    }

    /// RabbitMQ's names: players SEND to `/exchange/gsl.inputs/room.ID.PLAYER`, which
    /// routes to the queue `gsl.room.ID` that the worker reads at `/amq/queue/gsl.room.ID`;
    /// outputs go to `/topic/room.ID` (the `amq.topic` exchange).
    pub fn rabbitmq() -> Names {
        Names {
            input: format!("/exchange/{INPUT_EXCHANGE}/room."),
            consume: "/amq/queue/gsl.room.".into(),
            topic: "/topic/room.".into(),
            sender: Sender::RoutingKey,
        }
    }

    /// Where `sender` (a player, or [`WORKER_USER`] for ticks) SENDs a room's inputs.
    pub fn inbox(&self, room: &str, sender: &str) -> String {
        match self.sender {
            Sender::UserId => format!("{}{room}", self.input),
            Sender::RoutingKey => format!("{}{room}.{sender}", self.input),
        }
    }

    /// Where a room's worker consumes its inbox.
    pub fn inbox_queue(&self, room: &str) -> String {
        format!("{}{room}", self.consume)
    }

    /// A room's topic: every player of the room hears it.
    pub fn topic(&self, room: &str) -> String {
        // `concat`, not `format!`: a room's worker names a destination for each output.
        [self.topic.as_str(), room].concat()
    }

    /// A player's own destination in a room.
    pub fn private(&self, room: &str, player: &str) -> String {
        [self.topic.as_str(), room, ".player.", player].concat()
    }

    /// The STOMP login a player of `room` uses: the player's name on the embedded
    /// broker; `PLAYER@ROOM` on RabbitMQ, whose auth backend is told only the login
    /// when it asks what a connection may do.
    pub fn login(&self, room: &str, player: &str) -> String {
        match self.sender {
            Sender::UserId => player.to_owned(),
            Sender::RoutingKey => format!("{player}@{room}"),
        }
    }

    /// Who sent an inbox message of `room`, given its `user-id` and `destination`
    /// headers; `None` if it cannot be told.
    pub fn sender<'a>(
        &self,
        room: &str,
        user_id: Option<&'a str>,
        destination: Option<&'a str>,
    ) -> Option<&'a str> {
        match self.sender {
            Sender::UserId => user_id,
            Sender::RoutingKey => destination?
                .strip_prefix(self.input.as_str())?
                .strip_prefix(room)?
                .strip_prefix('.'),
        }
    }

    /// When the broker queued an inbox message (ms since the epoch), from its
    /// `timestamp` header: the embedded broker stamps it (a sender's own is dropped).
    /// RabbitMQ records no time a sender could not set itself: `None` there.
    pub fn queued_at(&self, timestamp: Option<&str>) -> Option<u64> {
        match self.sender {
            Sender::UserId => timestamp?.parse().ok(),
            Sender::RoutingKey => None,
        }
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

/// A RabbitMQ player login `PLAYER@ROOM` ([`Names::login`]), split into player and room
/// (a spectator's too: its name is [`is_spectator`]'s).
pub fn player_login(username: &str) -> Option<(&str, &str)> {
    let (player, room) = username.rsplit_once('@')?;
    let name = crate::proto::valid_name(player) || is_spectator(player);
    (name && !room.is_empty() && !room.contains('.')).then_some((player, room))
}

/// How a spectator's ticket's join starts (a player's join is hex).
pub const SPECTATOR_JOIN: &str = "watch-";

/// Whether `name` is a spectator's: `~` and a valid name, which no player can have.
pub fn is_spectator(name: &str) -> bool {
    name.strip_prefix('~').is_some_and(crate::proto::valid_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_names_keep_rooms_apart() {
        let names = Names::embedded();
        assert_eq!(names.inbox("r1", "ann"), "/queue/room.r1");
        assert_eq!(names.private("r1", "ann"), "/topic/room.r1.player.ann");
        assert_eq!(
            names.sender("r1", Some("ann"), Some("/queue/room.r1")),
            Some("ann")
        );
        assert!(names.in_rooms("/topic/room.r1"));
        assert!(!names.in_rooms("/queue/chat"));
    }

    #[test]
    fn on_rabbitmq_the_routing_key_names_the_sender() {
        let names = Names::rabbitmq();
        let inbox = names.inbox("r1", "ann");
        assert_eq!(inbox, "/exchange/gsl.inputs/room.r1.ann");
        assert_eq!(names.sender("r1", Some("bob"), Some(&inbox)), Some("ann"));
        assert_eq!(
            names.sender("r2", None, Some(&inbox)),
            None,
            "another room's key"
        );
        assert_eq!(
            names.sender("r1", Some("ann"), None),
            None,
            "user-id is not trusted"
        );
        assert_eq!(names.login("r1", "ann"), "ann@r1");
    }
}
