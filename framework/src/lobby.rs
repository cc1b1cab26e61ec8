//! The REST lobby on axum: the built-in room routes, and the game's own routes beside them.
//!
//! | route | does |
//! |---|---|
//! | `POST /rooms` | create a room (`{"name": …}` optional); answers its `owner_token` |
//! | `GET /rooms?offset=0&limit=100` | live rooms (player names for members and the operator) |
//! | `GET /rooms/{id}` | one room |
//! | `POST /rooms/{id}/join` | join as `{"name": …, "key": …}`; answers a [`Ticket`] |
//! | `POST /rooms/{id}/leave` | leave (the caller, by its ticket's token) |
//! | `DELETE /rooms/{id}/players/{name}` | kick a player (owner token or operator secret) |
//! | `DELETE /rooms/{id}` | end a room (owner token or operator secret) |
//! | `GET /matches?limit=50&since=…&kind=…&ended=true` | recorded matches, the latest first |
//! | `GET /matches/{id}` | one match's record: its first state, entries and keyframes |
//! | `GET /health` | liveness and counts |
//! | `GET /metrics` | Prometheus metrics |
//! | `GET /openapi.json` | this API, described |
//! | `GET /inspect`, `/admin/…` | the operator's inspector ([`crate::inspect`]) |

use crate::auth::RabbitAuth;
use crate::http::{bearer, ErrorBody, Page};
pub use crate::http::{ApiError, ApiResult};
use crate::inspect;
pub use crate::proto::{valid_name, QueueView, RoomView, Ticket};
use crate::rooms::{QuickPlay, RoomSpec, Rooms, Viewer};
use crate::store::{MatchQuery, MatchSummary, MatchViewer};
use crate::token::key_name;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The lobby's routes: the game adds its own with [`Lobby::route`], the framework adds
/// the room routes when it serves them.
pub struct Lobby {
    router: Router<Rooms>,
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
    /// Handlers reach the room service and the store through `State<Rooms>`, and the
    /// caller through the [`Caller`] extractor.
    ///
    /// # Panics
    ///
    /// When the path is taken (as axum's `Router::route` does), including by the
    /// built-in routes when the lobby is served.
    #[track_caller]
    pub fn route(mut self, path: &str, method_router: MethodRouter<Rooms>) -> Lobby {
        self.router = self.router.route(path, method_router);
        self
    }

    /// The whole HTTP app: built-in routes and the game's routes, over `rooms`.
    pub fn into_router(self, rooms: Rooms) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi))
            .route("/rooms", post(create_room).get(list_rooms))
            .route("/rooms/{id}", get(get_room).delete(delete_room))
            .route("/rooms/{id}/join", post(join_room))
            .route("/rooms/{id}/leave", post(leave_room))
            .route("/rooms/{id}/spectate", post(spectate))
            .route("/matches", get(list_matches))
            .route("/matches/{id}", get(get_match))
            .route("/matchmake", post(matchmake))
            .route("/matchmake/queue", post(enqueue))
            .route(
                "/matchmake/queue/{id}",
                get(poll_queue).delete(cancel_queued),
            )
            .route(
                "/rooms/{id}/players/{name}",
                axum::routing::delete(kick_player),
            )
            .merge(crate::inspect::routes())
            .merge(self.router)
            .fallback(not_found)
            .with_state(rooms)
    }
}

/// The player calling, from the `Authorization: Bearer …` header: the token of a current
/// join [`Ticket`], or the player's key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The player (user) name.
    pub player: String,
    /// The room of the join token, if the caller showed one (not with a player key).
    pub room: Option<String>,
}

impl FromRequestParts<Rooms> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, rooms: &Rooms) -> Result<Caller, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer TOKEN (the token from POST /rooms/{id}/join, or your player key)",
            )
        })?;
        if key_name(token).is_some() {
            let player = rooms.key_owner(token).await?;
            return Ok(Caller { player, room: None });
        }
        let claims = rooms.member(token).await?;
        Ok(Caller {
            player: claims.player,
            room: Some(claims.room),
        })
    }
}

