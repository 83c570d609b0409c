//! The records of chunks' external jobs and each batch's job settings: [`JobStore`], which
//! every [`BatchStore`](super::BatchStore) also is.
//!
//! The store keeps these records as opaque JSON documents that the pipeline owns; what it adds
//! is the write rule that makes a submission happen once: a chunk's job record is replaced
//! only by a writer that read its current revision, so of two steps racing to submit the same
//! chunk attempt exactly one records it.

use async_trait::async_trait;

use super::StoreError;
use crate::domain::BatchId;

/// A chunk's job record as stored: the pipeline's JSON document and its revision (1 for the
/// first record of a chunk, then one more with every replacement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredJob {
    /// The record, as the pipeline wrote it.
    pub record: String,
    /// How many times the chunk's record was written.
    pub revision: u64,
}

/// What [`JobStore::put_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobWrite {
    /// Written as this revision.
    Written(u64),
    /// Another writer changed the record since it was read; nothing was written.
    Superseded,
}

/// External job records, one per chunk (the job of its current task attempt), and per batch
/// the settings its jobs share (a run request's labels; whether the batch's jobs are stopped).
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// The chunk's job record, if a job was ever recorded for it.
    async fn load_job(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<StoredJob>, StoreError>;

    /// Writes the chunk's job record if its revision is still `read` (`None`: no record yet).
    async fn put_job(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        record: &str,
        read: Option<u64>,
    ) -> Result<JobWrite, StoreError>;

    /// Every job record of a batch, by chunk, in chunk order.
    async fn list_jobs(&self, batch_id: &BatchId) -> Result<Vec<(u64, StoredJob)>, StoreError>;

    /// Keeps a batch's job settings (the pipeline's JSON), replacing any before. A run
    /// request's are written before its batch, so its jobs never start without them.
    async fn put_job_settings(&self, batch_id: &BatchId, settings: &str) -> Result<(), StoreError>;

    /// A batch's job settings, if it has any.
    async fn load_job_settings(&self, batch_id: &BatchId) -> Result<Option<String>, StoreError>;
}

/// The revision a write after reading `read` gives the record.
pub(crate) fn next_revision(read: Option<u64>) -> u64 {
    read.map_or(1, |revision| revision + 1)
}
