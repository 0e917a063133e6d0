//! The LB child: one mio loop proxying HTTP/1.1 (or raw TCP) to a set of backends.
//!
//! Map: `server` (the loop, tokens, control channel, drain), `core` (slab and shared state),
//! `http_session` (client connection state machine), `tcp_session` (L4 mode), `backends`
//! (set, balancing, metrics), `health` (active checks), `sock` (readiness and relay),
//! `buffer` (pooled buffers), `timer` (deadlines). HTTP parsing and head rewriting come from `crate::http`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::config::{Balance, Mode, ProxySettings};

mod backends;
mod buffer;
pub mod control;
mod core;
mod health;
mod http_session;
mod server;
mod sock;
mod tcp_session;
mod timer;

/// `goloadbalancer proxy` arguments: listener, backends, and config keys given as flags.
#[derive(Clone, Debug)]
pub struct StandaloneOptions {
    /// Address to listen on.
    pub listen: String,
    /// Backend addresses (`host:port`, optionally `host:port=weight`).
    pub backends: Vec<String>,
    /// Optional config file whose proxy keys are read first.
    pub config: Option<PathBuf>,
    /// `--key value` pairs: config keys overriding the file and defaults.
    pub overrides: Vec<(String, String)>,
}

/// What one LB loop runs with: the supervisor builds this in each forked child.
pub struct LoopInputs {
    /// Name for logs (e.g. `lb.0`).
    pub name: String,
    /// The listening socket (inherited; the loop never closes other owners' copies).
    pub listener: std::net::TcpListener,
    /// The initial backend set.
    pub backends: Vec<control::BackendSpec>,
    /// Loop settings.
    pub settings: ProxySettings,
    /// The control channel to the supervisor (None when standalone).
    pub control: Option<UnixStream>,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT or control EOF.
    pub drain_timeout_ms: u64,
}

/// Runs one LB loop until it has drained; returns the exit code (0 after a clean drain).
pub fn run_loop(inputs: LoopInputs) -> i32 {
    match server::Server::new(inputs) {
        Ok(s) => s.run(),
        Err(e) => {
            crate::error!(
                "lb_start_failed",
                "error={}",
                crate::sys::log::quote(&e.to_string())
            );
            1
        }
    }
}

/// The documented defaults of the loop settings (the config module's `Default` mirrors them).
pub fn default_settings() -> ProxySettings {
    ProxySettings {
        mode: Mode::Http,
        balance: Balance::RoundRobin,
        max_connections: 10000,
        header_timeout_ms: 10000,
        idle_timeout_ms: 60000,
        connect_timeout_ms: 2000,
        response_timeout_ms: 30000,
        tunnel_timeout_ms: 3_600_000,
        max_request_line: 8192,
        max_header_bytes: 32768,
        max_headers: 100,
        max_body_bytes: 0,
        retries: 2,
        upstream_pool_size: 32,
        health_path: "/healthz".into(),
        health_interval_ms: 5000,
        health_timeout_ms: 1000,
        health_rise: 2,
        health_fall: 3,
    }
}

