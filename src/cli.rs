//! The command-line clients: `submit`, `status`, `watch`, `items`, `cancel`. Human output by
//! default, `--json` for scripts.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::{Code, Status};

use crate::config::{BatchArgs, ItemsArgs, SubmitArgs};
use crate::domain::{Batch, ItemRecord, ItemStatus, MAX_ITEMS_PER_REQUEST};
use crate::grpc::client::AdminClient;

/// Items sent per `AppendBatchItems` call when a file is too large for one `SubmitBatch`.
const ITEMS_PER_PART: usize = 50_000;
/// Attempts per call on transient errors; every call is idempotent.
const CALL_ATTEMPTS: u32 = 5;
const ITEMS_PER_PAGE: u32 = 1000;

fn batch_json(batch: &Batch) -> serde_json::Value {
    json!({
        "batchId": batch.batch_id.as_str(),
        "status": batch.status.as_str(),
        "totalItems": batch.total_items,
        "receivedItems": batch.received_items,
        "succeededItems": batch.succeeded_items,
        "failedItems": batch.failed_items,
        "cancelledItems": batch.cancelled_items,
        "pendingItems": batch.pending_items(),
        "totalChunks": batch.total_chunks,
        "completedChunks": batch.completed_chunks,
        "batchSize": batch.batch_size,
        "createdAt": batch.created_at.to_rfc3339(),
        "updatedAt": batch.updated_at.to_rfc3339(),
        "completedAt": batch.completed_at.map(|t| t.to_rfc3339()),
    })
}

fn print_batch(batch: &Batch) {
    println!("batch      {}", batch.batch_id);
    println!("status     {}", batch.status);
    println!(
        "items      {} total: {} succeeded, {} failed, {} cancelled, {} pending",
        batch.total_items,
        batch.succeeded_items,
        batch.failed_items,
        batch.cancelled_items,
        batch.pending_items()
    );
    println!(
        "chunks     {} of {} done (batch size {})",
        batch.completed_chunks, batch.total_chunks, batch.batch_size
    );
    println!("created    {}", batch.created_at.to_rfc3339());
    if let Some(completed_at) = batch.completed_at {
        println!("completed  {}", completed_at.to_rfc3339());
    }
}

