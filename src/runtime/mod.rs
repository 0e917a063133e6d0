//! How workers are started: docker (through the docker CLI) or local processes.
//!
//! This module only knows how to describe each step (a `Command` for docker, a spawned
//! `Child` for a process); the supervisor's loop runs and watches them.

pub mod docker;
pub mod job;
pub mod process;

/// The runtime in use, once `auto` is resolved.
#[derive(Clone, Debug)]
pub enum Runtime {
    /// Workers are containers started through the docker CLI.
    Docker(docker::Docker),
    /// Workers are local child processes.
    Process,
}

impl Runtime {
    /// `docker` or `process`.
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Docker(_) => "docker",
            Runtime::Process => "process",
        }
    }
}
