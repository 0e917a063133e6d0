//! The autoscaler: pure decision logic. The supervisor feeds it one [`Sample`] about once a
//! second (and at once when a child reports a panic-level demand or a request finds no worker)
//! and applies the [`Decision`]; nothing here touches a socket, a process or the clock (time
//! comes in as an argument), so the state machine is unit-tested with synthetic time.
//!
//! The rule (documented in docs/ARCHITECTURE.md, "Autoscaler"):
//! - load = in-flight requests on active workers / active workers; demand = in flight +
//!   queued in the LB children.
//! - **high** when load > `target-inflight`, or p90 > `target-p90-ms` (when that is set).
//! - **low** when load < `target-inflight` × [`SCALE_IN_RATIO`] and p90 (when set and measured)
//!   < `target-p90-ms` × [`SCALE_IN_RATIO`]. Between the two nothing happens (hysteresis band).
//! - Scale out by `step` when high has held for `breach-ms`; scale in by `step` when low has
//!   held for `breach-ms`, but never to fewer workers than keep the load at or below the target
//!   (`ceil(in_flight / target-inflight)`), so a scale-in cannot itself cause a scale-out.
//! - **Panic**: demand >= [`PANIC_FACTOR`] × capacity (`target-inflight` × active workers)
//!   enters panic mode. In panic the desired count goes at once (no breach, no cooldown) to
//!   `ceil(demand / target-inflight)` (bounded by `max`), at any sample showing more is needed;
//!   nothing scales in; panic ends after a calm `breach-ms` (demand below the threshold).
//! - **Zero**: with `min: 0`, no request (none completed, none in flight or queued) for
//!   `idle-ms` takes the count to 0; demand at 0 (a child's demand signal or a sample) takes
//!   it to `ceil(demand / target-inflight)` (at least 1) at once. Load-based scale-in stops at 1.
//! - Any leaving of the high (low) region restarts its clock: flapping input never acts.
//! - After an action, `cooldown-ms` must pass and the breach must hold again for a full
//!   `breach-ms` measured after the action (fresh evidence with the new capacity).
//! - The desired count never leaves `[min, max]`; a count outside (start, reconfigure) is
//!   corrected at once.
//! - A scale-out waits until the previous scale-out's workers are active (at most
//!   [`MAX_SCALE_OUT_WAIT`]): slow starts do not stack up extra workers.
//! - A worker the autoscaler asked for that fails to start gives up that worker and pauses
//!   scale-out with an exponential backoff (cooldown × 2^(n-1), capped at 5 minutes).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::prometheus::{Kind, MetricsText};
use crate::config;
use crate::proxy::control::{BackendMetrics, LATENCY_BUCKETS_MS};

/// Scale in only below this fraction of the target (the hysteresis band is [ratio, 1] × target).
pub const SCALE_IN_RATIO: f64 = 0.5;

/// Panic when demand reaches this many times the active capacity.
pub const PANIC_FACTOR: f64 = 2.0;

/// Decisions kept for `/status`.
pub const RECENT_DECISIONS: usize = 20;

/// Longest scale-out pause after repeated start failures.
pub const MAX_START_BACKOFF: Duration = Duration::from_secs(300);

/// Shortest scale-out pause after a start failure (when the cooldown is shorter).
pub const MIN_START_BACKOFF: Duration = Duration::from_secs(1);

/// Longest a scale-out waits for the previous one's workers to become active.
pub const MAX_SCALE_OUT_WAIT: Duration = Duration::from_secs(60);

/// One measurement, taken by the supervisor about once a second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Workers that take new requests now (healthy, not draining).
    pub active_workers: usize,
    /// Requests in flight on those workers, summed over every LB child.
    pub in_flight: u64,
    /// Requests waiting in the LB children for a worker (counted as demand).
    pub queued: u64,
    /// Requests answered so far (any counter that moves when requests are served); a change
    /// since the previous sample is activity for `idle-ms`.
    pub requests_total: u64,
    /// p90 latency (ms) of requests completed since the previous sample; None when none did.
    pub p90_ms: Option<f64>,
}

impl Sample {
    /// In flight + queued.
    pub fn demand(&self) -> u64 {
        self.in_flight.saturating_add(self.queued)
    }
}

/// What the supervisor should do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to change.
    Hold,
    /// Run `target` workers (start or drain-then-stop the difference). `reason` is for the log.
    ScaleTo { target: usize, reason: String },
}

/// Which side of the hysteresis band the last sample was on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Above a target: scale-out candidate.
    High,
    /// Inside the band: nothing to do.
    Steady,
    /// Below every scale-in threshold: scale-in candidate.
    Low,
    /// Nothing measurable (no active worker).
    Unknown,
}

/// Kind of a recorded decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// More workers because of load.
    ScaleOut,
    /// More workers at once, as many as the demand needs (panic mode).
    PanicScaleOut,
    /// Fewer workers because of no load.
    ScaleIn,
    /// No request for `idle-ms`: no worker at all.
    ScaleToZero,
    /// Demand while no worker is wanted: start some at once.
    ScaleFromZero,
    /// Desired count moved into [min, max].
    Bounds,
    /// A requested worker failed to start; it is given up.
    StartFailed,
}

impl Action {
    /// The name used in `/status`, `/metrics` and the log.
    pub fn name(self) -> &'static str {
        match self {
            Action::ScaleOut => "scale_out",
            Action::PanicScaleOut => "panic_scale_out",
            Action::ScaleIn => "scale_in",
            Action::ScaleToZero => "scale_to_zero",
            Action::ScaleFromZero => "scale_from_zero",
            Action::Bounds => "bounds",
            Action::StartFailed => "start_failed",
        }
    }
}

/// A decision that changed the desired count, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastDecision {
    /// What was done.
    pub action: Action,
    /// Desired count before.
    pub from: usize,
    /// Desired count after.
    pub to: usize,
    /// Human-readable why (also logged).
    pub reason: String,
    /// In-flight per active worker when decided.
    pub measured_inflight_per_worker: f64,
    /// Demand (in flight + queued) when decided.
    pub measured_demand: u64,
    /// Capacity when decided: `target-inflight` × active workers.
    pub capacity: f64,
    /// p90 (ms) when decided, if measured.
    pub measured_p90_ms: Option<f64>,
    /// How long the evidence held (breach, idle time, panic so far; 0: acted at once).
    pub window_ms: u64,
    /// Taken in panic mode.
    pub panic: bool,
    /// Milliseconds between the decision and the latest sample.
    pub ago_ms: u64,
}

impl LastDecision {
    /// The decision's `key=value` fields for the log line.
    pub fn log_fields(&self) -> String {
        let p90 = self
            .measured_p90_ms
            .map_or_else(|| "none".to_string(), |p| format!("{p:.0}"));
        format!(
            "action={} from={} to={} panic={} demand={} capacity={} inflight_per_worker={:.1} p90_ms={p90} window_ms={} reason={}",
            self.action.name(),
            self.from,
            self.to,
            self.panic,
            self.measured_demand,
            self.capacity,
            self.measured_inflight_per_worker,
            self.window_ms,
            crate::sys::log::quote(&self.reason)
        )
    }
}

/// The autoscaler's state for `/status` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// `autoscale.enabled`.
    pub enabled: bool,
    /// `autoscale.min`.
    pub min: usize,
    /// `autoscale.max`.
    pub max: usize,
    /// Workers the autoscaler wants (0 before the first sample).
    pub desired: usize,
    /// Active workers in the latest sample.
    pub active: usize,
    /// In-flight per active worker in the latest sample.
    pub inflight_per_worker: f64,
    /// In flight + queued in the latest sample.
    pub demand: u64,
    /// Queued in the LB children in the latest sample.
    pub queued: u64,
    /// `autoscale.target-inflight`.
    pub target_inflight: f64,
    /// p90 (ms) in the latest sample.
    pub p90_ms: Option<f64>,
    /// `autoscale.target-p90-ms`, when set.
    pub target_p90_ms: Option<f64>,
    /// Where the latest sample fell.
    pub region: Region,
    /// How long the current region has held (ms), as of the latest sample.
    pub region_for_ms: u64,
    /// In panic mode (demand reached twice the capacity; ends after a calm `breach-ms`).
    pub panic: bool,
    /// How long panic mode has lasted (ms; 0 when not in panic).
    pub panic_for_ms: u64,
    /// Time since the last request (ms).
    pub idle_for_ms: u64,
    /// `autoscale.idle-ms` (acts only with `min: 0`).
    pub idle_ms: u64,
    /// Time left before another action is allowed (ms).
    pub cooldown_remaining_ms: u64,
    /// Time left in a start-failure backoff (ms; scale-out paused meanwhile).
    pub backoff_remaining_ms: u64,
    /// A scale-out waits for the previous one's workers to become active.
    pub waiting_for_workers: bool,
    /// Scale-out actions so far (panic ones and starts from zero included).
    pub scale_outs: u64,
    /// Of those, in panic mode.
    pub panic_scale_outs: u64,
    /// Of those, from zero workers.
    pub scale_from_zero: u64,
    /// Scale-in actions so far (to zero included).
    pub scale_ins: u64,
    /// Of those, to zero workers.
    pub scale_to_zero: u64,
    /// Start failures reported so far.
    pub start_failures: u64,
    /// The last change of the desired count.
    pub last_decision: Option<LastDecision>,
    /// The last [`RECENT_DECISIONS`] changes, oldest first.
    pub recent_decisions: Vec<LastDecision>,
}

