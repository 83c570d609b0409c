//! The embedded SQLite store: one database file (WAL) holding batches, parts, chunks and the
//! local engine's executions.
//!
//! Writes go through one writer thread that groups concurrent requests into one transaction
//! (each request in its own savepoint, answered only after the commit), so many chunks
//! finishing at once cost one commit. Reads use a small pool of read-only connections.
//! A chunk is one row holding its item IDs and outcomes together, encoded by [`codec`].

mod chunks;
mod error_counts;
#[cfg(feature = "bench")]
pub(crate) mod floor;
mod jobs;
mod journal;
mod outbox;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, watch};

use self::writer::{Job, Message, Staged};

use super::codec::{self, ChunkOutcomes, ItemPager};
use super::id_hashes::{self, PartIndex};
use super::progress::{self, RateWindow};
use super::rules::{self, judge_part, CancelRequest, PartVerdict, Progress, Stop};
use super::{
    AppendOutcome, BadPageToken, BatchQuery, BatchStore, CancelOutcome, Chunk, ChunkClaim,
    ChunkStage, ControlOutcome, ItemQuery, ListError, Page, RecordOutcome, RedriveOutcome,
    StoreError, Unfinished,
};
use crate::domain::{
    Batch, BatchId, BatchStatus, Callback, CallbackStatus, CallbackUrl, FailureBudget, ItemOutcome,
    ItemRecord, NewPart, Timestamp,
};

/// [`Unfinished`] that can move to the writer thread.
enum OwnedUnfinished {
    Failed(Option<String>),
    Cancelled,
}

impl From<Unfinished<'_>> for OwnedUnfinished {
    fn from(unfinished: Unfinished<'_>) -> Self {
        match unfinished {
            Unfinished::Failed(message) => Self::Failed(message.map(str::to_owned)),
            Unfinished::Cancelled => Self::Cancelled,
        }
    }
}

impl OwnedUnfinished {
    fn as_ref(&self) -> Unfinished<'_> {
        match self {
            Self::Failed(message) => Unfinished::Failed(message.as_deref()),
            Self::Cancelled => Unfinished::Cancelled,
        }
    }
}

