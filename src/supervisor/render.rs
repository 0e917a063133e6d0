//! `/status` (JSON) and `/metrics` (Prometheus text exposition format) from the loop's state.

use std::collections::BTreeMap;
use std::time::Instant;

use super::admin::{Pending, Route};
use super::children::{ChildState, LbChild};
use super::fleet::{Worker, WorkerState};
use super::metrics::BackendView;
use super::prometheus::{Kind, MetricsText};
use super::status::{ChildStatus, Status, WorkerStatus};
use super::{Phase, Supervisor};
use crate::proxy::control::LATENCY_BUCKETS_MS;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Supervisor {
    /// Renders and sends the answer to an admin request.
    pub(super) fn answer_admin(&mut self, p: Pending) {
        let (ctype, body) = match p.route {
            Route::Status => (
                "application/json",
                serde_json::to_vec_pretty(&self.status_doc()).unwrap_or_default(),
            ),
            Route::Metrics => (
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics_text().into_bytes(),
            ),
        };
        self.admin
            .answer(self.poll.registry(), p.token, ctype, body);
    }

    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Detecting | Phase::Preparing | Phase::StartingWorkers { .. } => "starting",
            Phase::Running => "running",
            Phase::Stopping(_) => "stopping",
        }
    }

    /// The `/status` document.
    pub(super) fn status_doc(&self) -> Status {
        let now = Instant::now();
        let views = self.pool.backend_views();
        let workers = self
            .fleet
            .workers()
            .map(|w| self.worker_status(w, w.placement.as_ref().and_then(|p| views.get(&p.id))))
            .collect();
        let children = self
            .pool
            .children()
            .iter()
            .map(|c| self.child_status(c, now))
            .collect();
        Status {
            instance: self.cfg.instance.clone(),
            pid: std::process::id(),
            version: super::VERSION.to_string(),
            state: self.phase_name().into(),
            uptime_s: now.duration_since(self.started).as_secs(),
            config: self.config_path.display().to_string(),
            runtime: self
                .driver
                .as_ref()
                .map(|d| d.name().to_string())
                .unwrap_or_default(),
            runtime_reason: self.runtime_reason.clone(),
            workers_desired: self.fleet.desired(),
            workers_actual: self.fleet.active(),
            requests_total: views.values().map(|v| v.totals.requests()).sum(),
            requests_per_s: (self.rate.per_second() * 10.0).round() / 10.0,
            connections: self.pool.connections(),
            listeners: self
                .pool
                .listeners
                .iter()
                .map(|l| l.addr.to_string())
                .collect(),
            children,
            workers,
            reloads: self.reloads,
            last_reload_error: self.last_reload_error.clone(),
            autoscale: serde_json::to_value(self.scaler.status()).ok(),
            events: super::events::recent(),
            history: self.history.series(),
        }
    }

    /// One worker's entry in `/status`; `view` is what the children report about it.
    fn worker_status(&self, s: &Worker, view: Option<&BackendView>) -> WorkerStatus {
        let health = match (s.state, view) {
            (WorkerState::Active | WorkerState::Draining { .. }, Some(v))
                if v.healthy_votes + v.unhealthy_votes > 0 =>
            {
                if v.unhealthy_votes == 0 {
                    "healthy"
                } else {
                    "unhealthy"
                }
            }
            // Not yet reported by a child: the supervisor's own check passed.
            (WorkerState::Active, _) => "healthy",
            (WorkerState::Probing { .. }, _) => "unhealthy",
            _ => "unknown",
        };
        let totals = view.map(|v| v.totals.clone()).unwrap_or_default();
        let addr = s.placement.as_ref().map(|p| p.addr).or_else(|| {
            self.driver
                .as_deref()
                .and_then(|d| d.planned_address(s.slot))
        });
        let recent = s
            .placement
            .as_ref()
            .and_then(|p| self.history.worker(&p.id))
            .unwrap_or_default();
        WorkerStatus {
            id: s
                .placement
                .as_ref()
                .map(|p| p.id.clone())
                .unwrap_or_default(),
            port: addr.map(|a| a.port()).unwrap_or(0),
            pid: s.placement.as_ref().and_then(|p| p.pid),
            container: s.placement.as_ref().and_then(|p| p.container.clone()),
            address: addr.map(|a| a.to_string()).unwrap_or_default(),
            state: s.state.name().to_string(),
            health: health.to_string(),
            in_flight: view.map(|v| v.in_flight).unwrap_or(0),
            responses: CLASSES
                .iter()
                .zip(totals.responses.iter())
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            requests: totals.requests(),
            failures: totals.failures,
            requests_per_s: recent.requests_per_s,
            share_5xx: recent.share_5xx,
            latency_p50_ms: recent.p50_ms,
            latency_p99_ms: recent.p99_ms,
            restarts: s.restarts,
            last_error: s.last_error.clone(),
        }
    }

    /// One LB child's entry in `/status`.
    fn child_status(&self, c: &LbChild, now: Instant) -> ChildStatus {
        ChildStatus {
            name: c.name.clone(),
            pid: c.pid.as_raw(),
            listener: self
                .pool
                .listener_addr(c.listener_id)
                .map(|a| a.to_string())
                .unwrap_or_else(|| "(closed)".into()),
            state: match c.state {
                ChildState::Running => "running".into(),
                ChildState::Draining { .. } => "draining".into(),
            },
            connections: c.metrics.as_ref().map(|m| m.connections).unwrap_or(0),
            queued: c.metrics.as_ref().map(|m| m.queued).unwrap_or(0),
            uptime_s: now.duration_since(c.started).as_secs(),
        }
    }

    /// The `/metrics` text.
    pub(super) fn metrics_text(&self) -> String {
        let views = self.pool.backend_views();
        let mut m = MetricsText::new();
        write_backend_families(&mut m, &views);
        self.write_worker_health(&mut m, &views);
        self.write_supervisor_families(&mut m);
        self.scaler.status().write_metrics(&mut m);
        m.finish()
    }

    /// `goloadbalancer_backend_healthy`: per worker with an id.
    fn write_worker_health(&self, m: &mut MetricsText, views: &BTreeMap<String, BackendView>) {
        m.family(
            "goloadbalancer_backend_healthy",
            Kind::Gauge,
            "1 when the worker is serving and every LB child sees it healthy.",
        );
        for s in self.fleet.workers() {
            let Some(p) = &s.placement else { continue };
            let id = &p.id;
            let v = views.get(id);
            let up = s.state == WorkerState::Active && v.is_none_or(|v| v.unhealthy_votes == 0);
            let port = p.addr.port().to_string();
            m.sample(&[("backend", id), ("port", &port)], u8::from(up));
        }
    }

    /// The wait queue (`max-conn-per-worker`): depth now, outcomes and time waited.
    fn write_queue_families(&self, m: &mut MetricsText) {
        m.family(
            "goloadbalancer_queue_depth",
            Kind::Gauge,
            "Requests waiting for a worker slot now, across LB children.",
        )
        .sample(&[], self.pool.queued());
        let q = self.pool.queue_figures();
        m.family(
            "goloadbalancer_queue_requests_total",
            Kind::Counter,
            "Requests that left the wait queue: to a worker, timed out (503) or refused full (503).",
        );
        m.sample(&[("outcome", "dispatched")], q.dispatched);
        m.sample(&[("outcome", "expired")], q.expired);
        m.sample(&[("outcome", "rejected")], q.rejected);
        m.family(
            "goloadbalancer_queue_wait_seconds_total",
            Kind::Counter,
            "Time the dispatched requests spent in the wait queue.",
        )
        .sample(&[], q.wait_ms as f64 / 1000.0);
    }

    /// The supervisor's own figures: workers, LB children, connections, reloads.
    fn write_supervisor_families(&self, m: &mut MetricsText) {
        m.family(
            "goloadbalancer_workers_desired",
            Kind::Gauge,
            "Workers wanted (config or autoscaler).",
        )
        .sample(&[], self.fleet.desired());
        m.family(
            "goloadbalancer_workers_actual",
            Kind::Gauge,
            "Workers healthy and active.",
        )
        .sample(&[], self.fleet.active());
        m.family(
            "goloadbalancer_worker_restarts_total",
            Kind::Counter,
            "Workers replaced after dying or failing to start.",
        )
        .sample(&[], self.fleet.workers().map(|s| s.restarts).sum::<u64>());
        let running = self.pool.running();
        m.family(
            "goloadbalancer_lb_children",
            Kind::Gauge,
            "LB children running (not draining).",
        )
        .sample(&[], running);
        m.family(
            "goloadbalancer_lb_child_restarts_total",
            Kind::Counter,
            "LB children re-forked after dying.",
        )
        .sample(&[], self.pool.restarts());
        m.family(
            "goloadbalancer_access_log_dropped_total",
            Kind::Counter,
            "Access-log lines dropped because the journal or file could not take them.",
        )
        .sample(&[], self.pool.access_log_dropped());
        m.family(
            "goloadbalancer_retry_budget_refused_total",
            Kind::Counter,
            "Retries refused because the retry budget (retry-budget-percent) was spent.",
        )
        .sample(&[], self.pool.retry_budget_refused());
        self.write_queue_families(m);
        let conns = self.pool.connections();
        m.family(
            "goloadbalancer_connections",
            Kind::Gauge,
            "Client connections open across LB children.",
        )
        .sample(&[], conns);
        m.family(
            "goloadbalancer_reloads_total",
            Kind::Counter,
            "Successful reloads.",
        )
        .sample(&[], self.reloads);
    }
}