/// A decision with the instant it was taken (converted to `ago_ms` in status).
#[derive(Clone, Debug)]
struct Recorded {
    at: Instant,
    decision: LastDecision,
}

/// Why an action is taken: the log's reason, the window the evidence held, the demand seen.
struct Why {
    reason: String,
    window: Duration,
    demand: u64,
}

/// Counters of actions by kind.
#[derive(Clone, Debug, Default)]
struct Counts {
    scale_outs: u64,
    panic_scale_outs: u64,
    scale_from_zero: u64,
    scale_ins: u64,
    scale_to_zero: u64,
    start_failures: u64,
}

/// The autoscaler state machine. See the module documentation for the rule.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    cfg: config::Autoscale,
    /// None until the first sample (then the active count, clamped to [min, max]).
    desired: Option<usize>,
    region: Region,
    region_since: Option<Instant>,
    last_action: Option<Instant>,
    backoff_until: Option<Instant>,
    consecutive_failures: u32,
    /// Since when a scale-out's workers have not all become active yet.
    scale_out_pending: Option<Instant>,
    /// Since when panic mode lasts.
    panic_since: Option<Instant>,
    /// In panic: since when demand is below the panic threshold.
    calm_since: Option<Instant>,
    /// Panic entered (true) or left (false) since the supervisor last asked.
    panic_change: Option<bool>,
    /// Last request seen (a served-counter change, something in flight or queued, a demand
    /// signal); the first sample when none yet.
    last_activity: Option<Instant>,
    last_requests_total: Option<u64>,
    last_sample: Sample,
    last_now: Option<Instant>,
    recent: VecDeque<Recorded>,
    counts: Counts,
}

impl Autoscaler {
    /// A fresh autoscaler; the desired count is taken from the first sample.
    pub fn new(cfg: &config::Autoscale) -> Autoscaler {
        Autoscaler {
            cfg: cfg.clone(),
            desired: None,
            region: Region::Unknown,
            region_since: None,
            last_action: None,
            backoff_until: None,
            consecutive_failures: 0,
            scale_out_pending: None,
            panic_since: None,
            calm_since: None,
            panic_change: None,
            last_activity: None,
            last_requests_total: None,
            last_sample: Sample::default(),
            last_now: None,
            recent: VecDeque::new(),
            counts: Counts::default(),
        }
    }

    /// New settings (on reload). Keeps the desired count and the timers; the next sample
    /// moves the count into the new bounds if needed.
    pub fn reconfigure(&mut self, cfg: &config::Autoscale) {
        self.cfg = cfg.clone();
    }

    /// Sets the desired count: the start count once the first workers run, or an operator's
    /// new `worker` on reload. Clamped to [min, max] when enabled. Restarts the breach clock
    /// (the next action needs a full `breach-ms` measured from here) but not the cooldown.
    pub fn set_desired(&mut self, now: Instant, n: usize) {
        let n = if self.cfg.enabled { self.clamp(n) } else { n };
        self.desired = Some(n);
        self.region_since = Some(now);
        self.last_activity.get_or_insert(now);
    }

    /// The count the autoscaler wants, once it has seen a sample.
    pub fn desired(&self) -> Option<usize> {
        self.desired
    }

    /// The latest decision that changed the desired count.
    pub fn last_decision(&self) -> Option<&LastDecision> {
        self.recent.back().map(|r| &r.decision)
    }

    /// Whether panic mode was entered (`Some(true)`) or left since the previous call.
    pub fn take_panic_change(&mut self) -> Option<bool> {
        self.panic_change.take()
    }

    fn min(&self) -> usize {
        self.cfg.min
    }

    fn max(&self) -> usize {
        // A config with max < min is rejected by validation; if one slips through, min wins.
        self.cfg.max.max(self.cfg.min)
    }

    fn step(&self) -> usize {
        self.cfg.step.max(1)
    }

    fn clamp(&self, n: usize) -> usize {
        n.clamp(self.min(), self.max())
    }

    fn p90_target(&self) -> Option<f64> {
        (self.cfg.target_p90_ms > 0).then_some(self.cfg.target_p90_ms as f64)
    }

    fn inflight_target(&self) -> Option<f64> {
        (self.cfg.target_inflight.is_finite() && self.cfg.target_inflight > 0.0)
            .then_some(self.cfg.target_inflight)
    }

    /// Active capacity: `target-inflight` × active workers (0 without a target).
    fn capacity(&self, sample: &Sample) -> f64 {
        self.inflight_target()
            .map_or(0.0, |t| t * sample.active_workers as f64)
    }

    /// Workers the demand needs at the target (0 without a target).
    fn needed_for(&self, demand: u64) -> usize {
        match self.inflight_target() {
            Some(t) => (demand as f64 / t).ceil().min(self.max() as f64) as usize,
            None => 0,
        }
    }

    /// Demand at or above [`PANIC_FACTOR`] × the active capacity (some worker active).
    fn panic_level(&self, sample: &Sample) -> bool {
        sample.active_workers > 0
            && self.inflight_target().is_some()
            && sample.demand() as f64 >= PANIC_FACTOR * self.capacity(sample)
    }

    /// Whether `sample` would make a panic scale-out now: the supervisor calls it on each
    /// fresh child report to decide within a second instead of at the next regular sample.
    pub fn panic_would_act(&self, sample: &Sample) -> bool {
        let Some(desired) = self.desired else {
            return false;
        };
        self.cfg.enabled && self.panic_level(sample) && self.needed_for(sample.demand()) > desired
    }

    /// Where a sample falls relative to the targets.
    fn classify(&self, sample: &Sample) -> Region {
        if sample.active_workers == 0 {
            return Region::Unknown;
        }
        let per_worker = per_worker(sample);
        let inflight_target = self.inflight_target();
        let p90_target = self.p90_target();
        let high_inflight = inflight_target.is_some_and(|t| per_worker > t);
        let high_p90 = matches!((sample.p90_ms, p90_target), (Some(p), Some(t)) if p > t);
        if high_inflight || high_p90 {
            return Region::High;
        }
        let low_inflight = inflight_target.is_none_or(|t| per_worker < t * SCALE_IN_RATIO);
        let low_p90 = match (sample.p90_ms, p90_target) {
            (Some(p), Some(t)) => p < t * SCALE_IN_RATIO,
            // No target, or nothing completed lately: latency says nothing against scaling in.
            _ => true,
        };
        if low_inflight && low_p90 && (inflight_target.is_some() || p90_target.is_some()) {
            Region::Low
        } else {
            Region::Steady
        }
    }

    /// Notes activity (for `idle-ms`): served requests moved, or something in flight or queued.
    fn note_activity(&mut self, now: Instant, sample: &Sample) {
        let moved = self
            .last_requests_total
            .is_some_and(|t| t != sample.requests_total);
        self.last_requests_total = Some(sample.requests_total);
        if moved || sample.demand() > 0 || self.last_activity.is_none() {
            self.last_activity = Some(now);
        }
    }

    /// Enters panic at a panic-level sample; leaves it after a calm `breach-ms`.
    fn update_panic(&mut self, now: Instant, sample: &Sample) {
        if self.panic_level(sample) {
            self.calm_since = None;
            if self.panic_since.is_none() {
                self.panic_since = Some(now);
                self.panic_change = Some(true);
            }
            return;
        }
        if self.panic_since.is_none() {
            return;
        }
        let calm = *self.calm_since.get_or_insert(now);
        if now.saturating_duration_since(calm) >= Duration::from_millis(self.cfg.breach_ms) {
            self.panic_since = None;
            self.calm_since = None;
            self.panic_change = Some(false);
        }
    }

