//! The room service: create, list, join, transfer, leave, kick and end rooms. It keeps
//! the store, the broker's inboxes and the room workers in step, and knows nothing of
//! HTTP: the lobby serves it over axum, room workers carry out their rooms' transfers
//! through it ([`crate::worker::Transfers`]), and other front ends (tests, Lambda) can
//! call it directly.
//!
//! Who may do what:
//! - A name belongs to whoever first joined with it: that join answers a player key
//!   (`k1.NAME.SECRET`), which every later join with the name must present.
//! - A join token is good for one join: leaving, being kicked, or joining again revokes
//!   it, and the broker closes the connections opened with it.
//! - Ending a room, or kicking a player, takes the room's owner token (answered to
//!   whoever created the room) or the operator secret.

mod inspect;
mod open_seats;

use crate::admin::{BrokerAdmin, Endpoints};
use crate::auth::{Joins, PlayerEvent};
use crate::msg::Arrival;
use crate::names::SPECTATOR_JOIN;
use crate::policy::Policies;
use crate::proto::{is_new_player_key, valid_name, QueueView, RoomView, Ticket};
use crate::room::Transfer;
use crate::store::{
    GroupRule, Matched, NewRoom, QueueTicket, RoomRecord, Seated, Store, TransferPlan,
};
use crate::token::{
    key_hash, key_name, player_key, random_bytes, random_id, same_secret, Claims, Signer,
};
use crate::worker::{Control, Launcher, Transfers};
use crate::{Error, Result};
use futures_util::future::BoxFuture;
pub use inspect::{InboxFigures, PlayerPresence, RoomDetail, RoomInspection};
use open_seats::OpenSeats;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the room service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSettings {
    /// How long a join token is valid.
    pub ticket_ttl: Duration,
    /// A secret that may end any room and kick any player; `None`: only owners may.
    pub operator_secret: Option<String>,
    /// Live rooms at most.
    pub max_rooms: usize,
    /// Rooms one client (address) may create a minute.
    pub creations_per_minute: usize,
    /// Players one room may have.
    pub max_players_per_room: usize,
    /// How long a seat quick play reserved waits for the player's first connection.
    pub seat_ttl: Duration,
    /// After this long in the matchmaking queue, a ticket's filter no longer counts.
    pub queue_widen: Duration,
    /// A queue ticket not polled for this long leaves the queue.
    pub queue_drop: Duration,
}

impl Default for RoomSettings {
    fn default() -> RoomSettings {
        RoomSettings {
            ticket_ttl: Duration::from_secs(24 * 3600),
            operator_secret: None,
            max_rooms: 10_000,
            creations_per_minute: 30,
            max_players_per_room: 100,
            seat_ttl: Duration::from_secs(15),
            queue_widen: Duration::from_secs(10),
            queue_drop: Duration::from_secs(30),
        }
    }
}

/// A room to create: its name, kind, metadata, and whether it is private.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomSpec {
    /// Its display name (1 to 64 characters, not only spaces).
    pub name: String,
    /// Its kind; `None` is the server's default kind.
    pub kind: Option<String>,
    /// What the game says of it, which quick play filters on: a JSON object (`null` is
    /// none).
    pub meta: Value,
    /// Private: quick play never picks it, `GET /rooms` lists it only to the operator,
    /// and it is joined by the code its creation answers.
    pub private: bool,
}

impl RoomSpec {
    /// A public room of the default kind named `name`.
    pub fn named(name: impl Into<String>) -> RoomSpec {
        RoomSpec {
            name: name.into(),
            ..RoomSpec::default()
        }
    }
}

/// A quick play: into a room of `kind` whose metadata matches `filter`, or into the
/// private room of `code`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuickPlay {
    /// Who plays.
    pub name: String,
    /// The name's player key, once it has one; or, on its first join, one the client
    /// made (`proto::new_player_key`), which then claims the name.
    pub key: Option<String>,
    /// The kind of room; `None` is the server's default kind.
    pub kind: Option<String>,
    /// Metadata a room must have (each key equal), a JSON object; a room made for the
    /// player gets it as its metadata.
    pub filter: Value,
    /// A private room's code: that room, and no other.
    pub code: Option<String>,
}

/// Where ending a room stands when the lobby answers ([`Rooms::end_within`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The room has ended: its players were told, its state saved, its inbox deleted.
    Ended,
    /// Its worker had not ended it within [`END_WAIT`] (a Lambda room waking up); it will.
    Ending,
}

/// Who is asking, as far as the room service can tell.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// The claims of a current join token, if one was presented.
    pub member: Option<Claims>,
    /// Whether the operator secret was presented.
    pub operator: bool,
}

