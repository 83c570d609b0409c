//! Client deadlines (`grpc-timeout`), held by a real server on a loopback port: a call still
//! under way when its deadline passes is answered DEADLINE_EXCEEDED by the server, a streamed
//! answer is cut at the deadline, and calls within their deadline are answered as usual.
//!
//! tonic's client holds a unary call to its deadline itself, so those calls go over a bare
//! HTTP/2 connection instead: whatever ends them is the server.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use batch_manager::domain::ItemOutcome;
use batch_manager::grpc::pb;
use batch_manager::pipeline::{ChunkTask, TaskError, TaskInput, Tasks};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tonic::{Code, Request};

use common::submit_request as submit;

/// What the server says when a deadline passes (tonic's client says otherwise, so a test that
/// sees it knows the server enforced the deadline).
const SERVER_SAYS: &str = "the deadline the client set (grpc-timeout) has passed";

fn with_deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The `grpc-status` and `grpc-message` of a unary `SubmitBatch` sent over a bare HTTP/2
/// connection with this `grpc-timeout` header.
async fn submit_with_timeout_header(
    addr: SocketAddr,
    request: pb::SubmitBatchRequest,
    grpc_timeout: &str,
) -> (String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let message = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let http_request = axum::http::Request::post(format!(
        "http://{addr}/batchmanager.v1.BatchManager/SubmitBatch"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", grpc_timeout)
    .body(Full::new(Bytes::from(framed)))
    .unwrap();
    let response = sender.send_request(http_request).await.expect("an answer");
    let mut fields = response.headers().clone();
    let body = response.into_body().collect().await.expect("the body");
    if let Some(trailers) = body.trailers() {
        fields.extend(trailers.clone());
    }
    let field = |name: &str| {
        fields
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (field("grpc-status"), field("grpc-message"))
}

/// `SERVER_SAYS` as the `grpc-message` field carries it (percent-encoded).
fn server_says_encoded() -> String {
    SERVER_SAYS.replace(' ', "%20")
}

/// Task 2 holding every chunk until released.
struct Held(Arc<tokio::sync::Semaphore>);

#[async_trait]
impl ChunkTask for Held {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        let _permit = self.0.acquire().await.expect("gate open");
        Ok(vec![ItemOutcome::Succeeded; input.items.len()])
    }
}

#[tokio::test]
async fn a_call_still_waiting_when_its_deadline_passes_is_deadline_exceeded() {
    let mut test = spawn_app().await;
    // Another process holding the database's write lock keeps the submission waiting.
    let blocker = rusqlite::Connection::open(&test.db).expect("open database");
    blocker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the lock");

    let (status, message) =
        submit_with_timeout_header(test.app.grpc_addr, submit("held-up", uuids(3), 3), "300m")
            .await;
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    assert_eq!(message, server_says_encoded());

    blocker.execute_batch("ROLLBACK").expect("release the lock");
    let accepted = test
        .client
        .submit_batch(with_deadline(
            submit("after", uuids(3), 3),
            Duration::from_secs(30),
        ))
        .await
        .expect("a call within its deadline is served")
        .into_inner();
    assert_eq!(accepted.total_items, 3);
    test.wait_terminal("after").await;
}

#[tokio::test]
async fn a_watch_still_open_when_its_deadline_passes_ends_with_deadline_exceeded() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut test = spawn_app_with(Tasks {
        task2: Arc::new(Held(Arc::clone(&gate))),
        ..Tasks::default()
    })
    .await;
    test.client
        .submit_batch(submit("held", uuids(4), 2))
        .await
        .unwrap();
    let mut stream = test
        .client
        .watch_batch(with_deadline(
            pb::WatchBatchRequest {
                batch_id: "held".into(),
            },
            Duration::from_millis(500),
        ))
        .await
        .expect("the watch opens within its deadline")
        .into_inner();
    let mut snapshots = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                let batch = message.batch.expect("a batch");
                assert!(!is_terminal(batch.status()), "{batch:?}");
                snapshots += 1;
            }
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert!(snapshots >= 1);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), SERVER_SAYS);

    gate.add_permits(100);
    let mut stream = test
        .client
        .watch_batch(with_deadline(
            pb::WatchBatchRequest {
                batch_id: "held".into(),
            },
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.expect("served within its deadline") {
        last = message.batch;
    }
    assert_eq!(
        last.expect("snapshots").status(),
        pb::BatchStatus::Completed
    );
}

#[tokio::test]
async fn a_deadline_already_past_on_arrival_is_deadline_exceeded_and_writes_nothing() {
    let test = spawn_app().await;
    let before = database_fingerprint(&test.db);
    let (status, message) =
        submit_with_timeout_header(test.app.grpc_addr, submit("too-late", uuids(3), 3), "0n").await;
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    assert_eq!(message, server_says_encoded());
    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_ignored_and_the_call_served() {
    let mut test = spawn_app().await;
    let (status, message) =
        submit_with_timeout_header(test.app.grpc_addr, submit("unbounded", uuids(3), 3), "soon")
            .await;
    assert_eq!(status, "0", "{message}");
    test.wait_terminal("unbounded").await;
}
