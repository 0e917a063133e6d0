//! The configuration schema: one table per section of config.yaml (top level, load-balancer
//! settings, `autoscale:`). A row gives the key, its field, type and default, its doc line, how
//! it is read from YAML and its range rule; `section!` (in `table.rs`) derives the struct, its
//! `Default` and its key list from the row. Adding a key is adding a row here, plus its line in
//! the README's tables and in config.yaml.
//!
//! Rules between keys (port ranges, autoscale bounds) are in `rules.rs`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::node::Node;
use super::table::{MAX_TIMEOUT_MS, any_value, between, port, require, section, timeout};

/// Most LB children.
pub const MAX_POOL: u64 = 1024;
/// Most workers (`worker`, `autoscale.min`, `autoscale.max`).
pub const MAX_WORKERS: u64 = 10_000;
/// Longest mean delay of /api/v1/hello (one hour).
pub const MAX_AVG_DELAY_MS: u64 = 3_600_000;

/// How LB children forward: HTTP/1.1 reverse proxy or plain TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Http,
    Tcp,
}

/// How a backend is chosen for each request (HTTP) or connection (TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    RoundRobin,
    Weighted,
    LeastConnections,
}

/// Where workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    Auto,
    Docker,
    Process,
    /// Docker Swarm service tasks (never chosen by `auto`).
    Swarm,
}

/// Which requests get an access-log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLogMode {
    /// None.
    Off,
    /// 4xx and 5xx answers and exchanges that ended early.
    Errors,
    /// Every request (sampled with `access-log-sample`).
    All,
}

/// How a backend's active health check is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheckMode {
    /// `http` for `run`'s own workers; for the standalone `proxy`, `tcp` unless a health path
    /// is given (any server passes a connect; not every server has a `/healthz`).
    Auto,
    /// `GET health-path`; a 2xx or 3xx final status passes.
    Http,
    /// A TCP connect that completes passes.
    Tcp,
}

const HEALTH_CHECKS: &[(&str, HealthCheckMode)] = &[
    ("auto", HealthCheckMode::Auto),
    ("http", HealthCheckMode::Http),
    ("tcp", HealthCheckMode::Tcp),
];

/// How an access-log line is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLogFormat {
    /// `key=value`, as every other log line.
    KeyValue,
    /// One JSON object per line.
    Json,
}

const ACCESS_LOG_MODES: &[(&str, AccessLogMode)] = &[
    ("off", AccessLogMode::Off),
    ("errors", AccessLogMode::Errors),
    ("all", AccessLogMode::All),
];
const ACCESS_LOG_FORMATS: &[(&str, AccessLogFormat)] = &[
    ("key-value", AccessLogFormat::KeyValue),
    ("json", AccessLogFormat::Json),
];

const MODES: &[(&str, Mode)] = &[("http", Mode::Http), ("tcp", Mode::Tcp)];
const BALANCES: &[(&str, Balance)] = &[
    ("round-robin", Balance::RoundRobin),
    ("weighted", Balance::Weighted),
    ("least-connections", Balance::LeastConnections),
];
const RUNTIMES: &[(&str, RuntimeKind)] = &[
    ("auto", RuntimeKind::Auto),
    ("docker", RuntimeKind::Docker),
    ("process", RuntimeKind::Process),
    ("swarm", RuntimeKind::Swarm),
];

