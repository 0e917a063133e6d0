//! Strict HTTP/1.1 request-head parser (RFC 9110 / 9112) with limits.
//!
//! `parse_request_head(buf, &limits)` is stateless: call it again when more bytes arrived.
//! It returns `Ok(None)` while the head is incomplete and still within the limits,
//! `Ok(Some(head))` once complete and valid, `Err(e)` (with `e.status()`) as soon as the
//! bytes seen so far can no longer become a valid head. The verdict never depends on how the
//! bytes were split across reads: parsing is a left-to-right scan whose first event (an
//! invalid byte, a limit crossed, the end of the head) decides, so feeding any prefix gives
//! either `Ok(None)` or the same answer as the whole buffer.
//!
//! Strictness decisions (also in docs/ARCHITECTURE.md):
//! - Bare LF line endings are accepted (as httparse does, which this parser used before);
//!   the forwarded head uses CRLF.
//!   Empty lines before the request line are skipped (RFC 9112 2.2); they count toward the
//!   head limit, not the request-line limit. A bare CR anywhere is 400.
//! - Request line: `method SP target SP HTTP/x.y`, single spaces, method a token, target
//!   visible ASCII without `#`. Origin-form (`/...`), absolute-form (`http://` or `https://`
//!   with a non-empty host and no userinfo) and asterisk-form (`*`, OPTIONS only) accepted;
//!   CONNECT (authority-form) is 501: we are a reverse proxy, not a tunnel.
//! - Versions: HTTP/1.0 and HTTP/1.1 only. A well-formed other version (`HTTP/2.0`,
//!   `HTTP/1.2`, `HTTP/0.9`) or the HTTP/0.9 form (no version) is 505; anything else 400.
//!   (RFC 9110 lets a server treat 1.2 as 1.1; we prefer an explicit 505.)
//! - 414 when the request line exceeds `max_request_line` (decided as soon as that many
//!   bytes of the line arrived without its end); 431 when the head exceeds
//!   `max_header_bytes` (request line and final empty line included) or has more than
//!   `max_headers` fields.
//! - Fields (`field_lines`): whitespace before the colon, obs-fold, and CTLs (NUL, CR, LF,
//!   DEL) in values: 400.
//! - HTTP/1.1 needs exactly one Host; more than one Host is 400 for any version; the value
//!   must be a valid `host[:port]` (or empty).
//! - Content-Length: exactly one field line holding 1*DIGIT that fits a u64; lists (even of
//!   equal values), repeated lines, signs, spaces inside: 400.
//! - Transfer-Encoding: only a single `chunked` is accepted. A final coding other than
//!   chunked, chunked twice, or an empty value: 400 (RFC 9112 6.3: length undeterminable);
//!   other codings before a final chunked (`gzip, chunked`): 501. Transfer-Encoding with
//!   Content-Length: 400. Transfer-Encoding in an HTTP/1.0 request: 400 (RFC 9112 6.1).
//! - `Expect: 100-continue` is recognised (case-insensitive); any other expectation is 417.
//!   HTTP/1.0 requests' Expect and Upgrade are ignored, as RFC 9110 requires.
//! - Connection tokens must be tokens (400 otherwise).

use super::field_lines::{self, FieldList, LinesError};
use super::fields::{
    ConnectionOptions, FieldName, Framing, Span, TransferCoding, is_tchar, is_valid_authority,
    parse_content_length, transfer_coding,
};

/// Size limits for a request head (from `ProxySettings` or the worker's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (without its line ending), else 414.
    pub max_request_line: usize,
    /// Largest head, request line and final empty line included, else 431.
    pub max_header_bytes: usize,
    /// Most header fields, else 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_line: 8192,
            max_header_bytes: 32768,
            max_headers: 100,
        }
    }
}

impl Limits {
    /// The request limits of an LB loop's settings.
    pub fn from_settings(s: &crate::config::ProxySettings) -> Limits {
        Limits {
            max_request_line: s.max_request_line,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
        }
    }
}

