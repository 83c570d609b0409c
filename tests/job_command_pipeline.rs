//! Tasks as commands, end to end through the real `batch-manager serve`: the chunks' item IDs
//! reach `tests/fixtures/jobs/task.py`, which as task 2 fails items by name, fails a first
//! attempt, runs past its deadline or sleeps until stopped (as task 1 it passes every item, where
//! the built-in task 1 would fail these IDs, which are not UUIDs); cancel and a SIGKILLed server
//! leave no process behind; `POST /runrequests` runs the old submitter's body through the same
//! command.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batch_manager::domain::BatchId;
use batch_manager::grpc::pb;
use batch_manager::pipeline::jobs::{job_name, TaskName};
use common::process::{is_running, Launch, ServerProcess};
use common::*;
use serde_json::{json, Value};

/// The task command every test runs, with the test's working directory as its argument.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jobs/task.py");

/// Longest a test waits for a command to start or a process to end.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// One run of the task command, as it recorded itself.
#[derive(Debug, Clone, serde::Deserialize)]
struct Invocation {
    pid: i32,
    env: BTreeMap<String, String>,
    items: Vec<String>,
}

impl Invocation {
    fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    fn chunk(&self) -> u64 {
        self.var("BATCH_MANAGER_CHUNK").unwrap().parse().unwrap()
    }

    fn attempt(&self) -> u32 {
        self.var("BATCH_MANAGER_ATTEMPT").unwrap().parse().unwrap()
    }
}

/// A command that sleeps until stopped and the `sleep 300` it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Sleeper {
    command: i32,
    grandchild: i32,
}

/// A test's directory: the database, and what the command leaves for the test. Dropped after
/// the server (declare it first), it kills whatever the command started that still runs, so a
/// failing test leaves no process behind.
struct Work {
    directory: tempfile::TempDir,
}

