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
    // Room kinds ('' is the server's first kind), the metadata quick play filters on,
    // locked and private rooms (a private room has a code), and the seats taken: players
    // plus reservations, counted in the transaction that adds or removes one, so that
    // concurrent joins through any lobby never overfill a room.
    "ALTER TABLE rooms ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE rooms ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'",
    "ALTER TABLE rooms ADD COLUMN locked BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE rooms ADD COLUMN code TEXT",
    "ALTER TABLE rooms ADD COLUMN seats BIGINT NOT NULL DEFAULT 0",
    "UPDATE rooms SET seats = (SELECT COUNT(*) FROM players WHERE players.room_id = rooms.id)",
    // Quick play's candidates, in its order: read 32 at a time whatever the number of
    // open rooms.
    "CREATE INDEX IF NOT EXISTS rooms_open ON rooms (kind, locked, seats DESC, created_at, id)
        WHERE ended_at IS NULL AND code IS NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS rooms_code ON rooms (code)",
    // A seat quick play reserved: the player's row until then, when it is given up
    // unless a connection with its ticket came (milliseconds since the epoch).
    "ALTER TABLE players ADD COLUMN reserved_until BIGINT",
    "CREATE INDEX IF NOT EXISTS players_reserved ON players (reserved_until)",
    // RabbitMQ's open player connections, by the connection's pid: its close event
    // names only the pid (cluster mode's presence, see `rabbit.rs`).
    "CREATE TABLE IF NOT EXISTS connections (
        pid TEXT PRIMARY KEY,
        room_id TEXT NOT NULL,
        player TEXT NOT NULL,
        created_at BIGINT NOT NULL)",
    // The matchmaking queue: each ticket waits (`room_id` NULL) until a group of its kind
    // is formed, then names its room and the player's join. `seen_at` is its last poll:
    // a ticket nobody polls is dropped. Times in milliseconds.
    "CREATE TABLE IF NOT EXISTS queue_tickets (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        filter TEXT NOT NULL,
        player TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        seen_at BIGINT NOT NULL,
        room_id TEXT,
        join_id TEXT,
        meta TEXT)",
    "CREATE INDEX IF NOT EXISTS queue_waiting ON queue_tickets (kind, created_at) WHERE room_id IS NULL",
    // One row a kind, updated first by whoever forms groups of it: the lock that makes
    // lobbies form them one at a time.
    "CREATE TABLE IF NOT EXISTS queue_locks (kind TEXT PRIMARY KEY, n BIGINT NOT NULL)",
    // What the room did lately, saved with each checkpoint for the inspector (JSON).
    "ALTER TABLE checkpoints ADD COLUMN activity TEXT",
    // Match records (see `records.rs`): a room's entries between two checkpoints, written
    // with the later one (`version`), some with the room as it was before them (`start`,
    // JSON); and the players each match had, which decide who sees a private one's.
    "CREATE TABLE IF NOT EXISTS match_log (
        room_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        first_at BIGINT NOT NULL,
        last_at BIGINT NOT NULL,
        n BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        start TEXT,
        entries TEXT NOT NULL,
        PRIMARY KEY (room_id, version))",
    "CREATE TABLE IF NOT EXISTS match_players (
        room_id TEXT NOT NULL,
        player TEXT NOT NULL,
        PRIMARY KEY (room_id, player))",
    // GET /matches pages rooms by creation, the retention finds them by their end.
    "CREATE INDEX IF NOT EXISTS rooms_created ON rooms (created_at)",
    "CREATE INDEX IF NOT EXISTS rooms_ended ON rooms (ended_at)",
];
