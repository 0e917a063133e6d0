//! A non-blocking socket with its readiness remembered. Every socket is registered once, for
//! read and write, edge-triggered: epoll reports a change once, so the socket keeps what it
//! was told until a read or write shows it used up (WouldBlock, or a short read or write).
//! Re-enabling a direction after backpressure then needs no syscall, and a loop never polls
//! for a readiness it cannot use.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::event::{Event, Source};
use mio::{Interest, Registry, Token};

/// Whether an I/O error means "try again later".
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Whether an I/O error means "try again now".
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// The socket calls a [`Sock`] needs beyond reading and writing.
pub trait Stream: Read + Write {
    /// Shuts down the write side (our FIN).
    fn shutdown_write(&self) -> io::Result<()>;
    /// The pending socket error (SO_ERROR), cleared by the call.
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

impl Stream for mio::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        mio::net::TcpStream::take_error(self)
    }
}

impl Stream for mio::net::UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        mio::net::UnixStream::take_error(self)
    }
}

/// The outcome of one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// This many bytes were read (more than 0).
    Data(usize),
    /// The peer finished sending.
    Eof,
    /// Nothing to read now (readiness cleared).
    Blocked,
}

/// A socket and what the poller last said about it.
#[derive(Debug)]
pub struct Sock<S> {
    /// The socket (register it with the poller through this field).
    pub io: S,
    /// A read may return data (or EOF, or an error).
    pub readable: bool,
    /// A write may make progress.
    pub writable: bool,
    /// The peer's FIN (or an error) was reported: reads must go on until they say so, as no
    /// further edge will come.
    pub read_closed: bool,
}

impl<S: Read + Write> Sock<S> {
    /// A freshly accepted or connected socket: nothing assumed until the poller says so.
    pub fn new(io: S) -> Sock<S> {
        Sock {
            io,
            readable: false,
            writable: false,
            read_closed: false,
        }
    }

    /// Records an event's readiness. Errors and hang-ups count as both: the next read or
    /// write reports them.
    pub fn note(&mut self, ev: &Event) {
        self.note_flags(
            ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            ev.is_writable() || ev.is_write_closed() || ev.is_error(),
            ev.is_read_closed() || ev.is_error(),
        );
    }

    /// Records readiness given as flags (what [`Sock::note`] reads from an event).
    pub fn note_flags(&mut self, readable: bool, writable: bool, read_closed: bool) {
        self.readable |= readable;
        self.writable |= writable;
        self.read_closed |= read_closed;
    }

