//! [`Cursor`]: where an execution stands between two steps, as the engine journals it.
//!
//! The journal format is JSON: `{"state": ..., "input": ..., "retries": [...]}`, plus
//! `"phase": "wait_elapsed"` once a Wait state that ends the execution has slept. Journals
//! written before `phase` existed marked that moment with a non-empty `retries` on the Wait
//! state; `Cursor::has_waited` still reads them so.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where an execution stands between two steps: the state to run next, its raw input, and
/// how far that state has got. The engine persists it as JSON and hands it back to
/// [`StateMachine::step`](super::StateMachine::step), after a restart if need be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    state: String,
    input: Value,
    /// Retries already used per Retrier of the current Task state (index = the Retrier's
    /// position); empty on entering a state.
    #[serde(default)]
    retries: Vec<u32>,
    #[serde(default, skip_serializing_if = "Phase::is_entering")]
    phase: Phase,
}

/// How far the current state has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Phase {
    /// The state runs from its start (a retried Task runs from its start again).
    #[default]
    Entering,
    /// A Wait state has slept; the next step leaves it.
    WaitElapsed,
}

impl Phase {
    fn is_entering(&self) -> bool {
        *self == Phase::Entering
    }
}

impl Cursor {
    /// About to enter `state` with `input`.
    pub(super) fn entering(state: impl Into<String>, input: Value) -> Self {
        Cursor {
            state: state.into(),
            input,
            retries: Vec::new(),
            phase: Phase::Entering,
        }
    }

    /// About to run the Task `state` again, having used `retries`.
    pub(super) fn retrying(state: String, input: Value, retries: Vec<u32>) -> Self {
        Cursor {
            state,
            input,
            retries,
            phase: Phase::Entering,
        }
    }

    /// The Wait `state` has slept; `output` is what it passes on.
    pub(super) fn wait_elapsed(state: String, output: Value) -> Self {
        Cursor {
            state,
            input: output,
            retries: Vec::new(),
            phase: Phase::WaitElapsed,
        }
    }

    /// The name of the state to run next.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// That state's raw input (for a Wait state that has slept: its output).
    pub fn input(&self) -> &Value {
        &self.input
    }

    /// The raw input and the retries used so far per Retrier of the current Task state.
    pub(super) fn into_parts(self) -> (Value, Vec<u32>) {
        (self.input, self.retries)
    }

    /// All the retries of the current Task state so far (`$$.State.RetryCount`).
    pub(super) fn retry_count(&self) -> u32 {
        self.retries
            .iter()
            .fold(0u32, |total, used| total.saturating_add(*used))
    }

    /// Whether the current state, a Wait state, has slept already.
    pub(super) fn has_waited(&self) -> bool {
        // Journals written before `phase` existed flagged a Wait's end with `retries` (a Wait
        // has no Retriers, so the list was otherwise always empty there).
        self.phase == Phase::WaitElapsed || !self.retries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::test_support::{at, machine, single, step, step_from_start, task, FakeTasks};
    use super::super::Step;
    use super::*;

    #[test]
    fn a_cursor_round_trips_through_json() {
        for cursor in [
            Cursor::retrying("T".to_owned(), json!({ "a": [1, 2] }), vec![0, 2]),
            Cursor::wait_elapsed("W".to_owned(), json!({ "a": 1 })),
            Cursor::entering("S", json!(null)),
        ] {
            let text = serde_json::to_string(&cursor).unwrap();
            assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), cursor);
        }
        let without_retries: Cursor =
            serde_json::from_str(r#"{"state":"T","input":null}"#).unwrap();
        assert!(without_retries.retries.is_empty());
        assert_eq!(without_retries.phase, Phase::Entering);
    }

    #[test]
    fn a_cursor_outside_a_wait_is_journaled_as_before() {
        let text = serde_json::to_string(&Cursor::retrying(
            "S".to_owned(),
            json!({ "batchId": "b", "chunk": 1 }),
            vec![0, 1],
        ))
        .unwrap();
        assert_eq!(
            text,
            r#"{"state":"S","input":{"batchId":"b","chunk":1},"retries":[0,1]}"#
        );
        let text = serde_json::to_string(&Cursor::wait_elapsed("W".to_owned(), json!(1))).unwrap();
        assert_eq!(
            text,
            r#"{"state":"W","input":1,"retries":[],"phase":"wait_elapsed"}"#
        );
    }

    // These JSON texts are what the interpreter journaled before the Wait phase had a field of
    // its own, verbatim: a Wait that ends the execution flagged its elapsed sleep with
    // `"retries":[1]`.

    #[tokio::test]
    async fn a_journaled_cursor_of_an_elapsed_final_wait_in_the_old_format_resumes_to_success() {
        let machine = machine(json!({
            "StartAt": "W", "States": { "W": { "Type": "Wait", "Seconds": 5, "End": true } }
        }));
        let tasks = FakeTasks::returning(json!(null));
        let cursor: Cursor =
            serde_json::from_str(r#"{"state":"W","input":{"a":1},"retries":[1]}"#).unwrap();
        assert!(cursor.has_waited());
        let end = step(&machine, cursor, &tasks).await;
        assert_eq!(end, Step::Succeeded(json!({ "a": 1 })));
        let fresh: Cursor =
            serde_json::from_str(r#"{"state":"W","input":{"a":1},"retries":[]}"#).unwrap();
        assert_eq!(
            step(&machine, fresh, &tasks).await,
            Step::Sleep {
                duration: Duration::from_secs(5),
                then: Cursor::wait_elapsed("W".to_owned(), json!({ "a": 1 }))
            }
        );
    }

    #[tokio::test]
    async fn a_journaled_cursor_of_a_retrying_task_in_the_old_format_resumes_its_retries() {
        let machine = single(task(json!({
            "Parameters": { "attempt.$": "$$.State.RetryCount" },
            "Retry": [
                { "ErrorEquals": ["Other"] },
                { "ErrorEquals": ["Flaky"], "MaxAttempts": 3 }
            ]
        })));
        let tasks = FakeTasks::failing("Flaky");
        let cursor: Cursor = serde_json::from_str(
            r#"{"state":"S","input":{"batchId":"b","chunk":1},"retries":[0,2]}"#,
        )
        .unwrap();
        let next = step(&machine, cursor, &tasks).await;
        assert_eq!(
            next,
            Step::Sleep {
                duration: Duration::from_secs(4),
                then: Cursor::retrying(
                    "S".to_owned(),
                    json!({ "batchId": "b", "chunk": 1 }),
                    vec![0, 3]
                )
            }
        );
        assert_eq!(tasks.calls()[0].1, json!({ "attempt": 2 }));
    }

    #[tokio::test]
    async fn a_journaled_cursor_after_a_wait_in_the_old_format_enters_the_next_state() {
        let machine = single(json!({ "Type": "Wait", "Seconds": 30, "Next": "Done" }));
        let tasks = FakeTasks::returning(json!(null));
        let cursor: Cursor =
            serde_json::from_str(r#"{"state":"Done","input":{"k":true},"retries":[]}"#).unwrap();
        assert_eq!(cursor, at("Done", json!({ "k": true })));
        assert_eq!(
            step(&machine, cursor, &tasks).await,
            Step::Succeeded(json!({ "k": true }))
        );
        let first = step_from_start(&machine, json!({ "k": true }), &tasks).await;
        assert_eq!(
            first,
            Step::Sleep {
                duration: Duration::from_secs(30),
                then: at("Done", json!({ "k": true }))
            }
        );
    }
}