/// Why a request head was rejected; `status()` is the answer to send (then close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400: the head is malformed or ambiguous; the text says what.
    Malformed(&'static str),
    /// 414: the request line is longer than `max_request_line`.
    RequestLineTooLong,
    /// 431: the head is larger than `max_header_bytes`.
    HeadTooLarge,
    /// 431: more than `max_headers` fields.
    TooManyHeaders,
    /// 505: a well-formed HTTP version other than 1.0 / 1.1.
    VersionNotSupported,
    /// 501: a method or transfer coding we do not implement.
    NotImplemented(&'static str),
    /// 417: an Expect other than 100-continue.
    ExpectationFailed,
}

impl HeadError {
    /// The HTTP status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::RequestLineTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::VersionNotSupported => 505,
            HeadError::NotImplemented(_) => 501,
            HeadError::ExpectationFailed => 417,
        }
    }

    /// A short human-readable reason (for logs and error bodies).
    pub fn message(&self) -> &'static str {
        match self {
            HeadError::Malformed(m) | HeadError::NotImplemented(m) => m,
            HeadError::RequestLineTooLong => "request line too long",
            HeadError::HeadTooLarge => "request head too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::VersionNotSupported => "HTTP version not supported",
            HeadError::ExpectationFailed => "unsupported expectation",
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status(), self.message())
    }
}

impl std::error::Error for HeadError {}

/// The request method, classified (the bytes stay in `RequestHead::method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD (its response never has a body)
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token.
    Other,
}

impl Method {
    fn classify(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Idempotent per RFC 9110 9.2.2 (may be retried on another backend).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// The form of the request target (RFC 9112 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`
    Absolute,
    /// `*` (OPTIONS only)
    Asterisk,
}

/// A parsed, validated request head. Every byte range refers to the buffer it was parsed
/// from (`Span::get(buf)`); nothing is copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method bytes.
    pub method: Span,
    /// The method, classified.
    pub method_kind: Method,
    /// The request target, byte-exact as received.
    pub target: Span,
    /// Which form the target has.
    pub target_form: TargetForm,
    /// The authority of an absolute-form target (what Host must become upstream).
    pub authority: Option<Span>,
    /// Minor version: 0 (HTTP/1.0) or 1 (HTTP/1.1).
    pub version: u8,
    /// Every field line in order.
    pub headers: FieldList,
    /// Bytes of the head, final empty line (and skipped leading empty lines) included: the
    /// body (or the next request) starts at `buf[head_len..]`.
    pub head_len: usize,
    /// How the body is delimited: `None`, `Length(n)` or `Chunked`.
    pub framing: Framing,
    /// Whether the connection may stay open after this exchange (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1 only).
    pub expect_continue: bool,
    /// The Upgrade field value when an upgrade is requested (Upgrade present and Connection
    /// lists `upgrade`, HTTP/1.1 only).
    pub upgrade: Option<Span>,
    /// Tokens listed in Connection field lines other than `close`, `keep-alive` and
    /// `upgrade` (whose fields are hop-by-hop anyway): the fields they name are dropped.
    pub connection_tokens: Vec<Span>,
    /// The Host field value, if any.
    pub host: Option<Span>,
}

impl RequestHead {
    /// The first value of field `name` (ASCII case-insensitive), from `buf`.
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|f| f.name.get(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.get(buf))
    }

    /// Whether this is a HEAD request (its response has no body).
    pub fn is_head(&self) -> bool {
        self.method_kind == Method::Head
    }

    /// Whether the method is idempotent (safe to retry when nothing was answered).
    pub fn is_idempotent(&self) -> bool {
        self.method_kind.is_idempotent()
    }

    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        match self.framing {
            Framing::Length(n) => n > 0,
            Framing::Chunked => true,
            Framing::None | Framing::Close => false,
        }
    }

    /// Whether the field name at `i` is listed in Connection (so it is hop-by-hop).
    pub fn is_connection_listed(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_tokens
            .iter()
            .any(|t| t.get(buf).eq_ignore_ascii_case(name))
    }

    /// The `X-Request-Id` value when the client sent exactly one such field.
    pub fn sole_request_id<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        let mut sent = self
            .headers
            .iter()
            .filter(|f| f.kind == FieldName::XRequestId);
        match (sent.next(), sent.next()) {
            (Some(f), None) => Some(f.value.get(buf)),
            _ => None,
        }
    }
}

/// Result of scanning the request line.
struct RequestLine {
    method: Span,
    target: Span,
    version: u8,
    /// Where the field lines start (just after the line's end).
    end: usize,
}

/// Parses a request head from the start of `buf`; see the module documentation.
pub fn parse_request_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let over = buf.len() > limits.max_header_bytes;
    let line = match scan_request_line(window, limits.max_request_line)? {
        Some(l) => l,
        None if over => return Err(HeadError::HeadTooLarge),
        None => return Ok(None),
    };

    let (fields, head_len) =
        match field_lines::read_field_lines(window, line.end, limits.max_headers) {
            Ok(Some(complete)) => complete,
            incomplete_or_bad => {
                return match incomplete_or_bad {
                    Ok(_) if over => Err(HeadError::HeadTooLarge),
                    Ok(_) => Ok(None),
                    Err(LinesError::TooMany) => Err(HeadError::TooManyHeaders),
                    Err(LinesError::Name) => Err(HeadError::Malformed(
                        "invalid header field name (whitespace before colon, obs-fold or bad byte)",
                    )),
                    Err(LinesError::Value) => {
                        Err(HeadError::Malformed("invalid byte in header field value"))
                    }
                    Err(LinesError::NewLine) => Err(HeadError::Malformed("invalid line ending")),
                };
            }
        };
    finish(buf, line, fields, head_len).map(Some)
}

