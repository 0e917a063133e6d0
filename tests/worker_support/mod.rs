//! Shared by the worker test binaries: start a worker, read its stats, and a one-thread mio
//! client that holds many connections and times every exchange.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{self, Proc, get, wait_for_port};

pub const HELLO: &[u8] = b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\n\r\n";
pub const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/// Starts a worker on a port the kernel picks (`--port 0`, no race with parallel tests) and
/// returns it and its address, read from its `worker_started` log line; the rest of its log
/// is passed on to the test's stderr.
pub fn start_worker(db: &Path, id: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let (p, addr, _) = start_worker_logged(db, id, extra, &[]);
    (p, addr)
}

/// Every log line a worker wrote so far.
pub type LogLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`start_worker`] with extra environment, also keeping every line of its log.
pub fn start_worker_logged(
    db: &Path,
    id: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, SocketAddr, LogLines) {
    use std::io::BufRead;
    let mut p = Proc::start_cmd(
        &format!("worker {id}"),
        std::process::Command::new(common::bin())
            .args(["worker", "--listen", "127.0.0.1", "--port", "0", "--id", id])
            .arg("--db")
            .arg(db)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped()),
    );
    let stderr = p.child.stderr.take().expect("piped stderr");
    let lines = LogLines::default();
    let kept = lines.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if line.contains("event=worker_started")
                && let Some(addr) = line
                    .split(' ')
                    .find_map(|f| f.strip_prefix("listen="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
            if let Ok(mut l) = kept.lock() {
                l.push(line);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("worker {id} did not log worker_started within 30 s"));
    wait_for_port(addr, Duration::from_secs(10));
    (p, addr, lines)
}

/// The /worker/stats body, parsed.
pub fn stats(addr: SocketAddr) -> serde_json::Value {
    let r = get(addr, "/worker/stats").expect("GET /worker/stats");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("stats is JSON")
}

/// The value of `id`'s entry in one of the stats lists.
pub fn entry(stats: &serde_json::Value, list: &str, id: &str) -> Option<serde_json::Value> {
    stats[list]
        .as_array()?
        .iter()
        .find_map(|e| e.get(id).cloned())
}

/// One exchange as the client saw it.
#[derive(Debug, Clone)]
pub struct Obs {
    pub status: u16,
    pub body: String,
    /// From the request's first byte written to the response's last byte read.
    pub elapsed: Duration,
    /// 0 for a connection's first request, 1 for its second...
    pub round: usize,
    /// Which connection (0..conns).
    pub conn: usize,
    /// The delay the worker says it drew (`X-Delay-Ms`), hello answers only.
    pub delay_ms: Option<f64>,
}

/// Parses one complete response (Content-Length framed) from the start of `buf`:
/// (bytes used, status, body).
pub fn parse_one(buf: &[u8]) -> Option<(usize, u16, String)> {
    let end = common::find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).expect("utf-8 head");
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let cl: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if buf.len() < end + cl {
        return None;
    }
    let body = String::from_utf8_lossy(&buf[end..end + cl]).into_owned();
    Some((end + cl, status, body))
}

/// The `X-Delay-Ms` field of the response head at the start of `buf`.
pub fn delay_field(buf: &[u8]) -> Option<f64> {
    let end = common::find(buf, b"\r\n\r\n")?;
    std::str::from_utf8(&buf[..end])
        .ok()?
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-delay-ms")
                .then(|| v.trim().parse().ok())?
        })
}

/// Opens `conns` connections at once and sends `per_conn` requests on each, one after the
/// other (the next once the previous answer is in), from one mio thread so client-side timing
/// is not at the mercy of hundreds of threads. Panics after `limit`.
pub fn hammer(
    addr: SocketAddr,
    conns: usize,
    per_conn: usize,
    req: &[u8],
    limit: Duration,
) -> Vec<Obs> {
    hammer_cycle(addr, conns, per_conn, &[req], limit)
}