/// Prepared statements each connection keeps.
const STATEMENTS_KEPT: usize = 64;
/// The writer's page cache, in KiB (negative, as SQLite takes it): the pages of the chunks,
/// executions and batches under way stay in memory between commits.
const WRITER_CACHE_KIB: i64 = -16_384;
/// WAL pages between automatic checkpoints (128 MiB of 4 KiB pages).
const WAL_CHECKPOINT_PAGES: i64 = 32_768;
/// What the WAL file is cut back to once a checkpoint has emptied it, in bytes.
const WAL_SIZE_LIMIT_BYTES: i64 = 32 * 1024 * 1024;
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
    completed_at INTEGER,
    max_concurrency INTEGER,
    tolerated_failure_percentage INTEGER,
    tolerated_failure_count INTEGER,
    failure_reason TEXT,
    redrive_count INTEGER NOT NULL DEFAULT 0,
    stopped_by TEXT,
    callback_url TEXT,
    callback_status TEXT NOT NULL DEFAULT 'NONE',
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_last_error TEXT,
    window_started_at INTEGER,
    window_terminal INTEGER NOT NULL DEFAULT 0,
    previous_rate REAL NOT NULL DEFAULT 0,
    last_recorded_at INTEGER,
    other_errors INTEGER NOT NULL DEFAULT 0
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
    attempt_base INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_seq, chunk)
);
CREATE TABLE IF NOT EXISTS batch_errors (
    batch_seq INTEGER NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (batch_seq, message)
) WITHOUT ROWID;
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
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_jobs (
    batch_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (batch_seq, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_job_settings (
    batch_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL
) WITHOUT ROWID;
DROP INDEX IF EXISTS executions_running;
CREATE INDEX IF NOT EXISTS executions_sleeping ON executions (wake_at, batch_seq, chunk) WHERE wake_at IS NOT NULL;
";

/// Columns added to a table after databases were first written with it: `(table, column,
/// declaration, backfill)`. `CREATE TABLE IF NOT EXISTS` leaves an older table as it was, so
/// each is added when missing, then the backfill (if any) brings older rows in line.
const ADDED_COLUMNS: [(&str, &str, &str, Option<&str>); 16] = [
    (
        "batches",
        "max_concurrency",
        "max_concurrency INTEGER",
        None,
    ),
    (
        "batches",
        "tolerated_failure_percentage",
        "tolerated_failure_percentage INTEGER",
        None,
    ),
    (
        "batches",
        "tolerated_failure_count",
        "tolerated_failure_count INTEGER",
        None,
    ),
    ("batches", "failure_reason", "failure_reason TEXT", None),
    (
        "batches",
        "redrive_count",
        "redrive_count INTEGER NOT NULL DEFAULT 0",
        None,
    ),
    // Before batches could stop for other reasons, a cancel request was the only stop.
    (
        "batches",
        "stopped_by",
        "stopped_by TEXT",
        Some("UPDATE batches SET stopped_by = 'CANCEL' WHERE cancel_requested = 1"),
    ),
    (
        "chunks",
        "attempt_base",
        "attempt_base INTEGER NOT NULL DEFAULT 0",
        None,
    ),
    ("batches", "callback_url", "callback_url TEXT", None),
    (
        "batches",
        "callback_status",
        "callback_status TEXT NOT NULL DEFAULT 'NONE'",
        None,
    ),
    (
        "batches",
        "callback_attempts",
        "callback_attempts INTEGER NOT NULL DEFAULT 0",
        None,
    ),
    (
        "batches",
        "callback_last_error",
        "callback_last_error TEXT",
        None,
    ),
    (
        "batches",
        "window_started_at",
        "window_started_at INTEGER",
        None,
    ),
    (
        "batches",
        "window_terminal",
        "window_terminal INTEGER NOT NULL DEFAULT 0",
        None,
    ),
    (
        "batches",
        "previous_rate",
        "previous_rate REAL NOT NULL DEFAULT 0",
        None,
    ),
    (
        "batches",
        "last_recorded_at",
        "last_recorded_at INTEGER",
        None,
    ),
    (
        "batches",
        "other_errors",
        "other_errors INTEGER NOT NULL DEFAULT 0",
        None,
    ),
];

/// Brings a database written by an earlier version up to [`SCHEMA`].
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, declaration, backfill) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            params![table, column],
            |row| row.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {declaration}"))?;
            if let Some(backfill) = backfill {
                conn.execute_batch(backfill)?;
            }
        }
    }
    Ok(())
}

/// The columns [`BatchRow::from_row`] reads, in order.
macro_rules! batch_columns {
    () => {
        "seq, batch_id, status, total_items, received_items, succeeded_items, failed_items, \
         cancelled_items, total_chunks, completed_chunks, batch_size, cancel_requested, \
         created_at, updated_at, completed_at, max_concurrency, tolerated_failure_percentage, \
         tolerated_failure_count, failure_reason, redrive_count, stopped_by, callback_url, \
         callback_status, callback_attempts, callback_last_error, window_started_at, \
         window_terminal, previous_rate, last_recorded_at, other_errors"
    };
}
const BATCH_COLUMNS: &str = batch_columns!();

/// A batch row: the public snapshot plus what only the store needs.
struct BatchRow {
    seq: i64,
    /// No part may follow (the batch was cancelled or stopped; the missing ones are counted).
    cancel_requested: bool,
    /// Why the batch stopped starting chunks, in its current run.
    stop: Option<Stop>,
    batch: Batch,
    window: RateWindow,
    /// Failures counted under the other-errors bucket.
    other_errors: u64,
}

/// A text column of a batch row that holds no value this version knows.
fn unreadable(column: usize, why: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, why.into())
}

