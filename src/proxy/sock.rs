//! A non-blocking socket with its readiness tracked (edge-triggered epoll reports a change
//! once: we remember it until a read or write hits WouldBlock), and the byte relay used by
//! tunnels and TCP mode.

use std::io::{self, Write};
use std::net::Shutdown;

use mio::event::Event;
use mio::net::TcpStream;

use super::buffer::{Buf, BufPool};

/// A TCP socket and what the poller last said about it.
pub struct Sock {
    /// The socket.
    pub s: TcpStream,
    /// A read may return data (or EOF/error).
    pub readable: bool,
    /// A write may make progress.
    pub writable: bool,
    /// The peer's FIN (or an error) was reported: reads must go on until they say so, as no
    /// further edge will come.
    pub read_closed: bool,
}

/// Whether an I/O error means "try again later".
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Whether an I/O error means "try again now".
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// The outcome of one read.
pub enum ReadResult {
    /// Bytes were read.
    Data,
    /// The peer finished sending.
    Eof,
    /// Nothing to read now (readiness cleared).
    Blocked,
}

impl Sock {
    /// A freshly accepted or connected socket: assume nothing until the poller says so.
    pub fn new(s: TcpStream) -> Sock {
        Sock {
            s,
            readable: false,
            writable: false,
            read_closed: false,
        }
    }

    /// Records an event's readiness. Errors and hang-ups count as both: the next read or
    /// write reports them.
    pub fn note(&mut self, ev: &Event) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
        }
        if ev.is_read_closed() || ev.is_error() {
            self.read_closed = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.writable = true;
        }
    }

    /// One read into `buf` (which must have room).
    pub fn read_into(&mut self, buf: &mut Buf) -> io::Result<ReadResult> {
        loop {
            return match buf.read_from(&mut self.s) {
                Ok((0, _)) => Ok(ReadResult::Eof),
                Ok((n, asked)) => {
                    // A short read emptied the socket: edge-triggered epoll reports the next
                    // arrival, so the read that would only say EAGAIN is saved.
                    if n < asked && !self.read_closed {
                        self.readable = false;
                    }
                    Ok(ReadResult::Data)
                }
                Err(e) if would_block(&e) => {
                    self.readable = false;
                    Ok(ReadResult::Blocked)
                }
                Err(e) if interrupted(&e) => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// One write of `data`; 0 when the socket cannot take more now (readiness cleared).
    pub fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        loop {
            return match self.s.write(data) {
                Ok(0) if !data.is_empty() => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    // A short write filled the socket buffer: wait for the next edge.
                    if n < data.len() {
                        self.writable = false;
                    }
                    Ok(n)
                }
                Err(e) if would_block(&e) => {
                    self.writable = false;
                    Ok(0)
                }
                Err(e) if interrupted(&e) => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// One vectored write of `a` then `b` (a head and the body after it: one syscall, one
    /// segment); 0 when the socket cannot take more now.
    pub fn write2(&mut self, a: &[u8], b: &[u8]) -> io::Result<usize> {
        if a.is_empty() {
            return self.write_some(b);
        }
        if b.is_empty() {
            return self.write_some(a);
        }
        let total = a.len() + b.len();
        loop {
            return match self
                .s
                .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if n < total {
                        self.writable = false;
                    }
                    Ok(n)
                }
                Err(e) if would_block(&e) => {
                    self.writable = false;
                    Ok(0)
                }
                Err(e) if interrupted(&e) => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Writes from `buf` until it is empty or the socket is full; true if anything moved.
    pub fn flush(&mut self, buf: &mut Buf) -> io::Result<bool> {
        let mut progress = false;
        while !buf.is_empty() && self.writable {
            let n = self.write_some(buf.data())?;
            buf.consume(n);
            progress |= n > 0;
        }
        Ok(progress)
    }

    /// Whether a non-blocking connect has completed: Ok(true) connected, Ok(false) still in
    /// progress, Err the connect failed.
    pub fn connect_done(&mut self) -> io::Result<bool> {
        if let Some(e) = self.s.take_error()? {
            return Err(e);
        }
        match self.s.peer_addr() {
            Ok(_) => Ok(true),
            // Not yet: a spurious wake-up; a failure shows up in take_error.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One direction of a relay: bytes read from `from` wait in `buf` until `to` takes them.
/// The buffer holds at most one buffer's worth (backpressure), and is handed back to the
/// pool whenever it runs empty so an idle tunnel holds no memory.
pub struct Half {
    /// Bytes read, not yet written.
    pub buf: Option<Buf>,
    /// The reading side reached end of stream.
    pub eof: bool,
    /// The writing side was shut down (after eof and an empty buffer).
    pub shut: bool,
}

impl Half {
    /// A direction with nothing pending.
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
        from: &mut Sock,
        to: &mut Sock,
        pool: &mut BufPool,
    ) -> io::Result<bool> {
        let mut progress = false;
        loop {
            let mut moved = false;
            if let Some(b) = self.buf.as_mut()
                && !b.is_empty()
                && to.writable
            {
                moved |= to.flush(b)?;
            }
            let pending = self.buf.as_ref().map_or(0, Buf::len);
            if !self.eof && from.readable && pending < super::buffer::BUF_SIZE {
                let b = self.buf.get_or_insert_with(|| pool.get());
                match from.read_into(b)? {
                    ReadResult::Data => moved = true,
                    ReadResult::Eof => {
                        self.eof = true;
                        moved = true;
                    }
                    ReadResult::Blocked => {}
                }
            }
            if self.eof && !self.shut && self.buf.as_ref().is_none_or(Buf::is_empty) {
                // Half-close: the peer finished sending, so does our side of the other peer.
                let _ = to.s.shutdown(Shutdown::Write);
                self.shut = true;
                moved = true;
            }
            if !moved {
                break;
            }
            progress = true;
        }
        pool.put_if_empty(&mut self.buf);
        Ok(progress)
    }
}
