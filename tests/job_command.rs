//! The `command` job runner with real processes: a Python script that fails items by name,
//! fails its first attempt, sleeps past a deadline, ignores SIGTERM, and starts processes of its
//! own; the shipped `examples/task.py`; and a server killed outright (this test binary started
//! again as a child process).

mod common;

use common::process::is_running;
use std::path::Path;
use std::time::{Duration, Instant};

use batch_manager::domain::{BatchId, ItemId};
use batch_manager::pipeline::jobs::command::{
    CommandLine, CommandOptions, CommandRunner, ProcessSlots,
};
use batch_manager::pipeline::jobs::{
    ItemFailure, JobError, JobHandle, JobRunner, JobSpec, JobState, PollRequest, RunLabels,
    RunnerKind, TaskName,
};

/// The test command. Its first argument is a working directory for the files it leaves for the
/// test; what it does depends on the item IDs it reads.
const SCRIPT: &str = r#"
import json, os, signal, subprocess, sys, time

work = sys.argv[1]
attempt = int(os.environ["BATCH_MANAGER_ATTEMPT"])
items = [line.rstrip("\n") for line in sys.stdin]

def path(name):
    return os.path.join(work, name)

def write(name, text):
    with open(path(name) + ".tmp", "w") as f:
        f.write(text)
    os.rename(path(name) + ".tmp", path(name))

def wait_for(condition):
    deadline = time.time() + 30
    while not condition() and time.time() < deadline:
        time.sleep(0.01)

def fail(item, error):
    print(json.dumps({"item_id": item, "error": error}), flush=True)

def start_stubborn_grandchild(name):
    ready = path(name + ".ready")
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').close(); time.sleep(600)", ready])
    wait_for(lambda: os.path.exists(ready))
    return grandchild.pid

with open(path("starts"), "a") as f:
    f.write(f"{os.getpid()}\n")
print(f"working on {len(items)} items", flush=True)
print("[1, 2, 3]", flush=True)
for item in items:
    if item.startswith("fail-"):
        fail(item, f"rejected {item}")
    elif item == "stranger":
        fail("not-in-this-chunk", "a failure for an item of another chunk")
    elif item == "env":
        names = ["BATCH_MANAGER_BATCH_ID", "BATCH_MANAGER_CHUNK", "BATCH_MANAGER_ATTEMPT",
                 "BATCH_MANAGER_TASK", "BATCH_MANAGER_JOB_NAME", "BATCH_MANAGER_PROCESS_NAME",
                 "BATCH_MANAGER_CLIENT_NAME"]
        fail(item, json.dumps({n: os.environ[n] for n in names if n in os.environ}, sort_keys=True))
    elif item == "stdin":
        fail(item, json.dumps(items))
    elif item == "crash-first" and attempt == 0:
        print("starting", file=sys.stderr)
        print("first attempt always fails\n\n", file=sys.stderr)
        sys.exit(3)
    elif item == "exit-silently":
        sys.exit(4)
    elif item == "long-stderr":
        print("e" * 5000, file=sys.stderr)
        sys.exit(1)
    elif item == "self-kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif item == "orphan":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        write("orphan.pid", str(child.pid))
    elif item in ("sleep", "stubborn-sleep", "graceful-sleep"):
        if item == "stubborn-sleep":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if item == "graceful-sleep":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        grandchild = start_stubborn_grandchild(item)
        write(item + ".pids", f"{os.getpid()} {grandchild}")
        time.sleep(600)
    elif item.startswith("concurrent-of-"):
        total = int(item.removeprefix("concurrent-of-"))
        running = path("running")
        os.makedirs(running, exist_ok=True)
        marker = os.path.join(running, str(os.getpid()))
        open(marker, "w").close()
        started = lambda: len(open(path("starts")).read().split())
        wait_for(lambda: len(os.listdir(running)) >= 2 or started() >= total)
        peak = len(os.listdir(running))
        time.sleep(0.05)
        peak = max(peak, len(os.listdir(running)))
        with open(path("peaks"), "a") as f:
            f.write(f"{peak}\n")
        os.remove(marker)
"#;

/// Longest a test waits for a job or a process.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

struct Fixture {
    directory: tempfile::TempDir,
    command: CommandLine,
}

