//! HTTP/1.1 conformance of the proxy (issue 4), black-box: the real binary
//! (`goloadbalancer proxy --listen .. --backend ..`), raw client sockets, and the recording
//! test backend (tests/common/backend.rs). Each test asserts exact statuses, bodies, and what
//! the backend received (or that it received nothing).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::backend::{Backend, Req, Step, chunked_response, response};
use common::{Proc, Response, connect, find, raw_request, read_response};

const T: Duration = Duration::from_secs(10);

/// Starts `goloadbalancer proxy` in front of `backends` with extra `--key value` flags.
fn proxy(backends: &[&Backend], extra: &[&str]) -> (Proc, SocketAddr) {
    // Port 0, read back from its log: a port picked here and bound later could be taken
    // meanwhile by another process, which the probe would then reach instead.
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["proxy", "--listen", "127.0.0.1:0"]);
    for b in backends {
        cmd.args(["--backend", &b.arg()]);
    }
    cmd.args(extra);
    let (p, addr) = common::start_logging_listen("proxy", &mut cmd, "lb_started");
    common::wait_for_port(addr, T);
    (p, addr)
}

/// Asserts the peer closes the connection (EOF or reset) within a generous bound, after
/// sending nothing more.
fn assert_closed(s: &mut TcpStream, pending: &[u8]) {
    assert!(
        pending.is_empty(),
        "unexpected bytes after the response: {:?}",
        String::from_utf8_lossy(pending)
    );
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected close, got more bytes: {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) => {}
        Err(e) => panic!("expected close, connection still open ({e})"),
    }
}

/// Asserts the connection stays open: nothing arrives and no EOF within `d`.
fn assert_open(s: &mut TcpStream, d: Duration) {
    s.set_read_timeout(Some(d)).ok();
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("connection closed, expected it to stay open"),
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&b[..n])),
        Err(e) => panic!("connection failed: {e}"),
    }
    s.set_read_timeout(Some(T)).ok();
}

