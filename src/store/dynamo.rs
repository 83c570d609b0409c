//! The DynamoDB store: the only place DynamoDB items are mapped.
//!
//! Layout (cost is writes, so what is written per chunk rather than per item decides it):
//! - `BATCH_TABLE`, key `batchId`: one item per batch with its counters; `status` and
//!   `createdKey` feed the `by-status` index, `listPartition` and `createdKey` the `by-created`
//!   index (both keys-only, so counter updates never write to an index).
//! - `REQUEST_TABLE`, key `batchId` + `sk`:
//!   - `part#<n>`: one per part received (digest of its items, its chunk range);
//!   - `chunk#<n>#ids`: the chunk's item IDs joined by newlines, written once;
//!   - `chunk#<n>`: the chunk's stage, one status letter per item, failed items' messages,
//!     attempts and a version for optimistic concurrency; small, so rewriting it costs 1 unit.
//!
//! Recording a chunk is one transaction: the chunk state moves to RECORDED on the condition that
//! it was still open at the version read, and the batch counters are incremented. A replayed
//! update finds the chunk recorded and changes nothing; the terminal status is then set by a
//! conditional write that only one caller can win.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, PutRequest, ReturnValue, TransactWriteItem, Update, WriteRequest,
};
use futures::{stream, StreamExt, TryStreamExt};

use super::codec::{self, ChunkOutcomes, ItemPager};
use super::id_hashes::{self, PartIndex};
use super::rules::{self, judge_part, CancelRequest, PartVerdict, Progress};
use super::{
    AppendOutcome, BadPageToken, BatchQuery, BatchStore, CancelOutcome, Chunk, ChunkClaim,
    ChunkStage, ItemQuery, ListError, Page, RecordOutcome, StoreError,
};
use crate::domain::{Batch, BatchId, BatchStatus, ItemOutcome, ItemRecord, NewPart, Timestamp};

type Item = HashMap<String, AttributeValue>;

/// IDs whose hashes share one item (8 bytes each, under DynamoDB's 400 KB item limit).
const HASHES_PER_ITEM: usize = 48_000;
/// Most items in one `BatchWriteItem` request.
const BATCH_WRITE_LIMIT: usize = 25;
/// `BatchWriteItem` requests in flight at once while storing a part.
const BATCH_WRITES_IN_FLIGHT: usize = 8;
/// Rounds of retrying `UnprocessedItems` before giving up.
const UNPROCESSED_RETRIES: u32 = 10;
/// Attempts of an optimistic read-modify-write before reporting contention.
const OPTIMISTIC_ATTEMPTS: u32 = 8;
/// Chunk cancellations in flight at once.
const CANCELS_IN_FLIGHT: usize = 16;
/// Attempts the SDK makes per request (it backs off on throttling by itself).
const SDK_MAX_ATTEMPTS: u32 = 8;
const LIST_PARTITION: &str = "batches";
const BY_STATUS_INDEX: &str = "by-status";
const BY_CREATED_INDEX: &str = "by-created";

/// The stack's two tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoTables {
    /// `BATCH_TABLE`: one item per batch.
    pub batch_table: String,
    /// `REQUEST_TABLE`: parts and chunks.
    pub request_table: String,
}

/// What the store has sent, for cost measurement: write units as DynamoDB bills them (1 per
/// started KiB of each item written, doubled inside transactions) and request counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    pub write_units: u64,
    pub write_requests: u64,
    pub read_requests: u64,
}

#[derive(Debug, Default)]
struct Meter {
    write_units: AtomicU64,
    write_requests: AtomicU64,
    read_requests: AtomicU64,
}

impl Meter {
    fn read(&self) {
        self.read_requests.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, units: u64) {
        self.write_requests.fetch_add(1, Ordering::Relaxed);
        self.write_units.fetch_add(units, Ordering::Relaxed);
    }
}

/// The DynamoDB store. Cheap to clone.
#[derive(Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    tables: Arc<DynamoTables>,
    meter: Arc<Meter>,
}

fn unavailable<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(DisplayErrorContext(&err).to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("stored item has no valid {what}"))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn text<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => Err(corrupt(name)),
    }
}

fn number<T: FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().map_err(|_| corrupt(name)),
        _ => Err(corrupt(name)),
    }
}

fn optional_number<T: FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => number(item, name).map(Some),
    }
}

fn flag(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

/// DynamoDB's size of an item, for metering (attribute names plus values).
fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) => text.len(),
        AttributeValue::N(number) => number.len().div_ceil(2) + 1,
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        AttributeValue::B(blob) => blob.as_ref().len(),
        _ => 1,
    }
}

/// Write units of writing `item` once.
fn write_units(item: &Item) -> u64 {
    item_size(item).div_ceil(1024).max(1) as u64
}

fn part_sk(part: u64) -> String {
    format!("part#{part:020}")
}

fn hashes_sk(part: u64, segment: usize) -> String {
    format!("part#{part:020}#hashes#{segment:03}")
}

/// What a `part#<n>` or `part#<n>#hashes#<k>` key names.
enum PartKey {
    Part(u64),
    Hashes(u64),
}

fn part_of(sk: &str) -> Option<PartKey> {
    let rest = sk.strip_prefix("part#")?;
    match rest.split_once('#') {
        Some((number, segment)) if segment.starts_with("hashes#") => {
            Some(PartKey::Hashes(number.parse().ok()?))
        }
        None => Some(PartKey::Part(rest.parse().ok()?)),
        _ => None,
    }
}

fn chunk_sk(chunk: u64) -> String {
    format!("chunk#{chunk:020}")
}

fn ids_sk(chunk: u64) -> String {
    format!("chunk#{chunk:020}#ids")
}