    /// One read through `read`, which returns (bytes read, bytes it asked for): a short read
    /// emptied the socket, so readiness is cleared without the read that would only say
    /// EAGAIN (unless the peer's FIN was already reported: no further edge would come).
    pub fn read_by(
        &mut self,
        mut read: impl FnMut(&mut S) -> io::Result<(usize, usize)>,
    ) -> io::Result<ReadResult> {
        loop {
            return match read(&mut self.io) {
                Ok((0, _)) => Ok(ReadResult::Eof),
                Ok((n, asked)) => {
                    if n < asked && !self.read_closed {
                        self.readable = false;
                    }
                    Ok(ReadResult::Data(n))
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

    /// One read into `dst` (which must not be empty: a read of 0 bytes means EOF).
    pub fn read(&mut self, dst: &mut [u8]) -> io::Result<ReadResult> {
        let asked = dst.len();
        self.read_by(|s| s.read(dst).map(|n| (n, asked)))
    }

    /// One write of `data`; 0 when the socket cannot take more now (readiness cleared).
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write2(data, &[])
    }

    /// One vectored write of `a` then `b` (a head and the body after it: one syscall, one
    /// segment); 0 when the socket cannot take more now (readiness cleared).
    pub fn write2(&mut self, a: &[u8], b: &[u8]) -> io::Result<usize> {
        let total = a.len() + b.len();
        if total == 0 {
            return Ok(0);
        }
        loop {
            let res = if b.is_empty() {
                self.io.write(a)
            } else if a.is_empty() {
                self.io.write(b)
            } else {
                self.io.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            };
            return match res {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    // A short write filled the socket buffer: wait for the next edge.
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

    /// Writes `data` from `*pos` on until it is all written or the socket is full; true if
    /// anything moved.
    pub fn write_from(&mut self, data: &[u8], pos: &mut usize) -> io::Result<bool> {
        let mut moved = false;
        while *pos < data.len() && self.writable {
            let n = self.write(&data[*pos..])?;
            *pos += n;
            moved |= n > 0;
        }
        Ok(moved)
    }
}

impl<S: Source> Sock<S> {
    /// Registers the socket once, for read and write, edge-triggered.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.io, token, Interest::READABLE | Interest::WRITABLE)
    }

    /// Deregisters the socket (before dropping it; an error only means it was not
    /// registered).
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.io);
    }
}

impl<S: Stream> Sock<S> {
    /// Shuts down the write side.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.io.shutdown_write()
    }
}

impl Sock<mio::net::TcpStream> {
    /// Whether a non-blocking connect has completed: Ok(true) connected, Ok(false) still in
    /// progress (a spurious wake-up), Err the connect failed.
    fn connect_done(&mut self) -> io::Result<bool> {
        if let Some(e) = self.io.take_error()? {
            return Err(e);
        }
        match self.io.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Advances a non-blocking connect on readiness (the one connect-completion step of
    /// every loop): Ok(true) connected, Ok(false) still in progress (readiness is forgotten
    /// until the next edge, so a spurious wake-up does not spin), Err the connect failed.
    pub fn poll_connect(&mut self) -> io::Result<bool> {
        if !self.writable && !self.readable {
            return Ok(false);
        }
        let done = self.connect_done()?;
        if !done {
            self.readable = false;
            self.writable = false;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sock<mio::net::UnixStream>, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Sock::new(mio::net::UnixStream::from_std(a)), b)
    }

    #[test]
    fn short_read_and_would_block_clear_readable() {
        let (mut s, mut peer) = pair();
        let mut buf = [0u8; 64];
        s.note_flags(true, true, false);
        assert_eq!(s.read(&mut buf).unwrap(), ReadResult::Blocked);
        assert!(!s.readable);
        peer.write_all(b"hello").unwrap();
        s.note_flags(true, false, false);
        assert_eq!(s.read(&mut buf).unwrap(), ReadResult::Data(5));
        assert!(!s.readable, "a short read emptied the socket");
        // A full read keeps the readiness: more may be there.
        peer.write_all(&[1u8; 64]).unwrap();
        s.note_flags(true, false, false);
        assert_eq!(s.read(&mut buf).unwrap(), ReadResult::Data(64));
        assert!(s.readable);
    }

    #[test]
    fn after_fin_reads_go_on_until_eof() {
        let (mut s, mut peer) = pair();
        let mut buf = [0u8; 64];
        peer.write_all(b"last").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        s.note_flags(true, false, true);
        assert_eq!(s.read(&mut buf).unwrap(), ReadResult::Data(4));
        assert!(s.readable, "no edge will come after the FIN: keep reading");
        assert_eq!(s.read(&mut buf).unwrap(), ReadResult::Eof);
    }

    #[test]
    fn writes_until_full_then_wait_for_the_edge() {
        let (mut s, mut peer) = pair();
        s.note_flags(false, true, false);
        let data = vec![7u8; 4 << 20];
        let mut pos = 0;
        assert!(s.write_from(&data, &mut pos).unwrap());
        assert!(pos > 0 && pos < data.len(), "the socket buffer filled up");
        assert!(!s.writable);
        assert_eq!(s.write(b"x").unwrap(), 0, "a full socket takes nothing");
        peer.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 16];
        while peer.read(&mut sink).is_ok() {}
        s.note_flags(false, true, false);
        assert_eq!(s.write2(b"ab", b"cd").unwrap(), 4);
        assert!(s.writable);
        s.shutdown_write().unwrap();
    }

    #[test]
    fn error_helpers() {
        assert!(would_block(&io::ErrorKind::WouldBlock.into()));
        assert!(!would_block(&io::ErrorKind::Interrupted.into()));
        assert!(interrupted(&io::ErrorKind::Interrupted.into()));
    }
}
