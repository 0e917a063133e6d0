//! The loop's timers: a min-heap of deadlines. Owners keep their own deadline and re-arm lazily,
//! so pushing back a deadline (the common case: activity on a socket) costs no heap operation.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKey {
    /// A slab entry (session, health check) with its generation, so a reused slot ignores
    /// timers armed by its previous occupant.
    Slot(usize, u32),
    /// Next active health check of backend `index` (generation of the backend slot).
    Health(usize, u32),
}

struct Entry {
    at: Instant,
    seq: u64,
    key: TimerKey,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// A min-heap of (deadline, key).
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

impl Timers {
    /// Arms `key` at `at`.
    pub fn add(&mut self, at: Instant, key: TimerKey) {
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

    /// Pops one timer due at `now` (its deadline and key).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        if self.heap.peek().is_some_and(|e| e.at <= now) {
            self.heap.pop().map(|e| (e.at, e.key))
        } else {
            None
        }
    }

    /// Number of armed entries (stale ones included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

/// A deadline owned by a session or check, re-armed lazily in [`Timers`].
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// When the owner times out (None: no deadline).
    pub at: Option<Instant>,
    /// The earliest heap entry armed for the owner and not yet fired.
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
    pub fn set(&mut self, timers: &mut Timers, at: Instant, key: TimerKey) {
        self.at = Some(at);
        if self.armed.is_none_or(|a| at < a) {
            timers.add(at, key);
            self.armed = Some(at);
        }
    }

    /// Called when a heap entry armed at `fired_at` fires: true if the owner timed out;
    /// otherwise re-arms at the current deadline if needed.
    pub fn fire(
        &mut self,
        timers: &mut Timers,
        fired_at: Instant,
        now: Instant,
        key: TimerKey,
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
                    timers.add(at, key);
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

    #[test]
    fn earliest_first_and_lazy_rearm() {
        let mut t = Timers::default();
        let t0 = Instant::now();
        let key = TimerKey::Slot(1, 0);
        let mut d = Deadline::none();
        d.set(&mut t, t0 + Duration::from_millis(10), key);
        // Pushing the deadline back does not touch the heap.
        d.set(&mut t, t0 + Duration::from_millis(50), key);
        assert_eq!(t.len(), 1);
        let now = t0 + Duration::from_millis(20);
        let (at, k) = t.pop_due(now).unwrap();
        assert_eq!(k, key);
        assert!(
            !d.fire(&mut t, at, now, key),
            "deadline moved: no timeout yet"
        );
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(50)));
        let now = t0 + Duration::from_millis(60);
        let (at, _) = t.pop_due(now).unwrap();
        assert!(d.fire(&mut t, at, now, key));
        assert!(t.pop_due(now).is_none());
    }
}
