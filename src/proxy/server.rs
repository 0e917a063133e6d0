//! The loop: one thread, one `mio::Poll`. Reserved tokens for the listener, the control
//! channel and signals; every other token names an entry of the loop's slab (a client
//! session or a health check) or an upstream connection (`tokens` has the layout). Reading
//! `run` tells everything the loop serves.

use std::io;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use super::LoopInputs;
use super::access_log::AccessLog;
use super::backends::{Admin, Backends};
use super::buffer;
use super::context::{LoopContext, TimerKey};
use super::control::{BackendSpec, Down, QueueFigures, Up};
use super::health::{self, HealthCheck};
use super::http_session::{Flow, HttpSession};
use super::tcp_session::TcpSession;
use super::tokens::{self, CONTROL, LISTENER, SIGNALS, Target};
use crate::config::Mode;
use crate::evloop::{BadLine, Deadline, Key, LineChannel, Slab, Sock};
use crate::sys::signals::Signals;

/// How long an idle keep-alive connection stays open once a drain starts (bounded by the
/// drain timeout), so a request already on its way is answered rather than reset.
const DRAIN_IDLE_GRACE_MS: u64 = 1000;
/// Pause before accepting again after an accept error (out of descriptors...).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How often metrics go up the control channel.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Least time between two `Up::Demand` signals.
const DEMAND_EVERY: Duration = Duration::from_millis(100);
/// Unsent control output beyond which metrics reports are skipped (the supervisor is stuck).
const MAX_CONTROL_BACKLOG: usize = 1024 * 1024;

/// This end of the control channel: receives from the supervisor, sends up to it.
type Control = LineChannel<Down, Up>;

/// What an entry of the loop's slab is.
enum Entry {
    /// An HTTP client connection (its token is the client socket's).
    Http(Box<HttpSession>),
    /// A TCP-mode client connection.
    Tcp(Box<TcpSession>),
    /// An active health check.
    Health(Box<HealthCheck>),
}

impl Entry {
    /// The deadline of the session or check in this entry.
    fn deadline(&self) -> &Deadline {
        match self {
            Entry::Http(h) => h.deadline(),
            Entry::Tcp(t) => t.deadline(),
            Entry::Health(hc) => hc.deadline(),
        }
    }
}

/// One LB loop.
pub struct Server {
    name: String,
    poll: Poll,
    /// Sessions and health checks; an entry is taken out while it runs.
    slab: Slab<Entry>,
    ctx: LoopContext,
    listener: TcpListener,
    listening: bool,
    /// The listener reported readiness we have not used up (at the connection limit).
    accept_pending: bool,
    control: Option<Control>,
    signals: Signals,
    drain_timeout_ms: u64,
    drain_deadline: Option<Instant>,
    next_metrics: Instant,
    /// Next look at the spare lists (`buffer::TRIM_EVERY`).
    next_trim: Instant,
    /// Earliest next `Up::Demand`.
    next_demand: Instant,
    /// After an accept error (EMFILE...): when to try again.
    accept_retry: Option<Instant>,
}

