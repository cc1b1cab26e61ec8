//! Who may use the broker, and where: players with their join ticket's token reach only
//! their room; workers log in with the worker secret; `guest` may connect from loopback
//! to anything outside the rooms. [`GameAuthorizer`] says it to the embedded broker,
//! [`RabbitAuth`] to RabbitMQ's HTTP auth backend.

use crate::broker::{
    default_can_send, default_can_subscribe, Authorizer, Notice, Principal, Rate, SendRate,
};
use crate::names::{
    is_spectator, player_login, Names, BROKER_USER, GUEST, INPUT_EXCHANGE, SPECTATOR_JOIN,
    WORKER_USER,
};
use crate::policy::Policies;
use crate::store::Store;
use crate::token::{Claims, Signer};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// The current join of every player, and each room's kind, as this process knows them:
/// what the embedded broker checks a token against at CONNECT (and the kind's input
/// rate it grants), where it cannot wait for the store. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Joins(Arc<RwLock<JoinMaps>>);

#[derive(Debug, Default)]
struct JoinMaps {
    joins: HashMap<(String, String), String>,
    kinds: HashMap<String, String>,
    /// Spectators connected, by room.
    spectators: HashMap<String, usize>,
    /// Joins whose seat is reserved until their first connection.
    reserved: HashSet<String>,
}

impl Joins {
    /// Whether `join` is `player`'s current join of `room`.
    pub fn is_current(&self, room: &str, player: &str, join: &str) -> bool {
        self.0
            .read()
            .unwrap()
            .joins
            .get(&(room.to_owned(), player.to_owned()))
            .is_some_and(|j| j == join)
    }

    pub(crate) fn set(&self, room: &str, player: &str, join: &str) {
        self.0
            .write()
            .unwrap()
            .joins
            .insert((room.to_owned(), player.to_owned()), join.to_owned());
    }

    pub(crate) fn remove(&self, room: &str, player: &str) {
        self.0
            .write()
            .unwrap()
            .joins
            .remove(&(room.to_owned(), player.to_owned()));
    }

    /// Join `join`'s seat is reserved until its ticket's first connection.
    pub(crate) fn reserve(&self, join: &str) {
        self.0.write().unwrap().reserved.insert(join.to_owned());
    }

    /// Whether join `join` had a reserved seat (once: it is not reserved after).
    fn take_reserved(&self, join: &str) -> bool {
        let maps = self.0.read().unwrap();
        if !maps.reserved.contains(join) {
            return false;
        }
        drop(maps);
        self.0.write().unwrap().reserved.remove(join)
    }

    /// A spectator of `room` connected (`true`) or went.
    fn count_spectator(&self, room: &str, connected: bool) {
        let mut maps = self.0.write().unwrap();
        let n = maps.spectators.entry(room.to_owned()).or_default();
        *n = if connected {
            *n + 1
        } else {
            n.saturating_sub(1)
        };
        if *n == 0 {
            maps.spectators.remove(room);
        }
    }

    /// Spectators of `room` connected now.
    pub(crate) fn spectators(&self, room: &str) -> usize {
        self.0
            .read()
            .unwrap()
            .spectators
            .get(room)
            .copied()
            .unwrap_or(0)
    }

    /// Room `room` is of kind `kind`.
    pub(crate) fn set_kind(&self, room: &str, kind: &str) {
        let mut maps = self.0.write().unwrap();
        if maps.kinds.get(room).is_none_or(|k| k != kind) {
            maps.kinds.insert(room.to_owned(), kind.to_owned());
        }
    }

    /// The kind of `room`, where known (`""` if not).
    fn kind(&self, room: &str) -> String {
        self.0
            .read()
            .unwrap()
            .kinds
            .get(room)
            .cloned()
            .unwrap_or_default()
    }
}

/// The broker's gatekeeper for a game server.
pub struct GameAuthorizer {
    signer: Signer,
    names: Names,
    joins: Joins,
    worker_secret: String,
    allow_guest: bool,
    /// Each kind's policy: the input rate of its players; `None` for no limit.
    policies: Option<Policies>,
    /// Where players' connections coming and going are told.
    events: Option<mpsc::UnboundedSender<PlayerEvent>>,
}

/// What the embedded broker saw of a player's connections, for the room service (which
/// the broker, holding its lock, cannot wait for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayerEvent {
    /// The first connection of a ticket whose seat quick play reserved: the seat is the
    /// player's now.
    Confirmed(Claims),
    /// Spectator `watcher` subscribed to its own destination (after the topic): the
    /// room sends it its snapshot.
    Watching {
        /// The room.
        room: String,
        /// The spectator.
        watcher: String,
    },
    /// One of `player`'s connections to `room` opened (`connected`) or closed.
    Presence {
        /// The room.
        room: String,
        /// The player.
        player: String,
        /// The connection, as the broker names it.
        connection: String,
        /// Opened, or closed.
        connected: bool,
    },
}

