//! An instrumented test backend: a loopback HTTP/1.1 server on std threads that records
//! exactly the bytes each connection received and answers from a script.
//!
//! - `Backend::start(handler)`: the handler sees each parsed request (`Req`) and returns the
//!   `Step`s to perform: send bytes, sleep, close, half-close, or turn the connection into an
//!   echo tunnel (after a 101). `Backend::fixed(bytes)` answers every request with the same
//!   bytes; `Backend::raw(f)` hands the whole `TcpStream` of each connection to `f`.
//! - Requests are framed by the backend's own small reader (independent of `src/http`, so a
//!   parser bug cannot hide itself): Content-Length, chunked (with trailers), or no body.
//!   `Expect: 100-continue` gets an automatic `100 Continue` unless disabled.
//! - Health checks (`GET <health_path>`, default `/healthz`) are answered 200 and kept out of
//!   `requests()`, so a proxy's probes do not disturb what a test asserts; `saw_nothing()`
//!   ignores them too. `received()` still has every byte.
//!
//! Everything stops when the `Backend` is dropped (connection threads poll a stop flag).
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Req {
    /// Index of the connection it arrived on (0-based, accept order).
    pub conn: usize,
    /// Index of this request on its connection (0-based).
    pub seq: usize,
    /// Method, target and version from the request line.
    pub method: String,
    pub target: String,
    pub version: String,
    /// Header fields as received (name, value trimmed), in order.
    pub headers: Vec<(String, String)>,
    /// The exact head bytes (request line to the empty line).
    pub head: Vec<u8>,
    /// The body, de-chunked when chunked.
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body (raw, without CRLF).
    pub trailers: Vec<String>,
    /// Whether the body was chunked.
    pub chunked: bool,
    /// The exact bytes of the whole request (head and body as on the wire).
    pub raw: Vec<u8>,
}

impl Req {
    /// First header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Header names in order, lower-cased.
    pub fn header_names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect()
    }

    /// The head as text (lossy).
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// What the backend does for a request.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait.
    Sleep(Duration),
    /// Close the connection now (no more reading or writing).
    Close,
    /// Half-close: shut down the write side, keep reading (and recording).
    ShutdownWrite,
    /// From now on echo every byte received back (a tunnel after a 101).
    Echo,
}

type Handler = dyn Fn(&Req) -> Vec<Step> + Send + Sync;
type RawHandler = dyn Fn(TcpStream, usize) + Send + Sync;

#[derive(Default)]
struct Record {
    /// Exact bytes received, per connection.
    received: Vec<Vec<u8>>,
    /// Requests (health checks excluded), in arrival order.
    requests: Vec<Req>,
    /// Bytes of health-check requests, per connection (subtracted by `saw_nothing`).
    health_bytes: Vec<usize>,
}

struct Shared {
    record: Mutex<Record>,
    changed: Condvar,
    stop: AtomicBool,
    accepted: AtomicUsize,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Record)) {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
        self.changed.notify_all();
    }
}

/// Options of a scripted backend.
#[derive(Clone, Debug)]
pub struct Options {
    /// Send `100 Continue` automatically on `Expect: 100-continue`.
    pub auto_continue: bool,
    /// Requests to this target (GET or HEAD) are answered 200 and not recorded.
    pub health_path: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            auto_continue: true,
            health_path: Some("/healthz".to_string()),
        }
    }
}

/// A running test backend; stopped on drop.
pub struct Backend {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    /// A backend answering each request with the steps `handler` returns.
    pub fn start(handler: impl Fn(&Req) -> Vec<Step> + Send + Sync + 'static) -> Backend {
        Self::start_with(Options::default(), handler)
    }

    /// `start` with options.
    pub fn start_with(
        opts: Options,
        handler: impl Fn(&Req) -> Vec<Step> + Send + Sync + 'static,
    ) -> Backend {
        let handler: Arc<Handler> = Arc::new(handler);
        let opts = Arc::new(opts);
        Self::listen(move |stream, idx, shared| {
            serve_http(stream, idx, shared, &opts, &*handler);
        })
    }

