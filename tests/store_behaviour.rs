//! One suite of store behaviours, run against both backends: SQLite, and DynamoDB on moto's
//! server with tables created as the stack template defines them.

mod common;

use std::sync::Arc;

use batch_manager::domain::{
    parse_item_ids, BatchId, BatchSize, BatchStatus, ItemOutcome, ItemStatus, NewPart,
};
use batch_manager::store::sqlite::SqliteStore;
use batch_manager::store::{
    AppendOutcome, BatchQuery, BatchStore, CancelOutcome, ChunkClaim, ItemQuery, ListError,
    RecordOutcome,
};
use common::moto;

async fn sqlite_store() -> (Arc<dyn BatchStore>, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(directory.path().join("store.db")).unwrap();
    (Arc::new(store), directory)
}

async fn dynamo_store() -> (Arc<dyn BatchStore>, ()) {
    (Arc::new(moto::dynamo_store("behaviour").await), ())
}

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
    let outcomes: Vec<(usize, ItemOutcome)> = (0..claimed.items.len())
        .map(|position| {
            let outcome = if position % 2 == 1 {
                ItemOutcome::Failed(format!("odd position {position}"))
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
            tokio::spawn(async move { store.record_chunk(&id("r"), chunk, None).await.unwrap() })
        })
        .collect::<Vec<_>>();
    let mut recorded = 0;
    let mut terminal_snapshots = 0;
    for delivery in deliveries {
        match delivery.await.unwrap() {
            RecordOutcome::Recorded(batch) => {
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
        store.record_chunk(&id("r"), 3, None).await.unwrap(),
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

async fn recording_with_a_failure_fails_the_items_still_pending(store: Arc<dyn BatchStore>) {
    created_chunks(
        store
            .append_part(&part("f", 3, 3, 1, &["a", "b", "c"]))
            .await
            .unwrap(),
    );
    store.claim_chunk(&id("f"), 0).await.unwrap();
    store
        .save_outcomes(
            &id("f"),
            0,
            &[(1, ItemOutcome::Failed("not a UUID".into()))],
            4,
        )
        .await
        .unwrap();
    let RecordOutcome::Recorded(batch) = store
        .record_chunk(&id("f"), 0, Some("service down"))
        .await
        .unwrap()
    else {
        panic!("not recorded");
    };
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(batch.failed_items, 3);
    let items = store
        .list_items(&ItemQuery {
            batch_id: id("f"),
            status: None,
            page_size: 10,
            page_token: None,
        })
        .await
        .unwrap()
        .entries;
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
    store.record_chunk(&id("c"), 0, None).await.unwrap();
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

    let RecordOutcome::Recorded(done) = store.record_chunk(&id("c"), 1, None).await.unwrap() else {
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
        store.record_chunk(&id("l"), chunk, None).await.unwrap();
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
    store.record_chunk(&id("n2"), 0, None).await.unwrap();
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

async fn unknown_batches_and_chunks_are_reported_as_such(store: Arc<dyn BatchStore>) {
    assert!(store.get_batch(&id("ghost")).await.unwrap().is_none());
    assert_eq!(
        store.claim_chunk(&id("ghost"), 0).await.unwrap(),
        ChunkClaim::NotFound
    );
    assert_eq!(
        store.record_chunk(&id("ghost"), 0, None).await.unwrap(),
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

macro_rules! both_backends {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let (store, _directory) = super::sqlite_store().await;
                    super::$behaviour(store).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let (store, _guard) = super::dynamo_store().await;
                    super::$behaviour(store).await;
                }
            )*
        }
    };
}

both_backends!(
    a_part_is_stored_once_and_the_same_part_again_changes_nothing,
    parts_fill_a_batch_up_to_its_total_and_no_further,
    replayed_and_out_of_order_updates_give_exact_counters_and_one_terminal_transition,
    recording_with_a_failure_fails_the_items_still_pending,
    cancelling_skips_unstarted_chunks_and_ends_when_running_ones_are_recorded,
    cancelling_a_batch_waiting_for_parts_cancels_the_items_never_sent,
    items_page_in_order_and_filter_by_status,
    batches_list_newest_first_by_status_in_pages,
    unknown_batches_and_chunks_are_reported_as_such,
);
