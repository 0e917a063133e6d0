//! The admin endpoint under idle connections (issue 13, defect 7), black-box: the real
//! `goloadbalancer run` with the process runtime. Connections held open without a request
//! must not stop `/status` and `/metrics` from answering, and are closed by the server.

mod common;
#[path = "supervisor_support/mod.rs"]
mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use support::{Stack, StackSpec};

/// Idle connections the test holds: more than the endpoint keeps at once.
const IDLE: usize = 300;

#[test]
fn answers_with_300_idle_connections_held_open() {
    let mut spec = StackSpec::seed("process");
    spec.workers = 1;
    spec.pool = 1;
    spec.worker_ports = 1;
    let stack = Stack::start_ready("admin-idle", spec);
    let admin = stack.admin();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect_timeout(&admin, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    // Every request comes after all of them, each on a connection of its own.
    for path in ["/status", "/metrics", "/status", "/metrics"] {
        let r = support::try_get(admin, path)
            .unwrap_or_else(|e| panic!("GET {path} with {IDLE} idle connections open: {e}"));
        assert_eq!(r.status, 200, "GET {path}");
        assert!(!r.body.is_empty(), "GET {path}: empty body");
    }
    let status = stack.status();
    assert_eq!(status["state"], "running", "{status}");
    // None is held forever: the server closes each (end of file, or a reset).
    for (i, mut s) in idle.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("idle connection {i} got {n} bytes: {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("idle connection {i} still open: {e}"),
        }
    }
}
