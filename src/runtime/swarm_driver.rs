//! The swarm runtime as a [`Driver`]: one replicated service whose tasks are the workers.
//!
//! Swarm takes a count and picks the tasks itself, so the fleet's slots are mapped onto tasks
//! as they appear: [`Driver::want`] sets the replicas (`docker service scale`), a launching
//! slot gets the next serving task nobody holds, and a slot the fleet stops either sees its
//! own task go (swarm picked it) or, when swarm stopped another task, gives its task back to
//! the pool (the other slot gets `Leaving`, drains and is relaunched onto it). Tasks are
//! discovered every second (`docker service ps`, `docker inspect` of the tasks, `docker node
//! inspect`), at once after a swarm `docker events` line (service or node changed) or a scale.
//! The docker calls run through the same [`Jobs`] as the docker runtime's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::docker::{self, Docker};
use super::docker_events::EventsFeed;
use super::driver::{Driver, DriverEvent, Existing, LaunchSpec, Placement, Removal};
use super::job::{Job, JobOutput, Jobs, log_failure};
use super::swarm::{self, NodeLine, ServiceSpec, SwarmCli, Task};
use crate::sys::log::quote;
use crate::{info, warn};

/// How often the tasks are listed.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);
/// Deadline of ordinary docker CLI calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of the image build.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// A launching slot that no serving task reached in this time has failed to start.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest the stop waits for the service's containers on this engine to be gone.
const SWEEP_WAIT: Duration = Duration::from_secs(30);

/// What a docker call is for.
#[derive(Debug)]
enum Step {
    ManagerCheck,
    ImageInspect,
    ImageBuild {
        context: PathBuf,
    },
    ListServices,
    NetworkCreate {
        replicas: usize,
    },
    Create {
        replicas: usize,
    },
    Scale {
        replicas: usize,
    },
    TaskIds {
        started: Instant,
        for_list: bool,
    },
    InspectTasks {
        started: Instant,
        for_list: bool,
    },
    InspectNodes {
        started: Instant,
        for_list: bool,
        tasks: Vec<Task>,
    },
    RemoveService,
    NetworkRemove,
    SweepContainers,
    Other,
}

/// Whether the service exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Unknown,
    Absent,
    Creating,
    Present,
}

/// A fleet slot, from the driver's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waits for a serving task.
    Launching,
    /// Holds a serving task.
    Running,
    /// Its task is being stopped by swarm (reported `Leaving`).
    Leaving,
    /// The fleet stopped it: waits for its task to go, or to be given back.
    Stopping,
    /// Reported stopped, exited or failed: waits for `remove`.
    Done,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    stage: Stage,
    task: Option<String>,
    /// When `task` was set: a discovery started before cannot judge it.
    since: Instant,
}

/// The swarm runtime.
#[derive(Debug)]
pub struct SwarmDriver {
    cli: SwarmCli,
    /// The local worker image's builder (None with `swarm.image`: nodes pull it).
    images: Option<Docker>,
    exe: PathBuf,
    spec: ServiceSpec,
    jobs: Jobs<Step>,
    events: Vec<DriverEvent>,
    slots: BTreeMap<u16, Slot>,
    service: Service,
    /// The fleet's count (None until the fleet has said: an adopted service is not scaled
    /// before its tasks are adopted).
    want: Option<usize>,
    /// Replicas last set (by create or scale), and when.
    scaled: Option<(usize, Instant)>,
    nodes: BTreeMap<String, NodeLine>,
    /// Placements learnt while tasks served (a stopping task's port is no longer reported).
    known: BTreeMap<String, Placement>,
    /// Tasks removed as failed starts: never handed to a slot again.
    bad: BTreeSet<String>,
    discovering: bool,
    next_discover: Instant,
    watching: bool,
    /// Swarm `docker events` (service and node changes), once watching.
    events_feed: EventsFeed,
    /// Stop: waiting for the service's containers on this engine to go, until then.
    sweep_until: Option<Instant>,
    /// The service is on the peers network (false once creating the network failed).
    peers: bool,
}

