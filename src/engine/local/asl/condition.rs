//! Choice rule conditions: `And`, `Or`, `Not`, the type tests (`IsNull`, `IsPresent`, ...)
//! and every String, Numeric, Boolean and Timestamp comparison, with its `...Path` form.

use serde_json::Value;

use super::comparison::{compare, comparison, Relation, ValueKind};
use super::context::Scope;
use super::errors::{DefinitionError, TaskFailure};
use super::fields::Fields;
use super::paths::ReadPath;

#[derive(Debug)]
pub(super) enum Condition {
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    Compare {
        variable: ReadPath,
        kind: ValueKind,
        relation: Relation,
        operand: Operand,
    },
    TypeTest {
        variable: ReadPath,
        test: TypeTest,
        expected: bool,
    },
}

/// Where a rule sits: only a top-level rule has a `Next`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RuleLevel {
    TopLevel,
    Nested,
}

#[derive(Debug)]
pub(super) enum Operand {
    Literal(Value),
    Path(ReadPath),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TypeTest {
    Null,
    Present,
    Numeric,
    String,
    Boolean,
    Timestamp,
}

/// Whether a comparison's operand is written out or read from a path (`...Path`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum OperandForm {
    Literal,
    Path,
}

/// What a rule's operator key builds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    And,
    Or,
    Not,
    TypeTest(TypeTest),
    Compare(ValueKind, Relation, OperandForm),
}

const TYPE_TESTS: &[(&str, TypeTest)] = &[
    ("IsNull", TypeTest::Null),
    ("IsPresent", TypeTest::Present),
    ("IsNumeric", TypeTest::Numeric),
    ("IsString", TypeTest::String),
    ("IsBoolean", TypeTest::Boolean),
    ("IsTimestamp", TypeTest::Timestamp),
];

/// Fields of a rule that are not its operator.
const RULE_FIELDS: &[&str] = &["Variable", "Next", "Comment"];

impl Operator {
    fn from_key(key: &str) -> Option<Self> {
        match key {
            "And" => return Some(Operator::And),
            "Or" => return Some(Operator::Or),
            "Not" => return Some(Operator::Not),
            _ => {}
        }
        if let Some((_, test)) = TYPE_TESTS.iter().find(|(name, _)| *name == key) {
            return Some(Operator::TypeTest(*test));
        }
        if let Some((kind, relation)) = comparison(key) {
            return Some(Operator::Compare(kind, relation, OperandForm::Literal));
        }
        let base = key.strip_suffix("Path")?;
        match comparison(base)? {
            (_, Relation::Matches) => None,
            (kind, relation) => Some(Operator::Compare(kind, relation, OperandForm::Path)),
        }
    }
}

impl Condition {
    /// Parses the choice rule `rule`.
    pub(super) fn parse(rule: &Fields<'_>, level: RuleLevel) -> Result<Self, DefinitionError> {
        if level == RuleLevel::Nested && rule.get("Next").is_some() {
            return Err(rule.invalid("Next", "is only allowed on a top-level choice rule"));
        }
        rule.optional_string("Comment")?;
        let (key, operator) = single_operator(rule)?;
        let operand = rule.get(key).unwrap_or(&Value::Null);
        match operator {
            Operator::And | Operator::Or => parse_combination(rule, key, operator),
            Operator::Not => parse_negation(rule, operand),
            Operator::TypeTest(test) => {
                let Value::Bool(expected) = operand else {
                    return Err(rule.invalid(key, "must be true or false"));
                };
                Ok(Condition::TypeTest {
                    variable: variable(rule)?,
                    test,
                    expected: *expected,
                })
            }
            Operator::Compare(kind, relation, form) => Ok(Condition::Compare {
                variable: variable(rule)?,
                kind,
                relation,
                operand: parse_operand(rule, key, kind, form, operand)?,
            }),
        }
    }

