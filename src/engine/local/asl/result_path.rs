//! `ResultPath`: where a Task's or Pass state's result (or a Catcher's error output) goes in
//! the state's raw input.

use serde_json::{Map, Value};

use super::context::Scope;
use super::errors::{describe, DefinitionError, TaskFailure, RESULT_PATH_ERROR};
use super::fields::Fields;
use super::path_syntax::{parse_reference_path, PathStep};

#[derive(Debug)]
pub(super) enum ResultPath {
    /// `null`: keep the input, drop the result.
    Discard,
    /// `$` (the default): the result replaces the input.
    Whole,
    /// A Reference Path into the input, created as needed.
    At { text: String, steps: Vec<PathStep> },
}

impl ResultPath {
    pub(super) fn parse(fields: &Fields<'_>, field: &str) -> Result<Self, DefinitionError> {
        let text = match fields.get(field) {
            None => return Ok(ResultPath::Whole),
            Some(Value::Null) => return Ok(ResultPath::Discard),
            Some(Value::String(text)) => text,
            Some(_) => return Err(fields.invalid(field, "must be a path string or null")),
        };
        if text.starts_with("$$") {
            return Err(fields.invalid(field, "cannot write into the context object"));
        }
        let steps = parse_reference_path(text).map_err(|reason| {
            fields.invalid(
                field,
                format!(
                    "{text:?} is not a reference path ({reason}); only names and integer indexes are allowed"
                ),
            )
        })?;
        if steps
            .iter()
            .any(|step| matches!(step, PathStep::Index(index) if *index < 0))
        {
            return Err(fields.invalid(
                field,
                format!("{text:?} uses a negative index, which a reference path cannot"),
            ));
        }
        if steps.is_empty() {
            Ok(ResultPath::Whole)
        } else {
            Ok(ResultPath::At {
                text: text.clone(),
                steps,
            })
        }
    }

    /// The state's output: `result` placed into (a copy of) `input` as this ResultPath says.
    /// `input` is left as it was, so that a failure here can still be retried or caught.
    pub(super) fn place(
        &self,
        input: &Value,
        result: Value,
        scope: &Scope<'_>,
    ) -> Result<Value, TaskFailure> {
        let (text, steps) = match self {
            ResultPath::Discard => return Ok(input.clone()),
            ResultPath::Whole => return Ok(result),
            ResultPath::At { text, steps } => (text, steps),
        };
        let mut output = input.clone();
        write_at(&mut output, steps, result).map_err(|problem| {
            TaskFailure::new(
                RESULT_PATH_ERROR,
                format!(
                    "state {:?}: the ResultPath {text:?} cannot be applied to the input: {problem}",
                    scope.state_name()
                ),
            )
        })?;
        Ok(output)
    }
}

fn write_at(target: &mut Value, steps: &[PathStep], result: Value) -> Result<(), String> {
    let Some((last, parents)) = steps.split_last() else {
        *target = result;
        return Ok(());
    };
    let mut current = target;
    for step in parents {
        current = match step {
            PathStep::Field(name) => match current {
                Value::Object(map) => map
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new())),
                other => return Err(not_a_container(other, "an object", name)),
            },
            PathStep::Index(index) => array_slot(current, *index)?,
        };
    }
    match last {
        PathStep::Field(name) => match current {
            Value::Object(map) => {
                map.insert(name.clone(), result);
                Ok(())
            }
            other => Err(not_a_container(other, "an object", name)),
        },
        PathStep::Index(index) => {
            *array_slot(current, *index)? = result;
            Ok(())
        }
    }
}

fn array_slot(value: &mut Value, index: i64) -> Result<&mut Value, String> {
    match value {
        Value::Array(items) => {
            let length = items.len();
            usize::try_from(index)
                .ok()
                .and_then(|index| items.get_mut(index))
                .ok_or_else(|| format!("index {index} is outside an array of {length}"))
        }
        other => Err(not_a_container(other, "an array", &index.to_string())),
    }
}

