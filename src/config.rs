//! config.yaml: schema, defaults, validation with messages naming file, line and key.
//!
//! YAML keys are the field names in kebab-case (`max_connections` <-> `max-connections`).
//! Loading is three steps: parse into a tree that keeps every entry (`node`), read each key
//! into the structs with type checks (this file), then check value rules (`rules`). Any
//! failure becomes one `ConfigError` whose line is found by asking the YAML parser where the
//! key is (`node::key_line`).

mod node;
mod rules;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use node::Node;

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
}

/// Settings of one LB loop: everything it needs besides its listener and backend set.
/// Sent as-is over the control channel, so it stays plain data.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProxySettings {
    /// `http` (default) or `tcp`.
    pub mode: Mode,
    /// `round-robin` (default), `weighted`, `least-connections`.
    pub balance: Balance,
    /// Client connections one LB loop holds at most (default 10000); at the limit it stops
    /// accepting and the kernel queues.
    pub max_connections: usize,
    /// Time allowed for a client to send a complete request head (default 10000), then 408.
    pub header_timeout_ms: u64,
    /// Idle keep-alive client connection is closed after this (default 60000).
    pub idle_timeout_ms: u64,
    /// Upstream connect deadline (default 2000).
    pub connect_timeout_ms: u64,
    /// Deadline for the upstream's response head, and between upstream reads (default 30000); 504.
    pub response_timeout_ms: u64,
    /// A tunnel (upgrade or TCP mode) with no traffic either way is closed after this (default 3600000).
    pub tunnel_timeout_ms: u64,
    /// Longest request line accepted (default 8192), else 414.
    pub max_request_line: usize,
    /// Largest request head accepted, request line included (default 32768), else 431.
    pub max_header_bytes: usize,
    /// Most header fields accepted (default 100), else 431.
    pub max_headers: usize,
    /// Largest request body accepted, 0 = unlimited (default 0), else 413.
    pub max_body_bytes: u64,
    /// Further backends tried after a connect failure (default 2).
    pub retries: u32,
    /// Idle keep-alive upstream connections kept per backend (default 256).
    pub upstream_pool_size: usize,
    /// Active health check request path (default /healthz).
    pub health_path: String,
    /// Active health check period (default 5000).
    pub health_interval_ms: u64,
    /// Active health check deadline (default 1000).
    pub health_timeout_ms: u64,
    /// Consecutive successes to mark a backend up (default 2).
    pub health_rise: u32,
    /// Consecutive failures to mark a backend down (default 3).
    pub health_fall: u32,
}

/// Autoscaler settings (`autoscale:` block).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Autoscale {
    /// Off by default; when on, `worker` is the start count.
    pub enabled: bool,
    /// Fewest workers (default 1).
    pub min: usize,
    /// Most workers (default 10).
    pub max: usize,
    /// Target in-flight requests per worker (default 50).
    pub target_inflight: f64,
    /// Optional p90 latency target in ms (default 0 = not used).
    pub target_p90_ms: u64,
    /// How long a breach must last before acting (default 3000).
    pub breach_ms: u64,
    /// Minimum time between two scaling actions (default 10000).
    pub cooldown_ms: u64,
    /// Workers added or removed per action (default 1).
    pub step: usize,
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// Workers to start (`worker`).
    pub worker: usize,
    /// LB children to fork (`pool`).
    pub pool: usize,
    /// The SQLite stats database file (`stats-dir`, name kept from the seed).
    pub stats_dir: PathBuf,
    /// Mean delay of /api/v1/hello in ms (`avg-delay`).
    pub avg_delay: u64,
    /// Failure rate of /api/v1/hello in percent, 0-100 (`failure`).
    pub failure: f64,
    /// First LB port; LB i listens on port+i (`load-balancer-port`).
    pub load_balancer_port: u16,
    /// First worker port; worker i on port+i (`worker-port`).
    pub worker_port: u16,
    /// Name of this deployment, used in container names and labels (default goloadbalancer).
    pub instance: String,
    /// Address the LB ports bind to (default 0.0.0.0).
    pub listen_address: IpAddr,
    /// Address workers listen on / docker publishes on (default 127.0.0.1).
    pub worker_address: IpAddr,
    /// All LB children accept on the single port `load-balancer-port` (default false).
    pub shared_port: bool,
    /// `auto` (default), `docker`, `process`.
    pub runtime: RuntimeKind,
    /// Admin HTTP address (default 127.0.0.1).
    pub admin_address: IpAddr,
    /// Admin HTTP port (default 8404).
    pub admin_port: u16,
    /// Time in-flight requests get to finish on stop or drain (default 30000).
    pub drain_timeout_ms: u64,
    /// Time a new worker gets to pass its first health check (default 30000).
    pub worker_start_timeout_ms: u64,
    /// The LB loop's settings (flattened: the keys sit at the top level of config.yaml).
    #[serde(flatten)]
    pub proxy: ProxySettings,
    /// The autoscaler.
    pub autoscale: Autoscale,
}

