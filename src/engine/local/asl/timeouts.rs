//! A Task's time limits, as on Step Functions: `TimeoutSeconds` (or `TimeoutSecondsPath`)
//! bounds one attempt of the Task, and `HeartbeatSeconds` (or `HeartbeatSecondsPath`) bounds
//! the time the Task may go without sending a [`Heartbeat`].
//!
//! Both are positive integers of seconds, given in the definition or read by a Reference Path
//! from the state's effective input (after `InputPath`, before `Parameters`); a state has at
//! most one field of each pair. The timeout defaults to 99,999,999 seconds, and the heartbeat
//! interval must be smaller than the timeout: a definition that breaks this is refused, and a
//! path that selects a value breaking it (or anything but a positive integer) fails the
//! execution with `States.Runtime`. Without a heartbeat field nothing watches heartbeats.
//!
//! The clock of an attempt starts when the invocation starts. An attempt that runs past its
//! timeout fails with `States.Timeout`; one that sends no heartbeat for the interval (counted
//! from the start, then from its last heartbeat) fails with `States.HeartbeatTimeout`, even
//! while the timeout has time left. Either failure goes to the state's Retry and Catch. The
//! invocation's future is then dropped, which cancels whatever it was awaiting.
//!
//! The deadline lives in memory only. The engine journals a Task's cursor before the Task
//! runs, so after a crash the attempt runs again from the start with a fresh deadline and a
//! fresh heartbeat clock: an attempt cut short by a crash may in total run longer than its
//! timeout, which is safe because Task resources are idempotent.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::context::Scope;
use super::errors::{TaskFailure, HEARTBEAT_TIMEOUT_ERROR, TIMEOUT_ERROR};
use super::fields::Fields;
use super::paths::ReadPath;
use super::DefinitionError;

/// The timeout of an attempt when the Task sets none, as on Step Functions.
pub(super) const DEFAULT_TIMEOUT_SECONDS: u64 = 99_999_999;

/// The time limits of a Task state, as its definition gives them.
#[derive(Debug)]
pub(super) struct TaskLimits {
    timeout: Option<Seconds>,
    heartbeat: Option<Seconds>,
}

/// A number of seconds, fixed in the definition or read from the state's input.
#[derive(Debug)]
enum Seconds {
    Fixed(u64),
    // Boxed: a path is large, and most Tasks have neither path.
    Path(Box<ReadPath>),
}

/// The limits of one attempt, with every path read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct AttemptLimits {
    timeout: u64,
    heartbeat: Option<u64>,
}

/// Which limit an attempt ran past.
enum Expiry {
    Timeout,
    Heartbeat,
}

/// Lets a running Task attempt tell the interpreter it is still making progress, as
/// `SendTaskHeartbeat` does on Step Functions.
///
/// A Task state with `HeartbeatSeconds` fails with `States.HeartbeatTimeout` when its attempt
/// goes that long without a call to [`Heartbeat::beat`]. The handle is cheap to clone and may
/// be moved into a background task; beats sent after the attempt has ended are ignored.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    last_beat: Arc<Mutex<Instant>>,
    interval: Option<Duration>,
}

impl Heartbeat {
    fn starting_now(interval: Option<Duration>) -> Self {
        Heartbeat {
            last_beat: Arc::new(Mutex::new(Instant::now())),
            interval,
        }
    }

    /// Resets the heartbeat clock: the attempt may now go another full interval without one.
    pub fn beat(&self) {
        *self.lock() = Instant::now();
    }

