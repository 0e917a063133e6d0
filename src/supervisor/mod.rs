//! The supervisor ("config manager"): workers through a runtime driver, forked LB children,
//! reconcile loop, reload, stop, admin endpoint. One mio loop, one thread (so fork() is safe).
//!
//! Layout: `mod.rs` the loop and the phases (start, run, stop), dispatching to components that
//! own their state: `lb.rs` the LB pool (listeners, children, control seq, retired metrics),
//! `fleet.rs` desired vs. actual workers, `probes.rs` their health probes, `autoscale.rs`,
//! `admin.rs`; the runtime is a `runtime::driver::Driver`. `reload.rs` SIGHUP; `render.rs`
//! /status and /metrics.

mod admin;
pub mod autoscale;
mod children;
mod dashboard;
mod events;
mod fleet;
mod history;
mod lb;
mod metrics;
mod probes;
mod prometheus;
mod reload;
mod render;
mod status;
mod upgrade;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

use crate::config::{Config, RuntimeKind};
use crate::runtime::docker_driver::DockerDriver;
use crate::runtime::driver::{Driver, DriverEvent};
use crate::runtime::job::{Job, JobOutput};
use crate::runtime::process::ProcessDriver;
use crate::sys::log::quote;
use crate::sys::notify;
use crate::sys::privilege::Account;
use crate::sys::signals::Signals;
use crate::{error, info, warn};

pub use status::status_cmd;

/// This build's version (`goloadbalancer --version`, `/status`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const SIGNALS: Token = Token(0);
const ADMIN: Token = Token(1);
/// First token handed out dynamically (children, probes, admin connections).
const FIRST_DYNAMIC: usize = 16;

/// Longest the loop sleeps: timers (probes, drains, backoffs) are checked at least this often.
const TICK: Duration = Duration::from_millis(100);
/// `runtime: swarm`: how long a task SIGTERMed by swarm answers /healthz 503 before it closes
/// (the supervisor's 1 s task poll and the children's health checks stop sending meanwhile).
const SWARM_DRAIN_GRACE_MS: u64 = 3_000;
/// How long `docker info` may take before `auto` gives up on docker.
const DOCKER_INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often STATUS= is sent to systemd.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How often metrics are sampled (request rate, autoscaler).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// `goloadbalancer run`: returns the process exit code.
pub fn run(config: Option<PathBuf>) -> i32 {
    crate::sys::log::init("supervisor");
    events::install();
    // While there is one thread: what a previous supervisor handed over (SIGUSR2), and what
    // systemd passed (socket activation).
    let handover = upgrade::Handover::take_from_env();
    take_passed_sockets();
    // Early, before any fork: systemd shows it during a slow start, and it pins us as the
    // process that talks to NOTIFY_SOCKET.
    notify::status("starting");
    let path = crate::config::default_path(config);
    let cfg = match crate::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            error!("config_invalid", "error={}", quote(&e.to_string()));
            return 2;
        }
    };
    let mut sup = match Supervisor::new(path, cfg, handover) {
        Ok(s) => s,
        Err(e) => {
            error!("start_failed", "error={}", quote(&e));
            return 1;
        }
    };
    sup.run_loop()
}

/// Where the supervisor is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `runtime: auto`: waiting for `docker info`.
    Detecting,
    /// The driver prepares (docker: the image), then lists what a previous run left.
    Preparing,
    /// Waiting for the first workers to pass their health check (fatal at the deadline).
    StartingWorkers { deadline: Instant },
    /// Serving.
    Running,
    /// Stopping: children drain, then workers stop, then the runtime is swept.
    Stopping(StopStep),
}

/// Steps of a clean stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopStep {
    /// LB children were told to drain; they are killed at the deadline.
    DrainChildren { deadline: Instant },
    /// Workers are stopping (they flush their stats); killed at the deadline.
    StopWorkers { deadline: Instant },
    /// The driver removes whatever is left of this instance (not after a handover).
    FinalSweep,
    /// Upgrade: a new supervisor serves; our children drain, our workers are its now.
    HandOver { deadline: Instant },
}

/// An LB listener bound by the supervisor and inherited by its children.
#[derive(Debug)]
struct LbListener {
    /// Unique id (children name the listener they serve by it).
    id: u64,
    addr: SocketAddr,
    socket: TcpListener,
}

