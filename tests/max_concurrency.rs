//! A batch's `max_concurrency` on the embedded engine: never more of its chunks in flight than
//! it allows, other batches unaffected, `UpdateBatch` raising it while it runs, and the limit
//! kept across a restart of the engine's window (it is read from the store).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_manager::domain::ItemOutcome;
use batch_manager::grpc::pb;
use batch_manager::pipeline::{ChunkTask, TaskError, TaskInput, Tasks};
use common::*;
use tonic::Code;

/// Task 1 that holds each chunk for `hold`, counting per batch how many it holds at once and
/// the most it ever held.
#[derive(Default)]
struct Occupancy {
    running: HashMap<String, usize>,
    peak: HashMap<String, usize>,
}

struct CountingTask {
    occupancy: Arc<Mutex<Occupancy>>,
    hold: Duration,
}

#[async_trait]
impl ChunkTask for CountingTask {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        let batch = input.batch_id.as_str().to_owned();
        {
            let mut occupancy = self.occupancy.lock().unwrap();
            let running = occupancy.running.entry(batch.clone()).or_default();
            *running += 1;
            let now = *running;
            let peak = occupancy.peak.entry(batch.clone()).or_default();
            *peak = (*peak).max(now);
        }
        tokio::time::sleep(self.hold).await;
        *self
            .occupancy
            .lock()
            .unwrap()
            .running
            .get_mut(&batch)
            .expect("counted on entry") -= 1;
        Ok(vec![ItemOutcome::Succeeded; input.items.len()])
    }
}

fn counting(hold: Duration) -> (Tasks, Arc<Mutex<Occupancy>>) {
    let occupancy = Arc::new(Mutex::new(Occupancy::default()));
    let tasks = Tasks {
        task1: Arc::new(CountingTask {
            occupancy: Arc::clone(&occupancy),
            hold,
        }),
        ..Tasks::default()
    };
    (tasks, occupancy)
}

fn peak(occupancy: &Mutex<Occupancy>, batch: &str) -> usize {
    occupancy
        .lock()
        .unwrap()
        .peak
        .get(batch)
        .copied()
        .unwrap_or(0)
}

fn limited(batch_id: &str, chunks: usize, max_concurrency: u32) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        max_concurrency,
        ..submit_request(batch_id, uuids(chunks), 1)
    }
}

#[tokio::test]
async fn a_limited_batch_never_runs_more_chunks_at_once_and_others_are_not_held() {
    let (tasks, occupancy) = counting(Duration::from_millis(30));
    let mut test = spawn_app_with(tasks).await;
    test.client
        .submit_batch(limited("limited", 60, 3))
        .await
        .unwrap();
    test.client
        .submit_batch(limited("free", 60, 0))
        .await
        .unwrap();

    let limited = test.wait_terminal("limited").await;
    let free = test.wait_terminal("free").await;
    assert_eq!(limited.status(), pb::BatchStatus::Completed);
    assert_eq!(limited.succeeded_items, 60);
    assert_eq!(limited.max_concurrency, 3);
    assert_eq!(free.succeeded_items, 60);
    assert_eq!(free.max_concurrency, 0);
    let limited_peak = peak(&occupancy, "limited");
    assert!(
        (1..=3).contains(&limited_peak),
        "the limited batch held {limited_peak} chunks at once"
    );
    assert!(
        peak(&occupancy, "free") > 3,
        "a batch without a limit of its own runs as wide as the engine: {}",
        peak(&occupancy, "free")
    );
}

#[tokio::test]
async fn raising_the_limit_while_the_batch_runs_starts_more_at_once() {
    let (tasks, occupancy) = counting(Duration::from_millis(40));
    let mut test = spawn_app_with(tasks).await;
    test.client
        .submit_batch(limited("raised", 200, 2))
        .await
        .unwrap();
    // Let it run a while under the first limit.
    let deadline = Instant::now() + BATCH_DEADLINE;
    while test.status("raised").await.completed_chunks < 10 {
        assert!(Instant::now() < deadline, "the batch never progressed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(peak(&occupancy, "raised") <= 2);

    let updated = test
        .client
        .update_batch(pb::UpdateBatchRequest {
            batch_id: "raised".into(),
            max_concurrency: 8,
        })
        .await
        .unwrap()
        .into_inner()
        .batch
        .unwrap();
    assert_eq!(updated.max_concurrency, 8);

    let batch = test.wait_terminal("raised").await;
    assert_eq!(batch.succeeded_items, 200);
    let raised_peak = peak(&occupancy, "raised");
    assert!(
        (3..=8).contains(&raised_peak),
        "after the raise the batch held {raised_peak} chunks at once"
    );
}

#[tokio::test]
async fn update_batch_refuses_bad_limits_unknown_and_ended_batches_and_writes_nothing() {
    let mut test = spawn_app().await;
    test.client
        .submit_batch(limited("ended", 2, 1))
        .await
        .unwrap();
    test.wait_terminal("ended").await;
    let before = database_fingerprint(&test.db);

    let cases = [
        ("ended", 10_001, Code::InvalidArgument, "max_concurrency:"),
        ("", 5, Code::InvalidArgument, "batch_id:"),
        ("nobody", 5, Code::NotFound, "nobody"),
        ("ended", 5, Code::FailedPrecondition, "ended"),
    ];
    for (batch_id, max_concurrency, code, named) in cases {
        let status = test
            .client
            .update_batch(pb::UpdateBatchRequest {
                batch_id: batch_id.into(),
                max_concurrency,
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            code,
            "{batch_id} {max_concurrency}: {status:?}"
        );
        assert!(
            status.message().contains(named),
            "{batch_id} {max_concurrency}: {:?} should name {named}",
            status.message()
        );
    }
    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn the_seed_body_sets_a_limit_and_refuses_a_bad_one() {
    let mut test = spawn_app().await;
    let body = |limit: serde_json::Value| {
        serde_json::json!({
            "batchId": "posted-limit",
            "totalItems": 4,
            "batchSize": 1,
            "currentBatch": 1,
            "itemIds": uuids(4),
            "maxConcurrency": limit,
        })
        .to_string()
    };
    let url = test.http_url("/stateMachineInit");
    let (status, reply) = post_json_body(url.clone(), body(serde_json::json!(0.5))).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .starts_with("maxConcurrency: must be an integer between 1 and 10000"),
        "{reply}"
    );
    let (status, reply) = post_json_body(url, body(serde_json::json!(2))).await;
    assert_eq!(status, 200, "{reply}");
    let batch = test.wait_terminal("posted-limit").await;
    assert_eq!(batch.max_concurrency, 2);
    assert_eq!(batch.succeeded_items, 4);
}
