//! Players' persistent items (experience is one): granted with a checkpoint, read at a
//! join, ranked for a leaderboard.

use super::{db, Store};
use crate::Result;
use std::collections::BTreeMap;

pub(super) const ADD_ITEM: &str = "INSERT INTO user_items (player, item, count) VALUES ($1, $2, $3)
     ON CONFLICT (player, item) DO UPDATE SET count = user_items.count + excluded.count";

impl Store {
    /// Adds `count` of `item` to `player`'s inventory.
    pub async fn add_item(&self, player: &str, item: &str, count: i64) -> Result<()> {
        sqlx::query(ADD_ITEM)
            .bind(player)
            .bind(item)
            .bind(count)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The `limit` players with the most of `item` (most first, then by name): a
    /// leaderboard.
    pub async fn top_items(&self, item: &str, limit: usize) -> Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT player, count FROM user_items WHERE item = $1 AND count > 0 ORDER BY count DESC, player LIMIT $2",
        )
        .bind(item)
        .bind(limit.min(1000) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    /// `player`'s inventory: item to count.
    pub async fn items(&self, player: &str) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT item, count FROM user_items WHERE player = $1 ORDER BY item")
                .bind(player)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(rows.into_iter().collect())
    }
}
