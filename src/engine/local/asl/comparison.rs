//! Comparisons in choice rules: how a value stands to an operand of a kind (String,
//! Numeric, Boolean, Timestamp), including `StringMatches` wildcards.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::timestamp::parse_timestamp;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ValueKind {
    String,
    Numeric,
    Boolean,
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Relation {
    Equals,
    LessThan,
    GreaterThan,
    LessThanEquals,
    GreaterThanEquals,
    Matches,
}

/// A comparison operator is a kind's prefix followed by a relation: `NumericLessThanEquals`.
const KINDS: &[(&str, ValueKind)] = &[
    ("String", ValueKind::String),
    ("Numeric", ValueKind::Numeric),
    ("Boolean", ValueKind::Boolean),
    ("Timestamp", ValueKind::Timestamp),
];

const RELATIONS: &[(&str, Relation)] = &[
    ("Equals", Relation::Equals),
    ("LessThan", Relation::LessThan),
    ("GreaterThan", Relation::GreaterThan),
    ("LessThanEquals", Relation::LessThanEquals),
    ("GreaterThanEquals", Relation::GreaterThanEquals),
    ("Matches", Relation::Matches),
];

pub(super) fn comparison(name: &str) -> Option<(ValueKind, Relation)> {
    KINDS.iter().find_map(|(prefix, kind)| {
        let relation_name = name.strip_prefix(prefix)?;
        let (_, relation) = RELATIONS
            .iter()
            .find(|(candidate, _)| *candidate == relation_name)?;
        kind.has(*relation).then_some((*kind, *relation))
    })
}

impl ValueKind {
    /// Whether the kind has a comparison operator for `relation` (Boolean only has Equals,
    /// and only String has Matches).
    fn has(self, relation: Relation) -> bool {
        match (self, relation) {
            (ValueKind::Boolean, relation) => relation == Relation::Equals,
            (kind, Relation::Matches) => kind == ValueKind::String,
            _ => true,
        }
    }

    /// Whether `value` is of this kind (for Timestamp: a string Step Functions reads as one).
    pub(super) fn admits(self, value: &Value) -> bool {
        match self {
            ValueKind::String => value.is_string(),
            ValueKind::Numeric => value.is_number(),
            ValueKind::Boolean => value.is_boolean(),
            ValueKind::Timestamp => value.as_str().and_then(parse_timestamp).is_some(),
        }
    }

    pub(super) fn expectation(self) -> &'static str {
        match self {
            ValueKind::String => "must be a string",
            ValueKind::Numeric => "must be a number",
            ValueKind::Boolean => "must be true or false",
            ValueKind::Timestamp => "must be an RFC 3339 timestamp string",
        }
    }
}

