//! config.yaml: schema, defaults, validation with messages naming file, line and key.
//!
//! SKELETON: the structs below are the agreed shape (other modules build against them); the
//! config work fills in loading, validation, defaults and `check-config`, and may add fields.
//! YAML keys are the field names in kebab-case (`max_connections` <-> `max-connections`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
    /// Idle keep-alive upstream connections kept per backend (default 32).
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

/// Loads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: "config loading not implemented yet".into(),
    })
}

/// `goloadbalancer check-config [PATH]`: validates and prints the effective configuration.
pub fn check_config_cmd(path: Option<PathBuf>) -> i32 {
    let path = path.unwrap_or_else(|| PathBuf::from("config.yaml"));
    match load(&path) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}
