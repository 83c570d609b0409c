//! Task 2 as an AWS Batch job, through the binary's Lambda roles under the Runtime API emulator
//! and the shipped definition, on moto's server (DynamoDB, Step Functions and a Docker-free AWS
//! Batch whose jobs end as soon as they are submitted): whole batches, the failure mapping, a
//! replayed submit, cancel, and the old submitter's run requests through `init`.

mod common;

use std::net::SocketAddr;

use batch_manager::app::{AwsApp, AwsConfig};
use batch_manager::config::AwsSettings;
use batch_manager::domain::{BatchId, BatchStatus, ItemStatus, Timestamp};
use batch_manager::engine::local::asl::Step;
use batch_manager::grpc::pb;
use batch_manager::pipeline::jobs::aws_batch::{AwsBatchRunner, AwsBatchSettings};
use batch_manager::pipeline::jobs::{job_name, JobRunner, JobSpec, RunLabels, TaskName};
use batch_manager::store::dynamo::DynamoTables;
use batch_manager::store::{BatchStore, ItemQuery, JobStore};
use common::aws_batch::BatchQueue;
use common::lambda::{fixture, http_reply, play_all_executions, ChunkFunctions, MotoStack};
use common::moto::start_moto_server;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

const SEED_BATCH_ID: &str = "4b4dc5c6-fbd9-493d-98ff-c459c378f45d";

/// Held while a test sets process environment for a server it starts in this process (the
/// functions run with a cleared environment of their own).
static PROCESS_ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A moto server whose AWS Batch jobs all fail.
static FAILING_MOTO: OnceCell<String> = OnceCell::const_new();

async fn failing_moto_endpoint() -> String {
    FAILING_MOTO
        .get_or_init(|| start_moto_server(&[("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")]))
        .await
        .clone()
}

