//! Incremental, bounded decoder and encoder of the chunked transfer coding (RFC 9112 7.1).
//!
//! The decoder is a byte-level state machine fed whatever bytes arrived: it reports how many
//! input bytes belong to the chunked message (`Progress::consumed`, trailers and the final
//! CRLF included) and hands the chunk data to a callback. The proxy uses it three ways:
//! forwarding a response's `input[..consumed]` unchanged after validation (callback
//! ignored), de-chunking for an HTTP/1.0 client (callback writes the data, trailers are
//! dropped), and re-framing request bodies canonically (`ChunkedReframer`).
//!
//! Strictness (docs/ARCHITECTURE.md): chunk sizes are 1*HEXDIG fitting a u64 (at most 16
//! significant digits); every line ends in CRLF (a bare LF is an error here, unlike in heads:
//! chunk framing is where request smuggling hides); extensions are skipped but must be
//! `;`-introduced and free of CTLs; the size line (with extensions) and the trailer section
//! are bounded; trailer lines must be `token ":" value` without CTLs or obs-fold.

use std::fmt;

/// Bounds of the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Longest chunk-size line, extensions included, CRLF excluded.
    pub max_size_line: usize,
    /// Largest trailer section (all trailer lines and the final CRLF).
    pub max_trailer_bytes: usize,
    /// Largest total of chunk data (0 = unlimited); above it `BodyTooLarge` (413).
    pub max_body: u64,
}

impl Default for ChunkLimits {
    fn default() -> ChunkLimits {
        ChunkLimits {
            max_size_line: 4096,
            max_trailer_bytes: 16384,
            max_body: 0,
        }
    }
}

/// A chunked body that is invalid or over a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk size that is empty, not hex, or followed by junk.
    InvalidSize,
    /// A chunk size that does not fit a u64.
    SizeOverflow,
    /// The size line (with extensions) is longer than `max_size_line`.
    SizeLineTooLong,
    /// An invalid byte in a chunk extension.
    InvalidExtension,
    /// Chunk data not followed by CRLF, or a CR not followed by LF.
    InvalidLineEnd,
    /// The trailer section is larger than `max_trailer_bytes`.
    TrailersTooLarge,
    /// A malformed trailer line.
    InvalidTrailer,
    /// The chunk data exceed `max_body`.
    BodyTooLarge,
}

impl ChunkError {
    /// The status to answer when this happens in a request body (400, or 413 for
    /// `BodyTooLarge`). In a response body the proxy can only cut the client off.
    pub fn status(&self) -> u16 {
        match self {
            ChunkError::BodyTooLarge => 413,
            _ => 400,
        }
    }
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size overflow",
            ChunkError::SizeLineTooLong => "chunk size line too long",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::InvalidLineEnd => "invalid line ending in chunked body",
            ChunkError::TrailersTooLarge => "trailer section too large",
            ChunkError::InvalidTrailer => "invalid trailer field",
            ChunkError::BodyTooLarge => "body too large",
        })
    }
}

impl std::error::Error for ChunkError {}

/// What one `feed` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes that belong to the chunked message (all of them unless `done`).
    pub consumed: usize,
    /// The message ended (last chunk, trailers, final CRLF); bytes after `consumed` belong
    /// to whatever follows (a pipelined message).
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size (`digits` so far, leading zeros not counted).
    Size { any: bool },
    /// After the size: optional BWS, then `;` extensions until CR.
    Ext { seen_semicolon: bool },
    /// Got the CR of the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// Got the CR ending a trailer line.
    TrailerLf,
    /// Got the CR of the final empty line.
    FinalLf,
    /// The message is complete.
    Done,
    /// An error was reported; every later feed repeats it.
    Failed(ChunkError),
}