/// The chunk index of a `chunk#<n>` or `chunk#<n>#ids` key.
fn chunk_of(sk: &str) -> Option<(u64, bool)> {
    let rest = sk.strip_prefix("chunk#")?;
    match rest.split_once('#') {
        Some((index, "ids")) => Some((index.parse().ok()?, true)),
        None => Some((rest.parse().ok()?, false)),
        _ => None,
    }
}

/// A batch item: the snapshot plus what only the store needs.
#[derive(Debug, Clone)]
struct BatchRecord {
    batch: Batch,
    cancel_requested: bool,
}

impl BatchRecord {
    fn from_item(item: &Item) -> Result<Self, StoreError> {
        let status = text(item, "status")?;
        Ok(Self {
            batch: Batch {
                batch_id: BatchId::parse(text(item, "batchId")?).map_err(|_| corrupt("batchId"))?,
                status: BatchStatus::from_name(status).ok_or_else(|| corrupt("status"))?,
                total_items: number(item, "totalItems")?,
                received_items: number(item, "receivedItems")?,
                succeeded_items: number(item, "succeededItems")?,
                failed_items: number(item, "failedItems")?,
                cancelled_items: number(item, "cancelledItems")?,
                total_chunks: number(item, "totalChunks")?,
                completed_chunks: number(item, "completedChunks")?,
                batch_size: number(item, "batchSize")?,
                created_at: Timestamp(number(item, "createdAt")?),
                updated_at: Timestamp(number(item, "updatedAt")?),
                completed_at: optional_number(item, "completedAt")?.map(Timestamp),
            },
            cancel_requested: flag(item, "cancelRequested"),
        })
    }

    fn new_item(part: &NewPart, now: Timestamp) -> Item {
        let id = part.batch_id.as_str();
        HashMap::from([
            ("batchId".to_owned(), s(id)),
            ("status".to_owned(), s(BatchStatus::Pending.as_str())),
            ("totalItems".to_owned(), n(part.total_items)),
            ("receivedItems".to_owned(), n(0)),
            ("succeededItems".to_owned(), n(0)),
            ("failedItems".to_owned(), n(0)),
            ("cancelledItems".to_owned(), n(0)),
            ("totalChunks".to_owned(), n(0)),
            ("completedChunks".to_owned(), n(0)),
            ("batchSize".to_owned(), n(part.batch_size.get())),
            ("cancelRequested".to_owned(), AttributeValue::Bool(false)),
            ("createdAt".to_owned(), n(now.0)),
            ("updatedAt".to_owned(), n(now.0)),
            ("createdKey".to_owned(), s(format!("{:020}#{id}", now.0))),
            ("listPartition".to_owned(), s(LIST_PARTITION)),
        ])
    }
}

/// A chunk's state item.
#[derive(Debug, Clone)]
struct ChunkStateRecord {
    outcomes: ChunkOutcomes,
    item_count: u64,
    version: u64,
}

impl ChunkStateRecord {
    fn from_item(item: &Item) -> Result<Self, StoreError> {
        let errors = match item.get("errors") {
            Some(AttributeValue::S(json)) => Some(json.as_str()),
            _ => None,
        };
        Ok(Self {
            outcomes: ChunkOutcomes::decode(
                text(item, "stage")?,
                text(item, "states")?.to_owned(),
                errors,
                number(item, "attempts")?,
            )?,
            item_count: number(item, "itemCount")?,
            version: number(item, "version")?,
        })
    }

    fn to_item(&self, batch_id: &BatchId, chunk: u64) -> Item {
        let mut item = HashMap::from([
            ("batchId".to_owned(), s(batch_id.as_str())),
            ("sk".to_owned(), s(chunk_sk(chunk))),
            ("stage".to_owned(), s(self.outcomes.stage.as_str())),
            ("states".to_owned(), s(self.outcomes.states_text())),
            (
                "failedCount".to_owned(),
                n(self.outcomes.count(codec::FAILED)),
            ),
            ("attempts".to_owned(), n(self.outcomes.attempts)),
            ("itemCount".to_owned(), n(self.item_count)),
            ("version".to_owned(), n(self.version)),
        ]);
        if let Some(errors) = self.outcomes.errors_json() {
            item.insert("errors".to_owned(), s(errors));
        }
        item
    }
}

/// The output of a conditional write, or None when its condition failed (another writer got
/// there first).
fn conditional<T, E, R>(
    sent: Result<T, SdkError<E, R>>,
    is_condition_failure: impl Fn(&E) -> bool,
) -> Result<Option<T>, StoreError>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match sent {
        Ok(output) => Ok(Some(output)),
        Err(err) if err.as_service_error().is_some_and(is_condition_failure) => Ok(None),
        Err(err) => Err(unavailable(err)),
    }
}

impl From<aws_sdk_dynamodb::error::BuildError> for StoreError {
    /// A request missing a field this module always sets.
    fn from(err: aws_sdk_dynamodb::error::BuildError) -> Self {
        StoreError::Corrupt(err.to_string())
    }
}

impl DynamoStore {
    /// A store on the given tables. The client keeps its retry policy (the SDK backs off with
    /// jitter on throttling and transient errors) but makes at least 8 attempts per request.
    pub fn new(client: aws_sdk_dynamodb::Client, tables: DynamoTables) -> Self {
        let retry = client
            .config()
            .retry_config()
            .cloned()
            .unwrap_or_else(RetryConfig::standard);
        let retry = if retry.max_attempts() < SDK_MAX_ATTEMPTS {
            retry.with_max_attempts(SDK_MAX_ATTEMPTS)
        } else {
            retry
        };
        let config = client.config().to_builder().retry_config(retry).build();
        Self {
            client: aws_sdk_dynamodb::Client::from_conf(config),
            tables: Arc::new(tables),
            meter: Arc::new(Meter::default()),
        }
    }

