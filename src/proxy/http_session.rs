//! One HTTP client connection as an explicit state machine:
//!
//! ```text
//!   Head ──request head──> Exchange ──final response done──> Head (keep-alive / pipelined)
//!    │  bad head: 4xx/5xx     │  101 to an upgrade            │
//!    v                        v                               v
//!  Closing <─── error ──── Tunnel ───── both sides done ───> (closed)
//! ```
//!
//! `Head` reads and parses a request head (idle keep-alive when nothing is buffered: then the
//! session holds no buffer). `Exchange` owns one upstream connection and streams the request
//! body up and the response down, each side stopping when the other cannot take more.
//! `Tunnel` relays raw bytes after a 101. `Closing` flushes a last response, shuts down the
//! write side and discards input until the client closes (lingering close, so a client still
//! sending does not get a reset that destroys the response).

use std::net::SocketAddr;
use std::time::Instant;

use mio::event::Event;

use super::access_log::{Phase, Termination};
use super::backends::Tried;
use super::buffer::{BUF_SIZE, Buf};
use super::core::{Core, TimerKey, UpConn};
use super::relay::{self, Half, TcpSock};
use super::request_record::{self, RequestRecord};
use crate::evloop::linger::{self, Discard};
use crate::evloop::{Deadline, ReadResult};
use crate::http::rewrite::{self, ClientResponse, ConnectionOut, UpstreamRequest};
use crate::http::{self, ChunkLimits, ChunkedDecoder, Framing, RequestHead};

/// What the loop should do with a session after it ran.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep it.
    Keep,
    /// Close it and free everything it holds.
    Close,
}

/// The result of one step of a state.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Something moved: step again.
    Moved,
    /// Waiting for readiness or a timer.
    Idle,
    /// The session ends.
    Close,
}

/// The client side of a session: what lives as long as the connection.
struct Client {
    slot: usize,
    sock: TcpSock,
    peer: SocketAddr,
    /// The request in flight's facts for the access log (None between requests).
    rec: Option<Box<RequestRecord>>,
    /// Bytes read from the client, not yet forwarded or parsed.
    cin: Option<Buf>,
    /// Bytes owed to the client (response heads, de-chunked data, canned responses).
    cout: Option<Buf>,
    /// Requests started on this connection.
    served: u32,
    deadline: Deadline,
    generation: u32,
}

/// What the exchange needs to remember of the request head (the head itself is gone once
/// rewritten for upstream).
struct ReqInfo {
    /// HTTP/1.x minor version of the client.
    minor: u8,
    is_head: bool,
    idempotent: bool,
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
}

/// What is left of a message body.
enum BodyLeft {
    Done,
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    /// Until the upstream closes (responses only).
    Close,
}

impl BodyLeft {
    fn from_framing(f: Framing, max_body: u64) -> BodyLeft {
        match f {
            Framing::None | Framing::Length(0) => BodyLeft::Done,
            Framing::Length(n) => BodyLeft::Length(n),
            Framing::Chunked => BodyLeft::Chunked(Box::new(ChunkedDecoder::new(ChunkLimits {
                max_body,
                ..ChunkLimits::default()
            }))),
            Framing::Close => BodyLeft::Close,
        }
    }

    fn done(&self) -> bool {
        matches!(self, BodyLeft::Done)
    }
}

/// Where the response stands.
enum Resp {
    /// Waiting for the (final) response head; 1xx heads are relayed meanwhile.
    Head,
    /// Relaying the body; `dechunk` for HTTP/1.0 clients of a chunked response.
    Body { left: BodyLeft, dechunk: bool },
}

/// One request/response exchange with an upstream connection.
struct Exchange {
    up: UpConn,
    x: Ex,
}

/// The exchange's bookkeeping (everything but the upstream connection, which a retry replaces).
struct Ex {
    req: ReqInfo,
    /// The head sent upstream, kept until the response head arrives (to retry).
    head: Option<Buf>,
    head_sent: usize,
    /// Request body still to forward, and bytes at the front of `cin` known to be body.
    body: BodyLeft,
    body_ready: usize,
    body_seen: u64,
    body_started: bool,
    /// Backends tried for this request.
    tried: Tried,
    /// Bytes read from upstream, and bytes at its front known to be response body.
    uin: Option<Buf>,
    resp_ready: usize,
    resp: Resp,
    status: u16,
    resp_keep_alive: bool,
    /// An interim (1xx) response already went to the client: no retry any more.
    interim_sent: bool,
    close_client: bool,
    up_eof: bool,
    /// Writing to the upstream failed; a response may still be readable.
    up_write_failed: bool,
    started: Instant,
}

/// What parsing response heads led to.
enum HeadOutcome {
    /// No complete final head yet.
    Pending,
    /// The final head is queued for the client; the body follows.
    Final,
    /// A 101 to an upgrade request: the exchange becomes a tunnel.
    Upgrade,
}

/// A tunnel after a 101: client bytes go up through `c2u`, upstream bytes down through `u2c`.
struct Tunnel {
    up: UpConn,
    c2u: Half,
    u2c: Half,
}

enum State {
    /// Reading a request head; `clock` = the header deadline runs (a head has started, or
    /// this is a new connection).
    Head {
        clock: bool,
    },
    Exchange(Exchange),
    Tunnel(Tunnel),
    /// Flushing a last response then closing; `shut` once the write side is shut down.
    Closing {
        shut: bool,
    },
    /// Transient, while a step runs.
    Void,
}