/// Per-backend families from the children's reports: responses, failures, latency, in flight.
fn write_backend_families(m: &mut MetricsText, views: &BTreeMap<String, BackendView>) {
    m.family(
        "goloadbalancer_requests_total",
        Kind::Counter,
        "Responses sent to clients, by backend and status class.",
    );
    for (id, v) in views {
        for (class, n) in CLASSES.iter().zip(v.totals.responses.iter()) {
            m.sample(&[("backend", id), ("class", class)], n);
        }
    }
    m.family(
        "goloadbalancer_backend_failures_total",
        Kind::Counter,
        "Connect failures, timeouts and broken responses, by backend.",
    );
    for (id, v) in views {
        m.sample(&[("backend", id)], v.totals.failures);
    }
    m.family(
        "goloadbalancer_backend_retries_total",
        Kind::Counter,
        "Requests retried on another connection after this backend failed them, by backend.",
    );
    for (id, v) in views {
        m.sample(&[("backend", id)], v.totals.retries);
    }
    m.family(
        "goloadbalancer_backend_ejections_total",
        Kind::Counter,
        "Ejections for consecutive 5xx answers (eject-consecutive-5xx), by backend.",
    );
    for (id, v) in views {
        m.sample(&[("backend", id)], v.totals.ejections);
    }
    m.family(
        "goloadbalancer_request_duration_seconds",
        Kind::Histogram,
        "Time from request to complete response, by backend.",
    );
    let bounds_s = LATENCY_BUCKETS_MS.map(|b| b / 1000.0);
    for (id, v) in views {
        m.histogram(
            &[("backend", id)],
            &bounds_s,
            &v.totals.latency,
            v.totals.latency_sum_ms / 1000.0,
        );
    }
    m.family(
        "goloadbalancer_backend_in_flight",
        Kind::Gauge,
        "Requests in flight to a backend now.",
    );
    for (id, v) in views {
        m.sample(&[("backend", id)], v.in_flight);
    }
}
