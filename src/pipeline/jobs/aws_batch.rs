//! The `aws-batch` runner: a task as AWS Batch jobs, one per chunk attempt.
//!
//! # What a job gets
//!
//! Each task has its own job queue and job definition (`TASK1_JOB_QUEUE` and
//! `TASK1_JOB_DEFINITION`, `TASK2_JOB_QUEUE` and `TASK2_JOB_DEFINITION`; see
//! [`AwsBatchSettings::from_env`]); the definition is a container job definition. A chunk
//! attempt of one item is a plain job; a chunk attempt of n > 1 items is an array job of size
//! n, whose child i works on item i (AWS Batch sets `AWS_BATCH_JOB_ARRAY_INDEX` in each child;
//! it is unset in a plain job, which works on item 0). The job learns its work through:
//!
//! - **parameters** (for `Ref::` substitution in the definition's command): `batchId`, `chunk`,
//!   `attempt`, `task`, `jobName`, `itemCount`, `itemsDigest`;
//! - **container environment overrides**: `BATCH_MANAGER_BATCH_ID`, `BATCH_MANAGER_CHUNK`,
//!   `BATCH_MANAGER_ATTEMPT`, `BATCH_MANAGER_TASK`, `BATCH_MANAGER_JOB_NAME`,
//!   `BATCH_MANAGER_ITEM_COUNT`, `BATCH_MANAGER_ITEMS_DIGEST`, `BATCH_MANAGER_PROCESS_NAME` and
//!   `BATCH_MANAGER_CLIENT_NAME` when the run request named them, and `BATCH_MANAGER_ITEM_IDS`,
//!   the item IDs as a JSON array of strings, when that array takes at most
//!   [`INLINE_ITEM_IDS_BUDGET`] bytes (6 KiB: AWS Batch refuses container overrides over 8 KiB,
//!   and the other variables take at most about 1.5 KiB). A child's item is then
//!   `ids[int(os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "0"))]`.
//!
//! A chunk whose IDs do not fit (about 150 UUIDs and more) gets no `BATCH_MANAGER_ITEM_IDS`:
//! the job reads its items from the stack's tables with `batch-manager job-items` (the same
//! binary, in the job's image), which uses `BATCH_MANAGER_BATCH_ID`, `BATCH_MANAGER_CHUNK`,
//! `BATCH_MANAGER_ITEMS_DIGEST` (proof that it read the list the job was submitted with) and,
//! in an array job's child, `AWS_BATCH_JOB_ARRAY_INDEX`; the job definition sets `BATCH_TABLE`
//! and `REQUEST_TABLE`, and its job role may read the request table.
//!
//! # What the runner reports
//!
//! - A job queued or running is [`JobState::Running`].
//! - A plain job that succeeded, or an array job that succeeded (AWS Batch marks an array job
//!   SUCCEEDED only when every child did), is [`JobState::Succeeded`] with no failures.
//! - A failed array job fails each item whose child FAILED, with the child's status reason
//!   (and exit code): [`JobState::Succeeded`] with those [`ItemFailure`]s. An array job that
//!   failed without any failed child (stopped before its children ran) is [`JobState::Failed`].
//! - A failed plain job is [`JobState::Failed`] with its status reason: the attempt failed and
//!   the state machine retries it.
//! - A job AWS Batch no longer describes (past its retention) is [`JobState::Lost`].
//!
//! # Never two jobs for one attempt
//!
//! [`JobRunner::submit`] first looks the job's deterministic name up in the queue (ListJobs
//! with a `JOB_NAME` filter, any status) and returns the job it finds. After submitting, it
//! looks again: if a concurrent submitter started a job of the same name, the oldest is kept
//! and the newer one terminated, so concurrent submitters agree on one job. ListJobs is
//! eventually consistent, so this narrows the window rather than closing it; the caller records
//! the handle in its store, which is what makes a submission happen once.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_batch::error::{DisplayErrorContext, SdkError};
use aws_sdk_batch::types::{
    ArrayProperties, ContainerOverrides, JobDetail, JobStatus, JobSummary, JqState, KeyValuePair,
    KeyValuesPair,
};

