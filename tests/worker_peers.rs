//! `/worker/stats` across nodes, with local worker processes standing in for nodes: each has
//! a database of its own (its "node's" file) and `--peers` naming the others. Any worker's
//! `/worker/stats` totals equal the hellos all of them answered; `/worker/stats/node` is the
//! worker's own file; a peer that does not answer is named, not fatal.

mod common;
mod worker_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Proc, TempDir, free_port, get, wait_for_port};
use worker_support::{entry, stats};

/// A worker on `port` with its own database and `peers`.
fn start(dir: &TempDir, id: &str, port: u16, peers: &str) -> Proc {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["worker", "--listen", "127.0.0.1", "--id", id])
        .args(["--port", &port.to_string()])
        .arg("--db")
        .arg(dir.join(&format!("{id}/stats.db")))
        .args(["--avg-delay", "0", "--failure", "0", "--peers", peers]);
    std::fs::create_dir_all(dir.join(id)).expect("node dir");
    let p = Proc::start_cmd(id, &mut cmd);
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    p
}

fn hellos(addr: SocketAddr, n: u64) {
    for i in 0..n {
        let r = get(addr, "/api/v1/hello").unwrap_or_else(|e| panic!("hello {i}: {e}"));
        assert_eq!(r.status, 200);
    }
}

fn total(v: &serde_json::Value, id: &str) -> u64 {
    entry(v, "TotalRequests", id)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("no TotalRequests entry {id} in {v}"))
}

#[test]
fn every_worker_answers_for_all_nodes_and_names_a_silent_peer() {
    let dir = TempDir::new("worker-peers");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dead = free_port();
    let peers: Vec<String> = ports
        .iter()
        .chain(std::iter::once(&dead))
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peers = peers.join(",");
    let ids = ["na", "nb", "nc"];
    let mut procs: Vec<Proc> = ids
        .iter()
        .zip(&ports)
        .map(|(id, port)| start(&dir, id, *port, &peers))
        .collect();
    let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    hellos(addr(0), 5);
    hellos(addr(1), 7);
    hellos(addr(2), 11);
    // Group commit: within milliseconds; asked until the totals are in.
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let merged = loop {
        let v = stats(addr(1));
        if total(&v, "total") == 23 || std::time::Instant::now() > end {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(total(&merged, "total"), 23, "{merged}");
    assert_eq!(total(&merged, "na"), 5);
    assert_eq!(total(&merged, "nb"), 7);
    assert_eq!(total(&merged, "nc"), 11);
    assert_eq!(
        merged["UnreachablePeers"],
        serde_json::json!([format!("127.0.0.1:{dead}")]),
        "{merged}"
    );
    // Every worker gives the same totals.
    for i in [0, 2] {
        assert_eq!(total(&stats(addr(i)), "total"), 23);
    }
    // /worker/stats/node: the worker's own file, exact rows.
    let node = get(addr(2), "/worker/stats/node").expect("node stats");
    assert_eq!(node.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&node.body).expect("json");
    let rows = v["node"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["id"], "nc");
    assert_eq!(rows[0]["total"], 11);
    // A node lost: its counts leave the merged answer, and it is named.
    procs[2].signal(9);
    let _ = procs[2].wait_exit(Duration::from_secs(10));
    let after = stats(addr(0));
    assert_eq!(total(&after, "total"), 12, "{after}");
    let unreachable = after["UnreachablePeers"].to_string();
    assert!(unreachable.contains(&ports[2].to_string()), "{after}");
}