impl SwarmDriver {
    /// A driver for `cli`'s service; `images` builds the local image from `exe` when set.
    pub fn new(
        cli: SwarmCli,
        images: Option<Docker>,
        exe: PathBuf,
        spec: ServiceSpec,
    ) -> SwarmDriver {
        let now = Instant::now();
        SwarmDriver {
            cli,
            images,
            exe,
            spec,
            jobs: Jobs::default(),
            events: Vec::new(),
            slots: BTreeMap::new(),
            service: Service::Unknown,
            want: None,
            scaled: None,
            nodes: BTreeMap::new(),
            known: BTreeMap::new(),
            bad: BTreeSet::new(),
            discovering: false,
            next_discover: now,
            watching: false,
            events_feed: EventsFeed::default(),
            sweep_until: None,
            peers: true,
        }
    }

    fn spawn(&mut self, cmd: std::process::Command, step: Step, now: Instant) -> bool {
        self.jobs.spawn(cmd, step, now + CALL_TIMEOUT)
    }

    fn on_job_done(&mut self, step: Step, out: JobOutput, now: Instant) {
        match step {
            Step::ManagerCheck => self.on_manager_checked(out, now),
            Step::ImageInspect => self.on_image_inspected(out, now),
            Step::ImageBuild { context } => {
                let _ = std::fs::remove_dir_all(&context);
                if out.success {
                    info!("worker_image_built", "image_id={}", out.stdout.trim());
                    self.events.push(DriverEvent::Prepared(Ok(())));
                } else {
                    let why = format!("docker build failed: {}", out.error_text());
                    self.events.push(DriverEvent::Prepared(Err(why)));
                }
            }
            Step::ListServices => self.on_services_listed(out, now),
            Step::NetworkCreate { replicas } => self.on_network_created(out, replicas, now),
            Step::Create { replicas } => self.on_scaled(out, replicas, "service_create", now),
            Step::Scale { replicas } => self.on_scaled(out, replicas, "service_scale", now),
            Step::TaskIds { started, for_list } => self.on_task_ids(out, started, for_list, now),
            Step::InspectTasks { started, for_list } => {
                self.on_tasks_inspected(out, started, for_list, now)
            }
            Step::InspectNodes {
                started,
                for_list,
                tasks,
            } => {
                self.nodes.extend(swarm::parse_nodes(&out.stdout));
                self.on_discovered(tasks, started, for_list, now);
            }
            Step::RemoveService => {
                log_failure("service_rm_failed", &out);
                info!("service_removed", "service={}", self.cli.service);
                // Removed once the tasks have left it; still attached: a harmless failure.
                let cmd = self.cli.network_remove();
                self.spawn(cmd, Step::NetworkRemove, now);
                self.sweep_until = Some(now + SWEEP_WAIT);
                let cmd = self.cli.local_containers();
                self.spawn(cmd, Step::SweepContainers, now);
            }
            Step::NetworkRemove => {
                if !out.success && self.sweep_until.is_some_and(|until| now < until) {
                    // Tasks still attached: try again until the sweep's end.
                    let cmd = self.cli.network_remove();
                    self.spawn(cmd, Step::NetworkRemove, now);
                }
            }
            Step::SweepContainers => self.on_containers_swept(out, now),
            Step::Other => log_failure("docker_call_failed", &out),
        }
    }

    /// The peers network exists (or could not be made: workers without stats peers); the
    /// service is created next.
    fn on_network_created(&mut self, out: JobOutput, replicas: usize, now: Instant) {
        // "already exists" is fine; any other failure: workers without stats peers.
        let peers = out.success || out.error_text().contains("already exists");
        self.peers = peers;
        if !peers {
            warn!(
                "peers_network_failed",
                "network={} error={} action=\"service without stats peers\"",
                self.cli.network(),
                quote(&out.error_text())
            );
        }
        let cmd = self.cli.create(&self.spec, replicas, peers);
        if !self.spawn(cmd, Step::Create { replicas }, now) {
            self.service = Service::Absent;
        }
    }

    /// The tasks' ports and nodes are known; the nodes' addresses are asked next.
    fn on_tasks_inspected(
        &mut self,
        out: JobOutput,
        started: Instant,
        for_list: bool,
        now: Instant,
    ) {
        // Tasks that vanished in between are missing from the output (and fail it).
        let tasks = swarm::parse_tasks(&out.stdout);
        let nodes: BTreeSet<String> = tasks.iter().map(|t| t.node.clone()).collect();
        let nodes: Vec<String> = nodes.into_iter().filter(|n| !n.is_empty()).collect();
        if nodes.is_empty() {
            return self.on_discovered(tasks, started, for_list, now);
        }
        let cmd = self.cli.inspect_nodes(&nodes);
        let step = Step::InspectNodes {
            started,
            for_list,
            tasks,
        };
        if !self.spawn(cmd, step, now) {
            self.discovery_failed(for_list, "docker could not be started".into());
        }
    }

