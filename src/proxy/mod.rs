//! The LB child: one mio loop proxying HTTP/1.1 (or raw TCP) to a set of backends.

use std::path::PathBuf;

pub mod control;

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

/// Runs one LB loop in the foreground until SIGTERM/SIGINT; returns the exit code.
pub fn run_standalone(opts: StandaloneOptions) -> i32 {
    let _ = opts;
    eprintln!("proxy: not implemented yet");
    1
}
