//! HTTP/1.1 head handling for the proxy: parse a request or response head, decide its framing,
//! and write the head forwarded to the other side (hop-by-hop fields removed both ways,
//! X-Forwarded-For/Proto added). Interim: moves to `crate::http` as its pieces land.

use std::io::Write;
use std::mem::MaybeUninit;
use std::net::IpAddr;

use super::buffer::Buf;

/// Most header fields any head may carry before the configured limit is applied.
const MAX_HEADERS_HARD: usize = 512;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Limits applied to request heads.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest request line (414).
    pub max_request_line: usize,
    /// Largest head (431).
    pub max_header_bytes: usize,
    /// Most fields (431).
    pub max_headers: usize,
    /// Largest body, 0 = unlimited (413).
    pub max_body_bytes: u64,
}

/// What the proxy needs to know about a parsed request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Bytes of the head, final empty line included.
    pub head_len: usize,
    /// HTTP/1.x minor version.
    pub minor: u8,
    /// HEAD request: the response has no body.
    pub is_head: bool,
    /// Safe to send again after a failure (RFC 9110 idempotent method).
    pub idempotent: bool,
    /// Body framing.
    pub framing: Framing,
    /// Whether the client wants the connection kept after the response.
    pub keep_alive: bool,
    /// Asks for a protocol upgrade (Upgrade + Connection: upgrade).
    pub upgrade: bool,
}

/// What the proxy needs to know about a parsed response head.
#[derive(Clone, Debug)]
pub struct Response {
    /// Bytes of the head.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// Body framing (given the request method).
    pub framing: Framing,
    /// Whether the upstream connection may be reused after this response.
    pub keep_alive: bool,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn named_by_connection(connection: &[&[u8]], name: &str) -> bool {
    connection.iter().any(|v| has_token(v, name))
}

/// Strict Content-Length: digits only, no sign, no list, no overflow.
fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Transfer-Encoding must be exactly a final `chunked` (no other codings are supported).
fn te_is_chunked(values: &[&[u8]]) -> bool {
    let mut codings = values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii());
    matches!((codings.next(), codings.next()), (Some(c), None) if c.eq_ignore_ascii_case(b"chunked"))
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete. `Err(status)`: the
/// status to answer with before closing.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<Request>, u16> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_HARD];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let line_end = buf.iter().position(|&b| b == b'\n');
            if line_end.unwrap_or(buf.len()) > limits.max_request_line {
                return Err(414);
            }
            if buf.len() > limits.max_header_bytes {
                return Err(431);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(httparse::Error::Version) => return Err(505),
        Err(_) => {
            let line_end = buf.iter().position(|&b| b == b'\n');
            if line_end.is_none_or(|e| e > limits.max_request_line) {
                return Err(414);
            }
            return Err(400);
        }
    };
    let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(n);
    if line_len > limits.max_request_line {
        return Err(414);
    }
    if n > limits.max_header_bytes {
        return Err(431);
    }
    if req.headers.len() > limits.max_headers {
        return Err(431);
    }
    let method = req.method.unwrap_or("");
    let minor = req.version.unwrap_or(1);
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut te: Vec<&[u8]> = Vec::new();
    let mut connection: Vec<&[u8]> = Vec::new();
    let mut has_upgrade = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value).ok_or(400u16)?;
            if content_length.is_some_and(|c| c != v) {
                return Err(400);
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            connection.push(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            has_upgrade = true;
        }
    }
    if minor == 1 && hosts != 1 || hosts > 1 {
        return Err(400);
    }
    let framing = if !te.is_empty() {
        if content_length.is_some() || minor == 0 || !te_is_chunked(&te) {
            return Err(400);
        }
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    if limits.max_body_bytes > 0
        && let Framing::Length(n) = framing
        && n > limits.max_body_bytes
    {
        return Err(413);
    }
    let close = connection.iter().any(|v| has_token(v, "close"));
    let keep_alive = if minor == 0 {
        !close && connection.iter().any(|v| has_token(v, "keep-alive"))
    } else {
        !close
    };
    let upgrade = minor == 1 && has_upgrade && connection.iter().any(|v| has_token(v, "upgrade"));
    Ok(Some(Request {
        head_len: n,
        minor,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        framing,
        keep_alive,
        upgrade,
    }))
}

