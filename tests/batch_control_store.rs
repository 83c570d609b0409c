//! Batch control as store transitions, on both backends (SQLite, and DynamoDB on moto's
//! server): the failure budget, pause and resume, and redrive, each exact under replay and
//! concurrent requests.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use batch_manager::domain::{
    parse_item_ids, Batch, BatchId, BatchSize, BatchStatus, FailureBudget, ItemOutcome, ItemStatus,
    NewPart,
};
use batch_manager::store::dynamo::STALE_CLAIM;
use batch_manager::store::{
    AppendOutcome, BatchStore, CancelOutcome, ChunkClaim, ControlOutcome, ItemQuery, RecordOutcome,
    RedriveOutcome, Unfinished,
};
use common::{dynamo_store, moto, sqlite_store};

fn id(batch: &str) -> BatchId {
    BatchId::parse(batch).unwrap()
}

/// One part holding `count` items `<batch>-<n>`, `size` to a chunk.
fn whole_batch(batch: &str, count: u64, size: u64) -> NewPart {
    let ids = (0..count).map(|n| format!("{batch}-{n}")).collect();
    NewPart::new(
        id(batch),
        count,
        BatchSize::parse(size).unwrap(),
        1,
        parse_item_ids(ids).unwrap(),
    )
    .unwrap()
}

fn budget(percentage: Option<u64>, count: Option<u64>) -> FailureBudget {
    FailureBudget::parse(percentage, count).unwrap()
}