impl Server {
    /// Sets up the poll, registers the listener, control channel and signals.
    pub fn new(inputs: LoopInputs) -> io::Result<Server> {
        let poll = Poll::new()?;
        inputs.listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(inputs.listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let control = match inputs.control {
            Some(s) => {
                let mut ctl = Control::new(s)?;
                ctl.register(poll.registry(), CONTROL)?;
                Some(ctl)
            }
            None => None,
        };
        let mut signals = Signals::new(&[SIGTERM, SIGINT, SIGUSR1])?;
        signals.register(poll.registry(), SIGNALS)?;
        let registry = poll.registry().try_clone()?;
        let backends = Backends::new(&inputs.backends);
        let mut ctx = LoopContext::new(registry, inputs.settings, backends);
        let log = ctx.access_log.settings().clone();
        if log.path.is_some() {
            ctx.access_log = AccessLog::open(log, ctx.now)?;
        }
        for i in 0..ctx.backends.len() {
            health::schedule_first(&mut ctx, i);
        }
        Ok(Server {
            name: inputs.name,
            poll,
            slab: Slab::new(),
            ctx,
            listener,
            listening: true,
            accept_pending: true,
            control,
            signals,
            drain_timeout_ms: inputs.drain_timeout_ms,
            drain_deadline: None,
            next_metrics: Instant::now() + METRICS_EVERY,
            next_trim: Instant::now() + buffer::TRIM_EVERY,
            next_demand: Instant::now(),
            accept_retry: None,
        })
    }

    /// Runs until drained; returns the exit code.
    pub fn run(mut self) -> i32 {
        crate::info!(
            "lb_started",
            "name={} listen={} mode={:?} backends={}",
            crate::sys::log::quote(&self.name),
            self.listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            self.ctx.settings.mode,
            self.ctx.backends.len()
        );
        let mut events = Events::with_capacity(1024);
        loop {
            self.ctx.now = Instant::now();
            if self.draining_done() {
                self.ctx.access_log.flush(self.ctx.now);
                crate::info!("lb_stopped", "name={}", crate::sys::log::quote(&self.name));
                return 0;
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                crate::error!(
                    "poll_failed",
                    "error={}",
                    crate::sys::log::quote(&e.to_string())
                );
                return 1;
            }
            self.ctx.now = Instant::now();
            for ev in events.iter() {
                match tokens::target(ev.token()) {
                    Target::Reserved(LISTENER) => {
                        self.accept_pending = true;
                        self.accept();
                    }
                    Target::Reserved(CONTROL) => self.control_event(ev),
                    Target::Reserved(SIGNALS) => self.on_signals(),
                    Target::Reserved(_) => {}
                    Target::Entry(key) => self.entry_event(key, ev),
                    Target::Upstream(key) => self.upstream_event(key, ev),
                }
            }
            self.run_timers();
            self.ctx.restore_ejected();
            self.serve_queue();
            self.ctx.access_log.tick(self.ctx.now);
            if self
                .accept_retry
                .is_some_and(|t| t <= self.ctx.now && self.listening)
            {
                self.accept_retry = None;
                self.accept_pending = true;
            }
            if self.accept_pending {
                self.accept();
            }
            if self.ctx.no_worker > 0 && self.ctx.now >= self.next_demand {
                self.send_demand();
            }
            if self.ctx.now >= self.next_metrics {
                self.next_metrics = self.ctx.now + METRICS_EVERY;
                self.send_metrics();
            }
            if self.ctx.now >= self.next_trim {
                self.next_trim = self.ctx.now + buffer::TRIM_EVERY;
                self.trim_spares();
            }
            self.flush_control();
        }
    }

    /// Frees the spares a burst left (after a quiet window), then hands the freed pages back
    /// to the kernel once, after every list was trimmed (what is freed after the release
    /// would stay resident until the next burst's).
    fn trim_spares(&mut self) {
        let now = self.ctx.now;
        let buffers = self.ctx.bufs.trim(now);
        let records = self.ctx.records.trim(now);
        let exchanges = self.ctx.exchanges.trim(now);
        if buffers || records || exchanges {
            buffer::release_free_pages();
        }
    }

    fn poll_timeout(&self) -> Duration {
        let mut next = self.next_metrics;
        if self.ctx.has_spares_to_trim() {
            // Woken up for it only while there is something to trim: RSS settles within
            // half a second of a burst's end; an idle loop still wakes once a second.
            next = next.min(self.next_trim);
        }
        if self.ctx.no_worker > 0 {
            next = next.min(self.next_demand);
        }
        if let Some(t) = self.ctx.timers.next() {
            next = next.min(t);
        }
        if let Some(d) = self.drain_deadline {
            next = next.min(d);
        }
        if let Some(t) = self.accept_retry {
            next = next.min(t);
        }
        if let Some(t) = self.ctx.access_log.next_flush() {
            next = next.min(t);
        }
        if let Some(t) = self.ctx.policies.next_return() {
            next = next.min(t);
        }
        if let Some(t) = self.ctx.policies.next_queue_expiry() {
            next = next.min(t);
        }
        // Round up to the next millisecond so a timer is never polled for 0 ms repeatedly.
        next.saturating_duration_since(self.ctx.now) + Duration::from_micros(500)
    }

    /// SIGUSR1 reopens the access-log file (logrotate's convention); the others drain.
    fn on_signals(&mut self) {
        for sig in self.signals.pending() {
            if sig == SIGUSR1 {
                let outcome = self.ctx.access_log.reopen(self.ctx.now);
                match outcome {
                    Ok(()) => crate::info!(
                        "access_log_reopened",
                        "name={}",
                        crate::sys::log::quote(&self.name)
                    ),
                    Err(e) => crate::error!(
                        "access_log_reopen_failed",
                        "error={}",
                        crate::sys::log::quote(&e.to_string())
                    ),
                }
                continue;
            }
            crate::info!("signal", "signal={} action=drain", sig);
            self.start_drain(self.drain_timeout_ms);
        }
    }

    fn draining_done(&mut self) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        let flushed = self.control.as_ref().is_none_or(|c| c.queued() == 0);
        if self.ctx.connections == 0 && flushed {
            return true;
        }
        if self.ctx.now >= deadline {
            crate::warn!(
                "drain_timeout",
                "name={} connections_left={}",
                crate::sys::log::quote(&self.name),
                self.ctx.connections
            );
            return true;
        }
        false
    }

