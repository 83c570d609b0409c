//! The Wait state: sleeps for `Seconds` or until a `Timestamp` (either fixed or read from a
//! path), then moves on with its output. The caller does the sleeping ([`Step::Sleep`]).
//!
//! [`Step::Sleep`]: super::Step::Sleep

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use super::context::Scope;
use super::envelope::{Body, Exit, StateInput, Transition};
use super::errors::{DefinitionError, TaskFailure};
use super::fields::Fields;
use super::paths::ReadPath;
use super::timestamp::parse_timestamp;

/// The longest delay Step Functions waits: 2^31 - 1 seconds.
const LONGEST_WAIT_SECONDS: u64 = i32::MAX as u64;

const DURATION_FIELDS: &[&str] = &["Seconds", "SecondsPath", "Timestamp", "TimestampPath"];

#[derive(Debug)]
pub(super) struct WaitState {
    until: WaitUntil,
    transition: Transition,
}

#[derive(Debug)]
enum WaitUntil {
    Seconds(u64),
    SecondsPath(ReadPath),
    Timestamp(OffsetDateTime),
    TimestampPath(ReadPath),
}

impl WaitState {
    pub(super) const FIELDS: &'static [&'static str] = &[
        "Type",
        "Comment",
        "QueryLanguage",
        "InputPath",
        "OutputPath",
        "Seconds",
        "SecondsPath",
        "Timestamp",
        "TimestampPath",
        "Next",
        "End",
    ];

    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let present: Vec<&str> = DURATION_FIELDS
            .iter()
            .copied()
            .filter(|field| fields.get(field).is_some())
            .collect();
        let until = match present.as_slice() {
            ["Seconds"] => WaitUntil::Seconds(fields.non_negative_integer("Seconds")?.unwrap_or(0)),
            ["Timestamp"] => {
                let text = fields.required_string("Timestamp")?;
                WaitUntil::Timestamp(parse_timestamp(text).ok_or_else(|| {
                    fields.invalid(
                        "Timestamp",
                        "must be an RFC 3339 timestamp with a \"T\" between date and time",
                    )
                })?)
            }
            ["SecondsPath"] => WaitUntil::SecondsPath(path_at(fields, "SecondsPath")?),
            ["TimestampPath"] => WaitUntil::TimestampPath(path_at(fields, "TimestampPath")?),
            _ => {
                return Err(fields.invalid_state(format!(
                    "a Wait state needs exactly one of {}",
                    DURATION_FIELDS.join(", ")
                )));
            }
        };
        Ok(WaitState {
            until,
            transition: Transition::parse(fields)?,
        })
    }

    pub(super) fn transition(&self) -> &Transition {
        &self.transition
    }

    pub(super) fn run(&self, input: StateInput, scope: &Scope<'_>) -> Body<'_> {
        match self.delay(input.effective(), scope) {
            Ok(delay) => Body::Result(
                input.into_effective(),
                Exit::SleepThen(delay, &self.transition),
            ),
            Err(failure) => Body::Failed(failure),
        }
    }

    /// How long to sleep, counted from the start of this step.
    fn delay(&self, input: &Value, scope: &Scope<'_>) -> Result<Duration, TaskFailure> {
        let delay = match &self.until {
            WaitUntil::Seconds(seconds) => Duration::from_secs(*seconds),
            WaitUntil::Timestamp(timestamp) => until(*timestamp, scope),
            WaitUntil::SecondsPath(path) => {
                let value = path.read(input, scope)?;
                value.as_u64().map(Duration::from_secs).ok_or_else(|| {
                    scope.runtime_failure(format_args!(
                        "SecondsPath {:?} selected {value}, which is not a non-negative integer",
                        path.text()
                    ))
                })?
            }
            WaitUntil::TimestampPath(path) => {
                let value = path.read(input, scope)?;
                let timestamp = value.as_str().and_then(parse_timestamp).ok_or_else(|| {
                    scope.runtime_failure(format_args!(
                        "TimestampPath {:?} selected {value}, which is not an RFC 3339 timestamp \
                         with a \"T\" between date and time",
                        path.text()
                    ))
                })?;
                until(timestamp, scope)
            }
        };
        if delay > Duration::from_secs(LONGEST_WAIT_SECONDS) {
            return Err(scope.runtime_failure(format_args!(
                "Wait state delay is too long: {} seconds, over the limit of {LONGEST_WAIT_SECONDS}",
                delay.as_secs()
            )));
        }
        Ok(delay)
    }
}

fn path_at(fields: &Fields<'_>, field: &str) -> Result<ReadPath, DefinitionError> {
    ReadPath::parse_field(fields, field, fields.required_string(field)?)
}

