//! Match records: what a room was given, in room order, kept so that it can be watched
//! again and run again (`replay`). A worker records each message it handles with the
//! outputs it made; the entries since the last checkpoint are a [`Segment`], written in
//! that checkpoint's transaction (so a record holds each applied message once, however
//! often a worker died), as one row of `match_log` keyed by the checkpoint's version.
//! Some segments also hold the room as it was before their first entry (a keyframe):
//! the first kept always does, and the gate runs the record again from it.

use super::{db, now, Store};
use crate::{Error, Result};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A room's messages since its last checkpoint, as its worker recorded them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    /// One JSON object a line, one line an entry (see `worker::record`).
    pub entries: String,
    /// How many entries.
    pub n: u32,
    /// How many outputs the entries made: a segment with any is saved even when its
    /// checkpoint changes nothing (a message to one player alone moves no `seq`).
    pub outputs: u32,
    /// The recorded time of the first entry and of the last (ms since the epoch).
    pub first_at: u64,
    /// See `first_at`.
    pub last_at: u64,
    /// The room as it was before the first entry (a [`Keyframe`] as JSON), when this
    /// segment keeps one.
    pub start: Option<String>,
    /// The players who joined during it.
    pub joined: Vec<String>,
    /// Segments of the room before this version can go: a bounded record keeps only
    /// its latest stretch ([`crate::policy::Recording::Last`]).
    pub forget_before: Option<u64>,
}

/// A room as it was at some point of its record: what a replay starts from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keyframe {
    /// The room seq of its latest output.
    pub seq: u64,
    /// The game state, as JSON.
    pub state: String,
    /// Each player's last applied input, and the room's bookkeeping beside them.
    pub applied: std::collections::BTreeMap<String, u64>,
    /// The players in the room.
    pub players: Vec<String>,
}

/// A recorded match, as `GET /matches` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct MatchSummary {
    /// The room's id, which is the match's.
    pub id: String,
    /// The room's display name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its metadata.
    #[schema(value_type = Object)]
    pub meta: serde_json::Value,
    /// The code version it ran (Lambda mode pins one; `None` elsewhere).
    pub code_version: Option<String>,
    /// When the room was created, seconds since the Unix epoch.
    pub created_at: i64,
    /// When it ended (`None`: still on, its record still growing).
    pub ended_at: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Whether the room was private: its record is its players' and the operator's.
    pub private: bool,
    /// The players who were in it.
    pub players: Vec<String>,
    /// The recorded time of the first entry kept and of the last (ms since the epoch).
    pub first_at: i64,
    /// See `first_at`.
    pub last_at: i64,
    /// Entries kept: inputs, ticks and the lobby's messages.
    pub entries: i64,
    /// Bytes the entries take in the store.
    pub bytes: i64,
}

/// One segment of a match, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSegment {
    /// The version of the checkpoint saved with it: segments go in this order.
    pub version: u64,
    /// See [`Segment::start`].
    pub start: Option<String>,
    /// See [`Segment::entries`].
    pub entries: String,
    /// See [`Segment::first_at`].
    pub first_at: u64,
    /// See [`Segment::last_at`].
    pub last_at: u64,
}

/// Which records a caller may see.
#[derive(Debug, Clone, Default)]
pub struct MatchViewer {
    /// The operator: every record.
    pub operator: bool,
    /// A player: the public records and the private ones it played in.
    pub player: Option<String>,
}

/// Which records to list.
#[derive(Debug, Clone, Default)]
pub struct MatchQuery {
    /// At most this many, the latest first.
    pub limit: u32,
    /// Rooms created at or after this time (seconds since the Unix epoch).
    pub since: Option<i64>,
    /// Only ended matches.
    pub ended_only: bool,
    /// Only this kind.
    pub kind: Option<String>,
}

pub(super) const ADD_MATCH_PLAYER: &str =
    "INSERT INTO match_players (room_id, player) VALUES ($1, $2) ON CONFLICT DO NOTHING";
pub(super) const FORGET_SEGMENTS: &str =
    "DELETE FROM match_log WHERE room_id = $1 AND version < $2";

/// The columns of a summary of the room `r`: its row, and its log's figures, each read
/// through the log's key (room, version) for that room alone, so that a page of
/// matches costs the same however much the store has recorded.
const SUMMARY: &str = "SELECT r.id, r.name, r.kind, r.meta, r.code_version, r.created_at,
        r.ended_at, r.end_reason, r.code IS NOT NULL AS private,
        (SELECT MIN(m.first_at) FROM match_log m WHERE m.room_id = r.id) AS first_at,
        (SELECT MAX(m.last_at) FROM match_log m WHERE m.room_id = r.id) AS last_at,
        (SELECT CAST(SUM(m.n) AS BIGINT) FROM match_log m WHERE m.room_id = r.id) AS entries,
        (SELECT CAST(SUM(m.bytes) AS BIGINT) FROM match_log m WHERE m.room_id = r.id) AS bytes
    FROM rooms r";

/// That the room `r` has a record.
const RECORDED: &str = "EXISTS (SELECT 1 FROM match_log m WHERE m.room_id = r.id)";

/// Whom a record is visible to: `$1` operator (0/1), `$2` the player asking ('' none).
const VISIBLE: &str = "(r.code IS NULL OR $1 = 1 OR EXISTS
    (SELECT 1 FROM match_players p WHERE p.room_id = r.id AND p.player = $2))";

