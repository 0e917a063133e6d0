//! The supervisor ("config manager"): workers through a runtime, forked LB children,
//! reconcile loop, reload, stop, admin endpoint. One mio loop, one thread (so fork() is safe).
//!
//! Layout: `mod.rs` the loop and the phases (start, run, stop); `workers.rs` the per-port
//! worker state machine and the docker jobs; `lb.rs` the LB children (fork, re-fork, drain,
//! backend-set fan-out); `reload.rs` SIGHUP; `render.rs` /status and /metrics.

mod admin;
pub mod autoscale;
mod children;
mod dashboard;
mod events;
mod history;
mod lb;
mod metrics;
mod prometheus;
mod reload;
mod render;
mod status;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};

use crate::config::{Config, RuntimeKind};
use crate::runtime::Runtime;
use crate::runtime::job::{Job, JobOutput};
use crate::sys::log::quote;
use crate::sys::notify;
use crate::sys::privilege::Account;
use crate::sys::signals::Signals;
use crate::{error, info, warn};

pub use status::status_cmd;

const SIGNALS: Token = Token(0);
const ADMIN: Token = Token(1);
/// First token handed out dynamically (children, probes, admin connections).
const FIRST_DYNAMIC: usize = 16;

/// Longest the loop sleeps: timers (probes, drains, backoffs) are checked at least this often.
const TICK: Duration = Duration::from_millis(100);
/// How often the docker runtime lists containers to find dead ones.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How long `docker info` may take before `auto` gives up on docker.
const DOCKER_INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of ordinary docker CLI calls.
const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of the image build.
const DOCKER_BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// How often STATUS= is sent to systemd.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// `goloadbalancer run`: returns the process exit code.
pub fn run(config: Option<PathBuf>) -> i32 {
    crate::sys::log::init("supervisor");
    events::install();
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
    let mut sup = match Supervisor::new(path, cfg) {
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
    /// Docker: removing a previous run's containers and building the image.
    Preparing,
    /// Waiting for the first workers to pass their health check (fatal at the deadline).
    StartingWorkers { deadline: Instant },
    /// Serving.
    Running,
    /// Stopping: children drain, then workers stop, then containers are removed.
    Stopping(StopStep),
}

/// Steps of a clean stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopStep {
    /// LB children were told to drain; they are killed at the deadline.
    DrainChildren { deadline: Instant },
    /// Workers are stopping (they flush their stats); killed at the deadline.
    StopWorkers { deadline: Instant },
    /// Docker: a last `docker ps` + `docker rm -f` by label.
    FinalSweep,
}

/// What a helper command is for.
#[derive(Clone, Debug)]
enum JobKind {
    /// `docker info` (runtime: auto).
    DockerInfo,
    /// `docker ps` at start: containers left by a previous run.
    Leftovers,
    /// `docker rm -f` of those.
    RemoveLeftovers,
    /// `docker image inspect` of the worker image.
    ImageInspect,
    /// `docker build` of the worker image; the context directory is removed afterwards.
    ImageBuild { context: PathBuf },
    /// `docker rm -f <name>` before (re)starting the worker on `port`.
    ClearName { port: u16, generation: u64 },
    /// `docker run` of the worker on `port`.
    Run { port: u16, generation: u64 },
    /// `docker stop` of the worker on `port`.
    Stop { port: u16, generation: u64 },
    /// `docker rm -f` of the worker on `port` (after it stopped or died).
    Remove { port: u16, generation: u64 },
    /// `docker logs --tail` of a worker that failed to start, then its removal.
    Logs { port: u16, generation: u64 },
    /// Periodic `docker ps`: finds dead and stray containers.
    Reconcile { started: Instant },
    /// Stop: `docker ps` of everything with our label.
    SweepList,
    /// Stop: `docker rm -f` of it.
    SweepRemove,
    /// After a build: old unused worker images removed.
    PruneImages,
}

/// An LB listener bound by the supervisor and inherited by its children.
#[derive(Debug)]
struct LbListener {
    /// Unique id (children name the listener they serve by it).
    id: u64,
    addr: SocketAddr,
    socket: TcpListener,
}