/// The room service. Cheap to clone; lobby handlers get it with `State<Rooms>`.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    signer: Signer,
    admin: Arc<dyn BrokerAdmin>,
    launcher: Arc<dyn Launcher>,
    joins: Joins,
    settings: RoomSettings,
    policies: Policies,
    /// When each client created its recent rooms.
    creations: std::sync::Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    /// Quick play's shelves of open seats, handed out from memory: see `seat_anywhere`.
    open_seats: OpenSeats,
    /// Quick plays stock a shelf (or make the room that goes on it) one at a time in
    /// this process.
    stocking: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("endpoints", self.inner.admin.endpoints())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    /// A room service over `store` and the broker behind `admin`, starting workers with
    /// `launcher`, signing tokens with `signer` and keeping `joins` current.
    pub fn new(
        store: Store,
        signer: Signer,
        admin: Arc<dyn BrokerAdmin>,
        launcher: Arc<dyn Launcher>,
        joins: Joins,
        settings: RoomSettings,
        policies: Policies,
    ) -> Rooms {
        Rooms {
            inner: Arc::new(Inner {
                store,
                signer,
                admin,
                launcher,
                joins,
                settings,
                policies,
                creations: Default::default(),
                open_seats: Default::default(),
                stocking: Default::default(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The token signer.
    pub fn signer(&self) -> &Signer {
        &self.inner.signer
    }

    /// The broker's control plane.
    pub fn admin(&self) -> &dyn BrokerAdmin {
        &*self.inner.admin
    }

    /// Each kind's policy.
    pub fn policies(&self) -> &Policies {
        &self.inner.policies
    }

    /// Rooms with a worker in this process, where that is known.
    pub fn running(&self) -> Option<usize> {
        self.inner.launcher.running()
    }

    /// A live room, or [`Error::NotFound`].
    pub async fn record(&self, id: &str) -> Result<RoomRecord> {
        self.store().room(id).await?.ok_or_else(|| {
            Error::NotFound(format!("no room {id:?}; GET /rooms lists the live ones"))
        })
    }

    /// A live room as `viewer` may see it.
    pub async fn get(&self, id: &str, viewer: &Viewer) -> Result<RoomView> {
        let record = self.record(id).await?;
        let players = self.store().players(&record.id).await?;
        let mut room = self.view(record, players, viewer);
        self.add_presence(std::slice::from_mut(&mut room), viewer)
            .await?;
        Ok(room)
    }

    /// Who of each room's players is connected and who is in grace, from the rooms'
    /// latest checkpoints.
    async fn add_presence(&self, rooms: &mut [RoomView], viewer: &Viewer) -> Result<()> {
        let ids: Vec<String> = rooms.iter().map(|r| r.id.clone()).collect();
        let applied = self.store().applied_of(&ids).await?;
        for room in rooms {
            let Some(applied) = applied.get(&room.id) else {
                continue;
            };
            let (connected, away) = crate::room::presence_in(applied.keys());
            room.players_connected = connected.len();
            room.players_in_grace = away.len();
            let member = viewer.member.as_ref().is_some_and(|c| c.room == room.id);
            if member || viewer.operator {
                room.in_grace = away.into_iter().collect();
            }
        }
        Ok(())
    }

    /// Every live room, oldest first, as `viewer` may see it; from `offset`, at most
    /// `limit`.
    pub async fn list(
        &self,
        viewer: &Viewer,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<RoomView>> {
        let rooms = self
            .store()
            .live_rooms_with_players(offset, limit, viewer.operator)
            .await?;
        let mut rooms: Vec<RoomView> = rooms
            .into_iter()
            .map(|(record, players)| self.view(record, players, viewer))
            .collect();
        self.add_presence(&mut rooms, viewer).await?;
        Ok(rooms)
    }

    /// The token that lets whoever created `room` end it and kick its players.
    pub fn owner_token(&self, room: &str) -> String {
        self.signer().owner_token(room)
    }

    /// Whether `bearer` (an `Authorization: Bearer` value) is the operator secret.
    pub fn is_operator(&self, bearer: Option<&str>) -> bool {
        let secret = self.inner.settings.operator_secret.as_deref();
        matches!((secret, bearer), (Some(s), Some(b)) if !s.is_empty() && same_secret(s, b))
    }

    /// Checks that `bearer` may manage `room`: its owner token or the operator secret.
    pub fn may_manage(&self, room: &str, bearer: Option<&str>) -> Result<()> {
        let Some(bearer) = bearer else {
            return Err(Error::Unauthorized(format!(
                "ending room {room} or kicking its players takes its owner token (answered by POST /rooms) or the operator secret, as Authorization: Bearer"
            )));
        };
        if same_secret(bearer, &self.owner_token(room)) || self.is_operator(Some(bearer)) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this is not room {room}'s owner token nor the operator secret"
            )))
        }
    }

    /// Checks a join token: genuine, not expired, and its join still current.
    pub async fn member(&self, token: &str) -> Result<Claims> {
        let claims = self.signer().verify(token).map_err(Error::Unauthorized)?;
        let current = self
            .store()
            .player_join(&claims.room, &claims.player)
            .await?;
        if current.as_deref() != Some(claims.join.as_str()) {
            return Err(Error::Unauthorized(
                "this ticket was revoked: its player left the room, was kicked, or joined again; join again for a new one".into(),
            ));
        }
        Ok(claims)
    }

    /// The name `key` (a player key) proves, if it does.
    pub async fn key_owner(&self, key: &str) -> Result<String> {
        let name = key_name(key)
            .ok_or_else(|| Error::Unauthorized("not a player key (k1.NAME.SECRET)".into()))?;
        match self.store().name_key(name).await? {
            Some(hash) if hash == key_hash(key) => Ok(name.to_owned()),
            _ => Err(Error::Unauthorized(format!(
                "this is not {name}'s player key"
            ))),
        }
    }

    /// Creates a room for `client` (its address, where known): its inbox, its record,
    /// and its worker. The answer carries the room's owner token (and a private room's
    /// code).
    pub async fn create(&self, spec: &RoomSpec, client: Option<IpAddr>) -> Result<RoomView> {
        check_room_name(&spec.name)?;
        self.policies()
            .kind(spec.kind.as_deref())
            .map_err(Error::NotFound)?;
        check_meta(&spec.meta)?;
        self.check_creation_rate(client)?;
        let record = self.make_room(spec).await?;
        let id = record.id.clone();
        let code = record.code.clone();
        let mut room = self.view(record, Vec::new(), &Viewer::default());
        room.owner_token = Some(self.owner_token(&id));
        room.code = code;
        room.players_hidden = None;
        Ok(room)
    }

    /// Makes a room and answers its record: [`Rooms::create`] without the creation rate
    /// (quick play makes rooms for players it seats, which the seats bound).
    async fn make_room(&self, spec: &RoomSpec) -> Result<RoomRecord> {
        check_room_name(&spec.name)?;
        let kind = self
            .policies()
            .kind(spec.kind.as_deref())
            .map_err(Error::NotFound)?;
        let meta = check_meta(&spec.meta)?;
        let settings = &self.inner.settings;
        if self.store().live_room_count().await? >= settings.max_rooms {
            crate::metrics::LIMITED.with_label_values(&["rooms"]).inc();
            return Err(Error::Limited(format!(
                "the server has {} rooms, its most; join one of them",
                settings.max_rooms
            )));
        }
        let id = random_id(4);
        let code = spec.private.then(room_code);
        // The inbox first: a worker that sees the record must find its inbox.
        self.open_inbox(&id, kind).await?;
        let new = NewRoom {
            id: &id,
            name: &spec.name,
            kind,
            meta: &meta,
            code: code.as_deref(),
        };
        let record = self.store().create_room(&new).await?;
        self.inner.launcher.launch(&id);
        // The first message makes some worker the room's active one: the room ticks
        // (and can end idle) before anyone joins.
        self.control(&id, Control::Wake).await?;
        Ok(record)
    }

    /// Counts a creation by `client`, or refuses it when it created too many lately.
    fn check_creation_rate(&self, client: Option<IpAddr>) -> Result<()> {
        let settings = &self.inner.settings;
        if let Some(ip) = client {
            let mut creations = self.inner.creations.lock().unwrap();
            let now = Instant::now();
            let recent = creations.entry(ip).or_default();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
            {
                recent.pop_front();
            }
            if recent.len() >= settings.creations_per_minute {
                crate::metrics::LIMITED
                    .with_label_values(&["room_creations"])
                    .inc();
                return Err(Error::Limited(format!(
                    "{ip} created {} rooms in the last minute, the most it may; join one, or wait",
                    settings.creations_per_minute
                )));
            }
            recent.push_back(now);
            if creations.len() > 100_000 {
                creations.retain(|_, r| {
                    r.back()
                        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
                });
            }
        }
        Ok(())
    }

    /// Declares room `room`'s inbox with its kind's policy, and tells the broker's
    /// gatekeeper the kind (its players' input rate).
    async fn open_inbox(&self, room: &str, kind: &str) -> Result<()> {
        self.inner.joins.set_kind(room, kind);
        self.inner
            .admin
            .create_inbox(room, self.policies().of(kind))
            .await
    }

    /// Starts the workers of rooms that were live when the server last stopped; they
    /// carry on from their checkpoints. Returns how many.
    pub async fn resume(&self) -> Result<usize> {
        for (room, player, join) in self.store().joins().await? {
            self.inner.joins.set(&room, &player, &join);
        }
        let live = self.store().live_rooms().await?;
        for record in &live {
            self.open_inbox(&record.id, &record.kind).await?;
            // The broker restarted with this process: every player's connection is gone.
            self.control(&record.id, Control::AllDropped).await?;
            self.inner.launcher.launch(&record.id);
            self.control(&record.id, Control::Wake).await?;
        }
        Ok(live.len())
    }

    /// Adds `player` to a room and issues its ticket. The first join with a name claims
    /// it and answers its player key (the one `key` brings if the client made it, else
    /// a new one); a later one must present `key`. Joining a room
    /// one is in already revokes the earlier ticket and closes its connections.
    pub async fn join(&self, room: &str, player: &str, key: Option<&str>) -> Result<Ticket> {
        check_player_name(player)?;
        self.record(room).await?;
        let new_key = self.own_name(player, key).await?;
        let mut ticket = self.admit(room, player, Value::Null, None).await?;
        ticket.player_key = new_key;
        Ok(ticket)
    }

    /// Quick play: seats `play.name` in the fullest open, unlocked, public room of the
    /// kind whose metadata matches the filter (oldest first among equals), making one
    /// when none fits; or in the private room of `play.code`. The seat is reserved for
    /// the ticket's first connection ([`RoomSettings::seat_ttl`]), then the player's.
    pub async fn quick_play(&self, play: &QuickPlay) -> Result<Ticket> {
        let (player, kind, filter) = self.checked(play)?;
        let new_key = self.own_name(player, play.key.as_deref()).await?;
        let reserve = self.reserve_until();
        let mut ticket = match &play.code {
            Some(code) => {
                let room = self.store().room_by_code(code).await?.ok_or_else(|| {
                    Error::NotFound(format!("no live room has the code {code:?}"))
                })?;
                self.admit(&room.id, player, Value::Null, Some(reserve))
                    .await?
            }
            None => self.seat_anywhere(kind, &filter, player, reserve).await?,
        };
        ticket.player_key = new_key;
        crate::metrics::QUICK_PLAYS.inc();
        Ok(ticket)
    }

    /// A quick play's (or queue ticket's) player, kind and filter, checked.
    fn checked<'a>(&'a self, play: &'a QuickPlay) -> Result<(&'a str, &'a str, Value)> {
        check_player_name(&play.name)?;
        let kind = self
            .policies()
            .kind(play.kind.as_deref())
            .map_err(Error::NotFound)?;
        Ok((&play.name, kind, check_meta(&play.filter)?))
    }

    /// Seats `player` in an open room of `kind` matching `filter`, or a new one.
    ///
    /// Every quick play for the same kind and filter wants the same room, the fullest
    /// with a seat: asking the store for it each time, one at a time, made the store's
    /// round trips the lobby's ceiling. The lobby hands the seats out from a shelf of the
    /// store's candidates instead ([`OpenSeats`]), and the store confirms each one. One
    /// quick play at a time stocks an empty or stale shelf, or makes the room that goes
    /// on it when none fits; the others wait for it rather than each asking the store.
    async fn seat_anywhere(
        &self,
        kind: &str,
        filter: &Value,
        player: &str,
        reserve: i64,
    ) -> Result<Ticket> {
        let join = random_id(4);
        let shelves = &self.inner.open_seats;
        let key = OpenSeats::key(kind, filter);
        let (record, first_visit) = loop {
            if let Some(record) = shelves.hand_out(&key, SHELF_FRESH) {
                match self.take_seat(&record, player, &join, Some(reserve)).await {
                    Ok(first_visit) => break (record, first_visit),
                    // Taken through another lobby, locked or ended since: the next.
                    Err(Error::Limited(_) | Error::Conflict(_) | Error::NotFound(_)) => {
                        shelves.refused(&key, &record.id);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let missed = Instant::now();
            let _stocking = self.inner.stocking.lock().await;
            if shelves.stocked_after(&key, missed) {
                continue;
            }
            let mut rooms = self.candidates(kind, filter).await?;
            if rooms.is_empty() {
                let spec = RoomSpec {
                    name: kind.to_owned(),
                    kind: Some(kind.to_owned()),
                    meta: filter.clone(),
                    private: false,
                };
                let record = self.make_room(&spec).await?;
                let free = self.policies().of(kind).max_players;
                rooms.push((record, free));
            }
            shelves.stock(&key, rooms, SHELF_FRESH);
        };
        self.seated(
            &record,
            player,
            &join,
            Value::Null,
            Some(reserve),
            first_visit,
        )
        .await?;
        Ok(self.ticket(&record.id, player, &join))
    }

    /// The store's open rooms of `kind` that match `filter`, fullest first, then oldest,
    /// at most a shelf's worth, each with its free seats.
    async fn candidates(&self, kind: &str, filter: &Value) -> Result<Vec<(RoomRecord, usize)>> {
        const PAGE: usize = 32;
        let max = self.policies().of(kind).max_players;
        let mut found = Vec::new();
        let mut offset = 0;
        loop {
            let page = self.store().open_rooms(kind, max, offset, PAGE).await?;
            let last_page = page.len() < PAGE;
            found.extend(
                page.into_iter()
                    .filter(|r| matches_filter(&r.meta, filter))
                    .map(|r| {
                        let free = max.saturating_sub(r.seats);
                        (r, free)
                    }),
            );
            if last_page || found.len() >= PAGE {
                return Ok(found);
            }
            offset += PAGE;
        }
    }

    /// Puts `play.name` in the matchmaking queue for a group of `play.kind` with
    /// `play.filter`: the group forms once the kind's `min_players` compatible tickets
    /// wait (a ticket waiting [`RoomSettings::queue_widen`] takes any filter), and all
    /// of them get tickets to one new room. Poll it with [`Rooms::poll_queue`].
    pub async fn enqueue(&self, play: &QuickPlay) -> Result<QueueView> {
        if play.code.is_some() {
            return Err(Error::Invalid(
                "the queue makes a new room for its group; a private room's code is for POST /matchmake".into(),
            ));
        }
        let (player, kind, filter) = self.checked(play)?;
        let new_key = self.own_name(player, play.key.as_deref()).await?;
        let id = random_id(16);
        self.store().enqueue(&id, kind, &filter, player).await?;
        let mut view = self.poll_queue(&id).await?;
        view.player_key = new_key;
        Ok(view)
    }

    /// Queue ticket `id`: matched (with the room's ticket), or still waiting. Polling
    /// keeps it in the queue, and forms the groups of its kind that can be formed.
    pub async fn poll_queue(&self, id: &str) -> Result<QueueView> {
        let gone = || {
            Error::NotFound(format!(
                "no ticket {id} in the queue: it was cancelled, dropped (not polled for {} s), or never there",
                self.inner.settings.queue_drop.as_secs()
            ))
        };
        let mut ticket = self.store().poll_ticket(id).await?.ok_or_else(gone)?;
        if ticket.matched.is_none() {
            self.form_groups(&ticket.kind).await?;
            ticket = self.store().poll_ticket(id).await?.ok_or_else(gone)?;
        }
        let waited_ms = (crate::store::now_ms() - ticket.created_at).max(0) as u64;
        let mut view = QueueView {
            id: ticket.id.clone(),
            kind: ticket.kind.clone(),
            waited_ms,
            ..QueueView::default()
        };
        match &ticket.matched {
            Some(matched) => {
                view.status = "matched".into();
                view.ticket = Some(self.seat_matched(&ticket, matched).await?);
            }
            None => {
                view.status = "waiting".into();
                view.waiting = self.store().waiting(&ticket.kind).await?;
            }
        }
        Ok(view)
    }

    /// Takes queue ticket `id` out of the queue.
    pub async fn cancel_queued(&self, id: &str) -> Result<()> {
        if self.store().cancel_ticket(id).await? {
            return Ok(());
        }
        match self.store().poll_ticket(id).await? {
            Some(_) => Err(Error::Conflict(format!(
                "ticket {id} is matched already: poll it for its room's ticket"
            ))),
            None => Err(Error::NotFound(format!("no ticket {id} in the queue"))),
        }
    }

    /// Forms every group of `kind` the queue holds, each in a new room whose players are
    /// seated at once (each ticket's poll seats its player again if this fails midway).
    async fn form_groups(&self, kind: &str) -> Result<()> {
        let policy = self.policies().of(kind);
        let settings = &self.inner.settings;
        let rule = GroupRule {
            min: policy.min_players,
            max: policy.max_players,
            widen_after_ms: settings.queue_widen.as_millis() as i64,
            drop_after_ms: settings.queue_drop.as_millis() as i64,
        };
        loop {
            let room = random_id(4);
            let formed = self
                .store()
                .form_group(kind, rule, &room, || random_id(4))
                .await?;
            let Some((meta, group)) = formed else {
                return Ok(());
            };
            self.open_group_room(&room, kind, &meta).await?;
            crate::metrics::QUICK_PLAYS.inc_by(group.len() as u64);
            let reserve = self.reserve_until();
            for (player, join) in group {
                if let Err(e) = self
                    .admit_as(&room, &player, &join, Value::Null, Some(reserve))
                    .await
                {
                    tracing::warn!(%room, %player, "cannot seat a matched player yet (its poll tries again): {e}");
                }
            }
        }
    }

    /// Makes a matched group's room `room`, unless it exists.
    async fn open_group_room(&self, room: &str, kind: &str, meta: &Value) -> Result<()> {
        // The inbox first: a worker that sees the record must find its inbox.
        self.open_inbox(room, kind).await?;
        let new = NewRoom {
            id: room,
            name: kind,
            kind,
            meta,
            code: None,
        };
        self.store().create_room_once(&new).await?;
        self.inner.launcher.launch(room);
        self.control(room, Control::Wake).await
    }

    /// The room's ticket of a matched queue ticket's player, seating the player first
    /// if whoever formed the group did not (it died, say).
    async fn seat_matched(&self, ticket: &QueueTicket, matched: &Matched) -> Result<Ticket> {
        let (room, player) = (matched.room.as_str(), ticket.player.as_str());
        if self.store().player_join(room, player).await?.as_deref() != Some(&matched.join) {
            if self.store().room(room).await?.is_none() {
                self.open_group_room(room, &ticket.kind, &matched.meta)
                    .await?;
            }
            let reserve = self.reserve_until();
            self.admit_as(room, player, &matched.join, Value::Null, Some(reserve))
                .await?;
        }
        Ok(self.ticket(room, player, &matched.join))
    }

    /// When a seat reserved now is given up unless its ticket connects.
    fn reserve_until(&self) -> i64 {
        crate::store::now_ms() + self.inner.settings.seat_ttl.as_millis() as i64
    }

    /// Gives up the seats quick play reserved whose first connection did not come in
    /// time: the player leaves the room (its leave hook runs). Returns how many.
    pub async fn expire_reservations(&self) -> Result<usize> {
        // Queue tickets whose group was formed long ago are done with.
        self.store().forget_matched_tickets(10 * 60 * 1000).await?;
        let mut given_up = 0;
        for (room, player, join) in self.store().expired_reservations(500).await? {
            if !self
                .store()
                .expire_reservation(&room, &player, &join)
                .await?
            {
                continue; // confirmed, or given up by another lobby, meanwhile
            }
            given_up += 1;
            self.inner.joins.remove(&room, &player);
            self.inner.admin.disconnect(&room, &player).await?;
            self.control(
                &room,
                Control::Leave {
                    player: player.clone(),
                },
            )
            .await?;
        }
        Ok(given_up)
    }

    /// What a broker saw of a player: a reserved seat confirmed by the ticket's first
    /// connection, or a connection that came or went (told to the room, in line with the
    /// inputs: the room knows who is connected, and when to run `on_drop`).
    pub async fn player_seen(&self, event: PlayerEvent) -> Result<()> {
        match event {
            PlayerEvent::Confirmed(claims) => self
                .store()
                .confirm_seat(&claims.room, &claims.player, &claims.join)
                .await
                .map(drop),
            PlayerEvent::Watching { room, watcher } => {
                self.control(&room, Control::Watch { watcher }).await
            }
            PlayerEvent::Presence {
                room,
                player,
                connection,
                connected,
            } => {
                let control = Control::Presence {
                    player,
                    connection,
                    connected,
                };
                self.control(&room, control).await
            }
        }
    }

    /// Moves `player`, who is in room `from` (as a current ticket proved), to room `to`,
    /// carrying `carried` into `to`'s join hook ([`crate::msg::Arrival::carried`]), for a
    /// game's lobby route. The new room's ticket is issued first, then the player leaves
    /// `from`; their items arrive as at any join. (A room's handlers move players with
    /// [`crate::RoomCtx::transfer`], which [`Rooms::carry_out`] carries out.)
    pub async fn transfer(
        &self,
        from: &str,
        player: &str,
        to: &str,
        carried: Value,
    ) -> Result<Ticket> {
        if from == to {
            return Err(Error::Invalid(format!("{player} is in room {to} already")));
        }
        self.record(to).await?;
        let ticket = self.admit(to, player, carried, None).await?;
        if let Err(e) = self.remove(from, player).await {
            tracing::warn!(%from, %to, %player, "moved, but could not leave the room before: {e}");
        }
        Ok(ticket)
    }

    /// The live room named `name` that transfers lead to, created if there is none: one
    /// a name, however many lobbies and workers ask at once (the store settles it, see
    /// [`Store::named_room`]). Rooms created through [`Rooms::create`] do not hold their
    /// name: many may share one.
    /// A room made here is of `kind`.
    pub async fn named_room(&self, name: &str, kind: &str) -> Result<String> {
        check_room_name(name)?;
        let (room, created) = self.store().named_room(name, &random_id(4), kind).await?;
        // Whoever created it may not have made its inbox yet (or died first): declaring
        // it again changes nothing, and a `$join` put in it is not lost.
        let kind = self.record(&room).await?.kind;
        self.open_inbox(&room, &kind).await?;
        if created {
            self.inner.launcher.launch(&room);
            self.control(&room, Control::Wake).await?;
        }
        Ok(room)
    }

    /// Carries out `transfer`, which room `transfer.from` asked for
    /// ([`crate::RoomCtx::transfer`]) and saved in the outbox with its checkpoint: moves
    /// the player to the live room of that name, carrying its value into the join hook,
    /// and answers the new room's ticket (the player's old ticket is revoked, its
    /// connections closed a moment later, once the new ticket had time to reach them).
    ///
    /// Once, however often it is called with the same key: the first call plans the
    /// transfer (the room, the new join) in the outbox, and every later one follows that
    /// plan, doing only what is not done yet. `None`: nothing was left to do (the
    /// transfer was done and the player has moved on, or it left the room before).
    pub async fn carry_out(&self, transfer: &Transfer) -> Result<Option<Ticket>> {
        let Transfer { from, player, .. } = transfer;
        let store = self.store();
        let plan = match store.transfer_plan(&transfer.key).await? {
            Some(plan) => plan,
            None => match self.plan(transfer).await? {
                Some(plan) => plan,
                None => return Ok(None),
            },
        };
        let to = plan.to_room.as_str();
        let in_from = store.player_join(from, player).await? == Some(plan.from_join.clone());
        let in_to = store.player_join(to, player).await? == Some(plan.join.clone());
        if in_to {
            // A try before admitted the player; its `$join` may not have reached the
            // room: again (a room ignores the join of a player it has).
            self.inner.joins.set(to, player, &plan.join);
            let room_name = self.record(to).await?.name;
            let arrival = self
                .arrival(room_name, player, transfer.carried.clone())
                .await?;
            self.control(
                to,
                Control::Join {
                    player: player.clone(),
                    arrival: Some(arrival),
                },
            )
            .await?;
            self.inner.launcher.launch(to);
        } else if in_from {
            self.admit_as(to, player, &plan.join, transfer.carried.clone(), None)
                .await?;
        } else {
            return Ok(None);
        }
        if in_from {
            self.leave_for(from, player).await?;
        }
        Ok(Some(self.ticket(to, player, &plan.join)))
    }

    /// The plan of a transfer's first try: where to, and the new join. `None` when the
    /// player is no longer in the room it would leave.
    async fn plan(&self, transfer: &Transfer) -> Result<Option<TransferPlan>> {
        let Transfer {
            key,
            from,
            player,
            room,
            ..
        } = transfer;
        let Some(from_join) = self.store().player_join(from, player).await? else {
            return Ok(None);
        };
        // A room a transfer makes is of the kind of the room the player leaves.
        let kind = self.record(from).await?.kind;
        let to_room = self.named_room(room, &kind).await?;
        if &to_room == from {
            return Err(Error::Invalid(format!(
                "{player} is in room {room:?} already"
            )));
        }
        let plan = TransferPlan {
            to_room,
            join: random_id(4),
            from_join,
        };
        let planned = self.store().plan_transfer(key, &plan).await?;
        planned
            .map(Some)
            .ok_or_else(|| Error::NotFound(format!("no transfer {key} in the outbox")))
    }

    /// `player` leaves `room` for another: as [`Rooms::leave`], but its connections stay
    /// open a moment, for the new ticket to reach them.
    async fn leave_for(&self, room: &str, player: &str) -> Result<()> {
        if !self.store().remove_player(room, player).await? {
            return Ok(()); // gone already
        }
        self.inner.joins.remove(room, player);
        self.control(
            room,
            Control::Leave {
                player: player.to_owned(),
            },
        )
        .await?;
        let (admin, room, player) = (self.inner.admin.clone(), room.to_owned(), player.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(TRANSFER_HANDOVER).await;
            if let Err(e) = admin.disconnect(&room, &player).await {
                tracing::warn!(%room, %player, "cannot close the connections of a transferred player: {e}");
            }
        });
        Ok(())
    }

    /// Seats a player whose right to the name is settled, and issues its ticket; a
    /// first visit puts a `$join` with what the player brings into the inbox. With
    /// `reserve_until` the seat is a reservation until the ticket's first connection.
    async fn admit(
        &self,
        room: &str,
        player: &str,
        carried: Value,
        reserve_until: Option<i64>,
    ) -> Result<Ticket> {
        let join = random_id(4);
        self.admit_as(room, player, &join, carried, reserve_until)
            .await?;
        Ok(self.ticket(room, player, &join))
    }

    /// [`Rooms::admit`] with the join `join`.
    async fn admit_as(
        &self,
        room: &str,
        player: &str,
        join: &str,
        carried: Value,
        reserve_until: Option<i64>,
    ) -> Result<()> {
        let record = self.record(room).await?;
        let first_visit = self.take_seat(&record, player, join, reserve_until).await?;
        self.seated(&record, player, join, carried, reserve_until, first_visit)
            .await
    }

    /// Seats `player` in `record`'s room with join `join` in the store; whether it is
    /// a first visit (or an error: the room is full, locked, or gone).
    async fn take_seat(
        &self,
        record: &RoomRecord,
        player: &str,
        join: &str,
        reserve_until: Option<i64>,
    ) -> Result<bool> {
        let room = record.id.as_str();
        let max = self.policies().of(&record.kind).max_players;
        let seated = self
            .store()
            .add_player(room, player, join, max, reserve_until)
            .await?;
        let first_visit = match seated {
            Seated::Added => true,
            Seated::There => false,
            Seated::Full => return Err(self.no_seat(room, max).await),
        };
        if !first_visit {
            self.store().rejoin_player(room, player, join).await?;
        }
        Ok(first_visit)
    }

    /// The rest of a seating: the broker's registry, and the `$join` with what the
    /// player brings (a first visit) or the earlier ticket's connections closed.
    async fn seated(
        &self,
        record: &RoomRecord,
        player: &str,
        join: &str,
        carried: Value,
        reserve_until: Option<i64>,
        first_visit: bool,
    ) -> Result<()> {
        let room = record.id.as_str();
        // The registry first, so that the earlier ticket cannot connect again once its
        // connections are closed.
        self.inner.joins.set(room, player, join);
        if reserve_until.is_some() {
            self.inner.joins.reserve(join);
        }
        if first_visit {
            let arrival = self.arrival(record.name.clone(), player, carried).await?;
            let control = Control::Join {
                player: player.to_owned(),
                arrival: Some(arrival),
            };
            self.control(room, control).await?;
        } else {
            self.inner.admin.disconnect(room, player).await?;
        }
        // A room can sleep (on Lambda, an empty room's worker chain ends): the join
        // wakes it. Launchers ignore rooms that have their worker.
        self.inner.launcher.launch(room);
        Ok(())
    }

    /// Why room `room` gave no seat: it is locked, it has ended, or it is full.
    async fn no_seat(&self, room: &str, max: usize) -> Error {
        match self.record(room).await {
            Ok(record) if record.locked => {
                Error::Conflict(format!("room {room} is locked: it takes no one now"))
            }
            Ok(_) => {
                crate::metrics::LIMITED
                    .with_label_values(&["players_per_room"])
                    .inc();
                Error::Limited(format!(
                    "room {room} is full: it has {max} players, its most"
                ))
            }
            Err(e) => e,
        }
    }

    /// What `player` brings into the room named `room_name`: the name, the player's items,
    /// `carried`.
    async fn arrival(&self, room_name: String, player: &str, carried: Value) -> Result<Arrival> {
        Ok(Arrival {
            room_name,
            items: self.store().items(player).await?,
            carried,
        })
    }

    /// The ticket of `player`'s join `join` of `room`.
    fn ticket(&self, room: &str, player: &str, join: &str) -> Ticket {
        let names = self.inner.admin.names();
        let endpoints = self.inner.admin.endpoints();
        let (token, expires) =
            self.signer()
                .issue_expiring(room, player, join, self.inner.settings.ticket_ttl);
        // Each player starts at a node of its own, and fails over along its own order.
        let key = format!("{room}/{player}");
        let ws_urls = Endpoints::spread(&endpoints.ws_urls, &key);
        let tcp_urls = Endpoints::spread(&endpoints.tcp_urls, &key);
        Ticket {
            room: room.to_owned(),
            player: player.to_owned(),
            ws_url: ws_urls.first().cloned().unwrap_or_default(),
            tcp_url: tcp_urls.first().cloned().unwrap_or_default(),
            ws_urls,
            tcp_urls,
            login: names.login(room, player),
            token,
            expires,
            inbox: names.inbox(room, player),
            topic: names.topic(room),
            private: names.private(room, player),
            player_key: None,
            spectator: false,
        }
    }

    /// A spectator's ticket for `room`: it may read the room's topic and its own
    /// destination, and send nothing. The kind's `spectators` bound is held at its
    /// connection (on the embedded broker).
    pub async fn spectate(&self, room: &str) -> Result<Ticket> {
        self.record(room).await?;
        let watcher = format!("~{}", random_id(4));
        let mut ticket = self.ticket(room, &watcher, &format!("{SPECTATOR_JOIN}{}", random_id(4)));
        ticket.inbox = String::new();
        ticket.spectator = true;
        Ok(ticket)
    }

    /// Checks that whoever joins as `player` may use the name: claims it (and returns
    /// its new key) if nobody has, or checks `key` against it.
    async fn own_name(&self, player: &str, key: Option<&str>) -> Result<Option<String>> {
        let taken = || {
            Error::Forbidden(format!(
                "the name {player} belongs to someone else: join with its player key (\"key\", answered as player_key by its first join), or pick another name"
            ))
        };
        // Without a key only an unclaimed name will do: claim it at once (one store
        // round trip, where looking first took two).
        let known = match key {
            Some(key) => Some((key, self.store().name_key(player).await?)),
            None => None,
        };
        let claim = match known {
            Some((key, Some(hash))) if key_hash(key) == hash => return Ok(None),
            Some((_, Some(_))) => return Err(taken()),
            // A first join with a key its client made: the name is claimed with that key,
            // so this join asked again after its answer was lost is let in, not refused.
            Some((key, None)) if is_new_player_key(key, player) => key.to_owned(),
            _ => player_key(player),
        };
        if self.store().claim_name(player, &key_hash(&claim)).await? {
            Ok(Some(claim))
        } else if self.store().name_key(player).await? == Some(key_hash(&claim)) {
            Ok(None) // the same first join, asked twice at once
        } else {
            Err(taken()) // someone's already, or claimed a moment ago
        }
    }

    /// The holder of a current ticket leaves its room; the ticket is revoked.
    pub async fn leave(&self, member: &Claims) -> Result<()> {
        self.remove(&member.room, &member.player).await
    }

    /// Removes `player` from `room`. It checks no rights: the caller does, as the lobby
    /// does with [`Rooms::may_manage`] (the room's owner token or the operator secret).
    pub async fn kick(&self, room: &str, player: &str) -> Result<()> {
        self.remove(room, player).await
    }

    async fn remove(&self, room: &str, player: &str) -> Result<()> {
        self.record(room).await?;
        if !self.store().remove_player(room, player).await? {
            return Err(Error::NotFound(format!("{player} is not in room {room}")));
        }
        self.inner.joins.remove(room, player);
        self.inner.admin.disconnect(room, player).await?;
        self.control(
            room,
            Control::Leave {
                player: player.to_owned(),
            },
        )
        .await
    }

    /// Asks a room's worker to end the room: it announces the end, saves, and deletes
    /// the inbox.
    pub async fn end(&self, room: &str, reason: &str) -> Result<()> {
        self.record(room).await?;
        self.control(
            room,
            Control::End {
                reason: reason.to_owned(),
            },
        )
        .await?;
        // A room that sleeps (on Lambda, an empty room's worker chain ends) wakes to end.
        self.inner.launcher.launch(room);
        Ok(())
    }

    /// [`Rooms::end`], then waits up to [`END_WAIT`] for the room's worker to have
    /// ended it: `Ended` if it has, `Ending` if not yet (it still will).
    pub async fn end_within(&self, room: &str, reason: &str) -> Result<Ending> {
        self.end(room, reason).await?;
        let deadline = Instant::now() + END_WAIT;
        loop {
            if self.store().room(room).await?.is_none() {
                return Ok(Ending::Ended);
            }
            if Instant::now() >= deadline {
                return Ok(Ending::Ending);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Puts a lobby control message in a room's inbox, in line with the players' inputs.
    async fn control(&self, room: &str, control: Control) -> Result<()> {
        self.inner
            .admin
            .publish_control(room, control.to_json())
            .await
    }
}

impl Transfers for Rooms {
    fn transfer<'a>(&'a self, transfer: &'a Transfer) -> BoxFuture<'a, Result<Option<Ticket>>> {
        Box::pin(self.carry_out(transfer))
    }

    fn leave<'a>(&'a self, room: &'a str, player: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.remove(room, player).await {
                Err(Error::NotFound(_)) => Ok(()), // gone already, or the room ended
                done => done,
            }
        })
    }
}

/// How long a transferred player's connections to the room it left stay open: long
/// enough for the new ticket, sent on them, to arrive.
/// How long ending a room through the lobby waits for its worker to have ended it.
pub const END_WAIT: Duration = Duration::from_secs(5);

/// How long quick play hands out seats from a shelf before it asks the store again:
/// how soon seats freed by leavers, rooms made through another lobby and a room's new
/// metadata show up in this lobby's quick plays.
const SHELF_FRESH: Duration = Duration::from_secs(1);

const TRANSFER_HANDOVER: Duration = Duration::from_secs(2);

fn check_room_name(name: &str) -> Result<()> {
    let blank = name.chars().all(|c| c == ' ');
    if blank || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "a room name has 1 to 64 characters, not control characters, not only spaces".into(),
        ));
    }
    Ok(())
}

