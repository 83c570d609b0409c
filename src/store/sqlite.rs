//! The embedded SQLite store: one database file (WAL) holding batches, parts, chunks and the
//! local engine's executions.
//!
//! Writes go through one writer thread that groups concurrent requests into one transaction
//! (each request in its own savepoint, answered only after the commit), so many chunks
//! finishing at once cost one commit. Reads use a small pool of read-only connections.
//! A chunk is one row holding its item IDs and outcomes together, encoded by [`codec`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, ChunkOutcomes, ItemPager};
use super::id_hashes::{self, PartIndex};
use super::rules::{self, judge_part, CancelRequest, PartVerdict, Progress};
use super::{
    AppendOutcome, BadPageToken, BatchQuery, BatchStore, CancelOutcome, Chunk, ChunkClaim,
    ChunkStage, ItemQuery, ListError, Page, RecordOutcome, StoreError,
};
use crate::domain::{Batch, BatchId, BatchStatus, ItemOutcome, ItemRecord, NewPart, Timestamp};
use crate::engine::local::journal::{
    ExecutionEnd, ExecutionJournal, ExecutionKey, ExecutionRecord,
};

/// Most write requests folded into one transaction.
const MAX_WRITES_PER_COMMIT: usize = 512;
/// Chunk rows read per query while paging items.
const CHUNKS_PER_READ: i64 = 64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    total_items INTEGER NOT NULL,
    received_items INTEGER NOT NULL,
    succeeded_items INTEGER NOT NULL DEFAULT 0,
    failed_items INTEGER NOT NULL DEFAULT 0,
    cancelled_items INTEGER NOT NULL DEFAULT 0,
    total_chunks INTEGER NOT NULL DEFAULT 0,
    completed_chunks INTEGER NOT NULL DEFAULT 0,
    batch_size INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    completed_at INTEGER
);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status, seq);
CREATE TABLE IF NOT EXISTS parts (
    batch_seq INTEGER NOT NULL,
    part_number INTEGER NOT NULL,
    digest TEXT NOT NULL,
    first_chunk INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    item_count INTEGER NOT NULL,
    PRIMARY KEY (batch_seq, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS part_id_hashes (
    batch_seq INTEGER NOT NULL,
    part_number INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    PRIMARY KEY (batch_seq, part_number)
);
CREATE TABLE IF NOT EXISTS chunks (
    batch_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    stage TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    item_ids TEXT NOT NULL,
    states TEXT NOT NULL,
    errors TEXT,
    failed_count INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_seq, chunk)
);
CREATE TABLE IF NOT EXISTS executions (
    batch_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    status TEXT NOT NULL,
    cursor TEXT NOT NULL,
    wake_at INTEGER,
    error TEXT,
    cause TEXT,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (batch_seq, chunk)
);
CREATE INDEX IF NOT EXISTS executions_running ON executions (started_at) WHERE status = 'RUNNING';
";

const BATCH_COLUMNS: &str = "seq, batch_id, status, total_items, received_items, succeeded_items, \
     failed_items, cancelled_items, total_chunks, completed_chunks, batch_size, cancel_requested, \
     created_at, updated_at, completed_at";

/// A batch row: the public snapshot plus what only the store needs.
struct BatchRow {
    seq: i64,
    cancel_requested: bool,
    batch: Batch,
}

impl BatchRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let status: String = row.get(2)?;
        let status = BatchStatus::from_name(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown batch status {status:?}").into(),
            )
        })?;
        Ok(Self {
            seq: row.get(0)?,
            cancel_requested: row.get(11)?,
            batch: Batch {
                batch_id: BatchId::parse(row.get::<_, String>(1)?).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        e.to_string().into(),
                    )
                })?,
                status,
                total_items: row.get(3)?,
                received_items: row.get(4)?,
                succeeded_items: row.get(5)?,
                failed_items: row.get(6)?,
                cancelled_items: row.get(7)?,
                total_chunks: row.get(8)?,
                completed_chunks: row.get(9)?,
                batch_size: row.get(10)?,
                created_at: Timestamp(row.get(12)?),
                updated_at: Timestamp(row.get(13)?),
                completed_at: row.get::<_, Option<i64>>(14)?.map(Timestamp),
            },
        })
    }

    /// Whether every item has a terminal status.
    fn is_settled(&self) -> bool {
        rules::is_settled(&self.batch, self.cancel_requested)
    }
}

