//! The command-line clients, run as the real binary against a real server.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;
use serde_json::Value;

fn run_cli(server: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_batch-manager"))
        .args(args)
        .env("BATCH_MANAGER_SERVER", server)
        .output()
        .expect("run batch-manager");
    (
        output.status.success(),
        String::from_utf8(output.stdout).expect("UTF-8"),
        String::from_utf8(output.stderr).expect("UTF-8"),
    )
}

async fn cli(server: &str, args: &[&str]) -> (bool, String, String) {
    let server = server.to_owned();
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&server, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_one_request_is_submitted_in_parts_and_watched_to_the_end() {
    let test = spawn_app().await;
    let server = format!("http://{}", test.app.grpc_addr);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let total = 150_000;
    for index in 0..total {
        if index % 1000 == 7 {
            writeln!(file, "legacy-{index}").unwrap();
        } else {
            writeln!(file, "{}\r", uuid::Uuid::new_v4()).unwrap();
        }
        if index == 10 {
            writeln!(file).unwrap();
        }
    }
    file.flush().unwrap();
    let path = file.path().to_str().unwrap().to_owned();

    let (ok, stdout, stderr) = cli(
        &server,
        &[
            "submit",
            "--items-file",
            &path,
            "--batch-size",
            "500",
            "--batch-id",
            "from-cli",
            "--watch",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let last: Value = serde_json::from_str(stdout.lines().last().expect("a snapshot")).unwrap();
    assert_eq!(last["status"], "COMPLETED_WITH_FAILURES");
    assert_eq!(last["totalItems"], total);
    assert_eq!(last["failedItems"], total / 1000);
    assert_eq!(last["pendingItems"], 0);

    let (ok, again, stderr) = cli(
        &server,
        &[
            "submit",
            "--items-file",
            &path,
            "--batch-size",
            "500",
            "--batch-id",
            "from-cli",
            "--json",
        ],
    )
    .await;
    assert!(ok, "resubmitting the same file is idempotent: {stderr}");
    let again: Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["created"], false);

    let (ok, status, _) = cli(&server, &["status", "from-cli", "--json"]).await;
    assert!(ok);
    let status: Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(status["succeededItems"], total - total / 1000);

    let (ok, failed, _) = cli(
        &server,
        &["items", "from-cli", "--status", "failed", "--json"],
    )
    .await;
    assert!(ok);
    let failed: Vec<Value> = failed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(failed.len(), total / 1000);
    assert_eq!(failed[0]["itemId"], "legacy-7");
    assert_eq!(failed[0]["error"], "item id is not a UUID");

    let (ok, human, _) = cli(&server, &["items", "from-cli", "--limit", "3"]).await;
    assert!(ok);
    assert_eq!(human.lines().count(), 3);
    assert!(human
        .lines()
        .all(|line| line.contains("SUCCEEDED") || line.contains("FAILED")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_reported_with_their_grpc_code() {
    let test = spawn_app().await;
    let server = format!("http://{}", test.app.grpc_addr);
    let (ok, _, stderr) = cli(&server, &["status", "no-such-batch"]).await;
    assert!(!ok);
    assert!(stderr.contains("not found"), "{stderr}");
    let (ok, _, stderr) = cli(&server, &["items", "x", "--status", "bogus"]).await;
    assert!(!ok);
    assert!(stderr.contains("--status"), "{stderr}");
    let (ok, _, stderr) = cli(&server, &["cancel", "no-such-batch"]).await;
    assert!(!ok);
    assert!(stderr.contains("not found"), "{stderr}");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "a\na").unwrap();
    let (ok, _, stderr) = cli(
        &server,
        &["submit", "--items-file", file.path().to_str().unwrap()],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains(" line 2: duplicate item ID \"a\""),
        "the CLI names the line of the file: {stderr}"
    );
}
