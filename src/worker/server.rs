//! The worker's event loop: one mio Poll, one thread, every connection a small state machine.
//!
//! A connection holds a queue of requests in arrival order; each entry is either waiting (on
//! its delay timer or on the stats store) or ready. Only the front of the queue is ever
//! written, so pipelined responses leave in order whatever their delays. Reading stops while
//! the queue is full, the input buffer is full or unsent output is above a high-water mark:
//! a client that does not read its responses stops being read (backpressure).

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::delay::DelayModel;
use super::store::Store;
use super::{Options, ms};
use crate::sys::log::quote;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const STORE_WAKER: Token = Token(2);
/// Connection `i` is registered under `Token(FIRST_CONN + i)`.
const FIRST_CONN: usize = 3;

/// Requests queued per connection (pipelining depth) before the worker stops reading it.
const MAX_PIPELINE: usize = 64;
/// Unsent response bytes above which no further response is queued for writing.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Largest request body accepted on /api/v1/hello (read and discarded).
const HELLO_BODY_MAX: u64 = 1024;
/// Largest request body accepted elsewhere (read and discarded).
const OTHER_BODY_MAX: u64 = 64 * 1024;
/// After a response that closes the connection, unread input is drained this long so the
/// close is a FIN, not a reset that could destroy the response in flight.
const LINGER: Duration = Duration::from_secs(1);
/// Read scratch size: one read never takes more than this from a socket.
const READ_CHUNK: usize = 16 * 1024;

/// What a finished request answers.
#[derive(Debug)]
enum Reply {
    /// 200 hello.
    Hello,
    /// 500 simulated failure.
    HelloFail,
    /// Any other JSON answer.
    Json {
        status: u16,
        body: Arc<str>,
        allow: Option<&'static str>,
    },
}

/// One request in a connection's queue.
#[derive(Debug)]
struct Slot {
    /// Unique across the worker (timer and store answers find their slot by it).
    seq: u64,
    /// When the request head was complete.
    start: Instant,
    /// Ready to be written, or still waiting (delay timer / stats store).
    reply: Option<Reply>,
    /// Counted in the stats (hello only) once written: Some(success).
    hello: Option<bool>,
    /// HEAD request: head of the response only.
    head_only: bool,
}

/// One client connection.
struct Conn {
    sock: TcpStream,
    /// Unique per accepted connection; deadline timer entries carry it.
    serial: u64,
    inbuf: Vec<u8>,
    /// When the head being received started (for the head deadline).
    head_started: Option<Instant>,
    /// Request body bytes still to read and discard.
    body_left: u64,
    /// Last time bytes moved either way.
    last_progress: Instant,
    queue: VecDeque<Slot>,
    out: Vec<u8>,
    out_pos: usize,
    /// Edge-triggered readiness not yet used up.
    readable: bool,
    writable: bool,
    /// The peer sent FIN.
    read_eof: bool,
    /// No further request is parsed; close once the queue and output are empty.
    closing: bool,
    /// Output done and write side shut: discarding input until EOF or the deadline.
    linger_until: Option<Instant>,
    /// Deadline currently in the timer heap for this connection.
    armed: Option<Instant>,
    /// Queued in the loop's dirty list.
    dirty: bool,
}

/// A timer heap entry; ordered by time first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    kind: TimerKind,
    slot_or_conn: usize,
    id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// A hello delay elapsed: `id` = request seq, `slot_or_conn` = connection index.
    Delay,
    /// A connection's deadline may have passed: `id` = connection serial.
    Deadline,
    /// Accepting may resume (after EMFILE).
    ResumeAccept,
}

/// A parsed request head, as the worker needs it.
struct Head {
    len: usize,
    method: Vec<u8>,
    path: Vec<u8>,
    keep_alive: bool,
    body: BodyLen,
}

enum BodyLen {
    None,
    Length(u64),
    Chunked,
}

