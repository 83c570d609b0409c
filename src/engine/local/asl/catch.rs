//! A Task's `Catch`: where the execution goes when a failure outlasts its Retriers, with the
//! error output (`{"Error": ..., "Cause": ...}`) placed at the Catcher's `ResultPath`.

use serde_json::Value;

use super::context::Scope;
use super::envelope::Body;
use super::errors::{DefinitionError, ErrorEquals, TaskFailure};
use super::fields::Fields;
use super::result_path::ResultPath;

const CATCHER_FIELDS: &[&str] = &["ErrorEquals", "Next", "ResultPath", "Comment"];

/// The Catchers of a Task, in order.
#[derive(Debug)]
pub(super) struct Catchers(Vec<Catcher>);

#[derive(Debug)]
struct Catcher {
    error_equals: ErrorEquals,
    next: String,
    result_path: ResultPath,
}

impl Catchers {
    /// The Task's `Catch` field (no Catchers when it is absent).
    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let catchers = fields
            .objects("Catch")?
            .iter()
            .map(Catcher::parse)
            .collect::<Result<Vec<_>, _>>()?;
        ErrorEquals::check_catch_all_is_last(
            fields,
            "Catch",
            catchers.iter().map(|catcher| &catcher.error_equals),
        )?;
        Ok(Catchers(catchers))
    }

    /// Each Catcher's `Next`, labelled `Catch[i].Next`.
    pub(super) fn targets(&self) -> impl Iterator<Item = (String, &str)> {
        self.0
            .iter()
            .enumerate()
            .map(|(index, catcher)| (format!("Catch[{index}].Next"), catcher.next.as_str()))
    }

    /// The first Catcher that matches `failure` takes the execution on, with the error output
    /// placed into `raw_input`; without one, the execution fails.
    pub(super) fn handle(
        &self,
        failure: TaskFailure,
        raw_input: &Value,
        scope: &Scope<'_>,
    ) -> Body<'_> {
        let Some(catcher) = self
            .0
            .iter()
            .find(|catcher| catcher.error_equals.matches(&failure.error))
        else {
            return Body::Failed(failure);
        };
        match catcher
            .result_path
            .place(raw_input, failure.to_error_output(), scope)
        {
            Ok(output) => Body::Caught {
                output,
                next: &catcher.next,
            },
            Err(failure) => Body::Failed(failure),
        }
    }
}

impl Catcher {
    fn parse(catcher: &Fields<'_>) -> Result<Self, DefinitionError> {
        catcher.allow_only("a Catcher", CATCHER_FIELDS)?;
        catcher.optional_string("Comment")?;
        Ok(Catcher {
            error_equals: ErrorEquals::parse(catcher)?,
            next: catcher.required_string("Next")?.to_owned(),
            result_path: ResultPath::parse(catcher, "ResultPath")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::test_support::{
        at, continue_to, machine, run_to_end, single, single_rejection, step_from_start, task,
        FakeTasks,
    };
    use super::super::Step;

    #[test]
    fn malformed_catchers_are_rejected() {
        let message = single_rejection(task(json!({ "Catch": [{ "ErrorEquals": ["E"] }] })));
        assert!(
            message.contains("\"Catch[0].Next\" is required"),
            "{message}"
        );
        let message = single_rejection(task(
            json!({ "Catch": [{ "ErrorEquals": ["E"], "Next": "Done", "MaxAttempts": 1 }] }),
        ));
        assert!(
            message.contains("\"Catch[0].MaxAttempts\" is not supported in a Catcher"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn exhausted_retries_fall_through_to_catch_and_not_to_a_later_retrier() {
        let machine = single(task(json!({
            "Retry": [{ "ErrorEquals": ["Flaky"], "MaxAttempts": 1 }, { "ErrorEquals": ["States.ALL"], "MaxAttempts": 5 }],
            "Catch": [{ "ErrorEquals": ["Flaky"], "ResultPath": "$.error", "Next": "Done" }]
        })));
        let tasks = FakeTasks::failing("Flaky");
        let (end, sleeps) = run_to_end(&machine, json!({ "keep": 1 }), &tasks).await;
        assert_eq!(sleeps, [Duration::from_secs(1)]);
        assert_eq!(
            end,
            Step::Succeeded(
                json!({ "keep": 1, "error": { "Error": "Flaky", "Cause": "Flaky happened" } })
            )
        );
    }

    #[tokio::test]
    async fn a_catch_places_the_error_output_at_its_result_path_in_the_raw_input() {
        let machine = single(task(json!({
            "InputPath": "$.part",
            "OutputPath": "$.part",
            "Catch": [{ "ErrorEquals": ["Broken"], "ResultPath": "$.failure.detail", "Next": "Done" }]
        })));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({ "part": 1, "other": 2 }), &tasks).await;
        assert_eq!(
            step,
            Step::Continue(at(
                "Done",
                json!({
                    "part": 1, "other": 2,
                    "failure": { "detail": { "Error": "Broken", "Cause": "Broken happened" } }
                })
            ))
        );
    }

    #[tokio::test]
    async fn a_catch_without_result_path_replaces_the_input_with_the_error_output() {
        let machine = single(task(
            json!({ "Catch": [{ "ErrorEquals": ["Broken"], "Next": "Done" }] }),
        ));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({ "Error": "Broken", "Cause": "Broken happened" })
        );
    }

    #[tokio::test]
    async fn the_first_matching_catcher_wins() {
        let machine = machine(json!({
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task", "Resource": "arn:t", "End": true,
                    "Catch": [
                        { "ErrorEquals": ["Other"], "Next": "A" },
                        { "ErrorEquals": ["Broken", "Other2"], "Next": "B" },
                        { "ErrorEquals": ["States.ALL"], "Next": "A" }
                    ]
                },
                "A": { "Type": "Succeed" },
                "B": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(continue_to(step).state(), "B");
        let tasks = FakeTasks::failing("Unlisted");
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(continue_to(step).state(), "A");
    }

    #[tokio::test]
    async fn an_uncaught_task_error_fails_the_execution() {
        let machine = single(task(
            json!({ "Catch": [{ "ErrorEquals": ["Other"], "Next": "Done" }] }),
        ));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(
            step,
            Step::Failed {
                error: "Broken".to_owned(),
                cause: "Broken happened".to_owned()
            }
        );
    }
}
