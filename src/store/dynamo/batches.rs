//! The batch item: reading and creating it, moving its status, and cancelling a batch.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::ReturnValue;
use futures::{stream, StreamExt, TryStreamExt};

use super::attributes::{
    batch_key, corrupt, created_key, flag, flag_value, n, number, optional_number, s, text, Item,
    BATCH_ID, BATCH_SIZE, CANCELLED_ITEMS, CANCEL_REQUESTED, COMPLETED_AT, COMPLETED_CHUNKS,
    CREATED_AT, CREATED_KEY, FAILED_ITEMS, LAST_RECORDED_AT, LIST_PARTITION, LIST_PARTITION_VALUE,
    MAX_CONCURRENCY, PREVIOUS_RATE, RECEIVED_ITEMS, STATUS, SUCCEEDED_ITEMS, TOTAL_CHUNKS,
    TOTAL_ITEMS, UPDATED_AT, WINDOW_STARTED_AT, WINDOW_TERMINAL,
};
use super::starts::{IN_FLIGHT, STARTABLE_CHUNKS, STARTED_CHUNKS};
use super::writes::{conditional, unavailable, write_units};
use super::{contended, DynamoStore, OPTIMISTIC_ATTEMPTS};
use crate::domain::{Batch, BatchId, BatchStatus, NewPart, Timestamp};
use crate::store::progress::{self, RateWindow};
use crate::store::rules::{self, CancelRequest, Progress};
use crate::store::{CancelOutcome, StoreError};

/// Chunk cancellations in flight at once.
const CANCELS_IN_FLIGHT: usize = 16;
/// Batch items read at once while listing.
const BATCH_READS_IN_FLIGHT: usize = 16;

/// A batch item: the snapshot plus what only the store needs.
#[derive(Debug, Clone)]
pub(super) struct BatchRecord {
    pub(super) batch: Batch,
    pub(super) cancel_requested: bool,
    /// Where the batch's rate is measured from.
    pub(super) window: RateWindow,
    /// Whether the window is stored (batches from before it have none).
    window_stored: bool,
}

impl BatchRecord {
    fn from_item(item: &Item) -> Result<Self, StoreError> {
        let status = text(item, STATUS)?;
        let created_at = Timestamp(number(item, CREATED_AT)?);
        let started_at = optional_number(item, WINDOW_STARTED_AT)?;
        let window = RateWindow {
            started_at: Timestamp(started_at.unwrap_or(created_at.0)),
            terminal_at_start: optional_number(item, WINDOW_TERMINAL)?.unwrap_or(0),
            previous_rate: optional_number(item, PREVIOUS_RATE)?.unwrap_or(0.0),
            last_recorded_at: optional_number(item, LAST_RECORDED_AT)?.map(Timestamp),
        };
        let mut batch = Batch {
            batch_id: BatchId::parse(text(item, BATCH_ID)?).map_err(|_| corrupt(BATCH_ID))?,
            status: BatchStatus::from_name(status).ok_or_else(|| corrupt(STATUS))?,
            total_items: number(item, TOTAL_ITEMS)?,
            received_items: number(item, RECEIVED_ITEMS)?,
            succeeded_items: number(item, SUCCEEDED_ITEMS)?,
            failed_items: number(item, FAILED_ITEMS)?,
            cancelled_items: number(item, CANCELLED_ITEMS)?,
            total_chunks: number(item, TOTAL_CHUNKS)?,
            completed_chunks: number(item, COMPLETED_CHUNKS)?,
            batch_size: number(item, BATCH_SIZE)?,
            created_at,
            updated_at: Timestamp(number(item, UPDATED_AT)?),
            completed_at: optional_number(item, COMPLETED_AT)?.map(Timestamp),
            max_concurrency: optional_number(item, MAX_CONCURRENCY)?,
            progress: Default::default(),
        };
        batch.progress = progress::progress_of(&batch, &window, Timestamp::now());
        Ok(Self {
            batch,
            cancel_requested: flag(item, CANCEL_REQUESTED),
            window,
            window_stored: started_at.is_some(),
        })
    }

