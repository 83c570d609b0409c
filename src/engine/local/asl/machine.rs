//! The machine: the top level of a definition (substitution, `StartAt`, `States`, the checks
//! that every transition lands and every state is reachable) and the two calls that drive an
//! execution, [`StateMachine::start`] and [`StateMachine::step`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::context::{ExecutionContext, Retries, Scope};
use super::cursor::Cursor;
use super::envelope::State;
use super::errors::{DefinitionError, TaskFailure, RUNTIME_ERROR};
use super::task::TaskInvoker;

const TOP_LEVEL_FIELDS: &[&str] = &[
    "Comment",
    "StartAt",
    "States",
    "Version",
    "TimeoutSeconds",
    "QueryLanguage",
];

/// A parsed and validated state machine, ready to be stepped.
#[derive(Debug)]
pub struct StateMachine {
    start_at: String,
    states: BTreeMap<String, State>,
}

/// What happens after one step of an execution.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Run the next state now.
    Continue(Cursor),
    /// Wait `duration`, then step `then`: a Wait state, or a Retry backoff before re-running
    /// the same Task.
    Sleep {
        /// How long to wait before the next step.
        duration: Duration,
        /// The cursor to step once the time has passed.
        then: Cursor,
    },
    /// The execution succeeded with this output.
    Succeeded(Value),
    /// The execution failed.
    Failed {
        /// The error name.
        error: String,
        /// Its cause.
        cause: String,
    },
}

impl Step {
    pub(super) fn failed(failure: TaskFailure) -> Self {
        Step::Failed {
            error: failure.error,
            cause: failure.cause,
        }
    }
}

impl StateMachine {
    /// Parses `definition` after replacing every `${Name}` with `substitutions[Name]` (an
    /// unknown variable is a [`DefinitionError`] naming it), then validates it.
    pub fn from_json(
        definition: &str,
        substitutions: &BTreeMap<String, String>,
    ) -> Result<Self, DefinitionError> {
        let text = substitute(definition, substitutions)?;
        let root: Value = serde_json::from_str(&text).map_err(DefinitionError::InvalidJson)?;
        let Value::Object(root) = root else {
            return Err(DefinitionError::NotAnObject);
        };
        Self::parse(&root)
    }

    /// The name of the first state.
    pub fn start_at(&self) -> &str {
        &self.start_at
    }

    /// The first cursor of an execution.
    pub fn start(&self, input: Value) -> Cursor {
        Cursor::entering(self.start_at.clone(), input)
    }

    /// Runs exactly one state (for a Task: one attempt) and says what happens next. Bad data
    /// never panics: it becomes [`Step::Failed`] with `States.Runtime` or
    /// `States.DataLimitExceeded`, or a Retry/Catch outcome for Task errors.
    pub async fn step(
        &self,
        cursor: Cursor,
        context: &ExecutionContext,
        tasks: &dyn TaskInvoker,
    ) -> Step {
        self.step_at(cursor, context, tasks, OffsetDateTime::now_utc())
            .await
    }

    /// [`Self::step`] with the clock read as `now`.
    pub(super) async fn step_at(
        &self,
        cursor: Cursor,
        execution: &ExecutionContext,
        tasks: &dyn TaskInvoker,
        now: OffsetDateTime,
    ) -> Step {
        let Some((state_name, state)) = self.states.get_key_value(cursor.state()) else {
            return Step::failed(TaskFailure::new(
                RUNTIME_ERROR,
                format!("the state machine has no state named {:?}", cursor.state()),
            ));
        };
        let retries = if state.is_task() {
            Retries::Counted(cursor.retry_count())
        } else {
            Retries::NotApplicable
        };
        let scope = Scope::new(execution, state_name, retries, now);
        state.run(cursor, &scope, tasks).await
    }

    fn parse(root: &Map<String, Value>) -> Result<Self, DefinitionError> {
        check_top_level_fields(root)?;
        let start_at = match root.get("StartAt") {
            Some(Value::String(start_at)) => start_at.clone(),
            Some(_) => return Err(top_level("StartAt", "must be a string")),
            None => return Err(top_level("StartAt", "is required")),
        };
        let states = parse_states(root.get("States"))?;
        check_targets(&states)?;
        if !states.contains_key(&start_at) {
            return Err(top_level(
                "StartAt",
                format!("names {start_at:?}, which is not a state of this machine"),
            ));
        }
        check_reachability(&start_at, &states)?;
        Ok(StateMachine { start_at, states })
    }
}

