//! Serving the lobby's HTTP port against clients that misbehave: every connection gets
//! `TCP_NODELAY` (no Nagle delays on WebSocket frames), a request must send its headers
//! in time and finish in time, bodies are bounded, connections are capped in all and per
//! address (past a cap, a connection is answered `503` as JSON, except `/health`), and
//! every error is answered as `{"error": "…"}`, axum's own rejections included.
//!
//! Also what every route of the lobby and the inspector shares: [`ApiError`] (an error
//! as JSON with its status), the `Authorization: Bearer` token ([`bearer`]), and a page
//! of a list of rooms.

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The lobby port's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A connection must send a request's headers within this.
    pub header_timeout: Duration,
    /// A request (its body included) must be answered within this.
    pub request_timeout: Duration,
    /// Request body bytes at most.
    pub max_body: usize,
    /// Connections at once (WebSocket players included).
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
            max_connections: 10_000,
            max_per_address: 256,
        }
    }
}

/// `router` with the request bounds and JSON errors of `limits`.
pub fn harden(router: Router, limits: HttpLimits) -> Router {
    let timeout = limits.request_timeout;
    router
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| request_timeout(req, next, timeout),
        ))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(axum::middleware::from_fn(json_errors))
}

async fn request_timeout(req: Request, next: Next, timeout: Duration) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {timeout:?}"),
        ),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Turns any error answer that is not JSON (axum's rejections: 400, 404, 405, 413, 415,
/// …) into `{"error": "…"}`, keeping its status and headers.
async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is too large ({text})")
        }
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
        _ => text,
    };
    let json =
        serde_json::to_vec(&serde_json::json!({ "error": message })).expect("a string serializes");
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json))
}

/// Open connections, in all and by address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One open connection's place in the counts; given back when dropped.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap();
        counts.total -= 1;
        if let Some(n) = counts.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.ip);
            }
        }
    }
}

/// A slot for a connection from `ip`, or why not.
fn take_slot(counts: &Arc<Mutex<Counts>>, ip: IpAddr, limits: &HttpLimits) -> Result<Slot, String> {
    let mut c = counts.lock().unwrap();
    if c.total >= limits.max_connections {
        return Err(format!(
            "the server has {} connections, its most; try again soon",
            limits.max_connections
        ));
    }
    let from_ip = c.by_address.get(&ip).copied().unwrap_or(0);
    if from_ip >= limits.max_per_address {
        return Err(format!(
            "{ip} has {} connections open, the most one address may",
            limits.max_per_address
        ));
    }
    c.total += 1;
    *c.by_address.entry(ip).or_default() += 1;
    Ok(Slot {
        counts: counts.clone(),
        ip,
    })
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `router` on `listener` until `shutdown` turns true, then lets the open
/// connections finish their requests (up to `grace`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let tasks = TaskTracker::new();
    let overloaded = Router::new().route(
        "/health",
        axum::routing::get(|| async {
            Json(serde_json::json!({ "status": "ok", "overloaded": true }))
        }),
    );
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait, rather than spin.
                    tracing::warn!("the lobby cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let (service, slot) = match take_slot(&counts, peer.ip(), &limits) {
            Ok(slot) => (router.clone(), Some(slot)),
            Err(why) => {
                tracing::debug!("refusing a connection from {peer}: {why}");
                let refusal = overloaded.clone().fallback(move || {
                    let why = why.clone();
                    async move { error(StatusCode::SERVICE_UNAVAILABLE, why) }
                });
                (refusal, None)
            }
        };
        let service = service.map_request(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.map(Body::new)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(slot.is_some());
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .with_upgrades();
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("HTTP connection from {peer}: {e}");
                    }
                }
                _ = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(grace, tasks.wait()).await;
}

/// Every error: what went wrong, and often what to do (for the OpenAPI description).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: String,
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
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        use crate::Error;
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            _ => {
                tracing::error!("lobby request failed: {e}");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// The result of a lobby handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    Some(value.strip_prefix("Bearer ").unwrap_or(value).trim())
}

/// A page of a list of rooms (`?offset=0&limit=100`).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Rooms to skip, oldest first.
    #[param(minimum = 0, maximum = 1_000_000_000)]
    #[serde(default)]
    pub(crate) offset: usize,
    /// Rooms to answer at most, 1 to 1000 (100 if left out).
    #[serde(default = "Page::default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: usize,
}

impl Page {
    fn default_limit() -> usize {
        100
    }

    /// 400 unless the limit is 1 to 1000 and the offset at most a billion.
    pub(crate) fn check(&self) -> ApiResult<()> {
        if !(1..=1000).contains(&self.limit) || self.offset > 1_000_000_000 {
            return Err(ApiError::bad_request(
                "limit is 1 to 1000 rooms, offset 0 to 1000000000",
            ));
        }
        Ok(())
    }
}
