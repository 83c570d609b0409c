//! How a chunk's outcomes are encoded, whatever the backend: one status letter per item, a JSON
//! map of the failed items' messages, and item IDs joined by newlines (IDs cannot hold control
//! characters). Also the paging of items over chunks and the page tokens both backends issue.

use std::collections::BTreeMap;

use super::{BadPageToken, Chunk, ChunkStage, ItemQuery, ItemState, Page, StoreError, Unfinished};
use crate::domain::{BatchId, ItemId, ItemOutcome, ItemRecord, ItemStatus};

pub(crate) const PENDING: u8 = b'P';
pub(crate) const SUCCEEDED: u8 = b'S';
pub(crate) const FAILED: u8 = b'F';
/// An item of a started chunk whose job a cancel stopped.
pub(crate) const CANCELLED: u8 = b'C';
/// An item that succeeded in a run before the chunk's last redrive: counted already, so
/// recording the chunk again does not count it.
pub(crate) const SUCCEEDED_BEFORE: u8 = b's';
/// An item cancelled in a run before the chunk's last redrive, which the redrive left
/// cancelled: counted already.
pub(crate) const CANCELLED_BEFORE: u8 = b'c';

/// The largest chunk number a batch can hold (SQLite stores it as a signed 64-bit integer).
pub(crate) const MAX_CHUNK: u64 = i64::MAX as u64;

/// Message given to items whose chunk was recorded with no outcome and no task error.
pub(crate) const NO_OUTCOME_MESSAGE: &str = "no task outcome was recorded for this item";

/// A chunk's outcomes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkOutcomes {
    pub stage: ChunkStage,
    pub states: Vec<u8>,
    pub errors: BTreeMap<usize, String>,
    /// Task attempts in the chunk's current run.
    pub attempts: u32,
    /// Task attempts of the runs before the last redrive: an item's attempts are both.
    pub attempt_base: u32,
}

impl ChunkOutcomes {
    /// A new chunk of `items` items, all pending.
    pub(crate) fn new(items: usize) -> Self {
        Self {
            stage: ChunkStage::Pending,
            states: vec![PENDING; items],
            errors: BTreeMap::new(),
            attempts: 0,
            attempt_base: 0,
        }
    }

