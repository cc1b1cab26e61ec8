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
use crate::names::{is_spectator, player_login, Names, INPUT_EXCHANGE};
use crate::policy::RoomPolicy;
use crate::{Error, Result};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use std::time::Duration;

/// What the `--broker amqp://USER:PASS@HOST:PORT/VHOST?…` URL says. The query may set
/// `stomp_port` (61613), `stomp_tls_port` (none: workers use STOMP over TLS there when
/// set), `web_stomp_port` (15674), `management_port` (15672),
/// `public_host` (the host players connect to; HOST), `quorum` (`true` for quorum
/// inboxes) and `max_length` (inputs an inbox holds, 10000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    /// The user the lobby and workers log in as (STOMP and management API).
    pub user: String,
    /// Its password.
    pub password: String,
    /// Where RabbitMQ listens, for the lobby and the workers.
    pub host: String,
    /// The host players are told to connect to.
    pub public_host: String,
    /// The virtual host.
    pub vhost: String,
    /// STOMP over TCP.
    pub stomp_port: u16,
    /// STOMP over TLS, which workers then use (`ssl://`, with the `tls` feature):
    /// RabbitMQ's `stomp.listeners.ssl` port, if it has one.
    pub stomp_tls_port: Option<u16>,
    /// STOMP over WebSocket (`/ws`).
    pub web_stomp_port: u16,
    /// The management HTTP API.
    pub management_port: u16,
    /// Whether room inboxes are quorum queues (replicated over a RabbitMQ cluster).
    pub quorum: bool,
    /// Inputs one inbox holds at most; RabbitMQ refuses more.
    pub max_length: u32,
}

impl RabbitConfig {
    /// Reads a `--broker` URL.
    pub fn parse(broker: &str) -> Result<RabbitConfig> {
        let bad = |why: &str| Error::Url {
            url: redact(broker),
            why: why.into(),
        };
        if nodes(broker).len() > 1 {
            return Err(bad(
                "it names several nodes (comma-separated); this build connects to one: pass one node's URL (with quorum=true, its inboxes are replicated across the cluster)",
            ));
        }
        let url = url::Url::parse(broker).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "amqp" {
            return Err(bad(
                "cluster mode takes a RabbitMQ URL: amqp://USER:PASS@HOST:PORT/VHOST",
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
        let mut config = RabbitConfig {
            user: match url.username() {
                "" => "guest".to_owned(),
                u => decode(u),
            },
            password: url.password().map(decode).unwrap_or_else(|| "guest".into()),
            public_host: host.clone(),
            host,
            vhost,
            stomp_port: 61613,
            stomp_tls_port: None,
            web_stomp_port: 15674,
            management_port: 15672,
            quorum: false,
            max_length: 10_000,
        };
        for (key, value) in url.query_pairs() {
            let port = || {
                value
                    .parse::<u16>()
                    .map_err(|_| bad(&format!("{key} must be a port number")))
            };
            match &*key {
                "stomp_port" => config.stomp_port = port()?,
                "stomp_tls_port" => config.stomp_tls_port = Some(port()?),
                "web_stomp_port" => config.web_stomp_port = port()?,
                "management_port" => config.management_port = port()?,
                "public_host" => config.public_host = value.into_owned(),
                "quorum" => {
                    config.quorum = match &*value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("quorum must be true or false")),
                    }
                }
                "max_length" => {
                    config.max_length = value
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
        Ok(config)
    }

    /// Where players and workers connect.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            ws_url: format!("ws://{}:{}/ws", self.public_host, self.web_stomp_port),
            tcp_url: format!("tcp://{}:{}", self.public_host, self.stomp_port),
            worker_url: match self.stomp_tls_port {
                Some(port) => format!("ssl://{}:{port}", self.host),
                None => format!("tcp://{}:{}", self.host, self.stomp_port),
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
/// (spaces around it allowed); a comma inside a URL (in a password, say) stays in it.
fn nodes(broker: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, _) in broker.match_indices(',') {
        if broker[at + 1..].trim_start().starts_with("amqp://") {
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
    api: String,
}

impl RabbitAdmin {
    /// Checks that RabbitMQ's management API answers with these credentials, and
    /// declares the input exchange.
    pub async fn connect(config: RabbitConfig) -> Result<RabbitAdmin> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Protocol(format!("cannot make an HTTP client: {e}")))?;
        let admin = RabbitAdmin {
            api: format!("http://{}:{}/api", config.host, config.management_port),
            names: Names::rabbitmq(),
            endpoints: config.endpoints(),
            config,
            http,
        };
        admin.call(reqwest::Method::GET, "/overview", None).await.map_err(|e| {
            Error::Protocol(format!(
                "RabbitMQ's management API does not answer at {} ({e}); is the rabbitmq_management plugin enabled (rabbitmq-plugins enable rabbitmq_management), and are the user and password right?",
                admin.api
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
        let arguments = json!({ "x-single-active-consumer": true, "x-max-length": 1_000_000 });
        self.call(
            reqwest::Method::PUT,
            &format!("/queues/{vhost}/{PRESENCE_QUEUE}"),
            Some(json!({ "durable": true, "auto_delete": false, "arguments": arguments })),
        )
        .await?;
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

    /// One management API call; the answer's JSON (`null` when it has none).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.api))
            .basic_auth(&self.config.user, Some(&self.config.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            Error::Protocol(format!("RabbitMQ management API {method} {path}: {e}"))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Error::Refused {
                message: format!("RabbitMQ management API {method} {path} answered {status}"),
                detail: text,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
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
            self.call(
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
        assert_eq!(
            (c.stomp_port, c.web_stomp_port, c.management_port),
            (61623, 15684, 15682)
        );
        assert!(c.quorum);
        assert_eq!(c.endpoints().ws_url, "ws://127.0.0.1:15684/ws");
        assert_eq!(c.endpoints().worker_url, "tcp://127.0.0.1:61623");
        let tls = RabbitConfig::parse("amqp://h/?stomp_tls_port=61614").unwrap();
        assert_eq!(
            tls.endpoints().worker_url,
            "ssl://h:61614",
            "workers use TLS"
        );
        assert_eq!(
            tls.endpoints().tcp_url,
            "tcp://h:61613",
            "players as before"
        );
        let defaults = RabbitConfig::parse("amqp://h/%2fgames").unwrap();
        assert_eq!(defaults.vhost, "/games");
        assert_eq!(
            (defaults.user.as_str(), defaults.stomp_port),
            ("guest", 61613)
        );
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
        // scripts/rabbitmq-node cluster's value, which this build does not take: said,
        // not read as one URL with the others folded into its options.
        let err = RabbitConfig::parse(
            "amqp://u:secret@h:5691/?stomp_port=1&quorum=true,amqp://u:secret@h:5692/?stomp_port=2&quorum=true",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("several nodes"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let spaced = "amqp://u:secret@h:5691/?quorum=true , amqp://u:secret@h:5692/";
        let err = RabbitConfig::parse(spaced).unwrap_err().to_string();
        assert!(
            err.contains("several nodes") && !err.contains("secret"),
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