fn unavailable(err: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(err.to_string()),
            other => unavailable(other),
        }
    }
}

/// A write request run by the writer thread inside the group's transaction.
trait WriteJob: Send {
    /// Runs the work; false means it failed and its savepoint is rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn deliver(self: Box<Self>, committed: Result<(), String>);
}

struct Job<T, F> {
    work: Option<F>,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let outcome = work(conn);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn deliver(self: Box<Self>, committed: Result<(), String>) {
        let outcome = match (committed, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Err(reason), Some(Ok(_))) => Err(StoreError::Unavailable(reason)),
            (_, Some(Err(err))) => Err(err),
            (_, None) => Err(StoreError::Unavailable("write was not run".into())),
        };
        let _ = self.reply.send(outcome);
    }
}

/// The embedded store. Cheap to clone; clones share the writer and the readers.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: Mutex<Vec<Connection>>,
    changes: watch::Receiver<u64>,
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(unavailable)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;

        let (writer, jobs) = mpsc::channel::<Box<dyn WriteJob>>(4096);
        let (changed, changes) = watch::channel(0u64);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(conn, jobs, changed))
            .map_err(|err| StoreError::Unavailable(err.to_string()))?;

        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer,
                readers: Mutex::new(Vec::new()),
                changes,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(work),
            outcome: None,
            reply,
        });
        self.inner
            .writer
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer dropped a request".into()))?
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut pool| pool.pop());
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(
                    &inner.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?,
            };
            let outcome = work(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            outcome
        })
        .await
        .map_err(|err| StoreError::Unavailable(format!("read task failed: {err}")))?
    }
}

fn run_writer(
    conn: Connection,
    mut jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    changed: watch::Sender<u64>,
) {
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_WRITES_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let committed = commit_group(&conn, &mut group);
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for job in group {
            job.deliver(committed.clone());
        }
        changed.send_modify(|generation| *generation += 1);
    }
}

fn commit_group(conn: &Connection, group: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| e.to_string())?;
    for job in group.iter_mut() {
        conn.execute_batch("SAVEPOINT job")
            .map_err(|e| e.to_string())?;
        let keep = job.run(conn);
        let end = if keep {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        conn.execute_batch(end).map_err(|e| e.to_string())?;
    }
    conn.execute_batch("COMMIT").map_err(|e| e.to_string())
}

fn load_batch(conn: &Connection, batch_id: &str) -> Result<Option<BatchRow>, StoreError> {
    let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE batch_id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([batch_id], BatchRow::from_row)
        .optional()?)
}

fn load_batch_by_seq(conn: &Connection, seq: i64) -> Result<BatchRow, StoreError> {
    let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE seq = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([seq], BatchRow::from_row)?)
}

/// A chunk row: its outcomes and its joined item IDs.
struct ChunkRow {
    outcomes: ChunkOutcomes,
    item_ids: String,
}

impl ChunkRow {
    fn read(conn: &Connection, seq: i64, chunk: u64) -> Result<Option<Self>, StoreError> {
        conn.prepare_cached(
            "SELECT stage, item_ids, states, errors, attempts FROM chunks WHERE batch_seq = ?1 AND chunk = ?2",
        )?
        .query_row(params![seq, chunk], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, u32>(4)?,
            ))
        })
        .optional()?
        .map(|(stage, item_ids, states, errors, attempts)| {
            Ok(Self {
                outcomes: ChunkOutcomes::decode(&stage, states, errors.as_deref(), attempts)?,
                item_ids,
            })
        })
        .transpose()
    }

    fn into_chunk(self, batch_id: BatchId, index: u64) -> Chunk {
        self.outcomes.into_chunk(batch_id, index, &self.item_ids)
    }
}