fn top_level(field: &str, reason: impl Into<String>) -> DefinitionError {
    DefinitionError::InvalidTopLevel {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Replaces every `${Name}` (letters, digits and `_`) with its substitution.
fn substitute(
    definition: &str,
    substitutions: &BTreeMap<String, String>,
) -> Result<String, DefinitionError> {
    let mut substituted = String::with_capacity(definition.len());
    let mut rest = definition;
    while let Some(start) = rest.find("${") {
        substituted.push_str(&rest[..start]);
        let after_opening = &rest[start + 2..];
        let name = after_opening
            .find('}')
            .map(|end| &after_opening[..end])
            .filter(|name| is_variable_name(name));
        match name {
            Some(name) => {
                let value =
                    substitutions
                        .get(name)
                        .ok_or_else(|| DefinitionError::UnknownVariable {
                            name: name.to_owned(),
                        })?;
                substituted.push_str(value);
                rest = &after_opening[name.len() + 1..];
            }
            None => {
                substituted.push_str("${");
                rest = after_opening;
            }
        }
    }
    substituted.push_str(rest);
    Ok(substituted)
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The top-level fields other than `StartAt` and `States`.
fn check_top_level_fields(root: &Map<String, Value>) -> Result<(), DefinitionError> {
    if let Some(field) = root
        .keys()
        .find(|key| !TOP_LEVEL_FIELDS.contains(&key.as_str()))
    {
        return Err(top_level(
            field,
            format!(
                "is not supported (allowed: {})",
                TOP_LEVEL_FIELDS.join(", ")
            ),
        ));
    }
    if let Some(language) = root.get("QueryLanguage") {
        check_query_language(language).map_err(|reason| top_level("QueryLanguage", reason))?;
    }
    for field in ["Comment", "Version"] {
        if root.get(field).is_some_and(|value| !value.is_string()) {
            return Err(top_level(field, "must be a string"));
        }
    }
    // Validated, then left to the engine, which owns the execution's deadline.
    if root
        .get("TimeoutSeconds")
        .is_some_and(|value| value.as_u64().is_none_or(|seconds| seconds == 0))
    {
        return Err(top_level("TimeoutSeconds", "must be a positive integer"));
    }
    Ok(())
}

/// Checks a `QueryLanguage` (top level or state): only JSONPath runs here.
pub(super) fn check_query_language(language: &Value) -> Result<(), String> {
    match language.as_str() {
        Some("JSONPath") => Ok(()),
        Some(other) => Err(format!(
            "is {other:?}, which is not supported (only JSONPath is)"
        )),
        None => Err("must be a string".to_owned()),
    }
}

fn parse_states(states: Option<&Value>) -> Result<BTreeMap<String, State>, DefinitionError> {
    let definitions = match states {
        Some(Value::Object(states)) if !states.is_empty() => states,
        Some(_) => return Err(top_level("States", "must be a non-empty object of states")),
        None => return Err(top_level("States", "is required")),
    };
    definitions
        .iter()
        .map(|(name, definition)| Ok((name.clone(), State::parse(name, definition)?)))
        .collect()
}

/// Every `Next`, `Default` and Catcher `Next` names a state of the machine.
fn check_targets(states: &BTreeMap<String, State>) -> Result<(), DefinitionError> {
    for (name, state) in states {
        for (field, target) in state.targets() {
            if !states.contains_key(target) {
                return Err(DefinitionError::MissingTarget {
                    state: name.clone(),
                    field,
                    target: target.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn check_reachability(
    start_at: &str,
    states: &BTreeMap<String, State>,
) -> Result<(), DefinitionError> {
    let mut reached = BTreeSet::from([start_at]);
    let mut pending = vec![start_at];
    while let Some(name) = pending.pop() {
        let Some(state) = states.get(name) else {
            continue;
        };
        for (_, target) in state.targets() {
            if reached.insert(target) {
                pending.push(target);
            }
        }
    }
    match states.keys().find(|name| !reached.contains(name.as_str())) {
        Some(name) => Err(DefinitionError::Unreachable {
            state: name.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        at, execution, machine, rejection, run_to_end, runtime_cause, single, single_rejection,
        step, task, FakeTasks,
    };
    use super::*;

    #[test]
    fn an_unknown_top_level_field_is_rejected() {
        let message = rejection(json!({
            "StartAt": "S", "States": { "S": { "Type": "Succeed" } }, "Startat": "S"
        }))
        .to_string();
        assert!(
            message.starts_with("top-level field \"Startat\" is not supported"),
            "{message}"
        );
    }

    #[test]
    fn jsonata_is_rejected_at_the_top_level_and_in_a_state() {
        let message = rejection(json!({
            "QueryLanguage": "JSONata",
            "StartAt": "S", "States": { "S": { "Type": "Succeed" } }
        }))
        .to_string();
        assert!(message.contains("\"QueryLanguage\""), "{message}");
        assert!(message.contains("JSONata"), "{message}");
        let message =
            single_rejection(json!({ "Type": "Pass", "QueryLanguage": "JSONata", "Next": "Done" }));
        assert!(
            message.starts_with("state \"S\": field \"QueryLanguage\""),
            "{message}"
        );
    }

    #[test]
    fn version_timeout_seconds_and_jsonpath_are_accepted_at_the_top_level() {
        let machine = machine(json!({
            "Comment": "c", "Version": "1.0", "TimeoutSeconds": 300, "QueryLanguage": "JSONPath",
            "StartAt": "S", "States": { "S": { "Type": "Succeed" } }
        }));
        assert_eq!(machine.start_at(), "S");
    }

    #[test]
    fn a_next_naming_no_state_is_rejected() {
        let error = rejection(json!({
            "StartAt": "S", "States": { "S": { "Type": "Pass", "Next": "Nowhere" } }
        }));
        assert!(
            matches!(&error, DefinitionError::MissingTarget { state, field, target }
                if state == "S" && field == "Next" && target == "Nowhere"),
            "{error}"
        );
    }

    #[test]
    fn a_catch_next_or_choice_default_naming_no_state_is_rejected() {
        let message = single_rejection(task(json!({
            "Catch": [{ "ErrorEquals": ["States.ALL"], "Next": "Nowhere" }]
        })));
        assert!(
            message.contains("field \"Catch[0].Next\" names \"Nowhere\""),
            "{message}"
        );
        let message = single_rejection(json!({
            "Type": "Choice",
            "Choices": [{ "Variable": "$.a", "IsPresent": true, "Next": "Done" }],
            "Default": "Nowhere"
        }));
        assert!(
            message.contains("field \"Default\" names \"Nowhere\""),
            "{message}"
        );
    }

    #[test]
    fn a_start_at_naming_no_state_is_rejected() {
        let message = rejection(json!({
            "StartAt": "Missing", "States": { "S": { "Type": "Succeed" } }
        }))
        .to_string();
        assert!(
            message.starts_with("top-level field \"StartAt\" names \"Missing\""),
            "{message}"
        );
    }

    #[test]
    fn an_unreachable_state_is_rejected() {
        let error = rejection(json!({
            "StartAt": "S",
            "States": { "S": { "Type": "Succeed" }, "Orphan": { "Type": "Succeed" } }
        }));
        assert!(
            matches!(&error, DefinitionError::Unreachable { state } if state == "Orphan"),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_substitution_variable_is_rejected_by_name() {
        let definition =
            r#"{"StartAt":"S","States":{"S":{"Type":"Task","Resource":"${Missing}","End":true}}}"#;
        let error = StateMachine::from_json(definition, &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&error, DefinitionError::UnknownVariable { name } if name == "Missing"),
            "{error}"
        );
        assert!(error.to_string().contains("${Missing}"), "{error}");
    }

    #[tokio::test]
    async fn substitutions_replace_every_variable() {
        let definition = r#"{"StartAt":"A","States":{
            "A":{"Type":"Task","Resource":"${Fn}","Next":"B"},
            "B":{"Type":"Task","Resource":"${Fn}:${Alias}","End":true}}}"#;
        let substitutions = BTreeMap::from([
            ("Fn".to_owned(), "arn:fn".to_owned()),
            ("Alias".to_owned(), "live".to_owned()),
        ]);
        let machine = StateMachine::from_json(definition, &substitutions).unwrap();
        let tasks = FakeTasks::returning(json!({}));
        let (end, _) = run_to_end(&machine, json!({}), &tasks).await;
        assert_eq!(end, Step::Succeeded(json!({})));
        let resources: Vec<String> = tasks.calls().into_iter().map(|(r, _)| r).collect();
        assert_eq!(resources, ["arn:fn", "arn:fn:live"]);
    }

    #[test]
    fn a_definition_that_is_not_json_is_rejected() {
        let error = StateMachine::from_json("{", &BTreeMap::new()).unwrap_err();
        assert!(matches!(error, DefinitionError::InvalidJson(_)), "{error}");
    }

    #[tokio::test]
    async fn a_cursor_naming_no_state_fails_with_states_runtime() {
        let machine = single(json!({ "Type": "Pass", "Next": "Done" }));
        let step = step(
            &machine,
            at("Gone", json!({})),
            &FakeTasks::returning(json!(null)),
        )
        .await;
        runtime_cause(&step);
    }

    #[test]
    fn a_step_can_run_on_any_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let machine = single(json!({ "Type": "Pass", "Next": "Done" }));
        let tasks = FakeTasks::returning(json!(null));
        let context = execution();
        let future = machine.step(machine.start(json!({})), &context, &tasks);
        assert_send(&future);
    }
}
