//! The room worker, "the lambda": the only consumer of its room's inbox. It applies
//! inputs in order, publishes what they produce, checkpoints, and only then acks.
//!
//! Exactly once: inputs are acked (cumulatively) only after a checkpoint that includes
//! them. If the worker dies, the broker redelivers every unacked input to its
//! replacement, which starts from that checkpoint; inputs the checkpoint already holds
//! are skipped by their player's sequence number, the rest are applied again. Outputs
//! that are published twice carry the same room `seq`, so clients can drop repeats.

use crate::app::{App, LOBBY_USER, WORKER_USER};
use crate::msg::Msg;
use crate::room::{Grant, Output, Room, Target};
use crate::stomp::{AckMode, Client, Command, ConnectOptions, Frame, Message, SubscribeOptions};
use crate::store::Checkpoint;
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Inputs in flight to a worker before it must ack; bounds what a crash replays.
const PREFETCH: u32 = 1024;

#[derive(Deserialize)]
struct InputHeader {
    seq: Option<u64>,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Control {
    #[serde(rename = "$join")]
    Join { player: String },
    #[serde(rename = "$leave")]
    Leave { player: String },
    #[serde(rename = "$end")]
    End { reason: String },
}

/// Runs a room's worker until the room ends or the server shuts down, restarting it from
/// the last checkpoint whenever it fails.
pub(crate) async fn supervise<S>(app: App, room_id: String, msg: Msg<S>)
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let mut failures = 0u32;
    loop {
        match run(&app, &room_id, msg.clone()).await {
            Ok(()) => return,
            Err(e) if app.is_shutting_down() => {
                tracing::debug!(room = %room_id, "worker stopped during shutdown: {e}");
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

/// One life of a room worker.
pub(crate) async fn run<S>(app: &App, room_id: &str, msg: Msg<S>) -> Result<()>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let store = app.store().clone();
    let mut room = Room::new(room_id, msg);
    if let Some(cp) = store.checkpoint(room_id).await? {
        let state: S = serde_json::from_str(&cp.state).map_err(|e| {
            Error::Store(format!(
                "checkpoint of room {room_id} does not fit the game state: {e}"
            ))
        })?;
        room.restore(state, cp.seq, cp.applied, cp.players);
        tracing::debug!(room = %room_id, seq = cp.seq, "resumed from checkpoint");
    }
    let (inbox, topic) = app.destinations(room_id);
    // One consumer at a time: a worker that just failed may still hold the inbox until
    // the broker has seen its connection go and requeued its unacked inputs.
    let waiting = std::time::Instant::now();
    while app.broker().consumer_count(&inbox) > 0 {
        if waiting.elapsed() > Duration::from_secs(30) {
            return Err(Error::Protocol(format!(
                "{inbox} still has a consumer after 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (login, passcode) = app.worker_credentials();
    let client = Client::connect(
        &app.worker_broker_url(),
        ConnectOptions::login(login, passcode),
    )
    .await?;
    let mut sub = client
        .subscribe(
            &inbox,
            SubscribeOptions {
                ack: AckMode::Client,
                prefetch: Some(PREFETCH),
                headers: Vec::new(),
            },
        )
        .await?;

    let tick_every = room.tick_interval();
    let mut tick = tokio::time::interval(tick_every.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint = tokio::time::interval(app.config().checkpoint_every);
    let mut shutdown = app.shutdown_signal();
    let mut unacked: Option<Message> = None;
    let mut unsaved = 0u32;
    let mut last_input = Instant::now();
    let publisher = Publisher {
        client: &client,
        app,
        room_id,
        topic: &topic,
    };

    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => {
                save(&store, checkpoint_of(&mut room)?, &client, &mut unacked).await?;
                let _ = client.disconnect().await;
                return Ok(());
            }
            message = sub.recv() => {
                let Some(message) = message else {
                    return Err(Error::Closed(client.closed().unwrap_or_else(|| "inbox subscription ended".into())));
                };
                if message.header("user-id") != Some(WORKER_USER) {
                    last_input = Instant::now(); // ticks do not keep a room alive
                }
                let outputs = apply(&mut room, &message);
                publisher.publish(outputs)?;
                unacked = Some(message);
                unsaved += 1;
                // A busy room checkpoints early rather than stall on its prefetch.
                if unsaved >= PREFETCH / 2 {
                    save(&store, checkpoint_of(&mut room)?, &client, &mut unacked).await?;
                    unsaved = 0;
                }
            }
            _ = tick.tick(), if tick_every.is_some() => {
                // Ticks go through the inbox like inputs, so a replay after a crash
                // interleaves them with inputs exactly as the first time.
                client.send_nowait(&inbox, TICK)?;
            }
            _ = checkpoint.tick() => {
                if unsaved > 0 {
                    save(&store, checkpoint_of(&mut room)?, &client, &mut unacked).await?;
                    unsaved = 0;
                }
                if last_input.elapsed() >= app.config().idle_timeout {
                    let outputs = room.end("idle");
                    publisher.publish(outputs)?;
                }
            }
        }
        if let Some(reason) = room.ended() {
            let reason = reason.to_owned();
            // Grants made before the end are kept; then every input is acked.
            save(&store, checkpoint_of(&mut room)?, &client, &mut unacked).await?;
            // Its receipt says the broker has processed every frame before it: the
            // outputs are published before the room goes.
            sub.unsubscribe().await?;
            app.room_ended(room_id, &reason).await?;
            let _ = client.disconnect().await;
            tracing::info!(room = %room_id, "room ended: {reason}");
            return Ok(());
        }
    }
}

/// The tick a worker puts in its own inbox.
const TICK: &str = r#"{"type":"$tick"}"#;

/// Applies one inbox message: a tick, a lobby control, or a player's input.
fn apply<S: 'static>(room: &mut Room<S>, message: &Message) -> Vec<Output> {
    let user = message.header("user-id").unwrap_or_default();
    if user == WORKER_USER {
        return if message.body() == TICK.as_bytes() {
            room.tick()
        } else {
            Vec::new()
        };
    }
    if user == LOBBY_USER {
        return match serde_json::from_slice::<Control>(message.body()) {
            Ok(Control::Join { player }) => room.join(&player),
            Ok(Control::Leave { player }) => room.leave(&player),
            Ok(Control::End { reason }) => room.end(&reason),
            Err(e) => {
                tracing::error!(room = %room.id(), "bad lobby control message: {e}");
                Vec::new()
            }
        };
    }
    if user.is_empty() || user.starts_with('$') {
        tracing::warn!(room = %room.id(), "dropped an input with no player (user-id {user:?})");
        return Vec::new();
    }
    let seq = serde_json::from_slice::<InputHeader>(message.body())
        .ok()
        .and_then(|h| h.seq);
    room.apply(user, seq, message.body()).outputs
}

async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What a checkpoint of `room` holds, with the grants made since the last.
fn checkpoint_of<S: Serialize + 'static>(
    room: &mut Room<S>,
) -> Result<(String, Checkpoint, Vec<Grant>)> {
    let checkpoint = Checkpoint {
        seq: room.seq(),
        state: serde_json::to_string(room.state())
            .map_err(|e| Error::Store(format!("the game state cannot be saved as JSON: {e}")))?,
        applied: room.applied().map(|(p, s)| (p.to_owned(), s)).collect(),
        players: room.players().map(str::to_owned).collect(),
    };
    Ok((room.id().to_owned(), checkpoint, room.take_grants()))
}

/// Saves a checkpoint, then acks every input it holds. The outputs of those inputs must
/// reach the broker first: a checkpoint that holds an input whose outputs were lost would
/// make its replay a skipped duplicate, and the outputs would never be sent.
async fn save(
    store: &crate::store::Store,
    (room, checkpoint, grants): (String, Checkpoint, Vec<Grant>),
    client: &Client,
    unacked: &mut Option<Message>,
) -> Result<()> {
    client.flush().await?;
    store.save_checkpoint(&room, &checkpoint, &grants).await?;
    if let Some(m) = unacked.take() {
        client.ack(&m)?;
    }
    Ok(())
}

struct Publisher<'a> {
    client: &'a Client,
    app: &'a App,
    room_id: &'a str,
    topic: &'a str,
}

impl Publisher<'_> {
    fn publish(&self, outputs: Vec<Output>) -> Result<()> {
        for output in outputs {
            let destination = match &output.to {
                Target::Room => self.topic.to_owned(),
                Target::Player(p) => self.app.private_destination(self.room_id, p),
            };
            let frame = Frame::new(Command::Send)
                .with_header("destination", destination)
                .with_header("content-type", "application/json")
                .with_body(serde_json::to_vec(&output.body).expect("JSON values serialize"));
            self.client.post(frame)?;
        }
        Ok(())
    }
}