fn write_outcomes(
    conn: &Connection,
    seq: i64,
    chunk: u64,
    outcomes: &ChunkOutcomes,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE chunks SET stage = ?3, states = ?4, errors = ?5, failed_count = ?6, attempts = ?7 \
         WHERE batch_seq = ?1 AND chunk = ?2",
    )?
    .execute(params![
        seq,
        chunk,
        outcomes.stage.as_str(),
        outcomes.states_text(),
        outcomes.errors_json(),
        outcomes.count(codec::FAILED),
        outcomes.attempts,
    ])?;
    Ok(())
}

fn append_part(conn: &Connection, part: &NewPart) -> Result<AppendOutcome, StoreError> {
    let now = Timestamp::now();
    let existing = load_batch(conn, part.batch_id.as_str())?;
    let row = match existing {
        Some(row) => row,
        None => {
            conn.prepare_cached(
                "INSERT INTO batches (batch_id, status, total_items, received_items, batch_size, created_at, updated_at) \
                 VALUES (?1, 'PENDING', ?2, 0, ?3, ?4, ?4)",
            )?
            .execute(params![
                part.batch_id.as_str(),
                part.total_items,
                part.batch_size.get(),
                now.0
            ])?;
            load_batch_by_seq(conn, conn.last_insert_rowid())?
        }
    };
    let digest = part.digest();
    let stored_part = conn
        .prepare_cached(
            "SELECT digest, first_chunk, chunk_count FROM parts WHERE batch_seq = ?1 AND part_number = ?2",
        )?
        .query_row(params![row.seq, part.part_number], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?, r.get::<_, u64>(2)?))
        })
        .optional()?;
    let stored_digest = stored_part.as_ref().map(|(digest, ..)| digest.as_str());
    match judge_part(
        &row.batch,
        row.cancel_requested,
        stored_digest,
        part,
        &digest,
    ) {
        PartVerdict::Refuse(outcome) => return Ok(outcome),
        PartVerdict::AlreadyStored => {
            let (_, first_chunk, chunk_count) = stored_part.unwrap_or_default();
            return Ok(AppendOutcome::AlreadyStored {
                unstarted_chunks: unstarted_chunks(conn, row.seq, first_chunk, chunk_count)?,
                batch: row.batch,
            });
        }
        PartVerdict::Store => {}
    }

    let check = rules::repeat_check(&row.batch, part);
    let index = check.needs_hashes().then(|| PartIndex::new(&part.items));
    if let Some(index) = index.as_ref().filter(|_| check.against_earlier) {
        if let Some(refusal) = find_repeated_item(conn, row.seq, part, index)? {
            return Ok(refusal);
        }
    }
    let item_count = part.items.len() as u64;
    let first_chunk = row.batch.total_chunks;
    let chunk_count = part.chunk_count();
    store_part_hashes(conn, row.seq, part, index.filter(|_| check.keep_hashes))?;
    conn.prepare_cached(
        "INSERT INTO parts (batch_seq, part_number, digest, first_chunk, chunk_count, item_count) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        row.seq,
        part.part_number,
        digest,
        first_chunk,
        chunk_count,
        item_count
    ])?;
    insert_chunks(conn, row.seq, part, first_chunk)?;
    conn.prepare_cached(
        "UPDATE batches SET received_items = received_items + ?2, total_chunks = total_chunks + ?3, updated_at = ?4 WHERE seq = ?1",
    )?
    .execute(params![row.seq, item_count, chunk_count, now.0])?;
    Ok(AppendOutcome::Created {
        batch: load_batch_by_seq(conn, row.seq)?.batch,
        chunks: (first_chunk..first_chunk + chunk_count).collect(),
    })
}

