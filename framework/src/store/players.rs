//! Players: who is in which room with which join, and who holds a name.

use super::{db, now, Store};
use crate::Result;
use sqlx::Row;

impl Store {
    /// How many players are in live rooms.
    pub async fn player_count(&self) -> Result<usize> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM players p JOIN rooms r ON r.id = p.room_id WHERE r.ended_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.try_get::<i64, _>("n").map_err(db)? as usize)
    }

    /// Makes `join` the current join of `player`, who is in `room` already (it joined
    /// again); returns whether it was there.
    pub async fn rejoin_player(&self, room: &str, player: &str, join: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE players SET join_id = $1 WHERE room_id = $2 AND player = $3")
                .bind(join)
                .bind(room)
                .bind(player)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    /// The current join of `player` in `room`, if it is there.
    pub async fn player_join(&self, room: &str, player: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT join_id FROM players WHERE room_id = $1 AND player = $2")
            .bind(room)
            .bind(player)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get("join_id").map_err(db)).transpose()
    }

    /// Every player of every live room with its current join: (room, player, join).
    pub async fn joins(&self) -> Result<Vec<(String, String, String)>> {
        sqlx::query_as(
            "SELECT p.room_id, p.player, p.join_id FROM players p
             JOIN rooms r ON r.id = p.room_id WHERE r.ended_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    /// Claims `name` for whoever holds the key hashing to `key_hash`; `false` if the
    /// name is someone's already (one of two concurrent claims wins).
    pub async fn claim_name(&self, name: &str, key_hash: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO names (name, key_hash, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(key_hash)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    /// The hash of the key that owns `name`, if someone claimed it.
    pub async fn name_key(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT key_hash FROM names WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get("key_hash").map_err(db)).transpose()
    }

    /// The players in `room`, by name.
    pub async fn players(&self, room: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT player FROM players WHERE room_id = $1 ORDER BY player")
            .bind(room)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| r.try_get("player").map_err(db))
            .collect()
    }

    /// RabbitMQ's connection `pid` is `player`'s, of `room`.
    pub async fn remember_connection(&self, pid: &str, room: &str, player: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO connections (pid, room_id, player, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (pid) DO NOTHING",
        )
        .bind(pid)
        .bind(room)
        .bind(player)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Whose RabbitMQ connection `pid` was, as `(room, player)`, if it is remembered.
    pub async fn connection(&self, pid: &str) -> Result<Option<(String, String)>> {
        sqlx::query_as("SELECT room_id, player FROM connections WHERE pid = $1")
            .bind(pid)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    /// Forgets RabbitMQ's connection `pid` (it closed).
    pub async fn forget_connection(&self, pid: &str) -> Result<()> {
        sqlx::query("DELETE FROM connections WHERE pid = $1")
            .bind(pid)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}
