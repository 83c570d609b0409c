//! Amazon States Language (ASL) interpreter for the local engine.
//!
//! This module owns parsing, validating and stepping a state machine definition: the same
//! JSON that AWS Step Functions runs in production. It does no I/O of its own: a Task's work
//! goes through the caller's [`TaskInvoker`], and waiting is handed back to the caller as
//! [`Step::Sleep`], so the engine decides how to sleep, persist and resume.
//!
//! # Supported subset
//!
//! * Query language: JSONPath only. `"QueryLanguage": "JSONata"` is rejected.
//! * Top level: `StartAt`, `States`, `Comment`, `Version`, `QueryLanguage` and `TimeoutSeconds`.
//!   `TimeoutSeconds` is validated and then ignored: the execution timeout belongs to the engine.
//! * States: `Task`, `Pass`, `Choice`, `Wait`, `Succeed` and `Fail`. `Map` and `Parallel` are
//!   rejected.
//! * Task: `Resource`, `InputPath`, `Parameters`, `ResultSelector`, `ResultPath`, `OutputPath`,
//!   `Retry` (`ErrorEquals`, `IntervalSeconds`, `MaxAttempts`, `BackoffRate`, `MaxDelaySeconds`,
//!   `JitterStrategy`), `Catch` (`ErrorEquals`, `Next`, `ResultPath`), `Next`/`End`. Timeouts,
//!   heartbeats and `Credentials` are rejected, because nothing here could enforce them.
//! * Pass: `InputPath`, `Parameters`, `Result`, `ResultPath`, `OutputPath`, `Next`/`End`.
//! * Choice: `Choices` with `And`, `Or`, `Not`, every String/Numeric/Boolean/Timestamp comparison
//!   and its `...Path` form, `IsNull`, `IsPresent`, `IsNumeric`, `IsString`, `IsBoolean`,
//!   `IsTimestamp`; `Default`.
//! * Wait: `Seconds`, `SecondsPath`, `Timestamp`, `TimestampPath`.
//! * Fail: `Error`, `Cause`, `ErrorPath`, `CausePath`.
//! * Variables and JSONata-only fields (`Assign`, `Arguments`, `Output`, ...) and intrinsic
//!   functions (`States.Format(...)` and friends) are rejected when the definition is parsed.
//!
//! Any field outside this list is a [`DefinitionError`] naming the state and the field, so a
//! definition that runs here does not silently lean on behaviour this interpreter lacks.
//!
//! # Paths
//!
//! Reading paths (`InputPath`, `OutputPath`, `Variable`, `key.$` values, `SecondsPath`, ...) are
//! JSONPath queries. A path made only of names and integer indexes (dotted names may hold any
//! character but `.`, `[`, `]`, quotes, spaces and JSONPath operators, as on Step Functions:
//! `$.my-field`) yields the one value it selects; any other path (wildcard, slice, filter,
//! descendants, evaluated as RFC 9535 queries) yields an array of its matches.
//! A path that selects nothing fails the execution with `States.Runtime` (a Choice rule's
//! `IsPresent` is then simply false). Paths starting with
//! `$$` read the context object: `Execution.{Id,Name,Input,StartTime}`,
//! `State.{Name,EnteredTime,RetryCount}` and `StateMachine.{Id,Name}`. `State.EnteredTime` is
//! the time the current step started (for a retried Task, the time of this attempt), and the
//! `Id` fields are ARN-shaped names in the `local` region of account `000000000000`.
//!
//! # Errors at run time
//!
//! `States.Runtime` (a path selected nothing, a value had the wrong type) and
//! `States.DataLimitExceeded` (a payload over 262,144 bytes) end the execution: no Retrier or
//! Catcher handles them, as on Step Functions. Every other Task error goes through `Retry` and
//! then `Catch`, including `States.ResultPathMatchFailure` (a Task's `ResultPath` could not be
//! applied to its input), as on Step Functions.
//!
//! # Driving an execution
//!
//! The caller owns the loop and the clock, and persists the [`Cursor`] between steps. A step
//! cut short before its outcome is persisted runs again from the same [`Cursor`], so a Task may
//! run more than once: Task resources should be idempotent, as on Step Functions.
//!
//! ```text
//! let mut cursor = machine.start(input);
//! let outcome = loop {
//!     match machine.step(cursor, &context, &invoker).await {
//!         Step::Continue(next) => cursor = next,
//!         Step::Sleep { duration, then } => {
//!             sleep(duration).await; // or persist `then` with a wake-up time
//!             cursor = then;
//!         }
//!         finished => break finished, // Succeeded or Failed
//!     }
//! };
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use serde_json_path::JsonPath;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Largest payload, in bytes of compact JSON, that Step Functions passes between states.
const MAX_PAYLOAD_BYTES: usize = 262_144;
/// Longest retry delay Step Functions allows (`MaxDelaySeconds` is at most 366 days).
const LONGEST_RETRY_DELAY_SECONDS: f64 = 31_622_400.0;

const ALL_ERRORS: &str = "States.ALL";
const ANY_TASK_ERROR: &str = "States.TaskFailed";
const TIMEOUT_ERROR: &str = "States.Timeout";
const RUNTIME_ERROR: &str = "States.Runtime";
/// The error of a `ResultPath` that cannot be applied; Retry and Catch handle it.
const RESULT_PATH_ERROR: &str = "States.ResultPathMatchFailure";
const DATA_LIMIT_ERROR: &str = "States.DataLimitExceeded";
const NO_CHOICE_MATCHED_ERROR: &str = "States.NoChoiceMatched";

const SUPPORTED_STATE_TYPES: &str = "Task, Pass, Choice, Wait, Succeed, Fail";
const TOP_LEVEL_FIELDS: &[&str] = &[
    "Comment",
    "StartAt",
    "States",
    "Version",
    "TimeoutSeconds",
    "QueryLanguage",
];
const TASK_FIELDS: &[&str] = &[
    "Type",
    "Comment",
    "QueryLanguage",
    "Resource",
    "InputPath",
    "Parameters",
    "ResultSelector",
    "ResultPath",
    "OutputPath",
    "Retry",
    "Catch",
    "Next",
    "End",
];
const PASS_FIELDS: &[&str] = &[
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
const CHOICE_FIELDS: &[&str] = &[
    "Type",
    "Comment",
    "QueryLanguage",
    "InputPath",
    "OutputPath",
    "Choices",
    "Default",
];
const WAIT_FIELDS: &[&str] = &[
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
const SUCCEED_FIELDS: &[&str] = &[
    "Type",
    "Comment",
    "QueryLanguage",
    "InputPath",
    "OutputPath",
];
const FAIL_FIELDS: &[&str] = &[
    "Type",
    "Comment",
    "QueryLanguage",
    "Error",
    "Cause",
    "ErrorPath",
    "CausePath",
];
const RETRIER_FIELDS: &[&str] = &[
    "ErrorEquals",
    "IntervalSeconds",
    "MaxAttempts",
    "BackoffRate",
    "MaxDelaySeconds",
    "JitterStrategy",
    "Comment",
];
const CATCHER_FIELDS: &[&str] = &["ErrorEquals", "Next", "ResultPath", "Comment"];
const WAIT_DURATION_FIELDS: &[&str] = &["Seconds", "SecondsPath", "Timestamp", "TimestampPath"];

/// A parsed and validated state machine, ready to be stepped.
#[derive(Debug)]
pub struct StateMachine {
    start_at: String,
    states: BTreeMap<String, State>,
}

/// Why a definition cannot run. Each message names the state and the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The definition (after substitution) is not JSON.
    #[error("the definition is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The definition is JSON but not an object.
    #[error("the definition must be a JSON object")]
    NotAnObject,
    /// A `${Name}` in the definition has no substitution.
    #[error("the definition uses \"${{{name}}}\" but no substitution is given for {name:?}")]
    UnknownVariable {
        /// The variable's name, without `${` and `}`.
        name: String,
    },
    /// A top-level field is unknown, missing or malformed.
    #[error("top-level field \"{field}\" {reason}")]
    InvalidTopLevel {
        /// The top-level field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A state has a `Type` this interpreter does not run.
    #[error(
        "state \"{state}\": type \"{type_name}\" is not supported (supported: {SUPPORTED_STATE_TYPES})"
    )]
    UnsupportedStateType {
        /// The state's name.
        state: String,
        /// The rejected `Type`.
        type_name: String,
    },
    /// A state, Retrier, Catcher or choice rule has a field that is unknown or not supported.
    #[error(
        "state \"{state}\": field \"{field}\" is not supported in {within} (allowed: {allowed})"
    )]
    UnknownField {
        /// The state's name.
        state: String,
        /// The field, prefixed by where it sits (e.g. `Retry[0].Foo`).
        field: String,
        /// What holds the field, e.g. "a Task state" or "a Retrier".
        within: String,
        /// The fields allowed there.
        allowed: String,
    },
    /// A field holds a value that is missing, malformed or inconsistent.
    #[error("state \"{state}\": field \"{field}\" {reason}")]
    InvalidField {
        /// The state's name.
        state: String,
        /// The field, prefixed by where it sits (e.g. `Choices[1].Next`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A state is malformed as a whole.
    #[error("state \"{state}\": {reason}")]
    InvalidState {
        /// The state's name.
        state: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `Next`, `Default` or Catcher `Next` names a state that does not exist.
    #[error(
        "state \"{state}\": field \"{field}\" names \"{target}\", which is not a state of this machine"
    )]
    MissingTarget {
        /// The state holding the transition.
        state: String,
        /// The transition field, e.g. `Catch[0].Next`.
        field: String,
        /// The missing state's name.
        target: String,
    },
    /// A path value uses an intrinsic function such as `States.Format(...)`.
    #[error("state \"{state}\": field \"{field}\": intrinsic functions are not supported")]
    IntrinsicFunction {
        /// The state's name.
        state: String,
        /// The field holding the intrinsic function.
        field: String,
    },
    /// A state cannot be reached from `StartAt` (Step Functions rejects such definitions).
    #[error("state \"{state}\" cannot be reached from StartAt")]
    Unreachable {
        /// The unreachable state's name.
        state: String,
    },
}

/// Where an execution stands between two steps. The engine persists it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Name of the state to run next.
    pub state: String,
    /// That state's raw input.
    pub input: Value,
    /// Retries already used per Retrier of the current state (index = Retrier position);
    /// empty on entering a state. For a Wait state that ends the execution, a non-empty list
    /// means the wait is over and the next step succeeds with `input`.
    #[serde(default)]
    pub retries: Vec<u32>,
}

/// Facts about the running execution that feed the context object `$$`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionContext {
    /// The execution's name (`$$.Execution.Name`).
    pub execution_name: String,
    /// The execution's original input (`$$.Execution.Input`).
    pub execution_input: Value,
    /// When the execution started, RFC 3339 (`$$.Execution.StartTime`).
    pub start_time: String,
    /// The state machine's name (`$$.StateMachine.Name`).
    pub state_machine_name: String,
}

/// Runs the work behind Task states.
#[async_trait::async_trait]
pub trait TaskInvoker: Send + Sync {
    /// Runs the Task state's resource with its effective input.
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure>;
}

/// A named error with its cause, as a Task reports it and as Retry/Catch match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The error name, matched against `ErrorEquals`.
    pub error: String,
    /// A human-readable explanation.
    pub cause: String,
}

/// What happens after one step of an execution.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Run the next state now.
    Continue(Cursor),
    /// Wait `duration`, then step `then`: a Wait state, or a Retry backoff before re-running
    /// the same Task (with `then.retries` updated).
    Sleep {
        /// How long to wait before the next step.
        duration: Duration,
        /// The cursor to step once the time has passed.
        then: Cursor,
    },
    /// The execution succeeded with this output.
    Succeeded(Value),
    /// The execution failed.
    Failed {
        /// The error name.
        error: String,
        /// Its cause.
        cause: String,
    },
}

impl StateMachine {
    /// Parses `definition` after replacing every `${Name}` with `substitutions[Name]` (an
    /// unknown variable is a [`DefinitionError`] naming it), then validates it.
    pub fn from_json(
        definition: &str,
        substitutions: &BTreeMap<String, String>,
    ) -> Result<Self, DefinitionError> {
        let text = substitute(definition, substitutions)?;
        let root: Value = serde_json::from_str(&text).map_err(DefinitionError::InvalidJson)?;
        parse_machine(&root)
    }

    /// The name of the first state.
    pub fn start_at(&self) -> &str {
        &self.start_at
    }

    /// The first cursor of an execution.
    pub fn start(&self, input: Value) -> Cursor {
        Cursor {
            state: self.start_at.clone(),
            input,
            retries: Vec::new(),
        }
    }

    /// Runs exactly one state (for a Task: one attempt) and says what happens next. Bad data
    /// never panics: it becomes [`Step::Failed`] with `States.Runtime` or
    /// `States.DataLimitExceeded`, or a Retry/Catch outcome for Task errors.
    pub async fn step(
        &self,
        cursor: Cursor,
        context: &ExecutionContext,
        tasks: &dyn TaskInvoker,
    ) -> Step {
        self.step_at(cursor, context, tasks, OffsetDateTime::now_utc())
            .await
    }

