//! The docker runtime as a [`Driver`]: every step a docker CLI call run as a [`Job`], the
//! results turned into [`DriverEvent`]s. Slot `i` is the container `<instance>-worker-<port>`
//! publishing `worker-port + i`; deaths are found by a `docker ps` every 2 s.
//!
//! With a spare (autoscaling on, [`DockerDriver::with_spare`]), the container of the next
//! slot the fleet would launch (the lowest slot without a container) is created ahead and
//! not started: a launch of that slot is then a `docker start` (the create, the name
//! clearing and their half of `docker run`'s time are off the scale-out's path). It moves
//! when that slot changes, is created with the last launch's settings (a launch with other
//! settings does not use it), and goes with the instance's containers at stop.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::docker::{self, Docker, RunSpec};
use super::docker_events::EventsFeed;
use super::driver::{Driver, DriverEvent, Existing, LaunchSpec, Placement, Removal};
use super::job::{Job, JobOutput, Jobs, log_failure};
use crate::sys::log::quote;
use crate::sys::notify;
use crate::{info, warn};

/// How often the containers are listed to find dead ones.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// Deadline of ordinary docker CLI calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// `docker run` of a slot's worker (or `docker start` of the spare created for it).
    Run { slot: u16, generation: u64 },
    /// `docker rm -f <name>` before the spare's `docker create`.
    SpareClear { slot: u16 },
    /// `docker create` of the spare.
    SpareCreate { slot: u16 },
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
    /// What it was launched with (None: adopted from a previous run).
    key: Option<SpareKey>,
    /// `docker stop` succeeded: it may serve as the spare instead of being removed.
    stopped: bool,
}

/// What a container is started with, beyond the driver's own settings: a spare is used only
/// by a launch with the same.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SpareKey {
    avg_delay: u64,
    failure: f64,
    drain_timeout_ms: u64,
}

impl SpareKey {
    fn of(spec: &LaunchSpec) -> SpareKey {
        SpareKey {
            avg_delay: spec.avg_delay,
            failure: spec.failure,
            drain_timeout_ms: spec.drain_timeout_ms,
        }
    }
}

/// The container created ahead for the next slot.
#[derive(Debug)]
struct Spare {
    slot: u16,
    key: SpareKey,
    /// Its id once `docker create` answered.
    container: Option<String>,
    /// A launch of its slot that came while it was still being created.
    claimed: Option<LaunchSpec>,
}

