//! One suite of store behaviours, run against both backends: SQLite, and DynamoDB on moto's
//! server with tables created as the stack template defines them.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;

use batch_manager::domain::{
    parse_item_ids, Batch, BatchId, BatchSize, BatchStatus, ItemOutcome, ItemRecord, ItemStatus,
    NewPart, OTHER_ERRORS,
};
use batch_manager::store::codec::SKIPPED_CHUNKS_PER_PAGE;
use batch_manager::store::dynamo::{DynamoStore, DynamoTables};
use batch_manager::store::sqlite::SqliteStore;
use batch_manager::store::{
    AppendOutcome, BatchQuery, BatchStore, CancelOutcome, ChunkClaim, ItemQuery, ListError,
    RecordOutcome, Unfinished,
};
use common::{dynamo_store, moto, sqlite_store};

fn part(batch: &str, total: u64, size: u64, number: u64, ids: &[&str]) -> NewPart {
    NewPart::new(
        BatchId::parse(batch).unwrap(),
        total,
        BatchSize::parse(size).unwrap(),
        number,
        parse_item_ids(ids.iter().map(|id| id.to_string()).collect()).unwrap(),
    )
    .unwrap()
}

fn id(batch: &str) -> BatchId {
    BatchId::parse(batch).unwrap()
}

fn created_chunks(outcome: AppendOutcome) -> Vec<u64> {
    match outcome {
        AppendOutcome::Created { chunks, .. } => chunks,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// Runs a chunk through claim and outcomes as the pipeline does: odd positions fail.
async fn process(store: &dyn BatchStore, batch: &str, chunk: u64) {
    let ChunkClaim::Active(claimed) = store.claim_chunk(&id(batch), chunk).await.unwrap() else {
        panic!("chunk {chunk} not claimable");
    };
    save_by_position(store, batch, chunk, claimed.items.len(), |position| {
        if position % 2 == 1 {
            ItemOutcome::Failed(format!("odd position {position}"))
        } else {
            ItemOutcome::Succeeded
        }
    })
    .await;
}

/// Saves, for each of a claimed chunk's `items` positions, the outcome `outcome` gives it.
async fn save_by_position(
    store: &dyn BatchStore,
    batch: &str,
    chunk: u64,
    items: usize,
    outcome: impl Fn(usize) -> ItemOutcome,
) {
    let outcomes: Vec<(usize, ItemOutcome)> = (0..items)
        .map(|position| (position, outcome(position)))
        .collect();
    store
        .save_outcomes(&id(batch), chunk, &outcomes, 1)
        .await
        .unwrap();
}

async fn a_part_is_stored_once_and_the_same_part_again_changes_nothing(store: Arc<dyn BatchStore>) {
    let first = store
        .append_part(&part("b", 5, 2, 1, &["a", "b", "c", "d", "e"]))
        .await
        .unwrap();
    assert_eq!(created_chunks(first), vec![0, 1, 2]);
    let batch = store.get_batch(&id("b")).await.unwrap().unwrap();
    assert_eq!(
        (batch.total_items, batch.received_items, batch.total_chunks),
        (5, 5, 3)
    );
    assert_eq!(batch.status, BatchStatus::Pending);

    match store
        .append_part(&part("b", 5, 2, 1, &["a", "b", "c", "d", "e"]))
        .await
        .unwrap()
    {
        AppendOutcome::AlreadyStored {
            batch: again,
            unstarted_chunks,
        } => {
            assert_eq!(unstarted_chunks, vec![0, 1, 2]);
            assert_eq!(again.total_chunks, 3);
        }
        other => panic!("{other:?}"),
    }
    process(&*store, "b", 1).await;
    match store
        .append_part(&part("b", 5, 2, 1, &["a", "b", "c", "d", "e"]))
        .await
        .unwrap()
    {
        AppendOutcome::AlreadyStored {
            unstarted_chunks, ..
        } => assert_eq!(unstarted_chunks, vec![0, 2]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .append_part(&part("b", 5, 2, 1, &["a", "b", "c", "d", "x"]))
            .await
            .unwrap(),
        AppendOutcome::Conflict(_)
    ));
    assert!(matches!(
        store
            .append_part(&part("b", 6, 2, 1, &["a", "b", "c", "d", "e"]))
            .await
            .unwrap(),
        AppendOutcome::Conflict(_)
    ));
    let after = store.get_batch(&id("b")).await.unwrap().unwrap();
    assert_eq!((after.received_items, after.total_chunks), (5, 3));
}

async fn parts_fill_a_batch_up_to_its_total_and_no_further(store: Arc<dyn BatchStore>) {
    assert_eq!(
        created_chunks(
            store
                .append_part(&part("p", 5, 2, 1, &["a", "b", "c"]))
                .await
                .unwrap()
        ),
        vec![0, 1]
    );
    assert_eq!(
        created_chunks(
            store
                .append_part(&part("p", 5, 2, 2, &["d", "e"]))
                .await
                .unwrap()
        ),
        vec![2]
    );
    assert!(matches!(
        store
            .append_part(&part("p", 5, 2, 3, &["f"]))
            .await
            .unwrap(),
        AppendOutcome::Rejected(_)
    ));
    let batch = store.get_batch(&id("p")).await.unwrap().unwrap();
    assert_eq!((batch.received_items, batch.total_chunks), (5, 3));
}

async fn replayed_and_out_of_order_updates_give_exact_counters_and_one_terminal_transition(
    store: Arc<dyn BatchStore>,
) {
    let ids: Vec<String> = (0..40).map(|i| format!("item-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let chunks = created_chunks(
        store
            .append_part(&part("r", 40, 4, 1, &refs))
            .await
            .unwrap(),
    );
    assert_eq!(chunks.len(), 10);
    for &chunk in &chunks {
        process(&*store, "r", chunk).await;
    }
    // Every update delivered twice, concurrently, in reverse order.
    let deliveries = chunks
        .iter()
        .rev()
        .flat_map(|&chunk| [chunk, chunk])
        .map(|chunk| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .record_chunk(&id("r"), chunk, Unfinished::Failed(None))
                    .await
                    .unwrap()
            })
        })
        .collect::<Vec<_>>();
    let mut recorded = 0;
    let mut terminal_snapshots = 0;
    for delivery in deliveries {
        match delivery.await.unwrap() {
            RecordOutcome::Recorded(batch, _) => {
                recorded += 1;
                if batch.status.is_terminal() {
                    terminal_snapshots += 1;
                }
            }
            RecordOutcome::AlreadyRecorded(_) => {}
            RecordOutcome::NotFound => panic!("chunk not found"),
        }
    }
    assert_eq!(recorded, 10, "each chunk is counted exactly once");
    assert!(terminal_snapshots >= 1);
    let batch = store.get_batch(&id("r")).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::CompletedWithFailures);
    assert_eq!((batch.succeeded_items, batch.failed_items), (20, 20));
    assert_eq!(batch.completed_chunks, 10);
    assert_eq!(batch.pending_items(), 0);
    let completed_at = batch.completed_at.expect("completion time");

    assert!(matches!(
        store
            .record_chunk(&id("r"), 3, Unfinished::Failed(None))
            .await
            .unwrap(),
        RecordOutcome::AlreadyRecorded(_)
    ));
    store
        .save_outcomes(&id("r"), 3, &[(0, ItemOutcome::Failed("late".into()))], 9)
        .await
        .unwrap();
    let again = store.get_batch(&id("r")).await.unwrap().unwrap();
    assert_eq!(
        again.completed_at,
        Some(completed_at),
        "terminal exactly once"
    );
    assert_eq!((again.succeeded_items, again.failed_items), (20, 20));
    assert_eq!(
        store.claim_chunk(&id("r"), 3).await.unwrap(),
        ChunkClaim::Inactive
    );
}

