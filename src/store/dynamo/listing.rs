//! The list calls: batches newest first from a keys-only index, and a batch's items from its
//! chunk items in key order.

use std::collections::HashMap;
use std::ops::ControlFlow;

use super::attributes::{
    corrupt, s, text, RequestKey, BATCH_ID, BY_CREATED_INDEX, BY_STATUS_INDEX, CREATED_KEY,
    ITEM_IDS, LIST_PARTITION, LIST_PARTITION_VALUE, STATUS,
};
use super::chunks::ChunkStateRecord;
use super::writes::unavailable;
use super::DynamoStore;
use crate::domain::{Batch, BatchId, BatchStatus, ItemRecord};
use crate::store::codec::{self, ItemPager};
use crate::store::{BadPageToken, BatchQuery, ItemQuery, ListError, Page, StoreError};

/// The `ListBatches` position: the last index key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct BatchCursor {
    created_key: String,
    batch_id: String,
}

impl BatchCursor {
    fn decode(token: &str) -> Result<Self, BadPageToken> {
        let json = codec::decode_token(token, "batches:")?;
        serde_json::from_str(&json).map_err(|_| BadPageToken)
    }

    fn encode(&self) -> Result<String, StoreError> {
        let json =
            serde_json::to_string(self).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        Ok(codec::encode_token(&format!("batches:{json}")))
    }
}

impl DynamoStore {
    /// A query of the keys-only status index for the batches in `status`.
    fn status_index_query(
        &self,
        status: BatchStatus,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.tables.batch_table)
            .index_name(BY_STATUS_INDEX)
            .key_condition_expression("#status = :status")
            .expression_attribute_names("#status", STATUS)
            .expression_attribute_values(":status", s(status.as_str()))
    }

    /// Every batch in `status`, from the keys-only status index, all pages.
    pub(super) async fn batch_ids_with_status(
        &self,
        status: BatchStatus,
    ) -> Result<Vec<BatchId>, StoreError> {
        let mut ids = Vec::new();
        let mut start_key = None;
        loop {
            self.meter.read();
            let output = self
                .status_index_query(status)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(unavailable)?;
            for item in output.items() {
                ids.push(BatchId::parse(text(item, BATCH_ID)?).map_err(|_| corrupt(BATCH_ID))?);
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => return Ok(ids),
            }
        }
    }

    /// How many batches are in each status that has not ended, counted on the keys-only
    /// status index. Ended batches are not counted: they only grow, so counting them at every
    /// scrape would read more of the index each time.
    pub(super) async fn count_unended_batches(
        &self,
    ) -> Result<Vec<(BatchStatus, u64)>, StoreError> {
        let mut counts = Vec::new();
        for status in BatchStatus::ALL
            .into_iter()
            .filter(|status| !status.is_terminal())
        {
            let mut count = 0u64;
            let mut start_key = None;
            loop {
                self.meter.read();
                let output = self
                    .status_index_query(status)
                    .select(aws_sdk_dynamodb::types::Select::Count)
                    .set_exclusive_start_key(start_key)
                    .send()
                    .await
                    .map_err(unavailable)?;
                count += u64::try_from(output.count).unwrap_or(0);
                match output.last_evaluated_key {
                    Some(key) if !key.is_empty() => start_key = Some(key),
                    _ => break,
                }
            }
            counts.push((status, count));
        }
        Ok(counts)
    }

    /// `BatchStore::list_batches`: one index query, then the page's batch items.
    pub(super) async fn batch_page(&self, query: &BatchQuery) -> Result<Page<Batch>, ListError> {
        let start = query
            .page_token
            .as_deref()
            .map(BatchCursor::decode)
            .transpose()?;
        let (index, partition_name, partition_value) = match query.status {
            Some(status) => (BY_STATUS_INDEX, STATUS, status.as_str()),
            None => (BY_CREATED_INDEX, LIST_PARTITION, LIST_PARTITION_VALUE),
        };
        let start_key = start.map(|cursor| {
            HashMap::from([
                (BATCH_ID.to_owned(), s(cursor.batch_id)),
                (CREATED_KEY.to_owned(), s(cursor.created_key)),
                (partition_name.to_owned(), s(partition_value)),
            ])
        });
        self.meter.read();
        let output = self
            .client
            .query()
            .table_name(&self.tables.batch_table)
            .index_name(index)
            .key_condition_expression("#partition = :partition")
            .expression_attribute_names("#partition", partition_name)
            .expression_attribute_values(":partition", s(partition_value))
            .scan_index_forward(false)
            .limit(query.page_size as i32)
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .map_err(|err| ListError::Store(unavailable(err)))?;
        let mut ids = Vec::new();
        for item in output.items() {
            ids.push(BatchId::parse(text(item, BATCH_ID)?).map_err(|_| corrupt(BATCH_ID))?);
        }
        let next_page_token = match output.last_evaluated_key() {
            Some(key) if !key.is_empty() => Some(
                BatchCursor {
                    created_key: text(key, CREATED_KEY)?.to_owned(),
                    batch_id: text(key, BATCH_ID)?.to_owned(),
                }
                .encode()?,
            ),
            _ => None,
        };
        Ok(Page {
            entries: self.load_batches(ids).await?,
            next_page_token,
        })
    }

    /// `BatchStore::list_items`: chunk items in key order from the token's chunk, within the
    /// pager's bound; a chunk's IDs are split only when it may hold wanted items or has no state
    /// item (its IDs then give its item count).
    pub(super) async fn item_page(&self, query: &ItemQuery) -> Result<Page<ItemRecord>, ListError> {
        let mut pager = ItemPager::new(query)?;
        let Some(batch) = self.load_batch(&query.batch_id).await? else {
            return Err(ListError::NotFound);
        };
        let mut page = None;
        let mut stopped_before = None;
        let mut stored = None;
        let from = pager.start_chunk;
        self.for_each_chunk_item(&query.batch_id, from, None, |key, item| {
            let index = match key {
                RequestKey::ChunkState(index) => {
                    stored = Some((index, ChunkStateRecord::from_item(item)?));
                    return Ok(ControlFlow::Continue(()));
                }
                RequestKey::ChunkIds(index) => index,
                RequestKey::Part(_) | RequestKey::PartHashes(_) => {
                    return Ok(ControlFlow::Continue(()))
                }
            };
            let ids = text(item, ITEM_IDS)?;
            let state =
                ChunkStateRecord::of_chunk(index, stored.take(), ids).in_current_run(&batch);
            let failed = state.outcomes.count_not_succeeded();
            if pager.may_match(state.outcomes.stage, state.item_count, failed) {
                page = pager.push(index, &state.outcomes, ids);
                if page.is_some() {
                    return Ok(ControlFlow::Break(()));
                }
            } else {
                pager.skip(state.item_count);
            }
            if pager.is_spent() {
                stopped_before = Some(index + 1);
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(match (page, stopped_before) {
            (Some(page), _) => page,
            (None, Some(next_chunk)) => pager.stop_before(next_chunk, batch.batch.total_chunks),
            (None, None) => pager.finish(),
        })
    }
}
