//! The `/status` document (served by the admin endpoint, read by `goloadbalancer status`) and
//! the `status` command's table.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `GET /status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// `instance` from the config.
    pub instance: String,
    /// Supervisor pid.
    pub pid: u32,
    /// Supervisor version (`goloadbalancer --version`).
    #[serde(default)]
    pub version: String,
    /// `starting`, `running`, `stopping`.
    pub state: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Config file in use.
    pub config: String,
    /// `docker` or `process` (empty while still deciding).
    pub runtime: String,
    /// Why that runtime.
    pub runtime_reason: String,
    /// Workers wanted.
    pub workers_desired: usize,
    /// Workers serving (healthy, in the backend set as active).
    pub workers_actual: usize,
    /// Responses to clients, all backends, since start.
    pub requests_total: u64,
    /// Recent request rate.
    pub requests_per_s: f64,
    /// Client connections open across children.
    pub connections: u64,
    /// LB listener addresses.
    pub listeners: Vec<String>,
    /// LB children.
    pub children: Vec<ChildStatus>,
    /// Workers, by port.
    pub workers: Vec<WorkerStatus>,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Error of the last rejected reload, if the last reload was rejected.
    pub last_reload_error: Option<String>,
    /// Autoscaler status (`enabled: false` when off).
    pub autoscale: Option<serde_json::Value>,
    /// The last 200 logged supervisor events, oldest first.
    #[serde(default)]
    pub events: Vec<super::events::Event>,
    /// One point per second for the last 10 minutes.
    #[serde(default)]
    pub history: super::history::Series,
}

/// One LB child in `/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChildStatus {
    /// `lb.<i>`.
    pub name: String,
    /// Its pid.
    pub pid: i32,
    /// The listener it serves.
    pub listener: String,
    /// `running` or `draining`.
    pub state: String,
    /// Client connections open (latest report).
    pub connections: u64,
    /// Requests waiting for a worker slot (latest report).
    #[serde(default)]
    pub queued: u64,
    /// Seconds since fork.
    pub uptime_s: u64,
}

/// One worker in `/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker id (container short id, or `local-<port>`); empty before it has one.
    pub id: String,
    /// Its port.
    pub port: u16,
    /// Process runtime: the worker's pid.
    pub pid: Option<u32>,
    /// Docker runtime: the full container id.
    pub container: Option<String>,
    /// `ip:port` the LB children use.
    pub address: String,
    /// `pending`, `starting`, `probing`, `active`, `draining`, `stopping`, `removing`.
    pub state: String,
    /// `healthy`, `unhealthy` or `unknown` (the children's view; the supervisor's own probe
    /// before it joined).
    pub health: String,
    /// Requests in flight now, across children.
    pub in_flight: u64,
    /// Responses by class (`2xx`...).
    pub responses: BTreeMap<String, u64>,
    /// All responses.
    pub requests: u64,
    /// Passive failures seen by the children.
    pub failures: u64,
    /// Responses per second over the last ~10 s.
    #[serde(default)]
    pub requests_per_s: f64,
    /// Share of 5xx among the responses of the last ~10 s (null without responses).
    #[serde(default)]
    pub share_5xx: Option<f64>,
    /// Latency median over the last ~10 s, ms (null without responses).
    #[serde(default)]
    pub latency_p50_ms: Option<f64>,
    /// Latency 99th percentile over the last ~10 s, ms (null without responses).
    #[serde(default)]
    pub latency_p99_ms: Option<f64>,
    /// Times this port's worker was replaced after dying or failing to start.
    pub restarts: u64,
    /// The last start error, if any.
    pub last_error: Option<String>,
}

/// Resolves where the admin endpoint is: `--admin ADDR` (`host:port` or a port), else the
/// config's admin-address/admin-port, else 127.0.0.1:8404.
fn admin_addr(config: Option<PathBuf>, admin: Option<String>) -> Result<SocketAddr, String> {
    if let Some(a) = admin {
        if let Ok(port) = a.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        return a
            .to_socket_addrs()
            .map_err(|e| format!("--admin {a}: {e}"))?
            .next()
            .ok_or_else(|| format!("--admin {a}: no address"));
    }
    let path = crate::config::default_path(config);
    match crate::config::load(&path) {
        Ok(cfg) => Ok(SocketAddr::new(cfg.admin_address, cfg.admin_port)),
        Err(e) => Err(e.to_string()),
    }
}

/// Fetches `/status` (blocking, bounded).
pub fn fetch(addr: SocketAddr) -> Result<Status, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{addr}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr}: incomplete answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or("no status line")
        ));
    }
    serde_json::from_slice(&raw[split + 4..]).map_err(|e| format!("{addr}: bad /status: {e}"))
}