    async fn step_at(
        &self,
        cursor: Cursor,
        execution: &ExecutionContext,
        tasks: &dyn TaskInvoker,
        now: OffsetDateTime,
    ) -> Step {
        let Some((state_name, state)) = self.states.get_key_value(&cursor.state) else {
            return Step::failed(TaskFailure {
                error: RUNTIME_ERROR.to_owned(),
                cause: format!("the state machine has no state named {:?}", cursor.state),
            });
        };
        let scope = Scope {
            execution,
            state_name,
            retry_count: cursor
                .retries
                .iter()
                .fold(0u32, |total, used| total.saturating_add(*used)),
            now,
            context: OnceLock::new(),
        };
        match &state.kind {
            StateKind::Task(task) => run_task(state, task, cursor, &scope, tasks).await,
            StateKind::Pass(pass) => match run_pass(state, pass, cursor.input, &scope) {
                Ok(output) => advance(&pass.transition, output),
                Err(failure) => Step::failed(failure),
            },
            StateKind::Choice(choice) => run_choice(state, choice, cursor.input, &scope),
            StateKind::Wait(wait) => run_wait(state, wait, cursor, &scope),
            StateKind::Succeed => {
                let output = state
                    .input_path
                    .select(cursor.input, &scope)
                    .and_then(|effective| state.output_path.select(effective, &scope))
                    .and_then(|output| ensure_within_limit(output, "the state's output", &scope));
                match output {
                    Ok(output) => Step::Succeeded(output),
                    Err(failure) => Step::failed(failure),
                }
            }
            StateKind::Fail(fail) => {
                let reported = fail.error.resolve(&cursor.input, &scope).and_then(|error| {
                    let cause = fail.cause.resolve(&cursor.input, &scope)?;
                    Ok(TaskFailure { error, cause })
                });
                match reported {
                    Ok(failure) | Err(failure) => Step::failed(failure),
                }
            }
        }
    }
}

impl Step {
    fn failed(failure: TaskFailure) -> Self {
        Step::Failed {
            error: failure.error,
            cause: failure.cause,
        }
    }
}

impl TaskFailure {
    fn runtime(scope: &Scope<'_>, message: impl std::fmt::Display) -> Self {
        TaskFailure {
            error: RUNTIME_ERROR.to_owned(),
            cause: format!("state {:?}: {message}", scope.state_name),
        }
    }
}

#[derive(Debug)]
struct State {
    input_path: DataPath,
    output_path: DataPath,
    kind: StateKind,
}

#[derive(Debug)]
enum StateKind {
    Task(TaskState),
    Pass(PassState),
    Choice(ChoiceState),
    Wait(WaitState),
    Succeed,
    Fail(FailState),
}

#[derive(Debug)]
enum Transition {
    Next(String),
    End,
}

#[derive(Debug)]
struct TaskState {
    resource: String,
    parameters: Option<Template>,
    result_selector: Option<Template>,
    result_path: ResultPath,
    retriers: Vec<Retrier>,
    catchers: Vec<Catcher>,
    transition: Transition,
}

#[derive(Debug)]
struct PassState {
    parameters: Option<Template>,
    result: Option<Value>,
    result_path: ResultPath,
    transition: Transition,
}

#[derive(Debug)]
struct ChoiceState {
    choices: Vec<ChoiceRule>,
    default: Option<String>,
}

#[derive(Debug)]
struct ChoiceRule {
    condition: Condition,
    next: String,
}

#[derive(Debug)]
struct WaitState {
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

#[derive(Debug)]
struct FailState {
    error: FailText,
    cause: FailText,
}

#[derive(Debug)]
enum FailText {
    Fixed(String),
    FromPath(ReadPath),
}

#[derive(Debug)]
struct Retrier {
    error_equals: ErrorNames,
    interval_seconds: u64,
    max_attempts: u32,
    backoff_rate: f64,
    max_delay_seconds: Option<u64>,
    full_jitter: bool,
}

#[derive(Debug)]
struct Catcher {
    error_equals: ErrorNames,
    next: String,
    result_path: ResultPath,
}

#[derive(Debug)]
struct ErrorNames(Vec<String>);

/// `InputPath` or `OutputPath`.
#[derive(Debug)]
enum DataPath {
    /// `$` (the default): the whole value.
    Whole,
    /// `null`: an empty object.
    Empty,
    Select(ReadPath),
}

/// A JSONPath that reads from the state's data or, with `$$`, from the context object.
#[derive(Debug)]
struct ReadPath {
    /// Where the path sits in the definition, for error messages.
    field: String,
    text: String,
    reads_context: bool,
    query: JsonPath,
    /// True when the path can select at most one value, which it then yields unwrapped.
    definite: bool,
}

/// `ResultPath`: where a result goes in the state's raw input.
#[derive(Debug)]
enum ResultPath {
    /// `null`: keep the input, drop the result.
    Discard,
    /// `$` (the default): the result replaces the input.
    Whole,
    At {
        text: String,
        steps: Vec<PathStep>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Field(String),
    Index(i64),
}

/// `Parameters` or `ResultSelector`.
#[derive(Debug)]
enum Template {
    Literal(Value),
    Path(ReadPath),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

#[derive(Debug)]
enum Condition {
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

#[derive(Debug)]
enum Operand {
    Literal(Value),
    Path(ReadPath),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ValueKind {
    String,
    Numeric,
    Boolean,
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Relation {
    Equals,
    LessThan,
    GreaterThan,
    LessThanEquals,
    GreaterThanEquals,
    Matches,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TypeTest {
    Null,
    Present,
    Numeric,
    String,
    Boolean,
    Timestamp,
}

const COMPARISONS: &[(&str, ValueKind, Relation)] = &[
    ("StringEquals", ValueKind::String, Relation::Equals),
    ("StringLessThan", ValueKind::String, Relation::LessThan),
    (
        "StringGreaterThan",
        ValueKind::String,
        Relation::GreaterThan,
    ),
    (
        "StringLessThanEquals",
        ValueKind::String,
        Relation::LessThanEquals,
    ),
    (
        "StringGreaterThanEquals",
        ValueKind::String,
        Relation::GreaterThanEquals,
    ),
    ("StringMatches", ValueKind::String, Relation::Matches),
    ("NumericEquals", ValueKind::Numeric, Relation::Equals),
    ("NumericLessThan", ValueKind::Numeric, Relation::LessThan),
    (
        "NumericGreaterThan",
        ValueKind::Numeric,
        Relation::GreaterThan,
    ),
    (
        "NumericLessThanEquals",
        ValueKind::Numeric,
        Relation::LessThanEquals,
    ),
    (
        "NumericGreaterThanEquals",
        ValueKind::Numeric,
        Relation::GreaterThanEquals,
    ),
    ("BooleanEquals", ValueKind::Boolean, Relation::Equals),
    ("TimestampEquals", ValueKind::Timestamp, Relation::Equals),
    (
        "TimestampLessThan",
        ValueKind::Timestamp,
        Relation::LessThan,
    ),
    (
        "TimestampGreaterThan",
        ValueKind::Timestamp,
        Relation::GreaterThan,
    ),
    (
        "TimestampLessThanEquals",
        ValueKind::Timestamp,
        Relation::LessThanEquals,
    ),
    (
        "TimestampGreaterThanEquals",
        ValueKind::Timestamp,
        Relation::GreaterThanEquals,
    ),
];

const TYPE_TESTS: &[(&str, TypeTest)] = &[
    ("IsNull", TypeTest::Null),
    ("IsPresent", TypeTest::Present),
    ("IsNumeric", TypeTest::Numeric),
    ("IsString", TypeTest::String),
    ("IsBoolean", TypeTest::Boolean),
    ("IsTimestamp", TypeTest::Timestamp),
];

fn substitute(
    definition: &str,
    substitutions: &BTreeMap<String, String>,
) -> Result<String, DefinitionError> {
    let mut substituted = String::with_capacity(definition.len());
    let mut rest = definition;
    while let Some(start) = rest.find("${") {
        substituted.push_str(&rest[..start]);
        let after_opening = &rest[start + 2..];
        let name = after_opening
            .find('}')
            .map(|end| &after_opening[..end])
            .filter(|name| is_variable_name(name));
        match name {
            Some(name) => {
                let value =
                    substitutions
                        .get(name)
                        .ok_or_else(|| DefinitionError::UnknownVariable {
                            name: name.to_owned(),
                        })?;
                substituted.push_str(value);
                rest = &after_opening[name.len() + 1..];
            }
            None => {
                substituted.push_str("${");
                rest = after_opening;
            }
        }
    }
    substituted.push_str(rest);
    Ok(substituted)
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_machine(root: &Value) -> Result<StateMachine, DefinitionError> {
    let Value::Object(root) = root else {
        return Err(DefinitionError::NotAnObject);
    };
    let top_level = |field: &str, reason: String| DefinitionError::InvalidTopLevel {
        field: field.to_owned(),
        reason,
    };
    if let Some(field) = root
        .keys()
        .find(|key| !TOP_LEVEL_FIELDS.contains(&key.as_str()))
    {
        return Err(top_level(
            field,
            format!(
                "is not supported (allowed: {})",
                TOP_LEVEL_FIELDS.join(", ")
            ),
        ));
    }
    if let Some(language) = root.get("QueryLanguage") {
        check_query_language(language).map_err(|reason| top_level("QueryLanguage", reason))?;
    }
    for field in ["Comment", "Version"] {
        if root.get(field).is_some_and(|value| !value.is_string()) {
            return Err(top_level(field, "must be a string".to_owned()));
        }
    }
    if root
        .get("TimeoutSeconds")
        .is_some_and(|value| value.as_u64().is_none_or(|seconds| seconds == 0))
    {
        return Err(top_level(
            "TimeoutSeconds",
            "must be a positive integer".to_owned(),
        ));
    }
    let start_at = match root.get("StartAt") {
        Some(Value::String(start_at)) => start_at.clone(),
        Some(_) => return Err(top_level("StartAt", "must be a string".to_owned())),
        None => return Err(top_level("StartAt", "is required".to_owned())),
    };
    let definitions = match root.get("States") {
        Some(Value::Object(states)) if !states.is_empty() => states,
        Some(_) => {
            return Err(top_level(
                "States",
                "must be a non-empty object of states".to_owned(),
            ));
        }
        None => return Err(top_level("States", "is required".to_owned())),
    };

    let mut states = BTreeMap::new();
    for (name, definition) in definitions {
        states.insert(name.clone(), parse_state(name, definition)?);
    }
    for (name, state) in &states {
        for (field, target) in state.targets() {
            if !states.contains_key(target) {
                return Err(DefinitionError::MissingTarget {
                    state: name.clone(),
                    field,
                    target: target.to_owned(),
                });
            }
        }
    }
    if !states.contains_key(&start_at) {
        return Err(top_level(
            "StartAt",
            format!("names {start_at:?}, which is not a state of this machine"),
        ));
    }
    check_reachability(&start_at, &states)?;
    Ok(StateMachine { start_at, states })
}

fn check_query_language(language: &Value) -> Result<(), String> {
    match language.as_str() {
        Some("JSONPath") => Ok(()),
        Some(other) => Err(format!(
            "is {other:?}, which is not supported (only JSONPath is)"
        )),
        None => Err("must be a string".to_owned()),
    }
}

fn check_reachability(
    start_at: &str,
    states: &BTreeMap<String, State>,
) -> Result<(), DefinitionError> {
    let mut reached = BTreeSet::from([start_at]);
    let mut pending = vec![start_at];
    while let Some(name) = pending.pop() {
        let Some(state) = states.get(name) else {
            continue;
        };
        for (_, target) in state.targets() {
            if reached.insert(target) {
                pending.push(target);
            }
        }
    }
    match states.keys().find(|name| !reached.contains(name.as_str())) {
        Some(name) => Err(DefinitionError::Unreachable {
            state: name.clone(),
        }),
        None => Ok(()),
    }
}

impl State {
    /// Every state this one can move to, with the field that names it.
    fn targets(&self) -> Vec<(String, &str)> {
        let mut targets = Vec::new();
        let transition = match &self.kind {
            StateKind::Task(task) => Some(&task.transition),
            StateKind::Pass(pass) => Some(&pass.transition),
            StateKind::Wait(wait) => Some(&wait.transition),
            StateKind::Choice(_) | StateKind::Succeed | StateKind::Fail(_) => None,
        };
        if let Some(Transition::Next(next)) = transition {
            targets.push(("Next".to_owned(), next.as_str()));
        }
        match &self.kind {
            StateKind::Task(task) => {
                for (index, catcher) in task.catchers.iter().enumerate() {
                    targets.push((format!("Catch[{index}].Next"), catcher.next.as_str()));
                }
            }
            StateKind::Choice(choice) => {
                for (index, rule) in choice.choices.iter().enumerate() {
                    targets.push((format!("Choices[{index}].Next"), rule.next.as_str()));
                }
                if let Some(default) = &choice.default {
                    targets.push(("Default".to_owned(), default.as_str()));
                }
            }
            StateKind::Pass(_) | StateKind::Wait(_) | StateKind::Succeed | StateKind::Fail(_) => {}
        }
        targets
    }
}

/// The fields of one JSON object inside a state (the state itself, a Retrier, a choice rule),
/// with the prefix that locates them in error messages.
struct Fields<'a> {
    state: &'a str,
    prefix: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(state: &'a str, prefix: String, map: &'a Map<String, Value>) -> Self {
        Fields { state, prefix, map }
    }

    fn label(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field)
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> DefinitionError {
        DefinitionError::InvalidField {
            state: self.state.to_owned(),
            field: self.label(field),
            reason: reason.into(),
        }
    }

    fn allow_only(&self, within: &str, allowed: &[&str]) -> Result<(), DefinitionError> {
        match self.map.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(field) => Err(DefinitionError::UnknownField {
                state: self.state.to_owned(),
                field: self.label(field),
                within: within.to_owned(),
                allowed: allowed.join(", "),
            }),
            None => Ok(()),
        }
    }

    fn optional_string(&self, field: &str) -> Result<Option<&'a str>, DefinitionError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(self.invalid(field, "must be a string")),
        }
    }

