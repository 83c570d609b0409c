//! Amazon States Language (ASL) interpreter for the local engine.
//!
//! This module owns parsing, validating and stepping a state machine definition: the same
//! JSON that AWS Step Functions runs in production. It does no I/O of its own: a Task's work
//! goes through the caller's [`TaskInvoker`], and waiting is handed back to the caller as
//! [`Step::Sleep`], so the engine decides how to sleep, persist and resume.
//!
//! # Layout
//!
//! One file per construct, each holding its types, parsing and running: `machine` (top level,
//! substitution, reachability, `start`/`step`), `envelope` (what every state does around its
//! body: `InputPath`, the body, `OutputPath`, the payload limit), the six state types (`task`,
//! `pass`, `choice`, `wait`, `succeed`, `fail`), `retry` and `catch`, `condition` and
//! `comparison` (choice rules), `paths`, `path_syntax` and `result_path`, `template`
//! (`Parameters`, `ResultSelector`), `timeouts` (a Task's timeout and heartbeat), `context`
//! (the context object `$$`), `cursor`, `timestamp`, `errors`, and `fields` (the reader every
//! parser uses).
//!
//! # Supported subset
//!
//! * Query language: JSONPath only. `"QueryLanguage": "JSONata"` is rejected.
//! * Top level: `StartAt`, `States`, `Comment`, `Version`, `QueryLanguage` and `TimeoutSeconds`.
//!   `TimeoutSeconds` is validated and then ignored: the execution timeout belongs to the engine.
//! * States: `Task`, `Pass`, `Choice`, `Wait`, `Succeed` and `Fail`. `Map` and `Parallel` are
//!   rejected.
//! * Task: `Resource`, `InputPath`, `Parameters`, `ResultSelector`, `ResultPath`, `OutputPath`,
//!   `TimeoutSeconds` or `TimeoutSecondsPath`, `HeartbeatSeconds` or `HeartbeatSecondsPath`,
//!   `Retry` (`ErrorEquals`, `IntervalSeconds`, `MaxAttempts`, `BackoffRate`, `MaxDelaySeconds`,
//!   `JitterStrategy`), `Catch` (`ErrorEquals`, `Next`, `ResultPath`), `Next`/`End`.
//!   `Credentials` is rejected: nothing here could assume a role.
//! * Pass: `InputPath`, `Parameters`, `Result`, `ResultPath`, `OutputPath`, `Next`/`End`.
//! * Choice: `Choices` with `And`, `Or`, `Not`, every String/Numeric/Boolean/Timestamp comparison
//!   and its `...Path` form, `IsNull`, `IsPresent`, `IsNumeric`, `IsString`, `IsBoolean`,
//!   `IsTimestamp`; `Default`.
//! * Wait: `Seconds`, `SecondsPath`, `Timestamp`, `TimestampPath`; at most 2^31 - 1 seconds.
//! * Fail: `Error`, `Cause`, `ErrorPath`, `CausePath`.
//! * Variables and JSONata-only fields (`Assign`, `Arguments`, `Output`, ...) and intrinsic
//!   functions (`States.Format(...)` and friends) are rejected when the definition is parsed.
//!
//! Any field outside this list is a [`DefinitionError`] naming the state and the field, so a
//! definition that runs here does not silently lean on behaviour this interpreter lacks.
//!
//! # Paths and timestamps
//!
//! Reading paths (`InputPath`, `OutputPath`, `Variable`, `key.$` values, `SecondsPath`, ...) are
//! JSONPath queries. A path made only of names and integer indexes (dotted names may hold any
//! character but `.`, `[`, `]`, quotes, spaces and JSONPath operators, as on Step Functions:
//! `$.my-field`) yields the one value it selects; any other path (wildcard, slice, filter,
//! descendants, evaluated as RFC 9535 queries) yields an array of its matches. A quoted name
//! is the literal text between its quotes (`$['a\"b']` names `a\"b`: a backslash is kept).
//! A path that selects nothing fails the execution with `States.Runtime` (a Choice rule's
//! `IsPresent` is then simply false), except in `Parameters` and `ResultSelector`, where a
//! path that can select several values and selects none yields `[]`.
//!
//! Paths starting with `$$` read the context object: `Execution.{Id,Name,Input,StartTime,
//! RoleArn,RedriveCount}`, `State.{Name,EnteredTime}` (plus `RetryCount` while a Task state
//! runs) and `StateMachine.{Id,Name}`. `State.EnteredTime` is the time the current step
//! started (for a retried Task, the time of this attempt), and the `Id` fields are ARN-shaped
//! names in the `local` region of account `000000000000`.
//!
//! Timestamps are RFC 3339 with a `T` between date and time: a Wait `Timestamp` without one is
//! refused, a `TimestampPath` value without one fails with `States.Runtime`, and a Choice rule
//! treats such a string as not a timestamp.
//!
//! # Task timeouts and heartbeats
//!
//! A Task attempt has a timeout (`TimeoutSeconds`, or a positive integer read by the Reference
//! Path `TimeoutSecondsPath` from the effective input; 99,999,999 seconds when neither is
//! given, as on Step Functions), counted from the start of the invocation. With
//! `HeartbeatSeconds` (or `HeartbeatSecondsPath`), which must be smaller than the timeout,
//! the attempt must also call [`Heartbeat::beat`] at least that often: the interpreter hands
//! the handle to [`TaskInvoker::invoke_with_heartbeat`]. An attempt past its timeout fails
//! with `States.Timeout`, one that missed its heartbeat with `States.HeartbeatTimeout`; its
//! invocation is dropped and the state's Retry and Catch take the failure. In `ErrorEquals`,
//! `States.ALL` matches both, `States.Timeout` matches both (the States Language defines it as
//! a Task that ran too long or failed to heartbeat), `States.HeartbeatTimeout` only the
//! latter, and `States.TaskFailed` neither. A path value that is not a positive integer, or a
//! heartbeat interval not smaller than the timeout, fails with `States.Runtime`.
//!
//! # Errors at run time
//!
//! `States.Runtime` (a path selected nothing, a value had the wrong type, a Wait was too long)
//! ends the execution: no Retrier or Catcher handles it, as on Step Functions. Neither does
//! `States.DataLimitExceeded` for a state's input or output over 262,144 bytes. A Task result
//! over that limit, though, is a failure of the Task named `States.DataLimitExceeded`, which
//! its Retry and Catch see like any other Task error, as is `States.ResultPathMatchFailure`
//! (a Task's `ResultPath` could not be applied to its input).
//!
//! # Driving an execution
//!
//! The caller owns the loop and the clock, and persists the [`Cursor`] between steps. A step
//! cut short before its outcome is persisted runs again from the same [`Cursor`], so a Task may
//! run more than once: Task resources should be idempotent, as on Step Functions. A Task's
//! deadline and heartbeat clock are not persisted: a Task attempt re-run after a restart
//! starts with a fresh timeout, so the attempt cut short and its re-run together may take
//! longer than `TimeoutSeconds`. Timeouts run on the Tokio clock, so [`StateMachine::step`]
//! needs a Tokio runtime with its time driver enabled.
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

mod catch;
mod choice;
mod comparison;
mod condition;
mod context;
mod cursor;
mod envelope;
mod errors;
mod fail;
mod fields;
mod machine;
mod pass;
mod path_syntax;
mod paths;
mod result_path;
mod retry;
mod succeed;
mod task;
mod template;
#[cfg(test)]
mod test_support;
mod timeouts;
mod timestamp;
mod wait;

pub use context::ExecutionContext;
pub use cursor::Cursor;
pub use errors::{DefinitionError, TaskFailure};
pub use machine::{StateMachine, Step};
pub use task::TaskInvoker;
pub use timeouts::Heartbeat;
