//! DynamoDB cost of the happy path, measured from the requests the store sends: write units
//! (DynamoDB's rule: 1 per started KiB of each item written, doubled inside transactions) and
//! requests per 1,000 items, for a batch of 10,000 UUIDs at batch size 100 run through the real
//! steps with the default tasks, each chunk started through the batch's slots as the request
//! table's stream starts them (the part made startable, then a claim and its confirmation per
//! recorded chunk, the most the stream handler makes). The target is at most 0.15 write units
//! per item; the system this replaces spent at least 2 (a row per item, written twice). The
//! same batch with every item failing is reported too.

mod common;

use std::sync::Arc;

use batch_manager::domain::{parse_item_ids, BatchId, BatchSize, BatchStatus, NewPart};
use batch_manager::pipeline::steps::{TaskEvent, UpdateEvent};
use batch_manager::pipeline::tasks::NOT_A_UUID;
use batch_manager::pipeline::{Steps, Tasks};
use batch_manager::store::dynamo::{StoreMetrics, STALE_CLAIM};
use batch_manager::store::{AppendOutcome, BatchStore};
use common::moto;

const ITEMS: usize = 10_000;
const BATCH_SIZE: u64 = 100;

/// What running one batch through the steps cost.
struct Run {
    after_intake: StoreMetrics,
    starts: Metered,
    total: StoreMetrics,
    batch: batch_manager::domain::Batch,
    chunks: usize,
}

/// Stores `ids` as one batch and runs every chunk through the steps with the default tasks,
/// starting them through the batch's slots.
async fn run_batch(prefix: &str, ids: Vec<String>) -> Run {
    let store = moto::dynamo_store(prefix).await;
    let shared: Arc<dyn BatchStore> = Arc::new(store.clone());
    let items = ids.len() as u64;
    let part = NewPart::new(
        BatchId::parse("costed").unwrap(),
        items,
        BatchSize::parse(BATCH_SIZE).unwrap(),
        1,
        parse_item_ids(ids).unwrap(),
    )
    .unwrap();
    let AppendOutcome::Created { chunks, .. } = shared.append_part(&part).await.unwrap() else {
        panic!("part not created");
    };
    let after_intake = store.metrics();

    let batch_id = BatchId::parse("costed").unwrap();
    let mut starts = Metered::default();
    let mut startable = std::collections::VecDeque::new();
    let before = store.metrics();
    store
        .mark_startable(&batch_id, chunks[0], chunks[chunks.len() - 1] + 1)
        .await
        .unwrap();
    starts.add(before, store.metrics());

    let steps = Steps::new(Arc::clone(&shared), Tasks::default());
    loop {
        let before = store.metrics();
        if let Some(claim) = store
            .claim_starts(&batch_id, DEFAULT_LIMIT, 500, STALE_CLAIM)
            .await
            .unwrap()
        {
            startable.extend(store.claimed_chunks(&batch_id, &claim).await.unwrap());
            store.confirm_starts(&batch_id, &claim).await.unwrap();
        }
        starts.add(before, store.metrics());
        let Some(chunk) = startable.pop_front() else {
            break;
        };
        let event = TaskEvent {
            batch_id: "costed".into(),
            chunk,
            attempt: 0,
            job: None,
        };
        steps.task1(event.clone()).await.unwrap();
        steps.task2(event).await.unwrap();
        steps
            .update(UpdateEvent {
                batch_id: "costed".into(),
                chunk,
                failure: None,
            })
            .await
            .unwrap();
    }
    let batch = shared.get_batch(&batch_id).await.unwrap().unwrap();
    Run {
        after_intake,
        starts,
        total: store.metrics(),
        batch,
        chunks: chunks.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_spends_at_most_0_15_write_units_per_item_slots_included() {
    let ids: Vec<String> = (0..ITEMS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let Run {
        after_intake,
        starts,
        total,
        batch,
        chunks,
    } = run_batch("cost", ids).await;
    assert_eq!(batch.status, BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, ITEMS as u64);
    assert_eq!(batch.completed_chunks, chunks as u64);

    let per_item = total.write_units as f64 / ITEMS as f64;
    let per_thousand = |requests: u64| requests as f64 * 1000.0 / ITEMS as f64;
    println!("DynamoDB happy path, {ITEMS} items at batch size {BATCH_SIZE}:");
    println!(
        "  intake: {} write units ({:.3} per item), {} write requests",
        after_intake.write_units,
        after_intake.write_units as f64 / ITEMS as f64,
        after_intake.write_requests
    );
    println!(
        "  starts: {} write units ({:.3} per item), {} write requests, {} read requests",
        starts.write_units,
        starts.write_units as f64 / ITEMS as f64,
        starts.write_requests,
        starts.read_requests
    );
    println!(
        "  total:  {} write units ({per_item:.3} per item); per 1,000 items: {:.0} write requests, {:.0} read requests",
        total.write_units,
        per_thousand(total.write_requests),
        per_thousand(total.read_requests)
    );
    assert!(per_item <= 0.15, "{per_item} write units per item");
}

/// Every item failing (none is a UUID): its chunks' state items are longer (they hold the
/// messages), and each chunk's record transaction adds to the batch's failure counts (one unit,
/// doubled in the transaction), the message's text written once. Reported, not bounded: the
/// figure is in the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_failing_is_counted_and_its_write_units_reported() {
    let ids: Vec<String> = (0..ITEMS).map(|index| format!("legacy-{index}")).collect();
    let Run { total, batch, .. } = run_batch("cost-failed", ids).await;
    println!(
        "DynamoDB, every item failing, {ITEMS} items at batch size {BATCH_SIZE}: {} write units \
         ({:.3} per item), {} write requests",
        total.write_units,
        total.write_units as f64 / ITEMS as f64,
        total.write_requests
    );
    assert_eq!(batch.failed_items, ITEMS as u64);
    let top: Vec<(&str, u64)> = batch
        .progress
        .top_errors
        .iter()
        .map(|error| (error.message.as_str(), error.count))
        .collect();
    assert_eq!(top, vec![(NOT_A_UUID, ITEMS as u64)]);
}

/// The batch's limit: below its 100 chunks, so that each recorded chunk frees a slot and makes
/// a claim of its own, the most the stream handler writes (it claims once per batch of
/// records, for as many slots as they freed).
const DEFAULT_LIMIT: u32 = 10;

/// What one share of the work sent.
#[derive(Default)]
struct Metered {
    write_units: u64,
    write_requests: u64,
    read_requests: u64,
}

impl Metered {
    fn add(&mut self, before: StoreMetrics, after: StoreMetrics) {
        self.write_units += after.write_units - before.write_units;
        self.write_requests += after.write_requests - before.write_requests;
        self.read_requests += after.read_requests - before.read_requests;
    }
}
