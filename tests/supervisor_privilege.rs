//! Least privilege, black-box: an LB child of the real supervisor has no supplementary group,
//! no capability, no_new_privs, and (the test running as root) runs as the unprivileged
//! `user`; with its credentials the docker socket refuses. Worker containers run with the
//! hardening flags, not as root, and still serve hello and stats.

mod common;
#[path = "supervisor_support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// `Key:\tvalue` lines of /proc/<pid>/status.
fn proc_status(pid: i64) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The four ids of a `Uid:` / `Gid:` line (real, effective, saved, filesystem).
fn ids(line: &str) -> Vec<u32> {
    line.split_whitespace()
        .map(|n| n.parse().expect("id"))
        .collect()
}

/// Whether a process with exactly these credentials (uid, gid, supplementary groups, no
/// capability) can connect to the docker socket: `curl --unix-socket` (exit 7 = could not
/// connect). Only root can take on other credentials, so None when the test is not root.
fn docker_socket_connects(uid: u32, gid: u32, groups: Vec<u32>) -> Option<bool> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        "10",
        "--unix-socket",
    ])
    .arg(DOCKER_SOCKET)
    .arg("http://docker/_ping")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: between fork and exec only set*id/setgroups run (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            let groups: Vec<nix::unistd::Gid> = groups
                .iter()
                .map(|&g| nix::unistd::Gid::from_raw(g))
                .collect();
            nix::unistd::setgroups(&groups)?;
            let g = nix::unistd::Gid::from_raw(gid);
            nix::unistd::setresgid(g, g, g)?;
            let u = nix::unistd::Uid::from_raw(uid);
            nix::unistd::setresuid(u, u, u)?;
            Ok(())
        });
    }
    let status = cmd.status().ok()?;
    Some(status.success())
}

#[test]
fn lb_children_have_no_groups_no_capabilities_and_cannot_reach_docker() {
    let s = Stack::start_ready("priv-lb", StackSpec::seed("process"));
    let children = child_pids(&s.status());
    assert_eq!(children.len(), 2, "two LB children");
    let root = nix::unistd::geteuid().is_root();
    let nobody = goloadbalancer::sys::privilege::lookup_user("nobody").expect("nobody");
    for pid in children {
        // /status lists a child from its fork; it has dropped once it says it started.
        let started = format!("event=lb_child_started pid={pid} ");
        wait_until(
            "the LB child logged its start",
            Duration::from_secs(10),
            || s.log_text().contains(&started),
        );
        let st = proc_status(pid);
        let uid = ids(&st["Uid"]);
        let gid = ids(&st["Gid"]);
        if root {
            // Run as root, the supervisor's children become `user` (default nobody).
            assert_eq!(uid, vec![nobody.uid; 4], "lb {pid} Uid");
            assert_eq!(gid, vec![nobody.gid; 4], "lb {pid} Gid");
            assert_eq!(st["CapBnd"], "0000000000000000", "lb {pid} CapBnd");
        } else {
            let me = nix::unistd::getuid().as_raw();
            assert_eq!(uid, vec![me; 4], "lb {pid} keeps the supervisor's uid");
        }
        assert_eq!(st["Groups"], "", "lb {pid} supplementary groups");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(st[cap], "0000000000000000", "lb {pid} {cap}");
        }
        assert_eq!(st["NoNewPrivs"], "1", "lb {pid} NoNewPrivs");
        if std::path::Path::new(DOCKER_SOCKET).exists() {
            // Control: the same probe with the supervisor's (root's) credentials connects.
            match (
                docker_socket_connects(0, 0, Vec::new()),
                docker_socket_connects(uid[0], gid[0], Vec::new()),
            ) {
                (Some(as_root), Some(as_child)) => {
                    assert!(as_root, "the probe cannot reach docker even as root");
                    assert!(!as_child, "lb {pid}'s credentials reach the docker socket");
                }
                _ => eprintln!("SKIP docker socket probe: not root"),
            }
        }
    }
    // Still serving after the drop.
    for i in 0..4 {
        hello(s.lb(i % 2)).unwrap_or_else(|e| panic!("hello via lb {}: {e:?}", i % 2));
    }
    assert!(!s.log_text().contains("event=privileges_kept") || !root);
}

/// `docker inspect -f <format> <id>`.
fn inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn worker_containers_are_hardened_and_still_serve() {
    if skip_without_docker("worker_containers_are_hardened") {
        return;
    }
    let mut spec = StackSpec::seed("docker");
    spec.workers = 2;
    spec.pool = 1;
    spec.extra = "worker-pids-limit: 64\nworker-memory-mb: 96\n".into();
    let s = Stack::start_ready("priv-docker", spec);
    let ids = containers(&s.instance);
    assert_eq!(ids.len(), 2, "two worker containers");
    let db_dir = s.db().parent().expect("dir").display().to_string();
    for id in &ids {
        assert_eq!(inspect(id, "{{.HostConfig.CapDrop}}"), "[ALL]", "{id}");
        assert_eq!(
            inspect(id, "{{.HostConfig.SecurityOpt}}"),
            "[no-new-privileges]",
            "{id}"
        );
        assert_eq!(inspect(id, "{{.HostConfig.ReadonlyRootfs}}"), "true");
        assert_eq!(inspect(id, "{{.HostConfig.PidsLimit}}"), "64");
        assert_eq!(
            inspect(id, "{{.HostConfig.Memory}}"),
            (96u64 << 20).to_string()
        );
        let user = inspect(id, "{{.Config.User}}");
        let uid: u32 = user
            .split(':')
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("numeric user, got {user:?}"));
        assert_ne!(uid, 0, "container {id} runs as root");
        // The only mount: the database's own directory, at the same path.
        assert_eq!(
            inspect(id, "{{range .Mounts}}{{.Source}}->{{.Destination}} {{end}}"),
            format!("{db_dir}->{db_dir}"),
            "{id}"
        );
    }
    // Serves in a read-only container: hello, and stats written beside the database.
    let mut answered = 0;
    for _ in 0..10 {
        hello(s.lb(0)).unwrap_or_else(|e| panic!("hello: {e:?}"));
        answered += 1;
    }
    let (total, ok) = stats_totals(s.lb(0)).expect("/worker/stats through the LB");
    assert!(total >= answered && ok >= answered, "stats {total}/{ok}");
}
