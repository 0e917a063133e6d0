//! The operator scripts (scripts/load.sh, scripts/chaos.sh): their --help, their usage errors,
//! and their short (--quick) runs against the real binary. A run whose tool is missing is
//! skipped with the reason printed (.ci/run installs curl, wrk and jq).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Skips (returns false, printing why) unless every tool is installed.
fn tools(names: &[&str]) -> bool {
    let missing: Vec<_> = names.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!("SKIP: {missing:?} not installed (apt-get install curl wrk jq)");
    false
}

/// Runs `bash <script> args` with a hard deadline (the script is killed after it).
fn run(name: &str, args: &[&str], deadline: Duration) -> Output {
    let out = Command::new("timeout")
        .arg("-s")
        .arg("KILL")
        .arg(deadline.as_secs().to_string())
        .arg("bash")
        .arg(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    eprintln!(
        "--- {name} {args:?}: {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The value of `key=` on the SUMMARY line.
fn summary(o: &Output, key: &str) -> String {
    let out = stdout(o);
    let line = out
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .unwrap_or_else(|| panic!("no SUMMARY line in:\n{out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .to_string()
}

fn summary_n(o: &Output, key: &str) -> u64 {
    summary(o, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} not a number"))
}

#[test]
fn load_help_documents_options_and_tools() {
    let o = run("load.sh", &["--help"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.starts_with("usage: scripts/load.sh"), "{text}");
    for needle in [
        "--concurrency",
        "--duration",
        "--quick",
        "--expect-no-errors",
        "--expect-workers",
        "/worker/stats",
        "SUMMARY",
        "apt-get install curl wrk jq",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn chaos_help_documents_steps_and_tools() {
    let o = run("chaos.sh", &["--help"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.starts_with("usage: scripts/chaos.sh"), "{text}");
    for needle in [
        "--quick",
        "kill-lb",
        "kill-worker",
        "reload-up",
        "scale-out",
        "scale-in",
        "refused",
        "apt-get install",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn scripts_reject_bad_usage_with_exit_2() {
    let o = run("load.sh", &["--concurrency", "0"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--concurrency must be"),
        "{}",
        stderr(&o)
    );
    let o = run("load.sh", &["--bogus"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown option --bogus"));
    let o = run("load.sh", &["ftp://x/"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2));
    let o = run("chaos.sh", &["--runtime", "vm"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--runtime must be"), "{}", stderr(&o));
    let o = run("chaos.sh", &["--attach", "1"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--attach needs --config"));
}

#[test]
fn load_counts_refused_connections_and_fails_the_expectation() {
    if !tools(&["curl", "awk"]) {
        return;
    }
    // Nothing listens on this port: every request is a refused connection.
    let port = common::free_port().to_string();
    let o = run(
        "load.sh",
        &[
            "--tool",
            "curl",
            "--no-stats",
            "-c",
            "2",
            "-d",
            "1",
            "--ports",
            &port,
            "--expect-no-errors",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "a broken expectation exits 1");
    let requests = summary_n(&o, "requests");
    assert!(requests >= 2, "each of 2 loops tried at least once");
    assert_eq!(summary_n(&o, "refused"), requests);
    assert_eq!(summary_n(&o, "failed"), requests);
    assert_eq!(summary_n(&o, "ok"), 0);
    assert!(stderr(&o).contains("expected no errors"));
}