/// Least time between two attempts at a spare after one failed.
const SPARE_RETRY: Duration = Duration::from_secs(10);

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
    events_feed: EventsFeed,
    watching: bool,
    last_reconcile: Instant,
    reconcile_running: bool,
    /// `worker-pids-limit`, `worker-memory-mb`.
    pids_limit: u64,
    memory_mb: u64,
    /// Slots a spare may be created for (0: no spare).
    spare_slots: u16,
    spare: Option<Spare>,
    /// The last launch's settings (a spare is created with them).
    last_launch: Option<LaunchSpec>,
    spare_retry_at: Instant,
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
            events_feed: EventsFeed::default(),
            watching: false,
            last_reconcile: Instant::now(),
            reconcile_running: false,
            pids_limit: crate::config::Config::default().worker_pids_limit,
            memory_mb: crate::config::Config::default().worker_memory_mb,
            spare_slots: 0,
            spare: None,
            last_launch: None,
            spare_retry_at: Instant::now(),
        }
    }

    /// Keeps a spare container created ahead for the next of `slots` slots (autoscaling).
    pub fn with_spare(mut self, slots: usize) -> DockerDriver {
        self.spare_slots = u16::try_from(slots).unwrap_or(u16::MAX);
        self
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
            Step::SpareClear { slot } => self.on_spare_cleared(slot, now),
            Step::SpareCreate { slot } => self.on_spare_created(slot, out, now),
            Step::Stop { slot, generation } => {
                log_failure("docker_stop_failed", &out);
                if let Some(t) = self.tracked_mut(slot, generation) {
                    t.stopped = out.success;
                }
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
        let cmd = self.cli.run(&self.run_spec(port, &spec));
        if !self.spawn(cmd, Step::Run { slot, generation }, now + CALL_TIMEOUT) {
            self.launch_failed(slot, generation, "docker could not be started".into());
        }
    }

    /// What the container of `port` is made of.
    fn run_spec(&self, port: u16, spec: &LaunchSpec) -> RunSpec {
        RunSpec {
            port,
            address: self.address,
            db: self.db.clone(),
            avg_delay: spec.avg_delay,
            failure: spec.failure,
            drain_timeout_ms: spec.drain_timeout_ms,
            pids_limit: self.pids_limit,
            memory_mb: self.memory_mb,
        }
    }

    /// Creates a spare for the lowest slot without a container, moving it there when that
    /// slot changed (called at every poll; one docker call at a time for the spare).
    fn keep_spare(&mut self, now: Instant) {
        if self.spare_slots == 0 || !self.watching || now < self.spare_retry_at {
            return;
        }
        let Some(spec) = self.last_launch.clone() else {
            return;
        };
        // A spare is made in quiet times: its docker calls would slow a start under way.
        if self.tracked.values().any(|t| t.stage == Stage::Launching) {
            return;
        }
        let want = (0..self.spare_slots).find(|s| !self.tracked.contains_key(s));
        if let Some(sp) = &self.spare {
            if Some(sp.slot) == want || sp.container.is_none() {
                return; // in place, or still being created
            }
            // The fleet's next slot moved (a scale-in freed a lower one): drop this one.
            if let Some(cid) = self.spare.take().and_then(|sp| sp.container) {
                let cmd = self.cli.remove(&[cid]);
                self.spawn(cmd, Step::RemoveOther, now + CALL_TIMEOUT);
            }
        }
        let Some(slot) = want else { return };
        let Some(port) = self.port(slot) else { return };
        // Its name is taken from now on.
        self.cleared.remove(&slot);
        self.spare = Some(Spare {
            slot,
            key: SpareKey::of(&spec),
            container: None,
            claimed: None,
        });
        let cmd = self.cli.remove(&[self.cli.name(port)]);
        if !self.spawn(cmd, Step::SpareClear { slot }, now + CALL_TIMEOUT) {
            self.spare = None;
            self.spare_retry_at = now + SPARE_RETRY;
        }
    }

    /// A worker stopped cleanly (scale-in) whose slot is the next to launch and whose
    /// settings are current becomes the spare instead of being removed: the next scale-out
    /// of that slot (a start from zero above all) is a `docker start`.
    fn keep_as_spare(&mut self, slot: u16, generation: u64) -> bool {
        let current = self.last_launch.as_ref().map(SpareKey::of);
        let fits = self.spare_slots > 0
            && self.watching
            && self
                .spare
                .as_ref()
                .is_none_or(|sp| sp.slot > slot && sp.claimed.is_none())
            && self.tracked(slot, generation).is_some_and(|t| {
                t.stopped && t.container.is_some() && t.key.is_some() && t.key == current
            });
        if !fits {
            return false;
        }
        let Some(Tracked {
            container: Some(cid),
            key: Some(key),
            ..
        }) = self.tracked.remove(&slot)
        else {
            return false;
        };
        info!(
            "worker_kept_as_spare",
            "slot={slot} id={}",
            docker::short_id(&cid)
        );
        // The spare it displaces (a higher slot) goes.
        if let Some(old) = self.spare.take().and_then(|sp| sp.container) {
            let cmd = self.cli.remove(&[old]);
            self.spawn(cmd, Step::RemoveOther, Instant::now() + CALL_TIMEOUT);
        }
        self.spare = Some(Spare {
            slot,
            key,
            container: Some(cid),
            claimed: None,
        });
        self.events.push(DriverEvent::Removed { slot, generation });
        true
    }

    /// The spare's name is free: `docker create`.
    fn on_spare_cleared(&mut self, slot: u16, now: Instant) {
        let (Some(spec), Some(port)) = (self.last_launch.clone(), self.port(slot)) else {
            return;
        };
        if self.spare.as_ref().is_none_or(|sp| sp.slot != slot) {
            return;
        }
        let mut spec = spec;
        if let Some(sp) = &self.spare {
            spec.avg_delay = sp.key.avg_delay;
            spec.failure = sp.key.failure;
            spec.drain_timeout_ms = sp.key.drain_timeout_ms;
        }
        let cmd = self.cli.create(&self.run_spec(port, &spec));
        if !self.spawn(cmd, Step::SpareCreate { slot }, now + CALL_TIMEOUT) {
            self.spare_failed(now, "docker could not be started".into());
        }
    }

    /// `docker create` of the spare finished: kept, or started at once for a launch that
    /// claimed it meanwhile.
    fn on_spare_created(&mut self, slot: u16, out: JobOutput, now: Instant) {
        if self.spare.as_ref().is_none_or(|sp| sp.slot != slot) {
            return;
        }
        let cid = out.stdout.lines().last().unwrap_or("").trim().to_string();
        if !out.success || cid.is_empty() {
            return self.spare_failed(now, format!("docker create: {}", out.error_text()));
        }
        info!(
            "worker_spare_created",
            "slot={slot} id={}",
            docker::short_id(&cid)
        );
        let Some(sp) = self.spare.as_mut() else {
            return;
        };
        sp.container = Some(cid);
        if let Some(spec) = sp.claimed.take()
            && self.still_launching(&spec)
        {
            self.launch(&spec, now);
        }
    }

    /// Whether the launch of `spec` is still wanted (not stopped or superseded meanwhile).
    fn still_launching(&self, spec: &LaunchSpec) -> bool {
        self.tracked(spec.slot, spec.generation)
            .is_some_and(|t| t.stage == Stage::Launching)
    }

    /// The spare could not be made: logged, tried again after [`SPARE_RETRY`]; a launch
    /// waiting for it goes the ordinary way (name cleared, `docker run`).
    fn spare_failed(&mut self, now: Instant, why: String) {
        warn!(
            "worker_spare_failed",
            "error={} retry_in_ms={}",
            quote(&why),
            SPARE_RETRY.as_millis()
        );
        self.spare_retry_at = now + SPARE_RETRY;
        if let Some(spec) = self.spare.take().and_then(|sp| sp.claimed)
            && self.still_launching(&spec)
        {
            self.launch(&spec, now);
        }
    }

    /// A launch of the spare's slot: `docker start` of the spare when it is ready and made
    /// with the same settings (true), a claim while it is being created (true), or nothing
    /// (false: the ordinary launch, whose name clearing removes a stale spare).
    fn launch_spare(&mut self, spec: &LaunchSpec, now: Instant) -> bool {
        let Some(sp) = self.spare.as_mut() else {
            return false;
        };
        if sp.slot != spec.slot {
            return false;
        }
        if sp.container.is_none() {
            sp.claimed = Some(spec.clone());
            return true;
        }
        let spare = self.spare.take();
        let Some(cid) = spare
            .filter(|sp| sp.key == SpareKey::of(spec))
            .and_then(|sp| sp.container)
        else {
            return false;
        };
        info!(
            "worker_spare_used",
            "slot={} id={}",
            spec.slot,
            docker::short_id(&cid)
        );
        let (slot, generation) = (spec.slot, spec.generation);
        let cmd = self.cli.start(&cid);
        if !self.spawn(cmd, Step::Run { slot, generation }, now + CALL_TIMEOUT) {
            self.launch_failed(slot, generation, "docker could not be started".into());
        }
        true
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
                // The spare (created, not started) is ours, also while being created.
                !self.spare.as_ref().is_some_and(|sp| {
                    sp.container.as_ref() == Some(&c.id) || c.port == base.checked_add(sp.slot)
                })
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
        let ids = self.events_feed.poll(now, || self.cli.events());
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
                key: None,
                stopped: false,
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
                key: Some(SpareKey::of(spec)),
                stopped: false,
            },
        );
        self.last_launch = Some(spec.clone());
        if self.launch_spare(spec, now) {
            return;
        }
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
        if why == Removal::Normal && self.keep_as_spare(slot, generation) {
            return;
        }
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
        self.keep_spare(now);
        std::mem::take(&mut self.events)
    }

    fn sweep(&mut self, now: Instant) {
        // The spare has our label: the sweep's `docker ps` finds and removes it.
        self.spare = None;
        self.watching = false;
        self.events_feed.stop();
        self.kill_jobs();
        let cmd = self.cli.ps();
        self.spawn(cmd, Step::SweepList, now + CALL_TIMEOUT);
    }

    fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    fn release(&mut self) {
        // A spare left behind is a created container the successor discards.
        self.spare = None;
        self.watching = false;
        self.events_feed.stop();
        self.kill_jobs();
        self.tracked.clear();
    }

    fn abandon(&mut self) {
        self.kill_jobs();
    }

    fn force_cleanup(&mut self) {
        self.events_feed.stop();
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
