//! Active health checks, run inside the loop on non-blocking sockets: every
//! `health-interval-ms` per backend, `GET health-path` (`health-check: http`, and `auto` under
//! `run`; a 2xx or 3xx final status passes) or a bare connect (`health-check: tcp`, `auto` for
//! the standalone proxy without a health path, and TCP mode), bounded by `health-timeout-ms`. The probe itself is
//! the kit's (`evloop::HealthProbe`); this file schedules it and applies the verdict. `health-rise`
//! consecutive passes bring a down backend up, `health-fall` consecutive failures take an up
//! backend down.

use std::time::Instant;

use mio::event::Event;

use super::backends::{Admin, CheckVerdict};
use super::context::{LoopContext, TimerKey};
use super::tokens;
use crate::config::{HealthCheckMode, Mode, ProxySettings};
use crate::evloop::{Deadline, HealthProbe, Key, ProbeKind, ProbeStatus};

/// One check in progress (an entry of the loop's slab, under `key`).
pub struct HealthCheck {
    backend: usize,
    backend_gen: u32,
    key: Key,
    probe: HealthProbe,
    deadline: Deadline,
}

/// A probe started, waiting for its slab entry.
pub struct Starting {
    backend: usize,
    backend_gen: u32,
    probe: HealthProbe,
}

/// Arms the first check of `backend`, spread over the interval so checks do not bunch up.
pub fn schedule_first(ctx: &mut LoopContext, backend: usize) {
    let generation = ctx.backends[backend].generation();
    let spread = ctx.settings.health_interval_ms.clamp(1, 1000);
    let delay = rand::random::<u64>() % spread;
    let at = ctx.after_ms(delay);
    ctx.timers.push(at, TimerKey::Health(backend, generation));
}

fn schedule_next(ctx: &mut LoopContext, backend: usize) {
    let generation = ctx.backends[backend].generation();
    let at = ctx.after_ms(ctx.settings.health_interval_ms.max(1));
    ctx.timers.push(at, TimerKey::Health(backend, generation));
}

/// The check timer of `backend` fired: starts a probe unless one runs or the backend left.
/// The caller gives the probe a slab key with [`Starting::register`].
pub fn start(ctx: &mut LoopContext, backend: usize, backend_gen: u32) -> Option<Starting> {
    let b = ctx.backends.get(backend)?;
    if b.generation() != backend_gen || b.admin() == Admin::Removed || b.check().is_some() {
        return None;
    }
    let kind = probe_kind(&ctx.settings);
    match HealthProbe::start(b.addr(), kind) {
        Ok(probe) => Some(Starting {
            backend,
            backend_gen,
            probe,
        }),
        Err(e) if super::context::out_of_descriptors(&e) => {
            // Our shortage, not the backend's: no verdict this round.
            ctx.out_of_fds = true;
            schedule_next(ctx, backend);
            None
        }
        Err(e) => {
            outcome(ctx, backend, false, &e.to_string());
            schedule_next(ctx, backend);
            None
        }
    }
}

impl Starting {
    /// Registers the probe under the slab entry `key` and arms its deadline; None when
    /// registration failed (the caller frees `key`; the next check is scheduled).
    pub fn register(self, ctx: &mut LoopContext, key: Key) -> Option<HealthCheck> {
        let Starting {
            backend,
            backend_gen,
            mut probe,
        } = self;
        if probe.register(&ctx.registry, tokens::entry(key)).is_err() {
            schedule_next(ctx, backend);
            return None;
        }
        let mut hc = HealthCheck {
            backend,
            backend_gen,
            key,
            probe,
            deadline: Deadline::none(),
        };
        let at = ctx.after_ms(ctx.settings.health_timeout_ms.max(1));
        hc.deadline.set(&mut ctx.timers, at, TimerKey::Entry(key));
        if let Some(b) = ctx.backends.get_mut(backend) {
            b.set_check(Some(key));
        }
        Some(hc)
    }
}

/// The probe for `settings`: a connect in TCP mode or with `health-check: tcp`, else
/// `GET health-path`. `auto` is resolved by the standalone proxy at start (`proxy::mod`);
/// what is left of it is `run`'s, whose own workers serve `/healthz`.
fn probe_kind(settings: &ProxySettings) -> ProbeKind<'_> {
    match (settings.mode, settings.health_check) {
        (Mode::Http, HealthCheckMode::Auto | HealthCheckMode::Http) => ProbeKind::Http {
            path: &settings.health_path,
        },
        (Mode::Tcp, _) | (_, HealthCheckMode::Tcp) => ProbeKind::Connect,
    }
}

/// Records a check result and applies rise/fall.
fn outcome(ctx: &mut LoopContext, backend: usize, ok: bool, why: &str) {
    let (rise, fall) = (ctx.settings.health_rise, ctx.settings.health_fall);
    let Some(b) = ctx.backends.get_mut(backend) else {
        return;
    };
    match b.note_check(ok, rise, fall) {
        CheckVerdict::Unchanged => {}
        CheckVerdict::Up => ctx.mark_up(backend),
        CheckVerdict::Fall => ctx.mark_down(backend, why),
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

    /// Readiness on the check's socket; None once the check is over (the caller frees its
    /// slab entry).
    pub fn event(mut self: Box<Self>, ctx: &mut LoopContext, ev: &Event) -> Option<Box<Self>> {
        match verdict(self.probe.on_event(ev)) {
            None => Some(self),
            Some(v) => {
                (*self).conclude(ctx, v);
                None
            }
        }
    }

    /// The check's deadline fired; None once the check is over.
    pub fn timer(
        mut self: Box<Self>,
        ctx: &mut LoopContext,
        fired_at: Instant,
    ) -> Option<Box<Self>> {
        let key = TimerKey::Entry(self.key);
        if !self.deadline.fire(&mut ctx.timers, fired_at, ctx.now, key) {
            return Some(self);
        }
        (*self).conclude(ctx, Err("timeout".into()));
        None
    }

    fn conclude(self, ctx: &mut LoopContext, v: Result<(), String>) {
        let HealthCheck {
            backend,
            backend_gen,
            mut probe,
            ..
        } = self;
        probe.deregister(&ctx.registry);
        let Some(b) = ctx.backends.get_mut(backend) else {
            return;
        };
        if b.generation() != backend_gen {
            return;
        }
        b.set_check(None);
        if b.admin() != Admin::Removed {
            let (ok, why) = match v {
                Ok(()) => (true, String::new()),
                Err(why) => (false, why),
            };
            outcome(ctx, backend, ok, &why);
            schedule_next(ctx, backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_kind_follows_health_check_and_mode() {
        let with = |mode, health_check| ProxySettings {
            mode,
            health_check,
            health_path: "/ready".into(),
            ..ProxySettings::default()
        };
        let http = ProbeKind::Http { path: "/ready" };
        assert_eq!(probe_kind(&with(Mode::Http, HealthCheckMode::Auto)), http);
        assert_eq!(probe_kind(&with(Mode::Http, HealthCheckMode::Http)), http);
        assert_eq!(
            probe_kind(&with(Mode::Http, HealthCheckMode::Tcp)),
            ProbeKind::Connect
        );
        for hc in [
            HealthCheckMode::Auto,
            HealthCheckMode::Http,
            HealthCheckMode::Tcp,
        ] {
            assert_eq!(probe_kind(&with(Mode::Tcp, hc)), ProbeKind::Connect);
        }
    }
}
