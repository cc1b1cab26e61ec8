//! Checkpoints, and the acks and transfers that follow them. A checkpoint is saved in the
//! background while the room goes on applying inputs, one save at a time; only once the
//! store has it are the inputs it holds acked and the transfers they asked for carried
//! out, so a worker that dies before replays them.

use super::link::{Ack, Link};
use super::shared::Shared;
use crate::room::Transfer;
use crate::store::{Checkpoint, Store};
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Instant;
use tokio::sync::mpsc;

/// Checkpoints, then acks what each checkpoint holds. A checkpoint is saved in the
/// background while the room goes on applying inputs, one save at a time: the room
/// never waits for the store unless it must (a full prefetch, the end, shutdown).
pub(super) struct Saver<'a> {
    store: &'a Store,
    client: &'a Link,
    /// When the last checkpoint was started.
    pub(super) started: Instant,
    /// The checkpoint last saved, to skip saving one that changes nothing.
    last: Option<Checkpoint>,
    /// The save under way.
    pub(super) in_flight: Option<InFlight>,
    /// Where saved transfers go to be carried out (the room's courier).
    courier: mpsc::UnboundedSender<Transfer>,
}

/// A checkpoint being saved, and the input to ack once it is.
pub(super) struct InFlight {
    task: tokio::task::JoinHandle<Result<()>>,
    /// What was saved (`None`: nothing changed, nothing written).
    saved: Option<Checkpoint>,
    ack: Option<Ack>,
    /// The transfers saved with it, to carry out once it is saved.
    transfers: Vec<Transfer>,
}

impl<'a> Saver<'a> {
    /// A saver with nothing applied yet, handing saved transfers to `courier`.
    pub(super) fn new(
        store: &'a Store,
        client: &'a Link,
        courier: mpsc::UnboundedSender<Transfer>,
    ) -> Saver<'a> {
        Saver {
            store,
            client,
            started: Instant::now(),
            last: None,
            in_flight: None,
            courier,
        }
    }

    /// Starts saving a checkpoint of everything applied so far (after the save under
    /// way, if any, is done). The outputs of the inputs it holds must reach the broker
    /// first: a checkpoint that holds an input whose outputs were lost would make its
    /// replay a skipped duplicate, and the outputs would never be sent. (An input the
    /// broker had the room apply where it delivered it has its outputs published under
    /// the broker's lock, which the barrier below waits for.)
    pub(super) async fn start<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        shared: &Shared<S>,
    ) -> Result<()> {
        self.settle(shared).await?;
        // The checkpoint and the input it acks are taken under one lock: nothing is
        // applied between them.
        let (checkpoint, grants, transfers, record, ack, changed, room) = {
            let mut inner = shared.lock();
            let worker = inner.worker();
            let (checkpoint, grants, transfers) = worker.checkpoint()?;
            let mut record = worker.take_record(&checkpoint);
            // Inputs that changed nothing (a tick that moved no one) need no write: the
            // saved checkpoint already holds what applying them again would make.
            let changed = record.as_ref().is_some_and(|r| r.outputs > 0)
                || !(grants.is_empty()
                    && transfers.is_empty()
                    && self
                        .last
                        .as_ref()
                        .is_some_and(|last| same_but_ticks(last, &checkpoint)));
            if !changed {
                if let Some(segment) = record.take() {
                    worker.record_not_saved(segment);
                }
            }
            let room = worker.id().to_owned();
            let ack = inner.unacked.take();
            inner.unsaved = 0;
            inner.unsaved_not_ticks = 0;
            inner.first_unsaved = false;
            (checkpoint, grants, transfers, record, ack, changed, room)
        };
        let (client, store) = (self.client.clone(), self.store.clone());
        let saved = changed.then(|| checkpoint.clone());
        let to_carry_out = transfers.clone();
        let task = tokio::spawn(async move {
            client.flush().await?;
            if changed {
                store
                    .save_checkpoint(&room, &checkpoint, &grants, &transfers, record)
                    .await?;
            }
            Ok(())
        });
        self.in_flight = Some(InFlight {
            task,
            saved,
            ack,
            transfers: to_carry_out,
        });
        self.started = Instant::now();
        Ok(())
    }

    /// Waits for the save under way, if any, and acks what it holds.
    pub(super) async fn settle<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        shared: &Shared<S>,
    ) -> Result<()> {
        if let Some(mut f) = self.in_flight.take() {
            let result = (&mut f.task).await;
            self.in_flight = Some(f);
            self.finished(shared, result)?;
        }
        Ok(())
    }

    /// Takes in the result of the save under way (from [`saving`]): acks what it holds
    /// and hands its transfers to the courier.
    pub(super) fn finished<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        shared: &Shared<S>,
        result: std::result::Result<Result<()>, tokio::task::JoinError>,
    ) -> Result<()> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        result.map_err(|e| Error::Store(format!("a checkpoint save failed: {e}")))??;
        if let Some(checkpoint) = f.saved {
            shared.lock().worker().saved();
            self.last = Some(Checkpoint {
                version: checkpoint.version + 1,
                ..checkpoint
            });
        }
        if let Some(ack) = f.ack {
            self.client.ack(&ack)?;
        }
        for transfer in f.transfers {
            // The courier lives as long as the room's worker: gone, the transfer waits in
            // the outbox for the next one.
            let _ = self.courier.send(transfer);
        }
        Ok(())
    }

    /// Saves a checkpoint of everything applied and acks it, waiting for both.
    pub(super) async fn save<S: Serialize + DeserializeOwned + 'static>(
        &mut self,
        shared: &Shared<S>,
    ) -> Result<()> {
        self.start(shared).await?;
        self.settle(shared).await
    }
}

/// Whether two checkpoints differ at most in their tick numbers (and `b` brings no
/// activity to save). Ticks that changed nothing need no save: run again on the same
/// state after a crash, they change nothing again.
fn same_but_ticks(a: &Checkpoint, b: &Checkpoint) -> bool {
    let inputs = |c: &Checkpoint| {
        c.applied
            .iter()
            .filter(|(k, _)| !k.starts_with("$tick:"))
            .map(|(k, v)| (k.clone(), *v))
            .collect::<Vec<_>>()
    };
    b.activity.is_empty()
        && a.seq == b.seq
        && a.version == b.version
        && a.state == b.state
        && a.players == b.players
        && inputs(a) == inputs(b)
}

/// Resolves when the save under way (if any) is done; never, if none is.
pub(super) async fn saving(
    in_flight: &mut Option<InFlight>,
) -> std::result::Result<Result<()>, tokio::task::JoinError> {
    match in_flight {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}
