//! The database work of a batch done directly, with no engine, gRPC or tasks: the floor the
//! benchmark measures the engine against. The same rows as the store writes (its schema, WAL,
//! synchronous=NORMAL): the chunk rows are inserted, then each chunk is claimed, its outcomes
//! recorded and added to the batch counters, 1,000 chunks per commit.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::SCHEMA;
use crate::domain::Timestamp;
use crate::store::StoreError;

const CHUNKS_PER_COMMIT: u64 = 1_000;

/// Runs the floor workload on a new database at `path`: `items` IDs from `item_id`, chunks of
/// `batch_size`. Returns how long it took.
pub(crate) fn measure(
    path: &Path,
    items: u64,
    batch_size: u32,
    item_id: impl Fn(u64) -> String,
) -> Result<Duration, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    let started = Instant::now();
    let batch_size = u64::from(batch_size.max(1));
    let chunks = items.div_ceil(batch_size);
    conn.execute(
        "INSERT INTO batches (batch_id, status, total_items, received_items, batch_size, total_chunks, created_at, updated_at) \
         VALUES ('floor', 'PENDING', ?1, ?1, ?2, ?3, ?4, ?4)",
        params![items, batch_size, chunks, Timestamp::now().0],
    )?;
    let seq = conn.last_insert_rowid();
    let items_of = |chunk: u64| chunk * batch_size..((chunk + 1) * batch_size).min(items);

    for first in (0..chunks).step_by(CHUNKS_PER_COMMIT as usize) {
        let transaction = conn.unchecked_transaction()?;
        let mut insert = transaction.prepare_cached(
            "INSERT INTO chunks (batch_seq, chunk, stage, item_count, item_ids, states) VALUES (?1, ?2, 'PENDING', ?3, ?4, ?5)",
        )?;
        for chunk in first..(first + CHUNKS_PER_COMMIT).min(chunks) {
            let range = items_of(chunk);
            let count = (range.end - range.start) as usize;
            let ids = range.map(&item_id).collect::<Vec<_>>().join("\n");
            insert.execute(params![seq, chunk, count, ids, "P".repeat(count)])?;
        }
        drop(insert);
        transaction.commit()?;
    }

    for first in (0..chunks).step_by(CHUNKS_PER_COMMIT as usize) {
        let transaction = conn.unchecked_transaction()?;
        let mut claim = transaction.prepare_cached(
            "UPDATE chunks SET stage = 'STARTED' WHERE batch_seq = ?1 AND chunk = ?2 AND stage = 'PENDING'",
        )?;
        let mut record = transaction.prepare_cached(
            "UPDATE chunks SET stage = 'RECORDED', states = ?3, attempts = 1 WHERE batch_seq = ?1 AND chunk = ?2",
        )?;
        let mut count = transaction.prepare_cached(
            "UPDATE batches SET status = 'RUNNING', succeeded_items = succeeded_items + ?2, \
             completed_chunks = completed_chunks + 1, updated_at = ?3 WHERE seq = ?1",
        )?;
        for chunk in first..(first + CHUNKS_PER_COMMIT).min(chunks) {
            let range = items_of(chunk);
            let succeeded = range.end - range.start;
            claim.execute(params![seq, chunk])?;
            record.execute(params![seq, chunk, "S".repeat(succeeded as usize)])?;
            count.execute(params![seq, succeeded, Timestamp::now().0])?;
        }
        drop((claim, record, count));
        transaction.commit()?;
    }
    conn.execute(
        "UPDATE batches SET status = 'COMPLETED', completed_at = ?2 WHERE seq = ?1",
        params![seq, Timestamp::now().0],
    )?;
    Ok(started.elapsed())
}
