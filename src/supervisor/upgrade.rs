//! In-place binary upgrade, the nginx convention: SIGUSR2 makes the supervisor start its
//! (possibly replaced) binary as a new supervisor on the same listeners, passed by fd
//! (`sys::inherit`). The new one adopts the workers (docker: the same containers; process:
//! the old one's worker processes, replaced one at a time through a surge slot, since they
//! die with their parent), forks its LB children on the inherited listeners and says it is
//! ready through a pipe. The old one then hands over: its children drain with the backend set
//! they have (never emptied: their last requests still go to the workers), it stops managing
//! workers, and exits once its children (and, process runtime, its worker processes) are gone.
//! A new binary that fails to start or to get ready changes nothing: the old one goes on.

use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Phase, StopStep, Supervisor};
use crate::sys::inherit;
use crate::sys::log::quote;
use crate::sys::notify;
use crate::{error, info, warn};

/// The pipe the new supervisor writes `ready` to.
const READY_FD_ENV: &str = "GLB_UPGRADE_READY_FD";
/// Process runtime: the old supervisor's workers, `slot=pid,...`.
const WORKERS_ENV: &str = "GLB_UPGRADE_WORKERS";
/// The old supervisor's pid (logs).
const FROM_ENV: &str = "GLB_UPGRADE_FROM";
/// How long the old supervisor keeps its worker processes alive for the new one to replace.
const PROCESS_HANDOVER: Duration = Duration::from_secs(300);

/// What a new supervisor received from the one it replaces.
#[derive(Debug, Default)]
pub struct Handover {
    ready: Option<File>,
    /// Process runtime: the predecessor's workers (slot, pid).
    pub workers: Vec<(u16, u32)>,
}