    /// How long the attempt may go without a beat (the state's heartbeat interval); `None`
    /// when the state sets no heartbeat, so beats are not needed.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    fn last_beat(&self) -> Instant {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        // Nothing panics while holding the lock; a poisoned one still holds a valid instant.
        self.last_beat
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl TaskLimits {
    pub(super) fn parse(fields: &Fields<'_>) -> Result<Self, DefinitionError> {
        let timeout = Seconds::parse(fields, "TimeoutSeconds", "TimeoutSecondsPath")?;
        let heartbeat = Seconds::parse(fields, "HeartbeatSeconds", "HeartbeatSecondsPath")?;
        if let Some(Seconds::Fixed(heartbeat)) = heartbeat {
            let timeout = match &timeout {
                Some(Seconds::Fixed(seconds)) => Some((*seconds, "TimeoutSeconds")),
                None => Some((DEFAULT_TIMEOUT_SECONDS, "the default TimeoutSeconds")),
                Some(Seconds::Path(_)) => None,
            };
            if let Some((timeout, named)) = timeout.filter(|(timeout, _)| heartbeat >= *timeout) {
                return Err(fields.invalid(
                    "HeartbeatSeconds",
                    format!("is {heartbeat}, but must be smaller than {named} ({timeout})"),
                ));
            }
        }
        Ok(TaskLimits { timeout, heartbeat })
    }

    /// The limits of an attempt on the state's effective `input`; a path that selects no
    /// positive integer, or a heartbeat not smaller than the timeout, is `States.Runtime`.
    pub(super) fn resolve(
        &self,
        input: &Value,
        scope: &Scope<'_>,
    ) -> Result<AttemptLimits, TaskFailure> {
        let timeout = match &self.timeout {
            Some(seconds) => seconds.resolve(input, scope)?,
            None => DEFAULT_TIMEOUT_SECONDS,
        };
        let heartbeat = match &self.heartbeat {
            Some(seconds) => Some(seconds.resolve(input, scope)?),
            None => None,
        };
        if let Some(heartbeat) = heartbeat.filter(|heartbeat| *heartbeat >= timeout) {
            return Err(scope.runtime_failure(format_args!(
                "the heartbeat interval ({heartbeat} seconds) must be smaller than the \
                 timeout ({timeout} seconds)"
            )));
        }
        Ok(AttemptLimits { timeout, heartbeat })
    }
}

impl Seconds {
    /// The state's `fixed` or `path` field (at most one of them may be present).
    fn parse(
        fields: &Fields<'_>,
        fixed: &str,
        path: &str,
    ) -> Result<Option<Self>, DefinitionError> {
        match (fields.get(fixed), fields.get(path)) {
            (Some(_), Some(_)) => Err(fields.invalid_state(format!(
                "has both \"{fixed}\" and \"{path}\"; it may have at most one of them"
            ))),
            (Some(_), None) => Ok(fields.positive_integer(fixed)?.map(Seconds::Fixed)),
            (None, Some(_)) => {
                let text = fields.required_string(path)?;
                let read = ReadPath::parse_field(fields, path, text)?;
                if !read.is_reference() {
                    return Err(fields.invalid(
                        path,
                        format!(
                            "{text:?} is not a reference path; only names and integer indexes \
                             are allowed"
                        ),
                    ));
                }
                Ok(Some(Seconds::Path(Box::new(read))))
            }
            (None, None) => Ok(None),
        }
    }

    fn resolve(&self, input: &Value, scope: &Scope<'_>) -> Result<u64, TaskFailure> {
        let path = match self {
            Seconds::Fixed(seconds) => return Ok(*seconds),
            Seconds::Path(path) => path,
        };
        let value = path.read(input, scope)?;
        value
            .as_u64()
            .filter(|seconds| *seconds > 0)
            .ok_or_else(|| {
                scope.runtime_failure(format_args!(
                    "{} {:?} selected {value}, which is not a positive integer",
                    path.field(),
                    path.text()
                ))
            })
    }
}

impl AttemptLimits {
    /// Runs `invoke` with a fresh [`Heartbeat`] within these limits: its result, or the
    /// `States.Timeout` / `States.HeartbeatTimeout` failure of the limit it ran past.
    pub(super) async fn run<F, Fut>(
        &self,
        scope: &Scope<'_>,
        invoke: F,
    ) -> Result<Value, TaskFailure>
    where
        F: FnOnce(Heartbeat) -> Fut,
        Fut: Future<Output = Result<Value, TaskFailure>>,
    {
        let heartbeat = Heartbeat::starting_now(self.heartbeat.map(Duration::from_secs));
        // A deadline past what the clock can hold is never reached.
        let deadline = Instant::now().checked_add(Duration::from_secs(self.timeout));
        let invocation = invoke(heartbeat.clone());
        tokio::select! {
            // A result that arrives at the deadline still counts.
            biased;
            result = invocation => result,
            expiry = watch(deadline, &heartbeat) => Err(self.failure(expiry, scope)),
        }
    }

