//! Outlier ejection on answers (Envoy's `consecutive_5xx`): a worker that gives
//! `eject-consecutive-5xx` 5xx answers in a row is taken out for `eject-ms`, twice as long on
//! each repeat (at most [`MAX_EJECTION`]), and never more than `max-ejection-percent` of the
//! workers are out at once (rounded down: one worker alone is never ejected at 50%).
//!
//! The loop reports every answer with [`Outliers::on_answer`] (a 5xx the proxy made because of
//! the worker, 502/504, counts; a 503 from the queue does not, it never reached a worker), skips
//! workers for which [`Outliers::is_ejected`] holds when picking, and calls
//! [`Outliers::restore`] from its periodic tick to put back the workers whose time is up (and
//! begin their slow start).

use std::time::{Duration, Instant};

/// Longest ejection however often a worker was ejected (Envoy's `max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// A worker that stays in this long after an ejection starts over at `eject-ms`.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// The three settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// `eject-consecutive-5xx`: 5xx answers in a row that eject (0 = off).
    pub consecutive_5xx: u32,
    /// `eject-ms`: the first ejection's length.
    pub eject: Duration,
    /// `max-ejection-percent`: most workers out at once, in percent of the set.
    pub max_percent: u32,
}

/// What an answer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Kept,
    /// The worker is ejected until then (log it, close its idle pooled connections).
    Ejected {
        /// When it comes back.
        until: Instant,
    },
    /// It should be ejected but `max-ejection-percent` of the workers are out already.
    CapReached,
}

/// One worker's record.
#[derive(Clone, Copy, Debug, Default)]
struct Record {
    consecutive: u32,
    out_until: Option<Instant>,
    /// Ejections in the current run (the doubling); 0 after `FORGET_AFTER` in.
    repeats: u32,
    back_since: Option<Instant>,
    /// Ejections ever (for `/metrics`).
    total: u64,
}

/// The ejection state of every worker slot of one loop.
#[derive(Debug)]
pub struct Outliers {
    settings: OutlierSettings,
    slots: Vec<Record>,
    out: usize,
}

impl Outliers {
    /// No worker ejected.
    pub fn new(settings: OutlierSettings) -> Outliers {
        Outliers {
            settings,
            slots: Vec::new(),
            out: 0,
        }
    }

    /// New settings; ejections in progress keep their end time.
    pub fn set_settings(&mut self, settings: OutlierSettings) {
        self.settings = settings;
    }

