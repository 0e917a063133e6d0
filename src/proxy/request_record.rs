//! What an HTTP session learns about one request while it runs (its id, request line, worker,
//! timings, bytes, retries, and who ended it) and turns into an access-log line when the
//! request ends. A session holds a record only while a request is in flight, taken from a pool,
//! so an idle keep-alive connection costs nothing more and a request allocates nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngExt;
use rand::rngs::SmallRng;

use super::access_log::{AccessLog, AccessRecord, MAX_LOGGED_TARGET, Phase, Termination};
use super::buffer::Spares;
use crate::http::RequestHead;
use crate::http::request_id::RequestId;

/// Longest method kept for the log (longer ones are cut).
const MAX_LOGGED_METHOD: usize = 24;
/// Target bytes kept: one more than the log writes, so the writer sees it must cut.
const KEPT_TARGET: usize = MAX_LOGGED_TARGET + 1;
/// Spare records kept after a burst; beyond them, returned records are freed.
const MAX_SPARE: usize = 1024;
/// Spares kept once the pool has been quiet for a trim window.
const QUIET_SPARE: usize = 16;

/// One request's facts, filled as the exchange goes.
pub struct RequestRecord {
    /// The id sent upstream, echoed to the client and logged.
    pub id: RequestId,
    client: SocketAddr,
    method: [u8; MAX_LOGGED_METHOD],
    method_len: u8,
    target: [u8; KEPT_TARGET],
    target_len: u16,
    version: u8,
    started: Instant,
    connected: Option<Instant>,
    response_head: Option<Instant>,
    /// Request bytes forwarded upstream (head as received, then body).
    pub bytes_in: u64,
    /// Response bytes handed to the client socket (head, then body).
    pub bytes_out: u64,
    /// Connections tried again for this request.
    pub retries: u32,
    /// Time spent in the wait queue (`max-conn-per-worker`), if it waited.
    pub queued: Option<Duration>,
    /// The backend (index in the loop's set) serving it, once one is leased.
    pub backend: Option<usize>,
    /// The final status the client got from upstream (0 before the response head).
    pub status: u16,
    /// Who is to blame if the exchange ends early, noted where the cause is known.
    blame: Option<(Termination, Phase)>,
}

impl RequestRecord {
    fn blank(now: Instant) -> RequestRecord {
        RequestRecord {
            id: RequestId::from_bits(0),
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            method: [0; MAX_LOGGED_METHOD],
            method_len: 0,
            target: [0; KEPT_TARGET],
            target_len: 0,
            version: 1,
            started: now,
            connected: None,
            response_head: None,
            bytes_in: 0,
            bytes_out: 0,
            retries: 0,
            queued: None,
            backend: None,
            status: 0,
            blame: None,
        }
    }

    /// Starts the record of `head` (parsed from `buf`) from `client`: the client's valid
    /// `X-Request-Id` (when it sent exactly one) or a new one; the line kept only when `keep_line`.
    fn begin(
        &mut self,
        client: SocketAddr,
        head: &RequestHead,
        buf: &[u8],
        keep_line: bool,
        now: Instant,
        ids: &mut SmallRng,
    ) {
        // Field by field: the line arrays are overwritten only as far as they are used.
        self.id
            .set_kept_or(head.sole_request_id(buf), || ids.random::<u128>());
        self.client = client;
        self.method_len = 0;
        self.target_len = 0;
        self.version = head.version;
        self.started = now;
        self.connected = None;
        self.response_head = None;
        self.bytes_in = head.head_len as u64;
        self.bytes_out = 0;
        self.retries = 0;
        self.queued = None;
        self.backend = None;
        self.status = 0;
        self.blame = None;
        if keep_line {
            let method = head.method.get(buf);
            let m = method.len().min(MAX_LOGGED_METHOD);
            self.method[..m].copy_from_slice(&method[..m]);
            self.method_len = m as u8;
            let target = head.target.get(buf);
            let t = target.len().min(KEPT_TARGET);
            self.target[..t].copy_from_slice(&target[..t]);
            self.target_len = t as u16;
        }
    }

    /// The upstream connection is established (at once for a pooled one).
    pub fn connected(&mut self, now: Instant) {
        self.connected.get_or_insert(now);
    }

    /// The final response head arrived with `status`.
    pub fn response_head(&mut self, status: u16, now: Instant) {
        self.status = status;
        self.response_head = Some(now);
    }

    /// Notes the cause if the exchange ends early from here on.
    pub fn blame(&mut self, termination: Termination, phase: Phase) {
        self.blame = Some((termination, phase));
    }

    /// The noted cause, or `fallback`.
    pub fn blamed_or(&self, fallback: (Termination, Phase)) -> (Termination, Phase) {
        self.blame.unwrap_or(fallback)
    }

    /// Writes the line (when the log wants one) for an end with `status`.
    pub fn write(
        &self,
        log: &mut AccessLog,
        worker: &str,
        status: u16,
        (termination, phase): (Termination, Phase),
        now: Instant,
    ) {
        let is_error = status >= 400 || termination != Termination::Done;
        if !log.wants(is_error) {
            return;
        }
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.started));
        let line = AccessRecord {
            client: self.client,
            method: if self.method_len == 0 {
                b"-"
            } else {
                &self.method[..self.method_len as usize]
            },
            target: if self.target_len == 0 {
                b"-"
            } else {
                &self.target[..self.target_len as usize]
            },
            version: Some(self.version),
            status,
            worker,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            queued: self.queued,
            connect: since(self.connected),
            response_head: since(self.response_head),
            total: now.saturating_duration_since(self.started),
            retries: self.retries,
            request_id: Some(&self.id),
            termination,
            phase,
        };
        log.record(&line, now);
    }
}

