//! Balancing and health: weighted and least-connections, active health checks ejecting and
//! returning a backend, passive ejection on refused connections, and the control channel
//! (backend set changes, metrics, drain) driven through `proxy::run_loop` in a thread.

mod common;
mod proxy_support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backend::{Backend, Options, Step, response};
use common::{connect, read_response};
use goloadbalancer::proxy::control::{BackendSpec, BackendState, Down, Up};
use goloadbalancer::proxy::{LoopInputs, run_loop};
use proxy_support::proxy;

fn named(name: &'static str) -> Backend {
    Backend::start(move |_| vec![Step::Send(response(200, name))])
}

/// Sends `n` GETs on one keep-alive connection; returns the bodies.
fn bodies(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut s = connect(addr);
    let mut pending = Vec::new();
    (0..n)
        .map(|_| {
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            read_response(&mut s, &mut pending, false).unwrap().text()
        })
        .collect()
}

/// Polls `f` until it is true or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn weighted_balance_follows_the_weights() {
    let (a, b) = (named("a"), named("b"));
    let (_p, addr) = proxy(
        &[format!("{}=3", a.arg()), format!("{}=1", b.arg())],
        &["--balance", "weighted"],
    );
    let got = bodies(addr, 8);
    assert_eq!(got.iter().filter(|s| *s == "a").count(), 6, "{got:?}");
    assert_eq!(got.iter().filter(|s| *s == "b").count(), 2, "{got:?}");
}

#[test]
fn least_connections_avoids_the_busy_backend() {
    let slow = Backend::start(|_| {
        vec![
            Step::Sleep(Duration::from_millis(1500)),
            Step::Send(response(200, "slow")),
        ]
    });
    let fast = named("fast");
    let (_p, addr) = proxy(
        &[slow.arg(), fast.arg()],
        &["--balance", "least-connections"],
    );
    // Occupy one backend with a request in flight; which one depends on the tie-break, so
    // find the one that holds it.
    let mut held = connect(addr);
    held.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || slow.requests().len()
        + fast.requests().len()
        == 1));
    let busy_is_slow = slow.requests().len() == 1;
    let got = bodies(addr, 4);
    let expected = if busy_is_slow { "fast" } else { "slow" };
    assert!(got.iter().all(|s| s == expected), "{got:?}");
}

#[test]
fn failing_health_checks_eject_a_backend_and_passing_ones_return_it() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h2 = healthy.clone();
    let sick = Backend::start_with(
        Options {
            health_path: None,
            ..Options::default()
        },
        move |req| {
            if req.target == "/healthz" {
                let status = if h2.load(Ordering::SeqCst) { 200 } else { 503 };
                vec![Step::Send(response(status, "")), Step::Close]
            } else {
                vec![Step::Send(response(200, "sick"))]
            }
        },
    );
    let fine = named("fine");
    let (_p, addr) = proxy(
        &[sick.arg(), fine.arg()],
        &[
            // The standalone proxy checks with a connect unless a path is given.
            "--health-path",
            "/healthz",
            "--health-interval-ms",
            "100",
            "--health-fall",
            "2",
            "--health-rise",
            "2",
        ],
    );
    assert!(
        eventually(Duration::from_secs(10), || bodies(addr, 4)
            .iter()
            .all(|s| s == "fine")),
        "the backend failing its checks still gets requests"
    );
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || bodies(addr, 4)
            .iter()
            .any(|s| s == "sick")),
        "the backend passing its checks again never came back"
    );
}

#[test]
fn refused_connections_eject_at_once_and_the_backend_returns_when_up() {
    let port = common::free_port();
    let addr_b = format!("127.0.0.1:{port}");
    let a = named("a");
    let (_p, addr) = proxy(
        &[a.arg(), addr_b.clone()],
        &["--health-interval-ms", "100", "--health-rise", "1"],
    );
    // Every request succeeds (the refused one is retried on `a`) ...
    assert_eq!(bodies(addr, 6), ["a"; 6]);
    // ... then a backend appears on that port and is brought back by the checks.
    let listener = std::net::TcpListener::bind(&addr_b).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        let _ = s.write_all(&response(200, "b"));
                    }
                }
            });
        }
    });
    assert!(eventually(Duration::from_secs(10), || bodies(addr, 4)
        .iter()
        .any(|s| s == "b")));
}

/// A loop in a thread with a control channel.
struct Harness {
    addr: SocketAddr,
    ctl: UnixStream,
    lines: BufReader<UnixStream>,
    done: std::sync::mpsc::Receiver<i32>,
}

