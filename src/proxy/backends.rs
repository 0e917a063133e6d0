//! The backend set one loop balances over: state from the supervisor (active/draining/removed),
//! health (active checks and passive ejection), balancing, idle upstream pools and metrics.

use std::net::SocketAddr;
use std::time::Instant;

use super::control::{BackendMetrics, BackendSpec, BackendState, LATENCY_BUCKETS_MS};
use super::policy::Policies;
use crate::config::Balance;
use crate::evloop::Key;

/// Where a backend stands with the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    /// Takes new requests when healthy.
    Active,
    /// Finishes in-flight requests, takes no new one.
    Draining,
    /// Gone from the set; the slot is reused once nothing refers to it.
    Removed,
}

/// One backend. Its fields change only through the methods below: the lease
/// (`super::lease`) counts requests in flight and records outcomes, health checks count
/// rise/fall, the set update (`Backends::apply`) changes address, weight and admin state.
pub struct Backend {
    /// Stable id from the supervisor (or the address in standalone mode).
    id: String,
    /// Address to connect to.
    addr: SocketAddr,
    /// Weight for `weighted`.
    weight: u32,
    /// Supervisor state.
    admin: Admin,
    /// Health as this loop sees it.
    healthy: bool,
    /// Consecutive active-check successes while down / failures while up.
    streak: u32,
    /// Bumped when the slot is reused for another backend (stale health timers ignore it).
    generation: u32,
    /// Smooth weighted round-robin state.
    current_weight: i64,
    /// Requests (HTTP) or connections (TCP) in flight: upstream leases not ended yet.
    in_flight: u64,
    /// Keys of idle pooled upstream connections, most recently used last.
    pool: Vec<Key>,
    /// Cumulative metrics.
    responses: [u64; 5],
    /// Passive failures: connect errors, timeouts, broken responses.
    failures: u64,
    latency: [u64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_ms: f64,
    /// The active check running now (its loop slab key).
    check: Option<Key>,
}

/// What one active-check result did to a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckVerdict {
    /// No change (the streak grew or was reset).
    Unchanged,
    /// `health-rise` passes in a row: the backend is up again.
    Up,
    /// `health-fall` failures in a row: the backend must be marked down.
    Fall,
}

impl Backend {
    fn new(id: String, addr: SocketAddr, weight: u32, admin: Admin, generation: u32) -> Backend {
        Backend {
            id,
            addr,
            weight: weight.max(1),
            admin,
            healthy: true,
            streak: 0,
            generation,
            current_weight: 0,
            in_flight: 0,
            pool: Vec::new(),
            responses: [0; 5],
            failures: 0,
            latency: [0; LATENCY_BUCKETS_MS.len() + 1],
            latency_sum_ms: 0.0,
            check: None,
        }
    }

    /// Stable id (for logs and metrics).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Supervisor state.
    pub fn admin(&self) -> Admin {
        self.admin
    }

    /// Whether this loop sees it healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Generation of the slot (bumped on reuse for another backend).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// A lease started (only `super::lease` calls this).
    pub(super) fn lease_started(&mut self) {
        self.in_flight += 1;
    }

    /// A lease ended (only `super::lease` calls this; each lease ends exactly once, so
    /// this never goes below zero).
    pub(super) fn lease_ended(&mut self) {
        debug_assert!(self.in_flight > 0, "lease ended twice");
        self.in_flight -= 1;
    }

    /// Counts a passive failure (connect error, timeout, broken response).
    pub fn note_failure(&mut self) {
        self.failures += 1;
    }

    /// Takes it out of rotation (active checks' fall or passive ejection); the caller
    /// closes its idle pool.
    pub fn set_down(&mut self) {
        self.healthy = false;
        self.streak = 0;
    }

