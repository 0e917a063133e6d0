//! Metrics the LB children report, summed per backend across children and across child
//! restarts (a child's counters start at zero; its last report is kept when it exits, so the
//! totals never go back).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::proxy::control::BackendMetrics;

/// Cumulative figures of one backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// Responses by class: 1xx..5xx.
    pub responses: [u64; 5],
    /// Passive failures.
    pub failures: u64,
    /// Latency bucket counts (not cumulative): LATENCY_BUCKETS_MS then +Inf.
    pub latency: Vec<u64>,
    /// Sum of latencies, ms.
    pub latency_sum_ms: f64,
    /// Retries its failures caused.
    pub retries: u64,
    /// Ejections for consecutive 5xx answers.
    pub ejections: u64,
}

impl Totals {
    /// Adds one child's report for this backend.
    pub fn add(&mut self, m: &BackendMetrics) {
        for (a, b) in self.responses.iter_mut().zip(m.responses.iter()) {
            *a += b;
        }
        self.failures += m.failures;
        if self.latency.len() < m.latency.len() {
            self.latency.resize(m.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(m.latency.iter()) {
            *a += b;
        }
        self.latency_sum_ms += m.latency_sum_ms;
        self.retries += m.retries;
        self.ejections += m.ejections;
    }

    /// All responses.
    pub fn requests(&self) -> u64 {
        self.responses.iter().sum()
    }
}

/// Live view of one backend: totals plus what the children see right now.
#[derive(Clone, Debug, Default)]
pub struct BackendView {
    /// Cumulative figures.
    pub totals: Totals,
    /// In flight now, across live children.
    pub in_flight: u64,
    /// Children that reported it healthy / unhealthy in their latest report.
    pub healthy_votes: u32,
    /// Children that reported it unhealthy.
    pub unhealthy_votes: u32,
}

/// Counters kept from children that exited.
#[derive(Debug, Default)]
pub struct Retired {
    per_backend: BTreeMap<String, Totals>,
}

/// Most retired backends remembered (replaced containers get new ids; keep this bounded).
const MAX_RETIRED: usize = 4096;

impl Retired {
    /// Keeps an exited child's last report.
    pub fn absorb(&mut self, backends: &[BackendMetrics]) {
        for m in backends {
            if self.per_backend.len() >= MAX_RETIRED && !self.per_backend.contains_key(&m.id) {
                continue;
            }
            self.per_backend.entry(m.id.clone()).or_default().add(m);
        }
    }
}

/// Sums the retired totals and every live child's latest report.
pub fn aggregate<'a>(
    retired: &Retired,
    live: impl Iterator<Item = &'a [BackendMetrics]>,
) -> BTreeMap<String, BackendView> {
    let mut out: BTreeMap<String, BackendView> = retired
        .per_backend
        .iter()
        .map(|(id, t)| {
            (
                id.clone(),
                BackendView {
                    totals: t.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    for report in live {
        for m in report {
            let v = out.entry(m.id.clone()).or_default();
            v.totals.add(m);
            v.in_flight += m.in_flight;
            if m.healthy {
                v.healthy_votes += 1;
            } else {
                v.unhealthy_votes += 1;
            }
        }
    }
    out
}

/// Request rate over a sliding window of (time, total) samples.
#[derive(Debug, Default)]
pub struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

/// Window the request rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Rate {
    /// Records the running total at `now`.
    pub fn record(&mut self, now: Instant, total: u64) {
        self.samples.push_back((now, total));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Requests per second over the window.
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bm(id: &str, ok: u64, in_flight: u64, healthy: bool) -> BackendMetrics {
        BackendMetrics {
            id: id.into(),
            in_flight,
            responses: [0, ok, 0, 0, 1],
            failures: 2,
            healthy,
            latency: vec![1, 2, 3],
            latency_sum_ms: 10.0,
            retries: 3,
            ..BackendMetrics::default()
        }
    }

    #[test]
    fn sums_live_children_and_retired_reports() {
        let mut retired = Retired::default();
        retired.absorb(&[bm("a", 5, 9, true)]);
        let c1 = vec![bm("a", 1, 2, true), bm("b", 3, 0, false)];
        let c2 = vec![bm("a", 10, 1, false)];
        let agg = aggregate(&retired, [c1.as_slice(), c2.as_slice()].into_iter());
        let a = &agg["a"];
        assert_eq!(a.totals.responses, [0, 16, 0, 0, 3]);
        assert_eq!(a.totals.failures, 6);
        assert_eq!(a.totals.retries, 9);
        assert_eq!(a.totals.latency, vec![3, 6, 9]);
        assert_eq!(a.in_flight, 3, "retired in-flight does not count");
        assert_eq!((a.healthy_votes, a.unhealthy_votes), (1, 1));
        assert_eq!(agg["b"].totals.requests(), 4);
    }

    #[test]
    fn rate_over_window() {
        let t = Instant::now();
        let mut r = Rate::default();
        r.record(t, 100);
        r.record(t + Duration::from_secs(2), 300);
        assert!((r.per_second() - 100.0).abs() < 1e-9);
    }
}
