//! The DynamoDB store: the only place DynamoDB items are mapped.
//!
//! Layout (cost is writes, so what is written per chunk rather than per item decides it):
//! - `BATCH_TABLE`, key `batchId`: one item per batch with its counters; `status` and
//!   `createdKey` feed the `by-status` index, `listPartition` and `createdKey` the `by-created`
//!   index (both keys-only, so counter updates never write to an index).
//! - `REQUEST_TABLE`, key `batchId` + `sk`:
//!   - `part#<n>`: one per part received (digest of its items, its chunk range);
//!   - `part#<n>#hashes#<k>`: the sorted 64-bit hashes of the part's IDs, 48,000 to an item,
//!     kept to find IDs a later part repeats (not for the part that completes its batch);
//!   - `chunk#<n>#ids`: the chunk's item IDs joined by newlines, written with its part;
//!   - `chunk#<n>`: the chunk's stage, one status letter per item, failed items' messages,
//!     attempts and a version; small, so each write costs 1 unit. It is written by the chunk's
//!     first transition (claim, saved outcomes, record or cancel): a chunk with IDs and no
//!     state item is PENDING, every item pending.
//!
//! Storing a part: one conditional transaction reserves the part and its chunk range, then
//! `BatchWriteItem` writes the chunks' ID items and the part is marked written. That write takes
//! no conditions, and it can land twice or late: a client's retry, or a second client sending
//! the same part, finds the part reserved but not marked written and writes the same items
//! again; the SDK resends a request whose answer was lost; a stalled write lands after the
//! chunks it writes have run or been cancelled. All of that is harmless because a part's write
//! holds nothing that ever changes: each ID item is the same whoever writes it, and no part
//! write touches a chunk's state.
//!
//! Why not write each chunk's state with its part, conditionally? A conditional `PutItem` per
//! state (`attribute_not_exists`) costs the same units but a request per chunk rather than per
//! 25 items; `TransactWriteItems` of conditional puts doubles the units of every state; a
//! part-write lease (a writer and an expiry on the part) is free when one writer runs alone, but
//! a `BatchWriteItem` cannot be fenced, so a writer stalled past its lease still overwrites.
//! Writing no state until it first changes needs no coordination between writers and saves a
//! unit per chunk (0.111 to 0.101 write units per item at batch size 100, measured by
//! `tests/dynamo_cost.rs`). Its price: a chunk with no state item is read with its IDs to know
//! its item count, which a claim does in the one query that reads both; scans pay for the ID
//! items anyway (a query is billed for every item it reads, filtered out or not).
//!
//! Chunk transitions: every write of a state item is conditional on the state read (its
//! version, or no state item yet) and raises the version, so each transition happens once and
//! no write brings back a state that moved on. Recording a chunk is one transaction: the chunk
//! state moves to RECORDED on the condition that it is still the open state read, and the batch
//! counters are incremented. A replayed update finds the chunk recorded and changes nothing;
//! the terminal status is then set by a conditional write that only one caller can win.
//!
//! Progress: the batch item holds its rate window (`store::progress`); the record transaction
//! sets when the newest chunk was counted, and a conditional write outside it starts the next
//! window, at most once a minute per batch. Failure counts live in one `errorCounts` item per
//! batch in the request table (messages named by a key of their text, each text in its own
//! `errorMessage#<key>` item), added to by the record transaction of a chunk with failures only
//! (see `error_counts`).
//!
//! One file per concern: `attributes` (names and conversions), `writes` (metered,
//! conditional and batched writes), `batches` (the batch item, its status and cancel),
//! `error_counts` (a batch's failure counts), `parts`
//! (storing a part), `chunks` (chunk items and their lifecycle), `starts` (which chunks may
//! start, and each batch's slots), `jobs` (external job records), `listing` (the list calls),
//! `outbox` (completion callbacks to deliver).
//!
//! Completion callbacks: the conditional write that turns a batch terminal becomes a
//! transaction that also puts `outbox#<completedAt>` in the request table when the batch has a
//! callback URL (or completion events are on); a replay fails the status condition and puts
//! nothing. The item's insert reaches `init` through the stream, which delivers it; pending
//! items carry `duePartition`/`dueAt`, so the schedule finds due ones through the sparse
//! `by-due` index without a scan.

