//! The worker: `/api/v1/hello` after a random delay, `/worker/stats` from the shared SQLite
//! database, `/healthz`; one mio loop (`server`) driving connections (`conn`) whose requests
//! are routed (`routes`) to queued answers (`answer`), one stats store thread (`store`).

mod answer;
mod conn;
pub mod delay;
pub mod peers;
mod routes;
mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `goloadbalancer worker` is started with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Worker id; None = container hostname under docker, else `host-<port>`.
    pub id: Option<String>,
    /// The shared SQLite stats database.
    pub db: PathBuf,
    /// Mean delay of /api/v1/hello in ms.
    pub avg_delay_ms: u64,
    /// Failure probability of /api/v1/hello in percent.
    pub failure_pct: f64,
    /// A client that starts a request head (or body) must finish it within this (then 408).
    pub head_timeout_ms: u64,
    /// An idle keep-alive connection (or one whose client stops reading) is closed after this.
    pub idle_timeout_ms: u64,
    /// The stats store commits at most this often (group commit interval).
    pub stats_flush_ms: u64,
    /// On SIGTERM/SIGINT, in-flight requests get at most this long to finish.
    pub drain_timeout_ms: u64,
    /// Before draining, keep serving this long with /healthz answering 503 (0 = drain at once).
    pub drain_grace_ms: u64,
    /// Connections held at once; beyond this the worker stops accepting until one closes.
    pub max_connections: usize,
    /// `host:port` of the peers whose node stats `/worker/stats` merges (empty: none).
    pub peers: Vec<String>,
}

impl Options {
    /// Options with the documented defaults for everything but the address and database.
    pub fn new(listen: SocketAddr, db: PathBuf) -> Options {
        Options {
            listen,
            id: None,
            db,
            avg_delay_ms: 500,
            failure_pct: 12.0,
            head_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            stats_flush_ms: 5,
            drain_timeout_ms: 30_000,
            drain_grace_ms: 0,
            max_connections: 20_000,
            peers: Vec::new(),
        }
    }
}

/// Runs the worker until SIGTERM/SIGINT; returns the process exit code (0 after a clean
/// drain, 1 when it cannot start or could not save its stats).
pub fn run(opts: Options) -> i32 {
    if let Some(id) = &opts.id
        && let Err(e) = validate_id(id)
    {
        eprintln!("goloadbalancer worker: --id: {e}");
        return 2;
    }
    raise_fd_limit();
    match server::run(&opts, opts.id.as_deref()) {
        Ok(()) => 0,
        Err(e) => {
            crate::error!("worker_failed", "error={}", crate::sys::log::quote(&e));
            1
        }
    }
}

/// The id when `--id` is not given: under docker (a `/.dockerenv` file, which docker creates
/// in every container) the hostname, which docker sets to the container's short id; otherwise
/// `host-<port>`, stable across restarts on the same port.
pub fn default_id(port: u16) -> String {
    if Path::new("/.dockerenv").exists()
        && let Some(h) = hostname()
    {
        return h;
    }
    format!("host-{port}")
}

/// The kernel's hostname (UTS namespace), else `$HOSTNAME`.
fn hostname() -> Option<String> {
    let from_file = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
}

/// An id goes into JSON keys, log lines and the database: 1-64 of `[A-Za-z0-9._:-]`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("must be 1 to 64 characters, got {}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "{id:?}: character {c:?} not allowed (letters, digits, . _ : - only)"
        ));
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard one: each held request is a socket, and
/// systemd's default soft limit (1024) would cap a worker far below 10,000 connections.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("fdbaa57c12d3").is_ok());
        assert!(validate_id("host-6000").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id("a\"b").is_err());
        assert!(validate_id(&"x".repeat(65)).is_err());
    }
}
