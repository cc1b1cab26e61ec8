//! Quick play's view of the open seats, in one lobby.
//!
//! Quick plays for the same kind and filter all want the same room: the fullest one with
//! a seat. Asking the store for it at every quick play, one at a time, made the store's
//! round trips the lobby's ceiling (about 430 seats a second). Instead the lobby keeps,
//! for each kind and filter, a shelf of the candidates the store last answered, each
//! with the seats the lobby believes free, and hands the seats out from memory, fullest
//! room first. It asks the store again when the shelf is empty or older than its
//! freshness, so seats freed by leavers and rooms made or filled elsewhere show up
//! within that time.
//!
//! The store still decides every seat (`UPDATE … WHERE seats < max`): a seat the shelf
//! handed out that the store refuses (another lobby took it, or the room locked or
//! ended) only marks that room spent here and sends the player to the next.

use crate::store::RoomRecord;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many shelves a lobby keeps before it drops the stale ones.
const MOST_SHELVES: usize = 1024;

/// The lobby's shelves of open seats, by kind and filter ([`OpenSeats::key`]).
#[derive(Default)]
pub(super) struct OpenSeats {
    shelves: Mutex<HashMap<String, Shelf>>,
}

/// The candidates of one kind and filter, as the store answered them at `stocked`.
struct Shelf {
    stocked: Instant,
    /// Each room with the seats this lobby believes free, in the store's order
    /// (fullest first, then oldest).
    rooms: Vec<(RoomRecord, usize)>,
}

impl OpenSeats {
    /// The shelf key of quick plays for `kind` with `filter`.
    pub(super) fn key(kind: &str, filter: &serde_json::Value) -> String {
        format!("{kind}\n{filter}")
    }

    /// Hands out a seat from shelf `key` if it was stocked less than `fresh` ago: in
    /// the room with the fewest free seats (the fullest), the earliest in the store's
    /// order among equals.
    pub(super) fn hand_out(&self, key: &str, fresh: Duration) -> Option<RoomRecord> {
        let mut shelves = self.shelves.lock().unwrap();
        let shelf = shelves.get_mut(key)?;
        if shelf.stocked.elapsed() >= fresh {
            return None;
        }
        let (record, free) = shelf
            .rooms
            .iter_mut()
            .filter(|(_, free)| *free > 0)
            .min_by_key(|(_, free)| *free)?;
        *free -= 1;
        Some(record.clone())
    }

    /// The store refused a seat in room `room` from shelf `key`: no more from it until
    /// the shelf is stocked again.
    pub(super) fn refused(&self, key: &str, room: &str) {
        let mut shelves = self.shelves.lock().unwrap();
        if let Some(shelf) = shelves.get_mut(key) {
            for (record, free) in &mut shelf.rooms {
                if record.id == room {
                    *free = 0;
                }
            }
        }
    }

    /// Whether shelf `key` was stocked after `since` (by another quick play, while this
    /// one waited its turn to stock it).
    pub(super) fn stocked_after(&self, key: &str, since: Instant) -> bool {
        let shelves = self.shelves.lock().unwrap();
        shelves.get(key).is_some_and(|shelf| shelf.stocked > since)
    }

    /// Stocks shelf `key` with `rooms` (each with its free seats), in place of what it
    /// held.
    pub(super) fn stock(&self, key: &str, rooms: Vec<(RoomRecord, usize)>, fresh: Duration) {
        let mut shelves = self.shelves.lock().unwrap();
        if shelves.len() >= MOST_SHELVES && !shelves.contains_key(key) {
            shelves.retain(|_, shelf| shelf.stocked.elapsed() < fresh);
        }
        shelves.insert(
            key.to_owned(),
            Shelf {
                stocked: Instant::now(),
                rooms,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str) -> RoomRecord {
        RoomRecord {
            id: id.to_owned(),
            name: id.to_owned(),
            created_at: 0,
            kind: String::new(),
            meta: serde_json::Value::Null,
            locked: false,
            code: None,
            seats: 0,
        }
    }

    const FRESH: Duration = Duration::from_secs(60);

    fn ids(seats: &OpenSeats, key: &str, n: usize) -> Vec<Option<String>> {
        (0..n)
            .map(|_| seats.hand_out(key, FRESH).map(|r| r.id))
            .collect()
    }

    #[test]
    fn fills_the_fullest_room_first_then_the_next() {
        let seats = OpenSeats::default();
        seats.stock(
            "k",
            vec![(room("a"), 2), (room("b"), 1), (room("c"), 1)],
            FRESH,
        );
        let some = |id: &str| Some(id.to_owned());
        assert_eq!(
            ids(&seats, "k", 5),
            [some("b"), some("c"), some("a"), some("a"), None]
        );
        assert_eq!(seats.hand_out("other", FRESH), None);
    }

    #[test]
    fn a_refused_room_is_passed_by_until_the_shelf_is_stocked_again() {
        let seats = OpenSeats::default();
        seats.stock("k", vec![(room("a"), 3), (room("b"), 4)], FRESH);
        seats.refused("k", "a");
        assert_eq!(seats.hand_out("k", FRESH).unwrap().id, "b");
        seats.stock("k", vec![(room("a"), 1)], FRESH);
        assert_eq!(seats.hand_out("k", FRESH).unwrap().id, "a");
        assert_eq!(seats.hand_out("k", FRESH), None);
    }

    #[test]
    fn a_stale_shelf_hands_out_nothing() {
        let seats = OpenSeats::default();
        let before = Instant::now();
        seats.stock("k", vec![(room("a"), 3)], FRESH);
        assert!(seats.stocked_after("k", before));
        assert!(!seats.stocked_after("k", Instant::now()));
        assert_eq!(seats.hand_out("k", Duration::ZERO), None);
        assert_eq!(seats.hand_out("k", FRESH).unwrap().id, "a");
    }

    #[test]
    fn too_many_shelves_drop_the_stale_ones() {
        let seats = OpenSeats::default();
        for i in 0..MOST_SHELVES {
            seats.stock(&i.to_string(), vec![(room("a"), 1)], FRESH);
        }
        seats.stock("new", vec![(room("a"), 1)], Duration::ZERO);
        assert_eq!(seats.shelves.lock().unwrap().len(), 1);
        assert!(seats.hand_out("new", FRESH).is_some());
    }
}
