//! `Head`: reading and parsing the client's request head, then starting the exchange (the
//! upstream lease and the head rewritten for the backend).

use super::exchange::{BodyLeft, Ex, Exchange, ReqInfo};
use super::{Client, Progress, State, fail};
use crate::evloop::ReadResult;
use crate::http::rewrite::{self, ConnectionOut, UpstreamRequest};
use crate::http::{self, Framing, RequestHead};
use crate::proxy::backends::Tried;
use crate::proxy::buffer::{BUF_SIZE, Buf};
use crate::proxy::context::LoopContext;
use crate::proxy::lease::UpstreamLease;
use crate::proxy::relay;

/// Reads and parses a request head; idle (holding no buffer) while nothing is buffered.
pub(super) fn step_head(
    c: &mut Client,
    ctx: &mut LoopContext,
    mut clock: bool,
) -> (State, Progress) {
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

/// A complete head: leases an upstream connection and queues the rewritten head for it.
fn start_exchange(c: &mut Client, ctx: &mut LoopContext, req: RequestHead) -> (State, Progress) {
    c.served += 1;
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
        upgrade: req.upgrade.is_some(),
    };
    if c.cin.is_none() {
        return fail(c, ctx, 400);
    }
    let mut tried = Tried::default();
    let Some(lease) = UpstreamLease::start(ctx, c.key, &mut tried, false) else {
        return fail(c, ctx, 503);
    };
    let head = upstream_head(c, ctx, &req, info.upgrade);
    let connected = lease.conn().connected();
    let body = BodyLeft::from_framing(req.framing, ctx.max_body);
    let ex = Exchange {
        lease,
        x: Ex::new(info, body, head, tried, ctx.now),
    };
    let ms = if connected {
        ctx.settings.response_timeout_ms
    } else {
        ctx.settings.connect_timeout_ms
    };
    c.set_deadline(ctx, ms);
    (State::Exchange(ex), Progress::Moved)
}

/// The head rewritten for the backend (in a pooled buffer), consumed from `cin`.
fn upstream_head(c: &mut Client, ctx: &mut LoopContext, req: &RequestHead, upgrade: bool) -> Buf {
    let mut head = ctx.bufs.get();
    let Some(cin) = c.cin.as_mut() else {
        return head;
    };
    ctx.scratch.clear();
    rewrite::write_upstream_request(
        &mut ctx.scratch,
        req,
        cin.data(),
        &UpstreamRequest {
            client_ip: c.peer,
            proto: "http",
            framing: req.framing,
            connection: if upgrade {
                ConnectionOut::Upgrade
            } else {
                ConnectionOut::Omit
            },
            default_host: None,
            via: None,
        },
    );
    cin.consume(req.head_len);
    head.push_all(&ctx.scratch);
    head
}