async fn stored(store: &dyn BatchStore, part: &NewPart) -> Batch {
    match store.append_part(part).await.unwrap() {
        AppendOutcome::Created { batch, .. } => batch,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn batch(store: &dyn BatchStore, batch: &str) -> Batch {
    store.get_batch(&id(batch)).await.unwrap().unwrap()
}

/// Claims a chunk and saves an outcome for each of its pending items: `fail(position)` says
/// which fail. False when the chunk is not active (cancelled or recorded).
async fn run_chunk(
    store: &dyn BatchStore,
    batch: &str,
    chunk: u64,
    fail: impl Fn(usize) -> bool,
) -> bool {
    let claimed = match store.claim_chunk(&id(batch), chunk).await.unwrap() {
        ChunkClaim::Active(claimed) => claimed,
        ChunkClaim::Inactive => return false,
        ChunkClaim::NotFound => panic!("chunk {chunk} of {batch} not found"),
    };
    let outcomes: Vec<(usize, ItemOutcome)> = claimed
        .states
        .iter()
        .enumerate()
        .filter(|(_, state)| state.status() == ItemStatus::Pending)
        .map(|(position, _)| {
            let outcome = if fail(position) {
                ItemOutcome::Failed(format!("position {position} failed"))
            } else {
                ItemOutcome::Succeeded
            };
            (position, outcome)
        })
        .collect();
    store
        .save_outcomes(&id(batch), chunk, &outcomes, 1)
        .await
        .unwrap();
    true
}

async fn record(store: &dyn BatchStore, batch: &str, chunk: u64) -> RecordOutcome {
    store
        .record_chunk(&id(batch), chunk, Unfinished::Failed(None))
        .await
        .unwrap()
}

fn settled(batch: &Batch) -> u64 {
    batch.succeeded_items + batch.failed_items + batch.cancelled_items
}

/// Every item of the batch as listed, with its status and attempts.
async fn items(store: &dyn BatchStore, batch: &str) -> Vec<(String, ItemStatus, u32)> {
    let mut listed = Vec::new();
    let mut page_token = None;
    loop {
        let page = store
            .list_items(&ItemQuery {
                batch_id: id(batch),
                status: None,
                page_size: 1000,
                page_token,
            })
            .await
            .unwrap();
        listed.extend(
            page.entries
                .into_iter()
                .map(|item| (item.item_id.as_str().to_owned(), item.status, item.attempts)),
        );
        match page.next_page_token {
            Some(next) => page_token = Some(next),
            None => return listed,
        }
    }
}

fn count_listed(listed: &[(String, ItemStatus, u32)], status: ItemStatus) -> u64 {
    listed.iter().filter(|(_, s, _)| *s == status).count() as u64
}

/// Counters and listing agree: each item in exactly one status.
async fn assert_listing_matches_counters(store: &dyn BatchStore, name: &str) {
    let counted = batch(store, name).await;
    let listed = items(store, name).await;
    assert_eq!(
        (
            count_listed(&listed, ItemStatus::Succeeded),
            count_listed(&listed, ItemStatus::Failed),
            count_listed(&listed, ItemStatus::Cancelled),
            count_listed(&listed, ItemStatus::Pending),
        ),
        (
            counted.succeeded_items,
            counted.failed_items,
            counted.cancelled_items,
            counted.pending_items(),
        ),
        "{counted:?}"
    );
}

async fn a_batch_past_its_failure_budget_stops_failed_and_cancels_its_unstarted_chunks(
    store: Arc<dyn BatchStore>,
) {
    let part = whole_batch("budget", 20, 2).with_failure_budget(budget(Some(10), None));
    stored(&*store, &part).await;
    // Chunk 3 is running when the budget runs out: it finishes and is counted.
    assert!(run_chunk(&*store, "budget", 3, |position| position == 1).await);
    for chunk in 0..2 {
        run_chunk(&*store, "budget", chunk, |position| position == 1).await;
        record(&*store, "budget", chunk).await;
    }
    let within = batch(&*store, "budget").await;
    assert_eq!(within.failed_items, 2, "2 of 20 is within 10%");
    assert!(!within.status.is_terminal());
    run_chunk(&*store, "budget", 2, |position| position == 1).await;
    let RecordOutcome::Recorded(stopped, _) = record(&*store, "budget", 2).await else {
        panic!("chunk 2 is recorded once");
    };
    assert_eq!(
        stopped.status,
        BatchStatus::Running,
        "the running chunk still counts"
    );
    assert_eq!(
        stopped.failure_reason.as_deref(),
        Some("failure budget exceeded: 3 of 20 items failed, 10% tolerated")
    );
    assert_eq!(
        (
            stopped.succeeded_items,
            stopped.failed_items,
            stopped.cancelled_items
        ),
        (3, 3, 12),
        "the 6 chunks never started are cancelled"
    );
    for chunk in 4..10 {
        assert!(
            !run_chunk(&*store, "budget", chunk, |_| false).await,
            "chunk {chunk} must never run"
        );
    }
    let RecordOutcome::Recorded(ended, _) = record(&*store, "budget", 3).await else {
        panic!("chunk 3 is recorded once");
    };
    assert_eq!(ended.status, BatchStatus::Failed);
    assert_eq!(
        (
            ended.succeeded_items,
            ended.failed_items,
            ended.cancelled_items
        ),
        (4, 4, 12)
    );
    assert_eq!(ended.completed_chunks, ended.total_chunks);
    assert!(ended.completed_at.is_some());
    // A replayed update changes nothing.
    assert!(matches!(
        record(&*store, "budget", 2).await,
        RecordOutcome::AlreadyRecorded(again) if again == ended
    ));
    assert_listing_matches_counters(&*store, "budget").await;
}

async fn a_count_budget_tolerates_exactly_that_many_failures(store: Arc<dyn BatchStore>) {
    let part = whole_batch("count", 6, 2).with_failure_budget(budget(None, Some(3)));
    stored(&*store, &part).await;
    for chunk in 0..3 {
        run_chunk(&*store, "count", chunk, |position| position == 0).await;
        record(&*store, "count", chunk).await;
    }
    let ended = batch(&*store, "count").await;
    assert_eq!(ended.status, BatchStatus::CompletedWithFailures);
    assert_eq!(ended.failed_items, 3);
    assert_eq!(ended.failure_reason, None);
}

async fn a_later_part_must_repeat_the_budget_or_leave_it_unset(store: Arc<dyn BatchStore>) {
    let ids = |range: std::ops::Range<u64>| {
        parse_item_ids(range.map(|n| format!("p-{n}")).collect()).unwrap()
    };
    let size = BatchSize::parse(2).unwrap();
    let first = NewPart::new(id("parts"), 4, size, 1, ids(0..2))
        .unwrap()
        .with_failure_budget(budget(Some(25), None));
    stored(&*store, &first).await;
    let other = NewPart::new(id("parts"), 4, size, 2, ids(2..4))
        .unwrap()
        .with_failure_budget(budget(Some(50), None));
    match store.append_part(&other).await.unwrap() {
        AppendOutcome::Conflict(reason) => {
            assert!(reason.contains("failure budget 25%, not 50%"), "{reason}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let unset = NewPart::new(id("parts"), 4, size, 2, ids(2..4)).unwrap();
    let accepted = stored(&*store, &unset).await;
    assert_eq!(accepted.failure_budget, budget(Some(25), None));
}

async fn a_paused_batch_keeps_counting_running_chunks_and_resumes_where_it_stopped(
    store: Arc<dyn BatchStore>,
) {
    stored(&*store, &whole_batch("paused", 6, 2)).await;
    run_chunk(&*store, "paused", 0, |_| false).await;
    let ControlOutcome::Applied(paused) = store.pause_batch(&id("paused")).await.unwrap() else {
        panic!("a running batch pauses");
    };
    assert_eq!(paused.status, BatchStatus::Paused);
    assert!(matches!(
        store.pause_batch(&id("paused")).await.unwrap(),
        ControlOutcome::Applied(again) if again.status == BatchStatus::Paused
    ));
    let RecordOutcome::Recorded(counted, _) = record(&*store, "paused", 0).await else {
        panic!("the running chunk is recorded");
    };
    assert_eq!(counted.status, BatchStatus::Paused, "still paused");
    assert_eq!(counted.succeeded_items, 2);
    let ControlOutcome::Applied(resumed) = store.resume_batch(&id("paused")).await.unwrap() else {
        panic!("a paused batch resumes");
    };
    assert_eq!(resumed.status, BatchStatus::Running);
    assert!(matches!(
        store.resume_batch(&id("paused")).await.unwrap(),
        ControlOutcome::Applied(again) if again.status == BatchStatus::Running
    ));
    for chunk in 1..3 {
        run_chunk(&*store, "paused", chunk, |_| false).await;
        record(&*store, "paused", chunk).await;
    }
    let ended = batch(&*store, "paused").await;
    assert_eq!(ended.status, BatchStatus::Completed);
    for refused in [
        store.pause_batch(&id("paused")).await.unwrap(),
        store.resume_batch(&id("paused")).await.unwrap(),
    ] {
        assert!(
            matches!(&refused, ControlOutcome::Refused(reason) if reason.contains("has ended")),
            "{refused:?}"
        );
    }
    assert_eq!(
        store.pause_batch(&id("nope")).await.unwrap(),
        ControlOutcome::NotFound
    );
}

async fn a_paused_batch_whose_last_chunk_finishes_ends(store: Arc<dyn BatchStore>) {
    stored(&*store, &whole_batch("last", 2, 2)).await;
    run_chunk(&*store, "last", 0, |_| false).await;
    store.pause_batch(&id("last")).await.unwrap();
    record(&*store, "last", 0).await;
    assert_eq!(batch(&*store, "last").await.status, BatchStatus::Completed);
}

async fn a_redrive_re_runs_only_the_failed_items_as_new_attempts(store: Arc<dyn BatchStore>) {
    stored(&*store, &whole_batch("again", 6, 2)).await;
    assert!(matches!(
        store.redrive_batch(&id("again"), false).await.unwrap(),
        RedriveOutcome::Refused(reason) if reason.contains("only an ended batch")
    ));
    for chunk in 0..3 {
        run_chunk(&*store, "again", chunk, |position| position == 1).await;
        record(&*store, "again", chunk).await;
    }
    let first = batch(&*store, "again").await;
    assert_eq!(first.status, BatchStatus::CompletedWithFailures);
    let RedriveOutcome::Redriven {
        batch: running,
        chunks,
        items: redriven,
    } = store.redrive_batch(&id("again"), false).await.unwrap()
    else {
        panic!("an ended batch with failed items is redriven");
    };
    assert_eq!((chunks, redriven), (vec![0, 1, 2], 3));
    assert_eq!(running.status, BatchStatus::Running);
    assert_eq!(running.redrive_count, 1);
    assert_eq!(
        (
            running.succeeded_items,
            running.failed_items,
            running.pending_items()
        ),
        (3, 0, 3)
    );
    assert_eq!(running.completed_chunks, 0);
    assert_eq!(running.completed_at, None);
    assert_listing_matches_counters(&*store, "again").await;
    assert!(matches!(
        store.redrive_batch(&id("again"), false).await.unwrap(),
        RedriveOutcome::Refused(_)
    ));
    for chunk in 0..3 {
        let claimed = store.claim_chunk(&id("again"), chunk).await.unwrap();
        let ChunkClaim::Active(claimed) = claimed else {
            panic!("chunk {chunk} runs again");
        };
        let pending: Vec<usize> = claimed
            .states
            .iter()
            .enumerate()
            .filter(|(_, state)| state.status() == ItemStatus::Pending)
            .map(|(position, _)| position)
            .collect();
        assert_eq!(pending, vec![1], "only the failed item runs again");
        store
            .save_outcomes(&id("again"), chunk, &[(1, ItemOutcome::Succeeded)], 1)
            .await
            .unwrap();
        record(&*store, "again", chunk).await;
        // A replayed update of the new run changes nothing.
        assert!(matches!(
            record(&*store, "again", chunk).await,
            RecordOutcome::AlreadyRecorded(_)
        ));
    }
    let ended = batch(&*store, "again").await;
    assert_eq!(ended.status, BatchStatus::Completed);
    assert_eq!((ended.succeeded_items, ended.failed_items), (6, 0));
    assert_eq!(ended.redrive_count, 1);
    assert!(ended.completed_at.is_some());
    let listed = items(&*store, "again").await;
    assert_eq!(count_listed(&listed, ItemStatus::Succeeded), 6);
    for (item, _, attempts) in &listed {
        assert_eq!(*attempts, 2, "{item}: one attempt per run");
    }
    assert!(matches!(
        store.redrive_batch(&id("again"), false).await.unwrap(),
        RedriveOutcome::Refused(reason) if reason.contains("no failed items")
    ));
    assert!(matches!(
        store.redrive_batch(&id("nope"), false).await.unwrap(),
        RedriveOutcome::NotFound
    ));
}

async fn concurrent_redrives_redrive_once(store: Arc<dyn BatchStore>) {
    stored(&*store, &whole_batch("twice", 8, 2)).await;
    for chunk in 0..4 {
        run_chunk(&*store, "twice", chunk, |_| true).await;
        record(&*store, "twice", chunk).await;
    }
    assert_eq!(batch(&*store, "twice").await.status, BatchStatus::Failed);
    let redrives = (0..4).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.redrive_batch(&id("twice"), false).await.unwrap() })
    });
    let outcomes = futures::future::join_all(redrives).await;
    let redriven = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(RedriveOutcome::Redriven { .. })))
        .count();
    assert_eq!(redriven, 1, "{outcomes:?}");
    let running = batch(&*store, "twice").await;
    assert_eq!(running.redrive_count, 1);
    assert_eq!((running.failed_items, running.pending_items()), (0, 8));
    assert_listing_matches_counters(&*store, "twice").await;
}

