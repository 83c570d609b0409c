//! The embedded engine's journal in the SQLite store: the `executions` table, one row per chunk
//! execution that has passed its first Task, and the queries that page runnable executions in.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::writer::{Message, StagedEntry};
use super::SqliteStore;
use crate::domain::{BatchId, Timestamp};
use crate::store::journal::{
    BatchSlots, ExecutionJournal, ExecutionKey, JournalEntry, JournalPosition, JournalReceipt,
    Runnable, WakePosition,
};
use crate::store::StoreError;

fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Runs a paging query whose rows are `batch_id, batch_seq, chunk, cursor, started_at,
/// wake_at`, parsing each batch id once per run of rows of the same batch.
fn page(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Runnable>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut page = Vec::new();
    let mut current: Option<(String, BatchId)> = None;
    while let Some(row) = rows.next()? {
        let raw_id = row
            .get_ref(0)?
            .as_str()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let batch_id = match &current {
            Some((raw, parsed)) if raw == raw_id => parsed.clone(),
            _ => {
                let parsed = BatchId::parse(raw_id.to_owned())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                current = Some((raw_id.to_owned(), parsed.clone()));
                parsed
            }
        };
        page.push(runnable(row, batch_id)?);
    }
    Ok(page)
}

fn runnable(row: &Row<'_>, batch_id: BatchId) -> rusqlite::Result<Runnable> {
    let chunk: u64 = row.get(2)?;
    let cursor: Option<String> = row.get(3)?;
    Ok(Runnable {
        key: ExecutionKey { batch_id, chunk },
        position: JournalPosition {
            batch_seq: row.get(1)?,
            chunk,
        },
        cursor: cursor.filter(|cursor| !cursor.is_empty()),
        started_at: row.get::<_, Option<i64>>(4)?.map(Timestamp),
        wake_at: row.get::<_, Option<i64>>(5)?.map(Timestamp),
    })
}

#[async_trait]
impl ExecutionJournal for SqliteStore {
    fn stage(
        &self,
        key: &ExecutionKey,
        position: JournalPosition,
        entry: JournalEntry,
    ) -> JournalReceipt {
        let (committed, receipt) = JournalReceipt::new();
        let alone = self.inner.staged.push(StagedEntry {
            key: key.clone(),
            batch_seq: position.batch_seq,
            entry,
            committed,
        });
        if alone {
            // A stopped writer drops the entry, and the receipt says so.
            let _ = self.inner.writer.send(Message::Flush);
        }
        receipt
    }

    fn accepting(&self) -> bool {
        !self.inner.staged.failing()
    }

    async fn resumable(
        &self,
        from: JournalPosition,
        count: usize,
    ) -> Result<Vec<Runnable>, StoreError> {
        self.read(move |conn| {
            page(
                conn,
                "SELECT b.batch_id, e.batch_seq, e.chunk, e.cursor, e.started_at, e.wake_at \
                 FROM executions e JOIN batches b ON b.seq = e.batch_seq \
                 WHERE e.status = 'RUNNING' AND e.wake_at IS NULL AND (e.batch_seq, e.chunk) >= (?1, ?2) \
                 ORDER BY e.batch_seq, e.chunk LIMIT ?3",
                params![from.batch_seq, from.chunk, limit(count)],
            )
        })
        .await
    }

    async fn due(
        &self,
        from: WakePosition,
        now: Timestamp,
        count: usize,
    ) -> Result<Vec<Runnable>, StoreError> {
        self.read(move |conn| {
            page(
                conn,
                "SELECT b.batch_id, e.batch_seq, e.chunk, e.cursor, e.started_at, e.wake_at \
                 FROM executions e JOIN batches b ON b.seq = e.batch_seq \
                 WHERE e.wake_at IS NOT NULL AND e.status = 'RUNNING' \
                 AND (e.wake_at, e.batch_seq, e.chunk) >= (?1, ?2, ?3) AND e.wake_at <= ?4 \
                 ORDER BY e.wake_at, e.batch_seq, e.chunk LIMIT ?5",
                params![
                    from.wake_at.0,
                    from.position.batch_seq,
                    from.position.chunk,
                    now.0,
                    limit(count)
                ],
            )
        })
        .await
    }

