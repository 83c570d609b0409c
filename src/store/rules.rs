//! The rules both stores keep, as pure functions: whether a part is accepted, when a batch is
//! settled, which status a batch moves to, and what a cancel adds to the counters. The stores
//! read what they need, ask these functions, and write the answer with a transition that can
//! happen once (a conditional write or one transaction).

use super::AppendOutcome;
use crate::domain::{Batch, BatchId, BatchStatus, NewPart, MAX_REDRIVES};

/// Why a batch stopped starting chunks before all of them ran; its settled status follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A client cancelled it: it ends CANCELLED.
    Cancelled,
    /// Its failed items exceeded its failure budget: it ends FAILED.
    BudgetExceeded,
}

impl Stop {
    /// The stable name used in storage.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "CANCEL",
            Self::BudgetExceeded => "BUDGET",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [Self::Cancelled, Self::BudgetExceeded]
            .into_iter()
            .find(|stop| stop.as_str() == name)
    }
}

/// The terminal status of a batch whose every item is terminal: CANCELLED or FAILED when it
/// was stopped, else by its outcomes (COMPLETED only when every item succeeded).
pub(crate) fn settled_status(batch: &Batch, stop: Option<Stop>) -> BatchStatus {
    match stop {
        Some(Stop::Cancelled) => BatchStatus::Cancelled,
        Some(Stop::BudgetExceeded) => BatchStatus::Failed,
        None if batch.failed_items + batch.cancelled_items == 0 => BatchStatus::Completed,
        None if batch.succeeded_items == 0 => BatchStatus::Failed,
        None => BatchStatus::CompletedWithFailures,
    }
}

/// Why a batch that was not stopped must stop now (its failed items exceed its failure
/// budget), or None.
pub(crate) fn budget_stop(batch: &Batch, stop: Option<Stop>) -> Option<String> {
    if stop.is_some() || batch.status.is_terminal() {
        return None;
    }
    batch
        .failure_budget
        .exceeded(batch.failed_items, batch.total_items)
}

/// Why a control request (pause, resume, redrive) cannot apply to a batch as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal(pub String);

/// The status pausing moves a batch to: None when it is paused already.
pub(crate) fn pause(batch: &Batch) -> Result<Option<BatchStatus>, Refusal> {
    match batch.status {
        status if status.is_terminal() => Err(Refusal(format!(
            "batch {} has ended ({status}); only a running batch can be paused",
            batch.batch_id
        ))),
        BatchStatus::Paused => Ok(None),
        _ => Ok(Some(BatchStatus::Paused)),
    }
}

/// The status resuming moves a batch to: None when it is not paused.
pub(crate) fn resume(batch: &Batch) -> Result<Option<BatchStatus>, Refusal> {
    match batch.status {
        status if status.is_terminal() => Err(Refusal(format!(
            "batch {} has ended ({status}); only a paused batch can be resumed",
            batch.batch_id
        ))),
        BatchStatus::Paused if batch.completed_chunks > 0 => Ok(Some(BatchStatus::Running)),
        BatchStatus::Paused => Ok(Some(BatchStatus::Pending)),
        _ => Ok(None),
    }
}

/// Whether a batch may be redriven: it has ended, and has redrives left.
pub(crate) fn may_redrive(batch: &Batch) -> Result<(), Refusal> {
    if !batch.status.is_terminal() {
        return Err(Refusal(format!(
            "batch {} is {}; only an ended batch can be redriven",
            batch.batch_id, batch.status
        )));
    }
    if batch.redrive_count >= MAX_REDRIVES {
        return Err(Refusal(format!(
            "batch {} was redriven {MAX_REDRIVES} times, the most allowed",
            batch.batch_id
        )));
    }
    Ok(())
}

/// Why a redrive of `batch_id` has nothing to re-run.
pub(crate) fn nothing_to_redrive(batch_id: &BatchId, include_cancelled: bool) -> Refusal {
    let what = if include_cancelled {
        "failed or cancelled items"
    } else {
        "failed items"
    };
    Refusal(format!("batch {batch_id} has no {what} to redrive"))
}

/// What a redrive takes back from a batch's counters: the items it re-runs, by the status
/// they leave, and the chunks that run again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RedriveCounts {
    pub failed_items: u64,
    pub cancelled_items: u64,
    pub chunks: u64,
}

