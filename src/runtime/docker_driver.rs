//! The docker runtime as a [`Driver`]: every step a docker CLI call run as a [`Job`], the
//! results turned into [`DriverEvent`]s. Slot `i` is the container `<instance>-worker-<port>`
//! publishing `worker-port + i`; deaths are found by a `docker ps` every 2 s.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::docker::{self, Docker, RunSpec};
use super::docker_events::EventsWatch;
use super::driver::{Driver, DriverEvent, Existing, LaunchSpec, Placement, Removal};
use super::job::{Job, JobOutput, Jobs, log_failure};
use crate::sys::log::quote;
use crate::sys::notify;
use crate::{info, warn};

/// How often the containers are listed to find dead ones.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// Deadline of ordinary docker CLI calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Delay before a `docker events` watcher that ended is started again.
const EVENTS_RETRY: Duration = Duration::from_secs(2);
/// Deadline of the image build.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// What a docker call is for.
#[derive(Clone, Debug)]
enum Step {
    /// `docker ps` at start: what a previous run left, to adopt or discard.
    List,
    /// `docker image inspect` of the worker image.
    ImageInspect,
    /// `docker build`; the context directory is removed afterwards.
    ImageBuild { context: PathBuf },
    /// After a build: old unused worker images removed.
    PruneImages,
    /// `docker rm -f <name>` before `docker run` of `spec`.
    ClearName { spec: LaunchSpec },
    /// `docker run` of a slot's worker.
    Run { slot: u16, generation: u64 },
    /// `docker stop` of a slot's worker.
    Stop { slot: u16, generation: u64 },
    /// `docker logs --tail` of a worker that did not come up, then its removal.
    Logs { slot: u16, generation: u64 },
    /// `docker rm -f` of a slot's worker.
    Remove { slot: u16, generation: u64 },
    /// Periodic `docker ps`: dead and stray containers.
    Reconcile { started: Instant },
    /// `docker rm -f` whose result changes nothing (strays, discarded, final sweep).
    RemoveOther,
    /// Stop: `docker ps` of everything with our label.
    SweepList,
}

/// Where a slot's container is, from the driver's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Launching,
    Running,
    Stopping,
    Removing,
}

/// A container the driver manages for a slot.
#[derive(Debug)]
struct Tracked {
    generation: u64,
    stage: Stage,
    container: Option<String>,
    /// When `container` was learnt: a `docker ps` started before cannot judge it.
    since: Instant,
}

/// The docker runtime.
#[derive(Debug)]
pub struct DockerDriver {
    cli: Docker,
    exe: PathBuf,
    db: PathBuf,
    address: IpAddr,
    base_port: u16,
    jobs: Jobs<Step>,
    tracked: BTreeMap<u16, Tracked>,
    /// Slots whose container we removed successfully: the next launch needs no name clearing.
    cleared: std::collections::BTreeSet<u16>,
    events: Vec<DriverEvent>,
    image_ready: bool,
    /// `docker events` of our containers dying, once watching.
    events_watch: Option<EventsWatch>,
    /// When the events watcher may be (re)started.
    events_retry: Instant,
    watching: bool,
    last_reconcile: Instant,
    reconcile_running: bool,
    /// `worker-pids-limit`, `worker-memory-mb`.
    pids_limit: u64,
    memory_mb: u64,
}

impl DockerDriver {
    /// A driver for `instance`'s containers of `image`, built from `exe` when missing.
    pub fn new(
        cli: Docker,
        exe: PathBuf,
        db: PathBuf,
        address: IpAddr,
        base_port: u16,
    ) -> DockerDriver {
        DockerDriver {
            cli,
            exe,
            db,
            address,
            base_port,
            jobs: Jobs::default(),
            tracked: BTreeMap::new(),
            cleared: std::collections::BTreeSet::new(),
            events: Vec::new(),
            image_ready: false,
            events_watch: None,
            events_retry: Instant::now(),
            watching: false,
            last_reconcile: Instant::now(),
            reconcile_running: false,
            pids_limit: crate::config::Config::default().worker_pids_limit,
            memory_mb: crate::config::Config::default().worker_memory_mb,
        }
    }

    /// The containers' `--pids-limit` and `--memory` (MiB).
    pub fn with_limits(mut self, pids_limit: u64, memory_mb: u64) -> DockerDriver {
        self.pids_limit = pids_limit;
        self.memory_mb = memory_mb;
        self
    }

    fn port(&self, slot: u16) -> Option<u16> {
        self.base_port.checked_add(slot)
    }