section! {
    /// The whole configuration file. The seven keys of the original GoLoadBalancer come
    /// first, with its values as defaults.
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub struct Config {
        /// Workers to start (with autoscale: the start count).
        "worker" => worker: usize = 3, read Node::uint_as, rule between::<1, MAX_WORKERS, _>;
        /// LB children to fork.
        "pool" => pool: usize = 2, read Node::uint_as, rule between::<1, MAX_POOL, _>;
        /// The SQLite stats database file (a file path, not a directory: the key keeps the original's name).
        "stats-dir" => stats_dir: PathBuf = PathBuf::from("worker-stats.db"),
            read |v| v.string().map(PathBuf::from), rule file_path;
        /// Mean delay of /api/v1/hello in ms.
        "avg-delay" => avg_delay: u64 = 500,
            read Node::uint, rule between::<0, MAX_AVG_DELAY_MS, _>;
        /// Failure rate of /api/v1/hello in percent, 0-100.
        "failure" => failure: f64 = 12.0, read Node::float, rule percent;
        /// First LB port; LB i listens on port+i.
        "load-balancer-port" => load_balancer_port: u16 = 5050,
            read port, rule between::<1, 65535, _>;
        /// First worker port; worker i on port+i.
        "worker-port" => worker_port: u16 = 6000, read port, rule between::<1, 65535, _>;
        /// Name of this deployment, used in container names and labels.
        "instance" => instance: String = "goloadbalancer".to_string(),
            read Node::string, rule container_name;
        /// Address the LB ports bind to.
        "listen-address" => listen_address: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            read Node::ip, rule any_value;
        /// Address workers listen on / docker publishes on.
        "worker-address" => worker_address: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST),
            read Node::ip, rule any_value;
        /// All LB children accept on the single port `load-balancer-port`.
        "shared-port" => shared_port: bool = false, read Node::boolean, rule any_value;
        /// Where workers run: `auto`, `docker`, `process`, `swarm`.
        "runtime" => runtime: RuntimeKind = RuntimeKind::Auto,
            read |v| v.one_of(RUNTIMES), rule any_value;
        /// Admin HTTP address.
        "admin-address" => admin_address: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST),
            read Node::ip, rule any_value;
        /// Admin HTTP port.
        "admin-port" => admin_port: u16 = 8404, read port, rule between::<1, 65535, _>;
        /// Time in-flight requests get to finish on stop or drain.
        "drain-timeout-ms" => drain_timeout_ms: u64 = 30_000, read Node::uint, rule timeout;
        /// Time a new worker gets to pass its first health check.
        "worker-start-timeout-ms" => worker_start_timeout_ms: u64 = 30_000,
            read Node::uint, rule timeout;
        /// The unprivileged user LB children (and, with a directory of their own, worker
        /// containers) run as when the supervisor runs as root.
        "user" => user: String = "nobody".to_string(), read Node::string, rule existing_user;
        /// Most processes and threads in one worker container (`docker run --pids-limit`).
        "worker-pids-limit" => worker_pids_limit: u64 = 256,
            read Node::uint, rule between::<8, 1_000_000, _>;
        /// Memory of one worker container in MiB (`docker run --memory`, no swap).
        "worker-memory-mb" => worker_memory_mb: u64 = 256,
            read Node::uint, rule between::<16, 1_048_576, _>;
    }
    nested {
        /// The LB loop's settings (flattened: the keys sit at the top level of config.yaml).
        #[serde(flatten)]
        proxy: ProxySettings,
        /// The autoscaler (`autoscale:` block).
        autoscale: Autoscale,
        /// Docker Swarm (`swarm:` block, with `runtime: swarm`).
        swarm: Swarm,
    }
}

