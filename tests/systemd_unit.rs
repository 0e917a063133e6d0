//! The systemd unit: `systemd-analyze verify` accepts it, and it says what the operator
//! contract needs (notify, reload by SIGHUP, a drain-friendly stop, the state directory).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use goloadbalancer::config::Config;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_file("systemd/goloadbalancer.service")).expect("read the unit")
}

/// `[Section] Key=value` pairs; a key given twice keeps every value in order.
fn parse_unit(text: &str) -> HashMap<String, Vec<String>> {
    let mut section = String::new();
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line in the unit: {line:?}"));
        map.entry(format!("{section}.{}", k.trim()))
            .or_default()
            .push(v.trim().to_string());
    }
    map
}

fn one<'a>(unit: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected exactly one value, got {other:?}"),
    }
}

/// systemd time span in seconds: "90s", "90", "1min 30s", "2min".
fn seconds(span: &str) -> u64 {
    let mut total = 0;
    for part in span.split_whitespace() {
        let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        let n: u64 = digits
            .parse()
            .unwrap_or_else(|_| panic!("time span {span:?}"));
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "min" | "m" => n * 60,
            "h" => n * 3600,
            unit => panic!("time unit {unit:?} in {span:?}"),
        };
    }
    total
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Ok(found) = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        println!("SKIP: no sh to look for systemd-analyze");
        return;
    };
    if !found.status.success() {
        println!(
            "SKIP: systemd-analyze is not installed (apt-get install systemd); CI installs it"
        );
        return;
    }
    // verify insists that ExecStart's binary exists: a copy of the unit, identical but for
    // that path, points at the binary under test. Same file name, so the unit name matches.
    let dir = TempDir::new("systemd-unit-verify");
    let unit = dir.join("goloadbalancer.service");
    let text = unit_text();
    assert!(text.contains("/usr/local/bin/goloadbalancer "));
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/goloadbalancer", common::bin()),
    )
    .expect("write unit copy");
    // The socket unit beside it (the service wants it; verify loads it from the same dir).
    let socket = dir.join("goloadbalancer.socket");
    std::fs::copy(repo_file("systemd/goloadbalancer.socket"), &socket).expect("socket copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .arg(&socket)
        .output()
        .expect("run systemd-analyze");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("systemd-analyze verify:\n{stdout}{stderr}");
    assert!(out.status.success(), "verify failed:\n{stdout}{stderr}");
    // verify exits 0 on unknown keys and bad values ("ignoring"): any line about our unit
    // is a defect.
    let about_us: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("goloadbalancer"))
        .collect();
    assert!(about_us.is_empty(), "verify complained: {about_us:#?}");
}

#[test]
fn unit_is_notify_with_sighup_reload_and_a_draining_stop() {
    let unit = parse_unit(&unit_text());
    assert_eq!(one(&unit, "Service.Type"), "notify");
    assert_eq!(one(&unit, "Service.NotifyAccess"), "main");
    assert_eq!(
        one(&unit, "Service.ExecStart"),
        "/usr/local/bin/goloadbalancer run --config /etc/goloadbalancer/config.yaml"
    );
    assert_eq!(one(&unit, "Service.ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one(&unit, "Service.Restart"), "on-failure");
    // Exit 2 = invalid config (as check-config): no restart loop on a typo.
    assert_eq!(one(&unit, "Service.RestartPreventExitStatus"), "2");
    // SIGTERM to the supervisor alone: it drains its LB children and workers in order.
    assert_eq!(one(&unit, "Service.KillMode"), "mixed");
    assert_eq!(one(&unit, "Service.KillSignal"), "SIGTERM");
    let watchdog = seconds(one(&unit, "Service.WatchdogSec"));
    assert!(
        (10..=120).contains(&watchdog),
        "WatchdogSec={watchdog}s: the loop pings every half of it"
    );
    // The stop timeout must leave the drain its full time, plus stopping the workers.
    let drain = Config::default().drain_timeout_ms / 1000;
    let stop = seconds(one(&unit, "Service.TimeoutStopSec"));
    assert!(
        stop >= drain + 30,
        "TimeoutStopSec={stop}s must exceed the {drain}s drain timeout with room"
    );
    let start = seconds(one(&unit, "Service.TimeoutStartSec"));
    let first_workers = Config::default().worker_start_timeout_ms / 1000;
    assert!(
        start > first_workers,
        "TimeoutStartSec={start}s must exceed worker-start-timeout-ms"
    );
}

#[test]
fn unit_keeps_state_in_the_state_directory_and_is_hardened() {
    let unit = parse_unit(&unit_text());
    assert_eq!(one(&unit, "Service.StateDirectory"), "goloadbalancer");
    assert_eq!(one(&unit, "Service.WorkingDirectory"), "%S/goloadbalancer");
    // The default stats-dir is relative, so it lands in the state directory.
    assert!(Config::default().stats_dir.is_relative());
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("User", "goloadbalancer"),
    ] {
        assert_eq!(one(&unit, &format!("Service.{key}")), want, "{key}");
    }
    // Capabilities: binding low ports, and CAP_SETGID so LB children can drop the docker group.
    assert_eq!(
        one(&unit, "Service.AmbientCapabilities"),
        "CAP_NET_BIND_SERVICE CAP_SETGID"
    );
    assert_eq!(
        one(&unit, "Service.CapabilityBoundingSet"),
        "CAP_NET_BIND_SERVICE CAP_SETGID"
    );
    // The docker group comes from install.sh's drop-in, only where it exists: naming a
    // missing group here would make the unit fail to start (216/GROUP).
    assert!(!unit.contains_key("Service.SupplementaryGroups"));
    assert_eq!(one(&unit, "Install.WantedBy"), "multi-user.target");
}

#[test]
fn socket_unit_listens_where_the_shipped_config_does_and_the_service_wants_it() {
    let text = std::fs::read_to_string(repo_file("systemd/goloadbalancer.socket")).expect("socket");
    let socket = parse_unit(&text);
    let config = goloadbalancer::config::load(&repo_file("config.yaml")).expect("config.yaml");
    let want: Vec<String> = config
        .listen_addresses()
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(socket["Socket.ListenStream"], want);
    assert_eq!(one(&socket, "Install.WantedBy"), "sockets.target");
    // Same name as the service: it activates it, and the service gets its fds.
    assert!(!socket.contains_key("Socket.Service"));
    assert!(!socket.contains_key("Socket.Accept"));
    let unit = parse_unit(&unit_text());
    // Wanted, not required: without the socket unit the supervisor binds its ports itself.
    assert!(
        unit["Unit.Wants"]
            .iter()
            .any(|w| w == "goloadbalancer.socket")
    );
    assert!(!unit.contains_key("Unit.Requires"));
    assert!(
        unit["Unit.After"]
            .iter()
            .any(|w| w.split_whitespace().any(|u| u == "goloadbalancer.socket"))
    );
    assert_eq!(one(&unit, "Install.Also"), "goloadbalancer.socket");
}

#[test]
fn time_spans_parse_like_systemd() {
    assert_eq!(seconds("90s"), 90);
    assert_eq!(seconds("90"), 90);
    assert_eq!(seconds("1min 30s"), 90);
    assert_eq!(seconds("2h"), 7200);
}
