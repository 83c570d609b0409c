//! The gRPC admin API end to end, against a real server on a loopback port.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batch_manager::domain::ItemOutcome;
use batch_manager::grpc::pb;
use batch_manager::pipeline::{ChunkTask, TaskError, TaskInput, Tasks};
use common::*;
use tonic::Code;

use common::submit_request as submit;

#[tokio::test]
async fn the_seed_example_completes_with_ten_succeeded_items() {
    let mut test = spawn_app().await;
    let response = test
        .client
        .submit_batch(submit(
            "4b4dc5c6-fbd9-493d-98ff-c459c378f45d",
            seed_item_ids(),
            5,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.total_items, 10);
    assert_eq!(response.total_chunks, 2);
    assert!(response.created);

    let batch = test.wait_terminal(&response.batch_id).await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, 10);
    assert_eq!(batch.failed_items, 0);
    assert_eq!(batch.pending_items, 0);
    assert_eq!(batch.completed_chunks, 2);
    assert!(batch.completed_at.is_some());
}

#[tokio::test]
async fn a_batch_with_non_uuid_ids_completes_with_exact_failure_counts() {
    let mut test = spawn_app().await;
    let mut ids = uuids(1000);
    let bad: Vec<usize> = (0..1000).step_by(37).collect();
    for &index in &bad {
        ids[index] = format!("not-a-uuid-{index}");
    }
    let response = test
        .client
        .submit_batch(submit("", ids.clone(), 100))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.batch_id.is_empty(), "a batch id is generated");
    assert_eq!(response.total_chunks, 10);

    let batch = test.wait_terminal(&response.batch_id).await;
    assert_eq!(batch.status(), pb::BatchStatus::CompletedWithFailures);
    assert_eq!(batch.failed_items, bad.len() as u64);
    assert_eq!(batch.succeeded_items, 1000 - bad.len() as u64);
    assert_eq!(batch.pending_items, 0);

    let failed = test
        .all_items(&response.batch_id, pb::ItemStatus::Failed)
        .await;
    let failed_ids: Vec<&str> = failed.iter().map(|item| item.item_id.as_str()).collect();
    let expected: Vec<&str> = bad.iter().map(|&i| ids[i].as_str()).collect();
    assert_eq!(failed_ids, expected);
    for item in &failed {
        assert_eq!(item.error, "item id is not a UUID");
        assert_eq!(item.attempts, 1);
        assert_eq!(item.chunk, item.item_id[11..].parse::<u64>().unwrap() / 100);
    }
    let all = test
        .all_items(&response.batch_id, pb::ItemStatus::Unspecified)
        .await;
    assert_eq!(all.len(), 1000);
    let listed: Vec<&str> = all.iter().map(|item| item.item_id.as_str()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let succeeded = test
        .all_items(&response.batch_id, pb::ItemStatus::Succeeded)
        .await;
    assert_eq!(succeeded.len() as u64, batch.succeeded_items);
    assert!(succeeded.iter().all(|item| item.error.is_empty()));
}

