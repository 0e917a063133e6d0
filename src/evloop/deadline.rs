//! The loop's deadlines: one min-heap of (instant, key). An owner (a connection, a check)
//! keeps its current [`Deadline`] and re-arms lazily: pushing the deadline later (activity on
//! a socket, the common case) costs no heap operation; an entry that fires early re-arms at
//! the current deadline. Entries of owners that are gone stay in the heap until they fire, so
//! the heap is swept when it has doubled since the last sweep ([`DeadlineHeap::sweep`]):
//! connection churn cannot grow it for a whole timeout, at amortised O(1) per entry.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// The heap is never swept below this size (a sweep of a small heap saves nothing).
pub const SWEEP_MIN: usize = 4096;

struct Entry<K> {
    at: Instant,
    /// Insertion order: entries due at the same instant fire first-in, first-out.
    seq: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Entry<K> {
    // Reversed: BinaryHeap is a max-heap and the earliest deadline goes on top.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// A min-heap of (deadline, key).
pub struct DeadlineHeap<K> {
    heap: BinaryHeap<Entry<K>>,
    seq: u64,
    /// Size above which the next [`DeadlineHeap::sweep`] runs.
    sweep_at: usize,
}

impl<K> Default for DeadlineHeap<K> {
    fn default() -> DeadlineHeap<K> {
        DeadlineHeap::new()
    }
}

impl<K> DeadlineHeap<K> {
    /// An empty heap.
    pub fn new() -> DeadlineHeap<K> {
        DeadlineHeap {
            heap: BinaryHeap::new(),
            seq: 0,
            sweep_at: SWEEP_MIN,
        }
    }

    /// Arms `key` at `at`.
    pub fn push(&mut self, at: Instant, key: K) {
        self.seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            key,
        });
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// Pops one entry due at `now`: its deadline and key.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        if self.heap.peek().is_some_and(|e| e.at <= now) {
            self.heap.pop().map(|e| (e.at, e.key))
        } else {
            None
        }
    }

    /// Entries armed, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// When the heap has doubled since the last sweep (and holds at least [`SWEEP_MIN`]),
    /// drops every entry `live(at, key)` says can no longer do anything. Call once per loop
    /// turn; returns how many entries were dropped.
    pub fn sweep(&mut self, mut live: impl FnMut(Instant, &K) -> bool) -> usize {
        if self.heap.len() <= self.sweep_at {
            return 0;
        }
        let before = self.heap.len();
        self.heap.retain(|e| live(e.at, &e.key));
        self.sweep_at = (2 * self.heap.len()).max(SWEEP_MIN);
        before - self.heap.len()
    }
}

/// A deadline owned by one owner, re-armed lazily in a [`DeadlineHeap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadline {
    /// When the owner times out (None: no deadline).
    pub at: Option<Instant>,
    /// The earliest heap entry armed for the owner and not fired yet.
    armed: Option<Instant>,
}

impl Deadline {
    /// No deadline.
    pub const fn none() -> Deadline {
        Deadline {
            at: None,
            armed: None,
        }
    }

    /// Sets the deadline; pushes a heap entry only if none is armed at or before `at`.
    pub fn set<K>(&mut self, heap: &mut DeadlineHeap<K>, at: Instant, key: K) {
        self.at = Some(at);
        if self.armed.is_none_or(|a| at < a) {
            heap.push(at, key);
            self.armed = Some(at);
        }
    }

    /// Removes the deadline (its heap entry, if any, fires and finds nothing to do).
    pub fn clear(&mut self) {
        self.at = None;
    }

    /// Whether the heap entry armed at `at` is this deadline's live one (for sweeps: any
    /// other entry of the owner is superseded).
    pub fn is_armed_at(&self, at: Instant) -> bool {
        self.armed == Some(at)
    }

