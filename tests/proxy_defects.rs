//! The data-path defects of issue 13, one test each, raw sockets against the real binary
//! (each failed before its fix): upgrades other than websocket, endless 1xx, large response
//! heads, clients stalling mid-body, chunked re-framing, running out of descriptors, and
//! health checks against servers without /healthz.

mod common;
mod proxy_support;

use std::io::{Read, Write};

use common::backend::{Backend, Step, response};
use common::{connect, raw_request, read_response};
use proxy_support::proxy;

fn one(b: &Backend, extra: &[&str]) -> (common::Proc, std::net::SocketAddr) {
    proxy(&[b.arg()], extra)
}

/// A backend that switches to whatever protocol is asked (then echoes), else answers 200.
fn switching_backend() -> Backend {
    Backend::start(|req| {
        match req.header("upgrade") {
        Some(p) => vec![
            Step::Send(
                format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: {p}\r\nConnection: Upgrade\r\n\r\n")
                    .into_bytes(),
            ),
            Step::Echo,
        ],
        None => vec![Step::Send(response(200, "plain"))],
    }
    })
}

const H2C: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n";

#[test]
fn only_allowed_upgrades_are_tunnelled_others_are_forwarded_plain() {
    let b = switching_backend();
    let (_p, addr) = one(&b, &[]);
    // h2c is not allowed by default: forwarded as a plain request, answered 200.
    let r = raw_request(addr, H2C).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    let seen = b.requests();
    assert_eq!(seen[0].header("upgrade"), None, "Upgrade stripped");
    assert_eq!(seen[0].header("http2-settings"), None);
    assert!(
        seen[0]
            .header("connection")
            .is_none_or(|v| !v.to_ascii_lowercase().contains("upgrade")),
        "{:?}",
        seen[0].header("connection")
    );
    // websocket still tunnels.
    let mut s = connect(addr);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut pending, false).unwrap().status,
        101
    );
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    // allowed-upgrades widens the list.
    let (_p2, addr2) = one(&b, &["--allowed-upgrades", "websocket,h2c"]);
    let mut s = connect(addr2);
    s.write_all(H2C).unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.header("upgrade")), (101, Some("h2c")));
}

#[test]
fn a_101_to_a_protocol_not_allowed_is_502() {
    // The backend switches to h2c whatever was offered.
    let b = Backend::start(|_| {
        vec![
            Step::Send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                    .to_vec(),
            ),
            Step::Echo,
        ]
    });
    let (_p, addr) = one(&b, &["--retries", "0"]);
    let r = raw_request(
        addr,
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 502);
}

/// Reads responses until a final one; returns the number of interim ones and the final.
fn read_final(s: &mut std::net::TcpStream) -> (usize, common::Response) {
    let mut pending = Vec::new();
    let mut interims = 0;
    loop {
        let r = read_response(s, &mut pending, false).unwrap();
        if r.status >= 200 {
            return (interims, r);
        }
        interims += 1;
    }
}

#[test]
fn interim_responses_are_capped_then_502() {
    let b = Backend::start(|_| {
        let mut steps: Vec<Step> = (0..50)
            .map(|_| Step::Send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n".to_vec()))
            .collect();
        steps.push(Step::Send(response(200, "final")));
        steps
    });
    let (_p, addr) = one(&b, &["--max-interim-responses", "3"]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (interims, r) = read_final(&mut s);
    assert_eq!((interims, r.status), (3, 502));

    // Within the cap they all go through.
    let (_p2, addr2) = one(&b, &["--max-interim-responses", "60"]);
    let mut s = connect(addr2);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (interims, r) = read_final(&mut s);
    assert_eq!((interims, r.status, r.text().as_str()), (50, 200, "final"));
}

/// `200 OK` whose head carries `n` bytes of one extra field.
fn big_head(n: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(n)
    )
    .into_bytes()
}

#[test]
fn response_heads_up_to_max_header_bytes_pass_larger_ones_are_502_at_once() {
    let b = Backend::start(|req| {
        let n: usize = req.target.trim_start_matches('/').parse().unwrap_or(0);
        vec![Step::Send(big_head(n))]
    });
    // A response timeout far beyond the client's read deadline: a 504 cannot pass for a 502.
    let (_p, addr) = one(
        &b,
        &[
            "--response-timeout-ms",
            "600000",
            "--max-header-bytes",
            "65536",
        ],
    );
    for n in [100, 20_000, 60_000] {
        let r = raw_request(
            addr,
            format!("GET /{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "head with {n} bytes");
        assert_eq!(r.header("x-big").map(str::len), Some(n));
        assert_eq!(r.text(), "ok");
    }
    let r = raw_request(addr, b"GET /70000 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 502);
}

/// `goloadbalancer proxy` with its stderr in `log` (to check what it blamed).
fn proxy_logged(
    backends: &[String],
    extra: &[&str],
    log: &std::path::Path,
) -> (common::Proc, std::net::SocketAddr) {
    let port = common::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["proxy", "--listen", &addr.to_string()]);
    for b in backends {
        cmd.args(["--backend", b]);
    }
    cmd.args(extra)
        .env("GLB_DEBUG", "1")
        .stderr(std::fs::File::create(log).unwrap());
    let p = common::Proc::start_cmd("proxy", &mut cmd);
    common::wait_for_port(addr, std::time::Duration::from_secs(10));
    (p, addr)
}

#[test]
fn a_client_stalling_mid_body_gets_408_and_the_backend_is_not_blamed() {
    let dir = common::TempDir::new("stall body");
    let log = dir.join("proxy.log");
    let b = Backend::ok("fine");
    let (_p, addr) = proxy_logged(
        &[b.arg()],
        &["--response-timeout-ms", "300", "--retries", "0"],
        &log,
    );
    let mut s = connect(addr);
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf!")
        .unwrap();
    let mut pending = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut pending, false).unwrap().status,
        408
    );
    // The backend is still up and serves the next request.
    let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "fine"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("upstream_timeout"),
        "backend blamed:\n{text}"
    );
    assert!(!text.contains("backend_down"), "backend blamed:\n{text}");
}

#[test]
fn a_body_trickling_past_body_timeout_gets_408() {
    let b = Backend::ok("fine");
    // Every byte comes well within the response timeout, the whole body does not within
    // body-timeout-ms.
    let (_p, addr) = one(
        &b,
        &["--response-timeout-ms", "5000", "--body-timeout-ms", "600"],
    );
    let mut s = connect(addr);
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let mut answered = None;
    for _ in 0..100 {
        if s.write_all(b"x").is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        s.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let got = s.peek(&mut peek);
        s.set_nonblocking(false).unwrap();
        if matches!(got, Ok(n) if n > 0) {
            let mut pending = Vec::new();
            answered = Some(read_response(&mut s, &mut pending, false).unwrap().status);
            break;
        }
    }
    assert_eq!(answered, Some(408));
    assert!(
        b.requests().is_empty(),
        "no complete request reached the backend"
    );
}
