//! Head rewriting for forwarding: pure functions that write the head the proxy sends
//! upstream (from a client's `RequestHead`) or to the client (from an upstream
//! `ResponseHead`) into a caller-provided buffer.
//!
//! Both directions drop the hop-by-hop fields: `Connection` and every field it names,
//! `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Proxy-Connection`, and `Upgrade` unless
//! the caller is upgrading. Content-Length / Transfer-Encoding are re-added from the framing
//! the caller actually sends, and the Connection field from what the caller decided. Every
//! other field keeps its bytes and its order; every line is written with CRLF (a bare-LF
//! input comes out as CRLF).
//!
//! Decisions (docs/ARCHITECTURE.md):
//! - The request target is forwarded byte-exact, absolute-form included (RFC 9112 3.2.2 makes
//!   every server accept absolute-form); with an absolute-form target the Host sent upstream
//!   is the target's authority (replacing the client's Host in place).
//! - The upstream request line always says HTTP/1.1 (we speak 1.1 to backends); an HTTP/1.0
//!   request without Host gets an empty `Host:` (RFC 9112 3.2), unless the caller passes a
//!   default.
//! - `Host` is never dropped even if Connection names it (a client must not be able to strip
//!   the routing field); X-Forwarded-For / X-Forwarded-Proto are ours, so a Connection naming
//!   them only removes the client's copies.
//! - `X-Forwarded-For`: the client address is appended to the last existing field line
//!   (`, ip`), or a new line is added. `X-Forwarded-Proto` replaces any client value.
//!   `Via` gets `1.x <pseudonym>` appended (RFC 9110 7.6.3: a gateway MUST send Via
//!   inbound) when the caller gives a pseudonym.
//! - Responses to clients always say HTTP/1.1 with the upstream's status and reason.
//! - An HTTP/1.0 request's `Expect` is dropped: it is ignored in 1.0, and the upstream request
//!   is 1.1, where it would mean something (found by the fuzzer).
//! - `X-Request-Id`: when the caller gives one, every copy the client (or the upstream, on the
//!   way back) sent is dropped and the caller's is written once: the proxy keeps a client's
//!   valid id, so a valid id goes through unchanged, and an invalid one cannot travel beside it.

use std::io::Write;
use std::net::IpAddr;

use super::fields::{Field, FieldName, Framing, Span};
use super::request::{RequestHead, TargetForm};
use super::response::ResponseHead;

/// The Connection field the caller wants on the forwarded head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionOut {
    /// No Connection field (HTTP/1.1 persistence is the default; also for interim 1xx).
    Omit,
    /// `Connection: keep-alive` (an HTTP/1.0 client that asked to keep the connection).
    KeepAlive,
    /// `Connection: close`.
    Close,
    /// `Connection: upgrade`, and the Upgrade field is kept.
    Upgrade,
}

/// How to forward a client's request upstream.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamRequest<'a> {
    /// The client's address, appended to X-Forwarded-For.
    pub client_ip: IpAddr,
    /// The value of X-Forwarded-Proto (`http`).
    pub proto: &'a str,
    /// The framing of the body as sent upstream: `Length(n)` adds Content-Length, `Chunked`
    /// adds `Transfer-Encoding: chunked`, `None` adds nothing.
    pub framing: Framing,
    /// The Connection field to send.
    pub connection: ConnectionOut,
    /// Host value when the request has neither Host nor an absolute-form target.
    pub default_host: Option<&'a [u8]>,
    /// Pseudonym appended to Via (`1.1 <pseudonym>`), None = no Via.
    pub via: Option<&'a str>,
    /// `X-Request-Id` to send, replacing every one the client sent; None = forward as sent.
    pub request_id: Option<&'a [u8]>,
}

