//! The runtime driver: what the supervisor's fleet asks of a runtime (process, docker,
//! swarm), and what the runtime answers.
//!
//! Every request is fire-and-forget; its outcome, and anything the runtime notices by itself
//! (a worker that died), comes back as a [`DriverEvent`] from [`Driver::poll`]. A driver never
//! blocks the loop: docker calls are [`super::job::Job`]s, a process is watched with
//! `try_wait`. Workers are named by a *slot* (0.., the fleet's key) and the launch
//! *generation* (bumped by the fleet at each launch; an event of an older generation is
//! stale). The driver, not the fleet, decides where a worker runs and reports its address in
//! the [`Placement`]: a local runtime derives it from the slot, a cluster runtime learns it
//! from the cluster once the task runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Worker settings a launch uses (they may change on reload; the next launch takes them).
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchSpec {
    /// Fleet slot.
    pub slot: u16,
    /// Launch generation.
    pub generation: u64,
    /// Mean hello delay in ms.
    pub avg_delay: u64,
    /// Failure rate in percent.
    pub failure: f64,
    /// Time the worker gives in-flight requests on SIGTERM.
    pub drain_timeout_ms: u64,
}

/// Where a launched worker runs and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Worker id: the backend id the LB children and `/worker/stats` know it by.
    pub id: String,
    /// Address the LB children and the health probe connect to.
    pub addr: SocketAddr,
    /// Process runtime: its pid.
    pub pid: Option<u32>,
    /// Container runtimes: the full container id.
    pub container: Option<String>,
}

/// A worker found in the runtime that this supervisor did not launch (a previous run's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    /// The slot it was launched for, when its labels say so.
    pub slot: Option<u16>,
    /// Where it runs (`None` when it cannot serve: not running).
    pub placement: Option<Placement>,
    /// Runtime's handle (container id) to stop or remove it by.
    pub handle: String,
    /// Running now.
    pub running: bool,
    /// Runs the current worker image (a binary upgrade gives a new one).
    pub current: bool,
}

/// Why a worker is being removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Stopped or died: just remove it.
    Normal,
    /// It did not come up: keep what it printed (logged) before removing it.
    FailedStart,
}

/// What a driver reports.
#[derive(Clone, Debug, PartialEq)]
pub enum DriverEvent {
    /// [`Driver::prepare`] finished (image present or built): workers can be launched.
    Prepared(Result<(), String>),
    /// [`Driver::list`]: what exists for this instance that the driver does not manage yet.
    Listed(Result<Vec<Existing>, String>),
    /// A launch finished: where the worker runs, or why it could not start.
    Launched {
        slot: u16,
        generation: u64,
        result: Result<Placement, String>,
    },
    /// A worker the fleet asked to stop has stopped (or its stop command returned).
    Stopped { slot: u16, generation: u64 },
    /// A worker is removed; its slot is free.
    Removed { slot: u16, generation: u64 },
    /// A worker exited or vanished without being asked to stop.
    Exited {
        slot: u16,
        generation: u64,
        why: String,
    },
    /// The runtime (a cluster scaling in, updating or draining a node) is stopping a worker
    /// the fleet did not stop: it drains, it is not dead. `Exited` follows once it is gone.
    Leaving { slot: u16, generation: u64 },
}

/// A worker runtime, as the fleet drives it.
pub trait Driver {
    /// `process`, `docker`, `swarm`.
    fn name(&self) -> &'static str;
    /// How many workers should run now (a cluster runtime scales to it: it takes a count,
    /// and picks which worker goes itself). Local runtimes start and stop by slot and ignore it.
    fn want(&mut self, _count: usize, _now: Instant) {}
    /// The address a slot's worker will have, when the runtime decides it in advance (local
    /// runtimes); `None` when only the launch tells (cluster runtimes).
    fn planned_address(&self, slot: u16) -> Option<SocketAddr>;
    /// Gets ready to launch (e.g. the worker image): answers [`DriverEvent::Prepared`].
    fn prepare(&mut self, now: Instant);
    /// Lists this instance's workers the driver does not manage: [`DriverEvent::Listed`].
    fn list(&mut self, now: Instant);
    /// Takes over a worker found by [`Driver::list`] as `slot`'s `generation`: from now on it
    /// is watched, stopped and removed like one the driver launched.
    fn adopt(&mut self, slot: u16, generation: u64, found: &Existing, now: Instant);
    /// Removes a worker found by [`Driver::list`] that nobody adopts (`docker rm -f`).
    fn discard(&mut self, found: &Existing, now: Instant);
    /// Worker settings changed (reload). Local runtimes take them at the next launch; a
    /// cluster runtime whose workers share one spec updates it (swarm: a rolling update).
    fn reconfigure(&mut self, _spec: &LaunchSpec, _now: Instant) {}
    /// Starts a worker: [`DriverEvent::Launched`].
    fn launch(&mut self, spec: &LaunchSpec, now: Instant);
    /// Asks a worker to stop (SIGTERM: it drains and flushes its stats; killed after
    /// `grace`): [`DriverEvent::Stopped`].
    fn stop(&mut self, slot: u16, generation: u64, grace: Duration, now: Instant);
    /// Kills a stopping worker that overran its grace.
    fn kill(&mut self, slot: u16, generation: u64);
    /// Removes what is left of a worker: [`DriverEvent::Removed`].
    fn remove(&mut self, slot: u16, generation: u64, why: Removal, now: Instant);
    /// Starts watching for workers that die (docker events, polling). Until then a death is
    /// only noticed by the process runtime's own child handles.
    fn watch(&mut self, now: Instant);
    /// Results of earlier requests, and deaths noticed since the last call.
    fn poll(&mut self, now: Instant) -> Vec<DriverEvent>;
    /// Stop, last step: removes anything of this instance left in the runtime.
    fn sweep(&mut self, now: Instant);
    /// Whether runtime commands are still running (the stop waits for them), or, after
    /// [`Driver::release`], workers that are still our children.
    fn busy(&self) -> bool;
    /// Upgrade: a new supervisor manages the workers from now on. Stop watching and
    /// managing them without stopping any (a worker process that is our child keeps
    /// [`Driver::busy`] true until the new supervisor has stopped it).
    fn release(&mut self);
    /// Stop timeout: kills every worker and runtime command now.
    fn abandon(&mut self);
    /// Forced stop (second signal): kills and removes everything, blocking (bounded).
    fn force_cleanup(&mut self);
}