/// An HTTP client connection.
pub struct HttpSession {
    c: Client,
    state: State,
}

fn key(c: &Client) -> TimerKey {
    TimerKey::Slot(c.slot, c.generation)
}

impl Client {
    fn set_deadline(&mut self, core: &mut Core, ms: u64) {
        let at = core.after_ms(ms);
        let k = key(self);
        self.deadline.set(&mut core.timers, at, k);
    }

    /// Flushes the output still owed to the client (it goes before anything else, so
    /// pipelined answers stay in order): None once all is written, else the progress the
    /// caller returns with.
    fn flush_owed(&mut self, core: &mut Core) -> Option<Progress> {
        match self.flush_out(core) {
            Err(()) => Some(Progress::Close),
            Ok(_) if self.out_empty() => None,
            Ok(true) => Some(Progress::Moved),
            Ok(false) => Some(Progress::Idle),
        }
    }

    /// Writes pending `cout`; Err when the client is gone.
    fn flush_out(&mut self, core: &mut Core) -> Result<bool, ()> {
        let Some(out) = self.cout.as_mut() else {
            return Ok(false);
        };
        let moved = relay::flush(&mut self.sock, out).map_err(|_| ())?;
        core.bufs.put_if_empty(&mut self.cout);
        Ok(moved)
    }

    fn out_empty(&self) -> bool {
        self.cout.as_ref().is_none_or(Buf::is_empty)
    }

    fn queue(&mut self, core: &mut Core, bytes: &[u8]) {
        let out = self.cout.get_or_insert_with(|| core.bufs.get());
        out.push_all(bytes);
    }

    /// The request in flight's record, if one is open.
    fn rec(&mut self) -> Option<&mut RequestRecord> {
        self.rec.as_deref_mut()
    }

    /// Notes who is to blame should the request end early from here on.
    fn blame(&mut self, termination: Termination, phase: Phase) {
        if let Some(r) = self.rec() {
            r.blame(termination, phase);
        }
    }

    /// Ends the request's record: its access-log line (when wanted), the record back to the
    /// pool. `status` 0 = the client got no answer.
    fn end_request(&mut self, core: &mut Core, status: u16, how: (Termination, Phase)) {
        let Some(rec) = self.rec.take() else {
            return;
        };
        if core.access_log.is_on() {
            let worker = rec
                .backend
                .and_then(|b| core.backends.list.get(b))
                .map_or("-", |b| b.id.as_str());
            rec.write(&mut core.access_log, worker, status, how, core.now);
        }
        core.records.put(rec);
    }
}

impl HttpSession {
    /// A session for an accepted client socket in slab slot `slot`.
    pub fn new(core: &mut Core, slot: usize, sock: TcpSock, peer: SocketAddr) -> Self {
        let mut c = Client {
            slot,
            sock,
            peer,
            rec: None,
            cin: None,
            cout: None,
            served: 0,
            deadline: Deadline::none(),
            generation: core.slab.gen_of(slot),
        };
        c.set_deadline(core, core.settings.header_timeout_ms);
        HttpSession {
            c,
            state: State::Head { clock: true },
        }
    }

    /// The session's deadline.
    pub fn deadline(&self) -> &Deadline {
        &self.c.deadline
    }

    /// Readiness on the client socket.
    pub fn client_event(&mut self, core: &mut Core, ev: &Event) -> Flow {
        self.c.sock.note(ev);
        self.run(core)
    }

    /// Readiness on this session's upstream socket.
    pub fn upstream_event(&mut self, core: &mut Core, ev: &Event) -> Flow {
        match &mut self.state {
            State::Exchange(e) => e.up.sock.note(ev),
            State::Tunnel(t) => t.up.sock.note(ev),
            _ => {}
        }
        self.run(core)
    }

