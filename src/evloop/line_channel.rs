//! A channel of typed JSON messages, one per line, over a non-blocking unix socket: the
//! control channel between the supervisor and an LB child (both ends use this type, with
//! the message directions swapped).
//!
//! One limit, one behaviour: a line longer than [`MAX_LINE`] is a protocol error; it is
//! logged and the channel closes (the supervisor replaces a child whose channel closed; a
//! child whose channel closed drains). Output is bounded too: [`LineChannel::send`] refuses
//! a message that would queue more than [`MAX_QUEUED`] bytes towards a peer that does not
//! read. A line that is not a valid message is handed to the caller as a [`BadLine`] (the
//! channel stays open: the peer may be a newer version).

use std::io;
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;

use mio::event::Event;
use mio::{Registry, Token};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ready::{ReadResult, Sock};

/// Longest line accepted, newline excluded (a backend set of 10,000 workers is about 1 MiB).
pub const MAX_LINE: usize = 4 << 20;
/// Most bytes queued towards a peer that does not read (two longest lines).
pub const MAX_QUEUED: usize = 2 * MAX_LINE;
/// Bytes of a bad line quoted in its error.
const QUOTED: usize = 200;

/// A line that did not parse as a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// The parser's error and the start of the line.
    pub error: String,
    /// The line's `seq` field, when it is a JSON object with an unsigned `seq` (so the
    /// receiver can answer it).
    pub seq: Option<u64>,
}

/// One end of a line channel: receives `In`, sends `Out`.
pub struct LineChannel<In, Out> {
    sock: Sock<mio::net::UnixStream>,
    /// Received bytes after the last complete line.
    rbuf: Vec<u8>,
    /// Leading bytes of `rbuf` already searched for a newline (none there).
    scanned: usize,
    /// Queued output; `wpos` bytes of it are written.
    wbuf: Vec<u8>,
    wpos: usize,
    /// EOF, an error, or an over-long line: nothing more is read or written.
    closed: bool,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for LineChannel<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineChannel")
            .field("buffered_in", &self.rbuf.len())
            .field("queued_out", &(self.wbuf.len() - self.wpos))
            .field("closed", &self.closed)
            .finish()
    }
}

