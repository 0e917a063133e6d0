//! What each request is answered with: the worker's endpoints, and the [`Service`] a
//! connection asks for its answers (delay draws, delay timers, the stats store).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::answer::{Answer, HelloBodies, PendingAnswer, error_body};
use super::delay::DelayModel;
use super::server::{ConnKey, Timer, Timers};
use super::store::{Scope, Store};
use crate::http::request_id::REQUEST_ID_FIELD;
use crate::http::{Framing, Limits, Method, RequestHead, RequestId};

/// Request-head limits of the worker: its requests are tiny, so smaller than the proxy's.
pub const HEAD_LIMITS: Limits = Limits {
    max_request_line: 8 * 1024,
    max_header_bytes: 16 * 1024,
    max_headers: 100,
};
/// Largest request body accepted on /api/v1/hello (read and discarded).
const HELLO_BODY_MAX: u64 = 1024;
/// Largest request body accepted elsewhere (read and discarded).
const OTHER_BODY_MAX: u64 = 64 * 1024;

/// The worker's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Hello,
    Stats,
    /// `/worker/stats/node`: this node's rows only (asked by peers).
    NodeStats,
    Health,
    Other,
}

/// What the worker keeps of a request head.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub route: Route,
    pub keep_alive: bool,
    pub head_only: bool,
    pub http10: bool,
    pub body: Framing,
    pub expect_continue: bool,
    /// The client's (or the proxy's) `X-Request-Id` when valid, for the worker's log lines.
    pub request_id: Option<RequestId>,
}

impl Request {
    /// The request of `head`, parsed from `buf`.
    pub fn from_head(head: &RequestHead, buf: &[u8]) -> Request {
        let route = match route_path(head.target.get(buf)) {
            b"/api/v1/hello" => Route::Hello,
            b"/worker/stats" => Route::Stats,
            b"/worker/stats/node" => Route::NodeStats,
            b"/healthz" => Route::Health,
            _ => Route::Other,
        };
        Request {
            method: head.method_kind,
            route,
            keep_alive: head.keep_alive,
            head_only: head.is_head(),
            http10: head.version == 0,
            body: head.framing,
            expect_continue: head.expect_continue,
            request_id: head
                .header(buf, REQUEST_ID_FIELD)
                .and_then(RequestId::from_client),
        }
    }

    /// The largest body this request may carry (read and discarded); beyond it, 413.
    pub fn body_max(&self) -> u64 {
        if self.route == Route::Hello {
            HELLO_BODY_MAX
        } else {
            OTHER_BODY_MAX
        }
    }
}

/// How long a connection may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A request head (or body) must be complete within this after it started (else 408).
    pub head: Duration,
    /// An idle connection, or one whose client does not read, is closed after this.
    pub idle: Duration,
}

/// What the worker offers its connections: answers (with their sequence numbers), the delay
/// model and its timers, the stats store, and the read buffer every connection reads into.
pub struct Service {
    pub id: String,
    pub hello: HelloBodies,
    pub model: DelayModel,
    pub store: Store,
    /// Hello delays and connection deadlines.
    pub timers: Timers,
    /// Stats requests waiting on the store: request seq -> connection.
    pub stats_waiting: HashMap<u64, ConnKey>,
    /// /healthz answers 503 (from the stop signal on, during the grace period too).
    pub unhealthy: bool,
    pub timeouts: Timeouts,
    /// One read never takes more than this from a socket.
    pub scratch: Box<[u8]>,
    next_seq: u64,
}

