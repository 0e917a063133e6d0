//! The supervisor with the docker runtime: the worker image built from our static binary,
//! workers as labelled containers. Skipped (with the reason printed) where no docker engine
//! answers. The tests run one at a time: each starts several containers.

mod common;
#[path = "supervisor_support/scenarios.rs"]
mod scenarios;
#[path = "supervisor_support/mod.rs"]
mod support;

use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(test: &str, f: impl FnOnce()) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if support::skip_without_docker(test) {
        return;
    }
    f();
}

#[test]
fn docker_seed_config_serves_rotates_and_counts() {
    run("docker_seed", || scenarios::seed("d-seed", "docker"));
}

#[test]
fn docker_killed_worker_is_replaced() {
    run("docker_worker_killed", || {
        scenarios::worker_killed("d-wkill", "docker")
    });
}

#[test]
fn docker_reload_changes_worker_count_under_load_without_errors() {
    run("docker_reload", || {
        scenarios::reload_under_load("d-reload", "docker")
    });
}

#[test]
fn docker_killed_supervisor_next_start_adopts_the_same_containers() {
    run("docker_supervisor_killed", || {
        scenarios::supervisor_killed_adopts("d-svkill")
    });
}

#[test]
fn docker_container_of_an_older_image_is_replaced_without_losing_capacity() {
    run("docker_outdated", || {
        scenarios::outdated_container_replaced("d-outdated")
    });
}

#[test]
fn docker_sigterm_stops_and_removes_every_container() {
    run("docker_sigterm", || scenarios::sigterm("d-term", "docker"));
}

#[test]
fn docker_second_stop_signal_forces_and_removes_containers() {
    run("docker_second_signal", || {
        scenarios::second_signal_forces("d-force", "docker")
    });
}

#[test]
fn docker_sigusr2_upgrade_under_load_keeps_the_containers() {
    run("docker_upgrade", || {
        scenarios::upgrade_under_load("d-upgrade", "docker")
    });
}
