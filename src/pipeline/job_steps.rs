//! The steps of a task backed by an external job ([`JobRunner`]): the task's state submits
//! the job of the chunk's current attempt, once; the definition then waits and polls (the same
//! task resource, given `job`) until the job ends, its deadline passes or its batch is
//! cancelled.
//!
//! The chunk's job record ([`JobStore`](crate::store::JobStore)) is the truth about its job:
//! which task and attempt it is, the runner's handle, and how it ended. Every change to it is a
//! compare-and-set on the revision read, so:
//! - a submission is recorded (`SUBMITTING`) before the runner is asked, and only the step
//!   that recorded it submits; a step replayed after a crash between the two asks the runner
//!   again, which finds the job by its deterministic name instead of starting a second one;
//! - a retry after a failed attempt records the next attempt on the failed one's revision,
//!   so two replays of the retry still start one job;
//! - cancel marks the running records and stops their jobs; a step that finds its record
//!   marked stops the job and ends the chunk with `BatchManager.BatchCancelled`.
//!
//! What the state machine carries between polls is a small [`JobProgress`]; the items and the
//! handle stay in the store, so payloads stay small whatever the chunk size.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::jobs::{
    poll_interval_from, JobError, JobHandle, JobRunner, JobSpec, JobState, PollRequest, RunLabels,
    TaskName,
};
use super::steps::{pending_items, StepError, TaskEvent, TaskResult};
use super::Steps;
use crate::domain::{BatchId, ItemId, ItemOutcome, Timestamp};
use crate::store::{BatchStore, Chunk, JobWrite, StoreError};

/// Error name of an attempt whose job ran past its deadline.
pub(crate) const JOB_TIMED_OUT: &str = "BatchManager.JobTimedOut";
/// Error name of a chunk whose job was stopped because its batch was cancelled.
pub(crate) const BATCH_CANCELLED: &str = "BatchManager.BatchCancelled";
/// The reason a job stopped by a cancel is given, and the cause of `BatchManager.BatchCancelled`
/// (the chunk's unfinished items then end CANCELLED).
pub(crate) const CANCELLED_MESSAGE: &str = "the batch was cancelled while its job ran";
/// The default deadline of one attempt's job (`serve --task-timeout`).
pub const DEFAULT_JOB_DEADLINE: Duration = Duration::from_secs(3600);
/// Compare-and-set rounds before a contended job record is reported as unavailable.
const RECORD_ROUNDS: usize = 8;
/// The longest wait before the retry of a failed attempt.
const MAX_RETRY_WAIT_SECONDS: u64 = 60;

/// The external job runners of the two tasks (none: the built-in task runs) and their timings.
#[derive(Clone)]
pub struct JobRunners {
    /// Task 1's runner, if task 1 is an external job.
    pub task1: Option<Arc<dyn JobRunner>>,
    /// Task 2's runner, if task 2 is an external job.
    pub task2: Option<Arc<dyn JobRunner>>,
    /// How long one attempt's job may run before it is stopped and the attempt fails.
    pub deadline: Duration,
    /// The first wait between two polls of a job; it doubles with every poll, up to a minute.
    pub first_poll_interval: Duration,
}

impl Default for JobRunners {
    fn default() -> Self {
        Self {
            task1: None,
            task2: None,
            deadline: DEFAULT_JOB_DEADLINE,
            first_poll_interval: super::jobs::FIRST_POLL_INTERVAL,
        }
    }
}

impl JobRunners {
    /// The runner of `task`, if it is an external job.
    pub fn runner(&self, task: TaskName) -> Option<&Arc<dyn JobRunner>> {
        match task {
            TaskName::Task1 => self.task1.as_ref(),
            TaskName::Task2 => self.task2.as_ref(),
        }
    }
}

