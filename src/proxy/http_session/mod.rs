//! One HTTP client connection as an explicit state machine:
//!
//! ```text
//!   Head ──request head──> Exchange ──final response done──> Head (keep-alive / pipelined)
//!    │  │ every worker full  ^ │  101 to an upgrade            │
//!    │  └──> Queued ─slot────┘ │                               │
//!    │  bad head: 4xx/5xx  │   v                               v
//!  Closing <──── error ────┴─ Tunnel ───── both sides done ─> (closed)
//! ```
//!
//! `Head` reads and parses a request head (idle keep-alive when nothing is buffered: then the
//! session holds no buffer). `Exchange` owns one upstream connection and streams the request
//! body up and the response down, each side stopping when the other cannot take more.
//! `Tunnel` relays raw bytes after a 101. `Closing` flushes a last response, shuts down the
//! write side and discards input until the client closes (lingering close, so a client still
//! sending does not get a reset that destroys the response). `Queued` holds a complete head
//! while every worker is at `max-conn-per-worker`: the loop dispatches it when a slot frees,
//! or answers 503 with `Retry-After` when the queue is full or the wait too long.

//!
//! Files: `head` (reading and parsing the client's head, starting an exchange), `queued`
//! (waiting for a worker slot), `exchange`
//! (one request/response with an upstream lease: retry, abort, finish), `request` (head and
//! body up), `response` (heads and body down), `tunnel` (after a 101), `closing` (the last
//! response and the lingering close); `tests` drive the machine over socket pairs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;

use super::access_log::{Phase, Termination};
use super::buffer::Buf;
use super::context::{LoopContext, TimerKey};
use super::relay::{self, TcpSock};
use super::request_record::{self, RequestRecord};
use crate::evloop::linger;
use crate::evloop::{Deadline, Key};
use crate::http;

mod closing;
mod exchange;
mod head;
mod queued;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod tunnel;

/// An exchange's bookkeeping, kept spare in `LoopContext::exchanges`.
pub(super) use exchange::Ex;
use exchange::Exchange;
use queued::Queued;
use tunnel::Tunnel;

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

/// What a step did: the state stays (stepped in place) or gives way to the next.
enum Step {
    Stay(Progress),
    Next(State, Progress),
}

impl From<(State, Progress)> for Step {
    fn from((next, p): (State, Progress)) -> Step {
        Step::Next(next, p)
    }
}

