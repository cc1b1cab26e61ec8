//! The server on AWS Lambda (cargo feature `lambda`): the same binary, started by the
//! Lambda runtime (`AWS_LAMBDA_RUNTIME_API` is set), answers two kinds of event.
//!
//! - **HTTP** (API Gateway, REST or HTTP API): the lobby, the same axum router as
//!   cluster mode, through `lambda_http`.
//! - **`{"gsl_room": ID}`**: a room worker, a chain of invocations. It runs the room
//!   from its checkpoint, on RabbitMQ like a worker process, for one lease (until shortly
//!   before its deadline, or `GSL_LAMBDA_LEASE_SECS`); then it checkpoints, acks, leaves
//!   the inbox and invokes the next worker of the room asynchronously. Nothing is lost
//!   or doubled across a handover: the inbox keeps what arrives meanwhile, and the
//!   checkpoint says what was applied. A room nobody is in lets its chain end (no
//!   invocation, no cost) once it has been empty for `GSL_LAMBDA_EMPTY_SECS`.
//! - **`{"gsl_sweep": true}`** (a schedule): restarts the worker of every live room with
//!   players whose inbox has no consumer, such as one whose invocation died, gives up
//!   the seats quick play reserved that nobody took in time, and forgets the match
//!   records past their retention.
//!
//! **Version pinning.** The first invocation of a room records the function version it
//! runs (`AWS_LAMBDA_FUNCTION_NAME:AWS_LAMBDA_FUNCTION_VERSION`); every later one for
//! that room targets that version, and an invocation of another version hands the room
//! to it and stops. New rooms go to `GSL_WORKER_FUNCTION` (an alias, such as
//! `worker:live`, that a deploy moves), so updates need no downtime: running rooms keep
//! their code, new rooms get the new one.
//!
//! **One chain per room.** Each start of a room's worker (by the lobby or the sweep)
//! numbers a new chain in the store (`gsl_chain` in the event); a handover passes the
//! number on, and an invocation whose chain was superseded neither runs nor invokes.
//! A launch that misjudged a room as workerless (RabbitMQ's consumer counts lag a few
//! seconds) therefore costs one short invocation, never a second chain.
//!
//! Who restarts a room whose invocation died: the lobby, whenever someone joins it (it
//! launches a worker if the inbox has no consumer), and the sweep.

pub mod invoke;

use crate::admin::BrokerAdmin;
use crate::config::{Args, Config};
use crate::lobby::Lobby;
use crate::policy::Policies;
use crate::rabbit::{RabbitAdmin, RabbitConfig};
use crate::rooms::Rooms;
use crate::server::{cluster_lobby, init_logging};
use crate::store::Store;
use crate::token::{random_id, Signer};
use crate::worker::subscribed::{Lease, Outcome};
use crate::worker::{Kinds, Launcher, WorkerEnv};
use crate::{Error, Result};
use axum::Router;
use clap::Parser;
use invoke::{FunctionVersion, Invoker};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tower::Service;

/// Time kept back before the deadline for the checkpoint and the next invoke.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);
/// A worker invoked for a room that another runs gives up after standing by this long.
/// (The room's current chain stands by only until a superseded worker notices, within
/// [`CHAIN_CHECK`] and a checkpoint.)
const STANDBY_FOR: Duration = Duration::from_secs(20);
/// How often a worker checks that its chain is still the room's current one.
const CHAIN_CHECK: Duration = Duration::from_secs(2);

