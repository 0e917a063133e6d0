//! `/worker/stats` across nodes (`--peers`): each worker answers `/worker/stats/node` with its
//! own database's rows (its node's, exact counters), and `/worker/stats` merges them with every
//! peer's `/worker/stats/node`, found by name (`tasks.<service>:<port>` on swarm's overlay
//! network resolves to every task) or listed (`host:port,host:port`). A peer row and a local
//! row of the same worker id are two reads of one row that only grows: the larger `total`
//! is the fresher and wins whole. The fan-out runs in a thread of its own, every peer at
//! once, each bounded by [`PEER_TIMEOUT`]; a peer that does not answer in time is left out and
//! named in `UnreachablePeers` (and logged), never waited for longer.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::store::{WorkerRow, stats_json};

/// How long one peer gets to answer `/worker/stats/node`.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Most peer addresses asked (a name may resolve to many).
const MAX_PEERS: usize = 256;
/// Largest peer answer read.
const MAX_ANSWER: u64 = 1 << 20;

/// Checks `--peers`: comma-separated `host:port` entries (a host may be a DNS name).
pub fn parse_peers(spec: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = p.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0)
        });
        if !ok {
            return Err(format!("--peers: expected host:port entries, got {p:?}"));
        }
        out.push(p.to_string());
    }
    Ok(out)
}

/// The `/worker/stats/node` body: this node's rows, exact.
pub fn node_json(rows: &[WorkerRow]) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id, "successes": r.successes, "failures": r.failures,
                "total": r.total, "sum_response_us": r.sum_us,
            })
        })
        .collect();
    serde_json::json!({ "node": rows }).to_string()
}

/// Reads a `/worker/stats/node` body.
fn parse_node_json(body: &[u8]) -> Result<Vec<WorkerRow>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a node stats answer: {e}"))?;
    let rows = v["node"].as_array().ok_or("no node rows in the answer")?;
    rows.iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().ok_or_else(|| format!("row without {k}"));
            Ok(WorkerRow {
                id: r["id"].as_str().ok_or("row without id")?.to_string(),
                successes: n("successes")?,
                failures: n("failures")?,
                total: n("total")?,
                sum_us: n("sum_response_us")?,
            })
        })
        .collect()
}

/// Per worker id the row with the larger total (ties: the first seen), ordered by id.
pub fn merge(sets: impl IntoIterator<Item = Vec<WorkerRow>>) -> Vec<WorkerRow> {
    let mut by_id: BTreeMap<String, WorkerRow> = BTreeMap::new();
    for row in sets.into_iter().flatten() {
        match by_id.get(&row.id) {
            Some(have) if have.total >= row.total => {}
            _ => {
                by_id.insert(row.id.clone(), row);
            }
        }
    }
    by_id.into_values().collect()
}

/// Every address the peer entries resolve to (deduplicated, at most [`MAX_PEERS`]), and the
/// entries that did not resolve.
fn resolve(peers: &[String]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut failed = Vec::new();
    for p in peers {
        match p.to_socket_addrs() {
            Ok(found) => {
                for a in found {
                    if !addrs.contains(&a) && addrs.len() < MAX_PEERS {
                        addrs.push(a);
                    }
                }
            }
            Err(_) => failed.push(p.clone()),
        }
    }
    (addrs, failed)
}

/// GET /worker/stats/node of one peer, within `timeout`.
fn fetch(addr: SocketAddr, timeout: Duration) -> Result<Vec<WorkerRow>, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /worker/stats/node HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() as u64 > MAX_ANSWER {
                    return Err("answer too large".into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete answer")?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        let line = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
        return Err(format!("answered {:?}", line.lines().next().unwrap_or("")));
    }
    parse_node_json(&buf[split + 4..])
}

/// The merged `/worker/stats` body: `local` rows and every peer's node rows, in the seed's
/// shape; peers that did not answer are named in an extra `UnreachablePeers` list.
pub fn merged_json(local: Vec<WorkerRow>, peers: &[String], timeout: Duration) -> String {
    let (addrs, mut unreachable) = resolve(peers);
    let answers: Vec<(SocketAddr, Result<Vec<WorkerRow>, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = addrs
            .iter()
            .map(|&a| (a, s.spawn(move || fetch(a, timeout))))
            .collect();
        handles
            .into_iter()
            .map(|(a, h)| (a, h.join().unwrap_or_else(|_| Err("panicked".into()))))
            .collect()
    });
    let mut sets = vec![local];
    for (addr, answer) in answers {
        match answer {
            Ok(rows) => sets.push(rows),
            Err(e) => {
                crate::warn!(
                    "peer_stats_failed",
                    "peer={addr} error={}",
                    crate::sys::log::quote(&e)
                );
                unreachable.push(addr.to_string());
            }
        }
    }
    let body = stats_json(&merge(sets));
    if unreachable.is_empty() {
        return body;
    }
    let list = serde_json::to_string(&unreachable).unwrap_or_else(|_| "[]".into());
    match body.strip_suffix('}') {
        Some(open) => format!("{open},\"UnreachablePeers\":{list}}}"),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, ok: u64, failed: u64, sum: u64) -> WorkerRow {
        WorkerRow {
            id: id.into(),
            successes: ok,
            failures: failed,
            total: ok + failed,
            sum_us: sum,
        }
    }

    #[test]
    fn peers_are_host_port_lists() {
        assert_eq!(
            parse_peers("tasks.glb-workers:6000, 10.0.0.2:7000,"),
            Ok(vec![
                "tasks.glb-workers:6000".into(),
                "10.0.0.2:7000".into()
            ])
        );
        assert!(parse_peers("nohost").is_err());
        assert!(parse_peers("x:0").is_err());
        assert!(parse_peers(":80").is_err());
    }

    #[test]
    fn node_rows_round_trip() {
        let rows = vec![row("a", 3, 1, 4000), row("b\"x", 0, 0, 0)];
        let body = node_json(&rows);
        assert_eq!(parse_node_json(body.as_bytes()), Ok(rows));
        assert!(parse_node_json(b"{}").is_err());
    }

    #[test]
    fn merge_keeps_the_larger_total_per_worker_whole() {
        let merged = merge([
            vec![row("a", 5, 0, 500), row("b", 1, 0, 100)],
            vec![row("a", 7, 1, 900), row("c", 2, 0, 10)],
            vec![row("a", 6, 0, 600)],
        ]);
        assert_eq!(
            merged,
            vec![row("a", 7, 1, 900), row("b", 1, 0, 100), row("c", 2, 0, 10)]
        );
    }

    #[test]
    fn an_unreachable_peer_is_named_not_fatal() {
        // A port nothing listens on: refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let body = merged_json(
            vec![row("a", 2, 0, 20)],
            &[addr.to_string()],
            Duration::from_millis(300),
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["TotalRequests"][0]["total"], 2);
        assert_eq!(v["UnreachablePeers"][0], addr.to_string());
    }
}
