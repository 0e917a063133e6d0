//! The HTTP proxy's basic behaviour: balancing per request, forwarding, bodies, retries and
//! 503 with no backend. Black-box: the real binary, raw sockets, recording backends.

mod common;
mod proxy_support;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{connect, raw_request, read_response};
use proxy_support::{Backend, dead_addr, proxy};

#[test]
fn round_robin_per_request_on_one_keep_alive_connection() {
    let backends = [
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    ];
    let args: Vec<String> = backends.iter().map(Backend::arg).collect();
    let (_p, addr) = proxy(&args, &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..6 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.text());
    }
    assert_eq!(bodies, ["a", "b", "c", "a", "b", "c"]);
    for b in &backends {
        assert_eq!(b.requests().len(), 2);
    }
}

#[test]
fn forwarded_head_drops_hop_by_hop_and_adds_forwarded_fields() {
    let b = Backend::named("a");
    let (_p, addr) = proxy(&[b.arg()], &[]);
    let r = raw_request(
        addr,
        b"GET /p?q=1 HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = b.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.line(), "GET /p?q=1 HTTP/1.1");
    assert_eq!(
        s.names(),
        [
            "Host",
            "X-Forwarded-For",
            "Accept",
            "X-Forwarded-Proto",
            "X-Request-Id"
        ]
    );
    assert_eq!(s.fields("host"), ["example"]);
    assert_eq!(s.fields("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(s.fields("x-forwarded-proto"), ["http"]);
}

#[test]
fn bodies_are_forwarded_with_their_framing() {
    let b = Backend::named("a");
    let (_p, addr) = proxy(&[b.arg()], &[]);
    let r = raw_request(
        addr,
        b"POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let r = raw_request(
        addr,
        b"POST /ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = b.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, b"hello world");
    assert!(!seen[0].chunked);
    assert_eq!(seen[0].fields("content-length"), ["11"]);
    assert_eq!(seen[1].body, b"hello world");
    assert!(seen[1].chunked);
    assert!(seen[1].fields("content-length").is_empty());
}

#[test]
fn connect_failure_is_retried_on_the_next_backend() {
    let live = Backend::named("live");
    let (_p, addr) = proxy(&[dead_addr(), live.arg(), dead_addr()], &["--retries", "2"]);
    for _ in 0..6 {
        let r = common::get(addr, "/").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "live");
    }
    assert_eq!(live.requests().len(), 6);
}

#[test]
fn no_reachable_backend_answers_503_quickly() {
    let (_p, addr) = proxy(&[dead_addr(), dead_addr()], &[]);
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = common::get(addr, "/").unwrap();
        assert_eq!(r.status, 503);
        // Generous bound: the point is "not a hang until some timeout".
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
