//! HTTP/1.1 behaviour of the proxy, point by point (issue 4): framing both ways, 1xx,
//! HTTP/1.0 clients, pipelining, upgrades, hop-by-hop in responses, rejections, timeouts and
//! broken backends. Raw sockets against the real binary; scripted recording backends.

mod common;
mod proxy_support;

use std::io::{Read, Write};
use std::time::Duration;

use common::backend::{Backend, Step, chunked_response, response};
use common::{connect, raw_request, read_response, read_to_close};
use proxy_support::proxy;

fn one(b: &Backend, extra: &[&str]) -> (common::Proc, std::net::SocketAddr) {
    proxy(&[b.arg()], extra)
}

#[test]
fn chunked_response_with_trailers_reaches_a_1_1_client_chunked() {
    let b = Backend::fixed(&chunked_response(200, &["hel", "lo"], &["X-T: 1"]));
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"hello");
    // Still usable: the chunked message ended exactly at its last chunk and trailers.
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut s, &mut pending, false).unwrap().body,
        b"hello"
    );
    assert!(pending.is_empty());
}

#[test]
fn http_1_0_client_gets_no_chunked_and_no_keep_alive_unless_asked() {
    let b = Backend::fixed(&chunked_response(200, &["abc", "def"], &[]));
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let raw = String::from_utf8(read_to_close(&mut s)).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(body, "abcdef");

    let b = Backend::fixed(&response(200, "kept"));
    let (_p2, addr) = one(&b, &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!(r.body, b"kept");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    // The first request is the slowest: answers must still come in request order.
    let b = Backend::start(|req| {
        let delay = if req.target == "/1" { 300 } else { 0 };
        vec![
            Step::Sleep(Duration::from_millis(delay)),
            Step::Send(response(200, &req.target)),
        ]
    });
    let c = Backend::start(|req| vec![Step::Send(response(200, &req.target))]);
    let (_p, addr) = proxy(&[b.arg(), c.arg()], &[]);
    let mut s = connect(addr);
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\nGET /3 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    let bodies: Vec<String> = (0..3)
        .map(|_| read_response(&mut s, &mut pending, false).unwrap().text())
        .collect();
    assert_eq!(bodies, ["/1", "/2", "/3"]);
}

#[test]
fn interim_responses_are_relayed_before_the_final_one() {
    let b = Backend::fixed(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut pending = Vec::new();
    let r1 = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r1.status, 103);
    assert_eq!(r1.header("link"), Some("</s.css>; rel=preload"));
    let r2 = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r2.status, r2.text().as_str()), (200, "ok"));
}

#[test]
fn expect_100_continue_goes_through() {
    // The backend answers 100 Continue on its own (auto_continue), then reads the body.
    let b = Backend::start(|req| {
        vec![Step::Send(response(
            200,
            &String::from_utf8_lossy(&req.body),
        ))]
    });
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(b"PUT /u HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 100);
    s.write_all(b"data").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "data"));
    let reqs = b.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("expect"), Some("100-continue"));
}

#[test]
fn head_204_and_304_responses_have_no_body() {
    let b = Backend::start(|req| {
        let bytes: &[u8] = match req.target.as_str() {
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n",
            _ => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        };
        vec![Step::Send(bytes.to_vec())]
    });
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    s.write_all(b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, true).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));
    for (path, status) in [("/204", 204), ("/304", 304)] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!(r.status, status);
        assert!(r.body.is_empty());
    }
    // Nothing stray on the connection: one more request answers normally.
    s.write_all(b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut s, &mut pending, false).unwrap().status,
        204
    );
    assert!(pending.is_empty());
}

#[test]
fn upgrade_becomes_a_tunnel_after_101() {
    let b = Backend::start(|_req| {
        vec![
            Step::Send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .to_vec(),
            ),
            Step::Echo,
        ]
    });
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(r.header("connection"), Some("upgrade"));
    let reqs = b.requests();
    assert_eq!(reqs[0].header("upgrade"), Some("websocket"));
    s.write_all(b"\x81\x05hello raw bytes").unwrap();
    let mut got = vec![0u8; 17];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x81\x05hello raw bytes");
}

#[test]
fn refused_upgrade_stays_http() {
    let b = Backend::fixed(&response(200, "no upgrade"));
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "no upgrade"));
    s.write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(b.requests()[1].target, "/again");
}

#[test]
fn response_hop_by_hop_fields_are_removed() {
    let b = Backend::fixed(
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
    );
    let (_p, addr) = one(&b, &[]);
    let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let names: Vec<String> = r
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    assert_eq!(names, ["x-kept", "x-request-id", "content-length"]);
}