    /// Stop: the service's containers on this engine, listed again until none is left or
    /// the sweep's time is up.
    fn on_containers_swept(&mut self, out: JobOutput, now: Instant) {
        let left = out.stdout.lines().filter(|l| !l.trim().is_empty()).count();
        match self.sweep_until {
            Some(until) if out.success && left > 0 && now < until => {
                let cmd = self.cli.local_containers();
                self.spawn(cmd, Step::SweepContainers, now);
            }
            _ => {
                if left > 0 {
                    warn!("service_containers_left", "count={left}");
                }
                self.sweep_until = None;
            }
        }
    }

    /// `docker info`: a manager, then the image (built here, or pulled by every node).
    fn on_manager_checked(&mut self, out: JobOutput, now: Instant) {
        if let Err(e) = swarm::parse_manager_info(out.success, &out.stdout, &out.error_text()) {
            self.events.push(DriverEvent::Prepared(Err(e)));
            return;
        }
        let Some(images) = &self.images else {
            info!("worker_image_remote", "image={}", quote(&self.cli.image));
            self.events.push(DriverEvent::Prepared(Ok(())));
            return;
        };
        let cmd = images.image_inspect();
        if !self.spawn(cmd, Step::ImageInspect, now) {
            let why = "docker could not be started".to_string();
            self.events.push(DriverEvent::Prepared(Err(why)));
        }
    }

