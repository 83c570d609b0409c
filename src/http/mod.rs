//! The seed-compatible HTTP endpoints of `serve`: `POST /stateMachineInit` (the chunk pipeline)
//! and `POST /runrequests` (the job submitter), beside `GET /metrics`. Every answer but the
//! metrics is JSON,
//! errors included (`{"message": ...}`); requests from other sites are refused ([`guard`]).

pub(crate) mod framing;
pub(crate) mod guard;

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use tracing::Instrument;

use crate::items_uri::s3::ObjectReader;
use crate::pipeline::Intake;
use crate::{run_request, seed};

pub(crate) use guard::HostPolicy;

/// Largest request body: 100,000 IDs of 256 bytes as JSON, with room to spare.
pub(crate) const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How the endpoint treats requests beyond their content.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// Which Host names (and so which origins) are served.
    pub hosts: HostPolicy,
    /// Which callers are served.
    pub access: crate::access::AccessControl,
}

#[derive(Clone)]
struct Endpoint {
    intake: Intake,
    objects: ObjectReader,
    body_timeout: Duration,
}

/// A JSON error answer.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "message": message.into() }))).into_response()
}

/// The HTTP router; `objects` reads the items of seed bodies by reference; `pages` (the
/// dashboard) and the metrics are served behind the same gates.
pub(crate) fn router(
    (intake, objects): (Intake, ObjectReader),
    settings: HttpSettings,
    pages: Router,
) -> Router {
    let metrics = crate::metrics::router(intake.store());
    let endpoint = Endpoint {
        intake,
        objects,
        body_timeout: settings.body_timeout,
    };
    let routes = Router::new()
        .route(crate::access::HEALTH_ROUTE, get(healthz))
        .route(
            seed::ROUTE,
            post(state_machine_init)
                .route_layer(middleware::from_fn(guard::require_json_content_type)),
        )
        .route(
            run_request::ROUTE,
            post(run_requests).route_layer(middleware::from_fn(guard::require_json_content_type)),
        )
        .fallback(not_found)
        .with_state(endpoint)
        .merge(metrics)
        .merge(pages)
        .layer(middleware::from_fn_with_state(
            settings.access,
            crate::access::require_http_token,
        ))
        .layer(middleware::from_fn_with_state(
            settings.hosts,
            guard::refuse_foreign_requests,
        ));
    // Around the whole router rather than each route, so that the JSON error sees the answers
    // routing completes itself (a 405's `Allow`).
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(ensure_json_error))
        .layer(middleware::from_fn(crate::logging::request_span))
}

/// Liveness: the server accepts and answers requests (open to probes without a token).
async fn healthz() -> Response {
    Json(json!({ "status": "SERVING" })).into_response()
}

async fn state_machine_init(State(endpoint): State<Endpoint>, request: Request) -> Response {
    let objects = endpoint.objects.clone();
    answer(endpoint, request, |intake, body| async move {
        seed::handle(&intake, &objects, &body).await
    })
    .await
}

async fn run_requests(State(endpoint): State<Endpoint>, request: Request) -> Response {
    answer(endpoint, request, |intake, body| async move {
        run_request::handle(&intake, &body).await
    })
    .await
}

/// Reads the body and answers with what `handle` replies. The handler runs on a task of its
/// own, so that a request whose client goes away half-way still starts the chunks it stored.
async fn answer<F, Fut>(endpoint: Endpoint, request: Request, handle: F) -> Response
where
    F: FnOnce(Intake, Bytes) -> Fut,
    Fut: Future<Output = seed::Reply> + Send + 'static,
{
    let body = match read_body(request.into_body(), endpoint.body_timeout).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let reply = match tokio::spawn(handle(endpoint.intake, body).in_current_span()).await {
        Ok(reply) => reply,
        Err(err) => {
            let request_id = uuid::Uuid::new_v4();
            tracing::error!(%request_id, error = %err, "request failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error (request id {request_id})"),
            );
        }
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(reply.body)).into_response()
}

/// Reads a whole body of at most [`MAX_BODY_BYTES`], waiting at most `timeout` for each piece.
/// A body that stalls, is too large or breaks its framing is refused, and the connection is
/// closed (the rest of the body is never read).
async fn read_body(mut body: Body, timeout: Duration) -> Result<Bytes, Response> {
    let too_large = || {
        closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: must be at most {MAX_BODY_BYTES} bytes"),
        ))
    };
    if http_body::Body::size_hint(&body).lower() > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    let mut collected = Vec::new();
    loop {
        let frame =
            match tokio::time::timeout(timeout, body.frame()).await {
                Err(_) => {
                    return Err(closing(error(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "body: no data received for {}; send the whole body without pausing",
                            humantime::format_duration(timeout)
                        ),
                    )))
                }
                Ok(None) => return Ok(Bytes::from(collected)),
                Ok(Some(Err(_))) => return Err(closing(error(
                    StatusCode::BAD_REQUEST,
                    "body: could not be read: its framing (Content-Length or chunked encoding) \
                     is malformed, or the connection ended before the body did",
                ))),
                Ok(Some(Ok(frame))) => frame,
            };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            collected.extend_from_slice(&data);
        }
    }
}

/// Marks an answer as the connection's last.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

/// Gives any error answer without a JSON or HTML body (one a framework layer made) the JSON
/// shape of every other, keeping its status and headers; a `405` names the methods allowed.
async fn ensure_json_error(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    let is_json_or_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| {
            value.as_bytes().starts_with(b"application/json")
                || value.as_bytes().starts_with(b"text/html")
        });
    if !(status.is_client_error() || status.is_server_error()) || is_json_or_html {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match body.collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        Err(_) => String::new(),
    };
    let allowed = parts
        .headers
        .get(header::ALLOW)
        .and_then(|value| value.to_str().ok());
    let message = if let (StatusCode::METHOD_NOT_ALLOWED, Some(allowed)) = (status, allowed) {
        format!("{method} {path} is not allowed; use {allowed}")
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let json = error(status, message);
    let (json_parts, json_body) = json.into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}
