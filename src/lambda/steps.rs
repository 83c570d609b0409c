//! The `task1`, `task2` and `update` roles: the state machine's Task events in, the step's
//! result out. A failure leaves as a [`Diagnostic`] whose `errorType` is the step error's
//! stable name, the one the definition's Retry and Catch rules match; the conversion below is
//! the only place a step error meets Lambda.

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::pipeline::steps::{StepError, TaskEvent, TaskResult, UpdateEvent, UpdateResult};
use crate::pipeline::Steps;

/// A role that serves one of the state machine's Task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRole {
    Task1,
    Task2,
    Update,
}

/// What a step returns to the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StepOutput {
    Task(TaskResult),
    Update(UpdateResult),
}

/// Serves Task events until the Runtime API stops the process.
pub async fn serve(role: StepRole, steps: Steps) -> Result<(), lambda_runtime::Error> {
    let steps = &steps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        invoke(steps, role, event.payload).await
    }))
    .await
}

/// Runs one event through the role's step. The event arrives as raw JSON so that a malformed
/// one becomes `BatchManager.InvalidEvent` rather than the runtime's own deserialization error.
pub async fn invoke(steps: &Steps, role: StepRole, event: Value) -> Result<StepOutput, StepError> {
    match role {
        StepRole::Task1 => Ok(StepOutput::Task(
            steps.task1(parse::<TaskEvent>(event)?).await?,
        )),
        StepRole::Task2 => Ok(StepOutput::Task(
            steps.task2(parse::<TaskEvent>(event)?).await?,
        )),
        StepRole::Update => Ok(StepOutput::Update(
            steps.update(parse::<UpdateEvent>(event)?).await?,
        )),
    }
}

fn parse<T: DeserializeOwned>(event: Value) -> Result<T, StepError> {
    serde_json::from_value(event).map_err(|err| StepError::InvalidEvent(err.to_string()))
}

impl From<StepError> for Diagnostic {
    fn from(err: StepError) -> Self {
        // The store's details stay in this function's log; the state machine sees the name.
        if matches!(
            err,
            StepError::StoreUnavailable(_) | StepError::StoreCorrupt(_)
        ) {
            tracing::error!(error = ?err, "step failed");
        }
        Diagnostic {
            error_type: err.error_type().to_owned(),
            error_message: err.cause(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn a_step_error_becomes_its_stable_name_and_hides_store_details() {
        let diagnostic = Diagnostic::from(StepError::from(StoreError::Unavailable(
            "dispatch failure: connection refused to 10.0.0.7".to_owned(),
        )));
        assert_eq!(diagnostic.error_type, "BatchManager.StoreUnavailable");
        assert_eq!(diagnostic.error_message, "store unavailable");

        let diagnostic = Diagnostic::from(StepError::TransientTask("upstream timed out".into()));
        assert_eq!(diagnostic.error_type, "BatchManager.TransientTaskError");
        assert_eq!(diagnostic.error_message, "upstream timed out");
    }

    #[test]
    fn task_events_are_read_as_the_definition_writes_them() {
        let event: TaskEvent =
            parse(serde_json::json!({"batchId": "b", "chunk": 2, "attempt": 1})).unwrap();
        assert_eq!(
            event,
            TaskEvent {
                batch_id: "b".to_owned(),
                chunk: 2,
                attempt: 1
            }
        );
        let err = parse::<TaskEvent>(serde_json::json!({"chunk": 2})).unwrap_err();
        assert_eq!(err.error_type(), "BatchManager.InvalidEvent");
        assert!(err.cause().contains("batchId"), "{}", err.cause());
    }
}