/// A refused request that never got a record (bad or timed-out head): its line, if wanted.
pub fn write_refused(log: &mut AccessLog, client: SocketAddr, status: u16, now: Instant) {
    if !log.wants(true) {
        return;
    }
    let termination = if status == 408 {
        Termination::ClientTimeout
    } else {
        Termination::ClientBadRequest
    };
    let line = AccessRecord {
        client,
        method: b"-",
        target: b"-",
        version: None,
        status,
        worker: "-",
        bytes_in: 0,
        bytes_out: 0,
        queued: None,
        connect: None,
        response_head: None,
        total: Duration::ZERO,
        retries: 0,
        request_id: None,
        termination,
        phase: Phase::RequestHead,
    };
    log.record(&line, now);
}

/// What a canned `status` most likely means when no cause was noted.
pub fn termination_of(status: u16) -> Termination {
    match status {
        408 => Termination::ClientTimeout,
        400..=499 => Termination::ClientBadRequest,
        502 => Termination::WorkerBroke,
        503 => Termination::NoWorker,
        504 => Termination::WorkerTimeout,
        _ => Termination::ProxyLimit,
    }
}

/// Spare records ([`Spares`]), so a request takes one without allocating.
pub struct RecordPool {
    spares: Spares<Box<RequestRecord>>,
    /// Draws generated request ids: seeded from the OS when the pool is made, in the LB
    /// child (after the fork, so children never share a stream), and cheap per draw, where
    /// the thread-local ChaCha cost ~120 instructions per request. Ids must not collide;
    /// they are not secrets.
    ids: SmallRng,
}

impl Default for RecordPool {
    fn default() -> Self {
        RecordPool::new()
    }
}

impl RecordPool {
    /// An empty pool.
    pub fn new() -> RecordPool {
        RecordPool {
            spares: Spares::new(MAX_SPARE, QUIET_SPARE),
            ids: rand::make_rng(),
        }
    }

    /// A record begun for `head` (see [`RequestRecord::begin`]).
    pub fn begin(
        &mut self,
        client: SocketAddr,
        head: &RequestHead,
        buf: &[u8],
        keep_line: bool,
        now: Instant,
    ) -> Box<RequestRecord> {
        let mut rec = self
            .spares
            .take()
            .unwrap_or_else(|| Box::new(RequestRecord::blank(now)));
        rec.begin(client, head, buf, keep_line, now, &mut self.ids);
        rec
    }

    /// Takes a record back.
    pub fn put(&mut self, rec: Box<RequestRecord>) {
        self.spares.give(rec);
    }

    /// [`Spares::has_excess`].
    pub fn has_excess(&self) -> bool {
        self.spares.has_excess()
    }

    /// After a quiet window, frees the spares a burst left (call from the loop's tick);
    /// whether it freed any.
    pub fn trim(&mut self, now: Instant) -> bool {
        self.spares.trim(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Limits, parse_request_head};

    fn begin(raw: &[u8], keep_line: bool) -> Box<RequestRecord> {
        let head = parse_request_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        let client = "10.0.0.1:4000".parse().unwrap();
        RecordPool::new().begin(client, &head, raw, keep_line, Instant::now())
    }

    #[test]
    fn keeps_one_valid_client_id() {
        let rec = begin(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-1\r\n\r\n",
            true,
        );
        assert_eq!(rec.id.as_str(), "abc-1");
        assert_eq!(&rec.method[..rec.method_len as usize], b"GET");
    }

    #[test]
    fn generates_for_invalid_or_repeated_ids() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: has space\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: a\r\nx-request-id: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            let rec = begin(raw, false);
            assert_eq!(
                rec.id.as_str().len(),
                32,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
            assert!(rec.id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(rec.method_len, 0);
        }
    }

    #[test]
    fn long_target_kept_one_past_the_cut() {
        let target = "/".repeat(1000);
        let raw = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let rec = begin(raw.as_bytes(), true);
        assert_eq!(rec.target_len as usize, MAX_LOGGED_TARGET + 1);
    }

    #[test]
    fn a_reused_record_starts_blank() {
        let mut pool = RecordPool::new();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let head = parse_request_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        let client = "10.0.0.1:4000".parse().unwrap();
        let mut first = pool.begin(client, &head, raw, true, Instant::now());
        first.queued = Some(Duration::from_millis(40));
        first.retries = 2;
        first.backend = Some(1);
        first.blame(Termination::WorkerTimeout, Phase::Connect);
        pool.put(first);
        let again = pool.begin(client, &head, raw, true, Instant::now());
        assert_eq!(again.queued, None, "a request that never queued");
        assert_eq!((again.retries, again.backend), (0, None));
        let fallback = (Termination::Done, Phase::Complete);
        assert_eq!(again.blamed_or(fallback), fallback);
    }

    #[test]
    fn pool_reuses_and_trims() {
        let mut pool = RecordPool::new();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let head = parse_request_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        let client = "10.0.0.1:4000".parse().unwrap();
        let t0 = Instant::now();
        let recs: Vec<_> = (0..40)
            .map(|_| pool.begin(client, &head, raw, false, t0))
            .collect();
        for r in recs {
            pool.put(r);
        }
        assert_eq!(pool.spares.len(), 40);
        pool.trim(t0);
        pool.trim(t0 + Duration::from_millis(1100)); // the burst's window
        assert_eq!(pool.spares.len(), 40);
        pool.trim(t0 + Duration::from_millis(2200)); // a quiet window
        assert_eq!(pool.spares.len(), QUIET_SPARE);
    }
}