    /// Applies one active-check result with the `rise`/`fall` thresholds.
    pub fn note_check(&mut self, ok: bool, rise: u32, fall: u32) -> CheckVerdict {
        if ok == self.healthy {
            self.streak = 0;
            return CheckVerdict::Unchanged;
        }
        self.streak += 1;
        if ok && self.streak >= rise.max(1) {
            self.healthy = true;
            self.streak = 0;
            CheckVerdict::Up
        } else if !ok && self.streak >= fall.max(1) {
            CheckVerdict::Fall
        } else {
            CheckVerdict::Unchanged
        }
    }

    /// The active check running now, if any.
    pub fn check(&self) -> Option<Key> {
        self.check
    }

    /// Notes the check started (Some) or ended (None).
    pub fn set_check(&mut self, check: Option<Key>) {
        self.check = check;
    }

    /// Idle pooled connections.
    pub fn pooled(&self) -> usize {
        self.pool.len()
    }

    /// Adds an idle connection to the pool.
    pub fn pool_push(&mut self, key: Key) {
        self.pool.push(key);
    }

    /// The most recently pooled idle connection.
    pub fn pool_pop(&mut self) -> Option<Key> {
        self.pool.pop()
    }

    /// Forgets a pooled connection (the backend closed it).
    pub fn pool_forget(&mut self, key: Key) {
        self.pool.retain(|&k| k != key);
    }

    /// Empties the pool, returning its keys (to close them).
    pub fn pool_take(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.pool)
    }

    /// Whether it may receive a new request.
    pub fn eligible(&self) -> bool {
        self.admin == Admin::Active && self.healthy
    }

    /// Records a finished response: status class and latency.
    pub fn record(&mut self, status: u16, started: Instant, now: Instant) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class] += 1;
        let ms = now.saturating_duration_since(started).as_secs_f64() * 1000.0;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[bucket] += 1;
        self.latency_sum_ms += ms;
    }

    /// This backend's metrics for the control channel (slot `i` of `policies`).
    pub fn metrics(&self, i: usize, policies: &Policies) -> BackendMetrics {
        BackendMetrics {
            retries: policies.retries_of(i),
            ejections: policies.ejections(i),
            ejected: policies.is_ejected(i),
            id: self.id.clone(),
            in_flight: self.in_flight,
            responses: self.responses,
            failures: self.failures,
            healthy: self.healthy,
            latency: self.latency.to_vec(),
            latency_sum_ms: self.latency_sum_ms,
        }
    }
}

/// Backends already tried for one request or connection; inline for the usual handful so a
/// request allocates nothing for it.
#[derive(Clone, Debug, Default)]
pub struct Tried {
    inline: [usize; 4],
    n: usize,
    more: Vec<usize>,
}

impl Tried {
    /// A set holding `items` (tests).
    pub fn of(items: &[usize]) -> Tried {
        let mut t = Tried::default();
        for &i in items {
            t.push(i);
        }
        t
    }

    /// Adds backend `b`.
    pub fn push(&mut self, b: usize) {
        if self.n < self.inline.len() {
            self.inline[self.n] = b;
            self.n += 1;
        } else {
            self.more.push(b);
        }
    }

    /// Whether `b` was tried.
    pub fn contains(&self, b: usize) -> bool {
        self.inline[..self.n].contains(&b) || self.more.contains(&b)
    }

    /// The backend tried last.
    pub fn last(&self) -> Option<usize> {
        match self.more.last() {
            Some(&b) => Some(b),
            None => self.n.checked_sub(1).map(|k| self.inline[k]),
        }
    }

    /// How many were tried.
    pub fn len(&self) -> usize {
        self.n + self.more.len()
    }

    /// Forgets `b` (it may be tried again).
    pub fn remove(&mut self, b: usize) {
        let mut all: Vec<usize> = self.inline[..self.n].to_vec();
        all.extend_from_slice(&self.more);
        all.retain(|&x| x != b);
        *self = Tried::of(&all);
    }
}

