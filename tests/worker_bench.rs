//! scripts/bench-worker.sh: its --help, its usage errors and a --quick run against the binary
//! under test (skipped, saying why, when wrk or curl is missing; .ci/run installs them).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-worker.sh")
}

fn run(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", "300", "bash"])
        .arg(script())
        .args(args)
        .output()
        .expect("run bench-worker.sh")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn help_and_usage_errors() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in ["--quick", "--bin", "--conns", "--duration"] {
        assert!(text.contains(opt), "help lacks {opt}: {text}");
    }
    let out = run(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument --frobnicate"));
    let out = run(&["--conns", "many"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn quick_run_reports_both_phases() {
    if !have("wrk") || !have("curl") {
        eprintln!("SKIP: wrk or curl not installed (apt-get install wrk curl)");
        return;
    }
    let out = run(&["--quick", "--bin", common::bin()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("== 1. held: "), "{stdout}");
    assert!(stdout.contains("== 2. throughput"), "{stdout}");
    assert_eq!(stdout.matches("req/s, latency p50").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("worker stop: exit 0").count(), 2, "{stdout}");
    assert!(stdout.contains("peak (VmHWM)"), "{stdout}");
    assert_eq!(stdout.matches("us per request").count(), 2, "{stdout}");
    // The throughput worker counted what it answered.
    let counted: u64 = stdout
        .lines()
        .find_map(|l| l.split("TotalRequests total: ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no stats count in {stdout}"));
    assert!(counted > 0, "{stdout}");
}
