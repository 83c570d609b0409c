//! What can go wrong: a definition that cannot run ([`DefinitionError`]), the named errors an
//! execution fails with ([`TaskFailure`]), and the `ErrorEquals` lists that Retry and Catch
//! match those names with.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fields::Fields;

/// Matches every error name (`States.Runtime` never reaches a Retrier or Catcher).
pub(super) const ALL_ERRORS: &str = "States.ALL";
/// Matches every error name but the two timeouts, `States.Timeout` and
/// `States.HeartbeatTimeout`.
pub(super) const ANY_TASK_ERROR: &str = "States.TaskFailed";
/// A Task attempt ran past its `TimeoutSeconds`. As an `ErrorEquals` name it also matches
/// [`HEARTBEAT_TIMEOUT_ERROR`]: the States Language defines `States.Timeout` as a Task that
/// either ran too long or failed to heartbeat in time.
pub(super) const TIMEOUT_ERROR: &str = "States.Timeout";
/// A Task attempt sent no heartbeat for longer than its `HeartbeatSeconds`.
pub(super) const HEARTBEAT_TIMEOUT_ERROR: &str = "States.HeartbeatTimeout";
/// A path selected nothing or a value had the wrong type; no Retrier or Catcher handles it.
pub(super) const RUNTIME_ERROR: &str = "States.Runtime";
/// A `ResultPath` cannot be applied to the state's input; Retry and Catch handle it.
pub(super) const RESULT_PATH_ERROR: &str = "States.ResultPathMatchFailure";
/// A payload is over the size limit.
pub(super) const DATA_LIMIT_ERROR: &str = "States.DataLimitExceeded";
pub(super) const NO_CHOICE_MATCHED_ERROR: &str = "States.NoChoiceMatched";

pub(super) const SUPPORTED_STATE_TYPES: &str = "Task, Pass, Choice, Wait, Succeed, Fail";

/// Why a definition cannot run. Each message names the state and the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The definition (after substitution) is not JSON.
    #[error("the definition is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The definition is JSON but not an object.
    #[error("the definition must be a JSON object")]
    NotAnObject,
    /// A `${Name}` in the definition has no substitution.
    #[error("the definition uses \"${{{name}}}\" but no substitution is given for {name:?}")]
    UnknownVariable {
        /// The variable's name, without `${` and `}`.
        name: String,
    },
    /// A top-level field is unknown, missing or malformed.
    #[error("top-level field \"{field}\" {reason}")]
    InvalidTopLevel {
        /// The top-level field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A state has a `Type` this interpreter does not run.
    #[error(
        "state \"{state}\": type \"{type_name}\" is not supported (supported: {SUPPORTED_STATE_TYPES})"
    )]
    UnsupportedStateType {
        /// The state's name.
        state: String,
        /// The rejected `Type`.
        type_name: String,
    },
    /// A state, Retrier, Catcher or choice rule has a field that is unknown or not supported.
    #[error(
        "state \"{state}\": field \"{field}\" is not supported in {within} (allowed: {allowed})"
    )]
    UnknownField {
        /// The state's name.
        state: String,
        /// The field, prefixed by where it sits (e.g. `Retry[0].Foo`).
        field: String,
        /// What holds the field, e.g. "a Task state" or "a Retrier".
        within: String,
        /// The fields allowed there.
        allowed: String,
    },
    /// A field holds a value that is missing, malformed or inconsistent.
    #[error("state \"{state}\": field \"{field}\" {reason}")]
    InvalidField {
        /// The state's name.
        state: String,
        /// The field, prefixed by where it sits (e.g. `Choices[1].Next`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A state is malformed as a whole.
    #[error("state \"{state}\": {reason}")]
    InvalidState {
        /// The state's name.
        state: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `Next`, `Default` or Catcher `Next` names a state that does not exist.
    #[error(
        "state \"{state}\": field \"{field}\" names \"{target}\", which is not a state of this machine"
    )]
    MissingTarget {
        /// The state holding the transition.
        state: String,
        /// The transition field, e.g. `Catch[0].Next`.
        field: String,
        /// The missing state's name.
        target: String,
    },
    /// A path value uses an intrinsic function such as `States.Format(...)`.
    #[error("state \"{state}\": field \"{field}\": intrinsic functions are not supported")]
    IntrinsicFunction {
        /// The state's name.
        state: String,
        /// The field holding the intrinsic function.
        field: String,
    },
    /// A state cannot be reached from `StartAt` (Step Functions rejects such definitions).
    #[error("state \"{state}\" cannot be reached from StartAt")]
    Unreachable {
        /// The unreachable state's name.
        state: String,
    },
}

/// A named error with its cause, as a Task reports it and as Retry/Catch match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The error name, matched against `ErrorEquals`.
    pub error: String,
    /// A human-readable explanation.
    pub cause: String,
}

impl TaskFailure {
    pub(super) fn new(error: &str, cause: String) -> Self {
        TaskFailure {
            error: error.to_owned(),
            cause,
        }
    }

    /// A `States.Runtime` failure of `state`.
    pub(super) fn runtime(state: &str, message: impl std::fmt::Display) -> Self {
        Self::new(RUNTIME_ERROR, format!("state {state:?}: {message}"))
    }

