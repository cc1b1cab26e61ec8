//! The crate-wide error type.

/// Everything that can go wrong in the framework.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Speaking STOMP failed: a malformed frame, a closed connection, an ERROR frame
    /// from the broker, a timeout.
    #[error(transparent)]
    Stomp(#[from] stomp::Error),
    /// A file or socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A service the framework talks over HTTP (RabbitMQ's management API, AWS Lambda,
    /// the lobby) answered what the framework cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A service refused a request: RabbitMQ's management API, AWS Lambda, or the
    /// embedded broker refusing a message published in process.
    #[error("refused: {message}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    Refused {
        /// What it said.
        message: String,
        /// More of what it said, if anything.
        detail: String,
    },
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
