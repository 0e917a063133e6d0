//! `max-conn-per-worker` and the waiting queue (HAProxy's `maxconn` + queue).
//!
//! A worker holding `max-conn-per-worker` requests takes no new one. When no eligible worker
//! has a free slot, the request waits in the LB loop's one FIFO ([`WaitQueue`], at most
//! `queue-size` long). The loop's side of the contract:
//!
//! - a new request goes to a worker only while the queue is empty ([`WaitQueue::must_wait`]);
//!   otherwise it queues behind the earlier ones, so dispatch keeps arrival order;
//! - whenever a slot frees (the end of an upstream lease), the oldest waiter is popped and
//!   dispatched to the worker the balancer now picks;
//! - a full queue ([`Full`]) and an expired wait ([`WaitQueue::expire`]) are answered `503`
//!   with `Retry-After: `[`WaitQueue::retry_after_secs`];
//! - a client that leaves while queued is taken out with [`WaitQueue::remove`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// `max-conn-per-worker`: requests one worker may hold at once (0 = unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerLimit {
    max: u64,
}

impl WorkerLimit {
    /// The limit from the setting (0 = unlimited).
    pub fn new(max_conn_per_worker: u32) -> WorkerLimit {
        WorkerLimit {
            max: u64::from(max_conn_per_worker),
        }
    }

    /// Whether a worker with `in_flight` requests may take one more.
    pub fn admits(&self, in_flight: u64) -> bool {
        self.max == 0 || in_flight < self.max
    }

    /// Whether there is no limit (the queue then never fills: skip it entirely).
    pub fn unlimited(&self) -> bool {
        self.max == 0
    }
}

/// The queue was full: answer `503` with `Retry-After` now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A waiter leaving the queue, with how long it waited (for the access log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left<K> {
    /// The waiter's key (the caller's session key).
    pub key: K,
    /// Time spent queued.
    pub waited: Duration,
}

/// Cumulative queue figures for `/status` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests that entered the queue.
    pub queued: u64,
    /// Requests taken out to a worker.
    pub dispatched: u64,
    /// Requests answered 503 because their wait passed `queue-timeout-ms`.
    pub expired: u64,
    /// Requests answered 503 at once because the queue was full.
    pub rejected: u64,
    /// Requests whose client left while queued.
    pub cancelled: u64,
    /// Total time dispatched requests spent queued (mean = this / `dispatched`).
    pub wait_total: Duration,
    /// Longest time any dispatched request spent queued.
    pub wait_max: Duration,
}

/// One LB loop's FIFO of requests waiting for a worker slot, generic over the waiter's key.
#[derive(Debug)]
pub struct WaitQueue<K> {
    waiting: VecDeque<(K, Instant)>,
    capacity: usize,
    timeout: Duration,
    stats: QueueStats,
}

impl<K: PartialEq> WaitQueue<K> {
    /// An empty queue of at most `capacity` waiters, each waiting at most `timeout`.
    pub fn new(capacity: usize, timeout: Duration) -> WaitQueue<K> {
        WaitQueue {
            waiting: VecDeque::new(),
            capacity,
            timeout,
            stats: QueueStats::default(),
        }
    }

    /// New settings: waiters already queued stay (a smaller queue refuses until it is below
    /// the new size); the new timeout applies to them too, so the order of expiry is kept.
    pub fn set_limits(&mut self, capacity: usize, timeout: Duration) {
        self.capacity = capacity;
        self.timeout = timeout;
    }

