//! The operator's view into the rooms, which the lobby's inspector serves
//! (`GET /admin/rooms`): each room's figures from the store, the broker and the room's
//! latest checkpoint, and the operator's own actions (lock, send as a test player).
//!
//! Where each figure comes from, in every mode: the room's record and seats, its worker
//! and code version, its seq, its players' presence, its latest inputs and input rate
//! from the store (the room's row and latest checkpoint, which the worker saves);
//! the inbox from the broker (the embedded broker's own count, or RabbitMQ's management
//! API); spectators from the embedded broker only (RabbitMQ does not tell them apart).

use super::{Rooms, Viewer};
use crate::proto::RoomView;
use crate::store::Inspection;
use crate::worker::activity::{Activity, InputRecord};
use crate::{Error, Result};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;

/// A live room as the operator's inspector lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomInspection {
    /// The room as `GET /rooms/{id}` shows it to the operator.
    #[serde(flatten)]
    pub room: RoomView,
    /// Spectators connected, where the broker tells (the embedded broker).
    pub spectators: Option<usize>,
    /// The room seq (its latest broadcast) as of its latest checkpoint; `None` before
    /// the first.
    pub seq: Option<u64>,
    /// Its inbox, where the broker tells.
    pub inbox: Option<InboxFigures>,
    /// Inputs a second over the ten seconds before its latest input, as of its latest
    /// checkpoint; 0 once that input is ten seconds old.
    pub inputs_per_second: f64,
    /// The code version the room is pinned to (Lambda mode), if any.
    pub code_version: Option<String>,
    /// The worker that last became the room's active one (`local` in the all-in-one
    /// server).
    pub worker: Option<String>,
    /// Seconds since its latest checkpoint was saved; `None` before the first.
    pub checkpoint_age_secs: Option<u64>,
}

/// A room's inbox, as the broker counts it.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct InboxFigures {
    /// Messages in it that no one has acked, delivered or not.
    pub messages: u64,
    /// Of those, the ones its worker has (applied, not yet in a saved checkpoint).
    pub unacked: u64,
    /// Its consumers: the active worker and any standing by.
    pub consumers: u64,
}

/// One room, whole, for the inspector's room page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomDetail {
    /// Its figures.
    #[serde(flatten)]
    pub inspection: RoomInspection,
    /// Its game state as its latest checkpoint holds it (`null` before the first).
    pub state: Value,
    /// Its latest inputs, newest last, as its latest checkpoint holds them.
    pub recent_inputs: Vec<InputRecord>,
    /// Its players, each with its connection state.
    pub presence: Vec<PlayerPresence>,
}

/// A player of a room and its connection.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlayerPresence {
    /// The player.
    pub name: String,
    /// `connected`, `in_grace` (dropped, its seat kept), or `not_connected` (joined,
    /// not connected yet or any more).
    pub connection: &'static str,
}

impl Rooms {
    /// Every live room, private ones included, oldest first, with the inspector's
    /// figures; from `offset`, at most `limit`.
    pub async fn inspect_rooms(&self, offset: usize, limit: usize) -> Result<Vec<RoomInspection>> {
        let operator = Viewer {
            member: None,
            operator: true,
        };
        let views = self.list(&operator, offset, limit).await?;
        self.inspections(views).await
    }

    /// One live room, whole.
    pub async fn inspect_room(&self, room: &str) -> Result<RoomDetail> {
        let operator = Viewer {
            member: None,
            operator: true,
        };
        let view = self.get(room, &operator).await?;
        let checkpoint = self.store().checkpoint(room).await?;
        let inspection = self.inspections(vec![view]).await?.remove(0);
        let (state, activity, applied) = match checkpoint {
            Some(c) => (
                serde_json::from_str(&c.state).unwrap_or(Value::Null),
                Activity::from_json(&c.activity),
                c.applied,
            ),
            None => Default::default(),
        };
        let (connected, away) = crate::room::presence_in(applied.keys());
        let presence = inspection
            .room
            .players
            .iter()
            .map(|name| PlayerPresence {
                name: name.clone(),
                connection: if connected.contains(name) {
                    "connected"
                } else if away.contains(name) {
                    "in_grace"
                } else {
                    "not_connected"
                },
            })
            .collect();
        Ok(RoomDetail {
            inspection,
            state,
            recent_inputs: activity.recent.into(),
            presence,
        })
    }

