//! The embedded engine: runs one execution of the state machine definition per chunk, with
//! bounded concurrency, journaling each execution's cursor so a restart resumes it.
//!
//! Task resources resolve to the in-process pipeline steps. An execution's cursor is saved
//! before every Task or Wait state runs; states between two saves are re-run after a crash,
//! which the steps allow (they are idempotent, as Step Functions requires).

pub mod asl;
pub mod journal;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;

use self::asl::{Cursor, ExecutionContext, StateMachine, Step, TaskFailure, TaskInvoker};
use self::journal::{ExecutionEnd, ExecutionJournal, ExecutionKey};
use super::{Orchestrator, OrchestratorError, STATE_MACHINE_DEFINITION};
use crate::domain::{BatchId, Timestamp};
use crate::pipeline::steps::{StepError, TaskEvent, UpdateEvent};
use crate::pipeline::Steps;

/// Name the context object gives the state machine.
const STATE_MACHINE_NAME: &str = "batch-manager-chunks";
/// How long a worker waits before retrying an execution whose journal write failed.
const JOURNAL_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The resource names the definition's substitution variables resolve to locally.
pub const TASK1_RESOURCE: &str = "batch-manager:local:task1";
pub const TASK2_RESOURCE: &str = "batch-manager:local:task2";
pub const UPDATE_RESOURCE: &str = "batch-manager:local:update";

/// Substitutions that bind the definition's task resources to the in-process steps.
pub fn local_substitutions() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("Task1FunctionArn".to_owned(), TASK1_RESOURCE.to_owned()),
        ("Task2FunctionArn".to_owned(), TASK2_RESOURCE.to_owned()),
        ("UpdateFunctionArn".to_owned(), UPDATE_RESOURCE.to_owned()),
    ])
}

/// Settings of the embedded engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Chunk executions running at once.
    pub concurrency: usize,
    /// The definition to run (the shipped one unless a test says otherwise).
    pub definition: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            definition: STATE_MACHINE_DEFINITION.to_owned(),
        }
    }
}

/// Errors starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("state machine definition: {0}")]
    Definition(#[from] asl::DefinitionError),
    #[error("recovering executions: {0}")]
    Recovery(#[from] crate::store::StoreError),
    #[error("stored cursor of {0} is unreadable: {1}")]
    Cursor(String, serde_json::Error),
}

/// An execution waiting for a worker. A batch of small chunks queues one per chunk, so a fresh
/// execution is kept small (its batch id shared, no cursor): its first cursor is built when a
/// worker takes it.
enum Work {
    Fresh {
        batch_id: Arc<BatchId>,
        chunk: u64,
        started_at: Timestamp,
    },
    Resumed {
        key: ExecutionKey,
        cursor: Cursor,
        started_at: Timestamp,
    },
}

struct Shared {
    machine: StateMachine,
    journal: Arc<dyn ExecutionJournal>,
    steps: Steps,
    queue: mpsc::UnboundedSender<Work>,
    stopping: watch::Receiver<bool>,
}

/// A handle on the running engine: the local [`Orchestrator`].
#[derive(Clone)]
pub struct LocalEngine {
    shared: Arc<Shared>,
}

/// Stops the engine's workers when told to, and waits for them.
pub struct EngineRunner {
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
}

impl EngineRunner {
    /// Stops taking new steps and waits for the steps under way to end. Executions resume
    /// from their journal on the next start.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.workers.join_next().await.is_some() {}
    }
}

impl LocalEngine {
    /// Starts the workers and resumes every execution the journal says was running, plus any
    /// stored chunk that never got an execution.
    pub async fn start(
        config: EngineConfig,
        journal: Arc<dyn ExecutionJournal>,
        steps: Steps,
    ) -> Result<(Self, EngineRunner), EngineError> {
        let machine = StateMachine::from_json(&config.definition, &local_substitutions())?;
        let (queue, receiver) = mpsc::unbounded_channel();
        let (stop, stopping) = watch::channel(false);
        let engine = Self {
            shared: Arc::new(Shared {
                machine,
                journal,
                steps,
                queue,
                stopping,
            }),
        };

        let resumed = engine.resume().await?;
        if resumed > 0 {
            tracing::info!(executions = resumed, "resuming chunk executions");
        }

        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = JoinSet::new();
        for _ in 0..config.concurrency.max(1) {
            let engine = engine.clone();
            let receiver = Arc::clone(&receiver);
            workers.spawn(async move { engine.work(receiver).await });
        }
        Ok((engine, EngineRunner { stop, workers }))
    }