/// Who is asking, for what the lobby shows: a current member of a room, the operator, or
/// anyone.
async fn viewer(rooms: &Rooms, headers: &axum::http::HeaderMap) -> Viewer {
    let token = bearer(headers);
    Viewer {
        operator: rooms.is_operator(token),
        member: match token {
            Some(t) if !rooms.is_operator(Some(t)) => rooms.member(t).await.ok(),
            _ => None,
        },
    }
}

/// Parses an optional JSON body; empty (or `null`) means the defaults.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &Bytes) -> ApiResult<T> {
    // One rule for every optional lobby body, as its OpenAPI description says (an
    // optional, nullable object): nothing or `null` is no body; anything else must be a
    // JSON object, so `[null]` and `7` are refused.
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    json_body(bytes)
}

/// Parses a JSON body that must be an object, as every lobby body is (serde reads a
/// struct from an array too, `[null]`): for a game's own routes as for the lobby's.
pub fn json_body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> ApiResult<T> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected an object, like {\"name\": \"...\"}",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `POST /rooms`: the room's name (any 1 to 64 characters but control characters, not
/// only spaces); `room` if left out.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        max_length = 64
    )]
    name: Option<String>,
    /// The room's kind [default: the server's first].
    kind: Option<String>,
    /// What the game says of the room, which quick play filters on: a JSON object.
    #[schema(value_type = Option<Object>)]
    meta: Option<serde_json::Value>,
    /// A private room: joined by the code the answer carries, never by quick play.
    #[serde(default)]
    private: bool,
}

/// `POST /rooms/{id}/join`: who joins, and the name's key if it has one.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct JoinRoom {
    /// 1 to 32 letters, digits, `-` or `_`.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z0-9_-]{1,32}$")]
    name: Option<String>,
    /// The name's player key, from its first join; or, on that first join, one the
    /// client made (`k1.NAME.` and 32 lowercase hex digits), which then claims the name.
    key: Option<String>,
}

/// `POST /matchmake`: quick play into a room of a kind whose metadata matches the
/// filter (made if none fits), or into the private room of a code.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Matchmake {
    /// Who plays: 1 to 32 letters, digits, `-` or `_`.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z0-9_-]{1,32}$")]
    name: Option<String>,
    /// The name's player key, from its first join; or, on that first join, one the
    /// client made (`k1.NAME.` and 32 lowercase hex digits), which then claims the name.
    key: Option<String>,
    /// The kind of room [default: the server's first].
    kind: Option<String>,
    /// Metadata the room must have, each key equal (a JSON object); a room made for
    /// the player gets it.
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// A private room's code: that room and no other.
    code: Option<String>,
}

/// `POST /matchmake/queue`: wait for a group of a kind whose filters match.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct JoinQueue {
    /// Who plays: 1 to 32 letters, digits, `-` or `_`.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z0-9_-]{1,32}$")]
    name: Option<String>,
    /// The name's player key, from its first join; or, on that first join, one the
    /// client made (`k1.NAME.` and 32 lowercase hex digits), which then claims the name.
    key: Option<String>,
    /// The kind of room [default: the server's first].
    kind: Option<String>,
    /// Metadata the group's room will have, each key equal (a JSON object); a wait
    /// widens it.
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
}

