//! Running one chunk execution: stepping the interpreter, journaling the cursor before each
//! Task or Wait state, and binding Task resources to the pipeline steps.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::asl::{Cursor, ExecutionContext, Step, TaskFailure, TaskInvoker};
use super::{Shared, TASK1_RESOURCE, TASK2_RESOURCE, UPDATE_RESOURCE};
use crate::domain::Timestamp;
use crate::pipeline::dispatch::{self, StepRole};
use crate::pipeline::steps::{KeptChunk, StepError};
use crate::pipeline::Steps;
use crate::store::journal::{
    ExecutionEnd, ExecutionKey, JournalEntry, JournalPosition, JournalReceipt, Runnable,
};

/// Name the context object gives the state machine.
const STATE_MACHINE_NAME: &str = "batch-manager-chunks";
/// Store failures of steps are logged at most this often, as one line with their count.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// An execution paged in, waiting for a worker.
#[derive(Debug)]
pub(super) struct Work {
    pub key: ExecutionKey,
    pub position: JournalPosition,
    /// The journaled cursor (JSON), or None to start from the beginning.
    pub cursor: Option<String>,
    pub started_at: Timestamp,
}

impl From<Runnable> for Work {
    fn from(runnable: Runnable) -> Self {
        Self {
            key: runnable.key,
            position: runnable.position,
            cursor: runnable.cursor,
            started_at: runnable.started_at.unwrap_or_else(Timestamp::now),
        }
    }
}

/// How a worker let go of an execution.
pub(super) enum Settled {
    /// It ended; the receipt resolves once its end is journaled.
    Ended(JournalReceipt),
    /// It sleeps until `wake_at`; the receipt resolves once that is journaled.
    Slept {
        receipt: JournalReceipt,
        wake_at: Timestamp,
    },
    /// The engine is stopping; the execution resumes from its journal on the next start.
    Stopped,
}

fn execution_input(key: &ExecutionKey) -> Value {
    json!({ "batchId": key.batch_id.as_str(), "chunk": key.chunk })
}

fn first_cursor(shared: &Shared, work: &Work) -> Cursor {
    let start = || shared.machine.start(execution_input(&work.key));
    let Some(json) = &work.cursor else {
        return start();
    };
    serde_json::from_str(json).unwrap_or_else(|err| {
        // Every step is idempotent, so running the execution again from the start is safe.
        tracing::warn!(execution = %work.key.name(), error = %err, "journaled cursor is unreadable; restarting the execution");
        start()
    })
}

fn running(cursor: &Cursor, wake_at: Option<Timestamp>, started_at: Timestamp) -> JournalEntry {
    JournalEntry::Running {
        cursor: serde_json::to_string(cursor).unwrap_or_default(),
        wake_at,
        started_at,
    }
}

/// Runs an execution until it ends, sleeps or the engine stops.
pub(super) async fn run(shared: &Shared, work: Work) -> Settled {
    let metrics = crate::metrics::global();
    let _in_flight = metrics.execution_in_flight();
    if work.cursor.is_none() {
        metrics.execution_started();
    }
    let mut cursor = first_cursor(shared, &work);
    let Work {
        key,
        position,
        started_at,
        ..
    } = work;
    let context = ExecutionContext::new(
        key.name(),
        execution_input(&key),
        started_at.to_rfc3339(),
        STATE_MACHINE_NAME,
    );
    let invoker = StepInvoker {
        steps: &shared.steps,
        kept: Mutex::new(KeptChunk::default()),
    };
    // Where a crash would resume this execution: what was last journaled, or its start.
    let mut fallback = cursor.clone();
    loop {
        if *shared.stopping.borrow() {
            return Settled::Stopped;
        }
        match shared.machine.step(cursor, &context, &invoker).await {
            Step::Continue(next) => {
                let journaled = shared.journaled_states.contains(next.state());
                let mut deferred = invoker.holds_deferred();
                // Choice and Pass states between task 2 and the update write nothing, so the
                // outcomes wait through them; any other Task or a Wait saves them first.
                if deferred && journaled && !shared.update_states.contains(next.state()) {
                    if invoker.save_deferred().await.is_err() {
                        // Task 2 runs again from the store, as it would after a crash.
                        cursor = fallback.clone();
                        continue;
                    }
                    deferred = false;
                }
                // Task 2's unsaved outcomes are saved by the update's own write: until then
                // the execution stays journaled before task 2.
                if journaled && !deferred {
                    // Committed with the next state's own store write; nothing waits for it.
                    drop(
                        shared
                            .journal
                            .stage(&key, position, running(&next, None, started_at)),
                    );
                    fallback = next.clone();
                }
                cursor = next;
            }
            Step::Sleep { duration, then } => {
                let then = if invoker.holds_deferred() {
                    // The execution leaves memory: it sleeps where task 2 runs again.
                    fallback
                } else {
                    then
                };
                let wake_at = Timestamp(
                    Timestamp::now()
                        .0
                        .saturating_add(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)),
                );
                let receipt =
                    shared
                        .journal
                        .stage(&key, position, running(&then, Some(wake_at), started_at));
                return Settled::Slept { receipt, wake_at };
            }
            Step::Succeeded(_) | Step::Failed { .. }
                if invoker.holds_deferred() && invoker.save_deferred().await.is_err() =>
            {
                // An end reached without the update: task 2 runs again, as after a crash.
                cursor = fallback.clone();
            }
            Step::Succeeded(_) => {
                metrics.execution_finished(true);
                let end = JournalEntry::Ended(ExecutionEnd::Succeeded);
                return Settled::Ended(shared.journal.stage(&key, position, end));
            }
            Step::Failed { error, cause } => {
                tracing::warn!(execution = %key.name(), %error, %cause, "chunk execution failed");
                metrics.execution_finished(false);
                let end = JournalEntry::Ended(ExecutionEnd::Failed { error, cause });
                return Settled::Ended(shared.journal.stage(&key, position, end));
            }
        }
    }
}

