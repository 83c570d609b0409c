//! Redriving an ended batch: which chunks run again, and the one transaction that makes the
//! batch run again.
//!
//! A redrive writes no chunk item. It reads the batch's chunk states, lists the chunks with
//! items to re-run in `redrive#<run>#<page>` items (in start order, [`REDRIVE_PAGE_CHUNKS`]
//! to an item), then, in one transaction, moves the batch item on the condition that it is
//! still the ended batch read (back to RUNNING, its counters taking the re-run items back,
//! `redriveCount` raised to the new run, the run's chunks appended to its start positions)
//! and drops its failure counts. From that write on, each listed chunk reads as PENDING with
//! those items pending (see `ChunkStateRecord::in_current_run`) and is reset when it is
//! claimed or cancelled. A redrive that stops before its write leaves only the list, which
//! the next attempt writes again with the same content: nothing else changed meanwhile, the
//! batch being ended.

use std::ops::ControlFlow;

use aws_sdk_dynamodb::types::{Delete, TransactWriteItem, Update};

use super::attributes::{
    batch_key, flag_value, n, redrive_sk, request_key, s, text, RequestKey, CANCELLED_ITEMS,
    CHUNKS, COMPLETED_AT, COMPLETED_CHUNKS, ERROR_COUNTS_SK, FAILED_ITEMS, FAILURE_REASON,
    ITEM_IDS, REDRIVE_COUNT, REDRIVE_FIRST_POSITION, REDRIVE_INCLUDES_CANCELLED, STATUS,
    STOPPED_AT, STOPPED_BY, STOP_SWEPT, UPDATED_AT,
};
use super::batches::BatchRecord;
use super::chunks::ChunkStateRecord;
use super::starts::{
    IN_FLIGHT, REDRIVE_PAGE_CHUNKS, STARTABLE_CHUNKS, STARTED_CHUNKS, STARTING_AT, STARTING_FROM,
    STARTING_TO,
};
use super::{contended, DynamoStore, OPTIMISTIC_ATTEMPTS};
use crate::domain::{BatchId, BatchStatus, Timestamp};
use crate::store::rules::{self, RedriveCounts, Refusal};
use crate::store::{RedriveOutcome, StoreError};

/// The chunks a redrive re-runs, and what it takes back from the counters.
struct RedrivePlan {
    chunks: Vec<u64>,
    counts: RedriveCounts,
}

