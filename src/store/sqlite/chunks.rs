//! The steps' per-chunk reads and writes: claim, load, save outcomes, record. Each reads the
//! one chunk row it needs (with its batch, in one query) and only the columns it uses.

use rusqlite::{params, Connection, OptionalExtension};

use super::{error_counts, load_batch, load_batch_by_seq, BatchRow};
use crate::domain::{BatchId, BatchStatus, ItemOutcome, Timestamp};
use crate::store::codec::ChunkOutcomes;
use crate::store::progress::{self, RateWindow};
use crate::store::rules::{self, Progress, Stop};
use crate::store::{Chunk, ChunkClaim, ChunkStage, RecordOutcome, StoreError, Unfinished};

/// A chunk row with the seq of its batch.
struct StoredChunk {
    batch_seq: i64,
    outcomes: ChunkOutcomes,
}

impl StoredChunk {
    /// The chunk's outcomes, without its item IDs.
    fn read(conn: &Connection, batch_id: &str, chunk: u64) -> Result<Option<Self>, StoreError> {
        conn.prepare_cached(
            "SELECT batch_seq, stage, states, errors, attempts FROM chunks \
             WHERE batch_seq = (SELECT seq FROM batches WHERE batch_id = ?1) AND chunk = ?2",
        )?
        .query_row(params![batch_id, chunk], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, u32>(4)?,
            ))
        })
        .optional()?
        .map(|(batch_seq, stage, states, errors, attempts)| {
            Ok(Self {
                batch_seq,
                outcomes: ChunkOutcomes::decode(&stage, states, errors.as_deref(), attempts)?,
            })
        })
        .transpose()
    }

    fn write(&self, conn: &Connection, chunk: u64) -> Result<(), StoreError> {
        let outcomes = &self.outcomes;
        conn.prepare_cached(
            "UPDATE chunks SET stage = ?3, states = ?4, errors = ?5, failed_count = ?6, attempts = ?7 \
             WHERE batch_seq = ?1 AND chunk = ?2",
        )?
        .execute(params![
            self.batch_seq,
            chunk,
            outcomes.stage.as_str(),
            outcomes.states_text(),
            outcomes.errors_json(),
            outcomes.count_not_succeeded(),
            outcomes.attempts,
        ])?;
        Ok(())
    }
}

/// A chunk with its items, and its batch's seq and status.
struct FullChunk {
    batch_seq: i64,
    batch_status: String,
    outcomes: ChunkOutcomes,
    item_ids: String,
}

impl FullChunk {
    fn read(conn: &Connection, batch_id: &str, chunk: u64) -> Result<Option<Self>, StoreError> {
        conn.prepare_cached(
            "SELECT b.seq, b.status, c.stage, c.item_ids, c.states, c.errors, c.attempts, c.attempt_base \
             FROM batches b JOIN chunks c ON c.batch_seq = b.seq WHERE b.batch_id = ?1 AND c.chunk = ?2",
        )?
        .query_row(params![batch_id, chunk], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
                (row.get::<_, u32>(6)?, row.get::<_, u32>(7)?),
            ))
        })
        .optional()?
        .map(
            |(batch_seq, batch_status, stage, item_ids, states, errors, (attempts, base))| {
                Ok(Self {
                    batch_seq,
                    batch_status,
                    outcomes: ChunkOutcomes::decode(&stage, states, errors.as_deref(), attempts)?
                        .with_attempt_base(base),
                    item_ids,
                })
            },
        )
        .transpose()
    }

    fn into_chunk(self, batch_id: BatchId, index: u64) -> Chunk {
        self.outcomes.into_chunk(batch_id, index, &self.item_ids)
    }
}

pub(super) fn claim_chunk(
    conn: &Connection,
    batch_id: &BatchId,
    chunk: u64,
) -> Result<ChunkClaim, StoreError> {
    let Some(mut row) = FullChunk::read(conn, batch_id.as_str(), chunk)? else {
        return Ok(ChunkClaim::NotFound);
    };
    if !row.outcomes.stage.is_open() {
        return Ok(ChunkClaim::Inactive);
    }
    if row.outcomes.stage == ChunkStage::Pending {
        conn.prepare_cached(
            "UPDATE chunks SET stage = 'STARTED' WHERE batch_seq = ?1 AND chunk = ?2",
        )?
        .execute(params![row.batch_seq, chunk])?;
        row.outcomes.stage = ChunkStage::Started;
        if row.batch_status == BatchStatus::Pending.as_str() {
            conn.prepare_cached(
                "UPDATE batches SET status = 'RUNNING', updated_at = ?2 WHERE seq = ?1 AND status = 'PENDING'",
            )?
            .execute(params![row.batch_seq, Timestamp::now().0])?;
        }
    }
    Ok(ChunkClaim::Active(row.into_chunk(batch_id.clone(), chunk)))
}