    /// Runs a docker call; false (and logged) when it could not be spawned.
    fn spawn(&mut self, cmd: Command, step: Step, deadline: Instant) -> bool {
        self.jobs.spawn(cmd, step, deadline)
    }

    fn tracked(&self, slot: u16, generation: u64) -> Option<&Tracked> {
        self.tracked
            .get(&slot)
            .filter(|t| t.generation == generation)
    }

    fn tracked_mut(&mut self, slot: u16, generation: u64) -> Option<&mut Tracked> {
        self.tracked
            .get_mut(&slot)
            .filter(|t| t.generation == generation)
    }

    fn launch_failed(&mut self, slot: u16, generation: u64, why: String) {
        self.events.push(DriverEvent::Launched {
            slot,
            generation,
            result: Err(why),
        });
    }

    /// Acts on a finished docker call.
    fn on_job_done(&mut self, step: Step, out: JobOutput, now: Instant) {
        match step {
            Step::List => self.on_listed(out),
            Step::ImageInspect => self.on_image_inspected(out, now),
            Step::ImageBuild { context } => self.on_image_built(&context, out, now),
            Step::PruneImages => log_failure("image_prune_failed", &out),
            Step::ClearName { spec } => self.on_name_cleared(spec, now),
            Step::Run { slot, generation } => self.on_run_done(slot, generation, out, now),
            Step::Stop { slot, generation } => {
                log_failure("docker_stop_failed", &out);
                if self.tracked(slot, generation).is_some() {
                    self.events.push(DriverEvent::Stopped { slot, generation });
                }
            }
            Step::Logs { slot, generation } => self.on_logs_done(slot, generation, out, now),
            Step::Remove { slot, generation } => {
                log_failure("docker_rm_failed", &out);
                if out.success {
                    self.cleared.insert(slot);
                }
                if self.tracked(slot, generation).is_some() {
                    self.tracked.remove(&slot);
                    self.events.push(DriverEvent::Removed { slot, generation });
                }
            }
            Step::Reconcile { started } => {
                self.reconcile_running = false;
                if out.success {
                    self.on_reconcile(started, &out.stdout, now);
                } else {
                    log_failure("docker_ps_failed", &out);
                }
            }
            Step::RemoveOther => log_failure("container_removal_failed", &out),
            Step::SweepList => {
                let ids = container_ids(&out);
                if !ids.is_empty() {
                    info!("removing_containers", "count={}", ids.len());
                    let cmd = self.cli.remove(&ids);
                    self.spawn(cmd, Step::RemoveOther, now + CALL_TIMEOUT);
                }
            }
        }
    }

    /// `docker ps` at start: every container of this instance, for adoption.
    fn on_listed(&mut self, out: JobOutput) {
        if !out.success {
            let why = format!("docker ps failed: {}", out.error_text());
            self.events.push(DriverEvent::Listed(Err(why)));
            return;
        }
        let found = docker::parse_ps(&out.stdout)
            .into_iter()
            .map(|c| {
                let running = c.state == "running";
                let slot = c.port.and_then(|p| p.checked_sub(self.base_port));
                let placement = c.port.filter(|_| running).map(|port| Placement {
                    id: docker::short_id(&c.id),
                    addr: SocketAddr::new(self.address, port),
                    pid: None,
                    container: Some(c.id.clone()),
                });
                Existing {
                    slot,
                    placement,
                    current: c.image == self.cli.image,
                    handle: c.id,
                    running,
                }
            })
            .collect();
        self.events.push(DriverEvent::Listed(Ok(found)));
    }

