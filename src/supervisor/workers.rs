//! Workers: one `WorkerPort` per port, each a small state machine driven by the loop.
//!
//! ```text
//! Pending -> Launching (docker rm -f name, docker run) -> Probing (GET /healthz) -> Active
//! Active -> Draining (draining in the backend set, until in-flight 0 or drain timeout)
//!        -> Stopping (docker stop / SIGTERM: the worker flushes its stats) -> Removing -> Gone
//! a start that fails, or a worker that dies -> Removing -> Pending (after a backoff)
//! ```

use std::process::Child;
use std::time::{Duration, Instant};

use mio::Token;

use super::{JobKind, Phase, Supervisor};
use crate::evloop::{HealthProbe, ProbeKind, ProbeStatus};
use crate::proxy::control::{BackendSpec, BackendState};
use crate::runtime::Runtime;
use crate::runtime::docker::{self, RunSpec};
use crate::runtime::job::JobOutput;
use crate::runtime::process::{self, ProcessSpec};
use crate::sys::log::quote;
use crate::{info, warn};

/// Time between two health checks of a starting worker.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Deadline of one health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// First retry delay after a failed start; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Extra time a stopping worker gets beyond the drain timeout before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where a worker port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// To be started at `not_before`.
    Pending { not_before: Instant },
    /// Docker: `docker rm -f <name>` / `docker run` in flight.
    Launching,
    /// Started; health-checked until healthy or the deadline.
    Probing {
        deadline: Instant,
        next_probe: Instant,
    },
    /// Healthy and in the backend set.
    Active,
    /// Draining in the backend set until its in-flight requests end or the deadline.
    Draining { deadline: Instant },
    /// Told to stop (SIGTERM / docker stop); SIGKILL at the deadline.
    Stopping { deadline: Instant },
    /// Docker: `docker rm -f` in flight.
    Removing,
    /// Nothing runs on this port.
    Gone,
}

impl WorkerState {
    /// Name shown in /status.
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Pending { .. } => "pending",
            WorkerState::Launching => "starting",
            WorkerState::Probing { .. } => "probing",
            WorkerState::Active => "active",
            WorkerState::Draining { .. } => "draining",
            WorkerState::Stopping { .. } => "stopping",
            WorkerState::Removing => "removing",
            WorkerState::Gone => "gone",
        }
    }
}

/// One worker port: the worker (process or container) started on it and where it stands.
/// Not a slab entry nor a queued request: the supervisor keys these by port.
#[derive(Debug)]
pub struct WorkerPort {
    /// The port (its key in the supervisor's map).
    pub port: u16,
    /// False once scaled away (or stopping): it is drained and stopped, not replaced.
    pub wanted: bool,
    /// State.
    pub state: WorkerState,
    /// Worker id (backend id): `local-<port>` or the container's short id.
    pub id: Option<String>,
    /// Docker: full container id.
    pub container: Option<String>,
    /// When `container` was learnt (a `docker ps` started before that cannot judge it).
    pub container_since: Option<Instant>,
    /// Process runtime: the worker process.
    pub process: Option<Child>,
    /// Bumped at each launch: results of older jobs and probes are ignored.
    pub generation: u64,
    /// Consecutive failed starts (sets the backoff).
    pub failures: u32,
    /// Replacements after a death or a failed start.
    pub restarts: u64,
    /// Seq of the backend set that first marked it draining.
    pub drain_seq: u64,
    /// Retry instant after a failed start or a death (used once removal completes).
    pub retry_at: Instant,
    /// Last start error, shown in /status.
    pub last_error: Option<String>,
    /// The health check in flight.
    pub probe: Option<Token>,
    /// SIGKILL already sent.
    pub killed: bool,
    /// When the current start began.
    pub launched_at: Instant,
}

