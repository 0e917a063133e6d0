//! The request going up: the rewritten head (with the first body bytes already read, in one
//! write), then the body (Content-Length, or chunked and re-framed canonically), reading from
//! the client only while the upstream takes what was read (backpressure).

use super::Client;
use super::exchange::{BodyLeft, Ex, Exchange};
use crate::evloop::ReadResult;
use crate::http::ChunkedReframer;
use crate::proxy::buffer::Buf;
use crate::proxy::context::LoopContext;
use crate::proxy::relay::{self, TcpSock};

impl Exchange {
    /// Head then body, client -> upstream; whether anything moved. Err(status) for a request
    /// body the proxy refuses, Err(0) when the client vanished mid-request.
    pub(super) fn send_request(
        &mut self,
        c: &mut Client,
        ctx: &mut LoopContext,
    ) -> Result<bool, u16> {
        if self.x.up_write_failed {
            return Ok(false);
        }
        let up = self.lease.sock();
        let (moved, head_done) = self.x.send_head(up, c);
        if !head_done {
            return Ok(moved);
        }
        Ok(self.x.send_body(up, c, ctx)? || moved)
    }
}

impl Ex {
    /// Writes what is left of the head (with the first Content-Length body bytes when they
    /// are already read): (moved, the head is all sent). A failed write sets `up_write_failed`.
    fn send_head(&mut self, up: &mut TcpSock, c: &mut Client) -> (bool, bool) {
        let head = &self.head;
        if head.is_empty() {
            return (false, true);
        }
        let mut moved = false;
        if let (BodyLeft::Length(rem), Some(cin)) = (&mut self.body, c.cin.as_mut())
            && self.head_sent < head.len()
            && up.writable
            && !cin.is_empty()
        {
            let head_rem = &head[self.head_sent..];
            let body_n = (*rem).min(cin.len() as u64) as usize;
            let Ok(n) = up.write2(head_rem, &cin.data()[..body_n]) else {
                self.up_write_failed = true;
                return (moved, false);
            };
            let h = n.min(head_rem.len());
            self.head_sent += h;
            let b = n - h;
            if b > 0 {
                if let Some(r) = c.rec.as_deref_mut() {
                    r.bytes_in += b as u64;
                }
                cin.consume(b);
                *rem -= b as u64;
                self.body_started = true;
            }
            moved |= n > 0;
        }
        while self.head_sent < head.len() && up.writable {
            let Ok(n) = up.write(&head[self.head_sent..]) else {
                self.up_write_failed = true;
                return (moved, false);
            };
            self.head_sent += n;
            moved |= n > 0;
        }
        (moved, self.head_sent >= head.len())
    }

    /// The body, `cin` -> upstream, reading more from the client while the upstream takes
    /// it; whether anything moved. Err as [`Exchange::send_request`].
    fn send_body(
        &mut self,
        up: &mut TcpSock,
        c: &mut Client,
        ctx: &mut LoopContext,
    ) -> Result<bool, u16> {
        let mut moved = false;
        loop {
            if self.body.done() {
                return Ok(moved);
            }
            let cin = c.cin.get_or_insert_with(|| ctx.bufs.get());
            let Some(framed) = self.frame_body(up, cin)? else {
                return Ok(moved);
            };
            let Some(written) = self.write_body(up, cin) else {
                return Ok(moved);
            };
            if let Some(r) = c.rec.as_deref_mut() {
                r.bytes_in += (framed.taken + written) as u64;
            }
            let mut step = framed.taken > 0 || framed.written > 0 || written > 0;
            let finished = match &self.body {
                BodyLeft::Length(0) => true,
                BodyLeft::Reframe(rf) => rf.is_done() && rf.pending().is_empty(),
                _ => false,
            };
            if finished {
                self.body = BodyLeft::Done;
                ctx.bufs.put_if_empty(&mut c.cin);
                return Ok(true);
            }
            // More body to read from the client, if there is room (else backpressure).
            let cin = c.cin.get_or_insert_with(|| ctx.bufs.get());
            if c.sock.readable && cin.len() == self.body_ready && cin.room() > 0 {
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

    /// A Content-Length body: marks how many bytes at the front of `cin` are body
    /// (`body_ready`, written by `write_body`). A chunked body is re-framed and written here.
    /// Some(what the re-framing did), None when writing upstream failed (`up_write_failed`
    /// set); Err(status) for a body refused.
    fn frame_body(&mut self, up: &mut TcpSock, cin: &mut Buf) -> Result<Option<Reframed>, u16> {
        match &mut self.body {
            BodyLeft::Length(rem) => {
                self.body_ready = (*rem).min(cin.len() as u64) as usize;
                Ok(Some(Reframed::default()))
            }
            BodyLeft::Reframe(rf) => match send_reframed(rf, cin, up) {
                Ok(r) => {
                    self.body_seen += r.taken as u64;
                    self.body_started |= r.taken > 0 || r.written > 0;
                    Ok(Some(r))
                }
                Err(Some(status)) => Err(status),
                Err(None) => {
                    self.up_write_failed = true;
                    Ok(None)
                }
            },
            BodyLeft::Chunked(_) | BodyLeft::Done | BodyLeft::Close => {
                Ok(Some(Reframed::default()))
            }
        }
    }

    /// Writes the ready body bytes: Some(bytes written), None when the write failed (then
    /// `up_write_failed` is set).
    fn write_body(&mut self, up: &mut TcpSock, cin: &mut Buf) -> Option<usize> {
        if self.body_ready == 0 || !up.writable {
            return Some(0);
        }
        match up.write(&cin.data()[..self.body_ready]) {
            Ok(n) if n > 0 => {
                cin.consume(n);
                self.body_ready -= n;
                self.body_started = true;
                if let BodyLeft::Length(rem) = &mut self.body {
                    *rem -= n as u64;
                }
                Some(n)
            }
            Ok(_) => Some(0),
            Err(_) => {
                self.up_write_failed = true;
                None
            }
        }
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
