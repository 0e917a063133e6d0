//! Field-level helpers shared by the request and response parsers: byte spans into the read
//! buffer, tokens, comma lists, Content-Length / Transfer-Encoding / Host validation.

/// A byte range into the buffer a head was parsed from (zero-copy: heads keep spans, not bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end`.
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The span of `part`, a sub-slice of `buf`.
    pub(crate) fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        Span {
            start,
            end: start + part.len(),
        }
    }

    /// The bytes of this span in `buf` (the buffer it was parsed from); empty if out of range.
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start..self.end).unwrap_or(&[])
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One header field line: name and value spans (value without surrounding whitespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Field {
    /// Field name (a token, case as received).
    pub name: Span,
    /// Field value, leading/trailing SP/HTAB trimmed.
    pub value: Span,
    /// The name, recognised once by the parser (`Other` for every name the proxy forwards
    /// without looking at it), so later passes compare a byte, not the name.
    pub kind: FieldName,
    /// The line is exactly `name ": " value CRLF` in the buffer: a forwarded copy of it is
    /// those bytes as they are (runs of such lines are copied at once).
    pub plain: bool,
}

/// The field names the parsers and the head rewriter act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldName {
    /// Any other name.
    #[default]
    Other,
    /// `Host`
    Host,
    /// `Content-Length`
    ContentLength,
    /// `Transfer-Encoding`
    TransferEncoding,
    /// `Connection`
    Connection,
    /// `Keep-Alive`
    KeepAlive,
    /// `Proxy-Connection`
    ProxyConnection,
    /// `TE`
    Te,
    /// `Trailer`
    Trailer,
    /// `Upgrade`
    Upgrade,
    /// `Expect`
    Expect,
    /// `Via`
    Via,
    /// `X-Forwarded-For`
    XForwardedFor,
    /// `X-Forwarded-Proto`
    XForwardedProto,
    /// `X-Request-Id`
    XRequestId,
}

impl FieldName {
    /// Recognises `name` (a token: the parsers validated it), ASCII case-insensitively. The
    /// length picks the one or two candidates, so most names cost one comparison or none.
    pub fn classify(name: &[u8]) -> FieldName {
        let is = |lower: &[u8]| folded_eq(name, lower);
        match name.len() {
            2 if is(b"te") => FieldName::Te,
            3 if is(b"via") => FieldName::Via,
            4 if is(b"host") => FieldName::Host,
            6 if is(b"expect") => FieldName::Expect,
            7 if is(b"upgrade") => FieldName::Upgrade,
            7 if is(b"trailer") => FieldName::Trailer,
            10 if is(b"connection") => FieldName::Connection,
            10 if is(b"keep-alive") => FieldName::KeepAlive,
            12 if is(b"x-request-id") => FieldName::XRequestId,
            14 if is(b"content-length") => FieldName::ContentLength,
            15 if is(b"x-forwarded-for") => FieldName::XForwardedFor,
            16 if is(b"proxy-connection") => FieldName::ProxyConnection,
            17 if is(b"transfer-encoding") => FieldName::TransferEncoding,
            17 if is(b"x-forwarded-proto") => FieldName::XForwardedProto,
            _ => FieldName::Other,
        }
    }

    /// Hop-by-hop in both directions whatever Connection says (RFC 9110 7.6.1), Upgrade
    /// included (kept only by an upgrading exchange, which the caller decides).
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            FieldName::Connection
                | FieldName::KeepAlive
                | FieldName::ProxyConnection
                | FieldName::Te
                | FieldName::Trailer
                | FieldName::TransferEncoding
                | FieldName::Upgrade
        )
    }
}