section! {
    /// Settings of one LB loop: everything it needs besides its listener and backend set.
    /// Sent as-is over the control channel, so it stays plain data.
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct ProxySettings {
        /// `http` (HTTP/1.1 reverse proxy) or `tcp` (plain TCP forwarding).
        "mode" => mode: Mode = Mode::Http, read |v| v.one_of(MODES), rule any_value;
        /// `round-robin`, `weighted`, `least-connections`.
        "balance" => balance: Balance = Balance::RoundRobin,
            read |v| v.one_of(BALANCES), rule any_value;
        /// Client connections one LB loop holds at most; at the limit it stops accepting.
        "max-connections" => max_connections: usize = 10_000,
            read Node::uint_as, rule between::<1, 1_000_000, _>;
        /// Time allowed for a client to send a complete request head, then 408.
        "header-timeout-ms" => header_timeout_ms: u64 = 10_000, read Node::uint, rule timeout;
        /// Idle keep-alive client connection is closed after this.
        "idle-timeout-ms" => idle_timeout_ms: u64 = 60_000, read Node::uint, rule timeout;
        /// Upstream connect deadline.
        "connect-timeout-ms" => connect_timeout_ms: u64 = 2_000, read Node::uint, rule timeout;
        /// Deadline for the upstream's response head, and between upstream reads; 504.
        "response-timeout-ms" => response_timeout_ms: u64 = 30_000,
            read Node::uint, rule timeout;
        /// A tunnel (upgrade or TCP mode) with no traffic either way is closed after this.
        "tunnel-timeout-ms" => tunnel_timeout_ms: u64 = 3_600_000,
            read Node::uint, rule timeout;
        /// Access log: `off`, `errors` (4xx/5xx and exchanges ended early) or `all`.
        "access-log" => access_log: AccessLogMode = AccessLogMode::Errors,
            read |v| v.one_of(ACCESS_LOG_MODES), rule any_value;
        /// Access-log lines as `key-value` (like every log line) or `json`.
        "access-log-format" => access_log_format: AccessLogFormat = AccessLogFormat::KeyValue,
            read |v| v.one_of(ACCESS_LOG_FORMATS), rule any_value;
        /// With `access-log: all`, one successful request in this many gets a line.
        "access-log-sample" => access_log_sample: u32 = 1,
            read Node::uint_as, rule between::<1, 1_000_000, _>;
        /// Append access-log lines to this file (reopened on SIGUSR1); empty: stderr/journal.
        "access-log-path" => access_log_path: PathBuf = PathBuf::new(),
            read |v| v.string().map(PathBuf::from), rule log_path;
        /// Longest request line accepted, else 414.
        "max-request-line" => max_request_line: usize = 8192,
            read Node::uint_as, rule between::<16, { 1 << 20 }, _>;
        /// Largest request head accepted, request line included, else 431; also the largest
        /// backend response head, else 502.
        "max-header-bytes" => max_header_bytes: usize = 32_768,
            read Node::uint_as, rule between::<64, { 1 << 20 }, _>;
        /// Most header fields accepted, else 431.
        "max-headers" => max_headers: usize = 100,
            read Node::uint_as, rule between::<1, 1024, _>;
        /// Largest request body accepted, 0 = unlimited, else 413.
        "max-body-bytes" => max_body_bytes: u64 = 0, read Node::uint, rule any_value;
        /// Further backends tried after a connect failure.
        "retries" => retries: u32 = 2, read Node::uint_as, rule between::<0, 100, _>;
        /// Idle keep-alive upstream connections kept per backend.
        "upstream-pool-size" => upstream_pool_size: usize = 256,
            read Node::uint_as, rule between::<0, 100_000, _>;
        /// Active health check: `auto`, `http` (GET health-path, 2xx/3xx pass) or `tcp`.
        "health-check" => health_check: HealthCheckMode = HealthCheckMode::Auto,
            read |v| v.one_of(HEALTH_CHECKS), rule any_value;
        /// Active health check request path.
        "health-path" => health_path: String = "/healthz".to_string(),
            read Node::string, rule request_path;
        /// Active health check period.
        "health-interval-ms" => health_interval_ms: u64 = 5_000, read Node::uint, rule timeout;
        /// Active health check deadline.
        "health-timeout-ms" => health_timeout_ms: u64 = 1_000, read Node::uint, rule timeout;
        /// Consecutive successes to mark a backend up.
        "health-rise" => health_rise: u32 = 2, read Node::uint_as, rule between::<1, 1000, _>;
        /// Consecutive failures to mark a backend down.
        "health-fall" => health_fall: u32 = 3, read Node::uint_as, rule between::<1, 1000, _>;
        // Traffic management (issue 13): limits, queue, slow start, ejection, retry budget,
        // and the data-path bounds from its review. Compact types (u32 counts, Box<str>).
        /// Requests one worker holds at once, 0 = unlimited; beyond it requests wait in the queue.
        "max-conn-per-worker" => max_conn_per_worker: u32 = 0,
            read Node::uint_as, rule between::<0, 1_000_000, _>;
        /// Requests that may wait for a worker slot per LB child; beyond it 503 with Retry-After.
        "queue-size" => queue_size: u32 = 1024,
            read Node::uint_as, rule between::<0, 1_000_000, _>;
        /// Longest wait in the queue, then 503 with Retry-After.
        "queue-timeout-ms" => queue_timeout_ms: u64 = 5_000, read Node::uint, rule timeout;
        /// With no worker up, requests wait in the queue (and ask for a worker) instead of 503 at once; `run` sets it with autoscale.min 0.
        "hold-when-no-worker" => hold_when_no_worker: bool = false,
            read Node::boolean, rule any_value;
        /// A worker turning healthy ramps from 10% to its full share over this, 0 = off.
        "slow-start-ms" => slow_start_ms: u64 = 0,
            read Node::uint, rule between::<0, MAX_TIMEOUT_MS, _>;
        /// Consecutive 5xx answers that eject a worker, 0 = off.
        "eject-consecutive-5xx" => eject_consecutive_5xx: u32 = 0,
            read Node::uint_as, rule between::<0, 1000, _>;
        /// Length of a first ejection; doubled on each repeat (at most 300 s).
        "eject-ms" => eject_ms: u64 = 30_000, read Node::uint, rule timeout;
        /// Most workers ejected at once, in percent of the set (rounded down).
        "max-ejection-percent" => max_ejection_percent: u32 = 50,
            read Node::uint_as, rule between::<0, 100, _>;
        /// Retries allowed, in percent of the last 10 s of requests (plus 10 a second).
        "retry-budget-percent" => retry_budget_percent: u32 = 20,
            read Node::uint_as, rule between::<0, 100, _>;
        /// Whole-request-body deadline from the end of the head, then 408.
        "body-timeout-ms" => body_timeout_ms: u64 = 60_000, read Node::uint, rule timeout;
        /// `Upgrade` protocols tunnelled after a 101, comma-separated; empty = none.
        "allowed-upgrades" => allowed_upgrades: Box<str> = "websocket".into(),
            read |v| v.string().map(String::into_boxed_str), rule upgrade_list;
        /// Most 1xx interim responses forwarded for one request, then 502.
        "max-interim-responses" => max_interim_responses: u32 = 8,
            read Node::uint_as, rule between::<1, 1000, _>;
    }
}

