//! The per-chunk steps the state machine invokes: task 1, task 2 and update. Each takes the
//! JSON event of its Task state and returns its JSON result, or a [`StepError`] whose
//! `error_type` the definition's Retry and Catch rules match.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::job_steps::{JobProgress, JobRunners, BATCH_CANCELLED, JOB_TIMED_OUT};
use super::jobs::TaskName;
use super::tasks::{ChunkTask, TaskInput, Tasks};
use crate::domain::{BatchId, ItemId, ItemOutcome};
use crate::store::{
    BatchStore, Chunk, ChunkClaim, ItemState, RecordOutcome, StoreError, Unfinished,
};

/// Error name of a task's transient failure.
pub(crate) const TRANSIENT_TASK_ERROR: &str = "BatchManager.TransientTaskError";

/// The event of a task state (`Parameters` of Task1/Task2 in the definition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    /// The chunk's batch.
    pub batch_id: String,
    /// The chunk's index in its batch, from 0.
    pub chunk: u64,
    /// `$$.State.RetryCount`.
    #[serde(default)]
    pub attempt: u32,
    /// Set when polling the chunk's external job: where the last step left it. Boxed, as in
    /// [`TaskResult`], so that every step's future stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<JobProgress>>,
}

/// What a task step returns to the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    /// False when the chunk was cancelled or already recorded: the rest is skipped.
    pub active: bool,
    /// Items the task was given.
    pub processed: usize,
    /// Items the task failed.
    pub failed: usize,
    /// Set while the task's external job runs, or after its attempt failed. Boxed: a task
    /// result travels through every step's future, and most have no job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<JobProgress>>,
}

/// The error a Catch rule hands to the update step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtError {
    /// The error name (`Error` of the state machine's error output).
    #[serde(rename = "Error")]
    pub error: String,
    /// The error's cause (`Cause`), possibly a JSON document.
    #[serde(rename = "Cause", default)]
    pub cause: String,
}

impl CaughtError {
    /// The message the chunk's unfinished items fail with. Lambda wraps a function's error in a
    /// JSON `Cause` (`{"errorMessage": ...}`); the message is inside it.
    pub(crate) fn item_message(&self) -> String {
        let message = serde_json::from_str::<serde_json::Value>(&self.cause)
            .ok()
            .and_then(|cause| {
                cause
                    .get("errorMessage")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.cause.clone());
        let message_alone = [TRANSIENT_TASK_ERROR, JOB_TIMED_OUT, BATCH_CANCELLED];
        if message_alone.contains(&self.error.as_str()) && !message.is_empty() {
            message
        } else if message.is_empty() {
            self.error.clone()
        } else {
            format!("{}: {message}", self.error)
        }
    }
}

/// The event of the update states (`RecordChunk`, `RecordChunkFailure`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateEvent {
    /// The chunk's batch.
    pub batch_id: String,
    /// The chunk's index in its batch, from 0.
    pub chunk: u64,
    /// Set when a task's retries ran out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<CaughtError>,
}

/// What the update step returns: the batch as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateResult {
    /// The chunk's batch.
    pub batch_id: String,
    /// The chunk's index in its batch, from 0.
    pub chunk: u64,
    /// False when this chunk had been recorded before (a replayed event).
    pub recorded: bool,
    /// The batch's status after this update.
    pub batch_status: String,
}

/// A step's failure, named for the state machine.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The task failed transiently; retried by the state machine.
    #[error("{0}")]
    TransientTask(String),
    /// The store could not be reached.
    #[error("store unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// Stored data could not be read back.
    #[error("stored data is unreadable")]
    StoreCorrupt(#[source] StoreError),
    /// The event is not a valid step event.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The chunk is not in the store.
    #[error("chunk {chunk} of batch {batch_id} does not exist")]
    ChunkNotFound {
        /// The batch named by the event.
        batch_id: String,
        /// The chunk named by the event.
        chunk: u64,
    },
    /// The external job service failed or refused a request for now; retried.
    #[error("job service unavailable: {0}")]
    JobService(String),
    /// The external job runner cannot run this job as asked; not retried.
    #[error("job refused: {0}")]
    JobRefused(String),
    /// The chunk's job was stopped because its batch was cancelled.
    #[error("{}", super::job_steps::CANCELLED_MESSAGE)]
    BatchCancelled,
    /// A task returned a different number of outcomes than it was given items.
    #[error("task returned {returned} outcomes for {expected} items")]
    TaskContractViolation {
        /// The items the task was given.
        expected: usize,
        /// The outcomes it returned.
        returned: usize,
    },
}