/// The chunks of a part's range that no task has started.
fn unstarted_chunks(
    conn: &Connection,
    seq: i64,
    first_chunk: u64,
    chunk_count: u64,
) -> Result<Vec<u64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT chunk FROM chunks WHERE batch_seq = ?1 AND chunk >= ?2 AND chunk < ?3 AND stage = 'PENDING' ORDER BY chunk",
        )?
        .query_map(params![seq, first_chunk, first_chunk + chunk_count], |r| {
            r.get::<_, u64>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Writes a part's chunks, all pending, from `first_chunk` on.
fn insert_chunks(
    conn: &Connection,
    seq: i64,
    part: &NewPart,
    first_chunk: u64,
) -> Result<(), StoreError> {
    let mut insert_chunk = conn.prepare_cached(
        "INSERT INTO chunks (batch_seq, chunk, stage, item_count, item_ids, states) VALUES (?1, ?2, 'PENDING', ?3, ?4, ?5)",
    )?;
    for (offset, items) in part.chunks().enumerate() {
        insert_chunk.execute(params![
            seq,
            first_chunk + offset as u64,
            items.len(),
            codec::join_ids(items),
            ChunkOutcomes::new(items.len()).states_text()
        ])?;
    }
    Ok(())
}

/// An earlier part of a batch, as far as repeated IDs go.
struct EarlierPart {
    part_number: u64,
    first_chunk: u64,
    chunk_count: u64,
    /// Hashes of the new part's IDs that this part may hold.
    candidates: Vec<u64>,
}

/// The refusal of a part that repeats an ID of an earlier part of its batch, if it does.
fn find_repeated_item(
    conn: &Connection,
    seq: i64,
    part: &NewPart,
    index: &PartIndex,
) -> Result<Option<AppendOutcome>, StoreError> {
    let mut suspects = Vec::new();
    let mut statement = conn.prepare_cached(
        "SELECT p.part_number, p.first_chunk, p.chunk_count, h.hashes FROM parts p \
         LEFT JOIN part_id_hashes h ON h.batch_seq = p.batch_seq AND h.part_number = p.part_number \
         WHERE p.batch_seq = ?1 ORDER BY p.part_number",
    )?;
    let mut rows = statement.query([seq])?;
    while let Some(row) = rows.next()? {
        // Parts stored before IDs were hashed have no blob: each of their IDs is a suspect.
        let candidates = match row
            .get_ref(3)?
            .as_blob_or_null()
            .map_err(rusqlite::Error::from)?
        {
            Some(blob) => index.shared_hashes([blob])?,
            None => index.all_hashes(),
        };
        if !candidates.is_empty() {
            suspects.push(EarlierPart {
                part_number: row.get(0)?,
                first_chunk: row.get(1)?,
                chunk_count: row.get(2)?,
                candidates,
            });
        }
    }
    let mut read_ids = conn.prepare_cached(
        "SELECT item_ids FROM chunks WHERE batch_seq = ?1 AND chunk >= ?2 AND chunk < ?3",
    )?;
    for earlier in suspects {
        let chunks = read_ids
            .query_map(
                params![
                    seq,
                    earlier.first_chunk,
                    earlier.first_chunk + earlier.chunk_count
                ],
                |r| r.get::<_, String>(0),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let earlier_ids = chunks.iter().flat_map(|joined| codec::split_ids(joined));
        if let Some(position) =
            id_hashes::first_repeat(&part.items, &earlier.candidates, earlier_ids)
        {
            return Ok(Some(id_hashes::repeated_item(
                part,
                position,
                earlier.part_number,
            )));
        }
    }
    Ok(None)
}

/// Keeps a part's ID hashes for checking later parts; without them (the part completes its
/// batch, so none can follow) drops the batch's hashes.
fn store_part_hashes(
    conn: &Connection,
    seq: i64,
    part: &NewPart,
    kept: Option<PartIndex>,
) -> Result<(), StoreError> {
    match kept {
        Some(index) => conn
            .prepare_cached(
                "INSERT INTO part_id_hashes (batch_seq, part_number, hashes) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![seq, part.part_number, index.blob()])?,
        None => conn
            .prepare_cached("DELETE FROM part_id_hashes WHERE batch_seq = ?1")?
            .execute([seq])?,
    };
    Ok(())
}

fn claim_chunk(conn: &Connection, batch_id: &str, chunk: u64) -> Result<ChunkClaim, StoreError> {
    let Some(batch) = load_batch(conn, batch_id)? else {
        return Ok(ChunkClaim::NotFound);
    };
    let Some(mut row) = ChunkRow::read(conn, batch.seq, chunk)? else {
        return Ok(ChunkClaim::NotFound);
    };
    if !row.outcomes.stage.is_open() {
        return Ok(ChunkClaim::Inactive);
    }
    if row.outcomes.stage == ChunkStage::Pending {
        conn.prepare_cached(
            "UPDATE chunks SET stage = 'STARTED' WHERE batch_seq = ?1 AND chunk = ?2",
        )?
        .execute(params![batch.seq, chunk])?;
        row.outcomes.stage = ChunkStage::Started;
        if batch.batch.status == BatchStatus::Pending {
            conn.prepare_cached(
                "UPDATE batches SET status = 'RUNNING', updated_at = ?2 WHERE seq = ?1",
            )?
            .execute(params![batch.seq, Timestamp::now().0])?;
        }
    }
    Ok(ChunkClaim::Active(
        row.into_chunk(batch.batch.batch_id, chunk),
    ))
}

fn save_outcomes(
    conn: &Connection,
    batch_id: &str,
    chunk: u64,
    outcomes: &[(usize, ItemOutcome)],
    attempts: u32,
) -> Result<(), StoreError> {
    let Some(batch) = load_batch(conn, batch_id)? else {
        return Ok(());
    };
    let Some(mut row) = ChunkRow::read(conn, batch.seq, chunk)? else {
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
    write_outcomes(conn, batch.seq, chunk, stored)
}

fn record_chunk(
    conn: &Connection,
    batch_id: &str,
    chunk: u64,
    failure: Option<&str>,
) -> Result<RecordOutcome, StoreError> {
    let Some(mut batch) = load_batch(conn, batch_id)? else {
        return Ok(RecordOutcome::NotFound);
    };
    let Some(mut row) = ChunkRow::read(conn, batch.seq, chunk)? else {
        return Ok(RecordOutcome::NotFound);
    };
    let outcomes = &mut row.outcomes;
    if !outcomes.stage.is_open() {
        return Ok(RecordOutcome::AlreadyRecorded(batch.batch));
    }
    outcomes.settle(failure.unwrap_or(codec::NO_OUTCOME_MESSAGE));
    write_outcomes(conn, batch.seq, chunk, outcomes)?;

    let now = Timestamp::now();
    let counts = &mut batch.batch;
    counts.succeeded_items += outcomes.count(codec::SUCCEEDED);
    counts.failed_items += outcomes.count(codec::FAILED);
    counts.completed_chunks += 1;
    counts.updated_at = now;
    if !counts.status.is_terminal() {
        counts.status = BatchStatus::Running;
    }
    if batch.is_settled() && !batch.batch.status.is_terminal() {
        batch.batch.status = BatchStatus::settled(
            batch.cancel_requested,
            batch.batch.succeeded_items,
            batch.batch.failed_items,
        );
        batch.batch.completed_at = Some(now);
    }
    let counts = &batch.batch;
    conn.prepare_cached(
        "UPDATE batches SET status = ?2, succeeded_items = ?3, failed_items = ?4, completed_chunks = ?5, \
         updated_at = ?6, completed_at = ?7 WHERE seq = ?1",
    )?
    .execute(params![
        batch.seq,
        counts.status.as_str(),
        counts.succeeded_items,
        counts.failed_items,
        counts.completed_chunks,
        counts.updated_at.0,
        counts.completed_at.map(|t| t.0),
    ])?;
    Ok(RecordOutcome::Recorded(batch.batch))
}

fn cancel_batch(conn: &Connection, batch_id: &str) -> Result<CancelOutcome, StoreError> {
    let Some(mut batch) = load_batch(conn, batch_id)? else {
        return Ok(CancelOutcome::NotFound);
    };
    if batch.batch.status.is_terminal() {
        return Ok(CancelOutcome::AlreadyTerminal(batch.batch));
    }
    let (skipped_chunks, skipped_items): (u64, u64) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(item_count), 0) FROM chunks WHERE batch_seq = ?1 AND stage = 'PENDING'",
        )?
        .query_row([batch.seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
    conn.prepare_cached(
        "UPDATE chunks SET stage = 'CANCELLED' WHERE batch_seq = ?1 AND stage = 'PENDING'",
    )?
    .execute([batch.seq])?;
    let request = CancelRequest::given(batch.cancel_requested);
    let counts = rules::cancel_request(&batch.batch, request)
        + rules::cancelled_chunks(skipped_chunks, skipped_items);
    counts.apply_to(&mut batch.batch);
    let now = Timestamp::now();
    batch.cancel_requested = true;
    batch.batch.updated_at = now;
    if let Some(status) = rules::next_status(&batch.batch, true, Progress::CountersChanged) {
        batch.batch.status = status;
        batch.batch.completed_at = status.is_terminal().then_some(now);
    }
    let counts = &batch.batch;
    conn.prepare_cached(
        "UPDATE batches SET cancel_requested = 1, status = ?2, cancelled_items = ?3, completed_chunks = ?4, \
         updated_at = ?5, completed_at = ?6 WHERE seq = ?1",
    )?
    .execute(params![
        batch.seq,
        counts.status.as_str(),
        counts.cancelled_items,
        counts.completed_chunks,
        counts.updated_at.0,
        counts.completed_at.map(|t| t.0),
    ])?;
    Ok(CancelOutcome::Cancelled(batch.batch))
}

fn list_batches(conn: &Connection, query: &BatchQuery) -> Result<Page<Batch>, ListError> {
    let before = match &query.page_token {
        Some(token) => codec::decode_token(token, "batches:")?
            .parse::<i64>()
            .map_err(|_| BadPageToken)?,
        None => i64::MAX,
    };
    let limit = i64::from(query.page_size) + 1;
    let mut rows = match query.status {
        Some(status) => {
            let sql = format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE status = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
            );
            conn.prepare_cached(&sql)
                .map_err(StoreError::from)?
                .query_map(params![status.as_str(), before, limit], BatchRow::from_row)
                .map_err(StoreError::from)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)?
        }
        None => {
            let sql = format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"
            );
            conn.prepare_cached(&sql)
                .map_err(StoreError::from)?
                .query_map(params![before, limit], BatchRow::from_row)
                .map_err(StoreError::from)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)?
        }
    };
    let next_page_token = if rows.len() as i64 == limit {
        rows.pop();
        rows.last()
            .map(|row| codec::encode_token(&format!("batches:{}", row.seq)))
    } else {
        None
    };
    Ok(Page {
        entries: rows.into_iter().map(|row| row.batch).collect(),
        next_page_token,
    })
}

fn list_items(conn: &Connection, query: &ItemQuery) -> Result<Page<ItemRecord>, ListError> {
    let mut pager = ItemPager::new(query)?;
    let batch = load_batch(conn, query.batch_id.as_str())?.ok_or(ListError::NotFound)?;
    let total_chunks = batch.batch.total_chunks;
    let mut statement = conn
        .prepare_cached(
            "SELECT chunk, stage, item_ids, states, errors, attempts, failed_count, item_count \
             FROM chunks WHERE batch_seq = ?1 AND chunk >= ?2 ORDER BY chunk LIMIT ?3",
        )
        .map_err(StoreError::from)?;
    let mut next_chunk = pager.start_chunk;
    loop {
        let rows = statement
            .query_map(params![batch.seq, next_chunk, CHUNKS_PER_READ], |r| {
                Ok(ListedChunk {
                    index: r.get(0)?,
                    stage: r.get(1)?,
                    item_ids: r.get(2)?,
                    states: r.get(3)?,
                    errors: r.get(4)?,
                    attempts: r.get(5)?,
                    failed_count: r.get(6)?,
                    item_count: r.get(7)?,
                })
            })
            .map_err(StoreError::from)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)?;
        let exhausted = (rows.len() as i64) < CHUNKS_PER_READ;
        for chunk in rows {
            next_chunk = chunk.index + 1;
            let stage = ChunkStage::from_name(&chunk.stage).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown chunk stage {:?}", chunk.stage))
            })?;
            if !pager.may_match(stage, chunk.item_count, chunk.failed_count) {
                pager.skip(chunk.item_count);
            } else {
                let outcomes = ChunkOutcomes::decode(
                    &chunk.stage,
                    chunk.states,
                    chunk.errors.as_deref(),
                    chunk.attempts,
                )?;
                if let Some(page) = pager.push(chunk.index, &outcomes, &chunk.item_ids) {
                    return Ok(page);
                }
            }
            if pager.is_spent() {
                return Ok(pager.stop_before(next_chunk, total_chunks));
            }
        }
        if exhausted {
            return Ok(pager.finish());
        }
    }
}

