//! `batch-manager serve --backend aws`: the gRPC service and the seed HTTP endpoint on a
//! deployed stack's DynamoDB tables and state machine (moto), in process and as the binary.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use batch_manager::app::{AwsApp, AwsConfig};
use batch_manager::config::AwsSettings;
use batch_manager::domain::BatchId;
use batch_manager::engine::stepfunctions::execution_name;
use batch_manager::grpc::pb;
use common::lambda::MotoStack;
use serde_json::json;

fn settings(stack: &MotoStack) -> AwsSettings {
    stack.aws_settings()
}

#[tokio::test]
async fn submitted_batches_are_stored_in_dynamodb_and_their_stream_starts_them_in_step_functions() {
    let stack = MotoStack::deploy("serve-aws").await;
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let app = AwsApp::spawn(
        AwsConfig {
            grpc_addr: loopback,
            http_addr: loopback,
            stack: settings(&stack),
            connections: batch_manager::config::ConnectionConfig::default(),
            jobs: batch_manager::app::JobConfig::default(),
            items_buckets: Default::default(),
            access: Default::default(),
        },
        &stack.sdk_config,
    )
    .await
    .expect("the server starts");
    let mut client = common::connect(app.grpc_addr).await;

    let submitted = client
        .submit_batch(pb::SubmitBatchRequest {
            batch_id: "served-on-aws".to_owned(),
            item_ids: common::uuids(10),
            batch_size: 4,
            ..Default::default()
        })
        .await
        .expect("SubmitBatch")
        .into_inner();
    assert!(submitted.created, "{submitted:?}");
    let batch = client
        .get_batch_status(pb::GetBatchStatusRequest {
            batch_id: "served-on-aws".to_owned(),
        })
        .await
        .expect("GetBatchStatus")
        .into_inner()
        .batch
        .expect("batch");
    assert_eq!(batch.total_items, 10);
    assert_eq!(batch.total_chunks, 3);
    assert_eq!(batch.status(), pb::BatchStatus::Pending);

    let response = reqwest::Client::new()
        .post(format!("http://{}/stateMachineInit", app.http_addr))
        .header("content-type", "application/json")
        .body(common::seed_body().to_string())
        .send()
        .await
        .expect("POST /stateMachineInit");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"batchId": "4b4dc5c6-fbd9-493d-98ff-c459c378f45d", "totalItems": 10})
    );

    // The server only stored the parts; the stack's stream starts their chunks.
    assert!(stack.executions().await.is_empty());
    let init = stack.function("init").await;
    stack.deliver_stream(&init).await;
    let names: Vec<String> = stack
        .executions()
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let served = BatchId::parse("served-on-aws").unwrap();
    let seed = BatchId::parse("4b4dc5c6-fbd9-493d-98ff-c459c378f45d").unwrap();
    let mut expected = vec![
        execution_name(&served, 0),
        execution_name(&served, 1),
        execution_name(&served, 2),
        execution_name(&seed, 0),
        execution_name(&seed, 1),
    ];
    expected.sort();
    assert_eq!(names, expected);

    app.shutdown().await.expect("a clean shutdown");
}

#[test]
fn a_missing_stack_setting_fails_fast_naming_the_flag_and_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_batch-manager"))
        .env_clear()
        .args([
            "serve",
            "--backend",
            "aws",
            "--request-table",
            "requests",
            "--state-machine-arn",
            "arn:aws:states:us-east-1:123456789012:stateMachine:chunks",
        ])
        .output()
        .expect("run batch-manager");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("missing --batch-table (or the BATCH_TABLE environment variable)"),
        "{stderr}"
    );
}

fn address_after(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()?.parse().ok()
}

#[tokio::test]
async fn the_binary_serves_a_deployed_stack_and_stops_cleanly_on_sigterm() {
    let stack = MotoStack::deploy("serve-aws-bin").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_batch-manager"))
        .env_clear()
        .envs(common::moto::aws_env(&stack.endpoint))
        .env("RUST_LOG", "info")
        .env("BATCH_TABLE", &stack.batch_table)
        .env("REQUEST_TABLE", &stack.request_table)
        .args([
            "serve",
            "--backend",
            "aws",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--state-machine-arn",
            &stack.state_machine_arn,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn batch-manager serve --backend aws");
    let stderr = child.stderr.take().expect("stderr");
    let (found, addresses) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(grpc) = address_after(&line, "grpc_addr=") {
                let _ = found.send(grpc);
            }
        }
    });
    let grpc_addr = addresses
        .recv_timeout(Duration::from_secs(30))
        .expect("the server reports its address");

    let mut client = common::connect(grpc_addr).await;
    let missing = client
        .get_batch_status(pb::GetBatchStatusRequest {
            batch_id: "no-such-batch".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("send SIGTERM");
    let mut status = None;
    for _ in 0..300 {
        status = child.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the server did not stop within 30 s of SIGTERM");
    };
    assert!(status.success(), "{status:?}");
}
