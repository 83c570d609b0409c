//! Payload templates: `Parameters` and `ResultSelector`. A key ending in `.$` takes its value
//! from a path; every other value is copied as written, at any depth.

use serde_json::{Map, Value};

use super::context::Scope;
use super::errors::{DefinitionError, TaskFailure};
use super::fields::Fields;
use super::paths::ReadPath;

#[derive(Debug)]
pub(super) enum Template {
    Literal(Value),
    Path(ReadPath),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

impl Template {
    /// The template at `field`, if the state has one.
    pub(super) fn parse_optional(
        fields: &Fields<'_>,
        field: &str,
    ) -> Result<Option<Self>, DefinitionError> {
        fields
            .get(field)
            .map(|value| Self::parse(fields.state(), &fields.label(field), value))
            .transpose()
    }

    fn parse(state: &str, label: &str, value: &Value) -> Result<Self, DefinitionError> {
        match value {
            Value::Object(map) => Self::parse_object(state, label, map),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, item)| Self::parse(state, &format!("{label}[{index}]"), item))
                .collect::<Result<Vec<_>, _>>()
                .map(Template::Array),
            literal => Ok(Template::Literal(literal.clone())),
        }
    }

    fn parse_object(
        state: &str,
        label: &str,
        map: &Map<String, Value>,
    ) -> Result<Self, DefinitionError> {
        let invalid = |field: String, reason: String| DefinitionError::InvalidField {
            state: state.to_owned(),
            field,
            reason,
        };
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            let field = format!("{label}.{key}");
            let Some(name) = key.strip_suffix(".$") else {
                entries.push((key.clone(), Self::parse(state, &field, value)?));
                continue;
            };
            if map.contains_key(name) {
                return Err(invalid(
                    field,
                    format!("clashes with the plain key {name:?}"),
                ));
            }
            let Value::String(text) = value else {
                return Err(invalid(field, "must be a path string".to_owned()));
            };
            let path = ReadPath::parse(state, &field, text)?;
            entries.push((name.to_owned(), Template::Path(path)));
        }
        Ok(Template::Object(entries))
    }

    /// The template filled in from `data` (and the context object).
    pub(super) fn render(&self, data: &Value, scope: &Scope<'_>) -> Result<Value, TaskFailure> {
        match self {
            Template::Literal(value) => Ok(value.clone()),
            Template::Path(path) => path.read_in_template(data, scope),
            Template::Object(entries) => entries
                .iter()
                .map(|(key, template)| Ok((key.clone(), template.render(data, scope)?)))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            Template::Array(items) => items
                .iter()
                .map(|template| template.render(data, scope))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        continue_to, runtime_cause, single, single_rejection, step_from_start, task, FakeTasks,
    };

    #[tokio::test]
    async fn parameters_take_paths_from_keys_ending_in_dollar_at_any_depth() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "fixed": "text",
                "picked.$": "$.a",
                "nested": { "deep.$": "$.b.c", "list": [1, { "item.$": "$.a" }] }
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step =
            step_from_start(&machine, json!({ "a": "A", "b": { "c": [1, 2] } }), &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({
                "fixed": "text",
                "picked": "A",
                "nested": { "deep": [1, 2], "list": [1, { "item": "A" }] }
            })
        );
    }

    #[test]
    fn a_path_key_may_not_clash_with_a_plain_key_and_must_hold_a_path() {
        let message = single_rejection(task(json!({ "Parameters": { "a": 1, "a.$": "$.a" } })));
        assert!(
            message.contains("\"Parameters.a.$\" clashes with the plain key \"a\""),
            "{message}"
        );
        let message = single_rejection(task(json!({ "ResultSelector": { "a.$": 1 } })));
        assert!(
            message.contains("\"ResultSelector.a.$\" must be a path string"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_path_that_selects_nothing_fails_with_states_runtime() {
        let machine = single(task(json!({ "Parameters": { "id.$": "$.missing" } })));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        let cause = runtime_cause(&step);
        assert!(cause.contains("\"$.missing\""), "{cause}");
        assert!(cause.contains("Parameters.id.$"), "{cause}");
        assert!(tasks.calls().is_empty());
    }

    #[tokio::test]
    async fn a_wildcard_or_slice_path_that_matches_nothing_yields_an_empty_array() {
        let machine = single(task(json!({
            "Parameters": {
                "all.$": "$.items[*]",
                "rest.$": "$.a[1:]",
                "nowhere.$": "$.missing[*]",
                "none_big.$": "$.items[?@.id > 9]"
            },
            "ResultSelector": { "ids.$": "$.rows[*].id", "tail.$": "$.rows[5:]" }
        })));
        let tasks = FakeTasks::returning(json!({ "rows": [] }));
        let step = step_from_start(&machine, json!({ "items": [], "a": [1] }), &tasks).await;
        assert_eq!(
            tasks.calls()[0].1,
            json!({ "all": [], "rest": [], "nowhere": [], "none_big": [] })
        );
        assert_eq!(continue_to(step).input(), &json!({ "ids": [], "tail": [] }));
    }

    #[tokio::test]
    async fn result_selector_shapes_the_task_result() {
        let machine = single(task(json!({
            "ResultSelector": { "first.$": "$.rows[0]", "count.$": "$.count", "source": "db" }
        })));
        let tasks =
            FakeTasks::returning(json!({ "rows": ["r1", "r2"], "count": 2, "noise": true }));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({ "first": "r1", "count": 2, "source": "db" })
        );
    }
}