/// A configuration error: `file:line: key: message`, exit code 2.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The offending key (dotted for nested keys), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A value that breaks a rule: the key it is reported under (dotted for `autoscale.*`),
/// why, and the other keys involved (a rule between keys is reported at one of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The key the rule is about.
    pub key: String,
    /// What is wrong, e.g. `must be between 0 and 100, got 120`.
    pub message: String,
    /// Other keys the rule involves, in order of preference for reporting.
    pub related: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Default for ProxySettings {
    fn default() -> ProxySettings {
        ProxySettings {
            mode: Mode::Http,
            balance: Balance::RoundRobin,
            max_connections: 10_000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            connect_timeout_ms: 2_000,
            response_timeout_ms: 30_000,
            tunnel_timeout_ms: 3_600_000,
            max_request_line: 8192,
            max_header_bytes: 32_768,
            max_headers: 100,
            max_body_bytes: 0,
            retries: 2,
            upstream_pool_size: 256,
            health_path: "/healthz".to_string(),
            health_interval_ms: 5_000,
            health_timeout_ms: 1_000,
            health_rise: 2,
            health_fall: 3,
        }
    }
}

impl Default for Autoscale {
    fn default() -> Autoscale {
        Autoscale {
            enabled: false,
            min: 1,
            max: 10,
            target_inflight: 50.0,
            target_p90_ms: 0,
            breach_ms: 3_000,
            cooldown_ms: 10_000,
            step: 1,
        }
    }
}

impl Default for Config {
    /// The seed's values for its seven keys, the documented defaults for the rest.
    fn default() -> Config {
        Config {
            worker: 3,
            pool: 2,
            stats_dir: PathBuf::from("worker-stats.db"),
            avg_delay: 500,
            failure: 12.0,
            load_balancer_port: 5050,
            worker_port: 6000,
            instance: "goloadbalancer".to_string(),
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            worker_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            shared_port: false,
            runtime: RuntimeKind::Auto,
            admin_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_port: 8404,
            drain_timeout_ms: 30_000,
            worker_start_timeout_ms: 30_000,
            proxy: ProxySettings::default(),
            autoscale: Autoscale::default(),
        }
    }
}

impl Config {
    /// Checks every value rule (ranges, port ranges, autoscale bounds): the same checks
    /// `load` applies, for configurations built in code.
    pub fn validate(&self) -> Result<(), Violation> {
        let mut r = rules::Rules::new(None);
        r.config(self);
        r.finish()
    }

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
            self.pool.max(1)
        };
        let first = u32::from(self.load_balancer_port);
        (first, first.saturating_add(n as u32 - 1))
    }

    /// First and last port a worker may take (inclusive).
    pub fn worker_ports(&self) -> (u32, u32) {
        let n = u32::try_from(self.worker_slots().max(1)).unwrap_or(u32::MAX);
        let first = u32::from(self.worker_port);
        (first, first.saturating_add(n - 1))
    }
}

impl ProxySettings {
    /// Checks every value rule of the LB settings (see `Config::validate`).
    pub fn validate(&self) -> Result<(), Violation> {
        let mut r = rules::Rules::new(None);
        r.proxy(self);
        r.finish()
    }

