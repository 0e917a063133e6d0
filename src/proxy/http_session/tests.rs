//! The session state machine driven directly over loopback socket pairs registered with mio:
//! one session, one backend listener, the loop's dispatch done by hand. Time is the
//! context's clock, moved forward by the test, so timeouts fire without waiting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use super::{Flow, HttpSession, State};
use crate::config::ProxySettings;
use crate::evloop::{Key, Slab, Sock};
use crate::proxy::context::{LoopContext, TimerKey};
use crate::proxy::tokens::{self, Target};

/// Loop iterations a test waits for a condition (each polls for at most 10 ms).
const MAX_TURNS: usize = 500;

/// One session, its loop context and the client's end of the connection.
struct Harness {
    poll: Poll,
    events: Events,
    ctx: LoopContext,
    session: Option<HttpSession>,
    /// The test's end of the client connection.
    client: TcpStream,
    /// Bytes the client received so far.
    received: Vec<u8>,
}

fn listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// An address nothing listens on (a listener bound then closed).
fn closed_port() -> SocketAddr {
    listener().local_addr().unwrap()
}

impl Harness {
    fn new(backends: &[SocketAddr], settings: ProxySettings) -> Harness {
        let (poll, mut ctx) = LoopContext::for_tests(backends, settings);
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        let (accepted, peer) = front.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut sock = Sock::new(mio::net::TcpStream::from_std(accepted));
        let key: Key = Slab::<()>::new().insert(());
        sock.register(&ctx.registry, tokens::entry(key)).unwrap();
        let session = HttpSession::new(&mut ctx, key, sock, peer);
        Harness {
            poll,
            events: Events::with_capacity(64),
            ctx,
            session: Some(session),
            client,
            received: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).unwrap();
    }

    /// One loop iteration: poll, dispatch to the session, fire due timers, collect what the
    /// client received.
    fn turn(&mut self) {
        self.poll
            .poll(&mut self.events, Some(Duration::from_millis(10)))
            .unwrap();
        self.ctx.now = self.ctx.now.max(Instant::now());
        let events: Vec<_> = self.events.iter().map(|e| (e.token(), e.clone())).collect();
        for (token, ev) in events {
            let Some(s) = self.session.as_mut() else {
                break;
            };
            let flow = match tokens::target(token) {
                Target::Entry(_) => s.client_event(&mut self.ctx, &ev),
                Target::Upstream(key) if self.ctx.upstreams.owner(key).is_some() => {
                    s.upstream_event(&mut self.ctx, &ev)
                }
                Target::Upstream(key) => {
                    self.ctx
                        .upstreams
                        .pooled_event(&mut self.ctx.backends, key, &ev);
                    Flow::Keep
                }
                Target::Reserved(_) => Flow::Keep,
            };
            self.settle(flow);
        }
        self.fire_timers();
        self.collect();
    }

    fn fire_timers(&mut self) {
        while let Some((at, key)) = self.ctx.timers.pop_due(self.ctx.now) {
            let (TimerKey::Entry(_), Some(s)) = (key, self.session.as_mut()) else {
                continue;
            };
            let flow = s.timer(&mut self.ctx, at);
            self.settle(flow);
        }
    }

    fn settle(&mut self, flow: Flow) {
        if flow == Flow::Close
            && let Some(s) = self.session.take()
        {
            s.close(&mut self.ctx);
        }
    }

    fn collect(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.client.read(&mut buf) {
            if n == 0 {
                break;
            }
            self.received.extend_from_slice(&buf[..n]);
        }
    }

    /// Turns the loop until `done` holds (bounded).
    fn until(&mut self, what: &str, mut done: impl FnMut(&mut Harness) -> bool) {
        for _ in 0..MAX_TURNS {
            if done(self) {
                return;
            }
            self.turn();
        }
        panic!("never happened: {what}");
    }

    /// Moves the clock `ms` forward and fires what became due.
    fn advance(&mut self, ms: u64) {
        self.ctx.now += Duration::from_millis(ms);
        self.fire_timers();
        self.collect();
    }

    /// Whether the client received `needle`.
    fn got(&self, needle: &str) -> bool {
        String::from_utf8_lossy(&self.received).contains(needle)
    }

    fn state(&self) -> Option<&State> {
        self.session.as_ref().map(|s| &s.state)
    }

    fn in_flight(&self) -> u64 {
        self.ctx.backends.metrics(&self.ctx.policies)[0].in_flight
    }
}

