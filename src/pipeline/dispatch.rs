//! The one step dispatcher: a state machine Task event in, the step's result out, for every
//! backend. The Lambda roles and the embedded engine both call [`invoke`]; a failure is a
//! [`StepError`], whose [`StepError::error_type`] is the name the definition's Retry and Catch
//! rules match.

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::steps::{KeptChunk, StepError, TaskEvent, TaskResult, UpdateEvent, UpdateResult};
use super::Steps;

/// One of the state machine's Task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepRole {
    /// Task 1: claims the chunk and runs the user's first task.
    Task1,
    /// Task 2: runs the user's second task on what task 1 left pending.
    Task2,
    /// Update: counts the chunk's outcomes into its batch, once.
    Update,
}

/// What a step returns to the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum StepOutput {
    /// The result of task 1 or task 2.
    Task(TaskResult),
    /// The result of the update step.
    Update(UpdateResult),
}

/// Runs one event through the role's step. The event arrives as raw JSON so that a malformed
/// one becomes `BatchManager.InvalidEvent` rather than a deserialization error of the caller.
/// `kept` carries the chunk from task 1 to task 2, and task 2's outcomes to the update, of the
/// same execution when the caller runs them in one process (the embedded engine); a fresh
/// [`KeptChunk`] makes every step read and write the store itself.
pub(crate) async fn invoke(
    steps: &Steps,
    role: StepRole,
    event: Value,
    kept: &mut KeptChunk,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let output = run(steps, role, event, kept).await;
    crate::metrics::global().step_finished(role, started.elapsed(), output.is_err());
    output
}

async fn run(
    steps: &Steps,
    role: StepRole,
    event: Value,
    kept: &mut KeptChunk,
) -> Result<StepOutput, StepError> {
    match role {
        StepRole::Task1 => Ok(StepOutput::Task(
            steps
                .task1_keeping(parse::<TaskEvent>(event)?, kept)
                .await?,
        )),
        StepRole::Task2 => Ok(StepOutput::Task(
            steps.task2_with(parse::<TaskEvent>(event)?, kept).await?,
        )),
        StepRole::Update => Ok(StepOutput::Update(
            steps
                .update_with(parse::<UpdateEvent>(event)?, kept)
                .await?,
        )),
    }
}

fn parse<T: DeserializeOwned>(event: Value) -> Result<T, StepError> {
    serde_json::from_value(event).map_err(|err| StepError::InvalidEvent(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_events_are_read_as_the_definition_writes_them() {
        let event: TaskEvent =
            parse(serde_json::json!({"batchId": "b", "chunk": 2, "attempt": 1})).unwrap();
        assert_eq!(
            event,
            TaskEvent {
                batch_id: "b".to_owned(),
                chunk: 2,
                attempt: 1,
                job: None,
            }
        );
        let err = parse::<TaskEvent>(serde_json::json!({"chunk": 2})).unwrap_err();
        assert_eq!(err.error_type(), "BatchManager.InvalidEvent");
        assert!(err.cause().contains("batchId"), "{}", err.cause());
    }
}
