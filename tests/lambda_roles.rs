//! The binary in its four Lambda roles, run as Lambda runs it: under a Runtime API emulator, on
//! DynamoDB and Step Functions (moto), with API Gateway and Step Functions events as fixtures.
//! moto stores the executions `init` starts without running them, so the tests play Step
//! Functions: each execution's input goes through the shipped definition on the project's own
//! interpreter, whose Task states invoke the task1, task2 and update functions.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use batch_manager::domain::{BatchId, BatchStatus, ItemStatus, Timestamp};
use batch_manager::engine::local::asl::{
    ExecutionContext, StateMachine, Step, TaskFailure, TaskInvoker,
};
use batch_manager::engine::stepfunctions::execution_name;
use batch_manager::engine::STATE_MACHINE_DEFINITION;
use batch_manager::pipeline::tasks::NOT_A_UUID;
use batch_manager::store::{BatchStore, ItemQuery};
use common::lambda::{
    definition_substitutions, fixture, function_arn, http_reply, play_all_executions,
    ChunkFunctions, FunctionError, LambdaFunction, MotoStack, START_DEADLINE,
};
use serde_json::{json, Value};

const SEED_BATCH_ID: &str = "4b4dc5c6-fbd9-493d-98ff-c459c378f45d";
const ROLE_NAMES: &str = "init, task1, task2, update";

/// An API Gateway event carrying `body` as its (plain text) body.
fn with_body(mut event: Value, body: &Value) -> Value {
    event["body"] = Value::String(body.to_string());
    event["isBase64Encoded"] = Value::Bool(false);
    event
}