/// Where a job stands, as the state machine sees it (`$.task1.job`, `$.task2.job`): the
/// definition waits `waitSeconds` and polls again while it is `RUNNING`; a `FAILED` attempt
/// is tried again after `retryWaitSeconds` while `attempt` is below the definition's limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// The job's name, for people reading the execution.
    pub name: String,
    /// The attempt the job belongs to (0 first).
    pub attempt: u32,
    /// `RUNNING` or `FAILED`.
    pub status: ProgressStatus,
    /// Polls made so far.
    pub polls: u32,
    /// Seconds to wait before the next poll.
    pub wait_seconds: u64,
    /// Seconds to wait before the next attempt (`FAILED` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_wait_seconds: Option<u64>,
    /// The failed attempt's error name (`FAILED` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failed attempt's reason (`FAILED` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A job's status as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProgressStatus {
    /// Submitted, not ended: wait and poll again.
    Running,
    /// The attempt failed: try again, or fail the chunk's unfinished items.
    Failed,
}

/// A chunk's job record, stored as JSON by the [`JobStore`](crate::store::JobStore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobRecord {
    task: TaskName,
    attempt: u32,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handle: Option<JobHandle>,
    /// When the attempt was recorded, in microseconds since the epoch.
    submitted_at: i64,
    deadline_seconds: u64,
    #[serde(flatten)]
    status: RecordStatus,
    /// Set by a cancel: the job is to be stopped and the chunk ended.
    #[serde(default)]
    cancelled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
enum RecordStatus {
    /// Recorded; the runner may not have the job yet.
    Submitting,
    /// The runner has the job (`handle`).
    Running,
    /// The job ended and its outcomes are saved.
    Succeeded { processed: usize, failed: usize },
    /// The attempt failed.
    Failed { error: String, reason: String },
}

/// A batch's job settings, stored as JSON by the [`JobStore`](crate::store::JobStore): a run
/// request's labels, and whether a cancel stopped the batch's jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub stopped: bool,
}

impl JobSettings {
    fn labels(&self) -> RunLabels {
        RunLabels {
            process_name: self.process_name.clone(),
            client_name: self.client_name.clone(),
        }
    }
}

/// What an edit of a job record does with the record read.
enum Edit<T> {
    /// Write the edited record (on the revision read), then answer this.
    Write(T),
    /// Write nothing; answer this.
    Leave(T),
}

/// A job record as read, with the revision a replacement must name.
struct ReadRecord {
    record: JobRecord,
    revision: u64,
}

fn corrupt(what: &str, err: serde_json::Error) -> StepError {
    StepError::StoreCorrupt(StoreError::Corrupt(format!("{what}: {err}")))
}

fn job_error(err: JobError) -> StepError {
    match err {
        JobError::Service(message) => StepError::JobService(message),
        other => StepError::JobRefused(other.to_string()),
    }
}

async fn load_record(
    store: &dyn BatchStore,
    batch_id: &BatchId,
    chunk: u64,
) -> Result<Option<ReadRecord>, StepError> {
    let Some(stored) = store.load_job(batch_id, chunk).await? else {
        return Ok(None);
    };
    let record = serde_json::from_str(&stored.record).map_err(|e| corrupt("job record", e))?;
    Ok(Some(ReadRecord {
        record,
        revision: stored.revision,
    }))
}

/// Replaces the record read as `read` (None: no record); false when another writer came first.
async fn put_record(
    store: &dyn BatchStore,
    batch_id: &BatchId,
    chunk: u64,
    record: &JobRecord,
    read: Option<u64>,
) -> Result<Option<u64>, StepError> {
    let json = serde_json::to_string(record).map_err(|e| corrupt("job record", e))?;
    Ok(match store.put_job(batch_id, chunk, &json, read).await? {
        JobWrite::Written(revision) => Some(revision),
        JobWrite::Superseded => None,
    })
}

/// A batch's job settings (defaults when it has none).
pub(crate) async fn load_settings(
    store: &dyn BatchStore,
    batch_id: &BatchId,
) -> Result<JobSettings, StepError> {
    match store.load_job_settings(batch_id).await? {
        Some(json) => serde_json::from_str(&json).map_err(|e| corrupt("job settings", e)),
        None => Ok(JobSettings::default()),
    }
}

fn seconds_since(micros: i64) -> u64 {
    let elapsed = Timestamp::now().0.saturating_sub(micros).max(0);
    (elapsed / 1_000_000) as u64
}

