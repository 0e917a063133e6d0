//! Responses: canned responses written by the worker, the proxy (its own errors) and the
//! admin endpoint, with reason phrases, Content-Length, Date and Connection; and the strict
//! parser of upstream response heads the proxy reads (`parse_response_head`).

use std::cell::Cell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::field_lines::{self, FieldList, LinesError};
use super::fields::{
    ConnectionOptions, FieldName, Framing, Span, TransferCoding, parse_content_length,
    transfer_coding,
};
use super::request::Limits;

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

/// Why an upstream response head was rejected. The proxy answers 502 (`status()`) and
/// closes the upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The head is malformed or its framing ambiguous; the text says what.
    Malformed(&'static str),
    /// The head is larger than the limit.
    HeadTooLarge,
    /// More header fields than the limit.
    TooManyHeaders,
}

impl ResponseError {
    /// The status the proxy answers the client with (always 502 Bad Gateway).
    pub fn status(&self) -> u16 {
        502
    }

    /// A short human-readable reason (for logs).
    pub fn message(&self) -> &'static str {
        match self {
            ResponseError::Malformed(m) => m,
            ResponseError::HeadTooLarge => "upstream response head too large",
            ResponseError::TooManyHeaders => "too many upstream response header fields",
        }
    }
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ResponseError {}

/// A parsed, validated response head (spans into the buffer it was parsed from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Minor version: 0 (HTTP/1.0) or 1 (HTTP/1.1).
    pub version: u8,
    /// Status code, 100..=599.
    pub status: u16,
    /// Reason phrase as received (may be empty).
    pub reason: Span,
    /// Every field line in order.
    pub headers: FieldList,
    /// Bytes of the head; the body starts at `buf[head_len..]`.
    pub head_len: usize,
    /// How the body is delimited, given the request method: `None` for HEAD, 1xx, 204 and
    /// 304; else `Chunked`, `Length(n)`, or `Close` (read until the server closes).
    pub framing: Framing,
    /// Whether the upstream connection can be reused after this response's body (version and
    /// Connection allow it and the body is not close-delimited). Meaningless for 1xx.
    pub keep_alive: bool,
    /// Tokens listed in Connection field lines other than `close`, `keep-alive` and
    /// `upgrade` (whose fields are hop-by-hop anyway): the fields they name are dropped.
    pub connection_tokens: Vec<Span>,
    /// For a 101: the Upgrade field value (the protocol switched to).
    pub upgrade: Option<Span>,
}

impl ResponseHead {
    /// An interim response (1xx other than 101): a final response follows on the same
    /// exchange (100 Continue, 103 Early Hints, ...).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// A 101 Switching Protocols: the connection becomes a tunnel after this head.
    pub fn is_switching_protocols(&self) -> bool {
        self.status == 101
    }

    /// The first value of field `name` (ASCII case-insensitive), from `buf`.
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|f| f.name.get(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.get(buf))
    }

    /// Whether `name` is listed in Connection (so the field is hop-by-hop).
    pub fn is_connection_listed(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_tokens
            .iter()
            .any(|t| t.get(buf).eq_ignore_ascii_case(name))
    }
}

/// The status line, scanned.
struct StatusLine {
    version: u8,
    status: u16,
    reason: Span,
    /// Where the field lines start (just after the line's end).
    end: usize,
}