/// The stand-in head parser until `crate::http::request` lands: Ok(None) = incomplete,
/// Err(status) = answer that status and close.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, u16> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                Err(431)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => Err(431),
        Err(_) => Err(400),
        Ok(httparse::Status::Complete(len)) => {
            if len > MAX_HEAD {
                return Err(431);
            }
            let version = req.version.unwrap_or(1);
            let mut keep_alive = version == 1;
            let mut body = BodyLen::None;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("connection") {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if v.contains("close") {
                        keep_alive = false;
                    } else if v.contains("keep-alive") {
                        keep_alive = true;
                    }
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    let n = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .ok_or(400u16)?;
                    body = BodyLen::Length(n);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    body = BodyLen::Chunked;
                }
            }
            Ok(Some(Head {
                len,
                method: req.method.unwrap_or("").as_bytes().to_vec(),
                path: req.path.unwrap_or("").as_bytes().to_vec(),
                keep_alive,
                body,
            }))
        }
    }
}

/// The reason phrase for the statuses the worker sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends one JSON response to `out`.
fn write_json(
    out: &mut Vec<u8>,
    status: u16,
    body: &str,
    allow: Option<&str>,
    close: bool,
    head_only: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if let Some(a) = allow {
        let _ = write!(out, "Allow: {a}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}

/// `{"error":"<reason in lower case>"}`.
fn error_body(status: u16) -> Arc<str> {
    Arc::from(format!(
        "{{\"error\":{}}}",
        serde_json::Value::String(reason(status).to_ascii_lowercase())
    ))
}

/// Precomputed hello answers (the hot path allocates nothing for them).
struct Canned {
    ok_body: Arc<str>,
    fail_body: Arc<str>,
}

struct Worker {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    timers: BinaryHeap<std::cmp::Reverse<Timer>>,
    dirty: Vec<usize>,
    /// Stats requests waiting on the store: request seq -> connection index.
    stats_waiting: HashMap<u64, usize>,
    store: Store,
    model: DelayModel,
    canned: Canned,
    id: String,
    next_seq: u64,
    next_serial: u64,
    draining: bool,
    accept_paused: bool,
    head_timeout: Duration,
    idle_timeout: Duration,
    max_conns: usize,
    scratch: Box<[u8]>,
}

/// Binds, opens the store, serves until SIGTERM/SIGINT, drains, flushes.
pub fn run(opts: &Options, id: &str) -> Result<(), String> {
    let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), STORE_WAKER).map_err(|e| format!("waker: {e}"))?,
    );
    let notify = {
        let waker = Arc::clone(&waker);
        Box::new(move || {
            let _ = waker.wake();
        })
    };
    // The store first: a bad database is reported before the port is taken.
    let store = Store::start(&opts.db, id, ms(opts.stats_flush_ms.max(1)), notify)?;
    let std_listener = std::net::TcpListener::bind(opts.listen)
        .map_err(|e| format!("listen {}: {e}", opts.listen))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("listen {}: {e}", opts.listen))?;
    let mut listener = TcpListener::from_std(std_listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("register listener: {e}"))?;
    let mut signals = crate::sys::signals::Signals::new(&[
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("signals: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listen {}: {e}", opts.listen))?;
    let canned = Canned {
        ok_body: Arc::from(format!(
            "{{\"message\":{}}}",
            serde_json::Value::String(format!("hello from container: {id}"))
        )),
        fail_body: Arc::from(format!(
            "{{\"error\":\"internal server error\",\"message\":{}}}",
            serde_json::Value::String(format!("simulated failure in container: {id}"))
        )),
    };
    let mut w = Worker {
        poll,
        listener: Some(listener),
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        timers: BinaryHeap::new(),
        dirty: Vec::new(),
        stats_waiting: HashMap::new(),
        store,
        model: DelayModel::new(opts.avg_delay_ms, opts.failure_pct),
        canned,
        id: id.to_string(),
        next_seq: 0,
        next_serial: 0,
        draining: false,
        accept_paused: false,
        head_timeout: ms(opts.head_timeout_ms.max(1)),
        idle_timeout: ms(opts.idle_timeout_ms.max(1)),
        max_conns: opts.max_connections.max(1),
        scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
    };
    crate::info!(
        "worker_started",
        "id={} listen={} db={} avg_delay_ms={} failure_pct={} delay=uniform[0,{}ms]",
        id,
        local,
        quote(&opts.db.display().to_string()),
        opts.avg_delay_ms,
        opts.failure_pct,
        opts.avg_delay_ms.saturating_mul(2)
    );
    crate::sys::notify::ready(&format!("worker {id} serving on {local}"));

    let mut events = Events::with_capacity(1024);
    let mut drain_deadline: Option<Instant> = None;
    let drain_timeout = ms(opts.drain_timeout_ms);
    loop {
        let now = Instant::now();
        let mut timeout = w.timers.peek().map(|t| t.0.at.saturating_duration_since(now));
        if let Some(d) = drain_deadline {
            let left = d.saturating_duration_since(now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        // epoll rounds down to ms; round up so a timer is never polled for early, in a spin.
        let timeout = timeout.map(|t| {
            let ms = t.as_micros().div_ceil(1000);
            Duration::from_millis(ms as u64)
        });
        if let Err(e) = w.poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(format!("poll: {e}"));
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => w.accept_all(),
                SIGNALS => {
                    let sigs = signals.pending();
                    if !sigs.is_empty() && !w.draining {
                        crate::info!(
                            "worker_draining",
                            "id={} signal={} connections={} timeout_ms={}",
                            w.id,
                            sigs[0],
                            w.live,
                            opts.drain_timeout_ms
                        );
                        crate::sys::notify::stopping();
                        drain_deadline = Some(Instant::now() + drain_timeout);
                        w.start_drain();
                    }
                }
                STORE_WAKER => w.take_store_answers(),
                Token(t) => {
                    let idx = t - FIRST_CONN;
                    if let Some(Some(c)) = w.conns.get_mut(idx) {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.readable = true;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            c.writable = true;
                        }
                        w.mark_dirty(idx);
                    }
                }
            }
        }
        w.fire_timers(Instant::now());
        w.drive_dirty();
        if w.draining {
            if w.live == 0 {
                break;
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                crate::warn!(
                    "worker_drain_timeout",
                    "id={} connections_closed={}",
                    w.id,
                    w.live
                );
                break;
            }
        }
    }
    let Worker { store, id, .. } = w;
    store.stop()?;
    crate::info!("worker_stopped", "id={id} stats=flushed");
    Ok(())
}