fn retry_wait_seconds(attempt: u32) -> u64 {
    1u64.checked_shl(attempt.min(16))
        .unwrap_or(u64::MAX)
        .min(MAX_RETRY_WAIT_SECONDS)
}

fn timed_out_reason(deadline_seconds: u64) -> String {
    format!("timed out after {deadline_seconds} s")
}

impl JobRecord {
    fn progress(&self, polls: u32, wait_seconds: u64) -> JobProgress {
        let (status, retry_wait_seconds, error, reason) = match &self.status {
            RecordStatus::Failed { error, reason } => (
                ProgressStatus::Failed,
                Some(retry_wait_seconds(self.attempt)),
                Some(error.clone()),
                Some(reason.clone()),
            ),
            _ => (ProgressStatus::Running, None, None, None),
        };
        JobProgress {
            name: self.name.clone(),
            attempt: self.attempt,
            status,
            polls,
            wait_seconds,
            retry_wait_seconds,
            error,
            reason,
        }
    }
}

fn running_result(processed: usize, progress: JobProgress) -> TaskResult {
    TaskResult {
        active: true,
        processed,
        failed: 0,
        job: Some(Box::new(progress)),
    }
}

fn finished_result(processed: usize, failed: usize) -> TaskResult {
    TaskResult {
        active: true,
        processed,
        failed,
        job: None,
    }
}

impl Steps {
    /// The first wait before polling a job, and the wait after `polls` polls, never past the
    /// attempt's deadline by more than a second.
    fn next_wait(&self, polls: u32, record: &JobRecord) -> u64 {
        let interval = poll_interval_from(self.jobs.first_poll_interval, polls).as_secs();
        let left = record
            .deadline_seconds
            .saturating_sub(seconds_since(record.submitted_at));
        interval.min(left + 1).max(1)
    }

    /// A task state's first step for an external job: submits the job of the chunk's current
    /// attempt (once), or reports the job already recorded for it.
    pub(crate) async fn submit_job(
        &self,
        task: TaskName,
        runner: &dyn JobRunner,
        batch_id: &BatchId,
        chunk: &Chunk,
    ) -> Result<TaskResult, StepError> {
        let (_, items) = pending_items(&chunk.items, &chunk.states);
        if items.is_empty() {
            return Ok(finished_result(0, 0));
        }
        let store = &*self.store;
        for _ in 0..RECORD_ROUNDS {
            let read = load_record(store, batch_id, chunk.index).await?;
            let attempt = match &read {
                Some(ReadRecord { record, .. }) if record.task == task => {
                    if record.cancelled {
                        return Err(StepError::BatchCancelled);
                    }
                    match &record.status {
                        RecordStatus::Submitting => record.attempt,
                        RecordStatus::Running => {
                            let wait = self.next_wait(0, record);
                            return Ok(running_result(items.len(), record.progress(0, wait)));
                        }
                        RecordStatus::Succeeded { processed, failed } => {
                            return Ok(finished_result(*processed, *failed));
                        }
                        RecordStatus::Failed { .. } => record.attempt + 1,
                    }
                }
                _ => 0,
            };
            let settings = load_settings(store, batch_id).await?;
            // A redriven chunk's jobs count on from its earlier runs', so that no job is
            // named like one of theirs (a job is found again by its name).
            let spec = JobSpec {
                batch_id: batch_id.clone(),
                chunk: chunk.index,
                attempt: attempt + chunk.earlier_attempts,
                task,
                items: items.clone(),
                labels: settings.labels(),
            };
            let revision = match read {
                Some(ReadRecord { record, revision })
                    if record.task == task
                        && record.attempt == attempt
                        && record.status == RecordStatus::Submitting =>
                {
                    revision
                }
                read => {
                    let intent = JobRecord {
                        task,
                        attempt,
                        name: spec.name(),
                        handle: None,
                        submitted_at: Timestamp::now().0,
                        deadline_seconds: self.jobs.deadline.as_secs().max(1),
                        status: RecordStatus::Submitting,
                        cancelled: false,
                    };
                    let read_revision = read.map(|read| read.revision);
                    match put_record(store, batch_id, chunk.index, &intent, read_revision).await? {
                        Some(revision) => revision,
                        None => continue,
                    }
                }
            };
            // Read after the intent is recorded: a cancel that came before sees the record or
            // is seen here.
            if load_settings(store, batch_id).await?.stopped {
                self.mark_cancelled(batch_id, chunk.index, None).await?;
                return Err(StepError::BatchCancelled);
            }
            let handle = runner.submit(&spec).await.map_err(job_error)?;
            return self
                .record_submitted(batch_id, chunk.index, revision, handle, items.len())
                .await;
        }
        Err(contended(batch_id, chunk.index))
    }

