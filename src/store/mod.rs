//! Storage of batches, parts, chunks and item outcomes behind one trait, [`BatchStore`],
//! with an embedded SQLite implementation (local) and a DynamoDB one (AWS).
//!
//! Items are stored per chunk (IDs and outcomes together), never a row per item: what is
//! written per chunk rather than per item decides both speed and cost. What both stores share
//! lives beside them: `rules` (part acceptance, settling, status moves, cancel arithmetic, as
//! pure functions), [`codec`] (the chunk encoding and item paging) and `id_hashes` (finding
//! item IDs a part repeats from earlier parts).

pub mod codec;
pub mod dynamo;
mod id_hashes;
pub mod jobs;
pub(crate) mod journal;
pub mod outbox;
mod progress;
mod rules;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;

pub use self::jobs::{JobStore, JobWrite, StoredJob};
pub use self::outbox::{AttemptResult, Delivery, DeliveryKey, OutboxStore};

use crate::domain::{
    Batch, BatchId, BatchStatus, CallbackUrl, ItemId, ItemOutcome, ItemRecord, ItemStatus, NewPart,
};

/// A storage failure. Details are for the logs, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the work for now; retrying may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data that cannot be read back; not retryable.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What storing a part did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The part was stored; `chunks` are its new chunks, to be started.
    Created {
        /// The batch as it stands after.
        batch: Batch,
        /// The part's new chunks.
        chunks: Vec<u64>,
    },
    /// The same part (same items) was stored before; `unstarted_chunks` are its chunks that no
    /// task has started yet, which may be started again safely.
    AlreadyStored {
        /// The batch as it stands.
        batch: Batch,
        /// The part's chunks no task has started.
        unstarted_chunks: Vec<u64>,
    },
    /// The batch or part exists with other content.
    Conflict(String),
    /// The batch cannot take this part (it is cancelled or already holds every item).
    Rejected(String),
}

/// What cancelling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled now; the batch as it stands after.
    Cancelled(Batch),
    /// The batch had already ended; nothing changed.
    AlreadyTerminal(Batch),
    /// No such batch.
    NotFound,
}

/// What pausing or resuming did.
// Returned once per request and never kept: boxing the batch would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOutcome {
    /// Done now, or found done already (a repeated request); the batch as it stands after.
    Applied(Batch),
    /// The batch cannot take the request as it stands (it has ended), with why.
    Refused(String),
    /// No such batch.
    NotFound,
}

/// What a redrive did.
// Returned once per request and never kept: boxing the batch would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveOutcome {
    /// The batch runs again: `items` items in `chunks` chunks, to be started.
    Redriven {
        /// The batch as it stands after.
        batch: Batch,
        /// The chunks that run again.
        chunks: Vec<u64>,
        /// The items that run again.
        items: u64,
    },
    /// The batch cannot be redriven (it is running, has nothing to re-run or no redrives
    /// left), with why.
    Refused(String),
    /// No such batch.
    NotFound,
}

/// A chunk's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStage {
    /// Stored; no task has started it; cancelling skips it.
    Pending,
    /// A task has started it; it runs to the end.
    Started,
    /// Its outcome is in the batch counters.
    Recorded,
    /// Cancelled before it started.
    Cancelled,
}

impl ChunkStage {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Started => "STARTED",
            Self::Recorded => "RECORDED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Started,
            Self::Recorded,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|stage| stage.as_str() == name)
    }

    /// Whether tasks may still write outcomes.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Started)
    }
}

/// One item's state inside a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemState {
    /// No outcome yet.
    Pending,
    /// The task succeeded.
    Succeeded,
    /// A task failed it, with this message.
    Failed(String),
    /// Cancelled before its chunk started.
    Cancelled,
}

impl ItemState {
    /// The status this state shows as.
    pub fn status(&self) -> ItemStatus {
        match self {
            Self::Pending => ItemStatus::Pending,
            Self::Succeeded => ItemStatus::Succeeded,
            Self::Failed(_) => ItemStatus::Failed,
            Self::Cancelled => ItemStatus::Cancelled,
        }
    }
}

impl From<ItemOutcome> for ItemState {
    fn from(outcome: ItemOutcome) -> Self {
        match outcome {
            ItemOutcome::Succeeded => Self::Succeeded,
            ItemOutcome::Failed(message) => Self::Failed(message),
        }
    }
}

/// A chunk's items and their states, as tasks see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's batch.
    pub batch_id: BatchId,
    /// The chunk's position in its batch, from 0.
    pub index: u64,
    /// Where the chunk stands.
    pub stage: ChunkStage,
    /// The chunk's item IDs.
    pub items: Vec<ItemId>,
    /// One per item, in the same order.
    pub states: Vec<ItemState>,
    /// The most task attempts any task made on this chunk in its current run.
    pub attempts: u32,
    /// Task attempts of the chunk's runs before its last redrive (0 until one).
    pub earlier_attempts: u32,
}

/// What a task sees when it asks to start a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkClaim {
    /// The chunk is (now) started; work on it.
    Active(Chunk),
    /// Cancelled or already recorded: nothing to do.
    Inactive,
    /// No such chunk.
    NotFound,
}

/// What recording a chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Counted now; the batch as it stands after, and the chunk's items that went into its
    /// counts.
    Recorded(Batch, ItemTally),
    /// Counted before (a replayed update): nothing changed.
    AlreadyRecorded(Batch),
    /// No such chunk.
    NotFound,
}

/// A recorded chunk's items, by how they ended, as they were added to their batch's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemTally {
    /// Items that succeeded.
    pub succeeded: u64,
    /// Items that failed.
    pub failed: u64,
    /// Items cancelled.
    pub cancelled: u64,
}