section! {
    /// Autoscaler settings (`autoscale:` block).
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Autoscale {
        /// When on, the worker count follows load between `min` and `max`; `worker` is the start count.
        "enabled" => enabled: bool = false, read Node::boolean, rule any_value;
        /// Fewest workers; 0 lets the last worker go after `idle-ms` without a request.
        "min" => min: usize = 1, read Node::uint_as, rule between::<0, MAX_WORKERS, _>;
        /// Most workers.
        "max" => max: usize = 10, read Node::uint_as, rule between::<1, MAX_WORKERS, _>;
        /// Target in-flight requests per worker.
        "target-inflight" => target_inflight: f64 = 50.0, read Node::float, rule positive_target;
        /// Optional p90 latency target in ms, 0 = not used.
        "target-p90-ms" => target_p90_ms: u64 = 0,
            read Node::uint, rule between::<0, MAX_TIMEOUT_MS, _>;
        /// How long a breach must last before acting.
        "breach-ms" => breach_ms: u64 = 3_000,
            read Node::uint, rule between::<0, MAX_TIMEOUT_MS, _>;
        /// Minimum time between two scaling actions.
        "cooldown-ms" => cooldown_ms: u64 = 10_000,
            read Node::uint, rule between::<0, MAX_TIMEOUT_MS, _>;
        /// Workers added or removed per action.
        "step" => step: usize = 1, read Node::uint_as, rule between::<1, MAX_WORKERS, _>;
        /// With `min: 0`: no request for this long stops the last worker.
        "idle-ms" => idle_ms: u64 = 30_000,
            read Node::uint, rule between::<100, MAX_TIMEOUT_MS, _>;
    }
}