    /// Records the handle of a job just submitted on the intent at `revision`.
    async fn record_submitted(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        revision: u64,
        handle: JobHandle,
        processed: usize,
    ) -> Result<TaskResult, StepError> {
        // Ok: the record now holding the job; Err: its task, when a cancel marked it.
        let recorded = self
            .edit_record(batch_id, chunk, |record, read| {
                if record.cancelled {
                    Edit::Leave(Err(record.task))
                } else if read != revision {
                    // Another delivery of this step recorded the same job (same name) first.
                    Edit::Leave(Ok(record.clone()))
                } else {
                    record.handle = Some(handle.clone());
                    record.status = RecordStatus::Running;
                    Edit::Write(Ok(record.clone()))
                }
            })
            .await?
            .ok_or_else(|| contended(batch_id, chunk))?;
        match recorded {
            Ok(record) => {
                let wait = self.next_wait(0, &record);
                Ok(running_result(processed, record.progress(0, wait)))
            }
            Err(task) => {
                self.stop_quietly(task, &handle, CANCELLED_MESSAGE).await;
                self.mark_cancelled(batch_id, chunk, Some(handle)).await?;
                Err(StepError::BatchCancelled)
            }
        }
    }

    /// A poll of the chunk's job (the task state's step given `job`).
    pub(crate) async fn poll_job(
        &self,
        task: TaskName,
        runner: &dyn JobRunner,
        batch_id: &BatchId,
        event: &TaskEvent,
        progress: &JobProgress,
    ) -> Result<TaskResult, StepError> {
        let store = &*self.store;
        for _ in 0..RECORD_ROUNDS {
            let Some(ReadRecord { record, revision }) =
                load_record(store, batch_id, event.chunk).await?
            else {
                return Err(StepError::InvalidEvent(format!(
                    "no job is recorded for chunk {} of batch {batch_id}",
                    event.chunk
                )));
            };
            if record.task != task || record.attempt != progress.attempt {
                return Err(StepError::InvalidEvent(format!(
                    "job {} is not the chunk's current job",
                    progress.name
                )));
            }
            let polls = progress.polls.saturating_add(1);
            let handle = match (&record.status, &record.handle) {
                (RecordStatus::Succeeded { processed, failed }, _) => {
                    return Ok(finished_result(*processed, *failed))
                }
                (RecordStatus::Failed { .. }, _) => {
                    return Ok(running_result(0, record.progress(polls, 0)))
                }
                (RecordStatus::Running, Some(handle)) => Some(handle.clone()),
                _ => None,
            };
            if let (Some(handle), true) = (&handle, record.cancelled) {
                self.stop_quietly(task, handle, CANCELLED_MESSAGE).await;
                self.mark_cancelled(batch_id, event.chunk, None).await?;
                return Err(StepError::BatchCancelled);
            }
            let chunk = self
                .store
                .load_chunk(batch_id, event.chunk)
                .await?
                .ok_or_else(|| StepError::ChunkNotFound {
                    batch_id: event.batch_id.clone(),
                    chunk: event.chunk,
                })?;
            let Some(handle) = handle else {
                // A submission not finished yet (or cut short): the submit step finishes it.
                return self.submit_job(task, runner, batch_id, &chunk).await;
            };
            let (positions, items) = pending_items(&chunk.items, &chunk.states);
            if seconds_since(record.submitted_at) >= record.deadline_seconds {
                let reason = timed_out_reason(record.deadline_seconds);
                self.stop_quietly(task, &handle, &reason).await;
                let failed = self
                    .fail_attempt(
                        batch_id,
                        event.chunk,
                        record,
                        revision,
                        JOB_TIMED_OUT,
                        reason,
                    )
                    .await?;
                match failed {
                    Some(result) => return Ok(result),
                    None => continue,
                }
            }
            let request = PollRequest {
                handle: &handle,
                items: &items,
            };
            let state = runner
                .poll(&[request])
                .await
                .map_err(job_error)?
                .pop()
                .unwrap_or(JobState::Lost);
            let done = match state {
                JobState::Running => {
                    let wait = self.next_wait(polls, &record);
                    return Ok(running_result(items.len(), record.progress(polls, wait)));
                }
                JobState::Succeeded { item_failures } => {
                    let failures: HashMap<ItemId, String> = item_failures
                        .into_iter()
                        .map(|failure| (failure.item_id, failure.message))
                        .collect();
                    let finished = FinishedJob {
                        record: &record,
                        revision,
                        positions,
                        items,
                        failures,
                    };
                    self.job_succeeded(batch_id, event.chunk, finished).await?
                }
                JobState::Failed { reason } => {
                    self.fail_attempt(
                        batch_id,
                        event.chunk,
                        record,
                        revision,
                        super::steps::TRANSIENT_TASK_ERROR,
                        reason,
                    )
                    .await?
                }
                JobState::Lost => {
                    // The runner forgot the job (a restarted server's command): run the
                    // attempt again under the same record.
                    let mut resubmitting = record;
                    resubmitting.status = RecordStatus::Submitting;
                    resubmitting.handle = None;
                    if put_record(store, batch_id, event.chunk, &resubmitting, Some(revision))
                        .await?
                        .is_none()
                    {
                        continue;
                    }
                    return self.submit_job(task, runner, batch_id, &chunk).await;
                }
            };
            match done {
                Some(result) => return Ok(result),
                None => continue,
            }
        }
        Err(contended(batch_id, event.chunk))
    }