/// All backends of one loop; indices are stable for the life of a backend.
pub struct Backends {
    /// Slots; removed backends stay until nothing refers to them.
    list: Vec<Backend>,
    cursor: usize,
}

impl std::ops::Index<usize> for Backends {
    type Output = Backend;

    /// Backend `i` (an index handed out by this set: a lease's, a pool's, a check's).
    fn index(&self, i: usize) -> &Backend {
        &self.list[i]
    }
}

/// What changed when a new set was applied.
#[derive(Default)]
pub struct SetChange {
    /// Backends that left the active state (their idle pooled connections must close).
    pub deactivated: Vec<usize>,
    /// Backends added (their health checks must be scheduled).
    pub added: Vec<usize>,
    /// Backends that left the set (their slot's policy state is forgotten).
    pub removed: Vec<usize>,
    /// Backends whose id now names another address (a different server: policy state
    /// forgotten, ramped up again).
    pub readdressed: Vec<usize>,
}

impl Backends {
    /// The initial set.
    pub fn new(specs: &[BackendSpec]) -> Backends {
        let mut b = Backends {
            list: Vec::new(),
            cursor: 0,
        };
        b.apply(specs);
        b
    }

    /// Replaces the set: matching ids are updated in place, new ones added, missing ones removed.
    pub fn apply(&mut self, specs: &[BackendSpec]) -> SetChange {
        let mut change = SetChange::default();
        let mut seen = vec![false; self.list.len()];
        for spec in specs {
            let admin = match spec.state {
                BackendState::Active => Admin::Active,
                BackendState::Draining => Admin::Draining,
            };
            if let Some(i) = self
                .list
                .iter()
                .position(|b| b.admin != Admin::Removed && b.id == spec.id)
            {
                seen[i] = true;
                let b = &mut self.list[i];
                if b.addr != spec.addr {
                    // Same id, new address: a different server; start over.
                    b.addr = spec.addr;
                    b.healthy = true;
                    b.streak = 0;
                    change.deactivated.push(i);
                    change.readdressed.push(i);
                }
                b.weight = spec.weight.max(1);
                if b.admin == Admin::Active && admin != Admin::Active {
                    change.deactivated.push(i);
                }
                b.admin = admin;
                continue;
            }
            let reusable = self.list.iter().position(|b| {
                b.admin == Admin::Removed
                    && b.in_flight == 0
                    && b.pool.is_empty()
                    && b.check.is_none()
            });
            let i = match reusable {
                Some(i) => {
                    let generation = self.list[i].generation.wrapping_add(1);
                    self.list[i] =
                        Backend::new(spec.id.clone(), spec.addr, spec.weight, admin, generation);
                    seen[i] = true;
                    i
                }
                None => {
                    self.list.push(Backend::new(
                        spec.id.clone(),
                        spec.addr,
                        spec.weight,
                        admin,
                        0,
                    ));
                    self.list.len() - 1
                }
            };
            change.added.push(i);
        }
        for (i, seen) in seen.into_iter().enumerate() {
            if !seen && self.list[i].admin != Admin::Removed {
                self.list[i].admin = Admin::Removed;
                change.deactivated.push(i);
                change.removed.push(i);
            }
        }
        change
    }

