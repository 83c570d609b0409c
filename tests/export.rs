//! `ExportBatchItems` and `batch-manager export`: every item of a batch (or those in one
//! status) streamed with flat memory, on SQLite and on DynamoDB, and a million items through
//! the real binaries.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batch_manager::app::{AwsApp, AwsConfig};
use batch_manager::domain::{parse_item_ids, BatchId, BatchSize, ItemOutcome, NewPart};
use batch_manager::grpc::pb;
use batch_manager::grpc::pb::batch_manager_client::BatchManagerClient;
use batch_manager::pipeline::tasks::NOT_A_UUID;
use batch_manager::store::dynamo::{DynamoStore, DynamoTables};
use batch_manager::store::{BatchStore, ChunkClaim, Unfinished};
use common::lambda::MotoStack;
use common::process::cli;
use common::process::{Launch, ServerProcess};
use common::*;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

/// Items of the finished batch the tests export: every tenth ID is not a UUID (the default
/// task 1 fails it), and one holds a comma and a quote, which CSV must quote.
fn mixed_ids(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| match index {
            3 => "legacy,\"3\"".to_owned(),
            index if index % 10 == 3 => format!("legacy-{index}"),
            _ => uuid::Uuid::new_v4().to_string(),
        })
        .collect()
}

async fn export(
    client: &mut BatchManagerClient<Channel>,
    batch_id: &str,
    status: pb::ItemStatus,
) -> Result<Vec<pb::Item>, tonic::Status> {
    let mut stream = client
        .export_batch_items(pb::ExportBatchItemsRequest {
            batch_id: batch_id.to_owned(),
            status: status as i32,
        })
        .await?
        .into_inner();
    let mut items = Vec::new();
    while let Some(message) = stream.message().await? {
        assert!(!message.items.is_empty(), "a message without items");
        items.extend(message.items);
    }
    Ok(items)
}

/// A finished batch of 250 items in chunks of 20, 25 of them failed.
async fn finished_batch(test: &mut TestApp, batch_id: &str) -> Vec<String> {
    let ids = mixed_ids(250);
    test.client
        .submit_batch(submit_request(batch_id, ids.clone(), 20))
        .await
        .expect("SubmitBatch");
    let batch = test.wait_terminal(batch_id).await;
    assert_eq!((batch.succeeded_items, batch.failed_items), (225, 25));
    ids
}

#[tokio::test]
async fn every_item_and_only_the_failed_ones_are_exported_from_a_finished_batch() {
    let mut test = spawn_app().await;
    let ids = finished_batch(&mut test, "exported").await;

    let all = export(&mut test.client, "exported", pb::ItemStatus::Unspecified)
        .await
        .expect("ExportBatchItems");
    let exported: Vec<&str> = all.iter().map(|item| item.item_id.as_str()).collect();
    assert_eq!(exported, ids, "every item, in submission order");
    assert_eq!(
        all,
        test.all_items("exported", pb::ItemStatus::Unspecified)
            .await,
        "as ListBatchItems lists them"
    );

    let failed = export(&mut test.client, "exported", pb::ItemStatus::Failed)
        .await
        .expect("ExportBatchItems");
    assert_eq!(failed.len(), 25);
    assert!(failed
        .iter()
        .all(|item| item.status() == pb::ItemStatus::Failed && item.error == NOT_A_UUID));
    assert_eq!(failed[0].item_id, "legacy,\"3\"");
    let cancelled = export(&mut test.client, "exported", pb::ItemStatus::Cancelled)
        .await
        .expect("ExportBatchItems");
    assert!(cancelled.is_empty());

    let status = test.status("exported").await;
    assert_eq!(
        status.top_errors,
        vec![pb::ErrorCount {
            message: NOT_A_UUID.to_owned(),
            count: 25
        }]
    );
}

