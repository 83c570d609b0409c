//! Conversions between protobuf messages and domain types, and from errors to `tonic::Status`.
//! Internal failures reach clients only as a request id; their details go to the logs.

use prost_types::Timestamp as PbTimestamp;
use tonic::Status;

use super::pb;
use crate::domain::{
    parse_count, parse_item_ids, Batch, BatchId, BatchSize, BatchStatus, InvalidInput, ItemRecord,
    ItemStatus, NewPart, Timestamp,
};
use crate::pipeline::IntakeError;
use crate::store::{ListError, StoreError};

/// Default and largest `ListBatches` page.
pub const DEFAULT_BATCH_PAGE: u32 = 50;
pub const MAX_BATCH_PAGE: u32 = 1000;
/// Default and largest `ListBatchItems` page.
pub const DEFAULT_ITEM_PAGE: u32 = 100;
pub const MAX_ITEM_PAGE: u32 = 10_000;

pub fn invalid_argument(err: InvalidInput) -> Status {
    Status::invalid_argument(err.to_string())
}

/// Logs an internal failure under a fresh request id and gives the client only that id.
pub fn internal(err: &dyn std::error::Error) -> Status {
    let request_id = uuid::Uuid::new_v4();
    tracing::error!(%request_id, error = %err, source = ?err.source(), "request failed");
    Status::internal(format!("internal error (request id {request_id})"))
}

pub fn store_error(err: StoreError) -> Status {
    match err {
        StoreError::Unavailable(_) => {
            let request_id = uuid::Uuid::new_v4();
            tracing::error!(%request_id, error = %err, "store unavailable");
            Status::unavailable(format!(
                "storage is unavailable, retry later (request id {request_id})"
            ))
        }
        StoreError::Corrupt(_) => internal(&err),
    }
}

pub fn intake_error(err: IntakeError) -> Status {
    match err {
        IntakeError::Conflict(reason) => Status::already_exists(reason),
        IntakeError::Rejected(reason) => Status::failed_precondition(reason),
        IntakeError::Store(err) => store_error(err),
        IntakeError::Orchestrator(err) => internal(&err),
    }
}

pub fn list_error(err: ListError) -> Status {
    match err {
        ListError::BadPageToken(err) => Status::invalid_argument(err.to_string()),
        ListError::NotFound => Status::not_found("batch not found"),
        ListError::Store(err) => store_error(err),
    }
}

pub fn not_found(batch_id: &BatchId) -> Status {
    Status::not_found(format!("batch {batch_id} not found"))
}

pub fn parse_batch_id(raw: String) -> Result<BatchId, Status> {
    BatchId::parse(raw).map_err(invalid_argument)
}

pub fn submit_part(request: pb::SubmitBatchRequest) -> Result<NewPart, Status> {
    let batch_id = if request.batch_id.is_empty() {
        BatchId::generate()
    } else {
        parse_batch_id(request.batch_id)?
    };
    let batch_size = BatchSize::parse_or_default(u64::from(request.batch_size), "batch_size")
        .map_err(invalid_argument)?;
    let items = parse_item_ids(request.item_ids, "item_ids").map_err(invalid_argument)?;
    let total = items.len() as u64;
    NewPart::new(
        batch_id,
        total,
        batch_size,
        1,
        items,
        "item_ids",
        "part_number",
    )
    .map_err(invalid_argument)
}

pub fn append_part(request: pb::AppendBatchItemsRequest) -> Result<NewPart, Status> {
    let batch_id = parse_batch_id(request.batch_id)?;
    parse_count(request.total_items, "total_items").map_err(invalid_argument)?;
    parse_count(request.part_number, "part_number").map_err(invalid_argument)?;
    let batch_size = BatchSize::parse_or_default(u64::from(request.batch_size), "batch_size")
        .map_err(invalid_argument)?;
    let items = parse_item_ids(request.item_ids, "item_ids").map_err(invalid_argument)?;
    NewPart::new(
        batch_id,
        request.total_items,
        batch_size,
        request.part_number,
        items,
        "total_items",
        "part_number",
    )
    .map_err(invalid_argument)
}

pub fn page_size(raw: u32, default: u32, max: u32) -> Result<u32, Status> {
    match raw {
        0 => Ok(default),
        size if size <= max => Ok(size),
        _ => Err(invalid_argument(InvalidInput::new(
            "page_size",
            format!("must be between 1 and {max}, or 0 for the default ({default})"),
        ))),
    }
}

