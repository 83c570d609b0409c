//! The window: the bounded set of executions in memory (waiting for a worker, running, or
//! settling), refilled by paging runnable executions from the journal in order.
//!
//! Three sources, in priority order: at start, the executions a stopped server left running;
//! sleepers whose time has come; chunks whose execution has not passed its first Task. Each
//! is paged from a position that only moves forward, except when the journal says something
//! was added behind it (a part for an older batch, a sleeper that wakes early), so a page
//! costs an index range scan however many chunks are done.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::execution::Work;
use super::limits::{BatchLimits, PausedBatches};
use crate::domain::{BatchId, Timestamp};
use crate::store::journal::{
    ExecutionJournal, ExecutionKey, JournalPosition, Runnable, WakePosition,
};
use crate::store::StoreError;

/// Executions paged in per query, at most.
const PAGE: usize = 256;
/// How often the window looks whether the store takes writes again.
pub(super) const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long the window waits before paging again after the journal failed to answer.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How many executions the window holds for `concurrency` workers: enough that workers never
/// wait for a page.
pub(super) fn capacity(concurrency: usize) -> usize {
    concurrency * 2 + 2 * PAGE
}

/// What the window is told.
#[derive(Debug)]
pub(super) enum Event {
    /// Chunks of a batch were stored, the lowest being `first_chunk`.
    Stored { batch_id: BatchId, first_chunk: u64 },
    /// A batch's limit on executions in flight changed.
    LimitChanged { batch_id: BatchId },
    /// A fresh execution taken off the queue did not start: its batch was paused meanwhile.
    /// It waits with the batch's other held starts.
    Held {
        key: ExecutionKey,
        position: JournalPosition,
    },
    /// An execution left memory, its last journal entry committed; `woken` is where it sleeps.
    Settled {
        key: ExecutionKey,
        woken: Option<WakePosition>,
    },
}

pub(super) struct Window {
    journal: Arc<dyn ExecutionJournal>,
    capacity: usize,
    events: mpsc::UnboundedReceiver<Event>,
    ready: mpsc::UnboundedSender<Work>,
    stopping: watch::Receiver<bool>,
    in_memory: HashSet<ExecutionKey>,
    /// Where the next page of executions left running starts; None once all are resumed.
    resume_from: Option<JournalPosition>,
    resumed: usize,
    due_from: WakePosition,
    next_wake: Option<Timestamp>,
    unstarted_from: JournalPosition,
    /// Batches' limits on executions in flight.
    limits: BatchLimits,
    /// Every source was empty at the last look.
    idle: bool,
}

impl Window {
    pub(super) fn new(
        journal: Arc<dyn ExecutionJournal>,
        capacity: usize,
        events: mpsc::UnboundedReceiver<Event>,
        ready: mpsc::UnboundedSender<Work>,
        stopping: watch::Receiver<bool>,
        paused: PausedBatches,
    ) -> Self {
        Self {
            journal,
            capacity,
            events,
            ready,
            stopping,
            in_memory: HashSet::new(),
            resume_from: Some(JournalPosition::default()),
            resumed: 0,
            due_from: WakePosition::default(),
            next_wake: Some(Timestamp(i64::MIN)),
            unstarted_from: JournalPosition::default(),
            limits: BatchLimits::new(paused),
            idle: false,
        }
    }

    /// Pages executions in until the engine stops.
    pub(super) async fn run(mut self) {
        let mut stopping = self.stopping.clone();
        loop {
            if *stopping.borrow() {
                return;
            }
            let room = self.capacity.saturating_sub(self.in_memory.len());
            let full = room < PAGE / 2;
            let refused = !self.journal.accepting();
            if self.idle || full || refused {
                // Sleepers that are due wait for room like everything else.
                let wake = if refused {
                    Some(STORE_CHECK_INTERVAL)
                } else if full {
                    None
                } else {
                    self.until_next_wake()
                };
                let event = tokio::select! {
                    event = self.events.recv() => match event {
                        Some(event) => Some(event),
                        None => return,
                    },
                    () = sleep_for(wake) => None,
                    _ = stopping.wait_for(|stop| *stop) => return,
                };
                match event {
                    Some(event) => self.handle(event).await,
                    None => self.idle = false,
                }
                while let Ok(event) = self.events.try_recv() {
                    self.handle(event).await;
                }
                continue;
            }
            let paged = match self.refill(room.min(PAGE)).await {
                Ok(true) => continue,
                Ok(false) => self.page(room.min(PAGE)).await,
                Err(err) => Err(err),
            };
            let admitted = match paged {
                Ok(page) if page.is_empty() => {
                    self.idle = true;
                    Ok(())
                }
                Ok(page) => self.admit(page).await,
                Err(err) => Err(err),
            };
            match admitted {
                Ok(()) => {}
                Err(err) => {
                    tracing::error!(error = %err, "paging chunk executions failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                        _ = stopping.wait_for(|stop| *stop) => return,
                    }
                }
            }
        }
    }