    /// The figures beyond the views: from the store, the broker and the checkpoints.
    async fn inspections(&self, views: Vec<RoomView>) -> Result<Vec<RoomInspection>> {
        let ids: Vec<String> = views.iter().map(|v| v.id.clone()).collect();
        let mut found = self.store().inspections(&ids).await?;
        let now_ms = crate::store::now_ms();
        // The embedded broker counts spectators; RabbitMQ cannot tell them.
        let in_process = self.inner.admin.stats().is_some();
        // The broker's counts a few rooms at a time: on RabbitMQ each is a request to its
        // management API.
        let admin = &self.inner.admin;
        let asks: Vec<_> = views.iter().map(|v| admin.inbox_state(&v.id)).collect();
        let inboxes: Vec<_> = futures_util::stream::iter(asks)
            .buffered(16)
            .try_collect()
            .await?;
        let mut rooms = Vec::with_capacity(views.len());
        for (room, inbox) in views.into_iter().zip(inboxes) {
            let Inspection {
                worker,
                code_version,
                seq,
                checkpoint_at,
                activity,
            } = found.remove(&room.id).unwrap_or_default();
            let activity = Activity::from_json(activity.as_deref().unwrap_or_default());
            rooms.push(RoomInspection {
                spectators: in_process.then(|| self.inner.joins.spectators(&room.id)),
                seq,
                inbox: inbox.map(|i| InboxFigures {
                    messages: i.messages,
                    unacked: i.unacked,
                    consumers: i.consumers,
                }),
                inputs_per_second: activity.rate_at(now_ms.max(0) as u64),
                code_version,
                worker,
                checkpoint_age_secs: checkpoint_at.map(|at| (now_ms / 1000 - at).max(0) as u64),
                room,
            });
        }
        Ok(rooms)
    }

    /// Locks room `room` (quick play and joins pass it by) or unlocks it, as its
    /// handlers can with `ctx.lock()`; the operator's action.
    pub async fn set_locked(&self, room: &str, locked: bool) -> Result<()> {
        self.record(room).await?;
        self.store().set_locked(room, locked).await?;
        Ok(())
    }

    /// Puts `input` in room `room`'s inbox as test player `player` would send it,
    /// seating the player first if it is not in the room (its join hook runs); the
    /// operator's playground. The input's `seq` is the time in milliseconds, above any
    /// earlier one's. Names a player has claimed are refused: a test player must not
    /// take a real player's place or numbers. Answers the `seq`.
    pub async fn send_as(&self, room: &str, player: &str, mut input: Value) -> Result<u64> {
        super::check_player_name(player)?;
        let Some(fields) = input.as_object_mut() else {
            return Err(Error::Invalid(
                "an input is a JSON object with its \"type\"".into(),
            ));
        };
        if self.store().name_key(player).await?.is_some() {
            return Err(Error::Conflict(format!(
                "{player} is a player's name: a test player takes a name nobody claimed"
            )));
        }
        let record = self.record(room).await?;
        if self.store().player_join(room, player).await?.is_none() {
            let join = crate::token::random_id(4);
            self.admit_as(&record.id, player, &join, Value::Null, None)
                .await?;
        }
        let seq = crate::store::now_ms().max(0) as u64;
        fields.insert("seq".into(), seq.into());
        self.inner
            .admin
            .publish_as(room, player, input.to_string())
            .await?;
        Ok(seq)
    }
}
