//! The broker-admin seam: what the framework asks of a broker beyond STOMP. Creating and
//! deleting a room's inbox, putting the lobby's control messages in it, and telling
//! clients and workers where to connect. The embedded broker implements it here. The data
//! plane (inputs, outputs, acks) is STOMP, but for a worker on RabbitMQ without TLS, which
//! speaks AMQP 0-9-1 (`worker/amqp.rs`).

use crate::broker::{Broker, QueueOptions};
use crate::names::{fnv1a, Names, LOBBY_USER};
use crate::policy::RoomPolicy;
use crate::{Error, Result};
use futures_util::future::BoxFuture;

/// Where clients and workers reach the broker: one URL of each kind per broker node (one
/// node for the embedded broker). Join tickets carry the players' two lists, in an order
/// of their own ([`Endpoints::spread`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// STOMP over WebSocket, for players: `ws://HOST:PORT/ws`, one per node.
    pub ws_urls: Vec<String>,
    /// STOMP over TCP, for players: `tcp://HOST:PORT`, one per node.
    pub tcp_urls: Vec<String>,
    /// STOMP for room workers and the lobby's own consumers, one per node.
    pub worker_urls: Vec<String>,
    /// AMQP 0-9-1 for room workers, `amqp://HOST:PORT` one per node, when the broker is
    /// RabbitMQ and workers need no TLS: they then speak AMQP rather than `worker_urls`'
    /// STOMP. Empty otherwise.
    pub worker_amqp_urls: Vec<String>,
    /// The virtual host (the STOMP CONNECT `host` header).
    pub vhost: String,
}

impl Endpoints {
    /// A broker of one node.
    pub fn one(ws_url: String, tcp_url: String, worker_url: String, vhost: String) -> Endpoints {
        Endpoints {
            ws_urls: vec![ws_url],
            tcp_urls: vec![tcp_url],
            worker_urls: vec![worker_url],
            worker_amqp_urls: Vec::new(),
            vhost,
        }
    }

    /// `urls` in the order that `key` (a player, a room) tries them: every node, starting
    /// at one chosen by a hash of the key, so that keys spread evenly over the nodes and
    /// each key starts at the same node every time while it is up.
    pub fn spread(urls: &[String], key: &str) -> Vec<String> {
        if urls.is_empty() {
            return Vec::new();
        }
        let start = (fnv1a(key.as_bytes()) % urls.len() as u64) as usize;
        urls[start..]
            .iter()
            .chain(&urls[..start])
            .cloned()
            .collect()
    }
}

/// A room inbox as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxState {
    /// Connected consumers (the active worker and any standing by).
    pub consumers: u64,
    /// Messages in it, delivered or not, that no one has acked.
    pub messages: u64,
    /// Of those, the ones delivered to the worker and not yet acked (applied, not yet
    /// in a saved checkpoint).
    pub unacked: u64,
}

/// A broker's control plane, as the room service and the room workers use it.
pub trait BrokerAdmin: Send + Sync + 'static {
    /// How room destinations are spelled on this broker.
    fn names(&self) -> &Names;

    /// Where clients and workers connect.
    fn endpoints(&self) -> &Endpoints;

    /// Creates a room's inbox: a durable queue with one active consumer at a time, which
    /// players can write to but not create.
    /// The inbox holds `policy.inbox_bound` inputs at most (the broker's own bound if
    /// unset); on the embedded broker its receipts wait for the disk if `policy.fsync`.
    fn create_inbox<'a>(
        &'a self,
        room: &'a str,
        policy: &'a RoomPolicy,
    ) -> BoxFuture<'a, Result<()>>;

    /// Deletes a room's inbox and whatever is still in it; deleting twice is no error.
    fn delete_inbox<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Puts a control message (JSON) from the lobby in a room's inbox, in line with the
    /// players' inputs, with `user-id` [`LOBBY_USER`], which no player can forge.
    fn publish_control<'a>(&'a self, room: &'a str, body: String) -> BoxFuture<'a, Result<()>> {
        self.publish_as(room, LOBBY_USER, body)
    }

    /// Puts a message (JSON) in a room's inbox as `sender` sends it: the lobby's
    /// controls ([`LOBBY_USER`]), or the inspector's inputs as a test player.
    fn publish_as<'a>(
        &'a self,
        room: &'a str,
        sender: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<()>>;

    /// Closes the connections `player` of `room` has open (its ticket was revoked);
    /// returns how many.
    fn disconnect<'a>(&'a self, room: &'a str, player: &'a str) -> BoxFuture<'a, Result<usize>>;

    /// Open client connections, where the broker can tell.
    fn connections(&self) -> Option<usize>;

    /// How many consumers a room's inbox has and how many messages wait in it, where
    /// the broker can tell (`None`: it cannot).
    fn inbox_state<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Option<InboxState>>> {
        let _ = room;
        Box::pin(async { Ok(None) })
    }

    /// Messages waiting in queues, where the broker can tell.
    fn queued(&self) -> Option<usize> {
        None
    }

    /// What the broker counted (refusals, dropped inputs, journal flushes), where it
    /// runs in this process.
    fn stats(&self) -> Option<crate::broker::Stats> {
        None
    }

    /// The broker, when it runs in this process: workers then connect to it in memory
    /// instead of by a socket to [`Endpoints::worker_urls`], publish to it directly, and
    /// have it apply their rooms' inputs where it delivers them.
    fn in_process(&self) -> Option<Broker> {
        None
    }
}

