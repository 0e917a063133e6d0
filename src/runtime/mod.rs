//! How workers are started: the [`driver::Driver`] interface the supervisor's fleet uses,
//! and its implementations: local processes, docker and docker swarm (through the docker CLI).

pub mod docker;
pub mod docker_driver;
pub mod docker_events;
pub mod driver;
pub mod job;
pub mod process;
pub mod swarm;
pub mod swarm_driver;