    /// Whether a new request must queue behind waiters (arrival order) instead of being
    /// sent to a worker with a free slot.
    pub fn must_wait(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Queues `key` at the back; `Full` when `queue-size` waiters are there already.
    pub fn push(&mut self, key: K, now: Instant) -> Result<(), Full> {
        if self.waiting.len() >= self.capacity {
            self.stats.rejected += 1;
            return Err(Full);
        }
        self.waiting.push_back((key, now));
        self.stats.queued += 1;
        Ok(())
    }

    /// Takes the oldest waiter out for dispatch (a slot freed).
    pub fn pop(&mut self, now: Instant) -> Option<Left<K>> {
        let (key, since) = self.waiting.pop_front()?;
        let waited = now.saturating_duration_since(since);
        self.stats.dispatched += 1;
        self.stats.wait_total += waited;
        self.stats.wait_max = self.stats.wait_max.max(waited);
        Some(Left { key, waited })
    }

    /// Takes out every waiter whose wait reached the timeout, oldest first, handing each to
    /// `answer` (which answers it 503 with `Retry-After`).
    pub fn expire(&mut self, now: Instant, mut answer: impl FnMut(Left<K>)) {
        while let Some(left) = self.pop_expired(now) {
            answer(left);
        }
    }

    /// Takes out the oldest waiter if its wait reached the timeout (one at a time, so the
    /// caller can answer each as it goes).
    pub fn pop_expired(&mut self, now: Instant) -> Option<Left<K>> {
        let (_, since) = self.waiting.front()?;
        let waited = now.saturating_duration_since(*since);
        if waited < self.timeout {
            return None;
        }
        let (key, _) = self.waiting.pop_front()?;
        self.stats.expired += 1;
        Some(Left { key, waited })
    }

    /// Takes `key` out (its client left); whether it was queued.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(i) = self.waiting.iter().position(|(k, _)| k == key) else {
            return false;
        };
        self.waiting.remove(i);
        self.stats.cancelled += 1;
        true
    }

    /// When the oldest waiter expires (the loop's next deadline for the queue).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, since)| *since + self.timeout)
    }

    /// Waiters now (the queue depth).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// How long the oldest waiter has waited so far (zero when empty).
    pub fn oldest_wait(&self, now: Instant) -> Duration {
        self.waiting.front().map_or(Duration::ZERO, |(_, since)| {
            now.saturating_duration_since(*since)
        })
    }

    /// Cumulative figures.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// `Retry-After` seconds for a 503 from the queue: the queue timeout, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.timeout.as_millis().div_ceil(1000).max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn limit_zero_is_unlimited() {
        assert!(WorkerLimit::new(0).admits(u64::MAX - 1));
        assert!(WorkerLimit::new(0).unlimited());
        let one = WorkerLimit::new(1);
        assert!(one.admits(0));
        assert!(!one.admits(1));
        assert!(!one.unlimited());
    }

    #[test]
    fn dispatches_in_arrival_order_and_refuses_when_full() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(2, ms(5000));
        assert!(!q.must_wait());
        assert_eq!(q.push("a", t0), Ok(()));
        assert_eq!(q.push("b", t0 + ms(10)), Ok(()));
        assert_eq!(q.push("c", t0 + ms(20)), Err(Full));
        assert!(q.must_wait());
        assert_eq!(
            q.pop(t0 + ms(100)),
            Some(Left {
                key: "a",
                waited: ms(100)
            })
        );
        assert_eq!(q.pop(t0 + ms(110)).map(|l| l.key), Some("b"));
        assert_eq!(q.pop(t0 + ms(120)), None);
        let s = q.stats();
        assert_eq!((s.queued, s.dispatched, s.rejected), (2, 2, 1));
        assert_eq!(s.wait_total, ms(200));
        assert_eq!(s.wait_max, ms(100));
    }

    #[test]
    fn expiry_takes_only_the_late_ones() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(10, ms(1000));
        q.push(1, t0).unwrap();
        q.push(2, t0 + ms(400)).unwrap();
        q.push(3, t0 + ms(900)).unwrap();
        assert_eq!(q.next_expiry(), Some(t0 + ms(1000)));
        let mut late = Vec::new();
        q.expire(t0 + ms(999), |l| late.push(l.key));
        assert!(late.is_empty());
        q.expire(t0 + ms(1400), |l| late.push(l.key));
        assert_eq!(late, [1, 2]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.oldest_wait(t0 + ms(1400)), ms(500));
        assert_eq!(q.stats().expired, 2);
        assert_eq!(q.next_expiry(), Some(t0 + ms(1900)));
    }

    #[test]
    fn remove_and_retry_after() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(4, ms(5000));
        q.push(7, t0).unwrap();
        q.push(8, t0).unwrap();
        assert!(q.remove(&7));
        assert!(!q.remove(&7));
        assert_eq!(q.pop(t0).map(|l| l.key), Some(8));
        assert_eq!(q.stats().cancelled, 1);
        assert_eq!(q.retry_after_secs(), 5);
        q.set_limits(0, ms(1));
        assert_eq!(q.retry_after_secs(), 1);
        assert_eq!(q.push(9, t0), Err(Full), "queue-size 0: no queue");
        q.set_limits(4, ms(1500));
        assert_eq!(q.retry_after_secs(), 2);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u64),
        Pop(u64),
        Expire(u64),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..50).prop_map(Op::Push),
            (0u64..50).prop_map(Op::Pop),
            (0u64..500).prop_map(Op::Expire),
            (0usize..40).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Whatever the sizes and the order of events: never above capacity, dispatch and
        /// expiry in arrival order, every accepted waiter leaves exactly once.
        #[test]
        fn bounded_fifo_accounts_for_everyone(
            capacity in 0usize..8,
            timeout_ms in 1u64..300,
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut q = WaitQueue::new(capacity, ms(timeout_ms));
            let (mut next, mut accepted, mut left) = (0u32, 0u64, Vec::new());
            // Keys leaving by dispatch or expiry: those must leave in arrival order.
            let mut in_order = Vec::new();
            for op in ops {
                match op {
                    Op::Push(dt) => {
                        now += ms(dt);
                        if q.push(next, now).is_ok() {
                            accepted += 1;
                        }
                        next += 1;
                    }
                    Op::Pop(dt) => {
                        now += ms(dt);
                        if let Some(l) = q.pop(now) {
                            prop_assert!(l.waited <= now - t0);
                            left.push(l.key);
                            in_order.push(l.key);
                        }
                    }
                    Op::Expire(dt) => {
                        now += ms(dt);
                        q.expire(now, |l| {
                            left.push(l.key);
                            in_order.push(l.key);
                        });
                        prop_assert!(q.oldest_wait(now) < ms(timeout_ms) || q.is_empty());
                    }
                    Op::Remove(i) => {
                        if q.remove(&(i as u32)) {
                            left.push(i as u32);
                        }
                    }
                }
                prop_assert!(q.len() <= capacity);
            }
            let s = q.stats();
            prop_assert_eq!(s.queued, accepted);
            prop_assert_eq!(
                s.dispatched + s.expired + s.cancelled + q.len() as u64,
                accepted
            );
            prop_assert!(in_order.windows(2).all(|w| w[0] < w[1]), "{:?}", in_order);
            let mut seen = left.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), left.len(), "a waiter left twice");
        }
    }
}