    async fn next_wake(&self, from: WakePosition) -> Result<Option<Timestamp>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT e.wake_at FROM executions e \
                 WHERE e.wake_at IS NOT NULL AND e.status = 'RUNNING' \
                 AND (e.wake_at, e.batch_seq, e.chunk) >= (?1, ?2, ?3) \
                 ORDER BY e.wake_at, e.batch_seq, e.chunk LIMIT 1",
            )?;
            let mut rows = statement.query(params![
                from.wake_at.0,
                from.position.batch_seq,
                from.position.chunk
            ])?;
            Ok(match rows.next()? {
                Some(row) => Some(Timestamp(row.get(0)?)),
                None => None,
            })
        })
        .await
    }

    async fn unstarted(
        &self,
        from: JournalPosition,
        count: usize,
    ) -> Result<Vec<Runnable>, StoreError> {
        self.read(move |conn| {
            page(
                conn,
                "SELECT b.batch_id, c.batch_seq, c.chunk, NULL, NULL, NULL \
                 FROM chunks c JOIN batches b ON b.seq = c.batch_seq \
                 WHERE (c.batch_seq, c.chunk) >= (?1, ?2) AND c.stage IN ('PENDING', 'STARTED') \
                 AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.batch_seq = c.batch_seq AND e.chunk = c.chunk) \
                 ORDER BY c.batch_seq, c.chunk LIMIT ?3",
                params![from.batch_seq, from.chunk, limit(count)],
            )
        })
        .await
    }

    async fn unstarted_in_batch(
        &self,
        from: JournalPosition,
        count: usize,
    ) -> Result<Vec<Runnable>, StoreError> {
        self.read(move |conn| {
            page(
                conn,
                "SELECT b.batch_id, c.batch_seq, c.chunk, NULL, NULL, NULL \
                 FROM chunks c JOIN batches b ON b.seq = c.batch_seq \
                 WHERE c.batch_seq = ?1 AND c.chunk >= ?2 AND c.stage IN ('PENDING', 'STARTED') \
                 AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.batch_seq = c.batch_seq AND e.chunk = c.chunk) \
                 ORDER BY c.chunk LIMIT ?3",
                params![from.batch_seq, from.chunk, limit(count)],
            )
        })
        .await
    }

    async fn batch_slots(&self, batch_seq: i64) -> Result<BatchSlots, StoreError> {
        self.read(move |conn| {
            // A paused batch has no room: its fresh starts wait until it is resumed.
            let limit: Option<u32> = conn
                .prepare_cached(
                    "SELECT max_concurrency, status = 'PAUSED' FROM batches WHERE seq = ?1",
                )?
                .query_row([batch_seq], |row| {
                    let paused: bool = row.get(1)?;
                    Ok(if paused { Some(0) } else { row.get(0)? })
                })
                .optional()?
                .flatten();
            let running: u64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM executions WHERE batch_seq = ?1 AND status = 'RUNNING'",
                )?
                .query_row([batch_seq], |row| row.get(0))?;
            Ok(BatchSlots { limit, running })
        })
        .await
    }

    async fn position(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<JournalPosition>, StoreError> {
        let batch_id = batch_id.clone();
        self.read(move |conn| {
            let mut statement =
                conn.prepare_cached("SELECT seq FROM batches WHERE batch_id = ?1")?;
            let mut rows = statement.query([batch_id.as_str()])?;
            Ok(match rows.next()? {
                Some(row) => Some(JournalPosition {
                    batch_seq: row.get(0)?,
                    chunk,
                }),
                None => None,
            })
        })
        .await
    }
}