/// The supervisor's whole state.
pub(crate) struct Supervisor {
    cfg: Config,
    config_path: PathBuf,
    poll: Poll,
    /// Taken (and dropped) in forked children.
    signals: Option<Signals>,
    phase: Phase,
    /// Exit code once the stop sequence ends.
    exit_code: i32,
    runtime: Option<Runtime>,
    runtime_reason: String,
    exe: PathBuf,
    db: PathBuf,
    /// `user`, resolved at start.
    user: Account,
    /// What LB children switch to: `user` when we run as root, else none (they keep our uid).
    child_account: Option<Account>,
    listeners: Vec<LbListener>,
    next_listener_id: u64,
    admin: admin::Admin,
    children: Vec<children::LbChild>,
    /// Per LB index: earliest next fork (backoff after a child crashed young) and restarts.
    lb_backoff: HashMap<usize, (Instant, u32)>,
    lb_restarts: u64,
    workers: BTreeMap<u16, workers::WorkerPort>,
    desired_workers: usize,
    jobs: Vec<(Job, JobKind)>,
    probes: HashMap<Token, workers::WorkerProbe>,
    next_token: usize,
    /// Last Down seq handed out.
    seq: u64,
    /// Backend set last sent to the children.
    sent_backends: Vec<crate::proxy::control::BackendSpec>,
    retired: metrics::Retired,
    rate: metrics::Rate,
    started: Instant,
    last_reconcile: Instant,
    reconcile_running: bool,
    last_status_notify: Instant,
    last_status_line: String,
    next_watchdog: Option<Instant>,
    reload_pending: bool,
    reloads: u64,
    last_reload_error: Option<String>,
    /// Docker preparation progress.
    leftovers_done: bool,
    image_ready: bool,
    /// When metrics were last sampled.
    last_sample: Option<Instant>,
    /// The autoscaler (always present; decides nothing when disabled).
    scaler: autoscale::Autoscaler,
    /// p90 of the requests completed between two samples.
    latency: autoscale::LatencyWindow,
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
/// the config does not.
fn close_unclaimed_sockets() {
    let unused = crate::sys::net::close_unclaimed();
    if !unused.is_empty() {
        warn!(
            "passed_sockets_unused",
            "sockets={} action=\"closed; re-run install.sh to write goloadbalancer.socket from the config\"",
            unused.join(",")
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

/// The listener for `addr` (see `sys::net::listener_for`: the inherited one, else bound),
/// with the address in the error.
fn bind_listener(addr: SocketAddr) -> Result<TcpListener, String> {
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
    let mut signals =
        Signals::new(&[SIGTERM, SIGINT, SIGHUP, SIGCHLD]).map_err(|e| format!("signals: {e}"))?;
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

impl Supervisor {
    /// Start steps that cannot wait for the loop: database, listeners, signals.
    fn new(config_path: PathBuf, cfg: Config) -> Result<Supervisor, String> {
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
        let next_listener_id = listeners.len() as u64;
        let desired_workers = cfg.worker;
        let cfg_autoscale = cfg.autoscale.clone();
        let next_watchdog = notify::watchdog_interval().map(|_| now);
        let mut sup = Supervisor {
            cfg,
            config_path,
            poll,
            signals: Some(signals),
            phase: Phase::Detecting,
            exit_code: 0,
            runtime: None,
            runtime_reason: String::new(),
            exe,
            db,
            user,
            child_account,
            listeners,
            next_listener_id,
            admin,
            children: Vec::new(),
            lb_backoff: HashMap::new(),
            lb_restarts: 0,
            workers: BTreeMap::new(),
            desired_workers,
            jobs: Vec::new(),
            probes: HashMap::new(),
            next_token: FIRST_DYNAMIC,
            seq: 0,
            sent_backends: Vec::new(),
            retired: metrics::Retired::default(),
            rate: metrics::Rate::default(),
            started: now,
            last_reconcile: now,
            reconcile_running: false,
            last_status_notify: now,
            last_status_line: String::new(),
            next_watchdog,
            reload_pending: false,
            reloads: 0,
            last_reload_error: None,
            leftovers_done: false,
            image_ready: false,
            last_sample: None,
            scaler: autoscale::Autoscaler::new(&cfg_autoscale),
            latency: autoscale::LatencyWindow::new(),
            history: history::History::new(),
        };
        sup.choose_runtime();
        Ok(sup)
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Resolves `runtime:`: process at once, docker after its preparation, auto after
    /// `docker info`.
    fn choose_runtime(&mut self) {
        match self.cfg.runtime {
            RuntimeKind::Process => {
                self.use_runtime(Runtime::Process, "runtime: process in the config".into())
            }
            RuntimeKind::Docker => {
                self.use_docker("runtime: docker in the config".into());
            }
            RuntimeKind::Auto => {
                self.phase = Phase::Detecting;
                let deadline = Instant::now() + DOCKER_INFO_TIMEOUT;
                if !self.spawn_job(
                    crate::runtime::docker::info(),
                    JobKind::DockerInfo,
                    deadline,
                ) {
                    self.use_runtime(
                        Runtime::Process,
                        "runtime: auto and the docker CLI could not be started".into(),
                    );
                }
            }
        }
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
                self.use_runtime(Runtime::Process, why);
                return;
            }
            Err(e) => {
                self.fatal(format!("stats-dir: {e}"));
                return;
            }
        };
        let d = crate::runtime::docker::Docker {
            instance: self.cfg.instance.clone(),
            image: crate::runtime::docker::image_tag(hash),
            user,
        };
        self.use_runtime(Runtime::Docker(d), reason);
    }

    fn use_runtime(&mut self, rt: Runtime, reason: String) {
        info!(
            "runtime_chosen",
            "runtime={} reason={}",
            rt.name(),
            quote(&reason)
        );
        self.runtime_reason = reason;
        let docker = match &rt {
            Runtime::Docker(d) => Some(d.clone()),
            Runtime::Process => None,
        };
        self.runtime = Some(rt);
        match docker {
            None => self.begin_worker_start(),
            Some(d) => {
                self.phase = Phase::Preparing;
                let deadline = Instant::now() + DOCKER_CALL_TIMEOUT;
                self.spawn_job(d.ps(), JobKind::Leftovers, deadline);
                self.spawn_job(d.image_inspect(), JobKind::ImageInspect, deadline);
            }
        }
    }

    /// Starts the first workers; the loop forks the children once they are healthy.
    fn begin_worker_start(&mut self) {
        if matches!(self.phase, Phase::Stopping(_)) {
            return;
        }
        let wait = Duration::from_millis(self.cfg.worker_start_timeout_ms);
        // A slow but progressing start is not killed by systemd's start timeout.
        notify::extend_timeout(wait + Duration::from_secs(10));
        let deadline = Instant::now() + wait;
        self.phase = Phase::StartingWorkers { deadline };
        info!(
            "starting_workers",
            "count={} timeout_ms={}", self.desired_workers, self.cfg.worker_start_timeout_ms
        );
        self.sync_worker_ports();
    }

    /// Runs a helper command; false (and logged) when it could not be spawned.
    fn spawn_job(&mut self, cmd: std::process::Command, kind: JobKind, deadline: Instant) -> bool {
        let describe = format!(
            "{} {}",
            cmd.get_program().to_string_lossy(),
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        match Job::spawn(cmd, describe.clone(), deadline) {
            Ok(job) => {
                crate::debug!("job_started", "pid={} cmd={}", job.pid(), quote(&describe));
                self.jobs.push((job, kind));
                true
            }
            Err(e) => {
                warn!(
                    "job_spawn_failed",
                    "cmd={} error={}",
                    quote(&describe),
                    quote(&e.to_string())
                );
                false
            }
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
            if let Err(e) = self.poll.poll(&mut events, Some(TICK))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                error!("poll_failed", "error={}", quote(&e.to_string()));
                return 1;
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == SIGNALS {
                    self.on_signals();
                } else if t == ADMIN {
                    let mut next = self.next_token;
                    self.admin.accept(self.poll.registry(), || {
                        let t = Token(next);
                        next += 1;
                        t
                    });
                    self.next_token = next;
                } else if self.admin.owns(t) {
                    if let Some(p) = self.admin.ready(self.poll.registry(), t) {
                        self.answer_admin(p);
                    }
                } else if self.probes.contains_key(&t) {
                    self.on_probe_event(ev);
                } else {
                    self.on_control(ev);
                }
            }
            let now = Instant::now();
            self.tick(now);
            if let Phase::Stopping(StopStep::FinalSweep) = self.phase
                && self.jobs.is_empty()
            {
                info!("stopped", "exit_code={}", self.exit_code);
                return self.exit_code;
            }
        }
    }

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        for sig in signals.pending() {
            match sig {
                SIGCHLD => {} // exits are collected in tick()
                SIGHUP => {
                    if self.phase == Phase::Running {
                        self.reload();
                    } else if !matches!(self.phase, Phase::Stopping(_)) {
                        info!("reload_deferred", "reason=\"still starting\"");
                        self.reload_pending = true;
                    }
                }
                SIGTERM | SIGINT => {
                    let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    if let Phase::Stopping(_) = self.phase {
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
        self.poll_jobs(now);
        self.reap_children(now);
        self.reap_worker_processes();
        self.expire_probes(now);
        self.admin.expire(self.poll.registry(), now);
        match self.phase {
            Phase::Detecting | Phase::Preparing => {}
            Phase::StartingWorkers { deadline } => {
                self.drive_workers(now);
                // A container that dies while starting is retried, not waited on until the end.
                self.reconcile_if_due(now);
                let healthy = self.active_workers();
                if healthy >= self.desired_workers {
                    self.finish_start();
                } else if now >= deadline {
                    let late = self.unhealthy_worker_names();
                    self.fatal(format!(
                        "workers not healthy within worker-start-timeout-ms={}: {late}",
                        self.cfg.worker_start_timeout_ms
                    ));
                }
            }
            Phase::Running => {
                self.drive_workers(now);
                self.ensure_children(now);
                self.drain_children_past_deadline(now);
                self.reconcile_if_due(now);
                self.publish_backends();
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

    /// First workers healthy: fork the children and tell systemd we are ready.
    fn finish_start(&mut self) {
        self.phase = Phase::Running;
        let now = Instant::now();
        self.scaler.set_desired(now, self.cfg.worker);
        if self.cfg.autoscale.enabled
            && let Some(d) = self.scaler.desired()
            && d != self.desired_workers
        {
            info!(
                "autoscale_bounds",
                "workers={} desired={d}", self.desired_workers
            );
            self.desired_workers = d;
        }
        self.publish_backends();
        self.ensure_children(now);
        let line = self.status_line();
        info!("ready", "status={}", quote(&line));
        notify::ready(&line);
        self.last_status_line = line;
        self.last_status_notify = now;
        if self.reload_pending {
            self.reload_pending = false;
            self.reload();
        }
    }

    /// `workers 3/3 healthy, 120 req/s`: the STATUS= line.
    fn status_line(&self) -> String {
        format!(
            "workers {}/{} healthy, {:.0} req/s",
            self.active_workers(),
            self.desired_workers,
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

    fn poll_jobs(&mut self, now: Instant) {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.jobs.len() {
            if let Some(out) = self.jobs[i].0.poll(now) {
                let (job, kind) = self.jobs.swap_remove(i);
                done.push((job, kind, out));
            } else {
                i += 1;
            }
        }
        for (job, kind, out) in done {
            if !out.success {
                crate::debug!(
                    "job_failed",
                    "cmd={} error={}",
                    quote(&job.describe),
                    quote(&out.error_text())
                );
            }
            self.on_job_done(kind, out);
        }
    }

    /// Acts on a finished docker call.
    fn on_job_done(&mut self, kind: JobKind, out: JobOutput) {
        match kind {
            JobKind::DockerInfo => self.on_docker_info(out),
            JobKind::Leftovers => self.on_leftovers_listed(out),
            JobKind::RemoveLeftovers => {
                log_job_failure("leftover_removal_failed", &out);
                self.leftovers_done = true;
                self.maybe_docker_ready();
            }
            JobKind::ImageInspect => self.on_image_inspected(out),
            JobKind::ImageBuild { context } => self.on_image_built(&context, out),
            JobKind::ClearName { port, generation } => self.on_clear_name_done(port, generation),
            JobKind::Run { port, generation } => self.on_run_done(port, generation, out),
            JobKind::Stop { port, generation } => self.on_stop_done(port, generation, out),
            JobKind::Remove { port, generation } => self.on_remove_done(port, generation, out),
            JobKind::Logs { port, generation } => self.on_logs_done(port, generation, out),
            JobKind::Reconcile { started } => {
                self.reconcile_running = false;
                if out.success {
                    self.on_reconcile(started, &out.stdout);
                } else {
                    log_job_failure("docker_ps_failed", &out);
                }
            }
            JobKind::SweepList => self.on_sweep_listed(out),
            JobKind::PruneImages => log_job_failure("image_prune_failed", &out),
            JobKind::SweepRemove => log_job_failure("container_removal_failed", &out),
        }
    }

    /// `docker info` answered (runtime: auto): docker if it worked, else worker processes.
    fn on_docker_info(&mut self, out: JobOutput) {
        if matches!(self.phase, Phase::Stopping(_)) {
            return;
        }
        if out.success {
            self.use_docker(format!(
                "runtime: auto and docker info answered (engine {})",
                out.stdout.trim()
            ));
        } else {
            self.use_runtime(
                Runtime::Process,
                format!("runtime: auto and docker info failed: {}", out.error_text()),
            );
        }
    }

    /// `docker ps` at start: removes what a previous run left.
    fn on_leftovers_listed(&mut self, out: JobOutput) {
        let ids = container_ids(&out);
        if !out.success {
            self.fatal(format!("docker ps failed: {}", out.error_text()));
        } else if ids.is_empty() {
            self.leftovers_done = true;
            self.maybe_docker_ready();
        } else if let Some(Runtime::Docker(d)) = &self.runtime {
            info!(
                "removing_leftover_containers",
                "count={} ids={}",
                ids.len(),
                ids.iter()
                    .map(|i| crate::runtime::docker::short_id(i))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let cmd = d.remove(&ids);
            self.spawn_job(
                cmd,
                JobKind::RemoveLeftovers,
                Instant::now() + DOCKER_CALL_TIMEOUT,
            );
        }
    }

    /// `docker image inspect`: the image is there, or it is built from a temp context.
    fn on_image_inspected(&mut self, out: JobOutput) {
        let Some(Runtime::Docker(d)) = self.runtime.clone() else {
            return;
        };
        if out.success {
            info!("worker_image_present", "image={}", d.image);
            self.image_ready = true;
            self.maybe_docker_ready();
            return;
        }
        let parent = std::env::temp_dir();
        match crate::runtime::docker::prepare_context(&self.exe, &parent) {
            Ok(context) => {
                info!("building_worker_image", "image={}", d.image);
                notify::extend_timeout(DOCKER_BUILD_TIMEOUT + Duration::from_secs(10));
                let cmd = d.build(&context);
                if !self.spawn_job(
                    cmd,
                    JobKind::ImageBuild {
                        context: context.clone(),
                    },
                    Instant::now() + DOCKER_BUILD_TIMEOUT,
                ) {
                    let _ = std::fs::remove_dir_all(&context);
                    self.fatal("docker build could not be started".into());
                }
            }
            Err(e) => self.fatal(format!("worker image build context: {e}")),
        }
    }

    /// `docker build` ended: its context goes; old images are pruned after a success.
    fn on_image_built(&mut self, context: &Path, out: JobOutput) {
        let _ = std::fs::remove_dir_all(context);
        if !out.success {
            self.fatal(format!("docker build failed: {}", out.error_text()));
            return;
        }
        info!("worker_image_built", "image_id={}", out.stdout.trim());
        self.image_ready = true;
        if let Some(Runtime::Docker(d)) = &self.runtime {
            let cmd = d.prune_images();
            self.spawn_job(
                cmd,
                JobKind::PruneImages,
                Instant::now() + DOCKER_CALL_TIMEOUT,
            );
        }
        self.maybe_docker_ready();
    }

    /// Stop: `docker ps` by label listed what is left; it is removed.
    fn on_sweep_listed(&mut self, out: JobOutput) {
        let Some(Runtime::Docker(d)) = &self.runtime else {
            return;
        };
        let ids = container_ids(&out);
        if !ids.is_empty() {
            info!("removing_containers", "count={}", ids.len());
            let cmd = d.remove(&ids);
            self.spawn_job(
                cmd,
                JobKind::SweepRemove,
                Instant::now() + DOCKER_CALL_TIMEOUT,
            );
        }
    }

    fn maybe_docker_ready(&mut self) {
        if self.phase == Phase::Preparing && self.leftovers_done && self.image_ready {
            self.begin_worker_start();
        }
    }

    /// SIGTERM/SIGINT (or a fatal start error): drain the children, then stop workers.
    fn begin_stop(&mut self) {
        if matches!(self.phase, Phase::Stopping(_)) {
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
        self.drain_all_children(timeout, deadline);
        // Our copies of the LB listeners go now: each port closes as soon as its children
        // have drained, instead of queueing connections nobody will accept.
        self.listeners.clear();
        self.phase = Phase::Stopping(StopStep::DrainChildren { deadline });
    }

    fn drive_stop(&mut self, now: Instant, step: StopStep) {
        match step {
            StopStep::DrainChildren { deadline } => {
                if !self.children.is_empty() && now >= deadline {
                    self.kill_all_children("drain timeout");
                }
                if self.children.is_empty() {
                    // Every worker goes: drained by the children already, stop directly.
                    self.desired_workers = 0;
                    for worker in self.workers.values_mut() {
                        worker.wanted = false;
                    }
                    let grace =
                        Duration::from_millis(self.cfg.drain_timeout_ms) + Duration::from_secs(15);
                    self.phase = Phase::Stopping(StopStep::StopWorkers {
                        deadline: now + grace,
                    });
                    self.drive_workers(now);
                }
            }
            StopStep::StopWorkers { deadline } => {
                self.drive_workers(now);
                if self.workers.is_empty() || now >= deadline {
                    if !self.workers.is_empty() {
                        warn!("workers_stop_timeout", "left={}", self.workers.len());
                        self.kill_worker_processes();
                    }
                    for (mut job, kind) in std::mem::take(&mut self.jobs) {
                        crate::debug!("job_abandoned", "kind={kind:?}");
                        job.kill();
                        if let JobKind::ImageBuild { context } = kind {
                            let _ = std::fs::remove_dir_all(context);
                        }
                    }
                    self.phase = Phase::Stopping(StopStep::FinalSweep);
                    if let Some(Runtime::Docker(d)) = &self.runtime {
                        let cmd = d.ps();
                        self.spawn_job(cmd, JobKind::SweepList, now + DOCKER_CALL_TIMEOUT);
                    }
                }
            }
            StopStep::FinalSweep => {}
        }
    }

    /// A second stop signal: kill everything now, remove containers, exit.
    fn force_stop(&mut self) -> ! {
        self.kill_all_children("forced stop");
        self.kill_worker_processes();
        for (mut job, _) in std::mem::take(&mut self.jobs) {
            job.kill();
        }
        if let Some(Runtime::Docker(d)) = &self.runtime {
            // Blocking is fine now: we are leaving. Bounded all the same.
            let deadline = Instant::now() + Duration::from_secs(20);
            if let Ok(mut job) = Job::spawn(d.ps(), "docker ps".into(), deadline) {
                let out = wait_job(&mut job);
                let ids: Vec<String> = crate::runtime::docker::parse_ps(&out.stdout)
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                if !ids.is_empty()
                    && let Ok(mut rm) = Job::spawn(d.remove(&ids), "docker rm".into(), deadline)
                {
                    let _ = wait_job(&mut rm);
                }
            }
        }
        info!("stopped", "exit_code=1 forced=true");
        std::process::exit(1);
    }
}

/// Waits for a job (only used when leaving).
fn wait_job(job: &mut Job) -> JobOutput {
    loop {
        if let Some(out) = job.poll(Instant::now()) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Logs a failed helper command under `event` (a failure that changes nothing else).
fn log_job_failure(event: &str, out: &JobOutput) {
    if !out.success {
        warn!(event, "error={}", quote(&out.error_text()));
    }
}

/// Container ids in a `docker ps` output.
fn container_ids(out: &JobOutput) -> Vec<String> {
    crate::runtime::docker::parse_ps(&out.stdout)
        .into_iter()
        .map(|c| c.id)
        .collect()
}
