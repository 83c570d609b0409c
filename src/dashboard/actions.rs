//! `POST /batches/{id}/{cancel|pause|resume|redrive}`: the dashboard's buttons, through the
//! admin service's own calls, so that their checks, refusals and job stopping are the gRPC
//! API's. Answers are JSON: `{"message", "batch"}`, or `{"message"}` with the refusal's status.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::batch::Snapshot;
use super::{count, refusal};
use crate::domain::{Batch, BatchId};
use crate::grpc::{AdminService, ApiError};
use crate::http::error;

/// An action's body; `{}` (or none) takes the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActionBody {
    /// Redrive: cancelled items run again too.
    #[serde(default)]
    include_cancelled: bool,
}

/// Runs the action the path names on the batch.
pub(super) async fn act(
    State(admin): State<AdminService>,
    Path((batch_id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let batch_id = match BatchId::parse(batch_id) {
        Ok(batch_id) => batch_id,
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("batch_id: {err}")),
    };
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(err) => return error(StatusCode::BAD_REQUEST, format!("body: {err}")),
        }
    };
    let done: Result<(Batch, String), ApiError> = match action.as_str() {
        "cancel" => admin
            .cancel(batch_id)
            .await
            .map(|batch| (batch, "Cancel requested.".to_owned())),
        "pause" => admin
            .pause(batch_id)
            .await
            .map(|batch| (batch, "Paused: no new chunk starts.".to_owned())),
        "resume" => admin
            .resume(batch_id)
            .await
            .map(|batch| (batch, "Resumed.".to_owned())),
        "redrive" => admin
            .redrive(batch_id, body.include_cancelled)
            .await
            .map(|(batch, items)| (batch, format!("Redriving {} items.", count(items)))),
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("{other:?} is not an action; use cancel, pause, resume or redrive"),
            )
        }
    };
    match done {
        Ok((batch, message)) => Json(json!({
            "message": format!("{message} The batch is {}.", batch.status),
            "batch": Snapshot::from(&batch),
        }))
        .into_response(),
        Err(err) => {
            let (status, message) = refusal(err);
            error(status, message)
        }
    }
}
