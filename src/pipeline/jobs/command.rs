//! The `command` runner: a task as a program on this machine, in any language.
//!
//! # The contract a command keeps
//!
//! The command line is split into a program and its arguments the way a POSIX shell splits
//! words (quotes and backslashes work; no shell runs, so `$VAR`, `|` and `>` are plain text).
//! It runs once per chunk attempt:
//!
//! - **stdin**: the chunk's item IDs, one per line (an ID never holds a line break);
//! - **environment**: the server's, plus `BATCH_MANAGER_BATCH_ID`, `BATCH_MANAGER_CHUNK` (from
//!   0), `BATCH_MANAGER_ATTEMPT` (0 on the first attempt, then the retry number),
//!   `BATCH_MANAGER_TASK` (`task1` or `task2`), `BATCH_MANAGER_JOB_NAME` (the attempt's
//!   deterministic name), and `BATCH_MANAGER_PROCESS_NAME` / `BATCH_MANAGER_CLIENT_NAME` when
//!   the run request named them;
//! - **exit status 0**: every item succeeded, except those the command printed on stdout as one
//!   JSON object per line, `{"item_id": "...", "error": "..."}`; other stdout lines are ignored
//!   (print progress freely), a failure naming an item that is not in the chunk is logged and
//!   ignored, and an item reported twice keeps its first message (at most 1 KiB is kept);
//! - **any other exit status, or death by a signal**: the whole attempt failed, with the last
//!   non-blank line of stderr as its reason (at most 1 KiB), or the exit status when stderr is
//!   empty. A failed attempt is retried by the state machine with a higher attempt number, so
//!   a command must be safe to run again on the same items;
//! - **stop** (the attempt's deadline passed, or the batch was cancelled): the command's
//!   process group gets SIGTERM, then SIGKILL 10 seconds later if anything is left.
//!
//! Every command runs in its own process group, and no process of it outlives its attempt:
//! when the command exits, whatever it left running in its group is killed, and when the
//! runner is dropped every group still running is killed. A command started by a server that
//! is killed outright (SIGKILL, a crash) gets SIGKILL from the kernel; processes it started in
//! turn should not outlive it (a command that starts helpers should end them when it ends, or
//! ask for the same parent-death signal). A command must not leave its process group
//! (`setsid`) if it wants to be stopped.
//!
//! At most N commands run at once ([`ProcessSlots`], shared by the runners of both tasks);
//! [`JobRunner::submit`] returns at once and the command starts when a slot is free. The
//! runner keeps its jobs in memory: after a server restart it knows none of them, and
//! [`JobRunner::poll`] reports the old handles as [`JobState::Lost`] (the caller runs the
//! attempt again). A finished job is remembered for [`CommandOptions::retention`] (one hour by
//! default) so that a repeated poll or submit of the same attempt sees its result.
//!
//! `examples/task.py` is a complete command in ten lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::output::{for_each_line, FailureCollector, LastLine, MAX_MESSAGE_BYTES};
use super::process::{describe_exit, signal_group, spawn_group_leader, GroupSignal};
use super::{
    expect_runner, items_digest, stop_reason, ItemFailure, JobError, JobHandle, JobRunner, JobSpec,
    JobState, PollRequest, RunnerKind,
};
use crate::domain::ItemId;

/// How long a stopped command has between SIGTERM and SIGKILL, by default.
pub(crate) const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a finished job is remembered, by default.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(60 * 60);
/// How long, after a command's process group is gone, its output is still read: only a
/// process that left the group (`setsid`) can hold the pipes open that long.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The reason given to jobs still running when their runner shuts down.
const SHUTDOWN_REASON: &str = "the server shut down while the command was running";

/// A command line split into its program and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    program: PathBuf,
    args: Vec<String>,
}

impl CommandLine {
    /// Splits `raw` into words (POSIX shell rules, no shell) and finds the program: a word with
    /// a `/` names a file, any other is looked up on `PATH`. Fails naming what is wrong.
    pub fn parse(raw: &str) -> Result<Self, JobError> {
        let words = shell_words::split(raw).map_err(|error| {
            JobError::InvalidSettings(format!("the command line cannot be split: {error}"))
        })?;
        let Some((program, args)) = words.split_first() else {
            return Err(JobError::InvalidSettings(
                "the command line is empty".to_owned(),
            ));
        };
        Ok(Self {
            program: find_program(program)?,
            args: args.to_vec(),
        })
    }

