//! The response coming down: upstream bytes into `uin`, heads parsed (1xx relayed, a 101
//! turning the exchange into a tunnel, the final head rewritten for the client), then the body
//! relayed as framed (de-chunked for HTTP/1.0 clients).

use super::Client;
use super::exchange::{BodyLeft, Ex, Exchange, ReqInfo, Resp};
use crate::evloop::ReadResult;
use crate::http::rewrite::{self, ClientResponse, ConnectionOut};
use crate::http::{self, Framing, ResponseHead};
use crate::proxy::access_log::{Phase, Termination};
use crate::proxy::buffer::Buf;
use crate::proxy::context::LoopContext;
use crate::proxy::relay;

/// The client is gone (a write to it failed).
const GONE: Termination = Termination::ClientClosed;
/// The upstream's framing is broken.
const BROKE: Termination = Termination::WorkerBroke;

/// What parsing response heads led to.
pub(super) enum HeadOutcome {
    /// No complete final head yet.
    Pending,
    /// The final head is queued for the client; the body follows.
    Final,
    /// A 101 to an upgrade request: the exchange becomes a tunnel.
    Upgrade,
    /// No complete head in a full buffer: it grew (up to `max-header-bytes`), read again.
    Grew,
}

/// Which kind of response head was parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadKind {
    /// 101 to an upgrade request.
    Switch,
    /// Another 1xx.
    Interim,
    /// The final head.
    Final,
}

impl Exchange {
    /// Upstream -> `uin`, while there is room. Err on a read error (treated as EOF).
    pub(super) fn read_response(&mut self, ctx: &mut LoopContext) -> Result<bool, ()> {
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
    pub(super) fn parse_heads(
        &mut self,
        c: &mut Client,
        ctx: &mut LoopContext,
    ) -> Result<HeadOutcome, ()> {
        let backend = self.lease.backend();
        let x = &mut self.x;
        loop {
            let Some(uin) = x.uin.as_mut().filter(|u| !u.is_empty()) else {
                return Ok(HeadOutcome::Pending);
            };
            // Borrowed where it lies: binding the head by value would move (copy) all of it.
            let parsed = http::parse_response_head(uin.data(), x.req.is_head, &ctx.limits);
            let resp = match &parsed {
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
                        crate::sys::log::quote(ctx.backends[backend].id()),
                        crate::sys::log::quote(e.message())
                    );
                    return Err(());
                }
            };
            let kind = classify(&x.req, &mut x.interims, resp, uin, c, ctx, backend)?;
            let (mut out, close_client) =
                client_head(kind, resp, &x.req, x.body.done(), ctx.draining);
            if kind != HeadKind::Interim {
                out.request_id = c.rec.as_deref().map(|r| r.id.as_bytes());
            }
            let client_framing = out.framing;
            ctx.scratch.clear();
            // Interim heads go to HTTP/1.1 clients only (RFC 9110 15.2).
            let relayed = kind != HeadKind::Interim || x.req.minor == 1;
            if relayed {
                rewrite::write_client_response(&mut ctx.scratch, resp, uin.data(), &out);
                note_head_sent(c, kind, resp.status, ctx);
                c.cout
                    .get_or_insert_with(|| ctx.bufs.get())
                    .push_all(&ctx.scratch);
            }
            uin.consume(resp.head_len);
            match kind {
                HeadKind::Interim => x.interim_sent |= relayed,
                HeadKind::Switch => {
                    // Bytes after the 101 already belong to the new protocol.
                    let out = c.cout.get_or_insert_with(|| ctx.bufs.get());
                    out.push_all(uin.data());
                    uin.clear();
                    ctx.bufs.put_opt(&mut x.uin);
                    x.head.clear();
                    x.status = 101;
                    return Ok(HeadOutcome::Upgrade);
                }
                HeadKind::Final => {
                    x.close_client = close_client;
                    x.start_body(resp, client_framing);
                    x.head.clear();
                    return Ok(HeadOutcome::Final);
                }
            }
        }
    }

    /// Response body, `uin` -> client. Err(who ended it): the client is gone, or the
    /// upstream's framing is broken.
    pub(super) fn relay_body(
        &mut self,
        c: &mut Client,
        ctx: &mut LoopContext,
    ) -> Result<bool, Termination> {
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
                BodyLeft::Chunked(_) if *dechunk => match dechunk_step(left, uin, c, ctx)? {
                    Some(m) => {
                        moved |= m;
                        continue;
                    }
                    None => break,
                },
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
            let n = write_body(left, uin, &mut x.resp_ready, c)?;
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
}

impl Ex {
    /// The final head went to the client (framed `client_framing`): the body follows.
    fn start_body(&mut self, resp: &ResponseHead, client_framing: Framing) {
        self.status = resp.status;
        self.resp_keep_alive = resp.keep_alive;
        self.resp_ready = 0;
        self.resp = Resp::Body {
            left: BodyLeft::from_framing(resp.framing, 0),
            dechunk: resp.framing == Framing::Chunked && client_framing != Framing::Chunked,
        };
    }
}

