//! Rooms: created, ended, found by name (one live room a name), listed, and what a
//! room's record says of its worker, its code version and its Lambda chain.

use super::{db, now, Inspection, NewRoom, RoomRecord, Store};
use crate::{Error, Result};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;

impl Store {
    /// Records a new room as `new` describes it.
    pub async fn create_room(&self, new: &NewRoom<'_>) -> Result<RoomRecord> {
        self.insert_room(new, "").await
    }

    /// Records room `new.id` unless it is recorded (a matched group's room, which the
    /// group's first poll makes if whoever formed the group did not live to).
    pub async fn create_room_once(&self, new: &NewRoom<'_>) -> Result<()> {
        self.insert_room(new, "ON CONFLICT (id) DO NOTHING")
            .await
            .map(drop)
    }

    async fn insert_room(&self, new: &NewRoom<'_>, on_conflict: &str) -> Result<RoomRecord> {
        let created_at = now();
        let meta = match new.meta {
            serde_json::Value::Null => serde_json::json!({}),
            meta => meta.clone(),
        };
        sqlx::query(&format!(
            "INSERT INTO rooms (id, name, created_at, kind, meta, code) VALUES ($1, $2, $3, $4, $5, $6) {on_conflict}"
        ))
        .bind(new.id)
        .bind(new.name)
        .bind(created_at)
        .bind(new.kind)
        .bind(meta.to_string())
        .bind(new.code)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(RoomRecord {
            id: new.id.to_owned(),
            name: new.name.to_owned(),
            created_at,
            kind: new.kind.to_owned(),
            meta,
            locked: false,
            code: new.code.map(str::to_owned),
            seats: 0,
        })
    }

