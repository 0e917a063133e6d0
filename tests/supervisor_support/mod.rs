//! Shared pieces of the supervisor tests: a whole stack (`goloadbalancer run`) on free ports
//! in its own temp dir, a load generator that counts refused and failed requests, docker
//! checks and cleanup by label.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::common::{self, Proc, TempDir};

/// Whether a docker engine answers (`docker info` within 15 s).
pub fn docker_available() -> Result<(), String> {
    let child = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Err(format!("docker CLI not runnable: {e}")),
    };
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("docker info failed: {st}")),
            Ok(None) if Instant::now() > end => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("docker info did not answer within 15 s".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Returns true (and prints why) when a docker test must be skipped.
pub fn skip_without_docker(test: &str) -> bool {
    match docker_available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIPPED {test}: no docker engine ({why})");
            true
        }
    }
}

/// Container ids (full) carrying `goloadbalancer.instance=<instance>`, running or not.
pub fn containers(instance: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=goloadbalancer.instance={instance}"),
        ])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes every container of `instance` (test cleanup, also after a failure).
pub fn remove_containers(instance: &str) {
    let ids = containers(instance);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Waits until `pred` holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if pred() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// `n` consecutive free ports below the kernel's ephemeral range (32768+), so no outgoing
/// connection of the load (or of anything else on the machine) can take one of them between
/// the check and the bind (docker-proxy's bind does not share a port with a connected socket).
pub fn quiet_ports(n: u16) -> u16 {
    use std::sync::atomic::AtomicU64;
    static SALT: AtomicU64 = AtomicU64::new(0);
    let mut x = u64::from(std::process::id()) * 7919
        + SALT.fetch_add(1, Ordering::Relaxed) * 104_729
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    // Ports handed out in this test process: tests run in parallel, and a port is only
    // bound once its stack starts, so a free-looking range may already be promised (by
    // another test process too: `claim_on_machine`).
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let base = 20_000 + ((x >> 33) % 12_000) as u16;
        if (base..base + n).any(|p| handed.contains(&p)) {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        let ports: Vec<u16> = (base..base + n).collect();
        if held.len() == n as usize && common::claim_on_machine(&ports) {
            handed.extend(ports);
            return base;
        }
    }
    common::free_port_range(n)
}

/// Parameters of a stack.
#[derive(Clone, Debug)]
pub struct StackSpec {
    /// `process` or `docker`.
    pub runtime: &'static str,
    pub workers: usize,
    pub pool: usize,
    /// Worker ports reserved (>= the most workers the test asks for).
    pub worker_ports: u16,
    pub avg_delay: u64,
    pub drain_timeout_ms: u64,
    pub start_timeout_ms: u64,
    /// Extra YAML lines.
    pub extra: String,
}

impl StackSpec {
    /// The seed's shape: 3 workers, 2 LB children, a small delay, no failures.
    pub fn seed(runtime: &'static str) -> StackSpec {
        StackSpec {
            runtime,
            workers: 3,
            pool: 2,
            worker_ports: 6,
            avg_delay: 5,
            drain_timeout_ms: 5000,
            start_timeout_ms: 60000,
            extra: String::new(),
        }
    }
}

/// A running `goloadbalancer run` with its own ports, temp dir and instance name.
pub struct Stack {
    pub proc: Option<Proc>,
    pub dir: TempDir,
    pub spec: StackSpec,
    pub instance: String,
    pub lb_port: u16,
    pub worker_port: u16,
    pub admin_port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    runs: u32,
    /// The binary to run, when not the one cargo built (an upgrade test replaces it).
    pub bin: Option<PathBuf>,
}

impl Stack {
    /// Writes the config and starts the supervisor (does not wait for readiness).
    pub fn new(name: &str, spec: StackSpec) -> Stack {
        let dir = TempDir::new(name);
        let instance = format!("glbt-{name}-{}", std::process::id());
        let lb_port = quiet_ports(spec.pool.max(1) as u16 + 1);
        let worker_port = quiet_ports(spec.worker_ports);
        let admin_port = quiet_ports(1);
        let config = dir.join("config.yaml");
        let log = dir.join("run.log");
        let s = Stack {
            proc: None,
            dir,
            spec,
            instance,
            lb_port,
            worker_port,
            admin_port,
            config,
            log,
            runs: 0,
            bin: None,
        };
        s.write_config(s.spec.workers, "");
        s
    }

    /// The config text for `workers` workers plus `more` YAML lines.
    pub fn config_text(&self, workers: usize, more: &str) -> String {
        format!(
            "worker: {workers}\npool: {pool}\nstats-dir: {db}\navg-delay: {delay}\nfailure: 0\n\
             load-balancer-port: {lb}\nworker-port: {wp}\ninstance: {inst}\n\
             listen-address: 127.0.0.1\nworker-address: 127.0.0.1\nruntime: {rt}\n\
             admin-port: {admin}\ndrain-timeout-ms: {drain}\nworker-start-timeout-ms: {start}\n\
             health-interval-ms: 1000\n{extra}\n{more}\n",
            pool = self.spec.pool,
            db = self.db().display(),
            delay = self.spec.avg_delay,
            lb = self.lb_port,
            wp = self.worker_port,
            inst = self.instance,
            rt = self.spec.runtime,
            admin = self.admin_port,
            drain = self.spec.drain_timeout_ms,
            start = self.spec.start_timeout_ms,
            extra = self.spec.extra,
        )
    }

    /// Rewrites the config file.
    pub fn write_config(&self, workers: usize, more: &str) {
        std::fs::write(&self.config, self.config_text(workers, more)).expect("write config");
    }

    /// Starts `goloadbalancer run --config <ours>`, stderr appended to the log file.
    pub fn start(&mut self) {
        self.runs += 1;
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = match &self.bin {
            Some(path) => Command::new(path),
            None => Command::new(common::bin()),
        };
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdout(Stdio::from(logf.try_clone().expect("dup")))
            .stderr(Stdio::from(logf));
        self.proc = Some(Proc::start_cmd("supervisor", &mut cmd));
    }

    /// Starts and waits until /status says running with every worker active.
    pub fn start_ready(name: &str, spec: StackSpec) -> Stack {
        let mut s = Stack::new(name, spec);
        s.start();
        s.wait_ready();
        s
    }

    /// Waits until the supervisor is running with `spec.workers` active workers and `pool`
    /// children.
    pub fn wait_ready(&mut self) {
        let want = self.spec.workers as u64;
        let pool = self.spec.pool as u64;
        let timeout = if self.spec.runtime == "docker" {
            180
        } else {
            60
        };
        self.wait_status(
            "running with every worker active",
            Duration::from_secs(timeout),
            |s| {
                s["state"] == "running"
                    && s["workers_actual"].as_u64() == Some(want)
                    && s["children"].as_array().map(|c| c.len() as u64) == Some(pool)
            },
        );
    }

    /// The stats database: in a directory of its own, which the supervisor creates (running
    /// as root, it hands that directory to the containers' unprivileged user).
    pub fn db(&self) -> PathBuf {
        self.dir.join("db/stats.db")
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> i32 {
        self.proc.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// LB listener `i`.
    pub fn lb(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.lb_port + i as u16))
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    /// GET /status, parsed; None when the admin endpoint does not answer.
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let r = try_get(self.admin(), "/status").ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    /// GET /status; panics when it does not answer.
    pub fn status(&self) -> serde_json::Value {
        self.try_status()
            .unwrap_or_else(|| panic!("no /status answer\n{}", self.log_tail()))
    }

    /// Waits for /status to satisfy `pred`; returns that status.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        while Instant::now() < end {
            if let Some(p) = self.proc.as_mut()
                && !p.alive()
            {
                panic!(
                    "supervisor exited while waiting for {what}\n{}",
                    self.log_tail()
                );
            }
            if let Some(s) = self.try_status() {
                if pred(&s) {
                    return s;
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; last /status:\n{}\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            self.log_tail()
        );
    }

    /// The last lines of the supervisor's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(80);
        // The access-log lines of failed requests say who ended them, wherever they are.
        let access: Vec<&str> = lines[..from]
            .iter()
            .copied()
            .filter(|l| l.contains("event=access"))
            .collect();
        format!(
            "--- access-log lines before the tail ---\n{}\n--- supervisor log (last 80 lines) ---\n{}",
            access.join("\n"),
            lines[from..].join("\n")
        )
    }

    /// Every log line.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the supervisor.
    pub fn signal(&self, sig: i32) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    /// SIGTERM, then a clean exit within 90 s and no container of the instance left (`what`
    /// names what must be gone, for the failure message).
    pub fn stop_leaving_no_container(&mut self, what: &str) {
        self.signal(15);
        let mut p = self.proc.take().expect("supervisor");
        assert_eq!(p.wait_exit(Duration::from_secs(90)), Some(0), "clean stop");
        assert_eq!(containers(&self.instance), Vec::<String>::new(), "{what}");
    }

    /// Worker ids in /status with state active.
    pub fn active_worker_ids(&self) -> Vec<String> {
        let s = self.status();
        s["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter(|w| w["state"] == "active")
                    .filter_map(|w| w["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        // Proc's drop: SIGKILL; its LB children die with it, process workers get SIGTERM.
        self.proc.take();
        if self.spec.runtime == "docker" {
            remove_containers(&self.instance);
        }
    }
}

/// The LB children's pids in a /status document.
pub fn child_pids(status: &serde_json::Value) -> Vec<i64> {
    status["children"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["pid"].as_i64()).collect())
        .unwrap_or_default()
}

/// One hello request on a fresh connection: Ok(worker id) or Err(what went wrong).
pub fn hello(addr: SocketAddr) -> Result<String, Outcome> {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Outcome::Refused);
        }
        Err(e) => return Err(Outcome::Failed(format!("connect: {e}"))),
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    if let Err(e) =
        s.write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    {
        return Err(Outcome::Failed(format!("write: {e}")));
    }
    let mut pending = Vec::new();
    let resp = common::read_response(&mut s, &mut pending, false)
        .map_err(|e| Outcome::Failed(format!("read: {e}")))?;
    if resp.status != 200 {
        return Err(Outcome::Failed(format!(
            "status {}: {}",
            resp.status,
            resp.text()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|e| Outcome::Failed(format!("body {e}: {}", resp.text())))?;
    let msg = v["message"].as_str().unwrap_or("");
    msg.strip_prefix("hello from container: ")
        .map(str::to_string)
        .ok_or_else(|| Outcome::Failed(format!("unexpected body {}", resp.text())))
}

/// Why a request did not succeed.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The connection was refused.
    Refused,
    /// Anything else (reset, bad status, timeout).
    Failed(String),
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub ok: u64,
    pub refused: u64,
    pub failed: u64,
    /// First few failure descriptions.
    pub errors: Vec<String>,
    /// Successful responses per worker id.
    pub by_worker: BTreeMap<String, u64>,
}

impl Counts {
    fn merge(&mut self, o: Counts) {
        self.ok += o.ok;
        self.refused += o.refused;
        self.failed += o.failed;
        for e in o.errors {
            if self.errors.len() < 10 {
                self.errors.push(e);
            }
        }
        for (k, v) in o.by_worker {
            *self.by_worker.entry(k).or_default() += v;
        }
    }
}

/// Continuous hello requests from `threads` threads over `addrs` until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Counts>>,
}

impl Load {
    /// Starts the load.
    pub fn start(addrs: Vec<SocketAddr>, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|t| {
                let stop = Arc::clone(&stop);
                let addrs = addrs.clone();
                std::thread::spawn(move || {
                    let mut c = Counts::default();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let addr = addrs[i % addrs.len()];
                        i += 1;
                        match hello(addr) {
                            Ok(id) => {
                                c.ok += 1;
                                *c.by_worker.entry(id).or_default() += 1;
                            }
                            Err(Outcome::Refused) => {
                                c.refused += 1;
                                if c.errors.len() < 10 {
                                    c.errors.push(format!("{addr}: refused"));
                                }
                            }
                            Err(Outcome::Failed(e)) => {
                                c.failed += 1;
                                if c.errors.len() < 10 {
                                    c.errors.push(format!("{addr}: {e}"));
                                }
                            }
                        }
                    }
                    c
                })
            })
            .collect();
        Load { stop, handles }
    }

    /// Stops and returns the totals.
    pub fn finish(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Counts::default();
        for h in self.handles {
            if let Ok(c) = h.join() {
                total.merge(c);
            }
        }
        total
    }
}

