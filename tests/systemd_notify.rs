//! sd_notify as systemd sees it: the test owns NOTIFY_SOCKET (with SO_PASSCRED, so each
//! datagram carries its sender's pid), starts `goloadbalancer run` (process runtime) as
//! systemd would, and asserts the exact sequence for start, watchdog, reload and stop.

mod common;

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TempDir, free_port, free_port_range, get};
use goloadbalancer::sys::notify::monotonic_usec;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};

/// One datagram received on NOTIFY_SOCKET.
#[derive(Debug, Clone)]
struct Note {
    /// Sender pid from SCM_CREDENTIALS.
    pid: i32,
    /// CLOCK_MONOTONIC (µs) when the test read it.
    at_usec: u64,
    /// The `KEY=value` lines.
    fields: Vec<(String, String)>,
}

impl Note {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }

    /// A datagram that only reports (STATUS=, WATCHDOG=1, EXTEND_TIMEOUT_USEC=): allowed
    /// anywhere.
    fn is_routine(&self) -> bool {
        self.fields.iter().all(|(k, v)| {
            k == "STATUS" || k == "EXTEND_TIMEOUT_USEC" || (k == "WATCHDOG" && v == "1")
        })
    }
}

/// The systemd side: a datagram socket that reports each sender's pid.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<Note>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        setsockopt(&sock, sockopt::PassCred, &true).expect("SO_PASSCRED");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        NotifySocket {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// Next datagram, or None after `wait`.
    fn recv(&mut self, wait: Duration) -> Option<Note> {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!(UnixCredentials);
            match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) {
                Ok(msg) => {
                    let mut pid = 0;
                    for c in msg.cmsgs().expect("control messages") {
                        if let ControlMessageOwned::ScmCredentials(cred) = c {
                            pid = cred.pid();
                        }
                    }
                    let n = msg.bytes;
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let fields = text
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(|l| {
                            let (k, v) = l
                                .split_once('=')
                                .unwrap_or_else(|| panic!("not KEY=value in {text:?}"));
                            (k.to_string(), v.to_string())
                        })
                        .collect();
                    let note = Note {
                        pid,
                        at_usec: monotonic_usec(),
                        fields,
                    };
                    println!("notify from pid {pid}: {text:?}");
                    self.seen.push(note.clone());
                    return Some(note);
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                    if Instant::now() >= end {
                        return None;
                    }
                }
                Err(e) => panic!("recvmsg on the notify socket: {e}"),
            }
        }
    }

    /// Reads until a datagram has `key=value`; every datagram before it must be routine.
    /// Returns that datagram.
    fn expect(&mut self, key: &str, value: &str, within: Duration, what: &str) -> Note {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let Some(note) = self.recv(left) else {
                panic!(
                    "{what}: no {key}={value} within {within:?}; seen: {:#?}",
                    self.seen
                );
            };
            if note.has(key, value) {
                return note;
            }
            assert!(
                note.is_routine(),
                "{what}: {note:?} arrived before {key}={value}"
            );
        }
    }
}

/// Where the stack under test listens.
struct Ports {
    lb: Vec<SocketAddr>,
    worker_base: u16,
    admin: u16,
}

fn write_config(path: &Path, dir: &Path, ports: &Ports, workers: usize) {
    let yaml = format!(
        "worker: {workers}\n\
         pool: {pool}\n\
         stats-dir: {db}\n\
         avg-delay: 5\n\
         failure: 0\n\
         load-balancer-port: {lb}\n\
         worker-port: {wp}\n\
         instance: glb-notify-{pid}\n\
         listen-address: 127.0.0.1\n\
         worker-address: 127.0.0.1\n\
         runtime: process\n\
         admin-port: {admin}\n\
         drain-timeout-ms: 3000\n\
         worker-start-timeout-ms: 20000\n\
         health-interval-ms: 500\n",
        pool = ports.lb.len(),
        db = dir.join("stats.db").display(),
        lb = ports.lb[0].port(),
        wp = ports.worker_base,
        pid = std::process::id(),
        admin = ports.admin,
    );
    std::fs::write(path, yaml).expect("write config");
}

/// Starts `goloadbalancer run` the way systemd does for Type=notify with WatchdogSec=1s:
/// NOTIFY_SOCKET, WATCHDOG_USEC, and WATCHDOG_PID naming the main process itself (the shell
/// execs into the binary, keeping its pid). stderr goes to `log`.
fn start(config: &Path, notify: &Path, log: &Path) -> Proc {
    let log_file = std::fs::File::create(log).expect("log file");
    Proc::start_cmd(
        "run",
        Command::new("sh")
            .args([
                "-c",
                "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" run --config \"$1\"",
                common::bin(),
            ])
            .arg(config)
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log_file),
    )
}

/// GET through every LB port answers 200 with a hello body; every worker is healthy.
fn assert_serving(ports: &Ports, workers: usize, when: &str) {
    for lb in &ports.lb {
        let r = get(*lb, "/api/v1/hello").unwrap_or_else(|e| panic!("{when}: GET {lb}: {e}"));
        assert_eq!(r.status, 200, "{when}: {lb} answered {}", r.text());
        assert!(r.text().contains("hello from"), "{when}: {}", r.text());
    }
    for i in 0..workers as u16 {
        let addr: SocketAddr = ([127, 0, 0, 1], ports.worker_base + i).into();
        let r = get(addr, "/healthz").unwrap_or_else(|e| panic!("{when}: worker {addr}: {e}"));
        assert_eq!(r.status, 200, "{when}: worker {addr} not healthy");
    }
}

fn show_log(log: &Path) {
    if let Ok(text) = std::fs::read_to_string(log) {
        println!("--- goloadbalancer stderr\n{text}");
    }
}

