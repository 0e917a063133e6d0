//! Logs as journald reads them: with JOURNAL_STREAM set (stderr is the journal), every line of
//! every process (supervisor, LB children, workers, standalone worker and proxy) starts with
//! a `<N>` syslog priority that matches its level, then `role=` and `event=`, so
//! `journalctl -u goloadbalancer -p warning` filters correctly.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TempDir, free_port, free_port_range, get, wait_for_port};

/// What one journal-formatted line says.
#[derive(Debug)]
struct Line {
    priority: u8,
    role: String,
    level: String,
    event: String,
}

/// Parses `<N>role=R level=L event=E ...`; Err names what is wrong.
fn parse(line: &str) -> Result<Line, String> {
    let rest = line.strip_prefix('<').ok_or("no <N> priority prefix")?;
    let (n, rest) = rest.split_once('>').ok_or("unterminated <N>")?;
    let priority: u8 = n.parse().map_err(|_| format!("priority {n:?}"))?;
    if priority > 7 || n.len() != 1 {
        return Err(format!("priority {n:?} is not 0-7"));
    }
    let mut fields = rest.split(' ');
    let mut take = |key: &str| -> Result<String, String> {
        let f = fields.next().unwrap_or("");
        f.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("expected {key}=..., got {f:?}"))
    };
    let role = take("role")?;
    let level = take("level")?;
    let event = take("event")?;
    let want = match level.as_str() {
        "error" => 3,
        "warning" => 4,
        "info" => 6,
        "debug" => 7,
        other => return Err(format!("unknown level {other:?}")),
    };
    if priority != want {
        return Err(format!("<{priority}> does not match level={level}"));
    }
    Ok(Line {
        priority,
        role,
        level,
        event,
    })
}

/// Every line of `path` parsed; panics on the first one that is not journal-formatted.
fn journal_lines(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).expect("read stderr log");
    assert!(!text.is_empty(), "nothing was logged");
    assert!(text.ends_with('\n'), "last line is cut");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            parse(l).unwrap_or_else(|e| panic!("line {}: {e}:\n{l}\n--- whole log\n{text}", i + 1))
        })
        .collect()
}

