//! What the interpreter's unit tests share: a recording [`TaskInvoker`], a slow one that
//! works in virtual time, machines built from `json!` definitions, a fixed clock, and
//! functions that step executions and inspect their steps.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::envelope::MAX_PAYLOAD_BYTES;
use super::errors::RUNTIME_ERROR;
use super::timestamp::parse_timestamp;
use super::{
    Cursor, DefinitionError, ExecutionContext, Heartbeat, StateMachine, Step, TaskFailure,
    TaskInvoker,
};

type Responder = dyn Fn(&str, &Value, usize) -> Result<Value, TaskFailure> + Send + Sync;

/// Records every invocation and answers with `respond(resource, input, call_index)`.
pub(super) struct FakeTasks {
    calls: Mutex<Vec<(String, Value)>>,
    respond: Box<Responder>,
}

impl FakeTasks {
    pub(super) fn new(
        respond: impl Fn(&str, &Value, usize) -> Result<Value, TaskFailure> + Send + Sync + 'static,
    ) -> Self {
        FakeTasks {
            calls: Mutex::new(Vec::new()),
            respond: Box::new(respond),
        }
    }

    pub(super) fn returning(result: Value) -> Self {
        Self::new(move |_, _, _| Ok(result.clone()))
    }

    pub(super) fn failing(error: &str) -> Self {
        let error = error.to_owned();
        Self::new(move |_, _, _| Err(failure(&error)))
    }

    /// Every invocation so far: the resource and the input.
    pub(super) fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl TaskInvoker for FakeTasks {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        let call_index = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((resource.to_owned(), input.clone()));
            calls.len() - 1
        };
        (self.respond)(resource, &input, call_index)
    }
}

/// Works for a while in (paused, virtual) time, then returns `{"worked": seconds}`. Call `n`
/// works `work[n]` (the last entry for every later call) and, with `beat_every`, beats the
/// heartbeat that often while it works.
pub(super) struct SlowTasks {
    work: Vec<Duration>,
    beat_every: Option<Duration>,
    calls: Mutex<usize>,
}

impl SlowTasks {
    pub(super) fn working(work: &[u64]) -> Self {
        SlowTasks {
            work: work.iter().copied().map(Duration::from_secs).collect(),
            beat_every: None,
            calls: Mutex::new(0),
        }
    }

    pub(super) fn beating_every(mut self, seconds: u64) -> Self {
        self.beat_every = Some(Duration::from_secs(seconds));
        self
    }

    /// How many times the task was invoked.
    pub(super) fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }

    async fn work(&self, heartbeat: Option<Heartbeat>) -> Result<Value, TaskFailure> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls - 1
        };
        let work = self.work[call.min(self.work.len() - 1)];
        let started = tokio::time::Instant::now();
        let finish = started + work;
        while let (Some(every), Some(heartbeat)) = (self.beat_every, &heartbeat) {
            let next = tokio::time::Instant::now() + every;
            if next >= finish {
                break;
            }
            tokio::time::sleep_until(next).await;
            heartbeat.beat();
        }
        tokio::time::sleep_until(finish).await;
        Ok(json!({ "worked": work.as_secs() }))
    }
}

#[async_trait::async_trait]
impl TaskInvoker for SlowTasks {
    async fn invoke(&self, _resource: &str, _input: Value) -> Result<Value, TaskFailure> {
        self.work(None).await
    }

    async fn invoke_with_heartbeat(
        &self,
        _resource: &str,
        _input: Value,
        heartbeat: Heartbeat,
    ) -> Result<Value, TaskFailure> {
        self.work(Some(heartbeat)).await
    }
}

/// The failure `error`, caused by "`error` happened".
pub(super) fn failure(error: &str) -> TaskFailure {
    TaskFailure {
        error: error.to_owned(),
        cause: format!("{error} happened"),
    }
}

pub(super) fn machine(definition: Value) -> StateMachine {
    StateMachine::from_json(&definition.to_string(), &BTreeMap::new())
        .expect("the definition is valid")
}

pub(super) fn rejection(definition: Value) -> DefinitionError {
    StateMachine::from_json(&definition.to_string(), &BTreeMap::new())
        .expect_err("the definition is rejected")
}

/// A machine whose only real state is `state`, named "S", with a Succeed state "Done".
pub(super) fn single(state: Value) -> StateMachine {
    machine(json!({
        "StartAt": "S",
        "States": { "S": state, "Done": { "Type": "Succeed" } }
    }))
}