    /// Takes one sample and returns what to do now.
    pub fn observe(&mut self, now: Instant, sample: &Sample) -> Decision {
        self.last_sample = sample.clone();
        self.last_now = Some(now);
        if !self.cfg.enabled {
            self.region = Region::Unknown;
            self.region_since = None;
            return Decision::Hold;
        }
        self.note_activity(now, sample);

        let desired = match self.desired {
            Some(d) => d,
            // Without set_desired, the first sample with a running worker gives the start count
            // (a sample with none says nothing: the first workers may still be starting).
            None if sample.active_workers == 0 => return Decision::Hold,
            None => {
                self.desired = Some(sample.active_workers);
                sample.active_workers
            }
        };

        // Region bookkeeping: a change of region restarts its clock.
        let region = self.classify(sample);
        if region != self.region || self.region_since.is_none() {
            self.region = region;
            self.region_since = Some(now);
        }

        if self.scale_out_pending.is_some() && sample.active_workers >= desired {
            // The last scale-out fully took effect: starts work again, and the next decision
            // needs a breach measured with all of its workers.
            self.scale_out_pending = None;
            self.region_since = Some(now);
            self.consecutive_failures = 0;
        }
        self.update_panic(now, sample);

        // Bounds first: no breach or cooldown needed to get back inside [min, max].
        let bounded = self.clamp(desired);
        if bounded != desired {
            let reason = format!(
                "desired {desired} outside [{}, {}]: set to {bounded}",
                self.min(),
                self.max()
            );
            return self.act(
                now,
                Action::Bounds,
                desired,
                bounded,
                self.why(reason, None),
            );
        }
        if desired == 0 {
            return self.scale_from_zero(now, sample.demand());
        }
        if let Some(d) = self.idle_to_zero(now, sample, desired) {
            return d;
        }
        if self.panic_since.is_some() {
            return self.panic_scale_out(now, sample, desired);
        }
        self.by_breach(now, sample, desired)
    }

    /// The regular rule: a region held for `breach-ms`, outside the cooldown.
    fn by_breach(&mut self, now: Instant, sample: &Sample, desired: usize) -> Decision {
        let held_for = self
            .region_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let breach = Duration::from_millis(self.cfg.breach_ms);
        let cooling = self
            .last_action
            .is_some_and(|a| now.saturating_duration_since(a) < self.cooldown());
        if held_for < breach || cooling {
            return Decision::Hold;
        }
        match self.region {
            Region::High => self.scale_out(now, sample, desired, held_for),
            Region::Low => self.scale_in(now, sample, desired, held_for),
            Region::Steady | Region::Unknown => Decision::Hold,
        }
    }

    /// A child found no worker for a request (`Up::Demand`): with no worker wanted, start as
    /// many as `queued` needs (at least one) now, without waiting for the next sample.
    pub fn on_demand(&mut self, now: Instant, queued: u64) -> Decision {
        self.last_now = Some(now);
        self.last_activity = Some(now);
        if !self.cfg.enabled || self.desired != Some(0) {
            return Decision::Hold;
        }
        self.scale_from_zero(now, queued.max(1))
    }

    /// No worker wanted and `demand` waiting: `ceil(demand / target)` workers (at least 1),
    /// unless a start-failure backoff runs.
    fn scale_from_zero(&mut self, now: Instant, demand: u64) -> Decision {
        if demand == 0 || self.backoff_until.is_some_and(|b| now < b) || self.max() == 0 {
            return Decision::Hold;
        }
        let target = self.needed_for(demand).clamp(1, self.max());
        let reason = format!("demand {demand} with no worker: 0 -> {target} workers");
        let why = Why {
            reason,
            window: Duration::ZERO,
            demand,
        };
        self.scale_out_pending = Some(now);
        self.act(now, Action::ScaleFromZero, 0, target, why)
    }

    /// `min: 0` and no request for `idle-ms` (nothing in flight or queued, not in panic):
    /// every worker goes.
    fn idle_to_zero(&mut self, now: Instant, sample: &Sample, desired: usize) -> Option<Decision> {
        let idle = now.saturating_duration_since(self.last_activity?);
        if self.min() > 0
            || self.panic_since.is_some()
            || sample.demand() > 0
            || idle < Duration::from_millis(self.cfg.idle_ms)
        {
            return None;
        }
        let reason = format!(
            "no request for {}ms (idle-ms {}): {desired} -> 0 workers",
            idle.as_millis(),
            self.cfg.idle_ms
        );
        let why = self.why(reason, Some(idle));
        Some(self.act(now, Action::ScaleToZero, desired, 0, why))
    }

    /// Panic: as many workers as the demand needs at the target (bounded by `max`), at once,
    /// whenever that is more than wanted now; not during a start-failure backoff.
    fn panic_scale_out(&mut self, now: Instant, sample: &Sample, desired: usize) -> Decision {
        let demand = sample.demand();
        let target = self.needed_for(demand).min(self.max());
        if target <= desired || self.backoff_until.is_some_and(|b| now < b) {
            return Decision::Hold;
        }
        let since = self.panic_since.unwrap_or(now);
        let reason = format!(
            "demand {demand} (in flight {} + queued {}) >= {PANIC_FACTOR} x capacity {} ({} workers x target {}): {desired} -> {target} workers",
            sample.in_flight,
            sample.queued,
            self.capacity(sample),
            sample.active_workers,
            self.cfg.target_inflight
        );
        let why = self.why(reason, Some(now.saturating_duration_since(since)));
        self.scale_out_pending = Some(now);
        self.act(now, Action::PanicScaleOut, desired, target, why)
    }

    /// Evidence from the latest sample, held for `window`.
    fn why(&self, reason: String, window: Option<Duration>) -> Why {
        Why {
            reason,
            window: window.unwrap_or(Duration::ZERO),
            demand: self.last_sample.demand(),
        }
    }

    /// Load above the target for the whole breach: `step` more workers, unless at `max`,
    /// in a start-failure backoff, or still waiting for the previous scale-out's workers.
    fn scale_out(
        &mut self,
        now: Instant,
        sample: &Sample,
        desired: usize,
        held_for: Duration,
    ) -> Decision {
        if desired >= self.max() {
            return Decision::Hold;
        }
        if self.backoff_until.is_some_and(|b| now < b) {
            return Decision::Hold;
        }
        // The workers of the previous scale-out are still starting: the load per worker is
        // measured on fewer workers than asked for, so wait for them (a start that fails is
        // reported and ends the wait; a lost report lapses).
        if self
            .scale_out_pending
            .is_some_and(|p| now.saturating_duration_since(p) < MAX_SCALE_OUT_WAIT)
        {
            return Decision::Hold;
        }
        let target = self.clamp(desired + self.step());
        let reason = format!(
            "{} for {}ms: {desired} -> {target} workers",
            self.describe_high(sample),
            held_for.as_millis()
        );
        self.scale_out_pending = Some(now);
        let why = self.why(reason, Some(held_for));
        self.act(now, Action::ScaleOut, desired, target, why)
    }

    /// Load below half the target for the whole breach: `step` fewer workers, but never
    /// below `min` (nor below 1: only `idle-ms` reaches 0) nor below what keeps the current
    /// load at or under the target.
    fn scale_in(
        &mut self,
        now: Instant,
        sample: &Sample,
        desired: usize,
        held_for: Duration,
    ) -> Decision {
        let floor = self.min().max(1);
        if desired <= floor {
            return Decision::Hold;
        }
        let needed = self.needed_for(sample.demand());
        let target = desired
            .saturating_sub(self.step())
            .max(floor)
            .max(needed.min(desired));
        if target >= desired {
            return Decision::Hold;
        }
        let reason = format!(
            "{} for {}ms: {desired} -> {target} workers",
            self.describe_low(sample),
            held_for.as_millis()
        );
        let why = self.why(reason, Some(held_for));
        self.act(now, Action::ScaleIn, desired, target, why)
    }