    fn required_string(&self, field: &str) -> Result<&'a str, DefinitionError> {
        self.optional_string(field)?
            .ok_or_else(|| self.invalid(field, "is required"))
    }

    fn read_path(&self, field: &str, text: &str) -> Result<ReadPath, DefinitionError> {
        parse_read_path(self.state, &self.label(field), text)
    }

    fn data_path(&self, field: &str) -> Result<DataPath, DefinitionError> {
        match self.get(field) {
            None => Ok(DataPath::Whole),
            Some(Value::Null) => Ok(DataPath::Empty),
            Some(Value::String(text)) if text == "$" => Ok(DataPath::Whole),
            Some(Value::String(text)) => Ok(DataPath::Select(self.read_path(field, text)?)),
            Some(_) => Err(self.invalid(field, "must be a path string or null")),
        }
    }

    fn result_path(&self, field: &str) -> Result<ResultPath, DefinitionError> {
        let text = match self.get(field) {
            None => return Ok(ResultPath::Whole),
            Some(Value::Null) => return Ok(ResultPath::Discard),
            Some(Value::String(text)) => text,
            Some(_) => return Err(self.invalid(field, "must be a path string or null")),
        };
        if text.starts_with("$$") {
            return Err(self.invalid(field, "cannot write into the context object"));
        }
        let steps = parse_reference_path(text).map_err(|reason| {
            self.invalid(
                field,
                format!(
                    "{text:?} is not a reference path ({reason}); only names and integer indexes are allowed"
                ),
            )
        })?;
        if steps
            .iter()
            .any(|step| matches!(step, PathStep::Index(index) if *index < 0))
        {
            return Err(self.invalid(
                field,
                format!("{text:?} uses a negative index, which a reference path cannot"),
            ));
        }
        if steps.is_empty() {
            Ok(ResultPath::Whole)
        } else {
            Ok(ResultPath::At {
                text: text.clone(),
                steps,
            })
        }
    }

    fn template(&self, field: &str) -> Result<Option<Template>, DefinitionError> {
        self.get(field)
            .map(|value| parse_template(self.state, &self.label(field), value))
            .transpose()
    }

    fn transition(&self) -> Result<Transition, DefinitionError> {
        let next = self.optional_string("Next")?;
        let end = match self.get("End") {
            None => false,
            Some(Value::Bool(end)) => *end,
            Some(_) => return Err(self.invalid("End", "must be a boolean")),
        };
        match (next, end) {
            (Some(_), true) => Err(DefinitionError::InvalidState {
                state: self.state.to_owned(),
                reason: "has both \"Next\" and \"End\": true; it needs exactly one of them"
                    .to_owned(),
            }),
            (Some(next), false) => Ok(Transition::Next(next.to_owned())),
            (None, true) => Ok(Transition::End),
            (None, false) => Err(DefinitionError::InvalidState {
                state: self.state.to_owned(),
                reason: "needs either \"Next\" or \"End\": true".to_owned(),
            }),
        }
    }

    fn non_negative_integer(&self, field: &str) -> Result<Option<u64>, DefinitionError> {
        self.get(field)
            .map(|value| {
                value
                    .as_u64()
                    .ok_or_else(|| self.invalid(field, "must be a non-negative integer"))
            })
            .transpose()
    }

    fn positive_integer(&self, field: &str) -> Result<Option<u64>, DefinitionError> {
        match self.non_negative_integer(field) {
            Ok(Some(0)) | Err(_) => Err(self.invalid(field, "must be a positive integer")),
            other => other,
        }
    }

    fn objects(&self, field: &str) -> Result<Vec<Fields<'a>>, DefinitionError> {
        let Some(value) = self.get(field) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(self.invalid(field, "must be an array of objects"));
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(map) => Ok(Fields::new(
                    self.state,
                    format!("{}{field}[{index}].", self.prefix),
                    map,
                )),
                _ => Err(self.invalid(&format!("{field}[{index}]"), "must be an object")),
            })
            .collect()
    }
}

fn parse_state(name: &str, definition: &Value) -> Result<State, DefinitionError> {
    let Value::Object(map) = definition else {
        return Err(DefinitionError::InvalidState {
            state: name.to_owned(),
            reason: "must be a JSON object".to_owned(),
        });
    };
    let fields = Fields::new(name, String::new(), map);
    let type_name = fields.required_string("Type")?;
    let allowed = match type_name {
        "Task" => TASK_FIELDS,
        "Pass" => PASS_FIELDS,
        "Choice" => CHOICE_FIELDS,
        "Wait" => WAIT_FIELDS,
        "Succeed" => SUCCEED_FIELDS,
        "Fail" => FAIL_FIELDS,
        other => {
            return Err(DefinitionError::UnsupportedStateType {
                state: name.to_owned(),
                type_name: other.to_owned(),
            });
        }
    };
    fields.allow_only(&format!("a {type_name} state"), allowed)?;
    fields.optional_string("Comment")?;
    if let Some(language) = fields.get("QueryLanguage") {
        check_query_language(language).map_err(|reason| fields.invalid("QueryLanguage", reason))?;
    }
    let kind = match type_name {
        "Task" => StateKind::Task(parse_task(&fields)?),
        "Pass" => StateKind::Pass(PassState {
            parameters: fields.template("Parameters")?,
            result: fields.get("Result").cloned(),
            result_path: fields.result_path("ResultPath")?,
            transition: fields.transition()?,
        }),
        "Choice" => StateKind::Choice(parse_choice(&fields)?),
        "Wait" => StateKind::Wait(parse_wait(&fields)?),
        "Succeed" => StateKind::Succeed,
        _ => StateKind::Fail(FailState {
            error: parse_fail_text(&fields, "Error", "ErrorPath")?,
            cause: parse_fail_text(&fields, "Cause", "CausePath")?,
        }),
    };
    Ok(State {
        input_path: fields.data_path("InputPath")?,
        output_path: fields.data_path("OutputPath")?,
        kind,
    })
}

fn parse_task(fields: &Fields<'_>) -> Result<TaskState, DefinitionError> {
    let resource = fields.required_string("Resource")?;
    let retriers = fields
        .objects("Retry")?
        .iter()
        .map(parse_retrier)
        .collect::<Result<Vec<_>, _>>()?;
    check_catch_all_is_last(fields, "Retry", retriers.iter().map(|r| &r.error_equals))?;
    let catchers = fields
        .objects("Catch")?
        .iter()
        .map(|catcher| {
            catcher.allow_only("a Catcher", CATCHER_FIELDS)?;
            catcher.optional_string("Comment")?;
            Ok(Catcher {
                error_equals: parse_error_names(catcher)?,
                next: catcher.required_string("Next")?.to_owned(),
                result_path: catcher.result_path("ResultPath")?,
            })
        })
        .collect::<Result<Vec<_>, DefinitionError>>()?;
    check_catch_all_is_last(fields, "Catch", catchers.iter().map(|c| &c.error_equals))?;
    Ok(TaskState {
        resource: resource.to_owned(),
        parameters: fields.template("Parameters")?,
        result_selector: fields.template("ResultSelector")?,
        result_path: fields.result_path("ResultPath")?,
        retriers,
        catchers,
        transition: fields.transition()?,
    })
}

fn parse_retrier(retrier: &Fields<'_>) -> Result<Retrier, DefinitionError> {
    retrier.allow_only("a Retrier", RETRIER_FIELDS)?;
    retrier.optional_string("Comment")?;
    let max_attempts = match retrier.non_negative_integer("MaxAttempts")? {
        None => 3,
        Some(attempts) => {
            u32::try_from(attempts).map_err(|_| retrier.invalid("MaxAttempts", "is too large"))?
        }
    };
    let backoff_rate = match retrier.get("BackoffRate") {
        None => 2.0,
        Some(value) => value
            .as_f64()
            .filter(|rate| *rate >= 1.0)
            .ok_or_else(|| retrier.invalid("BackoffRate", "must be a number of at least 1.0"))?,
    };
    let full_jitter = match retrier.optional_string("JitterStrategy")? {
        None | Some("NONE") => false,
        Some("FULL") => true,
        Some(_) => return Err(retrier.invalid("JitterStrategy", "must be \"FULL\" or \"NONE\"")),
    };
    Ok(Retrier {
        error_equals: parse_error_names(retrier)?,
        interval_seconds: retrier.positive_integer("IntervalSeconds")?.unwrap_or(1),
        max_attempts,
        backoff_rate,
        max_delay_seconds: retrier.positive_integer("MaxDelaySeconds")?,
        full_jitter,
    })
}

fn parse_error_names(fields: &Fields<'_>) -> Result<ErrorNames, DefinitionError> {
    let invalid = || fields.invalid("ErrorEquals", "must be a non-empty array of error names");
    let Some(Value::Array(items)) = fields.get("ErrorEquals") else {
        return Err(invalid());
    };
    let names = items
        .iter()
        .map(|item| match item {
            Value::String(name) if !name.is_empty() => Ok(name.clone()),
            _ => Err(invalid()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if names.is_empty() {
        return Err(invalid());
    }
    if names.len() > 1 && names.iter().any(|name| name == ALL_ERRORS) {
        return Err(fields.invalid(
            "ErrorEquals",
            format!("must list {ALL_ERRORS} alone when it uses it"),
        ));
    }
    Ok(ErrorNames(names))
}

fn check_catch_all_is_last<'n>(
    fields: &Fields<'_>,
    list: &str,
    error_names: impl ExactSizeIterator<Item = &'n ErrorNames>,
) -> Result<(), DefinitionError> {
    let count = error_names.len();
    for (index, names) in error_names.enumerate() {
        if index + 1 < count && names.0.iter().any(|name| name == ALL_ERRORS) {
            return Err(fields.invalid(
                &format!("{list}[{index}].ErrorEquals"),
                format!("uses {ALL_ERRORS}, so it must be the last entry of {list}"),
            ));
        }
    }
    Ok(())
}

fn parse_choice(fields: &Fields<'_>) -> Result<ChoiceState, DefinitionError> {
    let rules = fields.objects("Choices")?;
    if rules.is_empty() {
        return Err(fields.invalid("Choices", "must be a non-empty array of choice rules"));
    }
    let choices = rules
        .iter()
        .map(|rule| {
            let next = rule.required_string("Next")?.to_owned();
            let condition = parse_condition(rule, true)?;
            Ok(ChoiceRule { condition, next })
        })
        .collect::<Result<Vec<_>, DefinitionError>>()?;
    Ok(ChoiceState {
        choices,
        default: fields.optional_string("Default")?.map(str::to_owned),
    })
}

fn parse_condition(rule: &Fields<'_>, top_level: bool) -> Result<Condition, DefinitionError> {
    if !top_level && rule.get("Next").is_some() {
        return Err(rule.invalid("Next", "is only allowed on a top-level choice rule"));
    }
    rule.optional_string("Comment")?;
    let mut operators = Vec::new();
    for key in rule.map.keys() {
        let key = key.as_str();
        if matches!(key, "Variable" | "Next" | "Comment") {
            continue;
        }
        if !is_choice_operator(key) {
            return Err(DefinitionError::UnknownField {
                state: rule.state.to_owned(),
                field: rule.label(key),
                within: "a choice rule".to_owned(),
                allowed: "Variable, Next, Comment, And, Or, Not and one comparison operator"
                    .to_owned(),
            });
        }
        operators.push(key);
    }
    let operator = match operators.as_slice() {
        [operator] => *operator,
        [] => {
            return Err(DefinitionError::InvalidState {
                state: rule.state.to_owned(),
                reason: format!(
                    "choice rule {} has no comparison operator",
                    rule.prefix.trim_end_matches('.')
                ),
            });
        }
        several => {
            return Err(DefinitionError::InvalidState {
                state: rule.state.to_owned(),
                reason: format!(
                    "choice rule {} has more than one operator ({})",
                    rule.prefix.trim_end_matches('.'),
                    several.join(", ")
                ),
            });
        }
    };
    let operand = rule.get(operator).unwrap_or(&Value::Null);

    match operator {
        "And" | "Or" => {
            let nested = rule.objects(operator)?;
            if nested.is_empty() {
                return Err(rule.invalid(operator, "must be a non-empty array of choice rules"));
            }
            if rule.get("Variable").is_some() {
                return Err(rule.invalid("Variable", format!("cannot be combined with {operator}")));
            }
            let conditions = nested
                .iter()
                .map(|nested| parse_condition(nested, false))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if operator == "And" {
                Condition::And(conditions)
            } else {
                Condition::Or(conditions)
            });
        }
        "Not" => {
            let Value::Object(map) = operand else {
                return Err(rule.invalid("Not", "must be a choice rule object"));
            };
            if rule.get("Variable").is_some() {
                return Err(rule.invalid("Variable", "cannot be combined with Not"));
            }
            let nested = Fields::new(rule.state, format!("{}Not.", rule.prefix), map);
            return Ok(Condition::Not(Box::new(parse_condition(&nested, false)?)));
        }
        _ => {}
    }

    let variable = rule.required_string("Variable")?;
    let variable = rule.read_path("Variable", variable)?;
    if let Some((_, test)) = TYPE_TESTS.iter().find(|(name, _)| *name == operator) {
        let Value::Bool(expected) = operand else {
            return Err(rule.invalid(operator, "must be true or false"));
        };
        return Ok(Condition::TypeTest {
            variable,
            test: *test,
            expected: *expected,
        });
    }
    let (literal_name, operand_is_path) = match operator.strip_suffix("Path") {
        Some(base) => (base, true),
        None => (operator, false),
    };
    let Some((_, kind, relation)) = COMPARISONS
        .iter()
        .find(|(name, _, _)| *name == literal_name)
    else {
        return Err(rule.invalid(operator, "is not a comparison operator"));
    };
    let operand = if operand_is_path {
        let Value::String(text) = operand else {
            return Err(rule.invalid(operator, "must be a path string"));
        };
        Operand::Path(rule.read_path(operator, text)?)
    } else {
        check_literal_operand(*kind, operand).map_err(|reason| rule.invalid(operator, reason))?;
        Operand::Literal(operand.clone())
    };
    Ok(Condition::Compare {
        variable,
        kind: *kind,
        relation: *relation,
        operand,
    })
}

fn is_choice_operator(key: &str) -> bool {
    matches!(key, "And" | "Or" | "Not")
        || TYPE_TESTS.iter().any(|(name, _)| *name == key)
        || COMPARISONS.iter().any(|(name, _, _)| *name == key)
        || key.strip_suffix("Path").is_some_and(|base| {
            base != "StringMatches" && COMPARISONS.iter().any(|(name, _, _)| *name == base)
        })
}

fn check_literal_operand(kind: ValueKind, operand: &Value) -> Result<(), &'static str> {
    let valid = match kind {
        ValueKind::String => operand.is_string(),
        ValueKind::Numeric => operand.is_number(),
        ValueKind::Boolean => operand.is_boolean(),
        ValueKind::Timestamp => operand.as_str().and_then(parse_timestamp).is_some(),
    };
    if valid {
        Ok(())
    } else {
        Err(match kind {
            ValueKind::String => "must be a string",
            ValueKind::Numeric => "must be a number",
            ValueKind::Boolean => "must be true or false",
            ValueKind::Timestamp => "must be an RFC 3339 timestamp string",
        })
    }
}