fn describe(status: Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// Retries an idempotent call on transient errors with exponential backoff.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(status) if is_transient(&status) && attempt < CALL_ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

fn open_lines(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
}

/// Reads IDs in groups of `group` without holding the whole file.
fn for_each_group(
    path: &Path,
    group: usize,
    mut each: impl FnMut(Vec<String>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut ids = Vec::with_capacity(group.min(MAX_ITEMS_PER_REQUEST));
    for line in open_lines(path)?.lines() {
        let line = line.context("reading the items file")?;
        let id = line.strip_suffix('\r').unwrap_or(&line);
        if id.trim().is_empty() {
            continue;
        }
        ids.push(id.to_owned());
        if ids.len() == group {
            each(std::mem::take(&mut ids))?;
        }
    }
    if !ids.is_empty() {
        each(ids)?;
    }
    Ok(())
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let batch_id = args
        .batch_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut client = AdminClient::connect(&args.client.server).await?;

    // Small files go in one SubmitBatch; larger ones are counted first, then streamed in parts
    // so the whole file is never in memory.
    let mut total = 0u64;
    if args.items_file != Path::new("-") {
        for_each_group(&args.items_file, ITEMS_PER_PART, |ids| {
            total += ids.len() as u64;
            Ok(())
        })?;
    }
    let submitted = if args.items_file == Path::new("-") || total <= MAX_ITEMS_PER_REQUEST as u64 {
        let mut ids = Vec::new();
        for_each_group(&args.items_file, usize::MAX, |group| {
            ids = group;
            Ok(())
        })?;
        if ids.len() > MAX_ITEMS_PER_REQUEST {
            bail!("standard input holds more than {MAX_ITEMS_PER_REQUEST} items; pass a file to send it in parts");
        }
        with_retries(|| {
            let mut client = client.clone();
            let ids = ids.clone();
            let batch_id = batch_id.clone();
            async move { client.submit(&batch_id, ids, args.batch_size).await }
        })
        .await
        .map_err(describe)?
    } else {
        let progress = (!args.client.json).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("uploading {bar:40} {pos}/{len} items")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let (sender, mut parts) = tokio::sync::mpsc::channel::<Vec<String>>(2);
        let path = args.items_file.clone();
        let reader = tokio::task::spawn_blocking(move || {
            for_each_group(&path, ITEMS_PER_PART, |ids| {
                sender
                    .blocking_send(ids)
                    .map_err(|_| anyhow::anyhow!("upload stopped"))
            })
        });
        let mut last = None;
        let mut part_number = 0u64;
        while let Some(ids) = parts.recv().await {
            part_number += 1;
            let count = ids.len() as u64;
            let sent = with_retries(|| {
                let mut client = client.clone();
                let ids = ids.clone();
                let batch_id = batch_id.clone();
                async move {
                    client
                        .append(&batch_id, total, args.batch_size, part_number, ids)
                        .await
                }
            })
            .await
            .map_err(describe)?;
            if let Some(bar) = &progress {
                bar.inc(count);
            }
            last = Some(sent);
        }
        reader.await??;
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        last.context("the items file holds no item IDs")?
    };

    if args.client.json && !args.watch {
        println!(
            "{}",
            json!({
                "batchId": submitted.batch_id,
                "totalItems": submitted.total_items,
                "totalChunks": submitted.total_chunks,
                "created": submitted.created,
            })
        );
    } else if !args.client.json {
        let verb = if submitted.created {
            "submitted"
        } else {
            "already submitted"
        };
        println!(
            "{verb} batch {} ({} items, {} chunks)",
            submitted.batch_id, submitted.total_items, submitted.total_chunks
        );
    }
    if args.watch {
        watch_batch(&mut client, &submitted.batch_id, args.client.json).await?;
    }
    Ok(())
}

pub async fn status(args: BatchArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(&args.client.server).await?;
    let batch = client.status(&args.batch_id).await.map_err(describe)?;
    if args.client.json {
        println!("{}", batch_json(&batch));
    } else {
        print_batch(&batch);
    }
    Ok(())
}

pub async fn cancel(args: BatchArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(&args.client.server).await?;
    let batch = client.cancel(&args.batch_id).await.map_err(describe)?;
    if args.client.json {
        println!("{}", batch_json(&batch));
    } else {
        print_batch(&batch);
    }
    Ok(())
}

pub async fn watch(args: BatchArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(&args.client.server).await?;
    watch_batch(&mut client, &args.batch_id, args.client.json).await
}

async fn watch_batch(client: &mut AdminClient, batch_id: &str, json: bool) -> anyhow::Result<()> {
    let mut watch = client.watch(batch_id).await.map_err(describe)?;
    let mut last = None;
    let bar = (!json).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    while let Some(batch) = watch.next().await.map_err(describe)? {
        if let Some(bar) = &bar {
            bar.set_length(batch.total_items);
            bar.set_position(batch.total_items - batch.pending_items());
            bar.set_message(format!(
                "{} ({} failed, {} cancelled)",
                batch.status, batch.failed_items, batch.cancelled_items
            ));
        } else {
            println!("{}", batch_json(&batch));
        }
        last = Some(batch);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
        if let Some(batch) = &last {
            let elapsed = batch
                .completed_at
                .map(|done| (done.0 - batch.created_at.0) as f64 / 1e6);
            print_batch(batch);
            if let Some(seconds) = elapsed {
                println!("took       {seconds:.2}s");
            }
        }
    }
    Ok(())
}

pub async fn items(args: ItemsArgs) -> anyhow::Result<()> {
    let status = match &args.status {
        Some(name) => Some(ItemStatus::from_name(name).with_context(|| {
            format!("--status must be pending, succeeded, failed or cancelled, not {name:?}")
        })?),
        None => None,
    };
    let mut client = AdminClient::connect(&args.client.server).await?;
    let mut token = String::new();
    let mut shown = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let (items, next) = client
            .items(&args.batch_id, status, ITEMS_PER_PAGE, token)
            .await
            .map_err(describe)?;
        for item in items {
            if shown == limit {
                return Ok(());
            }
            write_item(&mut out, &item, args.client.json)?;
            shown += 1;
        }
        if next.is_empty() {
            return Ok(());
        }
        token = next;
    }
}

fn write_item(out: &mut impl Write, item: &ItemRecord, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            json!({
                "itemId": item.item_id.as_str(),
                "status": item.status.as_str(),
                "error": item.error,
                "attempts": item.attempts,
                "chunk": item.chunk,
            })
        )?;
    } else {
        writeln!(
            out,
            "{}\t{}\tattempts={}\tchunk={}\t{}",
            item.item_id,
            item.status,
            item.attempts,
            item.chunk,
            item.error.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}