impl Rooms {
    /// A room as `viewer` may see it: player names only for its members and the
    /// operator.
    fn view(&self, record: RoomRecord, players: Vec<String>, viewer: &Viewer) -> RoomView {
        let member = viewer.member.as_ref().is_some_and(|c| c.room == record.id);
        let visible = member || viewer.operator;
        let kind = match record.kind.as_str() {
            "" => self.policies().default_kind().to_owned(),
            kind => kind.to_owned(),
        };
        RoomView {
            players_online: players.len(),
            players: if visible { players } else { Vec::new() },
            players_hidden: (!visible).then(|| {
                "player names are shown to the room's players (Authorization: Bearer TOKEN) and the operator".to_owned()
            }),
            owner_token: None,
            max_players: self.policies().of(&kind).max_players,
            seats: record.seats,
            kind,
            meta: record.meta,
            locked: record.locked,
            private: record.code.is_some(),
            code: None,
            players_connected: 0,
            players_in_grace: 0,
            in_grace: Vec::new(),
            id: record.id,
            name: record.name,
            created_at: record.created_at,
        }
    }
}

fn check_player_name(player: &str) -> Result<()> {
    if !valid_name(player) {
        return Err(Error::Invalid(
            "a player name has 1 to 32 letters, digits, '-' or '_'".into(),
        ));
    }
    Ok(())
}

/// Metadata as stored: an object (`null` is none); anything else is refused.
fn check_meta(meta: &Value) -> Result<Value> {
    match meta {
        Value::Null => Ok(Value::Object(Default::default())),
        Value::Object(map) if meta.to_string().len() <= 4096 && map.len() <= 32 => Ok(meta.clone()),
        Value::Object(_) => Err(Error::Invalid(
            "room metadata holds at most 32 keys and 4 KiB of JSON".into(),
        )),
        _ => Err(Error::Invalid(
            "room metadata is a JSON object, such as {\"mode\": \"ranked\"}".into(),
        )),
    }
}

/// Whether `meta` has every key of `filter` (an object) with the same value.
fn matches_filter(meta: &Value, filter: &Value) -> bool {
    filter
        .as_object()
        .is_none_or(|wanted| wanted.iter().all(|(k, v)| meta.get(k) == Some(v)))
}

/// A private room's code: six letters and digits, none that read alike.
fn room_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random_bytes(6)
        .into_iter()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}
