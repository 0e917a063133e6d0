//! TCP (L4) mode: one client connection relayed to one backend chosen round-robin (or by the
//! configured balance) per connection. States: Connecting (a failed connect is retried on the
//! next backend) then Relay (two [`Half`]s; a half-close on one side is propagated as
//! `shutdown(Write)` on the other; closed once both directions are done).

use std::time::Instant;

use mio::event::Event;

use super::backends::Tried;
use super::context::{LoopContext, TimerKey};
use super::http_session::Flow;
use super::lease::{Outcome, UpstreamLease};
use super::relay::{Half, TcpSock};
use crate::evloop::{Deadline, Key};

/// A TCP-mode client connection.
pub struct TcpSession {
    key: Key,
    client: TcpSock,
    up: Option<UpstreamLease>,
    tried: Tried,
    c2u: Half,
    u2c: Half,
    deadline: Deadline,
}

impl TcpSession {
    /// Starts relaying `client` (the loop slab entry `key`); None when no backend can be
    /// tried (the caller closes the client at once).
    pub fn new(ctx: &mut LoopContext, key: Key, client: TcpSock) -> Option<TcpSession> {
        let mut s = TcpSession {
            key,
            client,
            up: None,
            tried: Tried::default(),
            c2u: Half::new(None),
            u2c: Half::new(None),
            deadline: Deadline::none(),
        };
        if !s.connect(ctx) {
            return None;
        }
        Some(s)
    }

    fn set_deadline(&mut self, ctx: &mut LoopContext, ms: u64) {
        let at = ctx.after_ms(ms);
        self.deadline
            .set(&mut ctx.timers, at, TimerKey::Entry(self.key));
    }

    /// Leases a connection to the next untried backend; false when none is left.
    fn connect(&mut self, ctx: &mut LoopContext) -> bool {
        // Never a pooled connection: a TCP stream is not reusable.
        match UpstreamLease::start(ctx, self.key, &mut self.tried, true) {
            Some(lease) => {
                self.up = Some(lease);
                self.set_deadline(ctx, ctx.settings.connect_timeout_ms);
                true
            }
            None => false,
        }
    }

    /// The connect failed (`why`): the backend is ejected and the next one tried; false when
    /// none is left.
    fn reconnect(&mut self, ctx: &mut LoopContext, why: &str) -> bool {
        if let Some(lease) = self.up.take() {
            lease.end(ctx, Outcome::Refused(why));
        }
        self.connect(ctx)
    }

    /// The session's deadline.
    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// Readiness on the client socket.
    pub fn client_event(&mut self, ctx: &mut LoopContext, ev: &Event) -> Flow {
        self.client.note(ev);
        self.run(ctx)
    }

    /// Readiness on the upstream socket.
    pub fn upstream_event(&mut self, ctx: &mut LoopContext, ev: &Event) -> Flow {
        if let Some(up) = self.up.as_mut() {
            up.sock().note(ev);
        }
        self.run(ctx)
    }

    /// A timer armed by this session fired.
    pub fn timer(&mut self, ctx: &mut LoopContext, fired_at: Instant) -> Flow {
        let k = TimerKey::Entry(self.key);
        if !self.deadline.fire(&mut ctx.timers, fired_at, ctx.now, k) {
            return Flow::Keep;
        }
        match self.up.as_ref() {
            Some(up) if !up.conn().connected() => {
                if !self.reconnect(ctx, "connect timeout") {
                    return Flow::Close;
                }
                Flow::Keep
            }
            _ => Flow::Close,
        }
    }

    fn run(&mut self, ctx: &mut LoopContext) -> Flow {
        loop {
            let Some(up) = self.up.as_mut() else {
                return Flow::Close;
            };
            if !up.conn().connected() {
                match up.conn_mut().poll_connect() {
                    Ok(true) => self.set_deadline(ctx, ctx.settings.tunnel_timeout_ms),
                    Ok(false) => return Flow::Keep,
                    Err(e) => {
                        if !self.reconnect(ctx, &e.to_string()) {
                            return Flow::Close;
                        }
                        continue;
                    }
                }
            }
            let Some(up) = self.up.as_mut() else {
                return Flow::Close;
            };
            let a = self.c2u.relay(&mut self.client, up.sock(), &mut ctx.bufs);
            let b = self.u2c.relay(up.sock(), &mut self.client, &mut ctx.bufs);
            let moved = match (a, b) {
                (Ok(a), Ok(b)) => a || b,
                _ => return Flow::Close,
            };
            if self.c2u.finished() && self.u2c.finished() {
                return Flow::Close;
            }
            if moved {
                self.set_deadline(ctx, ctx.settings.tunnel_timeout_ms);
            }
            return Flow::Keep;
        }
    }

    /// Frees everything (the loop counts the connection closed).
    pub fn close(mut self, ctx: &mut LoopContext) {
        if let Some(lease) = self.up.take() {
            lease.end(ctx, Outcome::Dropped);
        }
        ctx.bufs.put_opt(&mut self.c2u.buf);
        ctx.bufs.put_opt(&mut self.u2c.buf);
    }
}
