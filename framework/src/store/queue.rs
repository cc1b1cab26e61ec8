//! The matchmaking queue: tickets that wait for enough players of compatible filters,
//! and the groups formed from them. Groups of a kind are formed one at a time, whichever
//! lobby forms them: each forming is one transaction that first updates the kind's row
//! of `queue_locks` (PostgreSQL holds that row's lock until the commit; SQLite has one
//! writer), so no ticket is given two rooms.

use super::{db, now_ms, Store};
use crate::Result;
use serde_json::Value;
use sqlx::Row;

/// A ticket in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTicket {
    /// Its id (a secret: whoever holds it may poll and cancel it).
    pub id: String,
    /// The kind of room it waits for.
    pub kind: String,
    /// The metadata it wants (a JSON object; `{}` is any).
    pub filter: Value,
    /// Who waits.
    pub player: String,
    /// When it was queued, milliseconds since the epoch.
    pub created_at: i64,
    /// Its room and the player's join, once its group is formed.
    pub matched: Option<Matched>,
}

/// Where a ticket's group plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The group's room (made by whoever formed the group, or by the ticket's next
    /// poll if that one died first).
    pub room: String,
    /// The player's join of it.
    pub join: String,
    /// The room's metadata: the filter the group shares.
    pub meta: Value,
}

/// How groups are formed: from `min` to `max` tickets, oldest first, whose filters are
/// equal, except that a ticket that has waited `widen_after_ms` takes any room of the
/// kind (and any group takes it).
#[derive(Debug, Clone, Copy)]
pub struct GroupRule {
    /// Tickets a group needs.
    pub min: usize,
    /// Tickets a group takes at most.
    pub max: usize,
    /// After this long a ticket's filter no longer counts.
    pub widen_after_ms: i64,
    /// A ticket not polled for this long is dropped from the queue.
    pub drop_after_ms: i64,
}