/// How to forward an upstream response to the client.
#[derive(Clone, Copy, Debug)]
pub struct ClientResponse<'a> {
    /// The framing of the body as sent to the client (see `client_framing`).
    pub framing: Framing,
    /// The Connection field to send.
    pub connection: ConnectionOut,
    /// `X-Request-Id` to echo, replacing any the upstream sent; None = forward as sent.
    pub request_id: Option<&'a [u8]>,
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal at the end of `digits`; returns where it starts (no `fmt` machinery, and
/// the caller copies the digits at once).
fn decimal(n: u64, digits: &mut [u8; 20]) -> usize {
    let mut n = n;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

/// Each byte value in decimal: its (up to three) digits, then how many there are.
static DECIMAL_BYTES: [[u8; 4]; 256] = {
    let mut t = [[0u8; 4]; 256];
    let mut n = 0;
    while n < 256 {
        let (h, d, u) = ((n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8);
        t[n] = match n {
            0..=9 => [b'0' + u, 0, 0, 1],
            10..=99 => [b'0' + d, b'0' + u, 0, 2],
            _ => [b'0' + h, b'0' + d, b'0' + u, 3],
        };
        n += 1;
    }
    t
};

/// Appends `ip` as text; IPv4 (the common case) spelled from a table into a stack buffer and
/// copied once.
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Three digits and a dot per octet, always written; `len` counts the ones kept.
            let mut text = [0u8; 16];
            let mut len = 0;
            for octet in v4.octets() {
                let [a, b, c, n] = DECIMAL_BYTES[usize::from(octet)];
                if let Some(slot) = text.get_mut(len..len + 4) {
                    slot.copy_from_slice(&[a, b, c, b'.']);
                    slot[usize::from(n)] = b'.';
                }
                len += usize::from(n) + 1;
            }
            out.extend_from_slice(&text[..len - 1]);
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

fn put_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            let mut digits = [0u8; 20];
            let start = decimal(n, &mut digits);
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(&digits[start..]);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
}

fn put_request_id(out: &mut Vec<u8>, id: Option<&[u8]>) {
    if let Some(id) = id {
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
}

fn put_connection(out: &mut Vec<u8>, c: ConnectionOut) {
    match c {
        ConnectionOut::Omit => {}
        ConnectionOut::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionOut::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ConnectionOut::Upgrade => out.extend_from_slice(b"Connection: upgrade\r\n"),
    }
}

/// Whether field `f` is dropped when forwarding (hop-by-hop, or named by Connection).
#[inline]
fn dropped(buf: &[u8], f: &Field, connection_tokens: &[Span], keep_upgrade: bool) -> bool {
    match f.kind {
        FieldName::Upgrade => !keep_upgrade,
        FieldName::ContentLength => true,
        kind if kind.is_hop_by_hop() => true,
        FieldName::Host => false,
        _ => {
            !connection_tokens.is_empty() && {
                let name = f.name.get(buf);
                connection_tokens
                    .iter()
                    .any(|t| t.get(buf).eq_ignore_ascii_case(name))
            }
        }
    }
}

/// Forwarded field lines that are already `name: value CRLF` in the buffer, gathered while
/// they follow each other there and copied in one go (instead of four pieces per field).
struct Run<'a> {
    buf: &'a [u8],
    start: usize,
    end: usize,
}

impl<'a> Run<'a> {
    fn new(buf: &'a [u8]) -> Run<'a> {
        Run {
            buf,
            start: 0,
            end: 0,
        }
    }

    /// Forwards `f` as it is in the buffer (`f.plain`), after what the run holds.
    fn add(&mut self, out: &mut Vec<u8>, f: &Field) {
        if f.name.start != self.end {
            self.flush(out);
            self.start = f.name.start;
        }
        self.end = f.value.end + 2;
    }

    /// Writes what the run holds (before anything else is written).
    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.end > self.start {
            out.extend_from_slice(self.buf.get(self.start..self.end).unwrap_or(&[]));
        }
        self.start = self.end;
    }

    /// Forwards `name: value` rewritten (not as it is in the buffer).
    fn put(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        self.flush(out);
        put_field(out, name, value);
    }
}

/// One `Via` line: the client's hops (those not dropped) then ours, `1.x <pseudonym>`.
fn put_via(out: &mut Vec<u8>, head: &RequestHead, buf: &[u8], pseudonym: &str, keep_upgrade: bool) {
    out.extend_from_slice(b"Via: ");
    for f in &head.headers {
        if f.kind == FieldName::Via
            && !dropped(buf, f, &head.connection_tokens, keep_upgrade)
            && !f.value.is_empty()
        {
            out.extend_from_slice(f.value.get(buf));
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(if head.version == 0 { b"1.0 " } else { b"1.1 " });
    out.extend_from_slice(pseudonym.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends the head to send upstream for `head` (parsed from `buf`) to `out`.
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    head: &RequestHead,
    buf: &[u8],
    opts: &UpstreamRequest<'_>,
) {
    // Method, one SP, target: contiguous in the buffer (the parser allows single spaces only).
    out.extend_from_slice(buf.get(head.method.start..head.target.end).unwrap_or(&[]));
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let authority = match (head.target_form, head.authority) {
        (TargetForm::Absolute, Some(a)) => Some(a.get(buf)),
        _ => None,
    };
    let host_value: &[u8] = authority.unwrap_or_else(|| {
        head.host
            .map_or(opts.default_host.unwrap_or(b""), |h| h.get(buf))
    });
    let keep_upgrade = opts.connection == ConnectionOut::Upgrade;
    let last_xff = head
        .headers
        .iter()
        .rposition(|f| f.kind == FieldName::XForwardedFor)
        .filter(|&i| !dropped(buf, &head.headers[i], &head.connection_tokens, keep_upgrade));
    let mut host_written = false;
    let mut run = Run::new(buf);
    for (i, f) in head.headers.iter().enumerate() {
        if dropped(buf, f, &head.connection_tokens, keep_upgrade) {
            continue;
        }
        match f.kind {
            // Meaningless in HTTP/1.0 (RFC 9110 10.1.1); forwarded as 1.1 it would gain a
            // meaning (a 100 the client cannot take, or a 417).
            FieldName::Expect if head.version == 0 => {}
            FieldName::Host => {
                if f.plain && authority.is_none() {
                    run.add(out, f);
                } else {
                    run.put(out, f.name.get(buf), host_value);
                }
                host_written = true;
            }
            // Replaced by ours below.
            FieldName::XForwardedProto => {}
            FieldName::XForwardedFor if Some(i) == last_xff => {
                run.flush(out);
                put_appended_xff(out, f.name.get(buf), f.value.get(buf), opts.client_ip);
            }
            // Re-emitted with our hop appended below, in this position's stead.
            FieldName::Via if opts.via.is_some() => {}
            // Ours (the client's when valid) is written once below.
            FieldName::XRequestId if opts.request_id.is_some() => {}
            _ if f.plain => run.add(out, f),
            _ => run.put(out, f.name.get(buf), f.value.get(buf)),
        }
    }
    run.flush(out);
    if !host_written {
        put_field(out, b"Host", host_value);
    }
    if let Some(pseudonym) = opts.via {
        put_via(out, head, buf, pseudonym, keep_upgrade);
    }
    put_proxy_fields(out, opts, last_xff.is_none());
}

/// The client's last X-Forwarded-For line with its address appended.
fn put_appended_xff(out: &mut Vec<u8>, name: &[u8], value: &[u8], client_ip: IpAddr) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    if !value.is_empty() {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    put_ip(out, client_ip);
    out.extend_from_slice(b"\r\n");
}

/// What the proxy adds after the client's fields (X-Forwarded-For when the client sent none,
/// X-Forwarded-Proto, the request id, framing, Connection) and the empty line ending the head.
fn put_proxy_fields(out: &mut Vec<u8>, opts: &UpstreamRequest<'_>, add_xff: bool) {
    if add_xff {
        out.extend_from_slice(b"X-Forwarded-For: ");
        put_ip(out, opts.client_ip);
        out.extend_from_slice(b"\r\n");
    }
    match opts.proto {
        // The usual value as one constant (no copy of a runtime-length string).
        "http" => out.extend_from_slice(b"X-Forwarded-Proto: http\r\n"),
        proto => {
            out.extend_from_slice(b"X-Forwarded-Proto: ");
            out.extend_from_slice(proto.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    put_request_id(out, opts.request_id);
    put_framing(out, opts.framing);
    put_connection(out, opts.connection);
    out.extend_from_slice(b"\r\n");
}

/// The framing to use towards a client of `client_version` (0 = HTTP/1.0) for `resp`: an
/// HTTP/1.0 client never gets chunked, it gets the de-chunked body delimited by close.
pub fn client_framing(resp: &ResponseHead, client_version: u8) -> Framing {
    match resp.framing {
        Framing::Chunked if client_version == 0 => Framing::Close,
        f => f,
    }
}

/// Appends the head to send to the client for upstream response `head` (parsed from `buf`)
/// to `out`. With `framing` `None` the upstream's Content-Length is kept for HEAD and 304
/// responses (it describes the representation, not this message); dropped for 1xx and 204.
pub fn write_client_response(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    buf: &[u8],
    opts: &ClientResponse,
) {
    // The status line: `HTTP/1.1 NNN ` (a validated 100..=599) as one constant-size store.
    let mut line = *b"HTTP/1.1 000 ";
    line[9] += (head.status / 100 % 10) as u8;
    line[10] += (head.status / 10 % 10) as u8;
    line[11] += (head.status % 10) as u8;
    out.extend_from_slice(&line);
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    let keep_upgrade = opts.connection == ConnectionOut::Upgrade;
    let mut original_length = None;
    let mut run = Run::new(buf);
    for f in &head.headers {
        if f.kind == FieldName::ContentLength {
            original_length = Some(f.value.get(buf));
        }
        if dropped(buf, f, &head.connection_tokens, keep_upgrade)
            || opts.request_id.is_some() && f.kind == FieldName::XRequestId
        {
            continue;
        }
        if f.plain {
            run.add(out, f);
        } else {
            run.put(out, f.name.get(buf), f.value.get(buf));
        }
    }
    run.flush(out);
    put_request_id(out, opts.request_id);
    match (opts.framing, original_length) {
        (Framing::None, Some(v)) if head.status >= 200 && head.status != 204 => {
            put_field(out, b"Content-Length", v);
        }
        (f, _) => put_framing(out, f),
    }
    put_connection(out, opts.connection);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{Limits, parse_request_head};
    use crate::http::response::parse_response_head;
    use proptest::prelude::*;

    fn ip() -> IpAddr {
        "10.1.2.3".parse().unwrap()
    }

    fn up(raw: &[u8], framing: Framing, connection: ConnectionOut) -> String {
        let h = parse_request_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_upstream_request(
            &mut out,
            &h,
            raw,
            &UpstreamRequest {
                client_ip: ip(),
                proto: "http",
                framing,
                connection,
                default_host: None,
                via: None,
                request_id: None,
            },
        );
        String::from_utf8(out).unwrap()
    }

    /// The rewriter as it was before field runs and `FieldName` (name comparisons, four
    /// copies per field): the reference the property below holds the new one to.
    mod before {
        use std::io::Write;
        use std::net::IpAddr;

        use super::super::{ClientResponse, ConnectionOut, UpstreamRequest};
        use crate::http::fields::{Field, Framing};
        use crate::http::request::{RequestHead, TargetForm};
        use crate::http::request_id::REQUEST_ID_FIELD;
        use crate::http::response::ResponseHead;

        /// Hop-by-hop fields removed in both directions (besides those Connection names).
        fn is_hop_by_hop(name: &[u8]) -> bool {
            const HOP: [&[u8]; 7] = [
                b"connection",
                b"keep-alive",
                b"te",
                b"trailer",
                b"transfer-encoding",
                b"proxy-connection",
                b"upgrade",
            ];
            HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        }

        fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }

        /// Appends `n` in decimal (no `fmt` machinery on the data path).
        fn put_u64(out: &mut Vec<u8>, mut n: u64) {
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            out.extend_from_slice(&digits[i..]);
        }

        /// Appends `ip` as text; IPv4 (the common case) without `fmt`.
        fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
            match ip {
                IpAddr::V4(v4) => {
                    for (k, octet) in v4.octets().into_iter().enumerate() {
                        if k > 0 {
                            out.push(b'.');
                        }
                        put_u64(out, u64::from(octet));
                    }
                }
                IpAddr::V6(_) => {
                    let _ = write!(out, "{ip}");
                }
            }
        }

        fn put_framing(out: &mut Vec<u8>, framing: Framing) {
            match framing {
                Framing::Length(n) => {
                    out.extend_from_slice(b"Content-Length: ");
                    put_u64(out, n);
                    out.extend_from_slice(b"\r\n");
                }
                Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
                Framing::None | Framing::Close => {}
            }
        }

        fn is_request_id(name: &[u8]) -> bool {
            name.eq_ignore_ascii_case(REQUEST_ID_FIELD.as_bytes())
        }

        fn put_request_id(out: &mut Vec<u8>, id: Option<&[u8]>) {
            if let Some(id) = id {
                put_field(out, REQUEST_ID_FIELD.as_bytes(), id);
            }
        }

        fn put_connection(out: &mut Vec<u8>, c: ConnectionOut) {
            match c {
                ConnectionOut::Omit => {}
                ConnectionOut::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
                ConnectionOut::Close => out.extend_from_slice(b"Connection: close\r\n"),
                ConnectionOut::Upgrade => out.extend_from_slice(b"Connection: upgrade\r\n"),
            }
        }

        /// Whether field `f` is dropped when forwarding (hop-by-hop, or named by Connection).
        fn dropped(
            buf: &[u8],
            f: &Field,
            connection_tokens: &[crate::http::Span],
            keep_upgrade: bool,
        ) -> bool {
            let name = f.name.get(buf);
            if name.eq_ignore_ascii_case(b"upgrade") {
                return !keep_upgrade;
            }
            if is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"content-length") {
                return true;
            }
            if name.eq_ignore_ascii_case(b"host") {
                return false;
            }
            connection_tokens
                .iter()
                .any(|t| t.get(buf).eq_ignore_ascii_case(name))
        }

        /// One `Via` line: the client's hops (those not dropped) then ours, `1.x <pseudonym>`.
        fn put_via(
            out: &mut Vec<u8>,
            head: &RequestHead,
            buf: &[u8],
            pseudonym: &str,
            keep_upgrade: bool,
        ) {
            out.extend_from_slice(b"Via: ");
            for f in &head.headers {
                if f.name.get(buf).eq_ignore_ascii_case(b"via")
                    && !dropped(buf, f, &head.connection_tokens, keep_upgrade)
                    && !f.value.is_empty()
                {
                    out.extend_from_slice(f.value.get(buf));
                    out.extend_from_slice(b", ");
                }
            }
            out.extend_from_slice(if head.version == 0 { b"1.0 " } else { b"1.1 " });
            out.extend_from_slice(pseudonym.as_bytes());
            out.extend_from_slice(b"\r\n");
        }

        /// Appends the head to send upstream for `head` (parsed from `buf`) to `out`.
        pub(super) fn write_upstream_request(
            out: &mut Vec<u8>,
            head: &RequestHead,
            buf: &[u8],
            opts: &UpstreamRequest<'_>,
        ) {
            out.extend_from_slice(head.method.get(buf));
            out.push(b' ');
            out.extend_from_slice(head.target.get(buf));
            out.extend_from_slice(b" HTTP/1.1\r\n");

            let host_value: &[u8] = match (head.target_form, head.authority) {
                (TargetForm::Absolute, Some(a)) => a.get(buf),
                _ => head
                    .host
                    .map_or(opts.default_host.unwrap_or(b""), |h| h.get(buf)),
            };
            let keep_upgrade = opts.connection == ConnectionOut::Upgrade;
            let last_xff = head
                .headers
                .iter()
                .rposition(|f| f.name.get(buf).eq_ignore_ascii_case(b"x-forwarded-for"))
                .filter(|&i| {
                    !dropped(buf, &head.headers[i], &head.connection_tokens, keep_upgrade)
                });
            let mut host_written = false;
            for (i, f) in head.headers.iter().enumerate() {
                if dropped(buf, f, &head.connection_tokens, keep_upgrade) {
                    continue;
                }
                let name = f.name.get(buf);
                if head.version == 0 && name.eq_ignore_ascii_case(b"expect") {
                    // Meaningless in HTTP/1.0 (RFC 9110 10.1.1); forwarded as 1.1 it would gain a
                    // meaning (a 100 the client cannot take, or a 417).
                    continue;
                }
                if name.eq_ignore_ascii_case(b"host") {
                    put_field(out, name, host_value);
                    host_written = true;
                } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                    // Replaced by ours below.
                } else if Some(i) == last_xff {
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    let v = f.value.get(buf);
                    if !v.is_empty() {
                        out.extend_from_slice(v);
                        out.extend_from_slice(b", ");
                    }
                    put_ip(out, opts.client_ip);
                    out.extend_from_slice(b"\r\n");
                } else if opts.via.is_some() && name.eq_ignore_ascii_case(b"via") {
                    // Re-emitted with our hop appended below, in this position's stead.
                } else if opts.request_id.is_some() && is_request_id(name) {
                    // Ours (the client's when valid) is written once below.
                } else {
                    put_field(out, name, f.value.get(buf));
                }
            }
            if !host_written {
                put_field(out, b"Host", host_value);
            }
            if let Some(pseudonym) = opts.via {
                put_via(out, head, buf, pseudonym, keep_upgrade);
            }
            if last_xff.is_none() {
                out.extend_from_slice(b"X-Forwarded-For: ");
                put_ip(out, opts.client_ip);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"X-Forwarded-Proto: ");
            out.extend_from_slice(opts.proto.as_bytes());
            out.extend_from_slice(b"\r\n");
            put_request_id(out, opts.request_id);
            put_framing(out, opts.framing);
            put_connection(out, opts.connection);
            out.extend_from_slice(b"\r\n");
        }

        /// Appends the head to send to the client for upstream response `head` (parsed from `buf`)
        /// to `out`. With `framing` `None` the upstream's Content-Length is kept for HEAD and 304
        /// responses (it describes the representation, not this message); dropped for 1xx and 204.
        pub(super) fn write_client_response(
            out: &mut Vec<u8>,
            head: &ResponseHead,
            buf: &[u8],
            opts: &ClientResponse,
        ) {
            out.extend_from_slice(b"HTTP/1.1 ");
            put_u64(out, u64::from(head.status));
            out.push(b' ');
            out.extend_from_slice(head.reason.get(buf));
            out.extend_from_slice(b"\r\n");
            let keep_upgrade = opts.connection == ConnectionOut::Upgrade;
            let mut original_length = None;
            for f in &head.headers {
                let name = f.name.get(buf);
                if name.eq_ignore_ascii_case(b"content-length") {
                    original_length = Some(f.value.get(buf));
                }
                if dropped(buf, f, &head.connection_tokens, keep_upgrade)
                    || opts.request_id.is_some() && is_request_id(name)
                {
                    continue;
                }
                put_field(out, name, f.value.get(buf));
            }
            put_request_id(out, opts.request_id);
            match (opts.framing, original_length) {
                (Framing::None, Some(v)) if head.status >= 200 && head.status != 204 => {
                    put_field(out, b"Content-Length", v);
                }
                (f, _) => put_framing(out, f),
            }
            put_connection(out, opts.connection);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Field lines for random heads: the names the rewriter acts on, in any case, with the
    /// separators and line ends a client may use.
    fn field_line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(vec![
            "Host",
            "host",
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Content-Length",
            "Transfer-Encoding",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "Via",
            "X-Request-Id",
            "Expect",
            "X-A",
            "x-b",
            "Accept",
        ]);
        let value = prop::sample::select(vec![
            "",
            "h",
            "h.example:80",
            "1.2.3.4",
            "X-A, x-b",
            "close",
            "keep-alive",
            "upgrade",
            "websocket",
            "5",
            "chunked",
            "100-continue",
            "1.1 p",
            "v w",
        ]);
        let sep = prop::sample::select(vec![": ", ":", ":  ", ":\t"]);
        let tail = prop::sample::select(vec!["\r\n", "\n", " \r\n", "\t\n"]);
        (name, sep, value, tail).prop_map(|(n, s, v, t)| format!("{n}{s}{v}{t}").into_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        /// Both directions write byte for byte what the field-by-field rewriter wrote.
        #[test]
        fn rewritten_heads_match_before(
            lines in prop::collection::vec(field_line(), 0..8),
            absolute in any::<bool>(),
            http10 in any::<bool>(),
            status in prop::sample::select(vec![101u16, 103, 200, 204, 304, 404, 599]),
            opts in (any::<bool>(), any::<bool>(), any::<bool>(), 0usize..4, 0usize..3),
        ) {
            let (via, rid, v6, conn, framing) = opts;
            let connection = [ConnectionOut::Omit, ConnectionOut::KeepAlive, ConnectionOut::Close, ConnectionOut::Upgrade][conn];
            let framing = [Framing::None, Framing::Length(12), Framing::Chunked][framing];
            let target = if absolute { "http://t.example:8/p" } else { "/p?q" };
            let version = if http10 { "1.0" } else { "1.1" };
            let mut raw = format!("GET {target} HTTP/{version}\r\n").into_bytes();
            lines.iter().for_each(|l| raw.extend_from_slice(l));
            raw.extend_from_slice(b"\r\n");
            if let Ok(Some(h)) = parse_request_head(&raw, &Limits::default()) {
                let opts = UpstreamRequest {
                    client_ip: if v6 { "2001:db8::1".parse().unwrap() } else { ip() },
                    proto: if via { "https" } else { "http" },
                    framing,
                    connection,
                    default_host: if rid { Some(b"d:1") } else { None },
                    via: via.then_some("glb"),
                    request_id: rid.then_some(b"rid"),
                };
                let (mut ours, mut old) = (Vec::new(), Vec::new());
                write_upstream_request(&mut ours, &h, &raw, &opts);
                before::write_upstream_request(&mut old, &h, &raw, &opts);
                prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&old));
            }
            let mut raw = format!("HTTP/{version} {status} Fine\r\n").into_bytes();
            lines.iter().for_each(|l| raw.extend_from_slice(l));
            raw.extend_from_slice(b"\r\n");
            if let Ok(Some(h)) = parse_response_head(&raw, absolute, &Limits::default()) {
                let opts = ClientResponse {
                    framing: client_framing(&h, u8::from(!http10)),
                    connection,
                    request_id: rid.then_some(b"rid"),
                };
                let (mut ours, mut old) = (Vec::new(), Vec::new());
                write_client_response(&mut ours, &h, &raw, &opts);
                before::write_client_response(&mut old, &h, &raw, &opts);
                prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&old));
            }
        }
    }

    #[test]
    fn request_id_written_once_both_ways() {
        let raw =
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: bad id\r\nx-request-id: again\r\n\r\n";
        let h = parse_request_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let opts = UpstreamRequest {
            client_ip: ip(),
            proto: "http",
            framing: Framing::None,
            connection: ConnectionOut::Omit,
            default_host: None,
            via: None,
            request_id: Some(b"abc"),
        };
        write_upstream_request(&mut out, &h, raw, &opts);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.1.2.3\r\n\
             X-Forwarded-Proto: http\r\nX-Request-Id: abc\r\n\r\n"
        );
        // Without an id the client's fields go through as sent.
        let plain = up(raw, Framing::None, ConnectionOut::Omit);
        assert!(plain.contains("X-Request-Id: bad id\r\nx-request-id: again\r\n"));

        let raw = b"HTTP/1.1 204 No Content\r\nX-Request-Id: worker-echo\r\nServer: s\r\n\r\n";
        let h = parse_response_head(raw, false, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let opts = ClientResponse {
            framing: Framing::None,
            connection: ConnectionOut::Omit,
            request_id: Some(b"abc"),
        };
        write_client_response(&mut out, &h, raw, &opts);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nServer: s\r\nX-Request-Id: abc\r\n\r\n"
        );
    }

    #[test]
    fn numbers_and_addresses() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut digits = [0u8; 20];
            let start = decimal(n, &mut digits);
            assert_eq!(&digits[start..], n.to_string().as_bytes());
            let mut out = Vec::new();
            put_framing(&mut out, Framing::Length(n));
            assert_eq!(out, format!("Content-Length: {n}\r\n").as_bytes());
        }
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.200.3",
            "1.20.100.9",
            "99.100.9.10",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            put_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn request_basic() {
        let got = up(
            b"GET /a?b HTTP/1.1\r\nHost: ex.com\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n",
            Framing::None,
            ConnectionOut::Omit,
        );
        assert_eq!(
            got,
            "GET /a?b HTTP/1.1\r\nHost: ex.com\r\nAccept: */*\r\nUser-Agent: t\r\n\
             X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn request_hop_by_hop_removed() {
        let raw = b"POST /x HTTP/1.1\r\nKeep-Alive: timeout=5\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n\
            TE: trailers\r\nX-Secret: 1\r\nx-secret: 2\r\nTrailer: Expires\r\nProxy-Connection: keep-alive\r\n\
            Upgrade: websocket\r\nTransfer-Encoding: chunked\r\nX-Keep: yes\r\n\r\n";
        let got = up(raw, Framing::Chunked, ConnectionOut::Close);
        assert_eq!(
            got,
            "POST /x HTTP/1.1\r\nHost: h\r\nX-Keep: yes\r\nX-Forwarded-For: 10.1.2.3\r\n\
             X-Forwarded-Proto: http\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn request_content_length_reframed() {
        let got = up(
            b"PUT /x HTTP/1.1\r\nContent-Length: 0005\r\nHost: h\r\n\r\n",
            Framing::Length(5),
            ConnectionOut::Omit,
        );
        assert_eq!(
            got,
            "PUT /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.1.2.3\r\n\
             X-Forwarded-Proto: http\r\nContent-Length: 5\r\n\r\n"
        );
    }

    #[test]
    fn request_upgrade_kept_when_upgrading() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        let got = up(raw, Framing::None, ConnectionOut::Upgrade);
        assert_eq!(
            got,
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\
             X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nConnection: upgrade\r\n\r\n"
        );
        let got = up(raw, Framing::None, ConnectionOut::Omit);
        assert!(!got.contains("Upgrade"), "{got}");
    }

    #[test]
    fn request_xff_appended_xfp_replaced() {
        let raw = b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\
            X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\r\n";
        let got = up(raw, Framing::None, ConnectionOut::Omit);
        assert_eq!(
            got,
            "GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: h\r\n\
             X-Forwarded-For: 2.2.2.2, 3.3.3.3, 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
        // Empty XFF value.
        let got = up(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:\r\n\r\n",
            Framing::None,
            ConnectionOut::Omit,
        );
        assert!(got.contains("\r\nX-Forwarded-For: 10.1.2.3\r\n"), "{got}");
        // Connection naming XFF removes the client's copy, ours is still added.
        let got = up(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For, Host\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
            Framing::None,
            ConnectionOut::Omit,
        );
        assert_eq!(
            got,
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn request_absolute_form_sets_host() {
        let raw = b"GET http://Target.example:81/p?q HTTP/1.1\r\nHost: other\r\nA: b\r\n\r\n";
        let got = up(raw, Framing::None, ConnectionOut::Omit);
        assert_eq!(
            got,
            "GET http://Target.example:81/p?q HTTP/1.1\r\nHost: Target.example:81\r\nA: b\r\n\
             X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
        // HTTP/1.0 absolute-form without Host: Host added.
        let got = up(
            b"GET http://t/ HTTP/1.0\r\n\r\n",
            Framing::None,
            ConnectionOut::Close,
        );
        assert_eq!(
            got,
            "GET http://t/ HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.1.2.3\r\n\
             X-Forwarded-Proto: http\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn request_http10_without_host_and_bare_lf() {
        let raw = b"GET / HTTP/1.0\nX: y\n\n";
        let got = up(raw, Framing::None, ConnectionOut::Close);
        assert_eq!(
            got,
            "GET / HTTP/1.1\r\nX: y\r\nHost: \r\nX-Forwarded-For: 10.1.2.3\r\n\
             X-Forwarded-Proto: http\r\nConnection: close\r\n\r\n"
        );
        let h = parse_request_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_upstream_request(
            &mut out,
            &h,
            raw,
            &UpstreamRequest {
                client_ip: "::1".parse().unwrap(),
                proto: "http",
                framing: Framing::None,
                connection: ConnectionOut::Omit,
                default_host: Some(b"backend:80"),
                via: Some("glb"),
                request_id: None,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nX: y\r\nHost: backend:80\r\nVia: 1.0 glb\r\n\
             X-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn request_http10_expect_dropped() {
        let got = up(
            b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            Framing::Length(1),
            ConnectionOut::Close,
        );
        assert!(!got.contains("Expect"), "{got}");
        let got = up(
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            Framing::Length(1),
            ConnectionOut::Close,
        );
        assert!(got.contains("\r\nExpect: 100-continue\r\n"), "{got}");
    }

    #[test]
    fn request_via_appended() {
        let raw = b"GET / HTTP/1.1\r\nVia: 1.1 a\r\nHost: h\r\nVia: 1.0 b\r\n\r\n";
        let h = parse_request_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_upstream_request(
            &mut out,
            &h,
            raw,
            &UpstreamRequest {
                client_ip: ip(),
                proto: "http",
                framing: Framing::None,
                connection: ConnectionOut::Omit,
                default_host: None,
                via: Some("glb"),
                request_id: None,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 a, 1.0 b, 1.1 glb\r\n\
             X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    fn down(raw: &[u8], head_req: bool, client_version: u8, connection: ConnectionOut) -> String {
        let h = parse_response_head(raw, head_req, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_client_response(
            &mut out,
            &h,
            raw,
            &ClientResponse {
                framing: client_framing(&h, client_version),
                connection,
                request_id: None,
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn response_basic_and_hop_by_hop() {
        let raw = b"HTTP/1.1 200 Fine\r\nServer: s\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n\
            X-Internal: secret\r\nContent-Length: 3\r\nTrailer: X\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nTE: x\r\nX-End: 1\r\n\r\nabc";
        assert_eq!(
            down(raw, false, 1, ConnectionOut::Omit),
            "HTTP/1.1 200 Fine\r\nServer: s\r\nX-End: 1\r\nContent-Length: 3\r\n\r\n"
        );
        assert_eq!(
            down(raw, false, 0, ConnectionOut::KeepAlive),
            "HTTP/1.1 200 Fine\r\nServer: s\r\nX-End: 1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn response_chunked_to_http10_is_close_framed() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nA: b\r\n\r\n";
        assert_eq!(
            down(raw, false, 1, ConnectionOut::Omit),
            "HTTP/1.1 200 OK\r\nA: b\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let h = parse_response_head(raw, false, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(client_framing(&h, 0), Framing::Close);
        assert_eq!(
            down(raw, false, 0, ConnectionOut::Close),
            "HTTP/1.1 200 OK\r\nA: b\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_head_304_keep_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: x\r\n\r\n";
        assert_eq!(
            down(raw, true, 1, ConnectionOut::Omit),
            "HTTP/1.1 200 OK\r\nETag: x\r\nContent-Length: 1234\r\n\r\n"
        );
        let raw = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(
            down(raw, false, 1, ConnectionOut::Omit),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        );
        let raw = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            down(raw, false, 1, ConnectionOut::Omit),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        // HEAD of a chunked resource: no framing field at all.
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            down(raw, true, 1, ConnectionOut::Omit),
            "HTTP/1.1 200 OK\r\n\r\n"
        );
    }

    #[test]
    fn response_interim_and_upgrade() {
        let raw = b"HTTP/1.1 103 Early Hints\nLink: </s.css>; rel=preload\n\n";
        assert_eq!(
            down(raw, false, 1, ConnectionOut::Omit),
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        );
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\r\n";
        assert_eq!(
            down(raw, false, 1, ConnectionOut::Upgrade),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\nConnection: upgrade\r\n\r\n"
        );
        // HTTP/1.0 upstream: we still answer HTTP/1.1.
        let raw = b"HTTP/1.0 200 OK\r\n\r\n";
        assert_eq!(
            down(raw, false, 1, ConnectionOut::Close),
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        );
    }
}