use super::output::MAX_MESSAGE_BYTES;
use super::{
    expect_runner, items_digest, stop_reason, truncate_to_bytes, ItemFailure, JobError, JobHandle,
    JobRunner, JobSpec, JobState, PollRequest, RunnerKind, TaskName,
};
use crate::domain::ItemId;

/// Largest JSON array of item IDs passed inline in `BATCH_MANAGER_ITEM_IDS`, in bytes.
pub(crate) const INLINE_ITEM_IDS_BUDGET: usize = 6 * 1024;
/// Most job IDs one DescribeJobs request takes.
pub(crate) const DESCRIBE_JOBS_LIMIT: usize = 100;
/// Most ListJobs pages read for one question; a name matches one job, and an array job has at
/// most 1000 children (100 a page), so this bound is never reached in practice.
const MAX_LIST_PAGES: usize = 100;

/// Where a task's jobs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsBatchSettings {
    /// The job queue's name or ARN.
    pub job_queue: String,
    /// The job definition's name, `name:revision` or ARN.
    pub job_definition: String,
}

impl AwsBatchSettings {
    /// The settings of `task` from the environment (`TASK1_JOB_QUEUE` and
    /// `TASK1_JOB_DEFINITION`, or `TASK2_...`): `None` when both are unset, an error naming
    /// the missing variable when only one is set.
    pub fn from_env(task: TaskName) -> Result<Option<Self>, JobError> {
        Self::from_lookup(task, |key| std::env::var(key).ok())
    }

    /// As [`Self::from_env`], reading variables through `lookup`.
    pub fn from_lookup(
        task: TaskName,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, JobError> {
        let prefix = task.as_str().to_ascii_uppercase();
        let queue_key = format!("{prefix}_JOB_QUEUE");
        let definition_key = format!("{prefix}_JOB_DEFINITION");
        let read = |key: &str| lookup(key).filter(|value| !value.trim().is_empty());
        match (read(&queue_key), read(&definition_key)) {
            (None, None) => Ok(None),
            (Some(job_queue), Some(job_definition)) => Ok(Some(Self {
                job_queue,
                job_definition,
            })),
            (Some(_), None) => Err(JobError::InvalidSettings(format!(
                "{definition_key} must be set when {queue_key} is"
            ))),
            (None, Some(_)) => Err(JobError::InvalidSettings(format!(
                "{queue_key} must be set when {definition_key} is"
            ))),
        }
    }
}

/// Submits, finds, polls and stops one task's AWS Batch jobs (see the module documentation).
#[derive(Debug, Clone)]
pub struct AwsBatchRunner {
    client: aws_sdk_batch::Client,
    settings: AwsBatchSettings,
}

impl AwsBatchRunner {
    /// A runner submitting to the queue and definition in `settings`.
    pub fn new(client: aws_sdk_batch::Client, settings: AwsBatchSettings) -> Self {
        Self { client, settings }
    }

    /// Checks that the job queue exists and is enabled and that the job definition exists and
    /// is active, so that a wrong setting fails at start, named, rather than every chunk.
    pub async fn verify(&self) -> Result<(), JobError> {
        let AwsBatchSettings {
            job_queue,
            job_definition,
        } = &self.settings;
        let queues = self
            .client
            .describe_job_queues()
            .job_queues(job_queue)
            .send()
            .await
            .map_err(service_error)?;
        match queues.job_queues().first().map(|queue| queue.state()) {
            None => {
                return Err(JobError::InvalidSettings(format!(
                    "the job queue {job_queue} does not exist"
                )))
            }
            Some(Some(JqState::Enabled)) => {}
            Some(_) => {
                return Err(JobError::InvalidSettings(format!(
                    "the job queue {job_queue} is not enabled"
                )))
            }
        }
        if !self.job_definition_is_active().await? {
            return Err(JobError::InvalidSettings(format!(
                "the job definition {job_definition} does not exist or is not active"
            )));
        }
        Ok(())
    }

