//! Request-head parser: no panic; prefixes agree with the whole; valid heads' spans are in
//! bounds; the rewritten upstream head parses again with the same target.
#![no_main]

use goloadbalancer::http::rewrite::{ConnectionOut, UpstreamRequest, write_upstream_request};
use goloadbalancer::http::{Limits, parse_request_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let limits = if sel & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_request_line: 1 + usize::from(sel >> 1),
            max_header_bytes: 16 + 4 * usize::from(sel),
            max_headers: usize::from(sel & 0x0f),
        }
    };
    let whole = parse_request_head(buf, &limits);
    // A handful of prefixes (all of them would make the target quadratic).
    for k in 1..8 {
        let n = buf.len() * k / 8;
        let p = parse_request_head(&buf[..n], &limits);
        assert!(p == Ok(None) || p == whole, "prefix {n}: {p:?} vs {whole:?}");
    }
    if let Ok(Some(h)) = whole {
        assert!(h.head_len <= buf.len());
        for f in &h.headers {
            assert!(f.name.end <= h.head_len && f.value.end <= h.head_len);
        }
        let mut out = Vec::new();
        write_upstream_request(
            &mut out,
            &h,
            buf,
            &UpstreamRequest {
                client_ip: [127, 0, 0, 1].into(),
                proto: "http",
                framing: h.framing,
                connection: ConnectionOut::Close,
                default_host: None,
                via: Some("glb"),
                request_id: None,
            },
        );
        let big = Limits {
            max_request_line: 1 << 20,
            max_header_bytes: 1 << 20,
            max_headers: 4096,
        };
        match parse_request_head(&out, &big) {
            Ok(Some(u)) => {
                assert_eq!(u.target.get(&out), h.target.get(buf));
                assert_eq!(u.method.get(&out), h.method.get(buf));
                assert_eq!(u.framing, h.framing);
                assert_eq!(u.head_len, out.len());
            }
            other => panic!(
                "rewritten head does not parse: {other:?}: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
});