/// Semantic checks on a complete head: Host, framing, Connection, Expect, Upgrade. Long on
/// purpose: the rules interact (framing decides what Connection and Expect may say), and one
/// function in the order RFC 9112 gives them is what the property tests check against.
fn finish(
    buf: &[u8],
    line: RequestLine,
    headers: FieldList,
    head_len: usize,
) -> Result<RequestHead, HeadError> {
    let method_bytes = line.method.get(buf);
    let method_kind = Method::classify(method_bytes);
    if method_bytes == b"CONNECT" {
        return Err(HeadError::NotImplemented("CONNECT is not supported"));
    }
    let target = line.target.get(buf);
    let (target_form, authority) = classify_target(target, method_kind)?;
    let authority =
        authority.map(|a| Span::new(line.target.start + a.start, line.target.start + a.end));

    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut cl_lines = 0usize;
    let mut te_lines = 0usize;
    let mut connection = ConnectionOptions::default();
    let mut expect_continue = false;
    let mut upgrade_field = None;
    for f in &headers {
        let value = f.value.get(buf);
        match f.kind {
            FieldName::Host => {
                if host.is_some() {
                    return Err(HeadError::Malformed("more than one Host field"));
                }
                if !is_valid_authority(value, true) {
                    return Err(HeadError::Malformed("invalid Host field value"));
                }
                host = Some(f.value);
            }
            FieldName::ContentLength => {
                cl_lines += 1;
                if cl_lines > 1 {
                    return Err(HeadError::Malformed("more than one Content-Length field"));
                }
                content_length = Some(
                    parse_content_length(value)
                        .ok_or(HeadError::Malformed("invalid Content-Length"))?,
                );
            }
            FieldName::TransferEncoding => te_lines += 1,
            FieldName::Connection => connection
                .read(buf, value)
                .map_err(|()| HeadError::Malformed("invalid Connection field value"))?,
            FieldName::Expect if line.version == 1 => {
                if value.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HeadError::ExpectationFailed);
                }
            }
            FieldName::Upgrade if upgrade_field.is_none() => upgrade_field = Some(f.value),
            _ => {}
        }
    }
    if line.version == 1 && host.is_none() {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }

    let framing = if te_lines > 0 {
        if line.version == 0 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if content_length.is_some() {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let values = headers
            .iter()
            .filter(|f| f.kind == FieldName::TransferEncoding)
            .map(|f| f.value.get(buf));
        match transfer_coding(values) {
            TransferCoding::Chunked => Framing::Chunked,
            TransferCoding::Invalid => {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding is not a single final chunked",
                ));
            }
            TransferCoding::Unsupported => {
                return Err(HeadError::NotImplemented("unsupported transfer coding"));
            }
        }
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::None,
        }
    };

    let keep_alive = if line.version == 1 {
        !connection.close
    } else {
        connection.keep_alive && !connection.close
    };
    let upgrade = match upgrade_field {
        Some(u) if line.version == 1 && connection.upgrade => Some(u),
        _ => None,
    };

    Ok(RequestHead {
        method: line.method,
        method_kind,
        target: line.target,
        target_form,
        authority,
        version: line.version,
        headers,
        head_len,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        connection_tokens: connection.others,
        host,
    })
}

/// Validates the form of a complete target; returns it and, for absolute-form, the span of
/// the authority relative to the target.
fn classify_target(target: &[u8], method: Method) -> Result<(TargetForm, Option<Span>), HeadError> {
    match target {
        [b'/', ..] => Ok((TargetForm::Origin, None)),
        b"*" if method == Method::Options => Ok((TargetForm::Asterisk, None)),
        b"*" => Err(HeadError::Malformed("asterisk-form target outside OPTIONS")),
        _ => {
            let scheme_end = target
                .windows(3)
                .position(|w| w == b"://")
                .ok_or(HeadError::Malformed("invalid request target"))?;
            let scheme = &target[..scheme_end];
            if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
                return Err(HeadError::Malformed("absolute-form target is not http(s)"));
            }
            let a_start = scheme_end + 3;
            let a_end = target[a_start..]
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .map_or(target.len(), |p| a_start + p);
            let authority = &target[a_start..a_end];
            if authority.contains(&b'@') {
                return Err(HeadError::Malformed("userinfo in request target"));
            }
            if !is_valid_authority(authority, false) {
                return Err(HeadError::Malformed("invalid authority in request target"));
            }
            Ok((TargetForm::Absolute, Some(Span::new(a_start, a_end))))
        }
    }
}

