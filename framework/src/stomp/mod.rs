//! STOMP 1.2: the pure frame codec, transports over TCP and WebSocket, and a client.

mod client;
mod frame;
mod transport;

#[cfg(feature = "server")]
pub(crate) use client::parse_heartbeat;
pub use client::{AckMode, Client, ConnectOptions, Message, SubscribeOptions, Subscription};
#[cfg(feature = "server")]
pub(crate) use frame::encode_parts;
pub use frame::{
    encode_message_head, encode_message_tail, parse, Command, Frame, FrameError, Limits, Parsed,
};
#[cfg(feature = "server")]
pub(crate) use transport::{unexpected_encoded, write_loop, Outbound, WsIn, WsOut};
pub use transport::{Item, ItemSink, ItemStream, StompCodec, Transport};