/// `GET path` on a fresh connection; Err (never a panic) when nothing listens.
pub fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<common::Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut pending = Vec::new();
    common::read_response(&mut s, &mut pending, false)
}

/// `/worker/stats` through `addr`: (TotalRequests total, SuccessfulRequests total).
pub fn stats_totals(addr: SocketAddr) -> Option<(u64, u64)> {
    let r = try_get(addr, "/worker/stats").ok()?;
    if r.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    let total = v["TotalRequests"][0]["total"].as_u64()?;
    let ok = v["SuccessfulRequests"][0]["total"].as_u64()?;
    Some((total, ok))
}

/// Reads the stats database after everything stopped, through a standalone worker started on
/// it (the black-box way to read what the workers flushed).
pub fn stats_from_db(db: &std::path::Path) -> (u64, u64) {
    let port = common::free_port();
    let mut w = Proc::start(
        "stats-reader",
        &[
            "worker",
            "--listen",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--id",
            "stats-reader",
            "--db",
            &db.display().to_string(),
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::wait_for_port(addr, Duration::from_secs(30));
    let totals = stats_totals(addr).expect("stats from the standalone worker");
    w.signal(15);
    let _ = w.wait_exit(Duration::from_secs(10));
    totals
}

/// Reads everything from a stream until EOF (small helper for raw checks).
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}
