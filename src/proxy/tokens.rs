//! The loop's token layout: what a mio token names.
//!
//! - `0..ENTRY_BASE`: reserved for the loop itself (listener, control channel, signals);
//! - low half in `ENTRY_BASE..UPSTREAM_BASE`: an entry of the loop's slab (a client session or
//!   a health check), index `low - ENTRY_BASE`;
//! - low half from `UPSTREAM_BASE`: an upstream connection (in use by a session, or idle in a
//!   backend's pool), index `low - UPSTREAM_BASE` in the upstream table.
//!
//! The upper half is the slab generation ([`Key::token`]), so an event for a socket closed
//! meanwhile names a stale key and is ignored. 2^31 entries would need more descriptors than
//! a process can open, so the two ranges never meet.

use mio::Token;

use crate::evloop::Key;

/// The listening socket.
pub const LISTENER: Token = Token(0);
/// The control channel to the supervisor.
pub const CONTROL: Token = Token(1);
/// The signal pipe.
pub const SIGNALS: Token = Token(2);

/// First token of the loop slab's entries.
const ENTRY_BASE: usize = 8;
/// First token of the upstream table.
const UPSTREAM_BASE: usize = 1 << 31;

/// What a token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A reserved token (listener, control, signals, or unused).
    Reserved(Token),
    /// An entry of the loop's slab (session or health check).
    Entry(Key),
    /// An upstream connection.
    Upstream(Key),
}

/// The token of a loop slab entry.
pub fn entry(key: Key) -> Token {
    key.token(ENTRY_BASE)
}

/// The token of an upstream connection.
pub fn upstream(key: Key) -> Token {
    key.token(UPSTREAM_BASE)
}

/// What `token` names.
pub fn target(token: Token) -> Target {
    let low = token.0 & 0xffff_ffff;
    if low < ENTRY_BASE {
        return Target::Reserved(token);
    }
    let found = if low < UPSTREAM_BASE {
        Key::from_token(token, ENTRY_BASE).map(Target::Entry)
    } else {
        Key::from_token(token, UPSTREAM_BASE).map(Target::Upstream)
    };
    found.unwrap_or(Target::Reserved(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evloop::Slab;

    #[test]
    fn entry_and_upstream_tokens_round_trip() {
        let mut s: Slab<()> = Slab::new();
        let a = s.insert(());
        s.remove(a);
        let b = s.insert(());
        assert_eq!(target(entry(b)), Target::Entry(b));
        assert_eq!(target(upstream(b)), Target::Upstream(b));
        assert_ne!(
            entry(a),
            entry(b),
            "the generation tells a reused index apart"
        );
        assert_eq!(target(LISTENER), Target::Reserved(LISTENER));
        assert_eq!(target(SIGNALS), Target::Reserved(SIGNALS));
    }
}