/// Scans the request line at the start of `buf` (after skipping empty lines). `Ok(None)` =
/// need more bytes. The first invalid byte or the limit decides the error, so the verdict is
/// the same whatever prefix of the line is present: each part is a tight loop over the bytes
/// its class allows, bounded by the limit, and the byte that stops it decides.
fn scan_request_line(buf: &[u8], max_line: usize) -> Result<Option<RequestLine>, HeadError> {
    let mut i = 0;
    // Empty lines before the request line (RFC 9112 2.2); they count toward the head limit.
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err(HeadError::Malformed("bare CR")),
            },
            Some(_) => break,
        }
    }
    let line_start = i;
    // The first index where a byte other than a line end is over the limit.
    let limit = line_start.saturating_add(max_line).min(buf.len());
    // What stops a part: its byte, or `Err` with the verdict (need more, or a bare CR).
    let stop = |k: usize| -> Result<u8, Result<Option<RequestLine>, HeadError>> {
        match buf.get(k) {
            None => Err(Ok(None)),
            Some(b'\r') => match buf.get(k + 1) {
                None => Err(Ok(None)),
                Some(b'\n') => Ok(b'\r'),
                Some(_) => Err(Err(HeadError::Malformed("bare CR in request line"))),
            },
            Some(&b) => Ok(b),
        }
    };

    let method_end = run_of(buf, line_start, limit, is_tchar);
    match stop(method_end) {
        Err(verdict) => return verdict,
        Ok(b'\r' | b'\n') => return Err(HeadError::Malformed("malformed request line")),
        Ok(_) if method_end - line_start >= max_line => return Err(HeadError::RequestLineTooLong),
        Ok(b' ') if method_end > line_start => {}
        Ok(b' ') => return Err(HeadError::Malformed("empty method")),
        Ok(_) => return Err(HeadError::Malformed("invalid method")),
    }
    let target_start = method_end + 1;
    let target_end = run_of(buf, target_start, limit, |b| {
        (0x21..=0x7e).contains(&b) && b != b'#'
    });
    match stop(target_end) {
        Err(verdict) => return verdict,
        Ok(b'\r' | b'\n') if target_end == target_start => {
            return Err(HeadError::Malformed("empty request target"));
        }
        // "GET /" with no version: the HTTP/0.9 form.
        Ok(b'\r' | b'\n') => return Err(HeadError::VersionNotSupported),
        Ok(_) if target_end - line_start >= max_line => return Err(HeadError::RequestLineTooLong),
        Ok(b' ') if target_end > target_start => {}
        Ok(b' ') => return Err(HeadError::Malformed("empty request target")),
        Ok(_) => return Err(HeadError::Malformed("invalid byte in request target")),
    }
    let version_start = target_end + 1;
    // The usual line end, `HTTP/1.1` CRLF within the limit, at once; anything else byte by
    // byte below, which gives every other verdict.
    let version_end = version_start + 8;
    if version_end - line_start <= max_line {
        let version = match buf.get(version_start..version_end) {
            Some(b"HTTP/1.1") => Some(1),
            Some(b"HTTP/1.0") => Some(0),
            _ => None,
        };
        let eol = match buf.get(version_end..) {
            Some([b'\r', b'\n', ..]) => Some(2),
            Some([b'\n', ..]) => Some(1),
            _ => None,
        };
        if let (Some(version), Some(eol)) = (version, eol) {
            return Ok(Some(RequestLine {
                method: Span::new(line_start, method_end),
                target: Span::new(target_start, target_end),
                version,
                end: version_end + eol,
            }));
        }
    }
    // "HTTP/" DIGIT "." DIGIT, byte by byte (eight of them).
    let mut digits = [0u8; 2];
    for n in 0..=8 {
        let k = version_start + n;
        let b = match stop(k) {
            Err(verdict) => return verdict,
            Ok(b'\r' | b'\n') if n == 8 => break,
            Ok(b'\r' | b'\n') => return Err(HeadError::Malformed("invalid HTTP version")),
            Ok(_) if k - line_start >= max_line => return Err(HeadError::RequestLineTooLong),
            Ok(b) => b,
        };
        let ok = match n {
            0..=4 => b == b"HTTP/"[n],
            5 | 7 => b.is_ascii_digit(),
            6 => b == b'.',
            _ => false,
        };
        if !ok {
            return Err(HeadError::Malformed("invalid HTTP version"));
        }
        match n {
            5 => digits[0] = b,
            7 => digits[1] = b,
            _ => {}
        }
    }
    let eol = version_start + 8;
    let end = eol + if buf.get(eol) == Some(&b'\r') { 2 } else { 1 };
    let version = match digits {
        [b'1', b'0'] => 0,
        [b'1', b'1'] => 1,
        _ => return Err(HeadError::VersionNotSupported),
    };
    Ok(Some(RequestLine {
        method: Span::new(line_start, method_end),
        target: Span::new(target_start, target_end),
        version,
        end,
    }))
}

