//! When a failed delivery is tried again: exponential backoff with jitter, capped, until the
//! retry window (counted from the transition) closes.

use std::time::Duration;

use crate::domain::Timestamp;

/// The retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The delay after the first failure (before jitter).
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// How long after the transition attempts may still be made.
    pub max_age: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetrySchedule {
    /// When attempt `attempts + 1` is due after attempt `attempts` failed at `now`, or `None`
    /// when that is past the window of a transition made at `since`. The delay doubles per
    /// attempt up to `max_delay`; half of it is random ("equal jitter"), so receivers that
    /// failed together are not retried together.
    pub fn next(&self, since: Timestamp, attempts: u32, now: Timestamp) -> Option<Timestamp> {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let delay = doubled.min(self.max_delay);
        let half = delay / 2;
        let jitter = half.mul_f64(rand::random::<f64>());
        let due = Timestamp(now.0.saturating_add((half + jitter).as_micros() as i64));
        let closes = Timestamp(since.0.saturating_add(self.max_age.as_micros() as i64));
        (due <= closes).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_up_to_the_cap_with_at_most_half_of_jitter() {
        let schedule = RetrySchedule {
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            max_age: Duration::from_secs(24 * 3600),
        };
        let at = |attempts| {
            schedule
                .next(Timestamp(0), attempts, Timestamp(0))
                .unwrap()
                .0
        };
        for _ in 0..100 {
            assert!((5_000_000..=10_000_000).contains(&at(1)));
            assert!((10_000_000..=20_000_000).contains(&at(2)));
            assert!((30_000_000..=60_000_000).contains(&at(8)));
            assert!((30_000_000..=60_000_000).contains(&at(1000)));
        }
    }

    #[test]
    fn no_attempt_is_due_past_the_window() {
        let schedule = RetrySchedule {
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(10),
            max_age: Duration::from_secs(60),
        };
        assert!(schedule
            .next(Timestamp(0), 1, Timestamp(40_000_000))
            .is_some());
        assert_eq!(schedule.next(Timestamp(0), 1, Timestamp(60_000_000)), None);
    }
}
