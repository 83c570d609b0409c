//! Reading paths: [`ReadPath`] (a JSONPath over the state's data or, with `$$`, the context
//! object) and [`DataPath`] (`InputPath` and `OutputPath`, which may also be `null`).

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use super::context::Scope;
use super::errors::{DefinitionError, TaskFailure};
use super::fields::Fields;
use super::path_syntax::{bracketed, parse_reference_path, to_rfc9535, PathStep};

/// A JSONPath that reads from the state's data or, with `$$`, from the context object.
#[derive(Debug)]
pub(super) struct ReadPath {
    /// Where the path sits in the definition, for error messages.
    field: String,
    text: String,
    reads_context: bool,
    query: JsonPath,
    cardinality: Cardinality,
    /// The steps of a Reference Path, walked directly: the common case needs no JSONPath
    /// query and no whole context object.
    steps: Option<Vec<PathStep>>,
}

/// How many values a path can select.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cardinality {
    /// Names and indexes only: the path yields the one value it selects.
    One,
    /// A wildcard, slice, union, filter or descendant: the path yields an array of matches.
    Many,
}

impl ReadPath {
    /// Parses `text`, found at `field` of `state` (`field` is the label error messages use).
    pub(super) fn parse(state: &str, field: &str, text: &str) -> Result<Self, DefinitionError> {
        let invalid = |reason: String| DefinitionError::InvalidField {
            state: state.to_owned(),
            field: field.to_owned(),
            reason,
        };
        if text.starts_with("States.") {
            return Err(DefinitionError::IntrinsicFunction {
                state: state.to_owned(),
                field: field.to_owned(),
            });
        }
        let (reads_context, query_text) = match text.strip_prefix("$$") {
            Some(rest) => (true, format!("${rest}")),
            None => (false, text.to_owned()),
        };
        if !query_text.starts_with('$') {
            return Err(invalid(format!(
                "{text:?} is not a path: a path starts with \"$\""
            )));
        }
        let (canonical, cardinality, steps) = match parse_reference_path(&query_text) {
            Ok(steps) => (bracketed(&steps), Cardinality::One, Some(steps)),
            Err(_) => (
                to_rfc9535(&query_text).unwrap_or(query_text),
                Cardinality::Many,
                None,
            ),
        };
        let query = JsonPath::parse(&canonical)
            .map_err(|error| invalid(format!("{text:?} is not a valid JSONPath: {error}")))?;
        Ok(ReadPath {
            field: field.to_owned(),
            text: text.to_owned(),
            reads_context,
            query,
            cardinality,
            steps,
        })
    }

    /// Parses the path string at `field` of `fields`.
    pub(super) fn parse_field(
        fields: &Fields<'_>,
        field: &str,
        text: &str,
    ) -> Result<Self, DefinitionError> {
        Self::parse(fields.state(), &fields.label(field), text)
    }

    /// The path as written.
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// Where the path sits in the definition.
    pub(super) fn field(&self) -> &str {
        &self.field
    }

    /// Whether this is a Reference Path: names and integer indexes only, selecting one value.
    pub(super) fn is_reference(&self) -> bool {
        self.cardinality == Cardinality::One
    }

    /// What the path selects in `data` (or in the context object), if anything.
    pub(super) fn lookup(&self, data: &Value, scope: &Scope<'_>) -> Option<Value> {
        if let Some(steps) = &self.steps {
            return walk(data, steps, self.reads_context, scope).cloned();
        }
        let root = if self.reads_context {
            scope.context_object()
        } else {
            data
        };
        let nodes = self.query.query(root);
        if nodes.is_empty() {
            None
        } else if self.cardinality == Cardinality::One {
            nodes.first().cloned()
        } else {
            Some(Value::Array(nodes.all().into_iter().cloned().collect()))
        }
    }

    /// What the path selects; selecting nothing is a `States.Runtime` failure.
    pub(super) fn read(&self, data: &Value, scope: &Scope<'_>) -> Result<Value, TaskFailure> {
        self.lookup(data, scope)
            .ok_or_else(|| self.selected_nothing(scope))
    }