pub(super) fn load_chunk(
    conn: &Connection,
    batch_id: &BatchId,
    chunk: u64,
) -> Result<Option<Chunk>, StoreError> {
    Ok(FullChunk::read(conn, batch_id.as_str(), chunk)?
        .map(|row| row.into_chunk(batch_id.clone(), chunk)))
}

pub(super) fn save_outcomes(
    conn: &Connection,
    batch_id: &str,
    chunk: u64,
    outcomes: &[(usize, ItemOutcome)],
    attempts: u32,
) -> Result<(), StoreError> {
    let Some(mut row) = StoredChunk::read(conn, batch_id, chunk)? else {
        return Ok(());
    };
    let stored = &mut row.outcomes;
    if !stored.stage.is_open() {
        return Ok(());
    }
    for (position, outcome) in outcomes {
        stored.apply(*position, outcome);
    }
    stored.attempts = stored.attempts.max(attempts);
    row.write(conn, chunk)
}

/// [`save_outcomes`] and recording the chunk in one read and one write of the chunk.
pub(super) fn save_outcomes_and_record(
    conn: &Connection,
    batch_id: &str,
    chunk: u64,
    outcomes: &[(usize, ItemOutcome)],
    attempts: u32,
    unfinished: Unfinished<'_>,
) -> Result<RecordOutcome, StoreError> {
    let Some(mut batch) = load_batch(conn, batch_id)? else {
        return Ok(RecordOutcome::NotFound);
    };
    let Some(mut row) = StoredChunk::read(conn, batch_id, chunk)? else {
        return Ok(RecordOutcome::NotFound);
    };
    if !row.outcomes.stage.is_open() {
        return Ok(RecordOutcome::AlreadyRecorded(batch.batch));
    }
    for (position, outcome) in outcomes {
        row.outcomes.apply(*position, outcome);
    }
    row.outcomes.attempts = row.outcomes.attempts.max(attempts);
    row.outcomes.settle(unfinished);
    row.write(conn, chunk)?;
    count_chunk(conn, &mut batch, &row.outcomes)?;
    Ok(RecordOutcome::Recorded(batch.batch, row.outcomes.tally()))
}

/// Adds a recorded chunk's outcomes to its batch's counters, its rate window and its failure
/// counts, stopping the batch when its failures exceed its budget, and settling it on its last
/// chunk.
fn count_chunk(
    conn: &Connection,
    batch: &mut BatchRow,
    outcomes: &ChunkOutcomes,
) -> Result<(), StoreError> {
    let now = Timestamp::now();
    let counts = &mut batch.batch;
    let tally = outcomes.tally();
    counts.succeeded_items += tally.succeeded;
    counts.failed_items += tally.failed;
    counts.cancelled_items += tally.cancelled;
    counts.completed_chunks += 1;
    counts.updated_at = now;
    if let Some(reason) = rules::budget_stop(&batch.batch, batch.stop) {
        batch.stop(conn, Stop::BudgetExceeded)?;
        batch.batch.failure_reason = Some(reason);
    }
    let ended = batch.settle(Progress::ChunkRecorded, now);
    let terminal =
        batch.batch.succeeded_items + batch.batch.failed_items + batch.batch.cancelled_items;
    batch.window = if batch.window.is_due(now) {
        batch.window.rolled(terminal, now)
    } else {
        RateWindow {
            last_recorded_at: Some(now),
            ..batch.window
        }
    };
    batch.batch.progress = progress::progress_of(&batch.batch, &batch.window, now);
    batch.save(conn)?;
    error_counts::count_errors(conn, batch.seq, outcomes)?;
    if ended {
        // The outbox trigger set the callback's state.
        *batch = load_batch_by_seq(conn, batch.seq)?;
    }
    Ok(())
}
