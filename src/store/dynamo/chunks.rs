//! Chunk items: writing a part's chunks, reading them in key order, and a chunk's lifecycle
//! (claimed, outcomes saved, recorded once, or cancelled once before it started).
//!
//! A part's write stores only its chunks' ID items, which never change: writing one again, from
//! a retry, a second client or a write that lands late, changes nothing. A chunk with no state
//! item is PENDING with every item pending; its state item is created by the first transition
//! (claim, saved outcomes, record or cancel), on the condition that none exists yet, and is
//! from then on replaced only at the version read. Every write of a state item raises its
//! version, so no write can bring back a state that moved on.

use std::ops::ControlFlow;

use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

use super::attributes::{
    batch_key, chunk_sk, flag_value, ids_sk, job_sk, n, number, optional_number, optional_text,
    part_sk, request_key, request_key_of, s, text, Item, RequestKey, AFTER_CHUNKS, ATTEMPTS,
    ATTEMPT_BASE, BATCH_ID, CANCELLED_ITEMS, CHUNKS_WRITTEN, COMPLETED_CHUNKS, ERRORS,
    FAILED_COUNT, FAILED_ITEMS, ITEM_COUNT, ITEM_IDS, LAST_RECORDED_AT, RUN, SK, STAGE, STATES,
    SUCCEEDED_ITEMS, UPDATED_AT, VERSION,
};
use super::batches::BatchRecord;
use super::starts::IN_FLIGHT;
use super::writes::{conditional, unavailable, write_units};
use super::{contended, DynamoStore, OPTIMISTIC_ATTEMPTS};
use crate::domain::{BatchId, BatchStatus, ItemOutcome, NewPart, Timestamp};
use crate::store::codec::{self, ChunkOutcomes};
use crate::store::rules::{self, Progress};
use crate::store::{Chunk, ChunkClaim, ChunkStage, RecordOutcome, StoreError, Unfinished};

/// A chunk's state: its state item, or, before one is stored, every item pending.
#[derive(Debug, Clone)]
pub(super) struct ChunkStateRecord {
    pub(super) outcomes: ChunkOutcomes,
    pub(super) item_count: u64,
    /// The stored version; 0 when no state item is stored yet.
    version: u64,
    /// The redrive whose run this state belongs to (0: the batch's first run).
    run: u32,
}

impl ChunkStateRecord {
    pub(super) fn from_item(item: &Item) -> Result<Self, StoreError> {
        Ok(Self {
            outcomes: ChunkOutcomes::decode(
                text(item, STAGE)?,
                text(item, STATES)?.to_owned(),
                optional_text(item, ERRORS),
                number(item, ATTEMPTS)?,
            )?
            .with_attempt_base(optional_number(item, ATTEMPT_BASE)?.unwrap_or(0)),
            item_count: number(item, ITEM_COUNT)?,
            version: number(item, VERSION)?,
            run: optional_number(item, RUN)?.unwrap_or(0),
        })
    }

    /// The chunk as its batch's last redrive left it. A redrive changes no chunk item: a
    /// chunk of an earlier run that the redrive re-runs is PENDING with those items pending
    /// from the moment the batch item says so, and is written that way by its next
    /// transition (its claim, or a cancel).
    pub(super) fn in_current_run(mut self, batch: &BatchRecord) -> Self {
        let run = batch.batch.redrive_count;
        if self.run < run
            && self
                .outcomes
                .redrive(batch.redrive_includes_cancelled)
                .is_some()
        {
            self.run = run;
        }
        self
    }

    /// The state of a chunk of `ids` (joined) that has no state item.
    fn unstored(ids: &str) -> Self {
        let item_count = codec::split_ids(ids).count();
        Self {
            outcomes: ChunkOutcomes::new(item_count),
            item_count: item_count as u64,
            version: 0,
            run: 0,
        }
    }

    /// The stored state of chunk `index`, if `stored` holds it, or the state of a chunk with
    /// no state item.
    pub(super) fn of_chunk(index: u64, stored: Option<(u64, Self)>, ids: &str) -> Self {
        match stored {
            Some((stored_index, state)) if stored_index == index => state,
            _ => Self::unstored(ids),
        }
    }

