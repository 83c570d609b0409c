//! The Succeed state: ends the execution successfully with its (filtered) input.

use super::envelope::{Body, Exit, StateInput};

#[derive(Debug)]
pub(super) struct SucceedState;

impl SucceedState {
    pub(super) const FIELDS: &'static [&'static str] = &[
        "Type",
        "Comment",
        "QueryLanguage",
        "InputPath",
        "OutputPath",
    ];

    pub(super) fn run(&self, input: StateInput) -> Body<'_> {
        Body::Result(input.into_effective(), Exit::End)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{machine, single_rejection, step_from_start, FakeTasks};
    use super::super::Step;

    #[test]
    fn a_succeed_state_cannot_have_next() {
        let message = single_rejection(json!({ "Type": "Succeed", "Next": "Done" }));
        assert!(
            message.contains("field \"Next\" is not supported in a Succeed state"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_succeed_state_outputs_its_filtered_input() {
        let machine = machine(
            json!({ "StartAt": "S", "States": { "S": { "Type": "Succeed", "InputPath": "$.a", "OutputPath": "$.b" } } }),
        );
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": { "b": [1] } }), &tasks).await;
        assert_eq!(step, Step::Succeeded(json!([1])));
    }
}