    /// Saves a finished job's outcomes (task 1: its failures; task 2: every item's) and
    /// records its end; None when the record changed meanwhile.
    async fn job_succeeded(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        finished: FinishedJob<'_>,
    ) -> Result<Option<TaskResult>, StepError> {
        let FinishedJob {
            record,
            revision,
            positions,
            items,
            mut failures,
        } = finished;
        let task = record.task;
        let processed = items.len();
        let outcomes: Vec<(usize, ItemOutcome)> = positions
            .into_iter()
            .zip(items)
            .filter_map(|(position, item)| match failures.remove(&item) {
                Some(message) => Some((position, ItemOutcome::Failed(message))),
                None if task == TaskName::Task2 => Some((position, ItemOutcome::Succeeded)),
                None => None,
            })
            .collect();
        let failed = outcomes
            .iter()
            .filter(|(_, outcome)| matches!(outcome, ItemOutcome::Failed(_)))
            .count();
        self.store
            .save_outcomes(batch_id, chunk, &outcomes, record.attempt + 1)
            .await?;
        let mut ended = record.clone();
        ended.status = RecordStatus::Succeeded { processed, failed };
        Ok(
            put_record(&*self.store, batch_id, chunk, &ended, Some(revision))
                .await?
                .map(|_| finished_result(processed, failed)),
        )
    }

    /// Records a failed attempt (counted in the chunk's attempts) and reports it to the
    /// definition; None when the record changed meanwhile.
    async fn fail_attempt(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        record: JobRecord,
        revision: u64,
        error: &str,
        reason: String,
    ) -> Result<Option<TaskResult>, StepError> {
        self.store
            .save_outcomes(batch_id, chunk, &[], record.attempt + 1)
            .await?;
        let mut failed = record;
        failed.status = RecordStatus::Failed {
            error: error.to_owned(),
            reason,
        };
        Ok(
            put_record(&*self.store, batch_id, chunk, &failed, Some(revision))
                .await?
                .map(|_| running_result(0, failed.progress(0, 0))),
        )
    }