/// A chunk row as `ListBatchItems` reads it.
struct ListedChunk {
    index: u64,
    stage: String,
    item_ids: String,
    states: String,
    errors: Option<String>,
    attempts: u32,
    failed_count: u64,
    item_count: u64,
}

#[async_trait]
impl BatchStore for SqliteStore {
    async fn append_part(&self, part: &NewPart) -> Result<AppendOutcome, StoreError> {
        let part = part.clone();
        self.write(move |conn| append_part(conn, &part)).await
    }

    async fn get_batch(&self, batch_id: &BatchId) -> Result<Option<Batch>, StoreError> {
        let batch_id = batch_id.clone();
        self.read(move |conn| Ok(load_batch(conn, batch_id.as_str())?.map(|row| row.batch)))
            .await
    }

    async fn list_batches(&self, query: &BatchQuery) -> Result<Page<Batch>, ListError> {
        let query = query.clone();
        let outcome = self
            .read(move |conn| Ok(list_batches(conn, &query)))
            .await?;
        outcome
    }

    async fn list_items(&self, query: &ItemQuery) -> Result<Page<ItemRecord>, ListError> {
        let query = query.clone();
        let outcome = self.read(move |conn| Ok(list_items(conn, &query))).await?;
        outcome
    }

    async fn cancel_batch(&self, batch_id: &BatchId) -> Result<CancelOutcome, StoreError> {
        let batch_id = batch_id.clone();
        self.write(move |conn| cancel_batch(conn, batch_id.as_str()))
            .await
    }