    fn until_next_wake(&self) -> Option<Duration> {
        let wake = self.next_wake?;
        let micros = wake.0.saturating_sub(Timestamp::now().0).max(0);
        Some(Duration::from_micros(micros as u64))
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Stored {
                batch_id,
                first_chunk,
            } => match self.journal.position(&batch_id, first_chunk).await {
                Ok(Some(position)) => {
                    self.unstarted_from = self.unstarted_from.min(position);
                    self.idle = false;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(error = %err, "locating stored chunks failed; paging from the start");
                    self.unstarted_from = JournalPosition::default();
                    self.idle = false;
                }
            },
            Event::LimitChanged { batch_id } => {
                if let Err(err) = self.limits.reload(self.journal.as_ref(), &batch_id).await {
                    tracing::error!(error = %err, "reading a batch's new limit failed");
                }
                self.idle = false;
            }
            Event::Held { key, position } => {
                self.in_memory.remove(&key);
                self.limits.held_back(&key.batch_id, position);
            }
            Event::Settled { key, woken } => {
                self.in_memory.remove(&key);
                if woken.is_none() {
                    self.limits.ended(&key.batch_id);
                    // A batch holding starts back may now have room.
                    self.idle = false;
                }
                if let Some(woken) = woken {
                    self.due_from = self.due_from.min(woken);
                    self.next_wake = Some(match self.next_wake {
                        Some(wake) => wake.min(woken.wake_at),
                        None => woken.wake_at,
                    });
                }
            }
        }
    }

    /// The next page from the first source that has one.
    async fn page(&mut self, limit: usize) -> Result<Vec<Runnable>, StoreError> {
        if let Some(from) = self.resume_from {
            let page = self.journal.resumable(from, limit).await?;
            self.resume_from = match page.last() {
                Some(last) if page.len() == limit => Some(last.position.next()),
                _ => None,
            };
            self.resumed += page.len();
            if self.resume_from.is_none() && self.resumed > 0 {
                tracing::info!(executions = self.resumed, "resuming chunk executions");
            }
            if !page.is_empty() {
                return Ok(page);
            }
        }
        let now = Timestamp::now();
        if self.next_wake.is_some_and(|wake| wake <= now) {
            let page = self.journal.due(self.due_from, now, limit).await?;
            if let Some(last) = page.last() {
                self.due_from = WakePosition {
                    wake_at: last.wake_at.unwrap_or(now),
                    position: last.position.next(),
                };
            }
            if page.len() < limit {
                self.next_wake = self.journal.next_wake(self.due_from).await?;
            }
            if !page.is_empty() {
                return Ok(page);
            }
        }
        let page = self.journal.unstarted(self.unstarted_from, limit).await?;
        if let Some(last) = page.last() {
            self.unstarted_from = last.position.next();
        }
        Ok(page)
    }

    /// Pages in the held-back starts of a batch that has room again; whether it did.
    async fn refill(&mut self, most: usize) -> Result<bool, StoreError> {
        let Some((batch_id, refill)) = self.limits.next_refill(most) else {
            return Ok(false);
        };
        let page = self
            .journal
            .unstarted_in_batch(refill.from, refill.count)
            .await?;
        let last = page.last().map(|runnable| runnable.position);
        self.limits.refilled(&batch_id, refill, page.len(), last);
        self.admit(page).await?;
        Ok(true)
    }

    async fn admit(&mut self, page: Vec<Runnable>) -> Result<(), StoreError> {
        let mut last_held: Option<JournalPosition> = None;
        for runnable in page {
            if self.in_memory.contains(&runnable.key) {
                continue;
            }
            if !self.limits.may_run(self.journal.as_ref(), &runnable).await {
                last_held = Some(runnable.position);
                continue;
            }
            self.in_memory.insert(runnable.key.clone());
            // The workers live as long as the window; once they stop, the journal keeps it.
            if self.ready.send(Work::from(runnable)).is_ok() {
                crate::metrics::global().execution_waiting(true);
            }
        }
        if let Some(held) = last_held.filter(|held| held.batch_seq == self.unstarted_from.batch_seq)
        {
            // The rest of a batch holding starts back waits for its refill: page past it.
            self.unstarted_from = JournalPosition {
                batch_seq: held.batch_seq + 1,
                chunk: 0,
            };
        }
        Ok(())
    }
}

async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