impl Fixture {
    /// A working directory whose name has a space and a quote (so the command line's quoting
    /// is exercised) and the script in it.
    fn new() -> Self {
        let directory = tempfile::Builder::new()
            .prefix("job command 'work' ")
            .tempdir()
            .expect("temporary directory");
        let script = directory.path().join("task.py");
        std::fs::write(&script, SCRIPT).expect("write the script");
        let line = shell_words::join([
            "python3",
            script.to_str().unwrap(),
            directory.path().to_str().unwrap(),
        ]);
        Self {
            command: CommandLine::parse(&line).expect("command line"),
            directory,
        }
    }

    fn work(&self) -> &Path {
        self.directory.path()
    }

    fn runner(&self, limit: usize) -> CommandRunner {
        CommandRunner::new(
            self.command.clone(),
            ProcessSlots::new(limit),
            CommandOptions {
                stop_grace: Duration::from_millis(300),
                ..CommandOptions::default()
            },
        )
    }

    /// The pids of the processes started so far, in order.
    fn starts(&self) -> Vec<u32> {
        std::fs::read_to_string(self.work().join("starts"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|pid| pid.parse().unwrap())
            .collect()
    }

    /// The pids a sleeping command wrote: the command's own and its grandchild's.
    async fn sleeping_pids(&self, item: &str) -> Sleepers {
        let file = self.work().join(format!("{item}.pids"));
        let text = wait_until(|| std::fs::read_to_string(&file).ok()).await;
        let pids: Vec<i32> = text
            .split_whitespace()
            .map(|pid| pid.parse().unwrap())
            .collect();
        Sleepers {
            command: pids[0],
            grandchild: pids[1],
        }
    }
}

/// A sleeping command and its grandchild; killed when dropped, so a failing test leaves no
/// process behind.
struct Sleepers {
    command: i32,
    grandchild: i32,
}

impl Sleepers {
    async fn wait_until_gone(&self) {
        wait_until_gone(self.command).await;
        wait_until_gone(self.grandchild).await;
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for pid in [self.command, self.grandchild] {
            if is_running(pid) {
                kill(pid);
            }
        }
    }
}

fn items(raw: &[&str]) -> Vec<ItemId> {
    raw.iter().map(|id| ItemId::parse(*id).unwrap()).collect()
}

fn spec(raw_items: &[&str], attempt: u32) -> JobSpec {
    JobSpec {
        batch_id: BatchId::parse("job-command-batch").unwrap(),
        chunk: 3,
        attempt,
        task: TaskName::Task1,
        items: items(raw_items),
        labels: RunLabels::default(),
    }
}

fn failure(item: &str, message: &str) -> ItemFailure {
    ItemFailure {
        item_id: ItemId::parse(item).unwrap(),
        message: message.to_owned(),
    }
}

/// Polls until `check` gives a value; panics after [`WAIT_LIMIT`].
async fn wait_until<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn poll_one(runner: &CommandRunner, handle: &JobHandle, spec: &JobSpec) -> JobState {
    let states = runner
        .poll(&[PollRequest {
            handle,
            items: &spec.items,
        }])
        .await
        .expect("poll");
    states.into_iter().next().expect("one state")
}

/// Polls the job until it has ended; panics after [`WAIT_LIMIT`].
async fn final_state(runner: &CommandRunner, handle: &JobHandle, spec: &JobSpec) -> JobState {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let state = poll_one(runner, handle, spec).await;
        if state.is_final() {
            return state;
        }
        assert!(Instant::now() < deadline, "job {} did not end", handle.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_to_end(runner: &CommandRunner, spec: &JobSpec) -> JobState {
    let handle = runner.submit(spec).await.expect("submit");
    final_state(runner, &handle, spec).await
}

async fn wait_until_gone(pid: i32) {
    wait_until(|| (!is_running(pid)).then_some(())).await;
}

fn kill(pid: i32) {
    // SAFETY: kill takes two integers.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[tokio::test]
async fn a_command_fails_the_items_it_names_and_succeeds_the_rest() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let spec = spec(&["a", "fail-b", "stranger", "c", "fail-d"], 0);
    let state = run_to_end(&runner, &spec).await;
    assert_eq!(
        state,
        JobState::Succeeded {
            item_failures: vec![
                failure("fail-b", "rejected fail-b"),
                failure("fail-d", "rejected fail-d"),
            ]
        }
    );
}

#[tokio::test]
async fn a_command_reads_its_items_on_stdin_and_its_attempt_in_its_environment() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let mut spec = spec(&["env", "stdin", "ünïcode item"], 2);
    spec.batch_id = BatchId::parse("batch é/1").unwrap();
    spec.chunk = 7;
    spec.task = TaskName::Task2;
    spec.labels.process_name = Some("nightly run".to_owned());
    let state = run_to_end(&runner, &spec).await;
    let environment = serde_json::json!({
        "BATCH_MANAGER_ATTEMPT": "2",
        "BATCH_MANAGER_BATCH_ID": "batch é/1",
        "BATCH_MANAGER_CHUNK": "7",
        "BATCH_MANAGER_JOB_NAME": spec.name(),
        "BATCH_MANAGER_PROCESS_NAME": "nightly run",
        "BATCH_MANAGER_TASK": "task2",
    });
    let JobState::Succeeded { item_failures } = state else {
        panic!("the command should succeed: {state:?}");
    };
    assert_eq!(item_failures.len(), 2, "{item_failures:?}");
    let reported: serde_json::Value = serde_json::from_str(&item_failures[0].message).unwrap();
    assert_eq!(reported, environment);
    assert_eq!(
        item_failures[1],
        failure("stdin", r#"["env", "stdin", "\u00fcn\u00efcode item"]"#)
    );
}

#[tokio::test]
async fn a_first_attempt_that_exits_non_zero_fails_with_its_last_stderr_line_and_a_retry_succeeds()
{
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let first = spec(&["crash-first", "fail-x"], 0);
    assert_eq!(
        run_to_end(&runner, &first).await,
        JobState::Failed {
            reason: "first attempt always fails".to_owned()
        }
    );
    let retry = spec(&["crash-first", "fail-x"], 1);
    assert_eq!(
        run_to_end(&runner, &retry).await,
        JobState::Succeeded {
            item_failures: vec![failure("fail-x", "rejected fail-x")]
        }
    );
}

#[tokio::test]
async fn a_failure_without_stderr_is_described_by_the_exit_status_or_signal() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    assert_eq!(
        run_to_end(&runner, &spec(&["exit-silently"], 0)).await,
        JobState::Failed {
            reason: "the command exited with status 4".to_owned()
        }
    );
    assert_eq!(
        run_to_end(&runner, &spec(&["self-kill"], 1)).await,
        JobState::Failed {
            reason: "the command was killed by signal 9 (SIGKILL)".to_owned()
        }
    );
}

#[tokio::test]
async fn a_long_stderr_line_is_cut_to_one_kibibyte() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    assert_eq!(
        run_to_end(&runner, &spec(&["long-stderr"], 0)).await,
        JobState::Failed {
            reason: "e".repeat(1024)
        }
    );
}

#[tokio::test]
async fn stop_kills_the_whole_process_group_even_when_it_ignores_sigterm() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let spec = spec(&["stubborn-sleep"], 0);
    let handle = runner.submit(&spec).await.unwrap();
    let sleepers = fixture.sleeping_pids("stubborn-sleep").await;
    assert_eq!(poll_one(&runner, &handle, &spec).await, JobState::Running);
    runner
        .stop(&handle, "  the attempt's deadline passed\n")
        .await
        .unwrap();
    assert_eq!(
        final_state(&runner, &handle, &spec).await,
        JobState::Failed {
            reason: "the attempt's deadline passed".to_owned()
        }
    );
    sleepers.wait_until_gone().await;
}

