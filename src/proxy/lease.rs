//! The upstream lease: the one place a session gets a backend connection and the one place
//! it gives it back.
//!
//! [`UpstreamLease::start`] picks a backend not tried yet, connects (a pooled connection
//! unless `fresh`; a backend refusing at once is ejected and the next one tried, within
//! `retries`) and counts it in flight. [`UpstreamLease::end`] takes the outcome (a response
//! with its status and latency, a refusal, a broken exchange, or no verdict), records it on
//! the backend, lowers the in-flight count and pools or closes the connection. A lease is a
//! value consumed by `end` (or `upgrade`), so it cannot be ended twice; every holder ends it
//! on every path, including its own close.

use std::time::Instant;

use super::backends::Tried;
use super::context::LoopContext;
use super::relay::TcpSock;
use super::upstream::UpConn;
use crate::evloop::Key;

/// How an exchange with a backend ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A complete response: its status and when the request started (latency); the
    /// connection is pooled if `reusable` and the backend still takes requests.
    Answered {
        /// Final status.
        status: u16,
        /// When the request started.
        since: Instant,
        /// The connection may carry another request.
        reusable: bool,
    },
    /// The connect failed or timed out: counted as a failure, and the backend is ejected
    /// (passive health) until active checks bring it back.
    Refused(&'a str),
    /// No usable answer (response timeout, malformed or truncated response): counted as a
    /// failure.
    Broken,
    /// Ended with no verdict on the backend (the client left, a pooled connection turned out
    /// closed, a TCP session ended).
    Dropped,
}

/// Whether a new request may lease now or waits for a worker slot (`max-conn-per-worker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Lease now.
    Go,
    /// Queue behind the earlier waiters (or every worker is at its limit).
    Wait,
}

/// An upstream connection counted in flight on its backend until ended.
#[must_use = "a lease must be ended (end or upgrade), else its backend's in-flight count leaks"]
pub struct UpstreamLease {
    conn: UpConn,
}

impl UpstreamLease {
    /// Whether a new request (not a retry) may lease now: always without
    /// `max-conn-per-worker`; else only when nobody waits (arrival order) and some worker
    /// has a free slot (with no worker up at all it goes, and fails as it would unlimited).
    pub fn admit(ctx: &LoopContext) -> Admission {
        let hold = ctx.settings.hold_when_no_worker;
        if !ctx.policies.limited() && !hold {
            return Admission::Go;
        }
        if ctx.policies.queued() > 0
            || ctx.backends.all_busy(&ctx.policies)
            || hold && !ctx.backends.has_room(&ctx.policies)
        {
            Admission::Wait
        } else {
            Admission::Go
        }
    }

    /// Picks, connects and counts: a lease on a backend not in `tried` (which records every
    /// backend tried) for the session `owner`; None when no backend is left to try, or when
    /// this is a retry (`tried` not empty) and the retry budget is spent, or when we ran out
    /// of descriptors (then `ctx.out_of_fds` is set and the backend not counted as tried: it
    /// did nothing wrong).
    pub fn start(
        ctx: &mut LoopContext,
        owner: Key,
        tried: &mut Tried,
        fresh: bool,
    ) -> Option<UpstreamLease> {
        loop {
            if tried.len() > ctx.settings.retries as usize {
                return None;
            }
            // Issue 13: slow start's ramps and outlier ejection shape the pick; every request
            // counts in the retry budget, and a retry goes ahead only within it. `retrying`:
            // the backend whose failure this attempt retries.
            let retrying = tried.last();
            if retrying.is_none() {
                ctx.policies.on_request(ctx.now);
            }
            let b = ctx
                .backends
                .pick(ctx.settings.balance, tried, &mut ctx.policies, ctx.now)?;
            if let Some(failed) = retrying
                && !ctx.policies.try_retry(ctx.now, failed)
            {
                return None;
            }
            tried.push(b);
            match ctx
                .upstreams
                .open(&ctx.registry, &mut ctx.backends, b, owner, fresh)
            {
                Ok(conn) => {
                    if let Some(backend) = ctx.backends.get_mut(b) {
                        backend.lease_started();
                    }
                    return Some(UpstreamLease { conn });
                }
                Err(e) => {
                    if ctx.connect_failed(b, &e) {
                        tried.remove(b);
                        return None;
                    }
                }
            }
        }
    }

    /// The connection.
    pub fn conn(&self) -> &UpConn {
        &self.conn
    }

    /// The connection, mutably.
    pub fn conn_mut(&mut self) -> &mut UpConn {
        &mut self.conn
    }

    /// The connection's socket.
    pub fn sock(&mut self) -> &mut TcpSock {
        &mut self.conn.sock
    }