    fn failure(&self, expiry: Expiry, scope: &Scope<'_>) -> TaskFailure {
        let state = scope.state_name();
        match expiry {
            Expiry::Timeout => TaskFailure::new(
                TIMEOUT_ERROR,
                format!(
                    "state {state:?}: the Task did not finish within its timeout of {} seconds",
                    self.timeout
                ),
            ),
            Expiry::Heartbeat => TaskFailure::new(
                HEARTBEAT_TIMEOUT_ERROR,
                format!(
                    "state {state:?}: the Task sent no heartbeat for {} seconds",
                    self.heartbeat.unwrap_or_default()
                ),
            ),
        }
    }
}

/// Waits until the attempt runs past its `deadline` or its heartbeat interval.
async fn watch(deadline: Option<Instant>, heartbeat: &Heartbeat) -> Expiry {
    loop {
        let heartbeat_due = heartbeat
            .interval
            .and_then(|interval| heartbeat.last_beat().checked_add(interval));
        let wake = match (deadline, heartbeat_due) {
            (Some(deadline), Some(due)) => deadline.min(due),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => return std::future::pending().await,
        };
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Expiry::Timeout;
        }
        // A beat while this watch slept moved the heartbeat's due time on: sleep again.
        let overdue = heartbeat
            .interval
            .and_then(|interval| heartbeat.last_beat().checked_add(interval))
            .is_some_and(|due| now >= due);
        if overdue {
            return Expiry::Heartbeat;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::errors::RUNTIME_ERROR;
    use super::super::test_support::{
        continue_to, failed_with, run_to_end, runtime_cause, single, single_rejection,
        step_from_start, task, FakeTasks, SlowTasks,
    };
    use super::super::Step;
    use super::*;

    /// Runs a one-Task machine (the Task is "S", then "Done") on `tasks` from `input`, and
    /// says how it ended and how much virtual time the run took.
    async fn run_task(state: Value, input: Value, tasks: &SlowTasks) -> (Step, Duration) {
        let started = Instant::now();
        let (end, _) = run_to_end(&single(task(state)), input, tasks).await;
        (end, started.elapsed())
    }

    fn cause(step: &Step) -> &str {
        match step {
            Step::Failed { cause, .. } => cause,
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn timeout_and_heartbeat_fields_must_be_positive_integers() {
        for (field, value) in [
            ("TimeoutSeconds", json!(0)),
            ("TimeoutSeconds", json!(-5)),
            ("TimeoutSeconds", json!(1.5)),
            ("TimeoutSeconds", json!("60")),
            ("HeartbeatSeconds", json!(0)),
            ("HeartbeatSeconds", json!(null)),
        ] {
            let mut state = task(json!({}));
            state[field] = value.clone();
            let message = single_rejection(state);
            assert_eq!(
                message,
                format!("state \"S\": field \"{field}\" must be a positive integer"),
                "{field}: {value}"
            );
        }
    }

    #[test]
    fn timeout_and_heartbeat_paths_must_be_reference_paths() {
        for (field, value, expected) in [
            ("TimeoutSecondsPath", json!(60), "must be a string"),
            ("TimeoutSecondsPath", json!("limit"), "is not a path"),
            (
                "HeartbeatSecondsPath",
                json!("$.limits[*]"),
                "is not a reference path",
            ),
            (
                "HeartbeatSecondsPath",
                json!("$..beat"),
                "is not a reference path",
            ),
        ] {
            let mut state = task(json!({}));
            state[field] = value.clone();
            let message = single_rejection(state);
            assert!(
                message.starts_with(&format!("state \"S\": field \"{field}\" ")),
                "{message}"
            );
            assert!(message.contains(expected), "{field}: {value}: {message}");
        }
    }

    #[test]
    fn both_fields_of_a_pair_are_refused_naming_the_state_and_the_fields() {
        let message = single_rejection(task(
            json!({ "TimeoutSeconds": 60, "TimeoutSecondsPath": "$.limit" }),
        ));
        assert_eq!(
            message,
            "state \"S\": has both \"TimeoutSeconds\" and \"TimeoutSecondsPath\"; it may have \
             at most one of them"
        );
        let message = single_rejection(task(
            json!({ "HeartbeatSeconds": 5, "HeartbeatSecondsPath": "$.beat" }),
        ));
        assert_eq!(
            message,
            "state \"S\": has both \"HeartbeatSeconds\" and \"HeartbeatSecondsPath\"; it may \
             have at most one of them"
        );
    }

    #[test]
    fn heartbeat_seconds_not_smaller_than_timeout_seconds_is_refused() {
        for heartbeat in [60, 61] {
            let message = single_rejection(task(
                json!({ "TimeoutSeconds": 60, "HeartbeatSeconds": heartbeat }),
            ));
            assert_eq!(
                message,
                format!(
                    "state \"S\": field \"HeartbeatSeconds\" is {heartbeat}, but must be \
                     smaller than TimeoutSeconds (60)"
                )
            );
        }
        let message =
            single_rejection(task(json!({ "HeartbeatSeconds": DEFAULT_TIMEOUT_SECONDS })));
        assert!(
            message.contains("must be smaller than the default TimeoutSeconds (99999999)"),
            "{message}"
        );
        single(task(
            json!({ "TimeoutSeconds": 60, "HeartbeatSeconds": 59 }),
        ));
        single(task(
            json!({ "TimeoutSecondsPath": "$.t", "HeartbeatSeconds": 600 }),
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_runs_past_its_timeout_fails_with_states_timeout_and_is_retried() {
        let tasks = SlowTasks::working(&[30, 4]);
        let state = json!({
            "TimeoutSeconds": 10,
            "Retry": [{ "ErrorEquals": ["States.Timeout"], "MaxAttempts": 1 }]
        });
        let (first, elapsed) = run_task(state.clone(), json!({}), &tasks).await;
        assert_eq!(first, Step::Succeeded(json!({ "worked": 4 })));
        assert_eq!(tasks.calls(), 2);
        // The first attempt was cut off at its deadline, not when its work would have ended.
        assert_eq!(elapsed, Duration::from_secs(10 + 4));

        let always_slow = SlowTasks::working(&[30]);
        let (end, _) = run_task(state, json!({}), &always_slow).await;
        assert_eq!(failed_with(&end), TIMEOUT_ERROR);
        assert_eq!(
            cause(&end),
            "state \"S\": the Task did not finish within its timeout of 10 seconds"
        );
        assert_eq!(always_slow.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_is_caught_by_states_timeout_and_by_states_all() {
        for catch_all in ["States.Timeout", "States.ALL"] {
            let machine = single(task(json!({
                "TimeoutSeconds": 10,
                "Catch": [{ "ErrorEquals": [catch_all], "ResultPath": "$.error", "Next": "Done" }]
            })));
            let tasks = SlowTasks::working(&[30]);
            let step = step_from_start(&machine, json!({ "keep": 1 }), &tasks).await;
            let caught = continue_to(step);
            assert_eq!(caught.state(), "Done", "{catch_all}");
            assert_eq!(caught.input()["keep"], 1);
            assert_eq!(caught.input()["error"]["Error"], TIMEOUT_ERROR);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn states_task_failed_matches_neither_a_timeout_nor_a_heartbeat_timeout() {
        for (limit, error) in [
            (json!({ "TimeoutSeconds": 10 }), TIMEOUT_ERROR),
            (json!({ "HeartbeatSeconds": 10 }), HEARTBEAT_TIMEOUT_ERROR),
        ] {
            let mut state = json!({
                "Retry": [{ "ErrorEquals": ["States.TaskFailed"] }],
                "Catch": [{ "ErrorEquals": ["States.TaskFailed"], "Next": "Done" }]
            });
            state
                .as_object_mut()
                .unwrap()
                .extend(limit.as_object().unwrap().clone());
            let tasks = SlowTasks::working(&[30]);
            let (end, _) = run_task(state, json!({}), &tasks).await;
            assert_eq!(failed_with(&end), error);
            assert_eq!(tasks.calls(), 1, "{error} was retried");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_seconds_path_reads_the_timeout_from_the_effective_input() {
        let state = json!({ "InputPath": "$.job", "TimeoutSecondsPath": "$.limits.seconds" });
        let tight = json!({ "job": { "limits": { "seconds": 5 } } });
        let tasks = SlowTasks::working(&[7]);
        let (end, elapsed) = run_task(state.clone(), tight, &tasks).await;
        assert_eq!(failed_with(&end), TIMEOUT_ERROR);
        assert_eq!(elapsed, Duration::from_secs(5));
        let roomy = json!({ "job": { "limits": { "seconds": 8 } } });
        let (end, _) = run_task(state, roomy, &tasks).await;
        assert_eq!(end, Step::Succeeded(json!({ "worked": 7 })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_path_value_that_is_not_a_positive_integer_fails_with_states_runtime() {
        let state = json!({
            "TimeoutSecondsPath": "$.limit",
            "Retry": [{ "ErrorEquals": ["States.ALL"] }],
            "Catch": [{ "ErrorEquals": ["States.ALL"], "Next": "Done" }]
        });
        for limit in [json!(0), json!(-3), json!(2.5), json!("10"), json!(null)] {
            let tasks = SlowTasks::working(&[1]);
            let (end, _) = run_task(state.clone(), json!({ "limit": limit }), &tasks).await;
            let cause = runtime_cause(&end);
            assert_eq!(
                cause,
                format!(
                    "state \"S\": TimeoutSecondsPath \"$.limit\" selected {limit}, which is not \
                     a positive integer"
                )
            );
            assert_eq!(tasks.calls(), 0, "the Task ran with the limit {limit}");
        }
        let tasks = SlowTasks::working(&[1]);
        let (end, _) = run_task(state, json!({}), &tasks).await;
        assert!(runtime_cause(&end).contains("selected nothing"), "{end:?}");
        assert_eq!(tasks.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_path_value_not_smaller_than_the_timeout_fails_with_states_runtime() {
        let state = json!({ "TimeoutSeconds": 10, "HeartbeatSecondsPath": "$.beat" });
        let tasks = SlowTasks::working(&[1]);
        let (end, _) = run_task(state.clone(), json!({ "beat": 10 }), &tasks).await;
        assert_eq!(failed_with(&end), RUNTIME_ERROR);
        assert_eq!(
            cause(&end),
            "state \"S\": the heartbeat interval (10 seconds) must be smaller than the timeout \
             (10 seconds)"
        );
        assert_eq!(tasks.calls(), 0);
        let (end, _) = run_task(state, json!({ "beat": 9 }), &tasks).await;
        assert_eq!(end, Step::Succeeded(json!({ "worked": 1 })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_sends_heartbeats_lives_past_the_heartbeat_interval() {
        let state = json!({ "TimeoutSeconds": 600, "HeartbeatSeconds": 5 });
        let tasks = SlowTasks::working(&[120]).beating_every(4);
        let (end, elapsed) = run_task(state, json!({}), &tasks).await;
        assert_eq!(end, Step::Succeeded(json!({ "worked": 120 })));
        assert_eq!(elapsed, Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_sends_no_heartbeat_in_the_interval_fails_with_states_heartbeat_timeout() {
        let state = json!({ "TimeoutSeconds": 600, "HeartbeatSecondsPath": "$.beat" });
        let silent = SlowTasks::working(&[120]);
        let (end, elapsed) = run_task(state.clone(), json!({ "beat": 5 }), &silent).await;
        assert_eq!(failed_with(&end), HEARTBEAT_TIMEOUT_ERROR);
        assert_eq!(
            cause(&end),
            "state \"S\": the Task sent no heartbeat for 5 seconds"
        );
        assert_eq!(elapsed, Duration::from_secs(5));
        // Beats further apart than the interval do not keep the task alive either.
        let too_slow = SlowTasks::working(&[120]).beating_every(7);
        let (end, elapsed) = run_task(state, json!({ "beat": 5 }), &too_slow).await;
        assert_eq!(failed_with(&end), HEARTBEAT_TIMEOUT_ERROR);
        assert_eq!(elapsed, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_timeout_is_retried_and_caught_by_its_name_states_timeout_or_states_all() {
        for name in ["States.HeartbeatTimeout", "States.Timeout", "States.ALL"] {
            let state = json!({
                "HeartbeatSeconds": 5,
                "Retry": [{ "ErrorEquals": [name], "MaxAttempts": 1 }],
                "Catch": [{ "ErrorEquals": [name], "ResultPath": "$.error", "Next": "Done" }]
            });
            let tasks = SlowTasks::working(&[60]);
            let (end, _) = run_task(state, json!({}), &tasks).await;
            let Step::Succeeded(output) = end else {
                panic!("{name}: the Catch leads to Done, which succeeds: {end:?}")
            };
            assert_eq!(output["error"]["Error"], HEARTBEAT_TIMEOUT_ERROR, "{name}");
            assert_eq!(tasks.calls(), 2, "{name}: retried once");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_do_not_extend_the_timeout() {
        let state = json!({ "TimeoutSeconds": 30, "HeartbeatSeconds": 5 });
        let tasks = SlowTasks::working(&[120]).beating_every(1);
        let (end, elapsed) = run_task(state, json!({}), &tasks).await;
        assert_eq!(failed_with(&end), TIMEOUT_ERROR);
        assert_eq!(elapsed, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_without_a_timeout_times_out_after_the_default_of_99999999_seconds() {
        let tasks = SlowTasks::working(&[DEFAULT_TIMEOUT_SECONDS + 1]);
        let (end, elapsed) = run_task(json!({}), json!({}), &tasks).await;
        assert_eq!(failed_with(&end), TIMEOUT_ERROR);
        assert_eq!(elapsed, Duration::from_secs(DEFAULT_TIMEOUT_SECONDS));
    }

    #[tokio::test(start_paused = true)]
    async fn an_invoker_that_only_implements_invoke_succeeds_within_the_heartbeat_interval() {
        let machine = single(task(json!({ "TimeoutSeconds": 10, "HeartbeatSeconds": 5 })));
        let tasks = FakeTasks::returning(json!({ "ok": true }));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(continue_to(step).input(), &json!({ "ok": true }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_handle_reports_the_interval_and_outlives_its_attempt() {
        let heartbeat = Heartbeat::starting_now(Some(Duration::from_secs(5)));
        assert_eq!(heartbeat.interval(), Some(Duration::from_secs(5)));
        let beating = heartbeat.clone();
        tokio::time::advance(Duration::from_secs(3)).await;
        beating.beat();
        assert_eq!(heartbeat.last_beat(), Instant::now());
        assert_eq!(Heartbeat::starting_now(None).interval(), None);
    }
}