/// Stores a batch of one chunk of items `a`, `b`, `c` and claims it.
async fn claim_one_chunk_of_three_items(store: &dyn BatchStore, batch: &str) {
    created_chunks(
        store
            .append_part(&part(batch, 3, 3, 1, &["a", "b", "c"]))
            .await
            .unwrap(),
    );
    store.claim_chunk(&id(batch), 0).await.unwrap();
}

async fn first_page_of_items(store: &dyn BatchStore, batch: &str) -> Vec<ItemRecord> {
    store
        .list_items(&ItemQuery {
            batch_id: id(batch),
            status: None,
            page_size: 10,
            page_token: None,
        })
        .await
        .unwrap()
        .entries
}

async fn recording_with_a_failure_fails_the_items_still_pending(store: Arc<dyn BatchStore>) {
    claim_one_chunk_of_three_items(&*store, "f").await;
    store
        .save_outcomes(
            &id("f"),
            0,
            &[(1, ItemOutcome::Failed("not a UUID".into()))],
            4,
        )
        .await
        .unwrap();
    let RecordOutcome::Recorded(batch, _) = store
        .record_chunk(&id("f"), 0, Unfinished::Failed(Some("service down")))
        .await
        .unwrap()
    else {
        panic!("not recorded");
    };
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(batch.failed_items, 3);
    let items = first_page_of_items(&*store, "f").await;
    let errors: Vec<Option<&str>> = items.iter().map(|item| item.error.as_deref()).collect();
    assert_eq!(
        errors,
        vec![
            Some("service down"),
            Some("not a UUID"),
            Some("service down")
        ]
    );
    assert!(items
        .iter()
        .all(|item| item.attempts == 4 && item.status == ItemStatus::Failed));
}

async fn task_2_outcomes_saved_with_the_count_are_counted_once_and_kept_when_replayed(
    store: Arc<dyn BatchStore>,
) {
    claim_one_chunk_of_three_items(&*store, "s").await;
    let outcomes = [
        (0, ItemOutcome::Succeeded),
        (1, ItemOutcome::Failed("rejected".into())),
        (2, ItemOutcome::Succeeded),
    ];
    let RecordOutcome::Recorded(batch, _) = store
        .save_outcomes_and_record(&id("s"), 0, &outcomes, 2, Unfinished::Failed(None))
        .await
        .unwrap()
    else {
        panic!("not recorded");
    };
    assert_eq!(batch.status, BatchStatus::CompletedWithFailures);
    assert_eq!((batch.succeeded_items, batch.failed_items), (2, 1));

    let replayed = [(1, ItemOutcome::Succeeded)];
    let RecordOutcome::AlreadyRecorded(batch) = store
        .save_outcomes_and_record(&id("s"), 0, &replayed, 3, Unfinished::Failed(None))
        .await
        .unwrap()
    else {
        panic!("recorded twice");
    };
    assert_eq!((batch.succeeded_items, batch.failed_items), (2, 1));
    let items = first_page_of_items(&*store, "s").await;
    let shown: Vec<(ItemStatus, Option<&str>, u32)> = items
        .iter()
        .map(|item| (item.status, item.error.as_deref(), item.attempts))
        .collect();
    assert_eq!(
        shown,
        vec![
            (ItemStatus::Succeeded, None, 2),
            (ItemStatus::Failed, Some("rejected"), 2),
            (ItemStatus::Succeeded, None, 2)
        ]
    );
}

async fn a_started_chunk_whose_job_a_cancel_stopped_counts_its_unfinished_items_cancelled_once(
    store: Arc<dyn BatchStore>,
) {
    created_chunks(
        store
            .append_part(&part("j", 6, 3, 1, &["a", "b", "c", "d", "e", "f"]))
            .await
            .unwrap(),
    );
    store.claim_chunk(&id("j"), 0).await.unwrap();
    // Task 1 failed one item before task 2's job was stopped.
    store
        .save_outcomes(&id("j"), 0, &[(1, ItemOutcome::Failed("bad".into()))], 1)
        .await
        .unwrap();
    let CancelOutcome::Cancelled(cancelled) = store.cancel_batch(&id("j")).await.unwrap() else {
        panic!("not cancelled");
    };
    assert_eq!(cancelled.cancelled_items, 3, "the chunk never started");

    let RecordOutcome::Recorded(batch, _) = store
        .record_chunk(&id("j"), 0, Unfinished::Cancelled)
        .await
        .unwrap()
    else {
        panic!("not recorded");
    };
    assert_eq!(batch.status, BatchStatus::Cancelled);
    assert_eq!(
        (
            batch.succeeded_items,
            batch.failed_items,
            batch.cancelled_items
        ),
        (0, 1, 5)
    );
    assert_eq!(batch.pending_items(), 0);
    // Replayed, or recorded again by a late update: nothing moves.
    let RecordOutcome::AlreadyRecorded(again) = store
        .record_chunk(&id("j"), 0, Unfinished::Cancelled)
        .await
        .unwrap()
    else {
        panic!("recorded twice");
    };
    assert_eq!(again.cancelled_items, 5);
    assert!(matches!(
        store
            .record_chunk(&id("j"), 0, Unfinished::Failed(Some("late")))
            .await
            .unwrap(),
        RecordOutcome::AlreadyRecorded(_)
    ));

    let statuses: Vec<(String, ItemStatus)> = first_page_of_items(&*store, "j")
        .await
        .into_iter()
        .map(|item| (item.item_id.to_string(), item.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("a".to_owned(), ItemStatus::Cancelled),
            ("b".to_owned(), ItemStatus::Failed),
            ("c".to_owned(), ItemStatus::Cancelled),
            ("d".to_owned(), ItemStatus::Cancelled),
            ("e".to_owned(), ItemStatus::Cancelled),
            ("f".to_owned(), ItemStatus::Cancelled),
        ]
    );
    let cancelled_listing = store
        .list_items(&ItemQuery {
            batch_id: id("j"),
            status: Some(ItemStatus::Cancelled),
            page_size: 10,
            page_token: None,
        })
        .await
        .unwrap();
    assert_eq!(
        cancelled_listing.entries.len(),
        5,
        "the filter finds them too"
    );
    assert_eq!(cancelled_listing.next_page_token, None);
}