    /// Ends the chunk's job record as cancelled (its job stopped), whatever it held.
    async fn mark_cancelled(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        handle: Option<JobHandle>,
    ) -> Result<(), StepError> {
        self.edit_record(batch_id, chunk, |record, _| {
            if record.cancelled && matches!(record.status, RecordStatus::Failed { .. }) {
                return Edit::Leave(());
            }
            record.cancelled = true;
            if handle.is_some() {
                record.handle = handle.clone();
            }
            record.status = RecordStatus::Failed {
                error: BATCH_CANCELLED.to_owned(),
                reason: CANCELLED_MESSAGE.to_owned(),
            };
            Edit::Write(())
        })
        .await?;
        Ok(())
    }

    /// Reads the chunk's job record, lets `edit` change it, and writes it back on the revision
    /// read, reading again when another writer came first; None when there is no record.
    async fn edit_record<T>(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        mut edit: impl FnMut(&mut JobRecord, u64) -> Edit<T>,
    ) -> Result<Option<T>, StepError> {
        let store = &*self.store;
        for _ in 0..RECORD_ROUNDS {
            let Some(ReadRecord {
                mut record,
                revision,
            }) = load_record(store, batch_id, chunk).await?
            else {
                return Ok(None);
            };
            match edit(&mut record, revision) {
                Edit::Leave(answer) => return Ok(Some(answer)),
                Edit::Write(answer) => {
                    if put_record(store, batch_id, chunk, &record, Some(revision))
                        .await?
                        .is_some()
                    {
                        return Ok(Some(answer));
                    }
                }
            }
        }
        Err(contended(batch_id, chunk))
    }

    /// Asks the runner to stop a job; a failure is logged (the job's own end, or its deadline
    /// on the runner's side, still ends it).
    async fn stop_quietly(&self, task: TaskName, handle: &JobHandle, reason: &str) {
        let Some(runner) = self.jobs.runner(task) else {
            return;
        };
        if let Err(err) = runner.stop(handle, reason).await {
            tracing::warn!(job = %handle.name, error = %err, "could not stop a job");
        }
    }

    /// Stops the running jobs of a cancelled batch: marks the batch's job settings stopped
    /// (so no job starts after this), then every running job record cancelled, then asks the
    /// runners to stop those jobs. Returns how many jobs were asked to stop.
    pub(crate) async fn stop_batch_jobs(&self, batch_id: &BatchId) -> Result<usize, StepError> {
        if self.jobs.task1.is_none() && self.jobs.task2.is_none() {
            return Ok(0);
        }
        let store = &*self.store;
        let mut settings = load_settings(store, batch_id).await?;
        if !settings.stopped {
            settings.stopped = true;
            let json = serde_json::to_string(&settings).map_err(|e| corrupt("job settings", e))?;
            store.put_job_settings(batch_id, &json).await?;
        }
        let mut stopped = 0;
        for (chunk, stored) in store.list_jobs(batch_id).await? {
            let record: JobRecord =
                serde_json::from_str(&stored.record).map_err(|e| corrupt("job record", e))?;
            if !matches!(
                record.status,
                RecordStatus::Submitting | RecordStatus::Running
            ) || record.cancelled
            {
                continue;
            }
            let handle = self.mark_for_cancel(batch_id, chunk).await?;
            if let Some(handle) = handle {
                self.stop_quietly(record.task, &handle, CANCELLED_MESSAGE)
                    .await;
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Sets the cancelled mark on a chunk's running record; returns its job's handle.
    async fn mark_for_cancel(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<JobHandle>, StepError> {
        let handle = self
            .edit_record(batch_id, chunk, |record, _| {
                if !matches!(
                    record.status,
                    RecordStatus::Submitting | RecordStatus::Running
                ) {
                    return Edit::Leave(None);
                }
                record.cancelled = true;
                Edit::Write(record.handle.clone())
            })
            .await?;
        Ok(handle.flatten())
    }
}

/// A job that ended well, with the items it was given (and their positions in the chunk).
struct FinishedJob<'a> {
    record: &'a JobRecord,
    revision: u64,
    positions: Vec<usize>,
    items: Vec<ItemId>,
    failures: HashMap<ItemId, String>,
}

fn contended(batch_id: &BatchId, chunk: u64) -> StepError {
    StepError::StoreUnavailable(StoreError::Unavailable(format!(
        "the job record of chunk {chunk} of batch {batch_id} is contended"
    )))
}
