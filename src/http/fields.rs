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

/// RFC 9110 tchar.
#[inline]
pub fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
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
    if v.is_empty() {
        return allow_empty;
    }
    let rest = if v[0] == b'[' {
        let Some(close) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..close];
        if inner.is_empty()
            || !inner.iter().all(|&b| {
                b.is_ascii_hexdigit()
                    || matches!(b, b':' | b'.' | b'v' | b'V')
                    || is_unreserved(b)
                    || is_sub_delim(b)
            })
        {
            return false;
        }
        &v[close + 1..]
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let host = &v[..end];
        if host.is_empty() {
            return false;
        }
        let mut i = 0;
        while i < host.len() {
            let b = host[i];
            if b == b'%' {
                if i + 2 >= host.len()
                    || !host[i + 1].is_ascii_hexdigit()
                    || !host[i + 2].is_ascii_hexdigit()
                {
                    return false;
                }
                i += 3;
                continue;
            }
            if !(is_unreserved(b) || is_sub_delim(b)) {
                return false;
            }
            i += 1;
        }
        &v[end..]
    };
    match rest {
        [] => true,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
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