    fn accept(&mut self) {
        // A connect ran out of descriptors: new clients would only get 503 and take the
        // descriptors the exchanges in progress need; pause like after an accept error.
        if std::mem::take(&mut self.ctx.out_of_fds) && self.accept_retry.is_none() {
            self.accept_retry = Some(self.ctx.now + ACCEPT_RETRY);
        }
        if self.accept_retry.is_some() {
            self.accept_pending = false;
            return;
        }
        while self.listening && self.ctx.connections < self.ctx.settings.max_connections {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let mut sock = Sock::new(stream);
                    let key = self.slab.reserve();
                    if sock
                        .register(&self.ctx.registry, tokens::entry(key))
                        .is_err()
                    {
                        self.slab.remove(key);
                        continue;
                    }
                    let entry = match self.ctx.settings.mode {
                        Mode::Http => {
                            let s = HttpSession::new(&mut self.ctx, key, sock, peer);
                            Entry::Http(Box::new(s))
                        }
                        Mode::Tcp => match TcpSession::new(&mut self.ctx, key, sock) {
                            Some(s) => Entry::Tcp(Box::new(s)),
                            None => {
                                // No backend can be tried: the client is closed at once.
                                self.slab.remove(key);
                                continue;
                            }
                        },
                    };
                    self.ctx.connections += 1;
                    // The key was reserved just above, so the entry takes it.
                    let _ = self.slab.put(key, entry);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays queued; retried after a pause
                    // or when a connection closes, never in a tight loop.
                    crate::warn!(
                        "accept_failed",
                        "error={} retry_ms={}",
                        crate::sys::log::quote(&e.to_string()),
                        ACCEPT_RETRY.as_millis()
                    );
                    self.accept_pending = false;
                    self.accept_retry = Some(self.ctx.now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn entry_event(&mut self, key: Key, ev: &Event) {
        match self.slab.get(key) {
            Some(Entry::Http(_) | Entry::Tcp(_)) => self.run_session(key, |s, ctx| match s {
                SessionRef::Http(h) => h.client_event(ctx, ev),
                SessionRef::Tcp(t) => t.client_event(ctx, ev),
            }),
            Some(Entry::Health(_)) => {
                if let Some(Entry::Health(hc)) = self.slab.take(key) {
                    let hc = hc.event(&mut self.ctx, ev);
                    self.settle_check(key, hc);
                }
            }
            None => {}
        }
    }

    fn upstream_event(&mut self, key: Key, ev: &Event) {
        match self.ctx.upstreams.owner(key) {
            Some(owner) => self.run_session(owner, |s, ctx| match s {
                SessionRef::Http(h) => h.upstream_event(ctx, ev),
                SessionRef::Tcp(t) => t.upstream_event(ctx, ev),
            }),
            None => self
                .ctx
                .upstreams
                .pooled_event(&mut self.ctx.backends, key, ev),
        }
    }

    /// Puts a health check back after it ran, or frees its entry once it is over.
    fn settle_check(&mut self, key: Key, hc: Option<Box<HealthCheck>>) {
        match hc {
            Some(hc) => {
                let _ = self.slab.put(key, Entry::Health(hc));
            }
            None => {
                self.slab.remove(key);
            }
        }
    }

    /// Takes the session `key` out of the slab, runs `f`, and puts it back or closes it.
    fn run_session(&mut self, key: Key, f: impl FnOnce(SessionRef<'_>, &mut LoopContext) -> Flow) {
        let flow = match self.slab.take(key) {
            Some(Entry::Http(mut h)) => {
                let flow = f(SessionRef::Http(&mut h), &mut self.ctx);
                if flow == Flow::Keep {
                    let _ = self.slab.put(key, Entry::Http(h));
                } else {
                    h.close(&mut self.ctx);
                }
                flow
            }
            Some(Entry::Tcp(mut t)) => {
                let flow = f(SessionRef::Tcp(&mut t), &mut self.ctx);
                if flow == Flow::Keep {
                    let _ = self.slab.put(key, Entry::Tcp(t));
                } else {
                    t.close(&mut self.ctx);
                }
                flow
            }
            Some(other) => {
                let _ = self.slab.put(key, other);
                Flow::Keep
            }
            None => Flow::Keep,
        };
        if flow == Flow::Close {
            self.slab.remove(key);
            self.ctx.connections = self.ctx.connections.saturating_sub(1);
            self.accept_pending |= self.listening;
        }
    }

    fn run_timers(&mut self) {
        self.sweep_timers();
        while let Some((at, key)) = self.ctx.timers.pop_due(self.ctx.now) {
            match key {
                TimerKey::Entry(key) => match self.slab.get(key) {
                    Some(Entry::Http(_) | Entry::Tcp(_)) => {
                        self.run_session(key, |s, ctx| match s {
                            SessionRef::Http(h) => h.timer(ctx, at),
                            SessionRef::Tcp(t) => t.timer(ctx, at),
                        })
                    }
                    Some(Entry::Health(_)) => {
                        if let Some(Entry::Health(hc)) = self.slab.take(key) {
                            let hc = hc.timer(&mut self.ctx, at);
                            self.settle_check(key, hc);
                        }
                    }
                    None => {}
                },
                TimerKey::Health(b, generation) => {
                    if let Some(starting) = health::start(&mut self.ctx, b, generation) {
                        let key = self.slab.reserve();
                        let hc = starting.register(&mut self.ctx, key).map(Box::new);
                        self.settle_check(key, hc);
                    }
                }
            }
        }
    }

    /// The wait queue (`max-conn-per-worker`): waiters past `queue-timeout-ms` are answered
    /// 503, then the oldest waiters go to the workers with a free slot, in arrival order.
    fn serve_queue(&mut self) {
        if self.ctx.policies.queued() == 0 {
            return;
        }
        while let Some(left) = self.ctx.policies.dequeue_expired(self.ctx.now) {
            self.run_session(left.key, |s, ctx| match s {
                SessionRef::Http(h) => h.queue_expired(ctx, left.waited),
                SessionRef::Tcp(_) => Flow::Keep,
            });
        }
        while self.ctx.policies.queued() > 0 && self.ctx.backends.has_room(&self.ctx.policies) {
            let Some(left) = self.ctx.policies.dequeue(self.ctx.now) else {
                break;
            };
            self.run_session(left.key, |s, ctx| match s {
                SessionRef::Http(h) => h.dispatch(ctx, left.waited),
                SessionRef::Tcp(_) => Flow::Keep,
            });
        }
    }

    /// Drops the deadline entries nobody can use any more once the heap has doubled (closed
    /// connections' entries would otherwise stay for a whole timeout).
    fn sweep_timers(&mut self) {
        let slab = &self.slab;
        let LoopContext {
            timers, backends, ..
        } = &mut self.ctx;
        timers.sweep(|at, key| match *key {
            TimerKey::Entry(key) => slab.get(key).is_some_and(|e| e.deadline().is_armed_at(at)),
            TimerKey::Health(b, generation) => backends
                .get(b)
                .is_some_and(|b| b.generation() == generation && b.admin() != Admin::Removed),
        });
    }

    /// Stops accepting and closes idle connections; the loop exits once the rest finished or
    /// `timeout_ms` passed.
    fn start_drain(&mut self, timeout_ms: u64) {
        if self.drain_deadline.is_none() {
            crate::info!(
                "drain_started",
                "name={} connections={} timeout_ms={}",
                crate::sys::log::quote(&self.name),
                self.ctx.connections,
                timeout_ms
            );
        }
        let deadline = self.ctx.after_ms(timeout_ms);
        self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
        self.ctx.draining = true;
        if self.listening {
            // Only deregistered: the listening socket's other owners keep accepting.
            let _ = self.poll.registry().deregister(&mut self.listener);
            self.listening = false;
            self.accept_pending = false;
        }
        for i in 0..self.ctx.backends.len() {
            self.ctx.close_pool(i);
        }
        // Idle keep-alive connections are not closed at once: a client may have sent its next
        // request already (still unread in the kernel) and closing would reset it. They get a
        // short grace: a request arriving meanwhile is answered with `Connection: close`; the
        // rest close silently when it ends.
        let grace = DRAIN_IDLE_GRACE_MS.min(timeout_ms);
        for (_, entry) in self.slab.iter_mut() {
            if let Entry::Http(h) = entry
                && h.is_idle()
            {
                h.drain_idle(&mut self.ctx, grace);
            }
        }
    }

    fn control_event(&mut self, ev: &Event) {
        let Some(ctl) = self.control.as_mut() else {
            return;
        };
        ctl.note(ev);
        for msg in ctl.receive() {
            self.handle_down(msg);
        }
        self.check_control();
    }

    /// A closed control channel (EOF, error, over-long line) is dropped and starts a drain:
    /// the supervisor is gone or no longer understood.
    fn check_control(&mut self) {
        if let Some(mut ctl) = self.control.take_if(|c| c.is_closed()) {
            ctl.deregister(self.poll.registry());
            crate::info!(
                "control_closed",
                "name={} action=drain",
                crate::sys::log::quote(&self.name)
            );
            self.start_drain(self.drain_timeout_ms);
        }
    }

    fn handle_down(&mut self, msg: Result<Down, BadLine>) {
        let msg = match msg {
            Ok(m) => m,
            Err(bad) => {
                crate::warn!(
                    "control_bad_message",
                    "error={}",
                    crate::sys::log::quote(&bad.error)
                );
                self.send_up(&Up::Ack {
                    seq: bad.seq.unwrap_or(0),
                    ok: false,
                    error: Some(bad.error),
                });
                return;
            }
        };
        match msg {
            Down::Backends { seq, backends } => {
                self.apply_backends(&backends);
                crate::info!(
                    "backends_updated",
                    "name={} active={}",
                    crate::sys::log::quote(&self.name),
                    self.ctx.backends.active()
                );
                self.send_up(&Up::Ack {
                    seq,
                    ok: true,
                    error: None,
                });
            }
            Down::Settings { seq, settings } => {
                if settings.mode != self.ctx.settings.mode {
                    self.send_up(&Up::Ack {
                        seq,
                        ok: false,
                        error: Some(
                            "mode cannot change in a running LB child; replace the child".into(),
                        ),
                    });
                    return;
                }
                self.ctx.set_settings(*settings);
                self.send_up(&Up::Ack {
                    seq,
                    ok: true,
                    error: None,
                });
                // A higher connection limit may let queued connections in.
                self.accept_pending |= self.listening;
            }
            Down::Drain { seq, timeout_ms } => {
                self.send_up(&Up::Ack {
                    seq,
                    ok: true,
                    error: None,
                });
                self.start_drain(timeout_ms);
            }
        }
    }

    /// A new backend set: pools of the backends leaving closed, checks of the new ones
    /// scheduled, policy state of changed slots forgotten; a backend joining a set that
    /// already serves (or a new server under a known id) ramps up (slow start).
    fn apply_backends(&mut self, backends: &[BackendSpec]) {
        let serving = self.ctx.backends.active() > 0;
        let change = self.ctx.backends.apply(backends);
        for &i in change.removed.iter().chain(&change.readdressed) {
            self.ctx.policies.reset(i);
        }
        for i in change.deactivated {
            self.ctx.close_pool(i);
        }
        for &i in &change.readdressed {
            self.ctx.policies.begin_ramp(i, self.ctx.now);
        }
        for i in change.added {
            self.ctx.policies.reset(i);
            if serving {
                self.ctx.policies.begin_ramp(i, self.ctx.now);
            }
            health::schedule_first(&mut self.ctx, i);
        }
    }

    fn send_up(&mut self, msg: &Up) {
        if let Some(ctl) = self.control.as_mut()
            && let Err(e) = ctl.send(msg)
            && !ctl.is_closed()
        {
            crate::warn!(
                "control_send_failed",
                "error={}",
                crate::sys::log::quote(&e.to_string())
            );
        }
    }

    fn send_metrics(&mut self) {
        let Some(ctl) = self.control.as_ref() else {
            return;
        };
        if ctl.queued() > MAX_CONTROL_BACKLOG {
            return;
        }
        let msg = Up::Metrics {
            connections: self.ctx.connections as u64,
            backends: self.ctx.backends.metrics(&self.ctx.policies),
            access_log_dropped: self.ctx.access_log.dropped(),
            queued: self.ctx.policies.queued() as u64,
            retry_budget_refused: self.ctx.policies.retries_refused(),
            queue: self.queue_figures(),
        };
        self.send_up(&msg);
    }

    /// The wait queue's cumulative figures for the metrics report.
    fn queue_figures(&self) -> QueueFigures {
        let s = self.ctx.policies.queue_stats();
        QueueFigures {
            dispatched: s.dispatched,
            expired: s.expired,
            rejected: s.rejected,
            wait_ms: u64::try_from(s.wait_total.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Tells the supervisor requests found no worker (at most every [`DEMAND_EVERY`]).
    fn send_demand(&mut self) {
        self.next_demand = self.ctx.now + DEMAND_EVERY;
        let queued = std::mem::take(&mut self.ctx.no_worker);
        self.send_up(&Up::Demand { queued });
    }

    fn flush_control(&mut self) {
        if let Some(ctl) = self.control.as_mut()
            && !ctl.is_closed()
        {
            // A failed write closes the channel (checked below).
            let _ = ctl.flush();
        }
        self.check_control();
    }
}

/// A session borrowed out of the slab.
enum SessionRef<'a> {
    Http(&'a mut HttpSession),
    Tcp(&'a mut TcpSession),
}
