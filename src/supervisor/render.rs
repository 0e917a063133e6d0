//! `/status` (JSON) and `/metrics` (Prometheus text exposition format) from the loop's state.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use super::admin::{Pending, Route};
use super::children::ChildState;
use super::status::{ChildStatus, Status, WorkerStatus};
use super::workers::WorkerState;
use super::{Phase, Supervisor};
use crate::proxy::control::LATENCY_BUCKETS_MS;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

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
        let views = self.backend_views();
        let workers = self
            .workers
            .values()
            .map(|s| {
                let view = s.id.as_ref().and_then(|id| views.get(id));
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
                WorkerStatus {
                    id: s.id.clone().unwrap_or_default(),
                    port: s.port,
                    pid: s.process.as_ref().map(|c| c.id()),
                    container: s.container.clone(),
                    address: std::net::SocketAddr::new(self.cfg.worker_address, s.port).to_string(),
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
                    restarts: s.restarts,
                    last_error: s.last_error.clone(),
                }
            })
            .collect();
        let children = self
            .children
            .iter()
            .map(|c| ChildStatus {
                name: c.name.clone(),
                pid: c.pid.as_raw(),
                listener: self
                    .listeners
                    .iter()
                    .find(|l| l.id == c.listener_id)
                    .map(|l| l.addr.to_string())
                    .unwrap_or_else(|| "(closed)".into()),
                state: match c.state {
                    ChildState::Running => "running".into(),
                    ChildState::Draining { .. } => "draining".into(),
                },
                connections: c.metrics.as_ref().map(|m| m.connections).unwrap_or(0),
                uptime_s: now.duration_since(c.started).as_secs(),
            })
            .collect();
        Status {
            instance: self.cfg.instance.clone(),
            pid: std::process::id(),
            state: self.phase_name().into(),
            uptime_s: now.duration_since(self.started).as_secs(),
            config: self.config_path.display().to_string(),
            runtime: self
                .runtime
                .as_ref()
                .map(|r| r.name().to_string())
                .unwrap_or_default(),
            runtime_reason: self.runtime_reason.clone(),
            workers_desired: self.desired_workers,
            workers_actual: self.active_workers(),
            requests_total: views.values().map(|v| v.totals.requests()).sum(),
            requests_per_s: (self.rate.per_second() * 10.0).round() / 10.0,
            connections: self
                .children
                .iter()
                .filter_map(|c| c.metrics.as_ref().map(|m| m.connections))
                .sum(),
            listeners: self.listeners.iter().map(|l| l.addr.to_string()).collect(),
            children,
            workers,
            reloads: self.reloads,
            last_reload_error: self.last_reload_error.clone(),
            autoscale: serde_json::to_value(self.scaler.status()).ok(),
        }
    }

    /// The `/metrics` text.
    pub(super) fn metrics_text(&self) -> String {
        let views = self.backend_views();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_requests_total Responses sent to clients, by backend and status class."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_requests_total counter");
        for (id, v) in &views {
            for (class, n) in CLASSES.iter().zip(v.totals.responses.iter()) {
                let _ = writeln!(
                    o,
                    "goloadbalancer_requests_total{{backend=\"{}\",class=\"{class}\"}} {n}",
                    label(id)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_backend_failures_total Connect failures, timeouts and broken responses, by backend."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_backend_failures_total counter");
        for (id, v) in &views {
            let _ = writeln!(
                o,
                "goloadbalancer_backend_failures_total{{backend=\"{}\"}} {}",
                label(id),
                v.totals.failures
            );
        }
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_request_duration_seconds Time from request to complete response, by backend."
        );
        let _ = writeln!(
            o,
            "# TYPE goloadbalancer_request_duration_seconds histogram"
        );
        for (id, v) in &views {
            let mut cum = 0u64;
            for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
                cum += v.totals.latency.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    o,
                    "goloadbalancer_request_duration_seconds_bucket{{backend=\"{}\",le=\"{}\"}} {cum}",
                    label(id),
                    bound / 1000.0
                );
            }
            let count: u64 = v.totals.latency.iter().sum();
            let _ = writeln!(
                o,
                "goloadbalancer_request_duration_seconds_bucket{{backend=\"{}\",le=\"+Inf\"}} {count}",
                label(id)
            );
            let _ = writeln!(
                o,
                "goloadbalancer_request_duration_seconds_sum{{backend=\"{}\"}} {}",
                label(id),
                v.totals.latency_sum_ms / 1000.0
            );
            let _ = writeln!(
                o,
                "goloadbalancer_request_duration_seconds_count{{backend=\"{}\"}} {count}",
                label(id)
            );
        }
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_backend_in_flight Requests in flight to a backend now."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_backend_in_flight gauge");
        for (id, v) in &views {
            let _ = writeln!(
                o,
                "goloadbalancer_backend_in_flight{{backend=\"{}\"}} {}",
                label(id),
                v.in_flight
            );
        }
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_backend_healthy 1 when the worker is serving and every LB child sees it healthy."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_backend_healthy gauge");
        for s in self.workers.values() {
            let Some(id) = &s.id else { continue };
            let v = views.get(id);
            let up = s.state == WorkerState::Active && v.is_none_or(|v| v.unhealthy_votes == 0);
            let _ = writeln!(
                o,
                "goloadbalancer_backend_healthy{{backend=\"{}\",port=\"{}\"}} {}",
                label(id),
                s.port,
                u8::from(up)
            );
        }
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_workers_desired Workers wanted (config or autoscaler)."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_workers_desired gauge");
        let _ = writeln!(o, "goloadbalancer_workers_desired {}", self.desired_workers);
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_workers_actual Workers healthy and active."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_workers_actual gauge");
        let _ = writeln!(o, "goloadbalancer_workers_actual {}", self.active_workers());
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_worker_restarts_total Workers replaced after dying or failing to start."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_worker_restarts_total counter");
        let _ = writeln!(
            o,
            "goloadbalancer_worker_restarts_total {}",
            self.workers.values().map(|s| s.restarts).sum::<u64>()
        );
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_lb_children LB children running (not draining)."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_lb_children gauge");
        let running = self
            .children
            .iter()
            .filter(|c| c.state == ChildState::Running)
            .count();
        let _ = writeln!(o, "goloadbalancer_lb_children {running}");
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_lb_child_restarts_total LB children re-forked after dying."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_lb_child_restarts_total counter");
        let _ = writeln!(
            o,
            "goloadbalancer_lb_child_restarts_total {}",
            self.lb_restarts
        );
        let _ = writeln!(
            o,
            "# HELP goloadbalancer_connections Client connections open across LB children."
        );
        let _ = writeln!(o, "# TYPE goloadbalancer_connections gauge");
        let conns: u64 = self
            .children
            .iter()
            .filter_map(|c| c.metrics.as_ref().map(|m| m.connections))
            .sum();
        let _ = writeln!(o, "goloadbalancer_connections {conns}");
        let _ = writeln!(o, "# HELP goloadbalancer_reloads_total Successful reloads.");
        let _ = writeln!(o, "# TYPE goloadbalancer_reloads_total counter");
        let _ = writeln!(o, "goloadbalancer_reloads_total {}", self.reloads);
        o.push_str(&self.scaler.status().prometheus());
        o
    }
}
