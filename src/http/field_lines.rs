//! The field-line scan shared by the request and response parsers: httparse scans (one
//! pass, SIMD where the CPU has it), then each field's spans are recorded, its name
//! recognised once (`FieldName`) and the lines a forwarded head can copy as they are noted.
//!
//! The grammar and the verdicts are httparse 1.10's with its strict defaults (the unit tests
//! below hold our fields to httparse's own headers on random heads):
//! - a field name is 1*tchar immediately followed by `:` (whitespace before the colon, a
//!   line starting with SP/HTAB (obs-fold), or any other byte: `Name`);
//! - the value is what follows the colon, SP/HTAB trimmed on both sides; it may hold HTAB,
//!   SP, VCHAR and obs-text (0x80-0xFF); any other control byte is `Value`;
//! - a line ends with CRLF or a bare LF; a CR followed by anything else is `Value` (`NewLine`
//!   for the empty line ending the head);
//! - the field after the `max_fields`-th is `TooMany` once its line is complete (so a
//!   malformed extra line is reported as malformed).
//!
//! Running out of bytes anywhere is `Ok(None)`: the verdict never depends on where a read
//! split the head.

use std::cell::Cell;
use std::ops::Deref;

use super::fields::{Field, FieldName, Span};

thread_local! {
    /// The field list of the last head dropped on this thread, reused by the next parse: the
    /// proxy parses a request head and a response head per exchange and drops each before the
    /// next, so one spare saves both allocations (2 malloc/free pairs per request, callgrind).
    static SPARE: Cell<Vec<Field>> = const { Cell::new(Vec::new()) };
}

/// A spare list longer than this (a rare huge head's) is freed rather than kept.
const SPARE_MAX: usize = 128;

/// A head's fields: the list is the thread's spare when there is one, and goes back to be
/// the spare when dropped (or is freed), whoever drops it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldList(Vec<Field>);

impl FieldList {
    /// An empty list, the spare one when there is one.
    fn take() -> FieldList {
        FieldList(SPARE.try_with(Cell::take).unwrap_or_default())
    }
}

impl Deref for FieldList {
    type Target = [Field];
    fn deref(&self) -> &[Field] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a FieldList {
    type Item = &'a Field;
    type IntoIter = std::slice::Iter<'a, Field>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Drop for FieldList {
    fn drop(&mut self) {
        let mut list = std::mem::take(&mut self.0);
        if list.capacity() == 0 || list.capacity() > SPARE_MAX {
            return;
        }
        list.clear();
        // Fails only while the thread's locals are being destroyed: then the list is freed.
        let _ = SPARE.try_with(|s| s.set(list));
    }
}

/// [`parse_field_lines`] into a [`FieldList`]: `Ok(Some((fields, end)))` for a complete head
/// (an incomplete or bad one's list goes back to the spare as it drops).
pub(crate) fn read_field_lines(
    buf: &[u8],
    start: usize,
    max_fields: usize,
) -> Result<Option<(FieldList, usize)>, LinesError> {
    let mut list = FieldList::take();
    let end = parse_field_lines(buf, start, max_fields, &mut list.0)?;
    Ok(end.map(|end| (list, end)))
}

/// Why the field lines of a head were rejected (each parser words its own message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinesError {
    /// More fields than allowed.
    TooMany,
    /// A bad byte in a field name, or no colon right after it.
    Name,
    /// A control byte in a value, or a CR not followed by LF after a field.
    Value,
    /// The CR of the empty line ending the head is not followed by LF.
    NewLine,
}

/// Header slots for the usual head, on the stack; a head with more fields is parsed again
/// with `max_fields` slots (rare: the usual request and response carry 5 to 15).
const USUAL_FIELDS: usize = 24;