    /// Picks a backend for a new request, skipping `exclude` (already tried) and the workers
    /// `policies` ejected; slow start's ramps shape the choice.
    pub fn pick(
        &mut self,
        balance: Balance,
        exclude: &Tried,
        policies: &mut Policies,
        now: Instant,
    ) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        match balance {
            Balance::RoundRobin => self.pick_round_robin(exclude, policies, now),
            Balance::Weighted => self.pick_weighted(exclude, policies, now),
            Balance::LeastConnections => self.pick_least_connections(exclude, policies, now),
        }
    }

    /// Whether backend `i` may take this request.
    fn may_take(&self, i: usize, exclude: &Tried, policies: &Policies) -> bool {
        let b = &self.list[i];
        b.eligible()
            && !exclude.contains(i)
            && !policies.is_ejected(i)
            && policies.admits(b.in_flight)
    }

    /// Whether some open (eligible, not ejected) worker is below its limit: a waiting
    /// request can go now.
    pub fn has_room(&self, policies: &Policies) -> bool {
        self.list
            .iter()
            .enumerate()
            .any(|(i, b)| b.eligible() && !policies.is_ejected(i) && policies.admits(b.in_flight))
    }

    /// `max-conn-per-worker`: whether a new request must wait in the queue: some backend
    /// could take it, but every one of them is at its limit.
    pub fn all_busy(&self, policies: &Policies) -> bool {
        let mut open = self
            .list
            .iter()
            .enumerate()
            .filter(|&(i, b)| b.eligible() && !policies.is_ejected(i))
            .peekable();
        open.peek().is_some() && open.all(|(_, b)| !policies.admits(b.in_flight))
    }

    /// The next eligible backend from the cursor; a ramping one takes only its share of its
    /// turns, and when a whole rotation passed everyone over, the first eligible one is taken.
    fn pick_round_robin(
        &mut self,
        exclude: &Tried,
        policies: &mut Policies,
        now: Instant,
    ) -> Option<usize> {
        let n = self.list.len();
        let mut first = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if !self.may_take(i, exclude, policies) {
                continue;
            }
            if policies.take_turn(i, now) {
                self.cursor = (i + 1) % n;
                return Some(i);
            }
            first.get_or_insert(i);
        }
        let i = first?;
        self.cursor = (i + 1) % n;
        Some(i)
    }

    /// Smooth weighted round-robin (as nginx): spreads a heavy backend's turns out; a ramping
    /// backend counts with its effective weight.
    fn pick_weighted(
        &mut self,
        exclude: &Tried,
        policies: &mut Policies,
        now: Instant,
    ) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..self.list.len() {
            if !self.may_take(i, exclude, policies) {
                continue;
            }
            let b = &mut self.list[i];
            let weight = i64::try_from(policies.weight(i, b.weight, now)).unwrap_or(i64::MAX);
            b.current_weight = b.current_weight.saturating_add(weight);
            total = total.saturating_add(weight);
            let cw = b.current_weight;
            if best.is_none_or(|j| cw > self.list[j].current_weight) {
                best = Some(i);
            }
        }
        if let Some(j) = best {
            self.list[j].current_weight = self.list[j].current_weight.saturating_sub(total);
        }
        best
    }

    /// Fewest in flight (relative to a ramping backend's share); ties go round-robin from
    /// the cursor.
    fn pick_least_connections(
        &mut self,
        exclude: &Tried,
        policies: &Policies,
        now: Instant,
    ) -> Option<usize> {
        let n = self.list.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if !self.may_take(i, exclude, policies) {
                continue;
            }
            let load = (i, self.list[i].in_flight);
            if best.is_none_or(|j| policies.less_loaded(load, (j, self.list[j].in_flight), now)) {
                best = Some(i);
            }
        }
        if let Some(j) = best {
            self.cursor = (j + 1) % n;
        }
        best
    }

    /// Backend slots (removed ones included).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Backend `i`.
    pub fn get(&self, i: usize) -> Option<&Backend> {
        self.list.get(i)
    }

    /// Backend `i`, mutably.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Backend> {
        self.list.get_mut(i)
    }

    /// Backends taking new requests from the supervisor's point of view.
    pub fn active(&self) -> usize {
        self.list
            .iter()
            .filter(|b| b.admin == Admin::Active)
            .count()
    }

    /// Metrics of every backend still in the set.
    pub fn metrics(&self, policies: &Policies) -> Vec<BackendMetrics> {
        self.list
            .iter()
            .enumerate()
            .filter(|(_, b)| b.admin != Admin::Removed)
            .map(|(i, b)| b.metrics(i, policies))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxySettings;

    /// A pick with every policy off.
    fn pick(b: &mut Backends, balance: Balance, tried: &Tried) -> Option<usize> {
        let now = Instant::now();
        b.pick(
            balance,
            tried,
            &mut Policies::new(&ProxySettings::default(), now),
            now,
        )
    }

    fn spec(id: &str, port: u16, weight: u32) -> BackendSpec {
        BackendSpec {
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            state: BackendState::Active,
        }
    }

    #[test]
    fn round_robin_skips_unhealthy_and_excluded() {
        let mut b = Backends::new(&[spec("a", 1, 1), spec("b", 2, 1), spec("c", 3, 1)]);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(&mut b, Balance::RoundRobin, &Tried::default()).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        b.list[1].healthy = false;
        let picks: Vec<_> = (0..4)
            .map(|_| pick(&mut b, Balance::RoundRobin, &Tried::default()).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(pick(&mut b, Balance::RoundRobin, &Tried::of(&[0, 2])), None);
    }

    #[test]
    fn weighted_is_proportional_and_smooth() {
        let mut b = Backends::new(&[spec("a", 1, 3), spec("b", 2, 1)]);
        let picks: Vec<_> = (0..8)
            .map(|_| pick(&mut b, Balance::Weighted, &Tried::default()).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        // Smooth: the light backend is not starved into one burst at the end.
        assert_eq!(&picks[..4], &[0, 0, 1, 0]);
    }

    #[test]
    fn least_connections_prefers_idle() {
        let mut b = Backends::new(&[spec("a", 1, 1), spec("b", 2, 1), spec("c", 3, 1)]);
        b.list[0].in_flight = 5;
        b.list[1].in_flight = 1;
        b.list[2].in_flight = 3;
        assert_eq!(
            pick(&mut b, Balance::LeastConnections, &Tried::default()),
            Some(1)
        );
        assert_eq!(
            pick(&mut b, Balance::LeastConnections, &Tried::of(&[1])),
            Some(2)
        );
    }

    #[test]
    fn note_check_counts_rise_and_fall() {
        let mut b = Backends::new(&[spec("a", 1, 1)]);
        let a = &mut b.list[0];
        assert_eq!(a.note_check(false, 2, 2), CheckVerdict::Unchanged);
        assert_eq!(
            a.note_check(true, 2, 2),
            CheckVerdict::Unchanged,
            "streak reset"
        );
        assert_eq!(a.note_check(false, 2, 2), CheckVerdict::Unchanged);
        assert_eq!(a.note_check(false, 2, 2), CheckVerdict::Fall);
        a.set_down();
        assert!(!a.eligible());
        assert_eq!(a.note_check(true, 2, 2), CheckVerdict::Unchanged);
        assert_eq!(a.note_check(true, 2, 2), CheckVerdict::Up);
        assert!(a.eligible());
    }

    #[test]
    fn apply_updates_removes_and_reuses() {
        let mut b = Backends::new(&[spec("a", 1, 1), spec("b", 2, 1)]);
        let mut s = spec("a", 1, 1);
        s.state = BackendState::Draining;
        let ch = b.apply(&[s]);
        assert_eq!(b.list[0].admin, Admin::Draining);
        assert_eq!(b.list[1].admin, Admin::Removed);
        assert_eq!(ch.deactivated, vec![0, 1]);
        let ch = b.apply(&[spec("c", 3, 1)]);
        // "b"'s slot is reused; "a" is removed.
        assert_eq!(ch.added, vec![1]);
        assert_eq!(ch.removed, vec![0]);
        assert_eq!(b.list[1].id, "c");
        assert_eq!(b.list[1].generation, 1);
        assert_eq!(b.list[0].admin, Admin::Removed);
        let now = Instant::now();
        let policies = Policies::new(&ProxySettings::default(), now);
        assert_eq!(b.metrics(&policies).len(), 1);
        let ch = b.apply(&[spec("c", 4, 1)]);
        assert_eq!(ch.readdressed, vec![1], "same id, new address");
    }

    fn slow_start(ms: u64) -> (Policies, Instant) {
        let now = Instant::now();
        let settings = ProxySettings {
            slow_start_ms: ms,
            ..ProxySettings::default()
        };
        (Policies::new(&settings, now), now)
    }

    /// Picks `n` times at `now`; how many went to backend 1.
    fn share_of_1(b: &mut Backends, p: &mut Policies, balance: Balance, now: Instant) -> usize {
        (0..100)
            .filter(|_| b.pick(balance, &Tried::default(), p, now) == Some(1))
            .count()
    }

    #[test]
    fn a_ramping_backend_gets_its_share_in_every_balance() {
        let ms = std::time::Duration::from_millis;
        for balance in [Balance::RoundRobin, Balance::Weighted] {
            let mut b = Backends::new(&[spec("a", 1, 1), spec("b", 2, 1)]);
            let (mut p, t0) = slow_start(10_000);
            p.begin_ramp(1, t0);
            let early = share_of_1(&mut b, &mut p, balance, t0);
            let half = share_of_1(&mut b, &mut p, balance, t0 + ms(5000));
            let done = share_of_1(&mut b, &mut p, balance, t0 + ms(10_000));
            assert!(
                early < half && half < done,
                "{balance:?}: {early} {half} {done}"
            );
            assert!((5..=15).contains(&early), "{balance:?}: {early}");
            assert_eq!(done, 50, "{balance:?}");
        }
        // Least-connections: equal in-flight counts favour the full backend; it gets the
        // ramping one only once the full one is busier relative to the shares.
        let mut b = Backends::new(&[spec("a", 1, 1), spec("b", 2, 1)]);
        let (mut p, t0) = slow_start(10_000);
        p.begin_ramp(1, t0);
        let lc = Balance::LeastConnections;
        assert_eq!(b.pick(lc, &Tried::default(), &mut p, t0), Some(0));
        b.list[0].in_flight = 8;
        assert_eq!(b.pick(lc, &Tried::default(), &mut p, t0), Some(0));
        b.list[0].in_flight = 10;
        assert_eq!(b.pick(lc, &Tried::default(), &mut p, t0), Some(1));
        // Alone and ramping, a backend still gets every request.
        let mut one = Backends::new(&[spec("a", 1, 1)]);
        p.begin_ramp(0, t0);
        assert_eq!(
            one.pick(Balance::RoundRobin, &Tried::default(), &mut p, t0),
            Some(0)
        );
    }

    #[test]
    fn an_ejected_backend_is_not_picked_until_restored() {
        let now = Instant::now();
        let settings = ProxySettings {
            eject_consecutive_5xx: 2,
            eject_ms: 1000,
            ..ProxySettings::default()
        };
        let mut p = Policies::new(&settings, now);
        let mut b = Backends::new(&[spec("a", 1, 1), spec("b", 2, 1)]);
        p.on_answer(1, 500, now, 2);
        p.on_answer(1, 500, now, 2);
        assert!(p.is_ejected(1));
        for balance in [
            Balance::RoundRobin,
            Balance::Weighted,
            Balance::LeastConnections,
        ] {
            assert_eq!(share_of_1(&mut b, &mut p, balance, now), 0, "{balance:?}");
        }
        assert!(b.metrics(&p)[1].ejected);
        let back = now + std::time::Duration::from_millis(1000);
        assert_eq!(p.next_return(), Some(back));
        let mut restored = Vec::new();
        p.restore(back, |i| restored.push(i));
        assert_eq!(restored, [1]);
        assert_eq!(p.next_return(), None);
        assert_eq!(share_of_1(&mut b, &mut p, Balance::RoundRobin, back), 50);
        assert_eq!(b.metrics(&p)[1].ejections, 1);
    }
}