    /// What this store has sent so far.
    pub fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            write_units: self.meter.write_units.load(Ordering::Relaxed),
            write_requests: self.meter.write_requests.load(Ordering::Relaxed),
            read_requests: self.meter.read_requests.load(Ordering::Relaxed),
        }
    }

    fn batch_key(batch_id: &BatchId) -> Item {
        HashMap::from([("batchId".to_owned(), s(batch_id.as_str()))])
    }

    fn request_key(batch_id: &BatchId, sk: String) -> Item {
        HashMap::from([
            ("batchId".to_owned(), s(batch_id.as_str())),
            ("sk".to_owned(), s(sk)),
        ])
    }

    async fn load_batch(&self, batch_id: &BatchId) -> Result<Option<BatchRecord>, StoreError> {
        self.meter.read();
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.batch_table)
            .set_key(Some(Self::batch_key(batch_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        output.item.as_ref().map(BatchRecord::from_item).transpose()
    }

    async fn get_request_item(
        &self,
        batch_id: &BatchId,
        sk: String,
    ) -> Result<Option<Item>, StoreError> {
        self.meter.read();
        Ok(self
            .client
            .get_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(Self::request_key(batch_id, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?
            .item)
    }

    async fn load_state(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<ChunkStateRecord>, StoreError> {
        self.get_request_item(batch_id, chunk_sk(chunk))
            .await?
            .as_ref()
            .map(ChunkStateRecord::from_item)
            .transpose()
    }

    /// Writes items with `BatchWriteItem` in pages of 25, retrying `UnprocessedItems` with
    /// exponential backoff and full jitter until every item is written.
    async fn write_all(&self, items: Vec<Item>) -> Result<(), StoreError> {
        let mut pages = Vec::new();
        let mut page = Vec::with_capacity(BATCH_WRITE_LIMIT);
        for item in items {
            page.push(item);
            if page.len() == BATCH_WRITE_LIMIT {
                pages.push(std::mem::take(&mut page));
            }
        }
        if !page.is_empty() {
            pages.push(page);
        }
        stream::iter(pages)
            .map(|page| self.write_page(page))
            .buffer_unordered(BATCH_WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn write_page(&self, page: Vec<Item>) -> Result<(), StoreError> {
        let table = self.tables.request_table.clone();
        let mut pending: Vec<WriteRequest> = page
            .into_iter()
            .map(|item| {
                let put = PutRequest::builder().set_item(Some(item)).build()?;
                Ok::<_, StoreError>(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<_, _>>()?;
        let mut round = 0;
        loop {
            let units: u64 = pending
                .iter()
                .filter_map(|request| request.put_request())
                .map(|put| write_units(&put.item))
                .sum();
            self.meter.write(units);
            let output = self
                .client
                .batch_write_item()
                .request_items(&table, pending)
                .send()
                .await
                .map_err(unavailable)?;
            let unprocessed = output
                .unprocessed_items
                .and_then(|mut tables| tables.remove(&table))
                .unwrap_or_default();
            if unprocessed.is_empty() {
                return Ok(());
            }
            round += 1;
            if round > UNPROCESSED_RETRIES {
                return Err(StoreError::Unavailable(format!(
                    "{} items stayed unprocessed after {UNPROCESSED_RETRIES} retries",
                    unprocessed.len()
                )));
            }
            tracing::debug!(
                items = unprocessed.len(),
                round,
                "retrying unprocessed items"
            );
            tokio::time::sleep(backoff_with_jitter(round)).await;
            pending = unprocessed;
        }
    }
}

/// Exponential backoff (50 ms doubling, capped at 5 s) with full jitter.
fn backoff_with_jitter(round: u32) -> Duration {
    let cap = Duration::from_millis(50)
        .saturating_mul(1 << round.min(7))
        .min(Duration::from_secs(5));
    cap.mul_f64(rand::random::<f64>())
}

impl DynamoStore {
    /// Runs a transaction of `items` billed at `units` write units; false when a condition
    /// failed (another writer got there first).
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        units: u64,
    ) -> Result<bool, StoreError> {
        self.meter.write(2 * units);
        let outcome = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        Ok(conditional(outcome, |e| e.is_transaction_canceled_exception())?.is_some())
    }

    /// Creates the batch item unless it exists; returns the stored batch.
    async fn create_or_load_batch(&self, part: &NewPart) -> Result<BatchRecord, StoreError> {
        if let Some(existing) = self.load_batch(&part.batch_id).await? {
            return Ok(existing);
        }
        let item = BatchRecord::new_item(part, Timestamp::now());
        self.meter.write(write_units(&item));
        let created = self
            .client
            .put_item()
            .table_name(&self.tables.batch_table)
            .set_item(Some(item.clone()))
            .condition_expression("attribute_not_exists(batchId)")
            .send()
            .await;
        match conditional(created, |e| e.is_conditional_check_failed_exception())? {
            Some(_) => BatchRecord::from_item(&item),
            None => self
                .load_batch(&part.batch_id)
                .await?
                .ok_or_else(|| StoreError::Unavailable("batch vanished while created".into())),
        }
    }

    /// Writes a part's chunks (ID items and state items), then marks the part complete.
    async fn write_chunks(
        &self,
        part: &NewPart,
        first_chunk: u64,
        write: ChunkWrite,
    ) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(part.chunk_count() as usize);
        let mut states = Vec::with_capacity(part.chunk_count() as usize);
        for (offset, chunk_items) in part.chunks().enumerate() {
            let chunk = first_chunk + offset as u64;
            let mut ids_item = Self::request_key(&part.batch_id, ids_sk(chunk));
            ids_item.insert("itemIds".to_owned(), s(codec::join_ids(chunk_items)));
            ids.push(ids_item);
            let state = ChunkStateRecord {
                outcomes: ChunkOutcomes::new(chunk_items.len()),
                item_count: chunk_items.len() as u64,
                version: 0,
            };
            states.push(state.to_item(&part.batch_id, chunk));
        }
        match write {
            ChunkWrite::Fresh => {
                ids.extend(states);
                self.write_all(ids).await?;
            }
            ChunkWrite::Resume => {
                // IDs never change, so writing them again is harmless; a state item written
                // before may have moved on (started, recorded, cancelled) and must stay.
                self.write_all(ids).await?;
                stream::iter(states)
                    .map(|state| self.put_new_state(state))
                    .buffer_unordered(BATCH_WRITES_IN_FLIGHT)
                    .try_collect::<Vec<()>>()
                    .await?;
            }
        }
        self.meter.write(1);
        self.client
            .update_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(Self::request_key(
                &part.batch_id,
                part_sk(part.part_number),
            )))
            .update_expression("SET chunksWritten = :yes")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Writes a chunk's first state item unless it exists.
    async fn put_new_state(&self, state: Item) -> Result<(), StoreError> {
        self.meter.write(write_units(&state));
        let written = self
            .client
            .put_item()
            .table_name(&self.tables.request_table)
            .set_item(Some(state))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await;
        conditional(written, |e| e.is_conditional_check_failed_exception())?;
        Ok(())
    }

    /// Chunks of a range whose stage is still PENDING.
    async fn unstarted_chunks(
        &self,
        batch_id: &BatchId,
        first_chunk: u64,
        chunk_count: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut unstarted = Vec::new();
        self.for_each_chunk_item(
            batch_id,
            first_chunk,
            Some(first_chunk + chunk_count),
            false,
            |sk, item| {
                if let Some((index, false)) = chunk_of(sk) {
                    if text(item, "stage")? == ChunkStage::Pending.as_str() {
                        unstarted.push(index);
                    }
                }
                Ok(true)
            },
        )
        .await?;
        Ok(unstarted)
    }

    /// Feeds the chunk items (state, and IDs when `with_ids`) of chunks `from..until` in key
    /// order to `each`, which returns false to stop.
    async fn for_each_chunk_item(
        &self,
        batch_id: &BatchId,
        from: u64,
        until: Option<u64>,
        with_ids: bool,
        mut each: impl FnMut(&str, &Item) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let upper = until.map_or_else(|| "chunk#~".to_owned(), chunk_sk);
        let mut start_key = None;
        loop {
            self.meter.read();
            let mut query = self
                .client
                .query()
                .table_name(&self.tables.request_table)
                .key_condition_expression("batchId = :batch AND sk BETWEEN :from AND :until")
                .expression_attribute_values(":batch", s(batch_id.as_str()))
                .expression_attribute_values(":from", s(chunk_sk(from)))
                .expression_attribute_values(":until", s(upper.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start_key.take());
            if !with_ids {
                query = query.filter_expression("attribute_not_exists(itemIds)");
            }
            let output = query.send().await.map_err(unavailable)?;
            for item in output.items() {
                let sk = text(item, "sk")?;
                if until.is_some_and(|end| chunk_of(sk).is_some_and(|(index, _)| index >= end)) {
                    return Ok(());
                }
                if !each(sk, item)? {
                    return Ok(());
                }
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => return Ok(()),
            }
        }
    }

    /// Moves a batch to the status `progress` leads to (only one caller wins); returns the
    /// batch as it stands.
    async fn settle(&self, batch_id: &BatchId, progress: Progress) -> Result<Batch, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let record = self
                .load_batch(batch_id)
                .await?
                .ok_or_else(|| StoreError::Unavailable(format!("batch {batch_id} vanished")))?;
            let current = record.batch.status;
            let Some(next) = rules::next_status(&record.batch, record.cancel_requested, progress)
            else {
                return Ok(record.batch);
            };
            let now = Timestamp::now();
            let mut update = self
                .client
                .update_item()
                .table_name(&self.tables.batch_table)
                .set_key(Some(Self::batch_key(batch_id)))
                .condition_expression("#status = :current AND completedChunks = :completed")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":current", s(current.as_str()))
                .expression_attribute_values(":next", s(next.as_str()))
                .expression_attribute_values(":completed", n(record.batch.completed_chunks))
                .expression_attribute_values(":now", n(now.0))
                .return_values(ReturnValue::AllNew);
            update = if next.is_terminal() {
                update
                    .update_expression("SET #status = :next, updatedAt = :now, completedAt = :now")
            } else {
                update.update_expression("SET #status = :next, updatedAt = :now")
            };
            self.meter.write(1);
            let sent = update.send().await;
            if let Some(output) = conditional(sent, |e| e.is_conditional_check_failed_exception())?
            {
                let item = output.attributes.unwrap_or_default();
                return Ok(BatchRecord::from_item(&item)?.batch);
            }
        }
        Err(StoreError::Unavailable(format!(
            "batch {batch_id} is contended"
        )))
    }

    /// Cancels one PENDING chunk and counts its items, in one transaction; false when the
    /// chunk was no longer PENDING.
    async fn cancel_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        item_count: u64,
    ) -> Result<bool, StoreError> {
        let counts = rules::cancelled_chunks(1, item_count);
        let now = Timestamp::now();
        let chunk_update = Update::builder()
            .table_name(&self.tables.request_table)
            .set_key(Some(Self::request_key(batch_id, chunk_sk(chunk))))
            .update_expression("SET stage = :cancelled, version = version + :one")
            .condition_expression("stage = :pending")
            .expression_attribute_values(":cancelled", s(ChunkStage::Cancelled.as_str()))
            .expression_attribute_values(":pending", s(ChunkStage::Pending.as_str()))
            .expression_attribute_values(":one", n(1))
            .build()?;
        let batch_update = Update::builder()
            .table_name(&self.tables.batch_table)
            .set_key(Some(Self::batch_key(batch_id)))
            .update_expression(
                "ADD cancelledItems :items, completedChunks :chunks SET updatedAt = :now",
            )
            .expression_attribute_values(":items", n(counts.cancelled_items))
            .expression_attribute_values(":chunks", n(counts.completed_chunks))
            .expression_attribute_values(":now", n(now.0))
            .build()?;
        self.transact(
            vec![
                TransactWriteItem::builder().update(chunk_update).build(),
                TransactWriteItem::builder().update(batch_update).build(),
            ],
            2,
        )
        .await
    }

    /// A part's ID hashes as request-table items, 48,000 to an item.
    fn hash_segments(&self, part: &NewPart, index: &PartIndex) -> Vec<Item> {
        index
            .blob()
            .chunks(HASHES_PER_ITEM * 8)
            .enumerate()
            .map(|(segment, bytes)| {
                let mut item =
                    Self::request_key(&part.batch_id, hashes_sk(part.part_number, segment));
                item.insert(
                    "hashes".to_owned(),
                    AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes)),
                );
                item
            })
            .collect()
    }

    /// The refusal of a part that repeats an ID of an earlier part of its batch, if it does:
    /// merges the part's hashes with every earlier part's, then confirms a shared hash
    /// against the earlier part's IDs.
    async fn find_repeated_item(
        &self,
        part: &NewPart,
        index: &PartIndex,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let mut earlier: Vec<EarlierPart> = Vec::new();
        let mut start_key = None;
        loop {
            self.meter.read();
            let output = self
                .client
                .query()
                .table_name(&self.tables.request_table)
                .key_condition_expression("batchId = :batch AND begins_with(sk, :parts)")
                .expression_attribute_values(":batch", s(part.batch_id.as_str()))
                .expression_attribute_values(":parts", s("part#"))
                .consistent_read(true)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(unavailable)?;
            for item in output.items() {
                match part_of(text(item, "sk")?) {
                    Some(PartKey::Part(part_number)) => earlier.push(EarlierPart {
                        number: part_number,
                        first_chunk: number(item, "firstChunk")?,
                        chunk_count: number(item, "chunkCount")?,
                        chunks_written: flag(item, "chunksWritten"),
                        hashed: false,
                        candidates: Vec::new(),
                    }),
                    Some(PartKey::Hashes(part_number)) => {
                        let Some(AttributeValue::B(blob)) = item.get("hashes") else {
                            return Err(corrupt("hashes"));
                        };
                        if let Some(last) = earlier.last_mut().filter(|p| p.number == part_number) {
                            last.hashed = true;
                            last.candidates
                                .extend(index.shared_hashes([blob.as_ref()])?);
                        }
                    }
                    None => {}
                }
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => break,
            }
        }
        for mut suspect in earlier {
            if !suspect.hashed {
                // Stored before IDs were hashed: each of its IDs is a suspect.
                suspect.candidates = index.all_hashes();
            }
            if suspect.candidates.is_empty() {
                continue;
            }
            suspect.candidates.sort_unstable();
            suspect.candidates.dedup();
            if !suspect.chunks_written {
                return Err(StoreError::Unavailable(format!(
                    "part {} of {} is still being written",
                    suspect.number, part.batch_id
                )));
            }
            let mut joined = Vec::new();
            self.for_each_chunk_item(
                &part.batch_id,
                suspect.first_chunk,
                Some(suspect.first_chunk + suspect.chunk_count),
                true,
                |sk, item| {
                    if let Some((_, true)) = chunk_of(sk) {
                        joined.push(text(item, "itemIds")?.to_owned());
                    }
                    Ok(true)
                },
            )
            .await?;
            let earlier_ids = joined.iter().flat_map(|ids| codec::split_ids(ids));
            if let Some(position) =
                index.first_repeat(&part.items, &suspect.candidates, earlier_ids)
            {
                return Ok(Some(id_hashes::repeated_item(
                    part,
                    position,
                    suspect.number,
                )));
            }
        }
        Ok(None)
    }

    async fn get_batches(&self, keys: Vec<BatchId>) -> Result<Vec<Batch>, StoreError> {
        let batches = stream::iter(keys)
            .map(|batch_id| async move { self.load_batch(&batch_id).await })
            .buffered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(batches
            .into_iter()
            .flatten()
            .map(|record| record.batch)
            .collect())
    }
}

/// How a part's chunks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkWrite {
    /// Just reserved: no chunk of the part exists yet.
    Fresh,
    /// Reserved by an earlier attempt that may have written some chunks, which tasks or a
    /// cancel may have moved on since.
    Resume,
}

/// An earlier part of a batch, as far as repeated IDs go.
struct EarlierPart {
    number: u64,
    first_chunk: u64,
    chunk_count: u64,
    chunks_written: bool,
    /// Whether its ID hashes are stored.
    hashed: bool,
    /// Hashes of the new part's IDs that this part may hold.
    candidates: Vec<u64>,
}

/// The `ListBatches` position: the last index key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct BatchCursor {
    created_key: String,
    batch_id: String,
}