/// Which kind of head `resp` is; Err for a 101 the request may not get (sent without
/// Upgrade, or to a protocol not allowed: the backend must pick one offered, all of which
/// were allowed) and past `max-interim-responses` 1xx (bounded: an endless stream of 1xx
/// would grow the client's output forever).
fn classify(
    req: &ReqInfo,
    interims: &mut u32,
    resp: &ResponseHead,
    uin: &Buf,
    c: &mut Client,
    ctx: &LoopContext,
    backend: usize,
) -> Result<HeadKind, ()> {
    if resp.is_switching_protocols() {
        let switched_to = resp.upgrade.map_or(&b""[..], |u| u.get(uin.data()));
        if !req.upgrade || !ctx.settings.allows_upgrade(switched_to) {
            crate::warn!(
                "upstream_bad_upgrade",
                "backend={} upgrade={}",
                crate::sys::log::quote(ctx.backends[backend].id()),
                crate::sys::log::quote(&String::from_utf8_lossy(switched_to))
            );
            return Err(());
        }
        return Ok(HeadKind::Switch);
    }
    if !resp.is_interim() {
        return Ok(HeadKind::Final);
    }
    *interims += 1;
    if *interims > ctx.settings.max_interim_responses {
        crate::warn!(
            "upstream_bad_response",
            "backend={} reason=\"more than {} interim responses\"",
            crate::sys::log::quote(ctx.backends[backend].id()),
            ctx.settings.max_interim_responses
        );
        c.blame(Termination::ProxyLimit, Phase::ResponseHead);
        return Err(());
    }
    Ok(HeadKind::Interim)
}

/// Notes a head written for the client (in `ctx.scratch`) on the request's record.
fn note_head_sent(c: &mut Client, kind: HeadKind, status: u16, ctx: &LoopContext) {
    let Some(r) = c.rec() else {
        return;
    };
    r.bytes_out += ctx.scratch.len() as u64;
    match kind {
        HeadKind::Interim => {}
        HeadKind::Switch => r.response_head(101, ctx.now),
        HeadKind::Final => {
            r.response_head(status, ctx.now);
            r.blame(Termination::WorkerBroke, Phase::ResponseBody);
        }
    }
}

/// Framing and `Connection` of the head the client gets for a response head of `kind`, and
/// (for the final head) whether the client connection closes after this response.
fn client_head<'a>(
    kind: HeadKind,
    resp: &ResponseHead,
    req: &ReqInfo,
    req_done: bool,
    draining: bool,
) -> (ClientResponse<'a>, bool) {
    let plain = |connection| ClientResponse {
        framing: Framing::None,
        connection,
        request_id: None,
    };
    match kind {
        HeadKind::Switch => (plain(ConnectionOut::Upgrade), false),
        HeadKind::Interim => (plain(ConnectionOut::Omit), false),
        HeadKind::Final => {
            let framing = rewrite::client_framing(resp, req.minor);
            let close = !req.keep_alive || draining || framing == Framing::Close || !req_done;
            let connection = if close {
                ConnectionOut::Close
            } else if req.minor == 0 {
                ConnectionOut::KeepAlive
            } else {
                ConnectionOut::Omit
            };
            (
                ClientResponse {
                    framing,
                    connection,
                    request_id: None,
                },
                close,
            )
        }
    }
}

/// HTTP/1.0 client of a chunked response: chunk data only, into `cout` (bounded by its
/// room). Some(moved) to go on, None when nothing more can be decoded now.
fn dechunk_step(
    left: &mut BodyLeft,
    uin: &mut Buf,
    c: &mut Client,
    ctx: &mut LoopContext,
) -> Result<Option<bool>, Termination> {
    let BodyLeft::Chunked(ch) = left else {
        return Ok(None);
    };
    let out = c.cout.get_or_insert_with(|| ctx.bufs.get());
    let take = out.room().min(uin.len());
    let mut given = 0;
    let p = ch
        .feed(&uin.data()[..take], &mut |d| {
            given += d.len();
            out.push(d);
        })
        .map_err(|_| BROKE)?;
    if let Some(r) = c.rec() {
        r.bytes_out += given as u64;
    }
    uin.consume(p.consumed);
    if p.done {
        *left = BodyLeft::Done;
    }
    if p.consumed == 0 && !p.done {
        return Ok(None);
    }
    Ok(Some(p.consumed > 0))
}

/// Whatever is queued for the client (the response head) and the `ready` body bytes of
/// `uin` in one write; the bytes written. Err when the client is gone.
fn write_body(
    left: &mut BodyLeft,
    uin: &mut Buf,
    ready: &mut usize,
    c: &mut Client,
) -> Result<usize, Termination> {
    let head = c.cout.as_ref().map_or(&[][..], |o| o.data());
    let queued = head.len();
    let n = c
        .sock
        .write2(head, &uin.data()[..*ready])
        .map_err(|_| GONE)?;
    if let Some(o) = c.cout.as_mut() {
        o.consume(n.min(queued));
    }
    let w = n.saturating_sub(queued);
    if let Some(r) = c.rec() {
        r.bytes_out += w as u64;
    }
    uin.consume(w);
    *ready -= w;
    match left {
        BodyLeft::Length(rem) => {
            *rem -= w as u64;
            if *rem == 0 {
                *left = BodyLeft::Done;
            }
        }
        BodyLeft::Chunked(ch) if ch.is_done() && *ready == 0 => *left = BodyLeft::Done,
        _ => {}
    }
    Ok(n)
}