/// Writes the head forwarded upstream for the request at the start of `buf` (already parsed
/// as `req`): request line as HTTP/1.1 with the target byte-exact, hop-by-hop fields removed,
/// X-Forwarded-For appended, X-Forwarded-Proto set.
pub fn write_request(buf: &[u8], req: &Request, client: IpAddr, out: &mut Vec<u8>) {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_HARD];
    let mut r = httparse::Request::new(&mut []);
    if r.parse_with_uninit_headers(&buf[..req.head_len], &mut headers)
        .is_err()
    {
        return;
    }
    let target = r.path.unwrap_or("/");
    let _ = write!(out, "{} {} HTTP/1.1\r\n", r.method.unwrap_or("GET"), target);
    let connection: Vec<&[u8]> = r
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    // Absolute-form: the target's authority is the Host sent upstream.
    let authority = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""));
    let mut xff: Option<Vec<u8>> = None;
    let mut host_written = false;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") && req.upgrade {
            // Kept: the upgrade is end-to-end once the backend agrees.
        } else if is_hop_by_hop(name)
            || named_by_connection(&connection, name)
            || name.eq_ignore_ascii_case("x-forwarded-proto")
        {
            continue;
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            let v = xff.get_or_insert_with(Vec::new);
            if !v.is_empty() {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(h.value.trim_ascii());
            continue;
        } else if name.eq_ignore_ascii_case("host") {
            host_written = true;
            if let Some(a) = authority {
                let _ = write!(out, "{}: {}\r\n", name, a);
                continue;
            }
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !host_written {
        let _ = write!(out, "Host: {}\r\n", authority.unwrap_or(""));
    }
    match xff {
        Some(v) if !v.is_empty() => {
            out.extend_from_slice(b"X-Forwarded-For: ");
            out.extend_from_slice(&v);
            let _ = write!(out, ", {client}\r\n");
        }
        _ => {
            let _ = write!(out, "X-Forwarded-For: {client}\r\n");
        }
    }
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    if req.framing == Framing::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if req.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head; `Err(())` = broken (502). `head_request`: the request was HEAD.
pub fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<Response>, ()> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_HARD];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // Heads larger than a buffer are not accepted from backends either.
            return if buf.len() >= 64 * 1024 {
                Err(())
            } else {
                Ok(None)
            };
        }
        Err(_) => return Err(()),
    };
    let status = resp.code.ok_or(())?;
    if !(100..=999).contains(&status) {
        return Err(());
    }
    let minor = resp.version.unwrap_or(1);
    let mut content_length: Option<u64> = None;
    let mut te: Vec<&[u8]> = Vec::new();
    let mut close = false;
    let mut ka = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value).ok_or(())?;
            if content_length.is_some_and(|c| c != v) {
                return Err(());
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
            ka |= has_token(h.value, "keep-alive");
        }
    }
    let no_body = head_request || status < 200 || status == 204 || status == 304;
    let mut keep_alive = if minor == 0 { ka && !close } else { !close };
    let framing = if no_body {
        Framing::None
    } else if !te.is_empty() {
        if te_is_chunked(&te) {
            if content_length.is_some() {
                keep_alive = false;
            }
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some(Response {
        head_len: n,
        status,
        framing,
        keep_alive,
    }))
}

/// How the response head is framed towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFraming {
    /// As upstream sent it (Content-Length, chunked, or none).
    Same,
    /// Chunked upstream, de-chunked for an HTTP/1.0 client (close-delimited).
    Dechunk,
}

/// Writes the response head for the client: status line as received (version HTTP/1.1),
/// hop-by-hop fields removed, framing and Connection fields set by the proxy.
pub fn write_response(
    buf: &[u8],
    resp: &Response,
    framing: ClientFraming,
    connection: &str,
    out: &mut Buf,
) {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_HARD];
    let mut r = httparse::Response::new(&mut []);
    if httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, &buf[..resp.head_len], &mut headers)
        .is_err()
    {
        return;
    }
    let mut scratch = Vec::with_capacity(resp.head_len + 64);
    let _ = write!(
        scratch,
        "HTTP/1.1 {} {}\r\n",
        resp.status,
        r.reason.unwrap_or("")
    );
    let conn_values: Vec<&[u8]> = r
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    let upgrading = resp.status == 101;
    for h in r.headers.iter() {
        if upgrading && h.name.eq_ignore_ascii_case("upgrade") {
            // Kept for 101: the client must see which protocol was chosen.
        } else if is_hop_by_hop(h.name) || named_by_connection(&conn_values, h.name) {
            continue;
        }
        if framing == ClientFraming::Dechunk && h.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        scratch.extend_from_slice(h.name.as_bytes());
        scratch.extend_from_slice(b": ");
        scratch.extend_from_slice(h.value);
        scratch.extend_from_slice(b"\r\n");
    }
    if resp.framing == Framing::Chunked && framing == ClientFraming::Same {
        scratch.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !connection.is_empty() {
        let _ = write!(scratch, "Connection: {connection}\r\n");
    }
    scratch.extend_from_slice(b"\r\n");
    push_all(out, &scratch);
}

