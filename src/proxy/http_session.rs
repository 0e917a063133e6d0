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
use super::context::{LoopContext, TimerKey};
use super::lease::{Outcome, UpstreamLease};
use super::relay::{self, Half, TcpSock};
use super::request_record::{self, RequestRecord};
use super::upstream::UpConn;
use crate::evloop::linger::{self, Discard};
use crate::evloop::{Deadline, Key, ReadResult};
use crate::http::rewrite::{self, ClientResponse, ConnectionOut, UpstreamRequest};
use crate::http::{self, ChunkLimits, ChunkedDecoder, ChunkedReframer, Framing, RequestHead};

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
    /// The session's entry in the loop slab (its token, timer and upstream owner key).
    key: Key,
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
    /// `Expect: 100-continue`: the client may wait for a 100 before sending its body.
    expect_continue: bool,
}

/// What is left of a message body.
enum BodyLeft {
    Done,
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    /// A chunked request body, re-framed on its way up (canonical sizes, no extensions,
    /// forbidden trailers dropped).
    Reframe(Box<ChunkedReframer>),
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

    /// A request body: chunked ones are re-framed, never forwarded as sent.
    fn request(f: Framing, max_body: u64) -> BodyLeft {
        match f {
            Framing::Chunked => BodyLeft::Reframe(Box::new(ChunkedReframer::new(ChunkLimits {
                max_body,
                ..ChunkLimits::default()
            }))),
            f => BodyLeft::from_framing(f, max_body),
        }
    }

    fn done(&self) -> bool {
        matches!(self, BodyLeft::Done)
    }

    /// Request body bytes read from the client and waiting for the upstream, outside `cin`.
    fn has_pending(&self) -> bool {
        matches!(self, BodyLeft::Reframe(rf) if !rf.pending().is_empty())
    }
}

/// What one step of a re-framed request body did.
#[derive(Default)]
struct Reframed {
    /// Client bytes taken (the body as sent).
    taken: usize,
    /// Re-framed bytes written upstream.
    written: usize,
}

/// Re-framed request body: feeds what the client sent once the previous output is written,
/// then writes the output. Err(Some(status)) for a body we refuse, Err(None) when writing to
/// the upstream failed.
fn send_reframed(
    rf: &mut ChunkedReframer,
    cin: &mut Buf,
    up: &mut TcpSock,
) -> Result<Reframed, Option<u16>> {
    let mut r = Reframed::default();
    if rf.pending().is_empty() && !cin.is_empty() && !rf.is_done() {
        let p = rf.feed(cin.data()).map_err(|e| Some(e.status()))?;
        cin.consume(p.consumed);
        r.taken = p.consumed;
    }
    if !rf.pending().is_empty() && up.writable {
        r.written = up.write(rf.pending()).map_err(|_| None)?;
        rf.advance(r.written);
    }
    Ok(r)
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
    lease: UpstreamLease,
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
    /// Interim responses received so far (capped by `max-interim-responses`).
    interims: u32,
    close_client: bool,
    up_eof: bool,
    /// Writing to the upstream failed; a response may still be readable.
    up_write_failed: bool,
    started: Instant,
    /// The whole request body must have arrived by then (`body-timeout-ms`, from the end of
    /// the head): a client trickling a byte at a time cannot hold a slot forever.
    body_deadline: Instant,
}

/// What parsing response heads led to.
enum HeadOutcome {
    /// No complete final head yet.
    Pending,
    /// The final head is queued for the client; the body follows.
    Final,
    /// A 101 to an upgrade request: the exchange becomes a tunnel.
    Upgrade,
    /// No complete head in a full buffer: it grew (up to `max-header-bytes`), read again.
    Grew,
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
    TimerKey::Entry(c.key)
}

impl Client {
    fn set_deadline(&mut self, ctx: &mut LoopContext, ms: u64) {
        let at = ctx.after_ms(ms);
        let k = key(self);
        self.deadline.set(&mut ctx.timers, at, k);
    }

    /// Flushes the output still owed to the client (it goes before anything else, so
    /// pipelined answers stay in order): None once all is written, else the progress the
    /// caller returns with.
    fn flush_owed(&mut self, ctx: &mut LoopContext) -> Option<Progress> {
        match self.flush_out(ctx) {
            Err(()) => Some(Progress::Close),
            Ok(_) if self.out_empty() => None,
            Ok(true) => Some(Progress::Moved),
            Ok(false) => Some(Progress::Idle),
        }
    }

    /// Writes pending `cout`; Err when the client is gone.
    fn flush_out(&mut self, ctx: &mut LoopContext) -> Result<bool, ()> {
        let Some(out) = self.cout.as_mut() else {
            return Ok(false);
        };
        let moved = relay::flush(&mut self.sock, out).map_err(|_| ())?;
        ctx.bufs.put_if_empty(&mut self.cout);
        Ok(moved)
    }

