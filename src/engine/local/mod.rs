//! The embedded engine: runs one execution of the state machine definition per chunk, with
//! bounded concurrency, journaling each execution's cursor so a restart resumes it.
//!
//! Task resources resolve to the in-process pipeline steps. Executions waiting for a worker
//! wait in the database: a [`window`] of them is paged in, in order, and refilled as they end,
//! so memory stays flat however many chunks are stored. An execution's cursor is journaled
//! before every Task or Wait state, staged to commit with that Task's own store write; states
//! between two journal entries are re-run after a crash, which the steps allow (they are
//! idempotent, as Step Functions requires). Task 2's outcomes are saved by the update's own
//! write, so no entry is journaled before the update while they wait: a crash there runs
//! task 2 again.

pub mod asl;
mod execution;
mod limits;

mod window;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;

use self::asl::StateMachine;
use self::execution::{Settled, Work};
use self::limits::PausedBatches;
use self::window::{Event, Window};
use super::STATE_MACHINE_DEFINITION;
use crate::domain::BatchId;
use crate::pipeline::Steps;
use crate::pipeline::{Orchestrator, OrchestratorError};
use crate::store::journal::{self, ExecutionJournal};

/// The resource names the definition's substitution variables resolve to locally.
pub(crate) const TASK1_RESOURCE: &str = "batch-manager:local:task1";
pub(crate) const TASK2_RESOURCE: &str = "batch-manager:local:task2";
pub(crate) const UPDATE_RESOURCE: &str = "batch-manager:local:update";

/// Substitutions that bind the definition's task resources to the in-process steps.
pub(crate) fn local_substitutions() -> BTreeMap<String, String> {
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
            concurrency: 64,
            definition: STATE_MACHINE_DEFINITION.to_owned(),
        }
    }
}

/// Errors starting the engine.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error("state machine definition: {0}")]
    Definition(#[from] asl::DefinitionError),
}

/// What the workers share.
struct Shared {
    machine: StateMachine,
    /// States before which an execution's cursor is journaled: Task and Wait states.
    journaled_states: HashSet<String>,
    /// Task states bound to the update step, which saves task 2's outcomes with its count.
    update_states: HashSet<String>,
    journal: Arc<dyn ExecutionJournal>,
    steps: Steps,
    /// Executions paged in and waiting for a worker.
    ready: Mutex<mpsc::UnboundedReceiver<Work>>,
    /// Tells the window about new chunks and settled executions.
    events: mpsc::UnboundedSender<Event>,
    /// The batches the window knows to be paused.
    paused: PausedBatches,
    stopping: watch::Receiver<bool>,
}

/// A handle on the running engine: the local [`Orchestrator`].
#[derive(Clone)]
pub(crate) struct LocalEngine {
    shared: Arc<Shared>,
}

/// Stops the engine's workers when told to, and waits for them.
pub(crate) struct EngineRunner {
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
}

impl EngineRunner {
    /// Stops taking new steps and waits for the steps under way to end. Executions resume
    /// from their journal on the next start.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.workers.join_next().await.is_some() {}
    }
}

