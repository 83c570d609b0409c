//! The command-line clients, run as the real binary against a real server; `watch` across a
//! server restart on the same database, and a server that stays away.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::process::cli;
use common::*;
use serde_json::Value;

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
            "--max-concurrency",
            "4",
            "--watch",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let last: Value = serde_json::from_str(stdout.lines().last().expect("a snapshot")).unwrap();
    assert_eq!(last["status"], "COMPLETED_WITH_FAILURES");
    assert_eq!(last["maxConcurrency"], 4);
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

    let (ok, _, stderr) = cli(&server, &["update", "from-cli", "--max-concurrency", "8"]).await;
    assert!(!ok, "an ended batch keeps its limit");
    assert!(stderr.contains("already"), "{stderr}");

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
    let (ok, _, stderr) = cli(&server, &["update", "x", "--max-concurrency", "20000"]).await;
    assert!(!ok);
    assert!(stderr.contains("--max-concurrency"), "{stderr}");
    let (ok, _, stderr) = cli(
        &server,
        &["update", "no-such-batch", "--max-concurrency", "3"],
    )
    .await;
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

/// Task 2 holding every chunk until the test ends: the batch stays RUNNING.
struct Held;

#[async_trait::async_trait]
impl batch_manager::pipeline::ChunkTask for Held {
    async fn process(
        &self,
        _input: batch_manager::pipeline::TaskInput<'_>,
    ) -> Result<Vec<batch_manager::domain::ItemOutcome>, batch_manager::pipeline::TaskError> {
        std::future::pending().await
    }
}

/// A local server on `grpc_addr` (port 0 for any) over the database file `db`.
async fn serve_on(
    db: &Path,
    grpc_addr: SocketAddr,
    tasks: batch_manager::pipeline::Tasks,
) -> batch_manager::app::LocalApp {
    let connections = batch_manager::config::ConnectionConfig {
        shutdown_grace: Duration::from_millis(200),
        ..Default::default()
    };
    batch_manager::app::LocalApp::spawn(
        batch_manager::app::LocalConfig {
            grpc_addr,
            http_addr: ([127, 0, 0, 1], 0).into(),
            db: db.to_owned(),
            engine: batch_manager::engine::local::EngineConfig::default(),
            connections,
            jobs: batch_manager::app::JobConfig::default(),
            items_buckets: Default::default(),
            access: Default::default(),
        },
        tasks,
    )
    .await
    .expect("server starts")
}

/// The CLI running in the background: its standard output line by line as it comes.
struct Background {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Background {
    fn start(server: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_batch-manager"))
            .args(args)
            .env("BATCH_MANAGER_SERVER", server)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run batch-manager");
        let (sender, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// The next line of standard output; panics if none comes within the batch deadline.
    async fn next_line(&mut self) -> String {
        let receiver = std::mem::replace(&mut self.stdout, mpsc::channel().1);
        let (line, receiver) = tokio::task::spawn_blocking(move || {
            let line = receiver.recv_timeout(BATCH_DEADLINE);
            (line, receiver)
        })
        .await
        .unwrap();
        self.stdout = receiver;
        line.expect("a line from the CLI")
    }

    /// Waits for the CLI to exit: whether it succeeded, the rest of its output, its stderr.
    async fn finish(mut self) -> (bool, Vec<String>, String) {
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().expect("the CLI exits");
            let rest = self.stdout.iter().collect();
            (status.success(), rest, self.stderr.join().unwrap())
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reconnects_after_a_server_restart_and_follows_the_batch_to_its_end() {
    let directory = tempfile::tempdir().unwrap();
    let db = directory.path().join("restarted.db");
    let held = batch_manager::pipeline::Tasks {
        task2: Arc::new(Held),
        ..Default::default()
    };
    let first = serve_on(&db, ([127, 0, 0, 1], 0).into(), held).await;
    let grpc_addr = first.grpc_addr;
    let server = format!("http://{grpc_addr}");
    let mut client = connect(grpc_addr).await;
    client
        .submit_batch(submit_request("across-restarts", uuids(30), 10))
        .await
        .unwrap();

    let mut watch = Background::start(&server, &["watch", "across-restarts", "--json"]);
    let first_snapshot: Value = serde_json::from_str(&watch.next_line().await).unwrap();
    assert_eq!(first_snapshot["batchId"], "across-restarts");
    first.shutdown().await.unwrap();
    // The same database on the same address, with tasks that finish: the held chunks resume.
    let second = serve_on(&db, grpc_addr, batch_manager::pipeline::Tasks::default()).await;

    let (ok, rest, stderr) = watch.finish().await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("lost the server"), "{stderr}");
    assert!(stderr.contains("trying again in"), "{stderr}");
    let last: Value =
        serde_json::from_str(rest.last().expect("snapshots after the restart")).unwrap();
    assert_eq!(last["status"], "COMPLETED", "{rest:?}");
    assert_eq!(last["succeededItems"], 30);
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_clearly_when_the_server_stays_away() {
    let directory = tempfile::tempdir().unwrap();
    let db = directory.path().join("abandoned.db");
    let held = batch_manager::pipeline::Tasks {
        task2: Arc::new(Held),
        ..Default::default()
    };
    let app = serve_on(&db, ([127, 0, 0, 1], 0).into(), held).await;
    let server = format!("http://{}", app.grpc_addr);
    let mut client = connect(app.grpc_addr).await;
    client
        .submit_batch(submit_request("abandoned", uuids(10), 10))
        .await
        .unwrap();

    let mut watch = Background::start(
        &server,
        &["watch", "abandoned", "--json", "--reconnect-timeout", "2s"],
    );
    watch.next_line().await;
    app.shutdown().await.unwrap();

    let (ok, _, stderr) = watch.finish().await;
    assert!(!ok, "{stderr}");
    let attempts = stderr.matches("trying again in").count();
    assert!(attempts >= 2, "a few attempts before giving up: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: gave up watching batch abandoned: the server stayed unreachable for 2s: "
        ),
        "{stderr}"
    );
    assert!(last.contains("unavailable"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_lists_newest_first_filters_by_status_and_refuses_an_unknown_one() {
    let mut test = spawn_app().await;
    let server = format!("http://{}", test.app.grpc_addr);
    for (batch_id, ids) in [
        ("listed-first", uuids(3)),
        ("listed-failing", vec!["not-a-uuid".to_owned()]),
        ("listed-last", uuids(2)),
    ] {
        test.client
            .submit_batch(submit_request(batch_id, ids, 10))
            .await
            .unwrap();
        test.wait_terminal(batch_id).await;
    }
    let (ok, stdout, stderr) = cli(&server, &["batches", "--json"]).await;
    assert!(ok, "{stderr}");
    let listed: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let ids: Vec<&str> = listed
        .iter()
        .map(|b| b["batchId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["listed-last", "listed-failing", "listed-first"]);

    let (ok, stdout, stderr) = cli(&server, &["batches", "--status", "failed"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(lines[0].starts_with("listed-failing\tFAILED\t1/1 items done\t1 failed"));

    let (ok, stdout, _) = cli(&server, &["batches", "--limit", "1", "--json"]).await;
    assert!(ok);
    assert_eq!(stdout.lines().count(), 1);

    let (ok, _, stderr) = cli(&server, &["batches", "--status", "lost"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("--status: must be pending, running, paused"),
        "{stderr}"
    );
}