pub fn page_token(raw: String) -> Option<String> {
    (!raw.is_empty()).then_some(raw)
}

pub fn batch_status_filter(raw: i32) -> Result<Option<BatchStatus>, Status> {
    let status = pb::BatchStatus::try_from(raw).map_err(|_| {
        invalid_argument(InvalidInput::new(
            "status",
            format!("{raw} is not a BatchStatus"),
        ))
    })?;
    Ok(match status {
        pb::BatchStatus::Unspecified => None,
        pb::BatchStatus::Pending => Some(BatchStatus::Pending),
        pb::BatchStatus::Running => Some(BatchStatus::Running),
        pb::BatchStatus::Completed => Some(BatchStatus::Completed),
        pb::BatchStatus::CompletedWithFailures => Some(BatchStatus::CompletedWithFailures),
        pb::BatchStatus::Failed => Some(BatchStatus::Failed),
        pb::BatchStatus::Cancelled => Some(BatchStatus::Cancelled),
    })
}

pub fn item_status_filter(raw: i32) -> Result<Option<ItemStatus>, Status> {
    let status = pb::ItemStatus::try_from(raw).map_err(|_| {
        invalid_argument(InvalidInput::new(
            "status",
            format!("{raw} is not an ItemStatus"),
        ))
    })?;
    Ok(match status {
        pb::ItemStatus::Unspecified => None,
        pb::ItemStatus::Pending => Some(ItemStatus::Pending),
        pb::ItemStatus::Succeeded => Some(ItemStatus::Succeeded),
        pb::ItemStatus::Failed => Some(ItemStatus::Failed),
        pb::ItemStatus::Cancelled => Some(ItemStatus::Cancelled),
    })
}

pub fn batch_status(status: BatchStatus) -> pb::BatchStatus {
    match status {
        BatchStatus::Pending => pb::BatchStatus::Pending,
        BatchStatus::Running => pb::BatchStatus::Running,
        BatchStatus::Completed => pb::BatchStatus::Completed,
        BatchStatus::CompletedWithFailures => pb::BatchStatus::CompletedWithFailures,
        BatchStatus::Failed => pb::BatchStatus::Failed,
        BatchStatus::Cancelled => pb::BatchStatus::Cancelled,
    }
}

pub fn domain_batch_status(status: pb::BatchStatus) -> Option<BatchStatus> {
    batch_status_filter(status as i32).ok().flatten()
}

pub fn item_status(status: ItemStatus) -> pb::ItemStatus {
    match status {
        ItemStatus::Pending => pb::ItemStatus::Pending,
        ItemStatus::Succeeded => pb::ItemStatus::Succeeded,
        ItemStatus::Failed => pb::ItemStatus::Failed,
        ItemStatus::Cancelled => pb::ItemStatus::Cancelled,
    }
}

fn timestamp(at: Timestamp) -> PbTimestamp {
    PbTimestamp {
        seconds: at.0.div_euclid(1_000_000),
        nanos: (at.0.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// The domain timestamp of a protobuf one.
pub fn domain_timestamp(at: &PbTimestamp) -> Timestamp {
    Timestamp(at.seconds * 1_000_000 + i64::from(at.nanos) / 1000)
}

pub fn batch(batch: &Batch) -> pb::Batch {
    pb::Batch {
        batch_id: batch.batch_id.to_string(),
        status: batch_status(batch.status) as i32,
        total_items: batch.total_items,
        succeeded_items: batch.succeeded_items,
        failed_items: batch.failed_items,
        pending_items: batch.pending_items(),
        cancelled_items: batch.cancelled_items,
        total_chunks: batch.total_chunks,
        completed_chunks: batch.completed_chunks,
        created_at: Some(timestamp(batch.created_at)),
        updated_at: Some(timestamp(batch.updated_at)),
        completed_at: batch.completed_at.map(timestamp),
        received_items: batch.received_items,
        batch_size: batch.batch_size,
    }
}

pub fn item(record: ItemRecord) -> pb::Item {
    pb::Item {
        item_id: record.item_id.into_string(),
        status: item_status(record.status) as i32,
        error: record.error.unwrap_or_default(),
        attempts: record.attempts,
        chunk: record.chunk,
    }
}
