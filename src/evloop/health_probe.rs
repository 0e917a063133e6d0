//! One non-blocking health probe, driven by whichever loop owns it (the LB child's checks of
//! its backends, the supervisor's check of a new worker): a connect, then in HTTP mode
//! `GET <path> HTTP/1.1` with `Connection: close` and the response head parsed by
//! `http::parse_response_head` (the same strict parser as for proxied responses); in
//! connect mode the completed connect is the answer.
//!
//! The probe only moves bytes and reports; the caller registers its socket under a token of
//! its choosing, feeds it events, keeps its deadline and decides which status passes.

use std::io::{self, Write};
use std::net::SocketAddr;

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Registry, Token};

use super::ready::{ReadResult, Sock};
use crate::http::{Limits, parse_response_head};

/// Largest response head read; a health endpoint's head is a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// Head limits of a probe's response.
const LIMITS: Limits = Limits {
    max_request_line: MAX_HEAD,
    max_header_bytes: MAX_HEAD,
    max_headers: 100,
};

/// What a probe checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind<'a> {
    /// A completed TCP connect passes (TCP mode).
    Connect,
    /// `GET path` and the response's status.
    Http {
        /// The request target, e.g. `/healthz`.
        path: &'a str,
    },
}

/// Where a probe stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeStatus {
    /// No answer yet.
    Pending,
    /// Connect mode: the connection was established.
    Connected,
    /// HTTP mode: the final response's status code (the caller decides what passes).
    Status(u16),
    /// Refused, reset, closed early, or an answer that is not an HTTP/1.x response head.
    Failed(String),
}

/// One probe in flight.
#[derive(Debug)]
pub struct HealthProbe {
    sock: Sock<TcpStream>,
    connected: bool,
    /// The request (empty in connect mode) and how much of it was written.
    request: Vec<u8>,
    sent: usize,
    /// Response bytes read so far (at most `MAX_HEAD + 1`).
    reply: Vec<u8>,
}

impl HealthProbe {
    /// Starts a non-blocking connect to `addr`; register the probe next.
    pub fn start(addr: SocketAddr, kind: ProbeKind<'_>) -> io::Result<HealthProbe> {
        let stream = TcpStream::connect(addr)?;
        let mut request = Vec::new();
        if let ProbeKind::Http { path } = kind {
            let _ = write!(
                request,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: goloadbalancer-health\r\n\
                 Connection: close\r\n\r\n"
            );
        }
        Ok(HealthProbe {
            sock: Sock::new(stream),
            connected: false,
            request,
            sent: 0,
            reply: Vec::new(),
        })
    }

