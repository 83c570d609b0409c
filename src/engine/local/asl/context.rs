//! The context object `$$`: facts about the execution ([`ExecutionContext`], given by the
//! caller) and about the current state ([`Scope`], one per step).

use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::errors::TaskFailure;
use super::timestamp::format_timestamp;

/// Region and account of the ARN-shaped `Id`s the context object shows locally.
const LOCAL_ARN_PREFIX: &str = "arn:aws:states:local:000000000000";

/// Facts about the running execution that feed the context object `$$.Execution` and
/// `$$.StateMachine`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionContext {
    /// The execution's name (`$$.Execution.Name`).
    pub execution_name: String,
    /// The execution's original input (`$$.Execution.Input`).
    pub execution_input: Value,
    /// When the execution started, RFC 3339 (`$$.Execution.StartTime`).
    pub start_time: String,
    /// The state machine's name (`$$.StateMachine.Name`).
    pub state_machine_name: String,
    /// The role the execution runs as (`$$.Execution.RoleArn`). Locally nothing assumes it:
    /// it is a placeholder for definitions that pass it on.
    pub role_arn: String,
    /// How many times the execution has been redriven (`$$.Execution.RedriveCount`).
    pub redrive_count: u32,
}

impl ExecutionContext {
    /// The `$$.Execution.RoleArn` of local executions unless the caller says otherwise.
    pub const LOCAL_ROLE_ARN: &'static str = "arn:aws:iam::000000000000:role/batch-manager-local";

    /// The context of an execution that runs as [`Self::LOCAL_ROLE_ARN`] and was never
    /// redriven.
    pub fn new(
        execution_name: impl Into<String>,
        execution_input: Value,
        start_time: impl Into<String>,
        state_machine_name: impl Into<String>,
    ) -> Self {
        ExecutionContext {
            execution_name: execution_name.into(),
            execution_input,
            start_time: start_time.into(),
            state_machine_name: state_machine_name.into(),
            role_arn: Self::LOCAL_ROLE_ARN.to_owned(),
            redrive_count: 0,
        }
    }

    fn execution_object(&self) -> Value {
        json!({
            "Id": format!(
                "{LOCAL_ARN_PREFIX}:execution:{}:{}",
                self.state_machine_name, self.execution_name
            ),
            "Name": self.execution_name,
            "Input": self.execution_input,
            "StartTime": self.start_time,
            "RoleArn": self.role_arn,
            "RedriveCount": self.redrive_count,
        })
    }

    fn state_machine_object(&self) -> Value {
        json!({
            "Id": format!("{LOCAL_ARN_PREFIX}:stateMachine:{}", self.state_machine_name),
            "Name": self.state_machine_name,
        })
    }
}

/// Whether the current state counts retries (only a Task does: `$$.State.RetryCount`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Retries {
    /// A Task state, with the retries it has used so far.
    Counted(u32),
    /// Any other state: `$$.State` has no `RetryCount`.
    NotApplicable,
}

/// What one step can see: the execution, the current state, and the clock.
pub(super) struct Scope<'a> {
    execution: &'a ExecutionContext,
    state_name: &'a str,
    retries: Retries,
    entered: OffsetDateTime,
    // Built on first use: most steps never read `$$`, and it copies the execution input.
    context: OnceLock<Value>,
    // The parts of `$$`, built on first use by the paths that name one.
    execution_part: OnceLock<Value>,
    state_part: OnceLock<Value>,
    state_machine_part: OnceLock<Value>,
}

impl<'a> Scope<'a> {
    /// The scope of running `state_name`, entered (or, for a retried Task, attempted) at
    /// `entered`.
    pub(super) fn new(
        execution: &'a ExecutionContext,
        state_name: &'a str,
        retries: Retries,
        entered: OffsetDateTime,
    ) -> Self {
        Scope {
            execution,
            state_name,
            retries,
            entered,
            context: OnceLock::new(),
            execution_part: OnceLock::new(),
            state_part: OnceLock::new(),
            state_machine_part: OnceLock::new(),
        }
    }

