//! When to restart a failed worker, and when to give up.
//!
//! Azure Functions restarts a crashed language worker until it has failed
//! 3 × N times within 30 minutes (N = the worker count), then recycles the
//! host. fnhost does the same: [`CrashBreaker`] counts failures over a
//! sliding window and trips past the limit, and each slot waits a
//! [`Backoff`] before its next start so a worker that dies at once cannot
//! become a fork storm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window failures are counted over.
pub const CRASH_WINDOW: Duration = Duration::from_secs(30 * 60);
/// Failures allowed per worker within the window.
pub const FAILURES_PER_WORKER: usize = 3;
/// A worker that ran this long before failing starts its backoff afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// The first retry after consecutive failures waits this long, doubling.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest wait between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Counts worker failures host-wide over [`CRASH_WINDOW`].
#[derive(Debug)]
pub struct CrashBreaker {
    limit: usize,
    failures: VecDeque<Instant>,
}

impl CrashBreaker {
    /// A breaker for `workers` workers: it trips on the
    /// `3 × workers + 1`th failure within the window.
    pub fn new(workers: usize) -> Self {
        Self {
            limit: FAILURES_PER_WORKER * workers.max(1),
            failures: VecDeque::new(),
        }
    }

    /// Failures allowed within the window.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Records a failure at `now`; returns the failures within the window
    /// and whether that is more than the limit.
    pub fn record(&mut self, now: Instant) -> (usize, bool) {
        while self
            .failures
            .front()
            .is_some_and(|&at| now.duration_since(at) > CRASH_WINDOW)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        (self.failures.len(), self.failures.len() > self.limit)
    }
}

/// One slot's restart delay: none after a first failure (a replacement
/// starts at once), then 250 ms doubling up to 10 s while failures follow
/// one another; reset by a worker that stayed up [`STABLE_AFTER`].
#[derive(Debug, Default)]
pub struct Backoff {
    consecutive: u32,
}

impl Backoff {
    /// Records a failure of a worker that ran for `uptime`; returns how
    /// long to wait before starting the next one.
    pub fn after_failure(&mut self, uptime: Duration) -> Duration {
        if uptime >= STABLE_AFTER {
            self.consecutive = 0;
        }
        self.consecutive += 1;
        if self.consecutive == 1 {
            return Duration::ZERO;
        }
        let doublings = (self.consecutive - 2).min(16);
        (BACKOFF_BASE * 2u32.pow(doublings)).min(BACKOFF_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_trips_past_three_failures_per_worker_in_the_window() {
        let mut breaker = CrashBreaker::new(2);
        let start = Instant::now();
        for n in 1..=6 {
            assert_eq!(breaker.record(start), (n, false));
        }
        assert_eq!(breaker.record(start), (7, true));

        let mut breaker = CrashBreaker::new(1);
        for _ in 0..3 {
            breaker.record(start);
        }
        // Failures older than the window no longer count.
        let later = start + CRASH_WINDOW + Duration::from_secs(1);
        assert_eq!(breaker.record(later), (1, false));
    }

    #[test]
    fn backoff_is_immediate_then_doubles_and_resets_after_a_stable_run() {
        let mut backoff = Backoff::default();
        let quick = Duration::from_millis(10);
        assert_eq!(backoff.after_failure(quick), Duration::ZERO);
        assert_eq!(backoff.after_failure(quick), Duration::from_millis(250));
        assert_eq!(backoff.after_failure(quick), Duration::from_millis(500));
        assert_eq!(backoff.after_failure(quick), Duration::from_secs(1));
        for _ in 0..10 {
            backoff.after_failure(quick);
        }
        assert_eq!(backoff.after_failure(quick), BACKOFF_MAX);
        assert_eq!(backoff.after_failure(STABLE_AFTER), Duration::ZERO);
    }
}
