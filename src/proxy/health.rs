//! Active health checks, run inside the loop on non-blocking sockets: every
//! `health-interval-ms` per backend, `GET health-path` (HTTP mode; a 2xx or 3xx status line
//! passes) or a bare connect (TCP mode), bounded by `health-timeout-ms`. `health-rise`
//! consecutive passes bring a down backend up, `health-fall` consecutive failures take an up
//! backend down.

use std::io::Write;
use std::time::Instant;

use mio::Interest;
use mio::event::Event;
use mio::net::TcpStream;

use super::buffer::Buf;
use super::core::{Core, Slot, token_of};
use super::sock::{ReadResult, Sock};
use super::timer::{Deadline, TimerKey};
use crate::config::Mode;

/// One check in progress.
pub struct HealthCheck {
    backend: usize,
    backend_gen: u32,
    slot: usize,
    generation: u32,
    sock: Sock,
    connected: bool,
    request: Vec<u8>,
    sent: usize,
    reply: Buf,
    deadline: Deadline,
}

/// Arms the first check of `backend`, spread over the interval so checks do not bunch up.
pub fn schedule_first(core: &mut Core, backend: usize) {
    let b = &core.backends.list[backend];
    let spread = core.settings.health_interval_ms.clamp(1, 1000);
    let delay = rand::random::<u64>() % spread;
    let at = core.after_ms(delay);
    core.timers.add(at, TimerKey::Health(backend, b.generation));
}

fn schedule_next(core: &mut Core, backend: usize) {
    let b = &core.backends.list[backend];
    let at = core.after_ms(core.settings.health_interval_ms.max(1));
    core.timers.add(at, TimerKey::Health(backend, b.generation));
}

/// The check timer of `backend` fired: start a check unless one runs or the backend left.
pub fn start(core: &mut Core, backend: usize, backend_gen: u32) {
    let Some(b) = core.backends.list.get(backend) else {
        return;
    };
    if b.generation != backend_gen || b.admin == super::backends::Admin::Removed {
        return;
    }
    if b.check_slot.is_some() {
        return;
    }
    let addr = b.addr;
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            outcome(core, backend, false, &e.to_string());
            schedule_next(core, backend);
            return;
        }
    };
    // Reserved now, filled below once the check exists.
    let slot = core.slab.insert(Slot::Taken);
    if core
        .registry
        .register(
            &mut s,
            token_of(slot),
            Interest::READABLE | Interest::WRITABLE,
        )
        .is_err()
    {
        core.slab.remove(slot);
        schedule_next(core, backend);
        return;
    }
    let mut request = Vec::new();
    let _ = write!(
        request,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: goloadbalancer-health\r\nConnection: close\r\n\r\n",
        core.settings.health_path, addr
    );
    let mut hc = HealthCheck {
        backend,
        backend_gen,
        slot,
        generation: core.slab.gen_of(slot),
        sock: Sock::new(s),
        connected: false,
        request,
        sent: 0,
        reply: core.bufs.get(),
        deadline: Deadline::none(),
    };
    let at = core.after_ms(core.settings.health_timeout_ms.max(1));
    hc.deadline
        .set(&mut core.timers, at, TimerKey::Slot(slot, hc.generation));
    core.backends.list[backend].check_slot = Some(slot);
    core.slab.set(slot, Slot::Health(Box::new(hc)));
}

/// Records a check result and applies rise/fall.
fn outcome(core: &mut Core, backend: usize, ok: bool, why: &str) {
    let rise = core.settings.health_rise.max(1);
    let fall = core.settings.health_fall.max(1);
    let b = &mut core.backends.list[backend];
    if ok == b.healthy {
        b.streak = 0;
        return;
    }
    b.streak += 1;
    if ok && b.streak >= rise {
        b.healthy = true;
        b.streak = 0;
        crate::info!(
            "backend_up",
            "backend={} addr={}",
            crate::sys::log::quote(&b.id),
            b.addr
        );
    } else if !ok && b.streak >= fall {
        core.mark_down(backend, why);
    }
}

/// What a check step concluded.
enum Verdict {
    Pending,
    Pass,
    Fail(String),
}

impl HealthCheck {
    /// Readiness on the check's socket; returns false once the check is over (slot freed).
    pub fn event(mut self: Box<Self>, core: &mut Core, ev: &Event) -> Option<Box<Self>> {
        self.sock.note(ev);
        let v = self.step(core);
        self.conclude(core, v)
    }

    /// The check's deadline fired.
    pub fn timer(mut self: Box<Self>, core: &mut Core, fired_at: Instant) -> Option<Box<Self>> {
        let key = TimerKey::Slot(self.slot, self.generation);
        if !self
            .deadline
            .fire(&mut core.timers, fired_at, core.now, key)
        {
            return Some(self);
        }
        self.conclude(core, Verdict::Fail("timeout".into()))
    }

    fn conclude(self: Box<Self>, core: &mut Core, v: Verdict) -> Option<Box<Self>> {
        let (ok, why) = match v {
            Verdict::Pending => return Some(self),
            Verdict::Pass => (true, String::new()),
            Verdict::Fail(why) => (false, why),
        };
        let HealthCheck {
            backend,
            backend_gen,
            slot,
            reply,
            ..
        } = *self;
        core.bufs.put(reply);
        core.slab.remove(slot);
        if let Some(b) = core.backends.list.get_mut(backend)
            && b.generation == backend_gen
        {
            b.check_slot = None;
            if b.admin != super::backends::Admin::Removed {
                outcome(core, backend, ok, &why);
                schedule_next(core, backend);
            }
        }
        None
    }

    fn step(&mut self, core: &mut Core) -> Verdict {
        if !self.connected {
            if !self.sock.writable && !self.sock.readable {
                return Verdict::Pending;
            }
            match self.sock.connect_done() {
                Ok(true) => self.connected = true,
                Ok(false) => return Verdict::Pending,
                Err(e) => return Verdict::Fail(e.to_string()),
            }
            if core.settings.mode == Mode::Tcp {
                return Verdict::Pass;
            }
        }
        while self.sent < self.request.len() && self.sock.writable {
            match self.sock.write_some(&self.request[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) => return Verdict::Fail(e.to_string()),
            }
        }
        while self.sock.readable && self.reply.room() > 0 {
            match self.sock.read_into(&mut self.reply) {
                Ok(ReadResult::Data) => {}
                Ok(ReadResult::Blocked) => break,
                Ok(ReadResult::Eof) => {
                    return status_verdict(self.reply.data())
                        .unwrap_or_else(|| Verdict::Fail("closed before a status line".into()));
                }
                Err(e) => return Verdict::Fail(e.to_string()),
            }
        }
        status_verdict(self.reply.data()).unwrap_or(Verdict::Pending)
    }
}

/// Pass on a 2xx/3xx status line, fail on anything else; None until a full line arrived.
fn status_verdict(reply: &[u8]) -> Option<Verdict> {
    let end = reply.iter().position(|&b| b == b'\n')?;
    let line = String::from_utf8_lossy(&reply[..end]);
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next().unwrap_or("");
    let code: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    if version.starts_with("HTTP/1.") && (200..400).contains(&code) {
        Some(Verdict::Pass)
    } else {
        Some(Verdict::Fail(format!("status {code}")))
    }
}
