//! Retry budget (`retry-budget-percent`, as Linkerd's and Finagle's): retries (a connect
//! failure, an idempotent request with no answer) are allowed while the retries of the last
//! [`WINDOW`] stay within that percentage of the requests of the same window, plus a floor of
//! [`MIN_RETRIES_PER_SEC`] a second so a quiet loop can still retry. A sick cluster is then hit
//! at most `1 + percent/100` times as hard, not `1 + retries` times.
//!
//! The loop calls [`RetryBudget::on_request`] once per request (first attempts only) and
//! [`RetryBudget::try_retry`] before each retry, naming the worker whose failure caused it;
//! a refused retry answers as if retries were exhausted.

use std::time::{Duration, Instant};

/// How far back requests and retries are counted.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Buckets of the sliding window (one a second).
const BUCKETS: usize = 10;
/// Retries always allowed per second of the window, whatever the traffic.
pub const MIN_RETRIES_PER_SEC: u64 = 10;

/// One second's counts.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Seconds since the budget's origin this bucket counts.
    second: u64,
    requests: u64,
    retries: u64,
}

/// The sliding window of one loop, and its retries per worker slot.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    origin: Instant,
    buckets: [Bucket; BUCKETS],
    /// Retries caused by each worker slot (for `/metrics`).
    by_worker: Vec<u64>,
    /// Retries refused for lack of budget.
    refused: u64,
}

impl RetryBudget {
    /// An empty window; `origin` is any instant not after the first event.
    pub fn new(percent: u32, origin: Instant) -> RetryBudget {
        RetryBudget {
            percent: u64::from(percent),
            origin,
            buckets: [Bucket::default(); BUCKETS],
            by_worker: Vec::new(),
            refused: 0,
        }
    }

    /// New `retry-budget-percent`.
    pub fn set_percent(&mut self, percent: u32) {
        self.percent = u64::from(percent);
    }

    /// The bucket counting `now`, emptied if it last counted an older second.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let b = &mut self.buckets[(second % BUCKETS as u64) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                ..Bucket::default()
            };
        }
        b
    }

    /// Requests and retries of the window ending at `now`.
    pub fn window(&self, now: Instant) -> (u64, u64) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        self.buckets
            .iter()
            .filter(|b| b.second + (BUCKETS as u64) > second && b.second <= second)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
    }

    /// Retries the window ending at `now` allows in all.
    pub fn allowance(&self, now: Instant) -> u64 {
        let (requests, _) = self.window(now);
        MIN_RETRIES_PER_SEC * WINDOW.as_secs() + requests.saturating_mul(self.percent) / 100
    }

    /// Counts one request (a first attempt).
    pub fn on_request(&mut self, now: Instant) {
        self.bucket(now).requests += 1;
    }

    /// Whether a retry after worker `failed` failed may go ahead; counted when it may.
    pub fn try_retry(&mut self, now: Instant, failed: usize) -> bool {
        let (_, retries) = self.window(now);
        if retries >= self.allowance(now) {
            self.refused += 1;
            return false;
        }
        self.bucket(now).retries += 1;
        if failed >= self.by_worker.len() {
            self.by_worker.resize(failed + 1, 0);
        }
        self.by_worker[failed] += 1;
        true
    }

    /// Retries caused by worker slot `i` since it was last reset.
    pub fn retries_of(&self, i: usize) -> u64 {
        self.by_worker.get(i).copied().unwrap_or(0)
    }

    /// Forgets slot `i`'s count (reused for another worker).
    pub fn reset(&mut self, i: usize) {
        if let Some(n) = self.by_worker.get_mut(i) {
            *n = 0;
        }
    }

    /// Retries refused for lack of budget, ever.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const FLOOR: u64 = MIN_RETRIES_PER_SEC * 10;

    #[test]
    fn floor_then_percentage() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(20, t0);
        let allowed = (0..1000).filter(|_| b.try_retry(t0, 0)).count() as u64;
        assert_eq!(allowed, FLOOR, "no requests: the floor only");
        assert_eq!(b.refused(), 1000 - FLOOR);
        for _ in 0..1000 {
            b.on_request(t0 + ms(500));
        }
        let more = (0..1000).filter(|_| b.try_retry(t0 + ms(500), 1)).count();
        assert_eq!(more, 200, "20% of 1000 requests");
        assert_eq!(b.retries_of(0), FLOOR);
        assert_eq!(b.retries_of(1), 200);
        b.reset(1);
        assert_eq!(b.retries_of(1), 0);
        assert_eq!(b.window(t0 + ms(900)), (1000, FLOOR + 200));
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0, t0);
        assert!((0..FLOOR).all(|_| b.try_retry(t0, 0)));
        assert!(!b.try_retry(t0 + ms(9_999), 0), "still in the window");
        assert!(b.try_retry(t0 + ms(10_000), 0), "the first second left it");
        assert_eq!(b.window(t0 + ms(10_000)), (0, 1));
        b.set_percent(100);
        for _ in 0..5 {
            b.on_request(t0 + ms(30_000));
        }
        assert_eq!(b.allowance(t0 + ms(30_000)), FLOOR + 5);
    }

    proptest! {
        /// For any percentage and traffic: the ring of buckets counts exactly what a plain
        /// list of events within the last ten seconds holds, and a retry goes ahead exactly
        /// when the window's retries are below the floor plus the percentage of its requests.
        #[test]
        fn window_matches_a_plain_count_and_gates_retries(
            percent in 0u32..=100,
            events in proptest::collection::vec((any::<bool>(), 0u64..700), 0..600),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = RetryBudget::new(percent, t0);
            let mut log: Vec<(u64, bool)> = Vec::new();
            for (is_retry, dt) in events {
                now += ms(dt);
                let second = (now - t0).as_secs();
                let recent = |log: &[(u64, bool)], retry: bool| {
                    log.iter().filter(|(s, r)| *s + 10 > second && *r == retry).count() as u64
                };
                let (requests, retries) = (recent(&log, false), recent(&log, true));
                prop_assert_eq!(b.window(now), (requests, retries));
                if is_retry {
                    let allowed = retries < FLOOR + requests * u64::from(percent) / 100;
                    prop_assert_eq!(b.try_retry(now, 3), allowed);
                    if allowed {
                        log.push((second, true));
                    }
                } else {
                    b.on_request(now);
                    log.push((second, false));
                }
            }
        }
    }
}
