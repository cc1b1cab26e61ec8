//! RabbitMQ as the broker (cluster mode): the [`BrokerAdmin`] that declares room inboxes
//! through RabbitMQ's management HTTP API, and the settings read from the `--broker` URL.
//!
//! A room's inbox is the durable queue `gsl.room.ID` with `x-single-active-consumer`
//! (optionally a quorum queue) and a length bound, bound to the topic exchange
//! `gsl.inputs` with the key `room.ID.*`. Players SEND to
//! `/exchange/gsl.inputs/room.ID.PLAYER`: RabbitMQ's topic authorisation (answered by the
//! lobby's `/rabbitmq/auth` routes) lets a player use only its own key, so the key names
//! the sender and no player can write to another room or pass for another player. A SEND
//! to a queue directly would be a write to the default exchange, which players may not use.

use crate::admin::{BrokerAdmin, Endpoints, InboxState};
use crate::names::{fnv1a, is_spectator, player_login, Names, INPUT_EXCHANGE};
use crate::policy::RoomPolicy;
use crate::{Error, Result};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the `--broker` value says: one node's URL, `amqp://USER:PASS@HOST:PORT/VHOST?…`,
/// or the URLs of every node of a RabbitMQ cluster separated by commas. Each URL's
/// query may set that node's `stomp_port` (61613), `stomp_tls_port` (none: workers use
/// STOMP over TLS there when set), `web_stomp_port` (15674), `management_port` (15672)
/// and `public_host` (the host players connect to; HOST); and the cluster's `quorum`
/// (`true` for quorum inboxes) and `max_length` (inputs an inbox holds, 10000), which
/// with the user, password and vhost must be the same in every URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    /// The user the lobby and workers log in as (STOMP and management API).
    pub user: String,
    /// Its password.
    pub password: String,
    /// The virtual host.
    pub vhost: String,
    /// Whether room inboxes are quorum queues (replicated over a RabbitMQ cluster).
    pub quorum: bool,
    /// Inputs one inbox holds at most; RabbitMQ refuses more.
    pub max_length: u32,
    /// The nodes, in the order given: a lobby asks the one that answered last, a worker
    /// starts at the node its room picks; each goes on to the next that answers.
    pub nodes: Vec<RabbitNode>,
}

/// Where one RabbitMQ node listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitNode {
    /// Where it listens, for the lobby and the workers.
    pub host: String,
    /// The host players are told to connect to.
    pub public_host: String,
    /// STOMP over TCP.
    pub stomp_port: u16,
    /// STOMP over TLS, which workers then use (`ssl://`, with the `tls` feature):
    /// RabbitMQ's `stomp.listeners.ssl` port, if it has one.
    pub stomp_tls_port: Option<u16>,
    /// STOMP over WebSocket (`/ws`).
    pub web_stomp_port: u16,
    /// The management HTTP API.
    pub management_port: u16,
    /// AMQP 0-9-1, which workers speak when the node has no `stomp_tls_port`.
    pub amqp_port: u16,
}

impl RabbitConfig {
    /// Reads a `--broker` value.
    pub fn parse(broker: &str) -> Result<RabbitConfig> {
        let mut config: Option<RabbitConfig> = None;
        for url in nodes(broker) {
            let one = RabbitConfig::parse_node(url)?;
            match &mut config {
                None => config = Some(one),
                Some(config) => {
                    fn shared(c: &RabbitConfig) -> (&str, &str, &str, bool, u32) {
                        (&c.user, &c.password, &c.vhost, c.quorum, c.max_length)
                    }
                    if shared(config) != shared(&one) {
                        return Err(Error::Url {
                            url: redact(broker),
                            why: "the nodes of one cluster need the same user, password, vhost, quorum and max_length in every URL".into(),
                        });
                    }
                    config.nodes.extend(one.nodes);
                }
            }
        }
        Ok(config.expect("nodes() names one at least"))
    }