    /// Registers the socket for read and write, edge-triggered.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.sock.register(registry, token)
    }

    /// Deregisters the socket (before dropping the probe).
    pub fn deregister(&mut self, registry: &Registry) {
        self.sock.deregister(registry);
    }

    /// Readiness on the probe's socket: records it and advances.
    pub fn on_event(&mut self, ev: &Event) -> ProbeStatus {
        self.sock.note(ev);
        self.advance()
    }

    /// Moves what can move now (cheap to call without new readiness) and reports.
    pub fn advance(&mut self) -> ProbeStatus {
        if !self.connected {
            match self.sock.poll_connect() {
                Ok(true) => self.connected = true,
                Ok(false) => return ProbeStatus::Pending,
                Err(e) => return ProbeStatus::Failed(e.to_string()),
            }
            if self.request.is_empty() {
                return ProbeStatus::Connected;
            }
        }
        if let Err(e) = self.sock.write_from(&self.request, &mut self.sent) {
            return ProbeStatus::Failed(e.to_string());
        }
        let mut chunk = [0u8; 4096];
        let mut ended = false;
        while self.sock.readable && self.reply.len() <= MAX_HEAD {
            let room = (MAX_HEAD + 1 - self.reply.len()).min(chunk.len());
            match self.sock.read(&mut chunk[..room]) {
                Ok(ReadResult::Data(n)) => self.reply.extend_from_slice(&chunk[..n]),
                Ok(ReadResult::Blocked) => break,
                Ok(ReadResult::Eof) => {
                    ended = true;
                    break;
                }
                Err(e) => return ProbeStatus::Failed(e.to_string()),
            }
        }
        self.judge(ended)
    }

    /// The status of the first final response head, once complete.
    fn judge(&mut self, ended: bool) -> ProbeStatus {
        loop {
            match parse_response_head(&self.reply, false, &LIMITS) {
                Ok(Some(head)) if head.is_interim() => {
                    // A 1xx before the answer: skip it, the final head follows.
                    self.reply.drain(..head.head_len);
                }
                Ok(Some(head)) => return ProbeStatus::Status(head.status),
                Ok(None) if ended => {
                    return ProbeStatus::Failed("closed before a complete response head".into());
                }
                Ok(None) => return ProbeStatus::Pending,
                Err(e) => return ProbeStatus::Failed(e.message().to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    /// Serves one connection: reads the request, writes `reply` in pieces, then closes.
    fn server(reply: &'static [&'static [u8]]) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            for piece in reply {
                let _ = s.write_all(piece);
                std::thread::sleep(Duration::from_millis(5));
            }
            req
        });
        (addr, handle)
    }

    fn run(addr: SocketAddr, kind: ProbeKind<'_>) -> ProbeStatus {
        let mut poll = mio::Poll::new().unwrap();
        let mut probe = match HealthProbe::start(addr, kind) {
            Ok(p) => p,
            Err(e) => return ProbeStatus::Failed(e.to_string()),
        };
        probe.register(poll.registry(), Token(3)).unwrap();
        let mut events = mio::Events::with_capacity(8);
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for ev in events.iter() {
                match probe.on_event(ev) {
                    ProbeStatus::Pending => {}
                    done => {
                        probe.deregister(poll.registry());
                        return done;
                    }
                }
            }
        }
        panic!("probe never concluded");
    }

    #[test]
    fn ok_answer_gives_its_status_and_the_request_is_a_health_get() {
        let (addr, srv) = server(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]);
        let got = run(addr, ProbeKind::Http { path: "/healthz" });
        assert_eq!(got, ProbeStatus::Status(200));
        let req = String::from_utf8(srv.join().unwrap()).unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
    }

    #[test]
    fn unavailable_is_a_status_not_a_failure() {
        let (addr, srv) =
            server(&[b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"]);
        assert_eq!(
            run(addr, ProbeKind::Http { path: "/" }),
            ProbeStatus::Status(503)
        );
        srv.join().unwrap();
    }

    #[test]
    fn head_split_across_writes_and_interim_skipped() {
        let (addr, srv) = server(&[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2",
            b"04 No Content\r\n",
            b"X: y\r\n\r\n",
        ]);
        assert_eq!(
            run(addr, ProbeKind::Http { path: "/" }),
            ProbeStatus::Status(204)
        );
        srv.join().unwrap();
    }

    #[test]
    fn garbage_fails() {
        let (addr, srv) = server(&[b"SSH-2.0-OpenSSH_9.2\r\n\r\n"]);
        assert!(matches!(
            run(addr, ProbeKind::Http { path: "/" }),
            ProbeStatus::Failed(_)
        ));
        srv.join().unwrap();
    }

    #[test]
    fn close_without_answer_fails() {
        let (addr, srv) = server(&[]);
        assert_eq!(
            run(addr, ProbeKind::Http { path: "/" }),
            ProbeStatus::Failed("closed before a complete response head".into())
        );
        srv.join().unwrap();
    }

    #[test]
    fn close_after_a_partial_head_fails() {
        let (addr, srv) = server(&[b"HTTP/1.1 200 OK\r\n"]);
        assert_eq!(
            run(addr, ProbeKind::Http { path: "/" }),
            ProbeStatus::Failed("closed before a complete response head".into())
        );
        srv.join().unwrap();
    }

    #[test]
    fn endless_head_fails_at_the_limit() {
        static BIG: [u8; 40 * 1024] = [b'a'; 40 * 1024];
        static PIECES: [&[u8]; 2] = [b"HTTP/1.1 200 OK\r\nX-Pad: ", &BIG];
        let (addr, srv) = server(&PIECES);
        assert!(matches!(
            run(addr, ProbeKind::Http { path: "/" }),
            ProbeStatus::Failed(_)
        ));
        srv.join().unwrap();
    }

    #[test]
    fn connect_mode_and_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(run(addr, ProbeKind::Connect), ProbeStatus::Connected);
        drop(listener);
        assert!(matches!(
            run(addr, ProbeKind::Connect),
            ProbeStatus::Failed(_)
        ));
    }
}
