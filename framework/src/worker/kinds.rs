//! The kinds of room a server runs: each a name, its [`Msg`] handlers (whatever their
//! state type) and the queue policy declared with them. One [`Msg`] alone is one kind,
//! [`DEFAULT_KIND`], so a one-kind game stays as short as it was.
//!
//! ```
//! use game_server_less::{Kinds, Msg, Policy};
//!
//! let duel = Msg::new(|| 0u32).policy(Policy::new().players(2, 2));
//! let arena = Msg::new(String::new).policy(Policy::new().players(4, 8));
//! let kinds = Kinds::new().kind("duel", duel).kind("match", arena);
//! assert_eq!(kinds.names().collect::<Vec<_>>(), ["duel", "match"]);
//! ```

use super::subscribed::{run_leased, Lease, Outcome, Timings, WorkerEnv};
use crate::msg::Msg;
use crate::policy::{Policies, Policy, RoomPolicy, DEFAULT_KIND};
use crate::{Error, Result};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A kind's handlers with their state type hidden: what a worker runs.
trait Handlers: Send + Sync + 'static {
    fn declared(&self) -> &Policy;

    fn run_leased<'a>(
        &'a self,
        env: &'a WorkerEnv,
        room: &'a str,
        policy: &'a RoomPolicy,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Outcome>>;

    fn rerun(
        &self,
        info: crate::msg::RoomInfo,
        grace: Duration,
        segments: &[crate::store::StoredSegment],
    ) -> super::Verdict;
}

impl<S> Handlers for Msg<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    fn declared(&self) -> &Policy {
        self.declared_policy()
    }

    fn run_leased<'a>(
        &'a self,
        env: &'a WorkerEnv,
        room: &'a str,
        policy: &'a RoomPolicy,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(run_leased(env, room, self.clone(), policy, lease))
    }

    fn rerun(
        &self,
        info: crate::msg::RoomInfo,
        grace: Duration,
        segments: &[crate::store::StoredSegment],
    ) -> super::Verdict {
        super::replay::rerun(info, self.clone(), grace, segments)
    }
}

/// The kinds of room a server runs, in the order declared: the first is the default
/// (rooms created without a kind). Cheap to clone.
#[derive(Clone, Default)]
pub struct Kinds {
    kinds: Vec<(String, Arc<dyn Handlers>)>,
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl<S> From<Msg<S>> for Kinds
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    fn from(msg: Msg<S>) -> Kinds {
        Kinds::new().kind(DEFAULT_KIND, msg)
    }
}

impl Kinds {
    /// No kinds yet.
    pub fn new() -> Kinds {
        Kinds::default()
    }

    /// Adds the kind `name`, whose rooms run `msg` under the policy declared with it
    /// ([`Msg::policy`]).
    ///
    /// # Panics
    ///
    /// When `name` is taken, or is not 1 to 32 letters, digits, `-` or `_`.
    #[track_caller]
    pub fn kind<S>(mut self, name: &str, msg: Msg<S>) -> Kinds
    where
        S: Serialize + DeserializeOwned + Send + 'static,
    {
        assert!(
            crate::proto::valid_name(name),
            "a kind's name has 1 to 32 letters, digits, '-' or '_', not {name:?}"
        );
        assert!(
            self.names().all(|n| n != name),
            "the kind {name:?} is declared twice"
        );
        self.kinds.push((name.to_owned(), Arc::new(msg)));
        self
    }

    /// The kinds' names, in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.iter().map(|(name, _)| name.as_str())
    }

    /// Every kind's policy decided: `overrides` (`(kind or "*", key, value)`, as
    /// `--policy` gives them) over the declared one over `defaults`.
    pub fn policies(
        &self,
        defaults: &RoomPolicy,
        overrides: &[(String, String, String)],
    ) -> Result<Policies> {
        if self.kinds.is_empty() {
            return Err(Error::Invalid(
                "declare at least one kind of room (Kinds::new().kind(\"name\", msg))".into(),
            ));
        }
        for (kind, _, _) in overrides {
            if kind != "*" && self.names().all(|n| n != kind) {
                return Err(Error::Invalid(format!(
                    "--policy names the kind {kind:?}, which this game does not have; its kinds are {}",
                    self.names().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut decided = Vec::new();
        for (name, handlers) in &self.kinds {
            let mut over = Policy::new();
            for (kind, key, value) in overrides {
                if kind == "*" || kind == name {
                    over.set(key, value).map_err(Error::Invalid)?;
                }
            }
            let policy = handlers.declared().overridden_by(&over).resolve(defaults);
            decided.push((name.clone(), policy));
        }
        Ok(Policies::new(decided))
    }

    /// A recorded match of `kind` run again under this build's handlers of it
    /// (`replay::rerun`); a kind this build lacks makes the record unusable here.
    pub fn rerun(
        &self,
        kind: &str,
        info: crate::msg::RoomInfo,
        grace: Duration,
        segments: &[crate::store::StoredSegment],
    ) -> super::Verdict {
        match self.kinds.iter().find(|(name, _)| name == kind) {
            Some((_, handlers)) => handlers.rerun(info, grace, segments),
            None => super::Verdict::Unusable(format!(
                "its kind {kind:?} is not in this build (its kinds: {})",
                self.names().collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// One life of `room`'s worker, running the handlers of its kind (read from its
    /// record) under that kind's policy (`env.policies`), for at most `lease`.
    pub async fn run_leased(
        &self,
        env: &WorkerEnv,
        room: &str,
        lease: Option<Lease>,
    ) -> Result<Outcome> {
        let Some(record) = env.store.room(room).await? else {
            return Ok(Outcome::Ended); // ended meanwhile
        };
        let policies = &env.policies;
        let kind = if record.kind.is_empty() {
            policies.default_kind()
        } else {
            record.kind.as_str()
        };
        let Some((_, handlers)) = self.kinds.iter().find(|(name, _)| name == kind) else {
            return Err(Error::Invalid(format!(
                "room {room} is of kind {kind:?}, which this build does not have (its kinds: {})",
                self.names().collect::<Vec<_>>().join(", ")
            )));
        };
        let policy = policies.of(kind);
        let env = WorkerEnv {
            timings: Timings {
                idle_timeout: policy.idle_timeout,
                ..env.timings
            },
            ..env.clone()
        };
        handlers.run_leased(&env, room, policy, lease).await
    }

    /// Runs a room's worker until the room ends or the process shuts down, starting it again
    /// from the last checkpoint whenever it fails.
    pub async fn supervise(&self, env: WorkerEnv, room_id: String) {
        let mut failures = 0u32;
        loop {
            match self.run_leased(&env, &room_id, None).await {
                Ok(_) => return,
                Err(e) if env.shutting_down() => {
                    tracing::debug!(room = %room_id, "worker stopped during shutdown: {e}");
                    return;
                }
                Err(e) if !matches!(env.store.room(&room_id).await, Ok(Some(_))) => {
                    // Another worker ended the room (its inbox went away under us), or the
                    // store cannot say: either way there is nothing left to carry on.
                    tracing::debug!(room = %room_id, "worker stopped: the room has ended ({e})");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(100 * u64::from(failures.min(20)));
                    tracing::warn!(room = %room_id, "room worker failed ({e}); restarting from the last checkpoint in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
