//! [`LobbyClient`]: the lobby's REST API as typed calls, for a game's client, its bots
//! and its tests. It needs no server side: it builds without the `server` feature.
//!
//! ```no_run
//! # async fn demo() -> game_server_less_client::Result<()> {
//! use game_server_less_client::LobbyClient;
//!
//! let lobby = LobbyClient::new("http://127.0.0.1:8080")?;
//! let room = lobby.create_room(Some("ann's room")).await?;
//! let ticket = lobby.join(&room.id, "ann", None).await?;
//! // ticket.ws_url, ticket.login, ticket.token: connect a STOMP client and play.
//! let items = lobby.items(&ticket.token).await?;
//! let top: serde_json::Value = lobby.get("/leaderboard", None).await?; // a game's own route
//! lobby.leave(&room.id, &ticket.token).await?;
//! # let _ = (items, top); Ok(()) }
//! ```
//!
//! Errors come back as the [`Error`] variant that fits the status (404 [`Error::NotFound`],
//! 409 [`Error::Conflict`], 400 [`Error::Invalid`], 401 [`Error::Unauthorized`], 403
//! [`Error::Forbidden`], 429 and 503 [`Error::Limited`]) with the lobby's own message, or
//! as [`Error::Unreachable`] when no lobby answers.

use crate::proto::{Inventory, Matchmake, QueueView, RoomView, Ticket};
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A client of a lobby, or of several lobbies of one deployment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LobbyClient {
    http: reqwest::Client,
    /// Every lobby's URL, without a trailing `/`.
    bases: Arc<[String]>,
    /// The lobby that answered last: where the next call goes first.
    current: Arc<AtomicUsize>,
}

impl LobbyClient {
    /// A client of the lobby at `base` (`http://HOST:PORT`), with a 5 s timeout per call.
    /// `base` may name several lobbies, separated by commas: a call goes to the one that
    /// answered last, and to the next while a lobby cannot be reached.
    pub fn new(base: &str) -> Result<LobbyClient> {
        LobbyClient::with_timeout(base, Duration::from_secs(5))
    }

    /// A client whose calls give up after `timeout`.
    pub fn with_timeout(base: &str, timeout: Duration) -> Result<LobbyClient> {
        let mut bases = Vec::new();
        for base in base.split(',').map(|b| b.trim().trim_end_matches('/')) {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(Error::Url {
                    url: base.to_owned(),
                    why: "the lobby's URL starts with http:// or https:// (several lobbies: separated by commas)".into(),
                });
            }
            bases.push(base.to_owned());
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // A lobby that is down on a real network drops the SYN: the next one is
            // asked after this, not after the whole timeout.
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot make an HTTP client: {e}")))?;
        Ok(LobbyClient {
            http,
            bases: bases.into(),
            current: Arc::default(),
        })
    }

