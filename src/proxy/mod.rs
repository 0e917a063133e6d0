//! The LB child: one mio loop proxying HTTP/1.1 (or raw TCP) to a set of backends.
//!
//! Map: `server` (the loop, its slab of sessions and checks, control channel, drain),
//! `tokens` (what a mio token names), `context` (`LoopContext`: the state sessions share),
//! `lease` (the upstream lease: pick, connect, count; end with the outcome), `upstream`
//! (upstream connections and keep-alive pools), `http_session` (client connection state
//! machine), `tcp_session` (L4 mode), `backends` (set, balancing, metrics), `health` (active
//! checks), `relay` (buffered socket I/O and the one-direction relay), `buffer` (pooled
//! buffers), `access_log` (the per-request line and its batched writer), `request_record`
//! (what a session learns about a request for it). Sockets, deadlines, the lingering
//! close, the control channel and the health probe come from the loop kit
//! (`crate::evloop`); HTTP parsing and head rewriting from `crate::http`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::config::{HealthCheckMode, ProxySettings};

pub mod access_log;
mod backends;
mod buffer;
mod context;
pub mod control;
mod health;
mod http_session;
mod lease;
pub mod policy;
mod relay;
mod request_record;
mod server;
mod tcp_session;
mod tokens;
mod upstream;

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
    raise_fd_limit();
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

/// Raises the soft descriptor limit to the hard one: `max-connections` (10,000 by default)
/// needs two descriptors per proxied connection, far above the usual soft limit of 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
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
            // Under systemd the journal files the line by its priority prefix.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                crate::error!(
                    "proxy_config_invalid",
                    "error={}",
                    crate::sys::log::quote(&e)
                );
            } else {
                eprintln!("goloadbalancer proxy: {e}");
            }
            2
        }
    }
}

/// `health-check: auto` for the standalone proxy, in front of any server: a connect check,
/// unless a health path was asked for (`--health-path`, or a config's own `health-path`).
fn resolve_auto_health_check(settings: &mut ProxySettings, path_flag: bool) {
    if settings.health_check != HealthCheckMode::Auto {
        return;
    }
    let path_given = path_flag || settings.health_path != ProxySettings::default().health_path;
    settings.health_check = if path_given {
        HealthCheckMode::Http
    } else {
        HealthCheckMode::Tcp
    };
}

fn standalone_inputs(opts: StandaloneOptions) -> Result<LoopInputs, String> {
    let mut settings = ProxySettings::default();
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
        settings
            .apply_override(k, v)
            .map_err(|e| format!("--{e}"))?;
    }
    settings.validate().map_err(|e| e.to_string())?;
    let path_flag = opts.overrides.iter().any(|(k, _)| k == "health-path");
    resolve_auto_health_check(&mut settings, path_flag);
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
    let listener =
        crate::sys::net::bind_listener(listen).map_err(|e| format!("--listen {listen}: {e}"))?;
    Ok(LoopInputs {
        name: "proxy".into(),
        listener,
        backends,
        settings,
        control: None,
        drain_timeout_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_health_check_is_tcp_for_the_standalone_proxy_unless_a_path_is_given() {
        let resolved = |settings: ProxySettings, flag| {
            let mut s = settings;
            resolve_auto_health_check(&mut s, flag);
            s.health_check
        };
        let auto = ProxySettings::default();
        assert_eq!(resolved(auto.clone(), false), HealthCheckMode::Tcp);
        assert_eq!(resolved(auto.clone(), true), HealthCheckMode::Http);
        let own_path = ProxySettings {
            health_path: "/ready".into(),
            ..auto.clone()
        };
        assert_eq!(resolved(own_path, false), HealthCheckMode::Http);
        let explicit = ProxySettings {
            health_check: HealthCheckMode::Http,
            ..auto
        };
        assert_eq!(resolved(explicit, false), HealthCheckMode::Http);
    }
}