section! {
    /// Docker Swarm settings (`swarm:` block; read with `runtime: swarm`).
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Swarm {
        /// Name of the worker service; empty: `<instance>-workers`.
        "service" => service: String = String::new(), read Node::string, rule service_name;
        /// Placement constraints, comma-separated (`node.role==worker`), each a `--constraint`.
        "constraints" => constraints: String = String::new(),
            read Node::string, rule constraint_list;
        /// Worker image every node pulls (a registry reference); empty: the locally built
        /// worker image, which every node must already have.
        "image" => image: String = String::new(), read Node::string, rule image_reference;
    }
}

/// Rule of `swarm.service`: empty, or docker's service name alphabet.
#[allow(clippy::ptr_arg)] // a table rule takes a reference to the field's own type
fn service_name(s: &String) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let ok = s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    require(ok, || {
        format!(
            "must be 1-63 letters, digits, '-' or '_', starting with a letter or digit (it names the swarm service), got {s:?}"
        )
    })
}

/// Rule of `swarm.constraints`: comma-separated `attribute==value` or `attribute!=value`.
#[allow(clippy::ptr_arg)] // a table rule takes a reference to the field's own type
fn constraint_list(s: &String) -> Result<(), String> {
    for c in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let ok = (c.contains("==") || c.contains("!=")) && !c.chars().any(char::is_control);
        require(ok, || {
            format!(
                "each constraint must read `attribute==value` or `attribute!=value` (e.g. node.role==worker), got {c:?}"
            )
        })?;
    }
    Ok(())
}

/// Rule of `swarm.image`: empty, or an image reference without spaces.
#[allow(clippy::ptr_arg)] // a table rule takes a reference to the field's own type
fn image_reference(s: &String) -> Result<(), String> {
    let ok = s.is_empty()
        || (s.len() <= 255 && !s.starts_with('-') && s.bytes().all(|b| b.is_ascii_graphic()));
    require(ok, || {
        format!(
            "must be an image reference like registry.example/goloadbalancer-worker:1.2, got {s:?}"
        )
    })
}

/// Rule of `stats-dir`: a usable file path, and (when absolute; a relative one is checked at
/// start, against the working directory) not directly in `/` or a system directory: worker
/// containers bind-mount its directory.
#[allow(clippy::ptr_arg)] // a table rule takes a reference to the field's own type
fn file_path(p: &PathBuf) -> Result<(), String> {
    let bytes = p.as_os_str().as_encoded_bytes();
    require(!bytes.is_empty() && !bytes.contains(&0), || {
        "must be a file path, got an empty string".to_string()
    })?;
    match p.parent() {
        Some(dir) if p.is_absolute() => crate::sys::privilege::check_database_dir(dir),
        _ => Ok(()),
    }
}

/// Rule of `access-log-path`: empty (stderr) or an absolute or relative file path.
#[allow(clippy::ptr_arg)] // a table rule takes a reference to the field's own type
fn log_path(p: &PathBuf) -> Result<(), String> {
    let bytes = p.as_os_str().as_encoded_bytes();
    require(!bytes.contains(&0) && !bytes.ends_with(b"/"), || {
        format!("must be a file path, got {}", p.display())
    })
}

/// Rule of `user`: an unprivileged account in /etc/passwd.
#[allow(clippy::ptr_arg)] // a table rule takes a reference to the field's own type
fn existing_user(name: &String) -> Result<(), String> {
    crate::sys::privilege::lookup_user(name).map(|_| ())
}

/// Rule of `failure`: a percentage.
fn percent(v: &f64) -> Result<(), String> {
    require((0.0..=100.0).contains(v), || {
        format!("must be between 0 and 100, got {v}")
    })
}

/// Rule of `instance`: it names containers, so docker's name alphabet.
fn container_name(s: &String) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    require(ok, || {
        format!(
            "must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit (it names containers), got {s:?}"
        )
    })
}

/// Rule of `health-path`: a request target that fits on a request line.
fn request_path(path: &String) -> Result<(), String> {
    let ok = path.starts_with('/')
        && path.len() <= 1024
        && path.bytes().all(|b| (0x21..=0x7e).contains(&b));
    require(ok, || {
        format!(
            "must be a path starting with / without spaces or control characters (at most 1024 bytes), got {path:?}"
        )
    })
}