    /// Applies one `goloadbalancer proxy --<key> <value>` flag: same key names, types and
    /// ranges as config.yaml. Rules between keys (max-request-line <= max-header-bytes) are
    /// left to `validate()`, to be called once all flags are applied. On error `self` is
    /// unchanged and the message reads `key: what is wrong`.
    pub fn apply_override(&mut self, key: &str, value: &str) -> Result<(), String> {
        // The value is read as a YAML scalar so `5000`, `true` and `http` type like the file;
        // anything YAML rejects is taken as a plain string.
        let node = node::parse(value).unwrap_or_else(|_| Node::Str(value.to_string()));
        let mut next = self.clone();
        match set_proxy_key(&mut next, key, &node) {
            None => Err(format!("{key}: {}", unknown_key_message(key, PROXY_KEYS))),
            Some(Err(m)) => Err(format!("{key}: {m}")),
            Some(Ok(())) => {
                let mut r = rules::Rules::new(Some(key));
                r.proxy(&next);
                r.finish().map_err(|v| v.to_string())?;
                *self = next;
                Ok(())
            }
        }
    }
}

/// The keys of `ProxySettings` (they sit at the top level of config.yaml).
pub const PROXY_KEYS: &[&str] = &[
    "mode",
    "balance",
    "max-connections",
    "header-timeout-ms",
    "idle-timeout-ms",
    "connect-timeout-ms",
    "response-timeout-ms",
    "tunnel-timeout-ms",
    "max-request-line",
    "max-header-bytes",
    "max-headers",
    "max-body-bytes",
    "retries",
    "upstream-pool-size",
    "health-path",
    "health-interval-ms",
    "health-timeout-ms",
    "health-rise",
    "health-fall",
];

/// The top-level keys other than the proxy settings.
pub const TOP_KEYS: &[&str] = &[
    "worker",
    "pool",
    "stats-dir",
    "avg-delay",
    "failure",
    "load-balancer-port",
    "worker-port",
    "instance",
    "listen-address",
    "worker-address",
    "shared-port",
    "runtime",
    "admin-address",
    "admin-port",
    "drain-timeout-ms",
    "worker-start-timeout-ms",
    "autoscale",
];

/// The keys of the `autoscale:` block.
pub const AUTOSCALE_KEYS: &[&str] = &[
    "enabled",
    "min",
    "max",
    "target-inflight",
    "target-p90-ms",
    "breach-ms",
    "cooldown-ms",
    "step",
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
];

/// A port number: 1-65535.
fn port(v: &Node) -> Result<u16, String> {
    let n = v.uint()?;
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("must be between 1 and 65535, got {n}")),
    }
}

/// Reads one proxy key into `p`; None when `key` is not a proxy key.
fn set_proxy_key(p: &mut ProxySettings, key: &str, v: &Node) -> Option<Result<(), String>> {
    let r = (|| -> Result<(), String> {
        match key {
            "mode" => p.mode = v.one_of(MODES)?,
            "balance" => p.balance = v.one_of(BALANCES)?,
            "max-connections" => p.max_connections = v.uint_as()?,
            "header-timeout-ms" => p.header_timeout_ms = v.uint()?,
            "idle-timeout-ms" => p.idle_timeout_ms = v.uint()?,
            "connect-timeout-ms" => p.connect_timeout_ms = v.uint()?,
            "response-timeout-ms" => p.response_timeout_ms = v.uint()?,
            "tunnel-timeout-ms" => p.tunnel_timeout_ms = v.uint()?,
            "max-request-line" => p.max_request_line = v.uint_as()?,
            "max-header-bytes" => p.max_header_bytes = v.uint_as()?,
            "max-headers" => p.max_headers = v.uint_as()?,
            "max-body-bytes" => p.max_body_bytes = v.uint()?,
            "retries" => p.retries = v.uint_as()?,
            "upstream-pool-size" => p.upstream_pool_size = v.uint_as()?,
            "health-path" => p.health_path = v.string()?,
            "health-interval-ms" => p.health_interval_ms = v.uint()?,
            "health-timeout-ms" => p.health_timeout_ms = v.uint()?,
            "health-rise" => p.health_rise = v.uint_as()?,
            "health-fall" => p.health_fall = v.uint_as()?,
            _ => return Err(String::new()),
        }
        Ok(())
    })();
    match r {
        Err(m) if m.is_empty() => None,
        r => Some(r),
    }
}