impl RedriveCounts {
    /// Whether the redrive re-runs anything.
    pub(crate) fn is_empty(&self) -> bool {
        self.failed_items + self.cancelled_items == 0
    }

    /// The batch as the redrive leaves it: running again, its redriven items pending.
    pub(crate) fn apply_to(self, batch: &mut Batch, now: crate::domain::Timestamp) {
        batch.failed_items -= self.failed_items;
        batch.cancelled_items -= self.cancelled_items;
        batch.completed_chunks -= self.chunks;
        batch.status = BatchStatus::Running;
        batch.completed_at = None;
        batch.failure_reason = None;
        batch.redrive_count += 1;
        batch.updated_at = now;
    }
}

/// What the rules say about a new part, given what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartVerdict {
    /// Store it.
    Store,
    /// The same part (same items) is stored already.
    AlreadyStored,
    /// Refuse it with this outcome (boxed: an outcome can carry a whole batch).
    Refuse(Box<AppendOutcome>),
}

fn refuse(outcome: AppendOutcome) -> PartVerdict {
    PartVerdict::Refuse(Box::new(outcome))
}

/// Judges a part against its batch (as stored, or just created) and the digest of the part
/// stored under the same number, if any. Repeated item IDs are judged apart, by the stores,
/// since finding them needs the earlier parts' IDs.
pub(crate) fn judge_part(
    batch: &Batch,
    cancel_requested: bool,
    stored_digest: Option<&str>,
    part: &NewPart,
    digest: &str,
) -> PartVerdict {
    if batch.total_items != part.total_items {
        return PartVerdict::Refuse(Box::new(AppendOutcome::Conflict(format!(
            "batch {} exists with {} items in total, not {}",
            part.batch_id, batch.total_items, part.total_items
        ))));
    }
    if batch.batch_size != part.batch_size.get() {
        return PartVerdict::Refuse(Box::new(AppendOutcome::Conflict(format!(
            "batch {} exists with batch_size {}, not {}",
            part.batch_id,
            batch.batch_size,
            part.batch_size.get()
        ))));
    }
    if let Some(budget) = part.failure_budget.filter(|b| *b != batch.failure_budget) {
        return refuse(AppendOutcome::Conflict(format!(
            "batch {} exists with failure budget {}, not {budget}",
            part.batch_id, batch.failure_budget
        )));
    }
    match stored_digest {
        Some(stored) if stored == digest => return PartVerdict::AlreadyStored,
        Some(_) => {
            return PartVerdict::Refuse(Box::new(AppendOutcome::Conflict(format!(
                "part {} of batch {} was stored with other items",
                part.part_number, part.batch_id
            ))))
        }
        None => {}
    }
    if cancel_requested {
        let reason = match &batch.failure_reason {
            Some(reason) => format!("batch {} has stopped: {reason}", part.batch_id),
            None => format!("batch {} is cancelled", part.batch_id),
        };
        return refuse(AppendOutcome::Rejected(reason));
    }
    let item_count = part.items.len() as u64;
    if batch.received_items + item_count > batch.total_items {
        return PartVerdict::Refuse(Box::new(AppendOutcome::Rejected(format!(
            "batch {} expects {} items and holds {}; {} more would exceed it",
            part.batch_id, batch.total_items, batch.received_items, item_count
        ))));
    }
    PartVerdict::Store
}

/// Whether an accepted part makes its batch hold every item, so that no part can follow it.
pub(crate) fn completes_batch(batch: &Batch, part: &NewPart) -> bool {
    batch.received_items + part.items.len() as u64 >= batch.total_items
}

/// What accepting a part takes to keep item IDs unique across the parts of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RepeatCheck {
    /// Earlier parts exist: the part's IDs must be checked against theirs.
    pub against_earlier: bool,
    /// Parts may follow: the part's ID hashes must be kept for them.
    pub keep_hashes: bool,
}

impl RepeatCheck {
    /// Whether the part's IDs need hashing at all (not for a batch sent in one part).
    pub(crate) fn needs_hashes(self) -> bool {
        self.against_earlier || self.keep_hashes
    }
}

pub(crate) fn repeat_check(batch: &Batch, part: &NewPart) -> RepeatCheck {
    RepeatCheck {
        against_earlier: batch.received_items > 0,
        keep_hashes: !completes_batch(batch, part),
    }
}