    /// The program, as found.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments after the program.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

fn find_program(program: &str) -> Result<PathBuf, JobError> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(JobError::InvalidSettings(format!(
                "the program {program} does not exist or is not executable"
            )))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|directory| directory.join(program))
        .find(|path| is_executable(path))
        .ok_or_else(|| JobError::InvalidSettings(format!("the program {program} is not on PATH")))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// How many commands may run at once; clones share the same slots.
#[derive(Debug, Clone)]
pub struct ProcessSlots(Arc<Semaphore>);

impl ProcessSlots {
    /// `limit` commands at once (0 is taken as 1).
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Semaphore::new(limit.max(1))))
    }

    async fn acquire(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.0)
            .acquire_owned()
            .await
            .expect("the slots' semaphore is never closed")
    }
}

/// Timings of the command runner.
#[derive(Debug, Clone, Copy)]
pub struct CommandOptions {
    /// Between SIGTERM and SIGKILL when a command is stopped.
    pub stop_grace: Duration,
    /// How long a finished job is remembered.
    pub retention: Duration,
}

impl Default for CommandOptions {
    fn default() -> Self {
        Self {
            stop_grace: DEFAULT_STOP_GRACE,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// Runs one task's command per chunk attempt (see the module documentation).
pub struct CommandRunner {
    command: Arc<CommandLine>,
    slots: ProcessSlots,
    options: CommandOptions,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

/// A job the runner started: shared between the runner and the task that runs it.
struct Job {
    handle: JobHandle,
    spec: JobSpec,
    digest: String,
    phase: watch::Sender<Phase>,
    /// The reason a stop was asked for; set once.
    stop: watch::Sender<Option<String>>,
}

enum Phase {
    WaitingForSlot,
    Running { group: u32 },
    Finished { state: JobState, at: Instant },
}

impl Job {
    fn request_stop(&self, reason: &str) {
        self.stop.send_if_modified(|stop| {
            if stop.is_some() {
                return false;
            }
            *stop = Some(reason.to_owned());
            true
        });
    }

    fn finish(&self, state: JobState) {
        self.phase.send_replace(Phase::Finished {
            state,
            at: Instant::now(),
        });
    }

    fn finished_before(&self, horizon: Instant) -> bool {
        matches!(*self.phase.borrow(), Phase::Finished { at, .. } if at < horizon)
    }
}

impl CommandRunner {
    /// A runner of `command`, starting processes within `slots`.
    pub fn new(command: CommandLine, slots: ProcessSlots, options: CommandOptions) -> Self {
        Self {
            command: Arc::new(command),
            slots,
            options,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<String, Arc<Job>>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one insert or
        // one retain.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn job(&self, handle: &JobHandle) -> Option<Arc<Job>> {
        self.jobs()
            .get(&handle.name)
            .filter(|job| job.handle.job_id == handle.job_id)
            .cloned()
    }

    /// Stops every command still running (SIGTERM, then SIGKILL after the grace period) and
    /// waits until they are gone.
    pub async fn shutdown(&self) {
        let jobs: Vec<Arc<Job>> = self.jobs().values().cloned().collect();
        for job in &jobs {
            job.request_stop(SHUTDOWN_REASON);
        }
        for job in jobs {
            let mut phase = job.phase.subscribe();
            let _ = phase
                .wait_for(|phase| matches!(phase, Phase::Finished { .. }))
                .await;
        }
    }
}

impl Drop for CommandRunner {
    fn drop(&mut self) {
        for job in self.jobs().values() {
            job.request_stop(SHUTDOWN_REASON);
            if let Phase::Running { group } = *job.phase.borrow() {
                signal_group(group, GroupSignal::Kill);
            }
        }
    }
}

#[async_trait]
impl JobRunner for CommandRunner {
    async fn submit(&self, spec: &JobSpec) -> Result<JobHandle, JobError> {
        spec.validate()?;
        let name = spec.name();
        let job = {
            let mut jobs = self.jobs();
            if let Some(horizon) = Instant::now().checked_sub(self.options.retention) {
                jobs.retain(|_, job| !job.finished_before(horizon));
            }
            if let Some(existing) = jobs.get(&name) {
                if existing.digest != spec.items_digest() {
                    return Err(JobError::NameConflict { name });
                }
                return Ok(existing.handle.clone());
            }
            let job = Arc::new(Job {
                handle: JobHandle {
                    runner: RunnerKind::Command,
                    name: name.clone(),
                    job_id: uuid::Uuid::new_v4().to_string(),
                },
                spec: spec.clone(),
                digest: spec.items_digest(),
                phase: watch::Sender::new(Phase::WaitingForSlot),
                stop: watch::Sender::new(None),
            });
            jobs.insert(name, Arc::clone(&job));
            job
        };
        tokio::spawn(run(
            Arc::clone(&job),
            Arc::clone(&self.command),
            self.slots.clone(),
            self.options.stop_grace,
        ));
        Ok(job.handle.clone())
    }

    async fn find(&self, name: &str) -> Result<Option<JobHandle>, JobError> {
        Ok(self.jobs().get(name).map(|job| job.handle.clone()))
    }

    async fn poll(&self, requests: &[PollRequest<'_>]) -> Result<Vec<JobState>, JobError> {
        requests
            .iter()
            .map(|request| {
                expect_runner(request.handle, RunnerKind::Command)?;
                let Some(job) = self.job(request.handle) else {
                    return Ok(JobState::Lost);
                };
                if items_digest(request.items) != job.digest {
                    return Err(JobError::ItemsMismatch {
                        name: job.handle.name.clone(),
                    });
                }
                let state = match &*job.phase.borrow() {
                    Phase::WaitingForSlot | Phase::Running { .. } => JobState::Running,
                    Phase::Finished { state, .. } => state.clone(),
                };
                Ok(state)
            })
            .collect()
    }

    async fn stop(&self, handle: &JobHandle, reason: &str) -> Result<(), JobError> {
        expect_runner(handle, RunnerKind::Command)?;
        match self.job(handle) {
            Some(job) => job.request_stop(&stop_reason(reason)),
            None => tracing::debug!(job = %handle.name, "stop of a job this runner does not know"),
        }
        Ok(())
    }
}

/// Runs one job to its end: waits for a slot, starts the command, feeds it, reads it, stops it
/// when asked, and records the outcome.
async fn run(job: Arc<Job>, command: Arc<CommandLine>, slots: ProcessSlots, grace: Duration) {
    let mut stop = job.stop.subscribe();
    let permit = tokio::select! {
        biased;
        reason = stop_requested(&mut stop) => {
            job.finish(JobState::Failed { reason });
            return;
        }
        permit = slots.acquire() => permit,
    };
    let state = match start(&job, &command).await {
        Ok(child) => supervise(&job, child, &mut stop, grace).await,
        Err(error) => {
            tracing::warn!(job = %job.handle.name, %error, "the command could not start");
            JobState::Failed {
                reason: format!(
                    "the command {} could not start: {error}",
                    command.program.display()
                ),
            }
        }
    };
    drop(permit);
    tracing::debug!(job = %job.handle.name, ?state, "command finished");
    job.finish(state);
}

async fn start(job: &Job, command: &CommandLine) -> std::io::Result<Child> {
    let spec = &job.spec;
    let mut process = tokio::process::Command::new(&command.program);
    process
        .args(&command.args)
        .env("BATCH_MANAGER_BATCH_ID", spec.batch_id.as_str())
        .env("BATCH_MANAGER_CHUNK", spec.chunk.to_string())
        .env("BATCH_MANAGER_ATTEMPT", spec.attempt.to_string())
        .env("BATCH_MANAGER_TASK", spec.task.as_str())
        .env("BATCH_MANAGER_JOB_NAME", &job.handle.name);
    let labels = [
        ("BATCH_MANAGER_PROCESS_NAME", &spec.labels.process_name),
        ("BATCH_MANAGER_CLIENT_NAME", &spec.labels.client_name),
    ];
    for (variable, label) in labels {
        match label {
            Some(value) => process.env(variable, value),
            None => process.env_remove(variable),
        };
    }
    spawn_group_leader(process).await
}

/// Watches a started command until it ends or is stopped, then kills what is left of its group
/// and turns its exit and output into the job's state.
async fn supervise(
    job: &Arc<Job>,
    mut child: Child,
    stop: &mut watch::Receiver<Option<String>>,
    grace: Duration,
) -> JobState {
    let group = child.id().unwrap_or_default();
    job.phase.send_replace(Phase::Running { group });
    let feeder = child.stdin.take().map(|stdin| {
        let items = job.spec.items.clone();
        tokio::spawn(feed(stdin, items))
    });
    let failures = child
        .stdout
        .take()
        .map(|stdout| tokio::spawn(collect_failures(stdout, Arc::clone(job))));
    let last_stderr_line = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(last_line(stderr, job.handle.name.clone())));

    let (status, stopped) = tokio::select! {
        status = child.wait() => (status, None),
        reason = stop_requested(stop) => {
            (terminate(&mut child, group, grace).await, Some(reason))
        }
    };
    // Nothing the command started may outlive it. The group's ID stays reserved while any of
    // its members lives, so this cannot reach an unrelated process.
    signal_group(group, GroupSignal::Kill);
    if let Some(feeder) = feeder {
        feeder.abort();
    }
    let failures = drain(failures).await.unwrap_or_default();
    let last_stderr_line = drain(last_stderr_line).await.flatten();

    if let Some(reason) = stopped {
        return JobState::Failed { reason };
    }
    match status {
        Ok(status) if status.success() => JobState::Succeeded {
            item_failures: failures,
        },
        Ok(status) => JobState::Failed {
            reason: last_stderr_line.unwrap_or_else(|| describe_exit(status)),
        },
        Err(error) => JobState::Failed {
            reason: format!("the command's exit could not be read: {error}"),
        },
    }
}

/// Waits until a stop is asked for, and returns its reason.
async fn stop_requested(stop: &mut watch::Receiver<Option<String>>) -> String {
    let reason = stop
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|reason| reason.clone());
    match reason {
        Some(reason) => reason,
        // The job owns the sender and outlives this wait, so this is never reached; waiting
        // forever is the right answer if it were.
        None => std::future::pending().await,
    }
}

/// SIGTERM to the group, then SIGKILL if the command has not exited after `grace`.
async fn terminate(
    child: &mut Child,
    group: u32,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    signal_group(group, GroupSignal::Terminate);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(group, GroupSignal::Kill);
            child.wait().await
        }
    }
}

/// The result of an output reader, given up on after [`OUTPUT_DRAIN_LIMIT`].
async fn drain<T>(reader: Option<JoinHandle<T>>) -> Option<T> {
    let mut reader = reader?;
    match tokio::time::timeout(OUTPUT_DRAIN_LIMIT, &mut reader).await {
        Ok(result) => result.ok(),
        Err(_) => {
            reader.abort();
            None
        }
    }
}

/// Writes the items to the command's stdin, one per line, and closes it. A command that exits
/// without reading them all is not an error here; its exit status tells.
async fn feed(mut stdin: ChildStdin, items: Vec<ItemId>) {
    let mut input = String::with_capacity(items.iter().map(|item| item.as_str().len() + 1).sum());
    for item in &items {
        input.push_str(item.as_str());
        input.push('\n');
    }
    let _ = stdin.write_all(input.as_bytes()).await;
    let _ = stdin.shutdown().await;
}

async fn collect_failures(stdout: ChildStdout, job: Arc<Job>) -> Vec<ItemFailure> {
    let mut collector = FailureCollector::new(&job.handle.name, &job.spec.items);
    let read = for_each_line(
        stdout,
        super::output::MAX_STDOUT_LINE_BYTES,
        |line, length| collector.line(line, length),
    )
    .await;
    if let Err(error) = read {
        tracing::warn!(job = %job.handle.name, %error, "reading the command's stdout failed");
    }
    collector.finish(&job.spec.items)
}

async fn last_line(stderr: tokio::process::ChildStderr, job_name: String) -> Option<String> {
    let mut last = LastLine::default();
    let read = for_each_line(stderr, MAX_MESSAGE_BYTES, |line, _| {
        tracing::debug!(job = %job_name, line = %String::from_utf8_lossy(line), "command stderr");
        last.line(line);
    })
    .await;
    if let Err(error) = read {
        tracing::warn!(job = %job_name, %error, "reading the command's stderr failed");
    }
    last.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_splits_like_a_shell_without_running_one() {
        let line = CommandLine::parse(r#"sh -c 'echo "$1" | cat' "two words" $HOME"#).unwrap();
        assert!(line.program().ends_with("sh"), "{:?}", line.program());
        assert_eq!(
            line.args(),
            ["-c", r#"echo "$1" | cat"#, "two words", "$HOME"]
        );
    }

    #[test]
    fn a_bad_command_line_is_refused_naming_the_problem() {
        let cases = [
            ("", "the command line is empty"),
            ("   ", "the command line is empty"),
            ("python3 'unclosed", "the command line cannot be split"),
            (
                "no-such-program-for-batch-manager --flag",
                "the program no-such-program-for-batch-manager is not on PATH",
            ),
            (
                "./no/such/script.py",
                "the program ./no/such/script.py does not exist or is not executable",
            ),
        ];
        for (raw, expected) in cases {
            let error = CommandLine::parse(raw).unwrap_err().to_string();
            assert!(error.contains(expected), "{raw:?}: {error}");
        }
    }
}
