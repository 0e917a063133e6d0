//! The worker's event loop: one mio Poll, one thread, every connection a small state machine.
//!
//! A connection holds a queue of requests in arrival order; each entry is either waiting (on
//! its delay timer or on the stats store) or ready. Only the front of the queue is ever
//! written, so pipelined responses leave in order whatever their delays. Reading stops while
//! the queue is full, the input buffer is full or unsent output is above a high-water mark:
//! a client that does not read its responses stops being read (backpressure).

use std::cmp::Reverse;
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
use crate::http::chunked::{ChunkLimits, ChunkedDecoder};
use crate::http::response::{ConnectionHeader, json_error_body, write_simple};
use crate::http::{Framing, Limits, Method, RequestHead, parse_request_head};
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
/// The timer heap is never swept below this size.
const TIMER_SWEEP_MIN: usize = 4096;
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
    /// HTTP/1.0 request (a kept-alive answer must say `Connection: keep-alive`).
    http10: bool,
    /// The delay drawn for a hello, in microseconds (0 otherwise).
    delay_us: u64,
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
    /// A chunked request body being read and discarded.
    chunked: Option<ChunkedDecoder>,
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

/// Request-head limits of the worker: its requests are tiny, so smaller than the proxy's.
const HEAD_LIMITS: Limits = Limits {
    max_request_line: 8 * 1024,
    max_header_bytes: 16 * 1024,
    max_headers: 100,
};
/// Input buffered per connection: a whole head at the limit plus some, so an oversized head
/// is seen (431) rather than waited on.
const IN_MAX: usize = 16 * 1024 + 4 * 1024;

/// How one response is framed on the wire.
#[derive(Clone, Copy, Debug)]
struct Wire {
    conn: ConnectionHeader,
    head_only: bool,
}

/// Appends one JSON response to `out`.
fn write_json(
    out: &mut Vec<u8>,
    status: u16,
    body: &str,
    extra: Option<std::fmt::Arguments<'_>>,
    wire: Wire,
) {
    let start = out.len();
    write_simple(
        out,
        status,
        "application/json",
        body.as_bytes(),
        wire.conn,
        wire.head_only,
    );
    if let Some(field) = extra
        && let Some(eol) = out[start..].windows(2).position(|w| w == b"\r\n")
    {
        // write_simple takes no extra fields: ours go in right after the status line.
        let mut line = [0u8; 96];
        let mut cursor = std::io::Cursor::new(&mut line[..]);
        if write!(cursor, "{field}\r\n").is_ok() {
            let n = cursor.position() as usize;
            let at = start + eol + 2;
            out.splice(at..at, line[..n].iter().copied());
        }
    }
}

/// `{"error":"<message>","status":<status>}`.
fn error_body(status: u16, message: &str) -> Arc<str> {
    Arc::from(json_error_body(status, message))
}

/// What the worker keeps of a request head.
struct Request {
    method: Method,
    route: Route,
    keep_alive: bool,
    head_only: bool,
    http10: bool,
    body: Framing,
    expect_continue: bool,
}

/// The worker's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Hello,
    Stats,
    Health,
    Other,
}

impl Request {
    fn from_head(head: &RequestHead, buf: &[u8]) -> Request {
        let route = match route_path(head.target.get(buf)) {
            b"/api/v1/hello" => Route::Hello,
            b"/worker/stats" => Route::Stats,
            b"/healthz" => Route::Health,
            _ => Route::Other,
        };
        Request {
            method: head.method_kind,
            route,
            keep_alive: head.keep_alive,
            head_only: head.is_head(),
            http10: head.version == 0,
            body: head.framing,
            expect_continue: head.expect_continue,
        }
    }
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
    timers: BinaryHeap<Reverse<Timer>>,
    /// Heap size above which stale entries (closed connections, superseded deadlines) are
    /// swept out, so connection churn cannot grow the heap for a whole idle timeout.
    timers_sweep_at: usize,
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
    /// /healthz answers 503 (from the stop signal on, during the grace period too).
    unhealthy: bool,
    accept_paused: bool,
    head_timeout: Duration,
    idle_timeout: Duration,
    max_conns: usize,
    scratch: Box<[u8]>,
}