async fn cancelling_skips_unstarted_chunks_and_ends_when_running_ones_are_recorded(
    store: Arc<dyn BatchStore>,
) {
    created_chunks(
        store
            .append_part(&part(
                "c",
                8,
                2,
                1,
                &["a", "b", "c", "d", "e", "f", "g", "h"],
            ))
            .await
            .unwrap(),
    );
    process(&*store, "c", 0).await;
    store
        .record_chunk(&id("c"), 0, Unfinished::Failed(None))
        .await
        .unwrap();
    process(&*store, "c", 1).await;

    let CancelOutcome::Cancelled(cancelled) = store.cancel_batch(&id("c")).await.unwrap() else {
        panic!("not cancelled");
    };
    assert_eq!(
        cancelled.status,
        BatchStatus::Running,
        "chunk 1 is still running"
    );
    assert_eq!(cancelled.cancelled_items, 4);
    assert_eq!(cancelled.completed_chunks, 3);
    assert_eq!(
        store.claim_chunk(&id("c"), 2).await.unwrap(),
        ChunkClaim::Inactive
    );
    assert!(matches!(
        store
            .append_part(&part("c", 8, 2, 2, &["z"]))
            .await
            .unwrap(),
        AppendOutcome::Rejected(_) | AppendOutcome::Conflict(_)
    ));

    let RecordOutcome::Recorded(done, _) = store
        .record_chunk(&id("c"), 1, Unfinished::Failed(None))
        .await
        .unwrap()
    else {
        panic!("not recorded");
    };
    assert_eq!(done.status, BatchStatus::Cancelled);
    assert_eq!(
        (
            done.succeeded_items,
            done.failed_items,
            done.cancelled_items
        ),
        (2, 2, 4)
    );
    assert_eq!(done.pending_items(), 0);
    assert!(matches!(
        store.cancel_batch(&id("c")).await.unwrap(),
        CancelOutcome::AlreadyTerminal(_)
    ));
    let cancelled_items = store
        .list_items(&ItemQuery {
            batch_id: id("c"),
            status: Some(ItemStatus::Cancelled),
            page_size: 100,
            page_token: None,
        })
        .await
        .unwrap()
        .entries;
    let names: Vec<&str> = cancelled_items
        .iter()
        .map(|item| item.item_id.as_str())
        .collect();
    assert_eq!(names, vec!["e", "f", "g", "h"]);
}

async fn cancelling_a_batch_waiting_for_parts_cancels_the_items_never_sent(
    store: Arc<dyn BatchStore>,
) {
    created_chunks(
        store
            .append_part(&part("w", 10, 5, 1, &["a", "b"]))
            .await
            .unwrap(),
    );
    let CancelOutcome::Cancelled(batch) = store.cancel_batch(&id("w")).await.unwrap() else {
        panic!("not cancelled");
    };
    assert_eq!(batch.status, BatchStatus::Cancelled);
    assert_eq!(batch.cancelled_items, 10);
    assert_eq!(batch.pending_items(), 0);
    assert!(batch.completed_at.is_some());
    assert!(store.cancel_batch(&id("missing")).await.unwrap() == CancelOutcome::NotFound);
}

async fn items_page_in_order_and_filter_by_status(store: Arc<dyn BatchStore>) {
    let ids: Vec<String> = (0..23).map(|i| format!("i{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let chunks = created_chunks(
        store
            .append_part(&part("l", 23, 5, 1, &refs))
            .await
            .unwrap(),
    );
    for &chunk in &chunks {
        process(&*store, "l", chunk).await;
        store
            .record_chunk(&id("l"), chunk, Unfinished::Failed(None))
            .await
            .unwrap();
    }
    let mut listed = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .list_items(&ItemQuery {
                batch_id: id("l"),
                status: None,
                page_size: 4,
                page_token: token,
            })
            .await
            .unwrap();
        assert!(page.entries.len() <= 4);
        listed.extend(
            page.entries
                .into_iter()
                .map(|item| (item.item_id.into_string(), item.chunk)),
        );
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let expected: Vec<(String, u64)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i as u64 / 5))
        .collect();
    assert_eq!(listed, expected);

    let failed = store
        .list_items(&ItemQuery {
            batch_id: id("l"),
            status: Some(ItemStatus::Failed),
            page_size: 100,
            page_token: None,
        })
        .await
        .unwrap();
    let failed: Vec<&str> = failed
        .entries
        .iter()
        .map(|item| item.item_id.as_str())
        .collect();
    assert_eq!(
        failed,
        vec!["i01", "i03", "i06", "i08", "i11", "i13", "i16", "i18", "i21"]
    );

    let bad = store
        .list_items(&ItemQuery {
            batch_id: id("l"),
            status: None,
            page_size: 4,
            page_token: Some("zz".into()),
        })
        .await;
    assert!(matches!(bad, Err(ListError::BadPageToken(_))));
    let missing = store
        .list_items(&ItemQuery {
            batch_id: id("nope"),
            status: None,
            page_size: 4,
            page_token: None,
        })
        .await;
    assert!(matches!(missing, Err(ListError::NotFound)));
}