/// The time from now until `timestamp`; none if it has passed.
fn until(timestamp: OffsetDateTime, scope: &Scope<'_>) -> Duration {
    Duration::try_from(timestamp - scope.now()).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::cursor::Cursor;
    use super::super::test_support::{
        at, machine, run_to_end, runtime_cause, single, single_rejection, step_from_start,
        FakeTasks,
    };
    use super::super::Step;
    use super::*;

    async fn wait_step(state: Value, input: Value) -> Step {
        step_from_start(&single(state), input, &FakeTasks::returning(json!(null))).await
    }

    #[test]
    fn malformed_waits_are_rejected() {
        let message = single_rejection(
            json!({ "Type": "Wait", "Seconds": 1, "Timestamp": "2024-01-01T00:00:00Z", "Next": "Done" }),
        );
        assert!(message.contains("exactly one of Seconds"), "{message}");
        let message = single_rejection(json!({ "Type": "Wait", "Seconds": -1, "Next": "Done" }));
        assert!(
            message.contains("\"Seconds\" must be a non-negative integer"),
            "{message}"
        );
        let message = single_rejection(json!({ "Type": "Wait", "Next": "Done" }));
        assert!(message.contains("exactly one of Seconds"), "{message}");
    }

    #[tokio::test]
    async fn a_wait_for_seconds_sleeps_then_moves_on_with_its_output() {
        let step = wait_step(
            json!({ "Type": "Wait", "Seconds": 30, "OutputPath": "$.keep", "Next": "Done" }),
            json!({ "keep": { "a": 1 }, "drop": 2 }),
        )
        .await;
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::from_secs(30),
                then: at("Done", json!({ "a": 1 }))
            }
        );
    }

    #[tokio::test]
    async fn a_wait_reads_its_seconds_from_a_path() {
        let step = wait_step(
            json!({ "Type": "Wait", "SecondsPath": "$.delay", "Next": "Done" }),
            json!({ "delay": 7 }),
        )
        .await;
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::from_secs(7),
                then: at("Done", json!({ "delay": 7 }))
            }
        );
        let step = wait_step(
            json!({ "Type": "Wait", "SecondsPath": "$.delay", "Next": "Done" }),
            json!({ "delay": -1 }),
        )
        .await;
        runtime_cause(&step);
    }

    #[tokio::test]
    async fn a_wait_until_a_timestamp_sleeps_until_then_or_not_at_all() {
        let step = wait_step(
            json!({ "Type": "Wait", "Timestamp": "2024-05-01T12:01:30Z", "Next": "Done" }),
            json!({}),
        )
        .await;
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::from_secs(90),
                then: at("Done", json!({}))
            }
        );
        let step = wait_step(
            json!({ "Type": "Wait", "Timestamp": "2024-05-01T11:00:00Z", "Next": "Done" }),
            json!({}),
        )
        .await;
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::ZERO,
                then: at("Done", json!({}))
            }
        );
    }

    #[tokio::test]
    async fn a_wait_reads_its_timestamp_from_a_path() {
        let state = json!({ "Type": "Wait", "TimestampPath": "$.until", "Next": "Done" });
        let input = json!({ "until": "2024-05-01T14:00:10+02:00" });
        let step = wait_step(state.clone(), input.clone()).await;
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::from_secs(10),
                then: at("Done", input)
            }
        );
        let step = wait_step(state, json!({ "until": "soon" })).await;
        runtime_cause(&step);
    }

    #[test]
    fn a_wait_timestamp_with_a_space_is_refused() {
        let message = single_rejection(
            json!({ "Type": "Wait", "Timestamp": "2024-05-01 12:01:30Z", "Next": "Done" }),
        );
        assert!(
            message.contains("field \"Timestamp\" must be an RFC 3339 timestamp with a \"T\""),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_timestamp_path_value_with_a_space_fails_with_states_runtime() {
        let step = wait_step(
            json!({ "Type": "Wait", "TimestampPath": "$.until", "Next": "Done" }),
            json!({ "until": "2024-05-01 12:01:30Z" }),
        )
        .await;
        let cause = runtime_cause(&step);
        assert!(cause.contains("TimestampPath \"$.until\""), "{cause}");
    }

    #[tokio::test]
    async fn a_wait_longer_than_2_pow_31_minus_1_seconds_fails_with_states_runtime() {
        let longest = json!({ "Type": "Wait", "Seconds": 2_147_483_647u64, "Next": "Done" });
        let step = wait_step(longest, json!({})).await;
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::from_secs(2_147_483_647),
                then: at("Done", json!({}))
            }
        );
        let too_long = [
            (
                json!({ "Type": "Wait", "Seconds": 2_147_483_648u64, "Next": "Done" }),
                json!({}),
            ),
            (
                json!({ "Type": "Wait", "SecondsPath": "$.s", "Next": "Done" }),
                json!({ "s": 99_999_999_999u64 }),
            ),
            (
                json!({ "Type": "Wait", "Timestamp": "2100-01-01T00:00:00Z", "Next": "Done" }),
                json!({}),
            ),
            (
                json!({ "Type": "Wait", "TimestampPath": "$.t", "Next": "Done" }),
                json!({ "t": "2100-01-01T00:00:00Z" }),
            ),
        ];
        for (state, input) in too_long {
            let step = wait_step(state.clone(), input).await;
            let cause = runtime_cause(&step);
            assert!(
                cause.contains("Wait state delay is too long"),
                "{state}: {cause}"
            );
        }
    }

    #[tokio::test]
    async fn a_wait_that_ends_the_execution_succeeds_after_its_sleep() {
        let machine = machine(
            json!({ "StartAt": "W", "States": { "W": { "Type": "Wait", "Seconds": 5, "End": true } } }),
        );
        let tasks = FakeTasks::returning(json!(null));
        let (end, sleeps) = run_to_end(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(sleeps, [Duration::from_secs(5)]);
        assert_eq!(end, Step::Succeeded(json!({ "a": 1 })));
    }

    #[tokio::test]
    async fn a_final_wait_sleeps_in_an_explicit_phase_and_applies_its_paths_once() {
        let machine = machine(json!({
            "StartAt": "W",
            "States": { "W": { "Type": "Wait", "Seconds": 5, "OutputPath": "$.a", "End": true } }
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": { "a": 1 } }), &tasks).await;
        let expected_then = Cursor::wait_elapsed("W".to_owned(), json!({ "a": 1 }));
        assert_eq!(
            step,
            Step::Sleep {
                duration: Duration::from_secs(5),
                then: expected_then.clone()
            }
        );
        assert_eq!(
            super::super::test_support::step(&machine, expected_then, &tasks).await,
            Step::Succeeded(json!({ "a": 1 }))
        );
    }
}
