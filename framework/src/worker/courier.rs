//! The transfers a room asked for, carried out in the background once the checkpoint
//! that holds them is saved: through [`Transfers`] (the room service), then the player
//! hears its new ticket on its own destination, then the transfer leaves the outbox.
//! One that fails for a while stays in the outbox, and the room's next worker tries it
//! again; trying again is safe, since [`Transfers`] does each key once.

use super::link::Link;
use super::subscribed::WorkerEnv;
use super::Transfers;
use crate::proto::RoomEvent;
use crate::room::Transfer;
use crate::store::Store;
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Tries of one transfer before it is left to the room's next worker.
const TRIES: u32 = 5;

/// A room's courier: a task that carries out its transfers in order.
pub(super) struct Courier {
    queue: Option<mpsc::UnboundedSender<Transfer>>,
    task: Option<JoinHandle<()>>,
}

impl Courier {
    /// A courier for `room`, publishing through `client`.
    pub(super) fn start(env: &WorkerEnv, client: &Link, room: &str) -> Courier {
        let (queue, transfers) = mpsc::unbounded_channel();
        let run = Run {
            transfers: env.transfers.clone(),
            store: env.store.clone(),
            client: client.clone(),
            private: {
                let names = env.admin.names().clone();
                let room = room.to_owned();
                Arc::new(move |player: &str| names.private(&room, player))
            },
        };
        Courier {
            queue: Some(queue),
            task: Some(tokio::spawn(run.serve(transfers))),
        }
    }

    /// Where saved transfers go.
    pub(super) fn queue(&self) -> mpsc::UnboundedSender<Transfer> {
        self.queue.clone().expect("the courier runs")
    }

    /// Carries out, after what it was given, the transfers the outbox holds for the room
    /// (those a worker before did not finish).
    pub(super) fn resume(&self, pending: Vec<Transfer>) {
        for transfer in pending {
            let _ = self.queue().send(transfer);
        }
    }

    /// Waits up to `grace` for the transfers given so far to be carried out.
    pub(super) async fn finish(mut self, grace: Duration) {
        self.queue = None; // the saver's copy goes with the saver
        if let Some(task) = self.task.as_mut() {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("transfers still under way after {grace:?}: the room's next worker carries them out");
            }
        }
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What the courier's task carries out transfers with.
struct Run {
    transfers: Arc<dyn Transfers>,
    store: Store,
    client: Link,
    /// A player's own destination in the room.
    private: Arc<dyn Fn(&str) -> String + Send + Sync>,
}

impl Run {
    async fn serve(self, mut queue: mpsc::UnboundedReceiver<Transfer>) {
        while let Some(transfer) = queue.recv().await {
            self.deliver(&transfer).await;
        }
    }

    /// Carries out one transfer, trying again a few times when the room service or the
    /// store fails.
    async fn deliver(&self, transfer: &Transfer) {
        let mut wait = Duration::from_millis(200);
        for _ in 0..TRIES {
            let why = match self.try_once(transfer).await {
                Ok(()) => return,
                Err(e) => e,
            };
            tracing::warn!(key = %transfer.key, player = %transfer.player, to = %transfer.room, "transfer failed ({why}); trying again in {wait:?}");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        tracing::warn!(key = %transfer.key, "transfer left in the outbox: the room's next worker tries it again");
    }

    async fn try_once(&self, transfer: &Transfer) -> Result<()> {
        let event = match self.transfers.transfer(transfer).await {
            Ok(Some(ticket)) => Some(RoomEvent::Transferred {
                ticket: Box::new(ticket),
            }),
            Ok(None) => None,
            // What will not change by trying again: the player hears why, and stays.
            Err(e) if for_good(&e) => Some(RoomEvent::Error {
                error: format!("you could not be moved to {}: {e}", transfer.room),
            }),
            Err(e) => return Err(e),
        };
        if let Some(event) = event {
            self.tell(&transfer.player, &event).await?;
        }
        self.store.transfer_done(&transfer.key).await
    }

    /// Sends `event` to `player`'s own destination, and waits until the broker has it.
    async fn tell(&self, player: &str, event: &RoomEvent) -> Result<()> {
        let body = serde_json::to_vec(event).expect("a RoomEvent serializes");
        self.client.publish((self.private)(player), body)?;
        self.client.flush().await
    }
}

/// Whether a transfer failed for good: the room or the player is not there, or a limit
/// holds (the room is full).
fn for_good(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound(_)
            | Error::Conflict(_)
            | Error::Invalid(_)
            | Error::Unauthorized(_)
            | Error::Forbidden(_)
            | Error::Limited(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Ticket;

    /// The ticket a transfer answered, as the player hears it.
    fn transferred(ticket: Ticket) -> serde_json::Value {
        serde_json::to_value(RoomEvent::Transferred {
            ticket: Box::new(ticket),
        })
        .unwrap()
    }

    #[test]
    fn the_new_ticket_reads_back_as_a_room_event() {
        let ticket = Ticket {
            room: "r2".into(),
            player: "ann".into(),
            ws_url: "ws://h/ws".into(),
            tcp_url: "tcp://h:1".into(),
            ws_urls: vec!["ws://h/ws".into(), "ws://h2/ws".into()],
            tcp_urls: vec!["tcp://h:1".into(), "tcp://h2:1".into()],
            login: "ann".into(),
            token: "t".into(),
            expires: 1,
            inbox: "/queue/room.r2".into(),
            topic: "/topic/room.r2".into(),
            private: "/topic/room.r2.player.ann".into(),
            player_key: None,
            spectator: false,
        };
        let body = transferred(ticket.clone());
        assert_eq!(body["type"], "transferred");
        let back: crate::proto::Envelope<serde_json::Value> = serde_json::from_value(body).unwrap();
        assert_eq!(
            back.body,
            crate::proto::Body::Room(RoomEvent::Transferred {
                ticket: Box::new(ticket)
            })
        );
        assert!(for_good(&Error::Limited("full".into())));
        assert!(!for_good(&Error::Store("down".into())));
    }
}
