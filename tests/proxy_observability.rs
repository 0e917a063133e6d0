//! Request ids and the access log, seen from outside: the real proxy binary in front of
//! scripted backends, raw requests, and the lines it writes to its access-log file.

mod common;
mod proxy_support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::backend::{Backend, Step, response};
use common::{TempDir, connect, get, raw_request};
use proxy_support::{dead_addr, proxy};

/// Waits until the access-log file has a line containing `needle`; returns that line.
fn wait_line(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line with {needle:?} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `key=` in a key=value line (quotes kept off).
fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        quoted[..quoted.find('"').unwrap()].to_string()
    } else {
        rest.split(' ').next().unwrap().to_string()
    }
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A proxy with `access-log` `mode` written to a file in `dir`.
fn logged_proxy(
    backends: &[String],
    dir: &TempDir,
    mode: &str,
    extra: &[&str],
) -> (common::Proc, std::net::SocketAddr, std::path::PathBuf) {
    let log = dir.join("access.log");
    let log_arg = log.to_str().unwrap().to_string();
    let mut args = vec!["--access-log", mode, "--access-log-path", log_arg.as_str()];
    args.extend_from_slice(extra);
    let (p, addr) = proxy(backends, &args);
    (p, addr, log)
}

#[test]
fn client_request_id_is_kept_forwarded_echoed_and_logged() {
    let backend = Backend::ok("hi");
    let dir = TempDir::new("obs-client-id");
    let (_p, addr, log) = logged_proxy(&[backend.arg()], &dir, "all", &[]);
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = raw_request(
        addr,
        format!(
            "GET /api/v1/hello?x=1 HTTP/1.1\r\nHost: t\r\nX-Request-Id: client-id-42\r\n\
             traceparent: {trace}\r\ntracestate: vendor=a,other=b\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-request-id"), Some("client-id-42"));
    let reqs = backend.wait_requests(1, Duration::from_secs(5));
    assert_eq!(reqs[0].headers_named("x-request-id"), vec!["client-id-42"]);
    assert_eq!(reqs[0].headers_named("traceparent"), vec![trace]);
    assert_eq!(
        reqs[0].headers_named("tracestate"),
        vec!["vendor=a,other=b"]
    );

    let line = wait_line(&log, "request_id=client-id-42");
    assert_eq!(field(&line, "status"), "200");
    assert_eq!(field(&line, "method"), "GET");
    assert_eq!(field(&line, "target"), "/api/v1/hello?x=1");
    assert_eq!(field(&line, "worker"), backend.arg());
    assert_eq!(field(&line, "termination"), "done");
    assert_eq!(field(&line, "phase"), "complete");
    assert_eq!(field(&line, "retries"), "0");
    assert_ne!(field(&line, "bytes_out"), "0");
    for key in ["connect_ms", "response_ms", "total_ms"] {
        assert!(field(&line, key).parse::<u64>().is_ok(), "{key} in {line}");
    }
}