    /// Reads one node's URL.
    fn parse_node(broker: &str) -> Result<RabbitConfig> {
        let bad = |why: &str| Error::Url {
            url: redact(broker),
            why: why.into(),
        };
        let url = url::Url::parse(broker).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "amqp" {
            return Err(bad(
                "cluster mode takes RabbitMQ URLs: amqp://USER:PASS@HOST:PORT/VHOST, several separated by commas for a cluster's nodes",
            ));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let host = url.host_str().ok_or_else(|| bad("no host"))?.to_owned();
        let vhost = match url.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            v => decode(v),
        };
        let mut node = RabbitNode {
            public_host: host.clone(),
            host,
            stomp_port: 61613,
            stomp_tls_port: None,
            web_stomp_port: 15674,
            management_port: 15672,
            amqp_port: url.port().unwrap_or(5672),
        };
        let (mut quorum, mut max_length) = (false, 10_000);
        for (key, value) in url.query_pairs() {
            let port = || {
                value
                    .parse::<u16>()
                    .map_err(|_| bad(&format!("{key} must be a port number")))
            };
            match &*key {
                "stomp_port" => node.stomp_port = port()?,
                "stomp_tls_port" => node.stomp_tls_port = Some(port()?),
                "web_stomp_port" => node.web_stomp_port = port()?,
                "management_port" => node.management_port = port()?,
                "public_host" => node.public_host = value.into_owned(),
                "quorum" => {
                    quorum = match &*value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("quorum must be true or false")),
                    }
                }
                "max_length" => {
                    max_length = value
                        .parse()
                        .map_err(|_| bad("max_length must be a whole number"))?;
                }
                other => {
                    return Err(bad(&format!(
                        "unknown option {other:?}; known: stomp_port, stomp_tls_port, web_stomp_port, management_port, public_host, quorum, max_length"
                    )))
                }
            }
        }
        Ok(RabbitConfig {
            user: match url.username() {
                "" => "guest".to_owned(),
                u => decode(u),
            },
            password: url.password().map(decode).unwrap_or_else(|| "guest".into()),
            vhost,
            quorum,
            max_length,
            nodes: vec![node],
        })
    }

    /// Where players and workers connect: each node's URLs, in the nodes' order.
    pub fn endpoints(&self) -> Endpoints {
        let each = |url: fn(&RabbitNode) -> String| self.nodes.iter().map(url).collect();
        Endpoints {
            ws_urls: each(|n| format!("ws://{}:{}/ws", n.public_host, n.web_stomp_port)),
            tcp_urls: each(|n| format!("tcp://{}:{}", n.public_host, n.stomp_port)),
            worker_urls: each(|n| match n.stomp_tls_port {
                Some(port) => format!("ssl://{}:{port}", n.host),
                None => format!("tcp://{}:{}", n.host, n.stomp_port),
            }),
            // Workers on TLS keep to STOMP over TLS: AMQP here is plain TCP.
            worker_amqp_urls: match self.nodes.iter().any(|n| n.stomp_tls_port.is_some()) {
                true => Vec::new(),
                false => each(|n| format!("amqp://{}:{}", n.host, n.amqp_port)),
            },
            vhost: self.vhost.clone(),
        }
    }
}

/// The queue RabbitMQ's connection events reach the lobbies through: durable, one
/// active consumer at a time, bound to the event exchange (`rabbitmq_event_exchange`)
/// for `connection.created` and `connection.closed`.
pub const PRESENCE_QUEUE: &str = "gsl.presence";

/// A player's connection to RabbitMQ opening or closing, as its event exchange tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Connection `pid` of `player` of `room` opened.
    Opened {
        /// The connection's Erlang pid: what its close names.
        pid: String,
        /// The room.
        room: String,
        /// The player.
        player: String,
    },
    /// Connection `pid` closed (the event names no user).
    Closed {
        /// The connection's pid.
        pid: String,
    },
}

