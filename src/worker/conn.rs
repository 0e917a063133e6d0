//! One client connection: a state machine over its socket, its input buffer, its queue of
//! [`PendingAnswer`]s (one per parsed request, in arrival order) and its output buffer.
//!
//! Only the front of the queue is ever written, so pipelined answers leave in request order
//! whatever their delays. Reading stops while the queue is full, the input buffer is full or
//! unsent output is above a high-water mark: a client that does not read its answers stops
//! being read (backpressure).
//!
//! States and transitions (each state holds its own data):
//!
//! ```text
//!   Open(Reading) --FIN read--> HalfClosed(Reading) --all answered--> closed
//!        |                              |
//!        +-- bad request, 413, 408, `Connection: close`, drain --+
//!                                                                v
//!   Closing --all answered, write side shut--> Lingering --client FIN or time up--> closed
//! ```
//!
//! `Reading` is where the request stream stands: in a head (`Head`), or in the body of the
//! newest queued request (`Body`, which knows whether another request may follow).

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Registry, Token};

use super::answer::PendingAnswer;
use super::routes::{HEAD_LIMITS, READ_CHUNK, Request, Service};
use super::server::ConnKey;
use crate::evloop::linger::Linger;
use crate::evloop::{Deadline, ReadResult, Sock};
use crate::http::chunked::{ChunkError, ChunkLimits, ChunkedDecoder};
use crate::http::{Framing, parse_request_head};
use crate::sys::log::quote;

/// Requests queued per connection (pipelining depth) before the worker stops reading it.
pub const MAX_PIPELINE: usize = 64;
/// Unsent response bytes above which no further response is queued for writing.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Input buffered per connection: a whole head at the limit plus some, so an oversized head
/// is seen (431) rather than waited on.
const IN_MAX: usize = 16 * 1024 + 4 * 1024;

/// Where a connection stands.
#[derive(Debug)]
enum ConnState {
    /// Reading, parsing and answering requests; the client may send more.
    Open(Reading),
    /// The client finished sending (FIN read): what is buffered is parsed and answered, then
    /// the connection closes.
    HalfClosed(Reading),
    /// No further request is parsed: the queued answers are written (the last one says
    /// `Connection: close`), then the lingering close.
    Closing,
    /// Everything written and the write side shut: input is discarded until the client closes
    /// or the linger time is up (the kit's lingering close).
    Lingering(Linger),
}

/// Where the request stream stands.
#[derive(Debug)]
enum Reading {
    /// Between requests (`since` None) or inside a head whose first byte came at `since`.
    Head { since: Option<Instant> },
    /// Discarding the body of the newest queued request (it is answered once its body is
    /// complete); `then` says what follows it.
    Body { left: BodyLeft, then: AfterBody },
}

/// The rest of a request body.
#[derive(Debug)]
enum BodyLeft {
    /// This many bytes (Content-Length).
    Length(u64),
    /// A chunked body, through its decoder.
    Chunked(ChunkedDecoder),
}

/// What follows a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterBody {
    /// The next request (keep-alive).
    NextRequest,
    /// Nothing: the request said `Connection: close`, or the worker is draining.
    Close,
}

/// What a passed deadline does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDeadline {
    /// A head or body that stalled: answer 408 and close.
    RequestTimeout,
    /// Idle, not reading its answers, or lingering too long: close.
    Close,
}

/// One client connection.
pub struct Conn {
    /// The socket, with the edge-triggered readiness not yet used up.
    sock: Sock<TcpStream>,
    state: ConnState,
    inbuf: Vec<u8>,
    /// Last time bytes moved either way.
    last_progress: Instant,
    queue: VecDeque<PendingAnswer>,
    out: Vec<u8>,
    out_pos: usize,
    /// This connection's deadline in the loop's heap (re-armed lazily).
    pub deadline: Deadline,
    /// Queued in the loop's dirty list.
    pub dirty: bool,
}

impl ConnState {
    /// The request stream, while requests are still parsed.
    fn reading_mut(&mut self) -> Option<&mut Reading> {
        match self {
            ConnState::Open(r) | ConnState::HalfClosed(r) => Some(r),
            ConnState::Closing | ConnState::Lingering(_) => None,
        }
    }