/// Reads one top-level key (not `autoscale`) into `c`; None when `key` is unknown.
fn set_top_key(c: &mut Config, key: &str, v: &Node) -> Option<Result<(), String>> {
    let r = (|| -> Result<(), String> {
        match key {
            "worker" => c.worker = v.uint_as()?,
            "pool" => c.pool = v.uint_as()?,
            "stats-dir" => c.stats_dir = PathBuf::from(v.string()?),
            "avg-delay" => c.avg_delay = v.uint()?,
            "failure" => c.failure = v.float()?,
            "load-balancer-port" => c.load_balancer_port = port(v)?,
            "worker-port" => c.worker_port = port(v)?,
            "instance" => c.instance = v.string()?,
            "listen-address" => c.listen_address = v.ip()?,
            "worker-address" => c.worker_address = v.ip()?,
            "shared-port" => c.shared_port = v.boolean()?,
            "runtime" => c.runtime = v.one_of(RUNTIMES)?,
            "admin-address" => c.admin_address = v.ip()?,
            "admin-port" => c.admin_port = port(v)?,
            "drain-timeout-ms" => c.drain_timeout_ms = v.uint()?,
            "worker-start-timeout-ms" => c.worker_start_timeout_ms = v.uint()?,
            _ => return Err(String::new()),
        }
        Ok(())
    })();
    match r {
        Err(m) if m.is_empty() => set_proxy_key(&mut c.proxy, key, v),
        r => Some(r),
    }
}

/// Reads one `autoscale:` key into `a`; None when `key` is unknown.
fn set_autoscale_key(a: &mut Autoscale, key: &str, v: &Node) -> Option<Result<(), String>> {
    let r = (|| -> Result<(), String> {
        match key {
            "enabled" => a.enabled = v.boolean()?,
            "min" => a.min = v.uint_as()?,
            "max" => a.max = v.uint_as()?,
            "target-inflight" => a.target_inflight = v.float()?,
            "target-p90-ms" => a.target_p90_ms = v.uint()?,
            "breach-ms" => a.breach_ms = v.uint()?,
            "cooldown-ms" => a.cooldown_ms = v.uint()?,
            "step" => a.step = v.uint_as()?,
            _ => return Err(String::new()),
        }
        Ok(())
    })();
    match r {
        Err(m) if m.is_empty() => None,
        r => Some(r),
    }
}

/// `unknown key`, with the closest known key when one is close.
fn unknown_key_message(key: &str, known: &[&str]) -> String {
    let typed = key.to_ascii_lowercase().replace('_', "-");
    let best = known
        .iter()
        .map(|k| (edit_distance(&typed, k), *k))
        .filter(|(d, k)| {
            *d <= if typed.len() >= 5 { 3 } else { 2 }.max(typed.len() / 3)
                || (typed.len() >= 3 && (k.starts_with(&typed) || typed.starts_with(k)))
        })
        .min();
    match best {
        Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
        None => "unknown key".to_string(),
    }
}

/// Levenshtein distance (keys are short: the quadratic table is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A problem found while reading the tree, before line lookup.
struct TreeError {
    /// Key path (`["autoscale", "min"]`); empty for the document itself.
    path: Vec<String>,
    /// Which appearance of that key (duplicates), 1-based.
    occurrence: usize,
    message: String,
    /// A repeated key: the message gets the first appearance's line.
    duplicate: bool,
    /// Whether `path` can be looked up for a line.
    locate: bool,
}

impl TreeError {
    fn at(path: &[&str], occurrence: usize, message: String) -> TreeError {
        TreeError {
            path: path.iter().map(|s| s.to_string()).collect(),
            occurrence,
            message,
            duplicate: false,
            locate: true,
        }
    }
}

/// Counts appearances of keys within one mapping.
#[derive(Default)]
struct Seen(Vec<(String, usize)>);

impl Seen {
    fn add(&mut self, key: &str) -> usize {
        if let Some(e) = self.0.iter_mut().find(|(k, _)| k == key) {
            e.1 += 1;
            e.1
        } else {
            self.0.push((key.to_string(), 1));
            1
        }
    }
}

fn kind_of(v: &Node) -> &'static str {
    match v {
        Node::Null => "nothing",
        Node::Bool(_) => "a boolean",
        Node::Int(_) | Node::Float(_) => "a number",
        Node::Str(_) => "a string",
        Node::Seq => "a list",
        Node::Map(_) => "a mapping",
        Node::Tagged(_) => "a tagged value",
    }
}