/// Scans the field lines of `buf` from `start` (just after the start line) through the empty
/// line that ends the head, appending each field to `out`. `Ok(Some(end))`: the head is
/// complete and `buf[end..]` follows it; `Ok(None)`: more bytes are needed.
///
/// httparse does the scan (its strict grammar, above); this adds what the parsers need of
/// each field: spans into `buf`, the recognised name, whether the line is plain.
pub(crate) fn parse_field_lines(
    buf: &[u8],
    start: usize,
    max_fields: usize,
    out: &mut Vec<Field>,
) -> Result<Option<usize>, LinesError> {
    let mut usual = [httparse::EMPTY_HEADER; USUAL_FIELDS];
    if max_fields <= USUAL_FIELDS {
        return scan(buf, start, &mut usual[..max_fields], out);
    }
    match scan(buf, start, &mut usual, out) {
        Err(LinesError::TooMany) => {
            out.clear();
            let mut many = vec![httparse::EMPTY_HEADER; max_fields];
            scan(buf, start, &mut many, out)
        }
        verdict => verdict,
    }
}

/// One httparse pass over `buf[start..]` with `slots`, its fields appended to `out`.
fn scan<'b>(
    buf: &'b [u8],
    start: usize,
    slots: &mut [httparse::Header<'b>],
    out: &mut Vec<Field>,
) -> Result<Option<usize>, LinesError> {
    let lines = buf.get(start..).unwrap_or(&[]);
    match httparse::parse_headers(lines, slots) {
        Ok(httparse::Status::Complete((n, fields))) => {
            out.extend(fields.iter().map(|h| field(buf, h)));
            Ok(Some(start + n))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(LinesError::TooMany),
        Err(httparse::Error::HeaderValue) => Err(LinesError::Value),
        Err(httparse::Error::NewLine) => Err(LinesError::NewLine),
        // HeaderName, and any other verdict httparse may give a field line.
        Err(_) => Err(LinesError::Name),
    }
}

/// Our view of one field httparse found in `buf`.
fn field(buf: &[u8], h: &httparse::Header<'_>) -> Field {
    let name = Span::of(buf, h.name.as_bytes());
    let value = Span::of(buf, h.value);
    // Exactly `name ": " value CRLF`: nothing trimmed around the value, a CRLF ending.
    let plain = value.start == name.end + 2
        && buf.get(name.end + 1) == Some(&b' ')
        && buf.get(value.end..value.end + 2) == Some(&b"\r\n"[..]);
    Field {
        name,
        value,
        // httparse's own slice: no second bounds check through the span.
        kind: FieldName::classify(h.name.as_bytes()),
        plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A verdict compared: the head's end and each field's name and value spans.
    type Verdict = Result<Option<(usize, Vec<(Span, Span)>)>, LinesError>;

    /// httparse's verdict on the same field lines, in our terms.
    fn reference(buf: &[u8], max: usize) -> Verdict {
        let mut slots = vec![httparse::EMPTY_HEADER; max];
        match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((n, hs))) => Ok(Some((
                n,
                hs.iter()
                    .map(|h| (Span::of(buf, h.name.as_bytes()), Span::of(buf, h.value)))
                    .collect(),
            ))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err(LinesError::TooMany),
            Err(httparse::Error::HeaderName) => Err(LinesError::Name),
            Err(httparse::Error::HeaderValue) => Err(LinesError::Value),
            Err(httparse::Error::NewLine) => Err(LinesError::NewLine),
            Err(e) => panic!("unexpected httparse error {e:?}"),
        }
    }

    fn ours(buf: &[u8], max: usize) -> Verdict {
        let mut out = Vec::new();
        let end = parse_field_lines(buf, 0, max, &mut out)?;
        for f in &out {
            assert_eq!(f.kind, FieldName::classify(f.name.get(buf)));
            let line = &buf[f.name.start..];
            let plain = [f.name.get(buf), b": ", f.value.get(buf), b"\r\n"].concat();
            assert_eq!(
                f.plain,
                line.starts_with(&plain),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        Ok(end.map(|n| (n, out.iter().map(|f| (f.name, f.value)).collect())))
    }

    #[test]
    fn samples_agree_with_httparse() {
        let samples: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\rx",
            b"Host: a\r\n\r\n",
            b"Host:a\n\n",
            b"Host:  a b \t\r\nX:\r\nY: \r\nZ:\t\r\n\r\n",
            b"Host : a\r\n\r\n",
            b" Host: a\r\n\r\n",
            b"X: y\r\n z\r\n\r\n",
            b": y\r\n\r\n",
            b"X: a\x00b\r\n\r\n",
            b"X: a\x7fb\r\n\r\n",
            b"X: a\rb\r\n\r\n",
            b"X: caf\xc3\xa9 long value with\ttabs and more bytes\r\n\r\n",
            b"X: 0123456789abcdef0123456789abcdef\x01\r\n\r\n",
            b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
            b"A: 1\r\nB: 2\r\nC: 3\r\nD",
            b"A: 1\r\nB: 2\r\nC: 3\r\nD : 4\r\n",
            b"X(y): z\r\n\r\n",
            b"NoColon\r\n\r\n",
            b"\rX\r\n\r\n",
        ];
        for raw in samples {
            for n in 0..=raw.len() {
                let part = &raw[..n];
                assert_eq!(
                    ours(part, 3),
                    reference(part, 3),
                    "{:?}",
                    String::from_utf8_lossy(part)
                );
            }
        }
    }

    #[test]
    fn spare_list_is_reused_and_bounded() {
        let mut small = Vec::with_capacity(8);
        small.push(Field::default());
        drop(FieldList(small));
        let again = FieldList::take();
        assert!(again.is_empty());
        assert_eq!(again.0.capacity(), 8, "the spare comes back, emptied");
        assert_eq!(FieldList::take().0.capacity(), 0, "one spare only");
        drop(FieldList(Vec::with_capacity(SPARE_MAX + 1)));
        assert_eq!(FieldList::take().0.capacity(), 0, "a huge list is freed");
        // Through the parsers: a dropped head's list serves the next parse.
        let limits = crate::http::Limits::default();
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        let head = crate::http::parse_request_head(raw, &limits)
            .unwrap()
            .unwrap();
        let capacity = head.headers.0.capacity();
        drop(head);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let resp = crate::http::parse_response_head(raw, false, &limits)
            .unwrap()
            .unwrap();
        assert_eq!(resp.headers.0.capacity(), capacity);
    }

    #[test]
    fn names_recognised_whatever_their_case() {
        for (name, kind) in [
            ("te", FieldName::Te),
            ("VIA", FieldName::Via),
            ("hOsT", FieldName::Host),
            ("Expect", FieldName::Expect),
            ("Upgrade", FieldName::Upgrade),
            ("Trailer", FieldName::Trailer),
            ("Connection", FieldName::Connection),
            ("Keep-Alive", FieldName::KeepAlive),
            ("X-Request-ID", FieldName::XRequestId),
            ("Content-Length", FieldName::ContentLength),
            ("X-Forwarded-For", FieldName::XForwardedFor),
            ("Proxy-Connection", FieldName::ProxyConnection),
            ("Transfer-Encoding", FieldName::TransferEncoding),
            ("x-forwarded-proto", FieldName::XForwardedProto),
            ("Hosts", FieldName::Other),
            ("Content-Lengtx", FieldName::Other),
            ("Transfer_Encoding", FieldName::Other),
            ("X-Forwarded-Prot0", FieldName::Other),
            ("t", FieldName::Other),
        ] {
            assert_eq!(FieldName::classify(name.as_bytes()), kind, "{name}");
        }
    }

    /// Bytes that steer the scan into each of its states.
    const ALPHABET: &[u8] = b"aZ9-_!:: \t\t\r\n\r\n\x00\x01\x7f\x80\xff(\"";

    fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            3 => prop::sample::select(ALPHABET).prop_map(|b| vec![b]),
            1 => prop::sample::select(vec![
                &b"Host: h\r\n"[..],
                b"Content-Length: 5\r\n",
                b"x-forwarded-for:1.2.3.4 \r\n",
                b"X: 0123456789abcdefghij\r\n",
                b"\r\n",
                b"\n",
                b": ",
            ])
            .prop_map(<[u8]>::to_vec),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

        /// Same verdict, same spans, same end as httparse, on every input and field limit.
        #[test]
        fn agrees_with_httparse(buf in head_bytes(), max in 0usize..5) {
            prop_assert_eq!(ours(&buf, max), reference(&buf, max));
        }
    }
}