    /// A heap entry armed at `fired_at` fired: true if the owner timed out (the deadline is
    /// then cleared); otherwise re-arms at the current deadline if needed.
    pub fn fire<K>(
        &mut self,
        heap: &mut DeadlineHeap<K>,
        fired_at: Instant,
        now: Instant,
        key: K,
    ) -> bool {
        if self.armed == Some(fired_at) {
            self.armed = None;
        }
        match self.at {
            Some(at) if at <= now => {
                self.at = None;
                true
            }
            Some(at) => {
                if self.armed.is_none() {
                    heap.push(at, key);
                    self.armed = Some(at);
                }
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn earliest_first_then_insertion_order() {
        let t0 = Instant::now();
        let mut h = DeadlineHeap::new();
        h.push(t0 + ms(30), "c");
        h.push(t0 + ms(10), "a");
        h.push(t0 + ms(20), "b1");
        h.push(t0 + ms(20), "b2");
        assert_eq!(h.next(), Some(t0 + ms(10)));
        assert_eq!(h.pop_due(t0 + ms(5)), None, "nothing due yet");
        let order: Vec<&str> =
            std::iter::from_fn(|| h.pop_due(t0 + ms(30)).map(|(_, k)| k)).collect();
        assert_eq!(order, ["a", "b1", "b2", "c"]);
        assert!(h.is_empty());
    }

    #[test]
    fn lazy_rearm() {
        let t0 = Instant::now();
        let mut h = DeadlineHeap::new();
        let mut d = Deadline::none();
        d.set(&mut h, t0 + ms(10), 1u32);
        // Pushed later (activity): the heap is not touched.
        d.set(&mut h, t0 + ms(50), 1);
        assert_eq!(h.len(), 1);
        let now = t0 + ms(20);
        let (at, k) = h.pop_due(now).unwrap();
        assert_eq!(k, 1);
        assert!(!d.fire(&mut h, at, now, k), "moved: no timeout yet");
        assert_eq!(
            h.next(),
            Some(t0 + ms(50)),
            "re-armed at the current deadline"
        );
        // Pulled earlier: a new entry.
        d.set(&mut h, t0 + ms(40), 1);
        assert_eq!(h.len(), 2);
        let now = t0 + ms(45);
        let (at, _) = h.pop_due(now).unwrap();
        assert!(d.fire(&mut h, at, now, 1));
        assert_eq!(d.at, None);
        // The superseded entry at 50 fires later and finds nothing.
        let (at, _) = h.pop_due(t0 + ms(60)).unwrap();
        assert!(!d.fire(&mut h, at, t0 + ms(60), 1));
        assert!(h.is_empty());
    }

    #[test]
    fn cleared_deadline_never_fires() {
        let t0 = Instant::now();
        let mut h = DeadlineHeap::new();
        let mut d = Deadline::none();
        d.set(&mut h, t0 + ms(10), ());
        d.clear();
        let (at, _) = h.pop_due(t0 + ms(10)).unwrap();
        assert!(!d.fire(&mut h, at, t0 + ms(10), ()));
        assert!(h.is_empty());
    }

    #[test]
    fn sweep_runs_when_doubled_and_keeps_live_entries() {
        let t0 = Instant::now();
        let mut h = DeadlineHeap::new();
        // Owners 0..n; only even owners are still alive.
        let n = SWEEP_MIN as u64;
        for i in 0..n {
            h.push(t0 + ms(i), i);
        }
        assert_eq!(h.sweep(|_, k| k % 2 == 0), 0, "not above the minimum yet");
        h.push(t0 + ms(n), n);
        let dropped = h.sweep(|_, k| k % 2 == 0);
        assert_eq!(dropped, (n / 2) as usize);
        assert_eq!(h.len(), (n / 2 + 1) as usize);
        // The next sweep waits for the heap to double again (but not below the minimum).
        for i in 0..n / 2 {
            h.push(t0 + ms(i), 1);
        }
        assert_eq!(h.sweep(|_, _| false), 0);
        let mut all = Vec::new();
        while let Some((_, k)) = h.pop_due(t0 + ms(2 * n)) {
            all.push(k);
        }
        assert!(all.iter().filter(|&&k| k != 1).all(|k| k % 2 == 0));
    }

    #[test]
    fn churn_cannot_grow_the_heap() {
        // Connections open, arm a long deadline and close, over and over: the sweep bounds
        // the heap however many came and went.
        let t0 = Instant::now();
        let mut h = DeadlineHeap::new();
        let mut alive = std::collections::HashSet::new();
        for i in 0..100_000u64 {
            h.push(t0 + ms(60_000), i);
            alive.insert(i);
            if i >= 10 {
                alive.remove(&(i - 10));
            }
            h.sweep(|_, k| alive.contains(k));
            assert!(h.len() <= 2 * SWEEP_MIN + 1);
        }
    }

    #[test]
    fn sweep_with_owner_deadlines() {
        let t0 = Instant::now();
        let mut h = DeadlineHeap::new();
        let mut owners = vec![Deadline::none(); 10];
        for _ in 0..SWEEP_MIN {
            for (i, d) in owners.iter_mut().enumerate() {
                // Each owner pulls its deadline earlier: every entry but the last is stale.
                let at = d.at.map_or(t0 + ms(1_000_000), |a| a - ms(1));
                d.set(&mut h, at, i);
            }
        }
        h.sweep(|at, &i| owners[i].is_armed_at(at));
        assert_eq!(h.len(), owners.len());
    }
}
