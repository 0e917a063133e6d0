//! Property tests of the HTTP pieces that read untrusted bytes: the request-head parser, the
//! response-head parser and the chunked decoder (plus the head rewriter's output).
//!
//! Properties: never panic on arbitrary or HTTP-shaped bytes; the verdict does not depend on
//! how the bytes were split (any prefix gives `Ok(None)` or the whole buffer's verdict; the
//! chunked decoder fed in pieces equals one feed); generated valid messages parse to what was
//! generated; chunked encode -> decode round-trips; rewritten heads parse again.
//!
//! CI runs the default case count (a few seconds). A longer pass: `PROPTEST_CASES=100000
//! cargo test --release --test http_props` (see scripts/fuzz.sh).

use std::net::IpAddr;

use goloadbalancer::http::chunked::{
    ChunkLimits, ChunkedDecoder, ChunkedReframer, chunk_header, encode_chunk, trailer_allowed,
};
use goloadbalancer::http::rewrite::{
    ClientResponse, ConnectionOut, UpstreamRequest, client_framing, write_client_response,
    write_upstream_request,
};
use goloadbalancer::http::{Framing, Limits, parse_request_head, parse_response_head};
use proptest::prelude::*;

/// Pieces HTTP heads are made of, so random concatenations reach deep parser states.
const PIECES: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"CONNECT",
    b"OPTIONS",
    b" ",
    b"  ",
    b"/",
    b"/a?b=c",
    b"*",
    b"http://h:80/x",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.0 101 S",
    b"HTTP/1.1 304 N",
    b"\r\n",
    b"\n",
    b"\r",
    b"Host",
    b"host",
    b": ",
    b":",
    b"h.example",
    b"Content-Length",
    b"Transfer-Encoding",
    b"chunked",
    b"gzip, chunked",
    b"Connection",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"Upgrade",
    b"websocket",
    b"Expect",
    b"100-continue",
    b"0",
    b"5",
    b"-1",
    b"18446744073709551616",
    b",",
    b"\t",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"X-Forwarded-For",
    b"a",
];

/// Pieces chunked bodies are made of.
const CHUNK_PIECES: &[&[u8]] = &[
    b"0", b"1", b"a", b"F", b";", b"=", b" ", b"\r\n", b"\n", b"\r", b"x", b"X: y", b":", b"\t",
];

fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(PIECES).prop_map(|p| p.to_vec()),
            1 => prop::collection::vec(any::<u8>(), 1..4),
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

/// Small limits so the limit paths are hit often.
fn small_limits() -> impl Strategy<Value = Limits> {
    (1usize..64, 1usize..160, 0usize..8).prop_map(|(l, h, n)| Limits {
        max_request_line: l,
        max_header_bytes: h,
        max_headers: n,
    })
}

fn any_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![Just(Limits::default()), small_limits()]
}

/// Every prefix of `buf` gives `Ok(None)` or the same verdict as the whole buffer.
fn check_request_prefixes(buf: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let whole = parse_request_head(buf, limits);
    if let Ok(Some(h)) = &whole {
        prop_assert!(h.head_len <= buf.len());
        for f in &h.headers {
            prop_assert!(f.name.end <= h.head_len && f.value.end <= h.head_len);
            prop_assert!(!f.name.is_empty());
        }
        prop_assert!(h.target.end <= h.head_len && !h.target.is_empty());
        // Bytes after the head never change the verdict.
        let mut longer = buf[..h.head_len].to_vec();
        longer.extend_from_slice(b"GARBAGE\x00\r\n");
        prop_assert_eq!(&parse_request_head(&longer, limits), &whole);
    }
    for n in 0..buf.len() {
        let p = parse_request_head(&buf[..n], limits);
        prop_assert!(
            p == Ok(None) || p == whole,
            "prefix {} of {:?}: {:?} vs whole {:?}",
            n,
            String::from_utf8_lossy(buf),
            p,
            whole
        );
    }
    Ok(())
}