    /// `docker image inspect`: the image is there, or it is built from a temp context.
    fn on_image_inspected(&mut self, out: JobOutput, now: Instant) {
        if out.success {
            info!("worker_image_present", "image={}", self.cli.image);
            self.image_ready = true;
            self.maybe_prepared();
            return;
        }
        let context = match docker::prepare_context(&self.exe, &std::env::temp_dir()) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("worker image build context: {e}");
                self.events.push(DriverEvent::Prepared(Err(why)));
                return;
            }
        };
        info!("building_worker_image", "image={}", self.cli.image);
        notify::extend_timeout(BUILD_TIMEOUT + Duration::from_secs(10));
        let cmd = self.cli.build(&context);
        let step = Step::ImageBuild {
            context: context.clone(),
        };
        if !self.spawn(cmd, step, now + BUILD_TIMEOUT) {
            let _ = std::fs::remove_dir_all(&context);
            let why = "docker build could not be started".to_string();
            self.events.push(DriverEvent::Prepared(Err(why)));
        }
    }

    /// `docker build` ended: its context goes; old images are pruned after a success.
    fn on_image_built(&mut self, context: &Path, out: JobOutput, now: Instant) {
        let _ = std::fs::remove_dir_all(context);
        if !out.success {
            let why = format!("docker build failed: {}", out.error_text());
            self.events.push(DriverEvent::Prepared(Err(why)));
            return;
        }
        info!("worker_image_built", "image_id={}", out.stdout.trim());
        self.image_ready = true;
        let cmd = self.cli.prune_images();
        self.spawn(cmd, Step::PruneImages, now + CALL_TIMEOUT);
        self.maybe_prepared();
    }

    fn maybe_prepared(&mut self) {
        if self.image_ready {
            self.events.push(DriverEvent::Prepared(Ok(())));
        }
    }

    /// `docker rm -f <name>` finished (a missing container is fine): `docker run` now.
    fn on_name_cleared(&mut self, spec: LaunchSpec, now: Instant) {
        let (slot, generation) = (spec.slot, spec.generation);
        if self
            .tracked(slot, generation)
            .is_none_or(|t| t.stage != Stage::Launching)
        {
            return;
        }
        let Some(port) = self.port(slot) else {
            let why = format!("worker-port + {slot} is past 65535");
            return self.launch_failed(slot, generation, why);
        };
        let run = RunSpec {
            port,
            address: self.address,
            db: self.db.clone(),
            avg_delay: spec.avg_delay,
            failure: spec.failure,
            drain_timeout_ms: spec.drain_timeout_ms,
            pids_limit: self.pids_limit,
            memory_mb: self.memory_mb,
        };
        let cmd = self.cli.run(&run);
        if !self.spawn(cmd, Step::Run { slot, generation }, now + CALL_TIMEOUT) {
            self.launch_failed(slot, generation, "docker could not be started".into());
        }
    }

    /// `docker run` finished: the container id, or a failed start.
    fn on_run_done(&mut self, slot: u16, generation: u64, out: JobOutput, now: Instant) {
        let Some(port) = self.port(slot) else { return };
        let addr = SocketAddr::new(self.address, port);
        if self.tracked(slot, generation).is_none() {
            return;
        }
        let cid = out.stdout.lines().last().unwrap_or("").trim().to_string();
        if !out.success || cid.is_empty() {
            // The container may exist (created, not started): its removal goes by name.
            let why = format!("docker run: {}", out.error_text());
            return self.launch_failed(slot, generation, why);
        }
        let Some(t) = self.tracked_mut(slot, generation) else {
            return;
        };
        let short = docker::short_id(&cid);
        info!(
            "worker_container_started",
            "port={port} id={short} container={cid}"
        );
        t.stage = Stage::Running;
        t.container = Some(cid.clone());
        t.since = now;
        self.events.push(DriverEvent::Launched {
            slot,
            generation,
            result: Ok(Placement {
                id: short,
                addr,
                pid: None,
                container: Some(cid),
            }),
        });
    }

    /// `docker logs` of a container that did not come up: logged, then the container goes.
    fn on_logs_done(&mut self, slot: u16, generation: u64, out: JobOutput, now: Instant) {
        let Some(t) = self.tracked(slot, generation) else {
            return;
        };
        let text: Vec<&str> = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        warn!(
            "worker_container_output",
            "slot={slot} container={} output={}",
            t.container
                .as_deref()
                .map(docker::short_id)
                .unwrap_or_default(),
            quote(&text.join(" | "))
        );
        self.remove_now(slot, generation, now);
    }

    /// `docker rm -f` of the slot's container (or its name, when no id was learnt).
    fn remove_now(&mut self, slot: u16, generation: u64, now: Instant) {
        let Some(port) = self.port(slot) else { return };
        let name = self.cli.name(port);
        let Some(t) = self.tracked_mut(slot, generation) else {
            self.events.push(DriverEvent::Removed { slot, generation });
            return;
        };
        t.stage = Stage::Removing;
        let target = t.container.clone().unwrap_or(name);
        let cmd = self.cli.remove(&[target]);
        if !self.spawn(cmd, Step::Remove { slot, generation }, now + CALL_TIMEOUT) {
            // Left for the next reconcile or the stop sweep to remove as a stray.
            self.tracked.remove(&slot);
            self.events.push(DriverEvent::Removed { slot, generation });
        }
    }

    /// Starts a `docker ps` every [`RECONCILE_EVERY`] once watching.
    fn reconcile_if_due(&mut self, now: Instant) {
        if !self.watching
            || self.reconcile_running
            || now.duration_since(self.last_reconcile) < RECONCILE_EVERY
        {
            return;
        }
        self.last_reconcile = now;
        let cmd = self.cli.ps();
        if self.spawn(cmd, Step::Reconcile { started: now }, now + CALL_TIMEOUT) {
            self.reconcile_running = true;
        }
    }

    /// Compares `docker ps` with the tracked containers: reports dead ones, removes strays.
    fn on_reconcile(&mut self, started: Instant, stdout: &str, now: Instant) {
        let listed = docker::parse_ps(stdout);
        for (slot, t) in &self.tracked {
            let Some(cid) = &t.container else { continue };
            if t.stage != Stage::Running || t.since >= started {
                continue;
            }
            let why = match listed.iter().find(|c| &c.id == cid) {
                Some(c) if c.state == "running" => continue,
                Some(c) => format!("container {}", c.state),
                None => "container gone".to_string(),
            };
            self.events.push(DriverEvent::Exited {
                slot: *slot,
                generation: t.generation,
                why,
            });
        }
        let base = self.base_port;
        let strays: Vec<String> = listed
            .iter()
            .filter(|c| {
                !self
                    .tracked
                    .values()
                    .any(|t| t.container.as_ref() == Some(&c.id))
            })
            .filter(|c| {
                // A launch clears its name first: a container with that port is its business.
                !c.port.is_some_and(|p| {
                    p.checked_sub(base)
                        .and_then(|slot| self.tracked.get(&slot))
                        .is_some_and(|t| t.stage == Stage::Launching)
                })
            })
            .map(|c| c.id.clone())
            .collect();
        if !strays.is_empty() {
            warn!("stray_containers", "count={} action=remove", strays.len());
            let cmd = self.cli.remove(&strays);
            self.spawn(cmd, Step::RemoveOther, now + CALL_TIMEOUT);
        }
    }

    /// Reads `docker events`: a tracked container that died is reported at once (the
    /// `docker ps` poll stays as the fallback); a watcher that ended is restarted.
    fn read_events(&mut self, now: Instant) {
        if !self.watching {
            return;
        }
        if self.events_watch.is_none() && now >= self.events_retry {
            match EventsWatch::start(self.cli.events()) {
                Ok(w) => self.events_watch = Some(w),
                Err(e) => {
                    warn!("docker_events_failed", "error={}", quote(&e.to_string()));
                    self.events_retry = now + EVENTS_RETRY;
                }
            }
        }
        let Some(w) = self.events_watch.as_mut() else {
            return;
        };
        let ids = match w.read_ids() {
            Ok(ids) => ids,
            Err(e) => {
                warn!(
                    "docker_events_ended",
                    "error={} retry_in_ms={}",
                    quote(&e),
                    EVENTS_RETRY.as_millis()
                );
                self.events_watch = None;
                self.events_retry = now + EVENTS_RETRY;
                return;
            }
        };
        for id in ids {
            let Some((slot, t)) = self
                .tracked
                .iter()
                .find(|(_, t)| t.container.as_deref() == Some(id.as_str()))
            else {
                continue;
            };
            if t.stage != Stage::Running {
                continue;
            }
            info!(
                "worker_container_died",
                "slot={slot} id={} source=events",
                docker::short_id(&id)
            );
            let ev = DriverEvent::Exited {
                slot: *slot,
                generation: t.generation,
                why: "container died (docker events)".to_string(),
            };
            self.events.push(ev);
        }
    }

    fn kill_jobs(&mut self) {
        for step in self.jobs.kill_all() {
            if let Step::ImageBuild { context } = step {
                let _ = std::fs::remove_dir_all(context);
            }
        }
    }
}

impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn planned_address(&self, slot: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.address, self.port(slot)?))
    }

    fn prepare(&mut self, now: Instant) {
        let inspect = self.cli.image_inspect();
        if !self.spawn(inspect, Step::ImageInspect, now + CALL_TIMEOUT) {
            let why = "docker could not be started".to_string();
            self.events.push(DriverEvent::Prepared(Err(why)));
        }
    }

    fn list(&mut self, now: Instant) {
        let ps = self.cli.ps();
        if !self.spawn(ps, Step::List, now + CALL_TIMEOUT) {
            let why = "docker could not be started".to_string();
            self.events.push(DriverEvent::Listed(Err(why)));
        }
    }

    fn adopt(&mut self, slot: u16, generation: u64, found: &Existing, now: Instant) {
        self.tracked.insert(
            slot,
            Tracked {
                generation,
                stage: Stage::Running,
                container: Some(found.handle.clone()),
                since: now,
            },
        );
    }

    fn discard(&mut self, found: &Existing, now: Instant) {
        let cmd = self.cli.remove(std::slice::from_ref(&found.handle));
        self.spawn(cmd, Step::RemoveOther, now + CALL_TIMEOUT);
    }

    fn launch(&mut self, spec: &LaunchSpec, now: Instant) {
        let (slot, generation) = (spec.slot, spec.generation);
        let Some(port) = self.port(slot) else {
            let why = format!("worker-port + {slot} is past 65535");
            return self.launch_failed(slot, generation, why);
        };
        self.tracked.insert(
            slot,
            Tracked {
                generation,
                stage: Stage::Launching,
                container: None,
                since: now,
            },
        );
        if self.cleared.remove(&slot) {
            // We removed this slot's container ourselves: its name is free, run at once.
            return self.on_name_cleared(spec.clone(), now);
        }
        let cmd = self.cli.remove(&[self.cli.name(port)]);
        let step = Step::ClearName { spec: spec.clone() };
        if !self.spawn(cmd, step, now + CALL_TIMEOUT) {
            self.launch_failed(slot, generation, "docker could not be started".into());
        }
    }

    fn stop(&mut self, slot: u16, generation: u64, grace: Duration, now: Instant) {
        let Some(t) = self.tracked_mut(slot, generation) else {
            self.events.push(DriverEvent::Stopped { slot, generation });
            return;
        };
        let Some(cid) = t.container.clone() else {
            self.events.push(DriverEvent::Stopped { slot, generation });
            return;
        };
        t.stage = Stage::Stopping;
        let secs = grace.as_millis().div_ceil(1000).max(1) as u64;
        let cmd = self.cli.stop(&cid, secs);
        let deadline = now + grace + CALL_TIMEOUT;
        if !self.spawn(cmd, Step::Stop { slot, generation }, deadline) {
            self.events.push(DriverEvent::Stopped { slot, generation });
        }
    }

    fn kill(&mut self, _slot: u16, _generation: u64) {
        // `docker stop -t` kills the container itself at the end of its grace.
    }

    fn remove(&mut self, slot: u16, generation: u64, why: Removal, now: Instant) {
        let container = self
            .tracked(slot, generation)
            .and_then(|t| t.container.clone());
        if let (Removal::FailedStart, Some(cid)) = (why, container) {
            // What the container said goes with it: read it first.
            let cmd = self.cli.logs(&cid, 20);
            if let Some(t) = self.tracked_mut(slot, generation) {
                t.stage = Stage::Removing;
            }
            if self.spawn(cmd, Step::Logs { slot, generation }, now + CALL_TIMEOUT) {
                return;
            }
        }
        self.remove_now(slot, generation, now);
    }

    fn watch(&mut self, now: Instant) {
        self.watching = true;
        self.last_reconcile = now;
    }

    fn poll(&mut self, now: Instant) -> Vec<DriverEvent> {
        for (step, out) in self.jobs.finished(now) {
            self.on_job_done(step, out, now);
        }
        self.read_events(now);
        self.reconcile_if_due(now);
        std::mem::take(&mut self.events)
    }

    fn sweep(&mut self, now: Instant) {
        self.watching = false;
        self.events_watch = None;
        self.kill_jobs();
        let cmd = self.cli.ps();
        self.spawn(cmd, Step::SweepList, now + CALL_TIMEOUT);
    }

    fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    fn release(&mut self) {
        self.watching = false;
        self.events_watch = None;
        self.kill_jobs();
        self.tracked.clear();
    }

    fn abandon(&mut self) {
        self.kill_jobs();
    }

    fn force_cleanup(&mut self) {
        self.events_watch = None;
        self.kill_jobs();
        // Blocking is fine now: we are leaving. Bounded all the same.
        let deadline = Instant::now() + Duration::from_secs(20);
        let Ok(mut ps) = Job::spawn(self.cli.ps(), "docker ps".into(), deadline) else {
            return;
        };
        let ids = container_ids(&ps.wait_blocking());
        if !ids.is_empty()
            && let Ok(mut rm) = Job::spawn(self.cli.remove(&ids), "docker rm".into(), deadline)
        {
            let _ = rm.wait_blocking();
        }
    }
}

/// Container ids in a `docker ps` output.
fn container_ids(out: &JobOutput) -> Vec<String> {
    docker::parse_ps(&out.stdout)
        .into_iter()
        .map(|c| c.id)
        .collect()
}
