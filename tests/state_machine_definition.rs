//! The shipped definition, `cf-templates/state-machine.asl.json`, run on the interpreter's
//! public API: the path every chunk takes (task 1 -> task 2 -> update), a cancelled chunk, and
//! a chunk whose task keeps failing. Set `ASL_DEFINITION` to check another definition file.
//! Last, the shape of an external job's definition (submit, then a Wait -> status Task ->
//! Choice loop with a deadline and a heartbeat per status check) on a heartbeating invoker.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use batch_manager::engine::local::asl::{
    Cursor, ExecutionContext, Heartbeat, StateMachine, Step, TaskFailure, TaskInvoker,
};
use serde_json::{json, Value};

type Responder = dyn Fn(&str) -> Result<Value, TaskFailure> + Send + Sync;

/// Records every invocation and answers with `respond(resource)`.
struct RecordingTasks {
    calls: Mutex<Vec<(String, Value)>>,
    respond: Box<Responder>,
}

impl RecordingTasks {
    fn new(respond: impl Fn(&str) -> Result<Value, TaskFailure> + Send + Sync + 'static) -> Self {
        RecordingTasks {
            calls: Mutex::new(Vec::new()),
            respond: Box::new(respond),
        }
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl TaskInvoker for RecordingTasks {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        self.calls
            .lock()
            .unwrap()
            .push((resource.to_owned(), input));
        (self.respond)(resource)
    }
}

fn shipped_machine() -> StateMachine {
    let path = std::env::var("ASL_DEFINITION").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/cf-templates/state-machine.asl.json"
        )
        .to_owned()
    });
    let definition = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read the state machine definition {path}: {error}"));
    let substitutions = BTreeMap::from([
        ("Task1FunctionArn".to_owned(), "arn:task1".to_owned()),
        ("Task2FunctionArn".to_owned(), "arn:task2".to_owned()),
        ("UpdateFunctionArn".to_owned(), "arn:update".to_owned()),
    ]);
    StateMachine::from_json(&definition, &substitutions).expect("the shipped definition is valid")
}

fn chunk_input() -> Value {
    json!({ "batchId": "batch-7", "chunk": 3 })
}

fn context() -> ExecutionContext {
    ExecutionContext::new(
        "batch-7/3",
        chunk_input(),
        "2024-05-01T10:00:00Z",
        "batch-manager-chunks",
    )
}

/// The steps of one execution: the states it entered, the sleeps it asked for, and its end.
struct Run {
    visited: Vec<String>,
    sleeps: Vec<Duration>,
    end: Step,
}

/// Steps an execution to its end without sleeping (the sleeps are recorded instead).
async fn run_to_end(machine: &StateMachine, tasks: &dyn TaskInvoker) -> Run {
    let context = context();
    let mut cursor: Cursor = machine.start(chunk_input());
    let (mut visited, mut sleeps) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        visited.push(cursor.state().to_owned());
        match machine.step(cursor, &context, tasks).await {
            Step::Continue(next) => cursor = next,
            Step::Sleep { duration, then } => {
                sleeps.push(duration);
                cursor = then;
            }
            end => {
                return Run {
                    visited,
                    sleeps,
                    end,
                }
            }
        }
    }
    panic!("the execution did not end within 100 steps");
}

#[tokio::test]
async fn the_shipped_definition_runs_the_happy_path() {
    let machine = shipped_machine();
    let tasks = RecordingTasks::new(|resource| match resource {
        "arn:task1" => Ok(json!({ "active": true })),
        "arn:task2" => Ok(json!({ "processed": 10 })),
        _ => Ok(json!({ "recorded": true })),
    });
    let run = run_to_end(&machine, &tasks).await;
    assert_eq!(run.end, Step::Succeeded(json!({ "recorded": true })));
    assert!(run.sleeps.is_empty());
    assert_eq!(
        run.visited,
        ["Task1", "AfterTask1", "Task2", "AfterTask2", "RecordChunk"]
    );
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
    let tasks = RecordingTasks::new(|resource| match resource {
        "arn:task1" => Ok(json!({ "active": false })),
        other => panic!("{other} must not run for a cancelled chunk"),
    });
    let run = run_to_end(&machine, &tasks).await;
    assert_eq!(run.visited, ["Task1", "AfterTask1", "ChunkSkipped"]);
    assert_eq!(run.end, Step::Succeeded(json!({ "skipped": true })));
}

