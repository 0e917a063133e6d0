//! Control channel messages between the supervisor and an LB child: one JSON object per line
//! over an inherited unix socketpair. Down: backend set, settings, drain. Up: acks, metrics,
//! demand.
//! Shared by both sides; change additively.

use serde::{Deserialize, Serialize};

use crate::config::ProxySettings;

/// Whether a backend takes new requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new requests (when healthy).
    Active,
    /// No new requests, not even on pooled connections; in-flight ones finish.
    Draining,
}

/// One backend as the supervisor describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendSpec {
    /// Stable id (worker id / container id), used in metrics.
    pub id: String,
    /// `ip:port`.
    pub addr: std::net::SocketAddr,
    /// Weight for `balance: weighted` (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Active or draining.
    pub state: BackendState,
}

fn one() -> u32 {
    1
}

/// Supervisor -> LB child.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    /// The full backend set (replaces the previous one; backends absent are removed).
    Backends {
        seq: u64,
        backends: Vec<BackendSpec>,
    },
    /// New settings for the loop (boxed: the settings outweigh every other message).
    Settings {
        seq: u64,
        settings: Box<ProxySettings>,
    },
    /// Stop accepting, finish in-flight requests (bounded by `timeout_ms`), then exit 0.
    Drain { seq: u64, timeout_ms: u64 },
}

/// Per-backend figures in a metrics report (counters are cumulative since the child started).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendMetrics {
    /// Backend id.
    pub id: String,
    /// Requests (or TCP connections) in flight now.
    pub in_flight: u64,
    /// Responses by status class: [1xx, 2xx, 3xx, 4xx, 5xx].
    pub responses: [u64; 5],
    /// Failures to connect / timeouts / broken responses (passive health).
    pub failures: u64,
    /// Whether the child currently considers it healthy.
    pub healthy: bool,
    /// Latency histogram counts; bucket upper bounds are [`LATENCY_BUCKETS_MS`] then +Inf.
    pub latency: Vec<u64>,
    /// Sum of latencies in ms (for the mean).
    pub latency_sum_ms: f64,
    /// Retries this backend's failures caused (within the retry budget).
    #[serde(default)]
    pub retries: u64,
    /// Times it was ejected for consecutive 5xx answers.
    #[serde(default)]
    pub ejections: u64,
    /// Whether it is ejected now.
    #[serde(default)]
    pub ejected: bool,
}

/// The wait queue's cumulative figures in a metrics report (`max-conn-per-worker`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueFigures {
    /// Requests taken from the queue to a worker.
    pub dispatched: u64,
    /// Requests answered 503 because their wait passed `queue-timeout-ms`.
    pub expired: u64,
    /// Requests answered 503 at once because the queue was full.
    pub rejected: u64,
    /// Total time dispatched requests waited, ms.
    pub wait_ms: u64,
}

impl QueueFigures {
    /// The sum of two reports.
    pub fn plus(self, o: QueueFigures) -> QueueFigures {
        QueueFigures {
            dispatched: self.dispatched + o.dispatched,
            expired: self.expired + o.expired,
            rejected: self.rejected + o.rejected,
            wait_ms: self.wait_ms + o.wait_ms,
        }
    }
}

/// Upper bounds (ms) of the latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// LB child -> supervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    /// Answer to a Down message with the same seq.
    Ack {
        seq: u64,
        ok: bool,
        error: Option<String>,
    },
    /// About once a second.
    Metrics {
        /// Client connections open now.
        connections: u64,
        /// Per backend.
        backends: Vec<BackendMetrics>,
        /// Access-log lines dropped since the child started (sink full or failing).
        #[serde(default)]
        access_log_dropped: u64,
        /// Requests waiting for a worker now (demand for the autoscaler).
        #[serde(default)]
        queued: u64,
        /// Retries refused for lack of retry budget since the child started.
        #[serde(default)]
        retry_budget_refused: u64,
        /// The wait queue's figures since the child started.
        #[serde(default)]
        queue: QueueFigures,
    },
    /// Requests found no worker (at most every 100 ms): the supervisor starts one at once
    /// when none runs. `queued`: requests waiting (or refused) since the previous signal.
    Demand { queued: u64 },
}