    /// `docker image inspect`: present, or built from a temp context as `runtime: docker` does.
    fn on_image_inspected(&mut self, out: JobOutput, now: Instant) {
        let Some(images) = &self.images else { return };
        if out.success {
            info!("worker_image_present", "image={}", images.image);
            self.events.push(DriverEvent::Prepared(Ok(())));
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
        info!("building_worker_image", "image={}", images.image);
        let cmd = images.build(&context);
        let step = Step::ImageBuild {
            context: context.clone(),
        };
        if !self.jobs.spawn(cmd, step, now + BUILD_TIMEOUT) {
            let _ = std::fs::remove_dir_all(&context);
            let why = "docker build could not be started".to_string();
            self.events.push(DriverEvent::Prepared(Err(why)));
        }
    }

    /// `docker service ls` by label: adopt our service (its tasks are listed), or none.
    fn on_services_listed(&mut self, out: JobOutput, now: Instant) {
        if !out.success {
            let why = format!("docker service ls failed: {}", out.error_text());
            self.events.push(DriverEvent::Listed(Err(why)));
            return;
        }
        let services = swarm::parse_services(&out.stdout);
        for other in services.iter().filter(|s| s.name != self.cli.service) {
            warn!(
                "service_not_ours",
                "service={} reason=\"instance label, another name (swarm.service changed?)\" action=leave",
                other.name
            );
        }
        let Some(ours) = services.iter().find(|s| s.name == self.cli.service) else {
            self.service = Service::Absent;
            self.events.push(DriverEvent::Listed(Ok(Vec::new())));
            return;
        };
        self.service = Service::Present;
        let image = ours.image.split('@').next().unwrap_or("");
        info!(
            "service_adopted",
            "service={} image={}",
            ours.name,
            quote(image)
        );
        if image != self.cli.image {
            info!(
                "service_image_update",
                "service={} from={} to={}",
                ours.name,
                quote(image),
                quote(&self.cli.image)
            );
            let cmd = self.cli.update_image();
            self.spawn(cmd, Step::Other, now);
        }
        self.discover(now, true);
    }

    /// `docker service create` or `scale` ended.
    fn on_scaled(&mut self, out: JobOutput, replicas: usize, what: &str, now: Instant) {
        if out.success {
            info!(what, "service={} replicas={replicas}", self.cli.service);
            self.service = Service::Present;
            self.scaled = Some((replicas, now));
            self.next_discover = now;
            return;
        }
        warn!(
            &format!("{what}_failed"),
            "service={} error={}",
            self.cli.service,
            quote(&out.error_text())
        );
        if self.service == Service::Creating {
            // Retried by the next poll; a launch that never gets a task times out.
            self.service = Service::Absent;
        }
    }

    /// Starts a discovery (`docker service ps`); `for_list` answers [`Driver::list`].
    fn discover(&mut self, now: Instant, for_list: bool) {
        self.discovering = true;
        self.next_discover = now + DISCOVER_EVERY;
        let cmd = self.cli.task_ids();
        if !self.spawn(
            cmd,
            Step::TaskIds {
                started: now,
                for_list,
            },
            now,
        ) {
            self.discovery_failed(for_list, "docker could not be started".into());
        }
    }

    fn discovery_failed(&mut self, for_list: bool, why: String) {
        self.discovering = false;
        if for_list {
            let why = format!("listing the tasks of {}: {why}", self.cli.service);
            self.events.push(DriverEvent::Listed(Err(why)));
        } else {
            warn!("task_discovery_failed", "error={}", quote(&why));
        }
    }

    fn on_task_ids(&mut self, out: JobOutput, started: Instant, for_list: bool, now: Instant) {
        if !out.success {
            return self.discovery_failed(for_list, out.error_text());
        }
        let ids: Vec<String> = out
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if ids.is_empty() {
            return self.on_discovered(Vec::new(), started, for_list, now);
        }
        let cmd = self.cli.inspect_tasks(&ids);
        if !self.spawn(cmd, Step::InspectTasks { started, for_list }, now) {
            self.discovery_failed(for_list, "docker could not be started".into());
        }
    }

    /// Where a task serves: its node's address and its published port.
    fn placement_of(&self, t: &Task) -> Option<Placement> {
        let node = self.nodes.get(&t.node)?;
        let addr = node.addr?;
        Some(Placement {
            id: docker::short_id(&t.container),
            addr: SocketAddr::new(addr, t.port?),
            pid: None,
            container: Some(t.container.clone()),
        })
    }

    /// Whether a task runs, on a node that is not down.
    fn alive(&self, t: &Task) -> bool {
        t.state == "running" && self.nodes.get(&t.node).is_none_or(|n| n.state != "down")
    }

    /// A discovery ended: report what changed, hand serving tasks to launching slots.
    fn on_discovered(&mut self, tasks: Vec<Task>, started: Instant, for_list: bool, now: Instant) {
        self.discovering = false;
        let placed: Vec<(String, Placement)> = tasks
            .iter()
            .filter(|t| t.serving() && self.alive(t))
            .filter_map(|t| Some((t.id.clone(), self.placement_of(t)?)))
            .collect();
        self.known.extend(placed);
        let live: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        self.known.retain(|id, _| live.contains(id.as_str()));
        if for_list {
            let found = self.existing(&tasks);
            self.events.push(DriverEvent::Listed(Ok(found)));
            return;
        }
        self.judge_slots(&tasks, started);
        self.assign_tasks(&tasks, now);
    }

    /// The serving tasks of an adopted service, as slots 0.. for the fleet.
    fn existing(&self, tasks: &[Task]) -> Vec<Existing> {
        tasks
            .iter()
            .filter(|t| t.serving() && self.alive(t))
            .filter_map(|t| Some((t, self.known.get(&t.id)?.clone())))
            .enumerate()
            .map(|(i, (t, p))| Existing {
                slot: u16::try_from(i).ok(),
                placement: Some(p),
                handle: t.id.clone(),
                running: true,
                current: true,
            })
            .collect()
    }

    /// Each slot holding a task against what swarm says of it now.
    fn judge_slots(&mut self, tasks: &[Task], started: Instant) {
        let by_id: BTreeMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        let desired_running = tasks
            .iter()
            .filter(|t| t.desired == "running" && self.alive(t))
            .count();
        // Swarm has applied our last count when a discovery started after it was set.
        let settled = self
            .scaled
            .is_some_and(|(n, at)| Some(n) == self.want && at < started)
            && self.want.is_some_and(|w| desired_running <= w);
        let mut events = Vec::new();
        for (&slot, s) in self.slots.iter_mut() {
            let Some(tid) = s.task.clone() else { continue };
            if s.since >= started {
                continue;
            }
            let task = by_id.get(tid.as_str()).copied();
            let alive = task.is_some_and(|t| {
                t.state == "running" && self.nodes.get(&t.node).is_none_or(|n| n.state != "down")
            });
            let desired = task.map_or("gone", |t| t.desired.as_str());
            let generation = s.generation;
            match s.stage {
                Stage::Running | Stage::Leaving if !alive => {
                    let why = task.map_or("task gone".to_string(), |t| {
                        let node = self.nodes.get(&t.node).map_or("?", |n| n.state.as_str());
                        format!(
                            "task {} (desired {}, node {node}){}",
                            t.state,
                            t.desired,
                            if t.error.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", t.error)
                            }
                        )
                    });
                    info!(
                        "worker_task_gone",
                        "slot={slot} task={tid} reason={}",
                        quote(&why)
                    );
                    s.stage = Stage::Done;
                    events.push(DriverEvent::Exited {
                        slot,
                        generation,
                        why,
                    });
                }
                Stage::Running if desired != "running" => {
                    info!(
                        "worker_task_leaving",
                        "slot={slot} task={tid} desired={desired}"
                    );
                    s.stage = Stage::Leaving;
                    events.push(DriverEvent::Leaving { slot, generation });
                }
                Stage::Stopping if !alive => {
                    s.stage = Stage::Done;
                    events.push(DriverEvent::Stopped { slot, generation });
                }
                Stage::Stopping if desired == "running" && settled => {
                    // Swarm stopped another task: this one serves on, free for a launch.
                    info!(
                        "worker_task_kept",
                        "slot={slot} task={tid} reason=\"swarm stopped another task\""
                    );
                    s.task = None;
                    s.stage = Stage::Done;
                    events.push(DriverEvent::Stopped { slot, generation });
                }
                _ => {}
            }
        }
        self.events.extend(events);
    }

