//! Pooled buffers meet kit sockets: one read into a [`Buf`], a flush of one, and the
//! one-direction byte relay ([`Half`]) used by tunnels and TCP mode.

use std::io;

use mio::net::TcpStream;

use super::buffer::{BUF_SIZE, Buf, BufPool};
use crate::evloop::{ReadResult, Sock};

/// A proxied TCP socket with its readiness.
pub type TcpSock = Sock<TcpStream>;

/// One read into the free space of `buf` (which must have room).
pub fn read_into(sock: &mut TcpSock, buf: &mut Buf) -> io::Result<ReadResult> {
    sock.read_by(|s| buf.read_from(s))
}

/// Writes from `buf` until it is empty or the socket is full; true if anything moved.
pub fn flush(sock: &mut TcpSock, buf: &mut Buf) -> io::Result<bool> {
    let mut moved = false;
    while !buf.is_empty() && sock.writable {
        let n = sock.write(buf.data())?;
        buf.consume(n);
        moved |= n > 0;
    }
    Ok(moved)
}

/// One direction of a relay: bytes read from `from` wait in `buf` until `to` takes them.
/// The buffer holds at most one buffer's worth (backpressure), and is handed back to the
/// pool whenever it runs empty so an idle tunnel holds no memory.
pub struct Half {
    /// Bytes read, not yet written.
    pub buf: Option<Buf>,
    /// The reading side reached end of stream.
    eof: bool,
    /// The writing side was shut down (after eof and an empty buffer).
    shut: bool,
}

impl Half {
    /// A direction with `buf` pending (bytes already read), or nothing.
    pub fn new(buf: Option<Buf>) -> Half {
        Half {
            buf,
            eof: false,
            shut: false,
        }
    }

    /// Whether everything this direction will carry has been delivered.
    pub fn finished(&self) -> bool {
        self.shut
    }

    /// Moves bytes from `from` to `to` until neither can progress; propagates a half-close.
    /// Returns whether anything happened.
    pub fn relay(
        &mut self,
        from: &mut TcpSock,
        to: &mut TcpSock,
        pool: &mut BufPool,
    ) -> io::Result<bool> {
        let mut progress = false;
        while self.step(from, to, pool)? {
            progress = true;
        }
        pool.put_if_empty(&mut self.buf);
        Ok(progress)
    }

    /// One write, one read, and the half-close when due; true if anything moved.
    fn step(
        &mut self,
        from: &mut TcpSock,
        to: &mut TcpSock,
        pool: &mut BufPool,
    ) -> io::Result<bool> {
        let mut moved = false;
        if let Some(b) = self.buf.as_mut()
            && !b.is_empty()
            && to.writable
        {
            moved |= flush(to, b)?;
        }
        let pending = self.buf.as_ref().map_or(0, Buf::len);
        if !self.eof && from.readable && pending < BUF_SIZE {
            let b = self.buf.get_or_insert_with(|| pool.get());
            match read_into(from, b)? {
                ReadResult::Data(_) => moved = true,
                ReadResult::Eof => {
                    self.eof = true;
                    moved = true;
                }
                ReadResult::Blocked => {}
            }
        }
        if self.eof && !self.shut && self.buf.as_ref().is_none_or(Buf::is_empty) {
            // Half-close: the peer finished sending, so does our side of the other peer.
            let _ = to.shutdown_write();
            self.shut = true;
            moved = true;
        }
        Ok(moved)
    }
}
