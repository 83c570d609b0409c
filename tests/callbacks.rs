//! Completion callbacks end to end: bad callback URLs refused with nothing written, signed
//! POSTs to a receiver on loopback (one delivery ID per terminal transition), retries, giving
//! up, the callback's state in `GetBatchStatus`, and a delivery surviving a hard kill.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use batch_manager::app::{LocalApp, LocalConfig};
use batch_manager::callbacks::{
    CallbackSettings, RetrySchedule, SigningSecret, DELIVERY_HEADER, SIGNATURE_HEADER,
};
use batch_manager::engine::local::EngineConfig;
use batch_manager::grpc::pb;
use batch_manager::pipeline::{ChunkTask, TaskError, TaskInput, Tasks};
use common::process::{Launch, ServerProcess};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "test-signing-secret-0123456789";
/// Longest a test waits for deliveries.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

/// What a receiver does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// Never answers (until the sender goes away).
    Stall,
    /// Answers 200 once the test opens the receiver's gate.
    Gated,
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    delivery_id: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn signature_is_valid(&self) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&self.body);
        self.signature == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

struct ReceiverState {
    received: Vec<Received>,
    /// Answers for the next requests, in order; 200 once they run out.
    script: Vec<Answer>,
    gate: Arc<tokio::sync::Semaphore>,
}

/// A tiny HTTP server on loopback that records what it is sent.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

async fn hook(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (answer, gate) = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            delivery_id: header(DELIVERY_HEADER),
            signature: header(SIGNATURE_HEADER),
            content_type: header("content-type"),
            body: body.to_vec(),
        });
        let answer = if state.script.is_empty() {
            Answer::Status(200)
        } else {
            state.script.remove(0)
        };
        (answer, Arc::clone(&state.gate))
    };
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::Stall => std::future::pending().await,
        Answer::Gated => {
            let _open = gate.acquire().await.unwrap();
            StatusCode::OK
        }
    }
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            received: Vec::new(),
            script,
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    fn open_gate(&self) {
        self.state.lock().unwrap().gate.add_permits(1000);
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received_for(&self, batch_id: &str) -> Vec<Received> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.json()["batchId"] == batch_id)
            .cloned()
            .collect()
    }

    /// Waits until `count` requests for the batch arrived.
    async fn wait_for(&self, batch_id: &str, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        loop {
            let received = self.received_for(batch_id);
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{count} deliveries for {batch_id} never arrived: {received:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn fast_settings() -> CallbackSettings {
    CallbackSettings {
        secret: Some(SigningSecret::parse(SECRET).unwrap()),
        timeout: Duration::from_secs(5),
        retry: RetrySchedule {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_age: Duration::from_secs(3600),
        },
        poll: Duration::from_millis(50),
        completion_events: false,
        allow_private_networks: false,
        allowed_hosts: Default::default(),
    }
}

/// A server delivering callbacks, its client and its database's directory.
struct CallbackApp {
    app: LocalApp,
    client: batch_manager::grpc::pb::batch_manager_client::BatchManagerClient<
        tonic::transport::Channel,
    >,
    _directory: tempfile::TempDir,
}

impl CallbackApp {
    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.http_addr)
    }

    async fn status(&mut self, batch_id: &str) -> pb::Batch {
        fetch_status(&mut self.client, batch_id).await
    }

    async fn wait_terminal(&mut self, batch_id: &str) -> pb::Batch {
        wait_terminal(&mut self.client, batch_id).await
    }
}

async fn spawn_with_callbacks(tasks: Tasks, settings: CallbackSettings) -> CallbackApp {
    let directory = tempfile::tempdir().unwrap();
    let db = directory.path().join("test.db");
    let app = LocalApp::spawn_with(
        LocalConfig {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: ([127, 0, 0, 1], 0).into(),
            db,
            engine: EngineConfig::default(),
            connections: Default::default(),
            jobs: Default::default(),
            items_buckets: Default::default(),
            access: Default::default(),
        },
        tasks,
        settings,
    )
    .await
    .expect("server starts");
    let client = connect(app.grpc_addr).await;
    CallbackApp {
        app,
        client,
        _directory: directory,
    }
}

fn submit_with_callback(batch_id: &str, items: usize, url: &str) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        callback_url: url.to_owned(),
        ..submit_request(batch_id, uuids(items), 2)
    }
}

