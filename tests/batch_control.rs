//! Batch control end to end on the local server: a failure budget stops a batch early, a
//! redrive completes a batch whose items failed once, a pause holds a large run's chunks
//! until it is resumed, the CLI drives all three, and bad requests write nothing.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_manager::domain::ItemOutcome;
use batch_manager::grpc::pb;
use batch_manager::pipeline::{ChunkTask, TaskError, TaskInput, Tasks};
use common::process::cli;
use common::*;
use tonic::Code;

/// Task 2 that fails every item the first time it sees it.
#[derive(Default)]
struct FailsFirstSight {
    seen: Mutex<HashSet<String>>,
}

#[async_trait]
impl ChunkTask for FailsFirstSight {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        let mut seen = self.seen.lock().unwrap();
        Ok(input
            .items
            .iter()
            .map(|item| {
                if seen.insert(item.as_str().to_owned()) {
                    ItemOutcome::Failed("not ready yet".into())
                } else {
                    ItemOutcome::Succeeded
                }
            })
            .collect())
    }
}

/// Task 1 that holds each chunk a little, so that a run lasts long enough to act on.
struct Slow(Duration);

#[async_trait]
impl ChunkTask for Slow {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        tokio::time::sleep(self.0).await;
        Ok(vec![ItemOutcome::Succeeded; input.items.len()])
    }
}