/// Resolves the definition's Task resources to the pipeline steps, for one execution.
struct StepInvoker<'a> {
    steps: &'a Steps,
    /// The chunk task 1 claimed, for task 2.
    kept: Mutex<KeptChunk>,
}

/// Store failures of steps, logged as a summary: while the disk is full every step fails, and
/// a line per failure would compete for the last bytes.
struct FailureLog {
    state: Mutex<(Option<Instant>, u64)>,
}

static STORE_FAILURES: FailureLog = FailureLog {
    state: Mutex::new((None, 0)),
};

impl FailureLog {
    fn record(&self, err: &StepError) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (last, unlogged) = &mut *state;
        *unlogged += 1;
        if last.is_some_and(|at| at.elapsed() < FAILURE_LOG_INTERVAL) {
            return;
        }
        tracing::error!(error = ?err, failures = *unlogged, "chunk steps failed on the store; their Retry policy runs them again");
        *last = Some(Instant::now());
        *unlogged = 0;
    }
}

fn failure(err: StepError) -> TaskFailure {
    if matches!(
        err,
        StepError::StoreUnavailable(_) | StepError::StoreCorrupt(_)
    ) {
        STORE_FAILURES.record(&err);
    }
    TaskFailure {
        error: err.error_type().to_owned(),
        cause: err.cause(),
    }
}

impl StepInvoker<'_> {
    fn holds_deferred(&self) -> bool {
        self.lock_kept().has_deferred()
    }

    /// Saves task 2's outcomes held for the update step; on failure they are dropped.
    async fn save_deferred(&self) -> Result<(), StepError> {
        let mut kept = std::mem::take(&mut *self.lock_kept());
        let saved = self.steps.save_deferred(&mut kept).await;
        *self.lock_kept() = kept;
        saved
    }

    // The kept chunk is taken out for a step and put back after: the lock is never held
    // across the step's await.
    fn lock_kept(&self) -> std::sync::MutexGuard<'_, KeptChunk> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl TaskInvoker for StepInvoker<'_> {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        let role = match resource {
            TASK1_RESOURCE => StepRole::Task1,
            TASK2_RESOURCE => StepRole::Task2,
            UPDATE_RESOURCE => StepRole::Update,
            other => {
                return Err(TaskFailure {
                    error: "States.Runtime".to_owned(),
                    cause: format!("no local task is bound to resource {other:?}"),
                })
            }
        };
        let mut kept = std::mem::take(&mut *self.lock_kept());
        let result = dispatch::invoke(self.steps, role, input, &mut kept).await;
        *self.lock_kept() = kept;
        let output = result.map_err(failure)?;
        serde_json::to_value(output).map_err(|err| TaskFailure {
            error: "States.Runtime".to_owned(),
            cause: err.to_string(),
        })
    }
}