#[tokio::test]
async fn a_stopped_command_that_exits_cleanly_still_fails_with_the_stop_reason() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let spec = spec(&["graceful-sleep"], 0);
    let handle = runner.submit(&spec).await.unwrap();
    let sleepers = fixture.sleeping_pids("graceful-sleep").await;
    runner.stop(&handle, "batch cancelled").await.unwrap();
    runner.stop(&handle, "stopped twice").await.unwrap();
    assert_eq!(
        final_state(&runner, &handle, &spec).await,
        JobState::Failed {
            reason: "batch cancelled".to_owned()
        }
    );
    sleepers.wait_until_gone().await;
}

#[tokio::test]
async fn a_finished_command_leaves_no_process_behind() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    assert_eq!(
        run_to_end(&runner, &spec(&["orphan"], 0)).await,
        JobState::Succeeded {
            item_failures: vec![]
        }
    );
    let orphan: i32 = std::fs::read_to_string(fixture.work().join("orphan.pid"))
        .unwrap()
        .parse()
        .unwrap();
    wait_until_gone(orphan).await;
}

#[tokio::test]
async fn submitting_the_same_attempt_twice_starts_one_process() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let spec = spec(&["fail-a", "b"], 0);
    let first = runner.submit(&spec).await.unwrap();
    let second = runner.submit(&spec).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.runner, RunnerKind::Command);
    assert_eq!(first.name, spec.name());
    assert_eq!(
        runner.find(&spec.name()).await.unwrap(),
        Some(first.clone())
    );
    let state = final_state(&runner, &first, &spec).await;
    assert_eq!(
        runner.submit(&spec).await.unwrap(),
        first,
        "a finished job is found too"
    );
    assert_eq!(
        state,
        JobState::Succeeded {
            item_failures: vec![failure("fail-a", "rejected fail-a")]
        }
    );
    assert_eq!(fixture.starts().len(), 1);
    assert_eq!(runner.find("bm-no-such-job").await.unwrap(), None);
    let mut other_items = spec.clone();
    other_items.items.reverse();
    assert!(matches!(
        runner.submit(&other_items).await,
        Err(JobError::NameConflict { .. })
    ));
}