impl Service {
    /// A service for worker `id`.
    pub fn new(id: &str, model: DelayModel, store: Store, timeouts: Timeouts) -> Self {
        Service {
            id: id.to_string(),
            hello: HelloBodies::new(id),
            model,
            store,
            timers: Timers::new(),
            stats_waiting: HashMap::new(),
            unhealthy: false,
            timeouts,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            next_seq: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// An error answer, ready now: `{"error":"<message>","status":<status>}`.
    pub fn error(&mut self, now: Instant, status: u16, message: &str) -> PendingAnswer {
        PendingAnswer::json(self.next_seq(), now, status, error_body(status, message))
    }

    /// The answer to `req` (received on connection `conn`, its head complete at `now`):
    /// ready, or waiting on its delay timer or on the store.
    pub fn answer(&mut self, req: &Request, conn: ConnKey, now: Instant) -> PendingAnswer {
        let seq = self.next_seq();
        let json = |status, body, allow| Answer::Json {
            status,
            body,
            allow,
        };
        let get = req.method == Method::Get;
        let get_or_head = get || req.method == Method::Head;
        let answer = match req.route {
            Route::Hello if !get => json(405, error_body(405, "method not allowed"), Some("GET")),
            Route::Hello => self.draw_hello(seq, conn, now),
            Route::Stats | Route::NodeStats | Route::Health if !get_or_head => json(
                405,
                error_body(405, "method not allowed"),
                Some("GET, HEAD"),
            ),
            Route::Stats | Route::NodeStats => {
                let scope = if req.route == Route::Stats {
                    Scope::All
                } else {
                    Scope::Node
                };
                self.stats_waiting.insert(seq, conn);
                self.store.request_stats(seq, scope);
                Answer::StatsPending
            }
            Route::Health => json(self.health_status(), self.health_body(), None),
            Route::Other => json(404, error_body(404, "not found"), None),
        };
        PendingAnswer {
            seq,
            start: now,
            answer,
            head_only: req.head_only,
            http10: req.http10,
            request_id: req.request_id,
        }
    }

    /// Draws a hello's outcome and delay; arms its timer unless it is due at once.
    fn draw_hello(&mut self, seq: u64, conn: ConnKey, now: Instant) -> Answer {
        let mut rng = rand::rng();
        let success = !self.model.fails(&mut rng);
        let delay = self.model.delay(&mut rng);
        let due = delay.is_zero();
        if !due {
            self.timers.push(now + delay, Timer::Delay { conn, seq });
        }
        Answer::Hello {
            success,
            delay_us: delay.as_micros() as u64,
            due,
        }
    }

    fn health_status(&self) -> u16 {
        if self.unhealthy { 503 } else { 200 }
    }

    fn health_body(&self) -> Arc<str> {
        let state = if self.unhealthy {
            "draining"
        } else {
            "serving"
        };
        Arc::from(format!(
            "{{\"status\":\"{state}\",\"id\":{}}}",
            serde_json::Value::String(self.id.clone())
        ))
    }

    /// The store's answer to stats request `seq`, as the JSON answer it becomes.
    pub fn stats_answer(&self, answer: Result<Arc<str>, String>) -> Answer {
        match answer {
            Ok(body) => Answer::Json {
                status: 200,
                body,
                allow: None,
            },
            Err(e) => {
                crate::warn!(
                    "stats_read_failed",
                    "id={} error={}",
                    self.id,
                    crate::sys::log::quote(&e)
                );
                Answer::Json {
                    status: 503,
                    body: Arc::from(format!(
                        "{{\"error\":\"stats unavailable\",\"detail\":{}}}",
                        serde_json::Value::String(e)
                    )),
                    allow: None,
                }
            }
        }
    }
}

/// Read scratch size: one read never takes more than this from a socket.
pub const READ_CHUNK: usize = 16 * 1024;

/// The path of a request target without query; absolute-form targets lose their authority.
fn route_path(target: &[u8]) -> &[u8] {
    let mut t = target;
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = match rest.iter().position(|&b| b == b'/') {
                Some(i) => &rest[i..],
                None => b"/",
            };
            break;
        }
    }
    match t.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) => &t[..i],
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::route_path;

    #[test]
    fn routes() {
        assert_eq!(route_path(b"/api/v1/hello"), b"/api/v1/hello");
        assert_eq!(route_path(b"/api/v1/hello?x=1"), b"/api/v1/hello");
        assert_eq!(route_path(b"http://h:1/healthz"), b"/healthz");
        assert_eq!(route_path(b"HTTP://h"), b"/");
        assert_eq!(route_path(b"*"), b"*");
    }
}
