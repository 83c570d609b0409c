//! `batch-manager bench`: N items through the embedded engine with the default tasks, on a
//! temporary database, submitted over real gRPC; reports items/s and chunk executions/s end to
//! end, peak RSS, `GetBatchStatus` latency measured while the batch runs, the export of every
//! item once the batch has ended (`ExportBatchItems` written as JSON Lines, items/s and how much
//! resident memory it added), and the same database work done directly on the same disk (no
//! engine, gRPC or tasks), the floor the engine is measured against.

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
    memory_bytes("VmHWM:")
}

/// A memory figure of this process from `/proc/self/status`, in bytes.
fn memory_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How often the export's resident memory is sampled.
const MEMORY_SAMPLE_GAP: Duration = Duration::from_millis(10);

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

/// What one run measured.
struct Measured {
    batch: crate::domain::Batch,
    elapsed: Duration,
    submitted_after: Duration,
    latencies: Vec<Duration>,
    peak_rss: Option<u64>,
    export: Exported,
    direct: Duration,
}

/// What exporting the ended batch measured.
struct Exported {
    items: u64,
    elapsed: Duration,
    /// Resident memory the export added at most, in bytes.
    resident_growth: Option<u64>,
}

/// Exports every item of the batch as JSON Lines (to nowhere), sampling this process's
/// resident memory meanwhile.
async fn export_all(url: &str, batch_id: &crate::domain::BatchId) -> anyhow::Result<Exported> {
    use std::io::Write;

    let before = memory_bytes("VmRSS:");
    let (done, mut finished) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = before;
        loop {
            peak = peak.max(memory_bytes("VmRSS:"));
            tokio::select! {
                _ = finished.wait_for(|done| *done) => return peak,
                () = tokio::time::sleep(MEMORY_SAMPLE_GAP) => {}
            }
        }
    });
    let started = Instant::now();
    let mut client = AdminClient::connect(url).await?;
    let query = crate::store::ItemQuery {
        batch_id: batch_id.clone(),
        status: None,
        page_size: 0,
        page_token: None,
    };
    let mut export = client.export(query).await?;
    let mut out = std::io::sink();
    let mut items = 0;
    while let Some(page) = export.next().await? {
        for item in &page {
            writeln!(out, "{}", item.to_json())?;
        }
        items += page.len() as u64;
    }
    let elapsed = started.elapsed();
    let _ = done.send(true);
    let peak = sampler.await?;
    Ok(Exported {
        items,
        elapsed,
        resident_growth: peak
            .zip(before)
            .map(|(peak, before)| peak.saturating_sub(before)),
    })
}

/// Runs the benchmark the arguments describe and prints its figures.
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
            jobs: crate::app::JobConfig::default(),
            items_buckets: crate::items_uri::s3::BucketPolicy::default(),
            access: crate::app::AccessConfig::default(),
        },
        Tasks::default(),
    )
    .await?;
    let url = format!("http://{}", app.grpc_addr);
    let batch_id = crate::domain::BatchId::generate();
    let seed = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into()?);

    let started = Instant::now();
    let prober = spawn_status_prober(AdminClient::connect(&url).await?, batch_id.clone());
    submit(
        &mut AdminClient::connect(&url).await?,
        &args,
        &batch_id,
        seed,
    )
    .await?;
    let submitted_after = started.elapsed();
    let (latencies, batch) = prober.await??;
    let elapsed = started.elapsed();
    let export = export_all(&url, &batch_id).await?;
    app.shutdown().await?;
    let peak_rss = peak_rss_bytes();

    let floor_db = directory.path().join("floor.db");
    let (items, batch_size) = (args.items, args.batch_size);
    let direct = tokio::task::spawn_blocking(move || {
        floor::measure(&floor_db, items, batch_size, |i| item_id(seed, i))
    })
    .await??;

    let measured = Measured {
        batch,
        elapsed,
        submitted_after,
        latencies,
        peak_rss,
        export,
        direct,
    };
    report(&args, measured)
}

/// Reads the batch's status every few milliseconds until it is terminal, timing each read.
fn spawn_status_prober(
    mut client: AdminClient,
    batch_id: crate::domain::BatchId,
) -> tokio::task::JoinHandle<anyhow::Result<(Vec<Duration>, crate::domain::Batch)>> {
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
}

/// Sends the batch's items in parts of [`ITEMS_PER_PART`], preparing the next part while one is
/// sent, as a client streaming from a file would.
async fn submit(
    client: &mut AdminClient,
    args: &BenchArgs,
    batch_id: &crate::domain::BatchId,
    seed: u64,
) -> anyhow::Result<()> {
    let batch_size =
        crate::domain::BatchSize::parse(u64::from(args.batch_size)).context("--batch-size")?;
    let (parts, mut ready) = tokio::sync::mpsc::channel(1);
    let (items, batch_id) = (args.items, batch_id.clone());
    let producer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut part_number = 0;
        let mut prepared = 0;
        while prepared < items {
            let count = ITEMS_PER_PART.min(items - prepared);
            let ids = (prepared..prepared + count)
                .map(|i| item_id(seed, i))
                .collect();
            part_number += 1;
            let part = crate::domain::NewPart::new(
                batch_id.clone(),
                items,
                batch_size,
                part_number,
                crate::domain::parse_item_ids(ids)?,
            )
            .context("--items")?;
            if parts.blocking_send(part).is_err() {
                break;
            }
            prepared += count;
        }
        Ok(())
    });
    while let Some(part) = ready.recv().await {
        client
            .append(part)
            .await
            .map_err(|status| anyhow::anyhow!("AppendBatchItems failed: {status}"))?;
    }
    producer.await?
}

