//! The worker: `/api/v1/hello` after a random delay, `/worker/stats` from the shared SQLite
//! database, `/healthz`; one mio loop.

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

/// Runs the worker until SIGTERM/SIGINT; returns the process exit code.
pub fn run(opts: Options) -> i32 {
    let _ = opts;
    eprintln!("worker: not implemented yet");
    1
}