    /// The URL of the lobby that answered last (the first one before any call), without
    /// a trailing `/`.
    pub fn url(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed)]
    }

    /// Every lobby's URL, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.bases
    }

    /// `GET /rooms`: the live rooms, oldest first.
    pub async fn rooms(&self) -> Result<Vec<RoomView>> {
        self.get("/rooms", None).await
    }

    /// `POST /rooms`: creates a room (named `name`, or `room`). The answer holds its
    /// owner token, which ends it ([`LobbyClient::end_room`]).
    pub async fn create_room(&self, name: Option<&str>) -> Result<RoomView> {
        self.post("/rooms", None, &json!({ "name": name })).await
    }

    /// `POST /rooms/{id}/join` as `name`, with the name's player key if it has one. The
    /// first join with a name answers its key ([`Ticket::player_key`]): keep it.
    pub async fn join(&self, room: &str, name: &str, key: Option<&str>) -> Result<Ticket> {
        let path = format!("/rooms/{}/join", segment(room)?);
        self.post(&path, None, &json!({ "name": name, "key": key }))
            .await
    }

    /// `POST /matchmake`: quick play. A seat in an open room of `play.kind` whose
    /// metadata matches `play.filter` (or a new one), or in the private room of
    /// `play.code`; reserved until the ticket's first connection.
    pub async fn quick_play(&self, play: &Matchmake) -> Result<Ticket> {
        self.post("/matchmake", None, play).await
    }

    /// `POST /matchmake/queue`: waits in the matchmaking queue for a group of
    /// `play.kind` (its `min_players`) with `play.filter`, which a wait widens. Poll
    /// the answer's id with [`LobbyClient::poll_queue`].
    pub async fn enqueue(&self, play: &Matchmake) -> Result<QueueView> {
        self.post("/matchmake/queue", None, play).await
    }

    /// `GET /matchmake/queue/{id}?wait=SECS`: the ticket, once matched or after `wait`
    /// seconds (at most 8) of waiting. A ticket not polled for 30 s leaves the queue.
    pub async fn poll_queue(&self, id: &str, wait: u64) -> Result<QueueView> {
        let path = format!("/matchmake/queue/{}?wait={wait}", segment(id)?);
        let call = Call::new(reqwest::Method::GET, &path).timeout(Duration::from_secs(wait + 10));
        self.call(call).await
    }

    /// `DELETE /matchmake/queue/{id}`: leaves the queue.
    pub async fn cancel_queue(&self, id: &str) -> Result<()> {
        let path = format!("/matchmake/queue/{}", segment(id)?);
        let _: serde_json::Value = self.call(Call::new(reqwest::Method::DELETE, &path)).await?;
        Ok(())
    }

    /// `POST /rooms/{id}/leave` with the ticket's token.
    pub async fn leave(&self, room: &str, token: &str) -> Result<()> {
        let path = format!("/rooms/{}/leave", segment(room)?);
        let _: serde_json::Value = self.post(&path, Some(token), &json!({})).await?;
        Ok(())
    }

    /// `DELETE /rooms/{id}` with the room's owner token (or the operator secret).
    pub async fn end_room(&self, room: &str, owner_token: &str) -> Result<()> {
        let path = format!("/rooms/{}", segment(room)?);
        let call = Call::new(reqwest::Method::DELETE, &path).bearer(Some(owner_token));
        let _: serde_json::Value = self.call(call).await?;
        Ok(())
    }

    /// `GET /matches/{id}`: a recorded match, with a private room's player key (or a
    /// ticket's token) if it needs one.
    pub async fn match_record(&self, id: &str, bearer: Option<&str>) -> Result<serde_json::Value> {
        self.get(&format!("/matches/{}", segment(id)?), bearer)
            .await
    }

    /// `GET /user/items`: the persistent inventory of the player whose ticket token (or
    /// player key) this is.
    pub async fn items(&self, token: &str) -> Result<Inventory> {
        self.get("/user/items", Some(token)).await
    }

    /// `GET path`, with a Bearer token if given: any route, the game's own included.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, bearer: Option<&str>) -> Result<T> {
        self.call(Call::new(reqwest::Method::GET, path).bearer(bearer))
            .await
    }

    /// `POST path` with a JSON body, with a Bearer token if given.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> Result<T> {
        let body = serde_json::to_vec(body)
            .map_err(|e| Error::Invalid(format!("a body that is not JSON: {e}")))?;
        let mut call = Call::new(reqwest::Method::POST, path).bearer(bearer);
        call.body = Some(body);
        self.call(call).await
    }

    fn at(base: &str, path: &str) -> String {
        format!("{base}/{}", path.trim_start_matches('/'))
    }

    /// Makes `call` at the lobby that answered last, and at the next ones while a lobby
    /// cannot be reached. Only then: a lobby that could not be reached has had nothing
    /// of the call, while one that failed mid-call may have carried it out (a join),
    /// and the caller must decide.
    async fn call<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T> {
        let start = self.current.load(Ordering::Relaxed);
        let mut unreachable = None;
        for i in 0..self.bases.len() {
            let lobby = (start + i) % self.bases.len();
            let base = &self.bases[lobby];
            let mut request = self
                .http
                .request(call.method.clone(), LobbyClient::at(base, call.path));
            if let Some(token) = call.bearer {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &call.body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            if let Some(timeout) = call.timeout {
                request = request.timeout(timeout);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if e.is_connect() => {
                    unreachable.get_or_insert_with(|| LobbyClient::unreachable(base, e));
                    continue;
                }
                Err(e) => return Err(LobbyClient::unreachable(base, e)),
            };
            self.current.store(lobby, Ordering::Relaxed);
            return LobbyClient::answer(base, response).await;
        }
        Err(unreachable.expect("one lobby at least"))
    }

    async fn answer<T: DeserializeOwned>(base: &str, response: reqwest::Response) -> Result<T> {
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| LobbyClient::unreachable(base, e))?;
        if !(200..300).contains(&status) {
            return Err(status_error(status, &bytes));
        }
        // An empty answer (204) reads as JSON null, which `()` and `Value` accept.
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|e| {
            Error::Protocol(format!(
                "the lobby at {base} answered {status} with JSON this client does not understand: {e}"
            ))
        })
    }

    fn unreachable(base: &str, e: reqwest::Error) -> Error {
        Error::Unreachable {
            url: base.to_owned(),
            why: if e.is_timeout() {
                "no answer in time".into()
            } else if e.is_connect() {
                "nothing listens there".into()
            } else {
                e.to_string()
            },
        }
    }
}

