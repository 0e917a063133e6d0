//! Autoscaling, black-box: the real `goloadbalancer run` with the process runtime, one worker
//! at start, a few hundred ms of delay per request and failure 0. Sustained concurrent load
//! well above the target makes the workers rise to `max`; when the load stops they fall back
//! to `min`; not one request fails over the whole run. The worker count is read from the
//! admin `/status`.
//!
//! Bounds (generous; the machine is shared): with breach-ms 1000 and cooldown-ms 1000 the rule
//! needs about 2 s per step, so 1 -> 3 takes ~3 s plus worker start-up; the test allows 30 s
//! for the rise and 30 s for the fall (scale-in also drains the leaving worker first).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Proc, TempDir};

const MIN: usize = 1;
const MAX: usize = 3;
const CLIENTS: usize = 16;
const RISE_BOUND: Duration = Duration::from_secs(30);
const FALL_BOUND: Duration = Duration::from_secs(30);

/// The admin /status as JSON; None while it does not answer.
fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    let r = common::get(admin, "/status").ok()?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice(&r.body).ok()
}

/// Workers in /status taking requests (`workers_actual`: healthy and active in the backend
/// set), and all workers listed (any state, draining ones included).
fn worker_counts(v: &serde_json::Value) -> (usize, usize) {
    let all = v["workers"].as_array().map_or(0, |w| w.len());
    let active = v["workers_actual"].as_u64().unwrap_or(0) as usize;
    (active, all)
}