    /// Hands serving tasks nobody holds to launching slots, lowest slot first.
    fn assign_tasks(&mut self, tasks: &[Task], now: Instant) {
        let held: BTreeSet<String> = self.slots.values().filter_map(|s| s.task.clone()).collect();
        let mut free = tasks
            .iter()
            .filter(|t| t.serving() && self.alive(t))
            .filter(|t| !held.contains(&t.id) && !self.bad.contains(&t.id))
            .filter_map(|t| Some((t.id.clone(), self.known.get(&t.id)?.clone())))
            .collect::<Vec<_>>()
            .into_iter();
        let mut launched = Vec::new();
        for (&slot, s) in self.slots.iter_mut() {
            if s.stage != Stage::Launching {
                continue;
            }
            let Some((tid, p)) = free.next() else { break };
            info!(
                "worker_task_assigned",
                "slot={slot} task={tid} id={} addr={}", p.id, p.addr
            );
            s.stage = Stage::Running;
            s.task = Some(tid);
            s.since = now;
            launched.push(DriverEvent::Launched {
                slot,
                generation: s.generation,
                result: Ok(p),
            });
        }
        self.events.extend(launched);
    }

    /// Creates the service, or scales it, to the count the fleet wants.
    fn converge(&mut self, now: Instant) {
        if self
            .jobs
            .any(|s| matches!(s, Step::Create { .. } | Step::Scale { .. }))
        {
            return;
        }
        match self.service {
            Service::Absent if self.want.is_some_and(|w| w > 0) => {
                let replicas = self.want.unwrap_or(0);
                let cmd = self.cli.network_create();
                if self.spawn(cmd, Step::NetworkCreate { replicas }, now) {
                    self.service = Service::Creating;
                }
            }
            Service::Present if self.want.is_some() && self.scaled.map(|(n, _)| n) != self.want => {
                let replicas = self.want.unwrap_or(0);
                let cmd = self.cli.scale(replicas);
                self.spawn(cmd, Step::Scale { replicas }, now);
            }
            _ => {}
        }
    }

    /// Launching slots that no task reached in time: failed starts.
    fn launch_timeouts(&mut self, now: Instant) {
        for (&slot, s) in self.slots.iter_mut() {
            if s.stage == Stage::Launching && now.duration_since(s.since) >= LAUNCH_TIMEOUT {
                s.stage = Stage::Done;
                let why = format!(
                    "no task of service {} serving after {} s (docker service ps {} tells why)",
                    self.cli.service,
                    LAUNCH_TIMEOUT.as_secs(),
                    self.cli.service
                );
                self.events.push(DriverEvent::Launched {
                    slot,
                    generation: s.generation,
                    result: Err(why),
                });
            }
        }
    }