impl std::fmt::Debug for GameAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GameAuthorizer")
            .field("allow_guest", &self.allow_guest)
            .finish_non_exhaustive()
    }
}

impl GameAuthorizer {
    /// Checks tokens with `signer` and against the current `joins`, workers against
    /// `worker_secret`, and lets `guest` in from loopback if `allow_guest`.
    pub fn new(
        signer: Signer,
        names: Names,
        joins: Joins,
        worker_secret: String,
        allow_guest: bool,
    ) -> Self {
        GameAuthorizer {
            signer,
            names,
            joins,
            worker_secret,
            allow_guest,
            policies: None,
            events: None,
        }
    }

    /// Tells `events` of players' connections coming and going, and of seats their
    /// first connection takes.
    pub fn with_events(mut self, events: mpsc::UnboundedSender<PlayerEvent>) -> Self {
        self.events = Some(events);
        self
    }

    /// Tells of a player's connection coming or going (nobody else's); counts
    /// spectators' connections.
    fn presence(&self, session: u64, principal: &Principal, connected: bool) {
        let (Some(events), Some(room)) = (&self.events, &principal.tag) else {
            return;
        };
        if is_spectator(&principal.name) {
            self.joins.count_spectator(room, connected);
            return;
        }
        let _ = events.send(PlayerEvent::Presence {
            room: room.clone(),
            player: principal.name.clone(),
            connection: session.to_string(),
            connected,
        });
    }

    /// What a spectator of `room` may do: read the topic and its own destination,
    /// while the room has fewer spectators than its kind allows.
    fn spectator_grants(&self, room: &str, watcher: &str) -> Result<Principal, String> {
        if let Some(policies) = &self.policies {
            let most = policies.of(&self.joins.kind(room)).spectators;
            if self.joins.spectators(room) >= most {
                return Err(format!(
                    "room {room} has {most} spectators, its most; try again later"
                ));
            }
        }
        Ok(Principal {
            name: watcher.to_owned(),
            send: Some(Vec::new()),
            subscribe: Some(vec![
                self.names.topic(room),
                self.names.private(room, watcher),
            ]),
            tag: Some(room.to_owned()),
            rate: None,
        })
    }

    /// Limits each player to the input rate of its room's kind.
    pub fn with_policies(mut self, policies: Policies) -> Self {
        self.policies = Some(policies);
        self
    }

    /// What a player holding a valid token for `room` may do.
    pub fn player_grants(&self, room: &str, player: &str) -> Principal {
        Principal {
            name: player.to_owned(),
            send: Some(vec![self.names.inbox(room, player)]),
            subscribe: Some(vec![
                self.names.topic(room),
                self.names.private(room, player),
            ]),
            tag: Some(room.to_owned()),
            rate: self.policies.as_ref().map(|policies| {
                let policy = policies.of(&self.joins.kind(room));
                let rate = Rate {
                    per_second: policy.inputs_per_second,
                    burst: policy.input_burst,
                };
                SendRate {
                    rate,
                    notice: Some(rate_notice(self.names.private(room, player), rate)),
                }
            }),
        }
    }

    fn guest_outside_rooms(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        if principal.name == GUEST && self.names.in_rooms(destination) {
            return Err(
                "guest may not use room destinations; join a room through the lobby".into(),
            );
        }
        Ok(())
    }
}

/// What a player hears on its private destination when its inputs go over its rate:
/// the room's error message, marked `limited`, from the broker.
fn rate_notice(destination: String, rate: Rate) -> Notice {
    let Rate { per_second, burst } = rate;
    let body = serde_json::json!({
        "type": "error",
        "error": format!(
            "too fast: at most {per_second} inputs a second ({burst} at once); inputs over that are dropped, without a receipt"
        ),
        "limited": true,
    });
    Notice {
        destination,
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("user-id".to_owned(), BROKER_USER.to_owned()),
        ],
        body: body.to_string().into(),
    }
}