    fn slot(&mut self, i: usize) -> &mut Record {
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Record::default());
        }
        &mut self.slots[i]
    }

    /// Forgets slot `i` (reused for another worker, or the worker left the set).
    pub fn reset(&mut self, i: usize) {
        if let Some(r) = self.slots.get_mut(i) {
            if r.out_until.is_some() {
                self.out -= 1;
            }
            *r = Record::default();
        }
    }

    /// Records an answer from worker `i` with `status`; `workers` is the size of the set the
    /// percentage is taken of (the workers in the active set).
    pub fn on_answer(&mut self, i: usize, status: u16, now: Instant, workers: usize) -> Verdict {
        let s = self.settings;
        let cap = workers.saturating_mul(s.max_percent.min(100) as usize) / 100;
        let out = self.out;
        let r = self.slot(i);
        if !(500..600).contains(&status) {
            r.consecutive = 0;
            return Verdict::Kept;
        }
        r.consecutive = r.consecutive.saturating_add(1);
        if s.consecutive_5xx == 0 || r.consecutive < s.consecutive_5xx || r.out_until.is_some() {
            return Verdict::Kept;
        }
        if out >= cap {
            return Verdict::CapReached;
        }
        if r.back_since
            .is_some_and(|b| now.saturating_duration_since(b) >= FORGET_AFTER)
        {
            r.repeats = 0;
        }
        let length = s
            .eject
            .saturating_mul(1u32 << r.repeats.min(16))
            .min(MAX_EJECTION.max(s.eject));
        let until = now + length;
        r.repeats = r.repeats.saturating_add(1);
        r.total += 1;
        r.consecutive = 0;
        r.out_until = Some(until);
        self.out += 1;
        Verdict::Ejected { until }
    }

    /// Whether worker `i` is ejected (not to be picked).
    pub fn is_ejected(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|r| r.out_until.is_some())
    }

    /// Puts back every worker whose ejection ended by `now`, handing each slot to `back`.
    pub fn restore(&mut self, now: Instant, mut back: impl FnMut(usize)) {
        for (i, r) in self.slots.iter_mut().enumerate() {
            if r.out_until.is_some_and(|until| until <= now) {
                r.out_until = None;
                r.back_since = Some(now);
                self.out -= 1;
                back(i);
            }
        }
    }

    /// When the next ejected worker comes back (the loop's next deadline for this).
    pub fn next_return(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|r| r.out_until).min()
    }

    /// Workers ejected now.
    pub fn ejected(&self) -> usize {
        self.out
    }

    /// Ejections of slot `i` since it was last reset (for `/metrics`).
    pub fn ejections(&self, i: usize) -> u64 {
        self.slots.get(i).map_or(0, |r| r.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(n: u32, pct: u32) -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: n,
            eject: Duration::from_secs(10),
            max_percent: pct,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ejects_after_consecutive_5xx_only() {
        let t0 = Instant::now();
        let mut o = Outliers::new(settings(3, 50));
        assert_eq!(o.on_answer(0, 500, t0, 4), Verdict::Kept);
        assert_eq!(o.on_answer(0, 502, t0, 4), Verdict::Kept);
        assert_eq!(
            o.on_answer(0, 200, t0, 4),
            Verdict::Kept,
            "a success resets"
        );
        assert_eq!(o.on_answer(0, 503, t0, 4), Verdict::Kept);
        assert_eq!(
            o.on_answer(0, 404, t0, 4),
            Verdict::Kept,
            "4xx is an answer"
        );
        for _ in 0..2 {
            o.on_answer(0, 500, t0, 4);
        }
        assert_eq!(
            o.on_answer(0, 500, t0, 4),
            Verdict::Ejected {
                until: t0 + secs(10)
            }
        );
        assert!(o.is_ejected(0));
        assert_eq!(o.ejected(), 1);
        assert_eq!(o.next_return(), Some(t0 + secs(10)));
        let mut back = Vec::new();
        o.restore(t0 + secs(9), |i| back.push(i));
        assert!(back.is_empty());
        o.restore(t0 + secs(10), |i| back.push(i));
        assert_eq!(back, [0]);
        assert!(!o.is_ejected(0));
        assert_eq!(o.ejections(0), 1);
    }

    #[test]
    fn doubles_on_repeat_then_forgets() {
        let t0 = Instant::now();
        let mut o = Outliers::new(settings(1, 100));
        let mut now = t0;
        let mut lengths = Vec::new();
        for _ in 0..7 {
            let Verdict::Ejected { until } = o.on_answer(0, 500, now, 1) else {
                panic!("not ejected");
            };
            lengths.push((until - now).as_secs());
            now = until;
            o.restore(now, |_| {});
        }
        assert_eq!(lengths, [10, 20, 40, 80, 160, 300, 300]);
        now += FORGET_AFTER;
        assert_eq!(
            o.on_answer(0, 500, now, 1),
            Verdict::Ejected {
                until: now + secs(10)
            }
        );
    }

    #[test]
    fn off_and_capped() {
        let t0 = Instant::now();
        let mut off = Outliers::new(settings(0, 100));
        assert!((0..100).all(|_| off.on_answer(0, 500, t0, 2) == Verdict::Kept));
        let mut o = Outliers::new(settings(1, 50));
        assert_eq!(o.on_answer(0, 500, t0, 1), Verdict::CapReached, "50% of 1");
        assert!(matches!(
            o.on_answer(0, 500, t0, 3),
            Verdict::Ejected { .. }
        ));
        assert_eq!(o.on_answer(1, 500, t0, 3), Verdict::CapReached);
        o.reset(0);
        assert_eq!(o.ejected(), 0);
        assert!(matches!(
            o.on_answer(1, 500, t0, 3),
            Verdict::Ejected { .. }
        ));
    }

    proptest! {
        /// Whatever the answers and settings: never more than the cap out at once, and the
        /// count of ejected workers matches the slots marked out.
        #[test]
        fn never_above_the_cap(
            n in 0u32..4,
            pct in 0u32..=100,
            workers in 1usize..8,
            answers in proptest::collection::vec((0usize..8, 200u16..600, 0u64..20), 0..200),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut o = Outliers::new(settings(n, pct));
            let cap = workers * pct as usize / 100;
            for (i, status, dt) in answers {
                now += secs(dt);
                o.restore(now, |_| {});
                o.on_answer(i % workers, status, now, workers);
                prop_assert!(o.ejected() <= cap);
                let marked = (0..workers).filter(|&w| o.is_ejected(w)).count();
                prop_assert_eq!(marked, o.ejected());
            }
        }
    }
}