/// Serves Lambda events until the runtime stops the process. Configuration comes from
/// the environment, as on the command line (`GSL_BROKER`, `GSL_STORE`, `GSL_SECRET`,
/// ...), plus the `GSL_LAMBDA_*` and `GSL_WORKER_FUNCTION` variables above.
pub async fn run(lobby: Lobby, kinds: Kinds) -> Result<()> {
    // Only the environment: the program's name, and no arguments.
    let args = Args::try_parse_from(std::env::args_os().take(1))
        .map_err(|e| Error::Invalid(format!("bad GSL_* environment: {e}")))?;
    init_logging(&args.log);
    let app = Function::start(args.config(), lobby, kinds).await?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| {
            let app = app.clone();
            async move { app.handle(event).await }
        },
    ))
    .await
    .map_err(|e| Error::Protocol(format!("the Lambda runtime stopped: {e}")))
}

/// One function's state, kept between invocations of a warm instance.
#[derive(Clone)]
struct Function {
    config: Config,
    store: Store,
    admin: Arc<RabbitAdmin>,
    rabbit: RabbitConfig,
    invoker: Invoker,
    /// This function and version.
    me: FunctionVersion,
    launcher: Arc<LambdaLauncher>,
    /// The room service: the lobby's, and what carries out the workers' transfers.
    rooms: Rooms,
    router: Router,
    kinds: Kinds,
    policies: Policies,
    lease_secs: Option<u64>,
    empty_for: Duration,
}

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn env_secs(key: &str) -> Result<Option<u64>> {
    env_var(key)
        .map(|v| {
            v.parse().map_err(|_| {
                Error::Invalid(format!("{key} must be a number of seconds, not {v:?}"))
            })
        })
        .transpose()
}

impl Function {
    async fn start(config: Config, lobby: Lobby, kinds: Kinds) -> Result<Function> {
        let policies = kinds.policies(&config.policy_defaults(), &config.policy)?;
        let url = config.broker.clone().ok_or_else(|| {
            Error::Invalid(
                "on Lambda, GSL_BROKER must name the RabbitMQ (amqp://USER:PASSWORD@HOST, with its stomp and management plugins)".into(),
            )
        })?;
        if config.secret.as_deref().is_none_or(str::is_empty) {
            return Err(Error::Invalid(
                "on Lambda, GSL_SECRET must be set: the lobby signs tickets with it".into(),
            ));
        }
        let store = Store::open(&config.store_url()).await?;
        let signer = Signer::new(config.token_secret()?);
        let rabbit = RabbitConfig::parse(&url)?;
        let admin = Arc::new(RabbitAdmin::connect(rabbit.clone()).await?);
        let me = FunctionVersion {
            // Lambda always names the function; `cargo lambda watch` may not, and names
            // functions by their binary.
            function: env_var("AWS_LAMBDA_FUNCTION_NAME")
                .or_else(crate::config::program)
                .ok_or_else(|| Error::Invalid("AWS_LAMBDA_FUNCTION_NAME is not set".into()))?,
            qualifier: env_var("AWS_LAMBDA_FUNCTION_VERSION").filter(|v| v != "$LATEST"),
        };
        let invoker = Invoker::from_env();
        let new_rooms = env_var("GSL_WORKER_FUNCTION")
            .map(|t| FunctionVersion::parse(&t))
            .unwrap_or_else(|| me.clone());
        let launcher = Arc::new(LambdaLauncher {
            store: store.clone(),
            admin: admin.clone(),
            invoker: invoker.clone(),
            new_rooms,
            pending: Mutex::default(),
        });
        // (A Lambda lobby keeps no task to tell rooms of spectators: a `--role lobby`
        // process on the same RabbitMQ does.)
        let (rooms, router, _spectators) = cluster_lobby(
            &config,
            lobby,
            store.clone(),
            signer,
            admin.clone(),
            launcher.clone(),
            policies.clone(),
        );
        tracing::info!(function = %me, "ready on Lambda");
        Ok(Function {
            config,
            store,
            admin,
            rabbit,
            invoker,
            me,
            launcher,
            rooms,
            router,
            kinds,
            policies,
            lease_secs: env_secs("GSL_LAMBDA_LEASE_SECS")?,
            empty_for: Duration::from_secs(env_secs("GSL_LAMBDA_EMPTY_SECS")?.unwrap_or(30)),
        })
    }