mod attributes;
mod batches;
mod chunks;
mod error_counts;
mod jobs;
mod listing;
mod outbox;
mod parts;
mod redrives;
mod starts;
mod writes;

pub use attributes::OUTBOX_PREFIX;
pub use outbox::delivery_key;
pub use starts::{StartClaim, LIMIT_CHANGED_SK, STALE_CLAIM};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::retry::RetryConfig;

use super::rules;
use super::{
    AppendOutcome, BatchQuery, BatchStore, CancelOutcome, Chunk, ChunkClaim, ControlOutcome,
    ItemQuery, ListError, Page, RecordOutcome, RedriveOutcome, StoreError, Unfinished,
};
use crate::domain::{Batch, BatchId, CallbackUrl, ItemOutcome, ItemRecord, NewPart};
use writes::Meter;

/// Attempts of an optimistic read-modify-write before reporting contention.
const OPTIMISTIC_ATTEMPTS: u32 = 8;
/// Attempts the SDK makes per request (it backs off on throttling by itself).
const SDK_MAX_ATTEMPTS: u32 = 8;

/// The names of the stack's two tables (the `BATCH_TABLE` and `REQUEST_TABLE` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoTables {
    /// `BATCH_TABLE`: one item per batch, key `batchId`, with the `by-status` and
    /// `by-created` indexes.
    pub batch_table: String,
    /// `REQUEST_TABLE`: parts and chunks, key `batchId` + `sk`.
    pub request_table: String,
}

/// What a store has sent since it was made, for cost measurement (retries the SDK makes by
/// itself are not seen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Write units as DynamoDB bills them: 1 per started KiB of each item written (a failed
    /// condition included), doubled inside transactions.
    pub write_units: u64,
    /// Write requests sent (`PutItem`, `UpdateItem`, `BatchWriteItem`, `TransactWriteItems`),
    /// each retry of unprocessed items included.
    pub write_requests: u64,
    /// Read requests sent (`GetItem`, `Query`), each page of a query included.
    pub read_requests: u64,
}

/// The DynamoDB store: [`BatchStore`] over the stack's two tables, every read strongly
/// consistent. Cheap to clone (clones share the client and the metrics).
#[derive(Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    tables: Arc<DynamoTables>,
    meter: Arc<Meter>,
    /// Whether every batch's terminal transition gets an outbox record (completion events
    /// are on), not only those of batches with a callback URL.
    completion_events: bool,
}

impl DynamoStore {
    /// A store on the given tables. The client keeps its retry policy (the SDK backs off with
    /// jitter on throttling and transient errors) but makes at least 8 attempts per request.
    pub fn new(client: aws_sdk_dynamodb::Client, tables: DynamoTables) -> Self {
        let retry = client
            .config()
            .retry_config()
            .cloned()
            .unwrap_or_else(RetryConfig::standard);
        let retry = if retry.max_attempts() < SDK_MAX_ATTEMPTS {
            retry.with_max_attempts(SDK_MAX_ATTEMPTS)
        } else {
            retry
        };
        let config = client.config().to_builder().retry_config(retry).build();
        Self {
            client: aws_sdk_dynamodb::Client::from_conf(config),
            tables: Arc::new(tables),
            meter: Arc::new(Meter::default()),
            completion_events: false,
        }
    }

