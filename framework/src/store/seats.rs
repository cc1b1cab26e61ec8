//! Seats: a room's players and the seats quick play reserved, counted in the room's
//! row (`seats`) by the transaction that adds or removes one. The count is raised only
//! `WHERE seats < max`, a single statement either database applies to one row at a
//! time: however many lobbies seat players at once, no room goes over its most, and
//! no seat is given twice.

use super::rooms::{room_record, COLUMNS};
use super::{db, now, now_ms, RoomRecord, Store};
use crate::Result;
use sqlx::Row;

/// What [`Store::add_player`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seated {
    /// The player has a new seat.
    Added,
    /// The player was in the room already: nothing changed.
    There,
    /// The room has no seat left (or has ended, or is locked).
    Full,
}

impl Store {
    /// Seats `player` in `room` with join `join`, if the room has fewer than `max`
    /// seats taken and is live (and unlocked, unless `locked_too`). `reserve_until`
    /// (milliseconds since the epoch) makes it a reservation, given up then unless
    /// [`Store::confirm_seat`] came first.
    pub async fn add_player(
        &self,
        room: &str,
        player: &str,
        join: &str,
        max: usize,
        reserve_until: Option<i64>,
    ) -> Result<Seated> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let seated = sqlx::query(
            "UPDATE rooms SET seats = seats + 1
             WHERE id = $1 AND ended_at IS NULL AND seats < $2 AND locked = 0",
        )
        .bind(room)
        .bind(max as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        let added = sqlx::query(
            "INSERT INTO players (room_id, player, joined_at, join_id, reserved_until)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, player) DO NOTHING",
        )
        .bind(room)
        .bind(player)
        .bind(now())
        .bind(join)
        .bind(reserve_until)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        match (seated, added) {
            (true, true) => {
                tx.commit().await.map_err(db)?;
                Ok(Seated::Added)
            }
            (false, true) => {
                tx.rollback().await.map_err(db)?;
                Ok(Seated::Full)
            }
            (_, false) => {
                tx.rollback().await.map_err(db)?;
                Ok(Seated::There)
            }
        }
    }

    /// Records that `player` left `room`, and frees its seat; returns whether it was
    /// there.
    pub async fn remove_player(&self, room: &str, player: &str) -> Result<bool> {
        self.remove_seat(room, player, None).await
    }

    /// Gives up `player`'s seat in `room` if it is still the unconfirmed reservation of
    /// join `join` and expired; returns whether it did.
    pub async fn expire_reservation(&self, room: &str, player: &str, join: &str) -> Result<bool> {
        self.remove_seat(room, player, Some(join)).await
    }

    async fn remove_seat(&self, room: &str, player: &str, expired: Option<&str>) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let removed = match expired {
            None => sqlx::query("DELETE FROM players WHERE room_id = $1 AND player = $2")
                .bind(room)
                .bind(player)
                .execute(&mut *tx)
                .await
                .map_err(db)?,
            Some(join) => sqlx::query(
                "DELETE FROM players WHERE room_id = $1 AND player = $2 AND join_id = $3
                 AND reserved_until IS NOT NULL AND reserved_until <= $4",
            )
            .bind(room)
            .bind(player)
            .bind(join)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db)?,
        }
        .rows_affected()
            > 0;
        if removed {
            sqlx::query("UPDATE rooms SET seats = seats - 1 WHERE id = $1 AND seats > 0")
                .bind(room)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(removed)
    }

    /// A connection came with join `join`'s ticket: its reserved seat is the player's
    /// for good. Returns whether a reservation was confirmed.
    pub async fn confirm_seat(&self, room: &str, player: &str, join: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE players SET reserved_until = NULL
             WHERE room_id = $1 AND player = $2 AND join_id = $3 AND reserved_until IS NOT NULL",
        )
        .bind(room)
        .bind(player)
        .bind(join)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    /// Reservations past their time, as (room, player, join); at most `limit`.
    pub async fn expired_reservations(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT room_id, player, join_id FROM players
             WHERE reserved_until IS NOT NULL AND reserved_until <= $1 LIMIT $2",
        )
        .bind(now_ms())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("room_id").map_err(db)?,
                    r.try_get("player").map_err(db)?,
                    r.try_get("join_id").map_err(db)?,
                ))
            })
            .collect()
    }

    /// Quick play's candidates: live, unlocked, public rooms of `kind` with fewer than
    /// `max` seats taken, fullest first, then oldest; from `offset`, at most `limit`.
    pub async fn open_rooms(
        &self,
        kind: &str,
        max: usize,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<RoomRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rooms
             WHERE kind = $1 AND ended_at IS NULL AND locked = 0 AND code IS NULL AND seats < $2
             ORDER BY seats DESC, created_at, id LIMIT $3 OFFSET $4"
        ))
        .bind(kind)
        .bind(max as i64)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(room_record).collect()
    }
}
