//! Who is connected, told to the rooms. A room learns it from `$presence` messages in
//! its inbox, in line with the inputs (so a worker that takes over knows it from the
//! checkpoint and the inbox, as it knows everything else); this module puts them there:
//!
//! - the embedded broker tells its authorizer of every connection that comes and goes
//!   ([`crate::auth::PlayerEvent`]), and [`watch`] hands each to the room service;
//! - RabbitMQ's event exchange (`rabbitmq_event_exchange`) publishes
//!   `connection.created` (with the login `PLAYER@ROOM`) and `connection.closed` (with
//!   the connection's pid only) into the durable queue `gsl.presence`, which every
//!   cluster lobby subscribes to and one at a time consumes ([`watch_rabbitmq`]): it
//!   remembers each player connection's pid in the store (so whichever lobby consumes
//!   next can name the player of a close), then tells the room. An event told twice
//!   (a lobby died before its ack) is one: a room counts connections by their pid.
//!
//! [`watch`] also gives up, every second, the seats quick play reserved that no
//! connection took in time.

use crate::admin::BrokerAdmin;
use crate::auth::PlayerEvent;
use crate::rabbit::{ConnectionEvent, RabbitAdmin, PRESENCE_QUEUE};
use crate::rooms::Rooms;
use crate::stomp::{AckMode, Client, ConnectOptions, HeartBeat, SubscribeOptions};
use crate::worker::Control;
use crate::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

/// Hands what the embedded broker saw of players (`seen`) to the room service: seats
/// their tickets took, connections that came and went; and gives up, every second, the
/// reservations that waited too long. Runs until `shutdown`: the connections a
/// stopping server closes are not told (a restart drops every player anyway, see
/// [`Control::AllDropped`]).
pub async fn watch(
    rooms: Rooms,
    mut seen: Option<UnboundedReceiver<PlayerEvent>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = async {
            match &mut seen {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A `Ref` (not `Send`) must not outlive the branch.
            _ = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => return,
            event = next => match event {
                Some(event) => {
                    if let Err(e) = rooms.player_seen(event).await {
                        tracing::warn!("cannot tell a room of its player's connection: {e}");
                    }
                }
                None => seen = None,
            },
            _ = every.tick() => match rooms.expire_reservations().await {
                Ok(0) => {}
                Ok(n) => tracing::info!("gave up {n} reserved seats nobody took"),
                Err(e) => tracing::warn!("cannot give up expired seats: {e}"),
            },
        }
    }
}

/// Consumes RabbitMQ's connection events (see the module's docs) until `shutdown`,
/// connecting again after a second whenever the connection fails. Without the event
/// exchange plugin it says so once and stops: rooms then never hear of connections.
pub async fn watch_rabbitmq(
    rooms: Rooms,
    admin: Arc<RabbitAdmin>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match admin.declare_presence_queue().await {
            Ok(true) => break,
            Ok(false) => {
                tracing::warn!("RabbitMQ has no event exchange: enable the rabbitmq_event_exchange plugin, or rooms cannot tell who is connected (no drops, no reconnection grace)");
                return;
            }
            Err(e) => tracing::warn!("cannot declare the presence queue: {e}"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            result = consume(&rooms, &admin) => {
                if let Err(e) = result {
                    tracing::warn!("presence: RabbitMQ's connection events stopped ({e}); again in a second");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One subscription to [`PRESENCE_QUEUE`]: each event handled, then acked.
async fn consume(rooms: &Rooms, admin: &RabbitAdmin) -> Result<()> {
    let config = admin.config();
    let endpoints = admin.endpoints();
    let options = ConnectOptions {
        host: endpoints.vhost.clone(),
        // A node that dies without closing the socket is noticed, and another one used.
        heartbeat: HeartBeat::every(Duration::from_secs(5)),
        ..ConnectOptions::login(config.user.clone(), config.password.clone())
    };
    let client = Client::connect_first(&endpoints.worker_urls, options).await?;
    let subscribe = SubscribeOptions {
        prefetch: Some(256),
        ..SubscribeOptions::ack(AckMode::ClientIndividual)
    };
    let mut events = client
        .subscribe(&format!("/amq/queue/{PRESENCE_QUEUE}"), subscribe)
        .await?;
    while let Some(message) = events.recv().await {
        if let Some(event) = ConnectionEvent::parse(|h| message.header(h)) {
            tell_room(rooms, event).await?;
        }
        client.ack(&message)?;
    }
    Err(crate::Error::Protocol(
        "RabbitMQ closed the presence subscription".into(),
    ))
}

/// Remembers or forgets the connection's player, and tells its room.
async fn tell_room(rooms: &Rooms, event: ConnectionEvent) -> Result<()> {
    let store = rooms.store();
    let (pid, room, player, connected) = match event {
        ConnectionEvent::Opened { pid, room, player } => {
            store.remember_connection(&pid, &room, &player).await?;
            (pid, room, player, true)
        }
        ConnectionEvent::Closed { pid } => match store.connection(&pid).await? {
            Some((room, player)) => (pid, room, player, false),
            None => return Ok(()), // not a player's, or told before
        },
    };
    let control = Control::Presence {
        player,
        connection: pid.clone(),
        connected,
    };
    match rooms
        .admin()
        .publish_control(&room, control.to_json())
        .await
    {
        Ok(()) => {}
        // The room ended: nobody to tell.
        Err(e) if rooms.store().room(&room).await?.is_none() => {
            tracing::debug!(%room, "presence for a room that ended: {e}");
        }
        Err(e) => return Err(e),
    }
    if !connected {
        store.forget_connection(&pid).await?;
    }
    Ok(())
}
