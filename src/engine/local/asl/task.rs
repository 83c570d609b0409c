//! The Task state: `Parameters` build the input, the caller's [`TaskInvoker`] does the work
//! within the state's time limits (`timeouts`), `ResultSelector` and `ResultPath` shape the
//! result; failures go through `Retry`, then `Catch`.

use serde_json::Value;

use super::catch::Catchers;
use super::context::Scope;
use super::envelope::{ensure_within_limit, Body, Exit, StateInput, Transition};
use super::errors::{DefinitionError, TaskFailure, RUNTIME_ERROR};
use super::fields::Fields;
use super::result_path::ResultPath;
use super::retry::Retriers;
use super::template::Template;
use super::timeouts::{Heartbeat, TaskLimits};

/// Runs the work behind Task states.
///
/// The interpreter calls [`invoke_with_heartbeat`](Self::invoke_with_heartbeat), whose default
/// calls [`invoke`](Self::invoke): implement `invoke`, and override `invoke_with_heartbeat`
/// only for work that reports its progress.
///
/// An attempt that runs past the state's `TimeoutSeconds`, or goes its `HeartbeatSeconds`
/// without a heartbeat, fails with `States.Timeout` or `States.HeartbeatTimeout`, and the
/// future the invoker returned is dropped. Work that future owns stops there; work it started
/// elsewhere (a process, an external job) goes on unless the invoker stops it on drop, so the
/// next attempt should find such work again by a deterministic name rather than start it
/// twice.
#[async_trait::async_trait]
pub trait TaskInvoker: Send + Sync {
    /// Runs the Task state's resource with its effective input.
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure>;

    /// Runs the resource as [`invoke`](Self::invoke) does, with the attempt's [`Heartbeat`]
    /// to call while the work makes progress. The default sends no heartbeat, as a Lambda
    /// function on Step Functions: a state with `HeartbeatSeconds` then fails with
    /// `States.HeartbeatTimeout` unless the work ends within the interval.
    async fn invoke_with_heartbeat(
        &self,
        resource: &str,
        input: Value,
        heartbeat: Heartbeat,
    ) -> Result<Value, TaskFailure> {
        drop(heartbeat);
        self.invoke(resource, input).await
    }
}

#[derive(Debug)]
pub(super) struct TaskState {
    resource: String,
    parameters: Option<Template>,
    result_selector: Option<Template>,
    result_path: ResultPath,
    limits: TaskLimits,
    retry: Retriers,
    catch: Catchers,
    transition: Transition,
}

/// A failure inside a Task's body, and whether the state's Retry and Catch see it.
enum Fault {
    /// Retry and Catch handle it (unless it is `States.Runtime`).
    Recoverable(TaskFailure),
    /// It ends the execution whatever Retry and Catch say.
    Terminal(TaskFailure),
}

