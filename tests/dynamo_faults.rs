//! Faults between the store and DynamoDB lose nothing and count nothing twice. An HTTP proxy on
//! loopback sits between the real SDK client and moto's server. In one plan it withholds half
//! of the items of the first `BatchWriteItem` requests (answering with them as
//! `UnprocessedItems`, as DynamoDB does under load) and answers a share of all requests with
//! throttling errors; in the other it holds `BatchWriteItem` requests until released, so a
//! part's write can land after everything a retry of it led to.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use batch_manager::domain::{
    parse_item_ids, BatchId, BatchSize, BatchStatus, ItemOutcome, ItemStatus, NewPart,
};
use batch_manager::pipeline::steps::{TaskEvent, UpdateEvent};
use batch_manager::pipeline::{Steps, Tasks};
use batch_manager::store::dynamo::{DynamoStore, DynamoTables};
use batch_manager::store::{
    AppendOutcome, BatchStore, CancelOutcome, ChunkClaim, ItemQuery, RecordOutcome, Unfinished,
};
use common::moto;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

/// BatchWriteItem requests that get half their items withheld.
const SHORTED_BATCH_WRITES: u64 = 8;
/// Every Nth request is throttled, up to a bound so the test ends promptly.
const THROTTLE_EVERY: u64 = 5;
const MAX_THROTTLES: u64 = 40;

#[derive(Default)]
struct Faults {
    requests: AtomicU64,
    batch_writes: AtomicU64,
    withheld_items: AtomicU64,
    throttled: AtomicU64,
}

/// Holds `BatchWriteItem` requests until released, as a slow network or a paused process would.
struct Hold {
    /// One permit per request held.
    held: Semaphore,
    released: watch::Sender<bool>,
}

impl Hold {
    fn new() -> Self {
        Self {
            held: Semaphore::new(0),
            released: watch::Sender::new(false),
        }
    }

    /// Waits until a request is held; bounded, so a store that never writes fails the test.
    async fn until_one_is_held(&self) {
        tokio::time::timeout(Duration::from_secs(60), self.held.acquire())
            .await
            .expect("a BatchWriteItem request reaches the proxy")
            .expect("semaphore open")
            .forget();
    }

    fn release(&self) {
        self.released.send_replace(true);
    }
}

/// What the proxy does to the requests passing through it.
#[derive(Clone)]
enum Plan {
    /// Throttles a share of all requests and withholds half of the items of the first
    /// `BatchWriteItem` requests.
    Faults(Arc<Faults>),
    /// Holds every `BatchWriteItem` request until released.
    HoldBatchWrites(Arc<Hold>),
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    plan: Plan,
}

fn throttling(kind: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.0")],
        json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": "Rate of requests exceeds the allowed throughput."}).to_string(),
    )
        .into_response()
}

fn target(headers: &HeaderMap) -> &str {
    headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// The request body with the items withheld from it (by table), or the kind of throttling
/// error to answer with instead.
fn inject_faults(
    faults: &Faults,
    target: &str,
    body: Bytes,
) -> Result<(Vec<u8>, serde_json::Map<String, Value>), &'static str> {
    let number = faults.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if number % THROTTLE_EVERY == 0 && faults.throttled.load(Ordering::SeqCst) < MAX_THROTTLES {
        let count = faults.throttled.fetch_add(1, Ordering::SeqCst);
        let kind = if count % 2 == 0 {
            "ThrottlingException"
        } else {
            "ProvisionedThroughputExceededException"
        };
        return Err(kind);
    }
    let mut withheld = serde_json::Map::new();
    if !target.ends_with(".BatchWriteItem")
        || faults.batch_writes.fetch_add(1, Ordering::SeqCst) >= SHORTED_BATCH_WRITES
    {
        return Ok((body.to_vec(), withheld));
    }
    let mut request: Value = serde_json::from_slice(&body).expect("JSON request");
    if let Some(tables) = request["RequestItems"].as_object_mut() {
        for (table, writes) in tables.iter_mut() {
            let writes = writes.as_array_mut().expect("writes");
            if writes.len() > 1 {
                let kept = writes.len() / 2;
                let rest = writes.split_off(kept);
                faults
                    .withheld_items
                    .fetch_add(rest.len() as u64, Ordering::SeqCst);
                withheld.insert(table.clone(), Value::Array(rest));
            }
        }
    }
    Ok((serde_json::to_vec(&request).expect("JSON"), withheld))
}