fn parse_wait(fields: &Fields<'_>) -> Result<WaitState, DefinitionError> {
    let present: Vec<&str> = WAIT_DURATION_FIELDS
        .iter()
        .copied()
        .filter(|field| fields.get(field).is_some())
        .collect();
    let until = match present.as_slice() {
        ["Seconds"] => WaitUntil::Seconds(fields.non_negative_integer("Seconds")?.unwrap_or(0)),
        ["Timestamp"] => {
            let text = fields.required_string("Timestamp")?;
            WaitUntil::Timestamp(
                parse_timestamp(text)
                    .ok_or_else(|| fields.invalid("Timestamp", "must be an RFC 3339 timestamp"))?,
            )
        }
        [path_field @ ("SecondsPath" | "TimestampPath")] => {
            let path = fields.read_path(path_field, fields.required_string(path_field)?)?;
            if *path_field == "SecondsPath" {
                WaitUntil::SecondsPath(path)
            } else {
                WaitUntil::TimestampPath(path)
            }
        }
        _ => {
            return Err(DefinitionError::InvalidState {
                state: fields.state.to_owned(),
                reason: format!(
                    "a Wait state needs exactly one of {}",
                    WAIT_DURATION_FIELDS.join(", ")
                ),
            });
        }
    };
    Ok(WaitState {
        until,
        transition: fields.transition()?,
    })
}

fn parse_fail_text(
    fields: &Fields<'_>,
    fixed_field: &str,
    path_field: &str,
) -> Result<FailText, DefinitionError> {
    let fixed = fields.optional_string(fixed_field)?;
    let path = fields.optional_string(path_field)?;
    match (fixed, path) {
        (Some(_), Some(_)) => {
            Err(fields.invalid(path_field, format!("cannot be combined with {fixed_field}")))
        }
        (_, Some(path)) => Ok(FailText::FromPath(fields.read_path(path_field, path)?)),
        (fixed, None) => Ok(FailText::Fixed(fixed.unwrap_or_default().to_owned())),
    }
}

fn parse_template(state: &str, label: &str, value: &Value) -> Result<Template, DefinitionError> {
    match value {
        Value::Object(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (key, value) in map {
                let field = format!("{label}.{key}");
                match key.strip_suffix(".$") {
                    Some(name) => {
                        if map.contains_key(name) {
                            return Err(DefinitionError::InvalidField {
                                state: state.to_owned(),
                                field,
                                reason: format!("clashes with the plain key {name:?}"),
                            });
                        }
                        let Value::String(text) = value else {
                            return Err(DefinitionError::InvalidField {
                                state: state.to_owned(),
                                field,
                                reason: "must be a path string".to_owned(),
                            });
                        };
                        let path = parse_read_path(state, &field, text)?;
                        entries.push((name.to_owned(), Template::Path(path)));
                    }
                    None => entries.push((key.clone(), parse_template(state, &field, value)?)),
                }
            }
            Ok(Template::Object(entries))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| parse_template(state, &format!("{label}[{index}]"), item))
            .collect::<Result<Vec<_>, _>>()
            .map(Template::Array),
        literal => Ok(Template::Literal(literal.clone())),
    }
}

fn parse_read_path(state: &str, field: &str, text: &str) -> Result<ReadPath, DefinitionError> {
    let invalid = |reason: String| DefinitionError::InvalidField {
        state: state.to_owned(),
        field: field.to_owned(),
        reason,
    };
    if text.starts_with("States.") {
        return Err(DefinitionError::IntrinsicFunction {
            state: state.to_owned(),
            field: field.to_owned(),
        });
    }
    let (reads_context, query_text) = match text.strip_prefix("$$") {
        Some(rest) => (true, format!("${rest}")),
        None => (false, text.to_owned()),
    };
    if !query_text.starts_with('$') {
        return Err(invalid(format!(
            "{text:?} is not a path: a path starts with \"$\""
        )));
    }
    // Step Functions reads `$.my-field` as a member name; RFC 9535 only allows plain names in
    // dotted form, so a path of names and indexes is handed over in bracket notation.
    let canonical = match parse_reference_path(&query_text) {
        Ok(steps) => bracketed(&steps),
        Err(_) => query_text.clone(),
    };
    let query = JsonPath::parse(&canonical)
        .map_err(|error| invalid(format!("{text:?} is not a valid JSONPath: {error}")))?;
    Ok(ReadPath {
        field: field.to_owned(),
        text: text.to_owned(),
        reads_context,
        query,
        definite: parse_reference_path(&query_text).is_ok(),
    })
}

/// A path of names and indexes in RFC 9535 bracket notation: `$['a-b'][0]`.
fn bracketed(steps: &[PathStep]) -> String {
    let mut path = String::from("$");
    for step in steps {
        match step {
            PathStep::Field(name) => {
                path.push_str("['");
                for c in name.chars() {
                    match c {
                        '\\' => path.push_str("\\\\"),
                        '\'' => path.push_str("\\'"),
                        c if (c as u32) < 0x20 => path.push_str(&format!("\\u{:04x}", c as u32)),
                        c => path.push(c),
                    }
                }
                path.push_str("']");
            }
            PathStep::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Parses a Reference Path: `$` followed by `.name`, `['name']`, `["name"]` or `[index]` steps.
fn parse_reference_path(text: &str) -> Result<Vec<PathStep>, String> {
    let Some(mut rest) = text.strip_prefix('$') else {
        return Err("it does not start with \"$\"".to_owned());
    };
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = after_dot.find(['.', '[']).unwrap_or(after_dot.len());
            let name = &after_dot[..end];
            if name.is_empty() || !name.chars().all(is_plain_name_char) {
                return Err(format!("{name:?} is not a plain field name"));
            }
            steps.push(PathStep::Field(name.to_owned()));
            rest = &after_dot[end..];
        } else if let Some(after_bracket) = rest.strip_prefix('[') {
            let (step, after_step) = parse_bracket_step(after_bracket.trim_start())?;
            let Some(after_close) = after_step.trim_start().strip_prefix(']') else {
                return Err("a bracket is not closed".to_owned());
            };
            steps.push(step);
            rest = after_close;
        } else {
            return Err(format!("unexpected {rest:?}"));
        }
    }
    Ok(steps)
}

fn is_plain_name_char(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '.' | '[' | ']' | '*' | '\'' | '"' | '?' | '@' | '(' | ')' | ',' | ':' | '$'
        )
}

fn parse_bracket_step(text: &str) -> Result<(PathStep, &str), String> {
    if let Some(quote) = text.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let (name, rest) = parse_quoted_name(&text[1..], quote)?;
        return Ok((PathStep::Field(name), rest));
    }
    let digits_start = usize::from(text.starts_with('-'));
    let end = text[digits_start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |end| end + digits_start);
    if end == digits_start {
        return Err("only quoted names and integer indexes may stand in brackets".to_owned());
    }
    let index = text[..end]
        .parse::<i64>()
        .map_err(|_| format!("{:?} is not a usable index", &text[..end]))?;
    Ok((PathStep::Index(index), &text[end..]))
}

fn parse_quoted_name(text: &str, quote: char) -> Result<(String, &str), String> {
    let mut name = String::new();
    let mut chars = text.char_indices();
    while let Some((position, c)) = chars.next() {
        if c == quote {
            return Ok((name, &text[position + c.len_utf8()..]));
        }
        if c != '\\' {
            name.push(c);
            continue;
        }
        let unescaped = match chars.next().map(|(_, escaped)| escaped) {
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some(escaped @ ('/' | '\\' | '\'' | '"')) => escaped,
            Some('u') => {
                let first = read_hex4(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&first) {
                    let low = match (chars.next(), chars.next()) {
                        (Some((_, '\\')), Some((_, 'u'))) => read_hex4(&mut chars)?,
                        _ => return Err("a high surrogate lacks its low half".to_owned()),
                    };
                    0x10000 + ((first - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF)
                } else {
                    first
                };
                char::from_u32(code).ok_or("an escape names no character")?
            }
            _ => return Err("a quoted name has an unknown escape".to_owned()),
        };
        name.push(unescaped);
    }
    Err("a quoted name is not closed".to_owned())
}

fn read_hex4(chars: &mut std::str::CharIndices<'_>) -> Result<u32, String> {
    (0..4).try_fold(0u32, |code, _| {
        chars
            .next()
            .and_then(|(_, c)| c.to_digit(16))
            .map(|digit| code * 16 + digit)
            .ok_or_else(|| "a \\u escape needs four hex digits".to_owned())
    })
}

fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// What one step can see: the execution, the current state, and the clock.
struct Scope<'a> {
    execution: &'a ExecutionContext,
    state_name: &'a str,
    retry_count: u32,
    now: OffsetDateTime,
    // Built on first use: most steps never read `$$`, and it copies the execution input.
    context: OnceLock<Value>,
}

impl Scope<'_> {
    fn context_object(&self) -> &Value {
        self.context.get_or_init(|| {
            let execution = self.execution;
            let machine_arn = format!(
                "arn:aws:states:local:000000000000:stateMachine:{}",
                execution.state_machine_name
            );
            let execution_arn = format!(
                "arn:aws:states:local:000000000000:execution:{}:{}",
                execution.state_machine_name, execution.execution_name
            );
            json!({
                "Execution": {
                    "Id": execution_arn,
                    "Name": execution.execution_name,
                    "Input": execution.execution_input,
                    "StartTime": execution.start_time,
                },
                "State": {
                    "Name": self.state_name,
                    "EnteredTime": self.now.format(&Rfc3339).unwrap_or_default(),
                    "RetryCount": self.retry_count,
                },
                "StateMachine": {
                    "Id": machine_arn,
                    "Name": execution.state_machine_name,
                },
            })
        })
    }

    /// What `path` selects in `data` (or in the context object), if anything.
    fn lookup(&self, path: &ReadPath, data: &Value) -> Option<Value> {
        let root = if path.reads_context {
            self.context_object()
        } else {
            data
        };
        let nodes = path.query.query(root);
        if nodes.is_empty() {
            None
        } else if path.definite {
            nodes.first().cloned()
        } else {
            Some(Value::Array(nodes.all().into_iter().cloned().collect()))
        }
    }

    fn read(&self, path: &ReadPath, data: &Value) -> Result<Value, TaskFailure> {
        self.lookup(path, data).ok_or_else(|| {
            TaskFailure::runtime(
                self,
                format_args!(
                    "the path {:?} in {} selected nothing",
                    path.text, path.field
                ),
            )
        })
    }

    fn render(&self, template: &Template, data: &Value) -> Result<Value, TaskFailure> {
        match template {
            Template::Literal(value) => Ok(value.clone()),
            Template::Path(path) => self.read(path, data),
            Template::Object(entries) => entries
                .iter()
                .map(|(key, template)| Ok((key.clone(), self.render(template, data)?)))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            Template::Array(items) => items
                .iter()
                .map(|template| self.render(template, data))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        }
    }
}

