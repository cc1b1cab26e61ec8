//! How worker processes share rooms in cluster mode, with no coordinator but the store and
//! the broker. Every worker process says it is alive in the store and looks at the live
//! rooms a few times a second. A room that no live worker runs yet goes to the live
//! worker that runs the fewest rooms (every worker works the same assignment out from the
//! same rows), which subscribes to the room's inbox at once; every other worker
//! subscribes a little later and stands by. The inbox's single active consumer is
//! therefore the chosen worker while it lives, and rooms spread evenly; when it dies, the
//! broker hands each of its rooms to a standby. Correctness never rests on this: the
//! broker lets one consumer at a time have the inbox, and fenced checkpoints keep a
//! replaced worker from writing.

use super::{InProcess, Launcher};
use crate::names::fnv1a;
use crate::store::Store;
use crate::Result;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a worker process looks for rooms.
const EVERY: Duration = Duration::from_millis(300);
/// A worker not seen for this long is taken for dead.
const ALIVE_WITHIN: Duration = Duration::from_secs(3);
/// How long a worker that is not a room's preferred one waits before it stands by.
const STANDBY_AFTER: Duration = Duration::from_millis(1500);

/// The worker of `room` that rendezvous hashing prefers among `workers`: the tie-break
/// between equally loaded workers.
pub fn preferred<'a>(room: &str, workers: &'a [String]) -> Option<&'a str> {
    workers
        .iter()
        .max_by_key(|w| fnv1a(format!("{room}/{w}").as_bytes()))
        .map(String::as_str)
}

/// Which live worker should take each room that no live worker runs: rooms in id order,
/// each to the least loaded worker so far (rendezvous hashing breaks ties). `rooms` pairs
/// each live room with the worker that last ran it.
pub fn assign<'a>(
    rooms: &'a [(String, Option<String>)],
    workers: &'a [String],
) -> Vec<(&'a str, &'a str)> {
    let mut load: HashMap<&str, usize> = workers.iter().map(|w| (w.as_str(), 0)).collect();
    let mut orphans = Vec::new();
    for (room, worker) in rooms {
        match worker.as_deref().and_then(|w| load.get_mut(w)) {
            Some(n) => *n += 1,
            None => orphans.push(room.as_str()),
        }
    }
    let mut assigned = Vec::new();
    for room in orphans {
        let least = load.values().copied().min().unwrap_or(0);
        let tied: Vec<String> = workers
            .iter()
            .filter(|w| load[w.as_str()] == least)
            .cloned()
            .collect();
        let Some(chosen) = preferred(room, &tied) else {
            break;
        };
        let chosen = workers
            .iter()
            .find(|w| *w == chosen)
            .expect("a live worker");
        *load.get_mut(chosen.as_str()).expect("a live worker") += 1;
        assigned.push((room, chosen.as_str()));
    }
    assigned
}

/// This process's part in sharing rooms.
#[derive(Debug)]
pub struct Discovery {
    id: String,
    store: Store,
    workers: InProcess,
}

impl Discovery {
    /// Worker process `id` runs rooms with `workers`.
    pub fn new(id: String, store: Store, workers: InProcess) -> Discovery {
        Discovery { id, store, workers }
    }

    /// Looks for rooms until `shutdown`, then says this worker is gone.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut first_seen = HashMap::new();
        loop {
            if let Err(e) = self.round(&mut first_seen).await {
                tracing::warn!("worker {}: cannot look for rooms: {e}", self.id);
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
        if let Err(e) = self.store.worker_gone(&self.id).await {
            tracing::warn!("worker {}: cannot sign off: {e}", self.id);
        }
    }

    async fn round(&self, first_seen: &mut HashMap<String, Instant>) -> Result<()> {
        self.store.worker_alive(&self.id).await?;
        let workers = self.store.live_workers(ALIVE_WITHIN).await?;
        let rooms = self.store.room_workers().await?;
        for (room, worker) in assign(&rooms, &workers) {
            if worker == self.id {
                self.workers.launch(room);
            }
        }
        // Stand by for every other room, once its chosen worker has had time to start.
        let now = Instant::now();
        first_seen.retain(|room, _| rooms.iter().any(|(r, _)| r == room));
        for (room, _) in &rooms {
            let seen = *first_seen.entry(room.clone()).or_insert(now);
            if now.duration_since(seen) >= STANDBY_AFTER {
                self.workers.launch(room);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rooms_go_to_the_least_loaded_live_worker() {
        let workers = vec!["w-a".to_owned(), "w-b".to_owned()];
        let mut rooms: Vec<(String, Option<String>)> = vec![
            ("r0".into(), Some("w-a".into())),
            ("r1".into(), Some("w-a".into())),
            ("r2".into(), Some("w-dead".into())),
        ];
        rooms.extend((3..20).map(|i| (format!("r{i:02}"), None)));
        let assigned = assign(&rooms, &workers);
        assert_eq!(
            assigned.len(),
            18,
            "the dead worker's room and the new ones"
        );
        let on_a = 2 + assigned.iter().filter(|(_, w)| *w == "w-a").count();
        assert_eq!(on_a, 10, "10 of 20 each");
        assert!(assign(&rooms, &[]).is_empty());
    }

    #[test]
    fn rendezvous_spreads_rooms_and_moves_few_when_a_worker_goes() {
        let two = vec!["w-a".to_owned(), "w-b".to_owned()];
        let rooms: Vec<String> = (0..1000).map(|i| format!("room{i}")).collect();
        let on_a = rooms
            .iter()
            .filter(|r| preferred(r, &two) == Some("w-a"))
            .count();
        assert!((400..=600).contains(&on_a), "{on_a} of 1000 on one worker");
        let three = vec!["w-a".to_owned(), "w-b".to_owned(), "w-c".to_owned()];
        let moved = rooms
            .iter()
            .filter(|r| {
                let before = preferred(r, &three).unwrap();
                before != "w-c" && preferred(r, &two) != Some(before)
            })
            .count();
        assert_eq!(moved, 0, "only w-c's rooms move when w-c goes");
        assert_eq!(preferred("r", &[]), None);
    }
}