/// Scans the status line at the start of `buf`, after any empty lines: `HTTP/1.0` or
/// `HTTP/1.1`, one SP, three digits, then the line end or one SP and a reason phrase (HTAB,
/// SP, VCHAR, obs-text). `Ok(None)` = need more bytes; as for the fields, the first bad byte
/// decides (the grammar and verdicts of httparse 1.10, which this parser used before).
fn scan_status_line(buf: &[u8]) -> Result<Option<StatusLine>, ResponseError> {
    const BAD_LINE: ResponseError = ResponseError::Malformed("invalid status line");
    const BAD_VERSION: ResponseError = ResponseError::Malformed("invalid HTTP version");
    let mut i = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err(BAD_LINE),
            },
            Some(_) => break,
        }
    }
    let version = match buf.get(i..i + 8) {
        Some(b"HTTP/1.0") => 0,
        Some(b"HTTP/1.1") => 1,
        Some(_) => return Err(BAD_VERSION),
        None => {
            // Fewer than eight bytes: wrong already, or a prefix of `HTTP/1.`.
            let have = &buf[i..];
            let n = have.len().min(7);
            return if have[..n] == b"HTTP/1."[..n] {
                Ok(None)
            } else {
                Err(BAD_VERSION)
            };
        }
    };
    let code_start = i + 9;
    match buf.get(i + 8) {
        None => return Ok(None),
        Some(b' ') => {}
        Some(_) => return Err(BAD_VERSION),
    }
    let mut status = 0u16;
    for k in code_start..code_start + 3 {
        match buf.get(k) {
            None => return Ok(None),
            Some(&d) if d.is_ascii_digit() => status = status * 10 + u16::from(d - b'0'),
            Some(_) => return Err(BAD_LINE),
        }
    }
    let after_code = code_start + 3;
    let reason_start = match buf.get(after_code) {
        None => return Ok(None),
        Some(b' ') => after_code + 1,
        Some(b'\r' | b'\n') => after_code,
        Some(_) => return Err(BAD_LINE),
    };
    let mut k = reason_start;
    loop {
        match buf.get(k) {
            None => return Ok(None),
            Some(b'\n') => {
                return Ok(Some(StatusLine {
                    version,
                    status,
                    reason: Span::new(reason_start, k),
                    end: k + 1,
                }));
            }
            Some(b'\r') => {
                return match buf.get(k + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(StatusLine {
                        version,
                        status,
                        reason: Span::new(reason_start, k),
                        end: k + 2,
                    })),
                    Some(_) => Err(BAD_LINE),
                };
            }
            Some(&b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => k += 1,
            Some(_) => return Err(BAD_LINE),
        }
    }
}

