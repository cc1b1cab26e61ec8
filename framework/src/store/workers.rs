//! Worker processes of a cluster: their heartbeats, and which rooms they run.

use super::{db, now_ms, Store};
use crate::Result;
use sqlx::Row;

impl Store {
    /// Each live room and the worker process that last said it runs it, by room id.
    pub async fn room_workers(&self) -> Result<Vec<(String, Option<String>)>> {
        sqlx::query_as("SELECT id, worker FROM rooms WHERE ended_at IS NULL ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    /// Records that worker process `id` is alive now.
    pub async fn worker_alive(&self, id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO workers (id, seen_at) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Forgets worker process `id` (it is stopping).
    pub async fn worker_gone(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Worker processes seen alive within `within`, sorted; older records are deleted.
    pub async fn live_workers(&self, within: std::time::Duration) -> Result<Vec<String>> {
        let since = now_ms() - within.as_millis() as i64;
        sqlx::query("DELETE FROM workers WHERE seen_at < $1")
            .bind(since - 60_000)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        let rows = sqlx::query("SELECT id FROM workers WHERE seen_at >= $1 ORDER BY id")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(|r| r.try_get("id").map_err(db)).collect()
    }
}