impl DataPath {
    fn select(&self, data: Value, scope: &Scope<'_>) -> Result<Value, TaskFailure> {
        match self {
            DataPath::Whole => Ok(data),
            DataPath::Empty => Ok(Value::Object(Map::new())),
            DataPath::Select(path) => scope.read(path, &data),
        }
    }
}

impl ResultPath {
    /// Places `result` into `input` as this ResultPath says.
    fn place(&self, input: Value, result: Value, scope: &Scope<'_>) -> Result<Value, TaskFailure> {
        let (text, steps) = match self {
            ResultPath::Discard => return Ok(input),
            ResultPath::Whole => return Ok(result),
            ResultPath::At { text, steps } => (text, steps),
        };
        let mut output = input;
        write_at(&mut output, steps, result).map_err(|problem| TaskFailure {
            error: RESULT_PATH_ERROR.to_owned(),
            cause: format!(
                "state {:?}: the ResultPath {text:?} cannot be applied to the input: {problem}",
                scope.state_name
            ),
        })?;
        Ok(output)
    }
}

fn write_at(target: &mut Value, steps: &[PathStep], result: Value) -> Result<(), String> {
    let Some((last, parents)) = steps.split_last() else {
        *target = result;
        return Ok(());
    };
    let mut current = target;
    for step in parents {
        current = match step {
            PathStep::Field(name) => match current {
                Value::Object(map) => map
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new())),
                other => return Err(not_a_container(other, "an object", name)),
            },
            PathStep::Index(index) => array_slot(current, *index)?,
        };
    }
    match last {
        PathStep::Field(name) => match current {
            Value::Object(map) => {
                map.insert(name.clone(), result);
                Ok(())
            }
            other => Err(not_a_container(other, "an object", name)),
        },
        PathStep::Index(index) => {
            *array_slot(current, *index)? = result;
            Ok(())
        }
    }
}

fn array_slot(value: &mut Value, index: i64) -> Result<&mut Value, String> {
    match value {
        Value::Array(items) => {
            let length = items.len();
            usize::try_from(index)
                .ok()
                .and_then(|index| items.get_mut(index))
                .ok_or_else(|| format!("index {index} is outside an array of {length}"))
        }
        other => Err(not_a_container(other, "an array", &index.to_string())),
    }
}

