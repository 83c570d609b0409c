//! The `aws-batch` job runner with the real AWS SDK against moto's server, whose AWS Batch runs
//! without Docker: every job ends as soon as it is submitted, succeeding on this binary's
//! shared server and failing on a second server started with `MOTO_SIMPLE_BATCH_FAIL_AFTER=0`.
//! Each test creates its own compute environment, job queue and job definition.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_batch::types::{JobDetail, JobStatus};
use batch_manager::domain::{BatchId, ItemId};
use batch_manager::pipeline::jobs::aws_batch::{AwsBatchRunner, AwsBatchSettings};
use batch_manager::pipeline::jobs::{
    ItemFailure, JobError, JobHandle, JobRunner, JobSpec, JobState, PollRequest, RunLabels,
    RunnerKind, TaskName,
};
use common::aws_batch::BatchQueue;
use common::moto::{moto_endpoint, start_moto_server};
use tokio::sync::OnceCell;

/// A moto server whose AWS Batch jobs all fail.
static FAILING_MOTO: OnceCell<String> = OnceCell::const_new();

/// Longest a test waits for a job to end.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

async fn failing_moto_endpoint() -> String {
    FAILING_MOTO
        .get_or_init(|| start_moto_server(&[("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")]))
        .await
        .clone()
}

/// A queue and job definition of its own on the moto server at `endpoint`, and a runner for
/// them.
struct Setup {
    client: aws_sdk_batch::Client,
    queue: BatchQueue,
    runner: AwsBatchRunner,
    settings: AwsBatchSettings,
}

impl Setup {
    async fn on(endpoint: &str) -> Self {
        let queue = BatchQueue::create(endpoint).await;
        let settings = AwsBatchSettings {
            job_queue: queue.queue.clone(),
            job_definition: queue.definition.clone(),
        };
        Self {
            runner: AwsBatchRunner::new(queue.client.clone(), settings.clone()),
            client: queue.client.clone(),
            queue,
            settings,
        }
    }

    async fn describe(&self, job_id: &str) -> JobDetail {
        self.queue.describe(job_id).await
    }

    /// The top-level jobs in the queue with this name (array children excluded).
    async fn jobs_named(&self, name: &str) -> Vec<aws_sdk_batch::types::JobSummary> {
        self.queue.jobs(Some(name)).await
    }

    async fn poll_one(&self, handle: &JobHandle, spec: &JobSpec) -> JobState {
        self.runner
            .poll(&[PollRequest {
                handle,
                items: &spec.items,
            }])
            .await
            .expect("poll")
            .remove(0)
    }

