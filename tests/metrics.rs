//! Metrics and logs, through the built binary: `serve`'s `GET /metrics` after a batch with
//! failing items, the Lambda step roles' embedded-metric-format lines, and `serve
//! --log-format json` tagging a request's lines with its ID.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use batch_manager::domain::BatchId;
use batch_manager::grpc::pb;
use batch_manager::store::BatchStore;
use common::lambda::{fixture, play_all_executions, ChunkFunctions, MotoStack};
use common::process::{Launch, ServerProcess};
use common::{connect, half_bad, submit_request, wait_terminal};
use prometheus_parse::{Sample, Scrape, Value as MetricValue};
use serde_json::{json, Value};

/// Longest a test waits for the engine to let go of the executions of an ended batch.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

async fn scrape(server: &ServerProcess) -> (String, Scrape) {
    let response = reqwest::get(format!("http://{}/metrics", server.http_addr))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .expect("a content type")
        .to_str()
        .unwrap()
        .to_owned();
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("parses");
    (content_type, scrape)
}

fn number(value: &MetricValue) -> f64 {
    match value {
        MetricValue::Counter(v) | MetricValue::Gauge(v) | MetricValue::Untyped(v) => *v,
        other => panic!("not a single number: {other:?}"),
    }
}

/// The value of the sample named `metric` whose labels include `labels` (0 when absent).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    find(scrape, metric, labels).map_or(0.0, |sample| number(&sample.value))
}

fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape.samples.iter().find(|sample| {
        sample.metric == metric
            && labels
                .iter()
                .all(|(name, wanted)| sample.labels.get(name) == Some(*wanted))
    })
}

/// A histogram's observations, checked to be consistent: cumulative buckets that never
/// decrease, whose last (`+Inf`) equals `_count`.
fn histogram_count(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = find(scrape, metric, labels)
        .unwrap_or_else(|| panic!("{metric} {labels:?} is not in the scrape"));
    let MetricValue::Histogram(buckets) = &sample.value else {
        panic!("{metric} is not a histogram");
    };
    let counts: Vec<f64> = buckets.iter().map(|bucket| bucket.count).collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] <= pair[1]),
        "{metric} {labels:?} buckets decrease: {counts:?}"
    );
    let last = buckets.last().expect("buckets");
    assert!(last.less_than.is_infinite(), "{metric}: no +Inf bucket");
    let count = value(scrape, &format!("{metric}_count"), labels);
    assert_eq!(
        last.count, count,
        "{metric} {labels:?}: +Inf bucket != _count"
    );
    count
}

