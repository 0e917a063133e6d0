//! `Queued`: a complete request head waiting in the loop's queue for a worker slot
//! (`max-conn-per-worker`). The head stays in `cin` (its spans point there) and the client is
//! not read meanwhile; the loop dispatches the oldest waiter when a slot frees, or answers it
//! 503 with `Retry-After` once `queue-timeout-ms` passed.

use super::exchange::ReqInfo;
use super::{Client, Progress, State, fail_with, head};
use crate::http::RequestHead;
use crate::proxy::access_log::{Phase, Termination};
use crate::proxy::context::LoopContext;

/// A request waiting for a worker slot: its parsed head and what the exchange will need.
pub(super) struct Queued {
    pub(super) req: RequestHead,
    pub(super) info: ReqInfo,
}

/// Every worker is at `max-conn-per-worker` (or others wait already): the request waits in
/// the loop's queue, or gets 503 with `Retry-After` when the queue is full.
pub(super) fn queue_request(
    c: &mut Client,
    ctx: &mut LoopContext,
    req: RequestHead,
    info: ReqInfo,
) -> (State, Progress) {
    ctx.no_worker += 1; // demand signal for the autoscaler (server.rs)
    if ctx.policies.enqueue(c.key, ctx.now).is_err() {
        c.blame(Termination::NoWorker, Phase::Queue);
        return fail_retry_after(c, ctx);
    }
    // The loop answers an expired wait; this deadline is a backstop past it.
    let backstop = ctx.settings.queue_timeout_ms.saturating_add(1000);
    c.set_deadline(ctx, backstop);
    (
        State::Queued(Box::new(Queued { req, info })),
        Progress::Idle,
    )
}

/// A slot is free: the waiting request leases an upstream connection.
pub(super) fn dispatch(c: &mut Client, ctx: &mut LoopContext, q: Queued) -> (State, Progress) {
    head::lease_exchange(c, ctx, &q.req, q.info)
}

/// The wait passed `queue-timeout-ms` (or the client left while waiting): out of the queue,
/// 503 with `Retry-After`.
pub(super) fn expire(c: &mut Client, ctx: &mut LoopContext) -> (State, Progress) {
    ctx.policies.leave_queue(c.key);
    c.blame(Termination::QueueTimeout, Phase::Queue);
    fail_retry_after(c, ctx)
}

/// The session closes while its request waits: out of the queue, its record ended.
pub(super) fn close(c: &mut Client, ctx: &mut LoopContext) {
    ctx.policies.leave_queue(c.key);
    let stop = if ctx.draining {
        Termination::ProxyStopping
    } else {
        Termination::ClientClosed
    };
    c.end_request(ctx, 0, (stop, Phase::Queue));
}

/// A 503 from the wait queue (full, or waited too long), with `Retry-After`.
fn fail_retry_after(c: &mut Client, ctx: &mut LoopContext) -> (State, Progress) {
    let secs = ctx.policies.retry_after_secs();
    fail_with(c, ctx, 503, Some(secs))
}
