//! `Policies`: every traffic policy of one LB loop together, built from the settings and
//! indexed by backend slot. The lease (`super::super::lease`) and the balancer
//! (`super::super::backends`) ask it; the loop (`server`) restores ejected workers on its tick
//! and resets a slot when the backend set changes.
//!
//! With every policy off (the defaults, except the retry budget) a request costs a few
//! comparisons here: no allocation, no clock read (time is the loop's `now`).

use std::time::{Duration, Instant};

use super::outlier::{OutlierSettings, Outliers, Verdict};
use super::queue::{Full, Left, QueueStats, WaitQueue, WorkerLimit};
use super::retry_budget::RetryBudget;
use super::slow_start::{SCALE, SlowStart, less_loaded};
use crate::config::ProxySettings;
use crate::evloop::Key;

/// The policies of one loop.
#[derive(Debug)]
pub struct Policies {
    /// `slow-start-ms`; zero = off.
    slow_window: Duration,
    /// Ramps by slot (grown on the first ramp of a slot, never per request).
    ramps: Vec<SlowStart>,
    outliers: Outliers,
    /// `eject-consecutive-5xx`; zero = ejection off.
    eject_threshold: u32,
    /// `Outliers::next_return`, cached so the loop's tick looks at one field.
    next_return: Option<Instant>,
    budget: RetryBudget,
    /// `max-conn-per-worker`.
    limit: WorkerLimit,
    /// Requests (their sessions' keys) waiting for a worker slot.
    queue: WaitQueue<Key>,
}

fn outlier_settings(s: &ProxySettings) -> OutlierSettings {
    OutlierSettings {
        consecutive_5xx: s.eject_consecutive_5xx,
        eject: Duration::from_millis(s.eject_ms),
        max_percent: s.max_ejection_percent,
    }
}

impl Policies {
    /// The policies `settings` ask for; no worker ramping or ejected.
    pub fn new(settings: &ProxySettings, now: Instant) -> Policies {
        Policies {
            slow_window: Duration::from_millis(settings.slow_start_ms),
            ramps: Vec::new(),
            outliers: Outliers::new(outlier_settings(settings)),
            eject_threshold: settings.eject_consecutive_5xx,
            next_return: None,
            budget: RetryBudget::new(settings.retry_budget_percent, now),
            limit: WorkerLimit::new(settings.max_conn_per_worker),
            queue: WaitQueue::new(
                settings.queue_size as usize,
                Duration::from_millis(settings.queue_timeout_ms),
            ),
        }
    }

    /// New settings; ramps and ejections in progress go on (with the new lengths).
    pub fn set_settings(&mut self, settings: &ProxySettings) {
        self.slow_window = Duration::from_millis(settings.slow_start_ms);
        self.outliers.set_settings(outlier_settings(settings));
        self.eject_threshold = settings.eject_consecutive_5xx;
        self.budget.set_percent(settings.retry_budget_percent);
        self.limit = WorkerLimit::new(settings.max_conn_per_worker);
        self.queue.set_limits(
            settings.queue_size as usize,
            Duration::from_millis(settings.queue_timeout_ms),
        );
    }

    /// Forgets slot `i`: its backend left the set or the slot now holds another one.
    pub fn reset(&mut self, i: usize) {
        if let Some(r) = self.ramps.get_mut(i) {
            r.cancel();
        }
        self.outliers.reset(i);
        self.next_return = self.outliers.next_return();
        self.budget.reset(i);
    }

    /// Worker `i` turned healthy at `now` (joined a serving set, back from down or ejected):
    /// it ramps up when slow start is on.
    pub fn begin_ramp(&mut self, i: usize, now: Instant) {
        if self.slow_window.is_zero() {
            return;
        }
        if i >= self.ramps.len() {
            self.ramps.resize(i + 1, SlowStart::default());
        }
        self.ramps[i].begin(now, self.slow_window);
    }

    /// Whether slow start is on.
    pub fn slow_start_on(&self) -> bool {
        !self.slow_window.is_zero()
    }

    /// Round-robin: whether worker `i` takes the turn that came to it (always when not
    /// ramping).
    pub fn take_turn(&mut self, i: usize, now: Instant) -> bool {
        let window = self.slow_window;
        if window.is_zero() {
            return true;
        }
        self.ramps
            .get_mut(i)
            .is_none_or(|r| r.take_turn(now, window))
    }

    /// Weighted: worker `i`'s weight for the balancer (`weight` when slow start is off,
    /// else in thousandths, ramping or not, so every worker is on the same scale).
    pub fn weight(&self, i: usize, weight: u32, now: Instant) -> u64 {
        let window = self.slow_window;
        if window.is_zero() {
            return u64::from(weight.max(1));
        }
        match self.ramps.get(i) {
            Some(r) => r.effective_weight(weight, now, window),
            None => u64::from(weight.max(1)) * SCALE,
        }
    }

