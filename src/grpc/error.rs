//! The admin service's one error type and its one conversion to `tonic::Status`. Internal
//! failures reach clients only as a request id; their details go to the logs.

use tonic::Status;

use super::convert::FieldError;
use crate::domain::{with_sources, BatchId, BatchStatus};
use crate::items_uri::ReadError;
use crate::pipeline::{FromUriError, IntakeError, CALLBACKS_DISABLED};
use crate::store::{ListError, StoreError};

/// Why a call of the admin service failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// A request field breaks a rule: INVALID_ARGUMENT naming the field.
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    #[error("batch {0} not found")]
    NotFound(BatchId),
    #[error("batch {batch_id} is already {status}")]
    AlreadyTerminal {
        batch_id: BatchId,
        status: BatchStatus,
    },
    /// The batch cannot take the request as it stands (pause an ended batch, redrive a
    /// running one): FAILED_PRECONDITION with why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// A batch by reference.
    #[error(transparent)]
    FromUri(#[from] FromUriError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    List(#[from] ListError),
    /// The task doing the work panicked.
    #[error("the request's task failed")]
    Panicked(#[source] tokio::task::JoinError),
    /// A run request, and task 2 is the built-in task.
    #[error("{0}")]
    NoExternalJob(String),
    /// Open watches end with this when the server stops, so that their connections can close.
    #[error("the server is shutting down; watch again once it is back")]
    ShuttingDown,
    /// Open exports end with this when the server stops.
    #[error("the server is shutting down; export again once it is back")]
    ExportStopped,
}

impl From<FieldError> for Status {
    fn from(err: FieldError) -> Self {
        ApiError::from(err).into()
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidField(err) => Status::invalid_argument(with_sources(&err)),
            ApiError::NotFound(_) => Status::not_found(err.to_string()),
            ApiError::AlreadyTerminal { .. }
            | ApiError::NoExternalJob(_)
            | ApiError::Refused(_) => Status::failed_precondition(err.to_string()),
            ApiError::Intake(err) => intake(err),
            ApiError::FromUri(err) => from_uri(err),
            ApiError::Store(err) => store(err),
            ApiError::List(err) => list(err),
            ApiError::Panicked(_) => internal(&err),
            ApiError::ShuttingDown | ApiError::ExportStopped => {
                Status::unavailable(err.to_string())
            }
        }
    }
}

fn intake(err: IntakeError) -> Status {
    match err {
        IntakeError::Conflict(reason) => Status::already_exists(reason),
        IntakeError::Rejected(reason) => Status::failed_precondition(reason),
        IntakeError::CallbacksDisabled => {
            Status::failed_precondition(format!("callback_url: {CALLBACKS_DISABLED}"))
        }
        IntakeError::CallbackHostNotAllowed(_) => {
            Status::invalid_argument(format!("callback_url: {err}"))
        }
        IntakeError::Store(err) => store(err),
        IntakeError::Orchestrator(_) => internal(&err),
    }
}

fn from_uri(err: FromUriError) -> Status {
    match err {
        FromUriError::Read(ReadError::Refused(err)) => {
            Status::invalid_argument(with_sources(&FieldError::new("items_uri", err)))
        }
        FromUriError::Read(err @ ReadError::Changed) => {
            Status::aborted(format!("items_uri: {err}"))
        }
        FromUriError::Read(err @ ReadError::Unreachable(_)) => {
            let request_id = uuid::Uuid::new_v4();
            tracing::error!(%request_id, error = %err, "items object unreadable");
            Status::unavailable(format!(
                "items_uri: the object could not be read, retry later (request id {request_id})"
            ))
        }
        FromUriError::Intake(err) => intake(err),
    }
}

fn store(err: StoreError) -> Status {
    match err {
        StoreError::Unavailable(_) => {
            let request_id = uuid::Uuid::new_v4();
            tracing::error!(%request_id, error = %with_sources(&err), "store unavailable");
            Status::unavailable(format!(
                "storage is unavailable, retry later (request id {request_id})"
            ))
        }
        StoreError::Corrupt(_) => internal(&err),
    }
}

fn list(err: ListError) -> Status {
    match err {
        ListError::BadPageToken(err) => Status::invalid_argument(err.to_string()),
        ListError::NotFound => Status::not_found("batch not found"),
        ListError::Store(err) => store(err),
    }
}

/// Logs an internal failure under a fresh request id and gives the client only that id.
fn internal(err: &dyn std::error::Error) -> Status {
    let request_id = uuid::Uuid::new_v4();
    tracing::error!(%request_id, error = %with_sources(err), "request failed");
    Status::internal(format!("internal error (request id {request_id})"))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::domain::IdError;

    #[test]
    fn a_field_error_is_invalid_argument_naming_the_field_and_rule() {
        let status = Status::from(FieldError::new("item_ids[3]", IdError::Empty));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "item_ids[3]: must not be empty");
    }

    #[test]
    fn internal_details_reach_the_client_only_as_a_request_id() {
        let status = Status::from(ApiError::Store(StoreError::Corrupt(
            "row 7 of table chunks".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error (request id "));
        assert!(!status.message().contains("chunks"));
        let status = Status::from(ApiError::Store(StoreError::Unavailable(
            "database is locked".into(),
        )));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("locked"));
    }

    #[test]
    fn a_refused_object_names_items_uri_and_its_line_and_s3_failures_show_only_a_request_id() {
        let refused = ReadError::line(537, IdError::Empty);
        let status = Status::from(ApiError::FromUri(FromUriError::Read(refused)));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "items_uri: line 537: must not be empty");
        let status = Status::from(ApiError::FromUri(FromUriError::Read(ReadError::Changed)));
        assert_eq!(status.code(), Code::Aborted);
        assert!(status
            .message()
            .starts_with("items_uri: the object changed"));
        let unreachable = ReadError::Unreachable("dispatch failure: 10.0.0.7:443".into());
        let status = Status::from(ApiError::FromUri(FromUriError::Read(unreachable)));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.7"), "{status:?}");
        assert!(status.message().contains("request id"), "{status:?}");
    }

    #[test]
    fn conflicts_and_refusals_keep_their_reason() {
        let status = Status::from(ApiError::Intake(IntakeError::Conflict(
            "batch taken exists with other items".into(),
        )));
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(status.message(), "batch taken exists with other items");
        let batch_id = BatchId::parse("done").unwrap();
        let status = Status::from(ApiError::AlreadyTerminal {
            batch_id,
            status: BatchStatus::Completed,
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "batch done is already COMPLETED");
    }
}