async fn a_cancelled_batch_redriven_with_its_cancelled_items_runs_them(store: Arc<dyn BatchStore>) {
    stored(&*store, &whole_batch("stopped", 6, 2)).await;
    run_chunk(&*store, "stopped", 0, |position| position == 0).await;
    record(&*store, "stopped", 0).await;
    let CancelOutcome::Cancelled(cancelled) = store.cancel_batch(&id("stopped")).await.unwrap()
    else {
        panic!("a running batch cancels");
    };
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert_eq!(cancelled.cancelled_items, 4);
    let RedriveOutcome::Redriven {
        batch: running,
        chunks,
        items: redriven,
    } = store.redrive_batch(&id("stopped"), true).await.unwrap()
    else {
        panic!("a cancelled batch is redriven with its cancelled items");
    };
    assert_eq!((chunks, redriven), (vec![0, 1, 2], 5));
    assert_eq!(
        (
            running.succeeded_items,
            running.failed_items,
            running.cancelled_items
        ),
        (1, 0, 0)
    );
    assert_listing_matches_counters(&*store, "stopped").await;
    for chunk in 0..3 {
        assert!(run_chunk(&*store, "stopped", chunk, |_| false).await);
        record(&*store, "stopped", chunk).await;
    }
    let ended = batch(&*store, "stopped").await;
    assert_eq!(ended.status, BatchStatus::Completed, "{ended:?}");
    assert_eq!(ended.succeeded_items, 6);
    assert_listing_matches_counters(&*store, "stopped").await;
}