fn check_response_prefixes(
    buf: &[u8],
    head_request: bool,
    limits: &Limits,
) -> Result<(), TestCaseError> {
    let whole = parse_response_head(buf, head_request, limits);
    if let Ok(Some(h)) = &whole {
        prop_assert!(h.head_len <= buf.len());
        prop_assert!((100..=599).contains(&h.status));
        prop_assert!(h.reason.end <= h.head_len);
        for f in &h.headers {
            prop_assert!(f.name.end <= h.head_len && f.value.end <= h.head_len);
        }
    }
    for n in 0..buf.len() {
        let p = parse_response_head(&buf[..n], head_request, limits);
        prop_assert!(
            p == Ok(None) || p == whole,
            "prefix {} of {:?}: {:?} vs whole {:?}",
            n,
            String::from_utf8_lossy(buf),
            p,
            whole
        );
    }
    Ok(())
}

/// Feeds `input` to a fresh decoder in pieces cut at `cuts`; returns (data, consumed, done)
/// or the error.
fn feed_split(
    input: &[u8],
    cuts: &[usize],
    limits: ChunkLimits,
) -> Result<(Vec<u8>, usize, bool), goloadbalancer::http::ChunkError> {
    let mut d = ChunkedDecoder::new(limits);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut consumed = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    for p in points {
        if p < pos {
            continue;
        }
        let prog = d.feed(&input[pos..p], &mut |s| out.extend_from_slice(s))?;
        consumed += prog.consumed;
        if prog.done {
            return Ok((out, consumed, true));
        }
        pos = p;
    }
    Ok((out, consumed, false))
}

/// Re-frames `input` in pieces cut at `cuts`, writing everything out after each feed;
/// returns (output, consumed, done) or the error.
fn reframe_split(
    input: &[u8],
    cuts: &[usize],
) -> Result<(Vec<u8>, usize, bool), goloadbalancer::http::ChunkError> {
    let mut r = ChunkedReframer::new(ChunkLimits::default());
    let (mut out, mut pos, mut consumed) = (Vec::new(), 0, 0);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    for p in points {
        if p < pos {
            continue;
        }
        let prog = r.feed(&input[pos..p])?;
        consumed += prog.consumed;
        out.extend_from_slice(r.pending());
        let n = r.pending().len();
        r.advance(n);
        if prog.done {
            return Ok((out, consumed, true));
        }
        pos = p;
    }
    Ok((out, consumed, false))
}

/// Splits canonical chunked output into (data, trailer lines); fails on a size line with a
/// leading zero, an upper-case digit or an extension.
fn canonical_parts(mut out: &[u8]) -> Result<(Vec<u8>, Vec<String>), String> {
    let mut data = Vec::new();
    loop {
        let end = out
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("no size line end")?;
        let size = std::str::from_utf8(&out[..end]).map_err(|e| e.to_string())?;
        let canonical = size == "0"
            || (!size.starts_with('0')
                && size
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if !canonical {
            return Err(format!("size line {size:?}"));
        }
        let n = usize::from_str_radix(size, 16).map_err(|e| e.to_string())?;
        out = &out[end + 2..];
        if n == 0 {
            break;
        }
        data.extend_from_slice(&out[..n]);
        out = &out[n + 2..];
    }
    let text = String::from_utf8_lossy(out).into_owned();
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_string).collect();
    // "a\r\nb\r\n\r\n" splits into a, b, "", "".
    if lines.len() < 2 || lines.pop().as_deref() != Some("") || lines.pop().as_deref() != Some("") {
        return Err(format!("trailer section {text:?}"));
    }
    Ok((data, lines))
}

/// A valid header field name and value.
fn field() -> impl Strategy<Value = (String, String)> {
    ("[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,12}", "[ -~]{0,20}")
        .prop_filter("not a framing/host/connection field", |(n, _)| {
            let l = n.to_ascii_lowercase();
            !matches!(
                l.as_str(),
                "host"
                    | "content-length"
                    | "transfer-encoding"
                    | "connection"
                    | "expect"
                    | "upgrade"
            )
        })
        .prop_map(|(n, v)| (n, v.trim_matches([' ', '\t']).to_string()))
}

#[derive(Debug, Clone)]
struct GenRequest {
    method: String,
    target: String,
    version: u8,
    host: String,
    fields: Vec<(String, String)>,
    body: Option<u64>,
    chunked: bool,
    close: bool,
    bare_lf: bool,
}