    /// What the path yields in a `Parameters` or `ResultSelector` template: as [`Self::read`],
    /// except that a path that can select several values yields `[]` when it selects none,
    /// as on Step Functions.
    pub(super) fn read_in_template(
        &self,
        data: &Value,
        scope: &Scope<'_>,
    ) -> Result<Value, TaskFailure> {
        match (self.lookup(data, scope), self.cardinality) {
            (Some(value), _) => Ok(value),
            (None, Cardinality::Many) => Ok(Value::Array(Vec::new())),
            (None, Cardinality::One) => Err(self.selected_nothing(scope)),
        }
    }

    fn selected_nothing(&self, scope: &Scope<'_>) -> TaskFailure {
        scope.runtime_failure(format_args!(
            "the path {:?} in {} selected nothing",
            self.text, self.field
        ))
    }
}

/// The value a Reference Path's `steps` lead to in `data`, or in the context object: there
/// only the top-level part the path names is built.
fn walk<'v>(
    data: &'v Value,
    steps: &[PathStep],
    reads_context: bool,
    scope: &'v Scope<'_>,
) -> Option<&'v Value> {
    let (mut value, rest) = match (reads_context, steps.split_first()) {
        (false, _) => (data, steps),
        (true, None) => (scope.context_object(), steps),
        (true, Some((PathStep::Field(part), rest))) => (scope.context_part(part)?, rest),
        (true, Some((PathStep::Index(_), _))) => return None,
    };
    for step in rest {
        value = match (step, value) {
            (PathStep::Field(name), Value::Object(map)) => map.get(name)?,
            (PathStep::Index(index), Value::Array(items)) => {
                let at = if *index < 0 {
                    items
                        .len()
                        .checked_sub(usize::try_from(index.unsigned_abs()).ok()?)?
                } else {
                    usize::try_from(*index).ok()?
                };
                items.get(at)?
            }
            _ => return None,
        };
    }
    Some(value)
}

/// `InputPath` or `OutputPath`.
#[derive(Debug)]
pub(super) enum DataPath {
    /// `$` (the default): the whole value.
    Whole,
    /// `null`: an empty object.
    Empty,
    Select(ReadPath),
}

impl DataPath {
    pub(super) fn parse(fields: &Fields<'_>, field: &str) -> Result<Self, DefinitionError> {
        match fields.get(field) {
            None => Ok(DataPath::Whole),
            Some(Value::Null) => Ok(DataPath::Empty),
            Some(Value::String(text)) if text == "$" => Ok(DataPath::Whole),
            Some(Value::String(text)) => Ok(DataPath::Select(ReadPath::parse_field(
                fields, field, text,
            )?)),
            Some(_) => Err(fields.invalid(field, "must be a path string or null")),
        }
    }

    /// What the path selects in `data`; `None` for `$`, which selects `data` itself.
    pub(super) fn select_within(
        &self,
        data: &Value,
        scope: &Scope<'_>,
    ) -> Result<Option<Value>, TaskFailure> {
        match self {
            DataPath::Whole => Ok(None),
            DataPath::Empty => Ok(Some(Value::Object(Map::new()))),
            DataPath::Select(path) => path.read(data, scope).map(Some),
        }
    }

    /// What the path selects in `data`, taking `data` over.
    pub(super) fn select(&self, data: Value, scope: &Scope<'_>) -> Result<Value, TaskFailure> {
        Ok(self.select_within(&data, scope)?.unwrap_or(data))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        at, continue_to, rejection, single, single_rejection, step_from_start, task, FakeTasks,
    };
    use super::super::Step;
    use super::*;