/// The loop's dynamic tokens: a counter, never reused, so a late event of a closed socket
/// finds no owner.
#[derive(Debug)]
pub(crate) struct Tokens(usize);

impl Tokens {
    /// A fresh token.
    pub(crate) fn next(&mut self) -> Token {
        let t = Token(self.0);
        self.0 += 1;
        t
    }
}

/// The supervisor: the loop, the phase, and the components it dispatches to.
pub(crate) struct Supervisor {
    cfg: Config,
    config_path: PathBuf,
    poll: Poll,
    /// Taken (and dropped) in forked children.
    signals: Option<Signals>,
    tokens: Tokens,
    phase: Phase,
    /// Exit code once the stop sequence ends.
    exit_code: i32,
    /// The runtime, once chosen.
    driver: Option<Box<dyn Driver>>,
    runtime_reason: String,
    /// `runtime: auto`: the `docker info` call deciding it.
    detect: Option<Job>,
    exe: PathBuf,
    db: PathBuf,
    /// `user`, resolved at start.
    user: Account,
    /// What LB children switch to: `user` when we run as root, else none (they keep our uid).
    child_account: Option<Account>,
    pool: lb::LbPool,
    fleet: fleet::Fleet,
    probes: probes::Probes,
    admin: admin::Admin,
    /// The autoscaler (always present; decides nothing when disabled).
    scaler: autoscale::Autoscaler,
    rate: metrics::Rate,
    started: Instant,
    last_status_notify: Instant,
    last_status_line: String,
    next_watchdog: Option<Instant>,
    reload_pending: bool,
    reloads: u64,
    last_reload_error: Option<String>,
    /// When metrics were last sampled.
    last_sample: Option<Instant>,
    /// SIGUSR2: the new supervisor this one is handing over to.
    upgrade: Option<upgrade::Upgrade>,
    /// What the supervisor this one replaced handed over (empty on a normal start).
    handover: upgrade::Handover,
    /// Time series and per-worker recent figures for /status.
    history: history::History,
}

/// Socket activation: keeps the listening sockets systemd passed (for `bind_listener`) and
/// removes `LISTEN_*` from the environment. First thing, while there is one thread.
fn take_passed_sockets() {
    let (passed, mut rejected) = crate::sys::activation::take_passed();
    let count = passed.len();
    rejected.extend(crate::sys::net::adopt_passed(passed));
    if count > 0 {
        info!("sockets_passed", "count={count}");
    }
    for why in rejected {
        warn!("passed_fd_ignored", "reason={}", quote(&why));
    }
}

/// Closes (and logs) the passed sockets no listener took: the socket unit lists an address
/// the config does not. Likewise the ones a previous supervisor handed over (upgrade).
fn close_unclaimed_sockets() {
    let unused = crate::sys::net::close_unclaimed();
    if !unused.is_empty() {
        warn!(
            "passed_sockets_unused",
            "sockets={} action=\"closed; re-run install.sh to write goloadbalancer.socket from the config\"",
            unused.join(",")
        );
    }
    for addr in crate::sys::inherit::close_rest() {
        info!(
            "inherited_listener_closed",
            "addr={addr} reason=\"not in the config\""
        );
    }
}

/// `user` resolved, and the account LB children switch to (`user` when we are root). Also
/// checks the database's resolved directory (check-config can only check an absolute one).
fn accounts(cfg: &Config, db: &Path) -> Result<(Account, Option<Account>), String> {
    crate::sys::privilege::check_database_dir(db.parent().unwrap_or(Path::new("/")))
        .map_err(|e| format!("stats-dir: {e}"))?;
    let user = crate::sys::privilege::lookup_user(&cfg.user).map_err(|e| format!("user: {e}"))?;
    let child = crate::sys::privilege::child_account(&user);
    Ok((user, child))
}

/// The listener for `addr`: the one a previous supervisor handed over (upgrade), else the one
/// systemd passed, else bound (see `sys::net::listener_for`), with the address in the error.
fn bind_listener(addr: SocketAddr) -> Result<TcpListener, String> {
    if let Some(l) = crate::sys::inherit::take(addr) {
        return Ok(l);
    }
    crate::sys::net::listener_for(addr).map_err(|e| format!("bind {addr}: {e}"))
}