async fn forward(State(proxy): State<Proxy>, headers: HeaderMap, body: Bytes) -> Response {
    let target = target(&headers).to_owned();
    let (body, withheld) = match &proxy.plan {
        Plan::Faults(faults) => match inject_faults(faults, &target, body) {
            Ok(forwarded) => forwarded,
            Err(kind) => return throttling(kind),
        },
        Plan::HoldBatchWrites(hold) => {
            if target.ends_with(".BatchWriteItem") {
                let mut released = hold.released.subscribe();
                hold.held.add_permits(1);
                released.wait_for(|released| *released).await.expect("hold");
            }
            (body.to_vec(), serde_json::Map::new())
        }
    };
    let mut upstream = proxy.http.post(&proxy.upstream).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.expect("moto answers");
    let status = StatusCode::from_u16(answer.status().as_u16()).expect("status");
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/x-amz-json-1.0")
        .to_owned();
    let mut payload = answer.bytes().await.expect("body").to_vec();
    if !withheld.is_empty() && status.is_success() {
        let mut response: Value = serde_json::from_slice(&payload).expect("JSON response");
        response["UnprocessedItems"] = Value::Object(withheld);
        payload = serde_json::to_vec(&response).expect("JSON");
    }
    (status, [("content-type", content_type)], payload).into_response()
}