/// Task 2's AWS Batch settings, as the stack template passes them to the functions.
fn task2_jobs_env(queue: &BatchQueue) -> Vec<(String, String)> {
    [
        ("TASK2_JOB_QUEUE", queue.queue.as_str()),
        ("TASK2_JOB_DEFINITION", queue.definition.as_str()),
        ("JOB_POLL_INTERVAL_SECONDS", "1"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

/// A stack, a queue on the same moto server, and the four functions with task 2 on AWS Batch.
struct JobStack {
    stack: MotoStack,
    queue: BatchQueue,
    init: common::lambda::LambdaFunction,
    functions: ChunkFunctions,
}

impl JobStack {
    async fn deploy(endpoint: String, prefix: &str) -> Self {
        let stack = MotoStack::deploy_on(endpoint, prefix).await;
        let queue = BatchQueue::create(&stack.endpoint).await;
        let env = task2_jobs_env(&queue);
        let (init, functions) = tokio::join!(
            stack.function_with("init", &env),
            ChunkFunctions::start_with(&stack, &env)
        );
        Self {
            stack,
            queue,
            init,
            functions,
        }
    }

    async fn post_seed(&self) {
        let (status, body) = http_reply(self.init.invoke(fixture("apigw-v2-seed.json")).await);
        assert_eq!(status, 200, "{body}");
    }

    async fn batch(&self, batch_id: &BatchId) -> batch_manager::domain::Batch {
        self.stack
            .store()
            .get_batch(batch_id)
            .await
            .unwrap()
            .expect("the batch is stored")
    }

    async fn items(&self, batch_id: &BatchId) -> Vec<batch_manager::domain::ItemRecord> {
        self.stack
            .store()
            .list_items(&ItemQuery {
                batch_id: batch_id.clone(),
                status: None,
                page_size: 1000,
                page_token: None,
            })
            .await
            .unwrap()
            .entries
    }
}

fn task_event(chunk: u64) -> Value {
    json!({ "batchId": SEED_BATCH_ID, "chunk": chunk, "attempt": 0 })
}

#[tokio::test]
async fn a_batch_runs_through_the_lambda_roles_as_one_aws_batch_array_job_per_chunk() {
    let jobs = JobStack::deploy(common::moto::moto_endpoint().await, "awsb-whole").await;
    jobs.post_seed().await;

    let ends = play_all_executions(&jobs.stack, &jobs.init, &jobs.functions).await;
    assert_eq!(ends.len(), 2);
    for end in &ends {
        assert!(matches!(end, Step::Succeeded(_)), "{end:?}");
    }
    let batch_id = BatchId::parse(SEED_BATCH_ID).unwrap();
    let batch = jobs.batch(&batch_id).await;
    assert_eq!(batch.status, BatchStatus::Completed, "{batch:?}");
    assert_eq!((batch.succeeded_items, batch.failed_items), (10, 0));

    let submitted = jobs.queue.jobs(None).await;
    assert_eq!(submitted.len(), 2, "one job per chunk: {submitted:?}");
    for chunk in 0..2 {
        let name = job_name(&batch_id, chunk, 0, TaskName::Task2);
        let named = jobs.queue.jobs(Some(&name)).await;
        assert_eq!(named.len(), 1, "{name}");
        let detail = jobs.queue.describe(named[0].job_id().unwrap()).await;
        assert_eq!(
            detail.array_properties().and_then(|array| array.size()),
            Some(5),
            "an array job of the chunk's size"
        );
    }
}

#[tokio::test]
async fn failed_children_fail_their_items_and_a_failed_plain_job_is_submitted_again() {
    let jobs = JobStack::deploy(failing_moto_endpoint().await, "awsb-fail").await;
    jobs.post_seed().await;
    let (status, body) = http_reply(jobs.init.invoke(fixture("apigw-v2-runrequests.json")).await);
    assert_eq!(status, 200, "{body}");
    let run_request_id = body["runRequestID"].as_str().unwrap().to_owned();

    let ends = play_all_executions(&jobs.stack, &jobs.init, &jobs.functions).await;
    assert_eq!(ends.len(), 3);

    // The chunks' array jobs ended; each failed child fails its own item, once.
    let batch_id = BatchId::parse(SEED_BATCH_ID).unwrap();
    let batch = jobs.batch(&batch_id).await;
    assert_eq!(batch.status, BatchStatus::Failed, "{batch:?}");
    assert_eq!((batch.succeeded_items, batch.failed_items), (0, 10));
    for item in jobs.items(&batch_id).await {
        assert_eq!(item.status, ItemStatus::Failed);
        assert_eq!(item.attempts, 1, "{item:?}");
        assert!(!item.error.unwrap_or_default().is_empty());
    }

    // The run request's plain job failed as a whole: three attempts, three jobs, then the
    // item fails with the job's reason.
    let run_batch = BatchId::parse(run_request_id.clone()).unwrap();
    let batch = jobs.batch(&run_batch).await;
    assert_eq!(batch.status, BatchStatus::Failed, "{batch:?}");
    let item = jobs.items(&run_batch).await.remove(0);
    assert_eq!(item.attempts, 3, "{item:?}");
    assert_eq!(
        item.error.as_deref(),
        Some("the AWS Batch job failed without a reason")
    );
    for suffix in ["", "-1", "-2"] {
        let name = format!("APOST-2Sigma-{run_request_id}{suffix}");
        assert_eq!(jobs.queue.jobs(Some(&name)).await.len(), 1, "{name}");
    }
}

#[tokio::test]
async fn a_replayed_submit_finds_the_recorded_job_and_submits_nothing() {
    let jobs = JobStack::deploy(common::moto::moto_endpoint().await, "awsb-replay").await;
    jobs.post_seed().await;
    jobs.functions.task1.invoke(task_event(0)).await.unwrap();

    let first = jobs.functions.task2.invoke(task_event(0)).await.unwrap();
    assert_eq!(first["job"]["status"], json!("RUNNING"), "{first}");
    assert_eq!(first["job"]["attempt"], json!(0));
    // Lambda may deliver the event again, or Step Functions retry the state.
    let replayed = jobs.functions.task2.invoke(task_event(0)).await.unwrap();
    assert_eq!(replayed["job"]["name"], first["job"]["name"]);
    assert_eq!(jobs.queue.jobs(None).await.len(), 1);
}

#[tokio::test]
async fn a_submit_cut_short_after_the_job_started_finds_it_by_its_name() {
    let jobs = JobStack::deploy(common::moto::moto_endpoint().await, "awsb-crash").await;
    jobs.post_seed().await;
    jobs.functions.task1.invoke(task_event(1)).await.unwrap();
    let batch_id = BatchId::parse(SEED_BATCH_ID).unwrap();
    let store = jobs.stack.store();
    let chunk = store.load_chunk(&batch_id, 1).await.unwrap().unwrap();

    // A step that recorded its submission and started the job, then died before recording
    // the job's ID.
    let spec = JobSpec {
        batch_id: batch_id.clone(),
        chunk: 1,
        attempt: 0,
        task: TaskName::Task2,
        items: chunk.items.clone(),
        labels: RunLabels::default(),
    };
    let runner = AwsBatchRunner::new(
        jobs.queue.client.clone(),
        AwsBatchSettings {
            job_queue: jobs.queue.queue.clone(),
            job_definition: jobs.queue.definition.clone(),
        },
    );
    let started = runner.submit(&spec).await.unwrap();
    let intent = json!({
        "task": "task2", "attempt": 0, "name": spec.name(),
        "submittedAt": Timestamp::now().0, "deadlineSeconds": 3600, "status": "SUBMITTING"
    });
    store
        .put_job(&batch_id, 1, &intent.to_string(), None)
        .await
        .unwrap();

    let replayed = jobs.functions.task2.invoke(task_event(1)).await.unwrap();
    assert_eq!(replayed["job"]["name"], json!(spec.name()), "{replayed}");
    let named = jobs.queue.jobs(Some(&spec.name())).await;
    assert_eq!(named.len(), 1, "no second job: {named:?}");
    assert_eq!(named[0].job_id(), Some(started.job_id.as_str()));
    let recorded: Value =
        serde_json::from_str(&store.load_job(&batch_id, 1).await.unwrap().unwrap().record).unwrap();
    assert_eq!(recorded["status"], json!("RUNNING"));
    assert_eq!(recorded["handle"]["jobId"], json!(started.job_id));
}

#[tokio::test]
async fn cancel_from_the_admin_service_terminates_the_batchs_running_jobs() {
    let jobs = JobStack::deploy(common::moto::moto_endpoint().await, "awsb-cancel").await;
    jobs.post_seed().await;
    jobs.functions.task1.invoke(task_event(0)).await.unwrap();
    let submitted = jobs.functions.task2.invoke(task_event(0)).await.unwrap();
    let name = submitted["job"]["name"].as_str().unwrap().to_owned();
    let job_id = jobs.queue.jobs(Some(&name)).await[0]
        .job_id()
        .unwrap()
        .to_owned();

    // `serve --backend aws` next to the stack, with task 2's queue in its environment as an
    // operator would run it. The functions run with a cleared environment, so setting it
    // here reaches this process only.
    let env_lock = PROCESS_ENV.lock().await;
    for (name, value) in task2_jobs_env(&jobs.queue) {
        std::env::set_var(name, value);
    }
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let app = AwsApp::spawn(
        AwsConfig {
            grpc_addr: loopback,
            http_addr: loopback,
            stack: AwsSettings {
                tables: DynamoTables {
                    batch_table: jobs.stack.batch_table.clone(),
                    request_table: jobs.stack.request_table.clone(),
                },
                state_machine_arn: jobs.stack.state_machine_arn.clone(),
            },
            connections: batch_manager::config::ConnectionConfig::default(),
            jobs: batch_manager::app::JobConfig::default(),
            items_buckets: Default::default(),
            access: Default::default(),
        },
        &jobs.stack.sdk_config,
    )
    .await
    .expect("the server starts");
    drop(env_lock);
    let mut client = common::connect(app.grpc_addr).await;
    client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: SEED_BATCH_ID.to_owned(),
        })
        .await
        .expect("CancelBatch");

    let detail = jobs.queue.describe(&job_id).await;
    assert_eq!(
        detail.status_reason(),
        Some("the batch was cancelled while its job ran"),
        "TerminateJob was called with the cancel's reason"
    );
    // The chunk's next poll ends it, and its items fail with the cancel's message.
    let poll = json!({ "batchId": SEED_BATCH_ID, "chunk": 0, "job": submitted["job"] });
    let error = jobs.functions.task2.invoke(poll).await.unwrap_err();
    assert_eq!(error.error_type, "BatchManager.BatchCancelled");
    // The definition's Catch hands that error to the update, which records the chunk.
    let update = json!({
        "batchId": SEED_BATCH_ID, "chunk": 0,
        "failure": { "Error": error.error_type, "Cause": error.error_message }
    });
    jobs.functions.update.invoke(update).await.unwrap();
    let batch = jobs.batch(&BatchId::parse(SEED_BATCH_ID).unwrap()).await;
    assert_eq!(batch.status, BatchStatus::Cancelled, "{batch:?}");
    assert_eq!(
        (batch.failed_items, batch.cancelled_items),
        (0, 10),
        "the stopped job's items and the unstarted chunk's end cancelled"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_requests_reach_init_as_rest_and_http_api_events_and_run_as_named_jobs() {
    let jobs = JobStack::deploy(common::moto::moto_endpoint().await, "awsb-runreq").await;
    let mut ids = Vec::new();
    for event in ["apigw-v1-runrequests.json", "apigw-v2-runrequests.json"] {
        let (status, body) = http_reply(jobs.init.invoke(fixture(event)).await);
        assert_eq!(status, 200, "{event}: {body}");
        let id = body["runRequestID"]
            .as_str()
            .expect("runRequestID")
            .to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        ids.push(id);
    }
    let ends = play_all_executions(&jobs.stack, &jobs.init, &jobs.functions).await;
    assert_eq!(ends.len(), 2);
    for id in &ids {
        let batch_id = BatchId::parse(id.clone()).unwrap();
        let batch = jobs.batch(&batch_id).await;
        assert_eq!(batch.status, BatchStatus::Completed, "{batch:?}");
        assert_eq!(batch.total_items, 1);
        let items = jobs.items(&batch_id).await;
        assert_eq!(items[0].item_id.as_str(), id);
        let named = jobs.queue.jobs(Some(&format!("APOST-2Sigma-{id}"))).await;
        assert_eq!(named.len(), 1, "the old submitter's job name");
    }

    let malformed = [
        (json!({"clientname": "2Sigma"}), "processname: is required"),
        (
            json!({"processname": "APOST", "clientname": "2 Sigma"}),
            "clientname: must hold only letters, digits, '-' and '_'",
        ),
        (
            json!({"processname": "p".repeat(65), "clientname": "c"}),
            "processname: must be at most 64 characters",
        ),
        (
            json!({"processname": "p", "clientname": "c", "timestamp": 7}),
            "timestamp: must be a string",
        ),
    ];
    for (body, message) in malformed {
        let mut event = fixture("apigw-v2-runrequests.json");
        event["body"] = Value::String(body.to_string());
        let (status, reply) = http_reply(jobs.init.invoke(event).await);
        assert_eq!((status, reply), (400, json!({ "message": message })));
    }

    // Without task 2's queue, init refuses run requests: nothing would run them.
    let plain_init = jobs.stack.function("init").await;
    let (status, reply) = http_reply(
        plain_init
            .invoke(fixture("apigw-v1-runrequests.json"))
            .await,
    );
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("external job"),
        "{reply}"
    );
}

/// Runs `batch-manager job-items` as an AWS Batch job would, with `vars` besides moto's.
fn job_items(stack: &MotoStack, vars: &[(&str, String)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_batch-manager"));
    command
        .arg("job-items")
        .env_clear()
        .env("BATCH_TABLE", &stack.batch_table)
        .env("REQUEST_TABLE", &stack.request_table);
    for (name, value) in common::moto::aws_env(&stack.endpoint) {
        command.env(name, value);
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("run batch-manager job-items")
}

#[tokio::test]
async fn a_job_reads_the_items_it_was_submitted_with_from_the_stack() {
    let jobs = JobStack::deploy(common::moto::moto_endpoint().await, "awsb-items").await;
    jobs.post_seed().await;
    jobs.functions.task1.invoke(task_event(1)).await.unwrap();
    let submitted = jobs.functions.task2.invoke(task_event(1)).await.unwrap();
    let name = submitted["job"]["name"].as_str().unwrap();
    let job = jobs.queue.jobs(Some(name)).await.remove(0);
    let detail = jobs.queue.describe(job.job_id().unwrap()).await;
    let environment: std::collections::HashMap<String, String> = detail
        .container()
        .unwrap()
        .environment()
        .iter()
        .map(|pair| {
            (
                pair.name().unwrap().to_owned(),
                pair.value().unwrap().to_owned(),
            )
        })
        .collect();
    let job_vars = |extra: &[(&'static str, &str)]| {
        let mut vars: Vec<(&str, String)> = [
            "BATCH_MANAGER_BATCH_ID",
            "BATCH_MANAGER_CHUNK",
            "BATCH_MANAGER_ITEMS_DIGEST",
        ]
        .into_iter()
        .map(|name| (name, environment[name].clone()))
        .collect();
        vars.extend(extra.iter().map(|(name, value)| (*name, value.to_string())));
        vars
    };
    let batch_id = BatchId::parse(SEED_BATCH_ID).unwrap();
    let chunk = jobs
        .stack
        .store()
        .load_chunk(&batch_id, 1)
        .await
        .unwrap()
        .unwrap();
    let expected: Vec<String> = chunk.items.iter().map(|item| item.to_string()).collect();
    let inline: Vec<String> = serde_json::from_str(&environment["BATCH_MANAGER_ITEM_IDS"]).unwrap();
    assert_eq!(inline, expected, "small chunks get their IDs inline too");

    let all = job_items(&jobs.stack, &job_vars(&[]));
    assert!(all.status.success(), "{all:?}");
    let printed: Vec<String> = String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed, expected);

    let child = job_items(
        &jobs.stack,
        &job_vars(&[("AWS_BATCH_JOB_ARRAY_INDEX", "3")]),
    );
    assert!(child.status.success(), "{child:?}");
    assert_eq!(
        String::from_utf8(child.stdout).unwrap(),
        format!("{}\n", expected[3])
    );

    let mut wrong = job_vars(&[]);
    wrong[2].1 = "0".repeat(64);
    let refused = job_items(&jobs.stack, &wrong);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty(), "no list is printed");
    let message = String::from_utf8(refused.stderr).unwrap();
    assert!(
        message.contains("not those the job was submitted with"),
        "{message}"
    );
}

#[tokio::test]
async fn serve_runs_task_2_as_aws_batch_jobs_on_its_embedded_engine() {
    let endpoint = common::moto::moto_endpoint().await;
    let queue = BatchQueue::create(&endpoint).await;
    let env_lock = PROCESS_ENV.lock().await;
    // As a user runs it: `serve` with AWS credentials and task 2's queue in its environment.
    for (name, value) in common::moto::aws_env(&endpoint)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .chain(task2_jobs_env(&queue))
    {
        std::env::set_var(name, value);
    }
    let mut app = common::spawn_app_with_jobs(batch_manager::app::JobConfig {
        first_poll_interval: std::time::Duration::from_secs(1),
        ..batch_manager::app::JobConfig::default()
    })
    .await;
    drop(env_lock);

    let ids = common::uuids(10);
    app.client
        .submit_batch(common::submit_request("served-jobs", ids, 5))
        .await
        .expect("SubmitBatch");
    let batch = app.wait_terminal("served-jobs").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!(batch.succeeded_items, 10);
    let batch_id = BatchId::parse("served-jobs").unwrap();
    for chunk in 0..2 {
        let name = job_name(&batch_id, chunk, 0, TaskName::Task2);
        assert_eq!(queue.jobs(Some(&name)).await.len(), 1, "{name}");
    }
    assert_eq!(queue.jobs(None).await.len(), 2);
}
