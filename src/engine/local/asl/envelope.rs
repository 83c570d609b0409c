//! The state envelope: what every state does around its own work, once for all state types.
//! `InputPath` selects the effective input, the state's body runs and returns its result,
//! `OutputPath` filters that result, the output is held to the payload limit, and the
//! execution moves on as the body said.

use std::time::Duration;

use serde_json::Value;

use super::choice::ChoiceState;
use super::context::Scope;
use super::cursor::Cursor;
use super::errors::{DefinitionError, TaskFailure, DATA_LIMIT_ERROR};
use super::fail::FailState;
use super::fields::Fields;
use super::machine::{check_query_language, Step};
use super::pass::PassState;
use super::paths::DataPath;
use super::succeed::SucceedState;
use super::task::{TaskInvoker, TaskState};
use super::wait::WaitState;

/// Largest payload, in bytes of compact JSON, that Step Functions passes between states.
pub(super) const MAX_PAYLOAD_BYTES: usize = 262_144;

/// One state of the machine: the envelope's paths around a body of one of the six types.
#[derive(Debug)]
pub(super) struct State {
    input_path: DataPath,
    output_path: DataPath,
    kind: StateKind,
}

#[derive(Debug)]
enum StateKind {
    Task(TaskState),
    Pass(PassState),
    Choice(ChoiceState),
    Wait(WaitState),
    Succeed(SucceedState),
    Fail(FailState),
}

/// The `Type` of a state.
#[derive(Debug, Clone, Copy)]
enum StateType {
    Task,
    Pass,
    Choice,
    Wait,
    Succeed,
    Fail,
}

impl StateType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Task" => StateType::Task,
            "Pass" => StateType::Pass,
            "Choice" => StateType::Choice,
            "Wait" => StateType::Wait,
            "Succeed" => StateType::Succeed,
            "Fail" => StateType::Fail,
            _ => return None,
        })
    }

    /// Every field a state of this type may have.
    fn fields(self) -> &'static [&'static str] {
        match self {
            StateType::Task => TaskState::FIELDS,
            StateType::Pass => PassState::FIELDS,
            StateType::Choice => ChoiceState::FIELDS,
            StateType::Wait => WaitState::FIELDS,
            StateType::Succeed => SucceedState::FIELDS,
            StateType::Fail => FailState::FIELDS,
        }
    }

    fn parse_body(self, fields: &Fields<'_>) -> Result<StateKind, DefinitionError> {
        Ok(match self {
            StateType::Task => StateKind::Task(TaskState::parse(fields)?),
            StateType::Pass => StateKind::Pass(PassState::parse(fields)?),
            StateType::Choice => StateKind::Choice(ChoiceState::parse(fields)?),
            StateType::Wait => StateKind::Wait(WaitState::parse(fields)?),
            StateType::Succeed => StateKind::Succeed(SucceedState),
            StateType::Fail => StateKind::Fail(FailState::parse(fields)?),
        })
    }
}

/// `Next` or `End`: where a state goes when it is done.
#[derive(Debug)]
pub(super) enum Transition {
    Next(String),
    End,
}

impl Transition {
    /// Reads the state's `Next` or `End: true`; it must have exactly one of them.
    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let next = fields.optional_string("Next")?;
        let end = fields.optional_bool("End")?.unwrap_or(false);
        match (next, end) {
            (Some(_), true) => Err(fields.invalid_state(
                "has both \"Next\" and \"End\": true; it needs exactly one of them",
            )),
            (Some(next), false) => Ok(Transition::Next(next.to_owned())),
            (None, true) => Ok(Transition::End),
            (None, false) => Err(fields.invalid_state("needs either \"Next\" or \"End\": true")),
        }
    }

    /// The state this transition names, if it names one.
    pub(super) fn target(&self) -> Option<&str> {
        match self {
            Transition::Next(next) => Some(next),
            Transition::End => None,
        }
    }
}

