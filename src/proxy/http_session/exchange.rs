//! `Exchange`: one request/response with an upstream lease. A step sends the request
//! (`request`), reads and relays the response (`response`); what it cannot go on with is a
//! [`Turn`]: a retry, an abort, a tunnel (`tunnel`), the next request, or the close.

use std::time::Instant;

use super::response::HeadOutcome;
use super::tunnel::Tunnel;
use super::{Client, Progress, State, fail, key};
use crate::evloop::linger;
use crate::http::{ChunkLimits, ChunkedDecoder, ChunkedReframer, Framing};
use crate::proxy::access_log::{Phase, Termination};
use crate::proxy::backends::Tried;
use crate::proxy::buffer::Buf;
use crate::proxy::context::LoopContext;
use crate::proxy::lease::{Outcome, UpstreamLease};

/// Capacity of a spare exchange's head vector kept for the next request (a larger one, a
/// rare long head's, is freed).
const KEPT_HEAD_CAPACITY: usize = 4096;

/// What the exchange needs to remember of the request head (the head itself is gone once
/// rewritten for upstream).
pub(super) struct ReqInfo {
    /// HTTP/1.x minor version of the client.
    pub(super) minor: u8,
    pub(super) is_head: bool,
    pub(super) idempotent: bool,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) upgrade: bool,
    /// `Expect: 100-continue`: the client may wait for a 100 before sending its body.
    pub(super) expect_continue: bool,
}

/// What is left of a message body.
pub(super) enum BodyLeft {
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
    /// What is left of a body framed `f` (a chunked one bounded by `max_body`, 0 = no bound).
    pub(super) fn from_framing(f: Framing, max_body: u64) -> BodyLeft {
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
    pub(super) fn request(f: Framing, max_body: u64) -> BodyLeft {
        match f {
            Framing::Chunked => BodyLeft::Reframe(Box::new(ChunkedReframer::new(ChunkLimits {
                max_body,
                ..ChunkLimits::default()
            }))),
            f => BodyLeft::from_framing(f, max_body),
        }
    }

    /// Whether the whole body went through.
    pub(super) fn done(&self) -> bool {
        matches!(self, BodyLeft::Done)
    }

    /// Request body bytes read from the client and waiting for the upstream, outside `cin`.
    fn has_pending(&self) -> bool {
        matches!(self, BodyLeft::Reframe(rf) if !rf.pending().is_empty())
    }
}

/// Where the response stands.
pub(super) enum Resp {
    /// Waiting for the (final) response head; 1xx heads are relayed meanwhile.
    Head,
    /// Relaying the body; `dechunk` for HTTP/1.0 clients of a chunked response.
    Body { left: BodyLeft, dechunk: bool },
}

/// One request/response exchange with an upstream connection. Small (the lease and a box),
/// so a session in any state stays small and moving it costs nothing.
pub(super) struct Exchange {
    pub(super) lease: UpstreamLease,
    pub(super) x: Box<Ex>,
}

/// The exchange's bookkeeping (everything but the upstream connection, which a retry
/// replaces), boxed and reused from the loop's spares (`LoopContext::exchanges`): an idle
/// session holds none, and a request allocates none.
pub(crate) struct Ex {
    pub(super) req: ReqInfo,
    /// The head sent upstream, kept until the response head arrives (to retry).
    /// Empty once the response head arrived. Kept with the box between requests, so its
    /// capacity is reused: the head is written here, not into a scratch copy and a buffer.
    pub(super) head: Vec<u8>,
    pub(super) head_sent: usize,
    /// Request body still to forward, and bytes at the front of `cin` known to be body.
    pub(super) body: BodyLeft,
    pub(super) body_ready: usize,
    pub(super) body_seen: u64,
    pub(super) body_started: bool,
    /// Backends tried for this request.
    pub(super) tried: Tried,
    /// Bytes read from upstream, and bytes at its front known to be response body.
    pub(super) uin: Option<Buf>,
    pub(super) resp_ready: usize,
    pub(super) resp: Resp,
    pub(super) status: u16,
    pub(super) resp_keep_alive: bool,
    /// An interim (1xx) response already went to the client: no retry any more.
    pub(super) interim_sent: bool,
    /// Interim responses received so far (capped by `max-interim-responses`).
    pub(super) interims: u32,
    pub(super) close_client: bool,
    pub(super) up_eof: bool,
    /// Writing to the upstream failed; a response may still be readable.
    pub(super) up_write_failed: bool,
    pub(super) started: Instant,
    /// The whole request body must have arrived by then (`body-timeout-ms`, from the end of
    /// the head): a client trickling a byte at a time cannot hold a slot forever.
    pub(super) body_deadline: Instant,
}

impl Ex {
    /// Blank bookkeeping, for a new box (every field is set again by `begin`).
    fn blank(now: Instant) -> Ex {
        Ex {
            req: ReqInfo {
                minor: 1,
                is_head: false,
                idempotent: false,
                framing: Framing::None,
                keep_alive: false,
                upgrade: false,
                expect_continue: false,
            },
            head: Vec::new(),
            head_sent: 0,
            body: BodyLeft::Done,
            body_ready: 0,
            body_seen: 0,
            body_started: false,
            tried: Tried::default(),
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
            started: now,
            body_deadline: now,
        }
    }

