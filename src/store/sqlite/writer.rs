//! The writer thread: the only connection that writes. It groups concurrent requests into one
//! transaction (each request in its own savepoint, answered only after the commit), and
//! commits the journal entries staged since the last group with it.
//!
//! A staged entry that fails to commit (a full disk) is kept and tried again with every group,
//! and on its own after a back-off that doubles from one second to half a minute; the
//! failures are logged as one summary line every few seconds, not a line per execution.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use tokio::sync::{oneshot, watch};

use crate::domain::Timestamp;
use crate::metrics::StoreKind;
use crate::store::journal::{ExecutionEnd, ExecutionKey, JournalEntry};
use crate::store::StoreError;

/// Most write requests folded into one transaction.
const MAX_WRITES_PER_COMMIT: usize = 512;
/// How long staged entries wait for a request to ride on before they are committed alone.
const FLUSH_DELAY: Duration = Duration::from_millis(2);
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Failing journal writes are logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A write request run by the writer thread inside the group's transaction.
pub(super) trait WriteJob: Send {
    /// Runs the work; false means it failed and its savepoint is rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn deliver(self: Box<Self>, committed: Result<(), String>);
}

pub(super) struct Job<T, F> {
    work: Option<F>,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job<T, F> {
    pub(super) fn new(work: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            work: Some(work),
            outcome: None,
            reply,
        }
    }
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

/// What the writer thread is sent.
pub(super) enum Message {
    Job(Box<dyn WriteJob>),
    /// Entries were staged while nothing else was pending: commit them soon.
    Flush,
}

/// A journal entry waiting for the next commit.
pub(super) struct StagedEntry {
    pub key: ExecutionKey,
    /// The seq of the key's batch.
    pub batch_seq: i64,
    pub entry: JournalEntry,
    pub committed: oneshot::Sender<()>,
}

/// Journal entries staged since the writer last looked.
#[derive(Default)]
pub(super) struct Staged {
    entries: Mutex<Vec<StagedEntry>>,
    /// Set while commits of journal entries fail.
    failing: Arc<AtomicBool>,
}

impl Staged {
    /// Whether the last commit of journal entries failed.
    pub(super) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Adds an entry; true when it is the only one, so the writer must be woken for it.
    pub(super) fn push(&self, entry: StagedEntry) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.push(entry);
        entries.len() == 1
    }