    /// Whether the session waits for a request with nothing of it received (between
    /// keep-alive requests, or a new connection that has not sent yet).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head { .. })
            && self.c.cin.as_ref().is_none_or(Buf::is_empty)
            && self.c.out_empty()
    }

    fn is_idle_input(&self) -> bool {
        self.c.cin.as_ref().is_none_or(Buf::is_empty)
    }

    /// A drain started while this session was idle: it closes when `grace_ms` ends unless a
    /// request arrives first (that one is answered with `Connection: close`).
    pub fn drain_idle(&mut self, core: &mut Core, grace_ms: u64) {
        self.c.set_deadline(core, grace_ms);
    }

    /// A timer armed by this session fired.
    pub fn timer(&mut self, core: &mut Core, fired_at: Instant) -> Flow {
        let k = key(&self.c);
        if !self
            .c
            .deadline
            .fire(&mut core.timers, fired_at, core.now, k)
        {
            return Flow::Keep;
        }
        let state = std::mem::replace(&mut self.state, State::Void);
        let (next, p) = match state {
            // Nothing of a request received: a silent close between keep-alive requests or
            // during a drain; else 408 (a head started, or a new connection that never sent).
            State::Head { clock } if !clock || core.draining && self.is_idle_input() => {
                (State::Head { clock }, Progress::Close)
            }
            State::Head { .. } => self.fail(core, 408),
            State::Exchange(ex) => {
                if !ex.up.connected {
                    self.c.blame(Termination::WorkerTimeout, Phase::Connect);
                    core.eject(ex.up.backend, "connect timeout");
                    ex.retry(&mut self.c, core, true)
                } else if matches!(ex.x.resp, Resp::Head) {
                    core.backends.list[ex.up.backend].failures += 1;
                    crate::warn!(
                        "upstream_timeout",
                        "backend={} timeout_ms={}",
                        crate::sys::log::quote(&core.backends.list[ex.up.backend].id),
                        core.settings.response_timeout_ms
                    );
                    self.c
                        .blame(Termination::WorkerTimeout, Phase::ResponseHead);
                    ex.abort(&mut self.c, core, 504)
                } else {
                    let who = if self.c.out_empty() {
                        Termination::WorkerTimeout
                    } else {
                        Termination::ClientTimeout
                    };
                    self.c.blame(who, Phase::ResponseBody);
                    (State::Exchange(ex), Progress::Close)
                }
            }
            other => (other, Progress::Close),
        };
        self.state = next;
        if p == Progress::Close {
            return Flow::Close;
        }
        self.run(core)
    }

    /// Runs the state machine until nothing can move.
    fn run(&mut self, core: &mut Core) -> Flow {
        loop {
            let state = std::mem::replace(&mut self.state, State::Void);
            let (next, p) = match state {
                State::Head { clock } => self.step_head(core, clock),
                State::Exchange(ex) => ex.step(&mut self.c, core),
                State::Tunnel(t) => t.step(&mut self.c, core),
                State::Closing { shut } => step_closing(&mut self.c, core, shut),
                State::Void => (State::Void, Progress::Close),
            };
            self.state = next;
            match p {
                Progress::Moved => continue,
                Progress::Idle => return Flow::Keep,
                Progress::Close => return Flow::Close,
            }
        }
    }

    /// Answers `status` and closes.
    fn fail(&mut self, core: &mut Core, status: u16) -> (State, Progress) {
        fail(&mut self.c, core, status)
    }

    fn step_head(&mut self, core: &mut Core, mut clock: bool) -> (State, Progress) {
        let c = &mut self.c;
        // A previous response still owed to the client goes first (pipelining in order).
        if let Some(p) = c.flush_owed(core) {
            return (State::Head { clock }, p);
        }
        if let Some(cin) = c.cin.as_ref().filter(|b| !b.is_empty()) {
            match http::parse_request_head(cin.data(), &core.limits) {
                Err(e) => {
                    crate::debug!(
                        "request_rejected",
                        "status={} reason={}",
                        e.status(),
                        crate::sys::log::quote(e.message())
                    );
                    return fail(c, core, e.status());
                }
                Ok(Some(req)) => return start_exchange(c, core, req),
                Ok(None) => {}
            }
        }
        if !c.sock.readable {
            // Idle or waiting for more of a head: an empty buffer goes back to the pool.
            core.bufs.put_if_empty(&mut c.cin);
            return (State::Head { clock }, Progress::Idle);
        }
        let cin = c.cin.get_or_insert_with(|| core.bufs.get());
        if cin.room() == 0 {
            // A head larger than one buffer: grow up to the head limit (the parser answers
            // 431 beyond it).
            let cap = core
                .limits
                .max_header_bytes
                .max(core.limits.max_request_line)
                + 1;
            if cin.capacity() >= cap {
                return fail(c, core, 431);
            }
            cin.grow(cap.max(2 * BUF_SIZE));
        }
        match relay::read_into(&mut c.sock, cin) {
            Ok(ReadResult::Data(_)) => {
                if !clock {
                    clock = true;
                    c.set_deadline(core, core.settings.header_timeout_ms);
                }
                (State::Head { clock }, Progress::Moved)
            }
            Ok(ReadResult::Blocked) => {
                core.bufs.put_if_empty(&mut c.cin);
                (State::Head { clock }, Progress::Idle)
            }
            // The client closed between requests, or mid-head: nothing to answer.
            Ok(ReadResult::Eof) | Err(_) => (State::Head { clock }, Progress::Close),
        }
    }

    /// Frees everything the session holds.
    pub fn close(mut self, core: &mut Core) {
        match std::mem::replace(&mut self.state, State::Void) {
            State::Exchange(ex) => {
                let (status, phase) = match ex.x.resp {
                    Resp::Head => (0, Phase::ResponseHead),
                    Resp::Body { .. } => (ex.x.status, Phase::ResponseBody),
                };
                let stop = if core.draining {
                    Termination::ProxyStopping
                } else {
                    Termination::ClientClosed
                };
                let how = self
                    .c
                    .rec()
                    .map_or((stop, phase), |r| r.blamed_or((stop, phase)));
                self.c.end_request(core, status, how);
                ex.release(core, false)
            }
            State::Tunnel(t) => {
                let Tunnel {
                    up,
                    mut c2u,
                    mut u2c,
                } = t;
                core.bufs.put_opt(&mut c2u.buf);
                core.bufs.put_opt(&mut u2c.buf);
                core.close_upstream(up);
            }
            _ => {}
        }
        core.bufs.put_opt(&mut self.c.cin);
        core.bufs.put_opt(&mut self.c.cout);
        core.connections = core.connections.saturating_sub(1);
    }
}

