//! The process runtime: `goloadbalancer worker` as a local child process of the supervisor.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Everything a local worker process is started with.
#[derive(Clone, Debug)]
pub struct ProcessSpec<'a> {
    /// Our own executable.
    pub exe: &'a Path,
    /// Address the worker listens on.
    pub address: IpAddr,
    /// Port it listens on.
    pub port: u16,
    /// Stats database.
    pub db: &'a Path,
    /// Mean hello delay in ms.
    pub avg_delay: u64,
    /// Failure rate in percent.
    pub failure: f64,
    /// Time the worker gives in-flight requests on SIGTERM.
    pub drain_timeout_ms: u64,
}

/// The worker id of a local worker: `local-<port>`.
pub fn worker_id(port: u16) -> String {
    format!("local-{port}")
}

/// Starts the worker. It gets SIGTERM (drain, flush stats) if the supervisor dies, so no
/// worker outlives it.
pub fn spawn(spec: &ProcessSpec<'_>) -> std::io::Result<Child> {
    let mut cmd = Command::new(spec.exe);
    cmd.arg("worker")
        .args(["--listen", &spec.address.to_string()])
        .args(["--port", &spec.port.to_string()])
        .args(["--id", &worker_id(spec.port)])
        .arg("--db")
        .arg(spec.db)
        .args(["--avg-delay", &spec.avg_delay.to_string()])
        .args(["--failure", &spec.failure.to_string()])
        .args(["--drain-timeout-ms", &spec.drain_timeout_ms.to_string()])
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C in the terminal reaches the supervisor (and its LB
        // children), which stops the workers only after the children have drained.
        .process_group(0);
    crate::sys::notify::forget_for_children(&mut cmd);
    crate::sys::privilege::no_ambient_caps_on_exec(&mut cmd);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)?;
            // The supervisor may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("supervisor already gone"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}