    async fn handle(&self, event: LambdaEvent<Value>) -> std::result::Result<Value, Diagnostic> {
        let LambdaEvent { payload, context } = event;
        let answer = if let Some(room) = payload.get("gsl_room").and_then(Value::as_str) {
            let chain = payload.get("gsl_chain").and_then(Value::as_i64);
            self.work(room, chain, context.deadline()).await
        } else if payload.get("gsl_sweep").is_some() {
            self.sweep().await
        } else {
            self.http(payload, context).await
        };
        // Invocations the lobby queued go out before the answer: after it, the
        // instance may be frozen.
        self.launcher.settle().await;
        answer.map_err(|(error_type, e)| Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        })
    }

    async fn http(
        &self,
        payload: Value,
        context: lambda_runtime::Context,
    ) -> std::result::Result<Value, (&'static str, Error)> {
        let request: lambda_http::request::LambdaRequest = serde_json::from_value(payload)
            .map_err(|e| {
                (
                    "UnknownEvent",
                    Error::Invalid(format!(
                        "neither an API Gateway request nor a room worker's event ({{\"gsl_room\": ID}} or {{\"gsl_sweep\": true}}): {e}"
                    )),
                )
            })?;
        let mut adapter = lambda_http::Adapter::from(self.router.clone());
        let response = adapter
            .call(LambdaEvent::new(request, context))
            .await
            .map_err(|e: std::convert::Infallible| {
                ("LobbyFailed", Error::Protocol(e.to_string()))
            })?;
        serde_json::to_value(response).map_err(|e| ("LobbyFailed", Error::Protocol(e.to_string())))
    }

    /// One lease of a room's worker, then the handover.
    async fn work(
        &self,
        room: &str,
        chain: Option<i64>,
        deadline: SystemTime,
    ) -> std::result::Result<Value, (&'static str, Error)> {
        let failed = |e: Error| ("RoomWorkerFailed", e);
        let chain = match self.claim(room, chain).await.map_err(failed)? {
            Claim::Run(chain) => chain,
            Claim::Done(answer) => return Ok(answer),
        };
        let outcome = match self.run_lease(room, chain, deadline).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The room is still there: give it a fresh invocation (from the same
                // checkpoint) and say what went wrong.
                if self.store.chain(room).await.ok().flatten() == Some(chain) {
                    let _ = self.invoke(&self.me, room, chain).await;
                }
                return Err(failed(e));
            }
        };
        let next = self.hand_over(room, chain, outcome).await.map_err(failed)?;
        let outcome = match outcome {
            Outcome::Ended => "ended",
            Outcome::Stopped => "stopped",
            Outcome::NotNeeded => "not-needed",
            Outcome::LeaseOver { .. } if next => "handed-over",
            Outcome::LeaseOver { .. } => "asleep",
        };
        tracing::info!(room, outcome, "worker invocation done");
        Ok(json!({ "room": room, "outcome": outcome, "version": self.me.to_string() }))
    }

    /// Whether this invocation runs the room. One chain of invocations per room: an
    /// invocation of a superseded chain (the lobby started another, thinking the room
    /// had no worker) does nothing, and an event without a chain starts one. A room
    /// pinned to other code is handed to that version.
    async fn claim(&self, room: &str, chain: Option<i64>) -> Result<Claim> {
        let me = self.me.to_string();
        let current = match chain {
            Some(_) => self.store.chain(room).await?,
            None => self.store.next_chain(room).await?,
        };
        let Some(chain) = chain.or(current) else {
            return Ok(Claim::Done(json!({ "room": room, "outcome": "gone" })));
        };
        if current != Some(chain) {
            return Ok(Claim::Done(
                json!({ "room": room, "outcome": "superseded" }),
            ));
        }
        let Some(pinned) = self.store.pin_code_version(room, &me).await? else {
            return Ok(Claim::Done(json!({ "room": room, "outcome": "gone" })));
        };
        if pinned != me {
            // The room started on other code: it keeps it.
            let target = FunctionVersion::parse(&pinned);
            self.invoke(&target, room, chain).await?;
            tracing::info!(room, %target, "room pinned to another version: handed to it");
            let answer = json!({ "room": room, "outcome": "redirected", "to": pinned });
            return Ok(Claim::Done(answer));
        }
        Ok(Claim::Run(chain))
    }

    /// Runs the room's worker for one lease, stopping it early if its chain is
    /// superseded.
    async fn run_lease(&self, room: &str, chain: i64, deadline: SystemTime) -> Result<Outcome> {
        let lease = Lease {
            until: tokio::time::Instant::now() + self.lease_length(deadline),
            empty_for: self.empty_for,
            standby_for: STANDBY_FOR,
        };
        let (watcher, shutdown) = watch_chain(self.store.clone(), room, chain);
        let env = WorkerEnv {
            store: self.store.clone(),
            admin: self.admin.clone(),
            transfers: Arc::new(self.rooms.clone()),
            worker_id: format!("lambda-{}-{}", self.me, random_id(4)),
            login: self.rabbit.user.clone(),
            passcode: self.rabbit.password.clone(),
            timings: self.config.timings,
            policies: self.policies.clone(),
            shutdown,
        };
        let outcome = self.kinds.run_leased(&env, room, Some(lease)).await;
        watcher.abort();
        outcome
    }

    /// Invokes the next worker of the chain when the room wants one; returns whether it
    /// did.
    async fn hand_over(&self, room: &str, chain: i64, outcome: Outcome) -> Result<bool> {
        let next = match outcome {
            Outcome::Ended | Outcome::Stopped | Outcome::NotNeeded => false,
            Outcome::LeaseOver { occupied: true } => true,
            // Empty: the chain ends, unless inputs came in as the worker left.
            Outcome::LeaseOver { occupied: false } => {
                matches!(self.admin.inbox_state(room).await, Ok(Some(s)) if s.messages > 0)
            }
        };
        // Unless another chain took over meanwhile: its worker stands by for the room.
        let next = next && self.store.chain(room).await? == Some(chain);
        if next {
            self.invoke(&self.me, room, chain).await?;
        }
        Ok(next)
    }

    /// How long this invocation may run the room: until shortly before its deadline,
    /// or `GSL_LAMBDA_LEASE_SECS` if shorter (or if the deadline is meaningless, as
    /// from emulators).
    fn lease_length(&self, deadline: SystemTime) -> Duration {
        let left = deadline
            .duration_since(SystemTime::now())
            .ok()
            .and_then(|d| d.checked_sub(DEADLINE_MARGIN));
        let chosen = self.lease_secs.map(Duration::from_secs);
        match (left, chosen) {
            (Some(left), Some(chosen)) => left.min(chosen),
            (Some(left), None) => left,
            (None, Some(chosen)) => chosen,
            (None, None) => Duration::from_secs(60),
        }
    }

    async fn invoke(&self, target: &FunctionVersion, room: &str, chain: i64) -> Result<()> {
        self.invoker
            .invoke_event(target, &json!({ "gsl_room": room, "gsl_chain": chain }))
            .await
    }

    /// Starts a worker for every live room with players and no consumer on its inbox.
    async fn sweep(&self) -> std::result::Result<Value, (&'static str, Error)> {
        let failed = |e: Error| ("SweepFailed", e);
        let mut offset = 0;
        let mut rooms = 0;
        loop {
            let page = self
                .store
                .live_rooms_with_players(offset, 500, true)
                .await
                .map_err(failed)?;
            if page.is_empty() {
                break;
            }
            offset += page.len();
            for (record, players) in page {
                if !players.is_empty() {
                    self.launcher.launch(&record.id);
                    rooms += 1;
                }
            }
        }
        // Seats quick play reserved that nobody took (a Lambda lobby has no clock of
        // its own: the sweep's schedule is it).
        let expired = self.rooms.expire_reservations().await.map_err(failed)?;
        // And the match records past their retention, as a server's lobby does hourly.
        let forgotten = self
            .store
            .forget_matches(self.config.match_retention)
            .await
            .map_err(failed)?;
        let launched = self.launcher.settle().await;
        Ok(json!({
            "checked": rooms,
            "launched": launched,
            "seats_given_up": expired,
            "record_segments_forgotten": forgotten,
        }))
    }
}

