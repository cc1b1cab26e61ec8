//! Persistence: rooms, players, user items and room checkpoints, in SQLite (a file, the
//! default) or PostgreSQL, through one SQL text (sqlx's `Any` driver).

use crate::proto::Grant;
use crate::room::Transfer;
use crate::{Error, Result};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Each migration runs once, in order; `schema_version` remembers how far a store is.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rooms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        ended_at BIGINT,
        end_reason TEXT)",
    "CREATE TABLE IF NOT EXISTS players (
        room_id TEXT NOT NULL,
        player TEXT NOT NULL,
        joined_at BIGINT NOT NULL,
        PRIMARY KEY (room_id, player))",
    "CREATE TABLE IF NOT EXISTS user_items (
        player TEXT NOT NULL,
        item TEXT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (player, item))",
    "CREATE TABLE IF NOT EXISTS checkpoints (
        room_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        state TEXT NOT NULL,
        applied TEXT NOT NULL,
        updated_at BIGINT NOT NULL)",
    "ALTER TABLE checkpoints ADD COLUMN players TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE checkpoints ADD COLUMN version BIGINT NOT NULL DEFAULT 0",
    "CREATE TABLE IF NOT EXISTS workers (
        id TEXT PRIMARY KEY,
        seen_at BIGINT NOT NULL)",
    "ALTER TABLE rooms ADD COLUMN worker TEXT",
    "ALTER TABLE players ADD COLUMN join_id TEXT NOT NULL DEFAULT ''",
    "CREATE TABLE IF NOT EXISTS names (
        name TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL)",
    "ALTER TABLE rooms ADD COLUMN code_version TEXT",
    "ALTER TABLE rooms ADD COLUMN chain BIGINT NOT NULL DEFAULT 0",
    // The rooms transfers lead to, one live room per name (see `Store::named_room`).
    "CREATE TABLE IF NOT EXISTS named_rooms (
        name TEXT PRIMARY KEY,
        room_id TEXT NOT NULL,
        created_at BIGINT NOT NULL)",
    // The transfers rooms asked for, saved with the checkpoint that holds them and done
    // after it (an outbox): `to_room`, `join_id` and `from_join` are the plan of the first
    // try, which every later try of the same transfer follows.
    "CREATE TABLE IF NOT EXISTS transfers (
        id TEXT PRIMARY KEY,
        from_room TEXT NOT NULL,
        player TEXT NOT NULL,
        to_name TEXT NOT NULL,
        carried TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        to_room TEXT,
        join_id TEXT,
        from_join TEXT,
        done_at BIGINT)",
    "CREATE INDEX IF NOT EXISTS transfers_from ON transfers (from_room, done_at)",
];

const ADD_TRANSFER: &str =
    "INSERT INTO transfers (id, from_room, player, to_name, carried, created_at)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING";

const ADD_ITEM: &str = "INSERT INTO user_items (player, item, count) VALUES ($1, $2, $3)
     ON CONFLICT (player, item) DO UPDATE SET count = user_items.count + excluded.count";

/// A room as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomRecord {
    /// The room id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
}

/// A room's saved progress: enough for a new worker to carry on where the last stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The room sequence number of the latest broadcast.
    pub seq: u64,
    /// The game state, as JSON.
    pub state: String,
    /// Each player's last applied input sequence number.
    pub applied: BTreeMap<String, u64>,
    /// The players in the room as of this checkpoint (join and leave hooks included).
    pub players: Vec<String>,
    /// How many checkpoints the room has had: a worker saves the next one only if this
    /// is still the latest, so a worker that was replaced cannot overwrite its
    /// replacement's progress (0: none yet).
    pub version: u64,
}

/// How a transfer is carried out, as its first try chose: every later try follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferPlan {
    /// The room the player moves to.
    pub to_room: String,
    /// The player's join of that room (its ticket's).
    pub join: String,
    /// The player's join of the room it leaves, when the transfer was planned: a later
    /// join of that room is another visit, which the transfer must leave alone.
    pub from_join: String,
}

/// The store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// Checkpoints waiting for the next group commit (see [`Store::save_checkpoint`]).
    saves: Arc<Mutex<SaveQueue>>,
}

/// Checkpoints from every room of the process, saved together: one transaction and one
/// statement for all that arrived while the previous group was being written.
#[derive(Debug, Default)]
struct SaveQueue {
    pending: Vec<PendingSave>,
    /// Whether a writer task is draining `pending`.
    writing: bool,
}

#[derive(Debug)]
struct PendingSave {
    room: String,
    seq: i64,
    state: String,
    applied: String,
    players: String,
    /// The version the saving worker started from; the row becomes `version + 1`.
    version: i64,
    grants: Vec<Grant>,
    transfers: Vec<Transfer>,
    done: tokio::sync::oneshot::Sender<Result<()>>,
}