impl DynamoStore {
    /// `BatchStore::redrive_batch`.
    pub(super) async fn redrive(
        &self,
        batch_id: &BatchId,
        include_cancelled: bool,
    ) -> Result<RedriveOutcome, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(record) = self.load_batch(batch_id).await? else {
                return Ok(RedriveOutcome::NotFound);
            };
            if let Err(Refusal(reason)) = rules::may_redrive(&record.batch) {
                return Ok(RedriveOutcome::Refused(reason));
            }
            let plan = self.plan_redrive(&record, include_cancelled).await?;
            if plan.counts.is_empty() {
                let Refusal(reason) = rules::nothing_to_redrive(batch_id, include_cancelled);
                return Ok(RedriveOutcome::Refused(reason));
            }
            let run = record.batch.redrive_count + 1;
            self.write_redrive_pages(batch_id, run, &plan.chunks)
                .await?;
            if let Some(outcome) = self
                .start_run(&record, run, include_cancelled, &plan)
                .await?
            {
                self.note_limit_changed(batch_id).await?;
                return Ok(outcome);
            }
        }
        Err(contended(format!("batch {batch_id}")))
    }

    async fn plan_redrive(
        &self,
        record: &BatchRecord,
        include_cancelled: bool,
    ) -> Result<RedrivePlan, StoreError> {
        let mut plan = RedrivePlan {
            chunks: Vec::new(),
            counts: RedriveCounts::default(),
        };
        let mut stored = None;
        self.for_each_chunk_item(&record.batch.batch_id, 0, None, |key, item| {
            match key {
                RequestKey::ChunkState(index) => {
                    stored = Some((index, ChunkStateRecord::from_item(item)?));
                }
                RequestKey::ChunkIds(index) => {
                    let ids = text(item, ITEM_IDS)?;
                    let mut state = ChunkStateRecord::of_chunk(index, stored.take(), ids)
                        .in_current_run(record);
                    if let Some(taken) = state.outcomes.redrive(include_cancelled) {
                        plan.chunks.push(index);
                        plan.counts.failed_items += taken.failed;
                        plan.counts.cancelled_items += taken.cancelled;
                        plan.counts.chunks += 1;
                    }
                }
                RequestKey::Part(_) | RequestKey::PartHashes(_) => {}
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(plan)
    }

    async fn write_redrive_pages(
        &self,
        batch_id: &BatchId,
        run: u32,
        chunks: &[u64],
    ) -> Result<(), StoreError> {
        for (page, listed) in chunks.chunks(REDRIVE_PAGE_CHUNKS as usize).enumerate() {
            let mut item = request_key(batch_id, redrive_sk(run, page as u64));
            let joined = listed
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            item.insert(CHUNKS.to_owned(), s(joined));
            self.put_request_item(item).await?;
        }
        Ok(())
    }

    /// The write that makes the batch run again, on the condition that it is still the
    /// ended batch read; None when another writer changed it first.
    async fn start_run(
        &self,
        record: &BatchRecord,
        run: u32,
        include_cancelled: bool,
        plan: &RedrivePlan,
    ) -> Result<Option<RedriveOutcome>, StoreError> {
        let batch = &record.batch;
        let counters = self
            .load_start_counters(&batch.batch_id)
            .await?
            .ok_or_else(|| StoreError::Unavailable(format!("batch {} vanished", batch.batch_id)))?;
        let first = counters.next_run_first();
        let previous_run = match batch.redrive_count {
            0 => format!("attribute_not_exists({REDRIVE_COUNT})"),
            _ => format!("{REDRIVE_COUNT} = :previous"),
        };
        let mut update = Update::builder()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(&batch.batch_id)))
            .update_expression(format!(
                "SET #status = :running, {REDRIVE_COUNT} = :run, \
                 {REDRIVE_INCLUDES_CANCELLED} = :include, {REDRIVE_FIRST_POSITION} = :first, \
                 {STARTED_CHUNKS} = :first, {STARTABLE_CHUNKS} = :startable, {IN_FLIGHT} = :zero, \
                 {UPDATED_AT} = :now \
                 REMOVE {COMPLETED_AT}, {STOPPED_BY}, {STOPPED_AT}, {STOP_SWEPT}, {FAILURE_REASON}, {STARTING_FROM}, \
                 {STARTING_TO}, {STARTING_AT} \
                 ADD {FAILED_ITEMS} :failed, {CANCELLED_ITEMS} :cancelled, {COMPLETED_CHUNKS} :chunks"
            ))
            .condition_expression(format!(
                "#status = :ended AND {COMPLETED_CHUNKS} = :completed AND {previous_run}"
            ))
            .expression_attribute_names("#status", STATUS)
            .expression_attribute_values(":running", s(BatchStatus::Running.as_str()))
            .expression_attribute_values(":ended", s(batch.status.as_str()))
            .expression_attribute_values(":completed", n(batch.completed_chunks))
            .expression_attribute_values(":run", n(run))
            .expression_attribute_values(":include", flag_value(include_cancelled))
            .expression_attribute_values(":first", n(first))
            .expression_attribute_values(":startable", n(first + plan.counts.chunks))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(Timestamp::now().0))
            .expression_attribute_values(":failed", n(-(plan.counts.failed_items as i64)))
            .expression_attribute_values(":cancelled", n(-(plan.counts.cancelled_items as i64)))
            .expression_attribute_values(":chunks", n(-(plan.counts.chunks as i64)));
        if batch.redrive_count > 0 {
            update = update.expression_attribute_values(":previous", n(batch.redrive_count));
        }
        // Every failed item runs again: the failure counts start over with the new run.
        let forget_errors = Delete::builder()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(
                &batch.batch_id,
                ERROR_COUNTS_SK.to_owned(),
            )))
            .build()?;
        let writes = vec![
            TransactWriteItem::builder().update(update.build()?).build(),
            TransactWriteItem::builder().delete(forget_errors).build(),
        ];
        if !self.transact(writes, 2).await? {
            return Ok(None);
        }
        let redriven = self
            .load_batch(&batch.batch_id)
            .await?
            .ok_or_else(|| StoreError::Unavailable(format!("batch {} vanished", batch.batch_id)))?;
        Ok(Some(RedriveOutcome::Redriven {
            batch: redriven.batch,
            chunks: plan.chunks.clone(),
            items: plan.counts.failed_items + plan.counts.cancelled_items,
        }))
    }
}