    /// Polls until the job has ended; panics after [`WAIT_LIMIT`].
    async fn final_state(&self, handle: &JobHandle, spec: &JobSpec) -> JobState {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let state = self.poll_one(handle, spec).await;
            if state.is_final() {
                return state;
            }
            assert!(Instant::now() < deadline, "job {} did not end", handle.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn items(count: usize) -> Vec<ItemId> {
    (0..count)
        .map(|index| ItemId::parse(format!("item-{index}")).unwrap())
        .collect()
}

fn spec(chunk: u64, item_count: usize) -> JobSpec {
    JobSpec {
        batch_id: BatchId::parse("aws-batch-jobs").unwrap(),
        chunk,
        attempt: 0,
        task: TaskName::Task1,
        items: items(item_count),
        labels: RunLabels {
            process_name: None,
            client_name: Some("reporting".to_owned()),
        },
    }
}

fn environment(detail: &JobDetail) -> HashMap<String, String> {
    detail
        .container()
        .expect("a container job")
        .environment()
        .iter()
        .map(|pair| {
            (
                pair.name().unwrap().to_owned(),
                pair.value().unwrap().to_owned(),
            )
        })
        .collect()
}

fn no_failures() -> JobState {
    JobState::Succeeded {
        item_failures: vec![],
    }
}

#[tokio::test]
async fn a_one_item_chunk_is_a_plain_job_that_learns_its_work_from_parameters_and_environment() {
    let setup = Setup::on(&moto_endpoint().await).await;
    let spec = spec(0, 1);
    let handle = setup.runner.submit(&spec).await.unwrap();
    assert_eq!(handle.runner, RunnerKind::AwsBatch);
    assert_eq!(handle.name, spec.name());

    let detail = setup.describe(&handle.job_id).await;
    assert_eq!(detail.job_name(), Some(spec.name().as_str()));
    assert!(detail.array_properties().is_none(), "{detail:?}");
    let parameters = detail.parameters().unwrap();
    assert_eq!(parameters["batchId"], "aws-batch-jobs");
    assert_eq!(parameters["chunk"], "0");
    assert_eq!(parameters["attempt"], "0");
    assert_eq!(parameters["task"], "task1");
    assert_eq!(parameters["itemCount"], "1");
    assert_eq!(parameters["itemsDigest"], spec.items_digest());
    let environment = environment(&detail);
    assert_eq!(environment["BATCH_MANAGER_BATCH_ID"], "aws-batch-jobs");
    assert_eq!(environment["BATCH_MANAGER_TASK"], "task1");
    assert_eq!(environment["BATCH_MANAGER_CLIENT_NAME"], "reporting");
    assert_eq!(environment["BATCH_MANAGER_ITEM_IDS"], r#"["item-0"]"#);
    assert!(!environment.contains_key("BATCH_MANAGER_PROCESS_NAME"));

    assert_eq!(setup.final_state(&handle, &spec).await, no_failures());
}

#[tokio::test]
async fn a_multi_item_chunk_is_an_array_job_of_its_size() {
    let setup = Setup::on(&moto_endpoint().await).await;
    let spec = spec(1, 3);
    let handle = setup.runner.submit(&spec).await.unwrap();
    let detail = setup.describe(&handle.job_id).await;
    assert_eq!(
        detail.array_properties().and_then(|array| array.size()),
        Some(3)
    );
    let children = setup
        .client
        .list_jobs()
        .array_job_id(&handle.job_id)
        .send()
        .await
        .unwrap();
    assert_eq!(children.job_summary_list().len(), 3);
    assert_eq!(
        environment(&detail)["BATCH_MANAGER_ITEM_IDS"],
        r#"["item-0","item-1","item-2"]"#
    );
    assert_eq!(setup.final_state(&handle, &spec).await, no_failures());
}

#[tokio::test]
async fn submitting_the_same_attempt_again_finds_the_job_instead_of_starting_another() {
    let setup = Setup::on(&moto_endpoint().await).await;
    let spec = spec(2, 2);
    let first = setup.runner.submit(&spec).await.unwrap();
    let again = setup.runner.submit(&spec).await.unwrap();
    assert_eq!(again, first);
    // After a crash between submitting and recording the handle, the job is found by name.
    let restarted = AwsBatchRunner::new(setup.client.clone(), setup.settings.clone());
    assert_eq!(
        restarted.find(&spec.name()).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(restarted.submit(&spec).await.unwrap(), first);
    assert_eq!(setup.jobs_named(&spec.name()).await.len(), 1);
    assert_eq!(restarted.find("bm-no-such-job").await.unwrap(), None);

    let mut other_items = spec.clone();
    other_items.items.reverse();
    let error = setup.runner.submit(&other_items).await.unwrap_err();
    assert!(matches!(error, JobError::NameConflict { .. }), "{error}");
    assert_eq!(setup.jobs_named(&spec.name()).await.len(), 1);
}

#[tokio::test]
async fn concurrent_submits_of_one_attempt_agree_on_one_job() {
    let setup = Setup::on(&moto_endpoint().await).await;
    let spec = spec(3, 2);
    let other = AwsBatchRunner::new(setup.client.clone(), setup.settings.clone());
    let (first, second) = tokio::join!(setup.runner.submit(&spec), other.submit(&spec));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second);
    // Any duplicate that got through was terminated, naming the job that was kept.
    for job in setup.jobs_named(&spec.name()).await {
        if job.job_id() != Some(first.job_id.as_str()) {
            let detail = setup.describe(job.job_id().unwrap()).await;
            assert_eq!(
                detail.status_reason(),
                Some(format!("a duplicate of job {} for the same attempt", first.job_id).as_str())
            );
        }
    }
}

#[tokio::test]
async fn one_poll_reads_many_jobs_in_order_and_reports_unknown_ones_lost() {
    let setup = Setup::on(&moto_endpoint().await).await;
    let specs: Vec<JobSpec> = (0..105)
        .map(|chunk| spec(100 + chunk, 1 + chunk as usize % 3))
        .collect();
    let mut handles = Vec::new();
    for spec in &specs {
        handles.push(setup.runner.submit(spec).await.unwrap());
    }
    let unknown = JobHandle {
        runner: RunnerKind::AwsBatch,
        name: "bm-unknown".to_owned(),
        job_id: uuid::Uuid::new_v4().to_string(),
    };
    let mut requests: Vec<PollRequest<'_>> = specs
        .iter()
        .zip(&handles)
        .map(|(spec, handle)| PollRequest {
            handle,
            items: &spec.items,
        })
        .collect();
    requests.insert(
        50,
        PollRequest {
            handle: &unknown,
            items: &specs[0].items,
        },
    );
    let states = setup.runner.poll(&requests).await.unwrap();
    assert_eq!(states.len(), 106);
    for (index, state) in states.iter().enumerate() {
        let expected = if index == 50 {
            JobState::Lost
        } else {
            no_failures()
        };
        assert_eq!(state, &expected, "job {index}");
    }
}

#[tokio::test]
async fn polling_with_other_items_or_a_command_handle_is_an_error() {
    let setup = Setup::on(&moto_endpoint().await).await;
    let spec = spec(4, 2);
    let handle = setup.runner.submit(&spec).await.unwrap();
    let other_items = items(3);
    let error = setup
        .runner
        .poll(&[PollRequest {
            handle: &handle,
            items: &other_items,
        }])
        .await
        .unwrap_err();
    assert!(matches!(error, JobError::ItemsMismatch { .. }), "{error}");
    let command_handle = JobHandle {
        runner: RunnerKind::Command,
        ..handle.clone()
    };
    let error = setup
        .runner
        .stop(&command_handle, "stop")
        .await
        .unwrap_err();
    assert!(matches!(error, JobError::ForeignHandle { .. }), "{error}");
}

#[tokio::test]
async fn stop_terminates_the_job_with_the_reason() {
    let setup = Setup::on(&moto_endpoint().await).await;
    let spec = spec(5, 1);
    let handle = setup.runner.submit(&spec).await.unwrap();
    setup
        .runner
        .stop(&handle, "the attempt's deadline passed")
        .await
        .unwrap();
    let detail = setup.describe(&handle.job_id).await;
    assert_eq!(
        detail.status_reason(),
        Some("the attempt's deadline passed")
    );
    // moto's Docker-free jobs have ended before they can be stopped, so the job keeps the
    // status it ended with; AWS Batch fails a running job it terminates.
    assert!(
        matches!(
            detail.status(),
            Some(JobStatus::Succeeded | JobStatus::Failed)
        ),
        "{detail:?}"
    );
}

#[tokio::test]
async fn a_failed_plain_job_fails_the_attempt_with_its_reason() {
    let setup = Setup::on(&failing_moto_endpoint().await).await;
    let spec = spec(6, 1);
    let handle = setup.runner.submit(&spec).await.unwrap();
    assert_eq!(
        setup.final_state(&handle, &spec).await,
        JobState::Failed {
            reason: "the AWS Batch job failed without a reason".to_owned()
        }
    );
    setup.runner.stop(&handle, "batch cancelled").await.unwrap();
    assert_eq!(
        setup.final_state(&handle, &spec).await,
        JobState::Failed {
            reason: "batch cancelled".to_owned()
        }
    );
}

#[tokio::test]
async fn a_failed_array_job_fails_the_items_of_its_failed_children() {
    let setup = Setup::on(&failing_moto_endpoint().await).await;
    let spec = spec(7, 3);
    let handle = setup.runner.submit(&spec).await.unwrap();
    assert_eq!(
        setup.describe(&handle.job_id).await.status(),
        Some(&JobStatus::Failed)
    );
    for (index, reason) in [(0, "out of memory"), (2, "input file missing")] {
        setup
            .client
            .terminate_job()
            .job_id(format!("{}:{index}", handle.job_id))
            .reason(reason)
            .send()
            .await
            .unwrap();
    }
    let failure = |index: usize, message: &str| ItemFailure {
        item_id: spec.items[index].clone(),
        message: message.to_owned(),
    };
    assert_eq!(
        setup.final_state(&handle, &spec).await,
        JobState::Succeeded {
            item_failures: vec![
                failure(0, "out of memory"),
                failure(1, "the AWS Batch job failed without a reason"),
                failure(2, "input file missing"),
            ]
        }
    );
}

#[tokio::test]
async fn verify_accepts_the_settings_and_names_a_missing_queue_or_definition() {
    let setup = Setup::on(&moto_endpoint().await).await;
    setup.runner.verify().await.unwrap();
    let with = |job_queue: &str, job_definition: &str| {
        AwsBatchRunner::new(
            setup.client.clone(),
            AwsBatchSettings {
                job_queue: job_queue.to_owned(),
                job_definition: job_definition.to_owned(),
            },
        )
    };
    let queue = &setup.settings.job_queue;
    let definition = &setup.settings.job_definition;
    with(queue, &format!("{definition}:1"))
        .verify()
        .await
        .unwrap();
    assert_eq!(
        with("no-such-queue", definition)
            .verify()
            .await
            .unwrap_err()
            .to_string(),
        "invalid job runner settings: the job queue no-such-queue does not exist"
    );
    assert_eq!(
        with(queue, "no-such-definition")
            .verify()
            .await
            .unwrap_err()
            .to_string(),
        "invalid job runner settings: the job definition no-such-definition does not exist or is not active"
    );
}
