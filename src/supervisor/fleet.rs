//! The fleet: the workers wanted (`desired`) against the workers there are, one [`Worker`] per
//! slot, each a small state machine. It owns no socket and no process: it asks a runtime
//! [`Driver`] to launch, stop and remove, is told what happened through [`Fleet::on_event`],
//! asks for health probes ([`Fleet::due_probes`]) and takes their verdicts
//! ([`Fleet::on_probe`]), and asks the LB pool ([`LbView`]) whether a draining worker is
//! drained. So it is unit-tested with an in-memory driver (below).
//!
//! ```text
//! Pending -> Launching (driver.launch) -> Probing (GET health-path) -> Active
//! Active -> Draining (draining in the backend set, until in-flight 0 or drain timeout)
//!        -> Stopping (driver.stop: the worker drains and flushes its stats) -> Removing -> Gone
//! Draining -> Active (wanted again before it stopped: a scale-in undone by new demand)
//! a start that fails, or a worker that dies -> Removing -> Gone -> Pending (after a backoff)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::proxy::control::{BackendSpec, BackendState};
use crate::runtime::driver::{Driver, DriverEvent, Existing, LaunchSpec, Placement, Removal};
use crate::sys::log::quote;
use crate::{info, warn};

/// Time between two health checks of a starting worker (the loop wakes for it: see
/// [`Fleet::next_probe_at`]); short, since every probe interval is added to a cold start.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);
/// The first retries come sooner (10, 20, 30, 40 ms, then [`PROBE_EVERY`]): a local worker
/// binds its port a few ms after it is spawned.
const PROBE_FIRST: Duration = Duration::from_millis(10);

/// Delay before the next probe after `sent` failed ones.
fn probe_interval(sent: u32) -> Duration {
    PROBE_FIRST.saturating_mul(sent.max(1)).min(PROBE_EVERY)
}
/// Deadline of one health check.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// First retry delay after a failed start; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Extra time a stopping worker gets beyond the drain timeout before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest an adopted worker may take to pass its first health check: it was serving, so a
/// slow answer means it is not healthy.
const ADOPT_PROBE_WINDOW: Duration = Duration::from_secs(3);

/// Where a worker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// To be started at `not_before`.
    Pending { not_before: Instant },
    /// The driver is launching it.
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
    /// Told to stop; killed at the deadline.
    Stopping { deadline: Instant },
    /// The driver is removing it.
    Removing,
    /// Nothing runs in this slot.
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

/// One slot of the fleet: the worker launched in it and where it stands.
#[derive(Debug)]
pub struct Worker {
    /// Its key in the fleet.
    pub slot: u16,
    /// False once scaled away (or stopping): it is drained and stopped, not replaced.
    pub wanted: bool,
    /// State.
    pub state: WorkerState,
    /// Where the driver placed it (id, address, pid or container), once launched.
    pub placement: Option<Placement>,
    /// Bumped at each launch: driver events and probes of older launches are ignored.
    pub generation: u64,
    /// Consecutive failed starts (sets the backoff).
    pub failures: u32,
    /// Replacements after a death or a failed start.
    pub restarts: u64,
    /// Seq of the first backend set that marked it draining (None until published).
    pub drain_seq: Option<u64>,
    /// Earliest relaunch after a failed start or a death.
    pub retry_at: Instant,
    /// Last start error, shown in /status.
    pub last_error: Option<String>,
    /// A health probe is in flight.
    pub probing: bool,
    /// Killed after its stop grace.
    pub killed: bool,
    /// When the current launch began.
    pub launched_at: Instant,
    /// Launch to placed by the driver (ms), and health probes sent since: where a start's
    /// time goes (logged with `worker_healthy`).
    pub placed_ms: u64,
    /// Health probes sent for the current launch.
    pub probes: u32,
    /// Adopted from a previous run with an older worker image: replaced once a surge worker
    /// is serving.
    pub outdated: bool,
    /// The runtime is stopping it (`DriverEvent::Leaving`): its drain is never undone.
    pub leaving: bool,
}

impl Worker {
    fn new(slot: u16, now: Instant) -> Worker {
        Worker {
            slot,
            wanted: true,
            state: WorkerState::Pending { not_before: now },
            placement: None,
            generation: 0,
            failures: 0,
            restarts: 0,
            drain_seq: None,
            retry_at: now,
            last_error: None,
            probing: false,
            killed: false,
            launched_at: now,
            placed_ms: 0,
            probes: 0,
            outdated: false,
            leaving: false,
        }
    }

    /// Its worker id, `-` before it has one.
    pub fn id(&self) -> &str {
        self.placement.as_ref().map_or("-", |p| p.id.as_str())
    }
}

/// Settings the fleet takes from the config (replaced on reload).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetSettings {
    /// `worker-start-timeout-ms`.
    pub start_timeout: Duration,
    /// `drain-timeout-ms`.
    pub drain_timeout: Duration,
    /// `avg-delay` for workers launched from now on.
    pub avg_delay: u64,
    /// `failure` for workers launched from now on.
    pub failure: f64,
}

impl FleetSettings {
    /// The worker settings as a launch would use them (slot and generation unset).
    pub fn launch_spec(&self) -> LaunchSpec {
        LaunchSpec {
            slot: 0,
            generation: 0,
            avg_delay: self.avg_delay,
            failure: self.failure,
            drain_timeout_ms: self.drain_timeout.as_millis() as u64,
        }
    }
}

