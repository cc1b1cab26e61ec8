//! The floor: the benchmark's room logic as a plain WebSocket server with no framework,
//! no broker and no store. A move updates the player's position and is broadcast to the
//! room, as in the game. What the game server costs beyond this is the framework's.
//!
//! Protocol: connect to `ws://HOST/ws?room=ROOM&player=NAME`; send
//! `{"type":"move","seq":N,"dx":1,"dy":0}`; everyone in the room receives
//! `{"type":"moved","player":NAME,"x":..,"y":..,"seq":ROOM_SEQ,"input_seq":N,"input_from":NAME}`.

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The floor's map: open floor inside walls, as wide as the game's.
const SIZE: i32 = 40;

#[derive(Default)]
struct Room {
    seq: u64,
    players: HashMap<String, Player>,
}

struct Player {
    x: i32,
    y: i32,
    tx: mpsc::UnboundedSender<Utf8Bytes>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

#[derive(Deserialize)]
struct Move {
    seq: u64,
    dx: i32,
    dy: i32,
}

/// Serves the floor on `listener` until the process ends. `read_buffer`: the WebSocket
/// read buffer's size, which tungstenite zeroes before every read (its default, 128 KiB,
/// when `None`).
pub(crate) async fn serve(
    listener: TcpListener,
    read_buffer: Option<usize>,
) -> std::io::Result<()> {
    let rooms = Rooms::default();
    let mut config = WebSocketConfig::default();
    if let Some(bytes) = read_buffer {
        config = config.read_buffer_size(bytes);
    }
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(connection(stream, rooms.clone(), config));
    }
}

fn query(uri: &str, key: &str) -> Option<String> {
    let (_, q) = uri.split_once('?')?;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

// The handshake callback's error type is tungstenite's, large or not.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, rooms: Rooms, config: WebSocketConfig) {
    let mut who = None;
    let callback = |req: &Request, resp: Response| {
        let uri = req.uri().to_string();
        who = query(&uri, "room").zip(query(&uri, "player"));
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    let (Ok(ws), Some((room_id, name))) = (ws, who) else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    {
        let mut rooms = rooms.lock().unwrap();
        let room = rooms.entry(room_id.clone()).or_default();
        let spot = room.players.len() as i32;
        room.players.insert(
            name.clone(),
            Player {
                x: 1 + spot % (SIZE - 2),
                y: 1 + spot / (SIZE - 2),
                tx,
            },
        );
    }
    // Writes what is queued, flushing once the queue is empty: one syscall for a batch.
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.feed(Message::Text(text)).await.is_err() {
                return;
            }
            while let Ok(text) = rx.try_recv() {
                if sink.feed(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(m) = serde_json::from_str::<Move>(&text) else {
            continue;
        };
        let mut rooms = rooms.lock().unwrap();
        let Some(room) = rooms.get_mut(&room_id) else {
            break;
        };
        let Some(me) = room.players.get_mut(&name) else {
            break;
        };
        let (x, y) = (me.x + m.dx.clamp(-1, 1), me.y + m.dy.clamp(-1, 1));
        if (1..SIZE - 1).contains(&x) && (1..SIZE - 1).contains(&y) {
            (me.x, me.y) = (x, y);
        }
        let (x, y) = (me.x, me.y);
        room.seq += 1;
        let out: Utf8Bytes = serde_json::json!({
            "type": "moved", "player": name, "x": x, "y": y,
            "seq": room.seq, "input_seq": m.seq, "input_from": name,
        })
        .to_string()
        .into();
        for p in room.players.values() {
            let _ = p.tx.send(out.clone());
        }
    }
    if let Some(room) = rooms.lock().unwrap().get_mut(&room_id) {
        room.players.remove(&name);
    }
    writer.abort();
}