/// Starts room workers as Lambda invocations: a room whose inbox has no consumer gets
/// one, on the version it is pinned to (new rooms: `GSL_WORKER_FUNCTION`). The
/// invocations are queued before the lobby's answer goes ([`LambdaLauncher::settle`]).
struct LambdaLauncher {
    store: Store,
    admin: Arc<RabbitAdmin>,
    invoker: Invoker,
    new_rooms: FunctionVersion,
    pending: Mutex<Vec<JoinHandle<bool>>>,
}

impl LambdaLauncher {
    /// Waits for the invocations launched so far; answers how many were sent.
    async fn settle(&self) -> usize {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        let mut sent = 0;
        for task in pending {
            if let Ok(true) = task.await {
                sent += 1;
            }
        }
        sent
    }
}

impl Launcher for LambdaLauncher {
    fn launch(&self, room: &str) {
        let (store, admin, invoker) =
            (self.store.clone(), self.admin.clone(), self.invoker.clone());
        let new_rooms = self.new_rooms.clone();
        let room = room.to_owned();
        let task = tokio::spawn(async move {
            match admin.inbox_state(&room).await {
                Ok(Some(state)) if state.consumers > 0 => return false,
                Ok(_) => {}
                Err(e) => tracing::warn!(room, "cannot see the inbox: {e}; launching anyway"),
            }
            let found = async {
                let target = store.code_version(&room).await?;
                Ok::<_, Error>((target, store.next_chain(&room).await?))
            };
            let (target, chain) = match found.await {
                Ok((_, None)) => return false, // the room is gone
                Ok((target, Some(chain))) => (
                    target.map_or(new_rooms, |pinned| FunctionVersion::parse(&pinned)),
                    chain,
                ),
                Err(e) => {
                    tracing::warn!(room, "cannot read the room's version: {e}");
                    return false;
                }
            };
            match invoker
                .invoke_event(&target, &json!({ "gsl_room": room, "gsl_chain": chain }))
                .await
            {
                Ok(()) => {
                    tracing::info!(room, %target, "worker invoked");
                    true
                }
                Err(e) => {
                    tracing::warn!(room, "cannot start the room's worker: {e}");
                    false
                }
            }
        });
        self.pending.lock().unwrap().push(task);
    }

    fn running(&self) -> Option<usize> {
        None
    }
}

/// Whether an invocation runs its room.
enum Claim {
    /// It does, as chain `0`.
    Run(i64),
    /// It does not; the invocation's answer.
    Done(Value),
}

/// Watches that `chain` is still the room's: a superseded worker stops (checkpointing
/// first) within a couple of seconds, so that the new chain's worker, standing by,
/// takes the room. Returns the watcher and the worker's shutdown signal.
fn watch_chain(
    store: Store,
    room: &str,
    chain: i64,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<bool>,
) {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let room = room.to_owned();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHAIN_CHECK).await;
            if let Ok(Some(current)) = store.chain(&room).await {
                if current != chain {
                    tracing::info!(room, chain, current, "superseded: stopping");
                    let _ = stop.send(true);
                    // Kept: a dropped sender would read as a stop signal too.
                    std::future::pending::<()>().await;
                }
            }
        }
    });
    (watcher, shutdown)
}