fn not_a_container(found: &Value, wanted: &str, step: &str) -> String {
    format!(
        "{step:?} needs {wanted} to step into, but finds {}",
        describe(found)
    )
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn ensure_within_limit(value: Value, what: &str, scope: &Scope<'_>) -> Result<Value, TaskFailure> {
    let size = serialized_len(&value);
    if size > MAX_PAYLOAD_BYTES {
        Err(TaskFailure {
            error: DATA_LIMIT_ERROR.to_owned(),
            cause: format!(
                "state {:?}: {what} is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
                scope.state_name
            ),
        })
    } else {
        Ok(value)
    }
}

fn serialized_len(value: &Value) -> usize {
    struct ByteCounter(usize);
    impl std::io::Write for ByteCounter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = ByteCounter(0);
    // Writing a Value into a counter cannot fail: its keys are strings and it writes nowhere.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

fn advance(transition: &Transition, output: Value) -> Step {
    match transition {
        Transition::Next(next) => Step::Continue(Cursor {
            state: next.clone(),
            input: output,
            retries: Vec::new(),
        }),
        Transition::End => Step::Succeeded(output),
    }
}

async fn run_task(
    state: &State,
    task: &TaskState,
    cursor: Cursor,
    scope: &Scope<'_>,
    tasks: &dyn TaskInvoker,
) -> Step {
    let outcome = match task_input(state, task, &cursor.input, scope) {
        Ok(effective_input) => match tasks.invoke(&task.resource, effective_input).await {
            Ok(result) => task_output(state, task, cursor.input.clone(), result, scope),
            Err(failure) => Err(failure),
        },
        Err(failure) => Err(failure),
    };
    match outcome {
        Ok(output) => advance(&task.transition, output),
        Err(failure) => recover(task, cursor, failure, scope),
    }
}

fn task_input(
    state: &State,
    task: &TaskState,
    raw_input: &Value,
    scope: &Scope<'_>,
) -> Result<Value, TaskFailure> {
    let effective = state.input_path.select(raw_input.clone(), scope)?;
    let effective = match &task.parameters {
        Some(parameters) => scope.render(parameters, &effective)?,
        None => effective,
    };
    ensure_within_limit(effective, "the Task's input", scope)
}

fn task_output(
    state: &State,
    task: &TaskState,
    raw_input: Value,
    result: Value,
    scope: &Scope<'_>,
) -> Result<Value, TaskFailure> {
    let result = ensure_within_limit(result, "the Task's result", scope)?;
    let result = match &task.result_selector {
        Some(selector) => scope.render(selector, &result)?,
        None => result,
    };
    let output = task.result_path.place(raw_input, result, scope)?;
    let output = state.output_path.select(output, scope)?;
    ensure_within_limit(output, "the state's output", scope)
}

/// Retry, then Catch, then fail: what a Task error leads to.
fn recover(task: &TaskState, cursor: Cursor, failure: TaskFailure, scope: &Scope<'_>) -> Step {
    // As on Step Functions, these end the execution whatever Retry and Catch say.
    if failure.error == RUNTIME_ERROR || failure.error == DATA_LIMIT_ERROR {
        return Step::failed(failure);
    }
    let matching_retrier = task
        .retriers
        .iter()
        .enumerate()
        .find(|(_, retrier)| retrier.error_equals.matches(&failure.error));
    if let Some((position, retrier)) = matching_retrier {
        let used = cursor.retries.get(position).copied().unwrap_or(0);
        if used < retrier.max_attempts {
            let mut retries = cursor.retries;
            if retries.len() < task.retriers.len() {
                retries.resize(task.retriers.len(), 0);
            }
            if let Some(slot) = retries.get_mut(position) {
                *slot = used + 1;
            }
            return Step::Sleep {
                duration: retrier.delay_before_retry(used),
                then: Cursor {
                    state: cursor.state,
                    input: cursor.input,
                    retries,
                },
            };
        }
    }
    let Some(catcher) = task
        .catchers
        .iter()
        .find(|catcher| catcher.error_equals.matches(&failure.error))
    else {
        return Step::failed(failure);
    };
    let error_output = json!({ "Error": failure.error, "Cause": failure.cause });
    let output = catcher
        .result_path
        .place(cursor.input, error_output, scope)
        .and_then(|output| ensure_within_limit(output, "the state's output", scope));
    match output {
        Ok(output) => Step::Continue(Cursor {
            state: catcher.next.clone(),
            input: output,
            retries: Vec::new(),
        }),
        Err(failure) => Step::failed(failure),
    }
}

impl ErrorNames {
    fn matches(&self, error: &str) -> bool {
        self.0.iter().any(|name| {
            name == error
                || name == ALL_ERRORS
                || (name == ANY_TASK_ERROR && error != TIMEOUT_ERROR)
        })
    }
}

impl Retrier {
    /// The wait before retry number `retries_used + 1`.
    fn delay_before_retry(&self, retries_used: u32) -> Duration {
        let exponent = i32::try_from(retries_used).unwrap_or(i32::MAX);
        // u64 -> f64 may round for absurd intervals; the cap below makes that moot.
        let mut seconds = self.interval_seconds as f64 * self.backoff_rate.powi(exponent);
        if let Some(max_delay) = self.max_delay_seconds {
            seconds = seconds.min(max_delay as f64);
        }
        seconds = seconds.min(LONGEST_RETRY_DELAY_SECONDS);
        if self.full_jitter && seconds > 0.0 {
            seconds = rand::random_range(0.0..=seconds);
        }
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO)
    }
}

fn run_pass(
    state: &State,
    pass: &PassState,
    raw_input: Value,
    scope: &Scope<'_>,
) -> Result<Value, TaskFailure> {
    let effective = state.input_path.select(raw_input.clone(), scope)?;
    let effective = match &pass.parameters {
        Some(parameters) => scope.render(parameters, &effective)?,
        None => effective,
    };
    let result = pass.result.clone().unwrap_or(effective);
    let output = pass.result_path.place(raw_input, result, scope)?;
    let output = state.output_path.select(output, scope)?;
    ensure_within_limit(output, "the state's output", scope)
}

fn run_choice(state: &State, choice: &ChoiceState, raw_input: Value, scope: &Scope<'_>) -> Step {
    let chosen = state
        .input_path
        .select(raw_input, scope)
        .and_then(|effective| {
            let mut next = choice.default.as_deref();
            for rule in &choice.choices {
                if evaluate(&rule.condition, &effective, scope)? {
                    next = Some(&rule.next);
                    break;
                }
            }
            let Some(next) = next else {
                return Err(TaskFailure {
                    error: NO_CHOICE_MATCHED_ERROR.to_owned(),
                    cause: format!(
                        "state {:?}: no choice rule matched and there is no Default",
                        scope.state_name
                    ),
                });
            };
            let output = state.output_path.select(effective, scope)?;
            Ok((
                next,
                ensure_within_limit(output, "the state's output", scope)?,
            ))
        });
    match chosen {
        Ok((next, output)) => Step::Continue(Cursor {
            state: next.to_owned(),
            input: output,
            retries: Vec::new(),
        }),
        Err(failure) => Step::failed(failure),
    }
}

fn evaluate(condition: &Condition, input: &Value, scope: &Scope<'_>) -> Result<bool, TaskFailure> {
    match condition {
        Condition::And(conditions) => {
            for condition in conditions {
                if !evaluate(condition, input, scope)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Condition::Or(conditions) => {
            for condition in conditions {
                if evaluate(condition, input, scope)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Condition::Not(condition) => Ok(!evaluate(condition, input, scope)?),
        Condition::TypeTest {
            variable,
            test,
            expected,
        } => {
            let value = scope.lookup(variable, input);
            let holds = match (test, value) {
                (TypeTest::Present, value) => value.is_some(),
                (_, None) => return Err(missing_variable(variable, scope)),
                (TypeTest::Null, Some(value)) => value.is_null(),
                (TypeTest::Numeric, Some(value)) => value.is_number(),
                (TypeTest::String, Some(value)) => value.is_string(),
                (TypeTest::Boolean, Some(value)) => value.is_boolean(),
                (TypeTest::Timestamp, Some(value)) => {
                    value.as_str().and_then(parse_timestamp).is_some()
                }
            };
            Ok(holds == *expected)
        }
        Condition::Compare {
            variable,
            kind,
            relation,
            operand,
        } => {
            let value = scope
                .lookup(variable, input)
                .ok_or_else(|| missing_variable(variable, scope))?;
            let operand = match operand {
                Operand::Literal(literal) => literal.clone(),
                Operand::Path(path) => scope.read(path, input)?,
            };
            Ok(compare(*kind, *relation, &value, &operand))
        }
    }
}

fn missing_variable(variable: &ReadPath, scope: &Scope<'_>) -> TaskFailure {
    TaskFailure::runtime(
        scope,
        format_args!(
            "the choice rule's Variable {:?} ({}) selected nothing",
            variable.text, variable.field
        ),
    )
}

/// Whether `value` stands in `relation` to `operand`; values of the wrong kind never match.
fn compare(kind: ValueKind, relation: Relation, value: &Value, operand: &Value) -> bool {
    use std::cmp::Ordering;
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

fn compare_numbers(
    value: &serde_json::Number,
    operand: &serde_json::Number,
) -> Option<std::cmp::Ordering> {
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

fn run_wait(state: &State, wait: &WaitState, cursor: Cursor, scope: &Scope<'_>) -> Step {
    // The second step of a Wait that ends the execution: the sleep is over.
    if matches!(wait.transition, Transition::End) && !cursor.retries.is_empty() {
        return Step::Succeeded(cursor.input);
    }
    let waited = state
        .input_path
        .select(cursor.input, scope)
        .and_then(|effective| {
            let duration = wait_duration(&wait.until, &effective, scope)?;
            let output = state.output_path.select(effective, scope)?;
            Ok((
                duration,
                ensure_within_limit(output, "the state's output", scope)?,
            ))
        });
    let (duration, output) = match waited {
        Ok(waited) => waited,
        Err(failure) => return Step::failed(failure),
    };
    let then = match &wait.transition {
        Transition::Next(next) => Cursor {
            state: next.clone(),
            input: output,
            retries: Vec::new(),
        },
        Transition::End => Cursor {
            state: cursor.state,
            input: output,
            retries: vec![1],
        },
    };
    Step::Sleep { duration, then }
}

fn wait_duration(
    until: &WaitUntil,
    input: &Value,
    scope: &Scope<'_>,
) -> Result<Duration, TaskFailure> {
    let until_timestamp = |timestamp: OffsetDateTime| {
        Duration::try_from(timestamp - scope.now).unwrap_or(Duration::ZERO)
    };
    match until {
        WaitUntil::Seconds(seconds) => Ok(Duration::from_secs(*seconds)),
        WaitUntil::Timestamp(timestamp) => Ok(until_timestamp(*timestamp)),
        WaitUntil::SecondsPath(path) => {
            let value = scope.read(path, input)?;
            value.as_u64().map(Duration::from_secs).ok_or_else(|| {
                TaskFailure::runtime(
                    scope,
                    format_args!(
                        "SecondsPath {:?} selected {value}, which is not a non-negative integer",
                        path.text
                    ),
                )
            })
        }
        WaitUntil::TimestampPath(path) => {
            let value = scope.read(path, input)?;
            value
                .as_str()
                .and_then(parse_timestamp)
                .map(until_timestamp)
                .ok_or_else(|| {
                    TaskFailure::runtime(
                        scope,
                        format_args!(
                            "TimestampPath {:?} selected {value}, which is not an RFC 3339 timestamp",
                            path.text
                        ),
                    )
                })
        }
    }
}

impl FailText {
    fn resolve(&self, input: &Value, scope: &Scope<'_>) -> Result<String, TaskFailure> {
        match self {
            FailText::Fixed(text) => Ok(text.clone()),
            FailText::FromPath(path) => match scope.read(path, input)? {
                Value::String(text) => Ok(text),
                other => Err(TaskFailure::runtime(
                    scope,
                    format_args!(
                        "{} {:?} selected {}, not a string",
                        path.field,
                        path.text,
                        describe(&other)
                    ),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Responder = dyn Fn(&str, &Value, usize) -> Result<Value, TaskFailure> + Send + Sync;

    /// Records every invocation and answers with `respond(resource, input, call_index)`.
    struct FakeTasks {
        calls: Mutex<Vec<(String, Value)>>,
        respond: Box<Responder>,
    }

    impl FakeTasks {
        fn new(
            respond: impl Fn(&str, &Value, usize) -> Result<Value, TaskFailure> + Send + Sync + 'static,
        ) -> Self {
            FakeTasks {
                calls: Mutex::new(Vec::new()),
                respond: Box::new(respond),
            }
        }

        fn returning(result: Value) -> Self {
            Self::new(move |_, _, _| Ok(result.clone()))
        }

        fn failing(error: &str) -> Self {
            let error = error.to_owned();
            Self::new(move |_, _, _| Err(failure(&error)))
        }

        fn calls(&self) -> Vec<(String, Value)> {
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

    fn failure(error: &str) -> TaskFailure {
        TaskFailure {
            error: error.to_owned(),
            cause: format!("{error} happened"),
        }
    }

    fn machine(definition: Value) -> StateMachine {
        StateMachine::from_json(&definition.to_string(), &BTreeMap::new())
            .expect("the definition is valid")
    }

    fn rejection(definition: Value) -> DefinitionError {
        StateMachine::from_json(&definition.to_string(), &BTreeMap::new())
            .expect_err("the definition is rejected")
    }

    /// A machine whose only real state is `state`, named "S", with a Succeed state "Done".
    fn single(state: Value) -> StateMachine {
        machine(json!({
            "StartAt": "S",
            "States": { "S": state, "Done": { "Type": "Succeed" } }
        }))
    }

    fn single_rejection(state: Value) -> String {
        rejection(json!({
            "StartAt": "S",
            "States": { "S": state, "Done": { "Type": "Succeed" } }
        }))
        .to_string()
    }

    fn execution() -> ExecutionContext {
        ExecutionContext {
            execution_name: "exec-1".to_owned(),
            execution_input: json!({ "batchId": "b-1" }),
            start_time: "2024-05-01T10:00:00Z".to_owned(),
            state_machine_name: "chunk-pipeline".to_owned(),
        }
    }

    fn at(state: &str, input: Value) -> Cursor {
        Cursor {
            state: state.to_owned(),
            input,
            retries: Vec::new(),
        }
    }

    fn fixed_now() -> OffsetDateTime {
        parse_timestamp("2024-05-01T12:00:00Z").unwrap()
    }

    async fn step(machine: &StateMachine, cursor: Cursor, tasks: &FakeTasks) -> Step {
        machine
            .step_at(cursor, &execution(), tasks, fixed_now())
            .await
    }

    async fn step_from_start(machine: &StateMachine, input: Value, tasks: &FakeTasks) -> Step {
        step(machine, machine.start(input), tasks).await
    }

    /// Follows Continue and Sleep until the execution ends; returns the end and the sleeps.
    async fn run_to_end(
        machine: &StateMachine,
        input: Value,
        tasks: &FakeTasks,
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

    fn continue_to(step: Step) -> Cursor {
        match step {
            Step::Continue(cursor) => cursor,
            other => panic!("expected Continue, got {other:?}"),
        }
    }

    fn failed_with(step: &Step) -> &str {
        match step {
            Step::Failed { error, .. } => error,
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    fn runtime_cause(step: &Step) -> &str {
        match step {
            Step::Failed { error, cause } if error == RUNTIME_ERROR => cause,
            other => panic!("expected a States.Runtime failure, got {other:?}"),
        }
    }

    fn task(extra: Value) -> Value {
        let mut state = json!({ "Type": "Task", "Resource": "arn:task", "Next": "Done" });
        if let (Value::Object(state), Value::Object(extra)) = (&mut state, extra) {
            state.extend(extra);
        }
        state
    }

    #[test]
    fn an_unsupported_state_type_is_rejected_naming_the_state_and_type() {
        let message = single_rejection(json!({ "Type": "Map", "Next": "Done" }));
        assert_eq!(
            message,
            "state \"S\": type \"Map\" is not supported (supported: Task, Pass, Choice, Wait, Succeed, Fail)"
        );
        let message = single_rejection(json!({ "Type": "Parallel", "Next": "Done" }));
        assert!(
            message.contains("\"Parallel\" is not supported"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_state_field_is_rejected_naming_the_state_and_field() {
        let message = single_rejection(json!({ "Type": "Pass", "Nxet": "Done", "End": true }));
        assert!(
            message.starts_with("state \"S\": field \"Nxet\" is not supported in a Pass state"),
            "{message}"
        );
    }

    #[test]
    fn task_timeouts_heartbeats_credentials_and_jsonata_fields_are_rejected() {
        for field in [
            "TimeoutSeconds",
            "HeartbeatSeconds",
            "Credentials",
            "Assign",
            "Arguments",
            "Output",
        ] {
            let mut state = task(json!({}));
            state[field] = json!(10);
            let message = single_rejection(state);
            assert!(
                message.contains(&format!(
                    "field \"{field}\" is not supported in a Task state"
                )),
                "{message}"
            );
        }
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
    fn an_unknown_top_level_field_is_rejected() {
        let message = rejection(json!({
            "StartAt": "S", "States": { "S": { "Type": "Succeed" } }, "Startat": "S"
        }))
        .to_string();
        assert!(
            message.starts_with("top-level field \"Startat\" is not supported"),
            "{message}"
        );
    }

    #[test]
    fn jsonata_is_rejected_at_the_top_level_and_in_a_state() {
        let message = rejection(json!({
            "QueryLanguage": "JSONata",
            "StartAt": "S", "States": { "S": { "Type": "Succeed" } }
        }))
        .to_string();
        assert!(message.contains("\"QueryLanguage\""), "{message}");
        assert!(message.contains("JSONata"), "{message}");
        let message =
            single_rejection(json!({ "Type": "Pass", "QueryLanguage": "JSONata", "Next": "Done" }));
        assert!(
            message.starts_with("state \"S\": field \"QueryLanguage\""),
            "{message}"
        );
    }

    #[test]
    fn version_timeout_seconds_and_jsonpath_are_accepted_at_the_top_level() {
        let machine = machine(json!({
            "Comment": "c", "Version": "1.0", "TimeoutSeconds": 300, "QueryLanguage": "JSONPath",
            "StartAt": "S", "States": { "S": { "Type": "Succeed" } }
        }));
        assert_eq!(machine.start_at(), "S");
    }

    #[test]
    fn a_next_naming_no_state_is_rejected() {
        let error = rejection(json!({
            "StartAt": "S", "States": { "S": { "Type": "Pass", "Next": "Nowhere" } }
        }));
        assert!(
            matches!(&error, DefinitionError::MissingTarget { state, field, target }
                if state == "S" && field == "Next" && target == "Nowhere"),
            "{error}"
        );
    }

    #[test]
    fn a_catch_next_or_choice_default_naming_no_state_is_rejected() {
        let message = single_rejection(task(json!({
            "Catch": [{ "ErrorEquals": ["States.ALL"], "Next": "Nowhere" }]
        })));
        assert!(
            message.contains("field \"Catch[0].Next\" names \"Nowhere\""),
            "{message}"
        );
        let message = single_rejection(json!({
            "Type": "Choice",
            "Choices": [{ "Variable": "$.a", "IsPresent": true, "Next": "Done" }],
            "Default": "Nowhere"
        }));
        assert!(
            message.contains("field \"Default\" names \"Nowhere\""),
            "{message}"
        );
    }

    #[test]
    fn a_start_at_naming_no_state_is_rejected() {
        let message = rejection(json!({
            "StartAt": "Missing", "States": { "S": { "Type": "Succeed" } }
        }))
        .to_string();
        assert!(
            message.starts_with("top-level field \"StartAt\" names \"Missing\""),
            "{message}"
        );
    }

    #[test]
    fn an_unreachable_state_is_rejected() {
        let error = rejection(json!({
            "StartAt": "S",
            "States": { "S": { "Type": "Succeed" }, "Orphan": { "Type": "Succeed" } }
        }));
        assert!(
            matches!(&error, DefinitionError::Unreachable { state } if state == "Orphan"),
            "{error}"
        );
    }

    #[test]
    fn a_state_needs_exactly_one_of_next_and_end() {
        let message = single_rejection(json!({ "Type": "Pass", "Next": "Done", "End": true }));
        assert!(message.contains("needs exactly one"), "{message}");
        let message =
            rejection(json!({ "StartAt": "S", "States": { "S": { "Type": "Pass" } } })).to_string();
        assert!(
            message.contains("needs either \"Next\" or \"End\": true"),
            "{message}"
        );
    }

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

    #[test]
    fn succeed_and_fail_states_cannot_have_next() {
        let message = single_rejection(json!({ "Type": "Succeed", "Next": "Done" }));
        assert!(
            message.contains("field \"Next\" is not supported in a Succeed state"),
            "{message}"
        );
        let message = single_rejection(json!({ "Type": "Fail", "Next": "Done" }));
        assert!(
            message.contains("field \"Next\" is not supported in a Fail state"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_substitution_variable_is_rejected_by_name() {
        let definition =
            r#"{"StartAt":"S","States":{"S":{"Type":"Task","Resource":"${Missing}","End":true}}}"#;
        let error = StateMachine::from_json(definition, &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&error, DefinitionError::UnknownVariable { name } if name == "Missing"),
            "{error}"
        );
        assert!(error.to_string().contains("${Missing}"), "{error}");
    }

    #[tokio::test]
    async fn substitutions_replace_every_variable() {
        let definition = r#"{"StartAt":"A","States":{
            "A":{"Type":"Task","Resource":"${Fn}","Next":"B"},
            "B":{"Type":"Task","Resource":"${Fn}:${Alias}","End":true}}}"#;
        let substitutions = BTreeMap::from([
            ("Fn".to_owned(), "arn:fn".to_owned()),
            ("Alias".to_owned(), "live".to_owned()),
        ]);
        let machine = StateMachine::from_json(definition, &substitutions).unwrap();
        let tasks = FakeTasks::returning(json!({}));
        let (end, _) = run_to_end(&machine, json!({}), &tasks).await;
        assert_eq!(end, Step::Succeeded(json!({})));
        let resources: Vec<String> = tasks.calls().into_iter().map(|(r, _)| r).collect();
        assert_eq!(resources, ["arn:fn", "arn:fn:live"]);
    }

    #[test]
    fn states_all_must_stand_alone_in_error_equals() {
        let message = single_rejection(task(json!({
            "Retry": [{ "ErrorEquals": ["States.ALL", "Other"] }]
        })));
        assert!(
            message.contains("field \"Retry[0].ErrorEquals\""),
            "{message}"
        );
        assert!(message.contains("States.ALL alone"), "{message}");
    }

    #[test]
    fn states_all_must_be_in_the_last_retrier_and_catcher() {
        let message = single_rejection(task(json!({
            "Retry": [{ "ErrorEquals": ["States.ALL"] }, { "ErrorEquals": ["Other"] }]
        })));
        assert!(
            message.contains("\"Retry[0].ErrorEquals\" uses States.ALL"),
            "{message}"
        );
        let message = single_rejection(task(json!({
            "Catch": [
                { "ErrorEquals": ["States.ALL"], "Next": "Done" },
                { "ErrorEquals": ["Other"], "Next": "Done" }
            ]
        })));
        assert!(
            message.contains("\"Catch[0].ErrorEquals\" uses States.ALL"),
            "{message}"
        );
    }

    #[test]
    fn an_intrinsic_function_is_rejected() {
        let error = rejection(json!({
            "StartAt": "S",
            "States": { "S": task(json!({ "Parameters": { "greeting.$": "States.Format('hi {}', $.name)" } })), "Done": { "Type": "Succeed" } }
        }));
        assert!(
            matches!(&error, DefinitionError::IntrinsicFunction { state, field }
                if state == "S" && field == "Parameters.greeting.$"),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains("intrinsic functions are not supported"));
    }

    #[test]
    fn malformed_paths_are_rejected() {
        let message = single_rejection(task(json!({ "InputPath": "$.a[" })));
        assert!(message.contains("field \"InputPath\""), "{message}");
        assert!(message.contains("not a valid JSONPath"), "{message}");
        let message = single_rejection(task(json!({ "ResultPath": "$.items[*]" })));
        assert!(message.contains("field \"ResultPath\""), "{message}");
        assert!(message.contains("not a reference path"), "{message}");
        let message = single_rejection(task(json!({ "ResultPath": "$$.State" })));
        assert!(message.contains("context object"), "{message}");
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

    #[test]
    fn malformed_retriers_and_waits_are_rejected() {
        let message = single_rejection(task(
            json!({ "Retry": [{ "ErrorEquals": ["E"], "BackoffRate": 0.5 }] }),
        ));
        assert!(message.contains("\"Retry[0].BackoffRate\""), "{message}");
        let message = single_rejection(task(json!({ "Retry": [{ "ErrorEquals": [] }] })));
        assert!(message.contains("\"Retry[0].ErrorEquals\""), "{message}");
        let message = single_rejection(
            json!({ "Type": "Wait", "Seconds": 1, "Timestamp": "2024-01-01T00:00:00Z", "Next": "Done" }),
        );
        assert!(message.contains("exactly one of Seconds"), "{message}");
        let message = single_rejection(json!({ "Type": "Wait", "Seconds": -1, "Next": "Done" }));
        assert!(
            message.contains("\"Seconds\" must be a non-negative integer"),
            "{message}"
        );
    }

    #[test]
    fn a_definition_that_is_not_json_is_rejected() {
        let error = StateMachine::from_json("{", &BTreeMap::new()).unwrap_err();
        assert!(matches!(error, DefinitionError::InvalidJson(_)), "{error}");
    }

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
    async fn input_path_selects_the_effective_input() {
        let machine = single(json!({ "Type": "Pass", "InputPath": "$.inner", "Next": "Done" }));
        let tasks = FakeTasks::returning(json!(null));
        let step =
            step_from_start(&machine, json!({ "inner": { "b": 2 }, "other": 3 }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!({ "b": 2 }))));
    }

    #[tokio::test]
    async fn a_null_input_path_or_output_path_gives_an_empty_object() {
        let tasks = FakeTasks::returning(json!(null));
        let machine = single(
            json!({ "Type": "Pass", "InputPath": null, "ResultPath": "$.kept", "Next": "Done" }),
        );
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(
            step,
            Step::Continue(at("Done", json!({ "a": 1, "kept": {} })))
        );
        let machine = single(json!({ "Type": "Pass", "OutputPath": null, "Next": "Done" }));
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!({}))));
    }

    #[tokio::test]
    async fn output_path_selects_the_output() {
        let machine = single(
            json!({ "Type": "Pass", "Result": 7, "ResultPath": "$.r", "OutputPath": "$.r", "Next": "Done" }),
        );
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", json!(7))));
    }

    #[tokio::test]
    async fn parameters_take_paths_from_keys_ending_in_dollar_at_any_depth() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "fixed": "text",
                "picked.$": "$.a",
                "nested": { "deep.$": "$.b.c", "list": [1, { "item.$": "$.a" }] }
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step =
            step_from_start(&machine, json!({ "a": "A", "b": { "c": [1, 2] } }), &tasks).await;
        assert_eq!(
            continue_to(step).input,
            json!({
                "fixed": "text",
                "picked": "A",
                "nested": { "deep": [1, 2], "list": [1, { "item": "A" }] }
            })
        );
    }

    #[tokio::test]
    async fn parameters_read_the_context_object() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "execution.$": "$$.Execution.Name",
                "executionId.$": "$$.Execution.Id",
                "original.$": "$$.Execution.Input.batchId",
                "started.$": "$$.Execution.StartTime",
                "state.$": "$$.State.Name",
                "entered.$": "$$.State.EnteredTime",
                "retries.$": "$$.State.RetryCount",
                "machine.$": "$$.StateMachine.Name"
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(
            continue_to(step).input,
            json!({
                "execution": "exec-1",
                "executionId": "arn:aws:states:local:000000000000:execution:chunk-pipeline:exec-1",
                "original": "b-1",
                "started": "2024-05-01T10:00:00Z",
                "state": "S",
                "entered": "2024-05-01T12:00:00Z",
                "retries": 0,
                "machine": "chunk-pipeline"
            })
        );
    }

    #[tokio::test]
    async fn a_single_match_yields_the_value_and_a_wildcard_yields_an_array() {
        let machine = single(json!({
            "Type": "Pass",
            "Parameters": {
                "one.$": "$.items[0].id",
                "quoted.$": "$['odd-name']",
                "all.$": "$.items[*].id",
                "filtered.$": "$.items[?@.id > 1].id",
                "lonely.$": "$.lonely[*]"
            },
            "Next": "Done"
        }));
        let tasks = FakeTasks::returning(json!(null));
        let input =
            json!({ "items": [{ "id": 1 }, { "id": 2 }], "odd-name": true, "lonely": ["x"] });
        let step = step_from_start(&machine, input, &tasks).await;
        assert_eq!(
            continue_to(step).input,
            json!({ "one": 1, "quoted": true, "all": [1, 2], "filtered": [2], "lonely": ["x"] })
        );
    }

    #[tokio::test]
    async fn a_path_that_selects_nothing_fails_with_states_runtime() {
        let machine = single(task(json!({ "Parameters": { "id.$": "$.missing" } })));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        let cause = runtime_cause(&step);
        assert!(cause.contains("\"$.missing\""), "{cause}");
        assert!(cause.contains("Parameters.id.$"), "{cause}");
        assert!(tasks.calls().is_empty());
    }

    #[tokio::test]
    async fn a_task_processes_its_paths_in_the_order_asl_defines() {
        let machine = single(task(json!({
            "InputPath": "$.request",
            "Parameters": { "id.$": "$.id", "fixed": 1 },
            "ResultSelector": { "status.$": "$.body.status" },
            "ResultPath": "$.response",
            "OutputPath": "$.response"
        })));
        let tasks = FakeTasks::returning(json!({ "body": { "status": "ok", "noise": 1 } }));
        let input = json!({ "request": { "id": 42, "extra": true }, "other": 0 });
        let step = step_from_start(&machine, input, &tasks).await;
        assert_eq!(
            tasks.calls(),
            [("arn:task".to_owned(), json!({ "id": 42, "fixed": 1 }))]
        );
        assert_eq!(step, Step::Continue(at("Done", json!({ "status": "ok" }))));
    }

    #[tokio::test]
    async fn result_selector_shapes_the_task_result() {
        let machine = single(task(json!({
            "ResultSelector": { "first.$": "$.rows[0]", "count.$": "$.count", "source": "db" }
        })));
        let tasks =
            FakeTasks::returning(json!({ "rows": ["r1", "r2"], "count": 2, "noise": true }));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(
            continue_to(step).input,
            json!({ "first": "r1", "count": 2, "source": "db" })
        );
    }

    #[tokio::test]
    async fn result_path_defaults_to_replacing_the_input() {
        let machine = single(task(json!({})));
        let tasks = FakeTasks::returning(json!({ "result": 1 }));
        let step = step_from_start(&machine, json!({ "input": 1 }), &tasks).await;
        assert_eq!(continue_to(step).input, json!({ "result": 1 }));
    }

    #[tokio::test]
    async fn a_null_result_path_discards_the_result_and_keeps_the_input() {
        let machine = single(task(json!({ "ResultPath": null })));
        let tasks = FakeTasks::returning(json!({ "result": 1 }));
        let step = step_from_start(&machine, json!({ "input": 1 }), &tasks).await;
        assert_eq!(continue_to(step).input, json!({ "input": 1 }));
    }

    #[tokio::test]
    async fn result_path_creates_missing_objects_along_the_way() {
        let machine = single(task(json!({ "ResultPath": "$.a.b['c d'].e" })));
        let tasks = FakeTasks::returning(json!(5));
        let step = step_from_start(&machine, json!({ "a": { "keep": true } }), &tasks).await;
        assert_eq!(
            continue_to(step).input,
            json!({ "a": { "keep": true, "b": { "c d": { "e": 5 } } } })
        );
    }

    #[tokio::test]
    async fn result_path_can_replace_an_existing_array_element() {
        let machine = single(task(json!({ "ResultPath": "$.list[1].value" })));
        let tasks = FakeTasks::returning(json!("new"));
        let step = step_from_start(
            &machine,
            json!({ "list": [{}, { "value": "old" }] }),
            &tasks,
        )
        .await;
        assert_eq!(
            continue_to(step).input,
            json!({ "list": [{}, { "value": "new" }] })
        );
    }

    #[tokio::test]
    async fn a_result_path_that_clashes_with_the_input_fails_with_result_path_match_failure() {
        let tasks = FakeTasks::returning(json!(1));
        let machine = single(task(json!({ "ResultPath": "$.a.b" })));
        let step = step_from_start(&machine, json!({ "a": "text" }), &tasks).await;
        assert_eq!(failed_with(&step), "States.ResultPathMatchFailure");
        assert!(format!("{step:?}").contains("finds a string"), "{step:?}");
        let machine = single(task(json!({ "ResultPath": "$.list[3]" })));
        let step = step_from_start(&machine, json!({ "list": [] }), &tasks).await;
        assert_eq!(failed_with(&step), "States.ResultPathMatchFailure");
        assert!(format!("{step:?}").contains("outside an array"), "{step:?}");
    }

    #[tokio::test]
    async fn a_result_path_match_failure_is_caught_as_on_step_functions() {
        let machine = machine(json!({
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task", "Resource": "arn:t", "ResultPath": "$.a.b",
                    "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Done" }],
                    "Next": "Done"
                },
                "Done": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::returning(json!(1));
        let step = step_from_start(&machine, json!({ "a": "text" }), &tasks).await;
        let caught = continue_to(step);
        assert_eq!(caught.state, "Done");
        assert_eq!(
            caught.input["error"]["Error"],
            "States.ResultPathMatchFailure"
        );
    }

    #[tokio::test]
    async fn dotted_names_with_dashes_read_as_on_step_functions() {
        let machine = single(task(json!({
            "InputPath": "$.my-order",
            "Parameters": { "id.$": "$.order-id", "first.$": "$.line-items[0]" }
        })));
        let tasks = FakeTasks::returning(json!({}));
        step_from_start(
            &machine,
            json!({ "my-order": { "order-id": 7, "line-items": ["x", "y"] } }),
            &tasks,
        )
        .await;
        let inputs: Vec<Value> = tasks.calls().into_iter().map(|(_, input)| input).collect();
        assert_eq!(inputs, vec![json!({ "id": 7, "first": "x" })]);
    }

    #[tokio::test]
    async fn a_task_that_ends_the_execution_succeeds_with_its_output() {
        let machine = machine(json!({
            "StartAt": "T", "States": { "T": { "Type": "Task", "Resource": "arn:t", "End": true } }
        }));
        let tasks = FakeTasks::returning(json!({ "done": true }));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(step, Step::Succeeded(json!({ "done": true })));
    }

    fn retrying_task(retrier: Value) -> StateMachine {
        single(task(json!({ "Retry": [retrier] })))
    }

    async fn retry_delays(machine: &StateMachine, tasks: &FakeTasks) -> (Vec<Duration>, Step) {
        let mut cursor = machine.start(json!({ "payload": 1 }));
        let mut delays = Vec::new();
        loop {
            match step(machine, cursor, tasks).await {
                Step::Sleep { duration, then } => {
                    assert_eq!(then.state, "S");
                    assert_eq!(then.input, json!({ "payload": 1 }));
                    delays.push(duration);
                    cursor = then;
                }
                end => return (delays, end),
            }
        }
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
        assert_eq!(then.retries, [0, 1]);
        let second = step(&machine, then, &tasks).await;
        let Step::Sleep { then, .. } = second else {
            panic!("expected Sleep, got {second:?}")
        };
        assert_eq!(then.retries, [0, 2]);
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
        assert_eq!(cursor.state, "Done");
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

    #[tokio::test]
    async fn runtime_failures_are_neither_retried_nor_caught() {
        let machine = single(task(json!({
            "OutputPath": "$.missing",
            "Retry": [{ "ErrorEquals": ["States.ALL"] }],
            "Catch": [{ "ErrorEquals": ["States.ALL"], "Next": "Done" }]
        })));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, json!({}), &tasks).await;
        runtime_cause(&step);
        assert_eq!(tasks.calls().len(), 1);
    }

    #[tokio::test]
    async fn exhausted_retries_fall_through_to_catch_and_not_to_a_later_retrier() {
        let machine = single(task(json!({
            "Retry": [{ "ErrorEquals": ["Flaky"], "MaxAttempts": 1 }, { "ErrorEquals": ["States.ALL"], "MaxAttempts": 5 }],
            "Catch": [{ "ErrorEquals": ["Flaky"], "ResultPath": "$.error", "Next": "Done" }]
        })));
        let tasks = FakeTasks::failing("Flaky");
        let (end, sleeps) = run_to_end(&machine, json!({ "keep": 1 }), &tasks).await;
        assert_eq!(sleeps, [Duration::from_secs(1)]);
        assert_eq!(
            end,
            Step::Succeeded(
                json!({ "keep": 1, "error": { "Error": "Flaky", "Cause": "Flaky happened" } })
            )
        );
    }

    #[tokio::test]
    async fn a_catch_places_the_error_output_at_its_result_path_in_the_raw_input() {
        let machine = single(task(json!({
            "InputPath": "$.part",
            "Catch": [{ "ErrorEquals": ["Broken"], "ResultPath": "$.failure.detail", "Next": "Done" }]
        })));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({ "part": 1, "other": 2 }), &tasks).await;
        assert_eq!(
            step,
            Step::Continue(at(
                "Done",
                json!({
                    "part": 1, "other": 2,
                    "failure": { "detail": { "Error": "Broken", "Cause": "Broken happened" } }
                })
            ))
        );
    }

    #[tokio::test]
    async fn a_catch_without_result_path_replaces_the_input_with_the_error_output() {
        let machine = single(task(
            json!({ "Catch": [{ "ErrorEquals": ["Broken"], "Next": "Done" }] }),
        ));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({ "a": 1 }), &tasks).await;
        assert_eq!(
            continue_to(step).input,
            json!({ "Error": "Broken", "Cause": "Broken happened" })
        );
    }

    #[tokio::test]
    async fn the_first_matching_catcher_wins() {
        let machine = machine(json!({
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task", "Resource": "arn:t", "End": true,
                    "Catch": [
                        { "ErrorEquals": ["Other"], "Next": "A" },
                        { "ErrorEquals": ["Broken", "Other2"], "Next": "B" },
                        { "ErrorEquals": ["States.ALL"], "Next": "A" }
                    ]
                },
                "A": { "Type": "Succeed" },
                "B": { "Type": "Succeed" }
            }
        }));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(continue_to(step).state, "B");
        let tasks = FakeTasks::failing("Unlisted");
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(continue_to(step).state, "A");
    }

    #[tokio::test]
    async fn an_uncaught_task_error_fails_the_execution() {
        let machine = single(task(
            json!({ "Catch": [{ "ErrorEquals": ["Other"], "Next": "Done" }] }),
        ));
        let tasks = FakeTasks::failing("Broken");
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(
            step,
            Step::Failed {
                error: "Broken".to_owned(),
                cause: "Broken happened".to_owned()
            }
        );
    }

    fn oversized() -> Value {
        json!({ "blob": "x".repeat(MAX_PAYLOAD_BYTES) })
    }

    #[tokio::test]
    async fn an_oversized_task_result_fails_with_data_limit_exceeded_even_under_states_all() {
        let machine = single(task(json!({
            "ResultSelector": { "small": 1 },
            "Retry": [{ "ErrorEquals": ["States.ALL"] }],
            "Catch": [{ "ErrorEquals": ["States.ALL"], "Next": "Done" }]
        })));
        let tasks = FakeTasks::returning(oversized());
        let step = step_from_start(&machine, json!({}), &tasks).await;
        assert_eq!(failed_with(&step), DATA_LIMIT_ERROR);
    }

    #[tokio::test]
    async fn an_oversized_task_input_fails_before_the_task_runs() {
        let machine = single(task(json!({ "Parameters": { "copy.$": "$.blob" } })));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, oversized(), &tasks).await;
        assert_eq!(failed_with(&step), DATA_LIMIT_ERROR);
        assert!(tasks.calls().is_empty());
    }

    #[tokio::test]
    async fn an_oversized_state_output_fails_with_data_limit_exceeded() {
        let machine = single(json!({ "Type": "Pass", "Next": "Done" }));
        let tasks = FakeTasks::returning(json!({}));
        let step = step_from_start(&machine, oversized(), &tasks).await;
        assert_eq!(failed_with(&step), DATA_LIMIT_ERROR);
        let just_fits = json!("x".repeat(MAX_PAYLOAD_BYTES - 2));
        let step = step_from_start(&machine, just_fits.clone(), &tasks).await;
        assert_eq!(step, Step::Continue(at("Done", just_fits)));
    }

    /// Runs a one-rule Choice and says whether the rule matched.
    async fn rule_matches(rule: Value, input: Value) -> Result<bool, Step> {
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
            Step::Continue(cursor) => Ok(cursor.state == "Yes"),
            other => Err(other),
        }
    }

    async fn check_rules(input: Value, cases: &[(Value, bool)]) {
        for (rule, expected) in cases {
            let outcome = rule_matches(rule.clone(), input.clone()).await;
            assert_eq!(outcome, Ok(*expected), "rule {rule} on {input}");
        }
    }

    /// Checks `(Variable, operator, operand, expected match)` cases against one input.
    async fn check_comparisons(input: Value, cases: &[(&str, &str, Value, bool)]) {
        for (variable, operator, operand, expected) in cases {
            let mut rule = Map::new();
            rule.insert("Variable".to_owned(), json!(variable));
            rule.insert((*operator).to_owned(), operand.clone());
            let rule = Value::Object(rule);
            let outcome = rule_matches(rule.clone(), input.clone()).await;
            assert_eq!(outcome, Ok(*expected), "rule {rule} on {input}");
        }
    }

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

    async fn wait_step(state: Value, input: Value) -> Step {
        step_from_start(&single(state), input, &FakeTasks::returning(json!(null))).await
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
    async fn a_succeed_state_outputs_its_filtered_input() {
        let machine = machine(
            json!({ "StartAt": "S", "States": { "S": { "Type": "Succeed", "InputPath": "$.a", "OutputPath": "$.b" } } }),
        );
        let tasks = FakeTasks::returning(json!(null));
        let step = step_from_start(&machine, json!({ "a": { "b": [1] } }), &tasks).await;
        assert_eq!(step, Step::Succeeded(json!([1])));
    }

    #[tokio::test]
    async fn a_fail_state_reports_its_error_and_cause() {
        let tasks = FakeTasks::returning(json!(null));
        let fixed = machine(
            json!({ "StartAt": "F", "States": { "F": { "Type": "Fail", "Error": "My.Error", "Cause": "because" } } }),
        );
        let step = step_from_start(&fixed, json!({}), &tasks).await;
        assert_eq!(
            step,
            Step::Failed {
                error: "My.Error".to_owned(),
                cause: "because".to_owned()
            }
        );
        let from_paths = machine(
            json!({ "StartAt": "F", "States": { "F": { "Type": "Fail", "ErrorPath": "$.e", "CausePath": "$.c" } } }),
        );
        let step = step_from_start(
            &from_paths,
            json!({ "e": "Dyn.Error", "c": "dynamic" }),
            &tasks,
        )
        .await;
        assert_eq!(
            step,
            Step::Failed {
                error: "Dyn.Error".to_owned(),
                cause: "dynamic".to_owned()
            }
        );
        let step = step_from_start(&from_paths, json!({ "e": 1, "c": "x" }), &tasks).await;
        runtime_cause(&step);
    }

    #[test]
    fn a_cursor_round_trips_through_json() {
        let cursor = Cursor {
            state: "T".to_owned(),
            input: json!({ "a": [1, 2] }),
            retries: vec![0, 2],
        };
        let text = serde_json::to_string(&cursor).unwrap();
        assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), cursor);
        let without_retries: Cursor =
            serde_json::from_str(r#"{"state":"T","input":null}"#).unwrap();
        assert!(without_retries.retries.is_empty());
    }

    #[tokio::test]
    async fn a_cursor_naming_no_state_fails_with_states_runtime() {
        let machine = single(json!({ "Type": "Pass", "Next": "Done" }));
        let step = step(
            &machine,
            at("Gone", json!({})),
            &FakeTasks::returning(json!(null)),
        )
        .await;
        runtime_cause(&step);
    }

    #[test]
    fn a_step_can_run_on_any_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let machine = single(json!({ "Type": "Pass", "Next": "Done" }));
        let tasks = FakeTasks::returning(json!(null));
        let context = execution();
        let future = machine.step(machine.start(json!({})), &context, &tasks);
        assert_send(&future);
    }

    fn shipped_machine() -> StateMachine {
        let path = std::env::var("ASL_DEFINITION").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/cf-templates/state-machine.asl.json"
            )
            .to_owned()
        });
        let definition = std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!("cannot read the state machine definition {path}: {error}")
        });
        let substitutions = BTreeMap::from([
            ("Task1FunctionArn".to_owned(), "arn:task1".to_owned()),
            ("Task2FunctionArn".to_owned(), "arn:task2".to_owned()),
            ("UpdateFunctionArn".to_owned(), "arn:update".to_owned()),
        ]);
        StateMachine::from_json(&definition, &substitutions)
            .expect("the shipped definition is valid")
    }

    fn chunk_input() -> Value {
        json!({ "batchId": "batch-7", "chunk": 3 })
    }

    #[tokio::test]
    async fn the_shipped_definition_runs_the_happy_path() {
        let machine = shipped_machine();
        let tasks = FakeTasks::new(|resource, _, _| match resource {
            "arn:task1" => Ok(json!({ "active": true })),
            "arn:task2" => Ok(json!({ "processed": 10 })),
            _ => Ok(json!({ "recorded": true })),
        });
        let (end, sleeps) = run_to_end(&machine, chunk_input(), &tasks).await;
        assert_eq!(end, Step::Succeeded(json!({ "recorded": true })));
        assert!(sleeps.is_empty());
        let expected_task_input = json!({ "batchId": "batch-7", "chunk": 3, "attempt": 0 });
        assert_eq!(
            tasks.calls(),
            [
                ("arn:task1".to_owned(), expected_task_input.clone()),
                ("arn:task2".to_owned(), expected_task_input),
                (
                    "arn:update".to_owned(),
                    json!({ "batchId": "batch-7", "chunk": 3 })
                ),
            ]
        );
    }

    #[tokio::test]
    async fn the_shipped_definition_skips_a_cancelled_chunk() {
        let machine = shipped_machine();
        let tasks = FakeTasks::new(|resource, _, _| match resource {
            "arn:task1" => Ok(json!({ "active": false })),
            other => panic!("{other} must not run for a cancelled chunk"),
        });
        let mut cursor = machine.start(chunk_input());
        let mut visited = Vec::new();
        let end = loop {
            visited.push(cursor.state.clone());
            match step(&machine, cursor, &tasks).await {
                Step::Continue(next) => cursor = next,
                end => break end,
            }
        };
        assert_eq!(visited, ["Task1", "ChunkStillActive", "ChunkSkipped"]);
        assert_eq!(end, Step::Succeeded(json!({ "skipped": true })));
    }

    #[tokio::test]
    async fn the_shipped_definition_records_a_chunk_failure_after_three_retries() {
        let machine = shipped_machine();
        let tasks = FakeTasks::new(|resource, _, _| match resource {
            "arn:task1" => Ok(json!({ "active": true })),
            "arn:task2" => Err(TaskFailure {
                error: "BatchManager.TransientTaskError".to_owned(),
                cause: "store timed out".to_owned(),
            }),
            _ => Ok(json!({ "recorded": "failed" })),
        });
        let (end, sleeps) = run_to_end(&machine, chunk_input(), &tasks).await;
        assert_eq!(sleeps, [1, 2, 4].map(Duration::from_secs));
        assert_eq!(failed_with(&end), "BatchManager.ChunkFailed");

        let calls = tasks.calls();
        let attempts: Vec<Value> = calls
            .iter()
            .filter(|(resource, _)| resource == "arn:task2")
            .map(|(_, input)| input["attempt"].clone())
            .collect();
        assert_eq!(attempts, [json!(0), json!(1), json!(2), json!(3)]);
        let (resource, record_input) = calls.last().unwrap();
        assert_eq!(resource, "arn:update");
        assert_eq!(
            record_input,
            &json!({
                "batchId": "batch-7",
                "chunk": 3,
                "failure": { "Error": "BatchManager.TransientTaskError", "Cause": "store timed out" }
            })
        );
    }
}