    fn out_empty(&self) -> bool {
        self.cout.as_ref().is_none_or(Buf::is_empty)
    }

    fn queue(&mut self, ctx: &mut LoopContext, bytes: &[u8]) {
        let out = self.cout.get_or_insert_with(|| ctx.bufs.get());
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
    fn end_request(&mut self, ctx: &mut LoopContext, status: u16, how: (Termination, Phase)) {
        let Some(rec) = self.rec.take() else {
            return;
        };
        if ctx.access_log.is_on() {
            let worker = rec
                .backend
                .and_then(|b| ctx.backends.get(b))
                .map_or("-", |b| b.id());
            rec.write(&mut ctx.access_log, worker, status, how, ctx.now);
        }
        ctx.records.put(rec);
    }
}

impl HttpSession {
    /// A session for an accepted client socket, the loop slab entry `key`.
    pub fn new(ctx: &mut LoopContext, key: Key, sock: TcpSock, peer: SocketAddr) -> Self {
        let mut c = Client {
            key,
            sock,
            peer,
            rec: None,
            cin: None,
            cout: None,
            served: 0,
            deadline: Deadline::none(),
        };
        c.set_deadline(ctx, ctx.settings.header_timeout_ms);
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
    pub fn client_event(&mut self, ctx: &mut LoopContext, ev: &Event) -> Flow {
        self.c.sock.note(ev);
        self.run(ctx)
    }

    /// Readiness on this session's upstream socket.
    pub fn upstream_event(&mut self, ctx: &mut LoopContext, ev: &Event) -> Flow {
        match &mut self.state {
            State::Exchange(e) => e.lease.sock().note(ev),
            State::Tunnel(t) => t.up.sock.note(ev),
            _ => {}
        }
        self.run(ctx)
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
    pub fn drain_idle(&mut self, ctx: &mut LoopContext, grace_ms: u64) {
        self.c.set_deadline(ctx, grace_ms);
    }

    /// A timer armed by this session fired.
    pub fn timer(&mut self, ctx: &mut LoopContext, fired_at: Instant) -> Flow {
        let k = key(&self.c);
        if !self.c.deadline.fire(&mut ctx.timers, fired_at, ctx.now, k) {
            return Flow::Keep;
        }
        let state = std::mem::replace(&mut self.state, State::Void);
        let (next, p) = match state {
            // Nothing of a request received: a silent close between keep-alive requests or
            // during a drain; else 408 (a head started, or a new connection that never sent).
            State::Head { clock } if !clock || ctx.draining && self.is_idle_input() => {
                (State::Head { clock }, Progress::Close)
            }
            State::Head { .. } => self.fail(ctx, 408),
            State::Exchange(ex) => {
                if !ex.lease.conn().connected() {
                    self.c.blame(Termination::WorkerTimeout, Phase::Connect);
                    ex.retry(&mut self.c, ctx, Some("connect timeout"))
                } else if matches!(ex.x.resp, Resp::Head) && ex.x.waits_on_client(&self.c) {
                    // The client stopped in the middle of its body (or ran out of
                    // body-timeout-ms): its fault, not the backend's.
                    crate::debug!(
                        "client_body_timeout",
                        "backend={}",
                        crate::sys::log::quote(
                            ctx.backends.get(ex.lease.backend()).map_or("-", |b| b.id())
                        )
                    );
                    self.c.blame(Termination::ClientTimeout, Phase::RequestBody);
                    ex.abort(&mut self.c, ctx, Outcome::Dropped, 408)
                } else if matches!(ex.x.resp, Resp::Head) {
                    crate::warn!(
                        "upstream_timeout",
                        "backend={} timeout_ms={}",
                        crate::sys::log::quote(ctx.backends[ex.lease.backend()].id()),
                        ctx.settings.response_timeout_ms
                    );
                    self.c
                        .blame(Termination::WorkerTimeout, Phase::ResponseHead);
                    ex.abort(&mut self.c, ctx, Outcome::Broken, 504)
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
        self.run(ctx)
    }

    /// Runs the state machine until nothing can move.
    fn run(&mut self, ctx: &mut LoopContext) -> Flow {
        loop {
            let state = std::mem::replace(&mut self.state, State::Void);
            let (next, p) = match state {
                State::Head { clock } => self.step_head(ctx, clock),
                State::Exchange(ex) => ex.step(&mut self.c, ctx),
                State::Tunnel(t) => t.step(&mut self.c, ctx),
                State::Closing { shut } => step_closing(&mut self.c, ctx, shut),
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
    fn fail(&mut self, ctx: &mut LoopContext, status: u16) -> (State, Progress) {
        fail(&mut self.c, ctx, status)
    }

    fn step_head(&mut self, ctx: &mut LoopContext, mut clock: bool) -> (State, Progress) {
        let c = &mut self.c;
        // A previous response still owed to the client goes first (pipelining in order).
        if let Some(p) = c.flush_owed(ctx) {
            return (State::Head { clock }, p);
        }
        if let Some(cin) = c.cin.as_ref().filter(|b| !b.is_empty()) {
            match http::parse_request_head(cin.data(), &ctx.limits) {
                Err(e) => {
                    crate::debug!(
                        "request_rejected",
                        "status={} reason={}",
                        e.status(),
                        crate::sys::log::quote(e.message())
                    );
                    return fail(c, ctx, e.status());
                }
                Ok(Some(req)) => return start_exchange(c, ctx, req),
                Ok(None) => {}
            }
        }
        if !c.sock.readable {
            // Idle or waiting for more of a head: an empty buffer goes back to the pool.
            ctx.bufs.put_if_empty(&mut c.cin);
            return (State::Head { clock }, Progress::Idle);
        }
        let cin = c.cin.get_or_insert_with(|| ctx.bufs.get());
        if cin.room() == 0 {
            // A head larger than one buffer: grow up to the head limit (the parser answers
            // 431 beyond it).
            let cap = ctx.limits.max_header_bytes.max(ctx.limits.max_request_line) + 1;
            if cin.capacity() >= cap {
                return fail(c, ctx, 431);
            }
            cin.grow(cap.max(2 * BUF_SIZE));
        }
        match relay::read_into(&mut c.sock, cin) {
            Ok(ReadResult::Data(_)) => {
                if !clock {
                    clock = true;
                    c.set_deadline(ctx, ctx.settings.header_timeout_ms);
                }
                (State::Head { clock }, Progress::Moved)
            }
            Ok(ReadResult::Blocked) => {
                ctx.bufs.put_if_empty(&mut c.cin);
                (State::Head { clock }, Progress::Idle)
            }
            // The client closed between requests, or mid-head: nothing to answer.
            Ok(ReadResult::Eof) | Err(_) => (State::Head { clock }, Progress::Close),
        }
    }

    /// Frees everything the session holds (the loop counts the connection closed).
    pub fn close(mut self, ctx: &mut LoopContext) {
        match std::mem::replace(&mut self.state, State::Void) {
            State::Exchange(ex) => {
                let (status, phase) = match ex.x.resp {
                    Resp::Head => (0, Phase::ResponseHead),
                    Resp::Body { .. } => (ex.x.status, Phase::ResponseBody),
                };
                let stop = if ctx.draining {
                    Termination::ProxyStopping
                } else {
                    Termination::ClientClosed
                };
                let how = self
                    .c
                    .rec()
                    .map_or((stop, phase), |r| r.blamed_or((stop, phase)));
                self.c.end_request(ctx, status, how);
                ex.end(ctx, Outcome::Dropped)
            }
            State::Tunnel(t) => {
                let Tunnel {
                    up,
                    mut c2u,
                    mut u2c,
                } = t;
                ctx.bufs.put_opt(&mut c2u.buf);
                ctx.bufs.put_opt(&mut u2c.buf);
                ctx.upstreams.close(up);
            }
            _ => {}
        }
        ctx.bufs.put_opt(&mut self.c.cin);
        ctx.bufs.put_opt(&mut self.c.cout);
    }
}

/// Queues a canned `status` response and moves to Closing.
fn fail(c: &mut Client, ctx: &mut LoopContext, status: u16) -> (State, Progress) {
    if let Some(cin) = c.cin.as_mut() {
        cin.clear();
    }
    match c.rec() {
        Some(r) => {
            let how = r.blamed_or((request_record::termination_of(status), Phase::Connect));
            c.end_request(ctx, status, how);
        }
        None if ctx.access_log.is_on() => {
            request_record::write_refused(&mut ctx.access_log, c.peer, status, ctx.now)
        }
        None => {}
    }
    let body = format!("{} {}\n", status, http::response::reason(status));
    c.queue(
        ctx,
        &http::response::simple(status, "text/plain", body.as_bytes(), true),
    );
    c.set_deadline(ctx, linger::LINGER_MS);
    (State::Closing { shut: false }, Progress::Moved)
}

fn step_closing(c: &mut Client, ctx: &mut LoopContext, mut shut: bool) -> (State, Progress) {
    if let Some(p) = c.flush_owed(ctx) {
        return (State::Closing { shut }, p);
    }
    if !shut {
        if c.sock.shutdown_write().is_err() {
            return (State::Closing { shut }, Progress::Close);
        }
        shut = true;
        ctx.bufs.put_opt(&mut c.cin);
    }
    // Lingering close: discard what the client still sends until it closes or time runs out.
    match linger::discard_input(&mut c.sock) {
        Discard::Closed => (State::Closing { shut }, Progress::Close),
        Discard::Open => (State::Closing { shut }, Progress::Idle),
    }
}

/// Whether the request's upgrade may become a tunnel: every protocol it offers is in
/// `allowed-upgrades` (so whatever the backend picks is allowed). Any other upgrade request is
/// forwarded as a plain request (Upgrade and `Connection: upgrade` stripped), as a server
/// ignoring the field would answer it (RFC 9110 7.8): h2c clients fall back to HTTP/1.1.
fn upgrade_allowed(ctx: &LoopContext, req: &RequestHead, cin: Option<&Buf>) -> bool {
    let (Some(offer), Some(cin)) = (req.upgrade, cin) else {
        return false;
    };
    let offer = offer.get(cin.data());
    let mut items = http::fields::list_items(offer).peekable();
    let allowed = items.peek().is_some() && items.all(|p| ctx.settings.allows_upgrade(p));
    if !allowed {
        crate::debug!(
            "upgrade_stripped",
            "upgrade={}",
            crate::sys::log::quote(&String::from_utf8_lossy(offer))
        );
    }
    allowed
}

fn start_exchange(c: &mut Client, ctx: &mut LoopContext, req: RequestHead) -> (State, Progress) {
    c.served += 1;
    if let Some(cin) = c.cin.as_ref() {
        let keep_line = ctx.access_log.is_on();
        let rec = ctx
            .records
            .begin(c.peer, &req, cin.data(), keep_line, ctx.now);
        if let Some(old) = c.rec.replace(rec) {
            ctx.records.put(old);
        }
    }
    c.blame(Termination::ClientBadRequest, Phase::RequestHead);
    if let Framing::Length(n) = req.framing
        && ctx.max_body > 0
        && n > ctx.max_body
    {
        return fail(c, ctx, 413);
    }
    let info = ReqInfo {
        minor: req.version,
        is_head: req.is_head(),
        idempotent: req.is_idempotent(),
        framing: req.framing,
        keep_alive: req.keep_alive,
        upgrade: upgrade_allowed(ctx, &req, c.cin.as_ref()),
        expect_continue: req.expect_continue,
    };
    let mut tried = Tried::default();
    let Some(lease) = UpstreamLease::start(ctx, c.key, &mut tried, false) else {
        let who = if ctx.out_of_fds {
            // Our shortage: no demand for more workers.
            Termination::ProxyLimit
        } else if tried.len() == 0 {
            Termination::NoWorker
        } else {
            Termination::WorkerRefused
        };
        c.blame(who, Phase::Connect);
        if who != Termination::ProxyLimit {
            ctx.no_worker += 1; // demand signal for the autoscaler (server.rs)
        }
        return fail(c, ctx, 503);
    };
    if let Some(r) = c.rec.as_deref_mut() {
        r.backend = Some(lease.backend());
        if lease.conn().connected() {
            r.connected(ctx.now);
        }
        r.blame(Termination::WorkerBroke, Phase::ResponseHead);
    }
    let Some(cin) = c.cin.as_mut() else {
        return fail(c, ctx, 400);
    };
    ctx.scratch.clear();
    rewrite::write_upstream_request(
        &mut ctx.scratch,
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
    let mut head = ctx.bufs.get();
    head.push_all(&ctx.scratch);
    let connected = lease.conn().connected();
    let ex = Exchange {
        lease,
        x: Ex {
            body: BodyLeft::request(req.framing, ctx.max_body),
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
            interims: 0,
            close_client: false,
            up_eof: false,
            up_write_failed: false,
            started: ctx.now,
            body_deadline: ctx.after_ms(ctx.settings.body_timeout_ms),
        },
    };
    if connected {
        ex.x.arm_response_timer(c, ctx);
    } else {
        c.set_deadline(ctx, ctx.settings.connect_timeout_ms);
    }
    (State::Exchange(ex), Progress::Moved)
}

impl Ex {
    /// Whether the exchange waits on the client: its body is unfinished and none of it is
    /// buffered for the upstream (buffered bytes the upstream does not take are the
    /// backend's delay; so is a 100 Continue the client waits for that never came).
    fn waits_on_client(&self, c: &Client) -> bool {
        let awaiting_continue =
            self.req.expect_continue && self.interims == 0 && !self.body_started;
        !self.body.done()
            && c.cin.as_ref().is_none_or(Buf::is_empty)
            && !self.body.has_pending()
            && !awaiting_continue
    }

    /// Arms `response-timeout-ms` from now, no later than the body deadline while the
    /// request body is still arriving.
    fn arm_response_timer(&self, c: &mut Client, ctx: &mut LoopContext) {
        let mut at = ctx.after_ms(ctx.settings.response_timeout_ms);
        if !self.body.done() {
            at = at.min(self.body_deadline);
        }
        let k = key(c);
        c.deadline.set(&mut ctx.timers, at, k);
    }
}

impl Exchange {
    /// Ends the lease with `outcome` and returns the buffers.
    fn end(self, ctx: &mut LoopContext, outcome: Outcome<'_>) {
        let Exchange { lease, mut x } = self;
        ctx.bufs.put_opt(&mut x.head);
        ctx.bufs.put_opt(&mut x.uin);
        lease.end(ctx, outcome);
    }

    /// Gives up on this exchange (ending the lease with `outcome`): answers `status` (if no
    /// response started) and closes.
    fn abort(
        self,
        c: &mut Client,
        ctx: &mut LoopContext,
        outcome: Outcome<'_>,
        status: u16,
    ) -> (State, Progress) {
        let started = !matches!(self.x.resp, Resp::Head);
        self.end(ctx, outcome);
        if started {
            return (State::Closing { shut: false }, Progress::Close);
        }
        fail(c, ctx, status)
    }

    /// The upstream failed before answering (`refused`: the connect failed, why; None: it
    /// closed without a response): try another connection if the request may be sent again,
    /// else answer 503 (connect failures) or 502.
    fn retry(
        self,
        c: &mut Client,
        ctx: &mut LoopContext,
        refused: Option<&str>,
    ) -> (State, Progress) {
        let replayable = !self.x.body_started
            && !self.x.interim_sent
            && (self.x.head_sent == 0
                || self.x.req.idempotent && self.x.req.framing == Framing::None);
        let reused = self.lease.conn().reused();
        let Exchange { lease, mut x } = self;
        let backend = lease.backend();
        lease.end(ctx, refused.map_or(Outcome::Dropped, Outcome::Refused));
        if !replayable {
            ctx.bufs.put_opt(&mut x.head);
            ctx.bufs.put_opt(&mut x.uin);
            if refused.is_none() {
                c.blame(Termination::WorkerBroke, Phase::ResponseHead);
            }
            return fail(c, ctx, 502);
        }
        if reused && refused.is_none() {
            // A pooled connection the backend had closed: not the backend's fault; the same
            // backend may be tried again on a fresh connection.
            x.tried.remove(backend);
        }
        let Some(lease) = UpstreamLease::start(ctx, c.key, &mut x.tried, true) else {
            ctx.bufs.put_opt(&mut x.head);
            ctx.bufs.put_opt(&mut x.uin);
            if ctx.out_of_fds {
                c.blame(Termination::ProxyLimit, Phase::Connect);
                return fail(c, ctx, 503);
            }
            if refused.is_some() {
                c.blame(Termination::WorkerRefused, Phase::Connect);
            } else {
                c.blame(Termination::WorkerBroke, Phase::ResponseHead);
            }
            return fail(c, ctx, if refused.is_some() { 503 } else { 502 });
        };
        if let Some(r) = c.rec() {
            r.retries += 1;
            r.backend = Some(lease.backend());
        }
        x.head_sent = 0;
        x.up_eof = false;
        x.up_write_failed = false;
        if let Some(u) = x.uin.as_mut() {
            u.clear();
        }
        c.set_deadline(ctx, ctx.settings.connect_timeout_ms);
        (State::Exchange(Exchange { lease, x }), Progress::Moved)
    }

    fn step(mut self, c: &mut Client, ctx: &mut LoopContext) -> (State, Progress) {
        let mut moved = false;
        if !self.lease.conn().connected() {
            match self.lease.conn_mut().poll_connect() {
                Ok(true) => {
                    moved = true;
                    if let Some(r) = c.rec() {
                        r.connected(ctx.now);
                    }
                    self.x.arm_response_timer(c, ctx);
                }
                Ok(false) => return (State::Exchange(self), Progress::Idle),
                Err(e) => {
                    c.blame(Termination::WorkerRefused, Phase::Connect);
                    return self.retry(c, ctx, Some(&e.to_string()));
                }
            }
        }
        match self.send_request(c, ctx) {
            Ok(m) => moved |= m,
            Err(0) => {
                // The client vanished mid-request: nothing to answer, free everything.
                c.end_request(ctx, 0, (Termination::ClientClosed, Phase::RequestBody));
                self.end(ctx, Outcome::Dropped);
                return (State::Closing { shut: true }, Progress::Close);
            }
            Err(status) => {
                c.blame(Termination::ClientBadRequest, Phase::RequestBody);
                return self.abort(c, ctx, Outcome::Dropped, status);
            }
        }
        match self.read_response(ctx) {
            Ok(m) => moved |= m,
            Err(()) => self.x.up_eof = true,
        }
        if matches!(self.x.resp, Resp::Head) {
            match self.parse_heads(c, ctx) {
                Ok(HeadOutcome::Upgrade) => {
                    let t = self.into_tunnel(c, ctx);
                    return (State::Tunnel(t), Progress::Moved);
                }
                Ok(HeadOutcome::Grew) => moved = true,
                Ok(_) => {}
                Err(()) => return self.abort(c, ctx, Outcome::Broken, 502),
            }
        }
        if let Resp::Body { .. } = self.x.resp {
            // The head queued in `cout` goes out with the first body bytes (relay_body).
            match self.relay_body(c, ctx) {
                Ok(m) => moved |= m,
                Err(who) => {
                    c.blame(who, Phase::ResponseBody);
                    return (State::Exchange(self), Progress::Close);
                }
            }
            if matches!(&self.x.resp, Resp::Body { left, .. } if left.done()) && c.out_empty() {
                return self.finish(c, ctx);
            }
        } else {
            // Interim (1xx) heads.
            match c.flush_out(ctx) {
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
                        return self.abort(c, ctx, Outcome::Broken, 502);
                    }
                    return self.retry(c, ctx, None);
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
                        c.blame(Termination::WorkerBroke, Phase::ResponseBody);
                        let how = (Termination::WorkerBroke, Phase::ResponseBody);
                        c.end_request(ctx, self.x.status, how);
                        self.end(ctx, Outcome::Broken);
                        return (State::Closing { shut: true }, Progress::Close);
                    }
                }
            }
        }
        if moved {
            self.x.arm_response_timer(c, ctx);
            (State::Exchange(self), Progress::Moved)
        } else {
            (State::Exchange(self), Progress::Idle)
        }
    }

    /// Head then body, client -> upstream. Err(status) for a request body the proxy refuses.
    fn send_request(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Result<bool, u16> {
        let x = &mut self.x;
        let up = self.lease.sock();
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
            let cin = c.cin.get_or_insert_with(|| ctx.bufs.get());
            match &mut x.body {
                BodyLeft::Length(rem) => {
                    x.body_ready = (*rem).min(cin.len() as u64) as usize;
                }
                BodyLeft::Reframe(rf) => match send_reframed(rf, cin, up) {
                    Ok(r) => {
                        x.body_seen += r.taken as u64;
                        if let Some(rec) = c.rec.as_deref_mut() {
                            rec.bytes_in += r.taken as u64;
                        }
                        let m = r.taken > 0 || r.written > 0;
                        x.body_started |= m;
                        step |= m;
                    }
                    Err(Some(status)) => return Err(status),
                    Err(None) => {
                        x.up_write_failed = true;
                        return Ok(moved);
                    }
                },
                BodyLeft::Chunked(_) | BodyLeft::Done | BodyLeft::Close => {}
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
                BodyLeft::Reframe(rf) => rf.is_done() && rf.pending().is_empty(),
                _ => false,
            };
            if finished {
                x.body = BodyLeft::Done;
                ctx.bufs.put_if_empty(&mut c.cin);
                return Ok(true);
            }
            // More body to read from the client, if there is room (else backpressure).
            let cin = c.cin.get_or_insert_with(|| ctx.bufs.get());
            if c.sock.readable && cin.len() == x.body_ready && cin.room() > 0 {
                match relay::read_into(&mut c.sock, cin) {
                    Ok(ReadResult::Data(_)) => step = true,
                    Ok(ReadResult::Blocked) => {}
                    // The client vanished mid-request: nothing can be answered.
                    Ok(ReadResult::Eof) | Err(_) => return Err(0),
                }
            }
            if !step {
                ctx.bufs.put_if_empty(&mut c.cin);
                return Ok(moved);
            }
            moved = true;
        }
    }

    /// Upstream -> `uin`, while there is room. Err on a read error (treated as EOF).
    fn read_response(&mut self, ctx: &mut LoopContext) -> Result<bool, ()> {
        let mut moved = false;
        while self.lease.sock().readable && !self.x.up_eof {
            let uin = self.x.uin.get_or_insert_with(|| ctx.bufs.get());
            if uin.room() == 0 {
                break;
            }
            match relay::read_into(self.lease.sock(), uin) {
                Ok(ReadResult::Data(_)) => moved = true,
                Ok(ReadResult::Eof) => {
                    self.x.up_eof = true;
                    moved = true;
                }
                Ok(ReadResult::Blocked) => break,
                Err(_) => return Err(()),
            }
        }
        ctx.bufs.put_if_empty(&mut self.x.uin);
        Ok(moved)
    }

    /// Parses response heads in `uin`: relays 1xx, switches to a tunnel on 101, prepares the
    /// final head for the client. Err = broken response (502).
    fn parse_heads(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Result<HeadOutcome, ()> {
        let x = &mut self.x;
        loop {
            let Some(uin) = x.uin.as_mut().filter(|u| !u.is_empty()) else {
                return Ok(HeadOutcome::Pending);
            };
            let resp = match http::parse_response_head(uin.data(), x.req.is_head, &ctx.limits) {
                Ok(Some(r)) => r,
                Ok(None) if uin.room() == 0 && uin.capacity() <= ctx.limits.max_header_bytes => {
                    // A head larger than one buffer: grow up to the head limit (beyond it
                    // the parser says HeadTooLarge, so a full buffer never waits here).
                    uin.grow(ctx.limits.max_header_bytes + 1);
                    return Ok(HeadOutcome::Grew);
                }
                Ok(None) => return Ok(HeadOutcome::Pending),
                Err(e) => {
                    crate::warn!(
                        "upstream_bad_response",
                        "backend={} reason={}",
                        crate::sys::log::quote(ctx.backends[self.lease.backend()].id()),
                        crate::sys::log::quote(e.message())
                    );
                    return Err(());
                }
            };
            ctx.scratch.clear();
            if resp.is_switching_protocols() {
                // A 101 to a request we sent without Upgrade, or to a protocol not allowed
                // (the backend must pick one offered, all of which were allowed).
                let switched_to = resp.upgrade.map_or(&b""[..], |u| u.get(uin.data()));
                if !x.req.upgrade || !ctx.settings.allows_upgrade(switched_to) {
                    crate::warn!(
                        "upstream_bad_upgrade",
                        "backend={} upgrade={}",
                        crate::sys::log::quote(
                            ctx.backends
                                .get(self.lease.backend())
                                .map_or("-", |b| b.id())
                        ),
                        crate::sys::log::quote(&String::from_utf8_lossy(switched_to))
                    );
                    return Err(());
                }
                rewrite::write_client_response(
                    &mut ctx.scratch,
                    &resp,
                    uin.data(),
                    &ClientResponse {
                        framing: Framing::None,
                        connection: ConnectionOut::Upgrade,
                        request_id: c.rec.as_deref().map(|r| r.id.as_bytes()),
                    },
                );
                if let Some(r) = c.rec.as_deref_mut() {
                    r.response_head(101, ctx.now);
                    r.bytes_out += ctx.scratch.len() as u64;
                }
                uin.consume(resp.head_len);
                let out = c.cout.get_or_insert_with(|| ctx.bufs.get());
                out.push_all(&ctx.scratch);
                out.push_all(uin.data());
                uin.clear();
                ctx.bufs.put_opt(&mut x.uin);
                ctx.bufs.put_opt(&mut x.head);
                x.status = 101;
                return Ok(HeadOutcome::Upgrade);
            }
            if resp.is_interim() {
                // Bounded: an endless stream of 1xx would grow the client's output forever.
                x.interims += 1;
                if x.interims > ctx.settings.max_interim_responses {
                    crate::warn!(
                        "upstream_bad_response",
                        "backend={} reason=\"more than {} interim responses\"",
                        crate::sys::log::quote(
                            ctx.backends
                                .get(self.lease.backend())
                                .map_or("-", |b| b.id())
                        ),
                        ctx.settings.max_interim_responses
                    );
                    c.blame(Termination::ProxyLimit, Phase::ResponseHead);
                    return Err(());
                }
                // Relayed to HTTP/1.1 clients only (RFC 9110 15.2).
                if x.req.minor == 1 {
                    rewrite::write_client_response(
                        &mut ctx.scratch,
                        &resp,
                        uin.data(),
                        &ClientResponse {
                            framing: Framing::None,
                            connection: ConnectionOut::Omit,
                            request_id: None,
                        },
                    );
                    if let Some(r) = c.rec.as_deref_mut() {
                        r.bytes_out += ctx.scratch.len() as u64;
                    }
                    c.cout
                        .get_or_insert_with(|| ctx.bufs.get())
                        .push_all(&ctx.scratch);
                    x.interim_sent = true;
                }
                uin.consume(resp.head_len);
                continue;
            }
            let client_framing = rewrite::client_framing(&resp, x.req.minor);
            let dechunk = resp.framing == Framing::Chunked && client_framing != Framing::Chunked;
            x.close_client = !x.req.keep_alive
                || ctx.draining
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
                &mut ctx.scratch,
                &resp,
                uin.data(),
                &ClientResponse {
                    framing: client_framing,
                    connection,
                    request_id: c.rec.as_deref().map(|r| r.id.as_bytes()),
                },
            );
            if let Some(r) = c.rec.as_deref_mut() {
                r.response_head(resp.status, ctx.now);
                r.bytes_out += ctx.scratch.len() as u64;
                r.blame(Termination::WorkerBroke, Phase::ResponseBody);
            }
            c.cout
                .get_or_insert_with(|| ctx.bufs.get())
                .push_all(&ctx.scratch);
            uin.consume(resp.head_len);
            x.status = resp.status;
            x.resp_keep_alive = resp.keep_alive;
            x.resp_ready = 0;
            x.resp = Resp::Body {
                left: BodyLeft::from_framing(resp.framing, 0),
                dechunk,
            };
            ctx.bufs.put_opt(&mut x.head);
            return Ok(HeadOutcome::Final);
        }
    }

    fn into_tunnel(self, c: &mut Client, ctx: &mut LoopContext) -> Tunnel {
        let up = self.lease.upgrade(ctx, self.x.started);
        c.end_request(ctx, 101, (Termination::Done, Phase::Complete));
        c.set_deadline(ctx, ctx.settings.tunnel_timeout_ms);
        Tunnel {
            up,
            c2u: Half::new(c.cin.take()),
            u2c: Half::new(c.cout.take()),
        }
    }

    /// Response body, `uin` -> client. Err(who ended it): the client is gone, or the
    /// upstream's framing is broken.
    fn relay_body(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Result<bool, Termination> {
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
                moved |= c.flush_out(ctx).map_err(|()| GONE)?;
                if !c.out_empty() {
                    break;
                }
            }
            match left {
                // Request bodies only: a response is never re-framed.
                BodyLeft::Reframe(_) => return Err(BROKE),
                BodyLeft::Done => {
                    // Bytes after the end of the response: the connection is not reusable.
                    x.resp_keep_alive = false;
                    uin.clear();
                    break;
                }
                BodyLeft::Chunked(ch) if *dechunk => {
                    // HTTP/1.0 client: chunk data only, into cout (bounded by its room).
                    let out = c.cout.get_or_insert_with(|| ctx.bufs.get());
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
        moved |= c.flush_out(ctx).map_err(|()| GONE)?;
        ctx.bufs.put_if_empty(&mut x.uin);
        Ok(moved)
    }

    /// The response is complete: pool or close the upstream, then next request or close.
    fn finish(self, c: &mut Client, ctx: &mut LoopContext) -> (State, Progress) {
        let x = &self.x;
        let req_done = x.body.done();
        let reusable = x.resp_keep_alive
            && req_done
            && !x.up_eof
            && !x.up_write_failed
            && x.uin.as_ref().is_none_or(Buf::is_empty);
        let close_client = x.close_client || !req_done || ctx.draining;
        c.end_request(ctx, x.status, (Termination::Done, Phase::Complete));
        let outcome = Outcome::Answered {
            status: x.status,
            since: x.started,
            reusable,
        };
        self.end(ctx, outcome);
        if close_client {
            c.set_deadline(ctx, linger::LINGER_MS);
            return (State::Closing { shut: false }, Progress::Moved);
        }
        let pipelined = c.cin.as_ref().is_some_and(|b| !b.is_empty());
        let ms = if pipelined {
            ctx.settings.header_timeout_ms
        } else {
            ctx.settings.idle_timeout_ms
        };
        c.set_deadline(ctx, ms);
        (State::Head { clock: pipelined }, Progress::Moved)
    }
}

impl Tunnel {
    fn step(mut self, c: &mut Client, ctx: &mut LoopContext) -> (State, Progress) {
        let a = self
            .c2u
            .relay(&mut c.sock, &mut self.up.sock, &mut ctx.bufs);
        let b = self
            .u2c
            .relay(&mut self.up.sock, &mut c.sock, &mut ctx.bufs);
        let moved = match (a, b) {
            (Ok(a), Ok(b)) => a || b,
            _ => return (State::Tunnel(self), Progress::Close),
        };
        if self.c2u.finished() && self.u2c.finished() {
            return (State::Tunnel(self), Progress::Close);
        }
        if moved {
            c.set_deadline(ctx, ctx.settings.tunnel_timeout_ms);
            (State::Tunnel(self), Progress::Moved)
        } else {
            (State::Tunnel(self), Progress::Idle)
        }
    }
}
