//! The operator scripts (scripts/load.sh, scripts/chaos.sh, scripts/autoscale-bench.sh): their
//! --help, their usage errors, and their short (--quick) runs against the real binary; the Debian mirror
//! scripts/systemd-e2e.sh takes from the machine's apt sources; and scripts/swarm-e2e.sh's
//! --help and usage errors (its cluster is run by hand: it needs root and minutes). A run whose tool is missing is
//! skipped with the reason printed (.ci/run installs curl, wrk and jq).

mod common;

use std::path::{Path, PathBuf};
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

/// Runs `bash <script> args` with a hard deadline (the script is stopped after it).
fn run(name: &str, args: &[&str], deadline: Duration) -> Output {
    // TERM first so the script's trap stops what it started; KILL 15 s later.
    let out = Command::new("timeout")
        .arg("-k")
        .arg("15")
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
fn autoscale_bench_help_and_usage_errors() {
    let o = run("autoscale-bench.sh", &["--help"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(
        text.starts_with("usage: scripts/autoscale-bench.sh"),
        "{text}"
    );
    for needle in [
        "--runtime",
        "--cycles",
        "--cold",
        "reaction_ms",
        "capacity_ms",
        "STEP",
        "COLD",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    for bad in [&["--cycles", "x"][..], &["--runtime", "vm"], &["--bogus"]] {
        let o = run("autoscale-bench.sh", bad, Duration::from_secs(20));
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
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
fn swarm_e2e_help_documents_steps_and_options() {
    let o = run("swarm-e2e.sh", &["--help"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.starts_with("usage: scripts/swarm-e2e.sh"), "{text}");
    for needle in [
        "--keep",
        "--down RUNID",
        "--timeout",
        "--nodes",
        "glb-swarm-node:",
        "dnsrr",
        "host-mode published ports",
        "--no-supervisor",
        "runtime: swarm",
        "GLB_DEBIAN_MIRROR",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    for (args, error) in [
        (&["--nodes", "9"][..], "--nodes must be 2..5"),
        (&["--timeout", "soon"][..], "--timeout must be seconds"),
        (&["--down", "../x"][..], "bad run id"),
        (&["--bogus"][..], "unknown option --bogus"),
    ] {
        let o = run("swarm-e2e.sh", args, Duration::from_secs(20));
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(error), "{args:?}: {}", stderr(&o));
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

/// A real worker on a port it picks itself (`--port 0`, read back from its `worker_started`
/// log line): no port can be taken between a check and its bind. Its log goes on to stderr.
fn start_worker(db: &str, id: &str) -> (common::Proc, u16) {
    use std::io::BufRead;
    let mut cmd = Command::new(common::bin());
    cmd.args([
        "worker",
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
        "--id",
        id,
        "--db",
        db,
        "--avg-delay",
        "5",
        "--failure",
        "0",
    ])
    .stderr(std::process::Stdio::piped());
    let mut p = common::Proc::start_cmd(id, &mut cmd);
    let stderr = p.child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("listen="))
            {
                let _ = tx.send(addr.to_string());
            }
            eprintln!("{line}");
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{id} did not log worker_started within 30 s"));
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad listen= {addr}"));
    (p, port)
}

/// Two real workers on one stats database, started directly (no supervisor); the `--ports`
/// argument for load.sh.
fn two_workers(dir: &common::TempDir) -> (common::Proc, common::Proc, String) {
    let db = dir.join("stats.db");
    let db = db.to_str().expect("utf-8 path");
    let (a, pa) = start_worker(db, "worker-a");
    let (b, pb) = start_worker(db, "worker-b");
    (a, b, format!("{pa},{pb}"))
}

/// `N requests)` from load.sh's per-worker header line.
fn per_worker_sum(o: &Output) -> u64 {
    let out = stdout(o);
    let line = out
        .lines()
        .find(|l| l.contains("per worker"))
        .unwrap_or_else(|| panic!("no per-worker section in:\n{out}"));
    let before = line
        .strip_suffix(" requests):")
        .unwrap_or_else(|| panic!("unexpected line {line}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"))
}

/// The row of one worker id: (requests, failed).
fn worker_row(o: &Output, id: &str) -> (u64, u64) {
    let out = stdout(o);
    let row = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{out}"));
    let f: Vec<&str> = row.split_whitespace().collect();
    (
        f[1].parse().expect("requests"),
        f.last().and_then(|n| n.parse().ok()).expect("failed"),
    )
}

#[test]
fn load_quick_with_curl_reports_exact_per_worker_counts() {
    if !tools(&["curl", "jq", "awk"]) {
        return;
    }
    let dir = common::TempDir::new("load-curl");
    let (_a, _b, ports) = two_workers(&dir);
    let o = run(
        "load.sh",
        &[
            "--quick",
            "--tool",
            "curl",
            "--ports",
            &ports,
            "--expect-no-errors",
            "--expect-workers",
            "2",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(0));
    let requests = summary_n(&o, "requests");
    assert!(requests > 0);
    assert_eq!(summary_n(&o, "ok"), requests);
    assert_eq!(summary_n(&o, "failed"), 0);
    assert_eq!(summary_n(&o, "refused"), 0);
    assert_eq!(summary_n(&o, "workers"), 2);
    assert_eq!(summary(&o, "tool"), "curl");
    // curl waits for every response: the stats moved by exactly the requests made, and each
    // loop alternates between the two ports.
    assert_eq!(per_worker_sum(&o), requests);
    let (a, a_failed) = worker_row(&o, "worker-a");
    let (b, b_failed) = worker_row(&o, "worker-b");
    assert_eq!(a + b, requests);
    assert_eq!((a_failed, b_failed), (0, 0));
    assert!(a.abs_diff(b) <= 4 + requests / 10, "a {a} b {b}");
    assert!(stdout(&o).contains("statuses   200: "), "{}", stdout(&o));
}

#[test]
fn load_quick_with_wrk_reports_rate_latency_and_workers() {
    if !tools(&["wrk", "curl", "jq", "awk"]) {
        return;
    }
    let dir = common::TempDir::new("load-wrk");
    let (_a, _b, ports) = two_workers(&dir);
    let o = run(
        "load.sh",
        &[
            "--quick",
            "--ports",
            &ports,
            "--expect-no-errors",
            "--expect-workers",
            "2",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(summary(&o, "tool"), "wrk");
    let requests = summary_n(&o, "requests");
    assert!(requests > 0);
    assert_eq!(summary_n(&o, "ok"), requests);
    assert_eq!(summary_n(&o, "failed"), 0);
    assert_eq!(summary_n(&o, "workers"), 2);
    // wrk stops with up to one request per connection unanswered-for but served.
    let served = per_worker_sum(&o);
    assert!(
        (requests..=requests + 4).contains(&served),
        "served {served}, wrk counted {requests}"
    );
    let p50: f64 = summary(&o, "p50_ms").parse().expect("p50");
    let p99: f64 = summary(&o, "p99_ms").parse().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
    let rps: f64 = summary(&o, "rps").parse().expect("rps");
    assert!(rps > 0.0);
}

/// Runs chaos.sh --quick with `extra` arguments and checks every step's verdict.
fn chaos_quick(extra: &[&str]) {
    let mut args = vec!["--quick", "--bin", common::bin()];
    args.extend_from_slice(extra);
    let o = run("chaos.sh", &args, Duration::from_secs(400));
    let out = stdout(&o);
    for step in [
        "baseline",
        "kill-lb",
        "kill-worker",
        "reload-up",
        "reload-down",
        "scale-out",
        "scale-in",
        "stop",
    ] {
        let line = out
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with(&format!("{step} ")))
            .unwrap_or_else(|| panic!("no result line for {step}"));
        assert!(
            line.split_whitespace().nth(1) == Some("ok"),
            "step {step}: {line}"
        );
    }
    assert!(out.contains("chaos: all steps ok"));
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn chaos_quick_passes_every_step() {
    if !tools(&["curl", "jq", "awk", "ps"]) {
        return;
    }
    chaos_quick(&[]);
}

#[test]
fn chaos_quick_with_docker_workers_passes_every_step() {
    if !tools(&["curl", "jq", "awk", "ps", "docker"]) {
        return;
    }
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        eprintln!("SKIP: no docker engine answers `docker info`");
        return;
    }
    // kill-worker is `docker kill` of a container here; the stop step checks none is left.
    chaos_quick(&["--runtime", "docker"]);
}

/// `systemd-e2e.sh --print-mirror` with apt pointed (APT_CONFIG) at a directory holding `files`
/// (paths relative to apt's etc directory).
fn e2e_mirror(dir: &common::TempDir, case: &str, files: &[(&str, &str)]) -> Output {
    let etc = dir.join(case);
    std::fs::create_dir_all(etc.join("sources.list.d")).expect("sources.list.d");
    for (name, text) in files {
        std::fs::write(etc.join(name), text).expect("write source");
    }
    let conf = etc.join("apt.conf");
    std::fs::write(&conf, format!("Dir::Etc \"{}\";\n", etc.display())).expect("apt.conf");
    let out = Command::new("bash")
        .arg(script("systemd-e2e.sh"))
        .arg("--print-mirror")
        .env("APT_CONFIG", &conf)
        .env_remove("GLB_DEBIAN_MIRROR")
        .output()
        .expect("run systemd-e2e.sh");
    eprintln!(
        "--- {case}: {:?}\n{}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    out
}

#[test]
fn systemd_e2e_takes_the_debian_mirror_from_the_apt_sources() {
    if !tools(&["apt-config"]) {
        return;
    }
    let dir = common::TempDir::new("e2e mirror");
    let mirror = |case: &str, files: &[(&str, &str)]| {
        let o = e2e_mirror(&dir, case, files);
        assert_eq!(o.status.code(), Some(0), "{case}: {}", stderr(&o));
        stdout(&o).trim().to_string()
    };
    // One-line format: options, a comment, deb-src and a suite without main are passed over.
    let one_line = "# deb http://commented.test/debian bookworm main\n\
        deb-src http://src.test/debian bookworm main\n\
        deb http://contrib.test/debian bookworm contrib\n\
        deb [arch=amd64 signed-by=/k.gpg] http://one.test/debian bookworm contrib main # x\n";
    assert_eq!(
        mirror("one-line", &[("sources.list", one_line)]),
        "http://one.test/debian"
    );
    // deb822: a disabled paragraph, the security suite and a continued field.
    let deb822 = "Types: deb\nURIs: http://off.test/debian\nSuites: bookworm\n\
        Components: main\nEnabled: no\n\n\
        # the security archive\nTypes: deb\nURIs: http://sec.test/debian-security\n\
        Suites: bookworm-security\nComponents: main\n\n\
        Types: deb-src deb\nURIs: http://two.test/debian\nSuites: bookworm-updates\n bookworm\n\
        Components: contrib\n main\n";
    assert_eq!(
        mirror("deb822", &[("sources.list.d/debian.sources", deb822)]),
        "http://two.test/debian"
    );
    // The exact suite wins over another release listed first; a .list counts like sources.list.
    let mixed =
        "deb http://trixie.test/debian trixie main\ndeb http://bw.test/debian bookworm main\n";
    assert_eq!(
        mirror("suite-first", &[("sources.list.d/x.list", mixed)]),
        "http://bw.test/debian"
    );
    // A host on another Debian release: its mirror carries bookworm too (debootstrap says
    // which suites are Debian's; without debootstrap this case cannot be decided).
    if Path::new("/usr/share/debootstrap/scripts/trixie").exists() {
        let trixie = "deb http://sec.test/debian-security trixie-security main\n\
            deb http://noble.test/ubuntu noble main\ndeb http://t.test/debian trixie main\n";
        assert_eq!(
            mirror("other-release", &[("sources.list", trixie)]),
            "http://t.test/debian"
        );
    }
    // Nothing usable: one error line that says what to do, exit 1, no mirror made up.
    let ubuntu = "deb http://noble.test/ubuntu noble main\n";
    let o = e2e_mirror(&dir, "none", &[("sources.list", ubuntu)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains("set GLB_DEBIAN_MIRROR=URI"),
        "{}",
        stderr(&o)
    );
}