impl TaskState {
    pub(super) const FIELDS: &'static [&'static str] = &[
        "Type",
        "Comment",
        "QueryLanguage",
        "Resource",
        "InputPath",
        "Parameters",
        "ResultSelector",
        "ResultPath",
        "OutputPath",
        "TimeoutSeconds",
        "TimeoutSecondsPath",
        "HeartbeatSeconds",
        "HeartbeatSecondsPath",
        "Retry",
        "Catch",
        "Next",
        "End",
    ];

    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let resource = fields.required_string("Resource")?;
        let retry = Retriers::parse(fields)?;
        let catch = Catchers::parse(fields)?;
        Ok(TaskState {
            resource: resource.to_owned(),
            parameters: Template::parse_optional(fields, "Parameters")?,
            result_selector: Template::parse_optional(fields, "ResultSelector")?,
            result_path: ResultPath::parse(fields, "ResultPath")?,
            limits: TaskLimits::parse(fields)?,
            retry,
            catch,
            transition: Transition::parse(fields)?,
        })
    }

    pub(super) fn targets(&self) -> Vec<(String, &str)> {
        let mut targets: Vec<(String, &str)> = self
            .transition
            .target()
            .map(|next| ("Next".to_owned(), next))
            .into_iter()
            .collect();
        targets.extend(self.catch.targets());
        targets
    }

    /// One attempt of the Task, with `retries` used so far per Retrier.
    pub(super) async fn run(
        &self,
        input: StateInput,
        retries: &[u32],
        scope: &Scope<'_>,
        tasks: &dyn TaskInvoker,
    ) -> Body<'_> {
        let placed = match self.attempt(input.effective(), scope, tasks).await {
            Ok(result) => self
                .result_path
                .place(input.raw(), result, scope)
                .map_err(Fault::Recoverable),
            Err(fault) => Err(fault),
        };
        match placed {
            Ok(output) => Body::Result(output, Exit::Follow(&self.transition)),
            Err(Fault::Terminal(failure)) => Body::Failed(failure),
            Err(Fault::Recoverable(failure)) => {
                self.recover(failure, input.into_raw(), retries, scope)
            }
        }
    }

    /// The time limits, `Parameters`, the invocation, `ResultSelector`: the Task's result.
    async fn attempt(
        &self,
        effective: &Value,
        scope: &Scope<'_>,
        tasks: &dyn TaskInvoker,
    ) -> Result<Value, Fault> {
        let limits = self
            .limits
            .resolve(effective, scope)
            .map_err(Fault::Terminal)?;
        let input = match &self.parameters {
            Some(parameters) => parameters
                .render(effective, scope)
                .map_err(Fault::Terminal)?,
            None => effective.clone(),
        };
        let input =
            ensure_within_limit(input, "the Task's input", scope).map_err(Fault::Terminal)?;
        let result = limits
            .run(scope, move |heartbeat| {
                tasks.invoke_with_heartbeat(&self.resource, input, heartbeat)
            })
            .await
            .map_err(Fault::Recoverable)?;
        // An oversized result is a failure of this Task, which its Retry and Catch see, as on
        // Step Functions.
        let result =
            ensure_within_limit(result, "the Task's result", scope).map_err(Fault::Recoverable)?;
        match &self.result_selector {
            Some(selector) => selector.render(&result, scope).map_err(Fault::Terminal),
            None => Ok(result),
        }
    }

    /// Retry, then Catch, then fail: what a failure of this Task leads to.
    fn recover(
        &self,
        failure: TaskFailure,
        raw_input: Value,
        retries: &[u32],
        scope: &Scope<'_>,
    ) -> Body<'_> {
        // As on Step Functions, a runtime error ends the execution whatever Retry and Catch say.
        if failure.error == RUNTIME_ERROR {
            return Body::Failed(failure);
        }
        if let Some((delay, retries)) = self.retry.next_attempt(&failure.error, retries) {
            return Body::Retry {
                delay,
                retries,
                input: raw_input,
            };
        }
        self.catch.handle(failure, &raw_input, scope)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::errors::DATA_LIMIT_ERROR;
    use super::super::test_support::{
        at, continue_to, failed_with, machine, oversized, run_to_end, runtime_cause, single,
        single_rejection, step_from_start, task, FakeTasks,
    };
    use super::super::Step;
    use super::*;

    #[test]
    fn task_credentials_and_jsonata_fields_are_rejected() {
        for field in ["Credentials", "Assign", "Arguments", "Output"] {
            let mut state = task(json!({}));
            state[field] = json!(10);
            let message = single_rejection(state);
            assert!(
                message.contains(&format!(
                    "field \"{field}\" is not supported in a Task state"
                )),
                "{message}"
            );
        }
    }

    #[tokio::test]
    async fn a_task_processes_its_paths_in_the_order_asl_defines() {
        let machine = single(task(json!({
            "InputPath": "$.request",
            "Parameters": { "id.$": "$.id", "fixed": 1 },
            "ResultSelector": { "status.$": "$.body.status" },
            "ResultPath": "$.response",
            "OutputPath": "$.response"
        })));
        let tasks = FakeTasks::returning(json!({ "body": { "status": "ok", "noise": 1 } }));
        let input = json!({ "request": { "id": 42, "extra": true }, "other": 0 });
        let step = step_from_start(&machine, input, &tasks).await;
        assert_eq!(
            tasks.calls(),
            [("arn:task".to_owned(), json!({ "id": 42, "fixed": 1 }))]
        );
        assert_eq!(step, Step::Continue(at("Done", json!({ "status": "ok" }))));
    }

    #[tokio::test]
    async fn a_task_that_ends_the_execution_succeeds_with_its_output() {
        let machine = machine(json!({
            "StartAt": "T", "States": { "T": { "Type": "Task", "Resource": "arn:t", "End": true } }
        }));
        let tasks = FakeTasks::returning(json!({ "done": true }));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(step, Step::Succeeded(json!({ "done": true })));
    }

    #[tokio::test]
    async fn runtime_failures_are_neither_retried_nor_caught() {
        let machine = single(task(json!({
            "OutputPath": "$.missing",
            "Retry": [{ "ErrorEquals": ["States.ALL"] }],
            "Catch": [{ "ErrorEquals": ["States.ALL"], "Next": "Done" }]
        })));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        runtime_cause(&step);
        assert_eq!(tasks.calls().len(), 1);
        let reported_runtime = FakeTasks::failing(RUNTIME_ERROR);
        let step = step_from_start(&machine, json!({}), &reported_runtime).await;
        runtime_cause(&step);
        assert_eq!(reported_runtime.calls().len(), 1);
    }

    #[tokio::test]
    async fn a_task_result_over_the_payload_limit_is_a_task_failure_that_retry_and_catch_see() {
        let machine = single(task(json!({
            "ResultSelector": { "small": 1 },
            "Retry": [{ "ErrorEquals": ["States.DataLimitExceeded"], "MaxAttempts": 1 }],
            "Catch": [{ "ErrorEquals": ["States.DataLimitExceeded"], "ResultPath": "$.error", "Next": "Done" }]
        })));
        let tasks = FakeTasks::returning(oversized());
        let (end, sleeps) = run_to_end(&machine, json!({ "keep": 1 }), &tasks).await;
        assert_eq!(sleeps.len(), 1);
        assert_eq!(tasks.calls().len(), 2);
        let Step::Succeeded(output) = end else {
            panic!("the Catch leads to Done, which succeeds: {end:?}")
        };
        assert_eq!(output["keep"], 1);
        assert_eq!(output["error"]["Error"], DATA_LIMIT_ERROR);
    }

    #[tokio::test]
    async fn a_task_result_over_the_payload_limit_is_caught_by_states_all() {
        let machine = single(task(json!({
            "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Done" }]
        })));
        let tasks = FakeTasks::returning(oversized());
        let step = step_from_start(&machine, json!({}), &tasks).await;
        let caught = continue_to(step);
        assert_eq!(caught.state(), "Done");
        assert_eq!(caught.input()["error"]["Error"], DATA_LIMIT_ERROR);
        let uncaught = single(task(json!({})));
        let step = step_from_start(&uncaught, json!({}), &tasks).await;
        assert_eq!(failed_with(&step), DATA_LIMIT_ERROR);
    }

    #[tokio::test]
    async fn an_oversized_task_input_fails_before_the_task_runs() {
        let machine = single(task(json!({ "Parameters": { "copy.$": "$.blob" } })));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, oversized(), &tasks).await;
        assert_eq!(failed_with(&step), DATA_LIMIT_ERROR);
        assert!(tasks.calls().is_empty());
    }
}