async fn a_budget_stopped_batch_redriven_without_its_cancelled_items_leaves_them_cancelled(
    store: Arc<dyn BatchStore>,
) {
    let part = whole_batch("half", 8, 2).with_failure_budget(budget(None, Some(0)));
    stored(&*store, &part).await;
    run_chunk(&*store, "half", 0, |position| position == 1).await;
    record(&*store, "half", 0).await;
    let stopped = batch(&*store, "half").await;
    assert_eq!(stopped.status, BatchStatus::Failed);
    assert_eq!(
        (
            stopped.succeeded_items,
            stopped.failed_items,
            stopped.cancelled_items
        ),
        (1, 1, 6)
    );
    let RedriveOutcome::Redriven { chunks, .. } =
        store.redrive_batch(&id("half"), false).await.unwrap()
    else {
        panic!("the failed item is redriven");
    };
    assert_eq!(chunks, vec![0]);
    let running = batch(&*store, "half").await;
    assert_eq!(running.failure_reason, None);
    run_chunk(&*store, "half", 0, |_| false).await;
    record(&*store, "half", 0).await;
    let ended = batch(&*store, "half").await;
    assert_eq!(ended.status, BatchStatus::CompletedWithFailures);
    assert_eq!(
        (
            ended.succeeded_items,
            ended.failed_items,
            ended.cancelled_items
        ),
        (2, 0, 6)
    );
    assert_eq!(settled(&ended), 8);
    assert_listing_matches_counters(&*store, "half").await;
}