    /// A backend answering every request with exactly `response`.
    pub fn fixed(response: &[u8]) -> Backend {
        let r = response.to_vec();
        Self::start(move |_| vec![Step::Send(r.clone())])
    }

    /// A backend answering `200 OK` with `body` (Content-Length) to every request.
    pub fn ok(body: &str) -> Backend {
        Self::fixed(&response(200, body))
    }

    /// A backend that hands each accepted connection (and its index) to `f` on its own
    /// thread; bytes are not recorded (the handler owns the stream).
    pub fn raw(f: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> Backend {
        let f: Arc<RawHandler> = Arc::new(f);
        Self::listen(move |stream, idx, _shared| f(stream, idx))
    }

    fn listen(serve: impl Fn(TcpStream, usize, &Shared) + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let shared = Arc::new(Shared {
            record: Mutex::new(Record::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
        });
        let serve = Arc::new(serve);
        let sh = shared.clone();
        let accept_thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let idx = sh.accepted.fetch_add(1, Ordering::SeqCst);
                sh.update(|r| {
                    while r.received.len() <= idx {
                        r.received.push(Vec::new());
                        r.health_bytes.push(0);
                    }
                });
                let sh2 = sh.clone();
                let serve = serve.clone();
                thread::spawn(move || serve(stream, idx, &sh2));
            }
        });
        Backend {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// `host:port` for `--backend`.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Requests received so far (health checks excluded), in arrival order.
    pub fn requests(&self) -> Vec<Req> {
        self.lock().requests.clone()
    }

    /// Exact bytes received per connection (health checks included).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.lock().received.clone()
    }

    /// Whether the backend received no byte other than health checks.
    pub fn saw_nothing(&self) -> bool {
        let r = self.lock();
        r.received
            .iter()
            .zip(&r.health_bytes)
            .all(|(got, health)| got.len() == *health)
    }