/// Waits until the batch's callback shows `status`.
async fn wait_callback(
    test: &mut CallbackApp,
    batch_id: &str,
    status: pb::CallbackStatus,
) -> pb::Batch {
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    loop {
        let batch = test.status(batch_id).await;
        if batch.callback_status() == status {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "callback of {batch_id} never {status:?}: {batch:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_callback_urls_are_refused_naming_the_rule_and_nothing_is_written() {
    let mut test = spawn_with_callbacks(Tasks::default(), fast_settings()).await;
    let too_long = format!("https://example.com/{}", "a".repeat(2048));
    let cases = [
        ("ftp://example.com/hook", "must start with https://"),
        ("http://example.com/hook", "only allowed to a loopback host"),
        ("https://user:pw@example.com/hook", "user information"),
        (too_long.as_str(), "at most 2048 bytes"),
    ];
    for (index, (url, rule)) in cases.iter().enumerate() {
        let batch_id = format!("bad-url-{index}");
        let status = test
            .client
            .submit_batch(submit_with_callback(&batch_id, 2, url))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{url}");
        assert!(status.message().starts_with("callback_url: "), "{status:?}");
        assert!(status.message().contains(rule), "{status:?}");
        let append = test
            .client
            .append_batch_items(pb::AppendBatchItemsRequest {
                batch_id: batch_id.clone(),
                total_items: 2,
                part_number: 1,
                item_ids: uuids(2),
                callback_url: (*url).to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(append.code(), tonic::Code::InvalidArgument);
        assert!(append.message().contains(rule), "{append:?}");

        let body = json!({"batchId": batch_id, "totalItems": 2, "batchSize": 2, "currentBatch": 1,
                          "itemIds": uuids(2), "callbackUrl": url});
        let (code, answer) =
            post_json_body(test.http_url("/stateMachineInit"), body.to_string()).await;
        assert_eq!(code, 400, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with("callbackUrl: "), "{message}");
        assert!(message.contains(rule), "{message}");

        let missing = test
            .client
            .get_batch_status(pb::GetBatchStatusRequest { batch_id })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn a_callback_host_off_the_allowed_list_is_refused_and_nothing_is_written() {
    let mut settings = fast_settings();
    settings.allowed_hosts =
        batch_manager::callbacks::AllowedHosts::parse("localhost,*.hooks.example").unwrap();
    let mut test = spawn_with_callbacks(Tasks::default(), settings).await;
    for (batch_id, url) in [
        ("off-list", "https://evil.example/hook"),
        ("apex", "https://hooks.example/hook"),
        ("lookalike", "https://a.hooks.example.evil.net/hook"),
    ] {
        let refused = test
            .client
            .submit_batch(submit_with_callback(batch_id, 2, url))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}");
        assert!(
            refused.message().starts_with("callback_url: host ")
                && refused.message().contains("--callback-allowed-hosts"),
            "{refused:?}"
        );
        let body = json!({"batchId": batch_id, "totalItems": 2, "batchSize": 2,
                          "currentBatch": 1, "itemIds": uuids(2), "callbackUrl": url});
        let (code, answer) =
            post_json_body(test.http_url("/stateMachineInit"), body.to_string()).await;
        assert_eq!(code, 400, "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .starts_with("callbackUrl: host "),
            "{answer}"
        );
        let missing = test
            .client
            .get_batch_status(pb::GetBatchStatusRequest {
                batch_id: batch_id.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "nothing written");
    }

    let receiver = Receiver::start(Vec::new()).await;
    let listed = format!("http://localhost:{}/hook", receiver.addr.port());
    test.client
        .submit_batch(submit_with_callback("listed", 2, &listed))
        .await
        .unwrap();
    test.client
        .submit_batch(submit_with_callback(
            "wildcard",
            2,
            "https://a.hooks.example/hook",
        ))
        .await
        .expect("a name under a listed domain is taken");
    wait_callback(&mut test, "listed", pb::CallbackStatus::Delivered).await;
}

#[tokio::test]
async fn without_a_secret_a_callback_url_is_refused_as_a_failed_precondition() {
    let settings = CallbackSettings {
        secret: None,
        ..fast_settings()
    };
    let mut test = spawn_with_callbacks(Tasks::default(), settings).await;
    let status = test
        .client
        .submit_batch(submit_with_callback(
            "no-secret",
            2,
            "https://example.com/hook",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("callbacks need a signing secret"),
        "{status:?}"
    );
    assert!(!status.message().contains(SECRET));
    let missing = test
        .client
        .get_batch_status(pb::GetBatchStatusRequest {
            batch_id: "no-secret".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_completed_batch_is_posted_once_signed_over_the_exact_body() {
    let receiver = Receiver::start(Vec::new()).await;
    let mut test = spawn_with_callbacks(Tasks::default(), fast_settings()).await;
    test.client
        .submit_batch(submit_with_callback("done", 6, &receiver.url()))
        .await
        .unwrap();
    let batch = test.wait_terminal("done").await;
    assert_eq!(batch.callback_url, receiver.url());
    let delivered = wait_callback(&mut test, "done", pb::CallbackStatus::Delivered).await;
    assert_eq!(delivered.callback_attempts, 1);
    assert_eq!(delivered.callback_last_error, "");

    let received = receiver.wait_for("done", 1).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let post = &received[0];
    assert!(post.signature_is_valid(), "{post:?}");
    assert_eq!(post.content_type, "application/json");
    assert_eq!(post.delivery_id.len(), 32);
    let body = post.json();
    assert_eq!(body["deliveryId"], post.delivery_id.as_str());
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(body["succeededItems"], 6);
    assert_eq!(body["totalChunks"], 3);
    assert_eq!(body["pendingItems"], 0);
    assert!(body["completedAt"].as_str().unwrap().ends_with('Z'));
}

/// Task 2 that holds every chunk until released.
#[derive(Clone)]
struct Gate(Arc<tokio::sync::Semaphore>);

#[async_trait::async_trait]
impl ChunkTask for Gate {
    async fn process(
        &self,
        input: TaskInput<'_>,
    ) -> Result<Vec<batch_manager::domain::ItemOutcome>, TaskError> {
        let _permit = self.0.acquire().await.unwrap();
        Ok(vec![
            batch_manager::domain::ItemOutcome::Succeeded;
            input.items.len()
        ])
    }
}

#[tokio::test]
async fn a_cancelled_batch_is_posted_once_when_its_running_chunk_ends() {
    let receiver = Receiver::start(Vec::new()).await;
    let gate = Gate(Arc::new(tokio::sync::Semaphore::new(0)));
    let tasks = Tasks {
        task2: Arc::new(gate.clone()),
        ..Tasks::default()
    };
    let mut test = spawn_with_callbacks(tasks, fast_settings()).await;
    test.client
        .submit_batch(pb::SubmitBatchRequest {
            max_concurrency: 1,
            ..submit_with_callback("cancelled", 6, &receiver.url())
        })
        .await
        .unwrap();
    let deadline = Instant::now() + BATCH_DEADLINE;
    while test.status("cancelled").await.status() != pb::BatchStatus::Running {
        assert!(Instant::now() < deadline, "the batch never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = test
        .client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "cancelled".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .batch
        .unwrap();
    assert_eq!(cancelled.callback_status(), pb::CallbackStatus::None);
    assert!(receiver.received_for("cancelled").is_empty());
    gate.0.add_permits(100);
    let batch = test.wait_terminal("cancelled").await;
    assert_eq!(batch.status(), pb::BatchStatus::Cancelled);
    wait_callback(&mut test, "cancelled", pb::CallbackStatus::Delivered).await;
    let received = receiver.wait_for("cancelled", 1).await;
    assert_eq!(received.len(), 1);
    assert!(received[0].signature_is_valid());
    assert_eq!(received[0].json()["status"], "CANCELLED");
    assert_eq!(received[0].json()["cancelledItems"], 4);
}

#[tokio::test]
async fn a_receiver_answering_503_is_retried_with_the_same_delivery_id_until_it_takes_it() {
    let mut script = vec![Answer::Status(503); 3];
    script.push(Answer::Gated);
    let receiver = Receiver::start(script).await;
    let mut test = spawn_with_callbacks(Tasks::default(), fast_settings()).await;
    test.client
        .submit_batch(submit_with_callback("retried", 2, &receiver.url()))
        .await
        .unwrap();
    // The fourth attempt is held open: until it is answered the callback is pending.
    receiver.wait_for("retried", 4).await;
    let pending = test.status("retried").await;
    assert_eq!(pending.callback_status(), pb::CallbackStatus::Pending);
    assert_eq!(pending.callback_attempts, 4);
    assert_eq!(pending.callback_last_error, "HTTP 503");
    receiver.open_gate();

    let delivered = wait_callback(&mut test, "retried", pb::CallbackStatus::Delivered).await;
    assert_eq!(delivered.callback_attempts, 4);
    assert_eq!(delivered.callback_last_error, "HTTP 503");
    let received = receiver.received_for("retried");
    assert_eq!(received.len(), 4);
    assert!(received.iter().all(Received::signature_is_valid));
    assert!(received
        .iter()
        .all(|r| r.delivery_id == received[0].delivery_id && r.body == received[0].body));
}

#[tokio::test]
async fn a_delivery_that_never_succeeds_fails_once_its_window_closes() {
    let receiver = Receiver::start(vec![Answer::Status(500); 1000]).await;
    let mut settings = fast_settings();
    settings.retry.max_age = Duration::from_millis(300);
    let mut test = spawn_with_callbacks(Tasks::default(), settings).await;
    test.client
        .submit_batch(submit_with_callback("given-up", 2, &receiver.url()))
        .await
        .unwrap();
    let failed = wait_callback(&mut test, "given-up", pb::CallbackStatus::Failed).await;
    assert!(failed.callback_attempts >= 1);
    assert_eq!(failed.callback_last_error, "HTTP 500");
    let attempts = receiver.received_for("given-up").len();
    assert_eq!(attempts as u32, failed.callback_attempts);
}

#[tokio::test]
async fn a_refused_connection_is_reported_in_a_few_words() {
    // A port nothing listens on: bind one, note it, close it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut settings = fast_settings();
    settings.retry.max_age = Duration::from_millis(1);
    let mut test = spawn_with_callbacks(Tasks::default(), settings).await;
    test.client
        .submit_batch(submit_with_callback(
            "refused",
            2,
            &format!("http://{closed}/hook"),
        ))
        .await
        .unwrap();
    let failed = wait_callback(&mut test, "refused", pb::CallbackStatus::Failed).await;
    assert_eq!(failed.callback_last_error, "connection refused");
}

#[tokio::test]
async fn a_callback_to_a_private_or_metadata_address_is_never_sent() {
    let mut settings = fast_settings();
    settings.retry.max_age = Duration::from_millis(1);
    let mut test = spawn_with_callbacks(Tasks::default(), settings).await;
    for (batch_id, url) in [
        ("to-metadata", "https://169.254.169.254/latest/meta-data/"),
        ("to-private", "https://10.1.2.3:8443/hook"),
        ("to-mapped", "https://[::ffff:192.168.0.10]/hook"),
    ] {
        test.client
            .submit_batch(submit_with_callback(batch_id, 2, url))
            .await
            .unwrap();
        let failed = wait_callback(&mut test, batch_id, pb::CallbackStatus::Failed).await;
        assert_eq!(
            failed.callback_last_error,
            "refused: the host is a private, link-local or reserved address",
            "{batch_id}"
        );
    }

    // A host name goes through the checked resolver: `localhost` resolves to loopback, which
    // is allowed.
    let receiver = Receiver::start(Vec::new()).await;
    let by_name = format!("http://localhost:{}/hook", receiver.addr.port());
    test.client
        .submit_batch(submit_with_callback("by-name", 2, &by_name))
        .await
        .unwrap();
    wait_callback(&mut test, "by-name", pb::CallbackStatus::Delivered).await;
    assert_eq!(receiver.wait_for("by-name", 1).await.len(), 1);
}

#[tokio::test]
async fn the_seed_post_takes_a_callback_url() {
    let receiver = Receiver::start(Vec::new()).await;
    let mut test = spawn_with_callbacks(Tasks::default(), fast_settings()).await;
    let body = json!({"batchId": "seed-hook", "totalItems": 2, "batchSize": 2, "currentBatch": 1,
                      "itemIds": uuids(2), "callbackUrl": receiver.url()});
    let (code, answer) = post_json_body(test.http_url("/stateMachineInit"), body.to_string()).await;
    assert_eq!(code, 200, "{answer}");
    wait_callback(&mut test, "seed-hook", pb::CallbackStatus::Delivered).await;
    assert_eq!(receiver.wait_for("seed-hook", 1).await.len(), 1);
}

#[tokio::test]
async fn a_delivery_cut_by_a_hard_kill_arrives_again_with_the_same_id_after_restart() {
    let receiver = Receiver::start(vec![Answer::Stall]).await;
    let directory = tempfile::tempdir().unwrap();
    let db = directory.path().join("crash.db");
    let secret_file = directory.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let secret_path = secret_file.to_str().unwrap().to_owned();
    let args = [
        "--callback-secret-file",
        secret_path.as_str(),
        "--callback-timeout",
        "2s",
        "--callback-retry-first",
        "100ms",
        "--callback-poll",
        "100ms",
    ];
    let server = ServerProcess::start_with(
        &db,
        Launch {
            args: &args,
            ..Launch::default()
        },
    );
    let mut client = connect(server.grpc_addr).await;
    client
        .submit_batch(submit_with_callback("crash", 4, &receiver.url()))
        .await
        .unwrap();
    let stalled = receiver.wait_for("crash", 1).await;
    let first_id = stalled[0].delivery_id.clone();
    assert!(stalled[0].signature_is_valid());
    let log = server.log().join("\n");
    assert!(!log.contains(SECRET), "the secret was logged");
    server.kill_hard();

    let server = ServerProcess::start_with(
        &db,
        Launch {
            args: &args,
            ..Launch::default()
        },
    );
    let mut client = connect(server.grpc_addr).await;
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let delivered = loop {
        let batch = fetch_status(&mut client, "crash").await;
        if batch.callback_status() == pb::CallbackStatus::Delivered {
            break batch;
        }
        assert!(Instant::now() < deadline, "never delivered: {batch:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivered.callback_attempts, 2);
    let received = receiver.received_for("crash");
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received.iter().all(|r| r.delivery_id == first_id));
    assert!(received.iter().all(Received::signature_is_valid));
    assert_eq!(received[0].body, received[1].body);
    server.kill_hard();
}

#[tokio::test]
async fn a_replayed_update_writes_no_second_outbox_record() {
    use batch_manager::domain::{BatchId, BatchSize, CallbackUrl, ItemId, NewPart, Timestamp};
    use batch_manager::store::sqlite::SqliteStore;
    use batch_manager::store::{BatchStore, CancelOutcome, OutboxStore, RecordOutcome, Unfinished};

    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(directory.path().join("replay.db")).unwrap();
    let batch_id = BatchId::parse("replayed").unwrap();
    let items = vec![ItemId::parse("a").unwrap(), ItemId::parse("b").unwrap()];
    let part = NewPart::new(batch_id.clone(), 2, BatchSize::parse(2).unwrap(), 1, items)
        .unwrap()
        .with_callback_url(Some(
            CallbackUrl::parse("https://example.com/hook").unwrap(),
        ));
    store.append_part(&part).await.unwrap();
    store.claim_chunk(&batch_id, 0).await.unwrap();
    let far = Timestamp(i64::MAX);
    assert!(store.due_deliveries(far, 10).await.unwrap().is_empty());

    let RecordOutcome::Recorded(batch, _) = store
        .record_chunk(&batch_id, 0, Unfinished::Failed(None))
        .await
        .unwrap()
    else {
        panic!("the chunk was not recorded");
    };
    assert_eq!(
        batch.callback.status,
        batch_manager::domain::CallbackStatus::Pending
    );
    let due = store.due_deliveries(far, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].key.completed_at, batch.completed_at.unwrap());
    assert_eq!(due[0].batch.failed_items, 2);

    let replayed = store
        .record_chunk(&batch_id, 0, Unfinished::Failed(None))
        .await
        .unwrap();
    assert!(matches!(replayed, RecordOutcome::AlreadyRecorded(_)));
    let cancelled = store.cancel_batch(&batch_id).await.unwrap();
    assert!(matches!(cancelled, CancelOutcome::AlreadyTerminal(_)));
    assert_eq!(store.due_deliveries(far, 10).await.unwrap(), due);
}

/// An SQS queue in moto, over SQS's JSON protocol (no SQS client is compiled in).
struct MotoQueue {
    endpoint: String,
    url: String,
    arn: String,
}

impl MotoQueue {
    async fn call(endpoint: &str, action: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(endpoint)
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await
            .expect("SQS request");
        assert!(response.status().is_success(), "SQS {action}: {response:?}");
        response.json().await.expect("SQS JSON answer")
    }

    async fn create(endpoint: &str, name: &str) -> Self {
        let created = Self::call(endpoint, "CreateQueue", json!({"QueueName": name})).await;
        let url = created["QueueUrl"].as_str().expect("QueueUrl").to_owned();
        let attributes = Self::call(
            endpoint,
            "GetQueueAttributes",
            json!({"QueueUrl": url, "AttributeNames": ["QueueArn"]}),
        )
        .await;
        let arn = attributes["Attributes"]["QueueArn"]
            .as_str()
            .expect("QueueArn")
            .to_owned();
        Self {
            endpoint: endpoint.to_owned(),
            url,
            arn,
        }
    }

    /// Every message waiting, received once.
    async fn drain(&self) -> Vec<Value> {
        let mut messages = Vec::new();
        loop {
            let page = Self::call(
                &self.endpoint,
                "ReceiveMessage",
                json!({"QueueUrl": self.url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 3600}),
            )
            .await;
            let received = page["Messages"].as_array().cloned().unwrap_or_default();
            if received.is_empty() {
                return messages;
            }
            for message in received {
                messages.push(
                    serde_json::from_str(message["Body"].as_str().expect("Body"))
                        .expect("an event"),
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_the_terminal_transition_is_posted_and_put_as_an_event_once() {
    use batch_manager::domain::{BatchId, CallbackStatus};
    use batch_manager::store::BatchStore;
    use common::lambda::{fixture, http_reply, run_to_end, ChunkFunctions, MotoStack};

    let receiver = Receiver::start(Vec::new()).await;
    let stack = MotoStack::deploy("callbacks").await;
    let queue = MotoQueue::create(&stack.endpoint, "batch-finished-events").await;
    let events = aws_sdk_eventbridge::Client::new(&stack.sdk_config);
    events
        .put_rule()
        .name("batch-finished-aws-hook")
        .event_pattern(
            json!({"source": ["batch-manager"], "detail-type": ["Batch Finished"],
                   "detail": {"batchId": ["aws-hook"]}})
            .to_string(),
        )
        .send()
        .await
        .expect("PutRule");
    events
        .put_targets()
        .rule("batch-finished-aws-hook")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&queue.arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("PutTargets");

    let on = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        extra
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    };
    let init_env = on(&[("CALLBACK_SECRET", SECRET), ("COMPLETION_EVENTS", "true")]);
    let chunk_env = on(&[("COMPLETION_EVENTS", "true")]);
    let (init, functions) = tokio::join!(
        stack.function_with("init", &init_env),
        ChunkFunctions::start_with(&stack, &chunk_env)
    );
    let mut event = fixture("apigw-v2-seed.json");
    event["body"] = Value::String(
        json!({"batchId": "aws-hook", "totalItems": 4, "batchSize": 2, "currentBatch": 1,
               "itemIds": uuids(4), "callbackUrl": receiver.url()})
        .to_string(),
    );
    event["isBase64Encoded"] = json!(false);
    let (status, reply) = http_reply(init.invoke(event).await);
    assert_eq!(status, 200, "{reply}");

    let batch_id = BatchId::parse("aws-hook").unwrap();
    let ended = run_to_end(
        &stack,
        &init,
        Arc::new(functions),
        &batch_id,
        BATCH_DEADLINE,
        |_| {},
    )
    .await;
    assert_eq!(ended.status, batch_manager::domain::BatchStatus::Completed);

    let store = stack.store();
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let delivered = loop {
        stack.deliver_stream(&init).await;
        let batch = store.get_batch(&batch_id).await.unwrap().unwrap();
        if batch.callback.status == CallbackStatus::Delivered {
            break batch;
        }
        assert!(
            Instant::now() < deadline,
            "never delivered: {batch:?}\n{}",
            init.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivered.callback.attempts, 1);
    let received = receiver.wait_for("aws-hook", 1).await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(received[0].signature_is_valid());
    assert_eq!(received[0].json()["status"], "COMPLETED");
    assert!(!init.logs().contains(SECRET), "the secret was logged");

    // The outbox record's insert, delivered again (as a retried stream batch would), and a
    // sweep of the schedule: neither sends anything more.
    let key = batch_manager::store::DeliveryKey {
        batch_id: batch_id.clone(),
        completed_at: delivered.completed_at.unwrap(),
    };
    let sk = format!("outbox#{:020}", key.completed_at.0);
    let replayed = json!({"Records": [{
        "eventID": "1", "eventName": "INSERT", "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {"SequenceNumber": "1", "StreamViewType": "NEW_IMAGE",
                     "Keys": {"batchId": {"S": "aws-hook"}, "sk": {"S": sk}},
                     "NewImage": {"attempts": {"N": "0"}}}}]});
    let answer = init
        .invoke(replayed)
        .await
        .expect("init handles the replay");
    assert_eq!(answer["batchItemFailures"], json!([]));
    let sweep = init
        .invoke(json!({"source": "aws.events", "detail-type": "Scheduled Event"}))
        .await
        .expect("init sweeps");
    assert_eq!(sweep["callbacksDue"], 0, "{sweep}");
    assert_eq!(receiver.received_for("aws-hook").len(), 1);

    let messages = queue.drain().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let event = &messages[0];
    assert_eq!(event["source"], "batch-manager");
    assert_eq!(event["detail-type"], "Batch Finished");
    assert_eq!(
        event["detail"]["deliveryId"],
        received[0].delivery_id.as_str()
    );
    assert_eq!(event["detail"]["status"], "COMPLETED");
}

#[tokio::test]
async fn on_dynamodb_one_outbox_item_per_transition_claimed_once_and_mirrored_on_the_batch() {
    use batch_manager::domain::{
        BatchId, BatchSize, CallbackStatus, CallbackUrl, ItemId, NewPart, Timestamp,
    };
    use batch_manager::store::{
        AttemptResult, BatchStore, CancelOutcome, OutboxStore, RecordOutcome, Unfinished,
    };

    let store = common::moto::dynamo_store("outbox").await;
    let batch_id = BatchId::parse("dynamo-replayed").unwrap();
    let items = vec![ItemId::parse("a").unwrap(), ItemId::parse("b").unwrap()];
    let part = NewPart::new(batch_id.clone(), 2, BatchSize::parse(2).unwrap(), 1, items)
        .unwrap()
        .with_callback_url(Some(
            CallbackUrl::parse("https://example.com/hook").unwrap(),
        ));
    store.append_part(&part).await.unwrap();
    store.claim_chunk(&batch_id, 0).await.unwrap();
    let far = Timestamp(i64::MAX / 2);
    assert!(store.due_deliveries(far, 10).await.unwrap().is_empty());

    let RecordOutcome::Recorded(batch, _) = store
        .record_chunk(&batch_id, 0, Unfinished::Failed(None))
        .await
        .unwrap()
    else {
        panic!("the chunk was not recorded");
    };
    assert_eq!(batch.callback.status, CallbackStatus::Pending);
    let due = store.due_deliveries(far, 10).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].key.completed_at, batch.completed_at.unwrap());
    assert_eq!(due[0].batch.failed_items, 2);
    assert_eq!(due[0].attempts, 0);

    let replayed = store
        .record_chunk(&batch_id, 0, Unfinished::Failed(None))
        .await
        .unwrap();
    assert!(matches!(replayed, RecordOutcome::AlreadyRecorded(_)));
    let cancelled = store.cancel_batch(&batch_id).await.unwrap();
    assert!(matches!(cancelled, CancelOutcome::AlreadyTerminal(_)));
    assert_eq!(store.due_deliveries(far, 10).await.unwrap(), due);

    let now = Timestamp::now();
    let lease = Timestamp(now.0 + 60_000_000);
    assert!(store.claim_delivery(&due[0], now, lease).await.unwrap());
    assert!(!store.claim_delivery(&due[0], now, lease).await.unwrap());
    let retry = AttemptResult::Retry {
        due_at: Timestamp(now.0 + 1),
        error: "HTTP 503".to_owned(),
    };
    store.finish_attempt(&due[0].key, 1, &retry).await.unwrap();
    let shown = store.get_batch(&batch_id).await.unwrap().unwrap();
    assert_eq!(shown.callback.status, CallbackStatus::Pending);
    assert_eq!(shown.callback.attempts, 1);
    assert_eq!(shown.callback.last_error.as_deref(), Some("HTTP 503"));

    let again = store.load_delivery(&due[0].key).await.unwrap().unwrap();
    assert_eq!(again.attempts, 1);
    assert!(store
        .claim_delivery(&again, Timestamp::now(), lease)
        .await
        .unwrap());
    store
        .finish_attempt(&due[0].key, 2, &AttemptResult::Delivered)
        .await
        .unwrap();
    // A late result of the first attempt changes nothing.
    store.finish_attempt(&due[0].key, 1, &retry).await.unwrap();
    let shown = store.get_batch(&batch_id).await.unwrap().unwrap();
    assert_eq!(shown.callback.status, CallbackStatus::Delivered);
    assert_eq!(shown.callback.attempts, 2);
    assert!(store.due_deliveries(far, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_redriven_batch_is_posted_again_under_a_new_delivery_id() {
    let receiver = Receiver::start(Vec::new()).await;
    let mut test = spawn_with_callbacks(Tasks::default(), fast_settings()).await;
    test.client
        .submit_batch(pb::SubmitBatchRequest {
            callback_url: receiver.url(),
            tolerated_failure_count: Some(0),
            ..submit_request("twice-ended", half_bad(4), 2)
        })
        .await
        .unwrap();
    let first = test.wait_terminal("twice-ended").await;
    assert_eq!(first.status(), pb::BatchStatus::Failed);
    wait_callback(&mut test, "twice-ended", pb::CallbackStatus::Delivered).await;
    common::redrive(&mut test.client, "twice-ended", true)
        .await
        .unwrap();
    let received = receiver.wait_for("twice-ended", 2).await;
    assert_eq!(received.len(), 2, "one delivery per terminal transition");
    assert_ne!(received[0].delivery_id, received[1].delivery_id);
    assert!(received.iter().all(Received::signature_is_valid));
    let (before, after) = (received[0].json(), received[1].json());
    assert_eq!(before["redriveCount"], 0);
    assert_eq!(
        before["failureReason"],
        "failure budget exceeded: 1 of 4 items failed, 0 tolerated"
    );
    assert_eq!(after["redriveCount"], 1);
    assert_eq!(after["status"], "FAILED");
    let ended = wait_callback(&mut test, "twice-ended", pb::CallbackStatus::Delivered).await;
    assert_eq!(ended.redrive_count, 1);
}

#[tokio::test]
async fn the_cli_submits_with_a_callback_url_and_shows_its_delivery() {
    let receiver = Receiver::start(Vec::new()).await;
    let mut test = spawn_with_callbacks(Tasks::default(), fast_settings()).await;
    let server = format!("http://{}", test.app.grpc_addr);
    let directory = tempfile::tempdir().unwrap();
    let items = directory.path().join("ids.txt");
    std::fs::write(&items, uuids(4).join("\n")).unwrap();
    let file = items.to_str().unwrap();
    let url = receiver.url();
    let (ok, _, stderr) = common::process::cli(
        &server,
        &[
            "submit",
            "--items-file",
            file,
            "--batch-id",
            "cli-hook",
            "--callback-url",
            &url,
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    test.wait_terminal("cli-hook").await;
    wait_callback(&mut test, "cli-hook", pb::CallbackStatus::Delivered).await;
    let (ok, stdout, stderr) = common::process::cli(&server, &["status", "cli-hook"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("callback   DELIVERED {url}, 1 attempt")),
        "{stdout}"
    );
    let (ok, _, stderr) = common::process::cli(
        &server,
        &[
            "submit",
            "--items-file",
            file,
            "--callback-url",
            "ftp://example.com/x",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("--callback-url: must start with https://"),
        "{stderr}"
    );
}