    /// Index of the leased backend.
    pub fn backend(&self) -> usize {
        self.conn.backend()
    }

    /// Ends the lease with `outcome`: recorded, no longer in flight, the connection pooled
    /// (a reusable answer) or closed.
    pub fn end(self, ctx: &mut LoopContext, outcome: Outcome<'_>) {
        let reusable = settle(ctx, self.conn.backend(), outcome);
        if reusable {
            ctx.upstreams.pool(
                &mut ctx.backends,
                self.conn,
                ctx.settings.upstream_pool_size,
            );
        } else {
            ctx.upstreams.close(self.conn);
        }
    }

    /// Ends the lease on a 101 to an upgrade request (recorded as the answer): the
    /// connection lives on as a tunnel, no longer counted in flight; the tunnel closes it.
    pub fn upgrade(self, ctx: &mut LoopContext, since: Instant) -> UpConn {
        let outcome = Outcome::Answered {
            status: 101,
            since,
            reusable: false,
        };
        settle(ctx, self.conn.backend(), outcome);
        self.conn
    }
}

/// Records `outcome` on `backend` and lowers its in-flight count; whether the connection may
/// go back to the pool.
fn settle(ctx: &mut LoopContext, backend: usize, outcome: Outcome<'_>) -> bool {
    match outcome {
        Outcome::Refused(why) => ctx.eject(backend, why),
        Outcome::Answered { status, .. } => ctx.note_answer(backend, status),
        // No usable answer: the client gets a 502 or 504 the worker caused.
        Outcome::Broken => ctx.note_answer(backend, 502),
        Outcome::Dropped => {}
    }
    let keep_none = ctx.draining || ctx.policies.is_ejected(backend);
    let Some(b) = ctx.backends.get_mut(backend) else {
        return false;
    };
    b.lease_ended();
    match outcome {
        Outcome::Answered {
            status,
            since,
            reusable,
        } => {
            b.record(status, since, ctx.now);
            reusable && !keep_none && b.eligible()
        }
        Outcome::Broken => {
            b.note_failure();
            false
        }
        Outcome::Refused(_) | Outcome::Dropped => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxySettings;

    fn context(addrs: &[std::net::SocketAddr]) -> (mio::Poll, LoopContext) {
        LoopContext::for_tests(addrs, ProxySettings::default())
    }

    fn owner() -> Key {
        crate::evloop::Slab::<()>::new().insert(())
    }

    #[test]
    fn answered_lease_pools_and_the_next_reuses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (_poll, mut ctx) = context(&[listener.local_addr().unwrap()]);
        let lease = UpstreamLease::start(&mut ctx, owner(), &mut Tried::default(), false).unwrap();
        assert_eq!(ctx.backends.metrics(&ctx.policies)[0].in_flight, 1);
        let since = ctx.now;
        let outcome = Outcome::Answered {
            status: 200,
            since,
            reusable: true,
        };
        lease.end(&mut ctx, outcome);
        let m = &ctx.backends.metrics(&ctx.policies)[0];
        assert_eq!((m.in_flight, m.responses[1]), (0, 1));
        assert_eq!(ctx.backends[0].pooled(), 1);
        let again = UpstreamLease::start(&mut ctx, owner(), &mut Tried::default(), false).unwrap();
        assert!(again.conn().reused());
        assert_eq!(ctx.backends[0].pooled(), 0);
        again.end(&mut ctx, Outcome::Dropped);
        assert_eq!(ctx.backends.metrics(&ctx.policies)[0].in_flight, 0);
        assert_eq!(ctx.backends[0].pooled(), 0, "a dropped lease is not pooled");
    }

    #[test]
    fn refused_lease_ejects_and_broken_counts_a_failure() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (_poll, mut ctx) = context(&[a.local_addr().unwrap(), b.local_addr().unwrap()]);
        let mut tried = Tried::default();
        let first = UpstreamLease::start(&mut ctx, owner(), &mut tried, true).unwrap();
        let refused = first.backend();
        first.end(&mut ctx, Outcome::Refused("connect timeout"));
        assert!(!ctx.backends[refused].is_healthy());
        let second = UpstreamLease::start(&mut ctx, owner(), &mut tried, true).unwrap();
        assert_ne!(second.backend(), refused);
        let other = second.backend();
        second.end(&mut ctx, Outcome::Broken);
        let m = ctx.backends.metrics(&ctx.policies);
        assert_eq!((m[refused].failures, m[other].failures), (1, 1));
        assert!(m.iter().all(|m| m.in_flight == 0));
        assert!(
            ctx.backends[other].is_healthy(),
            "a broken answer does not eject"
        );
        // Both tried: nothing left.
        assert!(UpstreamLease::start(&mut ctx, owner(), &mut tried, true).is_none());
    }
}
