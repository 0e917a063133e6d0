//! Upstream connections and the table that gives each its token: in use by a session (the
//! entry names the owner, the session holds the socket) or idle in a backend's keep-alive pool
//! (the entry holds the connection itself, inline: returning one to the pool allocates
//! nothing).

use std::io;

use mio::Registry;
use mio::event::Event;
use mio::net::TcpStream;

use super::backends::Backends;
use super::relay::TcpSock;
use super::tokens;
use crate::evloop::{Key, Slab, Sock};

/// An upstream connection: its socket, key (token) and backend.
pub struct UpConn {
    /// The socket and its readiness.
    pub sock: TcpSock,
    key: Key,
    backend: usize,
    connected: bool,
    reused: bool,
}

impl UpConn {
    /// Index of its backend.
    pub fn backend(&self) -> usize {
        self.backend
    }

    /// Whether the non-blocking connect has completed.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Whether it came from the keep-alive pool (the backend may have closed it meanwhile).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Completes the non-blocking connect: Ok(true) once connected (at once if it already
    /// was), Ok(false) while pending, Err when the connect failed.
    pub fn poll_connect(&mut self) -> io::Result<bool> {
        if !self.connected {
            self.connected = self.sock.poll_connect()?;
        }
        Ok(self.connected)
    }
}

/// What an upstream table entry is.
enum Slot {
    /// In use by the session whose loop slab key this is.
    Owned(Key),
    /// Idle in its backend's pool.
    Pooled(UpConn),
}

/// Every upstream connection of the loop, by key.
#[derive(Default)]
pub struct Upstreams {
    slab: Slab<Slot>,
}

impl Upstreams {
    /// The session owning connection `key`; None for a pooled or stale one.
    pub fn owner(&self, key: Key) -> Option<Key> {
        match self.slab.get(key)? {
            Slot::Owned(owner) => Some(*owner),
            Slot::Pooled(_) => None,
        }
    }

    /// Readiness on an idle pooled connection: readable means the backend closed it (or sent
    /// bytes nobody asked for); either way it is no longer reusable and is closed.
    pub fn pooled_event(&mut self, backends: &mut Backends, key: Key, ev: &Event) {
        if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
            return;
        }
        if let Some(Slot::Pooled(c)) = self.slab.get(key) {
            let backend = c.backend;
            self.slab.remove(key);
            if let Some(b) = backends.get_mut(backend) {
                b.pool_forget(key);
            }
        }
    }

    /// A connection to `backend` for the session `owner`: an idle pooled one unless `fresh`,
    /// else a new non-blocking connect.
    pub fn open(
        &mut self,
        registry: &Registry,
        backends: &mut Backends,
        backend: usize,
        owner: Key,
        fresh: bool,
    ) -> io::Result<UpConn> {
        let Some(b) = backends.get_mut(backend) else {
            return Err(io::Error::other("no such backend"));
        };
        if !fresh {
            while let Some(key) = b.pool_pop() {
                if let Ok(Some(Slot::Pooled(mut c))) = self.slab.replace(key, Slot::Owned(owner)) {
                    c.reused = true;
                    return Ok(c);
                }
                // Not a pooled connection after all (cannot happen): leave it be.
            }
        }
        let s = TcpStream::connect(b.addr())?;
        let _ = s.set_nodelay(true);
        let mut sock = Sock::new(s);
        let key = self.slab.insert(Slot::Owned(owner));
        if let Err(e) = sock.register(registry, tokens::upstream(key)) {
            self.slab.remove(key);
            return Err(e);
        }
        Ok(UpConn {
            sock,
            key,
            backend,
            connected: false,
            reused: false,
        })
    }

    /// Pools `conn` in its backend if there is room, else closes it.
    pub fn pool(&mut self, backends: &mut Backends, conn: UpConn, pool_size: usize) {
        let key = conn.key;
        match backends.get_mut(conn.backend) {
            Some(b) if b.pooled() < pool_size => {
                // The key is the connection's own, so it is current: the entry turns from
                // owned to pooled in place.
                if self.slab.replace(key, Slot::Pooled(conn)).is_ok() {
                    b.pool_push(key);
                }
            }
            _ => self.close(conn),
        }
    }

    /// Closes a connection and frees its key.
    pub fn close(&mut self, conn: UpConn) {
        self.slab.remove(conn.key);
        drop(conn);
    }

    /// Closes every idle pooled connection of `backend` (drained, removed or down).
    pub fn close_pool(&mut self, backends: &mut Backends, backend: usize) {
        let Some(b) = backends.get_mut(backend) else {
            return;
        };
        for key in b.pool_take() {
            if let Some(Slot::Pooled(_)) = self.slab.get(key) {
                self.slab.remove(key);
            }
        }
    }
}
