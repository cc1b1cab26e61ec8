//! The crate-wide error type.

use crate::stomp::FrameError;

/// Everything that can go wrong in the framework.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that are not a valid STOMP frame.
    #[error("invalid STOMP frame: {0}")]
    Frame(#[from] FrameError),
    /// A socket or file failed.
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
    /// The store (database) failed.
    #[error("store error: {0}")]
    Store(String),
    /// What a request names does not exist (a room, a player in a room).
    #[error("{0}")]
    NotFound(String),
    /// A request that conflicts with what is there (a name already in a room).
    #[error("{0}")]
    Conflict(String),
    /// A request that is not well formed (a bad name).
    #[error("{0}")]
    Invalid(String),
    /// A request that needs credentials it did not bring (or brought expired or revoked).
    #[error("{0}")]
    Unauthorized(String),
    /// A request the caller may not make.
    #[error("{0}")]
    Forbidden(String),
    /// A request over a limit (too many, too often); it may succeed later.
    #[error("{0}")]
    Limited(String),
    /// A worker's checkpoint was refused because another worker saved a newer one: this
    /// worker was replaced and must stop.
    #[error("fenced: {0}")]
    Fenced(String),
    /// No lobby answered at this URL (nothing listens there, or not in time).
    #[error("cannot reach the lobby at {url}: {why}; is the game's server running there?")]
    Unreachable {
        /// The lobby's URL.
        url: String,
        /// What happened.
        why: String,
    },
    /// The lobby answered with an error status no other variant fits.
    #[error("the lobby answered {status}: {message}")]
    Lobby {
        /// The HTTP status.
        status: u16,
        /// The lobby's message.
        message: String,
    },
    /// A URL the framework cannot use.
    #[error("bad URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
