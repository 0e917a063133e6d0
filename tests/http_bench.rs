//! Micro-benchmarks of the HTTP pieces (ignored by default; timings never gate a test):
//!
//!     cargo test --release --test http_bench -- --ignored --nocapture
//!
//! Prints ns per operation for: parsing a small and a browser-sized request head, parsing a
//! response head, rewriting a request head for upstream, and decoding a chunked body.

use std::hint::black_box;
use std::time::Instant;

use goloadbalancer::http::chunked::{ChunkLimits, ChunkedDecoder, encode_chunk};
use goloadbalancer::http::rewrite::{ConnectionOut, UpstreamRequest, write_upstream_request};
use goloadbalancer::http::{Limits, parse_request_head, parse_response_head};

/// Runs `f` `n` times (after a warm-up) and prints the mean ns per call.
fn bench(name: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{name:<40} {ns:>9.1} ns/op");
}

const SMALL: &[u8] =
    b"GET /api/v1/hello HTTP/1.1\r\nHost: 127.0.0.1:5050\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";

const BROWSER: &[u8] = b"GET /static/app/main.3f9a1c.js?v=12&lang=en HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://www.example.com/index.html\r\n\
Connection: keep-alive\r\n\
Cookie: session=7f3a9c0e1b2d4f6a8c0e1b2d4f6a8c0e; theme=dark; consent=1\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: script\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Site: same-origin\r\n\
Priority: u=1\r\n\
X-Forwarded-For: 198.51.100.7\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 52\r\n\r\n";

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn http_pieces_throughput() {
    let limits = Limits::default();
    // httparse alone, as the floor our checks add to (same machine, same moment).
    bench(
        "httparse::Request::parse small (baseline)",
        2_000_000,
        || {
            let mut h = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Request::new(&mut h);
            black_box(r.parse(black_box(SMALL)).unwrap());
        },
    );
    bench(
        "httparse::Request::parse browser (baseline)",
        1_000_000,
        || {
            let mut h = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Request::new(&mut h);
            black_box(r.parse(black_box(BROWSER)).unwrap());
        },
    );
    bench("parse_request_head small (4 fields)", 2_000_000, || {
        black_box(parse_request_head(black_box(SMALL), &limits).unwrap());
    });
    bench("parse_request_head browser (15 fields)", 1_000_000, || {
        black_box(parse_request_head(black_box(BROWSER), &limits).unwrap());
    });
    bench("parse_response_head (3 fields)", 2_000_000, || {
        black_box(parse_response_head(black_box(RESPONSE), false, &limits).unwrap());
    });
    let head = parse_request_head(BROWSER, &limits).unwrap().unwrap();
    let mut out = Vec::with_capacity(2048);
    bench("write_upstream_request browser", 1_000_000, || {
        out.clear();
        write_upstream_request(
            &mut out,
            black_box(&head),
            BROWSER,
            &UpstreamRequest {
                client_ip: [127, 0, 0, 1].into(),
                proto: "http",
                framing: head.framing,
                connection: ConnectionOut::Omit,
                default_host: None,
                via: None,
                request_id: None,
            },
        );
        black_box(&out);
    });
    // 1 MiB body in 16 KiB chunks.
    let data = vec![b'x'; 16384];
    let mut body = Vec::new();
    for _ in 0..64 {
        encode_chunk(&mut body, &data);
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let t = Instant::now();
    let rounds = 2000;
    for _ in 0..rounds {
        let mut d = ChunkedDecoder::new(ChunkLimits::default());
        let mut n = 0usize;
        let p = d.feed(black_box(&body), &mut |s| n += s.len()).unwrap();
        assert!(p.done && n == 1 << 20);
    }
    // The decoder never copies data (it hands out slices), so its cost is per chunk.
    let ns = t.elapsed().as_nanos() as f64 / f64::from(rounds * 65);
    println!(
        "{:<40} {ns:>9.1} ns/chunk",
        "ChunkedDecoder (16 KiB chunks)"
    );
}