    fn new_item(part: &NewPart, now: Timestamp) -> Item {
        let id = part.batch_id.as_str();
        let attributes = [
            (BATCH_ID, s(id)),
            (STATUS, s(BatchStatus::Pending.as_str())),
            (TOTAL_ITEMS, n(part.total_items)),
            (RECEIVED_ITEMS, n(0)),
            (SUCCEEDED_ITEMS, n(0)),
            (FAILED_ITEMS, n(0)),
            (CANCELLED_ITEMS, n(0)),
            (TOTAL_CHUNKS, n(0)),
            (COMPLETED_CHUNKS, n(0)),
            (BATCH_SIZE, n(part.batch_size.get())),
            (CANCEL_REQUESTED, flag_value(false)),
            (CREATED_AT, n(now.0)),
            (UPDATED_AT, n(now.0)),
            (WINDOW_STARTED_AT, n(now.0)),
            (WINDOW_TERMINAL, n(0)),
            (PREVIOUS_RATE, n(0)),
            (CREATED_KEY, s(created_key(now.0, &part.batch_id))),
            (LIST_PARTITION, s(LIST_PARTITION_VALUE)),
            (STARTABLE_CHUNKS, n(0)),
            (STARTED_CHUNKS, n(0)),
            (IN_FLIGHT, n(0)),
        ];
        let limit = part
            .max_concurrency
            .map(|limit| (MAX_CONCURRENCY.to_owned(), n(limit)));
        attributes
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .chain(limit)
            .collect::<HashMap<_, _>>()
    }
}

impl DynamoStore {
    /// The batch item as stored, read strongly consistent.
    pub(super) async fn read_batch_item(
        &self,
        batch_id: &BatchId,
    ) -> Result<Option<Item>, StoreError> {
        self.meter.read();
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(batch_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output.item)
    }

    pub(super) async fn load_batch(
        &self,
        batch_id: &BatchId,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let item = self.read_batch_item(batch_id).await?;
        item.as_ref().map(BatchRecord::from_item).transpose()
    }

    /// Batches by ID, in the order given, leaving out any that vanished meanwhile.
    pub(super) async fn load_batches(&self, ids: Vec<BatchId>) -> Result<Vec<Batch>, StoreError> {
        let batches = stream::iter(ids)
            .map(|batch_id| async move { self.load_batch(&batch_id).await })
            .buffered(BATCH_READS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(batches
            .into_iter()
            .flatten()
            .map(|record| record.batch)
            .collect())
    }

    /// Creates the batch item unless it exists; returns the stored batch.
    pub(super) async fn create_or_load_batch(
        &self,
        part: &NewPart,
    ) -> Result<BatchRecord, StoreError> {
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
            .condition_expression(format!("attribute_not_exists({BATCH_ID})"))
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

    /// Moves a batch to the status `progress` leads to (only one caller wins); returns the
    /// batch as it stands.
    pub(super) async fn settle(
        &self,
        batch_id: &BatchId,
        progress: Progress,
    ) -> Result<Batch, StoreError> {
        Ok(self.settle_record(batch_id, progress).await?.batch)
    }

    /// [`Self::settle`], answering the batch item as read or written.
    pub(super) async fn settle_record(
        &self,
        batch_id: &BatchId,
        progress: Progress,
    ) -> Result<BatchRecord, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let record = self
                .load_batch(batch_id)
                .await?
                .ok_or_else(|| StoreError::Unavailable(format!("batch {batch_id} vanished")))?;
            let Some(next) = rules::next_status(&record.batch, record.cancel_requested, progress)
            else {
                return Ok(record);
            };
            if let Some(moved) = self.move_status(&record.batch, next).await? {
                return Ok(moved);
            }
        }
        Err(contended(format!("batch {batch_id}")))
    }

