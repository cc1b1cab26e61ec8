//! STOMP 1.2 for tokio, in three layers, each knowing only the one below:
//!
//! - [`parse`] and [`Frame::encode`]: the pure codec. No I/O; an incomplete frame is a
//!   value ([`Parsed::Incomplete`]), not a failure; every size has a [`Limits`] bound.
//! - [`Transport`]: the codec on TCP, TLS (`ssl://`, feature `tls`) and WebSocket, or as
//!   values over channels in one process ([`Transport::pair`]).
//! - [`Client`]: CONNECT, awaited receipts, a stream per subscription, heart-beats.
//!
//! A server needs a few more pieces, which a broker builds on: [`write_loop`] (a
//! connection's writer task), [`Outbound`], [`HeartBeat`], [`WsIn`] with
//! [`Transport::websocket`], and [`encode_message_head`]/[`encode_message_tail`] (a
//! MESSAGE encoded once for many subscribers, in wire form as a [`Wire`]).
//!
//! The codec, round trip:
//!
//! ```
//! use stomp::{parse, Command, Frame, Limits, Parsed};
//!
//! let frame = Frame::new(Command::Send)
//!     .with_header("destination", "/queue/hello")
//!     .with_body("hello, world");
//! let wire = frame.to_bytes();
//! match parse(&wire, &Limits::default()) {
//!     Ok(Parsed::Frame(back, len)) => {
//!         assert_eq!(len, wire.len());
//!         assert_eq!(back.header("destination"), Some("/queue/hello"));
//!         assert_eq!(&back.body[..], b"hello, world");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // Half a frame is not an error: more bytes are needed.
//! assert!(matches!(parse(&wire[..5], &Limits::default()), Ok(Parsed::Incomplete)));
//! ```
//!
//! A client, against any STOMP 1.2 broker:
//!
//! ```no_run
//! # async fn demo() -> stomp::Result<()> {
//! use stomp::{Client, ConnectOptions, SubscribeOptions};
//!
//! let client = Client::connect("tcp://127.0.0.1:61613", ConnectOptions::login("guest", "guest")).await?;
//! let mut inbox = client.subscribe("/queue/hello", SubscribeOptions::default()).await?;
//! client.send("/queue/hello", "hello, world").await?; // returns once the broker's RECEIPT is in
//! let message = inbox.recv().await.expect("a message");
//! assert_eq!(message.body(), b"hello, world");
//! client.disconnect().await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod frame;
mod transport;

pub use client::{
    AckMode, Client, ConnectOptions, HeartBeat, Message, SubscribeOptions, Subscription,
};
pub use error::{Error, Result};
pub use frame::{
    encode_message_head, encode_message_tail, encode_parts, encode_receipt, parse, Command, Frame,
    FrameError, Limits, Parsed, Wire,
};
pub use transport::{
    unexpected_encoded, write_loop, Item, ItemSink, ItemStream, Outbound, StompCodec, Transport,
    WsIn,
};