    /// Reads swarm `docker events`: any service or node change triggers a discovery now.
    fn read_events(&mut self, now: Instant) {
        if !self.watching {
            return;
        }
        let ids = self.events_feed.poll(now, || self.cli.events());
        if !ids.is_empty() {
            self.next_discover = now;
        }
    }

    fn discover_if_due(&mut self, now: Instant) {
        let busy = self.slots.values().any(|s| s.stage != Stage::Done);
        if self.service == Service::Present
            && !self.discovering
            && now >= self.next_discover
            && (self.watching || busy)
        {
            self.discover(now, false);
        }
    }

    fn kill_jobs(&mut self) {
        for step in self.jobs.kill_all() {
            if let Step::ImageBuild { context } = step {
                let _ = std::fs::remove_dir_all(context);
            }
        }
        self.discovering = false;
    }
}

impl Driver for SwarmDriver {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn want(&mut self, count: usize, _now: Instant) {
        self.want = Some(count);
    }

    fn planned_address(&self, _slot: u16) -> Option<SocketAddr> {
        None
    }

    fn prepare(&mut self, now: Instant) {
        if !self.spawn(swarm::manager_info(), Step::ManagerCheck, now) {
            let why = "runtime: swarm needs the docker CLI, which could not be started".into();
            self.events.push(DriverEvent::Prepared(Err(why)));
        }
    }

    fn list(&mut self, now: Instant) {
        if !self.spawn(self.cli.service_ls(), Step::ListServices, now) {
            let why = "docker could not be started".to_string();
            self.events.push(DriverEvent::Listed(Err(why)));
        }
    }

    fn adopt(&mut self, slot: u16, generation: u64, found: &Existing, now: Instant) {
        let slot_state = Slot {
            generation,
            stage: Stage::Running,
            task: Some(found.handle.clone()),
            since: now,
        };
        self.slots.insert(slot, slot_state);
    }

    fn discard(&mut self, found: &Existing, _now: Instant) {
        // A task is swarm's to remove: the count the fleet wants decides how many stay.
        info!("worker_task_left_to_swarm", "task={}", found.handle);
    }

    fn reconfigure(&mut self, spec: &LaunchSpec, now: Instant) {
        let s = &self.spec;
        if (s.avg_delay, s.failure, s.drain_timeout_ms)
            == (spec.avg_delay, spec.failure, spec.drain_timeout_ms)
        {
            return;
        }
        self.spec.avg_delay = spec.avg_delay;
        self.spec.failure = spec.failure;
        self.spec.drain_timeout_ms = spec.drain_timeout_ms;
        if self.service != Service::Present {
            // Created (or being created) with the new flags anyway.
            return;
        }
        info!(
            "service_update",
            "service={} avg_delay={} failure={} drain_timeout_ms={} action=\"rolling update, each old task drains\"",
            self.cli.service,
            spec.avg_delay,
            spec.failure,
            spec.drain_timeout_ms
        );
        let cmd = self.cli.update_args(&self.spec, self.peers);
        self.spawn(cmd, Step::Other, now);
    }

    fn launch(&mut self, spec: &LaunchSpec, now: Instant) {
        let slot = Slot {
            generation: spec.generation,
            stage: Stage::Launching,
            task: None,
            since: now,
        };
        self.slots.insert(spec.slot, slot);
        self.next_discover = self.next_discover.min(now + DISCOVER_EVERY);
    }

    fn stop(&mut self, slot: u16, generation: u64, _grace: Duration, _now: Instant) {
        let Some(s) = self
            .slots
            .get_mut(&slot)
            .filter(|s| s.generation == generation)
        else {
            self.events.push(DriverEvent::Stopped { slot, generation });
            return;
        };
        if s.task.is_none() || s.stage == Stage::Done {
            s.stage = Stage::Done;
            self.events.push(DriverEvent::Stopped { slot, generation });
            return;
        }
        // The fleet's lower count scales the service in; the next discoveries tell which
        // task swarm stopped (its stop grace covers the worker's drain).
        s.stage = Stage::Stopping;
    }