impl<In: DeserializeOwned, Out: Serialize> LineChannel<In, Out> {
    /// Wraps one end of a socketpair (made non-blocking here).
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let mut sock = Sock::new(mio::net::UnixStream::from_std(stream));
        // Nothing is known yet; a first flush may write before the first edge arrives.
        sock.writable = true;
        Ok(LineChannel {
            sock,
            rbuf: Vec::new(),
            scanned: 0,
            wbuf: Vec::new(),
            wpos: 0,
            closed: false,
            _types: PhantomData,
        })
    }

    /// Registers the socket for read and write, edge-triggered.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.sock.register(registry, token)
    }

    /// Deregisters the socket (before dropping the channel).
    pub fn deregister(&mut self, registry: &Registry) {
        self.sock.deregister(registry);
    }

    /// Whether the channel is closed (EOF, error, or an over-long line).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Records an event's readiness.
    pub fn note(&mut self, ev: &Event) {
        self.sock.note(ev);
    }

    /// Queues one message as a line and writes what the socket takes now. Err: closed, or
    /// the peer does not read (more than [`MAX_QUEUED`] bytes would wait); the message is
    /// then not queued.
    pub fn send(&mut self, msg: &Out) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "channel closed"));
        }
        let before = self.wbuf.len();
        serde_json::to_writer(&mut self.wbuf, msg).map_err(io::Error::other)?;
        self.wbuf.push(b'\n');
        if self.queued() > MAX_QUEUED {
            self.wbuf.truncate(before);
            return Err(io::Error::other("peer does not read its channel"));
        }
        self.flush()
    }

    /// Writes queued bytes until the socket would block. Err: the channel closed.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "channel closed"));
        }
        match self.sock.write_from(&self.wbuf, &mut self.wpos) {
            Ok(_) => {
                if self.wpos == self.wbuf.len() {
                    self.wbuf.clear();
                    self.wpos = 0;
                } else if self.wpos > MAX_LINE {
                    // Keep the buffer from growing by its written prefix.
                    self.wbuf.drain(..self.wpos);
                    self.wpos = 0;
                }
                Ok(())
            }
            Err(e) => {
                self.close();
                Err(e)
            }
        }
    }

    /// Reads what is available and returns the complete messages in order; lines that are
    /// not valid messages come back as [`BadLine`]. After EOF, an error or an over-long line
    /// the channel is closed (check [`LineChannel::is_closed`]); lines completed before that
    /// are still returned.
    pub fn receive(&mut self) -> Vec<Result<In, BadLine>> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while !self.closed && self.sock.readable {
            match self.sock.read(&mut chunk) {
                Ok(ReadResult::Data(n)) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    self.take_lines(&mut out);
                }
                Ok(ReadResult::Blocked) => break,
                Ok(ReadResult::Eof) | Err(_) => self.close(),
            }
        }
        out
    }

    /// Moves every complete line out of `rbuf`; closes on an over-long partial line.
    fn take_lines(&mut self, out: &mut Vec<Result<In, BadLine>>) {
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(nl) = self.rbuf[from..].iter().position(|&b| b == b'\n') {
            let line = &self.rbuf[start..from + nl];
            start = from + nl + 1;
            from = start;
            if line.len() > MAX_LINE {
                self.too_long(line.len());
                return;
            }
            let line = line.trim_ascii();
            if !line.is_empty() {
                out.push(parse_line(line));
            }
        }
        self.rbuf.drain(..start);
        self.scanned = self.rbuf.len();
        if self.rbuf.len() > MAX_LINE {
            self.too_long(self.rbuf.len());
        }
    }

    fn too_long(&mut self, bytes: usize) {
        crate::warn!(
            "control_line_too_long",
            "bytes={} limit={} action=close",
            bytes,
            MAX_LINE
        );
        self.close();
    }

    fn close(&mut self) {
        // The peer sees EOF at once, even while this end is kept until its owner drops it.
        let _ = self.sock.io.shutdown(std::net::Shutdown::Both);
        self.closed = true;
        self.rbuf = Vec::new();
        self.scanned = 0;
        self.wbuf = Vec::new();
        self.wpos = 0;
    }
}