/// Incremental chunked-body decoder; see the module documentation.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    limits: ChunkLimits,
    state: State,
    /// Size being read, then data bytes left in the current chunk.
    size: u64,
    /// Length of the current size line so far.
    line_len: usize,
    /// Bytes of trailer section so far.
    trailer_len: usize,
    /// Chunk data seen so far.
    body: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> ChunkedDecoder {
        ChunkedDecoder::new(ChunkLimits::default())
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new(limits: ChunkLimits) -> ChunkedDecoder {
        ChunkedDecoder {
            limits,
            state: State::Size { any: false },
            size: 0,
            line_len: 0,
            trailer_len: 0,
            body: 0,
        }
    }

    /// Whether the whole message has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Chunk data bytes seen so far (the decoded body length).
    pub fn body_bytes(&self) -> u64 {
        self.body
    }

    /// Whether the decoder is inside chunk data or between chunks, i.e. has not started the
    /// last chunk (useful to tell "truncated mid-body" apart in logs).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::FinalLf
        )
    }

    /// Feeds `input`; calls `data` with each run of chunk data (never empty). Stops at the
    /// end of the message. After an error, the decoder stays failed.
    pub fn feed(
        &mut self,
        input: &[u8],
        data: &mut impl FnMut(&[u8]),
    ) -> Result<Progress, ChunkError> {
        self.feed_parts(input, data, &mut |_| {})
    }

    /// Like `feed`, also handing `trailer` each byte of the trailer lines (their CRLFs
    /// included, the final empty line not), as they are validated.
    pub fn feed_parts(
        &mut self,
        input: &[u8],
        data: &mut impl FnMut(&[u8]),
        trailer: &mut impl FnMut(u8),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Failed(e) => return Err(e),
                State::Data => {
                    let n = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    data(&input[i..i + n]);
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            let was_line_end = self.state == State::TrailerLf;
            if let Err(e) = self.step(b) {
                self.state = State::Failed(e);
                return Err(e);
            }
            if was_line_end
                || matches!(
                    self.state,
                    State::TrailerName | State::TrailerValue | State::TrailerLf
                )
            {
                trailer(b);
            }
        }
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    /// One byte outside chunk data. One match over the states on purpose: the whole grammar
    /// of the chunk framing is visible at once, as the fuzzer and property tests exercise it.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::Size { any } => {
                self.count_line()?;
                if let Some(d) = hex(b) {
                    if self.size >> 60 != 0 {
                        return Err(ChunkError::SizeOverflow);
                    }
                    self.size = self.size << 4 | u64::from(d);
                    self.state = State::Size { any: true };
                } else if !any {
                    return Err(ChunkError::InvalidSize);
                } else {
                    self.end_of_digits(b)?;
                }
            }
            State::Ext { seen_semicolon } => {
                self.count_line()?;
                match b {
                    b'\r' => self.state = State::SizeLf,
                    b';' => {
                        self.state = State::Ext {
                            seen_semicolon: true,
                        }
                    }
                    b' ' | b'\t' => {}
                    _ if !seen_semicolon => return Err(ChunkError::InvalidSize),
                    b'\n' => return Err(ChunkError::InvalidLineEnd),
                    0x21..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkError::InvalidExtension),
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::InvalidLineEnd);
                }
                self.line_len = 0;
                if self.size == 0 {
                    self.state = State::TrailerStart;
                } else {
                    self.body = self.body.saturating_add(self.size);
                    if self.limits.max_body != 0 && self.body > self.limits.max_body {
                        return Err(ChunkError::BodyTooLarge);
                    }
                    self.state = State::Data;
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::InvalidLineEnd);
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::InvalidLineEnd);
                }
                self.size = 0;
                self.state = State::Size { any: false };
            }
            State::TrailerStart => {
                self.count_trailer()?;
                if b == b'\r' {
                    self.state = State::FinalLf;
                } else if super::fields::is_tchar(b) {
                    self.state = State::TrailerName;
                } else {
                    return Err(ChunkError::InvalidTrailer);
                }
            }
            State::TrailerName => {
                self.count_trailer()?;
                if b == b':' {
                    self.state = State::TrailerValue;
                } else if !super::fields::is_tchar(b) {
                    return Err(ChunkError::InvalidTrailer);
                }
            }
            State::TrailerValue => {
                self.count_trailer()?;
                match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkError::InvalidTrailer),
                }
            }
            State::TrailerLf => {
                self.count_trailer()?;
                if b != b'\n' {
                    return Err(ChunkError::InvalidLineEnd);
                }
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                self.count_trailer()?;
                if b != b'\n' {
                    return Err(ChunkError::InvalidLineEnd);
                }
                self.state = State::Done;
            }
            State::Data | State::Done | State::Failed(_) => {}
        }
        Ok(())
    }

    /// The first non-hex byte after the size digits.
    fn end_of_digits(&mut self, b: u8) -> Result<(), ChunkError> {
        match b {
            b'\r' => self.state = State::SizeLf,
            b';' => {
                self.state = State::Ext {
                    seen_semicolon: true,
                }
            }
            b' ' | b'\t' => {
                self.state = State::Ext {
                    seen_semicolon: false,
                }
            }
            b'\n' => return Err(ChunkError::InvalidLineEnd),
            _ => return Err(ChunkError::InvalidSize),
        }
        Ok(())
    }

    fn count_line(&mut self) -> Result<(), ChunkError> {
        self.line_len += 1;
        // The CR is counted too, hence the +1.
        if self.line_len > self.limits.max_size_line + 1 {
            return Err(ChunkError::SizeLineTooLong);
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > self.limits.max_trailer_bytes {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The last chunk with no trailers: ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The CRLF that follows each chunk's data.
pub const CHUNK_DATA_END: &[u8] = b"\r\n";

/// The size line of a chunk of `len` bytes (`len` > 0), e.g. `1a2b\r\n`, without allocating:
/// returns a buffer and how many of its bytes to send.
pub fn chunk_header(len: usize) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let digits = if len == 0 {
        1
    } else {
        (usize::BITS - len.leading_zeros()).div_ceil(4) as usize
    };
    for (k, slot) in out[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - k))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    (out, digits + 2)
}

/// Appends one chunk (`size CRLF data CRLF`) holding `data` to `out`; nothing for empty
/// `data` (an empty chunk would end the body).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let (h, n) = chunk_header(data.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_DATA_END);
}