    async fn claim_chunk(&self, batch_id: &BatchId, chunk: u64) -> Result<ChunkClaim, StoreError> {
        let batch_id = batch_id.clone();
        self.write(move |conn| claim_chunk(conn, batch_id.as_str(), chunk))
            .await
    }

    async fn load_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        let batch_id = batch_id.clone();
        self.read(move |conn| {
            let Some(batch) = load_batch(conn, batch_id.as_str())? else {
                return Ok(None);
            };
            Ok(ChunkRow::read(conn, batch.seq, chunk)?.map(|row| row.into_chunk(batch_id, chunk)))
        })
        .await
    }

    async fn save_outcomes(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        outcomes: &[(usize, ItemOutcome)],
        attempts: u32,
    ) -> Result<(), StoreError> {
        let batch_id = batch_id.clone();
        let outcomes = outcomes.to_vec();
        self.write(move |conn| save_outcomes(conn, batch_id.as_str(), chunk, &outcomes, attempts))
            .await
    }

    async fn record_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        failure: Option<&str>,
    ) -> Result<RecordOutcome, StoreError> {
        let batch_id = batch_id.clone();
        let failure = failure.map(str::to_owned);
        self.write(move |conn| record_chunk(conn, batch_id.as_str(), chunk, failure.as_deref()))
            .await
    }

    async fn wait_for_change(&self, since: u64, poll: Duration) -> u64 {
        let mut changes = self.inner.changes.clone();
        let _ =
            tokio::time::timeout(poll, changes.wait_for(|generation| *generation != since)).await;
        let generation = *changes.borrow();
        generation
    }
}

