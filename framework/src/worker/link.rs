//! A room worker's connection to the broker, in one of two protocols:
//! - STOMP, to the embedded broker (in memory) or to RabbitMQ over TLS;
//! - AMQP 0-9-1, to RabbitMQ over plain TCP. RabbitMQ's STOMP adapter renders and parses
//!   every frame in Erlang and relays it through an AMQP client inside the node; a worker
//!   that speaks AMQP skips both (`docs/benchmarks.md`, "The worker on AMQP").
//!
//! Either way the worker sees the same things: the inbox's deliveries (sender, time,
//! body), each acked cumulatively; outputs published by STOMP destination name; and a
//! barrier that returns once the broker has everything published before it.
//!
//! When the broker runs in this process, the worker's STOMP connection is in memory, its
//! outputs are published by a method call (at once, in the order made, with no hop to
//! the connection's task), and its room's inputs can be applied where the broker
//! delivers them (see `shared.rs`): those are acked by their tag ([`Ack::Inline`]).

use super::amqp;
use crate::admin::publish_json;
use crate::broker::Broker;
use crate::names::WORKER_USER;
use crate::stomp::{AckMode, Client, Command, Frame, Message, SubscribeOptions, Subscription};
use crate::{Error, Result};
use tokio::sync::mpsc;

/// The worker's connection: cheap to clone (the courier and the saver share it).
#[derive(Clone)]
pub(super) enum Link {
    /// STOMP (RabbitMQ over TLS).
    Stomp(Client),
    /// STOMP in memory to the broker of this process, and that broker.
    InProcess(Client, Broker),
    /// AMQP 0-9-1 to RabbitMQ.
    Amqp(amqp::Connection),
}

/// What an ack names: an input and every one before it on the subscription.
pub(super) enum Ack {
    /// A delivery the worker received.
    Delivery(Delivery),
    /// An input the broker of this process had the room apply where it delivered it, by
    /// its tag (a MESSAGE frame's `ack` header would have given the same).
    Inline(u64),
}

/// A subscription to the room's inbox.
pub(super) enum Inbox {
    /// Over STOMP.
    Stomp(Subscription),
    /// Over AMQP: the consumer's deliveries, and its connection.
    Amqp(mpsc::UnboundedReceiver<amqp::Delivery>, amqp::Connection),
}

/// One message from the inbox.
pub(super) enum Delivery {
    /// A STOMP MESSAGE.
    Stomp(Message),
    /// An AMQP delivery: its tag, its destination as STOMP names it
    /// (`/exchange/EXCHANGE/KEY`), its body.
    Amqp {
        /// What acks it (and every delivery before it).
        tag: u64,
        /// `/exchange/EXCHANGE/ROUTING_KEY`, as RabbitMQ's STOMP adapter would name it.
        destination: String,
        /// The body.
        body: Vec<u8>,
    },
}

impl Delivery {
    /// The `user-id` the broker stamped (the embedded broker's; RabbitMQ names the
    /// sender in the routing key instead).
    pub(super) fn user_id(&self) -> Option<&str> {
        match self {
            Delivery::Stomp(m) => m.header("user-id"),
            Delivery::Amqp { .. } => None,
        }
    }

    /// Where it was sent.
    pub(super) fn destination(&self) -> Option<&str> {
        match self {
            Delivery::Stomp(m) => m.header("destination"),
            Delivery::Amqp { destination, .. } => Some(destination),
        }
    }

    /// The broker's `timestamp` header (the embedded broker's).
    pub(super) fn timestamp(&self) -> Option<&str> {
        match self {
            Delivery::Stomp(m) => m.header("timestamp"),
            Delivery::Amqp { .. } => None,
        }
    }

    /// The body.
    pub(super) fn body(&self) -> &[u8] {
        match self {
            Delivery::Stomp(m) => m.body(),
            Delivery::Amqp { body, .. } => body,
        }
    }
}

