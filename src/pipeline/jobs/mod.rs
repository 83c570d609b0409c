//! External jobs: work a chunk's task starts that outlives one step, and the runners that start,
//! find, poll and stop it.
//!
//! A task backed by an external job does not process its chunk in the step that starts it.
//! The step submits one job per chunk attempt ([`JobRunner::submit`]); the state machine then
//! waits and polls ([`JobRunner::poll`], at [`poll_interval`]) until the job ends or the
//! attempt's deadline passes ([`JobRunner::stop`]); the job's end becomes per-item outcomes:
//!
//! - [`JobState::Succeeded`]: every item succeeded except the listed [`ItemFailure`]s;
//! - [`JobState::Failed`]: the whole attempt failed (a transient task failure, retried by the
//!   state machine as a new attempt);
//! - [`JobState::Lost`]: the runner no longer knows the job (a local command whose server
//!   restarted, an AWS Batch job past its retention); the caller runs the attempt again.
//!
//! Two runners implement [`JobRunner`]:
//! - [`command::CommandRunner`] runs a program on this machine (any language; the contract a
//!   command keeps is in that module's documentation, with `examples/task.py` as a sample);
//! - [`aws_batch::AwsBatchRunner`] submits AWS Batch jobs (one array job per chunk attempt).
//!
//! Every job has a deterministic name ([`job_name`]) derived from its batch, chunk, attempt and
//! task: submitting the same attempt again finds the job already started instead of starting a
//! second one, and after a crash between submitting a job and recording its handle the caller
//! finds it again with [`JobRunner::find`].
//!
//! Handles ([`JobHandle`]) are small serde values that travel in the state machine's JSON
//! between steps: they never hold the chunk's item IDs (a chunk of 1000 long IDs would outgrow
//! a Step Functions payload), which [`JobRunner::poll`] takes beside each handle and checks
//! against the items the job was submitted with. States ([`JobState`]) are serde values too;
//! one with many item failures can be large, so record it in the store rather than pass it on.

pub mod aws_batch;
pub mod batched_polls;
pub mod command;
mod output;
mod process;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{BatchId, ItemId};

/// Longest job name AWS Batch accepts; every runner keeps to it.
pub const JOB_NAME_MAX_CHARS: usize = 128;
/// Characters of the batch ID kept, sanitised, at the start of a job name (for people reading
/// a job list); the hash after them is what makes the name unique.
const JOB_NAME_PREFIX_CHARS: usize = 40;
/// Hex digits of the SHA-256 hash in a job name: 64 bits.
const JOB_NAME_HASH_HEX_DIGITS: usize = 16;
/// Longest process or client name passed to a job, in bytes.
pub(crate) const MAX_LABEL_BYTES: usize = 256;

/// The first wait between two polls of a running job.
pub const FIRST_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait between two polls of a running job.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// How long to wait before poll number `polls_done + 1` of a running job: 5 s, doubling with
/// every poll already done, at most 60 s (5, 10, 20, 40, 60, 60, ...). Short jobs are seen to
/// end quickly; long ones cost one status request a minute.
pub fn poll_interval(polls_done: u32) -> Duration {
    poll_interval_from(FIRST_POLL_INTERVAL, polls_done)
}

/// As [`poll_interval`], from another first interval: `first`, doubling with every poll
/// already done, at most 60 s.
pub fn poll_interval_from(first: Duration, polls_done: u32) -> Duration {
    let factor = 1u32.checked_shl(polls_done.min(16)).unwrap_or(u32::MAX);
    first
        .checked_mul(factor)
        .map_or(MAX_POLL_INTERVAL, |interval| {
            interval.min(MAX_POLL_INTERVAL)
        })
}

/// Which of the chunk's two tasks a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskName {
    /// Task 1.
    Task1,
    /// Task 2.
    Task2,
}

impl TaskName {
    /// `task1` or `task2`, as the state machine and the job's environment name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task1 => "task1",
            Self::Task2 => "task2",
        }
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names a run request may carry, passed on to its jobs for their own logs and routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunLabels {
    /// The name of the process the run belongs to (`BATCH_MANAGER_PROCESS_NAME` in the job).
    pub process_name: Option<String>,
    /// The name of the client that asked for the run (`BATCH_MANAGER_CLIENT_NAME` in the job).
    pub client_name: Option<String>,
}