impl Work {
    fn new() -> Self {
        Self {
            directory: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn path(&self) -> &Path {
        self.directory.path()
    }

    fn db(&self) -> PathBuf {
        self.path().join("jobs.db")
    }

    fn command(&self) -> String {
        shell_words::join(["python3", SCRIPT, self.path().to_str().unwrap()])
    }

    /// `serve` with both tasks as the command, polling from 1 s on, and `extra` flags.
    fn serve(&self, extra: &[&str]) -> ServerProcess {
        let command = self.command();
        let mut args = vec![
            "--task1-command",
            &command,
            "--task2-command",
            &command,
            "--job-poll-interval",
            "1",
        ];
        args.extend_from_slice(extra);
        ServerProcess::start_with(
            &self.db(),
            Launch {
                args: &args,
                ..Launch::default()
            },
        )
    }

    /// Every invocation recorded so far, in the order they started.
    fn invocations(&self) -> Vec<Invocation> {
        let text =
            std::fs::read_to_string(self.path().join("invocations.jsonl")).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| serde_json::from_str(line).expect("an invocation record"))
            .collect()
    }

    /// The invocations of one task, in the order they started.
    fn runs(&self, task: &str) -> Vec<Invocation> {
        self.invocations()
            .into_iter()
            .filter(|run| run.var("BATCH_MANAGER_TASK") == Some(task))
            .collect()
    }

    /// The sleeping commands that wrote their pids so far.
    fn sleepers(&self) -> Vec<Sleeper> {
        let Ok(entries) = std::fs::read_dir(self.path().join("pids")) else {
            return Vec::new();
        };
        let mut sleepers: Vec<Sleeper> = entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_none())
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap();
                let pids: Vec<i32> = text
                    .split_whitespace()
                    .map(|pid| pid.parse().unwrap())
                    .collect();
                Sleeper {
                    command: pids[0],
                    grandchild: pids[1],
                }
            })
            .collect();
        sleepers.sort();
        sleepers
    }

    /// Every pid the command reported: its own runs and the grandchildren they started.
    fn all_pids(&self) -> BTreeSet<i32> {
        let mut pids: BTreeSet<i32> = self.invocations().iter().map(|run| run.pid).collect();
        for sleeper in self.sleepers() {
            pids.extend([sleeper.command, sleeper.grandchild]);
        }
        pids
    }

    /// Waits until no process the command reported runs; panics after [`WAIT_LIMIT`].
    async fn wait_until_no_process_left(&self) {
        let pids = self.all_pids();
        assert!(!pids.is_empty(), "the command reported no process");
        wait_until("every process of the command to end", || {
            let running: Vec<i32> = pids
                .iter()
                .copied()
                .filter(|pid| is_running(*pid))
                .collect();
            running.is_empty().then_some(())
        })
        .await;
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for pid in self.all_pids() {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|line| String::from_utf8_lossy(&line).replace('\0', " "))
                .is_ok_and(|line| line.contains(SCRIPT) || line.starts_with("sleep 300"));
            if ours && is_running(pid) {
                // SAFETY: kill takes two integers.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Polls until `check` gives a value; panics after [`WAIT_LIMIT`], naming `what`.
async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn strings(raw: &[&str]) -> Vec<String> {
    raw.iter().map(|id| (*id).to_owned()).collect()
}

/// Item ID, status, error and attempts of every item, in submission order.
async fn outcomes(
    client: &mut pb::batch_manager_client::BatchManagerClient<tonic::transport::Channel>,
    batch_id: &str,
) -> Vec<(String, pb::ItemStatus, String, u32)> {
    all_items(client, batch_id, pb::ItemStatus::Unspecified)
        .await
        .into_iter()
        .map(|item| {
            let status = item.status();
            (item.item_id, status, item.error, item.attempts)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_task_fails_items_by_name_and_succeeds_the_rest() {
    let work = Work::new();
    let server = work.serve(&[]);
    let mut client = connect(server.grpc_addr).await;
    let mut ids = uuids(8);
    ids.insert(2, "bad-first".to_owned());
    ids.push("bad-last".to_owned());
    client
        .submit_batch(submit_request("named-failures", ids.clone(), 4))
        .await
        .unwrap();

    let batch = wait_terminal(&mut client, "named-failures").await;
    assert_eq!(batch.status(), pb::BatchStatus::CompletedWithFailures);
    assert_eq!(batch.total_items, 10);
    assert_eq!(batch.succeeded_items, 8);
    assert_eq!(batch.failed_items, 2);
    assert_eq!(batch.pending_items, 0);
    assert_eq!(batch.cancelled_items, 0);
    assert_eq!((batch.completed_chunks, batch.total_chunks), (3, 3));
    let failed: Vec<(String, String)> =
        all_items(&mut client, "named-failures", pb::ItemStatus::Failed)
            .await
            .into_iter()
            .map(|item| (item.item_id, item.error))
            .collect();
    assert_eq!(
        failed,
        [
            ("bad-first".to_owned(), "bad item bad-first".to_owned()),
            ("bad-last".to_owned(), "bad item bad-last".to_owned()),
        ]
    );
    let succeeded = all_items(&mut client, "named-failures", pb::ItemStatus::Succeeded).await;
    assert_eq!(succeeded.len(), 8);
    assert!(succeeded.iter().all(|item| item.error.is_empty()));

    let batch_id = BatchId::parse("named-failures").unwrap();
    for (task, name) in [(TaskName::Task1, "task1"), (TaskName::Task2, "task2")] {
        let mut runs = work.runs(name);
        runs.sort_by_key(Invocation::chunk);
        assert_eq!(runs.len(), 3, "one {name} run per chunk: {runs:?}");
        for (chunk, (run, items)) in runs.iter().zip(ids.chunks(4)).enumerate() {
            let chunk = chunk as u64;
            assert_eq!(run.items, items, "the chunk's items on stdin, in order");
            assert_eq!(run.var("BATCH_MANAGER_BATCH_ID"), Some("named-failures"));
            assert_eq!(run.var("BATCH_MANAGER_CHUNK"), Some(&*chunk.to_string()));
            assert_eq!(run.var("BATCH_MANAGER_ATTEMPT"), Some("0"));
            assert_eq!(
                run.var("BATCH_MANAGER_JOB_NAME"),
                Some(&*job_name(&batch_id, chunk, 0, task))
            );
            assert_eq!(run.var("BATCH_MANAGER_PROCESS_NAME"), None);
            assert_eq!(run.var("BATCH_MANAGER_CLIENT_NAME"), None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_fails_its_first_attempt_succeeds_on_the_second() {
    let work = Work::new();
    let server = work.serve(&[]);
    let mut client = connect(server.grpc_addr).await;
    let ids = strings(&["steady-1", "flaky", "steady-2", "steady-3"]);
    client
        .submit_batch(submit_request("flaky-batch", ids.clone(), 2))
        .await
        .unwrap();

    let batch = wait_terminal(&mut client, "flaky-batch").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!(batch.succeeded_items, 4);
    assert_eq!(batch.failed_items, 0);
    assert_eq!(batch.pending_items, 0);
    assert_eq!(
        outcomes(&mut client, "flaky-batch").await,
        [
            (
                "steady-1".to_owned(),
                pb::ItemStatus::Succeeded,
                String::new(),
                2
            ),
            (
                "flaky".to_owned(),
                pb::ItemStatus::Succeeded,
                String::new(),
                2
            ),
            (
                "steady-2".to_owned(),
                pb::ItemStatus::Succeeded,
                String::new(),
                1
            ),
            (
                "steady-3".to_owned(),
                pb::ItemStatus::Succeeded,
                String::new(),
                1
            ),
        ]
    );

    assert_eq!(work.runs("task1").len(), 2, "task 1 ran once per chunk");
    let runs = work.runs("task2");
    let attempts_of = |chunk: u64| -> Vec<u32> {
        runs.iter()
            .filter(|run| run.chunk() == chunk)
            .map(Invocation::attempt)
            .collect()
    };
    assert_eq!(attempts_of(0), [0, 1], "{runs:?}");
    assert_eq!(attempts_of(1), [0], "{runs:?}");
    let flaky_runs: Vec<&Invocation> = runs.iter().filter(|run| run.chunk() == 0).collect();
    assert!(flaky_runs.iter().all(|run| run.items == ids[..2]));
    assert_ne!(
        flaky_runs[0].var("BATCH_MANAGER_JOB_NAME"),
        flaky_runs[1].var("BATCH_MANAGER_JOB_NAME"),
        "each attempt is its own job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_deadline_is_stopped_and_its_items_fail_timed_out() {
    let work = Work::new();
    let server = work.serve(&["--task-timeout", "2"]);
    let mut client = connect(server.grpc_addr).await;
    client
        .submit_batch(submit_request(
            "deadline",
            strings(&["sleepy", "beside-sleepy"]),
            2,
        ))
        .await
        .unwrap();

    let batch = wait_terminal(&mut client, "deadline").await;
    assert_eq!(batch.status(), pb::BatchStatus::Failed, "{batch:?}");
    assert_eq!(batch.failed_items, 2);
    assert_eq!(batch.succeeded_items, 0);
    assert_eq!(batch.pending_items, 0);
    let timed_out = "timed out after 2 s".to_owned();
    assert_eq!(
        outcomes(&mut client, "deadline").await,
        [
            (
                "sleepy".to_owned(),
                pb::ItemStatus::Failed,
                timed_out.clone(),
                3
            ),
            (
                "beside-sleepy".to_owned(),
                pb::ItemStatus::Failed,
                timed_out,
                3
            ),
        ]
    );
    let attempts: Vec<u32> = work.runs("task2").iter().map(Invocation::attempt).collect();
    assert_eq!(attempts, [0, 1, 2]);
    assert_eq!(
        work.sleepers().len(),
        3,
        "every attempt started its grandchild"
    );
    work.wait_until_no_process_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_commands_and_their_process_groups() {
    let work = Work::new();
    let server = work.serve(&["--concurrency", "2"]);
    let mut client = connect(server.grpc_addr).await;
    let ids: Vec<String> = (0..6)
        .flat_map(|chunk| [format!("sleepy-{chunk}"), format!("beside-{chunk}")])
        .collect();
    client
        .submit_batch(submit_request("cancelled", ids.clone(), 2))
        .await
        .unwrap();
    let sleepers = wait_until("two sleeping commands", || {
        let sleepers = work.sleepers();
        (sleepers.len() == 2).then_some(sleepers)
    })
    .await;
    for sleeper in &sleepers {
        assert!(is_running(sleeper.command) && is_running(sleeper.grandchild));
    }

    // Both command slots are held by the sleepers: whatever starts from now on started after
    // the cancel.
    let before_cancel = work.invocations().len();
    client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "cancelled".into(),
        })
        .await
        .unwrap();
    work.wait_until_no_process_left().await;
    let batch = wait_terminal(&mut client, "cancelled").await;
    assert_eq!(batch.status(), pb::BatchStatus::Cancelled, "{batch:?}");
    assert_eq!(batch.total_items, ids.len() as u64);
    assert_eq!(batch.succeeded_items, 0);
    assert_eq!(batch.pending_items, 0);
    assert_eq!(
        batch.failed_items, 0,
        "stopped jobs leave their items cancelled"
    );
    assert_eq!(batch.cancelled_items, batch.total_items);
    assert_eq!(batch.completed_chunks, batch.total_chunks);

    let runs = work.invocations();
    assert_eq!(
        runs.len(),
        before_cancel,
        "no command starts after the cancel: {runs:?}"
    );
    let ran_task2: BTreeSet<u64> = work.runs("task2").iter().map(Invocation::chunk).collect();
    assert_eq!(ran_task2.len(), 2, "{runs:?}");

    let listed = outcomes(&mut client, "cancelled").await;
    let listed_ids: Vec<&String> = listed.iter().map(|(id, ..)| id).collect();
    assert_eq!(
        listed_ids,
        ids.iter().collect::<Vec<_>>(),
        "every item once"
    );
    for (_, status, error, _) in &listed {
        assert_eq!(*status, pb::ItemStatus::Cancelled, "{listed:?}");
        assert_eq!(error, "");
    }
    let count = |wanted: pb::ItemStatus| {
        listed
            .iter()
            .filter(|(_, status, ..)| *status == wanted)
            .count() as u64
    };
    assert_eq!(batch.failed_items, count(pb::ItemStatus::Failed));
    assert_eq!(batch.cancelled_items, count(pb::ItemStatus::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_commands_run_reruns_them_after_a_restart() {
    let work = Work::new();
    let ids: Vec<String> = (0..3)
        .flat_map(|chunk| [format!("slow-{chunk}"), uuid::Uuid::new_v4().to_string()])
        .collect();
    let first = work.serve(&[]);
    let mut client = connect(first.grpc_addr).await;
    client
        .submit_batch(submit_request("killed", ids.clone(), 2))
        .await
        .unwrap();
    let before_kill = wait_until("a command for every chunk", || {
        let runs = work.runs("task2");
        (runs.len() == 3).then_some(runs)
    })
    .await;
    let running = before_kill.iter().all(|run| is_running(run.pid));
    first.kill_hard();
    assert!(
        running,
        "a command ended before the kill; the test proves nothing"
    );
    for run in &before_kill {
        wait_until("the killed server's commands to die with it", || {
            (!is_running(run.pid)).then_some(())
        })
        .await;
    }

    let second = work.serve(&[]);
    let mut client = connect(second.grpc_addr).await;
    let batch = wait_terminal(&mut client, "killed").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!(batch.succeeded_items, 6);
    assert_eq!(batch.failed_items, 0);
    assert_eq!(batch.cancelled_items, 0);
    assert_eq!(batch.pending_items, 0);
    assert_eq!((batch.completed_chunks, batch.total_chunks), (3, 3));
    let listed: Vec<(String, pb::ItemStatus)> = outcomes(&mut client, "killed")
        .await
        .into_iter()
        .map(|(id, status, _, _)| (id, status))
        .collect();
    let expected: Vec<(String, pb::ItemStatus)> = ids
        .iter()
        .map(|id| (id.clone(), pb::ItemStatus::Succeeded))
        .collect();
    assert_eq!(listed, expected, "every item once, succeeded");

    let runs = work.runs("task2");
    let after_restart = &runs[before_kill.len()..];
    let mut rerun: Vec<(u64, u32)> = after_restart
        .iter()
        .map(|run| (run.chunk(), run.attempt()))
        .collect();
    rerun.sort();
    assert_eq!(
        rerun,
        [(0, 0), (1, 0), (2, 0)],
        "each interrupted attempt ran once more: {runs:?}"
    );
    for run in after_restart {
        let chunk = run.chunk() as usize;
        assert_eq!(run.items, ids[chunk * 2..chunk * 2 + 2]);
    }
    let mut task1_chunks: Vec<u64> = work.runs("task1").iter().map(Invocation::chunk).collect();
    task1_chunks.sort();
    assert_eq!(
        task1_chunks,
        [0, 1, 2],
        "task 1, finished before the kill, ran once"
    );
    assert!(second.terminate().success());
}

async fn post_run_request(server: &ServerProcess, body: impl Into<reqwest::Body>) -> (u16, Value) {
    post_json_body(format!("http://{}/runrequests", server.http_addr), body).await
}

fn old_submitters_body() -> Value {
    json!({"processname": "APOST", "clientname": "2Sigma", "timestamp": "2018-8-31 12:59:59"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_requests_take_the_old_submitters_body() {
    let work = Work::new();
    let server = work.serve(&[]);
    let mut client = connect(server.grpc_addr).await;

    let before = database_fingerprint(&work.db());
    let refused = [
        (
            json!({"clientname": "2Sigma", "timestamp": "2018-8-31 12:59:59"}),
            "processname: is required",
        ),
        (
            json!({"processname": "APOST", "clientname": "2 Sigma!", "timestamp": "2018-8-31 12:59:59"}),
            "clientname: must hold only letters, digits, '-' and '_'",
        ),
        (
            json!({"processname": "P".repeat(65), "clientname": "2Sigma"}),
            "processname: must be at most 64 characters",
        ),
        (
            json!({"processname": "APOST", "clientname": "2Sigma", "timestamp": 20180831}),
            "timestamp: must be a string",
        ),
    ];
    for (body, message) in refused {
        let (status, reply) = post_run_request(&server, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(
            (status, reply),
            (400, json!({ "message": message })),
            "{body}"
        );
    }
    let (status, reply) = post_run_request(&server, "processname=APOST&clientname=2Sigma").await;
    assert_eq!(status, 400, "{reply}");
    let message = reply["message"].as_str().expect("a message");
    assert!(message.starts_with("body: is not valid JSON"), "{message}");
    assert_eq!(
        database_fingerprint(&work.db()),
        before,
        "refused requests write nothing"
    );
    assert!(work.invocations().is_empty());

    let (status, reply) =
        post_run_request(&server, serde_json::to_vec(&old_submitters_body()).unwrap()).await;
    assert_eq!(status, 200, "{reply}");
    let fields: Vec<&String> = reply.as_object().expect("an object").keys().collect();
    assert_eq!(fields, ["runRequestID"]);
    let id = reply["runRequestID"].as_str().expect("a string").to_owned();
    uuid::Uuid::parse_str(&id).expect("runRequestID is a UUID");

    let batch = wait_terminal(&mut client, &id).await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!((batch.total_items, batch.succeeded_items), (1, 1));
    let runs = work.runs("task2");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(
        run.items,
        std::slice::from_ref(&id),
        "stdin is the run request's ID"
    );
    assert_eq!(run.var("BATCH_MANAGER_PROCESS_NAME"), Some("APOST"));
    assert_eq!(run.var("BATCH_MANAGER_CLIENT_NAME"), Some("2Sigma"));
    assert_eq!(
        run.var("BATCH_MANAGER_JOB_NAME"),
        Some(&*format!("APOST-2Sigma-{id}"))
    );
    assert_eq!(run.var("BATCH_MANAGER_BATCH_ID"), Some(&*id));
    assert_eq!(run.var("BATCH_MANAGER_TASK"), Some("task2"));
    assert_eq!(run.var("BATCH_MANAGER_ATTEMPT"), Some("0"));
    // Task 1 keeps its own name, so the two tasks' jobs never share one.
    let task1_runs = work.runs("task1");
    let batch_id = BatchId::parse(id.clone()).unwrap();
    assert_eq!(
        task1_runs[0].var("BATCH_MANAGER_JOB_NAME"),
        Some(&*job_name(&batch_id, 0, 0, TaskName::Task1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_request_to_a_server_without_a_task_command_is_a_conflict() {
    let work = Work::new();
    let server = ServerProcess::start(&work.db());
    let before = database_fingerprint(&work.db());
    let (status, reply) =
        post_run_request(&server, serde_json::to_vec(&old_submitters_body()).unwrap()).await;
    assert_eq!(status, 409, "{reply}");
    let message = reply["message"].as_str().expect("a message");
    assert!(message.contains("--task2-command"), "{message}");
    assert_eq!(database_fingerprint(&work.db()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_runs_the_command_again_for_the_failed_items_only_under_new_job_names() {
    let work = Work::new();
    let server = work.serve(&[]);
    let mut client = connect(server.grpc_addr).await;
    let mut ids = uuids(3);
    ids.insert(1, "bad-again".to_owned());
    client
        .submit_batch(submit_request("redriven-jobs", ids.clone(), 4))
        .await
        .unwrap();
    let first = wait_terminal(&mut client, "redriven-jobs").await;
    assert_eq!(first.status(), pb::BatchStatus::CompletedWithFailures);
    let first_runs = work.runs("task2").len();
    assert_eq!(first_runs, 1);

    let redriven = common::redrive(&mut client, "redriven-jobs", false)
        .await
        .unwrap();
    assert_eq!(redriven.redriven_items, 1);
    let ended = wait_terminal(&mut client, "redriven-jobs").await;
    assert_eq!(ended.status(), pb::BatchStatus::CompletedWithFailures);
    assert_eq!((ended.succeeded_items, ended.failed_items), (3, 1));
    assert_eq!(ended.redrive_count, 1);

    let runs = work.runs("task2");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let again = &runs[1];
    assert_eq!(
        again.items,
        ["bad-again"],
        "only the failed item runs again"
    );
    let batch_id = BatchId::parse("redriven-jobs").unwrap();
    assert_ne!(
        again.var("BATCH_MANAGER_JOB_NAME"),
        Some(&*job_name(&batch_id, 0, 0, TaskName::Task2)),
        "a redrive's job is named apart from the first run's"
    );
    let failed = outcomes(&mut client, "redriven-jobs")
        .await
        .into_iter()
        .find(|(item, ..)| item == "bad-again")
        .unwrap();
    assert_eq!(failed.1, pb::ItemStatus::Failed);
    assert_eq!(failed.2, "bad item bad-again");
    assert_eq!(failed.3, 2, "one attempt per run");
}