impl BatchRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let status: String = row.get(2)?;
        let status = BatchStatus::from_name(&status)
            .ok_or_else(|| unreadable(2, format!("unknown batch status {status:?}")))?;
        let stop = row
            .get::<_, Option<String>>(20)?
            .map(|name| {
                Stop::from_name(&name)
                    .ok_or_else(|| unreadable(20, format!("unknown stop {name:?}")))
            })
            .transpose()?;
        let created_at = Timestamp(row.get(12)?);
        let window = RateWindow {
            started_at: Timestamp(row.get::<_, Option<i64>>(25)?.unwrap_or(created_at.0)),
            terminal_at_start: row.get(26)?,
            previous_rate: row.get(27)?,
            last_recorded_at: row.get::<_, Option<i64>>(28)?.map(Timestamp),
        };
        let mut batch = Batch {
            batch_id: BatchId::parse(row.get::<_, String>(1)?)
                .map_err(|err| unreadable(1, err.to_string()))?,
            status,
            total_items: row.get(3)?,
            received_items: row.get(4)?,
            succeeded_items: row.get(5)?,
            failed_items: row.get(6)?,
            cancelled_items: row.get(7)?,
            total_chunks: row.get(8)?,
            completed_chunks: row.get(9)?,
            batch_size: row.get(10)?,
            created_at,
            updated_at: Timestamp(row.get(13)?),
            completed_at: row.get::<_, Option<i64>>(14)?.map(Timestamp),
            max_concurrency: row.get(15)?,
            failure_budget: FailureBudget {
                percentage: row.get(16)?,
                count: row.get(17)?,
            },
            failure_reason: row.get(18)?,
            redrive_count: row.get(19)?,
            callback: Callback {
                url: row
                    .get::<_, Option<String>>(21)?
                    .map(CallbackUrl::from_trusted),
                status: {
                    let name: String = row.get(22)?;
                    CallbackStatus::from_name(&name).ok_or_else(|| {
                        unreadable(22, format!("unknown callback status {name:?}"))
                    })?
                },
                attempts: row.get(23)?,
                last_error: row.get(24)?,
            },
            progress: Default::default(),
        };
        batch.progress = progress::progress_of(&batch, &window, Timestamp::now());
        Ok(Self {
            seq: row.get(0)?,
            cancel_requested: row.get(11)?,
            stop,
            batch,
            window,
            other_errors: row.get(29)?,
        })
    }

    /// Turns the batch terminal once every item is (or PENDING to RUNNING on `progress`);
    /// whether it turned terminal now.
    fn settle(&mut self, progress: Progress, now: Timestamp) -> bool {
        match rules::next_status(&self.batch, self.cancel_requested, self.stop, progress) {
            Some(status) => {
                self.batch.status = status;
                self.batch.completed_at = status.is_terminal().then_some(now);
                status.is_terminal()
            }
            None => false,
        }
    }

    /// Writes back everything a transition may change.
    fn save(&self, conn: &Connection) -> Result<(), StoreError> {
        let batch = &self.batch;
        conn.prepare_cached(
            "UPDATE batches SET status = ?2, succeeded_items = ?3, failed_items = ?4, cancelled_items = ?5, \
             completed_chunks = ?6, updated_at = ?7, completed_at = ?8, cancel_requested = ?9, \
             stopped_by = ?10, failure_reason = ?11, redrive_count = ?12, window_started_at = ?13, \
             window_terminal = ?14, previous_rate = ?15, last_recorded_at = ?16 WHERE seq = ?1",
        )?
        .execute(params![
            self.seq,
            batch.status.as_str(),
            batch.succeeded_items,
            batch.failed_items,
            batch.cancelled_items,
            batch.completed_chunks,
            batch.updated_at.0,
            batch.completed_at.map(|t| t.0),
            self.cancel_requested,
            self.stop.map(Stop::as_str),
            batch.failure_reason,
            batch.redrive_count,
            self.window.started_at.0,
            self.window.terminal_at_start,
            self.window.previous_rate,
            self.window.last_recorded_at.map(|t| t.0),
        ])?;
        Ok(())
    }

    /// Stops the batch starting chunks: every chunk no task started is cancelled, and (the
    /// first time) the items of parts never received are counted cancelled. The first stop
    /// of a run says how it ends; a later one changes nothing but the chunks.
    fn stop(&mut self, conn: &Connection, stop: Stop) -> Result<(), StoreError> {
        let (skipped_chunks, skipped_items): (u64, u64) = conn
            .prepare_cached(
                // A redriven chunk's items counted by an earlier run are not P.
                "SELECT COUNT(*), COALESCE(SUM(length(states) - length(replace(states, 'P', ''))), 0) \
                 FROM chunks WHERE batch_seq = ?1 AND stage = 'PENDING'",
            )?
            .query_row([self.seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
        conn.prepare_cached(
            "UPDATE chunks SET stage = 'CANCELLED' WHERE batch_seq = ?1 AND stage = 'PENDING'",
        )?
        .execute([self.seq])?;
        let request = CancelRequest::given(self.cancel_requested);
        let counts = rules::cancel_request(&self.batch, request)
            + rules::cancelled_chunks(skipped_chunks, skipped_items);
        counts.apply_to(&mut self.batch);
        self.cancel_requested = true;
        self.stop.get_or_insert(stop);
        Ok(())
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

/// The embedded store. Cheap to clone; clones share the writer and the readers.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: std::sync::mpsc::Sender<Message>,
    staged: Arc<Staged>,
    readers: Mutex<Vec<Connection>>,
    changes: watch::Receiver<u64>,
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(unavailable)?;
    // Every statement the store runs stays prepared (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
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
        // Hot pages (a batch's counters, the journal's newest rows) are rewritten by every
        // commit: checkpointing less often copies each of them once rather than many times.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
            .map_err(unavailable)?;
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        add_missing_columns(&conn).map_err(unavailable)?;
        conn.execute_batch(outbox::SCHEMA).map_err(unavailable)?;

        let (changed, changes) = watch::channel(0u64);
        let staged = Arc::new(Staged::default());
        let writer = writer::spawn(conn, Arc::clone(&staged), changed)?;

        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer,
                staged,
                readers: Mutex::new(Vec::new()),
                changes,
            }),
        })
    }

    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job::new(work, reply));
        self.inner
            .writer
            .send(Message::Job(job))
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
        tokio::task::spawn_blocking(move || inner.with_reader(work))
            .await
            .map_err(|err| StoreError::Unavailable(format!("read task failed: {err}")))?
    }

    /// A read of one or two rows, run on the calling thread: it takes microseconds, less than
    /// handing it to a blocking thread and back would.
    fn read_row<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.inner.with_reader(work)
    }
}