/// `token == lower` ignoring ASCII case, for a `token` of tchars (or a field value) and a
/// `lower` of lowercase letters and `-`: OR-ing 0x20 folds the letters, and the only other
/// byte it could map onto `-` is CR, which neither a token nor a value holds. Eight bytes at
/// a time.
pub(crate) fn folded_eq(token: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if token.len() != lower.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let n = token.len();
    if n < 8 {
        return token.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b);
    }
    let mut at = 0;
    while at + 8 <= n {
        if word(token, at) | FOLD != word(lower, at) {
            return false;
        }
        at += 8;
    }
    // The tail, as the last eight bytes (overlapping what was compared).
    at == n || word(token, n - 8) | FOLD == word(lower, n - 8)
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (requests without CL/TE; HEAD/1xx/204/304 responses).
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding (the only coding accepted).
    Chunked,
    /// Responses only: the body runs until the server closes the connection.
    Close,
}

/// Byte classes, one table lookup per byte on the hot paths (`matches!` over a dozen ranges
/// compiles to a chain of compares).
const TCHAR: u8 = 1;
/// RFC 3986 unreserved or sub-delims: what a reg-name holds besides `%HH`.
const HOST: u8 = 2;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        if alnum
            || matches!(c, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+')
            || matches!(c, b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
        {
            t[b] |= TCHAR;
        }
        if alnum
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b','
            )
            || matches!(c, b';' | b'=')
        {
            t[b] |= HOST;
        }
        b += 1;
    }
    t
};

/// RFC 9110 tchar.
#[inline]
pub fn is_tchar(b: u8) -> bool {
    CLASS[usize::from(b)] & TCHAR != 0
}

/// Whether `s` is a non-empty token.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Trims SP/HTAB on both sides.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// What the Connection field lines of a head say, read line by line (both head parsers).
#[derive(Debug, Default)]
pub(crate) struct ConnectionOptions {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
    /// Every other token: names of fields the sender means as hop-by-hop.
    pub(crate) others: Vec<Span>,
}

impl ConnectionOptions {
    /// Reads one Connection field line's `value` (a slice of `buf`); Err when an item is not
    /// a token.
    pub(crate) fn read(&mut self, buf: &[u8], value: &[u8]) -> Result<(), ()> {
        // The usual single token at once (the general loop gives the same answer).
        if folded_eq(value, b"keep-alive") {
            self.keep_alive = true;
            return Ok(());
        }
        if folded_eq(value, b"close") {
            self.close = true;
            return Ok(());
        }
        for item in list_items(value) {
            if !is_token(item) {
                return Err(());
            }
            if item.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if item.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if item.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                // Only tokens that can name a forwardable field: no allocation for the common
                // `Connection: keep-alive` / `close`.
                self.others.push(Span::of(buf, item));
            }
        }
        Ok(())
    }
}