/// `hammer` where a connection's request number `r` is `reqs[r % reqs.len()]`.
pub fn hammer_cycle(
    addr: SocketAddr,
    conns: usize,
    per_conn: usize,
    reqs: &[&[u8]],
    limit: Duration,
) -> Vec<Obs> {
    use mio::net::TcpStream as MioStream;
    use mio::{Events, Interest, Poll, Token};
    struct C {
        s: MioStream,
        connected: bool,
        written: usize,
        started: Option<Instant>,
        buf: Vec<u8>,
        done: usize,
    }
    raise_fd_limit();
    let mut poll = Poll::new().unwrap();
    let mut cs: Vec<C> = (0..conns)
        .map(|i| {
            let mut s = MioStream::connect(addr).expect("connect");
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                .unwrap();
            C {
                s,
                connected: false,
                written: 0,
                started: None,
                buf: Vec::new(),
                done: 0,
            }
        })
        .collect();
    let mut out = Vec::with_capacity(conns * per_conn);
    let mut events = Events::with_capacity(1024);
    let end = Instant::now() + limit;
    let mut finished = 0;
    let mut tmp = vec![0u8; 65536];
    while finished < conns {
        let now = Instant::now();
        assert!(
            now < end,
            "hammer: only {} of {} responses within {limit:?}",
            out.len(),
            conns * per_conn
        );
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut cs[i];
            if c.done == per_conn {
                continue;
            }
            if !c.connected {
                if let Ok(Some(e)) | Err(e) = c.s.take_error() {
                    panic!("connect {addr}: {e}");
                }
                if c.s.peer_addr().is_err() {
                    continue;
                }
                c.connected = true;
            }
            // Write the current request (whole or rest).
            let req = reqs[c.done % reqs.len()];
            while c.written < req.len() {
                // The clock starts before the first byte can reach the worker.
                let before = Instant::now();
                match c.s.write(&req[c.written..]) {
                    Ok(n) => {
                        if c.written == 0 {
                            c.started = Some(before);
                        }
                        c.written += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            loop {
                match c.s.read(&mut tmp) {
                    Ok(0) => {
                        assert_eq!(c.done, per_conn, "server closed early: {:?}", c.buf);
                        break;
                    }
                    Ok(n) => c.buf.extend_from_slice(&tmp[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            while let Some((used, status, body)) = parse_one(&c.buf) {
                let t = Instant::now();
                let delay_ms = delay_field(&c.buf);
                c.buf.drain(..used);
                let started = c
                    .started
                    .expect("a response before the request was written");
                out.push(Obs {
                    status,
                    body,
                    elapsed: t - started,
                    round: c.done,
                    conn: i,
                    delay_ms,
                });
                c.done += 1;
                if c.done == per_conn {
                    finished += 1;
                    break;
                }
                // Next request on this connection.
                c.written = 0;
                c.started = None;
                let req = reqs[c.done % reqs.len()];
                while c.written < req.len() {
                    let before = Instant::now();
                    match c.s.write(&req[c.written..]) {
                        Ok(n) => {
                            if c.written == 0 {
                                c.started = Some(before);
                            }
                            c.written += n;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("write: {e}"),
                    }
                }
            }
        }
    }
    // Close with a reset, not a FIN: thousands of client-side TIME_WAIT entries would hold
    // ephemeral ports that parallel tests (and test runs) want to bind for a minute.
    for c in &cs {
        let abort = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ = nix::sys::socket::setsockopt(&c.s, nix::sys::socket::sockopt::Linger, &abort);
    }
    out
}

pub fn mean_ms(obs: &[Obs]) -> f64 {
    obs.iter()
        .map(|o| o.elapsed.as_secs_f64() * 1000.0)
        .sum::<f64>()
        / obs.len() as f64
}

/// Raises this test process's soft open-files limit to the hard one (the 2,000-connection
/// tests need more than a default 1024); the worker raises its own.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