    fn to_item(&self, batch_id: &BatchId, chunk: u64) -> Item {
        let mut item = request_key(batch_id, chunk_sk(chunk));
        item.extend([
            (STAGE.to_owned(), s(self.outcomes.stage.as_str())),
            (STATES.to_owned(), s(self.outcomes.states_text())),
            (
                FAILED_COUNT.to_owned(),
                n(self.outcomes.count_not_succeeded()),
            ),
            (ATTEMPTS.to_owned(), n(self.outcomes.attempts)),
            (ITEM_COUNT.to_owned(), n(self.item_count)),
            (VERSION.to_owned(), n(self.version)),
        ]);
        if let Some(errors) = self.outcomes.errors_json() {
            item.insert(ERRORS.to_owned(), s(errors));
        }
        if self.run > 0 {
            item.insert(RUN.to_owned(), n(self.run));
        }
        if self.outcomes.attempt_base > 0 {
            item.insert(ATTEMPT_BASE.to_owned(), n(self.outcomes.attempt_base));
        }
        item
    }

    /// The next state item to write, with the condition (on `:seen`, the version read) that
    /// the stored state is still the one read: that version, or, when it was 0, no state item
    /// yet (state items written at version 0 predate this layout and are still PENDING).
    fn next_item(&mut self, batch_id: &BatchId, chunk: u64) -> (Item, String, u64) {
        let seen = self.version;
        self.version += 1;
        let condition = if seen == 0 {
            format!("attribute_not_exists({VERSION}) OR {VERSION} = :seen")
        } else {
            format!("{VERSION} = :seen")
        };
        (self.to_item(batch_id, chunk), condition, seen)
    }
}

