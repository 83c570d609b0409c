//! Throttling and `UnprocessedItems` from DynamoDB lose nothing. A fault-injecting HTTP proxy
//! on loopback sits between the real SDK client and moto's server: it withholds half of the
//! items of the first `BatchWriteItem` requests (answering with them as `UnprocessedItems`, as
//! DynamoDB does under load) and answers a share of all requests with throttling errors.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use batch_manager::domain::{parse_item_ids, BatchId, BatchSize, BatchStatus, NewPart};
use batch_manager::pipeline::steps::{TaskEvent, UpdateEvent};
use batch_manager::pipeline::{Steps, Tasks};
use batch_manager::store::{AppendOutcome, BatchStore, ItemQuery};
use common::moto;
use serde_json::{json, Value};

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

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    faults: Arc<Faults>,
}

fn throttling(kind: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.0")],
        json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": "Rate of requests exceeds the allowed throughput."}).to_string(),
    )
        .into_response()
}

async fn forward(State(proxy): State<Proxy>, headers: HeaderMap, body: Bytes) -> Response {
    let faults = &proxy.faults;
    let number = faults.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if number % THROTTLE_EVERY == 0 && faults.throttled.load(Ordering::SeqCst) < MAX_THROTTLES {
        let count = faults.throttled.fetch_add(1, Ordering::SeqCst);
        let kind = if count % 2 == 0 {
            "ThrottlingException"
        } else {
            "ProvisionedThroughputExceededException"
        };
        return throttling(kind);
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = body.to_vec();
    let mut withheld = serde_json::Map::new();
    if target.ends_with(".BatchWriteItem")
        && faults.batch_writes.fetch_add(1, Ordering::SeqCst) < SHORTED_BATCH_WRITES
    {
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
        body = serde_json::to_vec(&request).expect("JSON");
    }
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

async fn start_proxy(upstream: String) -> (String, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let proxy = Proxy {
        upstream,
        http: reqwest::Client::new(),
        faults: Arc::clone(&faults),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), faults)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_unprocessed_items_are_retried_and_nothing_is_lost() {
    let (proxy, faults) = start_proxy(moto::moto_endpoint().await).await;
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
