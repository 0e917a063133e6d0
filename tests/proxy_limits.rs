//! Resource bounds: the connection limit, backpressure both ways (a large body through a
//! stalled peer must not grow the proxy), thousands of idle connections costing little, and
//! a vanishing client freeing its upstream at once. Memory is read from /proc with generous
//! bounds (the failure mode is "the whole body in memory", tens of MiB).

mod common;
mod proxy_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::{connect, read_response};
use proxy_support::proxy;

/// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Reads a request head from a raw backend connection; answers the proxy's health checks
/// itself (None; a connect check closes without a byte), so only real requests reach the
/// test's handler.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    if head.is_empty() {
        return None;
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("GET /healthz ") {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        return None;
    }
    Some(head)
}

const BIG: usize = 128 * 1024 * 1024;

#[test]
fn a_large_download_to_a_stalled_client_does_not_grow_the_proxy() {
    let b = Backend::raw(|mut s, _| {
        if read_head(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").as_bytes());
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..BIG >> 20 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let (p, addr) = proxy(&[b.arg()], &[]);
    let base = status_kib(p.pid(), "VmRSS");
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Stall: the backend keeps sending, the proxy must stop reading it.
    std::thread::sleep(Duration::from_millis(1500));
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut head_done = false;
    let mut pending = Vec::new();
    while total < BIG {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {total} body bytes");
        if head_done {
            total += n;
        } else {
            pending.extend_from_slice(&buf[..n]);
            if let Some(i) = common::find(&pending, b"\r\n\r\n") {
                head_done = true;
                total += pending.len() - i - 4;
            }
        }
    }
    assert_eq!(total, BIG);
    let peak = status_kib(p.pid(), "VmHWM");
    assert!(
        peak < base + 16 * 1024,
        "proxy peak RSS {peak} KiB vs {base} KiB at start"
    );
}

#[test]
fn a_large_upload_to_a_stalled_backend_does_not_grow_the_proxy() {
    let (tx, rx) = mpsc::channel();
    let b = Backend::raw(move |mut s, _| {
        if read_head(&mut s).is_none() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1500));
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        while got < BIG {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let _ = tx.send(got);
    });
    let (p, addr) = proxy(&[b.arg()], &[]);
    let base = status_kib(p.pid(), "VmRSS");
    let mut s = connect(addr);
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {BIG}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let chunk = vec![b'y'; 1 << 20];
    for _ in 0..BIG >> 20 {
        s.write_all(&chunk).unwrap();
    }
    assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(BIG));
    let mut pending = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut pending, false).unwrap().status,
        200
    );
    let peak = status_kib(p.pid(), "VmHWM");
    assert!(
        peak < base + 16 * 1024,
        "proxy peak RSS {peak} KiB vs {base} KiB at start"
    );
}

#[test]
fn thousands_of_idle_keep_alive_connections_cost_little() {
    let b = Backend::ok("x");
    let (p, addr) = proxy(&[b.arg()], &[]);
    // Warm up (first buffers, pooled upstream connection), then measure.
    let _ = common::get(addr, "/").unwrap();
    let base = status_kib(p.pid(), "VmRSS");
    const N: usize = 2000;
    let mut conns = Vec::with_capacity(N);
    let mut pending = Vec::new();
    for _ in 0..N {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(
            read_response(&mut s, &mut pending, false).unwrap().status,
            200
        );
        conns.push(s);
    }
    let after = status_kib(p.pid(), "VmRSS");
    let per_conn = (after.saturating_sub(base)) * 1024 / N as u64;
    eprintln!("rss per idle connection: {per_conn} bytes ({base} KiB -> {after} KiB)");
    assert!(per_conn < 4096, "{per_conn} bytes per idle connection");
    // And they are all still usable.
    for s in conns.iter_mut().step_by(100) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(s, &mut pending, false).unwrap().status, 200);
    }
}

#[test]
fn connection_limit_queues_then_resumes() {
    let b = Backend::ok("x");
    let (_p, addr) = proxy(&[b.arg()], &["--max-connections", "2"]);
    let mut pending = Vec::new();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(
            read_response(&mut s, &mut pending, false).unwrap().status,
            200
        );
        held.push(s);
    }
    // The third connection is queued by the kernel: no answer while two are open.
    let mut third = connect(addr);
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(third.read(&mut byte).is_err(), "answered beyond the limit");
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut pending = byte[..0].to_vec();
    assert_eq!(
        read_response(&mut third, &mut pending, false)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_client_vanishing_mid_request_or_mid_response_frees_the_upstream() {
    // Mid-request: the backend waits for a body that never comes; it must see the
    // connection closed once the client is gone.
    let (tx, rx) = mpsc::channel();
    let b = Backend::raw(move |mut s, _| {
        if read_head(&mut s).is_none() {
            return;
        }
        let mut buf = [0u8; 4096];
        let t0 = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(t0.elapsed());
    });
    let (_p, addr) = proxy(&[b.arg()], &[]);
    let mut s = connect(addr);
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\npartial")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());

    // Mid-response: the backend streams forever; its writes must fail once the client left.
    let (tx, rx) = mpsc::channel();
    let b = Backend::raw(move |mut s, _| {
        if read_head(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n");
        let chunk = vec![b'z'; 65536];
        while s.write_all(&chunk).is_ok() {}
        let _ = tx.send(());
    });
    let (_p, addr) = proxy(&[b.arg()], &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = [0u8; 65536];
    let _ = s.read(&mut buf).unwrap();
    drop(s);
    assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
}

/// CPU time (utime + stime) of a process in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_the_proxy_waits_without_spinning_and_recovers() {
    let b = Backend::ok("x");
    // 40 descriptors: the loop's own, then a handful of connections; the rest queue up.
    // Port 0, read back from the log: see `proxy_support::proxy`.
    let (mut p, addr) = common::start_logging_listen(
        "proxy",
        std::process::Command::new("sh").args([
            "-c",
            &format!(
                "ulimit -n 40 && exec {} proxy --listen 127.0.0.1:0 --backend {}",
                common::bin(),
                b.arg()
            ),
        ]),
        "lb_started",
    );
    common::wait_for_port(addr, Duration::from_secs(10));
    let held: Vec<TcpStream> = (0..60).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = cpu_ticks(p.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(p.pid()) - t0;
    // A spinning loop would burn ~200 ticks in 2 s; waiting costs next to nothing.
    assert!(
        spent < 100,
        "{spent} ticks of CPU in 2 s while out of descriptors"
    );
    assert!(p.alive());
    drop(held);
    let mut pending = Vec::new();
    let r = (0..50)
        .find_map(|_| {
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
            let r = read_response(&mut s, &mut pending, false).ok();
            if r.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            r
        })
        .expect("no answer after the descriptors were freed");
    assert_eq!(r.status, 200);
}