impl ConnectionEvent {
    /// The event a message of [`PRESENCE_QUEUE`] carries, given its headers; `None` for
    /// connections that are not players' (the lobby's, workers', guests').
    pub fn parse<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<ConnectionEvent> {
        let pid = header("pid")?.to_owned();
        match header("user") {
            Some(user) => {
                let (player, room) = player_login(user)?;
                if is_spectator(player) {
                    return None; // a spectator has no seat to keep
                }
                Some(ConnectionEvent::Opened {
                    pid,
                    room: room.to_owned(),
                    player: player.to_owned(),
                })
            }
            None => header("destination")
                .is_some_and(|d| d.ends_with("connection.closed"))
                .then_some(ConnectionEvent::Closed { pid }),
        }
    }
}

/// The URL with its password hidden, for messages and logs.
pub fn redact(url: &str) -> String {
    // Each node's, where several are named.
    let one = |url: &str| match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    };
    nodes(url)
        .into_iter()
        .map(one)
        .collect::<Vec<_>>()
        .join(",")
}

/// The node URLs a `--broker` value names: split at each comma that a URL follows
/// (`SCHEME://`, spaces around it allowed); a comma inside a URL (in a password, say)
/// stays in it.
fn nodes(broker: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        rest.split_once("://").is_some_and(|(scheme, _)| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
    };
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, _) in broker.match_indices(',') {
        if starts_url(broker[at + 1..].trim_start()) {
            parts.push(broker[start..at].trim());
            start = at + 1;
        }
    }
    parts.push(broker[start..].trim());
    parts
}

/// RabbitMQ's control plane, through its management HTTP API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RabbitAdmin {
    config: RabbitConfig,
    names: Names,
    endpoints: Endpoints,
    http: reqwest::Client,
    /// Each node's management API, in the nodes' order.
    apis: Vec<String>,
    /// The node whose API answered last: where the next call goes first.
    current: Arc<AtomicUsize>,
}

