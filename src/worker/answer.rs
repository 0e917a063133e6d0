//! A connection's queued answers: one [`PendingAnswer`] per parsed request, in arrival order,
//! and how each is written once it is ready.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use crate::http::RequestId;
use crate::http::response::{ConnectionHeader, json_error_body, write_simple};

/// What a request is answered with, and whether that answer can be written yet.
#[derive(Debug)]
pub enum Answer {
    /// `/api/v1/hello`: its outcome is drawn when the head is parsed; it is written once its
    /// delay has passed (`due`). Counted in the stats when written.
    Hello {
        success: bool,
        /// The delay drawn, in microseconds (sent as `X-Delay-Ms`).
        delay_us: u64,
        due: bool,
    },
    /// `/worker/stats` while the store thread reads the database.
    StatsPending,
    /// Any other JSON answer, ready now.
    Json {
        status: u16,
        body: Arc<str>,
        /// The `Allow` field of a 405.
        allow: Option<&'static str>,
    },
}

/// A parsed request waiting in its connection's queue for its answer to be written.
#[derive(Debug)]
pub struct PendingAnswer {
    /// Unique across the worker: a delay timer or a store answer finds its entry by it.
    pub seq: u64,
    /// When the request head was complete (response time is measured from here).
    pub start: Instant,
    pub answer: Answer,
    /// HEAD request: the head of the response only.
    pub head_only: bool,
    /// HTTP/1.0 request (a kept-alive answer must say `Connection: keep-alive`).
    pub http10: bool,
    /// The request's `X-Request-Id`, written in the worker's line about it.
    pub request_id: Option<RequestId>,
}

impl PendingAnswer {
    /// A JSON answer that is ready now (not counted in the stats).
    pub fn json(seq: u64, start: Instant, status: u16, body: Arc<str>) -> PendingAnswer {
        PendingAnswer {
            seq,
            start,
            answer: Answer::Json {
                status,
                body,
                allow: None,
            },
            head_only: false,
            http10: false,
            request_id: None,
        }
    }

    /// Whether the answer can be written now.
    pub fn is_ready(&self) -> bool {
        match self.answer {
            Answer::Hello { due, .. } => due,
            Answer::StatsPending => false,
            Answer::Json { .. } => true,
        }
    }

    /// The hello outcome to count once written (None: not a hello).
    pub fn hello_outcome(&self) -> Option<bool> {
        match self.answer {
            Answer::Hello { success, .. } => Some(success),
            _ => None,
        }
    }

    /// The status this answer is written with (0 while a stats answer is pending).
    pub fn status(&self) -> u16 {
        match &self.answer {
            Answer::Hello { success: true, .. } => 200,
            Answer::Hello { success: false, .. } => 500,
            Answer::StatsPending => 0,
            Answer::Json { status, .. } => *status,
        }
    }

    /// Logs the answered request at debug level (`journalctl -g <request id>` finds it); a
    /// 5xx the worker did not draw on purpose is a warning.
    pub fn log_answered(&self, worker: &str, now: Instant) {
        let status = self.status();
        let ms = now.saturating_duration_since(self.start).as_secs_f64() * 1000.0;
        let rid = self.request_id.as_ref().map_or("-", RequestId::as_str);
        if status >= 500 && self.hello_outcome().is_none() {
            crate::warn!(
                "worker_request_failed",
                "id={worker} request_id={rid} status={status} ms={ms:.1}"
            );
        } else {
            crate::debug!(
                "worker_request",
                "id={worker} request_id={rid} status={status} ms={ms:.1}"
            );
        }
    }

    /// Appends the answer to `out`; `close` makes it the connection's last one.
    pub fn write_to(&self, out: &mut Vec<u8>, hello: &HelloBodies, close: bool) {
        let wire = Wire {
            conn: if close {
                ConnectionHeader::Close
            } else if self.http10 {
                ConnectionHeader::KeepAlive
            } else {
                ConnectionHeader::Omit
            },
            head_only: self.head_only,
        };
        match &self.answer {
            Answer::StatsPending => {}
            // X-Delay-Ms: the delay this worker drew for the request (tests and curious
            // operators can tell the applied delay from queueing on a busy machine).
            Answer::Hello {
                success, delay_us, ..
            } => {
                let (status, body) = if *success {
                    (200, &hello.ok)
                } else {
                    (500, &hello.fail)
                };
                let d = format_args!("X-Delay-Ms: {:.3}", *delay_us as f64 / 1000.0);
                write_json(out, status, body, Some(d), wire)
            }
            Answer::Json {
                status,
                body,
                allow: Some(a),
            } => write_json(out, *status, body, Some(format_args!("Allow: {a}")), wire),
            Answer::Json {
                status,
                body,
                allow: None,
            } => write_json(out, *status, body, None, wire),
        }
    }
}

