//! Persistence: rooms, players, user items and room checkpoints, in SQLite (a file, the
//! default) or PostgreSQL, through one SQL text (sqlx's `Any` driver). One concept a
//! file, each an `impl Store`: `rooms.rs`, `players.rs`, `items.rs`, `checkpoints.rs`
//! (the group commit), `transfers.rs` (the outbox), `workers.rs` (cluster workers),
//! `seats.rs` (seats taken and reserved, quick play's candidates), `queue.rs` (the
//! matchmaking queue), `records.rs` (match records, saved with the checkpoints);
//! `schema.rs` holds the migrations.

mod checkpoints;
mod items;
mod players;
mod queue;
mod records;
mod rooms;
mod schema;
mod seats;
mod transfers;
mod workers;

use self::checkpoints::SaveQueue;
pub use self::queue::{GroupRule, Matched, QueueTicket};
pub use self::records::{Keyframe, MatchQuery, MatchSummary, MatchViewer, Segment, StoredSegment};
use self::schema::MIGRATIONS;
pub use self::seats::Seated;
use crate::{Error, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A room as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomRecord {
    /// The room id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Its kind (`""`: the server's first kind).
    pub kind: String,
    /// What the game says of it, which quick play filters on (a JSON object).
    pub meta: serde_json::Value,
    /// Locked: quick play and joins by id pass it by.
    pub locked: bool,
    /// The code a private room is joined by; quick play never picks a private room.
    pub code: Option<String>,
    /// Seats taken: players, and seats quick play reserved.
    pub seats: usize,
}

/// A room to record ([`Store::create_room`]).
#[derive(Debug, Clone, Copy)]
pub struct NewRoom<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its display name.
    pub name: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// Its metadata (a JSON object).
    pub meta: &'a serde_json::Value,
    /// The code of a private room.
    pub code: Option<&'a str>,
}

impl<'a> NewRoom<'a> {
    /// A public room `id` named `name`, of the default kind, without metadata.
    pub fn plain(id: &'a str, name: &'a str) -> NewRoom<'a> {
        static NONE: serde_json::Value = serde_json::Value::Null;
        NewRoom {
            id,
            name,
            kind: "",
            meta: &NONE,
            code: None,
        }
    }
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
    /// What the room did lately (its latest inputs and their outcomes, its input rate),
    /// as JSON, for the operator's inspector. Saved empty, it leaves the saved one as it
    /// is (the worker takes it a few times a second at most); read empty, none was saved.
    pub activity: String,
}

/// What the operator's inspector shows of a room beyond its record
/// ([`Store::inspections`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// The worker that last became the room's active one.
    pub worker: Option<String>,
    /// The code version the room is pinned to (Lambda mode).
    pub code_version: Option<String>,
    /// The room seq of its latest checkpoint (`None`: it has none yet).
    pub seq: Option<u64>,
    /// When its latest checkpoint was saved, seconds since the Unix epoch.
    pub checkpoint_at: Option<i64>,
    /// Its latest inputs and input rate as that checkpoint holds them (JSON).
    pub activity: Option<String>,
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
    /// A SQLite file's log writer-back, for as long as the store is held.
    _writeback: Option<Arc<Background>>,
}

/// A task that ends when the last of the store's clones is dropped.
#[derive(Debug)]
struct Background(tokio::task::AbortHandle);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes a SQLite file's write-ahead log back into the file every second, on a
/// connection of its own, so that no commit on the store's connection waits for it.
/// `PASSIVE`: it copies what it can without waiting for anyone; the next commit after
/// a whole copy starts the log over, so the log holds about a second of writes.
async fn wal_writeback(url: String) {
    use sqlx::Connection;
    let mut conn = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if conn.is_none() {
            conn = sqlx::AnyConnection::connect(&url).await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(c)
            .await
        {
            tracing::warn!("writing the store's log back to its file: {e}");
            conn = None;
        }
    }
}

fn now() -> i64 {
    now_ms() / 1000
}

impl Store {
    /// The rows of `sql` for every one of `ids`: its `IN ({})` gets a parameter for
    /// each, a statement a few dozen ids at a time (the drivers bind no arrays).
    async fn fetch_in(&self, sql: &str, ids: &[impl AsRef<str>]) -> Result<Vec<sqlx::any::AnyRow>> {
        let mut rows = Vec::new();
        for chunk in ids.chunks(50) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = sql.replacen("{}", &params.join(", "), 1);
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_ref());
            }
            rows.extend(query.fetch_all(&self.pool).await.map_err(db)?);
        }
        Ok(rows)
    }
}

/// Now, in seconds since the Unix epoch: the store's times of rooms.
pub fn now_secs() -> i64 {
    now()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How long a store call waits for a connection of the pool (one being made, when
/// PostgreSQL is away) before it fails, in a process that answers the lobby's calls
/// ([`Store::open_answering`]): it answers 503 rather than hang.
pub const ANSWERING_WAIT: Duration = Duration::from_secs(2);
/// How long it waits elsewhere: a worker waits out a short outage and carries on,
/// rather than fail and replay its room from the checkpoint.
pub const WORKING_WAIT: Duration = Duration::from_secs(30);

fn db(e: sqlx::Error) -> Error {
    Error::Store(e.to_string())
}
impl Store {
    /// Opens `url` (`sqlite://PATH`, `sqlite::memory:`, or `postgres://…`), creating a
    /// SQLite file and its directory if needed, and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_waiting(url, WORKING_WAIT).await
    }

    /// [`Store::open`] for a process that answers calls (a lobby): with PostgreSQL
    /// away, a call fails after [`ANSWERING_WAIT`] (the lobby answers 503), not after
    /// [`WORKING_WAIT`]. SQLite's one connection is only ever busy, never away: it
    /// waits as long as ever.
    pub async fn open_answering(url: &str) -> Result<Store> {
        Store::open_waiting(url, ANSWERING_WAIT).await
    }

    /// [`Store::open`], a call waiting up to `wait` for a PostgreSQL connection.
    async fn open_waiting(url: &str, wait: Duration) -> Result<Store> {
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
        let in_memory = url.starts_with("sqlite::memory:");
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(if sqlite { WORKING_WAIT } else { wait })
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
                        // The log is written back to the file by a connection of its
                        // own (`wal_writeback`), not by whichever commit crossed a
                        // thousand pages: that commit waited for the file's fsync, and
                        // every statement queued behind it (quick play's p99 doubled).
                        sqlx::query("PRAGMA wal_autocheckpoint = 0")
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
        let writeback = if sqlite && !in_memory {
            Some(Arc::new(Background(
                tokio::spawn(wal_writeback(url.clone())).abort_handle(),
            )))
        } else {
            None
        };
        let store = Store {
            pool,
            saves: Arc::default(),
            _writeback: writeback,
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
