//! The command-line clients: `submit` (from a file, or by reference to an S3 object the server
//! reads), `status`, `watch`, `items`, `export`, `cancel`, and `job-items` for AWS Batch jobs. Human
//! output by default, `--json` for scripts. Inputs are parsed into domain values before
//! anything is sent, and refusals name what the user typed: the flag, or the items file's line.

mod export;
mod items_file;
mod job_items;
mod watch;

pub use self::export::export;
pub use self::job_items::job_items;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use self::items_file::ItemsSource;
use self::watch::Watch;
use crate::config::{
    BatchArgs, BatchesArgs, ClientArgs, ItemsArgs, RedriveArgs, SubmitArgs, UpdateArgs, WatchArgs,
};
use crate::domain::{
    parse_max_concurrency, Batch, BatchId, BatchSize, BatchSizeError, BatchStatus, CallbackUrl,
    CallbackUrlError, FailureBudget, IdError, ItemIdsError, ItemRecord, ItemStatus,
    MaxConcurrencyError, NewPart, PartError, PercentageError, MAX_ITEMS_PER_REQUEST,
};
use crate::grpc::client::{
    AdminClient, BatchSubmission, ClientError, ReferenceSubmission, Submitted,
};
use crate::items_uri::{ItemsFormat, ItemsReference, ItemsUri, ReferenceRule};
use crate::store::{BatchQuery, ItemQuery};

/// Items sent per `AppendBatchItems` call when a file is too large for one `SubmitBatch`.
const ITEMS_PER_PART: usize = 50_000;
/// Attempts per call on transient errors; every call is idempotent.
const CALL_ATTEMPTS: u32 = 5;
const ITEMS_PER_PAGE: u32 = 1000;
const BATCHES_PER_PAGE: u32 = 100;

/// How a command prints: for people, or one JSON object per line for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Human,
    Json,
}

impl Output {
    fn of(client: &ClientArgs) -> Self {
        if client.json {
            Self::Json
        } else {
            Self::Human
        }
    }
}

/// A command-line input that breaks a rule, named as the user gave it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    /// A flag or argument: `--batch-size: must be an integer between 1 and 1000`.
    #[error("{name}")]
    Argument {
        name: &'static str,
        #[source]
        rule: InputRule,
    },
    /// A line of the items file: `ids.txt line 7: must not be empty`.
    #[error("{file} line {line}")]
    Line {
        file: String,
        line: u64,
        #[source]
        rule: InputRule,
    },
    /// The items file as a whole: `ids.txt: must hold at least one item ID`.
    #[error("{file}")]
    File {
        file: String,
        #[source]
        rule: InputRule,
    },
}

