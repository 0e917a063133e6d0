//! The process runtime: `goloadbalancer worker` as a local child process of the supervisor.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::driver::{Driver, DriverEvent, Existing, LaunchSpec, Placement, Removal};
use crate::sys::log::quote;

/// Everything a local worker process is started with.
#[derive(Clone, Debug)]
pub struct ProcessSpec<'a> {
    /// Our own executable.
    pub exe: &'a Path,
    /// Address the worker listens on.
    pub address: IpAddr,
    /// Port it listens on.
    pub port: u16,
    /// Stats database.
    pub db: &'a Path,
    /// Mean hello delay in ms.
    pub avg_delay: u64,
    /// Failure rate in percent.
    pub failure: f64,
    /// Time the worker gives in-flight requests on SIGTERM.
    pub drain_timeout_ms: u64,
}

/// The worker id of a local worker: `local-<port>`.
pub fn worker_id(port: u16) -> String {
    format!("local-{port}")
}

/// Starts the worker. It gets SIGTERM (drain, flush stats) if the supervisor dies, so no
/// worker outlives it.
pub fn spawn(spec: &ProcessSpec<'_>) -> std::io::Result<Child> {
    let mut cmd = Command::new(spec.exe);
    cmd.arg("worker")
        .args(["--listen", &spec.address.to_string()])
        .args(["--port", &spec.port.to_string()])
        .args(["--id", &worker_id(spec.port)])
        .arg("--db")
        .arg(spec.db)
        .args(["--avg-delay", &spec.avg_delay.to_string()])
        .args(["--failure", &spec.failure.to_string()])
        .args(["--drain-timeout-ms", &spec.drain_timeout_ms.to_string()])
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C in the terminal reaches the supervisor (and its LB
        // children), which stops the workers only after the children have drained.
        .process_group(0);
    crate::sys::notify::forget_for_children(&mut cmd);
    crate::sys::privilege::no_ambient_caps_on_exec(&mut cmd);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)?;
            // The supervisor may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("supervisor already gone"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// One worker process the driver started.
#[derive(Debug)]
struct Running {
    generation: u64,
    child: Child,
    /// Sent SIGTERM: its exit is a stop, not a death.
    stopping: bool,
}

/// A worker process of the supervisor this one replaced (upgrade): not our child, watched
/// through /proc and signalled by pid.
#[derive(Debug)]
struct Foreign {
    generation: u64,
    pid: u32,
    stopping: bool,
}

/// The process runtime as a [`Driver`]: slot `i` listens on `worker-port + i`.
#[derive(Debug)]
pub struct ProcessDriver {
    exe: PathBuf,
    db: PathBuf,
    address: IpAddr,
    base_port: u16,
    running: BTreeMap<u16, Running>,
    /// The predecessor's workers (slot, pid), listed once at start.
    predecessor: Vec<(u16, u32)>,
    foreign: BTreeMap<u16, Foreign>,
    /// Upgrade: our workers belong to the new supervisor now.
    released: bool,
    events: Vec<DriverEvent>,
}

/// Whether `pid` runs (exists and is not a zombie).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn signal_pid(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

impl ProcessDriver {
    /// A driver starting `exe worker` processes on `address:base_port + slot`.
    pub fn new(exe: PathBuf, db: PathBuf, address: IpAddr, base_port: u16) -> ProcessDriver {
        ProcessDriver {
            exe,
            db,
            address,
            base_port,
            running: BTreeMap::new(),
            predecessor: Vec::new(),
            foreign: BTreeMap::new(),
            released: false,
            events: Vec::new(),
        }
    }

    /// Upgrade: the previous supervisor's workers, offered for adoption by [`Driver::list`]
    /// (as outdated: they die with their parent, so the fleet replaces them one by one).
    pub fn with_predecessor(mut self, workers: Vec<(u16, u32)>) -> ProcessDriver {
        self.predecessor = workers;
        self
    }

    /// Predecessor workers that ended: stopped when asked, else a death.
    fn watch_foreign(&mut self) {
        let gone: Vec<u16> = self
            .foreign
            .iter()
            .filter(|(_, f)| !pid_alive(f.pid))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in gone {
            let Some(f) = self.foreign.remove(&slot) else {
                continue;
            };
            let generation = f.generation;
            if f.stopping {
                crate::info!(
                    "worker_stopped",
                    "slot={slot} pid={} predecessor=true",
                    f.pid
                );
                self.events.push(DriverEvent::Stopped { slot, generation });
            } else {
                let why = format!("predecessor's worker pid {} exited", f.pid);
                self.events.push(DriverEvent::Exited {
                    slot,
                    generation,
                    why,
                });
            }
        }
    }

    fn port(&self, slot: u16) -> Option<u16> {
        self.base_port.checked_add(slot)
    }

    fn kill_all(&mut self) {
        for (_, mut r) in std::mem::take(&mut self.running) {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn planned_address(&self, slot: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.address, self.port(slot)?))
    }

    fn prepare(&mut self, _now: Instant) {
        self.events.push(DriverEvent::Prepared(Ok(())));
    }

    fn list(&mut self, _now: Instant) {
        // A crashed run's worker processes died with it (PDEATHSIG); only an upgrade's
        // predecessor hands its live ones over.
        let found = std::mem::take(&mut self.predecessor)
            .into_iter()
            .filter(|(_, pid)| pid_alive(*pid))
            .filter_map(|(slot, pid)| {
                let port = self.port(slot)?;
                Some(Existing {
                    slot: Some(slot),
                    placement: Some(Placement {
                        id: worker_id(port),
                        addr: SocketAddr::new(self.address, port),
                        pid: Some(pid),
                        container: None,
                    }),
                    handle: pid.to_string(),
                    running: true,
                    current: false,
                })
            })
            .collect();
        self.events.push(DriverEvent::Listed(Ok(found)));
    }

    fn adopt(&mut self, slot: u16, generation: u64, found: &Existing, _now: Instant) {
        if let Some(pid) = found.placement.as_ref().and_then(|p| p.pid) {
            let stopping = false;
            let f = Foreign {
                generation,
                pid,
                stopping,
            };
            self.foreign.insert(slot, f);
        }
    }

    fn discard(&mut self, found: &Existing, _now: Instant) {
        if let Some(pid) = found.placement.as_ref().and_then(|p| p.pid) {
            signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    fn launch(&mut self, spec: &LaunchSpec, _now: Instant) {
        let (slot, generation) = (spec.slot, spec.generation);
        let Some(port) = self.port(slot) else {
            let result = Err(format!("worker-port + {slot} is past 65535"));
            self.events.push(DriverEvent::Launched {
                slot,
                generation,
                result,
            });
            return;
        };
        let process = ProcessSpec {
            exe: &self.exe,
            address: self.address,
            port,
            db: &self.db,
            avg_delay: spec.avg_delay,
            failure: spec.failure,
            drain_timeout_ms: spec.drain_timeout_ms,
        };
        let result = match spawn(&process) {
            Ok(child) => {
                let id = worker_id(port);
                crate::info!("worker_spawned", "port={port} id={id} pid={}", child.id());
                let placement = Placement {
                    id,
                    addr: SocketAddr::new(self.address, port),
                    pid: Some(child.id()),
                    container: None,
                };
                let old = self.running.insert(
                    slot,
                    Running {
                        generation,
                        child,
                        stopping: false,
                    },
                );
                if let Some(mut old) = old {
                    let _ = old.child.kill();
                    let _ = old.child.wait();
                }
                Ok(placement)
            }
            Err(e) => Err(format!("spawn: {e}")),
        };
        self.events.push(DriverEvent::Launched {
            slot,
            generation,
            result,
        });
    }

    fn stop(&mut self, slot: u16, generation: u64, _grace: Duration, _now: Instant) {
        if let Some(f) = self.foreign.get_mut(&slot)
            && f.generation == generation
        {
            signal_pid(f.pid, nix::sys::signal::Signal::SIGTERM);
            f.stopping = true;
            return;
        }
        match self.running.get_mut(&slot) {
            Some(r) if r.generation == generation => {
                let pid = nix::unistd::Pid::from_raw(r.child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                r.stopping = true;
            }
            _ => self.events.push(DriverEvent::Stopped { slot, generation }),
        }
    }

    fn kill(&mut self, slot: u16, generation: u64) {
        if let Some(f) = self.foreign.get(&slot)
            && f.generation == generation
        {
            signal_pid(f.pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(r) = self.running.get_mut(&slot)
            && r.generation == generation
        {
            crate::warn!("worker_kill", "slot={slot} reason=\"stop timeout\"");
            let _ = r.child.kill();
        }
    }

    fn remove(&mut self, slot: u16, generation: u64, _why: Removal, _now: Instant) {
        if self
            .foreign
            .get(&slot)
            .is_some_and(|f| f.generation == generation)
            && let Some(f) = self.foreign.remove(&slot)
            && pid_alive(f.pid)
        {
            signal_pid(f.pid, nix::sys::signal::Signal::SIGKILL);
        }
        if self
            .running
            .get(&slot)
            .is_some_and(|r| r.generation == generation)
            && let Some(mut r) = self.running.remove(&slot)
        {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        self.events.push(DriverEvent::Removed { slot, generation });
    }

    fn watch(&mut self, _now: Instant) {}

    fn poll(&mut self, _now: Instant) -> Vec<DriverEvent> {
        self.watch_foreign();
        let mut exited = Vec::new();
        for (slot, r) in &mut self.running {
            if let Ok(Some(status)) = r.child.try_wait() {
                exited.push((*slot, r.generation, r.stopping, status));
            }
        }
        for (slot, generation, stopping, status) in exited {
            self.running.remove(&slot);
            if stopping {
                crate::info!(
                    "worker_stopped",
                    "slot={slot} status={}",
                    quote(&status.to_string())
                );
                self.events.push(DriverEvent::Stopped { slot, generation });
            } else {
                self.events.push(DriverEvent::Exited {
                    slot,
                    generation,
                    why: status.to_string(),
                });
            }
        }
        std::mem::take(&mut self.events)
    }

    fn sweep(&mut self, _now: Instant) {}

    fn busy(&self) -> bool {
        self.released && !self.running.is_empty()
    }

    fn release(&mut self) {
        self.released = true;
        self.foreign.clear();
    }

    fn abandon(&mut self) {
        self.kill_all();
    }

    fn force_cleanup(&mut self) {
        self.kill_all();
    }
}