/// Binds, opens the store, serves until SIGTERM/SIGINT, drains, flushes.
/// `id`: the `--id` given, else the default for the port actually bound (see `default_id`).
pub fn run(opts: &Options, id: Option<&str>) -> Result<(), String> {
    let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let waker =
        Arc::new(Waker::new(poll.registry(), STORE_WAKER).map_err(|e| format!("waker: {e}"))?);
    let notify = {
        let waker = Arc::clone(&waker);
        Box::new(move || {
            let _ = waker.wake();
        })
    };
    let std_listener = crate::sys::net::bind_listener(opts.listen)
        .map_err(|e| format!("listen {}: {e}", opts.listen))?;
    let mut listener = TcpListener::from_std(std_listener);
    let local = listener
        .local_addr()
        .map_err(|e| format!("listen {}: {e}", opts.listen))?;
    let id = match id {
        Some(id) => id.to_string(),
        None => {
            let id = super::default_id(local.port());
            super::validate_id(&id).map_err(|e| format!("default id: {e}; pass --id"))?;
            id
        }
    };
    let id = id.as_str();
    crate::sys::log::init(&format!("worker.{id}"));
    // Nothing is accepted before the store is open: a bad database fails the start.
    let store = Store::start(&opts.db, id, ms(opts.stats_flush_ms.max(1)), notify)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("register listener: {e}"))?;
    // SIGHUP is caught only to be ignored: a hangup of the terminal or session the worker
    // was started from must not kill it (nothing is reloadable in a worker).
    let mut signals = crate::sys::signals::Signals::new(&[
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("signals: {e}"))?;
    let canned = Canned {
        ok_body: Arc::from(format!(
            "{{\"message\":{}}}",
            serde_json::Value::String(format!("hello from container: {id}"))
        )),
        fail_body: error_body(500, &format!("simulated failure in container: {id}")),
    };
    let mut w = Worker {
        poll,
        listener: Some(listener),
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        timers: BinaryHeap::new(),
        timers_sweep_at: TIMER_SWEEP_MIN,
        dirty: Vec::new(),
        stats_waiting: HashMap::new(),
        store,
        model: DelayModel::new(opts.avg_delay_ms, opts.failure_pct),
        canned,
        id: id.to_string(),
        next_seq: 0,
        next_serial: 0,
        draining: false,
        unhealthy: false,
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
    // No sd_notify here: a worker is a child of the supervisor's unit, and with
    // NotifyAccess=all its READY=1 would speak for the whole service.

    let mut events = Events::with_capacity(1024);
    let mut drain_deadline: Option<Instant> = None;
    let mut grace_until: Option<Instant> = None;
    let drain_timeout = ms(opts.drain_timeout_ms);
    loop {
        let now = Instant::now();
        let mut timeout = w
            .timers
            .peek()
            .map(|t| t.0.at.saturating_duration_since(now));
        for d in [drain_deadline, grace_until].into_iter().flatten() {
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
                    let mut sigs = signals.pending();
                    if sigs.contains(&signal_hook::consts::SIGHUP) {
                        crate::info!("worker_sighup_ignored", "id={}", w.id);
                        sigs.retain(|&s| s != signal_hook::consts::SIGHUP);
                    }
                    if sigs.is_empty() || w.draining {
                        continue;
                    }
                    if !w.unhealthy && opts.drain_grace_ms > 0 {
                        // Grace: still serving, /healthz 503, so balancers stop sending first.
                        crate::info!(
                            "worker_stopping",
                            "id={} signal={} grace_ms={}",
                            w.id,
                            sigs[0],
                            opts.drain_grace_ms
                        );
                        w.unhealthy = true;
                        grace_until = Some(Instant::now() + ms(opts.drain_grace_ms));
                        continue;
                    }
                    // A second signal during the grace period drains at once.
                    grace_until = Some(Instant::now());
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
        if !w.draining && grace_until.is_some_and(|g| Instant::now() >= g) {
            crate::info!(
                "worker_draining",
                "id={} connections={} timeout_ms={}",
                w.id,
                w.live,
                opts.drain_timeout_ms
            );
            drain_deadline = Some(Instant::now() + drain_timeout);
            w.start_drain();
        }
        w.fire_timers(Instant::now());
        w.drive_dirty();
        w.sweep_timers();
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
                    self.timers.push(Reverse(Timer {
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
            chunked: None,
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

    /// Stops accepting and lets every connection finish what it has received.
    fn start_drain(&mut self) {
        // Connections the kernel already completed and requests already received are the
        // clients' in-flight requests: take them before closing the door.
        self.accept_all();
        self.draining = true;
        self.unhealthy = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for idx in 0..self.conns.len() {
            if let Some(Some(c)) = self.conns.get_mut(idx) {
                c.readable = true;
                self.drive(idx);
            }
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
        while let Some(Reverse(t)) = self.timers.peek().copied() {
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

    /// Drops heap entries that can no longer do anything, when the heap has doubled since the
    /// last sweep (amortised O(1) per entry).
    fn sweep_timers(&mut self) {
        if self.timers.len() <= self.timers_sweep_at {
            return;
        }
        let conns = &self.conns;
        self.timers.retain(|Reverse(t)| match t.kind {
            TimerKind::ResumeAccept => true,
            TimerKind::Deadline => matches!(
                conns.get(t.slot_or_conn),
                Some(Some(c)) if c.serial == t.id && c.armed == Some(t.at)
            ),
            TimerKind::Delay => matches!(
                conns.get(t.slot_or_conn),
                Some(Some(c)) if c.queue.iter().any(|s| s.seq == t.id)
            ),
        });
        self.timers_sweep_at = (2 * self.timers.len()).max(TIMER_SWEEP_MIN);
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
            self.timers.push(Reverse(Timer {
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
                // A request is answered once it is complete: its body read too.
                if front.reply.is_none() || (c.queue.len() == 1 && c.in_body()) {
                    break;
                }
                let Some(slot) = c.queue.pop_front() else {
                    break;
                };
                let close = c.closing && c.queue.is_empty();
                self.serialize(&mut c.out, &slot, close);
                if let Some(success) = slot.hello {
                    self.store
                        .record(success, now.saturating_duration_since(slot.start));
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
                && c.inbuf.len() < IN_MAX
            {
                let room = (IN_MAX - c.inbuf.len()).min(READ_CHUNK);
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
        let receiving = c.in_body() || (c.head_started.is_some() && !c.inbuf.is_empty());
        if receiving && !out_pending && !c.closing {
            crate::debug!("worker_request_timeout", "id={} conn={}", self.id, idx);
            if c.in_body() {
                // Its body never came: that request is not answered (nor counted).
                if let Some(s) = c.queue.pop_back() {
                    self.stats_waiting.remove(&s.seq);
                }
            }
            c.closing = true;
            c.inbuf.clear();
            c.head_started = None;
            c.body_left = 0;
            c.chunked = None;
            self.next_seq += 1;
            c.queue.push_back(Slot {
                seq: self.next_seq,
                start: now,
                reply: Some(Reply::Json {
                    status: 408,
                    body: error_body(408, "request not received in time"),
                    allow: None,
                }),
                hello: None,
                head_only: false,
                http10: false,
                delay_us: 0,
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
                let avail = (c.inbuf.len() - pos) as u64;
                let take = avail.min(c.body_left) as usize;
                pos += take;
                c.body_left -= take as u64;
                progress |= take > 0;
                if c.body_left > 0 {
                    break;
                }
            }
            if let Some(dec) = c.chunked.as_mut() {
                match dec.feed(&c.inbuf[pos..], &mut |_| {}) {
                    Ok(p) => {
                        pos += p.consumed;
                        progress |= p.consumed > 0;
                        if !p.done {
                            break;
                        }
                        c.chunked = None;
                    }
                    Err(e) => {
                        // The request is not complete: its slot gives way to the error.
                        if let Some(s) = c.queue.pop_back() {
                            self.stats_waiting.remove(&s.seq);
                        }
                        c.chunked = None;
                        pos = c.inbuf.len();
                        progress = true;
                        let status = e.status();
                        let body = error_body(status, &e.to_string());
                        self.push_ready(c, now, status, body, None);
                        c.closing = true;
                        break;
                    }
                }
            }
            if c.closing || c.queue.len() >= MAX_PIPELINE || pos == c.inbuf.len() {
                break;
            }
            match parse_request_head(&c.inbuf[pos..], &HEAD_LIMITS) {
                Ok(None) => {
                    if c.head_started.is_none() {
                        c.head_started = Some(now);
                    }
                    break;
                }
                Ok(Some(head)) => {
                    let buf = &c.inbuf[pos..pos + head.head_len];
                    let req = Request::from_head(&head, buf);
                    pos += head.head_len;
                    c.head_started = None;
                    progress = true;
                    self.dispatch(idx, c, req, now);
                }
                Err(e) => {
                    pos = c.inbuf.len();
                    c.head_started = None;
                    progress = true;
                    let status = e.status();
                    crate::debug!(
                        "worker_bad_request",
                        "id={} status={status} reason={}",
                        self.id,
                        quote(e.message())
                    );
                    self.push_ready(c, now, status, error_body(status, e.message()), None);
                    c.closing = true;
                }
            }
        }
        if pos > 0 {
            c.inbuf.drain(..pos);
            if c.inbuf.is_empty() && c.inbuf.capacity() > IN_MAX {
                c.inbuf = Vec::new();
            }
        }
        if c.inbuf.is_empty() {
            c.head_started = None;
        }
        progress
    }

    /// Queues an answer that is ready now (not a hello, not counted).
    fn push_ready(
        &mut self,
        c: &mut Conn,
        now: Instant,
        status: u16,
        body: Arc<str>,
        req: Option<&Request>,
    ) {
        self.push_reply(c, now, status, body, None, req);
    }

    fn push_reply(
        &mut self,
        c: &mut Conn,
        now: Instant,
        status: u16,
        body: Arc<str>,
        allow: Option<&'static str>,
        req: Option<&Request>,
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
            head_only: req.is_some_and(|r| r.head_only),
            http10: req.is_some_and(|r| r.http10),
            delay_us: 0,
        });
    }

    /// Routes one request.
    fn dispatch(&mut self, idx: usize, c: &mut Conn, req: Request, now: Instant) {
        if !req.keep_alive {
            c.closing = true;
        }
        let is_hello = req.route == Route::Hello;
        let body_max = if is_hello {
            HELLO_BODY_MAX
        } else {
            OTHER_BODY_MAX
        };
        match req.body {
            Framing::None | Framing::Close => {}
            Framing::Length(n) if n <= body_max => {
                if n > 0 && req.expect_continue && c.queue.is_empty() {
                    // Every earlier answer is already in `out`: the interim one may follow.
                    c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                c.body_left = n;
            }
            Framing::Length(_) => {
                let body = error_body(413, "request body too large");
                self.push_ready(c, now, 413, body, Some(&req));
                c.closing = true;
                return;
            }
            Framing::Chunked => {
                if req.expect_continue && c.queue.is_empty() {
                    c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                c.chunked = Some(ChunkedDecoder::new(ChunkLimits {
                    max_body: body_max,
                    ..ChunkLimits::default()
                }));
            }
        }
        let get = req.method == Method::Get;
        let get_or_head = get || req.method == Method::Head;
        match req.route {
            Route::Hello if !get => {
                let body = error_body(405, "method not allowed");
                self.push_reply(c, now, 405, body, Some("GET"), Some(&req));
            }
            Route::Hello => {
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
                    http10: req.http10,
                    delay_us: delay.as_micros() as u64,
                });
                if !ready {
                    self.timers.push(Reverse(Timer {
                        at: now + delay,
                        kind: TimerKind::Delay,
                        slot_or_conn: idx,
                        id: seq,
                    }));
                }
            }
            Route::Stats | Route::Health if !get_or_head => {
                let body = error_body(405, "method not allowed");
                self.push_reply(c, now, 405, body, Some("GET, HEAD"), Some(&req));
            }
            Route::Stats => {
                self.next_seq += 1;
                let seq = self.next_seq;
                c.queue.push_back(Slot {
                    seq,
                    start: now,
                    reply: None,
                    hello: None,
                    head_only: req.head_only,
                    http10: req.http10,
                    delay_us: 0,
                });
                self.stats_waiting.insert(seq, idx);
                self.store.request_stats(seq);
            }
            Route::Health => {
                let (status, state) = if self.unhealthy {
                    (503, "draining")
                } else {
                    (200, "serving")
                };
                let body = Arc::from(format!(
                    "{{\"status\":\"{state}\",\"id\":{}}}",
                    serde_json::Value::String(self.id.clone())
                ));
                self.push_ready(c, now, status, body, Some(&req));
            }
            Route::Other => {
                let body = error_body(404, "not found");
                self.push_ready(c, now, 404, body, Some(&req));
            }
        }
    }

    fn serialize(&self, out: &mut Vec<u8>, slot: &Slot, close: bool) {
        let wire = Wire {
            conn: if close {
                ConnectionHeader::Close
            } else if slot.http10 {
                ConnectionHeader::KeepAlive
            } else {
                ConnectionHeader::Omit
            },
            head_only: slot.head_only,
        };
        match &slot.reply {
            None => {}
            // X-Delay-Ms: the delay this worker drew for the request (tests and curious
            // operators can tell the applied delay from queueing on a busy machine).
            Some(Reply::Hello) => {
                let d = format_args!("X-Delay-Ms: {:.3}", slot.delay_us as f64 / 1000.0);
                write_json(out, 200, &self.canned.ok_body, Some(d), wire)
            }
            Some(Reply::HelloFail) => {
                let d = format_args!("X-Delay-Ms: {:.3}", slot.delay_us as f64 / 1000.0);
                write_json(out, 500, &self.canned.fail_body, Some(d), wire)
            }
            Some(Reply::Json {
                status,
                body,
                allow,
            }) => match allow {
                Some(a) => write_json(out, *status, body, Some(format_args!("Allow: {a}")), wire),
                None => write_json(out, *status, body, None, wire),
            },
        }
    }
}

impl Conn {
    /// Whether the current request's body is still being received.
    fn in_body(&self) -> bool {
        self.body_left > 0 || self.chunked.is_some()
    }

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
        if self.in_body() {
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