    /// A worker the autoscaler asked for failed to start (never became healthy). Gives up
    /// that worker (desired - 1, not below min) and pauses scale-out with a backoff that
    /// doubles on each consecutive failure, so a broken start is never retried in a loop.
    pub fn report_start_failure(&mut self, now: Instant) -> Decision {
        self.counts.start_failures += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.scale_out_pending = None;
        let backoff = self.start_backoff();
        self.backoff_until = Some(now + backoff);
        let Some(desired) = self.desired else {
            return Decision::Hold;
        };
        if !self.cfg.enabled || desired <= self.min() {
            return Decision::Hold;
        }
        let target = desired - 1;
        let reason = format!(
            "worker start failed ({} in a row): {desired} -> {target} workers, scale-out paused {}ms",
            self.consecutive_failures,
            backoff.as_millis()
        );
        let why = self.why(reason, None);
        self.act(now, Action::StartFailed, desired, target, why)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cfg.cooldown_ms)
    }

    /// cooldown × 2^(failures-1), at least [`MIN_START_BACKOFF`], at most [`MAX_START_BACKOFF`].
    fn start_backoff(&self) -> Duration {
        let base = self.cooldown().max(MIN_START_BACKOFF);
        let shift = self.consecutive_failures.saturating_sub(1).min(16);
        base.saturating_mul(1u32 << shift).min(MAX_START_BACKOFF)
    }

    fn describe_high(&self, sample: &Sample) -> String {
        let per_worker = per_worker(sample);
        match (self.inflight_target(), sample.p90_ms, self.p90_target()) {
            (Some(t), _, _) if per_worker > t => {
                format!("in-flight per worker {per_worker:.1} > target {t}")
            }
            (_, Some(p), Some(t)) => format!("p90 {p:.0}ms > target {t:.0}ms"),
            _ => format!("in-flight per worker {per_worker:.1}"),
        }
    }

    fn describe_low(&self, sample: &Sample) -> String {
        let per_worker = per_worker(sample);
        let mut s = match self.inflight_target() {
            Some(t) => format!(
                "in-flight per worker {per_worker:.1} < {:.1} ({SCALE_IN_RATIO} x target {t})",
                t * SCALE_IN_RATIO
            ),
            None => format!("in-flight per worker {per_worker:.1}"),
        };
        if let (Some(p), Some(t)) = (sample.p90_ms, self.p90_target()) {
            s.push_str(&format!(", p90 {p:.0}ms < {:.0}ms", t * SCALE_IN_RATIO));
        }
        s
    }

    fn act(&mut self, now: Instant, action: Action, from: usize, to: usize, why: Why) -> Decision {
        self.desired = Some(to);
        self.last_action = Some(now);
        // The next action needs its own breach, measured with the new capacity.
        self.region_since = Some(now);
        let c = &mut self.counts;
        match action {
            Action::ScaleOut => c.scale_outs += 1,
            Action::PanicScaleOut => {
                c.scale_outs += 1;
                c.panic_scale_outs += 1;
            }
            Action::ScaleFromZero => {
                c.scale_outs += 1;
                c.scale_from_zero += 1;
            }
            Action::ScaleIn => c.scale_ins += 1,
            Action::ScaleToZero => {
                c.scale_ins += 1;
                c.scale_to_zero += 1;
            }
            Action::Bounds | Action::StartFailed => {}
        }
        let decision = LastDecision {
            action,
            from,
            to,
            reason: why.reason.clone(),
            measured_inflight_per_worker: per_worker(&self.last_sample),
            measured_demand: why.demand,
            capacity: self.capacity(&self.last_sample),
            measured_p90_ms: self.last_sample.p90_ms,
            window_ms: why.window.as_millis() as u64,
            panic: self.panic_since.is_some(),
            ago_ms: 0,
        };
        if self.recent.len() >= RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(Recorded { at: now, decision });
        Decision::ScaleTo {
            target: to,
            reason: why.reason,
        }
    }

    /// The state for `/status` (serialisable), as of the latest sample.
    pub fn status(&self) -> Status {
        let now = self.last_now;
        let since = |t: Option<Instant>| -> u64 {
            match (now, t) {
                (Some(n), Some(t)) => n.saturating_duration_since(t).as_millis() as u64,
                _ => 0,
            }
        };
        let until = |t: Option<Instant>| -> u64 {
            match (now, t) {
                (Some(n), Some(t)) => t.saturating_duration_since(n).as_millis() as u64,
                _ => 0,
            }
        };
        let aged = |r: &Recorded| LastDecision {
            ago_ms: since(Some(r.at)),
            ..r.decision.clone()
        };
        let c = &self.counts;
        Status {
            enabled: self.cfg.enabled,
            min: self.min(),
            max: self.max(),
            desired: self.desired.unwrap_or(0),
            active: self.last_sample.active_workers,
            inflight_per_worker: per_worker(&self.last_sample),
            demand: self.last_sample.demand(),
            queued: self.last_sample.queued,
            target_inflight: self.cfg.target_inflight,
            p90_ms: self.last_sample.p90_ms,
            target_p90_ms: self.p90_target(),
            region: self.region,
            region_for_ms: since(self.region_since),
            panic: self.panic_since.is_some(),
            panic_for_ms: since(self.panic_since),
            idle_for_ms: since(self.last_activity),
            idle_ms: self.cfg.idle_ms,
            cooldown_remaining_ms: until(self.last_action.map(|a| a + self.cooldown())),
            backoff_remaining_ms: until(self.backoff_until),
            waiting_for_workers: self.scale_out_pending.is_some()
                && self.last_sample.active_workers < self.desired.unwrap_or(0),
            scale_outs: c.scale_outs,
            panic_scale_outs: c.panic_scale_outs,
            scale_from_zero: c.scale_from_zero,
            scale_ins: c.scale_ins,
            scale_to_zero: c.scale_to_zero,
            start_failures: c.start_failures,
            last_decision: self.recent.back().map(aged),
            recent_decisions: self.recent.iter().map(aged).collect(),
        }
    }
}

impl Status {
    /// The autoscaler's families of `/metrics` (the supervisor's text ends with them).
    pub fn write_metrics(&self, m: &mut MetricsText) {
        let gauges: [(&'static str, &str, f64); 7] = [
            (
                "goloadbalancer_autoscale_enabled",
                "1 when the autoscaler is on.",
                f64::from(u8::from(self.enabled)),
            ),
            (
                "goloadbalancer_autoscale_desired_workers",
                "Workers the autoscaler wants.",
                self.desired as f64,
            ),
            (
                "goloadbalancer_autoscale_active_workers",
                "Active workers in the autoscaler's latest sample.",
                self.active as f64,
            ),
            (
                "goloadbalancer_autoscale_inflight_per_worker",
                "In-flight requests per active worker (latest sample).",
                self.inflight_per_worker,
            ),
            (
                "goloadbalancer_autoscale_target_inflight",
                "Target in-flight requests per worker.",
                self.target_inflight,
            ),
            (
                "goloadbalancer_autoscale_demand",
                "In-flight plus queued requests (latest sample).",
                self.demand as f64,
            ),
            (
                "goloadbalancer_autoscale_panic",
                "1 while in panic mode (demand reached twice the capacity).",
                f64::from(u8::from(self.panic)),
            ),
        ];
        for (name, help, value) in gauges {
            m.family(name, Kind::Gauge, help).sample(&[], value);
        }
        if let Some(p) = self.p90_ms {
            m.family(
                "goloadbalancer_autoscale_p90_ms",
                Kind::Gauge,
                "p90 latency (ms) of the latest sample.",
            )
            .sample(&[], p);
        }
        self.write_decision_metrics(m);
    }

    /// Action counters and the latest decision.
    fn write_decision_metrics(&self, m: &mut MetricsText) {
        let regular_outs = self.scale_outs - self.panic_scale_outs - self.scale_from_zero;
        let regular_ins = self.scale_ins - self.scale_to_zero;
        m.family(
            "goloadbalancer_autoscale_actions_total",
            Kind::Counter,
            "Scaling actions by kind.",
        )
        .sample(&[("action", "scale_out")], regular_outs)
        .sample(&[("action", "panic_scale_out")], self.panic_scale_outs)
        .sample(&[("action", "scale_from_zero")], self.scale_from_zero)
        .sample(&[("action", "scale_in")], regular_ins)
        .sample(&[("action", "scale_to_zero")], self.scale_to_zero)
        .sample(&[("action", "start_failed")], self.start_failures);
        if let Some(d) = &self.last_decision {
            let (from, to) = (d.from.to_string(), d.to.to_string());
            let panic = if d.panic { "true" } else { "false" };
            m.family(
                "goloadbalancer_autoscale_last_decision_age_seconds",
                Kind::Gauge,
                "Age of the latest scaling decision; its labels say what it was.",
            )
            .sample(
                &[
                    ("action", d.action.name()),
                    ("from", &from),
                    ("to", &to),
                    ("panic", panic),
                ],
                d.ago_ms as f64 / 1000.0,
            );
        }
    }
}

fn per_worker(sample: &Sample) -> f64 {
    if sample.active_workers == 0 {
        0.0
    } else {
        sample.in_flight as f64 / sample.active_workers as f64
    }
}

// ---------------------------------------------------------------------------------------
// Latency helpers: the LB children report cumulative histograms (bucket bounds
// LATENCY_BUCKETS_MS, then +Inf); the autoscaler wants the p90 of recent requests.

/// The `q` quantile (0..=1) of a histogram with [`LATENCY_BUCKETS_MS`] bounds (then +Inf),
/// interpolated linearly inside the bucket. None when the histogram is empty. A quantile in
/// the +Inf bucket is reported as the last finite bound (the histogram cannot say more).
pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let q = if q.is_finite() {
        q.clamp(0.0, 1.0)
    } else {
        1.0
    };
    // Rank of the wanted observation, 1-based.
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if seen + c >= rank {
            let Some(&upper) = LATENCY_BUCKETS_MS.get(i) else {
                return LATENCY_BUCKETS_MS.last().copied();
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BUCKETS_MS[i - 1]
            };
            let frac = (rank - seen) as f64 / c as f64;
            return Some(lower + (upper - lower) * frac);
        }
        seen += c;
    }
    LATENCY_BUCKETS_MS.last().copied()
}

