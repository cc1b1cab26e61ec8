//! Room workers: the only consumer of a room's inbox, applying its inputs in order.
//! [`room_worker`] is the worker without I/O; [`subscribed`] runs it as a STOMP
//! consumer; a [`Launcher`] decides where the worker of a new room runs.

pub mod activity;
mod amqp;
mod courier;
pub mod discovery;
pub mod kinds;
mod link;
pub mod record;
pub mod replay;
pub mod room_worker;
mod saver;
mod shared;
pub mod subscribed;

use crate::proto::Ticket;
use crate::room::Transfer;
use crate::{Error, Result};
use futures_util::future::BoxFuture;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::task::TaskTracker;

pub use self::kinds::Kinds;
pub use self::record::{Entry, RecordedOutput};
pub use self::replay::{Difference, Verdict};
pub use self::room_worker::{Control, InboxMessage, RoomWorker};
pub use self::subscribed::{Timings, WorkerEnv};

/// Starts the worker of a room that was created or must be resumed.
pub trait Launcher: Send + Sync + 'static {
    /// Makes sure `room` has a worker.
    fn launch(&self, room: &str);

    /// Rooms with a worker in this process, where the launcher can tell.
    fn running(&self) -> Option<usize>;
}

/// Carries out the transfers rooms ask for ([`crate::RoomCtx::transfer`]), and the
/// leaves of dropped players whose grace is over: the room
/// service does (`Rooms`, a layer above the workers, implements it). A worker calls it
/// only once the checkpoint that holds the transfer is saved, and again after a crash
/// if it may not have finished: it must do a transfer once however often it is called
/// with the same [`Transfer::key`].
pub trait Transfers: Send + Sync + 'static {
    /// Moves `transfer.player` from `transfer.from` to the live room named
    /// `transfer.room` and answers the ticket for it; `None` when there is nothing (more)
    /// to do: the transfer was done before, and the player has moved on since.
    fn transfer<'a>(&'a self, transfer: &'a Transfer) -> BoxFuture<'a, Result<Option<Ticket>>>;

    /// Takes `player` out of `room` as a leave through the lobby does (its seat freed,
    /// its ticket revoked, a `$leave` in the inbox): a dropped player whose grace is
    /// over. Nothing to do when it is gone already.
    fn leave<'a>(&'a self, room: &'a str, player: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// A [`Transfers`] given later: the room service needs the launcher, which needs the
/// workers' environment, which needs this. Cheap to clone; until it is set, transfers
/// fail (and are tried again).
#[derive(Clone, Default)]
pub struct LateTransfers(Arc<OnceLock<Arc<dyn Transfers>>>);

impl std::fmt::Debug for LateTransfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateTransfers")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

impl LateTransfers {
    /// Hands every transfer to `transfers` from now on; the first call counts.
    pub fn set(&self, transfers: Arc<dyn Transfers>) {
        let _ = self.0.set(transfers);
    }
}

impl Transfers for LateTransfers {
    fn transfer<'a>(&'a self, transfer: &'a Transfer) -> BoxFuture<'a, Result<Option<Ticket>>> {
        match self.0.get() {
            Some(transfers) => transfers.transfer(transfer),
            None => Box::pin(async {
                Err(Error::Protocol(
                    "the room service is not running yet".into(),
                ))
            }),
        }
    }
    fn leave<'a>(&'a self, room: &'a str, player: &'a str) -> BoxFuture<'a, Result<()>> {
        match self.0.get() {
            Some(transfers) => transfers.leave(room, player),
            None => Box::pin(async {
                Err(Error::Protocol(
                    "the room service is not running yet".into(),
                ))
            }),
        }
    }
}

/// Workers run elsewhere (worker processes find rooms themselves): launching does
/// nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct External;

impl Launcher for External {
    fn launch(&self, _room: &str) {}

    fn running(&self) -> Option<usize> {
        None
    }
}

type Spawn = Arc<dyn Fn(String) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Workers as tasks of this process, one per room, each restarted from its checkpoint
/// when it fails. Cheap to clone.
#[derive(Clone)]
pub struct InProcess {
    spawn: Spawn,
    rooms: Arc<Mutex<HashSet<String>>>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("rooms", &self.rooms.lock().unwrap().len())
            .finish_non_exhaustive()
    }
}

impl InProcess {
    /// Runs each launched room with the handlers of its kind, with `env`.
    pub fn new(env: WorkerEnv, kinds: Kinds) -> InProcess {
        InProcess {
            spawn: Arc::new(move |room| {
                let (env, kinds) = (env.clone(), kinds.clone());
                Box::pin(async move { kinds.supervise(env, room).await })
            }),
            rooms: Arc::default(),
            tasks: TaskTracker::new(),
        }
    }

    /// Waits up to `grace` for every worker to finish (after the shutdown signal).
    pub async fn wait(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("room workers still running after {grace:?}");
        }
    }
}

impl Launcher for InProcess {
    fn launch(&self, room: &str) {
        if !self.rooms.lock().unwrap().insert(room.to_owned()) {
            return;
        }
        let rooms = self.rooms.clone();
        let room = room.to_owned();
        let work = (self.spawn)(room.clone());
        self.tasks.spawn(async move {
            work.await;
            rooms.lock().unwrap().remove(&room);
        });
    }

    fn running(&self) -> Option<usize> {
        Some(self.rooms.lock().unwrap().len())
    }
}
