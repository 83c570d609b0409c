//! A batch's progress as both stores keep it, as pure functions: the measuring window its
//! rate is read from, and the counts of its failure messages. The stores keep the window and
//! the counts beside the batch's counters and change them in the same transition that counts a
//! chunk, so that each item counts once.

use std::collections::BTreeMap;

use super::codec::ChunkOutcomes;
use crate::domain::{
    Batch, BatchProgress, ErrorCount, Timestamp, MAX_ERROR_MESSAGE_CHARS, OTHER_ERRORS,
};

const MICROS_PER_SECOND: i64 = 1_000_000;
/// How long a window measures before the next recorded chunk starts a new one.
pub(crate) const WINDOW_MICROS: i64 = 60 * MICROS_PER_SECOND;
/// The youngest window whose own rate is read; a younger one reads the previous window's.
pub(crate) const MIN_WINDOW_MICROS: i64 = 3 * MICROS_PER_SECOND;
/// How long after its newest recorded chunk a batch's rate still counts: past it, 0.
pub(crate) const STALE_AFTER_MICROS: i64 = 60 * MICROS_PER_SECOND;
/// Distinct failure messages a batch counts; the failures with any other message are counted
/// under [`OTHER_ERRORS`].
pub(crate) const MAX_DISTINCT_ERRORS: usize = 20;
/// Failure messages a status read shows.
pub(crate) const TOP_ERRORS: usize = 10;

/// Where a batch's rate is measured from: the window under way, and what the previous one
/// measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateWindow {
    /// When the window began.
    pub started_at: Timestamp,
    /// The batch's terminal items when it began.
    pub terminal_at_start: u64,
    /// Items per second the previous window measured (0 before a window ended).
    pub previous_rate: f64,
    /// When the batch's newest chunk was counted; `None` before any.
    pub last_recorded_at: Option<Timestamp>,
}

impl RateWindow {
    /// The window of a batch created at `created_at`: it measures from the start.
    #[cfg(test)]
    pub(crate) fn from_creation(created_at: Timestamp) -> Self {
        Self {
            started_at: created_at,
            terminal_at_start: 0,
            previous_rate: 0.0,
            last_recorded_at: None,
        }
    }

    /// Whether a chunk counted at `now` ends this window and starts the next.
    pub(crate) fn is_due(&self, now: Timestamp) -> bool {
        now.0 - self.started_at.0 >= WINDOW_MICROS
    }

    /// The next window, started at `now` with the batch at `terminal` terminal items (its
    /// chunk just counted), keeping what this one measured.
    pub(crate) fn rolled(&self, terminal: u64, now: Timestamp) -> Self {
        Self {
            started_at: now,
            terminal_at_start: terminal,
            previous_rate: per_second(
                terminal.saturating_sub(self.terminal_at_start),
                now.0 - self.started_at.0,
            ),
            last_recorded_at: Some(now),
        }
    }

    /// Items per second with the batch at `terminal` terminal items, read at `now`: what this
    /// window measured up to its newest counted chunk once that is [`MIN_WINDOW_MICROS`] into
    /// it (or when there is no previous window), else the previous window's; 0 once no chunk
    /// was counted for [`STALE_AFTER_MICROS`]. Measured up to the newest chunk rather than to
    /// `now`, two reads with no chunk counted between them agree (within that minute).
    pub(crate) fn rate(&self, terminal: u64, now: Timestamp) -> f64 {
        let Some(last) = self.last_recorded_at else {
            return 0.0;
        };
        if now.0 - last.0 > STALE_AFTER_MICROS {
            return 0.0;
        }
        let elapsed = last.0 - self.started_at.0;
        let measured = terminal.saturating_sub(self.terminal_at_start);
        if elapsed >= MIN_WINDOW_MICROS || (self.previous_rate == 0.0 && measured > 0) {
            per_second(measured, elapsed)
        } else {
            self.previous_rate
        }
    }
}

fn per_second(items: u64, micros: i64) -> f64 {
    if micros <= 0 {
        return 0.0;
    }
    items as f64 * MICROS_PER_SECOND as f64 / micros as f64
}

/// Seconds until `pending` items are terminal at `rate` items per second, rounded up; `None`
/// when there is no rate or the batch is terminal.
pub(crate) fn eta_seconds(pending: u64, rate: f64, terminal: bool) -> Option<u64> {
    if terminal || rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    Some((pending as f64 / rate).ceil() as u64)
}

