//! `Head`: reading and parsing the client's request head, then starting the exchange (the
//! upstream lease and the head rewritten for the backend).

use super::exchange::{BodyLeft, Ex, Exchange, ReqInfo};
use super::{Client, Progress, State, Step, fail, queued};
use crate::evloop::ReadResult;
use crate::http::rewrite::{self, ConnectionOut, UpstreamRequest};
use crate::http::{self, Framing, RequestHead};
use crate::proxy::access_log::{Phase, Termination};
use crate::proxy::buffer::{BUF_SIZE, Buf};
use crate::proxy::context::LoopContext;
use crate::proxy::lease::{Admission, UpstreamLease};
use crate::proxy::relay;

/// Reads and parses a request head, in place (`clock`: the state's); idle (holding no
/// buffer) while nothing is buffered.
// Inlined into `run`, its one caller: ~70 fewer instructions per request (callgrind).
#[inline]
pub(super) fn step_head(c: &mut Client, ctx: &mut LoopContext, clock: &mut bool) -> Step {
    // A previous response still owed to the client goes first (pipelining in order).
    if let Some(p) = c.flush_owed(ctx) {
        return Step::Stay(p);
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
                return fail(c, ctx, e.status()).into();
            }
            // Borrowed where it lies: binding it by value would move (copy) the whole head.
            Ok(Some(ref req)) => return start_exchange(c, ctx, req).into(),
            Ok(None) => {}
        }
    }
    if !c.sock.readable {
        // Idle or waiting for more of a head: an empty buffer goes back to the pool.
        ctx.bufs.put_if_empty(&mut c.cin);
        return Step::Stay(Progress::Idle);
    }
    let cin = c.cin.get_or_insert_with(|| ctx.bufs.get());
    if cin.room() == 0 {
        // A head larger than one buffer: grow up to the head limit (the parser answers
        // 431 beyond it).
        let cap = ctx.limits.max_header_bytes.max(ctx.limits.max_request_line) + 1;
        if cin.capacity() >= cap {
            return fail(c, ctx, 431).into();
        }
        cin.grow(cap.max(2 * BUF_SIZE));
    }
    match relay::read_into(&mut c.sock, cin) {
        Ok(ReadResult::Data(_)) => {
            if !*clock {
                *clock = true;
                c.set_deadline(ctx, ctx.settings.header_timeout_ms);
            }
            Step::Stay(Progress::Moved)
        }
        Ok(ReadResult::Blocked) => {
            ctx.bufs.put_if_empty(&mut c.cin);
            Step::Stay(Progress::Idle)
        }
        // The client closed between requests, or mid-head: nothing to answer.
        Ok(ReadResult::Eof) | Err(_) => Step::Stay(Progress::Close),
    }
}

/// A complete head: leases an upstream connection and queues the rewritten head for it.
/// By reference: moving a parsed head (its spans and field lists) costs a `memcpy` call.
fn start_exchange(c: &mut Client, ctx: &mut LoopContext, req: &RequestHead) -> (State, Progress) {
    c.served += 1;
    begin_record(c, ctx, req);
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
        upgrade: upgrade_allowed(ctx, req, c.cin.as_ref()),
        expect_continue: req.expect_continue,
    };
    if c.cin.is_none() {
        return fail(c, ctx, 400);
    }
    if UpstreamLease::admit(ctx) == Admission::Wait {
        // Waiting is the rare path: the head is copied into the queue entry.
        return queued::queue_request(c, ctx, req.clone(), info);
    }
    lease_exchange(c, ctx, req, info)
}

/// Leases an upstream connection for a request and queues the rewritten head for it.
pub(super) fn lease_exchange(
    c: &mut Client,
    ctx: &mut LoopContext,
    req: &RequestHead,
    info: ReqInfo,
) -> (State, Progress) {
    let mut x = Ex::take(ctx);
    let Some(lease) = UpstreamLease::start(ctx, c.key, &mut x.tried, false) else {
        let who = if ctx.out_of_fds {
            // Our shortage: no demand for more workers.
            Termination::ProxyLimit
        } else if x.tried.len() == 0 {
            Termination::NoWorker
        } else {
            Termination::WorkerRefused
        };
        x.give_back(ctx);
        c.blame(who, Phase::Connect);
        if who != Termination::ProxyLimit {
            ctx.no_worker += 1; // demand signal for the autoscaler (server.rs)
        }
        return fail(c, ctx, 503);
    };
    let connected = lease.conn().connected();
    if let Some(r) = c.rec() {
        r.backend = Some(lease.backend());
        if connected {
            r.connected(ctx.now);
        }
        r.blame(Termination::WorkerBroke, Phase::ResponseHead);
    }
    write_upstream_head(c, req, info.upgrade, &mut x.head);
    let body = BodyLeft::request(req.framing, ctx.max_body);
    let body_deadline = ctx.after_ms(ctx.settings.body_timeout_ms);
    x.begin(info, body, ctx.now, body_deadline);
    if connected {
        x.arm_response_timer(c, ctx);
    } else {
        c.set_deadline(ctx, ctx.settings.connect_timeout_ms);
    }
    (State::Exchange(Exchange { lease, x }), Progress::Moved)
}

/// Opens the request's record (its id, line and start) for the access log.
fn begin_record(c: &mut Client, ctx: &mut LoopContext, req: &RequestHead) {
    if let Some(cin) = c.cin.as_ref() {
        let keep_line = ctx.access_log.is_on();
        let rec = ctx
            .records
            .begin(c.peer, req, cin.data(), keep_line, ctx.now);
        if let Some(old) = c.rec.replace(rec) {
            ctx.records.put(old);
        }
    }
    c.blame(Termination::ClientBadRequest, Phase::RequestHead);
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

/// Writes the head rewritten for the backend into `head`, consumed from `cin`.
fn write_upstream_head(c: &mut Client, req: &RequestHead, upgrade: bool, head: &mut Vec<u8>) {
    head.clear();
    let Some(cin) = c.cin.as_mut() else {
        return;
    };
    rewrite::write_upstream_request(
        head,
        req,
        cin.data(),
        &UpstreamRequest {
            client_ip: c.peer.ip(),
            proto: "http",
            framing: req.framing,
            connection: if upgrade {
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
}