/// A state's input as its body sees it.
pub(super) struct StateInput {
    raw: Value,
    /// What `InputPath` selected, when it is not the whole raw input.
    selected: Option<Value>,
}

impl StateInput {
    /// The state's input as it arrived, which `ResultPath` writes into.
    pub(super) fn raw(&self) -> &Value {
        &self.raw
    }

    /// The effective input: what `InputPath` selected.
    pub(super) fn effective(&self) -> &Value {
        self.selected.as_ref().unwrap_or(&self.raw)
    }

    pub(super) fn into_raw(self) -> Value {
        self.raw
    }

    pub(super) fn into_effective(self) -> Value {
        self.selected.unwrap_or(self.raw)
    }
}

/// How a state's body ends; the envelope does the rest.
pub(super) enum Body<'m> {
    /// The body's result: `OutputPath` and the payload limit apply, then `Exit`.
    Result(Value, Exit<'m>),
    /// A Retrier runs the same Task again after `delay`, on the same raw `input`.
    Retry {
        delay: Duration,
        retries: Vec<u32>,
        input: Value,
    },
    /// A Catcher handled a failure: its output goes to `next` without `OutputPath`, as on
    /// Step Functions (the payload limit still applies).
    Caught { output: Value, next: &'m str },
    /// The execution fails.
    Failed(TaskFailure),
}

/// Where the execution goes with a body's output.
pub(super) enum Exit<'m> {
    /// The state's `Next` or `End`.
    Follow(&'m Transition),
    /// A state a Choice rule picked.
    To(&'m str),
    /// The execution succeeds (a Succeed state).
    End,
    /// Sleep for the duration, then follow the transition (a Wait state).
    SleepThen(Duration, &'m Transition),
}

impl State {
    /// Parses the state `name` from its definition.
    pub(super) fn parse(name: &str, definition: &Value) -> Result<Self, DefinitionError> {
        let Value::Object(map) = definition else {
            return Err(DefinitionError::InvalidState {
                state: name.to_owned(),
                reason: "must be a JSON object".to_owned(),
            });
        };
        let fields = Fields::of_state(name, map);
        let type_name = fields.required_string("Type")?;
        let state_type = StateType::from_name(type_name).ok_or_else(|| {
            DefinitionError::UnsupportedStateType {
                state: name.to_owned(),
                type_name: type_name.to_owned(),
            }
        })?;
        fields.allow_only(&format!("a {type_name} state"), state_type.fields())?;
        fields.optional_string("Comment")?;
        if let Some(language) = fields.get("QueryLanguage") {
            check_query_language(language)
                .map_err(|reason| fields.invalid("QueryLanguage", reason))?;
        }
        let kind = state_type.parse_body(&fields)?;
        Ok(State {
            input_path: DataPath::parse(&fields, "InputPath")?,
            output_path: DataPath::parse(&fields, "OutputPath")?,
            kind,
        })
    }

    /// Whether this is a Task state (the only kind with retries).
    pub(super) fn is_task(&self) -> bool {
        matches!(self.kind, StateKind::Task(_))
    }

    /// Every state this one can move to, with the field that names it.
    pub(super) fn targets(&self) -> Vec<(String, &str)> {
        match &self.kind {
            StateKind::Task(task) => task.targets(),
            StateKind::Pass(pass) => next_of(pass.transition()),
            StateKind::Choice(choice) => choice.targets(),
            StateKind::Wait(wait) => next_of(wait.transition()),
            StateKind::Succeed(_) | StateKind::Fail(_) => Vec::new(),
        }
    }

    /// Runs the state on `cursor` and says what happens next.
    pub(super) async fn run(
        &self,
        cursor: Cursor,
        scope: &Scope<'_>,
        tasks: &dyn TaskInvoker,
    ) -> Step {
        if let StateKind::Wait(wait) = &self.kind {
            if cursor.has_waited() {
                let (output, _) = cursor.into_parts();
                return Exit::Follow(wait.transition()).take(output, scope);
            }
        }
        let (raw, retries) = cursor.into_parts();
        let input = match self.input_path.select_within(&raw, scope) {
            Ok(selected) => StateInput { raw, selected },
            Err(failure) => return Step::failed(failure),
        };
        let body = match &self.kind {
            StateKind::Task(task) => task.run(input, &retries, scope, tasks).await,
            StateKind::Pass(pass) => pass.run(input, scope),
            StateKind::Choice(choice) => choice.run(input, scope),
            StateKind::Wait(wait) => wait.run(input, scope),
            StateKind::Succeed(succeed) => succeed.run(input),
            StateKind::Fail(fail) => fail.run(input, scope),
        };
        self.leave(body, scope)
    }

    fn leave(&self, body: Body<'_>, scope: &Scope<'_>) -> Step {
        match body {
            Body::Result(result, exit) => {
                let output = self
                    .output_path
                    .select(result, scope)
                    .and_then(|output| ensure_within_limit(output, "the state's output", scope));
                match output {
                    Ok(output) => exit.take(output, scope),
                    Err(failure) => Step::failed(failure),
                }
            }
            Body::Retry {
                delay,
                retries,
                input,
            } => {
                crate::metrics::global().state_retried(scope.state_name());
                Step::Sleep {
                    duration: delay,
                    then: Cursor::retrying(scope.state_name().to_owned(), input, retries),
                }
            }
            Body::Caught { output, next } => {
                match ensure_within_limit(output, "the state's output", scope) {
                    Ok(output) => Step::Continue(Cursor::entering(next, output)),
                    Err(failure) => Step::failed(failure),
                }
            }
            Body::Failed(failure) => Step::failed(failure),
        }
    }
}

fn next_of(transition: &Transition) -> Vec<(String, &str)> {
    transition
        .target()
        .map(|next| ("Next".to_owned(), next))
        .into_iter()
        .collect()
}

impl Exit<'_> {
    fn take(self, output: Value, scope: &Scope<'_>) -> Step {
        match self {
            Exit::Follow(Transition::Next(next)) => {
                Step::Continue(Cursor::entering(next.as_str(), output))
            }
            Exit::To(next) => Step::Continue(Cursor::entering(next, output)),
            Exit::Follow(Transition::End) | Exit::End => Step::Succeeded(output),
            Exit::SleepThen(duration, Transition::Next(next)) => Step::Sleep {
                duration,
                then: Cursor::entering(next, output),
            },
            Exit::SleepThen(duration, Transition::End) => Step::Sleep {
                duration,
                then: Cursor::wait_elapsed(scope.state_name().to_owned(), output),
            },
        }
    }
}

/// `value` if it fits the payload limit; `States.DataLimitExceeded` naming `what` otherwise.
pub(super) fn ensure_within_limit(
    value: Value,
    what: &str,
    scope: &Scope<'_>,
) -> Result<Value, TaskFailure> {
    let size = serialized_len(&value);
    if size > MAX_PAYLOAD_BYTES {
        Err(TaskFailure::new(
            DATA_LIMIT_ERROR,
            format!(
                "state {:?}: {what} is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
                scope.state_name()
            ),
        ))
    } else {
        Ok(value)
    }
}

fn serialized_len(value: &Value) -> usize {
    struct ByteCounter(usize);
    impl std::io::Write for ByteCounter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = ByteCounter(0);
    // Writing a Value into a counter cannot fail: its keys are strings and it writes nowhere.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        at, failed_with, oversized, rejection, single, single_rejection, step_from_start, FakeTasks,
    };
    use super::*;

    #[test]
    fn an_unsupported_state_type_is_rejected_naming_the_state_and_type() {
        let message = single_rejection(json!({ "Type": "Map", "Next": "Done" }));
        assert_eq!(
            message,
            "state \"S\": type \"Map\" is not supported (supported: Task, Pass, Choice, Wait, Succeed, Fail)"
        );
        let message = single_rejection(json!({ "Type": "Parallel", "Next": "Done" }));
        assert!(
            message.contains("\"Parallel\" is not supported"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_state_field_is_rejected_naming_the_state_and_field() {
        let message = single_rejection(json!({ "Type": "Pass", "Nxet": "Done", "End": true }));
        assert!(
            message.starts_with("state \"S\": field \"Nxet\" is not supported in a Pass state"),
            "{message}"
        );
    }

    #[test]
    fn a_state_needs_exactly_one_of_next_and_end() {
        let message = single_rejection(json!({ "Type": "Pass", "Next": "Done", "End": true }));
        assert!(message.contains("needs exactly one"), "{message}");
        let message =
            rejection(json!({ "StartAt": "S", "States": { "S": { "Type": "Pass" } } })).to_string();
        assert!(
            message.contains("needs either \"Next\" or \"End\": true"),
            "{message}"
        );
    }

    #[test]
    fn a_state_that_is_not_an_object_or_has_no_type_is_rejected() {
        let message = single_rejection(json!("Pass"));
        assert_eq!(message, "state \"S\": must be a JSON object");
        let message = single_rejection(json!({ "Next": "Done" }));
        assert_eq!(message, "state \"S\": field \"Type\" is required");
    }

    #[tokio::test]
    async fn a_null_input_path_or_output_path_gives_an_empty_object() {
        let tasks = FakeTasks::returning(json!(null));
        let machine = single(
            json!({ "Type": "Pass", "InputPath": null, "ResultPath": "$.kept", "Next": "Done" }),
        );
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(
            step,
            Step::Continue(at("Done", json!({ "a": 1, "kept": {} })))
        );
        let machine = single(json!({ "Type": "Pass", "OutputPath": null, "Next": "Done" }));
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!({}))));
    }

    #[tokio::test]
    async fn output_path_selects_the_output() {
        let machine = single(
            json!({ "Type": "Pass", "Result": 7, "ResultPath": "$.r", "OutputPath": "$.r", "Next": "Done" }),
        );
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!(7))));
    }

    #[tokio::test]
    async fn every_state_type_applies_input_path_and_output_path() {
        let input = json!({ "inner": { "keep": { "v": 1 }, "drop": 2 }, "outer": 3 });
        let tasks = FakeTasks::returning(json!({ "keep": { "v": 2 } }));
        let paths = json!({ "InputPath": "$.inner", "OutputPath": "$.keep" });
        let with_paths = |state: Value| {
            let mut state = state;
            if let (Value::Object(state), Value::Object(paths)) = (&mut state, paths.clone()) {
                state.extend(paths);
            }
            state
        };
        let cases = [
            (
                json!({ "Type": "Task", "Resource": "arn:t", "Next": "Done" }),
                json!({ "v": 2 }),
            ),
            (json!({ "Type": "Pass", "Next": "Done" }), json!({ "v": 1 })),
            (
                json!({ "Type": "Choice", "Choices": [{ "Variable": "$.drop", "NumericEquals": 2, "Next": "Done" }] }),
                json!({ "v": 1 }),
            ),
        ];
        for (state, expected) in cases {
            let machine = single(with_paths(state.clone()));
            let step = step_from_start(&machine, input.clone(), &tasks).await;
            assert_eq!(step, Step::Continue(at("Done", expected)), "{state}");
        }
        let wait = single(with_paths(
            json!({ "Type": "Wait", "Seconds": 1, "Next": "Done" }),
        ));
        let step = step_from_start(&wait, input.clone(), &tasks).await;
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::from_secs(1),
                then: at("Done", json!({ "v": 1 }))
            }
        );
    }

    #[tokio::test]
    async fn an_oversized_state_output_fails_with_data_limit_exceeded() {
        let machine = single(json!({ "Type": "Pass", "Next": "Done" }));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, oversized(), &tasks).await;
        assert_eq!(failed_with(&step), DATA_LIMIT_ERROR);
        let just_fits = json!("x".repeat(MAX_PAYLOAD_BYTES - 2));
        let step = step_from_start(&machine, just_fits.clone(), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", just_fits)));
    }
}