/// Whether `value` stands in `relation` to `operand`; values of the wrong kind never match.
pub(super) fn compare(kind: ValueKind, relation: Relation, value: &Value, operand: &Value) -> bool {
    let ordering = match (kind, value, operand) {
        (ValueKind::String, Value::String(value), Value::String(pattern))
            if relation == Relation::Matches =>
        {
            return wildcard_matches(pattern, value);
        }
        (ValueKind::String, Value::String(value), Value::String(operand)) => {
            Some(value.as_str().cmp(operand.as_str()))
        }
        (ValueKind::Numeric, Value::Number(value), Value::Number(operand)) => {
            compare_numbers(value, operand)
        }
        (ValueKind::Boolean, Value::Bool(value), Value::Bool(operand)) => {
            return relation == Relation::Equals && value == operand;
        }
        (ValueKind::Timestamp, Value::String(value), Value::String(operand)) => {
            match (parse_timestamp(value), parse_timestamp(operand)) {
                (Some(value), Some(operand)) => Some(value.cmp(&operand)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match relation {
        Relation::Equals => ordering == Ordering::Equal,
        Relation::LessThan => ordering == Ordering::Less,
        Relation::GreaterThan => ordering == Ordering::Greater,
        Relation::LessThanEquals => ordering != Ordering::Greater,
        Relation::GreaterThanEquals => ordering != Ordering::Less,
        Relation::Matches => false,
    }
}

fn compare_numbers(value: &Number, operand: &Number) -> Option<Ordering> {
    if let (Some(value), Some(operand)) = (value.as_i64(), operand.as_i64()) {
        return Some(value.cmp(&operand));
    }
    if let (Some(value), Some(operand)) = (value.as_u64(), operand.as_u64()) {
        return Some(value.cmp(&operand));
    }
    value.as_f64()?.partial_cmp(&operand.as_f64()?)
}

/// `StringMatches`: `*` stands for any run of characters; `\*` and `\\` are literal.
fn wildcard_matches(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Literal(char),
        AnyRun,
    }
    let mut tokens = Vec::new();
    let mut pattern_chars = pattern.chars();
    while let Some(c) = pattern_chars.next() {
        tokens.push(match c {
            '*' => Token::AnyRun,
            '\\' => Token::Literal(pattern_chars.next().unwrap_or('\\')),
            other => Token::Literal(other),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with backtracking to the latest `*`: linear in practice, no recursion.
    let (mut token_at, mut text_at) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while text_at < text.len() {
        match tokens.get(token_at) {
            Some(Token::AnyRun) => {
                last_star = Some((token_at, text_at));
                token_at += 1;
            }
            Some(Token::Literal(expected)) if *expected == text[text_at] => {
                token_at += 1;
                text_at += 1;
            }
            _ => match last_star {
                Some((star_token, star_text)) => {
                    token_at = star_token + 1;
                    text_at = star_text + 1;
                    last_star = Some((star_token, star_text + 1));
                }
                None => return false,
            },
        }
    }
    tokens[token_at..]
        .iter()
        .all(|token| *token == Token::AnyRun)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{check_comparisons, single_rejection};

    #[tokio::test]
    async fn string_comparisons_follow_their_operators() {
        let input = json!({ "s": "banana", "other": "cherry" });
        check_comparisons(
            input,
            &[
                ("$.s", "StringEquals", json!("banana"), true),
                ("$.s", "StringEquals", json!("apple"), false),
                ("$.s", "StringLessThan", json!("cherry"), true),
                ("$.s", "StringGreaterThan", json!("cherry"), false),
                ("$.s", "StringLessThanEquals", json!("banana"), true),
                ("$.s", "StringGreaterThanEquals", json!("banana"), true),
                ("$.s", "StringGreaterThanEquals", json!("c"), false),
                ("$.s", "StringEqualsPath", json!("$.other"), false),
                ("$.s", "StringLessThanPath", json!("$.other"), true),
                ("$.s", "StringGreaterThanPath", json!("$.other"), false),
                ("$.s", "StringLessThanEqualsPath", json!("$.s"), true),
                (
                    "$.s",
                    "StringGreaterThanEqualsPath",
                    json!("$.other"),
                    false,
                ),
            ],
        )
        .await;
    }
    #[tokio::test]
    async fn string_matches_treats_star_as_a_wildcard_and_honours_escapes() {
        let input = json!({ "file": "log-2024.txt", "star": "a*b", "slash": "a\\b" });
        check_comparisons(
            input,
            &[
                ("$.file", "StringMatches", json!("log-*.txt"), true),
                ("$.file", "StringMatches", json!("*"), true),
                ("$.file", "StringMatches", json!("*.csv"), false),
                ("$.file", "StringMatches", json!("l*g*2*4*"), true),
                ("$.file", "StringMatches", json!("log"), false),
                ("$.star", "StringMatches", json!("a\\*b"), true),
                ("$.file", "StringMatches", json!("log\\*"), false),
                ("$.slash", "StringMatches", json!("a\\\\b"), true),
            ],
        )
        .await;
    }
    #[tokio::test]
    async fn numeric_comparisons_follow_their_operators() {
        let input = json!({ "n": 5, "f": 5.0, "big": 10, "neg": -3 });
        check_comparisons(
            input,
            &[
                ("$.n", "NumericEquals", json!(5), true),
                ("$.f", "NumericEquals", json!(5), true),
                ("$.n", "NumericLessThan", json!(5.5), true),
                ("$.n", "NumericGreaterThan", json!(5), false),
                ("$.n", "NumericLessThanEquals", json!(5), true),
                ("$.neg", "NumericGreaterThanEquals", json!(-3), true),
                ("$.n", "NumericEqualsPath", json!("$.f"), true),
                ("$.n", "NumericLessThanPath", json!("$.big"), true),
                ("$.n", "NumericGreaterThanPath", json!("$.neg"), true),
                ("$.n", "NumericLessThanEqualsPath", json!("$.neg"), false),
                ("$.n", "NumericGreaterThanEqualsPath", json!("$.big"), false),
            ],
        )
        .await;
    }
    #[tokio::test]
    async fn boolean_and_timestamp_comparisons_follow_their_operators() {
        let noon = "2024-05-01T12:00:00Z";
        let input = json!({
            "yes": true, "no": false,
            "t": noon, "same": "2024-05-01T14:00:00+02:00", "later": "2024-06-01T00:00:00Z"
        });
        let (noon, a_second_later, new_year) = (
            json!(noon),
            json!("2024-05-01T12:00:01Z"),
            json!("2024-01-01T00:00:00Z"),
        );
        check_comparisons(
            input,
            &[
                ("$.yes", "BooleanEquals", json!(true), true),
                ("$.no", "BooleanEquals", json!(true), false),
                ("$.yes", "BooleanEqualsPath", json!("$.no"), false),
                ("$.t", "TimestampEquals", noon.clone(), true),
                ("$.t", "TimestampEqualsPath", json!("$.same"), true),
                ("$.t", "TimestampLessThan", a_second_later, true),
                ("$.t", "TimestampGreaterThan", noon.clone(), false),
                ("$.t", "TimestampLessThanEquals", noon, true),
                ("$.t", "TimestampGreaterThanEquals", new_year, true),
                ("$.t", "TimestampLessThanPath", json!("$.later"), true),
                ("$.t", "TimestampGreaterThanPath", json!("$.later"), false),
                ("$.t", "TimestampLessThanEqualsPath", json!("$.same"), true),
                (
                    "$.later",
                    "TimestampGreaterThanEqualsPath",
                    json!("$.t"),
                    true,
                ),
            ],
        )
        .await;
    }
    #[tokio::test]
    async fn a_comparison_against_a_value_of_another_type_does_not_match() {
        let input = json!({ "n": 5, "s": "5", "ts": "not a time" });
        check_comparisons(
            input,
            &[
                ("$.s", "NumericEquals", json!(5), false),
                ("$.n", "StringEquals", json!("5"), false),
                ("$.n", "BooleanEquals", json!(true), false),
                (
                    "$.ts",
                    "TimestampEquals",
                    json!("2024-01-01T00:00:00Z"),
                    false,
                ),
            ],
        )
        .await;
    }
    #[tokio::test]
    async fn a_timestamp_with_a_space_is_not_a_timestamp_in_a_choice() {
        let input = json!({
            "spaced": "2024-05-01 12:00:00Z",
            "proper": "2024-05-01T12:00:00Z"
        });
        check_comparisons(
            input,
            &[
                ("$.spaced", "IsTimestamp", json!(true), false),
                ("$.proper", "IsTimestamp", json!(true), true),
                (
                    "$.spaced",
                    "TimestampEquals",
                    json!("2024-05-01T12:00:00Z"),
                    false,
                ),
                (
                    "$.spaced",
                    "TimestampLessThanEquals",
                    json!("2024-05-01T12:00:00Z"),
                    false,
                ),
                ("$.proper", "TimestampEqualsPath", json!("$.spaced"), false),
                (
                    "$.proper",
                    "TimestampEquals",
                    json!("2024-05-01T12:00:00Z"),
                    true,
                ),
            ],
        )
        .await;
        let message = single_rejection(json!({
            "Type": "Choice",
            "Choices": [{ "Variable": "$.t", "TimestampEquals": "2024-05-01 12:00:00Z", "Next": "Done" }]
        }));
        assert!(
            message.contains("\"Choices[0].TimestampEquals\" must be an RFC 3339 timestamp"),
            "{message}"
        );
    }
}