/// Publishes JSON `body` to `destination` on the broker of this process, as `sender`
/// would (its `user-id`): the lobby's control messages and a worker's outputs.
pub(crate) fn publish_json(
    broker: &Broker,
    destination: &str,
    sender: &str,
    body: impl Into<bytes::Bytes>,
) -> Result<()> {
    let headers = vec![
        ("user-id".to_owned(), sender.to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    broker
        .publish(destination, headers, body)
        .map_err(|r| Error::Refused {
            message: r.message,
            detail: r.detail,
        })
}

/// The embedded broker as a [`BrokerAdmin`]: every call is a method call in process.
#[derive(Debug, Clone)]
pub struct EmbeddedAdmin {
    broker: Broker,
    names: Names,
    endpoints: Endpoints,
}

impl EmbeddedAdmin {
    /// The admin of `broker`, reached at `endpoints`.
    pub fn new(broker: Broker, endpoints: Endpoints) -> EmbeddedAdmin {
        EmbeddedAdmin {
            broker,
            names: Names::embedded(),
            endpoints,
        }
    }

    /// The broker itself.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }
}

impl BrokerAdmin for EmbeddedAdmin {
    fn names(&self) -> &Names {
        &self.names
    }

    fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    fn create_inbox<'a>(
        &'a self,
        room: &'a str,
        policy: &'a RoomPolicy,
    ) -> BoxFuture<'a, Result<()>> {
        let queue = self.names.inbox_queue(room);
        let options = QueueOptions {
            single_active: true,
            max_len: policy.inbox_bound,
            fsync: Some(policy.fsync),
        };
        Box::pin(async move {
            self.broker.declare_queue(&queue, options);
            Ok(())
        })
    }

    fn delete_inbox<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<()>> {
        let queue = self.names.inbox_queue(room);
        Box::pin(async move {
            self.broker.delete_queue(&queue);
            Ok(())
        })
    }

    fn publish_as<'a>(
        &'a self,
        room: &'a str,
        sender: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<()>> {
        let inbox = self.names.inbox(room, sender);
        Box::pin(async move { publish_json(&self.broker, &inbox, sender, body) })
    }

    fn disconnect<'a>(&'a self, room: &'a str, player: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            Ok(self
                .broker
                .kick_where(|p| p.name == player && p.tag.as_deref() == Some(room)))
        })
    }

    fn connections(&self) -> Option<usize> {
        Some(self.broker.session_count())
    }

    fn inbox_state<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Option<InboxState>>> {
        let stats = self.broker.queue_stats(&self.names.inbox_queue(room));
        Box::pin(async move {
            Ok(stats.map(|q| InboxState {
                consumers: q.consumers as u64,
                messages: (q.ready + q.unacked) as u64,
                unacked: q.unacked as u64,
            }))
        })
    }

    fn queued(&self) -> Option<usize> {
        Some(self.broker.queued())
    }

    fn stats(&self) -> Option<crate::broker::Stats> {
        Some(self.broker.stats())
    }

    fn in_process(&self) -> Option<Broker> {
        Some(self.broker.clone())
    }
}
