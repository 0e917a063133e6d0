//! Traffic policies of one LB loop, apart from the plumbing (issue 13): pure state machines the
//! loop drives, with no I/O and the time passed in as `Instant`, so each is unit-tested alone.
//!
//! - `queue`: `max-conn-per-worker` and the one bounded FIFO of requests waiting for a slot
//!   (`queue-size`, `queue-timeout-ms`).
//! - `slow_start`: a worker that turns healthy ramps to its full weight over `slow-start-ms`.
//! - `outlier`: ejection after `eject-consecutive-5xx` answers, for `eject-ms` doubling on
//!   repeat, capped by `max-ejection-percent`.
//! - `retry_budget`: retries limited to `retry-budget-percent` of recent requests plus a floor,
//!   and counted per worker.
//!
//! Workers are named by their slot in the loop's backend list (`usize`); a slot reused for
//! another worker is `reset` first.

pub mod outlier;
mod policies;
pub mod queue;
pub mod retry_budget;
pub mod slow_start;

pub use policies::Policies;