/// Queues a canned `status` response and moves to Closing.
fn fail(c: &mut Client, core: &mut Core, status: u16) -> (State, Progress) {
    if let Some(cin) = c.cin.as_mut() {
        cin.clear();
    }
    match c.rec() {
        Some(r) => {
            let how = r.blamed_or((request_record::termination_of(status), Phase::Connect));
            c.end_request(core, status, how);
        }
        None if core.access_log.is_on() => {
            request_record::write_refused(&mut core.access_log, c.peer, status, core.now)
        }
        None => {}
    }
    let body = format!("{} {}\n", status, http::response::reason(status));
    c.queue(
        core,
        &http::response::simple(status, "text/plain", body.as_bytes(), true),
    );
    c.set_deadline(core, linger::LINGER_MS);
    (State::Closing { shut: false }, Progress::Moved)
}

fn step_closing(c: &mut Client, core: &mut Core, mut shut: bool) -> (State, Progress) {
    if let Some(p) = c.flush_owed(core) {
        return (State::Closing { shut }, p);
    }
    if !shut {
        if c.sock.shutdown_write().is_err() {
            return (State::Closing { shut }, Progress::Close);
        }
        shut = true;
        core.bufs.put_opt(&mut c.cin);
    }
    // Lingering close: discard what the client still sends until it closes or time runs out.
    match linger::discard_input(&mut c.sock) {
        Discard::Closed => (State::Closing { shut }, Progress::Close),
        Discard::Open => (State::Closing { shut }, Progress::Idle),
    }
}

/// Picks a backend not tried yet and connects to it (pooled connection unless `fresh`);
/// backends refusing at once are ejected and the next one tried, within `retries`.
fn connect_any(core: &mut Core, owner: usize, tried: &mut Tried, fresh: bool) -> Option<UpConn> {
    loop {
        if tried.len() > core.settings.retries as usize {
            return None;
        }
        let b = core.backends.pick(core.settings.balance, tried)?;
        tried.push(b);
        match core.upstream(b, owner, fresh) {
            Ok(up) => {
                core.backends.list[b].in_flight += 1;
                return Some(up);
            }
            Err(e) => core.eject(b, &e.to_string()),
        }
    }
}

fn start_exchange(c: &mut Client, core: &mut Core, req: RequestHead) -> (State, Progress) {
    c.served += 1;
    if let Some(cin) = c.cin.as_ref() {
        let keep_line = core.access_log.is_on();
        let rec = core
            .records
            .begin(c.peer, &req, cin.data(), keep_line, core.now);
        if let Some(old) = c.rec.replace(rec) {
            core.records.put(old);
        }
    }
    c.blame(Termination::ClientBadRequest, Phase::RequestHead);
    if let Framing::Length(n) = req.framing
        && core.max_body > 0
        && n > core.max_body
    {
        return fail(c, core, 413);
    }
    let info = ReqInfo {
        minor: req.version,
        is_head: req.is_head(),
        idempotent: req.is_idempotent(),
        framing: req.framing,
        keep_alive: req.keep_alive,
        upgrade: req.upgrade.is_some(),
    };
    let mut tried = Tried::default();
    let Some(up) = connect_any(core, c.slot, &mut tried, false) else {
        let who = if tried.len() == 0 {
            Termination::NoWorker
        } else {
            Termination::WorkerRefused
        };
        c.blame(who, Phase::Connect);
        return fail(c, core, 503);
    };
    if let Some(r) = c.rec.as_deref_mut() {
        r.backend = Some(up.backend);
        if up.connected {
            r.connected(core.now);
        }
        r.blame(Termination::WorkerBroke, Phase::ResponseHead);
    }
    let Some(cin) = c.cin.as_mut() else {
        return fail(c, core, 400);
    };
    core.scratch.clear();
    rewrite::write_upstream_request(
        &mut core.scratch,
        &req,
        cin.data(),
        &UpstreamRequest {
            client_ip: c.peer.ip(),
            proto: "http",
            framing: req.framing,
            connection: if info.upgrade {
                ConnectionOut::Upgrade
            } else {
                ConnectionOut::Omit
            },
            default_host: None,
            via: None,
            request_id: c.rec.as_deref().map(|r| r.id.as_bytes()),
        },
    );
    cin.consume(req.head_len);
    let mut head = core.bufs.get();
    head.push_all(&core.scratch);
    let connected = up.connected;
    let ex = Exchange {
        up,
        x: Ex {
            body: BodyLeft::from_framing(req.framing, core.max_body),
            req: info,
            head: Some(head),
            head_sent: 0,
            body_ready: 0,
            body_seen: 0,
            body_started: false,
            tried,
            uin: None,
            resp_ready: 0,
            resp: Resp::Head,
            status: 0,
            resp_keep_alive: false,
            interim_sent: false,
            close_client: false,
            up_eof: false,
            up_write_failed: false,
            started: core.now,
        },
    };
    let ms = if connected {
        core.settings.response_timeout_ms
    } else {
        core.settings.connect_timeout_ms
    };
    c.set_deadline(core, ms);
    (State::Exchange(ex), Progress::Moved)
}

impl Exchange {
    /// Returns the upstream connection (pooled if `reusable`) and the buffers.
    fn release(self, core: &mut Core, reusable: bool) {
        let Exchange { up, mut x } = self;
        let b = &mut core.backends.list[up.backend];
        b.in_flight = b.in_flight.saturating_sub(1);
        core.bufs.put_opt(&mut x.head);
        core.bufs.put_opt(&mut x.uin);
        core.release_upstream(up, reusable);
    }