#[test]
fn absolute_form_target_sets_the_upstream_host() {
    let b = Backend::ok("x");
    let (_p, addr) = one(&b, &[]);
    let r = raw_request(
        addr,
        b"GET http://other.example:81/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let reqs = b.requests();
    assert_eq!(reqs[0].target, "http://other.example:81/p?q");
    assert_eq!(reqs[0].headers_named("host"), ["other.example:81"]);
}

#[test]
fn ambiguous_or_oversized_requests_are_rejected_and_never_forwarded() {
    let b = Backend::ok("x");
    let (_p, addr) = one(
        &b,
        &[
            "--max-body-bytes",
            "10",
            "--max-request-line",
            "100",
            "--max-headers",
            "5",
        ],
    );
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(200));
    let many = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..10).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n".to_vec(), 505),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world".to_vec(), 413),
        (long_line.into_bytes(), 414),
        (many.into_bytes(), 431),
    ];
    for (raw, status) in cases {
        let mut s = connect(addr);
        s.write_all(&raw).unwrap();
        let mut pending = Vec::new();
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&raw));
        assert_eq!(r.header("connection"), Some("close"));
        // The proxy closes after a rejection.
        assert!(read_to_close(&mut s).is_empty());
    }
    assert!(b.saw_nothing());
}

#[test]
fn slow_header_gets_408_and_idle_keep_alive_is_closed() {
    let b = Backend::ok("x");
    let (_p, addr) = one(
        &b,
        &["--header-timeout-ms", "300", "--idle-timeout-ms", "300"],
    );
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 408);
    assert!(read_to_close(&mut s).is_empty());

    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 200);
    // Idle past the keep-alive timeout: closed without a response.
    assert!(read_to_close(&mut s).is_empty());
}

#[test]
fn broken_backend_responses_are_502() {
    let cases: [&[u8]; 4] = [
        b"HTTP/1.1 2OO OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ];
    for bytes in cases {
        let bytes = bytes.to_vec();
        let b = Backend::start(move |_| vec![Step::Send(bytes.clone()), Step::Close]);
        let (_p, addr) = one(&b, &["--retries", "0"]);
        let r = raw_request(
            addr,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 502);
    }
    // Closed without a byte: 502 for a non-idempotent request.
    let b = Backend::start(|_| vec![Step::Close]);
    let (_p, addr) = one(&b, &[]);
    let r = raw_request(
        addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        b.requests().len(),
        1,
        "a POST that reached a backend is not retried"
    );
}

#[test]
fn slow_backend_gets_504() {
    let b = Backend::start(|_| {
        vec![
            Step::Sleep(Duration::from_secs(3)),
            Step::Send(response(200, "late")),
        ]
    });
    let (_p, addr) = one(&b, &["--response-timeout-ms", "300"]);
    let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 504);
}

#[test]
fn backend_dying_mid_body_truncates_the_client_message() {
    let b = Backend::start(|_| {
        vec![
            Step::Send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
            ),
            Step::Close,
        ]
    });
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let raw = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.ends_with("5\r\nhello\r\n"), "{text:?}");
    assert!(!text.contains("\r\n0\r\n"), "no final chunk: {text:?}");

    let b = Backend::start(|_| {
        vec![
            Step::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345".to_vec()),
            Step::Close,
        ]
    });
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let raw = read_to_close(&mut s);
    assert!(String::from_utf8_lossy(&raw).ends_with("\r\n\r\n12345"));
}

#[test]
fn idempotent_request_on_a_stale_pooled_connection_is_retried() {
    // The backend closes every connection right after answering, without saying so: the
    // proxy's pooled connection is dead when the next request comes.
    let b = Backend::start(|req| vec![Step::Send(response(200, &req.target)), Step::Close]);
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    for i in 0..5 {
        s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!((r.status, r.text()), (200, format!("/{i}")));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_1_0_client_gets_the_whole_dechunked_body_when_the_backend_closes_right_after() {
    // A chunked response larger than the socket buffers, then the backend closes at once:
    // the de-chunked bytes still queued for a slow HTTP/1.0 client must all arrive.
    let chunk = "x".repeat(60_000);
    let chunks: Vec<&str> = (0..40).map(|_| chunk.as_str()).collect();
    let body = chunked_response(200, &chunks, &[]);
    let b = Backend::start(move |_| vec![Step::Send(body.clone()), Step::Close]);
    let (_p, addr) = one(&b, &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let raw = read_to_close(&mut s);
    let at = common::find(&raw, b"\r\n\r\n").unwrap() + 4;
    assert_eq!(raw.len() - at, 40 * 60_000);
}