/// Turns the LB children's cumulative latency histograms into the p90 of the requests
/// completed between two calls of [`LatencyWindow::take_p90`].
///
/// Feed every `Up::Metrics` with [`LatencyWindow::record`] (keyed by the child, e.g. its
/// index or pid); call `take_p90` once per autoscaler sample.
#[derive(Clone, Debug, Default)]
pub struct LatencyWindow {
    /// Last cumulative histogram per (child, backend id).
    previous: std::collections::HashMap<(String, String), Vec<u64>>,
    /// Sum of the deltas since the last take.
    pending: Vec<u64>,
}

impl LatencyWindow {
    /// An empty window.
    pub fn new() -> LatencyWindow {
        LatencyWindow::default()
    }

    /// Adds what changed since this child's previous report. A counter that went down (the
    /// child restarted) counts from zero.
    pub fn record(&mut self, child: &str, backends: &[BackendMetrics]) {
        for b in backends {
            let key = (child.to_string(), b.id.clone());
            let prev = self.previous.get(&key);
            let restarted = prev.is_some_and(|p| {
                p.len() != b.latency.len() || p.iter().zip(&b.latency).any(|(p, c)| c < p)
            });
            if self.pending.len() < b.latency.len() {
                self.pending.resize(b.latency.len(), 0);
            }
            for (i, &c) in b.latency.iter().enumerate() {
                let before = match prev {
                    Some(p) if !restarted => p.get(i).copied().unwrap_or(0),
                    _ => 0,
                };
                self.pending[i] += c.saturating_sub(before);
            }
            self.previous.insert(key, b.latency.clone());
        }
    }

    /// Forgets a child (it exited); its next report, if any, counts from zero.
    pub fn forget_child(&mut self, child: &str) {
        self.previous.retain(|(c, _), _| c != child);
    }

    /// p90 (ms) of the requests recorded since the previous call; None when there were none.
    pub fn take_p90(&mut self) -> Option<f64> {
        let p = quantile_ms(&self.pending, 0.9);
        self.pending.iter_mut().for_each(|c| *c = 0);
        p
    }
}