    /// Gives up on this exchange: answers `status` (if no response started) and closes.
    fn abort(self, c: &mut Client, core: &mut Core, status: u16) -> (State, Progress) {
        let started = !matches!(self.x.resp, Resp::Head);
        self.release(core, false);
        if started {
            return (State::Closing { shut: false }, Progress::Close);
        }
        fail(c, core, status)
    }

    /// The upstream failed before answering: try another connection if the request may be
    /// sent again, else answer 503 (connect failures) or 502.
    fn retry(self, c: &mut Client, core: &mut Core, connect_failed: bool) -> (State, Progress) {
        let replayable = !self.x.body_started
            && !self.x.interim_sent
            && (self.x.head_sent == 0
                || self.x.req.idempotent && self.x.req.framing == Framing::None);
        let reused = self.up.reused;
        let Exchange { up, mut x } = self;
        let backend = up.backend;
        {
            let b = &mut core.backends.list[backend];
            b.in_flight = b.in_flight.saturating_sub(1);
        }
        core.close_upstream(up);
        if !replayable {
            core.bufs.put_opt(&mut x.head);
            core.bufs.put_opt(&mut x.uin);
            if !connect_failed {
                c.blame(Termination::WorkerBroke, Phase::ResponseHead);
            }
            return fail(c, core, 502);
        }
        if reused && !connect_failed {
            // A pooled connection the backend had closed: not the backend's fault; the same
            // backend may be tried again on a fresh connection.
            x.tried.remove(backend);
        }
        let Some(up) = connect_any(core, c.slot, &mut x.tried, true) else {
            core.bufs.put_opt(&mut x.head);
            core.bufs.put_opt(&mut x.uin);
            if connect_failed {
                c.blame(Termination::WorkerRefused, Phase::Connect);
            } else {
                c.blame(Termination::WorkerBroke, Phase::ResponseHead);
            }
            return fail(c, core, if connect_failed { 503 } else { 502 });
        };
        if let Some(r) = c.rec() {
            r.retries += 1;
            r.backend = Some(up.backend);
        }
        x.head_sent = 0;
        x.up_eof = false;
        x.up_write_failed = false;
        if let Some(u) = x.uin.as_mut() {
            u.clear();
        }
        c.set_deadline(core, core.settings.connect_timeout_ms);
        (State::Exchange(Exchange { up, x }), Progress::Moved)
    }

    fn step(mut self, c: &mut Client, core: &mut Core) -> (State, Progress) {
        let mut moved = false;
        if !self.up.connected {
            match self.up.sock.poll_connect() {
                Ok(true) => {
                    self.up.connected = true;
                    moved = true;
                    if let Some(r) = c.rec() {
                        r.connected(core.now);
                    }
                    c.set_deadline(core, core.settings.response_timeout_ms);
                }
                Ok(false) => return (State::Exchange(self), Progress::Idle),
                Err(e) => {
                    c.blame(Termination::WorkerRefused, Phase::Connect);
                    core.eject(self.up.backend, &e.to_string());
                    return self.retry(c, core, true);
                }
            }
        }
        match self.send_request(c, core) {
            Ok(m) => moved |= m,
            Err(0) => {
                // The client vanished mid-request: nothing to answer, free everything.
                c.end_request(core, 0, (Termination::ClientClosed, Phase::RequestBody));
                self.release(core, false);
                return (State::Closing { shut: true }, Progress::Close);
            }
            Err(status) => {
                c.blame(Termination::ClientBadRequest, Phase::RequestBody);
                return self.abort(c, core, status);
            }
        }
        match self.read_response(core) {
            Ok(m) => moved |= m,
            Err(()) => self.x.up_eof = true,
        }
        if matches!(self.x.resp, Resp::Head) {
            match self.parse_heads(c, core) {
                Ok(HeadOutcome::Upgrade) => {
                    let t = self.into_tunnel(c, core);
                    return (State::Tunnel(t), Progress::Moved);
                }
                Ok(_) => {}
                Err(()) => {
                    core.backends.list[self.up.backend].failures += 1;
                    return self.abort(c, core, 502);
                }
            }
        }
        if let Resp::Body { .. } = self.x.resp {
            // The head queued in `cout` goes out with the first body bytes (relay_body).
            match self.relay_body(c, core) {
                Ok(m) => moved |= m,
                Err(who) => {
                    c.blame(who, Phase::ResponseBody);
                    return (State::Exchange(self), Progress::Close);
                }
            }
            if matches!(&self.x.resp, Resp::Body { left, .. } if left.done()) && c.out_empty() {
                return self.finish(c, core);
            }
        } else {
            // Interim (1xx) heads.
            match c.flush_out(core) {
                Ok(m) => moved |= m,
                Err(()) => {
                    c.blame(Termination::ClientClosed, Phase::ResponseHead);
                    return (State::Exchange(self), Progress::Close);
                }
            }
        }
        if self.x.up_eof {
            match &self.x.resp {
                Resp::Head => {
                    if self.x.uin.as_ref().is_some_and(|u| !u.is_empty()) {
                        // Closed in the middle of a head.
                        core.backends.list[self.up.backend].failures += 1;
                        return self.abort(c, core, 502);
                    }
                    return self.retry(c, core, false);
                }
                Resp::Body {
                    left: BodyLeft::Close,
                    ..
                } => {
                    if self.x.uin.as_ref().is_none_or(Buf::is_empty) {
                        self.x.resp = Resp::Body {
                            left: BodyLeft::Done,
                            dechunk: false,
                        };
                        return (State::Exchange(self), Progress::Moved);
                    }
                }
                Resp::Body {
                    left: BodyLeft::Done,
                    ..
                } => {
                    // Complete; what is still queued for the client is flushed first.
                }
                Resp::Body { .. } => {
                    // Died mid-body: the client must see a truncated message, never a clean end.
                    if self.x.uin.as_ref().is_none_or(Buf::is_empty) {
                        core.backends.list[self.up.backend].failures += 1;
                        c.blame(Termination::WorkerBroke, Phase::ResponseBody);
                        return (State::Exchange(self), Progress::Close);
                    }
                }
            }
        }
        if moved {
            c.set_deadline(core, core.settings.response_timeout_ms);
            (State::Exchange(self), Progress::Moved)
        } else {
            (State::Exchange(self), Progress::Idle)
        }
    }