/// Whether every item of a batch has a terminal status: every chunk is counted, and no part
/// is still to come (all arrived, or the batch is cancelled, which counts the missing ones).
pub(crate) fn is_settled(batch: &Batch, cancel_requested: bool) -> bool {
    batch.completed_chunks == batch.total_chunks
        && (batch.received_items == batch.total_items || cancel_requested)
}

/// What just happened to a batch, as far as its status goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A task started one of its chunks.
    ChunkStarted,
    /// One of its chunks was counted.
    ChunkRecorded,
    /// Its counters changed otherwise (a cancel, a read after a replayed update).
    CountersChanged,
}

/// The status a batch moves to after `progress`, or None when it stays. A terminal status
/// never changes; a settled batch turns terminal (see [`settled_status`]); a PENDING batch
/// turns RUNNING once a chunk starts or is counted (a PAUSED one stays paused).
pub(crate) fn next_status(
    batch: &Batch,
    cancel_requested: bool,
    stop: Option<Stop>,
    progress: Progress,
) -> Option<BatchStatus> {
    if batch.status.is_terminal() {
        return None;
    }
    if is_settled(batch, cancel_requested) {
        return Some(settled_status(batch, stop));
    }
    let started = matches!(progress, Progress::ChunkStarted | Progress::ChunkRecorded);
    (started && batch.status == BatchStatus::Pending).then_some(BatchStatus::Running)
}

/// Whether a cancel request is the batch's first (the one that counts the items never
/// received) or a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelRequest {
    First,
    Repeated,
}

impl CancelRequest {
    pub(crate) fn given(cancel_requested: bool) -> Self {
        if cancel_requested {
            Self::Repeated
        } else {
            Self::First
        }
    }
}

/// What a cancel adds to a batch's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CancelCounts {
    pub cancelled_items: u64,
    pub completed_chunks: u64,
}

impl std::ops::Add for CancelCounts {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            cancelled_items: self.cancelled_items + other.cancelled_items,
            completed_chunks: self.completed_chunks + other.completed_chunks,
        }
    }
}

impl CancelCounts {
    /// Adds these counts to a batch.
    pub(crate) fn apply_to(self, batch: &mut Batch) {
        batch.cancelled_items += self.cancelled_items;
        batch.completed_chunks += self.completed_chunks;
    }
}

/// What a cancel request adds by itself: on the first request only, the items of parts never
/// received (the batch refuses parts once cancelled, so that number cannot change after it).
pub(crate) fn cancel_request(batch: &Batch, request: CancelRequest) -> CancelCounts {
    match request {
        CancelRequest::First => CancelCounts {
            cancelled_items: batch.total_items.saturating_sub(batch.received_items),
            completed_chunks: 0,
        },
        CancelRequest::Repeated => CancelCounts::default(),
    }
}

