//! Helpers shared by the black-box tests: free ports, temp dirs, child processes that are
//! always killed, raw HTTP over TCP with deadlines. Every test owns what it starts.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_goloadbalancer")
}

/// Ports this test process already handed out: a port is released between `free_port` and
/// the binary binding it, so the kernel may give it out again; the set keeps two picks of one
/// process (parallel tests, or a range and a single port of one test) from ever colliding,
/// and [`claim_on_machine`] keeps picks of two test processes apart.
fn claim(ports: std::ops::Range<u32>) -> bool {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let set = given.get_or_insert_with(HashSet::new);
    if ports.clone().any(|p| set.contains(&(p as u16))) {
        return false;
    }
    let ports: Vec<u16> = ports.map(|p| p as u16).collect();
    if !claim_on_machine(&ports) {
        return false;
    }
    set.extend(ports);
    true
}

/// Claims `ports` for this test process against every other test process on the machine
/// (other test binaries, other checkouts' runs): one lock file per port under the temp dir,
/// locked (flock) for the rest of this process's life. The kernel drops the lock when the
/// process dies, so a crashed run leaves nothing to clean up. False, with nothing claimed,
/// when another live process holds one of them. Ports are picked free, then bound later by
/// the binary under test; without this, two processes could both pick a port in that window.
pub fn claim_on_machine(ports: &[u16]) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    use std::sync::Mutex;
    static HELD: Mutex<Vec<Flock<std::fs::File>>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("glb-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let mut got = Vec::with_capacity(ports.len());
    for port in ports {
        // std opens close-on-exec: the binaries under test never inherit a lock.
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            return false;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => got.push(lock),
            // Held by another process (or an earlier claim of ours): dropping `got`
            // unlocks what this call took.
            Err(_) => return false,
        }
    }
    HELD.lock().unwrap_or_else(|p| p.into_inner()).extend(got);
    true
}

/// A port the kernel just handed out on 127.0.0.1 (bound to 0, then released), never one
/// this process handed out before.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = l.local_addr().expect("local addr").port();
        if claim(u32::from(port)..u32::from(port) + 1) {
            return port;
        }
    }
    panic!("no free port left that this process has not handed out");
}

/// `n` consecutive free ports (for `worker-port` / `load-balancer-port` ranges); retries
/// until a whole run is free and none of it was handed out before.
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let base = l.local_addr().expect("local addr").port();
        drop(l);
        if base as u32 + n as u32 >= 65535 {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize && claim(u32::from(base)..u32::from(base) + u32::from(n)) {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

/// A temp directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir, named after the test.
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "glb-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop, even when the test panics.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Starts the binary under test with `args`; stderr goes to the test's stderr unless
    /// captured by the caller through `cmd`.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Self::start_cmd(name, Command::new(bin()).args(args))
    }

    /// Starts a prepared command.
    pub fn start_cmd(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. libc SIGTERM = 15) to the child.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for exit up to `timeout`; returns the exit code (None if it did not exit or
    /// was killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the child is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts a TCP connection; panics after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{addr} did not accept connections within {timeout:?}");
}

/// The address in the first `event=<event>` line of `log` that has a `listen=<addr>` field.
fn logged_listen(log: &str, event: &str) -> Option<SocketAddr> {
    let tag = format!("event={event} ");
    log.lines().filter(|l| l.contains(&tag)).find_map(|l| {
        l.split(' ')
            .find_map(|f| f.strip_prefix("listen="))
            .and_then(|a| a.parse().ok())
    })
}

/// Starts `cmd` (a server told to listen on port 0, so no other process can hold its port)
/// with stderr piped; every line is passed on to the test's stderr. Returns the address the
/// server logged in its `event=<event> ... listen=<addr>` line. Panics, with the exit status,
/// when the server exits or stays silent for 10 s: the address is the one this process bound,
/// never a port something else may answer on.
pub fn start_logging_listen(name: &str, cmd: &mut Command, event: &str) -> (Proc, SocketAddr) {
    use std::io::BufRead;
    let mut p = Proc::start_cmd(name, cmd.stderr(Stdio::piped()));
    let stderr = p.child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let event = event.to_string();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if let Some(addr) = logged_listen(&line, &event)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(addr) => (p, addr),
        Err(e) => {
            let status = p.wait_exit(Duration::from_secs(1));
            panic!("{name} logged no listen address ({e}); exit code {status:?}")
        }
    }
}

/// Waits until the server `p`, told to listen on port 0 with its stderr in `log`, logged its
/// `event=<event> ... listen=<addr>` line; returns that address. Panics when it exits first
/// or stays silent for 10 s.
pub fn wait_logged_listen(p: &mut Proc, log: &Path, event: &str) -> SocketAddr {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = logged_listen(&text, event) {
            return addr;
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!("{} exited ({st}) before listening: {text}", p.name);
        }
        if Instant::now() >= end {
            panic!("{} logged no listen address within 10 s: {text}", p.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connected client with read/write deadlines.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    s.set_nodelay(true).ok();
    s
}

/// One parsed HTTP response as the test saw it on the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `s` (Content-Length, chunked, or until close), keeping any bytes
/// after it in `pending` for the next call. `head_request` = the request was HEAD.
pub fn read_response(
    s: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_request: bool,
) -> std::io::Result<Response> {
    let head_end = loop {
        if let Some(i) = find(pending, b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, pending)?;
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    pending.drain(..head_end);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    if no_body {
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = find(pending, b"\r\n") {
                    break i;
                }
                fill(s, pending)?;
            };
            let size_str = String::from_utf8_lossy(&pending[..line_end]).into_owned();
            let size =
                usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size {size_str:?}")))?;
            pending.drain(..line_end + 2);
            if size == 0 {
                // trailers until empty line
                loop {
                    let e = loop {
                        if let Some(i) = find(pending, b"\r\n") {
                            break i;
                        }
                        fill(s, pending)?;
                    };
                    pending.drain(..e + 2);
                    if e == 0 {
                        break;
                    }
                }
                break;
            }
            while pending.len() < size + 2 {
                fill(s, pending)?;
            }
            body.extend_from_slice(&pending[..size]);
            pending.drain(..size + 2);
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad content-length {cl:?}")))?;
        while pending.len() < n {
            fill(s, pending)?;
        }
        body.extend(pending.drain(..n));
    } else {
        loop {
            match fill(s, pending) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        body.append(pending);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut tmp = [0u8; 16384];
    let n = s.read(&mut tmp)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `raw` on a new connection and reads one response.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = connect(addr);
    s.write_all(raw)?;
    let mut pending = Vec::new();
    read_response(&mut s, &mut pending, raw.starts_with(b"HEAD "))
}

/// `GET path` with Connection: close; returns the response.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Reads everything until the peer closes (or the read deadline passes).
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The instrumented, scripted test backend (records exactly what it received).
pub mod backend;

/// `n` consecutive ports below the kernel's ephemeral range (32768+) that are free now. Ports
/// a process binds later (workers started during a test) are safe there: no outgoing
/// connection of the test's own load can take one between the check and the bind.
pub fn quiet_port_range(n: u16) -> u16 {
    use rand::RngExt;
    let mut rng = rand::rng();
    for _ in 0..500 {
        let base: u16 = rng.random_range(10_000..32_000 - n);
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize && claim(u32::from(base)..u32::from(base) + u32::from(n)) {
            return base;
        }
    }
    panic!("no run of {n} free ports below 32000");
}