#[utoipa::path(get, path = "/health", tag = "lobby",
    responses((status = 200, description = "Liveness and counts"), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn health(State(rooms): State<Rooms>) -> Json<serde_json::Value> {
    // Counts this process can give: rooms with a worker here, connections to a broker
    // in this process. A cluster lobby has neither, and leaves them out.
    let mut health = json!({ "status": "ok" });
    if let Some(n) = rooms.running() {
        health["rooms"] = n.into();
    }
    if let Some(n) = rooms.admin().connections() {
        health["connections"] = n.into();
    }
    Json(health)
}

/// A route's path parameters, answering a JSON error, as every lobby error is, when they
/// do not read (a malformed percent-encoding, say).
struct PathOf<T>(T);

impl<S, T> FromRequestParts<S> for PathOf<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(params)) => Ok(PathOf(params)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid path: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// `GET /metrics`: Prometheus's text format.
#[utoipa::path(get, path = "/metrics", tag = "lobby",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn metrics(State(rooms): State<Rooms>) -> ApiResult<Response> {
    use crate::metrics::{CONNECTIONS, PLAYERS, QUEUED, ROOMS};
    let gauge = |n: Option<usize>| n.map_or(0, |n| n as i64);
    CONNECTIONS.set(gauge(rooms.admin().connections()));
    QUEUED.set(gauge(rooms.admin().queued()));
    ROOMS.set(gauge(rooms.running()));
    PLAYERS.set(rooms.store().player_count().await? as i64);
    if let Some(stats) = rooms.admin().stats() {
        crate::metrics::record_broker(&stats);
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(),
    )
        .into_response())
}

/// The lobby's OpenAPI description (its built-in routes; a game's own are its to add).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "game-server-less lobby", description = "Rooms, join tickets and players of a realtime game server. Errors are {\"error\": \"…\"}."),
    paths(health, metrics, create_room, list_rooms, get_room, join_room, spectate, matchmake, enqueue, poll_queue, cancel_queued, leave_room, kick_player, delete_room, list_matches, get_match,
        inspect::admin_rooms, inspect::admin_room, inspect::admin_watch, inspect::admin_lock, inspect::admin_kick, inspect::admin_end, inspect::admin_send),
    components(schemas(RoomView, Ticket, QueueView, CreateRoom, JoinRoom, Matchmake, JoinQueue, ErrorBody, MatchSummary, MatchRecord, MatchSegment)),
    modifiers(&BearerTokens),
)]
pub struct LobbyApi;

struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("ticket", bearer("The token of a join ticket"));
        components.add_security_scheme(
            "owner",
            bearer("A room's owner token, or the operator secret"),
        );
        components.add_security_scheme(
            "operator",
            bearer("The operator secret (--operator-secret)"),
        );
    }
}

/// `GET /openapi.json`.
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<LobbyApi as utoipa::OpenApi>::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /rooms and the README's lobby API")
}

