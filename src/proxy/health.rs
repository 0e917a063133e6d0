//! Active health checks, run inside the loop on non-blocking sockets: every
//! `health-interval-ms` per backend, `GET health-path` (`health-check: http`, and `auto` under
//! `run`; a 2xx or 3xx final status passes) or a bare connect (`health-check: tcp`, `auto` for
//! the standalone proxy without a health path, and TCP mode), bounded by `health-timeout-ms`. The probe itself is
//! the kit's (`evloop::HealthProbe`); this file schedules it and applies the verdict. `health-rise`
//! consecutive passes bring a down backend up, `health-fall` consecutive failures take an up
//! backend down.

use std::time::Instant;

use mio::event::Event;

use super::core::{Core, Slot, TimerKey, token_of};
use crate::config::{HealthCheckMode, Mode};
use crate::evloop::{Deadline, HealthProbe, ProbeKind, ProbeStatus};

/// One check in progress.
pub struct HealthCheck {
    backend: usize,
    backend_gen: u32,
    slot: usize,
    generation: u32,
    probe: HealthProbe,
    deadline: Deadline,
}

/// Arms the first check of `backend`, spread over the interval so checks do not bunch up.
pub fn schedule_first(core: &mut Core, backend: usize) {
    let b = &core.backends.list[backend];
    let spread = core.settings.health_interval_ms.clamp(1, 1000);
    let delay = rand::random::<u64>() % spread;
    let at = core.after_ms(delay);
    core.timers
        .push(at, TimerKey::Health(backend, b.generation));
}

fn schedule_next(core: &mut Core, backend: usize) {
    let b = &core.backends.list[backend];
    let at = core.after_ms(core.settings.health_interval_ms.max(1));
    core.timers
        .push(at, TimerKey::Health(backend, b.generation));
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
    // `auto` is resolved by the standalone proxy at start; what is left of it is `run`'s.
    let kind = match (core.settings.mode, core.settings.health_check) {
        (Mode::Http, HealthCheckMode::Auto | HealthCheckMode::Http) => ProbeKind::Http {
            path: &core.settings.health_path,
        },
        (Mode::Tcp, _) | (_, HealthCheckMode::Tcp) => ProbeKind::Connect,
    };
    let mut probe = match HealthProbe::start(b.addr, kind) {
        Ok(p) => p,
        Err(e) if super::core::out_of_descriptors(&e) => {
            // Our shortage, not the backend's: no verdict this round.
            core.out_of_fds = true;
            schedule_next(core, backend);
            return;
        }
        Err(e) => {
            outcome(core, backend, false, &e.to_string());
            schedule_next(core, backend);
            return;
        }
    };
    // Reserved now, filled below once the check exists.
    let slot = core.slab.insert(Slot::Taken);
    if probe.register(&core.registry, token_of(slot)).is_err() {
        core.slab.remove(slot);
        schedule_next(core, backend);
        return;
    }
    let mut hc = HealthCheck {
        backend,
        backend_gen,
        slot,
        generation: core.slab.gen_of(slot),
        probe,
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

/// Pass on a completed connect or a 2xx/3xx final status; None while pending.
fn verdict(status: ProbeStatus) -> Option<Result<(), String>> {
    match status {
        ProbeStatus::Pending => None,
        ProbeStatus::Connected => Some(Ok(())),
        ProbeStatus::Status(code) if (200..400).contains(&code) => Some(Ok(())),
        ProbeStatus::Status(code) => Some(Err(format!("status {code}"))),
        ProbeStatus::Failed(why) => Some(Err(why)),
    }
}

impl HealthCheck {
    /// The check's deadline.
    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// Readiness on the check's socket; None once the check is over (slot freed).
    pub fn event(mut self: Box<Self>, core: &mut Core, ev: &Event) -> Option<Box<Self>> {
        match verdict(self.probe.on_event(ev)) {
            None => Some(self),
            Some(v) => {
                (*self).conclude(core, v);
                None
            }
        }
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
        (*self).conclude(core, Err("timeout".into()));
        None
    }

    fn conclude(self, core: &mut Core, v: Result<(), String>) {
        let HealthCheck {
            backend,
            backend_gen,
            slot,
            mut probe,
            ..
        } = self;
        probe.deregister(&core.registry);
        core.slab.remove(slot);
        if let Some(b) = core.backends.list.get_mut(backend)
            && b.generation == backend_gen
        {
            b.check_slot = None;
            if b.admin != super::backends::Admin::Removed {
                let (ok, why) = match v {
                    Ok(()) => (true, String::new()),
                    Err(why) => (false, why),
                };
                outcome(core, backend, ok, &why);
                schedule_next(core, backend);
            }
        }
    }
}