/// One call, as [`LobbyClient::call`] makes it at one lobby or another.
struct Call<'a> {
    method: reqwest::Method,
    path: &'a str,
    bearer: Option<&'a str>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl<'a> Call<'a> {
    fn new(method: reqwest::Method, path: &'a str) -> Call<'a> {
        Call {
            method,
            path,
            bearer: None,
            body: None,
            timeout: None,
        }
    }

    fn bearer(self, bearer: Option<&'a str>) -> Call<'a> {
        Call { bearer, ..self }
    }

    fn timeout(self, timeout: Duration) -> Call<'a> {
        Call {
            timeout: Some(timeout),
            ..self
        }
    }
}

/// A room id as one path segment: no `/`, `?` or `#` that would call another route.
fn segment(id: &str) -> Result<&str> {
    if id.is_empty() || id.contains(['/', '?', '#', '%']) || id.chars().any(char::is_whitespace) {
        return Err(Error::Invalid(format!("{id:?} is not a room id")));
    }
    Ok(id)
}

/// The error for a lobby's non-2xx answer: its `{"error": …}` message under the variant
/// that fits the status.
fn status_error(status: u16, body: &[u8]) -> Error {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            format!("HTTP {status}: {}", text.trim())
        });
    match status {
        400 | 413 | 415 | 422 => Error::Invalid(message),
        401 => Error::Unauthorized(message),
        403 => Error::Forbidden(message),
        404 => Error::NotFound(message),
        409 => Error::Conflict(message),
        429 | 503 => Error::Limited(message),
        _ => Error::Lobby { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_the_fitting_error_with_the_lobbys_message() {
        let e = status_error(404, br#"{"error":"no room r1"}"#);
        assert!(
            matches!(&e, Error::NotFound(m) if m == "no room r1"),
            "{e:?}"
        );
        let e = status_error(409, br#"{"error":"name taken"}"#);
        assert!(matches!(e, Error::Conflict(_)));
        let e = status_error(502, b"<html>bad gateway</html>");
        assert!(
            matches!(&e, Error::Lobby { status: 502, message } if message.contains("bad gateway")),
            "{e:?}"
        );
        let huge = vec![b'x'; 10_000];
        assert!(status_error(500, &huge).to_string().len() < 300);
    }

    #[test]
    fn room_ids_cannot_reach_other_routes() {
        for bad in ["", "a/b", "../x", "r?x=1", "r#", "a b", "%2F"] {
            assert!(segment(bad).is_err(), "{bad:?}");
        }
        assert_eq!(segment("r-12").unwrap(), "r-12");
        assert!(LobbyClient::new("ftp://x").is_err());
        let c = LobbyClient::new("http://h:1/").unwrap();
        assert_eq!(LobbyClient::at(c.url(), "/rooms"), "http://h:1/rooms");
        let two = LobbyClient::new("http://h:1/, https://h:2").unwrap();
        assert_eq!(two.urls(), ["http://h:1", "https://h:2"]);
        assert!(LobbyClient::new("http://h:1,h:2").is_err());
    }
}