/// What cancelling `chunks` chunks that no task started, holding `items` items, adds. Each
/// must be cancelled by a transition that can happen once (PENDING to CANCELLED).
pub(crate) fn cancelled_chunks(chunks: u64, items: u64) -> CancelCounts {
    CancelCounts {
        cancelled_items: items,
        completed_chunks: chunks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{parse_item_ids, BatchId, BatchSize, Timestamp};

    fn batch(total: u64, received: u64, chunks: u64, completed: u64) -> Batch {
        Batch {
            batch_id: BatchId::parse("b").unwrap(),
            status: BatchStatus::Pending,
            total_items: total,
            received_items: received,
            succeeded_items: 0,
            failed_items: 0,
            cancelled_items: 0,
            total_chunks: chunks,
            completed_chunks: completed,
            batch_size: 2,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            completed_at: None,
            max_concurrency: None,
            failure_budget: Default::default(),
            failure_reason: None,
            redrive_count: 0,
            callback: Default::default(),
            progress: Default::default(),
        }
    }

    fn part(total: u64, size: u64, number: u64, ids: &[&str]) -> NewPart {
        NewPart::new(
            BatchId::parse("b").unwrap(),
            total,
            BatchSize::parse(size).unwrap(),
            number,
            parse_item_ids(ids.iter().map(|id| id.to_string()).collect()).unwrap(),
        )
        .unwrap()
    }

    fn refusal(verdict: PartVerdict) -> AppendOutcome {
        match verdict {
            PartVerdict::Refuse(outcome) => *outcome,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_new_part_that_fits_is_stored() {
        let new = part(6, 2, 2, &["c", "d"]);
        let verdict = judge_part(&batch(6, 2, 1, 0), false, None, &new, &new.digest());
        assert_eq!(verdict, PartVerdict::Store);
    }

    #[test]
    fn the_same_part_again_is_already_stored_even_once_cancelled() {
        let again = part(6, 2, 1, &["a", "b"]);
        let digest = again.digest();
        for cancelled in [false, true] {
            let verdict = judge_part(
                &batch(6, 2, 1, 0),
                cancelled,
                Some(&digest),
                &again,
                &digest,
            );
            assert_eq!(verdict, PartVerdict::AlreadyStored);
        }
    }

    #[test]
    fn a_stored_part_number_with_other_items_is_a_conflict() {
        let other = part(6, 2, 1, &["x", "y"]);
        let outcome = refusal(judge_part(
            &batch(6, 2, 1, 0),
            false,
            Some("stored digest"),
            &other,
            &other.digest(),
        ));
        assert!(matches!(outcome, AppendOutcome::Conflict(reason) if reason.contains("part 1")));
    }

    #[test]
    fn another_total_or_batch_size_is_a_conflict_naming_it() {
        let other_total = part(7, 2, 2, &["c"]);
        let outcome = refusal(judge_part(
            &batch(6, 2, 1, 0),
            false,
            None,
            &other_total,
            &other_total.digest(),
        ));
        assert!(
            matches!(&outcome, AppendOutcome::Conflict(reason) if reason.contains("6 items in total, not 7")),
            "{outcome:?}"
        );
        let other_size = part(6, 3, 1, &["a", "b"]);
        let digest = other_size.digest();
        let outcome = refusal(judge_part(
            &batch(6, 2, 1, 0),
            false,
            Some(&digest),
            &other_size,
            &digest,
        ));
        assert!(
            matches!(&outcome, AppendOutcome::Conflict(reason) if reason.contains("batch_size 2, not 3")),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_new_part_of_a_cancelled_batch_is_rejected() {
        let new = part(6, 2, 2, &["c"]);
        let outcome = refusal(judge_part(
            &batch(6, 2, 1, 1),
            true,
            None,
            &new,
            &new.digest(),
        ));
        assert!(matches!(outcome, AppendOutcome::Rejected(reason) if reason.contains("cancelled")));
    }

    #[test]
    fn a_part_past_the_total_is_rejected_and_one_reaching_it_completes_the_batch() {
        let fitting = part(6, 2, 2, &["c", "d", "e", "f"]);
        let full = batch(6, 2, 1, 0);
        assert_eq!(
            judge_part(&full, false, None, &fitting, &fitting.digest()),
            PartVerdict::Store
        );
        assert!(completes_batch(&full, &fitting));
        assert!(!completes_batch(&full, &part(6, 2, 2, &["c"])));
        let beyond = part(6, 2, 2, &["c", "d", "e", "f", "g"]);
        let outcome = refusal(judge_part(&full, false, None, &beyond, &beyond.digest()));
        assert!(matches!(outcome, AppendOutcome::Rejected(reason) if reason.contains("5 more")));
    }

    #[test]
    fn only_a_batch_sent_in_several_parts_hashes_its_ids() {
        let whole = repeat_check(&batch(2, 0, 0, 0), &part(2, 2, 1, &["a", "b"]));
        assert!(
            !whole.needs_hashes(),
            "one part: nothing before it, nothing after"
        );
        let first = repeat_check(&batch(4, 0, 0, 0), &part(4, 2, 1, &["a", "b"]));
        assert_eq!(
            first,
            RepeatCheck {
                against_earlier: false,
                keep_hashes: true
            }
        );
        let last = repeat_check(&batch(4, 2, 1, 0), &part(4, 2, 2, &["c", "d"]));
        assert_eq!(
            last,
            RepeatCheck {
                against_earlier: true,
                keep_hashes: false
            }
        );
    }

    #[test]
    fn a_batch_is_settled_once_every_chunk_is_counted_and_no_part_is_to_come() {
        assert!(is_settled(&batch(4, 4, 2, 2), false));
        assert!(!is_settled(&batch(4, 4, 2, 1), false));
        assert!(
            !is_settled(&batch(4, 2, 1, 1), false),
            "parts still to come"
        );
        assert!(
            is_settled(&batch(4, 2, 1, 1), true),
            "cancelled: none will come"
        );
        assert!(!is_settled(&batch(4, 2, 1, 0), true), "a chunk still runs");
    }

    #[test]
    fn a_pending_batch_runs_once_a_chunk_starts_or_is_counted() {
        let waiting = batch(4, 4, 2, 0);
        assert_eq!(
            next_status(&waiting, false, None, Progress::ChunkStarted),
            Some(BatchStatus::Running)
        );
        assert_eq!(
            next_status(&batch(4, 4, 2, 1), false, None, Progress::ChunkRecorded),
            Some(BatchStatus::Running)
        );
        assert_eq!(
            next_status(&waiting, false, None, Progress::CountersChanged),
            None
        );
        let mut running = waiting;
        running.status = BatchStatus::Running;
        assert_eq!(
            next_status(&running, false, None, Progress::ChunkStarted),
            None
        );
    }

    #[test]
    fn a_settled_batch_turns_terminal_by_its_outcomes_or_cancelled() {
        let mut done = batch(4, 4, 2, 2);
        done.status = BatchStatus::Running;
        done.succeeded_items = 3;
        done.failed_items = 1;
        assert_eq!(
            next_status(&done, false, None, Progress::ChunkRecorded),
            Some(BatchStatus::CompletedWithFailures)
        );
        assert_eq!(
            next_status(
                &done,
                true,
                Some(Stop::Cancelled),
                Progress::CountersChanged
            ),
            Some(BatchStatus::Cancelled)
        );
        done.failed_items = 0;
        done.succeeded_items = 4;
        assert_eq!(
            next_status(&done, false, None, Progress::CountersChanged),
            Some(BatchStatus::Completed)
        );
    }

    #[test]
    fn the_settled_status_follows_the_stop_then_the_outcomes() {
        let mut done = batch(5, 5, 3, 3);
        done.succeeded_items = 5;
        assert_eq!(settled_status(&done, None), BatchStatus::Completed);
        done.succeeded_items = 4;
        done.failed_items = 1;
        assert_eq!(
            settled_status(&done, None),
            BatchStatus::CompletedWithFailures
        );
        done.failed_items = 0;
        done.cancelled_items = 1;
        assert_eq!(
            settled_status(&done, None),
            BatchStatus::CompletedWithFailures,
            "an item left cancelled by a redrive is not a success"
        );
        done.succeeded_items = 0;
        done.failed_items = 5;
        done.cancelled_items = 0;
        assert_eq!(settled_status(&done, None), BatchStatus::Failed);
        assert_eq!(
            settled_status(&done, Some(Stop::Cancelled)),
            BatchStatus::Cancelled
        );
        done.succeeded_items = 4;
        done.failed_items = 1;
        assert_eq!(
            settled_status(&done, Some(Stop::BudgetExceeded)),
            BatchStatus::Failed
        );
    }

    #[test]
    fn a_budget_stops_a_batch_once_its_failures_exceed_it_and_only_once() {
        let mut running = batch(100, 100, 10, 5);
        running.status = BatchStatus::Running;
        running.failure_budget = crate::domain::FailureBudget::parse(Some(10), None).unwrap();
        running.failed_items = 10;
        assert_eq!(budget_stop(&running, None), None, "10 of 100 is within 10%");
        running.failed_items = 12;
        assert_eq!(
            budget_stop(&running, None).as_deref(),
            Some("failure budget exceeded: 12 of 100 items failed, 10% tolerated")
        );
        assert_eq!(budget_stop(&running, Some(Stop::BudgetExceeded)), None);
        assert_eq!(budget_stop(&running, Some(Stop::Cancelled)), None);
        running.failure_budget = crate::domain::FailureBudget::parse(None, Some(12)).unwrap();
        assert_eq!(budget_stop(&running, None), None);
        running.failed_items = 13;
        assert!(budget_stop(&running, None)
            .unwrap()
            .ends_with("12 tolerated"));
        running.failure_budget = Default::default();
        assert_eq!(budget_stop(&running, None), None, "no budget, no stop");
    }

    #[test]
    fn pause_and_resume_move_only_a_batch_that_has_not_ended() {
        let mut running = batch(4, 4, 2, 1);
        running.status = BatchStatus::Running;
        assert_eq!(pause(&running), Ok(Some(BatchStatus::Paused)));
        assert_eq!(resume(&running), Ok(None), "not paused: nothing to do");
        running.status = BatchStatus::Paused;
        assert_eq!(pause(&running), Ok(None), "paused twice is paused once");
        assert_eq!(resume(&running), Ok(Some(BatchStatus::Running)));
        let mut waiting = batch(4, 4, 2, 0);
        waiting.status = BatchStatus::Paused;
        assert_eq!(resume(&waiting), Ok(Some(BatchStatus::Pending)));
        for status in BatchStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            running.status = status;
            assert!(pause(&running).is_err());
            assert!(resume(&running).is_err());
            assert_eq!(may_redrive(&running), Ok(()));
        }
        running.status = BatchStatus::Paused;
        assert!(may_redrive(&running)
            .unwrap_err()
            .0
            .contains("only an ended batch"));
        running.status = BatchStatus::Failed;
        running.redrive_count = MAX_REDRIVES;
        assert!(may_redrive(&running).unwrap_err().0.contains("1000 times"));
    }

    #[test]
    fn a_redrive_takes_back_exactly_what_it_re_runs() {
        let mut ended = batch(10, 10, 5, 5);
        ended.status = BatchStatus::Failed;
        ended.succeeded_items = 4;
        ended.failed_items = 4;
        ended.cancelled_items = 2;
        ended.failure_reason = Some("failure budget exceeded".into());
        ended.completed_at = Some(Timestamp(5));
        let counts = RedriveCounts {
            failed_items: 4,
            cancelled_items: 2,
            chunks: 3,
        };
        counts.apply_to(&mut ended, Timestamp(9));
        assert_eq!(ended.pending_items(), 6);
        assert_eq!(ended.completed_chunks, 2);
        assert_eq!(ended.status, BatchStatus::Running);
        assert_eq!(ended.redrive_count, 1);
        assert_eq!(ended.failure_reason, None);
        assert_eq!(ended.completed_at, None);
    }

    #[test]
    fn a_terminal_status_never_changes() {
        for status in BatchStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            let mut ended = batch(4, 4, 2, 2);
            ended.status = status;
            for progress in [
                Progress::ChunkStarted,
                Progress::ChunkRecorded,
                Progress::CountersChanged,
            ] {
                for cancelled in [false, true] {
                    assert_eq!(
                        next_status(
                            &ended,
                            cancelled,
                            cancelled.then_some(Stop::Cancelled),
                            progress
                        ),
                        None
                    );
                }
            }
        }
    }

    #[test]
    fn the_first_cancel_counts_the_items_never_received_and_a_repeat_does_not() {
        let waiting = batch(10, 4, 2, 0);
        assert_eq!(
            cancel_request(&waiting, CancelRequest::First) + cancelled_chunks(2, 4),
            CancelCounts {
                cancelled_items: 10,
                completed_chunks: 2
            }
        );
        assert_eq!(
            cancel_request(&waiting, CancelRequest::Repeated),
            CancelCounts::default()
        );
        assert_eq!(
            cancel_request(&batch(10, 10, 5, 0), CancelRequest::First),
            CancelCounts::default(),
            "every part arrived"
        );
        assert_eq!(CancelRequest::given(false), CancelRequest::First);
        assert_eq!(CancelRequest::given(true), CancelRequest::Repeated);
    }

    #[test]
    fn cancels_repeated_any_number_of_times_keep_every_item_counted_once() {
        let mut counted = batch(10, 4, 2, 0);
        let mut requested = false;
        for _ in 0..5 {
            cancel_request(&counted, CancelRequest::given(requested)).apply_to(&mut counted);
            requested = true;
        }
        // The two pending chunks are cancelled once each, by whichever request wins them.
        cancelled_chunks(1, 2).apply_to(&mut counted);
        cancelled_chunks(1, 2).apply_to(&mut counted);
        assert_eq!(counted.cancelled_items, 10);
        assert_eq!(counted.completed_chunks, 2);
        assert!(is_settled(&counted, requested));
        assert_eq!(
            next_status(
                &counted,
                requested,
                Some(Stop::Cancelled),
                Progress::CountersChanged
            ),
            Some(BatchStatus::Cancelled)
        );
    }
}
