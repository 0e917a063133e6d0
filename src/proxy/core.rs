//! What every session reaches through the loop: the slab of sockets, backends, buffer pool,
//! timers and settings. Sessions are taken out of the slab while they run, so they can borrow
//! all of this mutably.

use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Registry, Token};

use super::access_log::{AccessLog, AccessLogSettings};
use super::backends::Backends;
use super::buffer::BufPool;
use super::health::HealthCheck;
use super::http_session::HttpSession;
use super::relay::TcpSock;
use super::request_record::RecordPool;
use super::tcp_session::TcpSession;
use crate::config::ProxySettings;
use crate::evloop::{Deadline, DeadlineHeap, Sock};
use crate::http::Limits;

/// Tokens below this are reserved for the loop itself.
pub const FIRST_SLOT_TOKEN: usize = 8;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKey {
    /// A slab entry (session, health check) with its generation, so a reused slot ignores
    /// deadlines armed by its previous occupant.
    Slot(usize, u32),
    /// Next active health check of backend `index` (generation of the backend slot).
    Health(usize, u32),
}

/// What a slab entry (one registered socket, or its owner) is.
pub enum Slot {
    /// Free.
    Vacant,
    /// A session taken out while it runs.
    Taken,
    /// An HTTP client connection (its token is the client socket's).
    Http(Box<HttpSession>),
    /// A TCP-mode client connection.
    Tcp(Box<TcpSession>),
    /// An upstream socket in use by the session in that slot.
    Upstream(usize),
    /// An idle upstream connection in a backend's keep-alive pool.
    Pooled(Box<UpConn>),
    /// An active health check.
    Health(Box<HealthCheck>),
}

impl Slot {
    /// The deadline of the session or check in this entry.
    pub fn deadline(&self) -> Option<&Deadline> {
        match self {
            Slot::Http(h) => Some(h.deadline()),
            Slot::Tcp(t) => Some(t.deadline()),
            Slot::Health(hc) => Some(hc.deadline()),
            _ => None,
        }
    }
}

/// The loop's slab: stable indices (tokens) and a generation per index for timers.
pub struct Slab {
    slots: Vec<Slot>,
    gens: Vec<u32>,
    free: Vec<usize>,
}

impl Slab {
    fn new() -> Slab {
        Slab {
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `slot`, returning its index.
    pub fn insert(&mut self, slot: Slot) -> usize {
        if let Some(i) = self.free.pop() {
            self.slots[i] = slot;
            i
        } else {
            self.slots.push(slot);
            self.gens.push(0);
            self.slots.len() - 1
        }
    }

    /// Frees index `i` (timers armed for it become stale).
    pub fn remove(&mut self, i: usize) -> Slot {
        let old = std::mem::replace(&mut self.slots[i], Slot::Vacant);
        if !matches!(old, Slot::Vacant) {
            self.gens[i] = self.gens[i].wrapping_add(1);
            self.free.push(i);
        }
        old
    }

    /// The entry at `i`.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i)
    }

    /// The entry at `i`.
    pub fn get(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i)
    }

    /// Replaces the entry at `i` without freeing it.
    pub fn set(&mut self, i: usize, slot: Slot) -> Slot {
        std::mem::replace(&mut self.slots[i], slot)
    }

    /// Current generation of index `i`.
    pub fn gen_of(&self, i: usize) -> u32 {
        self.gens.get(i).copied().unwrap_or(0)
    }