impl GenRequest {
    fn bytes(&self) -> Vec<u8> {
        let eol = if self.bare_lf { "\n" } else { "\r\n" };
        let mut s = format!(
            "{} {} HTTP/1.{}{eol}Host: {}{eol}",
            self.method, self.target, self.version, self.host
        );
        for (n, v) in &self.fields {
            s.push_str(&format!("{n}: {v}{eol}"));
        }
        if let Some(n) = self.body {
            s.push_str(&format!("Content-Length: {n}{eol}"));
        }
        if self.chunked {
            s.push_str(&format!("Transfer-Encoding: chunked{eol}"));
        }
        if self.close {
            s.push_str(&format!("Connection: close{eol}"));
        }
        s.push_str(eol);
        s.into_bytes()
    }
}

fn gen_request() -> impl Strategy<Value = GenRequest> {
    (
        "[A-Z]{1,8}",
        prop_oneof![
            "/[!$&'()*+,;=:@/?a-zA-Z0-9._~%-]{0,40}",
            "http://[a-z]{1,10}(:[0-9]{1,5})?(/[a-z0-9/?=&]{0,20})?",
        ],
        0u8..2,
        "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        prop::collection::vec(field(), 0..8),
        prop_oneof![Just(None), (0u64..u64::MAX).prop_map(Some)],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_filter("CONNECT is 501", |t| t.0 != "CONNECT")
        .prop_map(
            |(method, target, version, host, fields, body, chunked, close, bare_lf)| GenRequest {
                method,
                target,
                version,
                host,
                fields,
                body: if chunked && version == 1 { None } else { body },
                chunked: chunked && version == 1,
                close,
                bare_lf,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn request_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..200), limits in any_limits()) {
        check_request_prefixes(&buf, &limits)?;
    }

    #[test]
    fn request_http_shaped(buf in http_ish(), limits in any_limits()) {
        check_request_prefixes(&buf, &limits)?;
    }

    #[test]
    fn request_generated_valid(r in gen_request(), limits in any_limits(), junk in prop::collection::vec(any::<u8>(), 0..3)) {
        let raw = r.bytes();
        check_request_prefixes(&raw, &limits)?;
        let big = Limits { max_request_line: 1 << 16, max_header_bytes: 1 << 16, max_headers: 64 };
        let h = match parse_request_head(&raw, &big) {
            Ok(Some(h)) => h,
            other => return Err(TestCaseError::fail(format!("{:?}: {:?}", String::from_utf8_lossy(&raw), other))),
        };
        prop_assert_eq!(h.method.get(&raw), r.method.as_bytes());
        prop_assert_eq!(h.target.get(&raw), r.target.as_bytes());
        prop_assert_eq!(h.version, r.version);
        prop_assert_eq!(h.head_len, raw.len());
        prop_assert_eq!(h.host.map(|s| s.get(&raw)), Some(r.host.as_bytes()));
        let extra = usize::from(r.body.is_some()) + usize::from(r.chunked) + usize::from(r.close);
        prop_assert_eq!(h.headers.len(), 1 + r.fields.len() + extra);
        for (f, (n, v)) in h.headers[1..].iter().zip(&r.fields) {
            prop_assert_eq!(f.name.get(&raw), n.as_bytes());
            prop_assert_eq!(f.value.get(&raw), v.as_bytes());
        }
        let want = if r.chunked { Framing::Chunked } else { r.body.map_or(Framing::None, Framing::Length) };
        prop_assert_eq!(h.framing, want);
        prop_assert_eq!(h.keep_alive, r.version == 1 && !r.close);
        // A pipelined continuation does not change the head.
        let mut more = raw.clone();
        more.extend_from_slice(&junk);
        let h2 = parse_request_head(&more, &big).unwrap().unwrap();
        prop_assert_eq!(h2, h.clone());

        // The rewritten head parses again, keeps the target, and has no hop-by-hop fields.
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut out = Vec::new();
        write_upstream_request(&mut out, &h, &raw, &UpstreamRequest {
            client_ip: ip, proto: "http", framing: h.framing, connection: ConnectionOut::Close,
            default_host: None, via: None, request_id: None,
        });
        let u = match parse_request_head(&out, &big) {
            Ok(Some(u)) => u,
            other => return Err(TestCaseError::fail(format!("rewritten {:?}: {:?}", String::from_utf8_lossy(&out), other))),
        };
        prop_assert_eq!(u.target.get(&out), r.target.as_bytes());
        prop_assert_eq!(u.version, 1);
        prop_assert_eq!(u.framing, h.framing);
        prop_assert!(!u.keep_alive);
        prop_assert!(!out.windows(2).any(|w| w == b"\n\n"));
        prop_assert!(out.iter().enumerate().all(|(i, &b)| b != b'\n' || (i > 0 && out[i - 1] == b'\r')));
        for hop in ["keep-alive", "te", "trailer", "proxy-connection", "upgrade"] {
            prop_assert!(u.header(&out, hop).is_none());
        }
        let xff = u.headers.iter().rev().find(|f| f.name.get(&out).eq_ignore_ascii_case(b"x-forwarded-for")).unwrap();
        prop_assert!(xff.value.get(&out).ends_with(b"192.0.2.7"));
        prop_assert_eq!(u.header(&out, "x-forwarded-proto"), Some(&b"http"[..]));
    }

    #[test]
    fn response_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..200), head in any::<bool>(), limits in any_limits()) {
        check_response_prefixes(&buf, head, &limits)?;
    }

    #[test]
    fn response_http_shaped(buf in http_ish(), head in any::<bool>(), limits in any_limits()) {
        check_response_prefixes(&buf, head, &limits)?;
    }

    #[test]
    fn response_generated_valid(
        status in 100u16..600,
        reason in "[ -~]{0,20}",
        fields in prop::collection::vec(field(), 0..8),
        framing in 0u8..3,
        len in 0u64..1_000_000,
        head in any::<bool>(),
        client_version in 0u8..2,
    ) {
        let mut s = format!("HTTP/1.1 {status} {reason}\r\n");
        for (n, v) in &fields {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        match framing {
            0 => s.push_str(&format!("Content-Length: {len}\r\n")),
            1 => s.push_str("Transfer-Encoding: chunked\r\n"),
            _ => {}
        }
        s.push_str("\r\n");
        let raw = s.into_bytes();
        check_response_prefixes(&raw, head, &Limits::default())?;
        let h = parse_response_head(&raw, head, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(h.status, status);
        prop_assert_eq!(h.head_len, raw.len());
        prop_assert_eq!(h.reason.get(&raw), reason.as_bytes());
        let no_body = head || (100..200).contains(&status) || status == 204 || status == 304;
        let want = if no_body { Framing::None } else {
            match framing { 0 => Framing::Length(len), 1 => Framing::Chunked, _ => Framing::Close }
        };
        prop_assert_eq!(h.framing, want);
        let mut out = Vec::new();
        let cf = client_framing(&h, client_version);
        if client_version == 0 {
            prop_assert_ne!(cf, Framing::Chunked);
        }
        write_client_response(&mut out, &h, &raw, &ClientResponse { framing: cf, connection: ConnectionOut::Close, request_id: None });
        let again = parse_response_head(&out, head, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(again.status, status);
        if !no_body {
            prop_assert_eq!(again.framing, cf);
        }
    }

    #[test]
    fn chunked_arbitrary_bytes_split_invariant(
        input in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(prop::sample::select(CHUNK_PIECES), 0..60)
                .prop_map(|v| v.concat()),
        ],
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        small in any::<bool>(),
    ) {
        let limits = if small {
            ChunkLimits { max_size_line: 6, max_trailer_bytes: 12, max_body: 20 }
        } else {
            ChunkLimits::default()
        };
        let whole = feed_split(&input, &[], limits);
        let split = feed_split(&input, &cuts, limits);
        prop_assert_eq!(&split, &whole);
        if let Ok((data, consumed, _)) = whole {
            prop_assert!(consumed <= input.len());
            prop_assert!(data.len() <= consumed);
        }
    }

    #[test]
    fn chunked_reframe_is_canonical_and_drops_forbidden_trailers(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..6),
        upper in any::<bool>(),
        zeros in 0usize..4,
        ext in prop::option::of("[a-z]{1,5}(=[a-z0-9]{1,5})?"),
        trailers in prop::collection::vec(prop_oneof![
            field(),
            (prop::sample::select(&["Content-Length", "HOST", "transfer-encoding", "Authorization", "Cookie", "X-Forwarded-For"][..]), "[ -~]{0,10}")
                .prop_map(|(n, v)| (n.to_string(), v)),
        ], 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        tail in prop::collection::vec(any::<u8>(), 0..10),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for c in &chunks {
            let (h, n) = chunk_header(c.len());
            let mut size = "0".repeat(zeros).into_bytes();
            size.extend_from_slice(&h[..n - 2]);
            if upper {
                size.make_ascii_uppercase();
            }
            wire.extend_from_slice(&size);
            if let Some(e) = &ext {
                wire.push(b';');
                wire.extend_from_slice(e.as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
            want.extend_from_slice(c);
        }
        wire.extend_from_slice(b"0\r\n");
        let mut kept = Vec::new();
        for (n, v) in &trailers {
            let line = format!("{n}: {v}");
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(b"\r\n");
            if trailer_allowed(line.as_bytes()) {
                kept.push(line);
            }
        }
        wire.extend_from_slice(b"\r\n");
        let msg_len = wire.len();
        wire.extend_from_slice(&tail);
        let (out, consumed, done) = reframe_split(&wire, &cuts).unwrap();
        prop_assert!(done);
        prop_assert_eq!(consumed, msg_len);
        let (data, lines) = canonical_parts(&out).map_err(TestCaseError::fail)?;
        prop_assert_eq!(data, want);
        prop_assert_eq!(lines, kept);
    }

    #[test]
    fn chunked_reframe_accepts_exactly_what_the_decoder_accepts(
        input in prop::collection::vec(prop::sample::select(CHUNK_PIECES), 0..60)
            .prop_map(|v| v.concat()),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let decoded = feed_split(&input, &[], ChunkLimits::default());
        match reframe_split(&input, &cuts) {
            Err(e) => prop_assert_eq!(decoded, Err(e)),
            Ok((out, consumed, done)) => {
                let (data, c2, d2) = decoded.unwrap();
                prop_assert_eq!((consumed, done), (c2, d2));
                if done {
                    let (again, _) = canonical_parts(&out).map_err(TestCaseError::fail)?;
                    prop_assert_eq!(again, data);
                }
            }
        }
    }

    #[test]
    fn chunked_round_trip(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
        upper in any::<bool>(),
        zeros in 0usize..4,
        ext in prop::option::of("[a-z]{1,5}(=[a-z0-9]{1,5})?"),
        trailers in prop::collection::vec(field(), 0..3),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        tail in prop::collection::vec(any::<u8>(), 0..10),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for c in &chunks {
            let (h, n) = chunk_header(c.len());
            let mut size = "0".repeat(zeros).into_bytes();
            size.extend_from_slice(&h[..n - 2]);
            if upper {
                size.make_ascii_uppercase();
            }
            wire.extend_from_slice(&size);
            if let Some(e) = &ext {
                wire.push(b';');
                wire.extend_from_slice(e.as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
            want.extend_from_slice(c);
        }
        wire.extend_from_slice(b"0\r\n");
        for (n, v) in &trailers {
            wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        let msg_len = wire.len();
        wire.extend_from_slice(&tail);
        let (data, consumed, done) = feed_split(&wire, &cuts, ChunkLimits::default()).unwrap();
        prop_assert!(done);
        prop_assert_eq!(consumed, msg_len);
        prop_assert_eq!(&data, &want);

        // The plain encoder's output decodes too.
        let mut enc = Vec::new();
        for c in &chunks {
            encode_chunk(&mut enc, c);
        }
        enc.extend_from_slice(goloadbalancer::http::chunked::LAST_CHUNK);
        let (data, consumed, done) = feed_split(&enc, &cuts, ChunkLimits::default()).unwrap();
        prop_assert!(done);
        prop_assert_eq!(consumed, enc.len());
        prop_assert_eq!(data, want);
    }
}
