//! A batch's progress through the gRPC API: a running batch shows its rate and an ETA, its
//! most frequent failures as they are counted, and no ETA once it has ended.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_manager::domain::ItemOutcome;
use batch_manager::grpc::pb;
use batch_manager::pipeline::tasks::AcceptAll;
use batch_manager::pipeline::{ChunkTask, TaskError, TaskInput, Tasks};
use common::*;

/// Chunks let through before the rest are held.
const LET_THROUGH: usize = 100;

/// Task 1: takes a little time per chunk, fails IDs starting with `bad-`, and holds every
/// chunk after the first [`LET_THROUGH`] until released, so the test reads the batch mid-run.
struct HoldAfterSome {
    entered: AtomicUsize,
    release: tokio::sync::Semaphore,
}

struct SharedHold(Arc<HoldAfterSome>);

#[async_trait]
impl ChunkTask for SharedHold {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        let hold = &self.0;
        tokio::time::sleep(Duration::from_millis(2)).await;
        if hold.entered.fetch_add(1, Ordering::SeqCst) >= LET_THROUGH {
            let _permit = hold.release.acquire().await.expect("released");
        }
        Ok(input
            .items
            .iter()
            .map(|item| match item.as_str().starts_with("bad-") {
                true => ItemOutcome::Failed("rejected by the checker".to_owned()),
                false => ItemOutcome::Succeeded,
            })
            .collect())
    }
}

#[tokio::test]
async fn a_running_batch_shows_a_rate_an_eta_and_its_top_errors_and_no_eta_once_ended() {
    let hold = Arc::new(HoldAfterSome {
        entered: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut test = spawn_app_with(Tasks {
        task1: Arc::new(SharedHold(Arc::clone(&hold))),
        task2: Arc::new(AcceptAll),
    })
    .await;
    // 300 chunks of 2 items; the first item of every fifth chunk is bad.
    let ids: Vec<String> = (0..600)
        .map(|index| match index % 10 {
            0 => format!("bad-{index}"),
            _ => format!("good-{index}"),
        })
        .collect();
    test.client
        .submit_batch(submit_request("paced", ids, 2))
        .await
        .expect("SubmitBatch");

    let deadline = Instant::now() + BATCH_DEADLINE;
    let running = loop {
        let batch = test.status("paced").await;
        if batch.completed_chunks >= LET_THROUGH as u64 {
            break batch;
        }
        assert!(Instant::now() < deadline, "stuck: {batch:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(running.status(), pb::BatchStatus::Running);
    assert!(running.items_per_second > 0.0, "{running:?}");
    let eta = running.eta_seconds.expect("an ETA while running");
    assert_eq!(
        eta,
        (running.pending_items as f64 / running.items_per_second).ceil() as u64
    );
    assert_eq!(
        running.top_errors,
        vec![pb::ErrorCount {
            message: "rejected by the checker".to_owned(),
            count: running.failed_items
        }]
    );

    hold.release.add_permits(1_000);
    let ended = test.wait_terminal("paced").await;
    assert_eq!(ended.status(), pb::BatchStatus::CompletedWithFailures);
    assert_eq!(ended.eta_seconds, None);
    assert_eq!(
        ended.top_errors,
        vec![pb::ErrorCount {
            message: "rejected by the checker".to_owned(),
            count: 60
        }]
    );
    let mut watch = test
        .client
        .watch_batch(pb::WatchBatchRequest {
            batch_id: "paced".to_owned(),
        })
        .await
        .expect("WatchBatch")
        .into_inner();
    let snapshot = watch
        .message()
        .await
        .expect("a snapshot")
        .and_then(|response| response.batch)
        .expect("a batch");
    assert_eq!(snapshot.top_errors, ended.top_errors);
    assert_eq!(snapshot.eta_seconds, None);
}
