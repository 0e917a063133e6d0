//! `X-Request-Id`: a client's id kept when it is valid (bounded, visible ASCII), else one
//! generated from 128 random bits. Held inline (no allocation per request): the proxy forwards
//! it, echoes it and logs it; the worker logs it.

use std::fmt;

/// The request id field's name.
pub const REQUEST_ID_FIELD: &str = "X-Request-Id";
/// Longest client-sent id kept; a longer (or otherwise invalid) one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// A request id, valid by construction: 1..=[`MAX_REQUEST_ID`] visible ASCII bytes.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    /// No `"` or `\`: written into a log line as it is (no escape pass).
    plain: bool,
    bytes: [u8; MAX_REQUEST_ID],
}

impl RequestId {
    /// The client's id when it is valid: 1 to 128 bytes, each visible ASCII (0x21..=0x7e;
    /// no space, no control byte, nothing a log line would have to escape but `"` and `\`).
    pub fn from_client(value: &[u8]) -> Option<RequestId> {
        if !is_valid(value) {
            return None;
        }
        let mut bytes = [0u8; MAX_REQUEST_ID];
        bytes[..value.len()].copy_from_slice(value);
        Some(RequestId {
            len: value.len() as u8,
            plain: !value.iter().any(|&b| b == b'"' || b == b'\\'),
            bytes,
        })
    }

    /// A new id: 128 random bits as 32 lowercase hex digits.
    pub fn generate() -> RequestId {
        RequestId::from_bits(rand::random::<u128>())
    }

    /// The id spelling `bits` as 32 lowercase hex digits.
    pub fn from_bits(bits: u128) -> RequestId {
        let mut id = RequestId {
            len: 0,
            plain: true,
            bytes: [0u8; MAX_REQUEST_ID],
        };
        id.set_bits(bits);
        id
    }

    /// Becomes the client's id (a header value) when it is valid, else the id spelling
    /// `fresh()`'s 128 bits. In place: a pooled record's id is rewritten only as far as the
    /// new one reaches, not zeroed and moved (about 100 instructions per request).
    pub fn set_kept_or(&mut self, client: Option<&[u8]>, fresh: impl FnOnce() -> u128) {
        match client.filter(|v| is_valid(v)) {
            Some(value) => {
                self.bytes[..value.len()].copy_from_slice(value);
                self.len = value.len() as u8;
                self.plain = !value.iter().any(|&b| b == b'"' || b == b'\\');
            }
            None => self.set_bits(fresh()),
        }
    }

    /// Becomes the id spelling `bits` as 32 lowercase hex digits.
    fn set_bits(&mut self, bits: u128) {
        for (k, quarter) in self.bytes[..32].chunks_exact_mut(8).enumerate() {
            let shift = 96 - 32 * k;
            quarter.copy_from_slice(&hex8((bits >> shift) as u32));
        }
        self.len = 32;
        self.plain = true;
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Whether it holds no `"` or `\` (nothing a log line would escape).
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// The id as text (always ASCII).
    pub fn as_str(&self) -> &str {
        // Valid by construction: visible ASCII only.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &RequestId) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RequestId {}

/// `x` as 8 lowercase hex digits, most significant first, with word arithmetic instead of a
/// loop over nibbles: spread the nibbles one per byte, then map 0-9 and 10-15 to their
/// digits in all eight bytes at once.
fn hex8(x: u32) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut v = u64::from(x);
    v = (v & 0xffff_0000) << 16 | (v & 0x0000_ffff);
    v = (v & 0x0000_ff00_0000_ff00) << 8 | (v & 0x0000_00ff_0000_00ff);
    v = (v & 0x00f0_00f0_00f0_00f0) << 4 | (v & 0x000f_000f_000f_000f);
    // Byte k now holds nibble k (k = 0 the least significant). 1 in the bytes holding 10-15:
    let letters = ((v + ONES * 6) >> 4) & ONES;
    let digits = v + ONES * u64::from(b'0') + letters * u64::from(b'a' - b'0' - 10);
    digits.to_be_bytes()
}

/// Whether `value` may be kept as a request id.
pub fn is_valid(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_when_valid() {
        let id = RequestId::from_client(b"abc-123_XYZ.~").unwrap();
        assert_eq!(id.as_str(), "abc-123_XYZ.~");
        let long = [b'a'; MAX_REQUEST_ID];
        assert_eq!(RequestId::from_client(&long).unwrap().as_bytes(), &long[..]);
    }

    #[test]
    fn invalid_client_ids_are_refused() {
        for bad in [
            &b""[..],
            b"has space",
            b"tab\there",
            b"nul\0",
            b"del\x7f",
            b"\xc3\xa9t\xc3\xa9",
            &[b'a'; MAX_REQUEST_ID + 1][..],
        ] {
            assert!(RequestId::from_client(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_id_set_in_place_is_the_new_one_whole() {
        let mut id = RequestId::from_client(&[b'"'; MAX_REQUEST_ID]).unwrap();
        id.set_kept_or(Some(b"short"), || unreachable!());
        assert_eq!((id.as_str(), id.is_plain()), ("short", true));
        id.set_kept_or(Some(b"bad id"), || 0xab);
        assert_eq!(id, RequestId::from_bits(0xab));
        id.set_kept_or(Some(b"q\"x"), || 0);
        assert_eq!((id.as_str(), id.is_plain()), ("q\"x", false));
        id.set_kept_or(None, || 7);
        assert_eq!(id.as_str(), format!("{:032x}", 7));
    }

    #[test]
    fn generated_ids_are_32_lowercase_hex_digits() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.as_bytes().len(), 32);
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert_eq!(
            RequestId::from_bits(0xab).as_str(),
            format!("{:032x}", 0xab)
        );
        assert_eq!(RequestId::from_bits(u128::MAX).as_str(), "f".repeat(32));
        let mut bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        for _ in 0..1000 {
            assert_eq!(RequestId::from_bits(bits).as_str(), format!("{bits:032x}"));
            bits = bits.wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17) ^ 0x9e37;
        }
    }
}
