//! Slow start (`slow-start-ms`, HAProxy's `slowstart`): a worker that turns healthy (added to a
//! running set, or back from down or ejected) gets a share of traffic that ramps linearly from
//! [`START_PERMILLE`] of its weight to all of it over the window.
//!
//! One [`SlowStart`] per worker. How each balancer uses it:
//!
//! - `weighted`: smooth weighted round-robin over [`SlowStart::effective_weight`] (weights in
//!   thousandths, so a ramping weight of 1 is not rounded to nothing);
//! - `round-robin`: a worker whose turn comes asks [`SlowStart::take_turn`] and is passed over
//!   when it says no (credit carried across turns: at 10% it takes one turn in ten); if a
//!   whole rotation passes everyone over, the first eligible worker is taken;
//! - `least-connections`: in-flight counts compared relative to the effective weight with
//!   [`less_loaded`] (equal weights give the plain comparison).
//!
//! The initial set of a loop does not ramp (every worker would, so none would be favoured):
//! call [`SlowStart::begin`] only for a worker joining a set that already serves, or on its
//! way back from down or ejected.

use std::time::{Duration, Instant};

/// Effective weights are in thousandths of a configured weight.
pub const SCALE: u64 = 1000;
/// Share of its weight (in thousandths) a ramping worker starts from (10%, as Envoy's
/// `min_weight_percent`): a new worker gets some traffic at once, so it warms up.
pub const START_PERMILLE: u64 = 100;

/// One worker's ramp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowStart {
    /// When the ramp began; None when not ramping (off, done or never begun).
    since: Option<Instant>,
    /// Round-robin turns owed, in thousandths of a turn.
    credit: u64,
}

impl SlowStart {
    /// The worker turned healthy at `now`; a zero window (`slow-start-ms: 0`) means no ramp.
    pub fn begin(&mut self, now: Instant, window: Duration) {
        self.since = (!window.is_zero()).then_some(now);
        self.credit = 0;
    }

    /// Stops any ramp (the worker went down or left).
    pub fn cancel(&mut self) {
        *self = SlowStart::default();
    }

    /// Share of its weight the worker gets at `now`, in thousandths (1000 = all of it).
    pub fn permille(&self, now: Instant, window: Duration) -> u64 {
        let Some(since) = self.since else {
            return SCALE;
        };
        let elapsed = now.saturating_duration_since(since);
        if window.is_zero() || elapsed >= window {
            return SCALE;
        }
        let done = elapsed.as_nanos() * u128::from(SCALE - START_PERMILLE) / window.as_nanos();
        START_PERMILLE + u64::try_from(done).unwrap_or(SCALE)
    }

    /// Whether the worker is still ramping at `now`.
    pub fn ramping(&self, now: Instant, window: Duration) -> bool {
        self.permille(now, window) < SCALE
    }

    /// The weight the balancer uses, in thousandths: `weight * SCALE` once ramped.
    pub fn effective_weight(&self, weight: u32, now: Instant, window: Duration) -> u64 {
        u64::from(weight.max(1)) * self.permille(now, window)
    }

    /// Round-robin: whether the worker takes the turn that came to it. A ramped worker always
    /// does; a ramping one takes its share of turns, evenly spread.
    pub fn take_turn(&mut self, now: Instant, window: Duration) -> bool {
        let share = self.permille(now, window);
        if share >= SCALE {
            self.since = None;
            self.credit = 0;
            return true;
        }
        self.credit += share;
        if self.credit >= SCALE {
            self.credit -= SCALE;
            true
        } else {
            false
        }
    }
}

/// Least-connections with weights: whether a worker with `a = (in_flight, effective_weight)`
/// is less loaded than one with `b`. Compares `(in_flight + 1) / weight` without dividing.
pub fn less_loaded(a: (u64, u64), b: (u64, u64)) -> bool {
    // a.0 + 1     b.0 + 1
    // -------  <  -------   with both sides multiplied by a.1 * b.1.
    let cross = |in_flight: u64, other_weight: u64| {
        u128::from(in_flight.saturating_add(1)) * u128::from(other_weight.max(1))
    };
    cross(a.0, b.1) < cross(b.0, a.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ramps_linearly_from_the_start_share() {
        let t0 = Instant::now();
        let w = ms(10_000);
        let mut s = SlowStart::default();
        assert_eq!(s.permille(t0, w), SCALE, "never begun: full weight");
        s.begin(t0, w);
        assert_eq!(s.permille(t0, w), 100);
        assert_eq!(s.permille(t0 + ms(5000), w), 550);
        assert_eq!(s.permille(t0 + ms(10_000), w), SCALE);
        assert_eq!(s.effective_weight(3, t0 + ms(5000), w), 1650);
        assert!(s.ramping(t0 + ms(9999), w));
        assert!(!s.ramping(t0 + ms(10_000), w));
        s.begin(t0, Duration::ZERO);
        assert_eq!(
            s.permille(t0, Duration::ZERO),
            SCALE,
            "slow-start-ms 0: off"
        );
        s.begin(t0, w);
        s.cancel();
        assert_eq!(s.permille(t0, w), SCALE);
    }

    #[test]
    fn round_robin_turns_follow_the_share() {
        let t0 = Instant::now();
        let w = ms(1000);
        let mut s = SlowStart::default();
        s.begin(t0, w);
        let taken = (0..100).filter(|_| s.take_turn(t0, w)).count();
        assert_eq!(taken, 10, "10% at the start");
        let taken = (0..100).filter(|_| s.take_turn(t0 + ms(500), w)).count();
        assert_eq!(taken, 55);
        assert!((0..10).all(|_| s.take_turn(t0 + ms(1000), w)));
    }

    #[test]
    fn least_loaded_is_relative_to_weight() {
        // Same weight: plain in-flight comparison.
        assert!(less_loaded((1, 1000), (2, 1000)));
        assert!(!less_loaded((2, 1000), (2, 1000)));
        // A worker at 10% with 1 in flight is busier than a full one with 5.
        assert!(less_loaded((5, 1000), (1, 100)));
        // An idle ramping worker still beats a full one with 10 in flight.
        assert!(less_loaded((0, 100), (10, 1000)));
    }

    proptest! {
        /// For any weight, window and time: the effective weight stays within
        /// [START share, full] and never decreases as time passes.
        #[test]
        fn effective_weight_is_bounded_and_monotonic(
            weight in 0u32..=u32::MAX,
            window_ms in 0u64..=604_800_000,
            a in 0u64..=700_000_000,
            b in 0u64..=700_000_000,
        ) {
            let t0 = Instant::now();
            let w = ms(window_ms);
            let mut s = SlowStart::default();
            s.begin(t0, w);
            let (early, late) = (a.min(b), a.max(b));
            let full = u64::from(weight.max(1)) * SCALE;
            let e1 = s.effective_weight(weight, t0 + ms(early), w);
            let e2 = s.effective_weight(weight, t0 + ms(late), w);
            prop_assert!(e1 <= e2);
            prop_assert!(e2 <= full);
            prop_assert!(e1 >= u64::from(weight.max(1)) * START_PERMILLE);
        }
    }
}