async fn batches_list_newest_first_by_status_in_pages(store: Arc<dyn BatchStore>) {
    for name in ["n1", "n2", "n3", "n4"] {
        store
            .append_part(&part(name, 1, 1, 1, &["x"]))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    process(&*store, "n2", 0).await;
    store
        .record_chunk(&id("n2"), 0, Unfinished::Failed(None))
        .await
        .unwrap();
    let mut listed = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .list_batches(&BatchQuery {
                status: None,
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap();
        listed.extend(
            page.entries
                .into_iter()
                .map(|batch| batch.batch_id.to_string()),
        );
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, vec!["n4", "n3", "n2", "n1"]);
    let completed = store
        .list_batches(&BatchQuery {
            status: Some(BatchStatus::Completed),
            page_size: 10,
            page_token: None,
        })
        .await
        .unwrap();
    let completed: Vec<String> = completed
        .entries
        .into_iter()
        .map(|b| b.batch_id.to_string())
        .collect();
    assert_eq!(completed, vec!["n2"]);
}

async fn batches_that_have_not_ended_are_counted_by_status_for_the_metrics(
    store: Arc<dyn BatchStore>,
) {
    for name in ["m1", "m2", "m3", "m4"] {
        store
            .append_part(&part(name, 1, 1, 1, &["x"]))
            .await
            .unwrap();
    }
    process(&*store, "m2", 0).await;
    store.cancel_batch(&id("m3")).await.unwrap();
    store.pause_batch(&id("m4")).await.unwrap();
    let counts = store
        .count_batches_by_status()
        .await
        .unwrap()
        .expect("both stores count");
    let count = |status: BatchStatus| {
        counts
            .iter()
            .find(|(counted, _)| *counted == status)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(BatchStatus::Pending), Some(1), "{counts:?}");
    assert_eq!(count(BatchStatus::Running), Some(1), "{counts:?}");
    assert_eq!(count(BatchStatus::Paused), Some(1), "{counts:?}");
    // SQLite counts ended batches too (an index range); DynamoDB leaves them out.
    assert!(
        matches!(count(BatchStatus::Cancelled), Some(1) | None),
        "{counts:?}"
    );
    assert!(
        matches!(count(BatchStatus::Completed), Some(0) | None),
        "{counts:?}"
    );
}

async fn unknown_batches_and_chunks_are_reported_as_such(store: Arc<dyn BatchStore>) {
    assert!(store.get_batch(&id("ghost")).await.unwrap().is_none());
    assert_eq!(
        store.claim_chunk(&id("ghost"), 0).await.unwrap(),
        ChunkClaim::NotFound
    );
    assert_eq!(
        store
            .record_chunk(&id("ghost"), 0, Unfinished::Failed(None))
            .await
            .unwrap(),
        RecordOutcome::NotFound
    );
    store
        .append_part(&part("real", 1, 1, 1, &["x"]))
        .await
        .unwrap();
    assert_eq!(
        store.claim_chunk(&id("real"), 7).await.unwrap(),
        ChunkClaim::NotFound
    );
    assert!(store.load_chunk(&id("real"), 7).await.unwrap().is_none());
    let loaded = store.load_chunk(&id("real"), 0).await.unwrap().unwrap();
    assert_eq!(loaded.items.len(), 1);
}

/// Succeeded + failed + cancelled, which must never exceed the total (pending is what is left).
fn settled_items(batch: &batch_manager::domain::Batch) -> u64 {
    batch.succeeded_items + batch.failed_items + batch.cancelled_items
}

async fn concurrent_cancels_count_the_items_never_received_once(store: Arc<dyn BatchStore>) {
    // 60 items expected, 24 received at batch size 1: chunks 0-3 are running, and claims of
    // chunks 4-7 race with ten cancels.
    let ids: Vec<String> = (0..24).map(|i| format!("k{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    created_chunks(
        store
            .append_part(&part("k", 60, 1, 1, &refs))
            .await
            .unwrap(),
    );
    for chunk in 0..4 {
        process(&*store, "k", chunk).await;
    }
    let cancels: Vec<_> = (0..10)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.cancel_batch(&id("k")).await.unwrap() })
        })
        .collect();
    let claims: Vec<_> = (4..8)
        .map(|chunk| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (chunk, store.claim_chunk(&id("k"), chunk).await.unwrap()) })
        })
        .collect();
    for cancel in cancels {
        let CancelOutcome::Cancelled(batch) = cancel.await.unwrap() else {
            panic!("not cancelled");
        };
        assert!(settled_items(&batch) <= batch.total_items, "{batch:?}");
    }
    let mut running: Vec<u64> = (0..4).collect();
    for claim in claims {
        if let (chunk, ChunkClaim::Active(_)) = claim.await.unwrap() {
            running.push(chunk);
        }
    }
    let in_flight = running.len() as u64;
    let batch = store.get_batch(&id("k")).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Running);
    assert_eq!(batch.cancelled_items, 60 - in_flight, "{batch:?}");
    assert_eq!(batch.completed_chunks, 24 - in_flight);

    // Back to back, after the race: nothing more to count.
    for _ in 0..2 {
        let CancelOutcome::Cancelled(again) = store.cancel_batch(&id("k")).await.unwrap() else {
            panic!("not cancelled");
        };
        assert_eq!(again.cancelled_items, 60 - in_flight);
    }
    for &chunk in &running {
        if chunk >= 4 {
            process(&*store, "k", chunk).await;
        }
        store
            .record_chunk(&id("k"), chunk, Unfinished::Failed(None))
            .await
            .unwrap();
    }
    let done = store.get_batch(&id("k")).await.unwrap().unwrap();
    assert_eq!(done.status, BatchStatus::Cancelled);
    assert_eq!(done.succeeded_items, in_flight);
    assert_eq!(done.cancelled_items, 60 - in_flight);
    assert_eq!(settled_items(&done), done.total_items);
    assert_eq!(done.completed_chunks, done.total_chunks);
}

/// Claims a chunk if it is still to run; when it is, its items get outcomes (odd positions
/// fail) and it is recorded.
async fn run_if_active(store: &dyn BatchStore, batch: &str, chunk: u64) {
    let ChunkClaim::Active(claimed) = store.claim_chunk(&id(batch), chunk).await.unwrap() else {
        return;
    };
    save_by_position(
        store,
        batch,
        chunk,
        claimed.items.len(),
        |position| match position % 2 {
            0 => ItemOutcome::Succeeded,
            _ => ItemOutcome::Failed("odd".into()),
        },
    )
    .await;
    store
        .record_chunk(&id(batch), chunk, Unfinished::Failed(None))
        .await
        .unwrap();
}

