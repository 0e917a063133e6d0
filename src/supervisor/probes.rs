//! The supervisor's health probes of starting workers (`evloop::HealthProbe`, `GET
//! health-path`, 200 passes), run for the fleet's [`ProbeRequest`]s; verdicts go back to
//! [`super::fleet::Fleet::on_probe`].

use std::collections::HashMap;
use std::time::Instant;

use mio::{Registry, Token};

use super::fleet::ProbeRequest;
use crate::evloop::{HealthProbe, ProbeKind, ProbeStatus};

/// A probe's outcome: slot, launch generation, verdict.
pub type Verdict = (u16, u64, Result<(), String>);

/// One probe in flight.
#[derive(Debug)]
struct Probe {
    probe: HealthProbe,
    request: ProbeRequest,
}

/// The probes in flight, by poll token.
#[derive(Debug, Default)]
pub struct Probes {
    running: HashMap<Token, Probe>,
}

impl Probes {
    /// Whether `token` is a probe's.
    pub fn owns(&self, token: Token) -> bool {
        self.running.contains_key(&token)
    }

    /// Starts a probe; a probe that cannot even start is a failed verdict at once.
    pub fn start(
        &mut self,
        request: ProbeRequest,
        path: &str,
        registry: &Registry,
        token: Token,
    ) -> Option<Verdict> {
        let started =
            HealthProbe::start(request.addr, ProbeKind::Http { path }).and_then(|mut p| {
                p.register(registry, token)?;
                Ok(p)
            });
        match started {
            Ok(probe) => {
                self.running.insert(token, Probe { probe, request });
                None
            }
            Err(e) => Some((request.slot, request.generation, Err(e.to_string()))),
        }
    }

    /// Readiness on a probe's socket: its verdict once it has one.
    pub fn on_event(
        &mut self,
        ev: &mio::event::Event,
        registry: &Registry,
        now: Instant,
    ) -> Option<Verdict> {
        let p = self.running.get_mut(&ev.token())?;
        let verdict = match p.probe.on_event(ev) {
            ProbeStatus::Pending if now >= p.request.deadline => Err("timed out".to_string()),
            ProbeStatus::Pending => return None,
            ProbeStatus::Status(200) => Ok(()),
            ProbeStatus::Status(code) => Err(format!("status {code}")),
            ProbeStatus::Connected => Err("connected without an answer".to_string()),
            ProbeStatus::Failed(why) => Err(why),
        };
        self.finish(ev.token(), verdict, registry)
    }

    /// Probes past their deadline fail.
    pub fn expire(&mut self, registry: &Registry, now: Instant) -> Vec<Verdict> {
        let late: Vec<Token> = self
            .running
            .iter()
            .filter(|(_, p)| now >= p.request.deadline)
            .map(|(t, _)| *t)
            .collect();
        late.into_iter()
            .filter_map(|t| self.finish(t, Err("timed out".to_string()), registry))
            .collect()
    }

    fn finish(
        &mut self,
        token: Token,
        verdict: Result<(), String>,
        registry: &Registry,
    ) -> Option<Verdict> {
        let mut p = self.running.remove(&token)?;
        p.probe.deregister(registry);
        Some((p.request.slot, p.request.generation, verdict))
    }
}