/// The hello bodies, written once at start (the hot path allocates nothing for them).
pub struct HelloBodies {
    /// 200: `{"message":"hello from container: <id>"}`.
    pub ok: Arc<str>,
    /// 500: `{"error":"simulated failure in container: <id>","status":500}`.
    pub fail: Arc<str>,
}

impl HelloBodies {
    /// The bodies for worker `id`.
    pub fn new(id: &str) -> HelloBodies {
        HelloBodies {
            ok: Arc::from(format!(
                "{{\"message\":{}}}",
                serde_json::Value::String(format!("hello from container: {id}"))
            )),
            fail: error_body(500, &format!("simulated failure in container: {id}")),
        }
    }
}

/// `{"error":"<message>","status":<status>}`.
pub fn error_body(status: u16, message: &str) -> Arc<str> {
    Arc::from(json_error_body(status, message))
}

/// How one response is framed on the wire.
#[derive(Clone, Copy, Debug)]
struct Wire {
    conn: ConnectionHeader,
    head_only: bool,
}

/// Appends one JSON response to `out`, with at most one extra header field.
fn write_json(
    out: &mut Vec<u8>,
    status: u16,
    body: &str,
    extra: Option<std::fmt::Arguments<'_>>,
    wire: Wire,
) {
    let start = out.len();
    write_simple(
        out,
        status,
        "application/json",
        body.as_bytes(),
        wire.conn,
        wire.head_only,
    );
    if let Some(field) = extra
        && let Some(eol) = out[start..].windows(2).position(|w| w == b"\r\n")
    {
        // write_simple takes no extra fields: ours go in right after the status line.
        let mut line = [0u8; 96];
        let mut cursor = std::io::Cursor::new(&mut line[..]);
        if write!(cursor, "{field}\r\n").is_ok() {
            let n = cursor.position() as usize;
            let at = start + eol + 2;
            out.splice(at..at, line[..n].iter().copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(success: bool, due: bool) -> PendingAnswer {
        PendingAnswer {
            seq: 1,
            start: Instant::now(),
            answer: Answer::Hello {
                success,
                delay_us: 1500,
                due,
            },
            head_only: false,
            http10: true,
            request_id: None,
        }
    }

    #[test]
    fn readiness_and_outcome() {
        assert!(!hello(true, false).is_ready());
        assert!(hello(true, true).is_ready());
        assert_eq!(hello(false, true).hello_outcome(), Some(false));
        let stats = PendingAnswer {
            answer: Answer::StatsPending,
            ..hello(true, true)
        };
        assert!(!stats.is_ready());
        assert_eq!(stats.hello_outcome(), None);
        let json = PendingAnswer::json(2, Instant::now(), 404, error_body(404, "not found"));
        assert!(json.is_ready());
    }

    #[test]
    fn hello_carries_its_delay_and_keep_alive_for_http10() {
        let bodies = HelloBodies::new("w1");
        let mut out = Vec::new();
        hello(false, true).write_to(&mut out, &bodies, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
        assert!(text.contains("\r\nX-Delay-Ms: 1.500\r\n"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: keep-alive\r\n"),
            "{text}"
        );
        assert!(text.ends_with(&*bodies.fail), "{text}");
    }

    #[test]
    fn allow_field_and_close() {
        let mut a = PendingAnswer::json(3, Instant::now(), 405, error_body(405, "no"));
        a.answer = Answer::Json {
            status: 405,
            body: error_body(405, "no"),
            allow: Some("GET"),
        };
        let mut out = Vec::new();
        a.write_to(&mut out, &HelloBodies::new("w"), true);
        let text = String::from_utf8(out).unwrap().to_ascii_lowercase();
        assert!(text.contains("\r\nallow: get\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    }
}