#[tokio::test]
async fn an_unknown_batch_is_not_found_and_a_bad_batch_id_or_status_is_invalid_argument() {
    let mut test = spawn_app().await;
    let missing = export(
        &mut test.client,
        "no-such-batch",
        pb::ItemStatus::Unspecified,
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    finished_batch(&mut test, "present").await;
    let bad_status = test
        .client
        .export_batch_items(pb::ExportBatchItemsRequest {
            batch_id: "present".to_owned(),
            status: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_status.code(), Code::InvalidArgument);
    assert!(bad_status.message().starts_with("status"), "{bad_status:?}");
    let bad_id = export(&mut test.client, "a\tb", pb::ItemStatus::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert!(bad_id.message().starts_with("batch_id"), "{bad_id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_json_lines_and_csv_to_a_file_and_to_standard_output() {
    let mut test = spawn_app().await;
    let server = format!("http://{}", test.app.grpc_addr);
    let ids = finished_batch(&mut test, "to-files").await;
    let directory = tempfile::tempdir().unwrap();

    let jsonl = directory.path().join("items.jsonl");
    let (ok, stdout, stderr) = cli(
        &server,
        &["export", "to-files", "--output", jsonl.to_str().unwrap()],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("exported 250 items"), "{stderr}");
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let exported: Vec<&str> = lines
        .iter()
        .map(|line| line["itemId"].as_str().unwrap())
        .collect();
    assert_eq!(exported, ids);
    assert_eq!(lines[3]["status"], "FAILED");
    assert_eq!(lines[3]["error"], NOT_A_UUID);
    assert_eq!(lines[4]["status"], "SUCCEEDED");
    assert_eq!(lines[4]["error"], Value::Null);
    assert_eq!(lines[45]["chunk"], 2);

    let (ok, stdout, stderr) = cli(
        &server,
        &[
            "export", "to-files", "--status", "failed", "--format", "csv",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let records: Vec<&str> = stdout.split_terminator("\r\n").collect();
    assert_eq!(records.len(), 26, "a header and the 25 failed items");
    assert_eq!(records[0], "item_id,status,error,attempts,chunk");
    assert_eq!(
        records[1],
        format!("\"legacy,\"\"3\"\"\",FAILED,{NOT_A_UUID},1,0")
    );
    assert_eq!(records[2], format!("legacy-13,FAILED,{NOT_A_UUID},1,0"));

    let csv = directory.path().join("items.csv");
    let (ok, _, stderr) = cli(
        &server,
        &[
            "export",
            "to-files",
            "--format",
            "csv",
            "--output",
            csv.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&csv)
            .unwrap()
            .split_terminator("\r\n")
            .count(),
        251
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_a_bad_status_and_an_unknown_batch_and_writes_no_file() {
    let test = spawn_app().await;
    let server = format!("http://{}", test.app.grpc_addr);
    let directory = tempfile::tempdir().unwrap();
    let output = directory.path().join("never.jsonl");

    let (ok, _, stderr) = cli(&server, &["export", "any", "--status", "lost"]).await;
    assert!(!ok);
    assert!(stderr.contains("--status"), "{stderr}");

    let (ok, _, stderr) = cli(
        &server,
        &["export", "missing", "--output", output.to_str().unwrap()],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("NotFound") || stderr.contains("not found"),
        "{stderr}"
    );
    assert!(!output.exists());
}

#[tokio::test]
async fn the_dynamodb_store_exports_the_same() {
    let stack = MotoStack::deploy("export").await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&stack.sdk_config),
        DynamoTables {
            batch_table: stack.batch_table.clone(),
            request_table: stack.request_table.clone(),
        },
    );
    let batch_id = BatchId::parse("exported-on-aws").unwrap();
    let ids: Vec<String> = (0..30).map(|index| format!("item-{index:02}")).collect();
    let part = NewPart::new(
        batch_id.clone(),
        30,
        BatchSize::parse(10).unwrap(),
        1,
        parse_item_ids(ids.clone()).unwrap(),
    )
    .unwrap();
    store.append_part(&part).await.unwrap();
    for chunk in 0..3 {
        let ChunkClaim::Active(claimed) = store.claim_chunk(&batch_id, chunk).await.unwrap() else {
            panic!("chunk {chunk} not claimable");
        };
        // The fourth item of each chunk fails.
        let outcomes: Vec<(usize, ItemOutcome)> = (0..claimed.items.len())
            .map(|position| match position {
                3 => (position, ItemOutcome::Failed("quota, exceeded".into())),
                _ => (position, ItemOutcome::Succeeded),
            })
            .collect();
        store
            .save_outcomes_and_record(&batch_id, chunk, &outcomes, 1, Unfinished::Failed(None))
            .await
            .unwrap();
    }

    let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let app = AwsApp::spawn(
        AwsConfig {
            grpc_addr: loopback,
            http_addr: loopback,
            stack: stack.aws_settings(),
            connections: batch_manager::config::ConnectionConfig::default(),
            jobs: batch_manager::app::JobConfig::default(),
            items_buckets: Default::default(),
            access: Default::default(),
        },
        &stack.sdk_config,
    )
    .await
    .expect("the server starts");
    let mut client = connect(app.grpc_addr).await;
    let all = export(&mut client, "exported-on-aws", pb::ItemStatus::Unspecified)
        .await
        .expect("ExportBatchItems");
    let exported: Vec<&str> = all.iter().map(|item| item.item_id.as_str()).collect();
    assert_eq!(exported, ids);
    let failed = export(&mut client, "exported-on-aws", pb::ItemStatus::Failed)
        .await
        .expect("ExportBatchItems");
    let failed: Vec<(&str, &str)> = failed
        .iter()
        .map(|item| (item.item_id.as_str(), item.error.as_str()))
        .collect();
    assert_eq!(
        failed,
        vec![
            ("item-03", "quota, exceeded"),
            ("item-13", "quota, exceeded"),
            ("item-23", "quota, exceeded")
        ]
    );
    let missing = export(&mut client, "no-such-batch", pb::ItemStatus::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let status = fetch_status(&mut client, "exported-on-aws").await;
    assert_eq!(
        status.top_errors,
        vec![pb::ErrorCount {
            message: "quota, exceeded".to_owned(),
            count: 3
        }]
    );
    assert_eq!(status.eta_seconds, None, "the batch has ended");
    app.shutdown().await.expect("a clean shutdown");
}

/// A memory figure of a process from `/proc/PID/status` (`VmHWM:` its peak resident memory,
/// `VmRSS:` its resident memory now), in KiB; None once it has exited.
fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    memory_kib(pid, "VmHWM:")
}

const MILLION: usize = 1_000_000;
const PART: usize = 100_000;
/// How much the server's and the client's peak memory may grow while a million items are
/// exported.
const GROWTH_BOUND_KIB: u64 = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_items_export_through_the_binaries_with_flat_memory() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        &directory.path().join("million.db"),
        Launch {
            // The export does not wait for processing; one chunk at a time keeps it light.
            args: &["--concurrency", "1"],
            ..Default::default()
        },
    );
    let server_pid = server.child.id();
    let mut client = connect(server.grpc_addr).await;
    for part_number in 1..=(MILLION / PART) as u64 {
        client
            .append_batch_items(pb::AppendBatchItemsRequest {
                batch_id: "million".to_owned(),
                total_items: MILLION as u64,
                batch_size: 100,
                part_number,
                item_ids: uuids(PART),
                ..Default::default()
            })
            .await
            .expect("AppendBatchItems");
    }
    let server_before = peak_rss_kib(server_pid).expect("the server runs");
    // The appends set the server's peak; what the export adds shows in its resident memory.
    let server_resident_before = memory_kib(server_pid, "VmRSS:").expect("the server runs");
    let mut server_resident_peak = server_resident_before;

    let output = directory.path().join("million.jsonl");
    let mut export = Command::new(env!("CARGO_BIN_EXE_batch-manager"))
        .args(["export", "million", "--output", output.to_str().unwrap()])
        .args(["--server", &format!("http://{}", server.grpc_addr)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run batch-manager export");
    let started = Instant::now();
    let mut client_peak = 0;
    let status = loop {
        if let Some(peak) = peak_rss_kib(export.id()) {
            client_peak = client_peak.max(peak);
        }
        if let Some(resident) = memory_kib(server_pid, "VmRSS:") {
            server_resident_peak = server_resident_peak.max(resident);
        }
        if let Some(status) = export.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the export did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut export.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let server_after = peak_rss_kib(server_pid).expect("the server runs");

    let lines = BufReader::new(std::fs::File::open(&output).unwrap())
        .lines()
        .count();
    assert_eq!(lines, MILLION);
    eprintln!(
        "exported {MILLION} items in {:.1}s ({:.0} items/s); server peak RSS {} -> {} MiB \
         (resident {} MiB before, at most {} MiB during); client peak RSS {} MiB",
        elapsed.as_secs_f64(),
        MILLION as f64 / elapsed.as_secs_f64(),
        server_before / 1024,
        server_after / 1024,
        server_resident_before / 1024,
        server_resident_peak / 1024,
        client_peak / 1024
    );
    assert!(
        server_resident_peak.saturating_sub(server_resident_before) < GROWTH_BOUND_KIB,
        "the server's resident memory grew from {server_resident_before} KiB to \
         {server_resident_peak} KiB"
    );
    assert!(
        server_after.saturating_sub(server_before) < GROWTH_BOUND_KIB,
        "the server's peak grew from {server_before} KiB to {server_after} KiB"
    );
    assert!(
        client_peak < GROWTH_BOUND_KIB,
        "the client's peak was {client_peak} KiB"
    );
}
