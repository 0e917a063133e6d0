//! Self-test of the instrumented test backend (tests/common/backend.rs): what it records and
//! how it answers, speaking to it directly, so proxy tests can trust it.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::backend::{Backend, Options, Step, chunked_response, response};
use common::{connect, read_response};

const T: Duration = Duration::from_secs(10);

#[test]
fn records_exact_bytes_and_parses_requests() {
    let b = Backend::ok("hi");
    let mut s = connect(b.addr);
    let raw = b"POST /x?y HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\nHost: h\n\n";
    s.write_all(raw).unwrap();
    let mut pending = Vec::new();
    let r1 = read_response(&mut s, &mut pending, false).unwrap();
    let r2 = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r1.status, r1.text().as_str()), (200, "hi"));
    assert_eq!((r2.status, r2.text().as_str()), (200, "hi"));
    let reqs = b.wait_requests(2, T);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].target, "/x?y");
    assert_eq!(reqs[0].version, "HTTP/1.1");
    assert_eq!(reqs[0].body, b"abc");
    assert_eq!(reqs[0].header("content-length"), Some("3"));
    assert_eq!(reqs[1].target, "/2");
    assert_eq!((reqs[1].conn, reqs[1].seq), (0, 1));
    assert_eq!(b.received(), vec![raw.to_vec()]);
    assert_eq!(b.connections(), 1);
    assert!(!b.saw_nothing());
}

#[test]
fn chunked_with_trailers_and_continue() {
    let b = Backend::fixed(&chunked_response(200, &["ab", "cde"], &["X-T: 1"]));
    let mut s = connect(b.addr);
    s.write_all(
        b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    let cont = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(cont.status, 100);
    s.write_all(b"3;e=1\r\nxyz\r\n0\r\nT: v\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
    let req = &b.wait_requests(1, T)[0];
    assert!(req.chunked);
    assert_eq!(req.body, b"xyz");
    assert_eq!(req.trailers, vec!["T: v".to_string()]);
}

#[test]
fn health_checks_not_recorded() {
    let b = Backend::ok("x");
    let r = common::get(b.addr, "/healthz").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert!(b.requests().is_empty());
    assert!(b.saw_nothing());
    assert_eq!(b.connections(), 1);
}

#[test]
fn scripted_steps_close_and_echo() {
    let b = Backend::start_with(
        Options {
            auto_continue: false,
            health_path: None,
        },
        |req| {
            match req.target.as_str() {
            "/close" => vec![Step::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()), Step::Close],
            "/ws" => vec![
                Step::Send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n".to_vec()),
                Step::Echo,
            ],
            _ => vec![Step::Sleep(Duration::from_millis(50)), Step::Send(response(404, "no"))],
        }
        },
    );
    // Truncated body then close.
    let mut s = connect(b.addr);
    s.write_all(b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let got = common::read_to_close(&mut s);
    assert_eq!(got, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    // Echo tunnel, including bytes sent right behind the head.
    let mut s = connect(b.addr);
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\nearly")
        .unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).unwrap();
    assert_eq!(r.status, 101);
    while pending.len() < 5 {
        let mut t = [0u8; 64];
        let n = s.read(&mut t).unwrap();
        assert!(n > 0);
        pending.extend_from_slice(&t[..n]);
    }
    assert_eq!(pending, b"early");
    s.write_all(b"ping").unwrap();
    let mut t = [0u8; 4];
    s.read_exact(&mut t).unwrap();
    assert_eq!(&t, b"ping");
    // Default step.
    let r = common::get(b.addr, "/other").unwrap();
    assert_eq!((r.status, r.text().as_str()), (404, "no"));
}

/// Test ports are claimed machine-wide: a port whose lock another live process holds is not
/// handed out, and it is free again once that process is gone (the kernel drops the lock).
#[test]
fn a_port_claimed_by_another_process_is_not_handed_out() {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let lock = std::env::temp_dir()
        .join("glb-test-ports")
        .join(port.to_string());
    std::fs::create_dir_all(lock.parent().expect("dir")).expect("lock dir");
    // The holder keeps the lock until its stdin closes (then exits, lock released).
    let mut holder = std::process::Command::new("flock")
        .arg("-n")
        .arg(&lock)
        .args(["-c", "echo locked; read _"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock");
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("flock output");
    let claimed_while_held = common::claim_on_machine(&[port]);
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert_eq!(line, "locked\n", "the other process held port {port}");
    assert!(!claimed_while_held);
    assert!(common::claim_on_machine(&[port]));
}
