//! A non-blocking `GET /healthz` against a worker, driven by the supervisor's loop: it decides
//! when a new worker is healthy enough to join the backend set.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::{Interest, Registry, Token};

/// Most response bytes read: the status line is all a probe needs.
const MAX_READ: usize = 4096;

/// The outcome of a probe so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// No answer yet.
    Pending,
    /// `200` on the status line.
    Healthy,
    /// Refused, closed, another status, or a broken answer.
    Failed(String),
}

/// One health check in flight.
#[derive(Debug)]
pub struct Probe {
    stream: mio::net::TcpStream,
    /// The worker port it checks (the worker slot's key).
    pub port: u16,
    /// The worker slot's launch generation it belongs to.
    pub generation: u64,
    /// Given up at this instant.
    pub deadline: Instant,
    request: Vec<u8>,
    written: usize,
    response: Vec<u8>,
}

impl Probe {
    /// Starts connecting to `addr`.
    pub fn start(
        addr: SocketAddr,
        path: &str,
        registry: &Registry,
        token: Token,
        port: u16,
        generation: u64,
        deadline: Instant,
    ) -> io::Result<Probe> {
        let mut stream = mio::net::TcpStream::connect(addr)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Probe {
            stream,
            port,
            generation,
            deadline,
            request: format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: goloadbalancer-supervisor\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            written: 0,
            response: Vec::new(),
        })
    }

    /// Advances on readiness (or on a timer tick: it is cheap to call spuriously).
    pub fn advance(&mut self, now: Instant) -> ProbeResult {
        match self.step() {
            ProbeResult::Pending if now >= self.deadline => ProbeResult::Failed("timed out".into()),
            r => r,
        }
    }

    fn step(&mut self) -> ProbeResult {
        if let Ok(Some(e)) = self.stream.take_error() {
            return ProbeResult::Failed(e.to_string());
        }
        while self.written < self.request.len() {
            match self.stream.write(&self.request[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if is_not_yet(&e) => return ProbeResult::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ProbeResult::Failed(e.to_string()),
            }
        }
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return self.verdict(true),
                Ok(n) => {
                    self.response.extend_from_slice(&buf[..n]);
                    if self.response.len() >= MAX_READ {
                        return self.verdict(true);
                    }
                }
                Err(e) if is_not_yet(&e) => return self.verdict(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ProbeResult::Failed(e.to_string()),
            }
        }
    }

    /// Judges the status line once it is complete (or the peer closed).
    fn verdict(&self, ended: bool) -> ProbeResult {
        let Some(end) = self.response.windows(2).position(|w| w == b"\r\n") else {
            return if ended {
                ProbeResult::Failed("closed without an answer".into())
            } else {
                ProbeResult::Pending
            };
        };
        let line = String::from_utf8_lossy(&self.response[..end]);
        let mut parts = line.split(' ');
        let version = parts.next().unwrap_or("");
        let status = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return ProbeResult::Failed(format!("not HTTP: {line:?}"));
        }
        if status == "200" {
            ProbeResult::Healthy
        } else {
            ProbeResult::Failed(format!("status {status}"))
        }
    }

    /// Deregisters the stream (before dropping it).
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}

/// Connection not established yet, or no data yet.
fn is_not_yet(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run_probe(reply: &'static [u8]) -> ProbeResult {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply);
            }
        });
        let mut poll = mio::Poll::new().expect("poll");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut probe = Probe::start(addr, "/healthz", poll.registry(), Token(1), 1, 0, deadline)
            .expect("start");
        let mut events = mio::Events::with_capacity(8);
        let result = loop {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
            match probe.advance(Instant::now()) {
                ProbeResult::Pending => continue,
                r => break r,
            }
        };
        let _ = server.join();
        result
    }

    #[test]
    fn ok_is_healthy() {
        assert_eq!(
            run_probe(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            ProbeResult::Healthy
        );
    }

    #[test]
    fn draining_is_not_healthy() {
        assert_eq!(
            run_probe(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"),
            ProbeResult::Failed("status 503".into())
        );
    }

    #[test]
    fn close_without_answer_fails() {
        assert_eq!(
            run_probe(b""),
            ProbeResult::Failed("closed without an answer".into())
        );
    }
}