#[tokio::test]
async fn resubmitting_the_same_batch_returns_it_and_writes_nothing() {
    let mut test = spawn_app().await;
    let ids = uuids(25);
    let first = test
        .client
        .submit_batch(submit("same-batch", ids.clone(), 10))
        .await
        .unwrap()
        .into_inner();
    test.wait_terminal("same-batch").await;
    let before = settled_fingerprint(&test.db).await;

    let again = test
        .client
        .submit_batch(submit("same-batch", ids, 10))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.batch_id, first.batch_id);
    assert_eq!(again.total_items, 25);
    assert_eq!(again.status(), pb::BatchStatus::Completed);
    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn the_same_batch_id_with_other_items_is_already_exists() {
    let mut test = spawn_app().await;
    test.client
        .submit_batch(submit("taken", uuids(5), 5))
        .await
        .unwrap();
    test.wait_terminal("taken").await;
    let before = settled_fingerprint(&test.db).await;
    for other in [uuids(5), uuids(6)] {
        let status = test
            .client
            .submit_batch(submit("taken", other, 5))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
        assert!(status.message().contains("taken"), "{}", status.message());
    }
    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn an_unknown_batch_is_not_found_everywhere() {
    let mut test = spawn_app().await;
    let id = || "no-such-batch".to_owned();
    fn code<T>(result: Result<T, tonic::Status>) -> Code {
        result.map(|_| ()).unwrap_err().code()
    }
    assert_eq!(
        code(
            test.client
                .get_batch_status(pb::GetBatchStatusRequest { batch_id: id() })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            test.client
                .list_batch_items(pb::ListBatchItemsRequest {
                    batch_id: id(),
                    ..Default::default()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            test.client
                .cancel_batch(pb::CancelBatchRequest { batch_id: id() })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            test.client
                .watch_batch(pb::WatchBatchRequest { batch_id: id() })
                .await
        ),
        Code::NotFound
    );
}

/// Task 2 that holds every chunk until released, counting the chunks it holds.
struct Gate {
    entered: AtomicUsize,
    release: tokio::sync::Semaphore,
}

struct SharedGate(Arc<Gate>);

#[async_trait]
impl ChunkTask for SharedGate {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        let gate = &self.0;
        gate.entered.fetch_add(1, Ordering::SeqCst);
        let _permit = gate.release.acquire().await.expect("gate open");
        Ok(vec![ItemOutcome::Succeeded; input.items.len()])
    }
}

#[tokio::test]
async fn cancelling_skips_chunks_not_yet_started_and_lets_running_ones_finish() {
    let gate = Arc::new(Gate {
        entered: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(SharedGate(Arc::clone(&gate))),
        ..Tasks::default()
    })
    .await;
    let concurrency = batch_manager::engine::local::EngineConfig::default().concurrency;
    // Twice as many chunks as run at once: half of them wait when the cancel comes.
    let total = concurrency as u64 * 2 * 10;
    test.client
        .submit_batch(submit("to-cancel", uuids(total as usize), 10))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + BATCH_DEADLINE;
    while gate.entered.load(Ordering::SeqCst) < concurrency {
        assert!(std::time::Instant::now() < deadline, "chunks never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let cancelled = test
        .client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "to-cancel".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .batch
        .unwrap();
    let in_flight = concurrency as u64 * 10;
    assert_eq!(cancelled.status(), pb::BatchStatus::Running);
    assert_eq!(cancelled.cancelled_items, total - in_flight);
    assert_eq!(cancelled.pending_items, in_flight);

    gate.release.add_permits(concurrency * 2);
    let batch = test.wait_terminal("to-cancel").await;
    assert_eq!(batch.status(), pb::BatchStatus::Cancelled);
    assert_eq!(batch.succeeded_items, in_flight);
    assert_eq!(batch.cancelled_items, total - in_flight);
    assert_eq!(batch.completed_chunks, total / 10);
    assert_eq!(gate.entered.load(Ordering::SeqCst), concurrency);
    let cancelled_items = test.all_items("to-cancel", pb::ItemStatus::Cancelled).await;
    assert_eq!(cancelled_items.len() as u64, total - in_flight);
    assert!(cancelled_items.iter().all(|item| item.attempts == 0));

    let again = test
        .client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "to-cancel".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn the_watch_stream_ends_after_the_terminal_snapshot() {
    let mut test = spawn_app().await;
    test.client
        .submit_batch(submit("watched", uuids(2000), 10))
        .await
        .unwrap();
    let mut stream = test
        .client
        .watch_batch(pb::WatchBatchRequest {
            batch_id: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut snapshots = Vec::new();
    let ended = tokio::time::timeout(BATCH_DEADLINE, async {
        while let Some(message) = stream.message().await.unwrap() {
            snapshots.push(message.batch.unwrap());
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end");
    let last = snapshots.last().expect("at least one snapshot");
    assert_eq!(last.status(), pb::BatchStatus::Completed);
    assert_eq!(last.succeeded_items, 2000);
    assert!(snapshots[..snapshots.len() - 1]
        .iter()
        .all(|snapshot| !is_terminal(snapshot.status())));
    let done: Vec<u64> = snapshots
        .iter()
        .map(|s| s.succeeded_items + s.failed_items)
        .collect();
    assert!(done.windows(2).all(|pair| pair[0] <= pair[1]), "{done:?}");
}

#[tokio::test]
async fn a_watch_outlives_the_grpc_idle_timeout_while_its_batch_waits_on_a_slow_task() {
    let gate = Arc::new(Gate {
        entered: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut connections = batch_manager::config::ConnectionConfig::default();
    connections.grpc.idle_timeout = Duration::from_millis(100);
    let mut test = spawn_app_configured(
        Tasks {
            task2: Arc::new(SharedGate(Arc::clone(&gate))),
            ..Tasks::default()
        },
        connections,
    )
    .await;
    test.client
        .submit_batch(submit("slow-watched", uuids(20), 10))
        .await
        .unwrap();
    let mut stream = test
        .client
        .watch_batch(pb::WatchBatchRequest {
            batch_id: "slow-watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = std::time::Instant::now() + BATCH_DEADLINE;
    while gate.entered.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "chunks never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Many idle timeouts (and the grace of a connection closed for idleness) pass with nothing
    // sent on the stream; it is a call under way, so its connection is not idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    gate.release.add_permits(2);
    let mut last = None;
    while let Some(message) = stream.message().await.expect("the watch is still open") {
        last = message.batch;
    }
    assert_eq!(
        last.expect("snapshots").status(),
        pb::BatchStatus::Completed
    );
}

/// Task 2 that fails its first attempt of every chunk.
struct FlakyOnce;

#[async_trait]
impl ChunkTask for FlakyOnce {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        if input.attempt == 0 {
            return Err(TaskError::new("downstream timed out"));
        }
        Ok(vec![ItemOutcome::Succeeded; input.items.len()])
    }
}

#[tokio::test]
async fn a_transient_task_error_is_retried_and_succeeds() {
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(FlakyOnce),
        ..Tasks::default()
    })
    .await;
    test.client
        .submit_batch(submit("flaky", uuids(20), 10))
        .await
        .unwrap();
    let batch = test.wait_terminal("flaky").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, 20);
    let items = test.all_items("flaky", pb::ItemStatus::Succeeded).await;
    assert!(items.iter().all(|item| item.attempts == 2), "{items:?}");
}

/// Task 2 that always fails.
struct AlwaysDown;

#[async_trait]
impl ChunkTask for AlwaysDown {
    async fn process(&self, _input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        Err(TaskError::new("payment service unavailable"))
    }
}

#[tokio::test]
async fn when_retries_run_out_the_chunks_items_fail_with_the_tasks_error() {
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(AlwaysDown),
        ..Tasks::default()
    })
    .await;
    let mut ids = uuids(4);
    ids.push("not-a-uuid".into());
    test.client
        .submit_batch(submit("doomed", ids, 5))
        .await
        .unwrap();
    let batch = test.wait_terminal("doomed").await;
    assert_eq!(batch.status(), pb::BatchStatus::Failed);
    assert_eq!(batch.failed_items, 5);
    let items = test.all_items("doomed", pb::ItemStatus::Failed).await;
    let errors: Vec<&str> = items.iter().map(|item| item.error.as_str()).collect();
    assert_eq!(
        errors,
        vec![
            "payment service unavailable",
            "payment service unavailable",
            "payment service unavailable",
            "payment service unavailable",
            "item id is not a UUID",
        ]
    );
    assert!(items[..4].iter().all(|item| item.attempts == 4));
}

#[tokio::test]
async fn a_batch_sent_in_parts_completes_once_every_part_arrived() {
    let mut test = spawn_app().await;
    let ids = uuids(30);
    let part = |number: u64, items: &[String]| pb::AppendBatchItemsRequest {
        batch_id: "in-parts".into(),
        total_items: 30,
        batch_size: 4,
        part_number: number,
        item_ids: items.to_vec(),
        ..Default::default()
    };
    let first = test
        .client
        .append_batch_items(part(1, &ids[..10]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.received_items, 10);
    assert!(first.created);
    let repeat = test
        .client
        .append_batch_items(part(1, &ids[..10]))
        .await
        .unwrap()
        .into_inner();
    assert!(!repeat.created);
    assert_eq!(repeat.received_items, 10);
    let conflict = test
        .client
        .append_batch_items(part(1, &ids[10..20]))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = test.status("in-parts").await;
    assert!(!is_terminal(waiting.status()), "{waiting:?}");
    assert_eq!(waiting.pending_items, 20);

    test.client
        .append_batch_items(part(2, &ids[10..30]))
        .await
        .unwrap();
    let too_many = test
        .client
        .append_batch_items(part(3, &uuids(1)))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::FailedPrecondition);
    let batch = test.wait_terminal("in-parts").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, 30);
    assert_eq!(batch.total_chunks, 3 + 5);
    let listed = test
        .all_items("in-parts", pb::ItemStatus::Unspecified)
        .await;
    let listed: Vec<String> = listed.into_iter().map(|item| item.item_id).collect();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn batches_are_listed_newest_first_in_pages_and_by_status() {
    let mut test = spawn_app().await;
    for index in 0..5 {
        test.client
            .submit_batch(submit(&format!("listed-{index}"), uuids(3), 3))
            .await
            .unwrap();
        test.wait_terminal(&format!("listed-{index}")).await;
    }
    test.client
        .submit_batch(submit("listed-bad", vec!["x".into()], 1))
        .await
        .unwrap();
    test.wait_terminal("listed-bad").await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = test
            .client
            .list_batches(pb::ListBatchesRequest {
                status: 0,
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.batches.len() <= 2);
        seen.extend(page.batches.into_iter().map(|b| b.batch_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec![
            "listed-bad",
            "listed-4",
            "listed-3",
            "listed-2",
            "listed-1",
            "listed-0"
        ]
    );
    let failed = test
        .client
        .list_batches(pb::ListBatchesRequest {
            status: pb::BatchStatus::Failed as i32,
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let failed: Vec<String> = failed.batches.into_iter().map(|b| b.batch_id).collect();
    assert_eq!(failed, vec!["listed-bad"]);

    let bad_token = test
        .client
        .list_batches(pb::ListBatchesRequest {
            status: 0,
            page_size: 2,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(bad_token.message().contains("page_token"));
}

#[tokio::test]
async fn items_are_paged_without_gaps_or_repeats() {
    let mut test = spawn_app().await;
    let ids = uuids(257);
    test.client
        .submit_batch(submit("paged", ids.clone(), 7))
        .await
        .unwrap();
    test.wait_terminal("paged").await;
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = test
            .client
            .list_batch_items(pb::ListBatchItemsRequest {
                batch_id: "paged".into(),
                status: 0,
                page_size: 10,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.items.len() <= 10);
        listed.extend(page.items.into_iter().map(|item| item.item_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn the_server_serves_health_and_accepts_a_hundred_thousand_items_in_one_call() {
    let mut test = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", test.app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "batchmanager.v1.BatchManager".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let ids: Vec<String> = (0..100_000)
        .map(|i| format!("{:0>8}-0000-4000-8000-{:0>12}", i, i))
        .collect();
    let response = test
        .client
        .submit_batch(submit("large", ids, 1000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.total_items, 100_000);
    assert_eq!(response.total_chunks, 100);
    let batch = test.wait_terminal("large").await;
    assert_eq!(batch.succeeded_items, 100_000);
}

/// Succeeded + failed + cancelled + pending, which must equal the total exactly.
fn accounted_items(batch: &pb::Batch) -> u64 {
    batch.succeeded_items + batch.failed_items + batch.cancelled_items + batch.pending_items
}

#[tokio::test]
async fn concurrent_cancels_from_several_clients_count_every_item_once() {
    let gate = Arc::new(Gate {
        entered: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(SharedGate(Arc::clone(&gate))),
        ..Tasks::default()
    })
    .await;
    // 500 items expected, 200 received at batch size 1: 300 never arrive.
    test.client
        .append_batch_items(pb::AppendBatchItemsRequest {
            batch_id: "cancel-race".into(),
            total_items: 500,
            batch_size: 1,
            part_number: 1,
            item_ids: uuids(200),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + BATCH_DEADLINE;
    while gate.entered.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "chunks never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut cancels = Vec::new();
    for _ in 0..10 {
        let mut client = connect(test.app.grpc_addr).await;
        cancels.push(tokio::spawn(async move {
            client
                .cancel_batch(pb::CancelBatchRequest {
                    batch_id: "cancel-race".into(),
                })
                .await
                .map(|response| response.into_inner().batch.unwrap())
        }));
    }
    for cancel in cancels {
        match cancel.await.unwrap() {
            Ok(batch) => assert_eq!(accounted_items(&batch), 500, "{batch:?}"),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    let cancelled = test.status("cancel-race").await;
    assert_eq!(accounted_items(&cancelled), 500, "{cancelled:?}");
    assert!(cancelled.cancelled_items >= 300, "{cancelled:?}");

    gate.release.add_permits(1000);
    let batch = test.wait_terminal("cancel-race").await;
    assert_eq!(batch.status(), pb::BatchStatus::Cancelled);
    assert_eq!(batch.pending_items, 0);
    assert_eq!(
        batch.succeeded_items + batch.failed_items + batch.cancelled_items,
        500,
        "{batch:?}"
    );
    assert_eq!(batch.completed_chunks, 200);
    let entered = gate.entered.load(Ordering::SeqCst) as u64;
    assert_eq!(batch.succeeded_items, entered);
}

#[tokio::test]
async fn a_cancelled_batch_lists_every_received_item_without_a_filter() {
    let gate = Arc::new(Gate {
        entered: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(SharedGate(Arc::clone(&gate))),
        ..Tasks::default()
    })
    .await;
    let ids = uuids(2000);
    test.client
        .append_batch_items(pb::AppendBatchItemsRequest {
            batch_id: "cancelled-listing".into(),
            total_items: 2500,
            batch_size: 1,
            part_number: 1,
            item_ids: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    test.client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "cancelled-listing".into(),
        })
        .await
        .unwrap();
    gate.release.add_permits(10_000);
    let batch = test.wait_terminal("cancelled-listing").await;
    assert_eq!(batch.status(), pb::BatchStatus::Cancelled);

    let listed = test
        .all_items("cancelled-listing", pb::ItemStatus::Unspecified)
        .await;
    let listed_ids: Vec<&str> = listed.iter().map(|item| item.item_id.as_str()).collect();
    assert_eq!(
        listed_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let count = |status: pb::ItemStatus| {
        listed.iter().filter(|item| item.status() == status).count() as u64
    };
    assert_eq!(count(pb::ItemStatus::Succeeded), batch.succeeded_items);
    // The 500 items never received are counted as cancelled, not listed.
    assert_eq!(
        count(pb::ItemStatus::Cancelled),
        batch.cancelled_items - 500
    );
    assert_eq!(count(pb::ItemStatus::Pending), 0);
}

#[tokio::test]
async fn a_page_token_with_a_chunk_past_two_to_the_63_is_invalid_argument() {
    let mut test = spawn_app().await;
    test.client
        .submit_batch(submit("huge-token", uuids(3), 1))
        .await
        .unwrap();
    for chunk in ["9223372036854775808", "18446744073709551615"] {
        let status = test
            .client
            .list_batch_items(pb::ListBatchItemsRequest {
                batch_id: "huge-token".into(),
                status: 0,
                page_size: 10,
                page_token: hex::encode(format!("items:huge-token:{chunk}:0")),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("page_token"), "{status:?}");
    }
}

#[tokio::test]
async fn a_part_repeating_an_item_of_an_earlier_part_is_already_exists_and_writes_nothing() {
    let mut test = spawn_app().await;
    let ids = uuids(40);
    let part = |number: u64, items: Vec<String>| pb::AppendBatchItemsRequest {
        batch_id: "repeats".into(),
        total_items: 60,
        batch_size: 10,
        part_number: number,
        item_ids: items,
        ..Default::default()
    };
    test.client
        .append_batch_items(part(1, ids[..20].to_vec()))
        .await
        .unwrap();
    // Part 1's chunks run to the end first, so that nothing but the refused part could change
    // the database.
    let deadline = std::time::Instant::now() + BATCH_DEADLINE;
    let mut before = database_fingerprint(&test.db);
    loop {
        assert!(std::time::Instant::now() < deadline, "part 1 never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = database_fingerprint(&test.db);
        if now == before && test.status("repeats").await.completed_chunks == 2 {
            break;
        }
        before = now;
    }
    let mut second = ids[20..40].to_vec();
    second[7] = ids[3].clone();
    let status = test
        .client
        .append_batch_items(part(2, second))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&ids[3]), "{status:?}");
    assert!(status.message().contains("part 1"), "{status:?}");
    assert_eq!(database_fingerprint(&test.db), before);

    test.client
        .append_batch_items(part(2, ids[20..40].to_vec()))
        .await
        .unwrap();
    test.client
        .append_batch_items(part(3, uuids(20)))
        .await
        .unwrap();
    let batch = test.wait_terminal("repeats").await;
    assert_eq!(batch.succeeded_items, 60);
    let listed = test.all_items("repeats", pb::ItemStatus::Unspecified).await;
    assert_eq!(listed.len(), 60);
}

#[tokio::test]
async fn the_same_batch_with_another_batch_size_is_already_exists_naming_batch_size() {
    let mut test = spawn_app().await;
    let ids = uuids(12);
    test.client
        .submit_batch(submit("sized", ids.clone(), 4))
        .await
        .unwrap();
    test.wait_terminal("sized").await;
    let before = settled_fingerprint(&test.db).await;
    let status = test
        .client
        .submit_batch(submit("sized", ids.clone(), 5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("batch_size"), "{status:?}");
    assert_eq!(database_fingerprint(&test.db), before);
    let again = test
        .client
        .submit_batch(submit("sized", ids, 4))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
}

#[tokio::test]
async fn submit_run_request_runs_one_item_through_task_2s_command() {
    // Reads its items and succeeds them all.
    let command = "python3 -c 'import sys; sys.stdin.read()'".to_owned();
    let mut app = spawn_app_with_jobs(batch_manager::app::JobConfig {
        task2_command: Some(command),
        first_poll_interval: Duration::from_secs(1),
        ..batch_manager::app::JobConfig::default()
    })
    .await;
    let id = app
        .client
        .submit_run_request(pb::SubmitRunRequestRequest {
            process_name: "APOST".to_owned(),
            client_name: "2Sigma".to_owned(),
            timestamp: "2018-8-31 12:59:59".to_owned(),
        })
        .await
        .expect("SubmitRunRequest")
        .into_inner()
        .run_request_id;
    let batch = app.wait_terminal(&id).await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!((batch.total_items, batch.succeeded_items), (1, 1));
    let items = app.all_items(&id, pb::ItemStatus::Unspecified).await;
    assert_eq!(items[0].item_id, id);

    let cases = [
        ("", "2Sigma", "", "process_name: must not be empty"),
        (
            "APOST",
            "2 Sigma",
            "",
            "client_name: must hold only letters, digits, '-' and '_'",
        ),
        (
            "APOST",
            "2Sigma",
            "line\nbreak",
            "timestamp: must not contain control characters",
        ),
    ];
    for (process_name, client_name, timestamp, message) in cases {
        let status = app
            .client
            .submit_run_request(pb::SubmitRunRequestRequest {
                process_name: process_name.to_owned(),
                client_name: client_name.to_owned(),
                timestamp: timestamp.to_owned(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), message);
    }
}

#[tokio::test]
async fn submit_run_request_without_an_external_task_2_is_failed_precondition() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .submit_run_request(pb::SubmitRunRequestRequest {
            process_name: "APOST".to_owned(),
            client_name: "2Sigma".to_owned(),
            timestamp: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--task2-command"), "{status:?}");
    let batches = app
        .client
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(batches.batches.is_empty(), "nothing is stored");
}