impl DynamoStore {
    pub(super) async fn get_request_item(
        &self,
        batch_id: &BatchId,
        sk: String,
    ) -> Result<Option<Item>, StoreError> {
        self.meter.read();
        Ok(self
            .client
            .get_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(batch_id, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?
            .item)
    }

    /// Writes a request-table item whatever was there (an item only its writer changes).
    pub(super) async fn put_request_item(&self, item: Item) -> Result<(), StoreError> {
        self.meter.write(write_units(&item));
        self.client
            .put_item()
            .table_name(&self.tables.request_table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A chunk's state, or None when the chunk's IDs are not stored.
    async fn load_state(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<ChunkStateRecord>, StoreError> {
        if let Some(item) = self.get_request_item(batch_id, chunk_sk(chunk)).await? {
            return ChunkStateRecord::from_item(&item).map(Some);
        }
        let ids = self.get_request_item(batch_id, ids_sk(chunk)).await?;
        ids.map(|item| Ok(ChunkStateRecord::unstored(text(&item, ITEM_IDS)?)))
            .transpose()
    }

    /// A chunk's state and its IDs (joined), in one query; None when the IDs are not stored.
    async fn load_state_and_ids(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<(ChunkStateRecord, String)>, StoreError> {
        let mut stored = None;
        let mut loaded = None;
        self.for_each_chunk_item(batch_id, chunk, Some(chunk + 1), |key, item| {
            match key {
                RequestKey::ChunkState(index) => {
                    stored = Some((index, ChunkStateRecord::from_item(item)?));
                }
                RequestKey::ChunkIds(index) => {
                    let ids = text(item, ITEM_IDS)?;
                    let state = ChunkStateRecord::of_chunk(index, stored.take(), ids);
                    loaded = Some((state, ids.to_owned()));
                }
                RequestKey::Part(_) | RequestKey::PartHashes(_) => {}
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        if loaded.is_none() && stored.is_some() {
            return Err(StoreError::Corrupt(format!(
                "chunk {chunk} of {batch_id} has no IDs"
            )));
        }
        Ok(loaded)
    }

    /// Writes a part's chunks (their ID items), then marks the part written. Each ID item is
    /// the same whoever writes it, so concurrent and repeated writes of a part agree.
    pub(super) async fn write_chunks(
        &self,
        part: &NewPart,
        first_chunk: u64,
    ) -> Result<(), StoreError> {
        let ids = part
            .chunks()
            .enumerate()
            .map(|(offset, chunk_items)| {
                let chunk = first_chunk + offset as u64;
                let mut ids_item = request_key(&part.batch_id, ids_sk(chunk));
                ids_item.insert(ITEM_IDS.to_owned(), s(codec::join_ids(chunk_items)));
                ids_item
            })
            .collect();
        self.write_all(ids).await?;
        self.meter.write(1);
        self.client
            .update_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(&part.batch_id, part_sk(part.part_number))))
            .update_expression(format!("SET {CHUNKS_WRITTEN} = :yes"))
            .expression_attribute_values(":yes", flag_value(true))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Chunks of `from..until` (every chunk from `from` when None) still PENDING, as of
    /// `batch` (see [`ChunkStateRecord::in_current_run`]), with their states.
    pub(super) async fn pending_chunks_in(
        &self,
        batch: &BatchRecord,
        from: u64,
        until: Option<u64>,
    ) -> Result<Vec<(u64, ChunkStateRecord)>, StoreError> {
        let batch_id = &batch.batch.batch_id;
        let mut pending = Vec::new();
        let mut stored = None;
        self.for_each_chunk_item(batch_id, from, until, |key, item| {
            match key {
                RequestKey::ChunkState(index) => {
                    stored = Some((index, ChunkStateRecord::from_item(item)?));
                }
                RequestKey::ChunkIds(index) => {
                    let ids = text(item, ITEM_IDS)?;
                    let state =
                        ChunkStateRecord::of_chunk(index, stored.take(), ids).in_current_run(batch);
                    if state.outcomes.stage == ChunkStage::Pending {
                        pending.push((index, state));
                    }
                }
                RequestKey::Part(_) | RequestKey::PartHashes(_) => {}
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(pending)
    }

    /// Every chunk of a batch still PENDING, as of `batch`, with its state.
    pub(super) async fn pending_chunks(
        &self,
        batch: &BatchRecord,
    ) -> Result<Vec<(u64, ChunkStateRecord)>, StoreError> {
        self.pending_chunks_in(batch, 0, None).await
    }

    /// Feeds the chunk items (each chunk's state item, if stored, then its ID item) of chunks
    /// `from..until` (every chunk from `from` when None) in key order to `each`, until it
    /// breaks.
    pub(super) async fn for_each_chunk_item(
        &self,
        batch_id: &BatchId,
        from: u64,
        until: Option<u64>,
        mut each: impl FnMut(RequestKey, &Item) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let upper = match until {
            None => AFTER_CHUNKS.to_owned(),
            Some(end) if end > from => ids_sk(end - 1),
            Some(_) => return Ok(()),
        };
        let mut start_key = None;
        loop {
            self.meter.read();
            let output = self
                .client
                .query()
                .table_name(&self.tables.request_table)
                .key_condition_expression(format!(
                    "{BATCH_ID} = :batch AND {SK} BETWEEN :from AND :until"
                ))
                .expression_attribute_values(":batch", s(batch_id.as_str()))
                .expression_attribute_values(":from", s(chunk_sk(from)))
                .expression_attribute_values(":until", s(upper.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(unavailable)?;
            for item in output.items() {
                let Some(key) = request_key_of(item)? else {
                    continue;
                };
                if each(key, item)?.is_break() {
                    return Ok(());
                }
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => return Ok(()),
            }
        }
    }

    /// Feeds every request-table item of the batch whose sort key starts with `prefix`, in
    /// key order, to `each`.
    pub(super) async fn for_each_item_with_prefix(
        &self,
        batch_id: &BatchId,
        prefix: &str,
        mut each: impl FnMut(&Item) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut start_key = None;
        loop {
            self.meter.read();
            let output = self
                .client
                .query()
                .table_name(&self.tables.request_table)
                .key_condition_expression(format!(
                    "{BATCH_ID} = :batch AND begins_with({SK}, :prefix)"
                ))
                .expression_attribute_values(":batch", s(batch_id.as_str()))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(unavailable)?;
            for item in output.items() {
                each(item)?;
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => return Ok(()),
            }
        }
    }

    /// `BatchStore::claim_chunk`.
    pub(super) async fn claim(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<ChunkClaim, StoreError> {
        let Some(batch) = self.load_batch(batch_id).await? else {
            return Ok(ChunkClaim::NotFound);
        };
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some((mut state, ids)) = self.load_state_and_ids(batch_id, chunk).await? else {
                return Ok(ChunkClaim::NotFound);
            };
            let run_read = state.run;
            state = state.in_current_run(&batch);
            // A chunk its batch's last redrive re-runs, claimed for the first time since.
            let redriven = state.run != run_read;
            match state.outcomes.stage {
                ChunkStage::Recorded | ChunkStage::Cancelled => return Ok(ChunkClaim::Inactive),
                ChunkStage::Pending if batch.stop.is_some() => {
                    // A part stored while the batch was being stopped, or a chunk a stopped
                    // redrive would have re-run: cancel it here.
                    if self.cancel_chunk_state(batch_id, chunk, state).await? {
                        self.settle(batch_id, Progress::CountersChanged).await?;
                        return Ok(ChunkClaim::Inactive);
                    }
                    continue;
                }
                ChunkStage::Pending => {
                    state.outcomes.stage = ChunkStage::Started;
                    let started = if redriven {
                        self.start_redriven(batch_id, chunk, &mut state).await?
                    } else {
                        self.put_state(batch_id, chunk, &mut state).await?
                    };
                    if !started {
                        continue;
                    }
                    if batch.batch.status == BatchStatus::Pending {
                        self.settle(batch_id, Progress::ChunkStarted).await?;
                    }
                }
                ChunkStage::Started => {}
            }
            return Ok(ChunkClaim::Active(state.outcomes.into_chunk(
                batch_id.clone(),
                chunk,
                &ids,
            )));
        }
        Err(contended(format!("chunk {chunk} of {batch_id}")))
    }

    /// `BatchStore::load_chunk`.
    pub(super) async fn read_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        Ok(self
            .load_state_and_ids(batch_id, chunk)
            .await?
            .map(|(state, ids)| state.outcomes.into_chunk(batch_id.clone(), chunk, &ids)))
    }

    /// `BatchStore::save_outcomes`.
    pub(super) async fn save(
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
        Err(contended(format!("chunk {chunk} of {batch_id}")))
    }

    /// `BatchStore::record_chunk`: the chunk state (on the condition that it is still the one
    /// read, which was open) and the batch counters in one transaction.
    pub(super) async fn record(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        unfinished: Unfinished<'_>,
    ) -> Result<RecordOutcome, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(mut state) = self.load_state(batch_id, chunk).await? else {
                return Ok(RecordOutcome::NotFound);
            };
            if !state.outcomes.stage.is_open() {
                // Settled and checked against the budget again: the caller that counted the
                // chunk may have stopped before either.
                return Ok(RecordOutcome::AlreadyRecorded(
                    self.settle_counted(batch_id).await?,
                ));
            }
            state.outcomes.settle(unfinished);
            let tally = state.outcomes.tally();
            let now = Timestamp::now();
            let (put_state, units) = self.state_put(batch_id, chunk, &mut state)?;
            let count = Update::builder()
                .table_name(&self.tables.batch_table)
                .set_key(Some(batch_key(batch_id)))
                .update_expression(format!(
                    "ADD {SUCCEEDED_ITEMS} :succeeded, {FAILED_ITEMS} :failed, \
                     {CANCELLED_ITEMS} :cancelled, {COMPLETED_CHUNKS} :one, {IN_FLIGHT} :freed \
                     SET {UPDATED_AT} = :now, {LAST_RECORDED_AT} = :now"
                ))
                // The chunk's slot frees with its count, in the same write (see `starts`).
                .expression_attribute_values(":freed", n(-1))
                .expression_attribute_values(":succeeded", n(tally.succeeded))
                .expression_attribute_values(":failed", n(tally.failed))
                .expression_attribute_values(":cancelled", n(tally.cancelled))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(now.0))
                .build()?;
            let mut writes = vec![
                put_state,
                TransactWriteItem::builder().update(count).build(),
            ];
            let mut units = units + 1;
            if let Some((errors, error_units)) =
                self.error_counts_update(batch_id, &state.outcomes).await?
            {
                writes.push(TransactWriteItem::builder().update(errors).build());
                units += error_units;
            }
            if self.transact(writes, units).await? {
                let record = self
                    .settle_record(batch_id, Progress::ChunkRecorded)
                    .await?;
                self.roll_rate_window(&record, now).await;
                return Ok(RecordOutcome::Recorded(
                    self.stop_if_over_budget(record).await?,
                    tally,
                ));
            }
        }
        Err(contended(format!("chunk {chunk} of {batch_id}")))
    }

    /// Cancels one PENDING chunk of `item_count` items (creating its state item when it has
    /// none) and counts its items, in one transaction; false when the chunk was no longer
    /// PENDING.
    pub(super) async fn cancel_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        item_count: u64,
    ) -> Result<bool, StoreError> {
        let counts = rules::cancelled_chunks(1, item_count);
        let unstored = ChunkOutcomes::new(item_count as usize);
        let chunk_update = Update::builder()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(batch_id, chunk_sk(chunk))))
            .update_expression(format!(
                "SET {STAGE} = :cancelled, {VERSION} = if_not_exists({VERSION}, :zero) + :one, \
                 {STATES} = if_not_exists({STATES}, :states), \
                 {ITEM_COUNT} = if_not_exists({ITEM_COUNT}, :items), \
                 {FAILED_COUNT} = if_not_exists({FAILED_COUNT}, :zero), \
                 {ATTEMPTS} = if_not_exists({ATTEMPTS}, :zero)"
            ))
            .condition_expression(format!(
                "attribute_not_exists({STAGE}) OR {STAGE} = :pending"
            ))
            .expression_attribute_values(":cancelled", s(ChunkStage::Cancelled.as_str()))
            .expression_attribute_values(":pending", s(ChunkStage::Pending.as_str()))
            .expression_attribute_values(":states", s(unstored.states_text()))
            .expression_attribute_values(":items", n(item_count))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .build()?;
        let batch_update = self.cancelled_count(batch_id, counts)?;
        let writes = vec![
            TransactWriteItem::builder().update(chunk_update).build(),
            batch_update,
        ];
        self.transact(writes, 2).await
    }

    /// Cancels a chunk that is PENDING as read (`state`, as of its batch), counting the items
    /// no run counted yet, in one transaction; false when the chunk moved on meanwhile.
    pub(super) async fn cancel_chunk_state(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        mut state: ChunkStateRecord,
    ) -> Result<bool, StoreError> {
        let uncounted = state.outcomes.count_uncounted();
        if state.version == 0 {
            return self.cancel_chunk(batch_id, chunk, uncounted).await;
        }
        state.outcomes.stage = ChunkStage::Cancelled;
        let (put_state, units) = self.state_put(batch_id, chunk, &mut state)?;
        let counts = rules::cancelled_chunks(1, uncounted);
        let batch_update = self.cancelled_count(batch_id, counts)?;
        let writes = vec![put_state, batch_update];
        self.transact(writes, units + 1).await
    }

    /// Starts a chunk that a redrive re-runs: writes its reset state (if the stored one is
    /// still the one read) and drops the job record of its earlier run, whose jobs are done,
    /// in one transaction; false when another writer got there first.
    async fn start_redriven(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        state: &mut ChunkStateRecord,
    ) -> Result<bool, StoreError> {
        let (put_state, units) = self.state_put(batch_id, chunk, state)?;
        let drop_job = Delete::builder()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(batch_id, job_sk(chunk))))
            .build()?;
        let writes = vec![
            put_state,
            TransactWriteItem::builder().delete(drop_job).build(),
        ];
        self.transact(writes, units + 1).await
    }

    /// The transaction write that stores `state`'s next version of a chunk's state item, on
    /// the condition that the stored state is still the one read; with its write units.
    fn state_put(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        state: &mut ChunkStateRecord,
    ) -> Result<(TransactWriteItem, u64), StoreError> {
        let (item, unchanged, seen) = state.next_item(batch_id, chunk);
        let units = write_units(&item);
        let put = Put::builder()
            .table_name(&self.tables.request_table)
            .set_item(Some(item))
            .condition_expression(unchanged)
            .expression_attribute_values(":seen", n(seen))
            .build()?;
        Ok((TransactWriteItem::builder().put(put).build(), units))
    }

    /// The transaction write that counts a cancelled chunk into its batch.
    fn cancelled_count(
        &self,
        batch_id: &BatchId,
        counts: rules::CancelCounts,
    ) -> Result<TransactWriteItem, StoreError> {
        let update = Update::builder()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(batch_id)))
            .update_expression(format!(
                "ADD {CANCELLED_ITEMS} :items, {COMPLETED_CHUNKS} :chunks SET {UPDATED_AT} = :now"
            ))
            .expression_attribute_values(":items", n(counts.cancelled_items))
            .expression_attribute_values(":chunks", n(counts.completed_chunks))
            .expression_attribute_values(":now", n(Timestamp::now().0))
            .build()?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Replaces a chunk's state item (or stores its first) if the stored state is still the
    /// one read; false when another writer got there first.
    async fn put_state(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        state: &mut ChunkStateRecord,
    ) -> Result<bool, StoreError> {
        let (item, unchanged, seen) = state.next_item(batch_id, chunk);
        self.meter.write(write_units(&item));
        let written = self
            .client
            .put_item()
            .table_name(&self.tables.request_table)
            .set_item(Some(item))
            .condition_expression(unchanged)
            .expression_attribute_values(":seen", n(seen))
            .send()
            .await;
        Ok(conditional(written, |e| e.is_conditional_check_failed_exception())?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_with_no_state_item_is_pending_with_every_item_pending() {
        let state = ChunkStateRecord::unstored("a\nb\nc");
        assert_eq!(state.item_count, 3);
        assert_eq!(state.outcomes, ChunkOutcomes::new(3));
        assert_eq!(state.outcomes.stage, ChunkStage::Pending);
        assert_eq!(state.version, 0);
    }

    #[test]
    fn a_stored_state_is_used_only_for_its_own_chunk() {
        let mut recorded = ChunkStateRecord::unstored("a");
        recorded.outcomes.settle(Unfinished::Failed(Some("failed")));
        recorded.version = 4;
        let same = ChunkStateRecord::of_chunk(7, Some((7, recorded.clone())), "a");
        assert_eq!(same.outcomes.stage, ChunkStage::Recorded);
        let other = ChunkStateRecord::of_chunk(8, Some((7, recorded)), "a\nb");
        assert_eq!(
            (other.outcomes.stage, other.item_count),
            (ChunkStage::Pending, 2)
        );
    }

    #[test]
    fn the_first_state_item_needs_none_stored_and_each_later_one_the_version_read() {
        let batch_id = BatchId::parse("b").unwrap();
        let mut state = ChunkStateRecord::unstored("a\nb");
        let (item, condition, seen) = state.next_item(&batch_id, 3);
        assert_eq!(seen, 0);
        assert_eq!(
            condition,
            "attribute_not_exists(version) OR version = :seen"
        );
        assert_eq!(number::<u64>(&item, VERSION).unwrap(), 1);
        assert_eq!(text(&item, SK).unwrap(), chunk_sk(3));
        let (item, condition, seen) = state.next_item(&batch_id, 3);
        assert_eq!((condition.as_str(), seen), ("version = :seen", 1));
        assert_eq!(number::<u64>(&item, VERSION).unwrap(), 2);
    }
}