    /// Bookkeeping for a new request, from the loop's spares (or a new box); its `tried` is
    /// empty, the rest is set by `begin`.
    pub(super) fn take(ctx: &mut LoopContext) -> Box<Ex> {
        let mut x = ctx
            .exchanges
            .take()
            .unwrap_or_else(|| Box::new(Ex::blank(ctx.now)));
        x.tried = Tried::default();
        x
    }

    /// Back to the loop's spares, its buffers to the pool.
    pub(super) fn give_back(mut self: Box<Ex>, ctx: &mut LoopContext) {
        if self.head.capacity() > KEPT_HEAD_CAPACITY {
            self.head = Vec::new();
        }
        self.head.clear();
        ctx.bufs.put_opt(&mut self.uin);
        // A chunked body's decoder is not kept with the spare.
        self.body = BodyLeft::Done;
        self.resp = Resp::Head;
        ctx.exchanges.give(self);
    }

    /// Starts the bookkeeping of a request whose rewritten head is in `head`, ready to go up;
    /// its body must have arrived by `body_deadline`. Field by field, in place (the box is
    /// reused).
    pub(super) fn begin(
        &mut self,
        req: ReqInfo,
        body: BodyLeft,
        now: Instant,
        body_deadline: Instant,
    ) {
        self.req = req;
        self.head_sent = 0;
        self.body = body;
        self.body_ready = 0;
        self.body_seen = 0;
        self.body_started = false;
        self.uin = None;
        self.resp_ready = 0;
        self.resp = Resp::Head;
        self.status = 0;
        self.resp_keep_alive = false;
        self.interim_sent = false;
        self.interims = 0;
        self.close_client = false;
        self.up_eof = false;
        self.up_write_failed = false;
        self.started = now;
        self.body_deadline = body_deadline;
    }

    /// Whether the exchange waits on the client: its body is unfinished and none of it is
    /// buffered for the upstream (buffered bytes the upstream does not take are the
    /// backend's delay; so is a 100 Continue the client waits for that never came).
    pub(super) fn waits_on_client(&self, c: &Client) -> bool {
        let awaiting_continue =
            self.req.expect_continue && self.interims == 0 && !self.body_started;
        !self.body.done()
            && c.cin.as_ref().is_none_or(Buf::is_empty)
            && !self.body.has_pending()
            && !awaiting_continue
    }