impl Harness {
    fn start(backends: Vec<BackendSpec>) -> Harness {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (ctl, child_end) = UnixStream::pair().unwrap();
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let code = run_loop(LoopInputs {
                name: "lb.test".into(),
                listener,
                backends,
                settings: Default::default(),
                control: Some(child_end),
                drain_timeout_ms: 5000,
            });
            let _ = tx.send(code);
        });
        ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let lines = BufReader::new(ctl.try_clone().unwrap());
        Harness {
            addr,
            ctl,
            lines,
            done,
        }
    }

    fn send(&mut self, msg: &Down) {
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        self.ctl.write_all(&line).unwrap();
    }

    /// Next Up message of the wanted kind (metrics are skipped when waiting for an ack).
    fn next(&mut self, want_ack: bool) -> Up {
        loop {
            let mut line = String::new();
            assert!(
                self.lines.read_line(&mut line).unwrap() > 0,
                "control closed"
            );
            let up: Up = serde_json::from_str(&line).unwrap();
            if matches!(up, Up::Ack { .. }) == want_ack {
                return up;
            }
        }
    }
}

fn spec(id: &str, b: &Backend, state: BackendState) -> BackendSpec {
    BackendSpec {
        id: id.into(),
        addr: b.addr,
        weight: 1,
        state,
    }
}

#[test]
fn control_channel_changes_backends_reports_metrics_and_drains() {
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let mut h = Harness::start(vec![spec("a", &a, BackendState::Active)]);
    assert_eq!(bodies(h.addr, 2), ["a", "a"]);

    h.send(&Down::Backends {
        seq: 1,
        backends: vec![spec("b", &b, BackendState::Active)],
    });
    assert_eq!(
        h.next(true),
        Up::Ack {
            seq: 1,
            ok: true,
            error: None
        }
    );
    assert_eq!(bodies(h.addr, 3), ["b", "b", "b"]);

    // Metrics: b answered 3 requests with 2xx and is healthy; a is gone from the set.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no metrics with b's 3 responses");
        if let Up::Metrics { backends, .. } = h.next(false) {
            let ids: Vec<&str> = backends.iter().map(|m| m.id.as_str()).collect();
            assert_eq!(ids, ["b"]);
            let m = &backends[0];
            if m.responses[1] == 3 {
                assert!(m.healthy);
                assert_eq!(m.in_flight, 0);
                assert_eq!(m.latency.iter().sum::<u64>(), 3);
                break;
            }
        }
    }

    // b draining, c active: new requests go to c only.
    h.send(&Down::Backends {
        seq: 2,
        backends: vec![
            spec("b", &b, BackendState::Draining),
            spec("c", &c, BackendState::Active),
        ],
    });
    assert!(matches!(
        h.next(true),
        Up::Ack {
            seq: 2,
            ok: true,
            ..
        }
    ));
    assert_eq!(bodies(h.addr, 3), ["c", "c", "c"]);

    // A line that is not a message gets a negative ack, and the loop carries on.
    h.ctl
        .write_all(b"{\"type\":\"nonsense\",\"seq\":7}\n")
        .unwrap();
    assert!(matches!(
        h.next(true),
        Up::Ack {
            seq: 7,
            ok: false,
            ..
        }
    ));

    h.send(&Down::Drain {
        seq: 3,
        timeout_ms: 2000,
    });
    assert!(matches!(
        h.next(true),
        Up::Ack {
            seq: 3,
            ok: true,
            ..
        }
    ));
    assert_eq!(h.done.recv_timeout(Duration::from_secs(10)), Ok(0));
}

#[test]
fn control_eof_drains_in_flight_requests_then_exits() {
    let slow = Backend::start(|_| {
        vec![
            Step::Sleep(Duration::from_millis(500)),
            Step::Send(response(200, "done")),
        ]
    });
    let h = Harness::start(vec![spec("s", &slow, BackendState::Active)]);
    let mut s = connect(h.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(eventually(Duration::from_secs(5), || slow.requests().len() == 1));
    let Harness {
        ctl, lines, done, ..
    } = h;
    drop(ctl);
    drop(lines);
    // The in-flight request still completes, with Connection: close.
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(done.recv_timeout(Duration::from_secs(10)), Ok(0));
}

#[test]
fn a_request_arriving_on_an_idle_connection_as_the_drain_starts_is_answered() {
    let a = named("a");
    let mut h = Harness::start(vec![spec("a", &a, BackendState::Active)]);
    let mut s = connect(h.addr);
    let mut pending = Vec::new();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut s, &mut pending, false).unwrap().status,
        200
    );
    // The connection is idle; the drain starts; the client's next request comes right after
    // (as under load, where it may already sit unread in the kernel).
    h.send(&Down::Drain {
        seq: 1,
        timeout_ms: 5000,
    });
    assert!(matches!(
        h.next(true),
        Up::Ack {
            seq: 1,
            ok: true,
            ..
        }
    ));
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "a"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(common::read_to_close(&mut s).is_empty());
    assert_eq!(h.done.recv_timeout(Duration::from_secs(10)), Ok(0));
}