impl Store {
    /// Queues `player` for a room of `kind` whose metadata has `filter`.
    pub async fn enqueue(&self, id: &str, kind: &str, filter: &Value, player: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO queue_tickets (id, kind, filter, player, created_at, seen_at)
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(id)
        .bind(kind)
        .bind(filter.to_string())
        .bind(player)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Ticket `id`, as its holder polls it (which keeps it in the queue).
    pub async fn poll_ticket(&self, id: &str) -> Result<Option<QueueTicket>> {
        sqlx::query("UPDATE queue_tickets SET seen_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        let row = sqlx::query(
            "SELECT id, kind, filter, player, created_at, room_id, join_id, meta
             FROM queue_tickets WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|row| {
            let text = |column: &str| -> Result<Option<String>> { row.try_get(column).map_err(db) };
            let json = |t: Option<String>| t.and_then(|t| serde_json::from_str(&t).ok());
            let matched = match (text("room_id")?, text("join_id")?) {
                (Some(room), Some(join)) => Some(Matched {
                    room,
                    join,
                    meta: json(text("meta")?).unwrap_or_default(),
                }),
                _ => None,
            };
            Ok(QueueTicket {
                id: row.try_get("id").map_err(db)?,
                kind: row.try_get("kind").map_err(db)?,
                filter: json(text("filter")?).unwrap_or_default(),
                player: row.try_get("player").map_err(db)?,
                created_at: row.try_get("created_at").map_err(db)?,
                matched,
            })
        })
        .transpose()
    }

    /// Takes a waiting ticket out of the queue; `false` if it is not waiting (matched,
    /// dropped, or never there).
    pub async fn cancel_ticket(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM queue_tickets WHERE id = $1 AND room_id IS NULL")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    /// How many tickets of `kind` wait.
    pub async fn waiting(&self, kind: &str) -> Result<usize> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM queue_tickets WHERE kind = $1 AND room_id IS NULL",
        )
        .bind(kind)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.try_get::<i64, _>("n").map_err(db)? as usize)
    }

    /// Forms at most one group of `kind` under `rule`, for room `room` (its id, chosen by
    /// the caller), drops tickets nobody polls, and returns the group's tickets (their
    /// players, new joins and the room's metadata written in them); `None` when no group
    /// can be formed yet.
    pub async fn form_group(
        &self,
        kind: &str,
        rule: GroupRule,
        room: &str,
        new_join: impl Fn() -> String,
    ) -> Result<Option<(Value, Vec<(String, String)>)>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO queue_locks (kind, n) VALUES ($1, 1)
             ON CONFLICT (kind) DO UPDATE SET n = queue_locks.n + 1",
        )
        .bind(kind)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "DELETE FROM queue_tickets WHERE kind = $1 AND room_id IS NULL AND seen_at < $2",
        )
        .bind(kind)
        .bind(now - rule.drop_after_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let rows = sqlx::query(
            "SELECT id, filter, player, created_at FROM queue_tickets
             WHERE kind = $1 AND room_id IS NULL ORDER BY created_at, id LIMIT 1000",
        )
        .bind(kind)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut waiting = Vec::with_capacity(rows.len());
        for row in &rows {
            let filter: String = row.try_get("filter").map_err(db)?;
            let created_at: i64 = row.try_get("created_at").map_err(db)?;
            waiting.push(Waiting {
                id: row.try_get("id").map_err(db)?,
                player: row.try_get("player").map_err(db)?,
                filter: serde_json::from_str(&filter).unwrap_or_default(),
                widened: now - created_at >= rule.widen_after_ms,
            });
        }
        let Some((meta, group)) = group_of(&waiting, rule.min, rule.max) else {
            tx.commit().await.map_err(db)?;
            return Ok(None);
        };
        let mut formed = Vec::with_capacity(group.len());
        for ticket in group {
            let join = new_join();
            sqlx::query(
                "UPDATE queue_tickets SET room_id = $1, join_id = $2, meta = $3 WHERE id = $4",
            )
            .bind(room)
            .bind(&join)
            .bind(meta.to_string())
            .bind(&ticket.id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            formed.push((ticket.player.clone(), join));
        }
        tx.commit().await.map_err(db)?;
        Ok(Some((meta, formed)))
    }

    /// Forgets the tickets of groups formed more than `older_than_ms` ago.
    pub async fn forget_matched_tickets(&self, older_than_ms: i64) -> Result<()> {
        sqlx::query("DELETE FROM queue_tickets WHERE room_id IS NOT NULL AND seen_at < $1")
            .bind(now_ms() - older_than_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// A waiting ticket, as forming a group sees it.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub(crate) id: String,
    pub(crate) player: String,
    pub(crate) filter: Value,
    /// It has waited long enough to take any room of the kind.
    pub(crate) widened: bool,
}

/// The first group that `waiting` (oldest first) holds: seeded by each ticket in turn,
/// it takes the later tickets whose filter is the seed's, or that are widened (a widened
/// seed takes the filter of the first unwidened ticket it takes); at least `min`, at most
/// `max`. Its metadata (the shared filter) and its tickets.
pub(crate) fn group_of(
    waiting: &[Waiting],
    min: usize,
    max: usize,
) -> Option<(Value, Vec<&Waiting>)> {
    let (min, max) = (min.max(1), max.max(1));
    for (i, seed) in waiting.iter().enumerate() {
        let mut filter = (!seed.widened).then(|| seed.filter.clone());
        let mut group = vec![seed];
        for other in &waiting[i + 1..] {
            if group.len() == max {
                break;
            }
            match &filter {
                Some(f) if other.widened || other.filter == *f => group.push(other),
                Some(_) => {}
                None => {
                    if !other.widened {
                        filter = Some(other.filter.clone());
                    }
                    group.push(other);
                }
            }
        }
        if group.len() >= min {
            let meta = filter.unwrap_or_else(|| serde_json::json!({}));
            return Some((meta, group));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ticket(id: &str, filter: Value, widened: bool) -> Waiting {
        Waiting {
            id: id.into(),
            player: id.into(),
            filter,
            widened,
        }
    }

    fn ids(group: &[&Waiting]) -> Vec<String> {
        group.iter().map(|t| t.id.clone()).collect()
    }

    #[test]
    fn a_group_is_the_oldest_tickets_of_one_filter() {
        let a = json!({ "mode": "a" });
        let b = json!({ "mode": "b" });
        let waiting = [
            ticket("1", a.clone(), false),
            ticket("2", b.clone(), false),
            ticket("3", a.clone(), false),
            ticket("4", b.clone(), false),
            ticket("5", a.clone(), false),
        ];
        let (meta, group) = group_of(&waiting, 3, 4).unwrap();
        assert_eq!(
            (meta, ids(&group)),
            (a, vec!["1".into(), "3".into(), "5".into()])
        );
        assert!(
            group_of(&waiting[..4], 3, 4).is_none(),
            "two of each is not enough"
        );
        let (_, group) = group_of(&waiting, 1, 2).unwrap();
        assert_eq!(ids(&group), ["1", "3"], "at most max");
    }

    #[test]
    fn a_ticket_that_waited_takes_any_group_and_a_widened_seed_any_filter() {
        let a = json!({ "mode": "a" });
        let b = json!({ "mode": "b" });
        let waiting = [
            ticket("1", a.clone(), true),
            ticket("2", b.clone(), false),
            ticket("3", b.clone(), false),
        ];
        let (meta, group) = group_of(&waiting, 3, 4).unwrap();
        assert_eq!(meta, b, "the widened seed takes the first unwidened filter");
        assert_eq!(ids(&group), ["1", "2", "3"]);
        let waiting = [
            ticket("1", a.clone(), false),
            ticket("2", b.clone(), true),
            ticket("3", a.clone(), false),
        ];
        let (meta, group) = group_of(&waiting, 3, 3).unwrap();
        assert_eq!(
            (meta, ids(&group)),
            (a, vec!["1".into(), "2".into(), "3".into()])
        );
    }
}
