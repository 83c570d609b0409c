//! Per-batch limits on executions in flight (`max_concurrency`): which fresh executions the
//! window may start, and which it holds back until their batch has room.
//!
//! An execution is in flight from its start until it ends, sleeping included. A batch's count
//! is read from the journal the first time the window meets the batch (its executions that
//! passed their first Task and have not ended), then kept here: one more for each fresh start,
//! one less for each end. Held-back starts are not kept in memory: the batch remembers the
//! first of them, and they are paged in from there once it has room.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::domain::BatchId;
use crate::store::journal::{ExecutionJournal, JournalPosition, Runnable};
use crate::store::StoreError;

/// One batch's slots, as the window keeps them.
#[derive(Debug, Clone, Default)]
struct Slots {
    batch_seq: i64,
    limit: Option<u32>,
    running: u64,
    /// The first start held back, once the batch had no room.
    held_from: Option<JournalPosition>,
}

impl Slots {
    fn room(&self) -> Option<u64> {
        self.limit
            .map(|limit| u64::from(limit).saturating_sub(self.running))
    }
}

/// The batches the window knows to be paused (their limit reads as 0), shared with the
/// workers: an execution queued before its batch was paused does not start once a worker
/// takes it. Kept with the slots, so that a worker asks memory, not the store.
#[derive(Clone, Default)]
pub(super) struct PausedBatches(Arc<RwLock<HashSet<BatchId>>>);

impl PausedBatches {
    /// Whether `batch_id` is paused, as far as the window has heard.
    pub(super) fn contains(&self, batch_id: &BatchId) -> bool {
        self.0
            .read()
            .map(|paused| paused.contains(batch_id))
            .unwrap_or(false)
    }

    fn note(&self, batch_id: &BatchId, limit: Option<u32>) {
        if let Ok(mut paused) = self.0.write() {
            if limit == Some(0) {
                paused.insert(batch_id.clone());
            } else {
                paused.remove(batch_id);
            }
        }
    }
}

/// Starts a batch may make: held back ones, from where, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refill {
    pub from: JournalPosition,
    pub count: usize,
}

/// The slots of every batch with executions in flight or starts held back.
#[derive(Default)]
pub(super) struct BatchLimits {
    batches: HashMap<BatchId, Slots>,
    paused: PausedBatches,
}

impl BatchLimits {
    /// Limits that keep `paused` up to date.
    pub(super) fn new(paused: PausedBatches) -> Self {
        Self {
            batches: HashMap::new(),
            paused,
        }
    }