    pub(crate) fn decode(
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
            attempt_base: 0,
        })
    }

    /// This chunk with `attempt_base` attempts made before its last redrive.
    pub(crate) fn with_attempt_base(mut self, attempt_base: u32) -> Self {
        self.attempt_base = attempt_base;
        self
    }

    /// Task attempts in every run of the chunk, as items show them.
    pub(crate) fn total_attempts(&self) -> u32 {
        self.attempt_base.saturating_add(self.attempts)
    }

    /// Readies a recorded or cancelled chunk to run again: its failed items (and cancelled
    /// ones, with `include_cancelled`) turn pending, the items counted before keep their
    /// outcome under letters a record does not count again, the chunk turns PENDING, and its
    /// attempts so far move to the base. What it takes back, or None (the chunk unchanged)
    /// when it has nothing to re-run.
    pub(crate) fn redrive(&mut self, include_cancelled: bool) -> Option<RedrivenItems> {
        if !matches!(self.stage, ChunkStage::Recorded | ChunkStage::Cancelled) {
            return None;
        }
        // A chunk cancelled before it started counted every item it had not counted before
        // as cancelled, whatever its letters say.
        let never_started = self.stage == ChunkStage::Cancelled;
        let mut taken = RedrivenItems::default();
        let mut states = self.states.clone();
        for state in &mut states {
            *state = match *state {
                SUCCEEDED | SUCCEEDED_BEFORE => SUCCEEDED_BEFORE,
                FAILED if !never_started => {
                    taken.failed += 1;
                    PENDING
                }
                _ if include_cancelled => {
                    taken.cancelled += 1;
                    PENDING
                }
                _ => CANCELLED_BEFORE,
            };
        }
        if taken.failed + taken.cancelled == 0 {
            return None;
        }
        self.states = states;
        self.errors.clear();
        self.stage = ChunkStage::Pending;
        self.attempt_base = self.total_attempts();
        self.attempts = 0;
        Some(taken)
    }

    /// Items no run has counted yet: what cancelling the chunk before it starts counts.
    pub(crate) fn count_uncounted(&self) -> u64 {
        self.count(PENDING)
    }

    pub(crate) fn states_text(&self) -> &str {
        std::str::from_utf8(&self.states).unwrap_or_default()
    }

    /// The failed items' messages as JSON, or None when no item failed.
    pub(crate) fn errors_json(&self) -> Option<String> {
        if self.errors.is_empty() {
            None
        } else {
            serde_json::to_string(&self.errors).ok()
        }
    }

    /// An item's state as tasks see it.
    pub(crate) fn item_state(&self, position: usize) -> ItemState {
        let state = self.states.get(position);
        if self.stage == ChunkStage::Cancelled {
            return match state {
                Some(&SUCCEEDED_BEFORE) => ItemState::Succeeded,
                _ => ItemState::Cancelled,
            };
        }
        match state {
            Some(&SUCCEEDED | &SUCCEEDED_BEFORE) => ItemState::Succeeded,
            Some(&CANCELLED_BEFORE) => ItemState::Cancelled,
            Some(&FAILED) => ItemState::Failed(
                self.errors
                    .get(&position)
                    .cloned()
                    .unwrap_or_else(|| NO_OUTCOME_MESSAGE.to_owned()),
            ),
            Some(&CANCELLED) => ItemState::Cancelled,
            _ => ItemState::Pending,
        }
    }

    /// An item's state as clients see it: outcomes count once their chunk is recorded, until
    /// then the item is pending, as the batch counters say.
    pub(crate) fn visible_state(&self, position: usize) -> ItemState {
        match (self.stage, self.states.get(position)) {
            (_, Some(&SUCCEEDED_BEFORE | &CANCELLED_BEFORE)) => self.item_state(position),
            (ChunkStage::Pending | ChunkStage::Started, _) => ItemState::Pending,
            _ => self.item_state(position),
        }
    }

    pub(crate) fn apply(&mut self, position: usize, outcome: &ItemOutcome) {
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

    /// Ends every pending item as `unfinished` says and marks the chunk recorded.
    pub(crate) fn settle(&mut self, unfinished: Unfinished<'_>) {
        let failure = match unfinished {
            Unfinished::Failed(message) => Some(ItemOutcome::Failed(
                message.unwrap_or(NO_OUTCOME_MESSAGE).to_owned(),
            )),
            Unfinished::Cancelled => None,
        };
        for position in 0..self.states.len() {
            if self.states[position] == PENDING {
                match &failure {
                    Some(failure) => self.apply(position, failure),
                    None => self.states[position] = CANCELLED,
                }
            }
        }
        self.stage = ChunkStage::Recorded;
    }

    /// The items that count into their batch's succeeded, failed and cancelled counts.
    pub(crate) fn tally(&self) -> super::ItemTally {
        super::ItemTally {
            succeeded: self.count(SUCCEEDED),
            failed: self.count(FAILED),
            cancelled: self.count(CANCELLED),
        }
    }

    pub(crate) fn count(&self, letter: u8) -> u64 {
        self.states.iter().filter(|&&state| state == letter).count() as u64
    }

    /// Items that ended other than succeeded (failed or cancelled): what the stored
    /// `failed_count` holds, so that listings by status can pass over chunks without them.
    pub(crate) fn count_not_succeeded(&self) -> u64 {
        self.count(FAILED) + self.count(CANCELLED) + self.count(CANCELLED_BEFORE)
    }

    pub(crate) fn into_chunk(self, batch_id: BatchId, index: u64, item_ids: &str) -> Chunk {
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
            earlier_attempts: self.attempt_base,
        }
    }
}

/// The items a redrive takes back from one chunk, by the status they leave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RedrivenItems {
    pub failed: u64,
    pub cancelled: u64,
}

/// Joins a chunk's IDs for storage.
pub(crate) fn join_ids(items: &[ItemId]) -> String {
    let mut joined = String::with_capacity(items.iter().map(|id| id.as_str().len() + 1).sum());
    for (position, item) in items.iter().enumerate() {
        if position > 0 {
            joined.push('\n');
        }
        joined.push_str(item.as_str());
    }
    joined
}

pub(crate) fn split_ids(joined: &str) -> impl Iterator<Item = &str> {
    joined.split('\n')
}

/// Page tokens are hex so they read as opaque and survive any transport.
pub(crate) fn encode_token(raw: &str) -> String {
    hex::encode(raw)
}

pub(crate) fn decode_token(token: &str, prefix: &str) -> Result<String, BadPageToken> {
    let bytes = hex::decode(token).map_err(|_| BadPageToken)?;
    let text = String::from_utf8(bytes).map_err(|_| BadPageToken)?;
    text.strip_prefix(prefix)
        .map(str::to_owned)
        .ok_or(BadPageToken)
}