impl RabbitAdmin {
    /// Checks that RabbitMQ's management API answers with these credentials, and
    /// declares the input exchange.
    pub async fn connect(config: RabbitConfig) -> Result<RabbitAdmin> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // A node that is down on a real network drops the SYN: the next one is asked
            // after this, not after the whole timeout.
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Protocol(format!("cannot make an HTTP client: {e}")))?;
        let admin = RabbitAdmin {
            apis: config
                .nodes
                .iter()
                .map(|n| format!("http://{}:{}/api", n.host, n.management_port))
                .collect(),
            current: Arc::default(),
            names: Names::rabbitmq(),
            endpoints: config.endpoints(),
            config,
            http,
        };
        admin.call(reqwest::Method::GET, "/overview", None).await.map_err(|e| {
            Error::Protocol(format!(
                "RabbitMQ's management API does not answer at {} ({e}); is the rabbitmq_management plugin enabled (rabbitmq-plugins enable rabbitmq_management), and are the user and password right?",
                admin.apis.join(", ")
            ))
        })?;
        let exchange = format!("/exchanges/{}/{INPUT_EXCHANGE}", admin.vhost());
        admin
            .call(
                reqwest::Method::PUT,
                &exchange,
                Some(json!({ "type": "topic", "durable": true })),
            )
            .await?;
        Ok(admin)
    }

    /// Declares [`PRESENCE_QUEUE`] and binds it to RabbitMQ's event exchange; `false`
    /// (and nothing declared) when the exchange is missing: the `rabbitmq_event_exchange`
    /// plugin is off, and rooms cannot learn who is connected.
    pub async fn declare_presence_queue(&self) -> Result<bool> {
        let vhost = self.vhost();
        let exchange = self
            .call(
                reqwest::Method::GET,
                &format!("/exchanges/{vhost}/amq.rabbitmq.event"),
                None,
            )
            .await;
        match exchange {
            Err(Error::Refused { message, .. }) if message.contains("404") => return Ok(false),
            other => other.map(drop)?,
        }
        let classic = json!({ "x-single-active-consumer": true, "x-max-length": 1_000_000 });
        let mut arguments = classic.clone();
        if self.config.quorum {
            // On a cluster the events outlive the node that holds them.
            arguments["x-queue-type"] = "quorum".into();
        }
        let path = format!("/queues/{vhost}/{PRESENCE_QUEUE}");
        let declare = |arguments: &Value| json!({ "durable": true, "auto_delete": false, "arguments": arguments });
        match self
            .call(reqwest::Method::PUT, &path, Some(declare(&arguments)))
            .await
        {
            // Declared classic by an earlier build: RabbitMQ keeps a queue's type. It
            // carries on as it is (delete it, with no lobby running, to make it quorum).
            Err(Error::Refused { detail, .. }) if detail.contains("inequivalent arg") => {
                tracing::warn!("{PRESENCE_QUEUE} is a classic queue from an earlier build; it stays one (on one node)");
                self.call(reqwest::Method::PUT, &path, Some(declare(&classic)))
                    .await?;
            }
            other => other.map(drop)?,
        }
        for key in ["connection.created", "connection.closed"] {
            self.call(
                reqwest::Method::POST,
                &format!("/bindings/{vhost}/e/amq.rabbitmq.event/q/{PRESENCE_QUEUE}"),
                Some(json!({ "routing_key": key })),
            )
            .await?;
        }
        Ok(true)
    }

    /// The settings.
    pub fn config(&self) -> &RabbitConfig {
        &self.config
    }

    fn vhost(&self) -> String {
        url::form_urlencoded::byte_serialize(self.config.vhost.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    }

    fn queue(room: &str) -> String {
        format!("gsl.room.{room}")
    }

    /// One management API call; the answer's JSON (`null` when it has none). It goes to
    /// the node that answered last, and on to the next ones while a node cannot be
    /// reached ([`RabbitAdmin::call_from`]).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let start = self.current.load(Ordering::Relaxed);
        self.call_from(start, method, path, body).await
    }

    /// [`RabbitAdmin::call`], first to node `start`. A node that cannot be reached (dead,
    /// or not listening) has had nothing of the call, so the next one is asked; any
    /// other failure of an idempotent call (a timeout, a dropped answer) is tried at
    /// the next node too. A POST that may have reached its node is not sent again: a
    /// publish would be doubled.
    async fn call_from(
        &self,
        start: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut failed = Vec::new();
        for i in 0..self.apis.len() {
            let node = (start + i) % self.apis.len();
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.apis[node]))
                .basic_auth(&self.config.user, Some(&self.config.password));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = match request.send().await {
                // A node that is starting or stopping: the next one, for a call that
                // may be made twice.
                Ok(response)
                    if response.status().is_server_error()
                        && method != reqwest::Method::POST
                        && i + 1 < self.apis.len() =>
                {
                    failed.push(format!("{}: {}", self.apis[node], response.status()));
                    continue;
                }
                Ok(response) => response,
                Err(e) if e.is_connect() || method != reqwest::Method::POST => {
                    failed.push(format!("{}: {e}", self.apis[node]));
                    continue;
                }
                Err(e) => {
                    return Err(Error::Protocol(format!(
                        "RabbitMQ management API {method} {path} at {}: {e}",
                        self.apis[node]
                    )))
                }
            };
            self.current.store(node, Ordering::Relaxed);
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(Error::Refused {
                    message: format!("RabbitMQ management API {method} {path} answered {status}"),
                    detail: text,
                });
            }
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        Err(Error::Protocol(format!(
            "RabbitMQ management API {method} {path}: no node answers ({})",
            failed.join("; ")
        )))
    }

    /// The node a room's inbox is declared through, and so where its leader starts
    /// (RabbitMQ's default `client-local` leader locator places a quorum queue's leader
    /// on the node that declares it; a `balanced` one overrides this): spread by the
    /// room's id.
    fn node_of(&self, room: &str) -> usize {
        (fnv1a(room.as_bytes()) % self.apis.len() as u64) as usize
    }
}