/// A batch's rate and ETA read at `now` from its window (top errors are added by the reads
/// that fetch them).
pub(crate) fn progress_of(batch: &Batch, window: &RateWindow, now: Timestamp) -> BatchProgress {
    let terminal = batch.succeeded_items + batch.failed_items + batch.cancelled_items;
    let rate = window.rate(terminal, now);
    BatchProgress {
        items_per_second: rate,
        eta_seconds: eta_seconds(batch.pending_items(), rate, batch.status.is_terminal()),
        top_errors: Vec::new(),
    }
}

/// A failure message as counted: cut to [`MAX_ERROR_MESSAGE_CHARS`] characters.
pub(crate) fn counted_message(message: &str) -> String {
    message.chars().take(MAX_ERROR_MESSAGE_CHARS).collect()
}

/// The failed items of a recorded chunk, by message (as counted), at most one entry per item.
pub(crate) fn chunk_errors(outcomes: &ChunkOutcomes) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for position in 0..outcomes.states.len() {
        if let crate::store::ItemState::Failed(message) = outcomes.item_state(position) {
            *counts.entry(counted_message(&message)).or_insert(0) += 1;
        }
    }
    counts
}

/// Where a chunk's failures go, given the messages its batch already counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorTally {
    /// Messages the batch counts already, with what to add.
    pub known: Vec<(String, u64)>,
    /// Messages new to the batch that fit under [`MAX_DISTINCT_ERRORS`], with their counts.
    pub new: Vec<(String, u64)>,
    /// Failures to count under [`OTHER_ERRORS`].
    pub other: u64,
}

/// Sorts a chunk's failures against the `stored` messages of its batch (`is_stored` says
/// whether one is among them; `stored_count` is how many there are).
pub(crate) fn tally_errors(
    chunk: BTreeMap<String, u64>,
    stored_count: usize,
    is_stored: impl Fn(&str) -> bool,
) -> ErrorTally {
    let mut tally = ErrorTally::default();
    let mut room = MAX_DISTINCT_ERRORS.saturating_sub(stored_count);
    // The chunk's most frequent new messages take the room left first.
    let mut chunk: Vec<(String, u64)> = chunk.into_iter().collect();
    chunk.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (message, count) in chunk {
        if is_stored(&message) {
            tally.known.push((message, count));
        } else if room > 0 {
            room -= 1;
            tally.new.push((message, count));
        } else {
            tally.other += count;
        }
    }
    tally
}