    async fn slots<'a>(
        &'a mut self,
        journal: &dyn ExecutionJournal,
        runnable: &Runnable,
    ) -> Result<&'a mut Slots, StoreError> {
        if !self.batches.contains_key(&runnable.key.batch_id) {
            let read = journal.batch_slots(runnable.position.batch_seq).await?;
            self.paused.note(&runnable.key.batch_id, read.limit);
            self.batches.insert(
                runnable.key.batch_id.clone(),
                Slots {
                    batch_seq: runnable.position.batch_seq,
                    limit: read.limit,
                    running: read.running,
                    held_from: None,
                },
            );
        }
        Ok(self
            .batches
            .get_mut(&runnable.key.batch_id)
            .expect("inserted above"))
    }

    /// Whether the window may run `runnable` now. A resumed or woken execution is in flight
    /// already and always may; a fresh start may while its batch has room, and is counted,
    /// else it is held back (false). A batch whose slots cannot be read (the store failing)
    /// is let run: holding its execution back would leave it out of the window until
    /// something else pages it in.
    pub(super) async fn may_run(
        &mut self,
        journal: &dyn ExecutionJournal,
        runnable: &Runnable,
    ) -> bool {
        let slots = match self.slots(journal, runnable).await {
            Ok(slots) => slots,
            Err(err) => {
                tracing::warn!(error = %err, batch_id = %runnable.key.batch_id, "reading a batch's limit failed; running its execution");
                return true;
            }
        };
        if runnable.cursor.is_some() {
            return true;
        }
        if slots.room() == Some(0) {
            let from = slots
                .held_from
                .map_or(runnable.position, |held| held.min(runnable.position));
            slots.held_from = Some(from);
            return false;
        }
        slots.running += 1;
        true
    }

    /// Whether `batch_id` holds starts back.
    #[cfg(test)]
    pub(super) fn is_holding(&self, batch_id: &BatchId) -> bool {
        self.batches
            .get(batch_id)
            .is_some_and(|slots| slots.held_from.is_some())
    }

    /// An execution of `batch_id` ended: its slot frees.
    pub(super) fn ended(&mut self, batch_id: &BatchId) {
        if let Some(slots) = self.batches.get_mut(batch_id) {
            slots.running = slots.running.saturating_sub(1);
            if slots.running == 0 && slots.held_from.is_none() {
                // Read again from the journal if the batch comes back (a new part).
                self.batches.remove(batch_id);
                self.paused.note(batch_id, None);
            }
        }
    }

    /// A fresh start of `batch_id` counted by [`Self::may_run`] did not start after all (its
    /// batch was paused before a worker took it, see [`PausedBatches`]): its slot frees and it waits, from
    /// `position`, with the batch's held starts.
    pub(super) fn held_back(&mut self, batch_id: &BatchId, position: JournalPosition) {
        if let Some(slots) = self.batches.get_mut(batch_id) {
            slots.running = slots.running.saturating_sub(1);
            slots.held_from = Some(slots.held_from.map_or(position, |held| held.min(position)));
        }
    }

    /// The batch's limit changed in the store: read it again.
    pub(super) async fn reload(
        &mut self,
        journal: &dyn ExecutionJournal,
        batch_id: &BatchId,
    ) -> Result<(), StoreError> {
        if let Some(slots) = self.batches.get_mut(batch_id) {
            slots.limit = journal.batch_slots(slots.batch_seq).await?.limit;
            self.paused.note(batch_id, slots.limit);
        }
        Ok(())
    }

    /// A batch holding starts back that now has room, if any: where its held starts begin and
    /// how many (at most `most`) it may make.
    pub(super) fn next_refill(&self, most: usize) -> Option<(BatchId, Refill)> {
        self.batches.iter().find_map(|(batch_id, slots)| {
            let from = slots.held_from?;
            let room = slots.room().unwrap_or(u64::MAX);
            (room > 0).then(|| {
                let count = usize::try_from(room).unwrap_or(usize::MAX).min(most);
                (batch_id.clone(), Refill { from, count })
            })
        })
    }

    /// The held starts of `batch_id` were paged from `refill.from`: `last` is the last one
    /// found (None when none are left).
    pub(super) fn refilled(
        &mut self,
        batch_id: &BatchId,
        refill: Refill,
        found: usize,
        last: Option<JournalPosition>,
    ) {
        if let Some(slots) = self.batches.get_mut(batch_id) {
            slots.held_from = match last {
                Some(last) if found >= refill.count => Some(last.next()),
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_limit_less_what_runs() {
        let slots = Slots {
            batch_seq: 1,
            limit: Some(5),
            running: 3,
            held_from: None,
        };
        assert_eq!(slots.room(), Some(2));
        let over = Slots {
            running: 7,
            ..slots.clone()
        };
        assert_eq!(over.room(), Some(0));
        let unlimited = Slots {
            limit: None,
            ..slots
        };
        assert_eq!(unlimited.room(), None);
    }

    #[test]
    fn a_start_held_back_after_admission_frees_its_slot_and_waits_with_the_held() {
        let batch = BatchId::parse("b").unwrap();
        let at = |chunk| JournalPosition {
            batch_seq: 1,
            chunk,
        };
        let mut limits = BatchLimits::default();
        limits.batches.insert(
            batch.clone(),
            Slots {
                batch_seq: 1,
                limit: Some(2),
                running: 2,
                held_from: Some(at(9)),
            },
        );
        limits.held_back(&batch, at(4));
        let slots = &limits.batches[&batch];
        assert_eq!((slots.running, slots.held_from), (1, Some(at(4))));
        let (_, refill) = limits.next_refill(256).unwrap();
        assert_eq!(refill.from, at(4), "the earliest held start comes first");
    }

    #[test]
    fn a_batch_with_room_and_held_starts_is_refilled_from_the_first_held() {
        let batch = BatchId::parse("b").unwrap();
        let held = JournalPosition {
            batch_seq: 1,
            chunk: 7,
        };
        let mut limits = BatchLimits::default();
        limits.batches.insert(
            batch.clone(),
            Slots {
                batch_seq: 1,
                limit: Some(5),
                running: 5,
                held_from: Some(held),
            },
        );
        assert_eq!(limits.next_refill(256), None);
        limits.ended(&batch);
        let (refilled, refill) = limits.next_refill(256).unwrap();
        assert_eq!(refilled, batch);
        assert_eq!(
            refill,
            Refill {
                from: held,
                count: 1
            }
        );
        limits.refilled(&batch, refill, 1, Some(held));
        assert!(limits.is_holding(&batch));
        limits.refilled(&batch, refill, 0, None);
        assert!(!limits.is_holding(&batch));
    }
}