/// The rule an input breaks.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputRule {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    ItemIds(#[from] ItemIdsError),
    #[error(transparent)]
    BatchSize(#[from] BatchSizeError),
    #[error(transparent)]
    Part(#[from] PartError),
    #[error(transparent)]
    MaxConcurrency(#[from] MaxConcurrencyError),
    #[error(transparent)]
    Percentage(#[from] PercentageError),
    #[error(transparent)]
    CallbackUrl(#[from] CallbackUrlError),
    #[error("must be pending, succeeded, failed or cancelled, not {0:?}")]
    ItemStatus(String),
    #[error("must be pending, running, paused, completed, completed_with_failures, failed or cancelled, not {0:?}")]
    BatchStatus(String),
    #[error(transparent)]
    Reference(#[from] ReferenceRule),
}

fn argument(name: &'static str, rule: impl Into<InputRule>) -> InputError {
    InputError::Argument {
        name,
        rule: rule.into(),
    }
}

fn batch_id_argument(raw: &str) -> Result<BatchId, InputError> {
    BatchId::parse(raw).map_err(|rule| argument("BATCH_ID", rule))
}

/// A batch's pace for people: `120.5 items/s, about 3m 20s left`.
fn pace(batch: &Batch) -> String {
    let rate = format!("{:.1} items/s", batch.progress.items_per_second);
    match batch.progress.eta_seconds {
        Some(seconds) => format!(
            "{rate}, about {} left",
            humantime::format_duration(Duration::from_secs(seconds))
        ),
        None => rate,
    }
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
    match batch.max_concurrency {
        Some(limit) => println!("limit      {limit} chunks in flight at once"),
        None => println!("limit      the server's default"),
    }
    if batch.failure_budget.is_set() {
        println!(
            "budget     stops past {} failed items",
            batch.failure_budget
        );
    }
    if let Some(reason) = &batch.failure_reason {
        println!("stopped    {reason}");
    }
    if batch.redrive_count > 0 {
        println!("redriven   {} times", batch.redrive_count);
    }
    if let Some(url) = &batch.callback.url {
        let attempts = match batch.callback.attempts {
            0 => String::new(),
            1 => ", 1 attempt".to_owned(),
            n => format!(", {n} attempts"),
        };
        let error = match &batch.callback.last_error {
            Some(error) => format!(", last: {error}"),
            None => String::new(),
        };
        println!(
            "callback   {} {}{attempts}{error}",
            batch.callback.status.as_str(),
            url.as_str()
        );
    }
    println!("created    {}", batch.created_at.to_rfc3339());
    if let Some(completed_at) = batch.completed_at {
        println!("completed  {}", completed_at.to_rfc3339());
    }
    println!("rate       {}", pace(batch));
    for (index, error) in batch.progress.top_errors.iter().enumerate() {
        let label = if index == 0 { "errors" } else { "" };
        println!("{label:<10} {:>8}  {}", error.count, error.message);
    }
}

/// Retries an idempotent call on transient errors with exponential backoff.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if err.is_transient() && attempt < CALL_ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Runs `submit`: parses the items file and submits the batch, in parts when it is large.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let batch_id = match &args.batch_id {
        Some(raw) => BatchId::parse(raw.as_str()).map_err(|rule| argument("--batch-id", rule))?,
        None => BatchId::generate(),
    };
    let batch_size = BatchSize::parse(u64::from(args.batch_size))
        .map_err(|rule| argument("--batch-size", rule))?;
    let max_concurrency = match args.max_concurrency {
        Some(0) | None => None,
        Some(raw) => parse_max_concurrency(u64::from(raw))
            .map_err(|rule| argument("--max-concurrency", rule))?,
    };
    let failure_budget = FailureBudget::parse(
        args.tolerated_failure_percentage,
        args.tolerated_failure_count,
    )
    .map_err(|rule| argument("--tolerated-failure-percentage", rule))?;
    let callback_url = args
        .callback_url
        .clone()
        .map(CallbackUrl::parse)
        .transpose()
        .map_err(|rule| argument("--callback-url", rule))?;
    if let Some(items) = items_reference(&args)? {
        let submission = ReferenceSubmission {
            batch_id,
            batch_size,
            items,
            max_concurrency,
            failure_budget,
            callback_url,
        };
        let mut client = args.client.connect().await?;
        let submitted = with_retries(|| {
            let mut client = client.clone();
            let submission = submission.clone();
            async move { client.submit_by_reference(submission).await }
        })
        .await?;
        return report_and_watch(&mut client, &submitted, &args).await;
    }
    let source = ItemsSource {
        path: args
            .items_file
            .clone()
            .context("--items-file or --items-uri is required")?,
    };
    // Small files go in one SubmitBatch; larger ones are checked and counted first, then
    // streamed in parts so the whole file is never in memory.
    let total = if source.is_stdin() {
        None
    } else {
        Some(source.check()?)
    };
    let mut client = args.client.connect().await?;
    let submitted = match total {
        Some(total) if total > MAX_ITEMS_PER_REQUEST as u64 => {
            let upload = Upload {
                batch_id,
                batch_size,
                total,
                max_concurrency,
                failure_budget,
                callback_url,
                output: Output::of(&args.client),
            };
            upload.send(&client, source).await?
        }
        _ => {
            let submission = BatchSubmission {
                batch_id,
                batch_size,
                items: source.read_all()?,
                max_concurrency,
                failure_budget,
                callback_url,
            };
            with_retries(|| {
                let mut client = client.clone();
                let submission = submission.clone();
                async move { client.submit(submission).await }
            })
            .await?
        }
    };
    report_and_watch(&mut client, &submitted, &args).await
}

/// `--items-uri` with its options, parsed; `None` when the items come from a file.
fn items_reference(args: &SubmitArgs) -> Result<Option<ItemsReference>, InputError> {
    let Some(raw) = &args.items_uri else {
        return Ok(None);
    };
    let uri = ItemsUri::parse(raw).map_err(|rule| argument("--items-uri", rule))?;
    let format = args
        .items_format
        .as_deref()
        .and_then(ItemsFormat::from_name);
    ItemsReference::new(uri, format, args.items_header)
        .map(Some)
        .map_err(|rule| argument("--items-header", rule))
}

async fn report_and_watch(
    client: &mut AdminClient,
    submitted: &Submitted,
    args: &SubmitArgs,
) -> anyhow::Result<()> {
    report_submitted(submitted, args);
    if args.watch {
        let watch = Watch {
            batch_id: submitted.batch_id.clone(),
            output: Output::of(&args.client),
            reconnect_timeout: args.reconnect.reconnect_timeout,
        };
        watch.run(client).await?;
    }
    Ok(())
}

fn report_submitted(submitted: &Submitted, args: &SubmitArgs) {
    if args.client.json && !args.watch {
        println!(
            "{}",
            json!({
                "batchId": submitted.batch_id.as_str(),
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
}

/// A file too large for one call, sent as numbered parts of [`ITEMS_PER_PART`] items.
struct Upload {
    batch_id: BatchId,
    batch_size: BatchSize,
    total: u64,
    max_concurrency: Option<u32>,
    failure_budget: FailureBudget,
    callback_url: Option<CallbackUrl>,
    output: Output,
}

impl Upload {
    /// Reads the file on a blocking thread while the parts go out one at a time.
    async fn send(self, client: &AdminClient, source: ItemsSource) -> anyhow::Result<Submitted> {
        let bar = (self.output == Output::Human).then(|| {
            let bar = ProgressBar::new(self.total);
            bar.set_style(
                ProgressStyle::with_template("uploading {bar:40} {pos}/{len} items")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let (sender, mut parts) = tokio::sync::mpsc::channel::<NewPart>(2);
        let (batch_id, batch_size, total) = (self.batch_id.clone(), self.batch_size, self.total);
        let max_concurrency = self.max_concurrency;
        let failure_budget = self.failure_budget;
        let callback_url = self.callback_url.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut part_number = 0;
            source.for_each_group(ITEMS_PER_PART, |group| {
                part_number += 1;
                let items = source.parse(group)?;
                let part = NewPart::new(batch_id.clone(), total, batch_size, part_number, items)
                    .map_err(|rule| argument("--items-file", rule))?
                    .with_max_concurrency(max_concurrency)
                    .with_failure_budget(failure_budget)
                    .with_callback_url(callback_url.clone());
                sender
                    .blocking_send(part)
                    .map_err(|_| anyhow::anyhow!("upload stopped"))
            })
        });
        let mut last = None;
        while let Some(part) = parts.recv().await {
            let count = part.items.len() as u64;
            let sent = with_retries(|| {
                let mut client = client.clone();
                let part = part.clone();
                async move { client.append(part).await }
            })
            .await?;
            if let Some(bar) = &bar {
                bar.inc(count);
            }
            last = Some(sent);
        }
        reader.await??;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        last.context("the items file holds no item IDs")
    }
}

/// A command that names one batch, calls the server once, and shows the batch it answers.
#[derive(Clone, Copy)]
enum BatchCall {
    Status,
    Cancel,
    Pause,
    Resume,
}

async fn call_on_batch(args: BatchArgs, call: BatchCall) -> anyhow::Result<()> {
    let batch_id = batch_id_argument(&args.batch_id)?;
    let mut client = args.client.connect().await?;
    let batch = match call {
        BatchCall::Status => client.status(&batch_id).await?,
        BatchCall::Cancel => client.cancel(&batch_id).await?,
        BatchCall::Pause => client.pause(&batch_id).await?,
        BatchCall::Resume => client.resume(&batch_id).await?,
    };
    show(&batch, Output::of(&args.client));
    Ok(())
}

/// Runs `status`: shows a batch's status.
pub async fn status(args: BatchArgs) -> anyhow::Result<()> {
    call_on_batch(args, BatchCall::Status).await
}

/// Runs `cancel`: cancels a batch.
pub async fn cancel(args: BatchArgs) -> anyhow::Result<()> {
    call_on_batch(args, BatchCall::Cancel).await
}

/// Runs `update`: sets a running batch's limit on chunk executions in flight.
pub async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let batch_id = batch_id_argument(&args.batch_id)?;
    let limit = parse_max_concurrency(u64::from(args.max_concurrency))
        .map_err(|rule| argument("--max-concurrency", rule))?;
    let mut client = args.client.connect().await?;
    let batch = client.update(&batch_id, limit).await?;
    show(&batch, Output::of(&args.client));
    Ok(())
}

/// Runs `pause`: pauses a batch.
pub async fn pause(args: BatchArgs) -> anyhow::Result<()> {
    call_on_batch(args, BatchCall::Pause).await
}

/// Runs `resume`: resumes a paused batch.
pub async fn resume(args: BatchArgs) -> anyhow::Result<()> {
    call_on_batch(args, BatchCall::Resume).await
}

/// Runs `redrive`: re-runs an ended batch's failed items, then follows it with `--watch`.
pub async fn redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let batch_id = batch_id_argument(&args.batch_id)?;
    let output = Output::of(&args.client);
    let mut client = args.client.connect().await?;
    let (batch, redriven) = client.redrive(&batch_id, args.include_cancelled).await?;
    match output {
        Output::Json if !args.watch => println!(
            "{}",
            json!({ "batch": batch.to_json(), "redrivenItems": redriven })
        ),
        Output::Json => {}
        Output::Human => {
            println!(
                "redriving {redriven} items of batch {batch_id} (redrive {})",
                batch.redrive_count
            );
        }
    }
    if args.watch {
        let watch = Watch {
            batch_id,
            output,
            reconnect_timeout: args.reconnect.reconnect_timeout,
        };
        watch.run(&mut client).await?;
    }
    Ok(())
}

fn show(batch: &Batch, output: Output) {
    match output {
        Output::Json => println!("{}", batch.to_json()),
        Output::Human => print_batch(batch),
    }
}

/// Runs `watch`: follows a batch until it ends.
pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let watch = Watch {
        batch_id: batch_id_argument(&args.batch_id)?,
        output: Output::of(&args.client),
        reconnect_timeout: args.reconnect.reconnect_timeout,
    };
    let mut client = args.client.connect().await?;
    watch.run(&mut client).await
}

/// Runs `batches`: lists batches, newest first, one line each (or one JSON object each).
pub async fn batches(args: BatchesArgs) -> anyhow::Result<()> {
    let status = match &args.status {
        Some(name) => Some(
            BatchStatus::from_name(&name.to_ascii_uppercase())
                .ok_or_else(|| argument("--status", InputRule::BatchStatus(name.clone())))?,
        ),
        None => None,
    };
    let mut client = args.client.connect().await?;
    let output = Output::of(&args.client);
    let mut page_token = None;
    let mut shown = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let query = BatchQuery {
            status,
            page_size: BATCHES_PER_PAGE,
            page_token,
        };
        let page = client.batches(query).await?;
        for batch in page.entries {
            if shown == limit {
                return Ok(());
            }
            match output {
                Output::Json => writeln!(out, "{}", batch.to_json())?,
                Output::Human => writeln!(
                    out,
                    "{}\t{}\t{}/{} items done\t{} failed\tcreated {}",
                    batch.batch_id,
                    batch.status,
                    batch.total_items - batch.pending_items(),
                    batch.total_items,
                    batch.failed_items,
                    batch.created_at.to_rfc3339()
                )?,
            }
            shown += 1;
        }
        match page.next_page_token {
            Some(next) => page_token = Some(next),
            None => return Ok(()),
        }
    }
}

/// Runs `items`: lists a batch's items and their outcomes.
pub async fn items(args: ItemsArgs) -> anyhow::Result<()> {
    let status = match &args.status {
        Some(name) => Some(
            ItemStatus::from_name(name)
                .ok_or_else(|| argument("--status", InputRule::ItemStatus(name.clone())))?,
        ),
        None => None,
    };
    let batch_id = batch_id_argument(&args.batch_id)?;
    let mut client = args.client.connect().await?;
    let mut page_token = None;
    let mut shown = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let query = ItemQuery {
            batch_id: batch_id.clone(),
            status,
            page_size: ITEMS_PER_PAGE,
            page_token,
        };
        let page = client.items(query).await?;
        for item in page.entries {
            if shown == limit {
                return Ok(());
            }
            write_item(&mut out, &item, Output::of(&args.client))?;
            shown += 1;
        }
        match page.next_page_token {
            Some(next) => page_token = Some(next),
            None => return Ok(()),
        }
    }
}

fn write_item(out: &mut impl Write, item: &ItemRecord, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        writeln!(out, "{}", item.to_json())?;
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
