//! The worker's event loop: one mio Poll, one thread. `run` sets up, then each turn polls,
//! dispatches events on their token, fires due timers and drives every connection that
//! something happened to (`conn::Conn::step`), until a drain is over.
//!
//! Tokens: `0` the listener, `1` signals, `2` the store's waker; connections from `3` on
//! (`Key::token(FIRST_CONN)`: the slab index plus 3, its generation in the upper half).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::answer::Answer;
use super::conn::Conn;
use super::delay::DelayModel;
use super::routes::{Service, Timeouts};
use super::store::Store;
use super::{Options, ms};
use crate::evloop::{DeadlineHeap, Key, Slab};
use crate::sys::log::quote;
use crate::sys::signals::Signals;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const STORE_WAKER: Token = Token(2);
/// Connections are registered under `Key::token(FIRST_CONN)`.
const FIRST_CONN: usize = 3;
/// After running out of descriptors, accepting is retried this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Where a connection lives in the loop: its slab key (a stale key finds nothing).
pub type ConnKey = Key;

/// What a timer heap entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Hello `seq` on connection `conn` is due.
    Delay { conn: ConnKey, seq: u64 },
    /// The deadline of a connection may have passed.
    Deadline(ConnKey),
    /// Accepting may resume (after running out of descriptors).
    ResumeAccept,
}

/// The loop's timers: hello delays, connection deadlines (re-armed lazily), accept retries.
pub type Timers = DeadlineHeap<Timer>;

/// Where the stop sequence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Serving; no stop signal yet.
    Serving,
    /// A stop signal came: still serving (with /healthz 503) until `until`, then draining.
    Grace { until: Instant },
    /// Answering what was received, accepting nothing; the process exits by `deadline`.
    Draining { deadline: Instant },
}

/// The loop's state.
struct Worker {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    /// Connections to drive this turn.
    dirty: Vec<ConnKey>,
    svc: Service,
    stop: Stop,
    accept_paused: bool,
    max_conns: usize,
    drain_grace: Duration,
    drain_timeout: Duration,
}

/// Binds, opens the store, serves until SIGTERM/SIGINT, drains, flushes.
/// `id`: the `--id` given, else the default for the port actually bound (see `default_id`).
pub fn run(opts: &Options, id: Option<&str>) -> Result<(), String> {
    let (mut w, mut signals) = Worker::start(opts, id)?;
    let mut events = Events::with_capacity(1024);
    loop {
        w.poll_events(&mut events)?;
        for ev in events.iter() {
            match ev.token() {
                LISTENER => w.accept_all(),
                SIGNALS => w.on_signals(signals.pending()),
                STORE_WAKER => w.take_store_answers(),
                token => w.on_conn_event(token, ev),
            }
        }
        w.advance_stop();
        w.fire_timers(Instant::now());
        w.drive_dirty();
        w.sweep_timers();
        if w.is_done() {
            break;
        }
    }
    let Worker { svc, .. } = w;
    svc.store.stop()?;
    crate::info!("worker_stopped", "id={} stats=flushed", svc.id);
    Ok(())
}

/// Binds the listening socket: the listener and the address actually bound.
fn bind(opts: &Options) -> Result<(TcpListener, std::net::SocketAddr), String> {
    let std_listener = crate::sys::net::bind_listener(opts.listen)
        .map_err(|e| format!("listen {}: {e}", opts.listen))?;
    let listener = TcpListener::from_std(std_listener);
    let local = listener
        .local_addr()
        .map_err(|e| format!("listen {}: {e}", opts.listen))?;
    Ok((listener, local))
}

/// The id given, else the default for `port`.
fn resolve_id(id: Option<&str>, port: u16) -> Result<String, String> {
    match id {
        Some(id) => Ok(id.to_string()),
        None => {
            let id = super::default_id(port);
            super::validate_id(&id).map_err(|e| format!("default id: {e}; pass --id"))?;
            Ok(id)
        }
    }
}

/// The stop signals, delivered as readiness on `SIGNALS`. SIGHUP is caught only to be
/// ignored: a hangup of the terminal or session the worker was started from must not kill
/// it (nothing is reloadable in a worker).
fn open_signals(poll: &Poll) -> Result<Signals, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        Signals::new(&[SIGTERM, SIGINT, SIGHUP]).map_err(|e| format!("signals: {e}"))?;
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("signals: {e}"))?;
    Ok(signals)
}

