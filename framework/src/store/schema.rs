//! The store's schema: each migration runs once, in order, and `schema_version`
//! remembers how far a store is.

/// The migrations, oldest first.
pub(super) const MIGRATIONS: &[&str] = &[
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