#[tokio::test]
async fn the_shipped_definition_records_a_chunk_failure_after_three_retries() {
    let machine = shipped_machine();
    let tasks = RecordingTasks::new(|resource| match resource {
        "arn:task1" => Ok(json!({ "active": true })),
        "arn:task2" => Err(TaskFailure {
            error: "BatchManager.TransientTaskError".to_owned(),
            cause: "store timed out".to_owned(),
        }),
        _ => Ok(json!({ "recorded": "failed" })),
    });
    let run = run_to_end(&machine, &tasks).await;
    assert_eq!(run.sleeps, [1, 2, 4].map(Duration::from_secs));
    assert!(
        matches!(&run.end, Step::Failed { error, .. } if error == "BatchManager.ChunkFailed"),
        "{:?}",
        run.end
    );

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

#[tokio::test]
async fn the_shipped_definition_catches_an_oversized_task_result_and_records_the_chunk() {
    let machine = shipped_machine();
    let tasks = RecordingTasks::new(|resource| match resource {
        "arn:task1" => Ok(json!({ "blob": "x".repeat(300_000) })),
        _ => Ok(json!({ "recorded": "failed" })),
    });
    let run = run_to_end(&machine, &tasks).await;
    assert_eq!(run.visited, ["Task1", "RecordChunkFailure", "ChunkFailed"]);
    let calls = tasks.calls();
    let (resource, record_input) = calls.last().unwrap();
    assert_eq!(resource, "arn:update");
    assert_eq!(
        record_input["failure"]["Error"],
        json!("States.DataLimitExceeded")
    );
}

/// Task 2's answers in turn: each invocation of `arn:task2` takes the next one.
fn task2_answers(answers: Vec<Value>) -> RecordingTasks {
    let answers = Mutex::new(answers);
    RecordingTasks::new(move |resource| match resource {
        "arn:task1" => Ok(json!({ "active": true })),
        "arn:task2" => Ok(answers.lock().unwrap().remove(0)),
        _ => Ok(json!({ "recorded": true })),
    })
}

fn job(status: &str, attempt: u32, polls: u32, wait_seconds: u64) -> Value {
    json!({ "job": { "name": "j", "attempt": attempt, "status": status, "polls": polls, "waitSeconds": wait_seconds } })
}

fn failed_job(attempt: u32, retry_wait_seconds: u64) -> Value {
    json!({ "job": {
        "name": "j", "attempt": attempt, "status": "FAILED", "polls": 0, "waitSeconds": 0,
        "retryWaitSeconds": retry_wait_seconds,
        "error": "BatchManager.TransientTaskError", "reason": "exit 3"
    } })
}

#[tokio::test]
async fn the_shipped_definition_waits_and_polls_an_external_job_until_it_ends() {
    let machine = shipped_machine();
    let tasks = task2_answers(vec![
        job("RUNNING", 0, 0, 5),
        job("RUNNING", 0, 1, 10),
        json!({ "active": true, "processed": 10, "failed": 0 }),
    ]);
    let run = run_to_end(&machine, &tasks).await;
    assert_eq!(run.end, Step::Succeeded(json!({ "recorded": true })));
    assert_eq!(run.sleeps, [5, 10].map(Duration::from_secs));
    assert_eq!(
        run.visited[2..],
        [
            "Task2",
            "AfterTask2",
            "Task2JobStatus",
            "Task2JobWait",
            "Task2JobPoll",
            "AfterTask2",
            "Task2JobStatus",
            "Task2JobWait",
            "Task2JobPoll",
            "AfterTask2",
            "RecordChunk"
        ]
    );
    let polls: Vec<Value> = tasks
        .calls()
        .into_iter()
        .filter(|(resource, input)| resource == "arn:task2" && input.get("job").is_some())
        .map(|(_, input)| input)
        .collect();
    assert_eq!(
        polls,
        [
            json!({ "batchId": "batch-7", "chunk": 3, "job": job("RUNNING", 0, 0, 5)["job"] }),
            json!({ "batchId": "batch-7", "chunk": 3, "job": job("RUNNING", 0, 1, 10)["job"] }),
        ]
    );
}

#[tokio::test]
async fn the_shipped_definition_submits_a_failed_job_again_then_fails_the_chunk_after_three_attempts(
) {
    let machine = shipped_machine();
    let tasks = task2_answers(vec![
        job("RUNNING", 0, 0, 5),
        failed_job(0, 1),
        job("RUNNING", 1, 0, 5),
        failed_job(1, 2),
        job("RUNNING", 2, 0, 5),
        failed_job(2, 4),
    ]);
    let run = run_to_end(&machine, &tasks).await;
    assert!(
        matches!(&run.end, Step::Failed { error, .. } if error == "BatchManager.ChunkFailed"),
        "{:?}",
        run.end
    );
    // Poll, retry wait, poll, retry wait, poll: the third failure is not retried.
    assert_eq!(run.sleeps, [5, 1, 5, 2, 5].map(Duration::from_secs));
    let submits = tasks
        .calls()
        .iter()
        .filter(|(resource, input)| resource == "arn:task2" && input.get("job").is_none())
        .count();
    assert_eq!(submits, 3);
    assert!(run.visited.ends_with(&[
        "Task2JobStatus".to_owned(),
        "Task2JobGaveUp".to_owned(),
        "RecordChunkFailure".to_owned(),
        "ChunkFailed".to_owned()
    ]));
    let (resource, record_input) = tasks.calls().last().unwrap().clone();
    assert_eq!(resource, "arn:update");
    assert_eq!(
        record_input["failure"],
        json!({ "Error": "BatchManager.TransientTaskError", "Cause": "exit 3" })
    );
}

#[tokio::test]
async fn the_shipped_definition_polls_task_1_jobs_the_same_way() {
    let machine = shipped_machine();
    let answers = Mutex::new(vec![
        job("RUNNING", 0, 0, 5),
        json!({ "active": true, "processed": 3, "failed": 1 }),
    ]);
    let tasks = RecordingTasks::new(move |resource| match resource {
        "arn:task1" => Ok(answers.lock().unwrap().remove(0)),
        "arn:task2" => Ok(json!({ "processed": 2 })),
        _ => Ok(json!({ "recorded": true })),
    });
    let run = run_to_end(&machine, &tasks).await;
    assert_eq!(run.end, Step::Succeeded(json!({ "recorded": true })));
    assert_eq!(
        run.visited[..7],
        [
            "Task1",
            "AfterTask1",
            "Task1JobStatus",
            "Task1JobWait",
            "Task1JobPoll",
            "AfterTask1",
            "Task2"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_job_poll_times_out_and_is_retried() {
    let machine = shipped_machine();
    let calls = Mutex::new(0u32);
    let tasks = HangingPolls { calls };
    let started = tokio::time::Instant::now();
    let run = run_to_end(&machine, &tasks).await;
    assert_eq!(run.end, Step::Succeeded(json!({ "recorded": true })));
    assert!(
        started.elapsed() >= Duration::from_secs(300),
        "the poll state's TimeoutSeconds (300 s) ended the hung poll"
    );
    assert_eq!(
        *tasks.calls.lock().unwrap(),
        2,
        "one hung poll, one retried"
    );
}

/// Task 2 submits a job; its first poll hangs, the retried one answers that it ended.
struct HangingPolls {
    calls: Mutex<u32>,
}

#[async_trait]
impl TaskInvoker for HangingPolls {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        match resource {
            "arn:task1" => Ok(json!({ "active": true })),
            "arn:task2" if input.get("job").is_none() => Ok(job("RUNNING", 0, 0, 5)),
            "arn:task2" => {
                let first = {
                    let mut calls = self.calls.lock().unwrap();
                    *calls += 1;
                    *calls == 1
                };
                if first {
                    std::future::pending::<()>().await;
                }
                Ok(json!({ "active": true, "processed": 1, "failed": 0 }))
            }
            _ => Ok(json!({ "recorded": true })),
        }
    }
}

/// A definition that submits an external job, then polls its status every 60 seconds; each
/// status check has 10 seconds and must heartbeat every 3, and is retried once on a timeout.
fn job_polling_machine() -> StateMachine {
    let definition = json!({
        "StartAt": "SubmitJob",
        "States": {
            "SubmitJob": {
                "Type": "Task", "Resource": "arn:submit", "TimeoutSeconds": 30,
                "ResultPath": "$.job", "Next": "WaitForJob"
            },
            "WaitForJob": { "Type": "Wait", "Seconds": 60, "Next": "CheckJob" },
            "CheckJob": {
                "Type": "Task", "Resource": "arn:status",
                "Parameters": { "jobId.$": "$.job.jobId" },
                "TimeoutSeconds": 10, "HeartbeatSeconds": 3, "ResultPath": "$.status",
                "Retry": [{ "ErrorEquals": ["States.Timeout"], "MaxAttempts": 1 }],
                "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "JobLost" }],
                "Next": "JobDone?"
            },
            "JobDone?": {
                "Type": "Choice",
                "Choices": [
                    { "Variable": "$.status.state", "StringEquals": "SUCCEEDED", "Next": "JobSucceeded" },
                    { "Variable": "$.status.state", "StringEquals": "RUNNING", "Next": "WaitForJob" }
                ],
                "Default": "JobLost"
            },
            "JobSucceeded": { "Type": "Succeed" },
            "JobLost": { "Type": "Fail", "Error": "Job.Lost" }
        }
    });
    StateMachine::from_json(&definition.to_string(), &BTreeMap::new())
        .expect("the job polling definition is valid")
}

/// An external job's service: each status check answers the next of `checks` in turn.
struct JobService {
    checks: Mutex<Vec<StatusCheck>>,
}

enum StatusCheck {
    /// The status call hangs without a heartbeat.
    Hangs,
    /// The status call takes `seconds`, beating every second, then answers `state`.
    Answers { seconds: u64, state: &'static str },
}

#[async_trait]
impl TaskInvoker for JobService {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        panic!("the interpreter calls invoke_with_heartbeat, not invoke({resource}, {input})")
    }

    async fn invoke_with_heartbeat(
        &self,
        resource: &str,
        input: Value,
        heartbeat: Heartbeat,
    ) -> Result<Value, TaskFailure> {
        if resource == "arn:submit" {
            assert_eq!(heartbeat.interval(), None);
            return Ok(json!({ "jobId": "job-1" }));
        }
        assert_eq!(input, json!({ "jobId": "job-1" }));
        assert_eq!(heartbeat.interval(), Some(Duration::from_secs(3)));
        let check = self.checks.lock().unwrap().remove(0);
        match check {
            StatusCheck::Hangs => std::future::pending().await,
            StatusCheck::Answers { seconds, state } => {
                for _ in 0..seconds {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    heartbeat.beat();
                }
                Ok(json!({ "state": state }))
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_polling_definition_retries_a_hung_status_check_and_keeps_polling() {
    let machine = job_polling_machine();
    let service = JobService {
        checks: Mutex::new(vec![
            StatusCheck::Answers {
                seconds: 5,
                state: "RUNNING",
            },
            StatusCheck::Hangs,
            StatusCheck::Answers {
                seconds: 1,
                state: "SUCCEEDED",
            },
        ]),
    };
    let run = run_to_end(&machine, &service).await;
    assert_eq!(
        run.end,
        Step::Succeeded(json!({
            "batchId": "batch-7", "chunk": 3,
            "job": { "jobId": "job-1" },
            "status": { "state": "SUCCEEDED" }
        }))
    );
    assert_eq!(
        run.visited,
        [
            "SubmitJob",
            "WaitForJob",
            "CheckJob",
            "JobDone?",
            "WaitForJob",
            "CheckJob",
            "CheckJob",
            "JobDone?",
            "JobSucceeded"
        ]
    );
    assert!(service.checks.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_job_polling_definition_gives_up_on_a_status_check_that_hangs_twice() {
    let machine = job_polling_machine();
    let service = JobService {
        checks: Mutex::new(vec![StatusCheck::Hangs, StatusCheck::Hangs]),
    };
    let run = run_to_end(&machine, &service).await;
    assert_eq!(
        run.end,
        Step::Failed {
            error: "Job.Lost".to_owned(),
            cause: String::new()
        }
    );
    assert_eq!(
        run.visited,
        ["SubmitJob", "WaitForJob", "CheckJob", "CheckJob", "JobLost"]
    );
}