impl Worker {
    /// Binds, opens the store (a bad database fails the start before anything is accepted)
    /// and registers the listener and the signals.
    fn start(opts: &Options, id: Option<&str>) -> Result<(Worker, Signals), String> {
        let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), STORE_WAKER).map_err(|e| format!("waker: {e}"))?);
        let notify = Box::new(move || {
            let _ = waker.wake();
        });
        let (mut listener, local) = bind(opts)?;
        let id = resolve_id(id, local.port())?;
        crate::sys::log::init(&format!("worker.{id}"));
        let store = Store::start_with_peers(
            &opts.db,
            &id,
            ms(opts.stats_flush_ms.max(1)),
            notify,
            opts.peers.clone(),
        )?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("register listener: {e}"))?;
        let signals = open_signals(&poll)?;
        let model = DelayModel::new(opts.avg_delay_ms, opts.failure_pct);
        let timeouts = Timeouts {
            head: ms(opts.head_timeout_ms.max(1)),
            idle: ms(opts.idle_timeout_ms.max(1)),
        };
        let w = Worker {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            dirty: Vec::new(),
            svc: Service::new(&id, model, store, timeouts),
            stop: Stop::Serving,
            accept_paused: false,
            max_conns: opts.max_connections.max(1),
            drain_grace: ms(opts.drain_grace_ms),
            drain_timeout: ms(opts.drain_timeout_ms),
        };
        crate::info!(
            "worker_started",
            "id={} listen={} db={} avg_delay_ms={} failure_pct={} delay=uniform[0,{}ms]",
            id,
            local,
            quote(&opts.db.display().to_string()),
            opts.avg_delay_ms,
            opts.failure_pct,
            opts.avg_delay_ms.saturating_mul(2)
        );
        // No sd_notify here: a worker is a child of the supervisor's unit, and with
        // NotifyAccess=all its READY=1 would speak for the whole service.
        Ok((w, signals))
    }

    /// Waits for events until the next timer (or stop step) is due.
    fn poll_events(&mut self, events: &mut Events) -> Result<(), String> {
        let stop_at = match self.stop {
            Stop::Serving => None,
            Stop::Grace { until } => Some(until),
            Stop::Draining { deadline } => Some(deadline),
        };
        let next = [self.svc.timers.next(), stop_at]
            .into_iter()
            .flatten()
            .min();
        // epoll rounds down to ms; round up so a timer is never polled for early, in a spin.
        let timeout = next.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            Duration::from_millis(left.as_micros().div_ceil(1000) as u64)
        });
        match self.poll.poll(events, timeout) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(format!("poll: {e}")),
            _ => Ok(()),
        }
    }

    /// SIGTERM/SIGINT: the grace period (if any), then the drain; a second signal during the
    /// grace period drains at once. SIGHUP is logged and ignored.
    fn on_signals(&mut self, mut sigs: Vec<i32>) {
        use signal_hook::consts::SIGHUP;
        if sigs.contains(&SIGHUP) {
            crate::info!("worker_sighup_ignored", "id={}", self.svc.id);
            sigs.retain(|&s| s != SIGHUP);
        }
        let Some(&first) = sigs.first() else {
            return;
        };
        let now = Instant::now();
        match self.stop {
            Stop::Serving if !self.drain_grace.is_zero() => {
                // Grace: still serving, /healthz 503, so balancers stop sending first.
                crate::info!(
                    "worker_stopping",
                    "id={} signal={} grace_ms={}",
                    self.svc.id,
                    first,
                    self.drain_grace.as_millis()
                );
                self.svc.unhealthy = true;
                self.stop = Stop::Grace {
                    until: now + self.drain_grace,
                };
            }
            Stop::Serving | Stop::Grace { .. } => self.stop = Stop::Grace { until: now },
            Stop::Draining { .. } => {}
        }
    }

    /// Starts the drain once the grace period is over.
    fn advance_stop(&mut self) {
        // The clock is read only while a grace period runs (this is called every turn).
        let Stop::Grace { until } = self.stop else {
            return;
        };
        let now = Instant::now();
        if now >= until {
            crate::info!(
                "worker_draining",
                "id={} connections={} timeout_ms={}",
                self.svc.id,
                self.conns.len(),
                self.drain_timeout.as_millis()
            );
            self.start_drain(now + self.drain_timeout);
        }
    }

    /// Whether the drain is over: no connection left, or its time is up.
    fn is_done(&self) -> bool {
        let Stop::Draining { deadline } = self.stop else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            crate::warn!(
                "worker_drain_timeout",
                "id={} connections_closed={}",
                self.svc.id,
                self.conns.len()
            );
            return true;
        }
        false
    }

    fn draining(&self) -> bool {
        matches!(self.stop, Stop::Draining { .. })
    }

    fn accept_all(&mut self) {
        loop {
            if self.draining() {
                return;
            }
            if self.conns.len() >= self.max_conns {
                if !self.accept_paused {
                    self.accept_paused = true;
                    crate::warn!(
                        "worker_max_connections",
                        "id={} connections={}",
                        self.svc.id,
                        self.conns.len()
                    );
                }
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, _peer)) => self.add_conn(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_fd_exhaustion(&e) => {
                    // Out of descriptors: pending connections wait in the backlog; retry soon.
                    crate::warn!("worker_accept_paused", "id={} error={}", self.svc.id, e);
                    self.accept_paused = true;
                    let at = Instant::now() + ACCEPT_RETRY;
                    self.svc.timers.push(at, Timer::ResumeAccept);
                    return;
                }
                // A connection that died in the backlog (ECONNABORTED...): next one.
                Err(_) => continue,
            }
        }
    }

    fn add_conn(&mut self, sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        let key = self.conns.reserve();
        let mut conn = Conn::new(sock, Instant::now(), self.draining());
        let token = key.token(FIRST_CONN);
        if conn.register(self.poll.registry(), token).is_err() {
            self.conns.remove(key);
            return;
        }
        if self.conns.put(key, conn).is_ok() {
            // Arm the idle deadline (a client that connects and sends nothing).
            self.mark_dirty(key);
        }
    }

    fn close_conn(&mut self, key: ConnKey, mut c: Conn) {
        c.deregister(self.poll.registry());
        for seq in c.pending_seqs() {
            self.svc.stats_waiting.remove(&seq);
        }
        self.conns.remove(key);
        self.resume_accept();
    }

    /// Accepts again if accepting was paused and there is room now.
    fn resume_accept(&mut self) {
        if self.accept_paused && !self.draining() && self.conns.len() < self.max_conns {
            self.accept_paused = false;
            self.accept_all();
        }
    }

    fn on_conn_event(&mut self, token: Token, ev: &Event) {
        let Some(key) = Key::from_token(token, FIRST_CONN) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(key) {
            c.note(ev);
            self.mark_dirty(key);
        }
    }

    fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    fn drive_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
            }
            self.drive(key);
        }
    }

    /// Steps connection `key`, then closes it or re-arms its deadline.
    fn drive(&mut self, key: ConnKey) {
        let now = Instant::now();
        let Some(mut c) = self.conns.take(key) else {
            return;
        };
        if !c.step(key, &mut self.svc, now) {
            return self.close_conn(key, c);
        }
        match c.due(&self.svc) {
            Some((at, _)) => c
                .deadline
                .set(&mut self.svc.timers, at, Timer::Deadline(key)),
            None => c.deadline.clear(),
        }
        // The key was just taken: putting back cannot fail.
        let _ = self.conns.put(key, c);
    }

    /// Stops accepting and lets every connection finish what it has received (until
    /// `deadline`).
    fn start_drain(&mut self, deadline: Instant) {
        // Connections the kernel already completed and requests already received are the
        // clients' in-flight requests: take them before closing the door.
        self.accept_all();
        self.stop = Stop::Draining { deadline };
        self.svc.unhealthy = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for key in self.conns.keys_where(|_| true) {
            if let Some(c) = self.conns.get_mut(key) {
                c.assume_readable();
                self.drive(key);
            }
            if let Some(c) = self.conns.get_mut(key) {
                c.stop_reading();
                self.mark_dirty(key);
            }
        }
    }

    fn take_store_answers(&mut self) {
        for (seq, answer) in self.svc.store.take_answers() {
            let Some(key) = self.svc.stats_waiting.remove(&seq) else {
                continue;
            };
            let answer = self.svc.stats_answer(answer);
            if let Some(c) = self.conns.get_mut(key)
                && let Some(pending) = c.pending_mut(seq)
            {
                pending.answer = answer;
                self.mark_dirty(key);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((at, timer)) = self.svc.timers.pop_due(now) {
            match timer {
                Timer::Delay { conn, seq } => {
                    if let Some(c) = self.conns.get_mut(conn)
                        && let Some(pending) = c.pending_mut(seq)
                    {
                        if let Answer::Hello { due, .. } = &mut pending.answer {
                            *due = true;
                        }
                        self.mark_dirty(conn);
                    }
                }
                Timer::Deadline(key) => {
                    // A deadline moved later re-arms itself; one that passed is handled
                    // (408 or close) when the connection is driven.
                    if let Some(c) = self.conns.get_mut(key)
                        && c.deadline.fire(&mut self.svc.timers, at, now, timer)
                    {
                        self.mark_dirty(key);
                    }
                }
                Timer::ResumeAccept => self.resume_accept(),
            }
        }
    }

    /// Drops timers that can no longer do anything (closed connections, superseded
    /// deadlines, answered hellos) once the heap has doubled.
    fn sweep_timers(&mut self) {
        let conns = &self.conns;
        self.svc.timers.sweep(|at, timer| match *timer {
            Timer::ResumeAccept => true,
            Timer::Deadline(key) => conns.get(key).is_some_and(|c| c.deadline.is_armed_at(at)),
            Timer::Delay { conn, seq } => conns.get(conn).is_some_and(|c| c.has_pending(seq)),
        });
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE
            || code == nix::libc::ENOBUFS || code == nix::libc::ENOMEM
    )
}
