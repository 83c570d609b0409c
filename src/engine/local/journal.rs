//! The embedded engine's durable record of chunk executions: where each one stands, so a
//! restarted server resumes what was in flight.

use async_trait::async_trait;

use crate::domain::{BatchId, Timestamp};
use crate::store::StoreError;

/// Identifies a chunk execution: one per chunk, so starting it twice is a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExecutionKey {
    pub batch_id: BatchId,
    pub chunk: u64,
}

impl ExecutionKey {
    /// The execution's name, as logs and the context object show it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.batch_id, self.chunk)
    }
}

/// A running execution as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRecord {
    pub key: ExecutionKey,
    /// The interpreter's cursor, as JSON.
    pub cursor: String,
    /// Set while the execution sleeps (a Wait state or a retry backoff).
    pub wake_at: Option<Timestamp>,
    pub started_at: Timestamp,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionEnd {
    Succeeded,
    Failed { error: String, cause: String },
}

/// Persistence of executions; implemented by the SQLite store so that chunks and their
/// executions live in one database file.
#[async_trait]
pub trait ExecutionJournal: Send + Sync + 'static {
    /// Records new executions, ignoring keys already known; returns the keys it created.
    async fn create_executions(
        &self,
        executions: Vec<(ExecutionKey, String)>,
    ) -> Result<Vec<ExecutionKey>, StoreError>;

    /// Saves where a running execution stands.
    async fn save_cursor(
        &self,
        key: &ExecutionKey,
        cursor: String,
        wake_at: Option<Timestamp>,
    ) -> Result<(), StoreError>;

    /// Marks an execution ended and drops its cursor.
    async fn finish_execution(
        &self,
        key: &ExecutionKey,
        end: &ExecutionEnd,
    ) -> Result<(), StoreError>;

    /// Every execution still running, oldest first.
    async fn running_executions(&self) -> Result<Vec<ExecutionRecord>, StoreError>;

    /// Open chunks that have no execution (stored, but the server stopped before starting them).
    async fn unstarted_chunks(&self) -> Result<Vec<ExecutionKey>, StoreError>;
}
