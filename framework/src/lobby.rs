//! The REST lobby on axum: the built-in room routes, and the game's own routes beside them.
//!
//! | route | does |
//! |---|---|
//! | `POST /rooms` | create a room (`{"name": …}` optional) |
//! | `GET /rooms` | list live rooms with their players |
//! | `GET /rooms/{id}` | one room |
//! | `POST /rooms/{id}/join` | join as `{"name": …}`; answers a [`Ticket`] |
//! | `POST /rooms/{id}/leave` | leave (the caller, by its ticket's token) |
//! | `DELETE /rooms/{id}` | end a room |
//! | `GET /health` | liveness and counts |

use crate::app::App;
use crate::ticket::Claims;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The lobby's routes: the game adds its own with [`Lobby::route`], the framework adds
/// the room routes when it serves them.
pub struct Lobby {
    router: Router<App>,
}

impl Default for Lobby {
    fn default() -> Lobby {
        Lobby::new()
    }
}

impl Lobby {
    /// A lobby with only the built-in routes.
    pub fn new() -> Lobby {
        Lobby {
            router: Router::new(),
        }
    }

    /// Adds a game route, with axum's own API: `.route("/user/items", get(user_items))`.
    /// Handlers reach the store and the world through `State<App>`, and the caller
    /// through the [`Caller`] extractor.
    ///
    /// # Panics
    ///
    /// When the path is taken (as axum's `Router::route` does), including by the
    /// built-in routes when the lobby is served.
    #[track_caller]
    pub fn route(mut self, path: &str, method_router: MethodRouter<App>) -> Lobby {
        self.router = self.router.route(path, method_router);
        self
    }

    /// The whole HTTP app: built-in routes, the game's routes, bound to `app`.
    pub fn into_router(self, app: App) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/rooms", post(create_room).get(list_rooms))
            .route("/rooms/{id}", get(get_room).delete(delete_room))
            .route("/rooms/{id}/join", post(join_room))
            .route("/rooms/{id}/leave", post(leave_room))
            .merge(self.router)
            .fallback(not_found)
            .with_state(app)
    }
}

/// An error answered as JSON: `{"error": "…"}` with a fitting status.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: nothing there.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        tracing::error!("lobby request failed: {e}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// The result of a lobby handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// The player calling, from the `Authorization: Bearer TOKEN` header, where TOKEN is the
/// token of a join [`Ticket`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The player (user) name.
    pub player: String,
    /// The room the token was issued for.
    pub room: String,
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Caller, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer TOKEN (the token from POST /rooms/{id}/join)",
            )
        })?;
        let Claims { room, player, .. } = app
            .signer()
            .verify(token)
            .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, why))?;
        Ok(Caller { player, room })
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    Some(value.strip_prefix("Bearer ").unwrap_or(value).trim())
}

/// Parses an optional JSON body; empty means the defaults.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &Bytes) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A name a person chose: 1 to 32 letters, digits, `-` or `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JoinRoom {
    name: Option<String>,
}

/// A room as the lobby shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    /// The room id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Players in it.
    pub players: Vec<String>,
    /// How many players are in it.
    pub players_online: usize,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
}

/// What joining a room answers: everything a client needs to play, with no destination
/// names to build itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    /// The room id.
    pub room: String,
    /// The player id (the name joined with).
    pub player: String,
    /// STOMP over WebSocket.
    pub ws_url: String,
    /// STOMP over TCP.
    pub tcp_url: String,
    /// The STOMP `login`.
    pub login: String,
    /// The STOMP `passcode`: a signed token that expires; also the lobby's Bearer token.
    pub token: String,
    /// When the token expires, seconds since the Unix epoch.
    pub expires: u64,
    /// Where to SEND inputs (JSON with `type` and the player's own `seq`).
    pub inbox: String,
    /// Where every player of the room hears the room (SUBSCRIBE).
    pub topic: String,
    /// Where this player alone hears the room (SUBSCRIBE): replies and errors.
    pub private: String,
}

async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "rooms": app.room_count(),
        "connections": app.broker().session_count(),
    }))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /rooms and the README's lobby API")
}

async fn create_room(
    State(app): State<App>,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<RoomView>)> {
    let req: CreateRoom = body(&raw)?;
    let name = req.name.unwrap_or_else(|| "room".into());
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "a room name has 1 to 64 printable characters",
        ));
    }
    let record = app.create_room(&name).await?;
    Ok((StatusCode::CREATED, Json(app.view(&record).await?)))
}

async fn list_rooms(State(app): State<App>) -> ApiResult<Json<Vec<RoomView>>> {
    let mut views = Vec::new();
    for record in app.store().live_rooms().await? {
        views.push(app.view(&record).await?);
    }
    Ok(Json(views))
}

async fn get_room(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<RoomView>> {
    let record = app.room(&id).await?;
    Ok(Json(app.view(&record).await?))
}

async fn join_room(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    raw: Bytes,
) -> ApiResult<Json<Ticket>> {
    let req: JoinRoom = body(&raw)?;
    let name = req
        .name
        .ok_or_else(|| ApiError::bad_request("say who joins: {\"name\": \"alice\"}"))?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "a player name has 1 to 32 letters, digits, '-' or '_'",
        ));
    }
    app.room(&id).await?;
    if app.store().players(&id).await?.contains(&name) {
        // Rejoining (after a crash, say) takes the ticket that player already holds.
        let claims = bearer(&headers).and_then(|t| app.signer().verify(t).ok());
        if !claims.is_some_and(|c| c.room == id && c.player == name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{name} is already in room {id}: pick another name, or rejoin with {name}'s token (Authorization: Bearer)"),
            ));
        }
    }
    Ok(Json(app.join(&id, &name).await?))
}

async fn leave_room(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    if caller.room != id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("your token is for room {}, not {id}", caller.room),
        ));
    }
    app.room(&id).await?;
    if app.leave(&id, &caller.player).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "{} is not in room {id}",
            caller.player
        )))
    }
}

async fn delete_room(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app.room(&id).await?;
    app.end_room(&id, "ended by the lobby").await?;
    Ok(StatusCode::NO_CONTENT)
}
