//! The lingering close: after a last answer (an error, `Connection: close`), shut down our
//! write side, then read and discard what the client still sends until it closes or
//! [`LINGER`] has passed, and only then close. Closing at once while unread input sits in
//! the socket makes the kernel answer with a reset, which can destroy the answer before the
//! client read it.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::ready::{ReadResult, Sock, Stream};

/// How long a closing connection may take to read our last answer and close. One value for
/// the proxy and the worker (they used 2 s and 1 s): 2 s covers a client on a slow link
/// that is still sending a body when the answer leaves (Apache's lingering close reads with
/// the same 2 s), and a client that never closes holds its slot at most that long.
pub const LINGER: Duration = Duration::from_secs(2);

/// [`LINGER`] in milliseconds, for loops that count deadlines in ms.
pub const LINGER_MS: u64 = LINGER.as_millis() as u64;

/// What discarding input found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// Nothing more to read now; keep lingering.
    Open,
    /// The client closed (or the socket failed): close now.
    Closed,
}

/// Reads and drops everything readable now.
pub fn discard_input<S: Read + Write>(sock: &mut Sock<S>) -> Discard {
    let mut sink = [0u8; 4096];
    while sock.readable {
        match sock.read(&mut sink) {
            Ok(ReadResult::Data(_)) => {}
            Ok(ReadResult::Blocked) => break,
            Ok(ReadResult::Eof) | Err(_) => return Discard::Closed,
        }
    }
    Discard::Open
}

/// A connection in its lingering close, for loops that keep the end instant themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linger {
    /// When the connection is closed whatever the client does.
    pub until: Instant,
}

impl Linger {
    /// Shuts down the write side (the last answer must already be written) and starts the
    /// clock; None when the socket is already broken (close now).
    pub fn start<S: Stream>(sock: &mut Sock<S>, now: Instant) -> Option<Linger> {
        sock.shutdown_write().ok()?;
        Some(Linger {
            until: now + LINGER,
        })
    }

    /// Discards input; false once the connection should close (client closed, or time up).
    pub fn keep_open<S: Read + Write>(&self, sock: &mut Sock<S>, now: Instant) -> bool {
        now < self.until && discard_input(sock) == Discard::Open
    }
}

/// Shuts down the write side and discards what is readable now (the first lingering step of
/// a loop whose deadline already runs); `Discard::Closed` when the socket is done.
pub fn shut_and_discard<S: Stream>(sock: &mut Sock<S>) -> io::Result<Discard> {
    sock.shutdown_write()?;
    Ok(discard_input(sock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Sock<mio::net::UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Sock::new(mio::net::UnixStream::from_std(a)), b)
    }

    #[test]
    fn discards_until_the_client_closes() {
        let (mut s, mut peer) = pair();
        let t0 = Instant::now();
        s.io.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        let linger = Linger::start(&mut s, t0).unwrap();
        assert_eq!(linger.until, t0 + LINGER);
        // The client still sends: it is read and dropped, the connection stays open.
        peer.write_all(&[b'x'; 10_000]).unwrap();
        s.note_flags(true, false, false);
        assert!(linger.keep_open(&mut s, t0));
        assert!(!s.readable);
        // Our FIN reached the client after the answer.
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        drop(peer);
        s.note_flags(true, false, true);
        assert!(!linger.keep_open(&mut s, t0), "the client closed");
    }

    #[test]
    fn bounded_in_time() {
        let (mut s, _peer) = pair();
        let t0 = Instant::now();
        let linger = Linger::start(&mut s, t0).unwrap();
        assert!(linger.keep_open(&mut s, t0 + LINGER - Duration::from_millis(1)));
        assert!(!linger.keep_open(&mut s, t0 + LINGER));
    }

    #[test]
    fn shut_and_discard_reports_a_closed_peer() {
        let (mut s, peer) = pair();
        drop(peer);
        s.note_flags(true, true, true);
        assert_eq!(shut_and_discard(&mut s).ok(), Some(Discard::Closed));
    }
}