#[tokio::test]
async fn no_more_commands_run_at_once_than_the_slots_allow() {
    let fixture = Fixture::new();
    let slots = ProcessSlots::new(2);
    // Task 1 and task 2 share the slots.
    let task1 = CommandRunner::new(
        fixture.command.clone(),
        slots.clone(),
        CommandOptions::default(),
    );
    let task2 = CommandRunner::new(fixture.command.clone(), slots, CommandOptions::default());
    let mut jobs = Vec::new();
    for chunk in 0..6 {
        let mut spec = spec(&["concurrent-of-6"], 0);
        spec.chunk = chunk;
        let runner = if chunk % 2 == 0 { &task1 } else { &task2 };
        let handle = runner.submit(&spec).await.unwrap();
        jobs.push((runner, handle, spec));
    }
    for (runner, handle, spec) in &jobs {
        assert_eq!(
            final_state(runner, handle, spec).await,
            JobState::Succeeded {
                item_failures: vec![]
            }
        );
    }
    let peaks: Vec<usize> = std::fs::read_to_string(fixture.work().join("peaks"))
        .unwrap()
        .split_whitespace()
        .map(|peak| peak.parse().unwrap())
        .collect();
    assert_eq!(peaks.len(), 6);
    assert_eq!(peaks.iter().max(), Some(&2), "{peaks:?}");
}

#[tokio::test]
async fn a_job_stopped_while_waiting_for_a_slot_never_starts() {
    let fixture = Fixture::new();
    let runner = fixture.runner(1);
    let sleeping = spec(&["sleep"], 0);
    let sleeping_handle = runner.submit(&sleeping).await.unwrap();
    let _sleepers = fixture.sleeping_pids("sleep").await;
    let waiting = spec(&["fail-never-started"], 1);
    let waiting_handle = runner.submit(&waiting).await.unwrap();
    assert_eq!(
        poll_one(&runner, &waiting_handle, &waiting).await,
        JobState::Running
    );
    runner
        .stop(&waiting_handle, "batch cancelled")
        .await
        .unwrap();
    assert_eq!(
        final_state(&runner, &waiting_handle, &waiting).await,
        JobState::Failed {
            reason: "batch cancelled".to_owned()
        }
    );
    runner
        .stop(&sleeping_handle, "batch cancelled")
        .await
        .unwrap();
    final_state(&runner, &sleeping_handle, &sleeping).await;
    assert_eq!(fixture.starts().len(), 1);
}

#[tokio::test]
async fn a_handle_the_runner_does_not_know_is_lost() {
    let fixture = Fixture::new();
    let spec = spec(&["a"], 0);
    let before_restart = {
        let runner = fixture.runner(2);
        let handle = runner.submit(&spec).await.unwrap();
        final_state(&runner, &handle, &spec).await;
        handle
    };
    let restarted = fixture.runner(2);
    assert_eq!(
        poll_one(&restarted, &before_restart, &spec).await,
        JobState::Lost
    );
    // The attempt runs again under the same name; the old handle stays lost.
    let again = restarted.submit(&spec).await.unwrap();
    assert_eq!(again.name, before_restart.name);
    assert_ne!(again.job_id, before_restart.job_id);
    assert_eq!(
        poll_one(&restarted, &before_restart, &spec).await,
        JobState::Lost
    );
    let made_up = JobHandle {
        runner: RunnerKind::Command,
        name: "bm-made-up".to_owned(),
        job_id: "0".to_owned(),
    };
    assert_eq!(poll_one(&restarted, &made_up, &spec).await, JobState::Lost);
    restarted.stop(&made_up, "nothing to stop").await.unwrap();
}

