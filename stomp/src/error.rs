//! The crate's error type.

use crate::FrameError;

/// Everything that can go wrong speaking STOMP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that are not a valid STOMP frame.
    #[error("invalid STOMP frame: {0}")]
    Frame(#[from] FrameError),
    /// A socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket layer failed.
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// The peer answered with a STOMP ERROR frame.
    #[error("server error: {message}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    Server {
        /// The ERROR frame's `message` header.
        message: String,
        /// The ERROR frame's body.
        detail: String,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed (or the peer stopped heart-beating).
    #[error("connection closed: {0}")]
    Closed(String),
    /// An operation took longer than allowed.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A URL the client cannot use.
    #[error("bad URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A setting the client cannot use (a CA file that holds no certificate).
    #[error("{0}")]
    Config(String),
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
