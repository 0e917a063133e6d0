//! Socket activation, black-box: the test plays systemd's part. It binds the LB and admin
//! listeners itself (plus one the config does not name), passes them to `goloadbalancer run`
//! as fds 3.. with LISTEN_FDS / LISTEN_FDNAMES and LISTEN_PID set to the supervisor's own pid
//! (`sh -c 'LISTEN_PID=$$ exec ...'`: exec keeps the shell's pid), and keeps its own copies,
//! as systemd does. The ports are then taken, so a supervisor that bound instead of adopting
//! could not start at all.

mod common;
#[path = "supervisor_support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Proc;
use support::*;

const SIGTERM: i32 = 15;

/// The sockets a socket unit would hold, duplicated to fds >= 100 (so the moves to 3.. in the
/// child never overwrite one another), with their names.
struct Held {
    listeners: Vec<TcpListener>,
    high: Vec<OwnedFd>,
    names: Vec<String>,
}

impl Held {
    fn bind(addrs: &[(SocketAddr, &str)]) -> Held {
        let mut held = Held {
            listeners: Vec::new(),
            high: Vec::new(),
            names: Vec::new(),
        };
        for &(addr, name) in addrs {
            let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            let fd = nix::fcntl::fcntl(&l, nix::fcntl::F_DUPFD_CLOEXEC(100)).expect("dup");
            // SAFETY: fcntl just returned this new fd; nothing else owns it.
            held.high
                .push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            held.listeners.push(l);
            held.names.push(name.to_string());
        }
        held
    }

    /// `socket:[inode]` of each held socket (what /proc/<pid>/fd links name).
    fn inodes(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|l| {
                std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd()))
                    .expect("readlink")
                    .display()
                    .to_string()
            })
            .collect()
    }

    /// `goloadbalancer run --config <config>` with these sockets as fds 3.. and the LISTEN_*
    /// variables naming its own pid.
    fn command(&self, config: &std::path::Path, log: &std::path::Path) -> Command {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", common::bin()])
            .args(["run", "--config"])
            .arg(config)
            .env("LISTEN_FDS", self.high.len().to_string())
            .env("LISTEN_FDNAMES", self.names.join(":"))
            .stdout(Stdio::from(logf.try_clone().expect("dup")))
            .stderr(Stdio::from(logf));
        let fds: Vec<i32> = self.high.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: between fork and exec only dup2 runs (async-signal-safe); the targets 3..
        // are below every source (>= 100), and dup2's copies are not close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in fds.iter().enumerate() {
                    if nix::libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Pids of `goloadbalancer worker` processes whose parent is `parent`.
fn worker_processes(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.split(|&b| b == 0).nth(1) == Some(b"worker") {
            found.push(pid);
        }
    }
    found
}

fn start_activated(s: &mut Stack, held: &Held) {
    let mut cmd = held.command(&s.config, &s.log);
    cmd.current_dir(s.dir.path());
    s.proc = Some(Proc::start_cmd("supervisor", &mut cmd));
    s.wait_ready();
}

#[test]
fn passed_sockets_are_served_and_nothing_else_sees_them() {
    let mut s = Stack::new("act-serve", StackSpec::seed("process"));
    let extra = SocketAddr::from(([127, 0, 0, 1], s.lb_port + 2));
    let held = Held::bind(&[
        (s.lb(0), "lb0"),
        (s.admin(), "admin"),
        (s.lb(1), "lb1"),
        (extra, "stray"),
    ]);
    start_activated(&mut s, &held);
    for i in 0..6 {
        hello(s.lb(i % 2)).unwrap_or_else(|e| panic!("hello via {}: {e:?}", s.lb(i % 2)));
    }
    let log = s.log_text();
    for (addr, name) in [(s.lb(0), "lb0"), (s.lb(1), "lb1"), (s.admin(), "admin")] {
        let line = format!("event=listener_inherited addr={addr} name={name}");
        assert!(log.contains(&line), "no {line:?}\n{}", s.log_tail());
    }
    assert!(
        log.contains("event=sockets_passed count=4"),
        "{}",
        s.log_tail()
    );
    assert!(
        log.lines()
            .any(|l| l.contains("event=passed_sockets_unused")
                && l.contains(&format!("{extra}(stray)"))),
        "the socket nothing matched is reported\n{}",
        s.log_tail()
    );
    // Worker processes are exec'd: neither the variables nor the sockets reach them.
    let workers = worker_processes(s.pid());
    assert_eq!(workers.len(), 3, "three worker processes");
    let inodes = held.inodes();
    for pid in workers {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(
            !environ
                .split(|&b| b == 0)
                .any(|v| v.starts_with(b"LISTEN_")),
            "worker {pid} inherited a LISTEN_ variable"
        );
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .flatten()
        {
            let target = std::fs::read_link(fd.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            assert!(
                !inodes.contains(&target),
                "worker {pid} holds a passed socket ({target}): not close-on-exec"
            );
        }
    }
}

#[test]
fn a_restart_on_held_sockets_refuses_and_fails_nothing() {
    let mut s = Stack::new("act-restart", StackSpec::seed("process"));
    let held = Held::bind(&[(s.lb(0), "lb"), (s.lb(1), "lb"), (s.admin(), "admin")]);
    start_activated(&mut s, &held);
    let load = Load::start(vec![s.lb(0), s.lb(1)], 4);
    std::thread::sleep(Duration::from_millis(1000));
    // systemctl restart: the old supervisor drains and exits while connections keep coming
    // (they queue on the held sockets), then a new one takes the same fds and answers them.
    s.signal(SIGTERM);
    let mut old = s.proc.take().expect("supervisor");
    assert_eq!(
        old.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        s.log_tail()
    );
    start_activated(&mut s, &held);
    std::thread::sleep(Duration::from_millis(1000));
    let c = load.finish();
    eprintln!("restart on held sockets under load: {c:?}");
    assert_eq!(c.refused, 0, "refused: {:?}", c.errors);
    assert_eq!(c.failed, 0, "failed: {:?}", c.errors);
    assert!(c.ok > 0);
    assert_eq!(
        s.log_text().matches("event=listener_inherited").count(),
        6,
        "both supervisors adopted all three sockets\n{}",
        s.log_tail()
    );
}
