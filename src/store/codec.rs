//! How a chunk's outcomes are encoded, whatever the backend: one status letter per item, a JSON
//! map of the failed items' messages, and item IDs joined by newlines (IDs cannot hold control
//! characters). Also the paging of items over chunks and the page tokens both backends issue.

use std::collections::BTreeMap;

use super::{BadPageToken, Chunk, ChunkStage, ItemQuery, ItemState, Page, StoreError};
use crate::domain::{BatchId, ItemId, ItemOutcome, ItemRecord, ItemStatus};

pub const PENDING: u8 = b'P';
pub const SUCCEEDED: u8 = b'S';
pub const FAILED: u8 = b'F';

/// The largest chunk number a batch can hold (SQLite stores it as a signed 64-bit integer).
pub const MAX_CHUNK: u64 = i64::MAX as u64;

/// Message given to items whose chunk was recorded with no outcome and no task error.
pub const NO_OUTCOME_MESSAGE: &str = "no task outcome was recorded for this item";

/// A chunk's outcomes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOutcomes {
    pub stage: ChunkStage,
    pub states: Vec<u8>,
    pub errors: BTreeMap<usize, String>,
    pub attempts: u32,
}

impl ChunkOutcomes {
    /// A new chunk of `items` items, all pending.
    pub fn new(items: usize) -> Self {
        Self {
            stage: ChunkStage::Pending,
            states: vec![PENDING; items],
            errors: BTreeMap::new(),
            attempts: 0,
        }
    }

    pub fn decode(
        stage: &str,
        states: String,
        errors: Option<&str>,
        attempts: u32,
    ) -> Result<Self, StoreError> {
        let stage = ChunkStage::from_name(stage)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown chunk stage {stage:?}")))?;
        let errors = match errors {
            Some(json) => serde_json::from_str(json)
                .map_err(|err| StoreError::Corrupt(format!("chunk errors: {err}")))?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            stage,
            states: states.into_bytes(),
            errors,
            attempts,
        })
    }

    pub fn states_text(&self) -> &str {
        std::str::from_utf8(&self.states).unwrap_or_default()
    }

    /// The failed items' messages as JSON, or None when no item failed.
    pub fn errors_json(&self) -> Option<String> {
        if self.errors.is_empty() {
            None
        } else {
            serde_json::to_string(&self.errors).ok()
        }
    }

    /// An item's state as tasks see it.
    pub fn item_state(&self, position: usize) -> ItemState {
        if self.stage == ChunkStage::Cancelled {
            return ItemState::Cancelled;
        }
        match self.states.get(position) {
            Some(&SUCCEEDED) => ItemState::Succeeded,
            Some(&FAILED) => ItemState::Failed(
                self.errors
                    .get(&position)
                    .cloned()
                    .unwrap_or_else(|| NO_OUTCOME_MESSAGE.to_owned()),
            ),
            _ => ItemState::Pending,
        }
    }

    /// An item's state as clients see it: outcomes count once their chunk is recorded, until
    /// then the item is pending, as the batch counters say.
    pub fn visible_state(&self, position: usize) -> ItemState {
        match self.stage {
            ChunkStage::Pending | ChunkStage::Started => ItemState::Pending,
            _ => self.item_state(position),
        }
    }

    pub fn apply(&mut self, position: usize, outcome: &ItemOutcome) {
        let Some(slot) = self.states.get_mut(position) else {
            return;
        };
        match outcome {
            ItemOutcome::Succeeded => {
                *slot = SUCCEEDED;
                self.errors.remove(&position);
            }
            ItemOutcome::Failed(message) => {
                *slot = FAILED;
                self.errors.insert(position, message.clone());
            }
        }
    }

    /// Fails every pending item with `message` and marks the chunk recorded.
    pub fn settle(&mut self, message: &str) {
        let failure = ItemOutcome::Failed(message.to_owned());
        for position in 0..self.states.len() {
            if self.states[position] == PENDING {
                self.apply(position, &failure);
            }
        }
        self.stage = ChunkStage::Recorded;
    }

    pub fn count(&self, letter: u8) -> u64 {
        self.states.iter().filter(|&&state| state == letter).count() as u64
    }

    pub fn into_chunk(self, batch_id: BatchId, index: u64, item_ids: &str) -> Chunk {
        let states = (0..self.states.len())
            .map(|position| self.item_state(position))
            .collect();
        Chunk {
            batch_id,
            index,
            stage: self.stage,
            items: split_ids(item_ids)
                .map(|id| ItemId::from_trusted(id.to_owned()))
                .collect(),
            states,
            attempts: self.attempts,
        }
    }
}

/// Joins a chunk's IDs for storage.
pub fn join_ids(items: &[ItemId]) -> String {
    let mut joined = String::with_capacity(items.iter().map(|id| id.as_str().len() + 1).sum());
    for (position, item) in items.iter().enumerate() {
        if position > 0 {
            joined.push('\n');
        }
        joined.push_str(item.as_str());
    }
    joined
}

pub fn split_ids(joined: &str) -> impl Iterator<Item = &str> {
    joined.split('\n')
}

/// Page tokens are hex so they read as opaque and survive any transport.
pub fn encode_token(raw: &str) -> String {
    hex::encode(raw)
}

pub fn decode_token(token: &str, prefix: &str) -> Result<String, BadPageToken> {
    let bytes = hex::decode(token).map_err(|_| BadPageToken)?;
    let text = String::from_utf8(bytes).map_err(|_| BadPageToken)?;
    text.strip_prefix(prefix)
        .map(str::to_owned)
        .ok_or(BadPageToken)
}