impl StepError {
    /// The stable error name Retry/Catch rules match.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::TransientTask(_) => TRANSIENT_TASK_ERROR,
            Self::StoreUnavailable(_) => "BatchManager.StoreUnavailable",
            Self::StoreCorrupt(_) => "BatchManager.StoreCorrupt",
            Self::InvalidEvent(_) => "BatchManager.InvalidEvent",
            Self::ChunkNotFound { .. } => "BatchManager.ChunkNotFound",
            Self::TaskContractViolation { .. } => "BatchManager.TaskContractViolation",
            Self::JobService(_) => "BatchManager.JobServiceUnavailable",
            Self::JobRefused(_) => "BatchManager.JobRefused",
            Self::BatchCancelled => BATCH_CANCELLED,
        }
    }

    /// The message shown to the state machine (and, for task errors, to the items). Store
    /// details stay in the logs.
    pub fn cause(&self) -> String {
        self.to_string()
    }
}

impl From<StoreError> for StepError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::StoreUnavailable(err),
            StoreError::Corrupt(_) => Self::StoreCorrupt(err),
        }
    }
}

fn parse_batch_id(raw: &str) -> Result<BatchId, StepError> {
    BatchId::parse(raw).map_err(|err| StepError::InvalidEvent(err.to_string()))
}

/// What one execution's steps hand on to its next steps when the embedded engine runs them in
/// one process; empty after a restart, and always on Lambda, where each step reads the store.
#[derive(Debug, Default)]
pub(crate) struct KeptChunk {
    /// The chunk as task 1 left it, for task 2: a claimed chunk changes only through its own
    /// execution's steps, so task 2 need not read it again.
    chunk: Option<Chunk>,
    /// Task 2's outcomes, not yet saved: the update step saves them with its count, in one
    /// write. Until then the execution is journaled before task 2, so a crash runs task 2 again.
    deferred: Option<DeferredOutcomes>,
}

/// Task 2's outcomes for one chunk, waiting for the update step.
#[derive(Debug)]
struct DeferredOutcomes {
    batch_id: BatchId,
    chunk: u64,
    outcomes: Vec<(usize, ItemOutcome)>,
    attempts: u32,
}

impl KeptChunk {
    /// Whether task 2's outcomes wait to be saved by the update step.
    pub(crate) fn has_deferred(&self) -> bool {
        self.deferred.is_some()
    }
}

/// The steps, bound to a store and the user's tasks.
#[derive(Clone)]
pub struct Steps {
    pub(super) store: Arc<dyn BatchStore>,
    tasks: Tasks,
    pub(super) jobs: JobRunners,
}

impl Steps {
    /// The steps over this store, running these tasks.
    pub fn new(store: Arc<dyn BatchStore>, tasks: Tasks) -> Self {
        Self {
            store,
            tasks,
            jobs: JobRunners::default(),
        }
    }

    /// These steps, with external jobs for the tasks `jobs` names a runner for.
    pub fn with_jobs(mut self, jobs: JobRunners) -> Self {
        self.jobs = jobs;
        self
    }

    /// Whether task 2 is an external job (run requests need one).
    pub fn task2_is_external(&self) -> bool {
        self.jobs.task2.is_some()
    }

    /// Task 1: claims the chunk (a claimed chunk is no longer cancellable), runs the user's
    /// task 1 on its pending items and saves the failures; the rest go on to task 2.
    pub async fn task1(&self, event: TaskEvent) -> Result<TaskResult, StepError> {
        self.task1_keeping(event, &mut KeptChunk::default()).await
    }