async fn cancelling_a_redriven_batch_cancels_the_chunks_it_would_re_run(
    store: Arc<dyn BatchStore>,
) {
    stored(&*store, &whole_batch("recancel", 4, 2)).await;
    for chunk in 0..2 {
        run_chunk(&*store, "recancel", chunk, |position| position == 0).await;
        record(&*store, "recancel", chunk).await;
    }
    store.redrive_batch(&id("recancel"), false).await.unwrap();
    run_chunk(&*store, "recancel", 0, |_| false).await;
    let CancelOutcome::Cancelled(cancelled) = store.cancel_batch(&id("recancel")).await.unwrap()
    else {
        panic!("a redriven batch cancels");
    };
    assert_eq!(cancelled.status, BatchStatus::Running, "chunk 0 still runs");
    record(&*store, "recancel", 0).await;
    let ended = batch(&*store, "recancel").await;
    assert_eq!(ended.status, BatchStatus::Cancelled);
    assert_eq!(
        (
            ended.succeeded_items,
            ended.failed_items,
            ended.cancelled_items
        ),
        (3, 0, 1)
    );
    assert_listing_matches_counters(&*store, "recancel").await;
}

both_backends!(
    a_batch_past_its_failure_budget_stops_failed_and_cancels_its_unstarted_chunks,
    a_count_budget_tolerates_exactly_that_many_failures,
    a_later_part_must_repeat_the_budget_or_leave_it_unset,
    a_paused_batch_keeps_counting_running_chunks_and_resumes_where_it_stopped,
    a_paused_batch_whose_last_chunk_finishes_ends,
    a_redrive_re_runs_only_the_failed_items_as_new_attempts,
    concurrent_redrives_redrive_once,
    a_cancelled_batch_redriven_with_its_cancelled_items_runs_them,
    a_budget_stopped_batch_redriven_without_its_cancelled_items_leaves_them_cancelled,
    cancelling_a_redriven_batch_cancels_the_chunks_it_would_re_run,
);

