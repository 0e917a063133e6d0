//! What every session and health check reaches through the loop: settings, backends,
//! upstream connections, the buffer pool, deadlines, the access log and the loop's counters.
//! The loop's own slab (sessions, checks) is not here: it belongs to `server`, which takes an
//! entry out while it runs, so the entry can borrow all of this mutably.

use std::time::{Duration, Instant};

use mio::Registry;

use super::access_log::{AccessLog, AccessLogSettings};
use super::backends::Backends;
use super::buffer::{BufPool, Spares};
use super::http_session::Ex;
use super::policy::Policies;
use super::policy::outlier::Verdict;
use super::request_record::RecordPool;
use super::upstream::Upstreams;
use crate::config::ProxySettings;
use crate::evloop::{DeadlineHeap, Key};
use crate::http::Limits;

/// Spare exchange bookkeeping kept after a burst (as many as the buffer pool's buffers).
const SPARE_EXCHANGES: usize = 1024;
/// Spare exchange bookkeeping kept once the loop has been quiet for a trim window.
const QUIET_SPARE_EXCHANGES: usize = 16;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKey {
    /// A loop slab entry (session, health check); the key's generation makes a reused index
    /// ignore deadlines armed by its previous occupant.
    Entry(Key),
    /// Next active health check of backend `index` (generation of the backend slot).
    Health(usize, u32),
}

/// Shared loop state handed to sessions and checks.
pub struct LoopContext {
    /// For registering new sockets.
    pub registry: Registry,
    /// Upstream connections in use or pooled.
    pub upstreams: Upstreams,
    /// The backend set.
    pub backends: Backends,
    /// Traffic policies (slow start, ejection, retry budget), by backend slot.
    pub policies: Policies,
    /// Free buffers.
    pub bufs: BufPool,
    /// Deadlines.
    pub timers: DeadlineHeap<TimerKey>,
    /// Current settings.
    pub settings: ProxySettings,
    /// Head limits derived from the settings.
    pub limits: Limits,
    /// Largest request body, 0 = unlimited (413).
    pub max_body: u64,
    /// Time of the current loop iteration.
    pub now: Instant,
    /// Client connections open.
    pub connections: usize,
    /// Stop accepting; finish in-flight work, then exit.
    pub draining: bool,
    /// Scratch space for building heads.
    pub scratch: Vec<u8>,
    /// The access log (stderr until `Server::new` opens a configured file).
    pub access_log: AccessLog,
    /// Spare per-request records.
    pub records: RecordPool,
    /// Spare exchange bookkeeping (HTTP sessions), so a request allocates none.
    pub exchanges: Spares<Box<Ex>>,
    /// Requests that found no worker since the last `Up::Demand` (the supervisor's signal).
    pub no_worker: u64,
    /// A connect ran out of descriptors since the server last looked: it pauses accepting.
    pub out_of_fds: bool,
}

/// Whether `e` says the process (EMFILE) or the system (ENFILE) ran out of descriptors.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    )
}

impl LoopContext {
    /// A context for `settings` and `backends`.
    pub fn new(registry: Registry, settings: ProxySettings, backends: Backends) -> LoopContext {
        let now = Instant::now();
        let access_log = AccessLog::stderr(AccessLogSettings::of(&settings), now);
        LoopContext {
            registry,
            upstreams: Upstreams::default(),
            backends,
            policies: Policies::new(&settings, now),
            bufs: BufPool::new(1024),
            timers: DeadlineHeap::new(),
            limits: Limits::from_settings(&settings),
            max_body: settings.max_body_bytes,
            settings,
            now,
            connections: 0,
            draining: false,
            scratch: Vec::with_capacity(4096),
            access_log,
            records: RecordPool::new(),
            exchanges: Spares::new(SPARE_EXCHANGES, QUIET_SPARE_EXCHANGES),
            no_worker: 0,
            out_of_fds: false,
        }
    }

    /// Whether a spare list (buffers, records, exchanges) holds more than a quiet window
    /// keeps: the loop wakes up to trim it.
    pub fn has_spares_to_trim(&self) -> bool {
        self.bufs.has_excess() || self.records.has_excess() || self.exchanges.has_excess()
    }

    /// Replaces the settings (limits follow).
    pub fn set_settings(&mut self, settings: ProxySettings) {
        self.limits = Limits::from_settings(&settings);
        self.max_body = settings.max_body_bytes;
        self.policies.set_settings(&settings);
        let log = AccessLogSettings::of(&settings);
        if log != *self.access_log.settings() {
            match AccessLog::open(log, self.now) {
                Ok(new) => {
                    self.access_log.flush(self.now);
                    self.access_log = new;
                }
                Err(e) => crate::error!(
                    "access_log_open_failed",
                    "error={} action=\"keep the previous access log\"",
                    crate::sys::log::quote(&e.to_string())
                ),
            }
        }
        self.settings = settings;
    }