/// Rule of `allowed-upgrades`: protocol names (RFC 9110 tokens, an optional `/version`)
/// separated by commas, or nothing at all.
fn upgrade_list<S: AsRef<str> + ?Sized>(list: &S) -> Result<(), String> {
    let list = list.as_ref();
    use crate::http::fields::{is_token, trim_ows};
    let protocol = |item: &[u8]| {
        let item = trim_ows(item);
        let mut parts = item.splitn(2, |&b| b == b'/');
        parts.all(is_token)
    };
    let ok = list.len() <= 1024
        && (list.trim().is_empty() || list.as_bytes().split(|&b| b == b',').all(protocol));
    require(ok, || {
        format!(
            "must be protocol names separated by commas, like \"websocket,h2c\" (empty: none), got {list:?}"
        )
    })
}

/// Rule of `autoscale.target-inflight`: a positive finite number.
fn positive_target(v: &f64) -> Result<(), String> {
    require(v.is_finite() && *v > 0.0 && *v <= 1e9, || {
        format!("must be a number above 0 (at most 1000000000), got {v}")
    })
}

impl ProxySettings {
    /// Whether `allowed-upgrades` lets `protocol` (one item of a request's `Upgrade` list,
    /// `name[/version]`) be tunnelled: its name is listed (ASCII case-insensitive) with no
    /// version, or with the same version.
    pub fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        fn name(p: &[u8]) -> &[u8] {
            p.split(|&b| b == b'/').next().unwrap_or(p)
        }
        let protocol = crate::http::fields::trim_ows(protocol);
        crate::http::fields::list_items(self.allowed_upgrades.as_bytes()).any(|allowed| {
            allowed.eq_ignore_ascii_case(protocol)
                || (!allowed.contains(&b'/') && allowed.eq_ignore_ascii_case(name(protocol)))
        })
    }
}

impl Config {
    /// Most workers that can exist at once: `worker`, or `autoscale.max` when autoscaling
    /// may go above it. Worker i listens on `worker-port + i`.
    pub fn worker_slots(&self) -> usize {
        if self.autoscale.enabled {
            self.worker.max(self.autoscale.max)
        } else {
            self.worker
        }
    }

    /// First and last LB port (inclusive; one port with `shared-port`).
    pub fn lb_ports(&self) -> (u32, u32) {
        let n = if self.shared_port {
            1
        } else {
            u32::try_from(self.pool.max(1)).unwrap_or(u32::MAX)
        };
        let first = u32::from(self.load_balancer_port);
        (first, first.saturating_add(n - 1))
    }

    /// The LB listener addresses, in LB index order (one with `shared-port`).
    pub fn lb_addresses(&self) -> Vec<std::net::SocketAddr> {
        let (first, last) = self.lb_ports();
        (first..=last)
            .filter_map(|p| u16::try_from(p).ok())
            .map(|p| std::net::SocketAddr::new(self.listen_address, p))
            .collect()
    }

    /// Every address the supervisor listens on: the LB listeners, then the admin endpoint
    /// (what a systemd socket unit must list, `check-config --listen-addresses`).
    pub fn listen_addresses(&self) -> Vec<std::net::SocketAddr> {
        let mut all = self.lb_addresses();
        all.push(std::net::SocketAddr::new(
            self.admin_address,
            self.admin_port,
        ));
        all
    }