    /// Moves a batch from the status and completed-chunk count read to `next`; None when
    /// another writer changed either first.
    async fn move_status(
        &self,
        read: &Batch,
        next: BatchStatus,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let now = Timestamp::now();
        let completed = if next.is_terminal() {
            format!(", {COMPLETED_AT} = :now")
        } else {
            String::new()
        };
        self.meter.write(1);
        let sent = self
            .client
            .update_item()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(&read.batch_id)))
            .update_expression(format!(
                "SET #status = :next, {UPDATED_AT} = :now{completed}"
            ))
            .condition_expression(format!(
                "#status = :current AND {COMPLETED_CHUNKS} = :completed"
            ))
            .expression_attribute_names("#status", STATUS)
            .expression_attribute_values(":current", s(read.status.as_str()))
            .expression_attribute_values(":next", s(next.as_str()))
            .expression_attribute_values(":completed", n(read.completed_chunks))
            .expression_attribute_values(":now", n(now.0))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        conditional(sent, |e| e.is_conditional_check_failed_exception())?
            .map(|output| {
                let item = output.attributes.unwrap_or_default();
                BatchRecord::from_item(&item)
            })
            .transpose()
    }

    /// Starts the batch's next rate window when its chunk just counted at `now` ends the one
    /// under way: at most once a minute per batch, and outside the transaction that counted the
    /// chunk, so that counting costs no more. Best effort: when another writer rolled the
    /// window first, or the write fails, the window stays as that writer left it.
    pub(super) async fn roll_rate_window(&self, record: &BatchRecord, now: Timestamp) {
        if !record.window.is_due(now) {
            return;
        }
        let batch = &record.batch;
        let terminal = batch.succeeded_items + batch.failed_items + batch.cancelled_items;
        let next = record.window.rolled(terminal, now);
        let condition = if record.window_stored {
            format!("{WINDOW_STARTED_AT} = :seen")
        } else {
            format!("attribute_not_exists({WINDOW_STARTED_AT})")
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(&batch.batch_id)))
            .update_expression(format!(
                "SET {WINDOW_STARTED_AT} = :start, {WINDOW_TERMINAL} = :terminal, \
                 {PREVIOUS_RATE} = :rate"
            ))
            .condition_expression(condition)
            .expression_attribute_values(":start", n(next.started_at.0))
            .expression_attribute_values(":terminal", n(next.terminal_at_start))
            .expression_attribute_values(":rate", n(next.previous_rate));
        if record.window_stored {
            update = update.expression_attribute_values(":seen", n(record.window.started_at.0));
        }
        self.meter.write(1);
        let sent = update.send().await;
        if let Err(err) = conditional(sent, |e| e.is_conditional_check_failed_exception()) {
            tracing::warn!(batch_id = %batch.batch_id, error = %err, "could not start the batch's next rate window");
        }
    }

    /// Cancels a batch: marks it cancelled (counting the items never received, once), then
    /// cancels every chunk no task started, each once, and settles it.
    pub(super) async fn cancel(&self, batch_id: &BatchId) -> Result<CancelOutcome, StoreError> {
        if let Some(ended) = self.request_cancel(batch_id).await? {
            return Ok(ended);
        }
        let pending = self.pending_chunks(batch_id).await?;
        stream::iter(pending)
            .map(|(chunk, items)| self.cancel_chunk(batch_id, chunk, items))
            .buffer_unordered(CANCELS_IN_FLIGHT)
            .try_collect::<Vec<bool>>()
            .await?;
        Ok(CancelOutcome::Cancelled(
            self.settle(batch_id, Progress::CountersChanged).await?,
        ))
    }

    /// Marks a batch cancelled unless it is already; the answer when there is nothing more to
    /// do (not found, or terminal).
    async fn request_cancel(
        &self,
        batch_id: &BatchId,
    ) -> Result<Option<CancelOutcome>, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(record) = self.load_batch(batch_id).await? else {
                return Ok(Some(CancelOutcome::NotFound));
            };
            if record.batch.status.is_terminal() {
                return Ok(Some(CancelOutcome::AlreadyTerminal(record.batch)));
            }
            if record.cancel_requested {
                return Ok(None);
            }
            // Items of parts never received are cancelled with the request; the condition keeps
            // a part arriving meanwhile from slipping past it, and makes the request count once.
            let never_received =
                rules::cancel_request(&record.batch, CancelRequest::First).cancelled_items;
            self.meter.write(1);
            let requested = self
                .client
                .update_item()
                .table_name(&self.tables.batch_table)
                .set_key(Some(batch_key(batch_id)))
                .update_expression(format!(
                    "SET {CANCEL_REQUESTED} = :yes, {UPDATED_AT} = :now \
                     ADD {CANCELLED_ITEMS} :never_received"
                ))
                .condition_expression(format!(
                    "{RECEIVED_ITEMS} = :received AND {CANCEL_REQUESTED} = :no"
                ))
                .expression_attribute_values(":yes", flag_value(true))
                .expression_attribute_values(":no", flag_value(false))
                .expression_attribute_values(":now", n(Timestamp::now().0))
                .expression_attribute_values(":never_received", n(never_received))
                .expression_attribute_values(":received", n(record.batch.received_items))
                .send()
                .await;
            if conditional(requested, |e| e.is_conditional_check_failed_exception())?.is_some() {
                return Ok(None);
            }
        }
        Err(contended(format!("batch {batch_id}")))
    }
}
