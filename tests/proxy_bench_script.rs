//! CI smoke of scripts/bench.sh: a quick run against the debug binary must complete and
//! report a result for every proxy it ran (skipped with a note where wrk is missing).

mod common;

use std::process::Command;

#[test]
fn bench_script_quick_run_reports_every_proxy() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk not installed: bench.sh smoke skipped (apt-get install wrk)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("timeout")
        .args(["300", "bash", &format!("{root}/scripts/bench.sh")])
        .args(["--quick", "--idle", "300", "--bin", common::bin()])
        .output()
        .expect("run bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.sh failed:\n{stdout}\n{stderr}");
    let results: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("RESULT "))
        .collect();
    let ran = |p: &str| {
        results
            .iter()
            .any(|l| l.starts_with(&format!("RESULT proxy={p} ")))
    };
    assert!(ran("glb") && ran("direct"), "{stdout}");
    for (tool, name) in [("haproxy", "haproxy"), ("nginx", "nginx")] {
        let installed = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert_eq!(ran(name), installed, "{stdout}");
    }
    let glb = results
        .iter()
        .find(|l| l.starts_with("RESULT proxy=glb "))
        .unwrap();
    let rps: f64 = glb
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("rps="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(rps > 0.0, "{glb}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("IDLE proxy=glb conns=300 rss_per_conn_bytes=")),
        "{stdout}"
    );
}

#[test]
fn bench_script_full_stack_quick_run_measures_the_stack() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk not installed: bench.sh --full-stack smoke skipped (apt-get install wrk)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("timeout")
        .args(["300", "bash", &format!("{root}/scripts/bench.sh")])
        .args([
            "--full-stack",
            "--quick",
            "--only",
            "stack,direct",
            "--idle",
            "100",
        ])
        .args(["--bin", common::bin()])
        .output()
        .expect("run bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("path: /api/v1/hello"), "{stdout}");
    for p in ["stack", "direct"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("RESULT proxy={p} conns=64 rps="))),
            "{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("IDLE proxy=stack conns=100 rss_per_conn_bytes=")),
        "{stdout}"
    );
}