impl BrokerAdmin for RabbitAdmin {
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
        Box::pin(async move {
            let queue = RabbitAdmin::queue(room);
            let mut arguments = json!({
                "x-single-active-consumer": true,
                "x-max-length": policy.inbox_bound.unwrap_or(self.config.max_length as usize),
                "x-overflow": "reject-publish",
            });
            if self.config.quorum {
                arguments["x-queue-type"] = "quorum".into();
            }
            let vhost = self.vhost();
            self.call_from(
                self.node_of(room),
                reqwest::Method::PUT,
                &format!("/queues/{vhost}/{queue}"),
                Some(json!({ "durable": true, "auto_delete": false, "arguments": arguments })),
            )
            .await?;
            self.call(
                reqwest::Method::POST,
                &format!("/bindings/{vhost}/e/{INPUT_EXCHANGE}/q/{queue}"),
                Some(json!({ "routing_key": format!("room.{room}.*") })),
            )
            .await?;
            Ok(())
        })
    }

    fn delete_inbox<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = format!("/queues/{}/{}", self.vhost(), RabbitAdmin::queue(room));
            match self.call(reqwest::Method::DELETE, &path, None).await {
                Err(Error::Refused { message, .. }) if message.contains("404") => Ok(()),
                other => other.map(drop),
            }
        })
    }

    fn publish_as<'a>(
        &'a self,
        room: &'a str,
        sender: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = format!("/exchanges/{}/{INPUT_EXCHANGE}/publish", self.vhost());
            let answer = self
                .call(
                    reqwest::Method::POST,
                    &path,
                    Some(json!({
                        "routing_key": format!("room.{room}.{sender}"),
                        "payload": body,
                        "payload_encoding": "string",
                        "properties": { "delivery_mode": 2, "content_type": "application/json" },
                    })),
                )
                .await?;
            if answer["routed"] != true {
                return Err(Error::Protocol(format!(
                    "RabbitMQ routed the message from {sender} for room {room} nowhere: its inbox is gone"
                )));
            }
            Ok(())
        })
    }

    fn disconnect<'a>(&'a self, room: &'a str, player: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let login = self.names.login(room, player);
            let connections = self
                .call(reqwest::Method::GET, "/connections?columns=name,user", None)
                .await?;
            let mut closed = 0;
            for c in connections.as_array().into_iter().flatten() {
                if c["user"] != login.as_str() {
                    continue;
                }
                let name = c["name"].as_str().unwrap_or_default();
                let path = format!(
                    "/connections/{}",
                    url::form_urlencoded::byte_serialize(name.as_bytes())
                        .collect::<String>()
                        .replace('+', "%20")
                );
                // Gone already is as good as closed.
                if self
                    .call(reqwest::Method::DELETE, &path, None)
                    .await
                    .is_ok()
                {
                    closed += 1;
                }
            }
            Ok(closed)
        })
    }

    fn connections(&self) -> Option<usize> {
        None
    }

    fn inbox_state<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Option<InboxState>>> {
        Box::pin(async move {
            let path = format!(
                "/queues/{}/{}?columns=consumers,messages,messages_unacknowledged",
                self.vhost(),
                RabbitAdmin::queue(room)
            );
            let queue = match self.call(reqwest::Method::GET, &path, None).await {
                Err(Error::Refused { message, .. }) if message.contains("404") => return Ok(None),
                other => other?,
            };
            Ok(Some(InboxState {
                consumers: queue["consumers"].as_u64().unwrap_or(0),
                messages: queue["messages"].as_u64().unwrap_or(0),
                unacked: queue["messages_unacknowledged"].as_u64().unwrap_or(0),
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_url_names_everything_a_cluster_needs() {
        let c = RabbitConfig::parse(
            "amqp://gsl:p%40ss@127.0.0.1:5682/?stomp_port=61623&web_stomp_port=15684&management_port=15682&quorum=true",
        )
        .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("gsl", "p@ss"));
        assert_eq!(c.vhost, "/");
        let node = &c.nodes[0];
        assert_eq!(
            (node.stomp_port, node.web_stomp_port, node.management_port),
            (61623, 15684, 15682)
        );
        assert!(c.quorum);
        assert_eq!(c.endpoints().ws_urls, ["ws://127.0.0.1:15684/ws"]);
        assert_eq!(c.endpoints().worker_urls, ["tcp://127.0.0.1:61623"]);
        assert_eq!(
            c.endpoints().worker_amqp_urls,
            ["amqp://127.0.0.1:5682"],
            "workers speak AMQP to the URL's own port"
        );
        let tls = RabbitConfig::parse("amqp://h/?stomp_tls_port=61614").unwrap();
        assert_eq!(
            tls.endpoints().worker_urls,
            ["ssl://h:61614"],
            "workers use TLS"
        );
        assert!(
            tls.endpoints().worker_amqp_urls.is_empty(),
            "and so STOMP, not AMQP on plain TCP"
        );
        assert_eq!(
            tls.endpoints().tcp_urls,
            ["tcp://h:61613"],
            "players as before"
        );
        let defaults = RabbitConfig::parse("amqp://h/%2fgames").unwrap();
        assert_eq!(defaults.vhost, "/games");
        assert_eq!(
            (defaults.user.as_str(), defaults.nodes[0].stomp_port),
            ("guest", 61613)
        );
        assert_eq!(defaults.endpoints().worker_amqp_urls, ["amqp://h:5672"]);
    }

    #[test]
    fn a_broker_value_may_name_every_node_of_a_cluster() {
        // scripts/rabbitmq-node cluster's last line, as it prints it.
        let c = RabbitConfig::parse(
            "amqp://gsl:pw@localhost:5691/?stomp_port=61642&web_stomp_port=15691&management_port=15701&quorum=true,\
             amqp://gsl:pw@localhost:5692/?stomp_port=61644&web_stomp_port=15692&management_port=15702&quorum=true , \
             amqp://gsl:pw@localhost:5693/?stomp_port=61646&web_stomp_port=15693&management_port=15703&public_host=game.example&quorum=true",
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert!(c.quorum);
        let endpoints = c.endpoints();
        assert_eq!(
            endpoints.ws_urls,
            [
                "ws://localhost:15691/ws",
                "ws://localhost:15692/ws",
                "ws://game.example:15693/ws"
            ]
        );
        assert_eq!(endpoints.worker_urls[2], "tcp://localhost:61646");
        assert_eq!(endpoints.worker_amqp_urls[2], "amqp://localhost:5693");
        // Each player's order starts somewhere of its own and holds every node once.
        let mut firsts = std::collections::HashSet::new();
        for player in 0..30 {
            let order = Endpoints::spread(&endpoints.tcp_urls, &format!("r1/p{player}"));
            let mut sorted = order.clone();
            sorted.sort();
            let mut all = endpoints.tcp_urls.clone();
            all.sort();
            assert_eq!(sorted, all);
            assert_eq!(
                order,
                Endpoints::spread(&endpoints.tcp_urls, &format!("r1/p{player}"))
            );
            firsts.insert(order[0].clone());
        }
        assert_eq!(firsts.len(), 3, "30 players start on every node");
        let err = RabbitConfig::parse("amqp://u:secret@h:1/?quorum=true,amqp://u:secret@h:2/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the same user, password, vhost, quorum"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
        let err = RabbitConfig::parse("amqp://u:secret@h:1/,redis://h:2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp://USER:PASS"), "{err}");
    }

    #[test]
    fn a_bad_broker_url_says_what_is_wrong_without_the_password() {
        let err = RabbitConfig::parse("amqp://u:secret@h/?prefetch=3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option \"prefetch\""), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = RabbitConfig::parse("redis://h").unwrap_err().to_string();
        assert!(err.contains("amqp://USER:PASS@HOST:PORT/VHOST"), "{err}");
        let err =
            RabbitConfig::parse("amqp://u:secret@h:5691/?stomp_port=x , amqp://u:secret@h:5692/")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("stomp_port must be a port number") && !err.contains("secret"),
            "{err}"
        );
        let comma = RabbitConfig::parse("amqp://u:a,b@h/").unwrap();
        assert_eq!(
            comma.password, "a,b",
            "a comma in a password is not a second node"
        );
        let err = RabbitConfig::parse("amqp://h/?quorum=yes")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quorum must be true or false"), "{err}");
    }
}
