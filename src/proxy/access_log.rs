//! The access log: one line per finished (or refused, or failed) request, `key=value` like
//! every other log line or JSON, written in batches so the loop never makes one write per
//! request, and never blocked by a slow journal or a full disk: what cannot be written is
//! dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::config::{AccessLogFormat, AccessLogMode};
use crate::http::RequestId;

/// What the access log is told at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub mode: AccessLogMode,
    pub format: AccessLogFormat,
    /// With `All`: one successful request in this many gets a line (errors always do).
    pub sample: u32,
    /// A file to append to instead of stderr (the journal under systemd).
    pub path: Option<PathBuf>,
}

impl AccessLogSettings {
    /// The access-log keys of an LB loop's settings.
    pub fn of(settings: &crate::config::ProxySettings) -> AccessLogSettings {
        let path = &settings.access_log_path;
        AccessLogSettings {
            mode: settings.access_log,
            format: settings.access_log_format,
            sample: settings.access_log_sample,
            path: (!path.as_os_str().is_empty()).then(|| path.clone()),
        }
    }
}

/// Who ended an exchange, and how; spelled out in the line (`termination=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// The answer was sent whole.
    Done,
    /// The client closed its connection.
    ClientClosed,
    /// The client took longer than its deadline (head, body, or the whole body).
    ClientTimeout,
    /// The client's request was refused as malformed or over a limit (4xx).
    ClientBadRequest,
    /// No worker accepted the connection (refused, unreachable).
    WorkerRefused,
    /// The worker did not answer in time.
    WorkerTimeout,
    /// The worker closed or broke the exchange (reset, truncated, malformed answer).
    WorkerBroke,
    /// No worker was available (all down, ejected or at their limit with the queue full).
    NoWorker,
    /// The request waited in the queue past its timeout.
    QueueTimeout,
    /// A proxy limit ended it (connection limit, interim responses, out of descriptors).
    ProxyLimit,
    /// The proxy is stopping.
    ProxyStopping,
}

impl Termination {
    /// The spelled-out name written in the line.
    pub fn name(self) -> &'static str {
        match self {
            Termination::Done => "done",
            Termination::ClientClosed => "client_closed",
            Termination::ClientTimeout => "client_timeout",
            Termination::ClientBadRequest => "client_bad_request",
            Termination::WorkerRefused => "worker_refused",
            Termination::WorkerTimeout => "worker_timeout",
            Termination::WorkerBroke => "worker_broke",
            Termination::NoWorker => "no_worker",
            Termination::QueueTimeout => "queue_timeout",
            Termination::ProxyLimit => "proxy_limit",
            Termination::ProxyStopping => "proxy_stopping",
        }
    }
}

/// In which phase of the exchange it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the request head.
    RequestHead,
    /// Waiting in the queue for a worker.
    Queue,
    /// Connecting to a worker.
    Connect,
    /// Sending the request body.
    RequestBody,
    /// Waiting for the response head.
    ResponseHead,
    /// Sending the response body.
    ResponseBody,
    /// After the whole exchange.
    Complete,
}

impl Phase {
    /// The phase's name written in the line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::RequestHead => "request_head",
            Phase::Queue => "queue",
            Phase::Connect => "connect",
            Phase::RequestBody => "request_body",
            Phase::ResponseHead => "response_head",
            Phase::ResponseBody => "response_body",
            Phase::Complete => "complete",
        }
    }
}

/// Longest request target written (longer ones are cut and marked `...`).
pub const MAX_LOGGED_TARGET: usize = 256;

/// What one line says about one request; the session fills it as the exchange goes.
#[derive(Clone, Debug)]
pub struct AccessRecord<'a> {
    pub client: SocketAddr,
    pub method: &'a [u8],
    pub target: &'a [u8],
    /// Minor HTTP version (0 or 1); `None` when no head was parsed.
    pub version: Option<u8>,
    /// The status sent to the client (0: none was sent).
    pub status: u16,
    /// The worker's id (its address when it has no other); empty when none was picked.
    pub worker: &'a str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Time spent queued; connect; request sent to response head; head start to the end.
    pub queued: Option<Duration>,
    pub connect: Option<Duration>,
    pub response_head: Option<Duration>,
    pub total: Duration,
    pub retries: u32,
    pub request_id: Option<&'a RequestId>,
    pub termination: Termination,
    pub phase: Phase,
}

impl AccessRecord<'_> {
    /// The durations written, by key (`None`: that phase was not reached).
    fn durations(&self) -> [(&'static str, Option<Duration>); 4] {
        [
            ("queued_ms", self.queued),
            ("connect_ms", self.connect),
            ("response_ms", self.response_head),
            ("total_ms", Some(self.total)),
        ]
    }

    /// Whether `errors` mode logs it: a 4xx/5xx answer, or an exchange that did not end done.
    pub fn is_error(&self) -> bool {
        self.status >= 400 || self.termination != Termination::Done
    }
}

/// Bytes kept waiting for the sink; beyond them, new lines are dropped (and counted).
const MAX_PENDING: usize = 256 * 1024;
/// A batch this large is written at once, not at the next flush tick.
const FLUSH_AT: usize = 32 * 1024;
/// Lines wait at most this long before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Where lines go.
enum Sink {
    /// stderr is a socket (the journal's stream): sent without blocking.
    Socket,
    /// A pipe or FIFO, opened again (its own non-blocking file description).
    Pipe(File),
    /// A terminal or a regular file inherited as stderr.
    Stderr,
    /// `access-log-path`, appended to; reopened on SIGUSR1.
    File(File),
}