/// One chunk attempt's job, as the caller asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The chunk's batch.
    pub batch_id: BatchId,
    /// The chunk's index in its batch, from 0.
    pub chunk: u64,
    /// 0 on the first attempt, then the retry number.
    pub attempt: u32,
    /// The task the job does.
    pub task: TaskName,
    /// The items the job works on, in order.
    pub items: Vec<ItemId>,
    /// The run request's labels.
    pub labels: RunLabels,
}

impl JobSpec {
    /// The job's deterministic name: for task 2 of a run request (both labels set), the old
    /// submitter's `processname-clientname-runRequestID`, with `-<attempt>` after it on
    /// retries, when that fits a job name; otherwise [`job_name`].
    pub fn name(&self) -> String {
        if let (TaskName::Task2, Some(process), Some(client)) = (
            self.task,
            &self.labels.process_name,
            &self.labels.client_name,
        ) {
            let mut name = format!("{process}-{client}-{}", self.batch_id);
            if self.attempt > 0 {
                name.push_str(&format!("-{}", self.attempt));
            }
            if is_valid_job_name(&name) {
                return name;
            }
        }
        job_name(&self.batch_id, self.chunk, self.attempt, self.task)
    }

    /// Checks what a runner cannot pass on: a job needs at least one item, and a label must
    /// fit in an environment variable (no control characters, at most [`MAX_LABEL_BYTES`]).
    pub(crate) fn validate(&self) -> Result<(), JobError> {
        if self.items.is_empty() {
            return Err(JobError::InvalidSpec {
                field: "items",
                rule: "a job needs at least one item".to_owned(),
            });
        }
        let labels = [
            ("labels.process_name", &self.labels.process_name),
            ("labels.client_name", &self.labels.client_name),
        ];
        for (field, label) in labels {
            let Some(label) = label else { continue };
            if label.len() > MAX_LABEL_BYTES {
                return Err(JobError::InvalidSpec {
                    field,
                    rule: format!("must be at most {MAX_LABEL_BYTES} bytes"),
                });
            }
            if label.chars().any(char::is_control) {
                return Err(JobError::InvalidSpec {
                    field,
                    rule: "must not contain control characters".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// A fingerprint of the job's items, in order (see [`items_digest`]).
    pub fn items_digest(&self) -> String {
        items_digest(&self.items)
    }
}

/// The deterministic name of a chunk attempt's job, valid everywhere a job needs a name (AWS
/// Batch: 1 to 128 characters, letters, digits, `-` and `_`, starting with a letter or digit).
///
/// `bm-<batch prefix>-c<chunk>-a<attempt>-<task>-<hash>`: the batch prefix is the batch ID's
/// first 40 characters with every other character turned into `_`, for people reading a job
/// list; the hash (16 hex digits of SHA-256 over the batch ID, chunk, attempt and task) makes
/// two batches whose IDs sanitise alike get different names.
pub fn job_name(batch_id: &BatchId, chunk: u64, attempt: u32, task: TaskName) -> String {
    let prefix: String = batch_id
        .as_str()
        .chars()
        .take(JOB_NAME_PREFIX_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut hasher = Sha256::new();
    // The batch ID's length first, so no two (batch, chunk, ...) tuples hash the same input.
    hasher.update((batch_id.as_str().len() as u64).to_be_bytes());
    hasher.update(batch_id.as_str().as_bytes());
    hasher.update(chunk.to_be_bytes());
    hasher.update(attempt.to_be_bytes());
    hasher.update(task.as_str().as_bytes());
    let hash = hex::encode(&hasher.finalize()[..JOB_NAME_HASH_HEX_DIGITS / 2]);
    format!("bm-{prefix}-c{chunk}-a{attempt}-{task}-{hash}")
}

/// Whether `name` is a valid job name everywhere: 1 to 128 letters, digits, `-` and `_`,
/// starting with a letter or digit.
pub fn is_valid_job_name(name: &str) -> bool {
    (1..=JOB_NAME_MAX_CHARS).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A fingerprint of a job's items, in order: lets a runner check that the items given to
/// [`JobRunner::poll`] are those the job was submitted with.
pub fn items_digest(items: &[ItemId]) -> String {
    let mut hasher = Sha256::new();
    for item in items {
        hasher.update(item.as_str().as_bytes());
        // Item IDs never hold control characters, so a newline separates them unambiguously.
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Which runner a handle belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerKind {
    /// A local command ([`command::CommandRunner`]).
    Command,
    /// An AWS Batch job ([`aws_batch::AwsBatchRunner`]).
    AwsBatch,
}

impl fmt::Display for RunnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Command => "command",
            Self::AwsBatch => "aws-batch",
        })
    }
}

/// A submitted job: what the state machine carries between polls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobHandle {
    /// The runner that submitted the job.
    pub runner: RunnerKind,
    /// The job's deterministic name ([`job_name`]).
    pub name: String,
    /// The runner's own ID for this job: the AWS Batch job ID, or the command runner's launch ID.
    pub job_id: String,
}

/// A job to poll: its handle and the items it was submitted with, in the same order.
#[derive(Debug, Clone, Copy)]
pub struct PollRequest<'a> {
    /// The job to poll.
    pub handle: &'a JobHandle,
    /// The items it was submitted with, in the same order.
    pub items: &'a [ItemId],
}

/// One item a finished job failed, with the job's message for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    /// The failed item.
    #[serde(with = "item_id_serde")]
    pub item_id: ItemId,
    /// The job's message for it.
    pub message: String,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Queued or running; poll again later.
    Running,
    /// Ended: every item succeeded except these, in the order of the job's items.
    Succeeded {
        /// The items that failed.
        #[serde(rename = "itemFailures")]
        item_failures: Vec<ItemFailure>,
    },
    /// The whole attempt failed (or was stopped); the reason is shown to the items if retries
    /// run out.
    Failed {
        /// Why the attempt failed.
        reason: String,
    },
    /// The runner does not know the job (any more): run the attempt again.
    Lost,
}

impl JobState {
    /// Whether the job has ended (or is gone) and will not change again.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Running)
    }
}

/// Why a runner could not do what it was asked; the job itself failing is a [`JobState`].
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job cannot be submitted as asked.
    #[error("{field}: {rule}")]
    InvalidSpec {
        /// The spec's field at fault.
        field: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    /// The runner's settings are unusable (a missing program, half a queue configuration).
    #[error("invalid job runner settings: {0}")]
    InvalidSettings(String),
    /// A handle from another kind of runner.
    #[error("job {name} belongs to the {found} runner, not the {expected} runner")]
    ForeignHandle {
        /// The job's name.
        name: String,
        /// The runner the handle belongs to.
        found: RunnerKind,
        /// This runner.
        expected: RunnerKind,
    },
    /// A job of this name (the same chunk attempt) was submitted with other items.
    #[error("job {name} was already submitted with other items")]
    NameConflict {
        /// The job's name.
        name: String,
    },
    /// The items given to `poll` are not those the job was submitted with.
    #[error("job {name} was submitted with other items than the ones given to poll")]
    ItemsMismatch {
        /// The job's name.
        name: String,
    },
    /// The job service failed or refused a request; retry later.
    #[error("job service request failed: {0}")]
    Service(String),
}

/// Starts, finds, polls and stops a task's external jobs.
#[async_trait]
pub trait JobRunner: Send + Sync {
    /// Starts the job for `spec`'s chunk attempt and returns at once. Idempotent: when a job
    /// with the same name exists (in any state), returns it and starts nothing; if that job
    /// was submitted with other items, fails with [`JobError::NameConflict`].
    async fn submit(&self, spec: &JobSpec) -> Result<JobHandle, JobError>;