/// Appends all of `bytes`, growing the buffer when a head is larger than one buffer.
pub fn push_all(out: &mut Buf, bytes: &[u8]) {
    if out.room() < bytes.len() {
        out.grow(out.len() + bytes.len());
    }
    out.push(bytes);
}

/// A canned response with a small text body.
pub fn simple(status: u16, close: bool) -> Vec<u8> {
    let reason = reason(status);
    let body = format!("{status} {reason}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
    )
    .into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Incremental chunked-body scanner: walks the chunk framing (sizes, data, trailers) so the
/// proxy knows where a message ends, optionally handing out the data bytes (to de-chunk).
#[derive(Clone, Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
    line: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// Most bytes a chunk-size line or trailer line may take.
const MAX_CHUNK_LINE: u32 = 4096;

impl Chunked {
    /// Whether the final chunk and trailers were seen.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `input`; returns how many bytes belong to the message (stops at its end) or an
    /// error for invalid framing. `on_data` receives the chunk data bytes.
    pub fn feed(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<usize, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size => {
                    let d = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b';' | b' ' | b'\t' if self.digits > 0 => {
                            self.state = Ext;
                            i += 1;
                            continue;
                        }
                        b'\r' if self.digits > 0 => {
                            self.state = SizeLf;
                            i += 1;
                            continue;
                        }
                        _ => return Err(()),
                    };
                    if self.digits >= 15 {
                        return Err(());
                    }
                    self.size = self.size * 16 + d as u64;
                    self.digits += 1;
                }
                Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(());
                    }
                    match b {
                        b'\r' => self.state = SizeLf,
                        b'\n' => return Err(()),
                        0..=8 | 10..=31 | 127 => return Err(()),
                        _ => {}
                    }
                }
                SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.digits = 0;
                    self.line = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let n = ((input.len() - i) as u64).min(self.size) as usize;
                    on_data(&input[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Size;
                }
                TrailerStart => match b {
                    b'\r' => self.state = FinalLf,
                    b'\n' => return Err(()),
                    _ => {
                        self.line = 1;
                        self.state = Trailer;
                    }
                },
                Trailer => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(());
                    }
                    match b {
                        b'\r' => self.state = TrailerLf,
                        b'\n' | 0 => return Err(()),
                        _ => {}
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = TrailerStart;
                }
                FinalLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Done;
                }
                Done => break,
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_request_line: 8192,
        max_header_bytes: 32768,
        max_headers: 100,
        max_body_bytes: 0,
    };

    #[test]
    fn request_framing_and_rejections() {
        let r = parse_request(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            &LIMITS,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Length(5));
        assert!(r.keep_alive && !r.idempotent);
        let bad: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ];
        for (raw, status) in bad {
            assert_eq!(
                parse_request(raw, &LIMITS).unwrap_err(),
                *status,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn request_rewrite_drops_hop_by_hop_and_adds_xff() {
        let raw = b"GET /a?b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n";
        let r = parse_request(raw, &LIMITS).unwrap().unwrap();
        let mut out = Vec::new();
        write_request(raw, &r, "127.0.0.9".parse().unwrap(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4, 127.0.0.9\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn chunked_scan_and_decode() {
        let body = b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let mut data = Vec::new();
            let a = c
                .feed(&body[..split], |d| data.extend_from_slice(d))
                .unwrap();
            assert_eq!(a, split.min(body.len() - 4));
            let b = c
                .feed(&body[split..], |d| data.extend_from_slice(d))
                .unwrap();
            assert_eq!(a + b, body.len() - 4, "split {split}");
            assert!(c.done());
            assert_eq!(data, b"hello");
        }
        assert!(Chunked::default().feed(b"zz\r\n", |_| {}).is_err());
        assert!(Chunked::default().feed(b"5\r\nhelloXX", |_| {}).is_err());
    }
}