impl Link {
    /// Connects over AMQP to the first of `urls` (`amqp://HOST:PORT`) that answers, as
    /// `login` on `vhost`, with heart-beats every `heartbeat` (whole seconds, at least 1).
    pub(super) async fn amqp(
        urls: &[String],
        login: &str,
        passcode: &str,
        vhost: &str,
        heartbeat: std::time::Duration,
    ) -> Result<Link> {
        let mut last = None;
        for url in urls {
            let options = amqp::Options {
                address: url.strip_prefix("amqp://").unwrap_or(url),
                login,
                passcode,
                vhost,
                heartbeat,
            };
            match amqp::Connection::open(options).await {
                Ok(connection) => return Ok(Link::Amqp(connection)),
                Err(e) => {
                    tracing::debug!(%url, "AMQP connection failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| amqp::closed("no AMQP URL to connect to".into())))
    }

    /// Publishes `body` (JSON) to a STOMP `destination`, without waiting (in process: at
    /// once).
    pub(super) fn publish(&self, destination: String, body: Vec<u8>) -> Result<()> {
        match self {
            Link::InProcess(_, broker) => publish_json(broker, &destination, WORKER_USER, body),
            Link::Stomp(client) => {
                let frame = Frame::new(Command::Send)
                    .with_header("destination", destination)
                    .with_header("content-type", "application/json")
                    .with_body(body);
                Ok(client.post(frame)?)
            }
            Link::Amqp(amqp) => {
                let (exchange, key) = amqp_address(&destination);
                amqp.publish(exchange, key, &body)
            }
        }
    }

    /// Sends the worker's own message (a tick) to its room's inbox, without waiting.
    pub(super) fn send(&self, destination: &str, body: Vec<u8>) -> Result<()> {
        match self {
            Link::Stomp(client) | Link::InProcess(client, _) => {
                Ok(client.send_nowait(destination, body)?)
            }
            Link::Amqp(_) => self.publish(destination.to_owned(), body),
        }
    }

    /// Returns once the broker has everything published before.
    pub(super) async fn flush(&self) -> Result<()> {
        match self {
            Link::Stomp(client) | Link::InProcess(client, _) => Ok(client.flush().await?),
            Link::Amqp(amqp) => amqp.barrier().await,
        }
    }

    /// Acks an input and every one before it.
    pub(super) fn ack(&self, ack: &Ack) -> Result<()> {
        match (self, ack) {
            (
                Link::Stomp(client) | Link::InProcess(client, _),
                Ack::Delivery(Delivery::Stomp(m)),
            ) => Ok(client.ack(m)?),
            (Link::InProcess(client, _), Ack::Inline(tag)) => {
                let mut digits = itoa::Buffer::new();
                let frame = Frame::new(Command::Ack).with_header("id", digits.format(*tag));
                Ok(client.post(frame)?)
            }
            (Link::Amqp(amqp), Ack::Delivery(Delivery::Amqp { tag, .. })) => amqp.ack(*tag),
            _ => Err(Error::Protocol(
                "a delivery acked on a connection of another protocol".into(),
            )),
        }
    }

    /// Subscribes to the inbox queue (its STOMP name), acking by hand, with at most
    /// `prefetch` deliveries unacked. A failing worker's subscription ends with its
    /// connection, never by itself: its unacked inputs go back in line at once.
    /// `inline` names a consumer offered to the broker of this process
    /// ([`Broker::offer_inline`]) that takes the inputs it can where they are delivered.
    pub(super) async fn subscribe(
        &self,
        queue: &str,
        prefetch: u16,
        inline: Option<&str>,
    ) -> Result<Inbox> {
        match self {
            Link::Stomp(client) | Link::InProcess(client, _) => {
                let headers = match (self, inline) {
                    (Link::InProcess(..), Some(token)) => vec![("inline".into(), token.into())],
                    _ => Vec::new(),
                };
                let options = SubscribeOptions {
                    ack: AckMode::Client,
                    prefetch: Some(prefetch.into()),
                    headers,
                };
                let mut sub = client.subscribe(queue, options).await?;
                sub.end_with_connection();
                Ok(Inbox::Stomp(sub))
            }
            Link::Amqp(amqp) => {
                let (_, queue) = amqp_address(queue);
                let deliveries = amqp.consume(queue, CONSUMER_TAG, prefetch).await?;
                Ok(Inbox::Amqp(deliveries, amqp.clone()))
            }
        }
    }

    /// Why the connection closed, if it did.
    pub(super) fn closed(&self) -> Option<String> {
        match self {
            Link::Stomp(client) | Link::InProcess(client, _) => client.closed(),
            Link::Amqp(amqp) => amqp.closed(),
        }
    }

    /// Closes the connection: unacked deliveries go back in line.
    pub(super) async fn disconnect(&self) {
        match self {
            Link::Stomp(client) | Link::InProcess(client, _) => {
                let _ = client.disconnect().await;
            }
            Link::Amqp(amqp) => amqp.close().await,
        }
    }
}

impl Inbox {
    /// The next delivery, or `None` once the subscription or its connection ended.
    pub(super) async fn recv(&mut self) -> Option<Delivery> {
        match self {
            Inbox::Stomp(sub) => sub.recv().await.map(Delivery::Stomp),
            Inbox::Amqp(deliveries, _) => {
                let d = deliveries.recv().await?;
                Some(Delivery::Amqp {
                    tag: d.tag,
                    destination: format!("/exchange/{}/{}", d.exchange, d.routing_key),
                    body: d.body,
                })
            }
        }
    }

    /// Ends the subscription, once the broker has everything published before it (the
    /// room's last outputs go out before its inbox is deleted).
    pub(super) async fn unsubscribe(self) -> Result<()> {
        match self {
            Inbox::Stomp(sub) => Ok(sub.unsubscribe().await?),
            // Answered in order, after every publish before it.
            Inbox::Amqp(_, amqp) => amqp.cancel(CONSUMER_TAG).await,
        }
    }
}

/// The worker's consumer tag on its channel (one inbox per connection).
const CONSUMER_TAG: &str = "gsl-worker";

/// A STOMP destination as RabbitMQ's STOMP adapter maps it to AMQP: `(exchange,
/// routing key)` to publish to, or for a queue, `("", queue)`.
pub(super) fn amqp_address(destination: &str) -> (&str, &str) {
    if let Some(key) = destination.strip_prefix("/topic/") {
        ("amq.topic", key)
    } else if let Some(rest) = destination.strip_prefix("/exchange/") {
        rest.split_once('/').unwrap_or((rest, ""))
    } else if let Some(queue) = destination
        .strip_prefix("/amq/queue/")
        .or_else(|| destination.strip_prefix("/queue/"))
    {
        ("", queue)
    } else {
        ("", destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stomp_destinations_map_to_what_rabbitmqs_adapter_routes_them_to() {
        assert_eq!(amqp_address("/topic/room.r1"), ("amq.topic", "room.r1"));
        assert_eq!(
            amqp_address("/topic/room.r1.player.ann"),
            ("amq.topic", "room.r1.player.ann")
        );
        assert_eq!(
            amqp_address("/exchange/gsl.inputs/room.r1.$worker"),
            ("gsl.inputs", "room.r1.$worker")
        );
        assert_eq!(amqp_address("/amq/queue/gsl.room.r1"), ("", "gsl.room.r1"));
        assert_eq!(amqp_address("/queue/q"), ("", "q"));
        assert_eq!(amqp_address("/exchange/x"), ("x", ""));
    }
}
