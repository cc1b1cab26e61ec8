//! The operator's inspector: the page at `GET /inspect` and the admin API behind it,
//! served by the lobby in every mode.
//!
//! | route | does |
//! |---|---|
//! | `GET /inspect` | the page (it asks for the operator secret and keeps it in the tab) |
//! | `GET /admin/rooms?offset=0&limit=100` | every live room with its figures |
//! | `GET /admin/rooms/{id}` | one room: figures, state, latest inputs, players |
//! | `POST /admin/rooms/{id}/watch` | a spectator ticket, for the live stream of outputs |
//! | `POST /admin/rooms/{id}/lock` | `{"locked": true}` locks it, `false` unlocks |
//! | `POST /admin/rooms/{id}/kick` | `{"player": …}` takes the player out |
//! | `POST /admin/rooms/{id}/end` | `{"reason": …}` ends the room |
//! | `POST /admin/rooms/{id}/send` | `{"player": …, "input": {…}}`: an input as a test player |
//!
//! Access: the operator secret (`--operator-secret`) as `Authorization: Bearer`; none
//! answers 401, anything else (a player's token or key, an owner token) 403. Requests
//! across sites cannot act: a browser never adds that header by itself, and every
//! action takes a JSON body (`Content-Type: application/json`), which a cross-site form
//! cannot send. The page may not be framed.

use crate::http::{bearer, ApiError, ApiResult, ErrorBody, Page};
use crate::proto::Ticket;
use crate::rooms::{Ending, RoomDetail, RoomInspection, Rooms};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// The page, whole: HTML, CSS and script, no build step.
const PAGE: &str = include_str!("inspect/inspect.html");

/// The inspector's routes, to merge into the lobby's.
pub fn routes() -> Router<Rooms> {
    Router::new()
        .route("/inspect", get(page))
        .route("/admin/rooms", get(admin_rooms))
        .route("/admin/rooms/{id}", get(admin_room))
        .route("/admin/rooms/{id}/watch", post(admin_watch))
        .route("/admin/rooms/{id}/lock", post(admin_lock))
        .route("/admin/rooms/{id}/kick", post(admin_kick))
        .route("/admin/rooms/{id}/end", post(admin_end))
        .route("/admin/rooms/{id}/send", post(admin_send))
}

/// What every admin route answers a caller who is not the operator (for the OpenAPI
/// description).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum OperatorOnly {
    /// No `Authorization: Bearer`.
    #[response(status = 401, description = "No operator secret")]
    NoSecret(ErrorBody),
    /// Anything but the operator secret.
    #[response(status = 403, description = "Not the operator secret")]
    NotOperator(ErrorBody),
}

/// The operator, from `Authorization: Bearer` with the operator secret.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl FromRequestParts<Rooms> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, rooms: &Rooms) -> Result<Operator, ApiError> {
        match bearer(&parts.headers) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the admin API takes the operator secret (--operator-secret) as Authorization: Bearer",
            )),
            Some(token) if rooms.is_operator(Some(token)) => Ok(Operator),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this is not the operator secret; the admin API is the operator's alone",
            )),
        }
    }
}

/// Ending a room answers 204 once it has ended, 202 while it is ending (here and in
/// the lobby's `DELETE /rooms/{id}`).
impl IntoResponse for Ending {
    fn into_response(self) -> Response {
        match self {
            Ending::Ended => StatusCode::NO_CONTENT,
            Ending::Ending => StatusCode::ACCEPTED,
        }
        .into_response()
    }
}

/// An action's JSON body: 415 if it is not sent as JSON (as a cross-site form would
/// be), 400 if it does not read as the action's, 413 if it is too large.
fn body<T>(got: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    match got {
        Ok(Json(value)) => Ok(value),
        Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an action's body is JSON, sent with Content-Type: application/json",
        )),
        // Too large stays 413; a body that is not the action's is 400, as in the lobby.
        Err(e) if e.status() == StatusCode::UNPROCESSABLE_ENTITY => {
            Err(ApiError::bad_request(e.body_text()))
        }
        Err(e) => Err(ApiError::new(e.status(), e.body_text())),
    }
}

/// `GET /inspect`.
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

#[utoipa::path(get, path = "/admin/rooms", tag = "admin", params(Page),
    responses((status = 200, description = "Every live room with the inspector's figures", body = [RoomInspection]),
        (status = 400, description = "A bad page", body = ErrorBody),
        OperatorOnly),
    security(("operator" = [])))]
pub(crate) async fn admin_rooms(
    _: Operator,
    State(rooms): State<Rooms>,
    Query(page): Query<Page>,
) -> ApiResult<Json<Vec<RoomInspection>>> {
    page.check()?;
    Ok(Json(rooms.inspect_rooms(page.offset, page.limit).await?))
}

#[utoipa::path(get, path = "/admin/rooms/{id}", tag = "admin",
    params(("id" = String, Path, description = "The room id")),
    responses((status = 200, description = "The room: figures, state, latest inputs, players", body = RoomDetail),
        OperatorOnly,
        (status = 404, description = "No such live room", body = ErrorBody)),
    security(("operator" = [])))]