async fn identical_parts_sent_concurrently_amid_claims_records_and_a_cancel_count_each_item_once(
    store: Arc<dyn BatchStore>,
) {
    // Five clients send the same part at once; each runs every chunk it is answered with, and
    // the first to be answered cancels the batch before running its chunks.
    let ids: Vec<String> = (0..30).map(|i| format!("x{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sent = part("x", 30, 3, 1, &refs);
    let (answered, first_answer) = tokio::sync::mpsc::channel::<()>(5);
    let senders: Vec<_> = (0..5)
        .map(|_| {
            let (store, sent, answered) = (Arc::clone(&store), sent.clone(), answered.clone());
            tokio::spawn(async move {
                let chunks = match store.append_part(&sent).await.unwrap() {
                    AppendOutcome::Created { chunks, .. } => chunks,
                    AppendOutcome::AlreadyStored {
                        unstarted_chunks, ..
                    } => unstarted_chunks,
                    other => panic!("the part was answered {other:?}"),
                };
                answered.send(()).await.unwrap();
                for chunk in chunks {
                    run_if_active(&*store, "x", chunk).await;
                }
            })
        })
        .collect();
    let canceller = tokio::spawn({
        let store = Arc::clone(&store);
        let mut first_answer = first_answer;
        async move {
            first_answer.recv().await.expect("a sender is answered");
            store.cancel_batch(&id("x")).await.unwrap()
        }
    });
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(matches!(
        canceller.await.unwrap(),
        CancelOutcome::Cancelled(_) | CancelOutcome::AlreadyTerminal(_)
    ));
    // Chunks claimed by a sender answered before the cancel may still be running elsewhere;
    // finish whatever is left, as replayed executions would.
    for chunk in 0..10 {
        run_if_active(&*store, "x", chunk).await;
    }

    let batch = store.get_batch(&id("x")).await.unwrap().unwrap();
    assert!(batch.status.is_terminal(), "{batch:?}");
    assert_eq!(settled_items(&batch), 30, "{batch:?}");
    assert_eq!((batch.total_chunks, batch.completed_chunks), (10, 10));
    let listed = list_all(&*store, "x", None, 100).await;
    let count = |status| listed.iter().filter(|(_, s)| *s == status).count() as u64;
    assert_eq!(listed.len(), 30);
    assert_eq!(
        (
            count(ItemStatus::Succeeded),
            count(ItemStatus::Failed),
            count(ItemStatus::Cancelled)
        ),
        (
            batch.succeeded_items,
            batch.failed_items,
            batch.cancelled_items
        ),
        "the counters say what the items show"
    );
    let mut listed_ids: Vec<String> = listed.into_iter().map(|(item, _)| item).collect();
    listed_ids.sort();
    assert_eq!(listed_ids, ids, "every item stored once");
}

/// Every item of a batch through `ListBatchItems` pages of `page_size`, following the tokens.
async fn list_all(
    store: &dyn BatchStore,
    batch: &str,
    status: Option<ItemStatus>,
    page_size: u32,
) -> Vec<(String, ItemStatus)> {
    let mut listed = Vec::new();
    let mut token = None;
    for _ in 0..10_000 {
        let page = store
            .list_items(&ItemQuery {
                batch_id: id(batch),
                status,
                page_size,
                page_token: token,
            })
            .await
            .unwrap();
        listed.extend(
            page.entries
                .into_iter()
                .map(|item| (item.item_id.into_string(), item.status)),
        );
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => return listed,
        }
    }
    panic!("listing {batch} never ended");
}

async fn the_unfiltered_listing_of_a_cancelled_batch_shows_every_received_item(
    store: Arc<dyn BatchStore>,
) {
    let ids: Vec<String> = (0..12).map(|i| format!("u{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    created_chunks(
        store
            .append_part(&part("u", 30, 1, 1, &refs))
            .await
            .unwrap(),
    );
    process(&*store, "u", 0).await;
    store
        .record_chunk(&id("u"), 0, Unfinished::Failed(None))
        .await
        .unwrap();
    process(&*store, "u", 1).await;
    store.cancel_batch(&id("u")).await.unwrap();
    store
        .record_chunk(&id("u"), 1, Unfinished::Failed(None))
        .await
        .unwrap();
    let batch = store.get_batch(&id("u")).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Cancelled);
    assert_eq!((batch.succeeded_items, batch.cancelled_items), (2, 28));

    for page_size in [1, 5, 100] {
        let listed = list_all(&*store, "u", None, page_size).await;
        let expected: Vec<(String, ItemStatus)> = ids
            .iter()
            .enumerate()
            .map(|(position, item)| {
                let status = if position < 2 {
                    ItemStatus::Succeeded
                } else {
                    ItemStatus::Cancelled
                };
                (item.clone(), status)
            })
            .collect();
        assert_eq!(listed, expected, "page size {page_size}");
    }
    // The 18 items never received are counted as cancelled but have no ID to list.
    let cancelled = list_all(&*store, "u", Some(ItemStatus::Cancelled), 100).await;
    assert_eq!(cancelled.len() as u64, batch.cancelled_items - 18);
}

async fn a_page_token_past_the_largest_chunk_number_is_a_bad_token(store: Arc<dyn BatchStore>) {
    created_chunks(
        store
            .append_part(&part("t", 3, 1, 1, &["a", "b", "c"]))
            .await
            .unwrap(),
    );
    for chunk in [
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
    ] {
        let token = hex::encode(format!("items:t:{chunk}:0"));
        let listed = store
            .list_items(&ItemQuery {
                batch_id: id("t"),
                status: None,
                page_size: 10,
                page_token: Some(token),
            })
            .await;
        assert!(
            matches!(listed, Err(ListError::BadPageToken(_))),
            "chunk {chunk}: {listed:?}"
        );
    }
    let last = hex::encode("items:t:9223372036854775807:0");
    let page = store
        .list_items(&ItemQuery {
            batch_id: id("t"),
            status: None,
            page_size: 10,
            page_token: Some(last),
        })
        .await
        .unwrap();
    assert!(page.entries.is_empty());
    assert_eq!(page.next_page_token, None);
}

async fn a_part_repeating_an_id_of_an_earlier_part_is_a_conflict_naming_both(
    store: Arc<dyn BatchStore>,
) {
    let first: Vec<String> = (0..3000).map(|i| format!("first-{i}")).collect();
    let second: Vec<String> = (0..3000).map(|i| format!("second-{i}")).collect();
    let first_refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let second_refs: Vec<&str> = second.iter().map(String::as_str).collect();
    created_chunks(
        store
            .append_part(&part("d", 9000, 100, 1, &first_refs))
            .await
            .unwrap(),
    );
    created_chunks(
        store
            .append_part(&part("d", 9000, 100, 2, &second_refs))
            .await
            .unwrap(),
    );
    let before = store.get_batch(&id("d")).await.unwrap().unwrap();

    // Part 3 repeats one ID of part 1, near its end, among fresh IDs.
    let mut third: Vec<String> = (0..3000).map(|i| format!("third-{i}")).collect();
    third[2500] = "first-2999".to_owned();
    let third_refs: Vec<&str> = third.iter().map(String::as_str).collect();
    match store
        .append_part(&part("d", 9000, 100, 3, &third_refs))
        .await
        .unwrap()
    {
        AppendOutcome::Conflict(reason) => {
            assert!(reason.contains("\"first-2999\""), "{reason}");
            assert!(reason.contains("index 2500 in part 3"), "{reason}");
            assert!(reason.contains("already in part 1"), "{reason}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let after = store.get_batch(&id("d")).await.unwrap().unwrap();
    assert_eq!(after, before, "a refused part writes nothing");

    // The same part number with fresh IDs is stored, and completes the batch.
    third[2500] = "third-2500".to_owned();
    let third_refs: Vec<&str> = third.iter().map(String::as_str).collect();
    created_chunks(
        store
            .append_part(&part("d", 9000, 100, 3, &third_refs))
            .await
            .unwrap(),
    );
    let full = store.get_batch(&id("d")).await.unwrap().unwrap();
    assert_eq!(full.received_items, 9000);
    let listed = list_all(&*store, "d", None, 10_000).await;
    let mut unique: Vec<&str> = listed.iter().map(|(item, _)| item.as_str()).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 9000, "every ID listed once");
}

async fn a_part_with_another_batch_size_is_a_conflict_naming_batch_size(
    store: Arc<dyn BatchStore>,
) {
    created_chunks(
        store
            .append_part(&part("z", 4, 2, 1, &["a", "b"]))
            .await
            .unwrap(),
    );
    for (number, ids) in [(1, ["a", "b"]), (2, ["c", "d"])] {
        match store
            .append_part(&part("z", 4, 3, number, &ids))
            .await
            .unwrap()
        {
            AppendOutcome::Conflict(reason) => {
                assert!(reason.contains("batch_size 2, not 3"), "{reason}")
            }
            other => panic!("part {number}: expected a conflict, got {other:?}"),
        }
    }
    let batch = store.get_batch(&id("z")).await.unwrap().unwrap();
    assert_eq!(
        (batch.batch_size, batch.received_items, batch.total_chunks),
        (2, 2, 1)
    );
}

async fn a_filtered_listing_examines_a_bounded_number_of_chunks_per_call(
    store: Arc<dyn BatchStore>,
) {
    let chunks = SKIPPED_CHUNKS_PER_PAGE + 76;
    let ids: Vec<String> = (0..chunks).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    created_chunks(
        store
            .append_part(&part("s", chunks, 1, 1, &refs))
            .await
            .unwrap(),
    );
    let last = chunks - 1;
    store.claim_chunk(&id("s"), last).await.unwrap();
    store
        .save_outcomes(
            &id("s"),
            last,
            &[(0, ItemOutcome::Failed("late".into()))],
            1,
        )
        .await
        .unwrap();
    store
        .record_chunk(&id("s"), last, Unfinished::Failed(None))
        .await
        .unwrap();

    // Nothing failed among the chunks the first call may examine: an empty page, not the end.
    let first = store
        .list_items(&ItemQuery {
            batch_id: id("s"),
            status: Some(ItemStatus::Failed),
            page_size: 10,
            page_token: None,
        })
        .await
        .unwrap();
    assert!(first.entries.is_empty(), "{first:?}");
    assert!(first.next_page_token.is_some());
    assert_eq!(
        list_all(&*store, "s", Some(ItemStatus::Failed), 10).await,
        vec![(format!("s{last}"), ItemStatus::Failed)]
    );
    assert_eq!(
        list_all(&*store, "s", Some(ItemStatus::Pending), 10_000)
            .await
            .len() as u64,
        chunks - 1
    );
    let everything = list_all(&*store, "s", None, 300).await;
    let listed: Vec<&str> = everything.iter().map(|(item, _)| item.as_str()).collect();
    assert_eq!(listed, refs);
}

/// Claims chunk `chunk` of `batch` and fails each of its items with the message `message`
/// gives its position, then records it.
async fn fail_chunk_with(
    store: &dyn BatchStore,
    batch: &str,
    chunk: u64,
    message: impl Fn(usize) -> String,
) -> RecordOutcome {
    let ChunkClaim::Active(claimed) = store.claim_chunk(&id(batch), chunk).await.unwrap() else {
        panic!("chunk {chunk} not claimable");
    };
    save_by_position(store, batch, chunk, claimed.items.len(), |position| {
        ItemOutcome::Failed(message(position))
    })
    .await;
    store
        .record_chunk(&id(batch), chunk, Unfinished::Failed(None))
        .await
        .unwrap()
}

fn error_counts(batch: &Batch) -> Vec<(String, u64)> {
    batch
        .progress
        .top_errors
        .iter()
        .map(|error| (error.message.clone(), error.count))
        .collect()
}

async fn failure_messages_are_counted_once_per_item_when_a_record_is_replayed(
    store: Arc<dyn BatchStore>,
) {
    let long = "x".repeat(300);
    let ids: Vec<String> = (0..6).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    store.append_part(&part("e", 6, 3, 1, &ids)).await.unwrap();
    let untouched = store.get_batch(&id("e")).await.unwrap().unwrap();
    assert!(untouched.progress.top_errors.is_empty());
    // Chunk 0: one item fails by its task, the two left pending fail with the record's error.
    store.claim_chunk(&id("e"), 0).await.unwrap();
    store
        .save_outcomes(&id("e"), 0, &[(1, ItemOutcome::Failed(long.clone()))], 1)
        .await
        .unwrap();
    for _ in 0..2 {
        store
            .record_chunk(&id("e"), 0, Unfinished::Failed(Some("service down")))
            .await
            .unwrap();
    }
    // Chunk 1 by task 2's outcomes saved with the count, replayed.
    store.claim_chunk(&id("e"), 1).await.unwrap();
    let outcomes = vec![
        (0, ItemOutcome::Failed("service down".into())),
        (1, ItemOutcome::Succeeded),
        (2, ItemOutcome::Failed("service down".into())),
    ];
    for _ in 0..2 {
        store
            .save_outcomes_and_record(&id("e"), 1, &outcomes, 1, Unfinished::Failed(None))
            .await
            .unwrap();
    }
    let batch = store.get_batch(&id("e")).await.unwrap().unwrap();
    assert_eq!(batch.failed_items, 5);
    assert_eq!(
        error_counts(&batch),
        vec![("service down".to_owned(), 4), ("x".repeat(200), 1)],
        "each failed item once, messages cut to 200 characters"
    );
}

async fn failure_messages_past_the_distinct_cap_are_counted_as_other_errors(
    store: Arc<dyn BatchStore>,
) {
    let ids: Vec<String> = (0..40).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    store
        .append_part(&part("cap", 40, 20, 1, &ids))
        .await
        .unwrap();
    // Twenty distinct messages fill the batch's room; the next chunk repeats ten of them and
    // brings ten new ones, which have no room left.
    fail_chunk_with(&*store, "cap", 0, |position| format!("m{position:02}")).await;
    let outcome = fail_chunk_with(&*store, "cap", 1, |position| {
        if position < 10 {
            format!("m{position:02}")
        } else {
            format!("new{position:02}")
        }
    })
    .await;
    assert!(matches!(outcome, RecordOutcome::Recorded(_, _)));
    let batch = store.get_batch(&id("cap")).await.unwrap().unwrap();
    assert_eq!(batch.failed_items, 40);
    let mut expected = vec![(OTHER_ERRORS.to_owned(), 10)];
    expected.extend((0..9).map(|i| (format!("m{i:02}"), 2)));
    assert_eq!(error_counts(&batch), expected);
}

async fn a_running_batch_has_a_rate_and_an_eta_and_no_eta_once_it_ends(store: Arc<dyn BatchStore>) {
    store
        .append_part(&part("r", 6, 2, 1, &["a", "b", "c", "d", "e", "f"]))
        .await
        .unwrap();
    let waiting = store.get_batch(&id("r")).await.unwrap().unwrap();
    assert_eq!(waiting.progress.items_per_second, 0.0);
    assert_eq!(waiting.progress.eta_seconds, None, "no rate yet");
    process(&*store, "r", 0).await;
    store
        .record_chunk(&id("r"), 0, Unfinished::Failed(None))
        .await
        .unwrap();
    let running = store.get_batch(&id("r")).await.unwrap().unwrap();
    assert_eq!(running.status, BatchStatus::Running);
    assert!(running.progress.items_per_second > 0.0, "{running:?}");
    assert!(running.progress.eta_seconds.is_some(), "{running:?}");
    for chunk in [1, 2] {
        process(&*store, "r", chunk).await;
        store
            .record_chunk(&id("r"), chunk, Unfinished::Failed(None))
            .await
            .unwrap();
    }
    let ended = store.get_batch(&id("r")).await.unwrap().unwrap();
    assert!(ended.status.is_terminal());
    assert_eq!(ended.progress.eta_seconds, None);
}

both_backends!(
    a_part_is_stored_once_and_the_same_part_again_changes_nothing,
    parts_fill_a_batch_up_to_its_total_and_no_further,
    replayed_and_out_of_order_updates_give_exact_counters_and_one_terminal_transition,
    recording_with_a_failure_fails_the_items_still_pending,
    task_2_outcomes_saved_with_the_count_are_counted_once_and_kept_when_replayed,
    cancelling_skips_unstarted_chunks_and_ends_when_running_ones_are_recorded,
    a_started_chunk_whose_job_a_cancel_stopped_counts_its_unfinished_items_cancelled_once,
    cancelling_a_batch_waiting_for_parts_cancels_the_items_never_sent,
    items_page_in_order_and_filter_by_status,
    batches_list_newest_first_by_status_in_pages,
    batches_that_have_not_ended_are_counted_by_status_for_the_metrics,
    unknown_batches_and_chunks_are_reported_as_such,
    concurrent_cancels_count_the_items_never_received_once,
    identical_parts_sent_concurrently_amid_claims_records_and_a_cancel_count_each_item_once,
    the_unfiltered_listing_of_a_cancelled_batch_shows_every_received_item,
    a_page_token_past_the_largest_chunk_number_is_a_bad_token,
    a_part_repeating_an_id_of_an_earlier_part_is_a_conflict_naming_both,
    a_part_with_another_batch_size_is_a_conflict_naming_batch_size,
    a_filtered_listing_examines_a_bounded_number_of_chunks_per_call,
    failure_messages_are_counted_once_per_item_when_a_record_is_replayed,
    failure_messages_past_the_distinct_cap_are_counted_as_other_errors,
    a_running_batch_has_a_rate_and_an_eta_and_no_eta_once_it_ends,
);

/// A DynamoDB store on fresh tables, with a raw client on them and the request table's name.
async fn dynamo_store_and_client() -> (Arc<dyn BatchStore>, aws_sdk_dynamodb::Client, String) {
    let endpoint = moto::moto_endpoint().await;
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config(&endpoint).await);
    let (batch_table, request_table) = moto::table_names("resume");
    moto::create_tables(&client, &batch_table, &request_table).await;
    let store = DynamoStore::new(
        client.clone(),
        DynamoTables {
            batch_table,
            request_table: request_table.clone(),
        },
    );
    (Arc::new(store), client, request_table)
}

/// The key of a request-table item.
fn request_key(batch: &str, sk: String) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("batchId".to_owned(), AttributeValue::S(batch.into())),
        ("sk".to_owned(), AttributeValue::S(sk)),
    ])
}

