//! Chunk starts on AWS: which chunks may start, and the batch's slots.
//!
//! Three counters on the batch item decide what starts next, all kept by conditional writes:
//! - `startableChunks`: chunks `0..startable` are written with their parts, so an execution
//!   may read them. A part's chunks become startable once every earlier chunk is: a part
//!   written before an earlier one leaves `startableAhead<first>` = its end on the batch item,
//!   and the part that reaches `first` advances past it. Every change of the two is
//!   conditional on `startableVersion`, so a part that notes itself ahead and the part that
//!   advances cannot miss each other.
//! - `startedChunks`: chunks `0..started` have been claimed for a start, in order.
//! - `inFlight`: chunks claimed and not yet recorded. A claim adds to it on the condition that
//!   it stays within the batch's limit; recording a chunk takes one off in the same
//!   transaction that counts the chunk (see `chunks`), so concurrent finishes never over- or
//!   under-count and freeing a slot costs no extra write.
//!
//! A batch item is created with the three counters at 0; a batch created before they existed
//! is counted from its next part on (its earlier chunks were started by the requests that
//! stored them).
//!
//! A claim leaves `startingFrom`/`startingTo`/`startingAt` on the batch item until its starts
//! are confirmed. No other claim is made while one is unconfirmed; one older than the
//! claimer's `stale_after` ([`STALE_CLAIM`] by default; its claimer died between claiming and
//! starting) is handed to the next claimer to start again, which is harmless: starting a chunk twice is a no-op on Standard
//! workflows (deterministic names) and an idempotent repeat on Express ones.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;

use super::attributes::{
    flag, n, number, optional_number, redrive_sk, request_key, request_key_of, s, text, Item,
    RequestKey, BATCH_ID, CHUNKS, CHUNKS_WRITTEN, CHUNK_COUNT, FIRST_CHUNK, MAX_CONCURRENCY,
    PART_PREFIX, REDRIVE_COUNT, REDRIVE_FIRST_POSITION, STATUS, STOPPED_BY, TOTAL_CHUNKS,
};
use super::batches::stop_of;
use super::writes::conditional;
use super::{contended, DynamoStore, OPTIMISTIC_ATTEMPTS};
use crate::domain::{BatchId, BatchStatus, Timestamp};
use crate::store::rules::Stop;
use crate::store::StoreError;

/// Chunks `0..startableChunks` are written and may start.
pub(super) const STARTABLE_CHUNKS: &str = "startableChunks";
/// Changes with every move of `startableChunks` or a part noted ahead of it.
const STARTABLE_VERSION: &str = "startableVersion";
/// `startableAhead<first>`: a part written before an earlier one, ending at the value.
const STARTABLE_AHEAD_PREFIX: &str = "startableAhead";
/// Chunks `0..startedChunks` are claimed for a start.
pub(super) const STARTED_CHUNKS: &str = "startedChunks";
/// Chunks claimed and not yet recorded.
pub(super) const IN_FLIGHT: &str = "inFlight";
pub(super) const STARTING_FROM: &str = "startingFrom";
pub(super) const STARTING_TO: &str = "startingTo";
pub(super) const STARTING_AT: &str = "startingAt";
/// The request-table item whose writes tell the stream a batch's limit changed.
pub const LIMIT_CHANGED_SK: &str = "limitChanged";

/// How long a claim may stay unconfirmed, by default, before its chunks are started again by
/// another claimer: far longer than starting a claim's chunks takes.
pub const STALE_CLAIM: Duration = Duration::from_secs(60);

/// Chunks a redrive re-runs, per `redrive#<run>#<page>` item.
pub(super) const REDRIVE_PAGE_CHUNKS: u64 = 20_000;

/// Start positions claimed: `first..end` of a batch. Positions below the batch's chunk count
/// are its chunks, started by their parts; each redrive then appends the chunks it re-runs,
/// in order, from its first position (see [`DynamoStore::claimed_chunks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartClaim {
    /// The first position to start.
    pub first: u64,
    /// One past the last position to start.
    pub end: u64,
    /// An earlier claimer's unconfirmed claim, handed over to start again.
    pub taken_over: bool,
    /// The run the positions belong to: 0 for the parts' chunks, else the redrive's number.
    pub run: u32,
    /// The run's first position.
    run_first: u64,
}

/// The batch item's start counters, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StartCounters {
    status: BatchStatus,
    stop: Option<Stop>,
    redrive_count: u32,
    redrive_first_position: u64,
    max_concurrency: Option<u32>,
    startable: Option<u64>,
    version: Option<u64>,
    ahead: HashMap<u64, u64>,
    started: Option<u64>,
    in_flight: i64,
    starting: Option<(u64, u64, Timestamp)>,
    total_chunks: u64,
}