    /// Head then body, client -> upstream. Err(status) for a request body the proxy refuses.
    fn send_request(&mut self, c: &mut Client, core: &mut Core) -> Result<bool, u16> {
        let x = &mut self.x;
        let up = &mut self.up.sock;
        if x.up_write_failed {
            return Ok(false);
        }
        let mut moved = false;
        // Head and the first body bytes already read (Content-Length bodies) in one write.
        if let (Some(head), BodyLeft::Length(rem), Some(cin)) =
            (x.head.as_ref(), &mut x.body, c.cin.as_mut())
            && x.head_sent < head.len()
            && up.writable
            && !cin.is_empty()
        {
            let head_rem = &head.data()[x.head_sent..];
            let head_len = head_rem.len();
            let body_n = (*rem).min(cin.len() as u64) as usize;
            match up.write2(head_rem, &cin.data()[..body_n]) {
                Ok(n) => {
                    let h = n.min(head_len);
                    x.head_sent += h;
                    let b = n - h;
                    if b > 0 {
                        if let Some(r) = c.rec.as_deref_mut() {
                            r.bytes_in += b as u64;
                        }
                        cin.consume(b);
                        *rem -= b as u64;
                        x.body_started = true;
                    }
                    moved |= n > 0;
                }
                Err(_) => {
                    x.up_write_failed = true;
                    return Ok(moved);
                }
            }
        }
        if let Some(head) = x.head.as_ref() {
            while x.head_sent < head.len() && up.writable {
                match up.write(&head.data()[x.head_sent..]) {
                    Ok(n) => {
                        x.head_sent += n;
                        moved |= n > 0;
                    }
                    Err(_) => {
                        x.up_write_failed = true;
                        return Ok(moved);
                    }
                }
            }
            if x.head_sent < head.len() {
                return Ok(moved);
            }
        }
        loop {
            if x.body.done() {
                return Ok(moved);
            }
            let mut step = false;
            let cin = c.cin.get_or_insert_with(|| core.bufs.get());
            match &mut x.body {
                BodyLeft::Length(rem) => {
                    x.body_ready = (*rem).min(cin.len() as u64) as usize;
                }
                BodyLeft::Chunked(ch) => {
                    if cin.len() > x.body_ready {
                        let p = ch
                            .feed(&cin.data()[x.body_ready..], &mut |_| {})
                            .map_err(|e| e.status())?;
                        x.body_ready += p.consumed;
                        x.body_seen += p.consumed as u64;
                    }
                }
                BodyLeft::Done | BodyLeft::Close => {}
            }
            if x.body_ready > 0 && up.writable {
                match up.write(&cin.data()[..x.body_ready]) {
                    Ok(n) if n > 0 => {
                        if let Some(r) = c.rec.as_deref_mut() {
                            r.bytes_in += n as u64;
                        }
                        cin.consume(n);
                        x.body_ready -= n;
                        x.body_started = true;
                        if let BodyLeft::Length(rem) = &mut x.body {
                            *rem -= n as u64;
                        }
                        step = true;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        x.up_write_failed = true;
                        return Ok(moved);
                    }
                }
            }
            let finished = match &x.body {
                BodyLeft::Length(0) => true,
                BodyLeft::Chunked(ch) => ch.is_done() && x.body_ready == 0,
                _ => false,
            };
            if finished {
                x.body = BodyLeft::Done;
                core.bufs.put_if_empty(&mut c.cin);
                return Ok(true);
            }
            // More body to read from the client, if there is room (else backpressure).
            let cin = c.cin.get_or_insert_with(|| core.bufs.get());
            if c.sock.readable && cin.len() == x.body_ready && cin.room() > 0 {
                match relay::read_into(&mut c.sock, cin) {
                    Ok(ReadResult::Data(_)) => step = true,
                    Ok(ReadResult::Blocked) => {}
                    // The client vanished mid-request: nothing can be answered.
                    Ok(ReadResult::Eof) | Err(_) => return Err(0),
                }
            }
            if !step {
                core.bufs.put_if_empty(&mut c.cin);
                return Ok(moved);
            }
            moved = true;
        }
    }

