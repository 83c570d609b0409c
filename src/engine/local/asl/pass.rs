//! The Pass state: passes its input on, or a fixed `Result`, or its rendered `Parameters`,
//! placed at its `ResultPath`.

use serde_json::Value;

use super::context::Scope;
use super::envelope::{Body, Exit, StateInput, Transition};
use super::errors::DefinitionError;
use super::fields::Fields;
use super::result_path::ResultPath;
use super::template::Template;

#[derive(Debug)]
pub(super) struct PassState {
    parameters: Option<Template>,
    result: Option<Value>,
    result_path: ResultPath,
    transition: Transition,
}

impl PassState {
    pub(super) const FIELDS: &'static [&'static str] = &[
        "Type",
        "Comment",
        "QueryLanguage",
        "InputPath",
        "Parameters",
        "Result",
        "ResultPath",
        "OutputPath",
        "Next",
        "End",
    ];

    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        Ok(PassState {
            parameters: Template::parse_optional(fields, "Parameters")?,
            result: fields.get("Result").cloned(),
            result_path: ResultPath::parse(fields, "ResultPath")?,
            transition: Transition::parse(fields)?,
        })
    }

    pub(super) fn transition(&self) -> &Transition {
        &self.transition
    }

    pub(super) fn run(&self, input: StateInput, scope: &Scope<'_>) -> Body<'_> {
        let rendered = match &self.parameters {
            Some(parameters) => match parameters.render(input.effective(), scope) {
                Ok(rendered) => Some(rendered),
                Err(failure) => return Body::Failed(failure),
            },
            None => None,
        };
        let output = match (&self.result, rendered, &self.result_path) {
            (Some(result), _, result_path) => result_path.place(input.raw(), result.clone(), scope),
            (None, Some(rendered), result_path) => result_path.place(input.raw(), rendered, scope),
            (None, None, ResultPath::Whole) => Ok(input.into_effective()),
            (None, None, result_path) => {
                result_path.place(input.raw(), input.effective().clone(), scope)
            }
        };
        match output {
            Ok(output) => Body::Result(output, Exit::Follow(&self.transition)),
            Err(failure) => Body::Failed(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{at, machine, single, step_from_start, FakeTasks};
    use super::super::Step;

    #[tokio::test]
    async fn a_pass_state_passes_its_input_through() {
        let machine = single(json!({ "Type": "Pass", "Next": "Done" }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!({ "a": 1 }))));
    }

    #[tokio::test]
    async fn a_pass_state_result_lands_at_its_result_path() {
        let machine = machine(json!({
            "StartAt": "S",
            "States": { "S": { "Type": "Pass", "Result": { "x": 1 }, "ResultPath": "$.out", "End": true } }
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(step, Step::Succeeded(json!({ "a": 1, "out": { "x": 1 } })));
    }

    #[tokio::test]
    async fn a_pass_state_places_its_effective_input_or_parameters_at_its_result_path() {
        let tasks = FakeTasks::returning(json!(null));
        let machine = single(json!({
            "Type": "Pass", "InputPath": "$.a", "ResultPath": "$.copy", "Next": "Done"
        }));
        let step = step_from_start(&machine, json!({ "a": [1] }), &tasks).await;
        assert_eq!(
            step,
            Step::Continue(at("Done", json!({ "a": [1], "copy": [1] })))
        );
        let machine = single(json!({
            "Type": "Pass", "Parameters": { "first.$": "$.a[0]" }, "ResultPath": null, "Next": "Done"
        }));
        let step = step_from_start(&machine, json!({ "a": [1] }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!({ "a": [1] }))));
    }
}
