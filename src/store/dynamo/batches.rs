//! The batch item: reading and creating it, moving its status, and cancelling a batch.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{ReturnValue, TransactWriteItem, Update};
use futures::{stream, StreamExt, TryStreamExt};

use super::attributes::{
    batch_key, corrupt, created_key, flag, flag_value, n, number, optional_number, optional_text,
    s, text, Item, BATCH_ID, BATCH_SIZE, CANCELLED_ITEMS, CANCEL_REQUESTED, COMPLETED_AT,
    COMPLETED_CHUNKS, CREATED_AT, CREATED_KEY, FAILED_ITEMS, FAILURE_REASON, LAST_RECORDED_AT,
    LIST_PARTITION, LIST_PARTITION_VALUE, MAX_CONCURRENCY, PREVIOUS_RATE, RECEIVED_ITEMS,
    REDRIVE_COUNT, REDRIVE_INCLUDES_CANCELLED, STATUS, STOPPED_AT, STOPPED_BY, STOP_SWEPT,
    SUCCEEDED_ITEMS, TOLERATED_COUNT, TOLERATED_PERCENTAGE, TOTAL_CHUNKS, TOTAL_ITEMS, UPDATED_AT,
    WINDOW_STARTED_AT, WINDOW_TERMINAL,
};
use super::attributes::{CALLBACK_ATTEMPTS, CALLBACK_LAST_ERROR, CALLBACK_STATUS, CALLBACK_URL};
use super::starts::{IN_FLIGHT, STARTABLE_CHUNKS, STARTED_CHUNKS};
use super::writes::{conditional, unavailable, write_units};
use super::{contended, DynamoStore, OPTIMISTIC_ATTEMPTS};
use crate::domain::{
    Batch, BatchId, BatchStatus, Callback, CallbackStatus, CallbackUrl, FailureBudget, NewPart,
    Timestamp,
};
use crate::store::progress::{self, RateWindow};
use crate::store::rules::{self, CancelRequest, Progress, Refusal, Stop};
use crate::store::{CancelOutcome, ControlOutcome, StoreError};

/// Chunk cancellations in flight at once.
const CANCELS_IN_FLIGHT: usize = 16;
/// Batch items read at once while listing.
const BATCH_READS_IN_FLIGHT: usize = 16;

/// A batch item: the snapshot plus what only the store needs.
#[derive(Debug, Clone)]
pub(super) struct BatchRecord {
    pub(super) batch: Batch,
    /// No part may follow (the batch was cancelled or stopped; the missing ones are counted).
    pub(super) cancel_requested: bool,
    /// Why the batch stopped starting chunks, in its current run.
    pub(super) stop: Option<Stop>,
    /// Whether the last redrive re-ran cancelled items too.
    pub(super) redrive_includes_cancelled: bool,
    /// When the current run's stop was requested, and whether it has cancelled every chunk
    /// no task started.
    stopped_at: Option<Timestamp>,
    stop_swept: bool,
    /// Where the batch's rate is measured from.
    pub(super) window: RateWindow,
    /// Whether the window is stored (batches from before it have none).
    window_stored: bool,
}

/// Why a batch item's current run stopped. Items written before stops were named hold only
/// `cancelRequested`, which a cancel alone set.
pub(super) fn stop_of(item: &Item) -> Result<Option<Stop>, StoreError> {
    match optional_text(item, STOPPED_BY) {
        Some(name) => Stop::from_name(name)
            .map(Some)
            .ok_or_else(|| corrupt(STOPPED_BY)),
        None if flag(item, CANCEL_REQUESTED) && !item.contains_key(REDRIVE_COUNT) => {
            Ok(Some(Stop::Cancelled))
        }
        None => Ok(None),
    }
}

