//! HTTP/1.1 pieces shared by the proxy, the worker and the admin endpoint: head parsing
//! (strict), body framing (Content-Length, chunked), limits, canned responses.
//!
//! - `request`: strict request-head parser with limits (`parse_request_head`).
//! - `response`: canned responses (`simple`, `json_error`), reason phrases, Date, and the
//!   upstream response-head parser (`parse_response_head`).
//! - `chunked`: incremental bounded chunked decoder (`ChunkedDecoder`), encoder, and the
//!   re-framer of request bodies (`ChunkedReframer`).
//! - `rewrite`: heads to forward (upstream request, client response), hop-by-hop removal,
//!   X-Forwarded-For/Proto, re-framing.
//! - `fields`: byte spans, framing, Content-Length / Transfer-Encoding / Host rules, field
//!   names the proxy acts on (`FieldName`).
//! - `field_lines`: the field-line scan both head parsers share.

pub mod chunked;
mod field_lines;
pub use field_lines::FieldList;
pub mod fields;
pub mod request;
pub mod request_id;
pub mod response;
pub mod rewrite;

pub use chunked::{ChunkError, ChunkLimits, ChunkedDecoder, ChunkedReframer, Progress};
pub use fields::{Field, FieldName, Framing, Span};
pub use request::{HeadError, Limits, Method, RequestHead, parse_request_head};
pub use request_id::RequestId;
pub use response::{ResponseError, ResponseHead, parse_response_head};
