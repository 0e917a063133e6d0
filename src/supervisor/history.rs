//! Short time series for `/status` and the dashboard: one point per metrics sample (about one
//! a second) for the last 10 minutes, and per worker the figures of the last 10 samples
//! (request rate, 5xx share, latency p50/p99 from the children's histograms). Bounded: 600
//! points, 11 snapshots per current worker. It also notices a worker's health flipping in
//! the children's view and logs it (`worker_ejected` / `worker_returned`), which puts it in
//! the event ring like every other event.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::autoscale::quantile_ms;
use super::metrics::{BackendView, Totals};
use crate::{info, warn};

/// Points kept (10 minutes at one sample a second).
pub const SPAN: usize = 600;
/// Samples a worker's recent figures are measured over (about 10 s).
const WORKER_WINDOW: usize = 10;

/// What one sample adds to the series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// Workers wanted (after this sample's autoscaler decision).
    pub desired: usize,
    /// Workers active in the backend set.
    pub active: usize,
    /// Requests in flight to active workers, across children.
    pub in_flight: u64,
    /// Request rate.
    pub requests_per_s: f64,
    /// p90 of the requests completed since the previous sample, when any completed.
    pub p90_ms: Option<f64>,
}

/// The series in `/status` (`history`): parallel arrays, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Sample times, ms since the Unix epoch.
    pub time_ms: Vec<u64>,
    /// Workers wanted.
    pub desired: Vec<usize>,
    /// Workers active.
    pub active: Vec<usize>,
    /// Requests in flight to active workers.
    pub in_flight: Vec<u64>,
    /// Request rate (1 decimal).
    pub requests_per_s: Vec<f64>,
    /// p90 latency in ms (null when nothing completed in that second).
    pub p90_ms: Vec<Option<f64>>,
}

/// A worker's figures over its last samples (`/status` worker fields).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkerWindow {
    /// Responses per second.
    pub requests_per_s: f64,
    /// 5xx responses / responses (None without responses).
    pub share_5xx: Option<f64>,
    /// Latency quantiles in ms (None without responses).
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
}

/// A worker's cumulative counters at one sample.
#[derive(Clone, Debug)]
struct Snapshot {
    at: Instant,
    requests: u64,
    responses_5xx: u64,
    latency: Vec<u64>,
}

impl Snapshot {
    fn of(at: Instant, t: &Totals) -> Snapshot {
        Snapshot {
            at,
            requests: t.requests(),
            responses_5xx: t.responses[4],
            latency: t.latency.clone(),
        }
    }
}

/// The series and the per-worker windows.
#[derive(Debug, Default)]
pub struct History {
    points: VecDeque<(u64, Point)>,
    workers: HashMap<String, VecDeque<Snapshot>>,
    /// Per worker id: whether the children's latest reports all said healthy.
    healthy: HashMap<String, bool>,
}

impl History {
    /// Empty.
    pub fn new() -> History {
        History::default()
    }