/// What the fleet needs to know about the LB children.
pub trait LbView {
    /// Whether any LB child is alive (else there is nobody to drain a worker from).
    fn serving(&self) -> bool;
    /// Whether every live child applied backend set `seq` (or later) and has since reported
    /// no request in flight to worker `id`.
    fn drained(&self, id: &str, seq: u64) -> bool;
}

/// A health probe the fleet wants run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Worker slot.
    pub slot: u16,
    /// Its launch generation.
    pub generation: u64,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Given up at this instant.
    pub deadline: Instant,
}

/// Desired against actual workers.
#[derive(Debug)]
pub struct Fleet {
    workers: BTreeMap<u16, Worker>,
    desired: usize,
    settings: FleetSettings,
    /// Slots whose start failed since [`Fleet::take_start_failures`].
    start_failures: Vec<u16>,
    /// The outdated worker being replaced, and the surge slot serving in its stead.
    replacing: Option<Replacement>,
}

/// One outdated worker replaced without lowering capacity: a surge worker starts in a spare
/// slot; once it serves, the outdated one drains and stops; its slot is relaunched with the
/// current image; once that serves, the surge worker drains and stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Replacement {
    old: u16,
    surge: u16,
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (FIRST_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

impl Fleet {
    /// An empty fleet that will want `desired` workers.
    pub fn new(desired: usize, settings: FleetSettings) -> Fleet {
        Fleet {
            workers: BTreeMap::new(),
            desired,
            settings,
            start_failures: Vec::new(),
            replacing: None,
        }
    }

    /// Workers wanted.
    pub fn desired(&self) -> usize {
        self.desired
    }

    /// Changes the number of workers wanted (reload, autoscaler, stop).
    pub fn set_desired(&mut self, n: usize, now: Instant) {
        self.desired = n;
        self.sync_slots(now);
    }

    /// New settings (reload): launches from now on use them.
    pub fn reconfigure(&mut self, settings: FleetSettings) {
        self.settings = settings;
    }

    /// Every worker, by slot.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// No worker left in any state.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Forgets every worker (after the driver killed them all).
    pub fn forget_all(&mut self) {
        self.workers.clear();
    }

    /// Workers healthy and active.
    pub fn active(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state == WorkerState::Active)
            .count()
    }

    /// Slots whose start failed since the last call (the autoscaler gives them up).
    pub fn take_start_failures(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.start_failures)
    }

    /// Marks slots wanted or not according to `desired` (and a replacement in progress),
    /// creating missing ones.
    fn sync_slots(&mut self, now: Instant) {
        let n = self.desired.min(usize::from(u16::MAX));
        for w in self.workers.values_mut() {
            w.wanted = usize::from(w.slot) < n;
        }
        if let Some(r) = self.replacing {
            let surge_serving = self
                .workers
                .get(&r.surge)
                .is_some_and(|w| w.state == WorkerState::Active);
            if let Some(w) = self.workers.get_mut(&r.surge) {
                w.wanted = true;
            }
            if let Some(w) = self.workers.get_mut(&r.old)
                && surge_serving
                && w.outdated
            {
                w.wanted = false;
            }
        }
        for slot in 0..n as u16 {
            self.workers
                .entry(slot)
                .or_insert_with(|| Worker::new(slot, now));
        }
    }

    /// `worker on port 6001 (id) is probing: refused; ...` for the start error.
    pub fn unhealthy_names(&self, driver: &dyn Driver) -> String {
        self.workers
            .values()
            .filter(|w| w.wanted && w.state != WorkerState::Active)
            .map(|w| {
                let addr = w
                    .placement
                    .as_ref()
                    .map(|p| p.addr)
                    .or_else(|| driver.planned_address(w.slot));
                format!(
                    "worker {}{} is {}{}",
                    addr.map(|a| format!("on port {}", a.port()))
                        .unwrap_or_else(|| format!("in slot {}", w.slot)),
                    w.placement
                        .as_ref()
                        .map(|p| format!(" ({})", p.id))
                        .unwrap_or_default(),
                    w.state.name(),
                    w.last_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The backend set the LB children should have: active and draining workers.
    pub fn backend_set(&self) -> Vec<BackendSpec> {
        self.workers
            .values()
            .filter_map(|w| {
                let state = match w.state {
                    WorkerState::Active => BackendState::Active,
                    WorkerState::Draining { .. } => BackendState::Draining,
                    _ => return None,
                };
                let p = w.placement.as_ref()?;
                Some(BackendSpec {
                    id: p.id.clone(),
                    addr: p.addr,
                    weight: 1,
                    state,
                })
            })
            .collect()
    }

    /// Backend set `seq` was just sent: draining workers not yet stamped wait for it.
    pub fn stamp_drains(&mut self, seq: u64) {
        for w in self.workers.values_mut() {
            if matches!(w.state, WorkerState::Draining { .. }) && w.drain_seq.is_none() {
                w.drain_seq = Some(seq);
            }
        }
    }

    /// One pass of every worker's state machine. `stopping`: the supervisor is stopping, no
    /// worker is wanted.
    pub fn drive(
        &mut self,
        now: Instant,
        driver: &mut dyn Driver,
        lb: &dyn LbView,
        stopping: bool,
    ) {
        self.plan_replacement(now, stopping);
        self.sync_slots(now);
        let slots: Vec<u16> = self.workers.keys().copied().collect();
        for slot in slots {
            self.drive_one(slot, now, driver, lb, stopping);
        }
        driver.want(self.running_count(stopping), now);
    }

    /// Workers that should run now: the wanted ones, and the unwanted ones until they are told
    /// to stop (a cluster runtime scales to this count once they have drained).
    fn running_count(&self, stopping: bool) -> usize {
        self.workers
            .values()
            .filter(|w| {
                (w.wanted && !stopping)
                    || matches!(
                        w.state,
                        WorkerState::Launching
                            | WorkerState::Probing { .. }
                            | WorkerState::Active
                            | WorkerState::Draining { .. }
                    )
            })
            .count()
    }

    fn drive_one(
        &mut self,
        slot: u16,
        now: Instant,
        driver: &mut dyn Driver,
        lb: &dyn LbView,
        stopping: bool,
    ) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        let wanted = w.wanted && !stopping;
        match w.state {
            WorkerState::Pending { not_before } => {
                if !wanted {
                    w.state = WorkerState::Gone;
                } else if now >= not_before {
                    self.launch(slot, now, driver);
                }
            }
            WorkerState::Launching | WorkerState::Removing => {}
            WorkerState::Probing { deadline, .. } => {
                if !wanted {
                    self.stop(slot, now, "not wanted before it was healthy", driver);
                } else if now >= deadline {
                    let reason = format!(
                        "not healthy within {} ms{}",
                        self.settings.start_timeout.as_millis(),
                        w.last_error
                            .as_ref()
                            .map(|e| format!(" (last check: {e})"))
                            .unwrap_or_default()
                    );
                    self.start_failed(slot, now, reason, driver);
                }
            }
            WorkerState::Active if !wanted && !lb.serving() => {
                // No LB child sends to it (stop): nothing to drain.
                self.stop(slot, now, "stop", driver);
            }
            WorkerState::Active if !wanted => self.begin_drain(slot, now),
            WorkerState::Active => {}
            WorkerState::Draining { .. } if wanted && !w.leaving && !w.outdated => {
                // Wanted again before it stopped (demand came back during a scale-in): it
                // serves again now, instead of requests waiting for a stop and a fresh start.
                info!("worker_undrained", "slot={slot} id={}", w.id());
                w.state = WorkerState::Active;
                w.drain_seq = None;
            }
            WorkerState::Draining { deadline } => {
                let seq = w.drain_seq;
                if seq.is_some_and(|seq| lb.drained(w.id(), seq)) {
                    info!("worker_drained", "slot={slot} id={}", w.id());
                    self.stop(slot, now, "drained", driver);
                } else if now >= deadline {
                    warn!("worker_drain_timeout", "slot={slot} id={}", w.id());
                    self.stop(slot, now, "drain timeout", driver);
                }
            }
            WorkerState::Stopping { deadline } => {
                if now >= deadline && !w.killed {
                    w.killed = true;
                    driver.kill(slot, w.generation);
                }
            }
            WorkerState::Gone if wanted => {
                w.state = WorkerState::Pending {
                    not_before: w.retry_at.max(now),
                };
            }
            WorkerState::Gone => {
                self.workers.remove(&slot);
            }
        }
    }

    /// Takes in what a previous run left in the runtime (start, before any launch): running
    /// workers in a wanted slot are adopted (probed, then serving with their id); outdated
    /// ones too, to be replaced one at a time; extra ones are adopted to be drained and
    /// stopped; the rest is removed. Each decision is logged.
    pub fn adopt(&mut self, mut found: Vec<Existing>, now: Instant, driver: &mut dyn Driver) {
        self.sync_slots(now);
        found.sort_by_key(|e| e.slot);
        for e in found {
            let id = e.placement.as_ref().map_or("-", |p| p.id.as_str());
            let slot = match (e.slot, &e.placement) {
                (Some(slot), Some(_)) if e.running => slot,
                _ => {
                    let why = if e.running {
                        "no slot label"
                    } else {
                        "not running"
                    };
                    info!(
                        "worker_discarded",
                        "handle={} reason={}",
                        e.handle,
                        quote(why)
                    );
                    driver.discard(&e, now);
                    continue;
                }
            };
            if self
                .workers
                .get(&slot)
                .is_some_and(|w| w.placement.is_some())
            {
                info!(
                    "worker_discarded",
                    "slot={slot} id={id} reason=\"slot taken\""
                );
                driver.discard(&e, now);
                continue;
            }
            let wanted = usize::from(slot) < self.desired;
            let (event, action) = match (wanted, e.current) {
                (true, true) => ("worker_adopted", "serve"),
                (true, false) => ("worker_adopted_outdated", "serve, then replace"),
                (false, _) => ("worker_adopted_extra", "drain and remove"),
            };
            info!(event, "slot={slot} id={id} action={}", quote(action));
            let w = self
                .workers
                .entry(slot)
                .or_insert_with(|| Worker::new(slot, now));
            w.generation += 1;
            w.wanted = wanted;
            w.outdated = !e.current;
            w.launched_at = now;
            w.placement = e.placement.clone();
            w.state = WorkerState::Probing {
                deadline: now + ADOPT_PROBE_WINDOW.min(self.settings.start_timeout),
                next_probe: now,
            };
            driver.adopt(slot, w.generation, &e, now);
        }
    }

    /// Replaces outdated workers one at a time (see [`Replacement`]); starts the next one
    /// once the whole wanted fleet serves and no extra worker is left.
    fn plan_replacement(&mut self, now: Instant, stopping: bool) {
        if stopping {
            self.replacing = None;
            return;
        }
        if let Some(r) = self.replacing {
            let renewed = self
                .workers
                .get(&r.old)
                .is_some_and(|w| !w.outdated && w.state == WorkerState::Active);
            if renewed || usize::from(r.old) >= self.desired {
                info!("worker_replaced", "slot={} surge_slot={}", r.old, r.surge);
                self.replacing = None;
            }
            return;
        }
        let n = self.desired.min(usize::from(u16::MAX)) as u16;
        let serving = (0..n).all(|slot| {
            self.workers
                .get(&slot)
                .is_some_and(|w| w.state == WorkerState::Active)
        });
        if !serving || self.workers.keys().any(|&slot| slot >= n) {
            return;
        }
        let Some(old) = self
            .workers
            .values()
            .find(|w| w.outdated && w.wanted)
            .map(|w| w.slot)
        else {
            return;
        };
        info!(
            "worker_replacing",
            "slot={old} reason=\"outdated image\" surge_slot={n}"
        );
        self.workers.insert(n, Worker::new(n, now));
        self.replacing = Some(Replacement { old, surge: n });
    }

    /// Starts the worker in `slot`.
    fn launch(&mut self, slot: u16, now: Instant, driver: &mut dyn Driver) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        w.generation += 1;
        w.killed = false;
        w.probing = false;
        w.launched_at = now;
        w.probes = 0;
        w.placement = None;
        w.drain_seq = None;
        w.outdated = false;
        w.leaving = false;
        w.state = WorkerState::Launching;
        let spec = LaunchSpec {
            slot,
            generation: w.generation,
            avg_delay: self.settings.avg_delay,
            failure: self.settings.failure,
            drain_timeout_ms: self.settings.drain_timeout.as_millis() as u64,
        };
        driver.launch(&spec, now);
    }

    /// Acts on what the driver reports about a worker (other events are not the fleet's).
    pub fn on_event(&mut self, ev: DriverEvent, now: Instant, driver: &mut dyn Driver) {
        let (slot, generation) = match &ev {
            DriverEvent::Launched {
                slot, generation, ..
            }
            | DriverEvent::Stopped { slot, generation }
            | DriverEvent::Removed { slot, generation }
            | DriverEvent::Exited {
                slot, generation, ..
            }
            | DriverEvent::Leaving { slot, generation } => (*slot, *generation),
            DriverEvent::Prepared(_) | DriverEvent::Listed(_) => return,
        };
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        if w.generation != generation {
            return;
        }
        if matches!(ev, DriverEvent::Leaving { .. }) {
            w.leaving = true;
        }
        match (ev, w.state) {
            (DriverEvent::Launched { result, .. }, WorkerState::Launching) => match result {
                Ok(p) => {
                    w.placement = Some(p);
                    w.placed_ms = now.duration_since(w.launched_at).as_millis() as u64;
                    w.state = WorkerState::Probing {
                        deadline: now + self.settings.start_timeout,
                        next_probe: now,
                    };
                }
                Err(e) => self.start_failed(slot, now, e, driver),
            },
            (DriverEvent::Stopped { .. }, WorkerState::Stopping { .. }) => {
                w.state = WorkerState::Removing;
                driver.remove(slot, generation, Removal::Normal, now);
            }
            (DriverEvent::Removed { .. }, WorkerState::Removing) => {
                info!("worker_removed", "slot={slot} id={}", w.id());
                w.state = WorkerState::Gone;
            }
            (DriverEvent::Exited { why, .. }, _) => self.died(slot, now, &why, driver),
            (DriverEvent::Leaving { .. }, WorkerState::Active) => {
                // The runtime stops it (it answers /healthz 503, then drains): out of the
                // rotation now, relaunched once gone if still wanted.
                info!("worker_leaving", "slot={slot} id={} source=runtime", w.id());
                self.begin_drain(slot, now);
            }
            (DriverEvent::Leaving { .. }, WorkerState::Probing { .. }) => {
                info!("worker_leaving", "slot={slot} id={} source=runtime", w.id());
                w.probing = false;
                w.retry_at = now;
                w.state = WorkerState::Removing;
                driver.remove(slot, generation, Removal::Normal, now);
            }
            _ => {}
        }
    }

    /// A start failed: log, remove what is left, retry after a backoff.
    fn start_failed(&mut self, slot: u16, now: Instant, reason: String, driver: &mut dyn Driver) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        w.failures += 1;
        w.restarts += 1;
        let delay = backoff(w.failures);
        w.retry_at = now + delay;
        warn!(
            "worker_start_failed",
            "slot={slot} id={} attempt={} error={} retry_in_ms={}",
            w.id(),
            w.failures,
            quote(&reason),
            delay.as_millis()
        );
        w.last_error = Some(reason);
        w.probing = false;
        w.state = WorkerState::Removing;
        driver.remove(slot, w.generation, Removal::FailedStart, now);
        self.start_failures.push(slot);
    }

    /// A worker exited or vanished without being asked to.
    fn died(&mut self, slot: u16, now: Instant, why: &str, driver: &mut dyn Driver) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        match w.state {
            WorkerState::Launching | WorkerState::Probing { .. } => {
                self.start_failed(slot, now, format!("exited before healthy: {why}"), driver);
            }
            WorkerState::Active | WorkerState::Draining { .. } | WorkerState::Stopping { .. } => {
                if w.state == WorkerState::Active && w.wanted {
                    warn!(
                        "worker_died",
                        "slot={slot} id={} reason={} action=replace",
                        w.id(),
                        quote(why)
                    );
                    w.restarts += 1;
                } else {
                    info!(
                        "worker_exited",
                        "slot={slot} id={} reason={}",
                        w.id(),
                        quote(why)
                    );
                }
                w.retry_at = now;
                // Out of the backend set at once: the children stop sending to it.
                w.state = WorkerState::Removing;
                driver.remove(slot, w.generation, Removal::Normal, now);
            }
            WorkerState::Pending { .. } | WorkerState::Removing | WorkerState::Gone => {}
        }
    }

    /// Marks an active worker draining (the next backend set tells the children).
    fn begin_drain(&mut self, slot: u16, now: Instant) {
        let timeout = self.settings.drain_timeout;
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        info!(
            "worker_draining",
            "slot={slot} id={} timeout_ms={}",
            w.id(),
            timeout.as_millis()
        );
        w.state = WorkerState::Draining {
            deadline: now + timeout,
        };
        w.drain_seq = None;
    }

    /// Tells the worker to stop (it drains and flushes its stats).
    fn stop(&mut self, slot: u16, now: Instant, why: &str, driver: &mut dyn Driver) {
        let drain = self.settings.drain_timeout;
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        info!(
            "worker_stopping",
            "slot={slot} id={} reason={}",
            w.id(),
            quote(why)
        );
        w.state = WorkerState::Stopping {
            deadline: now + drain + STOP_GRACE,
        };
        driver.stop(slot, w.generation, drain, now);
    }

    /// When the next health probe falls due (the loop sleeps no longer than that).
    pub fn next_probe_at(&self) -> Option<Instant> {
        self.workers
            .values()
            .filter(|w| w.wanted && !w.probing && w.placement.is_some())
            .filter_map(|w| match w.state {
                WorkerState::Probing { next_probe, .. } => Some(next_probe),
                _ => None,
            })
            .min()
    }

    /// Health probes due now (each marked in flight until [`Fleet::on_probe`]).
    pub fn due_probes(&mut self, now: Instant) -> Vec<ProbeRequest> {
        let mut due = Vec::new();
        for w in self.workers.values_mut() {
            let WorkerState::Probing {
                deadline,
                next_probe,
            } = w.state
            else {
                continue;
            };
            let Some(p) = w.placement.as_ref() else {
                continue;
            };
            if w.probing || !w.wanted || now < next_probe {
                continue;
            }
            w.probing = true;
            w.probes += 1;
            due.push(ProbeRequest {
                slot: w.slot,
                generation: w.generation,
                addr: p.addr,
                deadline: (now + PROBE_TIMEOUT).min(deadline),
            });
        }
        due
    }

    /// A probe ended: the worker joins (`Ok`) or is probed again after [`probe_interval`].
    pub fn on_probe(
        &mut self,
        slot: u16,
        generation: u64,
        verdict: Result<(), String>,
        now: Instant,
    ) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        if w.generation != generation || !w.probing {
            return;
        }
        w.probing = false;
        let WorkerState::Probing { deadline, .. } = w.state else {
            return;
        };
        match verdict {
            Ok(()) => {
                info!(
                    "worker_healthy",
                    "slot={slot} id={} after_ms={} placed_ms={} probes={}",
                    w.id(),
                    now.duration_since(w.launched_at).as_millis(),
                    w.placed_ms,
                    w.probes
                );
                w.state = WorkerState::Active;
                w.failures = 0;
                w.last_error = None;
            }
            Err(e) => {
                w.last_error = Some(e);
                w.state = WorkerState::Probing {
                    deadline,
                    next_probe: now + probe_interval(w.probes),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fleet asked of the in-memory driver.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Launch(u16, u64),
        Stop(u16, u64),
        Kill(u16, u64),
        Remove(u16, u64, Removal),
        Adopt(u16, u64, String),
        Discard(String),
    }

    /// An in-memory driver: records calls; the test answers with events.
    #[derive(Default)]
    struct FakeDriver {
        calls: Vec<Call>,
    }

    impl FakeDriver {
        fn take(&mut self) -> Vec<Call> {
            std::mem::take(&mut self.calls)
        }
    }

    impl Driver for FakeDriver {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn planned_address(&self, slot: u16) -> Option<SocketAddr> {
            Some(SocketAddr::from(([127, 0, 0, 1], 7000 + slot)))
        }
        fn prepare(&mut self, _: Instant) {}
        fn list(&mut self, _: Instant) {}
        fn adopt(&mut self, slot: u16, generation: u64, found: &Existing, _: Instant) {
            self.calls
                .push(Call::Adopt(slot, generation, found.handle.clone()));
        }
        fn discard(&mut self, found: &Existing, _: Instant) {
            self.calls.push(Call::Discard(found.handle.clone()));
        }
        fn launch(&mut self, spec: &LaunchSpec, _: Instant) {
            self.calls.push(Call::Launch(spec.slot, spec.generation));
        }
        fn stop(&mut self, slot: u16, generation: u64, _: Duration, _: Instant) {
            self.calls.push(Call::Stop(slot, generation));
        }
        fn kill(&mut self, slot: u16, generation: u64) {
            self.calls.push(Call::Kill(slot, generation));
        }
        fn remove(&mut self, slot: u16, generation: u64, why: Removal, _: Instant) {
            self.calls.push(Call::Remove(slot, generation, why));
        }
        fn watch(&mut self, _: Instant) {}
        fn poll(&mut self, _: Instant) -> Vec<DriverEvent> {
            Vec::new()
        }
        fn sweep(&mut self, _: Instant) {}
        fn busy(&self) -> bool {
            false
        }
        fn release(&mut self) {}
        fn abandon(&mut self) {}
        fn force_cleanup(&mut self) {}
    }

    /// LB children as the fleet sees them.
    struct FakeLb {
        serving: bool,
        drained_from: Option<u64>,
    }

    impl LbView for FakeLb {
        fn serving(&self) -> bool {
            self.serving
        }
        fn drained(&self, _id: &str, seq: u64) -> bool {
            self.drained_from.is_some_and(|from| seq >= from)
        }
    }

    const LB: FakeLb = FakeLb {
        serving: true,
        drained_from: None,
    };

    fn settings() -> FleetSettings {
        FleetSettings {
            start_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            avg_delay: 1,
            failure: 0.0,
        }
    }

    fn removed(slot: u16, generation: u64) -> DriverEvent {
        DriverEvent::Removed { slot, generation }
    }

    fn stopped(slot: u16, generation: u64) -> DriverEvent {
        DriverEvent::Stopped { slot, generation }
    }

    fn placed(slot: u16, generation: u64) -> DriverEvent {
        DriverEvent::Launched {
            slot,
            generation,
            result: Ok(Placement {
                id: format!("w{slot}g{generation}"),
                addr: SocketAddr::from(([10, 0, 0, 1], 9000 + slot)),
                pid: None,
                container: None,
            }),
        }
    }

    /// A fleet of `n` active workers (generation 1 each).
    fn active_fleet(n: usize, d: &mut FakeDriver, now: Instant) -> Fleet {
        let mut f = Fleet::new(n, settings());
        f.drive(now, d, &LB, false);
        for slot in 0..n as u16 {
            f.on_event(placed(slot, 1), now, d);
        }
        let due = f.due_probes(now);
        assert_eq!(due.len(), n);
        for p in due {
            f.on_probe(p.slot, p.generation, Ok(()), now);
        }
        d.take();
        assert_eq!(f.active(), n);
        f
    }

    #[test]
    fn start_launches_probes_and_activates_at_the_drivers_address() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = Fleet::new(2, settings());
        f.drive(now, &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Launch(0, 1), Call::Launch(1, 1)]);
        assert!(f.due_probes(now).is_empty(), "no probe before a placement");
        f.on_event(placed(0, 1), now, &mut d);
        let due = f.due_probes(now);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].addr, SocketAddr::from(([10, 0, 0, 1], 9000)));
        assert!(
            f.due_probes(now).is_empty(),
            "one probe in flight at a time"
        );
        f.on_probe(0, 1, Err("refused".into()), now);
        assert!(
            f.due_probes(now).is_empty(),
            "next probe waits its interval"
        );
        assert_eq!(f.next_probe_at(), Some(now + PROBE_FIRST));
        let later = now + PROBE_FIRST;
        assert_eq!(f.due_probes(later).len(), 1);
        f.on_probe(0, 1, Ok(()), later);
        assert_eq!(f.active(), 1);
        let set = f.backend_set();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].id, "w0g1");
        assert_eq!(set[0].addr, SocketAddr::from(([10, 0, 0, 1], 9000)));
    }

    #[test]
    fn a_dead_worker_leaves_the_set_at_once_and_is_relaunched() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(2, &mut d, now);
        let why = "container exited".to_string();
        f.on_event(
            DriverEvent::Exited {
                slot: 1,
                generation: 1,
                why,
            },
            now,
            &mut d,
        );
        assert_eq!(d.take(), vec![Call::Remove(1, 1, Removal::Normal)]);
        assert_eq!(
            f.backend_set().len(),
            1,
            "out of the set before removal ends"
        );
        f.on_event(removed(1, 1), now, &mut d);
        f.drive(now, &mut d, &LB, false);
        f.drive(now, &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Launch(1, 2)]);
        let w = f.workers().find(|w| w.slot == 1).expect("slot 1");
        assert_eq!(w.restarts, 1);
    }

    #[test]
    fn stale_events_of_an_older_launch_are_ignored() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(1, &mut d, now);
        f.on_event(
            DriverEvent::Exited {
                slot: 0,
                generation: 7,
                why: "x".into(),
            },
            now,
            &mut d,
        );
        f.on_probe(0, 7, Err("late".into()), now);
        assert!(d.take().is_empty());
        assert_eq!(f.active(), 1);
    }

    #[test]
    fn scale_in_drains_until_the_children_report_it_then_stops_and_removes() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(2, &mut d, now);
        f.set_desired(1, now);
        f.drive(now, &mut d, &LB, false);
        let set = f.backend_set();
        assert_eq!(set.len(), 2);
        assert_eq!(set[1].state, BackendState::Draining);
        f.stamp_drains(7);
        // Children have not applied seq 7 yet: still draining.
        let behind = FakeLb {
            serving: true,
            drained_from: Some(8),
        };
        f.drive(now, &mut d, &behind, false);
        assert!(d.take().is_empty());
        let caught_up = FakeLb {
            serving: true,
            drained_from: Some(7),
        };
        f.drive(now, &mut d, &caught_up, false);
        assert_eq!(d.take(), vec![Call::Stop(1, 1)]);
        assert_eq!(f.backend_set().len(), 1);
        f.on_event(stopped(1, 1), now, &mut d);
        assert_eq!(d.take(), vec![Call::Remove(1, 1, Removal::Normal)]);
        f.on_event(removed(1, 1), now, &mut d);
        f.drive(now, &mut d, &LB, false);
        assert_eq!(f.workers().count(), 1);
    }

    #[test]
    fn a_scale_in_undone_before_the_stop_puts_the_draining_worker_back() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(1, &mut d, now);
        f.set_desired(0, now);
        f.drive(now, &mut d, &LB, false);
        f.stamp_drains(2);
        assert_eq!(f.backend_set()[0].state, BackendState::Draining);
        // A request at zero: demand brings the worker back while it drains.
        f.set_desired(1, now);
        f.drive(now, &mut d, &LB, false);
        assert_eq!(f.active(), 1);
        assert_eq!(f.backend_set()[0].state, BackendState::Active);
        assert!(d.take().is_empty(), "no stop, no launch: {:?}", d.calls);
        // A later scale-in drains it again, with a new drain seq.
        f.set_desired(0, now);
        f.drive(now, &mut d, &LB, false);
        assert_eq!(f.workers().next().and_then(|w| w.drain_seq), None);
    }

    #[test]
    fn a_worker_the_runtime_stops_is_not_put_back() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(1, &mut d, now);
        let leaving = DriverEvent::Leaving {
            slot: 0,
            generation: 1,
        };
        f.on_event(leaving, now, &mut d);
        f.drive(now, &mut d, &LB, false);
        assert_eq!(f.active(), 0, "still wanted, but leaving: it drains");
        assert_eq!(f.backend_set()[0].state, BackendState::Draining);
    }

    #[test]
    fn a_drain_that_never_ends_stops_at_the_drain_timeout_and_kills_after_the_grace() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(1, &mut d, now);
        f.set_desired(0, now);
        f.drive(now, &mut d, &LB, false);
        f.stamp_drains(3);
        let t = now + Duration::from_secs(5);
        f.drive(t, &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Stop(0, 1)]);
        f.drive(t + STOP_GRACE + Duration::from_secs(5), &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Kill(0, 1)]);
    }

    #[test]
    fn without_children_a_worker_stops_without_draining() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(1, &mut d, now);
        let none = FakeLb {
            serving: false,
            drained_from: None,
        };
        f.drive(now, &mut d, &none, true);
        assert_eq!(d.take(), vec![Call::Stop(0, 1)]);
    }

    #[test]
    fn a_failed_start_is_removed_with_its_output_and_retried_after_a_backoff() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = Fleet::new(1, settings());
        f.drive(now, &mut d, &LB, false);
        d.take();
        let failed = DriverEvent::Launched {
            slot: 0,
            generation: 1,
            result: Err("docker run: no such image".into()),
        };
        f.on_event(failed, now, &mut d);
        assert_eq!(d.take(), vec![Call::Remove(0, 1, Removal::FailedStart)]);
        assert_eq!(f.take_start_failures(), vec![0]);
        f.on_event(removed(0, 1), now, &mut d);
        f.drive(now, &mut d, &LB, false);
        f.drive(now + Duration::from_millis(100), &mut d, &LB, false);
        assert!(d.take().is_empty(), "waits for the backoff");
        f.drive(now + backoff(1), &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Launch(0, 2)]);
        let names = f.unhealthy_names(&d);
        assert!(names.contains("no such image"), "{names}");
        assert!(names.contains("port 7000"), "{names}");
    }

    #[test]
    fn a_worker_never_healthy_fails_at_the_start_timeout() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = Fleet::new(1, settings());
        f.drive(now, &mut d, &LB, false);
        f.on_event(placed(0, 1), now, &mut d);
        d.take();
        f.drive(now + Duration::from_secs(10), &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Remove(0, 1, Removal::FailedStart)]);
    }

    fn existing(slot: u16, running: bool, current: bool) -> Existing {
        let handle = format!("c{slot}");
        Existing {
            slot: Some(slot),
            placement: running.then(|| Placement {
                id: handle.clone(),
                addr: SocketAddr::from(([10, 0, 0, 2], 9000 + slot)),
                pid: None,
                container: Some(handle.clone()),
            }),
            handle,
            running,
            current,
        }
    }

    /// Answers every due probe with a pass.
    fn pass_probes(f: &mut Fleet, now: Instant) {
        for p in f.due_probes(now) {
            f.on_probe(p.slot, p.generation, Ok(()), now);
        }
    }

    #[test]
    fn a_previous_runs_workers_are_adopted_extras_stopped_dead_ones_removed() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = Fleet::new(2, settings());
        let found = vec![
            existing(5, true, true),
            existing(1, true, true),
            existing(0, true, true),
            existing(3, false, true),
        ];
        f.adopt(found, now, &mut d);
        let calls = d.take();
        assert!(calls.contains(&Call::Adopt(0, 1, "c0".into())), "{calls:?}");
        assert!(calls.contains(&Call::Adopt(1, 1, "c1".into())), "{calls:?}");
        assert!(calls.contains(&Call::Adopt(5, 1, "c5".into())), "{calls:?}");
        assert!(calls.contains(&Call::Discard("c3".into())), "{calls:?}");
        f.drive(now, &mut d, &LB, false);
        // Nothing launched: the wanted slots are adopted; the extra one stops.
        assert_eq!(d.take(), vec![Call::Stop(5, 1)]);
        pass_probes(&mut f, now);
        assert_eq!(f.active(), 2);
        let ids: Vec<String> = f.backend_set().into_iter().map(|b| b.id).collect();
        assert_eq!(ids, vec!["c0", "c1"], "adopted workers keep their ids");
    }

    #[test]
    fn an_adopted_worker_that_fails_its_probe_is_replaced() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = Fleet::new(1, settings());
        f.adopt(vec![existing(0, true, true)], now, &mut d);
        d.take();
        f.drive(now + ADOPT_PROBE_WINDOW, &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Remove(0, 1, Removal::FailedStart)]);
    }

    #[test]
    fn an_outdated_worker_is_replaced_through_a_surge_slot_without_losing_capacity() {
        let mut d = FakeDriver::default();
        let mut now = Instant::now();
        let mut f = Fleet::new(2, settings());
        f.adopt(
            vec![existing(0, true, true), existing(1, true, false)],
            now,
            &mut d,
        );
        pass_probes(&mut f, now);
        d.take();
        let lb = FakeLb {
            serving: true,
            drained_from: Some(0),
        };
        let mut launched = Vec::new();
        // Play the runtime: launches place at once, stops and removals complete at once.
        for _ in 0..40 {
            now += Duration::from_millis(100);
            f.drive(now, &mut d, &lb, false);
            f.stamp_drains(1);
            loop {
                let calls = d.take();
                if calls.is_empty() {
                    break;
                }
                for call in calls {
                    let ev = match call {
                        Call::Launch(slot, g) => {
                            launched.push(slot);
                            placed(slot, g)
                        }
                        Call::Stop(slot, generation) => DriverEvent::Stopped { slot, generation },
                        Call::Remove(slot, generation, _) => {
                            DriverEvent::Removed { slot, generation }
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    f.on_event(ev, now, &mut d);
                }
            }
            pass_probes(&mut f, now);
            let serving = f
                .backend_set()
                .iter()
                .filter(|b| b.state == BackendState::Active)
                .count();
            assert!(serving >= 2, "capacity fell to {serving}");
        }
        assert_eq!(
            launched,
            vec![2, 1],
            "surge slot first, then the renewed slot"
        );
        let slots: Vec<u16> = f.workers().map(|w| w.slot).collect();
        assert_eq!(slots, vec![0, 1], "the surge worker is gone again");
        assert!(
            f.workers()
                .all(|w| !w.outdated && w.state == WorkerState::Active)
        );
    }

    #[test]
    fn a_worker_the_runtime_stops_drains_then_is_relaunched_and_the_count_follows() {
        let mut d = FakeDriver::default();
        let now = Instant::now();
        let mut f = active_fleet(3, &mut d, now);
        f.on_event(
            DriverEvent::Leaving {
                slot: 1,
                generation: 1,
            },
            now,
            &mut d,
        );
        let set = f.backend_set();
        assert_eq!(set.len(), 3, "still in the set, draining");
        assert_eq!(set[1].state, BackendState::Draining);
        assert_eq!(f.running_count(false), 3, "still wanted: the count stays");
        let why = "task shutdown".to_string();
        f.on_event(
            DriverEvent::Exited {
                slot: 1,
                generation: 1,
                why,
            },
            now,
            &mut d,
        );
        assert_eq!(d.take(), vec![Call::Remove(1, 1, Removal::Normal)]);
        f.on_event(removed(1, 1), now, &mut d);
        f.drive(now, &mut d, &LB, false);
        f.drive(now, &mut d, &LB, false);
        assert_eq!(d.take(), vec![Call::Launch(1, 2)]);
        // Scale-in: the count drops only once the drained worker is told to stop.
        f.set_desired(2, now);
        assert_eq!(f.running_count(false), 3);
        assert_eq!(
            f.running_count(true),
            3,
            "stopping: drained ones still count"
        );
    }

    #[test]
    fn probes_start_fast_then_every_probe_every() {
        let gaps: Vec<u64> = (1..=7)
            .map(|n| probe_interval(n).as_millis() as u64)
            .collect();
        assert_eq!(gaps, vec![10, 20, 30, 40, 50, 50, 50]);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_millis(1000));
        assert_eq!(backoff(3), Duration::from_millis(2000));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