/// Most chunks one `ListBatchItems` call examines without finding an item for its page.
pub const SKIPPED_CHUNKS_PER_PAGE: u64 = 1024;
/// Most items one `ListBatchItems` call examines without finding one for its page.
pub(crate) const SKIPPED_ITEMS_PER_PAGE: u64 = 32_768;

/// Collects one page of `ListBatchItems` from chunks fed in order. The work of a call is
/// bounded: once it has examined [`SKIPPED_CHUNKS_PER_PAGE`] chunks or
/// [`SKIPPED_ITEMS_PER_PAGE`] items that gave the page nothing, it stops with a short (even
/// empty) page and a token to go on from, so a filter that matches little cannot keep a store
/// busy for a whole batch.
pub(crate) struct ItemPager<'a> {
    query: &'a ItemQuery,
    /// First chunk to read, and the position in it to start at.
    pub(crate) start_chunk: u64,
    start_offset: usize,
    entries: Vec<ItemRecord>,
    skipped_chunks: u64,
    skipped_items: u64,
}

impl<'a> ItemPager<'a> {
    pub(crate) fn new(query: &'a ItemQuery) -> Result<Self, BadPageToken> {
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

    /// Whether a chunk can hold items the query wants, judged from its stage and counts. A
    /// chunk that is not recorded may hold items a run before its last redrive counted as
    /// succeeded or cancelled, so it is examined for those.
    pub(crate) fn may_match(&self, stage: ChunkStage, item_count: u64, failed_count: u64) -> bool {
        match self.query.status {
            None => true,
            Some(ItemStatus::Succeeded) => {
                stage != ChunkStage::Recorded || failed_count < item_count
            }
            Some(ItemStatus::Failed) => stage == ChunkStage::Recorded && failed_count > 0,
            Some(ItemStatus::Pending) => matches!(stage, ChunkStage::Pending | ChunkStage::Started),
            Some(ItemStatus::Cancelled) => stage != ChunkStage::Recorded || failed_count > 0,
        }
    }

    /// Counts a chunk examined that gave the page nothing.
    pub(crate) fn skip(&mut self, item_count: u64) {
        self.skipped_chunks += 1;
        self.skipped_items += item_count;
    }

    /// Whether this call should stop after the chunk just fed: its page is full, or it has
    /// examined all it may.
    pub(crate) fn is_spent(&self) -> bool {
        self.entries.len() == self.query.page_size as usize
            || self.skipped_chunks >= SKIPPED_CHUNKS_PER_PAGE
            || self.skipped_items >= SKIPPED_ITEMS_PER_PAGE
    }

    /// Adds a chunk's items; returns the page once it is full.
    pub(crate) fn push(
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
                attempts: outcomes.total_attempts(),
                chunk: index,
            });
        }
        if self.entries.len() == listed_before {
            self.skip(outcomes.states.len() as u64);
        }
        None
    }

    /// The page so far, to go on from `next_chunk`; the last page when no chunk is left.
    pub(crate) fn stop_before(self, next_chunk: u64, total_chunks: u64) -> Page<ItemRecord> {
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
    pub(crate) fn finish(self) -> Page<ItemRecord> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: usize) -> String {
        (0..count)
            .map(|i| format!("id-{i}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn query(status: Option<ItemStatus>, page_size: u32, page_token: Option<String>) -> ItemQuery {
        ItemQuery {
            batch_id: BatchId::parse("b").unwrap(),
            status,
            page_size,
            page_token,
        }
    }

    #[test]
    fn a_redrive_re_runs_failed_items_and_keeps_what_was_counted_out_of_the_next_count() {
        let mut chunk = recorded("SFF");
        chunk.states[2] = CANCELLED;
        chunk.attempts = 3;
        let taken = chunk.redrive(false).expect("a failed item to re-run");
        assert_eq!(
            taken,
            RedrivenItems {
                failed: 1,
                cancelled: 0
            }
        );
        assert_eq!(chunk.stage, ChunkStage::Pending);
        assert_eq!(chunk.states_text(), "sPc");
        assert!(chunk.errors.is_empty());
        assert_eq!(
            (chunk.attempt_base, chunk.attempts, chunk.total_attempts()),
            (3, 0, 3)
        );
        // While it runs again, what earlier runs counted still shows; the rest is pending.
        let shown: Vec<ItemStatus> = (0..3).map(|p| chunk.visible_state(p).status()).collect();
        assert_eq!(
            shown,
            [
                ItemStatus::Succeeded,
                ItemStatus::Pending,
                ItemStatus::Cancelled
            ]
        );
        chunk.apply(1, &ItemOutcome::Succeeded);
        chunk.settle(Unfinished::Failed(None));
        assert_eq!(
            (
                chunk.count(SUCCEEDED),
                chunk.count(FAILED),
                chunk.count(CANCELLED)
            ),
            (1, 0, 0),
            "recording again counts only this run's outcomes"
        );
        let mut again = chunk.clone();
        assert_eq!(
            again.redrive(false),
            None,
            "nothing failed: nothing to re-run"
        );
        assert_eq!(
            again, chunk,
            "a chunk with nothing to re-run is left as it was"
        );
        let taken = chunk.redrive(true).expect("the cancelled item to re-run");
        assert_eq!(
            taken,
            RedrivenItems {
                failed: 0,
                cancelled: 1
            }
        );
        assert_eq!(chunk.states_text(), "ssP");
    }

    #[test]
    fn a_chunk_cancelled_before_it_started_re_runs_only_with_its_cancelled_items() {
        let mut chunk = ChunkOutcomes::new(2);
        chunk.stage = ChunkStage::Cancelled;
        assert_eq!(chunk.item_state(0), ItemState::Cancelled);
        assert_eq!(chunk.clone().redrive(false), None);
        let taken = chunk.redrive(true).unwrap();
        assert_eq!(
            taken,
            RedrivenItems {
                failed: 0,
                cancelled: 2
            }
        );
        assert_eq!(chunk.count_uncounted(), 2);
    }

    fn recorded(states: &str) -> ChunkOutcomes {
        let mut outcomes = ChunkOutcomes::new(states.len());
        for (position, letter) in states.bytes().enumerate() {
            match letter {
                SUCCEEDED => outcomes.apply(position, &ItemOutcome::Succeeded),
                FAILED => outcomes.apply(position, &ItemOutcome::Failed(format!("bad {position}"))),
                _ => {}
            }
        }
        outcomes.stage = ChunkStage::Recorded;
        outcomes
    }

    fn listed(page: &Page<ItemRecord>) -> Vec<&str> {
        page.entries
            .iter()
            .map(|item| item.item_id.as_str())
            .collect()
    }

    #[test]
    fn chunk_outcomes_survive_encoding_and_decoding() {
        let mut outcomes = ChunkOutcomes::new(4);
        assert_eq!(outcomes.states_text(), "PPPP");
        assert_eq!(outcomes.errors_json(), None);
        outcomes.apply(1, &ItemOutcome::Failed("no \"quotes\" lost".into()));
        outcomes.apply(2, &ItemOutcome::Succeeded);
        outcomes.stage = ChunkStage::Started;
        outcomes.attempts = 3;
        let decoded = ChunkOutcomes::decode(
            outcomes.stage.as_str(),
            outcomes.states_text().to_owned(),
            outcomes.errors_json().as_deref(),
            outcomes.attempts,
        )
        .unwrap();
        assert_eq!(decoded, outcomes);
    }

    #[test]
    fn an_unknown_stage_or_unreadable_errors_are_corrupt() {
        assert!(matches!(
            ChunkOutcomes::decode("DONE", "P".into(), None, 0),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            ChunkOutcomes::decode("PENDING", "F".into(), Some("{not json"), 0),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_success_after_a_failure_clears_its_message() {
        let mut outcomes = ChunkOutcomes::new(1);
        outcomes.apply(0, &ItemOutcome::Failed("first try".into()));
        outcomes.apply(0, &ItemOutcome::Succeeded);
        assert_eq!(outcomes.errors_json(), None);
        outcomes.apply(7, &ItemOutcome::Succeeded);
        assert_eq!(
            outcomes.states_text(),
            "S",
            "a position past the chunk is ignored"
        );
    }

    #[test]
    fn settling_as_cancelled_cancels_only_the_items_still_pending() {
        let mut outcomes = ChunkOutcomes::new(3);
        outcomes.stage = ChunkStage::Started;
        outcomes.apply(0, &ItemOutcome::Failed("bad".into()));
        outcomes.settle(Unfinished::Cancelled);
        assert_eq!(outcomes.stage, ChunkStage::Recorded);
        assert_eq!(outcomes.states_text(), "FCC");
        assert_eq!(outcomes.item_state(1), ItemState::Cancelled);
        assert_eq!(outcomes.visible_state(2), ItemState::Cancelled);
        assert_eq!(outcomes.count(CANCELLED), 2);
        assert_eq!(outcomes.count_not_succeeded(), 3);
        let decoded = ChunkOutcomes::decode(
            "RECORDED",
            outcomes.states_text().to_owned(),
            outcomes.errors_json().as_deref(),
            1,
        )
        .unwrap();
        assert_eq!(decoded.item_state(2), ItemState::Cancelled);
    }

    #[test]
    fn settling_fails_the_items_still_pending_and_records_the_chunk() {
        let mut outcomes = ChunkOutcomes::new(3);
        outcomes.apply(0, &ItemOutcome::Succeeded);
        outcomes.settle(Unfinished::Failed(Some("service down")));
        assert_eq!(outcomes.stage, ChunkStage::Recorded);
        assert_eq!(outcomes.states_text(), "SFF");
        assert_eq!((outcomes.count(SUCCEEDED), outcomes.count(FAILED)), (1, 2));
        assert_eq!(
            outcomes.item_state(2),
            ItemState::Failed("service down".into())
        );
    }

    #[test]
    fn clients_see_outcomes_only_once_the_chunk_is_recorded() {
        let mut outcomes = ChunkOutcomes::new(2);
        outcomes.stage = ChunkStage::Started;
        outcomes.apply(0, &ItemOutcome::Succeeded);
        assert_eq!(outcomes.item_state(0), ItemState::Succeeded);
        assert_eq!(outcomes.visible_state(0), ItemState::Pending);
        outcomes.stage = ChunkStage::Recorded;
        assert_eq!(outcomes.visible_state(0), ItemState::Succeeded);
        outcomes.stage = ChunkStage::Cancelled;
        assert_eq!(outcomes.visible_state(1), ItemState::Cancelled);
    }

    #[test]
    fn a_failed_item_without_a_stored_message_gets_the_generic_one() {
        let outcomes = ChunkOutcomes::decode("RECORDED", "F".into(), None, 1).expect("decodes");
        assert_eq!(
            outcomes.item_state(0),
            ItemState::Failed(NO_OUTCOME_MESSAGE.into())
        );
    }

    #[test]
    fn ids_are_joined_by_newlines_and_split_back() {
        let items: Vec<ItemId> = ["a", "b c", "d"]
            .iter()
            .map(|id| ItemId::from_trusted((*id).to_owned()))
            .collect();
        let joined = join_ids(&items);
        assert_eq!(joined, "a\nb c\nd");
        assert_eq!(
            split_ids(&joined).collect::<Vec<_>>(),
            vec!["a", "b c", "d"]
        );
        let chunk = ChunkOutcomes::new(3).into_chunk(BatchId::parse("b").unwrap(), 4, &joined);
        assert_eq!(chunk.items, items);
        assert_eq!(chunk.index, 4);
        assert_eq!(chunk.states, vec![ItemState::Pending; 3]);
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_what_this_service_did_not_issue() {
        let token = encode_token("items:b:3:7");
        assert_eq!(decode_token(&token, "items:b:"), Ok("3:7".to_owned()));
        assert_eq!(decode_token(&token, "batches:"), Err(BadPageToken));
        assert_eq!(decode_token("zz", "items:"), Err(BadPageToken));
        assert_eq!(
            decode_token(&hex::encode([0xff, 0xfe]), ""),
            Err(BadPageToken)
        );
    }

    #[test]
    fn an_items_token_must_name_this_batch_and_a_chunk_a_batch_can_hold() {
        let token = |raw: &str| Some(encode_token(raw));
        let resumed = query(None, 10, token("items:b:5:2"));
        let pager = ItemPager::new(&resumed).unwrap();
        assert_eq!((pager.start_chunk, pager.start_offset), (5, 2));
        let max = format!("items:b:{MAX_CHUNK}:0");
        assert_eq!(
            ItemPager::new(&query(None, 10, token(&max)))
                .unwrap()
                .start_chunk,
            MAX_CHUNK
        );
        for bad in [
            "items:other:5:2",
            "items:b:5",
            "items:b:x:0",
            "items:b:-1:0",
            "items:b:9223372036854775808:0",
            "items:b:18446744073709551616:0",
        ] {
            assert!(
                ItemPager::new(&query(None, 10, token(bad))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_full_page_points_at_the_next_item_and_the_next_page_starts_there() {
        let all = ids(5);
        let outcomes = recorded("SSSSS");
        let first_query = query(None, 3, None);
        let mut pager = ItemPager::new(&first_query).unwrap();
        let first = pager.push(0, &outcomes, &all).expect("a full page");
        assert_eq!(listed(&first), vec!["id-0", "id-1", "id-2"]);
        let second_query = query(None, 3, first.next_page_token);
        let mut pager = ItemPager::new(&second_query).unwrap();
        assert!(pager.push(0, &outcomes, &all).is_none());
        let last = pager.finish();
        assert_eq!(listed(&last), vec!["id-3", "id-4"]);
        assert_eq!(last.next_page_token, None);
    }

    #[test]
    fn a_status_filter_lists_only_matching_items_with_their_messages() {
        let failed = query(Some(ItemStatus::Failed), 10, None);
        let mut pager = ItemPager::new(&failed).unwrap();
        assert!(pager.push(2, &recorded("SFSF"), &ids(4)).is_none());
        let page = pager.finish();
        assert_eq!(listed(&page), vec!["id-1", "id-3"]);
        assert_eq!(page.entries[0].error.as_deref(), Some("bad 1"));
        assert_eq!(page.entries[0].chunk, 2);
        assert!(page
            .entries
            .iter()
            .all(|item| item.status == ItemStatus::Failed));
    }

    #[test]
    fn which_chunks_may_hold_wanted_items() {
        use ChunkStage::{Cancelled, Pending, Recorded, Started};
        let cases = [
            (
                None,
                [(Pending, 0), (Started, 0), (Recorded, 4), (Cancelled, 0)],
                [true; 4],
            ),
            (
                Some(ItemStatus::Succeeded),
                [(Pending, 0), (Recorded, 3), (Recorded, 4), (Cancelled, 0)],
                [true, true, false, true],
            ),
            (
                Some(ItemStatus::Failed),
                [(Started, 0), (Recorded, 0), (Recorded, 1), (Cancelled, 0)],
                [false, false, true, false],
            ),
            (
                Some(ItemStatus::Pending),
                [(Pending, 0), (Started, 0), (Recorded, 0), (Cancelled, 0)],
                [true, true, false, false],
            ),
            (
                Some(ItemStatus::Cancelled),
                [(Pending, 0), (Started, 0), (Recorded, 0), (Cancelled, 0)],
                [true, true, false, true],
            ),
        ];
        for (status, chunks, expected) in cases {
            let wanted = query(status, 10, None);
            let pager = ItemPager::new(&wanted).unwrap();
            let got: Vec<bool> = chunks
                .iter()
                .map(|&(stage, failed)| pager.may_match(stage, 4, failed))
                .collect();
            assert_eq!(got, expected, "{status:?}");
        }
    }

    #[test]
    fn a_call_stops_after_examining_its_share_of_chunks_that_gave_nothing() {
        let wanted = query(Some(ItemStatus::Failed), 10, None);
        let mut pager = ItemPager::new(&wanted).unwrap();
        for _ in 1..SKIPPED_CHUNKS_PER_PAGE {
            pager.skip(1);
            assert!(!pager.is_spent());
        }
        pager.skip(1);
        assert!(pager.is_spent());
        let page = pager.stop_before(SKIPPED_CHUNKS_PER_PAGE, SKIPPED_CHUNKS_PER_PAGE + 1);
        assert!(page.entries.is_empty());
        let resumed = query(Some(ItemStatus::Failed), 10, page.next_page_token);
        let next = ItemPager::new(&resumed).unwrap();
        assert_eq!(
            (next.start_chunk, next.start_offset),
            (SKIPPED_CHUNKS_PER_PAGE, 0)
        );
    }

    #[test]
    fn a_call_also_stops_after_its_share_of_items_and_at_the_last_chunk() {
        let wanted = query(Some(ItemStatus::Succeeded), 10, None);
        let mut pager = ItemPager::new(&wanted).unwrap();
        // A recorded chunk whose items all failed gives the page nothing: it counts too.
        assert!(pager.push(0, &recorded("FF"), &ids(2)).is_none());
        pager.skip(SKIPPED_ITEMS_PER_PAGE - 2);
        assert!(pager.is_spent());
        assert_eq!(pager.stop_before(9, 9).next_page_token, None);
    }

    #[test]
    fn a_page_filled_at_a_chunk_boundary_stops_there() {
        let wanted = query(None, 2, None);
        let mut pager = ItemPager::new(&wanted).unwrap();
        assert!(pager.push(0, &recorded("SS"), &ids(2)).is_none());
        assert!(pager.is_spent());
        let page = pager.stop_before(1, 5);
        assert_eq!(page.entries.len(), 2);
        assert!(page.next_page_token.is_some());
    }
}
