//! TCP (L4) mode: one client connection relayed to one backend chosen round-robin (or by the
//! configured balance) per connection. States: Connecting (a failed connect is retried on the
//! next backend) then Relay (two [`Half`]s; a half-close on one side is propagated as
//! `shutdown(Write)` on the other; closed once both directions are done).

use std::time::Instant;

use mio::event::Event;

use super::backends::Tried;
use super::core::{Core, TimerKey, UpConn};
use super::http_session::Flow;
use super::relay::{Half, TcpSock};
use crate::evloop::Deadline;

/// A TCP-mode client connection.
pub struct TcpSession {
    slot: usize,
    generation: u32,
    client: TcpSock,
    up: Option<UpConn>,
    tried: Tried,
    c2u: Half,
    u2c: Half,
    deadline: Deadline,
}

impl TcpSession {
    /// Starts relaying `sock` (in slab slot `slot`); None when no backend can be tried (the
    /// caller closes the client at once).
    pub fn new(core: &mut Core, slot: usize, client: TcpSock) -> Option<TcpSession> {
        let mut s = TcpSession {
            slot,
            generation: core.slab.gen_of(slot),
            client,
            up: None,
            tried: Tried::default(),
            c2u: Half::new(None),
            u2c: Half::new(None),
            deadline: Deadline::none(),
        };
        if !s.connect(core) {
            return None;
        }
        Some(s)
    }

    fn key(&self) -> TimerKey {
        TimerKey::Slot(self.slot, self.generation)
    }

    fn set_deadline(&mut self, core: &mut Core, ms: u64) {
        let at = core.after_ms(ms);
        let k = self.key();
        self.deadline.set(&mut core.timers, at, k);
    }

    /// Connects to the next untried backend; false when none is left.
    fn connect(&mut self, core: &mut Core) -> bool {
        loop {
            if self.tried.len() > core.settings.retries as usize {
                return false;
            }
            let Some(b) = core.backends.pick(core.settings.balance, &self.tried) else {
                return false;
            };
            self.tried.push(b);
            // Never a pooled connection: a TCP stream is not reusable.
            match core.upstream(b, self.slot, true) {
                Ok(up) => {
                    core.backends.list[b].in_flight += 1;
                    self.up = Some(up);
                    self.set_deadline(core, core.settings.connect_timeout_ms);
                    return true;
                }
                Err(e) => {
                    if core.connect_failed(b, &e) {
                        return false;
                    }
                }
            }
        }
    }

    fn drop_upstream(&mut self, core: &mut Core) {
        if let Some(up) = self.up.take() {
            let b = &mut core.backends.list[up.backend];
            b.in_flight = b.in_flight.saturating_sub(1);
            core.close_upstream(up);
        }
    }

    /// The session's deadline.
    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// Readiness on the client socket.
    pub fn client_event(&mut self, core: &mut Core, ev: &Event) -> Flow {
        self.client.note(ev);
        self.run(core)
    }

    /// Readiness on the upstream socket.
    pub fn upstream_event(&mut self, core: &mut Core, ev: &Event) -> Flow {
        if let Some(up) = self.up.as_mut() {
            up.sock.note(ev);
        }
        self.run(core)
    }

    /// A timer armed by this session fired.
    pub fn timer(&mut self, core: &mut Core, fired_at: Instant) -> Flow {
        let k = self.key();
        if !self.deadline.fire(&mut core.timers, fired_at, core.now, k) {
            return Flow::Keep;
        }
        match self.up.as_ref() {
            Some(up) if !up.connected => {
                let b = up.backend;
                core.eject(b, "connect timeout");
                self.drop_upstream(core);
                if !self.connect(core) {
                    return Flow::Close;
                }
                Flow::Keep
            }
            _ => Flow::Close,
        }
    }

    fn run(&mut self, core: &mut Core) -> Flow {
        loop {
            let Some(up) = self.up.as_mut() else {
                return Flow::Close;
            };
            if !up.connected {
                match up.sock.poll_connect() {
                    Ok(true) => {
                        up.connected = true;
                        self.set_deadline(core, core.settings.tunnel_timeout_ms);
                    }
                    Ok(false) => return Flow::Keep,
                    Err(e) => {
                        let b = up.backend;
                        core.eject(b, &e.to_string());
                        self.drop_upstream(core);
                        if !self.connect(core) {
                            return Flow::Close;
                        }
                        continue;
                    }
                }
            }
            let Some(up) = self.up.as_mut() else {
                return Flow::Close;
            };
            let a = self
                .c2u
                .relay(&mut self.client, &mut up.sock, &mut core.bufs);
            let b = self
                .u2c
                .relay(&mut up.sock, &mut self.client, &mut core.bufs);
            let moved = match (a, b) {
                (Ok(a), Ok(b)) => a || b,
                _ => return Flow::Close,
            };
            if self.c2u.finished() && self.u2c.finished() {
                return Flow::Close;
            }
            if moved {
                self.set_deadline(core, core.settings.tunnel_timeout_ms);
            }
            return Flow::Keep;
        }
    }

    /// Frees everything.
    pub fn close(mut self, core: &mut Core) {
        self.drop_upstream(core);
        core.bufs.put_opt(&mut self.c2u.buf);
        core.bufs.put_opt(&mut self.u2c.buf);
        core.connections = core.connections.saturating_sub(1);
    }
}