    /// Arms `response-timeout-ms` from now, no later than the body deadline while the
    /// request body is still arriving.
    pub(super) fn arm_response_timer(&self, c: &mut Client, ctx: &mut LoopContext) {
        let mut at = ctx.after_ms(ctx.settings.response_timeout_ms);
        if !self.body.done() {
            at = at.min(self.body_deadline);
        }
        let k = key(c);
        c.deadline.set(&mut ctx.timers, at, k);
    }
}

/// Where a step of the exchange stopped short of "moved or idle".
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Turn {
    /// The connect is still pending.
    Connecting,
    /// Something moved that needs no new deadline: step again.
    Again,
    /// The upstream failed before answering: another connection (Some(why): the connect
    /// failed).
    Retry(Option<String>),
    /// Give up: end the lease with the outcome and answer the status.
    Abort(Outcome<'static>, u16),
    /// The request body is refused (the status): the client's fault.
    Refuse(u16),
    /// The client vanished mid-request: nothing to answer.
    ClientGone,
    /// A 101 to the upgrade: the exchange becomes a tunnel.
    Upgrade,
    /// The response is complete.
    Finish,
    /// The upstream died mid-body: the client must see a truncated message, never a clean
    /// end.
    Truncated,
    /// The client is gone or the response framing broke (who ended it, and where): close
    /// (the lease and the request's record end with the session).
    Close(Termination, Phase),
}

impl Exchange {
    /// One step, in place: connect, request up, response down. Ok(Moved / Idle / Close)
    /// while the exchange goes on; Err(the turn it must take) when it ends or changes.
    // Inlined into `run`, its one caller: ~70 fewer instructions per request (callgrind).
    #[inline]
    pub(super) fn step(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Result<Progress, Turn> {
        match self.advance(c, ctx) {
            Ok(true) | Err(Turn::Again) => {
                self.x.arm_response_timer(c, ctx);
                Ok(Progress::Moved)
            }
            Ok(false) | Err(Turn::Connecting) => Ok(Progress::Idle),
            Err(Turn::Close(who, phase)) => {
                c.blame(who, phase);
                Ok(Progress::Close)
            }
            Err(turn) => Err(turn),
        }
    }

    /// Moves what can move; Ok(moved), or the turn the exchange must take.
    fn advance(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Result<bool, Turn> {
        let mut moved = self.connect_step(c, ctx)?;
        moved |= self.send_request(c, ctx).map_err(|status| match status {
            0 => Turn::ClientGone,
            status => Turn::Refuse(status),
        })?;
        match self.read_response(ctx) {
            Ok(m) => moved |= m,
            Err(()) => self.x.up_eof = true,
        }
        if matches!(self.x.resp, Resp::Head) {
            match self.parse_heads(c, ctx) {
                Ok(HeadOutcome::Upgrade) => return Err(Turn::Upgrade),
                Ok(HeadOutcome::Grew) => moved = true,
                Ok(_) => {}
                Err(()) => return Err(Turn::Abort(Outcome::Broken, 502)),
            }
        }
        moved |= self.send_response(c, ctx)?;
        self.check_upstream_eof()?;
        Ok(moved)
    }

    /// Completes the connect: Ok(true) when it just did, Err while pending or failed.
    fn connect_step(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Result<bool, Turn> {
        if self.lease.conn().connected() {
            return Ok(false);
        }
        match self.lease.conn_mut().poll_connect() {
            Ok(true) => {
                if let Some(r) = c.rec() {
                    r.connected(ctx.now);
                }
                self.x.arm_response_timer(c, ctx);
                Ok(true)
            }
            Ok(false) => Err(Turn::Connecting),
            Err(e) => {
                c.blame(Termination::WorkerRefused, Phase::Connect);
                Err(Turn::Retry(Some(e.to_string())))
            }
        }
    }

    /// The response body (or interim heads) to the client; Err(Finish) once complete.
    fn send_response(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Result<bool, Turn> {
        if let Resp::Head = self.x.resp {
            // Interim (1xx) heads.
            return c
                .flush_out(ctx)
                .map_err(|()| Turn::Close(Termination::ClientClosed, Phase::ResponseHead));
        }
        // The head queued in `cout` goes out with the first body bytes (relay_body).
        let moved = self
            .relay_body(c, ctx)
            .map_err(|who| Turn::Close(who, Phase::ResponseBody))?;
        if matches!(&self.x.resp, Resp::Body { left, .. } if left.done()) && c.out_empty() {
            return Err(Turn::Finish);
        }
        Ok(moved)
    }

    /// What the upstream's end of stream means where the response stands.
    fn check_upstream_eof(&mut self) -> Result<(), Turn> {
        if !self.x.up_eof {
            return Ok(());
        }
        let uin_empty = self.x.uin.as_ref().is_none_or(Buf::is_empty);
        match &self.x.resp {
            // Closed in the middle of a head, or before any (a pooled connection the
            // backend had closed, or a backend closing at once).
            Resp::Head if !uin_empty => Err(Turn::Abort(Outcome::Broken, 502)),
            Resp::Head => Err(Turn::Retry(None)),
            Resp::Body {
                left: BodyLeft::Close,
                ..
            } if uin_empty => {
                self.x.resp = Resp::Body {
                    left: BodyLeft::Done,
                    dechunk: false,
                };
                Err(Turn::Again)
            }
            // Complete; what is still queued for the client is flushed first.
            Resp::Body {
                left: BodyLeft::Done | BodyLeft::Close,
                ..
            } => Ok(()),
            Resp::Body { .. } if uin_empty => Err(Turn::Truncated),
            Resp::Body { .. } => Ok(()),
        }
    }

    /// Carries out a turn.
    pub(super) fn take_turn(
        self,
        turn: Turn,
        c: &mut Client,
        ctx: &mut LoopContext,
    ) -> (State, Progress) {
        match turn {
            Turn::Connecting => (State::Exchange(self), Progress::Idle),
            Turn::Again => (State::Exchange(self), Progress::Moved),
            Turn::Retry(why) => self.retry(c, ctx, why.as_deref()),
            Turn::Abort(outcome, status) => self.abort(c, ctx, outcome, status),
            Turn::Refuse(status) => {
                c.blame(Termination::ClientBadRequest, Phase::RequestBody);
                self.abort(c, ctx, Outcome::Dropped, status)
            }
            Turn::ClientGone => {
                // Nothing to answer, free everything.
                c.end_request(ctx, 0, (Termination::ClientClosed, Phase::RequestBody));
                self.end(ctx, Outcome::Dropped);
                (State::Closing { shut: true }, Progress::Close)
            }
            Turn::Upgrade => (
                State::Tunnel(Box::new(Tunnel::open(self, c, ctx))),
                Progress::Moved,
            ),
            Turn::Finish => self.finish(c, ctx),
            Turn::Truncated => {
                c.blame(Termination::WorkerBroke, Phase::ResponseBody);
                self.end_record(c, ctx);
                self.end(ctx, Outcome::Broken);
                (State::Closing { shut: true }, Progress::Close)
            }
            Turn::Close(who, phase) => {
                c.blame(who, phase);
                (State::Exchange(self), Progress::Close)
            }
        }
    }

    /// The session's deadline fired during the exchange: the connect timed out (next
    /// backend), the response did (504), or the relay stalled (close).
    pub(super) fn timer(self, c: &mut Client, ctx: &mut LoopContext) -> (State, Progress) {
        let backend = self.lease.backend();
        if !self.lease.conn().connected() {
            c.blame(Termination::WorkerTimeout, Phase::Connect);
            return self.retry(c, ctx, Some("connect timeout"));
        }
        if matches!(self.x.resp, Resp::Head) && self.x.waits_on_client(c) {
            // The client stopped in the middle of its body (or ran out of body-timeout-ms):
            // its fault, not the backend's.
            crate::debug!(
                "client_body_timeout",
                "backend={}",
                crate::sys::log::quote(ctx.backends[backend].id())
            );
            c.blame(Termination::ClientTimeout, Phase::RequestBody);
            return self.abort(c, ctx, Outcome::Dropped, 408);
        }
        if matches!(self.x.resp, Resp::Head) {
            crate::warn!(
                "upstream_timeout",
                "backend={} timeout_ms={}",
                crate::sys::log::quote(ctx.backends[backend].id()),
                ctx.settings.response_timeout_ms
            );
            c.blame(Termination::WorkerTimeout, Phase::ResponseHead);
            return self.abort(c, ctx, Outcome::Broken, 504);
        }
        let who = if c.out_empty() {
            Termination::WorkerTimeout
        } else {
            Termination::ClientTimeout
        };
        c.blame(who, Phase::ResponseBody);
        (State::Exchange(self), Progress::Close)
    }

    /// The session closes during the exchange: the request's record ends (blamed on whoever
    /// was, else the client or the drain), the lease ends without a verdict.
    pub(super) fn close(self, c: &mut Client, ctx: &mut LoopContext) {
        self.end_record(c, ctx);
        self.end(ctx, Outcome::Dropped);
    }

    /// Ends the request's record where the exchange stands (status 0 before a response).
    fn end_record(&self, c: &mut Client, ctx: &mut LoopContext) {
        let (status, phase) = match self.x.resp {
            Resp::Head => (0, Phase::ResponseHead),
            Resp::Body { .. } => (self.x.status, Phase::ResponseBody),
        };
        let stop = if ctx.draining {
            Termination::ProxyStopping
        } else {
            Termination::ClientClosed
        };
        let how = c
            .rec()
            .map_or((stop, phase), |r| r.blamed_or((stop, phase)));
        c.end_request(ctx, status, how);
    }

    /// Ends the lease with `outcome` and returns the buffers.
    pub(super) fn end(self, ctx: &mut LoopContext, outcome: Outcome<'_>) {
        let (lease, _) = self.into_lease(ctx);
        lease.end(ctx, outcome);
    }

    /// Returns the buffers and the bookkeeping; the lease (still to end) and when the
    /// request started.
    pub(super) fn into_lease(self, ctx: &mut LoopContext) -> (UpstreamLease, Instant) {
        let Exchange { lease, x } = self;
        let started = x.started;
        x.give_back(ctx);
        (lease, started)
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
        if started {
            // The answer is under way: no canned one; the line says what was sent.
            self.end_record(c, ctx);
            self.end(ctx, outcome);
            return (State::Closing { shut: false }, Progress::Close);
        }
        self.end(ctx, outcome);
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
            x.give_back(ctx);
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
            x.give_back(ctx);
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
        let outcome = Outcome::Answered {
            status: x.status,
            since: x.started,
            reusable,
        };
        let status = x.status;
        self.end(ctx, outcome);
        c.end_request(ctx, status, (Termination::Done, Phase::Complete));
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
