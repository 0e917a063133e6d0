//! Response-head parser: no panic; prefixes agree with the whole; the head written for the
//! client parses again with the same status.
#![no_main]

use goloadbalancer::http::rewrite::{
    ClientResponse, ConnectionOut, client_framing, write_client_response,
};
use goloadbalancer::http::{Limits, parse_response_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let head_request = sel & 1 == 1;
    let limits = if sel & 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_request_line: 0,
            max_header_bytes: 16 + 2 * usize::from(sel),
            max_headers: usize::from(sel >> 4),
        }
    };
    let whole = parse_response_head(buf, head_request, &limits);
    for k in 1..8 {
        let n = buf.len() * k / 8;
        let p = parse_response_head(&buf[..n], head_request, &limits);
        assert!(p == Ok(None) || p == whole, "prefix {n}: {p:?} vs {whole:?}");
    }
    if let Ok(Some(h)) = whole {
        assert!(h.head_len <= buf.len());
        assert!((100..=599).contains(&h.status));
        let mut out = Vec::new();
        let framing = client_framing(&h, sel >> 7);
        write_client_response(
            &mut out,
            &h,
            buf,
            &ClientResponse {
                framing,
                connection: ConnectionOut::Close,
                request_id: None,
            },
        );
        let big = Limits {
            max_request_line: 0,
            max_header_bytes: 1 << 20,
            max_headers: 4096,
        };
        match parse_response_head(&out, head_request, &big) {
            Ok(Some(c)) => {
                assert_eq!(c.status, h.status);
                assert_eq!(c.head_len, out.len());
            }
            other => panic!(
                "client head does not parse: {other:?}: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
});
