//! `Closing`: the last response flushed, the write side shut down, then input discarded
//! until the client closes or time runs out (a lingering close, so a client still sending
//! does not get a reset that destroys the response).

use super::{Client, Progress};
use crate::evloop::linger::{self, Discard};
use crate::proxy::context::LoopContext;

/// Flushes what is owed, shuts the write side (`shut`: the state's, in place), then discards
/// input until the client closes.
pub(super) fn step_closing(c: &mut Client, ctx: &mut LoopContext, shut: &mut bool) -> Progress {
    if let Some(p) = c.flush_owed(ctx) {
        return p;
    }
    if !*shut {
        if c.sock.shutdown_write().is_err() {
            return Progress::Close;
        }
        *shut = true;
        ctx.bufs.put_opt(&mut c.cin);
    }
    // Lingering close: discard what the client still sends until it closes or time runs out.
    match linger::discard_input(&mut c.sock) {
        Discard::Closed => Progress::Close,
        Discard::Open => Progress::Idle,
    }
}
