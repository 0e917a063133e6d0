//! LB children from the loop's side: fork and re-fork on the same listener, drain, the
//! backend set and settings fan-out, control messages in, metrics sampling.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::children::{self, ChildMetrics, ChildStart, ChildState, ControlChannel, LbChild};
use super::{Supervisor, autoscale};
use crate::proxy::control::{Down, Up};
use crate::sys::log::quote;
use crate::{error, info, warn};

/// A child that dies younger than this is re-forked after a growing delay.
const YOUNG_DEATH: Duration = Duration::from_secs(2);
/// Longest delay before re-forking a crashing child.
const MAX_REFORK_DELAY: Duration = Duration::from_secs(5);
/// How often metrics are sampled (request rate, autoscaler).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Index into `listeners` of LB child `i`.
    fn listener_of(&self, i: usize) -> usize {
        if self.cfg.shared_port { 0 } else { i }
    }

    /// Forks every LB child that should run and does not (start, crash, reload).
    pub(super) fn ensure_children(&mut self, now: Instant) {
        for i in 0..self.cfg.pool {
            let li = self.listener_of(i);
            let Some(listener_id) = self.listeners.get(li).map(|l| l.id) else {
                continue;
            };
            let serving = self.children.iter().any(|c| {
                c.index == i
                    && c.listener_id == listener_id
                    && c.state == ChildState::Running
                    && !c.retiring
            });
            if serving {
                continue;
            }
            if let Some((not_before, _)) = self.lb_backoff.get(&i)
                && now < *not_before
            {
                continue;
            }
            self.fork_lb(i, li, now);
        }
        // Successors exist now: the children they replace stop accepting and drain.
        let retiring: Vec<usize> = self
            .children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.retiring && c.state == ChildState::Running)
            .map(|(k, _)| k)
            .collect();
        let timeout = self.cfg.drain_timeout_ms;
        for k in retiring {
            self.drain_child(
                k,
                timeout,
                now + Duration::from_millis(timeout) + Duration::from_secs(2),
            );
        }
    }

    fn fork_lb(&mut self, i: usize, li: usize, now: Instant) {
        let name = format!("lb.{i}");
        let backends = self.backend_set();
        let settings = self.cfg.proxy.clone();
        let drain_timeout_ms = self.cfg.drain_timeout_ms;
        let Some(listener) = self.listeners.get(li) else {
            return;
        };
        let listener_id = listener.id;
        let addr = listener.addr;
        let result = children::fork_child(
            ChildStart {
                name: name.clone(),
                listener: &listener.socket,
                backends: backends.clone(),
                settings,
                drain_timeout_ms,
                account: self.child_account.as_ref(),
            },
            &mut self.signals,
        );
        let (pid, ours) = match result {
            Ok(r) => r,
            Err(e) => {
                error!("lb_fork_failed", "lb={i} error={}", quote(&e.to_string()));
                self.lb_backoff.insert(i, (now + Duration::from_secs(1), 1));
                return;
            }
        };
        let token = self.token();
        let registered = ControlChannel::new(ours).and_then(|mut c| {
            c.register(self.poll.registry(), token)?;
            Ok(c)
        });
        let conn = match registered {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "lb_control_failed",
                    "lb={i} error={}",
                    quote(&e.to_string())
                );
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
        };
        info!(
            "lb_child_forked",
            "lb={i} pid={pid} listen={addr} backends={}",
            backends.len()
        );
        self.children.push(LbChild {
            pid,
            index: i,
            listener_id,
            name,
            retiring: false,
            conn,
            token,
            state: ChildState::Running,
            started: now,
            acked_seq: self.seq,
            metrics_basis: self.seq,
            metrics: None,
            metrics_at: None,
            bad_lines: 0,
        });
    }

    /// Sends the backend set to every child when it changed.
    pub(super) fn publish_backends(&mut self) {
        let set = self.backend_set();
        if set == self.sent_backends {
            return;
        }
        let seq = self.next_seq();
        info!(
            "backends_changed",
            "seq={seq} active={} draining={}",
            set.iter()
                .filter(|b| b.state == crate::proxy::control::BackendState::Active)
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            set.iter()
                .filter(|b| b.state == crate::proxy::control::BackendState::Draining)
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let msg = Down::Backends {
            seq,
            backends: set.clone(),
        };
        self.sent_backends = set;
        self.send_all(&msg);
    }

    /// Sends new settings to every child.
    pub(super) fn publish_settings(&mut self) {
        let seq = self.next_seq();
        let msg = Down::Settings {
            seq,
            settings: self.cfg.proxy.clone(),
        };
        self.send_all(&msg);
    }

    fn send_all(&mut self, msg: &Down) {
        for c in &mut self.children {
            if c.conn.is_closed() {
                continue;
            }
            if let Err(e) = c.conn.send(msg) {
                warn!(
                    "lb_control_send_failed",
                    "lb={} pid={} error={}",
                    c.index,
                    c.pid,
                    quote(&e.to_string())
                );
                // A child that cannot take its messages is replaced.
                let _ = kill(c.pid, Signal::SIGKILL);
            }
        }
    }

    /// Tells child `k` to drain.
    fn drain_child(&mut self, k: usize, timeout_ms: u64, deadline: Instant) {
        let seq = self.next_seq();
        let Some(c) = self.children.get_mut(k) else {
            return;
        };
        if let ChildState::Draining { .. } = c.state {
            return;
        }
        info!(
            "lb_child_draining",
            "lb={} pid={} timeout_ms={timeout_ms}", c.index, c.pid
        );
        c.state = ChildState::Draining { deadline };
        if c.conn.send(&Down::Drain { seq, timeout_ms }).is_err() {
            let _ = kill(c.pid, Signal::SIGTERM);
        }
    }

    /// Stop: every child drains.
    pub(super) fn drain_all_children(&mut self, timeout_ms: u64, deadline: Instant) {
        for k in 0..self.children.len() {
            self.drain_child(k, timeout_ms, deadline);
        }
    }

    /// Kills draining children past their deadline.
    pub(super) fn drain_children_past_deadline(&mut self, now: Instant) {
        for c in &self.children {
            if let ChildState::Draining { deadline } = c.state
                && now >= deadline
            {
                warn!("lb_child_drain_timeout", "lb={} pid={}", c.index, c.pid);
                let _ = kill(c.pid, Signal::SIGKILL);
            }
        }
    }

    /// SIGKILL to every child, and reap them.
    pub(super) fn kill_all_children(&mut self, why: &str) {
        for c in &mut self.children {
            warn!(
                "lb_child_kill",
                "lb={} pid={} reason={}",
                c.index,
                c.pid,
                quote(why)
            );
            let _ = kill(c.pid, Signal::SIGKILL);
            let _ = waitpid(c.pid, None);
            c.conn.deregister(self.poll.registry());
        }
        self.children.clear();
    }

    /// Collects exited children; an unexpected exit is logged and the child re-forked.
    pub(super) fn reap_children(&mut self, now: Instant) {
        let mut k = 0;
        while k < self.children.len() {
            let pid = self.children[k].pid;
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    k += 1;
                    continue;
                }
                Ok(st) => st,
                Err(nix::errno::Errno::ECHILD) => WaitStatus::StillAlive,
                Err(_) => {
                    k += 1;
                    continue;
                }
            };
            let mut c = self.children.remove(k);
            c.conn.deregister(self.poll.registry());
            // Take in what it sent last (its final metrics) before forgetting it.
            handle_messages(&mut c, &mut self.latency);
            if let Some(m) = &c.metrics {
                self.retired.absorb(&m.backends);
            }
            self.latency.forget_child(&c.pid.to_string());
            let how = match status {
                WaitStatus::Exited(_, code) => format!("exit {code}"),
                WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
                other => format!("{other:?}"),
            };
            let expected = matches!(c.state, ChildState::Draining { .. })
                || matches!(self.phase, super::Phase::Stopping(_));
            if expected {
                info!(
                    "lb_child_exited",
                    "lb={} pid={pid} status={}",
                    c.index,
                    quote(&how)
                );
            } else {
                warn!(
                    "lb_child_died",
                    "lb={} pid={pid} status={} action=refork",
                    c.index,
                    quote(&how)
                );
                self.lb_restarts += 1;
                let young = now.duration_since(c.started) < YOUNG_DEATH;
                let entry = self.lb_backoff.entry(c.index).or_insert((now, 0));
                if young {
                    entry.1 += 1;
                    let delay = (Duration::from_millis(100) * 2u32.pow(entry.1.min(6)))
                        .min(MAX_REFORK_DELAY);
                    entry.0 = now + delay;
                } else {
                    *entry = (now, 0);
                }
            }
        }
    }

    /// Readiness on a child's control socket.
    pub(super) fn on_control(&mut self, ev: &mio::event::Event) {
        let Some(k) = self.children.iter().position(|c| c.token == ev.token()) else {
            return;
        };
        let c = &mut self.children[k];
        c.conn.note(ev);
        let _ = c.conn.flush();
        handle_messages(c, &mut self.latency);
    }

    /// Every second: request rate (and the autoscaler, when on).
    pub(super) fn sample_metrics(&mut self, now: Instant) {
        if let Some(last) = self.last_sample
            && now.duration_since(last) < SAMPLE_EVERY
        {
            return;
        }
        self.last_sample = Some(now);
        let views = self.backend_views();
        let total: u64 = views.values().map(|v| v.totals.requests()).sum();
        self.rate.record(now, total);

        let active: std::collections::HashSet<String> = self
            .backend_set()
            .into_iter()
            .filter(|b| b.state == crate::proxy::control::BackendState::Active)
            .map(|b| b.id)
            .collect();
        let sample = autoscale::Sample {
            active_workers: self.active_workers(),
            in_flight: autoscale::active_in_flight(
                self.children
                    .iter()
                    .filter_map(|c| c.metrics.as_ref().map(|m| m.backends.as_slice())),
                |id| active.contains(id),
            ),
            p90_ms: self.latency.take_p90(),
        };
        let decision = self.scaler.observe(now, &sample);
        self.apply_scale(decision, now);
        let point = super::history::Point {
            desired: self.desired_workers,
            active: sample.active_workers,
            in_flight: sample.in_flight,
            requests_per_s: self.rate.per_second(),
            p90_ms: sample.p90_ms,
        };
        let live = self.workers.values().filter_map(|w| w.id.as_deref());
        self.history.record(now, point, &views, live);
    }

    /// Applies an autoscaler decision through the same path as a reload's worker count.
    pub(super) fn apply_scale(&mut self, decision: autoscale::Decision, now: Instant) {
        if let autoscale::Decision::ScaleTo { target, reason } = decision {
            if target == self.desired_workers {
                return;
            }
            info!(
                "autoscale_decision",
                "from={} to={target} reason={}",
                self.desired_workers,
                quote(&reason)
            );
            self.desired_workers = target;
            self.sync_worker_ports();
            self.drive_workers(now);
        }
    }

    /// Per-backend figures: retired children plus every live child's latest report.
    pub(super) fn backend_views(
        &self,
    ) -> std::collections::BTreeMap<String, super::metrics::BackendView> {
        super::metrics::aggregate(
            &self.retired,
            self.children
                .iter()
                .filter_map(|c| c.metrics.as_ref().map(|m| m.backends.as_slice())),
        )
    }
}

/// Takes in what a child sent: acks and metrics reports.
fn handle_messages(c: &mut LbChild, latency: &mut autoscale::LatencyWindow) {
    let now = Instant::now();
    for msg in c.conn.receive() {
        match msg {
            Ok(Up::Ack { seq, ok, error }) => {
                if !ok {
                    warn!(
                        "lb_control_rejected",
                        "lb={} seq={seq} error={}",
                        c.index,
                        quote(error.as_deref().unwrap_or(""))
                    );
                }
                c.acked_seq = c.acked_seq.max(seq);
            }
            Ok(Up::Metrics {
                connections,
                backends,
            }) => {
                c.metrics_basis = c.acked_seq;
                latency.record(&c.pid.to_string(), &backends);
                c.metrics = Some(ChildMetrics {
                    connections,
                    backends,
                });
                c.metrics_at = Some(now);
            }
            Err(bad) => {
                c.bad_lines += 1;
                if c.bad_lines == 1 {
                    warn!(
                        "lb_control_bad_line",
                        "lb={} error={}",
                        c.index,
                        quote(&bad.error)
                    );
                }
            }
        }
    }
}
