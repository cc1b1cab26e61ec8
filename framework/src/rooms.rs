//! The room service: create, list, join, leave and end rooms. It keeps the store, the
//! broker's inboxes and the room workers in step, and knows nothing of HTTP: the lobby
//! serves it over axum, and other front ends (tests, Lambda) can call it directly.

use crate::admin::BrokerAdmin;
use crate::proto::{valid_name, RoomView, Ticket};
use crate::store::{RoomRecord, Store};
use crate::token::{random_id, Signer};
use crate::worker::{Control, Launcher};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

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
    ticket_ttl: Duration,
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
    /// `launcher`; join tokens are signed by `signer` and valid for `ticket_ttl`.
    pub fn new(
        store: Store,
        signer: Signer,
        admin: Arc<dyn BrokerAdmin>,
        launcher: Arc<dyn Launcher>,
        ticket_ttl: Duration,
    ) -> Rooms {
        Rooms {
            inner: Arc::new(Inner {
                store,
                signer,
                admin,
                launcher,
                ticket_ttl,
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

    /// A live room as the lobby shows it.
    pub async fn get(&self, id: &str) -> Result<RoomView> {
        let record = self.record(id).await?;
        self.view(record).await
    }

    /// Every live room, oldest first.
    pub async fn list(&self) -> Result<Vec<RoomView>> {
        let mut views = Vec::new();
        for record in self.store().live_rooms().await? {
            views.push(self.view(record).await?);
        }
        Ok(views)
    }

    async fn view(&self, record: RoomRecord) -> Result<RoomView> {
        let players = self.store().players(&record.id).await?;
        Ok(RoomView {
            players_online: players.len(),
            players,
            id: record.id,
            name: record.name,
            created_at: record.created_at,
        })
    }

    /// Creates a room: its inbox, its record, and its worker.
    pub async fn create(&self, name: &str) -> Result<RoomView> {
        if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(Error::Invalid(
                "a room name has 1 to 64 printable characters".into(),
            ));
        }
        let id = random_id(4);
        // The inbox first: a worker that sees the record must find its inbox.
        self.inner.admin.create_inbox(&id).await?;
        let record = self.store().create_room(&id, name).await?;
        self.inner.launcher.launch(&id);
        // The first message makes some worker the room's active one: the room ticks
        // (and can end idle) before anyone joins.
        self.control(&id, Control::Wake).await?;
        self.view(record).await
    }

    /// Starts the workers of rooms that were live when the server last stopped; they
    /// carry on from their checkpoints. Returns how many.
    pub async fn resume(&self) -> Result<usize> {
        let live = self.store().live_rooms().await?;
        for record in &live {
            self.inner.admin.create_inbox(&record.id).await?;
            self.inner.launcher.launch(&record.id);
            self.control(&record.id, Control::Wake).await?;
        }
        Ok(live.len())
    }

    /// Adds `player` to a room and issues its ticket. A player already in the room gets
    /// a new ticket only if `token` is one of that player's tokens for this room (a
    /// rejoin after a crash, say); otherwise the name is taken ([`Error::Conflict`]).
    pub async fn join(&self, room: &str, player: &str, token: Option<&str>) -> Result<Ticket> {
        if !valid_name(player) {
            return Err(Error::Invalid(
                "a player name has 1 to 32 letters, digits, '-' or '_'".into(),
            ));
        }
        self.record(room).await?;
        if self
            .store()
            .players(room)
            .await?
            .iter()
            .any(|p| p == player)
        {
            let claims = token.and_then(|t| self.signer().verify(t).ok());
            if !claims.is_some_and(|c| c.room == room && c.player == player) {
                return Err(Error::Conflict(format!(
                    "{player} is already in room {room}: pick another name, or rejoin with {player}'s token (Authorization: Bearer)"
                )));
            }
        }
        self.store().add_player(room, player).await?;
        self.control(
            room,
            Control::Join {
                player: player.to_owned(),
            },
        )
        .await?;
        let names = self.inner.admin.names();
        let endpoints = self.inner.admin.endpoints();
        let (token, expires) = self
            .signer()
            .issue_expiring(room, player, self.inner.ticket_ttl);
        Ok(Ticket {
            room: room.to_owned(),
            player: player.to_owned(),
            ws_url: endpoints.ws_url.clone(),
            tcp_url: endpoints.tcp_url.clone(),
            login: names.login(room, player),
            token,
            expires,
            inbox: names.inbox(room, player),
            topic: names.topic(room),
            private: names.private(room, player),
        })
    }

    /// Removes `player` from a room, or [`Error::NotFound`] if it is not there.
    pub async fn leave(&self, room: &str, player: &str) -> Result<()> {
        self.record(room).await?;
        if !self.store().remove_player(room, player).await? {
            return Err(Error::NotFound(format!("{player} is not in room {room}")));
        }
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
        .await
    }

    /// Puts a lobby control message in a room's inbox, in line with the players' inputs.
    async fn control(&self, room: &str, control: Control) -> Result<()> {
        self.inner
            .admin
            .publish_control(room, control.to_json())
            .await
    }
}