impl StartCounters {
    /// Where the next redrive's positions begin: past every position used so far.
    pub(super) fn next_run_first(&self) -> u64 {
        self.startable
            .unwrap_or(0)
            .max(self.started.unwrap_or(0))
            .max(self.total_chunks)
    }

    /// The run positions `first..` belong to, and that run's first position.
    fn run_of(&self, first: u64) -> (u32, u64) {
        if self.redrive_count > 0 && first >= self.redrive_first_position {
            (self.redrive_count, self.redrive_first_position)
        } else {
            (0, 0)
        }
    }
}

impl StartCounters {
    fn from_item(item: &Item) -> Result<Self, StoreError> {
        let status = super::attributes::text(item, STATUS)?;
        let mut ahead = HashMap::new();
        for (name, value) in item {
            let Some(first) = name.strip_prefix(STARTABLE_AHEAD_PREFIX) else {
                continue;
            };
            if let (Ok(first), AttributeValue::N(end)) = (first.parse::<u64>(), value) {
                if let Ok(end) = end.parse::<u64>() {
                    ahead.insert(first, end);
                }
            }
        }
        let starting = match (
            optional_number(item, STARTING_FROM)?,
            optional_number(item, STARTING_TO)?,
            optional_number::<i64>(item, STARTING_AT)?,
        ) {
            (Some(from), Some(to), Some(at)) => Some((from, to, Timestamp(at))),
            _ => None,
        };
        Ok(Self {
            status: BatchStatus::from_name(status)
                .ok_or_else(|| super::attributes::corrupt(STATUS))?,
            stop: stop_of(item)?,
            redrive_count: optional_number(item, REDRIVE_COUNT)?.unwrap_or(0),
            redrive_first_position: optional_number(item, REDRIVE_FIRST_POSITION)?.unwrap_or(0),
            max_concurrency: optional_number(item, MAX_CONCURRENCY)?,
            startable: optional_number(item, STARTABLE_CHUNKS)?,
            version: optional_number(item, STARTABLE_VERSION)?,
            ahead,
            started: optional_number(item, STARTED_CHUNKS)?,
            in_flight: optional_number(item, IN_FLIGHT)?.unwrap_or(0),
            starting,
            total_chunks: optional_number(item, TOTAL_CHUNKS)?.unwrap_or(0),
        })
    }
}

/// What a part's chunks being written does to the frontier.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FrontierMove {
    /// Already startable: nothing to do.
    Nothing,
    /// The frontier reaches the part: advance it to `to`, past the parts noted ahead that
    /// follow on (`consumed`, their first chunks).
    Advance { to: u64, consumed: Vec<u64> },
    /// An earlier part is not written yet: note this one ahead.
    NoteAhead,
}

fn frontier_move(startable: u64, ahead: &HashMap<u64, u64>, first: u64, end: u64) -> FrontierMove {
    if startable >= end || startable > first {
        return FrontierMove::Nothing;
    }
    if startable < first {
        return if ahead.get(&first) == Some(&end) {
            FrontierMove::Nothing
        } else {
            FrontierMove::NoteAhead
        };
    }
    let mut to = end;
    let mut consumed = Vec::new();
    while let Some(&next) = ahead.get(&to) {
        consumed.push(to);
        to = next;
    }
    FrontierMove::Advance { to, consumed }
}

/// How many chunks a claim may take now: free slots, chunks ready, at most `most`.
fn claimable(counters: &StartCounters, default_limit: u32, most: u64) -> u64 {
    if counters.stop.is_some()
        || counters.status.is_terminal()
        || counters.status == BatchStatus::Paused
    {
        return 0;
    }
    let limit = i64::from(counters.max_concurrency.unwrap_or(default_limit));
    let free = (limit - counters.in_flight).max(0) as u64;
    let ready = counters
        .startable
        .unwrap_or(0)
        .saturating_sub(counters.started.unwrap_or(0));
    free.min(ready).min(most)
}

/// `name = :value` when the attribute was read with `value`, else `attribute_not_exists`.
fn unchanged(name: &str, placeholder: &str, read: Option<u64>) -> String {
    match read {
        Some(_) => format!("{name} = {placeholder}"),
        None => format!("attribute_not_exists({name})"),
    }
}

impl DynamoStore {
    pub(super) async fn load_start_counters(
        &self,
        batch_id: &BatchId,
    ) -> Result<Option<StartCounters>, StoreError> {
        let item = self.read_batch_item(batch_id).await?;
        item.as_ref().map(StartCounters::from_item).transpose()
    }