/// The rates a run reached.
struct Rates {
    items_per_second: f64,
    chunks_per_second: f64,
    direct_items_per_second: f64,
    direct_chunks_per_second: f64,
}

impl Rates {
    fn of(args: &BenchArgs, measured: &Measured) -> Self {
        let chunks = args.items.div_ceil(u64::from(args.batch_size.max(1))) as f64;
        let items = args.items as f64;
        Self {
            items_per_second: items / measured.elapsed.as_secs_f64(),
            chunks_per_second: chunks / measured.elapsed.as_secs_f64(),
            direct_items_per_second: items / measured.direct.as_secs_f64(),
            direct_chunks_per_second: chunks / measured.direct.as_secs_f64(),
        }
    }

    fn engine_to_direct(&self) -> f64 {
        self.items_per_second / self.direct_items_per_second
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn json_report(args: &BenchArgs, measured: &Measured) -> serde_json::Value {
    let rates = Rates::of(args, measured);
    let latencies = &measured.latencies;
    json!({
        "items": args.items,
        "batchSize": args.batch_size,
        "concurrency": args.concurrency,
        "status": measured.batch.status.as_str(),
        "succeeded": measured.batch.succeeded_items,
        "seconds": measured.elapsed.as_secs_f64(),
        "submitSeconds": measured.submitted_after.as_secs_f64(),
        "itemsPerSecond": rates.items_per_second,
        "chunkExecutionsPerSecond": rates.chunks_per_second,
        "peakRssBytes": measured.peak_rss,
        "export": {
            "items": measured.export.items,
            "seconds": measured.export.elapsed.as_secs_f64(),
            "itemsPerSecond": measured.export.items as f64 / measured.export.elapsed.as_secs_f64(),
            "residentGrowthBytes": measured.export.resident_growth,
        },
        "direct": {
            "seconds": measured.direct.as_secs_f64(),
            "itemsPerSecond": rates.direct_items_per_second,
            "chunksPerSecond": rates.direct_chunks_per_second,
        },
        "engineToDirect": rates.engine_to_direct(),
        "statusLatencyMs": {
            "samples": latencies.len(),
            "p50": ms(percentile(latencies, 0.5)),
            "p99": ms(percentile(latencies, 0.99)),
            "max": ms(percentile(latencies, 1.0)),
        },
    })
}

fn print_text_report(args: &BenchArgs, measured: &Measured) {
    let rates = Rates::of(args, measured);
    let latencies = &measured.latencies;
    println!(
        "{} items, batch size {}, concurrency {}: {} ({} succeeded)",
        args.items,
        args.batch_size,
        args.concurrency,
        measured.batch.status,
        measured.batch.succeeded_items
    );
    println!(
        "end to end   {:.2} s ({:.0} items/s, {:.0} chunk executions/s; submission took {:.2} s)",
        measured.elapsed.as_secs_f64(),
        rates.items_per_second,
        rates.chunks_per_second,
        measured.submitted_after.as_secs_f64()
    );
    if let Some(bytes) = measured.peak_rss {
        println!("peak RSS     {:.1} MB", bytes as f64 / 1e6);
    }
    println!(
        "GetBatchStatus while running: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} calls)",
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
        ms(percentile(latencies, 1.0)),
        latencies.len()
    );
    let export = &measured.export;
    println!(
        "export       {} items in {:.2} s ({:.0} items/s, JSON Lines); resident memory +{:.1} MB at most",
        export.items,
        export.elapsed.as_secs_f64(),
        export.items as f64 / export.elapsed.as_secs_f64(),
        export.resident_growth.unwrap_or(0) as f64 / 1e6
    );
    println!(
        "direct       {:.2} s ({:.0} items/s, {:.0} chunks/s): the same rows written with no engine, gRPC or tasks",
        measured.direct.as_secs_f64(),
        rates.direct_items_per_second,
        rates.direct_chunks_per_second
    );
    println!("engine / direct {:.0}%", rates.engine_to_direct() * 100.0);
}

fn report(args: &BenchArgs, mut measured: Measured) -> anyhow::Result<()> {
    measured.latencies.sort();
    if args.json {
        println!("{}", json_report(args, &measured));
    } else {
        print_text_report(args, &measured);
    }
    let batch = &measured.batch;
    if measured.export.items != args.items {
        anyhow::bail!(
            "expected {} exported items, got {}",
            args.items,
            measured.export.items
        );
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