    /// Task 1, keeping the chunk as it leaves it (failures applied) for the same execution's
    /// task 2. The external job steps are boxed: inline, their large futures would make every
    /// step's future over a kilobyte, which the allocator serves far more slowly (measured at
    /// batch size 10: about 5% of the engine's throughput).
    pub(crate) async fn task1_keeping(
        &self,
        event: TaskEvent,
        kept: &mut KeptChunk,
    ) -> Result<TaskResult, StepError> {
        let batch_id = parse_batch_id(&event.batch_id)?;
        let runner = self.jobs.task1.clone();
        if let (Some(runner), Some(progress)) = (&runner, &event.job) {
            kept.chunk = None;
            return Box::pin(self.poll_job(
                TaskName::Task1,
                &**runner,
                &batch_id,
                &event,
                progress,
            ))
            .await;
        }
        let chunk = match self.store.claim_chunk(&batch_id, event.chunk).await? {
            ChunkClaim::Active(chunk) => chunk,
            ChunkClaim::Inactive => return Ok(TaskResult::inactive()),
            ChunkClaim::NotFound => return Err(not_found(&event)),
        };
        if let Some(runner) = &runner {
            // The job's outcomes reach the store only: task 2 reads the chunk from there.
            kept.chunk = None;
            return Box::pin(self.submit_job(TaskName::Task1, &**runner, &batch_id, &chunk)).await;
        }
        let (positions, items) = pending_items(&chunk.items, &chunk.states);
        let outcomes = self
            .run_task(&*self.tasks.task1, &batch_id, &event, &items)
            .await?;
        let failures: Vec<(usize, ItemOutcome)> = positions
            .into_iter()
            .zip(outcomes)
            .filter(|(_, outcome)| matches!(outcome, ItemOutcome::Failed(_)))
            .collect();
        let attempts = event.attempt + 1;
        // Successes stay pending for task 2; a clean first attempt has nothing to save.
        if !failures.is_empty() || attempts > chunk.attempts.max(1) {
            self.store
                .save_outcomes(&batch_id, event.chunk, &failures, attempts)
                .await?;
        }
        let result = TaskResult {
            active: true,
            processed: items.len(),
            failed: failures.len(),
            job: None,
        };
        let mut chunk = chunk;
        for (position, outcome) in failures {
            chunk.states[position] = ItemState::from(outcome);
        }
        kept.chunk = Some(chunk);
        Ok(result)
    }

    /// Task 2: runs the user's task 2 on the items task 1 left pending and saves every outcome.
    pub async fn task2(&self, event: TaskEvent) -> Result<TaskResult, StepError> {
        self.task2_with(event, &mut KeptChunk::default()).await
    }