impl Inner {
    fn with_reader<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?,
        };
        let outcome = work(&conn);
        if let Ok(mut pool) = self.readers.lock() {
            pool.push(conn);
        }
        outcome
    }
}

fn load_batch(conn: &Connection, batch_id: &str) -> Result<Option<BatchRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches WHERE batch_id = ?1"
    );
    Ok(conn
        .prepare_cached(SQL)?
        .query_row([batch_id], BatchRow::from_row)
        .optional()?)
}

fn load_batch_by_seq(conn: &Connection, seq: i64) -> Result<BatchRow, StoreError> {
    const SQL: &str = concat!("SELECT ", batch_columns!(), " FROM batches WHERE seq = ?1");
    Ok(conn
        .prepare_cached(SQL)?
        .query_row([seq], BatchRow::from_row)?)
}

fn append_part(conn: &Connection, part: &NewPart) -> Result<AppendOutcome, StoreError> {
    let now = Timestamp::now();
    let existing = load_batch(conn, part.batch_id.as_str())?;
    let row = match existing {
        Some(row) => row,
        None => {
            conn.prepare_cached(
                "INSERT INTO batches (batch_id, status, total_items, received_items, batch_size, created_at, updated_at, \
                 max_concurrency, tolerated_failure_percentage, tolerated_failure_count, callback_url) \
                 VALUES (?1, 'PENDING', ?2, 0, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                part.batch_id.as_str(),
                part.total_items,
                part.batch_size.get(),
                now.0,
                part.max_concurrency,
                part.failure_budget.and_then(|budget| budget.percentage),
                part.failure_budget.and_then(|budget| budget.count),
                part.callback_url.as_ref().map(CallbackUrl::as_str),
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
        PartVerdict::Refuse(outcome) => return Ok(*outcome),
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

fn cancel_batch(conn: &Connection, batch_id: &str) -> Result<CancelOutcome, StoreError> {
    let Some(mut batch) = load_batch(conn, batch_id)? else {
        return Ok(CancelOutcome::NotFound);
    };
    if batch.batch.status.is_terminal() {
        return Ok(CancelOutcome::AlreadyTerminal(batch.batch));
    }
    batch.stop(conn, Stop::Cancelled)?;
    let now = Timestamp::now();
    batch.batch.updated_at = now;
    if batch.settle(Progress::CountersChanged, now) {
        // The outbox trigger set the callback's state.
        batch.save(conn)?;
        return Ok(CancelOutcome::Cancelled(
            load_batch_by_seq(conn, batch.seq)?.batch,
        ));
    }
    batch.save(conn)?;
    Ok(CancelOutcome::Cancelled(batch.batch))
}

/// Pauses or resumes a batch, as `next` (the rules' pause or resume) says.
fn control_batch(
    conn: &Connection,
    batch_id: &str,
    next: fn(&Batch) -> Result<Option<BatchStatus>, rules::Refusal>,
) -> Result<ControlOutcome, StoreError> {
    let Some(mut batch) = load_batch(conn, batch_id)? else {
        return Ok(ControlOutcome::NotFound);
    };
    match next(&batch.batch) {
        Err(rules::Refusal(reason)) => Ok(ControlOutcome::Refused(reason)),
        Ok(None) => Ok(ControlOutcome::Applied(batch.batch)),
        Ok(Some(status)) => {
            batch.batch.status = status;
            batch.batch.updated_at = Timestamp::now();
            batch.save(conn)?;
            Ok(ControlOutcome::Applied(batch.batch))
        }
    }
}

/// Readies the failed (and, with `include_cancelled`, cancelled) items of an ended batch to
/// run again, in one transaction: their chunks turn PENDING with those items pending, lose
/// their executions and job records (each run is a new attempt), and the batch counters
/// take them back.
fn redrive_batch(
    conn: &Connection,
    batch_id: &str,
    include_cancelled: bool,
) -> Result<RedriveOutcome, StoreError> {
    let Some(mut batch) = load_batch(conn, batch_id)? else {
        return Ok(RedriveOutcome::NotFound);
    };
    if let Err(rules::Refusal(reason)) = rules::may_redrive(&batch.batch) {
        return Ok(RedriveOutcome::Refused(reason));
    }
    let candidates = conn
        .prepare_cached(
            "SELECT chunk, stage, states, errors, attempts, attempt_base FROM chunks \
             WHERE batch_seq = ?1 AND ((stage = 'RECORDED' AND failed_count > 0) OR (stage = 'CANCELLED' AND ?2)) \
             ORDER BY chunk",
        )?
        .query_map(params![batch.seq, include_cancelled], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, u32>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut counts = rules::RedriveCounts::default();
    let mut chunks = Vec::new();
    for (chunk, stage, states, errors, attempts, attempt_base) in candidates {
        let mut outcomes = ChunkOutcomes::decode(&stage, states, errors.as_deref(), attempts)?
            .with_attempt_base(attempt_base);
        let Some(taken) = outcomes.redrive(include_cancelled) else {
            continue;
        };
        counts.failed_items += taken.failed;
        counts.cancelled_items += taken.cancelled;
        counts.chunks += 1;
        conn.prepare_cached(
            "UPDATE chunks SET stage = ?3, states = ?4, errors = ?5, failed_count = ?6, attempts = ?7, \
             attempt_base = ?8 WHERE batch_seq = ?1 AND chunk = ?2",
        )?
        .execute(params![
            batch.seq,
            chunk,
            outcomes.stage.as_str(),
            outcomes.states_text(),
            outcomes.errors_json(),
            outcomes.count_not_succeeded(),
            outcomes.attempts,
            outcomes.attempt_base,
        ])?;
        for table in ["executions", "chunk_jobs"] {
            conn.prepare_cached(&format!(
                "DELETE FROM {table} WHERE batch_seq = ?1 AND chunk = ?2"
            ))?
            .execute(params![batch.seq, chunk])?;
        }
        chunks.push(chunk);
    }
    if counts.is_empty() {
        let rules::Refusal(reason) =
            rules::nothing_to_redrive(&batch.batch.batch_id, include_cancelled);
        return Ok(RedriveOutcome::Refused(reason));
    }
    counts.apply_to(&mut batch.batch, Timestamp::now());
    batch.stop = None;
    batch.save(conn)?;
    // Every failed item runs again: the failure counts start over with the new run.
    error_counts::forget_errors(conn, batch.seq)?;
    Ok(RedriveOutcome::Redriven {
        batch: batch.batch,
        chunks,
        items: counts.failed_items + counts.cancelled_items,
    })
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
            "SELECT chunk, stage, item_ids, states, errors, attempts, failed_count, item_count, attempt_base \
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
                    attempt_base: r.get(8)?,
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
                )?
                .with_attempt_base(chunk.attempt_base);
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
    attempt_base: u32,
}

#[async_trait]
impl BatchStore for SqliteStore {
    async fn append_part(&self, part: &NewPart) -> Result<AppendOutcome, StoreError> {
        let part = part.clone();
        self.write(move |conn| append_part(conn, &part)).await
    }

    async fn get_batch(&self, batch_id: &BatchId) -> Result<Option<Batch>, StoreError> {
        self.read_row(|conn| {
            load_batch(conn, batch_id.as_str())?
                .map(|row| error_counts::with_top_errors(conn, row))
                .transpose()
        })
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

    async fn pause_batch(&self, batch_id: &BatchId) -> Result<ControlOutcome, StoreError> {
        let batch_id = batch_id.clone();
        self.write(move |conn| control_batch(conn, batch_id.as_str(), rules::pause))
            .await
    }

    async fn resume_batch(&self, batch_id: &BatchId) -> Result<ControlOutcome, StoreError> {
        let batch_id = batch_id.clone();
        self.write(move |conn| control_batch(conn, batch_id.as_str(), rules::resume))
            .await
    }

    async fn redrive_batch(
        &self,
        batch_id: &BatchId,
        include_cancelled: bool,
    ) -> Result<RedriveOutcome, StoreError> {
        let batch_id = batch_id.clone();
        self.write(move |conn| redrive_batch(conn, batch_id.as_str(), include_cancelled))
            .await
    }

    async fn set_max_concurrency(
        &self,
        batch_id: &BatchId,
        max_concurrency: Option<u32>,
    ) -> Result<Option<Batch>, StoreError> {
        let batch_id = batch_id.clone();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE batches SET max_concurrency = ?2 WHERE batch_id = ?1")?
                .execute(params![batch_id.as_str(), max_concurrency])?;
            Ok(load_batch(conn, batch_id.as_str())?.map(|row| row.batch))
        })
        .await
    }

    async fn set_callback_url(
        &self,
        batch_id: &BatchId,
        url: &CallbackUrl,
    ) -> Result<Option<Batch>, StoreError> {
        let (batch_id, url) = (batch_id.clone(), url.clone());
        self.write(move |conn| {
            conn.prepare_cached("UPDATE batches SET callback_url = ?2 WHERE batch_id = ?1")?
                .execute(params![batch_id.as_str(), url.as_str()])?;
            Ok(load_batch(conn, batch_id.as_str())?.map(|row| row.batch))
        })
        .await
    }

    async fn claim_chunk(&self, batch_id: &BatchId, chunk: u64) -> Result<ChunkClaim, StoreError> {
        let batch_id = batch_id.clone();
        self.write(move |conn| chunks::claim_chunk(conn, &batch_id, chunk))
            .await
    }

    async fn load_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        self.read_row(|conn| chunks::load_chunk(conn, batch_id, chunk))
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
        self.write(move |conn| {
            chunks::save_outcomes(conn, batch_id.as_str(), chunk, &outcomes, attempts)
        })
        .await
    }

    async fn record_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        unfinished: Unfinished<'_>,
    ) -> Result<RecordOutcome, StoreError> {
        self.save_outcomes_and_record(batch_id, chunk, &[], 0, unfinished)
            .await
    }

    async fn save_outcomes_and_record(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        outcomes: &[(usize, ItemOutcome)],
        attempts: u32,
        unfinished: Unfinished<'_>,
    ) -> Result<RecordOutcome, StoreError> {
        let batch_id = batch_id.clone();
        let outcomes = outcomes.to_vec();
        let unfinished = OwnedUnfinished::from(unfinished);
        self.write(move |conn| {
            chunks::save_outcomes_and_record(
                conn,
                batch_id.as_str(),
                chunk,
                &outcomes,
                attempts,
                unfinished.as_ref(),
            )
        })
        .await
    }

    async fn count_batches_by_status(&self) -> Result<Option<Vec<(BatchStatus, u64)>>, StoreError> {
        self.read(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT status, COUNT(*) FROM batches GROUP BY status")?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
            })?;
            let mut counts = Vec::new();
            for row in rows {
                let (status, count) = row?;
                if let Some(status) = BatchStatus::from_name(&status) {
                    counts.push((status, count));
                }
            }
            Ok(Some(counts))
        })
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
