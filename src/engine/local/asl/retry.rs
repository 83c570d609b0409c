//! A Task's `Retry`: which errors run the Task again, how often, and after how long.

use std::time::Duration;

use super::errors::{DefinitionError, ErrorEquals};
use super::fields::Fields;

/// Longest retry delay Step Functions allows (`MaxDelaySeconds` is at most 366 days).
const LONGEST_RETRY_DELAY_SECONDS: f64 = 31_622_400.0;

const RETRIER_FIELDS: &[&str] = &[
    "ErrorEquals",
    "IntervalSeconds",
    "MaxAttempts",
    "BackoffRate",
    "MaxDelaySeconds",
    "JitterStrategy",
    "Comment",
];

/// The Retriers of a Task, in order.
#[derive(Debug)]
pub(super) struct Retriers(Vec<Retrier>);

#[derive(Debug)]
struct Retrier {
    error_equals: ErrorEquals,
    interval_seconds: u64,
    max_attempts: u32,
    backoff_rate: f64,
    max_delay_seconds: Option<u64>,
    jitter: Jitter,
}

/// `JitterStrategy`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Jitter {
    /// `NONE` (the default): the delay is exactly the backoff.
    None,
    /// `FULL`: a random delay between zero and the backoff.
    Full,
}

impl Retriers {
    /// The Task's `Retry` field (no Retriers when it is absent).
    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let retriers = fields
            .objects("Retry")?
            .iter()
            .map(Retrier::parse)
            .collect::<Result<Vec<_>, _>>()?;
        ErrorEquals::check_catch_all_is_last(
            fields,
            "Retry",
            retriers.iter().map(|retrier| &retrier.error_equals),
        )?;
        Ok(Retriers(retriers))
    }

    /// When `error` has a Retrier with attempts left (given `used`, the retries used so far
    /// per Retrier): the delay before the next attempt and the retries used after it. The
    /// first Retrier that matches decides, even when its attempts are used up.
    pub(super) fn next_attempt(&self, error: &str, used: &[u32]) -> Option<(Duration, Vec<u32>)> {
        let (position, retrier) = self
            .0
            .iter()
            .enumerate()
            .find(|(_, retrier)| retrier.error_equals.matches(error))?;
        let used_here = used.get(position).copied().unwrap_or(0);
        if used_here >= retrier.max_attempts {
            return None;
        }
        let mut retries = used.to_vec();
        if retries.len() < self.0.len() {
            retries.resize(self.0.len(), 0);
        }
        retries[position] = used_here + 1;
        Some((retrier.delay_before_retry(used_here), retries))
    }
}

impl Retrier {
    fn parse(retrier: &Fields<'_>) -> Result<Self, DefinitionError> {
        retrier.allow_only("a Retrier", RETRIER_FIELDS)?;
        retrier.optional_string("Comment")?;
        let max_attempts = match retrier.non_negative_integer("MaxAttempts")? {
            None => 3,
            Some(attempts) => u32::try_from(attempts)
                .map_err(|_| retrier.invalid("MaxAttempts", "is too large"))?,
        };
        let backoff_rate = match retrier.get("BackoffRate") {
            None => 2.0,
            Some(value) => value.as_f64().filter(|rate| *rate >= 1.0).ok_or_else(|| {
                retrier.invalid("BackoffRate", "must be a number of at least 1.0")
            })?,
        };
        let jitter = match retrier.optional_string("JitterStrategy")? {
            None | Some("NONE") => Jitter::None,
            Some("FULL") => Jitter::Full,
            Some(_) => {
                return Err(retrier.invalid("JitterStrategy", "must be \"FULL\" or \"NONE\""))
            }
        };
        Ok(Retrier {
            error_equals: ErrorEquals::parse(retrier)?,
            interval_seconds: retrier.positive_integer("IntervalSeconds")?.unwrap_or(1),
            max_attempts,
            backoff_rate,
            max_delay_seconds: retrier.positive_integer("MaxDelaySeconds")?,
            jitter,
        })
    }