fn not_a_container(found: &Value, wanted: &str, step: &str) -> String {
    format!(
        "{step:?} needs {wanted} to step into, but finds {}",
        describe(found)
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        continue_to, failed_with, machine, single, step_from_start, task, FakeTasks,
    };

    #[tokio::test]
    async fn result_path_defaults_to_replacing_the_input() {
        let machine = single(task(json!({})));
        let tasks = FakeTasks::returning(json!({ "result": 1 }));
        let step = step_from_start(&machine, json!({ "input": 1 }), &tasks).await;
        assert_eq!(continue_to(step).input(), &json!({ "result": 1 }));
    }

    #[tokio::test]
    async fn a_null_result_path_discards_the_result_and_keeps_the_input() {
        let machine = single(task(json!({ "ResultPath": null })));
        let tasks = FakeTasks::returning(json!({ "result": 1 }));
        let step = step_from_start(&machine, json!({ "input": 1 }), &tasks).await;
        assert_eq!(continue_to(step).input(), &json!({ "input": 1 }));
    }

    #[tokio::test]
    async fn result_path_creates_missing_objects_along_the_way() {
        let machine = single(task(json!({ "ResultPath": "$.a.b['c d'].e" })));
        let tasks = FakeTasks::returning(json!(5));
        let step = step_from_start(&machine, json!({ "a": { "keep": true } }), &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({ "a": { "keep": true, "b": { "c d": { "e": 5 } } } })
        );
    }

    #[tokio::test]
    async fn result_path_can_replace_an_existing_array_element() {
        let machine = single(task(json!({ "ResultPath": "$.list[1].value" })));
        let tasks = FakeTasks::returning(json!("new"));
        let step = step_from_start(
            &machine,
            json!({ "list": [{}, { "value": "old" }] }),
            &tasks,
        )
        .await;
        assert_eq!(
            continue_to(step).input(),
            &json!({ "list": [{}, { "value": "new" }] })
        );
    }

    #[tokio::test]
    async fn a_result_path_that_clashes_with_the_input_fails_with_result_path_match_failure() {
        let tasks = FakeTasks::returning(json!(1));
        let machine = single(task(json!({ "ResultPath": "$.a.b" })));
        let step = step_from_start(&machine, json!({ "a": "text" }), &tasks).await;
        assert_eq!(failed_with(&step), "States.ResultPathMatchFailure");
        assert!(format!("{step:?}").contains("finds a string"), "{step:?}");
        let machine = single(task(json!({ "ResultPath": "$.list[3]" })));
        let step = step_from_start(&machine, json!({ "list": [] }), &tasks).await;
        assert_eq!(failed_with(&step), "States.ResultPathMatchFailure");
        assert!(format!("{step:?}").contains("outside an array"), "{step:?}");
    }

    #[tokio::test]
    async fn a_result_path_match_failure_is_caught_as_on_step_functions() {
        let machine = machine(json!({
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task", "Resource": "arn:t", "ResultPath": "$.a.b",
                    "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Done" }],
                    "Next": "Done"
                },
                "Done": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::returning(json!(1));
        let step = step_from_start(&machine, json!({ "a": "text" }), &tasks).await;
        let caught = continue_to(step);
        assert_eq!(caught.state(), "Done");
        assert_eq!(
            caught.input()["error"]["Error"],
            "States.ResultPathMatchFailure"
        );
    }

    #[tokio::test]
    async fn a_failed_result_path_leaves_the_input_as_it_was_for_the_catcher() {
        let machine = machine(json!({
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task", "Resource": "arn:t", "ResultPath": "$.made.here[0]",
                    "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Done" }],
                    "Next": "Done"
                },
                "Done": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::returning(json!(1));
        let step = step_from_start(&machine, json!({ "keep": 1 }), &tasks).await;
        let caught = continue_to(step);
        assert_eq!(caught.input()["keep"], 1);
        assert_eq!(caught.input().get("made"), None);
    }
}
