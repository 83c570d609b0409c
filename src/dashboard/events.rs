//! `GET /batches/{id}/events`: a batch's counters as Server-Sent Events, one `batch` event per
//! change (followed as `WatchBatch` follows it), ending with the terminal one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::batch::Snapshot;
use super::refusal;
use crate::domain::BatchId;
use crate::grpc::AdminService;
use crate::http::error;

/// The batch's snapshots as events; a `failure` event says why they stopped early.
pub(super) async fn stream(
    State(admin): State<AdminService>,
    Path(batch_id): Path<String>,
) -> Response {
    let batch_id = match BatchId::parse(batch_id) {
        Ok(batch_id) => batch_id,
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("batch_id: {err}")),
    };
    let first = match admin.batch(&batch_id).await {
        Ok(batch) => batch,
        Err(err) => {
            let (status, message) = refusal(err);
            return error(status, message);
        }
    };
    let events = ReceiverStream::new(admin.follow(first)).map(|snapshot| match snapshot {
        Ok(batch) => Event::default()
            .event("batch")
            .json_data(Snapshot::from(&batch)),
        Err(err) => Ok(Event::default().event("failure").data(refusal(err).1)),
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
