//! The seed-compatible HTTP endpoint of `serve`: `POST /stateMachineInit`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::pipeline::Intake;
use crate::seed;

/// Largest request body: 100,000 IDs of 256 bytes as JSON, with room to spare.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The HTTP router.
pub fn router(intake: Intake) -> Router {
    Router::new()
        .route(seed::ROUTE, post(state_machine_init))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(intake)
}

async fn state_machine_init(State(intake): State<Intake>, body: Bytes) -> Response {
    let reply = seed::handle(&intake, &body).await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(reply.body)).into_response()
}