/// How the items still pending end when their chunk is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished<'a> {
    /// They fail with this message (a task's error), or a generic one.
    Failed(Option<&'a str>),
    /// They are cancelled: the chunk's job was stopped by a cancel.
    Cancelled,
}

/// A page of results and the token of the next page (None on the last one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The page's entries.
    pub entries: Vec<T>,
    /// The token of the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

/// `ListBatches` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchQuery {
    /// Only batches in this status; `None` lists all.
    pub status: Option<BatchStatus>,
    /// Most batches on the page.
    pub page_size: u32,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// `ListBatchItems` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemQuery {
    /// The batch whose items are listed.
    pub batch_id: BatchId,
    /// Only items in this status; `None` lists all.
    pub status: Option<ItemStatus>,
    /// Most items on the page.
    pub page_size: u32,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page_token: is not a token this service issued")]
pub struct BadPageToken;

/// A list call's failure.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The page token is not one this service issued.
    #[error(transparent)]
    BadPageToken(#[from] BadPageToken),
    /// No such batch.
    #[error("batch not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Persistent state of batches and chunks. Every method is atomic and safe to call again
/// with the same arguments (Lambda and Express workflows deliver at least once).
#[async_trait]
pub trait BatchStore: JobStore + OutboxStore {
    /// Stores a part (creating its batch on the first part) and its chunks.
    async fn append_part(&self, part: &NewPart) -> Result<AppendOutcome, StoreError>;

    /// One read, whatever the batch's size.
    async fn get_batch(&self, batch_id: &BatchId) -> Result<Option<Batch>, StoreError>;

    /// Newest first.
    async fn list_batches(&self, query: &BatchQuery) -> Result<Page<Batch>, ListError>;

    /// In submission order.
    async fn list_items(&self, query: &ItemQuery) -> Result<Page<ItemRecord>, ListError>;

    /// Cancels the chunks no task has started; the batch turns CANCELLED once no chunk is in flight.
    async fn cancel_batch(&self, batch_id: &BatchId) -> Result<CancelOutcome, StoreError>;

    /// Sets how many chunk executions of the batch may be in flight at once (`None`: the
    /// deployment's default); the batch as it stands after, or None when there is no such
    /// batch. Chunks already running keep running; the limit applies to the next starts.
    async fn set_max_concurrency(
        &self,
        batch_id: &BatchId,
        max_concurrency: Option<u32>,
    ) -> Result<Option<Batch>, StoreError>;

    /// Pauses a batch: its chunks not yet started wait until it is resumed; running ones
    /// finish. A paused batch stays paused; an ended one is refused.
    async fn pause_batch(&self, batch_id: &BatchId) -> Result<ControlOutcome, StoreError>;

    /// Resumes a paused batch (a batch that is not paused is left as it is; an ended one is
    /// refused). The caller then starts the chunks the pause held back.
    async fn resume_batch(&self, batch_id: &BatchId) -> Result<ControlOutcome, StoreError>;

    /// Re-runs the FAILED items of an ended batch (and its CANCELLED ones, with
    /// `include_cancelled`) as new attempts: their chunks go back to PENDING with those items
    /// pending, and the batch runs again. The caller starts the returned chunks.
    async fn redrive_batch(
        &self,
        batch_id: &BatchId,
        include_cancelled: bool,
    ) -> Result<RedriveOutcome, StoreError>;
    /// Sets where the batch's final status is POSTed when it ends; the batch as it stands
    /// after, or None when there is no such batch. A transition already made keeps the URL
    /// it was made with.
    async fn set_callback_url(
        &self,
        batch_id: &BatchId,
        url: &CallbackUrl,
    ) -> Result<Option<Batch>, StoreError>;

    /// Marks a chunk started (so cancelling no longer skips it) and returns it, unless it is
    /// cancelled or recorded. Also moves a PENDING batch to RUNNING.
    async fn claim_chunk(&self, batch_id: &BatchId, chunk: u64) -> Result<ChunkClaim, StoreError>;

    /// Reads a chunk.
    async fn load_chunk(&self, batch_id: &BatchId, chunk: u64)
        -> Result<Option<Chunk>, StoreError>;

    /// Saves a task's outcomes for some of a chunk's items (by position); ignored once the chunk
    /// is recorded or cancelled. `attempts` only ever raises the chunk's count.
    async fn save_outcomes(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        outcomes: &[(usize, ItemOutcome)],
        attempts: u32,
    ) -> Result<(), StoreError>;

    /// Counts a chunk's outcomes into its batch, once: items still pending end as `unfinished`
    /// says (failed with a task's error, or cancelled when a cancel stopped the chunk's job).
    /// Turns the batch terminal when its last chunk is counted.
    async fn record_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        unfinished: Unfinished<'_>,
    ) -> Result<RecordOutcome, StoreError>;

    /// Saves task 2's outcomes and counts the chunk, as [`Self::save_outcomes`] then
    /// [`Self::record_chunk`] would; stores that can do both in one write override it.
    async fn save_outcomes_and_record(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        outcomes: &[(usize, ItemOutcome)],
        attempts: u32,
        unfinished: Unfinished<'_>,
    ) -> Result<RecordOutcome, StoreError> {
        self.save_outcomes(batch_id, chunk, outcomes, attempts)
            .await?;
        self.record_chunk(batch_id, chunk, unfinished).await
    }

    /// Waits until something may have changed (a write committed here, or `poll` elapsed for
    /// stores that cannot tell), for watchers.
    async fn wait_for_change(&self, since: u64, poll: Duration) -> u64;

    /// How many batches are in each status, for the metrics; `None` from a store that cannot
    /// count them at a bounded cost.
    async fn count_batches_by_status(&self) -> Result<Option<Vec<(BatchStatus, u64)>>, StoreError> {
        Ok(None)
    }
}