#[tokio::test]
async fn a_batch_with_failing_items_is_counted_exactly_in_the_metrics() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("metrics.db"));
    let mut client = connect(server.grpc_addr).await;

    let bad = client
        .submit_batch(submit_request("bad-batch", vec!["x".repeat(10_000)], 10))
        .await
        .expect_err("an item ID of 10,000 bytes is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    client
        .submit_batch(submit_request("metrics-batch", half_bad(95), 10))
        .await
        .expect("the batch is accepted");
    let batch = wait_terminal(&mut client, "metrics-batch").await;
    assert_eq!(batch.status(), pb::BatchStatus::CompletedWithFailures);
    assert!(
        batch.failed_items > 0 && batch.succeeded_items > 0,
        "{batch:?}"
    );

    // The batch ends in its last update; the engine ends that execution just after.
    let until = Instant::now() + SETTLE_DEADLINE;
    let (content_type, scrape) = loop {
        let (content_type, scrape) = scrape(&server).await;
        let finished: f64 = ["succeeded", "failed"]
            .map(|status| {
                value(
                    &scrape,
                    "batch_manager_chunk_executions_finished_total",
                    &[("status", status)],
                )
            })
            .iter()
            .sum();
        let in_flight = value(&scrape, "batch_manager_executions_in_flight", &[]);
        if (finished == batch.total_chunks as f64 && in_flight == 0.0) || Instant::now() >= until {
            break (content_type, scrape);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );

    let items = |outcome| {
        value(
            &scrape,
            "batch_manager_items_recorded_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(items("succeeded"), batch.succeeded_items as f64);
    assert_eq!(items("failed"), batch.failed_items as f64);
    assert_eq!(items("cancelled"), batch.cancelled_items as f64);

    let chunks = batch.total_chunks as f64;
    assert_eq!(chunks, 10.0);
    assert_eq!(
        value(&scrape, "batch_manager_chunk_executions_started_total", &[]),
        chunks
    );
    assert_eq!(
        value(
            &scrape,
            "batch_manager_chunk_executions_finished_total",
            &[("status", "succeeded")]
        ),
        chunks
    );
    assert_eq!(
        value(&scrape, "batch_manager_executions_in_flight", &[]),
        0.0
    );
    assert_eq!(value(&scrape, "batch_manager_executions_waiting", &[]), 0.0);
    assert_eq!(
        value(
            &scrape,
            "batch_manager_batches",
            &[("status", "COMPLETED_WITH_FAILURES")]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, "batch_manager_batches", &[("status", "RUNNING")]),
        0.0
    );

    for role in ["task1", "task2", "update"] {
        let steps = histogram_count(
            &scrape,
            "batch_manager_step_duration_seconds",
            &[("role", role)],
        );
        let errors = value(
            &scrape,
            "batch_manager_step_errors_total",
            &[("role", role)],
        );
        // Every chunk ran each step once (none failed on the store here, so none re-ran).
        assert_eq!(steps, chunks, "{role}");
        assert_eq!(errors, 0.0, "{role}");
    }
    assert!(
        histogram_count(
            &scrape,
            "batch_manager_store_commit_duration_seconds",
            &[("store", "sqlite")]
        ) > 0.0
    );

    let submit = |code| {
        value(
            &scrape,
            "batch_manager_grpc_requests_total",
            &[
                ("service", "batchmanager.v1.BatchManager"),
                ("method", "SubmitBatch"),
                ("code", code),
            ],
        )
    };
    assert_eq!(submit("OK"), 1.0);
    assert_eq!(submit("INVALID_ARGUMENT"), 1.0);
    assert!(
        value(
            &scrape,
            "batch_manager_grpc_requests_total",
            &[("method", "GetBatchStatus"), ("code", "OK")]
        ) >= 1.0
    );
    assert!(scrape.docs.contains_key("batch_manager_items_recorded"));
}

#[tokio::test]
async fn a_request_s_log_lines_carry_its_id_and_the_answer_echoes_it() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        &directory.path().join("logs.db"),
        Launch {
            args: &["--log-format", "json"],
            env: &[("RUST_LOG", "info,batch_manager=debug".to_owned())],
            ..Launch::default()
        },
    );
    let http = reqwest::Client::new();
    let given = "client-chosen-id.42";
    let seed = json!({
        "batchId": "logged-batch",
        "totalItems": 4,
        "batchSize": 2,
        "currentBatch": 1,
        "itemIds": half_bad(4),
    });
    let response = http
        .post(format!("http://{}/stateMachineInit", server.http_addr))
        .header("x-request-id", given)
        .json(&seed)
        .send()
        .await
        .expect("POST /stateMachineInit");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], given);

    let malformed = http
        .get(format!("http://{}/metrics", server.http_addr))
        .header("x-request-id", "not an id")
        .send()
        .await
        .unwrap();
    let generated = malformed.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    let mut client = connect(server.grpc_addr).await;
    let mut request = tonic::Request::new(pb::GetBatchStatusRequest {
        batch_id: "logged-batch".to_owned(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "grpc-call-7".parse().unwrap());
    let answer = client.get_batch_status(request).await.expect("the batch");
    assert_eq!(
        answer.metadata().get("x-request-id").unwrap(),
        "grpc-call-7"
    );

    // The answer's own line is logged last, inside the span: wait for both.
    let until = Instant::now() + SETTLE_DEADLINE;
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = server
            .log()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect();
        let answered = lines
            .iter()
            .filter(|line| line["message"] == "request answered")
            .count();
        if answered >= 3 || Instant::now() >= until {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let in_request = |id: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|line| {
                line["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|span| span["request_id"] == id))
            })
            .collect()
    };
    for id in [given, "grpc-call-7"] {
        let logged = in_request(id);
        assert!(
            logged
                .iter()
                .any(|line| line["message"] == "request answered"),
            "no answer logged for {id}: {lines:?}"
        );
        for line in &logged {
            assert_eq!(line["span"]["request_id"], id, "{line}");
        }
    }
    // The seed request's part was stored by a task of its own, still inside its span.
    assert!(
        in_request(given).len() > 1,
        "only the answer was logged in the seed request: {lines:?}"
    );
    let ids: HashSet<&str> = lines
        .iter()
        .filter_map(|line| line["span"]["request_id"].as_str())
        .collect();
    assert!(ids.contains(generated), "{ids:?}");
}

#[tokio::test]
async fn each_lambda_step_writes_its_counts_as_embedded_metric_format() {
    let stack = MotoStack::deploy("lambda-emf").await;
    let (init, functions) = tokio::join!(stack.function("init"), ChunkFunctions::start(&stack));
    let mut items = common::uuids(5);
    items.extend(["not-a-uuid-1", "not a uuid either", "7"].map(str::to_owned));
    let seed = json!({
        "batchId": "emf-batch",
        "totalItems": items.len(),
        "batchSize": 3,
        "currentBatch": 1,
        "itemIds": items,
    });
    let mut event = fixture("apigw-v1-seed.json");
    event["body"] = Value::String(seed.to_string());
    event["isBase64Encoded"] = Value::Bool(false);
    init.invoke(event).await.expect("init answers");
    play_all_executions(&stack, &init, &functions).await;
    let batch = stack
        .store()
        .get_batch(&BatchId::parse("emf-batch").unwrap())
        .await
        .unwrap()
        .expect("the batch");
    assert_eq!(batch.completed_chunks, 3);

    let mut totals = json!({});
    for (role, function) in [
        ("task1", &functions.task1),
        ("task2", &functions.task2),
        ("update", &functions.update),
    ] {
        let lines = function.stdout_lines(3, Duration::from_secs(10)).await;
        assert_eq!(lines.len(), 3, "{role}: one line per chunk: {lines:?}");
        for line in lines {
            let document: Value = serde_json::from_str(&line).expect("a JSON line");
            let directive = &document["_aws"]["CloudWatchMetrics"][0];
            assert!(document["_aws"]["Timestamp"].is_u64(), "{document}");
            assert_eq!(directive["Namespace"], "BatchManager", "{document}");
            assert_eq!(directive["Dimensions"], json!([["Role"]]), "{document}");
            assert_eq!(document["Role"], role, "{document}");
            for metric in directive["Metrics"].as_array().expect("metrics") {
                let name = metric["Name"].as_str().unwrap();
                assert!(
                    document[name].is_number(),
                    "{name} has no value: {document}"
                );
                assert!(metric["Unit"].is_string(), "{document}");
            }
            assert_eq!(document["StepErrors"], 0, "{document}");
            for name in ["ItemsSucceeded", "ItemsFailed", "ItemsCancelled"] {
                let sum = totals[role][name].as_u64().unwrap_or(0)
                    + document[name].as_u64().expect("a count");
                totals[role][name] = json!(sum);
            }
        }
    }
    assert_eq!(totals["update"]["ItemsSucceeded"], batch.succeeded_items);
    assert_eq!(totals["update"]["ItemsFailed"], batch.failed_items);
    assert_eq!(totals["update"]["ItemsCancelled"], 0);
    assert_eq!(totals["task1"]["ItemsSucceeded"], 0);
    assert_eq!(totals["task2"]["ItemsFailed"], 0);
}
