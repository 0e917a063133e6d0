//! Traffic policies of issue 13 wired into the proxy loop, raw sockets against the real
//! binary (and one loop in a thread where the control channel's metrics are read): slow
//! start, outlier ejection on 5xx answers with its cap, and the retry budget.

mod common;
mod proxy_support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backend::{Backend, Options, Step, response};
use common::{connect, get, read_response};
use goloadbalancer::config::ProxySettings;
use goloadbalancer::proxy::control::{BackendMetrics, BackendSpec, BackendState, Up};
use goloadbalancer::proxy::{LoopInputs, run_loop};
use proxy_support::proxy;

/// A backend answering `status` with its `name` as the body.
fn answering(status: u16, name: &'static str) -> Backend {
    Backend::start(move |_| vec![Step::Send(response(status, name))])
}

/// One keep-alive connection sending GETs; each answer's (status, body).
struct Client {
    addr: SocketAddr,
    s: std::net::TcpStream,
    pending: Vec<u8>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            s: connect(addr),
            pending: Vec::new(),
        }
    }

    fn get(&mut self) -> (u16, String) {
        self.s
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_response(&mut self.s, &mut self.pending, false).unwrap();
        if r.header("connection") == Some("close") {
            *self = Client::new(self.addr);
        }
        (r.status, r.text())
    }

    fn bodies(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.get().1).collect()
    }
}

/// Polls `f` until it is true or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Share of `name` among `got`.
fn share(got: &[&str], name: &str) -> f64 {
    got.iter().filter(|s| **s == name).count() as f64 / got.len().max(1) as f64
}

#[test]
fn slow_start_gives_a_returning_backend_a_small_share_first() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h2 = healthy.clone();
    let back = Backend::start_with(
        Options {
            health_path: None,
            ..Options::default()
        },
        move |req| {
            if req.target == "/healthz" {
                let status = if h2.load(Ordering::SeqCst) { 200 } else { 503 };
                vec![Step::Send(response(status, "")), Step::Close]
            } else {
                vec![Step::Send(response(200, "back"))]
            }
        },
    );
    let steady = answering(200, "steady");
    let (_p, addr) = proxy(
        &[back.arg(), steady.arg()],
        &[
            "--slow-start-ms",
            "3000",
            "--health-path",
            "/healthz",
            "--health-interval-ms",
            "50",
            "--health-fall",
            "1",
            "--health-rise",
            "1",
        ],
    );
    let mut c = Client::new(addr);
    assert!(
        eventually(Duration::from_secs(10), || c
            .bodies(6)
            .iter()
            .all(|s| s == "steady")),
        "the backend failing its checks still gets requests"
    );
    healthy.store(true, Ordering::SeqCst);
    // Requests one after another until well past the ramp, each noted with when it was
    // answered; time counts from the returning backend's first answer (its ramp's start).
    let mut seen: Vec<(Instant, String)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(15);
    let mut start = None;
    while Instant::now() < end {
        let body = c.get().1;
        let now = Instant::now();
        if start.is_none() && body == "back" {
            start = Some(now);
        }
        if start.is_some_and(|s| now.duration_since(s) > Duration::from_millis(4500)) {
            break;
        }
        seen.push((now, body));
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = start.expect("the backend never came back");
    let interval = |from_ms: u64, to_ms: u64| -> Vec<&str> {
        seen.iter()
            .filter(|(t, _)| *t >= start)
            .filter(|(t, _)| {
                let ms = t.duration_since(start).as_millis() as u64;
                (from_ms..to_ms).contains(&ms)
            })
            .map(|(_, b)| b.as_str())
            .collect()
    };
    // The ramp as seen (for the note): the returning backend's share per half second.
    let ramp: Vec<String> = (0..9)
        .map(|k| format!("{:.2}", share(&interval(k * 500, k * 500 + 500), "back")))
        .collect();
    eprintln!("slow start share per 500 ms: {}", ramp.join(" "));
    let (first, last) = (interval(0, 1000), interval(3200, 4500));
    assert!(first.len() >= 20 && last.len() >= 20, "too few requests");
    let (early, late) = (share(&first, "back"), share(&last, "back"));
    // Ramping: at most 10%..40% of its weight in the first second (round-robin: a share of
    // about 10%..30%), all of it after the ramp (half).
    assert!(
        early < late,
        "share first {early:.2}, after the ramp {late:.2}"
    );
    assert!(early < 0.4, "share in the ramp's first second {early:.2}");
    assert!(late > 0.4, "share after the ramp {late:.2}");
}

#[test]
fn consecutive_5xx_eject_a_backend_for_eject_ms() {
    let sick = answering(500, "sick");
    let fine = answering(200, "fine");
    let (_p, addr) = proxy(
        &[sick.arg(), fine.arg()],
        &["--eject-consecutive-5xx", "3", "--eject-ms", "60000"],
    );
    let mut c = Client::new(addr);
    let got: Vec<(u16, String)> = (0..40).map(|_| c.get()).collect();
    let sick_answers: Vec<u16> = got
        .iter()
        .filter(|(_, b)| b == "sick")
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(sick_answers, [500, 500, 500], "{got:?}");
    // After its third 500 every request goes to the healthy one.
    let third = got.iter().rposition(|(_, b)| b == "sick").unwrap();
    assert!(third <= 6, "{got:?}");
    assert!(
        got[third + 1..]
            .iter()
            .all(|(s, b)| *s == 200 && b == "fine")
    );
}

