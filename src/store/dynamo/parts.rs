//! Storing a part: judging it against its batch and the parts before it, reserving it and its
//! chunk range in one conditional transaction, then writing its chunks.

use std::ops::ControlFlow;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::attributes::{
    batch_key, blob, bytes, flag, flag_value, hashes_sk, n, number, part_sk, request_key,
    request_key_of, s, text, Item, RequestKey, CANCEL_REQUESTED, CHUNKS_WRITTEN, CHUNK_COUNT,
    DIGEST, FIRST_CHUNK, HASHES, ITEM_COUNT, ITEM_IDS, PART_PREFIX, RECEIVED_ITEMS, SK,
    TOTAL_CHUNKS, UPDATED_AT,
};
use super::batches::BatchRecord;
use super::writes::write_units;
use super::{contended, DynamoStore, OPTIMISTIC_ATTEMPTS};
use crate::domain::{NewPart, Timestamp};
use crate::store::codec;
use crate::store::id_hashes::{self, PartIndex};
use crate::store::rules::{self, judge_part, PartVerdict};
use crate::store::{AppendOutcome, StoreError};

/// IDs whose hashes share one item (8 bytes each, under DynamoDB's 400 KB item limit).
const HASHES_PER_ITEM: usize = 48_000;

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

impl DynamoStore {
    /// `BatchStore::append_part`.
    pub(super) async fn store_part(&self, part: &NewPart) -> Result<AppendOutcome, StoreError> {
        let digest = part.digest();
        let mut index: Option<PartIndex> = None;
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let record = self.create_or_load_batch(part).await?;
            let stored = self
                .get_request_item(&part.batch_id, part_sk(part.part_number))
                .await?;
            let stored_digest = stored.as_ref().map(|item| text(item, DIGEST)).transpose()?;
            let batch = &record.batch;
            match judge_part(batch, record.cancel_requested, stored_digest, part, &digest) {
                PartVerdict::Refuse(outcome) => return Ok(*outcome),
                PartVerdict::AlreadyStored => {
                    return self
                        .stored_again(part, record, &stored.unwrap_or_default())
                        .await
                }
                PartVerdict::Store => {}
            }
            let check = rules::repeat_check(batch, part);
            if check.needs_hashes() && index.is_none() {
                index = Some(PartIndex::new(&part.items));
            }
            if let Some(index) = index.as_ref().filter(|_| check.against_earlier) {
                if let Some(refusal) = self.find_repeated_item(part, index).await? {
                    return Ok(refusal);
                }
            }
            let first_chunk = batch.total_chunks;
            let now = Timestamp::now();
            let kept = index.as_ref().filter(|_| check.keep_hashes);
            if !self.reserve(part, &record, &digest, kept, now).await? {
                continue;
            }
            self.write_chunks(part, first_chunk).await?;
            let chunk_count = part.chunk_count();
            let mut batch = record.batch;
            batch.total_chunks = first_chunk + chunk_count;
            batch.received_items += part.items.len() as u64;
            batch.updated_at = now;
            return Ok(AppendOutcome::Created {
                batch,
                chunks: (first_chunk..first_chunk + chunk_count).collect(),
            });
        }
        Err(contended(format!("batch {}", part.batch_id)))
    }

    /// The answer to a part stored before: its chunks never started, or, when an earlier
    /// attempt has not marked them all written (it stopped, or is still writing), all of them,
    /// written now (again: a chunk written twice is the same chunk, whatever its state).
    async fn stored_again(
        &self,
        part: &NewPart,
        record: BatchRecord,
        stored: &Item,
    ) -> Result<AppendOutcome, StoreError> {
        let first_chunk: u64 = number(stored, FIRST_CHUNK)?;
        let chunk_count: u64 = number(stored, CHUNK_COUNT)?;
        if !flag(stored, CHUNKS_WRITTEN) {
            // No execution may have been started for this part's chunks yet: write them, then
            // start them.
            self.write_chunks(part, first_chunk).await?;
            return Ok(AppendOutcome::Created {
                batch: record.batch,
                chunks: (first_chunk..first_chunk + chunk_count).collect(),
            });
        }
        let unstarted_chunks = self
            .pending_chunks_in(&part.batch_id, first_chunk, Some(first_chunk + chunk_count))
            .await?
            .into_iter()
            .map(|(chunk, _)| chunk)
            .collect();
        Ok(AppendOutcome::AlreadyStored {
            batch: record.batch,
            unstarted_chunks,
        })
    }

    /// Reserves the part, its chunk range and the ID hashes `kept` (none for the part that
    /// completes the batch: no part can follow it) in one transaction, on the condition that
    /// no other part or cancel changed the batch since it was read; false when one did.
    async fn reserve(
        &self,
        part: &NewPart,
        record: &BatchRecord,
        digest: &str,
        kept: Option<&PartIndex>,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let batch = &record.batch;
        let item_count = part.items.len() as u64;
        let first_chunk = batch.total_chunks;
        let chunk_count = part.chunk_count();
        let mut part_item = request_key(&part.batch_id, part_sk(part.part_number));
        part_item.extend([
            (DIGEST.to_owned(), s(digest)),
            (FIRST_CHUNK.to_owned(), n(first_chunk)),
            (CHUNK_COUNT.to_owned(), n(chunk_count)),
            (ITEM_COUNT.to_owned(), n(item_count)),
            (CHUNKS_WRITTEN.to_owned(), flag_value(false)),
        ]);
        let put_part = Put::builder()
            .table_name(&self.tables.request_table)
            .set_item(Some(part_item))
            .condition_expression(format!("attribute_not_exists({SK})"))
            .build()?;
        let update_batch = Update::builder()
            .table_name(&self.tables.batch_table)
            .set_key(Some(batch_key(&part.batch_id)))
            .update_expression(format!(
                "SET {TOTAL_CHUNKS} = :chunks, {RECEIVED_ITEMS} = :received, {UPDATED_AT} = :now"
            ))
            .condition_expression(format!(
                "{TOTAL_CHUNKS} = :seen_chunks AND {RECEIVED_ITEMS} = :seen_received \
                 AND {CANCEL_REQUESTED} = :no"
            ))
            .expression_attribute_values(":chunks", n(first_chunk + chunk_count))
            .expression_attribute_values(":received", n(batch.received_items + item_count))
            .expression_attribute_values(":now", n(now.0))
            .expression_attribute_values(":seen_chunks", n(first_chunk))
            .expression_attribute_values(":seen_received", n(batch.received_items))
            .expression_attribute_values(":no", flag_value(false))
            .build()?;
        let mut writes = vec![
            TransactWriteItem::builder().put(put_part).build(),
            TransactWriteItem::builder().update(update_batch).build(),
        ];
        let mut units = 2;
        if let Some(index) = kept {
            for segment in hash_segments(part, index) {
                units += write_units(&segment);
                let put = Put::builder()
                    .table_name(&self.tables.request_table)
                    .set_item(Some(segment))
                    .build()?;
                writes.push(TransactWriteItem::builder().put(put).build());
            }
        }
        self.transact(writes, units).await
    }

    /// The refusal of a part that repeats an ID of an earlier part of its batch, if it does:
    /// merges the part's hashes with every earlier part's, then confirms a shared hash
    /// against the earlier part's IDs.
    async fn find_repeated_item(
        &self,
        part: &NewPart,
        index: &PartIndex,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        for mut suspect in self.earlier_parts(part, index).await? {
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
            let until = Some(suspect.first_chunk + suspect.chunk_count);
            self.for_each_chunk_item(&part.batch_id, suspect.first_chunk, until, |key, item| {
                if let RequestKey::ChunkIds(_) = key {
                    joined.push(text(item, ITEM_IDS)?.to_owned());
                }
                Ok(ControlFlow::Continue(()))
            })
            .await?;
            let earlier_ids = joined.iter().flat_map(|ids| codec::split_ids(ids));
            if let Some(position) =
                id_hashes::first_repeat(&part.items, &suspect.candidates, earlier_ids)
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

    /// The batch's parts stored so far, each with the new part's hashes its blob also holds.
    async fn earlier_parts(
        &self,
        part: &NewPart,
        index: &PartIndex,
    ) -> Result<Vec<EarlierPart>, StoreError> {
        let mut earlier: Vec<EarlierPart> = Vec::new();
        self.for_each_item_with_prefix(&part.batch_id, PART_PREFIX, |item| {
            match request_key_of(item)? {
                Some(RequestKey::Part(part_number)) => earlier.push(EarlierPart {
                    number: part_number,
                    first_chunk: number(item, FIRST_CHUNK)?,
                    chunk_count: number(item, CHUNK_COUNT)?,
                    chunks_written: flag(item, CHUNKS_WRITTEN),
                    hashed: false,
                    candidates: Vec::new(),
                }),
                Some(RequestKey::PartHashes(part_number)) => {
                    if let Some(last) = earlier.last_mut().filter(|p| p.number == part_number) {
                        last.hashed = true;
                        let shared = index.shared_hashes([bytes(item, HASHES)?])?;
                        last.candidates.extend(shared);
                    }
                }
                _ => {}
            }
            Ok(())
        })
        .await?;
        Ok(earlier)
    }
}

/// A part's ID hashes as request-table items, [`HASHES_PER_ITEM`] to an item.
fn hash_segments(part: &NewPart, index: &PartIndex) -> Vec<Item> {
    index
        .blob()
        .chunks(HASHES_PER_ITEM * 8)
        .enumerate()
        .map(|(segment, hashes)| {
            let mut item = request_key(&part.batch_id, hashes_sk(part.part_number, segment));
            item.insert(HASHES.to_owned(), blob(hashes));
            item
        })
        .collect()
}
