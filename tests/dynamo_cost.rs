//! DynamoDB cost of the happy path, measured from the requests the store sends: write units
//! (DynamoDB's rule: 1 per started KiB of each item written, doubled inside transactions) and
//! requests per 1,000 items, for a batch of 10,000 UUIDs at batch size 100 run through the real
//! steps with the default tasks, each chunk started through the batch's slots as the request
//! table's stream starts them (the part made startable, then a claim and its confirmation per
//! recorded chunk, the most the stream handler makes). The target is at most 0.15 write units
//! per item; the system this replaces spent at least 2 (a row per item, written twice).

mod common;

use std::sync::Arc;

use batch_manager::domain::{parse_item_ids, BatchId, BatchSize, BatchStatus, NewPart};
use batch_manager::pipeline::steps::{TaskEvent, UpdateEvent};
use batch_manager::pipeline::{Steps, Tasks};
use batch_manager::store::dynamo::{StoreMetrics, STALE_CLAIM};
use batch_manager::store::{AppendOutcome, BatchStore};
use common::moto;

const ITEMS: usize = 10_000;
const BATCH_SIZE: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_spends_at_most_0_15_write_units_per_item_slots_included() {
    let store = moto::dynamo_store("cost").await;
    let shared: Arc<dyn BatchStore> = Arc::new(store.clone());

    let ids: Vec<String> = (0..ITEMS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let part = NewPart::new(
        BatchId::parse("costed").unwrap(),
        ITEMS as u64,
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
    let batch = shared
        .get_batch(&BatchId::parse("costed").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, ITEMS as u64);

    assert_eq!(batch.completed_chunks, chunks.len() as u64);

    let total = store.metrics();
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