    /// Whether the newest queued request's body is still being received.
    fn in_body(&self) -> bool {
        matches!(
            self,
            ConnState::Open(Reading::Body { .. }) | ConnState::HalfClosed(Reading::Body { .. })
        )
    }
}

impl BodyLeft {
    /// Consumes body bytes from `data`: how many, and whether the body is now complete.
    fn consume(&mut self, data: &[u8]) -> Result<(usize, bool), ChunkError> {
        match self {
            BodyLeft::Length(left) => {
                let take = (data.len() as u64).min(*left);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            BodyLeft::Chunked(dec) => {
                let p = dec.feed(data, &mut |_| {})?;
                Ok((p.consumed, p.done))
            }
        }
    }
}

impl Conn {
    /// A freshly accepted connection (closing at once when the worker drains).
    pub fn new(sock: TcpStream, now: Instant, draining: bool) -> Conn {
        let mut sock = Sock::new(sock);
        // A connected socket takes writes; the first answer need not wait for the edge.
        sock.note_flags(false, true, false);
        Conn {
            sock,
            state: if draining {
                ConnState::Closing
            } else {
                ConnState::Open(Reading::Head { since: None })
            },
            inbuf: Vec::new(),
            last_progress: now,
            queue: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
            deadline: Deadline::none(),
            dirty: false,
        }
    }

    /// Registers the socket under `token` (once, read and write, edge-triggered).
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.sock.register(registry, token)
    }

    /// Deregisters the socket (before it is dropped).
    pub fn deregister(&mut self, registry: &Registry) {
        self.sock.deregister(registry);
    }

    /// Records an event's readiness.
    pub fn note(&mut self, ev: &Event) {
        self.sock.note(ev);
    }

    /// Drain: read what is already received (`readable` again), then no further request.
    pub fn assume_readable(&mut self) {
        self.sock.note_flags(true, false, false);
    }

    /// Drain: no request after the ones parsed (a body being read is still read to its end).
    pub fn stop_reading(&mut self) {
        match &mut self.state {
            ConnState::Open(Reading::Body { then, .. })
            | ConnState::HalfClosed(Reading::Body { then, .. }) => *then = AfterBody::Close,
            ConnState::Open(Reading::Head { .. }) | ConnState::HalfClosed(Reading::Head { .. }) => {
                self.state = ConnState::Closing
            }
            ConnState::Closing | ConnState::Lingering(_) => {}
        }
    }

    /// The queued answer of request `seq`.
    pub fn pending_mut(&mut self, seq: u64) -> Option<&mut PendingAnswer> {
        self.queue.iter_mut().find(|a| a.seq == seq)
    }

    /// Whether request `seq` still waits in this connection's queue.
    pub fn has_pending(&self, seq: u64) -> bool {
        self.queue.iter().any(|a| a.seq == seq)
    }

