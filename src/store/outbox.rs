//! The callback outbox: [`OutboxStore`], which every [`BatchStore`](super::BatchStore) also is.
//!
//! A batch with a callback URL (or, on AWS, every batch when completion events are on) gets
//! one outbox record per terminal transition, written by the same transaction that turns the
//! batch terminal; a replayed update finds the batch terminal already and writes none. The
//! record holds the batch as that transition left it, so what is sent never changes however
//! often it is sent. Deliveries are claimed one attempt at a time: a claim counts the attempt
//! and moves the record's due time past the attempt's deadline, so a process that dies
//! mid-attempt leaves the record due again once that lease runs out.

use async_trait::async_trait;

use super::StoreError;
use crate::domain::{Batch, BatchId, CallbackStatus, Timestamp};

/// Which terminal transition of which batch a record is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    /// The batch.
    pub batch_id: BatchId,
    /// When the transition happened (its `completed_at`): unique per transition of a batch.
    pub completed_at: Timestamp,
}

/// One outbox record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The record's transition.
    pub key: DeliveryKey,
    /// The batch as the transition left it (`callback.url` is where it goes, if anywhere).
    pub batch: Batch,
    /// Attempts claimed so far.
    pub attempts: u32,
    /// Where the record stands.
    pub status: CallbackStatus,
    /// Whether the completion event was put (AWS; always true where there are no events).
    pub event_sent: bool,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Delivered: nothing more to do.
    Delivered,
    /// Failed; try again at `due_at`.
    Retry {
        /// When the next attempt is due.
        due_at: Timestamp,
        /// Why it failed, in a few words.
        error: String,
    },
    /// Failed, and the retry window is closed.
    GaveUp {
        /// Why the last attempt failed.
        error: String,
    },
}

/// The outbox of completion callbacks.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Records due at `now` (pending, due time passed), earliest due first, at most `limit`.
    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// One record, if it exists.
    async fn load_delivery(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError>;

    /// Starts attempt `read.attempts + 1` if the record is still pending, due at `now` and
    /// unclaimed since it was read; it is not due again before `lease_until`. False when
    /// another claim (or the end of the record) came first.
    async fn claim_delivery(
        &self,
        read: &Delivery,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Notes that the record's completion event was put.
    async fn mark_event_sent(&self, key: &DeliveryKey) -> Result<(), StoreError>;

    /// Records the result of attempt `attempt`, unless a later attempt was claimed meanwhile.
    async fn finish_attempt(
        &self,
        key: &DeliveryKey,
        attempt: u32,
        result: &AttemptResult,
    ) -> Result<(), StoreError>;
}

/// The batch as an outbox record keeps it (JSON, timestamps in microseconds). The SQLite
/// store's trigger writes the same fields.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BatchSnapshot {
    batch_id: String,
    status: String,
    total_items: u64,
    received_items: u64,
    succeeded_items: u64,
    failed_items: u64,
    cancelled_items: u64,
    total_chunks: u64,
    completed_chunks: u64,
    batch_size: u32,
    created_at: i64,
    updated_at: i64,
    completed_at: Option<i64>,
    max_concurrency: Option<u32>,
    #[serde(default)]
    failure_reason: Option<String>,
    #[serde(default)]
    redrive_count: u32,
    callback_url: Option<String>,
}

impl BatchSnapshot {
    pub(crate) fn of(batch: &Batch) -> Self {
        Self {
            batch_id: batch.batch_id.as_str().to_owned(),
            status: batch.status.as_str().to_owned(),
            total_items: batch.total_items,
            received_items: batch.received_items,
            succeeded_items: batch.succeeded_items,
            failed_items: batch.failed_items,
            cancelled_items: batch.cancelled_items,
            total_chunks: batch.total_chunks,
            completed_chunks: batch.completed_chunks,
            batch_size: batch.batch_size,
            created_at: batch.created_at.0,
            updated_at: batch.updated_at.0,
            completed_at: batch.completed_at.map(|at| at.0),
            max_concurrency: batch.max_concurrency,
            failure_reason: batch.failure_reason.clone(),
            redrive_count: batch.redrive_count,
            callback_url: batch
                .callback
                .url
                .as_ref()
                .map(|url| url.as_str().to_owned()),
        }
    }

    /// The snapshot's JSON.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a snapshot serializes")
    }

    /// Reads a stored snapshot back.
    pub(crate) fn parse(json: &str) -> Result<Batch, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("outbox snapshot: {what}"));
        let snapshot: Self = serde_json::from_str(json).map_err(|_| corrupt("not JSON"))?;
        Ok(Batch {
            batch_id: BatchId::parse(snapshot.batch_id).map_err(|_| corrupt("batchId"))?,
            status: crate::domain::BatchStatus::from_name(&snapshot.status)
                .ok_or_else(|| corrupt("status"))?,
            total_items: snapshot.total_items,
            received_items: snapshot.received_items,
            succeeded_items: snapshot.succeeded_items,
            failed_items: snapshot.failed_items,
            cancelled_items: snapshot.cancelled_items,
            total_chunks: snapshot.total_chunks,
            completed_chunks: snapshot.completed_chunks,
            batch_size: snapshot.batch_size,
            created_at: Timestamp(snapshot.created_at),
            updated_at: Timestamp(snapshot.updated_at),
            completed_at: snapshot.completed_at.map(Timestamp),
            max_concurrency: snapshot.max_concurrency,
            failure_budget: Default::default(),
            failure_reason: snapshot.failure_reason,
            redrive_count: snapshot.redrive_count,
            progress: Default::default(),
            callback: crate::domain::Callback {
                url: snapshot
                    .callback_url
                    .map(crate::domain::CallbackUrl::from_trusted),
                ..Default::default()
            },
        })
    }
}
