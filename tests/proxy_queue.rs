//! `max-conn-per-worker` and the wait queue (issue 13), raw sockets against the real binary:
//! requests beyond the limit wait and go in arrival order, a full queue and an expired wait
//! answer 503 with `Retry-After`, and the access log tells the time queued and the timeout.

mod common;
mod proxy_support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backend::{Backend, Step, response};
use common::{connect, read_response};
use proxy_support::proxy;

/// A backend answering after `delay`, noting each request's target in arrival order and the
/// most requests it ever held at once.
struct Slow {
    backend: Backend,
    targets: Arc<Mutex<Vec<String>>>,
    most: Arc<AtomicUsize>,
}

fn slow(delay: Duration) -> Slow {
    let targets = Arc::new(Mutex::new(Vec::new()));
    let most = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let (t2, m2) = (targets.clone(), most.clone());
    let backend = Backend::start(move |req| {
        t2.lock().unwrap().push(req.target.clone());
        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
        m2.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(delay);
        active.fetch_sub(1, Ordering::SeqCst);
        vec![Step::Send(response(200, "done"))]
    });
    Slow {
        backend,
        targets,
        most,
    }
}

/// Sends `GET target` on a new connection (without reading the answer).
fn send(addr: SocketAddr, target: &str) -> std::net::TcpStream {
    let mut s = connect(addr);
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    s
}

fn answer(s: &mut std::net::TcpStream) -> common::Response {
    read_response(s, &mut Vec::new(), false).unwrap()
}

#[test]
fn requests_beyond_the_limit_wait_and_go_in_arrival_order() {
    let b = slow(Duration::from_millis(150));
    let (_p, addr) = proxy(&[b.backend.arg()], &["--max-conn-per-worker", "1"]);
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(send(addr, &format!("/{i}")));
        // Arrival order is what the proxy sees: let each request land before the next.
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in &mut clients {
        let r = answer(s);
        assert_eq!((r.status, r.text().as_str()), (200, "done"));
    }
    let targets = b.targets.lock().unwrap().clone();
    assert_eq!(targets, ["/0", "/1", "/2", "/3", "/4", "/5"]);
    assert_eq!(b.most.load(Ordering::SeqCst), 1, "never two at once");
}

#[test]
fn a_full_queue_and_an_expired_wait_answer_503_with_retry_after() {
    let b = slow(Duration::from_millis(3000));
    let dir = common::TempDir::new("queue-log");
    let log = dir.join("access.log");
    let log_arg = log.display().to_string();
    let (_p, addr) = proxy(
        &[b.backend.arg()],
        &[
            "--max-conn-per-worker",
            "1",
            "--queue-size",
            "1",
            "--queue-timeout-ms",
            "400",
            "--access-log",
            "all",
            "--access-log-path",
            &log_arg,
        ],
    );
    let mut held = send(addr, "/held");
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while b.targets.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < end,
            "the first request never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut waiting = send(addr, "/waiting");
    std::thread::sleep(Duration::from_millis(50));
    // The queue holds one: the third is refused at once.
    let mut refused = send(addr, "/refused");
    let r = answer(&mut refused);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    // The waiting one times out in the queue.
    let r = answer(&mut waiting);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(answer(&mut held).status, 200);
    assert_eq!(*b.targets.lock().unwrap(), ["/held"]);
    let lines = wait_lines(&log, 3);
    let line = |target: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("target=\"{target}\"")))
            .unwrap_or_else(|| panic!("no line for {target}: {lines:?}"))
            .clone()
    };
    let waited = line("/waiting");
    assert!(waited.contains("termination=queue_timeout"), "{waited}");
    assert!(waited.contains("phase=queue"), "{waited}");
    assert!(!waited.contains("queued_ms=-"), "{waited}");
    assert!(line("/refused").contains("phase=queue"));
    assert!(line("/held").contains("queued_ms=-"), "not queued");
}

/// Waits until the access log holds at least `n` lines (it is flushed every 200 ms).
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || std::time::Instant::now() > end {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn twenty_clients_over_three_limited_workers_are_all_answered() {
    let workers: Vec<Slow> = (0..3).map(|_| slow(Duration::from_millis(300))).collect();
    let args: Vec<String> = workers.iter().map(|w| w.backend.arg()).collect();
    let (_p, addr) = proxy(&args, &["--max-conn-per-worker", "1"]);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                (0..2)
                    .map(|k| {
                        let t = std::time::Instant::now();
                        let mut s = send(addr, &format!("/{i}-{k}"));
                        (answer(&mut s).status, t.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut got: Vec<(u16, Duration)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert!(workers.iter().all(|w| w.most.load(Ordering::SeqCst) == 1));
    // The latency shape (for the note): the queue spreads the waits evenly.
    got.sort_by_key(|(_, d)| *d);
    let at = |q: f64| got[((got.len() - 1) as f64 * q) as usize].1.as_millis();
    eprintln!(
        "queue: {} requests, latency ms p50 {} p90 {} max {}",
        got.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
}
