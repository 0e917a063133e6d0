//! TCP (L4) mode: round-robin per connection, retry past a dead backend, half-close in both
//! directions, and the tunnel idle timeout.

mod common;
mod proxy_support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::backend::Backend;
use common::connect;
use proxy_support::{dead_addr, proxy};

/// A backend that greets with its name, then reads to EOF and answers `<name> got <n>`.
fn counting(name: &'static str) -> Backend {
    Backend::raw(move |mut s, _| {
        let _ = s.write_all(format!("{name}\n").as_bytes());
        let mut n = 0usize;
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let _ = s.write_all(format!("{name} got {n}").as_bytes());
    })
}

fn greeting(s: &mut std::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn connections_rotate_and_half_close_propagates() {
    let (a, b) = (counting("a"), counting("b"));
    let (_p, addr) = proxy(&[a.arg(), b.arg()], &["--mode", "tcp"]);
    let mut names = Vec::new();
    for _ in 0..4 {
        let mut s = connect(addr);
        let name = greeting(&mut s);
        // Client -> backend: 300 KB then half-close; the backend sees EOF and still answers.
        let data = vec![7u8; 300_000];
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, format!("{name} got 300000"));
        names.push(name);
    }
    // The start of the rotation depends on the readiness probe's own connection.
    assert_ne!(names[0], names[1]);
    assert_eq!(names[0], names[2]);
    assert_eq!(names[1], names[3]);
}

#[test]
fn backend_half_close_reaches_the_client_which_can_still_send() {
    // The backend sends everything and shuts its write side first; the client sees EOF,
    // then sends its own data, which must still arrive.
    let (tx, rx) = std::sync::mpsc::channel();
    let b = Backend::raw(move |mut s, _| {
        let _ = s.write_all(b"all from server");
        let _ = s.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.send(got);
    });
    let (_p, addr) = proxy(&[b.arg()], &["--mode", "tcp"]);
    let mut s = connect(addr);
    let mut first = String::new();
    s.read_to_string(&mut first).unwrap();
    assert_eq!(first, "all from server");
    s.write_all(b"late client bytes").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    // (The readiness probe's connection reports an empty read first.)
    let got = loop {
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if !got.is_empty() {
            break got;
        }
    };
    assert_eq!(got, b"late client bytes");
}

#[test]
fn a_dead_backend_is_skipped() {
    let a = counting("a");
    let (_p, addr) = proxy(&[dead_addr(), a.arg()], &["--mode", "tcp"]);
    for _ in 0..4 {
        let mut s = connect(addr);
        assert_eq!(greeting(&mut s), "a");
    }
}

#[test]
fn idle_tunnel_is_closed_after_its_timeout() {
    let b = Backend::raw(|mut s, _| {
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    let (_p, addr) = proxy(&[b.arg()], &["--mode", "tcp", "--tunnel-timeout-ms", "300"]);
    let mut s = connect(addr);
    let mut buf = [0u8; 16];
    // Closed by the proxy (EOF), well before the test's own read deadline.
    assert_eq!(s.read(&mut buf).unwrap(), 0);
}