/// A command whose stderr is "the journal": JOURNAL_STREAM set, stderr to a file.
fn journal_cmd(args: &[&str], log: &Path) -> Command {
    let mut cmd = Command::new(common::bin());
    cmd.args(args)
        .env("JOURNAL_STREAM", "8:424242")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("GLB_DEBUG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    cmd
}

/// GET `path` until 200 (bounded): the stack may still be starting.
fn get_200(addr: SocketAddr, path: &str, within: Duration) {
    let end = Instant::now() + within;
    wait_for_port(addr, within);
    loop {
        match get(addr, path) {
            Ok(r) if r.status == 200 => return,
            other if Instant::now() >= end => panic!("GET {addr}{path}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until `log` has a line with `needle` (bounded).
fn wait_log(log: &Path, needle: &str, within: Duration) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no {needle:?} in the log within {within:?}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn whole_stack_logs_with_priorities_roles_and_events() {
    let dir = TempDir::new("systemd-log-run");
    let lb = free_port_range(2);
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "worker: 2\npool: 2\nstats-dir: {}\navg-delay: 5\nfailure: 0\n\
             load-balancer-port: {lb}\nworker-port: {}\ninstance: glb-log-{}\n\
             listen-address: 127.0.0.1\nruntime: process\nadmin-port: {}\n\
             drain-timeout-ms: 3000\n",
            dir.join("stats.db").display(),
            free_port_range(2),
            std::process::id(),
            free_port()
        ),
    )
    .expect("write config");
    let log = dir.join("stderr.log");
    let mut run = Proc::start_cmd(
        "run",
        &mut journal_cmd(&["run", "--config", config.to_str().expect("utf-8")], &log),
    );
    for i in 0..2 {
        let addr: SocketAddr = ([127, 0, 0, 1], lb + i).into();
        get_200(addr, "/api/v1/hello", Duration::from_secs(60));
        get_200(addr, "/api/v1/hello", Duration::from_secs(5));
    }
    run.signal(1);
    wait_log(&log, "event=reloaded", Duration::from_secs(30));
    run.signal(15);
    assert_eq!(
        run.wait_exit(Duration::from_secs(60)),
        Some(0),
        "exit after SIGTERM"
    );

    let lines = journal_lines(&log);
    let roles: BTreeSet<&str> = lines.iter().map(|l| l.role.as_str()).collect();
    assert!(roles.contains("supervisor"), "roles: {roles:?}");
    for lb in ["lb.0", "lb.1"] {
        assert!(roles.contains(lb), "no line from {lb}: {roles:?}");
    }
    let workers = roles.iter().filter(|r| r.starts_with("worker.")).count();
    assert!(workers >= 2, "lines from {workers} workers: {roles:?}");
    // A clean start, reload and stop logs no error (`journalctl -p err` stays empty).
    // Warnings are shown, not failed on: a slow health check on a loaded machine is one.
    let errors: Vec<&Line> = lines.iter().filter(|l| l.priority <= 3).collect();
    assert!(errors.is_empty(), "errors on a clean run: {errors:#?}");
    for l in lines.iter().filter(|l| l.priority == 4) {
        println!("warning on a clean run: {l:?}");
    }
    let events: BTreeSet<&str> = lines.iter().map(|l| l.event.as_str()).collect();
    for e in ["ready", "reloaded"] {
        assert!(events.contains(e), "no event={e}: {events:?}");
    }
    assert!(
        lines.iter().all(|l| l.level != "debug"),
        "debug lines without GLB_DEBUG=1"
    );
}

#[test]
fn standalone_worker_and_proxy_log_for_the_journal() {
    let dir = TempDir::new("systemd-log-standalone");
    let wport = free_port();
    let wlog = dir.join("worker.log");
    let db = dir.join("stats.db");
    let mut worker = Proc::start_cmd(
        "worker",
        &mut journal_cmd(
            &[
                "worker",
                "--listen",
                "127.0.0.1",
                "--port",
                &wport.to_string(),
                "--db",
                db.to_str().expect("utf-8"),
                "--avg-delay",
                "1",
                "--failure",
                "0",
            ],
            &wlog,
        ),
    );
    let waddr: SocketAddr = ([127, 0, 0, 1], wport).into();
    wait_for_port(waddr, Duration::from_secs(30));
    let pport = free_port();
    let plog = dir.join("proxy.log");
    let mut proxy = Proc::start_cmd(
        "proxy",
        &mut journal_cmd(
            &[
                "proxy",
                "--listen",
                &format!("127.0.0.1:{pport}"),
                "--backend",
                &waddr.to_string(),
            ],
            &plog,
        ),
    );
    let paddr: SocketAddr = ([127, 0, 0, 1], pport).into();
    get_200(paddr, "/api/v1/hello", Duration::from_secs(30));
    // A request the proxy must refuse shows up as a line too, still journal-formatted.
    let bad = common::raw_request(paddr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .expect("bad request");
    assert_eq!(bad.status, 400);
    proxy.signal(15);
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(40)),
        Some(0),
        "proxy exit"
    );
    worker.signal(15);
    assert_eq!(
        worker.wait_exit(Duration::from_secs(40)),
        Some(0),
        "worker exit"
    );

    let w = journal_lines(&wlog);
    assert!(w.iter().all(|l| l.role.starts_with("worker")), "{w:#?}");
    let p = journal_lines(&plog);
    assert!(p.iter().all(|l| l.role == "proxy"), "{p:#?}");
}

#[test]
fn config_error_is_one_error_priority_line() {
    let dir = TempDir::new("systemd-log-bad");
    let config = dir.join("config.yaml");
    std::fs::write(&config, "worker: 2\nfailure: 120\n").expect("write config");
    let log = dir.join("stderr.log");
    let mut run = Proc::start_cmd(
        "run",
        &mut journal_cmd(&["run", "--config", config.to_str().expect("utf-8")], &log),
    );
    assert_eq!(run.wait_exit(Duration::from_secs(20)), Some(2));
    let lines = journal_lines(&log);
    let errors: Vec<&Line> = lines.iter().filter(|l| l.priority == 3).collect();
    assert_eq!(errors.len(), 1, "one error line: {lines:#?}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("config.yaml:2") && text.contains("failure"),
        "the error names file, line and key: {text}"
    );
}

#[test]
fn parse_rejects_what_journald_would_misfile() {
    assert!(parse("<6>role=supervisor level=info event=ready workers=2").is_ok());
    assert!(parse("role=supervisor level=info event=ready").is_err());
    assert!(parse("<4>role=supervisor level=info event=ready").is_err());
    assert!(parse("<9>role=supervisor level=info event=x").is_err());
    assert!(parse("<6>level=info role=supervisor event=x").is_err());
    assert!(parse("<6>role=supervisor level=info").is_err());
    assert!(parse("goloadbalancer: unknown command").is_err());
}
