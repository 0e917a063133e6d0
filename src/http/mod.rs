//! HTTP/1.1 pieces shared by the proxy, the worker and the admin endpoint: head parsing
//! (httparse, strict), body framing (Content-Length, chunked), limits, canned responses.
//!
//! - `request`: strict request-head parser with limits (`parse_request_head`).
//! - `response`: canned responses (`simple`, `json_error`), reason phrases, Date.
//! - `fields`: byte spans, framing, Content-Length / Transfer-Encoding / Host rules.

pub mod fields;
pub mod request;
pub mod response;

pub use fields::{Field, Framing, Span};
pub use request::{HeadError, Limits, Method, RequestHead, parse_request_head};
