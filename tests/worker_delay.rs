//! The hello delay's mean, measured by a client. Its own test binary: cargo runs test binaries
//! one after the other, so no sibling test competes for the two cores while it measures.

mod common;
mod worker_support;

use std::collections::HashMap;
use std::time::Duration;

use common::TempDir;
use worker_support::{HEALTH, HELLO, Obs, entry, hammer_cycle, start_worker, stats};

#[test]
fn hello_delay_mean_is_avg_delay() {
    let dir = TempDir::new("worker-delay");
    let (_w, addr) = start_worker(
        &dir.join("s.db"),
        "t-delay",
        &["--avg-delay", "100", "--failure", "0"],
    );
    // 200 connections, each sending /healthz then hello, ten times: 2000 hello samples. On a
    // loaded machine every answer is late by however long the worker (and this client) wait
    // for a core; the instant /healthz just before each hello, on the same connection,
    // measures that, and is subtracted from that hello's time. What remains is the delay
    // the worker applies. Uniform on [0, 200] ms: standard error of the mean
    // 57.7 / sqrt(2000) = 1.3 ms against the 10 ms (10%) bound, which leaves room for the
    // worker's own timer lateness on a loaded machine (measured 0.5-4 ms at load 12). A timer
    // never fires early, so the lower bound means something too.
    let all = hammer_cycle(addr, 200, 20, &[HEALTH, HELLO], Duration::from_secs(120));
    assert_eq!(all.len(), 4000);
    assert!(all.iter().all(|o| o.status == 200), "non-200 answers");
    let mut probe: HashMap<(usize, usize), f64> = HashMap::new();
    for o in all.iter().filter(|o| o.round % 2 == 0) {
        probe.insert((o.conn, o.round), ms(o));
    }
    let hellos: Vec<&Obs> = all.iter().filter(|o| o.round % 2 == 1).collect();
    assert_eq!(hellos.len(), 2000);
    let delays: Vec<f64> = hellos
        .iter()
        .map(|o| ms(o) - probe[&(o.conn, o.round - 1)])
        .collect();
    let raw = hellos.iter().map(|o| ms(o)).sum::<f64>() / 2000.0;
    let delay = delays.iter().sum::<f64>() / 2000.0;
    // Uniform, not constant: about half of the delays are below the mean.
    let frac = delays.iter().filter(|&&d| d < 100.0).count() as f64 / 2000.0;
    let st = stats(addr);
    let server = entry(&st, "AverageResponseTime", "t-delay").unwrap();
    eprintln!(
        "hello {raw:.2} ms, less its healthz: delay {delay:.2} ms (server mean {server}); \
         {frac:.3} below 100 ms"
    );
    assert!(
        (90.0..=110.0).contains(&delay),
        "mean delay {delay:.2} ms (raw {raw:.2}), expected 100 ms +- 10%"
    );
    assert!(
        (0.35..=0.65).contains(&frac),
        "fraction below 100 ms: {frac:.3}"
    );
}

fn ms(o: &Obs) -> f64 {
    o.elapsed.as_secs_f64() * 1000.0
}
