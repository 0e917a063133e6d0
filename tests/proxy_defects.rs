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
    let mut cmd = std::process::Command::new(common::bin());
    // Port 0, read back from the log: see `proxy_support::proxy`.
    cmd.args(["proxy", "--listen", "127.0.0.1:0"]);
    for b in backends {
        cmd.args(["--backend", b]);
    }
    cmd.args(extra)
        .env("GLB_DEBUG", "1")
        .stderr(std::fs::File::create(log).unwrap());
    let mut p = common::Proc::start_cmd("proxy", &mut cmd);
    let addr = common::wait_logged_listen(&mut p, log, "lb_started");
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

#[test]
fn chunked_request_bodies_are_reframed_canonically_without_forbidden_trailers() {
    let b = Backend::ok("got");
    let (_p, addr) = one(&b, &[]);
    let r = raw_request(
        addr,
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          0005;name=\"v\"\r\nhello\r\n00000006 ; ext\r\n world\r\n000\r\n\
          Content-Length: 5\r\nX-Checksum: 42\r\nHost: evil.example\r\n\
          Transfer-Encoding: gzip\r\nAuthorization: Basic eA==\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let req = &b.wait_requests(1, std::time::Duration::from_secs(5))[0];
    assert_eq!(req.body, b"hello world");
    let body_on_wire = &req.raw[req.head.len()..];
    assert_eq!(
        String::from_utf8_lossy(body_on_wire),
        "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n"
    );
}

/// Descriptors of `pid` numbered below `limit` (one inherited from the test harness may sit
/// above it).
fn open_fds(pid: i32, limit: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < limit)
            .count()
    })
}

#[test]
fn out_of_descriptors_on_the_upstream_connect_is_503_and_the_backend_stays_up() {
    let dir = common::TempDir::new("emfile upstream");
    let log = dir.join("proxy.log");
    let b = Backend::ok("fine");
    const LIMIT: usize = 32;
    // No health check during the test: only the request path can take the backend down.
    let mut p = common::Proc::start_cmd(
        "proxy",
        std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ulimit -n {LIMIT} && exec {} proxy --listen 127.0.0.1:0 --backend {} --health-interval-ms 600000 --retries 0",
                    common::bin(),
                    b.arg()
                ),
            ])
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let addr = common::wait_logged_listen(&mut p, &log, "lb_started");
    common::wait_for_port(addr, std::time::Duration::from_secs(10));
    // The first health check runs within a second of the start (then not for 10 minutes):
    // let it end, so its descriptor is not counted.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Idle client connections until every descriptor is taken.
    let mut held = Vec::new();
    while open_fds(p.pid(), LIMIT) < LIMIT && held.len() < 100 {
        let before = open_fds(p.pid(), LIMIT);
        held.push(connect(addr));
        for _ in 0..100 {
            if open_fds(p.pid(), LIMIT) > before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    assert_eq!(
        open_fds(p.pid(), LIMIT),
        LIMIT,
        "could not fill the descriptor table"
    );
    // An accepted client asks: the upstream connect has no descriptor left.
    held[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut pending = Vec::new();
    let status = read_response(&mut held[0], &mut pending, false)
        .unwrap()
        .status;
    assert_eq!(status, 503);
    drop(held);
    // The backend was not ejected: the next request is served at once.
    let r = (0..50)
        .find_map(|_| {
            let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok();
            if r.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r
        })
        .expect("no answer after the descriptors were freed");
    assert_eq!((r.status, r.text().as_str()), (200, "fine"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("event=out_of_descriptors"), "{text}");
    assert!(!text.contains("backend_down"), "{text}");
}

/// Asks `/` until it gets `want` (health verdicts take a few checks); the last status.
fn status_becomes(addr: std::net::SocketAddr, want: u16) -> u16 {
    let mut last = 0;
    for _ in 0..30 {
        last = raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").map_or(0, |r| r.status);
        if last == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    last
}

#[test]
fn the_standalone_proxy_keeps_serving_a_server_without_healthz() {
    // A server with no /healthz (404), a redirecting /moved and an app at /.
    let b = Backend::start_with(
        common::backend::Options {
            health_path: None,
            ..Default::default()
        },
        |req| match req.target.as_str() {
            "/healthz" => vec![Step::Send(response(404, "no such page"))],
            "/moved" => vec![Step::Send(
                b"HTTP/1.1 301 Moved Permanently\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            )],
            _ => vec![Step::Send(response(200, "app"))],
        },
    );
    let fast = ["--health-interval-ms", "50", "--health-fall", "1"];
    // Default (auto): a connect check; three checks' worth of time and more, still served.
    let (_p, addr) = one(&b, &fast);
    std::thread::sleep(std::time::Duration::from_millis(600));
    for _ in 0..5 {
        let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "app"));
    }
    // A 3xx passes an HTTP check.
    let mut with_path = fast.to_vec();
    with_path.extend(["--health-path", "/moved"]);
    let (_p2, addr2) = one(&b, &with_path);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(status_becomes(addr2, 200), 200);
    // The HTTP check does run when asked for: /healthz answers 404, the backend goes down.
    let mut asked = fast.to_vec();
    asked.extend(["--health-path", "/healthz"]);
    let (_p3, addr3) = one(&b, &asked);
    assert_eq!(status_becomes(addr3, 503), 503);
}