    async fn resume(&self) -> Result<usize, EngineError> {
        let shared = &self.shared;
        let orphans = shared.journal.unstarted_chunks().await?;
        if !orphans.is_empty() {
            self.create(orphans).await?;
        }
        let records = shared.journal.running_executions().await?;
        let count = records.len();
        let now = Timestamp::now();
        for record in records {
            let cursor: Cursor = serde_json::from_str(&record.cursor)
                .map_err(|err| EngineError::Cursor(record.key.name(), err))?;
            let work = Work::Resumed {
                key: record.key,
                cursor,
                started_at: record.started_at,
            };
            match record.wake_at {
                Some(wake_at) if wake_at > now => {
                    let delay = Duration::from_micros((wake_at.0 - now.0) as u64);
                    self.enqueue_after(work, delay);
                }
                _ => self.enqueue(work),
            }
        }
        Ok(count)
    }

    async fn create(&self, keys: Vec<ExecutionKey>) -> Result<(), crate::store::StoreError> {
        let started_at = Timestamp::now();
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let cursor = self.shared.machine.start(execution_input(&key));
            let json = serde_json::to_string(&cursor)
                .map_err(|err| crate::store::StoreError::Corrupt(err.to_string()))?;
            rows.push((key, json));
        }
        let created = self.shared.journal.create_executions(rows).await?;
        let mut shared_id: Option<Arc<BatchId>> = None;
        for key in created {
            let batch_id = match &shared_id {
                Some(id) if **id == key.batch_id => Arc::clone(id),
                _ => Arc::clone(shared_id.insert(Arc::new(key.batch_id))),
            };
            self.enqueue(Work::Fresh {
                batch_id,
                chunk: key.chunk,
                started_at,
            });
        }
        Ok(())
    }

    fn enqueue(&self, work: Work) {
        // The receiver lives as long as the workers; once they stop, the journal keeps the work.
        let _ = self.shared.queue.send(work);
    }

    fn enqueue_after(&self, work: Work, delay: Duration) {
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            engine.enqueue(work);
        });
    }

    fn stopping(&self) -> bool {
        *self.shared.stopping.borrow()
    }

    async fn work(self, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Work>>>) {
        let mut stopping = self.shared.stopping.clone();
        loop {
            let next = {
                let mut receiver = receiver.lock().await;
                tokio::select! {
                    work = receiver.recv() => work,
                    _ = stopping.wait_for(|stop| *stop) => None,
                }
            };
            let Some(work) = next else { return };
            self.run(work).await;
        }
    }

    /// Runs an execution until it ends, sleeps or the engine stops.
    async fn run(&self, work: Work) {
        let (key, mut cursor, started_at) = match work {
            Work::Fresh {
                batch_id,
                chunk,
                started_at,
            } => {
                let key = ExecutionKey {
                    batch_id: BatchId::clone(&batch_id),
                    chunk,
                };
                let cursor = self.shared.machine.start(execution_input(&key));
                (key, cursor, started_at)
            }
            Work::Resumed {
                key,
                cursor,
                started_at,
            } => (key, cursor, started_at),
        };
        let context = ExecutionContext::new(
            key.name(),
            execution_input(&key),
            started_at.to_rfc3339(),
            STATE_MACHINE_NAME,
        );
        let invoker = StepInvoker {
            steps: &self.shared.steps,
        };
        loop {
            if self.stopping() {
                return;
            }
            let step = self
                .shared
                .machine
                .step(cursor.clone(), &context, &invoker)
                .await;
            let saved = match &step {
                Step::Continue(next) => self.save(&key, next, None).await,
                Step::Sleep { duration, then } => {
                    let wake_at = Timestamp(Timestamp::now().0 + duration.as_micros() as i64);
                    self.save(&key, then, Some(wake_at)).await
                }
                Step::Succeeded(_) => self.finish(&key, &ExecutionEnd::Succeeded).await,
                Step::Failed { error, cause } => {
                    tracing::warn!(execution = %key.name(), %error, %cause, "chunk execution failed");
                    let end = ExecutionEnd::Failed {
                        error: error.clone(),
                        cause: cause.clone(),
                    };
                    self.finish(&key, &end).await
                }
            };
            if let Err(err) = saved {
                tracing::error!(execution = %key.name(), error = %err, "journal write failed; retrying the state");
                self.enqueue_after(
                    Work::Resumed {
                        key,
                        cursor,
                        started_at,
                    },
                    JOURNAL_RETRY_DELAY,
                );
                return;
            }
            match step {
                Step::Continue(next) => cursor = next,
                Step::Sleep { duration, then } => {
                    self.enqueue_after(
                        Work::Resumed {
                            key,
                            cursor: then,
                            started_at,
                        },
                        duration,
                    );
                    return;
                }
                Step::Succeeded(_) | Step::Failed { .. } => return,
            }
        }
    }

    async fn save(
        &self,
        key: &ExecutionKey,
        cursor: &Cursor,
        wake_at: Option<Timestamp>,
    ) -> Result<(), crate::store::StoreError> {
        let json = serde_json::to_string(cursor)
            .map_err(|err| crate::store::StoreError::Corrupt(err.to_string()))?;
        self.shared.journal.save_cursor(key, json, wake_at).await
    }

    async fn finish(
        &self,
        key: &ExecutionKey,
        end: &ExecutionEnd,
    ) -> Result<(), crate::store::StoreError> {
        self.shared.journal.finish_execution(key, end).await
    }
}