    /// Makes chunks `first..end` of a batch startable, now that their part is written: once
    /// every earlier chunk is, at once; otherwise when the earlier part's chunks become so.
    /// Safe to repeat.
    pub async fn mark_startable(
        &self,
        batch_id: &BatchId,
        first: u64,
        end: u64,
    ) -> Result<(), StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(counters) = self.load_start_counters(batch_id).await? else {
                return Ok(());
            };
            let Some(startable) = counters.startable else {
                // A batch created before chunk starts were counted here: the requests that
                // stored its earlier parts started their chunks. Count from this part on.
                if self.adopt_uncounted_batch(batch_id, first, end).await? {
                    return Ok(());
                }
                continue;
            };
            let mut update = self
                .update_batch_item(batch_id)
                .condition_expression(unchanged(STARTABLE_VERSION, ":version", counters.version))
                .expression_attribute_values(":next", n(counters.version.unwrap_or(0) + 1));
            if let Some(version) = counters.version {
                update = update.expression_attribute_values(":version", n(version));
            }
            let update = match frontier_move(startable, &counters.ahead, first, end) {
                FrontierMove::Nothing => return Ok(()),
                FrontierMove::NoteAhead => update
                    .update_expression(format!(
                        "SET {STARTABLE_AHEAD_PREFIX}{first} = :end, {STARTABLE_VERSION} = :next"
                    ))
                    .expression_attribute_values(":end", n(end)),
                FrontierMove::Advance { to, consumed } => {
                    let remove = if consumed.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " REMOVE {}",
                            consumed
                                .iter()
                                .map(|first| format!("{STARTABLE_AHEAD_PREFIX}{first}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    update
                        .update_expression(format!(
                            "SET {STARTABLE_CHUNKS} = :to, {STARTABLE_VERSION} = :next{remove}"
                        ))
                        .expression_attribute_values(":to", n(to))
                }
            };
            self.meter.write(1);
            let sent = update.send().await;
            if conditional(sent, |e| e.is_conditional_check_failed_exception())?.is_some() {
                return Ok(());
            }
        }
        Err(contended(format!("the startable chunks of {batch_id}")))
    }

    /// Makes startable every written part of a batch that its stream records did not (they
    /// ran out of retries): when chunks are stored beyond the startable ones, reads the
    /// batch's parts and marks each one written. Returns how many parts it marked.
    pub async fn repair_startable(&self, batch_id: &BatchId) -> Result<u64, StoreError> {
        let Some(counters) = self.load_start_counters(batch_id).await? else {
            return Ok(0);
        };
        let startable = counters.startable.unwrap_or(0);
        if startable >= counters.total_chunks || counters.status.is_terminal() {
            return Ok(0);
        }
        let mut written = Vec::new();
        self.for_each_item_with_prefix(batch_id, PART_PREFIX, |item| {
            if let Some(RequestKey::Part(_)) = request_key_of(item)? {
                if flag(item, CHUNKS_WRITTEN) {
                    let first: u64 = number(item, FIRST_CHUNK)?;
                    let count: u64 = number(item, CHUNK_COUNT)?;
                    written.push((first, first + count));
                }
            }
            Ok(())
        })
        .await?;
        let mut marked = 0;
        for (first, end) in written.into_iter().filter(|(_, end)| *end > startable) {
            self.mark_startable(batch_id, first, end).await?;
            marked += 1;
        }
        Ok(marked)
    }

    /// Starts counting a batch created before its starts were counted: chunks before `first`
    /// count as started, `first..end` as startable. False when another writer counted it first.
    async fn adopt_uncounted_batch(
        &self,
        batch_id: &BatchId,
        first: u64,
        end: u64,
    ) -> Result<bool, StoreError> {
        self.meter.write(1);
        let sent = self
            .update_batch_item(batch_id)
            .update_expression(format!(
                "SET {STARTABLE_CHUNKS} = :end, {STARTED_CHUNKS} = :first, {STARTABLE_VERSION} = :one"
            ))
            .condition_expression(format!(
                "attribute_exists({BATCH_ID}) AND attribute_not_exists({STARTABLE_CHUNKS})"
            ))
            .expression_attribute_values(":end", n(end))
            .expression_attribute_values(":first", n(first))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        Ok(conditional(sent, |e| e.is_conditional_check_failed_exception())?.is_some())
    }

