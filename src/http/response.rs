//! Responses: canned responses written by the worker, the proxy (its own errors) and the
//! admin endpoint, with reason phrases, Content-Length, Date and Connection.

use std::cell::Cell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The standard reason phrase of `status` (RFC 9110 section 15); "Unknown" otherwise.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// What the Connection field of a canned response says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// No Connection field (HTTP/1.1 persistent default).
    Omit,
    /// `Connection: keep-alive` (an HTTP/1.0 client that asked for it).
    KeepAlive,
    /// `Connection: close` (we close after this response).
    Close,
}

/// Whether a response with `status` carries no body by definition (1xx, 204, 304).
pub fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// A complete HTTP/1.1 response: status line with its reason phrase, Date, Content-Type
/// (when the body is not empty), Content-Length, `Connection: close` when `close`.
pub fn simple(status: u16, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    let conn = if close {
        ConnectionHeader::Close
    } else {
        ConnectionHeader::Omit
    };
    write_simple(&mut out, status, content_type, body, conn, false);
    out
}

/// `simple` with a JSON body `{"error":"<message>","status":<status>}`.
pub fn json_error(status: u16, message: &str, close: bool) -> Vec<u8> {
    simple(
        status,
        "application/json",
        json_error_body(status, message).as_bytes(),
        close,
    )
}

/// The body `json_error` sends.
pub fn json_error_body(status: u16, message: &str) -> String {
    serde_json::json!({ "error": message, "status": status }).to_string()
}

/// Appends a complete response to `out` (no allocation when `out` has room). For a HEAD
/// request (`head_request`) the body is left out but Content-Length still announces it;
/// 1xx/204 get neither body nor Content-Length, 304 no body.
pub fn write_simple(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    conn: ConnectionHeader,
    head_request: bool,
) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\nDate: ", status, reason(status));
    out.extend_from_slice(&date_now());
    out.extend_from_slice(b"\r\n");
    let no_body = status_has_no_body(status);
    if !no_body && !content_type.is_empty() && !body.is_empty() {
        let _ = write!(out, "Content-Type: {content_type}\r\n");
    }
    if !(100..200).contains(&status) && status != 204 && status != 304 {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    match conn {
        ConnectionHeader::Omit => {}
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    if !no_body && !head_request {
        out.extend_from_slice(body);
    }
}

/// `unix_secs` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 5.6.7).
pub fn http_date(unix_secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix_secs / 86400;
    let secs = unix_secs % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |o: &mut [u8], v: u64| {
        o[0] = b'0' + (v / 10 % 10) as u8;
        o[1] = b'0' + (v % 10) as u8;
    };
    two(&mut out[5..7], d as u64);
    out[8..11].copy_from_slice(MONTHS[(m - 1) as usize]);
    let y = y.clamp(0, 9999) as u64;
    two(&mut out[12..14], y / 100);
    two(&mut out[14..16], y % 100);
    two(&mut out[17..19], secs / 3600);
    two(&mut out[20..22], secs / 60 % 60);
    two(&mut out[23..25], secs % 60);
    out
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

thread_local! {
    static DATE_CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// The current time as an IMF-fixdate, formatted at most once a second per thread.
pub fn date_now() -> [u8; 29] {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE_CACHE.with(|c| {
        let (secs, s) = c.get();
        if secs == now {
            s
        } else {
            let s = http_date(now);
            c.set((now, s));
            s
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &[u8]) -> String {
        String::from_utf8(v.to_vec()).unwrap()
    }

    /// Splits a canned response into (status line, header lines without Date, body).
    fn split(v: &[u8]) -> (String, Vec<String>, Vec<u8>) {
        let t = v
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head end");
        let head = text(&v[..t]);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers: Vec<String> = lines
            .filter(|l| !l.starts_with("Date: "))
            .map(str::to_string)
            .collect();
        assert!(head.contains("\r\nDate: "), "{head}");
        (status, headers, v[t + 4..].to_vec())
    }

    #[test]
    fn simple_ok() {
        let r = simple(200, "text/plain", b"hello", false);
        let (s, h, b) = split(&r);
        assert_eq!(s, "HTTP/1.1 200 OK");
        assert_eq!(h, vec!["Content-Type: text/plain", "Content-Length: 5"]);
        assert_eq!(b, b"hello");
    }

    #[test]
    fn simple_close_and_reasons() {
        let r = simple(431, "text/plain", b"", true);
        let (s, h, b) = split(&r);
        assert_eq!(s, "HTTP/1.1 431 Request Header Fields Too Large");
        assert_eq!(h, vec!["Content-Length: 0", "Connection: close"]);
        assert!(b.is_empty());
        for (code, phrase) in [
            (400, "Bad Request"),
            (408, "Request Timeout"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (417, "Expectation Failed"),
            (501, "Not Implemented"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
            (599, "Unknown"),
        ] {
            assert_eq!(reason(code), phrase);
            let (s, _, _) = split(&simple(code, "", b"", true));
            assert_eq!(s, format!("HTTP/1.1 {code} {phrase}"));
        }
    }

    #[test]
    fn no_body_statuses() {
        let (_, h, b) = split(&simple(204, "text/plain", b"ignored", false));
        assert!(h.is_empty(), "{h:?}");
        assert!(b.is_empty());
        let (_, h, b) = split(&simple(304, "text/plain", b"ignored", false));
        assert!(h.is_empty(), "{h:?}");
        assert!(b.is_empty());
        let (s, h, _) = split(&simple(100, "", b"", false));
        assert_eq!(s, "HTTP/1.1 100 Continue");
        assert!(h.is_empty());
    }

    #[test]
    fn head_request_and_keep_alive() {
        let mut out = Vec::new();
        write_simple(
            &mut out,
            200,
            "text/plain",
            b"abc",
            ConnectionHeader::KeepAlive,
            true,
        );
        let (_, h, b) = split(&out);
        assert_eq!(
            h,
            vec![
                "Content-Type: text/plain",
                "Content-Length: 3",
                "Connection: keep-alive"
            ]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn json_error_escapes() {
        let r = json_error(404, "no \"such\" path\n", false);
        let (s, h, b) = split(&r);
        assert_eq!(s, "HTTP/1.1 404 Not Found");
        assert_eq!(h[0], "Content-Type: application/json");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "no \"such\" path\n");
        assert_eq!(v["status"], 404);
        assert_eq!(h[1], format!("Content-Length: {}", b.len()));
    }

    #[test]
    fn dates() {
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(784111777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(951782400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&http_date(4102444799), b"Thu, 31 Dec 2099 23:59:59 GMT");
        assert_eq!(date_now().len(), 29);
    }
}