fn parse_line<In: DeserializeOwned>(line: &[u8]) -> Result<In, BadLine> {
    serde_json::from_slice::<In>(line).map_err(|e| BadLine {
        error: format!(
            "{e}: {}",
            String::from_utf8_lossy(&line[..line.len().min(QUOTED)])
        ),
        seq: serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("seq")?.as_u64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Msg {
        Ping { seq: u64 },
        Text { seq: u64, text: String },
    }

    fn channel() -> (LineChannel<Msg, Msg>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (LineChannel::new(a).unwrap(), b)
    }

    fn readable(ch: &mut LineChannel<Msg, Msg>) {
        ch.sock.note_flags(true, false, false);
    }

    #[test]
    fn messages_both_ways() {
        let (mut ch, mut peer) = channel();
        ch.send(&Msg::Ping { seq: 1 }).unwrap();
        ch.send(&Msg::Text {
            seq: 2,
            text: "a\nb".into(),
        })
        .unwrap();
        assert_eq!(ch.queued(), 0);
        let mut got = vec![0u8; 256];
        let n = peer.read(&mut got).unwrap();
        assert_eq!(
            &got[..n],
            b"{\"type\":\"ping\",\"seq\":1}\n{\"type\":\"text\",\"seq\":2,\"text\":\"a\\nb\"}\n"
        );
        peer.write_all(b"{\"type\":\"ping\",\"seq\":7}\n\n  \r\n")
            .unwrap();
        readable(&mut ch);
        assert_eq!(ch.receive(), vec![Ok(Msg::Ping { seq: 7 })]);
        assert!(!ch.is_closed());
    }

    #[test]
    fn partial_lines_wait_for_their_end() {
        let (mut ch, mut peer) = channel();
        let line = b"{\"type\":\"text\",\"seq\":3,\"text\":\"hello\"}\n";
        for (i, b) in line.iter().enumerate() {
            peer.write_all(&[*b]).unwrap();
            readable(&mut ch);
            let got = ch.receive();
            if i + 1 < line.len() {
                assert!(got.is_empty(), "nothing before the newline (byte {i})");
            } else {
                assert_eq!(
                    got,
                    vec![Ok(Msg::Text {
                        seq: 3,
                        text: "hello".into()
                    })]
                );
            }
        }
    }

    #[test]
    fn bad_line_is_reported_with_its_seq_and_the_channel_stays_open() {
        let (mut ch, mut peer) = channel();
        peer.write_all(
            b"{\"type\":\"nope\",\"seq\":9}\nnot json\n{\"type\":\"ping\",\"seq\":10}\n",
        )
        .unwrap();
        readable(&mut ch);
        let got = ch.receive();
        assert_eq!(got.len(), 3);
        let bad = got[0].as_ref().unwrap_err();
        assert_eq!(bad.seq, Some(9));
        assert!(bad.error.contains("nope"), "{}", bad.error);
        assert_eq!(got[1].as_ref().unwrap_err().seq, None);
        assert_eq!(got[2], Ok(Msg::Ping { seq: 10 }));
        assert!(!ch.is_closed());
    }

    #[test]
    fn over_long_line_closes_after_the_lines_before_it() {
        let (mut ch, peer) = channel();
        let writer = std::thread::spawn(move || {
            let mut peer = peer;
            let _ = peer.write_all(b"{\"type\":\"ping\",\"seq\":1}\n");
            // No newline within the limit; the writer stops when the channel closes.
            let junk = vec![b'x'; 64 * 1024];
            for _ in 0..(MAX_LINE / junk.len() + 2) {
                if peer.write_all(&junk).is_err() {
                    break;
                }
            }
        });
        let mut got = Vec::new();
        while !ch.is_closed() {
            readable(&mut ch);
            got.extend(ch.receive());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, vec![Ok(Msg::Ping { seq: 1 })]);
        assert!(ch.send(&Msg::Ping { seq: 2 }).is_err(), "closed for good");
        writer.join().unwrap();
    }

    #[test]
    fn over_long_complete_line_closes_too() {
        let (mut ch, peer) = channel();
        let writer = std::thread::spawn(move || {
            let mut peer = peer;
            let mut line = vec![b' '; MAX_LINE + 1];
            line.push(b'\n');
            let _ = peer.write_all(&line);
        });
        while !ch.is_closed() {
            readable(&mut ch);
            assert!(ch.receive().is_empty());
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.join().unwrap();
    }

    #[test]
    fn eof_closes_after_the_last_lines() {
        let (mut ch, mut peer) = channel();
        peer.write_all(b"{\"type\":\"ping\",\"seq\":4}\n{\"type\":\"pi")
            .unwrap();
        drop(peer);
        // The event that reports the data after a FIN says so (no further edge would come).
        ch.sock.note_flags(true, false, true);
        assert_eq!(ch.receive(), vec![Ok(Msg::Ping { seq: 4 })]);
        assert!(ch.is_closed());
    }

    #[test]
    fn output_is_bounded_when_the_peer_does_not_read() {
        let (mut ch, _peer) = channel();
        let text = "y".repeat(1 << 20);
        let mut sent = 0;
        let err = loop {
            match ch.send(&Msg::Text {
                seq: sent,
                text: text.clone(),
            }) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100, "never refused");
        };
        assert!(err.to_string().contains("does not read"), "{err}");
        assert!(ch.queued() <= MAX_QUEUED);
        assert!(
            !ch.is_closed(),
            "refusing a message does not close the channel"
        );
    }
}
