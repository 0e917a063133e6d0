//! The hello delay's mean, measured by a client. Its own test binary: cargo runs test binaries
//! one after the other, so no sibling test competes for the two cores while it measures.

mod common;
mod worker_support;

use std::time::Duration;

use common::TempDir;
use worker_support::{HELLO, entry, hammer, mean_ms, start_worker, stats};

#[test]
fn hello_delay_mean_is_avg_delay() {
    let dir = TempDir::new("worker-delay");
    let (_w, addr) = start_worker(
        &dir.join("s.db"),
        "t-delay",
        &["--avg-delay", "250", "--failure", "0"],
    );
    // 1000 concurrent connections, 5 requests each. The first round is left out: its 1000
    // requests arrive in one burst, and the time the worker takes to accept and parse them
    // all is queueing, not delay; later rounds arrive spread out by the delays themselves.
    // 4000 samples of a delay uniform on [0, 500] ms: standard error of the mean
    // 144 / sqrt(4000) = 2.3 ms (0.9%) against the 25 ms (10%) bound.
    let all = hammer(addr, 1000, 5, HELLO, Duration::from_secs(120));
    assert_eq!(all.len(), 5000);
    assert!(all.iter().all(|o| o.status == 200), "non-200 answers");
    let obs: Vec<_> = all.into_iter().filter(|o| o.round > 0).collect();
    assert_eq!(obs.len(), 4000);
    let mean = mean_ms(&obs);
    // Uniform, not constant: about half of the requests take less than the mean.
    let below = obs
        .iter()
        .filter(|o| o.elapsed < Duration::from_millis(250))
        .count();
    let frac = below as f64 / obs.len() as f64;
    let st = stats(addr);
    let server = entry(&st, "AverageResponseTime", "t-delay").unwrap();
    eprintln!("mean delay {mean:.2} ms (server {server}), {frac:.3} below 250 ms");
    assert!(
        (225.0..=275.0).contains(&mean),
        "mean delay {mean:.2} ms, expected 250 ms +- 10%"
    );
    assert!(
        (0.35..=0.6).contains(&frac),
        "fraction below 250 ms: {frac:.3}"
    );
}
