//! A batch's failure messages and their counts (`batch_errors`, and the other-errors bucket on
//! the batch row): added to in the transaction that counts a chunk, read for status reads.

use rusqlite::{params, Connection};

use super::BatchRow;
use crate::domain::Batch;
use crate::store::codec::ChunkOutcomes;
use crate::store::progress::{self, MAX_DISTINCT_ERRORS};
use crate::store::StoreError;

/// Adds a recorded chunk's failures to its batch's counts: each message the batch counts (or
/// has room for) by itself, the rest under the other-errors bucket. Reads at most
/// [`MAX_DISTINCT_ERRORS`] rows, and only for a chunk with failures.
pub(super) fn count_errors(
    conn: &Connection,
    batch_seq: i64,
    outcomes: &ChunkOutcomes,
) -> Result<(), StoreError> {
    let chunk = progress::chunk_errors(outcomes);
    if chunk.is_empty() {
        return Ok(());
    }
    let stored = conn
        .prepare_cached("SELECT message FROM batch_errors WHERE batch_seq = ?1 LIMIT ?2")?
        .query_map(params![batch_seq, MAX_DISTINCT_ERRORS as i64], |row| {
            row.get::<_, String>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let tally = progress::tally_errors(chunk, stored.len(), |message| {
        stored.iter().any(|kept| kept == message)
    });
    let mut add = conn.prepare_cached(
        "INSERT INTO batch_errors (batch_seq, message, count) VALUES (?1, ?2, ?3) \
         ON CONFLICT (batch_seq, message) DO UPDATE SET count = count + excluded.count",
    )?;
    for (message, count) in tally.known.iter().chain(&tally.new) {
        add.execute(params![batch_seq, message, count])?;
    }
    if tally.other > 0 {
        conn.prepare_cached("UPDATE batches SET other_errors = other_errors + ?2 WHERE seq = ?1")?
            .execute(params![batch_seq, tally.other])?;
    }
    Ok(())
}

/// Drops a batch's failure counts (a redrive runs every failed item again).
pub(super) fn forget_errors(conn: &Connection, batch_seq: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM batch_errors WHERE batch_seq = ?1")?
        .execute([batch_seq])?;
    conn.prepare_cached("UPDATE batches SET other_errors = 0 WHERE seq = ?1")?
        .execute([batch_seq])?;
    Ok(())
}

/// The batch with its most frequent failure messages (a read only when some item failed).
pub(super) fn with_top_errors(conn: &Connection, row: BatchRow) -> Result<Batch, StoreError> {
    let mut batch = row.batch;
    if batch.failed_items == 0 {
        return Ok(batch);
    }
    let counts = conn
        .prepare_cached(
            "SELECT message, count FROM batch_errors WHERE batch_seq = ?1 \
             ORDER BY count DESC, message LIMIT ?2",
        )?
        .query_map(params![row.seq, progress::TOP_ERRORS as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    batch.progress.top_errors = progress::top_errors(counts, row.other_errors);
    Ok(batch)
}