    /// Least-connections: whether worker `a` with `a_in_flight` requests is less loaded than
    /// `b` (in-flight counts relative to the ramp's share; plain counts when not ramping).
    pub fn less_loaded(&self, a: (usize, u64), b: (usize, u64), now: Instant) -> bool {
        let window = self.slow_window;
        if window.is_zero() {
            return a.1 < b.1;
        }
        let share = |i: usize| self.ramps.get(i).map_or(SCALE, |r| r.permille(now, window));
        less_loaded((a.1, share(a.0)), (b.1, share(b.0)))
    }

    /// Whether worker `i` is ejected (not to be picked).
    pub fn is_ejected(&self, i: usize) -> bool {
        self.next_return.is_some() && self.outliers.is_ejected(i)
    }

    /// Records an answer of worker `i` (`workers`: size of the active set); what it did.
    /// Nothing is recorded while ejection is off.
    pub fn on_answer(&mut self, i: usize, status: u16, now: Instant, workers: usize) -> Verdict {
        if !self.ejection_on() {
            return Verdict::Kept;
        }
        let verdict = self.outliers.on_answer(i, status, now, workers);
        if let Verdict::Ejected { until } = verdict {
            self.next_return = Some(self.next_return.map_or(until, |t| t.min(until)));
            if let Some(r) = self.ramps.get_mut(i) {
                r.cancel();
            }
        }
        verdict
    }

    /// Whether `eject-consecutive-5xx` is set.
    pub fn ejection_on(&self) -> bool {
        self.eject_threshold > 0
    }

    /// When the next ejected worker comes back.
    pub fn next_return(&self) -> Option<Instant> {
        self.next_return
    }

    /// Puts back the workers whose ejection ended by `now` (each begins its ramp) and hands
    /// each slot to `back`.
    pub fn restore(&mut self, now: Instant, mut back: impl FnMut(usize)) {
        if self.next_return.is_none_or(|t| t > now) {
            return;
        }
        let (ramps, window) = (&mut self.ramps, self.slow_window);
        self.outliers.restore(now, |i| {
            back(i);
            if !window.is_zero() {
                if i >= ramps.len() {
                    ramps.resize(i + 1, SlowStart::default());
                }
                ramps[i].begin(now, window);
            }
        });
        self.next_return = self.outliers.next_return();
    }

    /// Counts one request (a first attempt).
    pub fn on_request(&mut self, now: Instant) {
        self.budget.on_request(now);
    }

    /// Whether a retry after worker `failed` failed may go ahead (counted when it may).
    pub fn try_retry(&mut self, now: Instant, failed: usize) -> bool {
        self.budget.try_retry(now, failed)
    }

    /// Retries caused by worker slot `i`.
    pub fn retries_of(&self, i: usize) -> u64 {
        self.budget.retries_of(i)
    }

    /// Retries refused for lack of budget.
    pub fn retries_refused(&self) -> u64 {
        self.budget.refused()
    }

    /// Ejections of slot `i`.
    pub fn ejections(&self, i: usize) -> u64 {
        self.outliers.ejections(i)
    }

    /// Workers ejected now.
    pub fn ejected(&self) -> usize {
        self.outliers.ejected()
    }

    /// Whether `max-conn-per-worker` is set (else the queue is never used).
    pub fn limited(&self) -> bool {
        !self.limit.unlimited()
    }

    /// Whether a worker with `in_flight` requests may take one more.
    pub fn admits(&self, in_flight: u64) -> bool {
        self.limit.admits(in_flight)
    }

    /// Queues the session `key` behind the earlier waiters; `Full` at `queue-size`.
    pub fn enqueue(&mut self, key: Key, now: Instant) -> Result<(), Full> {
        self.queue.push(key, now)
    }

    /// The oldest waiter, for dispatch (a slot is free).
    pub fn dequeue(&mut self, now: Instant) -> Option<Left<Key>> {
        self.queue.pop(now)
    }

    /// The oldest waiter if its wait passed `queue-timeout-ms` (answered 503).
    pub fn dequeue_expired(&mut self, now: Instant) -> Option<Left<Key>> {
        self.queue.pop_expired(now)
    }

    /// Takes the session `key` out of the queue (its client left).
    pub fn leave_queue(&mut self, key: Key) {
        self.queue.remove(&key);
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the oldest waiter's wait ends.
    pub fn next_queue_expiry(&self) -> Option<Instant> {
        self.queue.next_expiry()
    }

    /// The queue's cumulative figures.
    pub fn queue_stats(&self) -> QueueStats {
        self.queue.stats()
    }

    /// `Retry-After` seconds of a 503 from the queue.
    pub fn retry_after_secs(&self) -> u64 {
        self.queue.retry_after_secs()
    }
}