impl Worker {
    fn accept_all(&mut self) {
        loop {
            if self.draining {
                return;
            }
            if self.live >= self.max_conns {
                if !self.accept_paused {
                    self.accept_paused = true;
                    crate::warn!(
                        "worker_max_connections",
                        "id={} connections={}",
                        self.id,
                        self.live
                    );
                }
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, _peer)) => self.add_conn(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_fd_exhaustion(&e) => {
                    // Out of descriptors: pending connections wait in the backlog; retry soon.
                    crate::warn!("worker_accept_paused", "id={} error={}", self.id, e);
                    self.accept_paused = true;
                    self.timers.push(std::cmp::Reverse(Timer {
                        at: Instant::now() + Duration::from_millis(100),
                        kind: TimerKind::ResumeAccept,
                        slot_or_conn: 0,
                        id: 0,
                    }));
                    return;
                }
                // A connection that died in the backlog (ECONNABORTED...): next one.
                Err(_) => continue,
            }
        }
    }

    fn add_conn(&mut self, mut sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                Token(FIRST_CONN + idx),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.free.push(idx);
            return;
        }
        self.next_serial += 1;
        let now = Instant::now();
        self.conns[idx] = Some(Conn {
            sock,
            serial: self.next_serial,
            inbuf: Vec::new(),
            head_started: None,
            body_left: 0,
            last_progress: now,
            queue: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
            readable: false,
            writable: true,
            read_eof: false,
            closing: self.draining,
            linger_until: None,
            armed: None,
            dirty: false,
        });
        self.live += 1;
        // Arm the idle deadline (a client that connects and sends nothing).
        self.mark_dirty(idx);
    }

    fn close_conn(&mut self, idx: usize) {
        if let Some(Some(mut c)) = self.conns.get_mut(idx).map(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            for s in &c.queue {
                self.stats_waiting.remove(&s.seq);
            }
            self.free.push(idx);
            self.live -= 1;
            if self.accept_paused && !self.draining && self.live < self.max_conns {
                self.accept_paused = false;
                self.accept_all();
            }
        }
    }

    fn mark_dirty(&mut self, idx: usize) {
        if let Some(Some(c)) = self.conns.get_mut(idx)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }

    fn drive_dirty(&mut self) {
        while let Some(idx) = self.dirty.pop() {
            if let Some(Some(c)) = self.conns.get_mut(idx) {
                c.dirty = false;
            }
            self.drive(idx);
        }
    }

    fn start_drain(&mut self) {
        self.draining = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for idx in 0..self.conns.len() {
            if let Some(Some(c)) = self.conns.get_mut(idx) {
                c.closing = true;
                self.mark_dirty(idx);
            }
        }
    }

    fn take_store_answers(&mut self) {
        for (seq, answer) in self.store.take_answers() {
            let Some(idx) = self.stats_waiting.remove(&seq) else {
                continue;
            };
            let Some(Some(c)) = self.conns.get_mut(idx) else {
                continue;
            };
            if let Some(slot) = c.queue.iter_mut().find(|s| s.seq == seq) {
                slot.reply = Some(match answer {
                    Ok(body) => Reply::Json {
                        status: 200,
                        body,
                        allow: None,
                    },
                    Err(e) => {
                        crate::warn!("stats_read_failed", "id={} error={}", self.id, quote(&e));
                        Reply::Json {
                            status: 503,
                            body: Arc::from(format!(
                                "{{\"error\":\"stats unavailable\",\"detail\":{}}}",
                                serde_json::Value::String(e)
                            )),
                            allow: None,
                        }
                    }
                });
                self.mark_dirty(idx);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse(t)) = self.timers.peek().copied() {
            if t.at > now {
                break;
            }
            self.timers.pop();
            match t.kind {
                TimerKind::Delay => {
                    if let Some(Some(c)) = self.conns.get_mut(t.slot_or_conn)
                        && let Some(slot) = c.queue.iter_mut().find(|s| s.seq == t.id)
                    {
                        slot.reply = Some(if slot.hello == Some(true) {
                            Reply::Hello
                        } else {
                            Reply::HelloFail
                        });
                        self.mark_dirty(t.slot_or_conn);
                    }
                }
                TimerKind::Deadline => {
                    if let Some(Some(c)) = self.conns.get_mut(t.slot_or_conn)
                        && c.serial == t.id
                    {
                        if c.armed == Some(t.at) {
                            c.armed = None;
                        }
                        // Re-evaluated (and expired if due) in drive().
                        self.mark_dirty(t.slot_or_conn);
                    }
                }
                TimerKind::ResumeAccept => {
                    if self.accept_paused && self.live < self.max_conns {
                        self.accept_paused = false;
                        self.accept_all();
                    }
                }
            }
        }
    }

    /// Does everything possible for connection `idx` now, then closes it or re-arms its
    /// deadline.
    fn drive(&mut self, idx: usize) {
        let now = Instant::now();
        let Some(Some(mut c)) = self.conns.get_mut(idx).map(Option::take) else {
            return;
        };
        let keep = self.step(idx, &mut c, now);
        let deadline = if keep { c.deadline(self) } else { None };
        if let Some(d) = deadline
            && c.armed.is_none_or(|a| a > d)
        {
            c.armed = Some(d);
            self.timers.push(std::cmp::Reverse(Timer {
                at: d,
                kind: TimerKind::Deadline,
                slot_or_conn: idx,
                id: c.serial,
            }));
        }
        self.conns[idx] = Some(c);
        if !keep {
            self.close_conn(idx);
        }
    }

    /// Moves bytes and requests along; false = close the connection now.
    fn step(&mut self, idx: usize, c: &mut Conn, now: Instant) -> bool {
        if let Some(until) = c.linger_until {
            return self.linger(c, now, until);
        }
        loop {
            let mut progress = false;
            // Ready responses at the front of the queue go to the output, in order.
            while c.out.len() - c.out_pos < OUT_HIGH_WATER {
                let Some(front) = c.queue.front() else { break };
                if front.reply.is_none() {
                    break;
                }
                let Some(slot) = c.queue.pop_front() else {
                    break;
                };
                let close = c.closing && c.queue.is_empty();
                if let Some(reply) = &slot.reply {
                    self.serialize(&mut c.out, reply, close, slot.head_only);
                }
                if let Some(success) = slot.hello {
                    self.store.record(success, now.saturating_duration_since(slot.start));
                }
                progress = true;
            }
            // Write what is pending.
            if c.writable && c.out_pos < c.out.len() {
                match c.sock.write(&c.out[c.out_pos..]) {
                    Ok(0) => return false,
                    Ok(n) => {
                        c.out_pos += n;
                        c.last_progress = now;
                        progress = true;
                        if c.out_pos == c.out.len() {
                            c.out.clear();
                            c.out_pos = 0;
                            if c.out.capacity() > 2 * OUT_HIGH_WATER {
                                c.out = Vec::new();
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => return false,
                }
            }
            // Parse complete requests out of the input buffer.
            if self.parse_requests(idx, c, now) {
                progress = true;
            }
            // Read more, unless that would outgrow a buffer or the pipeline.
            let backlog = c.out.len() - c.out_pos;
            if c.readable
                && !c.read_eof
                && !c.closing
                && c.queue.len() < MAX_PIPELINE
                && backlog < OUT_HIGH_WATER
                && c.inbuf.len() < READ_CHUNK
            {
                let room = READ_CHUNK - c.inbuf.len();
                match c.sock.read(&mut self.scratch[..room]) {
                    Ok(0) => {
                        c.read_eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&self.scratch[..n]);
                        c.last_progress = now;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => return false,
                }
            }
            if !progress {
                break;
            }
        }
        // Deadline expiry.
        if let Some(d) = c.deadline(self)
            && now >= d
        {
            return self.expire(idx, c, now);
        }
        let done = c.queue.is_empty() && c.out_pos == c.out.len();
        if done && (c.closing || c.read_eof) {
            return self.start_linger(c, now);
        }
        true
    }

    /// Handles an expired deadline: 408 for a stalled head or body, else close.
    fn expire(&mut self, idx: usize, c: &mut Conn, now: Instant) -> bool {
        let out_pending = c.out_pos < c.out.len();
        let receiving = c.body_left > 0 || (c.head_started.is_some() && !c.inbuf.is_empty());
        if receiving && !out_pending && !c.closing {
            crate::debug!("worker_request_timeout", "id={} conn={}", self.id, idx);
            c.closing = true;
            c.inbuf.clear();
            c.head_started = None;
            c.body_left = 0;
            self.next_seq += 1;
            c.queue.push_back(Slot {
                seq: self.next_seq,
                start: now,
                reply: Some(Reply::Json {
                    status: 408,
                    body: error_body(408),
                    allow: None,
                }),
                hello: None,
                head_only: false,
            });
            // Try to write it right away; the connection then closes (lingering).
            return self.step(idx, c, now);
        }
        false
    }

    fn start_linger(&mut self, c: &mut Conn, now: Instant) -> bool {
        let _ = c.sock.shutdown(Shutdown::Write);
        if c.read_eof {
            return false;
        }
        let until = now + LINGER;
        c.linger_until = Some(until);
        self.linger(c, now, until)
    }

    /// Discards input until EOF or the linger deadline; false = close now.
    fn linger(&mut self, c: &mut Conn, now: Instant, until: Instant) -> bool {
        if now >= until {
            return false;
        }
        c.inbuf = Vec::new();
        while c.readable {
            match c.sock.read(&mut self.scratch) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Parses and dispatches every complete request in the input buffer (within the
    /// pipeline limit); true if anything was consumed.
    fn parse_requests(&mut self, idx: usize, c: &mut Conn, now: Instant) -> bool {
        let mut pos = 0;
        let mut progress = false;
        loop {
            if c.body_left > 0 {
                let take = (c.inbuf.len() - pos).min(c.body_left.min(usize::MAX as u64) as usize);
                pos += take;
                c.body_left -= take as u64;
                if take > 0 {
                    progress = true;
                }
                if c.body_left > 0 {
                    break;
                }
            }
            if c.closing || c.queue.len() >= MAX_PIPELINE || pos == c.inbuf.len() {
                break;
            }
            match parse_head(&c.inbuf[pos..]) {
                Ok(None) => {
                    if c.head_started.is_none() {
                        c.head_started = Some(now);
                    }
                    break;
                }
                Ok(Some(head)) => {
                    pos += head.len;
                    c.head_started = None;
                    progress = true;
                    self.dispatch(idx, c, head, now);
                }
                Err(status) => {
                    pos = c.inbuf.len();
                    c.head_started = None;
                    progress = true;
                    self.push_ready(c, now, status, error_body(status), None, false);
                    c.closing = true;
                }
            }
        }
        if pos > 0 {
            c.inbuf.drain(..pos);
            if c.inbuf.is_empty() && c.inbuf.capacity() > READ_CHUNK {
                c.inbuf = Vec::new();
            }
        }
        if c.inbuf.is_empty() {
            c.head_started = None;
        }
        progress
    }

    fn push_ready(
        &mut self,
        c: &mut Conn,
        now: Instant,
        status: u16,
        body: Arc<str>,
        allow: Option<&'static str>,
        head_only: bool,
    ) {
        self.next_seq += 1;
        c.queue.push_back(Slot {
            seq: self.next_seq,
            start: now,
            reply: Some(Reply::Json {
                status,
                body,
                allow,
            }),
            hello: None,
            head_only,
        });
    }

    /// Routes one request head.
    fn dispatch(&mut self, idx: usize, c: &mut Conn, head: Head, now: Instant) {
        if !head.keep_alive {
            c.closing = true;
        }
        let path = route_path(&head.path);
        let method = head.method.as_slice();
        let is_hello = path == b"/api/v1/hello";
        let body_max = if is_hello {
            HELLO_BODY_MAX
        } else {
            OTHER_BODY_MAX
        };
        match head.body {
            BodyLen::None => {}
            BodyLen::Length(n) if n <= body_max => c.body_left = n,
            BodyLen::Length(_) => {
                self.push_ready(c, now, 413, error_body(413), None, false);
                c.closing = true;
                return;
            }
            BodyLen::Chunked => {
                // Chunked request bodies are not read here: refuse them plainly.
                self.push_ready(c, now, 411, error_body(411), None, false);
                c.closing = true;
                return;
            }
        }
        let head_only = method == b"HEAD";
        match path {
            b"/api/v1/hello" => {
                if method != b"GET" {
                    let body = method_body("GET");
                    self.push_ready(c, now, 405, body, Some("GET"), false);
                    return;
                }
                let mut rng = rand::rng();
                let success = !self.model.fails(&mut rng);
                let delay = self.model.delay(&mut rng);
                self.next_seq += 1;
                let seq = self.next_seq;
                let ready = delay.is_zero();
                c.queue.push_back(Slot {
                    seq,
                    start: now,
                    reply: ready.then_some(if success {
                        Reply::Hello
                    } else {
                        Reply::HelloFail
                    }),
                    hello: Some(success),
                    head_only: false,
                });
                if !ready {
                    self.timers.push(std::cmp::Reverse(Timer {
                        at: now + delay,
                        kind: TimerKind::Delay,
                        slot_or_conn: idx,
                        id: seq,
                    }));
                }
            }
            b"/worker/stats" => {
                if method != b"GET" && !head_only {
                    let body = method_body("GET, HEAD");
                    self.push_ready(c, now, 405, body, Some("GET, HEAD"), false);
                    return;
                }
                self.next_seq += 1;
                let seq = self.next_seq;
                c.queue.push_back(Slot {
                    seq,
                    start: now,
                    reply: None,
                    hello: None,
                    head_only,
                });
                self.stats_waiting.insert(seq, idx);
                self.store.request_stats(seq);
            }
            b"/healthz" => {
                if method != b"GET" && !head_only {
                    let body = method_body("GET, HEAD");
                    self.push_ready(c, now, 405, body, Some("GET, HEAD"), false);
                    return;
                }
                let (status, state) = if self.draining {
                    (503, "draining")
                } else {
                    (200, "serving")
                };
                let body = Arc::from(format!(
                    "{{\"status\":\"{state}\",\"id\":{}}}",
                    serde_json::Value::String(self.id.clone())
                ));
                self.push_ready(c, now, status, body, None, head_only);
            }
            _ => self.push_ready(c, now, 404, error_body(404), None, head_only),
        }
    }

    fn serialize(&self, out: &mut Vec<u8>, reply: &Reply, close: bool, head_only: bool) {
        match reply {
            Reply::Hello => write_json(out, 200, &self.canned.ok_body, None, close, head_only),
            Reply::HelloFail => {
                write_json(out, 500, &self.canned.fail_body, None, close, head_only)
            }
            Reply::Json {
                status,
                body,
                allow,
            } => write_json(out, *status, body, *allow, close, head_only),
        }
    }
}

impl Conn {
    /// When this connection must have made progress, given what it is doing.
    fn deadline(&self, w: &Worker) -> Option<Instant> {
        if let Some(l) = self.linger_until {
            return Some(l);
        }
        if self.out_pos < self.out.len() {
            // The client is not reading its responses.
            return Some(self.last_progress + w.idle_timeout);
        }
        if self.closing {
            return None;
        }
        if self.body_left > 0 {
            return Some(self.last_progress + w.head_timeout);
        }
        if let Some(s) = self.head_started
            && !self.inbuf.is_empty()
            && self.queue.len() < MAX_PIPELINE
        {
            return Some(s + w.head_timeout);
        }
        if self.queue.is_empty() {
            return Some(self.last_progress + w.idle_timeout);
        }
        None
    }
}

/// `{"error":"method not allowed","allow":"<allow>"}`.
fn method_body(allow: &str) -> Arc<str> {
    Arc::from(format!(
        "{{\"error\":\"method not allowed\",\"allow\":\"{allow}\"}}"
    ))
}

/// The path of a request target without query; absolute-form targets lose their authority.
fn route_path(target: &[u8]) -> &[u8] {
    let mut t = target;
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = match rest.iter().position(|&b| b == b'/') {
                Some(i) => &rest[i..],
                None => b"/",
            };
            break;
        }
    }
    match t.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) => &t[..i],
        None => t,
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE
            || code == nix::libc::ENOBUFS || code == nix::libc::ENOMEM
    )
}

#[cfg(test)]
mod tests {
    use super::route_path;

    #[test]
    fn routes() {
        assert_eq!(route_path(b"/api/v1/hello"), b"/api/v1/hello");
        assert_eq!(route_path(b"/api/v1/hello?x=1"), b"/api/v1/hello");
        assert_eq!(route_path(b"http://h:1/healthz"), b"/healthz");
        assert_eq!(route_path(b"HTTP://h"), b"/");
        assert_eq!(route_path(b"*"), b"*");
    }
}