/// Earlier versions of the store wrote each chunk's state with its part's IDs, PENDING at
/// version 0; those chunks still move once: claimed, recorded, cancelled.
#[tokio::test]
async fn dynamodb_chunk_states_written_with_their_part_by_earlier_versions_still_move_once() {
    let (store, client, request_table) = dynamo_store_and_client().await;
    created_chunks(
        store
            .append_part(&part("legacy", 6, 2, 1, &["a", "b", "c", "d", "e", "f"]))
            .await
            .unwrap(),
    );
    for chunk in 0..3 {
        let mut item = request_key("legacy", format!("chunk#{chunk:020}"));
        let number = |value: u64| AttributeValue::N(value.to_string());
        item.extend([
            ("stage".to_owned(), AttributeValue::S("PENDING".into())),
            ("states".to_owned(), AttributeValue::S("PP".into())),
            ("failedCount".to_owned(), number(0)),
            ("attempts".to_owned(), number(0)),
            ("itemCount".to_owned(), number(2)),
            ("version".to_owned(), number(0)),
        ]);
        client
            .put_item()
            .table_name(&request_table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    process(&*store, "legacy", 0).await;
    store
        .record_chunk(&id("legacy"), 0, Unfinished::Failed(None))
        .await
        .unwrap();
    assert!(matches!(
        store
            .record_chunk(&id("legacy"), 1, Unfinished::Failed(Some("task failed")))
            .await
            .unwrap(),
        RecordOutcome::Recorded(_, _)
    ));
    let CancelOutcome::Cancelled(cancelled) = store.cancel_batch(&id("legacy")).await.unwrap()
    else {
        panic!("not cancelled");
    };
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    for chunk in 0..3 {
        assert_eq!(
            store.claim_chunk(&id("legacy"), chunk).await.unwrap(),
            ChunkClaim::Inactive
        );
        assert!(matches!(
            store
                .record_chunk(&id("legacy"), chunk, Unfinished::Failed(None))
                .await
                .unwrap(),
            RecordOutcome::AlreadyRecorded(_)
        ));
    }
    let batch = store.get_batch(&id("legacy")).await.unwrap().unwrap();
    assert_eq!(
        (
            batch.succeeded_items,
            batch.failed_items,
            batch.cancelled_items
        ),
        (1, 3, 2)
    );
    assert_eq!((batch.completed_chunks, batch.total_chunks), (3, 3));
    let listed = list_all(&*store, "legacy", None, 100).await;
    let statuses: Vec<ItemStatus> = listed.into_iter().map(|(_, status)| status).collect();
    use ItemStatus::{Cancelled, Failed, Succeeded};
    assert_eq!(
        statuses,
        vec![Succeeded, Failed, Failed, Failed, Cancelled, Cancelled]
    );
}

#[tokio::test]
async fn dynamodb_resuming_an_interrupted_part_write_never_revives_a_cancelled_chunk() {
    let (store, client, request_table) = dynamo_store_and_client().await;
    created_chunks(
        store
            .append_part(&part("resumed", 20, 1, 1, &["a", "b", "c", "d"]))
            .await
            .unwrap(),
    );
    // As if the part's write had stopped before chunk 3 (whichever of its items exist go) and
    // before the part was marked written.
    let key = |sk: String| request_key("resumed", sk);
    client
        .update_item()
        .table_name(&request_table)
        .set_key(Some(key(format!("part#{:020}", 1))))
        .update_expression("SET chunksWritten = :no")
        .expression_attribute_values(":no", AttributeValue::Bool(false))
        .send()
        .await
        .unwrap();
    for sk in [format!("chunk#{:020}", 3), format!("chunk#{:020}#ids", 3)] {
        client
            .delete_item()
            .table_name(&request_table)
            .set_key(Some(key(sk)))
            .send()
            .await
            .unwrap();
    }
    let CancelOutcome::Cancelled(cancelled) = store.cancel_batch(&id("resumed")).await.unwrap()
    else {
        panic!("not cancelled");
    };
    assert_eq!(cancelled.cancelled_items, 16 + 3);
    assert_ne!(
        cancelled.status,
        BatchStatus::Cancelled,
        "chunk 3 is unaccounted for"
    );

    // The client sends the part again: chunk 3 is written, chunks 0-2 stay cancelled.
    assert_eq!(
        created_chunks(
            store
                .append_part(&part("resumed", 20, 1, 1, &["a", "b", "c", "d"]))
                .await
                .unwrap()
        ),
        vec![0, 1, 2, 3]
    );
    for chunk in 0..4 {
        assert_eq!(
            store.claim_chunk(&id("resumed"), chunk).await.unwrap(),
            ChunkClaim::Inactive
        );
    }
    let batch = store.get_batch(&id("resumed")).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Cancelled);
    assert_eq!(batch.cancelled_items, 20);
    assert_eq!(settled_items(&batch), batch.total_items);
    assert_eq!(batch.completed_chunks, batch.total_chunks);
}

/// Intake of 1,000,000 UUIDs in 20 parts of 50,000 on SQLite (every part checked for IDs
/// repeated from the earlier ones), and a failed-items listing that matches nothing, paged to
/// the end. Run: `cargo test --release --test store_behaviour figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn sqlite_intake_and_listing_figures() {
    let (store, _directory) = sqlite_store().await;
    let parts: Vec<NewPart> = (1..=20)
        .map(|number| {
            let ids = (0..50_000)
                .map(|_| uuid::Uuid::new_v4().to_string())
                .collect();
            NewPart::new(
                id("figures"),
                1_000_000,
                BatchSize::parse(100).unwrap(),
                number,
                parse_item_ids(ids).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    for part in &parts {
        created_chunks(store.append_part(part).await.unwrap());
    }
    let intake = started.elapsed().as_secs_f64();
    println!(
        "intake: 1,000,000 items in 20 parts of 50,000 in {intake:.3} s ({:.0} items/s)",
        1e6 / intake
    );
    let started = std::time::Instant::now();
    let mut calls = 0;
    let mut token = None;
    loop {
        calls += 1;
        let page = store
            .list_items(&ItemQuery {
                batch_id: id("figures"),
                status: Some(ItemStatus::Failed),
                page_size: 100,
                page_token: token,
            })
            .await
            .unwrap();
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let listing = started.elapsed().as_secs_f64();
    println!(
        "failed-items listing over 10,000 chunks matching nothing: {calls} calls, {listing:.3} s \
         ({:.2} ms per call)",
        listing * 1000.0 / f64::from(calls)
    );
}

/// A DynamoDB store on fresh tables, with a raw client on them and their names.
async fn dynamo_store_with_tables() -> (Arc<dyn BatchStore>, aws_sdk_dynamodb::Client, DynamoTables)
{
    let endpoint = moto::moto_endpoint().await;
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config(&endpoint).await);
    let (batch_table, request_table) = moto::table_names("progress");
    moto::create_tables(&client, &batch_table, &request_table).await;
    let tables = DynamoTables {
        batch_table,
        request_table,
    };
    let store = DynamoStore::new(client.clone(), tables.clone());
    (Arc::new(store), client, tables)
}

fn number_of(item: &HashMap<String, AttributeValue>, name: &str) -> f64 {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().unwrap(),
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn dynamodb_a_chunk_counted_once_the_window_is_a_minute_old_starts_the_next_window() {
    let (store, client, tables) = dynamo_store_with_tables().await;
    store
        .append_part(&part("w", 4, 2, 1, &["a", "b", "c", "d"]))
        .await
        .unwrap();
    let batch_key = HashMap::from([("batchId".to_owned(), AttributeValue::S("w".into()))]);
    // The window began two minutes ago, when the batch had no terminal item.
    let two_minutes_ago = batch_manager::domain::Timestamp::now().0 - 120_000_000;
    client
        .update_item()
        .table_name(&tables.batch_table)
        .set_key(Some(batch_key.clone()))
        .update_expression("SET windowStartedAt = :start")
        .expression_attribute_values(":start", AttributeValue::N(two_minutes_ago.to_string()))
        .send()
        .await
        .unwrap();
    process(&*store, "w", 0).await;
    store
        .record_chunk(&id("w"), 0, Unfinished::Failed(None))
        .await
        .unwrap();
    let item = client
        .get_item()
        .table_name(&tables.batch_table)
        .set_key(Some(batch_key))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(number_of(&item, "windowStartedAt") > two_minutes_ago as f64 + 60e6);
    assert_eq!(number_of(&item, "windowTerminal"), 2.0);
    let previous = number_of(&item, "previousRate");
    assert!(previous > 0.0 && previous <= 2.0 / 120.0, "{previous}");
    let batch = store.get_batch(&id("w")).await.unwrap().unwrap();
    assert_eq!(
        batch.progress.items_per_second, previous,
        "the new window is young: the previous one's rate is read"
    );
}

#[tokio::test]
async fn dynamodb_concurrent_records_bringing_new_messages_keep_at_most_twenty() {
    let (store, client, tables) = dynamo_store_with_tables().await;
    let ids: Vec<String> = (0..120).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    store
        .append_part(&part("many", 120, 4, 1, &ids))
        .await
        .unwrap();
    // Thirty chunks at once, each failing its four items with four messages of its own.
    let recorded = futures::future::join_all((0..30).map(|chunk| {
        let store = Arc::clone(&store);
        async move {
            fail_chunk_with(&*store, "many", chunk, |position| {
                format!("chunk {chunk} item {position}")
            })
            .await
        }
    }))
    .await;
    assert!(recorded
        .iter()
        .all(|outcome| matches!(outcome, RecordOutcome::Recorded(_, _))));
    let item = client
        .get_item()
        .table_name(&tables.request_table)
        .set_key(Some(request_key("many", "errorCounts".to_owned())))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let kept: Vec<f64> = item
        .iter()
        .filter(|(name, _)| name.starts_with("e#"))
        .map(|(name, _)| number_of(&item, name))
        .collect();
    assert_eq!(kept.len(), 20);
    let texts = client
        .query()
        .table_name(&tables.request_table)
        .key_condition_expression("batchId = :batch AND begins_with(sk, :prefix)")
        .expression_attribute_values(":batch", AttributeValue::S("many".into()))
        .expression_attribute_values(":prefix", AttributeValue::S("errorMessage#".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .count;
    assert!(texts >= 20, "the text of every kept message");
    assert_eq!(number_of(&item, "distinctErrors"), 20.0);
    let counted = kept.iter().sum::<f64>() + number_of(&item, "otherErrors");
    assert_eq!(counted, 120.0, "every failed item once");
    let batch = store.get_batch(&id("many")).await.unwrap().unwrap();
    assert_eq!(batch.progress.top_errors[0].message, OTHER_ERRORS);
    assert_eq!(batch.progress.top_errors[0].count, 100);
}

#[tokio::test]
async fn sqlite_a_chunk_counted_once_the_window_is_a_minute_old_starts_the_next_window() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .append_part(&part("w", 4, 2, 1, &["a", "b", "c", "d"]))
        .await
        .unwrap();
    let two_minutes_ago = batch_manager::domain::Timestamp::now().0 - 120_000_000;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE batches SET window_started_at = ?1 WHERE batch_id = 'w'",
        [two_minutes_ago],
    )
    .unwrap();
    process(&store, "w", 0).await;
    store
        .record_chunk(&id("w"), 0, Unfinished::Failed(None))
        .await
        .unwrap();
    let (started, terminal, previous): (i64, i64, f64) = conn
        .query_row(
            "SELECT window_started_at, window_terminal, previous_rate FROM batches WHERE batch_id = 'w'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert!(started > two_minutes_ago + 60_000_000);
    assert_eq!(terminal, 2);
    assert!(previous > 0.0 && previous <= 2.0 / 120.0, "{previous}");
    let batch = store.get_batch(&id("w")).await.unwrap().unwrap();
    assert_eq!(batch.progress.items_per_second, previous);
}