/// A proxy on loopback in front of `upstream`, doing what `plan` says; its endpoint.
async fn start_proxy(upstream: String, plan: Plan) -> String {
    let proxy = Proxy {
        upstream,
        http: reqwest::Client::new(),
        plan,
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_unprocessed_items_are_retried_and_nothing_is_lost() {
    let faults = Arc::new(Faults::default());
    let plan = Plan::Faults(Arc::clone(&faults));
    let proxy = start_proxy(moto::moto_endpoint().await, plan).await;
    let config = aws_sdk_dynamodb::config::Builder::from(&moto::sdk_config(&proxy).await)
        .retry_config(
            RetryConfig::standard()
                .with_initial_backoff(std::time::Duration::from_millis(10))
                .with_max_backoff(std::time::Duration::from_millis(200)),
        )
        .build();
    let store = moto::dynamo_store_with("faults", config).await;
    let shared: Arc<dyn BatchStore> = Arc::new(store.clone());

    let ids: Vec<String> = (0..600).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let part = NewPart::new(
        BatchId::parse("throttled").unwrap(),
        600,
        BatchSize::parse(10).unwrap(),
        1,
        parse_item_ids(ids.clone()).unwrap(),
    )
    .unwrap();
    let AppendOutcome::Created { chunks, .. } = shared.append_part(&part).await.unwrap() else {
        panic!("part not created");
    };
    assert_eq!(chunks.len(), 60);

    let steps = Steps::new(Arc::clone(&shared), Tasks::default());
    for chunk in chunks {
        let event = TaskEvent {
            batch_id: "throttled".into(),
            chunk,
            attempt: 0,
            job: None,
        };
        assert!(steps.task1(event.clone()).await.unwrap().active);
        steps.task2(event).await.unwrap();
        steps
            .update(UpdateEvent {
                batch_id: "throttled".into(),
                chunk,
                failure: None,
            })
            .await
            .unwrap();
    }

    let batch = shared
        .get_batch(&BatchId::parse("throttled").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, 600);
    assert_eq!(batch.completed_chunks, 60);
    let listed = shared
        .list_items(&ItemQuery {
            batch_id: BatchId::parse("throttled").unwrap(),
            status: None,
            page_size: 1000,
            page_token: None,
        })
        .await
        .unwrap()
        .entries;
    let listed: Vec<String> = listed
        .into_iter()
        .map(|item| item.item_id.into_string())
        .collect();
    assert_eq!(listed, ids, "every item stored, in order, once");

    assert!(
        faults.withheld_items.load(Ordering::SeqCst) > 0,
        "unprocessed items were injected"
    );
    assert!(
        faults.throttled.load(Ordering::SeqCst) > 0,
        "throttling was injected"
    );
}

/// Two stores on the same fresh tables, as two processes would be: one whose requests pass
/// through the proxy at `proxy`, one talking to moto directly.
async fn stores_on_shared_tables(proxy: &str) -> (DynamoStore, DynamoStore) {
    let direct =
        aws_sdk_dynamodb::Client::new(&moto::sdk_config(&moto::moto_endpoint().await).await);
    let (batch_table, request_table) = moto::table_names("raced");
    moto::create_tables(&direct, &batch_table, &request_table).await;
    let tables = DynamoTables {
        batch_table,
        request_table,
    };
    let proxied = aws_sdk_dynamodb::Client::new(&moto::sdk_config(proxy).await);
    (
        DynamoStore::new(proxied, tables.clone()),
        DynamoStore::new(direct, tables),
    )
}

/// Claims a chunk, every item succeeds, and records it.
async fn run_chunk(store: &DynamoStore, batch_id: &BatchId, chunk: u64) {
    let ChunkClaim::Active(claimed) = store.claim_chunk(batch_id, chunk).await.unwrap() else {
        panic!("chunk {chunk} not claimable");
    };
    let outcomes: Vec<(usize, ItemOutcome)> = (0..claimed.items.len())
        .map(|position| (position, ItemOutcome::Succeeded))
        .collect();
    store
        .save_outcomes(batch_id, chunk, &outcomes, 1)
        .await
        .unwrap();
    assert!(matches!(
        store
            .record_chunk(batch_id, chunk, Unfinished::Failed(None))
            .await
            .unwrap(),
        RecordOutcome::Recorded(_, _)
    ));
}

/// A client sends a part and the store's write of its chunks stalls; the client's retry, through
/// another process, finds the part reserved, writes its chunks and is answered; two chunks run
/// to the end, one starts, the batch is cancelled and the started chunk finishes. Then the
/// stalled write lands and its caller starts and records every chunk it was answered with: no
/// chunk comes back to life and no counter moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_part_write_landing_after_its_retry_was_processed_and_cancelled_counts_nothing_twice(
) {
    let hold = Arc::new(Hold::new());
    let plan = Plan::HoldBatchWrites(Arc::clone(&hold));
    let proxy = start_proxy(moto::moto_endpoint().await, plan).await;
    let (stalled, retrying) = stores_on_shared_tables(&proxy).await;
    let batch_id = BatchId::parse("raced").unwrap();
    let ids: Vec<String> = (0..12).map(|i| format!("item-{i:02}")).collect();
    let part = NewPart::new(
        batch_id.clone(),
        12,
        BatchSize::parse(2).unwrap(),
        1,
        parse_item_ids(ids.clone()).unwrap(),
    )
    .unwrap();

    let first_send = tokio::spawn({
        let (stalled, part) = (stalled.clone(), part.clone());
        async move { stalled.append_part(&part).await }
    });
    hold.until_one_is_held().await;

    let AppendOutcome::Created { chunks, .. } = retrying.append_part(&part).await.unwrap() else {
        panic!("the retry is not answered with the part's chunks");
    };
    assert_eq!(chunks, (0..6).collect::<Vec<u64>>());
    for chunk in 0..2 {
        run_chunk(&retrying, &batch_id, chunk).await;
    }
    assert!(matches!(
        retrying.claim_chunk(&batch_id, 2).await.unwrap(),
        ChunkClaim::Active(_)
    ));
    let succeeded = [(0, ItemOutcome::Succeeded), (1, ItemOutcome::Succeeded)];
    retrying
        .save_outcomes(&batch_id, 2, &succeeded, 1)
        .await
        .unwrap();
    let CancelOutcome::Cancelled(cancelled) = retrying.cancel_batch(&batch_id).await.unwrap()
    else {
        panic!("not cancelled");
    };
    assert_eq!(cancelled.cancelled_items, 6);
    let RecordOutcome::Recorded(ended, _) = retrying
        .record_chunk(&batch_id, 2, Unfinished::Failed(None))
        .await
        .unwrap()
    else {
        panic!("chunk 2 not recorded");
    };
    assert_eq!(ended.status, BatchStatus::Cancelled);

    hold.release();
    let answered = match first_send.await.unwrap().unwrap() {
        AppendOutcome::Created { chunks, .. } => chunks,
        AppendOutcome::AlreadyStored {
            unstarted_chunks, ..
        } => unstarted_chunks,
        other => panic!("the first send was answered {other:?}"),
    };
    for chunk in answered {
        assert_eq!(
            stalled.claim_chunk(&batch_id, chunk).await.unwrap(),
            ChunkClaim::Inactive,
            "chunk {chunk}"
        );
        assert!(matches!(
            stalled
                .record_chunk(&batch_id, chunk, Unfinished::Failed(None))
                .await
                .unwrap(),
            RecordOutcome::AlreadyRecorded(_)
        ));
    }

    let batch = retrying.get_batch(&batch_id).await.unwrap().unwrap();
    assert_eq!(batch, ended, "no counter moved after the batch ended");
    assert_eq!(
        (
            batch.succeeded_items,
            batch.failed_items,
            batch.cancelled_items
        ),
        (6, 0, 6)
    );
    assert_eq!(batch.completed_chunks, batch.total_chunks);
    let listed = retrying
        .list_items(&ItemQuery {
            batch_id: batch_id.clone(),
            status: None,
            page_size: 100,
            page_token: None,
        })
        .await
        .unwrap()
        .entries;
    let statuses: Vec<(String, ItemStatus)> = listed
        .into_iter()
        .map(|item| (item.item_id.into_string(), item.status))
        .collect();
    let expected: Vec<(String, ItemStatus)> = ids
        .into_iter()
        .enumerate()
        .map(|(position, id)| {
            let status = if position < 6 {
                ItemStatus::Succeeded
            } else {
                ItemStatus::Cancelled
            };
            (id, status)
        })
        .collect();
    assert_eq!(statuses, expected);
}