impl BatchRecord {
    pub(super) fn from_item(item: &Item) -> Result<Self, StoreError> {
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
            failure_budget: FailureBudget {
                percentage: optional_number(item, TOLERATED_PERCENTAGE)?,
                count: optional_number(item, TOLERATED_COUNT)?,
            },
            failure_reason: optional_text(item, FAILURE_REASON).map(str::to_owned),
            redrive_count: optional_number(item, REDRIVE_COUNT)?.unwrap_or(0),
            callback: Callback {
                url: optional_text(item, CALLBACK_URL)
                    .map(|url| CallbackUrl::from_trusted(url.to_owned())),
                status: match optional_text(item, CALLBACK_STATUS) {
                    None => CallbackStatus::None,
                    Some(name) => {
                        CallbackStatus::from_name(name).ok_or_else(|| corrupt(CALLBACK_STATUS))?
                    }
                },
                attempts: optional_number(item, CALLBACK_ATTEMPTS)?.unwrap_or(0),
                last_error: optional_text(item, CALLBACK_LAST_ERROR).map(str::to_owned),
            },
            progress: Default::default(),
        };
        batch.progress = progress::progress_of(&batch, &window, Timestamp::now());
        Ok(Self {
            batch,
            cancel_requested: flag(item, CANCEL_REQUESTED),
            stop: stop_of(item)?,
            redrive_includes_cancelled: flag(item, REDRIVE_INCLUDES_CANCELLED),
            stopped_at: optional_number(item, STOPPED_AT)?.map(Timestamp),
            stop_swept: flag(item, STOP_SWEPT),
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
        let budget = part.failure_budget.unwrap_or_default();
        let optional = [
            (MAX_CONCURRENCY, part.max_concurrency.map(n)),
            (TOLERATED_PERCENTAGE, budget.percentage.map(n)),
            (TOLERATED_COUNT, budget.count.map(n)),
            (
                CALLBACK_URL,
                part.callback_url.as_ref().map(|url| s(url.as_str())),
            ),
        ];
        attributes
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .chain(
                optional
                    .into_iter()
                    .filter_map(|(name, value)| Some((name.to_owned(), value?))),
            )
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

    /// Sets a batch's callback URL; false when there is no such batch.
    pub(super) async fn write_callback_url(
        &self,
        batch_id: &BatchId,
        url: &CallbackUrl,
    ) -> Result<bool, StoreError> {
        self.meter.write(1);
        let sent = self
            .update_batch_item(batch_id)
            .condition_expression(format!("attribute_exists({BATCH_ID})"))
            .update_expression(format!("SET {CALLBACK_URL} = :url"))
            .expression_attribute_values(":url", s(url.as_str()))
            .send()
            .await;
        Ok(conditional(sent, |e| e.is_conditional_check_failed_exception())?.is_some())
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

    /// [`Self::settle`], then [`Self::stop_if_over_budget`] (the caller found a chunk counted
    /// by a caller that may have stopped short of either).
    pub(super) async fn settle_counted(&self, batch_id: &BatchId) -> Result<Batch, StoreError> {
        let record = self
            .settle_record(batch_id, Progress::ChunkRecorded)
            .await?;
        self.stop_if_over_budget(record).await
    }

    /// Stops the batch, as read in `record`, if its failures have exceeded its budget; the
    /// batch as it stands after.
    pub(super) async fn stop_if_over_budget(
        &self,
        record: BatchRecord,
    ) -> Result<Batch, StoreError> {
        let Some(reason) = rules::budget_stop(&record.batch, record.stop) else {
            return Ok(record.batch);
        };
        match self
            .stop_batch(&record.batch.batch_id, Stop::BudgetExceeded, Some(reason))
            .await?
        {
            CancelOutcome::Cancelled(batch) | CancelOutcome::AlreadyTerminal(batch) => Ok(batch),
            CancelOutcome::NotFound => Ok(record.batch),
        }
    }

    /// [`Self::settle`], answering the batch item as read or written.
    pub(super) async fn settle_record(
        &self,
        batch_id: &BatchId,
        progress: Progress,
    ) -> Result<BatchRecord, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let mut record = self
                .load_batch(batch_id)
                .await?
                .ok_or_else(|| StoreError::Unavailable(format!("batch {batch_id} vanished")))?;
            let Some(next) = rules::next_status(
                &record.batch,
                record.cancel_requested,
                record.stop,
                progress,
            ) else {
                return Ok(record);
            };
            if let Some(moved) = self.move_status(&record.batch, next).await? {
                record.batch = moved;
                return Ok(record);
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
    ) -> Result<Option<Batch>, StoreError> {
        if next.is_terminal() && self.wants_outbox(read) {
            return self.finish_with_outbox(read, next).await;
        }
        let now = Timestamp::now();
        let completed = if next.is_terminal() {
            format!(", {COMPLETED_AT} = :now")
        } else {
            String::new()
        };
        self.meter.write(1);
        let sent = self
            .update_batch_item(&read.batch_id)
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
                Ok(BatchRecord::from_item(&item)?.batch)
            })
            .transpose()
    }

    /// [`Self::move_status`] to a terminal status, and the transition's outbox record, in one
    /// transaction. The condition also holds the callback URL read, which the record carries.
    async fn finish_with_outbox(
        &self,
        read: &Batch,
        next: BatchStatus,
    ) -> Result<Option<Batch>, StoreError> {
        let now = Timestamp::now();
        let mut after = read.clone();
        after.status = next;
        after.updated_at = now;
        after.completed_at = Some(now);
        let (put_outbox, outbox_units) = self.outbox_put(&after)?;
        let (url_condition, callback_update) = match &read.callback.url {
            Some(_) => (
                format!("{CALLBACK_URL} = :url"),
                format!(
                    ", {CALLBACK_STATUS} = :pending, {CALLBACK_ATTEMPTS} = :zero REMOVE {CALLBACK_LAST_ERROR}"
                ),
            ),
            None => (format!("attribute_not_exists({CALLBACK_URL})"), String::new()),
        };
        let mut update = Update::builder()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(&read.batch_id)))
            .update_expression(format!(
                "SET #status = :next, {UPDATED_AT} = :now, {COMPLETED_AT} = :now{callback_update}"
            ))
            .condition_expression(format!(
                "#status = :current AND {COMPLETED_CHUNKS} = :completed AND {url_condition}"
            ))
            .expression_attribute_names("#status", STATUS)
            .expression_attribute_values(":current", s(read.status.as_str()))
            .expression_attribute_values(":next", s(next.as_str()))
            .expression_attribute_values(":completed", n(read.completed_chunks))
            .expression_attribute_values(":now", n(now.0));
        if let Some(url) = &read.callback.url {
            update = update
                .expression_attribute_values(":url", s(url.as_str()))
                .expression_attribute_values(":pending", s(CallbackStatus::Pending.as_str()))
                .expression_attribute_values(":zero", n(0));
        }
        let writes = vec![
            TransactWriteItem::builder().update(update.build()?).build(),
            put_outbox,
        ];
        if !self.transact(writes, 1 + outbox_units).await? {
            return Ok(None);
        }
        if read.callback.url.is_some() {
            after.callback.status = CallbackStatus::Pending;
            after.callback.attempts = 0;
            after.callback.last_error = None;
        }
        Ok(Some(after))
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
            .update_batch_item(&batch.batch_id)
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

