//! The supervisor ("config manager"): workers through a runtime, forked LB children,
//! reconcile loop, reload, stop, admin endpoint.

pub mod autoscale;

use std::path::PathBuf;

/// `goloadbalancer run`: returns the process exit code.
pub fn run(config: Option<PathBuf>) -> i32 {
    let _ = config;
    eprintln!("run: not implemented yet");
    1
}

/// `goloadbalancer status`: prints the running supervisor's state; 1 when not running.
pub fn status_cmd(config: Option<PathBuf>, admin: Option<String>, json: bool) -> i32 {
    let _ = (config, admin, json);
    eprintln!("status: not implemented yet");
    1
}