    /// Sequence numbers of the requests still queued.
    pub fn pending_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.queue.iter().map(|a| a.seq)
    }

    /// Does everything possible now: answers, writes, parses, reads until nothing moves, then
    /// handles a passed deadline or the end of the connection. False = close it now.
    pub fn step(&mut self, key: ConnKey, svc: &mut Service, now: Instant) -> bool {
        if let ConnState::Lingering(linger) = &self.state {
            return linger.keep_open(&mut self.sock, now);
        }
        if !self.pump(key, svc, now) {
            return false;
        }
        if let Some((at, on)) = self.due(svc)
            && now >= at
        {
            return self.expire(on, key, svc, now);
        }
        let answered = self.queue.is_empty() && self.out_pos == self.out.len();
        match self.state {
            ConnState::Closing if answered => self.start_linger(now),
            ConnState::HalfClosed(_) if answered => {
                let _ = self.sock.shutdown_write();
                false
            }
            _ => true,
        }
    }

    /// Moves answers out and requests in until nothing moves; false = the socket failed.
    fn pump(&mut self, key: ConnKey, svc: &mut Service, now: Instant) -> bool {
        loop {
            let mut progress = self.queue_ready_answers(svc, now);
            match self.write_out(now) {
                Ok(moved) => progress |= moved,
                Err(_) => return false,
            }
            progress |= self.parse_requests(key, svc, now);
            match self.read_in(svc, now) {
                Ok(moved) => progress |= moved,
                Err(_) => return false,
            }
            if !progress {
                return true;
            }
        }
    }

    /// Ready answers at the front of the queue go to the output, in order; true if any did.
    fn queue_ready_answers(&mut self, svc: &mut Service, now: Instant) -> bool {
        let mut moved = false;
        while self.out.len() - self.out_pos < OUT_HIGH_WATER {
            let Some(front) = self.queue.front() else {
                break;
            };
            // A request is answered once it is complete: its body read too.
            if !front.is_ready() || (self.queue.len() == 1 && self.state.in_body()) {
                break;
            }
            let Some(answer) = self.queue.pop_front() else {
                break;
            };
            let close = matches!(self.state, ConnState::Closing) && self.queue.is_empty();
            answer.write_to(&mut self.out, &svc.hello, close);
            answer.log_answered(&svc.id, now);
            if let Some(success) = answer.hello_outcome() {
                svc.store
                    .record(success, now.saturating_duration_since(answer.start));
            }
            moved = true;
        }
        moved
    }

    /// Writes pending output; Ok(true) if bytes moved.
    fn write_out(&mut self, now: Instant) -> io::Result<bool> {
        if !self.sock.write_from(&self.out, &mut self.out_pos)? {
            return Ok(false);
        }
        self.last_progress = now;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > 2 * OUT_HIGH_WATER {
                self.out = Vec::new();
            }
        }
        Ok(true)
    }

    /// Reads more input, unless that would outgrow a buffer or the pipeline; Ok(true) if
    /// bytes (or the client's FIN) came.
    fn read_in(&mut self, svc: &mut Service, now: Instant) -> io::Result<bool> {
        let backlog = self.out.len() - self.out_pos;
        if !self.sock.readable
            || !matches!(self.state, ConnState::Open(_))
            || self.queue.len() >= MAX_PIPELINE
            || backlog >= OUT_HIGH_WATER
            || self.inbuf.len() >= IN_MAX
        {
            return Ok(false);
        }
        let room = (IN_MAX - self.inbuf.len()).min(READ_CHUNK);
        match self.sock.read(&mut svc.scratch[..room])? {
            ReadResult::Eof => {
                let state = std::mem::replace(&mut self.state, ConnState::Closing);
                if let ConnState::Open(reading) = state {
                    self.state = ConnState::HalfClosed(reading);
                }
                Ok(true)
            }
            ReadResult::Data(n) => {
                self.inbuf.extend_from_slice(&svc.scratch[..n]);
                self.last_progress = now;
                Ok(true)
            }
            ReadResult::Blocked => Ok(false),
        }
    }

    /// Parses and dispatches every complete request in the input buffer (within the pipeline
    /// limit), discarding bodies; true if anything was consumed.
    fn parse_requests(&mut self, key: ConnKey, svc: &mut Service, now: Instant) -> bool {
        let mut pos = 0;
        let mut progress = false;
        while let Some(reading) = self.state.reading_mut() {
            match reading {
                Reading::Body { left, then } => {
                    let then = *then;
                    match left.consume(&self.inbuf[pos..]) {
                        Ok((n, done)) => {
                            pos += n;
                            progress |= n > 0;
                            if !done {
                                break;
                            }
                            self.end_body(then);
                        }
                        Err(e) => {
                            // The request is not complete: its answer gives way to the error.
                            if let Some(a) = self.queue.pop_back() {
                                svc.stats_waiting.remove(&a.seq);
                            }
                            pos = self.inbuf.len();
                            progress = true;
                            self.refuse(svc.error(now, e.status(), &e.to_string()));
                        }
                    }
                }
                Reading::Head { since } => {
                    if self.queue.len() >= MAX_PIPELINE || pos == self.inbuf.len() {
                        break;
                    }
                    match parse_request_head(&self.inbuf[pos..], &HEAD_LIMITS) {
                        Ok(None) => {
                            since.get_or_insert(now);
                            break;
                        }
                        Ok(Some(head)) => {
                            let req = Request::from_head(&head, &self.inbuf[pos..]);
                            pos += head.head_len;
                            progress = true;
                            self.begin_request(req, key, svc, now);
                        }
                        Err(e) => {
                            pos = self.inbuf.len();
                            progress = true;
                            let status = e.status();
                            crate::debug!(
                                "worker_bad_request",
                                "id={} status={status} reason={}",
                                svc.id,
                                quote(e.message())
                            );
                            self.refuse(svc.error(now, status, e.message()));
                        }
                    }
                }
            }
        }
        self.consume_input(pos);
        progress
    }

    /// Drops the first `n` input bytes (parsed); an empty buffer starts no head clock.
    fn consume_input(&mut self, n: usize) {
        if n > 0 {
            self.inbuf.drain(..n);
            if self.inbuf.is_empty() && self.inbuf.capacity() > IN_MAX {
                self.inbuf = Vec::new();
            }
        }
        if self.inbuf.is_empty()
            && let Some(Reading::Head { since }) = self.state.reading_mut()
        {
            *since = None;
        }
    }

    /// A request body is complete: the next request may follow, or the connection closes.
    fn end_body(&mut self, then: AfterBody) {
        match then {
            AfterBody::NextRequest => self.set_reading(Reading::Head { since: None }),
            AfterBody::Close => self.state = ConnState::Closing,
        }
    }

    /// Replaces the request stream's position (the client side, open or finished, stays).
    fn set_reading(&mut self, next: Reading) {
        if let Some(r) = self.state.reading_mut() {
            *r = next;
        }
    }

    /// Queues a final error answer: nothing further is parsed.
    fn refuse(&mut self, answer: PendingAnswer) {
        self.queue.push_back(answer);
        self.state = ConnState::Closing;
    }

    /// A request head was parsed: queue its answer and move to its body, the next head, or
    /// the close it asked for.
    fn begin_request(&mut self, req: Request, key: ConnKey, svc: &mut Service, now: Instant) {
        let then = if req.keep_alive {
            AfterBody::NextRequest
        } else {
            AfterBody::Close
        };
        let body = match req.body {
            Framing::None | Framing::Close | Framing::Length(0) => None,
            Framing::Length(n) if n > req.body_max() => {
                let mut answer = svc.error(now, 413, "request body too large");
                answer.head_only = req.head_only;
                answer.http10 = req.http10;
                answer.request_id = req.request_id;
                return self.refuse(answer);
            }
            Framing::Length(n) => Some(BodyLeft::Length(n)),
            Framing::Chunked => Some(BodyLeft::Chunked(ChunkedDecoder::new(ChunkLimits {
                max_body: req.body_max(),
                ..ChunkLimits::default()
            }))),
        };
        if body.is_some() && req.expect_continue && self.queue.is_empty() {
            // Every earlier answer is already in `out`: the interim one may follow.
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        self.queue.push_back(svc.answer(&req, key, now));
        match (body, then) {
            (Some(left), then) => self.set_reading(Reading::Body { left, then }),
            (None, AfterBody::NextRequest) => self.set_reading(Reading::Head { since: None }),
            (None, AfterBody::Close) => self.state = ConnState::Closing,
        }
    }

    /// When this connection must have made progress given what it is doing, and what
    /// happens then.
    pub fn due(&self, svc: &Service) -> Option<(Instant, OnDeadline)> {
        let reading = match &self.state {
            ConnState::Lingering(linger) => return Some((linger.until, OnDeadline::Close)),
            // The client is not reading its answers.
            _ if self.out_pos < self.out.len() => {
                return Some((self.last_progress + svc.timeouts.idle, OnDeadline::Close));
            }
            ConnState::Closing => return None,
            ConnState::Open(r) | ConnState::HalfClosed(r) => r,
        };
        match reading {
            Reading::Body { .. } => Some((
                self.last_progress + svc.timeouts.head,
                OnDeadline::RequestTimeout,
            )),
            Reading::Head { since: Some(s) }
                if !self.inbuf.is_empty() && self.queue.len() < MAX_PIPELINE =>
            {
                Some((*s + svc.timeouts.head, OnDeadline::RequestTimeout))
            }
            _ if self.queue.is_empty() => {
                Some((self.last_progress + svc.timeouts.idle, OnDeadline::Close))
            }
            // Waiting only for its own delayed answers.
            _ => None,
        }
    }

    /// Handles a passed deadline: 408 for a stalled head or body (then close), else close.
    fn expire(&mut self, on: OnDeadline, key: ConnKey, svc: &mut Service, now: Instant) -> bool {
        if on == OnDeadline::Close {
            return false;
        }
        crate::debug!(
            "worker_request_timeout",
            "id={} conn={}",
            svc.id,
            key.index()
        );
        if self.state.in_body() {
            // Its body never came: that request is not answered (nor counted).
            if let Some(a) = self.queue.pop_back() {
                svc.stats_waiting.remove(&a.seq);
            }
        }
        self.inbuf.clear();
        self.refuse(svc.error(now, 408, "request not received in time"));
        // Try to write it right away; the connection then closes (lingering).
        self.step(key, svc, now)
    }

    /// Everything is answered: shut the write side and discard input for a while (false:
    /// the socket is already gone, close now).
    fn start_linger(&mut self, now: Instant) -> bool {
        let Some(linger) = Linger::start(&mut self.sock, now) else {
            return false;
        };
        self.state = ConnState::Lingering(linger);
        self.inbuf = Vec::new();
        linger.keep_open(&mut self.sock, now)
    }
}