/// Sums `in_flight` over the backends in `active` across every child's latest report
/// (draining backends are left out: their requests do not load the workers that stay).
pub fn active_in_flight<'a>(
    reports: impl IntoIterator<Item = &'a [BackendMetrics]>,
    is_active: impl Fn(&str) -> bool,
) -> u64 {
    reports
        .into_iter()
        .flat_map(|r| r.iter())
        .filter(|b| is_active(&b.id))
        .map(|b| b.in_flight)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> config::Autoscale {
        config::Autoscale {
            enabled: true,
            min: 1,
            max: 4,
            target_inflight: 10.0,
            target_p90_ms: 0,
            breach_ms: 3000,
            cooldown_ms: 10_000,
            step: 1,
            idle_ms: 30_000,
        }
    }

    fn s(active: usize, in_flight: u64) -> Sample {
        Sample {
            active_workers: active,
            in_flight,
            ..Sample::default()
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn target(d: &Decision) -> Option<usize> {
        match d {
            Decision::Hold => None,
            Decision::ScaleTo { target, .. } => Some(*target),
        }
    }

    /// Feeds `sample` at each of `times` (ms); the first decision that is not Hold, with its
    /// time.
    fn first_action(
        a: &mut Autoscaler,
        t0: Instant,
        mut times: impl Iterator<Item = u64>,
        sample: &Sample,
    ) -> Option<(u64, usize)> {
        times.find_map(|t| target(&a.observe(ms(t0, t), sample)).map(|n| (t, n)))
    }

    /// Feeds `sample` once a second from `from` to `to` (ms, inclusive); returns the decisions
    /// that were not Hold, with their time.
    fn run(
        a: &mut Autoscaler,
        t0: Instant,
        from: u64,
        to: u64,
        sample: impl Fn(u64, usize) -> Sample,
        active: &mut usize,
    ) -> Vec<(u64, usize)> {
        let mut out = vec![];
        let mut t = from;
        while t <= to {
            let d = a.observe(ms(t0, t), &sample(t, *active));
            if let Some(n) = target(&d) {
                out.push((t, n));
                *active = n; // the supervisor applies it at once in this model
            }
            t += 1000;
        }
        out
    }

    #[test]
    fn disabled_always_holds() {
        let mut c = cfg();
        c.enabled = false;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(a.observe(ms(t0, i * 1000), &s(1, 1000)), Decision::Hold);
        }
        assert!(!a.status().enabled);
    }

    #[test]
    fn breach_must_last_breach_ms() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        // First high sample at t=0 starts the clock; 2999 ms is not enough.
        assert_eq!(a.observe(ms(t0, 0), &s(1, 11)), Decision::Hold);
        assert_eq!(a.observe(ms(t0, 1000), &s(1, 11)), Decision::Hold);
        assert_eq!(a.observe(ms(t0, 2999), &s(1, 11)), Decision::Hold);
        let d = a.observe(ms(t0, 3000), &s(1, 11));
        assert_eq!(target(&d), Some(2), "{d:?}");
        let st = a.status();
        assert_eq!(st.desired, 2);
        assert_eq!(st.scale_outs, 1);
        let last = st.last_decision.unwrap();
        assert_eq!(last.action, Action::ScaleOut);
        assert_eq!((last.from, last.to), (1, 2));
        assert_eq!(last.measured_inflight_per_worker, 11.0);
        assert!(last.reason.contains("11.0 > target 10"), "{}", last.reason);
    }

    #[test]
    fn exactly_at_target_is_not_a_breach() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        for i in 0..60 {
            assert_eq!(a.observe(ms(t0, i * 1000), &s(2, 20)), Decision::Hold);
        }
        assert_eq!(a.status().region, Region::Steady);
    }

    #[test]
    fn interrupted_breach_restarts_the_clock() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        assert_eq!(a.observe(ms(t0, 0), &s(1, 15)), Decision::Hold);
        assert_eq!(a.observe(ms(t0, 2000), &s(1, 15)), Decision::Hold);
        // One sample inside the band.
        assert_eq!(a.observe(ms(t0, 2500), &s(1, 7)), Decision::Hold);
        assert_eq!(a.observe(ms(t0, 3000), &s(1, 15)), Decision::Hold);
        assert_eq!(a.observe(ms(t0, 5999), &s(1, 15)), Decision::Hold);
        assert_eq!(target(&a.observe(ms(t0, 6000), &s(1, 15))), Some(2));
    }

    #[test]
    fn flapping_input_never_acts() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        let mut active = 2;
        // High and low alternate every second for ten minutes: no breach lasts 3 s.
        let decisions = run(
            &mut a,
            t0,
            0,
            600_000,
            |t, n| s(n, if (t / 1000) % 2 == 0 { 30 } else { 0 }),
            &mut active,
        );
        assert_eq!(decisions, vec![]);
        // Two seconds high, two low: still never 3 s.
        let mut a = Autoscaler::new(&cfg());
        let decisions = run(
            &mut a,
            t0,
            0,
            600_000,
            |t, n| s(n, if (t / 2000) % 2 == 0 { 30 } else { 0 }),
            &mut active,
        );
        assert_eq!(decisions, vec![]);
    }

    #[test]
    fn hysteresis_band_holds() {
        // Per-worker load between 0.5 x target and target: neither scale out nor in.
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        let mut active = 3;
        for load in [15u64, 20, 25, 29, 30] {
            let d = run(&mut a, t0, 0, 120_000, |_, n| s(n, load), &mut active);
            assert_eq!(d, vec![], "3 workers, {load} in flight");
        }
        // Just below 0.5 x target (4.9 per worker) scales in.
        let mut a = Autoscaler::new(&cfg());
        let d = run(&mut a, t0, 0, 3000, |_, n| s(n, 14), &mut active);
        assert_eq!(d, vec![(3000, 2)]);
    }

    #[test]
    fn cooldown_spaces_actions() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        let mut active = 1;
        // 1.5 x the target per worker all the time (high, below panic): actions at 3 s, then
        // every cooldown (10 s, which is longer than the fresh 3 s breach) until max.
        let d = run(
            &mut a,
            t0,
            0,
            60_000,
            |_, n| s(n, 15 * n as u64),
            &mut active,
        );
        assert_eq!(d, vec![(3000, 2), (13_000, 3), (23_000, 4)]);
        assert_eq!(a.status().desired, 4);
    }

    #[test]
    fn breach_after_action_needs_fresh_evidence() {
        // Cooldown shorter than breach: the breach clock restarts at the action, and again
        // when the sample shows the new worker active (here the next sample, 1 s later).
        let mut c = cfg();
        c.cooldown_ms = 1000;
        c.breach_ms = 5000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        let mut active = 1;
        let d = run(
            &mut a,
            t0,
            0,
            30_000,
            |_, n| s(n, 15 * n as u64),
            &mut active,
        );
        assert_eq!(d, vec![(5000, 2), (11_000, 3), (17_000, 4)]);
    }

    #[test]
    fn never_outside_bounds() {
        let mut c = cfg();
        c.min = 2;
        c.max = 3;
        c.step = 5;
        let t0 = Instant::now();
        // Started below min: corrected at once, without a breach.
        let mut a = Autoscaler::new(&c);
        let d = a.observe(t0, &s(1, 0));
        assert_eq!(target(&d), Some(2));
        assert_eq!(a.status().last_decision.unwrap().action, Action::Bounds);
        // Started above max: corrected at once.
        let mut a = Autoscaler::new(&c);
        assert_eq!(target(&a.observe(t0, &s(7, 0))), Some(3));
        // A huge step stops at max, and no load never goes under min.
        let mut a = Autoscaler::new(&c);
        let mut active = 2;
        let d = run(
            &mut a,
            t0,
            0,
            100_000,
            |_, n| s(n, 15 * n as u64),
            &mut active,
        );
        assert_eq!(d, vec![(3000, 3)]);
        let d = run(&mut a, t0, 101_000, 300_000, |_, n| s(n, 0), &mut active);
        assert_eq!(d, vec![(104_000, 2)]);
        for (_, n) in d {
            assert!((2..=3).contains(&n));
        }
    }

    #[test]
    fn reconfigure_moves_into_new_bounds() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(&cfg());
        let mut active = 4;
        assert_eq!(run(&mut a, t0, 0, 0, |_, n| s(n, 35), &mut active), vec![]);
        let mut c = cfg();
        c.max = 2;
        a.reconfigure(&c);
        assert_eq!(target(&a.observe(ms(t0, 1000), &s(4, 35))), Some(2));
    }

    #[test]
    fn scale_in_keeps_load_at_or_below_target() {
        // 8 workers, step 6, 30 in flight (3.75 per worker, low): scaling in to 2 would put
        // 15 per worker (> target 10, an immediate scale-out). It stops at ceil(30/10) = 3.
        let mut c = cfg();
        c.max = 10;
        c.step = 6;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        let mut active = 8;
        let d = run(&mut a, t0, 0, 3000, |_, n| s(n, 30), &mut active);
        assert_eq!(d, vec![(3000, 3)]);
        // And then holds: 10 per worker is in the band.
        let d = run(&mut a, t0, 4000, 120_000, |_, n| s(n, 30), &mut active);
        assert_eq!(d, vec![]);
    }

    #[test]
    fn load_up_then_down_rises_to_max_and_returns_to_min() {
        let mut c = cfg();
        c.breach_ms = 2000;
        c.cooldown_ms = 2000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        let mut active = 1;
        // 60 concurrent clients on one worker: panic, straight to max in one decision.
        let d = run(&mut a, t0, 0, 20_000, |_, n| s(n, 60), &mut active);
        assert_eq!(d, vec![(0, 4)]);
        let d = run(&mut a, t0, 21_000, 60_000, |_, n| s(n, 0), &mut active);
        assert_eq!(d.iter().map(|x| x.1).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(a.status().scale_ins, 3);
    }

    #[test]
    fn start_failure_backs_off() {
        let mut c = cfg();
        c.cooldown_ms = 2000;
        c.breach_ms = 1000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        assert_eq!(a.observe(ms(t0, 0), &s(1, 15)), Decision::Hold);
        assert_eq!(target(&a.observe(ms(t0, 1000), &s(1, 15))), Some(2));
        // The new worker never came up.
        let d = a.report_start_failure(ms(t0, 1500));
        assert_eq!(target(&d), Some(1), "{d:?}");
        let st = a.status();
        assert_eq!(st.start_failures, 1);
        assert_eq!(st.last_decision.unwrap().action, Action::StartFailed);
        // Backoff = cooldown (2 s) for the first failure: no scale-out before 3500 ms.
        let first = first_action(&mut a, t0, (2000..=10_000).step_by(500), &s(1, 15));
        assert_eq!(first, Some((3500, 2)));
        // Second consecutive failure: 4 s; third: 8 s.
        let _ = a.report_start_failure(ms(t0, 4000));
        let _ = a.observe(ms(t0, 4000), &s(1, 15));
        assert_eq!(a.status().backoff_remaining_ms, 4000);
        let first = first_action(&mut a, t0, (4000..=20_000).step_by(250), &s(1, 15));
        assert_eq!(first, Some((8000, 2)));
        let _ = a.report_start_failure(ms(t0, 8500));
        let _ = a.observe(ms(t0, 8500), &s(1, 15));
        assert_eq!(a.status().backoff_remaining_ms, 8000);
    }

    #[test]
    fn backoff_resets_after_a_successful_scale_out() {
        let mut c = cfg();
        c.cooldown_ms = 1000;
        c.breach_ms = 1000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        let _ = a.observe(ms(t0, 0), &s(1, 15));
        assert_eq!(target(&a.observe(ms(t0, 1000), &s(1, 15))), Some(2));
        let _ = a.report_start_failure(ms(t0, 1100));
        let _ = a.observe(ms(t0, 1100), &s(1, 15));
        assert_eq!(target(&a.observe(ms(t0, 3000), &s(1, 15))), Some(2));
        // This time it came up.
        let _ = a.observe(ms(t0, 3500), &s(2, 30));
        assert_eq!(target(&a.observe(ms(t0, 4500), &s(2, 30))), Some(3));
        let _ = a.report_start_failure(ms(t0, 4600));
        let _ = a.observe(ms(t0, 4600), &s(2, 30));
        // Back to the first backoff step (1 s), not the second (2 s).
        assert_eq!(a.status().backoff_remaining_ms, 1000);
    }

    #[test]
    fn scale_out_waits_for_the_previous_workers() {
        let mut c = cfg();
        c.breach_ms = 1000;
        c.cooldown_ms = 1000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        let _ = a.observe(t0, &s(1, 15));
        assert_eq!(target(&a.observe(ms(t0, 1000), &s(1, 15))), Some(2));
        // The new worker takes 10 s to become active: no second scale-out meanwhile.
        for t in (2000..=10_000).step_by(500) {
            assert_eq!(a.observe(ms(t0, t), &s(1, 15)), Decision::Hold, "at {t}");
        }
        assert!(a.status().waiting_for_workers);
        // It is active: the next one follows after a fresh breach measured on both.
        assert_eq!(a.observe(ms(t0, 10_500), &s(2, 30)), Decision::Hold);
        assert!(!a.status().waiting_for_workers);
        assert_eq!(a.observe(ms(t0, 11_000), &s(2, 30)), Decision::Hold);
        assert_eq!(target(&a.observe(ms(t0, 11_500), &s(2, 30))), Some(3));
        // A worker that never comes up and is never reported: the wait lapses.
        let first = first_action(&mut a, t0, (12_000..=120_000).step_by(500), &s(2, 30));
        assert_eq!(
            first,
            Some((11_500 + MAX_SCALE_OUT_WAIT.as_millis() as u64, 4))
        );
    }

    #[test]
    fn start_failure_at_min_keeps_desired() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        let _ = a.observe(t0, &s(1, 0));
        assert_eq!(a.report_start_failure(t0), Decision::Hold);
        assert_eq!(a.desired(), Some(1));
    }

    #[test]
    fn backoff_is_capped() {
        let mut c = cfg();
        c.cooldown_ms = 60_000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        for _ in 0..40 {
            let _ = a.report_start_failure(t0);
        }
        let _ = a.observe(t0, &s(1, 0));
        assert_eq!(
            a.status().backoff_remaining_ms,
            MAX_START_BACKOFF.as_millis() as u64
        );
    }

    #[test]
    fn p90_target_scales_out_and_blocks_scale_in() {
        let mut c = cfg();
        c.target_p90_ms = 200;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        let slow = |n| Sample {
            active_workers: n,
            in_flight: 1,
            p90_ms: Some(450.0),
            ..Sample::default()
        };
        let mut active = 1;
        let d = run(&mut a, t0, 0, 3000, |_, n| slow(n), &mut active);
        assert_eq!(d, vec![(3000, 2)]);
        assert!(
            a.status()
                .last_decision
                .unwrap()
                .reason
                .contains("p90 450ms > target 200ms")
        );
        // Few in flight but p90 150 ms (above 0.5 x 200): stays.
        let mid = |n| Sample {
            active_workers: n,
            in_flight: 0,
            p90_ms: Some(150.0),
            ..Sample::default()
        };
        let d = run(&mut a, t0, 4000, 100_000, |_, n| mid(n), &mut active);
        assert_eq!(d, vec![]);
        // No request completed (p90 None) and nothing in flight: scale in.
        let d = run(&mut a, t0, 101_000, 200_000, |_, n| s(n, 0), &mut active);
        assert_eq!(d, vec![(104_000, 1)]);
    }

    #[test]
    fn no_active_worker_holds_and_does_not_count_as_low() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        let _ = a.observe(t0, &s(3, 0));
        for i in 1..100 {
            assert_eq!(a.observe(ms(t0, i * 1000), &s(0, 0)), Decision::Hold);
        }
        assert_eq!(a.status().region, Region::Unknown);
        assert_eq!(a.desired(), Some(3));
    }

    #[test]
    fn set_desired_clamps_and_restarts_the_breach_clock() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        a.set_desired(t0, 9);
        assert_eq!(a.desired(), Some(4));
        // Low load from 0: the first scale-in after a full breach, no cooldown before it.
        let mut active = 4;
        let d = run(&mut a, t0, 0, 12_000, |_, n| s(n, 0), &mut active);
        assert_eq!(d, vec![(3000, 3)]);
        // Reload sets 4 again at 5 s while low: the clock restarts there.
        a.set_desired(ms(t0, 5000), 4);
        let mut active = 4;
        let d = run(&mut a, t0, 13_000, 30_000, |_, n| s(n, 0), &mut active);
        assert_eq!(d, vec![(13_000, 3), (23_000, 2)]);
    }

    #[test]
    fn starting_workers_do_not_set_the_desired_count() {
        // The supervisor samples before its first workers are healthy: no decision, and the
        // first sample with workers gives the start count.
        let mut c = cfg();
        c.min = 2;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        assert_eq!(a.observe(t0, &s(0, 0)), Decision::Hold);
        assert_eq!(a.desired(), None);
        assert_eq!(a.observe(ms(t0, 1000), &s(3, 0)), Decision::Hold);
        assert_eq!(a.desired(), Some(3));
    }

    #[test]
    fn status_serialises() {
        let mut a = Autoscaler::new(&cfg());
        let t0 = Instant::now();
        let _ = a.observe(t0, &s(1, 15));
        let _ = a.observe(ms(t0, 3000), &s(1, 15));
        let _ = a.observe(ms(t0, 4000), &s(2, 30));
        let v = serde_json::to_value(a.status()).unwrap();
        assert_eq!(v["desired"], 2);
        assert_eq!(v["active"], 2);
        assert_eq!(v["inflight_per_worker"], 15.0);
        assert_eq!(v["target_inflight"], 10.0);
        assert_eq!(v["region"], "high");
        assert_eq!(v["last_decision"]["action"], "scale_out");
        assert_eq!(v["last_decision"]["ago_ms"], 1000);
        assert_eq!(v["cooldown_remaining_ms"], 9000);
        let mut m = MetricsText::new();
        a.status().write_metrics(&mut m);
        let text = m.finish();
        assert!(text.contains("goloadbalancer_autoscale_desired_workers 2\n"));
        assert!(text.contains("goloadbalancer_autoscale_actions_total{action=\"scale_out\"} 1\n"));
    }

    #[test]
    fn random_input_respects_bounds_and_cooldown() {
        use rand::RngExt;
        let mut rng = rand::rng();
        for _ in 0..50 {
            let mut c = cfg();
            c.min = rng.random_range(0..3);
            c.max = c.min + rng.random_range(0..6);
            c.step = rng.random_range(1..4);
            c.breach_ms = rng.random_range(0..5000);
            c.cooldown_ms = rng.random_range(0..20_000);
            c.target_p90_ms = if rng.random_range(0..2) == 0 { 0 } else { 300 };
            let mut a = Autoscaler::new(&c);
            let t0 = Instant::now();
            let mut active = rng.random_range(0..10usize);
            let mut last_load_action: Option<u64> = None;
            let mut t = 0u64;
            for _ in 0..2000 {
                t += rng.random_range(0..2000);
                let sample = Sample {
                    active_workers: active,
                    in_flight: rng.random_range(0..200),
                    p90_ms: (rng.random_range(0..3) > 0).then(|| rng.random_range(0.0..1000.0)),
                    ..Sample::default()
                };
                if let Decision::ScaleTo { target, .. } = a.observe(ms(t0, t), &sample) {
                    assert!((c.min..=c.max).contains(&target), "{target} outside {c:?}");
                    let last = a.status().last_decision.unwrap();
                    let action = last.action;
                    assert!(
                        !(last.panic && matches!(action, Action::ScaleIn | Action::ScaleToZero)),
                        "scaled in during panic: {last:?}"
                    );
                    if matches!(action, Action::ScaleOut | Action::ScaleIn) {
                        if let Some(prev) = last_load_action {
                            assert!(t - prev >= c.cooldown_ms.max(c.breach_ms), "{c:?}");
                        }
                        last_load_action = Some(t);
                    }
                    // Sometimes the new workers come up, sometimes not yet.
                    if rng.random_range(0..4) > 0 {
                        active = target;
                    }
                }
                if rng.random_range(0..50) == 0 {
                    let _ = a.report_start_failure(ms(t0, t));
                    assert!(a.desired().is_none_or(|d| d >= c.min));
                }
            }
        }
    }

    #[test]
    fn panic_adds_as_many_workers_as_the_demand_needs_at_once() {
        let mut c = cfg();
        c.max = 10;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        // 1.5 x the target: high, not panic, nothing before the breach.
        assert_eq!(a.observe(t0, &s(1, 15)), Decision::Hold);
        assert!(!a.status().panic);
        // A burst: 60 in flight on one worker (capacity 10) is 6 x the capacity: 6 workers
        // at the very next sample, no breach, no step of 1.
        let d = a.observe(ms(t0, 500), &s(1, 60));
        assert_eq!(target(&d), Some(6), "{d:?}");
        let st = a.status();
        assert!(st.panic);
        let last = st.last_decision.unwrap();
        assert_eq!(last.action, Action::PanicScaleOut);
        assert!(last.panic);
        assert_eq!((last.measured_demand, last.capacity), (60, 10.0));
        assert!(last.reason.contains("demand 60"), "{}", last.reason);
        assert!(last.log_fields().contains("panic=true demand=60"));
        // The workers are still starting: the same demand asks for nothing more.
        assert_eq!(a.observe(ms(t0, 1000), &s(1, 60)), Decision::Hold);
        // Queued requests are demand too, and more demand acts again at once (no cooldown);
        // bounded by max.
        let queued = Sample {
            queued: 30,
            ..s(1, 60)
        };
        assert_eq!(target(&a.observe(ms(t0, 1500), &queued)), Some(9));
        let huge = s(1, 10_000);
        assert_eq!(target(&a.observe(ms(t0, 2000), &huge)), Some(10));
        assert_eq!(a.status().panic_scale_outs, 3);
    }

    #[test]
    fn panic_holds_off_scale_in_and_ends_after_a_calm_breach() {
        let mut c = cfg();
        c.max = 6;
        c.cooldown_ms = 0;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        assert_eq!(target(&a.observe(t0, &s(1, 60))), Some(6));
        // Still at the panic level on the new workers (120 >= 2 x 60), at max: nothing to
        // do, and the calm clock has not started.
        assert_eq!(a.observe(ms(t0, 1000), &s(6, 120)), Decision::Hold);
        // Calm (no load) from 2 s: panic lasts a full breach (3 s) more, nothing scales in.
        for t in (2000..5000).step_by(500) {
            assert_eq!(a.observe(ms(t0, t), &s(6, 0)), Decision::Hold, "at {t}");
            assert!(a.status().panic, "at {t}");
        }
        let d = a.observe(ms(t0, 5000), &s(6, 0));
        assert!(!a.status().panic);
        assert_eq!(a.take_panic_change(), Some(false));
        // Out of panic, the regular rule scales in (low since 2 s, breach 3 s).
        assert_eq!(target(&d), Some(5));
        assert!(!a.status().last_decision.unwrap().panic);
    }

    #[test]
    fn min_zero_goes_to_zero_after_idle_and_demand_wakes_it_at_once() {
        let mut c = cfg();
        c.min = 0;
        c.idle_ms = 30_000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        a.set_desired(t0, 2);
        // Requests keep coming for 10 s (the served counter moves), little in flight: the
        // regular rule scales in, but never below 1.
        let mut active = 2;
        let busy = |t: u64, n: usize| Sample {
            requests_total: t / 1000,
            ..s(n, 0)
        };
        let d = run(&mut a, t0, 0, 10_000, busy, &mut active);
        assert_eq!(d, vec![(3000, 1)]);
        // Then nothing: 30 s after the last request, to zero.
        let quiet = |_, n| Sample {
            requests_total: 10,
            ..s(n, 0)
        };
        let d = run(&mut a, t0, 11_000, 60_000, quiet, &mut active);
        assert_eq!(d, vec![(40_000, 0)]);
        let last = a.status().last_decision.unwrap();
        assert_eq!(last.action, Action::ScaleToZero);
        assert_eq!(last.window_ms, 30_000);
        // At zero nothing happens without demand...
        let d = run(&mut a, t0, 61_000, 100_000, quiet, &mut active);
        assert_eq!(d, vec![]);
        // ...and a demand signal starts one worker now, not at the next sample.
        assert_eq!(target(&a.on_demand(ms(t0, 100_100), 1)), Some(1));
        assert_eq!(
            a.status().last_decision.unwrap().action,
            Action::ScaleFromZero
        );
        // A second signal while it starts asks for nothing more.
        assert_eq!(a.on_demand(ms(t0, 100_200), 1), Decision::Hold);
        let st = a.status();
        assert_eq!((st.scale_to_zero, st.scale_from_zero), (1, 1));
    }

    #[test]
    fn demand_at_zero_starts_what_it_needs_unless_in_backoff() {
        let mut c = cfg();
        c.min = 0;
        c.cooldown_ms = 2000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        a.set_desired(t0, 0);
        // 25 queued at target 10: 3 workers from the sample itself.
        let queued = Sample {
            queued: 25,
            ..s(0, 0)
        };
        assert_eq!(target(&a.observe(ms(t0, 1000), &queued)), Some(3));
        // Disabled: never.
        let mut off = Autoscaler::new(&config::Autoscale {
            enabled: false,
            ..c.clone()
        });
        off.set_desired(t0, 0);
        assert_eq!(off.on_demand(t0, 5), Decision::Hold);
        // The worker started from zero fails: back to 0 and no new start before the backoff.
        let mut a = Autoscaler::new(&c);
        a.set_desired(t0, 0);
        assert_eq!(target(&a.on_demand(t0, 1)), Some(1));
        assert_eq!(target(&a.report_start_failure(ms(t0, 100))), Some(0));
        assert_eq!(a.on_demand(ms(t0, 1000), 1), Decision::Hold);
        assert_eq!(target(&a.on_demand(ms(t0, 2100), 1)), Some(1));
    }

    #[test]
    fn recent_decisions_are_bounded_and_in_status() {
        let mut c = cfg();
        c.min = 0;
        c.idle_ms = 1000;
        let mut a = Autoscaler::new(&c);
        let t0 = Instant::now();
        a.set_desired(t0, 1);
        for i in 0..30u64 {
            let t = i * 10_000;
            let _ = a.on_demand(ms(t0, t), 1);
            let _ = a.observe(ms(t0, t + 5000), &s(1, 0));
        }
        let st = a.status();
        assert_eq!(st.recent_decisions.len(), RECENT_DECISIONS);
        assert_eq!(st.recent_decisions.last(), st.last_decision.as_ref());
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["recent_decisions"][0]["action"], "scale_from_zero");
        let mut m = MetricsText::new();
        st.write_metrics(&mut m);
        let text = m.finish();
        assert!(
            text.contains("goloadbalancer_autoscale_actions_total{action=\"scale_to_zero\"} 30\n"),
            "{text}"
        );
        assert!(text.contains("goloadbalancer_autoscale_panic 0\n"));
        assert!(text.contains(
            "goloadbalancer_autoscale_last_decision_age_seconds{action=\"scale_to_zero\""
        ));
    }

    #[test]
    fn quantile_interpolates_inside_buckets() {
        assert_eq!(quantile_ms(&[], 0.9), None);
        assert_eq!(quantile_ms(&[0; 13], 0.9), None);
        // 10 observations all in (250, 500]: p90 = rank 9 of 10 -> 250 + 250 * 0.9.
        let mut h = vec![0u64; 13];
        h[8] = 10;
        assert_eq!(quantile_ms(&h, 0.9), Some(475.0));
        // 90 fast (<= 1 ms), 10 slow (in (500, 1000]): p90 is the 90th, still fast.
        let mut h = vec![0u64; 13];
        h[0] = 90;
        h[9] = 10;
        assert_eq!(quantile_ms(&h, 0.9), Some(1.0));
        assert_eq!(quantile_ms(&h, 0.91), Some(550.0));
        // Everything beyond the last bound: the last finite bound.
        let mut h = vec![0u64; 13];
        h[12] = 5;
        assert_eq!(quantile_ms(&h, 0.9), Some(5000.0));
    }

    fn bm(id: &str, latency: Vec<u64>) -> BackendMetrics {
        BackendMetrics {
            id: id.into(),
            latency,
            ..BackendMetrics::default()
        }
    }

    #[test]
    fn latency_window_uses_deltas_across_children_and_restarts() {
        let mut w = LatencyWindow::new();
        let mut h = vec![0u64; 13];
        h[0] = 1000; // old history: fast
        w.record("lb.0", &[bm("a", h.clone())]);
        assert_eq!(w.take_p90(), Some(0.9 * 1.0));
        // Next second: 10 slow requests on child 0 and 10 on child 1, nothing fast.
        h[8] += 10;
        w.record("lb.0", &[bm("a", h.clone())]);
        let mut h1 = vec![0u64; 13];
        h1[8] = 10;
        w.record("lb.1", &[bm("a", h1.clone())]);
        assert_eq!(w.take_p90(), Some(475.0));
        // Nothing new.
        w.record("lb.0", &[bm("a", h.clone())]);
        assert_eq!(w.take_p90(), None);
        // Child 1 restarted: its counters went down; the new ones count from zero.
        let mut h2 = vec![0u64; 13];
        h2[0] = 4;
        w.record("lb.1", &[bm("a", h2)]);
        assert_eq!(w.take_p90(), Some(1.0));
        w.forget_child("lb.0");
        w.record("lb.0", &[bm("a", h)]);
        assert!(w.take_p90().is_some());
    }

    #[test]
    fn active_in_flight_skips_draining() {
        let r0 = vec![
            BackendMetrics {
                id: "a".into(),
                in_flight: 3,
                ..Default::default()
            },
            BackendMetrics {
                id: "b".into(),
                in_flight: 5,
                ..Default::default()
            },
        ];
        let r1 = vec![BackendMetrics {
            id: "a".into(),
            in_flight: 4,
            ..Default::default()
        }];
        let n = active_in_flight([r0.as_slice(), r1.as_slice()], |id| id == "a");
        assert_eq!(n, 7);
    }
}
