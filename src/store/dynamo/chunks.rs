//! Chunk items: writing a part's chunks, reading them in key order, and a chunk's lifecycle
//! (claimed, outcomes saved, recorded once, or cancelled once before it started).

use std::ops::ControlFlow;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use futures::{stream, StreamExt, TryStreamExt};

use super::attributes::{
    batch_key, chunk_sk, flag_value, ids_sk, n, number, optional_text, part_sk, request_key,
    request_key_of, s, text, Item, RequestKey, AFTER_CHUNKS, ATTEMPTS, BATCH_ID, CANCELLED_ITEMS,
    CHUNKS_WRITTEN, COMPLETED_CHUNKS, ERRORS, FAILED_COUNT, FAILED_ITEMS, ITEM_COUNT, ITEM_IDS, SK,
    STAGE, STATES, SUCCEEDED_ITEMS, UPDATED_AT, VERSION,
};
use super::writes::{conditional, unavailable, write_units, WRITES_IN_FLIGHT};
use super::{contended, DynamoStore, OPTIMISTIC_ATTEMPTS};
use crate::domain::{BatchId, BatchStatus, ItemOutcome, NewPart, Timestamp};
use crate::store::codec::{self, ChunkOutcomes};
use crate::store::rules::{self, Progress};
use crate::store::{Chunk, ChunkClaim, ChunkStage, RecordOutcome, StoreError};

/// A chunk's state item.
#[derive(Debug, Clone)]
pub(super) struct ChunkStateRecord {
    pub(super) outcomes: ChunkOutcomes,
    pub(super) item_count: u64,
    version: u64,
}

impl ChunkStateRecord {
    pub(super) fn from_item(item: &Item) -> Result<Self, StoreError> {
        Ok(Self {
            outcomes: ChunkOutcomes::decode(
                text(item, STAGE)?,
                text(item, STATES)?.to_owned(),
                optional_text(item, ERRORS),
                number(item, ATTEMPTS)?,
            )?,
            item_count: number(item, ITEM_COUNT)?,
            version: number(item, VERSION)?,
        })
    }

    fn to_item(&self, batch_id: &BatchId, chunk: u64) -> Item {
        let mut item = request_key(batch_id, chunk_sk(chunk));
        item.extend([
            (STAGE.to_owned(), s(self.outcomes.stage.as_str())),
            (STATES.to_owned(), s(self.outcomes.states_text())),
            (
                FAILED_COUNT.to_owned(),
                n(self.outcomes.count(codec::FAILED)),
            ),
            (ATTEMPTS.to_owned(), n(self.outcomes.attempts)),
            (ITEM_COUNT.to_owned(), n(self.item_count)),
            (VERSION.to_owned(), n(self.version)),
        ]);
        if let Some(errors) = self.outcomes.errors_json() {
            item.insert(ERRORS.to_owned(), s(errors));
        }
        item
    }
}

/// How a part's chunks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkWrite {
    /// Just reserved: no chunk of the part exists yet.
    Fresh,
    /// Reserved by an earlier attempt that may have written some chunks, which tasks or a
    /// cancel may have moved on since.
    Resume,
}