impl Store {
    /// The recorded matches `viewer` may see, the latest created first.
    pub async fn matches(
        &self,
        query: &MatchQuery,
        viewer: &MatchViewer,
    ) -> Result<Vec<MatchSummary>> {
        let sql = format!(
            "{SUMMARY} WHERE {RECORDED} AND {VISIBLE} AND r.created_at >= $3
                AND ($4 = 0 OR r.ended_at IS NOT NULL) AND ($5 = '' OR r.kind = $5)
             ORDER BY r.created_at DESC, r.id LIMIT $6"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::from(viewer.operator))
            .bind(viewer.player.as_deref().unwrap_or(""))
            .bind(query.since.unwrap_or(0))
            .bind(i64::from(query.ended_only))
            .bind(query.kind.as_deref().unwrap_or(""))
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut found = rows.iter().map(summary).collect::<Result<Vec<_>>>()?;
        let ids: Vec<&str> = found.iter().map(|m| m.id.as_str()).collect();
        let mut players = self.players_of_matches(&ids).await?;
        for summary in &mut found {
            let of = players.remove(&summary.id).unwrap_or_default();
            // Who is in a room still on is its players' and the operator's to know, as
            // GET /rooms has it.
            let shown = summary.ended_at.is_some()
                || viewer.operator
                || viewer.player.as_ref().is_some_and(|p| of.contains(p));
            if shown {
                summary.players = of;
            }
        }
        Ok(found)
    }

    /// One recorded match, if `viewer` may see it: its summary and segments in order.
    /// `Ok(None)`: no such record; [`Error::Forbidden`]: a private room `viewer` was
    /// not in, or a match still on (its record holds what the room sent each player
    /// alone) and `viewer` is not the operator.
    pub async fn match_record(
        &self,
        id: &str,
        viewer: &MatchViewer,
    ) -> Result<Option<(MatchSummary, Vec<StoredSegment>)>> {
        let sql = format!("{SUMMARY} WHERE r.id = $1 AND {RECORDED}");
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let mut summary = summary(&row)?;
        summary.players = (self.players_of_matches(&[id]).await?)
            .remove(id)
            .unwrap_or_default();
        let allowed = !summary.private
            || viewer.operator
            || viewer
                .player
                .as_ref()
                .is_some_and(|p| summary.players.contains(p));
        if !allowed {
            return Err(Error::Forbidden(format!(
                "match {id} was a private room's: only its players (with their player key) and the operator see its record"
            )));
        }
        // What a room sends one player alone (a hand of cards) is in its record: read
        // while the match is on, it would be a way to cheat.
        if summary.ended_at.is_none() && !viewer.operator {
            return Err(Error::Forbidden(format!(
                "match {id} is still being played: its record is the operator's until it ends"
            )));
        }
        let rows = sqlx::query(
            "SELECT version, start, entries, first_at, last_at FROM match_log
             WHERE room_id = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut segments = Vec::with_capacity(rows.len());
        for row in rows {
            segments.push(StoredSegment {
                version: row.try_get::<i64, _>("version").map_err(db)? as u64,
                start: row.try_get("start").map_err(db)?,
                entries: row.try_get("entries").map_err(db)?,
                first_at: row.try_get::<i64, _>("first_at").map_err(db)? as u64,
                last_at: row.try_get::<i64, _>("last_at").map_err(db)? as u64,
            });
        }
        Ok(Some((summary, segments)))
    }

    /// The players of each of the recorded matches `ids`, by name.
    async fn players_of_matches(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, Vec<String>>> {
        let sql = "SELECT room_id, player FROM match_players WHERE room_id IN ({}) ORDER BY player";
        let mut found: std::collections::HashMap<String, Vec<String>> = Default::default();
        for row in self.fetch_in(sql, ids).await? {
            let room: String = row.try_get(0).map_err(db)?;
            found
                .entry(room)
                .or_default()
                .push(row.try_get(1).map_err(db)?);
        }
        Ok(found)
    }

    /// Forgets the records of matches that ended more than `keep` ago; returns how many
    /// segments went.
    pub async fn forget_matches(&self, keep: std::time::Duration) -> Result<u64> {
        let before = now() - keep.as_secs() as i64;
        let ended = "SELECT id FROM rooms WHERE ended_at IS NOT NULL AND ended_at < $1";
        let mut tx = self.pool.begin().await.map_err(db)?;
        let forgotten = sqlx::query(&format!("DELETE FROM match_log WHERE room_id IN ({ended})"))
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        sqlx::query(&format!(
            "DELETE FROM match_players WHERE room_id IN ({ended})"
        ))
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(forgotten)
    }
}

fn summary(row: &AnyRow) -> Result<MatchSummary> {
    let meta: String = row.try_get("meta").map_err(db)?;
    Ok(MatchSummary {
        id: row.try_get("id").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        kind: row.try_get("kind").map_err(db)?,
        meta: serde_json::from_str(&meta).unwrap_or_default(),
        code_version: row.try_get("code_version").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        ended_at: row.try_get("ended_at").map_err(db)?,
        end_reason: row.try_get("end_reason").map_err(db)?,
        private: flag(row, "private")?,
        players: Vec::new(),
        first_at: row.try_get("first_at").map_err(db)?,
        last_at: row.try_get("last_at").map_err(db)?,
        entries: row.try_get("entries").map_err(db)?,
        bytes: row.try_get("bytes").map_err(db)?,
    })
}

/// A boolean expression's column: PostgreSQL's is a BOOLEAN, SQLite's a number.
fn flag(row: &AnyRow, column: &str) -> Result<bool> {
    row.try_get::<bool, _>(column)
        .or_else(|_| row.try_get::<i64, _>(column).map(|n| n != 0))
        .map_err(db)
}