    /// Records one sample: the point, and the counters of the workers named in `live` (ids
    /// of the current worker ports) from `views`. Workers not in `live` are forgotten.
    pub fn record<'a>(
        &mut self,
        now: Instant,
        point: Point,
        views: &BTreeMap<String, BackendView>,
        live: impl Iterator<Item = &'a str>,
    ) {
        let wall_ms = super::events::unix_ms();
        if self.points.len() >= SPAN {
            self.points.pop_front();
        }
        self.points.push_back((wall_ms, point));

        let live: Vec<&str> = live.collect();
        self.workers.retain(|id, _| live.contains(&id.as_str()));
        self.healthy.retain(|id, _| live.contains(&id.as_str()));
        for id in live {
            let Some(view) = views.get(id) else {
                continue;
            };
            let snaps = self.workers.entry(id.to_string()).or_default();
            if snaps.len() > WORKER_WINDOW {
                snaps.pop_front();
            }
            snaps.push_back(Snapshot::of(now, &view.totals));
            self.note_health(id, view);
        }
    }

    /// Logs a change of the children's health verdict on a worker.
    fn note_health(&mut self, id: &str, view: &BackendView) {
        if view.healthy_votes + view.unhealthy_votes == 0 {
            return;
        }
        let healthy = view.unhealthy_votes == 0;
        let before = self.healthy.insert(id.to_string(), healthy);
        match (before, healthy) {
            (Some(true), false) => warn!(
                "worker_ejected",
                "id={id} unhealthy_in={} of={}",
                view.unhealthy_votes,
                view.healthy_votes + view.unhealthy_votes
            ),
            (Some(false), true) => info!("worker_returned", "id={id}"),
            _ => {}
        }
    }

    /// The series, oldest first.
    pub fn series(&self) -> Series {
        let mut s = Series::default();
        for (t, p) in &self.points {
            s.time_ms.push(*t);
            s.desired.push(p.desired);
            s.active.push(p.active);
            s.in_flight.push(p.in_flight);
            s.requests_per_s
                .push((p.requests_per_s * 10.0).round() / 10.0);
            s.p90_ms.push(p.p90_ms.map(|v| (v * 10.0).round() / 10.0));
        }
        s
    }

    /// A worker's figures between its oldest and newest kept snapshot; None before it has
    /// two.
    pub fn worker(&self, id: &str) -> Option<WorkerWindow> {
        let snaps = self.workers.get(id)?;
        let (first, last) = (snaps.front()?, snaps.back()?);
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let requests = last.requests.saturating_sub(first.requests);
        let latency: Vec<u64> = last
            .latency
            .iter()
            .enumerate()
            .map(|(i, c)| c.saturating_sub(first.latency.get(i).copied().unwrap_or(0)))
            .collect();
        let round = |v: f64| (v * 10.0).round() / 10.0;
        Some(WorkerWindow {
            requests_per_s: round(requests as f64 / secs),
            share_5xx: (requests > 0).then(|| {
                let bad = last.responses_5xx.saturating_sub(first.responses_5xx);
                (bad as f64 / requests as f64 * 1000.0).round() / 1000.0
            }),
            p50_ms: quantile_ms(&latency, 0.5).map(round),
            p99_ms: quantile_ms(&latency, 0.99).map(round),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn view(requests_2xx: u64, requests_5xx: u64, latency: Vec<u64>, healthy: bool) -> BackendView {
        BackendView {
            totals: Totals {
                responses: [0, requests_2xx, 0, 0, requests_5xx],
                failures: 0,
                latency,
                latency_sum_ms: 0.0,
                ..Totals::default()
            },
            in_flight: 0,
            healthy_votes: u32::from(healthy),
            unhealthy_votes: u32::from(!healthy),
        }
    }

    fn views(v: BackendView) -> BTreeMap<String, BackendView> {
        BTreeMap::from([("w1".to_string(), v)])
    }

    #[test]
    fn series_is_bounded_and_in_order() {
        let mut h = History::new();
        let t0 = Instant::now();
        for i in 0..SPAN + 20 {
            let p = Point {
                desired: i,
                ..Point::default()
            };
            h.record(
                t0 + Duration::from_secs(i as u64),
                p,
                &BTreeMap::new(),
                [].into_iter(),
            );
        }
        let s = h.series();
        assert_eq!(s.desired.len(), SPAN);
        assert_eq!(s.time_ms.len(), SPAN);
        assert_eq!(s.desired.first(), Some(&20));
        assert_eq!(s.desired.last(), Some(&(SPAN + 19)));
    }

    #[test]
    fn worker_window_measures_the_last_samples_only() {
        let mut h = History::new();
        let t0 = Instant::now();
        // 1000 old requests, then 10 s of 20 req/s with 10% 5xx, all in the 10-25 ms bucket.
        let mut bucket = vec![0u64; 13];
        bucket[0] = 1000;
        let mut ok = 1000;
        let mut bad = 0;
        for i in 0..=30u64 {
            if i > 20 {
                ok += 18;
                bad += 2;
                bucket[4] += 20;
            }
            let v = views(view(ok, bad, bucket.clone(), true));
            h.record(
                t0 + Duration::from_secs(i),
                Point::default(),
                &v,
                ["w1"].into_iter(),
            );
        }
        let w = h.worker("w1").expect("window");
        assert_eq!(w.requests_per_s, 20.0);
        assert_eq!(w.share_5xx, Some(0.1));
        let p50 = w.p50_ms.expect("p50");
        assert!((10.0..=25.0).contains(&p50), "{p50}");
        assert!(w.p99_ms.expect("p99") <= 25.0);
        assert!(h.worker("nobody").is_none());
    }

    #[test]
    fn a_worker_that_left_is_forgotten() {
        let mut h = History::new();
        let t0 = Instant::now();
        let v = views(view(1, 0, vec![1], true));
        h.record(t0, Point::default(), &v, ["w1"].into_iter());
        h.record(
            t0 + Duration::from_secs(1),
            Point::default(),
            &v,
            ["w1"].into_iter(),
        );
        assert!(h.worker("w1").is_some());
        h.record(
            t0 + Duration::from_secs(2),
            Point::default(),
            &v,
            [].into_iter(),
        );
        assert!(h.worker("w1").is_none());
        assert!(h.healthy.is_empty());
    }

    #[test]
    fn health_flips_are_remembered_per_worker() {
        let mut h = History::new();
        let t0 = Instant::now();
        h.record(
            t0,
            Point::default(),
            &views(view(0, 0, vec![], true)),
            ["w1"].into_iter(),
        );
        assert_eq!(h.healthy.get("w1"), Some(&true));
        h.record(
            t0,
            Point::default(),
            &views(view(0, 0, vec![], false)),
            ["w1"].into_iter(),
        );
        assert_eq!(h.healthy.get("w1"), Some(&false));
    }
}