/// Reads everything until the peer closes (panics if it does not within `T`).
fn read_until_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let end = Instant::now() + T;
    let mut b = [0u8; 16384];
    loop {
        assert!(Instant::now() < end, "peer did not close");
        match s.read(&mut b) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => return out,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "peer did not close; got so far {:?}",
                    String::from_utf8_lossy(&out)
                )
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads until `pending` holds `needle` (panics after `T`).
fn read_until(s: &mut TcpStream, pending: &mut Vec<u8>, needle: &[u8]) {
    let end = Instant::now() + T;
    let mut b = [0u8; 16384];
    while find(pending, needle).is_none() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {:?}",
            String::from_utf8_lossy(needle)
        );
        match s.read(&mut b) {
            Ok(0) => panic!(
                "closed while waiting for {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(pending)
            ),
            Ok(n) => pending.extend_from_slice(&b[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A response head as raw text plus the exact body bytes of a chunked response: (head,
/// decoded body, trailer lines). Reads exactly one message.
fn read_chunked_raw(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>, Vec<String>) {
    read_until(s, pending, b"\r\n\r\n");
    let he = find(pending, b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&pending[..he]).into_owned();
    pending.drain(..he);
    let mut body = Vec::new();
    loop {
        read_until(s, pending, b"\r\n");
        let le = find(pending, b"\r\n").unwrap();
        let line = String::from_utf8_lossy(&pending[..le]).into_owned();
        pending.drain(..le + 2);
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        if size == 0 {
            break;
        }
        while pending.len() < size + 2 {
            let mut b = [0u8; 16384];
            let n = s.read(&mut b).unwrap();
            assert!(n > 0, "closed inside a chunk");
            pending.extend_from_slice(&b[..n]);
        }
        body.extend_from_slice(&pending[..size]);
        assert_eq!(
            &pending[size..size + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        pending.drain(..size + 2);
    }
    let mut trailers = Vec::new();
    loop {
        read_until(s, pending, b"\r\n");
        let le = find(pending, b"\r\n").unwrap();
        let line = String::from_utf8_lossy(&pending[..le]).into_owned();
        pending.drain(..le + 2);
        if line.is_empty() {
            break;
        }
        trailers.push(line);
    }
    (head, body, trailers)
}

/// Sends `raw` on a fresh connection and returns the response and whether the proxy then
/// closed the connection.
fn one(addr: SocketAddr, raw: &[u8]) -> Response {
    raw_request(addr, raw).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(raw)))
}

/// An echoing backend: 200 with a body describing the request.
fn echo_backend() -> Backend {
    Backend::start(|r: &Req| {
        let body = format!("{} {} {}", r.method, r.target, r.body.len());
        vec![Step::Send(response(200, &body))]
    })
}

// ---------------------------------------------------------------------------------------
// Methods and targets

#[test]
fn methods_are_forwarded_exactly() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    let methods = [
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "OPTIONS",
        "PATCH",
        "TRACE",
        "PROPFIND",
        "X-Custom!#$%&'*+.^_`|~",
    ];
    for m in methods {
        write!(s, "{m} /m HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut pending, m == "HEAD").unwrap();
        assert_eq!(r.status, 200, "{m}");
        if m != "HEAD" {
            assert_eq!(r.text(), format!("{m} /m 0"));
        } else {
            assert!(r.body.is_empty());
        }
    }
    let seen = b.wait_requests(methods.len(), T);
    let got: Vec<&str> = seen.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(got, methods);
    assert!(
        seen.iter()
            .all(|r| r.conn == seen[0].conn || r.version == "HTTP/1.1")
    );
}

#[test]
fn targets_are_forwarded_byte_exact() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let targets = [
        "/",
        "/a/../b/./c",
        "//double//slash/",
        "/%2e%2E/%2F?q=%20&x=a+b;c=d",
        "/p?q=a|b{c}^`\\\"<>",
        "/~user/'quoted'(x)*,!$",
        "/path?",
        "/path?a=1&a=2&&",
        "/UPPER/lower/MiXeD",
    ];
    let mut s = connect(addr);
    let mut pending = Vec::new();
    for t in targets {
        write!(s, "GET {t} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!(r.status, 200, "{t}");
    }
    let seen = b.wait_requests(targets.len(), T);
    let got: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(got, targets);
    for r in &seen {
        assert!(
            r.head
                .starts_with(format!("GET {} HTTP/1.1\r\n", r.target).as_bytes()),
            "{}",
            r.head_text()
        );
    }
}

#[test]
fn asterisk_form_options() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(addr, b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "OPTIONS * 0"));
    let r = one(addr, b"GET * HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(b.requests().len(), 1);
}

#[test]
fn absolute_form_target_sets_host_to_its_authority() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(
        addr,
        b"GET http://Example.COM:8080/p/q?x=1 HTTP/1.1\r\nHost: other.example\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = b.wait_requests(1, T);
    let req = &seen[0];
    // Forwarded as received (absolute-form is valid to every HTTP/1.1 server).
    assert_eq!(req.target, "http://Example.COM:8080/p/q?x=1");
    assert_eq!(req.headers_named("host"), ["Example.COM:8080"]);
    assert_eq!(req.header("accept"), Some("*/*"));
}

#[test]
fn bare_lf_request_is_forwarded_with_crlf() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(addr, b"GET /lf HTTP/1.1\nHost: t\nX-A: 1\n\n");
    assert_eq!((r.status, r.text().as_str()), (200, "GET /lf 0"));
    let req = &b.wait_requests(1, T)[0];
    let head = &req.head;
    for (i, &c) in head.iter().enumerate() {
        if c == b'\n' {
            assert!(
                i > 0 && head[i - 1] == b'\r',
                "bare LF in {:?}",
                req.head_text()
            );
        }
    }
    assert_eq!(req.header("x-a"), Some("1"));
}

// ---------------------------------------------------------------------------------------
// Bodies

#[test]
fn request_body_content_length() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(
        addr,
        b"POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "POST /cl 11"));
    let req = &b.wait_requests(1, T)[0];
    assert_eq!(req.body, b"hello world");
    assert!(!req.chunked);
    assert_eq!(req.headers_named("content-length"), ["11"]);
    assert!(req.header("transfer-encoding").is_none());
}

#[test]
fn request_body_large_is_streamed_intact() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let body: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let mut s = connect(addr);
    write!(
        s,
        "PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let writer = {
        let mut s2 = s.try_clone().unwrap();
        let body = body.clone();
        std::thread::spawn(move || s2.write_all(&body))
    };
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, format!("PUT /big {}", body.len()))
    );
    let req = &b.wait_requests(1, T)[0];
    assert!(req.body == body, "body differs");
}