/// Renders the readable table of `goloadbalancer status`.
pub fn render_table(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "goloadbalancer {} {} ({}), pid {}, up {}s, runtime {}\n",
        s.version, s.instance, s.state, s.pid, s.uptime_s, s.runtime
    ));
    out.push_str(&format!(
        "workers {}/{} healthy, {:.1} req/s, {} requests, {} connections, {} reloads\n",
        s.workers_actual,
        s.workers_desired,
        s.requests_per_s,
        s.requests_total,
        s.connections,
        s.reloads
    ));
    if let Some(e) = &s.last_reload_error {
        out.push_str(&format!("last reload rejected: {e}\n"));
    }
    if let Some(a) = &s.autoscale
        && a.get("enabled").and_then(|e| e.as_bool()) == Some(true)
    {
        let g = |k: &str| {
            a.get(k)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        };
        out.push_str(&format!(
            "autoscale: desired {} (min {}, max {}), in-flight/worker {} (target {}), p90 {} ms, region {}\n",
            g("desired"), g("min"), g("max"), g("inflight_per_worker"), g("target_inflight"), g("p90_ms"), g("region")
        ));
    }
    out.push_str("\nLB CHILD  PID      LISTENER               STATE     CONNS  UPTIME\n");
    for c in &s.children {
        out.push_str(&format!(
            "{:<9} {:<8} {:<22} {:<9} {:<6} {}s\n",
            c.name, c.pid, c.listener, c.state, c.connections, c.uptime_s
        ));
    }
    out.push_str(
        "\nWORKER        ADDRESS                STATE     HEALTH     IN-FLIGHT  REQUESTS  2XX       5XX       FAILURES  RESTARTS\n",
    );
    for w in &s.workers {
        let class = |k: &str| w.responses.get(k).copied().unwrap_or(0);
        out.push_str(&format!(
            "{:<13} {:<22} {:<9} {:<10} {:<10} {:<9} {:<9} {:<9} {:<9} {}\n",
            if w.id.is_empty() { "-" } else { &w.id },
            w.address,
            w.state,
            w.health,
            w.in_flight,
            w.requests,
            class("2xx"),
            class("5xx"),
            w.failures,
            w.restarts
        ));
        if let Some(e) = &w.last_error {
            out.push_str(&format!("              last error: {e}\n"));
        }
    }
    out
}

/// `goloadbalancer status`: 0 when the supervisor answered, 1 when it is not running.
/// `watch`: redraw every second (see [`watch`]).
pub fn status_cmd(config: Option<PathBuf>, admin: Option<String>, json: bool, watch: bool) -> i32 {
    let addr = match admin_addr(config, admin) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("goloadbalancer status: {e}");
            return 2;
        }
    };
    let status = match fetch(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("goloadbalancer status: not running ({e})");
            return 1;
        }
    };
    if watch {
        return self::watch(addr, status, json);
    }
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("goloadbalancer status: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", render_table(&status));
    }
    0
}

/// How long `status --watch` rides through an instance that does not answer (a restart)
/// before it gives up with exit code 1.
const WATCH_GIVE_UP: Duration = Duration::from_secs(10);

/// `status --watch`: the table again every second until Ctrl-C (the screen cleared with ANSI
/// when stdout is a terminal; tables one after the other when it is not), or with `json` one
/// compact document per line. While the instance does not answer, the last table stays with
/// a line saying since when; after [`WATCH_GIVE_UP`] of silence it exits 1.
fn watch(addr: SocketAddr, first: Status, json: bool) -> i32 {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut last = first;
    let mut silent_since: Option<(std::time::Instant, String)> = None;
    loop {
        let mut frame = String::new();
        if json {
            frame.push_str(&serde_json::to_string(&last).unwrap_or_default());
            frame.push('\n');
        } else {
            if tty {
                // Cursor home, clear screen.
                frame.push_str("\x1b[H\x1b[2J");
            }
            frame.push_str(&render_table(&last));
            match &silent_since {
                Some((_, e)) => frame.push_str(&format!("\nNOT ANSWERING ({e}); retrying\n")),
                None => frame.push_str(&format!(
                    "\n{addr} at {} UTC, every 1 s; Ctrl-C to stop\n",
                    clock_utc()
                )),
            }
            if !tty {
                frame.push('\n');
            }
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(frame.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            // The reader went away (a closed pipe): nothing left to show.
            return 0;
        }
        drop(out);
        std::thread::sleep(Duration::from_secs(1));
        match fetch(addr) {
            Ok(s) => {
                last = s;
                silent_since = None;
            }
            Err(e) => {
                let since = silent_since
                    .as_ref()
                    .map_or_else(std::time::Instant::now, |s| s.0);
                if since.elapsed() >= WATCH_GIVE_UP {
                    eprintln!("goloadbalancer status: stopped answering ({e})");
                    return 1;
                }
                silent_since = Some((since, e));
            }
        }
    }
}

/// Wall-clock time of day, `HH:MM:SS`, UTC.
fn clock_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
