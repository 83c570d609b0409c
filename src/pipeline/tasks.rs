//! Task 1 and task 2: the user's customization point.
//!
//! Implement [`ChunkTask`] for your processing logic and pass it in [`Tasks`]. A task receives
//! the chunk's items that are still pending and returns one [`ItemOutcome`] per item, in order:
//! an item may fail with a message without failing its chunk. Returning `Err` says the whole
//! attempt failed transiently (a timeout, a throttled dependency): the state machine's Retry
//! policy runs the task again with backoff, and when retries run out the chunk's unfinished
//! items fail with the error's message. Tasks may run more than once for the same chunk
//! (at-least-once delivery), so make them idempotent.
//!
//! The shipped defaults: task 1 ([`ValidateUuids`]) fails every item ID that is not a UUID;
//! task 2 ([`AcceptAll`]) succeeds every item and is the place for your own logic.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{BatchId, ItemId, ItemOutcome};

/// The chunk a task works on.
#[derive(Debug, Clone, Copy)]
pub struct TaskInput<'a> {
    /// The chunk's batch.
    pub batch_id: &'a BatchId,
    /// The chunk's index in its batch, from 0.
    pub chunk: u64,
    /// 0 on the first attempt, then the retry number.
    pub attempt: u32,
    /// The items still pending, in submission order.
    pub items: &'a [ItemId],
}

/// A transient failure of a whole task attempt; retried by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

impl TaskError {
    /// A task error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// One processing step applied to a chunk.
#[async_trait]
pub trait ChunkTask: Send + Sync + 'static {
    /// Returns exactly one outcome per item of `input.items`, in the same order.
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError>;
}

/// The two tasks every chunk runs through.
#[derive(Clone)]
pub struct Tasks {
    /// The first task.
    pub task1: Arc<dyn ChunkTask>,
    /// The second task, run on the items the first left pending.
    pub task2: Arc<dyn ChunkTask>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            task1: Arc::new(ValidateUuids),
            task2: Arc::new(AcceptAll),
        }
    }
}

/// The message given to item IDs that are not UUIDs.
pub const NOT_A_UUID: &str = "item id is not a UUID";

/// Default task 1: fails every item whose ID is not a UUID.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateUuids;

#[async_trait]
impl ChunkTask for ValidateUuids {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        Ok(input
            .items
            .iter()
            .map(|item| match uuid::Uuid::try_parse(item.as_str()) {
                Ok(_) => ItemOutcome::Succeeded,
                Err(_) => ItemOutcome::Failed(NOT_A_UUID.to_owned()),
            })
            .collect())
    }
}

/// Default task 2: succeeds every item. Replace it with your own processing.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

#[async_trait]
impl ChunkTask for AcceptAll {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        Ok(vec![ItemOutcome::Succeeded; input.items.len()])
    }
}