#[test]
fn request_body_chunked_with_extensions_and_trailers() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(
        addr,
        b"POST /ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "POST /ch 11"));
    let req = &b.wait_requests(1, T)[0];
    assert_eq!(req.body, b"hello world");
    assert!(req.chunked, "{}", req.head_text());
    assert!(req.header("content-length").is_none());
    assert_eq!(req.headers_named("transfer-encoding"), ["chunked"]);
    assert_eq!(req.trailers, ["X-Checksum: abc"]);
}

#[test]
fn response_body_content_length_and_chunked_with_trailers() {
    let b = Backend::start(|r: &Req| match r.target.as_str() {
        "/cl" => vec![Step::Send(response(200, "fixed length"))],
        _ => vec![Step::Send(chunked_response(
            200,
            &["hello", " ", "world"],
            &["X-Checksum: 42", "X-Other: y"],
        ))],
    });
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    s.write_all(b"GET /cl HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "fixed length"));
    assert_eq!(r.header("content-length"), Some("12"));
    s.write_all(b"GET /ch HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (head, body, trailers) = read_chunked_raw(&mut s, &mut pending);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    assert_eq!(body, b"hello world");
    assert_eq!(trailers, ["X-Checksum: 42", "X-Other: y"]);
    // Still usable afterwards.
    s.write_all(b"GET /cl HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "fixed length"));
}

#[test]
fn large_responses_are_relayed_intact() {
    let body: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 253) as u8).collect();
    let b = {
        let body = body.clone();
        Backend::start(move |r: &Req| {
            if r.target == "/cl" {
                let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
                out.extend_from_slice(&body);
                vec![Step::Send(out)]
            } else {
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for c in body.chunks(65536 + 7) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                vec![Step::Send(out)]
            }
        })
    };
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    for t in ["/cl", "/chunked", "/cl"] {
        write!(s, "GET {t} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!(r.status, 200, "{t}");
        assert!(r.body == body, "{t}: body differs ({} bytes)", r.body.len());
    }
    // An HTTP/1.0 client gets the chunked one de-chunked and framed by close.
    let mut s = connect(addr);
    s.write_all(b"GET /chunked HTTP/1.0\r\n\r\n").unwrap();
    let raw = read_until_close(&mut s);
    let he = find(&raw, b"\r\n\r\n").unwrap() + 4;
    assert!(
        raw[he..] == body[..],
        "de-chunked body differs ({} bytes)",
        raw.len() - he
    );
}

#[test]
fn response_framed_by_close() {
    let b = Backend::start(|_| {
        vec![
            Step::Send(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil ".to_vec()),
            Step::Sleep(Duration::from_millis(50)),
            Step::Send(b"the end".to_vec()),
            Step::Close,
        ]
    });
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
    assert_eq!(r.header("x-a"), Some("1"));
    // Either framed by close (then the connection closes) or re-framed (chunked) for a
    // 1.1 client; never a Content-Length that the proxy could not know.
    if r.header("transfer-encoding").is_none() {
        assert!(r.header("content-length").is_none());
    }
}

#[test]
fn head_204_304_have_no_body() {
    let b = Backend::start(|r: &Req| match (r.method.as_str(), r.target.as_str()) {
        ("HEAD", _) => vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n".to_vec(),
        )],
        (_, "/204") => vec![Step::Send(
            b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_vec(),
        )],
        (_, "/304") => vec![Step::Send(
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n".to_vec(),
        )],
        _ => vec![Step::Send(response(200, "after"))],
    });
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"));
    s.write_all(b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.header("x-a")), (204, Some("1")));
    s.write_all(b"GET /304 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.header("etag")), (304, Some("\"x\"")));
    // Nothing of a body was relayed: the next response is parsed cleanly right after.
    s.write_all(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "after"));
    assert!(pending.is_empty());
    assert_eq!(b.requests().len(), 4);
}

#[test]
fn interim_103_is_relayed_before_the_final_response() {
    let b = Backend::start(|_| {
        vec![
            Step::Send(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec(),
            ),
            Step::Sleep(Duration::from_millis(50)),
            Step::Send(response(200, "final")),
        ]
    });
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 103);
    assert_eq!(r.header("link"), Some("</style.css>; rel=preload"));
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "final"));
}