/// Applies one `--key value` flag (a config key in kebab-case) to `s`.
fn apply_override(s: &mut ProxySettings, key: &str, value: &str) -> Result<(), String> {
    fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("--{key}: not a valid number: {v:?}"))
    }
    match key {
        "mode" => {
            s.mode = match value {
                "http" => Mode::Http,
                "tcp" => Mode::Tcp,
                _ => return Err(format!("--mode: expected http or tcp, got {value:?}")),
            }
        }
        "balance" => {
            s.balance = match value {
                "round-robin" => Balance::RoundRobin,
                "weighted" => Balance::Weighted,
                "least-connections" => Balance::LeastConnections,
                _ => {
                    return Err(format!(
                        "--balance: expected round-robin, weighted or least-connections, got {value:?}"
                    ));
                }
            }
        }
        "max-connections" => s.max_connections = num(key, value)?,
        "header-timeout-ms" => s.header_timeout_ms = num(key, value)?,
        "idle-timeout-ms" => s.idle_timeout_ms = num(key, value)?,
        "connect-timeout-ms" => s.connect_timeout_ms = num(key, value)?,
        "response-timeout-ms" => s.response_timeout_ms = num(key, value)?,
        "tunnel-timeout-ms" => s.tunnel_timeout_ms = num(key, value)?,
        "max-request-line" => s.max_request_line = num(key, value)?,
        "max-header-bytes" => s.max_header_bytes = num(key, value)?,
        "max-headers" => s.max_headers = num(key, value)?,
        "max-body-bytes" => s.max_body_bytes = num(key, value)?,
        "retries" => s.retries = num(key, value)?,
        "upstream-pool-size" => s.upstream_pool_size = num(key, value)?,
        "health-path" => {
            if !value.starts_with('/') {
                return Err(format!("--health-path: must start with '/', got {value:?}"));
            }
            s.health_path = value.to_string()
        }
        "health-interval-ms" => s.health_interval_ms = num(key, value)?,
        "health-timeout-ms" => s.health_timeout_ms = num(key, value)?,
        "health-rise" => s.health_rise = num(key, value)?,
        "health-fall" => s.health_fall = num(key, value)?,
        _ => return Err(format!("unknown option --{key}")),
    }
    Ok(())
}

/// Parses `host:port` or `host:port=weight`.
fn parse_backend(arg: &str) -> Result<control::BackendSpec, String> {
    let (addr, weight) = match arg.rsplit_once('=') {
        Some((a, w)) => (
            a,
            w.parse::<u32>()
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| format!("--backend {arg}: weight must be a positive integer"))?,
        ),
        None => (arg, 1),
    };
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("--backend {arg}: {e}"))?
        .next()
        .ok_or_else(|| format!("--backend {arg}: no address"))?;
    Ok(control::BackendSpec {
        id: addr.to_string(),
        addr: sock,
        weight,
        state: control::BackendState::Active,
    })
}

/// Runs one LB loop in the foreground until SIGTERM/SIGINT; returns the exit code.
pub fn run_standalone(opts: StandaloneOptions) -> i32 {
    crate::sys::log::init("proxy");
    match standalone_inputs(opts) {
        Ok(inputs) => run_loop(inputs),
        Err(e) => {
            eprintln!("goloadbalancer proxy: {e}");
            2
        }
    }
}

fn standalone_inputs(opts: StandaloneOptions) -> Result<LoopInputs, String> {
    let mut settings = default_settings();
    let mut drain_timeout_ms = 30000;
    if let Some(path) = &opts.config {
        let cfg = crate::config::load(path).map_err(|e| e.to_string())?;
        settings = cfg.proxy;
        drain_timeout_ms = cfg.drain_timeout_ms;
    }
    for (k, v) in &opts.overrides {
        if k == "drain-timeout-ms" {
            drain_timeout_ms = v
                .parse()
                .map_err(|_| format!("--drain-timeout-ms: not a valid number: {v:?}"))?;
            continue;
        }
        apply_override(&mut settings, k, v)?;
    }
    if opts.backends.is_empty() {
        return Err("at least one --backend ADDR is required".into());
    }
    let backends = opts
        .backends
        .iter()
        .map(|b| parse_backend(b))
        .collect::<Result<Vec<_>, _>>()?;
    let listen: SocketAddr = opts
        .listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {}: {e}", opts.listen))?
        .next()
        .ok_or_else(|| format!("--listen {}: no address", opts.listen))?;
    let listener = bind_listener(listen).map_err(|e| format!("--listen {listen}: {e}"))?;
    Ok(LoopInputs {
        name: "proxy".into(),
        listener,
        backends,
        settings,
        control: None,
        drain_timeout_ms,
    })
}

/// Binds a listening socket with SO_REUSEADDR and a deep accept queue (bursts of thousands of
/// connections wait in the kernel rather than being refused).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen,
        setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
    }
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}
