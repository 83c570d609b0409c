//! The journal of the embedded engine: the durable record of chunk executions, kept by the store
//! beside the chunks they run: where each one stands, so a
//! restarted server resumes what was in flight, and so executions waiting for a worker wait in
//! the database rather than in memory.
//!
//! A chunk with no journal entry has an execution that has not passed its first Task: it
//! starts (again) from the beginning. Entries are *staged*: a staged entry is committed in the
//! same transaction as the store's next write, or in an earlier one, and never after a write
//! made later; a staged entry that fails to commit is retried until it does. So the cursor
//! saved before a Task rides on that Task's own write, and no step waits for the journal.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::StoreError;
use crate::domain::{BatchId, Timestamp};

/// Identifies a chunk execution: one per chunk, so starting it twice is a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ExecutionKey {
    pub batch_id: BatchId,
    pub chunk: u64,
}

impl ExecutionKey {
    /// The execution's name, as logs and the context object show it.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.batch_id, self.chunk)
    }
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecutionEnd {
    Succeeded,
    Failed { error: String, cause: String },
}

/// What the journal records about an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JournalEntry {
    /// Running: resume at `cursor` (the interpreter's cursor, as JSON), not before `wake_at`.
    Running {
        cursor: String,
        wake_at: Option<Timestamp>,
        started_at: Timestamp,
    },
    /// Ended; nothing to resume.
    Ended(ExecutionEnd),
}

/// Where a chunk sits in the order executions are paged in (batches in arrival order, then
/// chunks in order). Opaque outside the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct JournalPosition {
    pub batch_seq: i64,
    pub chunk: u64,
}

impl JournalPosition {
    /// The position right after this one.
    pub(crate) fn next(self) -> Self {
        Self {
            batch_seq: self.batch_seq,
            chunk: self.chunk + 1,
        }
    }
}

/// Where a sleeping execution sits in the order sleepers wake up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WakePosition {
    pub wake_at: Timestamp,
    pub position: JournalPosition,
}

impl Default for WakePosition {
    /// Before every sleeper.
    fn default() -> Self {
        Self {
            wake_at: Timestamp(i64::MIN),
            position: JournalPosition::default(),
        }
    }
}

/// A batch's limit on executions in flight, and its executions the journal has running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchSlots {
    pub limit: Option<u32>,
    pub running: u64,
}

/// An execution that can run now: resumed from its cursor, or started afresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Runnable {
    pub key: ExecutionKey,
    pub position: JournalPosition,
    /// The cursor to resume at (JSON), or None to start from the beginning.
    pub cursor: Option<String>,
    pub started_at: Option<Timestamp>,
    /// Set for a sleeper woken up.
    pub wake_at: Option<Timestamp>,
}

/// Resolves once a staged entry is committed. Dropping it does not cancel the entry.
pub(crate) struct JournalReceipt(oneshot::Receiver<()>);

impl JournalReceipt {
    /// A receipt and the sender that resolves it.
    pub(crate) fn new() -> (oneshot::Sender<()>, Self) {
        let (sender, receiver) = oneshot::channel();
        (sender, Self(receiver))
    }
}

impl Future for JournalReceipt {
    /// Err when the journal stopped before the entry was committed.
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|committed| {
            committed.map_err(|_| StoreError::Unavailable("the journal stopped".into()))
        })
    }
}

/// Persistence of executions; implemented by the SQLite store so that chunks and their
/// executions live in one database file.
#[async_trait]
pub(crate) trait ExecutionJournal: Send + Sync + 'static {
    /// Stages an entry for `key`, found at `position` (see the module documentation); later
    /// entries for the same key supersede earlier ones.
    fn stage(
        &self,
        key: &ExecutionKey,
        position: JournalPosition,
        entry: JournalEntry,
    ) -> JournalReceipt;

    /// Whether entries are committing; false while the store refuses writes (a full disk),
    /// when starting more executions would only fail them.
    fn accepting(&self) -> bool;

    /// Running executions that are not sleeping, from `from` on, in order: at start, the
    /// executions a stopped server left in flight.
    async fn resumable(
        &self,
        from: JournalPosition,
        limit: usize,
    ) -> Result<Vec<Runnable>, StoreError>;

    /// Sleeping executions from `from` on whose wake-up time is `now` or earlier, in wake-up
    /// order.
    async fn due(
        &self,
        from: WakePosition,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Runnable>, StoreError>;

    /// The earliest wake-up time of a sleeping execution from `from` on.
    async fn next_wake(&self, from: WakePosition) -> Result<Option<Timestamp>, StoreError>;

    /// Open chunks from `from` on that have no journal entry, in order: executions to start.
    async fn unstarted(
        &self,
        from: JournalPosition,
        limit: usize,
    ) -> Result<Vec<Runnable>, StoreError>;

    /// Open chunks of `from`'s batch from `from` on that have no journal entry, in order: the
    /// starts a batch held back by its limit, once it has room.
    async fn unstarted_in_batch(
        &self,
        from: JournalPosition,
        limit: usize,
    ) -> Result<Vec<Runnable>, StoreError>;

    /// A batch's limit on executions in flight (None: no limit of its own) and how many of
    /// its executions are running by the journal (passed their first Task, not ended).
    async fn batch_slots(&self, batch_seq: i64) -> Result<BatchSlots, StoreError>;

    /// The position of a batch's chunk (None when the batch does not exist).
    async fn position(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<JournalPosition>, StoreError>;
}