    #[test]
    fn an_intrinsic_function_is_rejected() {
        let error = rejection(json!({
            "StartAt": "S",
            "States": { "S": task(json!({ "Parameters": { "greeting.$": "States.Format('hi {}', $.name)" } })), "Done": { "Type": "Succeed" } }
        }));
        assert!(
            matches!(&error, DefinitionError::IntrinsicFunction { state, field }
                if state == "S" && field == "Parameters.greeting.$"),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains("intrinsic functions are not supported"));
    }

    #[test]
    fn malformed_paths_are_rejected() {
        let message = single_rejection(task(json!({ "InputPath": "$.a[" })));
        assert!(message.contains("field \"InputPath\""), "{message}");
        assert!(message.contains("not a valid JSONPath"), "{message}");
        let message = single_rejection(task(json!({ "ResultPath": "$.items[*]" })));
        assert!(message.contains("field \"ResultPath\""), "{message}");
        assert!(message.contains("not a reference path"), "{message}");
        let message = single_rejection(task(json!({ "ResultPath": "$$.State" })));
        assert!(message.contains("context object"), "{message}");
        let message = single_rejection(task(json!({ "InputPath": "items" })));
        assert!(message.contains("a path starts with \"$\""), "{message}");
    }

    #[tokio::test]
    async fn input_path_selects_the_effective_input() {
        let machine = single(json!({ "Type": "Pass", "InputPath": "$.inner", "Next": "Done" }));
        let tasks = FakeTasks::returning(json!(null));
        let step =
            step_from_start(&machine, json!({ "inner": { "b": 2 }, "other": 3 }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!({ "b": 2 }))));
    }

    #[tokio::test]
    async fn a_single_match_yields_the_value_and_a_wildcard_yields_an_array() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "one.$": "$.items[0].id",
                "quoted.$": "$['odd-name']",
                "all.$": "$.items[*].id",
                "filtered.$": "$.items[?@.id > 1].id",
                "lonely.$": "$.lonely[*]"
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let input =
            json!({ "items": [{ "id": 1 }, { "id": 2 }], "odd-name": true, "lonely": ["x"] });
        let step = step_from_start(&machine, input, &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({ "one": 1, "quoted": true, "all": [1, 2], "filtered": [2], "lonely": ["x"] })
        );
    }

    #[tokio::test]
    async fn dotted_names_with_dashes_read_as_on_step_functions() {
        let machine = single(task(json!({
            "InputPath": "$.my-order",
            "Parameters": {
                "id.$": "$.order-id",
                "first.$": "$.line-items[0]",
                "all.$": "$.line-items[*]"
            }
        })));
        let tasks = FakeTasks::returning(json!({}));
        step_from_start(
            &machine,
            json!({ "my-order": { "order-id": 7, "line-items": ["x", "y"] } }),
            &tasks,
        )
        .await;
        let inputs: Vec<Value> = tasks.calls().into_iter().map(|(_, input)| input).collect();
        assert_eq!(
            inputs,
            vec![json!({ "id": 7, "first": "x", "all": ["x", "y"] })]
        );
    }

    #[tokio::test]
    async fn a_quoted_path_name_is_the_literal_text_between_the_quotes() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "escaped.$": r#"$['a\"b']"#,
                "in_wildcard.$": r#"$['a\"b'][*]"#
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let input = json!({ r#"a\"b"#: ["literal"], r#"a"b"#: ["unescaped"] });
        let step = step_from_start(&machine, input, &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({ "escaped": ["literal"], "in_wildcard": ["literal"] })
        );
    }

    #[tokio::test]
    async fn filters_with_or_without_parentheses_select_the_same_values() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "bare.$": "$.items[?@.id > 1].id",
                "parenthesised.$": "$.items[?(@.id > 1)].id",
                "descendants.$": "$..id"
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let input = json!({ "items": [{ "id": 1 }, { "id": 2 }, { "id": 3 }] });
        let step = step_from_start(&machine, input, &tasks).await;
        assert_eq!(
            continue_to(step).input(),
            &json!({ "bare": [2, 3], "parenthesised": [2, 3], "descendants": [1, 2, 3] })
        );
    }
}