/// The access log of one LB child.
pub struct AccessLog {
    settings: AccessLogSettings,
    /// `[<N>]role=... level=info event=access` (key=value format only).
    prefix: String,
    sink: Sink,
    pending: Vec<u8>,
    /// Successful requests seen, for sampling.
    seen: u64,
    last_flush: Instant,
    /// The time text of the current loop iteration.
    clock: line::Clock,
    /// The line being spelled (kept: zeroing 4 KiB per line would cost more than the line).
    line: Box<line::LineBuf>,
    dropped: u64,
    written: u64,
}

impl AccessLog {
    /// Opens the sink (the file when a path is set, else stderr).
    pub fn open(settings: AccessLogSettings, now: Instant) -> io::Result<AccessLog> {
        let sink = match &settings.path {
            Some(path) => Sink::File(open_append(path)?),
            None => stderr_sink(),
        };
        Ok(AccessLog::with_sink(settings, sink, now))
    }

    /// The log on stderr whatever the path says (cannot fail; `open` replaces it).
    pub fn stderr(settings: AccessLogSettings, now: Instant) -> AccessLog {
        AccessLog::with_sink(settings, stderr_sink(), now)
    }

    fn with_sink(settings: AccessLogSettings, sink: Sink, now: Instant) -> AccessLog {
        AccessLog {
            prefix: crate::sys::log::prefix(crate::sys::log::Level::Info, "access"),
            settings,
            sink,
            pending: Vec::new(),
            seen: 0,
            last_flush: now,
            clock: line::Clock::new(),
            line: Box::new(line::LineBuf::new()),
            dropped: 0,
            written: 0,
        }
    }

    /// What it was opened with.
    pub fn settings(&self) -> &AccessLogSettings {
        &self.settings
    }

    /// Whether it writes any line at all.
    pub fn is_on(&self) -> bool {
        self.settings.mode != AccessLogMode::Off
    }

    /// When the batch waiting now must be written (for the loop's poll timeout).
    pub fn next_flush(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then(|| self.last_flush + FLUSH_EVERY)
    }

    /// Whether a request with this outcome gets a line; cheap, called before a record is built.
    pub fn wants(&mut self, is_error: bool) -> bool {
        match self.settings.mode {
            AccessLogMode::Off => false,
            AccessLogMode::Errors => is_error,
            AccessLogMode::All if is_error => true,
            AccessLogMode::All => {
                self.seen += 1;
                self.settings.sample <= 1 || self.seen % u64::from(self.settings.sample) == 1
            }
        }
    }

    /// Adds the line of `record` to the batch (dropped and counted when the batch is full).
    pub fn record(&mut self, record: &AccessRecord<'_>, now: Instant) {
        let start = self.pending.len();
        if start >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        let time = self.clock.text(now);
        let out = &mut self.line;
        out.clear();
        match self.settings.format {
            AccessLogFormat::KeyValue => line::key_value(out, &self.prefix, time, record),
            AccessLogFormat::Json => line::json(out, time, record),
        }
        self.pending.extend_from_slice(out.as_bytes());
        self.pending.push(b'\n');
        if self.pending.len() >= FLUSH_AT {
            self.flush(now);
        }
    }

    /// Writes the batch when it is due (call from the loop's tick).
    pub fn tick(&mut self, now: Instant) {
        if !self.pending.is_empty() && now.duration_since(self.last_flush) >= FLUSH_EVERY {
            self.flush(now);
        }
    }

    /// Writes what the sink takes now without blocking; the rest waits (bounded).
    pub fn flush(&mut self, now: Instant) {
        self.last_flush = now;
        while !self.pending.is_empty() {
            match self.write_some() {
                Ok(0) => break,
                Ok(n) => {
                    self.written += n as u64;
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Would block, disk full, journal gone: drop the batch's whole lines.
                    self.dropped += self.pending.iter().filter(|&&b| b == b'\n').count() as u64;
                    self.pending.clear();
                    break;
                }
            }
        }
    }

    /// Reopens the file after a rename (SIGUSR1, logrotate's convention); stderr stays.
    pub fn reopen(&mut self, now: Instant) -> io::Result<()> {
        self.flush(now);
        if let (Sink::File(_), Some(path)) = (&self.sink, &self.settings.path) {
            self.sink = Sink::File(open_append(path)?);
        }
        Ok(())
    }

    /// Lines dropped so far (`goloadbalancer_access_log_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn write_some(&mut self) -> io::Result<usize> {
        let buf = &self.pending[..];
        match &mut self.sink {
            Sink::Socket => {
                // SAFETY: fd 2 stays open for the life of the process.
                let fd = unsafe { BorrowedFd::borrow_raw(2) };
                let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT
                    | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
                nix::sys::socket::send(fd.as_raw_fd(), buf, flags).map_err(io::Error::from)
            }
            Sink::Pipe(f) | Sink::File(f) => f.write(buf),
            Sink::Stderr => io::stderr().lock().write(buf),
        }
    }
}

fn open_append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
}

/// How stderr can be written without blocking the loop.
fn stderr_sink() -> Sink {
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return Sink::Stderr;
    };
    let kind = meta.file_type();
    if kind.is_socket() {
        Sink::Socket
    } else if kind.is_fifo() {
        // A pipe opened again through /proc gets its own file description, so O_NONBLOCK
        // here does not change the stderr every other log line is written to.
        match OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
            .open("/proc/self/fd/2")
        {
            Ok(f) => Sink::Pipe(f),
            Err(_) => Sink::Stderr,
        }
    } else {
        Sink::Stderr
    }
}

mod line;
#[cfg(test)]
mod tests;