#[test]
fn missing_or_invalid_id_is_replaced_by_a_generated_one() {
    let backend = Backend::ok("hi");
    let dir = TempDir::new("obs-generated-id");
    let (_p, addr, log) = logged_proxy(&[backend.arg()], &dir, "all", &[]);
    let plain = get(addr, "/api/v1/hello").unwrap();
    let id = plain.header("x-request-id").expect("echoed id").to_string();
    assert!(is_hex32(&id), "generated id {id:?}");
    let invalid = raw_request(
        addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: has a space\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let replaced = invalid.header("x-request-id").unwrap().to_string();
    assert!(is_hex32(&replaced) && replaced != id, "{replaced:?}");
    let reqs = backend.wait_requests(2, Duration::from_secs(5));
    assert_eq!(reqs[0].headers_named("x-request-id"), vec![id.as_str()]);
    assert_eq!(
        reqs[1].headers_named("x-request-id"),
        vec![replaced.as_str()]
    );
    wait_line(&log, &format!("request_id={id}"));
    wait_line(&log, &format!("request_id={replaced}"));
}

#[test]
fn errors_mode_logs_failures_only_as_json() {
    let backend = Backend::start(|r| {
        let status = if r.target.contains("fail") { 500 } else { 200 };
        vec![Step::Send(response(status, "x"))]
    });
    let dir = TempDir::new("obs-errors-json");
    let (_p, addr, log) = logged_proxy(
        &[backend.arg()],
        &dir,
        "errors",
        &["--access-log-format", "json"],
    );
    let ok = get(addr, "/fine").unwrap();
    assert_eq!(ok.status, 200);
    let bad = get(addr, "/fail").unwrap();
    assert_eq!(bad.status, 500);
    let line = wait_line(&log, "\"/fail\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 500);
    assert_eq!(v["termination"], "done");
    assert_eq!(v["request_id"], bad.header("x-request-id").unwrap());
    // Give the 200's line (if it were written) time to reach the file: one flush period.
    std::thread::sleep(Duration::from_millis(400));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("/fine"),
        "a 2xx logged in errors mode:\n{text}"
    );
}

#[test]
fn failed_exchanges_say_who_ended_them() {
    // A worker that closes without answering (502), one that answers too late (504).
    let broke = Backend::start(|_| vec![Step::Close]);
    let slow = Backend::start(|_| {
        vec![
            Step::Sleep(Duration::from_secs(3)),
            Step::Send(response(200, "late")),
        ]
    });
    let dir = TempDir::new("obs-failures");
    let (_p1, broke_addr, broke_log) = logged_proxy(&[broke.arg()], &dir, "errors", &[]);
    let r = raw_request(
        broke_addr,
        b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    let line = wait_line(&broke_log, "target=\"/b\"");
    assert_eq!(field(&line, "status"), "502");
    assert_eq!(field(&line, "termination"), "worker_broke");
    assert_eq!(field(&line, "phase"), "response_head");
    assert_eq!(field(&line, "worker"), broke.arg());

    let dir2 = TempDir::new("obs-failures-slow");
    let (_p2, slow_addr, slow_log) = logged_proxy(
        &[slow.arg()],
        &dir2,
        "errors",
        &["--response-timeout-ms", "300"],
    );
    let r = get(slow_addr, "/s").unwrap();
    assert_eq!(r.status, 504);
    let line = wait_line(&slow_log, "target=\"/s\"");
    assert_eq!(field(&line, "termination"), "worker_timeout");
    assert_eq!(field(&line, "phase"), "response_head");

    // Nobody listening: 503, the worker refused (or already known down: no worker).
    let dir3 = TempDir::new("obs-failures-dead");
    let (_p3, dead_proxy, dead_log) = logged_proxy(&[dead_addr()], &dir3, "errors", &[]);
    let r = get(dead_proxy, "/d").unwrap();
    assert_eq!(r.status, 503);
    let line = wait_line(&dead_log, "target=\"/d\"");
    let t = field(&line, "termination");
    assert!(t == "worker_refused" || t == "no_worker", "{line}");
}

#[test]
fn a_client_that_leaves_is_logged_as_client_closed() {
    let backend = Backend::start(|_| {
        vec![
            Step::Sleep(Duration::from_millis(800)),
            Step::Send(response(200, &"z".repeat(200_000))),
        ]
    });
    let dir = TempDir::new("obs-client-abort");
    let (_p, addr, log) = logged_proxy(&[backend.arg()], &dir, "errors", &[]);
    {
        let mut s = connect(addr);
        s.write_all(b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // Close with a reset so the proxy's first write fails (no buffered success).
        nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
    }
    let line = wait_line(&log, "target=\"/gone\"");
    assert_eq!(field(&line, "termination"), "client_closed", "{line}");
}

#[test]
fn sigusr1_reopens_the_file_after_a_rename() {
    let backend = Backend::ok("hi");
    let dir = TempDir::new("obs-reopen");
    let (p, addr, log) = logged_proxy(&[backend.arg()], &dir, "all", &[]);
    get(addr, "/before").unwrap();
    wait_line(&log, "target=\"/before\"");
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.signal(nix::libc::SIGUSR1);
    // The reopen is asynchronous: wait for the new file before the next request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(
            Instant::now() < deadline,
            "SIGUSR1 did not create a new file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    get(addr, "/after").unwrap();
    wait_line(&log, "target=\"/after\"");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");
}