/// How many of the batch's chunks are started or done, and how many are started and not
/// done, read from the database file.
fn chunk_stages(db: &Path, batch_id: &str) -> (i64, i64) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    conn.query_row(
        "SELECT COALESCE(SUM(c.stage <> 'PENDING'), 0), COALESCE(SUM(c.stage = 'STARTED'), 0) \
         FROM chunks c JOIN batches b ON b.seq = c.batch_seq WHERE b.batch_id = ?1",
        [batch_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .expect("count chunks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_budget_on_a_batch_of_half_bad_ids_stops_early_with_exact_counts() {
    let mut test = spawn_app().await;
    test.client
        .submit_batch(pb::SubmitBatchRequest {
            tolerated_failure_percentage: Some(10),
            max_concurrency: 2,
            ..submit_request("half-bad", half_bad(2_000), 10)
        })
        .await
        .unwrap();
    let ended = test.wait_terminal("half-bad").await;
    assert_eq!(ended.status(), pb::BatchStatus::Failed);
    assert!(
        ended
            .failure_reason
            .starts_with("failure budget exceeded: "),
        "{}",
        ended.failure_reason
    );
    assert!(ended
        .failure_reason
        .ends_with("of 2000 items failed, 10% tolerated"));
    assert!(
        ended.failed_items > 200,
        "the budget is exceeded: {ended:?}"
    );
    assert!(
        ended.cancelled_items >= 1_000,
        "most chunks never ran: {ended:?}"
    );
    assert_eq!(
        ended.succeeded_items + ended.failed_items + ended.cancelled_items,
        2_000
    );
    assert_eq!(ended.pending_items, 0);
    assert_eq!(ended.tolerated_failure_percentage, Some(10));
    let cancelled = test.all_items("half-bad", pb::ItemStatus::Cancelled).await;
    assert_eq!(cancelled.len() as u64, ended.cancelled_items);
    let failed = test.all_items("half-bad", pb::ItemStatus::Failed).await;
    assert_eq!(failed.len() as u64, ended.failed_items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_items_that_failed_their_first_attempt_completes_the_batch() {
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(FailsFirstSight::default()),
        ..Tasks::default()
    })
    .await;
    test.client
        .submit_batch(submit_request("retried", uuids(50), 10))
        .await
        .unwrap();
    let first = test.wait_terminal("retried").await;
    assert_eq!(first.status(), pb::BatchStatus::Failed);
    assert_eq!(first.failed_items, 50);

    let redriven = common::redrive(&mut test.client, "retried", false)
        .await
        .unwrap();
    assert_eq!(redriven.redriven_items, 50);
    let running = redriven.batch.unwrap();
    assert_eq!(running.redrive_count, 1);
    assert_eq!(running.failed_items, 0);
    assert!(running.completed_at.is_none());

    let ended = test.wait_terminal("retried").await;
    assert_eq!(ended.status(), pb::BatchStatus::Completed, "{ended:?}");
    assert_eq!((ended.succeeded_items, ended.failed_items), (50, 0));
    assert_eq!(ended.redrive_count, 1);
    for item in test.all_items("retried", pb::ItemStatus::Succeeded).await {
        assert_eq!(item.attempts, 2, "{item:?}");
    }
    let again = common::redrive(&mut test.client, "retried", false)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("no failed items"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_large_run_starts_no_chunk_until_it_is_resumed() {
    let mut test = spawn_app_with(Tasks {
        task1: Arc::new(Slow(Duration::from_millis(20))),
        ..Tasks::default()
    })
    .await;
    test.client
        .submit_batch(submit_request("large", uuids(100_000), 100))
        .await
        .unwrap();
    let deadline = Instant::now() + BATCH_DEADLINE;
    while test.status("large").await.completed_chunks < 50 {
        assert!(Instant::now() < deadline, "the run did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paused = pause(&mut test.client, "large").await.unwrap();
    assert_eq!(paused.status(), pb::BatchStatus::Paused);

    // The chunks running when it paused finish; then nothing starts.
    let (started_when_drained, drained_at) = loop {
        let (started, running) = chunk_stages(&test.db, "large");
        if running == 0 {
            break (started, Instant::now());
        }
        assert!(Instant::now() < deadline, "running chunks never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while drained_at.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            chunk_stages(&test.db, "large"),
            (started_when_drained, 0),
            "a chunk started while the batch was paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = test.status("large").await;
    assert_eq!(held.status(), pb::BatchStatus::Paused);
    assert!(held.completed_chunks < 1_000, "{held:?}");
    assert_eq!(
        held.succeeded_items + held.pending_items,
        100_000,
        "counters stay exact while paused"
    );

    let resumed = resume(&mut test.client, "large").await.unwrap();
    assert_eq!(resumed.status(), pb::BatchStatus::Running);
    let ended = wait_terminal_within(&mut test, "large", Duration::from_secs(300)).await;
    assert_eq!(ended.status(), pb::BatchStatus::Completed);
    assert_eq!(ended.succeeded_items, 100_000);
}

async fn wait_terminal_within(test: &mut TestApp, batch_id: &str, limit: Duration) -> pb::Batch {
    let deadline = Instant::now() + limit;
    loop {
        let batch = test.status(batch_id).await;
        if is_terminal(batch.status()) {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "{batch_id} did not end: {batch:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_requests_are_refused_and_write_nothing() {
    let mut test = spawn_app_with(Tasks {
        task1: Arc::new(Slow(Duration::from_millis(50))),
        ..Tasks::default()
    })
    .await;
    let before = database_fingerprint(&test.db);
    let refused = test
        .client
        .submit_batch(pb::SubmitBatchRequest {
            tolerated_failure_percentage: Some(101),
            ..submit_request("too-tolerant", uuids(3), 10)
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "tolerated_failure_percentage: must be an integer between 0 and 100"
    );
    let seed = reqwest::Client::new()
        .post(test.http_url("/stateMachineInit"))
        .json(&serde_json::json!({
            "batchId": "seed-too-tolerant",
            "totalItems": 1,
            "batchSize": 1,
            "currentBatch": 1,
            "itemIds": [uuid::Uuid::new_v4().to_string()],
            "toleratedFailurePercentage": 101,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status(), 400);
    let body = seed.text().await.unwrap();
    assert!(body.contains("toleratedFailurePercentage"), "{body}");
    assert_eq!(database_fingerprint(&test.db), before, "nothing written");

    for (code, outcome) in [
        (
            Code::NotFound,
            pause(&mut test.client, "unknown").await.map(|_| ()),
        ),
        (
            Code::NotFound,
            common::redrive(&mut test.client, "unknown", true)
                .await
                .map(|_| ()),
        ),
        (
            Code::InvalidArgument,
            resume(&mut test.client, "").await.map(|_| ()),
        ),
    ] {
        assert_eq!(outcome.unwrap_err().code(), code);
    }
    assert_eq!(database_fingerprint(&test.db), before, "nothing written");

    // A paused batch is not ended: it cannot be redriven, and refusing writes nothing.
    test.client
        .submit_batch(pb::SubmitBatchRequest {
            max_concurrency: 1,
            ..submit_request("held", uuids(400), 10)
        })
        .await
        .unwrap();
    let running = common::redrive(&mut test.client, "held", true)
        .await
        .unwrap_err();
    assert_eq!(running.code(), Code::FailedPrecondition);
    assert!(
        running.message().contains("is RUNNING") || running.message().contains("is PENDING"),
        "{running:?}"
    );
    assert_eq!(test.status("held").await.redrive_count, 0);
    pause(&mut test.client, "held").await.unwrap();
    let drained = settled_fingerprint_of(&test.db, "held").await;
    let running = common::redrive(&mut test.client, "held", false)
        .await
        .unwrap_err();
    assert_eq!(running.code(), Code::FailedPrecondition);
    assert!(
        running.message().contains("only an ended batch"),
        "{running:?}"
    );
    assert_eq!(database_fingerprint(&test.db), drained);

    test.client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "held".into(),
        })
        .await
        .unwrap();
    let ended = test.wait_terminal("held").await;
    assert_eq!(ended.status(), pb::BatchStatus::Cancelled);
    let settled = settled_fingerprint(&test.db).await;
    let refused = pause(&mut test.client, "held").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(database_fingerprint(&test.db), settled);
}

/// The database's fingerprint once the batch's running chunks have finished.
async fn settled_fingerprint_of(db: &Path, batch_id: &str) -> String {
    let deadline = Instant::now() + BATCH_DEADLINE;
    while chunk_stages(db, batch_id).1 > 0 {
        assert!(Instant::now() < deadline, "running chunks never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settled_fingerprint(db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pauses_resumes_and_redrives_a_batch() {
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(FailsFirstSight::default()),
        ..Tasks::default()
    })
    .await;
    let server = format!("http://{}", test.app.grpc_addr);
    let directory = tempfile::tempdir().unwrap();
    let items = directory.path().join("ids.txt");
    std::fs::write(&items, uuids(30).join("\n")).unwrap();
    let (ok, _, stderr) = cli(
        &server,
        &[
            "submit",
            "--items-file",
            items.to_str().unwrap(),
            "--batch-id",
            "cli-control",
            "--batch-size",
            "10",
            "--tolerated-failure-percentage",
            "100",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let ended = test.wait_terminal("cli-control").await;
    assert_eq!(ended.status(), pb::BatchStatus::Failed);
    assert_eq!(ended.failure_reason, "", "100% tolerates every failure");

    let (ok, stdout, stderr) = cli(&server, &["pause", "cli-control"]).await;
    assert!(!ok, "an ended batch cannot be paused: {stdout}");
    assert!(
        stderr.contains("FailedPrecondition")
            || stderr.contains("failed precondition")
            || stderr.contains("has ended"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = cli(&server, &["redrive", "cli-control", "--watch", "--json"]).await;
    assert!(ok, "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "COMPLETED", "{stdout}");
    assert_eq!(last["redriveCount"], 1, "{stdout}");

    let (ok, _, stderr) = cli(
        &server,
        &[
            "submit",
            "--items-file",
            items.to_str().unwrap(),
            "--batch-id",
            "cli-paused",
            "--batch-size",
            "10",
            "--max-concurrency",
            "1",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = cli(&server, &["pause", "cli-paused", "--json"]).await;
    if ok {
        let paused: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(
            paused["status"] == "PAUSED" || paused["status"] == "FAILED",
            "{stdout}"
        );
        let (ok, stdout, stderr) = cli(&server, &["resume", "cli-paused", "--json"]).await;
        assert!(ok || stderr.contains("has ended"), "{stdout}{stderr}");
    } else {
        assert!(stderr.contains("has ended"), "{stderr}");
    }
    let ended = test.wait_terminal("cli-paused").await;
    assert_eq!(ended.succeeded_items + ended.failed_items, 30);
}