    /// Whether the job definition (an ARN, `name:revision`, or a name: its latest revision)
    /// exists and is active.
    async fn job_definition_is_active(&self) -> Result<bool, JobError> {
        let definition = self.settings.job_definition.as_str();
        let (name, revision) = match definition.rsplit_once(':') {
            _ if definition.starts_with("arn:") => (definition, None),
            Some((name, revision)) => match revision.parse::<i32>() {
                Ok(revision) => (name, Some(revision)),
                Err(_) => return Ok(false),
            },
            None => (definition, None),
        };
        let mut next_token = None;
        for _ in 0..MAX_LIST_PAGES {
            let request = self.client.describe_job_definitions();
            let request = if name.starts_with("arn:") {
                request.job_definitions(name)
            } else {
                request.job_definition_name(name)
            };
            let page = request
                .set_next_token(next_token)
                .send()
                .await
                .map_err(service_error)?;
            let found = page.job_definitions().iter().any(|found| {
                found.status() == Some("ACTIVE")
                    && revision.is_none_or(|revision| found.revision() == Some(revision))
            });
            if found {
                return Ok(true);
            }
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        Ok(false)
    }

    fn handle(name: &str, job_id: String) -> JobHandle {
        JobHandle {
            runner: RunnerKind::AwsBatch,
            name: name.to_owned(),
            job_id,
        }
    }

    /// Every ListJobs summary the request built by `request` returns, page by page.
    async fn list_all(
        &self,
        request: impl Fn() -> aws_sdk_batch::operation::list_jobs::builders::ListJobsFluentBuilder,
    ) -> Result<Vec<JobSummary>, JobError> {
        let mut summaries = Vec::new();
        let mut next_token = None;
        for _ in 0..MAX_LIST_PAGES {
            let page = request()
                .set_next_token(next_token)
                .send()
                .await
                .map_err(service_error)?;
            summaries.extend_from_slice(page.job_summary_list());
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        Ok(summaries)
    }

    /// The job's description, if AWS Batch still has it.
    async fn describe_one(&self, job_id: &str) -> Result<Option<JobDetail>, JobError> {
        let described = self
            .client
            .describe_jobs()
            .jobs(job_id)
            .send()
            .await
            .map_err(service_error)?;
        Ok(described
            .jobs()
            .iter()
            .find(|detail| detail.job_id() == Some(job_id))
            .cloned())
    }

    /// The failed children of an array job, as (array index, failure message).
    async fn failed_children(&self, array_job_id: &str) -> Result<Vec<(usize, String)>, JobError> {
        let children = self
            .list_all(|| {
                self.client
                    .list_jobs()
                    .array_job_id(array_job_id)
                    .job_status(JobStatus::Failed)
            })
            .await?;
        Ok(children
            .iter()
            .filter(|child| child.status() == Some(&JobStatus::Failed))
            .filter_map(|child| {
                let index = child_index(child)?;
                let exit_code = child
                    .container()
                    .and_then(|container| container.exit_code());
                Some((
                    index,
                    failure_reason(child.status_reason(), None, exit_code),
                ))
            })
            .collect())
    }

    /// A finished (or gone) job's state.
    async fn state_of(
        &self,
        handle: &JobHandle,
        detail: &JobDetail,
        items: &[ItemId],
    ) -> Result<JobState, JobError> {
        let status = detail.status();
        let reason = || {
            let container = detail.container();
            failure_reason(
                detail.status_reason(),
                container.and_then(|container| container.reason()),
                container.and_then(|container| container.exit_code()),
            )
        };
        match status {
            Some(JobStatus::Succeeded) => Ok(JobState::Succeeded {
                item_failures: Vec::new(),
            }),
            Some(JobStatus::Failed) if items.len() > 1 => {
                let children = self.failed_children(&handle.job_id).await?;
                if children.is_empty() {
                    return Ok(JobState::Failed { reason: reason() });
                }
                Ok(JobState::Succeeded {
                    item_failures: item_failures(&handle.name, children, items),
                })
            }
            Some(JobStatus::Failed) => Ok(JobState::Failed { reason: reason() }),
            _ => Ok(JobState::Running),
        }
    }
}

#[async_trait]
impl JobRunner for AwsBatchRunner {
    async fn submit(&self, spec: &JobSpec) -> Result<JobHandle, JobError> {
        spec.validate()?;
        let name = spec.name();
        if let Some(existing) = self.find(&name).await? {
            let detail = self.describe_one(&existing.job_id).await?;
            if detail.as_ref().and_then(submitted_digest) != Some(spec.items_digest().as_str()) {
                return Err(JobError::NameConflict { name });
            }
            return Ok(existing);
        }
        let mut request = self
            .client
            .submit_job()
            .job_name(&name)
            .job_queue(&self.settings.job_queue)
            .job_definition(&self.settings.job_definition)
            .set_parameters(Some(parameters(spec, &name)))
            .container_overrides(
                ContainerOverrides::builder()
                    .set_environment(Some(environment(spec, &name)))
                    .build(),
            );
        if spec.items.len() > 1 {
            let size = i32::try_from(spec.items.len()).map_err(|_| JobError::InvalidSpec {
                field: "items",
                rule: "too many items for one array job".to_owned(),
            })?;
            request = request.array_properties(ArrayProperties::builder().size(size).build());
        }
        let submitted = request.send().await.map_err(service_error)?;
        let ours = Self::handle(&name, submitted.job_id().unwrap_or_default().to_owned());
        match self.find(&name).await {
            Ok(Some(kept)) if kept.job_id != ours.job_id => {
                let reason = format!("a duplicate of job {} for the same attempt", kept.job_id);
                if let Err(error) = self.stop(&ours, &reason).await {
                    tracing::warn!(job = %name, %error, "terminating a duplicate job failed");
                }
                Ok(kept)
            }
            Ok(_) => Ok(ours),
            Err(error) => {
                // The job is submitted; the next submit or find of this name converges.
                tracing::warn!(job = %name, %error, "looking for duplicates of a new job failed");
                Ok(ours)
            }
        }
    }

    async fn find(&self, name: &str) -> Result<Option<JobHandle>, JobError> {
        let filter = KeyValuesPair::builder()
            .name("JOB_NAME")
            .values(name)
            .build();
        let summaries = self
            .list_all(|| {
                self.client
                    .list_jobs()
                    .job_queue(&self.settings.job_queue)
                    .filters(filter.clone())
            })
            .await?;
        Ok(oldest_job_named(&summaries, name).map(|job_id| Self::handle(name, job_id)))
    }

    async fn poll(&self, requests: &[PollRequest<'_>]) -> Result<Vec<JobState>, JobError> {
        for request in requests {
            expect_runner(request.handle, RunnerKind::AwsBatch)?;
        }
        let mut details: HashMap<String, JobDetail> = HashMap::new();
        for batch in requests.chunks(DESCRIBE_JOBS_LIMIT) {
            let described = self
                .client
                .describe_jobs()
                .set_jobs(Some(
                    batch
                        .iter()
                        .map(|request| request.handle.job_id.clone())
                        .collect(),
                ))
                .send()
                .await
                .map_err(service_error)?;
            for detail in described.jobs() {
                if let Some(job_id) = detail.job_id() {
                    details.insert(job_id.to_owned(), detail.clone());
                }
            }
        }
        let mut states = Vec::with_capacity(requests.len());
        for request in requests {
            let Some(detail) = details.get(&request.handle.job_id) else {
                states.push(JobState::Lost);
                continue;
            };
            if submitted_digest(detail) != Some(items_digest(request.items).as_str()) {
                return Err(JobError::ItemsMismatch {
                    name: request.handle.name.clone(),
                });
            }
            states.push(self.state_of(request.handle, detail, request.items).await?);
        }
        Ok(states)
    }

    async fn stop(&self, handle: &JobHandle, reason: &str) -> Result<(), JobError> {
        expect_runner(handle, RunnerKind::AwsBatch)?;
        self.client
            .terminate_job()
            .job_id(&handle.job_id)
            .reason(stop_reason(reason))
            .send()
            .await
            .map_err(service_error)?;
        Ok(())
    }
}

fn service_error<E, R>(error: SdkError<E, R>) -> JobError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    JobError::Service(DisplayErrorContext(&error).to_string())
}

/// The job's parameters, for `Ref::` substitution in the job definition's command.
fn parameters(spec: &JobSpec, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("batchId".to_owned(), spec.batch_id.to_string()),
        ("chunk".to_owned(), spec.chunk.to_string()),
        ("attempt".to_owned(), spec.attempt.to_string()),
        ("task".to_owned(), spec.task.as_str().to_owned()),
        ("jobName".to_owned(), name.to_owned()),
        ("itemCount".to_owned(), spec.items.len().to_string()),
        ("itemsDigest".to_owned(), spec.items_digest()),
    ])
}

/// The job's environment overrides (see the module documentation).
fn environment(spec: &JobSpec, name: &str) -> Vec<KeyValuePair> {
    let mut variables = vec![
        ("BATCH_MANAGER_BATCH_ID", spec.batch_id.to_string()),
        ("BATCH_MANAGER_CHUNK", spec.chunk.to_string()),
        ("BATCH_MANAGER_ATTEMPT", spec.attempt.to_string()),
        ("BATCH_MANAGER_TASK", spec.task.as_str().to_owned()),
        ("BATCH_MANAGER_JOB_NAME", name.to_owned()),
        ("BATCH_MANAGER_ITEM_COUNT", spec.items.len().to_string()),
        ("BATCH_MANAGER_ITEMS_DIGEST", spec.items_digest()),
    ];
    if let Some(process_name) = &spec.labels.process_name {
        variables.push(("BATCH_MANAGER_PROCESS_NAME", process_name.clone()));
    }
    if let Some(client_name) = &spec.labels.client_name {
        variables.push(("BATCH_MANAGER_CLIENT_NAME", client_name.clone()));
    }
    if let Some(item_ids) = inline_item_ids(&spec.items) {
        variables.push(("BATCH_MANAGER_ITEM_IDS", item_ids));
    }
    variables
        .into_iter()
        .map(|(name, value)| KeyValuePair::builder().name(name).value(value).build())
        .collect()
}

/// The digest of the items a job was submitted with, from its parameters.
fn submitted_digest(detail: &JobDetail) -> Option<&str> {
    detail
        .parameters()
        .and_then(|parameters| parameters.get("itemsDigest"))
        .map(String::as_str)
}

/// The item IDs as a JSON array, when it fits [`INLINE_ITEM_IDS_BUDGET`].
pub(crate) fn inline_item_ids(items: &[ItemId]) -> Option<String> {
    let ids: Vec<&str> = items.iter().map(ItemId::as_str).collect();
    let json = serde_json::to_string(&ids).expect("a list of strings serializes");
    (json.len() <= INLINE_ITEM_IDS_BUDGET).then_some(json)
}

/// The oldest top-level job (not an array child) named exactly `name`: concurrent submitters
/// all keep that one.
fn oldest_job_named(summaries: &[JobSummary], name: &str) -> Option<String> {
    summaries
        .iter()
        .filter(|summary| summary.job_name() == Some(name))
        .filter(|summary| !is_array_child(summary))
        .filter_map(|summary| Some((summary.created_at().unwrap_or(i64::MAX), summary.job_id()?)))
        .min()
        .map(|(_, job_id)| job_id.to_owned())
}

/// Array children have IDs `<parent ID>:<index>`; AWS lists them under their parent only,
/// but not every implementation of the API does.
fn is_array_child(summary: &JobSummary) -> bool {
    summary
        .array_properties()
        .and_then(|properties| properties.index())
        .is_some()
        || summary.job_id().is_some_and(|id| id.contains(':'))
}

fn child_index(child: &JobSummary) -> Option<usize> {
    let index = child
        .array_properties()
        .and_then(|properties| properties.index())
        .map(i64::from)
        .or_else(|| child.job_id()?.rsplit_once(':')?.1.parse().ok())?;
    usize::try_from(index).ok()
}

/// Failed children's messages as the failures of the items at their indexes, in item order.
fn item_failures(
    job_name: &str,
    mut children: Vec<(usize, String)>,
    items: &[ItemId],
) -> Vec<ItemFailure> {
    children.sort_by_key(|(index, _)| *index);
    children.dedup_by_key(|(index, _)| *index);
    children
        .into_iter()
        .filter_map(|(index, message)| match items.get(index) {
            Some(item) => Some(ItemFailure {
                item_id: item.clone(),
                message,
            }),
            None => {
                tracing::warn!(
                    job = job_name,
                    index,
                    "a failed child beyond the job's items"
                );
                None
            }
        })
        .collect()
}

/// A failed job's message: its status reason, the container's reason, and its exit code,
/// whichever AWS Batch gave.
fn failure_reason(
    status_reason: Option<&str>,
    container_reason: Option<&str>,
    exit_code: Option<i32>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    for reason in [status_reason, container_reason].into_iter().flatten() {
        let reason = reason.trim();
        if !reason.is_empty() && !parts.iter().any(|part| part == reason) {
            parts.push(reason.to_owned());
        }
    }
    let message = match (parts.is_empty(), exit_code) {
        (true, None) => "the AWS Batch job failed without a reason".to_owned(),
        (true, Some(code)) => format!("the job's container exited with status {code}"),
        (false, None) => parts.join(": "),
        (false, Some(code)) => format!("{} (exit code {code})", parts.join(": ")),
    };
    truncate_to_bytes(&message, MAX_MESSAGE_BYTES).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BatchId;
    use crate::pipeline::jobs::RunLabels;
    use aws_sdk_batch::types::ArrayPropertiesSummary;

    fn items(count: usize) -> Vec<ItemId> {
        (0..count)
            .map(|index| ItemId::parse(format!("{index:08}-{}", "x".repeat(27))).unwrap())
            .collect()
    }

    fn spec(items: Vec<ItemId>) -> JobSpec {
        JobSpec {
            batch_id: BatchId::parse("b-1").unwrap(),
            chunk: 4,
            attempt: 1,
            task: TaskName::Task2,
            items,
            labels: RunLabels {
                process_name: Some("nightly".to_owned()),
                client_name: None,
            },
        }
    }

    fn variables(spec: &JobSpec) -> HashMap<String, String> {
        environment(spec, &spec.name())
            .into_iter()
            .map(|pair| (pair.name.unwrap(), pair.value.unwrap()))
            .collect()
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn settings_come_from_both_variables_of_a_task_or_neither() {
        let both = [("TASK2_JOB_QUEUE", "q"), ("TASK2_JOB_DEFINITION", "d:3")];
        assert_eq!(
            AwsBatchSettings::from_lookup(TaskName::Task2, env(&both)).unwrap(),
            Some(AwsBatchSettings {
                job_queue: "q".to_owned(),
                job_definition: "d:3".to_owned()
            })
        );
        assert_eq!(
            AwsBatchSettings::from_lookup(TaskName::Task1, env(&both)).unwrap(),
            None
        );
        let blank = [("TASK1_JOB_QUEUE", " "), ("TASK1_JOB_DEFINITION", "")];
        assert_eq!(
            AwsBatchSettings::from_lookup(TaskName::Task1, env(&blank)).unwrap(),
            None
        );
        let half = [("TASK1_JOB_QUEUE", "q")];
        assert_eq!(
            AwsBatchSettings::from_lookup(TaskName::Task1, env(&half))
                .unwrap_err()
                .to_string(),
            "invalid job runner settings: TASK1_JOB_DEFINITION must be set when TASK1_JOB_QUEUE is"
        );
    }

    #[test]
    fn a_job_learns_its_attempt_and_items_from_its_environment() {
        let spec = spec(items(3));
        let variables = variables(&spec);
        assert_eq!(variables["BATCH_MANAGER_BATCH_ID"], "b-1");
        assert_eq!(variables["BATCH_MANAGER_CHUNK"], "4");
        assert_eq!(variables["BATCH_MANAGER_ATTEMPT"], "1");
        assert_eq!(variables["BATCH_MANAGER_TASK"], "task2");
        assert_eq!(variables["BATCH_MANAGER_JOB_NAME"], spec.name());
        assert_eq!(variables["BATCH_MANAGER_ITEM_COUNT"], "3");
        assert_eq!(variables["BATCH_MANAGER_ITEMS_DIGEST"], spec.items_digest());
        assert_eq!(variables["BATCH_MANAGER_PROCESS_NAME"], "nightly");
        assert!(!variables.contains_key("BATCH_MANAGER_CLIENT_NAME"));
        let ids: Vec<String> = serde_json::from_str(&variables["BATCH_MANAGER_ITEM_IDS"]).unwrap();
        assert_eq!(
            ids,
            spec.items
                .iter()
                .map(|item| item.as_str().to_owned())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn item_ids_beyond_the_budget_are_not_inlined() {
        // 36-byte IDs: 39 bytes each in the JSON array.
        let fits = INLINE_ITEM_IDS_BUDGET / 39;
        assert!(inline_item_ids(&items(fits)).is_some());
        assert!(inline_item_ids(&items(fits + 1)).is_none());
        let variables = variables(&spec(items(fits + 1)));
        assert!(!variables.contains_key("BATCH_MANAGER_ITEM_IDS"));
        assert_eq!(
            variables["BATCH_MANAGER_ITEM_COUNT"],
            (fits + 1).to_string()
        );
    }

    #[test]
    fn the_whole_environment_stays_under_the_container_override_limit() {
        let mut spec = spec(items(INLINE_ITEM_IDS_BUDGET / 39));
        spec.batch_id = BatchId::parse("b".repeat(crate::domain::MAX_ID_BYTES)).unwrap();
        spec.labels = RunLabels {
            process_name: Some("p".repeat(crate::pipeline::jobs::MAX_LABEL_BYTES)),
            client_name: Some("c".repeat(crate::pipeline::jobs::MAX_LABEL_BYTES)),
        };
        let size: usize = environment(&spec, &spec.name())
            .iter()
            .map(|pair| {
                serde_json::json!({"name": pair.name(), "value": pair.value()})
                    .to_string()
                    .len()
                    + 1
            })
            .sum();
        assert!(size < 8 * 1024, "{size} bytes");
    }

    fn summary(job_id: &str, name: &str, created_at: i64) -> JobSummary {
        JobSummary::builder()
            .job_id(job_id)
            .job_name(name)
            .created_at(created_at)
            .build()
    }

    #[test]
    fn the_oldest_top_level_job_of_the_exact_name_is_kept() {
        let summaries = [
            summary("newer", "bm-x", 20),
            summary("older:0", "bm-x", 1),
            summary("case", "BM-X", 5),
            summary("older", "bm-x", 10),
            JobSummary::builder()
                .job_id("indexed")
                .job_name("bm-x")
                .created_at(2)
                .array_properties(ArrayPropertiesSummary::builder().index(0).build())
                .build(),
        ];
        assert_eq!(
            oldest_job_named(&summaries, "bm-x"),
            Some("older".to_owned())
        );
        assert_eq!(oldest_job_named(&summaries, "bm-y"), None);
    }

    #[test]
    fn failed_children_fail_the_items_at_their_indexes() {
        let chunk = items(3);
        let failures = item_failures(
            "job",
            vec![
                (2, "disk full".to_owned()),
                (0, "bad input".to_owned()),
                (7, "beyond".to_owned()),
            ],
            &chunk,
        );
        assert_eq!(
            failures,
            [
                ItemFailure {
                    item_id: chunk[0].clone(),
                    message: "bad input".to_owned()
                },
                ItemFailure {
                    item_id: chunk[2].clone(),
                    message: "disk full".to_owned()
                }
            ]
        );
    }

    #[test]
    fn a_child_s_index_comes_from_its_properties_or_its_id() {
        assert_eq!(child_index(&summary("parent:12", "n", 0)), Some(12));
        assert_eq!(child_index(&summary("parent", "n", 0)), None);
        let indexed = JobSummary::builder()
            .job_id("parent:1")
            .array_properties(ArrayPropertiesSummary::builder().index(4).build())
            .build();
        assert_eq!(child_index(&indexed), Some(4));
    }

    #[test]
    fn failure_reasons_say_what_aws_batch_said() {
        assert_eq!(
            failure_reason(Some("Essential container in task exited"), None, Some(2)),
            "Essential container in task exited (exit code 2)"
        );
        assert_eq!(
            failure_reason(
                Some("Task failed to start"),
                Some("CannotPullContainerError"),
                None
            ),
            "Task failed to start: CannotPullContainerError"
        );
        assert_eq!(failure_reason(Some("same"), Some("same"), None), "same");
        assert_eq!(
            failure_reason(None, None, None),
            "the AWS Batch job failed without a reason"
        );
        assert_eq!(
            failure_reason(None, None, Some(137)),
            "the job's container exited with status 137"
        );
    }
}