    pub(super) fn state_name(&self) -> &'a str {
        self.state_name
    }

    /// When this step started: the clock that Wait states measure from.
    pub(super) fn now(&self) -> OffsetDateTime {
        self.entered
    }

    /// A `States.Runtime` failure of the current state.
    pub(super) fn runtime_failure(&self, message: impl std::fmt::Display) -> TaskFailure {
        TaskFailure::runtime(self.state_name, message)
    }

    /// The context object `$$`.
    pub(super) fn context_object(&self) -> &Value {
        self.context.get_or_init(|| {
            json!({
                "Execution": self.execution.execution_object(),
                "State": self.state_object(),
                "StateMachine": self.execution.state_machine_object(),
            })
        })
    }

    /// One top-level part of the context object (`Execution`, `State`, `StateMachine`).
    pub(super) fn context_part(&self, name: &str) -> Option<&Value> {
        match name {
            "Execution" => Some(
                self.execution_part
                    .get_or_init(|| self.execution.execution_object()),
            ),
            "State" => Some(self.state_part.get_or_init(|| self.state_object())),
            "StateMachine" => Some(
                self.state_machine_part
                    .get_or_init(|| self.execution.state_machine_object()),
            ),
            _ => None,
        }
    }

    fn state_object(&self) -> Value {
        let mut state = Map::new();
        state.insert("Name".to_owned(), json!(self.state_name));
        state.insert(
            "EnteredTime".to_owned(),
            json!(format_timestamp(self.entered)),
        );
        if let Retries::Counted(count) = self.retries {
            state.insert("RetryCount".to_owned(), json!(count));
        }
        Value::Object(state)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        continue_to, execution, machine, runtime_cause, single, step, step_from_start, FakeTasks,
    };
    use super::super::Step;
    use super::*;

    #[tokio::test]
    async fn parameters_read_the_context_object() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "execution.$": "$$.Execution.Name",
                "executionId.$": "$$.Execution.Id",
                "original.$": "$$.Execution.Input.batchId",
                "started.$": "$$.Execution.StartTime",
                "role.$": "$$.Execution.RoleArn",
                "redrives.$": "$$.Execution.RedriveCount",
                "state.$": "$$.State.Name",
                "entered.$": "$$.State.EnteredTime",
                "machine.$": "$$.StateMachine.Name",
                "machineId.$": "$$.StateMachine.Id"
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({
                "execution": "exec-1",
                "executionId": "arn:aws:states:local:000000000000:execution:chunk-pipeline:exec-1",
                "original": "b-1",
                "started": "2024-05-01T10:00:00Z",
                "role": "arn:aws:iam::000000000000:role/batch-manager-local",
                "redrives": 0,
                "state": "S",
                "entered": "2024-05-01T12:00:00Z",
                "machine": "chunk-pipeline",
                "machineId": "arn:aws:states:local:000000000000:stateMachine:chunk-pipeline"
            })
        );
    }

    #[tokio::test]
    async fn retry_count_exists_only_while_a_task_state_runs() {
        let definition = json!({
            "StartAt": "P",
            "States": {
                "P": { "Type": "Pass", "Parameters": { "state.$": "$$.State" }, "ResultPath": "$.pass", "Next": "T" },
                "T": { "Type": "Task", "Resource": "arn:t", "Parameters": { "state.$": "$$.State" }, "ResultPath": null, "End": true }
            }
        });
        let machine = machine(definition);
        let tasks = FakeTasks::returning(json!(null));
        let after_pass = continue_to(step_from_start(&machine, json!({}), &tasks).await);
        assert_eq!(
            after_pass.input()["pass"],
            json!({ "state": { "Name": "P", "EnteredTime": "2024-05-01T12:00:00Z" } })
        );
        let end = step(&machine, after_pass, &tasks).await;
        assert!(matches!(end, Step::Succeeded(_)), "{end:?}");
        assert_eq!(
            tasks.calls()[0].1,
            json!({ "state": { "Name": "T", "EnteredTime": "2024-05-01T12:00:00Z", "RetryCount": 0 } })
        );
        let machine = single(json!({
            "Type": "Pass", "Parameters": { "n.$": "$$.State.RetryCount" }, "Next": "Done"
        }));
        let outcome = step_from_start(&machine, json!({}), &tasks).await;
        runtime_cause(&outcome);
    }

    #[test]
    fn the_execution_has_a_role_arn_and_a_redrive_count_the_caller_may_set() {
        let mut context = execution();
        assert_eq!(context.role_arn, ExecutionContext::LOCAL_ROLE_ARN);
        assert_eq!(context.redrive_count, 0);
        context.role_arn = "arn:aws:iam::123456789012:role/runner".to_owned();
        context.redrive_count = 2;
        let scope = Scope::new(
            &context,
            "S",
            Retries::NotApplicable,
            OffsetDateTime::UNIX_EPOCH,
        );
        let execution = &scope.context_object()["Execution"];
        assert_eq!(
            execution["RoleArn"],
            "arn:aws:iam::123456789012:role/runner"
        );
        assert_eq!(execution["RedriveCount"], 2);
    }
}