#[utoipa::path(post, path = "/rooms", tag = "rooms", request_body(content = Option<CreateRoom>),
    responses((status = 201, description = "The room, with its owner token", body = RoomView),
        (status = 404, description = "No room kind has the name", body = ErrorBody),
        (status = 429, description = "Too many rooms", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn create_room(
    State(rooms): State<Rooms>,
    extensions: axum::http::Extensions,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<RoomView>)> {
    let req: CreateRoom = body(&raw)?;
    let client = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let spec = RoomSpec {
        name: req.name.unwrap_or_else(|| "room".into()),
        kind: req.kind,
        meta: req.meta.unwrap_or_default(),
        private: req.private,
    };
    let room = rooms.create(&spec, client).await?;
    Ok((StatusCode::CREATED, Json(room)))
}

#[utoipa::path(get, path = "/rooms", tag = "rooms", params(Page),
    responses((status = 200, description = "Live rooms, oldest first", body = Vec<RoomView>), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn list_rooms(
    State(rooms): State<Rooms>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> ApiResult<Json<Vec<RoomView>>> {
    page.check()?;
    let viewer = viewer(&rooms, &headers).await;
    Ok(Json(rooms.list(&viewer, page.offset, page.limit).await?))
}

#[utoipa::path(get, path = "/rooms/{id}", tag = "rooms", params(("id" = String, Path, description = "The room id")),
    responses((status = 200, description = "The room", body = RoomView),
        (status = 404, description = "No such live room", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn get_room(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Json<RoomView>> {
    let viewer = viewer(&rooms, &headers).await;
    Ok(Json(rooms.get(&id, &viewer).await?))
}

#[utoipa::path(post, path = "/rooms/{id}/join", tag = "rooms", params(("id" = String, Path, description = "The room id")),
    request_body = JoinRoom,
    responses((status = 200, description = "A ticket", body = Ticket),
        (status = 403, description = "The name is someone else's", body = ErrorBody),
        (status = 404, description = "No such live room", body = ErrorBody),
        (status = 409, description = "The room is locked: it takes no one now", body = ErrorBody),
        (status = 429, description = "The room is full", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn join_room(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
    headers: axum::http::HeaderMap,
    raw: Bytes,
) -> ApiResult<Json<Ticket>> {
    let req: JoinRoom = body(&raw)?;
    let name = req
        .name
        .ok_or_else(|| ApiError::bad_request("say who joins: {\"name\": \"alice\"}"))?;
    let key = name_key(req.key.as_deref(), &headers);
    Ok(Json(rooms.join(&id, &name, key).await?))
}

/// The name's player key: in the body (`in_body`), or as the bearer.
fn name_key<'a>(in_body: Option<&'a str>, headers: &'a axum::http::HeaderMap) -> Option<&'a str> {
    in_body.or(bearer(headers).filter(|b| key_name(b).is_some()))
}

#[utoipa::path(post, path = "/rooms/{id}/spectate", tag = "rooms", params(("id" = String, Path, description = "The room id")),
    responses((status = 200, description = "A spectator's ticket: it reads the topic and its own destination, and sends nothing", body = Ticket),
        (status = 404, description = "No such live room", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn spectate(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
) -> ApiResult<Json<Ticket>> {
    Ok(Json(rooms.spectate(&id).await?))
}

#[utoipa::path(post, path = "/matchmake", tag = "rooms", request_body = Matchmake,
    responses((status = 200, description = "A ticket to a seat reserved until its first connection", body = Ticket),
        (status = 403, description = "The name is someone else's", body = ErrorBody),
        (status = 404, description = "No live room has the code, or no room kind has the name", body = ErrorBody),
        (status = 409, description = "The room of the code is locked", body = ErrorBody),
        (status = 429, description = "The room of the code is full, or the server has its most rooms", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn matchmake(
    State(rooms): State<Rooms>,
    headers: axum::http::HeaderMap,
    raw: Bytes,
) -> ApiResult<Json<Ticket>> {
    let play = quick_play_of(&raw, &headers)?;
    Ok(Json(rooms.quick_play(&play).await?))
}

/// The quick play (or queue ticket) a `Matchmake` body asks for.
fn quick_play_of(raw: &Bytes, headers: &axum::http::HeaderMap) -> ApiResult<QuickPlay> {
    let req: Matchmake = body(raw)?;
    let name = req
        .name
        .ok_or_else(|| ApiError::bad_request("say who plays: {\"name\": \"alice\"}"))?;
    let key = name_key(req.key.as_deref(), headers).map(str::to_owned);
    Ok(QuickPlay {
        name,
        key,
        kind: req.kind,
        filter: req.filter.unwrap_or_default(),
        code: req.code,
    })
}

#[utoipa::path(post, path = "/matchmake/queue", tag = "rooms", request_body = JoinQueue,
    responses((status = 201, description = "Waiting in the queue (or matched at once): poll its id", body = QueueView),
        (status = 403, description = "The name is someone else's", body = ErrorBody),
        (status = 404, description = "No room kind has the name", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn enqueue(
    State(rooms): State<Rooms>,
    headers: axum::http::HeaderMap,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<QueueView>)> {
    let req: JoinQueue = body(&raw)?;
    let play = QuickPlay {
        name: req
            .name
            .ok_or_else(|| ApiError::bad_request("say who plays: {\"name\": \"alice\"}"))?,
        key: name_key(req.key.as_deref(), &headers).map(str::to_owned),
        kind: req.kind,
        filter: req.filter.unwrap_or_default(),
        code: None,
    };
    Ok((StatusCode::CREATED, Json(rooms.enqueue(&play).await?)))
}

#[utoipa::path(get, path = "/matchmake/queue/{id}", tag = "rooms", params(("id" = String, Path, description = "The queue ticket's id"), Wait),
    responses((status = 200, description = "Matched (with the room's ticket), or still waiting after `wait` seconds", body = QueueView),
        (status = 404, description = "No such ticket: cancelled, dropped, or never there", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn poll_queue(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
    axum::extract::Query(wait): axum::extract::Query<Wait>,
) -> ApiResult<Json<QueueView>> {
    if wait.wait > MAX_WAIT {
        return Err(ApiError::bad_request(format!(
            "wait is 0 to {MAX_WAIT} seconds"
        )));
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(wait.wait);
    loop {
        let view = rooms.poll_queue(&id).await?;
        if view.status != "waiting" || tokio::time::Instant::now() >= until {
            return Ok(Json(view));
        }
        tokio::time::sleep(QUEUE_POLL).await;
    }
}

#[utoipa::path(delete, path = "/matchmake/queue/{id}", tag = "rooms", params(("id" = String, Path, description = "The queue ticket's id")),
    responses((status = 204, description = "Out of the queue"),
        (status = 404, description = "No such ticket", body = ErrorBody),
        (status = 409, description = "Matched already: poll it for the room's ticket", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn cancel_queued(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
) -> ApiResult<StatusCode> {
    rooms.cancel_queued(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The longest a queue poll waits, in seconds: under the lobby's request timeout (10 s,
/// `HttpLimits::request_timeout`).
const MAX_WAIT: u64 = 8;
/// How often a waiting poll looks again.
const QUEUE_POLL: Duration = Duration::from_millis(200);

/// `GET /matches`' query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MatchesQuery {
    /// Matches to answer at most, the latest first: 1 to 1000 (50 if left out).
    #[serde(default = "MatchesQuery::default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: u32,
    /// Only rooms created at or after this time, seconds since the Unix epoch.
    since: Option<i64>,
    /// Only this kind of room.
    #[param(pattern = "^[A-Za-z0-9_-]{1,32}$")]
    kind: Option<String>,
    /// Only matches that ended (`true`), or every match recorded (`false`, the default).
    #[serde(default)]
    ended: bool,
}

impl MatchesQuery {
    fn default_limit() -> u32 {
        50
    }
}

/// Who asks for match records: the operator (the operator secret), a player (its
/// player key, or a join token's player), or anyone. A credential that is not valid is
/// refused rather than taken for none.
async fn match_viewer(rooms: &Rooms, headers: &axum::http::HeaderMap) -> ApiResult<MatchViewer> {
    let Some(token) = bearer(headers) else {
        return Ok(MatchViewer::default());
    };
    if rooms.is_operator(Some(token)) {
        return Ok(MatchViewer {
            operator: true,
            player: None,
        });
    }
    let player = if key_name(token).is_some() {
        rooms.key_owner(token).await?
    } else {
        rooms.member(token).await?.player
    };
    Ok(MatchViewer {
        operator: false,
        player: Some(player),
    })
}

#[utoipa::path(get, path = "/matches", tag = "matches", params(MatchesQuery),
    security((), ("operator" = []), ("ticket" = [])),
    responses((status = 200, description = "Recorded matches, the latest first: the public ones, and the private ones the caller (by its player key) played in; every one for the operator", body = Vec<MatchSummary>),
        (status = 401, description = "A credential that is neither the operator secret, a player key nor a current ticket", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn list_matches(
    State(rooms): State<Rooms>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<MatchesQuery>,
) -> ApiResult<Json<Vec<MatchSummary>>> {
    if !(1..=1000).contains(&query.limit) {
        return Err(ApiError::bad_request("limit is 1 to 1000 matches"));
    }
    if query
        .kind
        .as_ref()
        .is_some_and(|k| !crate::proto::valid_name(k))
    {
        return Err(ApiError::bad_request(
            "kind has 1 to 32 letters, digits, '-' or '_'",
        ));
    }
    let viewer = match_viewer(&rooms, &headers).await?;
    let matches = MatchQuery {
        limit: query.limit,
        since: query.since,
        ended_only: query.ended,
        kind: query.kind,
    };
    Ok(Json(rooms.store().matches(&matches, &viewer).await?))
}

/// One recorded match (`GET /matches/{id}`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct MatchRecord {
    /// The match.
    #[serde(rename = "match")]
    pub summary: MatchSummary,
    /// Its record, in room order: segments of entries, one a checkpoint.
    pub segments: Vec<MatchSegment>,
}

/// A stretch of a match's record.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct MatchSegment {
    /// Its checkpoint's version: segments go in this order.
    pub version: u64,
    /// The room as it was before its first entry, when the segment keeps it (the first
    /// kept always does): `{seq, state, applied, players}`, the state as JSON text.
    #[schema(value_type = Option<Object>)]
    pub start: Option<crate::store::Keyframe>,
    /// Its entries: `{u: sender, at: ms, b: the message as it came, o: [{to?, m}]}`.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<crate::worker::Entry>,
}

#[utoipa::path(get, path = "/matches/{id}", tag = "matches", params(("id" = String, Path, description = "The match (its room's id)")),
    security((), ("operator" = []), ("ticket" = [])),
    responses((status = 200, description = "The match's record", body = MatchRecord),
        (status = 401, description = "A credential that is neither the operator secret, a player key nor a current ticket", body = ErrorBody),
        (status = 403, description = "A private room's match the caller was not in, or a match still on (its record is the operator's until it ends)", body = ErrorBody),
        (status = 404, description = "No record of such a match (never recorded, or forgotten)", body = ErrorBody),
        (status = 500, description = "The record is corrupt (the segment is named)", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn get_match(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Json<MatchRecord>> {
    let viewer = match_viewer(&rooms, &headers).await?;
    let Some((summary, stored)) = rooms.store().match_record(&id, &viewer).await? else {
        return Err(ApiError::not_found(format!("no record of a match {id}")));
    };
    let mut segments = Vec::with_capacity(stored.len());
    for segment in stored {
        // Bad data, not a store that is down: 500, naming where (not 503, which invites
        // asking again).
        let corrupt = |e: String| {
            tracing::error!(
                "the record of match {id} is corrupt: segment {}: {e}",
                segment.version
            );
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the record of match {id} is corrupt: segment {}: {e}",
                    segment.version
                ),
            )
        };
        segments.push(MatchSegment {
            version: segment.version,
            start: segment
                .start
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt(format!("its keyframe is corrupt: {e}")))?,
            entries: crate::worker::record::entries(&segment.entries).map_err(corrupt)?,
        });
    }
    Ok(Json(MatchRecord { summary, segments }))
}

/// `?wait=SECS` of a queue poll.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Wait {
    /// Seconds to wait for a match before answering `waiting` (0 to 8).
    #[serde(default)]
    #[param(minimum = 0, maximum = 8)]
    wait: u64,
}

#[utoipa::path(post, path = "/rooms/{id}/leave", tag = "rooms", params(("id" = String, Path, description = "The room id")),
    security(("ticket" = [])),
    responses((status = 204, description = "Left; the ticket is revoked"),
        (status = 401, description = "No current ticket", body = ErrorBody),
        (status = 403, description = "The ticket is for another room", body = ErrorBody),
        (status = 404, description = "No such live room, or not in it", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn leave_room(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<StatusCode> {
    let token = bearer(&headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer TOKEN (the token of your join ticket)",
        )
    })?;
    let member = rooms.member(token).await?;
    if member.room != id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("your token is for room {}, not {id}", member.room),
        ));
    }
    rooms.leave(&member).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/rooms/{id}/players/{name}", tag = "rooms",
    params(("id" = String, Path, description = "The room id"), ("name" = String, Path, description = "The player")),
    security(("owner" = [])),
    responses((status = 204, description = "Kicked; its ticket is revoked"),
        (status = 401, description = "No owner token", body = ErrorBody),
        (status = 403, description = "Not this room's owner token", body = ErrorBody),
        (status = 404, description = "No such live room, or not in it", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn kick_player(
    State(rooms): State<Rooms>,
    PathOf((id, name)): PathOf<(String, String)>,
    headers: axum::http::HeaderMap,
) -> ApiResult<StatusCode> {
    rooms.may_manage(&id, bearer(&headers))?;
    rooms.kick(&id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/rooms/{id}", tag = "rooms", params(("id" = String, Path, description = "The room id")),
    security(("owner" = [])),
    responses((status = 204, description = "The room has ended: its players were told, its state saved, its inbox deleted"),
        (status = 202, description = "The room is ending: its worker had not ended it within 5 s (a Lambda room waking up), and will"),
        (status = 401, description = "No owner token", body = ErrorBody),
        (status = 403, description = "Not this room's owner token", body = ErrorBody),
        (status = 404, description = "No such live room", body = ErrorBody), (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 408, description = "The request took too long", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "Too many connections, or the store is down", body = ErrorBody),))]
async fn delete_room(
    State(rooms): State<Rooms>,
    PathOf(id): PathOf<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<crate::rooms::Ending> {
    // The right first: without it, whether a room exists is none of the caller's business.
    rooms.may_manage(&id, bearer(&headers))?;
    Ok(rooms.end_within(&id, "ended by the lobby").await?)
}

/// RabbitMQ's HTTP auth backend, answered by the lobby (`auth_http.*_path` point here):
/// `POST /rabbitmq/auth/user`, `/vhost`, `/resource` and `/topic`, form-encoded, each
/// answered `allow` or `deny`.
pub fn rabbitmq_auth_router(auth: RabbitAuth) -> Router {
    type Params = axum::extract::Form<std::collections::HashMap<String, String>>;
    fn answer(allowed: bool) -> &'static str {
        if allowed {
            "allow"
        } else {
            "deny"
        }
    }
    fn param<'a>(p: &'a Params, name: &str) -> &'a str {
        p.get(name).map(String::as_str).unwrap_or_default()
    }
    async fn user(State(auth): State<RabbitAuth>, p: Params) -> &'static str {
        let username = param(&p, "username");
        match auth.user(username, param(&p, "password")).await {
            Ok(()) => "allow",
            Err(why) => {
                tracing::info!(username, "RabbitMQ login refused: {why}");
                "deny"
            }
        }
    }
    async fn vhost(State(auth): State<RabbitAuth>, p: Params) -> &'static str {
        answer(auth.vhost(param(&p, "username")))
    }
    async fn resource(State(auth): State<RabbitAuth>, p: Params) -> &'static str {
        let (username, resource, name, permission) = (
            param(&p, "username"),
            param(&p, "resource"),
            param(&p, "name"),
            param(&p, "permission"),
        );
        let allowed = auth.resource(username, resource, name, permission);
        if !allowed {
            tracing::info!(
                username,
                "RabbitMQ refused {permission} on {resource} {name:?}"
            );
        }
        answer(allowed)
    }
    async fn topic(State(auth): State<RabbitAuth>, p: Params) -> &'static str {
        let (username, name, permission, key) = (
            param(&p, "username"),
            param(&p, "name"),
            param(&p, "permission"),
            param(&p, "routing_key"),
        );
        let allowed = auth.topic(username, name, permission, key);
        if !allowed {
            tracing::info!(
                username,
                "RabbitMQ refused {permission} on {name} with key {key:?}"
            );
        }
        answer(allowed)
    }
    Router::new()
        .route("/rabbitmq/auth/user", post(user))
        .route("/rabbitmq/auth/vhost", post(vhost))
        .route("/rabbitmq/auth/resource", post(resource))
        .route("/rabbitmq/auth/topic", post(topic))
        .with_state(auth)
}
