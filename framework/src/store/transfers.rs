//! The transfers outbox: a room's transfers are saved with the checkpoint that holds
//! them, then carried out (each once, by its key) and marked done.

use super::{db, now, Store, TransferPlan};
use crate::room::Transfer;
use crate::{Error, Result};
use sqlx::Row;

pub(super) const ADD_TRANSFER: &str =
    "INSERT INTO transfers (id, from_room, player, to_name, carried, created_at)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING";

impl Store {
    /// The transfers `room` asked for that are not done yet, in the order it asked.
    pub async fn pending_transfers(&self, room: &str) -> Result<Vec<Transfer>> {
        let rows = sqlx::query(
            "SELECT id, from_room, player, to_name, carried FROM transfers
             WHERE from_room = $1 AND done_at IS NULL ORDER BY LENGTH(id), id",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let carried: String = r.try_get("carried").map_err(db)?;
                Ok(Transfer {
                    key: r.try_get("id").map_err(db)?,
                    from: r.try_get("from_room").map_err(db)?,
                    player: r.try_get("player").map_err(db)?,
                    room: r.try_get("to_name").map_err(db)?,
                    carried: serde_json::from_str(&carried).map_err(|e| {
                        Error::Store(format!("corrupt transfer of room {room}: {e}"))
                    })?,
                })
            })
            .collect()
    }

    /// Records `plan` as the plan of transfer `key`, unless it has one: the first try's
    /// plan stands. Answers the transfer's plan (`None`: no such transfer).
    pub async fn plan_transfer(
        &self,
        key: &str,
        plan: &TransferPlan,
    ) -> Result<Option<TransferPlan>> {
        sqlx::query(
            "UPDATE transfers SET to_room = $1, join_id = $2, from_join = $3
             WHERE id = $4 AND to_room IS NULL",
        )
        .bind(&plan.to_room)
        .bind(&plan.join)
        .bind(&plan.from_join)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        self.transfer_plan(key).await
    }

    /// The plan of transfer `key`, if a try made one.
    pub async fn transfer_plan(&self, key: &str) -> Result<Option<TransferPlan>> {
        let row = sqlx::query("SELECT to_room, join_id, from_join FROM transfers WHERE id = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let to_room: Option<String> = row.try_get("to_room").map_err(db)?;
        let join: Option<String> = row.try_get("join_id").map_err(db)?;
        let from_join: Option<String> = row.try_get("from_join").map_err(db)?;
        Ok(match (to_room, join, from_join) {
            (Some(to_room), Some(join), Some(from_join)) => Some(TransferPlan {
                to_room,
                join,
                from_join,
            }),
            _ => None,
        })
    }

    /// Records that transfer `key` is done (or could not be, for good): it leaves the
    /// outbox.
    pub async fn transfer_done(&self, key: &str) -> Result<()> {
        sqlx::query("UPDATE transfers SET done_at = $1 WHERE id = $2")
            .bind(now())
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}
