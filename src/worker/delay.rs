//! The hello delay and failure draw.
//!
//! The delay is uniform on [0, 2 * avg]: its mean is `avg`, its worst case is bounded (2 * avg),
//! so a draining worker knows how long its last request can take and a p90 means something
//! (1.8 * avg). An exponential delay has the same mean but an unbounded tail and a standard
//! deviation equal to the mean, so its sample mean converges more slowly (uniform's is
//! avg / sqrt(3)).

use std::time::Duration;

use rand::RngExt;

/// Draws hello delays and failures for one worker.
#[derive(Clone, Copy, Debug)]
pub struct DelayModel {
    avg_us: u64,
    failure_pct: f64,
}

impl DelayModel {
    /// `avg_ms`: mean delay; `failure_pct`: probability of a 500 in percent (clamped to 0..=100).
    pub fn new(avg_ms: u64, failure_pct: f64) -> DelayModel {
        DelayModel {
            avg_us: avg_ms.saturating_mul(1000),
            failure_pct: if failure_pct.is_nan() {
                0.0
            } else {
                failure_pct.clamp(0.0, 100.0)
            },
        }
    }

    /// The longest delay this model can draw.
    pub fn max_delay(&self) -> Duration {
        Duration::from_micros(self.avg_us.saturating_mul(2))
    }

    /// One delay, uniform on [0, 2 * avg] with microsecond resolution.
    pub fn delay(&self, rng: &mut impl rand::Rng) -> Duration {
        if self.avg_us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(rng.random_range(0..=self.avg_us.saturating_mul(2)))
    }

    /// Whether this request fails (true with probability failure_pct / 100).
    pub fn fails(&self, rng: &mut impl rand::Rng) -> bool {
        self.failure_pct > 0.0 && rng.random::<f64>() * 100.0 < self.failure_pct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_mean_and_bounds() {
        let m = DelayModel::new(100, 0.0);
        let mut rng = rand::rng();
        let n = 100_000;
        let mut sum = 0u128;
        for _ in 0..n {
            let d = m.delay(&mut rng);
            assert!(d <= m.max_delay());
            sum += d.as_micros();
        }
        let mean_ms = sum as f64 / n as f64 / 1000.0;
        // Standard error: 57.7 / sqrt(1e5) = 0.18 ms; 2 ms is > 10 sigma.
        assert!((mean_ms - 100.0).abs() < 2.0, "mean {mean_ms}");
        assert_eq!(DelayModel::new(0, 0.0).delay(&mut rng), Duration::ZERO);
    }

    #[test]
    fn failure_extremes_and_rate() {
        let mut rng = rand::rng();
        assert!((0..10_000).all(|_| !DelayModel::new(1, 0.0).fails(&mut rng)));
        assert!((0..10_000).all(|_| DelayModel::new(1, 100.0).fails(&mut rng)));
        let n = 100_000;
        let f = (0..n)
            .filter(|_| DelayModel::new(1, 30.0).fails(&mut rng))
            .count() as f64;
        // sigma = sqrt(n p (1-p)) = 145; allow 6 sigma.
        assert!((f - 30_000.0).abs() < 870.0, "failures {f}");
    }
}
