//! LB children: forking one onto an inherited listener, and the supervisor's record of each
//! (its control channel is an `evloop::LineChannel` of the messages in `proxy::control`).

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use mio::Token;
use nix::unistd::Pid;

use crate::config::ProxySettings;
use crate::evloop::LineChannel;
use crate::proxy::control::{BackendSpec, Down, Up};
use crate::sys::log::quote;
use crate::sys::privilege::Account;
use crate::sys::signals::Signals;

/// The supervisor's end of one child's control channel: receives `Up`, sends `Down` (the
/// child's end is the same type with the directions swapped).
pub type ControlChannel = LineChannel<Up, Down>;

/// What a child is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// Accepting and serving.
    Running,
    /// Told to drain (stop accepting, finish in-flight); killed at the deadline.
    Draining { deadline: Instant },
}

/// The latest metrics report of a child.
#[derive(Clone, Debug, Default)]
pub struct ChildMetrics {
    /// Client connections open.
    pub connections: u64,
    /// Per backend, cumulative since the child started.
    pub backends: Vec<crate::proxy::control::BackendMetrics>,
    /// Access-log lines dropped since the child started.
    pub access_log_dropped: u64,
    /// Requests waiting for a worker.
    pub queued: u64,
    /// Retries refused for lack of budget since the child started.
    pub retry_budget_refused: u64,
    /// The wait queue's figures since the child started.
    pub queue: crate::proxy::control::QueueFigures,
}

/// One forked LB child.
#[derive(Debug)]
pub struct LbChild {
    /// Its pid.
    pub pid: Pid,
    /// LB index (0..pool).
    pub index: usize,
    /// Id of the listener it serves.
    pub listener_id: u64,
    /// `lb.<index>`.
    pub name: String,
    /// Being replaced (reload): drained once its successor is forked.
    pub retiring: bool,
    /// Control channel.
    pub conn: ControlChannel,
    /// Poll token of the control channel.
    pub token: Token,
    /// Running or draining.
    pub state: ChildState,
    /// When it was forked.
    pub started: Instant,
    /// Highest Down seq it acknowledged (starts at the seq current at fork time: it was
    /// forked with that state).
    pub acked_seq: u64,
    /// `acked_seq` when the latest metrics arrived: the metrics reflect every message up to it.
    pub metrics_basis: u64,
    /// Latest metrics report, when one arrived.
    pub metrics: Option<ChildMetrics>,
    /// When the latest report arrived.
    pub metrics_at: Option<Instant>,
    /// Malformed control lines seen (logged once).
    pub bad_lines: u64,
}

/// What the child needs, prepared by the parent before fork.
pub struct ChildStart<'a> {
    /// `lb.<i>`.
    pub name: String,
    /// The listener it inherits.
    pub listener: &'a TcpListener,
    /// Backend set at fork time.
    pub backends: Vec<BackendSpec>,
    /// Its settings.
    pub settings: ProxySettings,
    /// Drain timeout on SIGTERM or control EOF.
    pub drain_timeout_ms: u64,
    /// The account to switch to (the supervisor runs as root), or None to keep its uid.
    pub account: Option<&'a Account>,
}

/// Number of threads this process has (fork is only safe with one).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

/// Forks an LB child. Returns its pid and the supervisor's end of the control channel.
/// `signals` is dropped in the child (its handlers would write into our wake socket).
pub fn fork_child(
    start: ChildStart<'_>,
    signals: &mut Option<Signals>,
) -> io::Result<(Pid, UnixStream)> {
    let threads = thread_count();
    if threads != 1 {
        // A fork with other threads alive could copy a held lock; refuse rather than risk it.
        return Err(io::Error::other(format!(
            "refusing to fork with {threads} threads"
        )));
    }
    let (ours, theirs) = UnixStream::pair()?;
    let parent = nix::unistd::getpid();
    // SAFETY: the process is single-threaded (checked above), so the child gets a consistent
    // copy of every lock and allocator state.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            Ok((child, ours))
        }
        nix::unistd::ForkResult::Child => child_main(parent, start, theirs, signals),
    }
}

/// The child's side of the fork: never returns.
fn child_main(
    parent: Pid,
    start: ChildStart<'_>,
    control: UnixStream,
    signals: &mut Option<Signals>,
) -> ! {
    // SAFETY: the child is single-threaded; nothing else reads the environment concurrently.
    unsafe {
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    crate::sys::log::set_role(&start.name);
    // Unregister the supervisor's signal handlers before its wake socket's fd is closed.
    drop(signals.take());
    let listen_fd = start.listener.as_raw_fd();
    let control_fd = control.as_raw_fd();
    close_fds_except(&[0, 1, 2, listen_fd, control_fd]);
    // Before the first client byte: no groups (docker's is root-equivalent), no capability,
    // `user` when the supervisor is root, and no way back (no_new_privs).
    let dropped = match crate::sys::privilege::drop_in_child(start.account) {
        Ok(d) => d,
        Err(e) => {
            crate::error!("privilege_drop_failed", "error={}", quote(&e));
            // SAFETY: _exit is always safe; it skips destructors we must not run here.
            unsafe { nix::libc::_exit(1) };
        }
    };
    if !dropped.kept.is_empty() {
        crate::warn!(
            "privileges_kept",
            "kept={}",
            quote(&dropped.kept.join("; "))
        );
    }
    // A child without its supervisor holds ports the restarted supervisor needs and cannot
    // learn about backend changes: it dies with it. Set after the drop: changing uid clears it.
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != parent
    {
        // SAFETY: _exit is always safe; it skips destructors we must not run here.
        unsafe { nix::libc::_exit(1) };
    }
    // SAFETY: the fd stays open (kept above) and this copy of the supervisor's memory never
    // drops its own TcpListener (the child ends in _exit), so the fd has exactly one owner.
    let listener = unsafe { TcpListener::from_raw_fd(listen_fd) };
    crate::info!(
        "lb_child_started",
        "pid={} uid={} listen={}",
        std::process::id(),
        nix::unistd::getuid(),
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let code = crate::proxy::run_loop(crate::proxy::LoopInputs {
        name: start.name,
        listener,
        backends: start.backends,
        settings: start.settings,
        control: Some(control),
        drain_timeout_ms: start.drain_timeout_ms,
    });
    // SAFETY: see above; the supervisor's copies of its objects must not be dropped here.
    unsafe { nix::libc::_exit(code) }
}

/// Closes every fd of this process but `keep`.
fn close_fds_except(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if !keep.contains(&fd) {
            // The directory's own fd is already closed: EBADF there is expected.
            let _ = nix::unistd::close(fd);
        }
    }
}
