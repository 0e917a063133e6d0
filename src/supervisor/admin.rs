//! The admin endpoint: a small non-blocking HTTP/1.1 server in the supervisor's loop serving
//! `GET /status` (JSON), `GET /metrics` (Prometheus text) and `GET /` (the dashboard page,
//! answered here: it is static). One request per connection.
//!
//! Idle connections cannot lock it out (issue 13, defect 7): a connection gets
//! `REQUEST_DEADLINE` to send its request, and when `MAX_CONNS` are open a new one closes the
//! oldest connection still waiting for its request, instead of being turned away.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client gets to send its request head (tools and the dashboard send it at once).
const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// Time a client gets to read the answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Most admin connections open at once; at the limit a new one displaces the oldest waiting
/// for its request (see `make_room`).
const MAX_CONNS: usize = 256;

/// What the loop should answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /status`.
    Status,
    /// `GET /metrics`.
    Metrics,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// When it was accepted (the oldest waiting one makes room for a new one).
    opened: Instant,
    deadline: Instant,
    answered: bool,
}

/// The admin listener and its connections.
#[derive(Debug)]
pub struct Admin {
    /// None once handed over to a new supervisor (upgrade).
    listener: Option<TcpListener>,
    conns: HashMap<Token, Conn>,
}

/// A request a connection is waiting on: the loop renders the body and calls [`Admin::answer`].
pub struct Pending {
    /// Connection token.
    pub token: Token,
    /// What to render.
    pub route: Route,
}

impl Admin {
    /// Wraps the bound listener and registers it.
    pub fn new(
        listener: std::net::TcpListener,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Admin> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Admin {
            listener: Some(listener),
            conns: HashMap::new(),
        })
    }

    /// The listening socket and its address (handed to a new supervisor on upgrade).
    pub fn listener(&self) -> Option<(std::os::fd::BorrowedFd<'_>, std::net::SocketAddr)> {
        use std::os::fd::AsFd;
        let l = self.listener.as_ref()?;
        Some((l.as_fd(), l.local_addr().ok()?))
    }

    /// Stops accepting (the new supervisor answers from now on); open connections finish.
    pub fn close_listener(&mut self, registry: &Registry) {
        if let Some(mut l) = self.listener.take() {
            let _ = registry.deregister(&mut l);
        }
    }

    /// Whether `token` is one of the admin connections.
    pub fn owns(&self, token: Token) -> bool {
        self.conns.contains_key(&token)
    }

    /// Accepts every waiting connection; `next_token` hands out tokens.
    pub fn accept(&mut self, registry: &Registry, mut next_token: impl FnMut() -> Token) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let now = Instant::now();
                    if self.conns.len() >= MAX_CONNS {
                        make_room(&mut self.conns, registry);
                    }
                    let token = next_token();
                    if registry
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            written: 0,
                            opened: now,
                            deadline: now + REQUEST_DEADLINE,
                            answered: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::warn!(
                        "admin_accept_failed",
                        "error={}",
                        crate::sys::log::quote(&e.to_string())
                    );
                    return;
                }
            }
        }
    }

    /// Handles readiness on a connection; returns a request to answer when one is complete.
    pub fn ready(&mut self, registry: &Registry, token: Token) -> Option<Pending> {
        let conn = self.conns.get_mut(&token)?;
        if conn.answered {
            self.flush(registry, token);
            return None;
        }
        let closed = read_available(conn);
        let parsed = parse(&conn.inbuf);
        let too_big = conn.inbuf.len() > MAX_HEAD;
        match parsed {
            Parsed::Incomplete if too_big => {
                self.respond(
                    registry,
                    token,
                    431,
                    "text/plain",
                    b"request head too large\n".to_vec(),
                );
                None
            }
            Parsed::Incomplete => {
                if closed {
                    self.close(registry, token);
                }
                None
            }
            Parsed::Bad(status) => {
                let msg = format!("{}\n", crate::http::response::reason(status));
                self.respond(registry, token, status, "text/plain", msg.into_bytes());
                None
            }
            Parsed::Request { method, path } => self.route(registry, token, &method, &path),
        }
    }

    /// A complete request: the dashboard and errors are answered here, `/status` and
    /// `/metrics` come back to be rendered.
    fn route(
        &mut self,
        registry: &Registry,
        token: Token,
        method: &str,
        path: &str,
    ) -> Option<Pending> {
        let path = path.split('?').next().unwrap_or("");
        let route = match path {
            "/status" => Some(Route::Status),
            "/metrics" => Some(Route::Metrics),
            "/" => None,
            _ => {
                self.respond(
                    registry,
                    token,
                    404,
                    "text/plain",
                    b"not found: try /, /status or /metrics\n".to_vec(),
                );
                return None;
            }
        };
        if method != "GET" && method != "HEAD" {
            self.respond(registry, token, 405, "text/plain", b"only GET\n".to_vec());
            return None;
        }
        let Some(route) = route else {
            let page = super::dashboard::PAGE.as_bytes().to_vec();
            let (ctype, headers) = (super::dashboard::CONTENT_TYPE, super::dashboard::HEADERS);
            self.respond_with(registry, token, 200, ctype, headers, page);
            return None;
        };
        Some(Pending { token, route })
    }

    /// Sends a rendered answer (200, never cached: it is live state) to a pending request.
    pub fn answer(&mut self, registry: &Registry, token: Token, content_type: &str, body: Vec<u8>) {
        let no_store = "Cache-Control: no-store\r\n";
        self.respond_with(registry, token, 200, content_type, no_store, body);
    }

    fn respond(
        &mut self,
        registry: &Registry,
        token: Token,
        status: u16,
        ctype: &str,
        body: Vec<u8>,
    ) {
        self.respond_with(registry, token, status, ctype, "", body);
    }

    /// `respond` with `extra` header lines (each ending in CRLF) after the standard ones.
    fn respond_with(
        &mut self,
        registry: &Registry,
        token: Token,
        status: u16,
        ctype: &str,
        extra: &str,
        body: Vec<u8>,
    ) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let head_only = conn.inbuf.starts_with(b"HEAD ");
        let mut out = crate::http::response::simple(status, ctype, &body, true);
        if let Some(blank) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            // Before the blank line that ends the head.
            let at = blank + 2;
            out.splice(at..at, extra.bytes());
        }
        if head_only {
            // Same head, no body.
            let end = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(out.len(), |i| i + 4);
            out.truncate(end);
        }
        conn.out = out;
        conn.answered = true;
        conn.deadline = Instant::now() + ANSWER_DEADLINE;
        self.flush(registry, token);
    }

    fn flush(&mut self, registry: &Registry, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(0) => break,
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(registry, token);
    }

    fn close(&mut self, registry: &Registry, token: Token) {
        close_conn(&mut self.conns, registry, token);
    }

    /// Closes connections past their deadline.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        let late: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            self.close(registry, t);
        }
    }
}