    /// Locks or unlocks a live room (quick play and joins pass a locked room by);
    /// returns whether it is live.
    pub async fn set_locked(&self, id: &str, locked: bool) -> Result<bool> {
        let done = sqlx::query("UPDATE rooms SET locked = $1 WHERE id = $2 AND ended_at IS NULL")
            .bind(i64::from(locked))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a live room's metadata; returns whether it is live.
    pub async fn set_meta(&self, id: &str, meta: &serde_json::Value) -> Result<bool> {
        let done = sqlx::query("UPDATE rooms SET meta = $1 WHERE id = $2 AND ended_at IS NULL")
            .bind(meta.to_string())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    /// The live private room whose code is `code`.
    pub async fn room_by_code(&self, code: &str) -> Result<Option<RoomRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rooms WHERE code = $1 AND ended_at IS NULL"
        ))
        .bind(code)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(room_record).transpose()
    }

    /// Marks a room ended and forgets its players, its checkpoint and its claim on a
    /// name ([`Store::named_room`]).
    pub async fn end_room(&self, id: &str, reason: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET ended_at = $1, end_reason = $2 WHERE id = $3")
            .bind(now())
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        for sql in [
            "DELETE FROM players WHERE room_id = $1",
            "DELETE FROM checkpoints WHERE room_id = $1",
            // Its name is free for a new room.
            "DELETE FROM named_rooms WHERE room_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    /// The live room named `name` that transfers lead to: the one that holds the name,
    /// or else a new room `candidate`, recorded here, and `true` for it (its inbox must
    /// exist before, as for any room a worker may see). One room a name, however many
    /// processes ask at once: the name's row is claimed (`INSERT … ON CONFLICT DO
    /// NOTHING`) in the transaction that records the room, then read back. A room that
    /// ends gives its name up; a claim left by one that ended without is dropped here.
    pub async fn named_room(
        &self,
        name: &str,
        candidate: &str,
        kind: &str,
    ) -> Result<(String, bool)> {
        for _ in 0..3 {
            let created_at = now();
            let mut tx = self.pool.begin().await.map_err(db)?;
            let claimed = sqlx::query(
                "INSERT INTO named_rooms (name, room_id, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(candidate)
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected()
                == 1;
            if claimed {
                sqlx::query(
                    "INSERT INTO rooms (id, name, created_at, kind) VALUES ($1, $2, $3, $4)",
                )
                .bind(candidate)
                .bind(name)
                .bind(created_at)
                .bind(kind)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            let row = sqlx::query(
                "SELECT n.room_id, r.ended_at FROM named_rooms n
                 LEFT JOIN rooms r ON r.id = n.room_id WHERE n.name = $1",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            let room: String = row.try_get("room_id").map_err(db)?;
            let ended: Option<i64> = row.try_get("ended_at").map_err(db)?;
            if ended.is_none() {
                tx.commit().await.map_err(db)?;
                return Ok((room, claimed));
            }
            sqlx::query("DELETE FROM named_rooms WHERE name = $1 AND room_id = $2")
                .bind(name)
                .bind(&room)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
        }
        Err(Error::Store(format!(
            "no live room named {name:?} could be found or made"
        )))
    }

    /// Rooms that have not ended, oldest first.
    pub async fn live_rooms(&self) -> Result<Vec<RoomRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rooms WHERE ended_at IS NULL ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(room_record).collect()
    }

    /// Live rooms with their players (sorted), oldest first, in one query; from
    /// `offset`, at most `limit` rooms; private ones only `with_private`.
    pub async fn live_rooms_with_players(
        &self,
        offset: usize,
        limit: usize,
        with_private: bool,
    ) -> Result<Vec<(RoomRecord, Vec<String>)>> {
        let rows = sqlx::query(&format!(
            "SELECT r.*, p.player
             FROM (SELECT {COLUMNS} FROM rooms WHERE ended_at IS NULL AND (code IS NULL OR $3 = 1)
                   ORDER BY created_at, id LIMIT $1 OFFSET $2) r
             LEFT JOIN players p ON p.room_id = r.id
             ORDER BY r.created_at, r.id, p.player"
        ))
        .bind(limit as i64)
        .bind(offset as i64)
        .bind(i64::from(with_private))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut rooms: Vec<(RoomRecord, Vec<String>)> = Vec::new();
        for row in &rows {
            let record = room_record(row)?;
            let player: Option<String> = row.try_get("player").map_err(db)?;
            match rooms.last_mut() {
                Some((last, players)) if last.id == record.id => players.extend(player),
                _ => rooms.push((record, player.into_iter().collect())),
            }
        }
        Ok(rooms)
    }

    /// What the operator's inspector shows of `rooms` beyond their records, from the
    /// rooms' rows and their latest checkpoints; rooms not found are left out.
    pub async fn inspections(&self, rooms: &[String]) -> Result<HashMap<String, Inspection>> {
        let sql = "SELECT r.id, r.worker, r.code_version, c.seq, c.updated_at, c.activity
                   FROM rooms r LEFT JOIN checkpoints c ON c.room_id = r.id
                   WHERE r.id IN ({})";
        let mut found = HashMap::new();
        for row in self.fetch_in(sql, rooms).await? {
            let seq: Option<i64> = row.try_get("seq").map_err(db)?;
            let saved_at: Option<i64> = row.try_get("updated_at").map_err(db)?;
            let inspection = Inspection {
                worker: row.try_get("worker").map_err(db)?,
                code_version: row.try_get("code_version").map_err(db)?,
                seq: seq.map(|s| s as u64),
                checkpoint_at: saved_at,
                activity: row.try_get("activity").map_err(db)?,
            };
            found.insert(row.try_get("id").map_err(db)?, inspection);
        }
        Ok(found)
    }

    /// How many rooms have not ended.
    pub async fn live_room_count(&self) -> Result<usize> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM rooms WHERE ended_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.try_get::<i64, _>("n").map_err(db)? as usize)
    }

    /// A live (not ended) room.
    pub async fn room(&self, id: &str) -> Result<Option<RoomRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rooms WHERE id = $1 AND ended_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(room_record).transpose()
    }

    /// Records that worker process `worker` runs `room` now.
    pub async fn set_room_worker(&self, room: &str, worker: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET worker = $1 WHERE id = $2")
            .bind(worker)
            .bind(room)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Pins `room` to the code `version` that first ran it, unless it has one: the
    /// version it keeps for its whole life, which this answers (`None` if the room
    /// is gone).
    pub async fn pin_code_version(&self, room: &str, version: &str) -> Result<Option<String>> {
        sqlx::query("UPDATE rooms SET code_version = $1 WHERE id = $2 AND code_version IS NULL")
            .bind(version)
            .bind(room)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        self.code_version(room).await
    }

    /// The code version a live room is pinned to, if it has run yet.
    pub async fn code_version(&self, room: &str) -> Result<Option<String>> {
        Ok(self
            .live_room_column::<Option<String>>(room, "code_version")
            .await?
            .flatten())
    }

    /// One column of a live room's row (`None` if the room is gone).
    async fn live_room_column<T>(&self, room: &str, column: &'static str) -> Result<Option<T>>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        let row = sqlx::query(&format!(
            "SELECT {column} FROM rooms WHERE id = $1 AND ended_at IS NULL"
        ))
        .bind(room)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| r.try_get::<T, _>(column).map_err(db))
            .transpose()
    }

    /// Starts a new chain of worker invocations for a live room (see `lambda`):
    /// answers its number, which supersedes every earlier chain (`None` if the room is
    /// gone).
    pub async fn next_chain(&self, room: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "UPDATE rooms SET chain = chain + 1 WHERE id = $1 AND ended_at IS NULL RETURNING chain",
        )
        .bind(room)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| r.try_get::<i64, _>("chain").map_err(db))
            .transpose()
    }

    /// The number of a live room's current chain of worker invocations.
    pub async fn chain(&self, room: &str) -> Result<Option<i64>> {
        self.live_room_column(room, "chain").await
    }
}

/// The columns [`room_record`] reads.
pub(super) const COLUMNS: &str = "id, name, created_at, kind, meta, locked, code, seats";

/// A room's row (selected with [`COLUMNS`]).
pub(super) fn room_record(row: &AnyRow) -> Result<RoomRecord> {
    let meta: String = row.try_get("meta").map_err(db)?;
    Ok(RoomRecord {
        id: row.try_get("id").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        kind: row.try_get("kind").map_err(db)?,
        meta: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
        locked: row.try_get::<i64, _>("locked").map_err(db)? != 0,
        code: row.try_get("code").map_err(db)?,
        seats: row.try_get::<i64, _>("seats").map_err(db)?.max(0) as usize,
    })
}
