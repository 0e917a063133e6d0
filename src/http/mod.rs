//! HTTP/1.1 pieces shared by the proxy, the worker and the admin endpoint: head parsing
//! (httparse, strict), body framing (Content-Length, chunked), limits, canned responses.