    fn kill(&mut self, _slot: u16, _generation: u64) {
        // Swarm kills a task at the end of its stop grace period.
    }

    fn remove(&mut self, slot: u16, generation: u64, why: Removal, _now: Instant) {
        if let Some(s) = self.slots.get(&slot).filter(|s| s.generation == generation) {
            if let (Removal::FailedStart, Some(task)) = (why, &s.task) {
                warn!(
                    "worker_task_failed",
                    "slot={slot} task={task} action=\"never reused\""
                );
                self.bad.insert(task.clone());
            }
            self.slots.remove(&slot);
        }
        self.events.push(DriverEvent::Removed { slot, generation });
    }

    fn watch(&mut self, now: Instant) {
        self.watching = true;
        self.next_discover = now;
    }

    fn poll(&mut self, now: Instant) -> Vec<DriverEvent> {
        for (step, out) in self.jobs.finished(now) {
            self.on_job_done(step, out, now);
        }
        self.read_events(now);
        if self.sweep_until.is_none() {
            self.converge(now);
            self.discover_if_due(now);
            self.launch_timeouts(now);
        }
        std::mem::take(&mut self.events)
    }

    fn sweep(&mut self, now: Instant) {
        self.watching = false;
        self.events_feed.stop();
        self.kill_jobs();
        self.slots.clear();
        // Stop removes the service: a load balancer that stopped serves no one, and no runtime
        // leaves workers behind. (A crashed supervisor leaves it; the next start adopts it.)
        self.sweep_until = Some(now + SWEEP_WAIT);
        if !self.spawn(self.cli.remove(), Step::RemoveService, now) {
            self.sweep_until = None;
        }
    }

    fn busy(&self) -> bool {
        !self.jobs.is_empty() || self.sweep_until.is_some()
    }

    fn release(&mut self) {
        self.watching = false;
        self.events_feed.stop();
        self.kill_jobs();
        self.slots.clear();
    }

    fn abandon(&mut self) {
        self.kill_jobs();
    }

    fn force_cleanup(&mut self) {
        self.events_feed.stop();
        self.kill_jobs();
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Ok(mut rm) = Job::spawn(self.cli.remove(), "docker service rm".into(), deadline) {
            let _ = rm.wait_blocking();
        }
        let net = self.cli.network_remove();
        if let Ok(mut rm) = Job::spawn(net, "docker network rm".into(), deadline) {
            let _ = rm.wait_blocking();
        }
    }
}