/// Builds a `Config` from the parsed document: known keys, right types, no duplicates.
fn config_from_tree(root: &Node) -> Result<Config, TreeError> {
    let Node::Map(entries) = root else {
        return Err(TreeError::at(
            &[],
            1,
            format!(
                "the top level must be a mapping of keys like `worker: 3`, got {}",
                kind_of(root)
            ),
        ));
    };
    let mut c = Config::default();
    let mut seen = Seen::default();
    for (k, v) in entries {
        let key = k.key_text();
        let n = seen.add(&key);
        if matches!(k, Node::Seq | Node::Map(_)) {
            // A complex key (`? [a]`): no name to report it by, nor a line to find it at.
            return Err(TreeError {
                locate: false,
                ..TreeError::at(
                    &[],
                    1,
                    format!("keys must be names like `worker`, got {}", kind_of(k)),
                )
            });
        }
        if !matches!(k, Node::Str(_)) {
            return Err(TreeError::at(
                &[&key],
                n,
                format!("keys must be names like `worker`, got {}", kind_of(k)),
            ));
        }
        if n > 1 {
            return Err(TreeError {
                duplicate: true,
                ..TreeError::at(&[&key], n, String::new())
            });
        }
        if key == "autoscale" {
            read_autoscale(&mut c.autoscale, v)?;
            continue;
        }
        match set_top_key(&mut c, &key, v) {
            Some(Ok(())) => {}
            Some(Err(m)) => return Err(TreeError::at(&[&key], 1, m)),
            None => {
                let mut m = unknown_key_message(&key, &[TOP_KEYS, PROXY_KEYS].concat());
                if m == "unknown key" && AUTOSCALE_KEYS.contains(&key.as_str()) {
                    m = format!("unknown key (did you mean `autoscale: {{{key}: ...}}`?)");
                }
                return Err(TreeError::at(&[&key], 1, m));
            }
        }
    }
    Ok(c)
}

fn read_autoscale(a: &mut Autoscale, v: &Node) -> Result<(), TreeError> {
    let entries = match v {
        // `autoscale:` with nothing under it: all defaults.
        Node::Null => return Ok(()),
        Node::Map(e) => e,
        other => {
            return Err(TreeError::at(
                &["autoscale"],
                1,
                format!(
                    "must be a mapping of autoscale keys ({}), got {}",
                    AUTOSCALE_KEYS.join(", "),
                    kind_of(other)
                ),
            ));
        }
    };
    let mut seen = Seen::default();
    for (k, v) in entries {
        let key = k.key_text();
        let n = seen.add(&key);
        let path = ["autoscale", key.as_str()];
        if matches!(k, Node::Seq | Node::Map(_)) {
            return Err(TreeError::at(
                &["autoscale"],
                1,
                format!("keys must be names like `min`, got {}", kind_of(k)),
            ));
        }
        if !matches!(k, Node::Str(_)) {
            return Err(TreeError::at(
                &path,
                n,
                format!("keys must be names like `min`, got {}", kind_of(k)),
            ));
        }
        if n > 1 {
            return Err(TreeError {
                duplicate: true,
                ..TreeError::at(&path, n, String::new())
            });
        }
        match set_autoscale_key(a, &key, v) {
            Some(Ok(())) => {}
            Some(Err(m)) => return Err(TreeError::at(&path, 1, m)),
            None => {
                let mut m = unknown_key_message(&key, AUTOSCALE_KEYS);
                if m == "unknown key"
                    && (TOP_KEYS.contains(&key.as_str()) || PROXY_KEYS.contains(&key.as_str()))
                {
                    m = format!(
                        "unknown key (`{key}` belongs at the top level, not under autoscale:)"
                    );
                }
                return Err(TreeError::at(&path, 1, m));
            }
        }
    }
    Ok(())
}

/// Largest config file read: a config is a few KiB; this bounds memory on a wrong path.
const MAX_FILE_BYTES: u64 = 1 << 20;