    /// First and last port a worker may take (inclusive).
    pub fn worker_ports(&self) -> (u32, u32) {
        let n = u32::try_from(self.worker_slots().max(1)).unwrap_or(u32::MAX);
        let first = u32::from(self.worker_port);
        (first, first.saturating_add(n - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::table::Section;

    fn names<S: Section>() -> Vec<&'static str> {
        S::names().collect()
    }

    #[test]
    fn check_config_prints_the_table_keys_in_table_order() {
        let printed = |v: serde_yaml_ng::Value| -> Vec<String> {
            let map = v.as_mapping().unwrap().clone();
            map.keys()
                .map(|k| k.as_str().unwrap().to_string())
                .collect()
        };
        let mut top = names::<Config>();
        top.extend(names::<ProxySettings>());
        top.push("autoscale");
        top.push("swarm");
        assert_eq!(
            printed(serde_yaml_ng::to_value(Config::default()).unwrap()),
            top
        );
        assert_eq!(
            printed(serde_yaml_ng::to_value(Autoscale::default()).unwrap()),
            names::<Autoscale>()
        );
    }

    #[test]
    fn key_names_are_unique_and_kebab_case() {
        let mut top = names::<Config>();
        top.extend(names::<ProxySettings>());
        top.push("autoscale");
        for list in [top, names::<Autoscale>()] {
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "a key twice in {list:?}");
            for k in list {
                assert!(
                    k.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{k}"
                );
            }
        }
    }

    /// The first key whose own rule rejects the section's value.
    fn rejected<S: Section>(s: &S) -> Option<&'static str> {
        S::KEYS
            .iter()
            .find(|k| (k.check)(s).is_err())
            .map(|k| k.name)
    }

    #[test]
    fn every_default_passes_its_own_rule() {
        assert_eq!(rejected(&Config::default()), None);
        assert_eq!(rejected(&ProxySettings::default()), None);
        assert_eq!(rejected(&Autoscale::default()), None);
    }

    #[test]
    fn rules_reject_out_of_range_values() {
        // A rule can fail: one broken value per kind of rule.
        let c = Config {
            pool: 0,
            ..Config::default()
        };
        assert_eq!(rejected(&c), Some("pool"));
        let p = ProxySettings {
            idle_timeout_ms: MAX_TIMEOUT_MS + 1,
            ..ProxySettings::default()
        };
        assert_eq!(rejected(&p), Some("idle-timeout-ms"));
        let a = Autoscale {
            target_inflight: f64::INFINITY,
            ..Autoscale::default()
        };
        assert_eq!(rejected(&a), Some("target-inflight"));
    }

    #[test]
    fn allowed_upgrades_list() {
        let p = ProxySettings::default();
        assert!(p.allows_upgrade(b"websocket"));
        assert!(p.allows_upgrade(b" WebSocket "));
        assert!(p.allows_upgrade(b"websocket/13"));
        assert!(!p.allows_upgrade(b"h2c"));
        assert!(!p.allows_upgrade(b""));
        let p = ProxySettings {
            allowed_upgrades: "websocket, foo/2".into(),
            ..ProxySettings::default()
        };
        assert!(p.allows_upgrade(b"FOO/2"));
        assert!(!p.allows_upgrade(b"foo/3"));
        assert!(!p.allows_upgrade(b"foo"));
        let none = ProxySettings {
            allowed_upgrades: "".into(),
            ..ProxySettings::default()
        };
        assert!(!none.allows_upgrade(b"websocket"));
        for ok in ["", "websocket", "websocket,h2c", " h2c , websocket/13 "] {
            assert_eq!(upgrade_list(ok), Ok(()), "{ok:?}");
        }
        for bad in ["web socket", "websocket,,h2c", "a/b/c", "/1", "x\u{1}"] {
            assert!(upgrade_list(bad).is_err(), "{bad:?}");
        }
    }

    /// Whether config.yaml has a line setting `key` (commented out or not) at `indent`.
    fn documented(reference: &str, indent: &str, key: &str) -> bool {
        reference.lines().any(|l| {
            let l = l.strip_prefix('#').unwrap_or(l);
            let l = l.strip_prefix(' ').unwrap_or(l);
            l.strip_prefix(indent)
                .and_then(|l| l.strip_prefix(key))
                .is_some_and(|rest| rest.starts_with(':'))
        })
    }

    #[test]
    fn every_key_is_in_the_shipped_config_yaml() {
        let reference = include_str!("../../config.yaml");
        for k in names::<Config>()
            .into_iter()
            .chain(names::<ProxySettings>())
        {
            assert!(documented(reference, "", k), "config.yaml lacks {k}");
        }
        assert!(documented(reference, "", "autoscale"));
        for k in names::<Autoscale>() {
            assert!(
                documented(reference, "  ", k),
                "config.yaml lacks autoscale {k}"
            );
        }
    }
}