/// The names of the definition's top-level states that `keep` picks.
fn states_where(definition: &str, keep: impl Fn(&Value) -> bool) -> HashSet<String> {
    let Ok(root) = serde_json::from_str::<Value>(definition) else {
        return HashSet::new();
    };
    let Some(states) = root.get("States").and_then(Value::as_object) else {
        return HashSet::new();
    };
    states
        .iter()
        .filter(|(_, state)| keep(state))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The names of the definition's Task and Wait states.
fn journaled_states(definition: &str) -> HashSet<String> {
    states_where(definition, |state| {
        matches!(
            state.get("Type").and_then(Value::as_str),
            Some("Task" | "Wait")
        )
    })
}

/// The names of the definition's Task states bound to the update step.
fn update_states(definition: &str) -> HashSet<String> {
    states_where(definition, |state| {
        state.get("Type").and_then(Value::as_str) == Some("Task")
            && matches!(
                state.get("Resource").and_then(Value::as_str),
                Some("${UpdateFunctionArn}" | UPDATE_RESOURCE)
            )
    })
}

impl LocalEngine {
    /// Starts the workers and the window, which resumes every execution the journal says was
    /// running, then every stored chunk whose execution never passed its first Task.
    pub(crate) async fn start(
        config: EngineConfig,
        journal: Arc<dyn ExecutionJournal>,
        steps: Steps,
    ) -> Result<(Self, EngineRunner), EngineError> {
        let machine = StateMachine::from_json(&config.definition, &local_substitutions())?;
        let concurrency = config.concurrency.max(1);
        let (ready_sender, ready) = mpsc::unbounded_channel();
        let (events, event_receiver) = mpsc::unbounded_channel();
        let (stop, stopping) = watch::channel(false);
        let paused = PausedBatches::default();
        let engine = Self {
            shared: Arc::new(Shared {
                machine,
                journaled_states: journaled_states(&config.definition),
                update_states: update_states(&config.definition),
                journal: Arc::clone(&journal),
                steps,
                ready: Mutex::new(ready),
                events,
                paused: paused.clone(),
                stopping: stopping.clone(),
            }),
        };

        let mut workers = JoinSet::new();
        let window = Window::new(
            journal,
            window::capacity(concurrency),
            event_receiver,
            ready_sender,
            stopping,
            paused,
        );
        workers.spawn(window.run());
        for _ in 0..concurrency {
            let engine = engine.clone();
            workers.spawn(async move { engine.work().await });
        }
        Ok((engine, EngineRunner { stop, workers }))
    }

    async fn work(self) {
        let shared = &self.shared;
        let mut stopping = shared.stopping.clone();
        loop {
            let next = {
                let mut ready = shared.ready.lock().await;
                tokio::select! {
                    work = ready.recv() => work,
                    _ = stopping.wait_for(|stop| *stop) => None,
                }
            };
            let Some(work) = next else { return };
            crate::metrics::global().execution_waiting(false);
            // While the store refuses writes, a started execution would only fail its step.
            while !shared.journal.accepting() {
                tokio::select! {
                    () = tokio::time::sleep(window::STORE_CHECK_INTERVAL) => {}
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
            }
            let key = work.key.clone();
            let position = work.position;
            // A fresh execution queued before its batch was paused does not start: no chunk
            // of a paused batch starts.
            if work.cursor.is_none() && shared.paused.contains(&key.batch_id) {
                let _ = shared.events.send(Event::Held { key, position });
                continue;
            }
            match execution::run(shared, work).await {
                Settled::Ended(receipt) => self.settle(key, receipt, None),
                Settled::Slept { receipt, wake_at } => {
                    let woken = journal::WakePosition { wake_at, position };
                    self.settle(key, receipt, Some(woken));
                }
                Settled::Stopped => return,
            }
        }
    }

    /// Takes the execution out of the window once its last journal entry is committed, so
    /// that the window never pages it in while it is still in memory.
    fn settle(
        &self,
        key: journal::ExecutionKey,
        receipt: journal::JournalReceipt,
        woken: Option<journal::WakePosition>,
    ) {
        let events = self.shared.events.clone();
        tokio::spawn(async move {
            if receipt.await.is_ok() {
                let _ = events.send(Event::Settled { key, woken });
            }
        });
    }
}

#[async_trait]
impl Orchestrator for LocalEngine {
    /// The chunks are stored already: the window pages them in as workers free up. Starting
    /// a chunk twice is a no-op.
    async fn start_chunks(
        &self,
        batch_id: &BatchId,
        chunks: &[u64],
    ) -> Result<(), OrchestratorError> {
        if let Some(&first) = chunks.iter().min() {
            // Once the engine stops, the chunks wait in the database for the next start.
            let _ = self.shared.events.send(Event::Stored {
                batch_id: batch_id.clone(),
                first_chunk: first,
            });
        }
        Ok(())
    }

    async fn concurrency_changed(&self, batch_id: &BatchId) {
        let _ = self.shared.events.send(Event::LimitChanged {
            batch_id: batch_id.clone(),
        });
    }
}
