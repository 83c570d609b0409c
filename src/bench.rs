//! `batch-manager bench`: N items through the embedded engine with the default tasks, on a
//! temporary database, submitted over real gRPC; reports items/s and chunk executions/s end to
//! end, peak RSS, `GetBatchStatus` latency measured while the batch runs, and the same database
//! work done directly on the same disk (no engine, gRPC or tasks), the floor the engine is
//! measured against.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::app::{LocalApp, LocalConfig};
use crate::config::BenchArgs;
use crate::engine::local::EngineConfig;
use crate::grpc::client::AdminClient;
use crate::pipeline::Tasks;
use crate::store::sqlite::floor;

const ITEMS_PER_PART: u64 = 100_000;
const STATUS_PROBE_GAP: Duration = Duration::from_millis(10);
/// The benchmark gives up after this long, so it always ends.
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// Peak resident set size of this process, in bytes (Linux; None elsewhere).
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn item_id(batch: u64, index: u64) -> String {
    uuid::Uuid::from_u64_pair(batch, index).to_string()
}

/// Runs `bench`: the embedded engine on a temporary database, end to end.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let directory = tempfile::tempdir().context("creating a temporary directory")?;
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let app = LocalApp::spawn(
        LocalConfig {
            grpc_addr: loopback,
            http_addr: loopback,
            db: directory.path().join("bench.db"),
            engine: EngineConfig {
                concurrency: usize::from(args.concurrency),
                ..EngineConfig::default()
            },
            connections: crate::config::ConnectionConfig::default(),
        },
        Tasks::default(),
    )
    .await?;
    let url = format!("http://{}", app.grpc_addr);
    let mut client = AdminClient::connect(&url).await?;
    let batch_id = crate::domain::BatchId::generate();
    let seed = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into()?);

    let started = Instant::now();
    let prober = {
        let mut client = AdminClient::connect(&url).await?;
        let batch_id = batch_id.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let deadline = Instant::now() + TIME_LIMIT;
            while Instant::now() < deadline {
                let asked = Instant::now();
                match client.status(&batch_id).await {
                    Ok(batch) => {
                        latencies.push(asked.elapsed());
                        if batch.status.is_terminal() {
                            return Ok((latencies, batch));
                        }
                    }
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => anyhow::bail!("GetBatchStatus failed: {status}"),
                }
                tokio::time::sleep(STATUS_PROBE_GAP).await;
            }
            anyhow::bail!("the batch did not finish within {TIME_LIMIT:?}")
        })
    };

    let mut part_number = 0;
    let mut sent = 0;
    while sent < args.items {
        let count = ITEMS_PER_PART.min(args.items - sent);
        let ids = (sent..sent + count).map(|i| item_id(seed, i)).collect();
        part_number += 1;
        let part = crate::domain::NewPart::new(
            batch_id.clone(),
            args.items,
            crate::domain::BatchSize::parse(u64::from(args.batch_size)).context("--batch-size")?,
            part_number,
            crate::domain::parse_item_ids(ids)?,
        )
        .context("--items")?;
        client
            .append(part)
            .await
            .map_err(|status| anyhow::anyhow!("AppendBatchItems failed: {status}"))?;
        sent += count;
    }
    let submitted_after = started.elapsed();
    let (mut latencies, batch) = prober.await??;
    let elapsed = started.elapsed();
    app.shutdown().await?;
    let peak_rss = peak_rss_bytes();

    let floor_db = directory.path().join("floor.db");
    let (items, batch_size) = (args.items, args.batch_size);
    let floor = tokio::task::spawn_blocking(move || {
        floor::measure(&floor_db, items, batch_size, |i| item_id(seed, i))
    })
    .await??;

    latencies.sort();
    let chunks = args.items.div_ceil(u64::from(args.batch_size.max(1)));
    let items_per_second = args.items as f64 / elapsed.as_secs_f64();
    let chunks_per_second = chunks as f64 / elapsed.as_secs_f64();
    let floor_items_per_second = args.items as f64 / floor.as_secs_f64();
    let ratio = items_per_second / floor_items_per_second;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if args.json {
        println!(
            "{}",
            json!({
                "items": args.items,
                "batchSize": args.batch_size,
                "concurrency": args.concurrency,
                "status": batch.status.as_str(),
                "succeeded": batch.succeeded_items,
                "seconds": elapsed.as_secs_f64(),
                "submitSeconds": submitted_after.as_secs_f64(),
                "itemsPerSecond": items_per_second,
                "chunkExecutionsPerSecond": chunks_per_second,
                "peakRssBytes": peak_rss,
                "direct": {
                    "seconds": floor.as_secs_f64(),
                    "itemsPerSecond": floor_items_per_second,
                    "chunksPerSecond": chunks as f64 / floor.as_secs_f64(),
                },
                "engineToDirect": ratio,
                "statusLatencyMs": {
                    "samples": latencies.len(),
                    "p50": ms(percentile(&latencies, 0.5)),
                    "p99": ms(percentile(&latencies, 0.99)),
                    "max": ms(percentile(&latencies, 1.0)),
                },
            })
        );
    } else {
        println!(
            "{} items, batch size {}, concurrency {}: {} ({} succeeded)",
            args.items, args.batch_size, args.concurrency, batch.status, batch.succeeded_items
        );
        println!(
            "end to end   {:.2} s ({:.0} items/s, {:.0} chunk executions/s; submission took {:.2} s)",
            elapsed.as_secs_f64(),
            items_per_second,
            chunks_per_second,
            submitted_after.as_secs_f64()
        );
        if let Some(bytes) = peak_rss {
            println!("peak RSS     {:.1} MB", bytes as f64 / 1e6);
        }
        println!(
            "GetBatchStatus while running: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} calls)",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0)),
            latencies.len()
        );
        println!(
            "direct       {:.2} s ({:.0} items/s, {:.0} chunks/s): the same rows written with no engine, gRPC or tasks",
            floor.as_secs_f64(),
            floor_items_per_second,
            chunks as f64 / floor.as_secs_f64()
        );
        println!("engine / direct {:.0}%", ratio * 100.0);
    }
    if batch.succeeded_items != args.items {
        anyhow::bail!(
            "expected {} succeeded items, got {}",
            args.items,
            batch.succeeded_items
        );
    }
    Ok(())
}