/// `a,b,c`: the listeners' addresses for a log line.
fn addr_list(listeners: &[LbListener]) -> String {
    listeners
        .iter()
        .map(|l| l.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Binds every LB listener a config asks for (ids 0..).
fn bind_lb_listeners(cfg: &Config) -> Result<Vec<LbListener>, String> {
    lb_addrs(cfg)?
        .into_iter()
        .enumerate()
        .map(|(i, addr)| {
            Ok(LbListener {
                id: i as u64,
                addr,
                socket: bind_listener(addr)?,
            })
        })
        .collect()
}

/// The loop's poll with the supervisor's signals registered on it.
fn poll_with_signals() -> Result<(Poll, Signals), String> {
    let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut signals = Signals::new(&[SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2])
        .map_err(|e| format!("signals: {e}"))?;
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("signals: {e}"))?;
    Ok((poll, signals))
}

/// The LB listener addresses a config asks for.
fn lb_addrs(cfg: &Config) -> Result<Vec<SocketAddr>, String> {
    Ok(cfg.lb_addresses())
}

/// The stats database as an absolute path with a canonical directory (containers mount that
/// directory at the same path); the directory is created when missing.
fn absolute_db(path: &Path) -> Result<PathBuf, String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("working directory: {e}"))?
            .join(path)
    };
    let name = abs
        .file_name()
        .ok_or_else(|| format!("stats-dir {}: not a file path", abs.display()))?
        .to_owned();
    let dir = abs.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("stats-dir {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("stats-dir {}: {e}", dir.display()))?;
    Ok(dir.join(name))
}

/// The fleet's settings from a config.
fn fleet_settings(cfg: &Config) -> fleet::FleetSettings {
    fleet::FleetSettings {
        start_timeout: Duration::from_millis(cfg.worker_start_timeout_ms),
        drain_timeout: Duration::from_millis(cfg.drain_timeout_ms),
        avg_delay: cfg.avg_delay,
        failure: cfg.failure,
    }
}

impl Supervisor {
    /// Start steps that cannot wait for the loop: database, listeners, signals.
    fn new(
        config_path: PathBuf,
        cfg: Config,
        handover: upgrade::Handover,
    ) -> Result<Supervisor, String> {
        let db = absolute_db(&cfg.stats_dir)?;
        let (user, child_account) = accounts(&cfg, &db)?;
        // Creates or migrates the database, then closes it: no connection (and no SQLite
        // thread) lives across a fork.
        crate::worker::store::prepare(&db)?;
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;

        let listeners = bind_lb_listeners(&cfg)?;
        let admin_addr = SocketAddr::new(cfg.admin_address, cfg.admin_port);
        let admin_socket = bind_listener(admin_addr).map_err(|e| format!("admin: {e}"))?;
        let (poll, signals) = poll_with_signals()?;
        let admin = admin::Admin::new(admin_socket, poll.registry(), ADMIN)
            .map_err(|e| format!("admin: {e}"))?;
        close_unclaimed_sockets();
        info!(
            "listening",
            "lb={} admin={admin_addr} instance={} config={}",
            addr_list(&listeners),
            quote(&cfg.instance),
            quote(&config_path.display().to_string())
        );
        let now = Instant::now();
        let mut sup = Supervisor {
            fleet: fleet::Fleet::new(cfg.worker, fleet_settings(&cfg)),
            scaler: autoscale::Autoscaler::new(&cfg.autoscale),
            cfg,
            config_path,
            poll,
            signals: Some(signals),
            tokens: Tokens(FIRST_DYNAMIC),
            phase: Phase::Detecting,
            exit_code: 0,
            driver: None,
            runtime_reason: String::new(),
            detect: None,
            exe,
            db,
            user,
            child_account,
            pool: lb::LbPool::new(listeners),
            probes: probes::Probes::default(),
            admin,
            rate: metrics::Rate::default(),
            started: now,
            last_status_notify: now,
            last_status_line: String::new(),
            next_watchdog: notify::watchdog_interval().map(|_| now),
            reload_pending: false,
            reloads: 0,
            last_reload_error: None,
            last_sample: None,
            upgrade: None,
            handover,
            history: history::History::new(),
        };
        sup.choose_runtime();
        Ok(sup)
    }

    fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping(_))
    }

    /// Resolves `runtime:`: process or docker at once, auto after `docker info`.
    fn choose_runtime(&mut self) {
        match self.cfg.runtime {
            RuntimeKind::Process => {
                self.use_process("runtime: process in the config".into());
            }
            RuntimeKind::Docker => {
                self.use_docker("runtime: docker in the config".into());
            }
            RuntimeKind::Swarm => self.use_swarm(),
            RuntimeKind::Auto => {
                self.phase = Phase::Detecting;
                let deadline = Instant::now() + DOCKER_INFO_TIMEOUT;
                let cmd = crate::runtime::docker::info();
                match Job::spawn(cmd, "docker info".into(), deadline) {
                    Ok(job) => self.detect = Some(job),
                    Err(_) => self.use_process(
                        "runtime: auto and the docker CLI could not be started".into(),
                    ),
                }
            }
        }
    }

    /// `docker info` answered (runtime: auto): docker if it worked, else worker processes.
    fn on_docker_info(&mut self, out: JobOutput) {
        if self.stopping() {
            return;
        }
        if out.success {
            self.use_docker(format!(
                "runtime: auto and docker info answered (engine {})",
                out.stdout.trim()
            ));
        } else {
            self.use_process(format!(
                "runtime: auto and docker info failed: {}",
                out.error_text()
            ));
        }
    }

    fn use_process(&mut self, reason: String) {
        let d = ProcessDriver::new(
            self.exe.clone(),
            self.db.clone(),
            self.cfg.worker_address,
            self.cfg.worker_port,
        )
        .with_predecessor(std::mem::take(&mut self.handover.workers));
        self.use_driver(Box::new(d), reason);
    }

    fn use_docker(&mut self, reason: String) {
        let hash = match crate::runtime::docker::hash_file(&self.exe) {
            Ok(h) => h,
            Err(e) => {
                self.fatal(format!("hash of {}: {e}", self.exe.display()));
                return;
            }
        };
        let user = match crate::sys::privilege::prepare_container_database(&self.db, &self.user) {
            Ok(ids) => ids,
            Err(e) if self.cfg.runtime == RuntimeKind::Auto => {
                let why = format!("runtime: auto and no container may use the database: {e}");
                self.use_process(why);
                return;
            }
            Err(e) => {
                self.fatal(format!("stats-dir: {e}"));
                return;
            }
        };
        let cli = crate::runtime::docker::Docker {
            instance: self.cfg.instance.clone(),
            image: crate::runtime::docker::image_tag(hash),
            user,
        };
        let d = DockerDriver::new(
            cli,
            self.exe.clone(),
            self.db.clone(),
            self.cfg.worker_address,
            self.cfg.worker_port,
        )
        .with_limits(self.cfg.worker_pids_limit, self.cfg.worker_memory_mb);
        // Autoscaling: the next worker's container is created ahead (`docker start` on demand).
        let d = if self.cfg.autoscale.enabled {
            d.with_spare(self.cfg.worker_slots())
        } else {
            d
        };
        self.use_driver(Box::new(d), reason);
    }

    /// `runtime: swarm`: the worker service on the swarm the docker CLI points at.
    fn use_swarm(&mut self) {
        use crate::runtime::swarm::{ServiceSpec, SwarmCli, default_service};
        use crate::runtime::swarm_driver::{SwarmDriver, db_name};
        let s = &self.cfg.swarm;
        let service = if s.service.is_empty() {
            default_service(&self.cfg.instance)
        } else {
            s.service.clone()
        };
        let images = if s.image.is_empty() {
            let hash = match crate::runtime::docker::hash_file(&self.exe) {
                Ok(h) => h,
                Err(e) => {
                    self.fatal(format!("hash of {}: {e}", self.exe.display()));
                    return;
                }
            };
            Some(crate::runtime::docker::Docker {
                instance: self.cfg.instance.clone(),
                image: crate::runtime::docker::image_tag(hash),
                user: (0, 0),
            })
        } else {
            None
        };
        let cli = SwarmCli {
            instance: self.cfg.instance.clone(),
            service,
            image: images.as_ref().map_or(s.image.clone(), |d| d.image.clone()),
            // A reference without a registry host (`name:tag`) is a local image too: asking
            // Docker Hub for its digest would fail.
            local_image: images.is_some() || !has_registry_host(&s.image),
            constraints: s
                .constraints
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect(),
        };
        let spec = ServiceSpec {
            port: self.cfg.worker_port,
            db_name: db_name(&self.db),
            avg_delay: self.cfg.avg_delay,
            failure: self.cfg.failure,
            drain_timeout_ms: self.cfg.drain_timeout_ms,
            drain_grace_ms: SWARM_DRAIN_GRACE_MS,
            pids_limit: self.cfg.worker_pids_limit,
            memory_mb: self.cfg.worker_memory_mb,
        };
        let d = SwarmDriver::new(cli, images, self.exe.clone(), spec);
        self.use_driver(Box::new(d), "runtime: swarm in the config".into());
    }

    /// The runtime is chosen: it prepares, then the first workers start.
    fn use_driver(&mut self, mut driver: Box<dyn Driver>, reason: String) {
        info!(
            "runtime_chosen",
            "runtime={} reason={}",
            driver.name(),
            quote(&reason)
        );
        self.runtime_reason = reason;
        self.phase = Phase::Preparing;
        driver.prepare(Instant::now());
        self.driver = Some(driver);
    }

    /// Starts the first workers; the loop forks the children once they are healthy.
    fn begin_worker_start(&mut self) {
        if self.stopping() {
            return;
        }
        let wait = Duration::from_millis(self.cfg.worker_start_timeout_ms);
        // A slow but progressing start is not killed by systemd's start timeout.
        notify::extend_timeout(wait + Duration::from_secs(10));
        let now = Instant::now();
        self.phase = Phase::StartingWorkers {
            deadline: now + wait,
        };
        info!(
            "starting_workers",
            "count={} timeout_ms={}",
            self.fleet.desired(),
            self.cfg.worker_start_timeout_ms
        );
        if let Some(d) = self.driver.as_mut() {
            // A worker that dies while starting is retried, not waited on until the end.
            d.watch(now);
        }
    }

    /// An unrecoverable start error: log it, clean up what exists, exit 1.
    fn fatal(&mut self, msg: String) {
        error!("start_failed", "error={}", quote(&msg));
        self.exit_code = 1;
        self.begin_stop();
    }

    /// The main loop; returns the exit code.
    fn run_loop(&mut self) -> i32 {
        let mut events = Events::with_capacity(256);
        loop {
            // Wake for a starting worker's next probe (50 ms apart) rather than the 100 ms
            // tick: each probe interval missed is added to a cold start.
            let timeout = self.fleet.next_probe_at().map_or(TICK, |at| {
                at.saturating_duration_since(Instant::now()).min(TICK)
            });
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                error!("poll_failed", "error={}", quote(&e.to_string()));
                return 1;
            }
            for ev in events.iter() {
                self.dispatch(ev);
            }
            let now = Instant::now();
            self.tick(now);
            if self.phase == Phase::Stopping(StopStep::FinalSweep)
                && !self.driver.as_ref().is_some_and(|d| d.busy())
            {
                info!("stopped", "exit_code={}", self.exit_code);
                return self.exit_code;
            }
        }
    }

    /// Hands one readiness event to the component owning its token.
    fn dispatch(&mut self, ev: &mio::event::Event) {
        let t = ev.token();
        if t == SIGNALS {
            self.on_signals();
        } else if t == ADMIN {
            let tokens = &mut self.tokens;
            self.admin.accept(self.poll.registry(), || tokens.next());
        } else if self.admin.owns(t) {
            if let Some(p) = self.admin.ready(self.poll.registry(), t) {
                self.answer_admin(p);
            }
        } else if self.probes.owns(t) {
            let now = Instant::now();
            if let Some((slot, generation, verdict)) =
                self.probes.on_event(ev, self.poll.registry(), now)
            {
                self.fleet.on_probe(slot, generation, verdict, now);
                self.publish_backends();
            }
        } else {
            self.pool.on_control(ev);
            self.on_child_news(Instant::now());
        }
    }

    /// Acts at once on what the children just said: a demand signal with no worker wanted
    /// starts one; a report at panic level decides now instead of at the next sample.
    fn on_child_news(&mut self, now: Instant) {
        let news = self.pool.take_news();
        if self.phase != Phase::Running || !self.cfg.autoscale.enabled {
            return;
        }
        if let Some(queued) = news.demand {
            let d = self.scaler.on_demand(now, queued);
            self.apply_scale(d, now);
        }
        if news.metrics {
            let (sample, _) = self.autoscale_sample();
            if self.scaler.panic_would_act(&sample) {
                self.last_sample = None;
                self.sample_metrics(now);
            }
        }
    }

    /// The autoscaler's sample without its p90 (taken once per regular sample), and the
    /// active backend ids.
    fn autoscale_sample(&self) -> (autoscale::Sample, u64) {
        let views = self.pool.backend_views();
        let total: u64 = views.values().map(|v| v.totals.requests()).sum();
        let active: std::collections::HashSet<String> = self
            .fleet
            .backend_set()
            .into_iter()
            .filter(|b| b.state == crate::proxy::control::BackendState::Active)
            .map(|b| b.id)
            .collect();
        let sample = autoscale::Sample {
            active_workers: self.fleet.active(),
            in_flight: self.pool.in_flight(&active),
            queued: self.pool.queued(),
            requests_total: total,
            p90_ms: None,
        };
        (sample, total)
    }

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        for sig in signals.pending() {
            match sig {
                SIGCHLD => {} // exits are collected in tick()
                SIGUSR2 => self.begin_upgrade(),
                // The access log is the LB children's: they reopen its file.
                SIGUSR1 => self.pool.signal_all(nix::sys::signal::Signal::SIGUSR1),
                SIGHUP => {
                    if self.phase == Phase::Running {
                        self.reload();
                    } else if !self.stopping() {
                        info!("reload_deferred", "reason=\"still starting\"");
                        self.reload_pending = true;
                    }
                }
                SIGTERM | SIGINT => {
                    let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    if let Phase::Stopping(StopStep::HandOver { .. }) = self.phase {
                        // The workers are the new supervisor's: leave them, just go.
                        warn!("forced_stop", "signal={name} during=handover");
                        self.pool.kill_all("forced stop", self.poll.registry());
                        std::process::exit(1);
                    } else if self.stopping() {
                        // A second stop signal: the operator does not want to wait.
                        warn!("forced_stop", "signal={name}");
                        self.force_stop();
                    } else {
                        info!("stopping", "signal={name}");
                        self.begin_stop();
                    }
                }
                _ => {}
            }
        }
    }

    /// Everything driven by time and child exits.
    fn tick(&mut self, now: Instant) {
        if let Some(out) = self.detect.as_mut().and_then(|j| j.poll(now)) {
            self.detect = None;
            self.on_docker_info(out);
        }
        self.pump_driver(now);
        self.poll_upgrade(now);
        self.pool.reap(now, self.stopping(), self.poll.registry());
        for (slot, generation, verdict) in self.probes.expire(self.poll.registry(), now) {
            self.fleet.on_probe(slot, generation, verdict, now);
        }
        self.admin.expire(self.poll.registry(), now);
        match self.phase {
            Phase::Detecting | Phase::Preparing => {}
            Phase::StartingWorkers { deadline } => {
                self.drive_fleet(now);
                if self.fleet.active() >= self.fleet.desired() {
                    self.finish_start();
                } else if now >= deadline {
                    let late = self
                        .driver
                        .as_deref()
                        .map(|d| self.fleet.unhealthy_names(d))
                        .unwrap_or_default();
                    self.fatal(format!(
                        "workers not healthy within worker-start-timeout-ms={}: {late}",
                        self.cfg.worker_start_timeout_ms
                    ));
                }
            }
            Phase::Running => {
                self.drive_fleet(now);
                self.ensure_children(now);
                self.pool.drain_past_deadline(now);
                self.sample_metrics(now);
                self.notify_status(now, false);
            }
            Phase::Stopping(step) => self.drive_stop(now, step),
        }
        if let Some(at) = self.next_watchdog
            && now >= at
        {
            notify::watchdog();
            self.next_watchdog = notify::watchdog_interval().map(|i| now + i);
        }
    }

    /// Takes in what the runtime reports: preparation, launches, stops, deaths.
    fn pump_driver(&mut self, now: Instant) {
        // A few rounds: an event may make the fleet ask for a step the driver answers at once
        // (a process is removed the moment it is asked).
        for _ in 0..4 {
            let Some(driver) = self.driver.as_mut() else {
                return;
            };
            let events = driver.poll(now);
            if events.is_empty() {
                break;
            }
            for ev in events {
                match ev {
                    DriverEvent::Prepared(Ok(())) => {
                        // What a previous run left is adopted before anything is launched.
                        if self.phase == Phase::Preparing
                            && let Some(d) = self.driver.as_deref_mut()
                        {
                            d.list(now);
                        }
                    }
                    DriverEvent::Listed(Ok(found)) => {
                        if self.phase == Phase::Preparing
                            && let Some(d) = self.driver.as_deref_mut()
                        {
                            self.fleet.adopt(found, now, d);
                            self.begin_worker_start();
                        }
                    }
                    DriverEvent::Prepared(Err(e)) | DriverEvent::Listed(Err(e)) => self.fatal(e),
                    other => {
                        if let Some(d) = self.driver.as_deref_mut() {
                            self.fleet.on_event(other, now, d);
                        }
                    }
                }
            }
        }
        self.after_fleet_change(now);
    }

    /// One pass of the fleet, then its probes and the backend set.
    fn drive_fleet(&mut self, now: Instant) {
        let stopping = self.stopping();
        if let Some(d) = self.driver.as_deref_mut() {
            self.fleet.drive(now, d, &self.pool, stopping);
        }
        self.after_fleet_change(now);
    }

    /// What follows any fleet change: due probes start, failed starts reach the autoscaler,
    /// the children get the new backend set.
    fn after_fleet_change(&mut self, now: Instant) {
        for request in self.fleet.due_probes(now) {
            let token = self.tokens.next();
            let path = &self.cfg.proxy.health_path;
            if let Some((slot, generation, verdict)) =
                self.probes
                    .start(request, path, self.poll.registry(), token)
            {
                self.fleet.on_probe(slot, generation, verdict, now);
            }
        }
        for slot in self.fleet.take_start_failures() {
            // A worker the autoscaler asked for (beyond `min`) that cannot start is given
            // up, and scale-out pauses; the `min` ones are retried with the backoff.
            if self.cfg.autoscale.enabled
                && self.phase == Phase::Running
                && usize::from(slot) >= self.cfg.autoscale.min
            {
                let d = self.scaler.report_start_failure(now);
                self.apply_scale(d, now);
            }
        }
        self.publish_backends();
    }

    /// Sends the fleet's backend set to the children when it changed; draining workers
    /// learn the seq that carries their drain.
    fn publish_backends(&mut self) {
        self.pool.publish_backends(self.fleet.backend_set());
        self.fleet.stamp_drains(self.pool.seq());
    }

    /// Forks every LB child that should run and does not.
    fn ensure_children(&mut self, now: Instant) {
        let backends = self.fleet.backend_set();
        let mut ctx = lb::ForkCtx {
            registry: self.poll.registry(),
            tokens: &mut self.tokens,
            signals: &mut self.signals,
            account: self.child_account.as_ref(),
        };
        self.pool
            .ensure_children(now, &self.cfg, &backends, &mut ctx);
    }

    /// First workers healthy: fork the children and tell systemd we are ready.
    fn finish_start(&mut self) {
        self.phase = Phase::Running;
        let now = Instant::now();
        self.scaler.set_desired(now, self.cfg.worker);
        if self.cfg.autoscale.enabled
            && let Some(d) = self.scaler.desired()
            && d != self.fleet.desired()
        {
            info!(
                "autoscale_bounds",
                "workers={} desired={d}",
                self.fleet.desired()
            );
            self.fleet.set_desired(d, now);
        }
        self.publish_backends();
        self.ensure_children(now);
        let line = self.status_line();
        info!("ready", "status={}", quote(&line));
        notify::ready(&line);
        self.handover.signal_ready();
        self.last_status_line = line;
        self.last_status_notify = now;
        if self.reload_pending {
            self.reload_pending = false;
            self.reload();
        }
    }

    /// Every second: request rate (and the autoscaler, when on).
    fn sample_metrics(&mut self, now: Instant) {
        if let Some(last) = self.last_sample
            && now.duration_since(last) < SAMPLE_EVERY
        {
            return;
        }
        self.last_sample = Some(now);
        let (mut sample, total) = self.autoscale_sample();
        self.rate.record(now, total);
        sample.p90_ms = self.pool.take_p90();
        let views = self.pool.backend_views();
        let decision = self.scaler.observe(now, &sample);
        self.apply_scale(decision, now);
        let point = history::Point {
            desired: self.fleet.desired(),
            active: sample.active_workers,
            in_flight: sample.in_flight,
            requests_per_s: self.rate.per_second(),
            p90_ms: sample.p90_ms,
        };
        let live = self
            .fleet
            .workers()
            .filter_map(|w| w.placement.as_ref().map(|p| p.id.as_str()));
        self.history.record(now, point, &views, live);
    }

    /// Applies an autoscaler decision through the same path as a reload's worker count.
    fn apply_scale(&mut self, decision: autoscale::Decision, now: Instant) {
        if let Some(entered) = self.scaler.take_panic_change() {
            let st = self.scaler.status();
            info!(
                "autoscale_panic",
                "state={} demand={} capacity={} active={}",
                if entered { "enter" } else { "leave" },
                st.demand,
                st.target_inflight * st.active as f64,
                st.active
            );
        }
        if let autoscale::Decision::ScaleTo { target, reason } = decision {
            if target == self.fleet.desired() {
                return;
            }
            let fields = self
                .scaler
                .last_decision()
                .map_or_else(|| format!("reason={}", quote(&reason)), |d| d.log_fields());
            info!(
                "autoscale_decision",
                "workers={} {fields}",
                self.fleet.desired()
            );
            self.fleet.set_desired(target, now);
            let stopping = self.stopping();
            if let Some(d) = self.driver.as_deref_mut() {
                self.fleet.drive(now, d, &self.pool, stopping);
            }
        }
    }

    /// `workers 3/3 healthy, 120 req/s`: the STATUS= line.
    fn status_line(&self) -> String {
        format!(
            "workers {}/{} healthy, {:.0} req/s",
            self.fleet.active(),
            self.fleet.desired(),
            self.rate.per_second()
        )
    }

    fn notify_status(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_status_notify) < STATUS_EVERY {
            return;
        }
        let line = self.status_line();
        if force
            || line != self.last_status_line
            || now.duration_since(self.last_status_notify) >= STATUS_EVERY
        {
            notify::status(&line);
            self.last_status_line = line;
            self.last_status_notify = now;
        }
    }

    /// SIGTERM/SIGINT (or a fatal start error): drain the children, then stop workers.
    fn begin_stop(&mut self) {
        if self.stopping() {
            return;
        }
        notify::stopping();
        let now = Instant::now();
        let timeout = self.cfg.drain_timeout_ms;
        // The whole stop may take the drain twice (children, then workers) plus docker calls:
        // ask systemd for that much so a long drain-timeout-ms is honoured.
        notify::extend_timeout(
            Duration::from_millis(timeout.saturating_mul(2)) + Duration::from_secs(30),
        );
        let deadline = now + Duration::from_millis(timeout) + Duration::from_secs(2);
        self.pool.drain_all(timeout, deadline);
        // Our copies of the LB listeners go now: each port closes as soon as its children
        // have drained, instead of queueing connections nobody will accept.
        self.pool.close_listeners();
        if let Some(mut job) = self.detect.take() {
            job.kill();
        }
        self.phase = Phase::Stopping(StopStep::DrainChildren { deadline });
    }

    fn drive_stop(&mut self, now: Instant, step: StopStep) {
        match step {
            StopStep::DrainChildren { deadline } => {
                if !self.pool.children().is_empty() && now >= deadline {
                    self.pool.kill_all("drain timeout", self.poll.registry());
                }
                if self.pool.children().is_empty() {
                    // Every worker goes: drained by the children already, stop directly.
                    self.fleet.set_desired(0, now);
                    let grace =
                        Duration::from_millis(self.cfg.drain_timeout_ms) + Duration::from_secs(15);
                    self.phase = Phase::Stopping(StopStep::StopWorkers {
                        deadline: now + grace,
                    });
                    self.drive_fleet(now);
                }
            }
            StopStep::StopWorkers { deadline } => {
                self.drive_fleet(now);
                if self.fleet.is_empty() || now >= deadline {
                    if !self.fleet.is_empty() {
                        let left = self.fleet.workers().count();
                        warn!("workers_stop_timeout", "left={left}");
                    }
                    self.fleet.forget_all();
                    self.phase = Phase::Stopping(StopStep::FinalSweep);
                    if let Some(d) = self.driver.as_mut() {
                        d.abandon();
                        d.sweep(now);
                    }
                }
            }
            StopStep::HandOver { deadline } => self.drive_hand_over(now, deadline),
            StopStep::FinalSweep => {}
        }
    }

    /// A second stop signal: kill everything now, remove containers, exit.
    fn force_stop(&mut self) -> ! {
        self.pool.kill_all("forced stop", self.poll.registry());
        if let Some(d) = self.driver.as_mut() {
            d.force_cleanup();
        }
        info!("stopped", "exit_code=1 forced=true");
        std::process::exit(1);
    }
}

/// Whether an image reference names a registry host (`registry.example/x:1`, `host:5000/x`,
/// `localhost/x`), as docker decides it: a first path part with a dot or a port, or localhost.
fn has_registry_host(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}