#[test]
fn interim_responses_are_not_sent_to_http10_clients() {
    let b = Backend::start(|_| {
        vec![
            Step::Send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".to_vec()),
            Step::Send(response(200, "final")),
        ]
    });
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let raw = read_until_close(&mut s);
    let text = String::from_utf8_lossy(&raw).into_owned();
    // RFC 9110 15.2: no 1xx to an HTTP/1.0 client.
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(!text.contains(" 103 "), "{text}");
    assert!(text.ends_with("\r\n\r\nfinal"), "{text}");
}

#[test]
fn expect_100_continue() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    s.write_all(b"PUT /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    let mut pending = Vec::new();
    // The client waits for the 100 before sending its body.
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 100);
    s.write_all(b"hello").unwrap();
    // Exactly one 100, then the final response.
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "PUT /e 5"));
    assert_eq!(b.wait_requests(1, T)[0].body, b"hello");
}

#[test]
fn http10_client_gets_no_chunked_and_no_keep_alive_unless_asked() {
    let b = Backend::start(|r: &Req| match r.target.as_str() {
        "/chunked" => vec![Step::Send(chunked_response(
            200,
            &["de", "chunked"],
            &["X-T: 1"],
        ))],
        _ => vec![Step::Send(response(200, "short"))],
    });
    let (_p, addr) = proxy(&[&b], &[]);
    // No keep-alive: the proxy closes after the response; chunked is decoded and framed by close.
    let mut s = connect(addr);
    s.write_all(b"GET /chunked HTTP/1.0\r\n\r\n").unwrap();
    let raw = read_until_close(&mut s);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let he = find(&raw, b"\r\n\r\n").expect("head") + 4;
    let head = text[..he].to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200 ") || head.starts_with("http/1.0 200 "),
        "{text}"
    );
    assert!(!head.contains("transfer-encoding"), "{text}");
    assert_eq!(&raw[he..], b"dechunked");
    // With Connection: keep-alive and a Content-Length response: kept open, and said so.
    let mut s = connect(addr);
    let mut pending = Vec::new();
    s.write_all(b"GET /cl HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "short"));
    assert_eq!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive")
    );
    assert_open(&mut s, Duration::from_millis(300));
    s.write_all(b"GET /cl HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "short"));
    assert_closed(&mut s, &pending);
    assert_eq!(b.requests().len(), 3);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start(|r: &Req| {
        let delay = match r.target.as_str() {
            "/1" => 300,
            "/2" => 0,
            _ => 100,
        };
        vec![
            Step::Sleep(Duration::from_millis(delay)),
            Step::Send(response(200, &format!("answer{}", r.target))),
        ]
    });
    let b2 =
        Backend::start(|r: &Req| vec![Step::Send(response(200, &format!("answer{}", r.target)))]);
    let (_p, addr) = proxy(&[&b, &b2], &[]);
    let mut s = connect(addr);
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: t\r\n\r\nGET /4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    for i in 1..=4 {
        let r = read_response(&mut s, &mut pending, false).unwrap();
        assert_eq!((r.status, r.text()), (200, format!("answer/{i}")));
    }
    assert_closed(&mut s, &pending);
    assert_eq!(b.requests().len() + b2.requests().len(), 4);
}

#[test]
fn upgrade_becomes_a_tunnel() {
    let b = Backend::start(|r: &Req| {
        if r.header("upgrade") == Some("websocket") {
            vec![
                Step::Send(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\r\n"
                        .to_vec(),
                ),
                Step::Echo,
            ]
        } else {
            vec![Step::Send(response(200, "plain"))]
        }
    });
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade"))
    );
    assert_eq!(r.header("sec-websocket-accept"), Some("abc"));
    for msg in [
        &b"\x81\x05hello"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8, 255, 13, 10],
    ] {
        s.write_all(msg).unwrap();
        while pending.len() < msg.len() {
            let mut t = [0u8; 1024];
            let n = s.read(&mut t).unwrap();
            assert!(n > 0, "tunnel closed");
            pending.extend_from_slice(&t[..n]);
        }
        assert_eq!(pending, msg);
        pending.clear();
    }
    let req = &b.wait_requests(1, T)[0];
    assert_eq!(req.header("upgrade"), Some("websocket"));
    assert!(
        req.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
    );
    assert_eq!(req.header("sec-websocket-key"), Some("k"));
    // Half-close from the client reaches the backend, which closes: the tunnel ends.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut s, &pending);
}