fn execution_input(key: &ExecutionKey) -> Value {
    json!({ "batchId": key.batch_id.as_str(), "chunk": key.chunk })
}

#[async_trait]
impl Orchestrator for LocalEngine {
    async fn start_chunks(
        &self,
        batch_id: &BatchId,
        chunks: &[u64],
    ) -> Result<(), OrchestratorError> {
        let keys = chunks
            .iter()
            .map(|&chunk| ExecutionKey {
                batch_id: batch_id.clone(),
                chunk,
            })
            .collect();
        self.create(keys)
            .await
            .map_err(|err| OrchestratorError(err.to_string()))
    }
}

/// Resolves the definition's Task resources to the pipeline steps.
struct StepInvoker<'a> {
    steps: &'a Steps,
}

fn failure(err: StepError) -> TaskFailure {
    if matches!(
        err,
        StepError::StoreUnavailable(_) | StepError::StoreCorrupt(_)
    ) {
        tracing::error!(error = ?err, "chunk step failed");
    }
    TaskFailure {
        error: err.error_type().to_owned(),
        cause: err.cause(),
    }
}

fn invalid_event(err: serde_json::Error) -> TaskFailure {
    failure(StepError::InvalidEvent(err.to_string()))
}

fn to_value<T: serde::Serialize>(result: Result<T, StepError>) -> Result<Value, TaskFailure> {
    let output = result.map_err(failure)?;
    serde_json::to_value(output).map_err(|err| TaskFailure {
        error: "States.Runtime".to_owned(),
        cause: err.to_string(),
    })
}

#[async_trait]
impl TaskInvoker for StepInvoker<'_> {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        match resource {
            TASK1_RESOURCE | TASK2_RESOURCE => {
                let event: TaskEvent = serde_json::from_value(input).map_err(invalid_event)?;
                if resource == TASK1_RESOURCE {
                    to_value(self.steps.task1(event).await)
                } else {
                    to_value(self.steps.task2(event).await)
                }
            }
            UPDATE_RESOURCE => {
                let event: UpdateEvent = serde_json::from_value(input).map_err(invalid_event)?;
                to_value(self.steps.update(event).await)
            }
            other => Err(TaskFailure {
                error: "States.Runtime".to_owned(),
                cause: format!("no local task is bound to resource {other:?}"),
            }),
        }
    }
}