/// Most chunks one `ListBatchItems` call examines without finding an item for its page.
pub const SKIPPED_CHUNKS_PER_PAGE: u64 = 1024;
/// Most items one `ListBatchItems` call examines without finding one for its page.
pub const SKIPPED_ITEMS_PER_PAGE: u64 = 32_768;

/// Collects one page of `ListBatchItems` from chunks fed in order. The work of a call is
/// bounded: once it has examined [`SKIPPED_CHUNKS_PER_PAGE`] chunks or
/// [`SKIPPED_ITEMS_PER_PAGE`] items that gave the page nothing, it stops with a short (even
/// empty) page and a token to go on from, so a filter that matches little cannot keep a store
/// busy for a whole batch.
pub struct ItemPager<'a> {
    query: &'a ItemQuery,
    /// First chunk to read, and the position in it to start at.
    pub start_chunk: u64,
    start_offset: usize,
    entries: Vec<ItemRecord>,
    skipped_chunks: u64,
    skipped_items: u64,
}

impl<'a> ItemPager<'a> {
    pub fn new(query: &'a ItemQuery) -> Result<Self, BadPageToken> {
        let (start_chunk, start_offset) = match &query.page_token {
            Some(token) => decode_item_position(token, &query.batch_id)?,
            None => (0, 0),
        };
        Ok(Self {
            query,
            start_chunk,
            start_offset,
            entries: Vec::new(),
            skipped_chunks: 0,
            skipped_items: 0,
        })
    }

    /// Whether a chunk can hold items the query wants, judged from its stage and counts.
    pub fn may_match(&self, stage: ChunkStage, item_count: u64, failed_count: u64) -> bool {
        match self.query.status {
            None => true,
            Some(ItemStatus::Succeeded) => {
                stage == ChunkStage::Recorded && failed_count < item_count
            }
            Some(ItemStatus::Failed) => stage == ChunkStage::Recorded && failed_count > 0,
            Some(ItemStatus::Pending) => matches!(stage, ChunkStage::Pending | ChunkStage::Started),
            Some(ItemStatus::Cancelled) => stage == ChunkStage::Cancelled,
        }
    }

    /// Counts a chunk examined that gave the page nothing.
    pub fn skip(&mut self, item_count: u64) {
        self.skipped_chunks += 1;
        self.skipped_items += item_count;
    }

    /// Whether this call should stop after the chunk just fed: its page is full, or it has
    /// examined all it may.
    pub fn is_spent(&self) -> bool {
        self.entries.len() == self.query.page_size as usize
            || self.skipped_chunks >= SKIPPED_CHUNKS_PER_PAGE
            || self.skipped_items >= SKIPPED_ITEMS_PER_PAGE
    }

    /// Adds a chunk's items; returns the page once it is full.
    pub fn push(
        &mut self,
        index: u64,
        outcomes: &ChunkOutcomes,
        item_ids: &str,
    ) -> Option<Page<ItemRecord>> {
        let skip = if index == self.start_chunk {
            self.start_offset
        } else {
            0
        };
        let listed_before = self.entries.len();
        for (position, id) in split_ids(item_ids).enumerate().skip(skip) {
            if self.entries.len() == self.query.page_size as usize {
                return Some(Page {
                    entries: std::mem::take(&mut self.entries),
                    next_page_token: Some(self.token(index, position)),
                });
            }
            let state = outcomes.visible_state(position);
            if self
                .query
                .status
                .is_some_and(|wanted| wanted != state.status())
            {
                continue;
            }
            let (status, error) = match state {
                ItemState::Failed(message) => (ItemStatus::Failed, Some(message)),
                other => (other.status(), None),
            };
            self.entries.push(ItemRecord {
                item_id: ItemId::from_trusted(id.to_owned()),
                status,
                error,
                attempts: outcomes.attempts,
                chunk: index,
            });
        }
        if self.entries.len() == listed_before {
            self.skip(outcomes.states.len() as u64);
        }
        None
    }

    /// The page so far, to go on from `next_chunk`; the last page when no chunk is left.
    pub fn stop_before(self, next_chunk: u64, total_chunks: u64) -> Page<ItemRecord> {
        if next_chunk >= total_chunks {
            return self.finish();
        }
        let token = self.token(next_chunk, 0);
        Page {
            entries: self.entries,
            next_page_token: Some(token),
        }
    }

    /// The last page.
    pub fn finish(self) -> Page<ItemRecord> {
        Page {
            entries: self.entries,
            next_page_token: None,
        }
    }

    fn token(&self, chunk: u64, position: usize) -> String {
        encode_token(&format!("items:{}:{chunk}:{position}", self.query.batch_id))
    }
}

/// The (chunk, position in it) an items page token points at.
fn decode_item_position(token: &str, batch_id: &BatchId) -> Result<(u64, usize), BadPageToken> {
    let position = decode_token(token, &format!("items:{batch_id}:"))?;
    let (chunk, offset) = position.split_once(':').ok_or(BadPageToken)?;
    let chunk: u64 = chunk.parse().map_err(|_| BadPageToken)?;
    // Chunk numbers are stored as signed 64-bit integers; no token this service issues points
    // past them.
    if chunk > MAX_CHUNK {
        return Err(BadPageToken);
    }
    Ok((chunk, offset.parse().map_err(|_| BadPageToken)?))
}
