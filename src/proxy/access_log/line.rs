//! Spelling one access-log line straight into the batch: no `fmt` machinery, no allocation,
//! the time text made once per loop iteration. The log is on the data path (`access-log:
//! all` is a line per request), so these are written like the head rewriter's writers.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{AccessRecord, MAX_LOGGED_TARGET};

/// Longest line: every escaped field at its cut (4 bytes per input byte) with room to spare.
pub(super) const LINE_MAX: usize = 4096;

/// One line being spelled, on the stack: copies of short constant pieces compile to a few
/// moves (a `Vec` would call `memcpy` for each), and the batch takes the line in one copy.
pub(super) struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl LineBuf {
    /// An empty line.
    pub(super) fn new() -> LineBuf {
        LineBuf {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// Empties it for the next line.
    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    /// The bytes spelled so far.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends `s` (silently cut at [`LINE_MAX`], which the field cuts keep out of reach).
    #[inline(always)]
    fn put(&mut self, s: &[u8]) {
        let end = self.len + s.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(s);
            self.len = end;
        }
    }

    #[inline(always)]
    fn put_byte(&mut self, b: u8) {
        if let Some(dst) = self.buf.get_mut(self.len) {
            *dst = b;
            self.len += 1;
        }
    }
}

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

/// Two-digit pairs "00".."99", so a number is spelled two digits per division.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// `n` in decimal.
fn num(out: &mut LineBuf, mut n: u64) {
    if n < 10 {
        out.put_byte(b'0' + n as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    out.put(&digits[i..]);
}

/// `ip:port`; IPv4 without `fmt` (the common case).
fn addr(out: &mut LineBuf, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (k, octet) in v4.ip().octets().into_iter().enumerate() {
                if k > 0 {
                    out.put_byte(b'.');
                }
                num(out, u64::from(octet));
            }
            out.put_byte(b':');
            num(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            let mut text = [0u8; 64];
            let room = text.len();
            let mut cursor = &mut text[..];
            let _ = write!(cursor, "{a}");
            let used = room - cursor.len();
            out.put(&text[..used]);
        }
    }
}

/// Whether a byte is written as itself: visible ASCII but `"` and `\`.
const fn is_plain(b: u8) -> bool {
    b >= 0x21 && b <= 0x7e && b != b'"' && b != b'\\'
}

/// [`is_plain`] for every byte, looked up (the escape loop is per byte of every line).
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = is_plain(b as u8);
        b += 1;
    }
    t
};

/// Bytes outside visible ASCII, `"` and `\` as `<escape>HH`; cut at [`MAX_LOGGED_TARGET`]
/// and marked `...`. Runs of plain bytes are copied at once.
pub(super) fn escaped(out: &mut LineBuf, bytes: &[u8], escape: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = &bytes[..bytes.len().min(MAX_LOGGED_TARGET)];
    while !rest.is_empty() {
        let run = rest
            .iter()
            .position(|&b| !PLAIN[usize::from(b)])
            .unwrap_or(rest.len());
        out.put(&rest[..run]);
        let Some(&b) = rest.get(run) else { break };
        out.put(escape);
        out.put(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        rest = &rest[run + 1..];
    }
    if bytes.len() > MAX_LOGGED_TARGET {
        out.put(b"...");
    }
}

/// A duration in ms, or `none` when that phase was not reached.
fn ms(out: &mut LineBuf, d: Option<Duration>, none: &[u8]) {
    match d {
        // Not `as_millis`: its u128 division costs more than the rest of the number.
        Some(d) => num(out, d.as_secs() * 1000 + u64::from(d.subsec_millis())),
        None => out.put(none),
    }
}

/// The key=value line of `r` (no newline).
pub(super) fn key_value(out: &mut LineBuf, prefix: &str, time: &[u8], r: &AccessRecord<'_>) {
    out.put(prefix.as_bytes());
    out.put(b" time=");
    out.put(time);
    out.put(b" client=");
    addr(out, r.client);
    out.put(b" method=\"");
    escaped(out, r.method, KV_ESCAPE);
    out.put(b"\" target=\"");
    escaped(out, r.target, KV_ESCAPE);
    out.put(b"\" version=");
    match r.version {
        Some(v) => {
            out.put(b"HTTP/1.");
            num(out, u64::from(v));
        }
        None => out.put_byte(b'-'),
    }
    out.put(b" status=");
    num(out, u64::from(r.status));
    out.put(b" worker=");
    if r.worker.is_empty() {
        out.put_byte(b'-');
    } else {
        escaped(out, r.worker.as_bytes(), KV_ESCAPE);
    }
    out.put(b" bytes_in=");
    num(out, r.bytes_in);
    out.put(b" bytes_out=");
    num(out, r.bytes_out);
    for (key, d) in r.durations() {
        out.put_byte(b' ');
        out.put(key.as_bytes());
        out.put_byte(b'=');
        ms(out, d, b"-");
    }
    out.put(b" retries=");
    num(out, u64::from(r.retries));
    out.put(b" request_id=");
    match r.request_id {
        Some(id) if id.is_plain() => out.put(id.as_bytes()),
        Some(id) => escaped(out, id.as_bytes(), KV_ESCAPE),
        None => out.put_byte(b'-'),
    }
    out.put(b" termination=");
    out.put(r.termination.name().as_bytes());
    out.put(b" phase=");
    out.put(r.phase.name().as_bytes());
}

/// `,"key":"<escaped value>"`.
fn json_text(out: &mut LineBuf, key: &str, value: &[u8]) {
    out.put(b",\"");
    out.put(key.as_bytes());
    out.put(b"\":\"");
    escaped(out, value, JSON_ESCAPE);
    out.put_byte(b'"');
}

/// `,"key":<n>`.
fn json_num(out: &mut LineBuf, key: &str, n: u64) {
    out.put(b",\"");
    out.put(key.as_bytes());
    out.put(b"\":");
    num(out, n);
}

/// The JSON object of `r` (no newline); absent values are `null`.
pub(super) fn json(out: &mut LineBuf, time: &[u8], r: &AccessRecord<'_>) {
    out.put(b"{\"time\":\"");
    out.put(time);
    out.put(b"\",\"client\":\"");
    addr(out, r.client);
    out.put_byte(b'"');
    json_text(out, "method", r.method);
    json_text(out, "target", r.target);
    match r.version {
        Some(v) => {
            out.put(b",\"version\":\"HTTP/1.");
            num(out, u64::from(v));
            out.put_byte(b'"');
        }
        None => out.put(b",\"version\":null"),
    }
    json_num(out, "status", u64::from(r.status));
    json_text(out, "worker", r.worker.as_bytes());
    json_num(out, "bytes_in", r.bytes_in);
    json_num(out, "bytes_out", r.bytes_out);
    for (key, d) in r.durations() {
        out.put(b",\"");
        out.put(key.as_bytes());
        out.put(b"\":");
        ms(out, d, b"null");
    }
    json_num(out, "retries", u64::from(r.retries));
    match r.request_id {
        Some(id) => json_text(out, "request_id", id.as_bytes()),
        None => out.put(b",\"request_id\":null"),
    }
    json_text(out, "termination", r.termination.name().as_bytes());
    json_text(out, "phase", r.phase.name().as_bytes());
    out.put_byte(b'}');
}
