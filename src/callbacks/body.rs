//! What a callback POSTs (and a completion event carries as its detail): the batch's final
//! status in the camelCase JSON the CLI prints, plus the delivery ID.

use serde_json::json;

use crate::domain::Batch;

/// The JSON body for `batch`'s transition `delivery_id`, as exact bytes (they are signed).
pub fn body(batch: &Batch, delivery_id: &str) -> Vec<u8> {
    let value = json!({
        "deliveryId": delivery_id,
        "batchId": batch.batch_id.as_str(),
        "status": batch.status.as_str(),
        "totalItems": batch.total_items,
        "receivedItems": batch.received_items,
        "succeededItems": batch.succeeded_items,
        "failedItems": batch.failed_items,
        "cancelledItems": batch.cancelled_items,
        "pendingItems": batch.pending_items(),
        "totalChunks": batch.total_chunks,
        "completedChunks": batch.completed_chunks,
        "batchSize": batch.batch_size,
        "maxConcurrency": batch.max_concurrency,
        "failureReason": batch.failure_reason,
        "redriveCount": batch.redrive_count,
        "createdAt": batch.created_at.to_rfc3339(),
        "updatedAt": batch.updated_at.to_rfc3339(),
        "completedAt": batch.completed_at.map(|at| at.to_rfc3339()),
    });
    serde_json::to_vec(&value).expect("a JSON value serializes")
}