    /// The JSON a Catcher passes on: `{"Error": ..., "Cause": ...}`.
    pub(super) fn to_error_output(&self) -> Value {
        serde_json::json!({ "Error": self.error, "Cause": self.cause })
    }
}

/// What kind of JSON value `value` is, for error messages.
pub(super) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `ErrorEquals` of a Retrier or Catcher.
#[derive(Debug)]
pub(super) struct ErrorEquals(Vec<String>);

impl ErrorEquals {
    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let invalid = || fields.invalid("ErrorEquals", "must be a non-empty array of error names");
        let Some(Value::Array(items)) = fields.get("ErrorEquals") else {
            return Err(invalid());
        };
        let names = items
            .iter()
            .map(|item| match item {
                Value::String(name) if !name.is_empty() => Ok(name.clone()),
                _ => Err(invalid()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err(invalid());
        }
        if names.len() > 1 && names.iter().any(|name| name == ALL_ERRORS) {
            return Err(fields.invalid(
                "ErrorEquals",
                format!("must list {ALL_ERRORS} alone when it uses it"),
            ));
        }
        Ok(ErrorEquals(names))
    }

    pub(super) fn matches(&self, error: &str) -> bool {
        let is_timeout = error == TIMEOUT_ERROR || error == HEARTBEAT_TIMEOUT_ERROR;
        self.0.iter().any(|name| match name.as_str() {
            ALL_ERRORS => true,
            ANY_TASK_ERROR => !is_timeout,
            TIMEOUT_ERROR => is_timeout,
            name => name == error,
        })
    }

    fn uses_all_errors(&self) -> bool {
        self.0.iter().any(|name| name == ALL_ERRORS)
    }

    /// Checks that `States.ALL` appears only in the last entry of `list` (`Retry` or `Catch`).
    pub(super) fn check_catch_all_is_last<'e>(
        fields: &Fields<'_>,
        list: &str,
        entries: impl ExactSizeIterator<Item = &'e ErrorEquals>,
    ) -> Result<(), DefinitionError> {
        let count = entries.len();
        for (index, names) in entries.enumerate() {
            if index + 1 < count && names.uses_all_errors() {
                return Err(fields.invalid(
                    &format!("{list}[{index}].ErrorEquals"),
                    format!("uses {ALL_ERRORS}, so it must be the last entry of {list}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{single_rejection, task};
    use super::*;

    #[test]
    fn states_all_must_stand_alone_in_error_equals() {
        let message = single_rejection(task(json!({
            "Retry": [{ "ErrorEquals": ["States.ALL", "Other"] }]
        })));
        assert!(
            message.contains("field \"Retry[0].ErrorEquals\""),
            "{message}"
        );
        assert!(message.contains("States.ALL alone"), "{message}");
    }

    #[test]
    fn states_all_must_be_in_the_last_retrier_and_catcher() {
        let message = single_rejection(task(json!({
            "Retry": [{ "ErrorEquals": ["States.ALL"] }, { "ErrorEquals": ["Other"] }]
        })));
        assert!(
            message.contains("\"Retry[0].ErrorEquals\" uses States.ALL"),
            "{message}"
        );
        let message = single_rejection(task(json!({
            "Catch": [
                { "ErrorEquals": ["States.ALL"], "Next": "Done" },
                { "ErrorEquals": ["Other"], "Next": "Done" }
            ]
        })));
        assert!(
            message.contains("\"Catch[0].ErrorEquals\" uses States.ALL"),
            "{message}"
        );
    }

    #[test]
    fn error_equals_matches_its_names_and_the_wildcards() {
        let names = |list: &[&str]| ErrorEquals(list.iter().map(|n| (*n).to_owned()).collect());
        assert!(names(&["A", "B"]).matches("B"));
        assert!(!names(&["A", "B"]).matches("C"));
        assert!(names(&[ALL_ERRORS]).matches(TIMEOUT_ERROR));
        assert!(names(&[ANY_TASK_ERROR]).matches("Lambda.Unknown"));
        assert!(!names(&[ANY_TASK_ERROR]).matches(TIMEOUT_ERROR));
    }

    #[test]
    fn a_heartbeat_timeout_is_matched_by_its_name_states_timeout_and_states_all_only() {
        let names = |list: &[&str]| ErrorEquals(list.iter().map(|n| (*n).to_owned()).collect());
        assert!(names(&[HEARTBEAT_TIMEOUT_ERROR]).matches(HEARTBEAT_TIMEOUT_ERROR));
        assert!(names(&[TIMEOUT_ERROR]).matches(HEARTBEAT_TIMEOUT_ERROR));
        assert!(names(&[ALL_ERRORS]).matches(HEARTBEAT_TIMEOUT_ERROR));
        assert!(!names(&[ANY_TASK_ERROR]).matches(HEARTBEAT_TIMEOUT_ERROR));
        assert!(!names(&[HEARTBEAT_TIMEOUT_ERROR]).matches(TIMEOUT_ERROR));
        assert!(!names(&["Other"]).matches(HEARTBEAT_TIMEOUT_ERROR));
    }
}