pub(crate) async fn admin_room(
    _: Operator,
    State(rooms): State<Rooms>,
    Path(id): Path<String>,
) -> ApiResult<Json<RoomDetail>> {
    Ok(Json(rooms.inspect_room(&id).await?))
}

#[utoipa::path(post, path = "/admin/rooms/{id}/watch", tag = "admin",
    params(("id" = String, Path, description = "The room id")),
    responses((status = 200, description = "A spectator's ticket: read the room's topic over ws_url", body = Ticket),
        OperatorOnly,
        (status = 404, description = "No such live room", body = ErrorBody)),
    security(("operator" = [])))]
pub(crate) async fn admin_watch(
    _: Operator,
    State(rooms): State<Rooms>,
    Path(id): Path<String>,
) -> ApiResult<Json<Ticket>> {
    Ok(Json(rooms.spectate(&id).await?))
}

/// `POST /admin/rooms/{id}/lock`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Lock (`true`: quick play and joins pass the room by) or unlock.
    pub locked: bool,
}

#[utoipa::path(post, path = "/admin/rooms/{id}/lock", tag = "admin", request_body = Lock,
    params(("id" = String, Path, description = "The room id")),
    responses((status = 204, description = "Locked or unlocked"),
        (status = 400, description = "Not a lock", body = ErrorBody),
        OperatorOnly,
        (status = 404, description = "No such live room", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody)),
    security(("operator" = [])))]
pub(crate) async fn admin_lock(
    _: Operator,
    State(rooms): State<Rooms>,
    Path(id): Path<String>,
    lock: Result<Json<Lock>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let lock = body(lock)?;
    rooms.set_locked(&id, lock.locked).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/rooms/{id}/kick`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kick {
    /// The player to take out.
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9_-]+$")]
    pub player: String,
}

#[utoipa::path(post, path = "/admin/rooms/{id}/kick", tag = "admin", request_body = Kick,
    params(("id" = String, Path, description = "The room id")),
    responses((status = 204, description = "The player is out: its ticket revoked, its connections closed, its leave hook run"),
        (status = 400, description = "Not a kick", body = ErrorBody),
        OperatorOnly,
        (status = 404, description = "No such live room, or the player is not in it", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody)),
    security(("operator" = [])))]
pub(crate) async fn admin_kick(
    _: Operator,
    State(rooms): State<Rooms>,
    Path(id): Path<String>,
    kick: Result<Json<Kick>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let kick = body(kick)?;
    rooms.kick(&id, &kick.player).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/rooms/{id}/end`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// Why, as the players are told (`ended by the operator` if unset).
    #[schema(max_length = 200)]
    pub reason: Option<String>,
}

#[utoipa::path(post, path = "/admin/rooms/{id}/end", tag = "admin", request_body = End,
    params(("id" = String, Path, description = "The room id")),
    responses((status = 204, description = "The room has ended: its players were told, its state saved, its inbox deleted"),
        (status = 202, description = "The room is ending: its worker had not ended it within 5 s (a Lambda room waking up), and will"),
        (status = 400, description = "Not an end", body = ErrorBody),
        OperatorOnly,
        (status = 404, description = "No such live room", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody)),
    security(("operator" = [])))]
pub(crate) async fn admin_end(
    _: Operator,
    State(rooms): State<Rooms>,
    Path(id): Path<String>,
    end: Result<Json<End>, JsonRejection>,
) -> ApiResult<Ending> {
    let reason = body(end)?
        .reason
        .unwrap_or_else(|| "ended by the operator".into());
    if reason.chars().count() > 200 {
        return Err(ApiError::bad_request("a reason has at most 200 characters"));
    }
    Ok(rooms.end_within(&id, &reason).await?)
}

/// `POST /admin/rooms/{id}/send`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Send {
    /// The test player: a name nobody claimed; seated first if it is not in the room.
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9_-]+$")]
    pub player: String,
    /// The input, as a player sends it (its `seq` is set for it).
    #[schema(value_type = Object)]
    pub input: Value,
}

#[utoipa::path(post, path = "/admin/rooms/{id}/send", tag = "admin", request_body = Send,
    params(("id" = String, Path, description = "The room id")),
    responses((status = 202, description = "In the room's inbox, with this seq: its outcome shows in the room's latest inputs", body = Value),
        (status = 400, description = "A bad name or input", body = ErrorBody),
        OperatorOnly,
        (status = 404, description = "No such live room", body = ErrorBody),
        (status = 409, description = "A player's name, or a locked room", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "The room is full", body = ErrorBody)),
    security(("operator" = [])))]
pub(crate) async fn admin_send(
    _: Operator,
    State(rooms): State<Rooms>,
    Path(id): Path<String>,
    send: Result<Json<Send>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let send = body(send)?;
    let seq = rooms.send_as(&id, &send.player, send.input).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "seq": seq }))))
}