/// The end of the run of bytes in `class` from `from`, stopping at `limit` at the latest.
#[inline]
fn run_of(buf: &[u8], from: usize, limit: usize, class: impl Fn(u8) -> bool) -> usize {
    let mut k = from;
    while let Some(&b) = buf.get(k).filter(|_| k < limit) {
        if !class(b) {
            break;
        }
        k += 1;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits::default()
    }

    fn ok(raw: &[u8]) -> RequestHead {
        match parse_request_head(raw, &lim()) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {:?}", String::from_utf8_lossy(raw), other),
        }
    }

    fn status(raw: &[u8]) -> u16 {
        status_with(raw, &lim())
    }

    fn status_with(raw: &[u8], l: &Limits) -> u16 {
        match parse_request_head(raw, l) {
            Err(e) => e.status(),
            other => panic!(
                "{:?}: expected an error, got {:?}",
                String::from_utf8_lossy(raw),
                other
            ),
        }
    }

    fn partial(raw: &[u8]) {
        assert_eq!(
            parse_request_head(raw, &lim()),
            Ok(None),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\nBODY";
        let h = ok(raw);
        assert_eq!(h.method.get(raw), b"GET");
        assert_eq!(h.method_kind, Method::Get);
        assert_eq!(h.target.get(raw), b"/a?b=c");
        assert_eq!(h.target_form, TargetForm::Origin);
        assert_eq!(h.version, 1);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[0].name.get(raw), b"Host");
        assert_eq!(h.headers[0].value.get(raw), b"example.com");
        assert_eq!(h.headers[1].name.get(raw), b"Accept");
        assert_eq!(h.head_len, raw.len() - 4);
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(h.upgrade, None);
        assert_eq!(h.host.map(|s| s.get(raw)), Some(&b"example.com"[..]));
        assert_eq!(h.header(raw, "accept"), Some(&b"*/*"[..]));
        assert!(!h.has_body());
        assert!(h.is_idempotent());
    }

    #[test]
    fn incomplete_heads_are_none() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for n in 0..raw.len() {
            partial(&raw[..n]);
        }
        ok(raw);
    }

    #[test]
    fn bare_lf_accepted() {
        let raw = b"GET / HTTP/1.1\nHost: a\nX: y\n\n";
        let h = ok(raw);
        assert_eq!(h.head_len, raw.len());
        assert_eq!(h.header(raw, "x"), Some(&b"y"[..]));
        let mixed = b"GET / HTTP/1.1\r\nHost: a\n\r\n";
        assert_eq!(ok(mixed).head_len, mixed.len());
    }

    #[test]
    fn leading_empty_lines_skipped() {
        let raw = b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.method.get(raw), b"GET");
        assert_eq!(h.head_len, raw.len());
        assert_eq!(status(b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn methods() {
        for (m, k) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("TRACE", Method::Trace),
            ("PATCH", Method::Patch),
            ("PROPFIND", Method::Other),
            ("get", Method::Other),
            ("X-Custom!#$%&'*+-.^_`|~", Method::Other),
        ] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            let h = ok(raw.as_bytes());
            assert_eq!(h.method.get(raw.as_bytes()), m.as_bytes());
            assert_eq!(h.method_kind, k, "{m}");
        }
        assert!(Method::Head.is_idempotent());
        assert!(!Method::Post.is_idempotent());
        assert!(!Method::Patch.is_idempotent());
        assert!(ok(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
        // Invalid method tokens.
        for raw in [
            &b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GE\"T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"G\xc3\xa9T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            status(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
            501
        );
    }

    #[test]
    fn targets_byte_exact() {
        for t in [
            "/",
            "/a/b/../c?x=%20&y=%zz",
            "/%7e~?q=a|b{c}",
            "/a;b,c=d",
            "//double//slash",
        ] {
            let raw = format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(ok(raw.as_bytes()).target.get(raw.as_bytes()), t.as_bytes());
        }
        for raw in [
            &b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a b/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET /\rx HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn asterisk_form() {
        let h = ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.target_form, TargetForm::Asterisk);
    }

    #[test]
    fn absolute_form() {
        let raw = b"GET http://Example.COM:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.target_form, TargetForm::Absolute);
        assert_eq!(h.target.get(raw), b"http://Example.COM:8080/p?q");
        assert_eq!(
            h.authority.map(|a| a.get(raw)),
            Some(&b"Example.COM:8080"[..])
        );
        let raw = b"GET HTTPS://h?x HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(ok(raw).authority.map(|a| a.get(raw)), Some(&b"h"[..]));
        let raw = b"GET http://[::1]:80 HTTP/1.0\r\n\r\n";
        assert_eq!(
            ok(raw).authority.map(|a| a.get(raw)),
            Some(&b"[::1]:80"[..])
        );
    }

    #[test]
    fn versions() {
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").version, 0);
        assert_eq!(ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").version, 1);
        for raw in [
            &b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/3.0\r\n",
            b"GET /\r\n",
            b"GET /index.html\n",
        ] {
            assert_eq!(status(raw), 505, "{:?}", String::from_utf8_lossy(raw));
        }
        for raw in [
            &b"GET / HTTP/1.10\r\nHost: a\r\n\r\n"[..],
            b"GET / http/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/11\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.x\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1\r\nHost: a\r\n\r\n",
            b"GET / HTTPS/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / \r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        // A bad version is reported before the line ends when a byte is already wrong.
        assert_eq!(status(b"GET / HTTQ"), 400);
        // But a well-formed unknown version needs its line end to be told from garbage.
        partial(b"GET / HTTP/2.0");
    }

    #[test]
    fn request_line_limit() {
        let l = Limits {
            max_request_line: 20,
            max_header_bytes: 1000,
            max_headers: 10,
        };
        // Exactly 20 bytes of line: accepted.
        let raw = b"GET /123 HTTP/1.1\r\nHost: a\r\n\r\n";
        let line = b"GET /12345 HTTP/1.1";
        assert_eq!(line.len(), 19);
        assert!(parse_request_head(raw, &l).unwrap().is_some());
        let raw20 = b"GET /123456 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(parse_request_head(raw20, &l).unwrap().is_some());
        let raw21 = b"GET /1234567 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(status_with(raw21, &l), 414);
        // 414 decided before the line ends.
        assert_eq!(status_with(b"GET /aaaaaaaaaaaaaaaaaaaaaaaa", &l), 414);
        assert_eq!(parse_request_head(b"GET /aaaaaaaaaaaaa", &l), Ok(None));
    }

    #[test]
    fn header_limits() {
        let l = Limits {
            max_request_line: 100,
            max_header_bytes: 64,
            max_headers: 3,
        };
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(parse_request_head(raw, &l).unwrap().is_some());
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(status_with(raw, &l), 431);
        // Head bigger than 64 bytes: 431 once more than 64 bytes are buffered.
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nA: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 40));
        assert_eq!(status_with(&big, &l), 431);
        // Exactly at the limit: fine.
        let mut exact = b"GET / HTTP/1.1\r\nHost: a\r\nA: ".to_vec();
        exact.extend(std::iter::repeat_n(b'x', 64 - exact.len() - 4));
        exact.extend(b"\r\n\r\n");
        assert_eq!(exact.len(), 64);
        assert!(parse_request_head(&exact, &l).unwrap().is_some());
        exact.insert(30, b'x');
        assert_eq!(status_with(&exact, &l), 431);
        // Many headers above the stack slots.
        let l = Limits {
            max_request_line: 100,
            max_header_bytes: 100_000,
            max_headers: 500,
        };
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..499 {
            many.extend(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(
            parse_request_head(&many, &l)
                .unwrap()
                .unwrap()
                .headers
                .len(),
            500
        );
        many.truncate(many.len() - 2);
        many.extend(b"Y: z\r\n\r\n");
        assert_eq!(status_with(&many, &l), 431);
    }

    #[test]
    fn malformed_fields() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX\t: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\tz\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        // obs-text in values is allowed; OWS trimmed.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: \t caf\xc3\xa9 \t\r\nE:\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.header(raw, "x"), Some(&b"caf\xc3\xa9"[..]));
        assert_eq!(h.header(raw, "e"), Some(&b""[..]));
    }

    #[test]
    fn host_rules() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"), 400);
        assert!(ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").host.is_some());
        assert!(ok(b"GET / HTTP/1.1\r\nHOST: a:80\r\n\r\n").host.is_some());
        assert!(ok(b"GET / HTTP/1.0\r\n\r\n").host.is_none());
        // Absolute-form still needs Host in HTTP/1.1.
        assert_eq!(status(b"GET http://a/ HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn content_length() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.framing, Framing::Length(12));
        assert!(h.has_body());
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").framing,
            Framing::Length(0)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n")
                .framing,
            Framing::Length(u64::MAX)
        );
        for v in [
            "+5",
            "-5",
            "5, 5",
            "5,5",
            "5 5",
            "0x5",
            "",
            "18446744073709551616",
            "99999999999999999999999",
            "5;",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(status(raw.as_bytes()), 400, "{v:?}");
        }
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            400
        );
    }

    #[test]
    fn transfer_encoding() {
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.has_body());
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        let te = |v: &str| {
            status(
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n").as_bytes(),
            )
        };
        assert_eq!(te("chunked, gzip"), 400);
        assert_eq!(te("gzip"), 400);
        assert_eq!(te("identity"), 400);
        assert_eq!(te("chunked, chunked"), 400);
        assert_eq!(te("chunked;a=b"), 400);
        assert_eq!(te("gzip, chunked"), 501);
        assert_eq!(te("x"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"),
            400
        );
        // CL + TE: 400 whatever the order.
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            400
        );
        // HTTP/1.0 with TE: faulty framing.
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: a b\r\n\r\n"),
            400
        );
        let raw =
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Foo, ,keep-alive\r\nConnection: Y\r\n\r\n";
        let h = ok(raw);
        let toks: Vec<&[u8]> = h.connection_tokens.iter().map(|t| t.get(raw)).collect();
        assert_eq!(toks, vec![&b"X-Foo"[..], b"Y"]);
        assert!(h.is_connection_listed(raw, b"x-foo"));
        assert!(!h.is_connection_listed(raw, b"x-bar"));
    }

    #[test]
    fn expect() {
        assert!(
            ok(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n"),
            417
        );
        // HTTP/1.0: ignored.
        let h = ok(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.expect_continue);
    }

    #[test]
    fn upgrade() {
        let raw =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(ok(raw).upgrade.map(|u| u.get(raw)), Some(&b"websocket"[..]));
        // Without the Connection token: not an upgrade request.
        let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(ok(raw).upgrade, None);
        // HTTP/1.0: ignored.
        let raw = b"GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(ok(raw).upgrade, None);
    }

    #[test]
    fn pipelined_head_len() {
        let raw = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = ok(raw);
        let rest = &raw[h.head_len..];
        let h2 = ok(rest);
        assert_eq!(h2.target.get(rest), b"/2");
        assert_eq!(h2.head_len, rest.len());
    }

    /// Every prefix of every sample parses to `Ok(None)` or to the whole sample's verdict.
    #[test]
    fn prefixes_agree_with_whole() {
        let l = Limits {
            max_request_line: 24,
            max_header_bytes: 60,
            max_headers: 3,
        };
        let samples: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n",
            b"GET /a HTTP/1.1\r\nHost: a\r\nX: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"\r\n\r\n\r\nGET / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        ];
        for raw in samples {
            let whole = parse_request_head(raw, &l);
            for n in 0..raw.len() {
                let p = parse_request_head(&raw[..n], &l);
                assert!(
                    p == Ok(None) || p == whole,
                    "{:?} prefix {n}: {p:?} vs {whole:?}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }

    /// The request-line scan as it was before the fast loops, byte by byte: the reference the
    /// property below holds the new one to.
    mod before {
        use super::super::*;

        /// States of the request-line scan.
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum LineState {
            Method,
            Target,
            Version(u8),
        }

        /// Scans the request line at the start of `buf` byte by byte (after skipping empty lines).
        /// `Ok(None)` = need more bytes. The first invalid byte or the limit decides the error, so
        /// the verdict is the same whatever prefix of the line is present. Long on purpose: a
        /// byte-level state machine reads best as the one loop it is.
        pub(super) fn reference_scan(
            buf: &[u8],
            max_line: usize,
        ) -> Result<Option<(Span, Span, u8, usize)>, HeadError> {
            let mut i = 0;
            // Empty lines before the request line (RFC 9112 2.2); they count toward the limit.
            loop {
                match buf.get(i) {
                    None => return Ok(None),
                    Some(b'\n') => i += 1,
                    Some(b'\r') => match buf.get(i + 1) {
                        None => return Ok(None),
                        Some(b'\n') => i += 2,
                        Some(_) => return Err(HeadError::Malformed("bare CR")),
                    },
                    Some(_) => break,
                }
            }
            let method_start = i;
            let mut target_start = 0;
            let mut method_end = 0;
            let mut target_end = 0;
            let mut state = LineState::Method;
            // Version bytes as scanned: "HTTP/" D "." D.
            let mut version = [0u8; 3];
            loop {
                let Some(&b) = buf.get(i) else {
                    return Ok(None);
                };
                let at_eol = match b {
                    b'\n' => Some(1),
                    b'\r' => match buf.get(i + 1) {
                        None => return Ok(None),
                        Some(b'\n') => Some(2),
                        Some(_) => return Err(HeadError::Malformed("bare CR in request line")),
                    },
                    _ => None,
                };
                if let Some(eol_len) = at_eol {
                    return match state {
                        LineState::Method => Err(HeadError::Malformed("malformed request line")),
                        LineState::Target if i == target_start => {
                            Err(HeadError::Malformed("empty request target"))
                        }
                        // "GET /" with no version: the HTTP/0.9 form.
                        LineState::Target => Err(HeadError::VersionNotSupported),
                        LineState::Version(8) => {
                            let line = |v| {
                                let (m, t) = (
                                    Span::new(method_start, method_end),
                                    Span::new(target_start, target_end),
                                );
                                Ok(Some((m, t, v, i + eol_len)))
                            };
                            match (version[0], version[2]) {
                                (b'1', b'0') => line(0),
                                (b'1', b'1') => line(1),
                                _ => Err(HeadError::VersionNotSupported),
                            }
                        }
                        LineState::Version(_) => Err(HeadError::Malformed("invalid HTTP version")),
                    };
                }
                if i - method_start >= max_line {
                    return Err(HeadError::RequestLineTooLong);
                }
                match state {
                    LineState::Method => {
                        if b == b' ' {
                            if i == method_start {
                                return Err(HeadError::Malformed("empty method"));
                            }
                            method_end = i;
                            target_start = i + 1;
                            state = LineState::Target;
                        } else if !is_tchar(b) {
                            return Err(HeadError::Malformed("invalid method"));
                        }
                    }
                    LineState::Target => {
                        if b == b' ' {
                            if i == target_start {
                                return Err(HeadError::Malformed("empty request target"));
                            }
                            target_end = i;
                            state = LineState::Version(0);
                        } else if !(0x21..=0x7e).contains(&b) || b == b'#' {
                            return Err(HeadError::Malformed("invalid byte in request target"));
                        }
                    }
                    LineState::Version(n) => {
                        const PREFIX: &[u8; 5] = b"HTTP/";
                        let ok = match n {
                            0..=4 => b == PREFIX[n as usize],
                            5 | 7 => b.is_ascii_digit(),
                            6 => b == b'.',
                            _ => false,
                        };
                        if !ok {
                            return Err(HeadError::Malformed("invalid HTTP version"));
                        }
                        match n {
                            5 => version[0] = b,
                            6 => version[1] = b,
                            7 => version[2] = b,
                            _ => {}
                        }
                        state = LineState::Version(n + 1);
                    }
                }
                i += 1;
            }
        }
    }

    /// Pieces of request lines, so random concatenations reach every state of the scan.
    const LINE_PIECES: &[&[u8]] = &[
        b"GET",
        b"G(T",
        b" ",
        b"/",
        b"/a?b",
        b"#",
        b"*",
        b"\x7f",
        b"\xc3",
        b"\t",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"HTTP/",
        b"HTTP/1.10",
        b"1",
        b".",
        b"\r\n",
        b"\n",
        b"\r",
        b"x",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 4096,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Same verdict and spans as the byte-by-byte scan, for every line limit.
        #[test]
        fn request_line_scan_agrees_with_before(
            pieces in proptest::collection::vec(proptest::sample::select(LINE_PIECES), 0..10),
            max_line in 1usize..40,
        ) {
            let buf = pieces.concat();
            let ours = scan_request_line(&buf, max_line)
                .map(|l| l.map(|l| (l.method, l.target, l.version, l.end)));
            proptest::prop_assert_eq!(ours, before::reference_scan(&buf, max_line));
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            HeadError::RequestLineTooLong.to_string(),
            "414 request line too long"
        );
        assert_eq!(HeadError::Malformed("x").status(), 400);
        assert_eq!(HeadError::NotImplemented("x").status(), 501);
        assert_eq!(HeadError::VersionNotSupported.status(), 505);
        assert_eq!(HeadError::ExpectationFailed.status(), 417);
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
        assert_eq!(HeadError::HeadTooLarge.status(), 431);
    }
}
