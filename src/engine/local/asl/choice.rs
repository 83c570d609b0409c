//! The Choice state: the first rule whose condition holds picks the next state, else
//! `Default`, else the execution fails with `States.NoChoiceMatched`.

use super::condition::{Condition, RuleLevel};
use super::context::Scope;
use super::envelope::{Body, Exit, StateInput};
use super::errors::{DefinitionError, TaskFailure, NO_CHOICE_MATCHED_ERROR};
use super::fields::Fields;

#[derive(Debug)]
pub(super) struct ChoiceState {
    choices: Vec<ChoiceRule>,
    default: Option<String>,
}

#[derive(Debug)]
struct ChoiceRule {
    condition: Condition,
    next: String,
}

impl ChoiceState {
    pub(super) const FIELDS: &'static [&'static str] = &[
        "Type",
        "Comment",
        "QueryLanguage",
        "InputPath",
        "OutputPath",
        "Choices",
        "Default",
    ];

    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let rules = fields.objects("Choices")?;
        if rules.is_empty() {
            return Err(fields.invalid("Choices", "must be a non-empty array of choice rules"));
        }
        let choices = rules
            .iter()
            .map(|rule| {
                let next = rule.required_string("Next")?.to_owned();
                let condition = Condition::parse(rule, RuleLevel::TopLevel)?;
                Ok(ChoiceRule { condition, next })
            })
            .collect::<Result<Vec<_>, DefinitionError>>()?;
        Ok(ChoiceState {
            choices,
            default: fields.optional_string("Default")?.map(str::to_owned),
        })
    }

    /// Every rule's `Next` and the `Default`, labelled as in the definition.
    pub(super) fn targets(&self) -> Vec<(String, &str)> {
        let mut targets: Vec<(String, &str)> = self
            .choices
            .iter()
            .enumerate()
            .map(|(index, rule)| (format!("Choices[{index}].Next"), rule.next.as_str()))
            .collect();
        if let Some(default) = &self.default {
            targets.push(("Default".to_owned(), default.as_str()));
        }
        targets
    }

    pub(super) fn run(&self, input: StateInput, scope: &Scope<'_>) -> Body<'_> {
        let effective = input.into_effective();
        match self.choose(&effective, scope) {
            Ok(next) => Body::Result(effective, Exit::To(next)),
            Err(failure) => Body::Failed(failure),
        }
    }

    fn choose(&self, input: &serde_json::Value, scope: &Scope<'_>) -> Result<&str, TaskFailure> {
        for rule in &self.choices {
            if rule.condition.evaluate(input, scope)? {
                return Ok(&rule.next);
            }
        }
        self.default.as_deref().ok_or_else(|| {
            TaskFailure::new(
                NO_CHOICE_MATCHED_ERROR,
                format!(
                    "state {:?}: no choice rule matched and there is no Default",
                    scope.state_name()
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{
        at, failed_with, machine, rule_matches, single_rejection, step_from_start, FakeTasks,
    };
    use super::super::Step;
    use super::*;

    #[test]
    fn a_choice_state_needs_choices_and_cannot_end() {
        let message = single_rejection(json!({
            "Type": "Choice",
            "Choices": [{ "Variable": "$.a", "IsPresent": true, "Next": "Done" }],
            "End": true
        }));
        assert!(
            message.contains("field \"End\" is not supported in a Choice state"),
            "{message}"
        );
        let message =
            single_rejection(json!({ "Type": "Choice", "Choices": [], "Default": "Done" }));
        assert!(
            message.contains("field \"Choices\" must be a non-empty array"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_choice_takes_the_first_matching_rule_and_applies_its_paths() {
        let machine = machine(json!({
            "StartAt": "C",
            "States": {
                "C": {
                    "Type": "Choice", "InputPath": "$.inner", "OutputPath": "$.value",
                    "Choices": [
                        { "Variable": "$.value", "NumericGreaterThan": 100, "Next": "Big" },
                        { "Variable": "$.value", "NumericGreaterThan": 1, "Next": "Medium" },
                        { "Variable": "$.value", "NumericGreaterThan": 0, "Next": "Big" }
                    ]
                },
                "Big": { "Type": "Succeed" },
                "Medium": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "inner": { "value": 5 } }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Medium", json!(5))));
    }

    #[tokio::test]
    async fn no_matching_choice_without_default_fails_with_no_choice_matched() {
        let machine = machine(json!({
            "StartAt": "C",
            "States": {
                "C": { "Type": "Choice", "Choices": [{ "Variable": "$.a", "BooleanEquals": true, "Next": "Yes" }] },
                "Yes": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": false }), &tasks).await;
        assert_eq!(failed_with(&step), NO_CHOICE_MATCHED_ERROR);
        assert_eq!(
            rule_matches(
                json!({ "Variable": "$.a", "BooleanEquals": true }),
                json!({ "a": false })
            )
            .await,
            Ok(false)
        );
    }

    #[tokio::test]
    async fn no_matching_choice_goes_to_the_default() {
        let machine = machine(json!({
            "StartAt": "C",
            "States": {
                "C": {
                    "Type": "Choice",
                    "Choices": [{ "Variable": "$.a", "BooleanEquals": true, "Next": "Yes" }],
                    "Default": "No"
                },
                "Yes": { "Type": "Succeed" },
                "No": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": false }), &tasks).await;
        assert_eq!(step, Step::Continue(at("No", json!({ "a": false }))));
    }
}