    /// Upstream -> `uin`, while there is room. Err on a read error (treated as EOF).
    fn read_response(&mut self, core: &mut Core) -> Result<bool, ()> {
        let mut moved = false;
        while self.up.sock.readable && !self.x.up_eof {
            let uin = self.x.uin.get_or_insert_with(|| core.bufs.get());
            if uin.room() == 0 {
                break;
            }
            match relay::read_into(&mut self.up.sock, uin) {
                Ok(ReadResult::Data(_)) => moved = true,
                Ok(ReadResult::Eof) => {
                    self.x.up_eof = true;
                    moved = true;
                }
                Ok(ReadResult::Blocked) => break,
                Err(_) => return Err(()),
            }
        }
        core.bufs.put_if_empty(&mut self.x.uin);
        Ok(moved)
    }

    /// Parses response heads in `uin`: relays 1xx, switches to a tunnel on 101, prepares the
    /// final head for the client. Err = broken response (502).
    fn parse_heads(&mut self, c: &mut Client, core: &mut Core) -> Result<HeadOutcome, ()> {
        let x = &mut self.x;
        loop {
            let Some(uin) = x.uin.as_mut().filter(|u| !u.is_empty()) else {
                return Ok(HeadOutcome::Pending);
            };
            let resp = match http::parse_response_head(uin.data(), x.req.is_head, &core.limits) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(HeadOutcome::Pending),
                Err(e) => {
                    crate::warn!(
                        "upstream_bad_response",
                        "backend={} reason={}",
                        crate::sys::log::quote(&core.backends.list[self.up.backend].id),
                        crate::sys::log::quote(e.message())
                    );
                    return Err(());
                }
            };
            core.scratch.clear();
            if resp.is_switching_protocols() {
                if !x.req.upgrade {
                    return Err(());
                }
                rewrite::write_client_response(
                    &mut core.scratch,
                    &resp,
                    uin.data(),
                    &ClientResponse {
                        framing: Framing::None,
                        connection: ConnectionOut::Upgrade,
                        request_id: c.rec.as_deref().map(|r| r.id.as_bytes()),
                    },
                );
                if let Some(r) = c.rec.as_deref_mut() {
                    r.response_head(101, core.now);
                    r.bytes_out += core.scratch.len() as u64;
                }
                uin.consume(resp.head_len);
                let out = c.cout.get_or_insert_with(|| core.bufs.get());
                out.push_all(&core.scratch);
                out.push_all(uin.data());
                uin.clear();
                core.bufs.put_opt(&mut x.uin);
                core.bufs.put_opt(&mut x.head);
                x.status = 101;
                return Ok(HeadOutcome::Upgrade);
            }
            if resp.is_interim() {
                // Relayed to HTTP/1.1 clients only (RFC 9110 15.2).
                if x.req.minor == 1 {
                    rewrite::write_client_response(
                        &mut core.scratch,
                        &resp,
                        uin.data(),
                        &ClientResponse {
                            framing: Framing::None,
                            connection: ConnectionOut::Omit,
                            request_id: None,
                        },
                    );
                    if let Some(r) = c.rec.as_deref_mut() {
                        r.bytes_out += core.scratch.len() as u64;
                    }
                    c.cout
                        .get_or_insert_with(|| core.bufs.get())
                        .push_all(&core.scratch);
                    x.interim_sent = true;
                }
                uin.consume(resp.head_len);
                continue;
            }
            let client_framing = rewrite::client_framing(&resp, x.req.minor);
            let dechunk = resp.framing == Framing::Chunked && client_framing != Framing::Chunked;
            x.close_client = !x.req.keep_alive
                || core.draining
                || client_framing == Framing::Close
                || !x.body.done();
            let connection = if x.close_client {
                ConnectionOut::Close
            } else if x.req.minor == 0 {
                ConnectionOut::KeepAlive
            } else {
                ConnectionOut::Omit
            };
            rewrite::write_client_response(
                &mut core.scratch,
                &resp,
                uin.data(),
                &ClientResponse {
                    framing: client_framing,
                    connection,
                    request_id: c.rec.as_deref().map(|r| r.id.as_bytes()),
                },
            );
            if let Some(r) = c.rec.as_deref_mut() {
                r.response_head(resp.status, core.now);
                r.bytes_out += core.scratch.len() as u64;
                r.blame(Termination::WorkerBroke, Phase::ResponseBody);
            }
            c.cout
                .get_or_insert_with(|| core.bufs.get())
                .push_all(&core.scratch);
            uin.consume(resp.head_len);
            x.status = resp.status;
            x.resp_keep_alive = resp.keep_alive;
            x.resp_ready = 0;
            x.resp = Resp::Body {
                left: BodyLeft::from_framing(resp.framing, 0),
                dechunk,
            };
            core.bufs.put_opt(&mut x.head);
            return Ok(HeadOutcome::Final);
        }
    }

    fn into_tunnel(self, c: &mut Client, core: &mut Core) -> Tunnel {
        let up = self.up;
        let b = &mut core.backends.list[up.backend];
        b.in_flight = b.in_flight.saturating_sub(1);
        b.record(101, self.x.started, core.now);
        c.end_request(core, 101, (Termination::Done, Phase::Complete));
        c.set_deadline(core, core.settings.tunnel_timeout_ms);
        Tunnel {
            up,
            c2u: Half::new(c.cin.take()),
            u2c: Half::new(c.cout.take()),
        }
    }

    /// Response body, `uin` -> client. Err(who ended it): the client is gone, or the
    /// upstream's framing is broken.
    fn relay_body(&mut self, c: &mut Client, core: &mut Core) -> Result<bool, Termination> {
        const GONE: Termination = Termination::ClientClosed;
        const BROKE: Termination = Termination::WorkerBroke;
        let x = &mut self.x;
        let Resp::Body { left, dechunk } = &mut x.resp else {
            return Ok(false);
        };
        let mut moved = false;
        while let Some(uin) = x.uin.as_mut().filter(|u| !u.is_empty()) {
            if *dechunk && !c.out_empty() {
                // De-chunked data wait in `cout`: flush it before decoding more.
                moved |= c.flush_out(core).map_err(|()| GONE)?;
                if !c.out_empty() {
                    break;
                }
            }
            match left {
                BodyLeft::Done => {
                    // Bytes after the end of the response: the connection is not reusable.
                    x.resp_keep_alive = false;
                    uin.clear();
                    break;
                }
                BodyLeft::Chunked(ch) if *dechunk => {
                    // HTTP/1.0 client: chunk data only, into cout (bounded by its room).
                    let out = c.cout.get_or_insert_with(|| core.bufs.get());
                    let take = out.room().min(uin.len());
                    let mut given = 0;
                    let p = ch
                        .feed(&uin.data()[..take], &mut |d| {
                            given += d.len();
                            out.push(d);
                        })
                        .map_err(|_| BROKE)?;
                    if let Some(r) = c.rec.as_deref_mut() {
                        r.bytes_out += given as u64;
                    }
                    uin.consume(p.consumed);
                    if p.done {
                        *left = BodyLeft::Done;
                    }
                    moved |= p.consumed > 0;
                    if p.consumed == 0 && !p.done {
                        break;
                    }
                    continue;
                }
                BodyLeft::Length(rem) => x.resp_ready = (*rem).min(uin.len() as u64) as usize,
                BodyLeft::Close => x.resp_ready = uin.len(),
                BodyLeft::Chunked(ch) => {
                    if uin.len() > x.resp_ready && !ch.is_done() {
                        let p = ch
                            .feed(&uin.data()[x.resp_ready..], &mut |_| {})
                            .map_err(|_| BROKE)?;
                        x.resp_ready += p.consumed;
                    }
                }
            }
            if x.resp_ready == 0 || !c.sock.writable {
                break;
            }
            // Whatever is queued (the response head) and the body bytes in one write.
            let head = c.cout.as_ref().map_or(&[][..], |o| o.data());
            let queued = head.len();
            let n = c
                .sock
                .write2(head, &uin.data()[..x.resp_ready])
                .map_err(|_| GONE)?;
            if let Some(o) = c.cout.as_mut() {
                o.consume(n.min(queued));
            }
            let w = n.saturating_sub(queued);
            if let Some(r) = c.rec.as_deref_mut() {
                r.bytes_out += w as u64;
            }
            uin.consume(w);
            x.resp_ready -= w;
            match left {
                BodyLeft::Length(rem) => {
                    *rem -= w as u64;
                    if *rem == 0 {
                        *left = BodyLeft::Done;
                    }
                }
                BodyLeft::Chunked(ch) if ch.is_done() && x.resp_ready == 0 => {
                    *left = BodyLeft::Done
                }
                _ => {}
            }
            moved |= n > 0;
            if n == 0 {
                break;
            }
        }
        if let BodyLeft::Chunked(ch) = left
            && !*dechunk
            && ch.is_done()
            && x.resp_ready == 0
        {
            *left = BodyLeft::Done;
        }
        moved |= c.flush_out(core).map_err(|()| GONE)?;
        core.bufs.put_if_empty(&mut x.uin);
        Ok(moved)
    }

    /// The response is complete: pool or close the upstream, then next request or close.
    fn finish(self, c: &mut Client, core: &mut Core) -> (State, Progress) {
        let x = &self.x;
        let req_done = x.body.done();
        let reusable = x.resp_keep_alive
            && req_done
            && !x.up_eof
            && !x.up_write_failed
            && x.uin.as_ref().is_none_or(Buf::is_empty);
        let close_client = x.close_client || !req_done || core.draining;
        core.backends.list[self.up.backend].record(x.status, x.started, core.now);
        c.end_request(core, x.status, (Termination::Done, Phase::Complete));
        self.release(core, reusable);
        if close_client {
            c.set_deadline(core, linger::LINGER_MS);
            return (State::Closing { shut: false }, Progress::Moved);
        }
        let pipelined = c.cin.as_ref().is_some_and(|b| !b.is_empty());
        let ms = if pipelined {
            core.settings.header_timeout_ms
        } else {
            core.settings.idle_timeout_ms
        };
        c.set_deadline(core, ms);
        (State::Head { clock: pipelined }, Progress::Moved)
    }
}

impl Tunnel {
    fn step(mut self, c: &mut Client, core: &mut Core) -> (State, Progress) {
        let a = self
            .c2u
            .relay(&mut c.sock, &mut self.up.sock, &mut core.bufs);
        let b = self
            .u2c
            .relay(&mut self.up.sock, &mut c.sock, &mut core.bufs);
        let moved = match (a, b) {
            (Ok(a), Ok(b)) => a || b,
            _ => return (State::Tunnel(self), Progress::Close),
        };
        if self.c2u.finished() && self.u2c.finished() {
            return (State::Tunnel(self), Progress::Close);
        }
        if moved {
            c.set_deadline(core, core.settings.tunnel_timeout_ms);
            (State::Tunnel(self), Progress::Moved)
        } else {
            (State::Tunnel(self), Progress::Idle)
        }
    }
}
