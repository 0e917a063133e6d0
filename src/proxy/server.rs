//! The loop: one thread, one `mio::Poll`. Reserved tokens for the listener, the control
//! channel and signals; every other token is a slab index (client socket, upstream socket,
//! pooled connection or health check). Reading `run` tells everything the loop serves.

use std::io;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use super::LoopInputs;
use super::access_log::AccessLog;
use super::backends::{Admin, Backends};
use super::control::{Down, Up};
use super::core::{Core, FIRST_SLOT_TOKEN, Slot, TimerKey, token_of};
use super::health;
use super::http_session::{Flow, HttpSession};
use super::tcp_session::TcpSession;
use crate::config::Mode;
use crate::evloop::{BadLine, LineChannel, Sock};
use crate::sys::signals::Signals;

const LISTENER: Token = Token(0);
const CONTROL: Token = Token(1);
const SIGNALS: Token = Token(2);

/// How long an idle keep-alive connection stays open once a drain starts (bounded by the
/// drain timeout), so a request already on its way is answered rather than reset.
const DRAIN_IDLE_GRACE_MS: u64 = 1000;
/// Pause before accepting again after an accept error (out of descriptors...).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How often metrics go up the control channel.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Unsent control output beyond which metrics reports are skipped (the supervisor is stuck).
const MAX_CONTROL_BACKLOG: usize = 1024 * 1024;

/// This end of the control channel: receives from the supervisor, sends up to it.
type Control = LineChannel<Down, Up>;