#[tokio::test]
async fn polling_with_other_items_or_another_runner_s_handle_is_an_error() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let spec = spec(&["a", "b"], 0);
    let handle = runner.submit(&spec).await.unwrap();
    let other_items = items(&["b", "a"]);
    let error = runner
        .poll(&[PollRequest {
            handle: &handle,
            items: &other_items,
        }])
        .await
        .unwrap_err();
    assert!(matches!(error, JobError::ItemsMismatch { .. }), "{error}");
    let foreign = JobHandle {
        runner: RunnerKind::AwsBatch,
        ..handle.clone()
    };
    let error = runner
        .poll(&[PollRequest {
            handle: &foreign,
            items: &spec.items,
        }])
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "job {} belongs to the aws-batch runner, not the command runner",
            handle.name
        )
    );
    final_state(&runner, &handle, &spec).await;
}

#[tokio::test]
async fn an_invalid_spec_is_refused_and_starts_nothing() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let mut empty = spec(&[], 0);
    let error = runner.submit(&empty).await.unwrap_err();
    assert_eq!(error.to_string(), "items: a job needs at least one item");
    empty.items = items(&["a"]);
    empty.labels.client_name = Some("tab\there".to_owned());
    assert!(runner.submit(&empty).await.is_err());
    assert!(fixture.starts().is_empty());
}

#[tokio::test]
async fn dropping_the_runner_kills_its_commands() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    runner.submit(&spec(&["stubborn-sleep"], 0)).await.unwrap();
    let sleepers = fixture.sleeping_pids("stubborn-sleep").await;
    drop(runner);
    sleepers.wait_until_gone().await;
}

#[tokio::test]
async fn shutdown_stops_every_command_and_waits_for_them() {
    let fixture = Fixture::new();
    let runner = fixture.runner(2);
    let spec = spec(&["sleep"], 0);
    let handle = runner.submit(&spec).await.unwrap();
    let sleepers = fixture.sleeping_pids("sleep").await;
    runner.shutdown().await;
    assert!(!is_running(sleepers.command));
    wait_until_gone(sleepers.grandchild).await;
    assert_eq!(
        poll_one(&runner, &handle, &spec).await,
        JobState::Failed {
            reason: "the server shut down while the command was running".to_owned()
        }
    );
}

#[tokio::test]
async fn the_example_task_command_keeps_the_contract() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/task.py");
    let runner = CommandRunner::new(
        CommandLine::parse(&shell_words::join(["python3", example])).unwrap(),
        ProcessSlots::new(1),
        CommandOptions::default(),
    );
    let spec = spec(&["order-1", "order-10", "order-11"], 0);
    assert_eq!(
        run_to_end(&runner, &spec).await,
        JobState::Succeeded {
            item_failures: vec![failure("order-10", "rejected by my_task.py in chunk 3")]
        }
    );
}

/// The command line the server started by [`a_killed_server_leaves_no_command_running`] runs.
const SERVER_COMMAND: &str = "JOB_COMMAND_TEST_SERVER_COMMAND";

/// The server side of [`a_killed_server_leaves_no_command_running`]: started by it as a child
/// process, runs a command that sleeps and waits to be killed.
#[tokio::test]
#[ignore = "started as a child process by a_killed_server_leaves_no_command_running"]
async fn server_running_a_sleeping_command() {
    let command = std::env::var(SERVER_COMMAND).expect("the command to run");
    let runner = CommandRunner::new(
        CommandLine::parse(&command).unwrap(),
        ProcessSlots::new(1),
        CommandOptions::default(),
    );
    let spec = spec(&["sleep"], 0);
    let handle = runner.submit(&spec).await.unwrap();
    tokio::time::sleep(WAIT_LIMIT).await;
    panic!("the server was not killed; job {}", handle.name);
}

#[tokio::test]
async fn a_killed_server_leaves_no_command_running() {
    let fixture = Fixture::new();
    let line = shell_words::join([
        "python3",
        fixture.work().join("task.py").to_str().unwrap(),
        fixture.work().to_str().unwrap(),
    ]);
    let mut server = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "server_running_a_sleeping_command",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(SERVER_COMMAND, &line)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the server");
    let sleepers = fixture.sleeping_pids("sleep").await;
    server.kill().expect("SIGKILL the server");
    server.wait().expect("reap the server");
    wait_until_gone(sleepers.command).await;
    // The kernel's parent-death signal reaches the command itself; what it started is its own
    // to end (see the runner's documentation), so the test ends it.
    kill(sleepers.grandchild);
    wait_until_gone(sleepers.grandchild).await;
}