/// Trailer fields dropped when re-framing (RFC 9110 6.5.1): framing, routing, request
/// modifiers, authentication, content processing, hop-by-hop, and the fields the proxy sets
/// itself. A recipient merging trailers into the head must not be steered by them.
const FORBIDDEN_TRAILERS: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"trailer",
    b"te",
    b"host",
    b"authorization",
    b"proxy-authorization",
    b"www-authenticate",
    b"proxy-authenticate",
    b"cookie",
    b"set-cookie",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"upgrade",
    b"expect",
    b"max-forwards",
    b"cache-control",
    b"pragma",
    b"range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    b"content-encoding",
    b"content-type",
    b"content-range",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-real-ip",
    b"x-request-id",
];

/// Whether a trailer line (`name: value CRLF`, already validated) may be forwarded.
pub fn trailer_allowed(line: &[u8]) -> bool {
    let name = line.split(|&b| b == b':').next().unwrap_or(line);
    !FORBIDDEN_TRAILERS
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

/// Re-frames a chunked body on its way through (request bodies): the input is validated by
/// the decoder and written out canonically: one chunk per run of data with a lower-case hex
/// size without leading zeros and no extensions, then `0 CRLF`, the allowed trailer lines and
/// the final CRLF. What the sender chose (zeros, extensions, forbidden trailers) never reaches
/// the backend. Output waits in `pending()`; feed again once it is written. Bounded: one feed
/// produces at most its input plus 40 bytes, plus the trailer section at the end (itself
/// bounded by `max_trailer_bytes`).
#[derive(Debug)]
pub struct ChunkedReframer {
    dec: ChunkedDecoder,
    out: Vec<u8>,
    sent: usize,
    /// The trailer line being read.
    line: Vec<u8>,
    /// Trailer lines kept, sent after the last chunk.
    kept: Vec<u8>,
}

impl ChunkedReframer {
    /// A re-framer at the start of a chunked body.
    pub fn new(limits: ChunkLimits) -> ChunkedReframer {
        ChunkedReframer {
            dec: ChunkedDecoder::new(limits),
            out: Vec::new(),
            sent: 0,
            line: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// Validates `input` and appends its canonical form to the pending output; `consumed`
    /// input bytes belong to the body (all unless `done`).
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let (out, line, kept) = (&mut self.out, &mut self.line, &mut self.kept);
        let p = self
            .dec
            .feed_parts(input, &mut |d| encode_chunk(out, d), &mut |b| {
                line.push(b);
                if b == b'\n' {
                    if trailer_allowed(line) {
                        kept.extend_from_slice(line);
                    }
                    line.clear();
                }
            })?;
        if p.done {
            self.out.extend_from_slice(b"0\r\n");
            self.out.append(&mut self.kept);
            self.out.extend_from_slice(CHUNK_DATA_END);
        }
        Ok(p)
    }

    /// Output not written yet.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// `n` bytes of `pending()` were written.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
    }

    /// Whether the whole body has been read (its output may still be pending).
    pub fn is_done(&self) -> bool {
        self.dec.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one feed: (data, progress) or the error.
    fn decode(input: &[u8]) -> Result<(Vec<u8>, Progress), ChunkError> {
        decode_with(input, ChunkLimits::default())
    }

    fn decode_with(input: &[u8], limits: ChunkLimits) -> Result<(Vec<u8>, Progress), ChunkError> {
        let mut d = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let p = d.feed(input, &mut |s| out.extend_from_slice(s))?;
        Ok((out, p))
    }

    #[test]
    fn simple_body() {
        let raw = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        let (out, p) = decode(raw).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(p.consumed, raw.len() - 4);
        assert!(p.done);
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let raw = b"A;name=val;x=\"q s\"\r\n0123456789\r\n1\r\nz\r\n0;e\r\nT: v\r\nU:\r\n\r\n";
        let (whole, p) = decode(raw).unwrap();
        assert_eq!(whole, b"0123456789z");
        assert_eq!(p.consumed, raw.len());
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut total = 0;
        for (k, b) in raw.iter().enumerate() {
            let p = d
                .feed(std::slice::from_ref(b), &mut |s| out.extend_from_slice(s))
                .unwrap();
            total += p.consumed;
            assert_eq!(p.done, k == raw.len() - 1);
        }
        assert_eq!(total, raw.len());
        assert_eq!(out, whole);
        assert!(d.is_done());
        assert_eq!(d.body_bytes(), 11);
        // Feeding after the end consumes nothing.
        assert_eq!(
            d.feed(b"more", &mut |_| {}).unwrap(),
            Progress {
                consumed: 0,
                done: true
            }
        );
    }

    #[test]
    fn incomplete_is_not_done() {
        let raw = b"5\r\nhello\r\n0\r\n\r\n";
        for n in 0..raw.len() {
            let (_, p) = decode(&raw[..n]).unwrap();
            assert!(!p.done);
            assert_eq!(p.consumed, n);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(
            decode(b"00000000000000000000001\r\nx\r\n0\r\n\r\n")
                .unwrap()
                .0,
            b"x"
        );
        assert_eq!(decode(b"fFfF").unwrap().1.consumed, 4);
        // 16 hex digits fit; a 17th significant digit overflows.
        assert!(decode(b"ffffffffffffffff\r\n").is_ok());
        assert_eq!(
            decode(b"10000000000000000\r\n"),
            Err(ChunkError::SizeOverflow)
        );
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x1\r\n",
            b" 1\r\n",
            b"1 2\r\n",
            b"1z\r\n",
            b";ext\r\n",
        ] {
            assert_eq!(
                decode(bad).map(|_| ()),
                Err(ChunkError::InvalidSize),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn line_ends_strict() {
        assert_eq!(decode(b"1\nx\r\n"), Err(ChunkError::InvalidLineEnd));
        assert_eq!(decode(b"1\rx"), Err(ChunkError::InvalidLineEnd));
        assert_eq!(decode(b"1\r\nxy\r\n"), Err(ChunkError::InvalidLineEnd));
        assert_eq!(decode(b"1\r\nx\n"), Err(ChunkError::InvalidLineEnd));
        assert_eq!(decode(b"1\r\nx\r\r"), Err(ChunkError::InvalidLineEnd));
        assert_eq!(decode(b"0\r\n\n"), Err(ChunkError::InvalidTrailer));
        assert_eq!(decode(b"0\r\n\rx"), Err(ChunkError::InvalidLineEnd));
        assert_eq!(decode(b"0\r\nA: b\n"), Err(ChunkError::InvalidTrailer));
        assert_eq!(decode(b"1;a\n"), Err(ChunkError::InvalidLineEnd));
    }

    #[test]
    fn extensions() {
        assert!(decode(b"1 ; a = b\r\nx\r\n0\r\n\r\n").unwrap().1.done);
        assert!(decode(b"1\t;a\r\nx\r\n0\r\n\r\n").unwrap().1.done);
        assert_eq!(decode(b"1 a\r\n"), Err(ChunkError::InvalidSize));
        assert_eq!(decode(b"1;a\x00\r\n"), Err(ChunkError::InvalidExtension));
        assert_eq!(decode(b"1;a\x7f\r\n"), Err(ChunkError::InvalidExtension));
        let l = ChunkLimits {
            max_size_line: 8,
            ..ChunkLimits::default()
        };
        assert!(decode_with(b"1;abcdef\r\nx\r\n", l).is_ok());
        assert_eq!(
            decode_with(b"1;abcdefg\r\n", l),
            Err(ChunkError::SizeLineTooLong)
        );
        assert_eq!(
            decode_with(b"000000001\r\n", l),
            Err(ChunkError::SizeLineTooLong)
        );
    }

    #[test]
    fn trailers() {
        let raw = b"0\r\nExpires: never\r\nX-Sum: abc\t def\r\n\r\n";
        let (out, p) = decode(raw).unwrap();
        assert!(out.is_empty());
        assert!(p.done);
        assert_eq!(p.consumed, raw.len());
        for bad in [
            &b"0\r\nNo colon\r\n\r\n"[..],
            b"0\r\n: v\r\n\r\n",
            b"0\r\nA : v\r\n\r\n",
            b"0\r\nA: v\x00\r\n\r\n",
            b"0\r\nA: v\r\n folded\r\n\r\n",
        ] {
            assert_eq!(
                decode(bad).map(|_| ()),
                Err(ChunkError::InvalidTrailer),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let l = ChunkLimits {
            max_trailer_bytes: 11,
            ..ChunkLimits::default()
        };
        assert!(decode_with(b"0\r\nA: 1234\r\n\r\n", l).unwrap().1.done);
        assert_eq!(
            decode_with(b"0\r\nA: 12345\r\n\r\n", l),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn body_limit() {
        let l = ChunkLimits {
            max_body: 5,
            ..ChunkLimits::default()
        };
        assert!(decode_with(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", l).is_ok());
        // Rejected at the size line, before the data arrives.
        assert_eq!(
            decode_with(b"3\r\nabc\r\n3\r\n", l),
            Err(ChunkError::BodyTooLarge)
        );
        assert_eq!(ChunkError::BodyTooLarge.status(), 413);
        assert_eq!(ChunkError::InvalidSize.status(), 400);
    }

    #[test]
    fn failure_is_sticky() {
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"x", &mut |_| {}).is_err());
        assert_eq!(
            d.feed(b"0\r\n\r\n", &mut |_| {}),
            Err(ChunkError::InvalidSize)
        );
    }

    #[test]
    fn encoder() {
        for (len, want) in [
            (1usize, &b"1\r\n"[..]),
            (15, b"f\r\n"),
            (16, b"10\r\n"),
            (0x1a2b, b"1a2b\r\n"),
            (usize::MAX, b"ffffffffffffffff\r\n"),
            (0, b"0\r\n"),
        ] {
            let (h, n) = chunk_header(len);
            assert_eq!(&h[..n], want, "{len}");
        }
        let mut out = Vec::new();
        encode_chunk(&mut out, b"hello");
        encode_chunk(&mut out, b"");
        encode_chunk(&mut out, &[b'x'; 300]);
        out.extend_from_slice(LAST_CHUNK);
        let (data, p) = decode(&out).unwrap();
        assert!(p.done);
        assert_eq!(&data[..5], b"hello");
        assert_eq!(data.len(), 305);
    }
    /// Re-frames `input` fed in pieces of `step` bytes: (output, consumed, done).
    fn reframe(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut r = ChunkedReframer::new(ChunkLimits::default());
        let (mut out, mut used) = (Vec::new(), 0);
        for piece in input.chunks(step) {
            let p = r.feed(piece)?;
            used += p.consumed;
            out.extend_from_slice(r.pending());
            let n = r.pending().len();
            r.advance(n);
            if p.done {
                return Ok((out, used, true));
            }
        }
        Ok((out, used, r.is_done()))
    }

    #[test]
    fn reframer_canonical_sizes_no_extensions() {
        let input = b"0005;ext=1;x\r\nhello\r\n000A\r\n0123456789\r\n00\r\n\r\nNEXT";
        let (out, used, done) = reframe(input, input.len()).unwrap();
        assert!(done);
        assert_eq!(used, input.len() - 4);
        assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
        // Byte by byte: other chunk boundaries, same data, still canonical.
        let (out, _, done) = reframe(input, 1).unwrap();
        assert!(done);
        assert_eq!(decode(&out).unwrap().0, b"hello0123456789");
        assert!(!out.contains(&b';'));
    }

    #[test]
    fn reframer_drops_forbidden_trailers() {
        let input = b"3\r\nabc\r\n0\r\nContent-Length: 5\r\nX-Checksum: 1\r\nhost: evil\r\nTransfer-Encoding: chunked\r\nAuthorization: x\r\nX-Forwarded-For: 1.2.3.4\r\nServer-Timing: a\r\n\r\n";
        for step in [1, 7, input.len()] {
            let (out, used, done) = reframe(input, step).unwrap();
            assert!(done);
            assert_eq!(used, input.len());
            // Chunk boundaries follow the pieces; the data and the trailers do not.
            assert_eq!(decode(&out).unwrap().0, b"abc", "step {step}");
            assert!(
                out.ends_with(b"\r\n0\r\nX-Checksum: 1\r\nServer-Timing: a\r\n\r\n"),
                "step {step}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn reframer_rejects_what_the_decoder_rejects() {
        assert_eq!(
            reframe(b"5\nhello\r\n0\r\n\r\n", 3).unwrap_err(),
            ChunkError::InvalidLineEnd
        );
        assert_eq!(
            reframe(b"0\r\nContent-Length : 1\r\n\r\n", 100).unwrap_err(),
            ChunkError::InvalidTrailer
        );
    }
}