fn read_text(path: &Path) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        err(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => format!("cannot read: {}", io_reason(&e)),
        })
    })?;
    if meta.is_dir() {
        return Err(err(
            "is a directory, expected a config file (e.g. config.yaml)".into(),
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!(
            "is {} bytes, larger than any config file ({} bytes at most)",
            meta.len(),
            MAX_FILE_BYTES
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {}", io_reason(&e))))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
            Err(ConfigError {
                line: Some(line),
                ..err("is not UTF-8 text".into())
            })
        }
    }
}

/// The OS reason without Rust's ` (os error N)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

/// A key as printed in an error: quoted and escaped if it holds control characters, so the
/// error stays one line.
fn printable_key(key: &str) -> String {
    if key.chars().any(char::is_control) {
        format!("{key:?}")
    } else {
        key.to_string()
    }
}

/// Whether the text holds nothing but blank lines, comments and document markers.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Loads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_text(path)?;
    parse_and_check(path, &text)
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse_and_check(file: &Path, text: &str) -> Result<Config, ConfigError> {
    // A byte-order mark confuses the YAML reader's document count; it carries no meaning.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let error = |line: Option<usize>, key: Option<String>, message: String| ConfigError {
        file: file.to_path_buf(),
        line,
        key,
        message,
    };
    if is_blank_yaml(text) {
        return Err(error(
            None,
            None,
            "the file is empty: expected keys like `worker: 3` (see the config.yaml shipped with goloadbalancer)".into(),
        ));
    }
    let root = node::parse(text)
        .map_err(|e| error(e.line, None, format!("invalid YAML: {}", e.message)))?;
    if root == Node::Null {
        return Err(error(
            None,
            None,
            "the file is empty: expected keys like `worker: 3`".into(),
        ));
    }
    let config = config_from_tree(&root).map_err(|e| {
        let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
        let line = if e.locate {
            node::key_line(text, &path, e.occurrence)
        } else {
            None
        };
        let message = if e.duplicate {
            match node::key_line(text, &path, 1) {
                Some(first) => format!("duplicate key (first set on line {first})"),
                None => "duplicate key".to_string(),
            }
        } else {
            e.message
        };
        let key = (!path.is_empty()).then(|| printable_key(&path.join(".")));
        error(line, key, message)
    })?;
    config.validate().map_err(|v| {
        // Report at the first involved key written in the file; a default has no line.
        let candidates = std::iter::once(&v.key).chain(v.related.iter());
        for k in candidates {
            let path: Vec<&str> = k.split('.').collect();
            if let Some(line) = node::key_line(text, &path, 1) {
                // Reported at another key than the rule's own: name the rule's key.
                let message = if *k != v.key && v.message.starts_with("must ") {
                    format!("{} {}", v.key, v.message)
                } else {
                    v.message.clone()
                };
                return error(Some(line), Some(k.clone()), message);
            }
        }
        error(None, Some(v.key.clone()), v.message.clone())
    })?;
    Ok(config)
}

/// System-wide config path, used when it exists and no `--config` is given.
pub const SYSTEM_PATH: &str = "/etc/goloadbalancer/config.yaml";

/// The config file to use: `explicit` (`--config`), else /etc/goloadbalancer/config.yaml if
/// it exists, else ./config.yaml.
pub fn default_path(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    let system = Path::new(SYSTEM_PATH);
    if system.is_file() {
        system.to_path_buf()
    } else {
        PathBuf::from("config.yaml")
    }
}