/// Accepts the upstream connection the session opens to `backend` and reads its request
/// head, driving the harness meanwhile.
fn backend_accept(h: &mut Harness, backend: &TcpListener) -> (TcpStream, String) {
    let mut conn = None;
    h.until("the upstream connection", |_| {
        conn = backend.accept().ok().map(|(s, _)| s);
        conn.is_some()
    });
    let mut conn = conn.unwrap();
    conn.set_nonblocking(true).unwrap();
    let mut head = Vec::new();
    h.until("the upstream request head", |_| {
        let mut buf = [0u8; 4096];
        if let Ok(n) = conn.read(&mut buf) {
            head.extend_from_slice(&buf[..n]);
        }
        head.windows(4).any(|w| w == b"\r\n\r\n")
    });
    (conn, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn keep_alive_exchange_returns_to_head_and_pools_the_upstream() {
    let backend = listener();
    let mut h = Harness::new(&[backend.local_addr().unwrap()], ProxySettings::default());
    assert!(h.session.as_ref().unwrap().is_idle());
    h.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (mut up, head) = backend_accept(&mut h, &backend);
    assert!(head.starts_with("GET /a HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1"), "{head}");
    assert!(matches!(h.state(), Some(State::Exchange(_))));
    assert_eq!(h.in_flight(), 1);
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .unwrap();
    h.until("the response", |h| h.got("\r\n\r\nok"));
    h.until("back to Head", |h| {
        matches!(h.state(), Some(State::Head { .. }))
    });
    assert!(h.session.as_ref().unwrap().is_idle());
    assert_eq!(h.in_flight(), 0);
    assert_eq!(h.ctx.backends[0].pooled(), 1);
    let m = &h.ctx.backends.metrics(&h.ctx.policies)[0];
    assert_eq!(m.responses[1], 1, "a 2xx recorded");
}

#[test]
fn a_bad_head_is_answered_then_closing_lingers_until_the_client_closes() {
    let backend = listener();
    let mut h = Harness::new(&[backend.local_addr().unwrap()], ProxySettings::default());
    h.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n");
    h.until("the 400", |h| h.got("HTTP/1.1 400 "));
    assert!(matches!(h.state(), Some(State::Closing { shut: true })));
    assert!(backend.accept().is_err(), "no backend was contacted");
    h.client.shutdown(std::net::Shutdown::Write).unwrap();
    h.until("the session closes", |h| h.session.is_none());
}

#[test]
fn a_refused_connect_ejects_the_backend_and_answers_503() {
    let mut h = Harness::new(&[closed_port()], ProxySettings::default());
    h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    h.until("the 503", |h| h.got("HTTP/1.1 503 "));
    let m = &h.ctx.backends.metrics(&h.ctx.policies)[0];
    assert_eq!((m.in_flight, m.failures, m.healthy), (0, 1, false));
}

#[test]
fn a_silent_backend_gets_504_when_the_response_timeout_fires() {
    let backend = listener();
    let mut h = Harness::new(&[backend.local_addr().unwrap()], ProxySettings::default());
    h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_up, _) = backend_accept(&mut h, &backend);
    let timeout = h.ctx.settings.response_timeout_ms;
    h.advance(timeout + 1);
    h.until("the 504", |h| h.got("HTTP/1.1 504 "));
    let m = &h.ctx.backends.metrics(&h.ctx.policies)[0];
    assert_eq!((m.in_flight, m.failures, m.healthy), (0, 1, true));
    assert!(matches!(h.state(), Some(State::Closing { .. })));
}

#[test]
fn a_pooled_connection_closed_by_the_backend_is_retried_on_a_fresh_one() {
    let backend = listener();
    let mut h = Harness::new(&[backend.local_addr().unwrap()], ProxySettings::default());
    h.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
    let (mut up, _) = backend_accept(&mut h, &backend);
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    h.until("the first response", |h| h.got("200 OK"));
    h.until("pooled", |h| h.ctx.backends[0].pooled() == 1);
    // The request goes out on the pooled connection; the backend closes it unanswered.
    h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut head = Vec::new();
    h.until("the second request on the pooled connection", |_| {
        let mut buf = [0u8; 1024];
        if let Ok(n) = up.read(&mut buf) {
            head.extend_from_slice(&buf[..n]);
        }
        head.ends_with(b"\r\n\r\n")
    });
    drop(up);
    let (mut fresh, head) = backend_accept(&mut h, &backend);
    assert!(head.starts_with("GET /2 "), "{head}");
    fresh
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        .unwrap();
    h.until("the second response", |h| h.got("two"));
    let m = &h.ctx.backends.metrics(&h.ctx.policies)[0];
    assert_eq!((m.failures, m.healthy, m.responses[1]), (0, true, 2));
}

#[test]
fn a_101_turns_the_exchange_into_a_tunnel() {
    let backend = listener();
    let mut h = Harness::new(&[backend.local_addr().unwrap()], ProxySettings::default());
    h.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    let (mut up, head) = backend_accept(&mut h, &backend);
    assert!(head.contains("Upgrade: websocket"), "{head}");
    up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhello")
        .unwrap();
    h.until("the 101 and the first tunnel bytes", |h| {
        h.got("\r\n\r\nhello")
    });
    assert!(matches!(h.state(), Some(State::Tunnel(_))));
    assert_eq!(h.in_flight(), 0, "the lease ended with the 101");
    h.send(b"ping");
    let mut got = Vec::new();
    h.until("client bytes upstream", |_| {
        let mut buf = [0u8; 64];
        if let Ok(n) = up.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got == b"ping"
    });
    drop(up);
    h.client.shutdown(std::net::Shutdown::Write).unwrap();
    h.until("the tunnel closes", |h| h.session.is_none());
}

#[test]
fn a_client_gone_mid_body_ends_the_lease_without_blaming_the_backend() {
    let backend = listener();
    let mut h = Harness::new(&[backend.local_addr().unwrap()], ProxySettings::default());
    h.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npart");
    let (_up, _) = backend_accept(&mut h, &backend);
    assert_eq!(h.in_flight(), 1);
    h.client.shutdown(std::net::Shutdown::Both).unwrap();
    h.until("the session closes", |h| h.session.is_none());
    let m = &h.ctx.backends.metrics(&h.ctx.policies)[0];
    assert_eq!((m.in_flight, m.failures, m.healthy), (0, 0, true));
}