/// On AWS a paused batch claims no start, and a redrive's chunks are started as new
/// executions: its start positions map to the chunks it re-runs.
#[tokio::test]
async fn dynamodb_starts_hold_while_paused_and_follow_a_redrive() {
    let store = moto::dynamo_store("control-starts").await;
    let batch_id = id("starts");
    stored(&store, &whole_batch("starts", 10, 2)).await;
    store.mark_startable(&batch_id, 0, 5).await.unwrap();
    store.pause_batch(&batch_id).await.unwrap();
    assert_eq!(
        store
            .claim_starts(&batch_id, 100, 100, STALE_CLAIM)
            .await
            .unwrap(),
        None,
        "a paused batch starts nothing"
    );
    store.resume_batch(&batch_id).await.unwrap();
    let claim = store
        .claim_starts(&batch_id, 100, 100, STALE_CLAIM)
        .await
        .unwrap()
        .expect("a resumed batch starts its chunks");
    assert_eq!(
        store.claimed_chunks(&batch_id, &claim).await.unwrap(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(claim.run, 0);
    store.confirm_starts(&batch_id, &claim).await.unwrap();
    for chunk in 0..5 {
        run_chunk(&store, "starts", chunk, |position| {
            chunk % 2 == 1 && position == 0
        })
        .await;
        record(&store, "starts", chunk).await;
    }
    store.redrive_batch(&batch_id, false).await.unwrap();
    let claim = store
        .claim_starts(&batch_id, 100, 100, STALE_CLAIM)
        .await
        .unwrap()
        .expect("the redriven chunks start");
    assert_eq!(claim.run, 1);
    assert_eq!(
        store.claimed_chunks(&batch_id, &claim).await.unwrap(),
        vec![1, 3]
    );
}

/// A stop whose stopper died after marking the batch stopped, before cancelling its
/// unstarted chunks, is finished by the schedule's sweep: the batch ends as the stop said.
#[tokio::test]
async fn dynamodb_a_stop_left_undone_is_finished_by_the_sweep() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use batch_manager::store::dynamo::{DynamoStore, DynamoTables};

    let endpoint = moto::moto_endpoint().await;
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config(&endpoint).await);
    let (batch_table, request_table) = moto::table_names("undone-stop");
    moto::create_tables(&client, &batch_table, &request_table).await;
    let store = DynamoStore::new(
        client.clone(),
        DynamoTables {
            batch_table: batch_table.clone(),
            request_table,
        },
    );
    stored(&store, &whole_batch("undone", 6, 2)).await;
    run_chunk(&store, "undone", 0, |_| false).await;
    record(&store, "undone", 0).await;
    // What the stopper wrote before it died: the batch stopped a while ago, no chunk cancelled.
    let long_ago = batch_manager::domain::Timestamp::now().0 - 120_000_000;
    client
        .update_item()
        .table_name(&batch_table)
        .key("batchId", AttributeValue::S("undone".into()))
        .update_expression("SET cancelRequested = :yes, stoppedBy = :cancel, stoppedAt = :then")
        .expression_attribute_values(":yes", AttributeValue::Bool(true))
        .expression_attribute_values(":cancel", AttributeValue::S("CANCEL".into()))
        .expression_attribute_values(":then", AttributeValue::N(long_ago.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(batch(&store, "undone").await.status, BatchStatus::Running);
    assert!(
        !store
            .finish_stop(&id("undone"), Duration::from_secs(600))
            .await
            .unwrap(),
        "a recent stop is left to its stopper"
    );
    assert!(store.finish_stop(&id("undone"), STALE_CLAIM).await.unwrap());
    let ended = batch(&store, "undone").await;
    assert_eq!(ended.status, BatchStatus::Cancelled);
    assert_eq!(
        (ended.succeeded_items, ended.cancelled_items),
        (2, 4),
        "{ended:?}"
    );
    assert!(
        !store.finish_stop(&id("undone"), STALE_CLAIM).await.unwrap(),
        "an ended batch needs nothing"
    );
}
