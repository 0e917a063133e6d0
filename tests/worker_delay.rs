//! The hello delay's mean, measured by a client. Its own test binary: cargo runs test binaries
//! one after the other, so no sibling test competes for the two cores while it measures.

mod common;
mod worker_support;

use std::time::Duration;

use common::TempDir;
use worker_support::{HEALTH, HELLO, Obs, entry, hammer_cycle, mean_ms, start_worker, stats};

#[test]
fn hello_delay_mean_is_avg_delay() {
    let dir = TempDir::new("worker-delay");
    let (_w, addr) = start_worker(
        &dir.join("s.db"),
        "t-delay",
        &["--avg-delay", "250", "--failure", "0"],
    );
    // 500 concurrent connections, each alternating hello and /healthz, 4 of each. On a
    // loaded machine every answer is late by however long the worker (and this client) wait
    // for a core; an instant /healthz on the same connection right after each hello measures
    // that under the same conditions, and is subtracted. The first hello of each connection
    // is left out: those 500 arrive in one burst, and their wait to be parsed is queueing,
    // not delay. 1500 samples of a delay uniform on [0, 500] ms: standard error of the mean
    // 144 / sqrt(1500) = 3.7 ms (1.5%) against the 25 ms (10%) bound.
    let all = hammer_cycle(addr, 500, 8, &[HELLO, HEALTH], Duration::from_secs(120));
    assert_eq!(all.len(), 4000);
    let (hellos, probes): (Vec<Obs>, Vec<Obs>) = all.into_iter().partition(|o| o.round % 2 == 0);
    assert!(hellos.iter().all(|o| o.status == 200), "non-200 hello");
    assert!(probes.iter().all(|o| o.status == 200), "non-200 healthz");
    let hellos: Vec<Obs> = hellos.into_iter().filter(|o| o.round > 0).collect();
    assert_eq!(hellos.len(), 1500);
    let raw = mean_ms(&hellos);
    let overhead = mean_ms(&probes);
    let delay = raw - overhead;
    // Uniform, not constant: about half of the requests take less than the mean.
    let below = hellos
        .iter()
        .filter(|o| o.elapsed.as_secs_f64() * 1000.0 - overhead < 250.0)
        .count();
    let frac = below as f64 / hellos.len() as f64;
    let st = stats(addr);
    let server = entry(&st, "AverageResponseTime", "t-delay").unwrap();
    eprintln!(
        "hello {raw:.2} ms - healthz {overhead:.2} ms = delay {delay:.2} ms \
         (server mean {server}); {frac:.3} below 250 ms"
    );
    assert!(
        (225.0..=275.0).contains(&delay),
        "mean delay {delay:.2} ms (hello {raw:.2} - healthz {overhead:.2}), expected 250 ms +- 10%"
    );
    assert!(
        (0.35..=0.65).contains(&frac),
        "fraction below 250 ms: {frac:.3}"
    );
}