#[async_trait]
impl BatchStore for DynamoStore {
    async fn append_part(&self, part: &NewPart) -> Result<AppendOutcome, StoreError> {
        let digest = part.digest();
        let index = PartIndex::new(&part.items);
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let record = self.create_or_load_batch(part).await?;
            let batch = &record.batch;
            let stored = self
                .get_request_item(&part.batch_id, part_sk(part.part_number))
                .await?;
            let stored_digest = stored
                .as_ref()
                .map(|item| text(item, "digest"))
                .transpose()?;
            match judge_part(batch, record.cancel_requested, stored_digest, part, &digest) {
                PartVerdict::Refuse(outcome) => return Ok(outcome),
                PartVerdict::AlreadyStored => {
                    let stored = stored.unwrap_or_default();
                    let first_chunk: u64 = number(&stored, "firstChunk")?;
                    let chunk_count: u64 = number(&stored, "chunkCount")?;
                    if !flag(&stored, "chunksWritten") {
                        // A previous attempt reserved the part but stopped before its chunks
                        // were all written; no execution was started for them yet, so write
                        // them now.
                        self.write_chunks(part, first_chunk, ChunkWrite::Resume)
                            .await?;
                        return Ok(AppendOutcome::Created {
                            batch: record.batch,
                            chunks: (first_chunk..first_chunk + chunk_count).collect(),
                        });
                    }
                    let unstarted_chunks = self
                        .unstarted_chunks(&part.batch_id, first_chunk, chunk_count)
                        .await?;
                    return Ok(AppendOutcome::AlreadyStored {
                        batch: record.batch,
                        unstarted_chunks,
                    });
                }
                PartVerdict::Store => {}
            }
            if let Some(refusal) = self.find_repeated_item(part, &index).await? {
                return Ok(refusal);
            }
            let item_count = part.items.len() as u64;

            // Reserve the part and its chunk range in one transaction, on the condition that
            // no other part or cancel changed the batch since it was read.
            let first_chunk = batch.total_chunks;
            let chunk_count = part.chunk_count();
            let now = Timestamp::now();
            let mut part_item = Self::request_key(&part.batch_id, part_sk(part.part_number));
            part_item.extend([
                ("digest".to_owned(), s(digest.clone())),
                ("firstChunk".to_owned(), n(first_chunk)),
                ("chunkCount".to_owned(), n(chunk_count)),
                ("itemCount".to_owned(), n(item_count)),
                ("chunksWritten".to_owned(), AttributeValue::Bool(false)),
            ]);
            let put_part = Put::builder()
                .table_name(&self.tables.request_table)
                .set_item(Some(part_item))
                .condition_expression("attribute_not_exists(sk)")
                .build()?;
            let reserve = Update::builder()
                .table_name(&self.tables.batch_table)
                .set_key(Some(Self::batch_key(&part.batch_id)))
                .update_expression(
                    "SET totalChunks = :chunks, receivedItems = :received, updatedAt = :now",
                )
                .condition_expression(
                    "totalChunks = :seen_chunks AND receivedItems = :seen_received AND cancelRequested = :no",
                )
                .expression_attribute_values(":chunks", n(first_chunk + chunk_count))
                .expression_attribute_values(":received", n(batch.received_items + item_count))
                .expression_attribute_values(":now", n(now.0))
                .expression_attribute_values(":seen_chunks", n(first_chunk))
                .expression_attribute_values(":seen_received", n(batch.received_items))
                .expression_attribute_values(":no", AttributeValue::Bool(false))
                .build()?;
            let mut writes = vec![
                TransactWriteItem::builder().put(put_part).build(),
                TransactWriteItem::builder().update(reserve).build(),
            ];
            let mut units = 2;
            // No part can follow the one that completes the batch: its hashes are not kept.
            if !rules::completes_batch(batch, part) {
                for segment in self.hash_segments(part, &index) {
                    units += write_units(&segment);
                    let put = Put::builder()
                        .table_name(&self.tables.request_table)
                        .set_item(Some(segment))
                        .build()?;
                    writes.push(TransactWriteItem::builder().put(put).build());
                }
            }
            let reserved = self.transact(writes, units).await?;
            if !reserved {
                continue;
            }
            self.write_chunks(part, first_chunk, ChunkWrite::Fresh)
                .await?;
            let mut batch = record.batch;
            batch.total_chunks = first_chunk + chunk_count;
            batch.received_items += item_count;
            batch.updated_at = now;
            return Ok(AppendOutcome::Created {
                batch,
                chunks: (first_chunk..first_chunk + chunk_count).collect(),
            });
        }
        Err(StoreError::Unavailable(format!(
            "batch {} is contended",
            part.batch_id
        )))
    }

    async fn get_batch(&self, batch_id: &BatchId) -> Result<Option<Batch>, StoreError> {
        Ok(self.load_batch(batch_id).await?.map(|record| record.batch))
    }

    async fn list_batches(&self, query: &BatchQuery) -> Result<Page<Batch>, ListError> {
        let start = match &query.page_token {
            Some(token) => {
                let json = codec::decode_token(token, "batches:")?;
                let cursor: BatchCursor = serde_json::from_str(&json).map_err(|_| BadPageToken)?;
                Some(cursor)
            }
            None => None,
        };
        let mut request = self
            .client
            .query()
            .table_name(&self.tables.batch_table)
            .scan_index_forward(false)
            .limit(query.page_size as i32);
        let (partition_name, partition_value) = match query.status {
            Some(status) => {
                request = request
                    .index_name(BY_STATUS_INDEX)
                    .key_condition_expression("#status = :partition")
                    .expression_attribute_names("#status", "status");
                ("status", status.as_str().to_owned())
            }
            None => {
                request = request
                    .index_name(BY_CREATED_INDEX)
                    .key_condition_expression("listPartition = :partition");
                ("listPartition", LIST_PARTITION.to_owned())
            }
        };
        request = request.expression_attribute_values(":partition", s(partition_value.clone()));
        if let Some(cursor) = start {
            request = request.set_exclusive_start_key(Some(HashMap::from([
                ("batchId".to_owned(), s(cursor.batch_id)),
                ("createdKey".to_owned(), s(cursor.created_key)),
                (partition_name.to_owned(), s(partition_value)),
            ])));
        }
        self.meter.read();
        let output = request
            .send()
            .await
            .map_err(|err| ListError::Store(unavailable(err)))?;
        let mut ids = Vec::new();
        for item in output.items() {
            ids.push(BatchId::parse(text(item, "batchId")?).map_err(|_| corrupt("batchId"))?);
        }
        let next_page_token = match output.last_evaluated_key() {
            Some(key) if !key.is_empty() => {
                let cursor = BatchCursor {
                    created_key: text(key, "createdKey")?.to_owned(),
                    batch_id: text(key, "batchId")?.to_owned(),
                };
                let json = serde_json::to_string(&cursor)
                    .map_err(|err| StoreError::Corrupt(err.to_string()))?;
                Some(codec::encode_token(&format!("batches:{json}")))
            }
            _ => None,
        };
        Ok(Page {
            entries: self.get_batches(ids).await?,
            next_page_token,
        })
    }

    async fn list_items(&self, query: &ItemQuery) -> Result<Page<ItemRecord>, ListError> {
        let mut pager = ItemPager::new(query)?;
        let Some(batch) = self.load_batch(&query.batch_id).await? else {
            return Err(ListError::NotFound);
        };
        let mut page = None;
        let mut stopped_before = None;
        let mut wanted: Option<(u64, ChunkOutcomes)> = None;
        self.for_each_chunk_item(
            &query.batch_id,
            pager.start_chunk,
            None,
            true,
            |sk, item| {
                let Some((index, is_ids)) = chunk_of(sk) else {
                    return Ok(true);
                };
                if is_ids {
                    match wanted.take() {
                        Some((wanted_index, outcomes)) if wanted_index == index => {
                            page = pager.push(index, &outcomes, text(item, "itemIds")?);
                            if page.is_some() {
                                return Ok(false);
                            }
                        }
                        _ => return Ok(true),
                    }
                } else {
                    let record = ChunkStateRecord::from_item(item)?;
                    let failed = record.outcomes.count(codec::FAILED);
                    if pager.may_match(record.outcomes.stage, record.item_count, failed) {
                        wanted = Some((index, record.outcomes));
                        return Ok(true);
                    }
                    wanted = None;
                    pager.skip(record.item_count);
                }
                if pager.is_spent() {
                    stopped_before = Some(index + 1);
                    return Ok(false);
                }
                Ok(true)
            },
        )
        .await?;
        Ok(match (page, stopped_before) {
            (Some(page), _) => page,
            (None, Some(next_chunk)) => pager.stop_before(next_chunk, batch.batch.total_chunks),
            (None, None) => pager.finish(),
        })
    }

    async fn cancel_batch(&self, batch_id: &BatchId) -> Result<CancelOutcome, StoreError> {
        let mut marked = false;
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(record) = self.load_batch(batch_id).await? else {
                return Ok(CancelOutcome::NotFound);
            };
            if record.batch.status.is_terminal() {
                return Ok(CancelOutcome::AlreadyTerminal(record.batch));
            }
            if record.cancel_requested {
                marked = true;
                break;
            }
            // Items of parts never received are cancelled with the request; the condition keeps
            // a part arriving meanwhile from slipping past it.
            let never_received =
                rules::cancel_request(&record.batch, CancelRequest::First).cancelled_items;
            self.meter.write(1);
            let requested = self
                .client
                .update_item()
                .table_name(&self.tables.batch_table)
                .set_key(Some(Self::batch_key(batch_id)))
                .update_expression(
                    "SET cancelRequested = :yes, updatedAt = :now ADD cancelledItems :never_received",
                )
                .condition_expression("receivedItems = :received AND cancelRequested = :no")
                .expression_attribute_values(":yes", AttributeValue::Bool(true))
                .expression_attribute_values(":no", AttributeValue::Bool(false))
                .expression_attribute_values(":now", n(Timestamp::now().0))
                .expression_attribute_values(":never_received", n(never_received))
                .expression_attribute_values(":received", n(record.batch.received_items))
                .send()
                .await;
            if conditional(requested, |e| e.is_conditional_check_failed_exception())?.is_some() {
                marked = true;
                break;
            }
        }
        if !marked {
            return Err(StoreError::Unavailable(format!(
                "batch {batch_id} is contended"
            )));
        }
        let mut pending = Vec::new();
        self.for_each_chunk_item(batch_id, 0, None, false, |sk, item| {
            if let Some((index, false)) = chunk_of(sk) {
                if text(item, "stage")? == ChunkStage::Pending.as_str() {
                    pending.push((index, number::<u64>(item, "itemCount")?));
                }
            }
            Ok(true)
        })
        .await?;
        stream::iter(pending)
            .map(|(chunk, items)| self.cancel_chunk(batch_id, chunk, items))
            .buffer_unordered(CANCELS_IN_FLIGHT)
            .try_collect::<Vec<bool>>()
            .await?;
        Ok(CancelOutcome::Cancelled(
            self.settle(batch_id, Progress::CountersChanged).await?,
        ))
    }

    async fn claim_chunk(&self, batch_id: &BatchId, chunk: u64) -> Result<ChunkClaim, StoreError> {
        let Some(batch) = self.load_batch(batch_id).await? else {
            return Ok(ChunkClaim::NotFound);
        };
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(mut state) = self.load_state(batch_id, chunk).await? else {
                return Ok(ChunkClaim::NotFound);
            };
            match state.outcomes.stage {
                ChunkStage::Recorded | ChunkStage::Cancelled => return Ok(ChunkClaim::Inactive),
                ChunkStage::Pending if batch.cancel_requested => {
                    // A part stored while the batch was being cancelled: cancel its chunk here.
                    if self.cancel_chunk(batch_id, chunk, state.item_count).await? {
                        self.settle(batch_id, Progress::CountersChanged).await?;
                        return Ok(ChunkClaim::Inactive);
                    }
                    continue;
                }
                ChunkStage::Pending => {
                    state.outcomes.stage = ChunkStage::Started;
                    if !self.put_state(batch_id, chunk, &mut state).await? {
                        continue;
                    }
                    if batch.batch.status == BatchStatus::Pending {
                        self.settle(batch_id, Progress::ChunkStarted).await?;
                    }
                }
                ChunkStage::Started => {}
            }
            let Some(ids) = self.get_request_item(batch_id, ids_sk(chunk)).await? else {
                return Err(StoreError::Corrupt(format!(
                    "chunk {chunk} of {batch_id} has no IDs"
                )));
            };
            return Ok(ChunkClaim::Active(state.outcomes.into_chunk(
                batch_id.clone(),
                chunk,
                text(&ids, "itemIds")?,
            )));
        }
        Err(StoreError::Unavailable(format!(
            "chunk {chunk} of {batch_id} is contended"
        )))
    }

    async fn load_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        let mut state = None;
        let mut ids = None;
        self.for_each_chunk_item(batch_id, chunk, Some(chunk + 1), true, |sk, item| {
            match chunk_of(sk) {
                Some((_, true)) => ids = Some(text(item, "itemIds")?.to_owned()),
                Some((_, false)) => state = Some(ChunkStateRecord::from_item(item)?),
                None => {}
            }
            Ok(true)
        })
        .await?;
        Ok(match (state, ids) {
            (Some(state), Some(ids)) => {
                Some(state.outcomes.into_chunk(batch_id.clone(), chunk, &ids))
            }
            _ => None,
        })
    }

    async fn save_outcomes(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        outcomes: &[(usize, ItemOutcome)],
        attempts: u32,
    ) -> Result<(), StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(mut state) = self.load_state(batch_id, chunk).await? else {
                return Ok(());
            };
            if !state.outcomes.stage.is_open() {
                return Ok(());
            }
            for (position, outcome) in outcomes {
                state.outcomes.apply(*position, outcome);
            }
            state.outcomes.attempts = state.outcomes.attempts.max(attempts);
            if self.put_state(batch_id, chunk, &mut state).await? {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "chunk {chunk} of {batch_id} is contended"
        )))
    }

    async fn record_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        failure: Option<&str>,
    ) -> Result<RecordOutcome, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(mut state) = self.load_state(batch_id, chunk).await? else {
                return Ok(RecordOutcome::NotFound);
            };
            if !state.outcomes.stage.is_open() {
                return Ok(RecordOutcome::AlreadyRecorded(
                    self.settle(batch_id, Progress::CountersChanged).await?,
                ));
            }
            state
                .outcomes
                .settle(failure.unwrap_or(codec::NO_OUTCOME_MESSAGE));
            let seen_version = state.version;
            state.version += 1;
            let item = state.to_item(batch_id, chunk);
            let units = write_units(&item);
            let put_state = Put::builder()
                .table_name(&self.tables.request_table)
                .set_item(Some(item))
                .condition_expression("version = :seen AND stage IN (:pending, :started)")
                .expression_attribute_values(":seen", n(seen_version))
                .expression_attribute_values(":pending", s(ChunkStage::Pending.as_str()))
                .expression_attribute_values(":started", s(ChunkStage::Started.as_str()))
                .build()?;
            let count = Update::builder()
                .table_name(&self.tables.batch_table)
                .set_key(Some(Self::batch_key(batch_id)))
                .update_expression(
                    "ADD succeededItems :succeeded, failedItems :failed, completedChunks :one SET updatedAt = :now",
                )
                .expression_attribute_values(":succeeded", n(state.outcomes.count(codec::SUCCEEDED)))
                .expression_attribute_values(":failed", n(state.outcomes.count(codec::FAILED)))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(Timestamp::now().0))
                .build()?;
            let recorded = self
                .transact(
                    vec![
                        TransactWriteItem::builder().put(put_state).build(),
                        TransactWriteItem::builder().update(count).build(),
                    ],
                    units + 1,
                )
                .await?;
            if recorded {
                return Ok(RecordOutcome::Recorded(
                    self.settle(batch_id, Progress::ChunkRecorded).await?,
                ));
            }
        }
        Err(StoreError::Unavailable(format!(
            "chunk {chunk} of {batch_id} is contended"
        )))
    }

    async fn wait_for_change(&self, since: u64, poll: Duration) -> u64 {
        // DynamoDB cannot signal changes; watchers poll.
        tokio::time::sleep(poll).await;
        since + 1
    }
}

impl DynamoStore {
    /// Replaces a chunk's state item if its version is still the one read; false when another
    /// writer got there first.
    async fn put_state(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        state: &mut ChunkStateRecord,
    ) -> Result<bool, StoreError> {
        let seen_version = state.version;
        state.version += 1;
        let item = state.to_item(batch_id, chunk);
        self.meter.write(write_units(&item));
        let written = self
            .client
            .put_item()
            .table_name(&self.tables.request_table)
            .set_item(Some(item))
            .condition_expression("version = :seen")
            .expression_attribute_values(":seen", n(seen_version))
            .send()
            .await;
        Ok(conditional(written, |e| e.is_conditional_check_failed_exception())?.is_some())
    }
}
