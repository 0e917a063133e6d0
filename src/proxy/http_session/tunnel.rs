//! `Tunnel`: raw bytes both ways after a 101, each direction a [`Half`]; closed once both
//! are done.

use super::exchange::Exchange;
use super::{Client, Progress};
use crate::proxy::access_log::{Phase, Termination};
use crate::proxy::context::LoopContext;
use crate::proxy::relay::Half;
use crate::proxy::upstream::UpConn;

/// A tunnel after a 101: client bytes go up through `c2u`, upstream bytes down through `u2c`.
pub(super) struct Tunnel {
    pub(super) up: UpConn,
    c2u: Half,
    u2c: Half,
}

impl Tunnel {
    /// The exchange got a 101 to its upgrade: the lease ends (the 101 is its answer) and its
    /// connection carries the tunnel; bytes already read on either side go first.
    pub(super) fn open(ex: Exchange, c: &mut Client, ctx: &mut LoopContext) -> Tunnel {
        let (lease, started) = ex.into_lease(ctx);
        let up = lease.upgrade(ctx, started);
        c.end_request(ctx, 101, (Termination::Done, Phase::Complete));
        c.set_deadline(ctx, ctx.settings.tunnel_timeout_ms);
        Tunnel {
            up,
            c2u: Half::new(c.cin.take()),
            u2c: Half::new(c.cout.take()),
        }
    }

    /// Relays both ways, in place.
    pub(super) fn step(&mut self, c: &mut Client, ctx: &mut LoopContext) -> Progress {
        let a = self
            .c2u
            .relay(&mut c.sock, &mut self.up.sock, &mut ctx.bufs);
        let b = self
            .u2c
            .relay(&mut self.up.sock, &mut c.sock, &mut ctx.bufs);
        let moved = match (a, b) {
            (Ok(a), Ok(b)) => a || b,
            _ => return Progress::Close,
        };
        if self.c2u.finished() && self.u2c.finished() {
            return Progress::Close;
        }
        if moved {
            c.set_deadline(ctx, ctx.settings.tunnel_timeout_ms);
            Progress::Moved
        } else {
            Progress::Idle
        }
    }

    /// Frees the buffers and closes the upstream connection.
    pub(super) fn close(self, ctx: &mut LoopContext) {
        let Tunnel {
            up,
            mut c2u,
            mut u2c,
        } = self;
        ctx.bufs.put_opt(&mut c2u.buf);
        ctx.bufs.put_opt(&mut u2c.buf);
        ctx.upstreams.close(up);
    }
}
