//! Spelling one access-log line straight into the batch: no `fmt` machinery, no allocation,
//! the time text made once per loop iteration. The log is on the data path (`access-log:
//! all` is a line per request), so these are written like the head rewriter's writers.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{AccessRecord, MAX_LOGGED_TARGET};

/// Escape prefix of a key=value line (`\xHH`).
pub(super) const KV_ESCAPE: &[u8] = b"\\x";
/// Escape prefix inside a JSON string (`\u00HH`, the only byte escape JSON has).
pub(super) const JSON_ESCAPE: &[u8] = b"\\u00";

/// Length of `2026-12-03T04:05:06.789Z`.
pub(super) const TIME_LEN: usize = 24;

/// The wall-clock time text of the loop iteration's instant, made once per instant.
pub(super) struct Clock {
    at: Option<Instant>,
    text: [u8; TIME_LEN],
}

impl Clock {
    /// A clock that has spelled nothing yet.
    pub(super) fn new() -> Clock {
        Clock {
            at: None,
            text: [b'0'; TIME_LEN],
        }
    }

    /// The text for `now` (the loop's time of this iteration; read from the wall clock the
    /// first time an iteration asks).
    pub(super) fn text(&mut self, now: Instant) -> &[u8; TIME_LEN] {
        if self.at != Some(now) {
            self.at = Some(now);
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.text = time_text(unix);
        }
        &self.text
    }
}

/// `2026-12-03T04:05:06.789Z` for `unix` (time since the epoch, UTC).
pub(super) fn time_text(unix: Duration) -> [u8; TIME_LEN] {
    let secs = unix.as_secs();
    let (y, m, d) = crate::http::response::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut t = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut t[0..4], y.clamp(0, 9999) as u64);
    put_digits(&mut t[5..7], u64::from(m));
    put_digits(&mut t[8..10], u64::from(d));
    put_digits(&mut t[11..13], rem / 3600);
    put_digits(&mut t[14..16], rem / 60 % 60);
    put_digits(&mut t[17..19], rem % 60);
    put_digits(&mut t[20..23], u64::from(unix.subsec_millis()));
    t
}

/// `n` in decimal, right-aligned and zero-padded into `dst` (its low digits if too long).
fn put_digits(dst: &mut [u8], mut n: u64) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `n` in decimal.
fn num(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `ip:port`; IPv4 without `fmt` (the common case).
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (k, octet) in v4.ip().octets().into_iter().enumerate() {
                if k > 0 {
                    out.push(b'.');
                }
                num(out, u64::from(octet));
            }
            out.push(b':');
            num(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(out, "{a}");
        }
    }
}

/// Bytes outside visible ASCII, `"` and `\` as `<escape>HH`; cut at [`MAX_LOGGED_TARGET`]
/// and marked `...`.
pub(super) fn escaped(out: &mut Vec<u8>, bytes: &[u8], escape: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let kept = &bytes[..bytes.len().min(MAX_LOGGED_TARGET)];
    for &b in kept {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(escape);
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
    if bytes.len() > MAX_LOGGED_TARGET {
        out.extend_from_slice(b"...");
    }
}

/// A duration in ms, or `none` when that phase was not reached.
fn ms(out: &mut Vec<u8>, d: Option<Duration>, none: &[u8]) {
    match d {
        Some(d) => num(out, d.as_millis() as u64),
        None => out.extend_from_slice(none),
    }
}

/// The key=value line of `r` (no newline).
pub(super) fn key_value(out: &mut Vec<u8>, prefix: &str, time: &[u8], r: &AccessRecord<'_>) {
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b" time=");
    out.extend_from_slice(time);
    out.extend_from_slice(b" client=");
    addr(out, r.client);
    out.extend_from_slice(b" method=\"");
    escaped(out, r.method, KV_ESCAPE);
    out.extend_from_slice(b"\" target=\"");
    escaped(out, r.target, KV_ESCAPE);
    out.extend_from_slice(b"\" version=");
    match r.version {
        Some(v) => {
            out.extend_from_slice(b"HTTP/1.");
            num(out, u64::from(v));
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" status=");
    num(out, u64::from(r.status));
    out.extend_from_slice(b" worker=");
    if r.worker.is_empty() {
        out.push(b'-');
    } else {
        escaped(out, r.worker.as_bytes(), KV_ESCAPE);
    }
    out.extend_from_slice(b" bytes_in=");
    num(out, r.bytes_in);
    out.extend_from_slice(b" bytes_out=");
    num(out, r.bytes_out);
    for (key, d) in r.durations() {
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        ms(out, d, b"-");
    }
    out.extend_from_slice(b" retries=");
    num(out, u64::from(r.retries));
    out.extend_from_slice(b" request_id=");
    match r.request_id {
        Some(id) => escaped(out, id.as_bytes(), KV_ESCAPE),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" termination=");
    out.extend_from_slice(r.termination.name().as_bytes());
    out.extend_from_slice(b" phase=");
    out.extend_from_slice(r.phase.name().as_bytes());
}

/// `,"key":"<escaped value>"`.
fn json_text(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    escaped(out, value, JSON_ESCAPE);
    out.push(b'"');
}

/// `,"key":<n>`.
fn json_num(out: &mut Vec<u8>, key: &str, n: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    num(out, n);
}

/// The JSON object of `r` (no newline); absent values are `null`.
pub(super) fn json(out: &mut Vec<u8>, time: &[u8], r: &AccessRecord<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(time);
    out.extend_from_slice(b"\",\"client\":\"");
    addr(out, r.client);
    out.push(b'"');
    json_text(out, "method", r.method);
    json_text(out, "target", r.target);
    match r.version {
        Some(v) => {
            out.extend_from_slice(b",\"version\":\"HTTP/1.");
            num(out, u64::from(v));
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"version\":null"),
    }
    json_num(out, "status", u64::from(r.status));
    json_text(out, "worker", r.worker.as_bytes());
    json_num(out, "bytes_in", r.bytes_in);
    json_num(out, "bytes_out", r.bytes_out);
    for (key, d) in r.durations() {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        ms(out, d, b"null");
    }
    json_num(out, "retries", u64::from(r.retries));
    match r.request_id {
        Some(id) => json_text(out, "request_id", id.as_bytes()),
        None => out.extend_from_slice(b",\"request_id\":null"),
    }
    json_text(out, "termination", r.termination.name().as_bytes());
    json_text(out, "phase", r.phase.name().as_bytes());
    out.push(b'}');
}