impl Handover {
    /// Takes the listeners and the rest from the environment (and removes it). Called first
    /// thing, while there is one thread.
    pub fn take_from_env() -> Handover {
        for problem in inherit::take_from_env() {
            warn!("inherited_fd_ignored", "reason={}", quote(&problem));
        }
        let var = |name: &str| {
            let v = std::env::var(name).ok();
            // SAFETY: single-threaded at start; nothing reads the environment concurrently.
            unsafe { std::env::remove_var(name) };
            v
        };
        let ready = var(READY_FD_ENV)
            .and_then(|fd| fd.parse::<i32>().ok())
            .filter(|fd| *fd > 2)
            // SAFETY: the fd was handed to us to own by the old supervisor.
            .map(|fd| unsafe { File::from_raw_fd(fd) });
        if let Some(f) = &ready {
            let _ = inherit::set_cloexec(f.as_fd(), true);
        }
        let workers: Vec<(u16, u32)> = var(WORKERS_ENV)
            .map(|v| {
                v.split(',')
                    .filter_map(|p| {
                        let (slot, pid) = p.split_once('=')?;
                        Some((slot.parse().ok()?, pid.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let from = var(FROM_ENV);
        // systemd's watchdog names the main pid; the old one hands that role to us.
        if from.is_some() && std::env::var("WATCHDOG_PID").ok() == from {
            // SAFETY: single-threaded at start; nothing reads the environment concurrently.
            unsafe { std::env::set_var("WATCHDOG_PID", std::process::id().to_string()) };
        }
        if let Some(pid) = from {
            info!(
                "upgrade_taking_over",
                "from_pid={} workers={}",
                quote(&pid),
                workers.len()
            );
        }
        Handover { ready, workers }
    }

    /// Tells the old supervisor we serve (once).
    pub fn signal_ready(&mut self) {
        if let Some(mut f) = self.ready.take() {
            let _ = f.write_all(b"ready\n");
        }
    }
}

/// An upgrade started by this (old) supervisor.
#[derive(Debug)]
pub struct Upgrade {
    child: Child,
    ready: File,
    deadline: Instant,
}

/// Where an upgrade stands.
pub enum UpgradeState {
    /// The new supervisor is starting.
    Pending,
    /// It serves: hand over.
    Ready,
    /// It failed: the old one goes on.
    Failed(String),
}

impl Upgrade {
    /// Starts `exe run --config <config>` with `listeners` inherited, and `workers`
    /// (process runtime) named.
    fn start(
        exe: &Path,
        config: &Path,
        listeners: &[(BorrowedFd<'_>, SocketAddr)],
        workers: &[(u16, u32)],
        deadline: Instant,
    ) -> std::io::Result<Upgrade> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let fds: Vec<_> = listeners
            .iter()
            .map(|(fd, a)| (fd.as_raw_fd(), *a))
            .collect();
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env(inherit::ENV, inherit::encode(&fds))
            .env(READY_FD_ENV, write.as_raw_fd().to_string())
            .env(FROM_ENV, std::process::id().to_string())
            .env(
                WORKERS_ENV,
                workers
                    .iter()
                    .map(|(s, p)| format!("{s}={p}"))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .stdin(Stdio::null());
        // Only for the spawn: our later children (docker calls) must not inherit them.
        for (fd, _) in listeners {
            inherit::set_cloexec(*fd, false)?;
        }
        inherit::set_cloexec(write.as_fd(), false)?;
        let spawned = cmd.spawn();
        for (fd, _) in listeners {
            let _ = inherit::set_cloexec(*fd, true);
        }
        drop(write);
        Ok(Upgrade {
            child: spawned?,
            ready: File::from(read),
            deadline,
        })
    }

    /// The new supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Checks on the new supervisor (never blocks).
    fn poll(&mut self, now: Instant) -> UpgradeState {
        let mut buf = [0u8; 16];
        match self.ready.read(&mut buf) {
            Ok(n) if n > 0 && buf[..n].starts_with(b"ready") => return UpgradeState::Ready,
            _ => {}
        }
        if let Ok(Some(st)) = self.child.try_wait() {
            return UpgradeState::Failed(format!("the new supervisor exited: {st}"));
        }
        if now >= self.deadline {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return UpgradeState::Failed("the new supervisor was not ready in time".into());
        }
        UpgradeState::Pending
    }
}

impl Supervisor {
    /// SIGUSR2: starts the new supervisor (only while running, one at a time).
    pub(super) fn begin_upgrade(&mut self) {
        if self.phase != Phase::Running || self.upgrade.is_some() {
            warn!(
                "upgrade_refused",
                "reason=\"not running, or an upgrade is in progress\""
            );
            return;
        }
        let mut listeners: Vec<(BorrowedFd<'_>, SocketAddr)> = self
            .pool
            .listeners
            .iter()
            .map(|l| (l.socket.as_fd(), l.addr))
            .collect();
        listeners.extend(self.admin.listener());
        let workers: Vec<(u16, u32)> = self
            .fleet
            .workers()
            .filter_map(|w| Some((w.slot, w.placement.as_ref()?.pid?)))
            .collect();
        let wait =
            Duration::from_millis(self.cfg.worker_start_timeout_ms) + Duration::from_secs(30);
        let started = Upgrade::start(
            &self.exe,
            &self.config_path,
            &listeners,
            &workers,
            Instant::now() + wait,
        );
        match started {
            Ok(u) => {
                info!(
                    "upgrade_started",
                    "new_pid={} exe={}",
                    u.pid(),
                    quote(&self.exe.display().to_string())
                );
                self.upgrade = Some(u);
            }
            Err(e) => error!("upgrade_failed", "error={}", quote(&e.to_string())),
        }
    }

    /// Each tick while an upgrade runs: hand over once the new supervisor is ready.
    pub(super) fn poll_upgrade(&mut self, now: Instant) {
        let Some(u) = self.upgrade.as_mut() else {
            return;
        };
        match u.poll(now) {
            UpgradeState::Pending => {}
            UpgradeState::Failed(why) => {
                error!(
                    "upgrade_failed",
                    "error={} action=\"keep serving\"",
                    quote(&why)
                );
                self.upgrade = None;
            }
            UpgradeState::Ready => {
                let pid = u.pid();
                self.hand_over(pid, now);
            }
        }
    }

    /// The new supervisor serves: our children drain, workers are left to it, we leave.
    fn hand_over(&mut self, new_pid: u32, now: Instant) {
        info!("upgrade_handing_over", "new_pid={new_pid}");
        // Under systemd the new process becomes the service's main process.
        let _ = notify::notify(&format!("MAINPID={new_pid}"));
        self.admin.close_listener(self.poll.registry());
        let timeout = self.cfg.drain_timeout_ms;
        let drain = Duration::from_millis(timeout) + Duration::from_secs(2);
        self.pool.drain_all(timeout, now + drain);
        self.pool.close_listeners();
        if let Some(d) = self.driver.as_mut() {
            d.release();
        }
        // The draining children keep serving the workers they know (now the new supervisor's)
        // until they are done: forgetting the fleet must not empty their backend set.
        self.pool.hold_backends();
        self.fleet.forget_all();
        self.phase = Phase::Stopping(StopStep::HandOver {
            deadline: now + drain + PROCESS_HANDOVER,
        });
    }

    /// Handing over: leave once our children are gone and the driver holds nothing (the
    /// new supervisor has replaced our worker processes), or at the deadline.
    pub(super) fn drive_hand_over(&mut self, now: Instant, deadline: Instant) {
        self.pool.drain_past_deadline(now);
        let busy = self.driver.as_ref().is_some_and(|d| d.busy());
        if self.pool.children().is_empty() && !busy {
            info!(
                "upgrade_handed_over",
                "new_pid={}",
                self.upgrade.as_ref().map_or(0, |u| u.pid())
            );
            self.phase = Phase::Stopping(StopStep::FinalSweep);
        } else if now >= deadline {
            warn!(
                "upgrade_handover_timeout",
                "children={}",
                self.pool.children().len()
            );
            self.pool.kill_all("handover timeout", self.poll.registry());
            if let Some(d) = self.driver.as_mut() {
                d.abandon();
            }
            self.phase = Phase::Stopping(StopStep::FinalSweep);
        }
    }
}