impl WorkerPort {
    fn new(port: u16, now: Instant) -> WorkerPort {
        WorkerPort {
            port,
            wanted: true,
            state: WorkerState::Pending { not_before: now },
            id: None,
            container: None,
            container_since: None,
            process: None,
            generation: 0,
            failures: 0,
            restarts: 0,
            drain_seq: 0,
            retry_at: now,
            last_error: None,
            probe: None,
            killed: false,
            launched_at: now,
        }
    }
}

/// The supervisor's health check of a starting worker: it joins the backend set after a 200.
#[derive(Debug)]
pub struct WorkerProbe {
    probe: HealthProbe,
    /// The worker port it checks.
    port: u16,
    /// The launch generation it belongs to (a relaunch ignores older probes).
    generation: u64,
    /// Given up at this instant.
    deadline: Instant,
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (FIRST_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

impl Supervisor {
    /// The ports that should run a worker: `worker-port` .. + desired.
    fn wanted_ports(&self) -> impl Iterator<Item = u16> + use<> {
        let base = u32::from(self.cfg.worker_port);
        let n = self.desired_workers as u32;
        (base..(base + n).min(65536)).map(|p| p as u16)
    }

    /// Marks worker ports wanted or not according to `desired_workers`, creating missing ones.
    pub(super) fn sync_worker_ports(&mut self) {
        let now = Instant::now();
        let wanted: Vec<u16> = self.wanted_ports().collect();
        for worker in self.workers.values_mut() {
            worker.wanted = wanted.contains(&worker.port);
        }
        for port in wanted {
            self.workers
                .entry(port)
                .or_insert_with(|| WorkerPort::new(port, now));
        }
    }

    /// Workers healthy and active.
    pub(super) fn active_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|s| s.state == WorkerState::Active)
            .count()
    }