/// Parses an upstream response head from the start of `buf`. `head_request`: the request
/// was HEAD (no body whatever the fields say). Uses `limits.max_header_bytes` and
/// `limits.max_headers`. `Ok(None)` = need more bytes (stateless, like the request parser).
///
/// Strictness (docs/ARCHITECTURE.md): status 100..=599 with a `HTTP/1.0`/`HTTP/1.1` status
/// line; whitespace before a colon, obs-fold, CTLs in values are errors; Content-Length must
/// be a single field line of 1*DIGIT; Transfer-Encoding must be exactly `chunked` (anything
/// else, chunked with Content-Length, or Transfer-Encoding in an HTTP/1.0 response is an
/// error rather than a guess: we would otherwise forward a body whose framing we cannot
/// state). For HEAD/1xx/204/304 the framing fields are still validated, then ignored.
/// Long on purpose: one pass over the field lines with every rule next to the field it
/// checks reads (and fuzzes) better than the checks scattered over helpers.
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    limits: &Limits,
) -> Result<Option<ResponseHead>, ResponseError> {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let over = buf.len() > limits.max_header_bytes;
    let line = match scan_status_line(window)? {
        Some(line) => line,
        None if over => return Err(ResponseError::HeadTooLarge),
        None => return Ok(None),
    };
    let (fields, head_len) =
        match field_lines::read_field_lines(window, line.end, limits.max_headers) {
            Ok(Some(complete)) => complete,
            incomplete_or_bad => {
                return match incomplete_or_bad {
                    Ok(_) if over => Err(ResponseError::HeadTooLarge),
                    Ok(_) => Ok(None),
                    Err(LinesError::TooMany) => Err(ResponseError::TooManyHeaders),
                    Err(LinesError::Name) => {
                        Err(ResponseError::Malformed("invalid header field name"))
                    }
                    Err(LinesError::Value) => Err(ResponseError::Malformed(
                        "invalid byte in header field value",
                    )),
                    Err(LinesError::NewLine) => {
                        Err(ResponseError::Malformed("invalid status line"))
                    }
                };
            }
        };
    let (version, status, reason) = (line.version, line.status, line.reason);
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed("status code out of range"));
    }

    let mut content_length = None;
    let mut te_lines = 0usize;
    let mut connection = ConnectionOptions::default();
    let mut upgrade = None;
    for f in &fields {
        let value = f.value.get(buf);
        match f.kind {
            FieldName::ContentLength => {
                if content_length.is_some() {
                    return Err(ResponseError::Malformed(
                        "more than one Content-Length field",
                    ));
                }
                content_length = Some(
                    parse_content_length(value)
                        .ok_or(ResponseError::Malformed("invalid Content-Length"))?,
                );
            }
            FieldName::TransferEncoding => te_lines += 1,
            FieldName::Connection => connection
                .read(buf, value)
                .map_err(|()| ResponseError::Malformed("invalid Connection field value"))?,
            FieldName::Upgrade if upgrade.is_none() => upgrade = Some(f.value),
            _ => {}
        }
    }
    let chunked = if te_lines > 0 {
        if version == 0 {
            return Err(ResponseError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        if content_length.is_some() {
            return Err(ResponseError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let values = fields
            .iter()
            .filter(|f| f.kind == FieldName::TransferEncoding)
            .map(|f| f.value.get(buf));
        if transfer_coding(values) != TransferCoding::Chunked {
            return Err(ResponseError::Malformed(
                "Transfer-Encoding is not a single chunked",
            ));
        }
        true
    } else {
        false
    };
    let framing = if head_request || status_has_no_body(status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let persistent = if version == 1 {
        !connection.close
    } else {
        connection.keep_alive && !connection.close
    };
    Ok(Some(ResponseHead {
        version,
        status,
        reason,
        headers: fields,
        head_len,
        framing,
        keep_alive: persistent && framing != Framing::Close,
        connection_tokens: connection.others,
        upgrade: if status == 101 { upgrade } else { None },
    }))
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
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

    fn resp(raw: &[u8], head: bool) -> ResponseHead {
        match parse_response_head(raw, head, &Limits::default()) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {:?}", String::from_utf8_lossy(raw), other),
        }
    }

    fn resp_err(raw: &[u8]) -> ResponseError {
        match parse_response_head(raw, false, &Limits::default()) {
            Err(e) => e,
            other => panic!(
                "{:?}: expected error, got {:?}",
                String::from_utf8_lossy(raw),
                other
            ),
        }
    }

    #[test]
    fn response_basic() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let h = resp(raw, false);
        assert_eq!(h.status, 200);
        assert_eq!(h.version, 1);
        assert_eq!(h.reason.get(raw), b"OK");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.head_len, raw.len() - 5);
        assert_eq!(h.header(raw, "x-a"), Some(&b"b"[..]));
        assert!(!h.is_interim());
        for n in 0..h.head_len {
            assert_eq!(
                parse_response_head(&raw[..n], false, &Limits::default()),
                Ok(None)
            );
        }
    }

    #[test]
    fn response_reason_forms() {
        let raw = b"HTTP/1.1 404 Not  Found here\r\n\r\n";
        assert_eq!(resp(raw, false).reason.get(raw), b"Not  Found here");
        let raw = b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(resp(raw, false).reason.get(raw), b"");
        let raw = b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n";
        assert_eq!(resp(raw, false).reason.get(raw), b"");
        let raw = b"HTTP/1.1 200 caf\xc3\xa9\nContent-Length: 0\n\n";
        assert_eq!(resp(raw, false).reason.get(raw), b"caf\xc3\xa9");
    }

    #[test]
    fn response_framing() {
        let h = resp(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
        let h = resp(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        let h = resp(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(!h.keep_alive);
        let h = resp(
            b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
            false,
        );
        assert!(h.keep_alive);
        let h = resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
        // HEAD, 204, 304, 1xx: no body whatever the fields say.
        let h = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n", true);
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        assert_eq!(
            resp(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true
            )
            .framing,
            Framing::None
        );
        assert_eq!(
            resp(b"HTTP/1.1 200 OK\r\n\r\n", true).framing,
            Framing::None
        );
        assert_eq!(
            resp(b"HTTP/1.1 204 No Content\r\n\r\n", false).framing,
            Framing::None
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false
            )
            .framing,
            Framing::None
        );
        let h = resp(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false);
        assert_eq!(h.framing, Framing::None);
        assert!(h.is_interim());
        assert!(resp(b"HTTP/1.1 100 Continue\r\n\r\n", false).is_interim());
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let h = resp(raw, false);
        assert!(h.is_switching_protocols());
        assert!(!h.is_interim());
        assert_eq!(h.upgrade.map(|u| u.get(raw)), Some(&b"websocket"[..]));
        assert!(!h.is_connection_listed(raw, b"x-none"));
    }

    #[test]
    fn response_rejections() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: a b\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 600 High\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 O\x00K\r\n\r\n",
        ] {
            let e = resp_err(raw);
            assert_eq!(e.status(), 502, "{:?}", String::from_utf8_lossy(raw));
        }
        // Still validated for HEAD.
        assert!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                true,
                &Limits::default()
            )
            .is_err()
        );
    }

    /// The status line and field lines as httparse 1.10 (the parser used before) judges
    /// them: (version, status, reason, head length) or the message we report.
    fn reference_syntax(buf: &[u8]) -> Result<Option<(u8, u16, Span, usize)>, &'static str> {
        let mut slots = [httparse::EMPTY_HEADER; 4];
        let mut r = httparse::Response::new(&mut slots);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                // The reason from the raw line (httparse blanks one holding obs-text).
                let lead = buf
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                let lf = lead + buf[lead..].iter().position(|&b| b == b'\n').unwrap_or(0);
                let eol = lf - usize::from(buf[lf - 1] == b'\r');
                let reason = if buf[lead + 12] == b' ' {
                    Span::new(lead + 13, eol)
                } else {
                    Span::new(lead + 12, lead + 12)
                };
                if let Some(r) = r.reason.filter(|r| !r.is_empty()) {
                    assert_eq!(Span::of(buf, r.as_bytes()), reason);
                }
                Ok(Some((
                    r.version.unwrap_or(9),
                    r.code.unwrap_or(0),
                    reason,
                    n,
                )))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::Version) => Err("invalid HTTP version"),
            Err(httparse::Error::TooManyHeaders) => Err("too many"),
            Err(httparse::Error::HeaderName) => Err("invalid header field name"),
            Err(httparse::Error::HeaderValue) => Err("invalid byte in header field value"),
            Err(_) => Err("invalid status line"),
        }
    }

    fn our_syntax(buf: &[u8]) -> Result<Option<(u8, u16, Span, usize)>, &'static str> {
        let line = match scan_status_line(buf) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.message()),
        };
        let mut fields = Vec::new();
        match field_lines::parse_field_lines(buf, line.end, 4, &mut fields) {
            Ok(Some(n)) => Ok(Some((line.version, line.status, line.reason, n))),
            Ok(None) => Ok(None),
            Err(LinesError::TooMany) => Err("too many"),
            Err(LinesError::Name) => Err("invalid header field name"),
            Err(LinesError::Value) => Err("invalid byte in header field value"),
            Err(LinesError::NewLine) => Err("invalid status line"),
        }
    }

    /// Pieces of status lines, so random concatenations reach every state of the scan.
    const STATUS_PIECES: &[&[u8]] = &[
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"HTTP/1.",
        b"HTTX",
        b" ",
        b"200",
        b"20",
        b"2x0",
        b"OK",
        b"caf\xc3\xa9",
        b"\t",
        b"\x00",
        b"\x7f",
        b"\r\n",
        b"\n",
        b"\r",
        b"X: y\r\n",
        b"X : y",
        b":",
    ];

    #[test]
    fn status_line_samples_agree_with_httparse() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"[..],
            b"\r\n\nHTTP/1.0 404 Not  Found here\n\n",
            b"HTTP/1.1 200\r\n\r\n",
            b"HTTP/1.1 200 \r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 O\x00K\r\n\r\n",
            b"HTTP/1.1 200 OK\rX\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"\rHTTP/1.1 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ] {
            for n in 0..=raw.len() {
                let part = &raw[..n];
                assert_eq!(
                    our_syntax(part),
                    reference_syntax(part),
                    "{:?}",
                    String::from_utf8_lossy(part)
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 4096,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Same verdict, version, status, reason and head length as httparse.
        #[test]
        fn status_line_agrees_with_httparse(
            pieces in proptest::collection::vec(proptest::sample::select(STATUS_PIECES), 0..12)
        ) {
            let buf = pieces.concat();
            proptest::prop_assert_eq!(our_syntax(&buf), reference_syntax(&buf));
        }
    }

    #[test]
    fn response_limits() {
        let l = Limits {
            max_request_line: 10,
            max_header_bytes: 40,
            max_headers: 2,
        };
        assert_eq!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
                false,
                &l
            ),
            Err(ResponseError::TooManyHeaders)
        );
        let mut big = b"HTTP/1.1 200 OK\r\nA: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 30));
        assert_eq!(
            parse_response_head(&big, false, &l),
            Err(ResponseError::HeadTooLarge)
        );
    }
}