    /// The wait before retry number `retries_used + 1`.
    fn delay_before_retry(&self, retries_used: u32) -> Duration {
        let exponent = i32::try_from(retries_used).unwrap_or(i32::MAX);
        // u64 -> f64 may round for absurd intervals; the cap below makes that moot.
        let mut seconds = self.interval_seconds as f64 * self.backoff_rate.powi(exponent);
        if let Some(max_delay) = self.max_delay_seconds {
            seconds = seconds.min(max_delay as f64);
        }
        seconds = seconds.min(LONGEST_RETRY_DELAY_SECONDS);
        if self.jitter == Jitter::Full && seconds > 0.0 {
            seconds = rand::random_range(0.0..=seconds);
        }
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::errors::TIMEOUT_ERROR;
    use super::super::test_support::{
        continue_to, failed_with, single, single_rejection, step, step_from_start, task, FakeTasks,
    };
    use super::super::{StateMachine, Step};
    use super::*;

    fn retrying_task(retrier: Value) -> StateMachine {
        single(task(json!({ "Retry": [retrier] })))
    }

    async fn retry_delays(machine: &StateMachine, tasks: &FakeTasks) -> (Vec<Duration>, Step) {
        let mut cursor = machine.start(json!({ "payload": 1 }));
        let mut delays = Vec::new();
        for _ in 0..100 {
            match step(machine, cursor, tasks).await {
                Step::Sleep { duration, then } => {
                    assert_eq!(then.state(), "S");
                    assert_eq!(then.input(), &json!({ "payload": 1 }));
                    delays.push(duration);
                    cursor = then;
                }
                end => return (delays, end),
            }
        }
        panic!("the Task was still retrying after 100 attempts");
    }

    #[test]
    fn an_unknown_field_in_a_retrier_names_its_position() {
        let message = single_rejection(task(json!({
            "Retry": [{ "ErrorEquals": ["E"], "MaxAttempts": 1, "Backoff": 2 }]
        })));
        assert!(
            message.contains("field \"Retry[0].Backoff\" is not supported in a Retrier"),
            "{message}"
        );
    }

    #[test]
    fn malformed_retriers_are_rejected() {
        let message = single_rejection(task(
            json!({ "Retry": [{ "ErrorEquals": ["E"], "BackoffRate": 0.5 }] }),
        ));
        assert!(message.contains("\"Retry[0].BackoffRate\""), "{message}");
        let message = single_rejection(task(json!({ "Retry": [{ "ErrorEquals": [] }] })));
        assert!(message.contains("\"Retry[0].ErrorEquals\""), "{message}");
        let message = single_rejection(task(
            json!({ "Retry": [{ "ErrorEquals": ["E"], "JitterStrategy": "HALF" }] }),
        ));
        assert!(
            message.contains("\"Retry[0].JitterStrategy\" must be \"FULL\" or \"NONE\""),
            "{message}"
        );
        let message = single_rejection(task(
            json!({ "Retry": [{ "ErrorEquals": ["E"], "IntervalSeconds": 0 }] }),
        ));
        assert!(
            message.contains("\"Retry[0].IntervalSeconds\" must be a positive integer"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_retry_backs_off_by_the_backoff_rate() {
        let machine = retrying_task(json!({
            "ErrorEquals": ["Flaky"], "IntervalSeconds": 2, "MaxAttempts": 4, "BackoffRate": 1.5
        }));
        let tasks = FakeTasks::failing("Flaky");
        let (delays, end) = retry_delays(&machine, &tasks).await;
        assert_eq!(delays, [2.0, 3.0, 4.5, 6.75].map(Duration::from_secs_f64));
        assert_eq!(failed_with(&end), "Flaky");
        assert_eq!(tasks.calls().len(), 5);
    }

    #[tokio::test]
    async fn retry_defaults_are_one_second_three_attempts_and_doubling() {
        let machine = retrying_task(json!({ "ErrorEquals": ["Flaky"] }));
        let tasks = FakeTasks::failing("Flaky");
        let (delays, _) = retry_delays(&machine, &tasks).await;
        assert_eq!(delays, [1, 2, 4].map(Duration::from_secs));
    }

    #[tokio::test]
    async fn a_sleep_before_a_retry_counts_the_retry_in_the_cursor() {
        let machine = single(task(json!({
            "Retry": [
                { "ErrorEquals": ["Other"] },
                { "ErrorEquals": ["Flaky"], "MaxAttempts": 2 }
            ]
        })));
        let tasks = FakeTasks::failing("Flaky");
        let first = step_from_start(&machine, json!({}), &tasks).await;
        let Step::Sleep { then, .. } = first else {
            panic!("expected Sleep, got {first:?}")
        };
        assert_eq!(
            serde_json::to_value(&then).unwrap()["retries"],
            json!([0, 1])
        );
        let second = step(&machine, then, &tasks).await;
        let Step::Sleep { then, .. } = second else {
            panic!("expected Sleep, got {second:?}")
        };
        assert_eq!(
            serde_json::to_value(&then).unwrap()["retries"],
            json!([0, 2])
        );
    }

    #[tokio::test]
    async fn retry_count_in_the_context_object_counts_this_states_retries() {
        let machine = single(task(json!({
            "Parameters": { "attempt.$": "$$.State.RetryCount" },
            "Retry": [{ "ErrorEquals": ["Flaky"], "MaxAttempts": 2 }]
        })));
        let tasks = FakeTasks::failing("Flaky");
        retry_delays(&machine, &tasks).await;
        let attempts: Vec<Value> = tasks
            .calls()
            .into_iter()
            .map(|(_, input)| input["attempt"].clone())
            .collect();
        assert_eq!(attempts, [json!(0), json!(1), json!(2)]);
    }

    #[tokio::test]
    async fn max_delay_seconds_caps_the_backoff() {
        let machine = retrying_task(json!({
            "ErrorEquals": ["Flaky"], "IntervalSeconds": 3, "MaxAttempts": 4, "BackoffRate": 3.0, "MaxDelaySeconds": 10
        }));
        let tasks = FakeTasks::failing("Flaky");
        let (delays, _) = retry_delays(&machine, &tasks).await;
        assert_eq!(delays, [3, 9, 10, 10].map(Duration::from_secs));
    }

    #[tokio::test]
    async fn full_jitter_keeps_each_delay_within_the_backoff() {
        let machine = retrying_task(json!({
            "ErrorEquals": ["Flaky"], "IntervalSeconds": 4, "MaxAttempts": 3, "JitterStrategy": "FULL"
        }));
        let tasks = FakeTasks::failing("Flaky");
        let (delays, _) = retry_delays(&machine, &tasks).await;
        assert_eq!(delays.len(), 3);
        for (delay, ceiling) in delays.iter().zip([4, 8, 16]) {
            assert!(
                *delay <= Duration::from_secs(ceiling),
                "{delay:?} > {ceiling}s"
            );
        }
    }

    #[tokio::test]
    async fn max_attempts_zero_never_retries() {
        let machine = single(task(json!({
            "Retry": [{ "ErrorEquals": ["Flaky"], "MaxAttempts": 0 }, { "ErrorEquals": ["States.ALL"] }],
            "Catch": [{ "ErrorEquals": ["Flaky"], "Next": "Done" }]
        })));
        let tasks = FakeTasks::failing("Flaky");
        let step = step_from_start(&machine, json!({}), &tasks).await;
        let cursor = continue_to(step);
        assert_eq!(cursor.state(), "Done");
        assert_eq!(tasks.calls().len(), 1);
    }

    #[tokio::test]
    async fn states_all_retries_any_task_error() {
        let machine = retrying_task(json!({ "ErrorEquals": ["States.ALL"], "MaxAttempts": 1 }));
        let tasks = FakeTasks::failing("Anything.AtAll");
        let (delays, end) = retry_delays(&machine, &tasks).await;
        assert_eq!(delays, [Duration::from_secs(1)]);
        assert_eq!(failed_with(&end), "Anything.AtAll");
    }

    #[tokio::test]
    async fn states_task_failed_matches_task_errors_but_not_timeouts() {
        let machine =
            retrying_task(json!({ "ErrorEquals": ["States.TaskFailed"], "MaxAttempts": 1 }));
        let (delays, _) = retry_delays(&machine, &FakeTasks::failing("Lambda.Unknown")).await;
        assert_eq!(delays.len(), 1);
        let (delays, end) = retry_delays(&machine, &FakeTasks::failing(TIMEOUT_ERROR)).await;
        assert!(delays.is_empty());
        assert_eq!(failed_with(&end), TIMEOUT_ERROR);
    }
}