    /// `port 6001 (probing: connection refused), ...` for the start error.
    pub(super) fn unhealthy_worker_names(&self) -> String {
        self.workers
            .values()
            .filter(|s| s.wanted && s.state != WorkerState::Active)
            .map(|s| {
                format!(
                    "worker on port {}{} is {}{}",
                    s.port,
                    s.id.as_ref().map(|i| format!(" ({i})")).unwrap_or_default(),
                    s.state.name(),
                    s.last_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The backend set the children should have: active and draining workers.
    pub(super) fn backend_set(&self) -> Vec<BackendSpec> {
        self.workers
            .values()
            .filter_map(|s| {
                let state = match s.state {
                    WorkerState::Active => BackendState::Active,
                    WorkerState::Draining { .. } => BackendState::Draining,
                    _ => return None,
                };
                Some(BackendSpec {
                    id: s.id.clone()?,
                    addr: std::net::SocketAddr::new(self.cfg.worker_address, s.port),
                    weight: 1,
                    state,
                })
            })
            .collect()
    }

    /// One pass of every worker port's state machine.
    pub(super) fn drive_workers(&mut self, now: Instant) {
        self.sync_worker_ports();
        let stopping = matches!(self.phase, Phase::Stopping(_));
        let ports: Vec<u16> = self.workers.keys().copied().collect();
        for port in ports {
            let Some(worker) = self.workers.get_mut(&port) else {
                continue;
            };
            let wanted = worker.wanted && !stopping;
            match worker.state {
                WorkerState::Pending { not_before } => {
                    if !wanted {
                        worker.state = WorkerState::Gone;
                    } else if now >= not_before {
                        self.launch(port, now);
                    }
                }
                WorkerState::Launching | WorkerState::Removing => {}
                WorkerState::Probing {
                    deadline,
                    next_probe,
                } => {
                    if !wanted {
                        self.cancel_probe(port);
                        self.stop_worker(port, now, "not wanted before it was healthy");
                    } else if now >= deadline {
                        let reason = format!(
                            "not healthy within {} ms{}",
                            self.cfg.worker_start_timeout_ms,
                            worker
                                .last_error
                                .as_ref()
                                .map(|e| format!(" (last check: {e})"))
                                .unwrap_or_default()
                        );
                        self.start_failed(port, now, reason);
                    } else if worker.probe.is_none() && now >= next_probe {
                        self.start_probe(port, now);
                    }
                }
                WorkerState::Active => {
                    if !wanted && self.children.is_empty() {
                        // No LB child sends to it (stop): nothing to drain.
                        self.stop_worker(port, now, "stop");
                    } else if !wanted {
                        self.begin_drain(port, now);
                    }
                }
                WorkerState::Draining { deadline } => {
                    if self.drained(port) {
                        info!("worker_drained", "port={port}");
                        self.stop_worker(port, now, "drained");
                    } else if now >= deadline {
                        warn!("worker_drain_timeout", "port={port}");
                        self.stop_worker(port, now, "drain timeout");
                    }
                }
                WorkerState::Stopping { deadline } => {
                    if now >= deadline
                        && !worker.killed
                        && let Some(child) = worker.process.as_mut()
                    {
                        warn!("worker_kill", "port={port} reason=\"stop timeout\"");
                        let _ = child.kill();
                        worker.killed = true;
                    }
                }
                WorkerState::Gone => {
                    if wanted {
                        worker.state = WorkerState::Pending {
                            not_before: worker.retry_at.max(now),
                        };
                    } else {
                        self.workers.remove(&port);
                    }
                }
            }
        }
    }

    /// Starts the worker on `port`.
    fn launch(&mut self, port: u16, now: Instant) {
        let Some(rt) = self.runtime.clone() else {
            return;
        };
        let start_timeout = Duration::from_millis(self.cfg.worker_start_timeout_ms);
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        worker.generation += 1;
        worker.killed = false;
        worker.launched_at = now;
        let generation = worker.generation;
        match rt {
            Runtime::Process => {
                let spec = ProcessSpec {
                    exe: &self.exe,
                    address: self.cfg.worker_address,
                    port,
                    db: &self.db,
                    avg_delay: self.cfg.avg_delay,
                    failure: self.cfg.failure,
                    drain_timeout_ms: self.cfg.drain_timeout_ms,
                };
                match process::spawn(&spec) {
                    Ok(child) => {
                        info!(
                            "worker_spawned",
                            "port={port} id={} pid={}",
                            process::worker_id(port),
                            child.id()
                        );
                        worker.process = Some(child);
                        worker.id = Some(process::worker_id(port));
                        worker.state = WorkerState::Probing {
                            deadline: now + start_timeout,
                            next_probe: now + PROBE_EVERY,
                        };
                    }
                    Err(e) => self.start_failed(port, now, format!("spawn: {e}")),
                }
            }
            Runtime::Docker(d) => {
                worker.state = WorkerState::Launching;
                let cmd = d.remove(&[d.name(port)]);
                if !self.spawn_job(
                    cmd,
                    JobKind::ClearName { port, generation },
                    now + super::DOCKER_CALL_TIMEOUT,
                ) {
                    self.start_failed(port, now, "docker could not be started".into());
                }
            }
        }
    }

    /// `docker rm -f <name>` finished (a missing container is fine): `docker run` now.
    pub(super) fn on_clear_name_done(&mut self, port: u16, generation: u64) {
        let now = Instant::now();
        let stopping = matches!(self.phase, Phase::Stopping(_));
        let Some(Runtime::Docker(d)) = self.runtime.clone() else {
            return;
        };
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        if worker.generation != generation || worker.state != WorkerState::Launching {
            return;
        }
        if !worker.wanted || stopping {
            worker.state = WorkerState::Gone;
            return;
        }
        let spec = RunSpec {
            port,
            address: self.cfg.worker_address,
            db: self.db.clone(),
            avg_delay: self.cfg.avg_delay,
            failure: self.cfg.failure,
            drain_timeout_ms: self.cfg.drain_timeout_ms,
            pids_limit: self.cfg.worker_pids_limit,
            memory_mb: self.cfg.worker_memory_mb,
        };
        if !self.spawn_job(
            d.run(&spec),
            JobKind::Run { port, generation },
            now + super::DOCKER_CALL_TIMEOUT,
        ) {
            self.start_failed(port, now, "docker could not be started".into());
        }
    }

    /// `docker run` finished: the container id, or a failed start.
    pub(super) fn on_run_done(&mut self, port: u16, generation: u64, out: JobOutput) {
        let now = Instant::now();
        let start_timeout = Duration::from_millis(self.cfg.worker_start_timeout_ms);
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        if worker.generation != generation || worker.state != WorkerState::Launching {
            return;
        }
        let cid = out.stdout.lines().last().unwrap_or("").trim().to_string();
        if !out.success || cid.is_empty() {
            // The container may exist (created, not started): the retry removes it by name.
            self.start_failed(port, now, format!("docker run: {}", out.error_text()));
            return;
        }
        let short = docker::short_id(&cid);
        info!(
            "worker_container_started",
            "port={port} id={short} container={cid}"
        );
        worker.id = Some(short);
        worker.container = Some(cid);
        worker.container_since = Some(now);
        worker.state = WorkerState::Probing {
            deadline: now + start_timeout,
            next_probe: now,
        };
    }

    /// `docker stop` finished: remove the container.
    pub(super) fn on_stop_done(&mut self, port: u16, generation: u64, out: JobOutput) {
        if !out.success {
            warn!(
                "docker_stop_failed",
                "port={port} error={}",
                quote(&out.error_text())
            );
        }
        let Some(worker) = self.workers.get(&port) else {
            return;
        };
        if worker.generation != generation {
            return;
        }
        self.remove_container(port, Instant::now());
    }

    /// `docker rm -f` finished: the port is free again.
    pub(super) fn on_remove_done(&mut self, port: u16, generation: u64, out: JobOutput) {
        if !out.success {
            warn!(
                "docker_rm_failed",
                "port={port} error={}",
                quote(&out.error_text())
            );
        }
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        if worker.generation != generation || worker.state != WorkerState::Removing {
            return;
        }
        info!(
            "worker_removed",
            "port={port} id={}",
            worker.id.as_deref().unwrap_or("-")
        );
        worker.container = None;
        worker.container_since = None;
        worker.state = WorkerState::Gone;
    }

    /// `docker logs` of a container that did not come up: logged, then the container goes.
    pub(super) fn on_logs_done(&mut self, port: u16, generation: u64, out: JobOutput) {
        let Some(worker) = self.workers.get(&port) else {
            return;
        };
        if worker.generation != generation || worker.state != WorkerState::Removing {
            return;
        }
        let text: Vec<&str> = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        warn!(
            "worker_container_output",
            "port={port} id={} output={}",
            worker.id.as_deref().unwrap_or("-"),
            quote(&text.join(" | "))
        );
        self.remove_container(port, Instant::now());
    }

    /// A start failed: log, clean up, retry after a backoff.
    fn start_failed(&mut self, port: u16, now: Instant, reason: String) {
        self.cancel_probe(port);
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        worker.failures += 1;
        worker.restarts += 1;
        let delay = backoff(worker.failures);
        worker.retry_at = now + delay;
        warn!(
            "worker_start_failed",
            "port={port} id={} attempt={} error={} retry_in_ms={}",
            worker.id.as_deref().unwrap_or("-"),
            worker.failures,
            quote(&reason),
            delay.as_millis()
        );
        worker.last_error = Some(reason);
        if let Some(mut child) = worker.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Docker: what the container said is lost with it, so read it first.
        let logs = match (self.runtime.clone(), worker.container.clone()) {
            (Some(Runtime::Docker(d)), Some(cid)) => Some((d.logs(&cid, 20), worker.generation)),
            _ => None,
        };
        let reading = logs.is_some_and(|(cmd, generation)| {
            self.spawn_job(
                cmd,
                JobKind::Logs { port, generation },
                now + super::DOCKER_CALL_TIMEOUT,
            )
        });
        if reading {
            if let Some(worker) = self.workers.get_mut(&port) {
                worker.state = WorkerState::Removing;
            }
        } else {
            self.remove_container(port, now);
        }
        // A worker the autoscaler asked for (beyond `min`) that cannot start is given up,
        // and scale-out pauses; the `min` ones are retried here with the backoff.
        let index = usize::from(port).saturating_sub(usize::from(self.cfg.worker_port));
        if self.cfg.autoscale.enabled
            && self.phase == Phase::Running
            && index >= self.cfg.autoscale.min
        {
            let d = self.scaler.report_start_failure(now);
            self.apply_scale(d, now);
        }
    }

    /// Docker: `docker rm -f` of the worker's container (or its name) -> Removing.
    /// Process: nothing to remove -> Gone.
    fn remove_container(&mut self, port: u16, now: Instant) {
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        match self.runtime.clone() {
            Some(Runtime::Docker(d)) => {
                let target = worker.container.clone().unwrap_or_else(|| d.name(port));
                let generation = worker.generation;
                worker.state = WorkerState::Removing;
                if !self.spawn_job(
                    d.remove(&[target]),
                    JobKind::Remove { port, generation },
                    now + super::DOCKER_CALL_TIMEOUT,
                ) && let Some(worker) = self.workers.get_mut(&port)
                {
                    // Retried as a leftover/stray by the next reconcile or stop sweep.
                    worker.container = None;
                    worker.state = WorkerState::Gone;
                }
            }
            _ => worker.state = WorkerState::Gone,
        }
    }

    /// A worker that was serving (or draining) died.
    fn worker_died(&mut self, port: u16, now: Instant, why: &str) {
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        match worker.state {
            WorkerState::Probing { .. } => {
                self.start_failed(port, now, format!("exited before healthy: {why}"));
            }
            WorkerState::Active | WorkerState::Draining { .. } => {
                let was_active = worker.state == WorkerState::Active;
                let stopping = matches!(self.phase, Phase::Stopping(_));
                if was_active && !stopping {
                    warn!(
                        "worker_died",
                        "port={port} id={} reason={} action=replace",
                        worker.id.as_deref().unwrap_or("-"),
                        quote(why)
                    );
                    worker.restarts += 1;
                } else {
                    info!("worker_exited", "port={port} reason={}", quote(why));
                }
                worker.retry_at = now;
                self.remove_container(port, now);
                // Out of the backend set at once: the children stop sending to it.
                self.publish_backends();
            }
            WorkerState::Stopping { .. }
                if worker.process.is_none() && worker.container.is_none() =>
            {
                worker.state = WorkerState::Gone;
            }
            _ => {}
        }
    }

    /// Marks an active worker draining and tells the children.
    fn begin_drain(&mut self, port: u16, now: Instant) {
        let timeout = Duration::from_millis(self.cfg.drain_timeout_ms);
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        info!(
            "worker_draining",
            "port={port} id={} timeout_ms={}",
            worker.id.as_deref().unwrap_or("-"),
            timeout.as_millis()
        );
        worker.state = WorkerState::Draining {
            deadline: now + timeout,
        };
        self.publish_backends();
        let seq = self.seq;
        if let Some(worker) = self.workers.get_mut(&port) {
            worker.drain_seq = seq;
        }
    }

    /// True when every child has applied the set that drains this worker and reports no
    /// request in flight to it.
    fn drained(&self, port: u16) -> bool {
        let Some(worker) = self.workers.get(&port) else {
            return true;
        };
        let Some(id) = worker.id.as_deref() else {
            return true;
        };
        self.children
            .iter()
            .filter(|c| !c.conn.is_closed())
            .all(|c| {
                c.metrics_basis >= worker.drain_seq
                    && c.metrics.as_ref().is_some_and(|m| {
                        m.backends
                            .iter()
                            .filter(|b| b.id == id)
                            .all(|b| b.in_flight == 0)
                    })
            })
    }

    /// Tells the worker to stop (it drains and flushes its stats).
    fn stop_worker(&mut self, port: u16, now: Instant, why: &str) {
        let grace = Duration::from_millis(self.cfg.drain_timeout_ms) + STOP_GRACE;
        let rt = self.runtime.clone();
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        info!(
            "worker_stopping",
            "port={port} id={} reason={}",
            worker.id.as_deref().unwrap_or("-"),
            quote(why)
        );
        if let Some(child) = worker.process.as_ref() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            worker.state = WorkerState::Stopping {
                deadline: now + grace,
            };
        } else if let (Some(Runtime::Docker(d)), Some(cid)) = (rt, worker.container.clone()) {
            let generation = worker.generation;
            worker.state = WorkerState::Stopping {
                deadline: now + grace,
            };
            let secs = self.cfg.drain_timeout_ms.div_ceil(1000).max(1);
            if !self.spawn_job(
                d.stop(&cid, secs),
                JobKind::Stop { port, generation },
                now + grace + super::DOCKER_CALL_TIMEOUT,
            ) {
                self.remove_container(port, now);
            }
        } else {
            worker.state = WorkerState::Gone;
        }
        self.publish_backends();
    }

    /// Collects exited worker processes.
    pub(super) fn reap_worker_processes(&mut self) {
        let now = Instant::now();
        let mut exited = Vec::new();
        for worker in self.workers.values_mut() {
            if let Some(child) = worker.process.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                worker.process = None;
                exited.push((worker.port, status));
            }
        }
        for (port, status) in exited {
            let Some(worker) = self.workers.get_mut(&port) else {
                continue;
            };
            if let WorkerState::Stopping { .. } = worker.state {
                info!(
                    "worker_stopped",
                    "port={port} status={}",
                    quote(&status.to_string())
                );
                worker.state = WorkerState::Gone;
            } else {
                self.worker_died(port, now, &status.to_string());
            }
        }
    }

    /// SIGKILL to every worker process (forced stop, stop timeout).
    pub(super) fn kill_worker_processes(&mut self) {
        for worker in self.workers.values_mut() {
            if let Some(mut child) = worker.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.workers.retain(|_, s| s.container.is_some());
    }

    fn start_probe(&mut self, port: u16, now: Instant) {
        let token = self.token();
        let addr = std::net::SocketAddr::new(self.cfg.worker_address, port);
        let path = self.cfg.proxy.health_path.clone();
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        let WorkerState::Probing { deadline, .. } = worker.state else {
            return;
        };
        let started =
            HealthProbe::start(addr, ProbeKind::Http { path: &path }).and_then(|mut p| {
                p.register(self.poll.registry(), token)?;
                Ok(p)
            });
        match started {
            Ok(probe) => {
                worker.probe = Some(token);
                let check = WorkerProbe {
                    probe,
                    port,
                    generation: worker.generation,
                    deadline: (now + PROBE_TIMEOUT).min(deadline),
                };
                self.probes.insert(token, check);
            }
            Err(e) => {
                worker.last_error = Some(e.to_string());
                worker.state = WorkerState::Probing {
                    deadline,
                    next_probe: now + PROBE_EVERY,
                };
            }
        }
    }

    fn cancel_probe(&mut self, port: u16) {
        if let Some(worker) = self.workers.get_mut(&port)
            && let Some(t) = worker.probe.take()
            && let Some(mut p) = self.probes.remove(&t)
        {
            p.probe.deregister(self.poll.registry());
        }
    }

    /// Readiness on a probe's socket.
    pub(super) fn on_probe_event(&mut self, ev: &mio::event::Event) {
        let now = Instant::now();
        let Some(p) = self.probes.get_mut(&ev.token()) else {
            return;
        };
        let verdict = match p.probe.on_event(ev) {
            ProbeStatus::Pending if now >= p.deadline => Err("timed out".to_string()),
            ProbeStatus::Pending => return,
            ProbeStatus::Status(200) => Ok(()),
            ProbeStatus::Status(code) => Err(format!("status {code}")),
            ProbeStatus::Connected => Err("connected without an answer".to_string()),
            ProbeStatus::Failed(why) => Err(why),
        };
        self.probe_done(ev.token(), verdict, now);
    }

    /// Timer pass over the probes: those past their deadline fail.
    pub(super) fn expire_probes(&mut self, now: Instant) {
        let late: Vec<Token> = self
            .probes
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            self.probe_done(t, Err("timed out".to_string()), now);
        }
    }

    /// A probe ended: the worker joins (`Ok`) or is probed again after [`PROBE_EVERY`].
    fn probe_done(&mut self, token: Token, verdict: Result<(), String>, now: Instant) {
        let Some(mut p) = self.probes.remove(&token) else {
            return;
        };
        p.probe.deregister(self.poll.registry());
        let port = p.port;
        let Some(worker) = self.workers.get_mut(&port) else {
            return;
        };
        if worker.generation != p.generation || worker.probe != Some(token) {
            return;
        }
        worker.probe = None;
        let WorkerState::Probing { deadline, .. } = worker.state else {
            return;
        };
        match verdict {
            Ok(()) => {
                info!(
                    "worker_healthy",
                    "port={port} id={} after_ms={}",
                    worker.id.as_deref().unwrap_or("-"),
                    now.duration_since(worker.launched_at).as_millis()
                );
                worker.state = WorkerState::Active;
                worker.failures = 0;
                worker.last_error = None;
                self.publish_backends();
            }
            Err(e) => {
                worker.last_error = Some(e);
                worker.state = WorkerState::Probing {
                    deadline,
                    next_probe: now + PROBE_EVERY,
                };
            }
        }
    }

    /// Docker: starts a `docker ps` every RECONCILE_EVERY.
    pub(super) fn reconcile_if_due(&mut self, now: Instant) {
        if self.reconcile_running
            || now.duration_since(self.last_reconcile) < super::RECONCILE_EVERY
        {
            return;
        }
        let Some(Runtime::Docker(d)) = self.runtime.clone() else {
            return;
        };
        self.last_reconcile = now;
        if self.spawn_job(
            d.ps(),
            JobKind::Reconcile { started: now },
            now + super::DOCKER_CALL_TIMEOUT,
        ) {
            self.reconcile_running = true;
        }
    }

    /// Compares `docker ps` with the worker ports: replaces dead workers, removes strays.
    pub(super) fn on_reconcile(&mut self, started: Instant, stdout: &str) {
        let now = Instant::now();
        let listed = docker::parse_ps(stdout);
        let mut dead = Vec::new();
        for worker in self.workers.values() {
            let (Some(cid), Some(since)) = (&worker.container, worker.container_since) else {
                continue;
            };
            if since >= started {
                continue;
            }
            if !matches!(
                worker.state,
                WorkerState::Probing { .. } | WorkerState::Active | WorkerState::Draining { .. }
            ) {
                continue;
            }
            match listed.iter().find(|c| &c.id == cid) {
                Some(c) if c.state == "running" => {}
                Some(c) => dead.push((worker.port, format!("container {}", c.state))),
                None => dead.push((worker.port, "container gone".to_string())),
            }
        }
        for (port, why) in dead {
            self.worker_died(port, now, &why);
        }
        let strays: Vec<String> = listed
            .iter()
            .filter(|c| {
                !self
                    .workers
                    .values()
                    .any(|s| s.container.as_ref() == Some(&c.id))
            })
            .filter(|c| {
                !c.port.is_some_and(|p| {
                    self.workers
                        .get(&p)
                        .is_some_and(|s| s.state == WorkerState::Launching)
                })
            })
            .map(|c| c.id.clone())
            .collect();
        if !strays.is_empty()
            && let Some(Runtime::Docker(d)) = self.runtime.clone()
        {
            warn!("stray_containers", "count={} action=remove", strays.len());
            self.spawn_job(
                d.remove(&strays),
                JobKind::SweepRemove,
                now + super::DOCKER_CALL_TIMEOUT,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_millis(1000));
        assert_eq!(backoff(3), Duration::from_millis(2000));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