/// Environment with no stack behind it, for functions that must fail or answer before any
/// AWS call.
fn offline_env() -> Vec<(String, String)> {
    [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("BATCH_TABLE", "offline-batches"),
        ("REQUEST_TABLE", "offline-requests"),
        (
            "STATE_MACHINE_ARN",
            "arn:aws:states:us-east-1:123456789012:stateMachine:offline",
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

async fn offline_function(handler: Option<&str>, extra: &[(&str, &str)]) -> LambdaFunction {
    let mut vars = offline_env();
    vars.extend(
        extra
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    LambdaFunction::start(handler, &vars).await
}

async fn assert_fails_at_init(mut function: LambdaFunction, error_type: &str) -> FunctionError {
    let error = function
        .api
        .init_error(START_DEADLINE)
        .await
        .unwrap_or_else(|| panic!("no init error was reported: {}", function.logs()));
    assert_eq!(error.error_type, error_type, "{error:?}");
    let status = function
        .exit_status(START_DEADLINE)
        .await
        .expect("the process exits after reporting the init error");
    assert!(!status.success(), "{status:?}");
    assert!(
        function.api.first_poll(Duration::ZERO).await.is_none(),
        "a function that failed init must not poll for events"
    );
    error
}

#[tokio::test]
async fn an_unknown_role_fails_at_init_naming_the_valid_roles() {
    let function = offline_function(Some("bogus"), &[]).await;
    let error = assert_fails_at_init(function, "BatchManager.UnknownRole").await;
    assert!(error.error_message.contains("\"bogus\""), "{error:?}");
    assert!(error.error_message.contains(ROLE_NAMES), "{error:?}");
}

#[tokio::test]
async fn a_missing_role_fails_at_init_naming_the_valid_roles() {
    let function = offline_function(None, &[]).await;
    let error = assert_fails_at_init(function, "BatchManager.UnknownRole").await;
    assert!(error.error_message.contains(ROLE_NAMES), "{error:?}");
    assert!(error.error_message.contains("_HANDLER"), "{error:?}");
}

#[tokio::test]
async fn a_missing_setting_fails_at_init_naming_the_variable() {
    let mut vars = offline_env();
    vars.retain(|(name, _)| name != "STATE_MACHINE_ARN");
    let function = LambdaFunction::start(Some("init"), &vars).await;
    let error = assert_fails_at_init(function, "BatchManager.MissingSetting").await;
    assert_eq!(
        error.error_message,
        "missing environment variable STATE_MACHINE_ARN"
    );

    let mut vars = offline_env();
    vars.retain(|(name, _)| name != "REQUEST_TABLE");
    let function = LambdaFunction::start(Some("update"), &vars).await;
    let error = assert_fails_at_init(function, "BatchManager.MissingSetting").await;
    assert_eq!(
        error.error_message,
        "missing environment variable REQUEST_TABLE"
    );
}

#[tokio::test]
async fn batch_manager_handler_overrides_the_handler_property() {
    let function = offline_function(Some("bootstrap"), &[("BATCH_MANAGER_HANDLER", "init")]).await;
    let event = with_body(fixture("apigw-v2-seed.json"), &json!({}));
    let (status, body) = http_reply(function.invoke(event).await);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body, json!({"message": "batchId: is required"}));
}

#[tokio::test]
async fn a_malformed_seed_body_is_400_naming_the_field_and_writes_nothing() {
    let stack = MotoStack::deploy("lambda-400").await;
    let init = stack.function("init").await;
    let mut seed = common::seed_body();
    seed["itemIds"][3] = json!(42);
    let cases = [
        (
            fixture("apigw-v1-seed.json"),
            seed.to_string(),
            "itemIds[3]: ",
        ),
        (
            fixture("apigw-v2-seed.json"),
            json!({"batchId": "b"}).to_string(),
            "totalItems: ",
        ),
        (
            fixture("apigw-v2-seed.json"),
            "{not json".to_owned(),
            "body: ",
        ),
    ];
    let local = common::spawn_app().await;
    for (mut event, body, field) in cases {
        event["body"] = Value::String(body.clone());
        let (status, reply) = http_reply(init.invoke(event).await);
        assert_eq!(status, 400, "{reply}");
        let message = reply["message"].as_str().expect("message");
        assert!(message.starts_with(field), "{message}");
        // Word for word what the local endpoint answers.
        let local_reply = reqwest::Client::new()
            .post(local.http_url("/stateMachineInit"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("local POST");
        assert_eq!(local_reply.status().as_u16(), 400);
        assert_eq!(local_reply.json::<Value>().await.unwrap(), reply);
    }
    assert!(stack.executions().await.is_empty());
    let seed_batch = BatchId::parse(SEED_BATCH_ID).unwrap();
    assert_eq!(stack.store().get_batch(&seed_batch).await.unwrap(), None);
}

#[tokio::test]
async fn other_routes_and_methods_get_404_and_405_and_stage_prefixes_are_routed() {
    let function = offline_function(Some("init"), &[]).await;

    let mut other_route = fixture("apigw-v2-seed.json");
    other_route["rawPath"] = json!("/stateMachineInits");
    other_route["requestContext"]["http"]["path"] = json!("/stateMachineInits");
    let (status, body) = http_reply(function.invoke(other_route).await);
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].is_string(), "{body}");

    let mut wrong_method = fixture("apigw-v1-seed.json");
    wrong_method["httpMethod"] = json!("GET");
    let response = function.invoke(wrong_method).await.expect("a response");
    assert_eq!(
        response["multiValueHeaders"]["allow"],
        json!(["POST"]),
        "{response}"
    );
    let (status, body) = http_reply(Ok(response));
    assert_eq!(status, 405, "{body}");
    assert!(body["message"].as_str().unwrap().contains("POST"), "{body}");

    // A named stage shows in the path API Gateway delivers; a trailing slash may follow.
    let mut staged = with_body(fixture("apigw-v2-seed.json"), &json!({}));
    staged["rawPath"] = json!("/prod/stateMachineInit/");
    staged["requestContext"]["stage"] = json!("prod");
    let (status, body) = http_reply(function.invoke(staged).await);
    assert_eq!(status, 400, "routed to the seed handler: {body}");
    let mut staged_v1 = with_body(fixture("apigw-v1-seed.json"), &json!({}));
    staged_v1["path"] = json!("/stateMachineInit/");
    let (status, body) = http_reply(function.invoke(staged_v1).await);
    assert_eq!(status, 400, "routed to the seed handler: {body}");
}

#[tokio::test]
async fn init_answers_rest_and_http_api_events_and_its_stream_starts_each_chunk_once() {
    let stack = MotoStack::deploy("lambda-init").await;
    let init = stack.function("init").await;
    let expected = json!({"batchId": SEED_BATCH_ID, "totalItems": 10});

    let (status, body) = http_reply(init.invoke(fixture("apigw-v1-seed.json")).await);
    assert_eq!((status, &body), (200, &expected));
    // The request only stored the part; the stream starts its chunks.
    assert!(stack.executions().await.is_empty());
    assert_eq!(
        stack.deliver_stream(&init).await,
        1,
        "the part's written mark"
    );

    let batch_id = BatchId::parse(SEED_BATCH_ID).unwrap();
    let expected_executions = vec![
        (
            execution_name(&batch_id, 0),
            json!({"batchId": SEED_BATCH_ID, "chunk": 0}),
        ),
        (
            execution_name(&batch_id, 1),
            json!({"batchId": SEED_BATCH_ID, "chunk": 1}),
        ),
    ];
    let mut sorted = expected_executions.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(stack.executions().await, sorted);

    // A retried POST (HTTP API this time, and base64-encoded) is answered alike and starts
    // nothing new: the same names are the same executions.
    for event in ["apigw-v2-seed.json", "apigw-v2-seed-base64.json"] {
        let (status, body) = http_reply(init.invoke(fixture(event)).await);
        assert_eq!((status, &body), (200, &expected), "{event}");
    }
    stack.deliver_stream(&init).await;
    assert_eq!(stack.executions().await, sorted);

    let batch = stack
        .store()
        .get_batch(&batch_id)
        .await
        .unwrap()
        .expect("the batch is stored");
    assert_eq!(batch.total_items, 10);
    assert_eq!(batch.received_items, 10);
    assert_eq!(batch.total_chunks, 2);
    assert_eq!(batch.status, BatchStatus::Pending);
}

#[tokio::test]
async fn a_chunk_whose_execution_already_exists_counts_as_started() {
    let stack = MotoStack::deploy("lambda-exists").await;
    let batch_id = BatchId::parse(SEED_BATCH_ID).unwrap();
    // On a Standard workflow, a closed execution (or one with other input) under the same
    // name makes StartExecution answer ExecutionAlreadyExists.
    let earlier_input = json!({"batchId": SEED_BATCH_ID, "chunk": 1, "earlier": true});
    stack
        .sfn()
        .start_execution()
        .state_machine_arn(&stack.state_machine_arn)
        .name(execution_name(&batch_id, 1))
        .input(earlier_input.to_string())
        .send()
        .await
        .expect("start the earlier execution");
    let init = stack.function("init").await;

    let (status, body) = http_reply(init.invoke(fixture("apigw-v2-seed.json")).await);
    assert_eq!(status, 200, "{body}");
    stack.deliver_stream(&init).await;
    let executions = stack.executions().await;
    assert_eq!(executions.len(), 2, "{executions:?}");
    assert!(executions.contains(&(execution_name(&batch_id, 1), earlier_input)));
    assert!(executions.contains(&(
        execution_name(&batch_id, 0),
        json!({"batchId": SEED_BATCH_ID, "chunk": 0})
    )));
}

#[tokio::test]
async fn the_seed_example_runs_through_all_four_roles_to_exact_counts() {
    let stack = MotoStack::deploy("lambda-seed").await;
    let (init, functions) = tokio::join!(stack.function("init"), ChunkFunctions::start(&stack));
    let (status, body) = http_reply(init.invoke(fixture("apigw-v2-seed.json")).await);
    assert_eq!(status, 200, "{body}");

    let ends = play_all_executions(&stack, &init, &functions).await;
    assert_eq!(ends.len(), 2);
    for end in &ends {
        let Step::Succeeded(output) = end else {
            panic!("the execution failed: {end:?}");
        };
        assert_eq!(output["batchId"], json!(SEED_BATCH_ID), "{output}");
        assert_eq!(output["recorded"], json!(true), "{output}");
    }

    let batch_id = BatchId::parse(SEED_BATCH_ID).unwrap();
    let store = stack.store();
    let batch = store.get_batch(&batch_id).await.unwrap().expect("batch");
    assert_eq!(batch.status, BatchStatus::Completed, "{batch:?}");
    assert_eq!(batch.succeeded_items, 10);
    assert_eq!(batch.failed_items, 0);
    assert_eq!(batch.pending_items(), 0);
    assert_eq!(batch.completed_chunks, 2);

    // Lambda may deliver an event twice: a replayed update counts nothing again.
    let replay = functions
        .update
        .invoke(fixture("update-event.json"))
        .await
        .expect("a replayed update succeeds");
    assert_eq!(replay["recorded"], json!(false), "{replay}");
    assert_eq!(replay["batchStatus"], json!("COMPLETED"), "{replay}");
    assert_eq!(store.get_batch(&batch_id).await.unwrap(), Some(batch));
}

#[tokio::test]
async fn a_mixed_batch_ends_with_exact_failed_and_succeeded_counts() {
    let stack = MotoStack::deploy("lambda-mixed").await;
    let (init, functions) = tokio::join!(stack.function("init"), ChunkFunctions::start(&stack));
    let mut items = common::uuids(5);
    items.insert(1, "not-a-uuid-1".to_owned());
    items.insert(4, "not a uuid either".to_owned());
    items.push("7".to_owned());
    let seed = json!({
        "batchId": "mixed-batch",
        "totalItems": items.len(),
        "batchSize": 3,
        "currentBatch": 1,
        "itemIds": items,
    });
    let event = with_body(fixture("apigw-v1-seed.json"), &seed);
    let (status, body) = http_reply(init.invoke(event).await);
    assert_eq!(status, 200, "{body}");
    stack.deliver_stream(&init).await;
    assert_eq!(stack.executions().await.len(), 3);

    let ends = play_all_executions(&stack, &init, &functions).await;
    assert!(
        ends.iter().all(|end| matches!(end, Step::Succeeded(_))),
        "{ends:?}"
    );

    let batch_id = BatchId::parse("mixed-batch").unwrap();
    let store = stack.store();
    let batch = store.get_batch(&batch_id).await.unwrap().expect("batch");
    assert_eq!(
        batch.status,
        BatchStatus::CompletedWithFailures,
        "{batch:?}"
    );
    assert_eq!(batch.total_items, 8);
    assert_eq!(batch.succeeded_items, 5);
    assert_eq!(batch.failed_items, 3);
    assert_eq!(batch.completed_chunks, 3);

    let failed = store
        .list_items(&ItemQuery {
            batch_id,
            status: Some(ItemStatus::Failed),
            page_size: 100,
            page_token: None,
        })
        .await
        .unwrap();
    let failed: Vec<(&str, Option<&str>)> = failed
        .entries
        .iter()
        .map(|item| (item.item_id.as_str(), item.error.as_deref()))
        .collect();
    assert_eq!(
        failed,
        vec![
            ("not-a-uuid-1", Some(NOT_A_UUID)),
            ("not a uuid either", Some(NOT_A_UUID)),
            ("7", Some(NOT_A_UUID)),
        ]
    );
}

#[tokio::test]
async fn task_errors_surface_with_their_error_type() {
    let stack = MotoStack::deploy("lambda-errors").await;
    let (init, functions) = tokio::join!(stack.function("init"), ChunkFunctions::start(&stack));
    let (status, _) = http_reply(init.invoke(fixture("apigw-v2-seed.json")).await);
    assert_eq!(status, 200);

    let mut missing_chunk = fixture("update-event.json");
    missing_chunk["chunk"] = json!(99);
    let error = functions.update.invoke(missing_chunk).await.unwrap_err();
    assert_eq!(
        error,
        FunctionError {
            error_type: "BatchManager.ChunkNotFound".to_owned(),
            error_message: format!("chunk 99 of batch {SEED_BATCH_ID} does not exist"),
        }
    );
    let mut missing_chunk = fixture("task-event.json");
    missing_chunk["chunk"] = json!(2);
    let error = functions.task1.invoke(missing_chunk).await.unwrap_err();
    assert_eq!(error.error_type, "BatchManager.ChunkNotFound");

    let malformed = [
        (&functions.task1, json!({"chunk": 0})),
        (
            &functions.task2,
            json!({"batchId": SEED_BATCH_ID, "chunk": "zero"}),
        ),
        (&functions.update, json!({"batchId": "", "chunk": 0})),
        (&functions.update, json!([1, 2, 3])),
        (
            &functions.update,
            json!({"batchId": SEED_BATCH_ID, "chunk": 0, "failure": "not an object"}),
        ),
    ];
    for (function, event) in malformed {
        let error = function.invoke(event.clone()).await.unwrap_err();
        assert_eq!(
            error.error_type, "BatchManager.InvalidEvent",
            "{event}: {error:?}"
        );
        assert!(
            error.error_message.starts_with("invalid event: "),
            "{event}: {error:?}"
        );
    }

    // The fixtures are accepted as they stand.
    let task = functions.task1.invoke(fixture("task-event.json")).await;
    assert_eq!(
        task.expect("task 1 runs the fixture"),
        json!({"active": true, "processed": 5, "failed": 0})
    );
}

#[tokio::test]
async fn store_failures_surface_by_name_without_their_details() {
    let stack = MotoStack::deploy("lambda-store-down").await;
    let mut vars = stack.function_env();
    for (name, value) in &mut vars {
        if name == "BATCH_TABLE" || name == "REQUEST_TABLE" {
            *value = format!("{value}-missing");
        }
    }
    let task1 = LambdaFunction::start(Some("task1"), &vars).await;
    let error = task1.invoke(fixture("task-event.json")).await.unwrap_err();
    assert_eq!(
        error,
        FunctionError {
            error_type: "BatchManager.StoreUnavailable".to_owned(),
            error_message: "store unavailable".to_owned(),
        }
    );
    let logs = task1
        .logs_containing("ResourceNotFound", Duration::from_secs(10))
        .await;
    assert!(
        logs.contains("ResourceNotFound"),
        "the details are in the function's log: {logs}"
    );
}

/// Records what each Task state is sent; task 1 fails transiently every time.
#[derive(Default)]
struct RecordingTasks {
    sent: std::sync::Mutex<Vec<(String, Value)>>,
}

#[async_trait]
impl TaskInvoker for RecordingTasks {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        self.sent
            .lock()
            .unwrap()
            .push((resource.to_owned(), input.clone()));
        if resource == function_arn("task1") {
            return Err(TaskFailure {
                error: "BatchManager.TransientTaskError".to_owned(),
                cause: json!({
                    "errorMessage": "upstream timed out",
                    "errorType": "BatchManager.TransientTaskError",
                })
                .to_string(),
            });
        }
        Ok(
            json!({"batchId": input["batchId"], "chunk": input["chunk"], "recorded": true, "batchStatus": "FAILED"}),
        )
    }
}

#[tokio::test]
async fn the_fixture_events_are_what_the_definition_sends() {
    let machine =
        StateMachine::from_json(STATE_MACHINE_DEFINITION, &definition_substitutions()).unwrap();
    let tasks = RecordingTasks::default();
    let input = json!({"batchId": SEED_BATCH_ID, "chunk": 0});
    let context = ExecutionContext::new(
        "fixture",
        input.clone(),
        Timestamp::now().to_rfc3339(),
        "batch-manager-chunks",
    );
    let mut cursor = machine.start(input);
    let end = loop {
        match machine.step(cursor, &context, &tasks).await {
            Step::Continue(next) | Step::Sleep { then: next, .. } => cursor = next,
            end => break end,
        }
    };
    assert!(
        matches!(&end, Step::Failed { error, .. } if error == "BatchManager.ChunkFailed"),
        "{end:?}"
    );

    let sent = tasks.sent.into_inner().unwrap();
    let mut expected: Vec<(String, Value)> = (0..4)
        .map(|attempt| {
            let mut event = fixture("task-event.json");
            event["attempt"] = json!(attempt);
            (function_arn("task1"), event)
        })
        .collect();
    expected.push((function_arn("update"), fixture("update-failure-event.json")));
    assert_eq!(sent, expected);
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Process start to first `/invocation/next`, and peak RSS then, for each role. Run against
/// the release binary by `scripts/bench-lambda.sh` (`BATCH_MANAGER_BIN`).
#[tokio::test]
#[ignore = "a measurement, not a check: run by scripts/bench-lambda.sh"]
async fn cold_start_figures() {
    let starts: usize = std::env::var("BATCH_MANAGER_COLD_STARTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10);
    let mut vars = offline_env();
    vars.retain(|(name, _)| name != "AWS_ENDPOINT_URL");
    println!("binary: {}", common::lambda::binary());
    println!("starts per role: {starts}");
    println!();
    println!("| Role | Start to first poll: min | median | max | Peak RSS (VmHWM): max |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for role in ["init", "task1", "task2", "update"] {
        let mut latencies = Vec::with_capacity(starts);
        let mut peak_rss = 0;
        for _ in 0..starts {
            let function = LambdaFunction::start(Some(role), &vars).await;
            let polled = function
                .api
                .first_poll(START_DEADLINE)
                .await
                .unwrap_or_else(|| panic!("{role} never polled: {}", function.logs()));
            latencies.push(polled - function.started_at);
            peak_rss = peak_rss.max(peak_rss_kib(function.pid()));
        }
        latencies.sort();
        let ms = |duration: Duration| format!("{:.1} ms", duration.as_secs_f64() * 1000.0);
        println!(
            "| {role} | {} | {} | {} | {:.1} MB |",
            ms(latencies[0]),
            ms(latencies[latencies.len() / 2]),
            ms(latencies[latencies.len() - 1]),
            peak_rss as f64 / 1024.0,
        );
    }
}