    /// Indices in use by sessions (for drain).
    pub fn session_indices(&self) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Http(_) | Slot::Tcp(_)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Token of slab index `i`.
pub fn token_of(i: usize) -> Token {
    Token(i + FIRST_SLOT_TOKEN)
}

/// An upstream connection: its socket, slab index and backend.
pub struct UpConn {
    /// The socket and its readiness.
    pub sock: TcpSock,
    /// Its slab index (token), stable for the connection's life.
    pub slot: usize,
    /// Index into the backend list.
    pub backend: usize,
    /// The non-blocking connect has completed.
    pub connected: bool,
    /// Taken from the keep-alive pool (the backend may have closed it meanwhile).
    pub reused: bool,
}

/// Shared loop state handed to sessions.
pub struct Core {
    /// For registering new sockets.
    pub registry: Registry,
    /// Sockets and sessions.
    pub slab: Slab,
    /// The backend set.
    pub backends: Backends,
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
}

impl Core {
    /// A core for `settings` and `backends`.
    pub fn new(registry: Registry, settings: ProxySettings, backends: Backends) -> Core {
        let access_log = AccessLog::stderr(AccessLogSettings::of(&settings), Instant::now());
        Core {
            registry,
            slab: Slab::new(),
            backends,
            bufs: BufPool::new(1024),
            timers: DeadlineHeap::new(),
            limits: Limits::from_settings(&settings),
            max_body: settings.max_body_bytes,
            settings,
            now: Instant::now(),
            connections: 0,
            draining: false,
            scratch: Vec::with_capacity(4096),
            access_log,
            records: RecordPool::new(),
        }
    }

    /// Replaces the settings (limits follow).
    pub fn set_settings(&mut self, settings: ProxySettings) {
        self.limits = Limits::from_settings(&settings);
        self.max_body = settings.max_body_bytes;
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

    /// An upstream connection to `backend` for the session in slot `owner`: an idle pooled
    /// one unless `fresh`, else a new non-blocking connect.
    pub fn upstream(&mut self, backend: usize, owner: usize, fresh: bool) -> io::Result<UpConn> {
        if !fresh {
            while let Some(i) = self.backends.list[backend].pool.pop() {
                match self.slab.set(i, Slot::Upstream(owner)) {
                    Slot::Pooled(mut c) => {
                        c.reused = true;
                        return Ok(*c);
                    }
                    other => {
                        // Not a pooled connection after all: put it back untouched.
                        self.slab.set(i, other);
                    }
                }
            }
        }
        let addr = self.backends.list[backend].addr;
        let s = TcpStream::connect(addr)?;
        let _ = s.set_nodelay(true);
        let mut sock = Sock::new(s);
        let slot = self.slab.insert(Slot::Upstream(owner));
        if let Err(e) = sock.register(&self.registry, token_of(slot)) {
            self.slab.remove(slot);
            return Err(e);
        }
        Ok(UpConn {
            sock,
            slot,
            backend,
            connected: false,
            reused: false,
        })
    }

    /// Returns an upstream connection after a complete exchange: into the backend's pool if
    /// `reusable` and the backend still takes requests, else closed.
    pub fn release_upstream(&mut self, conn: UpConn, reusable: bool) {
        let b = &mut self.backends.list[conn.backend];
        if reusable
            && !self.draining
            && b.eligible()
            && b.pool.len() < self.settings.upstream_pool_size
        {
            b.pool.push(conn.slot);
            let slot = conn.slot;
            self.slab.set(slot, Slot::Pooled(Box::new(conn)));
        } else {
            self.close_upstream(conn);
        }
    }

    /// Closes an upstream connection and frees its slab index.
    pub fn close_upstream(&mut self, conn: UpConn) {
        self.slab.remove(conn.slot);
        drop(conn);
    }

    /// Closes every idle pooled connection of `backend` (drained, removed or down).
    pub fn close_pool(&mut self, backend: usize) {
        let pool = std::mem::take(&mut self.backends.list[backend].pool);
        for i in pool {
            if let Slot::Pooled(_) = self.slab.get_mut(i).map_or(&Slot::Vacant, |s| &*s) {
                self.slab.remove(i);
            }
        }
    }

    /// Passive health: a connect failure or timeout ejects the backend at once.
    pub fn eject(&mut self, backend: usize, why: &str) {
        let b = &mut self.backends.list[backend];
        b.failures += 1;
        if b.healthy {
            self.mark_down(backend, why);
        }
    }

    /// Marks a backend down (active checks' fall, or passive ejection): it gets no new
    /// request and its idle pooled connections are closed.
    pub fn mark_down(&mut self, backend: usize, why: &str) {
        let b = &mut self.backends.list[backend];
        b.healthy = false;
        b.streak = 0;
        crate::warn!(
            "backend_down",
            "backend={} addr={} reason={}",
            crate::sys::log::quote(&b.id),
            b.addr,
            crate::sys::log::quote(why)
        );
        self.close_pool(backend);
    }
}
