//! Support for the proxy's black-box tests: recording HTTP backends (threads on loopback
//! ports) and a helper to start `goloadbalancer proxy` in front of them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, Proc};

/// One request as a backend received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Connection number on this backend (0, 1, ...): shows keep-alive reuse.
    pub conn: usize,
    /// The head exactly as received (request line and fields, final CRLF included).
    pub head: String,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
}

impl Seen {
    /// The request line.
    pub fn line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    /// Every value of field `name` (case-insensitive).
    pub fn fields(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// Field names in order.
    pub fn names(&self) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, _)| k.to_string())
            .collect()
    }
}

/// What a backend answers: raw bytes for a request; `None` closes the connection at once.
pub type Handler = Arc<dyn Fn(&Seen) -> Option<Vec<u8>> + Send + Sync>;

/// A recording backend on a loopback port.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub conns: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// `200 OK` with `body` and Content-Length.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Backend {
    /// A backend answering every request with `200 <name>`, and `/healthz` with 200.
    pub fn named(name: &str) -> Backend {
        let name = name.to_string();
        Backend::start(Arc::new(move |_s: &Seen| Some(ok(&name))))
    }

    /// A backend answering with `handler`.
    pub fn start(handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, c2, st2) = (seen.clone(), conns.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let n = c2.fetch_add(1, Ordering::SeqCst);
                let (s3, h3) = (s2.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, n, s3, h3));
            }
        });
        Backend {
            addr,
            seen,
            conns,
            stop,
        }
    }

    /// Requests received so far, health checks excluded.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|s| !s.head.contains("goloadbalancer-health"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `host:port`.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(mut s: TcpStream, conn: usize, seen: Arc<Mutex<Vec<Seen>>>, handler: Handler) {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = common::find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 8192];
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut req = Seen {
            conn,
            head,
            body: Vec::new(),
            chunked: false,
        };
        let te = req.fields("transfer-encoding");
        let cl = req.fields("content-length");
        if te.iter().any(|v| v.eq_ignore_ascii_case("chunked")) {
            req.chunked = true;
            if read_chunked(&mut s, &mut buf, &mut req.body).is_err() {
                return;
            }
        } else if let Some(n) = cl.first().and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < n {
                let mut tmp = [0u8; 65536];
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
            req.body = buf.drain(..n).collect();
        }
        let close = req
            .fields("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("close"));
        if let Ok(mut v) = seen.lock() {
            v.push(req.clone());
        }
        let health = req.line().starts_with("GET /healthz ");
        let answer = if health {
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
        } else {
            handler(&req)
        };
        let Some(answer) = answer else {
            let _ = s.shutdown(Shutdown::Both);
            return;
        };
        if s.write_all(&answer).is_err() {
            return;
        }
        if close || health {
            return;
        }
    }
}

fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>, body: &mut Vec<u8>) -> std::io::Result<()> {
    let fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> std::io::Result<()> {
        let mut tmp = [0u8; 65536];
        match s.read(&mut tmp)? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
        }
    };
    loop {
        let line_end = loop {
            if let Some(i) = common::find(buf, b"\r\n") {
                break i;
            }
            fill(s, buf)?;
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            loop {
                let e = loop {
                    if let Some(i) = common::find(buf, b"\r\n") {
                        break i;
                    }
                    fill(s, buf)?;
                };
                buf.drain(..e + 2);
                if e == 0 {
                    return Ok(());
                }
            }
        }
        while buf.len() < size + 2 {
            fill(s, buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Starts `goloadbalancer proxy` in front of `backends`, with extra flags, on a port it binds
/// itself (port 0, read back from its `lb_started` line: a port picked here and bound later
/// could be taken meanwhile, and a probe would then reach whoever took it); waits until it
/// accepts.
pub fn proxy(backends: &[String], extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["proxy", "--listen", "127.0.0.1:0"]);
    for b in backends {
        cmd.args(["--backend", b]);
    }
    cmd.args(extra);
    let (p, addr) = common::start_logging_listen("proxy", &mut cmd, "lb_started");
    // Tests count on this first (empty) connection: see proxy_tcp.rs.
    common::wait_for_port(addr, Duration::from_secs(10));
    (p, addr)
}

/// A loopback address nobody listens on.
pub fn dead_addr() -> String {
    format!("127.0.0.1:{}", common::free_port())
}