    /// Cancels a batch (see [`Self::stop_batch`]).
    pub(super) async fn cancel(&self, batch_id: &BatchId) -> Result<CancelOutcome, StoreError> {
        self.stop_batch(batch_id, Stop::Cancelled, None).await
    }

    /// Stops a batch: marks it stopped (counting the items never received, once; the first
    /// stop of a run says how the run ends), then cancels every chunk no task started, each
    /// once, and settles it.
    pub(super) async fn stop_batch(
        &self,
        batch_id: &BatchId,
        stop: Stop,
        reason: Option<String>,
    ) -> Result<CancelOutcome, StoreError> {
        if let Some(ended) = self.request_stop(batch_id, stop, reason.as_deref()).await? {
            return Ok(ended);
        }
        let Some(record) = self.load_batch(batch_id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let pending = self.pending_chunks(&record).await?;
        stream::iter(pending)
            .map(|(chunk, state)| self.cancel_chunk_state(batch_id, chunk, state))
            .buffer_unordered(CANCELS_IN_FLIGHT)
            .try_collect::<Vec<bool>>()
            .await?;
        if !record.stop_swept {
            self.meter.write(1);
            let sent = self
                .update_batch_item(batch_id)
                .update_expression(format!("SET {STOP_SWEPT} = :yes"))
                .condition_expression(format!("attribute_exists({STOPPED_BY})"))
                .expression_attribute_values(":yes", flag_value(true))
                .send()
                .await;
            // A failed condition: a redrive cleared the stop meanwhile, nothing to mark.
            conditional(sent, |e| e.is_conditional_check_failed_exception())?;
        }
        Ok(CancelOutcome::Cancelled(
            self.settle(batch_id, Progress::CountersChanged).await?,
        ))
    }

    /// Finishes a stop whose stopper died before it cancelled every chunk no task started
    /// (a stop older than `after` that is not marked swept); whether it did.
    pub async fn finish_stop(
        &self,
        batch_id: &BatchId,
        after: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let Some(record) = self.load_batch(batch_id).await? else {
            return Ok(false);
        };
        let (Some(stop), Some(stopped_at)) = (record.stop, record.stopped_at) else {
            return Ok(false);
        };
        let age = Timestamp::now().0.saturating_sub(stopped_at.0);
        if record.stop_swept || record.batch.status.is_terminal() || age < after.as_micros() as i64
        {
            return Ok(false);
        }
        self.stop_batch(batch_id, stop, None).await?;
        Ok(true)
    }

    /// Marks a batch stopped unless it is already; the answer when there is nothing more to
    /// do (not found, or terminal).
    async fn request_stop(
        &self,
        batch_id: &BatchId,
        stop: Stop,
        reason: Option<&str>,
    ) -> Result<Option<CancelOutcome>, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(record) = self.load_batch(batch_id).await? else {
                return Ok(Some(CancelOutcome::NotFound));
            };
            if record.batch.status.is_terminal() {
                return Ok(Some(CancelOutcome::AlreadyTerminal(record.batch)));
            }
            if record.stop.is_some() {
                return Ok(None);
            }
            // Items of parts never received are cancelled with the first request; the
            // condition keeps a part arriving meanwhile from slipping past it, and makes the
            // request count once.
            let never_received =
                rules::cancel_request(&record.batch, CancelRequest::given(record.cancel_requested))
                    .cancelled_items;
            let reason_update = match reason {
                Some(_) => format!(", {FAILURE_REASON} = :reason"),
                None => String::new(),
            };
            let mut update = self
                .update_batch_item(batch_id)
                .update_expression(format!(
                    "SET {CANCEL_REQUESTED} = :yes, {STOPPED_BY} = :stop, {STOPPED_AT} = :now, \
                     {UPDATED_AT} = :now{reason_update} \
                     ADD {CANCELLED_ITEMS} :never_received"
                ))
                .condition_expression(format!(
                    "{RECEIVED_ITEMS} = :received AND {CANCEL_REQUESTED} = :requested \
                     AND attribute_not_exists({STOPPED_BY})"
                ))
                .expression_attribute_values(":yes", flag_value(true))
                .expression_attribute_values(":requested", flag_value(record.cancel_requested))
                .expression_attribute_values(":stop", s(stop.as_str()))
                .expression_attribute_values(":now", n(Timestamp::now().0))
                .expression_attribute_values(":never_received", n(never_received))
                .expression_attribute_values(":received", n(record.batch.received_items));
            if let Some(reason) = reason {
                update = update.expression_attribute_values(":reason", s(reason));
            }
            self.meter.write(1);
            if conditional(update.send().await, |e| {
                e.is_conditional_check_failed_exception()
            })?
            .is_some()
            {
                return Ok(None);
            }
        }
        Err(contended(format!("batch {batch_id}")))
    }

    /// Pauses or resumes a batch, as `next` (the rules' pause or resume) says; a resumed batch
    /// is noted on the request table's stream, so that its starts go ahead at once.
    pub(super) async fn control(
        &self,
        batch_id: &BatchId,
        next: fn(&Batch) -> Result<Option<BatchStatus>, Refusal>,
    ) -> Result<ControlOutcome, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(record) = self.load_batch(batch_id).await? else {
                return Ok(ControlOutcome::NotFound);
            };
            let status = match next(&record.batch) {
                Err(Refusal(reason)) => return Ok(ControlOutcome::Refused(reason)),
                Ok(None) => return Ok(ControlOutcome::Applied(record.batch)),
                Ok(Some(status)) => status,
            };
            self.meter.write(1);
            let sent = self
                .update_batch_item(batch_id)
                .update_expression(format!("SET #status = :next, {UPDATED_AT} = :now"))
                .condition_expression("#status = :current")
                .expression_attribute_names("#status", STATUS)
                .expression_attribute_values(":current", s(record.batch.status.as_str()))
                .expression_attribute_values(":next", s(status.as_str()))
                .expression_attribute_values(":now", n(Timestamp::now().0))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            let Some(output) = conditional(sent, |e| e.is_conditional_check_failed_exception())?
            else {
                continue;
            };
            let batch = BatchRecord::from_item(&output.attributes.unwrap_or_default())?.batch;
            if status != BatchStatus::Paused {
                self.note_limit_changed(batch_id).await?;
            }
            return Ok(ControlOutcome::Applied(batch));
        }
        Err(contended(format!("batch {batch_id}")))
    }
}