#[test]
fn refused_upgrade_stays_http() {
    let b = Backend::start(|_| vec![Step::Send(response(200, "no upgrade"))]);
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    let mut pending = Vec::new();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "no upgrade"));
    assert!(r.header("upgrade").is_none());
    // Still HTTP: a second request on the same connection is parsed as a request.
    s.write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "no upgrade"));
    let seen = b.wait_requests(2, T);
    assert_eq!(seen[1].target, "/again");
    assert!(seen[1].header("upgrade").is_none());
}

// ---------------------------------------------------------------------------------------
// Hop-by-hop and X-Forwarded-*

#[test]
fn hop_by_hop_removed_from_requests_and_forwarded_fields_added() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(
        addr,
        b"GET /h HTTP/1.1\r\nX-First: 1\r\nHost: example.org\r\nConnection: keep-alive, X-Drop-Me\r\n\
          X-Drop-Me: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
          Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Forwarded-For: 203.0.113.9\r\n\
          X-Forwarded-Proto: https\r\nAccept: */*\r\nX-Last: z\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let req = &b.wait_requests(1, T)[0];
    let names = req.header_names();
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} forwarded: {}",
            req.head_text()
        );
    }
    // Order of the end-to-end fields preserved, Host preserved.
    let e2e: Vec<&String> = names
        .iter()
        .filter(|n| ["x-first", "host", "accept", "x-last"].contains(&n.as_str()))
        .collect();
    assert_eq!(e2e, ["x-first", "host", "accept", "x-last"]);
    assert_eq!(req.headers_named("host"), ["example.org"]);
    assert_eq!(
        req.headers_named("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(req.headers_named("x-forwarded-proto"), ["http"]);
    if let Some(c) = req.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-drop-me"), "{c}");
    }
}

#[test]
fn x_forwarded_for_added_when_absent() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(addr, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    let req = &b.wait_requests(1, T)[0];
    assert_eq!(req.headers_named("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(req.headers_named("x-forwarded-proto"), ["http"]);
}

#[test]
fn hop_by_hop_removed_from_responses() {
    let b = Backend::fixed(
        b"HTTP/1.1 200 OK\r\nX-First: 1\r\nConnection: X-Internal, keep-alive\r\nX-Internal: secret\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
          Upgrade: h2c\r\nContent-Length: 4\r\nX-Last: 2\r\n\r\nbody",
    );
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(addr, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "body"));
    let names: Vec<String> = r
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    for gone in [
        "x-internal",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} relayed: {:?}",
            r.headers
        );
    }
    let first = names.iter().position(|n| n == "x-first").expect("x-first");
    let last = names.iter().position(|n| n == "x-last").expect("x-last");
    assert!(first < last);
    if let Some(c) = r.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-internal"), "{c}");
    }
}

// ---------------------------------------------------------------------------------------
// Rejections: exact status, connection closed, backend saw nothing

/// Sends each case on its own connection; collects every mismatch (status, not closed,
/// backend reached) and panics with all of them.
fn check_rejections(addr: SocketAddr, b: &Backend, cases: &[(&str, &[u8], u16)]) {
    let mut failures = Vec::new();
    for (name, raw, want) in cases {
        let mut s = connect(addr);
        if let Err(e) = s.write_all(raw) {
            failures.push(format!("{name}: write failed: {e}"));
            continue;
        }
        let mut pending = Vec::new();
        match read_response(&mut s, &mut pending, false) {
            Ok(r) if r.status == *want => {
                if !pending.is_empty() {
                    failures.push(format!("{name}: extra bytes after the {want}"));
                    continue;
                }
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(0) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                    other => failures.push(format!("{name}: not closed after {want}: {other:?}")),
                }
            }
            Ok(r) => failures.push(format!(
                "{name}: sent {:?}, got {} (body {:?}), want {want}",
                String::from_utf8_lossy(raw),
                r.status,
                r.text()
            )),
            Err(e) => failures.push(format!(
                "{name}: sent {:?}, no response ({e}), want {want}",
                String::from_utf8_lossy(raw)
            )),
        }
    }
    if !b.saw_nothing() {
        failures.push(format!(
            "backend received bytes: {:?}",
            b.received()
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect::<Vec<_>>()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_requests_are_rejected_before_reaching_a_backend() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let cases: &[(&str, &[u8], u16)] = &[
        ("space before colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        ("tab before colon", b"GET / HTTP/1.1\r\nHost: t\r\nX-A\t: 1\r\n\r\n", 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n 2\r\n\r\n", 400),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
        ("CR in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
        ("CL + TE", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE + CL", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
        ("CL list equal", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        ("CL repeated equal", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        ("CL differing", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        ("CL plus sign", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
        ("CL overflow", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551616\r\n\r\n", 400),
        ("CL hex", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc", 400),
        ("TE not final chunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("TE gzip only", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE identity", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE unknown coding before chunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
        ("TE chunked then other line", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", 400),
        ("TE space before colon", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE vertical tab", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
        ("CL case-variant duplicate", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc", 400),
        ("CL with inner space", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1 2\r\n\r\n", 400),
        ("bare CR in request line", b"GET /\rx HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("DEL in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n", 400),
        ("Expect other than 100-continue", b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n", 417),
        ("bad method token", b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("empty method", b" / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("two spaces", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("bad version token", b"GET / HTTP/1.x\r\nHost: t\r\n\r\n", 400),
        ("lowercase version", b"GET / http/1.1\r\nHost: t\r\n\r\n", 400),
        ("trailing space after version", b"GET / HTTP/1.1 \r\nHost: t\r\n\r\n", 400),
        ("target with fragment", b"GET /a#b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("non-ASCII target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("relative target", b"GET a/b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("no Host in 1.1", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("invalid Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505),
        ("HTTP/0.9 form", b"GET /\r\n\r\n", 505),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
        ("TLS handshake", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400),
    ];
    check_rejections(addr, &b, cases);
}

#[test]
fn invalid_chunk_sizes_are_rejected() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let bodies: &[&[u8]] = &[
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"10000000000000000\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5;a\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n",
    ];
    let mut failures = Vec::new();
    for body in bodies {
        let mut raw = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        let mut s = connect(addr);
        s.write_all(&raw).unwrap();
        let got = read_until_close(&mut s);
        if !got.starts_with(b"HTTP/1.1 400 ") {
            failures.push(format!(
                "{:?}: got {:?}, want a 400 then close",
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(&got)
            ));
        }
    }
    // The head may already have been forwarded, but no complete request reached the backend.
    assert!(b.requests().is_empty(), "{:?}", b.requests());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn limits_414_431_413() {
    let b = echo_backend();
    let (_p, addr) = proxy(
        &[&b],
        &[
            "--max-request-line",
            "100",
            "--max-header-bytes",
            "1000",
            "--max-headers",
            "10",
            "--max-body-bytes",
            "10",
        ],
    );
    let unterminated = format!("GET /{}", "a".repeat(200));
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(120));
    let big_field = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1000)
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..10 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let cases: &[(&str, &[u8], u16)] = &[
        ("request line too long", long_target.as_bytes(), 414),
        (
            "request line too long, no end yet",
            unterminated.as_bytes(),
            414,
        ),
        ("head too big", big_field.as_bytes(), 431),
        ("too many fields", many.as_bytes(), 431),
        (
            "CL body too large",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world",
            413,
        ),
    ];
    check_rejections(addr, &b, cases);
    // A chunked body over the limit: 413 at the chunk size line. The head may have been
    // forwarded already (the size is unknown until then), but no complete request is.
    let mut s = connect(addr);
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .unwrap();
    let got = read_until_close(&mut s);
    assert!(
        got.starts_with(b"HTTP/1.1 413 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(b.requests().is_empty(), "{:?}", b.requests());
    // Expect: 100-continue with a too-large Content-Length: a final 413, never a 100.
    let mut s = connect(addr);
    s.write_all(b"PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        .unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 413);
    assert!(b.requests().is_empty());
    // At the limits exactly: accepted.
    let ok_line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100 - 14));
    assert_eq!(ok_line.find("\r\n"), Some(100));
    assert_eq!(one(addr, ok_line.as_bytes()).status, 200);
    let r = one(
        addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "POST / 10"));
}

#[test]
fn slow_header_gets_408_and_idle_keep_alive_is_closed() {
    let b = echo_backend();
    let (_p, addr) = proxy(
        &[&b],
        &["--header-timeout-ms", "500", "--idle-timeout-ms", "700"],
    );
    // Slowloris: a head that never completes.
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 408);
    assert_closed(&mut s, &pending);
    // Idle keep-alive connection: closed without a response.
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 200);
    let start = Instant::now();
    let rest = read_until_close(&mut s);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(b.requests().len(), 1);
}

#[test]
fn a_quiet_new_connection_is_closed_after_the_header_timeout() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &["--header-timeout-ms", "400"]);
    let mut s = connect(addr);
    // Nothing sent at all: closed (a 408 is allowed but not required).
    let got = read_until_close(&mut s);
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(b.saw_nothing());
}

// ---------------------------------------------------------------------------------------
// Backend failures

#[test]
fn bad_upstream_responses_become_502() {
    let b = Backend::start(|r: &Req| {
        let bytes: &[u8] = match r.target.as_str() {
            "/status-line" => b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
            "/not-http" => b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "/cl-conflict" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "/cl-bad" => b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
            "/cl-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "/obs-fold" => b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
            "/status-600" => b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Le",
        };
        vec![Step::Send(bytes.to_vec()), Step::Close]
    });
    let (_p, addr) = proxy(&[&b], &[]);
    let mut failures = Vec::new();
    for t in [
        "/status-line",
        "/not-http",
        "/cl-conflict",
        "/cl-bad",
        "/cl-te",
        "/obs-fold",
        "/status-600",
        "/partial-head",
    ] {
        let r = one(
            addr,
            format!("POST {t} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        if r.status != 502 {
            failures.push(format!("{t}: got {} {:?}, want 502", r.status, r.text()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn backend_closing_without_answer_is_502() {
    let b = Backend::start(|_| vec![Step::Close]);
    let (_p, addr) = proxy(&[&b], &[]);
    let r = one(
        addr,
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 502);
    assert_eq!(
        b.requests().len(),
        1,
        "a POST that reached a backend is not retried"
    );
}

#[test]
fn backend_timeout_is_504() {
    let b = Backend::start(|_| {
        vec![
            Step::Sleep(Duration::from_secs(4)),
            Step::Send(response(200, "late")),
        ]
    });
    let (_p, addr) = proxy(&[&b], &["--response-timeout-ms", "500"]);
    let start = Instant::now();
    let r = one(
        addr,
        b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 504);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "504 came only after the backend answered"
    );
}

#[test]
fn backend_dying_mid_body_truncates_the_client_response() {
    let b = Backend::start(|r: &Req| {
        let head: &[u8] = if r.target == "/cl" {
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        };
        vec![
            Step::Send(head.to_vec()),
            Step::Sleep(Duration::from_millis(50)),
            Step::Close,
        ]
    });
    let (_p, addr) = proxy(&[&b], &[]);
    // Content-Length: the client gets the 10 bytes that came, then a close (never 100 bytes).
    let mut s = connect(addr);
    s.write_all(b"GET /cl HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let got = read_until_close(&mut s);
    let he = find(&got, b"\r\n\r\n").expect("head relayed") + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(&got[he..], b"0123456789");
    // Chunked: data relayed, then a close without the last chunk.
    let mut s = connect(addr);
    s.write_all(b"GET /ch HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let got = read_until_close(&mut s);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "truncated body given a clean end: {text:?}"
    );
}

#[test]
fn no_backend_listening_is_502_or_503_quickly() {
    let dead = Backend::ok("unused");
    let addr_dead = dead.addr;
    drop(dead);
    let (_p, addr) = common::start_logging_listen(
        "proxy",
        std::process::Command::new(common::bin()).args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &addr_dead.to_string(),
        ]),
        "lb_started",
    );
    common::wait_for_port(addr, T);
    let start = Instant::now();
    let r = one(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(r.status == 502 || r.status == 503, "{}", r.status);
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn client_half_close_after_request_still_gets_the_response() {
    let b = echo_backend();
    let (_p, addr) = proxy(&[&b], &[]);
    let mut s = connect(addr);
    s.write_all(b"GET /hc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = read_until_close(&mut s);
    assert!(
        got.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.ends_with(b"GET /hc 0"));
}