    /// Waits until at least `n` requests arrived (panics after `timeout`); returns them all.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Req> {
        let end = Instant::now() + timeout;
        let mut r = self.lock();
        while r.requests.len() < n {
            let now = Instant::now();
            if now >= end {
                panic!(
                    "backend {}: {} request(s) after {timeout:?}, wanted {n}; received {:?}",
                    self.addr,
                    r.requests.len(),
                    r.received
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect::<Vec<_>>()
                );
            }
            r = self
                .shared
                .changed
                .wait_timeout(r, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        r.requests.clone()
    }

    /// Waits until the bytes received on connection `conn` satisfy `pred` (or `timeout`);
    /// returns them.
    pub fn wait_received(
        &self,
        conn: usize,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let end = Instant::now() + timeout;
        let mut r = self.lock();
        loop {
            let got = r.received.get(conn).cloned().unwrap_or_default();
            if pred(&got) {
                return got;
            }
            let now = Instant::now();
            if now >= end {
                return got;
            }
            r = self
                .shared
                .changed
                .wait_timeout(r, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.shared.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// `HTTP/1.1 <status> <reason>` with Content-Length and `body`.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

/// A chunked response whose body is `chunks`, then `trailers` (lines without CRLF).
pub fn chunked_response(status: u16, chunks: &[&str], trailers: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {status} {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        reason(status)
    );
    for c in chunks {
        s.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    s.push_str("0\r\n");
    for t in trailers {
        s.push_str(t);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

/// Reads from `s` into `buf`, recording the bytes for connection `idx`. Ok(false) on EOF;
/// Err on a reset or when the backend stops.
fn fill(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    idx: usize,
    shared: &Shared,
) -> std::io::Result<bool> {
    let mut tmp = [0u8; 16384];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("backend stopped"));
        }
        match s.read(&mut tmp) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                shared.update(|r| r.received[idx].extend_from_slice(&tmp[..n]));
                return Ok(true);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Ensures `buf` holds at least `n` bytes.
fn need(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    n: usize,
    idx: usize,
    shared: &Shared,
) -> std::io::Result<bool> {
    while buf.len() < n {
        if !fill(s, buf, idx, shared)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Position of the end of the first line at or after `from` (index of '\n').
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| from + p)
}

fn serve_http(mut s: TcpStream, idx: usize, shared: &Shared, opts: &Options, handler: &Handler) {
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    s.set_nodelay(true).ok();
    let mut buf: Vec<u8> = Vec::new();
    let mut seq = 0;
    loop {
        // Head: up to an empty line (CRLF or bare LF endings).
        let head_end = loop {
            let mut pos = 0;
            let mut found = None;
            while let Some(e) = line_end(&buf, pos) {
                let line = &buf[pos..e];
                if line.is_empty() || line == b"\r" {
                    found = Some(e + 1);
                    break;
                }
                pos = e + 1;
            }
            if let Some(f) = found {
                break f;
            }
            match fill(&mut s, &mut buf, idx, shared) {
                Ok(true) => {}
                _ => return,
            }
        };
        let head = buf[..head_end].to_vec();
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let chunked =
            get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if opts.auto_continue
            && get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        // Body.
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        let mut pos = head_end;
        if chunked {
            loop {
                let e = loop {
                    if let Some(e) = line_end(&buf, pos) {
                        break e;
                    }
                    if !matches!(fill(&mut s, &mut buf, idx, shared), Ok(true)) {
                        return;
                    }
                };
                let line = String::from_utf8_lossy(&buf[pos..e]).into_owned();
                let size_text = line.trim_end_matches('\r');
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(size_text, 16) else {
                    return; // not chunked after all: give up on this connection
                };
                pos = e + 1;
                if size == 0 {
                    loop {
                        let e = loop {
                            if let Some(e) = line_end(&buf, pos) {
                                break e;
                            }
                            if !matches!(fill(&mut s, &mut buf, idx, shared), Ok(true)) {
                                return;
                            }
                        };
                        let t = String::from_utf8_lossy(&buf[pos..e])
                            .trim_end_matches('\r')
                            .to_string();
                        pos = e + 1;
                        if t.is_empty() {
                            break;
                        }
                        trailers.push(t);
                    }
                    break;
                }
                if !matches!(
                    need(&mut s, &mut buf, pos + size + 2, idx, shared),
                    Ok(true)
                ) {
                    return;
                }
                body.extend_from_slice(&buf[pos..pos + size]);
                pos += size + 2;
            }
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if !matches!(need(&mut s, &mut buf, head_end + n, idx, shared), Ok(true)) {
                return;
            }
            body.extend_from_slice(&buf[head_end..head_end + n]);
            pos = head_end + n;
        }
        let raw: Vec<u8> = buf.drain(..pos).collect();
        let req = Req {
            conn: idx,
            seq,
            method,
            target,
            version,
            headers,
            head,
            body,
            trailers,
            chunked,
            raw,
        };
        seq += 1;
        let is_health = opts.health_path.as_deref() == Some(req.target.as_str())
            && (req.method == "GET" || req.method == "HEAD");
        let steps = if is_health {
            let n = req.raw.len();
            shared.update(|r| r.health_bytes[idx] += n);
            let mut ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec();
            if req.method == "GET" {
                ok.extend_from_slice(b"ok");
            }
            vec![Step::Send(ok)]
        } else {
            let steps = handler(&req);
            shared.update(|r| r.requests.push(req));
            steps
        };
        for step in steps {
            match step {
                Step::Send(b) => {
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => thread::sleep(d),
                Step::Close => {
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
                Step::ShutdownWrite => {
                    let _ = s.shutdown(Shutdown::Write);
                }
                Step::Echo => {
                    if !buf.is_empty() && s.write_all(&buf).is_err() {
                        return;
                    }
                    buf.clear();
                    loop {
                        match fill(&mut s, &mut buf, idx, shared) {
                            Ok(true) => {
                                if s.write_all(&buf).is_err() {
                                    return;
                                }
                                buf.clear();
                            }
                            _ => return,
                        }
                    }
                }
            }
        }
    }
}
