//! The supervisor with the process runtime: the real binary, workers as local processes, LB
//! children forked, on loopback ports. See tests/supervisor_support/scenarios.rs.

mod common;
#[path = "supervisor_support/scenarios.rs"]
mod scenarios;
#[path = "supervisor_support/mod.rs"]
mod support;

#[test]
fn seed_config_serves_rotates_and_counts() {
    scenarios::seed("p-seed", "process");
}

#[test]
fn status_command_exits_1_when_not_running() {
    scenarios::status_not_running();
}

#[test]
fn killed_lb_child_is_reforked_and_the_port_keeps_answering() {
    scenarios::lb_child_killed("p-lbkill", "process");
}

#[test]
fn killed_worker_is_replaced() {
    scenarios::worker_killed("p-wkill", "process");
}

#[test]
fn reload_changes_worker_count_under_load_without_errors() {
    scenarios::reload_under_load("p-reload", "process");
}

#[test]
fn killed_supervisor_takes_its_children_along() {
    scenarios::supervisor_killed("p-svkill", "process");
}

#[test]
fn sigterm_drains_stops_everything_and_flushes_stats() {
    scenarios::sigterm("p-term", "process");
}

#[test]
fn broken_config_on_reload_keeps_the_old_one() {
    scenarios::broken_reload("p-broken", "process");
}

#[test]
fn invalid_config_at_start_exits_2() {
    scenarios::invalid_config_exits_2();
}

#[test]
fn a_worker_that_never_comes_up_fails_the_start_naming_it() {
    scenarios::worker_never_healthy("p-never");
}

#[test]
fn reload_replacing_children_under_load_loses_nothing() {
    scenarios::reload_replaces_children("p-replace", "process");
}

#[test]
fn a_second_stop_signal_forces() {
    scenarios::second_signal_forces("p-force", "process");
}

#[test]
fn sigusr2_upgrade_under_load_loses_nothing() {
    scenarios::upgrade_under_load("p-upgrade", "process");
}

#[test]
fn version_flag_prints_the_version() {
    scenarios::version_flag();
}

#[test]
fn sigusr2_runs_the_binary_that_replaced_ours() {
    scenarios::upgrade_to_a_new_binary("p-upgrade-new");
}

#[test]
fn sigusr2_answers_requests_held_by_the_draining_old_children() {
    scenarios::upgrade_answers_requests_held_by_the_old_children("p-upgrade-held");
}
