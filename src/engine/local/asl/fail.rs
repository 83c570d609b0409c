//! The Fail state: ends the execution with an `Error` and a `Cause`, fixed or read from the
//! input (`ErrorPath`, `CausePath`).

use serde_json::Value;

use super::context::Scope;
use super::envelope::{Body, StateInput};
use super::errors::{describe, DefinitionError, TaskFailure};
use super::fields::Fields;
use super::paths::ReadPath;

#[derive(Debug)]
pub(super) struct FailState {
    error: FailText,
    cause: FailText,
}

/// An `Error` or a `Cause`.
#[derive(Debug)]
enum FailText {
    Fixed(String),
    FromPath(ReadPath),
}

impl FailState {
    pub(super) const FIELDS: &'static [&'static str] = &[
        "Type",
        "Comment",
        "QueryLanguage",
        "Error",
        "Cause",
        "ErrorPath",
        "CausePath",
    ];

    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        Ok(FailState {
            error: FailText::parse(fields, "Error", "ErrorPath")?,
            cause: FailText::parse(fields, "Cause", "CausePath")?,
        })
    }

    pub(super) fn run(&self, input: StateInput, scope: &Scope<'_>) -> Body<'_> {
        let input = input.effective();
        let reported = self.error.resolve(input, scope).and_then(|error| {
            let cause = self.cause.resolve(input, scope)?;
            Ok(TaskFailure { error, cause })
        });
        match reported {
            Ok(failure) | Err(failure) => Body::Failed(failure),
        }
    }
}

impl FailText {
    fn parse(
        fields: &Fields<'_>,
        fixed_field: &str,
        path_field: &str,
    ) -> Result<Self, DefinitionError> {
        let fixed = fields.optional_string(fixed_field)?;
        let path = fields.optional_string(path_field)?;
        match (fixed, path) {
            (Some(_), Some(_)) => {
                Err(fields.invalid(path_field, format!("cannot be combined with {fixed_field}")))
            }
            (_, Some(path)) => Ok(FailText::FromPath(ReadPath::parse_field(
                fields, path_field, path,
            )?)),
            (fixed, None) => Ok(FailText::Fixed(fixed.unwrap_or_default().to_owned())),
        }
    }

    fn resolve(&self, input: &Value, scope: &Scope<'_>) -> Result<String, TaskFailure> {
        match self {
            FailText::Fixed(text) => Ok(text.clone()),
            FailText::FromPath(path) => match path.read(input, scope)? {
                Value::String(text) => Ok(text),
                other => Err(scope.runtime_failure(format_args!(
                    "{} {:?} selected {}, not a string",
                    path.field(),
                    path.text(),
                    describe(&other)
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        machine, runtime_cause, single_rejection, step_from_start, FakeTasks,
    };
    use super::super::Step;

    #[test]
    fn a_fail_state_cannot_have_next_or_both_a_fixed_and_a_path_text() {
        let message = single_rejection(json!({ "Type": "Fail", "Next": "Done" }));
        assert!(
            message.contains("field \"Next\" is not supported in a Fail state"),
            "{message}"
        );
        let message = single_rejection(json!({ "Type": "Fail", "Error": "E", "ErrorPath": "$.e" }));
        assert!(
            message.contains("field \"ErrorPath\" cannot be combined with Error"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_fail_state_reports_its_error_and_cause() {
        let tasks = FakeTasks::returning(json!(null));
        let fixed = machine(
            json!({ "StartAt": "F", "States": { "F": { "Type": "Fail", "Error": "My.Error", "Cause": "because" } } }),
        );
        let step = step_from_start(&fixed, json!({}), &tasks).await;
        assert_eq!(
            step,
            Step::Failed {
                error: "My.Error".to_owned(),
                cause: "because".to_owned()
            }
        );
        let from_paths = machine(
            json!({ "StartAt": "F", "States": { "F": { "Type": "Fail", "ErrorPath": "$.e", "CausePath": "$.c" } } }),
        );
        let step = step_from_start(
            &from_paths,
            json!({ "e": "Dyn.Error", "c": "dynamic" }),
            &tasks,
        )
        .await;
        assert_eq!(
            step,
            Step::Failed {
                error: "Dyn.Error".to_owned(),
                cause: "dynamic".to_owned()
            }
        );
        let step = step_from_start(&from_paths, json!({ "e": 1, "c": "x" }), &tasks).await;
        runtime_cause(&step);
    }
}