#[test]
fn an_ejected_backend_returns_after_eject_ms() {
    let sick = answering(500, "sick");
    let fine = answering(200, "fine");
    let (_p, addr) = proxy(
        &[sick.arg(), fine.arg()],
        &["--eject-consecutive-5xx", "2", "--eject-ms", "300"],
    );
    let mut c = Client::new(addr);
    let got = c.bodies(10);
    assert_eq!(got.iter().filter(|s| *s == "sick").count(), 2, "{got:?}");
    assert!(
        eventually(Duration::from_secs(10), || c
            .bodies(2)
            .iter()
            .any(|s| s == "sick")),
        "the ejected backend never came back"
    );
}

#[test]
fn never_more_than_max_ejection_percent_are_ejected() {
    let (a, b) = (answering(500, "a"), answering(500, "b"));
    let (_p, addr) = proxy(
        &[a.arg(), b.arg()],
        &["--eject-consecutive-5xx", "1", "--eject-ms", "60000"],
    );
    // 50% of two: one ejected; the other keeps answering (its 500s), no 503 for lack of a
    // worker.
    let mut c = Client::new(addr);
    let got: Vec<(u16, String)> = (0..20).map(|_| c.get()).collect();
    assert!(got.iter().all(|(s, _)| *s == 500), "{got:?}");
    let tail: Vec<&str> = got[4..].iter().map(|(_, b)| b.as_str()).collect();
    assert!(
        tail.iter().all(|s| *s == tail[0]),
        "one ejected, the other serving: {got:?}"
    );
    // At 100%, both go and the proxy answers 503 itself.
    let (_p2, addr2) = proxy(
        &[a.arg(), b.arg()],
        &[
            "--eject-consecutive-5xx",
            "1",
            "--eject-ms",
            "60000",
            "--max-ejection-percent",
            "100",
        ],
    );
    let mut c = Client::new(addr2);
    let got: Vec<u16> = (0..6).map(|_| c.get().0).collect();
    assert_eq!(&got[..2], &[500, 500]);
    assert!(got[2..].iter().all(|s| *s == 503), "{got:?}");
}

/// Runs one loop in a thread with `settings` and a control channel; returns its address and
/// the channel's lines.
fn loop_with(settings: ProxySettings, backends: Vec<BackendSpec>) -> (SocketAddr, Lines) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (ctl, child_end) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        run_loop(LoopInputs {
            name: "lb.policies".into(),
            listener,
            backends,
            settings,
            control: Some(child_end),
            drain_timeout_ms: 1000,
        })
    });
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let lines = BufReader::new(ctl.try_clone().unwrap());
    (addr, Lines { _ctl: ctl, lines })
}

/// The supervisor's end of a loop's control channel (closing it drains the loop).
struct Lines {
    _ctl: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Lines {
    /// Waits for a metrics report `ok` accepts; returns it.
    fn metrics_until(
        &mut self,
        mut ok: impl FnMut(&[BackendMetrics], u64) -> bool,
    ) -> (Vec<BackendMetrics>, u64) {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(Instant::now() < end, "no metrics report as expected");
            let mut line = String::new();
            assert!(self.lines.read_line(&mut line).unwrap() > 0, "closed");
            if let Ok(Up::Metrics {
                backends,
                retry_budget_refused,
                ..
            }) = serde_json::from_str::<Up>(&line)
                && ok(&backends, retry_budget_refused)
            {
                return (backends, retry_budget_refused);
            }
        }
    }
}

#[test]
fn retries_stop_at_the_retry_budget_and_are_counted() {
    // Every request goes to `closer` first (round-robin resumes after the retry), which
    // reads it and closes without answering: an idempotent request is retried on `fine`.
    let closer = Backend::start(|_| vec![Step::Close]);
    let fine = answering(200, "fine");
    let spec = |id: &str, b: &Backend| BackendSpec {
        id: id.into(),
        addr: b.addr,
        weight: 1,
        state: BackendState::Active,
    };
    let settings = ProxySettings {
        retry_budget_percent: 0,
        ..ProxySettings::default()
    };
    let (addr, mut lines) = loop_with(settings, vec![spec("closer", &closer), spec("fine", &fine)]);
    let statuses: Vec<u16> = (0..150).map(|_| get(addr, "/").unwrap().status).collect();
    // A budget of 0% leaves the floor: 10 retries a second over the 10 s window.
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 502).count();
    assert_eq!(ok + refused, 150, "{statuses:?}");
    assert!(ok >= 100, "{ok} retried");
    assert!(
        refused > 0 && statuses.ends_with(&[502; 10]),
        "{statuses:?}"
    );
    let (backends, refused_reported) = lines.metrics_until(|b, r| {
        r > 0
            && b.iter()
                .any(|m| m.id == "fine" && m.responses[1] as usize == ok)
    });
    let retries = |id: &str| backends.iter().find(|m| m.id == id).unwrap().retries;
    assert_eq!(retries("closer") as usize, ok, "retries caused by closer");
    assert_eq!(retries("fine"), 0);
    assert_eq!(refused_reported as usize, refused);
}