/// The [`TOP_ERRORS`] most frequent of a batch's counted messages (ties by message), the
/// other-errors bucket among them when it holds any.
pub(crate) fn top_errors(
    counts: impl IntoIterator<Item = (String, u64)>,
    other: u64,
) -> Vec<ErrorCount> {
    let mut all: Vec<ErrorCount> = counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(message, count)| ErrorCount { message, count })
        .collect();
    if other > 0 {
        all.push(ErrorCount {
            message: OTHER_ERRORS.to_owned(),
            count: other,
        });
    }
    all.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.message.cmp(&b.message))
    });
    all.truncate(TOP_ERRORS);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ItemOutcome;
    use crate::store::Unfinished;

    const S: i64 = MICROS_PER_SECOND;

    fn at(seconds: i64) -> Timestamp {
        Timestamp(1_000 * S + seconds * S)
    }

    #[test]
    fn a_batch_with_no_chunk_counted_has_no_rate() {
        let window = RateWindow::from_creation(at(0));
        assert_eq!(window.rate(0, at(30)), 0.0);
    }

    #[test]
    fn the_rate_is_the_windows_items_up_to_its_newest_chunk() {
        let mut window = RateWindow::from_creation(at(0));
        window.last_recorded_at = Some(at(10));
        assert_eq!(window.rate(500, at(10)), 50.0);
        assert_eq!(
            window.rate(500, at(20)),
            50.0,
            "reads between two chunks agree"
        );
    }

    #[test]
    fn a_young_window_reads_the_previous_windows_rate() {
        let mut window = RateWindow::from_creation(at(0));
        window.last_recorded_at = Some(at(59));
        let mut rolled = window.rolled(6_000, at(60));
        assert_eq!(rolled.previous_rate, 100.0);
        rolled.last_recorded_at = Some(at(61));
        assert_eq!(rolled.rate(6_010, at(61)), 100.0, "one second old");
        rolled.last_recorded_at = Some(at(64));
        assert_eq!(
            rolled.rate(6_000 + 4 * 300, at(64)),
            300.0,
            "old enough to read"
        );
    }

    #[test]
    fn the_first_window_reads_its_own_rate_while_young() {
        let mut window = RateWindow::from_creation(at(0));
        window.last_recorded_at = Some(at(2));
        assert_eq!(window.rate(20, at(2)), 10.0);
    }

    #[test]
    fn a_window_rolls_once_a_minute_old_and_only_then() {
        let window = RateWindow::from_creation(at(0));
        assert!(!window.is_due(at(59)));
        assert!(window.is_due(at(60)));
        let rolled = window.rolled(1_200, at(60));
        assert_eq!(
            (
                rolled.started_at,
                rolled.terminal_at_start,
                rolled.previous_rate
            ),
            (at(60), 1_200, 20.0)
        );
        assert!(!rolled.is_due(at(119)));
    }

    #[test]
    fn the_rate_reflects_the_last_minute_not_the_whole_run() {
        // Fast for the first minute, then slow: the rate read is the slow one.
        let window = RateWindow::from_creation(at(0)).rolled(60_000, at(60));
        let mut later = window.rolled(60_000 + 600, at(120));
        assert_eq!(later.previous_rate, 10.0);
        later.last_recorded_at = Some(at(125));
        assert_eq!(later.rate(60_600 + 50, at(125)), 10.0);
    }

    #[test]
    fn a_rate_decays_to_zero_a_minute_after_the_newest_chunk() {
        let mut window = RateWindow::from_creation(at(0));
        window.last_recorded_at = Some(at(10));
        assert!(window.rate(100, at(70)) > 0.0);
        assert_eq!(window.rate(100, at(71)), 0.0);
    }

    #[test]
    fn the_eta_is_pending_over_rate_rounded_up_and_absent_without_either() {
        assert_eq!(eta_seconds(100, 30.0, false), Some(4));
        assert_eq!(eta_seconds(0, 30.0, false), Some(0));
        assert_eq!(eta_seconds(100, 0.0, false), None);
        assert_eq!(eta_seconds(100, 30.0, true), None);
    }

    #[test]
    fn messages_are_counted_cut_to_two_hundred_characters() {
        let long = "x".repeat(500);
        assert_eq!(counted_message(&long).chars().count(), 200);
        let accented = "é".repeat(300);
        assert_eq!(counted_message(&accented).chars().count(), 200);
    }

    #[test]
    fn a_chunks_errors_are_its_failed_items_by_message() {
        let mut outcomes = ChunkOutcomes::new(4);
        outcomes.apply(0, &ItemOutcome::Failed("boom".into()));
        outcomes.apply(1, &ItemOutcome::Succeeded);
        outcomes.apply(2, &ItemOutcome::Failed("boom".into()));
        outcomes.settle(Unfinished::Failed(Some("timeout")));
        let errors = chunk_errors(&outcomes);
        assert_eq!(
            errors.into_iter().collect::<Vec<_>>(),
            vec![("boom".into(), 2), ("timeout".into(), 1)]
        );
    }

    #[test]
    fn new_messages_past_the_cap_go_to_other_errors() {
        let chunk: BTreeMap<String, u64> = [("a", 5), ("b", 1), ("c", 3), ("known", 2)]
            .into_iter()
            .map(|(m, c)| (m.to_owned(), c))
            .collect();
        let tally = tally_errors(chunk, MAX_DISTINCT_ERRORS - 1, |m| m == "known");
        assert_eq!(tally.known, vec![("known".to_owned(), 2)]);
        assert_eq!(
            tally.new,
            vec![("a".to_owned(), 5)],
            "the most frequent fits"
        );
        assert_eq!(tally.other, 4);
        let full = tally_errors(
            [("z".to_owned(), 1)].into_iter().collect(),
            MAX_DISTINCT_ERRORS,
            |_| false,
        );
        assert_eq!(full.other, 1);
        assert!(full.new.is_empty());
    }

    #[test]
    fn the_top_errors_are_the_ten_most_frequent_other_errors_included() {
        let counts = (0..15).map(|i| (format!("m{i:02}"), i as u64 + 1));
        let top = top_errors(counts, 12);
        assert_eq!(top.len(), TOP_ERRORS);
        assert_eq!(top[0].message, "m14");
        assert_eq!(top[0].count, 15);
        assert!(top
            .iter()
            .any(|e| e.message == OTHER_ERRORS && e.count == 12));
        assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
    }
}