/// The elements of a comma-separated list value (RFC 9110 5.6.1), trimmed, empty elements
/// skipped (the grammar allows them).
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// Whether the comma list `value` contains `token` (ASCII case-insensitive).
pub fn list_contains(value: &[u8], token: &str) -> bool {
    list_items(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a Content-Length value strictly: 1*DIGIT, no sign, no list, no overflow.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Result of reading every Transfer-Encoding field line of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum TransferCoding {
    /// Exactly `chunked` (what we accept).
    Chunked,
    /// The final coding is not chunked, or chunked appears twice, or a token is invalid:
    /// the body length cannot be determined (400 / 502).
    Invalid,
    /// Chunked is final but other codings precede it (e.g. `gzip, chunked`): we do not
    /// implement them (501 for requests).
    Unsupported,
}

/// Classifies the combined Transfer-Encoding list of all `values` (one per field line).
pub fn transfer_coding<'a>(values: impl Iterator<Item = &'a [u8]>) -> TransferCoding {
    let mut count = 0usize;
    let mut chunked_seen = false;
    let mut last_is_chunked = false;
    let mut invalid = false;
    for v in values {
        let mut any = false;
        for item in list_items(v) {
            any = true;
            count += 1;
            if item.eq_ignore_ascii_case(b"chunked") {
                if chunked_seen {
                    invalid = true; // chunked MUST NOT be applied twice
                }
                chunked_seen = true;
                last_is_chunked = true;
            } else {
                // A coding with parameters (`gzip;q=1`) or a bad token is not something we
                // can frame by.
                if !is_token(item) && !item.contains(&b';') {
                    invalid = true;
                }
                last_is_chunked = false;
            }
        }
        if !any {
            invalid = true; // an empty Transfer-Encoding value
        }
    }
    if invalid || !last_is_chunked {
        TransferCoding::Invalid
    } else if count > 1 {
        TransferCoding::Unsupported
    } else {
        TransferCoding::Chunked
    }
}

/// Whether `v` is a valid `uri-host [ ":" port ]` (RFC 9110 7.2 / RFC 3986 3.2.2), host
/// non-empty. `allow_empty` accepts an entirely empty value (a Host field may be empty).
pub fn is_valid_authority(v: &[u8], allow_empty: bool) -> bool {
    let rest = match v {
        [] => return allow_empty,
        [b'[', inner @ ..] => {
            // IP-literal: unreserved / sub-delims / ':' (hex digits, '.' and 'v' are unreserved).
            let Some(close) = inner.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &inner[..close];
            if literal.is_empty() || !literal.iter().all(|&b| b == b':' || is_host_byte(b)) {
                return false;
            }
            &inner[close + 1..]
        }
        _ => {
            // reg-name (IPv4 addresses are reg-names too): up to the first ':'. The usual
            // run of plain host bytes at once, then '%HH' escapes one by one.
            let mut i = v.iter().position(|&b| !is_host_byte(b)).unwrap_or(v.len());
            while let Some(&b) = v.get(i) {
                if is_host_byte(b) {
                    i += 1;
                } else if b == b'%' {
                    let hex = |k: usize| v.get(i + k).is_some_and(u8::is_ascii_hexdigit);
                    if !(hex(1) && hex(2)) {
                        return false;
                    }
                    i += 3;
                } else {
                    break;
                }
            }
            if i == 0 {
                return false; // empty host (`:80`) or a first byte that is no host byte
            }
            &v[i..]
        }
    };
    match rest {
        [] => true,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

fn is_host_byte(b: u8) -> bool {
    CLASS[usize::from(b)] & HOST != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_strict() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"007"), Some(7));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 ",
            b" 1",
            b"1,1",
            b"0x10",
            b"18446744073709551616",
            b"1e3",
        ] {
            assert_eq!(parse_content_length(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn transfer_coding_cases() {
        let tc = |vs: &[&[u8]]| transfer_coding(vs.iter().copied());
        assert_eq!(tc(&[b"chunked"]), TransferCoding::Chunked);
        assert_eq!(tc(&[b"CHUNKED"]), TransferCoding::Chunked);
        assert_eq!(tc(&[b" chunked ,"]), TransferCoding::Chunked);
        assert_eq!(tc(&[b"gzip, chunked"]), TransferCoding::Unsupported);
        assert_eq!(tc(&[b"gzip", b"chunked"]), TransferCoding::Unsupported);
        assert_eq!(tc(&[b"chunked, gzip"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"chunked", b"chunked"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"chunked, chunked"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"identity"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b""]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"chunked;x=1"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"gzip;q=1, chunked"]), TransferCoding::Unsupported);
        assert_eq!(tc(&[b"g(z), chunked"]), TransferCoding::Invalid);
    }

    #[test]
    fn authority() {
        for ok in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1:1",
            b"[::1]:80",
            b"[::1]",
            b"a%20b",
            b"host:",
        ] {
            assert!(is_valid_authority(ok, false), "{:?}", ok);
        }
        for bad in [
            &b""[..],
            b":80",
            b"a b",
            b"user@host",
            b"host:8x",
            b"[::1",
            b"[]",
            b"h/x",
            b"a%2",
            b"\xc3\xa9",
        ] {
            assert!(!is_valid_authority(bad, false), "{:?}", bad);
        }
        assert!(is_valid_authority(b"", true));
    }

    #[test]
    fn lists_and_trim() {
        assert_eq!(trim_ows(b" \ta b\t "), b"a b");
        assert!(list_contains(b"keep-alive, Upgrade", "upgrade"));
        assert!(!list_contains(b"keep-alive, Upgrades", "upgrade"));
        assert_eq!(list_items(b",, a ,b,").count(), 2);
    }
}
