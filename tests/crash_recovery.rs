//! A server killed with SIGKILL mid-batch and started again on the same database finishes the
//! batch with every item in exactly one terminal status and exact counters; a server sent
//! SIGTERM exits promptly, ending the watches open on it.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use batch_manager::grpc::pb;
use common::process::ServerProcess;
use common::*;

const ITEMS: usize = 20_000;
const BATCH_SIZE: u32 = 2;

fn expected_items() -> (Vec<String>, HashMap<String, pb::ItemStatus>) {
    let mut ids = uuids(ITEMS);
    for (index, id) in ids.iter_mut().enumerate() {
        if index % 10 == 3 {
            *id = format!("legacy-{index}");
        }
    }
    let expected = ids
        .iter()
        .map(|id| {
            let status = if id.starts_with("legacy-") {
                pb::ItemStatus::Failed
            } else {
                pb::ItemStatus::Succeeded
            };
            (id.clone(), status)
        })
        .collect();
    (ids, expected)
}

/// Waits until at least `chunks` chunks are recorded, returning the batch then.
async fn wait_for_progress(server: &ServerProcess, batch_id: &str, chunks: u64) -> pb::Batch {
    let mut client = connect(server.grpc_addr).await;
    let deadline = Instant::now() + BATCH_DEADLINE;
    loop {
        let batch = fetch_status(&mut client, batch_id).await;
        if batch.completed_chunks >= chunks {
            return batch;
        }
        assert!(Instant::now() < deadline, "no progress: {batch:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_batch_resumes_and_counts_every_item_once() {
    let directory = tempfile::tempdir().unwrap();
    let db = directory.path().join("crash.db");
    let (ids, expected) = expected_items();

    let first = ServerProcess::start(&db);
    let mut client = connect(first.grpc_addr).await;
    client
        .submit_batch(pb::SubmitBatchRequest {
            batch_id: "crash-batch".into(),
            item_ids: ids.clone(),
            batch_size: BATCH_SIZE,
            ..Default::default()
        })
        .await
        .unwrap();
    let total_chunks = (ITEMS as u64).div_ceil(u64::from(BATCH_SIZE));
    let seen = wait_for_progress(&first, "crash-batch", 20).await;
    first.kill_hard();
    assert!(
        seen.completed_chunks < total_chunks,
        "the batch finished before the kill; the test proves nothing: {seen:?}"
    );

    // Killed a second time, further on, to resume from a resumed state.
    let second = ServerProcess::start(&db);
    let seen_again = wait_for_progress(&second, "crash-batch", seen.completed_chunks + 20).await;
    second.kill_hard();
    assert!(seen_again.completed_chunks < total_chunks, "{seen_again:?}");

    let third = ServerProcess::start(&db);
    let mut client = connect(third.grpc_addr).await;
    let batch = wait_terminal(&mut client, "crash-batch").await;
    let expected_failed = expected
        .values()
        .filter(|status| **status == pb::ItemStatus::Failed)
        .count() as u64;
    assert_eq!(batch.status(), pb::BatchStatus::CompletedWithFailures);
    assert_eq!(batch.failed_items, expected_failed);
    assert_eq!(batch.succeeded_items, ITEMS as u64 - expected_failed);
    assert_eq!(batch.pending_items, 0);
    assert_eq!(batch.cancelled_items, 0);
    assert_eq!(batch.completed_chunks, total_chunks);
    assert_eq!(batch.total_chunks, total_chunks);

    let items = all_items(&mut client, "crash-batch", pb::ItemStatus::Unspecified).await;
    assert_eq!(items.len(), ITEMS, "every item listed exactly once");
    for (item, id) in items.iter().zip(&ids) {
        assert_eq!(&item.item_id, id);
        assert_eq!(item.status(), expected[id], "{item:?}");
    }

    assert!(
        third.terminate().success(),
        "SIGTERM stops the server cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_watch_open_on_a_running_batch_ends_the_watch_and_exits() {
    let directory = tempfile::tempdir().unwrap();
    let db = directory.path().join("watched.db");
    let mut server = ServerProcess::start(&db);
    let mut client = connect(server.grpc_addr).await;
    client
        .submit_batch(submit_request("watched", uuids(100_000), 1))
        .await
        .unwrap();
    let mut watch = client
        .watch_batch(pb::WatchBatchRequest {
            batch_id: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = watch
        .message()
        .await
        .unwrap()
        .expect("a first snapshot")
        .batch
        .expect("batch");

    server.signal_terminate();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.message().await {
                Ok(Some(snapshot)) => last = snapshot.batch.expect("batch"),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch ends after SIGTERM");
    let status = ended.expect("the watch ends with a status, not silently");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        !is_terminal(last.status()),
        "the batch finished before the shutdown; the test proves nothing: {last:?}"
    );
    let exit = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)))
        .expect("the server exits after SIGTERM while a watch was open");
    assert!(exit.success(), "{exit:?}");
}

fn append_request(
    batch_id: &str,
    total: usize,
    part: u64,
    ids: &[String],
) -> pb::AppendBatchItemsRequest {
    pb::AppendBatchItemsRequest {
        batch_id: batch_id.to_owned(),
        total_items: total as u64,
        batch_size: BATCH_SIZE,
        part_number: part,
        item_ids: ids.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_part_of_an_older_batch_runs_and_survives_a_kill() {
    let directory = tempfile::tempdir().unwrap();
    let db = directory.path().join("parts.db");
    let older = uuids(4_000);
    let newer = uuids(4_000);

    let first = ServerProcess::start(&db);
    let mut client = connect(first.grpc_addr).await;
    client
        .append_batch_items(append_request("older", older.len(), 1, &older[..2_000]))
        .await
        .unwrap();
    client
        .submit_batch(submit_request("newer", newer.clone(), BATCH_SIZE))
        .await
        .unwrap();
    wait_for_progress(&first, "newer", 20).await;
    // Its chunks sort before the newer batch's, behind where the engine is paging.
    client
        .append_batch_items(append_request("older", older.len(), 2, &older[2_000..]))
        .await
        .unwrap();
    wait_for_progress(&first, "older", 1_010).await;
    first.kill_hard();

    let second = ServerProcess::start(&db);
    let mut client = connect(second.grpc_addr).await;
    for (batch_id, ids) in [("older", &older), ("newer", &newer)] {
        let batch = wait_terminal(&mut client, batch_id).await;
        assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
        assert_eq!(batch.succeeded_items, ids.len() as u64);
        assert_eq!(batch.completed_chunks, batch.total_chunks);
        let items = all_items(&mut client, batch_id, pb::ItemStatus::Succeeded).await;
        let listed: Vec<&String> = items.iter().map(|item| &item.item_id).collect();
        assert_eq!(
            listed,
            ids.iter().collect::<Vec<_>>(),
            "each item once, in order"
        );
    }
    assert!(second.terminate().success());
}