/// The database's file name inside the task's volume (the directory of `stats-dir` is a
/// host path; only its file name carries over).
pub fn db_name(db: &Path) -> String {
    db.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "worker-stats.db".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver() -> SwarmDriver {
        let cli = SwarmCli {
            instance: "t".into(),
            service: "t-workers".into(),
            image: "img:1".into(),
            local_image: true,
            constraints: Vec::new(),
        };
        let spec = ServiceSpec {
            port: 6000,
            db_name: "s.db".into(),
            avg_delay: 0,
            failure: 0.0,
            drain_timeout_ms: 1000,
            drain_grace_ms: 100,
            pids_limit: 64,
            memory_mb: 64,
        };
        let mut d = SwarmDriver::new(cli, None, PathBuf::from("/x"), spec);
        d.service = Service::Present;
        for (id, state) in [("n1", "ready"), ("n2", "ready")] {
            let node = NodeLine {
                addr: Some("10.0.0.1".parse().expect("ip")),
                state: state.into(),
            };
            d.nodes.insert(id.into(), node);
        }
        d
    }

    fn task(id: &str, node: &str, desired: &str, state: &str, port: u16) -> Task {
        Task {
            id: id.into(),
            node: node.into(),
            desired: desired.into(),
            state: state.into(),
            container: format!("{id}0000000000000000"),
            error: String::new(),
            port: Some(port),
        }
    }

    fn spec(slot: u16, generation: u64) -> LaunchSpec {
        LaunchSpec {
            slot,
            generation,
            avg_delay: 0,
            failure: 0.0,
            drain_timeout_ms: 1000,
        }
    }

    fn launched(ev: &[DriverEvent]) -> Vec<(u16, String)> {
        ev.iter()
            .filter_map(|e| match e {
                DriverEvent::Launched {
                    slot,
                    result: Ok(p),
                    ..
                } => Some((*slot, p.id.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn when_swarm_stops_another_task_the_stopped_slots_task_is_reused() {
        let mut d = driver();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for slot in 0..3 {
            d.launch(&spec(slot, 1), t0);
        }
        d.want(3, t0);
        d.scaled = Some((3, t0));
        let serving = |a: &str, b: &str, c: &str| {
            vec![
                task("ta", "n1", a, "running", 30001),
                task("tb", "n2", b, "running", 30002),
                task("tc", "n1", c, "running", 30003),
            ]
        };
        d.on_discovered(
            serving("running", "running", "running"),
            at(1),
            false,
            at(2),
        );
        let ev = std::mem::take(&mut d.events);
        let ids: Vec<(u16, String)> = launched(&ev);
        assert_eq!(ids.len(), 3, "{ev:?}");
        assert_eq!(ids[0], (0, "ta0000000000".to_string()));
        // The fleet stops slot 2 (task tc) and lowers the count; swarm stops ta instead.
        d.stop(2, 1, Duration::from_secs(1), at(3));
        d.want(2, at(3));
        d.scaled = Some((2, at(4)));
        d.on_discovered(serving("remove", "running", "running"), at(5), false, at(6));
        let ev = std::mem::take(&mut d.events);
        assert!(
            ev.contains(&DriverEvent::Leaving {
                slot: 0,
                generation: 1
            }),
            "{ev:?}"
        );
        assert!(
            ev.contains(&DriverEvent::Stopped {
                slot: 2,
                generation: 1
            }),
            "{ev:?}"
        );
        d.remove(2, 1, Removal::Normal, at(7));
        // Slot 0 drained: stopped by the fleet, gone when its task is.
        d.stop(0, 1, Duration::from_secs(1), at(8));
        let mut tasks = serving("remove", "running", "running");
        tasks[0].state = "shutdown".into();
        d.on_discovered(tasks.clone(), at(9), false, at(10));
        let ev = std::mem::take(&mut d.events);
        assert!(
            ev.contains(&DriverEvent::Stopped {
                slot: 0,
                generation: 1
            }),
            "{ev:?}"
        );
        d.remove(0, 1, Removal::Normal, at(11));
        std::mem::take(&mut d.events);
        // Slot 0 relaunched: it gets tc, which slot 2 gave back.
        d.launch(&spec(0, 2), at(12));
        d.on_discovered(tasks, at(13), false, at(14));
        let ev = std::mem::take(&mut d.events);
        assert_eq!(launched(&ev), vec![(0, "tc0000000000".to_string())]);
    }

    #[test]
    fn a_task_on_a_down_node_or_gone_exits() {
        let mut d = driver();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        d.launch(&spec(0, 1), t0);
        d.launch(&spec(1, 1), t0);
        d.want(2, t0);
        let tasks = vec![
            task("ta", "n1", "running", "running", 30001),
            task("tb", "n2", "running", "running", 30002),
        ];
        d.on_discovered(tasks.clone(), at(1), false, at(2));
        assert_eq!(launched(&std::mem::take(&mut d.events)).len(), 2);
        if let Some(n) = d.nodes.get_mut("n2") {
            n.state = "down".into();
        }
        // tb still listed running, but its node is down.
        d.on_discovered(tasks.clone(), at(3), false, at(4));
        let ev = std::mem::take(&mut d.events);
        assert!(
            matches!(
                ev.as_slice(),
                [DriverEvent::Exited {
                    slot: 1,
                    generation: 1,
                    why,
                }] if why.contains("node down")
            ),
            "{ev:?}"
        );
        // A discovery that started before a slot got its task cannot judge it.
        d.remove(1, 1, Removal::Normal, at(5));
        std::mem::take(&mut d.events);
        d.launch(&spec(1, 2), at(5));
        let mut fresh = tasks[0].clone();
        fresh.id = "tc".into();
        fresh.container = "tc0000000000000000".into();
        d.on_discovered(vec![tasks[0].clone(), fresh], at(6), false, at(7));
        assert_eq!(
            launched(&std::mem::take(&mut d.events)),
            vec![(1, "tc0000000000".to_string())]
        );
        d.on_discovered(vec![tasks[0].clone()], at(6), false, at(8));
        assert!(d.events.is_empty(), "{:?}", d.events);
    }
}