    fn take(&self) -> Vec<StagedEntry> {
        std::mem::take(&mut *self.entries.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Starts the writer thread on `conn`.
pub(super) fn spawn(
    conn: Connection,
    staged: Arc<Staged>,
    changed: watch::Sender<u64>,
) -> Result<Sender<Message>, StoreError> {
    let (sender, messages) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            let backoff = Backoff::new(Arc::clone(&staged.failing));
            Writer {
                conn,
                staged,
                changed,
                retained: Vec::new(),
                backoff,
            }
            .run(messages)
        })
        .map_err(|err| StoreError::Unavailable(err.to_string()))?;
    Ok(sender)
}

struct Writer {
    conn: Connection,
    staged: Arc<Staged>,
    changed: watch::Sender<u64>,
    /// Entries whose commit failed, oldest first.
    retained: Vec<StagedEntry>,
    backoff: Backoff,
}

impl Writer {
    fn run(mut self, messages: Receiver<Message>) {
        loop {
            let mut group = Vec::new();
            let first = match self.backoff.retry_at {
                Some(at) if !self.retained.is_empty() => {
                    messages.recv_timeout(at.saturating_duration_since(Instant::now()))
                }
                _ => messages.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let disconnected = match first {
                Ok(Message::Job(job)) => {
                    group.push(job);
                    false
                }
                Ok(Message::Flush) => match messages.recv_timeout(FLUSH_DELAY) {
                    Ok(Message::Job(job)) => {
                        group.push(job);
                        false
                    }
                    Ok(Message::Flush) | Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                },
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            while group.len() < MAX_WRITES_PER_COMMIT {
                match messages.try_recv() {
                    Ok(Message::Job(job)) => group.push(job),
                    Ok(Message::Flush) => {}
                    Err(_) => break,
                }
            }
            self.commit(group);
            if disconnected {
                return;
            }
        }
    }

    fn commit(&mut self, mut group: Vec<Box<dyn WriteJob>>) {
        let mut entries = std::mem::take(&mut self.retained);
        entries.extend(self.staged.take());
        if group.is_empty() && entries.is_empty() {
            return;
        }
        let started = Instant::now();
        let committed = commit_group(&self.conn, &mut group, &entries);
        crate::metrics::global().store_committed(StoreKind::Sqlite, started.elapsed());
        match &committed {
            Ok(()) => {
                self.backoff.succeeded();
                for entry in entries {
                    let _ = entry.committed.send(());
                }
            }
            Err(reason) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                if !entries.is_empty() {
                    let attempt = if group.is_empty() {
                        Attempt::Retry
                    } else {
                        Attempt::WithRequests
                    };
                    self.backoff.failed(&entries, reason, attempt);
                }
                self.retained = entries;
            }
        }
        let wrote = !group.is_empty();
        for job in group {
            job.deliver(committed.clone());
        }
        if wrote {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }
}

fn commit_group(
    conn: &Connection,
    group: &mut [Box<dyn WriteJob>],
    entries: &[StagedEntry],
) -> Result<(), String> {
    conn.prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut begin| begin.execute([]))
        .map_err(|e| e.to_string())?;
    for entry in entries {
        write_entry(conn, entry).map_err(|e| e.to_string())?;
    }
    for job in group.iter_mut() {
        run_in_savepoint(conn, job.as_mut())?;
    }
    conn.prepare_cached("COMMIT")
        .and_then(|mut commit| commit.execute([]))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn run_in_savepoint(conn: &Connection, job: &mut dyn WriteJob) -> Result<(), String> {
    let statement = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map_err(|e| e.to_string())
    };
    statement("SAVEPOINT job")?;
    if !job.run(conn) {
        statement("ROLLBACK TO job")?;
    }
    statement("RELEASE job")?;
    Ok(())
}

fn write_entry(conn: &Connection, staged: &StagedEntry) -> rusqlite::Result<()> {
    let now = Timestamp::now().0;
    let (status, cursor, wake_at, error, cause, started_at) = match &staged.entry {
        JournalEntry::Running {
            cursor,
            wake_at,
            started_at,
        } => (
            "RUNNING",
            cursor.as_str(),
            wake_at.map(|t| t.0),
            None,
            None,
            started_at.0,
        ),
        JournalEntry::Ended(ExecutionEnd::Succeeded) => ("SUCCEEDED", "", None, None, None, now),
        JournalEntry::Ended(ExecutionEnd::Failed { error, cause }) => (
            "FAILED",
            "",
            None,
            Some(error.as_str()),
            Some(cause.as_str()),
            now,
        ),
    };
    conn.prepare_cached(
        "INSERT INTO executions (batch_seq, chunk, status, cursor, wake_at, error, cause, started_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (batch_seq, chunk) DO UPDATE SET status = excluded.status, cursor = excluded.cursor, \
         wake_at = excluded.wake_at, error = excluded.error, cause = excluded.cause, updated_at = excluded.updated_at",
    )?
    .execute(params![
        staged.batch_seq,
        staged.key.chunk,
        status,
        cursor,
        wake_at,
        error,
        cause,
        started_at,
        now
    ])?;
    Ok(())
}

/// What a failed commit of retained entries was.
enum Attempt {
    /// The timed retry of entries alone: the next waits twice as long.
    Retry,
    /// Entries riding on requests, which fail with them: the timing stays.
    WithRequests,
}

/// When to try failed journal entries again, and when to say so.
struct Backoff {
    delay: Duration,
    retry_at: Option<Instant>,
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    failing: Arc<AtomicBool>,
}

impl Backoff {
    fn new(failing: Arc<AtomicBool>) -> Self {
        Self {
            delay: FIRST_RETRY_DELAY,
            retry_at: None,
            failing_since: None,
            last_logged: None,
            failing,
        }
    }

    fn failed(&mut self, entries: &[StagedEntry], reason: &str, attempt: Attempt) {
        match (self.failing_since, attempt) {
            (None, _) => {
                self.failing_since = Some(Instant::now());
                self.delay = FIRST_RETRY_DELAY;
                self.failing.store(true, Ordering::Relaxed);
            }
            (Some(_), Attempt::Retry) => self.delay = (self.delay * 2).min(MAX_RETRY_DELAY),
            (Some(_), Attempt::WithRequests) => {}
        }
        self.retry_at = Some(Instant::now() + self.delay);
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < FAILURE_LOG_INTERVAL)
        {
            return;
        }
        let executions = entries
            .iter()
            .map(|entry| &entry.key)
            .collect::<std::collections::HashSet<_>>()
            .len();
        tracing::error!(
            executions,
            retry_in_seconds = self.delay.as_secs(),
            error = reason,
            "journal writes failing for {executions} executions; retrying in {}s",
            self.delay.as_secs()
        );
        self.last_logged = Some(Instant::now());
    }

    fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                failing_seconds = since.elapsed().as_secs(),
                "journal writes succeed again"
            );
            self.failing.store(false, Ordering::Relaxed);
        }
        self.delay = FIRST_RETRY_DELAY;
        self.retry_at = None;
        self.last_logged = None;
    }
}
