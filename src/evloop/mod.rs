//! The event-loop kit every process uses (LB child, worker, supervisor): the plumbing that
//! would otherwise be written once per loop.
//!
//! - `slab`: entries with generation-checked keys (a freed and reused index is detectable),
//!   the key doubling as the mio token; an entry can be taken out while it runs.
//! - `ready`: a non-blocking socket with its edge-triggered readiness remembered.
//! - `deadline`: one min-heap of deadlines, lazily re-armed per owner, swept when it doubles.
//! - `linger`: the lingering close (shut the write side, discard input, bounded).
//! - `line_channel`: typed JSON messages, one per line, over a non-blocking unix socket.
//! - `health_probe`: a non-blocking HTTP `GET` (or bare connect) health probe.

pub mod deadline;
pub mod health_probe;
pub mod line_channel;
pub mod linger;
pub mod ready;
pub mod slab;

pub use deadline::{Deadline, DeadlineHeap};
pub use health_probe::{HealthProbe, ProbeKind, ProbeStatus};
pub use line_channel::{BadLine, LineChannel};
pub use ready::{ReadResult, Sock, interrupted, would_block};
pub use slab::{Key, Slab};