#[test]
fn start_watchdog_reload_stop_sequence() {
    let dir = TempDir::new("systemd-notify");
    let mut notify = NotifySocket::bind(dir.path());
    let lb_base = free_port_range(2);
    let ports = Ports {
        lb: (0..2)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], lb_base + i)))
            .collect(),
        worker_base: free_port_range(3),
        admin: free_port(),
    };
    let config = dir.join("config.yaml");
    write_config(&config, dir.path(), &ports, 2);
    let log = dir.join("stderr.log");
    let mut run = start(&config, &notify.path, &log);
    let main_pid = run.pid();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Start: nothing but STATUS/WATCHDOG until READY=1, and at that moment every LB
        // port serves and every first worker is healthy.
        let ready = notify.expect("READY", "1", Duration::from_secs(90), "start");
        assert_serving(&ports, 2, "at READY=1");
        let status = ready.get("STATUS").unwrap_or("");
        assert!(
            status.contains("workers 2/2"),
            "READY=1 carries the operator's status line, got STATUS={status:?}"
        );

        // Running: WATCHDOG=1 keeps coming (every 0.5 s for WATCHDOG_USEC=1 s).
        for n in 0..4 {
            notify.expect(
                "WATCHDOG",
                "1",
                Duration::from_secs(10),
                &format!("watchdog {n}"),
            );
        }

        // Reload (systemctl reload = SIGHUP): RELOADING=1 with MONOTONIC_USEC taken after
        // the signal was sent, then READY=1; the new worker count shows in STATUS=.
        write_config(&config, dir.path(), &ports, 3);
        let before = monotonic_usec();
        run.signal(1);
        let reloading = notify.expect("RELOADING", "1", Duration::from_secs(20), "reload");
        let usec: u64 = reloading
            .get("MONOTONIC_USEC")
            .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
            .parse()
            .expect("MONOTONIC_USEC is a number");
        assert!(
            before <= usec && usec <= reloading.at_usec,
            "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC between SIGHUP ({before}) and receipt ({})",
            reloading.at_usec
        );
        let ready = notify.expect("READY", "1", Duration::from_secs(30), "after reload");
        assert_serving(&ports, 2, "after the reload's READY=1");
        let end = Instant::now() + Duration::from_secs(60);
        let scaled = |n: &Note| n.get("STATUS").is_some_and(|s| s.contains("workers 3/3"));
        while !scaled(&ready) {
            let left = end.saturating_duration_since(Instant::now());
            let note = notify
                .recv(left)
                .unwrap_or_else(|| panic!("STATUS never showed workers 3/3: {:#?}", notify.seen));
            assert!(note.is_routine(), "after reload: unexpected {note:?}");
            if scaled(&note) {
                break;
            }
        }
        assert_serving(&ports, 3, "after scaling to 3");

        // Stop (systemctl stop = SIGTERM): STOPPING=1 first, then exit 0; nothing after
        // but routine datagrams.
        run.signal(15);
        notify.expect("STOPPING", "1", Duration::from_secs(10), "stop");
        // Optional: more time for the stop than TimeoutStopSec; never less than the drain.
        for n in notify.seen.iter() {
            if let Some(v) = n.get("EXTEND_TIMEOUT_USEC") {
                let usec: u64 = v.parse().expect("EXTEND_TIMEOUT_USEC is a number");
                assert!(
                    usec >= 3_000_000,
                    "EXTEND_TIMEOUT_USEC={usec} < the 3 s drain"
                );
            }
        }
        let code = run.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(0), "exit status after SIGTERM");
        while let Some(note) = notify.recv(Duration::from_millis(300)) {
            assert!(note.is_routine(), "after STOPPING=1: {note:?}");
        }

        // Only the main process ever spoke: not an LB child, not a worker.
        let others: Vec<&Note> = notify.seen.iter().filter(|n| n.pid != main_pid).collect();
        assert!(
            others.is_empty(),
            "datagrams from pids other than {main_pid}: {others:#?}"
        );
        let keys: std::collections::BTreeSet<&str> = notify
            .seen
            .iter()
            .flat_map(|n| n.fields.iter().map(|(k, _)| k.as_str()))
            .filter(|k| *k != "EXTEND_TIMEOUT_USEC")
            .collect();
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            [
                "MONOTONIC_USEC",
                "READY",
                "RELOADING",
                "STATUS",
                "STOPPING",
                "WATCHDOG"
            ]
        );
        let readies = notify.seen.iter().filter(|n| n.has("READY", "1")).count();
        assert_eq!(readies, 2, "one READY=1 at start, one after the reload");
    }));
    if let Err(e) = result {
        show_log(&log);
        std::panic::resume_unwind(e);
    }
}

#[test]
fn broken_config_exits_2_without_ready() {
    let dir = TempDir::new("systemd-notify-bad");
    let mut notify = NotifySocket::bind(dir.path());
    let config = dir.join("config.yaml");
    std::fs::write(&config, "worker: 2\nfailure: 120\n").expect("write config");
    let log = dir.join("stderr.log");
    let mut run = start(&config, &notify.path, &log);
    let code = run.wait_exit(Duration::from_secs(20));
    while notify.recv(Duration::from_millis(200)).is_some() {}
    if code != Some(2) {
        show_log(&log);
    }
    assert_eq!(code, Some(2), "a config error is exit 2");
    let ready: Vec<&Note> = notify.seen.iter().filter(|n| n.has("READY", "1")).collect();
    assert!(ready.is_empty(), "READY=1 on a broken config: {ready:?}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("failure"), "the error names the key: {text}");
}