/// How long the writer of a group waits for more rooms' checkpoints to join it. Only
/// the acks of the inputs a checkpoint holds wait for it, not the players.
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

/// Rows per statement of a group commit (7 parameters each: far below the limits of
/// SQLite and PostgreSQL).
const SAVES_PER_STATEMENT: usize = 100;

fn now() -> i64 {
    now_ms() / 1000
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn db(e: sqlx::Error) -> Error {
    Error::Store(e.to_string())
}

impl Store {
    /// Opens `url` (`sqlite://PATH`, `sqlite::memory:`, or `postgres://…`), creating a
    /// SQLite file and its directory if needed, and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let url = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)?;
                }
            }
            if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            }
        } else {
            url.to_owned()
        };
        // SQLite allows one writer; one connection avoids "database is locked".
        let max = if url.starts_with("sqlite:") { 1 } else { 8 };
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Checkpoints are frequent: write-ahead log, fsync at checkpoints
                        // of the log rather than at every commit.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    } else {
                        // A worker that hangs (SIGSTOP) in the middle of a checkpoint holds
                        // its row's lock: PostgreSQL ends that session after a while, so
                        // the worker that replaced it can save; and nothing waits on a
                        // lock for ever.
                        sqlx::query("SET idle_in_transaction_session_timeout = '5s'")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("SET lock_timeout = '10s'")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| Error::Store(format!("cannot open the store {url}: {e}")))?;
        let store = Store {
            pool,
            saves: Arc::default(),
        };
        store.migrate(url.starts_with("postgres")).await?;
        Ok(store)
    }

    /// Runs the migrations not yet run. On PostgreSQL an advisory lock makes processes
    /// that start together take turns, so each migration runs once.
    async fn migrate(&self, postgres: bool) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        if postgres {
            sqlx::query("SELECT pg_advisory_lock(7461626)")
                .execute(&mut *conn)
                .await
                .map_err(db)?;
        }
        let result = migrate_on(&mut conn).await;
        if postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock(7461626)")
                .execute(&mut *conn)
                .await;
        }
        result
    }

    /// Records a new room.
    pub async fn create_room(&self, id: &str, name: &str) -> Result<RoomRecord> {
        let created_at = now();
        sqlx::query("INSERT INTO rooms (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(created_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(RoomRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            created_at,
        })
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
    pub async fn named_room(&self, name: &str, candidate: &str) -> Result<(String, bool)> {
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
                sqlx::query("INSERT INTO rooms (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(candidate)
                    .bind(name)
                    .bind(created_at)
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

    /// Rooms that have not ended, oldest first.
    pub async fn live_rooms(&self) -> Result<Vec<RoomRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM rooms WHERE ended_at IS NULL ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(room_record).collect()
    }

    /// Live rooms with their players (sorted), oldest first, in one query; from
    /// `offset`, at most `limit` rooms.
    pub async fn live_rooms_with_players(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(RoomRecord, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT r.id, r.name, r.created_at, p.player
             FROM (SELECT id, name, created_at FROM rooms WHERE ended_at IS NULL
                   ORDER BY created_at, id LIMIT $1 OFFSET $2) r
             LEFT JOIN players p ON p.room_id = r.id
             ORDER BY r.created_at, r.id, p.player",
        )
        .bind(limit as i64)
        .bind(offset as i64)
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

    /// How many rooms have not ended.
    pub async fn live_room_count(&self) -> Result<usize> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM rooms WHERE ended_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.try_get::<i64, _>("n").map_err(db)? as usize)
    }

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

    /// A live (not ended) room.
    pub async fn room(&self, id: &str) -> Result<Option<RoomRecord>> {
        let row = sqlx::query(
            "SELECT id, name, created_at FROM rooms WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(room_record).transpose()
    }

    /// Adds `player` to `room` with join `join`, unless it is there already: then
    /// nothing changes and `false` says so. One of two concurrent joins wins.
    pub async fn add_player(&self, room: &str, player: &str, join: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO players (room_id, player, joined_at, join_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (room_id, player) DO NOTHING",
        )
        .bind(room)
        .bind(player)
        .bind(now())
        .bind(join)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
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
        let rows = sqlx::query(
            "SELECT p.room_id, p.player, p.join_id FROM players p
             JOIN rooms r ON r.id = p.room_id WHERE r.ended_at IS NULL",
        )
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

    /// Records that `player` left `room`; returns whether it was there.
    pub async fn remove_player(&self, room: &str, player: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM players WHERE room_id = $1 AND player = $2")
            .bind(room)
            .bind(player)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
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
        let rows = sqlx::query(
            "SELECT player, count FROM user_items WHERE item = $1 AND count > 0 ORDER BY count DESC, player LIMIT $2",
        )
        .bind(item)
        .bind(limit.min(1000) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
            .collect()
    }

    /// `player`'s inventory: item to count.
    pub async fn items(&self, player: &str) -> Result<BTreeMap<String, i64>> {
        let rows =
            sqlx::query("SELECT item, count FROM user_items WHERE player = $1 ORDER BY item")
                .bind(player)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("item").map_err(db)?,
                    r.try_get("count").map_err(db)?,
                ))
            })
            .collect()
    }

    /// Saves a room's checkpoint with the item grants and the transfers of the inputs it
    /// holds since the last, in one transaction: all or nothing. The transfers wait in
    /// the outbox until they are done ([`Store::pending_transfers`]). It replaces the checkpoint whose
    /// version is `checkpoint.version` and becomes version `checkpoint.version + 1`; if
    /// another worker saved since, nothing is written and [`Error::Fenced`] says so.
    ///
    /// Checkpoints are group-committed: the saves of all the process's rooms that arrive
    /// within 20 ms of each other, or while a group is being written, go
    /// together in one transaction and one statement. A room's save returns once its
    /// group is committed. At 1,000 players in 100 rooms (400 saves a second) this took
    /// the store's share of the server's CPU from about 7% to 2.5%.
    pub async fn save_checkpoint(
        &self,
        room: &str,
        checkpoint: &Checkpoint,
        grants: &[Grant],
        transfers: &[Transfer],
    ) -> Result<()> {
        let (done, saved) = tokio::sync::oneshot::channel();
        let save = PendingSave {
            room: room.to_owned(),
            seq: checkpoint.seq as i64,
            state: checkpoint.state.clone(),
            applied: serde_json::to_string(&checkpoint.applied)
                .expect("a map of numbers serializes"),
            players: serde_json::to_string(&checkpoint.players).expect("names serialize"),
            version: checkpoint.version as i64,
            grants: grants.to_vec(),
            transfers: transfers.to_vec(),
            done,
        };
        let lead = {
            let mut queue = self.saves.lock().unwrap_or_else(|p| p.into_inner());
            queue.pending.push(save);
            !std::mem::replace(&mut queue.writing, true)
        };
        if lead {
            // A task of its own, so that a caller that stops waiting does not stop the
            // writes of the others.
            tokio::spawn(self.clone().write_saves());
        }
        saved
            .await
            .map_err(|_| Error::Store("the checkpoint writer stopped".into()))?
    }

    /// Writes the waiting checkpoints, a group at a time, until none waits.
    async fn write_saves(self) {
        /// If the writer ends any other way than by finding nothing to write (a panic,
        /// its runtime shutting down), the saves waiting fail rather than hang, and the
        /// next save starts a writer.
        struct Writing<'a> {
            saves: &'a Mutex<SaveQueue>,
            armed: bool,
        }
        impl Drop for Writing<'_> {
            fn drop(&mut self) {
                if self.armed {
                    let mut queue = self.saves.lock().unwrap_or_else(|p| p.into_inner());
                    queue.writing = false;
                    queue.pending.clear();
                }
            }
        }
        let mut writing = Writing {
            saves: &self.saves,
            armed: true,
        };
        loop {
            // Rooms checkpoint at their own moments: a short wait gathers a group.
            tokio::time::sleep(GROUP_WINDOW).await;
            let group = {
                let mut queue = self.saves.lock().unwrap_or_else(|p| p.into_inner());
                if queue.pending.is_empty() {
                    // Under the lock: a save that comes after this starts a writer.
                    queue.writing = false;
                    writing.armed = false;
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            crate::metrics::CHECKPOINTS.inc_by(group.len() as u64);
            match self.save_group(&group).await {
                Ok(written) => {
                    for (save, written) in group.into_iter().zip(written) {
                        let result = if written {
                            Ok(())
                        } else {
                            Err(Error::Fenced(format!(
                                "room {}: checkpoint {} is no longer the latest; another worker has carried the room on",
                                save.room, save.version
                            )))
                        };
                        let _ = save.done.send(result);
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for save in group {
                        let _ = save.done.send(Err(Error::Store(why.clone())));
                    }
                }
            }
        }
    }

    /// Saves `group` in one transaction; for each save, whether it was written (`false`:
    /// fenced, another worker saved the room since).
    async fn save_group(&self, group: &[PendingSave]) -> Result<Vec<bool>> {
        let statements = statements_of(group);
        let mut written = vec![false; group.len()];
        let now = now();
        let mut tx = self.pool.begin().await.map_err(db)?;
        for rows in statements {
            let sql = upsert_checkpoints(rows.len());
            let mut query = sqlx::query(&sql);
            for &i in &rows {
                let save = &group[i];
                query = query
                    .bind(&save.room)
                    .bind(save.seq)
                    .bind(&save.state)
                    .bind(&save.applied)
                    .bind(now)
                    .bind(&save.players)
                    .bind(save.version + 1);
            }
            for row in query.fetch_all(&mut *tx).await.map_err(db)? {
                let room: String = row.try_get(0).map_err(db)?;
                if let Some(&i) = rows.iter().find(|&&i| group[i].room == room) {
                    written[i] = true;
                }
            }
        }
        // Only a written checkpoint's grants and transfers: a fenced worker's inputs are
        // another's now.
        for (save, _) in group.iter().zip(&written).filter(|(_, w)| **w) {
            for grant in &save.grants {
                sqlx::query(ADD_ITEM)
                    .bind(&grant.player)
                    .bind(&grant.item)
                    .bind(grant.count)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            for transfer in &save.transfers {
                sqlx::query(ADD_TRANSFER)
                    .bind(&transfer.key)
                    .bind(&transfer.from)
                    .bind(&transfer.player)
                    .bind(&transfer.room)
                    .bind(transfer.carried.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(written)
    }

    /// A room's last checkpoint, if it has one.
    pub async fn checkpoint(&self, room: &str) -> Result<Option<Checkpoint>> {
        let row = sqlx::query(
            "SELECT seq, state, applied, players, version FROM checkpoints WHERE room_id = $1",
        )
        .bind(room)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let applied: String = row.try_get("applied").map_err(db)?;
        let players: String = row.try_get("players").map_err(db)?;
        let corrupt =
            |e: serde_json::Error| Error::Store(format!("corrupt checkpoint of room {room}: {e}"));
        Ok(Some(Checkpoint {
            seq: row.try_get::<i64, _>("seq").map_err(db)? as u64,
            state: row.try_get("state").map_err(db)?,
            applied: serde_json::from_str(&applied).map_err(corrupt)?,
            players: serde_json::from_str(&players).map_err(corrupt)?,
            version: row.try_get::<i64, _>("version").map_err(db)? as u64,
        }))
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

    /// Each live room and the worker process that last said it runs it, by room id.
    pub async fn room_workers(&self) -> Result<Vec<(String, Option<String>)>> {
        let rows = sqlx::query("SELECT id, worker FROM rooms WHERE ended_at IS NULL ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id").map_err(db)?,
                    r.try_get("worker").map_err(db)?,
                ))
            })
            .collect()
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

async fn migrate_on(conn: &mut sqlx::AnyConnection) -> Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    let row = sqlx::query("SELECT MAX(version) AS v FROM schema_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let done: i64 = row.try_get::<Option<i64>, _>("v").map_err(db)?.unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        sqlx::query(sql).execute(&mut *conn).await.map_err(db)?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(i as i64 + 1)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

fn room_record(row: &AnyRow) -> Result<RoomRecord> {
    Ok(RoomRecord {
        id: row.try_get("id").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

/// The statements a group of saves is written in, as indexes into `group`: rows in room
/// order, so that two processes' transactions lock shared rows (a room changing
/// workers) in the same order; a room saved twice in one group (an old and a new worker)
/// goes into separate statements, in the order they came; at most
/// `SAVES_PER_STATEMENT` rows a statement.
fn statements_of(group: &[PendingSave]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by(|&a, &b| group[a].room.cmp(&group[b].room));
    let mut statements: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match statements.last_mut() {
            // Sorted, a room saved twice is next to itself: the last row tells.
            Some(rows)
                if rows.len() < SAVES_PER_STATEMENT
                    && rows.last().is_some_and(|&r| group[r].room != group[i].room) =>
            {
                rows.push(i);
            }
            _ => statements.push(vec![i]),
        }
    }
    statements
}

/// The statement that writes `rows` checkpoints. A new room's row is inserted; an
/// existing one is replaced only if it is still the version the worker started from.
/// RETURNING names the rows written: a room missing from it was fenced.
fn upsert_checkpoints(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO checkpoints (room_id, seq, state, applied, updated_at, players, version) VALUES ",
    );
    for k in 0..rows {
        let p = k * 7;
        if k > 0 {
            sql.push_str(", ");
        }
        let params: Vec<String> = (1..=7).map(|n| format!("${}", p + n)).collect();
        sql.push_str(&format!("({})", params.join(", ")));
    }
    sql.push_str(
        " ON CONFLICT (room_id) DO UPDATE SET seq = excluded.seq, state = excluded.state,
             applied = excluded.applied, updated_at = excluded.updated_at,
             players = excluded.players, version = excluded.version
         WHERE checkpoints.version = excluded.version - 1
         RETURNING room_id",
    );
    sql
}