#[cfg(test)]
mod tests {
    //! The state machine over a loopback socket pair: the test is the client.
    use super::*;
    use crate::evloop::Slab;
    use crate::worker::delay::DelayModel;
    use crate::worker::routes::Timeouts;
    use crate::worker::store::Store;
    use std::io::{Read, Write};
    use std::time::Duration;

    const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

    /// A service on its own database, removed when dropped.
    struct Fixture {
        svc: Service,
        dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn service(name: &str, avg_delay_ms: u64) -> Fixture {
        let dir = std::env::temp_dir().join(format!("glb-conn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let notify = Box::new(|| {});
        let store = Store::start(&dir.join("s.db"), "t", Duration::from_millis(5), notify);
        let model = DelayModel::new(avg_delay_ms, 0.0);
        let timeouts = Timeouts {
            head: HEAD_TIMEOUT,
            idle: Duration::from_secs(60),
        };
        let svc = Service::new("t", model, store.unwrap(), timeouts);
        Fixture { svc, dir }
    }

    /// A connection and the client end of its socket.
    fn pair() -> (Conn, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let conn = Conn::new(TcpStream::from_std(server), Instant::now(), false);
        (conn, client)
    }

    fn key() -> ConnKey {
        Slab::new().insert(())
    }

    /// Steps until `done(conn)` or a close (loopback delivery is quick, not instant);
    /// returns what the last step said.
    fn step_until(c: &mut Conn, svc: &mut Service, done: impl Fn(&Conn) -> bool) -> bool {
        let mut keep = true;
        for _ in 0..100 {
            c.assume_readable();
            keep = c.step(key(), svc, Instant::now());
            if !keep || done(c) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        keep
    }

    /// Sends `bytes`, then [`step_until`].
    fn send_and_step(
        c: &mut Conn,
        svc: &mut Service,
        client: &mut std::net::TcpStream,
        bytes: &[u8],
        done: impl Fn(&Conn) -> bool,
    ) -> bool {
        client.write_all(bytes).unwrap();
        step_until(c, svc, done)
    }

    /// One answer from the client's side: status, lowercased head, body.
    fn read_answer(client: &mut std::net::TcpStream) -> (u16, String, Vec<u8>) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(client.read(&mut byte).unwrap(), 1, "closed inside a head");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        client.read_exact(&mut body).unwrap();
        (status, head, body)
    }

    fn closed_by_server(client: &mut std::net::TcpStream) -> bool {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }

    #[test]
    fn pipelined_requests_then_fin_are_answered_then_closed() {
        let mut fx = service("fin", 0);
        let svc = &mut fx.svc;
        let (mut c, mut client) = pair();
        let two = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /api/v1/hello HTTP/1.1\r\nHost: t\r\n\r\n";
        client.write_all(two).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let keep = step_until(&mut c, svc, |_| false);
        assert!(!keep, "half-closed and all answered: close");
        assert!(matches!(c.state, ConnState::HalfClosed(_)), "{:?}", c.state);
        drop(c);
        let (s1, h1, _) = read_answer(&mut client);
        let (s2, h2, b2) = read_answer(&mut client);
        assert_eq!((s1, s2), (200, 200));
        assert!(!h1.contains("connection: close") && !h2.contains("connection: close"));
        assert_eq!(b2, br#"{"message":"hello from container: t"}"#);
        assert!(closed_by_server(&mut client));
    }

    #[test]
    fn connection_close_with_a_late_body_waits_for_it_then_lingers() {
        let mut fx = service("late", 0);
        let svc = &mut fx.svc;
        let (mut c, mut client) = pair();
        let head = b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 4\r\n\r\n";
        let keep = send_and_step(&mut c, svc, &mut client, head, |c| c.state.in_body());
        assert!(keep);
        assert!(
            matches!(
                c.state,
                ConnState::Open(Reading::Body {
                    then: AfterBody::Close,
                    ..
                })
            ),
            "{:?}",
            c.state
        );
        assert!(c.out.is_empty(), "not answered before its body");
        let (at, on) = c.due(svc).unwrap();
        assert_eq!(on, OnDeadline::RequestTimeout);
        assert!(at <= Instant::now() + HEAD_TIMEOUT);
        let lingering = |c: &Conn| matches!(c.state, ConnState::Lingering(_));
        assert!(send_and_step(&mut c, svc, &mut client, b"abcd", lingering));
        assert!(lingering(&c), "{:?}", c.state);
        let (status, head, _) = read_answer(&mut client);
        assert_eq!(status, 200);
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(
            closed_by_server(&mut client),
            "write side shut after the answer"
        );
        drop(client);
        let gone = !step_until(&mut c, svc, |_| false);
        assert!(gone, "the client closed: the linger ends");
    }

    #[test]
    fn a_stalled_head_gets_408_at_its_deadline() {
        let mut fx = service("stall", 0);
        let svc = &mut fx.svc;
        let (mut c, mut client) = pair();
        let partial = b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\n";
        let started =
            |c: &Conn| matches!(c.state, ConnState::Open(Reading::Head { since: Some(_) }));
        assert!(send_and_step(&mut c, svc, &mut client, partial, started));
        let (at, on) = c.due(svc).unwrap();
        assert_eq!(on, OnDeadline::RequestTimeout);
        assert!(c.step(key(), svc, at - Duration::from_millis(1)), "not yet");
        assert!(c.step(key(), svc, at), "408 written, then the linger");
        assert!(matches!(c.state, ConnState::Lingering(_)), "{:?}", c.state);
        let (status, head, _) = read_answer(&mut client);
        assert_eq!(status, 408);
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    }

    #[test]
    fn no_deadline_while_waiting_for_its_own_delayed_answer() {
        let mut fx = service("wait", 60_000);
        let svc = &mut fx.svc;
        let (mut c, mut client) = pair();
        let hello = b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\n\r\n";
        assert!(send_and_step(&mut c, svc, &mut client, hello, |c| !c
            .queue
            .is_empty()));
        assert_eq!(c.queue.len(), 1);
        assert!(!c.queue[0].is_ready());
        assert_eq!(c.due(svc), None);
        // The drain: no further request, the delayed answer still comes (the timer's job).
        c.stop_reading();
        assert!(matches!(c.state, ConnState::Closing));
        assert_eq!(c.due(svc), None);
    }

    #[test]
    fn a_drain_during_a_body_reads_that_body_and_nothing_after() {
        let mut fx = service("drain", 0);
        let svc = &mut fx.svc;
        let (mut c, mut client) = pair();
        let start = b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab";
        assert!(send_and_step(&mut c, svc, &mut client, start, |c| c
            .state
            .in_body()));
        c.stop_reading();
        assert!(c.state.in_body(), "the body is still read");
        let rest = b"cdGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
        let lingering = |c: &Conn| matches!(c.state, ConnState::Lingering(_));
        assert!(send_and_step(&mut c, svc, &mut client, rest, lingering));
        let (status, head, _) = read_answer(&mut client);
        assert_eq!(status, 200);
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(
            closed_by_server(&mut client),
            "the pipelined /healthz was not answered"
        );
    }
}