/// Which chunk items a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkItems {
    /// State items only (the ID items are filtered out).
    States,
    /// State items, each followed by its ID item.
    StatesAndIds,
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

    /// Writes a part's chunks (ID items and state items), then marks the part written.
    pub(super) async fn write_chunks(
        &self,
        part: &NewPart,
        first_chunk: u64,
        write: ChunkWrite,
    ) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(part.chunk_count() as usize);
        let mut states = Vec::with_capacity(part.chunk_count() as usize);
        for (offset, chunk_items) in part.chunks().enumerate() {
            let chunk = first_chunk + offset as u64;
            let mut ids_item = request_key(&part.batch_id, ids_sk(chunk));
            ids_item.insert(ITEM_IDS.to_owned(), s(codec::join_ids(chunk_items)));
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
                    .map(|state| self.put_new(state))
                    .buffer_unordered(WRITES_IN_FLIGHT)
                    .try_collect::<Vec<bool>>()
                    .await?;
            }
        }
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

    /// Chunks of `from..until` (every chunk from `from` when None) still PENDING, with their
    /// item counts.
    pub(super) async fn pending_chunks_in(
        &self,
        batch_id: &BatchId,
        from: u64,
        until: Option<u64>,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut pending = Vec::new();
        self.for_each_chunk_item(batch_id, from, until, ChunkItems::States, |key, item| {
            if let RequestKey::ChunkState(index) = key {
                if text(item, STAGE)? == ChunkStage::Pending.as_str() {
                    pending.push((index, number(item, ITEM_COUNT)?));
                }
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(pending)
    }

    /// Every chunk of a batch still PENDING, with its item count.
    pub(super) async fn pending_chunks(
        &self,
        batch_id: &BatchId,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.pending_chunks_in(batch_id, 0, None).await
    }

    /// Feeds the chunk items of chunks `from..until` (every chunk from `from` when None) in
    /// key order to `each`, until it breaks.
    pub(super) async fn for_each_chunk_item(
        &self,
        batch_id: &BatchId,
        from: u64,
        until: Option<u64>,
        items: ChunkItems,
        mut each: impl FnMut(RequestKey, &Item) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let upper = until.map_or_else(|| AFTER_CHUNKS.to_owned(), chunk_sk);
        let mut start_key = None;
        loop {
            self.meter.read();
            let mut query = self
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
                .set_exclusive_start_key(start_key.take());
            if items == ChunkItems::States {
                query = query.filter_expression(format!("attribute_not_exists({ITEM_IDS})"));
            }
            let output = query.send().await.map_err(unavailable)?;
            for item in output.items() {
                let Some(key) = request_key_of(item)? else {
                    continue;
                };
                let past_end = until.is_some_and(|end| key.chunk().is_some_and(|c| c >= end));
                if past_end || each(key, item)?.is_break() {
                    return Ok(());
                }
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
                text(&ids, ITEM_IDS)?,
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
        let mut state = None;
        let mut ids = None;
        let items = ChunkItems::StatesAndIds;
        self.for_each_chunk_item(batch_id, chunk, Some(chunk + 1), items, |key, item| {
            match key {
                RequestKey::ChunkIds(_) => ids = Some(text(item, ITEM_IDS)?.to_owned()),
                RequestKey::ChunkState(_) => state = Some(ChunkStateRecord::from_item(item)?),
                RequestKey::Part(_) | RequestKey::PartHashes(_) => {}
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(match (state, ids) {
            (Some(state), Some(ids)) => {
                Some(state.outcomes.into_chunk(batch_id.clone(), chunk, &ids))
            }
            _ => None,
        })
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

    /// `BatchStore::record_chunk`: the chunk state (on the condition that it is still open at
    /// the version read) and the batch counters in one transaction.
    pub(super) async fn record(
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
                .condition_expression(format!(
                    "{VERSION} = :seen AND {STAGE} IN (:pending, :started)"
                ))
                .expression_attribute_values(":seen", n(seen_version))
                .expression_attribute_values(":pending", s(ChunkStage::Pending.as_str()))
                .expression_attribute_values(":started", s(ChunkStage::Started.as_str()))
                .build()?;
            let count = Update::builder()
                .table_name(&self.tables.batch_table)
                .set_key(Some(batch_key(batch_id)))
                .update_expression(format!(
                    "ADD {SUCCEEDED_ITEMS} :succeeded, {FAILED_ITEMS} :failed, \
                     {COMPLETED_CHUNKS} :one SET {UPDATED_AT} = :now"
                ))
                .expression_attribute_values(
                    ":succeeded",
                    n(state.outcomes.count(codec::SUCCEEDED)),
                )
                .expression_attribute_values(":failed", n(state.outcomes.count(codec::FAILED)))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(Timestamp::now().0))
                .build()?;
            let writes = vec![
                TransactWriteItem::builder().put(put_state).build(),
                TransactWriteItem::builder().update(count).build(),
            ];
            if self.transact(writes, units + 1).await? {
                return Ok(RecordOutcome::Recorded(
                    self.settle(batch_id, Progress::ChunkRecorded).await?,
                ));
            }
        }
        Err(contended(format!("chunk {chunk} of {batch_id}")))
    }

    /// Cancels one PENDING chunk and counts its items, in one transaction; false when the
    /// chunk was no longer PENDING.
    pub(super) async fn cancel_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        item_count: u64,
    ) -> Result<bool, StoreError> {
        let counts = rules::cancelled_chunks(1, item_count);
        let chunk_update = Update::builder()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(batch_id, chunk_sk(chunk))))
            .update_expression(format!(
                "SET {STAGE} = :cancelled, {VERSION} = {VERSION} + :one"
            ))
            .condition_expression(format!("{STAGE} = :pending"))
            .expression_attribute_values(":cancelled", s(ChunkStage::Cancelled.as_str()))
            .expression_attribute_values(":pending", s(ChunkStage::Pending.as_str()))
            .expression_attribute_values(":one", n(1))
            .build()?;
        let batch_update = Update::builder()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(batch_id)))
            .update_expression(format!(
                "ADD {CANCELLED_ITEMS} :items, {COMPLETED_CHUNKS} :chunks SET {UPDATED_AT} = :now"
            ))
            .expression_attribute_values(":items", n(counts.cancelled_items))
            .expression_attribute_values(":chunks", n(counts.completed_chunks))
            .expression_attribute_values(":now", n(Timestamp::now().0))
            .build()?;
        let writes = vec![
            TransactWriteItem::builder().update(chunk_update).build(),
            TransactWriteItem::builder().update(batch_update).build(),
        ];
        self.transact(writes, 2).await
    }

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
            .condition_expression(format!("{VERSION} = :seen"))
            .expression_attribute_values(":seen", n(seen_version))
            .send()
            .await;
        Ok(conditional(written, |e| e.is_conditional_check_failed_exception())?.is_some())
    }
}