    /// Task 2 on the chunk task 1 kept, when it is this event's chunk, leaving the outcomes in
    /// `kept` for the update step; otherwise on the chunk as stored, saving the outcomes.
    pub(crate) async fn task2_with(
        &self,
        event: TaskEvent,
        kept: &mut KeptChunk,
    ) -> Result<TaskResult, StepError> {
        let batch_id = parse_batch_id(&event.batch_id)?;
        kept.deferred = None;
        let runner = self.jobs.task2.clone();
        if let (Some(runner), Some(progress)) = (&runner, &event.job) {
            kept.chunk = None;
            return Box::pin(self.poll_job(
                TaskName::Task2,
                &**runner,
                &batch_id,
                &event,
                progress,
            ))
            .await;
        }
        let (chunk, from_task1) = match kept.chunk.take() {
            Some(chunk) if chunk.batch_id == batch_id && chunk.index == event.chunk => {
                (chunk, true)
            }
            _ => match self.store.load_chunk(&batch_id, event.chunk).await? {
                Some(chunk) => (chunk, false),
                None => return Err(not_found(&event)),
            },
        };
        if !chunk.stage.is_open() {
            return Ok(TaskResult::inactive());
        }
        if let Some(runner) = &runner {
            return Box::pin(self.submit_job(TaskName::Task2, &**runner, &batch_id, &chunk)).await;
        }
        let (positions, items) = pending_items(&chunk.items, &chunk.states);
        let outcomes = self
            .run_task(&*self.tasks.task2, &batch_id, &event, &items)
            .await?;
        let failed = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, ItemOutcome::Failed(_)))
            .count();
        let outcomes: Vec<(usize, ItemOutcome)> = positions.into_iter().zip(outcomes).collect();
        let attempts = event.attempt + 1;
        if from_task1 {
            kept.deferred = Some(DeferredOutcomes {
                batch_id,
                chunk: event.chunk,
                outcomes,
                attempts,
            });
        } else {
            self.store
                .save_outcomes(&batch_id, event.chunk, &outcomes, attempts)
                .await?;
        }
        Ok(TaskResult {
            active: true,
            processed: items.len(),
            failed,
            job: None,
        })
    }

    /// Update: counts the chunk's outcomes into its batch, once.
    pub async fn update(&self, event: UpdateEvent) -> Result<UpdateResult, StepError> {
        self.update_with(event, &mut KeptChunk::default()).await
    }

    /// Update, saving first the task 2 outcomes `kept` holds for this chunk, in the same write.
    pub(crate) async fn update_with(
        &self,
        event: UpdateEvent,
        kept: &mut KeptChunk,
    ) -> Result<UpdateResult, StepError> {
        let batch_id = parse_batch_id(&event.batch_id)?;
        let failure = event.failure.as_ref().map(CaughtError::item_message);
        let unfinished = match &event.failure {
            // A job stopped by a cancel leaves its items cancelled, not failed.
            Some(caught) if caught.error == BATCH_CANCELLED => Unfinished::Cancelled,
            _ => Unfinished::Failed(failure.as_deref()),
        };
        let outcome = match &kept.deferred {
            Some(deferred) if deferred.batch_id == batch_id && deferred.chunk == event.chunk => {
                let outcome = self
                    .store
                    .save_outcomes_and_record(
                        &batch_id,
                        event.chunk,
                        &deferred.outcomes,
                        deferred.attempts,
                        unfinished,
                    )
                    .await?;
                kept.deferred = None;
                outcome
            }
            _ => {
                self.store
                    .record_chunk(&batch_id, event.chunk, unfinished)
                    .await?
            }
        };
        let (batch, recorded) = match outcome {
            RecordOutcome::Recorded(batch, tally) => {
                crate::metrics::global().items_recorded(&tally);
                (batch, true)
            }
            RecordOutcome::AlreadyRecorded(batch) => (batch, false),
            RecordOutcome::NotFound => {
                return Err(StepError::ChunkNotFound {
                    batch_id: event.batch_id,
                    chunk: event.chunk,
                })
            }
        };
        Ok(UpdateResult {
            batch_id: event.batch_id,
            chunk: event.chunk,
            recorded,
            batch_status: batch.status.as_str().to_owned(),
        })
    }
}

impl Steps {
    /// Saves task 2's outcomes that `kept` holds, for an execution whose next step is not the
    /// update. They leave `kept` either way: when the save fails, task 2 runs again.
    pub(crate) async fn save_deferred(&self, kept: &mut KeptChunk) -> Result<(), StepError> {
        if let Some(deferred) = kept.deferred.take() {
            self.store
                .save_outcomes(
                    &deferred.batch_id,
                    deferred.chunk,
                    &deferred.outcomes,
                    deferred.attempts,
                )
                .await?;
        }
        Ok(())
    }

    /// Runs a user task on the pending items. A failed attempt is still counted in the chunk's
    /// attempts, so items that end failed show how often they were tried.
    async fn run_task(
        &self,
        task: &dyn ChunkTask,
        batch_id: &BatchId,
        event: &TaskEvent,
        items: &[ItemId],
    ) -> Result<Vec<ItemOutcome>, StepError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let input = TaskInput {
            batch_id,
            chunk: event.chunk,
            attempt: event.attempt,
            items,
        };
        let outcomes = match task.process(input).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                self.store
                    .save_outcomes(batch_id, event.chunk, &[], event.attempt + 1)
                    .await?;
                return Err(StepError::TransientTask(err.0));
            }
        };
        if outcomes.len() != items.len() {
            return Err(StepError::TaskContractViolation {
                expected: items.len(),
                returned: outcomes.len(),
            });
        }
        Ok(outcomes)
    }
}

impl TaskResult {
    fn inactive() -> Self {
        Self {
            active: false,
            processed: 0,
            failed: 0,
            job: None,
        }
    }
}

fn not_found(event: &TaskEvent) -> StepError {
    StepError::ChunkNotFound {
        batch_id: event.batch_id.clone(),
        chunk: event.chunk,
    }
}

pub(super) fn pending_items(items: &[ItemId], states: &[ItemState]) -> (Vec<usize>, Vec<ItemId>) {
    items
        .iter()
        .zip(states)
        .enumerate()
        .filter(|(_, (_, state))| **state == ItemState::Pending)
        .map(|(position, (item, _))| (position, item.clone()))
        .unzip()
}