/// One LB loop.
pub struct Server {
    name: String,
    poll: Poll,
    core: Core,
    listener: TcpListener,
    listening: bool,
    /// The listener reported readiness we have not used up (at the connection limit).
    accept_pending: bool,
    control: Option<Control>,
    signals: Signals,
    drain_timeout_ms: u64,
    drain_deadline: Option<Instant>,
    next_metrics: Instant,
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
        let mut core = Core::new(registry, inputs.settings, backends);
        let log = core.access_log.settings().clone();
        if log.path.is_some() {
            core.access_log = AccessLog::open(log, core.now)?;
        }
        for i in 0..core.backends.list.len() {
            health::schedule_first(&mut core, i);
        }
        Ok(Server {
            name: inputs.name,
            poll,
            core,
            listener,
            listening: true,
            accept_pending: true,
            control,
            signals,
            drain_timeout_ms: inputs.drain_timeout_ms,
            drain_deadline: None,
            next_metrics: Instant::now() + METRICS_EVERY,
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
            self.core.settings.mode,
            self.core.backends.list.len()
        );
        let mut events = Events::with_capacity(1024);
        loop {
            self.core.now = Instant::now();
            if self.draining_done() {
                self.core.access_log.flush(self.core.now);
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
            self.core.now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => {
                        self.accept_pending = true;
                        self.accept();
                    }
                    CONTROL => self.control_event(ev),
                    SIGNALS => self.on_signals(),
                    Token(t) if t >= FIRST_SLOT_TOKEN => self.slot_event(t - FIRST_SLOT_TOKEN, ev),
                    _ => {}
                }
            }
            self.run_timers();
            self.core.access_log.tick(self.core.now);
            if self
                .accept_retry
                .is_some_and(|t| t <= self.core.now && self.listening)
            {
                self.accept_retry = None;
                self.accept_pending = true;
            }
            if self.accept_pending {
                self.accept();
            }
            if self.core.now >= self.next_metrics {
                self.next_metrics = self.core.now + METRICS_EVERY;
                self.send_metrics();
                self.core.bufs.trim(self.core.now);
                self.core.records.trim(self.core.now);
            }
            self.flush_control();
        }
    }

    fn poll_timeout(&self) -> Duration {
        let mut next = self.next_metrics;
        if let Some(t) = self.core.timers.next() {
            next = next.min(t);
        }
        if let Some(d) = self.drain_deadline {
            next = next.min(d);
        }
        if let Some(t) = self.accept_retry {
            next = next.min(t);
        }
        if let Some(t) = self.core.access_log.next_flush() {
            next = next.min(t);
        }
        // Round up to the next millisecond so a timer is never polled for 0 ms repeatedly.
        next.saturating_duration_since(self.core.now) + Duration::from_micros(500)
    }

    /// SIGUSR1 reopens the access-log file (logrotate's convention); the others drain.
    fn on_signals(&mut self) {
        for sig in self.signals.pending() {
            if sig == SIGUSR1 {
                let outcome = self.core.access_log.reopen(self.core.now);
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
        if self.core.connections == 0 && flushed {
            return true;
        }
        if self.core.now >= deadline {
            crate::warn!(
                "drain_timeout",
                "name={} connections_left={}",
                crate::sys::log::quote(&self.name),
                self.core.connections
            );
            return true;
        }
        false
    }

    fn accept(&mut self) {
        while self.listening && self.core.connections < self.core.settings.max_connections {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let mut sock = Sock::new(stream);
                    let slot = self.core.slab.insert(Slot::Taken);
                    if sock.register(&self.core.registry, token_of(slot)).is_err() {
                        self.core.slab.remove(slot);
                        continue;
                    }
                    self.core.connections += 1;
                    match self.core.settings.mode {
                        Mode::Http => {
                            let s = HttpSession::new(&mut self.core, slot, sock, peer);
                            self.core.slab.set(slot, Slot::Http(Box::new(s)));
                        }
                        Mode::Tcp => match TcpSession::new(&mut self.core, slot, sock) {
                            Some(s) => {
                                self.core.slab.set(slot, Slot::Tcp(Box::new(s)));
                            }
                            None => {
                                // No backend can be tried: the client is closed at once.
                                self.core.connections -= 1;
                                self.core.slab.remove(slot);
                            }
                        },
                    }
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
                    self.accept_retry = Some(self.core.now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn slot_event(&mut self, i: usize, ev: &Event) {
        let Some(slot) = self.core.slab.get_mut(i) else {
            return;
        };
        match slot {
            Slot::Http(_) | Slot::Tcp(_) => self.run_session(i, |s, core| match s {
                SessionRef::Http(h) => h.client_event(core, ev),
                SessionRef::Tcp(t) => t.client_event(core, ev),
            }),
            Slot::Upstream(owner) => {
                let owner = *owner;
                self.run_session(owner, |s, core| match s {
                    SessionRef::Http(h) => h.upstream_event(core, ev),
                    SessionRef::Tcp(t) => t.upstream_event(core, ev),
                })
            }
            Slot::Pooled(_) => {
                // An idle pooled connection became readable: the backend closed it (or sent
                // bytes nobody asked for). Either way it is no longer reusable.
                if (ev.is_readable() || ev.is_read_closed() || ev.is_error())
                    && let Slot::Pooled(c) = self.core.slab.remove(i)
                {
                    self.core.backends.list[c.backend].pool.retain(|&p| p != i);
                }
            }
            Slot::Health(_) => {
                if let Slot::Health(hc) = self.core.slab.set(i, Slot::Taken)
                    && let Some(hc) = hc.event(&mut self.core, ev)
                {
                    self.core.slab.set(i, Slot::Health(hc));
                }
            }
            Slot::Vacant | Slot::Taken => {}
        }
    }

    /// Takes the session in slot `i` out of the slab, runs `f`, and puts it back or closes it.
    fn run_session(&mut self, i: usize, f: impl FnOnce(SessionRef<'_>, &mut Core) -> Flow) {
        match self.core.slab.set(i, Slot::Taken) {
            Slot::Http(mut h) => {
                if f(SessionRef::Http(&mut h), &mut self.core) == Flow::Keep {
                    self.core.slab.set(i, Slot::Http(h));
                } else {
                    h.close(&mut self.core);
                    self.core.slab.remove(i);
                    self.accept_pending |= self.listening;
                }
            }
            Slot::Tcp(mut t) => {
                if f(SessionRef::Tcp(&mut t), &mut self.core) == Flow::Keep {
                    self.core.slab.set(i, Slot::Tcp(t));
                } else {
                    t.close(&mut self.core);
                    self.core.slab.remove(i);
                    self.accept_pending |= self.listening;
                }
            }
            other => {
                self.core.slab.set(i, other);
            }
        }
    }

    fn run_timers(&mut self) {
        self.sweep_timers();
        while let Some((at, key)) = self.core.timers.pop_due(self.core.now) {
            match key {
                TimerKey::Slot(i, generation) => {
                    if self.core.slab.gen_of(i) != generation {
                        continue;
                    }
                    match self.core.slab.get_mut(i) {
                        Some(Slot::Http(_) | Slot::Tcp(_)) => {
                            self.run_session(i, |s, core| match s {
                                SessionRef::Http(h) => h.timer(core, at),
                                SessionRef::Tcp(t) => t.timer(core, at),
                            })
                        }
                        Some(Slot::Health(_)) => {
                            if let Slot::Health(hc) = self.core.slab.set(i, Slot::Taken)
                                && let Some(hc) = hc.timer(&mut self.core, at)
                            {
                                self.core.slab.set(i, Slot::Health(hc));
                            }
                        }
                        _ => {}
                    }
                }
                TimerKey::Health(b, generation) => health::start(&mut self.core, b, generation),
            }
        }
    }

    /// Drops the deadline entries nobody can use any more once the heap has doubled (closed
    /// connections' entries would otherwise stay for a whole timeout).
    fn sweep_timers(&mut self) {
        let Core {
            timers,
            slab,
            backends,
            ..
        } = &mut self.core;
        timers.sweep(|at, key| match *key {
            TimerKey::Slot(i, generation) => {
                slab.gen_of(i) == generation
                    && slab
                        .get(i)
                        .and_then(Slot::deadline)
                        .is_some_and(|d| d.is_armed_at(at))
            }
            TimerKey::Health(b, generation) => backends
                .list
                .get(b)
                .is_some_and(|b| b.generation == generation && b.admin != Admin::Removed),
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
                self.core.connections,
                timeout_ms
            );
        }
        let deadline = self.core.after_ms(timeout_ms);
        self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
        self.core.draining = true;
        if self.listening {
            // Only deregistered: the listening socket's other owners keep accepting.
            let _ = self.poll.registry().deregister(&mut self.listener);
            self.listening = false;
            self.accept_pending = false;
        }
        for i in 0..self.core.backends.list.len() {
            self.core.close_pool(i);
        }
        // Idle keep-alive connections are not closed at once: a client may have sent its next
        // request already (still unread in the kernel) and closing would reset it. They get a
        // short grace: a request arriving meanwhile is answered with `Connection: close`; the
        // rest close silently when it ends.
        let grace = DRAIN_IDLE_GRACE_MS.min(timeout_ms);
        for i in self.core.slab.session_indices() {
            match self.core.slab.set(i, Slot::Taken) {
                Slot::Http(mut h) => {
                    if h.is_idle() {
                        h.drain_idle(&mut self.core, grace);
                    }
                    self.core.slab.set(i, Slot::Http(h));
                }
                other => {
                    self.core.slab.set(i, other);
                }
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
                let change = self.core.backends.apply(&backends);
                for i in change.deactivated {
                    self.core.close_pool(i);
                }
                for i in change.added {
                    health::schedule_first(&mut self.core, i);
                }
                crate::info!(
                    "backends_updated",
                    "name={} active={}",
                    crate::sys::log::quote(&self.name),
                    self.core
                        .backends
                        .list
                        .iter()
                        .filter(|b| b.admin == Admin::Active)
                        .count()
                );
                self.send_up(&Up::Ack {
                    seq,
                    ok: true,
                    error: None,
                });
            }
            Down::Settings { seq, settings } => {
                if settings.mode != self.core.settings.mode {
                    self.send_up(&Up::Ack {
                        seq,
                        ok: false,
                        error: Some(
                            "mode cannot change in a running LB child; replace the child".into(),
                        ),
                    });
                    return;
                }
                self.core.set_settings(*settings);
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
            connections: self.core.connections as u64,
            backends: self.core.backends.metrics(),
            access_log_dropped: self.core.access_log.dropped(),
        };
        self.send_up(&msg);
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
