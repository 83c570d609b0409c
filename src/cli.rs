//! The command-line clients: `submit`, `status`, `watch`, `items`, `cancel`. Human output by
//! default, `--json` for scripts. Inputs are parsed into domain values before anything is sent,
//! and refusals name what the user typed: the flag, or the items file's line.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::Code;

use crate::config::{BatchArgs, ItemsArgs, SubmitArgs, WatchArgs};
use crate::domain::{
    parse_item_ids, Batch, BatchId, BatchSize, BatchSizeError, IdError, ItemId, ItemIdsError,
    ItemRecord, ItemStatus, NewPart, PartError, MAX_ITEMS_PER_REQUEST,
};
use crate::grpc::client::{AdminClient, BatchSubmission, BatchWatch, ClientError, Submitted};
use crate::store::ItemQuery;

/// Items sent per `AppendBatchItems` call when a file is too large for one `SubmitBatch`.
const ITEMS_PER_PART: usize = 50_000;
/// Attempts per call on transient errors; every call is idempotent.
const CALL_ATTEMPTS: u32 = 5;
const ITEMS_PER_PAGE: u32 = 1000;
/// First and longest pause before a watch tries to reach a server that went away again.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(500);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(8);

/// A command-line input that breaks a rule, named as the user gave it.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
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
pub enum InputRule {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    ItemIds(#[from] ItemIdsError),
    #[error(transparent)]
    BatchSize(#[from] BatchSizeError),
    #[error(transparent)]
    Part(#[from] PartError),
    #[error("must be pending, succeeded, failed or cancelled, not {0:?}")]
    ItemStatus(String),
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

/// Where item IDs come from: a file, or standard input (`-`).
struct ItemsSource {
    path: PathBuf,
}

/// IDs read from consecutive non-blank lines, with the line each came from.
struct IdGroup {
    ids: Vec<String>,
    lines: Vec<u64>,
}

impl ItemsSource {
    fn is_stdin(&self) -> bool {
        self.path == Path::new("-")
    }

    /// How errors name the source.
    fn name(&self) -> String {
        if self.is_stdin() {
            "standard input".to_owned()
        } else {
            self.path.display().to_string()
        }
    }

    fn open(&self) -> anyhow::Result<Box<dyn BufRead>> {
        if self.is_stdin() {
            return Ok(Box::new(BufReader::new(std::io::stdin())));
        }
        let file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    }

    /// Reads IDs in groups of `group` without holding the whole file; blank lines are skipped.
    fn for_each_group(
        &self,
        group: usize,
        mut each: impl FnMut(IdGroup) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let capacity = group.min(MAX_ITEMS_PER_REQUEST + 1);
        let empty = || IdGroup {
            ids: Vec::with_capacity(capacity),
            lines: Vec::with_capacity(capacity),
        };
        let mut current = empty();
        for (index, line) in self.open()?.lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", self.name()))?;
            let id = line.strip_suffix('\r').unwrap_or(&line);
            if id.trim().is_empty() {
                continue;
            }
            current.ids.push(id.to_owned());
            current.lines.push(index as u64 + 1);
            if current.ids.len() == group {
                each(std::mem::replace(&mut current, empty()))?;
            }
        }
        if !current.ids.is_empty() {
            each(current)?;
        }
        Ok(())
    }

    /// Parses a group's IDs, naming the line of the first one refused.
    fn parse(&self, group: IdGroup) -> Result<Vec<ItemId>, InputError> {
        let IdGroup { ids, lines } = group;
        parse_item_ids(ids).map_err(|err| {
            let file = self.name();
            match (err.index(), err) {
                (Some(index), ItemIdsError::InvalidId { rule, .. }) => InputError::Line {
                    file,
                    line: lines[index],
                    rule: rule.into(),
                },
                (Some(index), other) => InputError::Line {
                    file,
                    line: lines[index],
                    rule: other.into(),
                },
                (None, other) => InputError::File {
                    file,
                    rule: other.into(),
                },
            }
        })
    }

    /// Checks every line of a file and counts its IDs, before anything is sent.
    fn check(&self) -> anyhow::Result<u64> {
        let mut total = 0u64;
        self.for_each_group(ITEMS_PER_PART, |group| {
            total += group.ids.len() as u64;
            self.parse(group)?;
            Ok(())
        })?;
        if total == 0 {
            return Err(InputError::File {
                file: self.name(),
                rule: ItemIdsError::Empty.into(),
            }
            .into());
        }
        Ok(total)
    }

    /// Every ID as one group, for one `SubmitBatch`.
    fn read_all(&self) -> anyhow::Result<Vec<ItemId>> {
        let mut all = IdGroup {
            ids: Vec::new(),
            lines: Vec::new(),
        };
        self.for_each_group(MAX_ITEMS_PER_REQUEST + 1, |group| {
            if !all.ids.is_empty() {
                anyhow::bail!(
                    "{} holds more than {MAX_ITEMS_PER_REQUEST} items; pass a file to send it in parts",
                    self.name()
                );
            }
            all = group;
            Ok(())
        })?;
        Ok(self.parse(all)?)
    }
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let batch_id = match &args.batch_id {
        Some(raw) => BatchId::parse(raw.as_str()).map_err(|rule| argument("--batch-id", rule))?,
        None => BatchId::generate(),
    };
    let batch_size = BatchSize::parse(u64::from(args.batch_size))
        .map_err(|rule| argument("--batch-size", rule))?;
    let source = ItemsSource {
        path: args.items_file.clone(),
    };
    // Small files go in one SubmitBatch; larger ones are checked and counted first, then
    // streamed in parts so the whole file is never in memory.
    let total = if source.is_stdin() {
        None
    } else {
        Some(source.check()?)
    };
    let mut client = AdminClient::connect(&args.client.server).await?;
    let submitted = match total {
        Some(total) if total > MAX_ITEMS_PER_REQUEST as u64 => {
            let upload = Upload {
                batch_id,
                batch_size,
                total,
                progress: !args.client.json,
            };
            upload.send(&client, source).await?
        }
        _ => {
            let submission = BatchSubmission {
                batch_id,
                batch_size,
                items: source.read_all()?,
            };
            with_retries(|| {
                let mut client = client.clone();
                let submission = submission.clone();
                async move { client.submit(submission).await }
            })
            .await?
        }
    };
    report_submitted(&submitted, &args);
    if args.watch {
        let watch = Watch {
            batch_id: submitted.batch_id,
            json: args.client.json,
            reconnect_timeout: args.reconnect.reconnect_timeout,
        };
        watch.run(&mut client).await?;
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
    progress: bool,
}

impl Upload {
    /// Reads the file on a blocking thread while the parts go out one at a time.
    async fn send(self, client: &AdminClient, source: ItemsSource) -> anyhow::Result<Submitted> {
        let bar = self.progress.then(|| {
            let bar = ProgressBar::new(self.total);
            bar.set_style(
                ProgressStyle::with_template("uploading {bar:40} {pos}/{len} items")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let (sender, mut parts) = tokio::sync::mpsc::channel::<NewPart>(2);
        let (batch_id, batch_size, total) = (self.batch_id.clone(), self.batch_size, self.total);
        let reader = tokio::task::spawn_blocking(move || {
            let mut part_number = 0;
            source.for_each_group(ITEMS_PER_PART, |group| {
                part_number += 1;
                let items = source.parse(group)?;
                let part = NewPart::new(batch_id.clone(), total, batch_size, part_number, items)
                    .map_err(|rule| argument("--items-file", rule))?;
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

pub async fn status(args: BatchArgs) -> anyhow::Result<()> {
    let batch_id = batch_id_argument(&args.batch_id)?;
    let mut client = AdminClient::connect(&args.client.server).await?;
    let batch = client.status(&batch_id).await?;
    show(&batch, args.client.json);
    Ok(())
}

pub async fn cancel(args: BatchArgs) -> anyhow::Result<()> {
    let batch_id = batch_id_argument(&args.batch_id)?;
    let mut client = AdminClient::connect(&args.client.server).await?;
    let batch = client.cancel(&batch_id).await?;
    show(&batch, args.client.json);
    Ok(())
}

fn show(batch: &Batch, json: bool) {
    if json {
        println!("{}", batch_json(batch));
    } else {
        print_batch(batch);
    }
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let watch = Watch {
        batch_id: batch_id_argument(&args.batch_id)?,
        json: args.client.json,
        reconnect_timeout: args.reconnect.reconnect_timeout,
    };
    let mut client = AdminClient::connect(&args.client.server).await?;
    watch.run(&mut client).await
}

/// Following one batch to its end: a progress bar, or a JSON line per snapshot.
struct Watch {
    batch_id: BatchId,
    json: bool,
    /// How long to keep trying to reach a server that went away before giving up.
    reconnect_timeout: Duration,
}

/// How one attempt to follow the batch ended short of its terminal snapshot.
enum Interrupted {
    /// The server went away (it stopped, restarted, or the connection broke): worth another
    /// attempt. `reached_server` says whether this attempt had opened its watch, so that the
    /// pauses start over.
    ServerAway {
        reached_server: bool,
        cause: ClientError,
    },
    /// The server ended the stream before the batch ended.
    EndedEarly,
    /// No new attempt can cure this (a batch that does not exist stays so).
    Failed(ClientError),
}

impl Watch {
    /// Follows the batch until its terminal snapshot. When the server goes away (it stops,
    /// restarts, or the connection breaks), says so on stderr and tries again with a growing
    /// pause, for at most `reconnect_timeout` in a row; then fails naming the last error.
    async fn run(&self, client: &mut AdminClient) -> anyhow::Result<()> {
        let bar = (!self.json).then(progress_bar);
        let mut last = None;
        let mut delays = Backoff::new(self.reconnect_timeout);
        loop {
            let cause = match self.follow(client, bar.as_ref(), &mut last).await {
                Ok(()) => break,
                Err(Interrupted::Failed(err)) => return Err(err.into()),
                Err(Interrupted::EndedEarly) => {
                    delays = Backoff::new(self.reconnect_timeout);
                    anyhow::anyhow!("the server ended the watch before the batch ended")
                }
                Err(Interrupted::ServerAway {
                    reached_server,
                    cause,
                }) => {
                    if reached_server {
                        delays = Backoff::new(self.reconnect_timeout);
                    }
                    cause.into()
                }
            };
            let Some(delay) = delays.next() else {
                return Err(cause.context(format!(
                    "gave up watching batch {}: the server stayed unreachable for {}",
                    self.batch_id,
                    humantime::format_duration(self.reconnect_timeout)
                )));
            };
            let notice = format!(
                "lost the server ({cause:#}); trying again in {}",
                humantime::format_duration(delay)
            );
            match &bar {
                Some(bar) => bar.suspend(|| eprintln!("{notice}")),
                None => eprintln!("{notice}"),
            }
            tokio::time::sleep(delay).await;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
            if let Some(batch) = &last {
                print_summary(batch);
            }
        }
        Ok(())
    }

    /// One attempt: opens a watch and shows each snapshot until the terminal one.
    async fn follow(
        &self,
        client: &mut AdminClient,
        bar: Option<&ProgressBar>,
        last: &mut Option<Batch>,
    ) -> Result<(), Interrupted> {
        let mut stream: BatchWatch = client
            .watch(&self.batch_id)
            .await
            .map_err(|err| interruption(err, false))?;
        loop {
            match stream.next().await {
                Ok(Some(batch)) => {
                    show_progress(&batch, bar);
                    let terminal = batch.status.is_terminal();
                    *last = Some(batch);
                    if terminal {
                        return Ok(());
                    }
                }
                Ok(None) => return Err(Interrupted::EndedEarly),
                Err(err) => return Err(interruption(err, true)),
            }
        }
    }
}

/// Sorts an error that ended an attempt: the server going away is worth another attempt.
fn interruption(err: ClientError, reached_server: bool) -> Interrupted {
    if matches!(err.code(), Code::Unavailable | Code::Cancelled) {
        Interrupted::ServerAway {
            reached_server,
            cause: err,
        }
    } else {
        Interrupted::Failed(err)
    }
}

/// Pauses before new attempts: from [`RECONNECT_FIRST_DELAY`], doubling up to
/// [`RECONNECT_MAX_DELAY`], while their sum stays within the budget.
struct Backoff {
    next: Duration,
    left: Duration,
}

impl Backoff {
    fn new(budget: Duration) -> Self {
        Self {
            next: RECONNECT_FIRST_DELAY,
            left: budget,
        }
    }

    fn next(&mut self) -> Option<Duration> {
        if self.left.is_zero() {
            return None;
        }
        let delay = self.next.min(self.left);
        self.left -= delay;
        self.next = (self.next * 2).min(RECONNECT_MAX_DELAY);
        Some(delay)
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show_progress(batch: &Batch, bar: Option<&ProgressBar>) {
    match bar {
        Some(bar) => {
            bar.set_length(batch.total_items);
            bar.set_position(batch.total_items - batch.pending_items());
            bar.set_message(format!(
                "{} ({} failed, {} cancelled)",
                batch.status, batch.failed_items, batch.cancelled_items
            ));
        }
        None => println!("{}", batch_json(batch)),
    }
}

fn print_summary(batch: &Batch) {
    print_batch(batch);
    if let Some(done) = batch.completed_at {
        let seconds = (done.0 - batch.created_at.0) as f64 / 1e6;
        println!("took       {seconds:.2}s");
    }
}

pub async fn items(args: ItemsArgs) -> anyhow::Result<()> {
    let status = match &args.status {
        Some(name) => Some(
            ItemStatus::from_name(name)
                .ok_or_else(|| argument("--status", InputRule::ItemStatus(name.clone())))?,
        ),
        None => None,
    };
    let batch_id = batch_id_argument(&args.batch_id)?;
    let mut client = AdminClient::connect(&args.client.server).await?;
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
            write_item(&mut out, &item, args.client.json)?;
            shown += 1;
        }
        match page.next_page_token {
            Some(next) => page_token = Some(next),
            None => return Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnection_pauses_grow_and_stay_within_the_budget() {
        let delays: Vec<Duration> = std::iter::from_fn({
            let mut backoff = Backoff::new(Duration::from_secs(30));
            move || backoff.next()
        })
        .collect();
        let secs: Vec<f64> = delays.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 6.5]);
        assert_eq!(delays.iter().sum::<Duration>(), Duration::from_secs(30));
        assert_eq!(Backoff::new(Duration::ZERO).next(), None);
    }

    fn file_with(lines: &str) -> (tempfile::NamedTempFile, ItemsSource) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(lines.as_bytes()).unwrap();
        let source = ItemsSource {
            path: file.path().to_owned(),
        };
        (file, source)
    }

    #[test]
    fn a_bad_line_is_named_by_its_number_in_the_file() {
        let (_file, source) = file_with("a\n\nb\r\n\nb\n");
        let err = source.check().unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.ends_with(" line 5: duplicate item ID \"b\""),
            "{message}"
        );
        let (_file, source) = file_with("a\nb\tc\n");
        let message = format!("{:#}", source.check().unwrap_err());
        assert!(
            message.ends_with(" line 2: must not contain control characters (found U+0009)"),
            "{message}"
        );
    }

    #[test]
    fn a_file_without_ids_is_refused_and_blank_lines_are_skipped() {
        let (_file, source) = file_with("\n  \n\r\n");
        let message = format!("{:#}", source.check().unwrap_err());
        assert!(
            message.ends_with(": must hold at least one item ID"),
            "{message}"
        );
        let (_file, source) = file_with("one\n\ntwo\r\n");
        assert_eq!(source.check().unwrap(), 2);
        let ids: Vec<String> = source
            .read_all()
            .unwrap()
            .into_iter()
            .map(ItemId::into_string)
            .collect();
        assert_eq!(ids, vec!["one", "two"]);
    }
}