/// Reads what the connection has (up to just past the head limit); whether the peer closed.
fn read_available(conn: &mut Conn) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                conn.inbuf.extend_from_slice(&buf[..n]);
                if conn.inbuf.len() > MAX_HEAD {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn close_conn(conns: &mut HashMap<Token, Conn>, registry: &Registry, token: Token) {
    if let Some(mut conn) = conns.remove(&token) {
        let _ = registry.deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    }
}

/// Closes one connection to make room for a new one: the oldest still waiting for its
/// request (an idle one holds nothing anyone waits for), else the oldest of all.
fn make_room(conns: &mut HashMap<Token, Conn>, registry: &Registry) {
    let oldest = |waiting: bool| {
        conns
            .iter()
            .filter(|(_, c)| !waiting || !c.answered)
            .min_by_key(|(_, c)| c.opened)
            .map(|(t, _)| *t)
    };
    if let Some(t) = oldest(true).or_else(|| oldest(false)) {
        close_conn(conns, registry, t);
    }
}

enum Parsed {
    Incomplete,
    Bad(u16),
    Request { method: String, path: String },
}

/// Parses the request head with the shared strict parser (the admin endpoint ignores any
/// body: it answers and closes).
fn parse(buf: &[u8]) -> Parsed {
    let limits = crate::http::request::Limits {
        max_request_line: 4096,
        max_header_bytes: MAX_HEAD,
        max_headers: 64,
    };
    match crate::http::request::parse_request_head(buf, &limits) {
        Ok(Some(head)) => Parsed::Request {
            method: String::from_utf8_lossy(head.method.get(buf)).into_owned(),
            path: String::from_utf8_lossy(head.target.get(buf)).into_owned(),
        },
        Ok(None) => Parsed::Incomplete,
        Err(e) => Parsed::Bad(e.status()),
    }
}