    /// The job with this deterministic name, if the runner knows one.
    async fn find(&self, name: &str) -> Result<Option<JobHandle>, JobError>;

    /// The states of these jobs, in the same order; one service request for up to 100 jobs
    /// where the service allows it.
    async fn poll(&self, jobs: &[PollRequest<'_>]) -> Result<Vec<JobState>, JobError>;

    /// Stops a job (its deadline passed, or its batch was cancelled); `reason` (trimmed, at
    /// most 1 KiB) becomes its failure reason. Returns once the stop is asked for; polls show
    /// the job as running until it has ended. Stopping a job that has ended does nothing.
    async fn stop(&self, handle: &JobHandle, reason: &str) -> Result<(), JobError>;
}

/// Checks that a handle belongs to the runner `expected`.
fn expect_runner(handle: &JobHandle, expected: RunnerKind) -> Result<(), JobError> {
    if handle.runner == expected {
        Ok(())
    } else {
        Err(JobError::ForeignHandle {
            name: handle.name.clone(),
            found: handle.runner,
            expected,
        })
    }
}

/// The failure reason a stop leaves: `reason` trimmed and cut to 1 KiB, or a default when blank.
fn stop_reason(reason: &str) -> String {
    match reason.trim() {
        "" => "stopped by batch-manager".to_owned(),
        reason => truncate_to_bytes(reason, output::MAX_MESSAGE_BYTES).to_owned(),
    }
}

/// Cuts `text` to at most `max_bytes` bytes, on a character boundary.
fn truncate_to_bytes(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Item IDs as plain JSON strings, checked by the ID rules when read back.
mod item_id_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::ItemId;

    pub(super) fn serialize<S: Serializer>(
        item: &ItemId,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(item.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ItemId, D::Error> {
        let raw = String::deserialize(deserializer)?;
        ItemId::parse(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(raw: &str) -> BatchId {
        BatchId::parse(raw).unwrap()
    }

    fn item(raw: &str) -> ItemId {
        ItemId::parse(raw).unwrap()
    }

    fn is_valid_aws_batch_job_name(name: &str) -> bool {
        is_valid_job_name(name)
    }

    #[test]
    fn a_run_request_job_is_named_as_the_old_submitter_named_it() {
        let mut spec = JobSpec {
            batch_id: batch("0f8e7d6c-1111-4222-8333-944455556666"),
            chunk: 0,
            attempt: 0,
            task: TaskName::Task2,
            items: vec![item("0f8e7d6c-1111-4222-8333-944455556666")],
            labels: RunLabels {
                process_name: Some("APOST".to_owned()),
                client_name: Some("2Sigma".to_owned()),
            },
        };
        assert_eq!(
            spec.name(),
            "APOST-2Sigma-0f8e7d6c-1111-4222-8333-944455556666"
        );
        spec.attempt = 2;
        assert_eq!(
            spec.name(),
            "APOST-2Sigma-0f8e7d6c-1111-4222-8333-944455556666-2"
        );
        spec.task = TaskName::Task1;
        assert_eq!(
            spec.name(),
            job_name(&spec.batch_id, 0, 2, TaskName::Task1),
            "task 1 of a run request keeps its own name"
        );
        spec.task = TaskName::Task2;
        spec.labels.process_name = Some("p".repeat(64));
        spec.labels.client_name = Some("c".repeat(64));
        assert_eq!(
            spec.name(),
            job_name(&spec.batch_id, 0, 2, TaskName::Task2),
            "too long for a job name"
        );
    }

    #[test]
    fn a_job_name_is_readable_and_stable() {
        let name = job_name(
            &batch("4b4dc5c6-fbd9-493d-98ff-c459c378f45d"),
            12,
            2,
            TaskName::Task2,
        );
        assert!(
            name.starts_with("bm-4b4dc5c6-fbd9-493d-98ff-c459c378f45d-c12-a2-task2-"),
            "{name}"
        );
        assert_eq!(name.len(), "bm-".len() + 36 + "-c12-a2-task2-".len() + 16);
        assert_eq!(
            name,
            job_name(
                &batch("4b4dc5c6-fbd9-493d-98ff-c459c378f45d"),
                12,
                2,
                TaskName::Task2
            )
        );
        assert!(is_valid_aws_batch_job_name(&name));
    }

    #[test]
    fn job_names_differ_in_every_part_of_the_attempt() {
        let base = job_name(&batch("b"), 1, 0, TaskName::Task1);
        let others = [
            job_name(&batch("c"), 1, 0, TaskName::Task1),
            job_name(&batch("b"), 2, 0, TaskName::Task1),
            job_name(&batch("b"), 1, 1, TaskName::Task1),
            job_name(&batch("b"), 1, 0, TaskName::Task2),
        ];
        for other in others {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn batches_whose_ids_sanitise_alike_get_different_job_names() {
        let a = job_name(&batch("orders/2024"), 0, 0, TaskName::Task1);
        let b = job_name(&batch("orders:2024"), 0, 0, TaskName::Task1);
        assert!(a.starts_with("bm-orders_2024-c0-a0-task1-"), "{a}");
        assert!(b.starts_with("bm-orders_2024-c0-a0-task1-"), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_longest_ids_and_numbers_still_make_a_valid_job_name() {
        let long_batch = batch(&"é".repeat(128));
        let name = job_name(
            &long_batch,
            crate::domain::MAX_COUNT,
            u32::MAX,
            TaskName::Task1,
        );
        assert!(is_valid_aws_batch_job_name(&name), "{name}");
        let symbols = batch(&"/".repeat(256));
        assert!(is_valid_aws_batch_job_name(&job_name(
            &symbols,
            0,
            0,
            TaskName::Task2
        )));
    }

    #[test]
    fn the_poll_interval_doubles_from_five_seconds_up_to_a_minute() {
        let seconds: Vec<u64> = (0..8).map(|n| poll_interval(n).as_secs()).collect();
        assert_eq!(seconds, [5, 10, 20, 40, 60, 60, 60, 60]);
        assert_eq!(poll_interval(u32::MAX), MAX_POLL_INTERVAL);
    }

    #[test]
    fn handles_and_states_travel_as_json() {
        let handle = JobHandle {
            runner: RunnerKind::AwsBatch,
            name: "bm-b-c0-a0-task1-0123456789abcdef".to_owned(),
            job_id: "e1f2".to_owned(),
        };
        let json = serde_json::to_value(&handle).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "runner": "aws-batch",
                "name": "bm-b-c0-a0-task1-0123456789abcdef",
                "jobId": "e1f2"
            })
        );
        assert_eq!(serde_json::from_value::<JobHandle>(json).unwrap(), handle);

        let states = [
            JobState::Running,
            JobState::Succeeded {
                item_failures: vec![ItemFailure {
                    item_id: item("a"),
                    message: "bad".to_owned(),
                }],
            },
            JobState::Failed {
                reason: "exit 3".to_owned(),
            },
            JobState::Lost,
        ];
        let json = serde_json::to_value(&states).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"status": "RUNNING"},
                {"status": "SUCCEEDED", "itemFailures": [{"itemId": "a", "message": "bad"}]},
                {"status": "FAILED", "reason": "exit 3"},
                {"status": "LOST"}
            ])
        );
        assert_eq!(
            serde_json::from_value::<Vec<JobState>>(json).unwrap(),
            states
        );
    }

    #[test]
    fn a_state_with_an_invalid_item_id_is_refused() {
        let json = serde_json::json!({
            "status": "SUCCEEDED",
            "itemFailures": [{"itemId": "", "message": "bad"}]
        });
        let error = serde_json::from_value::<JobState>(json).unwrap_err();
        assert!(error.to_string().contains("must not be empty"), "{error}");
    }

    #[test]
    fn a_spec_needs_items_and_labels_that_fit_an_environment() {
        let mut spec = JobSpec {
            batch_id: batch("b"),
            chunk: 0,
            attempt: 0,
            task: TaskName::Task1,
            items: vec![item("a")],
            labels: RunLabels::default(),
        };
        assert!(spec.validate().is_ok());
        spec.labels.client_name = Some("line\nbreak".to_owned());
        let error = spec.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "labels.client_name: must not contain control characters"
        );
        spec.labels.client_name = None;
        spec.labels.process_name = Some("p".repeat(MAX_LABEL_BYTES + 1));
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            "labels.process_name: must be at most 256 bytes"
        );
        spec.labels.process_name = None;
        spec.items.clear();
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            "items: a job needs at least one item"
        );
    }

    #[test]
    fn the_items_digest_depends_on_order_and_boundaries() {
        let ab = items_digest(&[item("a"), item("b")]);
        assert_ne!(ab, items_digest(&[item("b"), item("a")]));
        assert_ne!(ab, items_digest(&[item("ab")]));
        assert_eq!(ab, items_digest(&[item("a"), item("b")]));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_to_bytes("héllo", 2), "h");
        assert_eq!(truncate_to_bytes("héllo", 3), "hé");
        assert_eq!(truncate_to_bytes("hi", 10), "hi");
    }
}