/// Why a machine like [`single`]'s is rejected.
pub(super) fn single_rejection(state: Value) -> String {
    rejection(json!({
        "StartAt": "S",
        "States": { "S": state, "Done": { "Type": "Succeed" } }
    }))
    .to_string()
}

/// A Task state on `arn:task` going to "Done", with the `extra` fields.
pub(super) fn task(extra: Value) -> Value {
    let mut state = json!({ "Type": "Task", "Resource": "arn:task", "Next": "Done" });
    if let (Value::Object(state), Value::Object(extra)) = (&mut state, extra) {
        state.extend(extra);
    }
    state
}

pub(super) fn execution() -> ExecutionContext {
    ExecutionContext::new(
        "exec-1",
        json!({ "batchId": "b-1" }),
        "2024-05-01T10:00:00Z",
        "chunk-pipeline",
    )
}

/// About to enter `state` with `input`.
pub(super) fn at(state: &str, input: Value) -> Cursor {
    Cursor::entering(state, input)
}

/// The clock of every test step: 2024-05-01T12:00:00Z.
pub(super) fn fixed_now() -> OffsetDateTime {
    parse_timestamp("2024-05-01T12:00:00Z").unwrap()
}

/// A payload just over the limit.
pub(super) fn oversized() -> Value {
    json!({ "blob": "x".repeat(MAX_PAYLOAD_BYTES) })
}

pub(super) async fn step(machine: &StateMachine, cursor: Cursor, tasks: &dyn TaskInvoker) -> Step {
    machine
        .step_at(cursor, &execution(), tasks, fixed_now())
        .await
}

pub(super) async fn step_from_start(
    machine: &StateMachine,
    input: Value,
    tasks: &dyn TaskInvoker,
) -> Step {
    step(machine, machine.start(input), tasks).await
}

/// Follows Continue and Sleep until the execution ends; returns the end and the sleeps.
pub(super) async fn run_to_end(
    machine: &StateMachine,
    input: Value,
    tasks: &dyn TaskInvoker,
) -> (Step, Vec<Duration>) {
    let mut cursor = machine.start(input);
    let mut sleeps = Vec::new();
    for _ in 0..100 {
        match step(machine, cursor, tasks).await {
            Step::Continue(next) => cursor = next,
            Step::Sleep { duration, then } => {
                sleeps.push(duration);
                cursor = then;
            }
            end => return (end, sleeps),
        }
    }
    panic!("the execution did not end within 100 steps");
}

/// Runs a one-rule Choice and says whether the rule matched.
pub(super) async fn rule_matches(rule: Value, input: Value) -> Result<bool, Step> {
    let mut rule = rule;
    rule["Next"] = json!("Yes");
    let machine = machine(json!({
        "StartAt": "C",
        "States": {
            "C": { "Type": "Choice", "Choices": [rule], "Default": "No" },
            "Yes": { "Type": "Succeed" },
            "No": { "Type": "Succeed" }
        }
    }));
    match step_from_start(&machine, input, &FakeTasks::returning(json!(null))).await {
        Step::Continue(cursor) => Ok(cursor.state() == "Yes"),
        other => Err(other),
    }
}

/// Checks `(Variable, operator, operand, expected match)` cases against one input.
pub(super) async fn check_comparisons(input: Value, cases: &[(&str, &str, Value, bool)]) {
    for (variable, operator, operand, expected) in cases {
        let mut rule = Map::new();
        rule.insert("Variable".to_owned(), json!(variable));
        rule.insert((*operator).to_owned(), operand.clone());
        let rule = Value::Object(rule);
        let outcome = rule_matches(rule.clone(), input.clone()).await;
        assert_eq!(outcome, Ok(*expected), "rule {rule} on {input}");
    }
}

pub(super) fn continue_to(step: Step) -> Cursor {
    match step {
        Step::Continue(cursor) => cursor,
        other => panic!("expected Continue, got {other:?}"),
    }
}

pub(super) fn failed_with(step: &Step) -> &str {
    match step {
        Step::Failed { error, .. } => error,
        other => panic!("expected Failed, got {other:?}"),
    }
}

pub(super) fn runtime_cause(step: &Step) -> &str {
    match step {
        Step::Failed { error, cause } if error == RUNTIME_ERROR => cause,
        other => panic!("expected a States.Runtime failure, got {other:?}"),
    }
}
