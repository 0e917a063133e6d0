//! `pool: 2` with `shared-port: true`: both LB children accept on the one port (each from its
//! own SO_REUSEPORT socket, bound by the supervisor), and a child replaced under load
//! refuses nothing. The real binary, process runtime, raw sockets.

mod common;
#[path = "supervisor_support/mod.rs"]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::{Load, Stack, StackSpec, child_pids};

fn shared_stack(name: &str) -> Stack {
    let mut spec = StackSpec::seed("process");
    spec.workers = 2;
    spec.avg_delay = 0;
    spec.extra = "shared-port: true".into();
    Stack::start_ready(name, spec)
}

/// One GET on a new keep-alive connection, answered; the connection stays open.
fn open_answered(s: &Stack) -> TcpStream {
    let mut c = TcpStream::connect_timeout(&s.lb(0), Duration::from_secs(5)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    c.write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut pending = Vec::new();
    let resp = common::read_response(&mut c, &mut pending, false).expect("response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    c
}

/// The connections each child reports, by child name.
fn connections_by_child(st: &serde_json::Value) -> Vec<(String, u64)> {
    st["children"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or("").to_string();
                    (name, c["connections"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn both_children_accept_from_the_shared_port() {
    let mut s = shared_stack("sp-share");
    let n = 400u64;
    let held: Vec<TcpStream> = (0..n).map(|_| open_answered(&s)).collect();
    // Each child reports its open connections about once a second.
    let st = s.wait_status(
        "every held connection reported",
        Duration::from_secs(10),
        |st| connections_by_child(st).iter().map(|(_, c)| c).sum::<u64>() == n,
    );
    let shares = connections_by_child(&st);
    eprintln!("connections per child over {n}: {shares:?}");
    assert_eq!(shares.len(), 2, "{shares:?}");
    for (name, count) in &shares {
        // A hash of the client port gives 200 +- 10 (one standard deviation): 140 is six
        // deviations away, while one queue shared by both children gave 131/69 of 200.
        assert!(
            *count >= n * 35 / 100,
            "{name} accepted {count} of {n}: {shares:?}"
        );
    }
    drop(held);
    assert!(s.log_text().contains("event=port_group_joined lb=1"));
}

#[test]
fn a_child_replaced_under_load_refuses_nothing() {
    let mut s = shared_stack("sp-replace");
    let load = Load::start(vec![s.lb(0)], 4);
    std::thread::sleep(Duration::from_millis(800));
    let before = child_pids(&s.status());
    let old = s.status()["children"][1]["pid"].as_i64().expect("lb.1 pid");
    // SIGTERM: the child drains (stops accepting, finishes what it holds) and exits; the
    // supervisor re-forks lb.1 on the same socket, which kept queueing meanwhile.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &old.to_string()])
        .status();
    s.wait_status("lb.1 re-forked", Duration::from_secs(30), |st| {
        st["children"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["name"] == "lb.1" && c["state"] == "running" && c["pid"].as_i64() != Some(old)
            })
        })
    });
    std::thread::sleep(Duration::from_millis(800));
    let c = load.finish();
    eprintln!("lb.1 replaced under load: {c:?} (children before {before:?})");
    assert_eq!(c.refused, 0, "no refused connection: {:?}", c.errors);
    assert_eq!(c.failed, 0, "no failed request: {:?}", c.errors);
    assert!(c.ok > 0);
    // The successor serves from the same group: both children take connections again.
    let held: Vec<TcpStream> = (0..100).map(|_| open_answered(&s)).collect();
    let st = s.wait_status(
        "both children hold connections",
        Duration::from_secs(10),
        |st| {
            let by = connections_by_child(st);
            by.len() == 2 && by.iter().all(|(_, c)| *c > 0)
        },
    );
    eprintln!("after the replacement: {:?}", connections_by_child(&st));
    drop(held);
}