    /// An update of `batch_id`'s item in the batch table, to be given its expressions.
    fn update_batch_item(
        &self,
        batch_id: &BatchId,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.tables.batch_table)
            .set_key(Some(attributes::batch_key(batch_id)))
    }

    /// This store, writing an outbox record for every batch's terminal transition, for its
    /// completion event.
    pub fn with_completion_events(mut self, on: bool) -> Self {
        self.completion_events = on;
        self
    }

    /// What this store has sent so far.
    pub fn metrics(&self) -> StoreMetrics {
        self.meter.snapshot()
    }
}

/// Contention that outlasted [`OPTIMISTIC_ATTEMPTS`]: retrying later may succeed.
fn contended(what: String) -> StoreError {
    StoreError::Unavailable(format!("{what} is contended"))
}

#[async_trait]
impl BatchStore for DynamoStore {
    async fn append_part(&self, part: &NewPart) -> Result<AppendOutcome, StoreError> {
        self.store_part(part).await
    }

    async fn get_batch(&self, batch_id: &BatchId) -> Result<Option<Batch>, StoreError> {
        let Some(mut batch) = self.load_batch(batch_id).await?.map(|record| record.batch) else {
            return Ok(None);
        };
        if batch.failed_items > 0 {
            batch.progress.top_errors = self.top_errors(batch_id).await?;
        }
        Ok(Some(batch))
    }

    async fn list_batches(&self, query: &BatchQuery) -> Result<Page<Batch>, ListError> {
        self.batch_page(query).await
    }

    async fn list_items(&self, query: &ItemQuery) -> Result<Page<ItemRecord>, ListError> {
        self.item_page(query).await
    }

    async fn cancel_batch(&self, batch_id: &BatchId) -> Result<CancelOutcome, StoreError> {
        self.cancel(batch_id).await
    }

    async fn pause_batch(&self, batch_id: &BatchId) -> Result<ControlOutcome, StoreError> {
        self.control(batch_id, rules::pause).await
    }

    async fn resume_batch(&self, batch_id: &BatchId) -> Result<ControlOutcome, StoreError> {
        self.control(batch_id, rules::resume).await
    }

    async fn redrive_batch(
        &self,
        batch_id: &BatchId,
        include_cancelled: bool,
    ) -> Result<RedriveOutcome, StoreError> {
        self.redrive(batch_id, include_cancelled).await
    }

    async fn set_max_concurrency(
        &self,
        batch_id: &BatchId,
        max_concurrency: Option<u32>,
    ) -> Result<Option<Batch>, StoreError> {
        if !self
            .write_max_concurrency(batch_id, max_concurrency)
            .await?
        {
            return Ok(None);
        }
        self.note_limit_changed(batch_id).await?;
        self.get_batch(batch_id).await
    }

    async fn set_callback_url(
        &self,
        batch_id: &BatchId,
        url: &CallbackUrl,
    ) -> Result<Option<Batch>, StoreError> {
        if !self.write_callback_url(batch_id, url).await? {
            return Ok(None);
        }
        self.get_batch(batch_id).await
    }

    async fn claim_chunk(&self, batch_id: &BatchId, chunk: u64) -> Result<ChunkClaim, StoreError> {
        self.claim(batch_id, chunk).await
    }

    async fn load_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        self.read_chunk(batch_id, chunk).await
    }

    async fn save_outcomes(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        outcomes: &[(usize, ItemOutcome)],
        attempts: u32,
    ) -> Result<(), StoreError> {
        self.save(batch_id, chunk, outcomes, attempts).await
    }

    async fn record_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        unfinished: Unfinished<'_>,
    ) -> Result<RecordOutcome, StoreError> {
        self.record(batch_id, chunk, unfinished).await
    }

    async fn wait_for_change(&self, since: u64, poll: Duration) -> u64 {
        // DynamoDB cannot signal changes; watchers poll.
        tokio::time::sleep(poll).await;
        since + 1
    }

    async fn count_batches_by_status(
        &self,
    ) -> Result<Option<Vec<(crate::domain::BatchStatus, u64)>>, StoreError> {
        self.count_unended_batches().await.map(Some)
    }
}