/// Where the connection stands. Every variant is small (the big parts are boxed), so an
/// idle session is small and a transition moves a few words.
enum State {
    /// Reading a request head; `clock` = the header deadline runs (a head has started, or
    /// this is a new connection).
    Head {
        clock: bool,
    },
    /// A complete head waiting in the loop's queue for a worker slot (`max-conn-per-worker`).
    Queued(Box<Queued>),
    Exchange(Exchange),
    Tunnel(Box<Tunnel>),
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
            // The loop answers expired waiters; this deadline only backs it up.
            State::Queued(_) => queued::expire(&mut self.c, ctx),
            State::Exchange(ex) => ex.timer(&mut self.c, ctx),
            other => (other, Progress::Close),
        };
        self.state = next;
        if p == Progress::Close {
            return Flow::Close;
        }
        self.run(ctx)
    }

    /// The loop took this session's request out of the wait queue after `waited`: a worker
    /// has a free slot.
    pub fn dispatch(&mut self, ctx: &mut LoopContext, waited: Duration) -> Flow {
        let State::Queued(q) = std::mem::replace(&mut self.state, State::Void) else {
            return Flow::Keep;
        };
        if let Some(r) = self.c.rec() {
            r.queued = Some(waited);
        }
        let (next, p) = queued::dispatch(&mut self.c, ctx, *q);
        self.resume(ctx, next, p)
    }

    /// The loop took this session's request out of the wait queue after `queue-timeout-ms`:
    /// 503 with `Retry-After`.
    pub fn queue_expired(&mut self, ctx: &mut LoopContext, waited: Duration) -> Flow {
        if !matches!(self.state, State::Queued(_)) {
            return Flow::Keep;
        }
        if let Some(r) = self.c.rec() {
            r.queued = Some(waited);
        }
        let (next, p) = queued::expire(&mut self.c, ctx);
        self.resume(ctx, next, p)
    }

    /// Goes on from `next` after a step taken from outside `run`.
    fn resume(&mut self, ctx: &mut LoopContext, next: State, p: Progress) -> Flow {
        self.state = next;
        if p == Progress::Close {
            return Flow::Close;
        }
        self.run(ctx)
    }

    /// Runs the state machine until nothing can move. Each state steps in place; the state
    /// is replaced only on a transition.
    fn run(&mut self, ctx: &mut LoopContext) -> Flow {
        loop {
            let step = match &mut self.state {
                State::Head { clock } => head::step_head(&mut self.c, ctx, clock),
                State::Queued(_) => Step::Stay(Progress::Idle),
                State::Exchange(ex) => match ex.step(&mut self.c, ctx) {
                    Ok(p) => Step::Stay(p),
                    Err(turn) => self.exchange_turn(ctx, turn),
                },
                State::Tunnel(t) => Step::Stay(t.step(&mut self.c, ctx)),
                State::Closing { shut } => {
                    Step::Stay(closing::step_closing(&mut self.c, ctx, shut))
                }
                State::Void => Step::Stay(Progress::Close),
            };
            let p = match step {
                Step::Stay(p) => p,
                Step::Next(next, p) => {
                    self.state = next;
                    p
                }
            };
            match p {
                Progress::Moved => continue,
                Progress::Idle => return Flow::Keep,
                Progress::Close => return Flow::Close,
            }
        }
    }

    /// The exchange takes `turn` (it ends, retries or becomes a tunnel): the next state.
    fn exchange_turn(&mut self, ctx: &mut LoopContext, turn: exchange::Turn) -> Step {
        match std::mem::replace(&mut self.state, State::Void) {
            State::Exchange(ex) => ex.take_turn(turn, &mut self.c, ctx).into(),
            other => Step::Next(other, Progress::Close),
        }
    }

    /// Answers `status` and closes.
    fn fail(&mut self, ctx: &mut LoopContext, status: u16) -> (State, Progress) {
        fail(&mut self.c, ctx, status)
    }

    /// Frees everything the session holds (the loop counts the connection closed).
    pub fn close(mut self, ctx: &mut LoopContext) {
        match std::mem::replace(&mut self.state, State::Void) {
            State::Queued(_) => queued::close(&mut self.c, ctx),
            State::Exchange(ex) => ex.close(&mut self.c, ctx),
            State::Tunnel(t) => t.close(ctx),
            _ => {}
        }
        ctx.bufs.put_opt(&mut self.c.cin);
        ctx.bufs.put_opt(&mut self.c.cout);
    }
}

/// Queues a canned `status` response and moves to Closing.
fn fail(c: &mut Client, ctx: &mut LoopContext, status: u16) -> (State, Progress) {
    fail_with(c, ctx, status, None)
}

/// `fail`, with a `Retry-After` of `retry_after` seconds when given.
fn fail_with(
    c: &mut Client,
    ctx: &mut LoopContext,
    status: u16,
    retry_after: Option<u64>,
) -> (State, Progress) {
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
    let mut answer = http::response::simple(status, "text/plain", body.as_bytes(), true);
    if let Some(secs) = retry_after {
        // After the status line: the head's fields are in no particular order.
        let at = answer
            .iter()
            .position(|&b| b == b'\n')
            .map_or(answer.len(), |i| i + 1);
        let field = format!("Retry-After: {secs}\r\n");
        answer.splice(at..at, field.into_bytes());
    }
    c.queue(ctx, &answer);
    c.set_deadline(ctx, linger::LINGER_MS);
    (State::Closing { shut: false }, Progress::Moved)
}