/// `goloadbalancer check-config [PATH]`: validates and prints the effective configuration
/// (every key with its value, defaults filled in) as YAML; exit 0, or the error and exit 2.
pub fn check_config_cmd(path: Option<PathBuf>) -> i32 {
    let path = default_path(path);
    match load(&path) {
        Ok(config) => match serde_yaml_ng::to_string(&config) {
            Ok(yaml) => {
                println!(
                    "# {}: valid; effective configuration (defaults filled in):",
                    path.display()
                );
                print!("{yaml}");
                0
            }
            Err(e) => {
                eprintln!("{}: cannot print the configuration: {e}", path.display());
                1
            }
        },
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, String> {
        parse_and_check(Path::new("c.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn key_lists_match_the_structs() {
        let v = serde_yaml_ng::to_value(Config::default()).unwrap();
        let mut fields: Vec<String> = v
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        fields.sort();
        let mut listed: Vec<String> = TOP_KEYS
            .iter()
            .chain(PROXY_KEYS)
            .map(|s| s.to_string())
            .collect();
        listed.sort();
        assert_eq!(fields, listed);
        let a = serde_yaml_ng::to_value(Autoscale::default()).unwrap();
        let mut fields: Vec<&str> = a
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        fields.sort();
        let mut listed = AUTOSCALE_KEYS.to_vec();
        listed.sort();
        assert_eq!(fields, listed);
    }

    #[test]
    fn every_listed_key_is_readable() {
        // Feeding each key a value of the wrong kind must give a type error, never "unknown".
        let mut c = Config::default();
        for k in TOP_KEYS
            .iter()
            .chain(PROXY_KEYS)
            .filter(|k| **k != "autoscale")
        {
            assert!(set_top_key(&mut c, k, &Node::Seq).is_some(), "{k}");
        }
        for k in AUTOSCALE_KEYS {
            assert!(
                set_autoscale_key(&mut c.autoscale, k, &Node::Seq).is_some(),
                "{k}"
            );
        }
    }

    #[test]
    fn seed_keys_and_defaults() {
        let c = load_text("worker: 4\npool: 1\nfailure: 0\n").unwrap();
        assert_eq!(c.worker, 4);
        assert_eq!(c.pool, 1);
        assert_eq!(c.failure, 0.0);
        assert_eq!(c.avg_delay, 500);
        assert_eq!(c.proxy, ProxySettings::default());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            unknown_key_message("avg_delay", TOP_KEYS),
            "unknown key (did you mean `avg-delay`?)"
        );
        assert_eq!(unknown_key_message("zzz", TOP_KEYS), "unknown key");
        assert_eq!(
            load_text("worker: 3\nstep: 2\n").unwrap_err(),
            "c.yaml:2: step: unknown key (did you mean `autoscale: {step: ...}`?)"
        );
    }

    #[test]
    fn apply_override_validates_like_yaml() {
        let mut p = ProxySettings::default();
        p.apply_override("response-timeout-ms", "5000").unwrap();
        assert_eq!(p.response_timeout_ms, 5000);
        p.apply_override("mode", "tcp").unwrap();
        assert_eq!(p.mode, Mode::Tcp);
        p.apply_override("health-path", "/ready").unwrap();
        assert_eq!(p.health_path, "/ready");
        assert_eq!(
            p.apply_override("response-timeout-ms", "0"),
            Err("response-timeout-ms: must be between 1 and 604800000, got 0".into())
        );
        assert_eq!(
            p.apply_override("retries", "many"),
            Err("retries: must be a whole number, got \"many\"".into())
        );
        assert_eq!(
            p.apply_override("retry", "1"),
            Err("retry: unknown key (did you mean `retries`?)".into())
        );
        assert_eq!(
            p.apply_override("worker", "1"),
            Err("worker: unknown key".into())
        );
        assert_eq!(
            p.response_timeout_ms, 5000,
            "a failed override changes nothing"
        );
        // Rules between keys wait for validate(): raise both limits in either order.
        p.apply_override("max-request-line", "40000").unwrap();
        assert!(p.validate().is_err());
        p.apply_override("max-header-bytes", "65536").unwrap();
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn mutated_files_never_panic_and_errors_stay_one_line() {
        use rand::RngExt;
        let base = include_str!("../config.yaml").to_string()
            + "autoscale:\n  enabled: true\n  min: 2\n  max: 4\n";
        let alphabet: &[u8] = b" \n\t:-#[]{}!&*?|>'\",.~0123456789abcwp\\\x00\xff";
        let mut rng = rand::rng();
        for _ in 0..3000 {
            let mut bytes = base.clone().into_bytes();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..bytes.len());
                let b = alphabet[rng.random_range(0..alphabet.len())];
                match rng.random_range(0..3) {
                    0 => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let lines = text.lines().count() + 1;
            if let Err(e) = parse_and_check(Path::new("c.yaml"), &text) {
                let shown = e.to_string();
                assert!(
                    !shown.contains('\n'),
                    "multi-line error {shown:?}\nfor:\n{text}"
                );
                if let Some(l) = e.line {
                    assert!((1..=lines).contains(&l), "line {l} of {lines}: {shown}");
                }
            }
        }
    }

    #[test]
    fn default_path_prefers_explicit() {
        assert_eq!(
            default_path(Some(PathBuf::from("/x/y.yaml"))),
            PathBuf::from("/x/y.yaml")
        );
        let p = default_path(None);
        assert!(p == Path::new(SYSTEM_PATH) || p == Path::new("config.yaml"));
    }
}