/// Polls /status until `pred(active, all)` holds; returns the time it took, or None after
/// `bound` (with the last status printed).
fn wait_workers(
    admin: SocketAddr,
    bound: Duration,
    pred: impl Fn(usize, usize) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < bound {
        if let Some(v) = status(admin) {
            let (active, all) = worker_counts(&v);
            if pred(active, all) {
                return Some(start.elapsed());
            }
            last = Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("last /status: {last:#?}");
    None
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One client: keep-alive GETs of /api/v1/hello until `stop`; every error or non-200 counts
/// as failed (and the connection is replaced).
fn client(lb: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let req = b"GET /api/v1/hello HTTP/1.1\r\nHost: autoscale-test\r\n\r\n";
    let mut conn = None;
    let mut pending = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match std::net::TcpStream::connect_timeout(&lb, Duration::from_secs(5)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
                    s.set_write_timeout(Some(Duration::from_secs(20))).ok();
                    pending.clear();
                    conn.insert(s)
                }
                Err(e) => {
                    eprintln!("client: connect: {e}");
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let result = s
            .write_all(req)
            .and_then(|_| common::read_response(s, &mut pending, false));
        match result {
            Ok(r) if r.status == 200 => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = None;
                }
            }
            Ok(r) => {
                eprintln!("client: status {} body {}", r.status, r.text());
                counts.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Err(e) => {
                eprintln!("client: {e}");
                counts.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// The usual autoscale block: min 1 / max 3, target-inflight 2, breach and cooldown 1 s.
fn default_autoscale() -> String {
    format!(
        "autoscale:\n  enabled: true\n  min: {MIN}\n  max: {MAX}\n  target-inflight: 2\n  \
         breach-ms: 1000\n  cooldown-ms: 1000\n  step: 1\n"
    )
}

/// Writes the test config (process runtime, pool 1, one worker at start, failure 0, the
/// default autoscale block) and starts `run` on it. Returns the supervisor, the LB and admin
/// addresses, and the first worker port.
fn start_instance(dir: &TempDir, avg_delay: u64) -> (Proc, SocketAddr, SocketAddr, u16) {
    start_with(dir, avg_delay, &default_autoscale())
}

/// [`start_instance`] with another `autoscale:` block (at most [`MAX`] + 1 workers).
fn start_with(
    dir: &TempDir,
    avg_delay: u64,
    autoscale: &str,
) -> (Proc, SocketAddr, SocketAddr, u16) {
    // Below the ephemeral range: workers bind their ports while the load's connections come
    // and go (see common::quiet_port_range).
    let lb_port = common::quiet_port_range(1);
    let worker_port = common::quiet_port_range(MAX as u16 + 2);
    let admin_port = common::quiet_port_range(1);
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "worker: 1\n\
             pool: 1\n\
             stats-dir: {db}\n\
             avg-delay: {avg_delay}\n\
             failure: 0\n\
             load-balancer-port: {lb_port}\n\
             worker-port: {worker_port}\n\
             instance: autoscale-test-{pid}-{worker_port}\n\
             runtime: process\n\
             listen-address: 127.0.0.1\n\
             admin-port: {admin_port}\n\
             drain-timeout-ms: 10000\n\
             worker-start-timeout-ms: 5000\n\
             health-interval-ms: 500\n\
             {autoscale}",
            db = dir.join("stats.db").display(),
            pid = std::process::id(),
        ),
    )
    .expect("write config");
    let sup = Proc::start(
        "supervisor",
        &["run", "--config", config.to_str().expect("utf-8 path")],
    );
    let lb: SocketAddr = format!("127.0.0.1:{lb_port}").parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    common::wait_for_port(lb, Duration::from_secs(30));
    common::wait_for_port(admin, Duration::from_secs(30));
    (sup, lb, admin, worker_port)
}

/// Starts `CLIENTS` load threads; returns the stop flag, the counters and the threads.
fn start_load(
    lb: SocketAddr,
) -> (
    Arc<AtomicBool>,
    Arc<Counts>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let threads = (0..CLIENTS)
        .map(|_| {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || client(lb, stop, counts))
        })
        .collect();
    (stop, counts, threads)
}

#[test]
fn workers_follow_load_up_to_max_and_back_to_min_without_a_failed_request() {
    let dir = TempDir::new("autoscale");
    let (mut sup, lb, admin, _) = start_instance(&dir, 300);
    assert!(
        wait_workers(admin, Duration::from_secs(30), |a, _| a == 1).is_some(),
        "one worker at start"
    );

    // 16 clients on 300 ms requests keep ~16 in flight: 16 per worker at 1, 5.3 at 3 workers,
    // always above the target 2, so the autoscaler must go all the way to max.
    let (stop, counts, threads) = start_load(lb);

    let rose = wait_workers(admin, RISE_BOUND, |a, _| a == MAX);
    // Hold the load a little longer at max: it must stay there (never above).
    std::thread::sleep(Duration::from_secs(2));
    let at_max = status(admin).map(|v| worker_counts(&v));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    let under_load = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    let rose = rose.unwrap_or_else(|| panic!("workers did not reach {MAX} within {RISE_BOUND:?}"));
    eprintln!("scale-out 1 -> {MAX} took {rose:?}; requests ok/failed {under_load:?}");
    assert_eq!(at_max, Some((MAX, MAX)), "stays at max under load");

    // No load: back to min, the leaving workers drained and gone from /status.
    let fell = wait_workers(admin, FALL_BOUND, |a, all| a == MIN && all == MIN)
        .unwrap_or_else(|| panic!("workers did not fall to {MIN} within {FALL_BOUND:?}"));
    eprintln!("scale-in {MAX} -> {MIN} took {fell:?}");

    // The remaining worker still answers, and no request failed over the whole run.
    let r = common::get(lb, "/api/v1/hello").expect("hello after scale-in");
    assert_eq!(r.status, 200);
    assert_eq!(under_load.1, 0, "failed requests during the run");
    assert!(under_load.0 >= 50, "load ran: {} requests", under_load.0);

    let v = status(admin).expect("status");
    let a = &v["autoscale"];
    assert_eq!(a["enabled"], true, "{a}");
    assert_eq!(a["desired"], MIN, "{a}");
    // 16 in flight at 1 worker is panic: one decision may reach max.
    assert!(a["scale_outs"].as_u64() >= Some(1), "{a}");
    assert!(a["scale_ins"].as_u64() >= Some(MAX as u64 - 1), "{a}");
    assert_eq!(a["last_decision"]["action"], "scale_in", "{a}");

    sup.signal(15);
    assert_eq!(
        sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "clean stop"
    );
}

#[test]
fn a_worker_that_cannot_start_is_not_retried_in_a_tight_loop() {
    let dir = TempDir::new("autoscale-fail");
    // Something else holds the ports of the 2nd and 3rd worker slots: every scale-out start
    // fails at once (the worker cannot bind).
    let (mut sup, lb, admin, worker_port) = start_instance(&dir, 300);
    let _squatters: Vec<_> = (1..MAX as u16)
        .map(|i| std::net::TcpListener::bind(("127.0.0.1", worker_port + i)))
        .collect();
    assert!(
        wait_workers(admin, Duration::from_secs(30), |a, _| a == 1).is_some(),
        "one worker at start"
    );

    let (stop, counts, threads) = start_load(lb);
    // 20 s of load far above the target. The autoscaler asks for a 2nd worker, the start
    // fails, it gives that worker up and pauses scale-out for 1, 2, 4, 8 s...: a handful of
    // attempts, where a tight loop would make dozens.
    let start = Instant::now();
    let mut max_desired = 0;
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(v) = status(admin) {
            max_desired = max_desired.max(v["autoscale"]["desired"].as_u64().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = status(admin).expect("status");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    let failures = v["autoscale"]["start_failures"].as_u64().unwrap_or(0);
    eprintln!(
        "start failures in 20 s: {failures}; autoscale {}",
        v["autoscale"]
    );
    assert!(failures >= 2, "it kept trying: {failures}");
    // Up to MAX - 1 starts fail per decision; the backoff doubles on each failure.
    assert!(
        failures <= 8,
        "backoff, not a tight loop: {failures} failures in 20 s"
    );
    // Panic mode (16 in flight on one worker at target 2) may ask for every slot at once;
    // each failed start gives its worker up, so never more than max.
    assert!(
        max_desired <= MAX as u64,
        "never asked for more than max: {max_desired}"
    );
    assert_eq!(worker_counts(&v).0, 1, "the working worker kept serving");
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "no request failed because of the failed starts"
    );
    assert!(counts.ok.load(Ordering::Relaxed) >= 20);

    sup.signal(15);
    assert_eq!(
        sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "clean stop"
    );
}

#[test]
fn min_zero_reaches_zero_workers_after_idle_and_a_request_starts_one() {
    let dir = TempDir::new("autoscale-zero");
    let block = "autoscale:\n  enabled: true\n  min: 0\n  max: 2\n  idle-ms: 1000\n  \
                 breach-ms: 1000\n  cooldown-ms: 1000\n";
    let (mut sup, lb, admin, _) = start_with(&dir, 0, block);
    let r = common::get(lb, "/api/v1/hello").expect("hello at start");
    assert_eq!(r.status, 200);
    // A second with no request: the last worker is drained and stopped.
    let zero = wait_workers(admin, Duration::from_secs(30), |a, all| a == 0 && all == 0);
    assert!(zero.is_some(), "no worker after idle-ms");
    let v = status(admin).expect("status");
    assert_eq!(v["autoscale"]["desired"], 0, "{}", v["autoscale"]);
    assert_eq!(
        v["autoscale"]["last_decision"]["action"], "scale_to_zero",
        "{}",
        v["autoscale"]
    );

    // A request at zero: held in the LB child's queue while the demand signal starts a
    // worker, then answered (not 503).
    let first = common::get(lb, "/api/v1/hello").expect("request at zero");
    assert_eq!(
        first.status,
        200,
        "held until a worker was up: {}",
        first.text()
    );
    let up = wait_workers(admin, Duration::from_secs(30), |a, _| a == 1);
    assert!(up.is_some(), "a worker started on demand");
    let v = status(admin).expect("status");
    let decisions = v["autoscale"]["recent_decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        decisions.iter().any(|d| d["action"] == "scale_from_zero"),
        "{decisions:?}"
    );
    let r = common::get(lb, "/api/v1/hello").expect("hello after the start");
    assert_eq!(r.status, 200);

    sup.signal(15);
    assert_eq!(
        sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "clean stop"
    );
}

#[test]
fn panic_adds_more_than_one_worker_in_one_decision() {
    let dir = TempDir::new("autoscale-panic");
    // A breach of a minute: only panic mode can act within this test.
    let block = format!(
        "autoscale:\n  enabled: true\n  min: 1\n  max: {MAX}\n  target-inflight: 2\n  \
         breach-ms: 60000\n  cooldown-ms: 60000\n"
    );
    let (mut sup, lb, admin, _) = start_with(&dir, 300, &block);
    assert!(
        wait_workers(admin, Duration::from_secs(30), |a, _| a == 1).is_some(),
        "one worker at start"
    );
    // 16 in flight on one worker at target 2: eight times the capacity.
    let (stop, counts, threads) = start_load(lb);
    let rose = wait_workers(admin, RISE_BOUND, |a, _| a == MAX);
    let v = status(admin).expect("status");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    assert!(
        rose.is_some(),
        "workers did not reach {MAX}: {}",
        v["autoscale"]
    );
    let decisions = v["autoscale"]["recent_decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let panic = decisions
        .iter()
        .find(|d| d["action"] == "panic_scale_out")
        .unwrap_or_else(|| panic!("no panic decision: {decisions:?}"));
    assert_eq!(panic["panic"], true, "{panic}");
    let (from, to) = (panic["from"].as_u64(), panic["to"].as_u64());
    assert_eq!((from, to), (Some(1), Some(MAX as u64)), "{panic}");
    assert_eq!(counts.failed.load(Ordering::Relaxed), 0, "failed requests");
    let m = common::get(admin, "/metrics").expect("metrics");
    assert!(
        m.text()
            .contains("goloadbalancer_autoscale_actions_total{action=\"panic_scale_out\"} 1"),
        "{}",
        m.text()
    );

    sup.signal(15);
    assert_eq!(
        sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "clean stop"
    );
}

#[test]
fn a_burst_at_zero_beyond_queue_size_gets_503_for_the_overflow_only() {
    let dir = TempDir::new("autoscale-zero-burst");
    let block = "queue-size: 2\nautoscale:\n  enabled: true\n  min: 0\n  max: 2\n  \
                 idle-ms: 1000\n  breach-ms: 1000\n  cooldown-ms: 1000\n";
    let (mut sup, lb, admin, _) = start_with(&dir, 0, block);
    let zero = wait_workers(admin, Duration::from_secs(30), |a, all| a == 0 && all == 0);
    assert!(zero.is_some(), "no worker after idle-ms");
    // Twenty requests at once: two wait in the queue for the worker they start, the rest
    // overflow it and are told when to come back.
    let answers: Vec<common::Response> = (0..20)
        .map(|_| std::thread::spawn(move || common::get(lb, "/api/v1/hello")))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread").expect("an answer"))
        .collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let overflow: Vec<_> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + overflow.len(), 20, "only 200 and 503");
    assert!(ok >= 2, "the queued requests were answered: {ok}");
    assert!(!overflow.is_empty(), "the queue overflowed");
    assert!(
        overflow.iter().all(|r| r.header("retry-after").is_some()),
        "every 503 says when to retry"
    );
    sup.signal(15);
    assert_eq!(
        sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "clean stop"
    );
}

/// Cycles of [`twenty_cycles_zero_to_max_and_back_under_a_saw_tooth_load_fail_no_request`].
const CYCLES: usize = 20;

/// The rising edge of one saw tooth: one more client every 100 ms (up to [`CLIENTS`]) until
/// /status shows `MAX` active workers, then every client stops at once (the drop). Returns
/// whether max was reached within [`RISE_BOUND`]; the clients are stopped either way.
fn saw_tooth(lb: SocketAddr, admin: SocketAddr, counts: &Arc<Counts>) -> bool {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let start = Instant::now();
    let mut reached = false;
    while start.elapsed() < RISE_BOUND {
        if threads.len() < CLIENTS {
            let (stop, counts) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || client(lb, stop, counts)));
        }
        if status(admin).is_some_and(|v| worker_counts(&v).0 == MAX) {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    reached
}

#[test]
fn twenty_cycles_zero_to_max_and_back_under_a_saw_tooth_load_fail_no_request() {
    let dir = TempDir::new("autoscale-cycles");
    // Short idle and calm windows: each cycle is about a second up and two down.
    let block = format!(
        "autoscale:\n  enabled: true\n  min: 0\n  max: {MAX}\n  target-inflight: 2\n  \
         idle-ms: 400\n  breach-ms: 500\n  cooldown-ms: 500\n"
    );
    let (mut sup, lb, admin, _) = start_with(&dir, 50, &block);
    let counts = Arc::new(Counts::default());
    for cycle in 1..=CYCLES {
        // Zero: none active and none still draining, then the next tooth starts from
        // nothing: its first requests are held while the demand signal starts a worker.
        let zero = wait_workers(admin, FALL_BOUND, |a, all| a == 0 && all == 0);
        assert!(zero.is_some(), "cycle {cycle}: no worker after idle-ms");
        let reached = saw_tooth(lb, admin, &counts);
        let (ok, failed) = (
            counts.ok.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        eprintln!("cycle {cycle}: max reached {reached}; requests ok {ok} failed {failed}");
        assert!(reached, "cycle {cycle}: workers did not reach {MAX}");
        assert_eq!(failed, 0, "cycle {cycle}: failed requests");
    }
    let zero = wait_workers(admin, FALL_BOUND, |a, all| a == 0 && all == 0);
    assert!(zero.is_some(), "no worker after the last cycle");
    let v = status(admin).expect("status");
    let a = &v["autoscale"];
    assert!(a["scale_from_zero"].as_u64() >= Some(CYCLES as u64), "{a}");
    assert!(a["scale_to_zero"].as_u64() >= Some(CYCLES as u64), "{a}");
    assert!(counts.ok.load(Ordering::Relaxed) >= 20 * CYCLES as u64);

    sup.signal(15);
    assert_eq!(
        sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "clean stop"
    );
}