    /// Whether the condition holds for `input`. A `Variable` (or operand path) that selects
    /// nothing fails with `States.Runtime`, except under `IsPresent`.
    pub(super) fn evaluate(&self, input: &Value, scope: &Scope<'_>) -> Result<bool, TaskFailure> {
        match self {
            Condition::And(conditions) => {
                for condition in conditions {
                    if !condition.evaluate(input, scope)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Condition::Or(conditions) => {
                for condition in conditions {
                    if condition.evaluate(input, scope)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Condition::Not(condition) => Ok(!condition.evaluate(input, scope)?),
            Condition::TypeTest {
                variable,
                test,
                expected,
            } => {
                let value = variable.lookup(input, scope);
                if *test != TypeTest::Present && value.is_none() {
                    return Err(missing_variable(variable, scope));
                }
                Ok(test.holds(value.as_ref()) == *expected)
            }
            Condition::Compare {
                variable,
                kind,
                relation,
                operand,
            } => {
                let value = variable
                    .lookup(input, scope)
                    .ok_or_else(|| missing_variable(variable, scope))?;
                let operand = match operand {
                    Operand::Literal(literal) => literal.clone(),
                    Operand::Path(path) => path.read(input, scope)?,
                };
                Ok(compare(*kind, *relation, &value, &operand))
            }
        }
    }
}

/// The rule's one operator, refusing unknown fields and a missing or second operator.
fn single_operator<'a>(rule: &Fields<'a>) -> Result<(&'a str, Operator), DefinitionError> {
    let mut operators = Vec::new();
    for key in rule.keys().filter(|key| !RULE_FIELDS.contains(key)) {
        let operator = Operator::from_key(key).ok_or_else(|| {
            rule.unknown_field(
                key,
                "a choice rule",
                "Variable, Next, Comment, And, Or, Not and one comparison operator",
            )
        })?;
        operators.push((key, operator));
    }
    match operators.as_slice() {
        [single] => Ok(*single),
        [] => Err(rule.invalid_state(format!(
            "choice rule {} has no comparison operator",
            rule.location()
        ))),
        several => {
            let names: Vec<&str> = several.iter().map(|(key, _)| *key).collect();
            Err(rule.invalid_state(format!(
                "choice rule {} has more than one operator ({})",
                rule.location(),
                names.join(", ")
            )))
        }
    }
}

fn parse_combination(
    rule: &Fields<'_>,
    key: &str,
    operator: Operator,
) -> Result<Condition, DefinitionError> {
    let nested = rule.objects(key)?;
    if nested.is_empty() {
        return Err(rule.invalid(key, "must be a non-empty array of choice rules"));
    }
    if rule.get("Variable").is_some() {
        return Err(rule.invalid("Variable", format!("cannot be combined with {key}")));
    }
    let conditions = nested
        .iter()
        .map(|nested| Condition::parse(nested, RuleLevel::Nested))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if operator == Operator::And {
        Condition::And(conditions)
    } else {
        Condition::Or(conditions)
    })
}

fn parse_negation(rule: &Fields<'_>, operand: &Value) -> Result<Condition, DefinitionError> {
    let Value::Object(map) = operand else {
        return Err(rule.invalid("Not", "must be a choice rule object"));
    };
    if rule.get("Variable").is_some() {
        return Err(rule.invalid("Variable", "cannot be combined with Not"));
    }
    let nested = rule.nested("Not", map);
    Ok(Condition::Not(Box::new(Condition::parse(
        &nested,
        RuleLevel::Nested,
    )?)))
}

fn variable(rule: &Fields<'_>) -> Result<ReadPath, DefinitionError> {
    let text = rule.required_string("Variable")?;
    ReadPath::parse_field(rule, "Variable", text)
}

fn parse_operand(
    rule: &Fields<'_>,
    key: &str,
    kind: ValueKind,
    form: OperandForm,
    operand: &Value,
) -> Result<Operand, DefinitionError> {
    match form {
        OperandForm::Path => {
            let Value::String(text) = operand else {
                return Err(rule.invalid(key, "must be a path string"));
            };
            Ok(Operand::Path(ReadPath::parse_field(rule, key, text)?))
        }
        OperandForm::Literal => {
            if kind.admits(operand) {
                Ok(Operand::Literal(operand.clone()))
            } else {
                Err(rule.invalid(key, kind.expectation()))
            }
        }
    }
}

impl TypeTest {
    /// Whether `value` (`None`: the Variable selected nothing) passes the test.
    fn holds(self, value: Option<&Value>) -> bool {
        match (self, value) {
            (TypeTest::Present, value) => value.is_some(),
            (_, None) => false,
            (TypeTest::Null, Some(value)) => value.is_null(),
            (TypeTest::Numeric, Some(value)) => ValueKind::Numeric.admits(value),
            (TypeTest::String, Some(value)) => ValueKind::String.admits(value),
            (TypeTest::Boolean, Some(value)) => ValueKind::Boolean.admits(value),
            (TypeTest::Timestamp, Some(value)) => ValueKind::Timestamp.admits(value),
        }
    }
}

fn missing_variable(variable: &ReadPath, scope: &Scope<'_>) -> TaskFailure {
    scope.runtime_failure(format_args!(
        "the choice rule's Variable {:?} ({}) selected nothing",
        variable.text(),
        variable.field()
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{
        check_comparisons, rule_matches, runtime_cause, single_rejection,
    };
    use super::Operator;

    async fn check_rules(input: Value, cases: &[(Value, bool)]) {
        for (rule, expected) in cases {
            let outcome = rule_matches(rule.clone(), input.clone()).await;
            assert_eq!(outcome, Ok(*expected), "rule {rule} on {input}");
        }
    }

    #[test]
    fn malformed_choice_rules_are_rejected() {
        let choice = |rule: Value| {
            let mut rule = rule;
            rule["Next"] = json!("Done");
            single_rejection(json!({ "Type": "Choice", "Choices": [rule] }))
        };
        let message = choice(json!({ "Variable": "$.a" }));
        assert!(message.contains("has no comparison operator"), "{message}");
        let message = choice(json!({ "Variable": "$.a", "StringEquals": "x", "IsNull": true }));
        assert!(message.contains("more than one operator"), "{message}");
        let message = choice(json!({ "Variable": "$.a", "NumericEquals": "1" }));
        assert!(
            message.contains("field \"Choices[0].NumericEquals\" must be a number"),
            "{message}"
        );
        let message = choice(json!({ "Variable": "$.a", "TimestampEquals": "yesterday" }));
        assert!(message.contains("RFC 3339"), "{message}");
        let message = choice(json!({ "Variable": "$.a", "StringSimilar": "x" }));
        assert!(
            message.contains("\"Choices[0].StringSimilar\" is not supported in a choice rule"),
            "{message}"
        );
        let message =
            choice(json!({ "Not": { "Variable": "$.a", "IsNull": true, "Next": "Done" } }));
        assert!(
            message.contains("\"Choices[0].Not.Next\" is only allowed"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn type_tests_check_presence_and_type() {
        let input =
            json!({ "null": null, "n": 1.5, "s": "x", "b": false, "t": "2024-05-01T12:00:00Z" });
        check_comparisons(
            input,
            &[
                ("$.null", "IsNull", json!(true), true),
                ("$.n", "IsNull", json!(true), false),
                ("$.n", "IsNull", json!(false), true),
                ("$.missing", "IsPresent", json!(true), false),
                ("$.missing", "IsPresent", json!(false), true),
                ("$.null", "IsPresent", json!(true), true),
                ("$.n", "IsNumeric", json!(true), true),
                ("$.s", "IsNumeric", json!(true), false),
                ("$.s", "IsString", json!(true), true),
                ("$.b", "IsBoolean", json!(true), true),
                ("$.s", "IsBoolean", json!(true), false),
                ("$.t", "IsTimestamp", json!(true), true),
                ("$.s", "IsTimestamp", json!(true), false),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn and_or_not_combine_rules() {
        let positive = json!({ "Variable": "$.n", "NumericGreaterThan": 0 });
        let small = json!({ "Variable": "$.n", "NumericLessThan": 10 });
        let named = json!({ "Variable": "$.name", "StringEquals": "x" });
        check_rules(
            json!({ "n": 5, "name": "y" }),
            &[
                (json!({ "And": [positive, small] }), true),
                (json!({ "And": [positive, named] }), false),
                (json!({ "Or": [named, small] }), true),
                (json!({ "Or": [named, { "Not": positive }] }), false),
                (json!({ "Not": named }), true),
                (
                    json!({ "Not": { "And": [positive, { "Not": small }] } }),
                    true,
                ),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn a_missing_variable_fails_with_states_runtime() {
        let outcome = rule_matches(
            json!({ "Variable": "$.missing", "StringEquals": "x" }),
            json!({}),
        )
        .await;
        runtime_cause(&outcome.unwrap_err());
        let outcome = rule_matches(
            json!({ "Variable": "$.missing", "IsNull": true }),
            json!({}),
        )
        .await;
        runtime_cause(&outcome.unwrap_err());
        let outcome = rule_matches(
            json!({ "Variable": "$.a", "StringEqualsPath": "$.missing" }),
            json!({ "a": "x" }),
        )
        .await;
        runtime_cause(&outcome.unwrap_err());
    }

    #[test]
    fn every_comparison_operator_of_asl_is_known_and_no_other() {
        let known = [
            "StringEquals",
            "StringLessThan",
            "StringGreaterThan",
            "StringLessThanEquals",
            "StringGreaterThanEquals",
            "StringMatches",
            "NumericEquals",
            "NumericLessThan",
            "NumericGreaterThan",
            "NumericLessThanEquals",
            "NumericGreaterThanEquals",
            "BooleanEquals",
            "TimestampEquals",
            "TimestampLessThan",
            "TimestampGreaterThan",
            "TimestampLessThanEquals",
            "TimestampGreaterThanEquals",
        ];
        for name in known {
            assert!(Operator::from_key(name).is_some(), "{name}");
            let path_form = format!("{name}Path");
            assert_eq!(
                Operator::from_key(&path_form).is_some(),
                name != "StringMatches",
                "{path_form}"
            );
        }
        for unknown in [
            "BooleanLessThan",
            "NumericMatches",
            "TimestampMatches",
            "StringEqual",
            "Equals",
            "StringEqualsPathPath",
            "IsNullPath",
            "AndPath",
        ] {
            assert_eq!(Operator::from_key(unknown), None, "{unknown}");
        }
    }
}