    /// Claims the next chunks of a batch to start, up to its free slots (its limit, or
    /// `default_limit`) and at most `most`; None when none may start now. An earlier claim
    /// left unconfirmed for longer than `stale_after` is handed over instead. The caller
    /// starts the claimed chunks, then calls [`Self::confirm_starts`].
    pub async fn claim_starts(
        &self,
        batch_id: &BatchId,
        default_limit: u32,
        most: u64,
        stale_after: Duration,
    ) -> Result<Option<StartClaim>, StoreError> {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some(counters) = self.load_start_counters(batch_id).await? else {
                return Ok(None);
            };
            if let Some((first, end, at)) = counters.starting {
                let age = Timestamp::now().0.saturating_sub(at.0);
                if age < stale_after.as_micros() as i64 {
                    // Its claimer is starting it now and claims again after.
                    return Ok(None);
                }
                let (run, run_first) = counters.run_of(first);
                return Ok(Some(StartClaim {
                    first,
                    end,
                    taken_over: true,
                    run,
                    run_first,
                }));
            }
            let count = claimable(&counters, default_limit, most);
            if count == 0 {
                return Ok(None);
            }
            let limit = counters.max_concurrency.unwrap_or(default_limit);
            let first = counters.started.unwrap_or(0);
            let end = first + count;
            let mut update = self
                .update_batch_item(batch_id)
                .update_expression(format!(
                    "SET {STARTED_CHUNKS} = :end, {STARTING_FROM} = :first, \
                     {STARTING_TO} = :end, {STARTING_AT} = :now ADD {IN_FLIGHT} :count"
                ))
                .condition_expression(format!(
                    "{} AND attribute_not_exists({STARTING_FROM}) AND attribute_not_exists({STOPPED_BY}) \
                     AND #status <> :paused \
                     AND (attribute_not_exists({IN_FLIGHT}) OR {IN_FLIGHT} <= :room) AND {}",
                    unchanged(STARTED_CHUNKS, ":first", counters.started),
                    unchanged(
                        MAX_CONCURRENCY,
                        ":limit",
                        counters.max_concurrency.map(u64::from)
                    ),
                ))
                .expression_attribute_values(":end", n(end))
                .expression_attribute_values(":first", n(first))
                .expression_attribute_values(":now", n(Timestamp::now().0))
                .expression_attribute_values(":count", n(count))
                .expression_attribute_names("#status", STATUS)
                .expression_attribute_values(":paused", s(BatchStatus::Paused.as_str()))
                .expression_attribute_values(":room", n(i64::from(limit) - count as i64));
            if counters.max_concurrency.is_some() {
                update = update.expression_attribute_values(":limit", n(limit));
            }
            self.meter.write(1);
            let sent = update.send().await;
            if conditional(sent, |e| e.is_conditional_check_failed_exception())?.is_some() {
                let (run, run_first) = counters.run_of(first);
                return Ok(Some(StartClaim {
                    first,
                    end,
                    taken_over: false,
                    run,
                    run_first,
                }));
            }
        }
        Err(contended(format!("the slots of {batch_id}")))
    }

    /// The chunks a claim's positions stand for: the positions themselves for the parts'
    /// chunks; for a redrive's, its chunks at those offsets, from its `redrive#` items.
    pub async fn claimed_chunks(
        &self,
        batch_id: &BatchId,
        claim: &StartClaim,
    ) -> Result<Vec<u64>, StoreError> {
        if claim.run == 0 {
            return Ok((claim.first..claim.end).collect());
        }
        let from = claim.first - claim.run_first;
        let until = claim.end - claim.run_first;
        let mut chunks = Vec::new();
        for page in from / REDRIVE_PAGE_CHUNKS..=(until - 1) / REDRIVE_PAGE_CHUNKS {
            let item = self
                .get_request_item(batch_id, redrive_sk(claim.run, page))
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "redrive {} of {batch_id} has no page {page}",
                        claim.run
                    ))
                })?;
            let page_first = page * REDRIVE_PAGE_CHUNKS;
            let listed = text(&item, CHUNKS)?
                .split(',')
                .map(|chunk| {
                    chunk
                        .parse::<u64>()
                        .map_err(|_| super::attributes::corrupt(CHUNKS))
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (offset, chunk) in listed.into_iter().enumerate() {
                let position = page_first + offset as u64;
                if (from..until).contains(&position) {
                    chunks.push(chunk);
                }
            }
        }
        Ok(chunks)
    }

    /// Confirms a claim's chunks started, so that nobody starts them again.
    pub async fn confirm_starts(
        &self,
        batch_id: &BatchId,
        claim: &StartClaim,
    ) -> Result<(), StoreError> {
        self.meter.write(1);
        let sent = self
            .update_batch_item(batch_id)
            .update_expression(format!(
                "REMOVE {STARTING_FROM}, {STARTING_TO}, {STARTING_AT}"
            ))
            .condition_expression(format!("{STARTING_FROM} = :first AND {STARTING_TO} = :end"))
            .expression_attribute_values(":first", n(claim.first))
            .expression_attribute_values(":end", n(claim.end))
            .send()
            .await;
        // A failed condition: another claimer took the claim over and confirmed it.
        conditional(sent, |e| e.is_conditional_check_failed_exception())?;
        Ok(())
    }

    /// Sets or clears the batch's limit; false when there is no such batch.
    pub(super) async fn write_max_concurrency(
        &self,
        batch_id: &BatchId,
        max_concurrency: Option<u32>,
    ) -> Result<bool, StoreError> {
        let update = self
            .update_batch_item(batch_id)
            .condition_expression(format!("attribute_exists({BATCH_ID})"));
        let update = match max_concurrency {
            Some(limit) => update
                .update_expression(format!("SET {MAX_CONCURRENCY} = :limit"))
                .expression_attribute_values(":limit", n(limit)),
            None => update.update_expression(format!("REMOVE {MAX_CONCURRENCY}")),
        };
        self.meter.write(1);
        let sent = update.send().await;
        Ok(conditional(sent, |e| e.is_conditional_check_failed_exception())?.is_some())
    }

    /// Tells the request table's stream that a batch's limit changed, so that its starts are
    /// reconsidered at once rather than when its next chunk ends.
    pub(super) async fn note_limit_changed(&self, batch_id: &BatchId) -> Result<(), StoreError> {
        let mut item = request_key(batch_id, LIMIT_CHANGED_SK.to_owned());
        item.insert("at".to_owned(), n(Timestamp::now().0));
        self.put_request_item(item).await
    }

    /// The batches that have not ended: PENDING and RUNNING ones, which may have chunks
    /// waiting for a slot, and PAUSED ones, whose stop may be left to finish.
    pub async fn unfinished_batches(&self) -> Result<Vec<BatchId>, StoreError> {
        let mut batches = Vec::new();
        for status in [
            BatchStatus::Pending,
            BatchStatus::Running,
            BatchStatus::Paused,
        ] {
            batches.extend(self.batch_ids_with_status(status).await?);
        }
        Ok(batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(startable: u64, started: u64, in_flight: i64, limit: Option<u32>) -> StartCounters {
        StartCounters {
            status: BatchStatus::Running,
            stop: None,
            redrive_count: 0,
            redrive_first_position: 0,
            max_concurrency: limit,
            startable: Some(startable),
            version: Some(1),
            ahead: HashMap::new(),
            started: Some(started),
            in_flight,
            starting: None,
            total_chunks: startable,
        }
    }

    #[test]
    fn a_claim_takes_free_slots_of_ready_chunks_only() {
        assert_eq!(claimable(&counters(10, 0, 0, Some(5)), 100, 500), 5);
        assert_eq!(claimable(&counters(10, 5, 5, Some(5)), 100, 500), 0);
        assert_eq!(claimable(&counters(10, 5, 4, Some(5)), 100, 500), 1);
        assert_eq!(claimable(&counters(10, 8, 0, None), 100, 500), 2);
        assert_eq!(claimable(&counters(1000, 0, 0, None), 100, 30), 30);
        // A batch counted from before slots were kept can run below zero: more room, not less.
        assert_eq!(claimable(&counters(10, 0, -2, Some(3)), 100, 500), 5);
        let mut cancelled = counters(10, 0, 0, Some(5));
        cancelled.stop = Some(Stop::Cancelled);
        assert_eq!(claimable(&cancelled, 100, 500), 0);
    }

    #[test]
    fn parts_written_in_any_order_advance_the_frontier_once_contiguous() {
        let none = HashMap::new();
        assert_eq!(
            frontier_move(0, &none, 0, 4),
            FrontierMove::Advance {
                to: 4,
                consumed: vec![]
            }
        );
        assert_eq!(frontier_move(4, &none, 0, 4), FrontierMove::Nothing);
        assert_eq!(frontier_move(0, &none, 4, 8), FrontierMove::NoteAhead);
        let ahead = HashMap::from([(4, 8), (8, 9)]);
        assert_eq!(frontier_move(0, &ahead, 4, 8), FrontierMove::Nothing);
        assert_eq!(
            frontier_move(0, &ahead, 0, 4),
            FrontierMove::Advance {
                to: 9,
                consumed: vec![4, 8]
            }
        );
    }
}