#[async_trait]
impl ExecutionJournal for SqliteStore {
    async fn create_executions(
        &self,
        executions: Vec<(ExecutionKey, String)>,
    ) -> Result<Vec<ExecutionKey>, StoreError> {
        self.write(move |conn| {
            let now = Timestamp::now().0;
            let mut created = Vec::with_capacity(executions.len());
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO executions (batch_seq, chunk, status, cursor, started_at, updated_at) \
                 SELECT seq, ?2, 'RUNNING', ?3, ?4, ?4 FROM batches WHERE batch_id = ?1",
            )?;
            for (key, cursor) in executions {
                if insert.execute(params![key.batch_id.as_str(), key.chunk, cursor, now])? > 0 {
                    created.push(key);
                }
            }
            Ok(created)
        })
        .await
    }

    async fn save_cursor(
        &self,
        key: &ExecutionKey,
        cursor: String,
        wake_at: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE executions SET cursor = ?3, wake_at = ?4, updated_at = ?5 \
                 WHERE batch_seq = (SELECT seq FROM batches WHERE batch_id = ?1) AND chunk = ?2",
            )?
            .execute(params![
                key.batch_id.as_str(),
                key.chunk,
                cursor,
                wake_at.map(|t| t.0),
                Timestamp::now().0
            ])?;
            Ok(())
        })
        .await
    }

    async fn finish_execution(
        &self,
        key: &ExecutionKey,
        end: &ExecutionEnd,
    ) -> Result<(), StoreError> {
        let key = key.clone();
        let (status, error, cause) = match end {
            ExecutionEnd::Succeeded => ("SUCCEEDED", None, None),
            ExecutionEnd::Failed { error, cause } => {
                ("FAILED", Some(error.clone()), Some(cause.clone()))
            }
        };
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE executions SET status = ?3, cursor = '', wake_at = NULL, error = ?4, cause = ?5, updated_at = ?6 \
                 WHERE batch_seq = (SELECT seq FROM batches WHERE batch_id = ?1) AND chunk = ?2",
            )?
            .execute(params![
                key.batch_id.as_str(),
                key.chunk,
                status,
                error,
                cause,
                Timestamp::now().0
            ])?;
            Ok(())
        })
        .await
    }

    async fn running_executions(&self) -> Result<Vec<ExecutionRecord>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT b.batch_id, e.chunk, e.cursor, e.wake_at, e.started_at FROM executions e \
                 JOIN batches b ON b.seq = e.batch_seq WHERE e.status = 'RUNNING' ORDER BY e.started_at, e.batch_seq, e.chunk",
            )?;
            let records = statement
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?
                .map(|row| {
                    let (batch_id, chunk, cursor, wake_at, started_at) = row?;
                    Ok(ExecutionRecord {
                        key: ExecutionKey {
                            batch_id: BatchId::parse(batch_id)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            chunk,
                        },
                        cursor,
                        wake_at: wake_at.map(Timestamp),
                        started_at: Timestamp(started_at),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(records)
        })
        .await
    }

    async fn unstarted_chunks(&self) -> Result<Vec<ExecutionKey>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT b.batch_id, c.chunk FROM chunks c JOIN batches b ON b.seq = c.batch_seq \
                 WHERE c.stage IN ('PENDING', 'STARTED') AND NOT EXISTS \
                 (SELECT 1 FROM executions e WHERE e.batch_seq = c.batch_seq AND e.chunk = c.chunk) \
                 ORDER BY c.batch_seq, c.chunk",
            )?;
            let keys = statement
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
                .map(|row| {
                    let (batch_id, chunk) = row?;
                    Ok(ExecutionKey {
                        batch_id: BatchId::parse(batch_id)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        chunk,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(keys)
        })
        .await
    }
}