impl Authorizer for GameAuthorizer {
    fn connect(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<Principal, String> {
        match login {
            Some(WORKER_USER) if passcode == Some(self.worker_secret.as_str()) => {
                return Ok(Principal::anyone(WORKER_USER));
            }
            Some(WORKER_USER) => return Err("wrong worker secret".into()),
            Some(GUEST) if passcode == Some(GUEST) => {
                if !self.allow_guest {
                    return Err("the guest login is switched off on this server".into());
                }
                if !peer.is_some_and(|p| p.ip().is_loopback()) {
                    return Err("guest may connect from loopback only".into());
                }
                return Ok(Principal::anyone(GUEST));
            }
            _ => {}
        }
        let token = passcode
            .filter(|p| !p.is_empty())
            .ok_or("send the token of your join ticket (POST /rooms/{id}/join) as the passcode")?;
        let claims = self.signer.verify(token)?;
        if let Some(login) = login.filter(|l| !l.is_empty()) {
            if login != claims.player {
                return Err(format!(
                    "login {login:?} does not match the ticket's player {:?}",
                    claims.player
                ));
            }
        }
        if claims.join.starts_with(SPECTATOR_JOIN) {
            return self.spectator_grants(&claims.room, &claims.player);
        }
        if !self
            .joins
            .is_current(&claims.room, &claims.player, &claims.join)
        {
            return Err("this ticket was revoked: its player left the room, was kicked, or joined again; join again for a new one".into());
        }
        let grants = self.player_grants(&claims.room, &claims.player);
        if let Some(events) = &self.events {
            if self.joins.take_reserved(&claims.join) {
                let _ = events.send(PlayerEvent::Confirmed(claims));
            }
        }
        Ok(grants)
    }

    fn connected(&self, session: u64, principal: &Principal) {
        self.presence(session, principal, true);
    }

    fn disconnected(&self, session: u64, principal: &Principal) {
        self.presence(session, principal, false);
    }

    fn can_send(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        self.guest_outside_rooms(principal, destination)?;
        default_can_send(principal, destination)
    }

    fn can_subscribe(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        self.guest_outside_rooms(principal, destination)?;
        default_can_subscribe(principal, destination)?;
        // A spectator's own destination, subscribed after the topic: time for the
        // room's snapshot (the topic's later messages reach it: no gap).
        if let (Some(room), Some(events)) = (&principal.tag, &self.events) {
            let name = &principal.name;
            if is_spectator(name) && destination == self.names.private(room, name) {
                let _ = events.send(PlayerEvent::Watching {
                    room: room.clone(),
                    watcher: name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The answers RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http`) asks the lobby
/// for, about players. Players log in as `PLAYER@ROOM` with their ticket's token; the
/// lobby and workers log in as a RabbitMQ user of the internal database, which RabbitMQ
/// asks first, so they never reach these rules.
///
/// A player may: read the room topic and its own destination (`amq.topic` with those
/// routing keys, through the private `stomp-subscription-*` queue RabbitMQ makes for a
/// topic SUBSCRIBE); and write to `gsl.inputs` with its own routing key `room.ROOM.PLAYER`.
/// Nothing else: not the default exchange (so no queue by name), not `amq.topic` (so no
/// forged room output), not another room's keys.
#[derive(Clone)]
pub struct RabbitAuth {
    signer: Signer,
    names: Names,
    store: Store,
    /// Where spectators' subscriptions to their own destination are told.
    events: Option<mpsc::UnboundedSender<PlayerEvent>>,
}

impl std::fmt::Debug for RabbitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitAuth").finish_non_exhaustive()
    }
}

impl RabbitAuth {
    /// Checks tokens with `signer` and whether their join is current in `store`;
    /// destinations are spelled by `names`.
    pub fn new(signer: Signer, names: Names, store: Store) -> RabbitAuth {
        RabbitAuth {
            signer,
            names,
            store,
            events: None,
        }
    }

    /// Tells `events` when a spectator subscribes to its own destination (the room
    /// then sends it its snapshot).
    pub fn with_events(mut self, events: mpsc::UnboundedSender<PlayerEvent>) -> RabbitAuth {
        self.events = Some(events);
        self
    }

    /// Spectator `watcher` binds its own destination (after the topic): time for the
    /// room's snapshot.
    fn watching(&self, room: &str, watcher: &str) {
        if let Some(events) = &self.events {
            let _ = events.send(PlayerEvent::Watching {
                room: room.to_owned(),
                watcher: watcher.to_owned(),
            });
        }
    }

    /// May `username` log in with `password`? Why not, if not.
    pub async fn user(&self, username: &str, password: &str) -> Result<(), String> {
        let (player, room) =
            player_login(username).ok_or("log in as PLAYER@ROOM, the login of your join ticket")?;
        let claims = self.signer.verify(password)?;
        if claims.player != player || claims.room != room {
            return Err(format!(
                "the token is for {}@{}, not {username}",
                claims.player, claims.room
            ));
        }
        if claims.join.starts_with(SPECTATOR_JOIN) {
            // A spectator: it may read, nothing more (see `resource` and `topic`).
            return Ok(());
        }
        match self.store.player_join(room, player).await {
            Ok(Some(join)) if join == claims.join => {
                // The ticket's first connection: a seat quick play reserved is the
                // player's now.
                if let Err(e) = self.store.confirm_seat(room, player, &join).await {
                    tracing::warn!(%room, %player, "cannot confirm the seat: {e}");
                }
                Ok(())
            }
            Ok(_) => Err("the ticket was revoked (left, kicked, or joined again)".into()),
            Err(e) => Err(format!("the store cannot say: {e}")),
        }
    }

    /// May `username` use the virtual host?
    pub fn vhost(&self, username: &str) -> bool {
        player_login(username).is_some()
    }

    /// May `username` have `permission` (`configure`, `write`, `read`) on the `resource`
    /// (`queue`, `exchange`) called `name`?
    pub fn resource(&self, username: &str, resource: &str, name: &str, permission: &str) -> bool {
        let Some((player, _)) = player_login(username) else {
            return false;
        };
        match (resource, permission) {
            // The private queue behind a topic subscription: RabbitMQ names it at random.
            ("queue", _) => name.starts_with("stomp-subscription-"),
            ("exchange", "read") => name == "amq.topic",
            // A spectator sends nothing.
            ("exchange", "write") => name == INPUT_EXCHANGE && !is_spectator(player),
            _ => false,
        }
    }

    /// May `username` have `permission` on topic exchange `name` with `routing_key`?
    pub fn topic(&self, username: &str, name: &str, permission: &str, routing_key: &str) -> bool {
        let Some((player, room)) = player_login(username) else {
            return false;
        };
        let key_of = |destination: String, exchange: &str| {
            destination
                .strip_prefix(exchange)
                .map(str::to_owned)
                .unwrap_or_default()
        };
        match (name, permission) {
            ("amq.topic", "read") => {
                let private = routing_key == key_of(self.names.private(room, player), "/topic/");
                if private && is_spectator(player) {
                    self.watching(room, player);
                }
                routing_key == key_of(self.names.topic(room), "/topic/") || private
            }
            (INPUT_EXCHANGE, "write") if is_spectator(player) => false,
            (INPUT_EXCHANGE, "write") => {
                let prefix = format!("/exchange/{INPUT_EXCHANGE}/");
                routing_key == key_of(self.names.inbox(room, player), &prefix)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewRoom;
    use std::time::Duration;

    #[tokio::test]
    async fn rabbitmq_lets_a_player_reach_its_own_room_only() {
        let signer = Signer::new(b"s".to_vec());
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.create_room(&NewRoom::plain("r1", "r")).await.unwrap();
        store.add_player("r1", "ann", "j1", 10, None).await.unwrap();
        let auth = RabbitAuth::new(signer.clone(), Names::rabbitmq(), store.clone());
        let token = signer.issue("r1", "ann", "j1", Duration::from_secs(60));
        assert_eq!(auth.user("ann@r1", &token).await, Ok(()));
        let as_bob = auth.user("bob@r1", &token).await;
        assert!(as_bob.unwrap_err().contains("not bob@r1"));
        assert!(auth.user("ann@r2", &token).await.is_err());
        assert!(auth.user("ann", &token).await.is_err());
        assert!(auth
            .user("ann@r1", "v2.r1.ann.j1.9999999999.00")
            .await
            .is_err());
        store.rejoin_player("r1", "ann", "j2").await.unwrap();
        let revoked = auth.user("ann@r1", &token).await;
        assert!(revoked.unwrap_err().contains("revoked"));

        assert!(auth.topic("ann@r1", "amq.topic", "read", "room.r1"));
        assert!(auth.topic("ann@r1", "amq.topic", "read", "room.r1.player.ann"));
        assert!(!auth.topic("ann@r1", "amq.topic", "read", "room.r1.player.bob"));
        assert!(!auth.topic("ann@r1", "amq.topic", "read", "room.r2"));
        assert!(!auth.topic("ann@r1", "amq.topic", "read", "room.*"));
        assert!(!auth.topic("ann@r1", "amq.topic", "write", "room.r1"));
        assert!(auth.topic("ann@r1", "gsl.inputs", "write", "room.r1.ann"));
        assert!(!auth.topic("ann@r1", "gsl.inputs", "write", "room.r1.bob"));
        assert!(!auth.topic("ann@r1", "gsl.inputs", "write", "room.r1.$lobby"));

        assert!(auth.resource("ann@r1", "exchange", "gsl.inputs", "write"));
        assert!(!auth.resource("ann@r1", "exchange", "amq.default", "write"));
        assert!(!auth.resource("ann@r1", "exchange", "amq.topic", "write"));
        assert!(!auth.resource("ann@r1", "queue", "gsl.room.r1", "read"));
        assert!(auth.resource("ann@r1", "queue", "stomp-subscription-x1", "configure"));
    }
}