    /// `now + ms`.
    pub fn after_ms(&self, ms: u64) -> Instant {
        self.now + Duration::from_millis(ms)
    }

    /// Closes every idle pooled connection of `backend` (drained, removed or down).
    pub fn close_pool(&mut self, backend: usize) {
        self.upstreams.close_pool(&mut self.backends, backend);
    }

    /// A connect to `backend` failed at once. Out of descriptors is our shortage, not the
    /// backend's: it stays up, accepting pauses (`out_of_fds`), and true tells the caller to
    /// answer 503 without trying further backends. Anything else ejects the backend (false).
    pub fn connect_failed(&mut self, backend: usize, e: &std::io::Error) -> bool {
        if out_of_descriptors(e) {
            if !self.out_of_fds {
                let id = self.backends.get(backend).map_or("", |b| b.id());
                crate::warn!(
                    "out_of_descriptors",
                    "backend={} error={}",
                    crate::sys::log::quote(id),
                    crate::sys::log::quote(&e.to_string())
                );
            }
            self.out_of_fds = true;
            return true;
        }
        self.eject(backend, &e.to_string());
        false
    }

    /// Passive health: a connect failure or timeout ejects the backend at once.
    pub fn eject(&mut self, backend: usize, why: &str) {
        let Some(b) = self.backends.get_mut(backend) else {
            return;
        };
        b.note_failure();
        if b.is_healthy() {
            self.mark_down(backend, why);
        }
    }

    /// Marks a backend down (active checks' fall, or passive ejection): it gets no new
    /// request and its idle pooled connections are closed.
    pub fn mark_down(&mut self, backend: usize, why: &str) {
        let Some(b) = self.backends.get_mut(backend) else {
            return;
        };
        b.set_down();
        crate::warn!(
            "backend_down",
            "backend={} addr={} reason={}",
            crate::sys::log::quote(b.id()),
            b.addr(),
            crate::sys::log::quote(why)
        );
        self.close_pool(backend);
    }

    /// A backend turned healthy again (active checks' rise): it ramps up (slow start).
    pub fn mark_up(&mut self, backend: usize) {
        let Some(b) = self.backends.get(backend) else {
            return;
        };
        crate::info!(
            "backend_up",
            "backend={} addr={}",
            crate::sys::log::quote(b.id()),
            b.addr()
        );
        self.policies.begin_ramp(backend, self.now);
    }

    /// Outlier ejection: feeds an answer of `backend` (a 5xx the proxy made because of it
    /// counts as its answer) and ejects it after `eject-consecutive-5xx` in a row.
    pub fn note_answer(&mut self, backend: usize, status: u16) {
        if !self.policies.ejection_on() {
            return;
        }
        let workers = self.backends.active();
        let verdict = self.policies.on_answer(backend, status, self.now, workers);
        let Verdict::Ejected { until } = verdict else {
            return;
        };
        if let Some(b) = self.backends.get(backend) {
            crate::warn!(
                "backend_ejected",
                "backend={} addr={} consecutive_5xx={} eject_ms={} ejections={}",
                crate::sys::log::quote(b.id()),
                b.addr(),
                self.settings.eject_consecutive_5xx,
                until.saturating_duration_since(self.now).as_millis(),
                self.policies.ejections(backend)
            );
        }
        self.close_pool(backend);
    }

    /// Puts back the workers whose ejection is over (the loop's tick); they ramp up.
    pub fn restore_ejected(&mut self) {
        let LoopContext {
            policies,
            backends,
            now,
            ..
        } = self;
        policies.restore(*now, |i| {
            if let Some(b) = backends.get(i) {
                crate::info!(
                    "backend_restored",
                    "backend={} addr={}",
                    crate::sys::log::quote(b.id()),
                    b.addr()
                );
            }
        });
    }
}

#[cfg(test)]
impl LoopContext {
    /// A context over a fresh poll with one active backend per address (tests); the poll
    /// is returned too, for the test to keep (and poll) while it uses the context.
    pub fn for_tests(
        addrs: &[std::net::SocketAddr],
        settings: ProxySettings,
    ) -> (mio::Poll, LoopContext) {
        use super::control::{BackendSpec, BackendState};
        let poll = mio::Poll::new().expect("poll");
        let registry = poll.registry().try_clone().expect("registry");
        let specs: Vec<BackendSpec> = addrs
            .iter()
            .map(|&addr| BackendSpec {
                id: addr.to_string(),
                addr,
                weight: 1,
                state: BackendState::Active,
            })
            .collect();
        let ctx = LoopContext::new(registry, settings, Backends::new(&specs));
        (poll, ctx)
    }
}
